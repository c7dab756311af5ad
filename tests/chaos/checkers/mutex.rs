//! Mutual exclusion: no two addresses are ever both told they hold the same
//! shard over intervals in which both locks could be valid.
//!
//! A *claim*: an `ok` acquire or refresh answering shard `s` to address `a`,
//! invoked at `t_inv`, completed at `t_ok`. `a` may act as the holder from
//! `t_ok` (when it learns it) until `t_inv + E − slack` (the holder's
//! contract, SPEC §4: [`super::store_time::holder_window_us`]), or until `a`
//! invokes a release of `s` (or `releaseAll`) after `t_ok`, whichever
//! comes first. Claims are judged on the clients' monotonic lab clock only;
//! no node's clock enters, so a node whose wall clock steps cannot excuse
//! an overlap.
//!
//! Why a correct store never produces overlapping claims of two addresses:
//! `b` can take `s` from `a` only when store time passed `acquired_at_a +
//! E`; store time advances at most `(1 + ppm)(real time) + 1 ms`, so that
//! takes more than `E − slack` of real time from `a`'s stamp, itself after
//! `t_inv_a`: `t_ok_b > t_inv_a + E − slack`.

use std::collections::BTreeMap;

use super::store_time::holder_window_us;
use crate::history::{Call, History, Micros, Op};

#[derive(Debug, Clone)]
struct Claim<'a> {
    address: &'a str,
    from_us: Micros,
    until_us: Micros,
    op: &'a Op,
}

/// Returns one message per pair of overlapping claims.
pub fn check(history: &History) -> Vec<String> {
    let window_us = holder_window_us(history.lock_expiration_us());
    let mut claims: BTreeMap<&str, Vec<Claim>> = BTreeMap::new();
    for op in &history.ops {
        let (Some(answered), Some(address)) = (op.answered_shard_ids(), op.call.address()) else { continue };
        for shard_id in answered {
            let until_us = release_after(history, address, shard_id, op.complete_us)
                .map_or(op.invoke_us + window_us, |release| release.min(op.invoke_us + window_us));
            let claim = Claim { address, from_us: op.complete_us, until_us, op };
            claims.entry(shard_id.as_str()).or_default().push(claim);
        }
    }
    let mut violations = Vec::new();
    for (shard_id, mut shard_claims) in claims {
        shard_claims.sort_by_key(|claim| claim.from_us);
        for (index, first) in shard_claims.iter().enumerate() {
            for second in shard_claims[index + 1..].iter().take_while(|second| second.from_us < first.until_us) {
                let overlap = first.until_us.min(second.until_us) - second.from_us;
                if second.address != first.address && overlap > 0 {
                    violations.push(format!(
                        "shard {shard_id}: {} told it holds it over [{}, {}] µs (op {} {}), {} over [{}, {}] µs (op {} {}): overlap {} µs",
                        first.address,
                        first.from_us,
                        first.until_us,
                        first.op.id,
                        first.op.call.name(),
                        second.address,
                        second.from_us,
                        second.until_us,
                        second.op.id,
                        second.op.call.name(),
                        overlap
                    ));
                }
            }
        }
    }
    violations
}

/// When `address` next invoked a release of `shard_id` (or releaseAll) at or after `after_us`.
fn release_after(history: &History, address: &str, shard_id: &str, after_us: Micros) -> Option<Micros> {
    let start = history.ops.partition_point(|op| op.invoke_us < after_us);
    history.ops[start..].iter().find_map(|op| match &op.call {
        Call::Release { address: a, shard_id: s } if a == address && s == shard_id => Some(op.invoke_us),
        Call::ReleaseAll { address: a } if a == address => Some(op.invoke_us),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Answer, Outcome, RunInfo};

    fn acquire(id: u64, address: &str, invoke_us: Micros, complete_us: Micros) -> Op {
        Op {
            id,
            process: address.into(),
            call: Call::Acquire { address: address.into(), shard_ids: vec!["default:1".into()] },
            invoke_us,
            complete_us,
            outcome: Outcome::Ok,
            answer: Some(Answer::ShardIds(vec!["default:1".into()])),
            error: None,
        }
    }

    fn history(ops: Vec<Op>) -> History {
        let info = RunInfo {
            seed: 0,
            nodes: 3,
            lab_mode: "test".into(),
            lock_expiration_ms: 2000,
            shard_ids: vec!["default:1".into()],
        };
        History { info: Some(info), ops, faults: Vec::new(), observations: Vec::new(), final_state: None }
    }

    #[test]
    fn takeover_after_expiry_is_fine() {
        let ops = vec![acquire(0, "a:1", 0, 1_000), acquire(1, "b:1", 2_000_500, 2_001_000)];
        assert_eq!(check(&history(ops)), Vec::<String>::new());
        // The holder counts on E − slack only (2000 − 21 ms): a takeover just after that is no overlap.
        let ops = vec![acquire(0, "a:1", 0, 1_000), acquire(1, "b:1", 1_900_000, 1_979_001)];
        assert_eq!(check(&history(ops)), Vec::<String>::new());
        let ops = vec![acquire(0, "a:1", 0, 1_000), acquire(1, "b:1", 1_900_000, 1_978_000)];
        assert_eq!(check(&history(ops)).len(), 1, "inside the holder's window");
    }

    #[test]
    fn takeover_before_expiry_is_flagged() {
        let ops = vec![acquire(0, "a:1", 0, 1_000), acquire(1, "b:1", 1_000_000, 1_001_000)];
        assert_eq!(check(&history(ops)).len(), 1);
    }

    #[test]
    fn release_ends_the_claim() {
        let mut release = acquire(1, "a:1", 5_000, 6_000);
        release.call = Call::Release { address: "a:1".into(), shard_id: "default:1".into() };
        release.answer = Some(Answer::Done);
        let ops = vec![acquire(0, "a:1", 0, 1_000), release, acquire(2, "b:1", 7_000, 8_000)];
        assert_eq!(check(&history(ops)), Vec::<String>::new());
    }
}
