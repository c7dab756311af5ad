//! The single-call workloads: `register`, `acquire`, `refresh`, `get-runners`.
//!
//! Each one sets up what its tasks need (outside the measured part), drives
//! its tasks with [`drive`], and cleans up after itself (unregisters its
//! runners, releases its locks) so runs do not disturb each other. Runner
//! addresses are `bench-<workload>-<task>:1`; no real runner uses them.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use runner_storage::client::Client;
use runner_storage::model::{Runner, RunnerAddress};
use runner_storage::Encoded;

use crate::report::{Call, Recorder, Window};
use crate::{drive, run_steps, ClientPool, RunPlan};

/// Shards the `acquire` workload competes for (`default:0..300`), as an Effect
/// cluster's default group.
pub const ACQUIRE_SHARDS: usize = 300;
/// Shards each `refresh` task holds.
pub const REFRESH_SHARDS_PER_TASK: usize = 10;
/// Setup and teardown calls in flight at once.
const SETUP_PARALLEL: usize = 64;

/// Flags of `acquire`.
#[derive(Debug, Clone, Args)]
pub struct AcquireArgs {
    /// Chance that a task releases a shard right after winning it.
    #[arg(long, default_value_t = 0.5)]
    pub release_probability: f64,
}

impl Default for AcquireArgs {
    fn default() -> Self {
        AcquireArgs { release_probability: 0.5 }
    }
}

/// Flags of `get-runners`.
#[derive(Debug, Clone, Args)]
pub struct GetRunnersArgs {
    /// Runners registered before the run, so every answer lists this many.
    #[arg(long, default_value_t = 100)]
    pub runners: usize,
}

impl Default for GetRunnersArgs {
    fn default() -> Self {
        GetRunnersArgs { runners: 100 }
    }
}

/// The address and Effect JSON of bench runner `index` of `workload`.
pub fn bench_runner(workload: &str, index: usize) -> (String, String) {
    let address = RunnerAddress::new(format!("bench-{workload}-{index}"), 1);
    let runner = Runner { address: address.clone(), groups: vec!["default".into()], weight: 1.0 };
    (address.to_string(), runner.to_json())
}

/// Unregisters `addresses` and releases all their locks (teardown).
async fn clean_up(pool: &ClientPool, addresses: Vec<String>, recorder: &mut Recorder) -> anyhow::Result<()> {
    let client = pool.client(0);
    let steps = addresses
        .into_iter()
        .map(|address| {
            let client = Arc::clone(&client);
            async move {
                client.release_all(&address).await?;
                client.unregister(&address).await
            }
        })
        .collect();
    let failures = run_steps("teardown", SETUP_PARALLEL, steps).await?;
    recorder.note_always("teardown.failed", failures);
    Ok(())
}

/// `register`: each task re-registers its own runner in a loop.
///
/// # Errors
/// When teardown times out.
pub async fn register(plan: &RunPlan) -> anyhow::Result<(Call, Recorder)> {
    let pool = ClientPool::new(&plan.endpoints, plan.concurrency)?;
    let mut recorder = drive(&pool, plan, |index, client, window| async move {
        let (address, runner) = bench_runner("register", index);
        let mut recorder = Recorder::new();
        while window.running() {
            let start = Instant::now();
            let result = client.register(&address, &runner, true).await;
            recorder.record(Call::Register, &window, start, &result);
        }
        recorder
    })
    .await;
    let addresses = (0..plan.concurrency).map(|i| bench_runner("register", i).0).collect();
    clean_up(&pool, addresses, &mut recorder).await?;
    Ok((Call::Register, recorder))
}

/// `acquire`: tasks compete for [`ACQUIRE_SHARDS`] shards, one random shard
/// per call, so conflicts happen. A task releases a shard it won with
/// `release_probability`, and keeps at most `ACQUIRE_SHARDS / (2 × C)` (at
/// least 1), releasing its oldest past that, so about half the pool stays
/// free and the pool keeps moving.
///
/// # Errors
/// When the flags are out of range or teardown times out.
pub async fn acquire(plan: &RunPlan, args: &AcquireArgs) -> anyhow::Result<(Call, Recorder)> {
    anyhow::ensure!((0.0..=1.0).contains(&args.release_probability), "--release-probability must be within 0..=1");
    let pool = ClientPool::new(&plan.endpoints, plan.concurrency)?;
    let shard_ids: Arc<Vec<String>> = Arc::new((0..ACQUIRE_SHARDS).map(|i| format!("default:{i}")).collect());
    let mut recorder = drive(&pool, plan, |index, client, window| {
        let locks = ShardLocks { client, address: bench_runner("acquire", index).0, shard_ids: Arc::clone(&shard_ids) };
        lock_task(locks, HeldShards::new(plan.concurrency, args.release_probability), window)
    })
    .await;
    let addresses = (0..plan.concurrency).map(|i| bench_runner("acquire", i).0).collect();
    clean_up(&pool, addresses, &mut recorder).await?;
    Ok((Call::Acquire, recorder))
}

