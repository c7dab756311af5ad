//! [`DataDir`]: a node's data dir on disk, and what makes it durable.
//!
//! Layout (format [`FORMAT_VERSION`]):
//! - `FORMAT`: one line naming the format version, written when the dir is
//!   made; a dir with another version (or none, from an older release) is
//!   refused at open, never read as if it were this one.
//! - sled's files (`conf`, `db`, `blobs/`, `snap.*`): the Raft log, vote and
//!   markers (see `sled_schema`).
//! - `snapshots/`: the latest state-machine snapshot (`snapshot_file`).
//!
//! **Durability.** sled 0.34's `flush()` ends in `sync_file_range` on Linux,
//! which writes the dirty pages but neither commits file metadata (the size
//! of a `db` file that grew) nor flushes the device's write cache; sled's
//! own `sync_all` runs only in its background flusher, every 500 ms. Values
//! above about a quarter of a segment go to blob files written with
//! `write_all` and never synced, and sled renames its `snap.*` files
//! without syncing the directory. So after every [`sled::Db::flush`] that
//! an acknowledgement depends on, [`DataDir::sync_after_flush`] adds what a
//! power cut needs: `fdatasync` of `db` (the same inode sled writes, through
//! a descriptor of our own), `fdatasync` of every blob file that appeared
//! since the last sync, and `fsync` of the data dir and of `blobs/` when
//! their entries changed. Changes are learnt from inotify (one
//! non-blocking read per sync: listing both dirs cost ~70 µs per flush,
//! and their timestamps are too coarse to tell). What we still rely on sled for: that a value
//! it acknowledged in `flush()` has been written to `db` or a blob by then,
//! and that its recovery reads back exactly a prefix of its log (every
//! message carries a CRC; a torn tail is dropped).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// The data dir format this release reads and writes. 2: snapshots in
/// `snapshots/` (format 1 kept them in a sled tree, unsynced).
pub const FORMAT_VERSION: u32 = 2;

/// The file naming a data dir's format version.
pub const FORMAT_FILE: &str = "FORMAT";

/// The first words of [`FORMAT_FILE`]; the version number follows.
const FORMAT_PREFIX: &str = "runner-storage data format ";

/// The directory of snapshot files inside a data dir.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// Whether the data syncs run. Only the checker tests turn them off (the
/// planted bug `no-sync`): every acknowledgement then survives a killed
/// process but not a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fdatasync/fsync before every acknowledgement (always, in production).
    Synced,
    /// sled's `flush()` alone: the planted bug `no-sync`.
    FlushOnly,
}

/// A node's open data dir: its sled database and what syncs it.
#[derive(Clone)]
pub struct DataDir {
    path: PathBuf,
    db: sled::Db,
    durability: Durability,
    syncer: Arc<Mutex<Syncer>>,
}

/// The descriptors a sync needs, and what changed since the last one.
struct Syncer {
    db_file: File,
    root: PathBuf,
    blobs: PathBuf,
    changes: DirChanges,
}

/// inotify watches on the data dir and `blobs/`: which entries changed.
struct DirChanges {
    inotify: inotify::Inotify,
    root_watch: inotify::WatchDescriptor,
    blobs_watch: inotify::WatchDescriptor,
    buffer: Vec<u8>,
}

/// What [`DirChanges::take`] found since its last call.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changed {
    root: bool,
    blobs: bool,
    /// Files created in (or moved into) `blobs/`.
    new_blobs: BTreeSet<OsString>,
    /// inotify dropped events: sync every file of `blobs/`.
    overflowed: bool,
}

impl DirChanges {
    fn watch(root: &Path, blobs: &Path) -> io::Result<DirChanges> {
        use inotify::WatchMask;
        let inotify = inotify::Inotify::init()?;
        let entries = WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_FROM | WatchMask::MOVED_TO;
        let root_watch = inotify.watches().add(root, entries)?;
        let blobs_watch = inotify.watches().add(blobs, entries)?;
        Ok(DirChanges { inotify, root_watch, blobs_watch, buffer: vec![0; 4096] })
    }

    /// Every change since the last call (non-blocking).
    fn take(&mut self) -> io::Result<Changed> {
        use inotify::EventMask;
        let mut changed = Changed::default();
        loop {
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(changed),
                Err(error) => return Err(error),
            };
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    changed.overflowed = true;
                    changed.root = true;
                    changed.blobs = true;
                } else if event.wd == self.root_watch {
                    changed.root = true;
                } else if event.wd == self.blobs_watch {
                    changed.blobs = true;
                    let name = event.name.map(|name| name.to_owned());
                    let created = event.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
                    match name {
                        Some(name) if created => changed.new_blobs.insert(name),
                        Some(name) => changed.new_blobs.remove(&name),
                        None => false,
                    };
                }
            }
        }
    }
}

