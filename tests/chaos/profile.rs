//! One chaos run, start to verdict: build the lab, start the nodes, set a
//! short lock expiration, run the workload under the nemesis, stop, heal,
//! read the final state, write the history, check it, write the summary.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_storage::client::Client;
use tokio::time::Instant;

use crate::checkers::{self, Verdicts};
use crate::gate::Gate;
use crate::history::{Answer, Call, History, LabClock, Recorder, RunInfo};
use crate::lab::{Features, Lab, Tuning};
use crate::nemesis::{wait_for_leader, FaultKind, Nemesis, LEADER_WAIT};
use crate::report::Summary;
use crate::workload::{Workload, WorkloadConfig};

/// The lock expiration `E` of every run: short, so locks expire and change
/// hands during faults.
pub const LOCK_EXPIRATION: Duration = Duration::from_secs(2);
/// Workload before the first fault and after the last heal.
const WARM_UP: Duration = Duration::from_secs(3);
const COOL_DOWN: Duration = Duration::from_secs(4);
const SET_EXPIRATION_ATTEMPTS_MAX: u32 = 10;

#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub nodes: u8,
    pub seed: u64,
    /// How long the nemesis injects faults.
    pub fault_phase: Duration,
    pub faults_max: usize,
    /// Fault kinds to use (those the lab cannot do are dropped).
    pub kinds: Vec<FaultKind>,
    /// Where to write the history and summary; a fresh dir when `None`.
    pub out_dir: Option<PathBuf>,
    /// `RUNNER_STORAGE_PLANTED_BUG` for every node (checker tests only).
    pub planted_bug: Option<String>,
}

pub struct RunResult {
    pub summary: Summary,
    pub out_dir: PathBuf,
    pub netns: bool,
}

impl RunResult {
    pub fn verdicts(&self) -> &Verdicts {
        &self.summary.verdicts
    }
}

/// Whether this process can mount powerfs (root and `/dev/fuse`).
fn powerfs_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    root && std::path::Path::new("/dev/fuse").exists()
}

/// The kinds this machine can inject, and the lab features they need.
fn usable_kinds(profile: &Profile, netns: bool) -> (Vec<FaultKind>, Features) {
    let kinds: Vec<FaultKind> = profile
        .kinds
        .iter()
        .copied()
        .filter(|kind| netns || !kind.needs_netns())
        .filter(|kind| powerfs_available() || !kind.needs_powerfs())
        .collect();
    let features = Features {
        powerfs: kinds.iter().any(|kind| kind.needs_powerfs()),
        faketime: kinds.iter().any(|kind| kind.needs_faketime()),
    };
    (kinds, features)
}

/// A seed from `CHAOS_SEED`, or a fresh one (printed by the caller).
pub fn seed_from_env() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(seed) => seed.parse().expect("CHAOS_SEED is a u64"),
        Err(_) => rand::random(),
    }
}

fn out_dir(profile: &Profile) -> PathBuf {
    let dir = profile.out_dir.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "chaos-{}-seed{}-pid{}",
            profile.name,
            profile.seed,
            std::process::id()
        ))
    });
    std::fs::create_dir_all(&dir).expect("create the output dir");
    dir
}

