//! The handshake every link starts with.
//!
//! [`Hello`] has a fixed 24-byte layout that does not depend on the codec, so
//! two builds that disagree about everything else still understand each
//! other's hello and can say precisely why they cannot talk.
//!
//! The schema hash is an FNV-1a hash of [`SCHEMA`], a textual description of
//! every message type on the links. Whoever changes a message type changes that
//! text (the wire fixtures in `tests/data/` fail otherwise), and old and new
//! builds then refuse each other with an error naming both hashes.

/// Version of the link protocols. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 2;

/// Every message type on the links, field by field, in declaration order.
pub const SCHEMA: &str = "\
ToWorker{Configure{max_frame_bytes:u64,max_output_bytes:u64,memory_soft_limit_bytes:u64,memory_limit_bytes:u64,heartbeat_interval_ms:u64},Run(Vec<Call>),Cancel{id:u64},Shutdown}\
Call{id:u64,task:u32,chunk:bool,timeout_ms:Option<u64>,stall_ms:Option<u64>,input:bytes}\
FromWorker{Ready{pid:u32,tasks:Vec<String>,kinds:Vec<TaskKind>},Done(Vec<Reply>),Heartbeat{id:u64},Retiring{reason:String},Progress{id:u64,done:u64,total:u64},Draining{reason:String},Pulse}\
Reply{id:u64,outcome:Outcome,cpu_us:u64,wall_us:u64,max_poll_us:u64}\
TaskKind{Cpu,Io}\
Outcome{Ok(bytes),Err(TaskFailure)}\
TaskFailure{kind:FailureKind,message:String}\
FailureKind{Error,Panic,BadInput,UnknownTask,Cancelled,OutputTooLarge}\
ForkRequest{Spawn{token:u64},Signal{pid:u32,signal:i32,group:bool}}\
ForkReply{Spawned{token:u64,pid:u32},SpawnFailed{token:u64,message:String},Exited{pid:u32,status:ExitStatus}}\
ExitStatus{code:Option<i32>,signal:Option<i32>,core_dumped:bool,max_rss_kib:u64}\
Payload{Json(String),Native(bytes)}\
JobSpec{task:String,input:Payload,queue:Option<String>,priority:i32,max_attempts:Option<u32>,max_crashes:Option<u32>,backoff_base_ms:Option<u64>,backoff_max_ms:Option<u64>,timeout_ms:Option<u64>,delay_ms:Option<u64>,after:Vec<u64>,key:Option<String>,stall_timeout_ms:Option<u64>,input_from:Vec<InputRef>,notify_url:Option<String>}\
JobRef{Id(u64),Batch(u32)}\
InputRef{job:JobRef,pointer:Option<String>,field:Option<String>}\
JobState{Queued,Running,Retrying,Succeeded,Failed,Cancelled,Dead}\
AttemptOutcome{Running,Ok,Error(String),Panic(String),Crashed{code:Option<i32>,signal:Option<i32>,max_rss_kib:u64,stderr_tail:Vec<String>,cause:Option<String>},TimedOut(String),Lost,Cancelled}\
Attempt{number:u32,worker_pid:Option<u32>,started_ms:u64,finished_ms:Option<u64>,outcome:AttemptOutcome}\
JobRecord{id:u64,task:String,queue:String,priority:i32,state:JobState,max_attempts:u32,max_crashes:Option<u32>,budget_from:u32,epoch:u32,timeout_ms:Option<u64>,stall_timeout_ms:Option<u64>,input_from:Vec<InputRef>,backoff_base_ms:u64,backoff_max_ms:u64,after:Vec<u64>,key:Option<String>,created_ms:u64,run_at_ms:u64,finished_ms:Option<u64>,input:Option<Payload>,output:Option<Payload>,error:Option<String>,attempts:Vec<Attempt>,notify_url:Option<String>}\
Submitted{id:u64,duplicate:bool}\
WorkerState{Ready,Retiring,Stopping,Dead}\
WorkerRow{id:u64,pid:u32,state:WorkerState,in_flight:u64,calls_done:u64,running_job:Option<u64>}\
Stats{pid:u32,uptime_s:u64,workers:u64,jobs:Vec<(String,u64)>,submitted:u64,attempts_finished:u64,worker_restarts:u64,recovered:u64,degraded:bool,restart_delay_ms:u64,tasks:Vec<TaskUsage>,notify_delivered:u64,notify_failed:u64,notify_dropped:u64}\
TaskUsage{task:String,attempts:u64,cpu_ms:u64,wall_ms:u64,advice:Option<String>,kind:String,max_poll_ms:u64}\
Request{Submit(Vec<JobSpec>),Status{id:u64},Wait{ids:Vec<u64>,timeout_ms:Option<u64>},Cancel{id:u64},Retry{id:u64},List{state:Option<JobState>,queue:Option<String>,limit:u32},Workers,Stats,Ping,Events,Shutdown{graceful:bool}}\
Event{at_ms:u64,kind:EventKind}\
EventKind{Job{id:u64,task:String,state:JobState,attempt:Option<u32>,worker_pid:Option<u32>,error:Option<String>},WorkerStarted{pid:u32},WorkerExited{pid:u32,status:String},Lagged{missed:u64}}\
ErrorKind{BadRequest,UnknownTask,BadInput,NotFound,LimitReached,ShuttingDown,Storage,PermissionDenied,Conflict,Internal}\
ControlError{kind:ErrorKind,message:String}\
Response{Submitted(Vec<Submitted>),Job(JobRecord),Jobs(Vec<JobRecord>),Workers(Vec<WorkerRow>),Stats(Stats),Pong{pid:u32,version:String},Event(Event),Ok,Error(ControlError)}";

