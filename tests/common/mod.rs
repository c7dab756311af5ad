//! Process-cluster harness: real `runner-storage` node processes (the built
//! binary), each with its own sled data dir in a temp dir, on free loopback
//! ports, talking real gRPC. `Drop` kills every child.
//!
//! Include with `#[path = "../common/mod.rs"] mod common;` (or
//! `mod common;` from a top-level test file).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use runner_storage::client::Client;
use tokio::time::Instant;

/// Raft tuning written into every node's config.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub snapshot_logs_since_last: u64,
    pub logs_kept_after_snapshot: u64,
    pub initial_lock_expiration_ms: Option<u64>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { snapshot_logs_since_last: 10_000, logs_kept_after_snapshot: 1_000, initial_lock_expiration_ms: None }
    }
}

/// One node process and its files.
pub struct NodeProcess {
    pub id: u64,
    pub address: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
}

/// A cluster of node processes.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProcess>,
    pub tuning: Tuning,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runner-storage"))
}

impl TestCluster {
    /// Starts `size` nodes that bootstrap one cluster together.
    pub fn start(size: u64) -> TestCluster {
        Self::start_with(size, Tuning::default())
    }

    pub fn start_with(size: u64, tuning: Tuning) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = TestCluster { dir, nodes: BTreeMap::new(), tuning };
        let peers: Vec<(u64, String)> = (1..=size).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        for (id, address) in &peers {
            cluster.write_node(*id, address, &peers);
        }
        for id in 1..=size {
            cluster.spawn(id);
        }
        cluster
    }

    fn write_node(&mut self, id: u64, address: &str, peers: &[(u64, String)]) {
        let config_path = self.dir.path().join(format!("node{id}.toml"));
        let data_dir = self.dir.path().join(format!("node{id}"));
        let mut text = format!("node_id = {id}\nlisten = \"{address}\"\ndata_dir = \"{}\"\n", data_dir.display());
        if let Some(expiration) = self.tuning.initial_lock_expiration_ms {
            text += &format!("initial_lock_expiration_ms = {expiration}\n");
        }
        for (peer_id, peer_address) in peers {
            text += &format!("[[peers]]\nid = {peer_id}\naddress = \"{peer_address}\"\n");
        }
        text += &format!(
            "[raft]\nsnapshot_logs_since_last = {}\nlogs_kept_after_snapshot = {}\n",
            self.tuning.snapshot_logs_since_last, self.tuning.logs_kept_after_snapshot
        );
        std::fs::write(&config_path, text).expect("write node config");
        let log_path = self.dir.path().join(format!("node{id}.log"));
        self.nodes.insert(id, NodeProcess { id, address: address.to_owned(), config_path, log_path, child: None });
    }

    /// Starts (or restarts) node `id` from its config and data dir.
    pub fn spawn(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path).expect("open node log");
        let child = Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_LOG", std::env::var("NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn runner-storage node");
        node.child = Some(child);
    }

    /// Adds a node that joins with no peers (to be added as a learner). Returns its id.
    pub fn spawn_joining_node(&mut self) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        let address = format!("127.0.0.1:{}", free_port());
        self.write_node(id, &address, &[]);
        self.spawn(id);
        id
    }

    /// SIGKILL: no clean shutdown, as in a crash.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|node| node.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit (SIGKILL after 10 s).
    pub fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|node| node.child.take()) {
            signal(&child, "TERM");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "node {id} exited with {status} after SIGTERM");
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("node {id} did not stop within 10 s of SIGTERM");
        }
    }

    pub fn address(&self, id: u64) -> String {
        self.nodes[&id].address.clone()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|node| node.address.clone()).collect()
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes.values().filter(|node| node.child.is_some()).map(|node| node.id).collect()
    }

    pub fn client(&self) -> Client {
        Client::new(self.endpoints()).expect("client")
    }

    /// Polls the running nodes until one says it leads and every running
    /// voter agrees; returns the leader's id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            let mut leader = None;
            let mut agreed = true;
            for id in self.running_ids() {
                match client.status_of(&self.address(id)).await {
                    Ok(status) if status.role == "leader" => leader = Some(status.node_id),
                    Ok(status) if status.role == "learner" => {}
                    Ok(status) => agreed &= status.leader_id != 0,
                    Err(_) => agreed = false,
                }
            }
            if let (Some(leader), true) = (leader, agreed) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within {timeout:?}; logs in {}", self.dir.path().display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until node `id` has applied at least `index`.
    pub async fn wait_for_applied(&self, id: u64, index: u64, timeout: Duration) {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(status) = client.status_of(&self.address(id)).await {
                if status.applied_index >= index {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node {id} did not apply {index} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The applied index of the leader.
    pub async fn leader_applied_index(&self) -> u64 {
        let leader = self.wait_for_leader(Duration::from_secs(20)).await;
        self.client().status_of(&self.address(leader)).await.expect("leader status").applied_index
    }

}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            // Keep data dirs and logs of a failed run for inspection.
            self.dir.disable_cleanup(true);
            eprintln!("cluster files kept in {}", self.dir.path().display());
            for node in self.nodes.values() {
                if let Ok(log) = std::fs::read_to_string(&node.log_path) {
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    eprintln!("--- node {} log (last lines) ---", node.id);
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
