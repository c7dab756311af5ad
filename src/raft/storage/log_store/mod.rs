//! [`LogStore`]: openraft's `RaftLogStorage` on sled: the log, the vote and
//! the committed/purged markers.
//!
//! Durability: an append is acknowledged to openraft (through its
//! `LogFlushed` callback) only after sled has flushed it and
//! [`DataDir::sync_after_flush`] has made it durable (`fdatasync`; sled's
//! own flush is not enough). Appends are written at once and their
//! callbacks handed to one flusher thread, which flushes and syncs once for
//! every waiter: group commit, one sync per batch however many appends (and
//! vote or purge-point saves) arrived while the previous sync ran. The vote
//! and the purge point are durable before `save_vote` and `purge` return.
//!
//! Integrity: at open the whole log is checked (every key 8 bytes, the
//! indexes contiguous, each entry's log id the index of its key, nothing
//! missing between the purge point and the first entry or below the
//! committed index); a range read from sled is checked the same way. A
//! damaged log is a storage error naming what is wrong, which stops the
//! node: it never serves on a log shorter than the one it acknowledged.
//!
//! Appends are told to an [`AppendObserver`] when one is attached (early
//! replication, `raft::workarounds`, which sends them to the followers while the
//! flush runs (see that module for why that is safe).
//!
//! Reads: every appended entry is also kept decoded in a bounded in-memory
//! tail ([`RecentEntries`]), which serves openraft's reads of it (for
//! replication and for applying) without touching sled.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use tokio::sync::mpsc;

use super::data_dir::DataDir;
use super::recent_entries::RecentEntries;
use super::sled_schema::{self as schema, decode, encode};
use crate::limits;
use crate::raft::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

/// How well group commit works: flushes, the appends they covered, time spent.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Flushes (fsyncs) of the log.
    pub flushes: AtomicU64,
    /// Appends acknowledged by those flushes.
    pub appends: AtomicU64,
    /// Microseconds spent flushing.
    pub flush_micros: AtomicU64,
}

/// Tokens a gated flusher takes, one per flush (tests only).
type FlushGate = std::sync::mpsc::Receiver<()>;

