//! Code generated from `proto/` by tonic-prost-build. Wire types stay at the
//! edge: the service and the client convert them by hand.

#![allow(missing_docs, clippy::all)]

/// The client API: `runner_storage.v1` (public contract).
pub mod v1 {
    tonic::include_proto!("runner_storage.v1");
}

/// Raft traffic between nodes: `runner_storage.raft.v1`.
pub mod raft {
    tonic::include_proto!("runner_storage.raft.v1");
}

/// Cluster administration: `runner_storage.admin.v1`.
pub mod admin {
    tonic::include_proto!("runner_storage.admin.v1");
}

/// The encoded descriptors of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("runner_storage_descriptor");
