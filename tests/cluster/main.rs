//! Cluster tests: real node processes over real gRPC with real sled files.
//! One binary, a module per scenario.

#[path = "../common/mod.rs"]
mod common;

mod calls;
mod failover;
mod restart;
mod snapshot;
mod membership;
mod bad_input;
