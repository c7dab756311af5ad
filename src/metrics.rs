//! Prometheus metrics of a node, in the text exposition format.
//!
//! Call counters, latency histograms and errors by code are recorded as calls
//! complete; Raft and state gauges are read from the node when scraped, so
//! they cost nothing between scrapes.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::raft::storage::sm_store::AppliedState;

/// Labels of a per-call metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The RPC, e.g. `acquire`.
    pub call: &'static str,
}

/// Labels of an error count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The RPC.
    pub call: &'static str,
    /// The gRPC status code name, e.g. `InvalidArgument`.
    pub code: String,
}

/// Raft's view of a node at scrape time.
#[derive(Debug, Clone, Default)]
pub struct RaftView {
    /// 1 leader, 2 follower, 3 candidate, 4 learner, 0 shut down.
    pub role: i64,
    /// Current term.
    pub term: u64,
    /// Known leader id, 0 when none.
    pub leader_id: u64,
    /// Last committed index.
    pub commit_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last purged index.
    pub purged_index: u64,
    /// Index of the latest snapshot.
    pub snapshot_index: u64,
    /// Bytes of the data dir.
    pub disk_bytes: u64,
    /// Bytes of the latest snapshot.
    pub snapshot_bytes: u64,
    /// Resident memory of this process, 0 where unknown.
    pub resident_memory_bytes: u64,
    /// Flushes of the Raft log (group commit).
    pub log_flushes: u64,
    /// Appends those flushes acknowledged.
    pub log_flushed_appends: u64,
    /// Seconds spent flushing the log.
    pub log_flush_seconds: f64,
    /// Appends of entries answered from their early copy (leader).
    pub early_answered_appends: u64,
    /// Appends of entries sent the usual way with early replication on (leader).
    pub early_usual_appends: u64,
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: Family<CallLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    raft: RaftGauges,
}

#[derive(Default)]
struct RaftGauges {
    role: Gauge,
    term: Gauge,
    leader_id: Gauge,
    commit_index: Gauge,
    applied_index: Gauge,
    apply_lag: Gauge,
    log_entries: Gauge,
    snapshot_index: Gauge,
    disk_bytes: Gauge,
    snapshot_bytes: Gauge,
    resident_memory_bytes: Gauge,
    live_runners: Gauge,
    runner_records: Gauge,
    held_locks: Gauge,
    lock_records: Gauge,
    namespaces: Gauge,
    dedup_clients: Gauge,
    dedup_answers: Gauge,
    dedup_bytes: Gauge,
    log_flushes: Gauge,
    log_flushed_appends: Gauge,
    log_flush_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    early_answered_appends: Gauge,
    early_usual_appends: Gauge,
}

