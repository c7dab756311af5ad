//! [`ReadBarrier`]: linearizable reads on the leader, cheaply.
//!
//! openraft's `ensure_linearizable` costs a heartbeat round to a quorum (and
//! in openraft 0.9 about one heartbeat interval of latency). Two things make
//! reads cheap:
//!
//! - **Coalescing.** One round serves every read that was waiting when it
//!   *started*: a read may only use a round that began after the read arrived,
//!   so reads arriving while a round is in flight wait for the next one (as
//!   etcd batches ReadIndex requests). At most one round is in flight.
//! - **Leader lease.** A round that started at `t` and reached a quorum proves
//!   that a quorum refreshed this leader's lease at or after `t`; openraft's
//!   followers refuse to vote for anyone else until `election_timeout_max`
//!   after that. So until `t + lease` (half of that bound, for clock-rate
//!   slack) no other leader can exist, every write acknowledged anywhere was
//!   acknowledged by this leader after being applied here, and the local
//!   state answers reads linearizably. A read in the second half of the lease
//!   also starts a round in the background, so a steady stream of reads never
//!   waits for one. (Raft dissertation §6.4.1; it assumes clocks advance at
//!   about the same rate on every node, which monotonic clocks do.)
//!
//! **A leader that restarted.** openraft 0.9 restores a node whose saved
//! vote is its own committed vote as leader at once, and keeps the no-op
//! entry it proposed before the restart as its read floor. The committed
//! index it restarts with may be older than what it had acknowledged (the
//! marker is saved without a flush), so `ensure_linearizable` could pass
//! with committed writes not yet re-applied: a stale read (found by the
//! chaos checker: a killed leader restarted 1.2 s later, before the others
//! had elected, and answered `getRunners` without the last refreshes it had
//! acknowledged). So until this process has applied every entry its log
//! held at startup, a round also waits for that: everything a previous
//! incarnation acknowledged is in that log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::raft::Raft;

/// The outcome of one barrier round, shared by every read that waited for it.
#[derive(Debug, Clone)]
pub enum BarrierOutcome {
    /// This node is the leader and has applied everything committed before the round.
    Passed,
    /// This node is not the leader; the leader's address when known.
    NotLeader(Option<String>),
    /// The round failed (no quorum, node stopping): the reason.
    Failed(String),
}

/// A lease won by a round: valid until `until` while the term is `term`.
#[derive(Debug, Clone, Copy)]
struct Lease {
    until: Instant,
    term: u64,
}

#[derive(Default)]
struct Waiting {
    round_running: bool,
    readers: Vec<oneshot::Sender<BarrierOutcome>>,
    lease: Option<Lease>,
}

/// A leadership openraft restored at startup: its term, and the last log
/// index then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredLead {
    /// The term this node led before it restarted, and leads again.
    pub term: u64,
    /// The last index of the log when this process opened it.
    pub last_log_index: u64,
}

/// Coalesced, leased read barriers of one node.
#[derive(Clone)]
pub struct ReadBarrier {
    waiting: Arc<Mutex<Waiting>>,
    lease_duration: Duration,
    /// Reads in this term wait until the startup log is applied (see "A
    /// leader that restarted"); `None` when the node did not restart as leader.
    restored_lead: Option<RestoredLead>,
    /// Set once the startup log of `restored_lead` was applied.
    startup_log_applied: Arc<std::sync::atomic::AtomicBool>,
}

impl ReadBarrier {
    /// Barriers whose rounds grant a lease of `lease_duration`, which must be
    /// well under openraft's leader lease (`election_timeout_max`); zero
    /// turns leases off.
    pub fn new(lease_duration: Duration, restored_lead: Option<RestoredLead>) -> Self {
        ReadBarrier {
            waiting: Arc::default(),
            lease_duration,
            restored_lead,
            startup_log_applied: Arc::new(std::sync::atomic::AtomicBool::new(restored_lead.is_none())),
        }
    }