const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Hash of [`SCHEMA`].
pub const SCHEMA_HASH: u64 = fnv1a64(SCHEMA.as_bytes());

const MAGIC: [u8; 8] = *b"JOBVISOR";

/// Bytes of an encoded [`Hello`].
pub const HELLO_BYTES: usize = 24;

/// Who is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The supervisor (the pool or the daemon).
    Supervisor,
    /// A worker process.
    Worker,
    /// The fork server.
    ForkServer,
    /// A control-socket client.
    Client,
}

impl Role {
    fn to_u32(self) -> u32 {
        match self {
            Role::Supervisor => 1,
            Role::Worker => 2,
            Role::ForkServer => 3,
            Role::Client => 4,
        }
    }
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Role::Supervisor,
            2 => Role::Worker,
            3 => Role::ForkServer,
            4 => Role::Client,
            _ => return None,
        })
    }
}

/// The first message on every link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Who sends it.
    pub role: Role,
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The sender's [`SCHEMA_HASH`].
    pub schema: u64,
}

/// The handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer did not send a jobvisor hello at all.
    #[error("peer is not a jobvisor endpoint (bad hello magic {found:02x?})")]
    BadMagic {
        /// The first bytes the peer sent.
        found: [u8; 8],
    },
    /// The peer announced an unknown role.
    #[error("peer announced unknown role {0}")]
    BadRole(u32),
    /// The peer speaks another protocol or schema.
    #[error(
        "protocol mismatch: we ({ours_role:?}) speak protocol {ours_protocol} schema {ours_schema:#018x}, \
         the peer ({peer_role:?}) speaks protocol {peer_protocol} schema {peer_schema:#018x}"
    )]
    Mismatch {
        /// Our role.
        ours_role: Role,
        /// Our protocol version.
        ours_protocol: u32,
        /// Our schema hash.
        ours_schema: u64,
        /// The peer's role.
        peer_role: Role,
        /// The peer's protocol version.
        peer_protocol: u32,
        /// The peer's schema hash.
        peer_schema: u64,
    },
    /// The peer has the wrong role for this link.
    #[error("expected a {expected:?} on this link, the peer is a {found:?}")]
    WrongRole {
        /// The role this link needs.
        expected: Role,
        /// The role the peer announced.
        found: Role,
    },
}

