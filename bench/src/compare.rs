//! `runner-storage-bench compare-etcd`: runner-storage and etcd side by
//! side, on the same machine, in the same minutes.
//!
//! Each pair of workloads ([`pairs`]) runs at each concurrency `--runs`
//! times per side, alternating — runner-storage first in odd runs, etcd
//! first in even ones — so that the drift of a shared machine falls on both
//! sides alike. Both clusters stay up for the whole comparison; a side
//! that is not running is idle, not stopped. The table gives each side's
//! medians and their ratios; `--json` also holds every run.

use serde::Serialize;

use crate::report::{print_run, print_run_header, Summary};
use crate::workloads::{AcquireArgs, GetRunnersArgs};
use crate::{run_once, wait_for_leader, BenchArgs, RunPlan, Workload};

/// The workloads compared: runner-storage's, then etcd's counterpart.
pub fn pairs() -> [(Workload, Workload); 3] {
    [
        (Workload::Register, Workload::EtcdPut),
        (Workload::Acquire(AcquireArgs::default()), Workload::EtcdLock(AcquireArgs::default())),
        (Workload::GetRunners(GetRunnersArgs::default()), Workload::EtcdRange(GetRunnersArgs::default())),
    ]
}

/// The medians of both sides of one pair at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct PairSummary {
    /// runner-storage's medians.
    pub ours: Summary,
    /// etcd's medians.
    pub etcd: Summary,
    /// Our median ops/s over etcd's (above 1: runner-storage is faster).
    pub ops_ratio: f64,
    /// etcd's median p50 over ours (above 1: runner-storage answers sooner).
    pub p50_ratio: f64,
}

impl PairSummary {
    fn new(ours: Summary, etcd: Summary) -> Self {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        PairSummary {
            ops_ratio: ratio(ours.ops_per_s, etcd.ops_per_s),
            p50_ratio: ratio(etcd.p50_ms, ours.p50_ms),
            ours,
            etcd,
        }
    }
}

/// Runs the comparison.
///
/// # Errors
/// When either cluster has no leader, or a run's setup or teardown fails.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    wait_for_leader(&args.endpoints).await?;
    if !args.json {
        print_run_header();
    }
    let mut reports = Vec::new();
    let mut summaries = Vec::new();
    for (ours, etcd) in pairs() {
        for &concurrency in &args.concurrency {
            let mut our_runs = Vec::new();
            let mut etcd_runs = Vec::new();
            for run in 1..=args.runs {
                let order = if run % 2 == 1 { [&ours, &etcd] } else { [&etcd, &ours] };
                for workload in order {
                    let report = run_once(workload, &RunPlan::of(args, workload, concurrency), run).await?;
                    if args.json {
                        eprintln!("{} C={} run {}: done", report.workload, report.concurrency, run);
                    } else {
                        print_run(&report);
                    }
                    if std::ptr::eq(workload, &ours) {
                        our_runs.push(report);
                    } else {
                        etcd_runs.push(report);
                    }
                }
            }
            if let (Some(ours), Some(etcd)) = (Summary::of(&our_runs), Summary::of(&etcd_runs)) {
                summaries.push(PairSummary::new(ours, etcd));
            }
            reports.extend(our_runs);
            reports.extend(etcd_runs);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "runs": reports, "pairs": summaries }))?);
    } else {
        print_pairs(&summaries);
    }
    Ok(())
}

fn print_pairs(pairs: &[PairSummary]) {
    println!();
    println!("runner-storage against etcd, medians of the primary call (ratio > 1: runner-storage ahead):");
    println!(
        "{:<12} {:<11} {:>5} {:>10} {:>10} {:>6} {:>8} {:>8} {:>6} {:>8} {:>8} {:>7}",
        "OURS",
        "ETCD",
        "C",
        "OPS/S",
        "ETCD OPS/S",
        "RATIO",
        "P50 ms",
        "ETCD P50",
        "RATIO",
        "P99 ms",
        "ETCD P99",
        "ERRORS"
    );
    for pair in pairs {
        let (ours, etcd) = (&pair.ours, &pair.etcd);
        println!(
            "{:<12} {:<11} {:>5} {:>10.1} {:>10.1} {:>5.2}x {:>8.2} {:>8.2} {:>5.2}x {:>8.2} {:>8.2} {:>7}",
            ours.workload,
            etcd.workload,
            ours.concurrency,
            ours.ops_per_s,
            etcd.ops_per_s,
            pair.ops_ratio,
            ours.p50_ms,
            etcd.p50_ms,
            pair.p50_ratio,
            ours.p99_ms,
            etcd.p99_ms,
            ours.errors + etcd.errors
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_is_one_of_ours_against_one_of_etcds() {
        for (ours, etcd) in pairs() {
            assert!(!ours.is_etcd(), "{} is not runner-storage's", ours.name());
            assert!(etcd.is_etcd(), "{} is not etcd's", etcd.name());
        }
    }
}
