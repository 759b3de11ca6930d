//! The [`Registry`]: task names → type-erased tasks, in id order (the ids
//! calls carry), and the JSON ↔ native conversions of their inputs and
//! outputs that the daemon uses at submit time and to show results.

use std::panic::{catch_unwind, AssertUnwindSafe};

use futures_util::future::LocalBoxFuture;
use jobvisor_proto::codec;
use jobvisor_proto::worker::{FailureKind, TaskFailure, TaskKind};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::async_task::{AsyncCtx, AsyncTask};
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
        self.add(Box::new(Typed(task)))
    }

    /// Adds an async (I/O-bound) task: its calls run many at once on the
    /// worker's event loop.
    ///
    /// # Panics
    /// As [`Registry::register`].
    pub fn register_async<T: AsyncTask>(&mut self, task: T) -> &mut Self {
        self.add(Box::new(AsyncTyped(task)))
    }

    fn add(&mut self, task: Box<dyn ErasedTask>) -> &mut Self {
        assert!(
            !self.tasks.iter().any(|t| t.name() == task.name()),
            "task {:?} registered twice",
            task.name()
        );
        self.tasks.push(task);
        self
    }

    /// Builder-style [`Registry::register_async`].
    ///
    /// # Panics
    /// As [`Registry::register`].
    #[must_use]
    pub fn with_async<T: AsyncTask>(mut self, task: T) -> Self {
        self.register_async(task);
        self
    }

    /// Task kinds in id order.
    pub fn kinds(&self) -> Vec<TaskKind> {
        self.tasks.iter().map(|t| t.kind()).collect()
    }

    /// The kind of task `name`, when it is registered.
    pub fn kind(&self, name: &str) -> Option<TaskKind> {
        self.find(name).ok().map(|t| t.kind())
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

    /// Starts async call `task`: the input is decoded now, the future runs
    /// on the I/O lane.
    pub(crate) fn call_async<'a>(
        &'a self,
        task: u32,
        chunk: bool,
        input: &[u8],
        ctx: AsyncCtx,
    ) -> LocalBoxFuture<'a, Result<Vec<u8>, TaskFailure>> {
        match self.tasks.get(task as usize) {
            Some(t) => t.call_async(chunk, input, ctx),
            None => {
                let message = format!(
                    "no task with id {task} (this worker has {})",
                    self.tasks.len()
                );
                Box::pin(std::future::ready(Err(TaskFailure {
                    kind: FailureKind::UnknownTask,
                    message,
                })))
            }
        }
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
    fn kind(&self) -> TaskKind;
    fn json_to_native(&self, json: &str) -> Result<Vec<u8>, ConvertError>;
    fn check_native(&self, input: &[u8]) -> Result<(), ConvertError>;
    fn output_to_json(&self, output: &[u8]) -> Result<String, ConvertError>;
    fn call(&self, chunk: bool, input: &[u8], ctx: &mut Ctx<'_>) -> Result<Vec<u8>, TaskFailure>;
    fn call_async<'a>(
        &'a self,
        chunk: bool,
        input: &[u8],
        ctx: AsyncCtx,
    ) -> LocalBoxFuture<'a, Result<Vec<u8>, TaskFailure>>;
}

struct Typed<T>(T);
struct AsyncTyped<T>(T);

fn wrong_lane(name: &str, kind: TaskKind) -> TaskFailure {
    TaskFailure {
        kind: FailureKind::UnknownTask,
        message: format!("task {name:?} is a {kind:?} task and was routed to the wrong lane"),
    }
}

// The JSON ↔ native conversions, shared by both kinds of task.

fn json_to_native_as<I: Serialize + DeserializeOwned>(
    name: &'static str,
    json: &str,
) -> Result<Vec<u8>, ConvertError> {
    let bad = |message: String| ConvertError::BadInput {
        task: name.into(),
        message,
    };
    let input: I = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    codec::encode(&input).map_err(|e| bad(crate::error_chain(&e)))
}

