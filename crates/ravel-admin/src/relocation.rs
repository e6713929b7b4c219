//! Relocation: planning a ring change and moving the keys of every
//! partition that changed owner, while reads and writes go on.
//!
//! Per source→destination pair:
//!
//! 1. **Fence the source** at the current ring generation: from that point
//!    of its log on, it refuses writes routed by an older ring (requests the
//!    admin gave up on that are still queued or on the wire). Every write
//!    that got in before the fence is seen by the listing that follows.
//! 2. **Copy, key by key**: to the new owner only if absent there
//!    (`SetIfAbsent`), then delete from the old owner only if it still holds
//!    the copied value (`DeleteIfEqual`). A key present on the destination
//!    is newer by construction: the destination held nothing of these
//!    partitions when the move was planned (old owners are fenced, and the
//!    tombstones of earlier moves are swept before a new plan), so anything
//!    there was written during this move. Both steps are idempotent, so a
//!    move interrupted anywhere (admin killed) resumes from the persisted
//!    cursor without loss or resurrection.
//! 3. **End the move and record its sweep** in one registry update: the
//!    partitions stop "moving"; the destination's tombstones (deletes made
//!    during the move) are listed as to be swept.
//! 4. **Sweep**: fence the destination at the new generation (a tombstone
//!    write still in flight from the move cannot land after the sweep), then
//!    remove its tombstones, then drop the sweep from the registry. A
//!    relocation finishes only once every sweep is done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use ravel_proto::ext::{FenceRequest, KeyValue, ListPartitionsRequest};
use ravel_transport::retry::Attempts;
use tokio::time::Instant;

use crate::kv::TOMBSTONE;
use crate::registry::{PartitionMove, RegistryError, RelocationProgress, Sweep};
use crate::router::{CallError, Router};
use crate::state::AdminState;

/// Entries fetched per listing page.
const PAGE: u32 = 256;
/// Deadline of one step of the mover (a page, a copy); a failed step is
/// retried after a pause, forever: progress is persisted.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a relocation if the desired ring differs from the current one and
/// none is running. Takes the routing gate for writing while it switches,
/// so no request routed by the old ring is still in flight afterwards.
pub async fn plan(admin: &AdminState) -> Result<bool, RegistryError> {
    let router = &admin.router;
    let _g = admin.gate.write().await;
    admin.registry.update(|s| {
        if s.ring.relocation.is_some() {
            return false;
        }
        let mut desired = s.desired_members();
        desired.sort();
        let mut current = s.ring.members.clone();
        current.sort();
        if desired == current {
            return false;
        }
        let old = router.ring().owners(&current);
        let new = router.ring().owners(&desired);
        let pending: BTreeMap<u32, PartitionMove> = if old.is_empty() {
            BTreeMap::new() // the first cluster: nothing to move
        } else {
            (0..router.ring().partitions)
                .filter_map(|p| {
                    let (o, n) = (&old[p as usize], new.get(p as usize)?);
                    (o != n).then(|| {
                        (
                            p,
                            PartitionMove {
                                from: o.clone(),
                                to: n.clone(),
                            },
                        )
                    })
                })
                .collect()
        };
        tracing::info!(from = ?current, to = ?desired, partitions = pending.len(), "ring change planned");
        s.ring.members = desired.clone();
        s.ring.generation += 1;
        if !pending.is_empty() {
            s.ring.relocation = Some(RelocationProgress {
                id: s.ring.generation,
                from_members: current,
                to_members: desired,
                total_partitions: pending.len() as u32,
                pending,
                cursors: BTreeMap::new(),
                moved_keys: 0,
                sweeps: Vec::new(),
            });
        }
        true
    })
    .await
}

/// The mover: runs relocations until told to stop (the task is aborted on
/// shutdown; every step is persisted, so that is safe).
pub async fn run_mover(admin: Arc<AdminState>) {
    // Failed steps are retried with the one backoff policy, forever:
    // progress is persisted, so a retry resumes where the last one stopped.
    let mut failures = Attempts::forever();
    loop {
        let reloc = admin.registry.snapshot().ring.relocation.clone();
        match reloc {
            None => {
                match plan(&admin).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "planning a relocation");
                        admin.metrics.relocation_failed(&e.to_string());
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), admin.wake.notified()).await;
            }
            Some(r) => match move_one_pair(&admin, &r).await {
                Ok(()) => failures = Attempts::forever(),
                Err(e) => {
                    tracing::warn!(error = %e, relocation = r.id, "relocation step failed; retrying");
                    admin.metrics.relocation_failed(&e);
                    failures.pause().await;
                }
            },
        }
    }
}

