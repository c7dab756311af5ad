//! Data-driven tests of the state machine (SPEC §3, §4, §6): `Envelope`s in,
//! expected `Reply`s out, through one [`check`] helper that also checks the
//! invariants and the time rule after every step. Then two property tests: the
//! state machine against a naive reference model, and snapshot equivalence.
//!
//! One file past the ~600-line habit on purpose: the table tests and the
//! reference model they are checked against read best side by side.

use proptest::prelude::*;

use super::*;
use crate::model::RequestId;

/// The default namespace of `state` (empty when it holds nothing).
fn default_namespace(state: &State) -> Namespace {
    let empty = || Namespace::new(state.lock_expiration_ms(DEFAULT_NAMESPACE), Caps::default());
    state.namespace(DEFAULT_NAMESPACE).cloned().unwrap_or_else(empty)
}

/// The lock expiration `E` of these tests: small numbers make boundaries readable.
const E: u64 = 1_000;

/// What one step expects.
#[derive(Debug)]
enum Expect {
    /// Exactly this reply.
    Reply(Reply),
    /// `Reply::Done`, and nothing but time (and the dedup table) changed.
    NoOp,
    /// A refusal of this kind whose message contains the needle (the field
    /// named); nothing but time (and the dedup table) changed.
    Rejected(RejectionKind, &'static str),
}

/// One step of a table test.
#[derive(Debug)]
enum Step {
    /// Apply the envelope and expect an outcome.
    Apply(Envelope, Expect),
    /// `get_runners(now_ms)` returns exactly these `(runner JSON, healthy)`.
    Runners(u64, Vec<(String, bool)>),
    /// The lock record of a shard: `(holder, acquired_at_ms)`, or no record.
    Lock(&'static str, Option<(&'static str, u64)>),
    /// The machine id of the runner record at an address, or no record.
    MachineId(String, Option<i64>),
    /// `(clients, answers)` remembered by request-id deduplication.
    DedupSizes(usize, usize),
}

/// Applies `steps` to a fresh state with lock expiration [`E`].
fn check(steps: Vec<Step>) -> State {
    check_from(State::new(E), steps)
}

/// Applies `steps` to `state`, checking each expectation, the invariants and
/// `now = max(now, time_ms)` after every step. Returns the final state.
fn check_from(mut state: State, steps: Vec<Step>) -> State {
    for (index, step) in steps.into_iter().enumerate() {
        match step {
            Step::Apply(envelope, expect) => {
                let before = state.clone();
                let reply = state.apply(&envelope);
                state.check_invariants();
                assert_eq!(state.now_ms, before.now_ms.max(envelope.time_ms), "step {index}: time of {envelope:?}");
                check_reply(index, &envelope, &before, &state, reply, &expect);
            }
            Step::Runners(now_ms, expect) => {
                assert_eq!(state.get_runners(DEFAULT_NAMESPACE, now_ms), expect, "step {index}: get_runners({now_ms})");
            }
            Step::Lock(shard_id, expect) => {
                let namespace = default_namespace(&state);
                let record = namespace.locks().get(shard_id).map(|r| (r.address.as_str(), r.acquired_at_ms));
                assert_eq!(record, expect, "step {index}: lock record of {shard_id}");
            }
            Step::MachineId(address, expect) => {
                let machine_id = default_namespace(&state).runners().get(&address).map(|record| record.machine_id);
                assert_eq!(machine_id, expect, "step {index}: machine id of {address}");
            }
            Step::DedupSizes(clients, answers) => {
                assert_eq!(state.dedup_sizes(), (clients, answers), "step {index}: dedup sizes");
            }
        }
    }
    state
}

fn check_reply(index: usize, envelope: &Envelope, before: &State, after: &State, reply: Reply, expect: &Expect) {
    let unchanged = || {
        let mut expected = before.clone();
        expected.now_ms = after.now_ms;
        expected.dedup = after.dedup.clone();
        assert_eq!(&expected, after, "step {index}: {envelope:?} changed the state");
    };
    match expect {
        Expect::Reply(expected) => assert_eq!(&reply, expected, "step {index}: reply to {envelope:?}"),
        Expect::NoOp => {
            assert_eq!(reply, Reply::Done, "step {index}: reply to {envelope:?}");
            unchanged();
        }
        Expect::Rejected(kind, needle) => {
            let Reply::Rejected { kind: actual, message } = &reply else {
                panic!("step {index}: {envelope:?} gave {reply:?}, not a {kind:?} rejection");
            };
            assert_eq!(actual, kind, "step {index}: kind of {message:?}");
            assert!(message.contains(needle), "step {index}: {message:?} does not name {needle:?}");
            unchanged();
        }
    }
}

// ---- Builders: short names keep the tables readable. ----

/// Effect's JSON for a runner at `address` in the default group.
fn runner_json(address: &str) -> String {
    runner_json_groups(address, "default")
}

fn runner_json_groups(address: &str, group: &str) -> String {
    let (host, port) = address.rsplit_once(':').expect("test addresses are host:port");
    format!(r#"{{"address":{{"host":"{host}","port":{port}}},"groups":["{group}"],"weight":1}}"#)
}

fn at(time_ms: u64, command: Command) -> Envelope {
    Envelope { namespace: DEFAULT_NAMESPACE.into(), time_ms, request_id: None, command }
}

fn with_request(time_ms: u64, client_id: &str, sequence: u64, command: Command) -> Envelope {
    Envelope {
        namespace: DEFAULT_NAMESPACE.into(),
        time_ms,
        request_id: Some(RequestId { client_id: client_id.into(), sequence }),
        command,
    }
}

fn ok(envelope: Envelope, reply: Reply) -> Step {
    Step::Apply(envelope, Expect::Reply(reply))
}

fn no_op(envelope: Envelope) -> Step {
    Step::Apply(envelope, Expect::NoOp)
}

fn invalid(envelope: Envelope, field: &'static str) -> Step {
    Step::Apply(envelope, Expect::Rejected(RejectionKind::InvalidArgument, field))
}

fn exhausted(envelope: Envelope) -> Step {
    Step::Apply(envelope, Expect::Rejected(RejectionKind::ResourceExhausted, "cap"))
}

fn register(address: &str, healthy: bool) -> Command {
    Command::Register { address: address.into(), runner: runner_json(address), healthy }
}

fn unregister(address: &str) -> Command {
    Command::Unregister { address: address.into() }
}

fn set_health(address: &str, healthy: bool) -> Command {
    Command::SetRunnerHealth { address: address.into(), healthy }
}

fn strings(shard_ids: &[&str]) -> Vec<ShardIdText> {
    shard_id_texts(shard_ids)
}

fn acquire(address: &str, shard_ids: &[&str]) -> Command {
    Command::Acquire { address: address.into(), shard_ids: strings(shard_ids) }
}

fn refresh(address: &str, shard_ids: &[&str]) -> Command {
    Command::Refresh { address: address.into(), shard_ids: strings(shard_ids) }
}

fn release(address: &str, shard_id: &str) -> Command {
    Command::Release { address: address.into(), shard_id: shard_id.into() }
}

fn release_all(address: &str) -> Command {
    Command::ReleaseAll { address: address.into() }
}

fn set_expiration(lock_expiration_ms: u64) -> Command {
    Command::SetLockExpiration { lock_expiration_ms }
}

fn shards(shard_ids: &[&str]) -> Reply {
    Reply::ShardIds(strings(shard_ids))
}

fn id(machine_id: i64) -> Reply {
    Reply::MachineId(machine_id)
}

/// `get_runners(now_ms)` returns these addresses (default JSON) in this order.
fn runners(now_ms: u64, expect: &[(&str, bool)]) -> Step {
    Step::Runners(now_ms, expect.iter().map(|(address, healthy)| (runner_json(address), *healthy)).collect())
}

fn machine_id(address: &str, expect: Option<i64>) -> Step {
    Step::MachineId(address.into(), expect)
}

// ---- SPEC §3: register ----

#[test]
fn register_returns_machine_ids_from_one() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(0, register("b:2", false)), id(2)),
        runners(0, &[("a:1", true), ("b:2", false)]),
    ]);
}

