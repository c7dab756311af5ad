//! openraft's messages on the wire: postcard bytes in a `RaftPayload`.
//! Bytes that do not decode are the peer's error (`INVALID_ARGUMENT`),
//! never a panic.

use serde::{de::DeserializeOwned, Serialize};
use tonic::Status;

use crate::pb::raft::RaftPayload;

/// One of openraft's messages from a peer's payload bytes.
///
/// # Errors
/// `INVALID_ARGUMENT` when the bytes do not decode.
pub fn decode_payload<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(data).map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

/// A message or answer as a payload for the peer.
///
/// # Errors
/// `INTERNAL` when serde cannot encode it (a bug).
pub fn encode_payload<T: Serialize>(message: &T) -> Result<RaftPayload, Status> {
    let data =
        postcard::to_allocvec(message).map_err(|e| Status::internal(format!("unencodable Raft message: {e}")))?;
    Ok(RaftPayload { data })
}
