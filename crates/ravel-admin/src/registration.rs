//! Registration policy, as methods of [`RegistryState`]: which cluster a
//! new replica joins, founding a cluster, leadership reports (the newest
//! term wins) and readiness. Departures are in `departure.rs`.

use crate::registry::{ClusterInfo, Member, RegistryState};

/// Why a replica could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("no cluster exists yet: start a node that founds one (--leader) first")]
    NoCluster,
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
}

impl RegistryState {
    /// The clusters that should be on the ring: ready and not draining.
    pub fn desired_members(&self) -> Vec<String> {
        self.clusters
            .values()
            .filter(|c| c.ready && !self.ring.draining.contains(&c.id))
            .map(|c| c.id.clone())
            .collect()
    }

    /// The cluster a node is registered in.
    pub fn cluster_of(&self, node_id: &str) -> Option<&ClusterInfo> {
        self.clusters
            .values()
            .find(|c| c.members.contains_key(node_id))
    }

    /// Registers a replica: a node that registers again (it crashed before
    /// it saved the answer) gets the same cluster; a new one the cluster
    /// with the fewest replicas that is not draining.
    pub fn register_replica(
        &mut self,
        node_id: &str,
        member: Member,
    ) -> Result<&ClusterInfo, RegisterError> {
        let target = match self.cluster_of(node_id) {
            Some(c) => c.id.clone(),
            None => self
                .clusters
                .values()
                .filter(|c| !self.ring.draining.contains(&c.id))
                .min_by(|a, b| a.members.len().cmp(&b.members.len()).then(a.id.cmp(&b.id)))
                .map(|c| c.id.clone())
                .ok_or(RegisterError::NoCluster)?,
        };
        let c = self
            .clusters
            .get_mut(&target)
            .ok_or_else(|| RegisterError::UnknownCluster(target.clone()))?;
        c.members.insert(node_id.to_string(), member);
        tracing::info!(node = %node_id, cluster = %target, replicas = c.members.len(), "replica registered");
        Ok(c)
    }

    /// Registers a node that founds a new cluster (or returns the cluster
    /// it already founded).
    pub fn found_cluster(&mut self, node_id: &str, member: Member) -> &ClusterInfo {
        if let Some(id) = self.cluster_of(node_id).map(|c| c.id.clone()) {
            return &self.clusters[&id];
        }
        self.next_cluster += 1;
        let id = format!("cluster-{}", self.next_cluster);
        tracing::info!(node = %node_id, cluster = %id, "new cluster registered");
        self.clusters.entry(id.clone()).or_insert(ClusterInfo {
            id,
            members: [(node_id.to_string(), member)].into(),
            leader: Some(node_id.to_string()),
            leader_term: 0,
            ready: false,
        })
    }

    /// Records that `node_id` leads `cluster_id` in `term` (if it said).
    /// A report of an older term than the one recorded (a deposed leader's
    /// late retry) changes nothing: the newest leader stays.
    pub fn record_leader(
        &mut self,
        cluster_id: &str,
        node_id: &str,
        member: Member,
        term: Option<u64>,
    ) -> Result<(), RegisterError> {
        let c = self
            .clusters
            .get_mut(cluster_id)
            .ok_or_else(|| RegisterError::UnknownCluster(cluster_id.to_string()))?;
        if let Some(term) = term {
            if term < c.leader_term {
                tracing::info!(cluster = %c.id, node = %node_id, term, newest = c.leader_term, "ignoring a stale leader report");
                return Ok(());
            }
            c.leader_term = term;
        }
        c.members.insert(node_id.to_string(), member.clone());
        if c.leader.as_deref() != Some(node_id) {
            tracing::info!(cluster = %c.id, leader = %node_id, addr = %member.grpc_address, "leader changed");
        }
        c.leader = Some(node_id.to_string());
        Ok(())
    }

    /// The founder says its cluster may take keys.
    pub fn mark_ready(&mut self, cluster_id: &str) -> Result<(), RegisterError> {
        let c = self
            .clusters
            .get_mut(cluster_id)
            .ok_or_else(|| RegisterError::UnknownCluster(cluster_id.to_string()))?;
        if !c.ready {
            tracing::info!(cluster = %c.id, "cluster ready to serve");
        }
        c.ready = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::member;

    /// A deposed leader's late report (an older term) does not replace the
    /// newer leader; reports without a term (existing nodes) still count.
    #[test]
    fn the_newest_leader_report_wins() {
        let mut s = RegistryState::default();
        s.found_cluster("a", member("a"));
        s.record_leader("cluster-1", "b", member("b"), Some(5))
            .unwrap();
        s.record_leader("cluster-1", "a", member("a"), Some(4))
            .unwrap();
        assert_eq!(s.clusters["cluster-1"].leader.as_deref(), Some("b"));
        s.record_leader("cluster-1", "c", member("c"), Some(5))
            .unwrap();
        assert_eq!(s.clusters["cluster-1"].leader.as_deref(), Some("c"));
        s.record_leader("cluster-1", "a", member("a"), None)
            .unwrap();
        assert_eq!(s.clusters["cluster-1"].leader.as_deref(), Some("a"));
        assert_eq!(s.clusters["cluster-1"].leader_term, 5);
    }

    #[test]
    fn replicas_go_to_the_smallest_cluster_and_register_idempotently() {
        let mut s = RegistryState::default();
        assert!(matches!(
            s.register_replica("1", member("a")),
            Err(RegisterError::NoCluster)
        ));
        s.found_cluster("1", member("a"));
        s.found_cluster("2", member("b"));
        assert_eq!(
            s.register_replica("3", member("c")).unwrap().id,
            "cluster-1"
        );
        assert_eq!(
            s.register_replica("4", member("d")).unwrap().id,
            "cluster-2"
        );
        assert_eq!(
            s.register_replica("3", member("c")).unwrap().id,
            "cluster-1"
        );
        assert_eq!(s.found_cluster("1", member("a")).id, "cluster-1");
        s.ring.draining.insert("cluster-1".into());
        assert_eq!(
            s.register_replica("5", member("e")).unwrap().id,
            "cluster-2"
        );
    }
}
