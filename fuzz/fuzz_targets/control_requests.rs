//! The control socket's messages: arbitrary bytes as `control::Request` (what
//! the daemon decodes from any local client) and `control::Response` (what
//! the client decodes from the daemon), both as raw payloads and through
//! `FrameBuf` framing.
//!
//! Input layout: byte 0 chooses how the stream is cut (below 0x80: fixed
//! chunks of `byte + 1` bytes; from 0x80: pseudo-random chunk sizes seeded by
//! the byte), the rest is the stream.
//!
//! - The whole stream, as one payload, is decoded as a `Request` and as a
//!   `Response`: anything that decodes re-encodes no longer than it was,
//!   decodes back equal, and its encoding is a fixed point.
//! - The stream is framed with a 4096-byte limit through two decoders: one fed
//!   the way the daemon reads (`spare` / `filled`) decoding `Request`s, one fed
//!   with `extend` decoding `Response`s, as the client does. Framing does not
//!   depend on the type: both consume the same frames and stop on the same
//!   `TooLarge` header. Every decoded frame round-trips through
//!   `encode_frame`; for every malformed request, the answer the daemon sends
//!   ("malformed request: ...") encodes, small, within the frame limit.
//! - Nothing panics.
#![no_main]

#[path = "common/mod.rs"]
mod common;
use common::{round_trip, Cutter};

use std::fmt::Debug;

use jobvisor_proto::control::{ControlError, ErrorKind, JobState, Request, Response};
use jobvisor_proto::{encode_frame, FrameBuf, FrameError, FRAME_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

const MAX_FRAME: usize = 4096;

/// Largest answer to a malformed request: the error text is bounded, whatever
/// the request held.
const MAX_ERROR_ANSWER: usize = 1024;

fn inspect_request(req: &Request) {
    match req {
        Request::List { state: Some(s), .. } => {
            assert_eq!(JobState::parse(s.as_str()), Some(*s));
        }
        Request::Submit(specs) => {
            for s in specs {
                let _ = s.input.len();
                let _ = s.input.is_empty();
            }
        }
        _ => {}
    }
    let _ = format!("{req:?}");
}

fn inspect_response(resp: &Response) {
    match resp {
        Response::Job(r) => {
            assert_eq!(JobState::parse(r.state.as_str()), Some(r.state));
        }
        Response::Jobs(v) => {
            for r in v {
                assert_eq!(JobState::parse(r.state.as_str()), Some(r.state));
            }
        }
        Response::Error(e) => {
            let _ = e.to_string();
        }
        _ => {}
    }
    let _ = format!("{resp:?}");
}

/// One frame through `encode_frame` and a fresh `FrameBuf`, as the peer would read it.
fn frame_round_trip<T>(value: &T, payload_len: usize)
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let mut out = Vec::new();
    encode_frame(&mut out, value, MAX_FRAME).expect("re-encoding a decoded message");
    assert!(out.len() - FRAME_HEADER_BYTES <= payload_len);
    let mut again = FrameBuf::new(MAX_FRAME);
    again.extend(&out);
    let back = again
        .decode_next::<T>()
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert_eq!(&back, value);
    assert_eq!(again.buffered(), 0);
    again.check_eof().expect("nothing left over");
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Decoded,
    Rejected,
    NeedMore,
    TooLarge,
}

#[derive(Debug)]
struct Lane {
    fb: FrameBuf,
    /// Decodes `Request`s fed through `spare`/`filled` (the daemon), else
    /// `Response`s fed with `extend` (the client).
    daemon: bool,
    dead: bool,
    frames: usize,
}

