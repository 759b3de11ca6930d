//! Bytes in the public JSON: a UTF-8 string when they are UTF-8 (almost
//! always: a command's output, a file name), `{"base64": "…"}` when they are
//! not, so that nothing is lost and text stays text. An array of numbers
//! (serde's default for `Vec<u8>`) would make 1 MB of text 3.6 MB of JSON.
//!
//! [`Text`] is the type; [`serialize`]/[`deserialize`] are the same rule as a
//! serde adapter for a task's byte fields (`#[serde(with =
//! "jobvisor_proto::json::text")]`). Both are shaped by the format: JSON
//! (human-readable) gets the string or the marker, the codec's bincode gets
//! plain bytes, exactly as `serde_bytes` writes them.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::{Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// The key of the marker object for bytes that are not UTF-8.
pub const BASE64_KEY: &str = "base64";

/// Bytes shown as text: `"hello\n"`, or `{"base64": "/w=="}` when they are
/// not UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text(pub Vec<u8>);

impl Text {
    /// The bytes as a JSON value (the string, or the base64 marker).
    pub fn to_value(bytes: &[u8]) -> serde_json::Value {
        match std::str::from_utf8(bytes) {
            Ok(s) => serde_json::Value::String(s.to_owned()),
            Err(_) => serde_json::json!({ BASE64_KEY: BASE64.encode(bytes) }),
        }
    }
}

impl From<Vec<u8>> for Text {
    fn from(v: Vec<u8>) -> Self {
        Text(v)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Text)
    }
}

/// Serializes bytes: a string or `{"base64": …}` in JSON, a byte string in
/// the codec.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if !s.is_human_readable() {
        return s.serialize_bytes(v);
    }
    match std::str::from_utf8(v) {
        Ok(text) => s.serialize_str(text),
        Err(_) => {
            let mut m = s.serialize_map(Some(1))?;
            m.serialize_entry(BASE64_KEY, &BASE64.encode(v))?;
            m.end()
        }
    }
}

/// Deserializes what [`serialize`] writes. In JSON it also takes an array of
/// byte values, the form records written before this type had.
///
/// # Errors
/// The deserializer's, or bad base64, or a marker object with other keys.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_any(TextVisitor)
    } else {
        d.deserialize_bytes(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, {\"base64\": \"...\"} or a byte string")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
        Ok(v.as_bytes().to_vec())
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Vec<u8>, E> {
        Ok(v.into_bytes())
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<u8>, A::Error> {
        let mut out = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != BASE64_KEY || out.is_some() {
                return Err(A::Error::custom(format!(
                    "bytes are a string or {{\"{BASE64_KEY}\": \"...\"}}, not an object with `{key}`"
                )));
            }
            let encoded: String = map.next_value()?;
            let bytes = BASE64
                .decode(encoded.as_bytes())
                .map_err(|e| A::Error::custom(format!("bad base64 in `{BASE64_KEY}`: {e}")))?;
            out = Some(bytes);
        }
        out.ok_or_else(|| A::Error::missing_field(BASE64_KEY))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Grow with the data actually present, never from the size hint alone.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Out {
        #[serde(with = "super")]
        stdout: Vec<u8>,
    }

    #[test]
    fn utf8_is_a_string_and_the_rest_is_base64() {
        assert_eq!(Text::to_value(b"hello\n"), json!("hello\n"));
        assert_eq!(Text::to_value(b""), json!(""));
        assert_eq!(
            Text::to_value(b"caf\xe9 \xff"),
            json!({"base64": "Y2Fm6SD/"})
        );
        assert_eq!(
            serde_json::to_value(Text(b"\xff\x00".to_vec())).unwrap(),
            json!({"base64": "/wA="})
        );
        let out = Out {
            stdout: "héllo".into(),
        };
        assert_eq!(
            serde_json::to_string(&out).unwrap(),
            r#"{"stdout":"héllo"}"#
        );
    }

    #[test]
    fn json_round_trips_and_reads_the_old_arrays() {
        for bytes in [&b"text\n"[..], b"\xff\xfe\x00", b"", b"\xe2\x82"] {
            let v = Out {
                stdout: bytes.to_vec(),
            };
            let s = serde_json::to_string(&v).unwrap();
            assert_eq!(serde_json::from_str::<Out>(&s).unwrap(), v, "{s}");
        }
        let old: Out = serde_json::from_str(r#"{"stdout":[104,105]}"#).unwrap();
        assert_eq!(old.stdout, b"hi");
        for bad in [
            r#"{"stdout":{"base64":"!!"}}"#,
            r#"{"stdout":{"hex":"00"}}"#,
            r#"{"stdout":{}}"#,
            r#"{"stdout":[256]}"#,
        ] {
            assert!(serde_json::from_str::<Out>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_codec_sees_plain_bytes_as_serde_bytes_writes_them() {
        #[derive(Serialize)]
        struct Before {
            #[serde(with = "serde_bytes")]
            stdout: Vec<u8>,
        }
        let bytes = b"\xffabc".to_vec();
        let ours = crate::codec::encode(&Out {
            stdout: bytes.clone(),
        })
        .unwrap();
        let theirs = crate::codec::encode(&Before {
            stdout: bytes.clone(),
        })
        .unwrap();
        assert_eq!(ours, theirs);
        let back: Out = crate::codec::decode(&ours).unwrap();
        assert_eq!(back.stdout, bytes);
    }
}
