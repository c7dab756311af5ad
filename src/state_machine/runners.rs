//! The runner table: registration, liveness sweeps, health and machine ids.

use super::{Namespace, RunnerRecord, State};
use crate::error::Result;
use crate::limits::MACHINE_ID_RESIDUES;

impl Namespace {
    /// Upserts the runner at `address` with `last_heartbeat = now`; a present
    /// address keeps its machine id. Returns the machine id.
    pub(super) fn register(&mut self, address: &str, runner: &str, healthy: bool, now_ms: u64) -> Result<i64> {
        if let Some(record) = self.runners.get_mut(address) {
            record.runner = runner.to_owned();
            record.healthy = healthy;
            record.last_heartbeat_ms = now_ms;
            return Ok(record.machine_id);
        }
        if self.runners.len() >= self.caps.runners_max {
            return Err(State::cap_error("registering a new runner", self.caps.runners_max));
        }
        let machine_id = self.free_machine_id();
        let previous = self.machine_ids.insert(machine_id, address.to_owned());
        assert!(previous.is_none(), "machine id {machine_id} handed out twice");
        let record = RunnerRecord { runner: runner.to_owned(), healthy, machine_id, last_heartbeat_ms: now_ms };
        self.runners.insert(address.to_owned(), record);
        Ok(machine_id)
    }

    /// The smallest id in `1..=1024` whose residue mod 1024 no present record
    /// uses; with all 1024 residues in use, `max + 1`.
    ///
    /// SPEC §3 says "not used by any runner record present"; checking the
    /// residue rather than the id itself is what keeps Snowflake ids apart
    /// once an id above 1024 was ever handed out, and is the same rule while
    /// every id is at most 1024.
    ///
    /// Cost: at most 1024 steps over the low ids, plus, for each free low id,
    /// lookups of the ids above 1024 that share its residue until one is
    /// found; never a pass over every runner (which made each registration
    /// O(runners) once ids above 1024 existed).
    fn free_machine_id(&self) -> i64 {
        let max = self.machine_ids.last_key_value().map_or(0, |(max, _)| *max);
        let residue_used_above = |candidate: i64| {
            (1..)
                .map(|multiple| candidate + multiple * MACHINE_ID_RESIDUES)
                .take_while(|id| *id <= max)
                .any(|id| self.machine_ids.contains_key(&id))
        };
        let mut used_low = self.machine_ids.range(1..=MACHINE_ID_RESIDUES).map(|(id, _)| *id).peekable();
        for candidate in 1..=MACHINE_ID_RESIDUES {
            if used_low.next_if_eq(&candidate).is_some() {
                continue;
            }
            if !residue_used_above(candidate) {
                return candidate;
            }
        }
        max + 1
    }

    /// Deletes the runner at `address` and every runner that is not live.
    /// Locks are untouched: they expire.
    pub(super) fn unregister(&mut self, address: &str, now_ms: u64) {
        let lock_expiration_ms = self.lock_expiration_ms;
        let machine_ids = &mut self.machine_ids;
        self.runners.retain(|runner_address, record| {
            let live = record.last_heartbeat_ms.saturating_add(lock_expiration_ms) > now_ms;
            let keep = live && runner_address != address;
            if !keep {
                let removed = machine_ids.remove(&record.machine_id);
                assert!(removed.is_some(), "runner {runner_address} had no machine id entry");
            }
            keep
        });
    }

    /// Sets the health flag of a registered runner; a no-op otherwise.
    pub(super) fn set_runner_health(&mut self, address: &str, healthy: bool) {
        if let Some(record) = self.runners.get_mut(address) {
            record.healthy = healthy;
        }
    }

    /// `last_heartbeat = now` for a registered runner; a no-op otherwise.
    pub(super) fn heartbeat(&mut self, address: &str, now_ms: u64) {
        if let Some(record) = self.runners.get_mut(address) {
            record.last_heartbeat_ms = now_ms;
        }
    }
}
