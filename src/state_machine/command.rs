//! What the Raft log carries: a [`Command`] per write, wrapped in an
//! [`Envelope`] with the leader's timestamp and an optional request id, and
//! the [`Reply`] that applying it yields.
//!
//! Commands carry the string forms of the wire; `apply` validates them again
//! (the service validated them before proposing), so a bad entry can never
//! change the state.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::RequestId;

/// A shard id's string form (`group:id`) as commands and replies carry it.
/// Ids of up to 23 bytes (nearly all: `default:123` is 11) live inline, so
/// decoding, cloning and answering them allocates nothing; longer ones share
/// one heap copy. Encodes and hashes exactly as a `String`, so the log,
/// snapshots and request fingerprints are unchanged.
pub type ShardIdText = smol_str::SmolStr;

/// `shard_ids` as commands carry them.
pub fn shard_id_texts(shard_ids: &[impl AsRef<str>]) -> Vec<ShardIdText> {
    shard_ids.iter().map(|shard_id| ShardIdText::new(shard_id.as_ref())).collect()
}

/// One write of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// Upsert a runner by address; heartbeat.
    Register {
        /// `host:port`.
        address: String,
        /// Effect's runner JSON, stored as given.
        runner: String,
        /// Whether the runner reports itself healthy.
        healthy: bool,
    },
    /// Delete the runner and every runner that is not live.
    Unregister {
        /// `host:port`.
        address: String,
    },
    /// Set a registered runner's health flag.
    SetRunnerHealth {
        /// `host:port`.
        address: String,
        /// The new flag.
        healthy: bool,
    },
    /// Take the free, own or expired locks among `shard_ids`.
    Acquire {
        /// `host:port`.
        address: String,
        /// `group:id` strings, at least one.
        shard_ids: Vec<ShardIdText>,
    },
    /// Heartbeat, and renew this address's locks among `shard_ids`.
    Refresh {
        /// `host:port`.
        address: String,
        /// `group:id` strings, possibly none.
        shard_ids: Vec<ShardIdText>,
    },
    /// Delete one lock if this address holds its record.
    Release {
        /// `host:port`.
        address: String,
        /// `group:id`.
        shard_id: ShardIdText,
    },
    /// Delete every lock record of this address.
    ReleaseAll {
        /// `host:port`.
        address: String,
    },
    /// Set the namespace's lock expiration `E`.
    SetLockExpiration {
        /// The new `E`, at least 1 ms.
        lock_expiration_ms: u64,
    },
    /// Name the cluster (once: a cluster that has a name keeps it). Written
    /// by the first leader of a new cluster; restore and recover name the
    /// cluster they make anew, so nodes of the old one are refused.
    SetClusterId {
        /// The cluster's identity.
        cluster_id: String,
    },
    /// Set the namespace's `E` unless it was set before (then only when
    /// `take_over`); answers the `E` in force.
    EnsureLockExpiration {
        /// The `E` the caller runs with (Effect's `shardLockExpiration`).
        lock_expiration_ms: u64,
        /// Replace an `E` set before to another value.
        take_over: bool,
    },
}

/// A command as it sits in the log: stamped with the leader's store time
/// when it was proposed, in the namespace the client named, with the
/// client's request id when it sent one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The leader's store time (ms) at proposal (`store_clock`).
    pub time_ms: u64,
    /// Present when the client asked for exactly-once application.
    pub request_id: Option<RequestId>,
    /// The namespace the command acts in.
    pub namespace: super::NamespaceName,
    /// The write.
    pub command: Command,
}

impl Envelope {
    /// `command` in the default namespace, with no request id.
    pub fn new(time_ms: u64, command: Command) -> Self {
        Envelope {
            time_ms,
            request_id: None,
            namespace: super::NamespaceName::new_static(super::DEFAULT_NAMESPACE),
            command,
        }
    }

    /// The fingerprint a deduplicated answer is kept with: the command's,
    /// mixed with the namespace unless it is the default one (so a request
    /// id reused in another namespace is another call).
    pub fn fingerprint(&self) -> u64 {
        let command = self.command.fingerprint();
        if self.namespace == super::DEFAULT_NAMESPACE {
            return command;
        }
        use std::hash::Hasher;
        let mut hasher = Fnv1a(command);
        hasher.write(self.namespace.as_bytes());
        hasher.finish()
    }
}

