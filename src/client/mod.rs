//! [`Client`]: the Rust client of a runner-storage cluster, an [`Encoded`]
//! over gRPC.
//!
//! It remembers the leader (from answers and `UNAVAILABLE` leader hints),
//! retries `UNAVAILABLE` and broken connections across endpoints with
//! exponential backoff until the call's deadline, and stamps every write
//! with a [`RequestId`](crate::model::RequestId) that its retries reuse, so
//! a write is applied once however often it is retried.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::{Error, Result};
use crate::limits;
use crate::pb::v1 as pb;
use crate::pb::v1::runner_storage_client::RunnerStorageClient;
use crate::transport::status::{from_status, LEADER_ADDRESS_KEY};
use crate::transport::Dialer;

pub use crate::limits::{ATTEMPT_TIMEOUT, BACKOFF_INITIAL, BACKOFF_MAX, CALL_DEADLINE_DEFAULT, HEDGE_AFTER};

mod admin;
mod encoded;

/// A client of one cluster.
pub struct Client {
    endpoints: Mutex<Vec<String>>,
    /// Index into `endpoints` of the node believed to lead.
    current: Mutex<usize>,
    channels: Mutex<HashMap<String, Channel>>,
    client_id: String,
    next_sequence: AtomicU64,
    pub(crate) call_deadline: Duration,
    dialer: Dialer,
    /// The namespace every call acts in (`""`: the default one).
    pub(crate) namespace: String,
}

/// How a [`Client`] reaches the cluster.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time one call may take, retries included.
    pub call_deadline: Duration,
    /// TLS and bearer token (plaintext, no token by default).
    pub dialer: Dialer,
    /// The namespace every call acts in (`""` or `"default"`: the default one).
    pub namespace: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { call_deadline: CALL_DEADLINE_DEFAULT, dialer: Dialer::default(), namespace: String::new() }
    }
}

impl Client {
    /// A client of the cluster reachable at `endpoints` (`host:port` each).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `endpoints` is empty or one is not a valid address.
    pub fn new(endpoints: Vec<String>) -> Result<Self> {
        Self::with_deadline(endpoints, CALL_DEADLINE_DEFAULT)
    }

    /// As [`Client::new`], with a per-call deadline.
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn with_deadline(endpoints: Vec<String>, call_deadline: Duration) -> Result<Self> {
        Self::with_options(endpoints, ClientOptions { call_deadline, ..ClientOptions::default() })
    }

