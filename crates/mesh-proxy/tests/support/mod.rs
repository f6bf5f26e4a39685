//! What the hardening tests share: a CA in a temp folder, a counting app, a
//! `mesh-proxy sidecar` process that is killed on drop, and raw clients
//! (bytes over mTLS, or over plain TCP) that say exactly what they send.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod h2;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_ca::{CertificateAuthority, CredentialStore, FileSource};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_tower::tls::MeshConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
}

/// A temp folder holding a mesh CA, issued identities and the config.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init_dir(
            &dir.path().join("ca"),
            TrustDomain::new("cluster.local").unwrap(),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
        Self { dir, ca }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Writes cert.pem, key.pem and bundle.pem for `sa` into `<dir>/<sa>`.
    pub fn issue(&self, sa: &str) -> PathBuf {
        let out = self.path(sa);
        write_identity(
            &self.ca,
            &id(sa),
            time::OffsetDateTime::now_utc(),
            None,
            &out,
        );
        out
    }

    /// The credentials of `sa` as a store for a `MeshConnector`.
    pub fn creds(&self, sa: &str) -> CredentialStore {
        let d = self.issue(sa);
        CredentialStore::new(
            FileSource::new(d.join("cert.pem"), d.join("key.pem"), d.join("bundle.pem"))
                .load()
                .unwrap(),
        )
    }

    pub fn write_config(&self, name: &str, yaml: &str) {
        std::fs::write(self.path("mesh").join(name), yaml).unwrap();
    }
}

pub fn write_identity(
    ca: &CertificateAuthority,
    id: &SpiffeId,
    now: time::OffsetDateTime,
    ttl: Option<Duration>,
    out: &Path,
) {
    let (svid, key) = ca.issue_with_new_key(id, ttl, now).unwrap();
    let pems = svid.istio_chain_pem();
    let (chain, bundle) = pems.split_at(1 + svid.intermediates.len());
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("cert.pem"), chain.concat()).unwrap();
    std::fs::write(out.join("key.pem"), key).unwrap();
    std::fs::write(out.join("bundle.pem"), bundle.concat()).unwrap();
}

/// `web` (the workload behind the sidecar, inbound on `inbound`) and
/// `client`; `mode` is the PeerAuthentication of `web`.
pub fn mesh_config(inbound: u16, mode: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\n\
         spec: {{hosts: [web], ports: [{{number: 80, name: http}}], workloadSelector: {{labels: {{app: web}}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web}}\n\
         spec: {{address: 127.0.0.1, ports: {{http: {inbound}}}, labels: {{app: web}}, serviceAccount: web}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client}}\n\
         spec: {{address: 127.0.0.1, labels: {{app: client}}, serviceAccount: client}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: web}}\n\
         spec: {{selector: {{matchLabels: {{app: web}}}}, mtls: {{mode: {mode}}}}}\n"
    )
}

/// What the app saw.
#[derive(Debug, Default)]
pub struct AppSeen {
    /// Request heads that reached the app.
    pub heads: AtomicUsize,
    /// Requests whose body the app read to a clean end.
    pub complete: AtomicUsize,
    /// The `x-forwarded-client-cert` of each request ("" when absent).
    pub xfcc: std::sync::Mutex<Vec<String>>,
    /// The path of each request.
    pub paths: std::sync::Mutex<Vec<String>>,
    /// The headers of each request.
    pub headers: std::sync::Mutex<Vec<http::HeaderMap>>,
}

impl AppSeen {
    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
    pub fn complete(&self) -> usize {
        self.complete.load(Ordering::SeqCst)
    }
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
    pub fn headers(&self) -> Vec<http::HeaderMap> {
        self.headers.lock().unwrap().clone()
    }
}

/// The app behind the sidecar: counts what reaches it and answers `ok
/// <body length>`. Runs until the test's runtime ends.
pub async fn counting_app() -> (u16, Arc<AppSeen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AppSeen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        s.heads.fetch_add(1, Ordering::SeqCst);
                        s.paths.lock().unwrap().push(req.uri().path().to_owned());
                        s.headers.lock().unwrap().push(req.headers().clone());
                        let xfcc = req
                            .headers()
                            .get_all("x-forwarded-client-cert")
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect::<Vec<_>>()
                            .join(" | ");
                        s.xfcc.lock().unwrap().push(xfcc);
                        match req.into_body().collect().await {
                            Ok(b) => {
                                s.complete.fetch_add(1, Ordering::SeqCst);
                                let n = b.to_bytes().len();
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                    "ok {n}"
                                )))))
                            }
                            Err(_) => Ok(Response::builder()
                                .status(400)
                                .body(Full::new(Bytes::from("broken body")))
                                .unwrap()),
                        }
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

