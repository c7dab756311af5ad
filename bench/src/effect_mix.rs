//! `effect-mix`: the call pattern of real Effect runners, sped up.
//!
//! R runners (tasks) share S shards of the `default` group, assigned
//! round-robin over the live runners in index order (shard `s` belongs to the
//! `s mod n`-th live runner). Each runner calls getRunners every 3 s and
//! refresh of its held shards every 10 s (Effect's defaults); when the
//! assignment changes it releases the shards it lost and acquires those it
//! gained, and on each refresh it retries gained shards whose previous owner
//! had not released them yet. A churn task makes one runner leave
//! (releaseAll + unregister) every 30 s and brings the previous leaver back
//! (register), which reassigns shards. Every period is divided by
//! `--speedup`. Ticks a runner could not keep (more than one period late)
//! are counted as `ticks.late`: the cluster (or the bench machine) did not
//! keep up with the target rate.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use runner_storage::client::Client;
use runner_storage::Encoded;

use crate::report::{Call, Recorder, Window};
use crate::workloads::bench_runner;
use crate::{collect, parse_duration, run_steps, ClientPool, RunPlan, CONCURRENCY_MAX, DRAIN_MAX};

/// Teardown calls in flight at once.
const TEARDOWN_PARALLEL: usize = 64;
/// Name of every simulated runner in addresses.
const WORKLOAD: &str = "effect-mix";

/// Flags of `effect-mix`.
#[derive(Debug, Clone, Args)]
pub struct EffectMixArgs {
    /// Simulated runners (each a task).
    #[arg(long, default_value_t = 1000)]
    pub runners: usize,
    /// Shards of the `default` group assigned over the runners.
    #[arg(long, default_value_t = 300)]
    pub shards: usize,
    /// Every period below is divided by this.
    #[arg(long, default_value_t = 10.0)]
    pub speedup: f64,
    /// Real-world period of each runner's getRunners.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub get_runners_every: Duration,
    /// Real-world period of each runner's refresh.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub refresh_every: Duration,
    /// Real-world period of churn: one runner leaves, the previous leaver returns.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub churn_every: Duration,
}

/// The scaled periods every runner task follows.
#[derive(Debug, Clone, Copy)]
struct Periods {
    get_runners: Duration,
    refresh: Duration,
    churn: Duration,
}

impl Periods {
    fn of(args: &EffectMixArgs) -> Self {
        Periods {
            get_runners: args.get_runners_every.div_f64(args.speedup),
            refresh: args.refresh_every.div_f64(args.speedup),
            churn: args.churn_every.div_f64(args.speedup),
        }
    }
}

/// Which runners are live, and so which runner owns which shard.
#[derive(Debug)]
struct Membership {
    /// Live runner indices, ascending.
    live: Vec<usize>,
    is_live: Vec<bool>,
}

impl Membership {
    fn new(is_live: Vec<bool>) -> Self {
        let live = is_live.iter().enumerate().filter(|(_, live)| **live).map(|(i, _)| i).collect();
        Membership { live, is_live }
    }

    /// The shards `runner` owns: `s` with `s mod n` its position among the `n` live runners.
    fn owned(&self, runner: usize, shards: usize) -> BTreeSet<usize> {
        match self.live.binary_search(&runner) {
            Ok(position) => (position..shards).step_by(self.live.len()).collect(),
            Err(_) => BTreeSet::new(),
        }
    }
}

/// One simulated runner: what it registered and holds.
struct Runner {
    index: usize,
    address: String,
    runner_json: String,
    client: Arc<Client>,
    shard_ids: Arc<Vec<String>>,
    registered: bool,
    held: BTreeSet<usize>,
    wanted: BTreeSet<usize>,
    recorder: Recorder,
    window: Window,
}

impl Runner {
    /// Follows a membership change: leave, (re)join, release lost and acquire gained shards.
    async fn reconcile(&mut self, membership: &Membership) {
        if !membership.is_live[self.index] {
            if self.registered {
                self.leave().await;
            }
            return;
        }
        if !self.registered {
            let start = Instant::now();
            let result = self.client.register(&self.address, &self.runner_json, true).await;
            self.recorder.record(Call::Register, &self.window, start, &result);
            if result.is_err() {
                return;
            }
            self.registered = true;
        }
        self.wanted = membership.owned(self.index, self.shard_ids.len());
        let lost: Vec<usize> = self.held.difference(&self.wanted).copied().collect();
        for shard in lost {
            let start = Instant::now();
            let result = self.client.release(&self.address, &self.shard_ids[shard]).await;
            self.recorder.record(Call::Release, &self.window, start, &result);
            self.held.remove(&shard);
        }
        self.acquire_missing().await;
    }

