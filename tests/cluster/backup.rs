//! Backup, restore and disaster recovery through the real command line:
//! `ctl backup`, `restore`, `recover --single-voter`, `ctl members add`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use runner_storage::client::Client;
use runner_storage::pb::admin::{ListLocksResponse, ListRunnersResponse};
use runner_storage::Encoded;

use crate::common::{binary, runner_json, TestCluster, Tuning, CATCH_UP_TIMEOUT, LEADER_TIMEOUT};

const RUNNERS: usize = 10_000;
const LOCKS: usize = 30_000;
const SHARDS_PER_CALL: usize = 10;
const FILLERS: usize = 32;
const E_MS: u64 = 10 * 60 * 1000;

/// Runs `runner-storage ARGS`; panics with its output unless it succeeds.
fn cli(args: &[&str]) -> String {
    let output = Command::new(binary()).args(args).output().expect("run runner-storage");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "runner-storage {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

/// Runs `runner-storage ARGS`; its exit status and everything it printed.
fn cli_fails(args: &[&str]) -> String {
    let output = Command::new(binary()).args(args).output().expect("run runner-storage");
    assert!(!output.status.success(), "runner-storage {args:?} succeeded");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Registers `RUNNERS` runners, and `LOCKS` locks among them, in the default
/// namespace and a few in namespace "other".
async fn fill(cluster: &TestCluster) {
    let client = std::sync::Arc::new(cluster.client());
    client.set_lock_expiration(E_MS).await.unwrap();
    let mut tasks = Vec::new();
    for filler in 0..FILLERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for runner in (filler..RUNNERS).step_by(FILLERS) {
                let host = format!("r{runner}");
                client.register(&format!("{host}:1"), &runner_json(&host, 1), runner % 7 != 0).await.unwrap();
                if runner < LOCKS / SHARDS_PER_CALL {
                    let first = runner * SHARDS_PER_CALL;
                    let shards: Vec<String> = (first..first + SHARDS_PER_CALL).map(|id| format!("g:{id}")).collect();
                    assert_eq!(client.acquire(&format!("{host}:1"), &shards).await.unwrap().len(), SHARDS_PER_CALL);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let other = cluster.client_in("other");
    other.set_lock_expiration(20_000).await.unwrap();
    other.register("o:1", &runner_json("o", 1), true).await.unwrap();
}

/// The runner and lock tables without their ages (time passes between two reads).
async fn tables(client: &Client) -> (ListRunnersResponse, ListLocksResponse) {
    let mut runners = client.list_runners().await.unwrap();
    runners.runners.iter_mut().for_each(|runner| runner.heartbeat_age_ms = 0);
    let mut locks = client.list_locks("", "").await.unwrap();
    locks.locks.iter_mut().for_each(|lock| lock.age_ms = 0);
    (runners, locks)
}

fn restore(cluster: &TestCluster, file: &Path) {
    for id in 1..=3 {
        let config = cluster.config_path(id);
        cli(&["restore", "--from", file.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_on_a_new_cluster_holds_exactly_the_backed_up_state() {
    let mut old = TestCluster::start(3);
    old.wait_for_leader(LEADER_TIMEOUT).await;
    fill(&old).await;
    let before = tables(&old.client()).await;
    assert_eq!((before.0.runners.len(), before.1.locks.len()), (RUNNERS, LOCKS));
    let namespaces_before = old.client().list_namespaces().await.unwrap();
    let file = old.dir.path().join("cluster.backup");
    let endpoints = old.endpoints().join(",");
    let summary = cli(&["ctl", "--endpoints", &endpoints, "backup", file.to_str().unwrap(), "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["namespaces"][0]["runners"], RUNNERS, "{summary}");
    assert_eq!(summary["namespaces"][0]["locks"], LOCKS, "{summary}");
    assert!(summary["index"].as_u64().unwrap() > 0 && summary["term"].as_u64().unwrap() >= 1, "{summary}");
    let old_id = old.status(1).await.unwrap().cluster_id;
    for id in 1..=3 {
        old.kill(id);
    }

    let mut new = TestCluster::configure(3, Tuning::default());
    restore(&new, &file);
    for id in 1..=3 {
        new.spawn(id);
    }
    new.wait_for_leader(LEADER_TIMEOUT).await;
    let after = tables(&new.client()).await;
    assert_eq!(after, before, "the restored cluster holds the backed-up runners (machine ids too) and locks");
    assert_eq!(new.client().list_namespaces().await.unwrap(), namespaces_before, "and namespaces with their E");
    let new_id = new.status(1).await.unwrap().cluster_id;
    assert!(!new_id.is_empty() && new_id != old_id, "a new cluster identity: {new_id} vs {old_id}");
    let held = new.client().refresh("r0:1", &["g:0".to_owned()]).await.unwrap();
    assert_eq!(held, ["g:0"], "a lock of the backup is still its holder's");
    let again =
        cli_fails(&["restore", "--from", file.to_str().unwrap(), "--config", new.config_path(1).to_str().unwrap()]);
    assert!(again.contains("is not empty"), "a used data dir is refused: {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_old_cluster_is_refused_by_the_restored_one() {
    let mut cluster = TestCluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client();
    client.register("kept:1", &runner_json("kept", 1), true).await.unwrap();
    let file = cluster.dir.path().join("cluster.backup");
    cli(&["ctl", "--endpoints", &cluster.endpoints().join(","), "backup", file.to_str().unwrap()]);
    // Restore in place on nodes 1 and 2; node 3 keeps its old data dir.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=2 {
        std::fs::remove_dir_all(cluster.data_dir(id)).unwrap();
        let config = cluster.config_path(id);
        cli(&["restore", "--from", file.to_str().unwrap(), "--config", config.to_str().unwrap()]);
        cluster.spawn(id);
    }
    let old_log = cluster.log_len(3);
    cluster.spawn(3);
    let leader = cluster.wait_for_leader_among(&[1, 2], LEADER_TIMEOUT).await;
    assert!(leader == 1 || leader == 2, "a restored node leads, not the old one: {leader}");
    assert_eq!(cluster.client().get_runners().await.unwrap().len(), 1, "the restored cluster serves");
    let what = "the old node refuses the restored cluster's traffic, naming both clusters";
    crate::common::eventually(what, CATCH_UP_TIMEOUT, || async {
        cluster.log_since(3, old_log).contains("refused Raft traffic from another cluster")
    })
    .await;
    let (ours, theirs) = (cluster.status(1).await.unwrap(), cluster.status(3).await.unwrap());
    assert_ne!(ours.cluster_id, theirs.cluster_id);
    assert!(theirs.applied_index < ours.applied_index || theirs.leader_id != ours.leader_id, "it never merged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_recovers_as_a_single_voter_and_grows_back_to_three() {
    let mut cluster = TestCluster::start(3);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client();
    client.set_lock_expiration(E_MS).await.unwrap();
    for runner in 0..50 {
        let host = format!("s{runner}");
        client.register(&format!("{host}:1"), &runner_json(&host, 1), true).await.unwrap();
    }
    client.acquire("s0:1", &["g:1".to_owned(), "g:2".to_owned()]).await.unwrap();
    let before = tables(&client).await;
    // Two nodes are lost for good; the third is stopped once it has applied
    // all the leader applied (a follower may lag: what it never received is
    // not what recovery can keep).
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    let applied = cluster.status(leader).await.unwrap().applied_index;
    cluster.wait_for_applied(survivor, applied, CATCH_UP_TIMEOUT).await;
    for id in 1..=3 {
        cluster.kill(id);
        if id != survivor {
            std::fs::remove_dir_all(cluster.data_dir(id)).unwrap();
        }
    }
    let config = cluster.config_path(survivor);
    let recovered = cli(&["recover", "--config", config.to_str().unwrap(), "--single-voter"]);
    assert!(recovered.contains("single voter"), "{recovered}");
    cluster.spawn(survivor);
    let alone = Client::new(vec![cluster.address(survivor)]).unwrap();
    crate::common::eventually("the survivor leads alone", LEADER_TIMEOUT, || async {
        alone.status_of(&cluster.address(survivor)).await.is_ok_and(|status| status.role == "leader")
    })
    .await;
    assert_eq!(tables(&alone).await, before, "the committed state survived");
    alone.register("after:1", &runner_json("after", 1), true).await.unwrap();

    let (four, five) = (cluster.spawn_joining_node(), cluster.spawn_joining_node());
    for id in [four, five] {
        alone.add_learner(id, &cluster.address(id)).await.unwrap();
    }
    let voters = alone.change_membership(vec![survivor, four, five], true).await.unwrap();
    assert_eq!(voters.voter_ids.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([survivor, four, five]));
    let applied = cluster.status(survivor).await.unwrap().applied_index;
    for id in [four, five] {
        cluster.wait_for_applied(id, applied, CATCH_UP_TIMEOUT).await;
    }
    let grown = Client::new(vec![cluster.address(four)]).unwrap();
    assert_eq!(grown.get_runners().await.unwrap().len(), 51, "every node serves the recovered state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_or_backup_of_another_format_is_refused_naming_both_versions() {
    let mut cluster = TestCluster::configure(1, Tuning::default());
    std::fs::create_dir_all(cluster.data_dir(1)).unwrap();
    std::fs::write(cluster.data_dir(1).join("FORMAT"), "runner-storage data format 99\n").unwrap();
    cluster.spawn(1);
    let exited = cluster.wait_for_exit(1).await;
    assert!(!exited.success());
    let log = cluster.log_since(1, 0);
    assert!(log.contains("format 99") && log.contains("reads (2)"), "the node names both versions:\n{log}");

    let mut backup = runner_storage::backup::Backup {
        last_applied: None,
        membership: Default::default(),
        state: Default::default(),
        taken_at_ms: 0,
    }
    .to_bytes()
    .unwrap();
    backup[8..12].copy_from_slice(&99u32.to_le_bytes());
    let file = cluster.dir.path().join("future.backup");
    std::fs::write(&file, backup).unwrap();
    std::fs::remove_dir_all(cluster.data_dir(1)).unwrap();
    let refused =
        cli_fails(&["restore", "--from", file.to_str().unwrap(), "--config", cluster.config_path(1).to_str().unwrap()]);
    assert!(refused.contains("format 99") && refused.contains("format 1"), "{refused}");
}
