//! [`RecentEntries`]: the tail of the Raft log, kept decoded in memory.
//!
//! openraft reads every entry back from the log store after appending it:
//! once per follower to replicate it (on the leader) and once to apply it (on
//! every node). From sled, each read is a tree lookup plus a postcard decode
//! that allocates every string of every envelope again; from here it is a
//! clone of the entry, whose payload is an `Arc`. The tail mirrors the log
//! exactly: the store passes every append, truncation and purge through it,
//! and a range it does not hold whole is read from sled instead.

use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use crate::limits::{RECENT_ENTRIES_BYTES_MAX, RECENT_ENTRIES_MAX};
use crate::raft::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// The last appended entries with consecutive indexes, bounded by
/// [`RECENT_ENTRIES_MAX`] entries and [`RECENT_ENTRIES_BYTES_MAX`] encoded bytes.
#[derive(Debug, Default)]
pub struct RecentEntries {
    /// Entries with their encoded size, oldest first, indexes consecutive.
    entries: VecDeque<(Entry, usize)>,
    /// Sum of the encoded sizes held.
    bytes: usize,
}

impl RecentEntries {
    /// Records `entry` (of `encoded_bytes` in the log) as the log's new last
    /// entry. An entry that does not directly follow the tail (the log was
    /// rewritten some other way) empties the cache first: it never holds a
    /// gap, nor an entry the log no longer has.
    pub fn push(&mut self, entry: Entry, encoded_bytes: usize) {
        if self.last_index().is_some_and(|last| last.checked_add(1) != Some(entry.log_id.index)) {
            self.clear();
        }
        self.bytes += encoded_bytes;
        self.entries.push_back((entry, encoded_bytes));
        while self.entries.len() > RECENT_ENTRIES_MAX
            || (self.bytes > RECENT_ENTRIES_BYTES_MAX && self.entries.len() > 1)
        {
            self.pop_front();
        }
        self.assert_consecutive();
    }

    /// The log id of the log's last entry, when this tail holds any.
    pub fn last_log_id(&self) -> Option<openraft::LogId<NodeId>> {
        self.entries.back().map(|(entry, _)| entry.log_id)
    }

    /// Forgets the entries at `index` and after (the log truncated them).
    pub fn truncate_from(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            let (_, bytes) = self.entries.pop_back().expect("a last entry exists");
            self.bytes -= bytes;
        }
    }

    /// Forgets the entries up to and including `index` (the log purged them).
    pub fn purge_upto(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// The entries of `range`, when this tail holds every one of them.
    ///
    /// An unbounded end means "to the end of the log", which is the end of
    /// this tail: every append goes through [`Self::push`].
    pub fn get(&self, range: &impl RangeBounds<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        let start = match range.start_bound() {
            Bound::Included(start) => *start,
            Bound::Excluded(start) => start.checked_add(1)?,
            Bound::Unbounded => 0,
        };
        let end_inclusive = match range.end_bound() {
            Bound::Included(end) => *end,
            Bound::Excluded(end) => end.checked_sub(1)?,
            Bound::Unbounded => last,
        };
        if end_inclusive < start {
            return Some(Vec::new());
        }
        if start < first || end_inclusive > last {
            return None;
        }
        let offset = usize::try_from(start - first).ok()?;
        let count = usize::try_from(end_inclusive - start + 1).ok()?;
        Some(self.entries.iter().skip(offset).take(count).map(|(entry, _)| entry.clone()).collect())
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index)
    }

    fn pop_front(&mut self) {
        if let Some((_, bytes)) = self.entries.pop_front() {
            self.bytes -= bytes;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn assert_consecutive(&self) {
        debug_assert!(
            self.entries
                .iter()
                .zip(self.entries.iter().skip(1))
                .all(|((a, _), (b, _))| a.log_id.index + 1 == b.log_id.index),
            "recent entries must have consecutive indexes"
        );
        debug_assert_eq!(self.bytes, self.entries.iter().map(|(_, bytes)| bytes).sum::<usize>());
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Blank }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|entry| entry.log_id.index).collect())
    }

    fn filled(range: std::ops::RangeInclusive<u64>) -> RecentEntries {
        let mut recent = RecentEntries::default();
        for index in range {
            recent.push(entry(index), 10);
        }
        recent
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let recent = filled(5..=9);
        assert_eq!(indexes(recent.get(&(5..10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(recent.get(&(6..=7))), Some(vec![6, 7]));
        assert_eq!(indexes(recent.get(&(8..))), Some(vec![8, 9]), "an open end is the end of the log");
        assert_eq!(indexes(recent.get(&(7..7))), Some(vec![]));
        assert_eq!(indexes(recent.get(&(4..7))), None, "index 4 is not held");
        assert_eq!(indexes(recent.get(&(..7))), None);
        assert_eq!(indexes(recent.get(&(9..11))), None, "index 10 does not exist yet");
        assert_eq!(indexes(RecentEntries::default().get(&(0..))), None);
    }

    #[test]
    fn truncation_and_purge_mirror_the_log() {
        let mut recent = filled(1..=10);
        recent.truncate_from(8);
        assert_eq!(indexes(recent.get(&(1..))), Some((1..=7).collect()));
        recent.push(entry(8), 10);
        recent.purge_upto(3);
        assert_eq!(indexes(recent.get(&(4..))), Some(vec![4, 5, 6, 7, 8]));
        assert_eq!(indexes(recent.get(&(3..))), None);
        recent.purge_upto(100);
        assert!(recent.entries.is_empty());
        assert_eq!(recent.bytes, 0);
    }

    #[test]
    fn an_entry_out_of_sequence_empties_the_tail_first() {
        let mut recent = filled(1..=5);
        recent.push(entry(3), 10);
        assert_eq!(indexes(recent.get(&(3..))), Some(vec![3]));
        recent.push(entry(9), 10);
        assert_eq!(indexes(recent.get(&(9..))), Some(vec![9]));
        assert_eq!(recent.entries.len(), 1);
    }

    #[test]
    fn stays_within_its_bounds() {
        let recent = filled(1..=(RECENT_ENTRIES_MAX as u64 + 50));
        assert_eq!(recent.entries.len(), RECENT_ENTRIES_MAX);
        assert_eq!(recent.first_index(), Some(51));
        let mut big = RecentEntries::default();
        for index in 1..=4 {
            big.push(entry(index), RECENT_ENTRIES_BYTES_MAX / 2);
        }
        assert_eq!(indexes(big.get(&(3..))), Some(vec![3, 4]));
        big.push(entry(5), RECENT_ENTRIES_BYTES_MAX * 2);
        assert_eq!(indexes(big.get(&(5..))), Some(vec![5]), "one entry past the byte bound is still held");
    }
}
