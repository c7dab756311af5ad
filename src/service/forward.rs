//! Leader forwarding: a follower hands a call to the leader it knows, once.
//!
//! A forwarded call carries the [`FORWARDED_KEY`] metadata; a node that gets
//! a forwarded call while not being the leader answers `UNAVAILABLE` with its
//! leader hint instead of forwarding again (`FORWARD_HOPS_MAX` = 1), so a
//! call can never loop between nodes that disagree about the leader.

use crate::transport::pool::ChannelPool;

/// Metadata key marking a call forwarded by another node.
pub const FORWARDED_KEY: &str = "x-runner-storage-forwarded";

/// `message` as a request forwarded to the leader: marked forwarded, with
/// what is left of the caller's deadline and the pool's token.
pub fn forward_request<T>(pool: &ChannelPool, message: T, timeout: Option<std::time::Duration>) -> tonic::Request<T> {
    let mut request = forwarded_request(message, timeout);
    pool.dialer().authorize(&mut request);
    request
}

/// Whether `request` was already forwarded by another node.
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_KEY)
}

/// `message` as a request marked forwarded, keeping the caller's deadline.
pub fn forwarded_request<T>(message: T, timeout: Option<std::time::Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED_KEY, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// Whether a forwarded call failed before it reached the leader: the
/// connection was refused, so nothing listens at the leader's address (it
/// died). Such a call can be placed again with no risk of applying it twice.
pub fn never_delivered(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        let refused = error.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
        if refused == Some(std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether a forwarded call failed with no answer from the leader: the
/// connection broke (the leader died mid-call, or the connection was stale).
/// An answer the leader sent, even an error, carries no source error; a
/// failure of this node's own transport does. The deadline running out is not
/// such a failure: there is no time left to place the call again.
pub fn no_answer(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
        && !matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
}

/// Whether a call may be placed with a leader again when an earlier placement
/// may have reached a leader and been applied: reads and idempotent settings
/// always, writes only with a request id (the leader's deduplication table
/// then returns the first answer instead of applying the call twice).
pub trait PlaceAgain {
    /// Whether placing this call twice does no harm.
    fn may_place_again(&self) -> bool;
}

/// Implements [`PlaceAgain`] for each message by `rule` (a closure over `&Self`).
macro_rules! place_again {
    ($rule:expr => $($message:ty),* $(,)?) => {$(
        impl PlaceAgain for $message {
            fn may_place_again(&self) -> bool {
                ($rule)(self)
            }
        }
    )*};
}

place_again!(|_: &Self| true =>
    crate::pb::v1::GetRunnersRequest,
    crate::pb::admin::ListRunnersRequest,
    crate::pb::admin::ListLocksRequest,
    crate::pb::v1::ListNamespacesRequest,
    crate::pb::v1::SetLockExpirationRequest,
);
place_again!(|message: &Self| message.request_id.is_some() =>
    crate::pb::v1::RegisterRequest,
    crate::pb::v1::UnregisterRequest,
    crate::pb::v1::SetRunnerHealthRequest,
    crate::pb::v1::AcquireRequest,
    crate::pb::v1::RefreshRequest,
    crate::pb::v1::ReleaseRequest,
    crate::pb::v1::ReleaseAllRequest,
    crate::pb::v1::EnsureLockExpirationRequest,
);
// Membership changes carry no request id: a second placement could change a
// membership that moved on since the first.
place_again!(|_: &Self| false =>
    crate::pb::admin::AddLearnerRequest,
    crate::pb::admin::ChangeMembershipRequest,
    crate::pb::admin::TransferLeaderRequest,
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1 as pb;

    #[tokio::test]
    async fn a_refused_connection_is_never_delivered_and_an_answer_is() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let channel = ChannelPool::default().channel(&address).unwrap();
        let mut client = pb::runner_storage_client::RunnerStorageClient::new(channel);
        let status = client.get_runners(forwarded_request(pb::GetRunnersRequest::default(), None)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(never_delivered(&status), "a refused connection must count as never delivered: {status:?}");
        assert!(!never_delivered(&tonic::Status::unavailable("no quorum")), "an answer was delivered");
        assert!(no_answer(&status), "a refused connection gave no answer: {status:?}");
        assert!(!no_answer(&tonic::Status::unavailable("no quorum")), "an answer came back");
    }

    #[tokio::test]
    async fn a_connection_that_breaks_mid_call_gave_no_answer_but_may_have_delivered() {
        // A "leader" that takes the call and dies before answering.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let dies_mid_call = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = vec![0; 4096];
            let _ = socket.read(&mut received).await;
        });
        let channel = ChannelPool::default().channel(&address).unwrap();
        let mut client = pb::runner_storage_client::RunnerStorageClient::new(channel);
        let status = client.get_runners(forwarded_request(pb::GetRunnersRequest::default(), None)).await.unwrap_err();
        dies_mid_call.await.unwrap();
        assert!(no_answer(&status), "a broken connection gave no answer: {status:?}");
        assert!(!never_delivered(&status), "the call may have reached the leader: {status:?}");
    }

    #[test]
    fn only_calls_that_cannot_apply_twice_may_be_placed_again() {
        let request_id = Some(pb::RequestId { client_id: "c".into(), sequence: 1 });
        assert!(pb::GetRunnersRequest::default().may_place_again());
        let mut register = pb::RegisterRequest { address: "a:1".into(), ..Default::default() };
        assert!(!register.may_place_again(), "a register without a request id may apply twice");
        register.request_id = request_id.clone();
        assert!(register.may_place_again());
        let refresh = pb::RefreshRequest { address: "a:1".into(), request_id, ..Default::default() };
        assert!(refresh.may_place_again());
        assert!(!crate::pb::admin::ChangeMembershipRequest::default().may_place_again());
    }
}
