//! `RavelClusterAdminPB.RavelClusterAdmin`: the admin side of registration,
//! leadership reports and departures (wire-protocol.md §2).

use std::sync::Arc;

use ravel_proto::admin::ravel_cluster_admin_server::RavelClusterAdmin;
use ravel_proto::admin::{Cluster, Node, Response as AdminResponse};
use tonic::{Request, Response, Status};

use crate::registry::{ClusterInfo, Member, RegistryError};
use crate::Shared;

#[derive(Clone)]
pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn persist_status(e: RegistryError) -> Status {
    Status::internal(format!("could not persist the admin state: {e}"))
}

fn validate(node: &Node) -> Result<Member, Status> {
    if node.node_id.is_empty() {
        return Err(Status::invalid_argument("node_id must not be empty"));
    }
    if node.grpc_address.is_empty() {
        return Err(Status::invalid_argument("grpc_address must not be empty"));
    }
    Ok(Member {
        grpc_address: node.grpc_address.clone(),
        raft_address: if node.raft_address.is_empty() {
            node.grpc_address.clone()
        } else {
            node.raft_address.clone()
        },
    })
}

fn cluster_reply(c: &ClusterInfo) -> Cluster {
    let (grpc, raft) = c
        .leader_member()
        .map(|(_, m)| (m.grpc_address.clone(), m.raft_address.clone()))
        .unwrap_or_default();
    Cluster {
        cluster_id: c.id.clone(),
        leader_grpc_address: grpc,
        leader_raft_address: raft,
    }
}

fn ok() -> Response<AdminResponse> {
    Response::new(AdminResponse { data: "ok".into() })
}

#[tonic::async_trait]
impl RavelClusterAdmin for AdminService {
    async fn join_existing_cluster(
        &self,
        request: Request<Node>,
    ) -> Result<Response<Cluster>, Status> {
        let node = request.into_inner();
        let member = validate(&node)?;
        let reply = self
            .shared
            .registry
            .update(|s| {
                // A node that registers again (it crashed before it saved
                // the answer) gets the same cluster; a new one the cluster
                // with the fewest replicas.
                let target = match s.cluster_of(&node.node_id) {
                    Some(c) => Some(c.id.clone()),
                    None => s
                        .clusters
                        .values()
                        // A cluster whose keys are moving away takes no replicas.
                        .filter(|c| !s.ring.draining.contains(&c.id))
                        .min_by(|a, b| a.members.len().cmp(&b.members.len()).then(a.id.cmp(&b.id)))
                        .map(|c| c.id.clone()),
                };
                let id = target.ok_or_else(|| {
                    Status::failed_precondition(
                        "no cluster exists yet: start a node that founds one (--leader) first",
                    )
                })?;
                let c = s.clusters.get_mut(&id).expect("found");
                c.members.insert(node.node_id.clone(), member);
                tracing::info!(node = %node.node_id, cluster = %id, replicas = c.members.len(), "replica registered");
                Ok::<_, Status>(cluster_reply(c))
            })
            .map_err(persist_status)??;
        Ok(Response::new(reply))
    }

    async fn join_as_cluster_leader(
        &self,
        request: Request<Node>,
    ) -> Result<Response<Cluster>, Status> {
        let node = request.into_inner();
        let member = validate(&node)?;
        let reply = self
            .shared
            .registry
            .update(|s| {
                if let Some(c) = s.cluster_of(&node.node_id) {
                    return cluster_reply(c);
                }
                s.next_cluster += 1;
                let id = format!("cluster-{}", s.next_cluster);
                let c = ClusterInfo {
                    id: id.clone(),
                    members: [(node.node_id.clone(), member)].into(),
                    leader: Some(node.node_id.clone()),
                    ready: false,
                };
                let reply = cluster_reply(&c);
                s.clusters.insert(id.clone(), c);
                tracing::info!(node = %node.node_id, cluster = %id, "new cluster registered");
                reply
            })
            .map_err(persist_status)?;
        Ok(Response::new(reply))
    }

