//! `runner-storage-bench`: drives a running runner-storage cluster through
//! the library's Rust [`Client`] and reports ops/s and latency percentiles
//! per call; drives an etcd cluster the same way, for the comparison.
//!
//! A crate of its own so that the node carries none of it: it depends on
//! `runner_storage`'s public client API only (the client, the wire types,
//! the error type and its gRPC status table, the dialer, the model's string
//! forms), and the etcd proto and the histograms are compiled here, never
//! into the node.
//!
//! # Layout
//! - this file: the flags, the plan (workload × concurrency × run), the task
//!   driver with its time bounds, and the client pool;
//! - [`workloads`]: `register`, `acquire`, `refresh`, `get-runners`;
//! - [`effect_mix`]: the call pattern of real Effect runners, sped up;
//! - [`failover`]: SIGKILL the leader, time to the next acknowledged write;
//!   `idle`: leader changes of an idle cluster;
//! - [`scale`]: 10,000 runners and 30,000 locks: memory, snapshot, restart;
//! - [`kill_rounds`]: the rounds of `failover` and `etcd-failover`;
//! - [`etcd`]: the same measurements against an etcd cluster, and
//!   [`compare`]: both side by side, alternating, with the ratios;
//! - [`report`]: per-task recorders, medians, the table and the JSON;
//! - [`pb`]: the few etcd v3 calls, generated from `bench/proto/etcd.proto`.
//!
//! Every run is bounded: warm-up + duration, then at most [`DRAIN_MAX`] for
//! calls in flight before the remaining tasks are aborted; setup and
//! teardown steps each have [`STEP_TIMEOUT`]. The bench never talks to
//! anything but the given endpoints.

pub mod compare;
pub mod effect_mix;
pub mod etcd;
pub mod etcd_failover;
pub mod failover;
pub mod kill_rounds;
pub mod pb;
pub mod report;
pub mod scale;
pub mod workloads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::task::JoinSet;

use runner_storage::client::Client;

use report::{Recorder, RunReport, Summary, Window};

/// Tasks sharing one [`Client`] (one HTTP/2 connection per node): enough
/// multiplexing to keep connections few, few enough that one connection's
/// stream limit is never the bottleneck.
pub const TASKS_PER_CLIENT: usize = 16;
/// Deadline of one bench call, retries included: a call that cannot finish
/// in this time is an error, not a stall of the run.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Time calls in flight at the end of a run get to finish before their
/// tasks are aborted: longer than [`CALL_DEADLINE`], so only a bug aborts.
pub const DRAIN_MAX: Duration = Duration::from_secs(15);
/// Longest a setup or teardown step (all its calls together) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Most concurrent tasks of one run: a bound on what a flag can ask for.
pub const CONCURRENCY_MAX: usize = 4096;
/// Most repetitions of one run.
pub const RUNS_MAX: usize = 100;
/// Longest measured duration of one run.
pub const DURATION_MAX: Duration = Duration::from_secs(3600);

// Calls in flight at the end must be able to finish before the drain ends.
const _: () = assert!(DRAIN_MAX.as_secs() > CALL_DEADLINE.as_secs());

/// Where the cluster is, what to run, and for how long: the command line
/// of `runner-storage-bench`.
#[derive(Debug, Parser)]
#[command(name = "runner-storage-bench", version, about = "Benchmarks a runner-storage cluster, and etcd beside it.")]
pub struct BenchArgs {
    /// Comma-separated `host:port` endpoints of the cluster's nodes.
    #[arg(
        long,
        global = true,
        env = "RUNNER_STORAGE_ENDPOINTS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// Comma-separated `host:port` client endpoints of an etcd cluster, for
    /// the etcd workloads and `compare-etcd`.
    #[arg(
        long,
        global = true,
        env = "ETCD_ENDPOINTS",
        default_value = etcd::DEFAULT_ENDPOINTS,
        value_delimiter = ','
    )]
    pub etcd_endpoints: Vec<String>,
    /// Concurrent tasks (simulated runners); a comma-separated list runs each in turn.
    #[arg(long, short = 'c', global = true, default_value = "16", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Measured length of each run, e.g. `10s`, `500ms`, `2m`.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each run's measured part.
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Repetitions of each (workload, concurrency); the summary shows medians.
    #[arg(long, global = true, default_value_t = 1)]
    pub runs: usize,
    /// Print one JSON document on stdout instead of tables (progress goes to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    /// Threads of the bench's own runtime. The default, one, leaves the
    /// most CPU to nodes on the same machine and sends the requests that
    /// are ready together (see `runner_storage::cli::runtime`); more helps only a
    /// client-bound workload such as `effect-mix`'s getRunners of 1,000 runners.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub client_threads: usize,
    /// What to run.
    #[command(subcommand)]
    pub workload: Workload,
}

