//! The leader notifier: every time this node becomes leader (each new term)
//! it tells the admin with `UpdateClusterLeader`, retrying until the admin
//! acknowledges or leadership moves on.

use openraft::ServerState;
use ravel_consensus::types::{NodeId, Raft};
use ravel_proto::admin::ravel_cluster_admin_client::RavelClusterAdminClient;
use ravel_proto::admin::Node as AdminNode;
use ravel_transport::retry::Backoff;
use ravel_transport::ChannelPool;
use tokio::sync::watch;

/// Runs until `shutdown` flips to true.
pub async fn run(
    raft: Raft,
    id: NodeId,
    me: AdminNode,
    admin_addr: String,
    pool: ChannelPool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    let mut reported_term: Option<u64> = None;
    let backoff = Backoff::default();
    loop {
        let (is_leader, term) = {
            let m = metrics.borrow_and_update();
            (
                m.state == ServerState::Leader && m.current_leader == Some(id),
                m.current_term,
            )
        };
        if is_leader && reported_term != Some(term) {
            let mut attempt = 0;
            loop {
                let still = {
                    let m = metrics.borrow();
                    m.state == ServerState::Leader && m.current_term == term
                };
                if !still || *shutdown.borrow() {
                    break;
                }
                match report(&pool, &admin_addr, &me).await {
                    Ok(()) => {
                        tracing::info!(term, cluster = %me.cluster_id, "admin acknowledged this node as leader");
                        reported_term = Some(term);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(term, error = %e, "telling the admin about leadership failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.pause(attempt)) => {}
                            _ = shutdown.changed() => {}
                        }
                        attempt += 1;
                    }
                }
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn report(pool: &ChannelPool, admin_addr: &str, me: &AdminNode) -> Result<(), String> {
    let channel = pool.channel(admin_addr).map_err(|e| e.to_string())?;
    let mut client = RavelClusterAdminClient::new(channel);
    let mut req = tonic::Request::new(me.clone());
    req.set_timeout(std::time::Duration::from_secs(2));
    client
        .update_cluster_leader(req)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}
