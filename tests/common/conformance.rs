//! The conformance suite of SPEC §3 and §6, written once against any
//! [`Encoded`]: the in-memory store, the replicated store, the gRPC client.
//!
//! Each case gets a fresh store from a [`StoreFactory`] and sees only the
//! eight calls (no request ids, no clock, no state inspection), so it passes
//! the same way against a store that runs over a network. Timing rules: no
//! assumption tighter than about one second; expiry is observed by polling up
//! to [`EXPIRY_DEADLINE`], never by trusting a sleep to be exact.
//!
//! Pulled in with `#[path = "common/conformance.rs"] mod conformance;`.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use runner_storage::{Encoded, Error, Result};

/// Makes the stores the suite runs on.
#[async_trait::async_trait]
pub trait StoreFactory: Send + Sync {
    /// A fresh, empty store whose lock expiration is `lock_expiration_ms`.
    async fn fresh(&self, lock_expiration_ms: u64) -> Box<dyn runner_storage::Encoded>;
}

/// Runs every case in order, each on a fresh store; prints each case name; panics naming the failed case.
pub async fn run_all(factory: &dyn StoreFactory) {
    for case in CASES {
        println!("conformance: {} (E = {} ms)", case.name, case.lock_expiration_ms);
        let store = factory.fresh(case.lock_expiration_ms).await;
        let started = Instant::now();
        // A task of its own, so a failed assertion comes back as a value we
        // can name the case in, rather than unwinding through the caller.
        match tokio::spawn((case.run)(store)).await {
            Ok(()) => println!("conformance: {} ok in {:?}", case.name, started.elapsed()),
            Err(error) => panic!("conformance case {} failed: {}", case.name, panic_message(error)),
        }
    }
}

type Store = Box<dyn Encoded>;
type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Case {
    name: &'static str,
    lock_expiration_ms: u64,
    run: fn(Store) -> CaseFuture,
}

/// `E` for cases in which nothing may expire: far above any call's latency.
const LONG_EXPIRATION_MS: u64 = 60_000;
/// `E` for the expiry cases.
const SHORT_EXPIRATION_MS: u64 = 1_000;
/// How long an expiry may take to show, at `SHORT_EXPIRATION_MS`, under load.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

macro_rules! cases {
    ($($name:ident: $lock_expiration_ms:expr,)*) => {
        &[$(Case {
            name: stringify!($name),
            lock_expiration_ms: $lock_expiration_ms,
            run: |store| -> CaseFuture { Box::pin($name(store)) },
        },)*]
    };
}

const CASES: &[Case] = cases! {
    register_returns_machine_ids_from_one: LONG_EXPIRATION_MS,
    register_upserts_by_address_keeping_machine_id: LONG_EXPIRATION_MS,
    get_runners_orders_by_machine_id_and_includes_unhealthy: LONG_EXPIRATION_MS,
    unregister_deletes_only_that_runner: LONG_EXPIRATION_MS,
    set_runner_health_updates_present_runner_only: LONG_EXPIRATION_MS,
    machine_ids_are_smallest_free_and_reused: LONG_EXPIRATION_MS,
    acquire_takes_free_and_own_shards_in_request_order: LONG_EXPIRATION_MS,
    acquire_skips_shards_held_by_another_runner: LONG_EXPIRATION_MS,
    refresh_returns_own_shards_in_request_order: LONG_EXPIRATION_MS,
    release_deletes_own_lock_only: LONG_EXPIRATION_MS,
    release_all_deletes_every_lock_of_the_address_only: LONG_EXPIRATION_MS,
    retried_calls_are_idempotent: LONG_EXPIRATION_MS,
    malformed_addresses_are_refused_and_change_nothing: LONG_EXPIRATION_MS,
    malformed_runners_are_refused_and_change_nothing: LONG_EXPIRATION_MS,
    malformed_shard_ids_are_refused_and_change_nothing: LONG_EXPIRATION_MS,
    inputs_at_their_limits_are_accepted: LONG_EXPIRATION_MS,
    runner_expires_without_heartbeat: SHORT_EXPIRATION_MS,
    refresh_keeps_runner_live: SHORT_EXPIRATION_MS,
    acquire_and_set_runner_health_are_no_heartbeat: SHORT_EXPIRATION_MS,
    lock_expires_and_another_runner_takes_over: SHORT_EXPIRATION_MS,
    refresh_renews_expired_own_lock: SHORT_EXPIRATION_MS,
    unregister_sweeps_expired_runners: SHORT_EXPIRATION_MS,
    locks_survive_unregister_until_they_expire: SHORT_EXPIRATION_MS,
};

fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return error.to_string();
    }
    let payload = error.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

// ---- Helpers ----

/// Effect's JSON for the runner at `address` in group `group`.
fn runner_in(address: &str, group: &str) -> String {
    let (host, port) = address.rsplit_once(':').expect("case addresses are host:port");
    format!(r#"{{"address":{{"host":"{host}","port":{port}}},"groups":["{group}"],"weight":1}}"#)
}

fn runner(address: &str) -> String {
    runner_in(address, "default")
}

/// Effect's JSON for the runner at `address` with an extra field padding it to `bytes`.
fn padded_runner(address: &str, bytes: usize) -> String {
    let unpadded = runner(address);
    let padding_bytes = bytes - unpadded.len() - r#","padding":"""#.len();
    let padded = format!(r#"{},"padding":"{}"}}"#, &unpadded[..unpadded.len() - 1], "x".repeat(padding_bytes));
    assert_eq!(padded.len(), bytes);
    padded
}

fn strings(shard_ids: &[&str]) -> Vec<String> {
    shard_ids.iter().map(|s| s.to_string()).collect()
}

/// `get_runners()` as `(runner JSON, healthy)` of these addresses, default group.
fn listed(runners: &[(&str, bool)]) -> Vec<(String, bool)> {
    runners.iter().map(|(address, healthy)| (runner(address), *healthy)).collect()
}

async fn register(store: &Store, address: &str, healthy: bool) -> i64 {
    store.register(address, &runner(address), healthy).await.expect("register")
}

async fn get_runners(store: &Store) -> Vec<(String, bool)> {
    store.get_runners().await.expect("get_runners")
}

async fn acquire(store: &Store, address: &str, shard_ids: &[&str]) -> Vec<String> {
    store.acquire(address, &strings(shard_ids)).await.expect("acquire")
}

async fn refresh(store: &Store, address: &str, shard_ids: &[&str]) -> Vec<String> {
    store.refresh(address, &strings(shard_ids)).await.expect("refresh")
}

/// Checks that `result` is `InvalidArgument` whose message names `field`.
fn assert_invalid<T: Debug>(result: Result<T>, field: &str, call: &str) {
    match result {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains(field), "{call}: message {message:?} does not name {field:?}")
        }
        other => panic!("{call}: expected InvalidArgument naming {field:?}, got {other:?}"),
    }
}

/// Polls `condition` until it holds; panics after [`EXPIRY_DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + EXPIRY_DEADLINE;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still not so after {EXPIRY_DEADLINE:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

// ---- SPEC §3: runners ----

async fn register_returns_machine_ids_from_one(store: Store) {
    assert_eq!(register(&store, "a:1", true).await, 1);
    assert_eq!(register(&store, "b:2", false).await, 2);
    assert_eq!(register(&store, "c:3", true).await, 3);
    assert_eq!(get_runners(&store).await, listed(&[("a:1", true), ("b:2", false), ("c:3", true)]));
}

async fn register_upserts_by_address_keeping_machine_id(store: Store) {
    assert_eq!(register(&store, "a:1", true).await, 1);
    assert_eq!(register(&store, "b:2", true).await, 2);
    let other = runner_in("a:1", "other");
    assert_eq!(store.register("a:1", &other, false).await.expect("register"), 1);
    assert_eq!(get_runners(&store).await, vec![(other, false), (runner("b:2"), true)]);
}

async fn get_runners_orders_by_machine_id_and_includes_unhealthy(store: Store) {
    assert_eq!(register(&store, "z:1", true).await, 1);
    assert_eq!(register(&store, "a:2", false).await, 2);
    store.unregister("z:1").await.expect("unregister");
    assert_eq!(register(&store, "m:3", true).await, 1);
    // Neither address order nor registration order: machine id order.
    assert_eq!(get_runners(&store).await, listed(&[("m:3", true), ("a:2", false)]));
}

