//! [`StateMachineStore`]: openraft's `RaftStateMachine`: applies committed
//! entries to the pure [`State`] and keeps the latest snapshot of it in a
//! file ([`SnapshotFile`]), durable before openraft learns of it.
//!
//! The state lives in memory; what is on disk is the latest snapshot. After
//! a restart the node loads that snapshot and openraft re-applies the
//! committed log entries after it, so snapshots (every
//! `snapshot_logs_since_last` entries) bound both disk use and restart time.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Instant;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::data_dir::DataDir;
use super::sled_schema::{decode, encode};
use super::snapshot_file::SnapshotFile;
use crate::raft::{Node, NodeId, TypeConfig};
use crate::state_machine::{Reply, State};
use crate::store_clock::OfficeAnchor;
use crate::transport::identity::ClusterIdentity;

type Entry = openraft::Entry<TypeConfig>;

/// What a snapshot holds: the state and the Raft position it reflects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last log id applied to `state`.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub last_membership: StoredMembership<NodeId, Node>,
    /// The runner-storage state.
    pub state: State,
}

/// The office anchor a leader's blank entry left: whose blank it was, and
/// the state's time and apply instant of the entry before it.
pub type LeaderAnchor = (openraft::CommittedLeaderId<NodeId>, OfficeAnchor);

/// The state machine of one node, shared with the gRPC service for reads.
#[derive(Clone)]
pub struct StateMachineStore {
    applied: Arc<RwLock<AppliedState>>,
    /// When the last entry was applied here (or the state loaded).
    last_applied_at: Arc<Mutex<Instant>>,
    /// Set on applying each blank entry (a new leader's first): see [`StoreClock`](crate::store_clock).
    leader_anchors: Arc<tokio::sync::watch::Sender<Option<LeaderAnchor>>>,
    snapshot_file: SnapshotFile,
    /// The cluster id the applied state names, for the transport.
    identity: ClusterIdentity,
    snapshots_built: Arc<AtomicU64>,
    snapshot_bytes: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the snapshot file of `data_dir` and restores the latest
    /// snapshot, if any; `initial_state` otherwise.
    ///
    /// # Errors
    /// When the snapshot cannot be read, is damaged or does not decode.
    pub fn open(data_dir: &DataDir, initial_state: State) -> Result<Self, StorageError<NodeId>> {
        let snapshot_file = SnapshotFile::open(&data_dir.snapshots_dir(), data_dir.durability())
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        let stored = snapshot_file.load().map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        let snapshot_bytes = stored.as_ref().map_or(0, |stored| stored.data.len() as u64);
        let applied = match stored {
            Some(stored) => decode::<AppliedState>(&stored.data).map_err(|e| read_error(&e))?,
            None => AppliedState { state: initial_state, ..AppliedState::default() },
        };
        let identity = ClusterIdentity::default();
        identity.set(applied.state.cluster_id());
        Ok(StateMachineStore {
            identity,
            applied: Arc::new(RwLock::new(applied)),
            last_applied_at: Arc::new(Mutex::new(Instant::now())),
            leader_anchors: Arc::new(tokio::sync::watch::Sender::new(None)),
            snapshot_file,
            snapshots_built: Arc::new(AtomicU64::new(0)),
            snapshot_bytes: Arc::new(AtomicU64::new(snapshot_bytes)),
        })
    }

    /// The cluster id the applied state names, kept current as entries apply.
    pub fn identity(&self) -> ClusterIdentity {
        self.identity.clone()
    }

    /// Notes the applied state's cluster id, when it changed.
    fn note_identity(&self, state: &State) {
        if let Some(cluster_id) = state.cluster_id().filter(|id| !self.identity.is(id)) {
            self.identity.set(Some(cluster_id));
        }
    }

    /// The anchor of the latest leader whose blank entry was applied here.
    pub fn leader_anchors(&self) -> tokio::sync::watch::Receiver<Option<LeaderAnchor>> {
        self.leader_anchors.subscribe()
    }

    /// Bytes of the latest snapshot saved (built here or installed from the leader).
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }

    /// Reads the applied state. Keep the guard short: applying waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        // A panic while applying would have stopped the node; reads of what
        // was applied before it are still correct.
        self.applied.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
        self.applied.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Saves `data` as the latest snapshot, durably, and hands it back.
    /// On a blocking thread: the file is megabytes, written and synced.
    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, StorageError<NodeId>> {
        let signature = Some(meta.signature());
        let write_error = |e: &dyn std::fmt::Display| {
            StorageError::from(StorageIOError::write_snapshot(signature.clone(), AnyError::error(e.to_string())))
        };
        let meta_bytes = encode(meta).map_err(|e| write_error(&e))?;
        let snapshot_file = self.snapshot_file.clone();
        let data = tokio::task::spawn_blocking(move || snapshot_file.save(&meta_bytes, &data).map(|()| data))
            .await
            .map_err(|e| write_error(&e))?
            .map_err(|e| write_error(&e))?;
        self.snapshot_bytes.store(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }
}

