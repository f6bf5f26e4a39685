use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use mesh_ca::tls::{ClientAuth, server_config};
use mesh_ca::{CredentialStore, SvidError, svid_id};
use mesh_core::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use super::rewind::Rewind;
use super::{ALPN_PROTOCOLS, PeerIdentity, TlsMode};

/// The first byte of every TLS record carrying a handshake (ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why an inbound connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// STRICT mode and the client spoke plaintext.
    #[error("plaintext connection refused: mTLS is STRICT on this port")]
    PlaintextRefused,
    /// The client did not present a certificate.
    #[error("the client presented no certificate; mTLS requires one")]
    NoClientCertificate,
    /// The client's certificate is not an acceptable X.509-SVID.
    #[error("client certificate refused: {0}")]
    PeerRejected(SvidError),
    /// Another TLS failure (protocol, ALPN, ciphers...).
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The client closed the connection before a byte was read.
    #[error("the client closed the connection before sending anything")]
    Closed,
    /// The handshake took longer than allowed.
    #[error("the TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("I/O error: {0}")]
    Io(io::Error),
}

impl AcceptError {
    fn from_handshake(e: io::Error) -> Self {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return Self::Io(e);
        };
        if let Some(svid) = SvidError::from_rustls(tls) {
            return Self::PeerRejected(svid.clone());
        }
        match tls {
            rustls::Error::NoCertificatesPresented => Self::NoClientCertificate,
            other => Self::Handshake(other.clone()),
        }
    }
}

/// The server side of mesh mTLS: applies the port's mode, terminates TLS
/// with the workload's current SVID and verifies the client's.
///
/// The rustls config is built once; certificates and bundles are read from
/// the [`CredentialStore`] at each handshake.
#[derive(Clone)]
pub struct MeshAcceptor {
    tls: tokio_rustls::TlsAcceptor,
    mode: TlsMode,
    detect_timeout: Duration,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for MeshAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshAcceptor")
            .field("mode", &self.mode)
            .field("detect_timeout", &self.detect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl MeshAcceptor {
    /// An acceptor for `mode`, presenting the store's SVID and offering ALPN
    /// h2 and http/1.1, and the TCP peer exchange
    /// ([`crate::telemetry::exchange`]).
    pub fn new(store: &CredentialStore, mode: TlsMode) -> Result<Self, rustls::Error> {
        let mut config = server_config(store, ClientAuth::Required)?;
        // The TCP peer exchange first: only a mesh TCP tunnel offers it,
        // and it offers http/1.1 beside it for servers that predate it.
        config.alpn_protocols = std::iter::once(crate::telemetry::exchange::PEER_EXCHANGE_ALPN)
            .chain(ALPN_PROTOCOLS.iter().copied())
            .map(<[u8]>::to_vec)
            .collect();
        Ok(Self {
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            mode,
            detect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
        })
    }

    /// In PERMISSIVE mode, how long to wait for the client's first byte
    /// before treating the connection as plaintext (protocols where the
    /// server speaks first, such as MySQL, send nothing). Default 1 s.
    pub fn with_detect_timeout(mut self, timeout: Duration) -> Self {
        self.detect_timeout = timeout;
        self
    }

    /// The longest a TLS handshake may take. Default 10 s.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The port's mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Accepts one connection according to the mode.
    pub async fn accept<IO>(&self, mut io: IO) -> Result<MeshStream<IO>, AcceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        if self.mode == TlsMode::Disable {
            return Ok(MeshStream::plaintext(Rewind::new(Bytes::new(), io)));
        }
        let wait = match self.mode {
            TlsMode::Permissive => self.detect_timeout,
            _ => self.handshake_timeout,
        };
        let mut first = [0u8; 1];
        let read = tokio::time::timeout(wait, io.read(&mut first)).await;
        let first = match read {
            Ok(Ok(0)) => return Err(AcceptError::Closed),
            Ok(Ok(_)) => first[0],
            Ok(Err(e)) => return Err(AcceptError::Io(e)),
            Err(_) if self.mode == TlsMode::Permissive => {
                // Nothing yet: a server-speaks-first protocol in plaintext.
                return Ok(MeshStream::plaintext(Rewind::new(Bytes::new(), io)));
            }
            Err(_) => return Err(AcceptError::Timeout(wait)),
        };
        let io = Rewind::new(Bytes::copy_from_slice(&[first]), io);
        if first != TLS_HANDSHAKE_RECORD {
            return match self.mode {
                TlsMode::Strict => Err(AcceptError::PlaintextRefused),
                _ => Ok(MeshStream::plaintext(io)),
            };
        }
        let stream = tokio::time::timeout(self.handshake_timeout, self.tls.accept(io))
            .await
            .map_err(|_| AcceptError::Timeout(self.handshake_timeout))?
            .map_err(AcceptError::from_handshake)?;
        let peer = {
            let (_, conn) = stream.get_ref();
            let leaf = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or(AcceptError::NoClientCertificate)?;
            // Verified during the handshake; this only reads the URI SAN back.
            let id = svid_id(leaf).map_err(AcceptError::PeerRejected)?;
            // The SNI travels with the identity, for `connection.sni`.
            PeerIdentity::mtls_with_sni(id, conn.server_name())
        };
        Ok(MeshStream {
            inner: Inner::Mtls(Box::new(stream)),
            peer,
        })
    }
}

/// An accepted inbound connection: mTLS with a verified peer, or plaintext
/// where the mode allows it.
#[derive(Debug)]
pub struct MeshStream<IO> {
    inner: Inner<IO>,
    peer: PeerIdentity,
}

#[derive(Debug)]
enum Inner<IO> {
    Mtls(Box<TlsStream<Rewind<IO>>>),
    Plaintext(Rewind<IO>),
}

impl<IO> MeshStream<IO> {
    fn plaintext(io: Rewind<IO>) -> Self {
        Self {
            inner: Inner::Plaintext(io),
            peer: PeerIdentity::plaintext(),
        }
    }

    /// Who the peer is: its verified SPIFFE ID, or plaintext.
    pub fn peer_identity(&self) -> &PeerIdentity {
        &self.peer
    }

    /// The verified SPIFFE ID of the peer, if the connection is mTLS.
    pub fn peer_id(&self) -> Option<&SpiffeId> {
        self.peer.spiffe_id()
    }

    /// The ALPN protocol agreed, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.inner {
            Inner::Mtls(s) => s.get_ref().1.alpn_protocol(),
            Inner::Plaintext(_) => None,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MeshStream<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Mtls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Plaintext(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MeshStream<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Mtls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Plaintext(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Mtls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Plaintext(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Mtls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Plaintext(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
