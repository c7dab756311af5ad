//! Whole-state invariants, checked by tests after every apply and by
//! `debug_assert!` builds. Each `assert!` states one property.

use super::{validate_namespace, Namespace, State};
use crate::limits;

impl State {
    /// Checks every invariant of the state.
    ///
    /// # Panics
    /// When one is broken: that is a bug in `apply`, never bad input.
    pub fn check_invariants(&self) {
        assert!(self.namespaces.len() <= limits::NAMESPACES_MAX, "{} namespaces", self.namespaces.len());
        for (name, namespace) in &self.namespaces {
            assert!(validate_namespace(name).is_ok(), "namespace name {name:?} is not valid");
            assert!(!namespace.is_vacant(), "namespace {name:?} holds nothing and was kept");
            namespace.check_runner_invariants(self.now_ms);
            namespace.check_lock_invariants(self.now_ms);
        }
        self.dedup.check_invariants();
    }

    /// How many clients and answers the deduplication table remembers.
    pub fn dedup_sizes(&self) -> (usize, usize) {
        self.dedup.sizes()
    }

    /// Bytes of remembered answers, as `limits::DEDUP_BYTES_MAX` counts them.
    pub fn dedup_bytes(&self) -> usize {
        self.dedup.counted_bytes()
    }
}

impl Namespace {
    fn check_runner_invariants(&self, now_ms: u64) {
        assert_eq!(self.runners.len(), self.machine_ids.len(), "runner and machine id tables differ in size");
        assert!(self.runners.len() <= self.caps.runners_max, "runners past their cap");
        for (address, record) in &self.runners {
            assert_eq!(
                self.machine_ids.get(&record.machine_id),
                Some(address),
                "machine id {} of {address}",
                record.machine_id
            );
            assert!(record.machine_id >= 1, "machine id {} below 1", record.machine_id);
            assert!(record.last_heartbeat_ms <= now_ms, "heartbeat of {address} in the future");
        }
        // No "ids unique mod 1024 below 1024 runners" check: it does not hold.
        // An id above 1024 is handed out only when every residue is in use,
        // but ids never change, so its collision outlives the runners that
        // caused it (1025 registered, two others unregistered: 1023 runners,
        // ids 1 and 1025 still share residue 1). Ids are unique (map keys)
        // and new ids avoid used residues; see `free_machine_id`.
    }

    fn check_lock_invariants(&self, now_ms: u64) {
        assert!(self.locks.len() <= self.caps.locks_max, "locks past their cap");
        let indexed: usize = self.locks_by_address.values().map(|shard_ids| shard_ids.len()).sum();
        assert_eq!(indexed, self.locks.len(), "lock index and lock table differ in size");
        for (address, shard_ids) in &self.locks_by_address {
            assert!(!shard_ids.is_empty(), "empty lock index entry for {address}");
            for shard_id in shard_ids {
                let holder = self.locks.get(shard_id).map(|record| record.address.as_str());
                assert_eq!(holder, Some(address.as_str()), "lock index says {address} holds {shard_id}");
            }
        }
        for (shard_id, record) in &self.locks {
            assert!(record.acquired_at_ms <= now_ms, "lock {shard_id} acquired in the future");
        }
    }
}
