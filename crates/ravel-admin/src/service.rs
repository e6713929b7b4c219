//! `RavelClusterAdminPB.RavelClusterAdmin`: the admin side of registration,
//! leadership reports and departures (wire-protocol.md §2). The policy is
//! `RegistryState`'s; this file translates between it and gRPC.

use std::sync::Arc;

use ravel_proto::admin::ravel_cluster_admin_server::RavelClusterAdmin;
use ravel_proto::admin::{Cluster, Node, Response as AdminResponse};
use tonic::{Request, Response, Status};

use crate::departure::Departure;
use crate::registration::RegisterError;
use crate::registry::{ClusterInfo, Member, RegistryError};
use crate::state::AdminState;

#[derive(Clone)]
pub struct AdminService {
    admin: Arc<AdminState>,
}

impl AdminService {
    pub fn new(admin: Arc<AdminState>) -> Self {
        Self { admin }
    }
}

pub(crate) fn persist_status(e: RegistryError) -> Status {
    Status::internal(format!("could not persist the admin state: {e}"))
}

fn register_status(e: RegisterError) -> Status {
    match e {
        RegisterError::NoCluster => Status::failed_precondition(e.to_string()),
        RegisterError::UnknownCluster(_) => Status::not_found(e.to_string()),
    }
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
            .admin
            .registry
            .update(|s| s.register_replica(&node.node_id, member).map(cluster_reply))
            .await
            .map_err(persist_status)?
            .map_err(register_status)?;
        Ok(Response::new(reply))
    }

    async fn join_as_cluster_leader(
        &self,
        request: Request<Node>,
    ) -> Result<Response<Cluster>, Status> {
        let node = request.into_inner();
        let member = validate(&node)?;
        let reply = self
            .admin
            .registry
            .update(|s| cluster_reply(s.found_cluster(&node.node_id, member)))
            .await
            .map_err(persist_status)?;
        Ok(Response::new(reply))
    }

    async fn update_cluster_leader(
        &self,
        request: Request<Node>,
    ) -> Result<Response<AdminResponse>, Status> {
        let term = match request.metadata().get(ravel_proto::metadata::TERM) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or_else(|| {
                        Status::invalid_argument("x-ravel-term must be a decimal term")
                    })?,
            ),
        };
        let node = request.into_inner();
        let member = validate(&node)?;
        self.admin
            .registry
            .update(|s| s.record_leader(&node.cluster_id, &node.node_id, member, term))
            .await
            .map_err(persist_status)?
            .map_err(register_status)?;
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
        match self.admin.depart(&node.node_id).await? {
            // Not registered (any more): leaving is idempotent.
            Departure::Unknown | Departure::Removed { .. } => Ok(ok()),
            Departure::NeedVoters { cluster } => Err(Status::internal(format!(
                "no departure decision for {cluster} with its voters known"
            ))),
            Departure::OnlyCluster { cluster } => Err(Status::failed_precondition(format!(
                "{cluster} is the only cluster serving keys; its last replica cannot leave without losing them"
            ))),
            Departure::Draining { cluster } => {
                // The cluster's keys must live elsewhere before its last
                // replica (and with it the data) goes away.
                self.admin.wake.notify_one();
                Err(Status::unavailable(format!(
                    "cluster {cluster} is moving its keys to the other clusters; call LeaveCluster again"
                )))
            }
        }
    }

    async fn get_cluster_leader(
        &self,
        request: Request<Cluster>,
    ) -> Result<Response<Node>, Status> {
        let want = request.into_inner().cluster_id;
        let state = self.admin.registry.snapshot();
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
        self.admin
            .registry
            .update(|s| s.mark_ready(&cluster.cluster_id))
            .await
            .map_err(persist_status)?
            .map_err(register_status)?;
        // Put the cluster on the ring now; the mover moves its keys.
        crate::relocation::plan(&self.admin)
            .await
            .map_err(persist_status)?;
        self.admin.wake.notify_one();
        Ok(ok())
    }
}
