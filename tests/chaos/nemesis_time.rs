//! Faults of time: the nodes' wall clocks (through libfaketime, see
//! [`crate::lab_disks`]) and a runner that pauses.
//!
//! - `clock-step-forward` / `clock-step-back`: one node's wall clock,
//!   usually the leader's, jumps `±10 E` for 2–4 s, then back.
//! - `clock-skew`: every voter's clock is set somewhere in `±2 E`, then the
//!   leader is killed so that a skewed node leads; the skew stays 1–2 s
//!   after the new leader is up, then every clock is set right.
//!
//! Right after a step and after the skewed leader takes office, a *probe*
//! (an address of its own) asks for every shard of the workload at once and
//! releases what it got: a store whose time a wall clock pushed past the
//! holders' stamps hands it locks the runners still hold, which the mutual
//! exclusion checker flags; a correct store gives it only free shards.
//! - `pause-holder`: a simulated runner takes two shards of its own,
//!   refreshes, then stops (as in a GC pause) for longer than `E` while a
//!   contender keeps trying to take them; then it resumes and refreshes.
//!   The contender may get them only after the holder's window (the mutual
//!   exclusion checker judges that), and a holder whose shards were taken
//!   must be told so by that refresh (checked here; a refresh that still
//!   answers a taken shard is a violation).

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use runner_storage::client::Client;
use tokio::time::Instant;

use crate::nemesis::Nemesis;
use crate::profile::LOCK_EXPIRATION;
use crate::workload::{Recorded, CALL_DEADLINE, REFRESH_INTERVAL};

/// How far a clock step goes: ten lock expirations.
const STEP_EXPIRATIONS: i64 = 10;
/// How far apart skewed clocks go: within two lock expirations either way.
const SKEW_EXPIRATIONS: i64 = 2;
/// How likely a clock step hits the leader.
const LEADER_PROBABILITY: f64 = 0.7;
/// The paused holder's shards: a group no other process uses.
const PAUSE_SHARDS: [&str; 2] = ["pause:1", "pause:2"];
const HOLDER_ADDRESS: &str = "pause-holder.chaos:1";
const CONTENDER_ADDRESS: &str = "pause-contender.chaos:1";
/// Attempts of the holder to take its shards at the start.
const TAKE_ATTEMPTS_MAX: u32 = 20;
const PROBE_ADDRESS: &str = "clock-probe.chaos:1";
/// How long after a clock file is rewritten the probe asks: libfaketime
/// sees the rewrite within ~7 ms, the leader's next stamp follows.
const PROBE_DELAY: Duration = Duration::from_millis(50);
/// How often the contender tries while the holder is paused.
const CONTEND_INTERVAL: Duration = Duration::from_millis(100);

fn expiration_ms() -> i64 {
    i64::try_from(LOCK_EXPIRATION.as_millis()).expect("E fits i64")
}

impl Nemesis {
    fn set_offset(&mut self, id: u64, offset_ms: i64) {
        if let Err(error) = self.act(|lab| lab.set_clock_offset(id, offset_ms)) {
            self.problems.push(format!("cannot set node {id}'s clock: {error}"));
        }
    }

    pub(crate) async fn clock_step(&mut self, leader: u64, forward: bool) -> String {
        let target = if self.rng.gen_bool(LEADER_PROBABILITY) { leader } else { self.random_voter() };
        let offset_ms = STEP_EXPIRATIONS * expiration_ms() * if forward { 1 } else { -1 };
        self.set_offset(target, offset_ms);
        let hold = self.hold(2000, 4000);
        let probed = self.probe().await;
        tokio::time::sleep(hold.saturating_sub(PROBE_DELAY)).await;
        self.set_offset(target, 0);
        let role = if target == leader { " (leader)" } else { "" };
        format!("node {target}{role}: wall clock {offset_ms:+} ms for {hold:?}, then back; {probed}")
    }

    /// Asks for every shard of the workload at once and releases what it got.
    async fn probe(&mut self) -> String {
        tokio::time::sleep(PROBE_DELAY).await;
        let recorder = self.recorder.clone();
        let client = Client::with_deadline(self.endpoints.clone(), CALL_DEADLINE).expect("probe client");
        let probe =
            Recorded { recorder: &recorder, client, process: format!("clock-probe-{}", self.serial), gate: None };
        let shard_ids = crate::workload::WorkloadConfig::standard(0, LOCK_EXPIRATION).shard_ids;
        let got = match probe.acquire(PROBE_ADDRESS, &shard_ids).await {
            Ok(got) => got,
            Err(error) => return format!("probe failed: {error}"),
        };
        if !got.is_empty() {
            let _ = probe.release_all(PROBE_ADDRESS).await;
        }
        format!("probe got {} free shards", got.len())
    }

