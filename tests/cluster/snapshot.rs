//! Snapshot catch-up: a follower that was down while the leader snapshotted
//! and purged its log comes back through an installed snapshot, and then
//! serves correct data, as half of the majority and finally on its own.

use runner_storage::Encoded;

use crate::common::{
    eventually, TestCluster, Tuning, Workload, CATCH_UP_TIMEOUT, LEADER_TIMEOUT, LOCK_EXPIRATION_LONG_MS,
    PROGRESS_TIMEOUT,
};

/// Iterations each of the 4 writers makes while the follower is down:
/// 4 × 60 × 3 = 720 writes. Concurrent writes may share an entry, so the
/// test asks only for [`ENTRIES_WHILE_DOWN_MIN`] entries of them.
const ITERATIONS_WHILE_DOWN: u64 = 60;

/// Three snapshot intervals of 100: the leader has snapshotted and purged
/// the log past the stopped follower's last entry at least twice.
const ENTRIES_WHILE_DOWN_MIN: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_behind_a_purged_log_catches_up_through_a_snapshot() {
    let tuning = Tuning { snapshot_logs_since_last: 100, logs_kept_after_snapshot: 10, ..Tuning::default() };
    let mut cluster = TestCluster::start_with(3, tuning);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster.client().set_lock_expiration(LOCK_EXPIRATION_LONG_MS).await.unwrap();
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (lagging, other) = (followers[0], followers[1]);
    let workload = Workload::start(cluster.endpoints(), 4, "snapshot");
    workload.wait_for_more(2, PROGRESS_TIMEOUT).await;

    cluster.kill(lagging);
    let applied_at_kill = cluster.leader_applied_index().await;
    workload.wait_for_more(ITERATIONS_WHILE_DOWN, PROGRESS_TIMEOUT).await;
    let leader_log = cluster.log_since(leader, 0);
    assert!(leader_log.contains("built snapshot"), "leader {leader} built no snapshot");

    let log_offset = cluster.log_len(lagging);
    cluster.spawn(lagging);
    workload.wait_for_more(4, PROGRESS_TIMEOUT).await;
    let ledger = workload.finish().await;
    println!("{}", ledger.summary());
    assert!(ledger.errors.is_empty(), "writes failed: {:#?}", ledger.errors);
    let applied = cluster.leader_applied_index().await;
    assert!(
        applied > applied_at_kill + ENTRIES_WHILE_DOWN_MIN,
        "only {} entries while node {lagging} was down",
        applied - applied_at_kill
    );
    cluster.wait_for_applied(lagging, applied, CATCH_UP_TIMEOUT).await;
    let rejoined_log = cluster.log_since(lagging, log_offset);
    assert!(rejoined_log.contains("installed snapshot"), "node {lagging} caught up without installing a snapshot");
    let status = cluster.status(lagging).await.unwrap();
    assert!(status.snapshot_index > applied_at_kill, "Status names the installed snapshot: {status:?}");
    assert!(status.snapshot_bytes > 0, "Status reports the installed snapshot's size: {status:?}");

    // With the leader dead, every write needs the rejoined node's vote.
    cluster.kill(leader);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    ledger.verify(&cluster.client()).await;

    // The rejoined node alone: the only voter, so it leads and answers from
    // the state it rebuilt from the snapshot.
    let membership = cluster.client().change_membership(vec![lagging], true).await.unwrap();
    assert_eq!(membership.voter_ids, vec![lagging]);
    cluster.stop(other);
    let rejoined = &cluster;
    eventually(&format!("node {lagging} leads alone"), LEADER_TIMEOUT, move || async move {
        rejoined.status(lagging).await.is_some_and(|status| status.role == "leader")
    })
    .await;
    let alone = runner_storage::client::Client::new(vec![cluster.address(lagging)]).unwrap();
    ledger.verify(&alone).await;
    assert_eq!(alone.get_runners().await.unwrap().len(), ledger.runners.len());
}
