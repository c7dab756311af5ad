//! Early replication: the leader sends the entries it appends to its
//! followers while its own log flush runs, not after it (Ongaro's thesis,
//! §10.2.1; etcd's leader does the same).
//!
//! openraft 0.9 awaits the leader's flush inside its core before it hands new
//! entries to replication, so every write pays two flushes in a row: the
//! leader's, then a follower's. Here the log store, when the leader appends
//! (before its flush), [offers](EarlyReplication::offer) the entries to one
//! link per follower, which sends them at once as an ordinary AppendEntries
//! on a gRPC stream of its own, several in flight. When openraft's
//! replication later asks to send the same entries, the network
//! [answers](EarlyReplication::answer) it with the follower's answer to the
//! early copy instead of sending them again. A write then waits for one
//! flush after the leader's request: the follower's, overlapped with the
//! leader's.
//!
//! Why this keeps Raft safe:
//! - An early append is an AppendEntries the leader could have sent itself:
//!   its vote (saved and flushed before it appended anything in its term),
//!   its own entries and the log id before them, and a commit index it has
//!   already committed. Raft lets a leader send entries before they are
//!   durable on its own disk; it must only not count itself for them before
//!   that, and openraft still counts the leader only after its flush.
//! - A follower that answered success to (vote, prev, entries through M) had,
//!   when it answered, a log equal to the leader's through M. Answering a
//!   later request of the same vote for entries through L ≤ M with that
//!   success is what a network that delayed the follower's answer would do,
//!   and Raft tolerates delayed answers.
//! - Anything else (another vote, a rejection, a failed stream, entries not
//!   offered early, heartbeats) goes to the follower as openraft asked.
//! - A leader killed before its flush may come back without entries its
//!   followers hold. It restarts as a follower
//!   ([`resign_leadership`](super::restart::resign_leadership)),
//!   never in the term whose log ids those entries carry.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::{LogId, Vote};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

use super::restart::is_leader_vote;
use crate::limits;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::RaftPayload;
use crate::raft::storage::log_store::AppendObserver;
use crate::raft::transport::append_stream::StreamSupport;
use crate::raft::transport::{AppendShortcut, EarlyAnswer};
use crate::raft::typ::{AppendEntriesRequest, AppendEntriesResponse, RaftError};
use crate::raft::{NodeId, TypeConfig};
use crate::transport::Dialer;

type Entry = openraft::Entry<TypeConfig>;

/// The leader's early links to its followers, one per follower and vote.
/// Cheap to clone; every clone shares the links.
#[derive(Debug, Clone)]
pub struct EarlyReplication {
    id: NodeId,
    links: Arc<Mutex<HashMap<NodeId, Link>>>,
    stats: Arc<EarlyStats>,
}

/// How often openraft's appends of entries were answered early.
#[derive(Debug, Default)]
pub struct EarlyStats {
    /// Appends answered from a follower's answer to their early copy.
    pub answered: AtomicU64,
    /// Appends sent the usual way (not offered early, refused, failed).
    pub sent_as_usual: AtomicU64,
}

/// One follower's link under one vote: the queue of its sender task and
/// what the follower has answered so far.
#[derive(Debug, Clone)]
struct Link {
    vote: Vote<NodeId>,
    offers: mpsc::Sender<Offer>,
    progress: Arc<watch::Sender<Progress>>,
    /// When openraft last sent anything to the follower: a link it no
    /// longer replicates to (removed from the membership) stops being fed.
    last_used: Instant,
}

/// An early AppendEntries for one link, and the index of its last entry.
#[derive(Debug)]
struct Offer {
    payload: RaftPayload,
    last_index: u64,
}

/// Highest last-entry indexes of a link's early appends: queued, answered
/// (in any way, or given up), and answered with success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    offered: Option<u64>,
    settled: Option<u64>,
    confirmed: Option<u64>,
}

impl EarlyReplication {
    /// Early replication for node `id`; it sends nothing until openraft's
    /// replication to a follower has [kept a link](Self::keep_link) open.
    pub fn new(id: NodeId) -> Self {
        EarlyReplication { id, links: Arc::default(), stats: Arc::default() }
    }

    /// How often appends were answered early.
    pub fn stats(&self) -> Arc<EarlyStats> {
        self.stats.clone()
    }