/// The workloads.
#[derive(Debug, Clone, Subcommand)]
pub enum Workload {
    /// Each task re-registers its own runner in a loop.
    Register,
    /// Tasks compete for 300 shards, one random shard per acquire; winners release some.
    Acquire(workloads::AcquireArgs),
    /// Each task refreshes its 10 held shards in a loop.
    Refresh,
    /// Tasks call getRunners (linearizable) with 100 runners registered.
    GetRunners(workloads::GetRunnersArgs),
    /// The call pattern of real Effect runners, time-scaled.
    EffectMix(effect_mix::EffectMixArgs),
    /// register, acquire, refresh and get-runners in sequence.
    All,
    /// SIGKILL the leader under steady writes; time to the next acknowledged write.
    Failover(failover::FailoverArgs),
    /// Watch an idle cluster for leader changes (spurious elections) for --duration.
    Idle,
    /// Fill the cluster (10,000 runners, 30,000 locks): memory, snapshot size, restart time.
    Scale(scale::ScaleArgs),
    /// etcd: each task puts a 16-byte value under its own key (etcd's side of register).
    EtcdPut,
    /// etcd: the lock transaction over 300 keys, with releases (etcd's side of acquire).
    EtcdLock(workloads::AcquireArgs),
    /// etcd: linearizable range read of 100 runner keys (etcd's side of get-runners).
    EtcdRange(workloads::GetRunnersArgs),
    /// etcd: SIGKILL its leader under steady puts; time to the next acknowledged put.
    EtcdFailover(etcd_failover::EtcdFailoverArgs),
    /// register/etcd-put, acquire/etcd-lock and get-runners/etcd-range in
    /// alternating runs against both clusters, with the ratios.
    CompareEtcd,
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Acquire(_) => "acquire",
            Workload::Refresh => "refresh",
            Workload::GetRunners(_) => "get-runners",
            Workload::EffectMix(_) => "effect-mix",
            Workload::All => "all",
            Workload::Failover(_) => "failover",
            Workload::Idle => "idle",
            Workload::Scale(_) => "scale",
            Workload::EtcdPut => "etcd-put",
            Workload::EtcdLock(_) => "etcd-lock",
            Workload::EtcdRange(_) => "etcd-range",
            Workload::EtcdFailover(_) => "etcd-failover",
            Workload::CompareEtcd => "compare-etcd",
        }
    }

    /// Whether the workload drives etcd instead of runner-storage.
    fn is_etcd(&self) -> bool {
        matches!(self, Workload::EtcdPut | Workload::EtcdLock(_) | Workload::EtcdRange(_))
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
///
/// # Errors
/// A message for clap when the text is not one of those forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_s) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(value * unit_s))
}

/// What every run of a workload needs: the cluster and the time bounds.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The cluster's endpoints.
    pub endpoints: Vec<String>,
    /// Concurrent tasks of this run.
    pub concurrency: usize,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Measured length.
    pub duration: Duration,
}

impl RunPlan {
    /// The plan of `workload` at `concurrency` under `args`: the etcd
    /// endpoints for an etcd workload, the cluster's for the others.
    pub fn of(args: &BenchArgs, workload: &Workload, concurrency: usize) -> Self {
        let endpoints = if workload.is_etcd() { &args.etcd_endpoints } else { &args.endpoints };
        RunPlan { endpoints: endpoints.clone(), concurrency, warmup: args.warmup, duration: args.duration }
    }
}

/// [`Client`]s shared by a run's tasks, one per [`TASKS_PER_CLIENT`] tasks.
pub struct ClientPool {
    clients: Vec<Arc<Client>>,
}

impl ClientPool {
    /// A pool for `tasks` tasks.
    ///
    /// # Errors
    /// When the endpoints are not valid addresses.
    pub fn new(endpoints: &[String], tasks: usize) -> anyhow::Result<Self> {
        let count = tasks.div_ceil(TASKS_PER_CLIENT).max(1);
        let clients = (0..count)
            .map(|_| Client::with_deadline(endpoints.to_vec(), CALL_DEADLINE).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientPool { clients })
    }

