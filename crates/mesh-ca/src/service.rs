//! The signing service: Istio's `IstioCertificateService/CreateCertificate`
//! over gRPC and TLS.
//!
//! A caller is authenticated either by its current X.509-SVID (mTLS, for
//! renewals) or, for a first certificate, by a single-use join token sent as
//! `authorization: Bearer <token>`. The certificate is always issued for the
//! authenticated identity; the CSR contributes only its key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use crate::authority::CertificateAuthority;
use crate::credentials::CredentialStore;
use crate::error::CaError;
use crate::manager::{CertManager, LocalSigner, ManagerConfig, ManagerError};
use crate::metrics;
use crate::svid::svid_id;
use crate::tls::{ClientAuth, server_config};
use crate::tokens::{TokenError, TokenStore};

/// The generated protocol types and gRPC stubs of `istio.v1.auth`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod proto {
    tonic::include_proto!("istio.v1.auth");
}

use proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use proto::{IstioCertificateRequest, IstioCertificateResponse};

/// The CA's own serving identity, in its trust domain:
/// `spiffe://<td>/ns/mesh-system/sa/mesh-ca`.
pub fn ca_identity(ca: &CertificateAuthority) -> Result<SpiffeId, CaError> {
    Ok(crate::ca_id(ca.trust_domain()))
}

/// Who is on the other end of a connection to the CA.
#[derive(Debug, Clone)]
pub struct CaPeer {
    /// The client's verified SPIFFE ID, if it presented an SVID.
    pub id: Option<SpiffeId>,
    /// The client's address.
    pub remote: SocketAddr,
}

/// A TLS connection to the CA, carrying its [`CaPeer`] into each request.
#[derive(Debug)]
pub struct CaConn {
    stream: TlsStream<TcpStream>,
    peer: CaPeer,
}

impl Connected for CaConn {
    type ConnectInfo = CaPeer;

    fn connect_info(&self) -> CaPeer {
        self.peer.clone()
    }
}

impl AsyncRead for CaConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CaConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<ArcSwap<CertificateAuthority>>,
    tokens: TokenStore,
}

impl CaService {
    /// A service signing with `ca` and redeeming tokens from `tokens`.
    pub fn new(ca: Arc<CertificateAuthority>, tokens: TokenStore) -> Self {
        Self {
            ca: Arc::new(ArcSwap::new(ca)),
            tokens,
        }
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        if let Some(id) = req.extensions().get::<CaPeer>().and_then(|p| p.id.clone()) {
            return Ok(id);
        }
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "present a client certificate or a join token (authorization: Bearer <token>)",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header is not `Bearer <token>`")
            })?;
        self.tokens.redeem(token.trim()).map_err(|e| match e {
            TokenError::Store(_) => Status::internal(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        // Check the CSR before spending a single-use token on it.
        crate::csr::parse_csr(request.get_ref().csr.as_bytes())
            .map_err(|e| refuse(Status::invalid_argument(e.to_string())))?;
        let id = self.authenticate(&request).map_err(refuse)?;
        let req = request.into_inner();
        let ttl = u64::try_from(req.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let svid = self
            .ca
            .load()
            .issue(req.csr.as_bytes(), &id, ttl)
            .map_err(|e| match e {
                CaError::Csr(_) => refuse(Status::invalid_argument(e.to_string())),
                CaError::ForeignTrustDomain { .. } => {
                    refuse(Status::permission_denied(e.to_string()))
                }
                other => Status::internal(other.to_string()),
            })?;
        metrics::issued();
        tracing::info!(%id, not_after = %svid.not_after, "issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: svid.istio_chain_pem(),
        }))
    }
}

fn refuse(status: Status) -> Status {
    metrics::refused();
    tracing::debug!(code = ?status.code(), message = status.message(), "request refused");
    status
}

/// Why the CA server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The CA could not issue its own serving certificate.
    #[error("the CA's serving certificate: {0}")]
    Identity(#[from] ManagerError),
    /// The CA could not name its own identity.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The TLS config is invalid.
    #[error("TLS config: {0}")]
    Tls(#[from] rustls::Error),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A running CA server. Dropping it stops the server.
#[derive(Debug)]
pub struct CaServer {
    local_addr: SocketAddr,
    identity: CertManager,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl CaServer {
    /// Serves `ca` on `listener` over TLS, with a serving SVID for
    /// [`ca_identity`] that it issues and renews itself.
    pub async fn spawn(
        ca: Arc<CertificateAuthority>,
        tokens: TokenStore,
        listener: TcpListener,
    ) -> Result<Self, ServeError> {
        let local_addr = listener.local_addr()?;
        let id = ca_identity(&ca)?;
        let identity = CertManager::start(
            id.clone(),
            Arc::new(LocalSigner::new(ca.clone(), id)),
            ManagerConfig::default(),
        )
        .await?;
        let mut config = server_config(identity.store(), ClientAuth::Optional)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (conns_tx, conns_rx) = mpsc::channel::<Result<CaConn, std::io::Error>>(16);
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let accept_loop = tokio::spawn(accept_loop(listener, acceptor, conns_tx));
        let service = IstioCertificateServiceServer::new(CaService::new(ca, tokens));
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .timeout(Duration::from_secs(30))
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(conns_rx),
                    async {
                        let _ = shutdown_rx.await;
                    },
                )
                .await;
            accept_loop.abort();
            result
        });
        Ok(Self {
            local_addr,
            identity,
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The CA's own serving credentials.
    pub fn credentials(&self) -> &CredentialStore {
        self.identity.store()
    }

    /// Stops the server and waits for it, surfacing its error or panic.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    conns: mpsc::Sender<Result<CaConn, std::io::Error>>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        // Handshakes run apart so that a slow client holds up no other.
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let id = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| svid_id(leaf).ok());
            let conn = CaConn {
                stream,
                peer: CaPeer { id, remote },
            };
            let _ = conns.send(Ok(conn)).await;
        });
    }
}
