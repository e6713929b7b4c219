//! The node's gRPC services: `RavelClusterPB.RavelNode` (the compatibility
//! contract: `Run`, `Join`, `Leave`, `IsLeader`) and `ravel.node.v1`.
//!
//! A follower forwards `Run`, `Join` and `Leave` to the leader within the
//! request's deadline; the leader's address comes back in the
//! `x-ravel-leader` response metadata. A forwarded request is never
//! forwarded again: a node that is not the leader either serves it or says
//! who it thinks leads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use ravel_consensus::types::{NodeId, Raft};
use ravel_consensus::{Command, CommandResult, Engine};
use ravel_proto::ext::ravel_node_ext_server::RavelNodeExt;
use ravel_proto::ext::{
    Applied, KeyValue, ListPartitionsRequest, ListPartitionsResponse, StatusRequest, StatusResponse,
};
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::ravel_node_server::RavelNode;
use ravel_proto::node::{Boolean, Node, Response as RunResponse, Void};
use ravel_proto::{ops, NODE_ALREADY_EXISTS};
use ravel_transport::{ChannelPool, Faults, TransportError};
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::batcher::{WriteBatcher, WriteError};
use crate::config::Limits;

/// Metadata key naming the leader that served (or would serve) a request.
pub const LEADER_METADATA: &str = "x-ravel-leader";
/// Metadata key marking a request forwarded by a follower.
const FORWARDED_METADATA: &str = "x-ravel-forwarded";

/// State shared by the services of one node.
pub struct NodeState {
    pub id: NodeId,
    pub cluster_id: String,
    pub advertised: String,
    pub raft: Raft,
    /// Local reads after `ensure_linearizable`.
    pub engine: Engine,
    pub batcher: WriteBatcher,
    pub pool: ChannelPool,
    pub faults: Faults,
    pub limits: Limits,
    pub join_timeout: Duration,
}

#[derive(Clone)]
pub struct NodeService {
    state: Arc<NodeState>,
}

impl NodeService {
    pub fn new(state: Arc<NodeState>) -> Self {
        Self { state }
    }
}

/// Who leads, as this node sees it now.
enum Leadership {
    Local,
    Remote { id: NodeId, addr: String },
    Unknown,
}

/// A validated `Run` request.
enum Op {
    Get(Vec<u8>),
    Write(Command),
}