    /// The client of task `task`.
    pub fn client(&self, task: usize) -> Arc<Client> {
        Arc::clone(&self.clients[(task / TASKS_PER_CLIENT) % self.clients.len()])
    }
}

/// Spawns `concurrency` tasks made by `task(index, client, window)`, waits for
/// them until the window's end plus [`DRAIN_MAX`], aborts any left, and
/// returns their merged recorders.
pub async fn drive<F, Fut>(pool: &ClientPool, plan: &RunPlan, task: F) -> Recorder
where
    F: Fn(usize, Arc<Client>, Window) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    drive_tasks(plan, |index, window| task(index, pool.client(index), window)).await
}

/// [`drive`] for tasks that bring their own client (etcd's workloads).
pub async fn drive_tasks<F, Fut>(plan: &RunPlan, task: F) -> Recorder
where
    F: Fn(usize, Window) -> Fut,
    Fut: Future<Output = Recorder> + Send + 'static,
{
    let window = Window::starting_now(plan.warmup, plan.duration);
    let mut tasks = JoinSet::new();
    for index in 0..plan.concurrency {
        tasks.spawn(task(index, window));
    }
    collect(tasks, window.end + DRAIN_MAX).await
}

/// Merges the recorders of `tasks` as they end; past `deadline`, aborts the rest.
pub async fn collect(mut tasks: JoinSet<Recorder>, deadline: tokio::time::Instant) -> Recorder {
    let mut merged = Recorder::new();
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(recorder))) => merged.merge(recorder),
            Ok(Some(Err(_))) => merged.note_always("tasks.panicked", 1),
            Ok(None) => break,
            Err(_) => {
                merged.note_always("tasks.aborted_past_drain", tasks.len() as u64);
                tasks.abort_all();
                break;
            }
        }
    }
    merged
}

/// Runs `steps` (setup or teardown calls) at most `parallel` at a time,
/// within [`STEP_TIMEOUT`]; returns how many failed.
///
/// # Errors
/// When the step as a whole times out.
pub async fn run_steps<Fut>(what: &str, parallel: usize, steps: Vec<Fut>) -> anyhow::Result<u64>
where
    Fut: Future<Output = runner_storage::Result<()>> + Send + 'static,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for step in steps {
        let semaphore = Arc::clone(&semaphore);
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            step.await
        });
    }
    let failures = tokio::time::timeout(STEP_TIMEOUT, async {
        let mut failures = 0;
        while let Some(result) = tasks.join_next().await {
            if !matches!(result, Ok(Ok(()))) {
                failures += 1;
            }
        }
        failures
    })
    .await
    .with_context(|| format!("{what} did not finish within {STEP_TIMEOUT:?}"))?;
    Ok(failures)
}

/// Runs one `bench` command.
///
/// # Errors
/// Bad flags, an unreachable cluster, or a setup that fails.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    check_flags(&args)?;
    match &args.workload {
        Workload::Failover(failover_args) => return failover::run(&args.endpoints, failover_args, args.json).await,
        Workload::Idle => return failover::idle(&args.endpoints, args.duration, args.json).await,
        Workload::Scale(scale_args) => return scale::run(&args.endpoints, scale_args, args.json).await,
        Workload::CompareEtcd => return compare::run(&args).await,
        Workload::EtcdFailover(failover_args) => {
            return etcd_failover::run(&args.etcd_endpoints, failover_args, args.json).await
        }
        _ => {}
    }
    if !args.workload.is_etcd() {
        wait_for_leader(&args.endpoints).await?;
    }
    let workloads = match &args.workload {
        Workload::All => vec![
            Workload::Register,
            Workload::Acquire(workloads::AcquireArgs::default()),
            Workload::Refresh,
            Workload::GetRunners(workloads::GetRunnersArgs::default()),
        ],
        other => vec![other.clone()],
    };
    if !args.json {
        report::print_run_header();
    }
    let mut reports = Vec::new();
    let mut summaries = Vec::new();
    for workload in &workloads {
        for &concurrency in concurrencies(workload, &args.concurrency) {
            let plan = RunPlan::of(&args, workload, concurrency);
            let mut runs = Vec::new();
            for run in 1..=args.runs {
                let report = run_once(workload, &plan, run).await?;
                if args.json {
                    eprintln!("{} C={} run {}: done", report.workload, report.concurrency, run);
                } else {
                    report::print_run(&report);
                }
                runs.push(report);
            }
            summaries.extend(Summary::of(&runs));
            reports.extend(runs);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "runs": reports, "medians": summaries }))?);
    } else {
        report::print_summaries(&summaries);
    }
    Ok(())
}

