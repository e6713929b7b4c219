//! TLS settings and bearer tokens, shared by nodes, the admin and the CLI.
//!
//! - [`TlsFiles`]: the `[tls]` section of a node's or the admin's config
//!   (certificate, key, CA), loaded and checked once into [`TlsPem`], whose
//!   errors name the file and what is wrong with it;
//! - [`https_listener`]: the admin's HTTP API over TLS (rustls), as an
//!   `axum` listener whose handshakes run off the accept loop;
//! - [`Token`]: the bearer token the admin requires on its HTTP API and
//!   its gRPC service, and that nodes and the CLI present.
//!
//! gRPC's own TLS (mutual, between nodes and admin) is built from
//! [`TlsPem`] by `ravel-transport`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::config::ConfigError;

/// Where a process finds its certificate, its key and the CA it trusts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This process's certificate chain (PEM). Served to clients, and
    /// presented as the client certificate on connections it opens, so it
    /// must allow both uses (no extended key usage, or both `serverAuth`
    /// and `clientAuth`), and name every address peers dial it by.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates (PEM) that peers' certificates must chain to.
    pub ca: PathBuf,
}

/// The PEM text of [`TlsFiles`], checked to hold what each file must.
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsPem").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The certificates in PEM text `pem` read from `path`: at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| invalid(path, format!("holds no usable PEM private key: {e}")))
}

impl TlsFiles {
    /// Reads the three files and checks that each holds what it must.
    pub fn load(&self) -> Result<TlsPem, TlsError> {
        let pem = TlsPem {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            ca: read(&self.ca)?,
        };
        certificates(&self.cert, &pem.cert)?;
        private_key(&self.key, &pem.key)?;
        certificates(&self.ca, &pem.ca)?;
        // The key must belong to the certificate.
        self.server_config(&pem)?;
        Ok(pem)
    }

    /// A rustls server configuration for HTTPS (HTTP/1.1): this process's
    /// certificate, no client certificate asked for (the HTTP API
    /// authenticates with a bearer token).
    fn server_config(&self, pem: &TlsPem) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                certificates(&self.cert, &pem.cert)?,
                private_key(&self.key, &pem.key)?,
            )
            .map_err(|e| {
                invalid(
                    &self.key,
                    format!("does not match {}: {e}", self.cert.display()),
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The `[tls]` setting of a config, loaded: `None` when TLS is off; a
/// file that cannot be used is a [`ConfigError`] naming `tls`.
pub fn load_tls_setting(files: Option<&TlsFiles>) -> Result<Option<TlsPem>, ConfigError> {
    files
        .map(|f| {
            f.load()
                .map_err(|e| ConfigError::invalid("tls", e.to_string()))
        })
        .transpose()
}

/// A token-file setting (`field`), loaded: `None` when unset.
pub fn load_token_setting(field: &str, path: Option<&Path>) -> Result<Option<Token>, ConfigError> {
    path.map(|p| Token::from_file(p).map_err(|e| ConfigError::invalid(field, e.to_string())))
        .transpose()
}

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An `axum` listener that serves TLS on `listener`. Handshakes run on
/// tasks of their own, so a slow or silent client holds up no other; a
/// failed handshake is logged at debug and dropped.
/// `pem` is what [`TlsFiles::load`] read from `tls` (named in errors).
pub fn https_listener(
    listener: TcpListener,
    tls: &TlsFiles,
    pem: &TlsPem,
) -> Result<HttpsListener, TlsError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config(pem)?));
    let local = listener
        .local_addr()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // rather than spin.
                        tracing::warn!(error = %e, "accepting an HTTPS connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(HttpsListener { rx, local })
}

/// See [`https_listener`].
pub struct HttpsListener {
    rx: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A bearer token: the secret the admin requires and its callers present.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// The token in `path`: its content without surrounding whitespace; at
    /// least 16 characters, printable ASCII (it travels in a header).
    pub fn from_file(path: &Path) -> Result<Token, TlsError> {
        let text = read(path)?;
        let text = String::from_utf8(text).map_err(|_| invalid(path, "is not UTF-8 text"))?;
        Token::new(text.trim()).map_err(|reason| invalid(path, reason))
    }

    pub fn new(token: &str) -> Result<Token, &'static str> {
        if token.len() < 16 {
            return Err("a token must have at least 16 characters");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a token must be printable ASCII without spaces");
        }
        Ok(Token(token.to_string()))
    }

    /// The `Authorization` header's value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Whether an `Authorization` header's value carries this token. The
    /// comparison takes the same time wherever the first difference is.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let want = self.0.as_bytes();
        if given.len() != want.len() {
            return false;
        }
        given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_admits_only_its_own_bearer_header() {
        let t = Token::new("0123456789abcdef-secret").unwrap();
        assert!(t.admits(Some(t.bearer().as_bytes())));
        assert!(!t.admits(None));
        assert!(!t.admits(Some(b"Bearer 0123456789abcdef-secreT")));
        assert!(!t.admits(Some(b"Bearer 0123456789abcdef-secret2")));
        assert!(!t.admits(Some(b"Basic 0123456789abcdef-secret")));
        assert!(!t.admits(Some(b"0123456789abcdef-secret")));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(Token::new("short").is_err());
        assert!(Token::new("0123456789 abcdef").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  0123456789abcdef-secret\n").unwrap();
        let t = Token::from_file(&path).unwrap();
        assert!(t.admits(Some(b"Bearer 0123456789abcdef-secret")));
        std::fs::write(&path, "tiny\n").unwrap();
        let e = Token::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[test]
    fn tls_files_that_hold_the_wrong_thing_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("cert.pem"), "not a certificate").unwrap();
        std::fs::write(p("key.pem"), "").unwrap();
        std::fs::write(p("ca.pem"), "").unwrap();
        let files = TlsFiles {
            cert: p("cert.pem"),
            key: p("key.pem"),
            ca: p("ca.pem"),
        };
        let e = files.load().unwrap_err().to_string();
        assert!(
            e.contains("cert.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing = TlsFiles {
            cert: p("absent.pem"),
            ..files
        };
        let e = missing.load().unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("absent.pem"), "{e}");
    }
}
