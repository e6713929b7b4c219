//! The leader notifier: every time this node becomes leader (each new term)
//! it tells the admin with `UpdateClusterLeader`, retrying until the admin
//! acknowledges or leadership moves on.

use openraft::ServerState;
use ravel_consensus::types::{NodeId, Raft};
use ravel_proto::admin::Node as AdminNode;
use ravel_transport::retry::{Attempts, Backoff};
use tokio_util::sync::CancellationToken;

use crate::admin_link::AdminLink;

/// Runs until `shutdown` is cancelled.
pub async fn run(
    raft: Raft,
    id: NodeId,
    me: AdminNode,
    admin: AdminLink,
    shutdown: CancellationToken,
) {
    // Leadership and term only: the server metrics' watch changes with
    // them, not with every write.
    let mut metrics = raft.server_metrics();
    let mut reported_term: Option<u64> = None;
    loop {
        let (is_leader, term) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(id),
                m.vote.leader_id().get_term(),
            )
        };
        if is_leader && reported_term != Some(term) {
            // Stop retrying when leadership of this term ends (or on
            // shutdown); the next term reports again.
            let term_over = CancellationToken::new();
            let watch_term = {
                let mut metrics = metrics.clone();
                let term_over = term_over.clone();
                let shutdown = shutdown.clone();
                async move {
                    let _ = tokio::select! {
                        r = metrics.wait_for(|m| m.state != ServerState::Leader || m.vote.leader_id().get_term() != term) => r.map(|_| ()),
                        _ = shutdown.cancelled() => Ok(()),
                    };
                    term_over.cancel();
                }
            };
            let attempts = Attempts::new(Backoff::default(), None).cancel_on(term_over.clone());
            let report = admin.report_leader(&me, term, attempts);
            let result = tokio::select! {
                r = report => Some(r),
                _ = watch_term => None,
            };
            term_over.cancel();
            match result {
                Some(Ok(())) => {
                    tracing::info!(term, cluster = %me.cluster_id, "admin acknowledged this node as leader");
                    reported_term = Some(term);
                }
                Some(Err(e)) => {
                    // Refused for good (e.g. the admin no longer knows the
                    // cluster): retrying this term would only repeat it.
                    tracing::warn!(term, error = %e, "the admin refused this node's leadership report");
                    reported_term = Some(term);
                }
                None => {}
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}
