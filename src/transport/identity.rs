//! [`ClusterIdentity`]: the cluster a node belongs to, as its applied state
//! names it, carried on every call it makes to another node and checked on
//! every Raft call it receives: a node of another cluster (the cluster a
//! backup was restored from, the one a recovery shrank) is refused with a
//! message naming both, instead of having its log merged.

use std::sync::{Arc, PoisonError, RwLock};

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::Status;

/// Metadata key of the caller's cluster id.
pub const CLUSTER_ID_KEY: &str = "x-runner-storage-cluster";

/// The cluster id this node knows (none until its state names one).
/// Cheap to clone; every clone shares the value.
#[derive(Debug, Clone, Default)]
pub struct ClusterIdentity(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl ClusterIdentity {
    /// Notes the id the applied state names now (a valid id: ASCII letters,
    /// digits, `-`; anything else is not sent).
    pub fn set(&self, cluster_id: Option<&str>) {
        let value = cluster_id.and_then(|id| id.parse::<MetadataValue<Ascii>>().ok());
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if *current != value {
            *current = value;
        }
    }

    /// Whether the id known is `cluster_id` (no allocation: checked after every apply).
    pub fn is(&self, cluster_id: &str) -> bool {
        let current = self.0.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().is_some_and(|value| value.as_bytes() == cluster_id.as_bytes())
    }

    /// The id, when known.
    pub fn get(&self) -> Option<String> {
        let current = self.0.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().and_then(|value| value.to_str().ok()).map(str::to_owned)
    }

    /// Adds the id, when known, to an outgoing call's metadata.
    pub fn stamp(&self, metadata: &mut MetadataMap) {
        if let Some(value) = self.0.read().unwrap_or_else(PoisonError::into_inner).clone() {
            metadata.insert(CLUSTER_ID_KEY, value);
        }
    }

    /// Refuses a call from a node of another cluster: both ids known, and
    /// different. A node that knows none yet (new, or before its state
    /// named the cluster) takes calls from anyone, and is told the id by
    /// the log it receives.
    ///
    /// # Errors
    /// `FAILED_PRECONDITION` naming both clusters.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(ours) = self.get() else { return Ok(()) };
        let Some(theirs) = metadata.get(CLUSTER_ID_KEY).and_then(|value| value.to_str().ok()) else { return Ok(()) };
        if theirs == ours {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "this node belongs to cluster {ours}, the caller to cluster {theirs}: a node of another cluster (one a \
             backup was restored from, or that a recovery replaced) cannot rejoin; wipe its data dir and add it \
             as a new node"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_of_another_cluster_are_refused_and_unnamed_nodes_take_any() {
        let ours = ClusterIdentity::default();
        let theirs = ClusterIdentity::default();
        let mut metadata = MetadataMap::new();
        theirs.stamp(&mut metadata);
        assert!(metadata.get(CLUSTER_ID_KEY).is_none(), "no id, no metadata");
        theirs.set(Some("old-1"));
        theirs.stamp(&mut metadata);
        assert!(ours.check(&metadata).is_ok(), "a node that knows no id takes calls from anyone");
        ours.set(Some("old-1"));
        assert!(ours.check(&metadata).is_ok(), "the same cluster");
        ours.set(Some("restored-2"));
        let refused = ours.check(&metadata).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains("restored-2") && refused.message().contains("old-1"), "{refused:?}");
        assert!(ours.check(&MetadataMap::new()).is_ok(), "a caller that sends none (an older node) is taken");
    }
}
