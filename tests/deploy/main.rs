//! deploy/ against the real node. The Kubernetes manifests (as kustomize
//! renders them), the entrypoint that renders each pod's config, the systemd
//! unit and the Dockerfile may name only ports, probes, paths, subcommands
//! and flags that the node really has: configs rendered by the real
//! entrypoint load with `NodeConfig::load`, and real nodes started from them
//! (on loopback ports and temp data dirs instead of pod addresses and volumes)
//! answer the probes. What cannot run here (an image build, a Kubernetes API,
//! systemd) is checked as far as files allow; deploy/README.md says how far.
//!
//! yaml-rust2 reads YAML 1.2 and Kubernetes YAML 1.1: the manifests quote
//! every scalar the two read differently (`"true"`, `"3"`, octal modes).

// Test code: a failed unwrap is a failed test (tests/common unwraps).
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;

mod docker;
mod kubernetes;
mod manifests;
mod pods;
mod systemd;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// The namespace the rendered configs are for (any name would do).
pub(crate) const NAMESPACE: &str = "deploy-test";
/// The token every test node requires.
pub(crate) const TOKEN: &str = "deploy-test-token";
/// Longest wait for nodes to elect a leader and report it.
pub(crate) const SERVING_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

pub(crate) fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}
