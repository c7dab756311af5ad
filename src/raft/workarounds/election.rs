//! [`Nudges`]: campaign at once where openraft 0.9 would wait out a timer
//! although the outcome of the election is already clear.
//!
//! After a leader dies, the survivors' timers fire in random order. When the
//! one that is behind (a shorter log) fires first, openraft loses time twice:
//!
//! 1. **A voter refuses a candidate whose log is shorter**, having heard
//!    nothing from any leader for a whole lease (`election_timeout_max`). The
//!    leader is gone, and only a node with at least this voter's log can win,
//!    yet openraft leaves the next step to this voter's own timer, while the
//!    refused candidate waits `2 × election_timeout_max` longer before it
//!    tries again. Nudge: this voter campaigns now.
//! 2. **A candidate is refused by a rival candidate of the same term whose
//!    log is shorter** (both voted for themselves: a split vote). One term up
//!    the rival must grant the vote, yet openraft waits a whole election
//!    timeout first. Nudge: this candidate campaigns again now.
//! 3. **A split vote between candidates with equal logs.** openraft 0.9
//!    draws each node's election timeout once, at start (openraft issue
//!    #1838, fixed in 0.10): two survivors whose timeouts happen to lie
//!    within a round trip of each other split the vote term after term.
//!    Nudge: campaign again after a delay drawn afresh for every split
//!    (below the shortest election timeout), so one of the two gets ahead.
//!
//! Campaigning is always safe in Raft (a vote needs a quorum and the longest
//! log); a nudge only changes when. Nor does it cut the leader lease that
//! lease reads rely on: nudge 1 needs a whole lease of silence since the last
//! append this node received, so it campaigns no sooner than openraft would
//! let anyone win its vote. Each nudge names its term and [`run`] acts on at
//! most one per term, only while that is still the node's term.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;
use tokio::sync::mpsc;

use crate::raft::transport::RaftEvents;
use crate::raft::typ::{VoteRequest, VoteResponse};
use crate::raft::Raft;

/// One nudge: campaign in the term after `term`, after `delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nudge {
    /// The node's term when the nudge was sent; stale once it moved on.
    pub term: u64,
    /// How long to wait first (zero: now).
    pub delay: Duration,
}

/// The senders' side of the nudges: what the Raft server and network see of
/// votes goes through here. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Nudges {
    queue: mpsc::Sender<Nudge>,
    started: Instant,
    /// Nanoseconds after `started` when the last append arrived.
    last_append_nanos: Arc<AtomicU64>,
    lease: Duration,
    /// The shortest election timeout: nudge 3's delays stay below it.
    election_timeout_min: Duration,
}

impl Nudges {
    /// Nudges for a node whose followers honour a leader lease of `lease`
    /// (openraft's `election_timeout_max`) and whose election timeouts are
    /// at least `election_timeout_min`; the receiver goes to [`run`].
    pub fn new(lease: Duration, election_timeout_min: Duration) -> (Self, mpsc::Receiver<Nudge>) {
        let (queue, receiver) = mpsc::channel(crate::limits::NUDGES_QUEUED_MAX);
        let started = Instant::now();
        let nudges = Nudges { queue, started, last_append_nanos: Arc::default(), lease, election_timeout_min };
        nudges.record_heard_from_leader();
        (nudges, receiver)
    }

