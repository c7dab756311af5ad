//! The gRPC edge of a node: the client API (`runner_storage.v1`), the Admin
//! and Cluster administration services, and the server that hosts them with
//! the Raft service on one port.
//!
//! - [`runner_storage`]: the eight calls: decode, propose or read, encode.
//! - [`admin`]: `Admin.Status`, `Admin.SetLockExpiration`, and membership.
//! - [`forward`]: a follower hands a call to the leader, once.
//! - [`inspect`]: the runner and lock tables for operators.
//! - [`observe`]: gRPC health and the `/metrics` endpoint.
//!
//! Errors become statuses through the one table, `transport::status`.

pub mod admin;
pub mod forward;
pub mod inspect;
pub mod observe;
pub mod runner_storage;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::limits;
use crate::node::{CallError, Node};
use crate::pb;
use crate::raft::transport::server::RaftService;
use crate::transport;
use crate::transport::status;

/// Who may call a node: TLS on the port, and the bearer token.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// TLS for the whole port (plaintext connections are then refused).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Bearer token every caller must present.
    pub token: Option<String>,
}

/// Serves every gRPC service of `node` on `listener` until `shutdown` completes.
///
/// The client and admin services require the token (when set); the Raft
/// service requires a certificate of the cluster's CA (with TLS) and the token.
/// Health and reflection stay open, as orchestrators' probes expect.
///
/// # Errors
/// When the TLS settings are rejected or the server fails (the listener broke).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    security: ServerSecurity,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    use tonic::service::interceptor::InterceptedService;
    // Streams between nodes outlive single calls: they end when stopping
    // turns true, as the graceful shutdown starts, instead of holding it.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let bytes_max = limits::GRPC_MESSAGE_BYTES_MAX;
    let client_check = transport::require_token(security.token.clone());
    let peer_check = transport::require_peer(security.tls.is_some(), security.token.clone());
    let runner_storage = pb::v1::runner_storage_server::RunnerStorageServer::new(
        runner_storage::RunnerStorageService::new(node.clone()),
    )
    .max_decoding_message_size(bytes_max)
    .max_encoding_message_size(bytes_max);
    let admin = pb::v1::admin_server::AdminServer::new(admin::AdminService::new(node.clone()));
    let cluster = pb::admin::cluster_server::ClusterServer::new(admin::ClusterService::new(node.clone()));
    let inspect = pb::admin::inspect_server::InspectServer::new(inspect::InspectService::new(node.clone()))
        .max_encoding_message_size(bytes_max);
    let raft = pb::raft::raft_server::RaftServer::new(RaftService::new(
        node.raft().clone(),
        node.raft_events(),
        stopping_rx,
        node.cluster_identity(),
    ))
    .max_decoding_message_size(bytes_max)
    .max_encoding_message_size(bytes_max);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(observe::report_health(node.clone(), health_reporter));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the compiled-in descriptor sets are valid");
    let mut builder = Server::builder();
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(limits::CONCURRENT_REQUESTS_PER_CONNECTION_MAX)
        .add_service(InterceptedService::new(runner_storage, client_check.clone()))
        .add_service(InterceptedService::new(admin, client_check.clone()))
        .add_service(InterceptedService::new(cluster, client_check.clone()))
        .add_service(InterceptedService::new(inspect, client_check))
        .add_service(InterceptedService::new(raft, peer_check))
        .add_service(health)
        .add_service(reflection)
        // Accepted connections need TCP_NODELAY themselves: the builder's
        // setting applies only to listeners tonic binds. Without it a
        // multi-segment response waits ~40 ms for the client's delayed ACK.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
}

/// Answers a call here, or forwards it to the leader when this node is not it.
///
/// `local` runs the call on this node; `forward` runs it on the leader over
/// `channel`. A call that was itself forwarded is never forwarded again.
/// `local` borrows the message, so an attempt copies only what its command
/// keeps (a `refresh` copies its address, not its ten shard ids twice); the
/// message is cloned only to be forwarded.
pub(crate) async fn answer_or_forward<M, R, Fut, Fwd, FwdFut>(
    call: &'static str,
    request: Request<M>,
    local: impl Fn(&M) -> Fut,
    forward: Fwd,
    node: &Node,
) -> Result<Response<R>, Status>
where
    M: Clone + forward::PlaceAgain,
    Fut: Future<Output = Result<R, CallError>>,
    Fwd: Fn(Channel, Request<M>) -> FwdFut,
    FwdFut: Future<Output = Result<Response<R>, Status>>,
{
    let started = std::time::Instant::now();
    let answer = answer_or_forward_unmeasured(request, local, forward, node).await;
    let error_code = answer.as_ref().err().map(Status::code);
    node.metrics().record_call(call, started.elapsed(), error_code);
    answer
}

