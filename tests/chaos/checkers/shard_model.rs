//! The sequential specification of one shard's lock, for the
//! linearizability search, and the per-shard histories it checks.
//!
//! State: the lock record (holder address and the window its `acquired_at`
//! lies in) and a lower bound on state-machine time.
//!
//! Relaxations (each widens what is accepted, so a reported violation is
//! real; none hides a wrong answer that the timestamps can decide):
//! - A write takes effect at an unknown state time `T` in its window
//!   `[invoke - tol, complete + tol]`, and `T` never goes below the time of
//!   the writes linearized before it (state time never runs backwards). Time
//!   constraints from operations on *other* shards are ignored.
//! - Expiry is decided by `acquired_at + E < T` over windows: when the
//!   windows cannot decide, both outcomes are allowed (the state becomes a
//!   set of possibilities).
//! - `releaseAll(a)` appears in the history of every shard `a` ever asked for.
//! - An operation with an unknown outcome may take effect (with any answer)
//!   at any time after its invocation, or never.

use std::collections::BTreeMap;

use super::wgl::{Model, Timed};
use crate::history::{Call, History, Micros, Outcome, CLOCK_TOLERANCE_US};

/// A window of state-machine time, on the lab clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    pub lo: Micros,
    pub hi: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardState {
    holder: Option<(u32, Window)>,
    clock_lo: Micros,
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
    /// The final state: the holder and its `acquired_at`, exactly.
    Observe {
        holder: Option<(u32, Micros)>,
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
    /// The window of a write linearized in `state`, or `None` when it cannot be.
    fn write_time(state: &ShardState, window: Window) -> Option<Window> {
        let lo = window.lo.max(state.clock_lo);
        (lo <= window.hi).then_some(Window { lo, hi: window.hi })
    }

    fn acquire(&self, state: &ShardState, address: u32, got: Option<bool>, time: Window, next: &mut Vec<ShardState>) {
        let unchanged = ShardState { holder: state.holder, clock_lo: time.lo };
        match state.holder {
            None => {
                if got != Some(false) {
                    next.push(ShardState { holder: Some((address, time)), clock_lo: time.lo });
                }
            }
            Some((holder, _)) if holder == address => {
                if got != Some(false) {
                    next.push(ShardState { holder: Some((address, time)), clock_lo: time.lo });
                }
            }
            Some((_, acquired_at)) => {
                let expired_possible = acquired_at.lo + self.lock_expiration_us < time.hi;
                // `hi` is `Micros::MAX` after a write of unknown outcome.
                let held_possible = acquired_at.hi.saturating_add(self.lock_expiration_us) >= time.lo;
                if expired_possible && got != Some(false) {
                    let lo = time.lo.max(acquired_at.lo + self.lock_expiration_us);
                    next.push(ShardState { holder: Some((address, Window { lo, hi: time.hi })), clock_lo: lo });
                }
                if held_possible && got != Some(true) {
                    next.push(unchanged);
                }
            }
        }
    }
}

impl Model for ShardModel {
    type State = ShardState;
    type Op = ShardOp;

    fn init(&self) -> Vec<ShardState> {
        vec![ShardState { holder: None, clock_lo: Micros::MIN }]
    }

    fn step(&self, state: &ShardState, op: &ShardOp, next: &mut Vec<ShardState>) {
        if let ShardCall::Observe { holder } = &op.call {
            let matches = match (holder, &state.holder) {
                (None, None) => true,
                (Some((address, at)), Some((holder, window))) => {
                    address == holder && window.lo <= *at && *at <= window.hi
                }
                _ => false,
            };
            if matches {
                next.push(state.clone());
            }
            return;
        }
        let Some(time) = Self::write_time(state, op.window) else { return };
        let holder = state.holder.map(|(holder, _)| holder);
        match op.call {
            ShardCall::Acquire { address, got } => self.acquire(state, address, got, time, next),
            ShardCall::Refresh { address, got } => {
                if holder == Some(address) && got != Some(false) {
                    next.push(ShardState { holder: Some((address, time)), clock_lo: time.lo });
                } else if holder != Some(address) && got != Some(true) {
                    next.push(ShardState { holder: state.holder, clock_lo: time.lo });
                }
            }
            ShardCall::Release { address } => {
                let holder = if holder == Some(address) { None } else { state.holder };
                next.push(ShardState { holder, clock_lo: time.lo });
            }
            ShardCall::Observe { .. } => unreachable!("handled above"),
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

/// The window a write of `op` may take effect in, widened by the clock tolerance.
pub fn window_of(invoke_us: Micros, complete_us: Option<Micros>) -> Window {
    Window {
        lo: invoke_us - CLOCK_TOLERANCE_US,
        hi: complete_us.map_or(Micros::MAX, |complete| complete + CLOCK_TOLERANCE_US),
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
    if let Some(final_state) = &history.final_state {
        for (shard_id, ops) in per_shard.iter_mut() {
            let lock = final_state.locks.iter().find(|lock| &lock.shard_id == shard_id);
            let holder = lock.map(|lock| (addresses.id(&lock.address), lock.acquired_at_us));
            let window = Window { lo: final_state.at_us, hi: final_state.at_us };
            let call = ShardCall::Observe { holder };
            let complete_us = Some(final_state.at_us);
            ops.push(Timed {
                op: ShardOp { call, window },
                invoke_us: final_state.at_us,
                complete_us,
                history_id: u64::MAX,
            });
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