    async fn update_cluster_leader(
        &self,
        request: Request<Node>,
    ) -> Result<Response<AdminResponse>, Status> {
        let node = request.into_inner();
        let member = validate(&node)?;
        self.shared.registry
            .update(|s| {
                let c = s
                    .clusters
                    .get_mut(&node.cluster_id)
                    .ok_or_else(|| Status::not_found(format!("unknown cluster {:?}", node.cluster_id)))?;
                c.members.insert(node.node_id.clone(), member);
                if c.leader.as_deref() != Some(node.node_id.as_str()) {
                    tracing::info!(cluster = %c.id, leader = %node.node_id, addr = %node.grpc_address, "leader changed");
                }
                c.leader = Some(node.node_id.clone());
                Ok::<(), Status>(())
            })
            .map_err(persist_status)??;
        Ok(ok())
    }

    async fn leave_cluster(
        &self,
        request: Request<Node>,
    ) -> Result<Response<AdminResponse>, Status> {
        let node = request.into_inner();
        if node.node_id.is_empty() {
            return Err(Status::invalid_argument("node_id must not be empty"));
        }
        let state = self.shared.registry.snapshot();
        let Some(cluster) = state.cluster_of(&node.node_id).cloned() else {
            return Ok(ok()); // not registered (any more): leaving is idempotent
        };
        let last = cluster.members.len() == 1;
        let on_ring = state.ring.members.contains(&cluster.id);
        let moving = state.ring.relocation.as_ref().is_some_and(|r| {
            r.pending
                .values()
                .any(|m| m.from == cluster.id || m.to == cluster.id)
        });
        if last && (on_ring || moving) {
            // The cluster's keys must live elsewhere before its last replica
            // (and with it the data) goes away.
            let others = state
                .desired_members()
                .into_iter()
                .filter(|c| *c != cluster.id)
                .count();
            if others == 0 {
                return Err(Status::failed_precondition(format!(
                    "{} is the only cluster serving keys; its last replica cannot leave without losing them",
                    cluster.id
                )));
            }
            self.shared
                .registry
                .update(|s| {
                    s.ring.draining.insert(cluster.id.clone());
                })
                .map_err(persist_status)?;
            self.shared.wake.notify_one();
            tracing::info!(cluster = %cluster.id, "last replica leaving: moving the cluster's keys away first");
            return Err(Status::unavailable(format!(
                "cluster {} is moving its keys to the other clusters; call LeaveCluster again",
                cluster.id
            )));
        }
        self.shared
            .registry
            .update(|s| {
                let c = s.clusters.get_mut(&cluster.id).expect("found");
                c.members.remove(&node.node_id);
                if c.leader.as_deref() == Some(node.node_id.as_str()) {
                    c.leader = None;
                }
                tracing::info!(node = %node.node_id, cluster = %cluster.id, replicas = c.members.len(), "replica left");
                if c.members.is_empty() {
                    s.clusters.remove(&cluster.id);
                    s.ring.draining.remove(&cluster.id);
                    tracing::info!(cluster = %cluster.id, "last replica left; cluster removed");
                }
            })
            .map_err(persist_status)?;
        Ok(ok())
    }

    async fn get_cluster_leader(
        &self,
        request: Request<Cluster>,
    ) -> Result<Response<Node>, Status> {
        let want = request.into_inner().cluster_id;
        let state = self.shared.registry.snapshot();
        let c = state
            .clusters
            .get(&want)
            .ok_or_else(|| Status::not_found(format!("unknown cluster {want:?}")))?;
        let (id, m) = c
            .leader_member()
            .ok_or_else(|| Status::unavailable(format!("no leader known for cluster {want}")))?;
        Ok(Response::new(Node {
            node_id: id.clone(),
            grpc_address: m.grpc_address.clone(),
            raft_address: m.raft_address.clone(),
            cluster_id: c.id.clone(),
        }))
    }

    async fn initiate_data_relocation(
        &self,
        request: Request<Cluster>,
    ) -> Result<Response<AdminResponse>, Status> {
        let cluster = request.into_inner();
        self.shared
            .registry
            .update(|s| {
                let c = s.clusters.get_mut(&cluster.cluster_id).ok_or_else(|| {
                    Status::not_found(format!("unknown cluster {:?}", cluster.cluster_id))
                })?;
                if !c.ready {
                    tracing::info!(cluster = %c.id, "cluster ready to serve");
                }
                c.ready = true;
                Ok::<(), Status>(())
            })
            .map_err(persist_status)??;
        // Put the cluster on the ring now; the mover moves its keys.
        crate::relocation::plan(
            &self.shared.registry,
            &self.shared.router,
            &self.shared.gate,
        )
        .await
        .map_err(persist_status)?;
        self.shared.wake.notify_one();
        Ok(ok())
    }
}
