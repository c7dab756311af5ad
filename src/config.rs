//! [`NodeConfig`]: what one node needs to run, loaded from TOML, with
//! defaults and a `validate()` that checks how the fields relate.
//!
//! ```toml
//! node_id = 1
//! listen = "127.0.0.1:7001"          # gRPC: client API, Admin, Raft
//! data_dir = "data/node1"
//! initial_lock_expiration_ms = 35000 # E written at bootstrap (optional)
//! metrics_listen = "127.0.0.1:9001"  # Prometheus GET /metrics (optional)
//! [[peers]]                          # initial membership, this node included
//! id = 1
//! address = "127.0.0.1:7001"
//! [raft]                             # optional; defaults below
//! heartbeat_interval_ms = 50
//! election_timeout_min_ms = 110
//! election_timeout_max_ms = 160
//! ```
//! A node with no `peers` starts empty and waits to be added to a running
//! cluster (`ctl members add`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::limits;

/// Returns [`Error::Config`] with the message when `condition` fails.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(Error::Config(format!($($message)+)));
        }
    };
}

/// One member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The member's node id (at least 1).
    pub id: u64,
    /// Its gRPC address as the other nodes and clients reach it.
    pub address: String,
}

/// Raft timing and log compaction.
///
/// openraft 0.9 makes a follower that had a leader wait for the leader lease
/// (`election_timeout_max`) plus a random election timeout before it
/// campaigns, checked on a tick every 1.5 heartbeats, so after a leader dies
/// a follower campaigns `max + [min, max]` after the last heartbeat, plus up
/// to a tick: 270–395 ms with the defaults. Heartbeats every 50 ms mean it
/// campaigns only after missing at least five in a row. When the survivor
/// that is behind campaigns first, openraft would add `2 × max` and another
/// timeout; `raft::election` has the right node campaign at once instead.
/// openraft also uses the heartbeat interval as the timeout of each
/// replication RPC, which is why it is not shorter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Shortest time a follower waits without a heartbeat before an election.
    pub election_timeout_min_ms: u64,
    /// Longest such time; the timeout is drawn between the two.
    pub election_timeout_max_ms: u64,
    /// Entries applied since the last snapshot before a new one is built.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the snapshot for slow followers.
    pub logs_kept_after_snapshot: u64,
    /// Whether the leader sends new entries to followers while its own log
    /// flush runs (`raft::early_replication`); off, it sends them after.
    pub early_replication: bool,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 110,
            election_timeout_max_ms: 160,
            snapshot_logs_since_last: limits::SNAPSHOT_LOGS_SINCE_LAST_DEFAULT,
            logs_kept_after_snapshot: limits::LOGS_KEPT_AFTER_SNAPSHOT_DEFAULT,
            early_replication: true,
        }
    }
}

/// Everything one node needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (at least 1).
    pub node_id: u64,
    /// Socket address the gRPC server binds.
    pub listen: SocketAddr,
    /// Directory of this node's sled database.
    pub data_dir: PathBuf,
    /// The initial membership; empty for a node that joins a running cluster.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); none when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token clients (and peers) must present; prefer `auth_token_file`.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// File holding the bearer token (trailing newline ignored).
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// TLS for every connection; peers authenticate each other by certificate.
    #[serde(default)]
    pub tls: Option<crate::transport::TlsFiles>,
    /// The lock expiration written when this node bootstraps the cluster.
    #[serde(default)]
    pub initial_lock_expiration_ms: Option<u64>,
    /// Raft timing and compaction.
    #[serde(default)]
    pub raft: RaftTuning,
    /// Threads running this node's async work (gRPC, Raft); default: one
    /// per CPU. Nodes that share a machine do better with about
    /// CPUs / nodes each: three nodes on 2 cores wrote 8% more per second
    /// with 1 each than with 2 (`BENCHMARKS.md`, set I), since their
    /// threads no longer wake and steal work across the same two cores.
    /// 1 runs the node on a current-thread runtime, which writes a batch's
    /// replies together: more writes per second under load, a little more
    /// latency when idle (see `cli::runtime`).
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

impl NodeConfig {
    /// The embedded default: a one-node cluster on 127.0.0.1:7001 with data in `./data`.
    pub fn single_node() -> Self {
        let listen: SocketAddr = "127.0.0.1:7001".parse().expect("a literal socket address");
        NodeConfig {
            node_id: 1,
            listen,
            data_dir: PathBuf::from("data"),
            peers: vec![Peer { id: 1, address: listen.to_string() }],
            metrics_listen: None,
            auth_token: None,
            auth_token_file: None,
            tls: None,
            initial_lock_expiration_ms: None,
            raft: RaftTuning::default(),
            worker_threads: None,
        }
    }

    /// Reads and validates a TOML config file.
    ///
    /// # Errors
    /// When the file cannot be read, is not valid TOML for this schema, or fails [`NodeConfig::validate`].
    pub fn load(path: &Path) -> Result<Self> {
        let invalid = |e: &dyn std::fmt::Display| Error::Config(format!("invalid config {}: {e}", path.display()));
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read config {}: {e}", path.display())))?;
        let config: NodeConfig = toml::from_str(&text).map_err(|e| invalid(&e))?;
        config.validate().map_err(|e| invalid(&e))?;
        Ok(config)
    }

    /// The address other nodes and clients use for this node: its `peers`
    /// entry when it has one, else `listen`.
    pub fn advertised_address(&self) -> String {
        self.peers
            .iter()
            .find(|peer| peer.id == self.node_id)
            .map_or_else(|| self.listen.to_string(), |peer| peer.address.clone())
    }

