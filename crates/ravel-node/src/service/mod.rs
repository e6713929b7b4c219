//! The node's gRPC services, all on one server: `RavelClusterPB.RavelNode`
//! (the compatibility contract: `Run`, `Join`, `Leave`, `IsLeader`),
//! `ravel.node.v1` (status, partition listing, conditional writes) and the
//! internal Raft service.
//!
//! - [`leadership`]: who leads, confirming it with a quorum, forwarding;
//! - [`run`]: `Run`: validation, reads, writes through the batcher;
//! - [`membership`]: `Join` and `Leave`;
//! - [`ext`]: the `ravel.node.v1` extension;
//! - [`status`]: the one mapping from internal errors to gRPC statuses.
//!
//! A follower forwards `Run`, `Join` and `Leave` to the leader within the
//! request's deadline; the leader's address comes back in the
//! `x-ravel-leader` response metadata. A forwarded request is never
//! forwarded again: a node that is not the leader either serves it or says
//! who it thinks leads.

mod ext;
mod leadership;
mod membership;

pub use membership::{finish_joint_changes, MembershipLock};
mod run;
mod status;

use std::sync::Arc;
use std::time::Duration;

use ravel_consensus::types::{NodeId, Raft};
use ravel_consensus::{CommandResult, Engine};
use ravel_proto::ext::ravel_node_ext_server::RavelNodeExtServer;
use ravel_proto::node::ravel_node_server::{RavelNode, RavelNodeServer};
use ravel_proto::node::{Boolean, Node, Response as RunResponse, Void};
use ravel_transport::session::{ClientSession, RequestId, Ticket};
use ravel_transport::{ChannelPool, Faults};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::batcher::{WriteBatcher, WriteError};
use crate::config::{Limits, NodeConfig};
use crate::contact::QuorumContact;
use crate::raft::RaftService;

/// What the services of one node share. Built once by `Node::start`, held
/// in an `Arc` by every service clone (one per connection).
pub struct NodeState {
    /// This replica's Raft id.
    pub id: NodeId,
    pub cluster_id: String,
    /// The gRPC address peers and the admin reach this node at (named in
    /// `x-ravel-leader` when this node serves).
    pub advertised: String,
    /// Handle to the Raft core, shared with `Node`.
    pub raft: Raft,
    /// The database, for local reads after leadership is confirmed.
    pub engine: Engine,
    /// Gathers concurrent writes into Raft entries (one task per node).
    pub batcher: WriteBatcher,
    /// Leadership confirmations (read index) shared by concurrent reads.
    pub read_index: crate::read_index::ReadIndex,
    /// Whether this node, as leader, is in touch with a majority.
    pub contact: QuorumContact,
    /// Whether this node, as follower, still hears from a leader.
    pub leader_contact: crate::contact::LeaderContact,
    /// Channels to peers, for forwarding; shared with the Raft network.
    pub pool: ChannelPool,
    /// Test-only fault injection on forwarded calls.
    pub faults: Faults,
    /// This node's client session: the identity of writes that arrive
    /// without one (from clients that send no `x-ravel-request`), so the
    /// node's own retries and forwards take effect once.
    pub session: ClientSession,
    pub limits: Limits,
    /// Longest a `Join` waits for the new replica to catch up.
    pub join_timeout: Duration,
    /// Request, proposal and Raft metrics.
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// One membership change at a time (shared with the task that
    /// finishes joint configurations).
    pub membership_lock: MembershipLock,
}

impl NodeState {
    /// Refuses every request once Raft has stopped on its own (a storage
    /// failure): the process is about to exit and must not serve meanwhile,
    /// not even by forwarding.
    fn check_running(&self) -> Result<(), Status> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) => Ok(()),
            Err(e) => Err(Status::unavailable(format!("this replica stopped: {e}"))),
        }
    }

    /// The deadline of a request that arrives now.
    fn deadline(&self) -> Instant {
        Instant::now() + self.limits.request_timeout()
    }

    /// Replicates `cmd` as request `id` through the batcher and returns
    /// its result once applied on this leader, or an error by `deadline`.
    /// However often a request is replicated (retries, forwards through
    /// several leaders), it takes effect once. A write routed by ring
    /// generation `epoch` is refused if the cluster is fenced above it.
    async fn replicate(
        &self,
        id: RequestId,
        epoch: Option<u64>,
        cmd: ravel_consensus::Command,
        deadline: Instant,
    ) -> Result<CommandResult, WriteError> {
        let cmd = match epoch {
            Some(epoch) => ravel_consensus::Command::Fenced {
                epoch,
                cmd: Box::new(cmd),
            },
            None => cmd,
        };
        let once = ravel_consensus::Command::Once {
            id: ravel_consensus::RequestId {
                session: id.session,
                seq: id.seq,
                acked_below: id.acked_below,
            },
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            cmd: Box::new(cmd),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.batcher.submit(once)).await {
            Err(_) => Err(WriteError::Timeout),
            Ok(Ok(CommandResult::Stale)) => Err(WriteError::Stale),
            Ok(Ok(CommandResult::Fenced { fence })) => Err(WriteError::Fenced {
                epoch: epoch.unwrap_or(0),
                fence,
            }),
            Ok(r) => r,
        }
    }

    /// The ring generation a write was routed by (`x-ravel-ring-epoch`).
    fn ring_epoch<T>(&self, request: &Request<T>) -> Result<Option<u64>, Status> {
        ravel_proto::metadata::ring_epoch(request.metadata()).map_err(Status::invalid_argument)
    }

    /// The identity of a write request: the client's (`x-ravel-request`),
    /// or one of this node's session, whose ticket the caller holds until it
    /// answers.
    fn request_id<T>(&self, request: &Request<T>) -> Result<(RequestId, Option<Ticket>), Status> {
        match RequestId::from_metadata(request.metadata()) {
            Err(e) => Err(Status::invalid_argument(e)),
            Ok(Some(id)) => Ok((id, None)),
            Ok(None) => {
                let ticket = self.session.begin();
                Ok((ticket.id(), Some(ticket)))
            }
        }
    }
}

