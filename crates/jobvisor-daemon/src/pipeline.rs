//! Pipelines: a job takes its input from the outputs of jobs it waits for.
//!
//! `--input-from ID[:/json/pointer][@field]`: the referenced job's JSON output
//! (or the part a JSON pointer names) is put under `field` of the input, or,
//! without a field, merged into it when it is an object (keys the input
//! already has are kept, so an explicit `--input` wins), or becomes the whole
//! input when the input is empty (`{}`). Each referenced job is a dependency,
//! so a failed step fails the steps after it, naming it.

use jobvisor_proto::control::{InputRef, JobRef, Payload};
use jobvisor_store::{StoreError, StoreHandle};
use serde_json::Value;

/// A pipeline step refused at submit time.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RefError {
    #[error("a pipeline step (input_from) needs a JSON input")]
    NotJson,
    #[error("the input is not JSON")]
    InputNotJson(#[source] serde_json::Error),
    /// Numbered from 1, as the client counts.
    #[error("input_from #{0} must name an earlier job of the batch")]
    NotEarlier(u64),
    #[error("JSON pointer {0:?} must start with '/'")]
    BadPointer(String),
    #[error("input_from with a field needs an object input")]
    FieldNeedsObject,
}

/// A pipeline step's input could not be built from its sources' outputs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputError {
    #[error("the input is not JSON")]
    InputNotJson(#[source] serde_json::Error),
    #[error("unresolved batch reference")]
    Unresolved,
    #[error("cannot read the output of job {id}")]
    Read {
        id: u64,
        #[source]
        source: StoreError,
    },
    #[error("job {0} (an input) no longer exists")]
    Gone(u64),
    #[error("the output of job {id} is not JSON")]
    OutputNotJson {
        id: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("the output of job {0} is in the native encoding, not JSON")]
    NativeOutput(u64),
    #[error("job {0} has no output")]
    NoOutput(u64),
    #[error("the output of job {id} has nothing at {pointer}")]
    NothingAt { id: u64, pointer: String },
    #[error("input from job {id}")]
    Merge {
        id: u64,
        #[source]
        source: MergeError,
    },
    #[error(transparent)]
    Encode(serde_json::Error),
    #[error(
        "input too large: the input built from the sources is {bytes} bytes, over \
         limits.max_input_bytes ({max}); raise limits.max_input_bytes, or pass large data by file path"
    )]
    TooLarge { bytes: usize, max: usize },
}

/// A value that does not go where the input asks.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MergeError {
    #[error("a field needs an object input")]
    FieldNeedsObject,
    #[error("{0} is not an object: name a field to put it under")]
    NotAnObject(Value),
    #[error("the input is not an object to merge into")]
    NotMergeable,
}

/// Checks a pipeline step's references and input at submit time (position
/// `index` in its batch).
///
/// # Errors
/// What is wrong with them, for the client.
pub(crate) fn check_refs(refs: &[InputRef], index: usize, input: &Payload) -> Result<(), RefError> {
    let Payload::Json(text) = input else {
        return Err(RefError::NotJson);
    };
    let base: Value = serde_json::from_str(text).map_err(RefError::InputNotJson)?;
    for r in refs {
        if let JobRef::Batch(b) = r.job {
            if b as usize >= index {
                return Err(RefError::NotEarlier(u64::from(b) + 1));
            }
        }
        if let Some(p) = &r.pointer {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(RefError::BadPointer(p.clone()));
            }
        }
        if r.field.is_some() && !base.is_object() {
            return Err(RefError::FieldNeedsObject);
        }
    }
    Ok(())
}

/// Builds a pipeline step's input from its template and the outputs of the
/// jobs it references (all succeeded: they are its dependencies), at most
/// `max_bytes` of JSON (`limits.max_input_bytes`, as for a submitted input).
///
/// # Errors
/// Why the input cannot be built: the step fails with it.
pub(crate) async fn build_input(
    store: &StoreHandle,
    template: &str,
    refs: &[InputRef],
    max_bytes: usize,
) -> Result<String, InputError> {
    let mut input: Value = serde_json::from_str(template).map_err(InputError::InputNotJson)?;
    for r in refs {
        let JobRef::Id(id) = r.job else {
            return Err(InputError::Unresolved);
        };
        let rec = store
            .get(id)
            .await
            .map_err(|source| InputError::Read { id, source })?
            .ok_or(InputError::Gone(id))?;
        let output = match rec.output {
            Some(Payload::Json(text)) => serde_json::from_str::<Value>(&text)
                .map_err(|source| InputError::OutputNotJson { id, source })?,
            Some(Payload::Native(_)) => return Err(InputError::NativeOutput(id)),
            None => return Err(InputError::NoOutput(id)),
        };
        let value = match r.pointer.as_deref() {
            None | Some("") => output,
            Some(p) => output
                .pointer(p)
                .cloned()
                .ok_or_else(|| InputError::NothingAt {
                    id,
                    pointer: p.to_owned(),
                })?,
        };
        merge(&mut input, value, r.field.as_deref())
            .map_err(|source| InputError::Merge { id, source })?;
    }
    let text = serde_json::to_string(&input).map_err(InputError::Encode)?;
    within_limit(text, max_bytes)
}

