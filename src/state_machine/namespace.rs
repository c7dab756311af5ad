//! [`Namespace`]: one isolated runner table, lock table, lock expiration `E`
//! and caps (SPEC §3, namespaces), as Effect's `SqlRunnerStorage` isolates
//! clusters that share a database by a table prefix.
//!
//! A namespace exists while it holds a runner or lock record, or once its
//! `E` was set; one that holds nothing and has no setting of its own is
//! dropped after every apply, so names alone cannot grow the state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Caps, HashMap, HashSet, LockRecord, RunnerRecord};
use crate::error::{Error, Result};
use crate::limits;

/// A namespace's name as commands carry it: 1 to 255 bytes of UTF-8 with no
/// control character. Inline up to 23 bytes (no allocation for `default`).
pub type NamespaceName = smol_str::SmolStr;

/// The namespace of a call that names none (SPEC §3).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The namespace a wire field names: `""` is [`DEFAULT_NAMESPACE`].
pub fn namespace_or_default(name: &str) -> NamespaceName {
    if name.is_empty() {
        NamespaceName::new_static(DEFAULT_NAMESPACE)
    } else {
        NamespaceName::new(name)
    }
}

/// Checks a namespace name (SPEC §6).
///
/// # Errors
/// [`Error::InvalidArgument`] naming the problem: empty, longer than
/// [`limits::NAMESPACE_BYTES_MAX`], or holding a control character.
pub fn validate_namespace(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("namespace is empty".into()));
    }
    if name.len() > limits::NAMESPACE_BYTES_MAX {
        return Err(Error::InvalidArgument(format!(
            "namespace is {} bytes long, more than {}",
            name.len(),
            limits::NAMESPACE_BYTES_MAX
        )));
    }
    if let Some(control) = name.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidArgument(format!("namespace {name:?} holds the control character {control:?}")));
    }
    Ok(())
}

/// One namespace's tables and settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// The lock expiration `E`.
    pub(super) lock_expiration_ms: u64,
    /// Whether `E` was set (by a client's `EnsureLockExpiration` or an
    /// admin), as opposed to the cluster's default.
    pub(super) lock_expiration_set: bool,
    pub(super) caps: Caps,
    /// Runner records by address.
    pub(super) runners: HashMap<String, RunnerRecord>,
    /// Address by machine id: orders `get_runners` and finds free ids.
    pub(super) machine_ids: BTreeMap<i64, String>,
    /// Lock records by shard id: one holder per shard by construction.
    pub(super) locks: HashMap<String, LockRecord>,
    /// Shard ids by holder address, so `release_all` does not scan every lock.
    pub(super) locks_by_address: HashMap<String, HashSet<String>>,
}

impl Namespace {
    /// An empty namespace with the cluster's default `E` and caps.
    pub(super) fn new(lock_expiration_ms: u64, caps: Caps) -> Self {
        Namespace {
            lock_expiration_ms,
            lock_expiration_set: false,
            caps,
            runners: HashMap::default(),
            machine_ids: BTreeMap::new(),
            locks: HashMap::default(),
            locks_by_address: HashMap::default(),
        }
    }

    /// Whether dropping it loses nothing: no record and no setting of its own.
    pub(super) fn is_vacant(&self) -> bool {
        self.runners.is_empty() && self.locks.is_empty() && !self.lock_expiration_set
    }

    /// Live runners as `(runner JSON, healthy)`, ordered by machine id, at `now_ms`.
    pub fn get_runners(&self, now_ms: u64) -> Vec<(String, bool)> {
        self.machine_ids
            .values()
            .filter_map(|address| self.runners.get(address))
            .filter(|record| self.is_live(record, now_ms))
            .map(|record| (record.runner.clone(), record.healthy))
            .collect()
    }

    /// The lock expiration `E`.
    pub fn lock_expiration_ms(&self) -> u64 {
        self.lock_expiration_ms
    }

