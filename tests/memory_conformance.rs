//! The conformance suite (`tests/common/conformance.rs`) against
//! [`MemoryRunnerStorage`], the reference the replicated store must match.

#[path = "common/conformance.rs"]
mod conformance;

use runner_storage::{Encoded, MemoryRunnerStorage};

struct MemoryStores;

#[async_trait::async_trait]
impl conformance::StoreFactory for MemoryStores {
    async fn fresh(&self, lock_expiration_ms: u64) -> Box<dyn Encoded> {
        Box::new(MemoryRunnerStorage::new(lock_expiration_ms))
    }
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance::run_all(&MemoryStores).await;
}
