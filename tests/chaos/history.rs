//! The history: every operation the workload issued, with its invocation
//! and completion on the lab clock and its outcome, plus the faults the
//! nemesis injected and the final state read from the nodes' disks.
//!
//! Times are microseconds of one monotonic clock ([`LabClock`]) started with
//! the lab. The nodes stamp commands with their wall clock in milliseconds;
//! everything runs on one machine, so [`LabClock::wall_ms_to_lab_us`] maps
//! a stamp onto the lab clock (the checkers allow [`CLOCK_TOLERANCE_US`] for
//! the two clocks' drift and the stamps' truncation to milliseconds).
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
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Microseconds on the lab clock.
pub type Micros = i64;

/// Slack between the lab clock and the nodes' millisecond wall-clock stamps.
pub const CLOCK_TOLERANCE_US: Micros = 2_000;

/// The one clock of a run: monotonic, with the wall clock read once at the
/// same moment so node stamps can be placed on it.
#[derive(Debug, Clone, Copy)]
pub struct LabClock {
    base: Instant,
    wall_base_us: i64,
}

impl LabClock {
    pub fn start() -> LabClock {
        let base = Instant::now();
        LabClock { base, wall_base_us: wall_now_us() }
    }

    /// Microseconds since the lab started.
    pub fn now_us(&self) -> Micros {
        Micros::try_from(self.base.elapsed().as_micros()).expect("a run lasts less than 292,000 years")
    }

    /// A node's wall-clock stamp (ms since the epoch) on the lab clock.
    pub fn wall_ms_to_lab_us(&self, wall_ms: u64) -> Micros {
        i64::try_from(wall_ms).expect("wall clock ms fit i64") * 1000 - self.wall_base_us
    }

    /// How far the wall clock moved against the monotonic one since the start.
    pub fn drift_us(&self) -> Micros {
        (wall_now_us() - self.wall_base_us) - self.now_us()
    }
}

fn wall_now_us() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(since_epoch.as_micros()).expect("wall clock us fit i64")
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

/// One lock record of the final state, times on the lab clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalLock {
    pub shard_id: String,
    pub address: String,
    pub acquired_at_us: Micros,
}

/// One runner record of the final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRunner {
    pub address: String,
    pub runner: String,
    pub healthy: bool,
    pub machine_id: i64,
    pub last_heartbeat_us: Micros,
}

/// The state every replica reached after the run, read from their data dirs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// When it was taken: after every client returned.
    pub at_us: Micros,
    pub lock_expiration_ms: u64,
    pub locks: Vec<FinalLock>,
    pub runners: Vec<FinalRunner>,
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
    Final(FinalState),
}

/// Everything the checkers read.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub info: Option<RunInfo>,
    pub ops: Vec<Op>,
    pub faults: Vec<FaultEvent>,
    pub final_state: Option<FinalState>,
}

impl History {
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
        Recorder { clock, next_id: AtomicU64::new(0), ops: Mutex::new(Vec::new()), faults: Mutex::new(Vec::new()) }
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

    /// Operations so far.
    pub fn ops_len(&self) -> usize {
        self.ops.lock().expect("recorder lock").len()
    }

    /// The history so far, operations in invocation order.
    pub fn snapshot(&self, info: RunInfo) -> History {
        let mut ops = self.ops.lock().expect("recorder lock").clone();
        ops.sort_by_key(|op| (op.invoke_us, op.id));
        let faults = self.faults.lock().expect("recorder lock").clone();
        History { info: Some(info), ops, faults, final_state: None }
    }
}
