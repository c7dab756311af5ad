//! The one mapping between [`Error`] and gRPC status codes, in both
//! directions (the server answers with it, the client decodes with it).
//!
//! A leader hint rides in the [`LEADER_ADDRESS_KEY`] metadata of an
//! `UNAVAILABLE` status, and of any answer a follower forwarded to the
//! leader, so clients can go straight to the leader.

use tonic::{Code, Status};

use crate::error::Error;

/// Metadata key of the leader's client address on `UNAVAILABLE` and forwarded answers.
pub const LEADER_ADDRESS_KEY: &str = "x-runner-storage-leader";

/// The gRPC status for `error`.
pub fn to_status(error: Error) -> Status {
    match error {
        Error::InvalidArgument(message) => Status::invalid_argument(message),
        Error::ResourceExhausted(message) => Status::resource_exhausted(message),
        Error::FailedPrecondition(message) => Status::failed_precondition(message),
        Error::DeadlineExceeded(message) => Status::deadline_exceeded(message),
        Error::Unauthenticated(message) => Status::unauthenticated(message),
        Error::Unavailable { message, leader_hint } => {
            let mut status = Status::unavailable(message);
            if let Some(value) = leader_hint.and_then(|hint| hint.parse().ok()) {
                status.metadata_mut().insert(LEADER_ADDRESS_KEY, value);
            }
            status
        }
        Error::Config(message) => Status::failed_precondition(message),
        Error::Storage { message, .. } => Status::internal(message),
    }
}

/// The [`Error`] a gRPC status stands for. A call the TLS handshake
/// refused (the peer's certificate is not of the trusted CA, or ours is not
/// of its) is [`Error::Unauthenticated`] whatever code tonic gave it: no
/// retry can succeed.
pub fn from_status(status: Status) -> Error {
    let message = status.message().to_owned();
    if tls_refused(&status) {
        return Error::Unauthenticated(format!("TLS refused the connection: {message} ({})", source_chain(&status)));
    }
    match status.code() {
        Code::InvalidArgument => Error::InvalidArgument(message),
        Code::ResourceExhausted => Error::ResourceExhausted(message),
        Code::FailedPrecondition => Error::FailedPrecondition(message),
        Code::DeadlineExceeded => Error::DeadlineExceeded(message),
        Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(message),
        Code::Unavailable | Code::Cancelled | Code::Aborted | Code::Unknown => {
            let leader_hint =
                status.metadata().get(LEADER_ADDRESS_KEY).and_then(|value| value.to_str().ok()).map(str::to_owned);
            Error::Unavailable { message: format!("{:?}: {message}", status.code()), leader_hint }
        }
        code => Error::Storage { message: format!("{code:?}: {message}"), cause: Some(Box::new(status)) },
    }
}

/// Whether the call failed in a TLS handshake: rustls reports a refused
/// certificate as an `InvalidData` I/O error under the transport error.
fn tls_refused(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData) {
            return true;
        }
        source = error.source();
    }
    false
}

/// The messages of a status's source errors, innermost last.
fn source_chain(status: &Status) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        parts.push(error.to_string());
        source = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_through_status() {
        let cases = [
            Error::InvalidArgument("address is empty".into()),
            Error::ResourceExhausted("cap".into()),
            Error::FailedPrecondition("old".into()),
            Error::Unavailable { message: "no leader".into(), leader_hint: Some("127.0.0.1:7002".into()) },
        ];
        for error in cases {
            let expected = error.to_string();
            let back = from_status(to_status(error));
            assert!(expected.contains(back.to_string().split(": ").last().unwrap()), "{expected} vs {back}");
        }
        let hint = from_status(to_status(Error::Unavailable { message: "x".into(), leader_hint: Some("h:1".into()) }));
        assert!(matches!(hint, Error::Unavailable { leader_hint: Some(h), .. } if h == "h:1"));
    }
}
