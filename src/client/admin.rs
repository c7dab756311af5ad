//! The administration calls of [`Client`]: status, lock expirations,
//! namespaces, membership, the inspection tables and snapshots.

use super::{Client, ATTEMPT_TIMEOUT};
use crate::error::Result;
use crate::limits;
use crate::pb::admin as admin_pb;
use crate::pb::v1 as pb;
use crate::transport::status::from_status;

impl Client {
    /// `Admin.Status` of the node at `endpoint` (no retries, no redirection).
    ///
    /// # Errors
    /// When the node does not answer.
    pub async fn status_of(&self, endpoint: &str) -> Result<pb::StatusResponse> {
        let mut admin = pb::admin_client::AdminClient::new(self.channel(endpoint)?);
        let request = self.request(pb::StatusRequest { namespace: self.namespace.clone() }, ATTEMPT_TIMEOUT);
        admin.status(request).await.map(tonic::Response::into_inner).map_err(|status| self.explain(endpoint, status))
    }

    /// Sets the lock expiration of this client's namespace.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn set_lock_expiration(&self, lock_expiration_ms: u64) -> Result<()> {
        let message = pb::SetLockExpirationRequest { lock_expiration_ms, namespace: self.namespace.clone() };
        self.request_call(message, ATTEMPT_TIMEOUT, |channel, request| async move {
            pb::admin_client::AdminClient::new(channel).set_lock_expiration(request).await
        })
        .await
        .map(|_| ())
    }

    /// Makes this client's namespace run with `lock_expiration_ms` unless it
    /// was set before to another value (then only with `take_over`);
    /// answers `(E in force, whether it had been set)`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn ensure_lock_expiration(&self, lock_expiration_ms: u64, take_over: bool) -> Result<(u64, bool)> {
        let message = pb::EnsureLockExpirationRequest {
            lock_expiration_ms,
            take_over,
            namespace: self.namespace.clone(),
            request_id: self.request_id(),
        };
        let answer = self
            .request_call(message, ATTEMPT_TIMEOUT, |channel, request| async move {
                pb::admin_client::AdminClient::new(channel).ensure_lock_expiration(request).await
            })
            .await?;
        Ok((answer.lock_expiration_ms, answer.previously_set))
    }

    /// Every namespace with its `E` and counts, on the leader after a read barrier.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_namespaces(&self) -> Result<Vec<pb::NamespaceInfo>> {
        let answer = self
            .request_call(pb::ListNamespacesRequest {}, ATTEMPT_TIMEOUT, |channel, request| async move {
                pb::admin_client::AdminClient::new(channel).list_namespaces(request).await
            })
            .await?;
        Ok(answer.namespaces)
    }

    /// Adds a node as a learner and waits until it caught up (which may
    /// take a snapshot transfer: the attempt may last the whole deadline).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn add_learner(&self, node_id: u64, address: &str) -> Result<admin_pb::MembershipResponse> {
        let message = admin_pb::AddLearnerRequest { node_id, address: address.to_owned() };
        self.request_call(message, self.call_deadline, |channel, request| async move {
            admin_pb::cluster_client::ClusterClient::new(channel).add_learner(request).await
        })
        .await
    }

    /// Makes `voter_ids` exactly the voters.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn change_membership(
        &self,
        voter_ids: Vec<u64>,
        remove_learners: bool,
    ) -> Result<admin_pb::MembershipResponse> {
        let message = admin_pb::ChangeMembershipRequest { voter_ids, remove_learners };
        self.request_call(message, self.call_deadline, |channel, request| async move {
            admin_pb::cluster_client::ClusterClient::new(channel).change_membership(request).await
        })
        .await
    }

    /// Hands leadership to `node_id` (any up-to-date voter when `None`);
    /// answers `(leader id, term)` once another node leads.
    ///
    /// # Errors
    /// As [`Client::call`]; `FailedPrecondition` when leadership did not move.
    pub async fn transfer_leader(&self, node_id: Option<u64>) -> Result<(u64, u64)> {
        let message = admin_pb::TransferLeaderRequest { node_id: node_id.unwrap_or(0) };
        let answer = self
            .request_call(message, self.call_deadline, |channel, request| async move {
                admin_pb::cluster_client::ClusterClient::new(channel).transfer_leader(request).await
            })
            .await?;
        Ok((answer.leader_id, answer.term))
    }

    /// The bytes of a backup file of the replicated state, read on the
    /// leader after a read barrier (`ctl backup`).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn backup(&self) -> Result<Vec<u8>> {
        self.request_call(admin_pb::BackupRequest {}, self.call_deadline, |channel, request| async move {
            let mut cluster = admin_pb::cluster_client::ClusterClient::new(channel)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
            let mut chunks = cluster.backup(request).await?.into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = chunks.message().await? {
                bytes.reserve(usize::try_from(chunk.total_bytes).unwrap_or(0).saturating_sub(bytes.len()));
                bytes.extend_from_slice(&chunk.data);
            }
            Ok(tonic::Response::new(bytes))
        })
        .await
    }

    /// Every runner record, on the leader after a read barrier.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_runners(&self) -> Result<admin_pb::ListRunnersResponse> {
        let message = admin_pb::ListRunnersRequest { namespace: self.namespace.clone() };
        self.request_call(message, ATTEMPT_TIMEOUT, |channel, request| async move {
            admin_pb::inspect_client::InspectClient::new(channel)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                .list_runners(request)
                .await
        })
        .await
    }

    /// Lock records, filtered by group and holder when those are not empty.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_locks(&self, group: &str, address: &str) -> Result<admin_pb::ListLocksResponse> {
        let message = admin_pb::ListLocksRequest {
            group: group.to_owned(),
            address: address.to_owned(),
            namespace: self.namespace.clone(),
        };
        self.request_call(message, ATTEMPT_TIMEOUT, |channel, request| async move {
            admin_pb::inspect_client::InspectClient::new(channel)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                .list_locks(request)
                .await
        })
        .await
    }

    /// Asks the node at `endpoint` to build a snapshot now.
    ///
    /// # Errors
    /// When the node does not answer.
    pub async fn trigger_snapshot(&self, endpoint: &str) -> Result<()> {
        let mut cluster = admin_pb::cluster_client::ClusterClient::new(self.channel(endpoint)?);
        let request = self.request(admin_pb::TriggerSnapshotRequest {}, ATTEMPT_TIMEOUT);
        cluster.trigger_snapshot(request).await.map(|_| ()).map_err(from_status)
    }
}