impl Lane {
    fn new(daemon: bool) -> Self {
        Self {
            fb: FrameBuf::new(MAX_FRAME),
            daemon,
            dead: false,
            frames: 0,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        if self.dead {
            return;
        }
        if !self.daemon {
            self.fb.extend(chunk);
            return;
        }
        while !chunk.is_empty() {
            let spare = self.fb.spare();
            assert!(!spare.is_empty(), "spare() returned an empty slice");
            let n = spare.len().min(chunk.len());
            spare[..n].copy_from_slice(&chunk[..n]);
            self.fb.filled(n);
            chunk = &chunk[n..];
        }
    }

    fn drain(&mut self) {
        while !self.dead {
            let step = if self.daemon {
                step::<Request>(&mut self.fb, inspect_request, true)
            } else {
                step::<Response>(&mut self.fb, inspect_response, false)
            };
            match step {
                Step::Decoded | Step::Rejected => self.frames += 1,
                Step::NeedMore => break,
                Step::TooLarge => self.dead = true,
            }
        }
    }
}

fn step<T>(fb: &mut FrameBuf, inspect: fn(&T), answer_errors: bool) -> Step
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let before = fb.buffered();
    let result = fb.decode_next::<T>();
    let after = fb.buffered();
    match result {
        Ok(Some(value)) => {
            assert!(before - after >= FRAME_HEADER_BYTES);
            inspect(&value);
            frame_round_trip(&value, before - after - FRAME_HEADER_BYTES);
            Step::Decoded
        }
        Ok(None) => {
            assert_eq!(after, before, "Ok(None) consumed bytes");
            Step::NeedMore
        }
        Err(FrameError::Codec(e)) => {
            // The bad frame is consumed whole, so the connection lives on.
            assert!(before - after >= FRAME_HEADER_BYTES);
            if answer_errors {
                // The daemon's answer (server.rs), which must always go out.
                let answer = Response::Error(ControlError {
                    kind: ErrorKind::BadRequest,
                    message: format!("malformed request: {e}"),
                });
                let mut out = Vec::new();
                encode_frame(&mut out, &answer, MAX_FRAME).expect("the error answer encodes");
                assert!(
                    out.len() <= MAX_ERROR_ANSWER,
                    "a {}-byte answer to a malformed request: {answer:?}",
                    out.len()
                );
            }
            Step::Rejected
        }
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(max, MAX_FRAME);
            assert!(len > MAX_FRAME as u64, "TooLarge for {len} <= {max}");
            assert_eq!(after, before, "TooLarge consumed bytes");
            Step::TooLarge
        }
        Err(e) => panic!("unexpected error from decode_next: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };

    // Raw payloads: the stream as one message of either direction.
    if let Some(req) = round_trip::<Request>(stream) {
        inspect_request(&req);
    }
    if let Some(resp) = round_trip::<Response>(stream) {
        inspect_response(&resp);
    }

    // Framed: the daemon's reader and the client's reader over the same bytes.
    let mut lanes = [Lane::new(true), Lane::new(false)];
    let mut cutter = Cutter::new(selector);
    let mut rest = stream;
    while !rest.is_empty() {
        let n = cutter.next_len().min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        for lane in &mut lanes {
            lane.feed(chunk);
            lane.drain();
        }
        if lanes.iter().all(|l| l.dead) {
            break;
        }
    }
    let [daemon, client] = &lanes;
    assert_eq!(daemon.dead, client.dead, "the lanes disagree on TooLarge");
    assert_eq!(daemon.frames, client.frames, "the lanes framed differently");
    assert_eq!(daemon.fb.buffered(), client.fb.buffered());
    if !daemon.dead {
        for lane in &lanes {
            let have = lane.fb.buffered();
            match lane.fb.check_eof() {
                Ok(()) => assert_eq!(have, 0),
                Err(FrameError::Truncated { have: h, want }) => {
                    assert_eq!(h, have);
                    assert!(want > have, "Truncated with want {want} <= have {have}");
                    assert!(want <= FRAME_HEADER_BYTES + MAX_FRAME);
                }
                Err(e) => panic!("unexpected error from check_eof: {e:?}"),
            }
        }
    }
});
