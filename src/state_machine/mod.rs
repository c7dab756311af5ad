//! The deterministic state machine: runners, shard locks, machine ids, the
//! lock expiration and request-id deduplication (SPEC §3, §4, §6).
//!
//! Pure: no clock, no I/O, no randomness, no async. Time enters only as the
//! `time_ms` of each [`Envelope`] and the `now_ms` argument of reads, so every
//! replica that applies the same log reaches the same state. The Raft state
//! machine store, the in-memory store and the chaos checker all wrap this type.
//!
//! Layout: [`command`] (what the log carries), `runners` and `locks` (the two
//! tables), `dedup` (request ids), `invariants` (whole-state checks).

pub mod command;
mod dedup;
mod invariants;
mod locks;
mod runners;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use command::{shard_id_texts, Command, Envelope, RejectionKind, Reply, ShardIdText};

use crate::error::Error;
use crate::limits;

/// The state's hash map: std's, hashed with foldhash instead of SipHash.
///
/// Seeded per process like std's default, so no iteration order is ever
/// the same on two nodes and none may be observable; several times cheaper
/// than SipHash on the short string keys here (addresses, shard ids), which
/// every apply and every `getRunners` hashes.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// The state's hash set; see [`HashMap`].
pub type HashSet<T> = std::collections::HashSet<T, foldhash::quality::RandomState>;

/// One registered runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRecord {
    /// Effect's runner JSON, as registered.
    pub runner: String,
    /// The runner's own health flag.
    pub healthy: bool,
    /// Its machine id, kept across re-registrations.
    pub machine_id: i64,
    /// State-machine time of its last `register` or `refresh`.
    pub last_heartbeat_ms: u64,
}

/// One shard lock record: who acquired it and when it was last renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The holder's address.
    pub address: String,
    /// State-machine time of the last acquire or refresh by the holder.
    pub acquired_at_ms: u64,
}

/// The cluster-wide caps of SPEC §6, replicated like `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Most runner records.
    pub runners_max: usize,
    /// Most shard lock records.
    pub locks_max: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Caps { runners_max: limits::RUNNERS_MAX_DEFAULT, locks_max: limits::LOCKS_MAX_DEFAULT }
    }
}

/// The whole replicated state. Serialises for snapshots and restores equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// State-machine time: the largest `time_ms` applied so far.
    now_ms: u64,
    /// The lock expiration `E`.
    lock_expiration_ms: u64,
    caps: Caps,
    /// Runner records by address.
    runners: HashMap<String, RunnerRecord>,
    /// Address by machine id: orders `get_runners` and finds free ids.
    machine_ids: BTreeMap<i64, String>,
    /// Lock records by shard id: one holder per shard by construction.
    locks: HashMap<String, LockRecord>,
    /// Shard ids by holder address, so `release_all` does not scan every lock.
    locks_by_address: HashMap<String, HashSet<String>>,
    dedup: dedup::Dedup,
}

impl Default for State {
    fn default() -> Self {
        State::new(limits::LOCK_EXPIRATION_MS_DEFAULT)
    }
}

impl State {
    /// An empty state with lock expiration `lock_expiration_ms`.
    ///
    /// # Panics
    /// When `lock_expiration_ms` is 0 (a programming error: configs are validated).
    pub fn new(lock_expiration_ms: u64) -> Self {
        assert!(lock_expiration_ms >= 1, "lock expiration must be at least 1 ms");
        State {
            now_ms: 0,
            lock_expiration_ms,
            caps: Caps::default(),
            runners: HashMap::default(),
            machine_ids: BTreeMap::new(),
            locks: HashMap::default(),
            locks_by_address: HashMap::default(),
            dedup: dedup::Dedup::default(),
        }
    }

    /// An empty state with custom caps.
    pub fn with_caps(lock_expiration_ms: u64, caps: Caps) -> Self {
        State { caps, ..State::new(lock_expiration_ms) }
    }

