//! The sequential specification of one shard's lock, for the
//! linearizability search, and the per-shard histories it checks.
//!
//! State: the lock record (holder address, and the earliest lab time its
//! stamp can have been taken: the linearization point of the acquire or
//! refresh that set it) and a lower bound on the linearization point of
//! the next operation (points are monotone in linearization order).
//!
//! Time follows [`super::store_time`] alone (no node clock is trusted):
//! - a takeover of another address's lock is possible only once store time
//!   can have passed the holder's stamp by `E`: at a point at least
//!   `real_to_pass_us(E)` after the stamp ([`super::store_time::may_have_aged_past`]);
//! - a refusal is always possible while someone holds the record: store
//!   time has no lower bound, so a lock may stay held for any real time;
//! - an observed lock's age may not exceed what store time can advance
//!   between the stamp and the read.
//!
//! Relaxations (each widens what is accepted, so a reported violation is
//! real): time constraints from operations on *other* shards are ignored;
//! `releaseAll(a)` appears in the history of every shard `a` ever asked
//! for; an operation with an unknown outcome may take effect (with any
//! answer) at any time after its invocation, or never.

use std::collections::BTreeMap;

use super::store_time::{age_possible, may_have_aged_past, real_to_pass_us};
use super::wgl::{Model, Timed};
use crate::history::{Call, History, Micros, Observation, Outcome};

/// A window of real (lab) time an operation takes effect in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub lo: Micros,
    pub hi: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardState {
    /// The holder and the earliest lab time of its stamp.
    holder: Option<(u32, Micros)>,
    point_lo: Micros,
}

#[derive(Debug, Clone)]
pub enum ShardCall {
    /// `got`: whether the answer listed this shard; `None` when unknown.
    Acquire {
        address: u32,
        got: Option<bool>,
    },
    Refresh {
        address: u32,
        got: Option<bool>,
    },
    /// `release(address, shard)` or `releaseAll(address)`.
    Release {
        address: u32,
    },
    /// An observation: the holder and the lock's age in ms.
    Observe {
        holder: Option<(u32, u64)>,
    },
}

#[derive(Debug, Clone)]
pub struct ShardOp {
    pub call: ShardCall,
    pub window: Window,
}

pub struct ShardModel {
    pub lock_expiration_us: Micros,
}

impl ShardModel {
    fn acquire(&self, state: &ShardState, address: u32, got: Option<bool>, time: Window, next: &mut Vec<ShardState>) {
        match state.holder {
            Some((holder, stamped_lo)) if holder != address => {
                if got != Some(false) && may_have_aged_past(stamped_lo, time.hi, self.lock_expiration_us) {
                    let lo = time.lo.max(stamped_lo.saturating_add(real_to_pass_us(self.lock_expiration_us)));
                    next.push(ShardState { holder: Some((address, lo)), point_lo: lo });
                }
                if got != Some(true) {
                    next.push(ShardState { holder: state.holder, point_lo: time.lo });
                }
            }
            // Free, or already this address's: taken (again), stamped now.
            _ => {
                if got != Some(false) {
                    next.push(ShardState { holder: Some((address, time.lo)), point_lo: time.lo });
                }
            }
        }
    }
}

impl Model for ShardModel {
    type State = ShardState;
    type Op = ShardOp;

    fn init(&self) -> Vec<ShardState> {
        vec![ShardState { holder: None, point_lo: Micros::MIN }]
    }

    fn step(&self, state: &ShardState, op: &ShardOp, next: &mut Vec<ShardState>) {
        let lo = op.window.lo.max(state.point_lo);
        if lo > op.window.hi {
            return;
        }
        let time = Window { lo, hi: op.window.hi };
        let holder = state.holder.map(|(holder, _)| holder);
        match op.call {
            ShardCall::Observe { holder: observed } => {
                let matches = match (observed, state.holder) {
                    (None, None) => true,
                    (Some((address, age_ms)), Some((holder, stamped_lo))) => {
                        address == holder && age_possible(age_ms, stamped_lo, time.hi)
                    }
                    _ => false,
                };
                if matches {
                    next.push(ShardState { holder: state.holder, point_lo: time.lo });
                }
            }
            ShardCall::Acquire { address, got } => self.acquire(state, address, got, time, next),
            ShardCall::Refresh { address, got } => {
                if holder == Some(address) && got != Some(false) {
                    next.push(ShardState { holder: Some((address, time.lo)), point_lo: time.lo });
                } else if holder != Some(address) && got != Some(true) {
                    next.push(ShardState { holder: state.holder, point_lo: time.lo });
                }
            }
            ShardCall::Release { address } => {
                let holder = if holder == Some(address) { None } else { state.holder };
                next.push(ShardState { holder, point_lo: time.lo });
            }
        }
    }
}

/// Interns addresses and runner JSON as small integers.
#[derive(Debug, Default)]
pub struct Interner {
    ids: BTreeMap<String, u32>,
}

