//! Every cap and default of runner-storage, each a documented constant.
//!
//! Bounds that depend on each other are tied together with compile-time
//! assertions at the end of the file, so changing one cannot silently break
//! another.

/// Longest runner address (`host:port`) in bytes; longer is `INVALID_ARGUMENT` (SPEC §6).
pub const ADDRESS_BYTES_MAX: usize = 255;

/// Longest namespace name in bytes; longer is `INVALID_ARGUMENT` (SPEC §3).
pub const NAMESPACE_BYTES_MAX: usize = 255;

/// Most namespaces that hold records or settings at once; a write that
/// would make one more is `RESOURCE_EXHAUSTED`. Each costs a few hundred
/// bytes empty; the bound keeps a flood of names from growing the state.
pub const NAMESPACES_MAX: usize = 1024;

/// Longest shard id (`group:id`) in bytes; longer is `INVALID_ARGUMENT` (SPEC §6).
pub const SHARD_ID_BYTES_MAX: usize = 255;

/// Largest runner JSON in bytes (16 KiB); larger is `INVALID_ARGUMENT` (SPEC §6).
pub const RUNNER_JSON_BYTES_MAX: usize = 16 * 1024;

/// Most shard ids in one `acquire` or `refresh`; more is `INVALID_ARGUMENT` (SPEC §6).
pub const SHARD_IDS_PER_CALL_MAX: usize = 10_000;

/// Default cluster-wide lock expiration `E`: Effect's `shardLockExpiration` default.
pub const LOCK_EXPIRATION_MS_DEFAULT: u64 = 35_000;

/// How much faster or slower than the leader's monotonic clock store time
/// may run while it steers toward the wall clock, in parts per million (1%).
/// Store time never trusts a wall clock further than this (SPEC §4): a
/// wall clock stepped by hours moves store time by at most 1% of the real
/// time that passes, so no step can expire a lock early by more than
/// [`lock_slack_ms`].
pub const STORE_TIME_SLEW_PPM: u64 = 10_000;

/// The part of a lock expiration `E` a holder may not count on: store time
/// runs at most [`STORE_TIME_SLEW_PPM`] fast, so `E` of store time lasts at
/// least `E × 10⁶ / (10⁶ + ppm)` of real time; 1 ms more covers the
/// millisecond truncation of stamps. From the moment its acquire or refresh
/// was sent, a holder owns the lock for `E − lock_slack_ms(E)` of its own
/// monotonic time (SPEC §4).
pub const fn lock_slack_ms(lock_expiration_ms: u64) -> u64 {
    let fast_ms =
        (lock_expiration_ms as u128 * STORE_TIME_SLEW_PPM as u128).div_ceil(1_000_000 + STORE_TIME_SLEW_PPM as u128);
    fast_ms as u64 + 1
}

/// Largest accepted lock expiration (one day): a longer `E` would keep dead
/// runners' shards locked for longer than any operator means to.
pub const LOCK_EXPIRATION_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// Default cap on registered runner records (SPEC §6, `RESOURCE_EXHAUSTED`).
pub const RUNNERS_MAX_DEFAULT: usize = 65_536;

/// Default cap on shard lock records (SPEC §6, `RESOURCE_EXHAUSTED`).
pub const LOCKS_MAX_DEFAULT: usize = 1_048_576;

/// Machine ids in `1..=MACHINE_ID_RESIDUES` are handed out first: Effect's
/// Snowflake ids use `machine_id mod 1024`.
pub const MACHINE_ID_RESIDUES: i64 = 1024;

/// Answers remembered per client for request-id deduplication (SPEC §6).
pub const DEDUP_SEQUENCES_PER_CLIENT_MAX: usize = 1024;

/// Clients remembered for deduplication at once. Past it the client seen least
/// recently is forgotten first, so a flood of client ids cannot grow memory.
pub const DEDUP_CLIENTS_MAX: usize = 16_384;

/// Bytes of remembered answers (roughly: shard ids, messages and per-entry
/// overhead), over all clients. 16,384 clients × 1,024 answers would
/// otherwise allow gigabytes; past this the least recently seen clients are
/// forgotten, as if they had gone idle (the client just seen always stays).
pub const DEDUP_BYTES_MAX: usize = 32 * 1024 * 1024;

/// A client unseen for this many lock expirations is forgotten (SPEC §6).
pub const DEDUP_CLIENT_IDLE_EXPIRATIONS: u64 = 10;

/// Longest cluster id, in bytes.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// Longest client id of a request id, in bytes.
pub const CLIENT_ID_BYTES_MAX: usize = 128;