    /// The bearer token, from `auth_token` or `auth_token_file`.
    ///
    /// # Errors
    /// When the token file cannot be read or is empty.
    pub fn token(&self) -> Result<Option<String>> {
        let Some(path) = &self.auth_token_file else { return Ok(self.auth_token.clone()) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read auth_token_file {}: {e}", path.display())))?;
        let token = text.trim_end_matches(['\n', '\r']).to_owned();
        ensure!(!token.is_empty(), "auth_token_file {} is empty", path.display());
        Ok(Some(token))
    }

    /// How this node dials its peers: its TLS identity and the token.
    ///
    /// # Errors
    /// When a TLS file or the token file cannot be read.
    pub fn peer_dialer(&self) -> Result<crate::transport::Dialer> {
        let tls = self.tls.as_ref().map(crate::transport::TlsFiles::peer_client_config).transpose()?;
        crate::transport::Dialer::new(tls, self.token()?.as_deref())
    }

    /// Checks each field and how fields relate.
    ///
    /// # Errors
    /// Naming the first field that is wrong.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.node_id >= 1, "node_id must be at least 1");
        ensure!(!self.data_dir.as_os_str().is_empty(), "data_dir is empty");
        let mut ids = std::collections::BTreeSet::new();
        let mut addresses = std::collections::BTreeSet::new();
        for peer in &self.peers {
            ensure!(peer.id >= 1, "peers: id must be at least 1");
            ensure!(ids.insert(peer.id), "peers: node id {} appears twice", peer.id);
            // Two ids at one address make a node replicate to itself as
            // another member, which trips an assertion inside openraft.
            ensure!(addresses.insert(&peer.address), "peers: address {:?} appears twice", peer.address);
            crate::model::RunnerAddress::parse(&peer.address).map_err(|_| {
                Error::Config(format!("peers: address {:?} of node {} is not host:port", peer.address, peer.id))
            })?;
        }
        if !self.peers.is_empty() && !ids.contains(&self.node_id) {
            return Err(Error::Config(format!(
                "peers must include this node (node_id {}) or be empty for a joining node",
                self.node_id
            )));
        }
        if let Some(expiration) = self.initial_lock_expiration_ms {
            ensure!(
                (1..=limits::LOCK_EXPIRATION_MS_MAX).contains(&expiration),
                "initial_lock_expiration_ms must be in 1..={}",
                limits::LOCK_EXPIRATION_MS_MAX
            );
        }
        ensure!(
            self.auth_token.is_none() || self.auth_token_file.is_none(),
            "set auth_token or auth_token_file, not both"
        );
        if let Some(threads) = self.worker_threads {
            ensure!(
                (1..=limits::WORKER_THREADS_MAX).contains(&threads),
                "worker_threads must be in 1..={}, got {threads}",
                limits::WORKER_THREADS_MAX
            );
        }
        if let Some(token) = &self.auth_token {
            ensure!(
                !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
                "auth_token must be printable ASCII without spaces"
            );
        }
        self.raft.validate()
    }
}

impl RaftTuning {
    fn validate(&self) -> Result<()> {
        ensure!(self.heartbeat_interval_ms >= 1, "raft.heartbeat_interval_ms must be at least 1");
        ensure!(
            self.election_timeout_min_ms > self.heartbeat_interval_ms * 2,
            "raft.election_timeout_min_ms ({}) must be more than twice raft.heartbeat_interval_ms ({})",
            self.election_timeout_min_ms,
            self.heartbeat_interval_ms
        );
        ensure!(
            self.election_timeout_max_ms > self.election_timeout_min_ms,
            "raft.election_timeout_max_ms must be more than raft.election_timeout_min_ms"
        );
        ensure!(self.snapshot_logs_since_last >= 1, "raft.snapshot_logs_since_last must be at least 1");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig> {
        let config: NodeConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    const VALID: &str = r#"
        node_id = 2
        listen = "127.0.0.1:7002"
        data_dir = "d"
        [[peers]]
        id = 1
        address = "127.0.0.1:7001"
        [[peers]]
        id = 2
        address = "127.0.0.1:7002"
    "#;

    #[test]
    fn valid_config_loads_with_defaults() {
        let config = parse(VALID).unwrap();
        assert_eq!(config.advertised_address(), "127.0.0.1:7002");
        assert_eq!(config.raft, RaftTuning::default());
        assert_eq!(config.worker_threads, None, "one worker per CPU unless set");
        let one = parse(&VALID.replace("data_dir = \"d\"", "data_dir = \"d\"\nworker_threads = 1")).unwrap();
        assert_eq!(one.worker_threads, Some(1));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (VALID.replace("node_id = 2", "node_id = 3"), "peers must include this node"),
            (VALID.replace("id = 1", "id = 2"), "appears twice"),
            (VALID.replace("\"127.0.0.1:7001\"", "\"nope\""), "not host:port"),
            (VALID.replace("\"127.0.0.1:7001\"", "\"127.0.0.1:7002\""), "address \"127.0.0.1:7002\" appears twice"),
            (format!("{VALID}\n[raft]\nheartbeat_interval_ms = 500"), "election_timeout_min_ms"),
            (VALID.replace("data_dir", "data_directory"), "unknown field"),
            (VALID.replace("data_dir = \"d\"", "data_dir = \"d\"\nworker_threads = 0"), "worker_threads must be in"),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", parse(&text).unwrap_err());
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn single_node_default_is_valid() {
        NodeConfig::single_node().validate().unwrap();
    }
}
