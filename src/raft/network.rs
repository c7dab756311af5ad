//! The client side of Raft traffic: openraft's `RaftNetworkFactory` and
//! `RaftNetwork` over tonic.
//!
//! Each RPC sends one of openraft's messages postcard-encoded in a
//! `RaftPayload` and decodes the peer's `Result` from the answer. Delivery is
//! not guaranteed: a peer that cannot be reached is reported `Unreachable`,
//! which makes openraft back off instead of retrying in a tight loop.

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::AnyError;
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::Channel;

use super::typ::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse,
    RPCError, RaftError, VoteRequest, VoteResponse,
};
use super::{Node, NodeId, TypeConfig};
use crate::limits;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::RaftPayload;
use crate::transport::Dialer;

/// Makes a [`PeerClient`] per target node, all dialled with one [`Dialer`].
#[derive(Debug, Clone, Default)]
pub struct Network {
    dialer: Dialer,
}

impl Network {
    /// A network that dials peers with `dialer` (TLS identity, token).
    pub fn new(dialer: Dialer) -> Self {
        Network { dialer }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient::new(target, node.clone(), self.dialer.clone())
    }
}

/// Raft RPCs to one peer over a lazily connected gRPC channel.
pub struct PeerClient {
    target: NodeId,
    node: Node,
    client: Option<RaftClient<Channel>>,
    dialer: Dialer,
}

impl PeerClient {
    fn new(target: NodeId, node: Node, dialer: Dialer) -> Self {
        let client = dialer.channel(&node.addr).ok().map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
        });
        PeerClient { target, node, client, dialer }
    }

    /// Encodes `request`, sends it with `send`, and decodes the peer's `Result`.
    async fn call<Req, Resp, E, F, Fut>(
        &mut self,
        request: &Req,
        option: RPCOption,
        send: F,
    ) -> Result<Resp, RPCError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let Some(client) = self.client.clone() else {
            let message = format!("node {} has an invalid address {:?}", self.target, self.node.addr);
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(message))));
        };
        let data = postcard::to_allocvec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut grpc_request = tonic::Request::new(RaftPayload { data });
        grpc_request.set_timeout(option.hard_ttl());
        self.dialer.authorize(&mut grpc_request);
        let response = send(client, grpc_request).await.map_err(|status| status_to_rpc_error(&status))?;
        let result: Result<Resp, RaftError<E>> =
            postcard::from_bytes(&response.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), error)))
    }
}

/// Connection-level failures make openraft back off; anything else is a
/// network error it may retry at once.
fn status_to_rpc_error<E: std::error::Error>(status: &tonic::Status) -> RPCError<E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(status))
        }
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError> {
        self.call(&rpc, option, |mut client, request| async move { client.append_entries(request).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RPCError<InstallSnapshotError>> {
        self.call(&rpc, option, |mut client, request| async move { client.install_snapshot(request).await }).await
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RPCError> {
        self.call(&rpc, option, |mut client, request| async move { client.vote(request).await }).await
    }
}
