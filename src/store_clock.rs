//! [`StoreClock`]: the store time a leader stamps into commands and reads
//! with, which no wall clock can push faster than real time (SPEC §4).
//!
//! A leader takes office in a term once it has applied its own first entry
//! of that term (openraft's blank entry), when it has applied every entry
//! of earlier terms. It anchors at the state's time then, plus the real
//! (monotonic) time that passed on this node since it applied the entry
//! before the blank ([`OfficeAnchor`]). From then on its store time runs on
//! its monotonic clock, and steers toward the wall clock by at most
//! [`STORE_TIME_SLEW_PPM`] faster or slower, like NTP's slew.
//!
//! Why no wall clock can hand a held lock to another address early: a lock
//! acquired at store time `S_i` (stamped at real time `ρ_i`) passes only
//! when a later command's store time exceeds `S_i + E`. Within one term
//! store time advances at most `1 + ppm` times the real time that passes.
//! Across a change of leader, the new leader's anchor is `S_last + (m −
//! a_last)` where `a_last` is when it applied the last entry of the earlier
//! terms (after that entry was stamped) and `m` when it took office, so it
//! never adds more than the real time since any earlier stamp either. By
//! induction over terms, between any two commands store time advances by at
//! most `1 + ppm` times the real time between their stamps: `E` of store
//! time lasts at least `E − lock_slack_ms(E)` of real time, whatever a wall
//! clock did (stepped by hours, a new leader running ahead).
//!
//! A cluster whose state has never applied a stamped command (time 0)
//! anchors at the wall clock: nothing can be held yet.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::limits::STORE_TIME_SLEW_PPM;

/// What a new leader anchors its store time at: the state's time after the
/// last entry before its blank entry, and when this node applied that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfficeAnchor {
    /// The state's `now_ms` after the entry before the blank.
    pub store_now_ms: u64,
    /// When this node applied that entry (or the blank, when there was none).
    pub applied_at: Instant,
}

/// The store time of one node while it leads; nothing while it does not.
#[derive(Debug, Default)]
pub struct StoreClock {
    office: Mutex<Option<Office>>,
}

/// One term in office: the store time reached at the last reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Office {
    term: u64,
    last_read_at: Instant,
    store_now_us: u64,
}

impl StoreClock {
    /// A clock not in office.
    pub fn new() -> Self {
        StoreClock::default()
    }

    /// Takes office in `term` from `anchor`, unless already in office in it.
    pub fn take_office(&self, term: u64, anchor: OfficeAnchor, wall_now_ms: u64) {
        let mut office = self.office.lock().unwrap_or_else(PoisonError::into_inner);
        if office.is_some_and(|office| office.term == term) {
            return;
        }
        *office = Some(Office::anchored(term, anchor, wall_now_ms));
    }

    /// The store time now in `term`, `None` when not in office in it.
    pub fn now_ms(&self, term: u64, now: Instant, wall_now_ms: u64) -> Option<u64> {
        let mut office = self.office.lock().unwrap_or_else(PoisonError::into_inner);
        let current = office.as_mut().filter(|office| office.term == term)?;
        current.advance(now, wall_now_ms.saturating_mul(1000));
        Some(current.store_now_us / 1000)
    }
}

impl Office {
    fn anchored(term: u64, anchor: OfficeAnchor, wall_now_ms: u64) -> Office {
        if anchor.store_now_ms == 0 {
            // Nothing was ever stamped: nothing can be held yet.
            let now = Instant::now().max(anchor.applied_at);
            return Office { term, last_read_at: now, store_now_us: wall_now_ms.saturating_mul(1000) };
        }
        Office { term, last_read_at: anchor.applied_at, store_now_us: anchor.store_now_ms.saturating_mul(1000) }
    }

