//! Power cuts: `power-cut-node` (one node, usually the leader) and
//! `power-cut-all` (every voter at once, a rack losing power).
//!
//! Around each cut the workload is held ([`crate::gate::Gate`]: no call
//! starts). Half the cuts are *quiet*: the calls in flight get
//! [`GATE_DRAIN_MAX`] to end, then a *witness* writes (a fresh runner
//! registers and takes a shard of its own) so that the cut follows an
//! acknowledged write by milliseconds. The other half strike *busy*, at
//! once, while calls are in flight (their appends half written: what a
//! tear tears; those calls end after the restart, ok or unknown). Then the
//! nodes lose power (SIGKILL, the powerfs mount cut, torn half the time),
//! stay off a moment and start again. Once a leader is back the whole state is read through the
//! cluster (`Inspect.ListRunners`, `Inspect.ListLocks`) and recorded as an
//! observation, which the checkers hold to every write acknowledged before
//! it; only then does the workload go on. Writes after a restart would
//! otherwise supersede lost ones before the final state is read.

use std::time::Duration;

use rand::Rng;
use runner_storage::client::Client;

use crate::history::{Observation, ObservedLock, ObservedRunner};
use crate::nemesis::Nemesis;
use crate::workload::{runner_json, Recorded, CALL_DEADLINE};

/// Longest the calls in flight get to end once the gate closed.
pub const GATE_DRAIN_MAX: Duration = Duration::from_secs(3);
/// How likely a cut waits for the calls in flight and follows a witness's writes.
const QUIET_PROBABILITY: f64 = 0.5;
/// How likely a cut tears the last unsynced write.
const TEAR_PROBABILITY: f64 = 0.5;
/// How likely `power-cut-node` picks the leader.
const LEADER_PROBABILITY: f64 = 0.7;

impl Nemesis {
    pub(crate) async fn power_cut_node(&mut self, leader: u64) -> String {
        let target = if self.rng.gen_bool(LEADER_PROBABILITY) { leader } else { self.random_voter() };
        let role = if target == leader { " (leader)" } else { "" };
        let detail = self.around_cut(&[target], "power-cut-node").await;
        format!("node {target}{role} lost power: {detail}")
    }

    pub(crate) async fn power_cut_all(&mut self) -> String {
        let voters: Vec<u64> = self.voters.iter().copied().collect();
        let detail = self.around_cut(&voters, "power-cut-all").await;
        format!("every node lost power: {detail}")
    }

    async fn around_cut(&mut self, targets: &[u64], kind: &str) -> String {
        let quiet = self.rng.gen_bool(QUIET_PROBABILITY);
        let still_running = self.gate.close(if quiet { GATE_DRAIN_MAX } else { Duration::ZERO }).await;
        let witness = if quiet { self.witness_writes().await } else { "none (a busy cut)".into() };
        let tear: Option<u64> = self.rng.gen_bool(TEAR_PROBABILITY).then(|| self.rng.gen());
        let lost: Vec<String> =
            self.act(|lab| targets.iter().map(|id| format!("node {id}: {}", lab.power_cut(*id, tear))).collect());
        let off = self.hold(200, 1000);
        tokio::time::sleep(off).await;
        // Recovery is timed from the power coming back: nothing answers the
        // held workload before the state after the cut was observed.
        self.struck_us = Some(self.recorder.clock.now_us());
        self.act(|lab| targets.iter().for_each(|id| lab.spawn(*id)));
        let observed = match self.wait_for_leader().await {
            Some(_) => self.observe(format!("after {kind} (fault {})", self.serial)).await,
            None => Err("no leader".into()),
        };
        self.reap_crashed();
        self.gate.open();
        let observed = match observed {
            Ok(summary) => summary,
            Err(error) => {
                self.problems
                    .push(format!("{kind} (fault {}): could not observe the state after it: {error}", self.serial));
                format!("not observed ({error})")
            }
        };
        let in_flight =
            if still_running > 0 { format!("; {still_running} calls still in flight") } else { String::new() };
        format!("{}; off for {off:?}; witness {witness}; {observed}{in_flight}", lost.join(", "))
    }

    /// A runner registered and a shard taken just before the power goes.
    async fn witness_writes(&mut self) -> String {
        let recorder = self.recorder.clone();
        let client = Client::with_deadline(self.endpoints.clone(), CALL_DEADLINE).expect("witness client");
        let witness = Recorded { recorder: &recorder, client, process: "witness".into(), gate: None };
        let address = format!("witness{}.chaos:1", self.serial);
        let registered = witness.register(&address, &runner_json(&address), true).await;
        let shard_id = format!("witness:{}", self.serial);
        let acquired = witness.acquire(&address, std::slice::from_ref(&shard_id)).await;
        format!("{address} registered: {}, {shard_id} taken: {}", registered.is_ok(), acquired.is_ok())
    }

    /// Reads the whole state through the cluster and records it.
    pub(crate) async fn observe(&mut self, source: String) -> Result<String, String> {
        let clock = self.recorder.clock;
        let runners_from = clock.now_us();
        let runners = self.admin.list_runners().await.map_err(|e| format!("ListRunners: {e}"))?;
        let runners_to = clock.now_us();
        let locks = self.admin.list_locks("", "").await.map_err(|e| format!("ListLocks: {e}"))?;
        let locks_to = clock.now_us();
        let observation = Observation {
            source,
            runners_at: (runners_from, runners_to),
            locks_at: (runners_to, locks_to),
            lock_expiration_ms: runners.lock_expiration_ms,
            locks: locks
                .locks
                .into_iter()
                .map(|lock| ObservedLock { shard_id: lock.shard_id, address: lock.address, age_ms: lock.age_ms })
                .collect(),
            runners: runners
                .runners
                .into_iter()
                .map(|record| ObservedRunner {
                    address: record.address,
                    runner: record.runner,
                    healthy: record.healthy,
                    machine_id: record.machine_id,
                    heartbeat_age_ms: record.heartbeat_age_ms,
                })
                .collect(),
        };
        let summary = format!("observed {} runners, {} locks", observation.runners.len(), observation.locks.len());
        self.recorder.observation(observation);
        Ok(summary)
    }
}
