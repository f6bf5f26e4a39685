//! What the proxy's tests share: a CA in a temp folder, a counting app, a
//! sidecar started in the test's runtime through the library on sockets the
//! test bound (port 0, so no port is raced for) or, for what needs a
//! process (signals, the process's own memory), a `mesh-proxy` process
//! whose log is read line by line, and raw clients (bytes over mTLS, or
//! over plain TCP) that say exactly what they send.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod h2;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_ca::{CertificateAuthority, CredentialStore, FileSource};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_proxy::{
    BoundSocket, IdentitySource, InboundListener, ProxyHandle, Sidecar, SidecarListeners,
};
use mesh_tower::server::ServerSettings;
use mesh_tower::tls::MeshConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A port that was free a moment ago, for what cannot be handed a bound
/// socket (`php -S`): it may be taken before it is used, so its user tries
/// again on another.
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
    config_with_ports(&format!("ports: {{http: {inbound}}}, "), mode)
}

/// [`mesh_config`] with no port named for `web`: its sidecar serves one
/// default inbound port, HTTP (a process test gives `--inbound-port 0` and
/// reads the port it got from the log).
pub fn mesh_config_any_port(mode: &str) -> String {
    config_with_ports("", mode)
}

fn config_with_ports(ports: &str, mode: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\n\
         spec: {{hosts: [web], ports: [{{number: 80, name: http}}], workloadSelector: {{labels: {{app: web}}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web}}\n\
         spec: {{address: 127.0.0.1, {ports}labels: {{app: web}}, serviceAccount: web}}\n---\n\
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

/// A proxy started in the test's runtime through the library. Dropping it
/// stops its listeners and starts its drain; [`Proxy::shutdown`] drains and
/// surfaces a panic of its tasks.
pub struct Proxy {
    pub handle: ProxyHandle,
    pub admin: u16,
}

impl Proxy {
    pub fn new(handle: ProxyHandle) -> Self {
        let admin = handle.admin_addr().port();
        Self { handle, admin }
    }

    /// Waits until the proxy serves (its identity issued, its ports
    /// listened on).
    pub async fn ready(&self) {
        tokio::time::timeout(Duration::from_secs(30), self.handle.ready())
            .await
            .expect("the proxy was not ready within 30 s")
            .unwrap_or_else(|e| panic!("the proxy never became ready: {e}"));
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// Drains: stops accepting, lets in-flight requests finish.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }
}

/// A socket on a free loopback port, bound for the proxy to listen on.
pub fn bound() -> BoundSocket {
    BoundSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap()
}

/// An admin listener on a free loopback port.
pub async fn admin_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// The files identity of `sa`, freshly issued.
pub fn files_identity(world: &World, sa: &str) -> IdentitySource {
    let d = world.issue(sa);
    IdentitySource::files(d.join("cert.pem"), d.join("key.pem"), d.join("bundle.pem"))
}

/// The drain of a proxy at the end of a test that is not about draining:
/// short, so the connections the test still holds are not waited for (a
/// raw h2 client that never answers the drain's PING would hold it for the
/// whole drain timeout).
pub const TEARDOWN_DRAIN: Duration = Duration::from_millis(200);

/// Starts the sidecar of `web` in front of the app on `app_port`, inbound
/// on `inbound` (the configuration must name its port), without waiting
/// for it to be ready.
pub async fn start_sidecar(
    world: &World,
    inbound: BoundSocket,
    app_port: u16,
    identity: IdentitySource,
    settings: ServerSettings,
    drain_timeout: Duration,
) -> Proxy {
    let sidecar = Sidecar::builder(world.path("mesh"), "default", "web")
        .identity(identity)
        .server_settings(settings)
        .drain_timeout(drain_timeout)
        .build()
        .unwrap();
    let app = SocketAddr::from(([127, 0, 0, 1], app_port));
    let handle = sidecar
        .start(SidecarListeners {
            admin: admin_listener().await,
            inbound: vec![InboundListener::new(inbound, app)],
            outbound: Vec::new(),
            http_proxy: None,
            capture: None,
        })
        .unwrap();
    Proxy::new(handle)
}

/// Writes `mesh.yaml` for `web` (`mode`) on a fresh inbound port and starts
/// its sidecar with a files identity until it is ready (drained at the end
/// for [`TEARDOWN_DRAIN`]); returns it and the inbound port.
pub async fn ready_sidecar(
    world: &World,
    app: u16,
    mode: &str,
    settings: ServerSettings,
) -> (Proxy, u16) {
    let inbound = bound();
    let port = inbound.local_addr().port();
    world.write_config("mesh.yaml", &mesh_config(port, mode));
    let proxy = start_sidecar(
        world,
        inbound,
        app,
        files_identity(world, "web"),
        settings,
        TEARDOWN_DRAIN,
    )
    .await;
    proxy.ready().await;
    (proxy, port)
}

/// The sidecar of `client` (a files identity) with `outbound` ports only,
/// not yet ready (drained at the end for [`TEARDOWN_DRAIN`]).
pub async fn client_sidecar(world: &World, outbound: Vec<mesh_proxy::OutboundListener>) -> Proxy {
    Proxy::new(
        Sidecar::builder(world.path("mesh"), "default", "client")
            .identity(files_identity(world, "client"))
            .drain_timeout(TEARDOWN_DRAIN)
            .build()
            .unwrap()
            .start(SidecarListeners {
                admin: admin_listener().await,
                inbound: Vec::new(),
                outbound,
                http_proxy: None,
                capture: None,
            })
            .unwrap(),
    )
}

/// The gateway of the Gateway `edge` with a files identity
/// (`spiffe://cluster.local/ns/default/sa/edge`) on `servers`, ready
/// (drained at the end for [`TEARDOWN_DRAIN`]).
#[cfg(feature = "gateway")]
pub async fn ready_gateway(world: &World, servers: Vec<BoundSocket>) -> Proxy {
    let gateway = Proxy::new(
        mesh_proxy::Gateway::builder(world.path("mesh"), "edge")
            .identity(files_identity(world, "edge"))
            .drain_timeout(TEARDOWN_DRAIN)
            .build()
            .unwrap()
            .start(mesh_proxy::GatewayListeners {
                admin: admin_listener().await,
                servers,
            })
            .unwrap(),
    );
    gateway.ready().await;
    gateway
}

/// A `mesh-proxy` process: its log and errors read line by line (with
/// `RUST_LOG=info`), so a test waits for what the proxy says it did rather
/// than polling. Killed on drop.
pub struct Proc {
    pub child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log goes to standard output, errors to standard error: one
        // stream of lines, which ends when both close (the process exited).
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for out in [stdout, stderr] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The next line of the log that contains `needle`; `None` when the
    /// process closed its standard error (it exited) first.
    pub async fn try_line(&mut self, needle: &str) -> Option<String> {
        let wait = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = self.lines.recv().await {
                self.log.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        });
        wait.await
            .unwrap_or_else(|_| panic!("the proxy never logged {needle:?}:\n{}", self.log()))
    }

    /// The next line of the log that contains `needle`.
    pub async fn line(&mut self, needle: &str) -> String {
        match self.try_line(needle).await {
            Some(line) => line,
            None => panic!(
                "the proxy exited ({:?}) before it logged {needle:?}:\n{}",
                self.child.wait(),
                self.log()
            ),
        }
    }

    /// Everything logged so far (as far as read).
    pub fn log(&self) -> String {
        self.log.join("\n")
    }

    /// Waits for the process to exit: its output closes, then it is reaped.
    pub async fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let eof = tokio::time::timeout(within, async {
            while let Some(line) = self.lines.recv().await {
                self.log.push(line);
            }
        });
        assert!(
            eof.await.is_ok(),
            "the proxy did not exit within {within:?}:\n{}",
            self.log()
        );
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }
}

/// The value of `name=` in a log line.
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    let rest = &line[at + name.len() + 2..];
    rest.split_whitespace().next().unwrap_or_default()
}

/// `mesh-proxy sidecar` for `web` as a process: a files identity, the app
/// on `app_port`, every port from the kernel (`--admin 127.0.0.1:0`, and
/// `--inbound-port 0` for a WorkloadEntry that names no port: see
/// [`mesh_config_any_port`]), and `extra` arguments.
pub fn sidecar_process(world: &World, app_port: u16, extra: &[&str]) -> Proc {
    let id = world.issue("web");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    cmd.args(["sidecar", "--workload", "web", "--http-proxy", "off"])
        .args(["--admin", "127.0.0.1:0", "--inbound-port", "0"])
        .arg("--config")
        .arg(world.path("mesh"))
        .arg("--app")
        .arg(format!("127.0.0.1:{app_port}"))
        .arg("--cert")
        .arg(id.join("cert.pem"))
        .arg("--key")
        .arg(id.join("key.pem"))
        .arg("--bundle")
        .arg(id.join("bundle.pem"))
        .args(extra);
    Proc::spawn(cmd)
}

/// Writes `mesh.yaml` for `web` (`mode`, no port named) and starts its
/// sidecar process until it is ready; returns it and the inbound port the
/// kernel gave it, as the sidecar logged them.
pub async fn ready_sidecar_process(
    world: &World,
    app: u16,
    mode: &str,
    extra: &[&str],
) -> (Proc, u16) {
    world.write_config("mesh.yaml", &mesh_config_any_port(mode));
    let mut proc = sidecar_process(world, app, extra);
    let inbound = proc.line("inbound listening").await;
    let inbound = field(&inbound, "port").parse().unwrap();
    proc.line(" ready").await;
    (proc, inbound)
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
