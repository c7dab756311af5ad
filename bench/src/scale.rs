//! `scale`: fill a cluster to production size, then report what a node
//! costs at that size and how fast a node with that state restarts.
//!
//! Steps, each bounded in time:
//! 1. wait until every node answers and agrees on a leader; raise `E` to
//!    `--hold` so the locks stay held while they are measured (restored at
//!    the end);
//! 2. register `--runners` runners (`bench-scale-<i>:1`);
//! 3. acquire `--groups` × `--shards` shards (`scale-<g>:<s>`), dealt round
//!    robin to the runners, one `acquire` per runner;
//! 4. snapshot every node (`TriggerSnapshot`) and wait until each reports a
//!    snapshot covering the fill;
//! 5. read every node's `Status`: resident memory, snapshot bytes, disk
//!    bytes; time `getRunners` at this size;
//! 6. `--restarts` times: SIGKILL a follower, wait until its process is
//!    gone, then time `cluster.sh restart N` until the node has applied
//!    what the leader had committed and knows the leader (serving again);
//! 7. unless `--keep`: release every lock, unregister every runner, restore `E`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use runner_storage::client::Client;
use runner_storage::pb::v1::StatusResponse;
use runner_storage::Encoded;

use crate::failover::{pid_dir_of, restart_and_catch_up, sigkill, wait_gone, wait_whole};
use crate::report::median;
use crate::workloads::bench_runner;
use crate::{run_steps, ClientPool};

/// Calls in flight while filling and emptying the cluster.
const FILL_PARALLEL: usize = 64;
/// Most runners `--runners` may ask for (the cluster's default cap).
const RUNNERS_MAX: usize = runner_storage::limits::RUNNERS_MAX_DEFAULT;
/// Most locks `--groups` × `--shards` may ask for.
const LOCKS_MAX: usize = 1_000_000;
/// Most restart rounds.
const RESTARTS_MAX: usize = 100;
/// Longest wait for every node to report a snapshot covering the fill.
const SNAPSHOT_WAIT_MAX: Duration = Duration::from_secs(60);
/// Longest wait for a SIGKILLed node's process to be gone.
const KILL_WAIT_MAX: Duration = Duration::from_secs(10);
/// `getRunners` calls timed at full size.
const GET_RUNNERS_SAMPLES: usize = 20;

/// Flags of `scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Runners to register.
    #[arg(long, default_value_t = 10_000)]
    pub runners: usize,
    /// Shard groups to lock.
    #[arg(long, default_value_t = 100)]
    pub groups: usize,
    /// Shards per group.
    #[arg(long, default_value_t = 300)]
    pub shards: usize,
    /// Lock expiration `E` while measuring, so the locks stay held; the old
    /// `E` is restored at the end.
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    pub hold: Duration,
    /// Follower restarts to time (0: none).
    #[arg(long, default_value_t = 3)]
    pub restarts: usize,
    /// The cluster script, for `restart N`.
    #[arg(long, default_value = "scripts/cluster.sh")]
    pub cluster_script: PathBuf,
    /// Where the node pid files are; default: `.cluster/pids` beside the script's directory.
    #[arg(long)]
    pub pid_dir: Option<PathBuf>,
    /// Leave the runners and locks in place (and `E` raised) at the end.
    #[arg(long)]
    pub keep: bool,
}

/// One node's footprint at full size.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    /// The node.
    pub node_id: u64,
    /// Its role when read.
    pub role: String,
    /// Resident memory, MiB.
    pub resident_mib: f64,
    /// Latest snapshot, MiB.
    pub snapshot_mib: f64,
    /// Data dir (sled's estimate), MiB.
    pub disk_mib: f64,
}

/// What `scale` measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// Runners registered.
    pub runners: usize,
    /// Locks held.
    pub locks_held: usize,
    /// Seconds the fill (register + acquire) took.
    pub fill_seconds: f64,
    /// Every node after the snapshot.
    pub nodes: Vec<Footprint>,
    /// `getRunners` at full size, median ms.
    pub get_runners_ms_median: f64,
    /// Each restart: restart command → serving, ms (`None`: not within the wait).
    pub restarts_ms: Vec<Option<f64>>,
    /// Resident memory of each restarted node once serving, MiB.
    pub restarted_resident_mib: Vec<f64>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn check(args: &ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=RUNNERS_MAX).contains(&args.runners), "--runners must be in 1..={RUNNERS_MAX}");
    let locks = args.groups.saturating_mul(args.shards);
    anyhow::ensure!(locks <= LOCKS_MAX, "--groups × --shards must be at most {LOCKS_MAX}");
    anyhow::ensure!(args.restarts <= RESTARTS_MAX, "--restarts must be at most {RESTARTS_MAX}");
    anyhow::ensure!(
        args.hold >= Duration::from_secs(60) && args.hold <= Duration::from_secs(24 * 3600),
        "--hold must be between 1m and 24h"
    );
    anyhow::ensure!(
        args.restarts == 0 || args.cluster_script.is_file(),
        "--cluster-script {:?} is not a file",
        args.cluster_script
    );
    Ok(())
}

