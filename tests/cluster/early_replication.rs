//! Early replication (`raft::early_replication`): the leader sends new
//! entries to its followers while its own flush runs and answers openraft's
//! later appends from the followers' answers. These tests check that it is
//! in use, that a follower that missed early appends (it was down) is
//! caught up the usual way and then taken early again, and that no
//! acknowledged write is lost on the way.

use std::time::Duration;

use crate::common::{eventually, sample, scrape, TestCluster, Tuning, Workload, LEADER_TIMEOUT, PROGRESS_TIMEOUT};

/// How long the leader's count of early-answered appends may take to move.
const EARLY_TIMEOUT: Duration = Duration::from_secs(20);

fn early_answered(cluster: &TestCluster, id: u64) -> f64 {
    let address = cluster.nodes[&id].metrics_address.as_ref().expect("metrics on");
    sample(&scrape(address), "runner_storage_early_answered_appends", None).expect("the metric is exported")
}

/// Waits until the leader has answered more appends early than `than`.
async fn wait_for_early_answers(cluster: &TestCluster, leader: u64, than: f64, what: &str) -> f64 {
    let mut seen = than;
    eventually(what, EARLY_TIMEOUT, || {
        seen = early_answered(cluster, leader);
        let moved = seen > than;
        async move { moved }
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_from_down_is_caught_up_and_replicated_early_again() {
    let mut cluster = TestCluster::start_with(3, Tuning { metrics: true, ..Tuning::default() });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (returning, other) = (followers[0], followers[1]);
    let workload = Workload::start(cluster.endpoints(), 4, "early");
    workload.wait_for_more(2, PROGRESS_TIMEOUT).await;
    wait_for_early_answers(&cluster, leader, 0.0, "the leader answers appends early").await;

    // Down: the leader's early appends to it fail; writes go on with the other.
    cluster.kill(returning);
    workload.wait_for_more(20, PROGRESS_TIMEOUT).await;
    cluster.spawn(returning);
    workload.wait_for_more(4, PROGRESS_TIMEOUT).await;

    // With the other follower gone, every commit needs the returning one:
    // its early appends are answered again once it has caught up.
    cluster.kill(other);
    workload.wait_for_more(10, PROGRESS_TIMEOUT).await;
    let before = early_answered(&cluster, leader);
    wait_for_early_answers(&cluster, leader, before, "appends to the returning follower are answered early").await;

    let ledger = workload.finish().await;
    println!("{}", ledger.summary());
    assert!(ledger.errors.is_empty(), "writes failed: {:#?}", ledger.errors);
    ledger.verify(&cluster.client()).await;
    // And the returning follower holds them itself: as the only other node
    // of a new leader's majority, after the old leader is gone too.
    cluster.spawn(other);
    cluster.kill(leader);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    ledger.verify(&cluster.client()).await;
}
