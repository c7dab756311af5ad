//! `runner-storage-bench compare-etcd` against a real 3-node cluster and a
//! real 3-member etcd cluster (Debian's etcd-server; `scripts/test.sh`
//! installs it): every workload of both sides makes calls without errors,
//! the lock workloads see wins, and both clusters are left as found. And
//! `runner-storage-bench failover` against a real cluster: it kills the
//! leader, sees writes resume, and restarts the node through the cluster
//! script.
//!
//! The nodes are the node's binary, `runner-storage`, which this package
//! does not build: `../tests/common`'s `binary()` finds it in the target dir
//! (`cargo test --workspace` builds it first) or at `RUNNER_STORAGE_BIN`.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use runner_storage::Encoded;

use common::{binary, free_port, TestCluster, LEADER_TIMEOUT};

/// The bench binary under test, built by cargo for this package's tests.
fn bench_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runner-storage-bench"))
}

/// A 3-member etcd cluster on free loopback ports, killed on drop.
struct EtcdCluster {
    _dir: tempfile::TempDir,
    members: Vec<Child>,
    endpoints: Vec<String>,
}

impl EtcdCluster {
    fn start() -> EtcdCluster {
        let etcd_installed = Command::new("etcd").arg("--version").stdout(Stdio::null()).status().is_ok();
        assert!(etcd_installed, "etcd is not installed: scripts/test.sh installs Debian's etcd-server and etcd-client");
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("etcd log file");
                Command::new("etcd")
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}")))
                    .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                    .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args(["--initial-cluster", &initial_cluster, "--initial-cluster-state", "new"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start etcd")
            })
            .collect();
        let endpoints = ports.iter().map(|(client, _)| format!("127.0.0.1:{client}")).collect();
        EtcdCluster { _dir: dir, members, endpoints }
    }

    /// Keys under `prefix`, read with etcdctl.
    fn keys_under(&self, prefix: &str) -> Vec<String> {
        let output = Command::new("etcdctl")
            .args(["--endpoints", &self.endpoints.join(","), "get", "--prefix", prefix, "--keys-only"])
            .output()
            .expect("run etcdctl");
        assert!(output.status.success(), "etcdctl get: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).lines().filter(|line| !line.is_empty()).map(str::to_owned).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// The count of note `name` (such as `acquire.won`) of a run; 0 when absent.
fn note(run: &serde_json::Value, name: &str) -> u64 {
    run["notes"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_etcd_drives_both_clusters_and_cleans_up() {
    let cluster = TestCluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let etcd = EtcdCluster::start();
    let output = tokio::task::spawn_blocking({
        let endpoints = cluster.endpoints().join(",");
        let etcd_endpoints = etcd.endpoints.join(",");
        move || {
            Command::new(bench_binary())
                .args(["compare-etcd", "--endpoints", &endpoints, "--etcd-endpoints", &etcd_endpoints])
                .args(["--concurrency", "4", "--duration", "1s", "--warmup", "200ms", "--runs", "1", "--json"])
                .output()
                .expect("run the bench")
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "runner-storage-bench compare-etcd failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document on stdout");

    let pairs = report["pairs"].as_array().expect("pairs");
    let names: Vec<(&str, &str)> = pairs
        .iter()
        .map(|pair| (pair["ours"]["workload"].as_str().unwrap(), pair["etcd"]["workload"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("register", "etcd-put"), ("acquire", "etcd-lock"), ("get-runners", "etcd-range")],
        "one pair per compared workload"
    );
    for pair in pairs {
        for side in ["ours", "etcd"] {
            let summary = &pair[side];
            assert!(summary["ops_per_s"].as_f64().unwrap() > 0.0, "{side} made no call: {summary}");
            assert_eq!(summary["errors"].as_u64(), Some(0), "{side} had errors: {summary}");
        }
        assert!(pair["ops_ratio"].as_f64().unwrap() > 0.0, "a ratio of two positive rates: {pair}");
    }

    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 6, "one run per side of each pair");
    for run in runs {
        let workload = run["workload"].as_str().unwrap();
        assert_eq!(note(run, "teardown.failed"), 0, "{workload} teardown failed: {run}");
        match workload {
            "acquire" => assert!(note(run, "acquire.won") > 0, "acquire never won: {run}"),
            "etcd-lock" => assert!(note(run, "etcd_lock.won") > 0, "etcd-lock never won: {run}"),
            "get-runners" => assert_eq!(note(run, "get_runners.short"), 0, "{run}"),
            "etcd-range" => assert_eq!(note(run, "etcd_range.short"), 0, "{run}"),
            _ => {}
        }
    }

    assert_eq!(etcd.keys_under("runner-storage-bench/"), Vec::<String>::new(), "the bench leaves no key in etcd");
    let runners = cluster.client().get_runners().await.unwrap();
    assert!(runners.is_empty(), "the bench leaves no runner registered: {runners:?}");
}

/// The cluster script `runner-storage-bench failover` restarts nodes with:
/// `restart N` starts node N from its config in `dir` and writes its pid file, as
/// `scripts/cluster.sh restart` does for a local cluster, and lists the pid
/// in `dir/restarted.pids` for the test to stop.
fn write_restart_script(dir: &std::path::Path, pid_dir: &std::path::Path) -> std::path::PathBuf {
    let script = dir.join("restart.sh");
    let text = format!(
        "#!/bin/sh\nset -e\n[ \"$1\" = restart ] || exit 2\n\
         nohup '{bin}' serve --config '{dir}/node'\"$2\"'.toml' >>'{dir}/node'\"$2\"'.restarted.log' 2>&1 &\n\
         echo $! >'{pids}/node'\"$2\"'.pid'\necho $! >>'{dir}/restarted.pids'\n",
        bin = binary().display(),
        dir = dir.display(),
        pids = pid_dir.display()
    );
    std::fs::write(&script, text).expect("write the restart script");
    let mut permissions = std::fs::metadata(&script).expect("script metadata").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).expect("make the script executable");
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_bench_kills_the_leader_and_sees_writes_resume() {
    let cluster = TestCluster::start(3);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let pid_dir = cluster.dir.path().join("pids");
    std::fs::create_dir_all(&pid_dir).unwrap();
    for node in cluster.nodes.values() {
        std::fs::write(pid_dir.join(format!("node{}.pid", node.id)), node.child.as_ref().unwrap().id().to_string())
            .unwrap();
    }
    let script = write_restart_script(cluster.dir.path(), &pid_dir);
    let output = tokio::task::spawn_blocking({
        let endpoints = cluster.endpoints().join(",");
        let (script, pid_dir) = (script.clone(), pid_dir.clone());
        move || {
            Command::new(bench_binary())
                .args(["failover", "--endpoints", &endpoints, "--rounds", "2", "--settle", "200ms", "--json"])
                .arg("--cluster-script")
                .arg(&script)
                .arg("--pid-dir")
                .arg(&pid_dir)
                .output()
                .expect("run the bench")
        }
    })
    .await
    .unwrap();
    // The restarted nodes are not the harness's children: stop them here.
    let restarted: Vec<u32> = std::fs::read_to_string(cluster.dir.path().join("restarted.pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for pid in &restarted {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "runner-storage-bench failover failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document on stdout");

    assert_eq!(report["rounds_timed_out"].as_u64(), Some(0), "every round saw a write after the kill: {report}");
    assert_eq!(restarted.len(), 2, "each round restarted the node it killed: {report}");
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        assert!(round["first_ack_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{round}");
        assert!(round["caught_up_ms"].as_f64().is_some(), "the restarted node caught up: {round}");
        assert_ne!(round["new_leader"], round["killed_node"], "another node led: {round}");
        let terms: Vec<u64> = round["terms"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        assert!(terms[1] > terms[0], "the election raised the term: {round}");
    }
    assert!(report["writes_acknowledged"].as_u64().unwrap() > 0, "{report}");
}
