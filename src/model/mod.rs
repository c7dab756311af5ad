//! The values of Effect's cluster: [`RunnerAddress`], [`Runner`], [`ShardId`],
//! [`MachineId`] and the [`RequestId`] of a write.
//!
//! A value that exists is valid: constructors and parsers check every rule of
//! SPEC §6, so code holding one never re-checks it. The string forms, which
//! must be byte-exact with Effect, live in [`encoding`].

pub mod encoding;

use crate::error::{Error, Result};
use crate::limits;

/// Where a runner listens: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunnerAddress {
    /// Host name or IP (may itself contain `:`, e.g. IPv6).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl RunnerAddress {
    /// A runner address.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        RunnerAddress { host: host.into(), port }
    }
}

/// A runner as Effect describes it: its address, shard groups and weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    /// Where the runner listens.
    pub address: RunnerAddress,
    /// The shard groups it serves.
    pub groups: Vec<String>,
    /// Relative weight in shard assignment (a finite number).
    pub weight: f64,
}

/// A shard: a group name and a number within it (`group:id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId {
    /// The shard group.
    pub group: String,
    /// The shard number within the group.
    pub id: i64,
}

impl ShardId {
    /// A shard id.
    pub fn new(group: impl Into<String>, id: i64) -> Self {
        ShardId { group: group.into(), id }
    }
}

/// The number a runner gets at registration; Effect's Snowflake ids use it mod 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct MachineId(pub i64);

/// Identifies one write of one client, so that a retry is applied once (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RequestId {
    /// A client's id, unique per client instance.
    pub client_id: String,
    /// The client's sequence number for this write.
    pub sequence: u64,
}

impl RequestId {
    /// Checks the client id's length.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the client id is empty or too long.
    pub fn validate(&self) -> Result<()> {
        if self.client_id.is_empty() || self.client_id.len() > limits::CLIENT_ID_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "request_id.client_id must be 1..={} bytes, got {}",
                limits::CLIENT_ID_BYTES_MAX,
                self.client_id.len()
            )));
        }
        Ok(())
    }
}