/// The shards of runner `index`: shard `k` of the whole set goes to runner `k % runners`.
fn shards_of(index: usize, args: &ScaleArgs) -> Vec<String> {
    let total = args.groups * args.shards;
    (index..total).step_by(args.runners).map(|k| format!("scale-{}:{}", k / args.shards, k % args.shards)).collect()
}

/// Runs the scale bench.
///
/// # Errors
/// Bad flags, a cluster that is not whole, a fill that fails, a script that fails.
pub async fn run(endpoints: &[String], args: &ScaleArgs, json: bool) -> anyhow::Result<()> {
    check(args)?;
    let status_client = Client::new(endpoints.to_vec())?;
    let leader = wait_whole(&status_client, endpoints).await?;
    let old_expiration_ms = leader.lock_expiration_ms;
    let hold_ms = u64::try_from(args.hold.as_millis()).unwrap_or(u64::MAX);
    status_client.set_lock_expiration(hold_ms).await?;
    let pool = Arc::new(ClientPool::new(endpoints, FILL_PARALLEL)?);

    let started = Instant::now();
    let locks_held = fill(&pool, args).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    eprintln!("scale: {} runners, {locks_held} locks held in {fill_seconds:.1} s", args.runners);

    snapshot_everywhere(&status_client, endpoints).await?;
    let nodes = footprints(&status_client, endpoints).await;
    let get_runners_ms_median = time_get_runners(&pool.client(0), args.runners).await?;
    let (restarts_ms, restarted_resident_mib) = restarts(&status_client, endpoints, args).await?;

    if !args.keep {
        empty(&pool, args).await?;
        status_client.set_lock_expiration(old_expiration_ms).await?;
    }
    let report = ScaleReport {
        runners: args.runners,
        locks_held,
        fill_seconds,
        nodes,
        get_runners_ms_median,
        restarts_ms,
        restarted_resident_mib,
    };
    print_report(&report, json)
}

