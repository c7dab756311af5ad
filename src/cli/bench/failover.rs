//! `failover`: SIGKILL the leader under steady writes and time the gap to the
//! next acknowledged write; `idle`: count leader changes of an idle cluster.
//!
//! A round of `failover`: wait until every node answers and agrees on one
//! leader; SIGKILL the leader (by the pid in the cluster script's pid file,
//! or through `cluster.sh kill-leader`); note when a survivor reports a new
//! leader and when the first write completes after the kill; restart the
//! node with `cluster.sh restart N`; wait until it has applied everything
//! the leader had committed when it restarted. Writers run throughout, each
//! re-registering its own runner with its own [`Client`], so the figure
//! includes the client's own recovery (connection refused, leader hint,
//! backoff of up to `client::BACKOFF_MAX`).
//!
//! The kill instant is taken *after* the signal was delivered (pid mode: the
//! `kill` command returned; script mode: the old leader stopped answering),
//! and acks within `OLD_LEADER_ACK_GRACE` of it are ignored (on a loaded
//! machine a writer may read the old leader's last answer a little late),
//! so no write acknowledged by the old leader is counted as the first one
//! after the kill.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::report::median;
use super::workloads::bench_runner;
use crate::client::Client;
use crate::interface::Encoded;
use crate::pb::v1::StatusResponse;

/// Most rounds of one failover bench.
const ROUNDS_MAX: usize = 1000;
/// Most writer tasks.
const WRITERS_MAX: usize = 256;
/// Longest wait for the cluster to be whole (every node up, one leader) before a round.
const HEALTHY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait from the kill to the first acknowledged write.
const FIRST_ACK_WAIT_MAX: Duration = Duration::from_secs(30);
/// Longest a `cluster.sh` command may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a restarted node to catch up.
const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(60);
/// Pause between polls of Status or of the writers' first ack.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Pause between polls of `idle`.
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of one writer call: long enough to span an election.
const WRITE_DEADLINE: Duration = Duration::from_secs(20);
/// Acks that reach a writer this soon after the kill are taken as the old
/// leader's: its answer was on the wire (or the writer task had not run yet
/// on a loaded machine) when it died. No election can finish this fast: it
/// takes at least the election timeout, 100 ms or more in every config here.
const OLD_LEADER_ACK_GRACE: Duration = Duration::from_millis(50);

/// How the leader is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KillVia {
    /// `kill -KILL` of the pid in `<pid-dir>/node<id>.pid`.
    Pid,
    /// `cluster.sh kill-leader`.
    Script,
}

/// Flags of `failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Kill/restart rounds.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// The cluster script, for `restart N` (and `kill-leader` with --kill-via script).
    #[arg(long, default_value = "scripts/cluster.sh")]
    pub cluster_script: PathBuf,
    /// How the leader is killed.
    #[arg(long, value_enum, default_value = "pid")]
    pub kill_via: KillVia,
    /// Where the node pid files are; default: `.cluster/pids` beside the script's directory.
    #[arg(long)]
    pub pid_dir: Option<PathBuf>,
    /// Tasks writing throughout.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Pause before each round, once the cluster is whole.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub settle: Duration,
}

/// What one round measured.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: usize,
    /// The node killed.
    pub killed_node: u64,
    /// The node that led next.
    pub new_leader: u64,
    /// Kill → a survivor reports a new leader (Status poll), ms.
    pub elected_ms: Option<f64>,
    /// Kill → the next acknowledged write, ms.
    pub first_ack_ms: Option<f64>,
    /// Restart command → the node applied what the leader had committed then, ms.
    pub caught_up_ms: Option<f64>,
    /// Term before the kill, after the election, after the node rejoined.
    pub terms: [u64; 3],
    /// The machine's 1-minute load average after the round.
    pub load_average_1m: Option<f64>,
}

