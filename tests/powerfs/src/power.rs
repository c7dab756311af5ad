//! The power cut itself: every inode back to its durable version, what no
//! durable entry reaches from the root dropped, and optionally a torn last
//! write. Works on [`Tree`]'s parts; no FUSE here.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use crate::tree::{Body, CutReport, Ino, Inode, LastWrite, Tree, ROOT, SECTOR_BYTES};

impl Tree {
    /// A power cut: every inode back to its durable version, and only what
    /// durable entries reach from the root kept. With `tear` (a seed), a
    /// prefix of whole sectors of the most recent write, if its file was not
    /// synced since, survives as well.
    pub fn cut(&mut self, tear: Option<u64>) -> CutReport {
        let mut report = CutReport { bytes_dropped: self.dirty_bytes(), ..CutReport::default() };
        let reachable = self.durably_reachable();
        if let (Some(seed), Some(write)) = (tear, self.last_write.take()) {
            if reachable.contains_key(&write.ino) {
                report.torn = self.tear(write, seed);
            }
        }
        let gone: Vec<Ino> = self.inodes.keys().copied().filter(|ino| !reachable.contains_key(ino)).collect();
        report.inodes_dropped = gone.len() as u64;
        for ino in gone {
            self.inodes.remove(&ino);
            let _ = std::fs::remove_file(self.backing_dir.join(ino.to_string()));
        }
        for (ino, inode) in self.inodes.iter_mut() {
            inode.meta = inode.durable_meta;
            inode.open = 0;
            inode.links = reachable[ino];
            inode.durable_links = reachable[ino];
            match &mut inode.body {
                Body::File(file) => {
                    file.dirty.clear();
                    file.size = file.durable_size;
                    file.backing_valid = file.durable_size;
                }
                Body::Dir(dir) => dir.entries = dir.durable.clone(),
                Body::Symlink(_) => {}
            }
        }
        self.set_parents();
        self.last_write = None;
        report
    }

    /// Inodes reachable from the root through durable entries, with the number of durable names each has.
    fn durably_reachable(&self) -> HashMap<Ino, u32> {
        let mut names: HashMap<Ino, u32> = HashMap::from([(ROOT, 1)]);
        let mut pending = vec![ROOT];
        while let Some(ino) = pending.pop() {
            let Some(Inode { body: Body::Dir(dir), .. }) = self.inodes.get(&ino) else { continue };
            for child in dir.durable.values().filter(|child| self.inodes.contains_key(child)) {
                let count = names.entry(*child).or_insert(0);
                *count += 1;
                if *count == 1 {
                    pending.push(*child);
                }
            }
        }
        names
    }

    fn set_parents(&mut self) {
        let pairs: Vec<(Ino, Ino)> = self
            .inodes
            .iter()
            .filter_map(|(ino, inode)| match &inode.body {
                Body::Dir(dir) => Some(dir.entries.values().map(move |child| (*child, *ino))),
                _ => None,
            })
            .flatten()
            .collect();
        for (child, parent) in pairs {
            if let Ok(dir) = self.dir_mut(child) {
                dir.parent = parent;
            }
        }
    }

    /// Makes a sector-aligned prefix of `write` durable; returns the range kept.
    fn tear(&mut self, write: LastWrite, seed: u64) -> Option<(Ino, u64, u64)> {
        let end = write.offset + write.len;
        let first_boundary = (write.offset / SECTOR_BYTES + 1) * SECTOR_BYTES;
        // Sector boundaries strictly inside the write: a torn write never survives whole.
        let boundaries = if first_boundary < end { (end - 1 - first_boundary) / SECTOR_BYTES + 1 } else { 0 };
        let kept = seed % (boundaries + 1);
        if kept == 0 {
            return None;
        }
        let kept_end = first_boundary + (kept - 1) * SECTOR_BYTES;
        let data = self.read(write.ino, write.offset, u32::try_from(kept_end - write.offset).ok()?).ok()?;
        self.backing(write.ino).ok()?;
        let file = self.file_mut(write.ino).ok()?;
        let backing = file.backing.as_ref()?;
        backing.write_all_at(&data, write.offset).ok()?;
        if kept_end > file.durable_size {
            backing.set_len(kept_end).ok()?;
            file.durable_size = kept_end;
        }
        Some((write.ino, write.offset, kept_end))
    }
}
