//! The mesh's control plane: one process serving the CA's signing service
//! (Istio's `CreateCertificate`, from `mesh-ca`) and a Prometheus metrics
//! endpoint, both through `mesh_tower::server`, the one serving edge of the
//! mesh: its accept loop, its [`ServerSettings`] (header-read, idle and
//! handshake timeouts, body limits, HTTP/2 flood limits) and its drain.
//! `mesh-ca` cannot serve itself that way (`mesh-tower` depends on it);
//! this crate depends on both. The xDS server will live here too, so that
//! `mesh-ca` stays the CA and knows nothing of routing.
//!
//! The `mesh-ca` binary is this crate's: `main` reads the command line and
//! runs a [`ControlPlane`] until SIGTERM or ctrl-c, then drains it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use mesh_ca::{CertificateAuthority, TokenStore};
//! use mesh_control::{ControlPlane, ControlPlaneConfig};
//! use tokio::net::TcpListener;
//!
//! let dir = std::path::Path::new("ca");
//! let ca = Arc::new(CertificateAuthority::open_dir(dir)?);
//! let plane = ControlPlane::start(
//!     ca,
//!     TokenStore::new(dir),
//!     TcpListener::bind("127.0.0.1:15012").await?,
//!     ControlPlaneConfig::default(),
//! )
//! .await?
//! .with_metrics(TcpListener::bind("127.0.0.1:15014").await?)?;
//! // GET http://127.0.0.1:15014/metrics: mesh_ca_certificates_issued_total, ...
//! plane.shutdown().await; // stop accepting, let what is in flight finish
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod ca;
pub mod grpc;
mod grpc_rbac;
pub mod injector;
pub mod kube;
mod monitor;
pub mod page;
mod proxyless;
pub mod report;
pub mod xds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_ca::metrics::CaMetrics;
use mesh_ca::service::{CaAcceptor, CaService, ServeError, serving_identity_named};
use mesh_ca::{CertificateAuthority, CredentialStore, TokenStore};
use mesh_tower::server::{ServerHandle, ServerSettings};
use tokio::net::TcpListener;

pub use monitor::{
    CHECK_PATH, CONFIG_STATUS_PATH, EXIT_HEADER, EXPLAIN_PATH, METRICS_PATHS, READY_PATH,
};
pub use xds::{ConfigServer, ConfigServerError, SourceHealth};

use monitor::Monitor;

