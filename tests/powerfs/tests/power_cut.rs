//! powerfs against the kernel: real mounts, real system calls, real sled.
//! Each test mounts its own file system in a temporary directory (root and
//! `/dev/fuse` needed, as on CI; `scripts/test.sh` installs fuse3).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use powerfs::PowerFs;

/// A mounted powerfs in a temporary directory.
struct Mounted {
    fs: PowerFs,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

fn mount() -> Mounted {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("mnt");
    std::fs::create_dir(&root).expect("mount point");
    let fs = PowerFs::mount(&root, &dir.path().join("backing"), "test")
        .unwrap_or_else(|error| panic!("mounting powerfs needs root and /dev/fuse (fuse3): {error}"));
    Mounted { fs, root, _dir: dir }
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn sync_dir(&self, name: &str) {
        File::open(self.path(name)).expect("open dir").sync_all().expect("fsync dir");
    }

    /// A file made durable whole: content synced, its directory synced.
    fn durable_file(&self, name: &str, content: &[u8]) {
        let mut file = File::create(self.path(name)).expect("create");
        file.write_all(content).expect("write");
        file.sync_data().expect("fdatasync");
        self.sync_dir(".");
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        let mut content = Vec::new();
        File::open(self.path(name)).ok()?.read_to_end(&mut content).expect("read");
        Some(content)
    }
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_is_gone() {
    let m = mount();
    m.durable_file("log", b"durable");
    let mut file = OpenOptions::new().append(true).open(m.path("log")).expect("open");
    file.write_all(b" volatile").expect("append");
    assert_eq!(m.read("log").as_deref(), Some(&b"durable volatile"[..]), "before the cut, everything is visible");
    drop(file);
    m.fs.cut(None);
    assert_eq!(m.read("log").as_deref(), Some(&b"durable"[..]));
}

#[test]
fn an_unsynced_overwrite_and_truncation_are_undone() {
    let m = mount();
    m.durable_file("data", b"0123456789");
    let file = OpenOptions::new().write(true).open(m.path("data")).expect("open");
    file.write_all_at(b"ab", 2).expect("overwrite");
    file.set_len(4).expect("truncate");
    assert_eq!(m.read("data").as_deref(), Some(&b"01ab"[..]));
    drop(file);
    m.fs.cut(None);
    assert_eq!(m.read("data").as_deref(), Some(&b"0123456789"[..]));
}

#[test]
fn a_new_file_without_a_directory_sync_is_gone() {
    let m = mount();
    let mut file = File::create(m.path("new")).expect("create");
    file.write_all(b"synced, but nameless").expect("write");
    file.sync_all().expect("fsync the file only");
    drop(file);
    m.fs.cut(None);
    assert!(!m.path("new").exists(), "its name was never durable");
    m.durable_file("named", b"x");
    m.fs.cut(None);
    assert_eq!(m.read("named").as_deref(), Some(&b"x"[..]));
}

#[test]
fn a_file_in_a_directory_never_synced_in_its_parent_is_gone() {
    let m = mount();
    std::fs::create_dir(m.path("sub")).expect("mkdir");
    let mut file = File::create(m.path("sub/file")).expect("create");
    file.write_all(b"x").expect("write");
    file.sync_all().expect("fsync");
    m.sync_dir("sub");
    drop(file);
    m.fs.cut(None);
    assert!(!m.path("sub").exists());
}

#[test]
fn a_rename_without_a_directory_sync_is_undone_and_with_one_it_sticks() {
    let m = mount();
    m.durable_file("current", b"old");
    for sync in [false, true] {
        let mut file = File::create(m.path("next")).expect("create");
        file.write_all(b"new").expect("write");
        file.sync_all().expect("fsync");
        drop(file);
        std::fs::rename(m.path("next"), m.path("current")).expect("rename");
        assert_eq!(m.read("current").as_deref(), Some(&b"new"[..]));
        if sync {
            m.sync_dir(".");
        }
        m.fs.cut(None);
        let expected: &[u8] = if sync { b"new" } else { b"old" };
        assert_eq!(m.read("current").as_deref(), Some(expected), "directory synced: {sync}");
        assert!(!m.path("next").exists(), "the temporary name was never durable");
    }
}

#[test]
fn an_unlink_without_a_directory_sync_is_undone() {
    let m = mount();
    m.durable_file("kept", b"still here");
    std::fs::remove_file(m.path("kept")).expect("unlink");
    assert!(!m.path("kept").exists());
    m.fs.cut(None);
    assert_eq!(m.read("kept").as_deref(), Some(&b"still here"[..]));
    std::fs::remove_file(m.path("kept")).expect("unlink");
    m.sync_dir(".");
    m.fs.cut(None);
    assert!(!m.path("kept").exists());
}

#[test]
fn sync_file_range_and_syncfs_make_nothing_durable() {
    let m = mount();
    m.durable_file("log", b"");
    let file = OpenOptions::new().write(true).open(m.path("log")).expect("open");
    file.write_all_at(&[7u8; 4096], 0).expect("write");
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid descriptor; the range is plain integers.
    assert_eq!(unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 4096, flags) }, 0, "sync_file_range");
    // SAFETY: a valid descriptor.
    unsafe { libc::syncfs(file.as_raw_fd()) };
    drop(file);
    m.fs.cut(None);
    assert_eq!(m.read("log").as_deref(), Some(&b""[..]));
}

