//! What openraft 0.9 lacks, fenced in one place. Each piece reaches the
//! rest only through a narrow interface: the log store's
//! [`AppendObserver`](crate::raft::storage::log_store::AppendObserver), the
//! transport's [`RaftEvents`](crate::raft::transport::RaftEvents) and
//! [`AppendShortcut`](crate::raft::transport::AppendShortcut), and the
//! node's calls at start-up. Each says which upstream change retires it.
//!
//! - [`early_replication`]: the leader sends new entries to its followers
//!   while its own flush runs (0.9 replicates only after it). Retired by an
//!   openraft that replicates before the leader's flush completes.
//! - [`election`]: campaign at once when an election's outcome is clear,
//!   and re-draw the delay after a split vote (0.9 draws the election
//!   timeout once per process, issue #1838). Retired by openraft 0.10's
//!   per-election timeouts and its faster elections.
//! - [`handover`]: planned leadership hand-over (0.9 has no leader
//!   transfer): stop heartbeats, let the leases run out, ask an up-to-date
//!   voter to campaign. Retired by 0.10's `trigger().transfer_leader()`.
//! - [`quorum`]: a leader that hears from no quorum refuses calls at once
//!   (0.9 has no check-quorum or step-down). Retired by a leader that
//!   steps down, without a term change, when its quorum is gone.
//! - [`restart`]: a restarted leader never resumes its term (0.9 resumes
//!   it from its log as it is on disk). Retired by an openraft that starts
//!   every node as a follower.

pub mod early_replication;
pub mod election;
pub mod handover;
pub mod quorum;
pub mod restart;