async fn unregister_deletes_only_that_runner(store: Store) {
    register(&store, "a:1", true).await;
    register(&store, "b:2", true).await;
    store.unregister("a:1").await.expect("unregister");
    assert_eq!(get_runners(&store).await, listed(&[("b:2", true)]));
    store.unregister("unknown:9").await.expect("unregister of an unknown address");
    assert_eq!(get_runners(&store).await, listed(&[("b:2", true)]));
}

async fn set_runner_health_updates_present_runner_only(store: Store) {
    register(&store, "a:1", true).await;
    store.set_runner_health("a:1", false).await.expect("set_runner_health");
    assert_eq!(get_runners(&store).await, listed(&[("a:1", false)]));
    store.set_runner_health("a:1", true).await.expect("set_runner_health");
    assert_eq!(get_runners(&store).await, listed(&[("a:1", true)]));
    store.set_runner_health("b:2", true).await.expect("set_runner_health of an unknown address");
    assert_eq!(get_runners(&store).await, listed(&[("a:1", true)]));
    // No record was made for b: the next new address gets 2.
    assert_eq!(register(&store, "c:3", true).await, 2);
}

async fn machine_ids_are_smallest_free_and_reused(store: Store) {
    assert_eq!(register(&store, "a:1", true).await, 1);
    assert_eq!(register(&store, "b:2", true).await, 2);
    assert_eq!(register(&store, "c:3", true).await, 3);
    store.unregister("b:2").await.expect("unregister");
    assert_eq!(register(&store, "d:4", true).await, 2);
    assert_eq!(register(&store, "e:5", true).await, 4);
    store.unregister("a:1").await.expect("unregister");
    assert_eq!(register(&store, "b:2", true).await, 1);
    assert_eq!(register(&store, "c:3", true).await, 3, "a present address keeps its id");
    let expected = listed(&[("b:2", true), ("d:4", true), ("c:3", true), ("e:5", true)]);
    assert_eq!(get_runners(&store).await, expected);
}

// ---- SPEC §3: locks ----

async fn acquire_takes_free_and_own_shards_in_request_order(store: Store) {
    let got = acquire(&store, "a:1", &["g:3", "g:1", "g:3", "g:2", "g:1"]).await;
    assert_eq!(got, strings(&["g:3", "g:1", "g:2"]));
    assert_eq!(acquire(&store, "a:1", &["g:4", "g:1"]).await, strings(&["g:4", "g:1"]));
    // acquire needs no registration and registers nothing.
    assert_eq!(get_runners(&store).await, vec![]);
    assert_eq!(refresh(&store, "a:1", &["g:1", "g:2", "g:3", "g:4"]).await, strings(&["g:1", "g:2", "g:3", "g:4"]));
}

