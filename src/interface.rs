//! The two interfaces of Effect's `RunnerStorage` module, in Rust.
//!
//! - [`Encoded`]: the eight calls on string forms: what the network carries
//!   and what every store (memory, replicated, gRPC client) implements.
//! - [`RunnerStorage`]: the same calls on typed values.
//!
//! [`make_encoded`] adapts the first into the second exactly as Effect's
//! `RunnerStorage.makeEncoded` does.

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{MachineId, Runner, RunnerAddress, ShardId};

/// The eight calls on string forms (SPEC §3).
#[async_trait]
pub trait Encoded: Send + Sync {
    /// Live runners as `(runner JSON, healthy)`, ordered by machine id.
    async fn get_runners(&self) -> Result<Vec<(String, bool)>>;
    /// Upserts a runner; returns its machine id.
    async fn register(&self, address: &str, runner: &str, healthy: bool) -> Result<i64>;
    /// Deletes the runner and every runner that is not live.
    async fn unregister(&self, address: &str) -> Result<()>;
    /// Sets a registered runner's health flag.
    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<()>;
    /// Takes the free, own or expired locks among `shard_ids` (non-empty).
    async fn acquire(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>>;
    /// Heartbeat, and renews this address's locks among `shard_ids`.
    async fn refresh(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>>;
    /// Deletes one lock of this address.
    async fn release(&self, address: &str, shard_id: &str) -> Result<()>;
    /// Deletes every lock of this address.
    async fn release_all(&self, address: &str) -> Result<()>;
}

/// The eight calls on typed values, as Effect's `RunnerStorage` service.
#[async_trait]
pub trait RunnerStorage: Send + Sync {
    /// Live runners with their health flags, ordered by machine id.
    async fn get_runners(&self) -> Result<Vec<(Runner, bool)>>;
    /// Registers (or re-registers) a runner; returns its machine id.
    async fn register(&self, runner: &Runner, healthy: bool) -> Result<MachineId>;
    /// Unregisters the runner at `address`.
    async fn unregister(&self, address: &RunnerAddress) -> Result<()>;
    /// Sets the health flag of the runner at `address`.
    async fn set_runner_health(&self, address: &RunnerAddress, healthy: bool) -> Result<()>;
    /// Tries to acquire `shard_ids`; returns those acquired.
    async fn acquire(&self, address: &RunnerAddress, shard_ids: &[ShardId]) -> Result<Vec<ShardId>>;
    /// Refreshes the locks of `address` on `shard_ids`; returns those still held.
    async fn refresh(&self, address: &RunnerAddress, shard_ids: &[ShardId]) -> Result<Vec<ShardId>>;
    /// Releases one shard.
    async fn release(&self, address: &RunnerAddress, shard_id: &ShardId) -> Result<()>;
    /// Releases every shard of `address`.
    async fn release_all(&self, address: &RunnerAddress) -> Result<()>;
}

/// A [`RunnerStorage`] over an [`Encoded`]; see [`make_encoded`].
#[derive(Debug, Clone)]
pub struct EncodedRunnerStorage<E> {
    encoded: E,
}

/// Adapts an [`Encoded`] into a [`RunnerStorage`] as Effect's `makeEncoded`
/// does: runners that do not decode are dropped from `get_runners`, and an
/// `acquire` of no shards returns `[]` without a call.
pub fn make_encoded<E: Encoded>(encoded: E) -> EncodedRunnerStorage<E> {
    EncodedRunnerStorage { encoded }
}

fn shard_strings(shard_ids: &[ShardId]) -> Vec<String> {
    shard_ids.iter().map(ShardId::to_string).collect()
}

/// Parses shard ids the store returned. The store only returns ids it was
/// given, which were valid; a bad one means a broken store, so it is an error.
fn parse_shard_ids(shard_ids: Vec<String>) -> Result<Vec<ShardId>> {
    shard_ids.iter().map(|shard_id| ShardId::parse(shard_id)).collect()
}

#[async_trait]
impl<E: Encoded> RunnerStorage for EncodedRunnerStorage<E> {
    async fn get_runners(&self) -> Result<Vec<(Runner, bool)>> {
        let runners = self.encoded.get_runners().await?;
        Ok(runners
            .into_iter()
            .filter_map(|(runner, healthy)| Runner::from_json(&runner).ok().map(|runner| (runner, healthy)))
            .collect())
    }

    async fn register(&self, runner: &Runner, healthy: bool) -> Result<MachineId> {
        let address = runner.address.to_string();
        self.encoded.register(&address, &runner.to_json(), healthy).await.map(MachineId)
    }

    async fn unregister(&self, address: &RunnerAddress) -> Result<()> {
        self.encoded.unregister(&address.to_string()).await
    }

    async fn set_runner_health(&self, address: &RunnerAddress, healthy: bool) -> Result<()> {
        self.encoded.set_runner_health(&address.to_string(), healthy).await
    }

    async fn acquire(&self, address: &RunnerAddress, shard_ids: &[ShardId]) -> Result<Vec<ShardId>> {
        if shard_ids.is_empty() {
            return Ok(Vec::new());
        }
        parse_shard_ids(self.encoded.acquire(&address.to_string(), &shard_strings(shard_ids)).await?)
    }

    async fn refresh(&self, address: &RunnerAddress, shard_ids: &[ShardId]) -> Result<Vec<ShardId>> {
        parse_shard_ids(self.encoded.refresh(&address.to_string(), &shard_strings(shard_ids)).await?)
    }

    async fn release(&self, address: &RunnerAddress, shard_id: &ShardId) -> Result<()> {
        self.encoded.release(&address.to_string(), &shard_id.to_string()).await
    }

    async fn release_all(&self, address: &RunnerAddress) -> Result<()> {
        self.encoded.release_all(&address.to_string()).await
    }
}
