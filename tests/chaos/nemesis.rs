//! The nemesis: injects one fault at a time, holds it for a bounded time,
//! heals it, and waits for the cluster to have a leader again before the
//! next. The kinds are chosen by a seeded RNG: first each available kind
//! once (each alone), then at random (mixed).
//!
//! Holds: SIGKILLed nodes stay down 1–3 s; a paused leader stays stopped
//! 1.2–3 s (longer than any election timeout); partitions last 2–5 s;
//! a membership change keeps the added node a voter for 1–3 s. Power cuts
//! ([`crate::nemesis_cuts`]) keep the power off 0.2–1 s, the workload held
//! meanwhile; clock faults and the paused holder are in
//! [`crate::nemesis_time`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use runner_storage::client::Client;
use tokio::time::Instant;

use crate::gate::Gate;
use crate::history::{FaultEvent, Micros, Recorder};
use crate::lab::{Block, Lab};

/// Longest the nemesis waits for a leader that a majority of voters follow.
pub const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Longest one status poll of one node may take (a paused node never answers).
const STATUS_TIMEOUT: Duration = Duration::from_millis(400);
/// Deadline of membership calls: adding a learner may send a snapshot.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(40);
/// Most attempts to restore the voter set after a failed membership change.
const RESTORE_ATTEMPTS_MAX: u32 = 5;
/// First node id given to spare nodes; each membership fault takes the next.
const SPARE_ID_FIRST: u64 = 101;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    KillLeader,
    KillRandom,
    PauseLeader,
    IsolateLeader,
    SplitMajority,
    Asymmetric,
    RestartNode,
    Membership,
    PowerCutNode,
    PowerCutAll,
    ClockStepForward,
    ClockStepBack,
    ClockSkew,
    PauseHolder,
}

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::KillLeader,
        FaultKind::KillRandom,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::SplitMajority,
        FaultKind::Asymmetric,
        FaultKind::RestartNode,
        FaultKind::Membership,
        FaultKind::PowerCutNode,
        FaultKind::PowerCutAll,
        FaultKind::ClockStepForward,
        FaultKind::ClockStepBack,
        FaultKind::ClockSkew,
        FaultKind::PauseHolder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillRandom => "kill-random",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::SplitMajority => "split-majority",
            FaultKind::Asymmetric => "asymmetric",
            FaultKind::RestartNode => "restart-node",
            FaultKind::Membership => "membership",
            FaultKind::PowerCutNode => "power-cut-node",
            FaultKind::PowerCutAll => "power-cut-all",
            FaultKind::ClockStepForward => "clock-step-forward",
            FaultKind::ClockStepBack => "clock-step-back",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::PauseHolder => "pause-holder",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    pub fn needs_netns(self) -> bool {
        matches!(self, FaultKind::IsolateLeader | FaultKind::SplitMajority | FaultKind::Asymmetric)
    }

    /// Whether it needs each node's data dir on powerfs.
    pub fn needs_powerfs(self) -> bool {
        matches!(self, FaultKind::PowerCutNode | FaultKind::PowerCutAll)
    }

    /// Whether it needs the nodes under libfaketime.
    pub fn needs_faketime(self) -> bool {
        matches!(self, FaultKind::ClockStepForward | FaultKind::ClockStepBack | FaultKind::ClockSkew)
    }

    /// How often the random phase picks it, relative to the others.
    fn weight(self) -> u32 {
        match self {
            FaultKind::Membership | FaultKind::RestartNode | FaultKind::PauseHolder => 1,
            FaultKind::ClockStepForward | FaultKind::ClockStepBack | FaultKind::ClockSkew => 1,
            _ => 2,
        }
    }
}

pub struct Nemesis {
    pub lab: Arc<Mutex<Lab>>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) admin: Client,
    pub(crate) rng: StdRng,
    pub(crate) voters: BTreeSet<u64>,
    pub(crate) endpoints: Vec<String>,
    /// The workload's gate, closed around power cuts.
    pub(crate) gate: Arc<Gate>,
    /// When the fault being injected really struck, if later than its start
    /// (a power cut strikes after the workload was held).
    pub(crate) struck_us: Option<Micros>,
    /// Faults of each kind injected so far, to name witnesses and observations.
    pub(crate) serial: u64,
    next_spare_id: u64,
    kinds: Vec<FaultKind>,
    pub counts: BTreeMap<String, usize>,
    /// Problems that are violations (no leader after heal, a node that crashed).
    pub problems: Vec<String>,
    /// Notes that are not violations (a membership change refused, …).
    pub notes: Vec<String>,
}

