//! Peers given by DNS name: names are resolved when a node dials a peer
//! and again after a failure, so a node that comes back on another IP (a
//! rescheduled pod) is found again. The names resolve through a hosts file
//! of the test's own, bind-mounted over `/etc/hosts` for the nodes only.

use std::time::Duration;

use runner_storage::Encoded;

use crate::common::{node_name, runner_json, TestCluster, Tuning, CATCH_UP_TIMEOUT, LEADER_TIMEOUT};

/// Whether this process may make mount namespaces (root, `unshare` present).
fn can_bind_hosts() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::process::Command::new("unshare").arg("--version").output().is_ok_and(|out| out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_by_name_are_found_again_on_a_new_address() {
    if !can_bind_hosts() {
        eprintln!("dns: skipped: needs root and unshare (CI runs as root)");
        return;
    }
    let mut cluster = TestCluster::start_with(3, Tuning { peers_by_name: true, ..Tuning::default() });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let status = cluster.status(leader).await.unwrap();
    let names: Vec<&str> = status.members.iter().map(|member| member.address.as_str()).collect();
    assert!(names.iter().all(|address| address.starts_with("node")), "peers are known by name: {names:?}");
    let client = cluster.client();
    client.register("before:1", &runner_json("before", 1), true).await.unwrap();

    // A follower goes away and comes back elsewhere, under the same name.
    let moved = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(moved);
    client.register("meanwhile:1", &runner_json("meanwhile", 1), true).await.unwrap();
    cluster.move_node(moved, "127.0.0.99");
    cluster.spawn(moved);
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_for_applied(moved, applied, CATCH_UP_TIMEOUT).await;
    let seen = cluster.status(moved).await.unwrap();
    assert_eq!(seen.leader_id, leader, "{} at 127.0.0.99 follows the leader again", node_name(moved));
    assert!(cluster.address(moved).starts_with("127.0.0.99:"));

    // Writes still need it: with the leader's other follower gone, it is the quorum.
    let other = (1..=3).find(|id| *id != leader && *id != moved).unwrap();
    cluster.kill(other);
    let client = runner_storage::client::Client::with_deadline(
        vec![cluster.address(leader), cluster.address(moved)],
        Duration::from_secs(10),
    )
    .unwrap();
    client.register("after:1", &runner_json("after", 1), true).await.unwrap();
    assert_eq!(client.get_runners().await.unwrap().len(), 3);
}
