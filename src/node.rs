//! [`Node`]: one running runner-storage node: its Raft, stores and the two
//! operations the services build on, [`Node::write`] and [`Node::read`].
//!
//! `write` validates, stamps the leader's clock (the only clock read on the
//! write path) and proposes through Raft; `read` passes openraft's
//! linearizable read barrier and reads the applied state at
//! `max(state now, leader clock)`. Either answers [`CallError::NotLeader`]
//! on a node that is not the leader, for the service to forward.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use crate::clock::wall_clock_ms;
use crate::config::NodeConfig;
use crate::error::Error;
use crate::limits::RAFT_CALL_TIMEOUT;
use crate::model::RequestId;
use crate::proposer::{Proposer, Refused};
use crate::raft::data_dir::{DataDir, Durability};
use crate::raft::early_replication::EarlyReplication;
use crate::raft::election::{self, Nudges};
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::sm_store::{AppliedState, LeaderAnchor, StateMachineStore};
use crate::raft::typ::ForwardToLeader;
use crate::raft::{NodeId, Raft};
use crate::read_barrier::{BarrierOutcome, ReadBarrier};
use crate::service::forward::Forwarder;
use crate::state_machine::{validate_namespace, Command, Envelope, NamespaceName, Reply, State};
use crate::store_clock::StoreClock;

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
    pub raft: Raft,
    /// The applied state, shared with the Raft state machine.
    pub state_machine: StateMachineStore,
    /// Channels to the leader for forwarded calls.
    pub forwarder: Forwarder,
    /// What the Raft server reports of appends and votes, to hasten elections.
    pub election_nudges: Nudges,
    /// Batches concurrent writes into one Raft entry.
    proposer: Proposer,
    /// Coalesces concurrent reads' barrier rounds.
    read_barrier: ReadBarrier,
    /// A leader that heard from no quorum for longer refuses calls
    /// (`raft::quorum`): `election_timeout_max + election_timeout_min`.
    quorum_timeout: Duration,
    /// Call counters and latencies, rendered for Prometheus.
    pub metrics: crate::metrics::Metrics,
    committed_index: Arc<AtomicU64>,
    flush_stats: Arc<crate::raft::log_store::FlushStats>,
    early_stats: Option<Arc<crate::raft::early_replication::EarlyStats>>,
    data_dir: DataDir,
    /// Store time while this node leads (SPEC §4).
    store_clock: StoreClock,
    /// The anchors leaders' blank entries leave, for `store_clock`.
    leader_anchors: tokio::sync::watch::Receiver<Option<LeaderAnchor>>,
    planted_bug: Option<PlantedBug>,
}

/// Environment variable that plants a known bug, so the chaos checkers can
/// be shown to catch it. Never set it in production: the node logs a loud
/// warning at start when it is set.
pub const PLANTED_BUG_ENV: &str = "RUNNER_STORAGE_PLANTED_BUG";

/// A bug planted on purpose for checker tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// `stale-reads`: reads skip the read barrier and are answered from this
    /// node's own state, leader or not (what a naive store would do).
    StaleReads,
    /// `no-sync`: sled's `flush()` alone before acknowledging, no
    /// fdatasync/fsync (what this store did before it synced for real):
    /// acknowledged writes survive a killed process, not a power cut.
    NoSync,
    /// `wall-clock-stamps`: commands and reads take the leader's raw wall
    /// clock as store time (what this store did before `StoreClock`): a
    /// step of the leader's clock by more than E expires every lock.
    WallClockStamps,
}

