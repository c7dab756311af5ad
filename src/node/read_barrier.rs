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
//! **A leader that restarted** never resumes its term: its log store saves
//! its vote uncommitted before openraft starts (`LogStore::resign_leadership`),
//! so it leads again only after an election, in a new term, whose no-op
//! entry openraft's `ensure_linearizable` waits to apply, and with it the
//! whole log before it. (Before that rule, openraft 0.9 resumed such a node
//! as leader at once with a committed index older than what it had
//! acknowledged, and the chaos checker found a stale read.)

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

/// Coalesced, leased read barriers of one node.
#[derive(Clone)]
pub struct ReadBarrier {
    waiting: Arc<Mutex<Waiting>>,
    lease_duration: Duration,
}

impl ReadBarrier {
    /// Barriers whose rounds grant a lease of `lease_duration`, which must be
    /// well under openraft's leader lease (`election_timeout_max`); zero
    /// turns leases off.
    pub fn new(lease_duration: Duration) -> Self {
        ReadBarrier { waiting: Arc::default(), lease_duration }
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
            let outcome = round(&raft).await;
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

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
