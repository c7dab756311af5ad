//! `runner-storage serve`: open the data dir, start Raft, bootstrap a new
//! cluster, serve gRPC until SIGTERM or Ctrl-C, then shut down cleanly.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::NodeConfig;
use crate::limits;
use crate::node::Node;
use crate::service;
use crate::state_machine::{Command, State, DEFAULT_NAMESPACE};

/// The node config at `config_path`, or the embedded one-node default.
///
/// # Errors
/// The file cannot be read, does not parse, or fails validation.
pub fn load_config(config_path: Option<&Path>) -> anyhow::Result<NodeConfig> {
    match config_path {
        Some(path) => Ok(NodeConfig::load(path)?),
        None => Ok(NodeConfig::single_node()),
    }
}

/// Runs a node until it is told to stop.
///
/// # Errors
/// An unusable data dir, a listen address in use, or a server failure.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (in use?)", config.listen))?;
    let node = Node::open(&config).await?;
    let new_cluster = node.bootstrap_if_pristine(&config).await?;
    if let (true, Some(lock_expiration_ms)) = (new_cluster, config.initial_lock_expiration_ms) {
        let done = move |state: &State| state.lock_expiration_ms(DEFAULT_NAMESPACE) == lock_expiration_ms;
        let command = Command::SetLockExpiration { lock_expiration_ms };
        let deadline = Some(limits::INITIAL_LOCK_EXPIRATION_DEADLINE);
        tokio::spawn(node.clone().write_once_when_leading("the initial lock expiration", command, done, deadline));
    }
    // A cluster is named by its first leader (restore and recover name theirs).
    let command = Command::SetClusterId { cluster_id: new_cluster_id() };
    let named = |state: &State| state.cluster_id().is_some();
    tokio::spawn(node.clone().write_once_when_leading("the cluster's id", command, named, None));
    tokio::spawn(log_leader_changes(node.clone()));
    if let Some(metrics_listen) = config.metrics_listen {
        service::observe::serve_metrics(node.clone(), metrics_listen, shutdown_signal()).await?;
    }
    tracing::info!(
        node_id = config.node_id,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        new_cluster,
        "runner-storage node serving"
    );
    let security = service::ServerSecurity {
        tls: config.tls.as_ref().map(crate::transport::TlsFiles::server_config).transpose()?,
        token: config.token()?,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_requested = |mut stop_rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    };
    let stopping_node = node.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        hand_over_before_stopping(&stopping_node).await;
        let _ = stop_tx.send(true);
    });
    let serving = service::serve(node.clone(), listener, security, stop_requested(stop_rx.clone()));
    // tonic's graceful shutdown waits for every call in flight, however long;
    // one stuck call (a client that never finishes its request, a read
    // waiting on a partition) would keep a stopping leader half alive:
    // heartbeating, so nobody elects, but refusing every new call.
    let drain_bound = async {
        stop_requested(stop_rx).await;
        tokio::time::sleep(limits::SHUTDOWN_DRAIN_MAX).await;
    };
    tokio::select! {
        served = serving => served.context("gRPC server failed")?,
        reason = node.raft_failed() => {
            tracing::error!(%reason, "stopping: Raft has stopped");
            anyhow::bail!("{reason}");
        }
        () = drain_bound => tracing::warn!(
            drain_max_ms = limits::SHUTDOWN_DRAIN_MAX.as_millis() as u64,
            "calls still in flight after the drain bound; stopping without them"
        ),
    }
    tracing::info!(node_id = config.node_id, "shutting down");
    // Bounded too: a replication task stuck in a call to an unreachable peer
    // must not keep the process (and its port and data dir) alive. Every
    // acknowledged write is already on disk; the final flush is a courtesy.
    if tokio::time::timeout(limits::SHUTDOWN_RAFT_MAX, node.shutdown()).await.is_err() {
        tracing::warn!(
            shutdown_max_ms = limits::SHUTDOWN_RAFT_MAX.as_millis() as u64,
            "Raft did not stop in time; exiting without waiting for it"
        );
    }
    Ok(())
}

/// A leader told to stop hands leadership to an up-to-date follower first
/// (within [`limits::SHUTDOWN_HANDOVER_MAX`]), so its going costs the
/// cluster no election timeout; the drain and stop follow either way.
async fn hand_over_before_stopping(node: &Node) {
    if !node.is_leader() {
        return;
    }
    match node.transfer_leadership(None, limits::SHUTDOWN_HANDOVER_MAX).await {
        Ok(leader) => tracing::info!(leader, "stopping: leadership handed over"),
        Err(error) => tracing::warn!(?error, "stopping: leadership not handed over; the others will elect"),
    }
}

/// A fresh random cluster id (128 bits, hex).
pub fn new_cluster_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// One log line per leader change and per membership change.
async fn log_leader_changes(node: Arc<Node>) {
    let mut metrics = node.raft().metrics();
    let mut last_leader = None;
    let mut last_membership = None;
    while metrics.changed().await.is_ok() {
        let current = metrics.borrow().clone();
        if current.current_leader != last_leader {
            tracing::info!(leader = ?current.current_leader, term = current.current_term, "leader changed");
            last_leader = current.current_leader;
        }
        let membership = current.membership_config.log_id().map(|log_id| log_id.index);
        if membership != last_membership {
            tracing::info!(membership = %current.membership_config.membership(), "membership changed");
            last_membership = membership;
        }
    }
}
