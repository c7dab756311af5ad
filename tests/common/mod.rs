//! Process-cluster harness: real `runner-storage` node processes (the built
//! binary), each with its own sled data dir in a temp dir, on free loopback
//! ports, talking real gRPC. `Drop` kills every child.
//!
//! Include with `#[path = "../common/mod.rs"] mod common;` (or
//! `mod common;` from a top-level test file).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runner_storage::client::Client;
use runner_storage::pb::v1::StatusResponse;
use runner_storage::Encoded;
use tokio::time::Instant;

/// Raft tuning written into every node's config.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub snapshot_logs_since_last: u64,
    pub logs_kept_after_snapshot: u64,
    pub initial_lock_expiration_ms: Option<u64>,
    /// Bearer token every node requires (and the harness's client sends).
    pub auth_token: Option<String>,
    /// Serve Prometheus metrics on a free port per node (`NodeProcess::metrics_address`).
    pub metrics: bool,
    /// TLS: a `scripts/gen-certs.sh` directory with `ca.pem` and `node{id}.pem`/`node{id}-key.pem`.
    pub tls_dir: Option<PathBuf>,
    /// Run every node under libfaketime (Debian's `faketime`), its wall
    /// clock offset by [`TestCluster::set_clock_offset`]; the monotonic
    /// clock stays real. Nothing in the product fakes clocks.
    pub fake_clocks: bool,
    /// Name peers by DNS: node `id` listens on `127.0.0.{10+id}` and its
    /// peers know it as `node{id}.runner-storage.test`, resolved through a
    /// hosts file of the cluster's own, bind-mounted over `/etc/hosts` in
    /// each node's mount namespace (needs root and `unshare`). See
    /// [`TestCluster::move_node`].
    pub peers_by_name: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            snapshot_logs_since_last: 10_000,
            logs_kept_after_snapshot: 1_000,
            initial_lock_expiration_ms: None,
            auth_token: None,
            metrics: false,
            tls_dir: None,
            fake_clocks: false,
            peers_by_name: false,
        }
    }
}

/// One node process and its files.
pub struct NodeProcess {
    pub id: u64,
    pub address: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    /// `host:port` of the node's metrics endpoint, when `Tuning::metrics`.
    pub metrics_address: Option<String>,
}

/// A cluster of node processes.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeProcess>,
    pub tuning: Tuning,
}

/// Ports [`free_port`] tries before giving up.
const FREE_PORT_ATTEMPTS_MAX: usize = 1_000;

/// A loopback port nobody listens on right now, and never handed out before
/// in this test process: the OS may give the same ephemeral port to two
/// binds in a row once the first listener is dropped, and two nodes of one
/// cluster (or of two tests running at once) configured on one port make
/// one of them fail to start, or a node replicate to itself.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    for _ in 0..FREE_PORT_ATTEMPTS_MAX {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        if HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(port) {
            return port;
        }
    }
    panic!("no new loopback port in {FREE_PORT_ATTEMPTS_MAX} binds");
}

/// The node binary. For the root package's tests, the one cargo built for
/// them. Cargo names it only to tests of the package that has it, so the
/// bench's tests (`bench/tests/`, which include this harness) take
/// `RUNNER_STORAGE_BIN`, or else `runner-storage` in the target dir they
/// run from (`target/debug/deps/<test>` → `target/debug/runner-storage`),
/// which `cargo test --workspace` builds before it runs any test. Panics,
/// saying how to build it, when it is not there.
pub fn binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_runner-storage") {
        return PathBuf::from(path);
    }
    let path = match std::env::var_os("RUNNER_STORAGE_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let test = std::env::current_exe().expect("the test binary's own path");
            // target/<profile>/deps/<test>: the node is in target/<profile>/.
            let profile_dir = test.parent().and_then(std::path::Path::parent).expect("target/<profile>/deps/<test>");
            profile_dir.join("runner-storage")
        }
    };
    assert!(
        path.is_file(),
        "the node binary {} is missing: build it with `cargo build -p runner-storage` (with --release for a \
         release test run), or run `cargo test --workspace`, which builds every binary first; or point \
         RUNNER_STORAGE_BIN at one",
        path.display()
    );
    path
}

