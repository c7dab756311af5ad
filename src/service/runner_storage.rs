//! The eight calls of `runner_storage.v1.RunnerStorage`: each turns its
//! message into a [`Command`] (or a read), runs it through the [`Node`], and
//! encodes the answer. Validation happens in `Node::write` before proposing.

use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::answer_or_forward;
use crate::model::RequestId;
use crate::node::{CallError, Node};
use crate::pb::v1 as pb;
use crate::pb::v1::runner_storage_client::RunnerStorageClient;
use crate::state_machine::Reply;
use crate::state_machine::{namespace_or_default, shard_id_texts, validate_namespace, Command, NamespaceName};

/// The client API service of one node.
pub struct RunnerStorageService {
    node: Arc<Node>,
}

impl RunnerStorageService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        RunnerStorageService { node }
    }

    /// Proposes `command` in `namespace` (`""`: the default) and shapes the
    /// reply with `answer`.
    async fn write<R>(
        &self,
        namespace: NamespaceName,
        request_id: Option<pb::RequestId>,
        command: Command,
        answer: impl FnOnce(crate::state_machine::Reply) -> crate::Result<R>,
    ) -> Result<R, CallError> {
        let request_id = request_id.map(|id| RequestId { client_id: id.client_id, sequence: id.sequence });
        let reply = self.node.write(namespace, request_id, command).await?;
        Ok(answer(reply)?)
    }
}

impl RunnerStorageService {
    /// `GetRunners` of `namespace`, read here after the read barrier.
    async fn get_runners_in(&self, namespace: NamespaceName) -> Result<pb::GetRunnersResponse, CallError> {
        validate_namespace(&namespace)?;
        let runners = self.node.read(|state, now_ms| state.get_runners(&namespace, now_ms)).await?;
        let runners = runners.into_iter().map(|(runner, healthy)| pb::RunnerEntry { runner, healthy }).collect();
        Ok(pb::GetRunnersResponse { runners })
    }
}

fn client(channel: Channel) -> RunnerStorageClient<Channel> {
    RunnerStorageClient::new(channel)
        .max_decoding_message_size(crate::limits::GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::limits::GRPC_MESSAGE_BYTES_MAX)
}

#[tonic::async_trait]
impl pb::runner_storage_server::RunnerStorage for RunnerStorageService {
    async fn get_runners(
        &self,
        request: Request<pb::GetRunnersRequest>,
    ) -> Result<Response<pb::GetRunnersResponse>, Status> {
        let local = |m: &pb::GetRunnersRequest| {
            let namespace = namespace_or_default(&m.namespace);
            self.get_runners_in(namespace)
        };
        answer_or_forward(
            "get_runners",
            request,
            local,
            |c, r| async move { client(c).get_runners(r).await },
            &self.node,
        )
        .await
    }

    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let local = |m: &pb::RegisterRequest| {
            let command =
                Command::Register { address: m.address.clone(), runner: m.runner.clone(), healthy: m.healthy };
            let machine_id =
                self.write(namespace_or_default(&m.namespace), m.request_id.clone(), command, Reply::into_machine_id);
            async move { Ok(pb::RegisterResponse { machine_id: machine_id.await? }) }
        };
        answer_or_forward("register", request, local, |c, r| async move { client(c).register(r).await }, &self.node)
            .await
    }

    async fn unregister(
        &self,
        request: Request<pb::UnregisterRequest>,
    ) -> Result<Response<pb::UnregisterResponse>, Status> {
        let local = |m: &pb::UnregisterRequest| {
            let done = self.write(
                namespace_or_default(&m.namespace),
                m.request_id.clone(),
                Command::Unregister { address: m.address.clone() },
                Reply::into_done,
            );
            async move { done.await.map(|()| pb::UnregisterResponse {}) }
        };
        answer_or_forward("unregister", request, local, |c, r| async move { client(c).unregister(r).await }, &self.node)
            .await
    }

    async fn set_runner_health(
        &self,
        request: Request<pb::SetRunnerHealthRequest>,
    ) -> Result<Response<pb::SetRunnerHealthResponse>, Status> {
        let local = |m: &pb::SetRunnerHealthRequest| {
            let command = Command::SetRunnerHealth { address: m.address.clone(), healthy: m.healthy };
            let done = self.write(namespace_or_default(&m.namespace), m.request_id.clone(), command, Reply::into_done);
            async move { done.await.map(|()| pb::SetRunnerHealthResponse {}) }
        };
        answer_or_forward(
            "set_runner_health",
            request,
            local,
            |c, r| async move { client(c).set_runner_health(r).await },
            &self.node,
        )
        .await
    }

    async fn acquire(&self, request: Request<pb::AcquireRequest>) -> Result<Response<pb::ShardIdsResponse>, Status> {
        let local = |m: &pb::AcquireRequest| {
            let command = Command::Acquire { address: m.address.clone(), shard_ids: shard_id_texts(&m.shard_ids) };
            let shard_ids =
                self.write(namespace_or_default(&m.namespace), m.request_id.clone(), command, Reply::into_shard_ids);
            async move { Ok(pb::ShardIdsResponse { shard_ids: shard_ids.await? }) }
        };
        answer_or_forward("acquire", request, local, |c, r| async move { client(c).acquire(r).await }, &self.node).await
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Result<Response<pb::ShardIdsResponse>, Status> {
        let local = |m: &pb::RefreshRequest| {
            let command = Command::Refresh { address: m.address.clone(), shard_ids: shard_id_texts(&m.shard_ids) };
            let shard_ids =
                self.write(namespace_or_default(&m.namespace), m.request_id.clone(), command, Reply::into_shard_ids);
            async move { Ok(pb::ShardIdsResponse { shard_ids: shard_ids.await? }) }
        };
        answer_or_forward("refresh", request, local, |c, r| async move { client(c).refresh(r).await }, &self.node).await
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let local = |m: &pb::ReleaseRequest| {
            let command = Command::Release { address: m.address.clone(), shard_id: m.shard_id.as_str().into() };
            let done = self.write(namespace_or_default(&m.namespace), m.request_id.clone(), command, Reply::into_done);
            async move { done.await.map(|()| pb::ReleaseResponse {}) }
        };
        answer_or_forward("release", request, local, |c, r| async move { client(c).release(r).await }, &self.node).await
    }

    async fn release_all(
        &self,
        request: Request<pb::ReleaseAllRequest>,
    ) -> Result<Response<pb::ReleaseAllResponse>, Status> {
        let local = |m: &pb::ReleaseAllRequest| {
            let done = self.write(
                namespace_or_default(&m.namespace),
                m.request_id.clone(),
                Command::ReleaseAll { address: m.address.clone() },
                Reply::into_done,
            );
            async move { done.await.map(|()| pb::ReleaseAllResponse {}) }
        };
        answer_or_forward(
            "release_all",
            request,
            local,
            |c, r| async move { client(c).release_all(r).await },
            &self.node,
        )
        .await
    }
}
