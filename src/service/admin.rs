//! Administration: `runner_storage.v1.Admin` (status, lock expiration) and
//! `runner_storage.admin.v1.Cluster` (membership, snapshots).
//!
//! `Status` and `TriggerSnapshot` answer from the node that receives them;
//! everything that changes the cluster goes to the leader.

use std::sync::Arc;

use openraft::ServerState;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::answer_or_forward;
use crate::model::RequestId;
use crate::node::membership::MembershipView;
use crate::node::Node;
use crate::pb::admin as admin_pb;
use crate::pb::v1 as pb;
use crate::state_machine::Reply;
use crate::state_machine::{namespace_or_default, validate_namespace, Command, State};
use crate::transport::status;

/// The `Admin` service of one node.
pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        AdminService { node }
    }
}

/// The role names of `StatusResponse.role`.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let namespace = namespace_or_default(&request.get_ref().namespace);
        validate_namespace(&namespace).map_err(status::to_status)?;
        let metrics = self.node.raft().metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member { node_id: *id, address: node.addr.clone(), voter: voters.contains(id) })
            .collect();
        let leader_id = metrics.current_leader.unwrap_or(0);
        let leader_address = metrics
            .current_leader
            .and_then(|leader| membership.get_node(&leader))
            .map(|node| node.addr.clone())
            .unwrap_or_default();
        let lock_expiration_ms = self.node.local_view(|applied| applied.state.lock_expiration_ms(&namespace));
        let view = self.node.raft_view();
        Ok(Response::new(pb::StatusResponse {
            node_id: self.node.id,
            role: role_name(metrics.state).into(),
            leader_id,
            leader_address,
            term: metrics.current_term,
            commit_index: self.node.committed_index(),
            applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            members,
            lock_expiration_ms,
            snapshot_index: view.snapshot_index,
            snapshot_bytes: view.snapshot_bytes,
            resident_memory_bytes: view.resident_memory_bytes,
            disk_bytes: view.disk_bytes,
            wall_clock_ms: crate::clock::wall_clock_ms(),
            store_time_ms: self.node.store_time_ms_for_views(),
            cluster_id: self.node.cluster_identity().get().unwrap_or_default(),
        }))
    }

    async fn set_lock_expiration(
        &self,
        request: Request<pb::SetLockExpirationRequest>,
    ) -> Result<Response<pb::SetLockExpirationResponse>, Status> {
        let local = |m: &pb::SetLockExpirationRequest| {
            let command = Command::SetLockExpiration { lock_expiration_ms: m.lock_expiration_ms };
            let namespace = namespace_or_default(&m.namespace);
            async move {
                Reply::into_done(self.node.write(namespace, None, command).await?)?;
                Ok(pb::SetLockExpirationResponse {})
            }
        };
        let forward = |c: Channel, r| async move { pb::admin_client::AdminClient::new(c).set_lock_expiration(r).await };
        answer_or_forward("set_lock_expiration", request, local, forward, &self.node).await
    }

    async fn ensure_lock_expiration(
        &self,
        request: Request<pb::EnsureLockExpirationRequest>,
    ) -> Result<Response<pb::EnsureLockExpirationResponse>, Status> {
        let local = |m: &pb::EnsureLockExpirationRequest| {
            let command =
                Command::EnsureLockExpiration { lock_expiration_ms: m.lock_expiration_ms, take_over: m.take_over };
            let namespace = namespace_or_default(&m.namespace);
            let request_id =
                m.request_id.clone().map(|id| RequestId { client_id: id.client_id, sequence: id.sequence });
            async move {
                let reply = self.node.write(namespace, request_id, command).await?;
                let (lock_expiration_ms, previously_set) = reply.into_lock_expiration()?;
                Ok(pb::EnsureLockExpirationResponse { lock_expiration_ms, previously_set })
            }
        };
        let forward =
            |c: Channel, r| async move { pb::admin_client::AdminClient::new(c).ensure_lock_expiration(r).await };
        answer_or_forward("ensure_lock_expiration", request, local, forward, &self.node).await
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let local = |_: &pb::ListNamespacesRequest| async {
            let namespaces = self.node.read(namespace_infos).await?;
            Ok(pb::ListNamespacesResponse { namespaces })
        };
        let forward = |c: Channel, r| async move { pb::admin_client::AdminClient::new(c).list_namespaces(r).await };
        answer_or_forward("list_namespaces", request, local, forward, &self.node).await
    }
}