    /// Passes when a read may be answered from the local state: under a
    /// valid lease at once, else after a round that started after this call.
    pub async fn pass(&self, raft: &Raft) -> BarrierOutcome {
        let term = current_leader_term(raft);
        let (sender, receiver) = oneshot::channel();
        let start_round = {
            let mut waiting = self.lock();
            let now = Instant::now();
            let lease = waiting.lease.filter(|lease| Some(lease.term) == term && now < lease.until);
            if let Some(lease) = lease {
                let renew = lease.until - now < self.lease_duration / 2 && !waiting.round_running;
                if renew {
                    waiting.round_running = true;
                    drop(waiting);
                    tokio::spawn(self.clone().run_rounds(raft.clone()));
                }
                return BarrierOutcome::Passed;
            }
            waiting.readers.push(sender);
            !std::mem::replace(&mut waiting.round_running, true)
        };
        if start_round {
            tokio::spawn(self.clone().run_rounds(raft.clone()));
        }
        receiver.await.unwrap_or_else(|_| BarrierOutcome::Failed("the read barrier task stopped".into()))
    }

    /// Runs rounds until nobody waits (at least one).
    async fn run_rounds(self, raft: Raft) {
        loop {
            let readers = std::mem::take(&mut self.lock().readers);
            let started = Instant::now();
            let term = current_leader_term(&raft);
            let mut outcome = round(&raft).await;
            if matches!(outcome, BarrierOutcome::Passed) {
                outcome = self.startup_log_applied(&raft, term).await;
            }
            {
                let mut waiting = self.lock();
                waiting.lease = match (&outcome, term) {
                    (BarrierOutcome::Passed, Some(term)) => Some(Lease { until: started + self.lease_duration, term }),
                    _ => None,
                };
            }
            for reader in readers {
                let _ = reader.send(outcome.clone());
            }
            let mut waiting = self.lock();
            if waiting.readers.is_empty() {
                waiting.round_running = false;
                return;
            }
        }
    }

    /// Passes when leading in the restored term once this process has
    /// applied its whole startup log; at once in any other term (openraft's
    /// fresh no-op then follows the whole log) or after the first time.
    async fn startup_log_applied(&self, raft: &Raft, leader_term: Option<u64>) -> BarrierOutcome {
        use std::sync::atomic::Ordering;
        let Some(restored) = self.restored_lead else { return BarrierOutcome::Passed };
        if self.startup_log_applied.load(Ordering::Acquire) || leader_term != Some(restored.term) {
            return BarrierOutcome::Passed;
        }
        let index = restored.last_log_index;
        let waited = raft.wait(Some(STARTUP_APPLY_WAIT_MAX)).applied_index_at_least(Some(index), "startup log").await;
        match waited {
            Ok(_) => {
                self.startup_log_applied.store(true, Ordering::Release);
                BarrierOutcome::Passed
            }
            Err(error) => BarrierOutcome::Failed(format!(
                "this node restarted and has not yet applied its log up to index {index}: {error}"
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Longest one round waits for the startup log to be applied; the read
/// then fails `UNAVAILABLE` and the client retries.
const STARTUP_APPLY_WAIT_MAX: Duration = Duration::from_secs(2);

/// The current term when this node believes it leads.
fn current_leader_term(raft: &Raft) -> Option<u64> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    (metrics.state == openraft::ServerState::Leader).then_some(metrics.current_term)
}

async fn round(raft: &Raft) -> BarrierOutcome {
    use openraft::error::{CheckIsLeaderError, RaftError};
    match raft.ensure_linearizable().await {
        Ok(_) => BarrierOutcome::Passed,
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
            BarrierOutcome::NotLeader(forward.leader_node.map(|node| node.addr))
        }
        Err(RaftError::APIError(error)) => BarrierOutcome::Failed(error.to_string()),
        Err(RaftError::Fatal(fatal)) => BarrierOutcome::Failed(format!("this node has stopped: {fatal}")),
    }
}
