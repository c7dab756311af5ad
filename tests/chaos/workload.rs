//! The workload: simulated Effect runners, readers and a lock thief, each a
//! task with its own [`Client`] (deadline per call, retries through
//! failover), every call recorded in the history.
//!
//! A **runner** does what Effect's `Sharding` does: register (getting its
//! machine id), then every [`REFRESH_INTERVAL`] refresh the shards it holds
//! (a heartbeat; shards missing from the answer are lost), and every third
//! tick read the runners, compute its assignment (shard `i` goes to the
//! `i mod n`-th healthy live runner in machine-id order), release shards no
//! longer its own and acquire the new ones. Now and then it flips its health
//! flag. At the end of its lifetime it shuts down cleanly (releaseAll,
//! unregister) or crashes (stops calling: its locks expire, its record
//! lingers until another runner's unregister sweeps it). A slot then starts
//! a new incarnation on an address of the pool that no other slot uses, so
//! addresses, machine ids and shards change hands.
//!
//! **Readers** call getRunners in a loop. The **thief** grabs a random shard
//! under its own address (succeeding only on expired or free locks), holds
//! it for a few refreshes and releases it.
//!
//! Every call passes the [`Gate`] first, which the nemesis closes around a
//! power cut. Every loop is bounded in time (the stop flag, lifetimes) and
//! in count.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use runner_storage::client::Client;
use runner_storage::model::Runner;
use runner_storage::Encoded;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::gate::Gate;
use crate::history::{Answer, Call, Recorder};

/// How often a runner refreshes (a heartbeat and lock renewal).
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(300);
/// Deadline of one call, retries through failover included. Longer than any
/// fault holds (5 s) plus an election, so most calls complete; shorter than
/// the 10 × E after which the cluster forgets a client's request ids (20 s).
pub const CALL_DEADLINE: Duration = Duration::from_secs(12);
const READ_INTERVAL: Duration = Duration::from_millis(250);
const THEFT_INTERVAL: Duration = Duration::from_millis(700);
const TICKS_PER_INCARNATION_MAX: u64 = 1000;
const INCARNATIONS_PER_SLOT_MAX: u64 = 10_000;
const READS_PER_READER_MAX: u64 = 1_000_000;
const THEFTS_MAX: u64 = 1_000_000;
const REGISTER_ATTEMPTS_MAX: u32 = 5;

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub seed: u64,
    pub slots: usize,
    pub address_pool: usize,
    pub shard_ids: Vec<String>,
    pub readers: usize,
    pub thieves: usize,
    pub lock_expiration: Duration,
    pub lifetime_ms: (u64, u64),
    pub crash_probability: f64,
}

impl WorkloadConfig {
    pub fn standard(seed: u64, lock_expiration: Duration) -> WorkloadConfig {
        WorkloadConfig {
            seed,
            slots: 4,
            address_pool: 6,
            shard_ids: (1..=12).map(|id| format!("default:{id}")).collect(),
            readers: 2,
            thieves: 1,
            lock_expiration,
            lifetime_ms: (8_000, 30_000),
            crash_probability: 0.3,
        }
    }
}

/// The address of pool entry `index`.
pub fn pool_address(index: usize) -> String {
    format!("runner{index}.chaos:{}", 9000 + index)
}

/// Effect's runner JSON for `address`.
pub fn runner_json(address: &str) -> String {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    format!(r#"{{"address":{{"host":"{host}","port":{port}}},"groups":["default"],"weight":1}}"#)
}

struct Context {
    endpoints: Vec<String>,
    recorder: Arc<Recorder>,
    config: WorkloadConfig,
    stop: AtomicBool,
    free_addresses: Mutex<BTreeSet<usize>>,
    gate: Arc<Gate>,
}

impl Context {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn client(&self) -> Client {
        Client::with_deadline(self.endpoints.clone(), CALL_DEADLINE).expect("workload client")
    }
}

/// One client's recorded calls, each after passing the gate (if any).
pub struct Recorded<'a> {
    pub recorder: &'a Recorder,
    pub client: Client,
    pub process: String,
    pub gate: Option<Arc<Gate>>,
}