#[test]
fn writes_through_o_dsync_are_durable_at_once() {
    let m = mount();
    m.durable_file("log", b"");
    let file = OpenOptions::new().write(true).custom_flags(libc::O_DSYNC).open(m.path("log")).expect("open");
    file.write_all_at(b"dsync", 0).expect("write");
    drop(file);
    m.fs.cut(None);
    assert_eq!(m.read("log").as_deref(), Some(&b"dsync"[..]));
}

#[test]
fn what_a_descriptor_opened_before_a_cut_does_afterwards_never_happened() {
    let m = mount();
    m.durable_file("log", b"x");
    let file = OpenOptions::new().read(true).write(true).open(m.path("log")).expect("open");
    m.fs.cut(None);
    file.write_all_at(b"late", 0).expect("accepted: its process is off and cannot tell");
    file.sync_all().expect("accepted too");
    let error = file.read_at(&mut [0u8; 1], 0).expect_err("nothing to read for a process without power");
    assert_eq!(error.raw_os_error(), Some(libc::EIO));
    drop(file);
    assert_eq!(m.read("log").as_deref(), Some(&b"x"[..]));
}

#[test]
fn a_torn_write_keeps_a_sector_aligned_prefix_and_never_the_whole() {
    let m = mount();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let mut kept_lengths = std::collections::BTreeSet::new();
    for seed in 0..16u64 {
        m.durable_file("log", b"");
        let file = OpenOptions::new().write(true).open(m.path("log")).expect("open");
        file.write_all_at(&pattern[..100], 0).expect("an earlier write");
        file.write_all_at(&pattern[100..], 100).expect("the last write");
        drop(file);
        let report = m.fs.cut(Some(seed));
        let content = m.read("log").expect("the file is durable");
        assert!(content.len() < pattern.len(), "seed {seed}: a torn write never survives whole");
        assert_eq!(content.len() % 512, 0, "seed {seed}: only whole sectors survive");
        assert_eq!(&content[100.min(content.len())..], &pattern[100.min(content.len())..content.len()]);
        if !content.is_empty() {
            assert_eq!(report.torn.map(|(_, from, to)| (from, to)), Some((100, content.len() as u64)));
        }
        kept_lengths.insert(content.len());
    }
    assert!(kept_lengths.len() > 2, "the seed chooses how much survives: {kept_lengths:?}");
}

fn sled_config(path: &Path) -> sled::Config {
    // No periodic flusher: its sync_all every 500 ms would make the test depend on timing.
    sled::Config::new().path(path).flush_every_ms(None)
}

/// fdatasync of every file and fsync of every directory under `dir`.
fn sync_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sync_tree(&path);
        } else {
            File::open(&path).expect("open").sync_data().expect("fdatasync");
        }
    }
    File::open(dir).expect("open dir").sync_all().expect("fsync dir");
}

/// sled opened again in this process. The dropped `Db`'s background I/O
/// threads may still hold its lock file for a moment (sled says "could not
/// acquire lock", as its own tests know: they block on the lock instead), so
/// the open is retried until the lock is free, within 10 s.
fn reopen(path: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled_config(path).open() {
            Ok(db) => return db,
            Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock") => {
                assert!(std::time::Instant::now() < deadline, "sled's lock file stayed held 10 s after drop");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => panic!("sled opens the durable state again: {error}"),
        }
    }
}

/// sled 0.34 over powerfs: a baseline made durable by hand, then `k`
/// written and flushed, then (with `fdatasync`) sled's files synced, then
/// a cut; returns what `k` reads after sled opens the data dir again.
fn sled_after_cut(fdatasync: bool) -> Option<Vec<u8>> {
    let m = mount();
    let db = sled_config(&m.root).open().expect("open sled");
    db.insert(b"base", b"1").expect("insert");
    db.flush().expect("flush");
    sync_tree(&m.root);
    db.insert(b"k", b"flushed").expect("insert");
    db.flush().expect("sled's flush: sync_file_range on Linux");
    if fdatasync {
        sync_tree(&m.root);
    }
    m.fs.cut(None);
    // Its descriptors are dead now: what it writes while closing never happened.
    drop(db);
    let db = reopen(&m.root);
    assert_eq!(db.get(b"base").expect("get").as_deref(), Some(&b"1"[..]), "the durable baseline");
    let value = db.get(b"k").expect("get").map(|value| value.to_vec());
    drop(db);
    value
}

#[test]
fn sled_flush_alone_loses_flushed_writes_in_a_power_cut() {
    assert_eq!(sled_after_cut(false), None, "sled's flush() is sync_file_range: nothing durable");
}

#[test]
fn sled_flush_and_fdatasync_keep_flushed_writes() {
    assert_eq!(sled_after_cut(true).as_deref(), Some(&b"flushed"[..]));
}
