//! [`Node`]: one running runner-storage node: its Raft, stores and store
//! clock, and what the services build on.
//!
//! - `mod.rs`: opening a node (data dir, stores, workarounds, Raft) and its views.
//! - [`calls`]: [`Node::write`] and [`Node::read`], with the store time.
//! - [`bootstrap`]: a new cluster's first start.
//! - [`membership`]: learners, voters, probes of a joining node.
//! - [`offline`]: restore and recover, on a stopped node's data dir.
//! - [`proposer`]: batches concurrent writes into one Raft entry.
//! - [`read_barrier`]: coalesced, leased linearizable read barriers.
//! - [`planted`]: the bugs the chaos checkers must catch.

pub mod bootstrap;
pub mod calls;
pub mod membership;
pub mod offline;
pub mod planted;
pub mod proposer;
pub mod read_barrier;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ServerState};

use crate::config::NodeConfig;
use crate::error::Error;
use crate::raft::storage::data_dir::{DataDir, Durability};
use crate::raft::storage::log_store::{FlushStats, LogStore};
use crate::raft::storage::sm_store::{AppliedState, LeaderAnchor, StateMachineStore};
use crate::raft::transport::network::Network;
use crate::raft::transport::RaftEvents;
use crate::raft::typ::ForwardToLeader;
use crate::raft::workarounds::early_replication::{EarlyReplication, EarlyStats};
use crate::raft::workarounds::election::{self, Nudges};
use crate::raft::workarounds::handover::{self, Handover};
use crate::raft::workarounds::restart::resign_leadership;
use crate::raft::{NodeId, Raft};
use crate::store_clock::StoreClock;
use crate::transport::pool::ChannelPool;
use planted::PlantedBug;
use proposer::Proposer;
use read_barrier::ReadBarrier;

pub use planted::PLANTED_BUG_ENV;

/// Why a call was not answered here.
#[derive(Debug)]
pub enum CallError {
    /// This node is not the leader; `leader_address` is the one it knows.
    NotLeader {
        /// The leader's gRPC address, when known.
        leader_address: Option<String>,
    },
    /// The call failed.
    Failed(Error),
}

impl From<Error> for CallError {
    fn from(error: Error) -> Self {
        CallError::Failed(error)
    }
}

/// One running node.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// Its Raft.
    raft: Raft,
    /// The applied state, shared with the Raft state machine.
    state_machine: StateMachineStore,
    /// Channels to other nodes: the leader for forwarded calls, a joining node's probe.
    peers: ChannelPool,
    /// What the Raft server reports of appends and votes, to hasten elections.
    election_nudges: Nudges,
    /// Batches concurrent writes into one Raft entry.
    proposer: Proposer,
    /// Coalesces concurrent reads' barrier rounds.
    read_barrier: ReadBarrier,
    /// A leader that heard from no quorum for longer refuses calls
    /// (`raft::quorum`): `election_timeout_max + election_timeout_min`.
    quorum_timeout: Duration,
    /// Call counters and latencies, rendered for Prometheus.
    metrics: crate::metrics::Metrics,
    committed_index: Arc<AtomicU64>,
    flush_stats: Arc<FlushStats>,
    early_stats: Option<Arc<EarlyStats>>,
    data_dir: DataDir,
    /// Store time while this node leads (SPEC §4).
    store_clock: StoreClock,
    /// The anchors leaders' blank entries leave, for `store_clock`.
    leader_anchors: tokio::sync::watch::Receiver<Option<LeaderAnchor>>,
    planted_bug: Option<PlantedBug>,
    /// A leadership hand-over under way (calls are refused meanwhile).
    handover: Handover,
    /// openraft's leader lease (`election_timeout_max`).
    lease: Duration,
}

fn not_leader(forward: ForwardToLeader) -> CallError {
    CallError::NotLeader { leader_address: forward.leader_node.map(|node| node.addr) }
}

