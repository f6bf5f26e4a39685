//! The signing service: Istio's `IstioCertificateService/CreateCertificate`
//! over gRPC and TLS.
//!
//! A caller is authenticated either by its current X.509-SVID (mTLS, for
//! renewals) or, for a first certificate, by a single-use join token sent as
//! `authorization: Bearer <token>`. The certificate is always issued for the
//! authenticated identity; the CSR contributes only its key.
//!
//! The pieces a server is made of live here, so that every server of this
//! service authenticates connections the same way: [`CaService`] (the
//! tonic service, counting into [`CaMetrics`]), [`CaAcceptor`] (TLS with
//! an optional client SVID, giving each connection its [`CaPeer`]) and
//! [`serving_identity`]. They are served in one way only:
//! `mesh_control::ControlPlane` (the `mesh-ca` binary, and every test that
//! needs a CA on a socket) puts them behind `mesh_tower::server`, with the
//! limits, timeouts and drain of every listener of the mesh. This crate
//! cannot serve them itself (`mesh-tower` depends on it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tonic::{Request, Response, Status};

use crate::authority::CertificateAuthority;
use crate::credentials::CredentialStore;
use crate::error::CaError;
use crate::manager::{CertManager, LocalSigner, ManagerConfig, ManagerError};
use crate::metrics::{CaMetrics, RefusalReason};
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

/// Starts the CA's serving certificate: an SVID for [`ca_identity`] that
/// `ca` issues, and renews, itself.
pub async fn serving_identity(ca: &Arc<CertificateAuthority>) -> Result<CertManager, ServeError> {
    serving_identity_named(ca, Vec::new()).await
}

/// [`serving_identity`] with `dns_names` in the certificate too, for
/// clients that verify the CA by the host name they dial (gRPC's xDS
/// clients); mesh clients keep verifying its SPIFFE ID.
pub async fn serving_identity_named(
    ca: &Arc<CertificateAuthority>,
    dns_names: Vec<String>,
) -> Result<CertManager, ServeError> {
    let id = ca_identity(ca)?;
    Ok(CertManager::start(
        id.clone(),
        Arc::new(LocalSigner::new(ca.clone(), id).with_dns_names(dns_names)),
        ManagerConfig::default(),
    )
    .await?)
}

/// Who is on the other end of a connection to the CA: put in each
/// request's extensions, where [`CaService`] reads it.
#[derive(Debug, Clone)]
pub struct CaPeer {
    /// The client's verified SPIFFE ID, if it presented an SVID.
    pub id: Option<SpiffeId>,
    /// The client's address.
    pub remote: SocketAddr,
}

/// The TLS side of the CA's connections: the CA's serving SVID (read from
/// its store at each handshake, so renewals apply), a client SVID optional
/// (a first request authenticates with a join token instead) and verified
/// when given, ALPN `h2`.
#[derive(Clone)]
pub struct CaAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for CaAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl CaAcceptor {
    /// An acceptor presenting `identity`'s SVID, with a 10 s handshake
    /// timeout.
    pub fn new(identity: &CredentialStore) -> Result<Self, rustls::Error> {
        let mut config = server_config(identity, ClientAuth::Optional)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            inner: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: Duration::from_secs(10),
        })
    }

    /// The longest a client may take to finish its handshake.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs the handshake with the client at `remote`; the stream and who
    /// the client is. A client that presents an SVID this CA does not trust
    /// is refused here; one that is slower than the handshake timeout gets
    /// [`std::io::ErrorKind::TimedOut`].
    pub async fn accept<IO>(
        &self,
        io: IO,
        remote: SocketAddr,
    ) -> std::io::Result<(TlsStream<IO>, CaPeer)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = tokio::time::timeout(self.handshake_timeout, self.inner.accept(io))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        let id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| svid_id(leaf).ok());
        Ok((stream, CaPeer { id, remote }))
    }
}

/// A Kubernetes service account a token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Why a service-account token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenReviewError {
    /// The token is not valid for the CA: expired, for another audience,
    /// of a deleted service account, or not a service account's at all.
    #[error("the service-account token was not accepted: {0}")]
    Rejected(String),
    /// The reviewer could not be asked (the API server is unreachable,
    /// forbids the review...).
    #[error("the service-account token could not be reviewed: {0}")]
    Unavailable(String),
}

/// Checks a Kubernetes service-account token (a JWT sent as
/// `authorization: Bearer`, as Istio's agent sends it): the Kubernetes
/// source implements it with the TokenReview API. Only its answer names
/// the identity: the token's own claims are never read.
pub trait ServiceAccountTokens: Send + Sync + std::fmt::Debug {
    /// The service account the token is valid for, at the CA's audience.
    fn review<'a>(
        &'a self,
        token: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ServiceAccount, TokenReviewError>> + Send + 'a>,
    >;
}

