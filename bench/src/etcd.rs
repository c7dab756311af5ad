//! The same measurements against an etcd cluster, so that the comparison
//! issue 6 asks for can be made on one machine in one sitting:
//! - `etcd-put`: each task puts a 16-byte value under its own key (etcd's
//!   side of `register`);
//! - `etcd-lock`: the lock transaction of etcd's own `concurrency.Mutex`
//!   over [`ACQUIRE_SHARDS`] keys — put the key with the task's lease if it
//!   does not exist, else read it to see whether the task already holds it
//!   — with the release pattern of `acquire` ([`HeldShards`]), a delete per
//!   release (etcd's side of `acquire`);
//! - `etcd-range`: a linearizable range read of 100 keys holding runner
//!   JSON (etcd's side of `get-runners`);
//! - `etcd-failover` ([`crate::etcd_failover`]): `failover`'s rounds.
//!
//! Every call goes straight to etcd's leader (found with `Maintenance.Status`),
//! the best case for etcd: a member that is not leader would forward writes
//! to it. Channels are made as the runner-storage client makes its own
//! (plaintext, `TCP_NODELAY`, one HTTP/2 connection per
//! [`TASKS_PER_CLIENT`] tasks). Keys live under [`KEY_PREFIX`] and are
//! deleted after each run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use tonic::transport::Channel;

use runner_storage::transport::status::from_status;
use runner_storage::transport::Dialer;
use runner_storage::Error;

use crate::pb::etcd::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::etcd::kv_client::KvClient;
use crate::pb::etcd::lease_client::LeaseClient;
use crate::pb::etcd::maintenance_client::MaintenanceClient;
use crate::pb::etcd::request_op::Request;
use crate::pb::etcd::response_op::Response;
use crate::pb::etcd::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp,
    StatusRequest, TxnRequest,
};
use crate::report::{Call, Recorder};
use crate::workloads::{bench_runner, lock_task, AcquireArgs, GetRunnersArgs, HeldShards, LockCalls, ACQUIRE_SHARDS};
use crate::{drive_tasks, run_steps, RunPlan, CALL_DEADLINE, DRAIN_MAX, TASKS_PER_CLIENT};

/// The client endpoints of `scripts/etcd-cluster.sh up`.
pub const DEFAULT_ENDPOINTS: &str = "127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379";
/// Every key the bench writes starts with this.
pub const KEY_PREFIX: &str = "runner-storage-bench/";
/// The value `etcd-put` writes: 16 bytes, as in issue 6's etcd figures.
pub const PUT_VALUE: &[u8; 16] = b"0123456789abcdef";
/// What each `etcd-lock` task's lease outlives its run by (it is revoked in
/// teardown anyway): no lock expires while the run takes it.
const LEASE_TTL_MARGIN: Duration = Duration::from_secs(60);
/// Setup and teardown calls in flight at once.
const SETUP_PARALLEL: usize = 64;
/// Longest one `Maintenance.Status` call may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the bench waits for etcd to have a leader.
const LEADER_WAIT_MAX: Duration = Duration::from_secs(30);

/// Channels to etcd's leader, one per [`TASKS_PER_CLIENT`] tasks.
struct EtcdPool {
    channels: Vec<Channel>,
}

impl EtcdPool {
    async fn to_leader(endpoints: &[String], tasks: usize) -> anyhow::Result<Self> {
        let leader = leader_endpoint(endpoints).await?;
        let dialer = Dialer::default();
        let channels = (0..tasks.div_ceil(TASKS_PER_CLIENT).max(1))
            .map(|_| dialer.channel(&leader))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("bad etcd endpoint {leader}"))?;
        Ok(EtcdPool { channels })
    }

    fn channel(&self, task: usize) -> Channel {
        self.channels[(task / TASKS_PER_CLIENT) % self.channels.len()].clone()
    }

    fn kv(&self, task: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(task))
    }
}

/// One member's `Maintenance.Status`, as the bench reads it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// The member's place in the endpoints, from 0.
    pub place: usize,
    /// Its member id.
    pub member_id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Its Raft term.
    pub term: u64,
    /// Its applied index.
    pub applied_index: u64,
}

impl MemberView {
    /// Whether the member names itself leader.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.member_id
    }
}

/// Channels to every endpoint, made once (each connects lazily).
///
/// # Errors
/// When an endpoint is not a valid address.
pub fn channels_to(endpoints: &[String]) -> anyhow::Result<Vec<Channel>> {
    let dialer = Dialer::default();
    endpoints
        .iter()
        .map(|endpoint| dialer.channel(endpoint).with_context(|| format!("bad etcd endpoint {endpoint}")))
        .collect()
}

/// The status of the member at `place` behind `channel`; `None` when it
/// does not answer within [`STATUS_TIMEOUT`].
pub async fn member_view(channel: Channel, place: usize) -> Option<MemberView> {
    let mut client = MaintenanceClient::new(channel);
    let status = tokio::time::timeout(STATUS_TIMEOUT, client.status(StatusRequest {})).await.ok()?.ok()?.into_inner();
    Some(MemberView {
        place,
        member_id: status.header?.member_id,
        leader: status.leader,
        term: status.raft_term,
        applied_index: status.raft_applied_index,
    })
}

