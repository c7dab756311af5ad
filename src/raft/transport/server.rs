//! The server side of Raft traffic: a tonic service that decodes openraft's
//! messages from peers, hands them to the local Raft, and encodes its answer.

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::append_stream::{answer_appends, AnswerStream};
use super::codec::{decode_payload, encode_payload};
use super::RaftEvents;
use crate::pb::raft::raft_server;
use crate::pb::raft::RaftPayload;
use crate::raft::Raft;
use crate::transport::identity::ClusterIdentity;

/// The `runner_storage.raft.v1.Raft` service of one node.
pub struct RaftService {
    raft: Raft,
    events: Arc<dyn RaftEvents>,
    stopping: watch::Receiver<bool>,
    identity: ClusterIdentity,
}

impl RaftService {
    /// A service feeding `raft`, reporting appends and votes to `events`; it
    /// ends its append streams when `stopping` turns true, and refuses calls
    /// from nodes of another cluster than `identity`'s.
    pub fn new(
        raft: Raft,
        events: Arc<dyn RaftEvents>,
        stopping: watch::Receiver<bool>,
        identity: ClusterIdentity,
    ) -> Self {
        RaftService { raft, events, stopping, identity }
    }

    /// Refuses `request` from a node of another cluster (logged: an
    /// operator must hear of a stale node knocking).
    fn check_cluster<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.identity.check(request.metadata()).inspect_err(|refused| {
            tracing::warn!(message = refused.message(), "refused Raft traffic from another cluster");
        })
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    decode_payload(&request.into_inner().data)
}

fn encode<T: Serialize>(answer: &T) -> Result<Response<RaftPayload>, Status> {
    encode_payload(answer).map(Response::new)
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_cluster(&request)?;
        let answer = self.raft.append_entries(decode(request)?).await;
        self.events.heard_from_leader();
        encode(&answer)
    }

    type AppendEntriesStreamStream = AnswerStream;

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AnswerStream>, Status> {
        self.check_cluster(&request)?;
        let answers =
            answer_appends(self.raft.clone(), self.events.clone(), request.into_inner(), self.stopping.clone());
        Ok(Response::new(answers))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_cluster(&request)?;
        let request: crate::raft::typ::VoteRequest = decode(request)?;
        let answer = self.raft.vote(request.clone()).await;
        if let Ok(answer) = &answer {
            self.events.vote_answered(&request, answer);
        }
        encode(&answer)
    }

    async fn timeout_now(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_cluster(&request)?;
        // The follower's side of a hand-over (`raft::workarounds::handover`):
        // campaign now, if the request comes from the leader this node follows.
        let leader_vote: openraft::Vote<crate::raft::NodeId> = decode(request)?;
        let vote = self.raft.metrics().borrow().vote;
        let answer: Result<(), String> = if vote != leader_vote || !vote.is_committed() {
            Err(format!("asked to campaign by {leader_vote}, but this node's vote is {vote}"))
        } else {
            tracing::info!(%leader_vote, "the leader hands over leadership: campaigning now");
            self.raft.trigger().elect().await.map_err(|fatal| fatal.to_string())
        };
        encode(&answer)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.check_cluster(&request)?;
        let answer = self.raft.install_snapshot(decode(request)?).await;
        // A leader busy streaming a snapshot here sends no appends meanwhile.
        self.events.heard_from_leader();
        encode(&answer)
    }
}
