//! The conformance suite (`tests/common/conformance.rs`), the same one the
//! in-memory store passes, against real 1-node and 3-node clusters through
//! the Rust client. Each case gets a fresh cluster.

use std::time::Duration;

use async_trait::async_trait;
use runner_storage::client::Client;
use runner_storage::{Encoded, Result};

use crate::common::TestCluster;
use crate::conformance::{run_all, StoreFactory};

/// A cluster and a client of it: the cluster lives as long as the store.
struct ClusterStore {
    client: Client,
    _cluster: TestCluster,
}

#[async_trait]
impl Encoded for ClusterStore {
    async fn get_runners(&self) -> Result<Vec<(String, bool)>> {
        self.client.get_runners().await
    }
    async fn register(&self, address: &str, runner: &str, healthy: bool) -> Result<i64> {
        self.client.register(address, runner, healthy).await
    }
    async fn unregister(&self, address: &str) -> Result<()> {
        self.client.unregister(address).await
    }
    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<()> {
        self.client.set_runner_health(address, healthy).await
    }
    async fn acquire(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        self.client.acquire(address, shard_ids).await
    }
    async fn refresh(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        self.client.refresh(address, shard_ids).await
    }
    async fn release(&self, address: &str, shard_id: &str) -> Result<()> {
        self.client.release(address, shard_id).await
    }
    async fn release_all(&self, address: &str) -> Result<()> {
        self.client.release_all(address).await
    }
}

struct Clusters {
    size: u64,
}

#[async_trait]
impl StoreFactory for Clusters {
    async fn fresh(&self, lock_expiration_ms: u64) -> Box<dyn Encoded> {
        let cluster = TestCluster::start(self.size);
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        let client = cluster.client();
        client.set_lock_expiration(lock_expiration_ms).await.expect("set the lock expiration");
        Box::new(ClusterStore { client, _cluster: cluster })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_cluster_conforms() {
    run_all(&Clusters { size: 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_conforms() {
    run_all(&Clusters { size: 3 }).await;
}
