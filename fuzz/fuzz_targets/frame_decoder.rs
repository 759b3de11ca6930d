//! Arbitrary bytes, cut at arbitrary points, through [`FrameBuf`].
//!
//! Input layout: byte 0 chooses how the stream is cut (below 0x80: fixed
//! chunks of `byte + 1` bytes; from 0x80: pseudo-random chunk sizes seeded by
//! the byte), the rest is the stream. The same stream is fed to four decoders
//! with a 4096-byte frame limit:
//!
//! - one decoding only `ToWorker` (fed with `extend`),
//! - one decoding only `FromWorker` (fed the way transports do, through
//!   `spare` / `filled`),
//! - one alternating `ToWorker` and `FromWorker` (fed with `extend`),
//! - a reference taking raw payloads with `next_payload`.
//!
//! Framing does not depend on the message type, so all four must consume the
//! same frames, stop on the same `TooLarge` header, and agree at EOF. Nothing
//! may panic, and every decoded message must survive a re-encode.
#![no_main]

#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;
use common::Cutter;

use std::fmt::Debug;

use jobvisor_proto::codec;
use jobvisor_proto::worker::{FromWorker, ToWorker};
use jobvisor_proto::{encode_frame, FrameBuf, FrameError, FRAME_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

const MAX_FRAME: usize = 4096;

/// `spare()` may round up to a read chunk (64 KiB today) but must never size
/// itself by what a peer announces; this is a generous bound on that.
const SPARE_BOUND: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    To,
    From,
    Alternate,
    Payload,
}

#[derive(Debug)]
struct Lane {
    fb: FrameBuf,
    kind: Kind,
    in_place: bool,
    turn: bool,
    dead: bool,
    frames: usize,
    decoded: usize,
}

impl Lane {
    fn new(kind: Kind, in_place: bool) -> Self {
        Self {
            fb: FrameBuf::new(MAX_FRAME),
            kind,
            in_place,
            turn: false,
            dead: false,
            frames: 0,
            decoded: 0,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        if self.dead {
            return;
        }
        if !self.in_place {
            self.fb.extend(chunk);
            return;
        }
        while !chunk.is_empty() {
            let spare = self.fb.spare();
            assert!(!spare.is_empty(), "spare() returned an empty slice");
            assert!(
                spare.len() <= SPARE_BOUND,
                "spare() grew to {} bytes with a {MAX_FRAME}-byte frame limit",
                spare.len()
            );
            let n = spare.len().min(chunk.len());
            spare[..n].copy_from_slice(&chunk[..n]);
            self.fb.filled(n);
            chunk = &chunk[n..];
        }
    }

    fn drain(&mut self) {
        while !self.dead {
            let step = match self.kind {
                Kind::To => step::<ToWorker>(&mut self.fb),
                Kind::From => step::<FromWorker>(&mut self.fb),
                Kind::Alternate => {
                    self.turn = !self.turn;
                    if self.turn {
                        step::<ToWorker>(&mut self.fb)
                    } else {
                        step::<FromWorker>(&mut self.fb)
                    }
                }
                Kind::Payload => payload_step(&mut self.fb),
            };
            match step {
                Step::Decoded => {
                    self.frames += 1;
                    self.decoded += 1;
                }
                Step::Rejected => self.frames += 1,
                Step::NeedMore => break,
                Step::TooLarge => self.dead = true,
            }
        }
    }
}

enum Step {
    Decoded,
    Rejected,
    NeedMore,
    TooLarge,
}

fn step<T>(fb: &mut FrameBuf) -> Step
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let before = fb.buffered();
    let result = fb.decode_next::<T>();
    let after = fb.buffered();
    match result {
        Ok(Some(value)) => {
            assert!(before - after >= FRAME_HEADER_BYTES);
            let payload_len = before - after - FRAME_HEADER_BYTES;
            // A canonical re-encode is never longer than what was accepted,
            // so it fits the same frame limit, and it decodes to the same value.
            let mut out = Vec::new();
            encode_frame(&mut out, &value, MAX_FRAME).expect("re-encoding a decoded message");
            assert!(out.len() - FRAME_HEADER_BYTES <= payload_len);
            let mut again = FrameBuf::new(MAX_FRAME);
            again.extend(&out);
            let back = again
                .decode_next::<T>()
                .expect("re-encoded frame decodes")
                .expect("re-encoded frame is complete");
            assert_eq!(back, value);
            assert_eq!(again.buffered(), 0);
            again.check_eof().expect("nothing left over");
            assert_eq!(codec::encode(&back).unwrap(), out[FRAME_HEADER_BYTES..]);
            Step::Decoded
        }
        Ok(None) => {
            assert_eq!(after, before, "Ok(None) consumed bytes");
            Step::NeedMore
        }
        Err(FrameError::Codec(_)) => {
            // The bad frame is consumed whole, so framing survives.
            assert!(before - after >= FRAME_HEADER_BYTES);
            Step::Rejected
        }
        Err(FrameError::TooLarge { len, max }) => too_large(before, after, len, max),
        Err(e) => panic!("unexpected error from decode_next: {e:?}"),
    }
}

fn payload_step(fb: &mut FrameBuf) -> Step {
    let before = fb.buffered();
    let len = match fb.next_payload() {
        Ok(Some(payload)) => {
            assert!(payload.len() <= MAX_FRAME);
            payload.len()
        }
        Ok(None) => {
            assert_eq!(fb.buffered(), before, "Ok(None) consumed bytes");
            return Step::NeedMore;
        }
        Err(FrameError::TooLarge { len, max }) => {
            return too_large(before, fb.buffered(), len, max)
        }
        Err(e) => panic!("unexpected error from next_payload: {e:?}"),
    };
    assert_eq!(before - fb.buffered(), FRAME_HEADER_BYTES + len);
    Step::Decoded
}

fn too_large(before: usize, after: usize, len: u64, max: usize) -> Step {
    assert_eq!(max, MAX_FRAME);
    assert!(len > MAX_FRAME as u64, "TooLarge for {len} <= {max}");
    assert_eq!(after, before, "TooLarge consumed bytes");
    Step::TooLarge
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let mut lanes = [
        Lane::new(Kind::To, false),
        Lane::new(Kind::From, true),
        Lane::new(Kind::Alternate, false),
        Lane::new(Kind::Payload, true),
    ];
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

    let reference = &lanes[3];
    for lane in &lanes[..3] {
        assert_eq!(
            lane.dead, reference.dead,
            "{:?} disagrees on TooLarge",
            lane.kind
        );
        assert_eq!(
            lane.frames, reference.frames,
            "{:?} framed differently",
            lane.kind
        );
        assert_eq!(
            lane.fb.buffered(),
            reference.fb.buffered(),
            "{:?}",
            lane.kind
        );
    }
    if !reference.dead {
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
