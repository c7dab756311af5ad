//! The shard lock table: acquire, refresh and release.

use super::{HashSet, LockRecord, Namespace, ShardIdText, State};
use crate::error::Result;

/// `shard_ids` without repeats, first occurrence first. Calls carry few ids
/// (1 for an acquire, 10 for a refresh): up to [`DISTINCT_SCAN_MAX`] of them,
/// comparing with the ones before costs less than building a set; longer
/// lists use a set sized once.
fn distinct(shard_ids: &[ShardIdText]) -> impl Iterator<Item = &ShardIdText> {
    let scan = shard_ids.len() <= DISTINCT_SCAN_MAX;
    let mut seen: HashSet<&str> =
        if scan { HashSet::default() } else { HashSet::with_capacity_and_hasher(shard_ids.len(), Default::default()) };
    shard_ids
        .iter()
        .enumerate()
        .filter(
            move |(position, shard_id)| {
                if scan {
                    !shard_ids[..*position].contains(shard_id)
                } else {
                    seen.insert(shard_id.as_str())
                }
            },
        )
        .map(|(_, shard_id)| shard_id)
}

/// Longest id list [`distinct`] scans instead of hashing.
const DISTINCT_SCAN_MAX: usize = 16;

impl Namespace {
    /// Takes each listed shard that is free, already this address's, or whose
    /// lock expired, stamping it `{address, now}`. Returns the listed shards
    /// now held by `address`, in request order, without repeats.
    pub(super) fn acquire(
        &mut self,
        address: &str,
        shard_ids: &[ShardIdText],
        now_ms: u64,
    ) -> Result<Vec<ShardIdText>> {
        let new_records = distinct(shard_ids).filter(|shard_id| !self.locks.contains_key(shard_id.as_str())).count();
        if self.locks.len() + new_records > self.caps.locks_max {
            return Err(State::cap_error("acquiring these shards", self.caps.locks_max));
        }
        let mut acquired = Vec::with_capacity(shard_ids.len());
        for shard_id in distinct(shard_ids) {
            let previous_holder = match self.locks.get(shard_id.as_str()) {
                None => None,
                Some(record) if record.address == address => None,
                Some(record) if !self.is_held(record, now_ms) => Some(record.address.clone()),
                Some(_) => continue,
            };
            if let Some(previous_holder) = previous_holder {
                self.unindex_lock(&previous_holder, shard_id);
            }
            let record = LockRecord { address: address.to_owned(), acquired_at_ms: now_ms };
            self.locks.insert(shard_id.to_string(), record);
            self.locks_by_address.entry(address.to_owned()).or_default().insert(shard_id.to_string());
            acquired.push(shard_id.clone());
        }
        Ok(acquired)
    }

    /// Heartbeat for the runner, and `acquired_at = now` for each listed
    /// shard whose record is this address's, even if it had expired. Returns
    /// those shards in request order, without repeats.
    pub(super) fn refresh(&mut self, address: &str, shard_ids: &[ShardIdText], now_ms: u64) -> Vec<ShardIdText> {
        self.heartbeat(address, now_ms);
        let mut refreshed = Vec::with_capacity(shard_ids.len());
        for shard_id in distinct(shard_ids) {
            if let Some(record) = self.locks.get_mut(shard_id.as_str()) {
                if record.address == address {
                    record.acquired_at_ms = now_ms;
                    refreshed.push(shard_id.clone());
                }
            }
        }
        refreshed
    }

    /// Deletes the lock on `shard_id` if its record is this address's.
    pub(super) fn release(&mut self, address: &str, shard_id: &str) {
        if self.locks.get(shard_id).is_some_and(|record| record.address == address) {
            self.locks.remove(shard_id);
            self.unindex_lock(address, shard_id);
        }
    }

    /// Deletes every lock record of this address.
    pub(super) fn release_all(&mut self, address: &str) {
        for shard_id in self.locks_by_address.remove(address).unwrap_or_default() {
            let removed = self.locks.remove(&shard_id);
            assert!(
                removed.is_some_and(|record| record.address == address),
                "lock index listed {shard_id} under {address} but the lock table disagrees"
            );
        }
    }

    fn unindex_lock(&mut self, address: &str, shard_id: &str) {
        if let Some(shard_ids) = self.locks_by_address.get_mut(address) {
            shard_ids.remove(shard_id);
            if shard_ids.is_empty() {
                self.locks_by_address.remove(address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keeps_first_occurrences_whether_it_scans_or_hashes() {
        for len in [0, 1, 2, 10, DISTINCT_SCAN_MAX, DISTINCT_SCAN_MAX + 1, 100] {
            // Every third id repeats an earlier one.
            let ids: Vec<ShardIdText> =
                (0..len).map(|i| format!("g:{}", if i % 3 == 2 { i / 2 } else { i }).into()).collect();
            let mut expected: Vec<&ShardIdText> = Vec::new();
            for id in &ids {
                if !expected.contains(&id) {
                    expected.push(id);
                }
            }
            assert_eq!(distinct(&ids).collect::<Vec<_>>(), expected, "{len} ids");
        }
    }
}
