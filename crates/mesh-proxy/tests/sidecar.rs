//! The sidecar end to end: readiness, the admin endpoints, STRICT mTLS on
//! the inbound port, a proxyless Rust client talking to it, and the drain
//! that lets an in-flight request finish (in the test's runtime); and the
//! same drain on SIGTERM, to a `mesh-proxy sidecar` process, which then
//! exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_ca::CertificateAuthority;
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_core::store::Store;
use mesh_proxy::{BoundSocket, IdentitySource, InboundListener, Sidecar, SidecarListeners};
use mesh_tower::Mesh;
use mesh_tower::body::empty;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Writes cert.pem, key.pem and bundle.pem for `sa`, as `mesh-ca issue` does.
fn issue(ca: &CertificateAuthority, sa: &str, out: &Path) {
    let id = SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap();
    let (svid, key) = ca
        .issue_with_new_key(&id, None, time::OffsetDateTime::now_utc())
        .unwrap();
    let pems = svid.istio_chain_pem();
    let (chain, bundle) = pems.split_at(1 + svid.intermediates.len());
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join("cert.pem"), chain.concat()).unwrap();
    std::fs::write(out.join("key.pem"), key).unwrap();
    std::fs::write(out.join("bundle.pem"), bundle.concat()).unwrap();
}

fn config(inbound: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web}}\n\
         spec: {{hosts: [web], ports: [{{number: 80, name: http}}], workloadSelector: {{labels: {{app: web}}}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web}}\n\
         spec: {{address: 127.0.0.1, ports: {{http: {inbound}}}, labels: {{app: web}}, serviceAccount: web}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: client}}\n\
         spec: {{address: 127.0.0.1, labels: {{app: client}}, serviceAccount: client}}\n"
    )
}

