//! The codec: every use of `bincode` in jobvisor lives in this module, so the
//! format can be swapped for a wire-compatible crate in one place.
//!
//! Configuration: bincode 2 `standard()` (little endian, varint integers).
//! Decoding always runs with a limit on the bytes a message may claim, so a
//! hostile length prefix inside a payload cannot make us allocate more than a
//! fixed multiple ([`CLAIM_FACTOR`]) of the (already bounded) frame size.
//! bincode counts claims in *decoded* bytes (a `Vec<T>` of n elements claims
//! n × `size_of::<T>()`), which is why the factor is well above 1: a small
//! struct can take 1 byte on the wire and 48 in memory.

use bincode::config::{self, Configuration};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encoding or decoding a message failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] bincode::error::EncodeError),
    /// The bytes are not a valid encoding of the expected message.
    #[error("cannot decode message")]
    Decode(#[source] bincode::error::DecodeError),
    /// Writing an encoded message failed.
    #[error("cannot write message")]
    Io(#[source] std::io::Error),
    /// The encoding would pass the limit it was written under; encoding
    /// stopped there.
    #[error("message encodes to more than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The payload decoded, but bytes were left over.
    #[error("message has {extra} trailing bytes")]
    TrailingBytes {
        /// How many bytes followed the message.
        extra: usize,
    },
}

const fn standard() -> Configuration {
    config::standard()
}

/// Appends the encoding of `value` to `buf`.
///
/// # Errors
/// [`CodecError::Encode`] when serde refuses the value (e.g. a map with
/// non-string keys that bincode cannot represent).
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, buf, standard())
        .map(|_| ())
        .map_err(CodecError::Encode)
}

/// Appends the encoding of `value` to `buf` if it takes at most `max` bytes.
///
/// Encoding stops at the first byte past `max`, so a message too large to
/// send costs at most `max` bytes of buffer, not its whole encoding. On an
/// error `buf` may hold part of the encoding: the caller truncates it.
///
/// # Errors
/// [`CodecError::TooLarge`], or as [`encode_into`].
pub fn encode_into_limited<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<(), CodecError> {
    let mut writer = LimitedWriter {
        buf,
        left: max,
        passed: false,
    };
    match bincode::serde::encode_into_writer(value, &mut writer, standard()) {
        Ok(()) => Ok(()),
        Err(_) if writer.passed => Err(CodecError::TooLarge { max }),
        Err(e) => Err(CodecError::Encode(e)),
    }
}

/// A `Vec` that takes at most `left` more bytes, and fails the encoding
/// (noting that it `passed` the limit) at the first write past them.
struct LimitedWriter<'a> {
    buf: &'a mut Vec<u8>,
    left: usize,
    passed: bool,
}

impl bincode::enc::write::Writer for LimitedWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if bytes.len() > self.left {
            self.passed = true;
            return Err(bincode::error::EncodeError::Other(
                "message past its size limit",
            ));
        }
        self.left -= bytes.len();
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes a `T` from the first bytes of `bytes`; the rest is not looked at.
/// Returns it with the number of bytes it took.
///
/// # Errors
/// [`CodecError::Decode`] when the first bytes are not a `T`.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, standard().with_limit::<{ 1usize << 20 }>())
        .map_err(CodecError::Decode)
}

/// For a payload that encodes an enum whose variant's content starts with a
/// sequence (a newtype variant of a `Vec`, or a struct variant whose first
/// field is one): the variant's index and the sequence's length, read from
/// the first few bytes. `None` when the payload does not start that way.
///
/// This is how a receiver can refuse a request that announces too many
/// elements before decoding any of them.
pub fn variant_and_seq_len(bytes: &[u8]) -> Option<(u32, u64)> {
    decode_prefix::<(u32, u64)>(bytes).ok().map(|(v, _)| v)
}

/// Encodes `value` into a fresh buffer.
///
/// # Errors
/// As [`encode_into`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// How many decoded bytes a payload may claim per byte of payload (at least 1 MiB in all).
pub const CLAIM_FACTOR: usize = 64;

macro_rules! decode_with_limit {
    ($bytes:expr, $($limit:literal),+) => {{
        let len = $bytes.len();
        $(
            if len <= $limit {
                const LIMIT: usize = if $limit * CLAIM_FACTOR > 1 << 20 { $limit * CLAIM_FACTOR } else { 1 << 20 };
                return finish(bincode::serde::borrow_decode_from_slice(
                    $bytes,
                    standard().with_limit::<LIMIT>(),
                ), len);
            }
        )+
        finish(bincode::serde::borrow_decode_from_slice(
            $bytes,
            standard().with_limit::<{ 1usize << 32 }>(),
        ), len)
    }};
}