/// The gRPC service implementation.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<ArcSwap<CertificateAuthority>>,
    tokens: TokenStore,
    service_accounts: Option<Arc<dyn ServiceAccountTokens>>,
    metrics: Arc<CaMetrics>,
}

/// A JWT (three dot-separated parts); join tokens are base64url without
/// dots.
fn is_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

impl CaService {
    /// A service signing with `ca` and redeeming tokens from `tokens`.
    pub fn new(ca: Arc<CertificateAuthority>, tokens: TokenStore) -> Self {
        Self {
            ca: Arc::new(ArcSwap::new(ca)),
            tokens,
            service_accounts: None,
            metrics: Arc::default(),
        }
    }

    /// Also accepts Kubernetes service-account tokens for a first
    /// certificate, checked by `reviewer`: the SVID is the token's service
    /// account's, `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/NAME`, nothing
    /// else. Join tokens stay accepted.
    #[must_use]
    pub fn with_service_account_tokens(mut self, reviewer: Arc<dyn ServiceAccountTokens>) -> Self {
        self.service_accounts = Some(reviewer);
        self
    }

    /// What the service counts (clones share it).
    pub fn metrics(&self) -> &Arc<CaMetrics> {
        &self.metrics
    }

    /// The tonic server of this service, for a router or a server.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self)
    }

    async fn authenticate<T>(&self, req: &Request<T>) -> Result<SpiffeId, Status> {
        if let Some(id) = req.extensions().get::<CaPeer>().and_then(|p| p.id.clone()) {
            return Ok(id);
        }
        let unauthenticated = |message: &str| {
            self.refuse(
                RefusalReason::Unauthenticated,
                Status::unauthenticated(message),
            )
        };
        let header = req.metadata().get("authorization").ok_or_else(|| {
            unauthenticated(
                "present a client certificate or a join token (authorization: Bearer <token>)",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthenticated("the authorization header is not `Bearer <token>`"))?;
        let token = token.trim();
        if is_jwt(token) {
            return self.review(token).await;
        }
        self.tokens.redeem(token).map_err(|e| match e {
            TokenError::Store(_) => {
                self.refuse(RefusalReason::Internal, Status::internal(e.to_string()))
            }
            _ => unauthenticated(&e.to_string()),
        })
    }

    /// The identity of a service-account token's service account, as the
    /// reviewer says.
    async fn review(&self, token: &str) -> Result<SpiffeId, Status> {
        let Some(reviewer) = &self.service_accounts else {
            return Err(self.refuse(
                RefusalReason::Unauthenticated,
                Status::unauthenticated(
                    "this CA does not accept Kubernetes service-account tokens (it runs without \
                     --kubernetes); use a join token",
                ),
            ));
        };
        let sa = reviewer.review(token).await.map_err(|e| match e {
            TokenReviewError::Rejected(_) => self.refuse(
                RefusalReason::Unauthenticated,
                Status::unauthenticated(e.to_string()),
            ),
            TokenReviewError::Unavailable(_) => {
                self.refuse(RefusalReason::Internal, Status::unavailable(e.to_string()))
            }
        })?;
        let td = self.ca.load().trust_domain().clone();
        SpiffeId::for_workload(&td, &sa.namespace, &sa.name).map_err(|e| {
            self.refuse(
                RefusalReason::Unauthenticated,
                Status::unauthenticated(format!(
                    "service account {}/{} gives no SPIFFE ID: {e}",
                    sa.namespace, sa.name
                )),
            )
        })
    }

    /// Counts a refusal and logs it; a client's mistake is not an error of
    /// the CA's, so it is logged at debug, and the CA's own failures at warn.
    fn refuse(&self, reason: RefusalReason, status: Status) -> Status {
        self.metrics.record_refused(reason);
        if reason == RefusalReason::Internal {
            tracing::warn!(message = status.message(), "request failed");
        } else {
            tracing::debug!(
                reason = reason.as_str(),
                message = status.message(),
                "request refused"
            );
        }
        status
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        // Check the CSR before spending a single-use token on it.
        crate::csr::parse_csr(request.get_ref().csr.as_bytes()).map_err(|e| {
            self.refuse(
                RefusalReason::InvalidCsr,
                Status::invalid_argument(e.to_string()),
            )
        })?;
        let id = self.authenticate(&request).await?;
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
                CaError::Csr(_) => self.refuse(
                    RefusalReason::InvalidCsr,
                    Status::invalid_argument(e.to_string()),
                ),
                CaError::ForeignTrustDomain { .. } => self.refuse(
                    RefusalReason::ForeignTrustDomain,
                    Status::permission_denied(e.to_string()),
                ),
                other => self.refuse(RefusalReason::Internal, Status::internal(other.to_string())),
            })?;
        self.metrics.record_issued();
        tracing::info!(%id, not_after = %svid.not_after, "issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: svid.istio_chain_pem(),
        }))
    }
}

/// Why the CA could not set itself up to serve.
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
}
