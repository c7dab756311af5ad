//! Data-driven tests of the checkers on small hand-written histories: each
//! case is a list of operations and whether the history must pass.

use super::check_all;
use crate::history::{Answer, Call, History, Micros, Observation, ObservedLock, ObservedRunner, Op, Outcome, RunInfo};

const MS: Micros = 1000;

fn op(id: u64, call: Call, invoke_ms: Micros, complete_ms: Micros, answer: Option<Answer>) -> Op {
    let outcome = if answer.is_some() { Outcome::Ok } else { Outcome::Unknown };
    let process = call.address().unwrap_or("reader").to_owned();
    Op { id, process, call, invoke_us: invoke_ms * MS, complete_us: complete_ms * MS, outcome, answer, error: None }
}

fn acquire(id: u64, address: &str, at_ms: Micros, got: bool) -> Op {
    let call = Call::Acquire { address: address.into(), shard_ids: vec!["default:1".into()] };
    let answer = Answer::ShardIds(if got { vec!["default:1".into()] } else { Vec::new() });
    op(id, call, at_ms, at_ms + 5, Some(answer))
}

fn register(id: u64, address: &str, at_ms: Micros, machine_id: i64) -> Op {
    let call = Call::Register { address: address.into(), runner: format!("json-{address}"), healthy: true };
    op(id, call, at_ms, at_ms + 5, Some(Answer::MachineId(machine_id)))
}

fn read(id: u64, at_ms: Micros, addresses: &[&str]) -> Op {
    let runners = addresses.iter().map(|address| (format!("json-{address}"), true)).collect();
    op(id, Call::GetRunners, at_ms, at_ms + 5, Some(Answer::Runners(runners)))
}

fn history(ops: Vec<Op>, final_state: Option<Observation>) -> History {
    let info = RunInfo { seed: 0, nodes: 3, lab_mode: "test".into(), lock_expiration_ms: 2000, shard_ids: Vec::new() };
    History { info: Some(info), ops, faults: Vec::new(), observations: Vec::new(), final_state }
}

fn observed(source: &str, at_ms: Micros, locks: Vec<ObservedLock>, runners: Vec<ObservedRunner>) -> Observation {
    let at = (at_ms * MS, at_ms * MS + 5 * MS);
    Observation { source: source.into(), runners_at: at, locks_at: at, lock_expiration_ms: 2000, locks, runners }
}

fn lock(address: &str, age_ms: u64) -> ObservedLock {
    ObservedLock { shard_id: "default:1".into(), address: address.into(), age_ms }
}

/// (linearizability findings, mutual exclusion findings, machine-id findings, durability findings)
fn findings(history: &History) -> [usize; 4] {
    let verdicts = check_all(history);
    assert!(verdicts.linearizability_inconclusive.is_empty(), "{:?}", verdicts.linearizability_inconclusive);
    let durability = if history.final_state.is_some() { verdicts.durability.len() } else { 0 };
    [verdicts.linearizability.len(), verdicts.mutual_exclusion.len(), verdicts.machine_ids.len(), durability]
}

#[test]
fn lock_taken_only_after_expiry() {
    let fine =
        history(vec![acquire(0, "a:1", 0, true), acquire(1, "b:1", 1000, false), acquire(2, "b:1", 2100, true)], None);
    assert_eq!(findings(&fine), [0, 0, 0, 0]);
    let early = history(vec![acquire(0, "a:1", 0, true), acquire(1, "b:1", 1000, true)], None);
    assert_eq!(findings(&early), [1, 1, 0, 0]);
}

#[test]
fn expiry_the_timestamps_cannot_decide_is_allowed_both_ways() {
    // a's acquire takes 100 ms, so its lock was stamped somewhere in [0, 100] ms.
    let mut slow = acquire(0, "a:1", 0, true);
    slow.complete_us = 100 * MS;
    let taken = history(vec![slow.clone(), acquire(1, "b:1", 2050, true)], None);
    let kept = history(vec![slow, acquire(1, "b:1", 2050, false)], None);
    assert_eq!(findings(&taken)[0], 0);
    assert_eq!(findings(&kept)[0], 0);
}

#[test]
fn acknowledged_lock_missing_from_the_final_state_is_flagged() {
    let lost = observed("final state", 10_000, Vec::new(), Vec::new());
    let [linearizability, _, _, durability] = findings(&history(vec![acquire(0, "a:1", 0, true)], Some(lost)));
    assert_eq!((linearizability, durability), (1, 1));
    let kept = observed("final state", 10_000, vec![lock("a:1", 9_990)], Vec::new());
    assert_eq!(findings(&history(vec![acquire(0, "a:1", 0, true)], Some(kept))), [0, 0, 0, 0]);
}

#[test]
fn a_lock_older_than_real_time_allows_is_flagged() {
    // Store time may lag without bound, never run ahead: an age of 10 E
    // one second after the acquire is a clock that jumped.
    let young = observed("final state", 1_000, vec![lock("a:1", 0)], Vec::new());
    assert_eq!(findings(&history(vec![acquire(0, "a:1", 0, true)], Some(young))), [0, 0, 0, 0]);
    let aged = observed("final state", 1_000, vec![lock("a:1", 20_000)], Vec::new());
    let [linearizability, _, _, durability] = findings(&history(vec![acquire(0, "a:1", 0, true)], Some(aged)));
    assert_eq!((linearizability, durability), (1, 1));
}