pub fn run(profile: &Profile) -> RunResult {
    eprintln!(
        "chaos {}: seed {} ({} nodes); replay the schedule with CHAOS_SEED={}",
        profile.name, profile.seed, profile.nodes, profile.seed
    );
    let netns = crate::lab::netns_available().is_ok();
    let (kinds, features) = usable_kinds(profile, netns);
    let lab = Lab::create(profile.nodes, Tuning::default(), profile.planted_bug.as_deref(), features);
    let netns = lab.is_netns();
    let info = RunInfo {
        seed: profile.seed,
        nodes: u64::from(profile.nodes),
        lab_mode: lab.mode_name(),
        lock_expiration_ms: u64::try_from(LOCK_EXPIRATION.as_millis()).expect("E fits u64"),
        shard_ids: WorkloadConfig::standard(profile.seed, LOCK_EXPIRATION).shard_ids,
    };
    let runtime = lab.client_runtime();
    let shared = Arc::new(Mutex::new(lab));
    let recorder = Arc::new(Recorder::new(LabClock::start()));
    let driven = {
        let (shared, recorder, profile, kinds) = (shared.clone(), recorder.clone(), profile.clone(), kinds.clone());
        runtime.block_on(async move { tokio::spawn(drive(shared, recorder, profile, kinds)).await })
    };
    drop(runtime);
    let driven = match driven {
        Ok(driven) => driven,
        Err(error) => {
            eprintln!("{}", shared.lock().expect("lab").log_tails(30));
            std::panic::resume_unwind(error.into_panic())
        }
    };
    let mut history = recorder.snapshot(info);
    history.final_state = driven.final_state;
    let dir = out_dir(profile);
    let history_path = dir.join("history.jsonl");
    history.write_jsonl(&history_path).expect("write the history");
    let mut verdicts = checkers::check_all(&history);
    verdicts.run.extend(driven.problems);
    let mut summary = Summary::new(&profile.name, &history, verdicts, history_path);
    summary.fault_kinds = kinds.iter().map(|kind| kind.name().to_owned()).collect();
    summary.notes = driven.notes;
    summary.write(&dir).expect("write the summary");
    // The nodes' logs go with the history: a slow recovery that is no
    // violation is explained by them, and the lab's files are deleted.
    shared.lock().expect("lab").copy_logs_to(&dir);
    // A planted bug's violations are the point of its run: nothing to keep.
    if summary.verdicts.violation_count() > 0 && profile.planted_bug.is_none() {
        let mut lab = shared.lock().expect("lab");
        lab.keep_files = true;
        eprintln!("{}", lab.log_tails(20));
    }
    eprintln!("{}", summary.text());
    RunResult { summary, out_dir: dir, netns }
}

struct Driven {
    final_state: Option<crate::history::Observation>,
    problems: Vec<String>,
    notes: Vec<String>,
}

/// Sets `E` through the cluster, recorded like any write.
async fn set_lock_expiration(client: &Client, recorder: &Recorder) {
    let lock_expiration_ms = u64::try_from(LOCK_EXPIRATION.as_millis()).expect("E fits u64");
    for _ in 0..SET_EXPIRATION_ATTEMPTS_MAX {
        let call = Call::SetLockExpiration { lock_expiration_ms };
        let future = client.set_lock_expiration(lock_expiration_ms);
        if recorder.record("admin", call, future, |_| Answer::Done).await.is_ok() {
            return;
        }
    }
    panic!("could not set the lock expiration");
}

async fn drive(shared: Arc<Mutex<Lab>>, recorder: Arc<Recorder>, profile: Profile, kinds: Vec<FaultKind>) -> Driven {
    let voters: BTreeSet<u64> = (1..=u64::from(profile.nodes)).collect();
    let endpoints: Vec<String> = {
        let mut lab = shared.lock().expect("lab");
        for id in &voters {
            lab.spawn(*id);
        }
        voters.iter().map(|id| lab.address(*id)).collect()
    };
    let client = Client::new(endpoints.clone()).expect("admin client");
    if wait_for_leader(&shared, &client, &voters, LEADER_WAIT).await.is_none() {
        panic!("the cluster elected no leader within {LEADER_WAIT:?}:\n{}", shared.lock().expect("lab").log_tails(30));
    }
    set_lock_expiration(&client, &recorder).await;
    let config = WorkloadConfig::standard(profile.seed, LOCK_EXPIRATION);
    let gate = Arc::new(Gate::default());
    let workload = Workload::start(endpoints, recorder.clone(), config, gate.clone());
    tokio::time::sleep(WARM_UP).await;
    let mut nemesis = Nemesis::new(shared.clone(), recorder.clone(), profile.seed, kinds, gate);
    nemesis.run(Instant::now() + profile.fault_phase, profile.faults_max).await;
    tokio::time::sleep(COOL_DOWN).await;
    workload.stop().await;
    nemesis.heal_all();
    let (final_state, mut problems) = crate::final_state::read(&shared, &voters, &recorder.clock).await;
    problems.extend(nemesis.problems.iter().cloned());
    eprintln!("chaos {}: {} faults, {} operations", profile.name, nemesis.fault_count(), recorder.ops_len());
    Driven { final_state, problems, notes: nemesis.notes.clone() }
}

/// Runs the checkers over a history file written by an earlier run.
pub fn replay(path: &std::path::Path) -> Verdicts {
    let history = History::read_jsonl(path).expect("read the history");
    let verdicts = checkers::check_all(&history);
    let summary = Summary::new("replay", &history, verdicts.clone(), path.to_owned());
    eprintln!("{}", summary.text());
    verdicts
}
