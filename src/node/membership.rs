//! Membership changes: a node joins as a learner (probed first, removed
//! again when it cannot catch up), voters are set, a node is removed.

use std::collections::BTreeSet;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};

use super::{not_leader, CallError, Node};
use crate::error::Error;
use crate::limits::{LEARNER_CATCH_UP_TIMEOUT, MEMBERSHIP_CHANGE_TIMEOUT, NEW_NODE_PROBE_TIMEOUT};
use crate::raft::NodeId;
use crate::transport::status;

/// The membership after a change: log index, voters, learners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipView {
    /// Log index of the membership entry.
    pub log_index: u64,
    /// Voting members.
    pub voter_ids: Vec<NodeId>,
    /// Non-voting members.
    pub learner_ids: Vec<NodeId>,
}

impl Node {
    /// Adds `node_id` at `address` as a learner and waits until it caught up.
    ///
    /// # Errors
    /// As [`Node::write`].
    pub async fn add_learner(&self, node_id: NodeId, address: String) -> Result<MembershipView, CallError> {
        if node_id == 0 {
            return Err(Error::InvalidArgument("node_id must be at least 1".into()).into());
        }
        crate::model::RunnerAddress::parse(&address)
            .map_err(|_| Error::InvalidArgument(format!("address {address:?} is not host:port")))?;
        self.probe_new_node(node_id, &address).await?;
        let change = self.raft.add_learner(node_id, BasicNode::new(address.clone()), false);
        let view = Self::membership_result(tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, change).await)?;
        if self.wait_for_learner(node_id, view.log_index).await {
            return Ok(view);
        }
        // A learner that cannot be replicated to (unreachable, or refused by
        // TLS) would stay in the membership forever: take it out again.
        let removal = self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])), false);
        if let Err(error) = Self::membership_result(tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, removal).await) {
            tracing::warn!(node_id, ?error, "could not remove the learner that did not catch up");
        }
        Err(Error::FailedPrecondition(format!(
            "node {node_id} at {address} did not catch up within {LEARNER_CATCH_UP_TIMEOUT:?} \
             (unreachable, or its certificate is not the cluster's?); it was removed again"
        ))
        .into())
    }

    /// Refuses a new node before it enters the membership when it cannot be
    /// a peer: its address is another member's, it cannot be reached the
    /// way peers dial (mutual TLS, token), or it says it is another node.
    async fn probe_new_node(&self, node_id: NodeId, address: &str) -> Result<(), CallError> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let taken = membership
            .membership()
            .nodes()
            .find(|(id, node)| node.addr == address && **id != node_id)
            .map(|(id, _)| *id);
        if let Some(other) = taken {
            return Err(Error::InvalidArgument(format!("address {address} is already node {other}'s")).into());
        }
        let mut request = tonic::Request::new(crate::pb::v1::StatusRequest::default());
        request.set_timeout(NEW_NODE_PROBE_TIMEOUT);
        self.peers.dialer().authorize(&mut request);
        let mut admin = crate::pb::v1::admin_client::AdminClient::new(self.peers.channel(address)?);
        let refused = |reason: String| {
            Err(Error::FailedPrecondition(format!("node {node_id} at {address} cannot join: {reason}")).into())
        };
        match tokio::time::timeout(NEW_NODE_PROBE_TIMEOUT, admin.status(request)).await {
            Ok(Ok(status)) if status.get_ref().node_id != node_id => {
                refused(format!("it is configured as node {}", status.get_ref().node_id))
            }
            Ok(Ok(status)) => match (self.cluster_identity().get(), status.get_ref().cluster_id.as_str()) {
                (Some(ours), theirs) if !theirs.is_empty() && theirs != ours => refused(format!(
                    "it belongs to another cluster ({theirs}; this one is {ours}): wipe its data dir first"
                )),
                _ => Ok(()),
            },
            // Not up yet, maybe: retryable. Refused TLS or token is final.
            Ok(Err(status)) => match status::from_status(status) {
                Error::Unavailable { message, .. } => {
                    Err(Error::unavailable(format!("node {node_id} at {address} is not reachable yet: {message}"))
                        .into())
                }
                error => refused(format!(
                    "it does not answer as a peer ({error}); does it have a certificate of the cluster's CA?"
                )),
            },
            Err(_) => Err(Error::unavailable(format!(
                "node {node_id} at {address} did not answer within {NEW_NODE_PROBE_TIMEOUT:?}"
            ))
            .into()),
        }
    }

    /// Polls the leader's replication progress until `node_id` has matched
    /// `log_index`; false after [`LEARNER_CATCH_UP_TIMEOUT`].
    async fn wait_for_learner(&self, node_id: NodeId, log_index: u64) -> bool {
        let deadline = tokio::time::Instant::now() + LEARNER_CATCH_UP_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let matched = self
                .raft
                .metrics()
                .borrow()
                .replication
                .as_ref()
                .and_then(|progress| progress.get(&node_id).copied().flatten().map(|log_id| log_id.index));
            if matched.is_some_and(|index| index >= log_index) {
                return true;
            }
            tokio::time::sleep(crate::limits::LEARNER_PROGRESS_POLL).await;
        }
        false
    }

    /// Makes `voter_ids` exactly the voters; keeps other members as learners
    /// unless `remove_learners`.
    ///
    /// # Errors
    /// As [`Node::write`]; `InvalidArgument` for an empty voter set.
    pub async fn change_membership(
        &self,
        voter_ids: BTreeSet<NodeId>,
        remove_learners: bool,
    ) -> Result<MembershipView, CallError> {
        if voter_ids.is_empty() {
            return Err(Error::InvalidArgument("voter_ids is empty".into()).into());
        }
        let change =
            tokio::time::timeout(MEMBERSHIP_CHANGE_TIMEOUT, self.raft.change_membership(voter_ids, !remove_learners));
        // openraft answers the change once its uniform entry is applied here.
        // A leader deposed before that (the change removed it and the new
        // voters elected a leader at once) is no longer replicated to, so it
        // would wait out the whole timeout: answer UNAVAILABLE instead, and
        // the client's retry reaches the new leader, where the change is done.
        tokio::select! {
            biased;
            result = change => Self::membership_result(result),
            () = self.deposed(self.is_leader()) => Err(Error::unavailable(
                "this node stopped leading during the membership change; its outcome is unknown, retry"
            )
            .into()),
        }
    }

    /// Completes when this node, leading when `was_leader`, stops leading; never when it was not leading.
    async fn deposed(&self, was_leader: bool) {
        let mut metrics = self.raft.metrics();
        while was_leader && metrics.borrow_and_update().state == ServerState::Leader {
            if metrics.changed().await.is_err() {
                return;
            }
        }
        if !was_leader {
            std::future::pending::<()>().await;
        }
    }

    fn membership_result(
        result: Result<
            Result<
                openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
                crate::raft::typ::RaftError<crate::raft::typ::ClientWriteError>,
            >,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<MembershipView, CallError> {
        let written = result.map_err(|_| Error::unavailable("the membership change did not finish in time"))?;
        match written {
            Ok(response) => {
                let membership = response.membership.unwrap_or_default();
                let voter_ids: Vec<NodeId> = membership.voter_ids().collect();
                let learner_ids = membership.learner_ids().collect();
                Ok(MembershipView { log_index: response.log_id.index, voter_ids, learner_ids })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => Err(not_leader(forward)),
            // openraft checks for a change in progress before it checks for
            // leadership, so a deposed leader still holding the uncommitted
            // entry of an earlier attempt answers InProgress: transient, retry.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                error @ ChangeMembershipError::InProgress(_),
            ))) => Err(Error::unavailable(format!("{error}; retry once it is committed")).into()),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
                Err(Error::FailedPrecondition(error.to_string()).into())
            }
            Err(RaftError::Fatal(fatal)) => Err(Error::unavailable(format!("this node has stopped: {fatal}")).into()),
        }
    }
}
