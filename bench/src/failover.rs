//! `failover`: SIGKILL the leader under steady writes and time the gap to the
//! next acknowledged write; `idle`: count leader changes of an idle cluster.
//!
//! The rounds themselves are [`kill_rounds`]'s; this
//! module is runner-storage's side of them (`RunnerStorageCluster`): the
//! leader is read from every node's `Admin.Status`, killed by the pid in the
//! cluster script's pid file (or through `cluster.sh kill-leader`), and
//! restarted with `cluster.sh restart N`; the restarted node has caught up
//! once it applied everything the leader had committed when it restarted.
//! Writers re-register their own runner, each with its own [`Client`], so
//! the figure includes the client's own recovery (connection refused,
//! leader hint, backoff of up to `client::BACKOFF_MAX`). The helpers here
//! also serve `scale`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::time::Instant;

use runner_storage::client::Client;
use runner_storage::pb::v1::StatusResponse;
use runner_storage::Encoded;

use crate::kill_rounds::{self, FailoverTarget, RoundArgs, RoundWriter, FIRST_ACK_WAIT_MAX, POLL_INTERVAL};
use crate::workloads::bench_runner;

/// Longest wait for the cluster to be whole (every node up, one leader) before a round.
pub(crate) const HEALTHY_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest a `cluster.sh` command may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a restarted node to catch up.
pub(crate) const CATCH_UP_WAIT_MAX: Duration = Duration::from_secs(60);
/// Pause between polls of `idle`.
const IDLE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Deadline of one writer call: long enough to span an election.
const WRITE_DEADLINE: Duration = Duration::from_secs(20);

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
    /// Rounds, writers, settle pause.
    #[command(flatten)]
    pub rounds: RoundArgs,
    /// The cluster script, for `restart N` (and `kill-leader` with --kill-via script).
    #[arg(long, default_value = "scripts/cluster.sh")]
    pub cluster_script: PathBuf,
    /// How the leader is killed.
    #[arg(long, value_enum, default_value = "pid")]
    pub kill_via: KillVia,
    /// Where the node pid files are; default: `.cluster/pids` beside the script's directory.
    #[arg(long)]
    pub pid_dir: Option<PathBuf>,
}

fn check(args: &FailoverArgs) -> anyhow::Result<()> {
    args.rounds.check()?;
    anyhow::ensure!(args.cluster_script.is_file(), "--cluster-script {:?} is not a file", args.cluster_script);
    Ok(())
}

fn pid_dir(args: &FailoverArgs) -> PathBuf {
    pid_dir_of(&args.cluster_script, args.pid_dir.as_deref())
}

/// `explicit`, or `.cluster/pids` beside the directory of `cluster_script`.
pub(crate) fn pid_dir_of(cluster_script: &Path, explicit: Option<&Path>) -> PathBuf {
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
    let cluster =
        RunnerStorageCluster { endpoints: endpoints.to_vec(), args, client: Client::new(endpoints.to_vec())? };
    kill_rounds::run(&cluster, &args.rounds, json).await
}

/// runner-storage's side of the rounds.
struct RunnerStorageCluster<'a> {
    endpoints: Vec<String>,
    args: &'a FailoverArgs,
    /// For `Admin.Status` polls.
    client: Client,
}

impl RunnerStorageCluster<'_> {
    /// The client addresses of every member but `leader`.
    fn survivors(&self, leader: &StatusResponse) -> Vec<String> {
        leader
            .members
            .iter()
            .filter(|m| m.node_id != leader.node_id && self.endpoints.contains(&m.address))
            .map(|m| m.address.clone())
            .collect()
    }
}

/// A writer: its client and the runner it re-registers.
pub struct RegisterWriter {
    client: Client,
    address: String,
    runner: String,
}

impl RoundWriter for RegisterWriter {
    async fn write(&mut self) -> bool {
        self.client.register(&self.address, &self.runner, true).await.is_ok()
    }

    async fn retire(self) {
        let _ = self.client.unregister(&self.address).await;
    }
}

impl FailoverTarget for RunnerStorageCluster<'_> {
    type Leader = StatusResponse;
    type Writer = RegisterWriter;

    fn writer(&self, index: usize) -> anyhow::Result<RegisterWriter> {
        let (address, runner) = bench_runner("failover", index);
        Ok(RegisterWriter { client: Client::with_deadline(self.endpoints.clone(), WRITE_DEADLINE)?, address, runner })
    }

    async fn whole(&self) -> anyhow::Result<StatusResponse> {
        wait_whole(&self.client, &self.endpoints).await
    }

    fn id_and_term(leader: &StatusResponse) -> (u64, u64) {
        (leader.node_id, leader.term)
    }

    async fn kill(&self, leader: &StatusResponse) -> anyhow::Result<()> {
        kill_leader(&self.client, self.args, leader).await
    }

    async fn elected(&self, old: &StatusResponse) -> Option<(u64, u64)> {
        statuses(&self.client, &self.survivors(old))
            .await
            .into_iter()
            .filter_map(|(_, status)| status)
            .find(|s| s.role == "leader")
            .map(|s| (s.node_id, s.term))
    }

    async fn restart(&self, old: &StatusResponse) -> anyhow::Result<(Option<f64>, u64)> {
        restart_and_catch_up(&self.client, &self.survivors(old), &self.args.cluster_script, old.node_id, old).await
    }
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
pub(crate) async fn wait_whole(client: &Client, endpoints: &[String]) -> anyhow::Result<StatusResponse> {
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
pub(crate) async fn run_script(script: &Path, args: &[&str]) -> anyhow::Result<String> {
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
pub(crate) async fn sigkill(pid_dir: &Path, node_id: u64) -> anyhow::Result<u32> {
    sigkill_by_pid_file(&pid_dir.join(format!("node{node_id}.pid"))).await
}

/// SIGKILLs the process whose pid is in `pid_file`; returns the pid.
pub(crate) async fn sigkill_by_pid_file(pid_file: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(pid_file).with_context(|| format!("reading {pid_file:?}"))?;
    let pid: u32 = text.trim().parse().with_context(|| format!("{pid_file:?} holds no pid"))?;
    let status = tokio::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().await?;
    anyhow::ensure!(status.success(), "kill -KILL {pid} (from {pid_file:?}) failed");
    Ok(pid)
}

/// Waits until process `pid` is gone (reaped, or a zombie with no thread
/// left, so its port and files are released), at most `wait_max`.
pub(crate) async fn wait_gone(pid: u32, wait_max: Duration) -> anyhow::Result<()> {
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

/// Restarts the killed node `killed` (`cluster` names its address); waits
/// until it applied what the leader had committed at the restart and knows
/// the leader. Returns the wait (restart command included) and the term then.
pub(crate) async fn restart_and_catch_up(
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

/// Watches the cluster for `duration`, polling every node's Status, and
/// reports every change of leader or term (an idle cluster should have none).
///
/// # Errors
/// When the cluster has no leader at the start.
pub async fn idle(endpoints: &[String], duration: Duration, json: bool) -> anyhow::Result<()> {
    let first = crate::wait_for_leader(endpoints).await?;
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