/// Decodes exactly one message from `bytes`.
///
/// The decode limit is chosen from a ladder of powers of two: [`CLAIM_FACTOR`]
/// times the smallest rung that holds the payload, at least 1 MiB (bincode's
/// limits are compile-time constants). The payload itself is bounded by the
/// frame limit before this is called.
///
/// # Errors
/// [`CodecError::Decode`] for invalid or truncated bytes or a claim over the
/// limit; [`CodecError::TrailingBytes`] when bytes follow the message.
///
/// Decoding borrows from `bytes` (bincode's borrowing decoder) even though the
/// result is owned: a byte string or string whose length prefix claims more
/// than the payload holds then fails before anything is allocated, where the
/// owning decoder would allocate the claimed length first.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with_limit!(bytes, 4096, 65536, 1048576, 16777216, 268435456, 1073741824)
}

fn finish<T>(
    result: Result<(T, usize), bincode::error::DecodeError>,
    len: usize,
) -> Result<T, CodecError> {
    let (value, used) = result.map_err(CodecError::Decode)?;
    if used != len {
        return Err(CodecError::TrailingBytes { extra: len - used });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_simple() {
        let v: (u32, String, Vec<u8>) = (7, "x".into(), vec![1, 2, 3]);
        let bytes = encode(&v).unwrap();
        let back: (u32, String, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!(v, back);
    }

    #[test]
    fn hostile_inner_length_is_refused_without_allocating() {
        // A Vec<u64> claiming u64::MAX/2 elements in a 10-byte payload.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let err = decode::<Vec<u64>>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
    }

    /// Run in a child process under a 256 MiB address-space limit: a byte
    /// string claiming 512 MiB inside a 2 MiB payload (within the claim limit
    /// of that size class) must fail on the missing bytes. The owning decoder
    /// would allocate the claimed 512 MiB first, which aborts under the limit.
    #[test]
    fn byte_string_claiming_more_than_the_payload_fails_without_allocating() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "codec::tests::hostile_claim_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("JOBVISOR_HOSTILE_CLAIM_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("hostile claim refused"), "{stdout}");
    }

    #[test]
    fn hostile_claim_child() {
        if std::env::var_os("JOBVISOR_HOSTILE_CLAIM_CHILD").is_none() {
            return;
        }
        #[derive(serde::Deserialize, Debug)]
        struct B(
            #[allow(dead_code)]
            #[serde(with = "crate::bytes")]
            Vec<u8>,
        );
        let mut bytes = vec![0xFC];
        bytes.extend_from_slice(&(512u32 << 20).to_le_bytes());
        bytes.resize(2 << 20, 0);
        let limit = 256u64 << 20;
        // SAFETY: setrlimit on this (child) process with a valid struct.
        let r = unsafe { libc_setrlimit_as(limit) };
        assert_eq!(r, 0);
        assert!(decode::<B>(&bytes).is_err());
        println!("hostile claim refused");
    }

    extern "C" {
        fn setrlimit(resource: i32, rlim: *const [u64; 2]) -> i32;
    }

    /// RLIMIT_AS (9 on Linux) without a libc dependency in this crate.
    unsafe fn libc_setrlimit_as(bytes: u64) -> i32 {
        let lim = [bytes, bytes];
        // SAFETY: valid pointer to a two-word rlimit struct.
        unsafe { setrlimit(9, &lim) }
    }

    #[test]
    fn a_limited_encoding_stops_at_its_limit() {
        let big = vec![7u64; 1 << 20];
        let mut buf = vec![1, 2];
        let err = encode_into_limited(&big, &mut buf, 1000).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { max: 1000 }), "{err}");
        // It never held the whole (1 MiB or more) encoding.
        assert!(buf.len() <= 1002, "{}", buf.len());
        assert!(buf.capacity() < 64 * 1024, "{}", buf.capacity());
        let mut buf = Vec::new();
        encode_into_limited(&vec![7u64; 100], &mut buf, 101).unwrap();
        assert_eq!(buf, encode(&vec![7u64; 100]).unwrap());
        let err = encode_into_limited(&vec![7u64; 100], &mut Vec::new(), 100).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { max: 100 }), "{err}");
    }

    #[test]
    fn an_enum_variant_announces_its_sequence_length() {
        #[derive(serde::Serialize)]
        enum E {
            #[allow(dead_code)]
            A(u8),
            B(Vec<String>),
            C {
                xs: Vec<u8>,
                _y: u8,
            },
        }
        let b = encode(&E::B(vec!["x".into(); 300])).unwrap();
        assert_eq!(variant_and_seq_len(&b), Some((1, 300)));
        let c = encode(&E::C {
            xs: vec![1; 70_000],
            _y: 0,
        })
        .unwrap();
        assert_eq!(variant_and_seq_len(&c), Some((2, 70_000)));
        // Only the first bytes are read: a claim of 4 million is seen as such.
        let mut head = encode(&1u32).unwrap();
        head.extend(encode(&4_000_000u64).unwrap());
        assert_eq!(variant_and_seq_len(&head), Some((1, 4_000_000)));
        assert_eq!(variant_and_seq_len(&[]), None);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&5u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn truncated_payload_is_an_error() {
        let bytes = encode(&"hello world".to_string()).unwrap();
        assert!(decode::<String>(&bytes[..bytes.len() - 3]).is_err());
    }
}
