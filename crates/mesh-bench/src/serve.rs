//! `mesh-bench serve`: the servers of topologies (a), (b) and (c), and the
//! app behind the proxies of (d), (e1) and (e2). Each runs in its own
//! process, pinned by the harness to the system-under-test core.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use mesh_core::store::Store;
use mesh_tower::telemetry::{Registry, TelemetryLayer, WorkloadInfo};
use mesh_tower::tls::{MeshAcceptor, TlsMode};
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

type Inbound = tower::util::BoxCloneSyncService<
    Request<mesh_tower::server::ServerBody>,
    Response<mesh_tower::body::BoxBody>,
    Infallible,
>;

async fn app<B>(_req: Request<B>) -> Result<Response<mesh_tower::body::BoxBody>, Infallible> {
    Ok(Response::new(mesh_tower::body::full(Bytes::from_static(
        &BODY,
    ))))
}

fn boxed_response<B>(r: Response<B>) -> Response<mesh_tower::body::BoxBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<mesh_tower::body::BoxError>,
{
    r.map(mesh_tower::body::boxed)
}

/// (c)'s server as a task of this process (for `profile`), listening on
/// `listen` before this returns.
pub(crate) async fn spawn_mesh(
    listen: SocketAddr,
    files: &crate::certs::IdentityFiles,
    config: &std::path::Path,
) -> Result<()> {
    let args = ServeArgs {
        mode: Mode::Mesh,
        listen,
        cert: Some(files.cert.clone()),
        key: Some(files.key.clone()),
        bundle: Some(files.bundle.clone()),
        config: Some(config.to_owned()),
        workload: crate::certs::SERVER_SA.to_owned(),
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tokio::spawn(async move {
        if let Err(e) = serve_mesh(listener, &args).await {
            eprintln!("the in-process mesh server stopped: {e:#}");
        }
    });
    Ok(())
}

async fn serve_mesh(listener: TcpListener, args: &ServeArgs) -> Result<()> {
    let store = credentials(args)?;
    let config = args
        .config
        .as_ref()
        .ok_or_else(|| anyhow!("mode mesh needs --config"))?;
    let key = format!("default/{}", args.workload);
    // What this workload's sidecar would compile: its own view.
    let mesh = Arc::new(
        Store::from_source(&mesh_core::store::FileSource::new(config).seen_by_workload(&key))
            .map_err(|e| anyhow!("{e:?}"))?,
    );
    let acceptor = MeshAcceptor::new(&store, TlsMode::Strict)?;
    let local = WorkloadInfo::new(&args.workload, "default");
    // The mesh's own authorization layer, as `Mesh::serve` stacks it.
    let authz =
        mesh_tower::authz::AuthorizeLayer::new(mesh, mesh_tower::authz::LocalWorkload::named(key))
            .with_port(args.listen.port());
    // Boxed here, outside the accept loop, with named functions rather than
    // closures, so the connection futures stay provably `Send`.
    let service: Inbound = tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .map_response(boxed_response)
            .layer(TelemetryLayer::inbound(Registry::new(), local))
            .layer(authz)
            .service(tower::service_fn(app)),
    );
    // The one server module, as `Mesh::serve` and `mesh-proxy` serve: its
    // accept loop (TCP_NODELAY), per-connection serve with the ALPN fast
    // path, default settings. The drain is never signalled: serve until
    // killed.
    let (_controller, drain) =
        mesh_tower::server::drain_pair(mesh_tower::server::ServerSettings::default());
    let conns = drain.clone();
    mesh_tower::server::accept_loop(listener, drain, move |tcp, _| {
        let (acceptor, service, drain) = (acceptor.clone(), service.clone(), conns.clone());
        tokio::spawn(async move {
            if let Ok(stream) = acceptor.accept(tcp).await {
                let service = AddPeer(service, stream.peer_identity().clone());
                let known = mesh_tower::server::Known::from_alpn(stream.alpn_protocol());
                mesh_tower::server::serve_connection(stream, service, drain, known).await;
            }
        });
    })
    .await;
    Ok(())
}

/// Gives each request the connection's verified peer, as the mesh's
/// servers do.
#[derive(Clone)]
struct AddPeer(Inbound, mesh_tower::tls::PeerIdentity);

impl tower::Service<Request<mesh_tower::server::ServerBody>> for AddPeer {
    type Response = Response<mesh_tower::body::BoxBody>;
    type Error = Infallible;
    type Future = <Inbound as tower::Service<Request<mesh_tower::server::ServerBody>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<mesh_tower::server::ServerBody>) -> Self::Future {
        req.extensions_mut().insert(self.1.clone());
        self.0.call(req)
    }
}