/// Every namespace that holds a record or a setting, with its `E` and counts at `now_ms`.
fn namespace_infos(state: &State, now_ms: u64) -> Vec<pb::NamespaceInfo> {
    let now_ms = now_ms.max(state.now_ms());
    state
        .namespaces()
        .iter()
        .map(|(name, namespace)| {
            let live_runners = namespace.runners().values().filter(|r| namespace.is_live(r, now_ms)).count();
            let held_locks = namespace.locks().values().filter(|l| namespace.is_held(l, now_ms)).count();
            pb::NamespaceInfo {
                namespace: name.to_string(),
                lock_expiration_ms: namespace.lock_expiration_ms(),
                lock_expiration_set: namespace.lock_expiration_set(),
                runners: namespace.runners().len() as u64,
                live_runners: live_runners as u64,
                locks: namespace.locks().len() as u64,
                held_locks: held_locks as u64,
                runners_max: namespace.caps().runners_max as u64,
                locks_max: namespace.caps().locks_max as u64,
            }
        })
        .collect()
}

/// The `Cluster` service of one node.
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

fn membership_response(view: MembershipView) -> admin_pb::MembershipResponse {
    admin_pb::MembershipResponse { log_index: view.log_index, voter_ids: view.voter_ids, learner_ids: view.learner_ids }
}

fn cluster_client(channel: Channel) -> admin_pb::cluster_client::ClusterClient<Channel> {
    admin_pb::cluster_client::ClusterClient::new(channel)
}

#[tonic::async_trait]
impl admin_pb::cluster_server::Cluster for ClusterService {
    async fn add_learner(
        &self,
        request: Request<admin_pb::AddLearnerRequest>,
    ) -> Result<Response<admin_pb::MembershipResponse>, Status> {
        let local = |m: &admin_pb::AddLearnerRequest| {
            let (node_id, address) = (m.node_id, m.address.clone());
            async move { Ok(membership_response(self.node.add_learner(node_id, address).await?)) }
        };
        answer_or_forward(
            "add_learner",
            request,
            local,
            |c, r| async move { cluster_client(c).add_learner(r).await },
            &self.node,
        )
        .await
    }

    async fn change_membership(
        &self,
        request: Request<admin_pb::ChangeMembershipRequest>,
    ) -> Result<Response<admin_pb::MembershipResponse>, Status> {
        let local = |m: &admin_pb::ChangeMembershipRequest| {
            let (voter_ids, remove_learners) = (m.voter_ids.iter().copied().collect(), m.remove_learners);
            async move { Ok(membership_response(self.node.change_membership(voter_ids, remove_learners).await?)) }
        };
        let forward = |c, r| async move { cluster_client(c).change_membership(r).await };
        answer_or_forward("change_membership", request, local, forward, &self.node).await
    }

    async fn transfer_leader(
        &self,
        request: Request<admin_pb::TransferLeaderRequest>,
    ) -> Result<Response<admin_pb::TransferLeaderResponse>, Status> {
        let local = |m: &admin_pb::TransferLeaderRequest| {
            let target = (m.node_id != 0).then_some(m.node_id);
            async move {
                let leader_id = self.node.transfer_leadership(target, crate::limits::HANDOVER_TIMEOUT).await?;
                let term = self.node.raft().metrics().borrow().current_term;
                Ok(admin_pb::TransferLeaderResponse { leader_id, term })
            }
        };
        let forward = |c, r| async move { cluster_client(c).transfer_leader(r).await };
        answer_or_forward("transfer_leader", request, local, forward, &self.node).await
    }

    type BackupStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<admin_pb::BackupChunk, Status>> + Send + 'static>>;

    async fn backup(&self, _request: Request<admin_pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let taken = self.node.read_applied(|applied, _now_ms| crate::backup::Backup {
            last_applied: applied.last_applied,
            membership: applied.last_membership.clone(),
            state: applied.state.clone(),
            taken_at_ms: crate::clock::wall_clock_ms(),
        });
        let backup = taken.await.map_err(super::call_error_status)?;
        let encoded = tokio::task::spawn_blocking(move || backup.to_bytes()).await;
        let bytes = encoded.map_err(|e| Status::internal(e.to_string()))?.map_err(status::to_status)?;
        let total_bytes = bytes.len() as u64;
        let chunks: Vec<Result<admin_pb::BackupChunk, Status>> = bytes
            .chunks(crate::limits::SNAPSHOT_CHUNK_BYTES)
            .map(|chunk| Ok(admin_pb::BackupChunk { data: chunk.to_vec(), total_bytes }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn trigger_snapshot(
        &self,
        _request: Request<admin_pb::TriggerSnapshotRequest>,
    ) -> Result<Response<admin_pb::TriggerSnapshotResponse>, Status> {
        self.node.raft().trigger().snapshot().await.map_err(|fatal| Status::unavailable(fatal.to_string()))?;
        Ok(Response::new(admin_pb::TriggerSnapshotResponse {}))
    }
}
