//! The rounds of a failover bench, for any cluster that can name its
//! leader, kill it and restart it ([`FailoverTarget`]): runner-storage's
//! (`failover`) and etcd's (`etcd-failover`).
//!
//! A round: wait until every member answers and agrees on one leader; pause
//! (`--settle`); read the leader again; SIGKILL it; note when a survivor
//! reports a new leader and when the first write completes after the kill;
//! restart the killed member and time its catch-up. Writers run throughout,
//! each with its own client, so the figure includes the client's own
//! recovery.
//!
//! The kill instant is taken *after* the signal was delivered, and acks
//! within `OLD_LEADER_ACK_GRACE` of it are ignored (on a loaded machine a
//! writer may read the old leader's last answer a little late), so no write
//! acknowledged by the old leader is counted as the first one after the kill.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::median;

/// Most rounds of one failover bench.
const ROUNDS_MAX: usize = 1000;
/// Most writer tasks.
const WRITERS_MAX: usize = 256;
/// Longest wait for a survivor to lead and a write to be acknowledged.
pub const FIRST_ACK_WAIT_MAX: Duration = Duration::from_secs(30);
/// How often the survivors are polled for a new leader.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Longest the writers get to finish their last write at the end.
const WRITERS_STOP_MAX: Duration = Duration::from_secs(40);
/// Acks that reach a writer this soon after the kill are taken as the old
/// leader's: its answer was on the wire (or the writer task had not run yet
/// on a loaded machine) when it died. No election can finish this fast: it
/// takes at least the election timeout, 100 ms or more in every config here.
const OLD_LEADER_ACK_GRACE: Duration = Duration::from_millis(50);

/// The flags every failover bench shares.
#[derive(Debug, Clone, Args)]
pub struct RoundArgs {
    /// Kill/restart rounds.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Tasks writing throughout.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Pause before each round, once the cluster is whole.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub settle: Duration,
}

impl RoundArgs {
    /// Checks the bounds of the flags.
    ///
    /// # Errors
    /// A flag out of its range.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=ROUNDS_MAX).contains(&self.rounds), "--rounds must be in 1..={ROUNDS_MAX}");
        anyhow::ensure!((1..=WRITERS_MAX).contains(&self.writers), "--writers must be in 1..={WRITERS_MAX}");
        Ok(())
    }
}

/// One writer of the rounds: its client and what it writes.
pub trait RoundWriter: Send + Sized + 'static {
    /// One write; whether it was acknowledged.
    fn write(&mut self) -> impl Future<Output = bool> + Send + '_;
    /// Cleans up after the writer (best effort).
    fn retire(self) -> impl Future<Output = ()> + Send;
}

/// A cluster the rounds can run against.
pub trait FailoverTarget {
    /// The leader as this cluster describes it.
    type Leader;
    /// Its writers.
    type Writer: RoundWriter;

    /// The client of writer `index`.
    ///
    /// # Errors
    /// When the endpoints are not valid addresses.
    fn writer(&self, index: usize) -> anyhow::Result<Self::Writer>;
    /// Waits until every member answers and all agree on one leader.
    fn whole(&self) -> impl Future<Output = anyhow::Result<Self::Leader>>;
    /// The leader's member id (as the tables show it) and term.
    fn id_and_term(leader: &Self::Leader) -> (u64, u64);
    /// SIGKILLs `leader`; returns once the signal was delivered.
    fn kill(&self, leader: &Self::Leader) -> impl Future<Output = anyhow::Result<()>>;
    /// A survivor that reports itself leader right now: its id and term.
    fn elected(&self, old: &Self::Leader) -> impl Future<Output = Option<(u64, u64)>>;
    /// Restarts the killed `old` leader; returns the time from the restart
    /// command until it caught up (`None`: not in time) and the term then.
    fn restart(&self, old: &Self::Leader) -> impl Future<Output = anyhow::Result<(Option<f64>, u64)>>;
}

/// What one round measured.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: usize,
    /// The member killed.
    pub killed_node: u64,
    /// The member that led next.
    pub new_leader: u64,
    /// Kill → a survivor reports a new leader (status poll), ms.
    pub elected_ms: Option<f64>,
    /// Kill → the next acknowledged write, ms.
    pub first_ack_ms: Option<f64>,
    /// Restart command → the member caught up, ms.
    pub caught_up_ms: Option<f64>,
    /// Term before the kill, after the election, after the member rejoined.
    pub terms: [u64; 3],
    /// The machine's 1-minute load average after the round.
    pub load_average_1m: Option<f64>,
}