    /// Whether `vote` is this node's own committed vote: it leads under it.
    pub fn leads_with(&self, vote: &Vote<NodeId>) -> bool {
        is_leader_vote(vote, self.id)
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Link>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `entries`, just appended to the leader's log after `prev` and
    /// not yet flushed, to every follower linked under `vote`, with
    /// `committed` as the commit index. Does nothing unless `vote` is this
    /// node's own committed (leader) vote and the entries are its own.
    pub fn offer(
        &self,
        vote: &Vote<NodeId>,
        prev: Option<LogId<NodeId>>,
        committed: Option<LogId<NodeId>>,
        entries: &[Entry],
    ) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        if !self.leads_with(vote)
            || first.log_id.leader_id != *vote.leader_id()
            || entries.len() > limits::EARLY_ENTRIES_MAX
        {
            return;
        }
        debug_assert_eq!(prev.map_or(0, |prev| prev.index + 1), first.log_id.index, "offered entries follow prev");
        let links: Vec<Link> = {
            let mut links = self.links();
            links.retain(|_, link| link.last_used.elapsed() < limits::EARLY_LINK_IDLE_MAX);
            links.values().filter(|link| link.vote == *vote).cloned().collect()
        };
        if links.is_empty() {
            return;
        }
        let request = AppendEntriesRequest {
            vote: *vote,
            prev_log_id: prev,
            leader_commit: committed,
            entries: entries.to_vec(),
        };
        let Ok(data) = postcard::to_allocvec(&request) else { return };
        if data.len() > limits::EARLY_APPEND_BYTES_MAX {
            return;
        }
        let last_index = last.log_id.index;
        for link in links {
            let offer = Offer { payload: RaftPayload { data: data.clone() }, last_index };
            // A full queue drops the offer: openraft then sends these
            // entries itself, and the follower refuses the next early
            // append (its prev is missing there) until it has them.
            if link.offers.try_send(offer).is_ok() {
                link.progress.send_modify(|progress| progress.offered = progress.offered.max(Some(last_index)));
            }
        }
    }

    /// Closes every link not under `vote`, the vote this node just saved:
    /// a node that is no longer leader keeps no stream open to its peers.
    pub fn vote_saved(&self, vote: &Vote<NodeId>) {
        self.links().retain(|_, link| link.vote == *vote);
    }

