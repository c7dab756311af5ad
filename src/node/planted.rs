//! Bugs planted on purpose, so the chaos checkers can be shown to catch
//! them. Read once at start; a node with one logs a loud warning. The
//! product paths consult [`PlantedBug`] only through the few accessors of
//! `Node`, never a global.

use crate::error::Error;

/// Environment variable that plants a known bug, so the chaos checkers can
/// be shown to catch it. Never set it in production: the node logs a loud
/// warning at start when it is set.
pub const PLANTED_BUG_ENV: &str = "RUNNER_STORAGE_PLANTED_BUG";

/// A bug planted on purpose for checker tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// `stale-reads`: reads skip the read barrier and are answered from this
    /// node's own state, leader or not (what a naive store would do).
    StaleReads,
    /// `no-sync`: sled's `flush()` alone before acknowledging, no
    /// fdatasync/fsync (what this store did before it synced for real):
    /// acknowledged writes survive a killed process, not a power cut.
    NoSync,
    /// `wall-clock-stamps`: commands and reads take the leader's raw wall
    /// clock as store time (what this store did before `StoreClock`): a
    /// step of the leader's clock by more than E expires every lock.
    WallClockStamps,
}

impl PlantedBug {
    /// The bug `RUNNER_STORAGE_PLANTED_BUG` names, if any.
    ///
    /// # Errors
    /// [`Error::Config`] for a value that names no planted bug.
    pub fn from_env() -> Result<Option<PlantedBug>, Error> {
        match std::env::var(PLANTED_BUG_ENV).ok().as_deref() {
            None | Some("") => Ok(None),
            Some("stale-reads") => Ok(Some(PlantedBug::StaleReads)),
            Some("no-sync") => Ok(Some(PlantedBug::NoSync)),
            Some("wall-clock-stamps") => Ok(Some(PlantedBug::WallClockStamps)),
            Some(other) => Err(Error::Config(format!(
                "{PLANTED_BUG_ENV}={other:?} is not a known planted bug (stale-reads, no-sync, wall-clock-stamps)"
            ))),
        }
    }
}
