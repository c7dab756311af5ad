//! The client side of Raft traffic: openraft's `RaftNetworkFactory` and
//! `RaftNetwork` over tonic.
//!
//! Each RPC sends one of openraft's messages postcard-encoded in a
//! `RaftPayload` and decodes the peer's `Result` from the answer. Delivery is
//! not guaranteed: a peer that cannot be reached is reported `Unreachable`,
//! which makes openraft back off instead of retrying in a tight loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::AnyError;
use serde::{de::DeserializeOwned, Serialize};
use tonic::transport::Channel;

use super::append_stream::{AppendStream, StreamSupport};
use super::{AppendShortcut, EarlyAnswer, RaftEvents};
use crate::limits;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::RaftPayload;
use crate::raft::typ::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse,
    RPCError, RaftError, VoteRequest, VoteResponse,
};
use crate::raft::{Node, NodeId, TypeConfig};
use crate::transport::Dialer;

/// Makes a [`PeerClient`] per target node, all dialled with one [`Dialer`].
///
/// Channels are cached per address: openraft asks for a new client for every
/// leadership check (each linearizable read round), and a fresh channel would
/// mean a new TCP and HTTP/2 handshake each time. One HTTP/2 connection per
/// peer carries replication (one stream per session, see [`AppendStream`]),
/// heartbeats, votes and read checks alike.
#[derive(Debug, Clone)]
pub struct Network {
    dialer: Dialer,
    peers: Arc<Mutex<HashMap<String, Peer>>>,
    events: Arc<dyn RaftEvents>,
    unreachable_backoff: Duration,
    shortcut: Option<Arc<dyn AppendShortcut>>,
}

impl Network {
    /// A network that dials peers with `dialer` (TLS identity, token),
    /// reports the votes it receives to `events`, and retries a peer it
    /// cannot reach every `unreachable_backoff` (see [`PeerClient::backoff`]).
    /// With a `shortcut`, appends it can answer are not sent (early
    /// replication: the followers took the entries already).
    pub fn new(
        dialer: Dialer,
        events: Arc<dyn RaftEvents>,
        unreachable_backoff: Duration,
        shortcut: Option<Arc<dyn AppendShortcut>>,
    ) -> Self {
        Network { dialer, peers: Arc::default(), events, unreachable_backoff, shortcut }
    }

    fn peer(&self, address: &str) -> Option<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(peer) = peers.get(address) {
            return Some(peer.clone());
        }
        let peer = Peer { channel: self.dialer.channel(address).ok()?, streams: Arc::default() };
        peers.insert(address.to_owned(), peer.clone());
        Some(peer)
    }
}

/// What every client to one peer address shares.
#[derive(Debug, Clone)]
struct Peer {
    channel: Channel,
    streams: Arc<StreamSupport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        let peer = self.peer(&node.addr);
        let (dialer, events) = (self.dialer.clone(), self.events.clone());
        let mut client = PeerClient::new(target, node.clone(), peer, dialer, events, self.unreachable_backoff);
        client.shortcut = self.shortcut.clone();
        client
    }
}

/// Raft RPCs to one peer over a lazily connected gRPC channel.
///
/// openraft keeps one `PeerClient` per replication session, so its
/// AppendEntries share one [`AppendStream`], opened by the first of them.
pub struct PeerClient {
    target: NodeId,
    node: Node,
    client: Option<RaftClient<Channel>>,
    dialer: Dialer,
    events: Arc<dyn RaftEvents>,
    /// The open append stream, if any; taken out during each exchange, so a
    /// failed or timed-out exchange leaves none.
    appends: Option<AppendStream>,
    /// Whether the peer takes append streams; `None` with an invalid address.
    streams: Option<Arc<StreamSupport>>,
    unreachable_backoff: Duration,
    shortcut: Option<Arc<dyn AppendShortcut>>,
}

impl PeerClient {
    fn new(
        target: NodeId,
        node: Node,
        peer: Option<Peer>,
        dialer: Dialer,
        events: Arc<dyn RaftEvents>,
        unreachable_backoff: Duration,
    ) -> Self {
        let streams = peer.as_ref().map(|peer| peer.streams.clone());
        let client = peer.map(|Peer { channel, .. }| {
            RaftClient::new(channel)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
        });
        PeerClient { target, node, client, dialer, events, appends: None, streams, unreachable_backoff, shortcut: None }
    }

    fn client<E: std::error::Error>(&self) -> Result<RaftClient<Channel>, RPCError<E>> {
        self.client.clone().ok_or_else(|| {
            let message = format!("node {} has an invalid address {:?}", self.target, self.node.addr);
            RPCError::Unreachable(Unreachable::new(&AnyError::error(message)))
        })
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
        let client = self.client()?;
        let mut grpc_request = tonic::Request::new(encode_request(request)?);
        grpc_request.set_timeout(option.hard_ttl());
        self.dialer.authorize(&mut grpc_request);
        let response = send(client, grpc_request).await.map_err(|status| status_to_rpc_error(&status))?;
        self.decode_answer(&response.into_inner())
    }

