//! [`Client`] as an [`Encoded`]: the eight calls, in the client's
//! namespace, each write with a request id its retries reuse.

use async_trait::async_trait;

use super::Client;
use crate::error::Result;
use crate::interface::Encoded;
use crate::pb::v1 as pb;

#[async_trait]
impl Encoded for Client {
    async fn get_runners(&self) -> Result<Vec<(String, bool)>> {
        let response = self
            .runner_call(pb::GetRunnersRequest { namespace: self.namespace.clone() }, |mut c, r| async move {
                c.get_runners(r).await
            })
            .await?;
        Ok(response.runners.into_iter().map(|entry| (entry.runner, entry.healthy)).collect())
    }

    async fn register(&self, address: &str, runner: &str, healthy: bool) -> Result<i64> {
        let message = pb::RegisterRequest {
            namespace: self.namespace.clone(),
            address: address.into(),
            runner: runner.into(),
            healthy,
            request_id: self.request_id(),
        };
        Ok(self.runner_call(message, |mut c, r| async move { c.register(r).await }).await?.machine_id)
    }

    async fn unregister(&self, address: &str) -> Result<()> {
        let message = pb::UnregisterRequest {
            namespace: self.namespace.clone(),
            address: address.into(),
            request_id: self.request_id(),
        };
        self.runner_call(message, |mut c, r| async move { c.unregister(r).await }).await.map(|_| ())
    }

    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<()> {
        let message = pb::SetRunnerHealthRequest {
            namespace: self.namespace.clone(),
            address: address.into(),
            healthy,
            request_id: self.request_id(),
        };
        self.runner_call(message, |mut c, r| async move { c.set_runner_health(r).await }).await.map(|_| ())
    }

    async fn acquire(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        let message = pb::AcquireRequest {
            namespace: self.namespace.clone(),
            address: address.into(),
            shard_ids: shard_ids.to_vec(),
            request_id: self.request_id(),
        };
        Ok(self.runner_call(message, |mut c, r| async move { c.acquire(r).await }).await?.shard_ids)
    }

    async fn refresh(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        let message = pb::RefreshRequest {
            namespace: self.namespace.clone(),
            address: address.into(),
            shard_ids: shard_ids.to_vec(),
            request_id: self.request_id(),
        };
        Ok(self.runner_call(message, |mut c, r| async move { c.refresh(r).await }).await?.shard_ids)
    }

    async fn release(&self, address: &str, shard_id: &str) -> Result<()> {
        let message = pb::ReleaseRequest {
            namespace: self.namespace.clone(),
            address: address.into(),
            shard_id: shard_id.into(),
            request_id: self.request_id(),
        };
        self.runner_call(message, |mut c, r| async move { c.release(r).await }).await.map(|_| ())
    }

    async fn release_all(&self, address: &str) -> Result<()> {
        let message = pb::ReleaseAllRequest {
            namespace: self.namespace.clone(),
            address: address.into(),
            request_id: self.request_id(),
        };
        self.runner_call(message, |mut c, r| async move { c.release_all(r).await }).await.map(|_| ())
    }
}
