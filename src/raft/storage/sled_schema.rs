//! Every sled tree and key runner-storage writes, and their encodings.
//!
//! On-disk layout of a node's data dir (one sled database):
//! - tree [`LOGS`]: Raft log entries, key = index as big-endian `u64` (so
//!   sled's byte order is index order), value = postcard `Entry`.
//! - tree [`META`]: single values, postcard-encoded: [`VOTE_KEY`],
//!   [`COMMITTED_KEY`], [`LAST_PURGED_KEY`].
//!
//! The snapshot is not in sled but in a file of its own (`snapshot_file`):
//! sled would put a value of megabytes into a blob file it never syncs.
//!
//! Values are postcard; a value that does not decode is a corrupt data dir
//! and surfaces as a storage error, never a panic.

use serde::{de::DeserializeOwned, Serialize};

/// Tree of Raft log entries by index.
pub const LOGS: &str = "logs";
/// Tree of single Raft values.
pub const META: &str = "meta";

/// The vote this node last saved.
pub const VOTE_KEY: &[u8] = b"vote";
/// The last log id this node knows to be committed.
pub const COMMITTED_KEY: &[u8] = b"committed";
/// The last log id purged from [`LOGS`].
pub const LAST_PURGED_KEY: &[u8] = b"last_purged";

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
    fn short_key_is_an_error() {
        assert!(index_from_key(b"abc").is_err());
    }
}