impl Interner {
    pub fn id(&mut self, text: &str) -> u32 {
        let next = u32::try_from(self.ids.len()).expect("fewer than 2^32 strings");
        *self.ids.entry(text.to_owned()).or_insert(next)
    }
}

/// The window an operation may take effect in: between its invocation and
/// its completion (any time after the invocation when the outcome is unknown).
pub fn window_of(invoke_us: Micros, complete_us: Option<Micros>) -> Window {
    Window { lo: invoke_us, hi: complete_us.unwrap_or(Micros::MAX) }
}

/// An observation as a timed operation of the linearizability search.
pub fn observe_op<O>(op: O, (invoke_us, complete_us): (Micros, Micros), history_id: u64) -> Timed<O> {
    Timed { op, invoke_us, complete_us: Some(complete_us), history_id }
}

/// The history id an observation is reported under: `u64::MAX` for the
/// final state, `u64::MAX - 1 - i` for the `i`-th observation after a cut.
pub fn observation_id(history: &History, observation: &Observation) -> u64 {
    match history.observations.iter().position(|other| std::ptr::eq(other, observation)) {
        Some(index) => Observation::FINAL_ID - 1 - index as u64,
        None => Observation::FINAL_ID,
    }
}

/// The history of each shard: every non-failed operation that may touch it.
pub fn shard_histories(history: &History, addresses: &mut Interner) -> BTreeMap<String, Vec<Timed<ShardOp>>> {
    let mut per_shard: BTreeMap<String, Vec<Timed<ShardOp>>> = BTreeMap::new();
    let mut askers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for op in history.ops.iter().filter(|op| op.outcome != Outcome::Failed) {
        let complete_us = (op.outcome == Outcome::Ok).then_some(op.complete_us);
        let window = window_of(op.invoke_us, complete_us);
        let answered = op.answered_shard_ids();
        let got = |shard_id: &str| answered.map(|ids| ids.iter().any(|id| id == shard_id));
        let mut push = |shard_id: &str, call: ShardCall| {
            let timed = Timed { op: ShardOp { call, window }, invoke_us: op.invoke_us, complete_us, history_id: op.id };
            per_shard.entry(shard_id.to_owned()).or_default().push(timed);
        };
        match &op.call {
            Call::Acquire { address, shard_ids } | Call::Refresh { address, shard_ids } => {
                let is_acquire = matches!(op.call, Call::Acquire { .. });
                let address_id = addresses.id(address);
                let mut seen = std::collections::BTreeSet::new();
                for shard_id in shard_ids.iter().filter(|id| seen.insert(id.as_str())) {
                    let got = got(shard_id);
                    let call = if is_acquire {
                        askers.entry(address.clone()).or_default().push(shard_id.clone());
                        ShardCall::Acquire { address: address_id, got }
                    } else {
                        ShardCall::Refresh { address: address_id, got }
                    };
                    push(shard_id, call);
                }
            }
            Call::Release { address, shard_id } => {
                push(shard_id, ShardCall::Release { address: addresses.id(address) })
            }
            _ => {}
        }
    }
    add_release_alls(history, addresses, &askers, &mut per_shard);
    for observation in history.all_observations() {
        let id = observation_id(history, observation);
        for (shard_id, ops) in per_shard.iter_mut() {
            let lock = observation.locks.iter().find(|lock| &lock.shard_id == shard_id);
            let holder = lock.map(|lock| (addresses.id(&lock.address), lock.age_ms));
            let window = Window { lo: observation.locks_at.0, hi: observation.locks_at.1 };
            let call = ShardCall::Observe { holder };
            ops.push(observe_op(ShardOp { call, window }, observation.locks_at, id));
        }
    }
    for ops in per_shard.values_mut() {
        ops.sort_by_key(|timed| (timed.invoke_us, timed.history_id));
    }
    per_shard
}

fn add_release_alls(
    history: &History,
    addresses: &mut Interner,
    askers: &BTreeMap<String, Vec<String>>,
    per_shard: &mut BTreeMap<String, Vec<Timed<ShardOp>>>,
) {
    for op in history.ops.iter().filter(|op| op.outcome != Outcome::Failed) {
        let Call::ReleaseAll { address } = &op.call else { continue };
        let complete_us = (op.outcome == Outcome::Ok).then_some(op.complete_us);
        let window = window_of(op.invoke_us, complete_us);
        let address_id = addresses.id(address);
        let shards: std::collections::BTreeSet<&String> = askers.get(address).into_iter().flatten().collect();
        for shard_id in shards {
            let call = ShardCall::Release { address: address_id };
            let timed = Timed { op: ShardOp { call, window }, invoke_us: op.invoke_us, complete_us, history_id: op.id };
            per_shard.entry(shard_id.clone()).or_default().push(timed);
        }
    }
}