impl Hello {
    /// Our own hello, in `role`.
    pub const fn ours(role: Role) -> Self {
        Self {
            role,
            protocol: PROTOCOL_VERSION,
            schema: SCHEMA_HASH,
        }
    }

    /// The fixed 24-byte encoding: magic, role, protocol (u32 LE), schema (u64 LE).
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.role.to_u32().to_le_bytes());
        out[12..16].copy_from_slice(&self.protocol.to_le_bytes());
        out[16..24].copy_from_slice(&self.schema.to_le_bytes());
        out
    }

    /// Parses a peer's hello.
    ///
    /// # Errors
    /// [`HandshakeError::BadMagic`] or [`HandshakeError::BadRole`].
    pub fn decode(bytes: &[u8; HELLO_BYTES]) -> Result<Self, HandshakeError> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MAGIC {
            return Err(HandshakeError::BadMagic { found: magic });
        }
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[r]);
            u32::from_le_bytes(b)
        };
        let role_raw = word(8..12);
        let role = Role::from_u32(role_raw).ok_or(HandshakeError::BadRole(role_raw))?;
        let mut schema = [0u8; 8];
        schema.copy_from_slice(&bytes[16..24]);
        Ok(Self {
            role,
            protocol: word(12..16),
            schema: u64::from_le_bytes(schema),
        })
    }

    /// Checks a peer's hello against ours, expecting the peer in `expected` role.
    ///
    /// # Errors
    /// [`HandshakeError::Mismatch`] naming both sides, or [`HandshakeError::WrongRole`].
    pub fn check_peer(&self, peer: &Hello, expected: Role) -> Result<(), HandshakeError> {
        if peer.protocol != self.protocol || peer.schema != self.schema {
            return Err(HandshakeError::Mismatch {
                ours_role: self.role,
                ours_protocol: self.protocol,
                ours_schema: self.schema,
                peer_role: peer.role,
                peer_protocol: peer.protocol,
                peer_schema: peer.schema,
            });
        }
        if peer.role != expected {
            return Err(HandshakeError::WrongRole {
                expected,
                found: peer.role,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        let h = Hello::ours(Role::Worker);
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn mismatch_names_both_versions() {
        let ours = Hello::ours(Role::Supervisor);
        let peer = Hello {
            role: Role::Worker,
            protocol: PROTOCOL_VERSION + 1,
            schema: 0xdead_beef,
        };
        let err = ours.check_peer(&peer, Role::Worker).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("protocol {PROTOCOL_VERSION}")),
            "{text}"
        );
        assert!(
            text.contains(&format!("protocol {}", PROTOCOL_VERSION + 1)),
            "{text}"
        );
        assert!(text.contains("0x00000000deadbeef"), "{text}");
        assert!(text.contains(&format!("{SCHEMA_HASH:#018x}")), "{text}");
    }

    #[test]
    fn bad_magic_and_role() {
        let mut bytes = Hello::ours(Role::Worker).encode();
        bytes[0] = b'X';
        assert!(matches!(
            Hello::decode(&bytes),
            Err(HandshakeError::BadMagic { .. })
        ));
        let mut bytes = Hello::ours(Role::Worker).encode();
        bytes[8] = 99;
        assert!(matches!(
            Hello::decode(&bytes),
            Err(HandshakeError::BadRole(99))
        ));
    }

    #[test]
    fn wrong_role() {
        let ours = Hello::ours(Role::Supervisor);
        let err = ours
            .check_peer(&Hello::ours(Role::Client), Role::Worker)
            .unwrap_err();
        assert!(matches!(err, HandshakeError::WrongRole { .. }));
    }
}
