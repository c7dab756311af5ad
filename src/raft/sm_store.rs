//! [`StateMachineStore`]: openraft's `RaftStateMachine`: applies committed
//! entries to the pure [`State`] and keeps snapshots of it in sled.
//!
//! The state lives in memory; what is on disk is the latest snapshot. After
//! a restart the node loads that snapshot and openraft re-applies the
//! committed log entries after it, so snapshots (every
//! `snapshot_logs_since_last` entries) bound both disk use and restart time.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::sled_schema::{self as schema, decode, encode};
use super::{Node, NodeId, TypeConfig};
use crate::state_machine::{Reply, State};

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

/// The state machine of one node, shared with the gRPC service for reads.
#[derive(Clone)]
pub struct StateMachineStore {
    applied: Arc<RwLock<AppliedState>>,
    db: sled::Db,
    snapshots: sled::Tree,
    snapshots_built: Arc<std::sync::atomic::AtomicU64>,
    snapshot_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachineStore {
    /// Opens the snapshot tree of `db` and restores the latest snapshot, if any.
    ///
    /// # Errors
    /// When sled fails or the stored snapshot does not decode.
    pub fn open(db: &sled::Db, initial_state: State) -> Result<Self, StorageError<NodeId>> {
        let snapshots =
            db.open_tree(schema::SNAPSHOTS).map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
        let stored = load_snapshot(&snapshots)?;
        let snapshot_bytes = stored.as_ref().map_or(0, |stored| stored.data().len() as u64);
        let applied = match stored {
            Some(stored) => decode::<AppliedState>(stored.data()).map_err(|e| read_error(&e))?,
            None => AppliedState { state: initial_state, ..AppliedState::default() },
        };
        Ok(StateMachineStore {
            applied: Arc::new(RwLock::new(applied)),
            db: db.clone(),
            snapshots,
            snapshots_built: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            snapshot_bytes: Arc::new(std::sync::atomic::AtomicU64::new(snapshot_bytes)),
        })
    }

    /// Bytes of the latest snapshot saved (built here or installed from the leader).
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(std::sync::atomic::Ordering::Relaxed)
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
    ///
    /// One plain insert of one record, on a blocking thread: a sled batch
    /// would hold sled's global write lock while the megabytes are written
    /// and synced, stalling every log append (and with it the heartbeats)
    /// for that long.
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
        let (db, snapshots) = (self.db.clone(), self.snapshots.clone());
        let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, sled::Error> {
            snapshots.insert(schema::SNAPSHOT_KEY, schema::snapshot_record(&meta_bytes, &data))?;
            // The former two-key layout, if this data dir still has it.
            snapshots.remove(schema::SNAPSHOT_META_KEY)?;
            snapshots.remove(schema::SNAPSHOT_DATA_KEY)?;
            db.flush()?;
            Ok(data)
        })
        .await
        .map_err(|e| write_error(&e))?
        .map_err(|e| write_error(&e))?;
        self.snapshot_bytes.store(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(data)
    }
}

/// A snapshot as sled returned it, not copied: the megabytes are decoded in place.
enum StoredSnapshot {
    /// One [`schema::SNAPSHOT_KEY`] record whose metadata is `meta_len` bytes.
    Record { record: sled::IVec, meta_len: usize },
    /// The former two-key layout.
    TwoKeys { meta: sled::IVec, data: sled::IVec },
}

impl StoredSnapshot {
    /// The postcard `SnapshotMeta`.
    fn meta(&self) -> &[u8] {
        match self {
            StoredSnapshot::Record { record, meta_len } => &record[4..4 + meta_len],
            StoredSnapshot::TwoKeys { meta, .. } => meta,
        }
    }

    /// The snapshot bytes.
    fn data(&self) -> &[u8] {
        match self {
            StoredSnapshot::Record { record, meta_len } => &record[4 + meta_len..],
            StoredSnapshot::TwoKeys { data, .. } => data,
        }
    }
}

