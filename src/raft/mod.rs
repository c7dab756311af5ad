//! Replication: openraft's types for runner-storage, the sled stores, and the
//! gRPC transport between nodes.
//!
//! - [`election`]: campaigns at once when an election's outcome is clear.
//! - [`log_store`]: the Raft log, vote and markers in sled, group-committed.
//! - [`sm_store`]: applies entries to the pure state machine; snapshots.
//! - [`network`]: the client side of Raft RPCs to peers (tonic).
//! - [`quorum`]: whether a leader still hears from a quorum.
//! - [`server`]: the server side of Raft RPCs from peers (tonic).
//! - [`append_stream`]: replication over one gRPC stream per session.
//! - [`early_replication`]: the leader sends entries while its flush runs.
//! - [`sled_schema`]: every tree and key on disk.
//! - [`data_dir`]: the data dir's layout, format version and the syncs
//!   that make it durable; [`snapshot_file`]: the snapshot, as a file.

pub mod append_stream;
pub mod data_dir;
pub mod early_replication;
pub mod election;
pub mod log_store;
pub mod network;
pub mod quorum;
pub mod recent_entries;
pub mod server;
pub mod sled_schema;
pub mod sm_store;
pub mod snapshot_file;

use crate::state_machine::{Envelope, Reply};

openraft::declare_raft_types!(
    /// openraft's type configuration for runner-storage: a log entry carries
    /// a batch of [`Envelope`]s and applying it yields one [`Reply`] each.
    /// The batch is shared (`Arc`), so the log store's in-memory tail hands
    /// out entries without copying them; it encodes exactly as a `Vec` would.
    pub TypeConfig:
        D = std::sync::Arc<[Envelope]>,
        R = Vec<Reply>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node's id within the cluster.
pub type NodeId = u64;
/// What the cluster knows of a node: its gRPC address.
pub type Node = openraft::BasicNode;
/// The Raft handle of a node.
pub type Raft = openraft::Raft<TypeConfig>;

/// Whether `vote` is `node`'s own committed vote: `node` leads under it
/// (and openraft 0.9 would resume leading under it after a restart).
pub fn is_leader_vote(vote: &openraft::Vote<NodeId>, node: NodeId) -> bool {
    vote.is_committed() && vote.leader_id().voted_for() == Some(node)
}

/// Short names for openraft's generic types under [`TypeConfig`].
pub mod typ {
    use super::{Node, NodeId, TypeConfig};

    /// Error of a Raft API call.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    /// Error of a Raft RPC to a peer.
    pub type RPCError<E = openraft::error::Infallible> = openraft::error::RPCError<NodeId, Node, RaftError<E>>;
    /// Error of `client_write`.
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, Node>;
    /// Error of `ensure_linearizable`.
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<NodeId, Node>;
    /// The leader to forward to, when a node is not it.
    pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, Node>;
    /// Error of installing a snapshot.
    pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
    /// Append-entries request.
    pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
    /// Append-entries response.
    pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
    /// Vote request.
    pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
    /// Vote response.
    pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
    /// Snapshot chunk request.
    pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
    /// Snapshot chunk response.
    pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
}