    /// Records that an append (entries or heartbeat) or a snapshot chunk
    /// was just handled.
    fn record_heard_from_leader(&self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_append_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        let last = Duration::from_nanos(self.last_append_nanos.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    fn send(&self, nudge: Nudge) {
        // Full queue: the timers will do, a little later.
        let _ = self.queue.try_send(nudge);
    }
}

/// The transport tells the nudges what it sees of appends and votes.
impl RaftEvents for Nudges {
    fn heard_from_leader(&self) {
        self.record_heard_from_leader();
    }

    /// Nudge 1.
    fn vote_answered(&self, request: &VoteRequest, answer: &VoteResponse) {
        if refused_a_shorter_log_after_the_lease(request, answer, self.quiet_for(), self.lease) {
            self.send(Nudge { term: answer.vote.leader_id().term, delay: Duration::ZERO });
        }
    }

    /// Nudges 2 and 3.
    fn vote_received(&self, request: &VoteRequest, answer: &VoteResponse) {
        let term = request.vote.leader_id().term;
        if split_with_a_shorter_log(request, answer) {
            self.send(Nudge { term, delay: Duration::ZERO });
        } else if split_with_an_equal_log(request, answer) {
            self.send(Nudge { term, delay: split_retry_delay(self.election_timeout_min) });
        }
    }
}

/// Nudge 3's delay: uniform below half the shortest election timeout, so
/// it always comes before openraft's own timer, drawn anew for each split.
fn split_retry_delay(election_timeout_min: Duration) -> Duration {
    let most_us = u64::try_from(election_timeout_min.as_micros() / 2).unwrap_or(u64::MAX).max(1);
    Duration::from_micros(rand::thread_rng().gen_range(0..most_us))
}

/// Nudge 1: this voter, which still follows a leader (its vote is committed)
/// but has heard nothing for longer than the lease, refused `request`
/// because its own log is longer.
pub fn refused_a_shorter_log_after_the_lease(
    request: &VoteRequest,
    answer: &VoteResponse,
    quiet_for: Duration,
    lease: Duration,
) -> bool {
    !answer.vote_granted && answer.vote.is_committed() && answer.last_log_id > request.last_log_id && quiet_for > lease
}

/// Nudge 2: a rival candidate of the same term (its vote not committed)
/// refused this node's `request`, and the rival's log is shorter.
pub fn split_with_a_shorter_log(request: &VoteRequest, answer: &VoteResponse) -> bool {
    !answer.vote_granted
        && !answer.vote.is_committed()
        && answer.vote.leader_id().term == request.vote.leader_id().term
        && answer.last_log_id < request.last_log_id
}

/// Nudge 3: a rival candidate of the same term refused this node's
/// `request`, and the two logs are equal (either may win).
pub fn split_with_an_equal_log(request: &VoteRequest, answer: &VoteResponse) -> bool {
    !answer.vote_granted
        && !answer.vote.is_committed()
        && answer.vote.leader_id().term == request.vote.leader_id().term
        && answer.vote.leader_id().voted_for() != request.vote.leader_id().voted_for()
        && answer.last_log_id == request.last_log_id
}

/// Acts on nudges until Raft stops: for each, after its delay, an election,
/// if the nudge's term is still this node's term, it does not lead, and no
/// nudge of that term or a later one was acted on yet.
pub async fn run(raft: Raft, mut nudges: mpsc::Receiver<Nudge>) {
    let mut metrics = raft.metrics();
    let mut last_term_nudged = 0;
    loop {
        let nudge = tokio::select! {
            nudge = nudges.recv() => match nudge {
                Some(nudge) => nudge,
                None => return,
            },
            changed = metrics.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return, // Raft has stopped.
            },
        };
        tokio::time::sleep(nudge.delay).await;
        let term = nudge.term;
        let (current_term, state) = {
            let now = metrics.borrow_and_update();
            (now.current_term, now.state)
        };
        if term <= last_term_nudged
            || term != current_term
            || matches!(state, ServerState::Leader | ServerState::Shutdown)
        {
            continue;
        }
        last_term_nudged = term;
        tracing::info!(term, "campaigning now: the election's outcome is already clear");
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{LogId, Vote};

    use super::*;

    const LEASE: Duration = Duration::from_millis(160);

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(openraft::CommittedLeaderId::new(term, 0), index))
    }

    fn request(term: u64, candidate: u64, last: Option<LogId<u64>>) -> VoteRequest {
        VoteRequest::new(Vote::new(term, candidate), last)
    }

    fn answer(vote: Vote<u64>, granted: bool, last: Option<LogId<u64>>) -> VoteResponse {
        VoteResponse::new(vote, last, granted)
    }

