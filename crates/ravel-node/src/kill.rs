//! `ravel-node kill`: a replica leaves for good. The flow of existing
//! deployments: ask the admin who leads the cluster, `Leave` on that leader,
//! `LeaveCluster` on the admin, then delete the data. A node process still
//! running on the directory is stopped (SIGTERM) before its data goes.

use std::path::Path;
use std::time::Duration;

use ravel_proto::admin::ravel_cluster_admin_client::RavelClusterAdminClient;
use ravel_proto::admin::Cluster;
use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_transport::retry::{retry, Backoff};
use ravel_transport::{ChannelPool, TransportError};
use tokio::time::Instant;

use crate::identity::{self, Identity};

#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error("{0} holds no Ravel node identity (identity.json); nothing to remove")]
    NoIdentity(String),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        #[source]
        source: TransportError,
    },
    #[error("node process {pid} did not stop within {secs}s; its data was kept")]
    StillRunning { pid: i32, secs: u64 },
    #[error("deleting {path}: {source}")]
    Delete {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Removes this replica from its cluster and from the admin's registry
/// (steps 1-3 of `kill`), without touching local data.
pub async fn leave_cluster(identity: &Identity, deadline: Instant) -> Result<(), KillError> {
    let pool = ChannelPool::default();
    let admin = identity.admin_addr.clone();
    let cluster_id = identity.cluster_id.clone().unwrap_or_default();
    let backoff = Backoff::default();
    let me_admin = identity.admin_node();
    let me = identity.node();
    if identity.joined {
        retry(&backoff, Some(deadline), || {
            let (pool, admin, me, cluster_id) =
                (pool.clone(), admin.clone(), me.clone(), cluster_id.clone());
            async move {
                let mut a = RavelClusterAdminClient::new(pool.channel(&admin)?);
                let leader = a
                    .get_cluster_leader(Cluster {
                        cluster_id,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| TransportError::from_status(&admin, s))?
                    .into_inner();
                let mut n = RavelNodeClient::new(pool.channel(&leader.grpc_address)?);
                n.leave(me)
                    .await
                    .map_err(|s| TransportError::from_status(&leader.grpc_address, s))?;
                Ok(())
            }
        })
        .await
        .map_err(|source| KillError::Step {
            step: "Leave on the cluster leader",
            source,
        })?;
    }
    retry(&backoff, Some(deadline), || {
        let (pool, admin, me) = (pool.clone(), admin.clone(), me_admin.clone());
        async move {
            let mut a = RavelClusterAdminClient::new(pool.channel(&admin)?);
            a.leave_cluster(me)
                .await
                .map_err(|s| TransportError::from_status(&admin, s))?;
            Ok(())
        }
    })
    .await
    .map_err(|source| KillError::Step {
        step: "LeaveCluster on the admin",
        source,
    })?;
    Ok(())
}

/// The whole `kill`: leave, stop a running process, delete the data.
pub async fn kill(dir: &Path, timeout: Duration) -> Result<(), KillError> {
    let identity =
        Identity::load(dir)?.ok_or_else(|| KillError::NoIdentity(dir.display().to_string()))?;
    let deadline = Instant::now() + timeout;
    leave_cluster(&identity, deadline).await?;
    if let Some(pid) = identity::read_pid(dir) {
        stop_process(pid, deadline).await?;
    }
    std::fs::remove_dir_all(dir).map_err(|source| KillError::Delete {
        path: dir.display().to_string(),
        source,
    })
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

async fn stop_process(pid: i32, deadline: Instant) -> Result<(), KillError> {
    if pid as u32 == std::process::id() || !alive(pid) {
        return Ok(());
    }
    tracing::info!(pid, "stopping the running node process");
    // SAFETY: sending SIGTERM to the pid recorded by the node process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    while alive(pid) {
        if Instant::now() >= deadline {
            return Err(KillError::StillRunning { pid, secs: 0 });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
