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
use std::time::Duration;

use ravel_proto::ext::StatusRequest;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::Node;
use tokio::time::Instant;
use tonic::Status;

use crate::registry::RegistryState;
use crate::router::{CallError, Router};
use crate::service::persist_status;
use crate::state::AdminState;

/// Longest wait for a cluster's voters during `LeaveCluster`.
const VOTERS_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the Raft `Leave` of an admin-driven removal (the
/// cluster may have to elect a leader first).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(15);

impl AdminState {
    /// The Raft voters of `cluster` (node ids), as its leader reports them.
    async fn voters(&self, cluster: &str) -> Result<BTreeSet<String>, Status> {
        let deadline = Instant::now() + VOTERS_TIMEOUT;
        let status = self
            .router
            .call(cluster, deadline, |ch, remaining| async move {
                let mut req = tonic::Request::new(StatusRequest {});
                req.set_timeout(remaining);
                Router::ext(ch).status(req).await.map(|r| r.into_inner())
            })
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "cannot tell whether {cluster} keeps a serving replica (asking its leader for its voters: {e:?}); try again"
                ))
            })?;
        Ok(status
            .voters
            .iter()
            .filter_map(|v| v.split_once('=').map(|(id, _)| id.to_string()))
            .collect())
    }

    /// `LeaveCluster` for replica `node_id`: decided on the cluster's Raft
    /// voters when it holds keys, and applied in the same registry update
    /// as the decision.
    pub async fn depart(&self, node_id: &str) -> Result<Departure, Status> {
        let depart = |voters: Option<BTreeSet<String>>| async move {
            self.registry
                .update(|s| s.depart(node_id, voters.as_ref()))
                .await
                .map_err(persist_status)
        };
        match depart(None).await? {
            Departure::NeedVoters { cluster } => depart(Some(self.voters(&cluster).await?)).await,
            d => Ok(d),
        }
    }

    /// `ravel member remove`: the admin takes replica `node_id` out of its
    /// cluster's Raft group (a `Leave` through the cluster's leader), then
    /// out of the registry, as the replica's own `kill` would: for a host
    /// that is gone with its disk. Idempotent: a replica already out of
    /// Raft leaves the registry; one that is not registered is `Unknown`.
    pub async fn remove_member(&self, node_id: &str) -> Result<Departure, Status> {
        let state = self.registry.snapshot();
        let Some((cluster, member)) = state
            .clusters
            .values()
            .find_map(|c| c.members.get(node_id).map(|m| (c.id.clone(), m.clone())))
        else {
            return Ok(Departure::Unknown);
        };
        let node = Node {
            node_id: node_id.to_string(),
            grpc_address: member.grpc_address.clone(),
            raft_address: member.raft_address.clone(),
            cluster_id: cluster.clone(),
        };
        self.router
            .call(&cluster, Instant::now() + LEAVE_TIMEOUT, |ch, remaining| {
                let mut req = tonic::Request::new(node.clone());
                req.set_timeout(remaining);
                async move { RavelNodeClient::new(ch).leave(req).await.map(|_| ()) }
            })
            .await
            .map_err(|e| match e {
                CallError::Unavailable(m) => Status::unavailable(format!(
                    "cannot take {node_id} out of {cluster}'s Raft group: {m}"
                )),
                CallError::Status(s) => s,
            })?;
        tracing::info!(node = node_id, %cluster, "replica removed from its Raft group by the admin");
        self.depart(node_id).await
    }
}

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