    #[test]
    fn a_follower_with_the_longer_log_campaigns_once_the_lease_is_over() {
        let candidate = request(8, 1, log(7, 100));
        let follower = answer(Vote::new_committed(7, 3), false, log(7, 104));
        let quiet = LEASE + Duration::from_millis(1);
        assert!(refused_a_shorter_log_after_the_lease(&candidate, &follower, quiet, LEASE));
        // Within the lease the leader may be alive: leave it alone.
        assert!(!refused_a_shorter_log_after_the_lease(&candidate, &follower, LEASE, LEASE));
        // Not for a candidate with at least this log, nor for a granted vote.
        let equal = answer(Vote::new_committed(7, 3), false, log(7, 100));
        assert!(!refused_a_shorter_log_after_the_lease(&candidate, &equal, quiet, LEASE));
        let granted = answer(Vote::new(8, 1), true, log(7, 104));
        assert!(!refused_a_shorter_log_after_the_lease(&candidate, &granted, quiet, LEASE));
        // A node already campaigning (its vote not committed) has its own election.
        let campaigning = answer(Vote::new(8, 2), false, log(7, 104));
        assert!(!refused_a_shorter_log_after_the_lease(&candidate, &campaigning, quiet, LEASE));
    }

    #[test]
    fn a_candidate_that_split_the_vote_with_a_shorter_log_campaigns_again() {
        let mine = request(8, 2, log(7, 104));
        let rival = answer(Vote::new(8, 3), false, log(7, 100));
        assert!(split_with_a_shorter_log(&mine, &rival));
        // A rival with as long a log may win: wait for the timers.
        let as_long = answer(Vote::new(8, 3), false, log(7, 104));
        assert!(!split_with_a_shorter_log(&mine, &as_long));
        // A voter that still follows a leader refused for its lease, not a split.
        let follower = answer(Vote::new_committed(7, 1), false, log(7, 100));
        assert!(!split_with_a_shorter_log(&mine, &follower));
        // A later term already moved on.
        let later = answer(Vote::new(9, 3), false, log(7, 100));
        assert!(!split_with_a_shorter_log(&mine, &later));
        let granted = answer(Vote::new(8, 2), true, log(7, 100));
        assert!(!split_with_a_shorter_log(&mine, &granted));
    }

    #[test]
    fn a_split_between_equal_logs_campaigns_again_after_a_fresh_random_delay() {
        let mine = request(8, 2, log(7, 104));
        let rival = answer(Vote::new(8, 3), false, log(7, 104));
        assert!(split_with_an_equal_log(&mine, &rival));
        assert!(!split_with_an_equal_log(&mine, &answer(Vote::new(8, 3), false, log(7, 100))), "shorter: nudge 2");
        assert!(!split_with_an_equal_log(&mine, &answer(Vote::new(8, 3), false, log(7, 105))), "longer: it wins");
        assert!(!split_with_an_equal_log(&mine, &answer(Vote::new_committed(7, 1), false, log(7, 104))));
        assert!(!split_with_an_equal_log(&mine, &answer(Vote::new(9, 3), false, log(7, 104))), "a later term");
        assert!(!split_with_an_equal_log(&mine, &answer(Vote::new(8, 2), true, log(7, 104))), "granted");

        let (nudges, mut queue) = Nudges::new(LEASE, Duration::from_millis(110));
        let mut delays = std::collections::BTreeSet::new();
        for _ in 0..20 {
            nudges.vote_received(&mine, &rival);
            let nudge = queue.try_recv().expect("a nudge");
            assert_eq!(nudge.term, 8);
            assert!(nudge.delay < Duration::from_millis(55), "{:?} is below half the shortest timeout", nudge.delay);
            delays.insert(nudge.delay);
        }
        assert!(delays.len() > 10, "delays are drawn afresh: {delays:?}");
    }

    #[test]
    fn silence_is_measured_from_the_last_append() {
        let (nudges, mut queue) = Nudges::new(Duration::ZERO, Duration::from_millis(110));
        let candidate = request(8, 1, log(7, 100));
        let follower = answer(Vote::new_committed(7, 3), false, log(7, 104));
        while nudges.quiet_for().is_zero() {
            std::hint::spin_loop();
        }
        nudges.vote_answered(&candidate, &follower);
        let expected = Nudge { term: 7, delay: Duration::ZERO };
        assert_eq!(queue.try_recv().ok(), Some(expected), "quiet longer than a zero lease: campaign in term 7 -> 8");
        let (nudges, mut queue) = Nudges::new(Duration::from_secs(3600), Duration::from_millis(110));
        nudges.record_heard_from_leader();
        nudges.vote_answered(&candidate, &follower);
        assert!(queue.try_recv().is_err(), "an hour's lease is not over");
    }
}