/// A built input, refused when it is over `max` bytes: a step's sources can
/// make it far larger than any submit may be, and the workers' frames are
/// sized for submitted inputs (the pool would refuse it).
fn within_limit(text: String, max: usize) -> Result<String, InputError> {
    if text.len() > max {
        return Err(InputError::TooLarge {
            bytes: text.len(),
            max,
        });
    }
    Ok(text)
}

fn merge(input: &mut Value, value: Value, field: Option<&str>) -> Result<(), MergeError> {
    match (field, input) {
        (Some(f), Value::Object(map)) => {
            map.insert(f.to_string(), value);
            Ok(())
        }
        (Some(_), _) => Err(MergeError::FieldNeedsObject),
        (None, slot @ Value::Object(_)) if slot.as_object().is_some_and(|m| m.is_empty()) => {
            // An empty input takes the value whole (an object, a number, ...).
            *slot = value;
            Ok(())
        }
        (None, Value::Object(map)) => match value {
            Value::Object(m) => {
                for (k, v) in m {
                    map.entry(k).or_insert(v);
                }
                Ok(())
            }
            other => Err(MergeError::NotAnObject(other)),
        },
        (None, slot) if slot.is_null() => {
            *slot = value;
            Ok(())
        }
        (None, _) => Err(MergeError::NotMergeable),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_merge_and_keep_rules() {
        let mut v = json!({"level": 3});
        merge(&mut v, json!({"path": "/a", "level": 9}), None).unwrap();
        assert_eq!(
            v,
            json!({"level": 3, "path": "/a"}),
            "explicit input keys win"
        );
        merge(&mut v, json!("abc"), Some("digest")).unwrap();
        assert_eq!(v["digest"], "abc");
        let mut empty = json!({});
        merge(&mut empty, json!({"x": 1}), None).unwrap();
        assert_eq!(empty, json!({"x": 1}));
        let mut whole = json!({});
        merge(&mut whole, json!(42), None).unwrap();
        assert_eq!(
            whole,
            json!(42),
            "an empty input takes a non-object value whole"
        );
        assert!(merge(&mut json!({"a": 1}), json!(5), None).is_err());
        assert!(merge(&mut json!(5), json!(5), Some("f")).is_err());
    }

    #[test]
    fn refs_are_checked_at_submit() {
        let r = |job, pointer: Option<&str>, field: Option<&str>| InputRef {
            job,
            pointer: pointer.map(String::from),
            field: field.map(String::from),
        };
        let obj = Payload::Json("{}".into());
        assert!(check_refs(&[r(JobRef::Batch(0), Some("/x"), None)], 1, &obj).is_ok());
        assert!(
            check_refs(&[r(JobRef::Batch(1), None, None)], 1, &obj).is_err(),
            "not earlier"
        );
        assert!(
            check_refs(&[r(JobRef::Id(5), Some("x"), None)], 0, &obj).is_err(),
            "bad pointer"
        );
        assert!(check_refs(
            &[r(JobRef::Id(5), None, Some("f"))],
            0,
            &Payload::Json("3".into())
        )
        .is_err());
        assert!(check_refs(&[r(JobRef::Id(5), None, None)], 0, &Payload::Native(vec![])).is_err());
    }

    #[test]
    fn a_built_input_over_the_limit_is_refused_naming_the_key() {
        assert_eq!(within_limit("1234".into(), 4).unwrap(), "1234");
        let e = within_limit("12345".into(), 4).unwrap_err().to_string();
        assert!(e.starts_with("input too large"), "{e}");
        assert!(e.contains("5 bytes"), "{e}");
        assert!(
            e.contains("limits.max_input_bytes (4); raise limits.max_input_bytes"),
            "{e}"
        );
    }

    #[test]
    fn messages_tell_the_client_each_cause_once() {
        let e = check_refs(&[], 0, &Payload::Json("{".into())).unwrap_err();
        let text = crate::errors::chain(&e);
        assert!(text.starts_with("the input is not JSON: EOF"), "{text}");
        let e = InputError::Merge {
            id: 5,
            source: MergeError::NotAnObject(serde_json::json!(3)),
        };
        assert_eq!(
            crate::errors::chain(&e),
            "input from job 5: 3 is not an object: name a field to put it under"
        );
    }
}
