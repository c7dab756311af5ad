//! A node's Raft storage on its data dir: openraft's `RaftLogStorage` and
//! `RaftStateMachine`, on sled and a snapshot file, made durable by real
//! syncs before anything that depends on them is acknowledged.
//!
//! - [`data_dir`]: the dir's layout and format version, and the syncs that
//!   make sled's writes survive a power cut.
//! - [`sled_schema`]: every sled tree and key, and their encodings.
//! - [`log_store`]: the log, vote and markers, group-committed; checked at
//!   open and on reads; tells an [`AppendObserver`](log_store::AppendObserver)
//!   of the leader's appends.
//! - [`recent_entries`]: the log's tail kept decoded, so openraft's reads of
//!   what it just appended touch no sled page.
//! - [`sm_store`]: applies entries to the pure state machine; snapshots.
//! - [`snapshot_file`]: the latest snapshot, written whole or not at all.
//!
//! Nothing here knows the network or the workarounds above it.

pub mod data_dir;
pub mod log_store;
pub mod recent_entries;
pub mod sled_schema;
pub mod sm_store;
pub mod snapshot_file;
