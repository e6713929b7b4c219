//! gRPC over mutual TLS: what a server requires and what a client presents,
//! both from one process's [`TlsPem`] (its certificate, key and CA).
//!
//! Every gRPC server of a TLS deployment (nodes and admin) requires a
//! client certificate that chains to the CA: peers' Raft traffic,
//! forwarding, and admin↔node calls are mutually authenticated. A client
//! checks the server's certificate against the CA and the name or IP it
//! dialled.

use ravel_runtime::tls::TlsPem;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A server that asks every client for a certificate signed by the CA and
/// refuses the connection without one. Checked here, by building it once,
/// so a server never starts and then fails over its TLS settings.
pub fn server_config(pem: &TlsPem) -> Result<ServerTlsConfig, tonic::transport::Error> {
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pem.cert, &pem.key))
        .client_ca_root(Certificate::from_pem(&pem.ca))
        .client_auth_optional(false);
    tonic::transport::Server::builder().tls_config(config.clone())?;
    Ok(config)
}

/// A client that presents this process's certificate and trusts only the
/// CA's.
pub fn client_config(pem: &TlsPem) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem.ca))
        .identity(Identity::from_pem(&pem.cert, &pem.key))
}
