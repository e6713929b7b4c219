//! Snapshots by log size. openraft takes a snapshot every
//! `snapshot.logs_since_last` entries, whatever they hold; a batched entry
//! holds up to `limits.batch_max_bytes`, so by count alone the log behind
//! the state machine could grow to gigabytes before it is purged. This task
//! also takes one once `snapshot.log_bytes_since_last` bytes of entries
//! were appended since the last. Taking a snapshot pins a view and copies
//! nothing; openraft then purges the log behind it (keeping
//! `snapshot.keep_logs` entries).

use std::time::Duration;

use prometheus::IntCounter;
use ravel_consensus::types::Raft;
use tokio_util::sync::CancellationToken;

/// How often the appended bytes are looked at.
const TICK: Duration = Duration::from_millis(200);

/// Runs until `shutdown`. `appended` counts the bytes of entries this
/// replica appended (`ravel_log_appended_bytes_total`).
pub async fn run(raft: Raft, appended: IntCounter, threshold: u64, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = raft.metrics().borrow().snapshot;
    let mut since = appended.get();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (snapshot, running) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.snapshot, m.running_state.is_ok())
        };
        if !running {
            return;
        }
        let now = appended.get();
        if snapshot != last {
            // Taken (by count, by us, or installed from the leader).
            (last, since) = (snapshot, now);
        } else if now.saturating_sub(since) >= threshold {
            tracing::debug!(
                bytes = now - since,
                "log grew past its size limit; taking a snapshot"
            );
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "cannot trigger a snapshot");
                return;
            }
            // Not again until as many bytes more, however long this one
            // takes.
            since = now;
        }
    }
}
