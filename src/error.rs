//! The library's one error type, the counterpart of Effect's `PersistenceError`.
//!
//! Every failure of a storage call is an [`Error`]; the variant tells the
//! caller what to do about it (fix the input, retry, give up) and carries the
//! cause. The gRPC status code for each variant is chosen in one place,
//! `service::status`.

/// Result of a storage call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed storage call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is malformed (SPEC §6); nothing was applied. Do not retry.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A cluster-wide cap would be passed; nothing was applied.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The request cannot be applied in the current state (a request id older
    /// than the oldest one remembered for its client). Do not retry.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// No leader or no quorum right now; safe to retry.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What was unavailable.
        message: String,
        /// The leader's client address, when a node knows it.
        leader_hint: Option<String>,
    },
    /// The caller is not allowed: a missing or wrong bearer token, a missing
    /// peer certificate, or a plaintext client against a TLS cluster.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's deadline passed before an answer arrived.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A node or client setting is unusable (a config file, TLS files, a
    /// token): the message names it. Fix the setting; retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// The store itself failed (disk, corrupt data, an internal bug).
    #[error("storage failure: {message}")]
    Storage {
        /// What failed.
        message: String,
        /// The underlying cause.
        #[source]
        cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// An [`Error::Unavailable`] with no leader hint.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::Unavailable { message: message.into(), leader_hint: None }
    }

    /// An [`Error::Storage`] carrying `cause`.
    pub fn storage(message: impl Into<String>, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Storage { message: message.into(), cause: Some(cause.into()) }
    }

    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

impl From<sled::Error> for Error {
    fn from(error: sled::Error) -> Self {
        Error::storage("sled", error)
    }
}
