//! The lab: node processes of one cluster, each in its own network
//! namespace, and the faults that act on processes and the network.
//!
//! **Namespace lab** (root, `ip` and `iptables` present; `CHAOS_LAB` unset or
//! `netns`): the switch-namespace variant of NETNS.md. A namespace
//! `{prefix}-sw` holds the bridge; host `h` is namespace `{prefix}-n{h}` at
//! 10.77.0.h; the test's own clients run in `{prefix}-c` at 10.77.0.100
//! (see [`Lab::client_runtime`]). Nothing is added to the root namespace,
//! so lab traffic cannot leave the machine: from the client namespace the
//! only route is the lab's /24. Host `nodes + 1` is the spare used by the
//! membership nemesis. Partitions are `iptables` INPUT rules inside the node
//! namespaces (NETNS.md §2); the client namespace is never cut off, so a
//! client can still reach a node that is isolated from its peers.
//!
//! **Loopback lab** (no root or no `ip`, or `CHAOS_LAB=loopback`): nodes on
//! 127.0.0.(10+h) with free ports; only process faults (kill, pause,
//! restart, membership) are possible, and the output says so.
//!
//! With [`Features`], each initial node's data dir is a powerfs mount (power
//! cuts) and every node runs under libfaketime with a clock file the lab
//! rewrites (clock faults): see [`crate::lab_disks`].
//!
//! The prefix is `rsc{pid}x{n}`: labs of earlier runs whose process is gone
//! are removed at start ([`clean_stale_labs`]); `Drop` kills every node,
//! unmounts the powerfs mounts and deletes the namespaces, also when a test
//! panics (data dirs and logs are then kept and their path printed).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Port every node listens on in the namespace lab.
const NODE_PORT: u16 = 7000;
/// The lab subnet (NETNS.md): host `h` is `10.77.0.h`.
const SUBNET: &str = "10.77.0";
const CLIENT_HOST: u8 = 100;
/// Longest a node may take to exit after SIGTERM before it is killed.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabMode {
    Netns { prefix: String },
    Loopback,
}

/// Raft timing and compaction written into each node's config.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_logs_since_last: u64,
    pub logs_kept_after_snapshot: u64,
}

impl Default for Tuning {
    /// The product's own Raft timing (what users run, so the availability
    /// figures are theirs), with small snapshot intervals.
    fn default() -> Self {
        let product = runner_storage::config::RaftTuning::default();
        Tuning {
            heartbeat_interval_ms: product.heartbeat_interval_ms,
            election_timeout_min_ms: product.election_timeout_min_ms,
            election_timeout_max_ms: product.election_timeout_max_ms,
            // Small, so snapshots, log purging and snapshot installs happen under chaos.
            snapshot_logs_since_last: 500,
            logs_kept_after_snapshot: 100,
        }
    }
}

/// One node process (current or past) of the lab.
#[derive(Debug)]
pub struct NodeSlot {
    pub id: u64,
    pub host: u8,
    pub address: String,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
}

/// One side of a network rule: traffic `from` host to host `to` is dropped;
/// `server_only` drops only new calls to `to`'s server (NETNS.md: per
/// connection direction), so `to` can still call `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub from: u8,
    pub to: u8,
    pub server_only: bool,
}

/// What a run needs of the lab beyond processes and the network.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// Mount powerfs as each initial node's data dir (power cuts).
    pub powerfs: bool,
    /// Run every node under libfaketime (clock faults).
    pub faketime: bool,
}

