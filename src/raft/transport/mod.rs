//! Raft traffic between nodes over tonic: openraft's `RaftNetwork` (the
//! client side), the `runner_storage.raft.v1.Raft` service (the server
//! side), the append streams they share, and the payload codec.
//!
//! - [`network`]: `RaftNetworkFactory`/`RaftNetwork`: one channel per peer.
//! - [`server`]: the Raft gRPC service that feeds the local Raft.
//! - [`append_stream`]: a replication session's appends over one stream.
//! - [`codec`]: openraft's messages as postcard payloads.
//!
//! The transport knows nothing of the openraft 0.9 workarounds
//! (`raft::workarounds`); it reports what it sees through [`RaftEvents`]
//! and lets an [`AppendShortcut`] answer appends, the two narrow interfaces
//! they implement.

pub mod append_stream;
pub mod codec;
pub mod network;
pub mod server;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::Vote;
use tonic::transport::Channel;

use super::typ::{VoteRequest, VoteResponse};
use super::NodeId;
use crate::pb::raft::raft_client::RaftClient;
use crate::transport::Dialer;
use append_stream::StreamSupport;

/// What the transport tells about the votes and appends it carries
/// (`raft::workarounds::election` listens, to hasten elections).
pub trait RaftEvents: Send + Sync + std::fmt::Debug {
    /// An append (entries or heartbeat) or a snapshot chunk from a leader was just handled.
    fn heard_from_leader(&self);
    /// This node answered a peer's vote `request` with `answer`.
    fn vote_answered(&self, request: &VoteRequest, answer: &VoteResponse);
    /// A peer answered this node's vote `request` with `answer`.
    fn vote_received(&self, request: &VoteRequest, answer: &VoteResponse);
}

/// How an [`AppendShortcut`] settles one of openraft's appends.
#[derive(Debug, PartialEq, Eq)]
pub enum EarlyAnswer {
    /// The follower already confirmed these entries: answer success.
    Confirmed,
    /// Nothing early covers them (or it failed): send them as usual.
    SendAsUsual,
    /// The early copy is still unanswered after the RPC's time to live.
    TimedOut,
}

/// Something that may answer an append of entries before the transport
/// sends it (`raft::workarounds::early_replication` on a leader).
pub trait AppendShortcut: Send + Sync + std::fmt::Debug {
    /// openraft's replication to `target` under `vote` is about to send an
    /// append: the shortcut may keep its own link to the peer open.
    fn keep_link(
        &self,
        target: NodeId,
        vote: &Vote<NodeId>,
        client: &RaftClient<Channel>,
        dialer: &Dialer,
        streams: &Arc<StreamSupport>,
    );

    /// How to settle an append under `vote` of entries through `last_index`
    /// to `target`, waiting at most `ttl`.
    fn answer<'a>(
        &'a self,
        target: NodeId,
        vote: &'a Vote<NodeId>,
        last_index: u64,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = EarlyAnswer> + Send + 'a>>;
}
