//! The lab's disks and clocks: each initial node's data dir as a powerfs
//! mount that a power cut empties of everything unsynced, and each node's
//! wall clock through libfaketime, moved by rewriting its clock file.
//!
//! **Disks.** powerfs mounts in this process (it serves them on threads of
//! its own); `ip netns exec` copies the mount table when it starts a node,
//! so the node sees its mount. A power cut SIGKILLs the node first (its
//! page cache is lost with it) and then cuts the mount.
//!
//! **Clocks.** Nodes start with `LD_PRELOAD` of libfaketime,
//! `FAKETIME_TIMESTAMP_FILE` naming their clock file (an offset such as
//! `+20.000s`), `FAKETIME_DONT_FAKE_MONOTONIC=1` (only the wall clock
//! moves: Raft's timers and the store's own clock keep real time) and
//! `FAKETIME_NO_CACHE=1`: with libfaketime's default cache (10 s) or
//! `FAKETIME_CACHE_DURATION=1`, a rewrite was not seen within 2.5 s;
//! without the cache it was seen 7 ms after the rename (measured on
//! libfaketime 0.9.10). A rewrite is a rename of a complete file, so a
//! reader never sees half of one. The product has no clock-faking code:
//! only the lab does this.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lab::Lab;

/// Where Debian's `faketime` package puts the library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// Source names of this lab's mounts start with it (`powerfs-rsc{pid}x{n}-node{id}`).
const MOUNT_SOURCE_PREFIX: &str = "powerfs-rsc";

/// Starts `command` under libfaketime reading `clock_file` (created at offset 0).
///
/// # Panics
/// When libfaketime is missing (`apt-get install faketime`; scripts/test.sh does).
pub fn fake_clock(command: &mut Command, clock_file: &Path) {
    assert!(Path::new(LIBFAKETIME).exists(), "clock faults need libfaketime ({LIBFAKETIME}): apt-get install faketime");
    if !clock_file.exists() {
        write_offset(clock_file, 0).expect("write a node's clock file");
    }
    command
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", clock_file)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_NO_CACHE", "1");
}

/// Writes `offset_ms` (relative to the real wall clock) as libfaketime reads it.
fn write_offset(clock_file: &Path, offset_ms: i64) -> std::io::Result<()> {
    let parent = clock_file.parent().expect("clock files live in a directory");
    std::fs::create_dir_all(parent)?;
    let sign = if offset_ms < 0 { '-' } else { '+' };
    let text = format!("{sign}{}.{:03}s\n", offset_ms.unsigned_abs() / 1000, offset_ms.unsigned_abs() % 1000);
    let next = clock_file.with_extension("next");
    std::fs::write(&next, text)?;
    std::fs::rename(&next, clock_file)
}

/// Unmounts powerfs mounts of labs whose process is gone (a run that was
/// killed leaves its mounts behind, dead: "transport endpoint is not connected").
pub fn unmount_stale() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else { return };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else { continue };
        let Some(rest) = source.strip_prefix(MOUNT_SOURCE_PREFIX) else { continue };
        let Some(pid) = rest.split('x').next().and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = Command::new("umount").args(["-l", target]).status();
    }
}

impl Lab {
    fn backing_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("powerfs/node{id}"))
    }

    /// Mounts a fresh powerfs as node `id`'s data dir.
    ///
    /// # Panics
    /// When the mount fails (it needs root, `/dev/fuse` and fuse3).
    pub fn mount_powerfs(&mut self, id: u64) {
        let data_dir = self.nodes[&id].data_dir.clone();
        std::fs::create_dir_all(&data_dir).expect("create the data dir");
        let name = format!("{}-node{id}", self.tag());
        let mount = powerfs::PowerFs::mount(&data_dir, &self.backing_dir(id), &name)
            .unwrap_or_else(|error| panic!("power-cut faults need powerfs (root, /dev/fuse, fuse3): {error}"));
        self.mounts.insert(id, mount);
    }

    /// Node `id` loses power: SIGKILL, then everything its disk had not
    /// made durable is gone (with `tear`, a torn last write survives in
    /// part). Returns what was lost; the caller restarts the node.
    pub fn power_cut(&mut self, id: u64, tear: Option<u64>) -> String {
        self.kill(id);
        match self.mounts.get(&id) {
            Some(mount) => {
                let report = mount.cut(tear);
                let torn =
                    report.torn.map_or(String::new(), |(_, from, to)| format!(", kept {} torn bytes", to - from));
                format!("{} unsynced bytes and {} inodes lost{torn}", report.bytes_dropped, report.inodes_dropped)
            }
            None => "no powerfs: a plain SIGKILL".into(),
        }
    }

    /// Sets node `id`'s wall clock `offset_ms` away from the real one.
    ///
    /// # Errors
    /// When the clock file cannot be written.
    pub fn set_clock_offset(&self, id: u64, offset_ms: i64) -> std::io::Result<()> {
        write_offset(&self.dir.path().join(format!("clock/node{id}")), offset_ms)
    }

    /// Unmounts every powerfs (nodes must be stopped); with `keep`, first
    /// copies each mount's content to `data-kept/node{id}` beside it, since
    /// the backing files alone name inodes, not paths.
    pub fn unmount_all(&mut self, keep: bool) {
        for (id, mount) in std::mem::take(&mut self.mounts) {
            if keep {
                let copy = self.dir.path().join(format!("data-kept/node{id}"));
                if let Err(error) = copy_tree(mount.mountpoint(), &copy) {
                    eprintln!("chaos: could not keep node {id}'s data: {error}");
                }
            }
            if let Err(error) = mount.unmount() {
                eprintln!("chaos: could not unmount node {id}'s powerfs: {error}");
            }
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
