//! Dirty extents of one file: the bytes written since the file's last sync,
//! as non-overlapping, non-adjacent runs keyed by offset. Pure: no I/O.
//!
//! Sequential appends (what a log does) extend the last run in place, so a
//! file written in small pieces costs amortised O(1) per write, not a copy
//! of the run each time.

use std::collections::BTreeMap;

/// Runs of dirty bytes, `start -> bytes`; no two runs overlap or touch.
#[derive(Debug, Default, Clone)]
pub struct Extents {
    runs: BTreeMap<u64, Vec<u8>>,
}

impl Extents {
    /// Whether nothing is dirty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Bytes held.
    pub fn len_bytes(&self) -> u64 {
        self.runs.values().map(|run| run.len() as u64).sum()
    }

    /// Records `data` written at `offset`, over anything written there before.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        // Fast paths: inside one run, or appending right after one.
        if let Some((&start, run)) = self.runs.range(..=offset).next_back() {
            let run_end = start + run.len() as u64;
            if offset <= run_end && self.runs_after(offset).is_none_or(|next| next > end) {
                let at = usize::try_from(offset - start).expect("run offsets fit usize");
                let run = self.runs.get_mut(&start).expect("the run just found");
                let overlap = (run.len() - at).min(data.len());
                run[at..at + overlap].copy_from_slice(&data[..overlap]);
                run.extend_from_slice(&data[overlap..]);
                return;
            }
        }
        self.merge(offset, data);
    }

    /// The start of the first run starting after `offset`.
    fn runs_after(&self, offset: u64) -> Option<u64> {
        self.runs.range(offset + 1..).next().map(|(start, _)| *start)
    }

    /// The general case: every run that overlaps or touches `[offset, end]`
    /// becomes one run, `data` on top.
    fn merge(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let touching: Vec<u64> = self
            .runs
            .range(..=end)
            .filter(|(start, run)| **start + run.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let mut start = offset;
        let mut merged_end = end;
        for run_start in &touching {
            start = start.min(*run_start);
            merged_end = merged_end.max(run_start + self.runs[run_start].len() as u64);
        }
        let mut merged = vec![0u8; usize::try_from(merged_end - start).expect("run fits usize")];
        for run_start in touching {
            let run = self.runs.remove(&run_start).expect("a run just listed");
            let at = usize::try_from(run_start - start).expect("fits usize");
            merged[at..at + run.len()].copy_from_slice(&run);
        }
        let at = usize::try_from(offset - start).expect("fits usize");
        merged[at..at + data.len()].copy_from_slice(data);
        self.runs.insert(start, merged);
    }

    /// Drops every dirty byte at or after `size` (a truncation).
    pub fn truncate(&mut self, size: u64) {
        let after: Vec<u64> = self.runs.range(size..).map(|(start, _)| *start).collect();
        for start in after {
            self.runs.remove(&start);
        }
        if let Some((&start, run)) = self.runs.range_mut(..size).next_back() {
            let keep = usize::try_from(size - start).expect("fits usize");
            run.truncate(keep.min(run.len()));
        }
    }

    /// Copies the dirty bytes that fall in `[offset, offset + out.len())` over `out`.
    pub fn overlay(&self, offset: u64, out: &mut [u8]) {
        let end = offset + out.len() as u64;
        let first = self.runs.range(..=offset).next_back().map_or(offset, |(start, _)| *start);
        for (&start, run) in self.runs.range(first..end) {
            let run_end = start + run.len() as u64;
            let (from, to) = (start.max(offset), run_end.min(end));
            if from >= to {
                continue;
            }
            let src = usize::try_from(from - start).expect("fits usize");
            let dst = usize::try_from(from - offset).expect("fits usize");
            let len = usize::try_from(to - from).expect("fits usize");
            out[dst..dst + len].copy_from_slice(&run[src..src + len]);
        }
    }

    /// The runs, in offset order.
    pub fn runs(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.runs.iter().map(|(start, run)| (*start, run.as_slice()))
    }

    /// Forgets every dirty byte.
    pub fn clear(&mut self) {
        self.runs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(extents: &Extents, len: usize) -> Vec<u8> {
        let mut out = vec![b'.'; len];
        extents.overlay(0, &mut out);
        out
    }

    #[test]
    fn appends_extend_one_run() {
        let mut extents = Extents::default();
        extents.write(0, b"ab");
        extents.write(2, b"cd");
        extents.write(4, b"e");
        assert_eq!(extents.runs().count(), 1);
        assert_eq!(view(&extents, 6), b"abcde.");
    }

    #[test]
    fn overlapping_writes_keep_the_newest_bytes() {
        let mut extents = Extents::default();
        extents.write(4, b"EFGH");
        extents.write(0, b"ab");
        assert_eq!(extents.runs().count(), 2);
        extents.write(1, b"1234");
        assert_eq!(extents.runs().count(), 1);
        assert_eq!(view(&extents, 9), b"a1234FGH.");
        extents.write(5, b"x");
        assert_eq!(view(&extents, 9), b"a1234xGH.");
        assert_eq!(extents.len_bytes(), 8);
    }

    #[test]
    fn truncation_drops_the_tail() {
        let mut extents = Extents::default();
        extents.write(0, b"abcd");
        extents.write(10, b"xyz");
        extents.truncate(2);
        assert_eq!(view(&extents, 12), b"ab..........");
        assert_eq!(extents.len_bytes(), 2);
    }

    #[test]
    fn overlay_of_a_window_inside_a_run() {
        let mut extents = Extents::default();
        extents.write(0, b"abcdef");
        let mut out = [0u8; 2];
        extents.overlay(3, &mut out);
        assert_eq!(&out, b"de");
    }
}