impl PlantedBug {
    fn from_env() -> anyhow::Result<Option<PlantedBug>> {
        match std::env::var(PLANTED_BUG_ENV).ok().as_deref() {
            None | Some("") => Ok(None),
            Some("stale-reads") => Ok(Some(PlantedBug::StaleReads)),
            Some("no-sync") => Ok(Some(PlantedBug::NoSync)),
            Some("wall-clock-stamps") => Ok(Some(PlantedBug::WallClockStamps)),
            Some(other) => anyhow::bail!(
                "{PLANTED_BUG_ENV}={other:?} is not a known planted bug (stale-reads, no-sync, wall-clock-stamps)"
            ),
        }
    }
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
    pub async fn open(config: &NodeConfig) -> anyhow::Result<Arc<Node>> {
        let planted_bug = PlantedBug::from_env()?;
        if let Some(bug) = planted_bug {
            tracing::warn!(?bug, "PLANTED BUG ACTIVE: this node is deliberately incorrect (checker tests only)");
        }
        let durability =
            if planted_bug == Some(PlantedBug::NoSync) { Durability::FlushOnly } else { Durability::Synced };
        let data_dir = DataDir::open(&config.data_dir, crate::limits::SLED_CACHE_BYTES, durability)
            .with_context(|| format!("node {}: cannot open its data dir", config.node_id))?;
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
        let mut log_store = LogStore::open(&data_dir).with_context(|| damaged("the Raft log"))?;
        let early = config.raft.early_replication.then(|| EarlyReplication::new(config.node_id));
        let early_stats = early.as_ref().map(EarlyReplication::stats);
        if let Some(early) = &early {
            log_store = log_store.with_early_replication(early.clone());
        }
        if let Some(term) = log_store.resign_leadership(config.node_id).await.context("cannot resign the term led")? {
            tracing::info!(term, "this node led term {term} before it stopped; it starts as a follower (see LogStore::resign_leadership)");
        }
        let state_machine =
            StateMachineStore::open(&data_dir, State::default()).with_context(|| damaged("the snapshot"))?;
        let raft_config = Arc::new(raft_config(config)?);
        let committed_index = log_store.committed_index();
        let flush_stats = log_store.flush_stats();
        let dialer = config.peer_dialer()?;
        let lease = Duration::from_millis(config.raft.election_timeout_max_ms);
        let election_timeout_min = Duration::from_millis(config.raft.election_timeout_min_ms);
        let (election_nudges, nudge_queue) = Nudges::new(lease, election_timeout_min);
        let unreachable_backoff =
            Duration::from_millis(config.raft.heartbeat_interval_ms).min(crate::limits::PEER_UNREACHABLE_BACKOFF_MAX);
        let network = Network::new(dialer.clone(), election_nudges.clone(), unreachable_backoff, early);
        let raft = Raft::new(config.node_id, raft_config, network, log_store, state_machine.clone())
            .await
            .context("cannot start Raft")?;
        tokio::spawn(election::run(raft.clone(), nudge_queue));
        let leader_anchors = state_machine.leader_anchors();
        let forwarder = Forwarder::new(dialer);
        let metrics = crate::metrics::Metrics::new();
        let quorum_timeout = lease + election_timeout_min;
        let proposer = Proposer::start(raft.clone(), quorum_timeout);
        // Half of openraft's leader lease (followers refuse other candidates for
        // election_timeout_max after our last acknowledged heartbeat).
        let read_barrier = ReadBarrier::new(lease / 2);
        Ok(Arc::new(Node {
            id: config.node_id,
            raft,
            state_machine,
            forwarder,
            election_nudges,
            read_barrier,
            quorum_timeout,
            proposer,
            metrics,
            committed_index,
            flush_stats,
            early_stats,
            data_dir,
            store_clock: StoreClock::new(),
            leader_anchors,
            planted_bug,
        }))
    }