    async fn leave(&mut self) {
        let start = Instant::now();
        let result = self.client.release_all(&self.address).await;
        self.recorder.record(Call::ReleaseAll, &self.window, start, &result);
        let start = Instant::now();
        let result = self.client.unregister(&self.address).await;
        self.recorder.record(Call::Unregister, &self.window, start, &result);
        self.registered = false;
        self.held.clear();
        self.wanted.clear();
    }

    /// Acquires the wanted shards not held yet; a conflict (the previous owner
    /// has not released it) is retried on the next refresh.
    async fn acquire_missing(&mut self) {
        let missing: Vec<String> = self.wanted.difference(&self.held).map(|&s| self.shard_ids[s].clone()).collect();
        if missing.is_empty() {
            return;
        }
        let start = Instant::now();
        let result = self.client.acquire(&self.address, &missing).await;
        self.recorder.record(Call::Acquire, &self.window, start, &result);
        if let Ok(got) = &result {
            self.held.extend(got.iter().filter_map(|shard_id| shard_index(shard_id)));
            self.recorder.note(&self.window, start, "acquire.conflict", missing.len().saturating_sub(got.len()) as u64);
        }
    }

    async fn refresh(&mut self) {
        let held: Vec<String> = self.held.iter().map(|&s| self.shard_ids[s].clone()).collect();
        let start = Instant::now();
        let result = self.client.refresh(&self.address, &held).await;
        self.recorder.record(Call::Refresh, &self.window, start, &result);
        if let Ok(kept) = &result {
            self.held = kept.iter().filter_map(|shard_id| shard_index(shard_id)).collect();
            self.recorder.note(&self.window, start, "refresh.lost", held.len().saturating_sub(self.held.len()) as u64);
        }
        self.acquire_missing().await;
    }

    async fn get_runners(&mut self) {
        let start = Instant::now();
        let result = self.client.get_runners().await;
        self.recorder.record(Call::GetRunners, &self.window, start, &result);
    }
}

fn shard_index(shard_id: &str) -> Option<usize> {
    shard_id.strip_prefix("default:")?.parse().ok()
}

/// Next due time of a periodic call after one at `due`, skipping (and
/// counting as late) a tick more than a period behind.
fn next_due(due: Instant, period: Duration, now: Instant, recorder: &mut Recorder, window: &Window) -> Instant {
    let next = due + period;
    if next < now {
        recorder.note(window, due, "ticks.late", 1);
        return now + period;
    }
    next
}

async fn runner_task(
    mut runner: Runner,
    mut membership: watch::Receiver<Arc<Membership>>,
    periods: Periods,
) -> Recorder {
    let mut rng = StdRng::from_entropy();
    // Spread the runners' phases over a period, as runners started at different times are.
    let start = Instant::now();
    let mut next_get_runners = start + periods.get_runners.mul_f64(rng.gen::<f64>());
    let mut next_refresh = start + periods.refresh.mul_f64(rng.gen::<f64>());
    let current = Arc::clone(&membership.borrow_and_update());
    runner.reconcile(&current).await;
    let window = runner.window;
    while window.running() {
        let wake = next_get_runners.min(next_refresh).min(window.end);
        tokio::select! {
            changed = membership.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = Arc::clone(&membership.borrow_and_update());
                runner.reconcile(&current).await;
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= next_get_runners {
                    if runner.registered {
                        runner.get_runners().await;
                    }
                    next_get_runners = next_due(next_get_runners, periods.get_runners, Instant::now(), &mut runner.recorder, &window);
                }
                if now >= next_refresh {
                    if runner.registered {
                        runner.refresh().await;
                    }
                    next_refresh = next_due(next_refresh, periods.refresh, Instant::now(), &mut runner.recorder, &window);
                }
            }
        }
    }
    runner.recorder
}

/// Every churn period: the runner that left longest ago comes back, a random live one leaves.
async fn churn_task(sender: watch::Sender<Arc<Membership>>, period: Duration, window: Window) -> Recorder {
    let mut recorder = Recorder::new();
    let mut rng = StdRng::from_entropy();
    let mut down: VecDeque<usize> = VecDeque::new();
    let mut next = Instant::now() + period;
    while next < window.end {
        tokio::time::sleep_until(next).await;
        let mut is_live = sender.borrow().is_live.clone();
        if let Some(back) = down.pop_front() {
            is_live[back] = true;
        }
        let live: Vec<usize> = (0..is_live.len()).filter(|&i| is_live[i]).collect();
        if live.len() > 1 {
            let leaving = live[rng.gen_range(0..live.len())];
            is_live[leaving] = false;
            down.push_back(leaving);
        }
        sender.send_replace(Arc::new(Membership::new(is_live)));
        recorder.note(&window, next, "churn.changes", 1);
        next += period;
    }
    recorder
}