/// Why a data dir cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The dir was written in another format.
    #[error("{0}")]
    Format(String),
    /// sled refused to open its database.
    #[error("cannot open the sled database in {path} (in use by another node, or damaged): {source}")]
    Sled {
        /// The data dir.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io { path: path.to_owned(), source }
}

impl DataDir {
    /// Opens (creating when absent) the data dir at `path`, with sled's
    /// page cache bounded to `cache_bytes`.
    ///
    /// A new dir is made durable before this returns (its entry in the
    /// parent, `FORMAT`, sled's `conf` and `db`): a node that restarted
    /// into an empty dir after a power cut would bootstrap again and forget
    /// its vote.
    ///
    /// # Errors
    /// When the dir cannot be made or read, holds another format, or sled
    /// cannot open it.
    pub fn open(path: &Path, cache_bytes: u64, durability: Durability) -> Result<DataDir, OpenError> {
        let created = !path.exists();
        std::fs::create_dir_all(path).map_err(io_error(path))?;
        check_or_write_format(path, durability)?;
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|source| OpenError::Sled { path: path.to_owned(), source })?;
        let db_path = path.join("db");
        let db_file = File::open(&db_path).map_err(io_error(&db_path))?;
        let blobs = path.join("blobs");
        let changes = DirChanges::watch(path, &blobs).map_err(io_error(path))?;
        let syncer = Syncer { db_file, root: path.to_owned(), blobs, changes };
        let data_dir = DataDir { path: path.to_owned(), db, durability, syncer: Arc::new(Mutex::new(syncer)) };
        std::fs::create_dir_all(data_dir.snapshots_dir()).map_err(io_error(path))?;
        if durability == Durability::Synced {
            // sled writes `conf` once, unsynced; blob files written before
            // this process started may never have been synced either.
            let conf = path.join("conf");
            File::open(&conf).and_then(|file| file.sync_all()).map_err(io_error(&conf))?;
            data_dir.sync_everything().map_err(io_error(path))?;
            if created {
                if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                    sync_dir(parent).map_err(io_error(parent))?;
                }
            }
        }
        Ok(data_dir)
    }

    /// The sled database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The data dir's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of snapshot files.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.path.join(SNAPSHOTS_DIR)
    }

    /// Whether syncs run (see [`Durability`]).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// `sled::Db::flush`, then [`DataDir::sync_after_flush`]: everything
    /// written to sled before the call is durable when it returns.
    ///
    /// # Errors
    /// When sled or a sync fails; the caller must not acknowledge.
    pub fn flush_and_sync(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        self.sync_after_flush()
    }

    /// Makes what sled's last `flush()` wrote durable (see the module docs).
    ///
    /// # Errors
    /// When a sync or a directory listing fails.
    pub fn sync_after_flush(&self) -> io::Result<()> {
        if self.durability == Durability::FlushOnly {
            return Ok(());
        }
        self.syncer.lock().unwrap_or_else(PoisonError::into_inner).sync()
    }

    /// Syncs `db`, every blob file and both directories, whatever changed.
    fn sync_everything(&self) -> io::Result<()> {
        let mut syncer = self.syncer.lock().unwrap_or_else(PoisonError::into_inner);
        syncer.changes.take()?;
        syncer.db_file.sync_data()?;
        let changed = Changed { root: true, blobs: true, overflowed: true, ..Changed::default() };
        syncer.sync_dirs(changed)
    }
}

impl Syncer {
    fn sync(&mut self) -> io::Result<()> {
        self.db_file.sync_data()?;
        let changed = self.changes.take()?;
        self.sync_dirs(changed)
    }

