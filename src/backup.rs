//! [`Backup`]: a consistent copy of the replicated state in one file
//! (`ctl backup`, read through the leader after a read barrier), and its
//! file format. `restore` and `recover` (`node::offline`) make data dirs of it.
//!
//! File layout, integers little endian: `MAGIC` (8 bytes) · format version
//! (4) · CRC-32 of the body (4) · body length (8) · body (postcard
//! [`Backup`]). A file of another format version is refused naming both
//! versions; a short file or a CRC mismatch is refused as damaged.

use openraft::{LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::raft::{Node, NodeId};
use crate::state_machine::State;

/// The backup format this release writes and reads.
pub const BACKUP_FORMAT_VERSION: u32 = 1;

/// The first bytes of a backup file.
const MAGIC: &[u8; 8] = b"RSBACKUP";
/// Bytes before the body: magic, version, CRC, length.
const HEADER_BYTES: usize = 8 + 4 + 4 + 8;

/// The replicated state at one log position, with what it was taken from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    /// The last log id applied to `state`.
    pub last_applied: Option<LogId<NodeId>>,
    /// The membership then (for the record: a restore sets its own).
    pub membership: StoredMembership<NodeId, Node>,
    /// The state: every namespace, the store time, the dedup table.
    pub state: State,
    /// The wall clock of the leader that took it (ms since the epoch).
    pub taken_at_ms: u64,
}

impl Backup {
    /// The file bytes of this backup.
    ///
    /// # Errors
    /// [`Error::Storage`] when serde cannot encode it (a bug).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::storage("encoding the backup", e))?;
        let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&BACKUP_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&body);
        Ok(bytes)
    }

    /// The backup in `bytes`.
    ///
    /// # Errors
    /// [`Error::FailedPrecondition`] naming both versions for another format
    /// version; [`Error::InvalidArgument`] for a file that is not a backup or
    /// is damaged.
    pub fn from_bytes(bytes: &[u8]) -> Result<Backup> {
        let damaged = |problem: String| Error::InvalidArgument(format!("not a usable backup file: {problem}"));
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err(damaged("it does not start as a runner-storage backup".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != BACKUP_FORMAT_VERSION {
            return Err(Error::FailedPrecondition(format!(
                "the backup is in format {version}; this release reads format {BACKUP_FORMAT_VERSION}"
            )));
        }
        let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let length = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let body = &bytes[HEADER_BYTES..];
        if body.len() as u64 != length {
            return Err(damaged(format!("its header promises {length} bytes, it holds {}", body.len())));
        }
        if crc32fast::hash(body) != crc {
            return Err(damaged("its checksum does not match (torn or corrupt)".into()));
        }
        postcard::from_bytes(body).map_err(|e| damaged(format!("it does not decode: {e}")))
    }

    /// The CRC-32 of the body of `bytes` (a backup's fingerprint).
    pub fn checksum(bytes: &[u8]) -> u32 {
        bytes.get(12..16).map_or(0, |crc| u32::from_le_bytes(crc.try_into().expect("4 bytes")))
    }

    /// What the backup holds, as `ctl backup --json` prints it.
    pub fn summary(&self, bytes: &[u8]) -> serde_json::Value {
        let now_ms = self.state.now_ms();
        let namespaces: Vec<serde_json::Value> = self
            .state
            .namespaces()
            .iter()
            .map(|(name, namespace)| {
                let live = namespace.runners().values().filter(|r| namespace.is_live(r, now_ms)).count();
                let held = namespace.locks().values().filter(|l| namespace.is_held(l, now_ms)).count();
                serde_json::json!({
                    "namespace": name.as_str(), "lock_expiration_ms": namespace.lock_expiration_ms(),
                    "runners": namespace.runners().len(), "live_runners": live,
                    "locks": namespace.locks().len(), "held_locks": held,
                })
            })
            .collect();
        serde_json::json!({
            "format_version": BACKUP_FORMAT_VERSION,
            "checksum": format!("{:08x}", Backup::checksum(bytes)),
            "bytes": bytes.len(),
            "index": self.last_applied.map_or(0, |log_id| log_id.index),
            "term": self.last_applied.map_or(0, |log_id| log_id.leader_id.term),
            "cluster_id": self.state.cluster_id(),
            "store_time_ms": now_ms,
            "taken_at_ms": self.taken_at_ms,
            "namespaces": namespaces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{Command, Envelope};

    fn backup() -> Backup {
        let mut state = State::default();
        let runner = r#"{"address":{"host":"h","port":1},"groups":["default"],"weight":1}"#;
        state.apply(&Envelope::new(
            5,
            Command::Register { address: "h:1".into(), runner: runner.into(), healthy: true },
        ));
        let last_applied = Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42));
        Backup { last_applied, membership: StoredMembership::default(), state, taken_at_ms: 7 }
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let backup = backup();
        let bytes = backup.to_bytes().unwrap();
        assert_eq!(Backup::from_bytes(&bytes).unwrap(), backup);
        let summary = backup.summary(&bytes);
        assert_eq!((summary["index"].as_u64(), summary["term"].as_u64()), (Some(42), Some(3)));
        assert_eq!(summary["namespaces"][0]["runners"], 1);
    }

    #[test]
    fn another_format_or_a_damaged_file_is_refused_saying_which() {
        let mut bytes = backup().to_bytes().unwrap();
        bytes[8..12].copy_from_slice(&9u32.to_le_bytes());
        let error = Backup::from_bytes(&bytes).unwrap_err().to_string();
        assert!(error.contains("format 9") && error.contains(&format!("format {BACKUP_FORMAT_VERSION}")), "{error}");
        let mut bytes = backup().to_bytes().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(Backup::from_bytes(&bytes).unwrap_err().to_string().contains("checksum"));
        assert!(Backup::from_bytes(&bytes[..30]).unwrap_err().to_string().contains("promises"));
        assert!(Backup::from_bytes(b"hello").unwrap_err().to_string().contains("not start"));
    }
}
