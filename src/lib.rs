//! runner-storage: a Raft-replicated `RunnerStorage` for Effect clusters.
//!
//! Effect's `effect/cluster` keeps runner registrations, health, machine ids
//! and shard locks in a `RunnerStorage`. This crate is that storage as a small
//! cluster of its own nodes, with no external database.
//!
//! # Layout
//! - [`model`]: the values (`RunnerAddress`, `Runner`, `ShardId`, …) and their
//!   string forms, byte-exact with Effect.
//! - [`interface`]: the `Encoded` and `RunnerStorage` traits and `make_encoded`.
//! - [`state_machine`]: the pure, deterministic state machine (no I/O, no clock).
//! - [`memory`]: the state machine in process memory, with the local clock.
//! - [`error`], [`limits`], [`clock`]: the error type, every bound, the one clock read.

pub mod backup;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod interface;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod node;
pub mod pb;
// openraft's traits return its StorageError (224 bytes); boxing it at every
// call site would only add allocations on the storage path.
#[allow(clippy::result_large_err)]
pub mod raft;
pub mod service;
pub mod state_machine;
pub mod store_clock;
pub mod transport;

pub use error::{Error, Result};
pub use interface::{make_encoded, Encoded, RunnerStorage};
pub use memory::MemoryRunnerStorage;