/// The writers' shared clock marks: written by writers, read by the round.
struct Marks {
    base: Instant,
    /// Nanoseconds since `base` of the kill; `u64::MAX` while no kill is pending.
    kill_at_ns: AtomicU64,
    /// Nanoseconds since `base` of the first ack after the kill; `u64::MAX` before it.
    first_ack_ns: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Marks {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

async fn writer<W: RoundWriter>(mut client: W, marks: Arc<Marks>) {
    while !marks.stop.load(Ordering::Relaxed) {
        if client.write().await {
            let done_ns = marks.now_ns();
            marks.acks.fetch_add(1, Ordering::Relaxed);
            let grace_ns = OLD_LEADER_ACK_GRACE.as_nanos() as u64;
            if done_ns > marks.kill_at_ns.load(Ordering::Acquire).saturating_add(grace_ns) {
                marks.first_ack_ns.fetch_min(done_ns, Ordering::AcqRel);
            }
        } else {
            marks.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    client.retire().await;
}

/// Runs `args.rounds` rounds against `target` with writers throughout, and
/// prints them (a table, or one JSON document).
///
/// # Errors
/// Bad flags, a cluster that does not become whole, or a kill or restart that fails.
pub async fn run<T: FailoverTarget>(target: &T, args: &RoundArgs, json: bool) -> anyhow::Result<()> {
    args.check()?;
    let marks = Arc::new(Marks {
        base: Instant::now(),
        kill_at_ns: AtomicU64::new(u64::MAX),
        first_ack_ns: AtomicU64::new(u64::MAX),
        acks: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut writers = JoinSet::new();
    for index in 0..args.writers {
        writers.spawn(writer(target.writer(index)?, Arc::clone(&marks)));
    }
    let result = rounds(target, args, &marks, json).await;
    marks.stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(WRITERS_STOP_MAX, async { while writers.join_next().await.is_some() {} }).await;
    writers.abort_all();
    let rounds = result?;
    print_failover(&rounds, marks.acks.load(Ordering::Relaxed), marks.errors.load(Ordering::Relaxed), json)
}

async fn rounds<T: FailoverTarget>(
    target: &T,
    args: &RoundArgs,
    marks: &Marks,
    json: bool,
) -> anyhow::Result<Vec<Round>> {
    let mut rounds = Vec::new();
    if !json {
        println!(
            "{:>5} {:>6} {:>6} {:>10} {:>13} {:>12} {:>5}  terms",
            "ROUND", "KILLED", "NEW", "ELECTED ms", "FIRST ACK ms", "CAUGHT UP ms", "LOAD"
        );
    }
    for round in 1..=args.rounds {
        target.whole().await?;
        tokio::time::sleep(args.settle).await;
        // Read the leader again right before the kill: an election during
        // the settle pause would otherwise make this round kill a follower.
        let leader = target.whole().await?;
        let result = one_round(target, marks, round, &leader).await?;
        if json {
            eprintln!("failover round {round}: first ack {:?} ms", result.first_ack_ms);
        } else {
            println!(
                "{:>5} {:>6} {:>6} {:>10} {:>13} {:>12} {:>5.1}  {:?}",
                result.round,
                result.killed_node,
                result.new_leader,
                fmt_ms(result.elected_ms),
                fmt_ms(result.first_ack_ms),
                fmt_ms(result.caught_up_ms),
                result.load_average_1m.unwrap_or(f64::NAN),
                result.terms
            );
        }
        rounds.push(result);
    }
    Ok(rounds)
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "timeout".into(), |ms| format!("{ms:.1}"))
}

async fn one_round<T: FailoverTarget>(
    target: &T,
    marks: &Marks,
    round: usize,
    leader: &T::Leader,
) -> anyhow::Result<Round> {
    let (killed_node, term_before) = T::id_and_term(leader);
    marks.first_ack_ns.store(u64::MAX, Ordering::Release);
    target.kill(leader).await?;
    let kill_ns = marks.now_ns();
    marks.kill_at_ns.store(kill_ns, Ordering::Release);
    let kill_at = Instant::now();
    let (mut elected_ms, mut new_leader, mut term_elected) = (None, 0, 0);
    while Instant::now() < kill_at + FIRST_ACK_WAIT_MAX {
        if elected_ms.is_none() {
            if let Some((id, term)) = target.elected(leader).await {
                elected_ms = Some(kill_at.elapsed().as_secs_f64() * 1000.0);
                (new_leader, term_elected) = (id, term);
            }
        }
        if elected_ms.is_some() && marks.first_ack_ns.load(Ordering::Acquire) != u64::MAX {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let first_ack_ns = marks.first_ack_ns.load(Ordering::Acquire);
    marks.kill_at_ns.store(u64::MAX, Ordering::Release);
    let first_ack_ms = (first_ack_ns != u64::MAX).then(|| (first_ack_ns - kill_ns) as f64 / 1e6);
    let (caught_up_ms, term_rejoined) = target.restart(leader).await?;
    Ok(Round {
        round,
        killed_node,
        new_leader,
        elected_ms,
        first_ack_ms,
        caught_up_ms,
        terms: [term_before, term_elected, term_rejoined],
        load_average_1m: crate::report::load_average_1m(),
    })
}

#[derive(Serialize)]
struct FailoverSummary<'a> {
    rounds: &'a [Round],
    first_ack_ms_median: f64,
    first_ack_ms_max: f64,
    elected_ms_median: f64,
    caught_up_ms_median: f64,
    rounds_timed_out: usize,
    writes_acknowledged: u64,
    write_errors: u64,
}

fn print_failover(rounds: &[Round], acks: u64, errors: u64, json: bool) -> anyhow::Result<()> {
    let first: Vec<f64> = rounds.iter().filter_map(|r| r.first_ack_ms).collect();
    let summary = FailoverSummary {
        rounds,
        first_ack_ms_median: median(first.clone()),
        first_ack_ms_max: first.iter().copied().fold(0.0, f64::max),
        elected_ms_median: median(rounds.iter().filter_map(|r| r.elected_ms).collect()),
        caught_up_ms_median: median(rounds.iter().filter_map(|r| r.caught_up_ms).collect()),
        rounds_timed_out: rounds.iter().filter(|r| r.first_ack_ms.is_none()).count(),
        writes_acknowledged: acks,
        write_errors: errors,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "leader SIGKILL -> next acknowledged write: median {:.1} ms, max {:.1} ms over {} rounds ({} timed out)",
        summary.first_ack_ms_median,
        summary.first_ack_ms_max,
        rounds.len(),
        summary.rounds_timed_out
    );
    println!(
        "election seen by status: median {:.1} ms; restarted member caught up: median {:.1} ms; writes acked {}, failed {}",
        summary.elected_ms_median, summary.caught_up_ms_median, acks, errors
    );
    Ok(())
}
