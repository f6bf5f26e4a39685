//! `Mesh::serve` is served by the one server module, so it holds its
//! connections to what `mesh-proxy`'s listeners hold theirs: a client that
//! dribbles its head is cut off after the header-read timeout, an idle
//! connection is closed after the idle timeout, a body over the cap is
//! answered 413 before the handler sees it, and a shutdown lets the
//! request in flight finish. Over real mTLS, in-process, on listeners the
//! tests bound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use mesh_core::store::Store;
use mesh_tower::Mesh;
use mesh_tower::body::{BoxBody, full};
use mesh_tower::limits::BodyLimits;
use mesh_tower::server::ServerSettings;
use mesh_tower::tls::MeshConnector;
use support::TestPki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews}
spec: {address: 127.0.0.1, labels: {app: reviews}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: productpage}
spec: {address: 127.0.0.1, labels: {app: productpage}, serviceAccount: productpage}
"#;

struct Served {
    pki: TestPki,
    server: mesh_tower::MeshServer,
    calls: Arc<AtomicUsize>,
}

/// `reviews` behind `Mesh::serve` with `settings`; the handler counts its
/// calls, reads the body and waits `delay` before answering.
async fn serve(settings: ServerSettings, delay: Duration) -> Served {
    let pki = TestPki::new("cluster.local");
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(
            std::path::Path::new("mesh.yaml"),
            CONFIG,
        ))
        .unwrap();
    let mesh = Mesh::builder()
        .store(store)
        .workload("default", "reviews")
        .identity_store(pki.store("reviews"))
        .server_settings(settings)
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = tower::service_fn(move |req: Request<BoxBody>| {
        let calls = counted.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let body = http_body_util::BodyExt::collect(req.into_body()).await?;
            tokio::time::sleep(delay).await;
            Ok::<_, mesh_tower::body::BoxError>(Response::new(full(format!(
                "{} bytes",
                body.to_bytes().len()
            ))))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = mesh.serve_listener(listener, app).unwrap();
    Served { pki, server, calls }
}

impl Served {
    /// An HTTP/1.1 mTLS connection as `productpage`.
    async fn connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.server.local_addr()).await.unwrap();
        MeshConnector::new(self.pki.store("productpage"))
            .with_alpn(vec![b"http/1.1".to_vec()])
            .connect(tcp, &[self.pki.id("reviews")])
            .await
            .unwrap()
            .into_inner()
    }
}

/// Reads until the server closes (`Some(what it sent)`) or `wait` passes
/// (`None`).
async fn closed_within<IO: AsyncReadExt + Unpin>(io: &mut IO, wait: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&out).into_owned())
}

fn small() -> ServerSettings {
    ServerSettings {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    }
}

#[tokio::test]
async fn a_slow_head_is_cut_off_after_the_header_read_timeout() {
    let served = serve(small(), Duration::ZERO).await;
    let mut tls = served.connect().await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nx-slow: ")
        .await
        .unwrap();
    // Far more than the timeout, far less than the test's patience.
    let answer = closed_within(&mut tls, Duration::from_secs(20)).await;
    assert!(answer.is_some(), "the connection was kept open");
    assert_eq!(served.calls.load(Ordering::SeqCst), 0);

    // A client that never starts a request at all is cut off too.
    let mut silent = served.connect().await;
    assert!(
        closed_within(&mut silent, Duration::from_secs(20))
            .await
            .is_some(),
        "a silent connection was kept open"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let served = serve(small(), Duration::ZERO).await;
    let mut tls = served.connect().await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut tls, Duration::from_secs(20))
        .await
        .expect("the idle connection was kept open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(served.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_over_the_cap_never_reaches_the_handler() {
    let settings = ServerSettings {
        body: BodyLimits::default().max_request_body(Some(16)),
        ..ServerSettings::default()
    };
    let served = serve(settings, Duration::ZERO).await;
    let mut tls = served.connect().await;
    tls.write_all(
        b"POST / HTTP/1.1\r\nhost: reviews\r\ncontent-length: 32\r\nconnection: close\r\n\r\n0123456789abcdef0123456789abcdef",
    )
    .await
    .unwrap();
    let answer = closed_within(&mut tls, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(served.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let served = serve(ServerSettings::default(), Duration::from_millis(500)).await;
    let mut tls = served.connect().await;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\n")
        .await
        .unwrap();
    // The handler has the request before the shutdown starts.
    while served.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Served { server, .. } = served;
    let shutdown = tokio::spawn(server.shutdown());
    let answer = closed_within(&mut tls, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "a draining server tells keep-alive clients to leave: {answer}"
    );
    // The shutdown ends once the request is done (a freed port is not
    // probed: another test may have bound it since).
    shutdown.await.unwrap();
}
