//! Durability: every acknowledged write is reflected in the final state that
//! the replicas reached after the cluster healed (read from their data dirs
//! after every client returned).
//!
//! Which writes must be visible, given later writes and expiry:
//!
//! - **Locks**, per shard `s` and address `a`. The writes that can change
//!   whether `s`'s record is `a`'s are: `a`'s acquire/refresh/release of `s`
//!   and `a`'s releaseAll, and another address's acquire of `s` that was
//!   answered with `s` or whose outcome is unknown (it may have taken an
//!   expired lock). If the last of these, `W`, is an `ok` write of `a` and
//!   every other one completed before `W` was invoked, then `W` is visible:
//!   an acquire or refresh answering `s` leaves the record `a`'s with
//!   `acquired_at` inside `W`'s window; any other `W` (a release, or an
//!   answer without `s`) leaves it not `a`'s. Expiry alone never deletes a
//!   record, so it does not excuse a missing one.
//! - **Runners**, per address `a`. The writes are `a`'s register, unregister
//!   and setRunnerHealth, and any other address's unregister during which
//!   `a` was not certainly live (it deletes runners that are not live, see
//!   [`super::machine_ids::LivenessIndex`]). If the last of these is an `ok`
//!   write `W` of `a` that follows all others: a register leaves a record
//!   with its answered machine id, its runner JSON and health flag; an
//!   unregister leaves no record; a setRunnerHealth leaves the flag, if the
//!   record exists.

use std::collections::{BTreeMap, BTreeSet};

use super::machine_ids::LivenessIndex;
use crate::history::{Answer, Call, FinalState, History, Op, Outcome, CLOCK_TOLERANCE_US};

pub fn check(history: &History) -> Vec<String> {
    let Some(final_state) = &history.final_state else {
        return vec!["no final state was read: durability not checked".into()];
    };
    let mut violations = check_locks(history, final_state);
    violations.extend(check_runners(history, final_state));
    violations
}

fn touches(op: &Op, shard_id: &str) -> bool {
    op.shard_ids().contains(&shard_id)
}

fn check_locks(history: &History, final_state: &FinalState) -> Vec<String> {
    let mut asked: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in &history.ops {
        if let (Call::Acquire { address, shard_ids } | Call::Refresh { address, shard_ids }, true) =
            (&op.call, op.outcome != Outcome::Failed)
        {
            for shard_id in shard_ids {
                asked.entry(shard_id.as_str()).or_default().insert(address.as_str());
            }
        }
    }
    let mut violations = Vec::new();
    for (shard_id, addresses) in asked {
        let record = final_state.locks.iter().find(|lock| lock.shard_id == shard_id);
        for address in addresses {
            let relevant: Vec<&Op> = history
                .ops
                .iter()
                .filter(|op| op.outcome != Outcome::Failed)
                .filter(|op| match &op.call {
                    Call::ReleaseAll { address: a } => a == address,
                    Call::Acquire { address: a, .. } if a != address => {
                        touches(op, shard_id)
                            && (op.outcome == Outcome::Unknown
                                || op.answered_shard_ids().is_some_and(|ids| ids.iter().any(|id| id == shard_id)))
                    }
                    call => call.address() == Some(address) && touches(op, shard_id),
                })
                .collect();
            let Some(last) = certainly_last(&relevant) else { continue };
            if last.call.address() != Some(address) {
                continue;
            }
            let holds = last.answered_shard_ids().is_some_and(|ids| ids.iter().any(|id| id == shard_id));
            let visible = match record {
                Some(lock) if holds => {
                    lock.address == address
                        && last.invoke_us - CLOCK_TOLERANCE_US <= lock.acquired_at_us
                        && lock.acquired_at_us <= last.complete_us + CLOCK_TOLERANCE_US
                }
                None => !holds,
                Some(lock) => lock.address != address,
            };
            if !visible {
                violations.push(format!(
                    "shard {shard_id}: acknowledged {} by {address} (op {}, answer {:?}) not reflected; final record {record:?}",
                    last.call.name(),
                    last.id,
                    last.answer
                ));
            }
        }
    }
    violations
}

/// The `ok` write invoked last, if every other write completed before it was invoked.
fn certainly_last<'h>(relevant: &[&'h Op]) -> Option<&'h Op> {
    let last = *relevant.iter().max_by_key(|op| (op.invoke_us, op.id))?;
    let follows_all = relevant
        .iter()
        .filter(|op| op.id != last.id)
        .all(|op| op.outcome == Outcome::Ok && op.complete_us < last.invoke_us);
    (last.is_ok() && follows_all).then_some(last)
}

fn check_runners(history: &History, final_state: &FinalState) -> Vec<String> {
    let index = LivenessIndex::new(history);
    let addresses: BTreeSet<&str> = history
        .ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Register { address, .. } => Some(address.as_str()),
            _ => None,
        })
        .collect();
    let mut violations = Vec::new();
    for address in addresses {
        let own: Vec<&Op> = history
            .ops
            .iter()
            .filter(|op| op.outcome != Outcome::Failed)
            .filter(|op| {
                matches!(&op.call, Call::Register { address: a, .. } | Call::Unregister { address: a }
                    | Call::SetRunnerHealth { address: a, .. } if a == address)
            })
            .collect();
        let Some(last) = certainly_last(&own) else { continue };
        let swept = history.ops.iter().any(|op| {
            let other_unregister = matches!(&op.call, Call::Unregister { address: a } if a != address);
            let may_follow = op.outcome == Outcome::Unknown || (op.is_ok() && op.complete_us >= last.invoke_us);
            other_unregister && may_follow && !index.certainly_live_during(last, address, op)
        });
        let record = final_state.runners.iter().find(|runner| runner.address == address);
        let visible = match (&last.call, &last.answer, record) {
            (Call::Unregister { .. }, _, record) => record.is_none(),
            (_, _, _) if swept => true,
            (Call::Register { runner, healthy, .. }, Some(Answer::MachineId(id)), Some(record)) => {
                record.machine_id == *id && &record.runner == runner && record.healthy == *healthy
            }
            (Call::Register { .. }, _, None) => false,
            (Call::SetRunnerHealth { healthy, .. }, _, Some(record)) => record.healthy == *healthy,
            _ => true,
        };
        if !visible {
            violations.push(format!(
                "runner {address}: acknowledged {} (op {}, answer {:?}) not reflected; final record {record:?}",
                last.call.name(),
                last.id,
                last.answer
            ));
        }
    }
    violations
}
