//! The sequential specification of the runner table, for the
//! linearizability search, and the history it checks.
//!
//! State: the runner records (machine id, runner JSON, health flag, and the
//! window the last heartbeat lies in) and a lower bound on state time.
//!
//! Relaxations (each only widens what is accepted):
//! - Writes take effect at an unknown `T` in their window, never below the
//!   writes linearized before; reads at `T` in their window, at or above
//!   those writes (`now = max(state now, leader clock)`), without raising
//!   the bound for later writes. Constraints from lock operations are ignored.
//! - Liveness (`last_heartbeat + E > T`) undecidable from the windows is
//!   allowed both ways; in a read each record decides on its own (as if each
//!   had its own `T`); in `unregister`, which deletes every runner that is
//!   not live, every undecidable record branches into kept and deleted.
//! - Unknown outcomes: as in [`super::shard_model`].
//! - `refresh` by an address never registered in the history is left out: it
//!   cannot change the table.
//!
//! Machine ids follow SPEC §3 exactly: the smallest id in 1..=1024 whose
//! residue mod 1024 no record uses, else max + 1; `register` of a present
//! address keeps its id.

use std::collections::{BTreeMap, BTreeSet};

use super::shard_model::{window_of, Interner, Window};
use super::wgl::{Model, Timed};
use crate::history::{Answer, Call, History, Micros, Outcome};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    machine_id: i64,
    runner: u32,
    healthy: bool,
    heartbeat: Window,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableState {
    records: BTreeMap<u32, Record>,
    clock_lo: Micros,
}

/// The final state of one runner record, exactly.
#[derive(Debug, Clone)]
pub struct ObservedRecord {
    pub address: u32,
    pub machine_id: i64,
    pub runner: u32,
    pub healthy: bool,
    pub heartbeat_us: Micros,
}

#[derive(Debug, Clone)]
pub enum TableCall {
    /// `machine_id`: the answer, `None` when unknown.
    Register {
        address: u32,
        runner: u32,
        healthy: bool,
        machine_id: Option<i64>,
    },
    Unregister {
        address: u32,
    },
    SetHealth {
        address: u32,
        healthy: bool,
    },
    Heartbeat {
        address: u32,
    },
    /// An `ok` getRunners: `(runner JSON, healthy)` in answer order.
    GetRunners {
        runners: Vec<(u32, bool)>,
    },
    Observe {
        records: Vec<ObservedRecord>,
    },
}

#[derive(Debug, Clone)]
pub struct TableOp {
    pub call: TableCall,
    pub window: Window,
}

pub struct TableModel {
    pub lock_expiration_us: Micros,
}

/// SPEC §3: the smallest id in 1..=1024 whose residue no record uses; else max + 1.
fn free_machine_id(records: &BTreeMap<u32, Record>) -> i64 {
    const RESIDUES: i64 = runner_storage::limits::MACHINE_ID_RESIDUES;
    let used: BTreeSet<i64> = records.values().map(|record| record.machine_id.rem_euclid(RESIDUES)).collect();
    (1..=RESIDUES)
        .find(|candidate| !used.contains(&(candidate % RESIDUES)))
        .unwrap_or_else(|| records.values().map(|record| record.machine_id).max().unwrap_or(0) + 1)
}

impl TableModel {
    fn certainly_live(&self, record: &Record, time: Window) -> bool {
        record.heartbeat.lo + self.lock_expiration_us > time.hi
    }

    fn possibly_live(&self, record: &Record, time: Window) -> bool {
        // `hi` is `Micros::MAX` after a heartbeat of unknown outcome.
        record.heartbeat.hi.saturating_add(self.lock_expiration_us) > time.lo
    }

    fn register(&self, state: &TableState, call: &TableCall, time: Window, next: &mut Vec<TableState>) {
        let TableCall::Register { address, runner, healthy, machine_id } = *call else { unreachable!() };
        let mut records = state.records.clone();
        let id = match records.get(&address) {
            Some(record) => record.machine_id,
            None => free_machine_id(&records),
        };
        if machine_id.is_some_and(|answered| answered != id) {
            return;
        }
        records.insert(address, Record { machine_id: id, runner, healthy, heartbeat: time });
        next.push(TableState { records, clock_lo: time.lo });
    }

    fn unregister(&self, state: &TableState, address: u32, time: Window, next: &mut Vec<TableState>) {
        let mut outcomes = vec![state.records.clone()];
        for (other, record) in state.records.iter() {
            if *other == address || !self.possibly_live(record, time) {
                outcomes.iter_mut().for_each(|records| {
                    records.remove(other);
                });
            } else if !self.certainly_live(record, time) {
                let deleted: Vec<_> = outcomes
                    .iter()
                    .map(|records| {
                        let mut records = records.clone();
                        records.remove(other);
                        records
                    })
                    .collect();
                outcomes.extend(deleted);
            }
        }
        next.extend(outcomes.into_iter().map(|records| TableState { records, clock_lo: time.lo }));
    }