/// The latest snapshot on disk, in either layout.
fn load_snapshot(snapshots: &sled::Tree) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
    if let Some(record) = snapshots.get(schema::SNAPSHOT_KEY).map_err(|e| read_error(&e))? {
        let (meta, _) = schema::split_snapshot_record(&record)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)))?;
        let meta_len = meta.len();
        return Ok(Some(StoredSnapshot::Record { record, meta_len }));
    }
    let meta = snapshots.get(schema::SNAPSHOT_META_KEY).map_err(|e| read_error(&e))?;
    let data = snapshots.get(schema::SNAPSHOT_DATA_KEY).map_err(|e| read_error(&e))?;
    Ok(meta.zip(data).map(|(meta, data)| StoredSnapshot::TwoKeys { meta, data }))
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
        let count = self.snapshots_built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(envelopes) => {
                    envelopes.iter().map(|envelope| applied.state.apply(envelope)).collect()
                }
                EntryPayload::Membership(membership) => {
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Vec::new()
                }
            };
            replies.push(reply);
        }
        debug_assert!({
            applied.state.check_invariants();
            true
        });
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
        *self.write() = installed;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(stored) = load_snapshot(&self.snapshots)? else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, Node> = decode(stored.meta()).map_err(|e| read_error(&e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data().to_vec())) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    use super::*;
    use crate::state_machine::{Command, Envelope};

    fn state_with_one_runner() -> AppliedState {
        let mut state = State::default();
        let runner = r#"{"address":{"host":"h","port":1},"groups":["default"],"weight":1}"#;
        let command = Command::Register { address: "h:1".into(), runner: runner.into(), healthy: true };
        state.apply(&Envelope { time_ms: 1, request_id: None, command });
        let last_applied = Some(LogId::new(CommittedLeaderId::new(3, 1), 42));
        AppliedState { last_applied, last_membership: StoredMembership::default(), state }
    }

    #[tokio::test]
    async fn a_snapshot_in_the_former_two_key_layout_is_read_and_then_replaced() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let applied = state_with_one_runner();
        let meta: SnapshotMeta<NodeId, Node> = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.last_membership.clone(),
            snapshot_id: "former".into(),
        };
        let snapshots = db.open_tree(schema::SNAPSHOTS).unwrap();
        snapshots.insert(schema::SNAPSHOT_META_KEY, encode(&meta).unwrap()).unwrap();
        snapshots.insert(schema::SNAPSHOT_DATA_KEY, encode(&applied).unwrap()).unwrap();

        let mut store = StateMachineStore::open(&db, State::default()).unwrap();
        assert_eq!(store.read().last_applied, applied.last_applied, "restored from the former layout");
        assert_eq!(store.read().state.get_runners(1).len(), 1);
        let current = store.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(current.meta.snapshot_id, "former");

        let built = store.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id, applied.last_applied);
        assert!(snapshots.get(schema::SNAPSHOT_DATA_KEY).unwrap().is_none(), "the former keys are gone");
        assert!(snapshots.get(schema::SNAPSHOT_META_KEY).unwrap().is_none());
        let current = store.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(current.meta.snapshot_id, built.meta.snapshot_id);
        assert_eq!(current.snapshot.into_inner(), encode(&*store.read()).unwrap());

        let reopened = StateMachineStore::open(&db, State::default()).unwrap();
        assert_eq!(reopened.read().last_applied, applied.last_applied, "restored from the one-record layout");
        assert_eq!(reopened.snapshot_bytes(), encode(&applied).unwrap().len() as u64);
    }

    #[tokio::test]
    async fn a_truncated_snapshot_record_is_a_storage_error_not_a_panic() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let snapshots = db.open_tree(schema::SNAPSHOTS).unwrap();
        snapshots.insert(schema::SNAPSHOT_KEY, &[200, 0, 0, 0, 1, 2][..]).unwrap();
        assert!(StateMachineStore::open(&db, State::default()).is_err());
    }
}
