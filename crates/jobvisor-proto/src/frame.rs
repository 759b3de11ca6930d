//! Length-prefixed framing.
//!
//! `[u32 LE payload length][payload]`. The length is checked against the
//! link's maximum before a single byte of payload is buffered, and the buffer
//! grows only as payload arrives, so a peer that announces a frame (even one
//! within the maximum) and stops costs us one read chunk. "Need more bytes" is `Ok(None)`; EOF in the
//! middle of a frame is [`FrameError::Truncated`] (see [`FrameBuf::check_eof`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{self, CodecError};

/// Bytes in the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced (or produced) payload is larger than the link allows.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Payload length announced or produced.
        len: u64,
        /// The link's maximum payload length.
        max: usize,
    },
    /// A message to send encodes to more than the link allows (found while
    /// encoding: the encoding stopped at the limit).
    #[error("message encodes to more than the maximum frame of {max} bytes")]
    MessageTooLarge {
        /// The link's maximum payload length.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended in the middle of a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes of the frame (header included) that arrived.
        have: usize,
        /// Bytes the frame needed (header included; 4 when the header itself is cut).
        want: usize,
    },
    /// The payload was not a valid message.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Appends one frame holding `msg` to `out`.
///
/// Nothing is appended when the encoded message exceeds `max_frame_bytes`;
/// encoding stops at the limit, so an oversize message never costs more
/// than `max_frame_bytes` of buffer.
///
/// # Errors
/// [`FrameError::MessageTooLarge`] or [`FrameError::Codec`].
pub fn encode_frame<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    msg: &T,
    max_frame_bytes: usize,
) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let max = max_frame_bytes.min(u32::MAX as usize);
    if let Err(e) = codec::encode_into_limited(msg, out, max) {
        out.truncate(start);
        return Err(match e {
            CodecError::TooLarge { .. } => FrameError::MessageTooLarge {
                max: max_frame_bytes,
            },
            e => e.into(),
        });
    }
    let len = out.len() - start - FRAME_HEADER_BYTES;
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// An incremental frame decoder with its own buffer.
///
/// Transports read into [`FrameBuf::spare`], report how much arrived with
/// [`FrameBuf::filled`], and take messages out with [`FrameBuf::decode_next`].
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame_bytes: usize,
}

const READ_CHUNK: usize = 64 * 1024;

