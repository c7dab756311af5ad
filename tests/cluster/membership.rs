//! Membership changes under load: a fourth node joins as a learner, becomes
//! a voter, then the leader is removed and stopped, while clients keep
//! writing. No write may fail and none may be lost.

use crate::common::{
    TestCluster, Workload, CATCH_UP_TIMEOUT, LEADER_TIMEOUT, LOCK_EXPIRATION_LONG_MS, PROGRESS_TIMEOUT,
};

/// Iterations every writer completes between two membership steps.
const ITERATIONS_PER_STEP: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_while_clients_write() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let admin = cluster.client();
    admin.set_lock_expiration(LOCK_EXPIRATION_LONG_MS).await.unwrap();
    let workload = Workload::start(cluster.endpoints(), 4, "membership");
    workload.wait_for_more(ITERATIONS_PER_STEP, PROGRESS_TIMEOUT).await;

    let joining = cluster.spawn_joining_node();
    let membership = admin.add_learner(joining, &cluster.address(joining)).await.unwrap();
    assert_eq!((membership.voter_ids, membership.learner_ids), (vec![1, 2, 3], vec![joining]));
    workload.wait_for_more(ITERATIONS_PER_STEP, PROGRESS_TIMEOUT).await;

    let membership = admin.change_membership(vec![1, 2, 3, joining], false).await.unwrap();
    assert_eq!((membership.voter_ids, membership.learner_ids), (vec![1, 2, 3, joining], vec![]));
    workload.wait_for_more(ITERATIONS_PER_STEP, PROGRESS_TIMEOUT).await;

    // Remove an original node, the leader when it is one: the leader steps
    // down and the others elect a new one.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let removed = if leader == joining { 1 } else { leader };
    let remaining: Vec<u64> = [1, 2, 3, joining].into_iter().filter(|id| *id != removed).collect();
    let membership = admin.change_membership(remaining.clone(), true).await.unwrap();
    assert_eq!((membership.voter_ids, membership.learner_ids), (remaining.clone(), vec![]));
    cluster.stop(removed);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert!(remaining.contains(&leader), "node {leader} leads but is not a member");
    workload.wait_for_more(ITERATIONS_PER_STEP, PROGRESS_TIMEOUT).await;

    let ledger = workload.finish().await;
    println!("{}", ledger.summary());
    assert!(ledger.errors.is_empty(), "writes failed during membership changes: {:#?}", ledger.errors);
    ledger.verify(&cluster.client()).await;
    let applied = cluster.leader_applied_index().await;
    cluster.wait_for_applied(joining, applied, CATCH_UP_TIMEOUT).await;
    let status = cluster.status(joining).await.expect("status of the new node");
    let voters: Vec<u64> = status.members.iter().filter(|member| member.voter).map(|member| member.node_id).collect();
    assert_eq!(voters, remaining, "members as node {joining} sees them");
    assert_eq!(status.members.len(), remaining.len(), "the removed node is still a member: {:?}", status.members);
}
