//! The conformance suite (`tests/common/conformance.rs`), the same one the
//! in-memory store passes, against real 1-node and 3-node clusters through
//! the Rust client. Each case gets a fresh cluster; or, in the namespaced
//! run, a fresh namespace of one shared cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use runner_storage::client::Client;
use runner_storage::{Encoded, Result};

use crate::common::TestCluster;
use crate::conformance::{run_all, StoreFactory};

/// A cluster and a client of it: the cluster lives as long as the store.
struct ClusterStore {
    client: Client,
    _cluster: Arc<TestCluster>,
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
        Box::new(ClusterStore { client, _cluster: Arc::new(cluster) })
    }
}

/// One cluster; each case in a namespace of its own.
struct Namespaces {
    cluster: Arc<TestCluster>,
    cases: AtomicU64,
}

#[async_trait]
impl StoreFactory for Namespaces {
    async fn fresh(&self, lock_expiration_ms: u64) -> Box<dyn Encoded> {
        let case = self.cases.fetch_add(1, Ordering::Relaxed);
        let client = self.cluster.client_in(&format!("conformance-{case}"));
        client.set_lock_expiration(lock_expiration_ms).await.expect("set the lock expiration");
        Box::new(ClusterStore { client, _cluster: self.cluster.clone() })
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

/// The suite in namespaces other than the default one, every case in its
/// own, on one cluster whose default namespace holds a runner and a lock
/// the suite never sees and never touches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_conforms_in_other_namespaces_and_keeps_them_apart() {
    let cluster = TestCluster::start(3);
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    let default = cluster.client();
    default.set_lock_expiration(crate::common::LOCK_EXPIRATION_LONG_MS).await.unwrap();
    let runner = crate::common::runner_json("kept", 1);
    let machine_id = default.register("kept:1", &runner, true).await.unwrap();
    let held = default.acquire("kept:1", &["default:1".to_owned()]).await.unwrap();
    assert_eq!(held, ["default:1"]);
    let factory = Namespaces { cluster: Arc::new(cluster), cases: AtomicU64::new(0) };
    run_all(&factory).await;

    assert_eq!(default.get_runners().await.unwrap(), [(runner.clone(), true)], "the default namespace is untouched");
    assert_eq!(default.register("kept:1", &runner, true).await.unwrap(), machine_id, "its machine id too");
    assert_eq!(default.refresh("kept:1", &["default:1".to_owned()]).await.unwrap(), ["default:1"], "and its lock");
    let namespaces = default.list_namespaces().await.unwrap();
    let cases = factory.cases.load(Ordering::Relaxed);
    assert!(cases > 0, "the suite ran");
    let listed: Vec<&str> = namespaces.iter().map(|n| n.namespace.as_str()).collect();
    assert!(listed.contains(&"default"), "{listed:?}");
    assert!(listed.iter().all(|name| *name == "default" || name.starts_with("conformance-")), "{listed:?}");
}
