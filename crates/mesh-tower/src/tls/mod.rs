//! Mesh mTLS on rustls (ring provider): an acceptor for inbound connections
//! with the STRICT / PERMISSIVE / DISABLE modes of Istio's
//! `PeerAuthentication`, a connector for outbound ones that enforces secure
//! naming, and [`spawn_server`], which serves an acceptor's connections
//! with the one server module ([`crate::server`]) and hands each request
//! the caller's verified SPIFFE ID as a [`PeerIdentity`] extension.
//!
//! Peers are verified by `mesh-ca`'s SPIFFE verifiers
//! ([`mesh_ca::tls::SpiffeClientVerifier`], [`mesh_ca::tls::SpiffeServerVerifier`]):
//! the chain against the trust bundle of the peer's own trust domain, and the
//! X.509-SVID rules on the leaf. Certificates and bundles are read from a
//! [`CredentialStore`] at every handshake, so
//! certificate and root rotation need no restart and drop no connection.
//!
//! ```no_run
//! # async fn run(store: mesh_ca::CredentialStore) -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_tower::tls::{MeshAcceptor, MeshConnector, PeerIdentity, TlsMode, spawn_server};
//!
//! // Server: STRICT mTLS; handlers read the caller's identity.
//! let acceptor = MeshAcceptor::new(&store, TlsMode::Strict)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let service = tower::service_fn(|req: http::Request<mesh_tower::body::BoxBody>| async move {
//!     let caller = req.extensions().get::<PeerIdentity>().and_then(|p| p.spiffe_id().cloned());
//!     Ok::<_, std::convert::Infallible>(http::Response::new(mesh_tower::body::full(format!("{caller:?}"))))
//! });
//! let server = spawn_server(listener, acceptor, service)?;
//!
//! // Client: only `sa/backend` may answer for this destination.
//! let allowed = ["spiffe://cluster.local/ns/default/sa/backend".parse()?];
//! let tcp = tokio::net::TcpStream::connect(server.local_addr()).await?;
//! let tls = MeshConnector::new(store).connect(tcp, &allowed).await?;
//! println!("connected to {}", tls.peer_id());
//! # Ok(()) }
//! ```

mod acceptor;
mod connector;
mod hello;
mod rewind;
mod serve;

pub use crate::server::ServerHandle;
pub use acceptor::{AcceptError, MeshAcceptor, MeshStream};
pub use connector::{ConnectError, MeshClientStream, MeshConnector};
pub use hello::{MAX_CLIENT_HELLO, read_client_hello};
pub use mesh_ca::tls::{ClientAuth, SpiffeClientVerifier, SpiffeServerVerifier};
pub use mesh_ca::{CredentialStore, Credentials, SvidError, TrustBundle, TrustBundleSet};
pub use rewind::Rewind;
pub use serve::{BoxError, PeerIdentity, spawn_server};

/// The ALPN protocols offered and accepted, most preferred first.
pub const ALPN_PROTOCOLS: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Inbound mTLS mode of a port, as Istio's `PeerAuthentication` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Only mTLS; plaintext connections are refused.
    Strict,
    /// mTLS and plaintext on the same port, told apart by the first byte
    /// (a TLS handshake record starts with 0x16).
    Permissive,
    /// Plaintext only.
    Disable,
}