/// Largest gRPC message a node accepts or sends (16 MiB): the largest legal
/// request and Raft snapshot chunks must fit.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Size of one snapshot chunk sent to a lagging follower.
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Times a follower forwards one call: once, straight to the leader it knows.
/// A forwarded call that lands on a non-leader is answered `UNAVAILABLE`
/// with a leader hint instead of being forwarded again, so no call loops.
pub const FORWARD_HOPS_MAX: u32 = 1;

/// Entries applied since the last snapshot before openraft builds a new one.
pub const SNAPSHOT_LOGS_SINCE_LAST_DEFAULT: u64 = 10_000;

/// Log entries kept behind the last snapshot for slow followers before purge.
pub const LOGS_KEPT_AFTER_SNAPSHOT_DEFAULT: u64 = 1_000;

/// Log appends waiting for the flusher at once; openraft's own pipeline
/// bounds how many appends are in flight, this bounds the queue between them.
pub const LOG_FLUSHES_QUEUED_MAX: usize = 1024;

/// Requests served at once on one client connection; more wait their turn.
pub const CONCURRENT_REQUESTS_PER_CONNECTION_MAX: usize = 1024;

/// Most envelopes in one Raft entry: concurrent writes share an entry (and
/// its fsync), see `proposer`.
pub const PROPOSAL_ENVELOPES_MAX: usize = 512;

/// Bytes of envelopes (roughly) after which a batch is closed.
pub const PROPOSAL_BYTES_MAX: usize = 1024 * 1024;

/// Largest single envelope in the log, roughly: a maximal acquire.
pub const ENVELOPE_BYTES_MAX: usize = SHARD_IDS_PER_CALL_MAX * (SHARD_ID_BYTES_MAX + 16) + RUNNER_JSON_BYTES_MAX;

/// Batches being committed at once; more writes wait in the queue and form
/// the next batches. Two: one replicating while the next is appended.
/// openraft 0.9's core appends (and flushes) one entry at a time, so more
/// in flight only makes smaller batches: 16 halved throughput, 4 was ~5%
/// below 2, and 1 ~5% below (bench, medians of 3, 3-node loopback).
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;

/// Writes waiting for a batch at once; more wait for room.
pub const PROPOSAL_QUEUE_MAX: usize = 4096;

/// Entries per AppendEntries message (openraft's max_payload_entries): with
/// entries of at most `PROPOSAL_BYTES_MAX + ENVELOPE_BYTES_MAX`, a message
/// stays within `GRPC_MESSAGE_BYTES_MAX`.
pub const REPLICATION_ENTRIES_MAX: u64 = 4;

// The largest legal acquire must fit in one gRPC message, with room for framing.
const _: () = assert!(SHARD_IDS_PER_CALL_MAX * (SHARD_ID_BYTES_MAX + 8) <= GRPC_MESSAGE_BYTES_MAX / 2);
// A snapshot chunk plus its envelope must fit in one gRPC message.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES * 2 <= GRPC_MESSAGE_BYTES_MAX);
// Every machine id residue must be available to the runner cap's first 1024 runners.
const _: () = assert!(RUNNERS_MAX_DEFAULT as i64 >= MACHINE_ID_RESIDUES);
const _: () = assert!(LOCK_EXPIRATION_MS_DEFAULT <= LOCK_EXPIRATION_MS_MAX);
// A holder keeps at least 98% of E whatever the clocks do.
const _: () = assert!(lock_slack_ms(LOCK_EXPIRATION_MS_DEFAULT) * 50 <= LOCK_EXPIRATION_MS_DEFAULT);
const _: () = assert!(STORE_TIME_SLEW_PPM < 1_000_000);
const _: () = assert!(FORWARD_HOPS_MAX == 1);
// A full AppendEntries message of maximal entries fits in one gRPC message.
const _: () =
    assert!(REPLICATION_ENTRIES_MAX as usize * (PROPOSAL_BYTES_MAX + ENVELOPE_BYTES_MAX) <= GRPC_MESSAGE_BYTES_MAX);

/// How long a leader sends unary appends to a peer that refused an append
/// stream (an older release) before it tries a stream again.
pub const APPEND_STREAM_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// Entries in one early append (`raft::early_replication`); an append of
/// more goes only the usual way. openraft appends one entry per proposal,
/// and at most `PROPOSALS_IN_FLIGHT_MAX` are outstanding.
pub const EARLY_ENTRIES_MAX: usize = REPLICATION_ENTRIES_MAX as usize;

