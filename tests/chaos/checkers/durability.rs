//! Durability: every acknowledged write is reflected in every observation
//! of the whole state that follows it: the state read through the cluster
//! after each power cut (the workload held meanwhile), and the final state
//! the replicas reached after the cluster healed (read from their data
//! dirs after every client returned). Checking after every cut matters:
//! writes after a restart supersede lost ones, so the final state alone
//! would forgive a cut that lost acknowledged writes.
//!
//! Only writes invoked before an observation's read completed count for
//! it; of those, the certainly last one must have completed before the read
//! began.
//!
//! Which writes must be visible, given later writes and expiry:
//!
//! - **Locks**, per shard `s` and address `a`. The writes that can change
//!   whether `s`'s record is `a`'s are: `a`'s acquire/refresh/release of `s`
//!   and `a`'s releaseAll, and another address's acquire of `s` that was
//!   answered with `s` or whose outcome is unknown (it may have taken an
//!   expired lock). If the last of these, `W`, is an `ok` write of `a` and
//!   every other one completed before `W` was invoked, then `W` is visible:
//!   an acquire or refresh answering `s` leaves the record `a`'s, with an
//!   age no greater than store time can advance from `W`'s invocation to
//!   the read ([`super::store_time::age_possible`]); any other `W` (a
//!   release, or an answer without `s`) leaves it not `a`'s. Expiry alone
//!   never deletes a record, so it does not excuse a missing one.
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
use super::store_time::age_possible;
use crate::history::{Answer, Call, History, Micros, Observation, Op, Outcome};

pub fn check(history: &History) -> Vec<String> {
    if history.final_state.is_none() {
        return vec!["no final state was read: durability not checked".into()];
    }
    let mut violations = Vec::new();
    for observation in history.all_observations() {
        violations.extend(check_locks(history, observation));
        violations.extend(check_runners(history, observation));
    }
    violations
}

fn touches(op: &Op, shard_id: &str) -> bool {
    op.shard_ids().contains(&shard_id)
}

fn check_locks(history: &History, observation: &Observation) -> Vec<String> {
    let (read_from, read_to) = observation.locks_at;
    let before: Vec<&Op> = history.ops.iter().filter(|op| op.invoke_us < read_to).collect();
    let mut asked: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in before.iter().copied() {
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
        let record = observation.locks.iter().find(|lock| lock.shard_id == shard_id);
        for address in addresses {
            let relevant: Vec<&Op> = before
                .iter()
                .copied()
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
            let Some(last) = certainly_last(&relevant, read_from) else { continue };
            if last.call.address() != Some(address) {
                continue;
            }
            let holds = last.answered_shard_ids().is_some_and(|ids| ids.iter().any(|id| id == shard_id));
            let visible = match record {
                Some(lock) if holds => lock.address == address && age_possible(lock.age_ms, last.invoke_us, read_to),
                None => !holds,
                Some(lock) => lock.address != address,
            };
            if !visible {
                violations.push(format!(
                    "{}: shard {shard_id}: acknowledged {} by {address} (op {}, answer {:?}) not reflected; record {record:?}",
                    observation.source,
                    last.call.name(),
                    last.id,
                    last.answer
                ));
            }
        }
    }
    violations
}

/// The `ok` write invoked last, if every other write completed before it
/// was invoked and it completed before the read began at `read_from`.
fn certainly_last<'h>(relevant: &[&'h Op], read_from: Micros) -> Option<&'h Op> {
    let last = *relevant.iter().max_by_key(|op| (op.invoke_us, op.id))?;
    let follows_all = relevant
        .iter()
        .filter(|op| op.id != last.id)
        .all(|op| op.outcome == Outcome::Ok && op.complete_us < last.invoke_us);
    (last.is_ok() && follows_all && last.complete_us < read_from).then_some(last)
}

fn check_runners(history: &History, observation: &Observation) -> Vec<String> {
    let (read_from, read_to) = observation.runners_at;
    let index = LivenessIndex::new(history);
    let before: Vec<&Op> = history.ops.iter().filter(|op| op.invoke_us < read_to).collect();
    let addresses: BTreeSet<&str> = before
        .iter()
        .filter_map(|op| match &op.call {
            Call::Register { address, .. } => Some(address.as_str()),
            _ => None,
        })
        .collect();
    let mut violations = Vec::new();
    for address in addresses {
        let own: Vec<&Op> = before
            .iter()
            .copied()
            .filter(|op| op.outcome != Outcome::Failed)
            .filter(|op| {
                matches!(&op.call, Call::Register { address: a, .. } | Call::Unregister { address: a }
                    | Call::SetRunnerHealth { address: a, .. } if a == address)
            })
            .collect();
        let Some(last) = certainly_last(&own, read_from) else { continue };
        let swept = before.iter().any(|op| {
            let other_unregister = matches!(&op.call, Call::Unregister { address: a } if a != address);
            let may_follow = op.outcome == Outcome::Unknown || (op.is_ok() && op.complete_us >= last.invoke_us);
            other_unregister && may_follow && !index.certainly_live_during(last, address, op)
        });
        let record = observation.runners.iter().find(|runner| runner.address == address);
        let visible = match (&last.call, &last.answer, record) {
            (Call::Unregister { .. }, _, record) => record.is_none(),
            (_, _, _) if swept => true,
            (Call::Register { runner, healthy, .. }, Some(Answer::MachineId(id)), Some(record)) => {
                record.machine_id == *id
                    && &record.runner == runner
                    && record.healthy == *healthy
                    && age_possible(record.heartbeat_age_ms, last.invoke_us, read_to)
            }
            (Call::Register { .. }, _, None) => false,
            (Call::SetRunnerHealth { healthy, .. }, _, Some(record)) => record.healthy == *healthy,
            _ => true,
        };
        if !visible {
            violations.push(format!(
                "{}: runner {address}: acknowledged {} (op {}, answer {:?}) not reflected; record {record:?}",
                observation.source,
                last.call.name(),
                last.id,
                last.answer
            ));
        }
    }
    violations
}
