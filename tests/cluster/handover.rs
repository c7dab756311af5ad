//! Planned leadership hand-over: `ctl transfer-leader` and a leader told to
//! stop (SIGTERM) hand leadership to an up-to-date voter, in one election
//! (the term goes up by one), with no write lost.

use runner_storage::Encoded;

use crate::common::{runner_json, TestCluster, Workload, LEADER_TIMEOUT, PROGRESS_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_to_the_node_asked_for() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let term = cluster.status(leader).await.unwrap().term;
    let client = cluster.client();
    client.register("before:1", &runner_json("before", 1), true).await.unwrap();
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let (new_leader, new_term) = client.transfer_leader(Some(target)).await.unwrap();
    assert_eq!(new_leader, target, "leadership went to the node asked for");
    assert_eq!(new_term, term + 1, "in one election");
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await, target);
    client.register("after:1", &runner_json("after", 1), true).await.unwrap();
    assert_eq!(client.get_runners().await.unwrap().len(), 2);
    // Any up-to-date voter when none is named; a non-voter is refused.
    let (next, _) = client.transfer_leader(None).await.unwrap();
    assert_ne!(next, target);
    let refused = client.transfer_leader(Some(42)).await.unwrap_err().to_string();
    assert!(refused.contains("not a voter"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_told_to_stop_hands_over_first_and_no_write_is_lost() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let term = cluster.status(leader).await.unwrap().term;
    let workload = Workload::start(cluster.endpoints(), 4, "handover");
    workload.wait_for_more(8, PROGRESS_TIMEOUT).await;
    let log_offset = cluster.log_len(leader);
    cluster.stop(leader);
    let stopping_log = cluster.log_since(leader, log_offset);
    assert!(stopping_log.contains("stopping: leadership handed over"), "the leader handed over:\n{stopping_log}");
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, leader);
    assert_eq!(cluster.status(new_leader).await.unwrap().term, term + 1, "one election, no split vote");
    workload.wait_for_more(8, PROGRESS_TIMEOUT).await;
    let ledger = workload.finish().await;
    assert!(ledger.errors.is_empty(), "writes failed across the hand-over: {:#?}", ledger.errors);
    ledger.verify(&cluster.client()).await;
    cluster.spawn(leader);
}
