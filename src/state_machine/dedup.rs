//! Request-id deduplication (SPEC §6): per client, the answers to its most
//! recent 1,024 sequences, so a retried write is applied once.
//!
//! Bounded three times: at most [`DEDUP_SEQUENCES_PER_CLIENT_MAX`] answers per
//! client, [`DEDUP_CLIENTS_MAX`] clients, and [`DEDUP_BYTES_MAX`] bytes of
//! answers over all clients (the least recently seen clients go first); a
//! client unseen for 10 × `E` is forgotten.
//! Everything is keyed by ordered maps so eviction order is deterministic.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{HashMap, Reply};
use crate::error::{Error, Result};
use crate::limits::{DEDUP_BYTES_MAX, DEDUP_CLIENTS_MAX, DEDUP_SEQUENCES_PER_CLIENT_MAX};
use crate::model::RequestId;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ClientAnswers {
    last_seen_ms: u64,
    /// By sequence: the fingerprint of the command answered, and the answer.
    answers: BTreeMap<u64, (u64, Reply)>,
}

/// The deduplication table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Dedup {
    clients: HashMap<String, ClientAnswers>,
    /// `(last_seen_ms, client_id)` of every client: oldest first, for eviction.
    by_last_seen: BTreeSet<(u64, String)>,
    /// Bytes of every client's answers, derived from `clients`: not in
    /// snapshots (their format is unchanged), counted again on first use.
    #[serde(skip)]
    bytes: DerivedBytes,
}

/// A byte count derived from the table; `None` until counted. Equal to any
/// other, so a restored table equals the one it was saved from.
#[derive(Debug, Clone, Default)]
struct DerivedBytes(Option<usize>);

impl PartialEq for DerivedBytes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Roughly what one remembered answer costs: the map entry, the fingerprint
/// and the strings of the reply.
fn answer_bytes(reply: &Reply) -> usize {
    const ENTRY_BYTES: usize = 64;
    const STRING_BYTES: usize = 24;
    ENTRY_BYTES
        + match reply {
            Reply::ShardIds(shard_ids) => shard_ids.iter().map(|id| id.len() + STRING_BYTES).sum(),
            Reply::Rejected { message, .. } => message.len(),
            Reply::Done | Reply::MachineId(_) | Reply::LockExpiration { .. } => 0,
        }
}

/// Roughly what one client costs besides its answers: its id twice (map key
/// and eviction index) and the two map entries.
fn client_bytes(client_id: &str) -> usize {
    const CLIENT_ENTRY_BYTES: usize = 128;
    CLIENT_ENTRY_BYTES + 2 * client_id.len()
}

fn count_bytes(clients: &HashMap<String, ClientAnswers>) -> usize {
    clients.iter().map(|(id, client)| table_bytes(id, client)).sum()
}

fn table_bytes(client_id: &str, client: &ClientAnswers) -> usize {
    client_bytes(client_id) + client.answers.values().map(|(_, reply)| answer_bytes(reply)).sum::<usize>()
}

impl Dedup {
    /// The remembered answer of `request_id`, `None` when it is new.
    ///
    /// # Errors
    /// [`Error::FailedPrecondition`] when the sequence answered a command with
    /// another `fingerprint`: the client reused a request id for another call.
    /// [`Error::FailedPrecondition`] when the client's table is full and the
    /// sequence is older than the oldest remembered: it may have been applied
    /// and forgotten, so applying it now could apply it twice.
    pub(super) fn lookup(&mut self, request_id: &RequestId, fingerprint: u64, now_ms: u64) -> Result<Option<Reply>> {
        let Some(client) = self.clients.get(&request_id.client_id) else {
            return Ok(None);
        };
        if let Some((answered_fingerprint, reply)) = client.answers.get(&request_id.sequence) {
            if *answered_fingerprint != fingerprint {
                return Err(Error::FailedPrecondition(format!(
                    "request_id.sequence {} of client {:?} was already used for a different call",
                    request_id.sequence, request_id.client_id
                )));
            }
            let reply = reply.clone();
            self.touch(&request_id.client_id, now_ms);
            return Ok(Some(reply));
        }
        let oldest = client.answers.first_key_value().map(|(sequence, _)| *sequence);
        match oldest {
            Some(oldest) if client.answers.len() >= DEDUP_SEQUENCES_PER_CLIENT_MAX && request_id.sequence < oldest => {
                Err(Error::FailedPrecondition(format!(
                    "request_id.sequence {} of client {:?} is older than the oldest remembered ({oldest})",
                    request_id.sequence, request_id.client_id
                )))
            }
            _ => Ok(None),
        }
    }

