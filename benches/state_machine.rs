//! Benchmarks of the pure state machine: `cargo bench --bench state_machine`.
//!
//! A plain `main` (harness = false) printing, each as the median of 3 runs:
//! - 1,000,000 `Acquire`s of one shard each, 300 shards contended by 1,000
//!   runners while time advances, so some acquires take a free shard, some
//!   renew their own, some lose to a holder and some take over an expired lock;
//! - 1,000,000 `Register`s of 1,000 runners with request ids (the runner
//!   JSON checked, the dedup table kept), and the edge's `Command::validate`
//!   of the same commands alone;
//! - `get_runners` at 100 (the size `runner-storage-bench get-runners` reads)
//!   / 1,000 / 10,000 / 100,000 runners, to show it is linear;
//! - a postcard snapshot of 10,000 runners and 30,000 locks, out and back.
//!
//! Envelopes are built before the clock starts, so only `apply` is timed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use runner_storage::model::RequestId;
use runner_storage::state_machine::{Caps, Command, Envelope, Namespace, Reply, ShardIdText, State, DEFAULT_NAMESPACE};

/// The default namespace, where every bench runs.
fn default_namespace(state: &State) -> &Namespace {
    state.namespace(DEFAULT_NAMESPACE).expect("the bench filled the default namespace")
}

/// Runs of each measurement; the median is reported.
const RUNS: usize = 3;
/// The lock expiration `E` of every benchmark, Effect's default.
const LOCK_EXPIRATION_MS: u64 = 35_000;

fn main() {
    println!("state_machine bench (median of {RUNS} runs)");
    // First, so its resident-memory figure is not hidden by memory the
    // allocator kept from the other benchmarks.
    bench_snapshot();
    bench_acquire();
    bench_register();
    bench_get_runners();
}

fn median(mut samples: Vec<Duration>) -> Duration {
    assert_eq!(samples.len(), RUNS, "one sample per run");
    samples.sort();
    samples[RUNS / 2]
}

fn address(runner: usize) -> String {
    format!("10.0.{}.{}:{}", runner / 250, runner % 250, 34_000 + runner % 7)
}