    /// Whether `E` was set, rather than the cluster's default.
    pub fn lock_expiration_set(&self) -> bool {
        self.lock_expiration_set
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

    /// Sets `E` (an admin's or a client's choice).
    pub(super) fn set_lock_expiration(&mut self, lock_expiration_ms: u64) {
        self.lock_expiration_ms = lock_expiration_ms;
        self.lock_expiration_set = true;
    }

    /// `EnsureLockExpiration`: sets `E` when it was not set or `take_over`;
    /// returns the `E` in force after the call and whether it had been set.
    pub(super) fn ensure_lock_expiration(&mut self, lock_expiration_ms: u64, take_over: bool) -> (u64, bool) {
        let previously_set = self.lock_expiration_set;
        if !previously_set || take_over {
            self.set_lock_expiration(lock_expiration_ms);
        }
        (self.lock_expiration_ms, previously_set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RequestId;
    use crate::state_machine::{Command, Envelope, Reply, State};

    const E: u64 = 1_000;

    fn runner(address: &str) -> String {
        let (host, port) = address.rsplit_once(':').unwrap();
        format!(r#"{{"address":{{"host":"{host}","port":{port}}},"groups":["default"],"weight":1}}"#)
    }

    fn in_ns(namespace: &str, time_ms: u64, command: Command) -> Envelope {
        Envelope { time_ms, request_id: None, namespace: namespace.into(), command }
    }

    fn register(address: &str) -> Command {
        Command::Register { address: address.into(), runner: runner(address), healthy: true }
    }

    fn acquire(address: &str, shard_id: &str) -> Command {
        Command::Acquire { address: address.into(), shard_ids: vec![shard_id.into()] }
    }

    #[test]
    fn the_same_address_in_two_namespaces_is_two_runners_with_machine_ids_from_one() {
        let mut state = State::new(E);
        assert_eq!(state.apply(&in_ns("default", 1, register("a:1"))), Reply::MachineId(1));
        assert_eq!(state.apply(&in_ns("default", 1, register("b:2"))), Reply::MachineId(2));
        assert_eq!(state.apply(&in_ns("staging", 1, register("b:2"))), Reply::MachineId(1));
        assert_eq!(state.get_runners("staging", 2), vec![(runner("b:2"), true)]);
        assert_eq!(state.get_runners("default", 2).len(), 2);
        assert!(state.get_runners("nowhere", 2).is_empty());
        assert_eq!(state.apply(&in_ns("staging", 3, Command::Unregister { address: "b:2".into() })), Reply::Done);
        assert_eq!(state.get_runners("default", 3).len(), 2, "unregister in staging leaves default alone");
        state.check_invariants();
    }

    #[test]
    fn locks_and_lock_expirations_are_per_namespace() {
        let mut state = State::new(E);
        let set = |lock_expiration_ms| Command::SetLockExpiration { lock_expiration_ms };
        state.apply(&in_ns("fast", 0, set(100)));
        assert_eq!(state.apply(&in_ns("fast", 0, acquire("a:1", "g:1"))), Reply::ShardIds(vec!["g:1".into()]));
        assert_eq!(state.apply(&in_ns("slow", 0, acquire("a:1", "g:1"))), Reply::ShardIds(vec!["g:1".into()]));
        // 150 ms later fast's lock expired, slow's (E = 1,000) did not.
        let taken = Reply::ShardIds(vec!["g:1".into()]);
        assert_eq!(state.apply(&in_ns("fast", 150, acquire("b:2", "g:1"))), taken);
        assert_eq!(state.apply(&in_ns("slow", 150, acquire("b:2", "g:1"))), Reply::ShardIds(vec![]));
        assert_eq!((state.lock_expiration_ms("fast"), state.lock_expiration_ms("slow")), (100, E));
        state.check_invariants();
    }

    #[test]
    fn ensure_lock_expiration_sets_once_and_takes_over_only_when_asked() {
        let mut state = State::new(E);
        let ensure = |lock_expiration_ms, take_over| Command::EnsureLockExpiration { lock_expiration_ms, take_over };
        let answer = |lock_expiration_ms, previously_set| Reply::LockExpiration { lock_expiration_ms, previously_set };
        assert_eq!(state.apply(&in_ns("app", 0, ensure(35_000, false))), answer(35_000, false), "first use sets it");
        assert_eq!(state.apply(&in_ns("app", 1, ensure(35_000, false))), answer(35_000, true), "same value");
        assert_eq!(state.apply(&in_ns("app", 2, ensure(20_000, false))), answer(35_000, true), "another value: kept");
        assert_eq!(state.apply(&in_ns("app", 3, ensure(20_000, true))), answer(20_000, true), "taken over");
        assert!(state.namespace("app").unwrap().lock_expiration_set());
        let invalid = state.apply(&in_ns("app", 4, ensure(0, true)));
        assert!(matches!(invalid, Reply::Rejected { .. }), "{invalid:?}");
        assert_eq!(state.lock_expiration_ms("app"), 20_000);
    }

    #[test]
    fn a_namespace_that_holds_nothing_is_dropped_and_names_are_bounded() {
        let mut state = State::new(E);
        state.apply(&in_ns("brief", 0, acquire("a:1", "g:1")));
        state.apply(&in_ns("brief", 0, Command::ReleaseAll { address: "a:1".into() }));
        assert!(state.namespace("brief").is_none(), "empty again: gone");
        state.apply(&in_ns("never", 0, Command::Release { address: "a:1".into(), shard_id: "g:1".into() }));
        assert!(state.namespaces().is_empty(), "a no-op creates nothing");
        for index in 0..limits::NAMESPACES_MAX {
            state.apply(&in_ns(&format!("n{index}"), 0, register("a:1")));
        }
        let refused = state.apply(&in_ns("one-too-many", 0, register("a:1")));
        assert!(matches!(&refused, Reply::Rejected { message, .. } if message.contains("cap")), "{refused:?}");
        assert!(state.namespace("one-too-many").is_none(), "nothing applied");
        state.check_invariants();
    }

    #[test]
    fn a_bad_namespace_is_rejected_and_a_request_id_reused_elsewhere_is_another_call() {
        let mut state = State::new(E);
        let bad = state.apply(&in_ns("a\u{7}b", 0, register("a:1")));
        assert!(matches!(&bad, Reply::Rejected { message, .. } if message.contains("control")), "{bad:?}");
        let request_id = Some(RequestId { client_id: "c".into(), sequence: 1 });
        let first = Envelope { request_id: request_id.clone(), ..in_ns("one", 0, register("a:1")) };
        let again = Envelope { request_id, ..in_ns("two", 0, register("a:1")) };
        assert_eq!(state.apply(&first), Reply::MachineId(1));
        let reused = state.apply(&again);
        assert!(matches!(&reused, Reply::Rejected { message, .. } if message.contains("different call")), "{reused:?}");
        assert!(state.namespace("two").is_none());
    }

    #[test]
    fn names_are_checked_and_the_empty_wire_name_is_the_default() {
        assert_eq!(namespace_or_default(""), DEFAULT_NAMESPACE);
        assert_eq!(namespace_or_default("staging"), "staging");
        validate_namespace("staging").unwrap();
        validate_namespace("équipe/prod").unwrap();
        validate_namespace(&"n".repeat(limits::NAMESPACE_BYTES_MAX)).unwrap();
        for (bad, needle) in [("", "empty"), ("a\nb", "control"), ("tab\t", "control")] {
            let error = validate_namespace(bad).unwrap_err().to_string();
            assert!(error.contains(needle), "{bad:?}: {error}");
        }
        let long = "n".repeat(limits::NAMESPACE_BYTES_MAX + 1);
        assert!(validate_namespace(&long).unwrap_err().to_string().contains("256 bytes"));
    }
}