/// The endpoint of etcd's leader: the member whose `Status` names itself.
async fn leader_endpoint(endpoints: &[String]) -> anyhow::Result<String> {
    let channels = channels_to(endpoints)?;
    let deadline = Instant::now() + LEADER_WAIT_MAX;
    loop {
        for (place, channel) in channels.iter().enumerate() {
            if member_view(channel.clone(), place).await.is_some_and(|view| view.is_leader()) {
                return Ok(endpoints[place].clone());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no etcd leader among {endpoints:?} within {LEADER_WAIT_MAX:?}; is etcd up (scripts/etcd-cluster.sh up)?"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One etcd call with the bench's deadline; errors as the bench counts them.
async fn call<T>(
    request: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> runner_storage::Result<T> {
    match tokio::time::timeout(CALL_DEADLINE, request).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(from_status(status)),
        Err(_) => Err(Error::DeadlineExceeded(format!("no answer from etcd within {CALL_DEADLINE:?}"))),
    }
}

/// `[key, end)` covering every key that starts with `prefix`.
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let key = prefix.as_bytes().to_vec();
    let mut end = key.clone();
    // The prefixes here end in '/', so the last byte never overflows.
    *end.last_mut().expect("prefixes are not empty") += 1;
    (key, end)
}

/// Deletes every key under `prefix`; counts a failure as `teardown.failed`.
async fn delete_prefix(pool: &EtcdPool, prefix: &str, recorder: &mut Recorder) {
    let (key, range_end) = prefix_range(prefix);
    let deleted = call(pool.kv(0).delete_range(DeleteRangeRequest { key, range_end })).await;
    recorder.note_always("teardown.failed", u64::from(deleted.is_err()));
}

/// `etcd-put`: each task puts [`PUT_VALUE`] under its own key in a loop.
///
/// # Errors
/// When etcd has no leader.
pub async fn put(plan: &RunPlan) -> anyhow::Result<(Call, Recorder)> {
    let pool = EtcdPool::to_leader(&plan.endpoints, plan.concurrency).await?;
    let prefix = format!("{KEY_PREFIX}put/");
    let mut recorder = drive_tasks(plan, |index, window| {
        let mut kv = pool.kv(index);
        let key = format!("{prefix}{index}").into_bytes();
        async move {
            let mut recorder = Recorder::new();
            while window.running() {
                let start = Instant::now();
                let request = PutRequest { key: key.clone(), value: PUT_VALUE.to_vec(), lease: 0 };
                let result = call(kv.put(request)).await;
                recorder.record(Call::EtcdPut, &window, start, &result);
            }
            recorder
        }
    })
    .await;
    delete_prefix(&pool, &prefix, &mut recorder).await;
    Ok((Call::EtcdPut, recorder))
}

/// etcd's lock calls: the lock transaction, and a delete to release.
struct EtcdLocks {
    kv: KvClient<Channel>,
    keys: Arc<Vec<Vec<u8>>>,
    owner: Vec<u8>,
    lease: i64,
}

impl LockCalls for EtcdLocks {
    const CALLS: [Call; 2] = [Call::EtcdLock, Call::EtcdUnlock];
    const NOTES: [&'static str; 2] = ["etcd_lock.won", "etcd_lock.conflict"];

    async fn take(&mut self, shard: usize) -> runner_storage::Result<bool> {
        try_lock(&mut self.kv, &self.keys[shard], &self.owner, self.lease).await
    }

    async fn release(&mut self, shard: usize) -> runner_storage::Result<()> {
        let request = DeleteRangeRequest { key: self.keys[shard].clone(), range_end: Vec::new() };
        call(self.kv.delete_range(request)).await.map(|_| ())
    }
}

/// The lock transaction: if `key` does not exist, put `owner` there with
/// `lease`; else read it. Returns whether `owner` holds the key afterwards.
async fn try_lock(kv: &mut KvClient<Channel>, key: &[u8], owner: &[u8], lease: i64) -> runner_storage::Result<bool> {
    let absent = Compare {
        result: CompareResult::Equal.into(),
        target: CompareTarget::Create.into(),
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(0)),
    };
    let put = RequestOp {
        request: Some(Request::RequestPut(PutRequest { key: key.to_vec(), value: owner.to_vec(), lease })),
    };
    let read = RequestOp {
        request: Some(Request::RequestRange(RangeRequest { key: key.to_vec(), ..RangeRequest::default() })),
    };
    let answer = call(kv.txn(TxnRequest { compare: vec![absent], success: vec![put], failure: vec![read] })).await?;
    if answer.succeeded {
        return Ok(true);
    }
    let holder = answer.responses.into_iter().find_map(|op| match op.response {
        Some(Response::ResponseRange(range)) => range.kvs.into_iter().next().map(|kv| kv.value),
        _ => None,
    });
    Ok(holder.as_deref() == Some(owner))
}

/// `etcd-lock`: tasks compete for [`ACQUIRE_SHARDS`] keys with the lock
/// transaction, each under a lease of its own, and release as `acquire` does.
///
/// # Errors
/// When the flags are out of range, etcd has no leader, or a lease cannot be granted.
pub async fn lock(plan: &RunPlan, args: &AcquireArgs) -> anyhow::Result<(Call, Recorder)> {
    anyhow::ensure!((0.0..=1.0).contains(&args.release_probability), "--release-probability must be within 0..=1");
    let pool = EtcdPool::to_leader(&plan.endpoints, plan.concurrency).await?;
    let ttl = plan.warmup + plan.duration + DRAIN_MAX + LEASE_TTL_MARGIN;
    let ttl = i64::try_from(ttl.as_secs()).context("the run is too long for an etcd lease")?;
    let mut leases = Vec::with_capacity(plan.concurrency);
    for index in 0..plan.concurrency {
        let mut lease = LeaseClient::new(pool.channel(index));
        let granted = call(lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }))
            .await
            .context("etcd-lock setup: LeaseGrant failed")?;
        anyhow::ensure!(granted.error.is_empty(), "etcd-lock setup: LeaseGrant: {}", granted.error);
        leases.push(granted.id);
    }
    let keys: Arc<Vec<Vec<u8>>> =
        Arc::new((0..ACQUIRE_SHARDS).map(|i| format!("{KEY_PREFIX}lock/{i}").into_bytes()).collect());
    let mut recorder = drive_tasks(plan, |index, window| {
        let locks = EtcdLocks {
            kv: pool.kv(index),
            keys: Arc::clone(&keys),
            owner: format!("bench-lock-{index}").into_bytes(),
            lease: leases[index],
        };
        lock_task(locks, HeldShards::new(plan.concurrency, args.release_probability), window)
    })
    .await;
    // Revoking a lease deletes the keys it holds.
    let steps = leases
        .into_iter()
        .map(|id| {
            let mut lease = LeaseClient::new(pool.channel(0));
            async move { call(lease.lease_revoke(LeaseRevokeRequest { id })).await.map(|_| ()) }
        })
        .collect();
    let failures = run_steps("etcd-lock teardown", SETUP_PARALLEL, steps).await?;
    recorder.note_always("teardown.failed", failures);
    Ok((Call::EtcdLock, recorder))
}

/// `etcd-range`: `args.runners` keys holding the runner JSON `get-runners`
/// registers are put in setup; tasks read them all with a linearizable range
/// read in a loop. An answer with fewer counts as `etcd_range.short`.
///
/// # Errors
/// When etcd has no leader or setup fails.
pub async fn range(plan: &RunPlan, args: &GetRunnersArgs) -> anyhow::Result<(Call, Recorder)> {
    let pool = EtcdPool::to_leader(&plan.endpoints, plan.concurrency).await?;
    let prefix = format!("{KEY_PREFIX}runners/");
    let steps = (0..args.runners)
        .map(|index| {
            let mut kv = pool.kv(0);
            let (address, runner) = bench_runner("get-runners", index);
            let key = format!("{prefix}{address}").into_bytes();
            async move { call(kv.put(PutRequest { key, value: runner.into_bytes(), lease: 0 })).await.map(|_| ()) }
        })
        .collect();
    let failures = run_steps("etcd-range setup", SETUP_PARALLEL, steps).await?;
    anyhow::ensure!(failures == 0, "etcd-range setup: {failures} puts failed");
    let (key, range_end) = prefix_range(&prefix);
    let expected = args.runners;
    let mut recorder = drive_tasks(plan, |index, window| {
        let mut kv = pool.kv(index);
        let request = RangeRequest { key: key.clone(), range_end: range_end.clone(), ..RangeRequest::default() };
        async move {
            let mut recorder = Recorder::new();
            while window.running() {
                let start = Instant::now();
                let result = call(kv.range(request.clone())).await;
                recorder.record(Call::EtcdRange, &window, start, &result);
                if matches!(&result, Ok(answer) if answer.kvs.len() < expected) {
                    recorder.note(&window, start, "etcd_range.short", 1);
                }
            }
            recorder
        }
    })
    .await;
    delete_prefix(&pool, &prefix, &mut recorder).await;
    Ok((Call::EtcdRange, recorder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_covers_exactly_the_prefix() {
        let (key, end) = prefix_range("runner-storage-bench/put/");
        assert_eq!(key, b"runner-storage-bench/put/");
        assert_eq!(end, b"runner-storage-bench/put0");
        let inside = b"runner-storage-bench/put/17".as_slice();
        let outside = b"runner-storage-bench/put0".as_slice();
        assert!(key.as_slice() <= inside && inside < end.as_slice());
        assert!(outside >= end.as_slice());
    }
}
