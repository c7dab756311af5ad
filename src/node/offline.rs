//! What is done to a data dir with its node stopped: `restore` seeds a
//! fresh one from a backup; `recover --single-voter` turns a surviving
//! node of a cluster that lost its majority for good into a cluster of one.
//!
//! Both leave a snapshot (written, synced, renamed) and a log purged up to
//! it, so that openraft starts from the snapshot's state and membership.
//! Both rename the cluster (`State::renamed`): what they make is not the
//! cluster they started from, and nodes of that one are refused
//! (`transport::identity`) instead of merging their logs into it.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership};

use crate::backup::Backup;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::limits::SLED_CACHE_BYTES;
use crate::raft::storage::data_dir::{DataDir, Durability};
use crate::raft::storage::log_store::LogStore;
use crate::raft::storage::sled_schema::encode;
use crate::raft::storage::sm_store::{AppliedState, StateMachineStore};
use crate::raft::storage::snapshot_file::SnapshotFile;
use crate::raft::NodeId;
use crate::state_machine::State;

/// What an offline operation left in the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// The log index the node starts from.
    pub index: u64,
    /// The voters of the cluster it starts in.
    pub voter_ids: Vec<NodeId>,
    /// The cluster's new identity.
    pub cluster_id: String,
}

/// Seeds the empty data dir of `config` with `backup`, as a member of the
/// cluster `config.peers` lists, named `cluster_id`. Every node of the new
/// cluster is restored from the same file with the same id.
///
/// # Errors
/// [`Error::FailedPrecondition`] when the data dir holds anything, or the
/// config lists no peers; storage errors.
pub async fn restore(config: &NodeConfig, backup: &Backup, cluster_id: &str) -> Result<Seeded> {
    crate::model::encoding::validate_cluster_id(cluster_id)?;
    let path = &config.data_dir;
    if std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Error::FailedPrecondition(format!(
            "data dir {} is not empty: restore seeds a fresh data dir (move this one aside)",
            path.display()
        )));
    }
    if config.peers.is_empty() {
        return Err(Error::FailedPrecondition("the config lists no peers: restore into a cluster's config".into()));
    }
    let nodes: BTreeMap<NodeId, BasicNode> =
        config.peers.iter().map(|peer| (peer.id, BasicNode::new(peer.address.clone()))).collect();
    // Term 0: every leader the new cluster elects has a higher one.
    let log_id = LogId::new(CommittedLeaderId::new(0, 0), backup.last_applied.map_or(0, |log_id| log_id.index));
    let state = backup.state.clone().renamed(cluster_id.to_owned());
    seed(&open(path)?, log_id, nodes, state, cluster_id).await
}

/// Makes the node of `config` a cluster of one voter holding the state of
/// its whole log, under a new cluster id; grow it again with `ctl members
/// add`. The whole log, not just what the node had seen committed: a
/// follower learns of a commit late and records it without a sync, while
/// every entry in its log may have been committed and acknowledged by the
/// lost leader (as Raft itself would commit them, were this node to lead
/// alone). Entries it never received are lost.
///
/// # Errors
/// [`Error::FailedPrecondition`] when the data dir holds no Raft state;
/// storage errors.
pub async fn recover_single_voter(config: &NodeConfig, cluster_id: &str) -> Result<Seeded> {
    crate::model::encoding::validate_cluster_id(cluster_id)?;
    let data_dir = open(&config.data_dir)?;
    let applied = logged_state(&data_dir).await?;
    let address = applied.last_membership.membership().get_node(&config.node_id).cloned();
    let address = address.unwrap_or_else(|| BasicNode::new(config.listen.to_string()));
    let Some(log_id) = applied.last_applied else {
        return Err(Error::FailedPrecondition(format!(
            "data dir {} holds no committed Raft state to recover",
            config.data_dir.display()
        )));
    };
    let nodes = BTreeMap::from([(config.node_id, address)]);
    let state = applied.state.renamed(cluster_id.to_owned());
    seed(&data_dir, log_id, nodes, state, cluster_id).await
}

fn open(path: &std::path::Path) -> Result<DataDir> {
    DataDir::open(path, SLED_CACHE_BYTES, Durability::Synced)
        .map_err(|e| Error::storage(format!("cannot open data dir {}", path.display()), e))
}

/// The state the data dir's log reaches: its snapshot and applied state,
/// then every entry after them.
async fn logged_state(data_dir: &DataDir) -> Result<AppliedState> {
    let storage = |e: openraft::StorageError<NodeId>| Error::storage("reading the Raft log", e);
    let state_machine = StateMachineStore::open(data_dir, State::default()).map_err(storage)?;
    let mut applied = state_machine.read().clone();
    let mut log = LogStore::open(data_dir).map_err(storage)?;
    let Some(last) = log.get_log_state().await.map_err(storage)?.last_log_id else { return Ok(applied) };
    let first = applied.last_applied.map_or(0, |log_id| log_id.index + 1);
    if last.index < first {
        return Ok(applied);
    }
    let entries = log.get_log_reader().await.try_get_log_entries(first..=last.index).await.map_err(storage)?;
    for entry in entries {
        applied.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Normal(envelopes) => {
                envelopes.iter().for_each(|envelope| drop(applied.state.apply(envelope)))
            }
            EntryPayload::Membership(membership) => {
                applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
            }
            EntryPayload::Blank => {}
        }
    }
    Ok(applied)
}

/// Leaves in `data_dir` a snapshot of `state` at `log_id` whose
/// membership is `nodes`, all voters, and a log purged up to it.
async fn seed(
    data_dir: &DataDir,
    log_id: LogId<NodeId>,
    nodes: BTreeMap<NodeId, BasicNode>,
    state: State,
    cluster_id: &str,
) -> Result<Seeded> {
    let voter_ids: BTreeSet<NodeId> = nodes.keys().copied().collect();
    let membership = StoredMembership::new(Some(log_id), Membership::new(vec![voter_ids.clone()], nodes));
    let applied = AppliedState { last_applied: Some(log_id), last_membership: membership.clone(), state };
    let snapshot_id = format!("seeded-{cluster_id}-{}", log_id.index);
    let meta = SnapshotMeta { last_log_id: Some(log_id), last_membership: membership, snapshot_id };
    let encoding = |e: postcard::Error| Error::storage("encoding the snapshot", e);
    let (meta, data) = (encode(&meta).map_err(encoding)?, encode(&applied).map_err(encoding)?);
    let snapshot_file = SnapshotFile::open(&data_dir.snapshots_dir(), Durability::Synced)
        .map_err(|e| Error::storage("opening the snapshot file", e))?;
    snapshot_file.save(&meta, &data).map_err(|e| Error::storage("writing the snapshot", e))?;
    let storage = |e: openraft::StorageError<NodeId>| Error::storage("rewriting the Raft log", e);
    let mut log = LogStore::open(data_dir).map_err(storage)?;
    // Nothing after the snapshot survives; everything up to it is covered.
    log.truncate(LogId::new(log_id.leader_id, log_id.index + 1)).await.map_err(storage)?;
    log.purge(log_id).await.map_err(storage)?;
    log.save_committed(Some(log_id)).await.map_err(storage)?;
    data_dir.flush_and_sync().map_err(|e| Error::storage("syncing the data dir", e))?;
    Ok(Seeded { index: log_id.index, voter_ids: voter_ids.into_iter().collect(), cluster_id: cluster_id.to_owned() })
}
