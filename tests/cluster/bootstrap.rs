//! A new cluster's first start: its first leader keeps its place, and the
//! cluster forms even when its lowest-id peer is not there.

use runner_storage::Encoded;

use crate::common::{eventually, runner_json, TestCluster, Tuning, CATCH_UP_TIMEOUT, LEADER_TIMEOUT};

const NODES: u64 = 3;

/// Fresh clusters started in [`the_first_leader_of_a_new_cluster_is_never_deposed`]:
/// before the fix about one start in three deposed its first leader.
const FRESH_STARTS: u16 = 3;

/// `(leader, term)` of each "leader changed" line of a node's log, `None`
/// for a line that names no leader.
fn leader_changes(log: &str) -> Vec<Option<(u64, u64)>> {
    let field = |line: &str, name: &str| -> Option<String> {
        let start = line.find(name)? + name.len();
        Some(line[start..].split([' ', ')']).next()?.to_owned())
    };
    log.lines()
        .filter(|line| line.contains("leader changed"))
        .map(|line| {
            let leader = field(line, "leader=Some(")?.parse().ok()?;
            let term = field(line, "term=")?.parse().ok()?;
            Some((leader, term))
        })
        .collect()
}

/// Every node of a new cluster follows one leader in one term from the
/// moment it learns of it: no node campaigns against a leader that is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_leader_of_a_new_cluster_is_never_deposed() {
    for round in 1..=FRESH_STARTS {
        let cluster = TestCluster::start(NODES);
        cluster.wait_for_leader(LEADER_TIMEOUT).await;
        let client = cluster.client();
        client.register(&format!("bootstrap:{round}"), &runner_json("bootstrap", round), true).await.expect("call");
        let applied = cluster.leader_applied_index().await;
        for id in 1..=NODES {
            cluster.wait_for_applied(id, applied, CATCH_UP_TIMEOUT).await;
        }
        let mut leads = Vec::new();
        for id in 1..=NODES {
            // The line is written by a task of its own, maybe a moment after the apply.
            let logged = || async { leader_changes(&cluster.log_since(id, 0)).iter().any(Option::is_some) };
            eventually(&format!("node {id} logs its leader"), LEADER_TIMEOUT, logged).await;
            let changes = leader_changes(&cluster.log_since(id, 0));
            let first_lead = changes.iter().position(Option::is_some).expect("the node logged its leader");
            let after = &changes[first_lead..];
            assert!(
                after.iter().all(|change| *change == after[0]),
                "round {round}: node {id} saw its first leader replaced: {changes:?}; logs in {}",
                cluster.dir.path().display()
            );
            leads.push(after[0]);
        }
        assert!(leads.iter().all(|lead| *lead == leads[0]), "round {round}: nodes disagree: {leads:?}");
    }
}

/// Nodes 2 and 3 of a new cluster whose node 1 is down initialise it
/// themselves after the bootstrap deferral; node 1 joins later as a
/// follower and does not disturb the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_forms_without_its_lowest_peer() {
    let mut cluster = TestCluster::configure(NODES, Tuning::default());
    cluster.spawn(2);
    cluster.spawn(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(leader, 1);
    let client = cluster.client();
    client.register("bootstrap:1", &runner_json("bootstrap", 1), true).await.expect("call");
    let term = cluster.status(leader).await.expect("leader status").term;
    cluster.spawn(1);
    let applied = cluster.leader_applied_index().await;
    cluster.wait_for_applied(1, applied, CATCH_UP_TIMEOUT).await;
    let status = cluster.status(1).await.expect("node 1 status");
    assert_eq!((status.leader_id, status.term), (leader, term), "node 1 follows the leader it found");
    assert!(
        (2..=NODES).any(|id| cluster.log_since(id, 0).contains("initialising the cluster here")),
        "node 2 or 3 initialised the cluster after waiting for node 1"
    );
}
