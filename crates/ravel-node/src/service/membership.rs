//! `Join` and `Leave`: changing the Raft group's membership on the leader
//! (a follower forwards). A join adds the node as a learner, waits until it
//! has caught up, then promotes it to voter; a voter joining again gets
//! `UNKNOWN "node already exists"`, as existing nodes expect. Leaving is
//! idempotent.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, ServerState};
use ravel_consensus::types::NodeId;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_proto::node::{Node, Void};
use ravel_proto::NODE_ALREADY_EXISTS;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::leadership::{is_forwarded, Forward, Leadership, Tags};
use super::status::{membership_in_progress, membership_status, set_leader};
use super::NodeState;

pub(super) async fn join(s: &NodeState, request: Request<Node>) -> Result<Response<Void>, Status> {
    let forwarded = is_forwarded(&request);
    let node = request.into_inner();
    let id = parse_node_id(&node)?;
    if node.grpc_address.is_empty() {
        return Err(Status::invalid_argument("grpc_address must not be empty"));
    }
    let deadline = Instant::now() + s.join_timeout;
    let addr = node.grpc_address.clone();
    membership_call(
        s,
        forwarded,
        node,
        deadline,
        || join_local(s, id, addr.clone(), deadline),
        |mut c, r| async move { c.join(r).await },
    )
    .await
}

