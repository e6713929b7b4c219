//! `ravel.node.v1.RavelNodeExt`: what the compatibility service lacks.
//! `Status` (this replica's view of its cluster) is served by any replica;
//! partition listings, conditional writes (the mover's tools) and backup
//! streams by the leader only: callers find the leader themselves.

use ravel_consensus::types::NodeId;
use ravel_consensus::{Command, CommandResult};
use ravel_proto::ext::ravel_node_ext_server::RavelNodeExt;
use ravel_proto::ext::{
    Applied, AppliedBatch, BackupPage, BackupRequest, DeletePartitionsRequest,
    DeletePartitionsResponse, FenceRequest, FenceResponse, KeyValue, KeyValueBatch,
    ListPartitionsRequest, ListPartitionsResponse, StatusRequest, StatusResponse,
};
use ravel_proto::limits::{MOVE_BATCH_BYTES, MOVE_BATCH_ENTRIES};
use ravel_transport::session::RequestId;
use tonic::{Request, Response, Status};

use super::leadership::Unconfirmed;
use super::{NodeService, NodeState};

/// Largest page a listing returns, whatever the caller asks for.
const MAX_LIST_LIMIT: u32 = 10_000;
/// Keys and values per page of a backup stream.
const BACKUP_PAGE_BYTES: usize = 1 << 20;

type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<BackupPage, Status>>;

