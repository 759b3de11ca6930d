//! Wire-compatibility fixtures.
//!
//! A fixed, representative value of every message is encoded and compared byte
//! for byte with `tests/data/<name>.bin`; the stored bytes must also decode back
//! to the value. A difference means the wire format changed: builds on either
//! side of the change can no longer talk, so the change must come with a new
//! `SCHEMA` text and/or `PROTOCOL_VERSION` in `src/handshake.rs` (the handshake
//! then names both sides instead of failing on a garbled frame).
//!
//! To accept a deliberate change, after editing `SCHEMA` / `PROTOCOL_VERSION`
//! and the `RECORDED_*` literals below:
//!
//! ```text
//! JOBVISOR_BLESS=1 cargo test -p jobvisor-proto --test wire
//! ```
//!
//! Blessing records the protocol version and schema hash the fixtures belong
//! to in `tests/data/schema.txt`, and refuses to rewrite changed fixtures while
//! both are the same as when they were last blessed. `JOBVISOR_BLESS=force`
//! overrides that, for a change of the fixture *values* in this file.

use std::fmt::{Debug, Write as _};
use std::fs;
use std::path::{Path, PathBuf};

use jobvisor_proto::codec;
use jobvisor_proto::forkserver::{ExitStatus, ForkReply, ForkRequest};
use jobvisor_proto::worker::{
    Call, CallRef, FailureKind, FromWorker, Outcome, Reply, TaskFailure, TaskKind, ToWorker,
    ToWorkerRef,
};
use jobvisor_proto::{
    encode_frame, FrameBuf, Hello, Role, HELLO_BYTES, PROTOCOL_VERSION, SCHEMA_HASH,
};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `jobvisor_proto::SCHEMA_HASH` when the fixtures were last blessed. Changing
/// `SCHEMA` without updating this (and re-blessing) fails `schema_is_recorded`.
const RECORDED_SCHEMA_HASH: u64 = 0x7d01_2cde_cab3_b361;
/// `jobvisor_proto::PROTOCOL_VERSION` when the fixtures were last blessed.
const RECORDED_PROTOCOL_VERSION: u32 = 2;

const BLESS_VAR: &str = "JOBVISOR_BLESS";
const BLESS_CMD: &str = "JOBVISOR_BLESS=1 cargo test -p jobvisor-proto --test wire";
const MANIFEST: &str = "schema.txt";
const MAX_FRAME: usize = 1 << 20;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Compare,
    Bless,
    Force,
}

fn mode() -> Mode {
    match std::env::var(BLESS_VAR).as_deref() {
        Ok("1") => Mode::Bless,
        Ok("force") => Mode::Force,
        _ => Mode::Compare,
    }
}

type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One fixture: its file name (without `.bin`), the bytes this build produces,
/// and a check that stored bytes decode to the fixture's value.
struct Fixture {
    name: &'static str,
    bytes: Vec<u8>,
    decodes: Check,
}

fn message<T>(name: &'static str, value: T) -> Fixture
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let bytes = codec::encode(&value).unwrap_or_else(|e| panic!("{name}: {e}"));
    Fixture {
        name,
        bytes,
        decodes: Box::new(move |stored| {
            let got: T = codec::decode(stored).map_err(|e| format!("does not decode: {e}"))?;
            if got == value {
                Ok(())
            } else {
                Err(format!("decodes to {got:?}, expected {value:?}"))
            }
        }),
    }
}

fn framed<T>(name: &'static str, value: T) -> Fixture
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let mut bytes = Vec::new();
    encode_frame(&mut bytes, &value, MAX_FRAME).unwrap_or_else(|e| panic!("{name}: {e}"));
    Fixture {
        name,
        bytes,
        decodes: Box::new(move |stored| {
            let mut fb = FrameBuf::new(MAX_FRAME);
            fb.extend(stored);
            let got: T = fb
                .decode_next()
                .map_err(|e| format!("does not decode: {e}"))?
                .ok_or("is not a complete frame")?;
            fb.check_eof()
                .map_err(|e| format!("has bytes after the frame: {e}"))?;
            if got == value {
                Ok(())
            } else {
                Err(format!("decodes to {got:?}, expected {value:?}"))
            }
        }),
    }
}