/// How the control plane serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneConfig {
    /// What every connection, to the CA and to the metrics endpoint, is
    /// held to: the same settings type, with the same defaults, as every
    /// other listener of the mesh.
    pub settings: ServerSettings,
    /// How long [`ControlPlane::shutdown`] lets in-flight requests finish.
    pub drain_deadline: Duration,
    /// How long one request to the CA may take, from its head to its
    /// answer, the arrival of its body included; one still unanswered then
    /// gets gRPC `DEADLINE_EXCEEDED`. The server settings bound the wait
    /// for a head and for each body frame, not a whole request. Default
    /// 30 s.
    pub request_timeout: Duration,
    /// Host names put in the CA's serving certificate beside its SPIFFE
    /// ID, for clients that verify the server by the name they dial:
    /// gRPC's proxyless clients reach the xDS server at
    /// `xds_servers[].server_uri` and check that name. Default none (mesh
    /// clients verify the SPIFFE ID).
    pub serving_dns_names: Vec<String>,
    /// How often the mesh page ([`page::PAGE_PATH`] on the metrics
    /// endpoint) reads each proxy's metrics. Default 5 s.
    pub page_interval: Duration,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            settings: ServerSettings::default(),
            drain_deadline: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            serving_dns_names: Vec::new(),
            page_interval: Duration::from_secs(5),
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The CA could not set itself up to serve (its own serving
    /// certificate, its TLS config).
    #[error(transparent)]
    Ca(#[from] ServeError),
    /// A listener's address could not be read.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A running control plane. [`shutdown`](Self::shutdown) drains it;
/// dropping it stops accepting and starts the drain without waiting.
#[derive(Debug)]
pub struct ControlPlane {
    ca: ServerHandle,
    metrics: Option<ServerHandle>,
    injector: Option<ServerHandle>,
    monitor: Monitor,
    config: ControlPlaneConfig,
    /// The mesh page's reading of the proxies' metrics, while the metrics
    /// endpoint serves.
    _page_reader: Option<page::Reader>,
}

impl ControlPlane {
    /// Serves `ca`'s signing service on `listener` (TLS, with a serving
    /// SVID for [`mesh_ca::service::ca_identity`] that the CA issues and
    /// renews itself), redeeming join tokens from `tokens`.
    pub async fn start(
        ca: Arc<CertificateAuthority>,
        tokens: TokenStore,
        listener: TcpListener,
        config: ControlPlaneConfig,
    ) -> Result<Self, StartError> {
        Self::start_inner(ca, tokens, listener, config, None, None).await
    }

    /// [`start`](Self::start), also serving `xds` on the same port: the
    /// mesh's configuration to every data plane over delta ADS, mTLS with
    /// each workload's SVID (istiod serves its CA and xDS on 15012 too).
    pub async fn start_serving(
        ca: Arc<CertificateAuthority>,
        tokens: TokenStore,
        listener: TcpListener,
        config: ControlPlaneConfig,
        xds: ConfigServer,
    ) -> Result<Self, StartError> {
        Self::start_inner(ca, tokens, listener, config, Some(xds), None).await
    }

    /// [`start_serving`](Self::start_serving), the CA also accepting
    /// Kubernetes service-account tokens for a first certificate, checked
    /// by `service_accounts` (the TokenReview API): the SVID is the token's
    /// service account's.
    pub async fn start_on_kubernetes(
        ca: Arc<CertificateAuthority>,
        tokens: TokenStore,
        listener: TcpListener,
        config: ControlPlaneConfig,
        xds: ConfigServer,
        service_accounts: Arc<dyn mesh_ca::service::ServiceAccountTokens>,
    ) -> Result<Self, StartError> {
        Self::start_inner(
            ca,
            tokens,
            listener,
            config,
            Some(xds),
            Some(service_accounts),
        )
        .await
    }

    async fn start_inner(
        ca: Arc<CertificateAuthority>,
        tokens: TokenStore,
        listener: TcpListener,
        config: ControlPlaneConfig,
        xds: Option<ConfigServer>,
        service_accounts: Option<Arc<dyn mesh_ca::service::ServiceAccountTokens>>,
    ) -> Result<Self, StartError> {
        let identity = serving_identity_named(&ca, config.serving_dns_names.clone()).await?;
        let acceptor = CaAcceptor::new(identity.store())
            .map_err(ServeError::from)?
            .with_handshake_timeout(config.settings.handshake_timeout);
        let mut service = CaService::new(ca, tokens);
        if let Some(reviewer) = service_accounts {
            service = service.with_service_account_tokens(reviewer);
        }
        let monitor = Monitor::new(service.metrics().clone(), identity, xds.clone());
        let ca = ca::spawn(listener, acceptor, service, xds, &config)?;
        Ok(Self {
            ca,
            metrics: None,
            injector: None,
            monitor,
            config,
            _page_reader: None,
        })
    }

    /// Also answers Prometheus scrapes on `listener`, in plain HTTP at
    /// [`METRICS_PATHS`]: the CA's counters and its serving certificate's.
    /// A second call replaces the first endpoint.
    pub fn with_metrics(mut self, listener: TcpListener) -> Result<Self, StartError> {
        self._page_reader = self
            .monitor
            .page()
            .map(|p| p.spawn_reader(self.config.page_interval));
        self.metrics = Some(monitor::spawn(
            listener,
            self.monitor.clone(),
            &self.config,
        )?);
        Ok(self)
    }

    /// Also serves the sidecar injector's admission webhook on `listener`
    /// (HTTPS with the control plane's serving certificate, `POST
    /// /inject`), injecting as `inject` says. A second call replaces the
    /// first.
    pub fn with_injector(
        mut self,
        listener: TcpListener,
        inject: mesh_kube::inject::InjectConfig,
    ) -> Result<Self, StartError> {
        self.injector = Some(injector::spawn(
            listener,
            self.credentials().clone(),
            inject,
            &self.config,
        )?);
        Ok(self)
    }

    /// The address of the injector's webhook, if one is served.
    pub fn injector_addr(&self) -> Option<SocketAddr> {
        self.injector.as_ref().map(ServerHandle::local_addr)
    }

    /// The address of the CA's signing service.
    pub fn ca_addr(&self) -> SocketAddr {
        self.ca.local_addr()
    }

    /// The address of the metrics endpoint, if one is served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(ServerHandle::local_addr)
    }

    /// The CA's own serving credentials.
    pub fn credentials(&self) -> &CredentialStore {
        self.monitor.identity().store()
    }

    /// What the signing service counts.
    pub fn ca_metrics(&self) -> &Arc<CaMetrics> {
        self.monitor.ca()
    }

    /// What the metrics endpoint answers, now.
    pub fn render_metrics(&self) -> String {
        self.monitor.render()
    }

    /// Stops accepting on every listener and lets what is in flight finish,
    /// up to the drain deadline; surfaces a panic of an accept task.
    pub async fn shutdown(self) {
        let metrics = async {
            if let Some(m) = self.metrics {
                m.shutdown().await;
            }
        };
        let injector = async {
            if let Some(i) = self.injector {
                i.shutdown().await;
            }
        };
        tokio::join!(self.ca.shutdown(), metrics, injector);
    }
}
