//! What one bench run measured, and how it is printed.
//!
//! Each task owns a [`Recorder`] (no locks, no shared counters on the hot
//! path); the driver merges them when the tasks end. A merged recorder
//! becomes a [`RunReport`]; [`Summary`] takes the median over repeated runs.
//! This module does no I/O except the `print_*` functions.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use runner_storage::Error;

/// Longest latency a histogram holds (60 s): longer than any call deadline,
/// so no measured call is clamped.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits of the histograms (0.1 % resolution).
const LATENCY_DIGITS: u8 = 3;

/// The calls a bench measures, one histogram each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Call {
    /// `register`.
    Register,
    /// `unregister`.
    Unregister,
    /// `getRunners`.
    GetRunners,
    /// `acquire`.
    Acquire,
    /// `refresh`.
    Refresh,
    /// `release`.
    Release,
    /// `releaseAll`.
    ReleaseAll,
    /// etcd: a put of a 16-byte value.
    EtcdPut,
    /// etcd: the lock transaction (put-if-absent with a lease, else read the holder).
    EtcdLock,
    /// etcd: the delete that releases a lock.
    EtcdUnlock,
    /// etcd: a linearizable range read.
    EtcdRange,
}

impl Call {
    /// Every call, in the order of the tables.
    pub const ALL: [Call; 11] = [
        Call::Register,
        Call::Unregister,
        Call::GetRunners,
        Call::Acquire,
        Call::Refresh,
        Call::Release,
        Call::ReleaseAll,
        Call::EtcdPut,
        Call::EtcdLock,
        Call::EtcdUnlock,
        Call::EtcdRange,
    ];

    /// The call's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Call::Register => "register",
            Call::Unregister => "unregister",
            Call::GetRunners => "get_runners",
            Call::Acquire => "acquire",
            Call::Refresh => "refresh",
            Call::Release => "release",
            Call::ReleaseAll => "release_all",
            Call::EtcdPut => "etcd_put",
            Call::EtcdLock => "etcd_lock_txn",
            Call::EtcdUnlock => "etcd_unlock",
            Call::EtcdRange => "etcd_range",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The measured part of a run: calls started before `measure_from` (the
/// warm-up) are not counted, and no call is started at or after `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Start of measurement (end of warm-up).
    pub measure_from: Instant,
    /// End of the run: tasks start no call after it.
    pub end: Instant,
}

impl Window {
    /// A window whose warm-up starts now.
    pub fn starting_now(warmup: Duration, duration: Duration) -> Self {
        let measure_from = Instant::now() + warmup;
        Window { measure_from, end: measure_from + duration }
    }

    /// Whether a task may start another call.
    pub fn running(&self) -> bool {
        Instant::now() < self.end
    }
}

/// The gRPC-level kind of a failed call, for the error columns.
pub fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::InvalidArgument(_) => "invalid_argument",
        Error::ResourceExhausted(_) => "resource_exhausted",
        Error::FailedPrecondition(_) => "failed_precondition",
        Error::Unavailable { .. } => "unavailable",
        Error::DeadlineExceeded(_) => "deadline_exceeded",
        Error::Unauthenticated(_) => "unauthenticated",
        Error::Config(_) => "config",
        Error::Storage { .. } => "storage",
    }
}

/// One task's measurements: a latency histogram per call, errors by call and
/// kind, and named counters (`notes`) for workload-specific outcomes.
///
/// A histogram (~140 KB at these bounds) is made on a call's first success:
/// a task makes two or three kinds of call, and a run has up to
/// [`crate::CONCURRENCY_MAX`] tasks.
pub struct Recorder {
    histograms: Vec<Option<Histogram<u64>>>,
    errors: BTreeMap<(Call, &'static str), u64>,
    notes: BTreeMap<&'static str, u64>,
}

fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_DIGITS)
        .expect("constant histogram bounds are valid: 1 <= low, high >= 2 * low, digits <= 5")
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Recorder { histograms: vec![None; Call::ALL.len()], errors: BTreeMap::new(), notes: BTreeMap::new() }
    }

    /// Records one call that started at `start` and just ended with `result`.
    ///
    /// A success counts when the call started in the measured part and ended
    /// by its end; an error counts when it started in the measured part.
    pub fn record<T>(&mut self, call: Call, window: &Window, start: Instant, result: &runner_storage::Result<T>) {
        if start < window.measure_from {
            return;
        }
        match result {
            Ok(_) => {
                let done = Instant::now();
                if done <= window.end {
                    let latency_us = u64::try_from(done.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                    self.histograms[call.index()]
                        .get_or_insert_with(empty_histogram)
                        .saturating_record(latency_us.max(1));
                }
            }
            Err(error) => *self.errors.entry((call, error_kind(error))).or_default() += 1,
        }
    }

    /// Counts `count` of the outcome `name` for a call that started at `start`,
    /// when it started in the measured part.
    pub fn note(&mut self, window: &Window, start: Instant, name: &'static str, count: u64) {
        if start >= window.measure_from {
            self.note_always(name, count);
        }
    }

    /// Counts `count` of the outcome `name`, measured part or not (setup, teardown, tasks).
    pub fn note_always(&mut self, name: &'static str, count: u64) {
        *self.notes.entry(name).or_default() += count;
    }

    /// Adds `other`'s measurements to this recorder.
    pub fn merge(&mut self, other: Recorder) {
        for (mine, theirs) in self.histograms.iter_mut().zip(&other.histograms) {
            let Some(theirs) = theirs else { continue };
            // Both histograms have the same bounds, so adding cannot fail.
            let _ = mine.get_or_insert_with(empty_histogram).add(theirs);
        }
        for (key, count) in other.errors {
            *self.errors.entry(key).or_default() += count;
        }
        for (name, count) in other.notes {
            *self.notes.entry(name).or_default() += count;
        }
    }
}