fn check(args: &EffectMixArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=CONCURRENCY_MAX).contains(&args.runners), "--runners must be in 1..={CONCURRENCY_MAX}");
    anyhow::ensure!((1..=10_000).contains(&args.shards), "--shards must be in 1..=10000");
    anyhow::ensure!(args.speedup.is_finite() && args.speedup >= 1.0, "--speedup must be at least 1");
    for (name, period) in
        [("get-runners", args.get_runners_every), ("refresh", args.refresh_every), ("churn", args.churn_every)]
    {
        anyhow::ensure!(!period.is_zero(), "--{name}-every must be more than 0");
    }
    Ok(())
}

/// Runs `effect-mix` once; the headline call is getRunners, the headline figure total ops/s.
///
/// # Errors
/// Bad flags, or a teardown that times out.
pub async fn run(plan: &RunPlan, args: &EffectMixArgs) -> anyhow::Result<(Call, Recorder)> {
    check(args)?;
    let periods = Periods::of(args);
    let pool = ClientPool::new(&plan.endpoints, args.runners)?;
    let shard_ids: Arc<Vec<String>> = Arc::new((0..args.shards).map(|s| format!("default:{s}")).collect());
    let (sender, receiver) = watch::channel(Arc::new(Membership::new(vec![true; args.runners])));
    let window = Window::starting_now(plan.warmup, plan.duration);
    let mut tasks = JoinSet::new();
    for index in 0..args.runners {
        let (address, runner_json) = bench_runner(WORKLOAD, index);
        let runner = Runner {
            index,
            address,
            runner_json,
            client: pool.client(index),
            shard_ids: Arc::clone(&shard_ids),
            registered: false,
            held: BTreeSet::new(),
            wanted: BTreeSet::new(),
            recorder: Recorder::new(),
            window,
        };
        tasks.spawn(runner_task(runner, receiver.clone(), periods));
    }
    tasks.spawn(churn_task(sender, periods.churn, window));
    let mut recorder = collect(tasks, window.end + DRAIN_MAX).await;
    let target_per_s =
        args.runners as f64 * (1.0 / periods.get_runners.as_secs_f64() + 1.0 / periods.refresh.as_secs_f64());
    recorder.note_always("target.calls_per_s", target_per_s.round() as u64);
    let client = pool.client(0);
    let steps = (0..args.runners)
        .map(|index| {
            let client = Arc::clone(&client);
            async move {
                let (address, _) = bench_runner(WORKLOAD, index);
                client.release_all(&address).await?;
                client.unregister(&address).await
            }
        })
        .collect();
    let failures = run_steps("effect-mix teardown", TEARDOWN_PARALLEL, steps).await?;
    recorder.note_always("teardown.failed", failures);
    Ok((Call::GetRunners, recorder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_gives_every_shard_one_live_owner() {
        let membership = Membership::new(vec![true, false, true, true]);
        let shards = 10;
        let owned: Vec<BTreeSet<usize>> = (0..4).map(|r| membership.owned(r, shards)).collect();
        assert!(owned[1].is_empty());
        assert_eq!(owned[0], [0, 3, 6, 9].into_iter().collect());
        assert_eq!(owned[2], [1, 4, 7].into_iter().collect());
        assert_eq!(owned.iter().map(BTreeSet::len).sum::<usize>(), shards);
    }

    #[test]
    fn shard_index_reads_back_the_default_group() {
        assert_eq!(shard_index("default:299"), Some(299));
        assert_eq!(shard_index("other:1"), None);
    }

    #[test]
    fn periods_are_scaled_by_the_speedup() {
        let args = EffectMixArgs {
            runners: 10,
            shards: 300,
            speedup: 10.0,
            get_runners_every: Duration::from_secs(3),
            refresh_every: Duration::from_secs(10),
            churn_every: Duration::from_secs(30),
        };
        let periods = Periods::of(&args);
        assert_eq!(periods.get_runners, Duration::from_millis(300));
        assert_eq!(periods.refresh, Duration::from_secs(1));
        assert_eq!(periods.churn, Duration::from_secs(3));
    }
}
