//! [`ReadBarrier`]: coalesces linearizable read barriers.
//!
//! openraft's `ensure_linearizable` costs a heartbeat round to a quorum. Under
//! many concurrent reads, one round can serve every read that was waiting
//! when it *started*: a read may only use a barrier that began after the read
//! arrived, so reads that arrive while a round is in flight wait for the next
//! one, which starts as soon as the current one ends (as etcd batches
//! ReadIndex requests). At most one round is in flight per node.

use std::sync::{Arc, Mutex};

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

#[derive(Default)]
struct Waiting {
    round_running: bool,
    readers: Vec<oneshot::Sender<BarrierOutcome>>,
}

/// Coalesced read barriers of one node.
#[derive(Clone, Default)]
pub struct ReadBarrier {
    waiting: Arc<Mutex<Waiting>>,
}

impl ReadBarrier {
    /// Waits for a barrier round that started after this call.
    pub async fn pass(&self, raft: &Raft) -> BarrierOutcome {
        let (sender, receiver) = oneshot::channel();
        let start_round = {
            let mut waiting = self.lock();
            waiting.readers.push(sender);
            !std::mem::replace(&mut waiting.round_running, true)
        };
        if start_round {
            tokio::spawn(self.clone().run_rounds(raft.clone()));
        }
        receiver.await.unwrap_or_else(|_| BarrierOutcome::Failed("the read barrier task stopped".into()))
    }

    /// Runs rounds until nobody waits.
    async fn run_rounds(self, raft: Raft) {
        loop {
            let readers = {
                let mut waiting = self.lock();
                if waiting.readers.is_empty() {
                    waiting.round_running = false;
                    return;
                }
                std::mem::take(&mut waiting.readers)
            };
            let outcome = round(&raft).await;
            for reader in readers {
                let _ = reader.send(outcome.clone());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