impl Node {
    /// Opens the data dir and starts Raft (not the gRPC server).
    ///
    /// # Errors
    /// When the data dir cannot be created or opened (in use by another
    /// process, not writable, corrupt), or openraft rejects the config.
    pub async fn open(config: &NodeConfig) -> Result<Arc<Node>, Error> {
        let planted_bug = PlantedBug::from_env()?;
        if let Some(bug) = planted_bug {
            tracing::warn!(?bug, "PLANTED BUG ACTIVE: this node is deliberately incorrect (checker tests only)");
        }
        let stores = Stores::open(config, planted_bug).await?;
        let raft_config = Arc::new(raft_config(config)?);
        let committed_index = stores.log.committed_index();
        let flush_stats = stores.log.flush_stats();
        let early_stats = stores.early.as_ref().map(|early| early.stats());
        let dialer = config.peer_dialer()?.with_identity(stores.state_machine.identity());
        let lease = Duration::from_millis(config.raft.election_timeout_max_ms);
        let election_timeout_min = Duration::from_millis(config.raft.election_timeout_min_ms);
        let (election_nudges, nudge_queue) = Nudges::new(lease, election_timeout_min);
        let unreachable_backoff =
            Duration::from_millis(config.raft.heartbeat_interval_ms).min(crate::limits::PEER_UNREACHABLE_BACKOFF_MAX);
        let shortcut = stores.early.map(|early| early as Arc<dyn crate::raft::transport::AppendShortcut>);
        let events: Arc<dyn RaftEvents> = Arc::new(election_nudges.clone());
        let network = Network::new(dialer.clone(), events, unreachable_backoff, shortcut);
        let state_machine = stores.state_machine;
        let raft = Raft::new(config.node_id, raft_config, network, stores.log, state_machine.clone())
            .await
            .map_err(|e| Error::storage("cannot start Raft", e))?;
        tokio::spawn(election::run(raft.clone(), nudge_queue));
        let quorum_timeout = lease + election_timeout_min;
        Ok(Arc::new(Node {
            id: config.node_id,
            proposer: Proposer::start(raft.clone(), quorum_timeout),
            raft,
            leader_anchors: state_machine.leader_anchors(),
            state_machine,
            peers: ChannelPool::new(dialer),
            election_nudges,
            // Half of openraft's leader lease (followers refuse other candidates
            // for election_timeout_max after our last acknowledged heartbeat).
            read_barrier: ReadBarrier::new(lease / 2),
            quorum_timeout,
            metrics: crate::metrics::Metrics::new(),
            committed_index,
            flush_stats,
            early_stats,
            data_dir: stores.data_dir,
            store_clock: StoreClock::new(),
            planted_bug,
            handover: Handover::default(),
            lease,
        }))
    }

    /// Hands leadership to `target` (the most up-to-date voter when `None`)
    /// and answers who leads then; calls are refused meanwhile (see
    /// `raft::workarounds::handover`). At most `timeout`.
    ///
    /// # Errors
    /// `NotLeader` on a follower; `FailedPrecondition` naming why
    /// leadership did not move.
    pub async fn transfer_leadership(&self, target: Option<NodeId>, timeout: Duration) -> Result<NodeId, CallError> {
        if !self.is_leader() {
            let leader = self.raft.metrics().borrow().current_leader;
            let leader_address = leader.and_then(|id| {
                self.raft.metrics().borrow().membership_config.membership().get_node(&id).map(|n| n.addr.clone())
            });
            return Err(CallError::NotLeader { leader_address });
        }
        let moved = handover::hand_over(&self.raft, &self.peers, &self.handover, target, self.lease, timeout).await;
        match moved {
            Ok(leader) => {
                tracing::info!(leader, "leadership handed over");
                Ok(leader)
            }
            Err(reason) => Err(Error::FailedPrecondition(format!("leadership did not move: {reason}")).into()),
        }
    }

    /// The cluster id this node's state names (none before its first leader named it).
    pub fn cluster_identity(&self) -> crate::transport::identity::ClusterIdentity {
        self.state_machine.identity()
    }

    /// Its Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Where the Raft service reports appends and votes (the election nudges).
    pub fn raft_events(&self) -> Arc<dyn RaftEvents> {
        Arc::new(self.election_nudges.clone())
    }

    /// Channels to other nodes (forwarding, probes).
    pub fn peers(&self) -> &ChannelPool {
        &self.peers
    }

    /// Call counters and latencies.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Reads this node's own view of the applied state, with no barrier.
    pub fn local_view<T>(&self, read: impl FnOnce(&AppliedState) -> T) -> T {
        read(&self.state_machine.read())
    }

