//! The final state, read from the replicas' data dirs once the run is over.
//!
//! After the workload stopped and every fault healed: wait for a leader,
//! take its commit index `C`, wait until every voter applied `C`, SIGKILL
//! every node (no clean shutdown: what counts is what was on disk), then
//! rebuild each voter's state at `C` from its sled data dir the way a
//! restart does (the latest snapshot, then the log entries after it
//! through the pure state machine). The replicas must agree exactly; their
//! common state is the final observation the durability and
//! linearizability checkers use. Its ages are measured from the state's
//! own `now` (the time of the last command applied), never from any clock.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::EntryPayload;
use runner_storage::client::Client;
use runner_storage::raft::storage::data_dir::{DataDir, Durability};
use runner_storage::raft::storage::log_store::LogStore;
use runner_storage::raft::storage::sm_store::StateMachineStore;
use runner_storage::state_machine::{State, DEFAULT_NAMESPACE};
use tokio::time::Instant;

use crate::history::{LabClock, Observation, ObservedLock, ObservedRunner};
use crate::lab::Lab;
use crate::nemesis::{wait_for_leader, LEADER_WAIT};

/// Longest every voter may take to apply the leader's commit index.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// Rebuilds the state a data dir holds at log index `index`.
async fn state_at(data_dir: &Path, index: u64) -> Result<State, String> {
    let data_dir = DataDir::open(data_dir, runner_storage::limits::SLED_CACHE_BYTES, Durability::Synced)
        .map_err(|e| format!("open {}: {e}", data_dir.display()))?;
    let state_machine = StateMachineStore::open(&data_dir, State::default()).map_err(|e| format!("snapshot: {e}"))?;
    let applied = state_machine.read().clone();
    let first = applied.last_applied.map_or(0, |log_id| log_id.index + 1);
    if first > index + 1 {
        return Err(format!("its snapshot is at {first}, past the commit index {index}"));
    }
    let mut state = applied.state;
    let mut log = LogStore::open(&data_dir).map_err(|e| format!("log: {e}"))?;
    let entries =
        log.get_log_reader().await.try_get_log_entries(first..=index).await.map_err(|e| format!("log: {e}"))?;
    let expected = usize::try_from(index + 1 - first).expect("entry count fits usize");
    if entries.len() != expected {
        return Err(format!("its log holds {} of the {expected} entries {first}..={index}", entries.len()));
    }
    for (entry, want) in entries.iter().zip(first..) {
        if entry.log_id.index != want {
            return Err(format!("log entry {} where {want} was expected", entry.log_id.index));
        }
        if let EntryPayload::Normal(envelopes) = &entry.payload {
            for envelope in envelopes.iter() {
                state.apply(envelope);
            }
        }
    }
    Ok(state)
}

fn final_state_of(state: &State, at_us: i64) -> Observation {
    let now_ms = state.now_ms();
    let namespace = state.namespace(DEFAULT_NAMESPACE);
    let mut locks: Vec<ObservedLock> = namespace
        .into_iter()
        .flat_map(|namespace| namespace.locks().iter())
        .map(|(shard_id, lock)| ObservedLock {
            shard_id: shard_id.clone(),
            address: lock.address.clone(),
            age_ms: now_ms.saturating_sub(lock.acquired_at_ms),
        })
        .collect();
    locks.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
    let mut runners: Vec<ObservedRunner> = namespace
        .into_iter()
        .flat_map(|namespace| namespace.runners().iter())
        .map(|(address, record)| ObservedRunner {
            address: address.clone(),
            runner: record.runner.clone(),
            healthy: record.healthy,
            machine_id: record.machine_id,
            heartbeat_age_ms: now_ms.saturating_sub(record.last_heartbeat_ms),
        })
        .collect();
    runners.sort_by(|a, b| a.address.cmp(&b.address));
    Observation {
        source: "final state".into(),
        runners_at: (at_us, at_us),
        locks_at: (at_us, at_us),
        lock_expiration_ms: state.lock_expiration_ms(DEFAULT_NAMESPACE),
        locks,
        runners,
    }
}

async fn wait_for_applied(client: &Client, addresses: &[(u64, String)], index: u64) -> Vec<String> {
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    let mut behind: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        behind.clear();
        for (id, address) in addresses {
            match client.status_of(address).await {
                Ok(status) if status.applied_index >= index => {}
                Ok(status) => behind.push(format!("node {id} applied {}", status.applied_index)),
                Err(error) => behind.push(format!("node {id}: {error}")),
            }
        }
        if behind.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    behind
}

/// Reads the final state; the second value lists problems (replicas that
/// disagree or did not catch up), which are violations.
pub async fn read(
    shared: &Arc<Mutex<Lab>>,
    voters: &BTreeSet<u64>,
    clock: &LabClock,
) -> (Option<Observation>, Vec<String>) {
    let addresses: Vec<(u64, String)> = {
        let lab = shared.lock().expect("lab");
        voters.iter().map(|id| (*id, lab.address(*id))).collect()
    };
    let client = Client::new(addresses.iter().map(|(_, address)| address.clone()).collect()).expect("client");
    let Some(leader) = wait_for_leader(shared, &client, voters, LEADER_WAIT).await else {
        return (None, vec!["final state: no leader after the run".into()]);
    };
    let leader_address = addresses.iter().find(|(id, _)| *id == leader).map(|(_, a)| a.clone()).expect("leader");
    let commit_index = match client.status_of(&leader_address).await {
        Ok(status) => status.commit_index,
        Err(error) => return (None, vec![format!("final state: leader {leader} status: {error}")]),
    };
    let at_us = clock.now_us();
    let mut problems: Vec<String> = wait_for_applied(&client, &addresses, commit_index)
        .await
        .into_iter()
        .map(|behind| format!("final state: did not catch up to {commit_index} within {CATCH_UP_TIMEOUT:?}: {behind}"))
        .collect();
    let data_dirs: Vec<(u64, PathBuf)> = tokio::task::block_in_place(|| {
        let mut lab = shared.lock().expect("lab");
        let ids: Vec<u64> = lab.nodes.keys().copied().collect();
        for id in ids {
            lab.kill(id);
        }
        voters.iter().map(|id| (*id, lab.nodes[id].data_dir.clone())).collect()
    });
    let mut states: Vec<(u64, State)> = Vec::new();
    for (id, data_dir) in data_dirs {
        match state_at(&data_dir, commit_index).await {
            Ok(state) => states.push((id, state)),
            Err(error) => problems.push(format!("final state: node {id}: {error}")),
        }
    }
    let Some((first_id, first)) = states.first() else { return (None, problems) };
    for (id, state) in &states[1..] {
        if state != first {
            problems.push(format!("replicas disagree at index {commit_index}: node {id} differs from node {first_id}"));
        }
    }
    (Some(final_state_of(first, at_us)), problems)
}