    /// Remembers the answer to `request_id`, dropping the client's oldest
    /// answer past the per-client bound and the least recently seen client
    /// past the client bound.
    pub(super) fn remember(&mut self, request_id: &RequestId, fingerprint: u64, now_ms: u64, reply: Reply) {
        let client_id = &request_id.client_id;
        self.bytes(); // counted before this client changes (once after a restore)
        if !self.clients.contains_key(client_id) {
            if self.clients.len() >= DEDUP_CLIENTS_MAX {
                self.forget_least_recently_seen();
            }
            self.clients.insert(client_id.clone(), ClientAnswers { last_seen_ms: now_ms, answers: BTreeMap::new() });
            self.by_last_seen.insert((now_ms, client_id.clone()));
            self.add_bytes(client_bytes(client_id), 0);
        }
        self.touch(client_id, now_ms);
        let added = answer_bytes(&reply);
        let client = self.clients.get_mut(client_id).expect("client inserted above");
        let replaced = client.answers.insert(request_id.sequence, (fingerprint, reply));
        let mut removed = replaced.map_or(0, |(_, replaced)| answer_bytes(&replaced));
        while client.answers.len() > DEDUP_SEQUENCES_PER_CLIENT_MAX {
            let (_, (_, dropped)) = client.answers.pop_first().expect("more answers than the bound");
            removed += answer_bytes(&dropped);
        }
        self.add_bytes(added, removed);
        // Past the byte bound the least recently seen clients go, never the
        // one just seen. A client's own answers are bounded by count only:
        // dropping some would make their retries look new (SPEC refuses
        // sequences below the oldest only for a full table).
        while self.bytes() > DEDUP_BYTES_MAX {
            // The oldest entry, or the next one when the oldest is this
            // client (clients seen in the same millisecond sort by id).
            let Some(victim) = self.by_last_seen.iter().find(|(_, id)| id != client_id).cloned() else { break };
            self.by_last_seen.remove(&victim);
            self.forget(&victim.1);
        }
        debug_assert_eq!(self.clients.len(), self.by_last_seen.len());
    }

    fn add_bytes(&mut self, added: usize, removed: usize) {
        let bytes = self.bytes() + added;
        self.bytes.0 = Some(bytes.checked_sub(removed).expect("dedup byte count went below zero"));
    }

    /// Bytes of every answer remembered (counted once after a restore).
    fn bytes(&mut self) -> usize {
        let clients = &self.clients;
        *self.bytes.0.get_or_insert_with(|| count_bytes(clients))
    }

    /// Forgets every client unseen for `idle_ms`.
    pub(super) fn forget_idle(&mut self, now_ms: u64, idle_ms: u64) {
        while let Some((last_seen_ms, _)) = self.by_last_seen.first() {
            if last_seen_ms.saturating_add(idle_ms) > now_ms {
                break;
            }
            self.forget_least_recently_seen();
        }
    }

    /// Clients remembered, and answers remembered over all of them.
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.clients.len(), self.clients.values().map(|client| client.answers.len()).sum())
    }

    /// Bytes of remembered answers, as the byte bound counts them (derived
    /// now, without keeping it, when not yet known after a restore).
    pub(super) fn counted_bytes(&self) -> usize {
        self.bytes.0.unwrap_or_else(|| count_bytes(&self.clients))
    }

    pub(super) fn check_invariants(&self) {
        assert_eq!(self.clients.len(), self.by_last_seen.len(), "dedup index out of step");
        assert!(self.clients.len() <= DEDUP_CLIENTS_MAX, "dedup remembers {} clients", self.clients.len());
        for (client_id, client) in &self.clients {
            assert!(self.by_last_seen.contains(&(client.last_seen_ms, client_id.clone())), "{client_id} not indexed");
            assert!(client.answers.len() <= DEDUP_SEQUENCES_PER_CLIENT_MAX, "{client_id} remembers too much");
        }
        let counted = count_bytes(&self.clients);
        if let Some(bytes) = self.bytes.0 {
            assert_eq!(bytes, counted, "dedup byte count out of step");
        }
        assert!(counted <= DEDUP_BYTES_MAX || self.clients.len() <= 1, "dedup holds {counted} bytes");
    }

    fn touch(&mut self, client_id: &str, now_ms: u64) {
        let Some(client) = self.clients.get_mut(client_id) else { return };
        if client.last_seen_ms == now_ms {
            return;
        }
        self.by_last_seen.remove(&(client.last_seen_ms, client_id.to_owned()));
        client.last_seen_ms = now_ms;
        self.by_last_seen.insert((now_ms, client_id.to_owned()));
    }

    fn forget_least_recently_seen(&mut self) {
        if let Some((_, client_id)) = self.by_last_seen.pop_first() {
            self.forget(&client_id);
        }
    }

    /// Drops `client_id`'s answers (its `by_last_seen` entry is already gone).
    fn forget(&mut self, client_id: &str) {
        if let Some(client) = self.clients.remove(client_id) {
            if let Some(bytes) = self.bytes.0.as_mut() {
                *bytes -= table_bytes(client_id, &client);
            }
        }
    }
}
