//! Availability: for each fault, the time from its injection to the next
//! acknowledged write (the first `ok` write invoked at or after the fault
//! started), reported as median and maximum, overall and per fault kind.
//!
//! A liveness violation is a fault after whose heal no write was
//! acknowledged within [`RECOVERY_AFTER_HEAL_MAX_US`]: every fault heals, so
//! a cluster that stays unavailable past that is broken.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{History, Micros};

/// Longest a healed cluster may take to acknowledge a write again.
pub const RECOVERY_AFTER_HEAL_MAX_US: Micros = 30_000_000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    pub faults: usize,
    pub median_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Availability {
    pub overall: Recovery,
    pub by_kind: BTreeMap<String, Recovery>,
    /// Faults with no acknowledged write after them at all.
    pub unrecovered: usize,
}

fn summarise(mut samples: Vec<Micros>) -> Recovery {
    samples.sort_unstable();
    let faults = samples.len();
    let median_us = match faults {
        0 => 0.0,
        n if n % 2 == 1 => samples[n / 2] as f64,
        n => (samples[n / 2 - 1] + samples[n / 2]) as f64 / 2.0,
    };
    let max_us = samples.last().copied().unwrap_or(0) as f64;
    Recovery { faults, median_ms: median_us / 1000.0, max_ms: max_us / 1000.0 }
}

/// The recovery statistics, and one message per liveness violation.
pub fn check(history: &History) -> (Availability, Vec<String>) {
    // Completion times of ok writes, by invocation time.
    let acks: Vec<(Micros, Micros)> = history
        .ops
        .iter()
        .filter(|op| op.is_ok() && op.call.is_write())
        .map(|op| (op.invoke_us, op.complete_us))
        .collect();
    let mut all = Vec::new();
    let mut by_kind: BTreeMap<String, Vec<Micros>> = BTreeMap::new();
    let mut violations = Vec::new();
    let mut unrecovered = 0;
    for fault in &history.faults {
        let start = acks.partition_point(|(invoke, _)| *invoke < fault.start_us);
        let next_ack = acks[start..].iter().map(|(_, complete)| *complete).min();
        match next_ack {
            Some(complete) => {
                all.push(complete - fault.start_us);
                by_kind.entry(fault.kind.clone()).or_default().push(complete - fault.start_us);
                if complete - fault.heal_us > RECOVERY_AFTER_HEAL_MAX_US {
                    violations.push(format!(
                        "{} ({}) healed at {} µs; next acknowledged write only at {} µs",
                        fault.kind, fault.detail, fault.heal_us, complete
                    ));
                }
            }
            None => unrecovered += 1,
        }
    }
    let by_kind = by_kind.into_iter().map(|(kind, samples)| (kind, summarise(samples))).collect();
    (Availability { overall: summarise(all), by_kind, unrecovered }, violations)
}
