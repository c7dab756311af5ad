//! Failover: the leader is SIGKILLed while clients write, a follower is
//! stopped and restarted while clients write. No acknowledged write may be
//! lost, and a node that comes back catches up from its own data dir.

use runner_storage::pb::v1 as pb;
use runner_storage::pb::v1::runner_storage_client::RunnerStorageClient;
use runner_storage::Encoded;
use tonic::transport::Channel;

use crate::common::{
    eventually, runner_json, TestCluster, Workload, CATCH_UP_TIMEOUT, LEADER_TIMEOUT, LOCK_EXPIRATION_LONG_MS,
    PROGRESS_TIMEOUT,
};

/// Concurrent clients of each workload.
const WRITERS: u64 = 4;

/// Iterations every writer completes in each phase of a test.
const ITERATIONS_PER_PHASE: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_stream_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3);
    let old_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster.client().set_lock_expiration(LOCK_EXPIRATION_LONG_MS).await.unwrap();
    let workload = Workload::start(cluster.endpoints(), WRITERS, "failover");
    workload.wait_for_more(ITERATIONS_PER_PHASE, PROGRESS_TIMEOUT).await;

    cluster.kill(old_leader);
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, old_leader, "the killed node cannot lead");
    workload.wait_for_more(ITERATIONS_PER_PHASE, PROGRESS_TIMEOUT).await;
    let ledger = workload.finish().await;
    println!("{}", ledger.summary());
    assert!(ledger.errors.is_empty(), "writes failed across the failover: {:#?}", ledger.errors);
    ledger.verify(&cluster.client()).await;

    // The killed node restarts from its data dir and catches up.
    cluster.spawn(old_leader);
    let applied = cluster.leader_applied_index().await;
    cluster.wait_for_applied(old_leader, applied, CATCH_UP_TIMEOUT).await;
    for id in 1..=3 {
        cluster.assert_running(id);
    }
}

