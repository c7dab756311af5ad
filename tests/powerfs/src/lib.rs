//! powerfs: a FUSE file system for tests that loses, on a simulated power
//! cut, whatever no `fsync`/`fdatasync` made durable — the way a machine
//! that loses power loses its page cache.
//!
//! Mount it over a directory ([`PowerFs::mount`]), let a process work in
//! it, stop the process (SIGKILL: it loses power with the machine), call
//! [`PowerFs::cut`], and start the process again: it finds exactly the
//! durable state.
//!
//! # Semantics (POSIX at its strictest)
//! - **File data and size** are durable only after `fsync` or `fdatasync`
//!   of that file (any descriptor of the inode), or when written through a
//!   descriptor opened with `O_SYNC`/`O_DSYNC`. Permission bits, owner and
//!   times are durable with the file's next sync too.
//! - **`sync_file_range` and `syncfs` make nothing durable.** FUSE never
//!   even sees `sync_file_range` (it is a page-cache call, and this file
//!   system bypasses the page cache); `syncfs` is answered `ENOSYS` by the
//!   protocol layer and syncs nothing. `close` syncs nothing either.
//! - **Directory entries** (create, mkdir, unlink, rmdir, rename, link,
//!   symlink) are durable only after an `fsync` of the directory holding
//!   them. A new file whose directory was never synced is gone after a cut,
//!   even if the file itself was synced; a rename without a sync of the
//!   directory is undone atomically (the old name is back, with the data
//!   that was durable under it); an unlink without one is undone too.
//!   After a cut, only what durable entries reach from the root exists.
//! - **Torn writes**: [`PowerFs::cut`] with a tear seed also keeps a
//!   prefix of whole 512-byte sectors of the most recent write (if its
//!   file was not synced since), never the whole of it: a write the disk
//!   was in the middle of.
//! - **No stale cache**: every reply carries zero TTLs and files are opened
//!   `FOPEN_DIRECT_IO` (no page cache, no writeback cache, no readahead),
//!   so after a cut every read, lookup and `stat` sees the durable state.
//!   Descriptors opened before a cut are dead: their process lost power,
//!   so what it still writes or syncs through them is dropped (the calls
//!   succeed) and reads fail with `EIO`. (Because of direct I/O, shared
//!   writable `mmap` is not supported.)
//! - `rename` with `RENAME_EXCHANGE` or `RENAME_WHITEOUT` is `EINVAL`;
//!   device nodes, FIFOs, xattrs and POSIX locks on the server are not
//!   supported (the kernel keeps `flock`/`fcntl` locks locally).
//!
//! # Cost
//! Unsynced data is kept per inode as dirty extents in memory (appends
//! extend one run in place); a sync writes only those extents into the
//! inode's backing file on the host, never a copy of the whole file.
//! Durable content lives in a backing directory of plain files named by
//! inode number; the directory tree itself is kept in memory.
//!
//! # Layout
//! - [`extents`]: the dirty runs of one file (pure).
//! - [`tree`]: inodes, entries and data in their current and durable
//!   versions, and syncs (no FUSE); [`power`]: the cut.
//! - [`fuse`]: the `fuser::Filesystem` over the tree; handles; no caching.
//! - this file: [`PowerFs`], a mount with its cut.

pub mod extents;
pub mod fuse;
pub mod power;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

pub use fuse::Stats;
pub use tree::CutReport;

/// A mounted powerfs; dropping it unmounts.
#[derive(Debug)]
pub struct PowerFs {
    state: Arc<Mutex<fuse::State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl PowerFs {
    /// Mounts a fresh, empty powerfs on `mountpoint` (an existing empty
    /// directory), keeping durable file data in `backing_dir` (created).
    /// `name` shows in `/proc/mounts` as the source (`powerfs-{name}`).
    ///
    /// # Errors
    /// When the backing directory cannot be made or the mount fails (it
    /// needs `/dev/fuse` and root, or `fusermount3`).
    pub fn mount(mountpoint: &Path, backing_dir: &Path, name: &str) -> std::io::Result<PowerFs> {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let tree = tree::Tree::new(backing_dir, uid, gid)?;
        let state = Arc::new(Mutex::new(fuse::State::new(tree)));
        let mut config = fuser::Config::default();
        config.mount_options =
            vec![fuser::MountOption::FSName(format!("powerfs-{name}")), fuser::MountOption::Subtype("powerfs".into())];
        let session = fuser::spawn_mount(fuse::Fuse { state: state.clone() }, mountpoint, &config)?;
        Ok(PowerFs { state, mountpoint: mountpoint.to_owned(), session: Some(session) })
    }

    /// The mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, fuse::State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A power cut: drops every unsynced write and every directory change
    /// no directory sync made durable; kills every open descriptor.
    /// With `tear` (a seed choosing how much), a sector-aligned prefix of
    /// the last unsynced write survives. Stop the processes using the mount
    /// first: they lost power too.
    pub fn cut(&self, tear: Option<u64>) -> CutReport {
        let mut state = self.lock();
        state.kill_handles();
        state.stats.cuts += 1;
        state.tree.cut(tear)
    }

    /// Bytes written and not synced yet.
    pub fn dirty_bytes(&self) -> u64 {
        self.lock().tree.dirty_bytes()
    }

    /// Counters of syncs, writes and cuts.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// Unmounts now (dropping does the same, ignoring errors).
    ///
    /// # Errors
    /// When the kernel refuses (the mount is busy).
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}
