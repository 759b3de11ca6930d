//! How `exec`'s argument list and environment read and write, in JSON (what
//! people send) and in the native encoding (bincode, between the daemon and
//! its workers).
//!
//! An argument is any bytes but NUL (a file name, `$'\xff'`), so `argv` holds
//! `OsString`s. In JSON each is a string when it is valid UTF-8 and
//! `{"base64": "..."}` (standard alphabet, padded) when it is not; either
//! form is accepted for any argument. Natively each is a byte string.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use base64::Engine as _;
use jobvisor_proto::json::text::{self, Text};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::Deserialize;

/// The one key of the JSON form of an argument that is not UTF-8: the
/// public JSON's marker for bytes ([`jobvisor_proto::json::text`]).
pub use jobvisor_proto::json::text::BASE64_KEY;

/// `#[serde(with = "crate::args::argv")]` for `Vec<OsString>`.
pub mod argv {
    use super::*;

    /// Serializes each argument as text when it is UTF-8, else as
    /// `{"base64": ...}` (JSON); as bytes natively.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(args: &[OsString], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(args.len()))?;
        for a in args {
            seq.serialize_element(&Arg(a))?;
        }
        seq.end()
    }

    /// Reads what [`serialize`] writes (in JSON, either form for any argument).
    ///
    /// # Errors
    /// The deserializer's, or an argument that is neither a string nor
    /// `{"base64": ...}` with valid base64.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
        let args: Vec<ArgIn> = Vec::deserialize(d)?;
        Ok(args.into_iter().map(|a| OsString::from_vec(a.0)).collect())
    }
}

/// The JSON form of one argument: its text, or `{"base64": ...}` when it is
/// not UTF-8 (what the CLI sends for `submit exec -- ls $'\xff'`).
pub fn arg_json(arg: &OsStr) -> serde_json::Value {
    Text::to_value(arg.as_bytes())
}

/// One argument as written: the public JSON's rule for bytes (a string, or
/// `{"base64": ...}`), natively a byte string.
struct Arg<'a>(&'a OsStr);

impl serde::Serialize for Arg<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        text::serialize(self.0.as_bytes(), s)
    }
}

/// One argument as read: its bytes.
struct ArgIn(Vec<u8>);

impl<'de> Deserialize<'de> for ArgIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            d.deserialize_any(ArgVisitor)
        } else {
            d.deserialize_bytes(ArgVisitor)
        }
    }
}

struct ArgVisitor;

impl<'de> Visitor<'de> for ArgVisitor {
    type Value = ArgIn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"an argument: a string, or {"base64": "..."} for bytes that are not UTF-8"#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ArgIn, E> {
        Ok(ArgIn(v.as_bytes().to_vec()))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ArgIn, E> {
        Ok(ArgIn(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ArgIn, E> {
        Ok(ArgIn(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgIn, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(ArgIn(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ArgIn, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != BASE64_KEY || bytes.is_some() {
                return Err(de::Error::custom(format!(
                    "an argument object has exactly one key, \"{BASE64_KEY}\"; found {key:?}"
                )));
            }
            let text: String = map.next_value()?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| {
                    de::Error::custom(format!("argument {{\"{BASE64_KEY}\": {text:?}}}: {e}"))
                })?;
            bytes = Some(decoded);
        }
        bytes
            .map(ArgIn)
            .ok_or_else(|| de::Error::custom(format!("an argument object needs \"{BASE64_KEY}\"")))
    }
}

/// `env` as pairs from either JSON form: an object (`{"K": "V"}`, what people
/// write) or a list of pairs (`[["K", "V"]]`, which keeps an order). The
/// native (bincode) encoding is always the list: bincode cannot tell a map
/// from a list by looking, so only a self-describing format gets the choice.
pub(crate) fn env_pairs<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"an object {"K": "V"} or a list of pairs [["K", "V"]]"#)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = seq.next_element()? {
                out.push(pair);
            }
            Ok(out)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(pair) = map.next_entry()? {
                out.push(pair);
            }
            Ok(out)
        }
    }

    if d.is_human_readable() {
        d.deserialize_any(Pairs)
    } else {
        d.deserialize_seq(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct A {
        #[serde(with = "argv")]
        argv: Vec<OsString>,
    }

    fn bytes(b: &[u8]) -> OsString {
        OsString::from_vec(b.to_vec())
    }

    #[test]
    fn json_keeps_text_as_text_and_other_bytes_as_base64() {
        let a = A {
            argv: vec![bytes(b"ls"), bytes(b"\xff\xfe-x"), bytes(b"")],
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(text, r#"{"argv":["ls",{"base64":"//4teA=="},""]}"#);
        assert_eq!(serde_json::from_str::<A>(&text).unwrap(), a);
        assert_eq!(
            arg_json(&a.argv[1]),
            serde_json::json!({"base64": "//4teA=="})
        );
        // Either form for any argument.
        let b: A = serde_json::from_str(r#"{"argv": [{"base64": "bHM="}]}"#).unwrap();
        assert_eq!(b.argv, [bytes(b"ls")]);
    }

    #[test]
    fn the_native_encoding_carries_the_bytes() {
        use jobvisor_proto::codec::{decode, encode};
        let a = A {
            argv: vec![bytes(b"\xff"), bytes(b"echo")],
        };
        assert_eq!(decode::<A>(&encode(&a).unwrap()).unwrap(), a);
    }

    #[test]
    fn bad_argument_objects_are_refused_with_the_reason() {
        for (json, says) in [
            (r#"{"argv": [{"b64": "eA=="}]}"#, "exactly one key"),
            (r#"{"argv": [{"base64": "!!"}]}"#, "argument {\"base64\""),
            (r#"{"argv": [{}]}"#, "needs \"base64\""),
            (r#"{"argv": [1]}"#, "an argument: a string"),
        ] {
            let e = serde_json::from_str::<A>(json).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