fn pair_key(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

fn step_err(e: CallError) -> String {
    match e {
        CallError::Unavailable(m) => m,
        CallError::Status(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Moves every pending partition of the first source→destination pair of
/// `r`, then retires those partitions (and the whole relocation when none
/// are left).
async fn move_one_pair(admin: &AdminState, r: &RelocationProgress) -> Result<(), String> {
    let (registry, router) = (&admin.registry, &admin.router);
    // A move that ended before the admin stopped still has its sweep.
    if let Some(sweep) = r.sweeps.first() {
        return run_sweep(admin, r.id, sweep).await;
    }
    let Some(first) = r.pending.values().next() else {
        finish(admin, r.id).await.map_err(|e| e.to_string())?;
        return Ok(());
    };
    let (from, to) = (first.from.clone(), first.to.clone());
    let partitions: Vec<u32> = r
        .pending
        .iter()
        .filter(|(_, m)| m.from == from && m.to == to)
        .map(|(p, _)| *p)
        .collect();
    let key = pair_key(&from, &to);
    let mut cursor = r.cursors.get(&key).cloned();
    tracing::info!(relocation = r.id, %from, %to, partitions = partitions.len(), resume = cursor.is_some(), "moving partitions");
    let count = router.ring().partitions;
    fence(admin, &from).await?;
    admin.holds.point("mover.before_copy").await;
    loop {
        let page = list(router, &from, count, &partitions, cursor.clone()).await?;
        let (from_ref, to_ref) = (&from, &to);
        let moves = page.entries.into_iter().map(|e| async move {
            let deadline = Instant::now() + STEP_TIMEOUT;
            // A tombstone on the source is a leftover of an older admin
            // (sweeps are persisted now): it means "absent"; drop it.
            if e.value != TOMBSTONE {
                conditional(admin, Conditional::SetIfAbsent, to_ref, &e, deadline).await?;
            }
            conditional(admin, Conditional::DeleteIfEqual, from_ref, &e, deadline).await
        });
        let results = join_all(moves).await;
        let moved = results.len() as u64;
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            return Err(e);
        }
        admin.metrics.keys_moved(moved);
        cursor = Some(page.last_key.clone());
        registry
            .update(|s| {
                if let Some(rel) = s.ring.relocation.as_mut().filter(|x| x.id == r.id) {
                    rel.cursors.insert(key.clone(), page.last_key.clone());
                    rel.moved_keys += moved;
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        if page.done {
            break;
        }
    }
    // The pair is done: its partitions are served by the destination
    // alone, and its tombstones are to be swept (recorded in the same
    // update, so a restart cannot forget them).
    let sweep = Sweep {
        cluster: to.clone(),
        partitions: partitions.clone(),
    };
    {
        let _g = admin.gate.write().await;
        registry
            .update(|s| {
                if let Some(rel) = s.ring.relocation.as_mut().filter(|x| x.id == r.id) {
                    for p in &partitions {
                        rel.pending.remove(p);
                    }
                    rel.cursors.remove(&key);
                    rel.sweeps.push(sweep.clone());
                    s.ring.generation += 1;
                }
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    admin.holds.point("mover.before_sweep").await;
    run_sweep(admin, r.id, &sweep).await?;
    let progress = registry.snapshot().ring.relocation.as_ref().map(|x| {
        (
            x.total_partitions as usize - x.pending.len(),
            x.total_partitions,
            x.moved_keys,
        )
    });
    if let Some((done, total, keys)) = progress {
        tracing::info!(relocation = r.id, %from, %to, partitions_done = done, partitions_total = total, moved_keys = keys, "partitions moved");
    }
    Ok(())
}

/// Fences `cluster` at the current ring generation (see the module's
/// step 1 and 4). Idempotent.
async fn fence(admin: &AdminState, cluster: &str) -> Result<(), String> {
    let epoch = admin.registry.snapshot().ring.generation;
    let ticket = admin.session.begin();
    admin
        .router
        .call(cluster, Instant::now() + STEP_TIMEOUT, |ch, remaining| {
            let mut req = tonic::Request::new(FenceRequest { epoch });
            req.set_timeout(remaining);
            ticket.id().insert(req.metadata_mut());
            async move { Router::ext(ch).fence(req).await.map(|_| ()) }
        })
        .await
        .map_err(step_err)
}

/// Step 4: fences the destination, removes its tombstones in the sweep's
/// partitions, then drops the sweep from the registry.
async fn run_sweep(admin: &AdminState, id: u64, sweep: &Sweep) -> Result<(), String> {
    fence(admin, &sweep.cluster).await?;
    let count = admin.router.ring().partitions;
    remove_tombstones(admin, &sweep.cluster, count, &sweep.partitions).await?;
    admin
        .registry
        .update(|s| {
            if let Some(rel) = s.ring.relocation.as_mut().filter(|x| x.id == id) {
                rel.sweeps.retain(|x| x != sweep);
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(relocation = id, cluster = %sweep.cluster, partitions = sweep.partitions.len(), "tombstones swept");
    Ok(())
}

async fn finish(admin: &AdminState, id: u64) -> Result<(), RegistryError> {
    let _g = admin.gate.write().await;
    admin.registry.update(|s| {
        if let Some(rel) = s
            .ring
            .relocation
            .take_if(|x| x.id == id && x.pending.is_empty() && x.sweeps.is_empty())
        {
            s.ring.moved_keys_total += rel.moved_keys;
            s.ring.relocations_done += 1;
            s.ring.generation += 1;
            tracing::info!(relocation = id, moved_keys = rel.moved_keys, partitions = rel.total_partitions, "relocation finished");
            // Draining clusters that left the ring own nothing now; each is
            // removed from the registry when its last replica calls
            // LeaveCluster again. Say so, for the operator.
            let gone: Vec<String> = s
                .ring
                .draining
                .iter()
                .filter(|c| !s.ring.members.contains(c))
                .cloned()
                .collect();
            for c in gone {
                if let Some(info) = s.clusters.get(&c) {
                    tracing::info!(cluster = %c, replicas = info.members.len(), "drained cluster has no keys left");
                }
            }
        }
    })
    .await
}

async fn list(
    router: &Router,
    cluster: &str,
    count: u32,
    partitions: &[u32],
    after: Option<Vec<u8>>,
) -> Result<ravel_proto::ext::ListPartitionsResponse, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    router
        .call(cluster, deadline, |ch, remaining| {
            let mut req = tonic::Request::new(ListPartitionsRequest {
                partition_count: count,
                partitions: partitions.to_vec(),
                has_after: after.is_some(),
                after_key: after.clone().unwrap_or_default(),
                limit: PAGE,
            });
            req.set_timeout(remaining);
            async move {
                Router::ext(ch)
                    .list_partitions(req)
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await
        .map_err(step_err)
}

/// The mover's two conditional writes.
#[derive(Debug, Clone, Copy)]
enum Conditional {
    /// Copy the entry unless the key exists there (`SetIfAbsent`).
    SetIfAbsent,
    /// Remove the entry if the key still holds exactly that value
    /// (`DeleteIfEqual`).
    DeleteIfEqual,
}

/// Runs `op` with entry `e` on `cluster`'s leader; whether it applied. One
/// request id for every attempt, so a retry takes effect once.
async fn conditional(
    admin: &AdminState,
    op: Conditional,
    cluster: &str,
    e: &KeyValue,
    deadline: Instant,
) -> Result<bool, String> {
    let ticket = admin.session.begin();
    // Never below a fence the mover set: the generation only grows.
    let epoch = admin.registry.snapshot().ring.generation;
    admin
        .router
        .call(cluster, deadline, |ch, remaining| {
            let mut req = tonic::Request::new(e.clone());
            req.set_timeout(remaining);
            ticket.id().insert(req.metadata_mut());
            ravel_proto::metadata::insert_ring_epoch(req.metadata_mut(), epoch);
            async move {
                let mut client = Router::ext(ch);
                let answer = match op {
                    Conditional::SetIfAbsent => client.set_if_absent(req).await,
                    Conditional::DeleteIfEqual => client.delete_if_equal(req).await,
                };
                answer.map(|r| r.into_inner().applied)
            }
        })
        .await
        .map_err(step_err)
}

async fn remove_tombstones(
    admin: &AdminState,
    cluster: &str,
    count: u32,
    partitions: &[u32],
) -> Result<(), String> {
    let mut cursor = None;
    loop {
        let page = list(&admin.router, cluster, count, partitions, cursor).await?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        let removals = page
            .entries
            .iter()
            .filter(|e| e.value == TOMBSTONE)
            .map(|e| conditional(admin, Conditional::DeleteIfEqual, cluster, e, deadline));
        for r in join_all(removals).await {
            r?;
        }
        if page.done {
            return Ok(());
        }
        cursor = Some(page.last_key);
    }
}