async fn acquire_skips_shards_held_by_another_runner(store: Store) {
    assert_eq!(acquire(&store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1", "g:2"]));
    assert_eq!(acquire(&store, "b:2", &["g:3", "g:1", "g:4"]).await, strings(&["g:3", "g:4"]));
    assert_eq!(acquire(&store, "b:2", &["g:2"]).await, Vec::<String>::new());
    assert_eq!(refresh(&store, "a:1", &["g:1", "g:2", "g:3"]).await, strings(&["g:1", "g:2"]));
}

async fn refresh_returns_own_shards_in_request_order(store: Store) {
    assert_eq!(acquire(&store, "a:1", &["g:1", "g:2", "g:3"]).await, strings(&["g:1", "g:2", "g:3"]));
    assert_eq!(acquire(&store, "b:2", &["g:9"]).await, strings(&["g:9"]));
    let got = refresh(&store, "a:1", &["g:3", "g:9", "g:1", "g:3", "g:7"]).await;
    assert_eq!(got, strings(&["g:3", "g:1"]));
    assert_eq!(refresh(&store, "a:1", &[]).await, Vec::<String>::new(), "an empty refresh is allowed");
    // refresh needs no registration and registers nothing.
    assert_eq!(get_runners(&store).await, vec![]);
}

async fn release_deletes_own_lock_only(store: Store) {
    assert_eq!(acquire(&store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1", "g:2"]));
    store.release("b:2", "g:1").await.expect("release by another address");
    store.release("a:1", "g:7").await.expect("release of an unknown shard");
    assert_eq!(refresh(&store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1", "g:2"]));
    store.release("a:1", "g:1").await.expect("release");
    assert_eq!(refresh(&store, "a:1", &["g:1", "g:2"]).await, strings(&["g:2"]));
    assert_eq!(acquire(&store, "b:2", &["g:1", "g:2"]).await, strings(&["g:1"]));
}

async fn release_all_deletes_every_lock_of_the_address_only(store: Store) {
    assert_eq!(acquire(&store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1", "g:2"]));
    assert_eq!(acquire(&store, "b:2", &["g:3"]).await, strings(&["g:3"]));
    store.release_all("a:1").await.expect("release_all");
    assert_eq!(refresh(&store, "a:1", &["g:1", "g:2"]).await, Vec::<String>::new());
    assert_eq!(refresh(&store, "b:2", &["g:3"]).await, strings(&["g:3"]));
    assert_eq!(acquire(&store, "c:3", &["g:1", "g:2", "g:3"]).await, strings(&["g:1", "g:2"]));
}

// ---- SPEC §3: idempotent retries ----

async fn retried_calls_are_idempotent(store: Store) {
    assert_eq!(register(&store, "a:1", true).await, 1);
    assert_eq!(register(&store, "a:1", true).await, 1);
    assert_eq!(get_runners(&store).await, listed(&[("a:1", true)]));
    for _ in 0..2 {
        store.set_runner_health("a:1", false).await.expect("set_runner_health");
        assert_eq!(get_runners(&store).await, listed(&[("a:1", false)]));
    }
    for _ in 0..2 {
        assert_eq!(acquire(&store, "a:1", &["g:1", "g:2", "g:3"]).await, strings(&["g:1", "g:2", "g:3"]));
    }
    for _ in 0..2 {
        assert_eq!(refresh(&store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1", "g:2"]));
    }
    for _ in 0..2 {
        store.release("a:1", "g:1").await.expect("release");
        assert_eq!(refresh(&store, "a:1", &["g:1", "g:2", "g:3"]).await, strings(&["g:2", "g:3"]));
    }
    for _ in 0..2 {
        store.release_all("a:1").await.expect("release_all");
        assert_eq!(refresh(&store, "a:1", &["g:1", "g:2", "g:3"]).await, Vec::<String>::new());
    }
    for _ in 0..2 {
        store.unregister("a:1").await.expect("unregister");
        assert_eq!(get_runners(&store).await, vec![]);
    }
}

// ---- SPEC §6: validation ----

/// A runner `a:1` (machine id 1) holding `g:1`: what invalid calls must not change.
async fn validation_setup(store: &Store) {
    assert_eq!(register(store, "a:1", true).await, 1);
    assert_eq!(acquire(store, "a:1", &["g:1"]).await, strings(&["g:1"]));
}

/// Checks the state is still what [`validation_setup`] made.
async fn assert_validation_setup_unchanged(store: &Store) {
    assert_eq!(get_runners(store).await, listed(&[("a:1", true)]), "runners changed");
    assert_eq!(refresh(store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1"]), "locks of a:1 changed");
    assert_eq!(acquire(store, "z:9", &["g:2"]).await, strings(&["g:2"]), "g:2 was taken");
    assert_eq!(register(store, "z:9", true).await, 2, "a runner record was made");
}

async fn malformed_addresses_are_refused_and_change_nothing(store: Store) {
    validation_setup(&store).await;
    let long = format!("{}:1", "h".repeat(256));
    for bad in ["", "nocolon", ":1", "h:", "h:65536", "h:-1", "h:x", long.as_str()] {
        let shards = strings(&["g:1", "g:2"]);
        assert_invalid(store.register(bad, &runner("a:1"), true).await, "address", &format!("register({bad:?})"));
        assert_invalid(store.unregister(bad).await, "address", &format!("unregister({bad:?})"));
        assert_invalid(store.set_runner_health(bad, false).await, "address", &format!("set_runner_health({bad:?})"));
        assert_invalid(store.acquire(bad, &shards).await, "address", &format!("acquire({bad:?})"));
        assert_invalid(store.refresh(bad, &shards).await, "address", &format!("refresh({bad:?})"));
        assert_invalid(store.release(bad, "g:1").await, "address", &format!("release({bad:?})"));
        assert_invalid(store.release_all(bad).await, "address", &format!("release_all({bad:?})"));
    }
    assert_validation_setup_unchanged(&store).await;
}

async fn malformed_runners_are_refused_and_change_nothing(store: Store) {
    validation_setup(&store).await;
    let too_big = padded_runner("b:2", 16 * 1024 + 1);
    for bad in [
        "not json",
        "[]",
        r#""b:2""#,
        r#"{"groups":["default"],"weight":1}"#,
        r#"{"address":"b:2","groups":["default"],"weight":1}"#,
        r#"{"address":{"host":"b","port":3},"groups":["default"],"weight":1}"#,
        r#"{"address":{"host":"c","port":2},"groups":["default"],"weight":1}"#,
        too_big.as_str(),
    ] {
        let call = format!("register(\"b:2\", {:?})", &bad[..bad.len().min(60)]);
        assert_invalid(store.register("b:2", bad, true).await, "runner", &call);
        // Nor may it overwrite a present runner.
        assert_invalid(store.register("a:1", bad, false).await, "runner", &call.replace("b:2", "a:1"));
    }
    assert_validation_setup_unchanged(&store).await;
}

async fn malformed_shard_ids_are_refused_and_change_nothing(store: Store) {
    validation_setup(&store).await;
    let long = format!("{}:1", "g".repeat(256));
    for bad in ["", "g", "g:", "g:x", "g:01", "g:1.5", long.as_str()] {
        // A valid shard listed before the bad one is not taken either.
        let shards = vec!["g:2".to_string(), bad.to_string()];
        assert_invalid(store.acquire("a:1", &shards).await, "shard_id", &format!("acquire([g:2, {bad:?}])"));
        assert_invalid(store.refresh("a:1", &shards).await, "shard_id", &format!("refresh([g:2, {bad:?}])"));
        assert_invalid(store.release("a:1", bad).await, "shard_id", &format!("release({bad:?})"));
    }
    assert_invalid(store.acquire("a:1", &[]).await, "shard_ids", "acquire([])");
    let too_many: Vec<String> = (0..=10_000).map(|i| format!("g:{i}")).collect();
    assert_invalid(store.acquire("a:1", &too_many).await, "shard_ids", "acquire(10,001 shard ids)");
    assert_invalid(store.refresh("a:1", &too_many).await, "shard_ids", "refresh(10,001 shard ids)");
    assert_validation_setup_unchanged(&store).await;
}

async fn inputs_at_their_limits_are_accepted(store: Store) {
    let longest_address = format!("{}:1", "h".repeat(253));
    assert_eq!(longest_address.len(), 255);
    assert_eq!(register(&store, &longest_address, true).await, 1);
    let largest_runner = padded_runner("b:2", 16 * 1024);
    assert_eq!(store.register("b:2", &largest_runner, true).await.expect("register a 16 KiB runner"), 2);
    assert_eq!(register(&store, "c:65535", true).await, 3);
    let runners = get_runners(&store).await;
    assert_eq!(runners.len(), 3);
    assert_eq!(runners[1], (largest_runner, true));
    let longest_shard = format!("{}:1", "g".repeat(253));
    let odd_shards = strings(&[&longest_shard, "g:-5", ":3", "a:b:7"]);
    assert_eq!(store.acquire("a:1", &odd_shards).await.expect("acquire"), odd_shards);
    let most: Vec<String> = (0..10_000).map(|i| format!("g:{i}")).collect();
    assert_eq!(store.acquire("a:1", &most).await.expect("acquire 10,000 shards"), most);
    assert_eq!(store.refresh("a:1", &most).await.expect("refresh 10,000 shards"), most);
}

// ---- SPEC §3: expiry (E = 1 s) ----

async fn runner_expires_without_heartbeat(store: Store) {
    register(&store, "a:1", true).await;
    assert_eq!(get_runners(&store).await, listed(&[("a:1", true)]), "expired right after register");
    eventually("runner a:1 expires", || async { get_runners(&store).await.is_empty() }).await;
}

async fn refresh_keeps_runner_live(store: Store) {
    register(&store, "a:1", true).await;
    let registered = Instant::now();
    // Refresh for more than 2 E: without the heartbeat a:1 would have expired.
    while registered.elapsed() < Duration::from_millis(2_500) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(refresh(&store, "a:1", &[]).await, Vec::<String>::new());
        assert_eq!(get_runners(&store).await, listed(&[("a:1", true)]), "a:1 expired though refreshed");
    }
    eventually("runner a:1 expires once refreshes stop", || async { get_runners(&store).await.is_empty() }).await;
}

async fn acquire_and_set_runner_health_are_no_heartbeat(store: Store) {
    register(&store, "a:1", true).await;
    let store = &store;
    eventually("runner a:1 expires while only acquiring and setting health", || async move {
        acquire(store, "a:1", &["g:1"]).await;
        store.set_runner_health("a:1", true).await.expect("set_runner_health");
        get_runners(store).await.is_empty()
    })
    .await;
}

async fn lock_expires_and_another_runner_takes_over(store: Store) {
    assert_eq!(acquire(&store, "a:1", &["g:1"]).await, strings(&["g:1"]));
    assert_eq!(acquire(&store, "b:2", &["g:1"]).await, Vec::<String>::new(), "expired right after acquire");
    let store = &store;
    eventually("b:2 takes g:1 once a:1's lock expired", || async move {
        acquire(store, "b:2", &["g:1"]).await == strings(&["g:1"])
    })
    .await;
    assert_eq!(refresh(store, "a:1", &["g:1"]).await, Vec::<String>::new(), "a:1 refreshed b:2's lock");
    assert_eq!(acquire(store, "a:1", &["g:1"]).await, Vec::<String>::new(), "a:1 took b:2's fresh lock");
    store.release("a:1", "g:1").await.expect("release by a non-holder");
    assert_eq!(refresh(store, "b:2", &["g:1"]).await, strings(&["g:1"]), "a non-holder released g:1");
}

async fn refresh_renews_expired_own_lock(store: Store) {
    assert_eq!(acquire(&store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1", "g:2"]));
    let store = &store;
    // g:1 and g:2 were stamped together: once b:2 can take g:2, g:1 expired too.
    eventually("b:2 takes g:2 once a:1's locks expired", || async move {
        acquire(store, "b:2", &["g:2"]).await == strings(&["g:2"])
    })
    .await;
    assert_eq!(refresh(store, "a:1", &["g:1", "g:2"]).await, strings(&["g:1"]));
    assert_eq!(acquire(store, "c:3", &["g:1"]).await, Vec::<String>::new(), "the renewed lock was taken");
}

async fn unregister_sweeps_expired_runners(store: Store) {
    assert_eq!(register(&store, "a:1", true).await, 1);
    assert_eq!(register(&store, "b:2", true).await, 2);
    eventually("a:1 and b:2 expire", || async { get_runners(&store).await.is_empty() }).await;
    // Expired records stay until an unregister sweeps them: a:1 keeps its id
    // and c:3 cannot have 2.
    assert_eq!(register(&store, "a:1", true).await, 1);
    assert_eq!(register(&store, "c:3", true).await, 3);
    store.unregister("c:3").await.expect("unregister");
    // b:2 was swept; a:1, live again, was not.
    assert_eq!(register(&store, "d:4", true).await, 2);
    assert_eq!(get_runners(&store).await, listed(&[("a:1", true), ("d:4", true)]));
}

async fn locks_survive_unregister_until_they_expire(store: Store) {
    register(&store, "a:1", true).await;
    assert_eq!(acquire(&store, "a:1", &["g:1"]).await, strings(&["g:1"]));
    store.unregister("a:1").await.expect("unregister");
    assert_eq!(acquire(&store, "b:2", &["g:1"]).await, Vec::<String>::new(), "unregister released g:1");
    let store = &store;
    eventually("b:2 takes g:1 once it expired", || async move {
        acquire(store, "b:2", &["g:1"]).await == strings(&["g:1"])
    })
    .await;
}
