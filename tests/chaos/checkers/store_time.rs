//! What the checkers may assume of store time (SPEC §4), as arithmetic on
//! the lab clock. Nothing else about store time is assumed anywhere:
//!
//! - it never runs backwards (log order);
//! - between two operations that take effect at real times `t1 < t2` it
//!   advances by at most `(1 + ppm/10⁶)(t2 − t1) + 1 ms`, whatever any wall
//!   clock does ([`advance_max_us`]);
//! - it has **no lower bound**: it may lag real time without limit (it
//!   freezes while no leader serves), so no checker concludes that a lock
//!   must have expired or a runner must be dead from elapsed lab time;
//! - a holder owns its lock from the `invoke` of an acquire or refresh that
//!   answered it for [`holder_window_us`] = `E − lock_slack_ms(E)` of lab
//!   time, until it releases it.
//!
//! Pure arithmetic: no clock, no I/O.

use runner_storage::limits::{lock_slack_ms, STORE_TIME_SLEW_PPM};

use crate::history::Micros;

const PPM: i128 = STORE_TIME_SLEW_PPM as i128;
const MILLION: i128 = 1_000_000;
/// Stamps are whole milliseconds.
const TRUNCATION_US: Micros = 1000;

/// The most store time can advance over `real_us` of real time.
pub fn advance_max_us(real_us: Micros) -> Micros {
    if real_us == Micros::MAX {
        return Micros::MAX;
    }
    let real = i128::from(real_us.max(0));
    let fast = (real * (MILLION + PPM)).div_euclid(MILLION) + 1;
    Micros::try_from(fast).unwrap_or(Micros::MAX).saturating_add(TRUNCATION_US)
}

/// The least real time after which store time may have advanced by more
/// than `store_us`: `advance_max_us(r) > store_us` only for `r >= this`.
pub fn real_to_pass_us(store_us: Micros) -> Micros {
    let (mut low, mut high) = (0, store_us.max(0) + 1);
    // advance_max_us is nondecreasing, and advance_max_us(store_us + 1) > store_us.
    while low < high {
        let middle = low + (high - low) / 2;
        if advance_max_us(middle) > store_us {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    low
}

/// Whether a stamp taken at real time `>= stamped_lo_us` can have aged past
/// `E` by real time `<= at_hi_us` (a lock that may have expired, a runner
/// that may be dead).
pub fn may_have_aged_past(stamped_lo_us: Micros, at_hi_us: Micros, lock_expiration_us: Micros) -> bool {
    at_hi_us == Micros::MAX || at_hi_us.saturating_sub(stamped_lo_us) >= real_to_pass_us(lock_expiration_us)
}

/// Whether an observed age (ms) is possible for a stamp taken at real time
/// `>= stamped_lo_us` and read at real time `<= at_hi_us`. One more
/// millisecond covers the age's own truncation.
pub fn age_possible(age_ms: u64, stamped_lo_us: Micros, at_hi_us: Micros) -> bool {
    if at_hi_us == Micros::MAX {
        return true;
    }
    let age_us = Micros::try_from(age_ms).unwrap_or(Micros::MAX / 1000).saturating_mul(1000);
    age_us <= advance_max_us(at_hi_us.saturating_sub(stamped_lo_us)).saturating_add(TRUNCATION_US)
}

/// How long a holder may count on its lock from its call's `invoke`: `E − slack`.
pub fn holder_window_us(lock_expiration_us: Micros) -> Micros {
    let lock_expiration_ms = u64::try_from(lock_expiration_us / 1000).expect("E is positive");
    let slack_us = Micros::try_from(lock_slack_ms(lock_expiration_ms)).expect("slack fits") * 1000;
    lock_expiration_us - slack_us
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: Micros = 2_000_000;

    #[test]
    fn store_time_runs_at_most_one_percent_fast_plus_truncation() {
        assert_eq!(advance_max_us(0), 1001);
        assert_eq!(advance_max_us(1_000_000), 1_010_001 + 1000);
        assert!(advance_max_us(real_to_pass_us(E)) > E);
        assert!(advance_max_us(real_to_pass_us(E) - 1) <= E);
    }

    #[test]
    fn expiry_needs_nearly_e_of_real_time_and_never_less_than_the_holder_window() {
        let window = holder_window_us(E);
        assert!(window < real_to_pass_us(E), "the holder's window ends before anyone may take the lock");
        assert!(!may_have_aged_past(0, window, E));
        assert!(may_have_aged_past(0, E, E));
        assert!(may_have_aged_past(0, Micros::MAX, E), "an unknown outcome may apply at any time");
    }

    #[test]
    fn an_age_far_beyond_real_time_is_impossible() {
        assert!(age_possible(1000, 0, 1_000_000));
        assert!(age_possible(1012, 0, 1_000_000));
        assert!(!age_possible(20_000, 0, 1_000_000), "a clock step of 10 E shows as an impossible age");
    }
}