/// Latency and throughput of one call over one run.
#[derive(Debug, Clone, Serialize)]
pub struct CallStats {
    /// The call's name.
    pub call: &'static str,
    /// Successful calls in the measured part.
    pub ops: u64,
    /// `ops` per second of the measured part.
    pub ops_per_s: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency, milliseconds.
    pub max_ms: f64,
    /// Failed calls by kind.
    pub errors: BTreeMap<&'static str, u64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The workload's name.
    pub workload: &'static str,
    /// Concurrent tasks (simulated runners).
    pub concurrency: usize,
    /// Which repetition (1-based).
    pub run: usize,
    /// Length of the measured part, seconds.
    pub measured_s: f64,
    /// The call the workload is about (its headline figure).
    pub primary: &'static str,
    /// Successful calls of every kind per second.
    pub total_ops_per_s: f64,
    /// Per call, the calls that happened.
    pub calls: Vec<CallStats>,
    /// Workload-specific counters (conflicts, lost locks, late ticks, …).
    pub notes: BTreeMap<&'static str, u64>,
    /// The machine's 1-minute load average at the end of the run: the bench,
    /// the nodes and anything else share the cores, so a high figure means
    /// the run competed for CPU.
    pub load_average_1m: Option<f64>,
}

/// The 1-minute load average (Linux `/proc/loadavg`), when the machine has one.
pub fn load_average_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn ms(latency_us: u64) -> f64 {
    latency_us as f64 / 1000.0
}

impl RunReport {
    /// The report of a merged recorder over a measured part of `measured`.
    pub fn new(
        workload: &'static str,
        primary: Call,
        concurrency: usize,
        run: usize,
        measured: Duration,
        recorder: Recorder,
    ) -> Self {
        let measured_s = measured.as_secs_f64();
        let mut calls = Vec::new();
        for call in Call::ALL {
            let empty = empty_histogram();
            let histogram = recorder.histograms[call.index()].as_ref().unwrap_or(&empty);
            let errors: BTreeMap<&'static str, u64> =
                recorder.errors.iter().filter(|((c, _), _)| *c == call).map(|((_, kind), n)| (*kind, *n)).collect();
            if histogram.is_empty() && errors.is_empty() && call != primary {
                continue;
            }
            calls.push(CallStats {
                call: call.name(),
                ops: histogram.len(),
                ops_per_s: histogram.len() as f64 / measured_s,
                p50_ms: ms(histogram.value_at_quantile(0.5)),
                p99_ms: ms(histogram.value_at_quantile(0.99)),
                max_ms: ms(histogram.max()),
                errors,
            });
        }
        let total_ops: u64 = calls.iter().map(|c| c.ops).sum();
        RunReport {
            workload,
            concurrency,
            run,
            measured_s,
            primary: primary.name(),
            total_ops_per_s: total_ops as f64 / measured_s,
            calls,
            notes: recorder.notes,
            load_average_1m: load_average_1m(),
        }
    }

    /// The stats of the primary call.
    pub fn primary_stats(&self) -> Option<&CallStats> {
        self.calls.iter().find(|c| c.call == self.primary)
    }
}

/// Medians over the runs of one workload at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The workload's name.
    pub workload: &'static str,
    /// Concurrent tasks.
    pub concurrency: usize,
    /// How many runs the medians are over.
    pub runs: usize,
    /// The headline call.
    pub primary: &'static str,
    /// Median ops/s of the primary call.
    pub ops_per_s: f64,
    /// Median p50 of the primary call, ms.
    pub p50_ms: f64,
    /// Median p99 of the primary call, ms.
    pub p99_ms: f64,
    /// Median max of the primary call, ms.
    pub max_ms: f64,
    /// Median ops/s of every call together.
    pub total_ops_per_s: f64,
    /// Errors of every call summed over the runs.
    pub errors: u64,
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

