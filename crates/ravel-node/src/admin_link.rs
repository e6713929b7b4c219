//! Every call a node makes to the cluster admin (`RavelClusterAdmin`), in
//! one place: registration, "who leads my cluster", "my cluster is ready",
//! "I lead now", "I am leaving". Each call has a per-attempt timeout, and
//! retries go through the one retry policy, so none of them can hang a
//! caller beyond its deadline or its cancel signal.

use std::time::Duration;

use ravel_proto::admin::ravel_cluster_admin_client::RavelClusterAdminClient;
use ravel_proto::admin::{Cluster, Node as AdminNode};
use ravel_runtime::tls::Token;
use ravel_transport::retry::{retry, Attempts};
use ravel_transport::{ChannelPool, TransportError};
use tonic::transport::Channel;

/// Longest wait for one answer from the admin. Registration and leader
/// reports are small; a slow admin is retried rather than waited on.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A call to the admin that did not succeed (within its attempts).
#[derive(Debug, thiserror::Error)]
#[error("admin at {admin}: {source}")]
pub struct AdminLinkError {
    pub admin: String,
    #[source]
    pub source: TransportError,
}

impl AdminLinkError {
    /// The gRPC code the admin answered with, if it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        self.source.code()
    }
}

/// The node's connection to its admin.
#[derive(Debug, Clone)]
pub struct AdminLink {
    addr: String,
    pool: ChannelPool,
    /// Sent as `authorization: Bearer ...` on every call, when the admin
    /// requires a token.
    token: Option<Token>,
}

impl AdminLink {
    pub fn new(addr: impl Into<String>, pool: ChannelPool, token: Option<Token>) -> Self {
        Self {
            addr: addr.into(),
            pool,
            token,
        }
    }

    fn client(&self) -> Result<RavelClusterAdminClient<Channel>, TransportError> {
        Ok(RavelClusterAdminClient::new(self.pool.channel(&self.addr)?))
    }

    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        req.set_timeout(CALL_TIMEOUT);
        if let Some(token) = &self.token {
            if let Ok(value) = token.bearer().parse() {
                req.metadata_mut().insert("authorization", value);
            }
        }
        req
    }

    fn status(&self) -> impl Fn(tonic::Status) -> TransportError + '_ {
        move |s| TransportError::from_status(&self.addr, s)
    }

    /// Runs `call` under `attempts`, retrying what may succeed later, with
    /// each attempt bounded by [`CALL_TIMEOUT`].
    async fn call<T, F, Fut>(&self, attempts: Attempts, mut call: F) -> Result<T, AdminLinkError>
    where
        F: FnMut(RavelClusterAdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        retry(attempts, || {
            let client = self.client();
            let fut = client.map(&mut call);
            async move {
                let fut = fut?;
                match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                    Err(_) => Err(TransportError::Timeout {
                        addr: self.addr.clone(),
                        after: CALL_TIMEOUT,
                    }),
                    Ok(r) => r.map_err(self.status()),
                }
            }
        })
        .await
        .map_err(|source| AdminLinkError {
            admin: self.addr.clone(),
            source,
        })
    }

    /// Registers this node: founds a new cluster (`JoinAsClusterLeader`) or
    /// is assigned to one (`JoinExistingCluster`).
    pub async fn register(
        &self,
        me: &AdminNode,
        found: bool,
        attempts: Attempts,
    ) -> Result<Cluster, AdminLinkError> {
        self.call(attempts, |mut c| {
            let req = self.request(me.clone());
            async move {
                let r = if found {
                    c.join_as_cluster_leader(req).await
                } else {
                    c.join_existing_cluster(req).await
                };
                r.map(|r| r.into_inner())
            }
        })
        .await
    }

    /// The admin's view of the leader of `cluster_id` (`GetClusterLeader`).
    pub async fn cluster_leader(
        &self,
        cluster_id: &str,
        attempts: Attempts,
    ) -> Result<AdminNode, AdminLinkError> {
        self.call(attempts, |mut c| {
            let req = self.request(Cluster {
                cluster_id: cluster_id.to_string(),
                ..Default::default()
            });
            async move { c.get_cluster_leader(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Tells the admin this new cluster is ready to take keys
    /// (`InitiateDataRelocation`).
    pub async fn cluster_ready(
        &self,
        cluster: &Cluster,
        attempts: Attempts,
    ) -> Result<(), AdminLinkError> {
        self.call(attempts, |mut c| {
            let req = self.request(cluster.clone());
            async move { c.initiate_data_relocation(req).await.map(|_| ()) }
        })
        .await
    }

    /// Tells the admin this node leads its cluster (`UpdateClusterLeader`).
    pub async fn report_leader(
        &self,
        me: &AdminNode,
        term: u64,
        attempts: Attempts,
    ) -> Result<(), AdminLinkError> {
        self.call(attempts, |mut c| {
            let mut req = self.request(me.clone());
            req.metadata_mut().insert(
                ravel_proto::metadata::TERM,
                term.to_string().parse().expect("digits are ASCII"),
            );
            async move { c.update_cluster_leader(req).await.map(|_| ()) }
        })
        .await
    }

    /// Deregisters this replica for good (`LeaveCluster`).
    pub async fn leave_cluster(
        &self,
        me: &AdminNode,
        attempts: Attempts,
    ) -> Result<(), AdminLinkError> {
        self.call(attempts, |mut c| {
            let req = self.request(me.clone());
            async move { c.leave_cluster(req).await.map(|_| ()) }
        })
        .await
    }
}