fn hello(name: &'static str, value: Hello) -> Fixture {
    Fixture {
        name,
        bytes: value.encode().to_vec(),
        decodes: Box::new(move |stored| {
            let arr: &[u8; HELLO_BYTES] = stored
                .try_into()
                .map_err(|_| format!("is {} bytes, not {HELLO_BYTES}", stored.len()))?;
            let got = Hello::decode(arr).map_err(|e| format!("does not decode: {e}"))?;
            if got == value {
                Ok(())
            } else {
                Err(format!("decodes to {got:?}, expected {value:?}"))
            }
        }),
    }
}

fn two_calls() -> Vec<Call> {
    vec![
        Call {
            id: 1,
            task: 0,
            chunk: false,
            timeout_ms: None,
            stall_ms: None,
            input: b"\x00\x01\x02input".to_vec(),
        },
        Call {
            // Multi-byte varints: 251 is the first 3-byte u64, 70_000 a 5-byte u32.
            id: 251,
            task: 70_000,
            chunk: true,
            timeout_ms: Some(30_000),
            stall_ms: Some(5_000),
            input: Vec::new(),
        },
    ]
}

fn fixtures() -> Vec<Fixture> {
    vec![
        message(
            "to_worker_configure",
            ToWorker::Configure {
                max_frame_bytes: 64 << 20,
                max_output_bytes: 250,
                memory_soft_limit_bytes: 1 << 30,
                memory_limit_bytes: 0,
                heartbeat_interval_ms: 1000,
            },
        ),
        message("to_worker_run", ToWorker::Run(two_calls())),
        message("to_worker_cancel", ToWorker::Cancel { id: u64::MAX }),
        message("to_worker_shutdown", ToWorker::Shutdown),
        framed("frame_to_worker_run", ToWorker::Run(two_calls())),
        message(
            "from_worker_ready",
            FromWorker::Ready {
                pid: 4242,
                tasks: vec!["echo".into(), "sleep".into(), "größe".into()],
                kinds: vec![TaskKind::Cpu, TaskKind::Io, TaskKind::Cpu],
            },
        ),
        message(
            "from_worker_done",
            FromWorker::Done(vec![
                Reply {
                    id: 1,
                    outcome: Outcome::Ok(vec![0xde, 0xad, 0xbe, 0xef]),
                    cpu_us: 1234,
                    wall_us: 5678,
                    max_poll_us: 0,
                },
                Reply {
                    id: 251,
                    outcome: Outcome::Err(TaskFailure {
                        kind: FailureKind::Panic,
                        message: "boom".into(),
                    }),
                    cpu_us: 0,
                    wall_us: 1,
                    max_poll_us: 321,
                },
            ]),
        ),
        message("from_worker_heartbeat", FromWorker::Heartbeat { id: 7 }),
        message("from_worker_pulse", FromWorker::Pulse),
        message(
            "from_worker_progress",
            FromWorker::Progress {
                id: 7,
                done: 300,
                total: 1_000_000,
            },
        ),
        message("fork_request_spawn", ForkRequest::Spawn { token: 9 }),
        message(
            "fork_request_signal",
            ForkRequest::Signal {
                pid: 4242,
                signal: 15,
                group: true,
            },
        ),
        message(
            "fork_reply_spawned",
            ForkReply::Spawned {
                token: 9,
                pid: 4242,
            },
        ),
        message(
            "fork_reply_spawn_failed",
            ForkReply::SpawnFailed {
                token: 10,
                message: "fork: Resource temporarily unavailable".into(),
            },
        ),
        message(
            "fork_reply_exited",
            ForkReply::Exited {
                pid: 4242,
                status: ExitStatus {
                    code: None,
                    signal: Some(11),
                    core_dumped: true,
                    max_rss_kib: 123_456,
                },
            },
        ),
        hello("hello_worker", Hello::ours(Role::Worker)),
    ]
}

