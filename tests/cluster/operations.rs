//! What operators use: `ctl status`/`runners`/`locks`, the Prometheus
//! metrics endpoint, and gRPC health.

use std::process::Command;
use std::time::Duration;

use runner_storage::Encoded;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::{binary, eventually, runner_json, sample, scrape, TestCluster, Tuning, LEADER_TIMEOUT};

fn ctl(cluster: &TestCluster, args: &[&str]) -> String {
    let output = Command::new(binary())
        .arg("ctl")
        .arg("--endpoints")
        .arg(cluster.endpoints().join(","))
        .args(args)
        .output()
        .expect("run ctl");
    assert!(output.status.success(), "ctl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_status_shows_one_leader_and_followers_in_step() {
    let cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client();
    client.register("h:1", &runner_json("h", 1), true).await.unwrap();
    client.acquire("h:1", &["default:7".into(), "other:2".into()]).await.unwrap();

    // Followers apply right after the leader: poll until every applied index agrees.
    let mut rows = Vec::new();
    eventually("applied indexes agree", Duration::from_secs(10), || {
        rows = serde_json::from_str::<Vec<serde_json::Value>>(&ctl(&cluster, &["status", "--json"])).unwrap();
        let applied: Vec<u64> = rows.iter().map(|row| row["applied_index"].as_u64().unwrap()).collect();
        let agree = applied.windows(2).all(|pair| pair[0] == pair[1]);
        async move { agree }
    })
    .await;
    let roles: Vec<&str> = rows.iter().map(|row| row["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|role| **role == "leader").count(), 1, "{rows:?}");
    assert_eq!(roles.iter().filter(|role| **role == "follower").count(), 2, "{rows:?}");
    assert!(rows.iter().all(|row| row["leader_id"].as_u64() == Some(leader)), "{rows:?}");
    let table = ctl(&cluster, &["status"]);
    assert!(table.contains("leader") && table.contains("follower"), "{table}");

    let runners: Vec<serde_json::Value> = serde_json::from_str(&ctl(&cluster, &["runners", "--json"])).unwrap();
    assert_eq!(runners.len(), 1);
    assert_eq!(runners[0]["address"], "h:1");
    assert_eq!(runners[0]["machine_id"], 1);
    assert_eq!(runners[0]["live"], true);
    let locks: Vec<serde_json::Value> =
        serde_json::from_str(&ctl(&cluster, &["locks", "--group", "default", "--json"])).unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0]["shard_id"], "default:7");
    assert_eq!(locks[0]["address"], "h:1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_counters_move() {
    let cluster = TestCluster::start_with(3, Tuning { metrics: true, ..Tuning::default() });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let metrics_address = cluster.nodes[&leader].metrics_address.clone().unwrap();
    let client = runner_storage::client::Client::new(vec![cluster.address(leader)]).unwrap();

    let before = scrape(&metrics_address);
    assert_eq!(sample(&before, "runner_storage_raft_role", None), Some(1.0), "the leader reports role 1");
    let registers_before = sample(&before, "runner_storage_calls_total", Some(("call", "register"))).unwrap_or(0.0);
    for port in 1..=3 {
        client.register(&format!("h:{port}"), &runner_json("h", port), true).await.unwrap();
    }
    client.acquire("h:1", &["default:1".into()]).await.unwrap();
    let _ = client.acquire("", &["default:1".into()]).await; // an INVALID_ARGUMENT

    let after = scrape(&metrics_address);
    let registers_after = sample(&after, "runner_storage_calls_total", Some(("call", "register"))).unwrap();
    assert_eq!(registers_after - registers_before, 3.0, "{after}");
    assert_eq!(sample(&after, "runner_storage_live_runners", None), Some(3.0));
    assert_eq!(sample(&after, "runner_storage_held_locks", None), Some(1.0));
    // One client, four writes that reached the log (the invalid one did not).
    assert_eq!(sample(&after, "runner_storage_dedup_clients", None), Some(1.0), "{after}");
    assert_eq!(sample(&after, "runner_storage_dedup_answers", None), Some(4.0), "{after}");
    assert!(sample(&after, "runner_storage_dedup_bytes", None).unwrap() > 0.0);
    assert!(sample(&after, "runner_storage_errors_total", Some(("code", "InvalidArgument"))).unwrap() >= 1.0);
    assert!(sample(&after, "runner_storage_raft_applied_index", None).unwrap() > 0.0);
    assert!(after.contains("runner_storage_call_seconds_bucket"), "latency histograms are exported");
    let resident = sample(&after, "runner_storage_resident_memory_bytes", None).unwrap();
    assert!(resident > 1024.0 * 1024.0, "a node's RSS is more than 1 MiB, got {resident}");
    let status = cluster.status(leader).await.unwrap();
    assert!(status.resident_memory_bytes > 1024 * 1024, "Status reports the RSS too: {status:?}");
    assert!(status.disk_bytes > 0, "Status reports the data dir size: {status:?}");
    // Every node serves its own metrics.
    for node in cluster.nodes.values() {
        let body = scrape(node.metrics_address.as_ref().unwrap());
        assert!(sample(&body, "runner_storage_raft_term", None).unwrap() >= 1.0);
    }
}

async fn health(address: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok()?.connect().await.ok()?;
    let request = HealthCheckRequest { service: "runner_storage.v1.RunnerStorage".into() };
    let status = HealthClient::new(channel).check(request).await.ok()?.into_inner().status;
    ServingStatus::try_from(status).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_only_while_a_leader_is_reachable() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    for id in 1..=3 {
        let address = cluster.address(id);
        eventually("serving", Duration::from_secs(10), || {
            let address = address.clone();
            async move { health(&address).await == Some(ServingStatus::Serving) }
        })
        .await;
    }
    // Without a quorum, the survivor cannot reach a leader.
    cluster.kill(1);
    cluster.kill(2);
    let survivor = cluster.address(3);
    eventually("not serving without quorum", Duration::from_secs(20), || {
        let survivor = survivor.clone();
        async move { health(&survivor).await == Some(ServingStatus::NotServing) }
    })
    .await;
}
