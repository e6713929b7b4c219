//! Relocation: planning a ring change and moving the keys of every
//! partition that changed owner, while reads and writes go on.
//!
//! Per source→destination pair:
//!
//! 1. **Fence the source** at the current ring generation: from that point
//!    of its log on, it refuses writes routed by an older ring (requests the
//!    admin gave up on that are still queued or on the wire). Every write
//!    that got in before the fence is seen by the listing that follows.
//! 2. **Copy, page by page**, one partition at a time in ascending order,
//!    each in key order (the destination's storage order): each key to the
//!    new owner only if absent there (`SetIfAbsent`), in batches of about
//!    a MiB, one log entry each (`SetIfAbsentBatch`); the next page is
//!    listed while the current one is written. A key present on the destination is newer by
//!    construction: the destination held nothing of these partitions when
//!    the move was planned (old owners are fenced, and the tombstones of
//!    earlier moves are swept before a new plan), so anything there was
//!    written during this move. Copies are idempotent, so a move
//!    interrupted anywhere (admin killed) resumes from the persisted cursor
//!    without loss or resurrection.
//! 3. **Remove the partitions from the old owner** once every page is
//!    copied: one `DeletePartitions` (a range delete per partition on the
//!    node's storage). Nothing is lost: fenced, the old owner takes no
//!    write routed by the old ring, and the new ring sends it only deletes
//!    of these partitions (a user's delete of a key not yet passed), so
//!    every key it still holds was there when the listing passed it, and
//!    was copied. A node without that call (an older version) gets each
//!    listed key deleted if it still holds the listed value
//!    (`DeleteIfEqualBatch`), as before.
//! 4. **End the move and record its sweep** in one registry update: the
//!    partitions stop "moving"; the destination's tombstones (deletes made
//!    during the move) are listed as to be swept.
//! 5. **Sweep**: fence the destination at the new generation (a tombstone
//!    write still in flight from the move cannot land after the sweep), then
//!    remove its tombstones, then drop the sweep from the registry. A
//!    relocation finishes only once every sweep is done.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use ravel_proto::ext::ravel_node_ext_client::RavelNodeExtClient;
use ravel_proto::ext::{
    DeletePartitionsRequest, FenceRequest, KeyValue, KeyValueBatch, ListPartitionsRequest,
};
use ravel_proto::limits::{MOVE_BATCH_BYTES, MOVE_BATCH_ENTRIES};
use ravel_transport::retry::Attempts;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::kv::TOMBSTONE;
use crate::registry::{PairCursor, PartitionMove, RegistryError, RelocationProgress, Sweep};
use crate::router::{CallError, Router};
use crate::state::AdminState;