/// The app: `/slow` says it has arrived on `arrived`, then answers after a
/// second and a half. Its port.
async fn app(arrived: mpsc::UnboundedSender<()>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let arrived = arrived.clone();
                    async move {
                        if req.uri().path() == "/slow" {
                            let _ = arrived.send(());
                            tokio::time::sleep(Duration::from_millis(1_500)).await;
                        }
                        let who = req
                            .headers()
                            .get("x-forwarded-client-cert")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from(format!(
                            "done {who}"
                        )))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    port
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let resp = client.get(url.parse().ok()?).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A CA and the configuration in a temp folder.
struct Setup {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Setup {
    /// The folder, and the socket bound for `web`'s inbound port (which the
    /// configuration names).
    fn new() -> (Self, BoundSocket) {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::init_dir(
            &dir.path().join("ca"),
            TrustDomain::new("cluster.local").unwrap(),
        )
        .unwrap();
        let inbound = BoundSocket::bind(([127, 0, 0, 1], 0).into()).unwrap();
        std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
        std::fs::write(
            dir.path().join("mesh/mesh.yaml"),
            config(inbound.local_addr().port()),
        )
        .unwrap();
        (Self { dir, ca }, inbound)
    }

    /// The sidecar of `web` on `inbound`, in front of the app on
    /// `app_port`, started (drained for at most 10 s).
    async fn web_sidecar(&self, inbound: BoundSocket, app_port: u16) -> mesh_proxy::ProxyHandle {
        let id = self.dir.path().join("web");
        issue(&self.ca, "web", &id);
        Sidecar::builder(self.dir.path().join("mesh"), "default", "web")
            .identity(IdentitySource::files(
                id.join("cert.pem"),
                id.join("key.pem"),
                id.join("bundle.pem"),
            ))
            .drain_timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .start(SidecarListeners {
                admin: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
                inbound: vec![InboundListener::new(
                    inbound,
                    ([127, 0, 0, 1], app_port).into(),
                )],
                outbound: Vec::new(),
                http_proxy: None,
                capture: None,
            })
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_serves_reports_and_drains() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let app_port = app(arrived_tx).await;
    let (setup, socket) = Setup::new();
    let inbound = socket.local_addr().port();
    let sidecar = setup.web_sidecar(socket, app_port).await;
    tokio::time::timeout(Duration::from_secs(20), sidecar.ready())
        .await
        .expect("the sidecar never became ready")
        .unwrap();
    let admin = sidecar.admin_addr().port();
    let (status, _) = http_get(&format!("http://127.0.0.1:{admin}/ready"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, certs) = http_get(&format!("http://127.0.0.1:{admin}/certs"))
        .await
        .unwrap();
    assert!(
        certs.contains("spiffe://cluster.local/ns/default/sa/web"),
        "{certs}"
    );
    let (_, dump) = http_get(&format!("http://127.0.0.1:{admin}/config_dump"))
        .await
        .unwrap();
    assert!(dump.contains("web.default.svc.cluster.local"));

    // Plaintext to the STRICT inbound port gets nothing.
    assert!(
        http_get(&format!("http://127.0.0.1:{inbound}/"))
            .await
            .is_none()
    );

    // A proxyless Rust client reaches the app through the sidecar over mTLS,
    // and the app learns who called.
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            Path::new("mesh.yaml"),
            &config(inbound),
        ))
        .unwrap();
    let c = setup.dir.path().join("client");
    issue(&setup.ca, "client", &c);
    let mesh = Mesh::builder()
        .store(store)
        .workload("default", "client")
        .identity_files(c.join("cert.pem"), c.join("key.pem"), c.join("bundle.pem"))
        .build()
        .await
        .unwrap();
    let resp = mesh
        .client()
        .oneshot(Request::get("http://web/").body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "done URI=spiffe://cluster.local/ns/default/sa/client");
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{admin}/stats/prometheus"))
        .await
        .unwrap();
    assert!(
        metrics.contains("istio_requests_total{reporter=\"destination\""),
        "{metrics}"
    );

    // The drain while a request is in flight: it finishes, then the drain
    // ends.
    let client = mesh.client();
    let slow = tokio::spawn(client.oneshot(Request::get("http://web/slow").body(empty()).unwrap()));
    arrived.recv().await.unwrap();
    let drained = tokio::spawn(sidecar.shutdown());
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the in-flight request was dropped");
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the sidecar did not finish draining")
        .unwrap();
}

/// SIGTERM to a `mesh-proxy sidecar` process while a request is in flight
/// through it: the request finishes, then the process exits 0. The process
/// is `client`'s sidecar (every port from the kernel, read from its log),
/// sending to `web` through an outbound port; `web`'s sidecar runs in the
/// test's runtime in front of the slow app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_then_the_process_exits_0() {
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let app_port = app(arrived_tx).await;
    let (setup, socket) = Setup::new();
    let web = setup.web_sidecar(socket, app_port).await;
    web.ready().await.unwrap();
    let c = setup.dir.path().join("client");
    issue(&setup.ca, "client", &c);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
    cmd.args(["sidecar", "--workload", "client", "--http-proxy", "off"])
        .args(["--drain-timeout", "10", "--inbound-port", "0"])
        .args(["--admin", "127.0.0.1:0", "--app", "127.0.0.1:9"])
        .args(["--outbound", "web:80=127.0.0.1:0"])
        .arg("--config")
        .arg(setup.dir.path().join("mesh"))
        .arg("--cert")
        .arg(c.join("cert.pem"))
        .arg("--key")
        .arg(c.join("key.pem"))
        .arg("--bundle")
        .arg(c.join("bundle.pem"));
    let mut proc = support::Proc::spawn(cmd);
    let line = proc.line("outbound listening").await;
    let outbound = support::field(&line, "listen").to_owned();
    proc.line(" ready").await;

    let slow = tokio::spawn(http_get_owned(format!("http://{outbound}/slow")));
    arrived.recv().await.unwrap();
    proc.terminate();
    let (status, body) = slow
        .await
        .unwrap()
        .expect("the in-flight request was dropped");
    assert_eq!(status, 200, "the in-flight request was dropped");
    assert_eq!(body, "done URI=spiffe://cluster.local/ns/default/sa/client");
    let status = proc.exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", proc.log());
    assert!(proc.log().contains("SIGTERM: draining"), "{}", proc.log());
    web.shutdown().await;
}

async fn http_get_owned(url: String) -> Option<(u16, String)> {
    http_get(&url).await
}