fn register(state: &mut State, runner: usize, time_ms: u64) {
    let address = address(runner);
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let runner = format!(r#"{{"address":{{"host":"{host}","port":{port}}},"groups":["default"],"weight":1}}"#);
    let reply = state.apply(&Envelope {
        namespace: DEFAULT_NAMESPACE.into(),
        time_ms,
        request_id: None,
        command: Command::Register { address, runner, healthy: true },
    });
    assert!(matches!(reply, Reply::MachineId(_)), "register failed: {reply:?}");
}

// ---- Acquire ----

const ACQUIRES: usize = 1_000_000;
const ACQUIRE_SHARDS: usize = 300;
const ACQUIRE_RUNNERS: usize = 1_000;
/// Built and applied in chunks so the envelopes of a million commands are never all in memory.
const ACQUIRE_CHUNK: usize = 100_000;
/// Time advances 1 ms every this many commands: 100 s over the run.
const ACQUIRES_PER_MS: usize = 10;
/// A short `E`, so that locks of runners that stop asking expire within the run.
const ACQUIRE_LOCK_EXPIRATION_MS: u64 = 1_000;
/// Every shard gets a new owner this often; the old one stops renewing, so
/// the new one takes over once the old lock expired.
const OWNER_EPOCH_MS: usize = 5_000;

/// The `index`-th acquire as `(runner, shard, time)`: even commands come from
/// the shard's current owner, odd ones from a runner picked pseudo-randomly.
fn acquire_plan(index: usize) -> (usize, usize, u64) {
    let shard = index % ACQUIRE_SHARDS;
    let time_ms = index / ACQUIRES_PER_MS;
    let runner = if index.is_multiple_of(2) {
        (shard * 7 + (time_ms / OWNER_EPOCH_MS) * 13) % ACQUIRE_RUNNERS
    } else {
        (index.wrapping_mul(7_919) ^ (index >> 9)) % ACQUIRE_RUNNERS
    };
    (runner, shard, time_ms as u64)
}

#[derive(Debug, Default, Clone, Copy)]
struct AcquireOutcomes {
    first: usize,
    renewed: usize,
    taken_over: usize,
    refused: usize,
}

/// Classifies the outcomes after the fact (not timed): success means the
/// runner now holds the shard, so the previous holder tells which kind.
fn classify(successes: &[bool]) -> AcquireOutcomes {
    let mut holders: Vec<Option<usize>> = vec![None; ACQUIRE_SHARDS];
    let mut outcomes = AcquireOutcomes::default();
    for (index, success) in successes.iter().enumerate() {
        let (runner, shard, _) = acquire_plan(index);
        match (success, holders[shard]) {
            (false, _) => outcomes.refused += 1,
            (true, None) => outcomes.first += 1,
            (true, Some(holder)) if holder == runner => outcomes.renewed += 1,
            (true, Some(_)) => outcomes.taken_over += 1,
        }
        if *success {
            holders[shard] = Some(runner);
        }
    }
    outcomes
}

/// Applies the million acquires; returns the time spent in `apply` and which succeeded.
fn run_acquires(addresses: &[String], shard_ids: &[ShardIdText]) -> (Duration, Vec<bool>) {
    let mut state = State::new(ACQUIRE_LOCK_EXPIRATION_MS);
    let mut elapsed = Duration::ZERO;
    let mut successes = Vec::with_capacity(ACQUIRES);
    for chunk_start in (0..ACQUIRES).step_by(ACQUIRE_CHUNK) {
        let envelopes: Vec<Envelope> = (chunk_start..chunk_start + ACQUIRE_CHUNK)
            .map(|index| {
                let (runner, shard, time_ms) = acquire_plan(index);
                let shard_ids = vec![shard_ids[shard].clone()];
                Envelope {
                    namespace: DEFAULT_NAMESPACE.into(),
                    time_ms,
                    request_id: None,
                    command: Command::Acquire { address: addresses[runner].clone(), shard_ids },
                }
            })
            .collect();
        let started = Instant::now();
        for envelope in &envelopes {
            successes.push(matches!(state.apply(envelope), Reply::ShardIds(acquired) if !acquired.is_empty()));
        }
        elapsed += started.elapsed();
    }
    assert_eq!(default_namespace(&state).locks().len(), ACQUIRE_SHARDS, "every shard has a record");
    (elapsed, successes)
}

fn bench_acquire() {
    let addresses: Vec<String> = (0..ACQUIRE_RUNNERS).map(address).collect();
    let shard_ids: Vec<ShardIdText> = (0..ACQUIRE_SHARDS).map(|shard| format!("default:{shard}").into()).collect();
    let mut successes = Vec::new();
    let samples = (0..RUNS)
        .map(|_| {
            let (elapsed, run_successes) = run_acquires(&addresses, &shard_ids);
            successes = run_successes;
            elapsed
        })
        .collect();
    let total = median(samples);
    let outcomes = classify(&successes);
    println!(
        "acquire: {ACQUIRES} x 1 shard ({ACQUIRE_SHARDS} shards, {ACQUIRE_RUNNERS} runners, E = {ACQUIRE_LOCK_EXPIRATION_MS} ms): \
         {:.1} ms total, {:.0} ns/op",
        total.as_secs_f64() * 1e3,
        total.as_nanos() as f64 / ACQUIRES as f64
    );
    println!(
        "  outcomes: {} first, {} renewed, {} taken over after expiry, {} refused (held by another)",
        outcomes.first, outcomes.renewed, outcomes.taken_over, outcomes.refused
    );
}

// ---- Register ----

const REGISTERS: usize = 1_000_000;
const REGISTER_RUNNERS: usize = 1_000;
/// Built and applied in chunks, as for acquires.
const REGISTER_CHUNK: usize = 100_000;

fn register_envelope(index: usize) -> Envelope {
    let runner = index % REGISTER_RUNNERS;
    let address = address(runner);
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let runner_json = format!(r#"{{"address":{{"host":"{host}","port":{port}}},"groups":["default"],"weight":1}}"#);
    let request_id = RequestId { client_id: format!("client-{runner}"), sequence: (index / REGISTER_RUNNERS) as u64 };
    Envelope {
        namespace: DEFAULT_NAMESPACE.into(),
        time_ms: (index / REGISTER_RUNNERS) as u64,
        request_id: Some(request_id),
        command: Command::Register { address, runner: runner_json, healthy: true },
    }
}

/// Applies the million registers; returns the time spent in `apply` and in `validate`.
fn run_registers() -> (Duration, Duration) {
    let mut state = State::new(LOCK_EXPIRATION_MS);
    let (mut applying, mut validating) = (Duration::ZERO, Duration::ZERO);
    for chunk_start in (0..REGISTERS).step_by(REGISTER_CHUNK) {
        let envelopes: Vec<Envelope> = (chunk_start..chunk_start + REGISTER_CHUNK).map(register_envelope).collect();
        let started = Instant::now();
        for envelope in &envelopes {
            black_box(envelope.command.validate()).expect("a valid register");
        }
        validating += started.elapsed();
        let started = Instant::now();
        for envelope in &envelopes {
            black_box(state.apply(envelope));
        }
        applying += started.elapsed();
    }
    assert_eq!(default_namespace(&state).runners().len(), REGISTER_RUNNERS, "every runner has a record");
    (applying, validating)
}

fn bench_register() {
    let (applying, validating): (Vec<_>, Vec<_>) = (0..RUNS).map(|_| run_registers()).unzip();
    let per_op = |total: Duration| total.as_nanos() as f64 / REGISTERS as f64;
    println!(
        "register: {REGISTERS} re-registers of {REGISTER_RUNNERS} runners with request ids: apply {:.0} ns/op, validate alone {:.0} ns/op",
        per_op(median(applying)),
        per_op(median(validating))
    );
}

// ---- get_runners ----

fn bench_get_runners() {
    for runners in [100, 1_000, 10_000, 100_000] {
        // Past the default cap of 65,536 runners for the largest size.
        let caps = Caps { runners_max: runners, ..Caps::default() };
        let mut state = State::with_caps(LOCK_EXPIRATION_MS, caps);
        let started = Instant::now();
        for runner in 0..runners {
            register(&mut state, runner, 0);
        }
        let setup = started.elapsed();
        assert_eq!(state.get_runners(DEFAULT_NAMESPACE, 1).len(), runners, "every runner is live");
        // Enough calls for ~10^7 runners read per sample.
        let calls = (10_000_000 / runners).max(10);
        let samples = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..calls {
                    black_box(state.get_runners(DEFAULT_NAMESPACE, black_box(1)));
                }
                started.elapsed() / calls as u32
            })
            .collect();
        let per_call = median(samples);
        println!(
            "get_runners: {runners:>7} runners: {:>9.1} us/call, {:.1} ns/runner (setup: {runners} registers in {:.1} ms)",
            per_call.as_secs_f64() * 1e6,
            per_call.as_nanos() as f64 / runners as f64,
            setup.as_secs_f64() * 1e3
        );
    }
}

