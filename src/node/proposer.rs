//! [`Proposer`]: batches concurrent writes into one Raft entry.
//!
//! openraft 0.9's core waits for each log append to be flushed before it
//! handles the next one (`RaftCore::append_to_log`), so every entry costs one
//! fsync however many clients wait. The proposer turns the writes that queue
//! up meanwhile into a single entry holding many envelopes: one append, one
//! flush, one replication message for all of them. Each envelope keeps its
//! own timestamp and request id and is applied in order, exactly as if it had
//! been an entry of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::limits::{
    PROPOSALS_IN_FLIGHT_MAX, PROPOSAL_BYTES_MAX, PROPOSAL_ENVELOPES_MAX, PROPOSAL_QUEUE_MAX, RAFT_CALL_TIMEOUT,
};
use crate::raft::workarounds::quorum;
use crate::raft::Raft;
use crate::state_machine::{Command, Envelope, Reply};

/// Why a proposal was not applied; shared by every write of the batch.
#[derive(Debug, Clone)]
pub enum Refused {
    /// This node is not the leader; the leader's address when known.
    NotLeader(Option<String>),
    /// Raft could not take or commit the entry; the reason.
    Unavailable(String),
}

struct Pending {
    envelope: Envelope,
    reply: oneshot::Sender<Result<Reply, Refused>>,
}

/// The batching front of `raft.client_write`.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching task for `raft`: a batch still uncommitted when
    /// the leader has heard from no quorum for longer than `quorum_timeout`
    /// is answered `UNAVAILABLE` (`raft::quorum`).
    pub fn start(raft: Raft, quorum_timeout: Duration) -> Self {
        let (queue, pending) = mpsc::channel(PROPOSAL_QUEUE_MAX);
        tokio::spawn(run(raft, pending, quorum_timeout));
        Proposer { queue }
    }

    /// Proposes `envelope` in the next batch and waits for its reply.
    ///
    /// # Errors
    /// [`Refused`] when the batch could not be committed here.
    pub async fn propose(&self, envelope: Envelope) -> Result<Reply, Refused> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Refused::Unavailable("the proposer has stopped".into());
        self.queue.send(Pending { envelope, reply }).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Roughly how many bytes `envelope` takes in the log: its strings, plus framing.
pub fn approximate_bytes(envelope: &Envelope) -> usize {
    const FRAMING_BYTES: usize = 16;
    let strings = envelope.namespace.len()
        + match &envelope.command {
            Command::Register { address, runner, .. } => address.len() + runner.len(),
            Command::Acquire { address, shard_ids } | Command::Refresh { address, shard_ids } => {
                address.len() + shard_ids.iter().map(|id| id.len() + FRAMING_BYTES).sum::<usize>()
            }
            Command::Release { address, shard_id } => address.len() + shard_id.len(),
            Command::Unregister { address }
            | Command::SetRunnerHealth { address, .. }
            | Command::ReleaseAll { address } => address.len(),
            Command::SetLockExpiration { .. } | Command::EnsureLockExpiration { .. } => 0,
            Command::SetClusterId { cluster_id } => cluster_id.len(),
        };
    strings + 4 * FRAMING_BYTES
}

async fn run(raft: Raft, mut queue: mpsc::Receiver<Pending>, quorum_timeout: Duration) {
    let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    while let Some(first) = queue.recv().await {
        let mut bytes = approximate_bytes(&first.envelope);
        let mut batch = vec![first];
        // Take what is already waiting, up to the bounds; the last envelope
        // may pass the byte bound by at most one envelope's size.
        while batch.len() < PROPOSAL_ENVELOPES_MAX && bytes < PROPOSAL_BYTES_MAX {
            let Ok(next) = queue.try_recv() else { break };
            bytes += approximate_bytes(&next.envelope);
            batch.push(next);
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch, quorum_timeout).await;
            drop(permit);
        });
    }
}

async fn propose_batch(raft: &Raft, batch: Vec<Pending>, quorum_timeout: Duration) {
    use openraft::error::{ClientWriteError, RaftError};
    let (envelopes, replies): (Vec<Envelope>, Vec<_>) = batch.into_iter().map(|p| (p.envelope, p.reply)).unzip();
    let written = tokio::select! {
        written = tokio::time::timeout(RAFT_CALL_TIMEOUT, raft.client_write(envelopes.into())) => written,
        lost = quorum::lost(raft, quorum_timeout) => {
            let reason = format!("{}; the write's outcome is unknown", quorum::refusal(lost));
            for reply in replies {
                let _ = reply.send(Err(Refused::Unavailable(reason.clone())));
            }
            return;
        }
    };
    let outcome = match written {
        Ok(Ok(response)) if response.data.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(response.data) {
                let _ = reply.send(Ok(answer));
            }
            return;
        }
        Ok(Ok(response)) => Refused::Unavailable(format!(
            "internal: {} replies for {} writes (the outcome is unknown)",
            response.data.len(),
            replies.len()
        )),
        Err(_) => {
            Refused::Unavailable("the write was not committed in time (no quorum?); its outcome is unknown".into())
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Refused::NotLeader(forward.leader_node.map(|node| node.addr))
        }
        Ok(Err(RaftError::APIError(error))) => Refused::Unavailable(error.to_string()),
        Ok(Err(RaftError::Fatal(fatal))) => Refused::Unavailable(format!("this node has stopped: {fatal}")),
    };
    for reply in replies {
        let _ = reply.send(Err(outcome.clone()));
    }
}
