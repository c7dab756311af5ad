//! Checkers over a [`History`]: each returns violations (messages); none
//! trusts the store. The verdicts are collected in a [`Verdicts`].
//!
//! - [`mutex`]: no two addresses told they hold one shard at once.
//! - [`wgl`] with [`shard_model`] and [`runner_model`]: linearizability per
//!   shard and for the runner table (a real search; relaxations documented
//!   in the model modules).
//! - [`machine_ids`]: no two present runners share a machine id mod 1024.
//! - [`durability`]: acknowledged writes are in every later observation
//!   (after each power cut, and the final state).
//! - [`availability`]: fault-to-recovery times; liveness after heal.
//! - [`store_time`]: the only assumptions about store time (SPEC §4) the
//!   others make; no checker maps a node's clock onto the lab's.

pub mod availability;
pub mod durability;
pub mod machine_ids;
pub mod mutex;
pub mod runner_model;
pub mod shard_model;
pub mod store_time;
pub mod wgl;

#[cfg(test)]
mod model_tests;

use serde::Serialize;

use crate::history::{History, Outcome};
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
    let observation = usize::try_from(u64::MAX - 1 - id).ok().and_then(|index| history.observations.get(index));
    if let Some(observation) = observation {
        return format!("the observation of the whole state {}", observation.source);
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

fn record(
    verdicts: &mut Verdicts,
    history: &History,
    object: &str,
    verdict: Verdict,
    check: &dyn Fn(&History) -> Verdict,
) {
    verdicts.linearizability_objects += 1;
    match verdict {
        Verdict::Linearizable { steps } => verdicts.linearizability_steps += steps,
        Verdict::Violation { stuck_at, prefix_len, states } => verdicts.linearizability.push(format!(
            "{object}: not linearizable. {}. The search's deepest point: {} could not be placed after {prefix_len} ops; model states there: {states}",
            culprit(history, check),
            describe(history, stuck_at)
        )),
        Verdict::Inconclusive { reason } => verdicts.linearizability_inconclusive.push(format!("{object}: {reason}")),
    }
}

/// The first `count` operations (by invocation) with the final state
/// left out, and every operation still running when the last of them was
/// invoked turned `unknown` (its answer dropped). A history that is
/// linearizable stays so under this cut, so the shortest failing cut ends
/// with the operation that makes the history fail.
fn cut(history: &History, count: usize) -> History {
    let until = history.ops[count - 1].invoke_us;
    let mut ops = history.ops[..count].to_vec();
    for op in ops.iter_mut().filter(|op| op.complete_us > until && op.outcome == Outcome::Ok) {
        op.outcome = Outcome::Unknown;
        op.answer = None;
    }
    History { info: history.info.clone(), ops, faults: Vec::new(), observations: Vec::new(), final_state: None }
}

/// Bisects for the shortest failing cut of `history` under `check`.
fn culprit(history: &History, check: &dyn Fn(&History) -> Verdict) -> String {
    let fails = |count: usize| matches!(check(&cut(history, count)), Verdict::Violation { .. });
    let total = history.ops.len();
    if total == 0 || !fails(total) {
        return "Every cut of the operations passes: an observation of the whole state (after a power cut, or the \
                final state) is what cannot be explained"
            .into();
    }
    // fails(high) holds; fails(low) does not (no operations pass trivially).
    let (mut low, mut high) = (0, total);
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if fails(middle) {
            high = middle;
        } else {
            low = middle;
        }
    }
    format!("The shortest failing prefix ends with {}", describe(history, history.ops[high - 1].id))
}

fn check_table(history: &History) -> Verdict {
    let (mut addresses, mut runners) = (Interner::default(), Interner::default());
    let table = runner_model::table_history(history, &mut addresses, &mut runners);
    wgl::check(
        &runner_model::TableModel { lock_expiration_us: history.lock_expiration_us() },
        &table,
        Limits::default(),
    )
}

fn check_shard(history: &History, shard_id: &str) -> Verdict {
    let mut shards = shard_model::shard_histories(history, &mut Interner::default());
    let ops = shards.remove(shard_id).unwrap_or_default();
    wgl::check(&shard_model::ShardModel { lock_expiration_us: history.lock_expiration_us() }, &ops, Limits::default())
}

fn check_linearizability(history: &History, verdicts: &mut Verdicts) {
    record(verdicts, history, "runner table", check_table(history), &check_table);
    let shard_ids: Vec<String> = shard_model::shard_histories(history, &mut Interner::default()).into_keys().collect();
    for shard_id in shard_ids {
        let check = |history: &History| check_shard(history, &shard_id);
        record(verdicts, history, &format!("shard {shard_id}"), check(history), &check);
    }
}