    /// Moves store time to `now`: the monotonic time elapsed since the last
    /// reading, corrected toward the wall clock by at most the slew rate.
    fn advance(&mut self, now: Instant, wall_now_us: u64) {
        let Some(elapsed) = now.checked_duration_since(self.last_read_at) else { return };
        let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let slew_us = elapsed_us.saturating_mul(STORE_TIME_SLEW_PPM) / 1_000_000;
        let slowest = elapsed_us - slew_us;
        let fastest = elapsed_us.saturating_add(slew_us);
        let toward_wall = wall_now_us.saturating_sub(self.store_now_us);
        let step = toward_wall.clamp(slowest, fastest);
        let before = self.store_now_us;
        self.store_now_us = before.saturating_add(step);
        self.last_read_at = now;
        assert!(self.store_now_us >= before, "store time ran backwards: {} < {before}", self.store_now_us);
        assert!(step <= fastest, "store time ran {step} µs in {elapsed_us} µs, past the slew bound");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    fn anchor(store_now_ms: u64, applied_at: Instant) -> OfficeAnchor {
        OfficeAnchor { store_now_ms, applied_at }
    }

    #[test]
    fn runs_on_the_monotonic_clock_from_its_anchor() {
        let clock = StoreClock::new();
        let start = Instant::now();
        let wall_ms = 1_700_000_000_000;
        clock.take_office(3, anchor(wall_ms, start), wall_ms);
        assert_eq!(clock.now_ms(2, start, wall_ms), None, "not in office in another term");
        let later = start + Duration::from_millis(1500);
        assert_eq!(clock.now_ms(3, later, wall_ms + 1500), Some(wall_ms + 1500));
    }

    #[test]
    fn a_wall_clock_an_hour_ahead_pulls_store_time_by_at_most_the_slew() {
        let clock = StoreClock::new();
        let start = Instant::now();
        let store_ms = 1_000_000;
        clock.take_office(1, anchor(store_ms, start), store_ms);
        let mut previous = store_ms;
        for second in 1..=100u64 {
            let now = start + Duration::from_secs(second);
            let wall_ms = store_ms + second * 1000 + HOUR_MS;
            let store = clock.now_ms(1, now, wall_ms).unwrap();
            let gained = store - previous;
            assert!(gained <= 1010, "second {second}: {gained} ms of store time in 1,000 ms");
            assert!(gained >= 1009, "second {second}: behind the wall clock it runs 1% fast ({gained} ms)");
            previous = store;
        }
    }

    #[test]
    fn a_wall_clock_stepped_back_slows_store_time_but_never_reverses_it() {
        let clock = StoreClock::new();
        let start = Instant::now();
        let store_ms = 5 * HOUR_MS;
        clock.take_office(1, anchor(store_ms, start), store_ms);
        let mut previous = store_ms;
        for second in 1..=100u64 {
            let now = start + Duration::from_secs(second);
            let store = clock.now_ms(1, now, store_ms - HOUR_MS).unwrap();
            let gained = store - previous;
            assert!((990..=991).contains(&gained), "second {second}: {gained} ms");
            previous = store;
        }
    }

    #[test]
    fn it_catches_up_with_a_wall_clock_slightly_ahead_and_then_follows_it() {
        let clock = StoreClock::new();
        let start = Instant::now();
        let store_ms = 1_000_000;
        clock.take_office(1, anchor(store_ms, start), store_ms);
        // 50 ms behind: 1% of 10 s covers 100 ms, so after 10 s it is on the wall clock.
        let wall_at = |second: u64| store_ms + 50 + second * 1000;
        let at_ten = clock.now_ms(1, start + Duration::from_secs(10), wall_at(10)).unwrap();
        assert_eq!(at_ten, wall_at(10));
        let at_eleven = clock.now_ms(1, start + Duration::from_secs(11), wall_at(11)).unwrap();
        assert_eq!(at_eleven, wall_at(11));
    }

    #[test]
    fn a_new_leader_counts_the_time_since_it_applied_the_last_entry() {
        let clock = StoreClock::new();
        let applied_at = Instant::now();
        let office_at = applied_at + Duration::from_millis(700);
        // The wall clock ten lock expirations ahead changes nothing at once.
        clock.take_office(4, anchor(2_000_000, applied_at), 2_000_000 + 350_000);
        assert_eq!(clock.now_ms(4, office_at, 2_000_000 + 350_700), Some(2_000_707));
        // Taking office again in the same term keeps the clock.
        clock.take_office(4, anchor(1, office_at), 1);
        assert!(clock.now_ms(4, office_at, 0).unwrap() >= 2_000_707);
    }

    #[test]
    fn a_state_that_never_applied_a_stamp_takes_the_wall_clock() {
        let clock = StoreClock::new();
        let now = Instant::now();
        clock.take_office(1, anchor(0, now), 1_700_000_000_000);
        assert!(clock.now_ms(1, now, 1_700_000_000_000).unwrap() >= 1_700_000_000_000);
    }

    #[test]
    fn an_earlier_instant_than_the_last_reading_changes_nothing() {
        let clock = StoreClock::new();
        let start = Instant::now();
        clock.take_office(1, anchor(10_000, start + Duration::from_secs(1)), 10_000);
        assert_eq!(clock.now_ms(1, start, 99_999), Some(10_000));
    }
}
