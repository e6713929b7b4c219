//! `ravel-node kill`: a replica leaves for good. The flow of existing
//! deployments: ask the admin who leads the cluster, `Leave` on that leader,
//! `LeaveCluster` on the admin, then delete the data. A node process still
//! running on the directory is stopped (SIGTERM) before its data goes.

use std::path::Path;
use std::time::Duration;

use ravel_proto::node::ravel_node_client::RavelNodeClient;
use ravel_runtime::lock::LockError;
use ravel_transport::retry::{retry, Attempts};
use ravel_transport::{ChannelPool, TransportError};

use crate::config::Credentials;
use tokio::time::Instant;

use crate::admin_link::{AdminLink, AdminLinkError};
use crate::identity::{self, Identity};

/// Longest wait for one `Leave` answer; the leader answers once the
/// membership change is committed.
const LEAVE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KillError {
    #[error("{0} holds no Ravel node identity (identity.json); nothing to remove")]
    NoIdentity(String),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("Leave on the cluster leader: {0}")]
    Leave(#[source] TransportError),
    #[error("asking the admin for the cluster leader: {0}")]
    Leader(#[source] AdminLinkError),
    #[error("LeaveCluster on the admin: {0}")]
    LeaveCluster(#[source] AdminLinkError),
    #[error(
        "leaving the cluster did not finish within {0:?} (the kill timeout); nothing was deleted"
    )]
    Timeout(Duration),
    #[error("node process {pid} did not stop within {waited:?}; its data was kept")]
    StillRunning { pid: i32, waited: Duration },
    #[error("deleting {path}: {source}")]
    Delete {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Removes this replica from its cluster and from the admin's registry
/// (steps 1-3 of `kill`), without touching local data.
pub async fn leave_cluster(
    identity: &Identity,
    creds: &Credentials,
    deadline: Instant,
) -> Result<(), KillError> {
    let pool = ChannelPool::new(creds.channel_options());
    let admin = AdminLink::new(
        identity.admin_addr.clone(),
        pool.clone(),
        creds.admin_token.clone(),
    );
    // `Leave` even when the identity does not say `joined`: a replica that
    // crashed after the group added it, before it recorded the join, is a
    // member all the same (a voter every quorum counts, or a learner).
    // `Leave` of a non-member is a no-op.
    if let Some(cluster_id) = identity.cluster_id.clone().filter(|c| !c.is_empty()) {
        let me = identity.node();
        let (admin, pool, me, cluster_id) = (&admin, &pool, &me, &cluster_id);
        retry(Attempts::until(deadline), || async move {
            let leader = admin
                .cluster_leader(cluster_id, Attempts::until(Instant::now()))
                .await
                .map_err(|e| e.source)?;
            let addr = leader.grpc_address;
            let mut n = RavelNodeClient::new(pool.channel(&addr)?);
            let mut req = tonic::Request::new(me.clone());
            req.set_timeout(LEAVE_CALL_TIMEOUT);
            match tokio::time::timeout(LEAVE_CALL_TIMEOUT, n.leave(req)).await {
                Err(_) => Err(TransportError::Timeout {
                    addr,
                    after: LEAVE_CALL_TIMEOUT,
                }),
                Ok(r) => r
                    .map(|_| ())
                    .map_err(|s| TransportError::from_status(&addr, s)),
            }
        })
        .await
        .map_err(KillError::Leave)?;
    }
    admin
        .leave_cluster(&identity.admin_node(), Attempts::until(deadline))
        .await
        .map_err(KillError::LeaveCluster)?;
    Ok(())
}

/// The whole `kill`: leave, stop a running process, delete the data.
pub async fn kill(dir: &Path, creds: &Credentials, timeout: Duration) -> Result<(), KillError> {
    let identity =
        Identity::load(dir)?.ok_or_else(|| KillError::NoIdentity(dir.display().to_string()))?;
    let started = Instant::now();
    let deadline = started + timeout;
    // The whole of it within the timeout, whatever one call's own timeout.
    tokio::time::timeout_at(deadline, leave_cluster(&identity, creds, deadline))
        .await
        .map_err(|_| KillError::Timeout(timeout))??;
    if let Some(pid) = identity::running_pid(dir)? {
        stop_process(dir, pid, deadline, started).await?;
    }
    std::fs::remove_dir_all(dir).map_err(|source| KillError::Delete {
        path: dir.display().to_string(),
        source,
    })
}

/// SIGTERMs the node process holding `dir` and waits until it has let go
/// of the directory. Whether it still runs is judged by its lock on the
/// directory, not by its pid: a process that exited but was not yet reaped
/// by its parent (a zombie) still has a pid, and no longer holds the lock.
async fn stop_process(
    dir: &Path,
    pid: i32,
    deadline: Instant,
    started: Instant,
) -> Result<(), KillError> {
    if pid as u32 == std::process::id() {
        return Ok(());
    }
    tracing::info!(pid, "stopping the running node process");
    // SAFETY: SIGTERM to the live process that holds the directory's pid
    // lock (checked just before), i.e. the node running on it.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    while identity::running_pid(dir)? == Some(pid) {
        if Instant::now() >= deadline {
            return Err(KillError::StillRunning {
                pid,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
