//! Tests of the log store: openraft's own suite, the tail against sled,
//! the integrity checks, and the ordering early replication relies on.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload};

use super::*;
use crate::raft::storage::data_dir::Durability;
use crate::raft::storage::sm_store::StateMachineStore;
use crate::state_machine::{Command, Envelope, State, DEFAULT_NAMESPACE};

fn temporary_data_dir() -> (tempfile::TempDir, DataDir) {
    let temp = tempfile::tempdir().expect("a temp dir");
    let data_dir = DataDir::open(temp.path(), 1 << 20, Durability::Synced).expect("a data dir");
    (temp, data_dir)
}

struct TemporaryDataDir;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TemporaryDataDir {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let (temp, data_dir) = temporary_data_dir();
        let log = LogStore::open(&data_dir)?;
        let state_machine = StateMachineStore::open(&data_dir, State::default())?;
        Ok((temp, log, state_machine))
    }
}

/// The log storage tests of openraft's own conformance suite. (Its
/// state machine tests apply entries with gaps between their indexes,
/// which our state machine refuses on purpose.)
#[tokio::test]
async fn passes_openraft_log_storage_tests() {
    type Tests = Suite<TypeConfig, LogStore, StateMachineStore, TemporaryDataDir, tempfile::TempDir>;
    macro_rules! run {
        ($($test:ident),* $(,)?) => {$(
            let (_temp, log, state_machine) = TemporaryDataDir.build().await.unwrap();
            Tests::$test(log, state_machine).await.unwrap_or_else(|e| panic!("{}: {e}", stringify!($test)));
        )*};
    }
    run!(
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
    );
}

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(
            vec![Envelope {
                namespace: DEFAULT_NAMESPACE.into(),
                time_ms: index,
                request_id: None,
                command: Command::Release { address: format!("h:{term}"), shard_id: format!("g:{index}").into() },
            }]
            .into(),
        ),
    }
}

/// What the in-memory tail serves is what sled holds: the same reads
/// through a store reopened on the same database (empty tail) agree.
#[tokio::test]
async fn the_tail_and_sled_agree_after_appends_truncation_and_purge() {
    let (_temp, data_dir) = temporary_data_dir();
    let mut log = LogStore::open(&data_dir).unwrap();
    log.insert_entries((1..=20).map(|index| entry(1, index))).unwrap();
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 15)).await.unwrap();
    log.insert_entries((15..=18).map(|index| entry(2, index))).unwrap();
    log.purge(LogId::new(CommittedLeaderId::new(1, 1), 5)).await.unwrap();
    let mut reopened = LogStore::open(&data_dir).unwrap();
    for range in [6..19, 10..12, 15..19, 18..19] {
        let from_tail = log.try_get_log_entries(range.clone()).await.unwrap();
        assert!(log.recent().get(&range).is_some(), "{range:?} is served from the tail");
        let from_sled = reopened.try_get_log_entries(range.clone()).await.unwrap();
        assert_eq!(from_tail, from_sled, "{range:?}");
    }
    let open_ended = log.try_get_log_entries(16..).await.unwrap();
    assert_eq!(
        open_ended.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect::<Vec<_>>(),
        [(2, 16), (2, 17), (2, 18)]
    );
}

/// Opening `data_dir` fails, and the error says `expected`.
fn assert_refused(data_dir: &DataDir, expected: &str) {
    let error = LogStore::open(data_dir).err().expect("a damaged log is refused").to_string();
    assert!(error.contains("damaged Raft log") && error.contains(expected), "{error}");
}

#[tokio::test]
async fn a_log_with_a_hole_is_refused_at_open_and_at_reads() {
    let (_temp, data_dir) = temporary_data_dir();
    let log = LogStore::open(&data_dir).unwrap();
    log.insert_entries((1..=10).map(|index| entry(1, index))).unwrap();
    log.logs.remove(schema::index_key(5)).unwrap();
    assert_refused(&data_dir, "entries 5 to 5 are missing");
    let mut fresh_tail = log.clone();
    fresh_tail.recent().truncate_from(1);
    let error = fresh_tail.try_get_log_entries(3..8).await.unwrap_err().to_string();
    assert!(error.contains("missing"), "a read across the hole: {error}");
}

#[tokio::test]
async fn an_entry_under_another_key_is_refused() {
    let (_temp, data_dir) = temporary_data_dir();
    let log = LogStore::open(&data_dir).unwrap();
    log.insert_entries((1..=3).map(|index| entry(1, index))).unwrap();
    log.logs.insert(schema::index_key(4), encode(&entry(1, 7)).unwrap()).unwrap();
    assert_refused(&data_dir, "stored at index 4 says it is");
    log.logs.insert(schema::index_key(4), &b"\xff\xff"[..]).unwrap();
    assert_refused(&data_dir, "does not decode");
}