impl NodeState {
    fn leadership(&self) -> Leadership {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(id) if id == self.id && m.state == ServerState::Leader => Leadership::Local,
            Some(id) if id != self.id => match m.membership_config.membership().get_node(&id) {
                Some(node) => Leadership::Remote {
                    id,
                    addr: node.addr.clone(),
                },
                None => Leadership::Unknown,
            },
            _ => Leadership::Unknown,
        }
    }

    /// Waits (until `deadline`) for some node to be known as leader.
    async fn await_leader(&self, deadline: Instant) -> Result<Leadership, Status> {
        loop {
            match self.leadership() {
                Leadership::Unknown => {}
                known => return Ok(known),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Status::unavailable(
                    "no leader elected within the request deadline",
                ));
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = self
                .raft
                .wait(Some(wait))
                .metrics(|m| m.current_leader.is_some(), "leader known")
                .await;
        }
    }

    fn validate(&self, cmd: &ravel_proto::node::Command) -> Result<Op, Status> {
        // Only `set` carries a value; the others ignore the field.
        let value: &[u8] = if cmd.operation == ops::SET {
            &cmd.value
        } else {
            &[]
        };
        self.check_sizes(&cmd.key, value)?;
        let key = cmd.key.clone();
        Ok(match cmd.operation.as_str() {
            ops::GET => Op::Get(key),
            ops::DELETE => Op::Write(Command::Delete { key }),
            ops::GET_AND_DELETE => Op::Write(Command::GetAndDelete { key }),
            ops::SET => Op::Write(Command::Set {
                key,
                value: cmd.value.clone(),
            }),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown operation {other:?}; expected one of set, get, delete, getAndDelete"
                )))
            }
        })
    }

    fn client(&self, addr: &str) -> Result<RavelNodeClient<tonic::transport::Channel>, Status> {
        Ok(RavelNodeClient::new(
            self.pool.channel(addr).map_err(transport_status)?,
        ))
    }

    /// Sends a request to the leader on behalf of a client.
    async fn forward<Req, Resp, F, Fut>(
        &self,
        leader: NodeId,
        addr: &str,
        body: Req,
        deadline: Instant,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(RavelNodeClient<tonic::transport::Channel>, Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        self.faults
            .check(self.id, leader)
            .await
            .map_err(transport_status)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut req = Request::new(body);
        req.set_timeout(remaining);
        req.metadata_mut()
            .insert(FORWARDED_METADATA, MetadataValue::from_static("1"));
        let client = self.client(addr)?;
        let mut resp = match tokio::time::timeout(remaining, call(client, req)).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "leader {addr} did not answer the forwarded request in time"
                )))
            }
            Ok(r) => r?,
        };
        if !resp.metadata().contains_key(LEADER_METADATA) {
            set_leader(&mut resp, addr);
        }
        Ok(resp)
    }

    fn not_leader(&self, leader: &Leadership) -> Status {
        match leader {
            Leadership::Remote { addr, .. } => {
                let mut s = Status::unavailable(format!("not the leader; the leader is {addr}"));
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(LEADER_METADATA, v);
                }
                s
            }
            _ => Status::unavailable("not the leader, and no leader is known"),
        }
    }

    async fn run_local(&self, op: Op, deadline: Instant) -> Result<RunResponse, LocalError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match op {
            Op::Get(key) => {
                match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
                    Err(_) => Err(LocalError::Status(Status::unavailable(
                        "could not confirm leadership with a quorum within the request deadline",
                    ))),
                    Ok(Err(RaftError::APIError(_))) => Err(LocalError::NotLeader),
                    Ok(Err(e)) => Err(LocalError::Status(Status::unavailable(e.to_string()))),
                    Ok(Ok(_)) => match self.engine.get(&key) {
                        Ok(Some(value)) => Ok(ok_response(value)),
                        Ok(None) => Err(LocalError::Status(Status::not_found("key not found"))),
                        Err(e) => Err(LocalError::Status(Status::internal(e.to_string()))),
                    },
                }
            }
            Op::Write(cmd) => {
                let retry_safe = !matches!(cmd, Command::GetAndDelete { .. });
                match tokio::time::timeout(remaining, self.batcher.submit(cmd)).await {
                    Err(_) => Err(LocalError::Status(Status::deadline_exceeded(
                        "write not committed within the request deadline; it may still be applied",
                    ))),
                    Ok(Ok(CommandResult::Value(Some(v)))) => Ok(ok_response(v)),
                    Ok(Ok(CommandResult::Value(None))) => Err(LocalError::Status(Status::not_found("key not found"))),
                    Ok(Ok(_)) => Ok(ok_response(Vec::new())),
                    Ok(Err(WriteError::NotLeader { .. })) if retry_safe => Err(LocalError::NotLeader),
                    Ok(Err(e @ WriteError::NotLeader { .. })) => Err(LocalError::Status(Status::unavailable(format!(
                        "{e}: leadership changed while the request was in flight; it may or may not have been applied"
                    )))),
                    Ok(Err(e)) => Err(LocalError::Status(Status::unavailable(e.to_string()))),
                }
            }
        }
    }
}

enum LocalError {
    /// Leadership moved before the request took effect: safe to forward.
    NotLeader,
    Status(Status),
}

fn ok_response(data: Vec<u8>) -> RunResponse {
    RunResponse {
        msg: "ok".into(),
        data,
    }
}

fn set_leader<T>(resp: &mut Response<T>, addr: &str) {
    if let Ok(v) = addr.parse() {
        resp.metadata_mut().insert(LEADER_METADATA, v);
    }
}