    /// Whether `runners` is what getRunners may answer at `time`.
    fn read_matches(&self, state: &TableState, runners: &[(u32, bool)], time: Window) -> bool {
        let mut by_machine_id: Vec<&Record> = state.records.values().collect();
        by_machine_id.sort_by_key(|record| record.machine_id);
        let mut answered = runners.iter().peekable();
        for record in by_machine_id {
            let listed =
                answered.peek().is_some_and(|(runner, healthy)| *runner == record.runner && *healthy == record.healthy);
            if listed && self.possibly_live(record, time) {
                answered.next();
            } else if self.certainly_live(record, time) {
                return false;
            }
        }
        answered.next().is_none()
    }

    fn observe_matches(state: &TableState, records: &[ObservedRecord]) -> bool {
        records.len() == state.records.len()
            && records.iter().all(|observed| {
                state.records.get(&observed.address).is_some_and(|record| {
                    record.machine_id == observed.machine_id
                        && record.runner == observed.runner
                        && record.healthy == observed.healthy
                        && record.heartbeat.lo <= observed.heartbeat_us
                        && observed.heartbeat_us <= record.heartbeat.hi
                })
            })
    }
}

impl Model for TableModel {
    type State = TableState;
    type Op = TableOp;

    fn init(&self) -> Vec<TableState> {
        vec![TableState { records: BTreeMap::new(), clock_lo: Micros::MIN }]
    }

    fn step(&self, state: &TableState, op: &TableOp, next: &mut Vec<TableState>) {
        if let TableCall::Observe { records } = &op.call {
            if Self::observe_matches(state, records) {
                next.push(state.clone());
            }
            return;
        }
        let lo = op.window.lo.max(state.clock_lo);
        if lo > op.window.hi {
            return;
        }
        let time = Window { lo, hi: op.window.hi };
        match &op.call {
            TableCall::GetRunners { runners } => {
                if self.read_matches(state, runners, time) {
                    next.push(state.clone());
                }
            }
            TableCall::Observe { .. } => unreachable!("handled above"),
            call @ TableCall::Register { .. } => self.register(state, call, time, next),
            TableCall::Unregister { address } => self.unregister(state, *address, time, next),
            TableCall::SetHealth { address, healthy } => {
                let mut records = state.records.clone();
                if let Some(record) = records.get_mut(address) {
                    record.healthy = *healthy;
                }
                next.push(TableState { records, clock_lo: time.lo });
            }
            TableCall::Heartbeat { address } => {
                let mut records = state.records.clone();
                if let Some(record) = records.get_mut(address) {
                    record.heartbeat = time;
                }
                next.push(TableState { records, clock_lo: time.lo });
            }
        }
    }
}

/// The runner-table history: registrations, unregistrations, health,
/// heartbeats, `ok` reads, and the final state.
pub fn table_history(history: &History, addresses: &mut Interner, runners: &mut Interner) -> Vec<Timed<TableOp>> {
    let registered: BTreeSet<&str> = history
        .ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Register { address, .. } => Some(address.as_str()),
            _ => None,
        })
        .collect();
    let mut ops = Vec::new();
    for op in history.ops.iter().filter(|op| op.outcome != Outcome::Failed) {
        let complete_us = (op.outcome == Outcome::Ok).then_some(op.complete_us);
        let call = match (&op.call, &op.answer) {
            (Call::Register { address, runner, healthy }, answer) => {
                let machine_id = match answer {
                    Some(Answer::MachineId(id)) => Some(*id),
                    _ => None,
                };
                TableCall::Register {
                    address: addresses.id(address),
                    runner: runners.id(runner),
                    healthy: *healthy,
                    machine_id,
                }
            }
            (Call::Unregister { address }, _) => TableCall::Unregister { address: addresses.id(address) },
            (Call::SetRunnerHealth { address, healthy }, _) => {
                TableCall::SetHealth { address: addresses.id(address), healthy: *healthy }
            }
            (Call::Refresh { address, .. }, _) if registered.contains(address.as_str()) => {
                TableCall::Heartbeat { address: addresses.id(address) }
            }
            (Call::GetRunners, Some(Answer::Runners(list))) if op.outcome == Outcome::Ok => TableCall::GetRunners {
                runners: list.iter().map(|(runner, healthy)| (runners.id(runner), *healthy)).collect(),
            },
            _ => continue,
        };
        let window = window_of(op.invoke_us, complete_us);
        ops.push(Timed { op: TableOp { call, window }, invoke_us: op.invoke_us, complete_us, history_id: op.id });
    }
    if let Some(final_state) = &history.final_state {
        let records = final_state
            .runners
            .iter()
            .map(|runner| ObservedRecord {
                address: addresses.id(&runner.address),
                machine_id: runner.machine_id,
                runner: runners.id(&runner.runner),
                healthy: runner.healthy,
                heartbeat_us: runner.last_heartbeat_us,
            })
            .collect();
        let window = Window { lo: final_state.at_us, hi: final_state.at_us };
        let call = TableCall::Observe { records };
        let at = Some(final_state.at_us);
        ops.push(Timed {
            op: TableOp { call, window },
            invoke_us: final_state.at_us,
            complete_us: at,
            history_id: u64::MAX,
        });
    }
    ops
}