impl Recorded<'_> {
    async fn record<T>(
        &self,
        call: Call,
        future: impl std::future::Future<Output = runner_storage::Result<T>>,
        answer: impl FnOnce(&T) -> Answer,
    ) -> runner_storage::Result<T> {
        let _pass = match &self.gate {
            Some(gate) => Some(gate.pass().await),
            None => None,
        };
        self.recorder.record(&self.process, call, future, answer).await
    }

    pub async fn register(&self, address: &str, runner: &str, healthy: bool) -> runner_storage::Result<i64> {
        let call = Call::Register { address: address.into(), runner: runner.into(), healthy };
        self.record(call, self.client.register(address, runner, healthy), |id| Answer::MachineId(*id)).await
    }

    pub async fn unregister(&self, address: &str) -> runner_storage::Result<()> {
        let call = Call::Unregister { address: address.into() };
        self.record(call, self.client.unregister(address), |_| Answer::Done).await
    }

    pub async fn set_runner_health(&self, address: &str, healthy: bool) -> runner_storage::Result<()> {
        let call = Call::SetRunnerHealth { address: address.into(), healthy };
        self.record(call, self.client.set_runner_health(address, healthy), |_| Answer::Done).await
    }

    pub async fn get_runners(&self) -> runner_storage::Result<Vec<(String, bool)>> {
        self.record(Call::GetRunners, self.client.get_runners(), |runners| Answer::Runners(runners.clone())).await
    }

    pub async fn acquire(&self, address: &str, shard_ids: &[String]) -> runner_storage::Result<Vec<String>> {
        let call = Call::Acquire { address: address.into(), shard_ids: shard_ids.to_vec() };
        self.record(call, self.client.acquire(address, shard_ids), |ids| Answer::ShardIds(ids.clone())).await
    }

    pub async fn refresh(&self, address: &str, shard_ids: &[String]) -> runner_storage::Result<Vec<String>> {
        let call = Call::Refresh { address: address.into(), shard_ids: shard_ids.to_vec() };
        self.record(call, self.client.refresh(address, shard_ids), |ids| Answer::ShardIds(ids.clone())).await
    }

    pub async fn release(&self, address: &str, shard_id: &str) -> runner_storage::Result<()> {
        let call = Call::Release { address: address.into(), shard_id: shard_id.into() };
        self.record(call, self.client.release(address, shard_id), |_| Answer::Done).await
    }

    pub async fn release_all(&self, address: &str) -> runner_storage::Result<()> {
        let call = Call::ReleaseAll { address: address.into() };
        self.record(call, self.client.release_all(address), |_| Answer::Done).await
    }
}

/// The running workload.
pub struct Workload {
    context: Arc<Context>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts every task on the current runtime; each passes `gate` before every call.
    pub fn start(endpoints: Vec<String>, recorder: Arc<Recorder>, config: WorkloadConfig, gate: Arc<Gate>) -> Workload {
        let free_addresses = Mutex::new((0..config.address_pool).collect());
        let stop = AtomicBool::new(false);
        let context = Arc::new(Context { endpoints, recorder, config, stop, free_addresses, gate });
        let mut tasks = Vec::new();
        for slot in 0..context.config.slots {
            tasks.push(tokio::spawn(runner_slot(context.clone(), slot)));
        }
        for reader in 0..context.config.readers {
            tasks.push(tokio::spawn(read_loop(context.clone(), reader)));
        }
        for thief in 0..context.config.thieves {
            tasks.push(tokio::spawn(theft_loop(context.clone(), thief)));
        }
        Workload { context, tasks }
    }

    /// Stops every task after its current call and waits for them.
    pub async fn stop(self) {
        self.context.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("workload task panicked");
        }
    }
}

async fn runner_slot(context: Arc<Context>, slot: usize) {
    let mut rng = StdRng::seed_from_u64(context.config.seed.wrapping_add(1000 + slot as u64));
    for incarnation in 0..INCARNATIONS_PER_SLOT_MAX {
        if context.stopped() {
            return;
        }
        let index = {
            let mut free = context.free_addresses.lock().expect("address pool");
            let choices: Vec<usize> = free.iter().copied().collect();
            let index = *choices.choose(&mut rng).expect("the pool has more addresses than slots");
            free.remove(&index);
            index
        };
        let recorded = Recorded {
            recorder: &context.recorder,
            client: context.client(),
            process: format!("runner-{slot}/{incarnation}"),
            gate: Some(context.gate.clone()),
        };
        run_incarnation(&context, &recorded, &pool_address(index), &mut rng).await;
        context.free_addresses.lock().expect("address pool").insert(index);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1000))).await;
    }
}

