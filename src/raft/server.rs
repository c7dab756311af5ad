//! The server side of Raft traffic: a tonic service that decodes openraft's
//! messages from peers, hands them to the local Raft, and encodes its answer.

use serde::{de::DeserializeOwned, Serialize};
use tonic::{Request, Response, Status};

use super::election::Nudges;
use super::Raft;
use crate::pb::raft::raft_server;
use crate::pb::raft::RaftPayload;

/// The `runner_storage.raft.v1.Raft` service of one node.
pub struct RaftService {
    raft: Raft,
    nudges: Nudges,
}

impl RaftService {
    /// A service feeding `raft`, reporting appends and votes to `nudges`.
    pub fn new(raft: Raft, nudges: Nudges) -> Self {
        RaftService { raft, nudges }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    postcard::from_bytes(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode<T: Serialize>(answer: &T) -> Result<Response<RaftPayload>, Status> {
    let data = postcard::to_allocvec(answer).map_err(|e| Status::internal(format!("unencodable Raft answer: {e}")))?;
    Ok(Response::new(RaftPayload { data }))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let answer = self.raft.append_entries(decode(request)?).await;
        self.nudges.heard_from_leader();
        encode(&answer)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let request: super::typ::VoteRequest = decode(request)?;
        let answer = self.raft.vote(request.clone()).await;
        if let Ok(answer) = &answer {
            self.nudges.vote_answered(&request, answer);
        }
        encode(&answer)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let answer = self.raft.install_snapshot(decode(request)?).await;
        // A leader busy streaming a snapshot here sends no appends meanwhile.
        self.nudges.heard_from_leader();
        encode(&answer)
    }
}