#[test]
fn an_acknowledged_write_lost_in_a_power_cut_is_flagged_though_the_final_state_has_it_again() {
    let ops = vec![acquire(0, "a:1", 0, true), acquire(1, "a:1", 3_000, true)];
    let final_state = observed("final state", 10_000, vec![lock("a:1", 6_990)], Vec::new());
    let mut cut = history(ops, Some(final_state));
    cut.observations.push(observed("after power-cut-all", 1_000, Vec::new(), Vec::new()));
    let [linearizability, _, _, durability] = findings(&cut);
    assert_eq!((linearizability, durability), (1, 1));
    cut.observations[0].locks.push(lock("a:1", 990));
    assert_eq!(findings(&cut), [0, 0, 0, 0]);
}

#[test]
fn no_lower_bound_on_store_time_a_lock_may_stay_held_and_a_runner_live() {
    // Store time froze (no leader): long after E of real time the lock is
    // still held and the runner still listed; neither is a violation.
    let held = history(vec![acquire(0, "a:1", 0, true), acquire(1, "b:1", 60_000, false)], None);
    assert_eq!(findings(&held), [0, 0, 0, 0]);
    let live = history(vec![register(0, "a:1", 0, 1), read(1, 60_000, &["a:1"])], None);
    assert_eq!(findings(&live)[0], 0);
}

#[test]
fn machine_ids_are_the_smallest_free() {
    let duplicate = history(vec![register(0, "a:1", 0, 1), register(1, "b:1", 10, 1)], None);
    assert_eq!(findings(&duplicate)[..3], [1, 0, 1]);
    let reused = history(
        vec![
            register(0, "a:1", 0, 1),
            op(1, Call::Unregister { address: "a:1".into() }, 10, 15, Some(Answer::Done)),
            register(2, "b:1", 20, 1),
        ],
        None,
    );
    assert_eq!(findings(&reused), [0, 0, 0, 0]);
}

#[test]
fn reads_must_show_live_runners_in_machine_id_order() {
    let base = || vec![register(0, "a:1", 0, 1), register(1, "b:1", 10, 2)];
    let mut ordered = base();
    ordered.push(read(2, 20, &["a:1", "b:1"]));
    assert_eq!(findings(&history(ordered, None))[0], 0);
    let mut reversed = base();
    reversed.push(read(2, 20, &["b:1", "a:1"]));
    assert_eq!(findings(&history(reversed, None))[0], 1);
    let mut stale = base();
    stale.push(read(2, 20, &["a:1"]));
    assert_eq!(findings(&history(stale, None))[0], 1);
    let mut expired = base();
    expired.push(read(2, 2100, &[]));
    assert_eq!(findings(&history(expired, None))[0], 0);
}

#[test]
fn heartbeat_of_unknown_outcome_may_keep_a_runner_live_indefinitely() {
    let mut refresh = op(1, Call::Refresh { address: "a:1".into(), shard_ids: Vec::new() }, 10, 20, None);
    refresh.outcome = Outcome::Unknown;
    let late_read = history(vec![register(0, "a:1", 0, 1), refresh.clone(), read(2, 60_000, &["a:1"])], None);
    assert_eq!(findings(&late_read)[0], 0);
    let mut lock_refresh =
        op(1, Call::Refresh { address: "a:1".into(), shard_ids: vec!["default:1".into()] }, 10, 20, None);
    lock_refresh.outcome = Outcome::Unknown;
    let kept = history(vec![acquire(0, "a:1", 0, true), lock_refresh, acquire(2, "b:1", 60_000, false)], None);
    assert_eq!(findings(&kept)[0], 0);
}

#[test]
fn a_heartbeat_older_than_real_time_allows_is_flagged() {
    let runner = |heartbeat_age_ms| ObservedRunner {
        address: "a:1".into(),
        runner: "json-a:1".into(),
        healthy: true,
        machine_id: 1,
        heartbeat_age_ms,
    };
    let young = observed("final state", 1_000, Vec::new(), vec![runner(990)]);
    assert_eq!(findings(&history(vec![register(0, "a:1", 0, 1)], Some(young))), [0, 0, 0, 0]);
    let aged = observed("final state", 1_000, Vec::new(), vec![runner(20_000)]);
    let [linearizability, _, _, durability] = findings(&history(vec![register(0, "a:1", 0, 1)], Some(aged)));
    assert_eq!((linearizability, durability), (1, 1));
}

#[test]
fn a_sweep_cannot_free_the_id_of_a_runner_that_is_certainly_live() {
    let sweep = |at_ms| op(1, Call::Unregister { address: "b:1".into() }, at_ms, at_ms + 5, Some(Answer::Done));
    // 1 s after a's heartbeat store time cannot have aged it past E: its id stays its own.
    let early = history(vec![register(0, "a:1", 0, 1), sweep(1000), register(2, "c:1", 1100, 1)], None);
    assert_eq!(findings(&early)[..3], [1, 0, 1]);
    // 2.5 s after, it may be dead and swept: the id may be handed out again.
    let late = history(vec![register(0, "a:1", 0, 1), sweep(2500), register(2, "c:1", 2600, 1)], None);
    assert_eq!(findings(&late), [0, 0, 0, 0]);
}
