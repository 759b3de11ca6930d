//! `#[serde(with = "crate::bytes")]` for `Vec<u8>` fields of wire messages.
//!
//! Serializes like `serde_bytes` (length + raw bytes). Deserializes through
//! `deserialize_bytes`, so with the codec's borrowing decoder a length prefix
//! that claims more than the payload holds fails *before* anything is
//! allocated (`serde_bytes` goes through `deserialize_byte_buf`, for which
//! bincode allocates the claimed length first).

use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::Serializer;

/// Serializes bytes as one length-prefixed byte string.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Deserializes a byte string without trusting its length prefix.
///
/// # Errors
/// The deserializer's (e.g. the payload ends before the announced bytes).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_bytes(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // Grow with the data actually present, never from the size hint alone.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}