/// Latency buckets: 100 µs doubling to ~3.3 s.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_1, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every metric of a node.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("runner_storage");
        let calls = Family::<CallLabels, Counter>::default();
        let call_seconds =
            Family::<CallLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("calls", "Client calls completed, by call", calls.clone());
        registry.register("call_seconds", "Latency of client calls, by call", call_seconds.clone());
        registry.register("errors", "Client calls that failed, by call and gRPC code", errors.clone());
        let raft = RaftGauges::default();
        let gauges: [(&str, &str, &Gauge); 19] = [
            ("raft_role", "1 leader, 2 follower, 3 candidate, 4 learner, 0 shut down", &raft.role),
            ("raft_term", "Current Raft term", &raft.term),
            ("raft_leader_id", "Known leader's node id, 0 when none", &raft.leader_id),
            ("raft_commit_index", "Last committed log index", &raft.commit_index),
            ("raft_applied_index", "Last applied log index", &raft.applied_index),
            ("raft_apply_lag", "Committed but not yet applied entries", &raft.apply_lag),
            ("raft_log_entries", "Entries in the log (last index - purged index)", &raft.log_entries),
            ("raft_snapshot_index", "Log index of the latest snapshot", &raft.snapshot_index),
            ("disk_bytes", "Bytes of the data dir (sled's estimate)", &raft.disk_bytes),
            ("snapshot_bytes", "Bytes of the latest snapshot", &raft.snapshot_bytes),
            ("resident_memory_bytes", "Resident memory (RSS) of the node process", &raft.resident_memory_bytes),
            ("live_runners", "Runners whose heartbeat is within the lock expiration", &raft.live_runners),
            ("runner_records", "Runner records, live or not", &raft.runner_records),
            ("held_locks", "Shard locks within the lock expiration", &raft.held_locks),
            ("lock_records", "Shard lock records, held or expired", &raft.lock_records),
            ("namespaces", "Namespaces holding records or settings", &raft.namespaces),
            ("dedup_clients", "Clients whose write answers are remembered for retries", &raft.dedup_clients),
            ("dedup_answers", "Write answers remembered for retries", &raft.dedup_answers),
            ("dedup_bytes", "Bytes of remembered answers, as their bound counts them", &raft.dedup_bytes),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register("log_flushes", "Flushes (fsyncs) of the Raft log since start", raft.log_flushes.clone());
        registry.register(
            "log_flushed_appends",
            "Log appends acknowledged by those flushes (appends / flushes = appends per fsync; 1 while openraft has one append in flight)",
            raft.log_flushed_appends.clone(),
        );
        registry.register("log_flush_seconds", "Seconds spent flushing the Raft log", raft.log_flush_seconds.clone());
        registry.register(
            "early_answered_appends",
            "Appends to followers answered from the early copy sent while the leader flushed",
            raft.early_answered_appends.clone(),
        );
        registry.register(
            "early_usual_appends",
            "Appends to followers sent the usual way, after the leader's flush, with early replication on",
            raft.early_usual_appends.clone(),
        );
        Metrics { registry, calls, call_seconds, errors, raft }
    }

    /// Records one completed call.
    pub fn record_call(&self, call: &'static str, elapsed: Duration, error_code: Option<tonic::Code>) {
        let labels = CallLabels { call };
        self.calls.get_or_create(&labels).inc();
        self.call_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if let Some(code) = error_code {
            self.errors.get_or_create(&ErrorLabels { call, code: format!("{code:?}") }).inc();
        }
    }

    /// The text exposition of every metric, gauges read from `raft` and `applied`.
    pub fn render(&self, raft: &RaftView, applied: &AppliedState, now_ms: u64) -> String {
        let gauges = &self.raft;
        let set = |gauge: &Gauge, value: u64| gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauges.role.set(raft.role);
        set(&gauges.term, raft.term);
        set(&gauges.leader_id, raft.leader_id);
        set(&gauges.commit_index, raft.commit_index);
        set(&gauges.applied_index, raft.applied_index);
        set(&gauges.apply_lag, raft.commit_index.saturating_sub(raft.applied_index));
        set(&gauges.log_entries, raft.last_log_index.saturating_sub(raft.purged_index));
        set(&gauges.snapshot_index, raft.snapshot_index);
        set(&gauges.disk_bytes, raft.disk_bytes);
        set(&gauges.snapshot_bytes, raft.snapshot_bytes);
        set(&gauges.resident_memory_bytes, raft.resident_memory_bytes);
        set(&gauges.log_flushes, raft.log_flushes);
        set(&gauges.log_flushed_appends, raft.log_flushed_appends);
        gauges.log_flush_seconds.set(raft.log_flush_seconds);
        set(&gauges.early_answered_appends, raft.early_answered_appends);
        set(&gauges.early_usual_appends, raft.early_usual_appends);
        let state = &applied.state;
        let now_ms = now_ms.max(state.now_ms());
        let namespaces = state.namespaces().values();
        let count = |of: &dyn Fn(&crate::state_machine::Namespace) -> usize| namespaces.clone().map(of).sum::<usize>();
        set(&gauges.live_runners, count(&|n| n.runners().values().filter(|r| n.is_live(r, now_ms)).count()) as u64);
        set(&gauges.runner_records, count(&|n| n.runners().len()) as u64);
        set(&gauges.held_locks, count(&|n| n.locks().values().filter(|l| n.is_held(l, now_ms)).count()) as u64);
        set(&gauges.lock_records, count(&|n| n.locks().len()) as u64);
        set(&gauges.namespaces, state.namespaces().len() as u64);
        let (dedup_clients, dedup_answers) = state.dedup_sizes();
        set(&gauges.dedup_clients, dedup_clients as u64);
        set(&gauges.dedup_answers, dedup_answers as u64);
        set(&gauges.dedup_bytes, state.dedup_bytes() as u64);
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "metrics encoding failed");
        }
        text
    }
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), 0 where
/// the file is missing (not Linux) or unreadable.
pub fn resident_memory_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
