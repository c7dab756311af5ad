//! A restarted leader never resumes the term it led.
//!
//! openraft 0.9 resumes a node whose saved vote is its own committed vote
//! as leader of that term at once, from its log as it is on disk. But early
//! replication sends entries before they are flushed there, so a leader
//! that crashed may have lost entries its followers hold: resuming the
//! term, it would write other entries under the same log ids, and a
//! follower that holds the old ones would keep them as the same (Log
//! Matching broken; what it applies differs from what the leader
//! acknowledged). Elected in a new term instead, every log id it writes is
//! new, and no follower that holds entries it lacks votes for it.
//!
//! Retired by: an openraft that starts every node as a follower (or lets
//! the log store veto resuming leadership), or by dropping early
//! replication.

use openraft::storage::RaftLogStorage;
use openraft::{StorageError, Vote};

use crate::raft::storage::log_store::LogStore;
use crate::raft::NodeId;

/// Whether `vote` is `node`'s own committed vote: `node` leads under it
/// (and openraft 0.9 would resume leading under it after a restart).
pub fn is_leader_vote(vote: &Vote<NodeId>, node: NodeId) -> bool {
    vote.is_committed() && vote.leader_id().voted_for() == Some(node)
}

/// Saves a vote that made `node_id` leader back as a plain vote for itself
/// (durably), so openraft starts the node as a follower; returns that term,
/// or `None` when the saved vote is anything else. Call it before openraft
/// opens the log. The vote keeps its term and candidate, so the node grants
/// no vote it would not have granted with the committed one.
///
/// # Errors
/// When the vote cannot be read or saved.
pub async fn resign_leadership(log: &mut LogStore, node_id: NodeId) -> Result<Option<u64>, StorageError<NodeId>> {
    let Some(vote) = log.read_vote().await? else { return Ok(None) };
    if !is_leader_vote(&vote, node_id) {
        return Ok(None);
    }
    let term = vote.leader_id().get_term();
    log.save_vote(&Vote::new(term, node_id)).await?;
    Ok(Some(term))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::storage::data_dir::{DataDir, Durability};

    /// A saved vote that made this node leader is saved back uncommitted
    /// (openraft then starts it as a follower); any other vote is kept.
    #[tokio::test]
    async fn a_restarting_leader_resigns_its_term_and_others_keep_their_vote() {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(temp.path(), 1 << 20, Durability::Synced).unwrap();
        let mut log = LogStore::open(&data_dir).unwrap();
        assert_eq!(resign_leadership(&mut log, 1).await.unwrap(), None, "no vote saved");
        for kept in [Vote::new(3, 1), Vote::new_committed(3, 2), Vote::new(3, 2)] {
            log.save_vote(&kept).await.unwrap();
            assert_eq!(resign_leadership(&mut log, 1).await.unwrap(), None, "{kept}");
            assert_eq!(LogStore::open(&data_dir).unwrap().read_vote().await.unwrap(), Some(kept), "{kept}");
        }
        log.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        assert_eq!(resign_leadership(&mut log, 1).await.unwrap(), Some(4));
        let mut reopened = LogStore::open(&data_dir).unwrap();
        assert_eq!(reopened.read_vote().await.unwrap(), Some(Vote::new(4, 1)), "saved uncommitted");
    }
}