async fn run_incarnation(context: &Context, recorded: &Recorded<'_>, address: &str, rng: &mut StdRng) {
    let runner = runner_json(address);
    let mut registered = false;
    for _ in 0..REGISTER_ATTEMPTS_MAX {
        if context.stopped() {
            return;
        }
        if recorded.register(address, &runner, true).await.is_ok() {
            registered = true;
            break;
        }
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
    if !registered {
        return;
    }
    let (min_ms, max_ms) = context.config.lifetime_ms;
    let end = Instant::now() + Duration::from_millis(rng.gen_range(min_ms..=max_ms));
    let crash = rng.gen_bool(context.config.crash_probability);
    let mut held: BTreeSet<String> = BTreeSet::new();
    let mut renewed_at = Instant::now();
    let mut next_tick = Instant::now();
    for tick in 0..TICKS_PER_INCARNATION_MAX {
        if context.stopped() || Instant::now() >= end {
            break;
        }
        next_tick += REFRESH_INTERVAL;
        tokio::time::sleep_until(next_tick.max(Instant::now())).await;
        let invoked = Instant::now();
        let shard_ids: Vec<String> = held.iter().cloned().collect();
        match recorded.refresh(address, &shard_ids).await {
            Ok(kept) => {
                held = kept.into_iter().collect();
                renewed_at = invoked;
            }
            // Locks not renewed within E may be gone: stop counting on them.
            Err(_) if invoked.duration_since(renewed_at) > context.config.lock_expiration => held.clear(),
            Err(_) => {}
        }
        if tick % 3 == 0 {
            rebalance(context, recorded, address, &mut held).await;
        }
        if rng.gen_bool(0.02) {
            let _ = recorded.set_runner_health(address, rng.gen_bool(0.5)).await;
        }
        next_tick = next_tick.max(Instant::now());
    }
    if context.stopped() || crash {
        return;
    }
    let _ = recorded.release_all(address).await;
    let _ = recorded.unregister(address).await;
}

/// Effect's shard assignment: shard `i` to the `i mod n`-th healthy runner.
async fn rebalance(context: &Context, recorded: &Recorded<'_>, address: &str, held: &mut BTreeSet<String>) {
    let Ok(runners) = recorded.get_runners().await else { return };
    let healthy: Vec<String> = runners
        .iter()
        .filter(|(_, healthy)| *healthy)
        .filter_map(|(json, _)| Runner::from_json(json).ok())
        .map(|runner| runner.address.to_string())
        .collect();
    let mine: BTreeSet<String> = match healthy.iter().position(|runner| runner == address) {
        Some(position) => context
            .config
            .shard_ids
            .iter()
            .enumerate()
            .filter(|(index, _)| index % healthy.len() == position)
            .map(|(_, shard_id)| shard_id.clone())
            .collect(),
        None => BTreeSet::new(),
    };
    for shard_id in held.clone().difference(&mine) {
        held.remove(shard_id);
        let _ = recorded.release(address, shard_id).await;
    }
    let wanted: Vec<String> = mine.difference(held).cloned().collect();
    if wanted.is_empty() || context.stopped() {
        return;
    }
    if let Ok(acquired) = recorded.acquire(address, &wanted).await {
        held.extend(acquired);
    }
}

async fn read_loop(context: Arc<Context>, reader: usize) {
    let recorded = Recorded {
        recorder: &context.recorder,
        client: context.client(),
        process: format!("reader-{reader}"),
        gate: Some(context.gate.clone()),
    };
    for _ in 0..READS_PER_READER_MAX {
        if context.stopped() {
            return;
        }
        let _ = recorded.get_runners().await;
        tokio::time::sleep(READ_INTERVAL).await;
    }
}

async fn theft_loop(context: Arc<Context>, thief: usize) {
    let mut rng = StdRng::seed_from_u64(context.config.seed.wrapping_add(2000 + thief as u64));
    let address = format!("thief{thief}.chaos:1");
    let recorded = Recorded {
        recorder: &context.recorder,
        client: context.client(),
        process: format!("thief-{thief}"),
        gate: Some(context.gate.clone()),
    };
    for _ in 0..THEFTS_MAX {
        if context.stopped() {
            return;
        }
        tokio::time::sleep(THEFT_INTERVAL).await;
        let shard_id = context.config.shard_ids.choose(&mut rng).expect("shard ids").clone();
        let wanted = [shard_id.clone()];
        let Ok(taken) = recorded.acquire(&address, &wanted).await else { continue };
        if taken.is_empty() {
            continue;
        }
        for _ in 0..rng.gen_range(1..=3) {
            tokio::time::sleep(REFRESH_INTERVAL).await;
            match recorded.refresh(&address, &wanted).await {
                Ok(kept) if !kept.is_empty() => {}
                _ => break,
            }
        }
        let _ = recorded.release(&address, &shard_id).await;
    }
}
