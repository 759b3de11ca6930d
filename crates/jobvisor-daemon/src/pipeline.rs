//! Pipelines: a job takes its input from the outputs of jobs it waits for.
//!
//! `--input-from ID[:/json/pointer][@field]`: the referenced job's JSON output
//! (or the part a JSON pointer names) is put under `field` of the input, or,
//! without a field, merged into it when it is an object (keys the input
//! already has are kept, so an explicit `--input` wins), or becomes the whole
//! input when the input is empty (`{}`). Each referenced job is a dependency,
//! so a failed step fails the steps after it, naming it.

use jobvisor_proto::control::{InputRef, JobRef, Payload};
use jobvisor_store::StoreHandle;
use serde_json::Value;

/// Checks a pipeline step's references and input at submit time (position
/// `index` in its batch). Returns a message for the client.
pub(crate) fn check_refs(refs: &[InputRef], index: usize, input: &Payload) -> Result<(), String> {
    let Payload::Json(text) = input else {
        return Err("a pipeline step (input_from) needs a JSON input".into());
    };
    let base: Value =
        serde_json::from_str(text).map_err(|e| format!("the input is not JSON: {e}"))?;
    for r in refs {
        if let JobRef::Batch(b) = r.job {
            if b as usize >= index {
                return Err(format!(
                    "input_from #{} must name an earlier job of the batch",
                    u64::from(b) + 1
                ));
            }
        }
        if let Some(p) = &r.pointer {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(format!("JSON pointer {p:?} must start with '/'"));
            }
        }
        if r.field.is_some() && !base.is_object() {
            return Err("input_from with a field needs an object input".into());
        }
    }
    Ok(())
}

/// Builds a pipeline step's input from its template and the outputs of the
/// jobs it references (all succeeded: they are its dependencies).
pub(crate) async fn build_input(
    store: &StoreHandle,
    template: &str,
    refs: &[InputRef],
) -> Result<String, String> {
    let mut input: Value =
        serde_json::from_str(template).map_err(|e| format!("the input is not JSON: {e}"))?;
    for r in refs {
        let JobRef::Id(id) = r.job else {
            return Err("unresolved batch reference".into());
        };
        let rec = store
            .get(id)
            .await
            .map_err(|e| format!("cannot read the output of job {id}: {e}"))?
            .ok_or_else(|| format!("job {id} (an input) no longer exists"))?;
        let output = match rec.output {
            Some(Payload::Json(text)) => serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("the output of job {id} is not JSON: {e}"))?,
            Some(Payload::Native(_)) => {
                return Err(format!(
                    "the output of job {id} is in the native encoding, not JSON"
                ))
            }
            None => return Err(format!("job {id} has no output")),
        };
        let value = match r.pointer.as_deref() {
            None | Some("") => output,
            Some(p) => output
                .pointer(p)
                .cloned()
                .ok_or_else(|| format!("the output of job {id} has nothing at {p}"))?,
        };
        merge(&mut input, value, r.field.as_deref())
            .map_err(|m| format!("input from job {id}: {m}"))?;
    }
    serde_json::to_string(&input).map_err(|e| e.to_string())
}

fn merge(input: &mut Value, value: Value, field: Option<&str>) -> Result<(), String> {
    match (field, input) {
        (Some(f), Value::Object(map)) => {
            map.insert(f.to_string(), value);
            Ok(())
        }
        (Some(_), _) => Err("a field needs an object input".into()),
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
            other => Err(format!(
                "{other} is not an object: name a field to put it under"
            )),
        },
        (None, slot) if slot.is_null() => {
            *slot = value;
            Ok(())
        }
        (None, _) => Err("the input is not an object to merge into".into()),
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
}