/// One clone per connection; all share the node's state.
#[derive(Clone)]
pub struct NodeService {
    state: Arc<NodeState>,
}

#[tonic::async_trait]
impl RavelNode for NodeService {
    async fn join(&self, request: Request<Node>) -> Result<Response<Void>, Status> {
        self.state.check_running()?;
        membership::join(&self.state, request).await
    }

    async fn leave(&self, request: Request<Node>) -> Result<Response<Void>, Status> {
        self.state.check_running()?;
        membership::leave(&self.state, request).await
    }

    async fn run(
        &self,
        request: Request<ravel_proto::node::Command>,
    ) -> Result<Response<RunResponse>, Status> {
        self.state.check_running()?;
        run::run(&self.state, request).await
    }

    async fn is_leader(&self, _request: Request<Void>) -> Result<Response<Boolean>, Status> {
        let s = &self.state;
        // Confirmed with a quorum: a partitioned old leader must not claim
        // leadership.
        let leader = s.confirm_leadership(s.deadline()).await.is_ok();
        Ok(Response::new(Boolean { leader }))
    }
}

/// Limits of the gRPC server. There is no server-wide deadline: every
/// handler bounds itself (requests by `limits.request_timeout_ms` or the
/// caller's shorter `grpc-timeout`, membership by `raft.join_timeout_ms`,
/// snapshot streams per chunk and, on the sender, by a deadline that grows
/// with the snapshot's size), so one cap cannot cut a large snapshot short.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Requests served at once per connection.
    pub max_in_flight: usize,
    /// Largest `RavelNode` request decoded; larger ones get
    /// RESOURCE_EXHAUSTED (the admin answers 413).
    pub max_request_bytes: usize,
    /// The same for `RavelNodeExt`, whose move batches are larger.
    pub max_ext_request_bytes: usize,
}

impl ServerLimits {
    pub fn from_config(cfg: &NodeConfig) -> Self {
        Self {
            max_in_flight: cfg.limits.max_in_flight_requests,
            max_request_bytes: ravel_proto::limits::max_request_bytes(
                cfg.limits.max_key_bytes,
                cfg.limits.max_value_bytes,
            ),
            max_ext_request_bytes: ravel_proto::limits::max_ext_request_bytes(
                cfg.limits.max_key_bytes,
                cfg.limits.max_value_bytes,
            ),
        }
    }
}

/// Serves the node's services and the Raft service on `listener` until
/// `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: Arc<NodeState>,
    raft_service: RaftService,
    limits: ServerLimits,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: CancellationToken,
) {
    let service = NodeService { state };
    // Answers may carry the largest value a peer may be configured for.
    let max_answer = ravel_proto::limits::MAX_MESSAGE_BYTES;
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(crate::metrics::report_health(
        service.state.raft.clone(),
        service.state.id,
        reporter,
    ));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = match server.tls_config(tls) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS for the gRPC server");
                return;
            }
        };
    }
    let router = server
        .concurrency_limit_per_connection(limits.max_in_flight)
        .tcp_nodelay(true)
        .add_service(health)
        .add_service(ravel_proto::reflection_service())
        .add_service(raft_service.into_server())
        .add_service(
            RavelNodeServer::new(service.clone())
                .max_decoding_message_size(limits.max_request_bytes)
                .max_encoding_message_size(max_answer),
        )
        .add_service(
            RavelNodeExtServer::new(service)
                .max_decoding_message_size(limits.max_ext_request_bytes)
                .max_encoding_message_size(max_answer),
        );
    // tonic's own nodelay setting does not reach connections accepted from
    // an incoming stream: without it every answer waits on a delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    if let Err(e) = router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "gRPC server failed");
    }
}