/// A follower asked to write right after the leader died still believes in
/// the dead leader; its forward is refused. It holds the call through the
/// election and places it with the new leader, so one attempt, with no retry
/// by the caller, succeeds, and the answer names the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_a_call_through_the_election_after_the_leader_dies() {
    let mut cluster = TestCluster::start(3);
    let old_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = (1..=3).find(|id| *id != old_leader).expect("a follower");
    let uri = format!("http://{}", cluster.address(follower));
    let channel = Channel::from_shared(uri).expect("an endpoint URI").connect().await.expect("connect");
    let mut one_attempt = RunnerStorageClient::new(channel);
    one_attempt.get_runners(pb::GetRunnersRequest::default()).await.expect("forwarded before the kill");

    cluster.kill(old_leader);
    // With a request id the follower may place the call again even when its
    // stale connection to the dead leader breaks mid-call (the fate of the
    // first placement is then unknown), not only when it is refused.
    let request = pb::RegisterRequest {
        address: "held:1".into(),
        runner: runner_json("held", 1),
        healthy: true,
        request_id: Some(pb::RequestId { client_id: "held-client".into(), sequence: 1 }),
        ..Default::default()
    };
    let answer = one_attempt.register(request).await.expect("one attempt through a follower across the failover");
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, old_leader, "the killed node cannot lead");
    let named = answer.metadata().get("x-runner-storage-leader").map(|value| value.to_str().unwrap().to_owned());
    let expected = (new_leader != follower).then(|| cluster.address(new_leader));
    assert_eq!(named, expected, "the held call was placed with the new leader {new_leader} (asked node {follower})");
    let runners = cluster.client().get_runners().await.unwrap();
    assert_eq!(runners, vec![(runner_json("held", 1), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_stopped_mid_stream_restarts_with_everything() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster.client().set_lock_expiration(LOCK_EXPIRATION_LONG_MS).await.unwrap();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let workload = Workload::start(cluster.endpoints(), WRITERS, "follower");
    workload.wait_for_more(ITERATIONS_PER_PHASE, PROGRESS_TIMEOUT).await;

    cluster.stop(follower);
    // The leader's append stream to the follower is a call in flight there:
    // the follower must end it as it stops, not wait out the drain bound.
    let stop_log = cluster.log_since(follower, 0);
    assert!(!stop_log.contains("still in flight after the drain bound"), "the follower's drain waited:\n{stop_log}");
    workload.wait_for_more(ITERATIONS_PER_PHASE, PROGRESS_TIMEOUT).await;
    cluster.spawn(follower);
    workload.wait_for_more(ITERATIONS_PER_PHASE, PROGRESS_TIMEOUT).await;
    let ledger = workload.finish().await;
    println!("{}", ledger.summary());
    assert!(ledger.errors.is_empty(), "writes failed while a follower was down: {:#?}", ledger.errors);
    let applied = cluster.leader_applied_index().await;
    cluster.wait_for_applied(follower, applied, CATCH_UP_TIMEOUT).await;
    ledger.verify(&cluster.client()).await;

    // What the follower applied is on its own disk: stopped again, and
    // restarted alone (no leader to catch up from), it re-applies at least
    // as far from its log.
    let applied_before_stop = cluster.status(follower).await.expect("follower status").applied_index;
    assert!(applied_before_stop >= applied, "follower went back from {applied} to {applied_before_stop}");
    for id in std::iter::once(follower).chain((1..=3).filter(|id| *id != follower)) {
        cluster.stop(id);
    }
    cluster.spawn(follower);
    let what = format!("node {follower}, restarted alone, re-applies up to {applied_before_stop}");
    let running = &cluster;
    eventually(&what, CATCH_UP_TIMEOUT, move || async move {
        running.status(follower).await.is_some_and(|status| status.applied_index >= applied_before_stop)
    })
    .await;
    for id in (1..=3).filter(|id| *id != follower) {
        cluster.spawn(id);
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    ledger.verify(&cluster.client()).await;
}

/// Opens a `GetRunners` call to `address` that never sends its request
/// message: the server waits for it for as long as the connection lives.
/// Returns what keeps the call open.
async fn stuck_call(address: &str) -> impl Sized {
    let tcp = tokio::net::TcpStream::connect(address).await.expect("connect to the node");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("HTTP/2 connection ready");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/runner_storage.v1.RunnerStorage/GetRunners"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let (_response, body) = client.send_request(request, false).expect("the call is sent");
    (client, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_exits_despite_a_stuck_call_and_the_others_take_over() {
    let mut cluster = TestCluster::start(3);
    let old_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let _stuck = stuck_call(&cluster.address(old_leader)).await;
    // Before the drain bound, the stopping leader waited for this call
    // forever: heartbeating, so no one else was elected, and refusing
    // every new call. `stop` fails the test if it is not gone in 10 s.
    let stop = tokio::task::spawn_blocking(move || {
        cluster.stop(old_leader);
        cluster
    });
    let cluster = stop.await.expect("the leader stopped after SIGTERM");
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, old_leader, "another node leads");
    let client = cluster.client();
    let address = "stuck-call:1";
    client.register(address, &runner_json("stuck-call", 1), true).await.expect("a write after the leader stopped");
}

/// A leader whose followers stopped answering (frozen: its connections stay
/// open) cannot commit. Past its quorum timeout it says so at once, without
/// a leader hint, instead of holding the call for the Raft timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_quorum_refuses_calls_saying_why() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let uri = format!("http://{}", cluster.address(leader));
    let channel = Channel::from_shared(uri).expect("an endpoint URI").connect().await.expect("connect");
    let mut one_attempt = RunnerStorageClient::new(channel);
    for id in &followers {
        cluster.pause(*id);
    }
    let request = pb::RegisterRequest {
        address: "cut-off:1".into(),
        runner: runner_json("cut-off", 1),
        healthy: true,
        ..Default::default()
    };
    let refused = one_attempt.register(request).await.expect_err("a leader without a quorum cannot commit");
    let reads = one_attempt.get_runners(pb::GetRunnersRequest::default()).await.expect_err("nor pass a read barrier");
    for id in &followers {
        cluster.resume(*id);
    }
    for status in [refused, reads] {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("heard from no quorum"), "the refusal says why: {}", status.message());
        assert!(status.metadata().get("x-runner-storage-leader").is_none(), "and names no leader: {status:?}");
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster.client().register("after:1", &runner_json("after", 1), true).await.expect("writes again once healed");
}

/// A paused leader (SIGSTOP: connections open, nothing answered) must not
/// hold its callers until their attempt timeout: the client hedges the call
/// to another node, which forwards it to the new leader as soon as one is
/// elected. The call completes while the old leader is still paused, within
/// a deadline shorter than one attempt timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_paused_leader_completes_with_the_new_leader() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let deadline = runner_storage::client::ATTEMPT_TIMEOUT - std::time::Duration::from_secs(1);
    let options = runner_storage::client::ClientOptions { call_deadline: deadline, ..Default::default() };
    let mut endpoints = vec![cluster.address(leader)];
    endpoints.extend((1..=3).filter(|id| *id != leader).map(|id| cluster.address(id)));
    let client = runner_storage::client::Client::with_options(endpoints, options).unwrap();
    client.register("before:1", &runner_json("before", 1), true).await.expect("the leader answers");
    cluster.pause(leader);
    let written = client.register("paused:1", &runner_json("paused", 1), true).await;
    let machine_ids: Vec<i64> = match &written {
        Ok(id) => vec![*id],
        Err(_) => Vec::new(),
    };
    cluster.resume(leader);
    assert!(written.is_ok(), "a call to the paused leader failed within {deadline:?}: {written:?}");
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, leader, "another node was elected while the leader was paused");
    let runners = cluster.client().get_runners().await.unwrap();
    assert_eq!(runners.len(), 2, "both registrations are there once: {runners:?} (machine id {machine_ids:?})");
}