fn check_native_as<I: DeserializeOwned>(
    name: &'static str,
    input: &[u8],
) -> Result<(), ConvertError> {
    codec::decode::<I>(input)
        .map(|_| ())
        .map_err(|e| ConvertError::BadInput {
            task: name.into(),
            message: crate::error_chain(&e),
        })
}

fn output_to_json_as<O: Serialize + DeserializeOwned>(
    name: &'static str,
    output: &[u8],
) -> Result<String, ConvertError> {
    let bad = |message: String| ConvertError::BadOutput {
        task: name.into(),
        message,
    };
    let out: O = codec::decode(output).map_err(|e| bad(crate::error_chain(&e)))?;
    serde_json::to_string(&out).map_err(|e| bad(e.to_string()))
}

fn failure(e: TaskError) -> TaskFailure {
    TaskFailure {
        kind: e.kind,
        message: e.message,
    }
}

fn bad_input(name: &str, e: codec::CodecError) -> TaskFailure {
    TaskFailure {
        kind: FailureKind::BadInput,
        message: format!(
            "input does not fit task {name:?}: {}",
            crate::error_chain(&e)
        ),
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
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
        message: format!(
            "cannot encode the output of task {name:?}: {}",
            crate::error_chain(&e)
        ),
    })
}

impl<T: Task> ErasedTask for Typed<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn kind(&self) -> TaskKind {
        TaskKind::Cpu
    }

    fn json_to_native(&self, json: &str) -> Result<Vec<u8>, ConvertError> {
        json_to_native_as::<T::Input>(T::NAME, json)
    }

    fn check_native(&self, input: &[u8]) -> Result<(), ConvertError> {
        check_native_as::<T::Input>(T::NAME, input)
    }

    fn output_to_json(&self, output: &[u8]) -> Result<String, ConvertError> {
        output_to_json_as::<T::Output>(T::NAME, output)
    }

    fn call_async<'a>(
        &'a self,
        _chunk: bool,
        _input: &[u8],
        _ctx: AsyncCtx,
    ) -> LocalBoxFuture<'a, Result<Vec<u8>, TaskFailure>> {
        Box::pin(std::future::ready(Err(wrong_lane(T::NAME, TaskKind::Cpu))))
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

