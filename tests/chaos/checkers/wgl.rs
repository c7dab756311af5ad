//! A linearizability search in the style of Wing & Gong with Lowe's
//! memoisation (the algorithm of Knossos' `wgl` checker and of Porcupine).
//!
//! The history is a doubly linked list of call and return events ordered by
//! time. The search walks it from the head: at a call it tries to linearize
//! that operation now (the model must accept it in the current state); on
//! success it lifts the operation out of the list and starts again from the
//! head; at a return whose operation is not linearized yet it backtracks
//! (undoes the last linearized operation and tries the next call after it).
//! A configuration (set of linearized operations, model state) already seen
//! is not explored again.
//!
//! - Operations with an unknown outcome have no return event: they may be
//!   linearized anywhere after their invocation, or never (as if after the
//!   end), so the search never has to backtrack for them.
//! - Models may be nondeterministic: the state is the *set* of states the
//!   model can be in (the powerset construction), so a nondeterministic step
//!   costs no extra search branches.
//! - The set of linearized operations is kept as a 128-bit Zobrist hash
//!   (random key per operation, XOR), and the memo stores that hash with a
//!   64-bit hash of the state set, so memory stays proportional to the
//!   configurations visited, not to the history's length squared. A
//!   collision (odds about n²/2^192) could only prune a branch, i.e. report a
//!   violation that is not one; never hide one.
//! - The search is bounded ([`Limits`]); past the bound the verdict is
//!   `Inconclusive`, never a pass.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};

use crate::history::Micros;

/// A (possibly nondeterministic) sequential specification.
pub trait Model {
    type State: Clone + Ord + Hash + Debug;
    type Op: Debug;
    fn init(&self) -> Vec<Self::State>;
    /// Pushes onto `next` every state `op` can lead to from `state`, given
    /// its observed outcome; pushes nothing when the outcome is impossible.
    fn step(&self, state: &Self::State, op: &Self::Op, next: &mut Vec<Self::State>);
}

/// One operation of the history to check.
#[derive(Debug, Clone)]
pub struct Timed<O> {
    pub op: O,
    pub invoke_us: Micros,
    /// `None`: the outcome is unknown; it may take effect at any later time.
    pub complete_us: Option<Micros>,
    /// The history op id, for reports.
    pub history_id: u64,
}

/// Bounds of one search.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most call events examined.
    pub steps_max: u64,
    /// Most states in one state set.
    pub states_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { steps_max: 50_000_000, states_max: 4096 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable {
        steps: u64,
    },
    /// No linearization exists. `stuck_at` is the history id of an
    /// operation that could not be placed after the longest linearizable
    /// prefix found; `states` the model states at that prefix.
    Violation {
        stuck_at: u64,
        prefix_len: usize,
        states: String,
    },
    Inconclusive {
        reason: String,
    },
}

const NIL: usize = usize::MAX;

struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per event: the operation index, and whether it is the call.
    op_of: Vec<(usize, bool)>,
    /// Per operation: its call event and its return event (or NIL).
    call_of: Vec<usize>,
    return_of: Vec<usize>,
}

const HEAD: usize = 0;

