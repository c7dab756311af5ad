//! The client side of Raft traffic: openraft's `RaftNetworkFactory` and
//! `RaftNetwork` over tonic.
//!
//! Each RPC sends one of openraft's messages postcard-encoded in a
//! `RaftPayload` and decodes the peer's `Result` from the answer. Delivery is
//! not guaranteed: a peer that cannot be reached is reported `Unreachable`,
//! which makes openraft back off instead of retrying in a tight loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::AnyError;
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::Channel;

use super::election::Nudges;
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
///
/// Channels are cached per address: openraft asks for a new client for every
/// leadership check (each linearizable read round), and a fresh channel would
/// mean a new TCP and HTTP/2 handshake each time. One HTTP/2 connection per
/// peer carries replication, heartbeats, votes and read checks alike.
#[derive(Debug, Clone)]
pub struct Network {
    dialer: Dialer,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    nudges: Nudges,
}

impl Network {
    /// A network that dials peers with `dialer` (TLS identity, token) and
    /// reports the votes it receives to `nudges`.
    pub fn new(dialer: Dialer, nudges: Nudges) -> Self {
        Network { dialer, channels: Arc::default(), nudges }
    }

    fn channel(&self, address: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(address) {
            return Some(channel.clone());
        }
        let channel = self.dialer.channel(address).ok()?;
        channels.insert(address.to_owned(), channel.clone());
        Some(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let channel = self.channel(&node.addr);
        PeerClient::new(target, node.clone(), channel, self.dialer.clone(), self.nudges.clone())
    }
}

/// Raft RPCs to one peer over a lazily connected gRPC channel.
pub struct PeerClient {
    target: NodeId,
    node: Node,
    client: Option<RaftClient<Channel>>,
    dialer: Dialer,
    nudges: Nudges,
}

impl PeerClient {
    fn new(target: NodeId, node: Node, channel: Option<Channel>, dialer: Dialer, nudges: Nudges) -> Self {
        let client = channel.map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
        });
        PeerClient { target, node, client, dialer, nudges }
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

/// A peer that cannot be connected to is `Unreachable`: openraft then backs
/// off ([`limits::PEER_UNREACHABLE_BACKOFF`]) instead of retrying in a tight loop. A call that merely timed
/// out (openraft's per-RPC timeout is one heartbeat interval) is a network
/// error it retries at once: backing off there stalls every write by 500 ms
/// whenever a follower is briefly slow.
fn status_to_rpc_error<E: std::error::Error>(status: &tonic::Status) -> RPCError<E> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
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
        let answer = self.call(&rpc, option, |mut client, request| async move { client.vote(request).await }).await;
        if let Ok(answer) = &answer {
            self.nudges.vote_received(&rpc, answer);
        }
        answer
    }

    /// Retries an unreachable peer every [`limits::PEER_UNREACHABLE_BACKOFF`]
    /// (openraft's default is 500 ms): a restarted node hears from the
    /// leader within that time of coming up, not up to half a second later.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(limits::PEER_UNREACHABLE_BACKOFF))
    }
}