impl<T: AsyncTask> ErasedTask for AsyncTyped<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn kind(&self) -> TaskKind {
        TaskKind::Io
    }

    fn json_to_native(&self, json: &str) -> Result<Vec<u8>, ConvertError> {
        json_to_native_as::<T::Input>(T::NAME, json)
    }

    fn check_native(&self, input: &[u8]) -> Result<(), ConvertError> {
        check_native_as::<T::Input>(T::NAME, input)
    }

    fn output_to_json(&self, output: &[u8]) -> Result<String, ConvertError> {
        output_to_json_as::<T::Output>(T::NAME, output)
    }

    fn call(
        &self,
        _chunk: bool,
        _input: &[u8],
        _ctx: &mut Ctx<'_>,
    ) -> Result<Vec<u8>, TaskFailure> {
        Err(wrong_lane(T::NAME, TaskKind::Io))
    }

    fn call_async<'a>(
        &'a self,
        chunk: bool,
        input: &[u8],
        ctx: AsyncCtx,
    ) -> LocalBoxFuture<'a, Result<Vec<u8>, TaskFailure>> {
        if !chunk {
            let input: T::Input = match codec::decode(input) {
                Ok(i) => i,
                Err(e) => return Box::pin(std::future::ready(Err(bad_input(T::NAME, e)))),
            };
            return Box::pin(async move {
                let out = self.0.run(input, ctx).await.map_err(failure)?;
                encode_output(T::NAME, &out)
            });
        }
        let inputs: Vec<T::Input> = match codec::decode(input) {
            Ok(i) => i,
            Err(e) => return Box::pin(std::future::ready(Err(bad_input(T::NAME, e)))),
        };
        // A chunk's items run concurrently, like separate calls.
        Box::pin(async move {
            let outs: Vec<Result<T::Output, TaskFailure>> =
                futures_util::future::join_all(inputs.into_iter().map(|input| {
                    let ctx = ctx.clone();
                    async move { self.0.run(input, ctx).await.map_err(failure) }
                }))
                .await;
            encode_output(T::NAME, &outs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::inbox::Inbox;
    use crate::link::{Link, BOOTSTRAP_MAX_FRAME};

    /// 100 divided by its input; panics on 0.
    struct Div;
    impl Task for Div {
        const NAME: &'static str = "div";
        type Input = u64;
        type Output = u64;
        fn run(&self, input: u64, _ctx: &mut Ctx<'_>) -> Result<u64, TaskError> {
            Ok(100 / input)
        }
    }

    struct Wait;
    impl AsyncTask for Wait {
        const NAME: &'static str = "wait";
        type Input = ();
        type Output = ();
        async fn run(&self, (): (), _ctx: AsyncCtx) -> Result<(), TaskError> {
            Ok(())
        }
    }

    fn registry() -> Registry {
        Registry::new().with(Div).with_async(Wait)
    }

    /// Calls CPU task `task` with a context on throwaway pipes.
    fn call(r: &Registry, task: u32, chunk: bool, input: &[u8]) -> Result<Vec<u8>, TaskFailure> {
        let (r_in, w_in) = nix::unistd::pipe().unwrap();
        let (_r_out, w_out): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        let _keep_open = w_in;
        let mut link = Link::new(r_in, w_out, BOOTSTRAP_MAX_FRAME).unwrap();
        let mut inbox = Inbox::new();
        let mut ctx = Ctx::new(1, &mut link, &mut inbox, None);
        r.call(task, chunk, input, &mut ctx)
    }

    #[test]
    fn ids_and_kinds_follow_registration_order() {
        let r = registry();
        assert_eq!(r.names().collect::<Vec<_>>(), ["div", "wait"]);
        assert_eq!(r.kinds(), [TaskKind::Cpu, TaskKind::Io]);
        assert_eq!(r.kind("wait"), Some(TaskKind::Io));
        assert_eq!(r.kind("nope"), None);
        assert!(r.contains("div") && !r.contains("nope"));
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_name_registered_twice_is_a_bug() {
        let _ = Registry::new().with(Div).with(Div);
    }

    #[test]
    fn json_inputs_are_checked_at_the_door() {
        let r = registry();
        let native = r.json_to_native("div", "5").unwrap();
        assert_eq!(native, codec::encode(&5u64).unwrap());
        r.check_native_input("div", &native).unwrap();
        assert!(matches!(
            r.json_to_native("div", "\"five\""),
            Err(ConvertError::BadInput { task, .. }) if task == "div"
        ));
        assert_eq!(
            r.json_to_native("nope", "5"),
            Err(ConvertError::UnknownTask {
                name: "nope".into(),
                known: "div, wait".into(),
            })
        );
        let out = codec::encode(&20u64).unwrap();
        assert_eq!(r.native_output_to_json("div", &out).unwrap(), "20");
        assert!(matches!(
            r.native_output_to_json("div", &[]),
            Err(ConvertError::BadOutput { .. })
        ));
    }

    #[test]
    fn a_panic_in_a_chunk_fails_only_its_item() {
        let r = registry();
        let input = codec::encode(&vec![4u64, 0, 50]).unwrap();
        let out = call(&r, 0, true, &input).unwrap();
        let items: Vec<Result<u64, TaskFailure>> = codec::decode(&out).unwrap();
        assert_eq!(items[0], Ok(25));
        assert!(matches!(&items[1], Err(f) if f.kind == FailureKind::Panic));
        assert_eq!(items[2], Ok(2));
    }

    #[test]
    fn bad_ids_inputs_and_lanes_fail_the_call() {
        let r = registry();
        let kind = |res: Result<Vec<u8>, TaskFailure>| res.unwrap_err().kind;
        assert_eq!(kind(call(&r, 9, false, &[])), FailureKind::UnknownTask);
        assert_eq!(kind(call(&r, 0, false, &[])), FailureKind::BadInput);
        // An async task called on the CPU thread: a routing bug, not a crash.
        assert_eq!(kind(call(&r, 1, false, &[])), FailureKind::UnknownTask);
    }
}
