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
use crate::error::{Error, Result};
use crate::interface::Encoded;
use crate::state_machine::{shard_id_texts, Command, Envelope, Reply, State};
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
        let envelope = Envelope { time_ms: self.now_ms(), request_id: None, command };
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

fn unexpected(reply: Reply) -> Error {
    Error::Storage { message: format!("unexpected reply {reply:?}"), cause: None }
}

/// Shapes the state machine's replies into the answers of the eight calls;
/// shared by every [`Encoded`] that applies commands.
pub(crate) mod replies {
    use super::*;

    pub(crate) fn machine_id(reply: Reply) -> Result<i64> {
        match reply {
            Reply::MachineId(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn shard_ids(reply: Reply) -> Result<Vec<String>> {
        match reply {
            Reply::ShardIds(ids) => Ok(ids.into_iter().map(String::from).collect()),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) fn done(reply: Reply) -> Result<()> {
        match reply {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

#[async_trait]
impl Encoded for MemoryRunnerStorage {
    async fn get_runners(&self) -> Result<Vec<(String, bool)>> {
        let now_ms = self.now_ms();
        Ok(self.read(|state| state.get_runners(now_ms)))
    }

    async fn register(&self, address: &str, runner: &str, healthy: bool) -> Result<i64> {
        replies::machine_id(self.write(Command::Register {
            address: address.into(),
            runner: runner.into(),
            healthy,
        })?)
    }

    async fn unregister(&self, address: &str) -> Result<()> {
        replies::done(self.write(Command::Unregister { address: address.into() })?)
    }

    async fn set_runner_health(&self, address: &str, healthy: bool) -> Result<()> {
        replies::done(self.write(Command::SetRunnerHealth { address: address.into(), healthy })?)
    }

    async fn acquire(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        replies::shard_ids(
            self.write(Command::Acquire { address: address.into(), shard_ids: shard_id_texts(shard_ids) })?,
        )
    }

    async fn refresh(&self, address: &str, shard_ids: &[String]) -> Result<Vec<String>> {
        replies::shard_ids(
            self.write(Command::Refresh { address: address.into(), shard_ids: shard_id_texts(shard_ids) })?,
        )
    }

    async fn release(&self, address: &str, shard_id: &str) -> Result<()> {
        replies::done(self.write(Command::Release { address: address.into(), shard_id: shard_id.into() })?)
    }

    async fn release_all(&self, address: &str) -> Result<()> {
        replies::done(self.write(Command::ReleaseAll { address: address.into() })?)
    }
}
