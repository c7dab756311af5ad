//! The summary of a run: what was done (faults by kind, operations by call
//! and outcome), what the checkers found, and recovery times; written as
//! `summary.json` and `summary.txt` beside `history.jsonl`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkers::Verdicts;
use crate::history::{History, Outcome};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub profile: String,
    pub seed: u64,
    pub nodes: u64,
    pub lab_mode: String,
    pub fault_kinds: Vec<String>,
    pub duration_s: f64,
    pub faults_total: usize,
    pub faults_by_kind: BTreeMap<String, usize>,
    pub ops_total: usize,
    pub ops_by_call: BTreeMap<String, Counts>,
    pub notes: Vec<String>,
    pub verdicts: Verdicts,
    pub history_path: PathBuf,
}

impl Summary {
    pub fn new(profile: &str, history: &History, verdicts: Verdicts, history_path: PathBuf) -> Summary {
        let info = history.info.clone().expect("run info");
        let mut faults_by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for fault in &history.faults {
            *faults_by_kind.entry(fault.kind.clone()).or_default() += 1;
        }
        let mut ops_by_call: BTreeMap<String, Counts> = BTreeMap::new();
        for op in &history.ops {
            let counts = ops_by_call.entry(op.call.name().into()).or_default();
            match op.outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Failed => counts.failed += 1,
                Outcome::Unknown => counts.unknown += 1,
            }
        }
        let duration_us = history.ops.iter().map(|op| op.complete_us).max().unwrap_or(0);
        Summary {
            profile: profile.into(),
            seed: info.seed,
            nodes: info.nodes,
            lab_mode: info.lab_mode,
            fault_kinds: Vec::new(),
            duration_s: duration_us as f64 / 1e6,
            faults_total: history.faults.len(),
            faults_by_kind,
            ops_total: history.ops.len(),
            ops_by_call,
            notes: Vec::new(),
            verdicts,
            history_path,
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let v = &self.verdicts;
        let _ =
            writeln!(out, "chaos {}: seed {} · {} nodes · lab {}", self.profile, self.seed, self.nodes, self.lab_mode);
        let _ = writeln!(out, "fault kinds enabled: {}", self.fault_kinds.join(", "));
        let _ = writeln!(out, "duration {:.1} s", self.duration_s);
        let _ = writeln!(out, "faults: {} {:?}", self.faults_total, self.faults_by_kind);
        let _ = writeln!(out, "operations: {}", self.ops_total);
        for (call, counts) in &self.ops_by_call {
            let _ = writeln!(
                out,
                "  {call:<20} ok {:>6}  failed {:>4}  unknown {:>4}",
                counts.ok, counts.failed, counts.unknown
            );
        }
        let a = &v.availability;
        let _ = writeln!(
            out,
            "fault → next acknowledged write: median {:.0} ms, max {:.0} ms over {} faults ({} unrecovered)",
            a.overall.median_ms, a.overall.max_ms, a.overall.faults, a.unrecovered
        );
        for (kind, recovery) in &a.by_kind {
            let _ = writeln!(
                out,
                "  {kind:<16} median {:>6.0} ms  max {:>6.0} ms  ({} faults)",
                recovery.median_ms, recovery.max_ms, recovery.faults
            );
        }
        let _ = writeln!(
            out,
            "linearizability: {} objects, {} search steps, {} inconclusive",
            v.linearizability_objects,
            v.linearizability_steps,
            v.linearizability_inconclusive.len()
        );
        let sections: [(&str, &Vec<String>); 7] = [
            ("mutual exclusion", &v.mutual_exclusion),
            ("linearizability", &v.linearizability),
            ("linearizability (inconclusive, not violations)", &v.linearizability_inconclusive),
            ("machine ids", &v.machine_ids),
            ("durability", &v.durability),
            ("availability", &v.availability_violations),
            ("run", &v.run),
        ];
        for (name, findings) in sections {
            let _ = writeln!(
                out,
                "{name}: {}",
                if findings.is_empty() { "ok".to_string() } else { format!("{} findings", findings.len()) }
            );
            for finding in findings.iter().take(20) {
                let _ = writeln!(out, "  - {finding}");
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let _ = writeln!(out, "violations: {}", v.violation_count());
        let _ = writeln!(out, "history: {}", self.history_path.display());
        out
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(self).map_err(std::io::Error::other)?)?;
        std::fs::write(dir.join("summary.txt"), self.text())
    }
}
