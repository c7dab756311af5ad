//! The deterministic state machine: namespaces of runners, shard locks,
//! machine ids and lock expirations, and request-id deduplication (SPEC §3,
//! §4, §6).
//!
//! Pure: no clock, no I/O, no randomness, no async. Time enters only as the
//! `time_ms` of each [`Envelope`] and the `now_ms` argument of reads, so every
//! replica that applies the same log reaches the same state. The Raft state
//! machine store, the in-memory store and the chaos checker all wrap this type.
//!
//! Layout: [`command`] (what the log carries), [`namespace`] (one isolated
//! set of tables), `runners` and `locks` (the two tables of a namespace),
//! `dedup` (request ids), `invariants` (whole-state checks).

pub mod command;
mod dedup;
mod invariants;
mod locks;
pub mod namespace;
mod runners;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use command::{shard_id_texts, Command, Envelope, RejectionKind, Reply, ShardIdText};
pub use namespace::{namespace_or_default, validate_namespace, Namespace, NamespaceName, DEFAULT_NAMESPACE};

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

/// The caps of SPEC §6, per namespace, replicated like `E`.
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
    /// The `E` a namespace starts with until one is set for it.
    default_lock_expiration_ms: u64,
    /// The caps a namespace starts with.
    default_caps: Caps,
    /// Every namespace that holds a record or a setting, by name.
    namespaces: BTreeMap<NamespaceName, Namespace>,
    /// The cluster's identity, once its first leader (or a restore) named it.
    cluster_id: Option<String>,
    dedup: dedup::Dedup,
    /// The largest `E` of a namespace (the default without one), which
    /// bounds how long idle clients are remembered; derived, not snapshotted.
    #[serde(skip)]
    lock_expiration_max_ms: Derived<u64>,
}

/// A value derived from the rest of the state: `None` until computed, and
/// equal to any other, so a restored state equals the one it was saved from.
#[derive(Debug, Clone, Default)]
struct Derived<T>(Option<T>);

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Default for State {
    fn default() -> Self {
        State::new(limits::LOCK_EXPIRATION_MS_DEFAULT)
    }
}

impl State {
    /// An empty state whose namespaces start with lock expiration `lock_expiration_ms`.
    ///
    /// # Panics
    /// When `lock_expiration_ms` is 0 (a programming error: configs are validated).
    pub fn new(lock_expiration_ms: u64) -> Self {
        assert!(lock_expiration_ms >= 1, "lock expiration must be at least 1 ms");
        State {
            now_ms: 0,
            default_lock_expiration_ms: lock_expiration_ms,
            default_caps: Caps::default(),
            namespaces: BTreeMap::new(),
            cluster_id: None,
            dedup: dedup::Dedup::default(),
            lock_expiration_max_ms: Derived::default(),
        }
    }

    /// An empty state whose namespaces start with custom caps.
    pub fn with_caps(lock_expiration_ms: u64, caps: Caps) -> Self {
        State { default_caps: caps, ..State::new(lock_expiration_ms) }
    }

    /// Applies one logged write and returns its answer.
    ///
    /// Time first advances to `max(now, envelope.time_ms)`. A request id whose
    /// answer is remembered returns that answer without applying again. An
    /// invalid command or one that would pass a cap returns
    /// [`Reply::Rejected`] and changes nothing but time.
    pub fn apply(&mut self, envelope: &Envelope) -> Reply {
        self.now_ms = self.now_ms.max(envelope.time_ms);
        let idle_ms = self.dedup_idle_ms();
        self.dedup.forget_idle(self.now_ms, idle_ms);

        if let Err(error) = validate_namespace(&envelope.namespace) {
            return Reply::rejected(error);
        }
        let Some(request_id) = &envelope.request_id else {
            return self.execute(&envelope.namespace, &envelope.command);
        };
        if let Err(error) = request_id.validate() {
            return Reply::rejected(error);
        }
        let fingerprint = envelope.fingerprint();
        match self.dedup.lookup(request_id, fingerprint, self.now_ms) {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let reply = self.execute(&envelope.namespace, &envelope.command);
                self.dedup.remember(request_id, fingerprint, self.now_ms, reply.clone());
                reply
            }
            Err(error) => Reply::rejected(error),
        }
    }

    /// Runs `command` in the namespace `name`, made for it when absent and
    /// kept only when it then holds something (within [`limits::NAMESPACES_MAX`]).
    fn execute(&mut self, name: &NamespaceName, command: &Command) -> Reply {
        if let Err(error) = command.validate() {
            return Reply::rejected(error);
        }
        if let Command::SetClusterId { cluster_id } = command {
            // A cluster keeps the name it was given first.
            self.cluster_id.get_or_insert_with(|| cluster_id.clone());
            return Reply::Done;
        }
        let now_ms = self.now_ms;
        if let Some(namespace) = self.namespaces.get_mut(name) {
            let reply = namespace.execute(command, now_ms);
            if namespace.is_vacant() {
                self.namespaces.remove(name);
                self.lock_expiration_max_ms = Derived::default();
            }
            self.note_expiration_change(command);
            return reply;
        }
        let mut namespace = Namespace::new(self.default_lock_expiration_ms, self.default_caps);
        let reply = namespace.execute(command, now_ms);
        if namespace.is_vacant() {
            return reply;
        }
        if self.namespaces.len() >= limits::NAMESPACES_MAX {
            // The new namespace is dropped whole: nothing was applied.
            let what = format!("creating namespace {name:?}");
            return Reply::rejected(State::cap_error(&what, limits::NAMESPACES_MAX));
        }
        self.namespaces.insert(name.clone(), namespace);
        self.lock_expiration_max_ms = Derived::default();
        reply
    }

    /// Forgets the derived largest `E` when `command` may have changed one.
    fn note_expiration_change(&mut self, command: &Command) {
        if matches!(command, Command::SetLockExpiration { .. } | Command::EnsureLockExpiration { .. }) {
            self.lock_expiration_max_ms = Derived::default();
        }
    }

    /// Live runners of `namespace` as `(runner JSON, healthy)`, ordered by
    /// machine id, at time `max(now, now_ms)` (the reader's store time may
    /// be ahead of the log); none for a namespace that holds nothing.
    pub fn get_runners(&self, namespace: &str, now_ms: u64) -> Vec<(String, bool)> {
        self.namespace(namespace).map_or_else(Vec::new, |namespace| namespace.get_runners(self.now_ms.max(now_ms)))
    }

    /// The namespace `name`, when it holds a record or a setting.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// Every namespace that holds a record or a setting, by name.
    pub fn namespaces(&self) -> &BTreeMap<NamespaceName, Namespace> {
        &self.namespaces
    }

    /// The cluster's identity, once named.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// This state named `cluster_id`, whatever it was named before: what
    /// restore and recover make is another cluster than the one they
    /// started from.
    pub fn renamed(mut self, cluster_id: String) -> State {
        self.cluster_id = Some(cluster_id);
        self
    }

    /// State-machine time: the largest `time_ms` applied.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The lock expiration `E` of `namespace` (the default for one that holds nothing).
    pub fn lock_expiration_ms(&self, namespace: &str) -> u64 {
        self.namespace(namespace).map_or(self.default_lock_expiration_ms, Namespace::lock_expiration_ms)
    }

    /// How long a client unseen is remembered: 10 × the largest `E` of a
    /// namespace (the default `E` while there is none).
    fn dedup_idle_ms(&mut self) -> u64 {
        let (namespaces, default) = (&self.namespaces, self.default_lock_expiration_ms);
        let largest = *self
            .lock_expiration_max_ms
            .0
            .get_or_insert_with(|| namespaces.values().map(Namespace::lock_expiration_ms).max().unwrap_or(default));
        largest.saturating_mul(limits::DEDUP_CLIENT_IDLE_EXPIRATIONS)
    }

    pub(crate) fn cap_error(what: &str, cap: usize) -> Error {
        Error::ResourceExhausted(format!("{what} would pass the cap of {cap}"))
    }
}