fn read_error(error: &(impl std::error::Error + 'static)) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, AnyError::new(error)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Encoding megabytes is CPU work: off the async workers.
        let store = self.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            let applied = store.read();
            encode(&*applied).map(|data| (data, applied.last_applied, applied.last_membership.clone()))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e.to_string())))?;
        let (data, last_log_id, last_membership) =
            encoded.map_err(|e| StorageIOError::write_snapshot(None, AnyError::new(&e)))?;
        let count = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_log_id {
            Some(log_id) => format!("{}-{}-{count}", log_id.leader_id, log_id.index),
            None => format!("empty-{count}"),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let data = self.save_snapshot(&meta, data).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let applied = self.read();
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Reply>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.write();
        let mut replies = Vec::new();
        for entry in entries {
            let expected_index = applied.last_applied.map_or(0, |log_id| log_id.index + 1);
            if entry.log_id.index != expected_index && applied.last_applied.is_some() {
                let message = format!(
                    "applying entry {} after {:?}: entries must be consecutive",
                    entry.log_id, applied.last_applied
                );
                return Err(StorageIOError::apply(entry.log_id, AnyError::error(message)).into());
            }
            applied.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => {
                    let applied_at = *self.last_applied_at.lock().unwrap_or_else(PoisonError::into_inner);
                    let anchor = OfficeAnchor { store_now_ms: applied.state.now_ms(), applied_at };
                    self.leader_anchors.send_replace(Some((entry.log_id.leader_id, anchor)));
                    Vec::new()
                }
                EntryPayload::Normal(envelopes) => {
                    envelopes.iter().map(|envelope| applied.state.apply(envelope)).collect()
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            *self.last_applied_at.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            replies.push(reply);
        }
        debug_assert!({
            applied.state.check_invariants();
            true
        });
        self.note_identity(&applied.state);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let signature = Some(meta.signature());
        let installed: AppliedState =
            decode(&data).map_err(|e| StorageIOError::read_snapshot(signature.clone(), AnyError::new(&e)))?;
        if installed.last_applied != meta.last_log_id {
            let message =
                format!("snapshot holds {:?} but its meta says {:?}", installed.last_applied, meta.last_log_id);
            return Err(StorageIOError::read_snapshot(signature, AnyError::error(message)).into());
        }
        self.save_snapshot(meta, data).await?;
        self.identity.set(installed.state.cluster_id());
        *self.write() = installed;
        *self.last_applied_at.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let snapshot_file = self.snapshot_file.clone();
        let stored = tokio::task::spawn_blocking(move || snapshot_file.load())
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e.to_string())))?
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        let Some(stored) = stored else { return Ok(None) };
        let meta: SnapshotMeta<NodeId, Node> = decode(&stored.meta).map_err(|e| read_error(&e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    use super::*;
    use crate::raft::storage::data_dir::Durability;
    use crate::state_machine::{Command, Envelope, DEFAULT_NAMESPACE};

    fn register_one_runner(store: &mut StateMachineStore) {
        let runner = r#"{"address":{"host":"h","port":1},"groups":["default"],"weight":1}"#;
        let command = Command::Register { address: "h:1".into(), runner: runner.into(), healthy: true };
        let mut applied = store.write();
        applied.state.apply(&Envelope { namespace: DEFAULT_NAMESPACE.into(), time_ms: 1, request_id: None, command });
        applied.last_applied = Some(LogId::new(CommittedLeaderId::new(3, 1), 42));
    }

    #[tokio::test]
    async fn a_built_snapshot_is_restored_after_a_reopen() {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(temp.path(), 1 << 20, Durability::Synced).unwrap();
        let mut store = StateMachineStore::open(&data_dir, State::default()).unwrap();
        assert!(store.get_current_snapshot().await.unwrap().is_none());
        register_one_runner(&mut store);
        let built = store.build_snapshot().await.unwrap();
        let current = store.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(current.meta.snapshot_id, built.meta.snapshot_id);
        assert_eq!(current.snapshot.into_inner(), encode(&*store.read()).unwrap());

        let reopened = StateMachineStore::open(&data_dir, State::default()).unwrap();
        assert_eq!(reopened.read().last_applied, store.read().last_applied);
        assert_eq!(reopened.read().state.get_runners(DEFAULT_NAMESPACE, 1).len(), 1);
        assert_eq!(reopened.snapshot_bytes(), encode(&*store.read()).unwrap().len() as u64);
    }

    #[tokio::test]
    async fn a_damaged_snapshot_is_a_storage_error_not_a_panic() {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(temp.path(), 1 << 20, Durability::Synced).unwrap();
        let mut store = StateMachineStore::open(&data_dir, State::default()).unwrap();
        register_one_runner(&mut store);
        store.build_snapshot().await.unwrap();
        let path = store.snapshot_file.path();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let error = StateMachineStore::open(&data_dir, State::default()).err().expect("refused").to_string();
        assert!(error.contains("checksum"), "{error}");
    }
}