impl FrameBuf {
    /// A decoder for a link whose frames may carry at most `max_frame_bytes` of payload.
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_frame_bytes,
        }
    }

    /// The link's maximum payload length.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Changes the maximum (used after a handshake agreed on one).
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max;
    }

    /// Bytes buffered but not yet consumed.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Bytes the buffer holds allocated (consumed, buffered and spare), the
    /// figure a transport charges against a memory budget.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// A writable tail to read into: a read chunk, or for a long frame as much
    /// again as is already buffered (so the buffer at most doubles per step).
    /// It grows with the bytes that arrive, never to the announced length: a
    /// peer that announces 64 MiB and sends ten bytes costs one read chunk.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let buffered = self.end - self.start;
        let need = match self.announced_len() {
            Some(len) if len <= self.max_frame_bytes => {
                (FRAME_HEADER_BYTES + len).saturating_sub(buffered)
            }
            _ => 0,
        };
        let want = need.min(buffered.max(READ_CHUNK)).max(READ_CHUNK);
        if self.buf.len() - self.end < want {
            // Compact before growing.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < want {
                // Exact, so the capacity a budget is charged is what `want` chose.
                self.buf.reserve_exact(self.end + want - self.buf.len());
                self.buf.resize(self.end + want, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into the slice [`FrameBuf::spare`] returned.
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// Appends bytes (for transports that do not read in place, and for tests).
    pub fn extend(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let spare = self.spare();
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            self.filled(n);
            rest = &rest[n..];
        }
    }

    fn announced_len(&self) -> Option<usize> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER_BYTES {
            return None;
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        header.copy_from_slice(&avail[..FRAME_HEADER_BYTES]);
        Some(u32::from_le_bytes(header) as usize)
    }

    /// The payload of the next complete frame, consumed from the buffer.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] as soon as a header announces more than the
    /// maximum. The link is unusable afterwards (framing is lost).
    pub fn next_payload(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let Some(len) = self.announced_len() else {
            return Ok(None);
        };
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_frame_bytes,
            });
        }
        if self.end - self.start < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let from = self.start + FRAME_HEADER_BYTES;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// The next complete message, consumed from the buffer.
    ///
    /// # Errors
    /// As [`FrameBuf::next_payload`], plus [`FrameError::Codec`] when the payload
    /// is not a `T`; the frame is consumed either way, so framing stays intact.
    pub fn decode_next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_payload()? {
            None => Ok(None),
            Some(payload) => Ok(Some(codec::decode(payload)?)),
        }
    }

    /// To be called when the stream reached EOF: an error if a frame was cut.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] when bytes of an incomplete frame are buffered.
    pub fn check_eof(&self) -> Result<(), FrameError> {
        let have = self.end - self.start;
        if have == 0 {
            return Ok(());
        }
        let want = self
            .announced_len()
            .map_or(FRAME_HEADER_BYTES, |l| FRAME_HEADER_BYTES + l);
        Err(FrameError::Truncated { have, want })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, v, 1 << 20).unwrap();
        out
    }

    #[test]
    fn an_announced_frame_allocates_only_what_arrived() {
        let max = 64 * 1024 * 1024;
        let mut fb = FrameBuf::new(max);
        fb.extend(&(max as u32).to_le_bytes());
        fb.extend(&[7u8; 10]);
        assert!(fb.decode_next::<Vec<u8>>().unwrap().is_none());
        let _ = fb.spare();
        assert!(fb.capacity() <= 2 * READ_CHUNK, "{}", fb.capacity());
        // Feeding the frame in read-sized steps grows the buffer with it.
        let mut sent = 10;
        while sent < 8 * READ_CHUNK {
            let n = fb.spare().len().min(READ_CHUNK);
            fb.filled(n);
            sent += n;
            assert!(fb.capacity() <= 4 * (sent + FRAME_HEADER_BYTES) + 2 * READ_CHUNK);
        }
    }

    #[test]
    fn a_large_frame_still_arrives_whole() {
        let payload = vec![3u8; 5 * READ_CHUNK + 17];
        let all = frame_of(&payload);
        let mut fb = FrameBuf::new(1 << 20);
        for chunk in all.chunks(1000) {
            fb.extend(chunk);
        }
        assert_eq!(fb.decode_next::<Vec<u8>>().unwrap(), Some(payload));
        fb.check_eof().unwrap();
    }

    #[test]
    fn one_frame_round_trip() {
        let mut fb = FrameBuf::new(1024);
        fb.extend(&frame_of(&"hi".to_string()));
        assert_eq!(fb.decode_next::<String>().unwrap().as_deref(), Some("hi"));
        assert!(fb.decode_next::<String>().unwrap().is_none());
        fb.check_eof().unwrap();
    }

    #[test]
    fn byte_at_a_time_and_many_frames() {
        let mut all = Vec::new();
        for i in 0..100u32 {
            all.extend(frame_of(&(i, vec![i as u8; i as usize])));
        }
        let mut fb = FrameBuf::new(1024);
        let mut got = Vec::new();
        for b in &all {
            fb.extend(std::slice::from_ref(b));
            while let Some(v) = fb.decode_next::<(u32, Vec<u8>)>().unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got.len(), 100);
        assert_eq!(got[99], (99, vec![99u8; 99]));
    }

    #[test]
    fn hostile_length_4_gib_is_refused_before_allocating() {
        let mut fb = FrameBuf::new(1 << 20);
        fb.extend(&u32::MAX.to_le_bytes());
        let err = fb.next_payload().unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len, max } if len == u64::from(u32::MAX) && max == 1 << 20)
        );
        // spare() must not have grown the buffer towards the announced size.
        assert!(fb.spare().len() <= 2 * READ_CHUNK);
    }

    #[test]
    fn length_just_over_max_is_refused() {
        let mut fb = FrameBuf::new(10);
        fb.extend(&11u32.to_le_bytes());
        assert!(matches!(
            fb.next_payload(),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        ));
        let mut fb = FrameBuf::new(10);
        fb.extend(&10u32.to_le_bytes());
        fb.extend(&[0; 10]);
        assert_eq!(fb.next_payload().unwrap().unwrap().len(), 10);
    }

    #[test]
    fn eof_mid_header_and_mid_payload() {
        let frame = frame_of(&"abcdef".to_string());
        let mut fb = FrameBuf::new(1024);
        fb.extend(&frame[..2]);
        assert!(fb.decode_next::<String>().unwrap().is_none());
        assert!(matches!(
            fb.check_eof(),
            Err(FrameError::Truncated { have: 2, want: 4 })
        ));
        let mut fb = FrameBuf::new(1024);
        fb.extend(&frame[..frame.len() - 1]);
        assert!(fb.decode_next::<String>().unwrap().is_none());
        assert!(matches!(fb.check_eof(), Err(FrameError::Truncated { .. })));
    }

    #[test]
    fn garbage_payload_is_a_codec_error_and_framing_survives() {
        let mut fb = FrameBuf::new(1024);
        fb.extend(&3u32.to_le_bytes());
        fb.extend(&[0xFF, 0xFF, 0xFF]);
        fb.extend(&frame_of(&7u8));
        assert!(matches!(
            fb.decode_next::<String>(),
            Err(FrameError::Codec(_))
        ));
        assert_eq!(fb.decode_next::<u8>().unwrap(), Some(7));
    }

    #[test]
    fn encode_refuses_oversize_and_leaves_buffer_untouched() {
        let mut out = vec![1, 2, 3];
        let err = encode_frame(&mut out, &vec![0u8; 100], 50).unwrap_err();
        assert!(matches!(err, FrameError::MessageTooLarge { max: 50 }));
        assert_eq!(out, vec![1, 2, 3]);
    }

    /// Issue 10, item B.8: a response was encoded whole (a gigabyte, for a
    /// big enough answer) before its size was checked. The encoding now
    /// stops at the limit: the buffer never holds much more than it.
    #[test]
    fn an_oversize_message_is_refused_without_building_it() {
        let rows: Vec<(u64, String)> = (0..200_000).map(|i| (i, "row".repeat(10))).collect();
        let mut out = Vec::new();
        let err = encode_frame(&mut out, &rows, 64 * 1024).unwrap_err();
        assert_eq!(
            err.to_string(),
            "message encodes to more than the maximum frame of 65536 bytes"
        );
        assert!(out.is_empty());
        // The whole encoding is over 6 MB; the buffer grew to the limit only.
        assert!(out.capacity() <= 2 * 64 * 1024 + 64, "{}", out.capacity());
        encode_frame(&mut out, &rows[..10], 64 * 1024).expect("a small one still fits");
    }

    #[test]
    fn large_frame_spanning_many_reads() {
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Blob(#[serde(with = "crate::bytes")] Vec<u8>);
        let big = Blob(vec![7u8; 300_000]);
        let frame = frame_of(&big);
        let mut fb = FrameBuf::new(1 << 20);
        for chunk in frame.chunks(1000) {
            fb.extend(chunk);
        }
        let got: Blob = fb.decode_next().unwrap().unwrap();
        assert_eq!(got, big);
    }

    proptest::proptest! {
        #[test]
        fn prop_round_trip_any_split(
            msgs in proptest::collection::vec((proptest::prelude::any::<u64>(), ".{0,40}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)), 0..20),
            split in 1usize..97,
        ) {
            let mut all = Vec::new();
            for m in &msgs { encode_frame(&mut all, m, 1 << 16).unwrap(); }
            let mut fb = FrameBuf::new(1 << 16);
            let mut got = Vec::new();
            for chunk in all.chunks(split) {
                fb.extend(chunk);
                while let Some(m) = fb.decode_next::<(u64, String, Vec<u8>)>().unwrap() { got.push(m); }
            }
            fb.check_eof().unwrap();
            proptest::prop_assert_eq!(got, msgs);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut fb = FrameBuf::new(256);
            fb.extend(&bytes);
            loop {
                match fb.decode_next::<crate::worker::ToWorker>() {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(FrameError::TooLarge { .. }) => break,
                    Err(_) => continue,
                }
            }
        }
    }
}