impl Namespace {
    /// Runs a validated `command` at store time `now_ms`, and checks that
    /// what it answers is what the tables now hold ([`Namespace::assert_answered`]).
    fn execute(&mut self, command: &Command, now_ms: u64) -> Reply {
        let reply = self.run(command, now_ms);
        self.assert_answered(command, &reply, now_ms);
        reply
    }

    /// The pair assertion of every answer: a machine id handed out is the
    /// record's, heartbeated now; a shard answered as held is this
    /// address's, stamped now. Cheap (as many lookups as the call has ids),
    /// and a breach means the reply and the replicated state disagree.
    fn assert_answered(&self, command: &Command, reply: &Reply, now_ms: u64) {
        match (command, reply) {
            (Command::Register { address, .. }, Reply::MachineId(machine_id)) => {
                let record = self.runners.get(address).map(|r| (r.machine_id, r.last_heartbeat_ms));
                assert_eq!(
                    record,
                    Some((*machine_id, now_ms)),
                    "register of {address} answered machine id {machine_id}"
                );
            }
            (Command::Acquire { address, .. } | Command::Refresh { address, .. }, Reply::ShardIds(shard_ids)) => {
                for shard_id in shard_ids {
                    let lock = self.locks.get(shard_id.as_str()).map(|l| (l.address.as_str(), l.acquired_at_ms));
                    assert_eq!(lock, Some((address.as_str(), now_ms)), "{shard_id} answered as held by {address}");
                }
            }
            _ => {}
        }
    }

    fn run(&mut self, command: &Command, now_ms: u64) -> Reply {
        let result = match command {
            Command::Register { address, runner, healthy } => {
                self.register(address, runner, *healthy, now_ms).map(Reply::MachineId)
            }
            Command::Unregister { address } => {
                self.unregister(address, now_ms);
                Ok(Reply::Done)
            }
            Command::SetRunnerHealth { address, healthy } => {
                self.set_runner_health(address, *healthy);
                Ok(Reply::Done)
            }
            Command::Acquire { address, shard_ids } => self.acquire(address, shard_ids, now_ms).map(Reply::ShardIds),
            Command::Refresh { address, shard_ids } => Ok(Reply::ShardIds(self.refresh(address, shard_ids, now_ms))),
            Command::Release { address, shard_id } => {
                self.release(address, shard_id);
                Ok(Reply::Done)
            }
            Command::ReleaseAll { address } => {
                self.release_all(address);
                Ok(Reply::Done)
            }
            Command::SetLockExpiration { lock_expiration_ms } => {
                self.set_lock_expiration(*lock_expiration_ms);
                Ok(Reply::Done)
            }
            Command::EnsureLockExpiration { lock_expiration_ms, take_over } => {
                let (lock_expiration_ms, previously_set) = self.ensure_lock_expiration(*lock_expiration_ms, *take_over);
                Ok(Reply::LockExpiration { lock_expiration_ms, previously_set })
            }
            // Cluster-wide: `State::execute` names the cluster before any namespace.
            Command::SetClusterId { .. } => Ok(Reply::Done),
        };
        result.unwrap_or_else(Reply::rejected)
    }
}
