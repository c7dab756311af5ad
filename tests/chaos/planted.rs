//! The planted-bug scenario: reads sent to a follower cut off from the
//! leader. With `RUNNER_STORAGE_PLANTED_BUG=stale-reads` the follower
//! answers getRunners from its own stale state (no read barrier, no
//! forwarding), and the linearizability checker must flag it; without the
//! bug the follower cannot answer (it cannot forward), so nothing is
//! flagged.
//!
//! A runner registers and keeps refreshing through the majority; a reader
//! pinned to the follower reads while the follower is cut off for longer
//! than `E`, and a second runner registers meanwhile. In the namespace lab
//! the follower is isolated by iptables; in the loopback lab it is paused
//! (SIGSTOP) and reads queued during the pause are answered after SIGCONT,
//! before it catches up.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_storage::client::Client;

use crate::checkers::{self, Verdicts};
use crate::history::{LabClock, Recorder, RunInfo};
use crate::lab::{Block, Features, Lab, Tuning};
use crate::nemesis::{wait_for_leader, LEADER_WAIT};
use crate::profile::LOCK_EXPIRATION;
use crate::workload::{pool_address, runner_json, Recorded, REFRESH_INTERVAL};

/// How long the follower stays cut off: longer than `E`, so its stale view
/// has every runner's heartbeat expired.
const CUT_OFF: Duration = Duration::from_millis(4000);
const READ_INTERVAL: Duration = Duration::from_millis(250);
/// Deadline of the pinned reader's calls.
const PINNED_DEADLINE: Duration = Duration::from_secs(8);

/// Runs the scenario once and checks its history.
pub fn run(planted_bug: Option<&str>, seed: u64) -> Verdicts {
    let lab = Lab::create(3, Tuning::default(), planted_bug, Features::default());
    let info = RunInfo {
        seed,
        nodes: 3,
        lab_mode: lab.mode_name(),
        lock_expiration_ms: u64::try_from(LOCK_EXPIRATION.as_millis()).expect("E fits u64"),
        shard_ids: Vec::new(),
    };
    let runtime = lab.client_runtime();
    let shared = Arc::new(Mutex::new(lab));
    let recorder = Arc::new(Recorder::new(LabClock::start()));
    let driven = {
        let (shared, recorder) = (shared.clone(), recorder.clone());
        runtime.block_on(async move { tokio::spawn(drive(shared, recorder)).await })
    };
    drop(runtime);
    if let Err(error) = driven {
        eprintln!("{}", shared.lock().expect("lab").log_tails(30));
        std::panic::resume_unwind(error.into_panic());
    }
    let history = recorder.snapshot(info);
    let stale_reads = history.ops.iter().filter(|op| op.process.starts_with("pinned") && op.is_ok()).count();
    eprintln!(
        "planted {planted_bug:?}: {} operations, {stale_reads} answered by the cut-off follower",
        history.ops.len()
    );
    checkers::check_all(&history)
}

async fn drive(shared: Arc<Mutex<Lab>>, recorder: Arc<Recorder>) {
    let voters: BTreeSet<u64> = (1..=3).collect();
    let endpoints: Vec<String> = {
        let mut lab = shared.lock().expect("lab");
        voters.iter().for_each(|id| lab.spawn(*id));
        voters.iter().map(|id| lab.address(*id)).collect()
    };
    let client = Client::new(endpoints.clone()).expect("client");
    let leader = wait_for_leader(&shared, &client, &voters, LEADER_WAIT).await.expect("a leader");
    client.set_lock_expiration(u64::try_from(LOCK_EXPIRATION.as_millis()).expect("E fits u64")).await.expect("set E");
    let follower = *voters.iter().find(|id| **id != leader).expect("a follower");
    let (follower_address, netns) = {
        let lab = shared.lock().expect("lab");
        (lab.address(follower), lab.is_netns())
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let heartbeats = tokio::spawn(keep_registered(recorder.clone(), endpoints.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = Recorded {
        recorder: &recorder,
        client: Client::new(endpoints).expect("client"),
        process: "second".into(),
        gate: None,
    };
    if netns {
        let blocks: Vec<Block> = {
            let lab = shared.lock().expect("lab");
            let cut = lab.host_of(follower);
            voters
                .iter()
                .filter(|id| **id != follower)
                .flat_map(|id| {
                    let other = lab.host_of(*id);
                    [
                        Block { from: cut, to: other, server_only: false },
                        Block { from: other, to: cut, server_only: false },
                    ]
                })
                .collect()
        };
        tokio::task::block_in_place(|| shared.lock().expect("lab").set_blocks(&blocks)).expect("isolate the follower");
        let pinned = Recorded {
            recorder: &recorder,
            client: pinned_client(&follower_address),
            process: "pinned".into(),
            gate: None,
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let address = pool_address(1);
        let _ = second.register(&address, &runner_json(&address), true).await;
        let until = tokio::time::Instant::now() + CUT_OFF;
        while tokio::time::Instant::now() < until {
            let _ = pinned.get_runners().await;
            tokio::time::sleep(READ_INTERVAL).await;
        }
        tokio::task::block_in_place(|| shared.lock().expect("lab").heal_network()).expect("heal");
    } else {
        shared.lock().expect("lab").pause(follower);
        let address = pool_address(1);
        let _ = second.register(&address, &runner_json(&address), true).await;
        let mut readers = Vec::new();
        for (index, delay_ms) in [2500u64, 3000, 3500].into_iter().enumerate() {
            let (recorder, follower_address) = (recorder.clone(), follower_address.clone());
            readers.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let pinned = Recorded {
                    recorder: &recorder,
                    client: pinned_client(&follower_address),
                    process: format!("pinned-{index}"),
                    gate: None,
                };
                let _ = pinned.get_runners().await;
            }));
        }
        tokio::time::sleep(CUT_OFF).await;
        shared.lock().expect("lab").resume(follower);
        for reader in readers {
            reader.await.expect("pinned reader");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    heartbeats.await.expect("heartbeat task");
}

fn pinned_client(address: &str) -> Client {
    Client::with_deadline(vec![address.to_owned()], PINNED_DEADLINE).expect("pinned client")
}

/// A runner that registers and refreshes until `stop`.
async fn keep_registered(recorder: Arc<Recorder>, endpoints: Vec<String>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let recorded = Recorded {
        recorder: &recorder,
        client: Client::new(endpoints).expect("client"),
        process: "runner".into(),
        gate: None,
    };
    let address = pool_address(0);
    let _ = recorded.register(&address, &runner_json(&address), true).await;
    for _ in 0..1000 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let _ = recorded.refresh(&address, &[]).await;
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
}
