//! Planned leadership hand-over (openraft 0.9 has no leader transfer).
//!
//! The leader picks an up-to-date voter, stops its heartbeats, waits until
//! the target has every entry and the followers' leases (which refuse
//! votes for `election_timeout_max` after the last append) have run out,
//! then asks the target to campaign now (`TimeoutNow` on the Raft service,
//! answered in `raft::transport::server`: the target campaigns only when
//! the request carries the vote it follows).
//! The target's election is an ordinary Raft election: safety needs
//! nothing more. While this runs the node refuses calls (`Node` checks
//! [`Handover::in_progress`]), so that no append renews the leases and the
//! target stays up to date. A hand-over that does not complete in time
//! ends with heartbeats back on; the node leads on, or follows whoever won.
//!
//! What it saves: a restarted leader's followers would first wait out the
//! lease and a random election timeout (270–320 ms with the default
//! settings); here the target campaigns once the lease is over and nobody
//! waits for a timer. Retired by openraft 0.10's `trigger().transfer_leader()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::{ServerState, Vote};

use crate::pb::raft::raft_client::RaftClient;
use crate::raft::transport::codec::{decode_payload, encode_payload};
use crate::raft::{NodeId, Raft};
use crate::transport::pool::ChannelPool;

/// The hand-over a node is running, if any.
#[derive(Debug, Default)]
pub struct Handover {
    /// The node leadership goes to; 0 while none is under way.
    target: AtomicU64,
}

impl Handover {
    /// The node leadership is being handed to, while a hand-over runs.
    pub fn in_progress(&self) -> Option<NodeId> {
        Some(self.target.load(Ordering::Relaxed)).filter(|target| *target != 0)
    }
}

/// Hands leadership from this node (which must lead) to `target`, or to the
/// voter with the most entries when `None`; answers the node that leads
/// afterwards. `lease` is openraft's `election_timeout_max`; the whole
/// procedure gives up after `timeout`.
///
/// # Errors
/// Why leadership did not move: not the leader, no voter to hand to, the
/// target unreachable or not elected in time.
pub async fn hand_over(
    raft: &Raft,
    peers: &ChannelPool,
    handover: &Handover,
    target: Option<NodeId>,
    lease: Duration,
    timeout: Duration,
) -> Result<NodeId, String> {
    let me = raft.metrics().borrow().id;
    let target = choose_target(raft, me, target)?;
    if handover.target.compare_exchange(0, target, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        return Err("a hand-over is already under way".into());
    }
    raft.runtime_config().heartbeat(false);
    let outcome = tokio::time::timeout(timeout, run(raft, peers, me, target, lease)).await;
    raft.runtime_config().heartbeat(true);
    handover.target.store(0, Ordering::SeqCst);
    match outcome {
        Ok(result) => result,
        Err(_) => Err(format!("node {target} did not take over within {timeout:?}")),
    }
}

/// The voter to hand to: `wanted` if it is one, else the one that matched
/// the most of the log (the first in id order among equals).
fn choose_target(raft: &Raft, me: NodeId, wanted: Option<NodeId>) -> Result<NodeId, String> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.state != ServerState::Leader {
        return Err(format!("node {me} is not the leader"));
    }
    let voters: Vec<NodeId> = metrics.membership_config.membership().voter_ids().filter(|id| *id != me).collect();
    let matched = |id: &NodeId| metrics.replication.as_ref().and_then(|r| r.get(id).copied().flatten());
    match wanted {
        Some(id) if voters.contains(&id) => Ok(id),
        Some(id) => Err(format!("node {id} is not a voter other than the leader ({voters:?})")),
        None => {
            let best = voters.iter().max_by_key(|id| (matched(id), std::cmp::Reverse(**id)));
            best.copied().ok_or_else(|| "there is no other voter to hand leadership to".into())
        }
    }
}

async fn run(raft: &Raft, peers: &ChannelPool, me: NodeId, target: NodeId, lease: Duration) -> Result<NodeId, String> {
    wait_until_caught_up(raft, target).await;
    // No append has gone out since heartbeats stopped and calls were
    // refused: once a lease has passed, no follower refuses a vote.
    tokio::time::sleep(lease + lease / 4).await;
    let vote = raft.metrics().borrow().vote;
    ask_to_campaign(raft, peers, target, vote).await?;
    let mut metrics = raft.metrics();
    let moved = metrics.wait_for(|m| m.current_leader.is_some_and(|leader| leader != me)).await;
    let leader = moved.map_err(|_| "Raft stopped".to_owned())?.current_leader;
    leader.ok_or_else(|| "no leader after the hand-over".into())
}

/// Waits until `target` matched every entry this leader has.
async fn wait_until_caught_up(raft: &Raft, target: NodeId) {
    let mut metrics = raft.metrics();
    let caught_up = |m: &openraft::RaftMetrics<NodeId, crate::raft::Node>| {
        let matched = m.replication.as_ref().and_then(|r| r.get(&target).copied().flatten());
        matched.map(|log_id| log_id.index) >= m.last_log_index
    };
    let _ = metrics.wait_for(caught_up).await;
}

/// `TimeoutNow` to `target`, carrying this leader's `vote`.
async fn ask_to_campaign(raft: &Raft, peers: &ChannelPool, target: NodeId, vote: Vote<NodeId>) -> Result<(), String> {
    let address = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let node = metrics.membership_config.membership().get_node(&target).cloned();
        node.map(|node| node.addr).ok_or_else(|| format!("node {target} has no address"))?
    };
    let channel = peers.channel(&address).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(encode_payload(&vote).map_err(|e| e.to_string())?);
    peers.dialer().authorize(&mut request);
    let answer = RaftClient::new(channel).timeout_now(request).await.map_err(|s| format!("node {target}: {s}"))?;
    decode_payload::<Result<(), String>>(&answer.into_inner().data).map_err(|e| e.to_string())?
}