    /// The index of the last entry this node knows to be committed.
    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }

    /// Bytes the data dir takes, by sled's estimate.
    pub fn size_on_disk(&self) -> u64 {
        self.data_dir.db().size_on_disk().unwrap_or(0)
    }

    /// Raft's view of this node for metrics.
    pub fn raft_view(&self) -> crate::metrics::RaftView {
        let metrics = self.raft.metrics().borrow().clone();
        crate::metrics::RaftView {
            role: match metrics.state {
                ServerState::Leader => 1,
                ServerState::Follower => 2,
                ServerState::Candidate => 3,
                ServerState::Learner => 4,
                ServerState::Shutdown => 0,
            },
            term: metrics.current_term,
            leader_id: metrics.current_leader.unwrap_or(0),
            commit_index: self.committed_index(),
            applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            purged_index: metrics.purged.map_or(0, |log_id| log_id.index),
            snapshot_index: metrics.snapshot.map_or(0, |log_id| log_id.index),
            disk_bytes: self.size_on_disk(),
            snapshot_bytes: self.state_machine.snapshot_bytes(),
            resident_memory_bytes: crate::metrics::resident_memory_bytes(),
            log_flushes: self.flush_stats.flushes.load(Ordering::Relaxed),
            log_flushed_appends: self.flush_stats.appends.load(Ordering::Relaxed),
            log_flush_seconds: self.flush_stats.flush_micros.load(Ordering::Relaxed) as f64 / 1e6,
            early_answered_appends: self.early_stats.as_ref().map_or(0, |s| s.answered.load(Ordering::Relaxed)),
            early_usual_appends: self.early_stats.as_ref().map_or(0, |s| s.sent_as_usual.load(Ordering::Relaxed)),
        }
    }

    /// The Prometheus text of this node's metrics.
    pub fn render_metrics(&self) -> String {
        let raft = self.raft_view();
        let now_ms = self.store_time_ms_for_views();
        self.metrics.render(&raft, &self.state_machine.read(), now_ms)
    }

    /// Waits until this node knows a leader at an address other than
    /// `unreachable` (any leader when `None`), at the latest until `until`.
    /// Whether one is known.
    pub async fn wait_for_leader(&self, unreachable: Option<&str>, until: tokio::time::Instant) -> bool {
        let mut metrics = self.raft.metrics();
        let usable = |metrics: &openraft::RaftMetrics<NodeId, BasicNode>| {
            let leader = metrics.current_leader.and_then(|id| metrics.membership_config.membership().get_node(&id));
            leader.is_some_and(|node| Some(node.addr.as_str()) != unreachable)
        };
        let known = tokio::time::timeout_at(until, metrics.wait_for(usable)).await;
        matches!(known, Ok(Ok(_)))
    }

    /// Completes when Raft stopped on its own (a storage error, a panic in
    /// its core), with the reason; never while it runs or after a requested
    /// shutdown. A node whose Raft stopped cannot serve anything: `serve`
    /// exits on it, naming the data dir, rather than answer every call with
    /// an error.
    pub async fn raft_failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                if !matches!(fatal, openraft::error::Fatal::Stopped) {
                    return format!(
                        "node {}: Raft stopped: {fatal} (data dir {}; if it is damaged, see the way out logged \
                         at the last start, or move it aside and add this node again with a new id)",
                        self.id,
                        self.data_dir.path().display()
                    );
                }
            }
            if metrics.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether this node currently leads.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The voter ids of the current membership.
    pub fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    /// Stops Raft and flushes the data dir.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        let data_dir = self.data_dir.clone();
        match tokio::task::spawn_blocking(move || data_dir.flush_and_sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "final flush of the data dir failed"),
            Err(error) => tracing::error!(%error, "final flush of the data dir did not run"),
        }
    }
}

/// A node's stores, opened and ready for openraft: the data dir, the log
/// (resigned from any term it led), the state machine, early replication.
struct Stores {
    data_dir: DataDir,
    log: LogStore,
    state_machine: StateMachineStore,
    early: Option<Arc<EarlyReplication>>,
}

impl Stores {
    async fn open(config: &NodeConfig, planted_bug: Option<PlantedBug>) -> Result<Stores, Error> {
        let durability =
            if planted_bug == Some(PlantedBug::NoSync) { Durability::FlushOnly } else { Durability::Synced };
        let data_dir = DataDir::open(&config.data_dir, crate::limits::SLED_CACHE_BYTES, durability)
            .map_err(|e| Error::storage(format!("node {}: cannot open its data dir", config.node_id), e))?;
        let damaged = |what: &str| {
            format!(
                "node {}: cannot open {what} in data dir {}. If it is damaged (a torn or corrupt write), this \
                 node cannot serve from it: stop it, move the data dir aside (keep it for diagnosis), remove \
                 node {} from the cluster (`ctl members remove`) and add a node with a new id and an empty data \
                 dir (`ctl members add`)",
                config.node_id,
                config.data_dir.display(),
                config.node_id
            )
        };
        let mut log = LogStore::open(&data_dir).map_err(|e| Error::storage(damaged("the Raft log"), e))?;
        let early = config.raft.early_replication.then(|| Arc::new(EarlyReplication::new(config.node_id)));
        if let Some(early) = &early {
            log = log.with_observer(early.clone());
        }
        let resigned =
            resign_leadership(&mut log, config.node_id).await.map_err(|e| Error::storage(damaged("the vote"), e))?;
        if let Some(term) = resigned {
            tracing::info!(term, "this node led term {term} before it stopped; it starts as a follower");
        }
        let state_machine = StateMachineStore::open(&data_dir, crate::state_machine::State::default())
            .map_err(|e| Error::storage(damaged("the snapshot"), e))?;
        Ok(Stores { data_dir, log, state_machine, early })
    }
}

fn raft_config(config: &NodeConfig) -> Result<openraft::Config, Error> {
    let tuning = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: "runner-storage".into(),
        heartbeat_interval: tuning.heartbeat_interval_ms,
        election_timeout_min: tuning.election_timeout_min_ms,
        election_timeout_max: tuning.election_timeout_max_ms,
        install_snapshot_timeout: 5_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: tuning.logs_kept_after_snapshot,
        snapshot_max_chunk_size: crate::limits::SNAPSHOT_CHUNK_BYTES as u64,
        max_payload_entries: crate::limits::REPLICATION_ENTRIES_MAX,
        ..Default::default()
    };
    raft_config.validate().map_err(|e| Error::Config(format!("invalid Raft settings: {e}")))
}
