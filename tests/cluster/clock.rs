//! Clocks: no wall clock moves store time faster than real time (SPEC §4).
//! The nodes run under libfaketime; their wall clocks are stepped by an
//! hour and back, and a new leader runs 10 E ahead, while a holder
//! refreshes a lock and a contender keeps trying to take it. Judged on this
//! test's own monotonic clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_storage::client::Client;
use runner_storage::limits::lock_slack_ms;
use runner_storage::Encoded;
use tokio::time::Instant;

use crate::common::{eventually, TestCluster, Tuning, LEADER_TIMEOUT};

/// The lock expiration E of the test.
const E: Duration = Duration::from_millis(2_000);
const HOLDER: &str = "holder:1";
const CONTENDER: &str = "contender:1";
const SHARD: &str = "default:7";
const REFRESH_EVERY: Duration = Duration::from_millis(300);
const CONTEND_EVERY: Duration = Duration::from_millis(100);
/// How long each clock phase lasts: several lock expirations.
const PHASE: Duration = Duration::from_millis(3 * 2_000);
const HOUR_S: i64 = 3_600;

/// What the holder's refreshes answered: when each was sent, and whether
/// it kept the shard (`None`: the call failed).
type Refreshes = Arc<Mutex<Vec<(Instant, Option<bool>)>>>;

/// Refreshes `SHARD` for `HOLDER` until `stop`.
fn hold(client: Client, stop: Arc<AtomicBool>) -> (Refreshes, tokio::task::JoinHandle<()>) {
    let refreshes: Refreshes = Arc::default();
    let record = refreshes.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let answer = client.refresh(HOLDER, &[SHARD.to_owned()]).await;
            let kept = answer.ok().map(|shards| shards.iter().any(|shard| shard == SHARD));
            record.lock().unwrap().push((sent, kept));
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    });
    (refreshes, task)
}

/// Tries to take `SHARD` for `CONTENDER` until it gets it or `stop`;
/// returns when it got it.
fn contend(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(shards) = client.acquire(CONTENDER, &[SHARD.to_owned()]).await {
                if shards.iter().any(|shard| shard == SHARD) {
                    return Some(Instant::now());
                }
            }
            tokio::time::sleep(CONTEND_EVERY).await;
        }
        None
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_steps_never_hand_a_refreshed_lock_to_another_address() {
    let mut cluster = TestCluster::start_with(3, Tuning { fake_clocks: true, ..Tuning::default() });
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client();
    client.set_lock_expiration(E.as_millis() as u64).await.unwrap();
    let taken = client.acquire(HOLDER, &[SHARD.to_owned()]).await.unwrap();
    assert_eq!(taken, [SHARD], "the holder takes the free shard");
    let stop_holder = Arc::new(AtomicBool::new(false));
    let stop_contender = Arc::new(AtomicBool::new(false));
    let (refreshes, holder) = hold(cluster.client(), stop_holder.clone());
    let contender = contend(cluster.client(), stop_contender.clone());

    // The leader's wall clock an hour ahead, then back.
    cluster.set_clock_offset(leader, HOUR_S).await;
    tokio::time::sleep(PHASE).await;
    cluster.set_clock_offset(leader, 0).await;
    tokio::time::sleep(PHASE).await;
    // Both followers 10 E ahead; the leader dies, so one of them leads.
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.set_clock_offset(*id, 10 * E.as_secs() as i64).await;
    }
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert!(followers.contains(&new_leader));
    tokio::time::sleep(PHASE).await;
    cluster.spawn(leader);

    stop_holder.store(true, Ordering::Relaxed);
    holder.await.unwrap();
    let refreshes = refreshes.lock().unwrap().clone();
    let lost: Vec<_> = refreshes.iter().filter(|(_, kept)| *kept == Some(false)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} refreshes of the holder lost the shard although it refreshed every {REFRESH_EVERY:?}",
        lost.len(),
        refreshes.len()
    );
    let kept = refreshes.iter().filter(|(_, kept)| *kept == Some(true)).count();
    assert!(kept * 2 > refreshes.len(), "most refreshes answered: {kept} of {}", refreshes.len());
    assert!(!contender.is_finished(), "the contender took the shard from a holder that kept refreshing");

    // The holder stopped: its lock passes after E of real time (less the
    // store's slack), not sooner, and not much later.
    let last_kept_sent = refreshes.iter().rev().find(|(_, kept)| *kept == Some(true)).map(|(sent, _)| *sent).unwrap();
    let got = eventually_taken(contender).await;
    let held_for = got - last_kept_sent;
    let at_least = E - Duration::from_millis(lock_slack_ms(E.as_millis() as u64));
    assert!(
        held_for >= at_least,
        "the lock passed {held_for:?} after the holder's last refresh (at least {at_least:?})"
    );
    let at_most = E + REFRESH_EVERY + Duration::from_millis(700);
    assert!(held_for <= at_most, "the lock passed only {held_for:?} after the holder's last refresh");
    println!("lock passed {held_for:?} after the last refresh was sent (E = {E:?})");
    stop_contender.store(true, Ordering::Relaxed);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
}

/// The instant the contender took the shard; within a few E of the holder stopping.
async fn eventually_taken(contender: tokio::task::JoinHandle<Option<Instant>>) -> Instant {
    let deadline = E * 5;
    eventually("the contender takes the expired lock", deadline, || async { contender.is_finished() }).await;
    contender.await.unwrap().expect("the contender stopped with the shard")
}