impl Summary {
    /// Medians of `runs`, which are of one workload at one concurrency.
    pub fn of(runs: &[RunReport]) -> Option<Self> {
        let first = runs.first()?;
        let primary = |f: fn(&CallStats) -> f64| median(runs.iter().filter_map(|r| r.primary_stats().map(f)).collect());
        Some(Summary {
            workload: first.workload,
            concurrency: first.concurrency,
            runs: runs.len(),
            primary: first.primary,
            ops_per_s: primary(|c| c.ops_per_s),
            p50_ms: primary(|c| c.p50_ms),
            p99_ms: primary(|c| c.p99_ms),
            max_ms: primary(|c| c.max_ms),
            total_ops_per_s: median(runs.iter().map(|r| r.total_ops_per_s).collect()),
            errors: runs.iter().flat_map(|r| &r.calls).flat_map(|c| c.errors.values()).sum(),
        })
    }
}

fn errors_text(errors: &BTreeMap<&'static str, u64>) -> String {
    if errors.is_empty() {
        return "-".into();
    }
    errors.iter().map(|(kind, n)| format!("{kind}={n}")).collect::<Vec<_>>().join(",")
}

/// Prints the header of the per-run table.
pub fn print_run_header() {
    println!(
        "{:<12} {:>5} {:>3} {:<12} {:>9} {:>10} {:>8} {:>8} {:>8}  errors",
        "WORKLOAD", "C", "RUN", "CALL", "OPS", "OPS/S", "P50 ms", "P99 ms", "MAX ms"
    );
}

/// Prints one run: a line per call, then its notes.
pub fn print_run(report: &RunReport) {
    for (i, call) in report.calls.iter().enumerate() {
        let (workload, concurrency, run) = if i == 0 {
            (report.workload.to_string(), report.concurrency.to_string(), report.run.to_string())
        } else {
            (String::new(), String::new(), String::new())
        };
        println!(
            "{:<12} {:>5} {:>3} {:<12} {:>9} {:>10.1} {:>8.2} {:>8.2} {:>8.2}  {}",
            workload,
            concurrency,
            run,
            call.call,
            call.ops,
            call.ops_per_s,
            call.p50_ms,
            call.p99_ms,
            call.max_ms,
            errors_text(&call.errors)
        );
    }
    let notes: Vec<String> = report.notes.iter().map(|(name, n)| format!("{name}={n}")).collect();
    println!(
        "{:<12} {:>5} {:>3} {:<12} total {:.1} ops/s over {:.1} s, load {:.1}{}{}",
        "",
        "",
        "",
        "",
        report.total_ops_per_s,
        report.measured_s,
        report.load_average_1m.unwrap_or(f64::NAN),
        if notes.is_empty() { "" } else { "; " },
        notes.join(" ")
    );
}

/// Prints the medians table.
pub fn print_summaries(summaries: &[Summary]) {
    println!();
    println!("medians of the primary call per workload and concurrency:");
    println!(
        "{:<12} {:>5} {:>4} {:<12} {:>10} {:>8} {:>8} {:>8} {:>11} {:>7}",
        "WORKLOAD", "C", "RUNS", "CALL", "OPS/S", "P50 ms", "P99 ms", "MAX ms", "ALL OPS/S", "ERRORS"
    );
    for s in summaries {
        println!(
            "{:<12} {:>5} {:>4} {:<12} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>11.1} {:>7}",
            s.workload,
            s.concurrency,
            s.runs,
            s.primary,
            s.ops_per_s,
            s.p50_ms,
            s.p99_ms,
            s.max_ms,
            s.total_ops_per_s,
            s.errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn recorder_counts_only_the_measured_part() {
        let now = Instant::now();
        let window = Window { measure_from: now, end: now + Duration::from_secs(60) };
        let mut recorder = Recorder::new();
        recorder.record(Call::Acquire, &window, now - Duration::from_millis(1), &Ok(()));
        recorder.record(Call::Acquire, &window, now, &Ok(()));
        recorder.record::<()>(Call::Acquire, &window, now, &Err(Error::unavailable("no leader")));
        let report = RunReport::new("acquire", Call::Acquire, 1, 1, Duration::from_secs(1), recorder);
        let stats = report.primary_stats().expect("primary call is always reported");
        assert_eq!(stats.ops, 1);
        assert_eq!(stats.errors.get("unavailable"), Some(&1));
    }

    #[test]
    fn merge_adds_histograms_errors_and_notes() {
        let now = Instant::now();
        let window = Window { measure_from: now, end: now + Duration::from_secs(60) };
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.record(Call::Refresh, &window, now, &Ok(()));
        b.record(Call::Refresh, &window, now, &Ok(()));
        b.note(&window, now, "refresh.lost", 2);
        a.merge(b);
        let report = RunReport::new("refresh", Call::Refresh, 2, 1, Duration::from_secs(2), a);
        assert_eq!(report.primary_stats().map(|c| c.ops), Some(2));
        assert_eq!(report.notes.get("refresh.lost"), Some(&2));
        assert_eq!(report.total_ops_per_s, 1.0);
    }
}
