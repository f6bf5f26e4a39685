//! `mesh-bench serve`: the servers of topologies (a), (b) and (c), and the
//! app behind the proxies of (d), (e1) and (e2). Each runs in its own
//! process, pinned by the harness to the system-under-test core.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::authz::{AuthzRequest, evaluate};
use mesh_core::store::Store;
use mesh_tower::telemetry::{Registry, TelemetryLayer, WorkloadInfo};
use mesh_tower::tls::{MeshAcceptor, PeerIdentity, TlsMode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// The response every server answers with: 1 KiB.
pub(crate) static BODY: [u8; 1024] = [b'x'; 1024];

/// What `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// (a) and the app behind proxies: hyper HTTP/1.1, no TLS.
    Plain,
    /// (b): hyper behind tokio-rustls with mesh-ca's SPIFFE verifiers, and
    /// nothing else.
    Tls,
    /// (c): the mesh's acceptor, inbound telemetry and authorization around
    /// the handler.
    Mesh,
}

/// `mesh-bench serve`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    #[arg(long, value_enum)]
    pub(crate) mode: Mode,
    #[arg(long)]
    pub(crate) listen: SocketAddr,
    #[arg(long)]
    pub(crate) cert: Option<PathBuf>,
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
    /// The mesh configuration (mode `mesh`).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The WorkloadEntry this server is (mode `mesh`).
    #[arg(long, default_value = crate::certs::SERVER_SA)]
    pub(crate) workload: String,
    /// Mode `mesh`: serve with `mesh_tower::tls::spawn_server` as it is
    /// (Nagle on) instead of `serve_connection` on TCP_NODELAY sockets.
    #[arg(long)]
    pub(crate) spawn_server: bool,
}

fn response() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(&BODY)))
}

/// Runs a server until killed. Same runtime as `mesh-proxy`: multi-threaded,
/// one worker per core it may use (one, once pinned).
pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        match args.mode {
            Mode::Plain => serve_plain(listener).await,
            Mode::Tls => serve_tls(listener, &args).await,
            Mode::Mesh => serve_mesh(listener, &args).await,
        }
    })
}

fn credentials(args: &ServeArgs) -> Result<mesh_ca::CredentialStore> {
    let (Some(cert), Some(key), Some(bundle)) = (&args.cert, &args.key, &args.bundle) else {
        return Err(anyhow!("give --cert, --key and --bundle"));
    };
    let creds = mesh_ca::FileSource::new(cert, key, bundle).load()?;
    Ok(mesh_ca::CredentialStore::new(creds))
}

async fn http1<IO>(io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(response())
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn serve_plain(listener: TcpListener) -> Result<()> {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(http1(tcp));
    }
}

async fn serve_tls(listener: TcpListener, args: &ServeArgs) -> Result<()> {
    let store = credentials(args)?;
    let mut config = mesh_ca::tls::server_config(&store, mesh_ca::tls::ClientAuth::Required)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                http1(tls).await;
            }
        });
    }
}

async fn serve_mesh(listener: TcpListener, args: &ServeArgs) -> Result<()> {
    let store = credentials(args)?;
    let config = args
        .config
        .as_ref()
        .ok_or_else(|| anyhow!("mode mesh needs --config"))?;
    let mesh = Arc::new(
        Store::from_source(&mesh_core::store::FileSource::new(config))
            .map_err(|e| anyhow!("{e:?}"))?,
    );
    let acceptor = MeshAcceptor::new(&store, TlsMode::Strict)?;
    let key = format!("default/{}", args.workload);
    let local = WorkloadInfo::new(&args.workload, "default");
    let service = tower::ServiceBuilder::new()
        .layer(TelemetryLayer::inbound(Registry::new(), local))
        .service(AuthorizedApp {
            store: mesh,
            key: Arc::from(key),
            port: args.listen.port(),
        });
    let service = hyper_util::service::TowerToHyperService::new(service);
    if args.spawn_server {
        let server = mesh_tower::tls::spawn_server(listener, acceptor, service)?;
        // Serve until killed.
        std::future::pending::<()>().await;
        drop(server);
        return Ok(());
    }
    // `spawn_server` leaves Nagle's algorithm on: a handshake's last flight
    // then waits for the client's delayed ACK (40 ms) before the first
    // answer. Accepting here with TCP_NODELAY is the same stack otherwise.
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            if let Ok(stream) = acceptor.accept(tcp).await {
                let _ = mesh_tower::tls::serve_connection(stream, service).await;
            }
        });
    }
}

/// Headers for authorization read in place: the sidecar copies every
/// header into a `Vec<(String, String)>` per request instead.
struct Headers<'a>(&'a http::HeaderMap);

impl mesh_core::route::HeaderLookup for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Authorization, then the app. mesh-tower has no authorization layer yet:
/// this evaluates the workload's AuthorizationPolicies per request with
/// `mesh_core::authz::evaluate`, as `mesh-proxy`'s inbound does, so (c) pays
/// for the decision.
#[derive(Debug, Clone)]
struct AuthorizedApp {
    store: Arc<Store>,
    key: Arc<str>,
    port: u16,
}

impl<B> tower::Service<Request<B>> for AuthorizedApp {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let snap = self.store.load();
        let allowed = snap.workload(&self.key).is_some_and(|(_, w)| {
            let peer = req.extensions().get::<PeerIdentity>();
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let areq = AuthzRequest {
                peer: peer.and_then(PeerIdentity::spiffe_id),
                source_ip: None,
                destination_ip: w.address.parse().ok(),
                destination_port: self.port,
                host,
                method: req.method().as_str(),
                path: req.uri().path(),
                headers: Some(&Headers(req.headers())),
            };
            evaluate(snap.workload_policies(w), &areq).allowed
        });
        let resp = if allowed {
            response()
        } else {
            let mut r = Response::new(Full::new(Bytes::from_static(b"denied")));
            *r.status_mut() = StatusCode::FORBIDDEN;
            r
        };
        ready(Ok(resp))
    }
}