pub struct Lab {
    pub mode: LabMode,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeSlot>,
    /// Hosts of the initial members (1..=size); `size + 1` is the spare.
    pub size: u8,
    tuning: Tuning,
    planted_bug: Option<String>,
    /// Loopback ports by host.
    ports: BTreeMap<u8, u16>,
    /// The node binary this lab runs: a copy taken when the lab was created,
    /// so that a rebuild during a long run cannot mix two versions of it.
    binary: std::path::PathBuf,
    pub keep_files: bool,
    pub(crate) features: Features,
    /// The powerfs mount of each initial node, by node id.
    pub(crate) mounts: BTreeMap<u64, powerfs::PowerFs>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

fn run_with_stdin(program: &str, args: &[&str], stdin: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    child.stdin.take().expect("piped stdin").write_all(stdin.as_bytes()).map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Whether this process can build a namespace lab, and why not.
pub fn netns_available() -> Result<(), String> {
    if std::env::var("CHAOS_LAB").as_deref() == Ok("loopback") {
        return Err("CHAOS_LAB=loopback".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    run("ip", &["netns", "list"]).map_err(|e| format!("no usable `ip`: {e}"))?;
    run("iptables-restore", &["--version"]).map_err(|e| format!("no iptables-restore: {e}"))
}

/// Deletes the namespaces (and unmounts the powerfs mounts) of labs whose process no longer runs.
pub fn clean_stale_labs() {
    crate::lab_disks::unmount_stale();
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix("rsc").and_then(|rest| rest.split('x').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(name);
    }
}

fn delete_namespace(name: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|pid| pid.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory preconditions; these pids run inside a lab namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = run("ip", &["netns", "del", name]);
}

fn signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).expect("pids fit i32");
    // SAFETY: kill has no memory preconditions; `pid` is our own child.
    unsafe { libc::kill(pid, signal) };
}

impl Lab {
    /// A lab for `size` nodes (plus a spare host), not started yet.
    pub fn create(size: u8, tuning: Tuning, planted_bug: Option<&str>, features: Features) -> Lab {
        assert!((1..=9).contains(&size), "lab size {size} not in 1..=9");
        let dir = tempfile::Builder::new().prefix("runner-storage-chaos-").tempdir().expect("lab temp dir");
        // A hard link keeps this version even when cargo replaces the file
        // (it writes a new one); a copy where links are not possible.
        let binary = dir.path().join("runner-storage");
        let built = env!("CARGO_BIN_EXE_runner-storage");
        std::fs::hard_link(built, &binary)
            .or_else(|_| std::fs::copy(built, &binary).map(|_| ()))
            .expect("pin the node binary in the lab dir");
        let mode = match netns_available() {
            Ok(()) => {
                clean_stale_labs();
                let counter = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
                LabMode::Netns { prefix: format!("rsc{}x{counter}", std::process::id()) }
            }
            Err(reason) => {
                crate::lab_disks::unmount_stale();
                eprintln!(
                    "chaos: network namespaces unavailable ({reason}): loopback lab on 127.0.0.x, \
                     process faults only (kill, pause, restart, membership); no partitions"
                );
                LabMode::Loopback
            }
        };
        let mut lab = Lab {
            mode,
            dir,
            nodes: BTreeMap::new(),
            size,
            tuning,
            planted_bug: planted_bug.map(str::to_owned),
            ports: BTreeMap::new(),
            binary,
            keep_files: std::env::var("CHAOS_KEEP").is_ok(),
            features,
            mounts: BTreeMap::new(),
        };
        if let Err(error) = lab.build_network() {
            lab.teardown_network();
            panic!("cannot build the namespace lab: {error}");
        }
        let peers: Vec<(u64, String)> = (1..=size).map(|host| (u64::from(host), lab.host_address(host))).collect();
        for (id, _) in &peers {
            lab.write_node(*id, u8::try_from(*id).expect("host fits u8"), &peers);
            if features.powerfs {
                lab.mount_powerfs(*id);
            }
        }
        lab
    }

    /// A name unique to this lab, for mounts and files.
    pub fn tag(&self) -> String {
        match &self.mode {
            LabMode::Netns { prefix } => prefix.clone(),
            LabMode::Loopback => {
                let dir =
                    self.dir.path().file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
                format!("rsc{}x{dir}", std::process::id())
            }
        }
    }

    pub fn is_netns(&self) -> bool {
        matches!(self.mode, LabMode::Netns { .. })
    }

    pub fn mode_name(&self) -> String {
        match &self.mode {
            LabMode::Netns { prefix } => format!("netns ({prefix})"),
            LabMode::Loopback => "loopback".into(),
        }
    }

    fn namespace(&self, host: u8) -> Option<String> {
        match &self.mode {
            LabMode::Netns { prefix } if host == CLIENT_HOST => Some(format!("{prefix}-c")),
            LabMode::Netns { prefix } => Some(format!("{prefix}-n{host}")),
            LabMode::Loopback => None,
        }
    }

    pub fn client_namespace(&self) -> Option<String> {
        self.namespace(CLIENT_HOST)
    }

    /// The gRPC address of host `host`.
    pub fn host_address(&mut self, host: u8) -> String {
        match self.mode {
            LabMode::Netns { .. } => format!("{SUBNET}.{host}:{NODE_PORT}"),
            LabMode::Loopback => {
                let ip = format!("127.0.0.{}", 10 + u16::from(host));
                let port = *self.ports.entry(host).or_insert_with(|| {
                    let listener = std::net::TcpListener::bind((ip.as_str(), 0)).expect("bind a loopback port");
                    listener.local_addr().expect("local address").port()
                });
                format!("{ip}:{port}")
            }
        }
    }

    fn build_network(&mut self) -> Result<(), String> {
        let LabMode::Netns { prefix } = self.mode.clone() else { return Ok(()) };
        let switch = format!("{prefix}-sw");
        run("ip", &["netns", "add", &switch])?;
        run("ip", &["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &switch, "link", "set", "br0", "up"])?;
        let hosts: Vec<u8> = (1..=self.size + 1).chain([CLIENT_HOST]).collect();
        for host in hosts {
            let namespace = self.namespace(host).expect("netns mode");
            let veth = format!("v{host}");
            run("ip", &["netns", "add", &namespace])?;
            run(
                "ip",
                &["-n", &switch, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace],
            )?;
            run("ip", &["-n", &switch, "link", "set", &veth, "master", "br0", "up"])?;
            run("ip", &["-n", &namespace, "addr", "add", &format!("{SUBNET}.{host}/24"), "dev", "eth0"])?;
            run("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn teardown_network(&self) {
        let LabMode::Netns { prefix } = &self.mode else { return };
        let hosts: Vec<u8> = (1..=self.size + 1).chain([CLIENT_HOST]).collect();
        for host in hosts {
            delete_namespace(&self.namespace(host).expect("netns mode"));
        }
        delete_namespace(&format!("{prefix}-sw"));
    }

    /// Writes node `id`'s config for host `host`; `peers` empty for a joining node.
    pub fn write_node(&mut self, id: u64, host: u8, peers: &[(u64, String)]) {
        let address = self.host_address(host);
        let config_path = self.dir.path().join(format!("node{id}.toml"));
        let data_dir = self.dir.path().join(format!("data/node{id}"));
        let listen = address.clone();
        let tuning = &self.tuning;
        // One worker per node, as cluster-config/ ships for nodes sharing a machine.
        let mut text = format!(
            "node_id = {id}\nlisten = \"{listen}\"\ndata_dir = \"{}\"\nworker_threads = 1\n",
            data_dir.display()
        );
        for (peer_id, peer_address) in peers {
            text += &format!("[[peers]]\nid = {peer_id}\naddress = \"{peer_address}\"\n");
        }
        text += &format!(
            "[raft]\nheartbeat_interval_ms = {}\nelection_timeout_min_ms = {}\nelection_timeout_max_ms = {}\n\
             snapshot_logs_since_last = {}\nlogs_kept_after_snapshot = {}\n",
            tuning.heartbeat_interval_ms,
            tuning.election_timeout_min_ms,
            tuning.election_timeout_max_ms,
            tuning.snapshot_logs_since_last,
            tuning.logs_kept_after_snapshot
        );
        std::fs::write(&config_path, text).expect("write node config");
        let log_path = self.dir.path().join(format!("node{id}.log"));
        let slot = NodeSlot { id, host, address, config_path, data_dir, log_path, child: None, paused: false };
        self.nodes.insert(id, slot);
    }

    /// Starts (or restarts) node `id` from its config and data dir.
    pub fn spawn(&mut self, id: u64) {
        let namespace = self.namespace(self.nodes[&id].host);
        let planted_bug = self.planted_bug.clone();
        let node = self.nodes.get_mut(&id).expect("known node");
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path).expect("open node log");
        let binary = &self.binary;
        // `ip netns exec` execs the binary itself, so the child's pid is the node's.
        let mut command = match &namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command.arg("serve").arg("--config").arg(&node.config_path);
        command.env("RUST_LOG", std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()));
        if self.features.faketime {
            crate::lab_disks::fake_clock(&mut command, &self.dir.path().join(format!("clock/node{id}")));
        }
        match &planted_bug {
            Some(bug) => command.env(runner_storage::node::PLANTED_BUG_ENV, bug),
            None => command.env_remove(runner_storage::node::PLANTED_BUG_ENV),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn runner-storage node");
        node.child = Some(child);
        node.paused = false;
    }

    /// SIGKILL, as in a crash.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|node| node.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit (SIGKILL after [`TERMINATE_TIMEOUT`]).
    /// Returns whether the node stopped cleanly.
    pub fn terminate(&mut self, id: u64) -> bool {
        let Some(mut child) = self.nodes.get_mut(&id).and_then(|node| node.child.take()) else { return true };
        signal(&child, libc::SIGTERM);
        let deadline = std::time::Instant::now() + TERMINATE_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn pause(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(child) = &node.child {
                signal(child, libc::SIGSTOP);
                node.paused = true;
            }
        }
    }

    pub fn resume(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(child) = &node.child {
                signal(child, libc::SIGCONT);
            }
            node.paused = false;
        }
    }

    /// Whether node `id`'s process runs; reaps it if it exited on its own.
    pub fn is_running(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else { return false };
        match node.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                node.child = None;
                false
            }
            None => false,
        }
    }

    /// Nodes whose process runs and exited on their own since the last call.
    pub fn crashed_nodes(&mut self) -> Vec<u64> {
        let mut crashed = Vec::new();
        for (id, node) in self.nodes.iter_mut() {
            if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                crashed.push((*id, status));
                node.child = None;
            }
        }
        crashed
            .into_iter()
            .map(|(id, status)| {
                eprintln!("chaos: node {id} exited on its own with {status}");
                id
            })
            .collect()
    }

    pub fn address(&self, id: u64) -> String {
        self.nodes[&id].address.clone()
    }

    pub fn host_of(&self, id: u64) -> u8 {
        self.nodes[&id].host
    }

    /// Drops the traffic `blocks` describe, replacing earlier rules.
    ///
    /// # Panics
    /// In the loopback lab, which has no per-node network.
    pub fn set_blocks(&self, blocks: &[Block]) -> Result<(), String> {
        assert!(self.is_netns(), "partitions need the namespace lab");
        for host in 1..=self.size + 1 {
            let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for block in blocks.iter().filter(|block| block.to == host) {
                let from = format!("{SUBNET}.{}", block.from);
                if block.server_only {
                    rules += &format!("-A INPUT -s {from} -p tcp --dport {NODE_PORT} -j DROP\n");
                } else {
                    rules += &format!("-A INPUT -s {from} -j DROP\n");
                }
            }
            rules += "COMMIT\n";
            let namespace = self.namespace(host).expect("netns mode");
            run_with_stdin("ip", &["netns", "exec", &namespace, "iptables-restore"], &rules)?;
        }
        Ok(())
    }

    /// Removes every network rule.
    pub fn heal_network(&self) -> Result<(), String> {
        if self.is_netns() {
            self.set_blocks(&[])
        } else {
            Ok(())
        }
    }

    /// Removes node `id`'s process and data dir (a node that left the cluster).
    pub fn discard(&mut self, id: u64) {
        self.kill(id);
        if let Some(node) = self.nodes.get(&id) {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
    }

    /// Copies every node's log into `dir` as `node{id}.log` (best effort:
    /// a log that cannot be copied is reported, not fatal).
    pub fn copy_logs_to(&self, dir: &std::path::Path) {
        for node in self.nodes.values() {
            let copy = dir.join(format!("node{}.log", node.id));
            if let Err(error) = std::fs::copy(&node.log_path, &copy) {
                eprintln!("chaos: could not copy node {}'s log to {}: {error}", node.id, copy.display());
            }
        }
    }

    /// The last lines of every node's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in self.nodes.values() {
            if let Ok(log) = std::fs::read_to_string(&node.log_path) {
                let tail: Vec<&str> = log.lines().rev().take(lines).collect();
                out += &format!("--- node {} ({}) log, last lines ---\n", node.id, node.address);
                for line in tail.into_iter().rev() {
                    out += line;
                    out += "\n";
                }
            }
        }
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let keep = self.keep_files || std::thread::panicking();
        self.unmount_all(keep);
        self.teardown_network();
        if self.keep_files || std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("chaos: lab files (configs, data dirs, node logs) kept in {}", self.dir.path().display());
        }
    }
}
