//! Whether a leader still hears from a quorum of its voters.
//!
//! openraft 0.9 keeps a leader leading while it is cut off from every
//! follower: it cannot commit, and its callers wait out their timeouts.
//! Followers grant no vote for a lease (`election_timeout_max`) after the
//! last append they acknowledged, and campaign an election timeout later,
//! so once a leader's last quorum acknowledgement is older than
//! `election_timeout_max + election_timeout_min` (the *quorum timeout*),
//! another leader may be elected at any moment. From then on this node
//! refuses calls at once (`UNAVAILABLE`, no leader hint) instead of holding
//! them, and callers move to the nodes that can elect a leader. (Not
//! sooner: under load an acknowledgement can be late while the followers
//! still follow.) It does not give up its term:
//! a term change would depose the new leader again when the partition heals
//! (openraft 0.9 has no step-down without one, and no pre-vote).

use std::time::Duration;

use crate::raft::{Node, NodeId, Raft};

/// How long since this node, as leader, last heard from a quorum, when that
/// is longer than `quorum_timeout`; `None` while it hears from one (or does
/// not lead). openraft dates an acknowledgement by when its request was sent.
pub fn lost_for(metrics: &openraft::RaftMetrics<NodeId, Node>, quorum_timeout: Duration) -> Option<Duration> {
    if metrics.state != openraft::ServerState::Leader {
        return None;
    }
    let since_ack = Duration::from_millis(metrics.millis_since_quorum_ack?);
    (since_ack > quorum_timeout).then_some(since_ack)
}

/// Completes once this node leads without a quorum for longer than
/// `quorum_timeout` (see [`lost_for`]), with how long. openraft refreshes
/// the figure at least every tick; this polls it a few times per timeout.
pub async fn lost(raft: &Raft, quorum_timeout: Duration) -> Duration {
    let poll = (quorum_timeout / 4).max(Duration::from_millis(10));
    loop {
        if let Some(lost) = lost_for(&raft.metrics().borrow(), quorum_timeout) {
            return lost;
        }
        tokio::time::sleep(poll).await;
    }
}

/// The message of a call refused because the leader lost its quorum.
pub fn refusal(lost: Duration) -> String {
    format!(
        "this leader has heard from no quorum for {} ms (partitioned?): it cannot commit; try another node",
        lost.as_millis()
    )
}