    pub(crate) async fn clock_skew(&mut self, leader: u64) -> String {
        let spread_ms = SKEW_EXPIRATIONS * expiration_ms();
        let voters: Vec<u64> = self.voters.iter().copied().collect();
        let mut offsets = Vec::new();
        for id in voters.iter().copied() {
            let offset_ms = self.rng.gen_range(-spread_ms..=spread_ms);
            self.set_offset(id, offset_ms);
            offsets.push(format!("node {id} {offset_ms:+} ms"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = self.kill_for(leader).await;
        let new_leader = self.wait_for_leader().await;
        let probed = self.probe().await;
        let hold = self.hold(1000, 2000);
        tokio::time::sleep(hold).await;
        for id in voters {
            self.set_offset(id, 0);
        }
        format!(
            "clocks {}; {killed}; new leader {new_leader:?}, {probed}, skewed for {hold:?} more",
            offsets.join(", ")
        )
    }

    pub(crate) async fn pause_holder(&mut self) -> String {
        let recorder = self.recorder.clone();
        let recorded = |process: String| Recorded {
            recorder: &recorder,
            client: Client::with_deadline(self.endpoints.clone(), CALL_DEADLINE).expect("pause client"),
            process,
            gate: None,
        };
        let holder = recorded(format!("pause-holder-{}", self.serial));
        let contender = recorded(format!("pause-contender-{}", self.serial));
        let shards: Vec<String> = PAUSE_SHARDS.iter().map(|id| (*id).to_owned()).collect();
        let mut held: BTreeSet<String> = BTreeSet::new();
        for _ in 0..TAKE_ATTEMPTS_MAX {
            if let Ok(taken) = holder.acquire(HOLDER_ADDRESS, &shards).await {
                held.extend(taken);
            }
            if held.len() == shards.len() {
                break;
            }
            tokio::time::sleep(REFRESH_INTERVAL).await;
        }
        let mut last_refresh = Instant::now();
        for _ in 0..2 {
            tokio::time::sleep(REFRESH_INTERVAL).await;
            last_refresh = Instant::now();
            if let Ok(kept) = holder.refresh(HOLDER_ADDRESS, &shards).await {
                held = kept.into_iter().collect();
            }
        }
        // The pause: longer than E, and until the contender got both, at most 4 E.
        let (pause_min, pause_max) = (last_refresh + LOCK_EXPIRATION * 3 / 2, last_refresh + LOCK_EXPIRATION * 4);
        let mut taken: BTreeSet<String> = BTreeSet::new();
        while Instant::now() < pause_max && (Instant::now() < pause_min || taken.len() < held.len()) {
            let wanted: Vec<String> = held.difference(&taken).cloned().collect();
            if !wanted.is_empty() {
                if let Ok(got) = contender.acquire(CONTENDER_ADDRESS, &wanted).await {
                    taken.extend(got);
                }
            }
            tokio::time::sleep(CONTEND_INTERVAL).await;
        }
        let paused = last_refresh.elapsed();
        let resumed = holder.refresh(HOLDER_ADDRESS, &shards).await;
        let detail = self.judge_resumed(&held, &taken, &resumed, paused);
        for shard_id in &taken {
            let _ = contender.release(CONTENDER_ADDRESS, shard_id).await;
        }
        let _ = holder.release_all(HOLDER_ADDRESS).await;
        detail
    }

    /// The resumed holder must not be told it still holds a shard the contender took.
    fn judge_resumed(
        &mut self,
        held: &BTreeSet<String>,
        taken: &BTreeSet<String>,
        resumed: &runner_storage::Result<Vec<String>>,
        paused: Duration,
    ) -> String {
        let answer = match resumed {
            Ok(kept) => kept.iter().cloned().collect::<BTreeSet<String>>(),
            Err(error) => {
                return format!(
                    "held {held:?}, paused {paused:?}, contender took {taken:?}; resumed refresh failed: {error}"
                )
            }
        };
        let still_told: Vec<&String> = answer.intersection(taken).collect();
        if !still_told.is_empty() {
            self.problems.push(format!(
                "pause-holder (fault {}): the contender took {still_told:?}, yet the resumed holder's refresh answered them ({answer:?})",
                self.serial
            ));
        }
        if taken.is_empty() && !held.is_empty() {
            self.notes.push(format!("pause-holder (fault {}): the contender took nothing in {paused:?}", self.serial));
        }
        format!("held {held:?}, paused {paused:?}, contender took {taken:?}, resumed refresh answered {answer:?}")
    }
}