/// Early appends queued or unanswered on one link at once; an offer beyond
/// is dropped, and its entries go the usual way. The proposer keeps two
/// batches in flight, so a link that keeps up holds two or three.
pub const EARLY_APPENDS_IN_FLIGHT_MAX: usize = 32;

/// Largest encoded early append: bigger ones (batches of large acquires)
/// go only the usual way, so a slow follower's link holds at most
/// `EARLY_APPENDS_IN_FLIGHT_MAX` × this (4 MiB) of the leader's memory.
pub const EARLY_APPEND_BYTES_MAX: usize = 128 * 1024;

/// Time to open a TCP (and TLS) connection before calling a node unreachable.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a link to a follower lives without openraft sending it
/// anything (heartbeats included): past it, the follower is no longer
/// replicated to (removed, or the leader stepped down) and gets no offers.
pub const EARLY_LINK_IDLE_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// How long an early link waits for its stream to open before it gives up
/// the offer at hand (the next offer tries again).
pub const EARLY_STREAM_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a new cluster's peers other than the lowest-id one wait for a
/// leader to reach them before they initialise the cluster themselves
/// (`Node::bootstrap_if_pristine`). Only the first start of a cluster whose
/// lowest peer is down pays it.
pub const BOOTSTRAP_DEFER: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest pause between attempts to reach a peer that refused or dropped
/// the connection; the pause is the heartbeat interval when that is
/// shorter (`raft::network`). Short, so a restarted node hears from the
/// leader soon after it comes up; a refused connect costs next to nothing.
pub const PEER_UNREACHABLE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Log entries a node keeps decoded in memory after appending them
/// (`raft::recent_entries`), so that replicating and applying them reads no
/// sled page and decodes nothing. Followers trail by a few entries and apply
/// follows commit closely; a peer further behind reads from sled.
pub const RECENT_ENTRIES_MAX: usize = 512;

/// Encoded bytes of log entries kept decoded in memory (their decoded form
/// takes a few times more); the latest entry is kept even when it alone is more.
pub const RECENT_ENTRIES_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Most async worker threads a node's config may ask for.
pub const WORKER_THREADS_MAX: usize = 1024;

/// sled's page cache (its default is 1 GiB). The state lives in memory
/// anyway; sled holds the log tail and the latest snapshot, so a small
/// cache keeps a node's memory bounded without slowing the hot path, which
/// only appends.
pub const SLED_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Longest a node holds a call it cannot place because the known leader
/// refused the connection (it died): long enough to cover an election
/// (lease + timeout + tick, 270–395 ms with the defaults, more when a vote
/// splits), short of the client's attempt timeout. The caller's own deadline
/// shortens it.
pub const LEADER_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(1_500);

/// Longest a stopping node (SIGTERM, Ctrl-C) waits for the calls in flight
/// before it stops Raft and exits. A write commits in milliseconds; a call
/// held for a leader is cut short and its caller retries elsewhere. Bounded
/// because a stopping leader keeps heartbeating while it drains, so no
/// other node takes over until it is gone.
pub const SHUTDOWN_DRAIN_MAX: std::time::Duration = std::time::Duration::from_millis(1_000);

/// Longest a leadership hand-over may take (`ctl transfer-leader`):
/// catching up the target, a lease, an election.
pub const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(2_000);

/// Longest a leader that was told to stop (SIGTERM) spends handing
/// leadership over before it drains and stops anyway.
pub const SHUTDOWN_HANDOVER_MAX: std::time::Duration = std::time::Duration::from_millis(1_500);

/// Longest a stopping node waits for Raft to stop and sled's final flush
/// after the drain; then it exits anyway (acknowledged writes are on disk).
pub const SHUTDOWN_RAFT_MAX: std::time::Duration = std::time::Duration::from_millis(2_000);

/// Longest a node holds a call while it knows no leader at all. Shorter than
/// [`LEADER_WAIT_MAX`]: a node cut off from the others knows no leader for
/// as long as the partition lasts, and its callers should soon try another.
pub const NO_LEADER_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest a write or read waits for Raft (commit, or the read barrier)
/// before answering `UNAVAILABLE`. A leader that lost its quorum answers
/// sooner (`raft::quorum`); this bounds everything else.
pub const RAFT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Attempts a node makes to place one call while it waits for a leader.
pub const LEADER_WAIT_ATTEMPTS_MAX: usize = 4;

// ---- Membership ------------------------------------------------------------