/// One `acquire` task's shards: which to try next and which to release.
/// Shared with etcd's lock workload, so both move the pool the same way.
pub struct HeldShards {
    held: VecDeque<usize>,
    held_max: usize,
    release_probability: f64,
    rng: StdRng,
}

impl HeldShards {
    /// The shards of one of `concurrency` tasks; `release_probability` is
    /// the chance of releasing a shard right after winning it.
    pub fn new(concurrency: usize, release_probability: f64) -> Self {
        HeldShards {
            held: VecDeque::new(),
            held_max: (ACQUIRE_SHARDS / (2 * concurrency.max(1))).max(1),
            release_probability: release_probability.clamp(0.0, 1.0),
            rng: StdRng::from_entropy(),
        }
    }

    /// The shard to try next, uniform over [`ACQUIRE_SHARDS`].
    pub fn draw(&mut self) -> usize {
        self.rng.gen_range(0..ACQUIRE_SHARDS)
    }

    /// Notes the outcome of trying `shard`; returns the shard to release
    /// now, if any: the one just won (with `release_probability`), or the
    /// oldest held once more than `held_max` are held.
    pub fn after_acquire(&mut self, shard: usize, won: bool) -> Option<usize> {
        if !won || self.held.contains(&shard) {
            return None;
        }
        self.held.push_back(shard);
        if self.rng.gen_bool(self.release_probability) {
            self.held.pop_back()
        } else if self.held.len() > self.held_max {
            self.held.pop_front()
        } else {
            None
        }
    }
}

/// The two calls of a lock workload, as one task makes them.
pub trait LockCalls: Send + 'static {
    /// The calls' histograms: taking a shard, releasing one.
    const CALLS: [Call; 2];
    /// The notes counting won and conflicting takes.
    const NOTES: [&'static str; 2];
    /// Tries to take shard `shard`; whether the task holds it afterwards.
    fn take(&mut self, shard: usize) -> impl Future<Output = runner_storage::Result<bool>> + Send + '_;
    /// Releases shard `shard`.
    fn release(&mut self, shard: usize) -> impl Future<Output = runner_storage::Result<()>> + Send + '_;
}

/// One task of a lock workload: draws shards and takes them until the
/// window ends, releasing as `held` says.
pub async fn lock_task<L: LockCalls>(mut locks: L, mut held: HeldShards, window: Window) -> Recorder {
    let [take_call, release_call] = L::CALLS;
    let [won_note, conflict_note] = L::NOTES;
    let mut recorder = Recorder::new();
    while window.running() {
        let shard = held.draw();
        let start = Instant::now();
        let result = locks.take(shard).await;
        recorder.record(take_call, &window, start, &result);
        let won = matches!(result, Ok(true));
        if result.is_ok() {
            recorder.note(&window, start, if won { won_note } else { conflict_note }, 1);
        }
        let Some(shard) = held.after_acquire(shard, won) else { continue };
        if !window.running() {
            break;
        }
        let start = Instant::now();
        let result = locks.release(shard).await;
        recorder.record(release_call, &window, start, &result);
    }
    recorder
}

/// runner-storage's lock calls: `acquire` of one shard, `release`.
struct ShardLocks {
    client: Arc<Client>,
    address: String,
    shard_ids: Arc<Vec<String>>,
}