    /// As [`Client::new`], with every option.
    ///
    /// # Errors
    /// As [`Client::new`].
    pub fn with_options(endpoints: Vec<String>, options: ClientOptions) -> Result<Self> {
        let ClientOptions { call_deadline, dialer, namespace } = options;
        crate::state_machine::validate_namespace(&crate::state_machine::namespace_or_default(&namespace))?;
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("endpoints is empty".into()));
        }
        for endpoint in &endpoints {
            crate::model::RunnerAddress::parse(endpoint)
                .map_err(|_| Error::InvalidArgument(format!("endpoint {endpoint:?} is not host:port")))?;
        }
        let client_id = format!("{:016x}", rand::thread_rng().gen::<u64>());
        Ok(Client {
            endpoints: Mutex::new(endpoints),
            current: Mutex::new(0),
            channels: Mutex::new(HashMap::new()),
            client_id,
            next_sequence: AtomicU64::new(1),
            call_deadline,
            dialer,
            namespace,
        })
    }

    /// This client's id in request ids.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A request id for one logical write; its retries reuse it.
    pub(crate) fn request_id(&self) -> Option<pb::RequestId> {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        Some(pb::RequestId { client_id: self.client_id.clone(), sequence })
    }

    fn current_endpoint(&self) -> String {
        let endpoints = lock(&self.endpoints);
        endpoints[*lock(&self.current) % endpoints.len()].clone()
    }

    /// After a failure at `endpoint`: go to the hinted leader, or to the next endpoint.
    fn move_on(&self, endpoint: &str, leader_hint: Option<String>) {
        let mut endpoints = lock(&self.endpoints);
        let mut current = lock(&self.current);
        if let Some(hint) = leader_hint.filter(|hint| hint != endpoint) {
            let index = endpoints.iter().position(|known| *known == hint).unwrap_or_else(|| {
                endpoints.push(hint);
                endpoints.len() - 1
            });
            *current = index;
        } else if endpoints.get(*current).is_some_and(|known| known == endpoint) {
            *current = (*current + 1) % endpoints.len();
        }
    }

    /// The endpoint after `endpoint` in the list, if there is another.
    fn endpoint_after(&self, endpoint: &str) -> Option<String> {
        let endpoints = lock(&self.endpoints);
        let index = endpoints.iter().position(|known| known == endpoint)?;
        let next = &endpoints[(index + 1) % endpoints.len()];
        (next != endpoint).then(|| next.clone())
    }

    /// After a success at `endpoint`: calls go there next (a hedged
    /// attempt's other endpoint may have answered), or to the leader a
    /// forwarding follower named.
    fn answered_by<T>(&self, endpoint: &str, response: &tonic::Response<T>) {
        {
            let endpoints = lock(&self.endpoints);
            if let Some(index) = endpoints.iter().position(|known| known == endpoint) {
                *lock(&self.current) = index;
            }
        }
        self.follow_forwarding_hint(endpoint, response);
    }

    /// After a success at `endpoint` that a follower forwarded: send the
    /// next calls to the leader it named, saving a hop per call.
    fn follow_forwarding_hint<T>(&self, endpoint: &str, response: &tonic::Response<T>) {
        let hint = response.metadata().get(LEADER_ADDRESS_KEY).and_then(|value| value.to_str().ok());
        if let Some(leader) = hint.filter(|leader| *leader != endpoint) {
            self.move_on(endpoint, Some(leader.to_owned()));
        }
    }

    pub(crate) fn channel(&self, endpoint: &str) -> Result<Channel> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel =
            self.dialer.channel(endpoint).map_err(|e| Error::InvalidArgument(format!("endpoint {endpoint:?}: {e}")))?;
        channels.insert(endpoint.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Runs `call` against the leader, retrying retryable failures across
    /// endpoints with backoff until the deadline; one attempt lasts at most
    /// `attempt_timeout_max`.
    ///
    /// # Errors
    /// The first non-retryable error, or the last retryable one (as
    /// `DeadlineExceeded` when time ran out mid-attempt).
    pub async fn call<T, F, Fut>(&self, attempt_timeout_max: Duration, call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(attempt_timeout_max, false, call).await
    }

    /// [`Client::call`]; with `hedge`, an attempt unanswered after
    /// [`HEDGE_AFTER`] also goes to the next endpoint. Only for calls that
    /// may be placed twice (reads, writes with a request id).
    async fn call_with<T, F, Fut>(&self, attempt_timeout_max: Duration, hedge: bool, mut call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.call_deadline;
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let endpoint = self.current_endpoint();
            let attempt_timeout = deadline.saturating_duration_since(Instant::now()).min(attempt_timeout_max);
            let (endpoint, answered) = self.attempt(&endpoint, attempt_timeout, hedge, &mut call).await;
            let error = match answered {
                Ok(response) => {
                    self.answered_by(&endpoint, &response);
                    return Ok(response.into_inner());
                }
                Err(error) => error,
            };
            let Error::Unavailable { leader_hint, message } = error else {
                return Err(error);
            };
            self.move_on(&endpoint, leader_hint);
            if Instant::now() + backoff >= deadline {
                return Err(Error::DeadlineExceeded(format!(
                    "gave up after {:?}; last error: {message}",
                    self.call_deadline
                )));
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One attempt at `endpoint`, hedged to the next endpoint when asked
    /// (see [`HEDGE_AFTER`]): the first success wins; a retryable failure
    /// of one waits for the other. Returns the endpoint that answered, or
    /// that failed last.
    async fn attempt<T, F, Fut>(
        &self,
        endpoint: &str,
        timeout: Duration,
        hedge: bool,
        call: &mut F,
    ) -> (String, Result<tonic::Response<T>>)
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        use futures_util::future::{select, Either};
        let started = Instant::now();
        let first = match self.channel(endpoint) {
            Ok(channel) => Box::pin(self.answer_of(endpoint, timeout, call(channel))),
            Err(error) => return (endpoint.to_owned(), Err(error)),
        };
        let hedge_to = self.endpoint_after(endpoint).filter(|_| hedge && timeout > HEDGE_AFTER);
        let hedge_to = hedge_to.and_then(|other| self.channel(&other).ok().map(|channel| (other, channel)));
        let Some((other, other_channel)) = hedge_to else {
            return (endpoint.to_owned(), first.await);
        };
        let mut first = first;
        tokio::select! {
            answered = &mut first => return (endpoint.to_owned(), answered),
            () = tokio::time::sleep(HEDGE_AFTER) => {}
        }
        let left = timeout.saturating_sub(started.elapsed());
        let outcome = {
            let second = Box::pin(self.answer_of(&other, left, call(other_channel)));
            match select(first, second).await {
                Either::Left((Ok(response), _)) => (true, Ok(response)),
                Either::Right((Ok(response), _)) => (false, Ok(response)),
                Either::Left((Err(error), second)) if is_retryable(&error) => (false, second.await),
                Either::Right((Err(error), first)) if is_retryable(&error) => (true, first.await),
                Either::Left((Err(error), _)) => (true, Err(error)),
                Either::Right((Err(error), _)) => (false, Err(error)),
            }
        };
        match outcome {
            (true, answered) => (endpoint.to_owned(), answered),
            (false, answered) => (other, answered),
        }
    }

    /// `call`'s answer from `endpoint` within `timeout`, failures explained.
    async fn answer_of<T>(
        &self,
        endpoint: &str,
        timeout: Duration,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<tonic::Response<T>> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(status)) => Err(self.explain(endpoint, status)),
            Err(_) => Err(Error::unavailable(format!("no answer from {endpoint} within {timeout:?}"))),
        }
    }

    /// The [`Error`] of a failed attempt. gRPC reports every HTTP/2 failure
    /// as `INTERNAL`; two of them mean something else:
    /// - the node closed the connection or refused the stream (its
    ///   `GOAWAY` when it shuts down gracefully fails the calls it will not
    ///   take): `Unavailable`, so the call moves to another node;
    /// - this plaintext client could not parse what the node sent (a TLS
    ///   record read as an HTTP/2 frame): a TLS-versus-plaintext mismatch.
    pub(crate) fn explain(&self, endpoint: &str, status: tonic::Status) -> Error {
        if let Some(h2) = h2_error(&status) {
            let closed_by_node = h2.is_remote()
                && (h2.is_go_away() || matches!(h2.reason(), Some(h2::Reason::NO_ERROR | h2::Reason::REFUSED_STREAM)));
            if closed_by_node {
                return Error::unavailable(format!("{endpoint} closed the call ({h2}): it may be shutting down"));
            }
            let unreadable = h2.is_library()
                && matches!(h2.reason(), Some(h2::Reason::FRAME_SIZE_ERROR | h2::Reason::PROTOCOL_ERROR));
            if unreadable && !self.dialer.uses_tls() {
                return Error::Unauthenticated(format!(
                    "{endpoint} did not speak plaintext gRPC: the cluster probably uses TLS; \
                     connect with its CA (--tls-ca or RUNNER_STORAGE_TLS_CA)"
                ));
            }
        }
        from_status(status)
    }

    /// [`Client::call`] with `message` sent as a request with a timeout and the token.
    pub(crate) async fn request_call<M, T, F, Fut>(&self, message: M, attempt_timeout: Duration, send: F) -> Result<T>
    where
        M: Clone,
        F: Fn(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(attempt_timeout, |channel| send(channel, self.request(message.clone(), attempt_timeout))).await
    }

    pub(crate) async fn runner_call<M, T, F, Fut>(&self, message: M, send: F) -> Result<T>
    where
        M: Clone,
        F: Fn(RunnerStorageClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        // Hedged: the eight calls are reads or writes with a request id.
        let attempt_timeout = ATTEMPT_TIMEOUT;
        self.call_with(attempt_timeout, true, |channel| {
            let client = RunnerStorageClient::new(channel)
                .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
            send(client, self.request(message.clone(), attempt_timeout))
        })
        .await
    }
}

