//! Full restarts: every node stopped cleanly (SIGTERM) or killed (SIGKILL)
//! at once, then started again from its data dir. The state comes back
//! exactly: runners with their machine ids and health, locks, `E`. And a
//! leader killed and restarted at once leads again only in a new term.

use runner_storage::Encoded;

use crate::common::{
    eventually, runner_json, TestCluster, Workload, CATCH_UP_TIMEOUT, LEADER_TIMEOUT, LOCK_EXPIRATION_LONG_MS,
    PROGRESS_TIMEOUT,
};

const NODES: u64 = 3;

fn address(port: u16) -> String {
    format!("restart:{port}")
}

fn shards(ids: &[u32]) -> Vec<String> {
    ids.iter().map(|id| format!("restart:{id}")).collect()
}

/// Writes a state with holes in it, so that a state rebuilt from nothing
/// could not pass for it: machine ids 1, 3, 5 (2 and 4 unregistered), one
/// unhealthy runner, locks held by two runners, one lock released.
async fn write_known_state(client: &runner_storage::client::Client) -> Vec<(String, bool)> {
    client.set_lock_expiration(LOCK_EXPIRATION_LONG_MS).await.expect("call");
    for port in 1..=5u16 {
        let machine_id = client.register(&address(port), &runner_json("restart", port), true).await.expect("call");
        assert_eq!(machine_id, i64::from(port));
    }
    client.unregister(&address(2)).await.expect("call");
    client.unregister(&address(4)).await.expect("call");
    client.set_runner_health(&address(3), false).await.expect("call");
    assert_eq!(client.acquire(&address(1), &shards(&[1, 2])).await.expect("call"), shards(&[1, 2]));
    assert_eq!(client.acquire(&address(3), &shards(&[3])).await.expect("call"), shards(&[3]));
    assert_eq!(client.acquire(&address(5), &shards(&[5])).await.expect("call"), shards(&[5]));
    client.release(&address(5), "restart:5").await.expect("call");
    let expected =
        vec![(runner_json("restart", 1), true), (runner_json("restart", 3), false), (runner_json("restart", 5), true)];
    assert_eq!(client.get_runners().await.expect("call"), expected);
    expected
}

/// Checks the state [`write_known_state`] wrote, on a restarted cluster
/// (other runners and locks may have been added since).
async fn check_known_state(cluster: &TestCluster, expected: &[(String, bool)]) {
    for id in 1..=NODES {
        let status = cluster.status(id).await.expect("status");
        assert_eq!(status.lock_expiration_ms, LOCK_EXPIRATION_LONG_MS, "E on node {id}");
    }
    let client = cluster.client();
    let known = r#"{"address":{"host":"restart","#;
    let present: Vec<(String, bool)> =
        client.get_runners().await.expect("call").into_iter().filter(|(runner, _)| runner.starts_with(known)).collect();
    assert_eq!(present, expected);
    // An address already present keeps its machine id.
    assert_eq!(client.register(&address(1), &runner_json("restart", 1), true).await.expect("call"), 1);
    assert_eq!(client.register(&address(3), &runner_json("restart", 3), false).await.expect("call"), 3);
    assert_eq!(client.register(&address(5), &runner_json("restart", 5), true).await.expect("call"), 5);
    // Locks are still their holders', and held against anyone else; the released one is free.
    assert_eq!(client.refresh(&address(1), &shards(&[1, 2, 3])).await.expect("call"), shards(&[1, 2]));
    assert_eq!(client.refresh(&address(3), &shards(&[3])).await.expect("call"), shards(&[3]));
    assert_eq!(client.acquire("restart-probe:1", &shards(&[1, 2, 3, 5])).await.expect("call"), shards(&[5]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_stopped_and_started_keeps_the_state() {
    let mut cluster = TestCluster::start(NODES);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let expected = write_known_state(&cluster.client()).await;
    let applied = cluster.leader_applied_index().await;

    for id in 1..=NODES {
        cluster.stop(id);
    }
    for id in 1..=NODES {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    for id in 1..=NODES {
        cluster.wait_for_applied(id, applied, CATCH_UP_TIMEOUT).await;
    }
    check_known_state(&cluster, &expected).await;
    // A new address gets the smallest machine id no runner holds.
    let client = cluster.client();
    assert_eq!(client.register(&address(6), &runner_json("restart", 6), true).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_killed_mid_stream_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(NODES);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let expected = write_known_state(&cluster.client()).await;
    let workload = Workload::start(cluster.endpoints(), 4, "crash");
    workload.wait_for_more(8, PROGRESS_TIMEOUT).await;

    for id in 1..=NODES {
        cluster.kill(id);
    }
    for id in 1..=NODES {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    workload.wait_for_more(8, PROGRESS_TIMEOUT).await;
    let ledger = workload.finish().await;
    // Calls in flight at the crash may fail (outcome unknown); every
    // acknowledged one must be there.
    println!("{}", ledger.summary());
    ledger.verify(&cluster.client()).await;
    check_known_state(&cluster, &expected).await;
}

/// Early replication lets followers hold entries a leader had not flushed
/// when it was killed; resuming its term after a quick restart (openraft
/// 0.9 would: the node is back well within an election timeout), it would
/// write other entries under their log ids. It must start as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_and_restarted_at_once_leads_again_only_in_a_new_term() {
    let mut cluster = TestCluster::start(NODES);
    let old_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let old_term = cluster.status(old_leader).await.expect("leader status").term;
    let workload = Workload::start(cluster.endpoints(), 4, "relead");
    workload.wait_for_more(8, PROGRESS_TIMEOUT).await;

    cluster.kill(old_leader);
    cluster.spawn(old_leader);
    let restarted = &cluster;
    let what = format!("node {old_leader} serves again after its restart");
    eventually(&what, LEADER_TIMEOUT, move || async move { restarted.status(old_leader).await.is_some() }).await;
    let first = cluster.status(old_leader).await.expect("status of the restarted node");
    assert!(
        first.role != "leader" || first.term > old_term,
        "node {old_leader} resumed term {old_term} it led: {} in term {}",
        first.role,
        first.term
    );
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let term = cluster.status(leader).await.expect("leader status").term;
    assert!(term > old_term, "node {leader} leads term {term}, not after {old_term}");
    workload.wait_for_more(8, PROGRESS_TIMEOUT).await;
    let ledger = workload.finish().await;
    println!("{}", ledger.summary());
    ledger.verify(&cluster.client()).await;
    let applied = cluster.leader_applied_index().await;
    for id in 1..=NODES {
        cluster.wait_for_applied(id, applied, CATCH_UP_TIMEOUT).await;
    }
}
