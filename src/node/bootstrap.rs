//! Bootstrapping a new cluster from its initial peers (`cluster-config/`).

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::error::RaftError;
use openraft::BasicNode;

use super::Node;
use crate::config::NodeConfig;
use crate::error::Error;
use crate::limits::BOOTSTRAP_DEFER;
use crate::raft::NodeId;
use crate::state_machine::{Command, NamespaceName, State, DEFAULT_NAMESPACE};

impl Node {
    /// Writes `command` (in the default namespace) once this node leads,
    /// unless `done` holds of the applied state first; gives up after
    /// `deadline` (`None`: it keeps trying). Every node of a new cluster
    /// runs it; the first that leads writes, the others see it applied.
    pub async fn write_once_when_leading(
        self: Arc<Self>,
        what: &'static str,
        command: Command,
        done: impl Fn(&State) -> bool,
        deadline: Option<std::time::Duration>,
    ) {
        let give_up_at = deadline.map(|deadline| tokio::time::Instant::now() + deadline);
        while give_up_at.is_none_or(|at| tokio::time::Instant::now() < at) {
            if self.local_view(|applied| done(&applied.state)) {
                return;
            }
            if self.is_leader() {
                let namespace = NamespaceName::new_static(DEFAULT_NAMESPACE);
                match self.write(namespace, None, command.clone()).await {
                    Ok(_) => {
                        tracing::info!(what, "written");
                        return;
                    }
                    Err(error) => tracing::debug!(what, ?error, "not written yet"),
                }
            }
            tokio::time::sleep(crate::limits::FIRST_LEADER_WRITE_RETRY).await;
        }
        tracing::warn!(what, "gave up writing it");
    }

    /// Bootstraps a new cluster from a pristine node (no Raft state yet) whose
    /// config lists peers. Returns whether the node was pristine.
    ///
    /// The peer with the lowest id initialises the cluster at once; the
    /// others wait up to [`BOOTSTRAP_DEFER`] for the elected leader
    /// to reach them, and initialise only if none did (the lowest peer is
    /// down), so that a new cluster still forms without it. openraft
    /// campaigns on every node it initialises: when every peer initialised,
    /// one started a few ms after the first leader was elected campaigned
    /// too, and its vote (same term, higher node id) deposed that leader,
    /// an election nobody needed on about 1 fresh start in 3.
    ///
    /// # Errors
    /// When the Raft state cannot be read, or initialising fails for another
    /// reason than being initialised already.
    pub async fn bootstrap_if_pristine(self: &Arc<Self>, config: &NodeConfig) -> Result<bool, Error> {
        if config.peers.is_empty() || self.is_initialized().await? {
            return Ok(false);
        }
        let members: BTreeMap<NodeId, BasicNode> =
            config.peers.iter().map(|peer| (peer.id, BasicNode::new(peer.address.clone()))).collect();
        if members.keys().next() == Some(&self.id) {
            self.initialize(members).await?;
            return Ok(true);
        }
        let node = self.clone();
        tokio::spawn(async move {
            // openraft's own notion of initialised: a log entry or a vote.
            let reached = |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
                m.last_log_index.is_some() || m.vote != openraft::Vote::default()
            };
            let wait = node.raft.wait(Some(BOOTSTRAP_DEFER));
            if wait.metrics(reached, "reached by a leader").await.is_ok() {
                return;
            }
            tracing::info!(defer = ?BOOTSTRAP_DEFER, "no leader reached this new node: initialising the cluster here");
            if let Err(error) = node.initialize(members).await {
                tracing::error!(%error, "cannot initialise the cluster");
            }
        });
        Ok(true)
    }

    async fn is_initialized(&self) -> Result<bool, Error> {
        self.raft.is_initialized().await.map_err(|fatal| Error::storage("reading the Raft state", fatal))
    }

    /// Initialises Raft with `members`; initialised already is no error.
    async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), Error> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(error)) => {
                tracing::info!(%error, "already initialised");
                Ok(())
            }
            Err(error) => Err(Error::storage("cannot initialise the cluster", error)),
        }
    }
}
