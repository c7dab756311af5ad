//! How a process dials runner-storage nodes, and how a node checks who
//! dialled it: TLS (rustls; mutual between peers) and the bearer token.
//!
//! One [`Dialer`] serves every outgoing connection of a process (Raft
//! traffic, forwarded calls, the client), so TLS and the token are set up in
//! one place. On the server side, [`require_token`] guards the client and
//! admin services and [`require_peer`] the Raft service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::error::{Error, Result};
use crate::limits::CONNECT_TIMEOUT;

pub mod identity;
pub mod pool;
pub mod status;

/// PEM files of a node's TLS identity and of the cluster's CA.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate: peers and servers must be signed by it.
    pub ca: PathBuf,
    /// This node's certificate (its SANs must name its address).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", path.display())))
}

impl TlsFiles {
    /// The server side: this node's identity; peers' certificates are
    /// checked against the CA when presented (clients need not present one).
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn server_config(&self) -> Result<ServerTlsConfig> {
        let identity = Identity::from_pem(read(&self.cert, "tls.cert")?, read(&self.key, "tls.key")?);
        Ok(ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read(&self.ca, "tls.ca")?))
            .client_auth_optional(true))
    }

    /// The client side of node-to-node traffic: trust the CA, present this node's identity.
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn peer_client_config(&self) -> Result<ClientTlsConfig> {
        let identity = Identity::from_pem(read(&self.cert, "tls.cert")?, read(&self.key, "tls.key")?);
        Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca, "tls.ca")?)).identity(identity))
    }
}

/// Dials nodes: plaintext or TLS, with or without a bearer token.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    authorization: Option<MetadataValue<Ascii>>,
    /// A node's cluster, sent on every call it makes to other nodes.
    identity: Option<identity::ClusterIdentity>,
}

impl Dialer {
    /// A dialer with TLS settings (none for plaintext) and a token (none for no auth).
    ///
    /// # Errors
    /// When the token is not valid in an HTTP header.
    pub fn new(tls: Option<ClientTlsConfig>, token: Option<&str>) -> Result<Self> {
        let authorization = token
            .map(|token| format!("Bearer {token}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| Error::Config("the auth token must be printable ASCII".into()))?;
        Ok(Dialer { tls, authorization, identity: None })
    }

    /// This dialer, also sending `identity` on every call (a node's own).
    pub fn with_identity(mut self, identity: identity::ClusterIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// A client-side TLS config that trusts the CA in `ca_path` (no client identity).
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn client_tls(ca_path: &Path) -> Result<ClientTlsConfig> {
        Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca_path, "TLS CA")?)))
    }

    /// Whether this dialer uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A lazily connecting channel to `address` (`host:port`).
    ///
    /// # Errors
    /// When the address is not a valid URI or the TLS settings are rejected.
    pub fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect_lazy())
    }

    /// Adds the bearer token, if any, to `request`, and the node's cluster id.
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        if let Some(authorization) = &self.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        if let Some(identity) = &self.identity {
            identity.stamp(request.metadata_mut());
        }
    }
}

/// Equal-time comparison, so a token cannot be guessed byte by byte from timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// An interceptor that requires `authorization: Bearer <token>` when `token` is set.
pub fn require_token(token: Option<String>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected = token.map(|token| format!("Bearer {token}"));
    move |request: Request<()>| {
        let Some(expected) = &expected else { return Ok(request) };
        match request.metadata().get("authorization").map(|value| value.as_bytes()) {
            Some(presented) if constant_time_eq(presented, expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("the bearer token is not valid")),
            None => Err(Status::unauthenticated("this cluster requires a bearer token (authorization: Bearer …)")),
        }
    }
}

/// An interceptor for node-to-node traffic: with TLS on, the caller must have
/// presented a certificate signed by the cluster CA (rustls verified it);
/// with a token configured, it must also carry the token.
pub fn require_peer(tls: bool, token: Option<String>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let token_check = require_token(token);
    move |request: Request<()>| {
        if tls && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::permission_denied("Raft traffic needs a certificate of this cluster's CA"));
        }
        token_check(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_required_and_checked() {
        let check = require_token(Some("s3cret".into()));
        let mut good = Request::new(());
        good.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(check(good).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut().insert("authorization", "Bearer s3creT".parse().unwrap());
        assert_eq!(check(bad).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(check(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(require_token(None)(Request::new(())).is_ok());
    }

    #[test]
    fn raft_traffic_without_certificate_is_refused_under_tls() {
        let check = require_peer(true, None);
        assert_eq!(check(Request::new(())).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(require_peer(false, None)(Request::new(())).is_ok());
    }
}