    /// Syncs the new blob files (all of them after an overflow), then the
    /// directories whose entries changed.
    fn sync_dirs(&mut self, changed: Changed) -> io::Result<()> {
        let all_blobs;
        let new_blobs = if changed.overflowed {
            all_blobs = std::fs::read_dir(&self.blobs)?
                .map(|entry| entry.map(|entry| entry.file_name()))
                .collect::<io::Result<BTreeSet<OsString>>>()?;
            &all_blobs
        } else {
            &changed.new_blobs
        };
        for name in new_blobs {
            match File::open(self.blobs.join(name)) {
                Ok(file) => file.sync_data()?,
                // Removed since (sled rewrote it): nothing to keep.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        if changed.blobs {
            sync_dir(&self.blobs)?;
        }
        if changed.root {
            sync_dir(&self.root)?;
        }
        Ok(())
    }
}

/// `fsync` of a directory: makes the entries in it (created, renamed,
/// removed files) durable.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Checks the `FORMAT` file of the dir at `path`, or writes it (durably)
/// into a dir that holds nothing yet.
fn check_or_write_format(path: &Path, durability: Durability) -> Result<(), OpenError> {
    let format_path = path.join(FORMAT_FILE);
    match std::fs::read_to_string(&format_path) {
        Ok(text) => check_format(path, &text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let holds_data = std::fs::read_dir(path).map_err(io_error(path))?.next().is_some();
            if holds_data {
                return Err(OpenError::Format(format!(
                    "data dir {} has no {FORMAT_FILE} file: it was written by an earlier release (data format 1); \
                     this release reads format {FORMAT_VERSION}. Move it aside and let the node rejoin with an \
                     empty data dir, or run the release that wrote it",
                    path.display()
                )));
            }
            let text = format!("{FORMAT_PREFIX}{FORMAT_VERSION}\n");
            std::fs::write(&format_path, text).map_err(io_error(&format_path))?;
            if durability == Durability::Synced {
                File::open(&format_path).and_then(|file| file.sync_all()).map_err(io_error(&format_path))?;
                sync_dir(path).map_err(io_error(path))?;
            }
            Ok(())
        }
        Err(error) => Err(OpenError::Io { path: format_path, source: error }),
    }
}

fn check_format(path: &Path, text: &str) -> Result<(), OpenError> {
    let version = text.trim().strip_prefix(FORMAT_PREFIX).and_then(|version| version.parse::<u32>().ok());
    match version {
        Some(FORMAT_VERSION) => Ok(()),
        Some(version) if version > FORMAT_VERSION => Err(OpenError::Format(format!(
            "data dir {} is in data format {version}, newer than this release reads ({FORMAT_VERSION}): \
             run a release that reads format {version}",
            path.display()
        ))),
        Some(version) => Err(OpenError::Format(format!(
            "data dir {} is in data format {version}, older than this release reads ({FORMAT_VERSION}): \
             move it aside and let the node rejoin with an empty data dir, or run the release that wrote it",
            path.display()
        ))),
        None => Err(OpenError::Format(format!(
            "data dir {}: its {FORMAT_FILE} file does not name a format ({:?})",
            path.display(),
            text.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_records_its_format_and_opens_again() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("node");
        drop(DataDir::open(&path, 1 << 20, Durability::Synced).unwrap());
        let format = std::fs::read_to_string(path.join(FORMAT_FILE)).unwrap();
        assert_eq!(format, format!("runner-storage data format {FORMAT_VERSION}\n"));
        DataDir::open(&path, 1 << 20, Durability::Synced).unwrap();
    }

    #[test]
    fn another_format_is_refused_naming_both_versions() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join(FORMAT_FILE), "runner-storage data format 9\n").unwrap();
        let error = DataDir::open(temp.path(), 1 << 20, Durability::Synced).err().unwrap().to_string();
        assert!(error.contains("format 9") && error.contains(&format!("({FORMAT_VERSION})")), "{error}");
        std::fs::write(temp.path().join(FORMAT_FILE), "runner-storage data format 1\n").unwrap();
        let error = DataDir::open(temp.path(), 1 << 20, Durability::Synced).err().unwrap().to_string();
        assert!(error.contains("older"), "{error}");
    }

    #[test]
    fn a_dir_of_an_earlier_release_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join("db"), b"sled").unwrap();
        let error = DataDir::open(temp.path(), 1 << 20, Durability::Synced).err().unwrap().to_string();
        assert!(error.contains("no FORMAT file") && error.contains("format 1"), "{error}");
    }

    #[test]
    fn a_new_blob_file_is_seen_as_a_change_of_blobs_only() {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(temp.path(), 1 << 20, Durability::Synced).unwrap();
        data_dir.flush_and_sync().unwrap();
        let take = || data_dir.syncer.lock().unwrap().changes.take().unwrap();
        assert_eq!(take(), Changed::default(), "nothing changed since open");
        // A value far above sled's blob threshold (a quarter of a 512 KiB segment).
        data_dir.db().insert(b"big", vec![7u8; 1 << 20]).unwrap();
        data_dir.db().flush().unwrap();
        let changed = take();
        assert!(changed.blobs && changed.new_blobs.len() == 1, "one new blob file: {changed:?}");
        std::fs::write(temp.path().join("extra"), b"x").unwrap();
        let changed = take();
        assert!(changed.root && !changed.blobs, "{changed:?}");
    }
}
