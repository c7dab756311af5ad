//! The history: every operation the workload issued, with its invocation
//! and completion on the lab clock and its outcome, the faults the nemesis
//! injected, and the observations of the whole state (after every power
//! cut, read through the cluster, and the final state read from the nodes'
//! disks).
//!
//! Times are microseconds of one monotonic clock ([`LabClock`]) started with
//! the lab. Store time is no node's wall clock (SPEC §4) and the lab moves
//! the nodes' wall clocks on purpose, so nothing here maps store stamps
//! onto the lab clock: an observation carries *ages* (store now − a
//! record's stamp), relative quantities the checkers bound from above
//! through [`crate::checkers::store_time`].
//!
//! Outcomes: `ok` (an answer), `failed` (a definite refusal: nothing was
//! applied) and `unknown` (timeout, `UNAVAILABLE` after the deadline, or a
//! refusal that does not prove the write was not applied earlier). The
//! history is written as JSON lines so a failure can be replayed through the
//! checkers (`CHAOS_REPLAY=<file>`).

use std::future::Future;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Microseconds on the lab clock.
pub type Micros = i64;

/// The one clock of a run: the test process's monotonic clock, which is
/// also the clock the holder's contract (SPEC §4) is stated on.
#[derive(Debug, Clone, Copy)]
pub struct LabClock {
    base: Instant,
}

impl LabClock {
    pub fn start() -> LabClock {
        LabClock { base: Instant::now() }
    }

    /// Microseconds since the lab started.
    pub fn now_us(&self) -> Micros {
        Micros::try_from(self.base.elapsed().as_micros()).expect("a run lasts less than 292,000 years")
    }
}

/// What was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    Register { address: String, runner: String, healthy: bool },
    Unregister { address: String },
    SetRunnerHealth { address: String, healthy: bool },
    GetRunners,
    Acquire { address: String, shard_ids: Vec<String> },
    Refresh { address: String, shard_ids: Vec<String> },
    Release { address: String, shard_id: String },
    ReleaseAll { address: String },
    SetLockExpiration { lock_expiration_ms: u64 },
}

impl Call {
    pub fn name(&self) -> &'static str {
        match self {
            Call::Register { .. } => "register",
            Call::Unregister { .. } => "unregister",
            Call::SetRunnerHealth { .. } => "set_runner_health",
            Call::GetRunners => "get_runners",
            Call::Acquire { .. } => "acquire",
            Call::Refresh { .. } => "refresh",
            Call::Release { .. } => "release",
            Call::ReleaseAll { .. } => "release_all",
            Call::SetLockExpiration { .. } => "set_lock_expiration",
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Call::GetRunners)
    }

    /// The address the call acts for, if any.
    pub fn address(&self) -> Option<&str> {
        match self {
            Call::Register { address, .. }
            | Call::Unregister { address }
            | Call::SetRunnerHealth { address, .. }
            | Call::Acquire { address, .. }
            | Call::Refresh { address, .. }
            | Call::Release { address, .. }
            | Call::ReleaseAll { address } => Some(address),
            Call::GetRunners | Call::SetLockExpiration { .. } => None,
        }
    }
}

/// What an `ok` call answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub enum Answer {
    MachineId(i64),
    Runners(Vec<(String, bool)>),
    ShardIds(Vec<String>),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    Unknown,
}

/// One operation: invocation, completion and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    /// Who issued it: `runner-2/7` (slot 2, incarnation 7), `reader-1`, `thief-0`, `admin`.
    pub process: String,
    pub call: Call,
    pub invoke_us: Micros,
    /// When the client returned; for `unknown`, when it gave up (the effect
    /// may still happen later).
    pub complete_us: Micros,
    pub outcome: Outcome,
    pub answer: Option<Answer>,
    pub error: Option<String>,
}

impl Op {
    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    pub fn shard_ids(&self) -> Vec<&str> {
        match &self.call {
            Call::Acquire { shard_ids, .. } | Call::Refresh { shard_ids, .. } => {
                shard_ids.iter().map(String::as_str).collect()
            }
            Call::Release { shard_id, .. } => vec![shard_id.as_str()],
            _ => Vec::new(),
        }
    }

    /// The shard ids an `ok` acquire or refresh answered.
    pub fn answered_shard_ids(&self) -> Option<&[String]> {
        match (&self.outcome, &self.answer) {
            (Outcome::Ok, Some(Answer::ShardIds(ids))) => Some(ids),
            _ => None,
        }
    }
}

/// One injected fault, from injection to heal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    pub kind: String,
    pub detail: String,
    pub start_us: Micros,
    pub heal_us: Micros,
}

/// One lock record as observed: its holder and its age (store now at the
/// read − the stamp of the holder's last acquire or refresh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedLock {
    pub shard_id: String,
    pub address: String,
    pub age_ms: u64,
}

/// One runner record as observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedRunner {
    pub address: String,
    pub runner: String,
    pub healthy: bool,
    pub machine_id: i64,
    /// Store now at the read − the stamp of its last heartbeat.
    pub heartbeat_age_ms: u64,
}

/// The whole state seen at once: the runner table and the locks, each read
/// within its window of the lab clock (two reads through the cluster after
/// a power cut; one instant for the final state read from the disks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// What it was: `final state`, `after power-cut-all (fault 7)`, …
    pub source: String,
    pub runners_at: (Micros, Micros),
    pub locks_at: (Micros, Micros),
    pub lock_expiration_ms: u64,
    pub locks: Vec<ObservedLock>,
    pub runners: Vec<ObservedRunner>,
}

