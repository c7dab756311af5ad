//! The two operations the services build on: [`Node::write`] (validate,
//! stamp the store time, propose through the batching proposer) and
//! [`Node::read`] (pass the read barrier, read the applied state at the
//! store time). Either answers [`CallError::NotLeader`] on a node that is
//! not the leader, for the service to forward.

use std::time::Instant;

use openraft::ServerState;

use super::planted::PlantedBug;
use super::proposer::Refused;
use super::read_barrier::BarrierOutcome;
use super::{CallError, Node};
use crate::clock::wall_clock_ms;
use crate::error::Error;
use crate::limits::RAFT_CALL_TIMEOUT;
use crate::model::RequestId;
use crate::raft::storage::sm_store::AppliedState;
use crate::raft::workarounds::quorum;
use crate::state_machine::{validate_namespace, Command, Envelope, NamespaceName, Reply, State};

impl Node {
    /// The store time to stamp a command or answer a read with (SPEC §4).
    ///
    /// On the leader, its [`StoreClock`]; a leader just elected first waits
    /// (within [`RAFT_CALL_TIMEOUT`]) until it applied its own blank entry,
    /// which anchors the clock. Elsewhere the state's own time: a follower's
    /// write is forwarded, never applied, and a stamp that does not advance
    /// time is always safe.
    ///
    /// # Errors
    /// `Unavailable` when the new leader's blank entry was not applied in time.
    async fn store_now_ms(&self) -> Result<u64, Error> {
        if self.planted_bug == Some(PlantedBug::WallClockStamps) {
            return Ok(wall_clock_ms());
        }
        let (state, term) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state, metrics.current_term)
        };
        if state != ServerState::Leader {
            return Ok(self.state_machine.read().state.now_ms());
        }
        if let Some(now_ms) = self.store_clock.now_ms(term, Instant::now(), wall_clock_ms()) {
            return Ok(now_ms);
        }
        let own_blank = openraft::CommittedLeaderId::new(term, self.id);
        let mut anchors = self.leader_anchors.clone();
        let anchored = anchors.wait_for(|anchor| anchor.is_some_and(|(leader, _)| leader >= own_blank));
        let anchor = match tokio::time::timeout(RAFT_CALL_TIMEOUT, anchored).await {
            Ok(Ok(anchor)) => *anchor,
            _ => None,
        };
        let Some((leader, anchor)) = anchor.filter(|(leader, _)| *leader == own_blank) else {
            return Err(Error::unavailable(format!("elected in term {term} but not yet serving; retry")));
        };
        tracing::info!(term, store_now_ms = anchor.store_now_ms, %leader, "store clock anchored for this term");
        self.store_clock.take_office(term, anchor, wall_clock_ms());
        let now_ms = self.store_clock.now_ms(term, Instant::now(), wall_clock_ms());
        Ok(now_ms.expect("the store clock took office in this term just now"))
    }

    /// Store time for views that need no barrier (metrics): the leader's
    /// clock when it is anchored, else the state's time.
    pub fn store_time_ms_for_views(&self) -> u64 {
        let term = self.raft.metrics().borrow().current_term;
        let state_now_ms = self.state_machine.read().state.now_ms();
        self.store_clock.now_ms(term, Instant::now(), wall_clock_ms()).map_or(state_now_ms, |now| now.max(state_now_ms))
    }

    /// Proposes `command` (validated first) stamped with the store time.
    ///
    /// # Errors
    /// [`CallError::NotLeader`] on a follower; [`CallError::Failed`] with
    /// `InvalidArgument` before proposing bad input, the state machine's
    /// refusal, or `Unavailable` when Raft cannot commit in time.
    pub async fn write(
        &self,
        namespace: NamespaceName,
        request_id: Option<RequestId>,
        command: Command,
    ) -> Result<Reply, CallError> {
        validate_namespace(&namespace)?;
        command.validate()?;
        if let Some(request_id) = &request_id {
            request_id.validate()?;
        }
        self.refuse_without_quorum()?;
        let envelope = Envelope { time_ms: self.store_now_ms().await?, request_id, namespace, command };
        match self.proposer.propose(envelope).await {
            Ok(reply) => Ok(reply.into_result()?),
            Err(Refused::NotLeader(leader_address)) => Err(CallError::NotLeader { leader_address }),
            Err(Refused::Unavailable(reason)) => Err(Error::unavailable(reason).into()),
        }
    }

    /// Passes the linearizable read barrier, then runs `read` on the applied
    /// state with `now = max(state now, store time)`.
    ///
    /// # Errors
    /// [`CallError::NotLeader`] on a follower; `Unavailable` without quorum.
    pub async fn read<T>(&self, read: impl FnOnce(&State, u64) -> T) -> Result<T, CallError> {
        self.read_applied(|applied, now_ms| read(&applied.state, now_ms)).await
    }

    /// [`Node::read`] of the whole applied state (its Raft position and
    /// membership too): what a backup copies.
    ///
    /// # Errors
    /// As [`Node::read`].
    pub async fn read_applied<T>(&self, read: impl FnOnce(&AppliedState, u64) -> T) -> Result<T, CallError> {
        if self.planted_bug == Some(PlantedBug::StaleReads) {
            let applied = self.state_machine.read();
            return Ok(read(&applied, applied.state.now_ms().max(wall_clock_ms())));
        }
        self.refuse_without_quorum()?;
        let barrier = tokio::select! {
            passed = tokio::time::timeout(RAFT_CALL_TIMEOUT, self.read_barrier.pass(&self.raft)) => passed
                .map_err(|_| Error::unavailable("the read barrier did not pass in time (no quorum?)"))?,
            lost = quorum::lost(&self.raft, self.quorum_timeout) => {
                return Err(Error::unavailable(quorum::refusal(lost)).into());
            }
        };
        match barrier {
            BarrierOutcome::Passed => {
                let store_now_ms = self.store_now_ms().await?;
                let applied = self.state_machine.read();
                Ok(read(&applied, applied.state.now_ms().max(store_now_ms)))
            }
            BarrierOutcome::NotLeader(leader_address) => Err(CallError::NotLeader { leader_address }),
            BarrierOutcome::Failed(reason) => Err(Error::unavailable(reason).into()),
        }
    }

    /// `Unavailable` when this node leads but heard from no quorum for
    /// longer than its quorum timeout (`raft::quorum`).
    fn refuse_without_quorum(&self) -> Result<(), Error> {
        if let Some(target) = self.handover.in_progress() {
            return Err(Error::unavailable(format!("leadership is being handed over to node {target}; retry")));
        }
        match quorum::lost_for(&self.raft.metrics().borrow(), self.quorum_timeout) {
            Some(lost) => Err(Error::unavailable(quorum::refusal(lost))),
            None => Ok(()),
        }
    }

    /// Whether this node, if it leads, heard from a quorum within its
    /// quorum timeout (`raft::workarounds::quorum`); true on followers.
    pub fn has_quorum(&self) -> bool {
        self.refuse_without_quorum().is_ok()
    }
}