    /// Bootstraps a new cluster from a pristine node (no Raft state yet) whose
    /// config lists peers. Returns whether the node was pristine.
    ///
    /// The peer with the lowest id initialises the cluster at once; the
    /// others wait up to [`crate::limits::BOOTSTRAP_DEFER`] for the elected leader
    /// to reach them, and initialise only if none did (the lowest peer is
    /// down), so that a new cluster still forms without it. openraft
    /// campaigns on every node it initialises: when every peer initialised,
    /// one started a few ms after the first leader was elected campaigned
    /// too, and its vote (same term, higher node id) deposed that leader,
    /// an election nobody needed on about 1 fresh start in 3.
    ///
    /// # Errors
    /// When the Raft state cannot be read, or initialising fails for another
    /// reason than being initialised already.
    pub async fn bootstrap_if_pristine(self: &Arc<Self>, config: &NodeConfig) -> anyhow::Result<bool> {
        if config.peers.is_empty() || self.is_initialized().await? {
            return Ok(false);
        }
        let members: BTreeMap<NodeId, BasicNode> =
            config.peers.iter().map(|peer| (peer.id, BasicNode::new(peer.address.clone()))).collect();
        if members.keys().next() == Some(&self.id) {
            self.initialize(members).await?;
            return Ok(true);
        }
        let node = self.clone();
        tokio::spawn(async move {
            // openraft's own notion of initialised: a log entry or a vote.
            let reached = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
                m.last_log_index.is_some() || m.vote != openraft::Vote::default()
            };
            let wait = node.raft.wait(Some(crate::limits::BOOTSTRAP_DEFER));
            if wait.metrics(reached, "reached by a leader").await.is_ok() {
                return;
            }
            tracing::info!(defer = ?crate::limits::BOOTSTRAP_DEFER, "no leader reached this new node: initialising the cluster here");
            if let Err(error) = node.initialize(members).await {
                tracing::error!(error = format!("{error:#}"), "cannot initialise the cluster");
            }
        });
        Ok(true)
    }

    async fn is_initialized(&self) -> anyhow::Result<bool> {
        self.raft.is_initialized().await.context("reading Raft state")
    }

    /// Initialises Raft with `members`; initialised already is no error.
    async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> anyhow::Result<()> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(error)) => {
                tracing::info!(%error, "already initialised");
                Ok(())
            }
            Err(error) => Err(error).context("cannot initialise the cluster"),
        }
    }

    /// The store time to stamp a command or answer a read with (SPEC §4).
    ///
    /// On the leader, its [`StoreClock`]; a leader just elected first waits
    /// (within [`RAFT_CALL_TIMEOUT`]) until it applied its own blank entry,
    /// which anchors the clock. Elsewhere the state's own time: a follower's
    /// write is forwarded, never applied, and a stamp that does not advance
    /// time is always safe.
    ///
    /// # Errors
    /// `Unavailable` when the new leader's blank entry was not applied in time.
    async fn store_now_ms(&self) -> Result<u64, Error> {
        if self.planted_bug == Some(PlantedBug::WallClockStamps) {
            return Ok(wall_clock_ms());
        }
        let (state, term) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state, metrics.current_term)
        };
        if state != ServerState::Leader {
            return Ok(self.state_machine.read().state.now_ms());
        }
        if let Some(now_ms) = self.store_clock.now_ms(term, Instant::now(), wall_clock_ms()) {
            return Ok(now_ms);
        }
        let own_blank = openraft::CommittedLeaderId::new(term, self.id);
        let mut anchors = self.leader_anchors.clone();
        let anchored = anchors.wait_for(|anchor| anchor.is_some_and(|(leader, _)| leader >= own_blank));
        let anchor = match tokio::time::timeout(RAFT_CALL_TIMEOUT, anchored).await {
            Ok(Ok(anchor)) => *anchor,
            _ => None,
        };
        let Some((leader, anchor)) = anchor.filter(|(leader, _)| *leader == own_blank) else {
            return Err(Error::unavailable(format!("elected in term {term} but not yet serving; retry")));
        };
        tracing::info!(term, store_now_ms = anchor.store_now_ms, %leader, "store clock anchored for this term");
        self.store_clock.take_office(term, anchor, wall_clock_ms());
        let now_ms = self.store_clock.now_ms(term, Instant::now(), wall_clock_ms());
        Ok(now_ms.expect("the store clock took office in this term just now"))
    }

    /// Store time for views that need no barrier (metrics): the leader's
    /// clock when it is anchored, else the state's time.
    pub fn store_time_ms_for_views(&self) -> u64 {
        let term = self.raft.metrics().borrow().current_term;
        let state_now_ms = self.state_machine.read().state.now_ms();
        self.store_clock.now_ms(term, Instant::now(), wall_clock_ms()).map_or(state_now_ms, |now| now.max(state_now_ms))
    }

    /// Proposes `command` (validated first) stamped with the store time.
    ///
    /// # Errors
    /// [`CallError::NotLeader`] on a follower; [`CallError::Failed`] with
    /// `InvalidArgument` before proposing bad input, the state machine's
    /// refusal, or `Unavailable` when Raft cannot commit in time.
    pub async fn write(
        &self,
        namespace: NamespaceName,
        request_id: Option<RequestId>,
        command: Command,
    ) -> Result<Reply, CallError> {
        validate_namespace(&namespace)?;
        command.validate()?;
        if let Some(request_id) = &request_id {
            request_id.validate()?;
        }
        self.refuse_without_quorum()?;
        let envelope = Envelope { time_ms: self.store_now_ms().await?, request_id, namespace, command };
        match self.proposer.propose(envelope).await {
            Ok(reply) => Ok(reply.into_result()?),
            Err(Refused::NotLeader(leader_address)) => Err(CallError::NotLeader { leader_address }),
            Err(Refused::Unavailable(reason)) => Err(Error::unavailable(reason).into()),
        }
    }

    /// Passes the linearizable read barrier, then runs `read` on the applied
    /// state with `now = max(state now, store time)`.
    ///
    /// # Errors
    /// [`CallError::NotLeader`] on a follower; `Unavailable` without quorum.
    pub async fn read<T>(&self, read: impl FnOnce(&State, u64) -> T) -> Result<T, CallError> {
        if self.planted_bug == Some(PlantedBug::StaleReads) {
            let applied = self.state_machine.read();
            return Ok(read(&applied.state, applied.state.now_ms().max(wall_clock_ms())));
        }
        self.refuse_without_quorum()?;
        let barrier = tokio::select! {
            passed = tokio::time::timeout(RAFT_CALL_TIMEOUT, self.read_barrier.pass(&self.raft)) => passed
                .map_err(|_| Error::unavailable("the read barrier did not pass in time (no quorum?)"))?,
            lost = crate::raft::quorum::lost(&self.raft, self.quorum_timeout) => {
                return Err(Error::unavailable(crate::raft::quorum::refusal(lost)).into());
            }
        };
        match barrier {
            BarrierOutcome::Passed => {
                let store_now_ms = self.store_now_ms().await?;
                let applied = self.state_machine.read();
                Ok(read(&applied.state, applied.state.now_ms().max(store_now_ms)))
            }
            BarrierOutcome::NotLeader(leader_address) => Err(CallError::NotLeader { leader_address }),
            BarrierOutcome::Failed(reason) => Err(Error::unavailable(reason).into()),
        }
    }

    /// `Unavailable` when this node leads but heard from no quorum for
    /// longer than its quorum timeout (`raft::quorum`).
    fn refuse_without_quorum(&self) -> Result<(), Error> {
        match crate::raft::quorum::lost_for(&self.raft.metrics().borrow(), self.quorum_timeout) {
            Some(lost) => Err(Error::unavailable(crate::raft::quorum::refusal(lost))),
            None => Ok(()),
        }
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

fn raft_config(config: &NodeConfig) -> anyhow::Result<openraft::Config> {
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
    raft_config.validate().context("invalid Raft settings")
}

/// Longest a membership change waits: adding a learner waits for it to
/// catch up, which may mean sending a whole snapshot.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest the leader waits for a new node to answer its probe.
pub const NEW_NODE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a new learner may take to catch up before it is removed again.
/// Shorter than the client's default deadline, so the caller gets the reason.
pub const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(8);

/// The membership after a change: log index, voters, learners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipView {
    /// Log index of the membership entry.
    pub log_index: u64,
    /// Voting members.
    pub voter_ids: Vec<NodeId>,
    /// Non-voting members.
    pub learner_ids: Vec<NodeId>,
}