#[tonic::async_trait]
impl RavelNodeExt for NodeService {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        _request: Request<BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        self.state.check_running()?;
        consistent_point(&self.state, "backup").await?;
        let applied_index = (self.state.raft.metrics().borrow().last_applied)
            .map(|l| l.index)
            .unwrap_or(0);
        // Two pages in flight at most: a slow reader holds the export, not
        // memory.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let engine = self.state.engine.clone();
        tokio::task::spawn_blocking(move || {
            let sent = engine.export_data(BACKUP_PAGE_BYTES, |page| {
                let entries = page
                    .into_iter()
                    .map(|(key, value)| KeyValue { key, value })
                    .collect();
                tx.blocking_send(Ok(BackupPage {
                    entries,
                    applied_index,
                }))
                .is_ok()
            });
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(Status::internal(format!(
                    "reading the data for a backup: {e}"
                ))));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(status(&self.state)))
    }

    async fn list_partitions(
        &self,
        request: Request<ListPartitionsRequest>,
    ) -> Result<Response<ListPartitionsResponse>, Status> {
        self.state.check_running()?;
        list_partitions(&self.state, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_if_absent(&self, request: Request<KeyValue>) -> Result<Response<Applied>, Status> {
        conditional(&self.state, request, |key, value| Command::SetIfAbsent {
            key,
            value,
        })
        .await
    }

    async fn delete_if_equal(
        &self,
        request: Request<KeyValue>,
    ) -> Result<Response<Applied>, Status> {
        conditional(&self.state, request, |key, value| {
            Command::delete_if_equal(key, &value)
        })
        .await
    }

    async fn set_if_absent_batch(
        &self,
        request: Request<KeyValueBatch>,
    ) -> Result<Response<AppliedBatch>, Status> {
        conditional_batch(&self.state, request, |key, value| Command::SetIfAbsent {
            key,
            value,
        })
        .await
    }

    async fn delete_if_equal_batch(
        &self,
        request: Request<KeyValueBatch>,
    ) -> Result<Response<AppliedBatch>, Status> {
        conditional_batch(&self.state, request, |key, value| {
            Command::delete_if_equal(key, &value)
        })
        .await
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        let (id, _ticket) = self.state.request_id(&request)?;
        let epoch = request.into_inner().epoch;
        leader_write(&self.state, id, None, Command::Fence { epoch }).await?;
        Ok(Response::new(FenceResponse {}))
    }

    async fn delete_partitions(
        &self,
        request: Request<DeletePartitionsRequest>,
    ) -> Result<Response<DeletePartitionsResponse>, Status> {
        let s = &self.state;
        // An older node (the fault stands for one) lacks this call as it
        // lacks the move batches.
        if s.faults.lacks_move_batches(s.id) {
            return Err(Status::unimplemented("partition deletes (fault injected)"));
        }
        s.check_running()?;
        let (id, _ticket) = s.request_id(&request)?;
        let epoch = s.ring_epoch(&request)?;
        let req = request.into_inner();
        check_partitions(req.partition_count, &req.partitions)?;
        if req.partitions.is_empty() {
            return Ok(Response::new(DeletePartitionsResponse {}));
        }
        let cmd = Command::DeletePartitions {
            count: req.partition_count,
            partitions: req.partitions,
        };
        match leader_write(s, id, epoch, cmd).await? {
            CommandResult::Done => Ok(Response::new(DeletePartitionsResponse {})),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }
}

/// A partition count and partitions a request names: a count of at least
/// one, each partition below it, at most the count of them.
fn check_partitions(count: u32, partitions: &[u32]) -> Result<(), Status> {
    if count == 0 {
        return Err(Status::invalid_argument("partition_count must be > 0"));
    }
    if let Some(p) = partitions.iter().find(|p| **p >= count) {
        return Err(Status::invalid_argument(format!(
            "partition {p} >= partition_count"
        )));
    }
    if partitions.len() > count as usize {
        return Err(Status::invalid_argument(format!(
            "{} partitions named, of {count}",
            partitions.len()
        )));
    }
    Ok(())
}

fn status(s: &NodeState) -> StatusResponse {
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
    StatusResponse {
        node_id: s.id.to_string(),
        cluster_id: s.cluster_id.clone(),
        leader_id: m.current_leader.map(|l| l.to_string()).unwrap_or_default(),
        leader_grpc_address: leader_addr,
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        last_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        voters: membership.voter_ids().map(fmt).collect(),
        learners: membership.learner_ids().map(fmt).collect(),
    }
}

/// A page of the entries of the given partitions, in key order after the
/// cursor, as of a confirmed read index.
/// The leader's read index for a consistent `what`: confirmed with a
/// quorum, and applied locally, before the data is read. Always a round,
/// not the read lease: reading a page or a backup takes longer than a
/// lease may have left.
async fn consistent_point(s: &NodeState, what: &str) -> Result<(), Status> {
    s.leader_only()?;
    match s.confirm_leadership_by_round(s.deadline()).await {
        Ok(()) => Ok(()),
        Err(Unconfirmed::NotLeader) => Err(Status::unavailable(format!(
            "cannot serve a consistent {what}: not the leader"
        ))),
        Err(Unconfirmed::Unavailable(st)) => Err(st),
    }
}

async fn list_partitions(
    s: &NodeState,
    req: ListPartitionsRequest,
) -> Result<ListPartitionsResponse, Status> {
    check_partitions(req.partition_count, &req.partitions)?;
    consistent_point(s, "listing").await?;
    let limit = req.limit.clamp(1, MAX_LIST_LIMIT) as usize;
    // Pass over at most this many keys of other partitions per call (with
    // the stored layout's partition count there are none), so one page
    // costs bounded time whatever the partitions hold; and return at most
    // about LIST_PAGE_BYTES, whatever `limit` asks for.
    let skip_budget = limit.saturating_mul(64).max(4096);
    let byte_budget = ravel_proto::limits::LIST_PAGE_BYTES;
    let engine = s.engine.clone();
    tokio::task::spawn_blocking(move || {
        let mut entries = Vec::new();
        let (mut bytes, mut skipped) = (0usize, 0usize);
        let mut last_key = req.after_key.clone();
        let done = engine
            .scan_partitions(
                req.partition_count,
                &req.partitions,
                req.has_after.then_some(req.after_key.as_slice()),
                |k, v, wanted| {
                    last_key = k.to_vec();
                    if !wanted {
                        skipped += 1;
                        return skipped < skip_budget;
                    }
                    bytes += k.len() + v.len();
                    entries.push(KeyValue {
                        key: k.to_vec(),
                        value: v.to_vec(),
                    });
                    entries.len() < limit && bytes < byte_budget
                },
            )
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(ListPartitionsResponse {
            entries,
            done,
            last_key,
        })
    })
    .await
    .map_err(|e| Status::internal(format!("listing task: {e}")))?
}

/// `SetIfAbsent` / `DeleteIfEqual`: validated, replicated, applied.
async fn conditional(
    s: &NodeState,
    request: Request<KeyValue>,
    command: fn(Vec<u8>, Vec<u8>) -> Command,
) -> Result<Response<Applied>, Status> {
    let (id, _ticket) = s.request_id(&request)?;
    let epoch = s.ring_epoch(&request)?;
    let kv = request.into_inner();
    s.check_sizes(&kv.key, &kv.value)?;
    let cmd = command(kv.key, kv.value);
    match leader_write(s, id, epoch, cmd).await? {
        CommandResult::Applied(applied) => Ok(Response::new(Applied { applied })),
        other => Err(Status::internal(format!("unexpected result {other:?}"))),
    }
}

/// `SetIfAbsentBatch` / `DeleteIfEqualBatch`: every entry validated, then
/// all of them replicated as one command of one request (one log entry,
/// one fence check, applied at most once), one result per entry.
async fn conditional_batch(
    s: &NodeState,
    request: Request<KeyValueBatch>,
    command: fn(Vec<u8>, Vec<u8>) -> Command,
) -> Result<Response<AppliedBatch>, Status> {
    if s.faults.lacks_move_batches(s.id) {
        return Err(Status::unimplemented("move batches (fault injected)"));
    }
    let (id, _ticket) = s.request_id(&request)?;
    let epoch = s.ring_epoch(&request)?;
    let entries = request.into_inner().entries;
    check_batch(s, &entries)?;
    let n = entries.len();
    let cmd = Command::Batch(
        entries
            .into_iter()
            .map(|kv| command(kv.key, kv.value))
            .collect(),
    );
    match leader_write(s, id, epoch, cmd).await? {
        CommandResult::Batch(results) if results.len() == n => results
            .into_iter()
            .map(|r| match r {
                CommandResult::Applied(applied) => Ok(applied),
                other => Err(Status::internal(format!("unexpected result {other:?}"))),
            })
            .collect::<Result<_, _>>()
            .map(|applied| Response::new(AppliedBatch { applied })),
        other => Err(Status::internal(format!("unexpected result {other:?}"))),
    }
}

/// A move batch's bounds (see `ravel_proto::limits::MOVE_BATCH_BYTES`)
/// and each entry's.
fn check_batch(s: &NodeState, entries: &[KeyValue]) -> Result<(), Status> {
    if entries.is_empty() {
        return Err(Status::invalid_argument(
            "a batch must hold at least one entry",
        ));
    }
    if entries.len() > MOVE_BATCH_ENTRIES {
        return Err(Status::invalid_argument(format!(
            "a batch holds {} entries; the limit is {MOVE_BATCH_ENTRIES}",
            entries.len()
        )));
    }
    let bytes: usize = entries.iter().map(|e| e.key.len() + e.value.len()).sum();
    if entries.len() > 1 && bytes > MOVE_BATCH_BYTES {
        return Err(Status::invalid_argument(format!(
            "a batch of {} entries holds {bytes} bytes of keys and values; the limit is {MOVE_BATCH_BYTES}",
            entries.len()
        )));
    }
    entries
        .iter()
        .try_for_each(|e| s.check_sizes(&e.key, &e.value))
}

/// A write of the extension service: on the leader only (callers find the
/// leader themselves), in touch with a majority, replicated and applied.
async fn leader_write(
    s: &NodeState,
    id: RequestId,
    epoch: Option<u64>,
    cmd: Command,
) -> Result<CommandResult, Status> {
    s.check_running()?;
    s.leader_only()?;
    if !s.contact.fresh(&s.raft) {
        return Err(Status::unavailable(
            "this node leads but has lost contact with a majority of its cluster; not applied",
        ));
    }
    Ok(s.replicate(id, epoch, cmd, s.deadline()).await?)
}