/// effect-mix sets its own concurrency (the runner count); the others use the flag.
fn concurrencies<'a>(workload: &Workload, flag: &'a [usize]) -> &'a [usize] {
    match workload {
        Workload::EffectMix(_) => &flag[..1],
        _ => flag,
    }
}

fn check_flags(args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.concurrency.is_empty(), "--concurrency needs at least one value");
    for &c in &args.concurrency {
        anyhow::ensure!((1..=CONCURRENCY_MAX).contains(&c), "--concurrency {c} is not in 1..={CONCURRENCY_MAX}");
    }
    anyhow::ensure!((1..=RUNS_MAX).contains(&args.runs), "--runs {} is not in 1..={RUNS_MAX}", args.runs);
    anyhow::ensure!(
        !args.duration.is_zero() && args.duration <= DURATION_MAX,
        "--duration must be more than 0 and at most {DURATION_MAX:?}"
    );
    anyhow::ensure!(args.warmup <= DURATION_MAX, "--warmup must be at most {DURATION_MAX:?}");
    Ok(())
}

/// One run of a single workload.
///
/// # Errors
/// When the workload is not a single one, or its setup or teardown fails.
pub async fn run_once(workload: &Workload, plan: &RunPlan, run: usize) -> anyhow::Result<RunReport> {
    let name = workload.name();
    let (primary, recorder) = match workload {
        Workload::Register => workloads::register(plan).await?,
        Workload::Acquire(args) => workloads::acquire(plan, args).await?,
        Workload::Refresh => workloads::refresh(plan).await?,
        Workload::GetRunners(args) => workloads::get_runners(plan, args).await?,
        Workload::EffectMix(args) => effect_mix::run(plan, args).await?,
        Workload::EtcdPut => etcd::put(plan).await?,
        Workload::EtcdLock(args) => etcd::lock(plan, args).await?,
        Workload::EtcdRange(args) => etcd::range(plan, args).await?,
        Workload::All
        | Workload::Failover(_)
        | Workload::Idle
        | Workload::Scale(_)
        | Workload::CompareEtcd
        | Workload::EtcdFailover(_) => {
            anyhow::bail!("{name} is not a single workload")
        }
    };
    let concurrency = match workload {
        Workload::EffectMix(args) => args.runners,
        _ => plan.concurrency,
    };
    Ok(RunReport::new(name, primary, concurrency, run, plan.duration, recorder))
}

/// How long the bench waits for the cluster to have a leader before it starts.
const LEADER_WAIT_MAX: Duration = Duration::from_secs(30);

/// Waits until some endpoint reports itself leader; returns its `Status`.
///
/// # Errors
/// When no endpoint is leader within `LEADER_WAIT_MAX`.
pub async fn wait_for_leader(endpoints: &[String]) -> anyhow::Result<runner_storage::pb::v1::StatusResponse> {
    let client = Client::new(endpoints.to_vec())?;
    let deadline = tokio::time::Instant::now() + LEADER_WAIT_MAX;
    loop {
        for endpoint in endpoints {
            if let Ok(status) = client.status_of(endpoint).await {
                if status.role == "leader" {
                    return Ok(status);
                }
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no leader among {endpoints:?} within {LEADER_WAIT_MAX:?}; is the cluster up (scripts/cluster.sh up)?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn flags_parse_before_and_after_the_workload() {
        let args = BenchArgs::try_parse_from([
            "runner-storage-bench",
            "--endpoints",
            "127.0.0.1:7001",
            "acquire",
            "--concurrency",
            "1,16",
            "--duration",
            "5s",
            "--release-probability",
            "0.25",
        ])
        .expect("valid command line");
        assert_eq!(args.concurrency, vec![1, 16]);
        assert_eq!(args.duration, Duration::from_secs(5));
        assert!(matches!(args.workload, Workload::Acquire(a) if a.release_probability == 0.25));
    }

    #[test]
    fn pool_shares_one_client_per_sixteen_tasks() {
        let pool = ClientPool::new(&["127.0.0.1:7001".to_string()], 33).expect("valid endpoint");
        assert_eq!(pool.clients.len(), 3);
        assert!(Arc::ptr_eq(&pool.client(0), &pool.client(15)));
        assert!(!Arc::ptr_eq(&pool.client(15), &pool.client(16)));
    }
}