#[tokio::test]
async fn a_log_shorter_than_its_commit_index_or_starting_past_its_purge_point_is_refused() {
    let (_temp, data_dir) = temporary_data_dir();
    let mut log = LogStore::open(&data_dir).unwrap();
    log.insert_entries((1..=10).map(|index| entry(1, index))).unwrap();
    log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 12))).await.unwrap();
    assert_refused(&data_dir, "committed, but the log ends at Some(10)");
    log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 10))).await.unwrap();
    LogStore::open(&data_dir).expect("a whole log opens");
    log.write_meta(schema::LAST_PURGED_KEY, &LogId::new(CommittedLeaderId::new(1, 1), 2), true).await.unwrap();
    LogStore::open(&data_dir).expect("entries at or below the purge point may linger");
    for index in 1..=2 {
        log.logs.remove(schema::index_key(index)).unwrap();
    }
    LogStore::open(&data_dir).expect("the log may start right after the purge point");
    log.logs.remove(schema::index_key(3)).unwrap();
    assert_refused(&data_dir, "the log starts at 4, but only entries through 2 were purged");
}

/// What early replication relies on (`raft::early_replication`): openraft
/// 0.9 counts the leader for an entry only once the log store reported
/// it flushed. A one-node cluster is its own quorum, so with its log's
/// flushes held back a write must neither commit nor be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_counts_the_leader_for_an_entry_only_after_its_flush() {
    use std::time::Duration;
    let (_temp, data_dir) = temporary_data_dir();
    // A rendezvous channel: a token passes only to a flusher waiting for it.
    let (tokens, gate) = std::sync::mpsc::sync_channel(0);
    let feed = || async {
        loop {
            let _ = tokens.try_send(());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let log = LogStore::open_gated(&data_dir, Some(gate)).unwrap();
    let state_machine = StateMachineStore::open(&data_dir, State::default()).unwrap();
    let (nudges, _queue) =
        crate::raft::workarounds::election::Nudges::new(Duration::from_millis(160), Duration::from_millis(110));
    let dialer = crate::transport::Dialer::new(None, None).unwrap();
    let network = crate::raft::transport::network::Network::new(
        dialer,
        std::sync::Arc::new(nudges),
        Duration::from_millis(50),
        None,
    );
    let config = std::sync::Arc::new(openraft::Config::default().validate().unwrap());
    let raft = crate::raft::Raft::new(1, config, network, log, state_machine).await.unwrap();
    let members = std::collections::BTreeMap::from([(1, openraft::BasicNode::new("127.0.0.1:1"))]);
    // Flushes pass freely until the node leads and applied all it appended.
    let serving = async {
        raft.initialize(members).await.unwrap();
        let wait = raft.wait(Some(Duration::from_secs(10)));
        let applied_all = |m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>| {
            m.current_leader == Some(1) && m.last_applied.map(|id| id.index) == m.last_log_index
        };
        wait.metrics(applied_all, "lead and apply").await.unwrap()
    };
    let served = tokio::select! { served = serving => served, () = feed() => unreachable!() };
    let appended_before = served.last_log_index.unwrap();

    let command = Command::SetLockExpiration { lock_expiration_ms: 1234 };
    let envelopes: std::sync::Arc<[Envelope]> =
        vec![Envelope { namespace: DEFAULT_NAMESPACE.into(), time_ms: 1, request_id: None, command }].into();
    let mut write = Box::pin(raft.client_write(envelopes));
    // openraft's core waits for the flush before it reports metrics
    // again: see the entry in sled instead.
    let logs = data_dir.db().open_tree(schema::LOGS).unwrap();
    let appended = async {
        while !logs.contains_key(schema::index_key(appended_before + 1)).unwrap() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    tokio::select! {
        _ = &mut write => panic!("answered before its flush"),
        () = appended => {}
    }
    let unflushed = tokio::time::timeout(Duration::from_millis(300), &mut write).await;
    assert!(unflushed.is_err(), "a write was answered while its entry was not flushed");
    let applied = raft.metrics().borrow().last_applied.unwrap().index;
    assert_eq!(applied, appended_before, "nor applied");

    let written = tokio::select! { written = write => written.unwrap(), () = feed() => unreachable!() };
    assert!(written.log_id.index > appended_before, "committed once flushed");
    raft.shutdown().await.unwrap();
}