pub(super) async fn leave(s: &NodeState, request: Request<Node>) -> Result<Response<Void>, Status> {
    let forwarded = is_forwarded(&request);
    let node = request.into_inner();
    let id = parse_node_id(&node)?;
    let deadline = Instant::now() + s.join_timeout;
    membership_call(
        s,
        forwarded,
        node,
        deadline,
        || leave_local(s, id, deadline),
        |mut c, r| async move { c.leave(r).await },
    )
    .await
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

/// Runs `local` on the leader, or forwards the request to it (again to a
/// new leader if the one it went to is replaced meanwhile).
async fn membership_call<L, LFut, F, Fut>(
    s: &NodeState,
    forwarded: bool,
    node: Node,
    deadline: Instant,
    local: L,
    forward: F,
) -> Result<Response<Void>, Status>
where
    L: Fn() -> LFut,
    LFut: std::future::Future<Output = Result<(), Status>>,
    F: Fn(RavelNodeClient<Channel>, Request<Node>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Void>, Status>>,
{
    loop {
        match s.await_leader(deadline).await? {
            Leadership::Local => {
                local().await?;
                let mut resp = Response::new(Void {});
                set_leader(&mut resp, &s.advertised);
                return Ok(resp);
            }
            l @ Leadership::Remote { .. } if forwarded => return Err(s.not_leader(&l)),
            Leadership::Remote { id, addr } => {
                match s
                    .forward(id, &addr, node.clone(), Tags::default(), deadline, &forward)
                    .await
                {
                    Ok(r) => return Ok(r),
                    Err(Forward::LeaderChanged) => continue,
                    Err(Forward::Failed(st)) => return Err(st),
                }
            }
            Leadership::Unknown => unreachable!("await_leader returns a known leader"),
        }
    }
}

/// Runs a membership change, waiting out a change already in progress, on
/// a task of its own: a caller that gives up (its deadline, a cancelled
/// RPC) cannot stop it between its joint and its final step, which would
/// leave the group in joint configuration. The caller waits until
/// `deadline`; [`finish_joint_changes`] completes whatever a crashed leader
/// left half done.
async fn change_membership(
    s: &NodeState,
    change: ChangeMembers<NodeId, BasicNode>,
    deadline: Instant,
) -> Result<(), Status> {
    let raft = s.raft.clone();
    let lock = s.membership_lock.clone();
    let me = s.id;
    let task = tokio::spawn(async move {
        // One change at a time on this node, both steps: openraft 0.9
        // panicked ("Only leader is allowed to call
        // update_effective_membership()") when a second change reached a
        // leader that the first one was removing (two replicas, the leader
        // among them, leaving at once; 1 run in 6 of
        // membership::concurrent_and_half_failed_kills...). Serialised, the
        // second finds this node no longer leading and is sent to the new
        // leader.
        // The lock is taken per attempt, not across the retries: a change
        // refused as "in progress" (a joint configuration a crashed leader
        // left) must let `finish_joint_changes` in to finish it.
        loop {
            let attempt = {
                let _one_at_a_time = lock.lock().await;
                // A leader that a change just removed from the voters still
                // leads until that change commits; openraft asserts when it
                // is handed another change in that window. Only a leader
                // that is a voter proposes; otherwise the caller retries
                // with the new leader.
                let leads_as_voter = {
                    let m = raft.metrics().borrow().clone();
                    m.state == ServerState::Leader
                        && m.membership_config
                            .membership()
                            .voter_ids()
                            .any(|v| v == me)
                };
                if !leads_as_voter {
                    return Err(Status::unavailable(
                        "this node is leaving the voters (or no longer leads); ask the new leader",
                    ));
                }
                raft.change_membership(change.clone(), false).await
            };
            match attempt {
                Ok(_) => return Ok(()),
                Err(e) if membership_in_progress(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(membership_status(e)),
            }
        }
    });
    match tokio::time::timeout_at(deadline, task).await {
        Err(_) => Err(Status::deadline_exceeded(
            "the membership change did not commit in time; it goes on, call again to see it done",
        )),
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(Status::internal(format!("membership change task: {e}"))),
    }
}

/// Held for the whole of a membership change (both steps) on this node.
pub type MembershipLock = std::sync::Arc<tokio::sync::Mutex<()>>;

/// How long a committed joint configuration may stand before the leader
/// finishes it itself: a live proposer proposes the final step right after
/// the joint one commits, and must not be raced.
const JOINT_GRACE: Duration = Duration::from_secs(1);

/// On the leader, finishes a membership change left in joint configuration
/// (its proposer crashed, lost leadership or was cancelled between the two
/// steps): once the same joint configuration has stood committed for
/// [`JOINT_GRACE`], replaces it with its final half. Runs until `shutdown`.
pub async fn finish_joint_changes(
    raft: ravel_consensus::Raft,
    id: NodeId,
    lock: MembershipLock,
    shutdown: CancellationToken,
) {
    let stalled = |m: &ravel_consensus::types::RaftMetrics| {
        let joint = m.membership_config.membership().get_joint_config();
        let log_id = m.membership_config.log_id().map(|l| l.index);
        let committed = log_id.is_some() && log_id <= m.last_applied.map(|l| l.index);
        (m.state == ServerState::Leader
            && m.current_leader == Some(id)
            && joint.len() > 1
            && committed)
            .then(|| (log_id, joint.last().cloned().unwrap_or_default()))
    };
    // Woken by changes of the server metrics (leadership, membership), not
    // by every write; while the membership is joint, by the data metrics
    // too (its commit shows there). The full metrics are sent last in each
    // report, so a change seen on either watch is re-checked at the next.
    let mut server = raft.server_metrics();
    let mut data = raft.data_metrics();
    loop {
        let seen = stalled(&raft.metrics().borrow());
        if let Some((log_id, voters)) = seen {
            tokio::select! {
                _ = tokio::time::sleep(JOINT_GRACE) => {}
                _ = shutdown.cancelled() => return,
            }
            let _one_at_a_time = lock.lock().await;
            // Still the same joint configuration: nobody is finishing it.
            if stalled(&raft.metrics().borrow()).is_some_and(|(l, _)| l == log_id) {
                tracing::warn!(
                    ?voters,
                    "finishing a membership change left in joint configuration"
                );
                let change = raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), false);
                match tokio::time::timeout(Duration::from_secs(10), change).await {
                    Ok(Ok(_)) => tracing::info!("joint configuration finished"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "finishing the joint configuration"),
                    Err(_) => tracing::warn!("finishing the joint configuration timed out"),
                }
            }
            continue;
        }
        let joint = server
            .borrow_and_update()
            .membership_config
            .membership()
            .get_joint_config()
            .len()
            > 1;
        data.borrow_and_update();
        tokio::select! {
            r = server.changed() => if r.is_err() { return },
            r = data.changed(), if joint => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn join_local(
    s: &NodeState,
    id: NodeId,
    addr: String,
    deadline: Instant,
) -> Result<(), Status> {
    let m = s.raft.metrics().borrow().membership_config.clone();
    if m.membership().voter_ids().any(|v| v == id) {
        return Err(Status::unknown(NODE_ALREADY_EXISTS));
    }
    tracing::info!(node = id, %addr, "join: adding learner and waiting for it to catch up");
    let node = BasicNode { addr };
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, s.raft.add_learner(id, node, true)).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(
                "the new replica did not catch up within the join timeout; join again to continue",
            ))
        }
        Ok(Err(e)) => return Err(membership_status(e)),
        Ok(Ok(_)) => {}
    }
    tracing::info!(node = id, "join: learner caught up, promoting to voter");
    change_membership(
        s,
        ChangeMembers::AddVoterIds(BTreeSet::from([id])),
        deadline,
    )
    .await
}

async fn leave_local(s: &NodeState, id: NodeId, deadline: Instant) -> Result<(), Status> {
    let m = s.raft.metrics().borrow().membership_config.clone();
    let membership = m.membership();
    if membership.get_node(&id).is_none() {
        return Ok(()); // already gone: leaving is idempotent
    }
    if !membership.voter_ids().any(|v| v == id) {
        tracing::info!(node = id, "leave: removing learner");
        return change_membership(
            s,
            ChangeMembers::RemoveNodes(BTreeSet::from([id])),
            deadline,
        )
        .await;
    }
    if membership.voter_ids().count() == 1 {
        // The last replica: the group cannot shrink to nothing. The
        // cluster is being decommissioned; the admin moves its keys away
        // (LeaveCluster) before the replica's data is deleted.
        tracing::info!(
            node = id,
            "leave: last replica of the cluster; membership unchanged"
        );
        return Ok(());
    }
    tracing::info!(node = id, "leave: removing voter");
    change_membership(
        s,
        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
        deadline,
    )
    .await
}
