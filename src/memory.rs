//! [`MemoryRunnerStorage`]: a correct single-process store: the state machine
//! behind a mutex, stamped with a [`StoreClock`] anchored at the wall clock
//! when the store is made (so a wall clock step later cannot expire locks).
//!
//! Unlike Effect's `makeMemory` it enforces locks, liveness and machine ids
//! exactly as the replicated store does. For tests and local use; nothing is
//! persisted.

use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;

use crate::clock::wall_clock_ms;
use crate::error::Result;
use crate::interface::Encoded;
use crate::state_machine::{shard_id_texts, Command, Envelope, Reply, State, DEFAULT_NAMESPACE};
use crate::store_clock::{OfficeAnchor, StoreClock};

/// The one term a memory store's clock is in office for.
const TERM: u64 = 1;

/// The state machine in process memory, stamped with its store clock.
#[derive(Debug)]
pub struct MemoryRunnerStorage {
    state: Mutex<State>,
    clock: StoreClock,
}

impl Default for MemoryRunnerStorage {
    fn default() -> Self {
        MemoryRunnerStorage::new(crate::limits::LOCK_EXPIRATION_MS_DEFAULT)
    }
}

impl MemoryRunnerStorage {
    /// An empty store with lock expiration `lock_expiration_ms`.
    ///
    /// # Panics
    /// When `lock_expiration_ms` is 0.
    pub fn new(lock_expiration_ms: u64) -> Self {
        let clock = StoreClock::new();
        clock.take_office(TERM, OfficeAnchor { store_now_ms: 0, applied_at: Instant::now() }, wall_clock_ms());
        MemoryRunnerStorage { state: Mutex::new(State::new(lock_expiration_ms)), clock }
    }

    /// Store time now.
    fn now_ms(&self) -> u64 {
        self.clock.now_ms(TERM, Instant::now(), wall_clock_ms()).expect("a memory store's clock is always in office")
    }

    /// Applies `command` now and returns its reply.
    ///
    /// # Errors
    /// The state machine's refusal, as an [`Error`].
    pub fn write(&self, command: Command) -> Result<Reply> {
        let envelope = Envelope::new(self.now_ms(), command);
        self.lock().apply(&envelope).into_result()
    }

    /// Runs `read` on the state.
    pub fn read<T>(&self, read: impl FnOnce(&State) -> T) -> T {
        read(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a state-machine bug; the
        // state it left is still the best there is, so keep serving it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Encoded for MemoryRunnerStorage {
    async fn get_runners(&self) -> Result<Vec<(String, bool)>> {
        let now_ms = self.now_ms();
        Ok(self.read(|state| state.get_runners(DEFAULT_NAMESPACE, now_ms)))
    }

    async fn register(&self, address: &str, runner: &str, healthy: bool) -> Result<i64> {
        Reply::into_machine_id(self.write(Command::Register {
            address: address.into(),
            runner: runner.into(),
            healthy,
        })?)
    }

    async fn unregister(&self, address: &str) -> Result<()> {
        Reply::into_done(self.write(Command::Unregister { address: address.into() })?)
    }

    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<()> {
        Reply::into_done(self.write(Command::SetRunnerHealth { address: address.into(), healthy })?)
    }

    async fn acquire(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        Reply::into_shard_ids(
            self.write(Command::Acquire { address: address.into(), shard_ids: shard_id_texts(shard_ids) })?,
        )
    }

    async fn refresh(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        Reply::into_shard_ids(
            self.write(Command::Refresh { address: address.into(), shard_ids: shard_id_texts(shard_ids) })?,
        )
    }

    async fn release(&self, address: &str, shard_id: &str) -> Result<()> {
        Reply::into_done(self.write(Command::Release { address: address.into(), shard_id: shard_id.into() })?)
    }

    async fn release_all(&self, address: &str) -> Result<()> {
        Reply::into_done(self.write(Command::ReleaseAll { address: address.into() })?)
    }
}
