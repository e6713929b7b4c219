//! What a replica's `LeaveCluster` does, decided and applied in one
//! registry update, so two departures cannot both act on what they read
//! before the other changed it.
//!
//! The invariant: **the last serving replica of a cluster the ring still
//! routes keys to is never let go, and such a cluster is never removed.**
//! "Serving" is decided by the cluster's Raft voters (asked of its leader),
//! not by the registry's member count, which also lists replicas that
//! registered but never joined, or left Raft in a `kill` whose
//! `LeaveCluster` failed. A cluster whose keys must move away first is
//! marked draining, and the planner never plans an empty ring.

use std::collections::BTreeSet;

use crate::registry::RegistryState;

/// What a replica's `LeaveCluster` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// Not registered (any more): nothing to do.
    Unknown,
    /// Removed from its cluster's registry entry (the last one removes a
    /// cluster that holds no keys).
    Removed { cluster: String },
    /// The last voter of a cluster that still holds keys: the cluster is
    /// draining; call again once its keys have moved.
    Draining { cluster: String },
    /// The last voter of the only cluster that could hold the keys:
    /// refused.
    OnlyCluster { cluster: String },
    /// The cluster holds keys and its voters are not known: the caller
    /// must ask the cluster first.
    NeedVoters { cluster: String },
}

impl RegistryState {
    /// Whether the ring routes keys to `cluster`, or a relocation moves
    /// keys from or to it.
    pub fn holds_keys(&self, cluster: &str) -> bool {
        self.ring.members.iter().any(|m| m == cluster)
            || self.ring.relocation.as_ref().is_some_and(|r| {
                r.pending
                    .values()
                    .any(|m| m.from == cluster || m.to == cluster)
            })
    }

    /// Decides and applies the departure of `node_id`. `voters` are the
    /// Raft voters of its cluster (node ids), as its leader reported them;
    /// needed only when the cluster holds keys.
    pub fn depart(&mut self, node_id: &str, voters: Option<&BTreeSet<String>>) -> Departure {
        let Some(cluster) = self.cluster_of(node_id).map(|c| c.id.clone()) else {
            return Departure::Unknown;
        };
        if self.holds_keys(&cluster) {
            let Some(voters) = voters else {
                return Departure::NeedVoters { cluster };
            };
            let last_voter = voters.len() <= 1 && voters.contains(node_id);
            if last_voter {
                let others = self
                    .desired_members()
                    .into_iter()
                    .filter(|c| *c != cluster)
                    .count();
                if others == 0 {
                    return Departure::OnlyCluster { cluster };
                }
                if self.ring.draining.insert(cluster.clone()) {
                    tracing::info!(%cluster, "last replica leaving: moving the cluster's keys away first");
                }
                return Departure::Draining { cluster };
            }
        }
        self.remove_replica(&cluster, node_id);
        Departure::Removed { cluster }
    }

    /// Removes `node_id` from `cluster_id`'s members. The cluster goes with
    /// its last registered member only if the ring no longer routes keys to
    /// it; otherwise its entry stays (with its keys' serving replicas
    /// unregistered, it is still where those keys are).
    fn remove_replica(&mut self, cluster_id: &str, node_id: &str) {
        let holds_keys = self.holds_keys(cluster_id);
        let Some(c) = self.clusters.get_mut(cluster_id) else {
            return;
        };
        c.members.remove(node_id);
        if c.leader.as_deref() == Some(node_id) {
            c.leader = None;
        }
        tracing::info!(node = %node_id, cluster = %cluster_id, replicas = c.members.len(), "replica left");
        if c.members.is_empty() && !holds_keys {
            self.clusters.remove(cluster_id);
            self.ring.draining.remove(cluster_id);
            tracing::info!(cluster = %cluster_id, "last replica left; cluster removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::member;

    fn voters(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// Two one-replica clusters on the ring; cluster-1 also lists a
    /// phantom (registered, never joined).
    fn two_clusters_with_a_phantom() -> RegistryState {
        let mut s = RegistryState::default();
        s.found_cluster("a1", member("a1"));
        s.found_cluster("b1", member("b1"));
        for c in ["cluster-1", "cluster-2"] {
            s.mark_ready(c).unwrap();
        }
        s.ring.members = vec!["cluster-1".into(), "cluster-2".into()];
        s.register_replica("z", member("z")).unwrap();
        assert!(s.clusters["cluster-1"].members.contains_key("z"));
        s
    }

    #[test]
    fn a_phantom_member_does_not_let_the_last_voter_go() {
        let mut s = two_clusters_with_a_phantom();
        // The registry counts two members; Raft has one voter.
        assert_eq!(
            s.depart("a1", None),
            Departure::NeedVoters {
                cluster: "cluster-1".into()
            }
        );
        assert_eq!(
            s.depart("a1", Some(&voters(&["a1"]))),
            Departure::Draining {
                cluster: "cluster-1".into()
            }
        );
        assert!(s.clusters["cluster-1"].members.contains_key("a1"));
        assert!(s.desired_members() == vec!["cluster-2".to_string()]);
        // Once the keys have moved (the ring no longer routes to it), the
        // cluster goes with its last member, phantom or not.
        s.ring.members = vec!["cluster-2".into()];
        assert_eq!(
            s.depart("a1", None),
            Departure::Removed {
                cluster: "cluster-1".into()
            }
        );
        assert_eq!(
            s.depart("z", None),
            Departure::Removed {
                cluster: "cluster-1".into()
            }
        );
        assert!(!s.clusters.contains_key("cluster-1"));
    }

    #[test]
    fn a_replica_that_already_left_raft_is_just_deregistered() {
        let mut s = two_clusters_with_a_phantom();
        // y joined cluster-2, then a kill took it out of Raft but its
        // LeaveCluster failed; the next LeaveCluster finds it no voter.
        s.register_replica("y", member("y")).unwrap();
        assert_eq!(s.cluster_of("y").unwrap().id, "cluster-2");
        assert_eq!(
            s.depart("y", Some(&voters(&["b1"]))),
            Departure::Removed {
                cluster: "cluster-2".into()
            }
        );
        // A cluster that holds keys is never removed, whoever is left in
        // the registry: b1 leaving without being a voter any more (say the
        // group had another voter it did not register) keeps the entry.
        assert_eq!(
            s.depart("b1", Some(&voters(&["x"]))),
            Departure::Removed {
                cluster: "cluster-2".into()
            }
        );
        assert!(s.clusters.contains_key("cluster-2"));
        assert!(s.clusters["cluster-2"].members.is_empty());
    }

    #[test]
    fn two_draining_clusters_never_leave_an_empty_ring() {
        let mut s = two_clusters_with_a_phantom();
        assert!(matches!(
            s.depart("a1", Some(&voters(&["a1"]))),
            Departure::Draining { .. }
        ));
        assert_eq!(
            s.depart("b1", Some(&voters(&["b1"]))),
            Departure::OnlyCluster {
                cluster: "cluster-2".into()
            }
        );
        assert_eq!(s.desired_members(), vec!["cluster-2".to_string()]);
    }
}
