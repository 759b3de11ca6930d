//! Raw payloads straight into the codec, as every message type on the links.
//!
//! Each successfully decoded value must encode again, the re-encoding must be
//! no longer than the accepted bytes (it is canonical), decode back to an equal
//! value, and be a fixed point of encode ∘ decode. The first 24 bytes are also
//! parsed as a [`Hello`], whose fixed layout must round-trip byte for byte.
#![no_main]

#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;
use common::round_trip;

use jobvisor_proto::codec;
use jobvisor_proto::forkserver::{ExitStatus, ForkReply, ForkRequest};
use jobvisor_proto::handshake::HandshakeError;
use jobvisor_proto::worker::{Call, CallRef, FromWorker, Reply, ToWorker, ToWorkerRef};
use jobvisor_proto::{Hello, Role, HELLO_BYTES};
use libfuzzer_sys::fuzz_target;

fn hello(prefix: &[u8; HELLO_BYTES]) {
    match Hello::decode(prefix) {
        Ok(h) => {
            assert_eq!(&h.encode(), prefix, "hello does not round-trip");
            // Never panics, whatever the peer said.
            let ours = Hello::ours(Role::Supervisor);
            let _ = ours.check_peer(&h, Role::Worker);
            let _ = ours.check_peer(&h, h.role).map_err(|e| e.to_string());
        }
        Err(HandshakeError::BadMagic { found }) => {
            assert_eq!(found[..], prefix[..8]);
            assert_ne!(&found, b"JOBVISOR");
        }
        Err(HandshakeError::BadRole(role)) => {
            assert_eq!(&prefix[..8], b"JOBVISOR");
            assert_eq!(role.to_le_bytes()[..], prefix[8..12]);
            assert!(!(1..=4).contains(&role), "role {role} refused");
        }
        Err(e) => panic!("unexpected hello error {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(ToWorker::Run(calls)) = round_trip::<ToWorker>(data) {
        // The borrowed mirror the supervisor sends with must encode identically.
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
        assert_eq!(
            codec::encode(&ToWorkerRef::Run(&refs)).unwrap(),
            codec::encode(&ToWorker::Run(calls.clone())).unwrap()
        );
    }
    round_trip::<FromWorker>(data);
    round_trip::<ForkRequest>(data);
    round_trip::<ForkReply>(data);
    round_trip::<Call>(data);
    round_trip::<Reply>(data);
    round_trip::<ExitStatus>(data);
    if let Some(prefix) = data.first_chunk::<HELLO_BYTES>() {
        hello(prefix);
    }
});