/// The one mapping from transport failures to gRPC statuses.
pub fn transport_status(e: TransportError) -> Status {
    match e {
        TransportError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        TransportError::Status { code, message, .. } => Status::new(code, message),
        TransportError::InvalidAddress { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

fn parse_node_id(node: &Node) -> Result<NodeId, Status> {
    match node.node_id.parse::<NodeId>() {
        Ok(id) if id != 0 => Ok(id),
        _ => Err(Status::invalid_argument(format!(
            "node_id {:?} is not a non-zero decimal u64",
            node.node_id
        ))),
    }
}

fn membership_status(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable("leadership changed")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Status::failed_precondition(c.to_string())
        }
        e => Status::unavailable(e.to_string()),
    }
}

fn in_progress(e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> bool {
    matches!(
        e,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_)
        ))
    )
}

impl NodeState {
    /// Join and Leave: run `local` on the leader, or forward to it.
    async fn membership_call<L, F, Fut>(
        &self,
        forwarded: bool,
        node: Node,
        deadline: Instant,
        local: L,
        forward: F,
    ) -> Result<Response<Void>, Status>
    where
        L: std::future::Future<Output = Result<(), Status>>,
        F: FnOnce(RavelNodeClient<tonic::transport::Channel>, Request<Node>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Void>, Status>>,
    {
        match self.await_leader(deadline).await? {
            Leadership::Local => {
                local.await?;
                let mut resp = Response::new(Void {});
                set_leader(&mut resp, &self.advertised);
                Ok(resp)
            }
            l @ Leadership::Remote { .. } if forwarded => Err(self.not_leader(&l)),
            Leadership::Remote { id, addr } => {
                self.forward(id, &addr, node, deadline, forward).await
            }
            Leadership::Unknown => unreachable!("await_leader returns a known leader"),
        }
    }

    /// Runs a membership change, waiting out a change already in progress.
    async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
        deadline: Instant,
    ) -> Result<(), Status> {
        loop {
            match self.raft.change_membership(change.clone(), false).await {
                Ok(_) => return Ok(()),
                Err(e) if in_progress(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(membership_status(e)),
            }
        }
    }

    async fn join_local(&self, id: NodeId, addr: String, deadline: Instant) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        if m.membership().voter_ids().any(|v| v == id) {
            return Err(Status::unknown(NODE_ALREADY_EXISTS));
        }
        tracing::info!(node = id, %addr, "join: adding learner and waiting for it to catch up");
        let node = BasicNode { addr };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.raft.add_learner(id, node, true)).await {
            Err(_) => return Err(Status::deadline_exceeded(
                "the new replica did not catch up within the join timeout; join again to continue",
            )),
            Ok(Err(e)) => return Err(membership_status(e)),
            Ok(Ok(_)) => {}
        }
        tracing::info!(node = id, "join: learner caught up, promoting to voter");
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), deadline)
            .await
    }

    async fn leave_local(&self, id: NodeId, deadline: Instant) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        if membership.get_node(&id).is_none() {
            return Ok(()); // already gone: leaving is idempotent
        }
        if is_voter {
            if membership.voter_ids().count() == 1 {
                // The last replica: the group cannot shrink to nothing. The
                // cluster is being decommissioned; the admin moves its keys
                // away (LeaveCluster) before the replica's data is deleted.
                tracing::info!(
                    node = id,
                    "leave: last replica of the cluster; membership unchanged"
                );
                return Ok(());
            }
            tracing::info!(node = id, "leave: removing voter");
            self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), deadline)
                .await
        } else {
            tracing::info!(node = id, "leave: removing learner");
            self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), deadline)
                .await
        }
    }
}

#[tonic::async_trait]
impl RavelNode for NodeService {
    async fn join(&self, request: Request<Node>) -> Result<Response<Void>, Status> {
        let s = &self.state;
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        let node = request.into_inner();
        let id = parse_node_id(&node)?;
        if node.grpc_address.is_empty() {
            return Err(Status::invalid_argument("grpc_address must not be empty"));
        }
        let deadline = Instant::now() + s.join_timeout;
        let addr = node.grpc_address.clone();
        s.membership_call(
            forwarded,
            node,
            deadline,
            s.join_local(id, addr, deadline),
            |mut c, r| async move { c.join(r).await },
        )
        .await
    }

