//! Every sled tree and key runner-storage writes, and their encodings.
//!
//! On-disk layout of a node's data dir (one sled database):
//! - tree [`LOGS`]: Raft log entries, key = index as big-endian `u64` (so
//!   sled's byte order is index order), value = postcard `Entry`.
//! - tree [`META`]: single values, postcard-encoded: [`VOTE_KEY`],
//!   [`COMMITTED_KEY`], [`LAST_PURGED_KEY`].
//! - tree [`SNAPSHOTS`]: the latest snapshot under [`SNAPSHOT_KEY`], one
//!   value so that it is replaced atomically: [`snapshot_record`] (the
//!   postcard `SnapshotMeta`, then the snapshot bytes). Data dirs written
//!   before `SNAPSHOT_KEY` existed hold it under [`SNAPSHOT_META_KEY`] and
//!   [`SNAPSHOT_DATA_KEY`]; they are read, and replaced by the next snapshot.
//!
//! Values are postcard; a value that does not decode is a corrupt data dir
//! and surfaces as a storage error, never a panic.

use serde::{de::DeserializeOwned, Serialize};

/// Tree of Raft log entries by index.
pub const LOGS: &str = "logs";
/// Tree of single Raft values.
pub const META: &str = "meta";
/// Tree holding the latest snapshot.
pub const SNAPSHOTS: &str = "snapshots";

/// The vote this node last saved.
pub const VOTE_KEY: &[u8] = b"vote";
/// The last log id this node knows to be committed.
pub const COMMITTED_KEY: &[u8] = b"committed";
/// The last log id purged from [`LOGS`].
pub const LAST_PURGED_KEY: &[u8] = b"last_purged";
/// The latest snapshot: metadata and bytes in one record.
pub const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// Metadata of the latest snapshot (the former layout, read only).
pub const SNAPSHOT_META_KEY: &[u8] = b"meta";
/// Bytes of the latest snapshot (the former layout, read only).
pub const SNAPSHOT_DATA_KEY: &[u8] = b"data";

/// The [`SNAPSHOT_KEY`] record: the length of `meta` (4 bytes, little
/// endian), `meta`, then `data`.
pub fn snapshot_record(meta: &[u8], data: &[u8]) -> Vec<u8> {
    let meta_len = u32::try_from(meta.len()).expect("snapshot metadata is far below 4 GiB");
    let mut record = Vec::with_capacity(4 + meta.len() + data.len());
    record.extend_from_slice(&meta_len.to_le_bytes());
    record.extend_from_slice(meta);
    record.extend_from_slice(data);
    record
}

/// Splits a [`SNAPSHOT_KEY`] record into its metadata and data bytes.
///
/// # Errors
/// When the record is shorter than its own length field says (a corrupt data dir).
pub fn split_snapshot_record(record: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (length, rest) = record.split_first_chunk::<4>().ok_or("snapshot record shorter than 4 bytes")?;
    let meta_len = u32::from_le_bytes(*length) as usize;
    if rest.len() < meta_len {
        return Err(format!("snapshot record of {} bytes holds no {meta_len} bytes of metadata", record.len()));
    }
    Ok(rest.split_at(meta_len))
}

/// A log index as a sled key: big-endian, so byte order is index order.
pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The index a [`LOGS`] key stands for.
///
/// # Errors
/// When the key is not 8 bytes (a corrupt tree).
pub fn index_from_key(key: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| format!("log key of {} bytes, expected 8", key.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes a value for sled.
///
/// # Errors
/// When serde fails (a type that cannot be encoded; a bug).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decodes a value read from sled.
///
/// # Errors
/// When the bytes are not a valid encoding (a corrupt data dir).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_as_indexes() {
        let mut keys: Vec<[u8; 8]> = [300u64, 2, 256, 1, u64::MAX].into_iter().map(index_key).collect();
        keys.sort();
        let indexes: Vec<u64> = keys.iter().map(|key| index_from_key(key).unwrap()).collect();
        assert_eq!(indexes, vec![1, 2, 256, 300, u64::MAX]);
    }

    #[test]
    fn a_snapshot_record_splits_into_what_went_in() {
        let record = snapshot_record(b"meta", b"the data");
        assert_eq!(split_snapshot_record(&record), Ok((&b"meta"[..], &b"the data"[..])));
        assert_eq!(split_snapshot_record(&snapshot_record(b"", b"")), Ok((&b""[..], &b""[..])));
        assert!(split_snapshot_record(&record[..6]).is_err(), "truncated metadata");
        assert!(split_snapshot_record(&record[..3]).is_err(), "truncated length");
    }

    #[test]
    fn short_key_is_an_error() {
        assert!(index_from_key(b"abc").is_err());
    }
}
