//! Task names → type-erased tasks.

use std::panic::{catch_unwind, AssertUnwindSafe};

use jobvisor_proto::codec;
use jobvisor_proto::worker::{FailureKind, TaskFailure};

use crate::task::{Ctx, Task, TaskError};

/// The tasks a worker can run. Built once (before the fork server starts), so
/// every worker has the same list and task ids agree across the pool.
#[derive(Default)]
pub struct Registry {
    tasks: Vec<Box<dyn ErasedTask>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task.
    ///
    /// # Panics
    /// When a task with the same name is already registered: two tasks with one
    /// name is a programming error that would make calls ambiguous.
    pub fn register<T: Task>(&mut self, task: T) -> &mut Self {
        assert!(
            !self.tasks.iter().any(|t| t.name() == T::NAME),
            "task {:?} registered twice",
            T::NAME
        );
        self.tasks.push(Box::new(Typed(task)));
        self
    }

    /// Builder-style [`Registry::register`].
    ///
    /// # Panics
    /// As [`Registry::register`].
    #[must_use]
    pub fn with<T: Task>(mut self, task: T) -> Self {
        self.register(task);
        self
    }

    /// Task names in id order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tasks.iter().map(|t| t.name())
    }

    /// Converts a JSON input for task `name` into the codec's native encoding
    /// of its input type. This is how the daemon validates inputs at submit
    /// time (unknown task, malformed JSON, wrong shape) and why workers only
    /// ever see native inputs.
    ///
    /// # Errors
    /// [`ConvertError::UnknownTask`] or [`ConvertError::BadInput`].
    pub fn json_to_native(&self, name: &str, json: &str) -> Result<Vec<u8>, ConvertError> {
        self.find(name)?.json_to_native(json)
    }

    /// Checks that native input bytes decode as task `name`'s input type.
    ///
    /// # Errors
    /// [`ConvertError::UnknownTask`] or [`ConvertError::BadInput`].
    pub fn check_native_input(&self, name: &str, input: &[u8]) -> Result<(), ConvertError> {
        self.find(name)?.check_native(input)
    }

    /// Converts a native output of task `name` into JSON.
    ///
    /// # Errors
    /// [`ConvertError::UnknownTask`] or [`ConvertError::BadOutput`].
    pub fn native_output_to_json(&self, name: &str, output: &[u8]) -> Result<String, ConvertError> {
        self.find(name)?.output_to_json(output)
    }

    /// Whether a task by that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.tasks.iter().any(|t| t.name() == name)
    }

    fn find(&self, name: &str) -> Result<&dyn ErasedTask, ConvertError> {
        self.tasks
            .iter()
            .find(|t| t.name() == name)
            .map(|b| &**b)
            .ok_or_else(|| ConvertError::UnknownTask {
                name: name.to_string(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    pub(crate) fn call(
        &self,
        task: u32,
        chunk: bool,
        input: &[u8],
        ctx: &mut Ctx<'_>,
    ) -> Result<Vec<u8>, TaskFailure> {
        match self.tasks.get(task as usize) {
            Some(t) => t.call(chunk, input, ctx),
            None => Err(TaskFailure {
                kind: FailureKind::UnknownTask,
                message: format!(
                    "no task with id {task} (this worker has {})",
                    self.tasks.len()
                ),
            }),
        }
    }
}

/// An input or output could not be converted between JSON and the native encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// No task by that name.
    #[error("unknown task {name:?} (known: {known})")]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The registered names.
        known: String,
    },
    /// The input is not valid for the task.
    #[error("input does not fit task {task:?}: {message}")]
    BadInput {
        /// Task name.
        task: String,
        /// Why (from the decoder: position and expected shape).
        message: String,
    },
    /// The output could not be converted.
    #[error("output of task {task:?} cannot be converted: {message}")]
    BadOutput {
        /// Task name.
        task: String,
        /// Why.
        message: String,
    },
}

trait ErasedTask: Send + Sync {
    fn name(&self) -> &'static str;
    fn json_to_native(&self, json: &str) -> Result<Vec<u8>, ConvertError>;
    fn check_native(&self, input: &[u8]) -> Result<(), ConvertError>;
    fn output_to_json(&self, output: &[u8]) -> Result<String, ConvertError>;
    fn call(&self, chunk: bool, input: &[u8], ctx: &mut Ctx<'_>) -> Result<Vec<u8>, TaskFailure>;
}

struct Typed<T>(T);

fn failure(e: TaskError) -> TaskFailure {
    TaskFailure {
        kind: e.kind,
        message: e.message,
    }
}

fn bad_input(name: &str, e: codec::CodecError) -> TaskFailure {
    TaskFailure {
        kind: FailureKind::BadInput,
        message: format!("input does not fit task {name:?}: {e}"),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl<T: Task> Typed<T> {
    fn run_one(&self, input: T::Input, ctx: &mut Ctx<'_>) -> Result<T::Output, TaskFailure> {
        match catch_unwind(AssertUnwindSafe(|| self.0.run(input, ctx))) {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(failure(e)),
            Err(payload) => Err(TaskFailure {
                kind: FailureKind::Panic,
                message: format!("task {:?} panicked: {}", T::NAME, panic_message(&*payload)),
            }),
        }
    }
}

fn encode_output<O: serde::Serialize>(name: &str, out: &O) -> Result<Vec<u8>, TaskFailure> {
    codec::encode(out).map_err(|e| TaskFailure {
        kind: FailureKind::Error,
        message: format!("cannot encode the output of task {name:?}: {e}"),
    })
}

impl<T: Task> ErasedTask for Typed<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn json_to_native(&self, json: &str) -> Result<Vec<u8>, ConvertError> {
        let bad = |message: String| ConvertError::BadInput {
            task: T::NAME.into(),
            message,
        };
        let input: T::Input = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        codec::encode(&input).map_err(|e| bad(e.to_string()))
    }

    fn check_native(&self, input: &[u8]) -> Result<(), ConvertError> {
        codec::decode::<T::Input>(input)
            .map(|_| ())
            .map_err(|e| ConvertError::BadInput {
                task: T::NAME.into(),
                message: e.to_string(),
            })
    }

    fn output_to_json(&self, output: &[u8]) -> Result<String, ConvertError> {
        let bad = |message: String| ConvertError::BadOutput {
            task: T::NAME.into(),
            message,
        };
        let out: T::Output = codec::decode(output).map_err(|e| bad(e.to_string()))?;
        serde_json::to_string(&out).map_err(|e| bad(e.to_string()))
    }

    fn call(&self, chunk: bool, input: &[u8], ctx: &mut Ctx<'_>) -> Result<Vec<u8>, TaskFailure> {
        if !chunk {
            let input: T::Input = codec::decode(input).map_err(|e| bad_input(T::NAME, e))?;
            let out = self.run_one(input, ctx)?;
            return encode_output(T::NAME, &out);
        }
        let inputs: Vec<T::Input> = codec::decode(input).map_err(|e| bad_input(T::NAME, e))?;
        let mut outs: Vec<Result<T::Output, TaskFailure>> = Vec::with_capacity(inputs.len());
        for input in inputs {
            if ctx.cancelled {
                outs.push(Err(failure(TaskError::cancelled())));
                continue;
            }
            outs.push(self.run_one(input, ctx));
        }
        encode_output(T::NAME, &outs)
    }
}