impl Node {
    /// Adds `node_id` at `address` as a learner and waits until it caught up.
    ///
    /// # Errors
    /// As [`Node::write`].
    pub async fn add_learner(&self, node_id: NodeId, address: String) -> Result<MembershipView, CallError> {
        if node_id == 0 {
            return Err(Error::InvalidArgument("node_id must be at least 1".into()).into());
        }
        crate::model::RunnerAddress::parse(&address)
            .map_err(|_| Error::InvalidArgument(format!("address {address:?} is not host:port")))?;
        self.probe_new_node(node_id, &address).await?;
        let change = self.raft.add_learner(node_id, BasicNode::new(address.clone()), false);
        let view = Self::membership_result(tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, change).await)?;
        if self.wait_for_learner(node_id, view.log_index).await {
            return Ok(view);
        }
        // A learner that cannot be replicated to (unreachable, or refused by
        // TLS) would stay in the membership forever: take it out again.
        let removal = self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false);
        if let Err(error) = Self::membership_result(tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, removal).await) {
            tracing::warn!(node_id, ?error, "could not remove the learner that did not catch up");
        }
        Err(Error::FailedPrecondition(format!(
            "node {node_id} at {address} did not catch up within {LEARNER_CATCH_UP_TIMEOUT:?} \
             (unreachable, or its certificate is not the cluster's?); it was removed again"
        ))
        .into())
    }

    /// Refuses a new node before it enters the membership when it cannot be
    /// a peer: its address is another member's, it cannot be reached the
    /// way peers dial (mutual TLS, token), or it says it is another node.
    async fn probe_new_node(&self, node_id: NodeId, address: &str) -> Result<(), CallError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let taken = membership
            .membership()
            .nodes()
            .find(|(id, node)| node.addr == address && **id != node_id)
            .map(|(id, _)| *id);
        if let Some(other) = taken {
            return Err(Error::InvalidArgument(format!("address {address} is already node {other}'s")).into());
        }
        let channel = self.forwarder.channel(address)?;
        let request = self.forwarder.request(crate::pb::v1::StatusRequest::default(), Some(NEW_NODE_PROBE_TIMEOUT));
        let mut admin = crate::pb::v1::admin_client::AdminClient::new(channel);
        let probe = admin.status(request);
        let refused = |reason: String| {
            Err(Error::FailedPrecondition(format!("node {node_id} at {address} cannot join: {reason}")).into())
        };
        match tokio::time::timeout(NEW_NODE_PROBE_TIMEOUT, probe).await {
            Ok(Ok(status)) if status.get_ref().node_id == node_id => Ok(()),
            Ok(Ok(status)) => refused(format!("it is configured as node {}", status.get_ref().node_id)),
            // Not up yet, maybe: retryable. A refused certificate is final.
            Ok(Err(status))
                if status.code() == tonic::Code::Unavailable && !status.message().contains("certificate") =>
            {
                Err(Error::unavailable(format!(
                    "node {node_id} at {address} is not reachable yet: {}",
                    status.message()
                ))
                .into())
            }
            Ok(Err(status)) => refused(format!(
                "it does not answer as a peer ({}); does it have a certificate of the cluster's CA?",
                status.message()
            )),
            Err(_) => Err(Error::unavailable(format!(
                "node {node_id} at {address} did not answer within {NEW_NODE_PROBE_TIMEOUT:?}"
            ))
            .into()),
        }
    }

    /// Polls the leader's replication progress until `node_id` has matched
    /// `log_index`; false after [`LEARNER_CATCH_UP_TIMEOUT`].
    async fn wait_for_learner(&self, node_id: NodeId, log_index: u64) -> bool {
        let deadline = tokio::time::Instant::now() + LEARNER_CATCH_UP_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let matched = self
                .raft
                .metrics()
                .borrow()
                .replication
                .as_ref()
                .and_then(|progress| progress.get(&node_id).copied().flatten().map(|log_id| log_id.index));
            if matched.is_some_and(|index| index >= log_index) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Makes `voter_ids` exactly the voters; keeps other members as learners
    /// unless `remove_learners`.
    ///
    /// # Errors
    /// As [`Node::write`]; `InvalidArgument` for an empty voter set.
    pub async fn change_membership(
        &self,
        voter_ids: BTreeSet<NodeId>,
        remove_learners: bool,
    ) -> Result<MembershipView, CallError> {
        if voter_ids.is_empty() {
            return Err(Error::InvalidArgument("voter_ids is empty".into()).into());
        }
        let change =
            tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, self.raft.change_membership(voter_ids, !remove_learners));
        // openraft answers the change once its uniform entry is applied here.
        // A leader deposed before that (the change removed it and the new
        // voters elected a leader at once) is no longer replicated to, so it
        // would wait out the whole timeout: answer UNAVAILABLE instead, and
        // the client's retry reaches the new leader, where the change is done.
        tokio::select! {
            biased;
            result = change => Self::membership_result(result),
            () = self.deposed(self.is_leader()) => Err(Error::unavailable(
                "this node stopped leading during the membership change; its outcome is unknown, retry"
            )
            .into()),
        }
    }

    /// Completes when this node, leading when `was_leader`, stops leading; never when it was not leading.
    async fn deposed(&self, was_leader: bool) {
        let mut metrics = self.raft.metrics();
        while was_leader && metrics.borrow_and_update().state == ServerState::Leader {
            if metrics.changed().await.is_err() {
                return;
            }
        }
        if !was_leader {
            std::future::pending::<()>().await;
        }
    }

    fn membership_result(
        result: Result<
            Result<
                openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
                crate::raft::typ::RaftError<crate::raft::typ::ClientWriteError>,
            >,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<MembershipView, CallError> {
        let written = result.map_err(|_| Error::unavailable("the membership change did not finish in time"))?;
        match written {
            Ok(response) => {
                let membership = response.membership.unwrap_or_default();
                let voter_ids: Vec<NodeId> = membership.voter_ids().collect();
                let learner_ids = membership.learner_ids().collect();
                Ok(MembershipView { log_index: response.log_id.index, voter_ids, learner_ids })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => Err(not_leader(forward)),
            // openraft checks for a change in progress before it checks for
            // leadership, so a deposed leader still holding the uncommitted
            // entry of an earlier attempt answers InProgress: transient, retry.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                error @ ChangeMembershipError::InProgress(_),
            ))) => Err(Error::unavailable(format!("{error}; retry once it is committed")).into()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
                Err(Error::FailedPrecondition(error.to_string()).into())
            }
            Err(RaftError::Fatal(fatal)) => Err(Error::unavailable(format!("this node has stopped: {fatal}")).into()),
        }
    }
}
