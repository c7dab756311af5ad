//! Machine ids: no two registered runners share a machine id mod 1024.
//!
//! From the history: an `ok` register of `a` answering `m` makes `a`
//! *certainly present* with `m` from its completion until the first
//! invocation of something that may delete the record: an `unregister(a)`,
//! or an `unregister` of another address (which deletes every runner that is
//! not live) unless `a` was certainly live then — an `ok` heartbeat of `a`
//! (register or refresh) completed before that unregister was invoked and
//! was invoked so shortly before it completed that store time cannot have
//! aged it past `E` ([`super::store_time`]). Unknown unregisters may
//! apply at any time after their invocation. If `b`'s register (invoked and
//! completed) falls inside `a`'s certain presence, both records existed when
//! it was applied, so their ids must differ mod 1024.
//!
//! From every observation (after power cuts, and the final state): every
//! pair of records differs mod 1024.

use std::collections::BTreeMap;

use super::store_time::real_to_pass_us;
use crate::history::{Answer, Call, History, Micros, Op, Outcome};

const RESIDUES: i64 = runner_storage::limits::MACHINE_ID_RESIDUES;

pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let registrations: Vec<(&Op, &str, i64)> = history
        .ops
        .iter()
        .filter_map(|op| match (&op.call, &op.answer, op.outcome) {
            (Call::Register { address, .. }, Some(Answer::MachineId(id)), Outcome::Ok) => {
                Some((op, address.as_str(), *id))
            }
            _ => None,
        })
        .collect();
    let index = LivenessIndex::new(history);
    let presence: Vec<Micros> = registrations.iter().map(|(op, address, _)| index.presence_end(op, address)).collect();
    for (i, (first, first_address, first_id)) in registrations.iter().enumerate() {
        for (second, second_address, second_id) in &registrations {
            let same_residue = first_id.rem_euclid(RESIDUES) == second_id.rem_euclid(RESIDUES);
            let inside = first.complete_us <= second.invoke_us && second.complete_us <= presence[i];
            if same_residue && first_address != second_address && inside {
                violations.push(format!(
                    "{second_address} registered with machine id {second_id} (op {}) while {first_address} certainly held {first_id} (op {})",
                    second.id, first.id
                ));
            }
        }
    }
    for observation in history.all_observations() {
        for (i, first) in observation.runners.iter().enumerate() {
            for second in &observation.runners[i + 1..] {
                if first.machine_id.rem_euclid(RESIDUES) == second.machine_id.rem_euclid(RESIDUES) {
                    violations.push(format!(
                        "{}: {} has machine id {} and {} has {}",
                        observation.source, first.address, first.machine_id, second.address, second.machine_id
                    ));
                }
            }
        }
    }
    violations
}

/// The `ok` heartbeats of each address and every unregister that may have
/// applied, for the "certainly present" questions.
pub struct LivenessIndex<'h> {
    heartbeats: BTreeMap<&'h str, Vec<&'h Op>>,
    unregisters: Vec<&'h Op>,
    lock_expiration_us: Micros,
}

impl<'h> LivenessIndex<'h> {
    pub fn new(history: &'h History) -> LivenessIndex<'h> {
        let mut heartbeats: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        let mut unregisters = Vec::new();
        for op in history.ops.iter().filter(|op| op.outcome != Outcome::Failed) {
            match &op.call {
                Call::Register { address, .. } | Call::Refresh { address, .. } if op.is_ok() => {
                    heartbeats.entry(address.as_str()).or_default().push(op);
                }
                Call::Unregister { .. } => unregisters.push(op),
                _ => {}
            }
        }
        LivenessIndex { heartbeats, unregisters, lock_expiration_us: history.lock_expiration_us() }
    }

    /// Until when the record `since` (an `ok` register of `address`) created
    /// or updated is certainly present.
    pub fn presence_end(&self, since: &Op, address: &str) -> Micros {
        for threat in &self.unregisters {
            let may_follow = threat.outcome == Outcome::Unknown || threat.complete_us >= since.invoke_us;
            if threat.id == since.id || !may_follow {
                continue;
            }
            let Call::Unregister { address: target } = &threat.call else { continue };
            if target == address || !self.certainly_live_during(since, address, threat) {
                return threat.invoke_us.max(since.complete_us);
            }
        }
        Micros::MAX
    }

    /// Whether `address` had an `ok` heartbeat (`since` or one invoked after
    /// it completed) that keeps it live through the whole window of `unregister`.
    pub fn certainly_live_during(&self, since: &Op, address: &str, unregister: &Op) -> bool {
        if unregister.outcome != Outcome::Ok {
            return false;
        }
        let Some(heartbeats) = self.heartbeats.get(address) else { return false };
        // Certainly live: from the heartbeat's invocation to the unregister's
        // completion, store time cannot have advanced by E.
        let too_early = unregister.complete_us - real_to_pass_us(self.lock_expiration_us);
        let start = heartbeats.partition_point(|heartbeat| heartbeat.invoke_us <= too_early);
        heartbeats[start..].iter().take_while(|heartbeat| heartbeat.invoke_us < unregister.invoke_us).any(|heartbeat| {
            (heartbeat.id == since.id || heartbeat.invoke_us >= since.complete_us)
                && heartbeat.complete_us < unregister.invoke_us
        })
    }
}