/// Entries fetched per listing page (a page also stops at
/// `ravel_proto::limits::LIST_PAGE_BYTES`, 4 MiB). A page's batches are
/// written concurrently, so a larger page keeps more batches in flight:
/// 4,096 (4 MiB of 1 KiB values, four batches) moved 41-42 MB/s where
/// 2,048 moved 35-37 (docs/benchmarks.md, "Relocation: passed keys read
/// from the new owner alone; longer pages").
pub const PAGE: u32 = 4096;
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
                pair_cursors: BTreeMap::new(),
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
    let key = RelocationProgress::pair_key(&from, &to);
    // An older admin's cursor (`cursors`) is not resumed from: the copy
    // starts over, which only repeats idempotent copies (that admin had
    // deleted what it passed from the source).
    let cursor = r.pair_cursors.get(&key).cloned();
    tracing::info!(relocation = r.id, %from, %to, partitions = partitions.len(), resume = cursor.is_some(), "moving partitions");
    let count = router.ring().partitions;
    fence(admin, &from).await?;
    admin.holds.point("mover.before_copy").await;
    // Partition by partition, ascending (`pending` is ordered), each in key
    // order: the destination receives keys in its storage order (by
    // partition, then key), so its RocksDB writes sorted runs that
    // compaction moves down without rewriting them. Listing one partition
    // at a time also means the same order on every node version.
    let mut at = match &cursor {
        None => Some((0, None)),
        Some(c) => partitions
            .iter()
            .position(|p| *p >= c.partition)
            .map(|i| (i, (partitions[i] == c.partition).then(|| c.key.clone()))),
    };
    let pacer = Pacer::new(admin.limits.relocation_bytes_per_s);
    let mut listing = match &at {
        Some((i, after)) => {
            Some(list(router, &from, count, &partitions[*i..=*i], after.clone()).await?)
        }
        None => None,
    };
    while let (Some((i, _)), Some(page)) = (at.take(), listing.take()) {
        let partition = partitions[i];
        // The next page is listed while this one is written: it holds only
        // keys after this page's, which the writes do not touch.
        at = if !page.done {
            Some((i, Some(page.last_key.clone())))
        } else if i + 1 < partitions.len() {
            Some((i + 1, None))
        } else {
            None
        };
        let next = at
            .clone()
            .map(|(j, after)| list(router, &from, count, &partitions[j..=j], after));
        let (moved, next) = tokio::join!(copy_page(admin, &pacer, &to, &page.entries), async {
            match next {
                Some(listing) => Some(listing.await),
                None => None,
            }
        });
        moved?;
        let moved = page.entries.len() as u64;
        if moved > 0 {
            admin.metrics.keys_moved(moved);
            let cursor = PairCursor {
                partition,
                key: page.last_key.clone(),
            };
            registry
                .update(|s| {
                    if let Some(rel) = s.ring.relocation.as_mut().filter(|x| x.id == r.id) {
                        rel.cursors.remove(&key);
                        rel.pair_cursors.insert(key.clone(), cursor.clone());
                        rel.moved_keys += moved;
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
            admin.holds.point("mover.after_page").await;
        }
        listing = next.transpose()?;
    }
    // Every key is copied: the old owner's copies go.
    remove_moved(admin, &from, count, &partitions).await?;
    admin.holds.point("mover.after_removal").await;
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
                    rel.pair_cursors.remove(&key);
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
/// steps 1 and 5). Idempotent.
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

/// Step 5: fences the destination, removes its tombstones in the sweep's
/// partitions, then drops the sweep from the registry.
async fn run_sweep(admin: &AdminState, id: u64, sweep: &Sweep) -> Result<(), String> {
    fence(admin, &sweep.cluster).await?;
    let count = admin.router.ring().partitions;
    remove_listed(admin, &sweep.cluster, count, &sweep.partitions, |e| {
        e.value == TOMBSTONE
    })
    .await?;
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

/// Step 2 for one page: in batches, each copied to `to` if absent there.
async fn copy_page(
    admin: &AdminState,
    pacer: &Pacer,
    to: &str,
    entries: &[KeyValue],
) -> Result<(), String> {
    // A tombstone on the source is a leftover of an older admin (sweeps
    // are persisted now): it means "absent"; it is not copied.
    let copies: Vec<&[KeyValue]> = batches(entries);
    let moves = copies.into_iter().map(|batch| async move {
        pacer.admit(batch_bytes(batch)).await;
        let deadline = Instant::now() + STEP_TIMEOUT;
        // Copied only when there is one to drop (the request copies the
        // batch anyway).
        let copies: Cow<[KeyValue]> = if batch.iter().any(|e| e.value == TOMBSTONE) {
            Cow::Owned(
                batch
                    .iter()
                    .filter(|e| e.value != TOMBSTONE)
                    .cloned()
                    .collect(),
            )
        } else {
            Cow::Borrowed(batch)
        };
        if copies.is_empty() {
            return Ok(());
        }
        conditional_batch(admin, Conditional::SetIfAbsent, to, &copies, deadline)
            .await
            .map(drop)
    });
    join_all(moves).await.into_iter().collect()
}

/// Step 3: removes the pair's partitions from `from`, whose every key has
/// been copied (see the module's docs for why nothing is lost): one
/// `DeletePartitions`, or on a node without it, each listed key deleted if
/// it still holds the listed value.
async fn remove_moved(
    admin: &AdminState,
    from: &str,
    count: u32,
    partitions: &[u32],
) -> Result<(), String> {
    let answer = mover_write(
        admin,
        from,
        Instant::now() + STEP_TIMEOUT,
        || DeletePartitionsRequest {
            partition_count: count,
            partitions: partitions.to_vec(),
        },
        |mut client, req| async move { client.delete_partitions(req).await.map(drop) },
    )
    .await;
    match answer {
        Ok(()) => Ok(()),
        Err(CallError::Status(s)) if s.code() == tonic::Code::Unimplemented => {
            remove_listed(admin, from, count, partitions, |_| true).await
        }
        Err(e) => Err(step_err(e)),
    }
}

/// Paces the mover to a rate (`relocation_mib_per_s`): each batch starts
/// no earlier than the previous batch's bytes take at that rate. Time spent
/// not moving (a failed step's pause, an empty page) earns no credit, so a
/// stall is never followed by a burst above the rate.
struct Pacer {
    bytes_per_s: u64,
    /// When the next batch may start.
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer to `bytes_per_s` (0: none, every batch goes at once).
    fn new(bytes_per_s: u64) -> Self {
        Self {
            bytes_per_s,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for a batch of `bytes` to be allowed to start.
    async fn admit(&self, bytes: u64) {
        if self.bytes_per_s == 0 {
            return;
        }
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// The key and value bytes of a batch (what the pacer counts).
fn batch_bytes(batch: &[KeyValue]) -> u64 {
    batch
        .iter()
        .map(|e| (e.key.len() + e.value.len()) as u64)
        .sum()
}

/// `entries` cut, in order, into the largest move batches the nodes take
/// (`ravel_proto::limits::MOVE_BATCH_BYTES`, `MOVE_BATCH_ENTRIES`). An
/// entry larger than a batch goes alone.
fn batches(entries: &[KeyValue]) -> Vec<&[KeyValue]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let size = e.key.len() + e.value.len();
        if i > start && (bytes + size > MOVE_BATCH_BYTES || i - start >= MOVE_BATCH_ENTRIES) {
            out.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Runs `op` on every entry of `batch` on `cluster`'s leader, as one
/// request; whether each applied. One request id for every attempt, so a
/// retry takes effect once. A node without the batch calls (an older
/// version: UNIMPLEMENTED, so nothing was applied) gets them one by one.
async fn conditional_batch(
    admin: &AdminState,
    op: Conditional,
    cluster: &str,
    batch: &[KeyValue],
    deadline: Instant,
) -> Result<Vec<bool>, String> {
    let message = || KeyValueBatch {
        entries: batch.to_vec(),
    };
    let answer = mover_write(
        admin,
        cluster,
        deadline,
        message,
        |mut client, req| async move {
            let answer = match op {
                Conditional::SetIfAbsent => client.set_if_absent_batch(req).await,
                Conditional::DeleteIfEqual => client.delete_if_equal_batch(req).await,
            };
            answer.map(|r| r.into_inner().applied)
        },
    )
    .await;
    match answer {
        Ok(applied) if applied.len() == batch.len() => Ok(applied),
        Ok(applied) => Err(format!(
            "{cluster}: {} results for a batch of {}",
            applied.len(),
            batch.len()
        )),
        Err(CallError::Status(s)) if s.code() == tonic::Code::Unimplemented => {
            let each = batch
                .iter()
                .map(|e| conditional(admin, op, cluster, e, deadline));
            join_all(each).await.into_iter().collect()
        }
        Err(e) => Err(step_err(e)),
    }
}

/// Runs `op` with entry `e` on `cluster`'s leader; whether it applied.
async fn conditional(
    admin: &AdminState,
    op: Conditional,
    cluster: &str,
    e: &KeyValue,
    deadline: Instant,
) -> Result<bool, String> {
    mover_write(
        admin,
        cluster,
        deadline,
        || e.clone(),
        |mut client, req| async move {
            let answer = match op {
                Conditional::SetIfAbsent => client.set_if_absent(req).await,
                Conditional::DeleteIfEqual => client.delete_if_equal(req).await,
            };
            answer.map(|r| r.into_inner().applied)
        },
    )
    .await
    .map_err(step_err)
}

/// Sends one of the mover's writes (`message()`) to `cluster`'s leader
/// with `send`, until it answers or `deadline`: one request id for every
/// attempt, so a retry takes effect once, routed by the current ring
/// generation (never below a fence the mover set: it only grows).
async fn mover_write<M, T, Fut>(
    admin: &AdminState,
    cluster: &str,
    deadline: Instant,
    message: impl Fn() -> M,
    send: impl Fn(RavelNodeExtClient<Channel>, tonic::Request<M>) -> Fut,
) -> Result<T, CallError>
where
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let ticket = admin.session.begin();
    let epoch = admin.registry.snapshot().ring.generation;
    admin
        .router
        .call(cluster, deadline, |ch, remaining| {
            let mut req = tonic::Request::new(message());
            req.set_timeout(remaining);
            ticket.id().insert(req.metadata_mut());
            ravel_proto::metadata::insert_ring_epoch(req.metadata_mut(), epoch);
            send(Router::ext(ch), req)
        })
        .await
}

/// Deletes from `cluster` each entry of `partitions` that `which` picks,
/// if it still holds the listed value, page by page.
async fn remove_listed(
    admin: &AdminState,
    cluster: &str,
    count: u32,
    partitions: &[u32],
    which: impl Fn(&KeyValue) -> bool,
) -> Result<(), String> {
    let mut cursor = None;
    loop {
        let page = list(&admin.router, cluster, count, partitions, cursor).await?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        let picked: Vec<KeyValue> = page.entries.into_iter().filter(|e| which(e)).collect();
        let removals = batches(&picked).into_iter().map(|batch| {
            conditional_batch(admin, Conditional::DeleteIfEqual, cluster, batch, deadline)
        });
        for r in join_all(removals).await {
            r?;
        }
        if page.done {
            return Ok(());
        }
        cursor = Some(page.last_key);
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn kv(key: usize, value_bytes: usize) -> KeyValue {
        KeyValue {
            key: format!("{key:08}").into_bytes(),
            value: vec![b'v'; value_bytes],
        }
    }

    fn sizes(bs: &[&[KeyValue]]) -> Vec<usize> {
        bs.iter().map(|b| b.len()).collect()
    }

    #[tokio::test]
    async fn the_pacer_holds_batches_to_its_rate_and_banks_no_credit() {
        // 100 KiB batches at 1 MiB/s: the fourth may start 300 ms after
        // the first, whatever the batches' own time.
        let pacer = Pacer::new(1 << 20);
        let t0 = std::time::Instant::now();
        for _ in 0..4 {
            pacer.admit(100 << 10).await;
        }
        let paced = t0.elapsed();
        assert!(paced >= Duration::from_millis(290), "{paced:?}");
        // Idle time is not banked: after a pause the next batch still waits
        // for the one before it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        pacer.admit(100 << 10).await; // starts at once: its slot is past
        let t1 = std::time::Instant::now();
        pacer.admit(100 << 10).await;
        let waited = t1.elapsed();
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        // Unpaced: ready at its first poll, however many bytes.
        let free = Pacer::new(0);
        for _ in 0..3 {
            assert!(free.admit(1 << 30).now_or_never().is_some());
        }
    }

    #[test]
    fn batches_cut_in_order_by_bytes_and_count() {
        assert!(batches(&[]).is_empty());
        // By bytes: 1 KiB entries (8-byte keys), as many as fit.
        let entries: Vec<KeyValue> = (0..3000).map(|i| kv(i, 1016)).collect();
        let per = MOVE_BATCH_BYTES / 1024;
        let bs = batches(&entries);
        assert_eq!(sizes(&bs), vec![per, per, 3000 - 2 * per]);
        // By count: tiny entries.
        let entries: Vec<KeyValue> = (0..MOVE_BATCH_ENTRIES * 2 + 1).map(|i| kv(i, 0)).collect();
        let bs = batches(&entries);
        assert_eq!(sizes(&bs), vec![MOVE_BATCH_ENTRIES, MOVE_BATCH_ENTRIES, 1]);
        // An entry larger than a batch goes alone; order is kept.
        let entries = vec![kv(0, 10), kv(1, MOVE_BATCH_BYTES), kv(2, 10), kv(3, 10)];
        let bs = batches(&entries);
        assert_eq!(sizes(&bs), vec![1, 1, 2]);
        let flat: Vec<&KeyValue> = bs.iter().flat_map(|b| b.iter()).collect();
        assert!(flat.iter().zip(&entries).all(|(a, b)| *a == b));
        // Every batch stays within both bounds unless it is one entry.
        for b in bs {
            let bytes: usize = b.iter().map(|e| e.key.len() + e.value.len()).sum();
            assert!(b.len() == 1 || (bytes <= MOVE_BATCH_BYTES && b.len() <= MOVE_BATCH_ENTRIES));
        }
    }
}