fn lab(lab: &Arc<Mutex<Lab>>) -> std::sync::MutexGuard<'_, Lab> {
    lab.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Nemesis {
    pub fn new(
        shared: Arc<Mutex<Lab>>,
        recorder: Arc<Recorder>,
        seed: u64,
        kinds: Vec<FaultKind>,
        gate: Arc<Gate>,
    ) -> Nemesis {
        let (voters, endpoints): (BTreeSet<u64>, Vec<String>) = {
            let lab = lab(&shared);
            let voters: BTreeSet<u64> = (1..=u64::from(lab.size)).collect();
            let endpoints = voters.iter().map(|id| lab.address(*id)).collect();
            (voters, endpoints)
        };
        let admin = Client::with_deadline(endpoints.clone(), MEMBERSHIP_DEADLINE).expect("admin client");
        Nemesis {
            lab: shared,
            recorder,
            admin,
            rng: <StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 0x006e_656d_6573_6973),
            voters,
            endpoints,
            gate,
            struck_us: None,
            serial: 0,
            next_spare_id: SPARE_ID_FIRST,
            kinds,
            counts: BTreeMap::new(),
            problems: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn fault_count(&self) -> usize {
        self.counts.values().sum()
    }

    /// Injects faults until `until` or `faults_max`, then heals everything.
    pub async fn run(&mut self, until: Instant, faults_max: usize) {
        let mut first_pass: Vec<FaultKind> = self.kinds.clone();
        first_pass.shuffle(&mut self.rng);
        while Instant::now() < until && self.fault_count() < faults_max {
            let kind = match first_pass.pop() {
                Some(kind) => kind,
                None => self.pick(),
            };
            if self.wait_for_leader().await.is_none() {
                self.problems.push(format!("no leader within {LEADER_WAIT:?} before a {} fault", kind.name()));
                break;
            }
            self.serial += 1;
            let start_us = self.recorder.clock.now_us();
            let detail = self.inject(kind).await;
            let start_us = self.struck_us.take().unwrap_or(start_us);
            let heal_us = self.recorder.clock.now_us();
            self.recorder.fault(FaultEvent { kind: kind.name().into(), detail: detail.clone(), start_us, heal_us });
            *self.counts.entry(kind.name().into()).or_default() += 1;
            self.reap_crashed();
            if self.wait_for_leader().await.is_none() {
                self.problems
                    .push(format!("no leader within {LEADER_WAIT:?} after healing {} ({detail})", kind.name()));
                break;
            }
            let gap = Duration::from_millis(self.rng.gen_range(500..1500));
            tokio::time::sleep(gap).await;
        }
        self.heal_all();
    }

    fn pick(&mut self) -> FaultKind {
        let total: u32 = self.kinds.iter().map(|kind| kind.weight()).sum();
        let mut roll = self.rng.gen_range(0..total);
        for kind in &self.kinds {
            if roll < kind.weight() {
                return *kind;
            }
            roll -= kind.weight();
        }
        unreachable!("roll below the total weight")
    }

    pub(crate) fn hold(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(min_ms..=max_ms))
    }

    /// Injects `kind`, holds it, heals it; returns what it did.
    async fn inject(&mut self, kind: FaultKind) -> String {
        let leader = self.wait_for_leader().await.unwrap_or_else(|| *self.voters.first().expect("voters"));
        match kind {
            FaultKind::KillLeader => self.kill_for(leader).await,
            FaultKind::KillRandom => {
                let target = self.random_voter();
                self.kill_for(target).await
            }
            FaultKind::PauseLeader => {
                let hold = self.hold(1200, 3000);
                self.act(|lab| lab.pause(leader));
                tokio::time::sleep(hold).await;
                self.act(|lab| lab.resume(leader));
                format!("SIGSTOP node {leader} (leader) for {hold:?}")
            }
            FaultKind::IsolateLeader => {
                let others: Vec<u64> = self.voters.iter().copied().filter(|id| *id != leader).collect();
                let blocks = self.cut(&[leader], &others);
                let hold = self.hold(2000, 5000);
                self.partition(&blocks, hold).await;
                format!("isolate node {leader} (leader) from {others:?} for {hold:?}")
            }
            FaultKind::SplitMajority => {
                let mut shuffled: Vec<u64> = self.voters.iter().copied().collect();
                shuffled.shuffle(&mut self.rng);
                let minority = shuffled.split_off(shuffled.len() / 2 + 1);
                let blocks = self.cut(&shuffled, &minority);
                let hold = self.hold(2000, 5000);
                self.partition(&blocks, hold).await;
                format!("majority {shuffled:?} | minority {minority:?} (leader was {leader}) for {hold:?}")
            }
            FaultKind::Asymmetric => self.asymmetric(leader).await,
            FaultKind::RestartNode => {
                let target = self.random_voter();
                let clean = self.act(|lab| lab.terminate(target));
                self.act(|lab| lab.spawn(target));
                format!("SIGTERM and restart node {target} (clean exit: {clean})")
            }
            FaultKind::Membership => self.membership().await,
            FaultKind::PowerCutNode => self.power_cut_node(leader).await,
            FaultKind::PowerCutAll => self.power_cut_all().await,
            FaultKind::ClockStepForward => self.clock_step(leader, true).await,
            FaultKind::ClockStepBack => self.clock_step(leader, false).await,
            FaultKind::ClockSkew => self.clock_skew(leader).await,
            FaultKind::PauseHolder => self.pause_holder().await,
        }
    }

    pub(crate) fn random_voter(&mut self) -> u64 {
        let voters: Vec<u64> = self.voters.iter().copied().collect();
        *voters.choose(&mut self.rng).expect("voters")
    }

    pub(crate) async fn kill_for(&mut self, target: u64) -> String {
        let hold = self.hold(1000, 3000);
        self.act(|lab| lab.kill(target));
        tokio::time::sleep(hold).await;
        self.act(|lab| lab.spawn(target));
        format!("SIGKILL node {target}, restarted after {hold:?}")
    }

    /// Blocks every packet between the two sides.
    fn cut(&self, one: &[u64], other: &[u64]) -> Vec<Block> {
        let lab = lab(&self.lab);
        let mut blocks = Vec::new();
        for a in one {
            for b in other {
                let (a, b) = (lab.host_of(*a), lab.host_of(*b));
                blocks.push(Block { from: a, to: b, server_only: false });
                blocks.push(Block { from: b, to: a, server_only: false });
            }
        }
        blocks
    }

    async fn partition(&mut self, blocks: &[Block], hold: Duration) {
        if let Err(error) = self.act(|lab| lab.set_blocks(blocks)) {
            self.problems.push(format!("cannot install partition rules: {error}"));
        }
        tokio::time::sleep(hold).await;
        if let Err(error) = self.act(|lab| lab.heal_network()) {
            self.problems.push(format!("cannot remove partition rules: {error}"));
        }
    }

    /// The leader cannot call the others, or the others cannot call the
    /// leader (per connection direction: answers on open calls still flow).
    async fn asymmetric(&mut self, leader: u64) -> String {
        let leader_calls_out = self.rng.gen_bool(0.5);
        let blocks: Vec<Block> = {
            let lab = lab(&self.lab);
            let leader_host = lab.host_of(leader);
            self.voters
                .iter()
                .filter(|id| **id != leader)
                .map(|id| {
                    let other = lab.host_of(*id);
                    if leader_calls_out {
                        Block { from: leader_host, to: other, server_only: true }
                    } else {
                        Block { from: other, to: leader_host, server_only: true }
                    }
                })
                .collect()
        };
        let hold = self.hold(2000, 5000);
        self.partition(&blocks, hold).await;
        let direction = if leader_calls_out { "cannot call" } else { "cannot be called by" };
        format!("node {leader} (leader) {direction} the others for {hold:?}")
    }

    /// Adds a fresh node as learner then voter, holds, removes it again.
    async fn membership(&mut self) -> String {
        let id = self.next_spare_id;
        self.next_spare_id += 1;
        let address = self.act(|lab| {
            let host = lab.size + 1;
            lab.write_node(id, host, &[]);
            lab.spawn(id);
            lab.address(id)
        });
        let mut with_new: Vec<u64> = self.voters.iter().copied().collect();
        with_new.push(id);
        let added = match self.admin.add_learner(id, &address).await {
            Ok(_) => self.admin.change_membership(with_new.clone(), false).await.map(|_| ()),
            Err(error) => Err(error),
        };
        let detail = match &added {
            Ok(()) => {
                let hold = self.hold(1000, 3000);
                tokio::time::sleep(hold).await;
                format!("node {id} added as learner, voters {with_new:?} for {hold:?}, then removed")
            }
            Err(error) => {
                self.notes.push(format!("membership: adding node {id} failed: {error}"));
                format!("adding node {id} failed ({error}); removed")
            }
        };
        self.restore_voters().await;
        self.act(|lab| lab.discard(id));
        detail
    }

    async fn restore_voters(&mut self) {
        let voters: Vec<u64> = self.voters.iter().copied().collect();
        for attempt in 1..=RESTORE_ATTEMPTS_MAX {
            match self.admin.change_membership(voters.clone(), true).await {
                Ok(_) => return,
                Err(error) if attempt == RESTORE_ATTEMPTS_MAX => {
                    self.problems.push(format!("cannot restore voters {voters:?}: {error}"));
                }
                Err(error) => self.notes.push(format!("restoring voters, attempt {attempt}: {error}")),
            }
        }
    }

    /// Restarts nodes that exited on their own and reports them.
    pub(crate) fn reap_crashed(&mut self) {
        let crashed = self.act(|lab| lab.crashed_nodes());
        for id in crashed {
            self.problems.push(format!("node {id} exited on its own (see its log)"));
            self.act(|lab| lab.spawn(id));
        }
    }

    /// Ends every fault: network healed, paused nodes resumed, voters running.
    pub fn heal_all(&mut self) {
        let voters = self.voters.clone();
        let healed = self.act(|lab| {
            for id in voters {
                lab.resume(id);
                if lab.features.faketime {
                    let _ = lab.set_clock_offset(id, 0);
                }
                if !lab.is_running(id) {
                    lab.spawn(id);
                }
            }
            lab.heal_network()
        });
        self.gate.open();
        if let Err(error) = healed {
            self.problems.push(format!("cannot heal the network: {error}"));
        }
    }

    /// Runs `action` on the lab without stalling the runtime: lab actions
    /// block (processes, iptables, waiting for an exit), and a stalled
    /// worker would stall the clients whose latency is being measured.
    pub(crate) fn act<T>(&self, action: impl FnOnce(&mut Lab) -> T) -> T {
        tokio::task::block_in_place(|| action(&mut lab(&self.lab)))
    }

    /// The node a majority of voters follow, polled until [`LEADER_WAIT`].
    pub async fn wait_for_leader(&self) -> Option<u64> {
        wait_for_leader(&self.lab, &self.admin, &self.voters, LEADER_WAIT).await
    }
}

/// Polls the voters until a majority name the same leader, which says it leads.
pub async fn wait_for_leader(
    shared: &Arc<Mutex<Lab>>,
    client: &Client,
    voters: &BTreeSet<u64>,
    timeout: Duration,
) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    let majority = voters.len() / 2 + 1;
    while Instant::now() < deadline {
        let targets: Vec<(u64, String)> = {
            let lab = lab(shared);
            voters.iter().filter(|id| !lab.nodes[id].paused).map(|id| (*id, lab.address(*id))).collect()
        };
        let mut followers: BTreeMap<u64, usize> = BTreeMap::new();
        let mut leaders = BTreeSet::new();
        for (id, address) in targets {
            if let Ok(Ok(status)) = tokio::time::timeout(STATUS_TIMEOUT, client.status_of(&address)).await {
                if status.leader_id != 0 {
                    *followers.entry(status.leader_id).or_default() += 1;
                }
                if status.role == "leader" {
                    leaders.insert(id);
                }
            }
        }
        if let Some((leader, _)) = followers.iter().find(|(id, count)| **count >= majority && leaders.contains(id)) {
            return Some(*leader);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
