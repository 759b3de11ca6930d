//! The JSON shape of a job record: what `jobvisor status --json` prints and
//! what completion notifications carry (webhook body, a command's stdin).
//!
//! It is the derived serde shape of [`JobRecord`], except that `state` is its
//! lowercase name (`"succeeded"`) and `input`/`output` are shown by
//! [`payload_json`]: JSON payloads as the JSON value itself, native ones as
//! `{"native_hex": "..."}`. One function, so that the CLI and the
//! notifications cannot drift apart.

use crate::control::{JobRecord, Payload};
use crate::hex;
use serde_json::{json, Value};

/// A payload as JSON: the parsed value for JSON text (the text as a string if
/// it does not parse), `{"native_hex": "..."}` for native bytes.
pub fn payload_json(p: &Payload) -> Value {
    match p {
        Payload::Json(t) => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.clone())),
        Payload::Native(b) => json!({ "native_hex": hex(b) }),
    }
}

/// A record as JSON (see the module docs).
///
/// # Errors
/// Only if serde cannot represent the record (it always can today).
pub fn record_json(r: &JobRecord) -> Result<Value, serde_json::Error> {
    let mut v = serde_json::to_value(r)?;
    if let Value::Object(obj) = &mut v {
        obj.insert("state".to_owned(), json!(r.state.as_str()));
        obj.insert(
            "input".to_owned(),
            r.input.as_ref().map_or(Value::Null, payload_json),
        );
        obj.insert(
            "output".to_owned(),
            r.output.as_ref().map_or(Value::Null, payload_json),
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_show_json_as_itself_and_native_as_hex() {
        assert_eq!(
            payload_json(&Payload::Json("{\"a\":1}".into())),
            json!({"a": 1})
        );
        assert_eq!(payload_json(&Payload::Json("nope".into())), json!("nope"));
        assert_eq!(
            payload_json(&Payload::Native(vec![0, 0xab])),
            json!({"native_hex": "00ab"})
        );
    }
}
