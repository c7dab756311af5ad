//! The latest state-machine snapshot as one file, written so that a power
//! cut leaves either the previous snapshot or the new one, whole.
//!
//! The log is purged behind a snapshot, so the snapshot must be durable
//! before openraft is told it exists: [`SnapshotFile::save`] writes
//! `latest.snapshot.tmp`, `fdatasync`s it, renames it over
//! `latest.snapshot` and `fsync`s the directory (the rename's durability).
//! sled would have put a snapshot of megabytes into a blob file that it
//! never syncs.
//!
//! File layout, all integers little endian:
//! `MAGIC` (8 bytes) · CRC-32 of everything after it (4) · metadata length
//! (4) · data length (8) · metadata (postcard `SnapshotMeta`) · data
//! (postcard `AppliedState`). A file that is short, has another magic, or
//! whose CRC does not match is reported as damaged, never decoded.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::data_dir::{sync_dir, Durability};

/// The first bytes of a snapshot file: name and layout version.
const MAGIC: &[u8; 8] = b"RSSNAP\x00\x01";
/// Bytes before the metadata: magic, CRC, two lengths.
const HEADER_BYTES: usize = 8 + 4 + 4 + 8;
/// The latest snapshot's file name.
const LATEST: &str = "latest.snapshot";
/// Where a snapshot is written before it replaces [`LATEST`].
const PARTIAL: &str = "latest.snapshot.tmp";

/// The snapshot file of one data dir.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    dir: PathBuf,
    durability: Durability,
}

/// A snapshot read back: its metadata and data bytes, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The postcard `SnapshotMeta`.
    pub meta: Vec<u8>,
    /// The postcard `AppliedState`.
    pub data: Vec<u8>,
}

impl SnapshotFile {
    /// The snapshot file in `dir` (which exists). A partial write left by a
    /// crash is removed.
    ///
    /// # Errors
    /// When the partial file exists and cannot be removed.
    pub fn open(dir: &Path, durability: Durability) -> io::Result<Self> {
        match std::fs::remove_file(dir.join(PARTIAL)) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        Ok(SnapshotFile { dir: dir.to_owned(), durability })
    }

    /// The path of the latest snapshot.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LATEST)
    }

    /// Replaces the latest snapshot with `meta` and `data`, durably (see
    /// the module docs). Blocking: call it off the async workers.
    ///
    /// # Errors
    /// When a write, sync or rename fails; the previous snapshot is intact.
    pub fn save(&self, meta: &[u8], data: &[u8]) -> io::Result<()> {
        let partial = self.dir.join(PARTIAL);
        let mut file = File::create(&partial)?;
        file.write_all(&header(meta, data))?;
        file.write_all(meta)?;
        file.write_all(data)?;
        if self.durability == Durability::Synced {
            file.sync_data()?;
        }
        drop(file);
        std::fs::rename(&partial, self.path())?;
        if self.durability == Durability::Synced {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The latest snapshot, `None` when there is none yet.
    ///
    /// # Errors
    /// When the file cannot be read or is damaged: the message names the
    /// file and what is wrong with it.
    pub fn load(&self) -> Result<Option<StoredSnapshot>, String> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(format!("cannot read the snapshot {}: {error}", path.display())),
        };
        parse(bytes).map(Some).map_err(|problem| format!("the snapshot {} is damaged: {problem}", path.display()))
    }
}

fn header(meta: &[u8], data: &[u8]) -> Vec<u8> {
    let meta_len = u32::try_from(meta.len()).expect("snapshot metadata is far below 4 GiB");
    let mut lengths = Vec::with_capacity(12);
    lengths.extend_from_slice(&meta_len.to_le_bytes());
    lengths.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lengths);
    crc.update(meta);
    crc.update(data);
    let mut header = Vec::with_capacity(HEADER_BYTES);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&crc.finalize().to_le_bytes());
    header.extend_from_slice(&lengths);
    header
}

fn parse(mut bytes: Vec<u8>) -> Result<StoredSnapshot, String> {
    if bytes.len() < HEADER_BYTES {
        return Err(format!("{} bytes, shorter than its header", bytes.len()));
    }
    let (head, body) = bytes.split_at(HEADER_BYTES);
    if &head[..8] != MAGIC {
        return Err("not a runner-storage snapshot (wrong magic)".into());
    }
    let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    let meta_len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
    let data_len = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    if meta_len as u64 + data_len != body.len() as u64 {
        return Err(format!("its header promises {meta_len} + {data_len} bytes, it holds {}", body.len()));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[12..]);
    hasher.update(body);
    if hasher.finalize() != crc {
        return Err("its checksum does not match (torn or corrupt write)".into());
    }
    let meta = body[..meta_len].to_vec();
    // The data is the file's tail: keep it without copying the megabytes.
    let data = bytes.split_off(HEADER_BYTES + meta_len);
    Ok(StoredSnapshot { meta, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_snapshot_loads_back_and_replaces_the_previous_one() {
        let temp = tempfile::tempdir().unwrap();
        let file = SnapshotFile::open(temp.path(), Durability::Synced).unwrap();
        assert_eq!(file.load(), Ok(None));
        file.save(b"meta 1", b"data 1").unwrap();
        file.save(b"meta 2", b"the second data").unwrap();
        let loaded = file.load().unwrap().unwrap();
        assert_eq!((loaded.meta.as_slice(), loaded.data.as_slice()), (&b"meta 2"[..], &b"the second data"[..]));
        assert!(!temp.path().join(PARTIAL).exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let temp = tempfile::tempdir().unwrap();
        let file = SnapshotFile::open(temp.path(), Durability::Synced).unwrap();
        file.save(b"meta", b"some data").unwrap();
        let mut bytes = std::fs::read(file.path()).unwrap();
        let good = bytes.clone();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(file.path(), &bytes).unwrap();
        let error = file.load().unwrap_err();
        assert!(error.contains("checksum") && error.contains("latest.snapshot"), "{error}");
        std::fs::write(file.path(), &good[..good.len() - 3]).unwrap();
        assert!(file.load().unwrap_err().contains("promises"), "truncated");
        std::fs::write(file.path(), &good[..10]).unwrap();
        assert!(file.load().unwrap_err().contains("header"), "shorter than the header");
    }

    #[test]
    fn a_partial_write_left_by_a_crash_is_removed_at_open() {
        let temp = tempfile::tempdir().unwrap();
        std::fs::write(temp.path().join(PARTIAL), b"half").unwrap();
        SnapshotFile::open(temp.path(), Durability::Synced).unwrap();
        assert!(!temp.path().join(PARTIAL).exists());
    }
}
