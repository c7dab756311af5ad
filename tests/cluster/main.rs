//! Cluster tests: real node processes over real gRPC with real sled files.
//! One binary, a module per scenario.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/conformance.rs"]
mod conformance;

mod backup;
mod bad_input;
mod bootstrap;
mod calls;
mod clock;
mod conformance_clusters;
mod dns;
mod early_replication;
mod failover;
mod handover;
mod membership;
mod operations;
mod restart;
mod security;
mod snapshot;