    /// How to answer openraft's append to `target` under `vote` of entries
    /// through `last_index`: from an early append's success, waiting up to
    /// `ttl` for one in flight, or by sending it as usual.
    pub async fn answer(&self, target: NodeId, vote: &Vote<NodeId>, last_index: u64, ttl: Duration) -> EarlyAnswer {
        let answer = self.wait_for_answer(target, vote, last_index, ttl).await;
        let counter = match answer {
            EarlyAnswer::Confirmed => &self.stats.answered,
            EarlyAnswer::SendAsUsual => &self.stats.sent_as_usual,
            EarlyAnswer::TimedOut => return answer,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    async fn wait_for_answer(
        &self,
        target: NodeId,
        vote: &Vote<NodeId>,
        last_index: u64,
        ttl: Duration,
    ) -> EarlyAnswer {
        let mut progress = match self.links().get(&target) {
            Some(link) if link.vote == *vote => link.progress.subscribe(),
            _ => return EarlyAnswer::SendAsUsual,
        };
        if progress.borrow().offered < Some(last_index) {
            return EarlyAnswer::SendAsUsual;
        }
        let target_index = Some(last_index);
        let answered = async {
            let progress = progress.wait_for(|p| p.confirmed >= target_index || p.settled >= target_index).await;
            progress.map(|progress| progress.confirmed >= target_index)
        };
        match tokio::time::timeout(ttl, answered).await {
            Err(_) => EarlyAnswer::TimedOut,
            Ok(Ok(true)) => EarlyAnswer::Confirmed,
            Ok(_) => EarlyAnswer::SendAsUsual,
        }
    }
}

/// The task that sends one link's offers, in order and pipelined, on an
/// `AppendEntriesStream` of its own, and records the follower's answers.
struct LinkSender {
    target: NodeId,
    client: RaftClient<Channel>,
    dialer: Dialer,
    streams: Arc<StreamSupport>,
    progress: Arc<watch::Sender<Progress>>,
}

/// The open stream of a [`LinkSender`]: its request side and its answers.
struct OpenStream {
    requests: mpsc::Sender<RaftPayload>,
    answers: Streaming<RaftPayload>,
}

impl LinkSender {
    /// Runs until the link is dropped (every `Sender` of `queue` gone).
    /// Whatever is still unanswered then counts as settled, unconfirmed.
    async fn run(self, mut queue: mpsc::Receiver<Offer>) {
        let mut stream: Option<OpenStream> = None;
        // Last-entry indexes of the appends sent and not yet answered, in order.
        let mut unanswered: VecDeque<u64> = VecDeque::new();
        loop {
            tokio::select! {
                offer = queue.recv() => {
                    let Some(offer) = offer else { break };
                    if stream.is_none() {
                        stream = self.open().await;
                    }
                    let sent = stream.as_ref().is_some_and(|open| open.requests.try_send(offer.payload).is_ok());
                    if sent {
                        unanswered.push_back(offer.last_index);
                    } else {
                        self.settle(offer.last_index, false);
                    }
                }
                answer = next_answer(&mut stream) => {
                    let Some(last_index) = unanswered.pop_front() else {
                        // An answer to nothing: the stream is out of step.
                        stream = None;
                        continue;
                    };
                    match answer {
                        Some(answer) => self.settle(last_index, is_success(&answer)),
                        None => {
                            // Failed or ended: nothing sent on it will be answered.
                            stream = None;
                            self.settle(unanswered.back().copied().unwrap_or(last_index), false);
                            unanswered.clear();
                        }
                    }
                }
            }
        }
        let offered = self.progress.borrow().offered;
        self.progress.send_modify(|progress| progress.settled = progress.settled.max(offered));
    }

    /// Opens the link's stream, or returns `None` (the offer is then given up).
    async fn open(&self) -> Option<OpenStream> {
        if !self.streams.may_open() {
            return None;
        }
        let (requests, queued) = mpsc::channel(limits::EARLY_APPENDS_IN_FLIGHT_MAX);
        let mut request = tonic::Request::new(ReceiverStream::new(queued));
        self.dialer.authorize(&mut request);
        let mut client = self.client.clone();
        let opened =
            tokio::time::timeout(limits::EARLY_STREAM_OPEN_TIMEOUT, client.append_entries_stream(request)).await;
        match opened {
            Ok(Ok(response)) => Some(OpenStream { requests, answers: response.into_inner() }),
            Ok(Err(status)) => {
                if status.code() == tonic::Code::Unimplemented {
                    self.streams.refused();
                }
                tracing::debug!(peer = self.target, %status, "early replication stream not opened");
                None
            }
            Err(_) => None,
        }
    }

    fn settle(&self, last_index: u64, confirmed: bool) {
        self.progress.send_modify(|progress| {
            progress.settled = progress.settled.max(Some(last_index));
            if confirmed {
                progress.confirmed = progress.confirmed.max(Some(last_index));
            }
        });
    }
}

/// The next answer on `stream`; `None` when it failed or ended. Pending
/// forever when there is no stream, so that `select!` waits for offers.
async fn next_answer(stream: &mut Option<OpenStream>) -> Option<RaftPayload> {
    match stream {
        Some(open) => open.answers.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// Whether a follower's answer says it holds every entry of the request.
fn is_success(answer: &RaftPayload) -> bool {
    let decoded: Result<Result<AppendEntriesResponse, RaftError>, _> = postcard::from_bytes(&answer.data);
    matches!(decoded, Ok(Ok(AppendEntriesResponse::Success)))
}

/// The log store tells early replication of the leader's appends.
impl AppendObserver for EarlyReplication {
    fn leads_with(&self, vote: &Vote<NodeId>) -> bool {
        EarlyReplication::leads_with(self, vote)
    }

    fn appended(&self, vote: &Vote<NodeId>, prev: LogId<NodeId>, committed: Option<LogId<NodeId>>, entries: &[Entry]) {
        self.offer(vote, Some(prev), committed, entries);
    }

    fn vote_saved(&self, vote: &Vote<NodeId>) {
        EarlyReplication::vote_saved(self, vote);
    }
}

/// The transport asks early replication before it sends an append.
impl AppendShortcut for EarlyReplication {
    /// Keeps the link to `target` open under `vote`, opening it (and
    /// closing one under another vote) when needed. Called by openraft's
    /// replication to `target` before every append it sends.
    fn keep_link(
        &self,
        target: NodeId,
        vote: &Vote<NodeId>,
        client: &RaftClient<Channel>,
        dialer: &Dialer,
        streams: &Arc<StreamSupport>,
    ) {
        let leads = self.leads_with(vote);
        let mut links = self.links();
        match links.get_mut(&target) {
            Some(link) if link.vote == *vote && !link.offers.is_closed() => link.last_used = Instant::now(),
            _ if !leads || !streams.may_open() => {
                links.remove(&target);
            }
            _ => {
                let (offers, queue) = mpsc::channel(limits::EARLY_APPENDS_IN_FLIGHT_MAX);
                let progress = Arc::new(watch::Sender::new(Progress::default()));
                let sender = LinkSender {
                    target,
                    client: client.clone(),
                    dialer: dialer.clone(),
                    streams: streams.clone(),
                    progress: progress.clone(),
                };
                tokio::spawn(sender.run(queue));
                links.insert(target, Link { vote: *vote, offers, progress, last_used: Instant::now() });
            }
        }
    }

    fn answer<'a>(
        &'a self,
        target: NodeId,
        vote: &'a Vote<NodeId>,
        last_index: u64,
        ttl: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = EarlyAnswer> + Send + 'a>> {
        Box::pin(EarlyReplication::answer(self, target, vote, last_index, ttl))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    const ME: NodeId = 1;
    const TTL: Duration = Duration::from_millis(50);

    fn entry(term: u64, leader: NodeId, index: u64) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(term, leader), index), payload: EntryPayload::Blank }
    }

    /// A link to node 2 under `vote` with no sender task: the test reads its queue.
    fn link_to_2(
        early: &EarlyReplication,
        vote: Vote<NodeId>,
    ) -> (mpsc::Receiver<Offer>, Arc<watch::Sender<Progress>>) {
        let (offers, queue) = mpsc::channel(limits::EARLY_APPENDS_IN_FLIGHT_MAX);
        let progress = Arc::new(watch::Sender::new(Progress::default()));
        let link = Link { vote, offers, progress: progress.clone(), last_used: Instant::now() };
        early.links().insert(2, link);
        (queue, progress)
    }

    #[tokio::test]
    async fn only_the_leaders_own_entries_under_its_own_vote_are_offered() {
        let early = EarlyReplication::new(ME);
        let mine = Vote::new_committed(3, ME);
        let (mut queue, progress) = link_to_2(&early, mine);
        let prev = Some(LogId::new(CommittedLeaderId::new(3, ME), 9));

        early.offer(&Vote::new(3, ME), prev, None, &[entry(3, ME, 10)]); // a candidate's vote
        early.offer(&Vote::new_committed(3, 2), prev, None, &[entry(3, 2, 10)]); // another leader's
        early.offer(&mine, prev, None, &[entry(2, ME, 10)]); // an entry of an older term
        early.offer(&Vote::new_committed(4, ME), prev, None, &[entry(4, ME, 10)]); // no link under this vote
        assert!(queue.try_recv().is_err(), "nothing offered");
        assert_eq!(progress.borrow().offered, None);

        early.offer(&mine, prev, prev, &[entry(3, ME, 10), entry(3, ME, 11)]);
        let offer = queue.try_recv().expect("offered");
        assert_eq!(offer.last_index, 11);
        assert_eq!(progress.borrow().offered, Some(11));
        let request: AppendEntriesRequest = postcard::from_bytes(&offer.payload.data).unwrap();
        assert_eq!((request.vote, request.prev_log_id, request.leader_commit), (mine, prev, prev));
        assert_eq!(request.entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), [10, 11]);

        early.vote_saved(&mine);
        assert_eq!(early.links().len(), 1, "the link under the saved vote stays");
        early.vote_saved(&Vote::new(4, 2));
        assert!(early.links().is_empty(), "a node that voted for another closes its links");
        assert!(queue.try_recv().is_err() && queue.is_closed(), "the link's queue is closed");
    }