/// The DNS name of node `id` in a [`Tuning::peers_by_name`] cluster.
pub fn node_name(id: u64) -> String {
    format!("node{id}.runner-storage.test")
}

/// Debian's libfaketime (package `faketime`, installed by `scripts/test.sh`).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl TestCluster {
    /// Starts `size` nodes that bootstrap one cluster together.
    pub fn start(size: u64) -> TestCluster {
        Self::start_with(size, Tuning::default())
    }

    pub fn start_with(size: u64, tuning: Tuning) -> TestCluster {
        let mut cluster = Self::configure(size, tuning);
        for id in 1..=size {
            cluster.spawn(id);
        }
        cluster
    }

    /// Writes the configs of a new `size`-node cluster and starts none of them.
    pub fn configure(size: u64, tuning: Tuning) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = TestCluster { dir, nodes: BTreeMap::new(), tuning };
        let peers: Vec<(u64, String)> = (1..=size).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        if cluster.tuning.peers_by_name {
            let named: Vec<(u64, String)> =
                peers.iter().map(|(id, address)| (*id, address.replacen("127.0.0.1", &node_name(*id), 1))).collect();
            for ((id, address), (_, listen)) in named.iter().zip(&peers) {
                cluster.write_node(*id, address, &named);
                cluster.set_node_ip(*id, &listen.replacen("127.0.0.1", &format!("127.0.0.{}", 10 + id), 1));
            }
            return cluster;
        }
        for (id, address) in &peers {
            cluster.write_node(*id, address, &peers);
        }
        cluster
    }

    /// The hosts file of a [`Tuning::peers_by_name`] cluster.
    fn hosts_file(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Makes node `id` listen on `listen` (`ip:port`) and its name resolve
    /// there: the address clients (and this harness) reach it at.
    fn set_node_ip(&mut self, id: u64, listen: &str) {
        let config_path = self.nodes[&id].config_path.clone();
        let config = std::fs::read_to_string(&config_path).expect("read node config");
        let config: String = config
            .lines()
            .map(|line| if line.starts_with("listen = ") { format!("listen = \"{listen}\"") } else { line.to_owned() })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&config_path, config + "\n").expect("write node config");
        self.nodes.get_mut(&id).expect("known node").address = listen.to_owned();
        let ip = listen.rsplit_once(':').expect("ip:port").0.to_owned();
        let hosts = self.hosts_file();
        let mut entries: BTreeMap<String, String> = std::fs::read_to_string(&hosts)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split_once(' ').map(|(ip, name)| (name.to_owned(), ip.to_owned())))
            .collect();
        entries.insert(node_name(id), ip);
        let text: String = entries.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect();
        // Written in place: the bind mounts see the same file.
        std::fs::write(&hosts, format!("127.0.0.1 localhost\n{text}")).expect("write the hosts file");
    }

    /// Moves a stopped node to another IP (a rescheduled pod): it listens
    /// there from its next start, and its name resolves there at once.
    pub fn move_node(&mut self, id: u64, ip: &str) {
        assert!(self.tuning.peers_by_name, "move_node needs Tuning::peers_by_name");
        let port = self.nodes[&id].address.rsplit_once(':').expect("ip:port").1.to_owned();
        self.set_node_ip(id, &format!("{ip}:{port}"));
    }

    fn write_node(&mut self, id: u64, address: &str, peers: &[(u64, String)]) {
        let config_path = self.dir.path().join(format!("node{id}.toml"));
        let data_dir = self.dir.path().join(format!("node{id}"));
        let mut text = format!("node_id = {id}\nlisten = \"{address}\"\ndata_dir = \"{}\"\n", data_dir.display());
        if let Some(expiration) = self.tuning.initial_lock_expiration_ms {
            text += &format!("initial_lock_expiration_ms = {expiration}\n");
        }
        let metrics_address = self.tuning.metrics.then(|| format!("127.0.0.1:{}", free_port()));
        if let Some(metrics_address) = &metrics_address {
            text += &format!("metrics_listen = \"{metrics_address}\"\n");
        }
        if let Some(token) = &self.tuning.auth_token {
            text += &format!("auth_token = \"{token}\"\n");
        }
        // Odd nodes run on one worker (a current-thread runtime, as in
        // cluster-config/), even ones on the default multi-thread runtime:
        // every cluster mixes the two.
        if id % 2 == 1 {
            text += "worker_threads = 1\n";
        }
        if let Some(tls_dir) = &self.tuning.tls_dir {
            let file = |name: &str| tls_dir.join(name).display().to_string();
            text += &format!(
                "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                file("ca.pem"),
                file(&format!("node{id}.pem")),
                file(&format!("node{id}-key.pem"))
            );
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
        self.nodes.insert(
            id,
            NodeProcess { id, address: address.to_owned(), config_path, log_path, child: None, metrics_address },
        );
    }

    /// Starts (or restarts) node `id` from its config and data dir.
    pub fn spawn(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path).expect("open node log");
        let mut command = if self.tuning.peers_by_name {
            // A mount namespace of its own, whose /etc/hosts is the cluster's.
            let hosts = self.dir.path().join("hosts");
            let mut command = Command::new("unshare");
            command.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(format!(
                "mount --bind '{}' /etc/hosts && exec '{}' \"$@\"",
                hosts.display(),
                binary().display()
            ));
            command.arg("runner-storage");
            command
        } else {
            Command::new(binary())
        };
        command
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_LOG", std::env::var("NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        if self.tuning.fake_clocks {
            assert!(std::path::Path::new(LIBFAKETIME).exists(), "{LIBFAKETIME} is missing: apt-get install faketime");
            let offset_file = self.dir.path().join(format!("node{id}.faketime"));
            if !offset_file.exists() {
                std::fs::write(&offset_file, "+0\n").expect("write the clock offset file");
            }
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", offset_file)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                // Reread the offset file at most once a second: without a
                // cache every clock read would read the file.
                .env("FAKETIME_CACHE_DURATION", "1");
        }
        node.child = Some(command.spawn().expect("spawn runner-storage node"));
    }

    /// Sets node `id`'s wall clock `offset_s` seconds off the real one
    /// (needs `Tuning::fake_clocks`) and waits until the node reports it.
    pub async fn set_clock_offset(&self, id: u64, offset_s: i64) {
        assert!(self.tuning.fake_clocks, "set_clock_offset needs Tuning::fake_clocks");
        let offset_file = self.dir.path().join(format!("node{id}.faketime"));
        std::fs::write(&offset_file, format!("{offset_s:+}\n")).expect("write the clock offset file");
        let wanted_ms = offset_s * 1000;
        let what = format!("node {id}'s wall clock offset by {offset_s} s");
        eventually(&what, Duration::from_secs(10), || async {
            let Some(status) = self.status(id).await else { return false };
            let real_ms = runner_storage::clock::wall_clock_ms();
            let offset_ms = status.wall_clock_ms as i64 - real_ms as i64;
            (offset_ms - wanted_ms).abs() < 500
        })
        .await;
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

    /// SIGSTOP: the process stops answering, its connections stay open
    /// (as a node in a long GC pause or a frozen VM).
    pub fn pause(&self, id: u64) {
        let child = self.nodes[&id].child.as_ref().expect("a running node");
        signal(child, "STOP");
    }

    /// SIGCONT after [`TestCluster::pause`].
    pub fn resume(&self, id: u64) {
        let child = self.nodes[&id].child.as_ref().expect("a running node");
        signal(child, "CONT");
    }

    /// Node `id`'s data dir.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// Node `id`'s config file.
    pub fn config_path(&self, id: u64) -> PathBuf {
        self.nodes[&id].config_path.clone()
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
        self.client_in("")
    }

    /// A client whose calls act in `namespace` (`""`: the default one).
    pub fn client_in(&self, namespace: &str) -> Client {
        let tls =
            self.tuning.tls_dir.as_ref().map(|dir| {
                runner_storage::transport::Dialer::client_tls(&dir.join("ca.pem")).expect("read the test CA")
            });
        let dialer = runner_storage::transport::Dialer::new(tls, self.tuning.auth_token.as_deref()).expect("dialer");
        let options =
            runner_storage::client::ClientOptions { dialer, namespace: namespace.to_owned(), ..Default::default() };
        Client::with_options(self.endpoints(), options).expect("client")
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

    /// Polls nodes `ids` until one leads and the others of them follow it.
    pub async fn wait_for_leader_among(&self, ids: &[u64], timeout: Duration) -> u64 {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            let mut statuses = Vec::new();
            for id in ids {
                statuses.extend(client.status_of(&self.address(*id)).await.ok());
            }
            let leader = statuses.iter().find(|status| status.role == "leader").map(|status| status.node_id);
            if let Some(leader) = leader.filter(|_| statuses.len() == ids.len()) {
                if statuses.iter().all(|status| status.leader_id == leader) {
                    return leader;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {ids:?} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most 30 s) until node `id`'s process exits; its status.
    pub async fn wait_for_exit(&mut self, id: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = self.nodes.get_mut(&id).and_then(|node| node.child.as_mut()).expect("node was started");
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                self.nodes.get_mut(&id).expect("known node").child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "node {id} did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
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

    /// `Admin.Status` of node `id`, or `None` when it does not answer.
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        self.client().status_of(&self.address(id)).await.ok()
    }

    /// Bytes in node `id`'s log file so far: pass to [`TestCluster::log_since`].
    pub fn log_len(&self, id: u64) -> u64 {
        std::fs::metadata(&self.nodes[&id].log_path).map_or(0, |metadata| metadata.len())
    }

    /// Node `id`'s log from byte `offset` on (all of it from 0).
    pub fn log_since(&self, id: u64, offset: u64) -> String {
        let bytes = std::fs::read(&self.nodes[&id].log_path).unwrap_or_default();
        let start = usize::try_from(offset).map_or(bytes.len(), |offset| offset.min(bytes.len()));
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Panics unless node `id`'s process is still running (it did not crash).
    pub fn assert_running(&mut self, id: u64) {
        let child = self.nodes.get_mut(&id).and_then(|node| node.child.as_mut()).expect("node was started");
        let exited = child.try_wait().expect("poll child");
        assert!(exited.is_none(), "node {id} exited with {exited:?}; log in {}", self.dir.path().display());
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

// ---------------------------------------------------------------------------
// Write workload: concurrent clients whose acknowledged writes are recorded,
// so a fault test can check afterwards that none of them was lost.
// ---------------------------------------------------------------------------

/// Lock expiration for clusters under a workload: long enough that no runner
/// or lock of a test run expires, so "present" and "held" are exact checks.
pub const LOCK_EXPIRATION_LONG_MS: u64 = 10 * 60 * 1000;

/// Longest a test waits for a leader that every running voter agrees on.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a test waits for a workload to make the progress it asks for.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(40);

/// Longest a test waits for a restarted or new node to catch up.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(40);

/// Iterations one writer makes at most (its runner ports count up from 1).
pub const WORKLOAD_ITERATIONS_MAX: u64 = 60_000;

/// Writes one iteration of a writer makes: register, acquire, refresh.
pub const WORKLOAD_WRITES_PER_ITERATION: u64 = 3;

/// Effect's JSON of a runner at `host:port` in the default group.
pub fn runner_json(host: &str, port: u16) -> String {
    format!(r#"{{"address":{{"host":"{host}","port":{port}}},"groups":["default"],"weight":1}}"#)
}

/// A registration the cluster acknowledged.
#[derive(Debug, Clone)]
pub struct AckedRunner {
    pub address: String,
    pub runner: String,
    pub machine_id: i64,
}

/// What the writers of a [`Workload`] sent and what was acknowledged.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Host prefix of every runner of this workload.
    pub tag: String,
    /// Acknowledged registrations.
    pub runners: Vec<AckedRunner>,
    /// The JSON of every registration sent, acknowledged or not.
    pub attempted_runners: BTreeSet<String>,
    /// Per locking address, the shard ids whose acquire was acknowledged.
    pub shards: BTreeMap<String, Vec<String>>,
    /// Writes acknowledged.
    pub writes_acked: u64,
    /// Calls that failed: their outcome is unknown.
    pub errors: Vec<String>,
    /// Answers that contradict what was acknowledged before.
    pub violations: Vec<String>,
}

/// `writers` tasks, each with its own [`Client`] knowing every endpoint.
/// Writer `w` loops: register runner `{tag}-w{w}:{i+1}`, acquire shard
/// `{tag}-w{w}:{i}` for address `{tag}-w{w}-locker:1`, refresh its two
/// latest shards; each answer is checked and recorded in a [`Ledger`].
pub struct Workload {
    tag: String,
    stop: Arc<AtomicBool>,
    iterations: Vec<Arc<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<Ledger>>,
}

impl Workload {
    pub fn start(endpoints: Vec<String>, writers: u64, tag: &str) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workload = Workload { tag: tag.to_owned(), stop, iterations: Vec::new(), tasks: Vec::new() };
        for writer in 0..writers {
            let client = Client::new(endpoints.clone()).expect("client");
            let iterations = Arc::new(AtomicU64::new(0));
            let host = format!("{tag}-w{writer}");
            workload.tasks.push(tokio::spawn(write_stream(client, host, workload.stop.clone(), iterations.clone())));
            workload.iterations.push(iterations);
        }
        workload
    }

    /// Iterations completed so far, per writer.
    pub fn iterations(&self) -> Vec<u64> {
        self.iterations.iter().map(|count| count.load(Ordering::Relaxed)).collect()
    }

    /// Waits until every writer has completed `more` iterations beyond where it is now.
    pub async fn wait_for_more(&self, more: u64, timeout: Duration) {
        let targets: Vec<u64> = self.iterations().into_iter().map(|count| count + more).collect();
        let what = format!("every writer of {} completes {more} more iterations", self.tag);
        eventually(&what, timeout, || {
            let done = self.iterations().iter().zip(&targets).all(|(count, target)| count >= target);
            async move { done }
        })
        .await;
    }

    /// Waits until the writers together acknowledged at least `writes` writes since they started.
    pub async fn wait_for_writes(&self, writes: u64, timeout: Duration) {
        let what = format!("the writers of {} acknowledge {writes} writes", self.tag);
        eventually(&what, timeout, || {
            let done = self.iterations().iter().sum::<u64>() * WORKLOAD_WRITES_PER_ITERATION >= writes;
            async move { done }
        })
        .await;
    }

    /// Stops the writers after their current iteration and merges their ledgers.
    pub async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        let mut ledger = Ledger { tag: self.tag, ..Ledger::default() };
        for task in self.tasks {
            let part = task.await.expect("writer task panicked");
            ledger.runners.extend(part.runners);
            ledger.attempted_runners.extend(part.attempted_runners);
            ledger.shards.extend(part.shards);
            ledger.writes_acked += part.writes_acked;
            ledger.errors.extend(part.errors);
            ledger.violations.extend(part.violations);
        }
        ledger
    }
}

async fn write_stream(client: Client, host: String, stop: Arc<AtomicBool>, iterations: Arc<AtomicU64>) -> Ledger {
    let mut ledger = Ledger::default();
    let locker = format!("{host}-locker:1");
    let mut acked_shards: Vec<String> = Vec::new();
    for iteration in 0..WORKLOAD_ITERATIONS_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let port = u16::try_from(iteration + 1).expect("WORKLOAD_ITERATIONS_MAX fits the port range");
        let address = format!("{host}:{port}");
        let runner = runner_json(&host, port);
        ledger.attempted_runners.insert(runner.clone());
        match client.register(&address, &runner, true).await {
            Ok(machine_id) => {
                ledger.writes_acked += 1;
                ledger.runners.push(AckedRunner { address: address.clone(), runner, machine_id });
            }
            Err(error) => ledger.errors.push(format!("register {address}: {error}")),
        }
        let shard = format!("{host}:{iteration}");
        match client.acquire(&locker, std::slice::from_ref(&shard)).await {
            Ok(acquired) if acquired == [shard.clone()] => {
                ledger.writes_acked += 1;
                acked_shards.push(shard);
            }
            Ok(acquired) => ledger.violations.push(format!("acquire [{shard}] by {locker} returned {acquired:?}")),
            Err(error) => ledger.errors.push(format!("acquire {shard}: {error}")),
        }
        let recent = acked_shards[acked_shards.len().saturating_sub(2)..].to_vec();
        match client.refresh(&locker, &recent).await {
            Ok(refreshed) if refreshed == recent => ledger.writes_acked += 1,
            Ok(refreshed) => ledger.violations.push(format!("refresh {recent:?} by {locker} returned {refreshed:?}")),
            Err(error) => ledger.errors.push(format!("refresh {recent:?}: {error}")),
        }
        iterations.fetch_add(1, Ordering::Relaxed);
    }
    ledger.shards.insert(locker, acked_shards);
    ledger
}

impl Ledger {
    /// One line for the test output: what was written and what failed.
    pub fn summary(&self) -> String {
        let locks: usize = self.shards.values().map(Vec::len).sum();
        format!(
            "{}: {} writes acknowledged ({} runners, {locks} locks), {} failed calls",
            self.tag,
            self.writes_acked,
            self.runners.len(),
            self.errors.len()
        )
    }

    /// Checks through `client` that every acknowledged write is in the
    /// cluster's state: each acknowledged runner is live and healthy, in
    /// machine-id order; nothing this workload never sent is there; every
    /// acknowledged lock is still its address's (refresh returns exactly it)
    /// and held against anyone else (another address acquires none of them).
    pub async fn verify(&self, client: &Client) {
        assert!(self.violations.is_empty(), "answers contradicted acknowledged writes: {:#?}", self.violations);
        let present = client.get_runners().await.expect("get_runners");
        self.verify_runners(&present);
        let probe = format!("{}-probe:1", self.tag);
        for (locker, shards) in self.shards.iter().filter(|(_, shards)| !shards.is_empty()) {
            for chunk in shards.chunks(runner_storage::limits::SHARD_IDS_PER_CALL_MAX) {
                let refreshed = client.refresh(locker, chunk).await.expect("refresh");
                assert_eq!(refreshed, chunk, "acknowledged locks of {locker} are not all its own any more");
                let taken = client.acquire(&probe, chunk).await.expect("acquire");
                assert!(taken.is_empty(), "{probe} acquired locks acknowledged to {locker}: {taken:?}");
            }
        }
    }

    fn verify_runners(&self, present: &[(String, bool)]) {
        let position: BTreeMap<&str, usize> =
            present.iter().enumerate().map(|(index, (runner, _))| (runner.as_str(), index)).collect();
        let missing: Vec<&str> = self
            .runners
            .iter()
            .filter(|acked| !position.contains_key(acked.runner.as_str()))
            .map(|acked| acked.address.as_str())
            .collect();
        assert!(missing.is_empty(), "{} acknowledged registrations missing: {missing:?}", missing.len());
        let own = format!(r#""host":"{}-"#, self.tag);
        for (runner, healthy) in present.iter().filter(|(runner, _)| runner.contains(&own)) {
            assert!(self.attempted_runners.contains(runner), "a runner that was never registered: {runner}");
            assert!(*healthy, "registered healthy, listed unhealthy: {runner}");
        }
        // get_runners is ordered by machine id: the acknowledged runners,
        // sorted by the machine id each was given, must appear in that order.
        let mut by_machine_id: Vec<&AckedRunner> = self.runners.iter().collect();
        by_machine_id.sort_by_key(|acked| acked.machine_id);
        for pair in by_machine_id.windows(2) {
            assert!(pair[0].machine_id < pair[1].machine_id, "machine id given twice: {pair:?}");
            let (first, second) = (position[pair[0].runner.as_str()], position[pair[1].runner.as_str()]);
            assert!(first < second, "get_runners order disagrees with acknowledged machine ids: {pair:?}");
        }
    }
}

/// `GET /metrics` over a plain TCP connection.
pub fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to metrics");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{head}");
    body.to_owned()
}

/// The value of metric `name` (with `label`, if given) in a scrape's `body`.
pub fn sample(body: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let lines = body.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    scrape
        .samples
        .into_iter()
        .find(|s| s.metric == name && label.is_none_or(|(key, value)| s.labels.get(key) == Some(value)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}