#[test]
fn register_upserts_by_address_keeping_machine_id() {
    let new_json = runner_json_groups("a:1", "other");
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(0, register("b:2", true)), id(2)),
        ok(at(10, Command::Register { address: "a:1".into(), runner: new_json.clone(), healthy: false }), id(1)),
        Step::Runners(10, vec![(new_json, false), (runner_json("b:2"), true)]),
    ]);
}

#[test]
fn register_is_a_heartbeat() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(900, register("a:1", true)), id(1)),
        runners(1_899, &[("a:1", true)]),
        runners(1_900, &[]),
    ]);
}

// ---- SPEC §3: unregister ----

#[test]
fn unregister_deletes_the_runner() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(0, register("b:2", true)), id(2)),
        ok(at(1, unregister("a:1")), Reply::Done),
        runners(1, &[("b:2", true)]),
        machine_id("a:1", None),
        no_op(at(2, unregister("a:1"))),
        no_op(at(2, unregister("unknown:9"))),
    ]);
}

#[test]
fn unregister_sweeps_runners_that_are_not_live_but_not_locks() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(0, register("b:2", true)), id(2)),
        ok(at(600, register("c:3", true)), id(3)),
        ok(at(600, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        // At 999 a and b are live (0 > 999 - E): nothing is swept.
        no_op(at(999, unregister("x:9"))),
        machine_id("a:1", Some(1)),
        // At 1000 they are not: an unrelated unregister sweeps them, c stays.
        ok(at(1_000, unregister("x:9")), Reply::Done),
        machine_id("a:1", None),
        machine_id("b:2", None),
        machine_id("c:3", Some(3)),
        Step::Lock("g:1", Some(("a:1", 600))),
        // Their ids are free again.
        ok(at(1_000, register("b:2", true)), id(1)),
    ]);
}

#[test]
fn expired_runner_keeps_its_record_and_machine_id_until_swept() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        runners(1_000, &[]),
        ok(at(5_000, register("b:2", true)), id(2)),
        ok(at(5_000, register("a:1", true)), id(1)),
        runners(5_000, &[("a:1", true), ("b:2", true)]),
    ]);
}

// ---- SPEC §3: getRunners ----

#[test]
fn get_runners_orders_by_machine_id_and_includes_unhealthy() {
    check(vec![
        ok(at(0, register("z:1", true)), id(1)),
        ok(at(0, register("a:1", false)), id(2)),
        ok(at(0, unregister("z:1")), Reply::Done),
        ok(at(0, register("m:1", true)), id(1)),
        // Neither address order nor registration order: machine id order.
        runners(0, &[("m:1", true), ("a:1", false)]),
    ]);
}

#[test]
fn liveness_boundary_is_strict() {
    // Live when last_heartbeat > now - E.
    check(vec![ok(at(1_000, register("a:1", true)), id(1)), runners(1_999, &[("a:1", true)]), runners(2_000, &[])]);
}

// ---- SPEC §3: setRunnerHealth ----

#[test]
fn set_runner_health_updates_present_runner_only_and_is_no_heartbeat() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(900, set_health("a:1", false)), Reply::Done),
        runners(900, &[("a:1", false)]),
        runners(1_000, &[]),
        no_op(at(901, set_health("b:2", true))),
        machine_id("b:2", None),
    ]);
}

// ---- SPEC §3: acquire ----

#[test]
fn acquire_takes_free_shards_in_request_order_without_duplicates() {
    check(vec![
        ok(at(5, acquire("a:1", &["g:3", "g:1", "g:3", "g:2", "g:1"])), shards(&["g:3", "g:1", "g:2"])),
        Step::Lock("g:3", Some(("a:1", 5))),
        // acquire needs no registration and is no heartbeat.
        machine_id("a:1", None),
    ]);
}

#[test]
fn acquire_skips_shards_held_by_another_runner() {
    check(vec![
        ok(at(0, acquire("a:1", &["g:1", "g:2"])), shards(&["g:1", "g:2"])),
        ok(at(10, acquire("b:2", &["g:3", "g:1", "g:4"])), shards(&["g:3", "g:4"])),
        ok(at(10, acquire("b:2", &["g:1"])), shards(&[])),
        Step::Lock("g:1", Some(("a:1", 0))),
    ]);
}