    #[tokio::test]
    async fn an_append_is_answered_early_only_from_a_success_that_covers_it() {
        let early = EarlyReplication::new(ME);
        let vote = Vote::new_committed(3, ME);
        let (_queue, progress) = link_to_2(&early, vote);
        let answer = |last_index| early.answer(2, &vote, last_index, TTL);

        assert_eq!(answer(5).await, EarlyAnswer::SendAsUsual, "nothing offered");
        progress.send_modify(|p| p.offered = Some(8));
        assert_eq!(answer(9).await, EarlyAnswer::SendAsUsual, "entry 9 was not offered early");
        assert_eq!(answer(8).await, EarlyAnswer::TimedOut, "offered and unanswered");

        progress.send_modify(|p| {
            p.settled = Some(6);
            p.confirmed = Some(6);
        });
        assert_eq!(answer(6).await, EarlyAnswer::Confirmed);
        assert_eq!(answer(4).await, EarlyAnswer::Confirmed, "a success through 6 covers 4");
        progress.send_modify(|p| p.settled = Some(8));
        assert_eq!(answer(8).await, EarlyAnswer::SendAsUsual, "refused or failed");

        let waiting = tokio::spawn({
            let early = early.clone();
            async move { early.answer(2, &vote, 10, Duration::from_secs(10)).await }
        });
        progress.send_modify(|p| p.offered = Some(10));
        tokio::task::yield_now().await;
        progress.send_modify(|p| {
            p.settled = Some(10);
            p.confirmed = Some(10);
        });
        assert_eq!(waiting.await.unwrap(), EarlyAnswer::Confirmed, "a waiting append takes the success");

        let other_vote = Vote::new_committed(4, ME);
        assert_eq!(early.answer(2, &other_vote, 4, TTL).await, EarlyAnswer::SendAsUsual, "another vote");
        assert_eq!(early.answer(3, &vote, 4, TTL).await, EarlyAnswer::SendAsUsual, "another follower");
        let stats = early.stats();
        assert_eq!(stats.answered.load(Ordering::Relaxed), 3);
        assert_eq!(stats.sent_as_usual.load(Ordering::Relaxed), 5);
    }
}
