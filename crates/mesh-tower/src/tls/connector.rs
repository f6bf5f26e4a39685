use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_ca::tls::{SpiffeServerVerifier, client_config};
use mesh_ca::{CredentialStore, SvidError, svid_id};
use mesh_core::identity::SpiffeId;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

use super::ALPN_PROTOCOLS;

/// Why an outbound mTLS connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The server's certificate was refused. Secure naming failures (a valid
    /// SVID of an identity not allowed for the destination) are
    /// [`SvidError::NotAllowed`].
    #[error("server certificate refused: {0}")]
    ServerRejected(SvidError),
    /// The server ended the handshake with an alert, most often because it
    /// refused our certificate.
    #[error("the server refused the handshake: {0:?}")]
    RefusedByServer(rustls::AlertDescription),
    /// Another TLS failure.
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The handshake took longer than allowed.
    #[error("the TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("I/O error: {0}")]
    Io(io::Error),
}

impl ConnectError {
    fn from_handshake(e: io::Error) -> Self {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return Self::Io(e);
        };
        if let Some(svid) = SvidError::from_rustls(tls) {
            return Self::ServerRejected(svid.clone());
        }
        match tls {
            rustls::Error::AlertReceived(alert) => Self::RefusedByServer(*alert),
            other => Self::Handshake(other.clone()),
        }
    }
}

/// The client side of mesh mTLS: presents the workload's current SVID and
/// accepts only a server whose SPIFFE ID is allowed for the destination.
///
/// Cheap to clone (clones share one cache). The rustls `ClientConfig` of
/// each allowed-identity set is built once and reused: it holds no
/// certificate or bundle of its own (both are read from the store at every
/// handshake), so rotation still applies at the next connection. TLS session
/// resumption stays off: a resumed session would skip the verification of
/// the server against the current bundle and allow list.
#[derive(Debug, Clone)]
pub struct MeshConnector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: CredentialStore,
    alpn: Vec<Vec<u8>>,
    handshake_timeout: Duration,
    /// Configs by allowed-identity set; swapped whole when one is added.
    configs: ArcSwap<HashMap<Box<[SpiffeId]>, Arc<ClientConfig>>>,
}

/// Past this many allowed-identity sets the cache starts over, so that a
/// churning registry cannot grow it without bound.
const MAX_CACHED_CONFIGS: usize = 256;

impl MeshConnector {
    /// A connector offering ALPN h2 and http/1.1.
    pub fn new(store: CredentialStore) -> Self {
        Self::build(
            store,
            ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect(),
            Duration::from_secs(10),
        )
    }

    fn build(store: CredentialStore, alpn: Vec<Vec<u8>>, handshake_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                alpn,
                handshake_timeout,
                configs: ArcSwap::default(),
            }),
        }
    }

    /// Replaces the ALPN protocols offered (e.g. only `h2` for gRPC, or none
    /// for opaque TCP).
    pub fn with_alpn(self, protocols: Vec<Vec<u8>>) -> Self {
        Self::build(
            self.inner.store.clone(),
            protocols,
            self.inner.handshake_timeout,
        )
    }

    /// The longest a TLS handshake may take. Default 10 s.
    pub fn with_handshake_timeout(self, timeout: Duration) -> Self {
        Self::build(self.inner.store.clone(), self.inner.alpn.clone(), timeout)
    }

    /// The config verifying servers against `allowed`: cached, else built
    /// and cached.
    fn config(&self, allowed: &[SpiffeId]) -> Result<Arc<ClientConfig>, rustls::Error> {
        if let Some(c) = self.inner.configs.load().get(allowed) {
            return Ok(c.clone());
        }
        let verifier = SpiffeServerVerifier::new(self.inner.store.clone(), allowed.to_vec());
        let mut config = client_config(&self.inner.store, verifier)?;
        config.alpn_protocols = self.inner.alpn.clone();
        // One config now serves many connections: without this, rustls
        // would keep tickets and resume sessions between them.
        config.resumption = Resumption::disabled();
        let config = Arc::new(config);
        self.inner.configs.rcu(|map| {
            let mut map = if map.len() >= MAX_CACHED_CONFIGS {
                HashMap::new()
            } else {
                HashMap::clone(map)
            };
            map.insert(allowed.into(), config.clone());
            map
        });
        Ok(config)
    }

    /// Runs the mTLS handshake over `io`. The server must present a valid
    /// X.509-SVID whose SPIFFE ID is one of `allowed` (secure naming: the
    /// service accounts of the workloads behind the destination).
    ///
    /// No SNI is sent: the server is identified by its SPIFFE ID.
    pub async fn connect<IO>(
        &self,
        io: IO,
        allowed: &[SpiffeId],
    ) -> Result<MeshClientStream<IO>, ConnectError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connect_with_sni(
            io,
            allowed,
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into()),
        )
        .await
    }

    /// [`connect`](Self::connect), sending `server_name` as SNI (for servers
    /// that route on it). The name is not used to verify the server.
    pub async fn connect_with_sni<IO>(
        &self,
        io: IO,
        allowed: &[SpiffeId],
        server_name: ServerName<'static>,
    ) -> Result<MeshClientStream<IO>, ConnectError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.config(allowed).map_err(ConnectError::Handshake)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let timeout = self.inner.handshake_timeout;
        let stream = tokio::time::timeout(timeout, connector.connect(server_name, io))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
            .map_err(ConnectError::from_handshake)?;
        let peer = {
            let (_, conn) = stream.get_ref();
            let leaf = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or(ConnectError::ServerRejected(SvidError::NoCertificate))?;
            svid_id(leaf).map_err(ConnectError::ServerRejected)?
        };
        Ok(MeshClientStream { stream, peer })
    }
}

/// An outbound mTLS connection with the server's verified identity.
#[derive(Debug)]
pub struct MeshClientStream<IO> {
    stream: TlsStream<IO>,
    peer: SpiffeId,
}

impl<IO> MeshClientStream<IO> {
    /// The server's verified SPIFFE ID.
    pub fn peer_id(&self) -> &SpiffeId {
        &self.peer
    }

    /// The ALPN protocol agreed, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }

    /// The TLS stream.
    pub fn into_inner(self) -> TlsStream<IO> {
        self.stream
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MeshClientStream<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MeshClientStream<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