fn manifest_text() -> String {
    format!("protocol {PROTOCOL_VERSION}\nschema {SCHEMA_HASH:#018x}\n")
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn describe_difference(stored: &[u8], now: &[u8]) -> String {
    let at = stored
        .iter()
        .zip(now)
        .position(|(a, b)| a != b)
        .unwrap_or(stored.len().min(now.len()));
    format!(
        "first difference at byte {at} (stored {} bytes, now {} bytes)\n      stored: {}\n      now:    {}",
        stored.len(),
        now.len(),
        hex(stored),
        hex(now)
    )
}

fn bless(dir: &Path, fixtures: &[Fixture], mode: Mode) {
    fs::create_dir_all(dir).unwrap();
    let manifest_path = dir.join(MANIFEST);
    let same_schema = fs::read_to_string(&manifest_path).ok().as_deref() == Some(&manifest_text());
    let changed: Vec<&str> = fixtures
        .iter()
        .filter(|f| matches!(fs::read(dir.join(format!("{}.bin", f.name))), Ok(b) if b != f.bytes))
        .map(|f| f.name)
        .collect();
    if same_schema && !changed.is_empty() && mode != Mode::Force {
        panic!(
            "refusing to bless: the wire encoding of {changed:?} changed, but PROTOCOL_VERSION \
             ({PROTOCOL_VERSION}) and SCHEMA_HASH ({SCHEMA_HASH:#018x}) are the ones the fixtures \
             were blessed with. Describe the change in SCHEMA and/or bump PROTOCOL_VERSION in \
             crates/jobvisor-proto/src/handshake.rs first, so that old and new builds refuse each \
             other at the handshake. (If only the fixture values in tests/wire.rs changed, use \
             {BLESS_VAR}=force.)"
        );
    }
    for f in fixtures {
        fs::write(dir.join(format!("{}.bin", f.name)), &f.bytes).unwrap();
    }
    fs::write(&manifest_path, manifest_text()).unwrap();
    eprintln!(
        "blessed {} wire fixtures in {} for protocol {PROTOCOL_VERSION}, schema {SCHEMA_HASH:#018x}",
        fixtures.len(),
        dir.display()
    );
}

#[test]
fn wire_fixtures_match() {
    let dir = data_dir();
    let fixtures = fixtures();
    let mode = mode();
    if mode != Mode::Compare {
        bless(&dir, &fixtures, mode);
    }

    let mut problems = Vec::new();
    for f in &fixtures {
        let path = dir.join(format!("{}.bin", f.name));
        match fs::read(&path) {
            Err(e) => problems.push(format!("  {}: cannot read {}: {e}", f.name, path.display())),
            Ok(stored) => {
                if stored != f.bytes {
                    problems.push(format!(
                        "  {}: encoding differs from {}\n      {}",
                        f.name,
                        path.display(),
                        describe_difference(&stored, &f.bytes)
                    ));
                }
                if let Err(e) = (f.decodes)(&stored) {
                    problems.push(format!("  {}: the stored fixture {e}", f.name));
                }
            }
        }
    }
    let manifest_path = dir.join(MANIFEST);
    match fs::read_to_string(&manifest_path) {
        Ok(text) if text == manifest_text() => {}
        Ok(text) => problems.push(format!(
            "  {MANIFEST}: fixtures were blessed for {:?}, this build is {:?}",
            text.trim(),
            manifest_text().trim()
        )),
        Err(e) => problems.push(format!(
            "  {MANIFEST}: cannot read {}: {e}",
            manifest_path.display()
        )),
    }

    assert!(
        problems.is_empty(),
        "\nThe jobvisor wire format changed (or a fixture is missing):\n{}\n\n\
         Builds on either side of this change cannot talk to each other. If the change is \
         deliberate, update SCHEMA and/or bump PROTOCOL_VERSION in \
         crates/jobvisor-proto/src/handshake.rs (and the RECORDED_* literals in \
         crates/jobvisor-proto/tests/wire.rs), then regenerate the fixtures with\n\n    {BLESS_CMD}\n\n\
         and commit crates/jobvisor-proto/tests/data/. If it is not deliberate, the change to \
         the message types (or to the codec configuration) is the bug.\n",
        problems.join("\n")
    );
}

#[test]
fn schema_is_recorded() {
    assert_eq!(
        (PROTOCOL_VERSION, SCHEMA_HASH),
        (RECORDED_PROTOCOL_VERSION, RECORDED_SCHEMA_HASH),
        "\nPROTOCOL_VERSION / SCHEMA_HASH ({PROTOCOL_VERSION}, {SCHEMA_HASH:#018x}) differ from the \
         values recorded in crates/jobvisor-proto/tests/wire.rs. If SCHEMA or PROTOCOL_VERSION \
         in crates/jobvisor-proto/src/handshake.rs was changed deliberately, update \
         RECORDED_PROTOCOL_VERSION / RECORDED_SCHEMA_HASH to the new values and re-bless the \
         fixtures with\n\n    {BLESS_CMD}\n"
    );
}

// ---- property tests: arbitrary calls through frames ----

fn arb_call() -> impl Strategy<Value = Call> {
    (
        any::<u64>(),
        any::<u32>(),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(id, task, chunk, timeout_ms, stall_ms, input)| Call {
            id,
            task,
            chunk,
            timeout_ms,
            stall_ms,
            input,
        })
}

fn arb_to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        1 => (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(
                max_frame_bytes,
                max_output_bytes,
                memory_soft_limit_bytes,
                memory_limit_bytes,
                heartbeat_interval_ms,
            )| {
                ToWorker::Configure {
                    max_frame_bytes,
                    max_output_bytes,
                    memory_soft_limit_bytes,
                    memory_limit_bytes,
                    heartbeat_interval_ms,
                }
            }
        ),
        4 => proptest::collection::vec(arb_call(), 0..8).prop_map(ToWorker::Run),
        1 => any::<u64>().prop_map(|id| ToWorker::Cancel { id }),
        1 => Just(ToWorker::Shutdown),
    ]
}