/// A proxy process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub admin: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Waits until `/ready` answers 200.
    pub async fn ready(&mut self) {
        if let Err(status) = self.try_ready().await {
            panic!("the proxy exited before it was ready: {status}");
        }
    }

    /// Waits until `/ready` answers 200, or the process exits (its status).
    pub async fn try_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) =
                http_get(&format!("http://127.0.0.1:{}/ready", self.admin)).await
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            assert!(Instant::now() < deadline, "the proxy never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }
}

/// Starts `mesh-proxy sidecar` for `web` with files identity, the app on
/// `app_port`, and `extra` arguments.
pub fn sidecar(world: &World, app_port: u16, extra: &[&str]) -> Proc {
    let id = world.issue("web");
    sidecar_with_identity(
        world,
        app_port,
        &[
            "--cert".as_ref(),
            id.join("cert.pem").as_os_str(),
            "--key".as_ref(),
            id.join("key.pem").as_os_str(),
            "--bundle".as_ref(),
            id.join("bundle.pem").as_os_str(),
        ],
        extra,
    )
}

pub fn sidecar_with_identity(
    world: &World,
    app_port: u16,
    identity: &[&std::ffi::OsStr],
    extra: &[&str],
) -> Proc {
    let admin = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(["sidecar", "--workload", "web", "--http-proxy", "off"])
        .arg("--config")
        .arg(world.path("mesh"))
        .arg("--app")
        .arg(format!("127.0.0.1:{app_port}"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin}"))
        .args(identity)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(sidecar_log(world, admin)).unwrap())
        .spawn()
        .unwrap();
    Proc { child, admin }
}

/// Where the sidecar with admin port `admin` writes its log.
pub fn sidecar_log(world: &World, admin: u16) -> PathBuf {
    world.path(&format!("sidecar-{admin}.log"))
}

pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// An mTLS stream to `web`'s inbound port as `client`, with ALPN `alpn`.
pub async fn mtls(
    creds: &CredentialStore,
    port: u16,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    MeshConnector::new(creds.clone())
        .with_alpn(vec![alpn.to_vec()])
        .connect(tcp, &[id("web")])
        .await
        .unwrap()
        .into_inner()
}

/// Sends `req` to `web`'s inbound port as `client` over a new mTLS
/// connection, h2 or HTTP/1.1 per `h2` (ALPN agrees it).
pub async fn send_mtls<B>(
    creds: &CredentialStore,
    port: u16,
    h2: bool,
    req: Request<B>,
) -> Result<Response<hyper::body::Incoming>, hyper::Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if h2 {
        let io = TokioIo::new(mtls(creds, port, b"h2").await);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let io = TokioIo::new(mtls(creds, port, b"http/1.1").await);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await
    }
}

/// Writes `bytes`, then reads until the server closes or `wait` passes;
/// returns what came back.
pub async fn exchange<IO>(io: &mut IO, bytes: &[u8], wait: Duration) -> String
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // The server may answer and close before everything is written (it
    // refused the head); a failed write is then part of the answer.
    let _ = io.write_all(bytes).await;
    let _ = io.flush().await;
    read_for(io, wait).await
}

/// Reads until EOF, an error or `wait`, as (lossy) text.
pub async fn read_for<IO>(io: &mut IO, wait: Duration) -> String
where
    IO: AsyncRead + Unpin,
{
    String::from_utf8_lossy(&read_bytes_for(io, wait).await).into_owned()
}

/// Reads until EOF, an error or `wait`.
pub async fn read_bytes_for<IO>(io: &mut IO, wait: Duration) -> Vec<u8>
where
    IO: AsyncRead + Unpin,
{
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// The status of the first response in `raw`, if any.
pub fn status_of(raw: &str) -> Option<u16> {
    raw.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The resident set size of process `pid`, in KiB (`VmRSS` in
/// `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Writes `mesh.yaml` for `web` (`mode`) on a fresh inbound port and starts
/// its sidecar (see [`sidecar`]) until it is ready; returns it and the
/// inbound port. A port from `free_port()` can be taken, before the sidecar
/// binds it, by an outgoing connection of a test running beside this one: a
/// start that fails to bind is tried again on fresh ports (three times at
/// most); any other exit fails at once.
pub async fn ready_sidecar(world: &World, app: u16, mode: &str, extra: &[&str]) -> (Proc, u16) {
    for attempt in 1..=3 {
        let inbound = free_port();
        world.write_config("mesh.yaml", &mesh_config(inbound, mode));
        let mut proc = sidecar(world, app, extra);
        match proc.try_ready().await {
            Ok(()) => return (proc, inbound),
            Err(status) => {
                let log =
                    std::fs::read_to_string(sidecar_log(world, proc.admin)).unwrap_or_default();
                assert!(
                    attempt < 3 && log.contains("binding"),
                    "the sidecar exited before it was ready: {status}\n{log}"
                );
                eprintln!("attempt {attempt}: the sidecar could not bind; again\n{log}");
            }
        }
    }
    unreachable!()
}
