//! Malformed input over the wire (SPEC §6): every case is refused with
//! `INVALID_ARGUMENT` and a message naming the field, by a follower and by
//! the leader alike; nothing is applied and every node keeps serving.

use runner_storage::limits::{LOCK_EXPIRATION_MS_MAX, RUNNER_JSON_BYTES_MAX, SHARD_IDS_PER_CALL_MAX};
use runner_storage::pb::v1 as pb;
use runner_storage::pb::v1::admin_client::AdminClient;
use runner_storage::pb::v1::runner_storage_client::RunnerStorageClient;
use runner_storage::Encoded;
use tonic::transport::Channel;

use crate::common::{runner_json, TestCluster, LEADER_TIMEOUT};

/// One call of the client API with its raw arguments.
#[derive(Debug, Clone)]
enum Call {
    Register { address: String, runner: String, request_id: Option<pb::RequestId> },
    Unregister(String),
    SetRunnerHealth(String),
    Acquire(String, Vec<String>),
    Refresh(String, Vec<String>),
    Release(String, String),
    ReleaseAll(String),
    SetLockExpiration(u64),
}

async fn send(channel: Channel, call: Call) -> Result<(), tonic::Status> {
    let mut client = RunnerStorageClient::new(channel.clone());
    match call {
        Call::Register { address, runner, request_id } => client
            .register(pb::RegisterRequest { address, runner, healthy: true, request_id, ..Default::default() })
            .await
            .map(drop),
        Call::Unregister(address) => {
            client.unregister(pb::UnregisterRequest { address, request_id: None, ..Default::default() }).await.map(drop)
        }
        Call::SetRunnerHealth(address) => {
            let request =
                pb::SetRunnerHealthRequest { address, healthy: false, request_id: None, ..Default::default() };
            client.set_runner_health(request).await.map(drop)
        }
        Call::Acquire(address, shard_ids) => client
            .acquire(pb::AcquireRequest { address, shard_ids, request_id: None, ..Default::default() })
            .await
            .map(drop),
        Call::Refresh(address, shard_ids) => client
            .refresh(pb::RefreshRequest { address, shard_ids, request_id: None, ..Default::default() })
            .await
            .map(drop),
        Call::Release(address, shard_id) => client
            .release(pb::ReleaseRequest { address, shard_id, request_id: None, ..Default::default() })
            .await
            .map(drop),
        Call::ReleaseAll(address) => client
            .release_all(pb::ReleaseAllRequest { address, request_id: None, ..Default::default() })
            .await
            .map(drop),
        Call::SetLockExpiration(lock_expiration_ms) => AdminClient::new(channel)
            .set_lock_expiration(pb::SetLockExpirationRequest { lock_expiration_ms, ..Default::default() })
            .await
            .map(drop),
    }
}

/// Sends `call` to the node at `endpoint`; it must be refused with
/// `INVALID_ARGUMENT` and a message that contains `field`.
async fn check(endpoint: &str, call: Call, field: &str) {
    let uri = format!("http://{endpoint}");
    let channel = Channel::from_shared(uri).expect("an endpoint URI").connect().await.expect("connect");
    let status = send(channel, call.clone()).await.expect_err(&format!("{call:?} was accepted by {endpoint}"));
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{call:?} at {endpoint}: {status:?}");
    assert!(status.message().contains(field), "{call:?} at {endpoint}: {:?} does not name {field}", status.message());
}

/// Every call that takes an address, with a valid rest and `address` in it.
fn calls_with_address(address: &str) -> Vec<Call> {
    let address = address.to_owned();
    let shard = vec!["g:1".to_owned()];
    vec![
        Call::Register { address: address.clone(), runner: runner_json("h", 1), request_id: None },
        Call::Unregister(address.clone()),
        Call::SetRunnerHealth(address.clone()),
        Call::Acquire(address.clone(), shard.clone()),
        Call::Refresh(address.clone(), shard),
        Call::Release(address.clone(), "g:1".into()),
        Call::ReleaseAll(address),
    ]
}

/// Every call that takes shard ids, with `shard_id` among otherwise valid ones.
fn calls_with_shard_id(shard_id: &str) -> Vec<Call> {
    let shard_ids = vec!["g:2".to_owned(), shard_id.to_owned()];
    vec![
        Call::Acquire("h:1".into(), shard_ids.clone()),
        Call::Refresh("h:1".into(), shard_ids),
        Call::Release("h:1".into(), shard_id.to_owned()),
    ]
}

fn register(runner: String) -> Call {
    Call::Register { address: "h:1".into(), runner, request_id: None }
}

