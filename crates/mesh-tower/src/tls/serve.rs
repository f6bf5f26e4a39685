//! Serving one acceptor's connections: a few lines over the one server
//! module ([`crate::server`]).

use std::sync::Arc;

use std::time::Duration;

use http::{Request, Response};
use mesh_core::identity::SpiffeId;
use tokio::net::TcpListener;

use super::MeshAcceptor;
use crate::body::BoxBody;
pub use crate::body::BoxError;
use crate::server::{
    AppService, Known, ServerBody, ServerHandle, ServerSettings, accept_loop, drain_pair,
    serve_connection,
};

/// Who sent a request, and the server name its TLS handshake asked for:
/// put in every request's `http::Extensions` by the server, for handlers
/// and authorization to read.
///
/// ```
/// # use mesh_tower::tls::PeerIdentity;
/// fn caller(req: &http::Request<()>) -> Option<String> {
///     let peer = req.extensions().get::<PeerIdentity>()?;
///     peer.spiffe_id().map(|id| id.principal())
/// }
/// # assert_eq!(caller(&http::Request::new(())), None);
/// ```
#[derive(Clone)]
pub struct PeerIdentity {
    /// Shared by every request of the connection (one clone is a count).
    id: Option<Arc<Verified>>,
}

/// A connection's verified peer, and what is derived from it once.
struct Verified {
    id: SpiffeId,
    /// The SNI of the ClientHello, lowercase; `None` when none was sent.
    sni: Option<Box<str>>,
    /// Its telemetry labels as a peer known by identity only.
    labels: std::sync::OnceLock<Arc<crate::telemetry::WorkloadInfo>>,
}

impl PartialEq for PeerIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.spiffe_id() == other.spiffe_id()
    }
}

impl Eq for PeerIdentity {}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("id", &self.spiffe_id())
            .field("sni", &self.sni())
            .finish()
    }
}

impl PeerIdentity {
    #[cfg(test)]
    pub(crate) fn mtls(id: SpiffeId) -> Self {
        Self::mtls_with_sni(id, None)
    }

    /// An mTLS peer whose ClientHello named `sni` (kept lowercase: a DNS
    /// name's case means nothing).
    pub(crate) fn mtls_with_sni(id: SpiffeId, sni: Option<&str>) -> Self {
        Self {
            id: Some(Arc::new(Verified {
                id,
                sni: sni
                    .filter(|n| !n.is_empty())
                    .map(|n| n.to_ascii_lowercase().into_boxed_str()),
                labels: std::sync::OnceLock::new(),
            })),
        }
    }

    pub(crate) fn plaintext() -> Self {
        Self { id: None }
    }

    /// The caller's verified SPIFFE ID; `None` for a plaintext connection.
    pub fn spiffe_id(&self) -> Option<&SpiffeId> {
        self.id.as_ref().map(|v| &v.id)
    }

    /// The telemetry labels of the peer known by its identity alone
    /// ([`WorkloadInfo::from_peer`](crate::telemetry::WorkloadInfo::from_peer)),
    /// built once per connection.
    pub fn labels(&self) -> Option<Arc<crate::telemetry::WorkloadInfo>> {
        self.id.as_ref().map(|v| {
            v.labels
                .get_or_init(|| Arc::new(crate::telemetry::WorkloadInfo::from_peer(&v.id)))
                .clone()
        })
    }

    /// The server name the client sent in its TLS ClientHello (SNI),
    /// lowercase: what `connection.sni` matches. `None` for plaintext, or
    /// a ClientHello without one (the mesh's own clients send none).
    pub fn sni(&self) -> Option<&str> {
        self.id.as_ref().and_then(|v| v.sni.as_deref())
    }

    /// Whether the request came over mTLS.
    pub fn is_mtls(&self) -> bool {
        self.id.is_some()
    }
}

/// Puts the connection's [`PeerIdentity`] into each request.
#[derive(Debug, Clone)]
struct AddPeerIdentity<S> {
    inner: S,
    peer: PeerIdentity,
}

impl<S> tower::Service<Request<ServerBody>> for AddPeerIdentity<S>
where
    S: tower::Service<Request<ServerBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ServerBody>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}

/// Accepts connections on `listener` with `acceptor` (its mode decides TLS
/// or plaintext) and serves `service` on each, with the server module's
/// default [`ServerSettings`]: every request carries the caller's
/// [`PeerIdentity`]. Refused connections are logged at debug level: a
/// client's mistake is not the server's error. A service error is answered
/// 500.
pub fn spawn_server<S, B>(
    listener: TcpListener,
    acceptor: MeshAcceptor,
    service: S,
) -> std::io::Result<ServerHandle>
where
    S: tower::Service<Request<BoxBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let local_addr = listener.local_addr()?;
    let app = AppService::new(service);
    let (controller, drain) = drain_pair(ServerSettings::default());
    let conns = drain.clone();
    let accept = accept_loop(listener, drain, move |tcp, remote| {
        let (acceptor, app, drain) = (acceptor.clone(), app.clone(), conns.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "connection refused");
                    return;
                }
            };
            let svc = AddPeerIdentity {
                inner: app,
                peer: stream.peer_identity().clone(),
            };
            let known = Known::from_alpn(stream.alpn_protocol());
            serve_connection(stream, svc, drain, known).await;
        });
    });
    Ok(ServerHandle::spawn(
        local_addr,
        controller,
        Duration::from_secs(10),
        accept,
    ))
}