    /// Applies one logged write and returns its answer.
    ///
    /// Time first advances to `max(now, envelope.time_ms)`. A request id whose
    /// answer is remembered returns that answer without applying again. An
    /// invalid command or one that would pass a cap returns
    /// [`Reply::Rejected`] and changes nothing but time.
    pub fn apply(&mut self, envelope: &Envelope) -> Reply {
        let now_before = self.now_ms;
        self.now_ms = self.now_ms.max(envelope.time_ms);
        assert!(self.now_ms >= now_before, "time ran backwards: {} < {now_before}", self.now_ms);
        self.dedup.forget_idle(self.now_ms, self.dedup_idle_ms());

        let Some(request_id) = &envelope.request_id else {
            return self.execute(&envelope.command);
        };
        if let Err(error) = request_id.validate() {
            return Reply::rejected(error);
        }
        let fingerprint = envelope.command.fingerprint();
        match self.dedup.lookup(request_id, fingerprint, self.now_ms) {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let reply = self.execute(&envelope.command);
                self.dedup.remember(request_id, fingerprint, self.now_ms, reply.clone());
                reply
            }
            Err(error) => Reply::rejected(error),
        }
    }

    fn execute(&mut self, command: &Command) -> Reply {
        if let Err(error) = command.validate() {
            return Reply::rejected(error);
        }
        let result = match command {
            Command::Register { address, runner, healthy } => {
                self.register(address, runner, *healthy).map(Reply::MachineId)
            }
            Command::Unregister { address } => {
                self.unregister(address);
                Ok(Reply::Done)
            }
            Command::SetRunnerHealth { address, healthy } => {
                self.set_runner_health(address, *healthy);
                Ok(Reply::Done)
            }
            Command::Acquire { address, shard_ids } => self.acquire(address, shard_ids).map(Reply::ShardIds),
            Command::Refresh { address, shard_ids } => Ok(Reply::ShardIds(self.refresh(address, shard_ids))),
            Command::Release { address, shard_id } => {
                self.release(address, shard_id);
                Ok(Reply::Done)
            }
            Command::ReleaseAll { address } => {
                self.release_all(address);
                Ok(Reply::Done)
            }
            Command::SetLockExpiration { lock_expiration_ms } => {
                self.lock_expiration_ms = *lock_expiration_ms;
                Ok(Reply::Done)
            }
        };
        result.unwrap_or_else(Reply::rejected)
    }

    /// Live runners as `(runner JSON, healthy)`, ordered by machine id, at
    /// time `max(now, now_ms)` (the reader's clock may be ahead of the log).
    pub fn get_runners(&self, now_ms: u64) -> Vec<(String, bool)> {
        let now_ms = self.now_ms.max(now_ms);
        self.machine_ids
            .values()
            .filter_map(|address| self.runners.get(address))
            .filter(|record| self.is_live(record, now_ms))
            .map(|record| (record.runner.clone(), record.healthy))
            .collect()
    }

    /// State-machine time: the largest `time_ms` applied.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The lock expiration `E`.
    pub fn lock_expiration_ms(&self) -> u64 {
        self.lock_expiration_ms
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Every runner record by address (live or not).
    pub fn runners(&self) -> &HashMap<String, RunnerRecord> {
        &self.runners
    }

    /// Every lock record by shard id (held or expired).
    pub fn locks(&self) -> &HashMap<String, LockRecord> {
        &self.locks
    }

    /// Whether `record` is held at `now_ms`: `acquired_at >= now - E`.
    pub fn is_held(&self, record: &LockRecord, now_ms: u64) -> bool {
        record.acquired_at_ms.saturating_add(self.lock_expiration_ms) >= now_ms
    }

    /// Whether `record` is live at `now_ms`: `last_heartbeat > now - E`.
    pub fn is_live(&self, record: &RunnerRecord, now_ms: u64) -> bool {
        record.last_heartbeat_ms.saturating_add(self.lock_expiration_ms) > now_ms
    }

    fn dedup_idle_ms(&self) -> u64 {
        self.lock_expiration_ms.saturating_mul(limits::DEDUP_CLIENT_IDLE_EXPIRATIONS)
    }

    pub(crate) fn cap_error(what: &str, cap: usize) -> Error {
        Error::ResourceExhausted(format!("{what} would pass the cluster-wide cap of {cap}"))
    }
}