/// Every INVALID_ARGUMENT case of SPEC §6, with the field its message must name.
fn cases() -> Vec<(Call, &'static str)> {
    let mut cases = Vec::new();
    let long_address = format!("{}:1", "h".repeat(300));
    for address in ["", long_address.as_str(), "no-port", ":1", "h:65536", "h:-1", "h:x"] {
        cases.extend(calls_with_address(address).into_iter().map(|call| (call, "address")));
    }
    let long_shard_id = format!("{}:1", "g".repeat(300));
    for shard_id in ["", long_shard_id.as_str(), "g", "g:x", "g:1.5"] {
        cases.extend(calls_with_shard_id(shard_id).into_iter().map(|call| (call, "shard_id")));
    }
    let big_runner = format!(
        r#"{{"address":{{"host":"h","port":1}},"groups":["{}"],"weight":1}}"#,
        "g".repeat(RUNNER_JSON_BYTES_MAX)
    );
    cases.extend([
        (register("not json".into()), "runner"),
        (register("[1]".into()), "runner"),
        (register(r#""h:1""#.into()), "runner"),
        (register(r#"{"groups":[],"weight":1}"#.into()), "runner"),
        (register(runner_json("h", 2)), "runner"),
        (register(runner_json("other", 1)), "runner"),
        (register(big_runner), "runner"),
    ]);
    let too_many: Vec<String> = (0..=SHARD_IDS_PER_CALL_MAX).map(|id| format!("g:{id}")).collect();
    let empty_client_id = Some(pb::RequestId { client_id: String::new(), sequence: 1 });
    cases.extend([
        (Call::Acquire("h:1".into(), vec![]), "shard_ids"),
        (Call::Acquire("h:1".into(), too_many.clone()), "shard_ids"),
        (Call::Refresh("h:1".into(), too_many), "shard_ids"),
        (
            Call::Register { address: "h:1".into(), runner: runner_json("h", 1), request_id: empty_client_id },
            "client_id",
        ),
        (Call::SetLockExpiration(0), "lock_expiration_ms"),
        (Call::SetLockExpiration(LOCK_EXPIRATION_MS_MAX + 1), "lock_expiration_ms"),
    ]);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_by_every_node_and_changes_nothing() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let client = cluster.client();
    assert_eq!(client.register("h:1", &runner_json("h", 1), true).await.unwrap(), 1);
    assert_eq!(client.acquire("h:1", &["g:1".into()]).await.unwrap(), ["g:1"]);
    let runners_before = client.get_runners().await.unwrap();
    let status_before = cluster.status(leader).await.expect("leader status");

    let cases = cases();
    for id in [follower, leader] {
        let endpoint = cluster.address(id);
        for (call, field) in cases.clone() {
            check(&endpoint, call, field).await;
        }
    }

    // Nothing was proposed: the log grew by at most the one blank entry a
    // newly elected leader writes per term (none at all while the leader and
    // term stay, as they do unless the machine is starved).
    let leader_after = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let status_after = cluster.status(leader_after).await.expect("leader status");
    let entries_added = status_after.applied_index - status_before.applied_index;
    let elections = status_after.term - status_before.term;
    assert!(entries_added <= elections, "{entries_added} entries applied in {elections} new terms: {status_after:?}");
    assert_eq!(status_after.lock_expiration_ms, status_before.lock_expiration_ms);
    for id in 1..=3 {
        cluster.assert_running(id);
    }
    assert_eq!(client.get_runners().await.unwrap(), runners_before);
    // g:2 came first in refused acquires: it must still be free; g:1 still h:1's.
    assert_eq!(client.acquire("probe:1", &["g:1".into(), "g:2".into()]).await.unwrap(), ["g:2"]);
    assert_eq!(client.refresh("h:1", &["g:1".into()]).await.unwrap(), ["g:1"]);
}

/// A namespace longer than 255 bytes or holding a control character is
/// refused, naming the namespace, by reads, writes and admin calls alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_namespace_is_refused_naming_it() {
    let cluster = TestCluster::start(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let uri = format!("http://{}", cluster.address(1));
    let channel = Channel::from_shared(uri).expect("an endpoint URI").connect().await.expect("connect");
    let mut client = RunnerStorageClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    for namespace in ["n".repeat(256), "with\nnewline".to_owned()] {
        let refusals = [
            client.get_runners(pb::GetRunnersRequest { namespace: namespace.clone() }).await.map(drop),
            client
                .register(pb::RegisterRequest {
                    address: "h:1".into(),
                    runner: runner_json("h", 1),
                    namespace: namespace.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            admin
                .ensure_lock_expiration(pb::EnsureLockExpirationRequest {
                    lock_expiration_ms: 35_000,
                    namespace: namespace.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
            admin.status(pb::StatusRequest { namespace: namespace.clone() }).await.map(drop),
        ];
        for refused in refusals {
            let status = refused.expect_err("a malformed namespace was accepted");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("namespace"), "{:?} names the namespace", status.message());
        }
    }
    let namespaces = admin.list_namespaces(pb::ListNamespacesRequest {}).await.unwrap().into_inner().namespaces;
    assert!(namespaces.is_empty(), "nothing was created: {namespaces:?}");
}