    /// The peer's `Result` from its answer payload.
    fn decode_answer<Resp, E>(&self, answer: &RaftPayload) -> Result<Resp, RPCError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<E>> = super::codec::decode_payload(&answer.data)
            .map_err(|status| RPCError::Network(NetworkError::new(&status)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), error)))
    }

    /// One AppendEntries on `stream`; the stream is kept for the next one
    /// only when this exchange completed within `ttl`.
    async fn append_on_stream(
        &mut self,
        stream: StreamStep,
        payload: RaftPayload,
        ttl: Duration,
    ) -> Result<RaftPayload, tonic::Status> {
        let exchange = async {
            match stream {
                StreamStep::Reuse(mut stream) => stream.exchange(payload).await.map(|answer| (stream, answer)),
                StreamStep::Open(mut client) => AppendStream::open(&mut client, &self.dialer, payload).await,
            }
        };
        let (stream, answer) = tokio::time::timeout(ttl, exchange)
            .await
            .map_err(|_| tonic::Status::deadline_exceeded(format!("no append answer within {ttl:?}")))??;
        self.appends = Some(stream);
        Ok(answer)
    }

    /// Keeps the early link to this peer open for `rpc`'s vote, and answers
    /// `rpc` from the peer's answer to an early copy of its entries, if any.
    async fn early_answer(&self, rpc: &AppendEntriesRequest, ttl: Duration) -> EarlyAnswer {
        let (Some(shortcut), Some(client), Some(streams)) = (&self.shortcut, &self.client, &self.streams) else {
            return EarlyAnswer::SendAsUsual;
        };
        shortcut.keep_link(self.target, &rpc.vote, client, &self.dialer, streams);
        match rpc.entries.last() {
            Some(last) => shortcut.answer(self.target, &rpc.vote, last.log_id.index, ttl).await,
            None => EarlyAnswer::SendAsUsual,
        }
    }
}

/// The stream an AppendEntries goes on: the session's open one, or a new
/// one opened on the peer's client.
enum StreamStep {
    Reuse(AppendStream),
    Open(RaftClient<Channel>),
}

fn encode_request<Req: Serialize, E: std::error::Error>(request: &Req) -> Result<RaftPayload, RPCError<E>> {
    super::codec::encode_payload(request).map_err(|status| RPCError::Network(NetworkError::new(&status)))
}

/// A peer that cannot be connected to is `Unreachable`: openraft then backs
/// off ([`PeerClient::backoff`]) instead of retrying in a tight loop. A call that merely timed
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
        match self.early_answer(&rpc, option.hard_ttl()).await {
            EarlyAnswer::Confirmed => return Ok(AppendEntriesResponse::Success),
            EarlyAnswer::TimedOut => {
                let status = tonic::Status::deadline_exceeded("the early copy of these entries is unanswered");
                return Err(status_to_rpc_error(&status));
            }
            EarlyAnswer::SendAsUsual => {}
        }
        // An open stream carries the session's appends with no lock or clone;
        // the peer's stream support is consulted only to open one.
        let (step, streams) = match self.appends.take() {
            Some(stream) => (Some(StreamStep::Reuse(stream)), None),
            None => match &self.streams {
                Some(streams) if streams.may_open() => (Some(StreamStep::Open(self.client()?)), Some(streams.clone())),
                _ => (None, None),
            },
        };
        if let Some(step) = step {
            let payload = encode_request(&rpc)?;
            match self.append_on_stream(step, payload, option.hard_ttl()).await {
                Ok(answer) => {
                    if let Some(streams) = streams {
                        streams.accepted();
                    }
                    return self.decode_answer(&answer);
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    if streams.is_some_and(|streams| streams.refused()) {
                        tracing::info!(
                            peer = self.target,
                            "peer takes no append stream (older release): unary appends"
                        );
                    }
                }
                Err(status) => return Err(status_to_rpc_error(&status)),
            }
        }
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
            self.events.vote_received(&rpc, answer);
        }
        answer
    }

    /// Retries an unreachable peer every heartbeat interval, at most
    /// [`limits::PEER_UNREACHABLE_BACKOFF_MAX`] (openraft's default is
    /// 500 ms). A node that comes up should hear from the leader before its
    /// own election timer (more than two heartbeats, see `config.rs`) fires:
    /// else it campaigns, and the leader, seeing the higher vote in the
    /// append's answer, steps down for an election nobody needed. A fixed
    /// 100 ms against the default 110–160 ms timeout left next to no margin.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.unreachable_backoff))
    }
}