/// Longest a membership change waits: adding a learner waits for it to
/// catch up, which may mean sending a whole snapshot.
pub const MEMBERSHIP_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Longest the leader waits for a new node to answer its probe.
pub const NEW_NODE_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Longest a new learner may take to catch up before it is removed again.
/// Shorter than the client's default deadline, so the caller gets the reason.
pub const LEARNER_CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// How often the leader looks at a new learner's replication progress.
pub const LEARNER_PROGRESS_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a freshly bootstrapped node keeps trying to write the
/// configured initial lock expiration.
pub const INITIAL_LOCK_EXPIRATION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
/// How often a node that waits to lead, to write what a new cluster's
/// first leader writes (the initial lock expiration, the cluster's id),
/// looks again.
pub const FIRST_LEADER_WRITE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

// ---- The service -------------------------------------------------------------

/// Most records one `ListRunners`/`ListLocks` answer holds; a larger table is cut.
pub const LIST_RECORDS_MAX: usize = 100_000;

/// Time a node keeps for its answer when it holds a call for a leader:
/// it stops waiting this long before the caller's deadline.
pub const LEADER_WAIT_ANSWER_MARGIN: std::time::Duration = std::time::Duration::from_millis(100);

/// How often a node re-evaluates its gRPC health status.
pub const HEALTH_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

// ---- The Rust client -----------------------------------------------------------

/// Default time one call may take, retries included.
pub const CALL_DEADLINE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest one attempt may take before the client tries another endpoint:
/// a paused or partitioned node must not hold the call for its whole
/// deadline; longer than a node may hold a call for a leader plus a commit.
pub const ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// First pause between attempts; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest pause between attempts: short, so a client notices a new leader
/// soon after an election (one that waited 250 ms added that to failovers).
pub const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_millis(100);
/// How long one of the eight calls waits for an answer before the client
/// also sends it to another node (a hedged request: the first answer wins).
/// A write carries a request id, so a second placement is answered from the
/// leader's deduplication table, never applied twice. A leader that stops
/// answering (paused, cut off) then costs its callers this, not an attempt
/// timeout: the other node forwards to the new leader once one is elected.
/// Far above a healthy call's latency (a millisecond; tens under load).
pub const HEDGE_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

// ---- Election nudges and append streams ------------------------------------------

/// Election nudges waiting to be acted on; more are dropped (a nudge only
/// hastens an election the timers would start anyway).
pub const NUDGES_QUEUED_MAX: usize = 16;

/// Append requests sent but not yet taken by the transport: one, since
/// openraft waits for each answer before it sends the next request.
pub const APPEND_STREAM_REQUESTS_BUFFERED_MAX: usize = 1;

// A node may hold a call for a leader and then wait for the commit: the
// client's attempt must outlast both, or it abandons calls about to succeed.
const _: () = assert!(LEADER_WAIT_MAX.as_millis() + RAFT_CALL_TIMEOUT.as_millis() <= ATTEMPT_TIMEOUT.as_millis());
// A call gets at least two attempts within its default deadline.
const _: () = assert!(2 * ATTEMPT_TIMEOUT.as_millis() <= CALL_DEADLINE_DEFAULT.as_millis());
// A hedge goes out well before an attempt gives up; backoff grows, within bounds.
const _: () = assert!(HEDGE_AFTER.as_millis() * 4 <= ATTEMPT_TIMEOUT.as_millis());
const _: () = assert!(BACKOFF_INITIAL.as_millis() <= BACKOFF_MAX.as_millis());
const _: () = assert!(BACKOFF_MAX.as_millis() < HEDGE_AFTER.as_millis());
// Knowing no leader holds a call for less than a known but dead leader does.
const _: () = assert!(NO_LEADER_WAIT_MAX.as_millis() <= LEADER_WAIT_MAX.as_millis());
const _: () = assert!(LEADER_WAIT_ANSWER_MARGIN.as_millis() < NO_LEADER_WAIT_MAX.as_millis());
// The reason a learner was removed reaches a caller on the default deadline,
// and a membership change outlasts the probe and the catch-up it waits for.
const _: () = assert!(LEARNER_CATCH_UP_TIMEOUT.as_millis() < CALL_DEADLINE_DEFAULT.as_millis());
const _: () = assert!(
    NEW_NODE_PROBE_TIMEOUT.as_millis() + LEARNER_CATCH_UP_TIMEOUT.as_millis() <= MEMBERSHIP_CHANGE_TIMEOUT.as_millis()
);
// Connecting is a small part of an attempt.
const _: () = assert!(CONNECT_TIMEOUT.as_millis() * 4 <= ATTEMPT_TIMEOUT.as_millis());