/// Why the state machine refused a command; the state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectionKind {
    /// Malformed input (SPEC §6).
    InvalidArgument,
    /// A cluster-wide cap would be passed.
    ResourceExhausted,
    /// A request id older than the oldest remembered for its client.
    FailedPrecondition,
}

/// The answer of applying one [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The write succeeded and returns nothing.
    Done,
    /// `register` succeeded with this machine id.
    MachineId(i64),
    /// `acquire`/`refresh` succeeded with these shard ids, in request order.
    ShardIds(Vec<ShardIdText>),
    /// `EnsureLockExpiration`: the namespace's `E` after the call, and
    /// whether one had been set before.
    LockExpiration {
        /// `E` in force.
        lock_expiration_ms: u64,
        /// Whether `E` had been set before the call.
        previously_set: bool,
    },
    /// The command was refused and changed nothing.
    Rejected {
        /// Which kind of refusal.
        kind: RejectionKind,
        /// What is wrong, naming the field.
        message: String,
    },
}

impl Reply {
    pub(crate) fn rejected(error: Error) -> Reply {
        let (kind, message) = match error {
            Error::InvalidArgument(m) => (RejectionKind::InvalidArgument, m),
            Error::ResourceExhausted(m) => (RejectionKind::ResourceExhausted, m),
            Error::FailedPrecondition(m) => (RejectionKind::FailedPrecondition, m),
            other => {
                unreachable!("the state machine only rejects with argument, cap or precondition errors, not {other}")
            }
        };
        Reply::Rejected { kind, message }
    }

    /// The machine id of a `register`'s reply.
    ///
    /// # Errors
    /// The refusal, or [`Error::Storage`] for a reply of another call.
    pub fn into_machine_id(self) -> Result<i64, Error> {
        match self.into_result()? {
            Reply::MachineId(id) => Ok(id),
            other => Err(other.unexpected()),
        }
    }

    /// The shard ids of an `acquire`'s or `refresh`'s reply.
    ///
    /// # Errors
    /// As [`Reply::into_machine_id`].
    pub fn into_shard_ids(self) -> Result<Vec<String>, Error> {
        match self.into_result()? {
            Reply::ShardIds(ids) => Ok(ids.into_iter().map(String::from).collect()),
            other => Err(other.unexpected()),
        }
    }

    /// The reply of a call that answers nothing.
    ///
    /// # Errors
    /// As [`Reply::into_machine_id`].
    pub fn into_done(self) -> Result<(), Error> {
        match self.into_result()? {
            Reply::Done => Ok(()),
            other => Err(other.unexpected()),
        }
    }

    /// `(E in force, previously set)` of an `EnsureLockExpiration`'s reply.
    ///
    /// # Errors
    /// As [`Reply::into_machine_id`].
    pub fn into_lock_expiration(self) -> Result<(u64, bool), Error> {
        match self.into_result()? {
            Reply::LockExpiration { lock_expiration_ms, previously_set } => Ok((lock_expiration_ms, previously_set)),
            other => Err(other.unexpected()),
        }
    }

    /// A reply that is not the one the call yields: a bug, reported as such.
    fn unexpected(self) -> Error {
        Error::Storage { message: format!("internal: unexpected reply {self:?}"), cause: None }
    }

    /// Turns a refusal back into the [`Error`] it stands for.
    ///
    /// # Errors
    /// The refusal, when this reply is [`Reply::Rejected`].
    pub fn into_result(self) -> Result<Reply, Error> {
        match self {
            Reply::Rejected { kind, message } => Err(match kind {
                RejectionKind::InvalidArgument => Error::InvalidArgument(message),
                RejectionKind::ResourceExhausted => Error::ResourceExhausted(message),
                RejectionKind::FailedPrecondition => Error::FailedPrecondition(message),
            }),
            reply => Ok(reply),
        }
    }
}