/// The writers' shared clock marks: written by writers, read by the round.
struct Marks {
    base: Instant,
    /// Nanoseconds since `base` of the kill; `u64::MAX` while no kill is pending.
    kill_at_ns: AtomicU64,
    /// Nanoseconds since `base` of the first ack after the kill; `u64::MAX` before it.
    first_ack_ns: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Marks {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

async fn writer(index: usize, client: Client, marks: Arc<Marks>) {
    let (address, runner) = bench_runner("failover", index);
    while !marks.stop.load(Ordering::Relaxed) {
        match client.register(&address, &runner, true).await {
            Ok(_) => {
                let done_ns = marks.now_ns();
                marks.acks.fetch_add(1, Ordering::Relaxed);
                let grace_ns = OLD_LEADER_ACK_GRACE.as_nanos() as u64;
                if done_ns > marks.kill_at_ns.load(Ordering::Acquire).saturating_add(grace_ns) {
                    marks.first_ack_ns.fetch_min(done_ns, Ordering::AcqRel);
                }
            }
            Err(_) => {
                marks.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let _ = client.unregister(&address).await;
}

fn check(args: &FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=ROUNDS_MAX).contains(&args.rounds), "--rounds must be in 1..={ROUNDS_MAX}");
    anyhow::ensure!((1..=WRITERS_MAX).contains(&args.writers), "--writers must be in 1..={WRITERS_MAX}");
    anyhow::ensure!(args.cluster_script.is_file(), "--cluster-script {:?} is not a file", args.cluster_script);
    Ok(())
}

fn pid_dir(args: &FailoverArgs) -> PathBuf {
    pid_dir_of(&args.cluster_script, args.pid_dir.as_deref())
}

/// `explicit`, or `.cluster/pids` beside the directory of `cluster_script`.
pub(super) fn pid_dir_of(cluster_script: &Path, explicit: Option<&Path>) -> PathBuf {
    explicit.map(Path::to_path_buf).unwrap_or_else(|| {
        let scripts = cluster_script.parent().unwrap_or(Path::new("."));
        scripts.join("..").join(".cluster").join("pids")
    })
}

/// Runs the failover bench.
///
/// # Errors
/// Bad flags, a cluster that does not become whole, or a script that fails.
pub async fn run(endpoints: &[String], args: &FailoverArgs, json: bool) -> anyhow::Result<()> {
    check(args)?;
    let marks = Arc::new(Marks {
        base: Instant::now(),
        kill_at_ns: AtomicU64::new(u64::MAX),
        first_ack_ns: AtomicU64::new(u64::MAX),
        acks: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut writers = JoinSet::new();
    for index in 0..args.writers {
        let client = Client::with_deadline(endpoints.to_vec(), WRITE_DEADLINE)?;
        writers.spawn(writer(index, client, Arc::clone(&marks)));
    }
    let result = rounds(endpoints, args, &marks, json).await;
    marks.stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(WRITE_DEADLINE * 2, async { while writers.join_next().await.is_some() {} }).await;
    writers.abort_all();
    let rounds = result?;
    print_failover(&rounds, marks.acks.load(Ordering::Relaxed), marks.errors.load(Ordering::Relaxed), json)
}

async fn rounds(endpoints: &[String], args: &FailoverArgs, marks: &Marks, json: bool) -> anyhow::Result<Vec<Round>> {
    let status_client = Client::new(endpoints.to_vec())?;
    let mut rounds = Vec::new();
    if !json {
        println!(
            "{:>5} {:>6} {:>6} {:>10} {:>13} {:>12} {:>5}  terms",
            "ROUND", "KILLED", "NEW", "ELECTED ms", "FIRST ACK ms", "CAUGHT UP ms", "LOAD"
        );
    }
    for round in 1..=args.rounds {
        wait_whole(&status_client, endpoints).await?;
        tokio::time::sleep(args.settle).await;
        // Read the leader again right before the kill: an election during
        // the settle pause would otherwise make this round kill a follower.
        let leader = wait_whole(&status_client, endpoints).await?;
        let result = one_round(&status_client, endpoints, args, marks, round, &leader).await?;
        if json {
            eprintln!("failover round {round}: first ack {:?} ms", result.first_ack_ms);
        } else {
            println!(
                "{:>5} {:>6} {:>6} {:>10} {:>13} {:>12} {:>5.1}  {:?}",
                result.round,
                result.killed_node,
                result.new_leader,
                fmt_ms(result.elected_ms),
                fmt_ms(result.first_ack_ms),
                fmt_ms(result.caught_up_ms),
                result.load_average_1m.unwrap_or(f64::NAN),
                result.terms
            );
        }
        rounds.push(result);
    }
    Ok(rounds)
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "timeout".into(), |ms| format!("{ms:.1}"))
}

/// Statuses of every endpoint that answers.
async fn statuses(client: &Client, endpoints: &[String]) -> Vec<(String, Option<StatusResponse>)> {
    let mut out = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        out.push((endpoint.clone(), client.status_of(endpoint).await.ok()));
    }
    out
}

/// Waits until every endpoint answers and all agree on one leader; returns the leader's status.
pub(super) async fn wait_whole(client: &Client, endpoints: &[String]) -> anyhow::Result<StatusResponse> {
    let deadline = Instant::now() + HEALTHY_WAIT_MAX;
    loop {
        let all = statuses(client, endpoints).await;
        let answered: Vec<&StatusResponse> = all.iter().filter_map(|(_, s)| s.as_ref()).collect();
        let leaders: Vec<&&StatusResponse> = answered.iter().filter(|s| s.role == "leader").collect();
        if answered.len() == endpoints.len() && leaders.len() == 1 {
            let leader = (*leaders[0]).clone();
            if answered.iter().all(|s| s.leader_id == leader.node_id) {
                return Ok(leader);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "cluster not whole within {HEALTHY_WAIT_MAX:?}: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the cluster script with `args` within [`SCRIPT_TIMEOUT`]; its stdout.
pub(super) async fn run_script(script: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        SCRIPT_TIMEOUT,
        tokio::process::Command::new(script).args(args).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("{script:?} {args:?} did not finish within {SCRIPT_TIMEOUT:?}"))?
    .with_context(|| format!("running {script:?} {args:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{script:?} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The client address of `node_id` in `status`'s membership.
fn node_address(status: &StatusResponse, node_id: u64) -> String {
    status.members.iter().find(|m| m.node_id == node_id).map_or_else(String::new, |m| m.address.clone())
}

/// SIGKILLs node `node_id` by the pid in `<pid_dir>/node<id>.pid`; returns the pid.
pub(super) async fn sigkill(pid_dir: &Path, node_id: u64) -> anyhow::Result<u32> {
    let pid_file = pid_dir.join(format!("node{node_id}.pid"));
    let text = std::fs::read_to_string(&pid_file).with_context(|| format!("reading {pid_file:?}"))?;
    let pid: u32 = text.trim().parse().with_context(|| format!("{pid_file:?} holds no pid"))?;
    let status = tokio::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().await?;
    anyhow::ensure!(status.success(), "kill -KILL {pid} (node {node_id}) failed");
    Ok(pid)
}

/// Waits until process `pid` is gone (reaped, or a zombie with no thread
/// left, so its port and files are released), at most `wait_max`.
pub(super) async fn wait_gone(pid: u32, wait_max: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait_max;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name: "Z" is a zombie;
        // the main thread turns zombie before the others have exited.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
        if stat.is_empty() || (state == Some("Z") && threads <= 1) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "process {pid} still runs {wait_max:?} after SIGKILL");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Kills `leader` and returns once it is dead.
async fn kill_leader(client: &Client, args: &FailoverArgs, leader: &StatusResponse) -> anyhow::Result<()> {
    match args.kill_via {
        KillVia::Pid => {
            sigkill(&pid_dir(args), leader.node_id).await?;
        }
        KillVia::Script => {
            let script = args.cluster_script.clone();
            let kill = tokio::spawn(async move { run_script(&script, &["kill-leader"]).await });
            // The script returns only after a new leader is elected: take the
            // kill instant from the old leader going silent instead.
            let deadline = Instant::now() + FIRST_ACK_WAIT_MAX;
            let address = node_address(leader, leader.node_id);
            while client.status_of(&address).await.is_ok() {
                anyhow::ensure!(Instant::now() < deadline, "leader {} still answers", leader.node_id);
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            tokio::spawn(async move {
                let _ = kill.await;
            });
        }
    }
    Ok(())
}

async fn one_round(
    client: &Client,
    endpoints: &[String],
    args: &FailoverArgs,
    marks: &Marks,
    round: usize,
    leader: &StatusResponse,
) -> anyhow::Result<Round> {
    let survivors: Vec<String> = leader
        .members
        .iter()
        .filter(|m| m.node_id != leader.node_id && endpoints.contains(&m.address))
        .map(|m| m.address.clone())
        .collect();
    marks.first_ack_ns.store(u64::MAX, Ordering::Release);
    kill_leader(client, args, leader).await?;
    let kill_ns = marks.now_ns();
    marks.kill_at_ns.store(kill_ns, Ordering::Release);
    let kill_at = Instant::now();
    let (mut elected_ms, mut new_leader, mut term_elected) = (None, 0, 0);
    while Instant::now() < kill_at + FIRST_ACK_WAIT_MAX {
        if elected_ms.is_none() {
            for (_, status) in statuses(client, &survivors).await {
                if let Some(s) = status.filter(|s| s.role == "leader") {
                    elected_ms = Some(kill_at.elapsed().as_secs_f64() * 1000.0);
                    (new_leader, term_elected) = (s.node_id, s.term);
                }
            }
        }
        if elected_ms.is_some() && marks.first_ack_ns.load(Ordering::Acquire) != u64::MAX {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let first_ack_ns = marks.first_ack_ns.load(Ordering::Acquire);
    marks.kill_at_ns.store(u64::MAX, Ordering::Release);
    let first_ack_ms = (first_ack_ns != u64::MAX).then(|| (first_ack_ns - kill_ns) as f64 / 1e6);
    let (caught_up_ms, term_rejoined) =
        restart_and_catch_up(client, &survivors, &args.cluster_script, leader.node_id, leader).await?;
    Ok(Round {
        round,
        killed_node: leader.node_id,
        new_leader,
        elected_ms,
        first_ack_ms,
        caught_up_ms,
        terms: [leader.term, term_elected, term_rejoined],
        load_average_1m: super::report::load_average_1m(),
    })
}

/// Restarts the killed node `killed` (`cluster` names its address); waits
/// until it applied what the leader had committed at the restart and knows
/// the leader. Returns the wait (restart command included) and the term then.
pub(super) async fn restart_and_catch_up(
    client: &Client,
    survivors: &[String],
    cluster_script: &Path,
    killed: u64,
    cluster: &StatusResponse,
) -> anyhow::Result<(Option<f64>, u64)> {
    let address = node_address(cluster, killed);
    let restart_at = Instant::now();
    run_script(cluster_script, &["restart", &killed.to_string()]).await?;
    let target = statuses(client, survivors)
        .await
        .into_iter()
        .filter_map(|(_, s)| s)
        .filter(|s| s.role == "leader")
        .map(|s| s.commit_index)
        .max()
        .unwrap_or(0);
    while restart_at.elapsed() < CATCH_UP_WAIT_MAX {
        if let Ok(status) = client.status_of(&address).await {
            if status.applied_index >= target && status.leader_id != 0 {
                return Ok((Some(restart_at.elapsed().as_secs_f64() * 1000.0), status.term));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((None, 0))
}

#[derive(Serialize)]
struct FailoverSummary<'a> {
    rounds: &'a [Round],
    first_ack_ms_median: f64,
    first_ack_ms_max: f64,
    elected_ms_median: f64,
    caught_up_ms_median: f64,
    rounds_timed_out: usize,
    writes_acknowledged: u64,
    write_errors: u64,
}

fn print_failover(rounds: &[Round], acks: u64, errors: u64, json: bool) -> anyhow::Result<()> {
    let first: Vec<f64> = rounds.iter().filter_map(|r| r.first_ack_ms).collect();
    let summary = FailoverSummary {
        rounds,
        first_ack_ms_median: median(first.clone()),
        first_ack_ms_max: first.iter().copied().fold(0.0, f64::max),
        elected_ms_median: median(rounds.iter().filter_map(|r| r.elected_ms).collect()),
        caught_up_ms_median: median(rounds.iter().filter_map(|r| r.caught_up_ms).collect()),
        rounds_timed_out: rounds.iter().filter(|r| r.first_ack_ms.is_none()).count(),
        writes_acknowledged: acks,
        write_errors: errors,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "leader SIGKILL -> next acknowledged write: median {:.1} ms, max {:.1} ms over {} rounds ({} timed out)",
        summary.first_ack_ms_median,
        summary.first_ack_ms_max,
        rounds.len(),
        summary.rounds_timed_out
    );
    println!(
        "election seen by Status: median {:.1} ms; restarted node caught up: median {:.1} ms; writes acked {}, failed {}",
        summary.elected_ms_median, summary.caught_up_ms_median, acks, errors
    );
    Ok(())
}

/// Watches the cluster for `duration`, polling every node's Status, and
/// reports every change of leader or term (an idle cluster should have none).
///
/// # Errors
/// When the cluster has no leader at the start.
pub async fn idle(endpoints: &[String], duration: Duration, json: bool) -> anyhow::Result<()> {
    let first = super::wait_for_leader(endpoints).await?;
    let client = Client::new(endpoints.to_vec())?;
    let (mut leader, mut term) = (first.node_id, first.term);
    let (start_term, mut changes, mut polls, mut leaderless_polls) = (first.term, Vec::new(), 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        polls += 1;
        let all = statuses(&client, endpoints).await;
        let current = all.iter().filter_map(|(_, s)| s.as_ref()).find(|s| s.role == "leader");
        match current {
            Some(s) if s.node_id != leader || s.term != term => {
                changes.push(serde_json::json!({
                    "at_s": start.elapsed().as_secs_f64(), "leader": s.node_id, "term": s.term,
                    "previous_leader": leader, "previous_term": term,
                }));
                (leader, term) = (s.node_id, s.term);
            }
            Some(_) => {}
            None => leaderless_polls += 1,
        }
        tokio::time::sleep(IDLE_POLL_INTERVAL).await;
    }
    let result = serde_json::json!({
        "duration_s": duration.as_secs_f64(), "polls": polls, "leaderless_polls": leaderless_polls,
        "start_term": start_term, "end_term": term, "leader_changes": changes,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "idle {:.0} s: {} leader/term changes (term {} -> {}), {} of {} polls saw no leader",
            duration.as_secs_f64(),
            changes.len(),
            start_term,
            term,
            leaderless_polls,
            polls
        );
        for change in &changes {
            println!("  {change}");
        }
    }
    Ok(())
}