/// Who waits for the flusher's next flush and sync.
enum FlushWaiter {
    /// openraft's callback for an append.
    Append(LogFlushed<TypeConfig>),
    /// A save of a marker (vote, purge point, truncation).
    Save(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

impl FlushWaiter {
    fn complete(self, result: Result<(), &std::io::Error>) {
        let result = result.map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
        match self {
            FlushWaiter::Append(callback) => callback.log_io_completed(result),
            FlushWaiter::Save(done) => {
                let _ = done.send(result);
            }
        }
    }
}

/// The Raft log, vote and markers of one node, in sled.
#[derive(Clone)]
pub struct LogStore {
    data_dir: DataDir,
    logs: sled::Tree,
    meta: sled::Tree,
    flush_requests: mpsc::Sender<FlushWaiter>,
    committed_index: Arc<AtomicU64>,
    flush_stats: Arc<FlushStats>,
    /// The log's tail, decoded: what openraft reads back is served from here.
    recent: Arc<Mutex<RecentEntries>>,
    /// Who hears of the leader's appends and the votes saved; `None`
    /// without early replication.
    observer: Option<Arc<dyn AppendObserver>>,
    /// What an observer needs to know of this log (kept, cheaply, with or
    /// without one).
    early_view: Arc<Mutex<EarlyView>>,
}

/// Who hears of what the log writes, before it is flushed: early
/// replication (`raft::workarounds::early_replication`) sends a leader's
/// new entries to its followers while the flush runs.
pub trait AppendObserver: Send + Sync + std::fmt::Debug {
    /// Whether this node leads under `vote` (its own committed vote): only
    /// appends under such a vote are told.
    fn leads_with(&self, vote: &Vote<NodeId>) -> bool;
    /// `entries`, the leader's own under `vote`, were just written after
    /// `prev` (the log's entry before them) and are being flushed;
    /// `committed` is the commit index saved.
    fn appended(&self, vote: &Vote<NodeId>, prev: LogId<NodeId>, committed: Option<LogId<NodeId>>, entries: &[Entry]);
    /// `vote` was just saved, durably.
    fn vote_saved(&self, vote: &Vote<NodeId>);
}

/// What the log knows that an early append carries besides its entries and
/// their predecessor (the tail's last entry): the vote it saved last and
/// the commit index.
#[derive(Debug, Default)]
struct EarlyView {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

impl LogStore {
    /// Opens the log trees of `data_dir`, checks the log (see the module
    /// docs) and starts the flusher thread.
    ///
    /// # Errors
    /// When sled cannot open the trees, the stored markers do not decode,
    /// or the log is damaged.
    pub fn open(data_dir: &DataDir) -> Result<Self, StorageError<NodeId>> {
        Self::open_gated(data_dir, None)
    }

    /// [`LogStore::open`] whose flusher, when `gate` is given, takes one
    /// token from it before each flush: tests hold the log's durability
    /// back to see what openraft does meanwhile.
    fn open_gated(data_dir: &DataDir, gate: Option<FlushGate>) -> Result<Self, StorageError<NodeId>> {
        let db = data_dir.db();
        let logs = db.open_tree(schema::LOGS).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        let meta = db.open_tree(schema::META).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        let (flush_requests, flush_queue) = mpsc::channel(limits::LOG_FLUSHES_QUEUED_MAX);
        let flush_stats = Arc::new(FlushStats::default());
        let flusher_dir = data_dir.clone();
        let flusher_stats = flush_stats.clone();
        std::thread::Builder::new()
            .name("log-flusher".into())
            .spawn(move || run_flusher(&flusher_dir, flush_queue, &flusher_stats, gate))
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        let committed_index = Arc::new(AtomicU64::new(0));
        let recent = Arc::default();
        let store = LogStore {
            data_dir: data_dir.clone(),
            logs,
            meta,
            flush_requests,
            committed_index,
            flush_stats,
            recent,
            observer: None,
            early_view: Arc::default(),
        };
        let committed = store.read_meta::<Option<LogId<NodeId>>>(schema::COMMITTED_KEY)?.flatten();
        store.check_log(committed)?;
        store.committed_index.store(committed.map_or(0, |log_id| log_id.index), Ordering::Relaxed);
        store.update_early_view(|view| view.committed = committed);
        Ok(store)
    }

    /// Checks the whole log at open (see the module docs): keys, contiguous
    /// indexes, log ids matching keys, no hole after the purge point, and
    /// nothing missing below `committed`. Decodes only each entry's log id,
    /// which postcard puts first.
    fn check_log(&self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        let purged = self.read_meta::<LogId<NodeId>>(schema::LAST_PURGED_KEY)?;
        let mut first_and_last: Option<(u64, u64)> = None;
        for item in self.logs.iter() {
            let (key, bytes) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
            let index = schema::index_from_key(&key).map_err(damaged)?;
            let (log_id, _) = postcard::take_from_bytes::<LogId<NodeId>>(&bytes)
                .map_err(|e| damaged(format!("the entry at index {index} does not decode: {e}")))?;
            if log_id.index != index {
                return Err(damaged(format!("the entry stored at index {index} says it is {log_id}")));
            }
            if let Some((_, last)) = first_and_last.filter(|(_, last)| last + 1 != index) {
                return Err(damaged(format!("entries {} to {} are missing", last + 1, index - 1)));
            }
            first_and_last = Some((first_and_last.map_or(index, |(first, _)| first), index));
        }
        let purged_index = purged.map(|log_id| log_id.index);
        // (Without a purge point the log may start anywhere: openraft's own
        // test suite appends from index 1.)
        if let (Some((first, _)), Some(purged_index)) = (first_and_last, purged_index) {
            if first > purged_index + 1 {
                return Err(damaged(format!(
                    "the log starts at {first}, but only entries through {purged_index} were purged"
                )));
            }
        }
        let last = first_and_last.map(|(_, last)| last).max(purged_index);
        if let Some(committed) = committed.filter(|committed| Some(committed.index) > last) {
            return Err(damaged(format!(
                "entries through {} were committed, but the log ends at {last:?} (lost writes)",
                committed.index
            )));
        }
        Ok(())
    }

    /// Tells `observer` of every entry this node appends as leader, and of every vote saved.
    pub fn with_observer(mut self, observer: Arc<dyn AppendObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Notes `update` in the early view.
    fn update_early_view(&self, update: impl FnOnce(&mut EarlyView)) {
        update(&mut self.early_view.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The index of the last log id saved as committed (0 before any).
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    /// Group-commit statistics of this log.
    pub fn flush_stats(&self) -> Arc<FlushStats> {
        self.flush_stats.clone()
    }

    /// Bytes the log trees take on disk, roughly (sled's own estimate of the database).
    pub fn size_on_disk(&self) -> u64 {
        self.data_dir.db().size_on_disk().unwrap_or(0)
    }

    fn recent(&self) -> MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        let bytes = self.meta.get(key).map_err(|e| meta_error(key, ErrorVerb::Read, &e))?;
        bytes.map(|bytes| decode(&bytes).map_err(|e| meta_error(key, ErrorVerb::Read, &e))).transpose()
    }

    /// Writes a marker; when `durable`, waits until it is flushed and synced.
    async fn write_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        durable: bool,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = encode(value).map_err(|e| meta_error(key, ErrorVerb::Write, &e))?;
        self.meta.insert(key, bytes).map_err(|e| meta_error(key, ErrorVerb::Write, &e))?;
        if durable {
            self.sync().await.map_err(|e| meta_error(key, ErrorVerb::Write, &e))?;
        }
        Ok(())
    }

    /// Waits for the flusher's next flush and sync: everything written to
    /// sled before the call is durable when it returns.
    async fn sync(&self) -> std::io::Result<()> {
        let (done, synced) = tokio::sync::oneshot::channel();
        let stopped = || std::io::Error::other("the log flusher has stopped");
        self.flush_requests.send(FlushWaiter::Save(done)).await.map_err(|_| stopped())?;
        synced.await.map_err(|_| stopped())?
    }

    /// Writes `entries` to the log tree (unflushed) and to the in-memory tail.
    fn insert_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), StorageError<NodeId>> {
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            let encoded_bytes = bytes.len();
            self.logs
                .insert(schema::index_key(entry.log_id.index), bytes)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            self.recent().push(entry, encoded_bytes);
        }
        Ok(())
    }

    async fn request_flush(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>> {
        self.flush_requests
            .send(FlushWaiter::Append(callback))
            .await
            .map_err(|_| StorageIOError::write_logs(AnyError::error("the log flusher task has stopped")).into())
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let last = self.logs.last().map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        last.map(|(_, bytes)| decode_entry(&bytes).map(|entry| entry.log_id)).transpose()
    }

    /// Removes every entry with index in `range` (a sled batch: all or nothing).
    fn remove_range(&self, range: impl RangeBounds<u64>) -> Result<(), StorageError<NodeId>> {
        let mut batch = sled::Batch::default();
        for key in self.logs.range(key_range(range)).keys() {
            batch.remove(key.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?);
        }
        self.logs.apply_batch(batch).map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }
}

fn meta_error(key: &[u8], verb: ErrorVerb, error: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    let subject = match key {
        schema::VOTE_KEY => ErrorSubject::Vote,
        _ => ErrorSubject::Store,
    };
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError<NodeId>> {
    decode(bytes).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
}

/// A damaged log: the message says what is wrong; the node wraps it with
/// its id, data dir and the way out.
fn damaged(problem: impl Into<String>) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::error(format!("damaged Raft log: {}", problem.into()))).into()
}

fn key_range(range: impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let map = |bound: Bound<&u64>| match bound {
        Bound::Included(index) => Bound::Included(schema::index_key(*index)),
        Bound::Excluded(index) => Bound::Excluded(schema::index_key(*index)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

/// Flushes and syncs the data dir once for every batch of waiters, then
/// completes them in order. Ends when every [`LogStore`] clone is dropped.
///
/// A thread of its own, flushing synchronously: `flush_async` would hop from
/// a tokio task to sled's thread pool and back, and under load those
/// wake-ups cost more than the flush itself (~0.4 ms against ~0.12 ms).
///
/// openraft 0.9 has one append in flight at a time, so in practice each
/// flush covers one append (the metrics show appends = flushes); the writes
/// are grouped one level up, by the proposer. Flushing inline in `append`
/// instead, on the core's runtime worker, saves this thread's two wake-ups
/// but was measured worse: `register` C=64 median 9,168 → 7,859 ops/s over
/// six interleaved runs each, and no steady gain at C=1.
fn run_flusher(
    data_dir: &DataDir,
    mut queue: mpsc::Receiver<FlushWaiter>,
    stats: &FlushStats,
    gate: Option<FlushGate>,
) {
    let mut waiting = Vec::with_capacity(limits::LOG_FLUSHES_QUEUED_MAX);
    while let Some(first) = queue.blocking_recv() {
        if gate.as_ref().is_some_and(|gate| gate.recv().is_err()) {
            return;
        }
        waiting.push(first);
        while waiting.len() < limits::LOG_FLUSHES_QUEUED_MAX {
            let Ok(next) = queue.try_recv() else { break };
            waiting.push(next);
        }
        let started = std::time::Instant::now();
        let synced = data_dir.flush_and_sync();
        if let Err(error) = &synced {
            tracing::error!(%error, "flushing and syncing the Raft log failed; stopping");
        }
        let appends = waiting.iter().filter(|waiter| matches!(waiter, FlushWaiter::Append(_))).count();
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats.appends.fetch_add(appends as u64, Ordering::Relaxed);
        stats.flush_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        for waiter in waiting.drain(..) {
            waiter.complete(synced.as_ref().map(|_| ()));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        if let Some(entries) = self.recent().get(&range) {
            return Ok(entries);
        }
        let mut entries: Vec<Entry> = Vec::new();
        for item in self.logs.range(key_range(range)) {
            let (key, bytes) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
            let index = schema::index_from_key(&key).map_err(damaged)?;
            let entry = decode_entry(&bytes)?;
            if entry.log_id.index != index {
                return Err(damaged(format!("the entry stored at index {index} says it is {}", entry.log_id)));
            }
            if let Some(previous) = entries.last().filter(|previous| previous.log_id.index + 1 != index) {
                return Err(damaged(format!("entries {} to {} are missing", previous.log_id.index + 1, index - 1)));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id = self.read_meta::<LogId<NodeId>>(schema::LAST_PURGED_KEY)?;
        // Entries at or below the purge point may linger until the purge's
        // background removal is done: the last log id is never below it.
        let last_log_id = self.last_entry_log_id()?.max(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(schema::VOTE_KEY, vote, true).await?;
        // Only a flushed vote may go out with early appends.
        self.update_early_view(|view| view.vote = Some(*vote));
        if let Some(observer) = &self.observer {
            observer.vote_saved(vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(schema::VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Not flushed: a lost committed marker only means re-applying from the
        // snapshot up to a smaller index, which openraft handles.
        self.write_meta(schema::COMMITTED_KEY, &committed, false).await?;
        self.committed_index.store(committed.map_or(0, |log_id| log_id.index), Ordering::Relaxed);
        self.update_early_view(|view| view.committed = committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.read_meta::<Option<LogId<NodeId>>>(schema::COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Plain inserts, not a sled batch: `apply_batch` writes and syncs the
        // current IO buffer and a batch manifest before it returns (two
        // sync_file_range calls on the core's path), and Raft needs no more
        // than what sled's log order already gives: after a crash, a prefix
        // of these entries survives, and none is acknowledged before the flush.
        // Only a leader's own appends go early; a follower's take the plain path.
        let early_vote = self.observer.as_ref().and_then(|observer| {
            let view = self.early_view.lock().unwrap_or_else(PoisonError::into_inner);
            view.vote.filter(|vote| observer.leads_with(vote)).map(|vote| (observer, vote, view.committed))
        });
        let Some((observer, vote, committed)) = early_vote else {
            self.insert_entries(entries)?;
            return self.request_flush(callback).await;
        };
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The predecessor an early append names must be the log's own entry
        // (a follower refusing it truncates from there): the tail's last
        // entry, which mirrors the log, when the new entries follow it.
        let prev = self.recent().last_log_id();
        self.insert_entries(entries.iter().cloned())?;
        self.request_flush(callback).await?;
        let (Some(first), Some(prev)) = (entries.first(), prev) else { return Ok(()) };
        if prev.index.checked_add(1) == Some(first.log_id.index) {
            observer.appended(&vote, prev, committed, &entries);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.recent().truncate_from(log_id.index);
        self.remove_range(log_id.index..)?;
        self.sync().await.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Record the purge point first: entries below it are ignored from
        // then on, so they may go later, or survive a crash, harmlessly.
        self.write_meta(schema::LAST_PURGED_KEY, &log_id, true).await?;
        self.recent().purge_upto(log_id.index);
        // Then remove them one by one on a blocking thread. A sled batch of
        // thousands of removes would hold sled's global write lock all along,
        // stalling this node's appends past openraft's replication timeout:
        // with every node purging at the same index, that cost a leader.
        let logs = self.logs.clone();
        tokio::task::spawn_blocking(move || {
            for key in logs.range(..=schema::index_key(log_id.index)).keys() {
                let removed = key.and_then(|key| logs.remove(key));
                if let Err(error) = removed {
                    // Left for the next purge, which covers this range again.
                    tracing::warn!(%error, "removing purged log entries");
                    return;
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