async fn answer_or_forward_unmeasured<M, R, Fut, Fwd, FwdFut>(
    request: Request<M>,
    local: impl Fn(&M) -> Fut,
    forward: Fwd,
    node: &Node,
) -> Result<Response<R>, Status>
where
    M: Clone + forward::PlaceAgain,
    Fut: Future<Output = Result<R, CallError>>,
    Fwd: Fn(Channel, Request<M>) -> FwdFut,
    FwdFut: Future<Output = Result<Response<R>, Status>>,
{
    let already_forwarded = forward::is_forwarded(&request);
    let timeout = grpc_timeout(&request);
    let received = std::time::Instant::now();
    let hold_until = leader_wait_deadline(timeout);
    let no_leader_hold_until = hold_until.min(tokio::time::Instant::now() + limits::NO_LEADER_WAIT_MAX);
    let message = request.into_inner();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let may_wait = !already_forwarded && attempts < limits::LEADER_WAIT_ATTEMPTS_MAX;
        let leader_address = match local(&message).await {
            Ok(answer) => return Ok(Response::new(answer)),
            Err(CallError::Failed(error)) => return Err(status::to_status(error)),
            Err(CallError::NotLeader { leader_address }) => leader_address,
        };
        let leader_address = match leader_address {
            Some(address) if !already_forwarded => address,
            None if may_wait && node.wait_for_leader(None, no_leader_hold_until).await => continue,
            leader_hint => return Err(not_leader_status(node, leader_hint)),
        };
        let channel = node.peers().channel(&leader_address).map_err(status::to_status)?;
        // What is left of the caller's deadline, after any wait for a leader.
        let remaining = timeout.map(|t| t.saturating_sub(received.elapsed()));
        let forwarded = forward(channel, forward::forward_request(node.peers(), message.clone(), remaining));
        // A leader that stops answering (paused, partitioned) holds the call
        // until the caller gives up. As soon as this node knows another
        // leader, place the call there, when placing it twice does no harm.
        let replaceable = may_wait && message.may_place_again();
        let status = tokio::select! {
            answered = forwarded => match answered {
                Ok(response) => return Ok(with_leader_hint(response, &leader_address)),
                Err(status) => status,
            },
            true = node.wait_for_leader(Some(&leader_address), hold_until), if replaceable => {
                tracing::debug!(leader = %leader_address, "a new leader was elected during the forward; placing it there");
                continue;
            }
        };
        if may_wait && place_again_after(node, &status, &leader_address, message.may_place_again(), hold_until).await {
            continue;
        }
        return Err(forward_failure(status, &leader_address));
    }
}

/// The status of a call answered here that failed: `UNAVAILABLE` naming
/// the leader for one that must go there (a call that is not forwarded).
pub(crate) fn call_error_status(error: CallError) -> Status {
    match error {
        CallError::Failed(error) => status::to_status(error),
        CallError::NotLeader { leader_address } => status::to_status(Error::Unavailable {
            message: "this node is not the leader".into(),
            leader_hint: leader_address,
        }),
    }
}

/// `UNAVAILABLE` for a call this node cannot place: it knows no leader, or
/// the call was forwarded to it already (it names the leader it knows).
fn not_leader_status(node: &Node, leader_hint: Option<String>) -> Status {
    let message = match &leader_hint {
        None => format!("node {} is not the leader and knows no leader", node.id),
        Some(leader) => format!("node {} is not the leader (forwarded once already; leader: {leader})", node.id),
    };
    status::to_status(Error::Unavailable { message, leader_hint })
}

/// Whether a call whose forward to `leader` failed with `status` is placed
/// again, once a new leader is known (within `hold_until`).
async fn place_again_after(
    node: &Node,
    status: &Status,
    leader: &str,
    may_place_twice: bool,
    hold_until: tokio::time::Instant,
) -> bool {
    // A leader that refused the connection never saw the call: it died,
    // and an election is under way. Hold the call for the next leader
    // instead of sending the caller away to retry blindly.
    if forward::never_delivered(status) {
        return node.wait_for_leader(Some(leader), hold_until).await;
    }
    // A connection that broke mid-call (often a stale one to a leader that
    // just died) leaves the call's fate unknown. Place it again only when a
    // second placement cannot apply it twice; the next attempt meets a
    // refused connection if the leader is gone, and waits above.
    forward::no_answer(status) && may_place_twice && node.wait_for_leader(None, hold_until).await
}

/// Until when a call may wait for a leader: [`limits::LEADER_WAIT_MAX`],
/// less when the caller's deadline is nearer (leaving it time to answer).
fn leader_wait_deadline(timeout: Option<std::time::Duration>) -> tokio::time::Instant {
    let wait = timeout.map_or(limits::LEADER_WAIT_MAX, |t| {
        t.saturating_sub(limits::LEADER_WAIT_ANSWER_MARGIN).min(limits::LEADER_WAIT_MAX)
    });
    tokio::time::Instant::now() + wait
}

/// Names the leader on a forwarded success too: the client goes straight
/// there next time instead of paying two hops per call.
fn with_leader_hint<R>(mut response: Response<R>, leader_address: &str) -> Response<R> {
    if let Ok(value) = leader_address.parse() {
        response.metadata_mut().insert(status::LEADER_ADDRESS_KEY, value);
    }
    response
}

/// The leader's answer to a forwarded call, passed through with the leader
/// hint, or `UNAVAILABLE` naming the leader when it could not be reached.
fn forward_failure(status: Status, leader_address: &str) -> Status {
    let mut status = if status.code() == tonic::Code::Unavailable {
        Status::unavailable(format!("forwarding to the leader at {leader_address} failed: {}", status.message()))
    } else {
        status
    };
    if let Ok(value) = leader_address.parse() {
        status.metadata_mut().insert(status::LEADER_ADDRESS_KEY, value);
    }
    status
}

/// The caller's deadline, from the `grpc-timeout` header, if it sent one.
fn grpc_timeout<M>(request: &Request<M>) -> Option<std::time::Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => std::time::Duration::from_secs(amount * 3600),
        "M" => std::time::Duration::from_secs(amount * 60),
        "S" => std::time::Duration::from_secs(amount),
        "m" => std::time::Duration::from_millis(amount),
        "u" => std::time::Duration::from_micros(amount),
        "n" => std::time::Duration::from_nanos(amount),
        _ => return None,
    })
}
