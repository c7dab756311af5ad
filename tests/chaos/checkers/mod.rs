//! Checkers over a [`History`]: each returns violations (messages); none
//! trusts the store. The verdicts are collected in a [`Verdicts`].
//!
//! - [`mutex`]: no two addresses told they hold one shard at once.
//! - [`wgl`] with [`shard_model`] and [`runner_model`]: linearizability per
//!   shard and for the runner table (a real search; relaxations documented
//!   in the model modules).
//! - [`machine_ids`]: no two present runners share a machine id mod 1024.
//! - [`durability`]: acknowledged writes are in the final state.
//! - [`availability`]: fault-to-recovery times; liveness after heal.

pub mod availability;
pub mod durability;
pub mod machine_ids;
pub mod mutex;
pub mod runner_model;
pub mod shard_model;
pub mod wgl;

#[cfg(test)]
mod model_tests;

use serde::Serialize;

use crate::history::History;
use shard_model::Interner;
use wgl::{Limits, Verdict};

/// Every checker's findings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdicts {
    pub mutual_exclusion: Vec<String>,
    pub linearizability: Vec<String>,
    /// Searches that hit their bound: neither pass nor violation.
    pub linearizability_inconclusive: Vec<String>,
    /// Objects (shards, the runner table) checked, and search steps taken.
    pub linearizability_objects: usize,
    pub linearizability_steps: u64,
    pub machine_ids: Vec<String>,
    pub durability: Vec<String>,
    pub availability_violations: Vec<String>,
    pub availability: availability::Availability,
    /// Problems of the run itself (replicas that disagree, no leader, …).
    pub run: Vec<String>,
}

impl Verdicts {
    pub fn violation_count(&self) -> usize {
        self.mutual_exclusion.len()
            + self.linearizability.len()
            + self.machine_ids.len()
            + self.durability.len()
            + self.availability_violations.len()
            + self.run.len()
    }
}

/// Runs every checker over `history`.
pub fn check_all(history: &History) -> Verdicts {
    let mut verdicts = Verdicts { mutual_exclusion: mutex::check(history), ..Verdicts::default() };
    check_linearizability(history, &mut verdicts);
    verdicts.machine_ids = machine_ids::check(history);
    verdicts.durability = durability::check(history);
    let (availability, violations) = availability::check(history);
    verdicts.availability = availability;
    verdicts.availability_violations = violations;
    verdicts
}

/// One operation, as a violation report shows it.
pub fn describe(history: &History, id: u64) -> String {
    if id == u64::MAX {
        return "the final state read from the replicas".into();
    }
    match history.ops.iter().find(|op| op.id == id) {
        Some(op) => format!(
            "op {} by {} [{} µs, {} µs] {:?} -> {:?} {:?}{}",
            op.id,
            op.process,
            op.invoke_us,
            op.complete_us,
            op.call,
            op.outcome,
            op.answer,
            op.error.as_deref().map(|error| format!(" ({error})")).unwrap_or_default()
        ),
        None => format!("op {id}"),
    }
}

fn record(verdicts: &mut Verdicts, history: &History, object: &str, verdict: Verdict) {
    verdicts.linearizability_objects += 1;
    match verdict {
        Verdict::Linearizable { steps } => verdicts.linearizability_steps += steps,
        Verdict::Violation { stuck_at, prefix_len, states } => verdicts.linearizability.push(format!(
            "{object}: not linearizable: {} cannot be placed after the longest linearizable prefix ({prefix_len} ops); model states there: {states}",
            describe(history, stuck_at)
        )),
        Verdict::Inconclusive { reason } => verdicts.linearizability_inconclusive.push(format!("{object}: {reason}")),
    }
}

fn check_linearizability(history: &History, verdicts: &mut Verdicts) {
    let lock_expiration_us = history.lock_expiration_us();
    let mut addresses = Interner::default();
    let mut runners = Interner::default();
    let table = runner_model::table_history(history, &mut addresses, &mut runners);
    let verdict = wgl::check(&runner_model::TableModel { lock_expiration_us }, &table, Limits::default());
    record(verdicts, history, "runner table", verdict);
    let shards = shard_model::shard_histories(history, &mut addresses);
    let model = shard_model::ShardModel { lock_expiration_us };
    for (shard_id, ops) in shards {
        let verdict = wgl::check(&model, &ops, Limits::default());
        record(verdicts, history, &format!("shard {shard_id}"), verdict);
    }
}