// ---- Snapshots ----

const SNAPSHOT_RUNNERS: usize = 10_000;
const SNAPSHOT_LOCKS_PER_RUNNER: usize = 3;

fn bench_snapshot() {
    let resident_before = runner_storage::metrics::resident_memory_bytes();
    let mut state = State::new(LOCK_EXPIRATION_MS);
    for runner in 0..SNAPSHOT_RUNNERS {
        register(&mut state, runner, 0);
        let shard_ids = (0..SNAPSHOT_LOCKS_PER_RUNNER).map(|i| format!("default:{}", runner * 3 + i).into()).collect();
        let command = Command::Acquire { address: address(runner), shard_ids };
        state.apply(&Envelope { namespace: DEFAULT_NAMESPACE.into(), time_ms: 0, request_id: None, command });
    }
    assert_eq!(default_namespace(&state).locks().len(), SNAPSHOT_RUNNERS * SNAPSHOT_LOCKS_PER_RUNNER);
    let resident_growth = runner_storage::metrics::resident_memory_bytes().saturating_sub(resident_before);
    println!(
        "state of {SNAPSHOT_RUNNERS} runners + {} locks: resident memory grew {:.1} MiB",
        SNAPSHOT_RUNNERS * SNAPSHOT_LOCKS_PER_RUNNER,
        resident_growth as f64 / (1024.0 * 1024.0)
    );
    let mut bytes = Vec::new();
    let mut serialise = Vec::new();
    let mut restore = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        bytes = postcard::to_allocvec(&state).expect("a state serialises");
        serialise.push(started.elapsed());
        let started = Instant::now();
        let restored: State = postcard::from_bytes(&bytes).expect("a snapshot restores");
        restore.push(started.elapsed());
        assert!(restored == state, "the snapshot restores an equal state");
    }
    println!(
        "snapshot (postcard): {SNAPSHOT_RUNNERS} runners + {} locks = {:.1} MiB: serialise {:.1} ms, restore {:.1} ms",
        SNAPSHOT_RUNNERS * SNAPSHOT_LOCKS_PER_RUNNER,
        bytes.len() as f64 / (1024.0 * 1024.0),
        median(serialise).as_secs_f64() * 1e3,
        median(restore).as_secs_f64() * 1e3
    );
}