#[test]
fn acquire_of_own_shard_renews_it() {
    check(vec![
        ok(at(0, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        ok(at(700, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        Step::Lock("g:1", Some(("a:1", 700))),
        // Even after expiry, the record is still its own.
        ok(at(5_000, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        Step::Lock("g:1", Some(("a:1", 5_000))),
    ]);
}

#[test]
fn acquire_takes_expired_lock_from_other_runner_at_the_inclusive_boundary() {
    // Held when acquired_at >= now - E.
    check(vec![
        ok(at(1_000, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        ok(at(2_000, acquire("b:2", &["g:1"])), shards(&[])),
        Step::Lock("g:1", Some(("a:1", 1_000))),
        ok(at(2_001, acquire("b:2", &["g:1"])), shards(&["g:1"])),
        Step::Lock("g:1", Some(("b:2", 2_001))),
        ok(at(2_001, refresh("a:1", &["g:1"])), shards(&[])),
        no_op(at(2_001, release("a:1", "g:1"))),
        Step::Lock("g:1", Some(("b:2", 2_001))),
    ]);
}

#[test]
fn acquire_does_not_heartbeat() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(900, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        runners(1_000, &[]),
    ]);
}

// ---- SPEC §3: refresh ----

#[test]
fn refresh_renews_own_locks_in_request_order_without_duplicates() {
    check(vec![
        ok(at(0, acquire("a:1", &["g:1", "g:2", "g:3"])), shards(&["g:1", "g:2", "g:3"])),
        ok(at(0, acquire("b:2", &["g:9"])), shards(&["g:9"])),
        ok(at(500, refresh("a:1", &["g:3", "g:9", "g:1", "g:3", "g:7"])), shards(&["g:3", "g:1"])),
        Step::Lock("g:1", Some(("a:1", 500))),
        Step::Lock("g:2", Some(("a:1", 0))),
        Step::Lock("g:9", Some(("b:2", 0))),
        Step::Lock("g:7", None),
    ]);
}

#[test]
fn refresh_renews_expired_own_lock_that_no_one_took() {
    check(vec![
        ok(at(0, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        ok(at(9_000, refresh("a:1", &["g:1"])), shards(&["g:1"])),
        Step::Lock("g:1", Some(("a:1", 9_000))),
        ok(at(9_500, acquire("b:2", &["g:1"])), shards(&[])),
    ]);
}

#[test]
fn refresh_is_a_heartbeat_and_needs_no_registration() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(900, refresh("a:1", &[])), shards(&[])),
        runners(1_899, &[("a:1", true)]),
        runners(1_900, &[]),
        ok(at(900, refresh("b:2", &["g:1"])), shards(&[])),
        machine_id("b:2", None),
    ]);
}

// ---- SPEC §3: release, releaseAll ----

#[test]
fn release_deletes_own_lock_and_is_a_no_op_for_others() {
    check(vec![
        ok(at(0, acquire("a:1", &["g:1", "g:2"])), shards(&["g:1", "g:2"])),
        no_op(at(1, release("b:2", "g:1"))),
        no_op(at(1, release("a:1", "g:7"))),
        ok(at(2, release("a:1", "g:1")), Reply::Done),
        Step::Lock("g:1", None),
        Step::Lock("g:2", Some(("a:1", 0))),
        ok(at(3, acquire("b:2", &["g:1"])), shards(&["g:1"])),
    ]);
}

#[test]
fn release_all_deletes_every_lock_of_the_address_only() {
    check(vec![
        ok(at(0, acquire("a:1", &["g:1", "g:2"])), shards(&["g:1", "g:2"])),
        ok(at(0, acquire("b:2", &["g:3"])), shards(&["g:3"])),
        ok(at(1, release_all("a:1")), Reply::Done),
        Step::Lock("g:1", None),
        Step::Lock("g:2", None),
        Step::Lock("g:3", Some(("b:2", 0))),
        no_op(at(2, release_all("a:1"))),
        // Expired locks are still records of their holder.
        ok(at(9_000, release_all("b:2")), Reply::Done),
        Step::Lock("g:3", None),
    ]);
}

// ---- SPEC §4: time ----

#[test]
fn time_never_runs_backwards() {
    check(vec![
        ok(at(5_000, register("a:1", true)), id(1)),
        // An envelope stamped earlier (a new leader with a slower clock) runs at 5000.
        ok(at(1_000, register("b:2", true)), id(2)),
        ok(at(1_000, acquire("b:2", &["g:1"])), shards(&["g:1"])),
        Step::Lock("g:1", Some(("b:2", 5_000))),
        runners(5_999, &[("a:1", true), ("b:2", true)]),
        runners(6_000, &[]),
        // A reader whose clock is behind reads at state time.
        runners(0, &[("a:1", true), ("b:2", true)]),
    ]);
}

#[test]
fn get_runners_reads_at_the_later_of_state_time_and_reader_time() {
    check(vec![
        ok(at(3_000, register("a:1", true)), id(1)),
        ok(at(4_000, unregister("x:9")), Reply::Done),
        // State time is 4000 = 3000 + E: a reader at 0 still sees a expired.
        runners(0, &[]),
    ]);
}

#[test]
fn set_lock_expiration_changes_liveness_and_locks_at_once() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(0, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        runners(1_500, &[]),
        ok(at(1_500, set_expiration(2_000)), Reply::Done),
        runners(1_500, &[("a:1", true)]),
        ok(at(2_000, acquire("b:2", &["g:1"])), shards(&[])),
        ok(at(2_001, acquire("b:2", &["g:1"])), shards(&["g:1"])),
        invalid(at(2_002, set_expiration(0)), "lock_expiration_ms"),
        invalid(at(2_002, set_expiration(limits::LOCK_EXPIRATION_MS_MAX + 1)), "lock_expiration_ms"),
    ]);
}

// ---- SPEC §3: machine ids ----

#[test]
fn machine_id_is_smallest_free_and_reused_after_unregister() {
    check(vec![
        ok(at(0, register("a:1", true)), id(1)),
        ok(at(0, register("b:2", true)), id(2)),
        ok(at(0, register("c:3", true)), id(3)),
        ok(at(0, unregister("b:2")), Reply::Done),
        ok(at(0, register("d:4", true)), id(2)),
        ok(at(0, register("e:5", true)), id(4)),
        ok(at(0, unregister("a:1")), Reply::Done),
        ok(at(0, register("b:2", true)), id(1)),
    ]);
}

fn many(i: i64) -> String {
    format!("r:{i}")
}

#[test]
fn machine_id_past_1024_only_when_every_residue_is_used() {
    let mut steps: Vec<Step> = (1..=1024).map(|i| ok(at(0, register(&many(i), true)), id(i))).collect();
    steps.extend([
        // All of 1..=1024 used: max + 1, which shares residue 1 with id 1.
        ok(at(0, register(&many(1025), true)), id(1025)),
        // A free residue below 1024 is reused.
        ok(at(0, unregister(&many(5))), Reply::Done),
        ok(at(0, register("x:1", true)), id(5)),
        // Id 1 is free, but its residue is used by 1025: max + 1 again.
        ok(at(0, unregister(&many(1))), Reply::Done),
        ok(at(0, register("y:1", true)), id(1026)),
        // Now residues 1 and 2 are each used twice; removing runners keeps
        // that (ids never change), even below 1024 runners.
        ok(at(0, unregister(&many(7))), Reply::Done),
        ok(at(0, unregister(&many(8))), Reply::Done),
        ok(at(0, unregister(&many(9))), Reply::Done),
        ok(at(0, register("z:1", true)), id(7)),
        // With 1025 gone, residue 1 is free again and id 1 is handed out.
        ok(at(0, unregister(&many(1025))), Reply::Done),
        ok(at(0, register("w:1", true)), id(1)),
    ]);
    let state = check(steps);
    assert_eq!(default_namespace(&state).runners().len(), 1023);
}

#[test]
fn machine_id_residue_is_free_only_when_no_id_above_1024_shares_it() {
    let mut steps: Vec<Step> = (1..=2_100).map(|i| ok(at(0, register(&many(i), true)), id(i))).collect();
    steps.extend([
        // Residue 3 is used by 3, 1027 and 2051: free only once all three are gone.
        ok(at(0, unregister(&many(3))), Reply::Done),
        ok(at(0, unregister(&many(1_027))), Reply::Done),
        ok(at(0, register("x:1", true)), id(2_101)),
        ok(at(0, unregister(&many(2_051))), Reply::Done),
        ok(at(0, register("y:1", true)), id(3)),
        // Residue 0: 1024, 2048.
        ok(at(0, unregister(&many(1_024))), Reply::Done),
        ok(at(0, register("z:1", true)), id(2_102)),
        ok(at(0, unregister(&many(2_048))), Reply::Done),
        ok(at(0, register("w:1", true)), id(1_024)),
    ]);
    check(steps);
}

// ---- SPEC §6: caps ----

#[test]
fn runner_cap_refuses_new_runners_and_changes_nothing() {
    let state = State::with_caps(E, Caps { runners_max: 2, locks_max: 100 });
    check_from(
        state,
        vec![
            ok(at(0, register("a:1", true)), id(1)),
            ok(at(0, register("b:2", true)), id(2)),
            exhausted(at(1, register("c:3", true))),
            // Re-registering a present address is not a new record.
            ok(at(2, register("a:1", false)), id(1)),
            runners(2, &[("a:1", false), ("b:2", true)]),
            ok(at(2, unregister("b:2")), Reply::Done),
            ok(at(3, register("c:3", true)), id(2)),
        ],
    );
}

#[test]
fn lock_cap_refuses_acquire_that_would_pass_it_and_changes_nothing() {
    let state = State::with_caps(E, Caps { runners_max: 100, locks_max: 3 });
    check_from(
        state,
        vec![
            ok(at(0, acquire("a:1", &["g:1", "g:2"])), shards(&["g:1", "g:2"])),
            exhausted(at(1, acquire("b:2", &["g:3", "g:4"]))),
            Step::Lock("g:3", None),
            // A held shard and a repeated one count once: one new record.
            ok(at(1, acquire("b:2", &["g:1", "g:3", "g:3"])), shards(&["g:3"])),
            // At the cap: renewing own records and taking expired ones is allowed.
            ok(at(2, acquire("a:1", &["g:1", "g:2"])), shards(&["g:1", "g:2"])),
            exhausted(at(3, acquire("a:1", &["g:1", "g:4"]))),
            ok(at(5_000, acquire("c:3", &["g:1", "g:3"])), shards(&["g:1", "g:3"])),
            ok(at(5_000, release("c:3", "g:3")), Reply::Done),
            ok(at(5_000, acquire("c:3", &["g:4"])), shards(&["g:4"])),
        ],
    );
}

// ---- SPEC §6: request ids ----

#[test]
fn retried_request_returns_the_same_answer_and_is_not_applied_twice() {
    check(vec![
        ok(with_request(0, "c", 1, register("a:1", true)), id(1)),
        ok(at(1, unregister("a:1")), Reply::Done),
        ok(with_request(2, "c", 1, register("a:1", true)), id(1)),
        machine_id("a:1", None),
        ok(with_request(3, "c", 2, acquire("b:2", &["g:1"])), shards(&["g:1"])),
        ok(at(4, release_all("b:2")), Reply::Done),
        ok(at(4, acquire("d:4", &["g:1"])), shards(&["g:1"])),
        ok(with_request(5, "c", 2, acquire("b:2", &["g:1"])), shards(&["g:1"])),
        Step::Lock("g:1", Some(("d:4", 4))),
        // The same sequence from another client is another request.
        ok(with_request(6, "other", 2, acquire("b:2", &["g:1"])), shards(&[])),
        Step::DedupSizes(2, 3),
    ]);
}

#[test]
fn remembered_rejection_is_returned_again() {
    check(vec![
        invalid(with_request(0, "c", 1, register("a:1", true).with_runner("[]")), "runner"),
        invalid(with_request(1, "c", 1, register("a:1", true).with_runner("[]")), "runner"),
        Step::DedupSizes(1, 1),
    ]);
}

#[test]
fn request_id_reused_for_a_different_call_is_refused() {
    let reused = |command| {
        Step::Apply(with_request(2, "c", 1, command), Expect::Rejected(RejectionKind::FailedPrecondition, "sequence"))
    };
    check(vec![
        ok(with_request(0, "c", 1, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        ok(at(1, release_all("a:1")), Reply::Done),
        // Another call, or the same call with other arguments: neither is applied.
        reused(register("a:1", true)),
        reused(acquire("a:1", &["g:2"])),
        reused(acquire("b:2", &["g:1"])),
        machine_id("a:1", None),
        Step::Lock("g:2", None),
        // The original call is still answered from memory.
        ok(with_request(3, "c", 1, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        Step::Lock("g:1", None),
    ]);
}

impl Command {
    fn with_runner(self, json: &str) -> Command {
        match self {
            Command::Register { address, healthy, .. } => Command::Register { address, runner: json.into(), healthy },
            other => other,
        }
    }
}

#[test]
fn out_of_order_sequences_are_each_applied_once() {
    check(vec![
        ok(with_request(0, "c", 5, acquire("a:1", &["g:5"])), shards(&["g:5"])),
        ok(with_request(0, "c", 3, acquire("a:1", &["g:3"])), shards(&["g:3"])),
        ok(with_request(0, "c", 4, acquire("a:1", &["g:4"])), shards(&["g:4"])),
        ok(at(1, release_all("a:1")), Reply::Done),
        ok(with_request(2, "c", 3, acquire("a:1", &["g:3"])), shards(&["g:3"])),
        ok(with_request(2, "c", 5, acquire("a:1", &["g:5"])), shards(&["g:5"])),
        Step::Lock("g:3", None),
        Step::Lock("g:5", None),
        Step::DedupSizes(1, 3),
    ]);
}

#[test]
fn sequence_older_than_a_full_table_is_refused() {
    let full = limits::DEDUP_SEQUENCES_PER_CLIENT_MAX as u64;
    let acquire_own =
        |sequence: u64| Command::Acquire { address: "a:1".into(), shard_ids: vec![format!("g:{sequence}").into()] };
    let mut steps: Vec<Step> = (1..=full)
        .map(|sequence| ok(with_request(0, "c", sequence, acquire_own(sequence)), shards(&[&format!("g:{sequence}")])))
        .collect();
    let stale = |sequence| {
        Step::Apply(
            with_request(1, "c", sequence, register("a:1", true)),
            Expect::Rejected(RejectionKind::FailedPrecondition, "sequence"),
        )
    };
    steps.extend([
        Step::DedupSizes(1, full as usize),
        stale(0),
        // 1025 pushes 1 out; 1 is then refused, 2 is still remembered.
        ok(with_request(1, "c", full + 1, release_all("a:1")), Reply::Done),
        Step::DedupSizes(1, full as usize),
        stale(1),
        machine_id("a:1", None),
        // 2 is answered from memory: not applied again.
        ok(with_request(1, "c", 2, acquire_own(2)), shards(&["g:2"])),
        Step::Lock("g:2", None),
    ]);
    check(steps);
}

#[test]
fn sequence_older_than_a_table_that_is_not_full_is_applied() {
    check(vec![
        ok(with_request(0, "c", 10, acquire("a:1", &["g:1"])), shards(&["g:1"])),
        ok(with_request(0, "c", 2, register("a:1", true)), id(1)),
    ]);
}

#[test]
fn idle_client_is_forgotten_after_ten_lock_expirations() {
    let idle = 10 * E;
    check(vec![
        ok(with_request(0, "c", 1, register("a:1", true)), id(1)),
        ok(at(1, unregister("a:1")), Reply::Done),
        // A remembered retry counts as seeing the client.
        ok(with_request(100, "c", 1, register("a:1", true)), id(1)),
        machine_id("a:1", None),
        no_op(at(100 + idle - 1, unregister("x:9"))),
        Step::DedupSizes(1, 1),
        no_op(at(100 + idle, unregister("x:9"))),
        Step::DedupSizes(0, 0),
        // Forgotten: the retry is applied again.
        ok(with_request(100 + idle, "c", 1, register("a:1", true)), id(1)),
        machine_id("a:1", Some(1)),
    ]);
}

#[test]
fn request_id_with_bad_client_id_is_refused() {
    let long = "c".repeat(limits::CLIENT_ID_BYTES_MAX + 1);
    check(vec![
        invalid(with_request(0, "", 1, register("a:1", true)), "client_id"),
        invalid(with_request(0, &long, 1, register("a:1", true)), "client_id"),
        Step::DedupSizes(0, 0),
        machine_id("a:1", None),
    ]);
}

#[test]
fn client_table_is_bounded_forgetting_the_least_recently_seen() {
    // E long enough that no client goes idle while the table fills.
    let mut state = State::new(limits::LOCK_EXPIRATION_MS_DEFAULT);
    let clients_max = limits::DEDUP_CLIENTS_MAX as u64;
    for client in 0..=clients_max {
        // One time per client, so "least recently seen" is well defined.
        let reply = state.apply(&with_request(client, &format!("c{client}"), 1, acquire("a:1", &["g:1"])));
        assert_eq!(reply, shards(&["g:1"]));
    }
    state.check_invariants();
    assert_eq!(state.dedup_sizes(), (limits::DEDUP_CLIENTS_MAX, limits::DEDUP_CLIENTS_MAX));
    check_from(
        state,
        vec![
            ok(at(clients_max, release_all("a:1")), Reply::Done),
            // c1 is remembered; c0 was forgotten and is applied again.
            ok(with_request(clients_max, "c1", 1, acquire("a:1", &["g:1"])), shards(&["g:1"])),
            Step::Lock("g:1", None),
            ok(with_request(clients_max, "c0", 1, acquire("a:1", &["g:1"])), shards(&["g:1"])),
            Step::Lock("g:1", Some(("a:1", clients_max))),
        ],
    );
}

// ---- SPEC §6: validation ----

fn setup_for_validation() -> Vec<Step> {
    vec![ok(at(0, register("a:1", true)), id(1)), ok(at(0, acquire("a:1", &["g:1"])), shards(&["g:1"]))]
}

#[test]
fn malformed_addresses_are_refused_naming_address() {
    let long = format!("{}:1", "h".repeat(limits::ADDRESS_BYTES_MAX));
    let mut steps = setup_for_validation();
    for bad in ["", "nocolon", ":1", "h:", "h:65536", "h:-1", "h:08", "h:x", long.as_str()] {
        steps.extend([
            invalid(
                at(1, Command::Register { address: bad.into(), runner: runner_json("a:1"), healthy: true }),
                "address",
            ),
            invalid(at(1, unregister(bad)), "address"),
            invalid(at(1, set_health(bad, false)), "address"),
            invalid(at(1, acquire(bad, &["g:2"])), "address"),
            invalid(at(1, refresh(bad, &["g:1"])), "address"),
            invalid(at(1, release(bad, "g:1")), "address"),
            invalid(at(1, release_all(bad)), "address"),
        ]);
    }
    // The boundaries themselves are accepted.
    let longest = format!("{}:1", "h".repeat(limits::ADDRESS_BYTES_MAX - 2));
    steps.extend([
        ok(at(1, register(&longest, true)), id(2)),
        ok(at(1, register("h:65535", true)), id(3)),
        ok(at(1, register("h:0", true)), id(4)),
    ]);
    check(steps);
}

#[test]
fn malformed_runners_are_refused_naming_runner() {
    let padding = "x".repeat(limits::RUNNER_JSON_BYTES_MAX);
    let too_big = format!(r#"{{"address":{{"host":"b","port":2}},"padding":"{padding}"}}"#);
    let mut steps = setup_for_validation();
    for bad in [
        "not json",
        "[]",
        r#""b:2""#,
        r#"{"groups":[],"weight":1}"#,
        r#"{"address":"b:2","groups":[],"weight":1}"#,
        r#"{"address":{"host":"b","port":3},"groups":[],"weight":1}"#,
        r#"{"address":{"host":"c","port":2},"groups":[],"weight":1}"#,
        too_big.as_str(),
    ] {
        steps.push(invalid(at(1, register("b:2", true).with_runner(bad)), "runner"));
    }
    // Exactly 16 KiB is accepted.
    let prefix = r#"{"address":{"host":"b","port":2},"padding":""#;
    let fits = format!("{prefix}{}\"}}", "x".repeat(limits::RUNNER_JSON_BYTES_MAX - prefix.len() - 2));
    assert_eq!(fits.len(), limits::RUNNER_JSON_BYTES_MAX);
    steps.extend([ok(at(1, register("b:2", true).with_runner(&fits)), id(2)), machine_id("b:2", Some(2))]);
    check(steps);
}

#[test]
fn malformed_shard_ids_are_refused_naming_shard_id() {
    let long = format!("{}:1", "g".repeat(limits::SHARD_ID_BYTES_MAX));
    let mut steps = setup_for_validation();
    for bad in ["", "g", "g:", "g:x", "g:01", "g:-0", "g:1.5", long.as_str()] {
        steps.extend([
            // A valid shard before the bad one is not taken either.
            invalid(at(1, acquire("a:1", &["g:2", bad])), "shard_id"),
            invalid(at(1, refresh("a:1", &["g:1", bad])), "shard_id"),
            invalid(at(1, release("a:1", bad)), "shard_id"),
        ]);
    }
    let longest = format!("{}:1", "g".repeat(limits::SHARD_ID_BYTES_MAX - 2));
    steps.extend([
        Step::Lock("g:2", None),
        Step::Lock("g:1", Some(("a:1", 0))),
        ok(at(1, acquire("a:1", &[&longest, "g:-5", ":3", "a:b:7"])), shards(&[&longest, "g:-5", ":3", "a:b:7"])),
    ]);
    check(steps);
}

#[test]
fn shard_id_lists_are_bounded_and_acquire_needs_one() {
    let max = limits::SHARD_IDS_PER_CALL_MAX;
    let too_many: Vec<ShardIdText> = (0..=max).map(|i| format!("g:{i}").into()).collect();
    let most: Vec<ShardIdText> = too_many[..max].to_vec();
    let steps = vec![
        invalid(at(0, acquire("a:1", &[])), "shard_ids"),
        invalid(at(0, Command::Acquire { address: "a:1".into(), shard_ids: too_many.clone() }), "shard_ids"),
        invalid(at(0, Command::Refresh { address: "a:1".into(), shard_ids: too_many }), "shard_ids"),
        ok(at(0, Command::Acquire { address: "a:1".into(), shard_ids: most.clone() }), Reply::ShardIds(most.clone())),
        ok(at(1, Command::Refresh { address: "a:1".into(), shard_ids: most.clone() }), Reply::ShardIds(most)),
    ];
    check(steps);
}

// ---- Property tests ----

/// A naive model of SPEC §3/§4/§6 written from the spec, not from the code:
/// vectors, linear scans, signed arithmetic for the time rules.
mod reference {
    use super::*;

    pub const VALID_ADDRESSES: [&str; 5] = ["a:1", "b:2", "c:3", "d:4", "e:5"];
    pub const INVALID_ADDRESSES: [&str; 4] = ["", "nocolon", "h:65536", ":1"];
    pub const VALID_SHARDS: [&str; 7] = ["g:1", "g:2", "g:3", "g:4", "g:5", "g:6", "h:1"];
    pub const INVALID_SHARDS: [&str; 4] = ["", "g", "g:x", "g:01"];

    #[derive(Debug, Clone, PartialEq)]
    pub struct Runner {
        pub address: String,
        pub runner: String,
        pub healthy: bool,
        pub machine_id: i64,
        pub heartbeat_ms: u64,
    }

    #[derive(Debug, Clone)]
    pub struct Lock {
        pub shard_id: ShardIdText,
        pub address: String,
        pub acquired_at_ms: u64,
    }

    #[derive(Debug, Clone)]
    struct Client {
        client_id: String,
        last_seen_ms: u64,
        /// `(sequence, command, answer)`: a retry must be the same command.
        answers: Vec<(u64, Command, Reply)>,
    }

    #[derive(Debug, Clone)]
    pub struct Reference {
        pub now_ms: u64,
        pub lock_expiration_ms: u64,
        pub caps: Caps,
        pub runners: Vec<Runner>,
        pub locks: Vec<Lock>,
        clients: Vec<Client>,
    }

    fn rejected(kind: RejectionKind) -> Reply {
        Reply::Rejected { kind, message: String::new() }
    }

    fn valid_address(address: &str) -> bool {
        VALID_ADDRESSES.contains(&address)
    }

    fn valid_shards(shard_ids: &[ShardIdText]) -> bool {
        shard_ids.iter().all(|s| VALID_SHARDS.contains(&s.as_str()))
    }

    /// Repeats dropped, first occurrence kept.
    fn distinct(shard_ids: &[ShardIdText]) -> Vec<ShardIdText> {
        let mut out: Vec<ShardIdText> = Vec::new();
        for shard_id in shard_ids {
            if !out.contains(shard_id) {
                out.push(shard_id.clone());
            }
        }
        out
    }

    impl Reference {
        pub fn new(lock_expiration_ms: u64, caps: Caps) -> Self {
            Reference { now_ms: 0, lock_expiration_ms, caps, runners: vec![], locks: vec![], clients: vec![] }
        }

        fn live(&self, runner: &Runner, now_ms: u64) -> bool {
            runner.heartbeat_ms as i128 > now_ms as i128 - self.lock_expiration_ms as i128
        }

        fn held(&self, lock: &Lock) -> bool {
            lock.acquired_at_ms as i128 >= self.now_ms as i128 - self.lock_expiration_ms as i128
        }

        pub fn get_runners(&self, now_ms: u64) -> Vec<(String, bool)> {
            let now_ms = now_ms.max(self.now_ms);
            let mut live: Vec<&Runner> = self.runners.iter().filter(|r| self.live(r, now_ms)).collect();
            live.sort_by_key(|r| r.machine_id);
            live.into_iter().map(|r| (r.runner.clone(), r.healthy)).collect()
        }

        pub fn dedup_sizes(&self) -> (usize, usize) {
            (self.clients.len(), self.clients.iter().map(|c| c.answers.len()).sum())
        }

        pub fn apply(&mut self, envelope: &Envelope) -> Reply {
            self.now_ms = self.now_ms.max(envelope.time_ms);
            let idle_ms = 10 * self.lock_expiration_ms;
            let now_ms = self.now_ms;
            self.clients.retain(|c| now_ms - c.last_seen_ms.min(now_ms) < idle_ms);
            let Some(request_id) = &envelope.request_id else {
                return self.execute(&envelope.command);
            };
            if request_id.client_id.is_empty() {
                return rejected(RejectionKind::InvalidArgument);
            }
            if let Some(client) = self.clients.iter_mut().find(|c| c.client_id == request_id.client_id) {
                if let Some((_, command, reply)) = client.answers.iter().find(|(s, _, _)| *s == request_id.sequence) {
                    if *command != envelope.command {
                        return rejected(RejectionKind::FailedPrecondition);
                    }
                    client.last_seen_ms = now_ms;
                    return reply.clone();
                }
                let oldest = client.answers.iter().map(|(s, _, _)| *s).min();
                if client.answers.len() >= 1024 && oldest.is_some_and(|oldest| request_id.sequence < oldest) {
                    return rejected(RejectionKind::FailedPrecondition);
                }
            }
            let reply = self.execute(&envelope.command);
            if !self.clients.iter().any(|c| c.client_id == request_id.client_id) {
                let client_id = request_id.client_id.clone();
                self.clients.push(Client { client_id, last_seen_ms: now_ms, answers: vec![] });
            }
            let client = self.clients.iter_mut().find(|c| c.client_id == request_id.client_id).expect("added");
            client.last_seen_ms = now_ms;
            client.answers.push((request_id.sequence, envelope.command.clone(), reply.clone()));
            reply
        }

        fn execute(&mut self, command: &Command) -> Reply {
            match command {
                Command::Register { address, runner, healthy } => self.register(address, runner, *healthy),
                Command::Unregister { address } if valid_address(address) => {
                    let now_ms = self.now_ms;
                    let runners = std::mem::take(&mut self.runners);
                    self.runners =
                        runners.into_iter().filter(|r| self.live(r, now_ms) && r.address != *address).collect();
                    Reply::Done
                }
                Command::SetRunnerHealth { address, healthy } if valid_address(address) => {
                    for runner in self.runners.iter_mut().filter(|r| r.address == *address) {
                        runner.healthy = *healthy;
                    }
                    Reply::Done
                }
                Command::Acquire { address, shard_ids }
                    if valid_address(address) && !shard_ids.is_empty() && valid_shards(shard_ids) =>
                {
                    self.acquire(address, shard_ids)
                }
                Command::Refresh { address, shard_ids } if valid_address(address) && valid_shards(shard_ids) => {
                    self.refresh(address, shard_ids)
                }
                Command::Release { address, shard_id }
                    if valid_address(address) && valid_shards(std::slice::from_ref(shard_id)) =>
                {
                    self.locks.retain(|l| !(l.shard_id == *shard_id && l.address == *address));
                    Reply::Done
                }
                Command::ReleaseAll { address } if valid_address(address) => {
                    self.locks.retain(|l| l.address != *address);
                    Reply::Done
                }
                Command::SetLockExpiration { lock_expiration_ms } if (1..=86_400_000).contains(lock_expiration_ms) => {
                    self.lock_expiration_ms = *lock_expiration_ms;
                    Reply::Done
                }
                _ => rejected(RejectionKind::InvalidArgument),
            }
        }

        fn register(&mut self, address: &str, runner: &str, healthy: bool) -> Reply {
            let valid_runner = address.rsplit_once(':').is_some_and(|(host, port)| {
                runner.starts_with(&format!(r#"{{"address":{{"host":"{host}","port":{port}}},"#))
            });
            if !valid_address(address) || !valid_runner {
                return rejected(RejectionKind::InvalidArgument);
            }
            let now_ms = self.now_ms;
            if let Some(record) = self.runners.iter_mut().find(|r| r.address == address) {
                record.runner = runner.to_owned();
                record.healthy = healthy;
                record.heartbeat_ms = now_ms;
                return Reply::MachineId(record.machine_id);
            }
            if self.runners.len() >= self.caps.runners_max {
                return rejected(RejectionKind::ResourceExhausted);
            }
            let residue_used = |candidate: i64| self.runners.iter().any(|r| r.machine_id % 1024 == candidate % 1024);
            let machine_id = (1..=1024)
                .find(|candidate| !residue_used(*candidate))
                .unwrap_or_else(|| self.runners.iter().map(|r| r.machine_id).max().unwrap_or(0) + 1);
            let (address, runner) = (address.to_owned(), runner.to_owned());
            self.runners.push(Runner { address, runner, healthy, machine_id, heartbeat_ms: now_ms });
            Reply::MachineId(machine_id)
        }

        fn acquire(&mut self, address: &str, shard_ids: &[ShardIdText]) -> Reply {
            let shard_ids = distinct(shard_ids);
            let new_records = shard_ids.iter().filter(|s| !self.locks.iter().any(|l| l.shard_id == **s)).count();
            if self.locks.len() + new_records > self.caps.locks_max {
                return rejected(RejectionKind::ResourceExhausted);
            }
            let mut acquired = vec![];
            for shard_id in shard_ids {
                let index = self.locks.iter().position(|l| l.shard_id == shard_id);
                let free = index.is_none_or(|i| self.locks[i].address == address || !self.held(&self.locks[i]));
                if free {
                    let lock =
                        Lock { shard_id: shard_id.clone(), address: address.to_owned(), acquired_at_ms: self.now_ms };
                    match index {
                        Some(i) => self.locks[i] = lock,
                        None => self.locks.push(lock),
                    }
                    acquired.push(shard_id);
                }
            }
            Reply::ShardIds(acquired)
        }

        fn refresh(&mut self, address: &str, shard_ids: &[ShardIdText]) -> Reply {
            let now_ms = self.now_ms;
            for runner in self.runners.iter_mut().filter(|r| r.address == address) {
                runner.heartbeat_ms = now_ms;
            }
            let mut refreshed = vec![];
            for shard_id in distinct(shard_ids) {
                for lock in self.locks.iter_mut().filter(|l| l.shard_id == shard_id && l.address == address) {
                    lock.acquired_at_ms = now_ms;
                    refreshed.push(shard_id.clone());
                }
            }
            Reply::ShardIds(refreshed)
        }
    }
}

use reference::{Reference, INVALID_ADDRESSES, INVALID_SHARDS, VALID_ADDRESSES, VALID_SHARDS};

/// One generated write: a time step (possibly backwards), a request id, a command.
#[derive(Debug, Clone)]
struct Op {
    time_delta_ms: i64,
    request_id: Option<RequestId>,
    command: Command,
}

fn address_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(VALID_ADDRESSES.to_vec()),
        1 => prop::sample::select(INVALID_ADDRESSES.to_vec()),
    ]
    .prop_map(str::to_owned)
}

fn shard_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        30 => prop::sample::select(VALID_SHARDS.to_vec()),
        1 => prop::sample::select(INVALID_SHARDS.to_vec()),
    ]
    .prop_map(str::to_owned)
}

fn runner_strategy(address: String) -> impl Strategy<Value = String> {
    let good = address.rsplit_once(':').map(|_| address.clone());
    prop_oneof![
        10 => prop::sample::select(vec!["x", "y"]).prop_map(move |group| match &good {
            Some(address) => runner_json_groups(address, group),
            None => "{}".to_owned(),
        }),
        1 => Just(r#"{"address":{"host":"zz","port":9},"groups":[],"weight":1}"#.to_owned()),
        1 => Just("nope".to_owned()),
    ]
}

fn command_strategy() -> impl Strategy<Value = Command> {
    let shard_ids = || prop::collection::vec(shard_strategy().prop_map(ShardIdText::from), 0..4);
    prop_oneof![
        4 => (address_strategy(), any::<bool>()).prop_flat_map(|(address, healthy)| {
            runner_strategy(address.clone())
                .prop_map(move |runner| Command::Register { address: address.clone(), runner, healthy })
        }),
        1 => address_strategy().prop_map(|address| Command::Unregister { address }),
        1 => (address_strategy(), any::<bool>()).prop_map(|(address, healthy)| Command::SetRunnerHealth { address, healthy }),
        5 => (address_strategy(), shard_ids()).prop_map(|(address, shard_ids)| Command::Acquire { address, shard_ids }),
        3 => (address_strategy(), shard_ids()).prop_map(|(address, shard_ids)| Command::Refresh { address, shard_ids }),
        2 => (address_strategy(), shard_strategy()).prop_map(|(address, shard_id)| Command::Release { address, shard_id: shard_id.into() }),
        1 => address_strategy().prop_map(|address| Command::ReleaseAll { address }),
        1 => prop_oneof![Just(0u64), 200..3_000u64].prop_map(|lock_expiration_ms| Command::SetLockExpiration { lock_expiration_ms }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let time_delta_ms =
        prop_oneof![4 => Just(0i64), 4 => 0..100i64, 3 => 0..1_500i64, 1 => -2_000..0i64, 1 => 0..12_000i64];
    let request_id = prop_oneof![
        3 => Just(None),
        2 => (prop::sample::select(vec!["c1", "c2", ""]), 0..8u64)
            .prop_map(|(client_id, sequence)| Some(RequestId { client_id: client_id.into(), sequence })),
    ];
    (time_delta_ms, request_id, command_strategy()).prop_map(|(time_delta_ms, request_id, command)| Op {
        time_delta_ms,
        request_id,
        command,
    })
}

fn caps_strategy() -> impl Strategy<Value = Caps> {
    prop_oneof![
        Just(Caps::default()),
        (1..5usize, 1..8usize).prop_map(|(runners_max, locks_max)| Caps { runners_max, locks_max })
    ]
}

/// The ops as envelopes, their times walking by the deltas (never below 0).
fn envelopes(ops: &[Op]) -> Vec<Envelope> {
    let mut time_ms = 0i64;
    ops.iter()
        .map(|op| {
            time_ms = (time_ms + op.time_delta_ms).max(0);
            Envelope {
                namespace: DEFAULT_NAMESPACE.into(),
                time_ms: time_ms as u64,
                request_id: op.request_id.clone(),
                command: op.command.clone(),
            }
        })
        .collect()
}

/// A reply with the free-text message of a refusal dropped.
fn normalized(reply: Reply) -> Reply {
    match reply {
        Reply::Rejected { kind, .. } => Reply::Rejected { kind, message: String::new() },
        other => other,
    }
}

fn assert_same_as_reference(index: usize, state: &State, reference: &Reference) {
    assert_eq!(state.now_ms(), reference.now_ms, "op {index}: now");
    assert_eq!(state.lock_expiration_ms(DEFAULT_NAMESPACE), reference.lock_expiration_ms, "op {index}: E");
    let runners: BTreeMap<_, _> = default_namespace(state)
        .runners()
        .iter()
        .map(|(a, r)| (a.clone(), (r.runner.clone(), r.healthy, r.machine_id, r.last_heartbeat_ms)))
        .collect();
    let expected: BTreeMap<_, _> = reference
        .runners
        .iter()
        .map(|r| (r.address.clone(), (r.runner.clone(), r.healthy, r.machine_id, r.heartbeat_ms)))
        .collect();
    assert_eq!(runners, expected, "op {index}: runner records");
    let locks: BTreeMap<_, _> = default_namespace(state)
        .locks()
        .iter()
        .map(|(s, l)| (s.clone(), (l.address.clone(), l.acquired_at_ms)))
        .collect();
    let expected: BTreeMap<_, _> =
        reference.locks.iter().map(|l| (l.shard_id.to_string(), (l.address.clone(), l.acquired_at_ms))).collect();
    assert_eq!(locks, expected, "op {index}: lock records");
    assert_eq!(state.dedup_sizes(), reference.dedup_sizes(), "op {index}: dedup sizes");
    let e = reference.lock_expiration_ms;
    for now_ms in [0, reference.now_ms + e - 1, reference.now_ms + e, reference.now_ms + 3 * e] {
        assert_eq!(
            state.get_runners(DEFAULT_NAMESPACE, now_ms),
            reference.get_runners(now_ms),
            "op {index}: get_runners({now_ms})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_reference_model(
        caps in caps_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..80),
    ) {
        let mut state = State::with_caps(E, caps);
        let mut reference = Reference::new(E, caps);
        for (index, envelope) in envelopes(&ops).iter().enumerate() {
            let reply = state.apply(envelope);
            if let Reply::Rejected { message, .. } = &reply {
                prop_assert!(!message.is_empty(), "op {}: a refusal without a message", index);
            }
            let reply = normalized(reply);
            let expected = normalized(reference.apply(envelope));
            prop_assert_eq!(&reply, &expected, "op {}: {:?}", index, envelope);
            state.check_invariants();
            assert_same_as_reference(index, &state, &reference);
        }
    }

    #[test]
    fn snapshot_restores_an_equal_state_that_behaves_the_same(
        caps in caps_strategy(),
        ops in prop::collection::vec(op_strategy(), 1..60),
        split in any::<prop::sample::Index>(),
    ) {
        let envelopes = envelopes(&ops);
        let (before, after) = envelopes.split_at(split.index(envelopes.len() + 1));
        let mut state = State::with_caps(E, caps);
        for envelope in before {
            state.apply(envelope);
        }
        let bytes = postcard::to_allocvec(&state).expect("a state serialises");
        let mut from_postcard: State = postcard::from_bytes(&bytes).expect("a snapshot restores");
        let json = serde_json::to_string(&state).expect("a state serialises");
        let mut from_json: State = serde_json::from_str(&json).expect("a snapshot restores");
        prop_assert_eq!(&from_postcard, &state);
        prop_assert_eq!(&from_json, &state);
        from_postcard.check_invariants();
        for envelope in after {
            let reply = state.apply(envelope);
            prop_assert_eq!(&from_postcard.apply(envelope), &reply, "{:?}", envelope);
            prop_assert_eq!(&from_json.apply(envelope), &reply, "{:?}", envelope);
            let now_ms = envelope.time_ms;
            prop_assert_eq!(from_postcard.get_runners(DEFAULT_NAMESPACE, now_ms), state.get_runners(DEFAULT_NAMESPACE, now_ms));
        }
        prop_assert_eq!(&from_postcard, &state);
        prop_assert_eq!(&from_json, &state);
    }
}

#[test]
fn answer_bytes_are_bounded_forgetting_the_least_recently_seen_clients() {
    // Every answer lists the same 10,000 shard ids (~300 KB counted), so
    // ~110 clients pass the byte bound long before the client bound.
    let shard_ids: Vec<ShardIdText> = (0..limits::SHARD_IDS_PER_CALL_MAX).map(|i| format!("g:{i}").into()).collect();
    let big = || Command::Acquire { address: "a:1".into(), shard_ids: shard_ids.clone() };
    let mut state = State::new(limits::LOCK_EXPIRATION_MS_DEFAULT);
    let clients = 200u64;
    for client in 0..clients {
        let reply = state.apply(&with_request(client, &format!("c{client}"), 1, big()));
        assert!(matches!(&reply, Reply::ShardIds(ids) if ids.len() == shard_ids.len()), "{reply:?}");
        assert!(state.dedup_bytes() <= limits::DEDUP_BYTES_MAX, "client {client}: {} bytes", state.dedup_bytes());
    }
    state.check_invariants();
    let (remembered, answers) = state.dedup_sizes();
    assert!(remembered < clients as usize && remembered > 50, "{remembered} clients remembered");
    assert_eq!(answers, remembered);
    // The newest client is remembered: its request id cannot be reused for
    // another call. The oldest was forgotten: its id is new again.
    let newest = format!("c{}", clients - 1);
    let reused = state.apply(&with_request(clients, &newest, 1, release_all("a:1")));
    assert!(matches!(reused, Reply::Rejected { kind: RejectionKind::FailedPrecondition, .. }), "{reused:?}");
    assert_eq!(state.apply(&with_request(clients, "c0", 1, release_all("a:1"))), Reply::Done);
    // The count survives a snapshot: it is derived again after a restore.
    let restored: State = postcard::from_bytes(&postcard::to_allocvec(&state).unwrap()).unwrap();
    assert_eq!(restored.dedup_bytes(), state.dedup_bytes());
    restored.check_invariants();
}

#[test]
fn the_byte_bound_never_forgets_the_client_just_seen() {
    // All in the same millisecond, in descending id order: the client just
    // seen sorts first among equals in the eviction order.
    let shard_ids: Vec<ShardIdText> = (0..limits::SHARD_IDS_PER_CALL_MAX).map(|i| format!("g:{i}").into()).collect();
    let mut state = State::new(limits::LOCK_EXPIRATION_MS_DEFAULT);
    for client in (0..150u64).rev() {
        let command = Command::Acquire { address: "a:1".into(), shard_ids: shard_ids.clone() };
        state.apply(&with_request(0, &format!("c{client:03}"), 1, command));
    }
    state.check_invariants();
    assert!(state.dedup_sizes().0 < 150, "the byte bound forgot no client");
    let reused = state.apply(&with_request(0, "c000", 1, release_all("a:1")));
    assert!(matches!(reused, Reply::Rejected { kind: RejectionKind::FailedPrecondition, .. }), "{reused:?}");
}