impl Events {
    fn build<O>(ops: &[Timed<O>]) -> Events {
        // (time, calls before returns at equal times: sound, treats touching operations as concurrent)
        let mut order: Vec<(Micros, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (index, op) in ops.iter().enumerate() {
            order.push((op.invoke_us, 0, index));
            if let Some(complete) = op.complete_us {
                order.push((complete.max(op.invoke_us), 1, index));
            }
        }
        order.sort_unstable();
        let size = order.len() + 1;
        let mut events = Events {
            next: vec![NIL; size],
            prev: vec![NIL; size],
            op_of: vec![(usize::MAX, false); size],
            call_of: vec![NIL; ops.len()],
            return_of: vec![NIL; ops.len()],
        };
        for (position, (_, kind, index)) in order.iter().enumerate() {
            let event = position + 1;
            events.op_of[event] = (*index, *kind == 0);
            if *kind == 0 {
                events.call_of[*index] = event;
            } else {
                events.return_of[*index] = event;
            }
            events.prev[event] = event - 1;
            events.next[event - 1] = event;
        }
        events
    }

    fn unlink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn relink(&mut self, event: usize) {
        let (prev, next) = (self.prev[event], self.next[event]);
        self.next[prev] = event;
        if next != NIL {
            self.prev[next] = event;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        if self.return_of[op] != NIL {
            self.unlink(self.return_of[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.return_of[op] != NIL {
            self.relink(self.return_of[op]);
        }
        self.relink(self.call_of[op]);
    }
}

fn zobrist_keys(count: usize) -> Vec<u128> {
    // splitmix64: deterministic, so a replay explores identically.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count).map(|_| (u128::from(next()) << 64) | u128::from(next())).collect()
}

fn hash_states<S: Hash>(states: &[S]) -> u64 {
    let mut hasher = DefaultHasher::new();
    states.hash(&mut hasher);
    hasher.finish()
}

/// The powerset step: every state reachable from any of `states`, sorted, deduplicated.
fn step_all<M: Model>(model: &M, states: &[M::State], op: &M::Op) -> Vec<M::State> {
    let mut next = Vec::new();
    for state in states {
        model.step(state, op, &mut next);
    }
    next.sort_unstable();
    next.dedup();
    next
}

/// Searches for a linearization of `ops` under `model`.
pub fn check<M: Model>(model: &M, ops: &[Timed<M::Op>], limits: Limits) -> Verdict {
    let mut events = Events::build(ops);
    let keys = zobrist_keys(ops.len());
    let mut linearized: u128 = 0;
    let mut memo: HashSet<(u128, u64)> = HashSet::new();
    let mut stack: Vec<(usize, Vec<M::State>)> = Vec::new();
    let mut states = model.init();
    states.sort_unstable();
    states.dedup();
    let mut deepest = (0usize, NIL, String::new());
    let mut steps: u64 = 0;
    let mut event = events.next[HEAD];
    while events.next[HEAD] != NIL {
        if event == NIL {
            // Only unknown calls were left and none could be linearized:
            // they never took effect, as if after the end.
            return Verdict::Linearizable { steps };
        }
        let (op, is_call) = events.op_of[event];
        if is_call {
            steps += 1;
            if steps > limits.steps_max {
                return Verdict::Inconclusive { reason: format!("search passed {} steps", limits.steps_max) };
            }
            let next_states = step_all(model, &states, &ops[op].op);
            if next_states.len() > limits.states_max {
                return Verdict::Inconclusive {
                    reason: format!("{} model states after op {}", next_states.len(), ops[op].history_id),
                };
            }
            let key = (linearized ^ keys[op], hash_states(&next_states));
            if !next_states.is_empty() && memo.insert(key) {
                stack.push((op, std::mem::replace(&mut states, next_states)));
                linearized ^= keys[op];
                events.lift(op);
                event = events.next[HEAD];
            } else {
                event = events.next[event];
            }
        } else {
            // A return whose operation is not linearized yet: backtrack.
            if deepest.1 == NIL || stack.len() > deepest.0 {
                deepest = (stack.len(), op, format!("{states:?}"));
            }
            let Some((top, previous)) = stack.pop() else {
                let (prefix_len, stuck, states) = deepest;
                return Verdict::Violation { stuck_at: ops[stuck].history_id, prefix_len, states };
            };
            states = previous;
            linearized ^= keys[top];
            events.unlift(top);
            event = events.next[events.call_of[top]];
        }
    }
    Verdict::Linearizable { steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: `Write(v)` sets it, `Read(v)` must see `v`; `Read(None)` is unknown.
    struct Register;
    #[derive(Debug)]
    enum RegisterOp {
        Write(u8),
        Read(Option<u8>),
    }
    impl Model for Register {
        type State = u8;
        type Op = RegisterOp;
        fn init(&self) -> Vec<u8> {
            vec![0]
        }
        fn step(&self, state: &u8, op: &RegisterOp, next: &mut Vec<u8>) {
            match op {
                RegisterOp::Write(value) => next.push(*value),
                RegisterOp::Read(Some(value)) if value == state => next.push(*state),
                RegisterOp::Read(Some(_)) => {}
                RegisterOp::Read(None) => next.push(*state),
            }
        }
    }

    fn timed(op: RegisterOp, invoke_us: Micros, complete_us: Option<Micros>, history_id: u64) -> Timed<RegisterOp> {
        Timed { op, invoke_us, complete_us, history_id }
    }

    fn check_register(ops: Vec<Timed<RegisterOp>>) -> Verdict {
        check(&Register, &ops, Limits::default())
    }

    #[test]
    fn concurrent_write_may_be_seen_or_not() {
        let verdict = check_register(vec![
            timed(RegisterOp::Write(1), 0, Some(10), 0),
            timed(RegisterOp::Read(Some(0)), 1, Some(2), 1),
            timed(RegisterOp::Read(Some(1)), 3, Some(4), 2),
        ]);
        assert!(matches!(verdict, Verdict::Linearizable { .. }), "{verdict:?}");
    }

    #[test]
    fn stale_read_after_completed_write_is_a_violation() {
        let verdict = check_register(vec![
            timed(RegisterOp::Write(1), 0, Some(10), 0),
            timed(RegisterOp::Read(Some(0)), 11, Some(12), 1),
        ]);
        assert!(matches!(verdict, Verdict::Violation { stuck_at: 1, .. }), "{verdict:?}");
    }

    #[test]
    fn unknown_write_may_apply_late_or_never() {
        let late = check_register(vec![
            timed(RegisterOp::Write(1), 0, None, 0),
            timed(RegisterOp::Read(Some(0)), 5, Some(6), 1),
            timed(RegisterOp::Read(Some(1)), 7, Some(8), 2),
        ]);
        assert!(matches!(late, Verdict::Linearizable { .. }), "{late:?}");
        let never = check_register(vec![
            timed(RegisterOp::Write(1), 0, None, 0),
            timed(RegisterOp::Read(Some(0)), 5, Some(6), 1),
        ]);
        assert!(matches!(never, Verdict::Linearizable { .. }), "{never:?}");
        let flip_back = check_register(vec![
            timed(RegisterOp::Write(1), 0, None, 0),
            timed(RegisterOp::Read(Some(1)), 5, Some(6), 1),
            timed(RegisterOp::Read(Some(0)), 7, Some(8), 2),
        ]);
        assert!(matches!(flip_back, Verdict::Violation { stuck_at: 2, .. }), "{flip_back:?}");
    }
}
