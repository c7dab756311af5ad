//! The workload's gate: the nemesis closes it around a power cut so that no
//! call is in flight while the nodes lose power and none starts before the
//! state after the cut was observed. Tasks pass it before every call; a
//! pass held counts the call as in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often a task waiting at the closed gate, or the nemesis waiting for
/// the calls in flight, looks again.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    in_flight: AtomicUsize,
}

/// A call in flight; dropping it ends the call.
pub struct Pass<'g> {
    gate: &'g Gate,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// Waits while the gate is closed, then counts a call in flight.
    pub async fn pass(&self) -> Pass<'_> {
        loop {
            if !self.closed.load(Ordering::SeqCst) {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                // Closed meanwhile: the nemesis may already think nothing runs.
                if !self.closed.load(Ordering::SeqCst) {
                    return Pass { gate: self };
                }
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Closes the gate and waits, at most `bound`, for the calls in flight
    /// to end; returns how many still run (their outcome may be unknown).
    pub async fn close(&self, bound: Duration) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + bound;
        loop {
            let in_flight = self.in_flight.load(Ordering::SeqCst);
            if in_flight == 0 || Instant::now() >= deadline {
                return in_flight;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }
}
