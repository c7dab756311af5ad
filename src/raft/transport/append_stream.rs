//! Replication over one long-lived gRPC stream per leader-to-follower link.
//!
//! A unary `AppendEntries` call costs a whole HTTP/2 request each time: a new
//! stream, request and response headers, trailers, and a spawned task on the
//! follower. openraft 0.9 sends one AppendEntries at a time per follower and
//! waits for its answer, so the calls of one replication session can share
//! one bidirectional stream (`AppendEntriesStream`) instead: each request is
//! one message in, its answer one message out, in the same order.
//!
//! - [`AppendStream`] is the leader's half, owned by one `PeerClient`. It is
//!   dropped (ending the stream) on any failure or timeout, so a late answer
//!   can never be taken for the answer to a later request.
//! - [`answer_appends`] is the follower's half. It ends its side when the
//!   node starts shutting down, so a stream from the leader never holds a
//!   stopping follower for the whole drain.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::codec::{decode_payload, encode_payload};
use super::RaftEvents;
use crate::limits;
use crate::pb::raft::raft_client::RaftClient;
use crate::pb::raft::RaftPayload;
use crate::raft::typ::AppendEntriesRequest;
use crate::raft::Raft;
use crate::transport::Dialer;

/// Whether a peer takes append streams. A node of an older release answers
/// `UNIMPLEMENTED`; appends to it then go as unary calls, and a stream is
/// tried again after [`limits::APPEND_STREAM_RETRY_AFTER`] (it may have been
/// upgraded meanwhile). Shared by every client to the peer, so each read
/// round's fresh client does not pay a refused stream first.
#[derive(Debug, Default)]
pub struct StreamSupport {
    refused_at: Mutex<Option<Instant>>,
}

impl StreamSupport {
    fn refused_at(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.refused_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether to open a stream to the peer (rather than call unary).
    pub fn may_open(&self) -> bool {
        self.refused_at().is_none_or(|at| at.elapsed() >= limits::APPEND_STREAM_RETRY_AFTER)
    }

    /// Notes that the peer refused a stream. Whether it had not before.
    pub fn refused(&self) -> bool {
        self.refused_at().replace(Instant::now()).is_none()
    }

    /// Notes that the peer took a stream.
    pub fn accepted(&self) {
        if self.refused_at().is_some() {
            *self.refused_at() = None;
        }
    }
}

/// The leader's half of one `AppendEntriesStream` call to a follower.
#[derive(Debug)]
pub struct AppendStream {
    requests: mpsc::Sender<RaftPayload>,
    answers: Streaming<RaftPayload>,
}

impl AppendStream {
    /// Opens a stream on `client` with `first` as its first request, and
    /// returns it with the answer to `first`. The request goes out with the
    /// stream's headers, so opening costs no extra round trip.
    ///
    /// # Errors
    /// The peer's status (`UNIMPLEMENTED` from a node of an older release,
    /// which has only the unary call), or a transport failure.
    pub async fn open(
        client: &mut RaftClient<Channel>,
        dialer: &Dialer,
        first: RaftPayload,
    ) -> Result<(Self, RaftPayload), Status> {
        let (requests, queued) = mpsc::channel(limits::APPEND_STREAM_REQUESTS_BUFFERED_MAX);
        requests
            .try_send(first)
            .map_err(|_| Status::internal("a new append stream has no room for its first request"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(queued));
        dialer.authorize(&mut request);
        let answers = client.append_entries_stream(request).await?.into_inner();
        let mut stream = AppendStream { requests, answers };
        let answer = stream.next_answer().await?;
        Ok((stream, answer))
    }

    /// Sends `request` and waits for its answer.
    ///
    /// # Errors
    /// The stream failed or ended; it must then be dropped.
    pub async fn exchange(&mut self, request: RaftPayload) -> Result<RaftPayload, Status> {
        self.requests
            .send(request)
            .await
            .map_err(|_| Status::unavailable("the append stream's request side closed"))?;
        self.next_answer().await
    }

    async fn next_answer(&mut self) -> Result<RaftPayload, Status> {
        match self.answers.message().await? {
            Some(answer) => Ok(answer),
            // The follower is stopping (it ends its streams first) or went
            // away mid-stream. Not `UNAVAILABLE`: the next request opens a
            // new stream at once, and that tells whether the peer is gone.
            None => Err(Status::aborted("the follower ended the append stream")),
        }
    }
}

/// The answers of one `AppendEntriesStream` call, as the follower sends them.
pub type AnswerStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<RaftPayload, Status>> + Send>>;

/// Answers the requests of one stream from the leader in order, each by
/// `raft.append_entries`, until the leader ends the stream, a request cannot
/// be decoded (answered with `INVALID_ARGUMENT`, then the end), or `stopping`
/// turns true.
pub fn answer_appends(
    raft: Raft,
    events: Arc<dyn RaftEvents>,
    requests: Streaming<RaftPayload>,
    stopping: watch::Receiver<bool>,
) -> AnswerStream {
    struct Session {
        raft: Raft,
        events: Arc<dyn RaftEvents>,
        requests: Streaming<RaftPayload>,
        stopping: watch::Receiver<bool>,
    }
    let session = Session { raft, events, requests, stopping };
    Box::pin(futures_util::stream::unfold(Some(session), |session| async move {
        let mut session = session?;
        let next = tokio::select! {
            biased;
            // A closed sender means the server is gone: stop as well.
            _ = session.stopping.wait_for(|stopping| *stopping) => return None,
            next = session.requests.message() => next,
        };
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => return None,
        };
        let rpc: AppendEntriesRequest = match decode_payload(&request.data) {
            Ok(rpc) => rpc,
            Err(status) => return Some((Err(status), None)),
        };
        let answer = session.raft.append_entries(rpc).await;
        session.events.heard_from_leader();
        Some((encode_payload(&answer), Some(session)))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_stream_is_not_tried_again_until_the_retry_interval() {
        let streams = StreamSupport::default();
        assert!(streams.may_open(), "streams are tried first");
        assert!(streams.refused(), "the first refusal is news");
        assert!(!streams.refused(), "a second refusal is not");
        assert!(!streams.may_open(), "unary appends until the retry interval");
        *streams.refused_at() = Instant::now().checked_sub(limits::APPEND_STREAM_RETRY_AFTER);
        assert!(streams.may_open(), "a stream is tried again after the interval");
        streams.accepted();
        assert!(streams.may_open());
        assert!(streams.refused(), "a refusal after an accepted stream is news again");
    }
}