    async fn leave(&self, request: Request<Node>) -> Result<Response<Void>, Status> {
        let s = &self.state;
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        let node = request.into_inner();
        let id = parse_node_id(&node)?;
        let deadline = Instant::now() + s.join_timeout;
        s.membership_call(
            forwarded,
            node,
            deadline,
            s.leave_local(id, deadline),
            |mut c, r| async move { c.leave(r).await },
        )
        .await
    }

    async fn run(
        &self,
        request: Request<ravel_proto::node::Command>,
    ) -> Result<Response<RunResponse>, Status> {
        let s = &self.state;
        let forwarded = request.metadata().contains_key(FORWARDED_METADATA);
        let deadline = Instant::now() + s.limits.request_timeout();
        let cmd = request.into_inner();
        let op = s.validate(&cmd)?;
        let span = tracing::debug_span!("run", op = %cmd.operation, key_len = cmd.key.len());
        let _enter = span.enter();
        let mut op = Some(op);
        loop {
            match s.await_leader(deadline).await? {
                Leadership::Local => match s.run_local(op.take().expect("op"), deadline).await {
                    Ok(r) => {
                        let mut resp = Response::new(r);
                        set_leader(&mut resp, &s.advertised);
                        return Ok(resp);
                    }
                    Err(LocalError::Status(st)) => return Err(st),
                    Err(LocalError::NotLeader) => {
                        // Lost leadership before the request took effect:
                        // find the new leader and go again.
                        op = Some(s.validate(&cmd)?);
                        if Instant::now() >= deadline {
                            return Err(Status::unavailable(
                                "leadership changed and no new leader in time",
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                l @ Leadership::Remote { .. } if forwarded => return Err(s.not_leader(&l)),
                Leadership::Remote { id, addr } => {
                    return s
                        .forward(id, &addr, cmd, deadline, |mut c, r| async move {
                            c.run(r).await
                        })
                        .await
                }
                Leadership::Unknown => unreachable!("await_leader returns a known leader"),
            }
        }
    }

    async fn is_leader(&self, _request: Request<Void>) -> Result<Response<Boolean>, Status> {
        let s = &self.state;
        let leader = match s.leadership() {
            Leadership::Local => {
                // Confirm with a quorum: a partitioned old leader must not
                // claim leadership.
                matches!(
                    tokio::time::timeout(Duration::from_secs(1), s.raft.ensure_linearizable())
                        .await,
                    Ok(Ok(_))
                )
            }
            _ => false,
        };
        Ok(Response::new(Boolean { leader }))
    }
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[tonic::async_trait]
impl RavelNodeExt for NodeService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = &self.state;
        let m = s.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let fmt = |id: NodeId| {
            let addr = membership
                .get_node(&id)
                .map(|n| n.addr.clone())
                .unwrap_or_default();
            format!("{id}={addr}")
        };
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Ok(Response::new(StatusResponse {
            node_id: s.id.to_string(),
            cluster_id: s.cluster_id.clone(),
            leader_id: m.current_leader.map(|l| l.to_string()).unwrap_or_default(),
            leader_grpc_address: leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            voters: membership.voter_ids().map(fmt).collect(),
            learners: membership.learner_ids().map(fmt).collect(),
        }))
    }

    async fn list_partitions(
        &self,
        request: Request<ListPartitionsRequest>,
    ) -> Result<Response<ListPartitionsResponse>, Status> {
        let s = &self.state;
        let req = request.into_inner();
        if req.partition_count == 0 {
            return Err(Status::invalid_argument("partition_count must be > 0"));
        }
        if let Some(p) = req.partitions.iter().find(|p| **p >= req.partition_count) {
            return Err(Status::invalid_argument(format!(
                "partition {p} >= partition_count"
            )));
        }
        s.leader_only()?;
        let deadline = Instant::now() + s.limits.request_timeout();
        match tokio::time::timeout(deadline - Instant::now(), s.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!(
                    "cannot serve a consistent listing: {e}"
                )))
            }
            Err(_) => return Err(Status::unavailable("could not confirm leadership in time")),
        }
        let wanted: std::collections::HashSet<u32> = req.partitions.iter().copied().collect();
        let limit = req.limit.clamp(1, 10_000) as usize;
        // Scan at most this many keys per call, matching or not, so one page
        // costs bounded time whatever the partitions hold.
        let scan_budget = limit.saturating_mul(64).max(4096);
        let mut start = req.after_key.clone();
        let mut skip_first = req.has_after;
        let mut entries = Vec::new();
        let mut scanned = 0usize;
        let mut last_key = req.after_key.clone();
        let mut done = false;
        while entries.len() < limit && scanned < scan_budget {
            let page = s
                .engine
                .scan(&start, 512)
                .map_err(|e| Status::internal(e.to_string()))?;
            if page.is_empty() || (skip_first && page.len() == 1 && page[0].0 == start) {
                done = true;
                break;
            }
            for (k, v) in page.iter() {
                if skip_first && *k == start {
                    continue;
                }
                scanned += 1;
                last_key = k.clone();
                if wanted.contains(&ravel_proto::partition_of(k, req.partition_count)) {
                    entries.push(KeyValue {
                        key: k.clone(),
                        value: v.clone(),
                    });
                    if entries.len() >= limit {
                        break;
                    }
                }
                if scanned >= scan_budget {
                    break;
                }
            }
            start = last_key.clone();
            skip_first = true;
        }
        Ok(Response::new(ListPartitionsResponse {
            entries,
            done,
            last_key,
        }))
    }

    async fn set_if_absent(&self, request: Request<KeyValue>) -> Result<Response<Applied>, Status> {
        let kv = request.into_inner();
        self.state
            .conditional(Command::SetIfAbsent {
                key: kv.key,
                value: kv.value,
            })
            .await
    }

    async fn delete_if_equal(
        &self,
        request: Request<KeyValue>,
    ) -> Result<Response<Applied>, Status> {
        let kv = request.into_inner();
        self.state
            .conditional(Command::DeleteIfEqual {
                key: kv.key,
                value: kv.value,
            })
            .await
    }
}

impl NodeState {
    /// The Ravel-specific RPCs are served by the leader only; callers (the
    /// admin) find the leader themselves.
    fn leader_only(&self) -> Result<(), Status> {
        match self.leadership() {
            Leadership::Local => Ok(()),
            other => Err(self.not_leader(&other)),
        }
    }

    fn check_sizes(&self, key: &[u8], value: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(Status::invalid_argument(format!(
                "key is {} bytes; the limit is {}",
                key.len(),
                self.limits.max_key_bytes
            )));
        }
        if value.len() > self.limits.max_value_bytes {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes; the limit is {}",
                value.len(),
                self.limits.max_value_bytes
            )));
        }
        Ok(())
    }

    /// `SetIfAbsent` / `DeleteIfEqual`: validated, replicated, applied.
    async fn conditional(&self, cmd: Command) -> Result<Response<Applied>, Status> {
        if let Command::SetIfAbsent { key, value } | Command::DeleteIfEqual { key, value } = &cmd {
            self.check_sizes(key, value)?;
        }
        self.leader_only()?;
        let timeout = self.limits.request_timeout();
        match tokio::time::timeout(timeout, self.batcher.submit(cmd)).await {
            Err(_) => Err(Status::deadline_exceeded(
                "not committed within the request deadline",
            )),
            Ok(Ok(CommandResult::Applied(applied))) => Ok(Response::new(Applied { applied })),
            Ok(Ok(other)) => Err(Status::internal(format!("unexpected result {other:?}"))),
            Ok(Err(e)) => Err(Status::unavailable(e.to_string())),
        }
    }
}