/// Registers the runners and acquires their shards; returns the locks won.
async fn fill(pool: &Arc<ClientPool>, args: &ScaleArgs) -> anyhow::Result<usize> {
    let registers = (0..args.runners)
        .map(|index| {
            let client = pool.client(index % FILL_PARALLEL);
            async move {
                let (address, runner) = bench_runner("scale", index);
                client.register(&address, &runner, true).await.map(|_| ())
            }
        })
        .collect();
    let failed = run_steps("registering the runners", FILL_PARALLEL, registers).await?;
    anyhow::ensure!(failed == 0, "{failed} of {} registers failed", args.runners);

    let won = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acquires = (0..args.runners)
        .map(|index| {
            let client = pool.client(index % FILL_PARALLEL);
            let shards = shards_of(index, args);
            let won = Arc::clone(&won);
            async move {
                if shards.is_empty() {
                    return Ok(());
                }
                let (address, _) = bench_runner("scale", index);
                let acquired = client.acquire(&address, &shards).await?;
                won.fetch_add(acquired.len(), std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
        })
        .collect();
    let failed = run_steps("acquiring the shards", FILL_PARALLEL, acquires).await?;
    anyhow::ensure!(failed == 0, "{failed} acquires failed");
    let won = won.load(std::sync::atomic::Ordering::Relaxed);
    let wanted = args.groups * args.shards;
    anyhow::ensure!(won == wanted, "{won} of {wanted} shards acquired: are other clients holding scale-* shards?");
    Ok(won)
}

/// Releases every lock and unregisters every runner of the fill.
async fn empty(pool: &Arc<ClientPool>, args: &ScaleArgs) -> anyhow::Result<()> {
    let steps = (0..args.runners)
        .map(|index| {
            let client = pool.client(index % FILL_PARALLEL);
            async move {
                let (address, _) = bench_runner("scale", index);
                client.release_all(&address).await?;
                client.unregister(&address).await
            }
        })
        .collect();
    let failed = run_steps("emptying the cluster", FILL_PARALLEL, steps).await?;
    anyhow::ensure!(failed == 0, "{failed} runners could not be released and unregistered");
    Ok(())
}

/// Asks every node for a snapshot and waits until each has one covering
/// what was applied when asked.
async fn snapshot_everywhere(client: &Client, endpoints: &[String]) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    for endpoint in endpoints {
        let status = client.status_of(endpoint).await?;
        client.trigger_snapshot(endpoint).await?;
        targets.push((endpoint, status.applied_index));
    }
    let deadline = Instant::now() + SNAPSHOT_WAIT_MAX;
    for (endpoint, applied) in targets {
        while client.status_of(endpoint).await.map_or(true, |s| s.snapshot_index < applied) {
            anyhow::ensure!(Instant::now() < deadline, "{endpoint} built no snapshot within {SNAPSHOT_WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn footprints(client: &Client, endpoints: &[String]) -> Vec<Footprint> {
    let mut nodes = Vec::new();
    for endpoint in endpoints {
        if let Ok(status) = client.status_of(endpoint).await {
            nodes.push(footprint(&status));
        }
    }
    nodes
}

fn footprint(status: &StatusResponse) -> Footprint {
    Footprint {
        node_id: status.node_id,
        role: status.role.clone(),
        resident_mib: mib(status.resident_memory_bytes),
        snapshot_mib: mib(status.snapshot_bytes),
        disk_mib: mib(status.disk_bytes),
    }
}

/// Median of [`GET_RUNNERS_SAMPLES`] `getRunners` calls, ms; checks the count.
async fn time_get_runners(client: &Client, at_least: usize) -> anyhow::Result<f64> {
    let mut samples = Vec::with_capacity(GET_RUNNERS_SAMPLES);
    for _ in 0..GET_RUNNERS_SAMPLES {
        let started = Instant::now();
        let runners = client.get_runners().await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(runners.len() >= at_least, "getRunners listed {} runners, expected {at_least}", runners.len());
    }
    Ok(median(samples))
}

/// SIGKILLs and restarts a follower `--restarts` times (a different one
/// each time where there are several); restart → serving per round, and
/// the restarted node's resident memory once serving.
async fn restarts(
    client: &Client,
    endpoints: &[String],
    args: &ScaleArgs,
) -> anyhow::Result<(Vec<Option<f64>>, Vec<f64>)> {
    let pid_dir = pid_dir_of(&args.cluster_script, args.pid_dir.as_deref());
    let (mut times, mut resident) = (Vec::new(), Vec::new());
    for round in 0..args.restarts {
        let leader = wait_whole(client, endpoints).await?;
        let followers: Vec<_> = leader.members.iter().filter(|m| m.node_id != leader.node_id).collect();
        anyhow::ensure!(!followers.is_empty(), "no follower to restart");
        let victim = followers[round % followers.len()];
        let pid = sigkill(&pid_dir, victim.node_id).await?;
        // A node is restarted once the old process is gone (as a supervisor
        // would): the kernel tearing it down is not restart time.
        wait_gone(pid, KILL_WAIT_MAX).await?;
        let survivors: Vec<String> =
            endpoints.iter().filter(|endpoint| **endpoint != victim.address).cloned().collect();
        let (serving_ms, _) =
            restart_and_catch_up(client, &survivors, &args.cluster_script, victim.node_id, &leader).await?;
        eprintln!("scale: restart {} of node {}: {serving_ms:?} ms", round + 1, victim.node_id);
        times.push(serving_ms);
        if let Ok(status) = client.status_of(&victim.address).await {
            resident.push(mib(status.resident_memory_bytes));
        }
    }
    Ok((times, resident))
}

fn print_report(report: &ScaleReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!(
        "{} runners, {} locks held; fill took {:.1} s; getRunners at this size: median {:.2} ms",
        report.runners, report.locks_held, report.fill_seconds, report.get_runners_ms_median
    );
    println!("{:>5} {:>9} {:>12} {:>13} {:>9}", "NODE", "ROLE", "RSS MiB", "SNAPSHOT MiB", "DISK MiB");
    for node in &report.nodes {
        println!(
            "{:>5} {:>9} {:>12.1} {:>13.2} {:>9.1}",
            node.node_id, node.role, node.resident_mib, node.snapshot_mib, node.disk_mib
        );
    }
    let fmt = |ms: &Option<f64>| ms.map_or_else(|| "timeout".to_string(), |ms| format!("{ms:.0}"));
    let restarts: Vec<String> = report.restarts_ms.iter().map(fmt).collect();
    let done: Vec<f64> = report.restarts_ms.iter().flatten().copied().collect();
    if !restarts.is_empty() {
        println!(
            "follower SIGKILL + restart → serving, ms: [{}]; median {:.0}; RSS after restart, MiB: {:.1?}",
            restarts.join(", "),
            median(done),
            report.restarted_resident_mib
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(runners: usize, groups: usize, shards: usize) -> ScaleArgs {
        ScaleArgs {
            runners,
            groups,
            shards,
            hold: Duration::from_secs(600),
            restarts: 0,
            cluster_script: PathBuf::from("scripts/cluster.sh"),
            pid_dir: None,
            keep: false,
        }
    }

    #[test]
    fn every_shard_goes_to_exactly_one_runner() {
        let args = args(7, 3, 5);
        let mut all: Vec<String> = (0..args.runners).flat_map(|i| shards_of(i, &args)).collect();
        assert_eq!(all.len(), 15);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 15, "a shard was dealt twice");
        assert!(all.contains(&"scale-2:4".to_string()));
    }

    #[test]
    fn the_default_size_is_three_shards_per_runner() {
        let args = args(10_000, 100, 300);
        assert_eq!(shards_of(0, &args), vec!["scale-0:0", "scale-33:100", "scale-66:200"]);
        assert_eq!(shards_of(9_999, &args).len(), 3);
    }

    #[test]
    fn flags_out_of_bounds_are_refused() {
        assert!(check(&args(0, 1, 1)).is_err());
        assert!(check(&args(10, 10_000, 10_000)).is_err());
        assert!(check(&args(10, 1, 1)).is_ok());
    }
}
