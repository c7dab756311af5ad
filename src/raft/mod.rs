//! Replication: openraft's types for runner-storage, and the three parts
//! under them, each importing only the ones before it:
//!
//! - [`storage`]: the log, vote, state machine and snapshots on the data dir.
//! - [`transport`]: Raft traffic between nodes over tonic.
//! - [`workarounds`]: what openraft 0.9 lacks, behind narrow interfaces.

pub mod storage;
pub mod transport;
pub mod workarounds;

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
