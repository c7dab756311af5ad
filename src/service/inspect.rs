//! `runner_storage.admin.v1.Inspect`: the runner and lock tables for
//! operators (`ctl runners`, `ctl locks`), read on the leader after a read
//! barrier like `GetRunners`.

use std::sync::Arc;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::answer_or_forward;
use crate::model::encoding::split_shard_id;
use crate::node::Node;
use crate::pb::admin as pb;
use crate::pb::admin::inspect_client::InspectClient;
use crate::state_machine::{namespace_or_default, validate_namespace, Namespace, State};

/// The `Inspect` service of one node.
pub struct InspectService {
    node: Arc<Node>,
}

impl InspectService {
    /// The service over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        InspectService { node }
    }
}

fn runner_records(namespace: Option<&Namespace>, now_ms: u64, lock_expiration_ms: u64) -> pb::ListRunnersResponse {
    let mut runners: Vec<pb::RunnerRecord> = namespace
        .into_iter()
        .flat_map(|namespace| namespace.runners().iter().map(move |runner| (namespace, runner)))
        .map(|(namespace, (address, record))| pb::RunnerRecord {
            address: address.clone(),
            runner: record.runner.clone(),
            healthy: record.healthy,
            machine_id: record.machine_id,
            heartbeat_age_ms: now_ms.saturating_sub(record.last_heartbeat_ms),
            live: namespace.is_live(record, now_ms),
        })
        .collect();
    runners.sort_by_key(|runner| runner.machine_id);
    runners.truncate(crate::limits::LIST_RECORDS_MAX);
    pb::ListRunnersResponse { runners, lock_expiration_ms }
}

fn lock_records(
    namespace: Option<&Namespace>,
    now_ms: u64,
    lock_expiration_ms: u64,
    filter: &pb::ListLocksRequest,
) -> pb::ListLocksResponse {
    let group_of = |shard_id: &str| split_shard_id(shard_id).map(|(group, _)| group.to_owned()).unwrap_or_default();
    let mut locks: Vec<(String, i64, pb::LockRecord)> = namespace
        .into_iter()
        .flat_map(|namespace| namespace.locks().iter().map(move |lock| (namespace, lock)))
        .filter(|(_, (shard_id, record))| {
            (filter.group.is_empty() || group_of(shard_id) == filter.group)
                && (filter.address.is_empty() || record.address == filter.address)
        })
        .map(|(namespace, (shard_id, record))| {
            let (group, id) = split_shard_id(shard_id).unwrap_or((shard_id, "0"));
            let lock = pb::LockRecord {
                shard_id: shard_id.clone(),
                address: record.address.clone(),
                age_ms: now_ms.saturating_sub(record.acquired_at_ms),
                held: namespace.is_held(record, now_ms),
            };
            (group.to_owned(), id.parse().unwrap_or(0), lock)
        })
        .collect();
    locks.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    locks.truncate(crate::limits::LIST_RECORDS_MAX);
    let locks = locks.into_iter().map(|(_, _, lock)| lock).collect();
    pb::ListLocksResponse { locks, lock_expiration_ms }
}

/// Runs `list` on the namespace a request names (`""`: the default), with
/// that namespace's `E` and the read's time.
fn in_namespace<T>(
    state: &State,
    now_ms: u64,
    namespace: &str,
    list: impl FnOnce(Option<&Namespace>, u64, u64) -> T,
) -> T {
    list(state.namespace(namespace), now_ms.max(state.now_ms()), state.lock_expiration_ms(namespace))
}

fn client(channel: Channel) -> InspectClient<Channel> {
    InspectClient::new(channel).max_decoding_message_size(crate::limits::GRPC_MESSAGE_BYTES_MAX)
}

#[tonic::async_trait]
impl pb::inspect_server::Inspect for InspectService {
    async fn list_runners(
        &self,
        request: Request<pb::ListRunnersRequest>,
    ) -> Result<Response<pb::ListRunnersResponse>, Status> {
        let local = |m: &pb::ListRunnersRequest| {
            let namespace = namespace_or_default(&m.namespace);
            async move {
                validate_namespace(&namespace)?;
                self.node.read(|state, now_ms| in_namespace(state, now_ms, &namespace, runner_records)).await
            }
        };
        answer_or_forward(
            "list_runners",
            request,
            local,
            |c, r| async move { client(c).list_runners(r).await },
            &self.node,
        )
        .await
    }

    async fn list_locks(
        &self,
        request: Request<pb::ListLocksRequest>,
    ) -> Result<Response<pb::ListLocksResponse>, Status> {
        let local = |filter: &pb::ListLocksRequest| {
            let filter = filter.clone();
            let namespace = namespace_or_default(&filter.namespace);
            async move {
                validate_namespace(&namespace)?;
                let list = |namespace: Option<&Namespace>, now_ms, e| lock_records(namespace, now_ms, e, &filter);
                self.node.read(|state, now_ms| in_namespace(state, now_ms, &namespace, list)).await
            }
        };
        answer_or_forward("list_locks", request, local, |c, r| async move { client(c).list_locks(r).await }, &self.node)
            .await
    }
}