impl Client {
    /// `message` as a request with a timeout and this client's token.
    pub(crate) fn request<M>(&self, message: M, timeout: Duration) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        self.dialer.authorize(&mut request);
        request
    }
}

/// Whether a failed attempt may succeed elsewhere.
fn is_retryable(error: &Error) -> bool {
    matches!(error, Error::Unavailable { .. })
}

/// A pause drawn between half of `backoff` and all of it: clients that
/// failed together (a leader died under all of them) retry spread out,
/// and the first of them reaches the new leader soon after it is elected.
fn jittered(backoff: Duration) -> Duration {
    use rand::Rng;
    rand::thread_rng().gen_range(backoff / 2..=backoff)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The HTTP/2 error behind a failed call, if that is what failed it.
fn h2_error(status: &tonic::Status) -> Option<&h2::Error> {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded_answer(leader: &str) -> tonic::Response<()> {
        let mut response = tonic::Response::new(());
        response.metadata_mut().insert(LEADER_ADDRESS_KEY, leader.parse().unwrap());
        response
    }

    #[test]
    fn a_forwarded_answer_moves_the_client_to_the_leader() {
        let client = Client::new(vec!["10.0.0.1:7001".into(), "10.0.0.2:7001".into()]).unwrap();
        assert_eq!(client.current_endpoint(), "10.0.0.1:7001");
        client.follow_forwarding_hint("10.0.0.1:7001", &forwarded_answer("10.0.0.2:7001"));
        assert_eq!(client.current_endpoint(), "10.0.0.2:7001");
        // A leader it did not know is added to its endpoints.
        client.follow_forwarding_hint("10.0.0.2:7001", &forwarded_answer("10.0.0.3:7001"));
        assert_eq!(client.current_endpoint(), "10.0.0.3:7001");
        // An answer without the hint (the leader answered) changes nothing.
        client.follow_forwarding_hint("10.0.0.3:7001", &tonic::Response::new(()));
        assert_eq!(client.current_endpoint(), "10.0.0.3:7001");
    }
}