impl Command {
    /// Validates every argument as SPEC §6 requires, without touching state.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first bad field.
    pub fn validate(&self) -> Result<(), Error> {
        use crate::model::encoding::{split_shard_id, validate_address, validate_runner_json, validate_shard_ids};
        use crate::model::RunnerAddress;
        match self {
            Command::Register { address, runner, .. } => validate_runner_json(&RunnerAddress::parse(address)?, runner),
            Command::Unregister { address }
            | Command::SetRunnerHealth { address, .. }
            | Command::ReleaseAll { address } => validate_address(address),
            Command::Acquire { address, shard_ids } => {
                validate_address(address)?;
                validate_shard_ids(shard_ids, true)
            }
            Command::Refresh { address, shard_ids } => {
                validate_address(address)?;
                validate_shard_ids(shard_ids, false)
            }
            Command::Release { address, shard_id } => {
                validate_address(address)?;
                split_shard_id(shard_id).map(|_| ())
            }
            Command::SetClusterId { cluster_id } => crate::model::encoding::validate_cluster_id(cluster_id),
            Command::SetLockExpiration { lock_expiration_ms }
            | Command::EnsureLockExpiration { lock_expiration_ms, .. } => {
                if (1..=crate::limits::LOCK_EXPIRATION_MS_MAX).contains(lock_expiration_ms) {
                    Ok(())
                } else {
                    Err(Error::InvalidArgument(format!(
                        "lock_expiration_ms must be in 1..={}, got {lock_expiration_ms}",
                        crate::limits::LOCK_EXPIRATION_MS_MAX
                    )))
                }
            }
        }
    }

    /// The command's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Register { .. } => "register",
            Command::Unregister { .. } => "unregister",
            Command::SetRunnerHealth { .. } => "set_runner_health",
            Command::Acquire { .. } => "acquire",
            Command::Refresh { .. } => "refresh",
            Command::Release { .. } => "release",
            Command::ReleaseAll { .. } => "release_all",
            Command::SetLockExpiration { .. } => "set_lock_expiration",
            Command::EnsureLockExpiration { .. } => "ensure_lock_expiration",
            Command::SetClusterId { .. } => "set_cluster_id",
        }
    }
}

impl Command {
    /// A stable 64-bit fingerprint of the command and its arguments, kept with
    /// a deduplicated answer so that a request id reused for a different call
    /// is refused instead of being answered with another call's reply.
    ///
    /// FNV-1a over the derived `Hash` feed: unlike `DefaultHasher`, its output
    /// is fixed by this code, so every replica and every release agrees.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = Fnv1a(FNV_OFFSET_BASIS);
        self.hash(&mut hasher);
        hasher.finish()
    }
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv1a(u64);

impl std::hash::Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    /// `Command` as it was when shard ids were `String`s.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum CommandWithStrings {
        Register { address: String, runner: String, healthy: bool },
        Unregister { address: String },
        SetRunnerHealth { address: String, healthy: bool },
        Acquire { address: String, shard_ids: Vec<String> },
        Refresh { address: String, shard_ids: Vec<String> },
        Release { address: String, shard_id: String },
    }

    fn commands() -> Vec<Command> {
        let long = "a-group-name-longer-than-23-bytes:12345";
        vec![
            Command::Acquire { address: "host:1".into(), shard_ids: vec!["default:1".into()] },
            Command::Refresh {
                address: "host:1".into(),
                shard_ids: vec!["default:1".into(), "g:22".into(), long.into()],
            },
            Command::Release { address: "host:1".into(), shard_id: "default:7".into() },
        ]
    }

    /// `command` with its shard ids as `String`s, as the log held it before.
    fn with_strings(command: &Command) -> CommandWithStrings {
        let strings = |ids: &[ShardIdText]| ids.iter().map(ToString::to_string).collect();
        match command {
            Command::Acquire { address, shard_ids } => {
                CommandWithStrings::Acquire { address: address.clone(), shard_ids: strings(shard_ids) }
            }
            Command::Refresh { address, shard_ids } => {
                CommandWithStrings::Refresh { address: address.clone(), shard_ids: strings(shard_ids) }
            }
            Command::Release { address, shard_id } => {
                CommandWithStrings::Release { address: address.clone(), shard_id: shard_id.to_string() }
            }
            other => unreachable!("no shard ids in {other:?}"),
        }
    }

    #[test]
    fn compact_shard_ids_encode_exactly_as_strings_did() {
        for new in commands() {
            let bytes = postcard::to_allocvec(&new).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&with_strings(&new)).unwrap(), "{new:?}");
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), new);
        }
    }

    #[test]
    fn fingerprints_are_those_of_the_string_era() {
        // Computed with `shard_ids: Vec<String>`: answers remembered before the
        // change must still match the same request after it.
        let new = commands();
        let short_refresh =
            Command::Refresh { address: "host:1".into(), shard_ids: vec!["default:1".into(), "g:22".into()] };
        assert_eq!(short_refresh.fingerprint(), 0x689a_e06d_a2d7_dfb2);
        assert_eq!(new[0].fingerprint(), 0x17eb_fe15_c1a0_0e46);
        assert_eq!(new[2].fingerprint(), 0x723c_6035_70b0_a137);
    }
}
