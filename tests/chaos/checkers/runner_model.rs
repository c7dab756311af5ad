//! The sequential specification of the runner table, for the
//! linearizability search, and the history it checks.
//!
//! State: the runner records (machine id, runner JSON, health flag, and the
//! earliest lab time of the last heartbeat's stamp) and a lower bound on
//! the linearization point of the next write.
//!
//! Time follows [`super::store_time`] alone: a runner is *certainly live*
//! at an operation when too little real time passed since its heartbeat
//! for store time to have aged it past `E`; otherwise it may be live or
//! not — store time has no lower bound, so a runner may stay live for any
//! real time. An observed heartbeat age may not exceed what store time can
//! advance between the heartbeat and the read.
//!
//! Relaxations (each only widens what is accepted):
//! - Writes take effect at a point in their window, never below the writes
//!   linearized before; reads likewise, without raising the bound for later
//!   writes. Constraints from lock operations are ignored.
//! - In a read each record not certainly live may be listed or not; in
//!   `unregister`, which deletes every runner that is not live, each such
//!   record branches into kept and deleted.
//! - Unknown outcomes: as in [`super::shard_model`].
//! - `refresh` by an address never registered in the history is left out: it
//!   cannot change the table.
//!
//! Machine ids follow SPEC §3 exactly: the smallest id in 1..=1024 whose
//! residue mod 1024 no record uses, else max + 1; `register` of a present
//! address keeps its id.

use std::collections::{BTreeMap, BTreeSet};

use super::shard_model::{observation_id, observe_op, window_of, Interner, Window};
use super::store_time::{age_possible, may_have_aged_past};
use super::wgl::{Model, Timed};
use crate::history::{Answer, Call, History, Micros, Outcome};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Record {
    machine_id: i64,
    runner: u32,
    healthy: bool,
    /// The earliest lab time of the last heartbeat's stamp.
    heartbeat_lo: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableState {
    records: BTreeMap<u32, Record>,
    clock_lo: Micros,
}

/// One runner record as an observation saw it.
#[derive(Debug, Clone)]
pub struct ObservedRecord {
    pub address: u32,
    pub machine_id: i64,
    pub runner: u32,
    pub healthy: bool,
    pub heartbeat_age_ms: u64,
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
        !may_have_aged_past(record.heartbeat_lo, time.hi, self.lock_expiration_us)
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
        records.insert(address, Record { machine_id: id, runner, healthy, heartbeat_lo: time.lo });
        next.push(TableState { records, clock_lo: time.lo });
    }

    fn unregister(&self, state: &TableState, address: u32, time: Window, next: &mut Vec<TableState>) {
        let mut outcomes = vec![state.records.clone()];
        for (other, record) in state.records.iter() {
            if *other == address {
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
            if listed {
                answered.next();
            } else if self.certainly_live(record, time) {
                return false;
            }
        }
        answered.next().is_none()
    }

    fn observe_matches(state: &TableState, records: &[ObservedRecord], time: Window) -> bool {
        records.len() == state.records.len()
            && records.iter().all(|observed| {
                state.records.get(&observed.address).is_some_and(|record| {
                    record.machine_id == observed.machine_id
                        && record.runner == observed.runner
                        && record.healthy == observed.healthy
                        && age_possible(observed.heartbeat_age_ms, record.heartbeat_lo, time.hi)
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
        let lo = op.window.lo.max(state.clock_lo);
        if lo > op.window.hi {
            return;
        }
        let time = Window { lo, hi: op.window.hi };
        match &op.call {
            TableCall::Observe { records } => {
                if Self::observe_matches(state, records, time) {
                    next.push(TableState { records: state.records.clone(), clock_lo: time.lo });
                }
            }
            TableCall::GetRunners { runners } => {
                if self.read_matches(state, runners, time) {
                    next.push(state.clone());
                }
            }
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
                    record.heartbeat_lo = time.lo;
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
    for observation in history.all_observations() {
        let records = observation
            .runners
            .iter()
            .map(|runner| ObservedRecord {
                address: addresses.id(&runner.address),
                machine_id: runner.machine_id,
                runner: runners.id(&runner.runner),
                healthy: runner.healthy,
                heartbeat_age_ms: runner.heartbeat_age_ms,
            })
            .collect();
        let window = Window { lo: observation.runners_at.0, hi: observation.runners_at.1 };
        let call = TableCall::Observe { records };
        let id = observation_id(history, observation);
        ops.push(observe_op(TableOp { call, window }, observation.runners_at, id));
    }
    ops.sort_by_key(|timed| (timed.invoke_us, timed.history_id));
    ops
}
