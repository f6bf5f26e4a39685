//! The load generator's clients: how each topology's first hop is reached.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use mesh_core::identity::SpiffeId;
use mesh_core::store::Store;
use mesh_tower::body::BoxBody;
use mesh_tower::telemetry::{Registry, TelemetryLayer, WorkloadInfo};
use mesh_tower::tls::MeshConnector;
use mesh_tower::traffic::{Router, RouterConfig};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::certs::{CLIENT_SA, SERVER_SA, spiffe};

/// The service every mesh topology calls.
pub(crate) const SERVICE_HOST: &str = "bench.default.svc.cluster.local";

/// The proxyless client: outbound telemetry in front of the router.
pub(crate) type MeshClient =
    tower::util::BoxCloneSyncService<Request<BoxBody>, Response<BoxBody>, Infallible>;

/// How requests reach the system under test.
#[derive(Clone)]
pub(crate) enum Target {
    /// HTTP/1.1 over TCP (topologies a, d, e1, e2).
    Plain { addr: SocketAddr },
    /// HTTP/1.1 over rustls mTLS, verifying the server's SPIFFE ID (b, and
    /// the idle-connection test against every mTLS server).
    Mtls {
        addr: SocketAddr,
        tls: tokio_rustls::TlsConnector,
    },
    /// The mesh's own client stack, in the load generator's process (c).
    Mesh {
        shared: MeshClient,
        make: Arc<dyn Fn() -> MeshClient + Send + Sync>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain { addr } => write!(f, "plain {addr}"),
            Self::Mtls { addr, .. } => write!(f, "mtls {addr}"),
            Self::Mesh { .. } => f.write_str("mesh router"),
        }
    }
}

impl Target {
    /// An mTLS client presenting `creds` and accepting only the bench
    /// server's SPIFFE ID, offering only HTTP/1.1.
    pub(crate) fn mtls(addr: SocketAddr, creds: &mesh_ca::CredentialStore) -> Result<Self> {
        let allowed = vec![SpiffeId::parse(&spiffe(SERVER_SA))?];
        let verifier = mesh_ca::tls::SpiffeServerVerifier::new(creds.clone(), allowed);
        let mut config = mesh_ca::tls::client_config(creds, verifier)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self::Mtls {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// The proxyless client: `Router` with `MeshConnector`, behind outbound
    /// telemetry. HTTP/1.1 only, like every other topology (the connector
    /// would otherwise agree on h2 with the mesh server).
    /// The mesh client; `authorization` is sent on every request (c-jwt).
    pub(crate) fn mesh(
        store: Arc<Store>,
        creds: mesh_ca::CredentialStore,
        authorization: Option<http::HeaderValue>,
    ) -> Self {
        let registry = Registry::new();
        let make = move || -> MeshClient {
            let connector = MeshConnector::new(creds.clone()).with_alpn(vec![b"http/1.1".to_vec()]);
            let router = Router::new(
                store.clone(),
                RouterConfig::for_workload("default", CLIENT_SA),
                Some(connector),
            );
            let authorization = authorization.clone();
            tower::util::BoxCloneSyncService::new(
                tower::ServiceBuilder::new()
                    .map_request(move |mut req: Request<mesh_tower::body::BoxBody>| {
                        if let Some(v) = &authorization {
                            req.headers_mut()
                                .insert(http::header::AUTHORIZATION, v.clone());
                        }
                        req
                    })
                    .map_response(|r: Response<_>| r.map(mesh_tower::body::boxed))
                    .layer(TelemetryLayer::outbound(
                        registry.clone(),
                        WorkloadInfo::new(CLIENT_SA, "default"),
                    ))
                    .service(router),
            )
        };
        Self::Mesh {
            shared: make(),
            make: Arc::new(make),
        }
    }

    /// A connection ready for requests. `fresh` asks for one of its own even
    /// where connections are pooled (the mesh client: a new router).
    pub(crate) async fn connect(&self, fresh: bool) -> Result<Conn> {
        match self {
            Self::Plain { addr } => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting {addr}"))?;
                let _ = tcp.set_nodelay(true);
                h1(tcp).await
            }
            Self::Mtls { addr, tls } => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting {addr}"))?;
                let _ = tcp.set_nodelay(true);
                // No SNI: servers are known by SPIFFE ID.
                let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
                let stream = tls.connect(name, tcp).await.context("mTLS handshake")?;
                h1(stream).await
            }
            Self::Mesh { shared, make } => {
                Ok(Conn::Mesh(if fresh { make() } else { shared.clone() }))
            }
        }
    }
}

async fn h1<IO>(io: IO) -> Result<Conn>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(Conn::H1(sender))
}

/// One client connection (or, for the mesh, a handle on its pool).
pub(crate) enum Conn {
    H1(SendRequest<Empty<Bytes>>),
    Mesh(MeshClient),
}

impl Conn {
    /// Sends `GET /` to the bench service and reads the whole answer, which
    /// must be 200 with 1 KiB.
    pub(crate) async fn send(&mut self) -> Result<()> {
        let (status, len) = match self {
            Self::H1(sender) => {
                sender.ready().await?;
                let req = Request::get("/")
                    .header(http::header::HOST, SERVICE_HOST)
                    .body(Empty::new())?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                (status, body.len())
            }
            Self::Mesh(svc) => {
                let req = Request::get(Uri::from_static("http://bench.default.svc.cluster.local/"))
                    .body(mesh_tower::body::empty())?;
                let resp = tower::Service::call(svc.ready().await?, req).await?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| anyhow!(e))?
                    .to_bytes();
                (status, body.len())
            }
        };
        if status != http::StatusCode::OK || len != crate::serve::BODY.len() {
            bail!("answer {status} with {len} bytes");
        }
        Ok(())
    }
}