/// Frames `msgs` into one stream, feeds it to a [`FrameBuf`] in `split`-byte
/// chunks and returns what came out.
fn through_frames<T>(msgs: &[T], split: usize) -> Vec<T>
where
    T: Serialize + DeserializeOwned,
{
    let mut stream = Vec::new();
    for m in msgs {
        encode_frame(&mut stream, m, MAX_FRAME).unwrap();
    }
    let mut fb = FrameBuf::new(MAX_FRAME);
    let mut got = Vec::new();
    for chunk in stream.chunks(split) {
        fb.extend(chunk);
        while let Some(m) = fb.decode_next::<T>().unwrap() {
            got.push(m);
        }
    }
    fb.check_eof().unwrap();
    got
}

proptest! {
    #[test]
    fn prop_calls_round_trip_through_frames(
        calls in proptest::collection::vec(arb_call(), 0..16),
        split in 1usize..97,
    ) {
        prop_assert_eq!(through_frames(&calls, split), calls);
    }

    #[test]
    fn prop_run_batches_round_trip_through_frames(
        batches in proptest::collection::vec(proptest::collection::vec(arb_call(), 0..8), 0..6),
        split in 1usize..97,
    ) {
        let msgs: Vec<ToWorker> = batches.into_iter().map(ToWorker::Run).collect();
        for m in &msgs {
            // The borrowed mirror the supervisor sends with encodes identically.
            let ToWorker::Run(calls) = m else { unreachable!() };
            let refs: Vec<CallRef<'_>> = calls
                .iter()
                .map(|c| CallRef {
                    id: c.id,
                    task: c.task,
                    chunk: c.chunk,
                    timeout_ms: c.timeout_ms,
                    stall_ms: c.stall_ms,
                    input: &c.input,
                })
                .collect();
            prop_assert_eq!(
                codec::encode(&ToWorkerRef::Run(&refs)).unwrap(),
                codec::encode(m).unwrap()
            );
        }
        prop_assert_eq!(through_frames(&msgs, split), msgs);
    }

    #[test]
    fn prop_any_to_worker_round_trips_through_frames(
        msgs in proptest::collection::vec(arb_to_worker(), 0..8),
        split in 1usize..97,
    ) {
        prop_assert_eq!(through_frames(&msgs, split), msgs);
    }
}