impl LockCalls for ShardLocks {
    const CALLS: [Call; 2] = [Call::Acquire, Call::Release];
    const NOTES: [&'static str; 2] = ["acquire.won", "acquire.conflict"];

    async fn take(&mut self, shard: usize) -> runner_storage::Result<bool> {
        let got = self.client.acquire(&self.address, std::slice::from_ref(&self.shard_ids[shard])).await?;
        Ok(!got.is_empty())
    }

    async fn release(&mut self, shard: usize) -> runner_storage::Result<()> {
        self.client.release(&self.address, &self.shard_ids[shard]).await
    }
}

/// The [`REFRESH_SHARDS_PER_TASK`] shards of `refresh` task `index`, distinct per task.
fn refresh_shards(index: usize) -> Vec<String> {
    (0..REFRESH_SHARDS_PER_TASK).map(|k| format!("bench-refresh:{}", index * REFRESH_SHARDS_PER_TASK + k)).collect()
}

/// `refresh`: each task holds [`REFRESH_SHARDS_PER_TASK`] shards (acquired in
/// setup) and refreshes them in a loop; an answer missing one counts as
/// `refresh.lost`.
///
/// # Errors
/// When setup fails (a shard could not be acquired) or a step times out.
pub async fn refresh(plan: &RunPlan) -> anyhow::Result<(Call, Recorder)> {
    let pool = ClientPool::new(&plan.endpoints, plan.concurrency)?;
    let steps = (0..plan.concurrency)
        .map(|index| {
            let client = pool.client(index);
            async move {
                let (address, runner) = bench_runner("refresh", index);
                let shard_ids = refresh_shards(index);
                client.register(&address, &runner, true).await?;
                let got = client.acquire(&address, &shard_ids).await?;
                if got.len() == shard_ids.len() {
                    Ok(())
                } else {
                    Err(runner_storage::Error::FailedPrecondition(format!("{address} got {} of its shards", got.len())))
                }
            }
        })
        .collect();
    let failures = run_steps("refresh setup", SETUP_PARALLEL, steps).await?;
    anyhow::ensure!(failures == 0, "refresh setup: {failures} tasks could not register and acquire their shards");
    let mut recorder = drive(&pool, plan, |index, client, window| async move {
        let (address, _) = bench_runner("refresh", index);
        let shard_ids = refresh_shards(index);
        let mut recorder = Recorder::new();
        while window.running() {
            let start = Instant::now();
            let result = client.refresh(&address, &shard_ids).await;
            recorder.record(Call::Refresh, &window, start, &result);
            if let Ok(kept) = &result {
                let lost = (shard_ids.len() - kept.len().min(shard_ids.len())) as u64;
                if lost > 0 {
                    recorder.note(&window, start, "refresh.lost", lost);
                }
            }
        }
        recorder
    })
    .await;
    let addresses = (0..plan.concurrency).map(|i| bench_runner("refresh", i).0).collect();
    clean_up(&pool, addresses, &mut recorder).await?;
    Ok((Call::Refresh, recorder))
}

/// `get-runners`: `args.runners` runners are registered in setup; tasks call
/// getRunners in a loop. An answer listing fewer counts as `get_runners.short`
/// (it should never happen within one run: registrations live for the lock
/// expiration, 35 s by default).
///
/// # Errors
/// When setup fails or a step times out.
pub async fn get_runners(plan: &RunPlan, args: &GetRunnersArgs) -> anyhow::Result<(Call, Recorder)> {
    let pool = ClientPool::new(&plan.endpoints, plan.concurrency)?;
    let client = pool.client(0);
    let steps = (0..args.runners)
        .map(|index| {
            let client = Arc::clone(&client);
            async move {
                let (address, runner) = bench_runner("get-runners", index);
                client.register(&address, &runner, true).await.map(|_| ())
            }
        })
        .collect();
    let failures = run_steps("get-runners setup", SETUP_PARALLEL, steps).await?;
    anyhow::ensure!(failures == 0, "get-runners setup: {failures} registrations failed");
    let expected = args.runners;
    let mut recorder = drive(&pool, plan, |_, client, window| async move {
        let mut recorder = Recorder::new();
        while window.running() {
            let start = Instant::now();
            let result = client.get_runners().await;
            recorder.record(Call::GetRunners, &window, start, &result);
            if matches!(&result, Ok(runners) if runners.len() < expected) {
                recorder.note(&window, start, "get_runners.short", 1);
            }
        }
        recorder
    })
    .await;
    let addresses = (0..args.runners).map(|i| bench_runner("get-runners", i).0).collect();
    clean_up(&pool, addresses, &mut recorder).await?;
    Ok((Call::GetRunners, recorder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_runners_are_valid_effect_runners() {
        let (address, runner) = bench_runner("acquire", 7);
        assert_eq!(address, "bench-acquire-7:1");
        let parsed = RunnerAddress::parse(&address).expect("valid address");
        runner_storage::model::encoding::validate_runner_json(&parsed, &runner).expect("valid runner JSON");
    }

    #[test]
    fn held_shards_stay_within_their_bound() {
        let mut held = HeldShards::new(64, 0.0);
        assert_eq!(held.held_max, 2);
        assert_eq!(held.after_acquire(5, false), None, "a conflict holds nothing");
        assert_eq!(held.after_acquire(5, true), None);
        assert_eq!(held.after_acquire(5, true), None, "re-acquiring an own shard holds it once");
        assert_eq!(held.after_acquire(6, true), None);
        assert_eq!(held.after_acquire(7, true), Some(5), "past the bound the oldest goes");
        let mut always = HeldShards::new(1, 1.0);
        assert_eq!(always.after_acquire(9, true), Some(9), "release probability 1 releases at once");
        assert!((0..1000).map(|_| held.draw()).all(|shard| shard < ACQUIRE_SHARDS));
    }

    #[test]
    fn refresh_shards_are_distinct_between_tasks() {
        let a = refresh_shards(0);
        let b = refresh_shards(1);
        assert_eq!(a.len(), REFRESH_SHARDS_PER_TASK);
        assert!(a.iter().all(|shard_id| !b.contains(shard_id)));
    }
}