impl Observation {
    /// Where its answer is reported.
    pub const FINAL_ID: u64 = u64::MAX;
}

/// What a run knew when it started, for the report and for replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub seed: u64,
    pub nodes: u64,
    pub lab_mode: String,
    pub lock_expiration_ms: u64,
    pub shard_ids: Vec<String>,
}

/// One line of the history file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    Run(RunInfo),
    Op(Op),
    Fault(FaultEvent),
    Observation(Observation),
    Final(Observation),
}

/// Everything the checkers read.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub info: Option<RunInfo>,
    pub ops: Vec<Op>,
    pub faults: Vec<FaultEvent>,
    /// The state read through the cluster after each power cut.
    pub observations: Vec<Observation>,
    pub final_state: Option<Observation>,
}

impl History {
    /// Every observation, the final state last.
    pub fn all_observations(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter().chain(self.final_state.iter())
    }

    pub fn lock_expiration_us(&self) -> Micros {
        let ms =
            self.info.as_ref().map_or(runner_storage::limits::LOCK_EXPIRATION_MS_DEFAULT, |i| i.lock_expiration_ms);
        i64::try_from(ms).expect("E fits i64") * 1000
    }

    /// Writes the history as JSON lines.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut lines: Vec<Line> = self.info.iter().cloned().map(Line::Run).collect();
        lines.extend(self.ops.iter().cloned().map(Line::Op));
        lines.extend(self.faults.iter().cloned().map(Line::Fault));
        lines.extend(self.observations.iter().cloned().map(Line::Observation));
        lines.extend(self.final_state.iter().cloned().map(Line::Final));
        for line in &lines {
            serde_json::to_writer(&mut out, line)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Reads a history written by [`History::write_jsonl`].
    pub fn read_jsonl(path: &Path) -> anyhow::Result<History> {
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut history = History::default();
        for (number, line) in file.lines().enumerate() {
            let line = line?;
            match serde_json::from_str::<Line>(&line).map_err(|e| anyhow::anyhow!("line {}: {e}", number + 1))? {
                Line::Run(info) => history.info = Some(info),
                Line::Op(op) => history.ops.push(op),
                Line::Fault(fault) => history.faults.push(fault),
                Line::Observation(observation) => history.observations.push(observation),
                Line::Final(state) => history.final_state = Some(state),
            }
        }
        history.ops.sort_by_key(|op| (op.invoke_us, op.id));
        Ok(history)
    }
}

/// Collects operations from every client task.
#[derive(Debug)]
pub struct Recorder {
    pub clock: LabClock,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
    faults: Mutex<Vec<FaultEvent>>,
    observations: Mutex<Vec<Observation>>,
}

/// How an error of the Rust client classifies: only refusals that prove
/// nothing was applied are `failed`. `FAILED_PRECONDITION` (a request id the
/// cluster forgot) may follow an earlier, applied attempt, so it is `unknown`.
pub fn outcome_of(error: &runner_storage::Error) -> Outcome {
    use runner_storage::Error;
    match error {
        Error::InvalidArgument(_) | Error::ResourceExhausted(_) => Outcome::Failed,
        // Everything else may follow an applied attempt (or is new to this
        // checker): unknown is the sound choice.
        _ => Outcome::Unknown,
    }
}

impl Recorder {
    pub fn new(clock: LabClock) -> Recorder {
        Recorder {
            clock,
            next_id: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
            faults: Mutex::new(Vec::new()),
            observations: Mutex::new(Vec::new()),
        }
    }

    /// Runs `call` through `future`, recording invocation, completion and outcome.
    pub async fn record<T, F>(
        &self,
        process: &str,
        call: Call,
        future: F,
        answer: impl FnOnce(&T) -> Answer,
    ) -> runner_storage::Result<T>
    where
        F: Future<Output = runner_storage::Result<T>>,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let invoke_us = self.clock.now_us();
        let result = future.await;
        let complete_us = self.clock.now_us();
        let (outcome, answer, error) = match &result {
            Ok(value) => (Outcome::Ok, Some(answer(value)), None),
            Err(error) => (outcome_of(error), None, Some(error.to_string())),
        };
        let op = Op { id, process: process.to_owned(), call, invoke_us, complete_us, outcome, answer, error };
        self.ops.lock().expect("recorder lock").push(op);
        result
    }

    pub fn fault(&self, event: FaultEvent) {
        self.faults.lock().expect("recorder lock").push(event);
    }

    pub fn observation(&self, observation: Observation) {
        self.observations.lock().expect("recorder lock").push(observation);
    }

    /// Operations so far.
    pub fn ops_len(&self) -> usize {
        self.ops.lock().expect("recorder lock").len()
    }

    /// The history so far, operations in invocation order.
    pub fn snapshot(&self, info: RunInfo) -> History {
        let mut ops = self.ops.lock().expect("recorder lock").clone();
        ops.sort_by_key(|op| (op.invoke_us, op.id));
        let faults = self.faults.lock().expect("recorder lock").clone();
        let observations = self.observations.lock().expect("recorder lock").clone();
        History { info: Some(info), ops, faults, observations, final_state: None }
    }
}
