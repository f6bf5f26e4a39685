//! `mesh-proxy sidecar` as a process: readiness, the admin endpoints, STRICT
//! mTLS on the inbound port, a proxyless Rust client talking to it, and the
//! drain on SIGTERM that lets an in-flight request finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_ca::CertificateAuthority;
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_core::store::Store;
use mesh_tower::Mesh;
use mesh_tower::body::empty;
use tower::ServiceExt;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

/// The app: `/slow` answers after a second and a half.
async fn app(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    if req.uri().path() == "/slow" {
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
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let resp = client.get(url.parse().ok()?).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_serves_reports_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::init_dir(
        &dir.path().join("ca"),
        TrustDomain::new("cluster.local").unwrap(),
    )
    .unwrap();
    issue(&ca, "web", &dir.path().join("web"));
    let (inbound, app_port, admin) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(dir.path().join("mesh")).unwrap();
    std::fs::write(dir.path().join("mesh/mesh.yaml"), config(inbound)).unwrap();
    tokio::spawn(app(app_port));

    let id = dir.path().join("web");
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args([
            "sidecar",
            "--workload",
            "web",
            "--http-proxy",
            "off",
            "--drain-timeout",
            "10",
        ])
        .arg("--config")
        .arg(dir.path().join("mesh"))
        .arg("--app")
        .arg(format!("127.0.0.1:{app_port}"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin}"))
        .arg("--cert")
        .arg(id.join("cert.pem"))
        .arg("--key")
        .arg(id.join("key.pem"))
        .arg("--bundle")
        .arg(id.join("bundle.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sidecar = Sidecar(child);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, _)) = http_get(&format!("http://127.0.0.1:{admin}/ready")).await {
            break;
        }
        assert!(Instant::now() < deadline, "the sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    issue(&ca, "client", &dir.path().join("client"));
    let c = dir.path().join("client");
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

    // SIGTERM while a request is in flight: it finishes, then the process exits.
    let client = mesh.client();
    let slow = tokio::spawn(client.oneshot(Request::get("http://web/slow").body(empty()).unwrap()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        Command::new("kill")
            .args(["-TERM", &sidecar.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200, "the in-flight request was dropped");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = sidecar.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
