//! One load run through the sidecar (started in the test's runtime) while
//! its certificate is rotated, its configuration reloaded, and then it is
//! drained, as SIGTERM drains it (`tests/sidecar.rs` sends the signal to a
//! process): no request the app answered is lost on the way back, no
//! request fails before the drain, and the requests in flight when it
//! begins finish.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tower::server::ServerSettings;
use support::{World, bound, files_identity, http_get, mesh_config, start_sidecar};

/// An app that takes 100 ms per request (so requests are in flight when
/// the drain begins) and counts the answers it gave.
async fn slow_app() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = Arc::new(AtomicUsize::new(0));
    let a = answered.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let a = a.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let a = a.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        a.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (port, answered)
}

/// An mTLS connection to `web` as `client`, or `None` if it is refused.
async fn try_mtls(
    creds: &mesh_ca::CredentialStore,
    port: u16,
    alpn: &[u8],
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let tls = mesh_tower::tls::MeshConnector::new(creds.clone())
        .with_alpn(vec![alpn.to_vec()])
        .connect(tcp, &[support::id("web")])
        .await
        .map_err(|e| eprintln!("mTLS refused: {e}"))
        .ok()?;
    Some(tls.into_inner())
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    ok_after_term: AtomicUsize,
    failed_before_term: AtomicUsize,
    refused_after_term: AtomicUsize,
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reload_and_drain_under_load_lose_nothing() {
    let world = World::new();
    let (app, answered) = slow_app().await;
    let socket = bound();
    let inbound = socket.local_addr().port();
    world.write_config("mesh.yaml", &mesh_config(inbound, "STRICT"));
    let proxy = start_sidecar(
        &world,
        socket,
        app,
        files_identity(&world, "web"),
        ServerSettings::default(),
        Duration::from_secs(10),
    )
    .await;
    proxy.ready().await;
    let creds = world.creds("client");
    let (_, before) = http_get(&proxy.admin_url("/stats/prometheus"))
        .await
        .unwrap();

    let term = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    // Twelve clients: nine on one h2 connection each, three that open an
    // HTTP/1.1 connection per request.
    for worker in 0..12 {
        let (creds, term, tally) = (creds.clone(), term.clone(), tally.clone());
        load.push(tokio::spawn(async move {
            let h2 = worker % 4 != 3;
            let mut conn = None;
            loop {
                let sent_after_term = term.load(Ordering::SeqCst);
                let req = http::Request::get("http://web/")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
                let io = if h2 && conn.is_some() {
                    None
                } else {
                    match try_mtls(&creds, inbound, alpn).await {
                        Some(io) => Some(TokioIo::new(io)),
                        None if sent_after_term => {
                            // The listener is closed: the drain has begun.
                            tally.refused_after_term.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        None => {
                            tally.failed_before_term.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                    }
                };
                let result = if h2 {
                    if let Some(io) = io {
                        let (send, c) =
                            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                                .await
                                .unwrap();
                        tokio::spawn(c);
                        conn = Some(send);
                    }
                    conn.as_mut().unwrap().send_request(req).await
                } else {
                    let (mut send, c) = hyper::client::conn::http1::handshake(io.unwrap())
                        .await
                        .unwrap();
                    tokio::spawn(c);
                    send.send_request(req).await
                };
                if let Err(e) = &result {
                    eprintln!(
                        "request failed (worker {worker}, after the drain began: {sent_after_term}): {e:?}"
                    );
                }
                let whole = match result {
                    Ok(resp) if resp.status() == 200 => resp
                        .into_body()
                        .collect()
                        .await
                        .is_ok_and(|b| b.to_bytes() == "ok"),
                    _ => false,
                };
                if whole {
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                    if term.load(Ordering::SeqCst) {
                        tally.ok_after_term.fetch_add(1, Ordering::SeqCst);
                    }
                } else if sent_after_term {
                    // Refused during the drain (GOAWAY, connection closed):
                    // counted; whether the app answered it is checked below.
                    tally.refused_after_term.fetch_add(1, Ordering::SeqCst);
                    return;
                } else {
                    tally.failed_before_term.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
            }
        }));
    }

    // Three seconds of churn: a new certificate every 250 ms, and a valid
    // configuration change (a second service appears and goes) every 300 ms.
    let extra = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: extra}\n\
                 spec: {hosts: [extra.example.com], ports: [{number: 80, name: http}], location: MESH_EXTERNAL}\n";
    let until = Instant::now() + Duration::from_secs(3);
    let mut i = 0u32;
    while Instant::now() < until {
        if i % 2 == 0 {
            world.issue("web");
        }
        if i % 3 == 0 {
            if i % 2 == 0 {
                world.write_config("extra.yaml", extra);
            } else {
                world.write_config("extra.yaml", "");
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(125)).await;
    }
    let (_, during) = http_get(&proxy.admin_url("/stats/prometheus"))
        .await
        .unwrap();
    assert!(
        metric(&during, "mesh_cert_renewals_total") > metric(&before, "mesh_cert_renewals_total"),
        "the certificate was never rotated"
    );
    assert!(
        metric(&during, "mesh_config_reloads_total") > metric(&before, "mesh_config_reloads_total"),
        "the configuration was never reloaded"
    );
    assert_eq!(metric(&during, "mesh_config_rejections_total"), 0);

    // The drain with requests in flight (each takes 100 ms at the app).
    term.store(true, Ordering::SeqCst);
    let drained = tokio::spawn(proxy.shutdown());
    for w in load {
        tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a load worker never ended")
            .unwrap();
    }
    // The drain ends (a panic of the sidecar's tasks would surface here).
    tokio::time::timeout(Duration::from_secs(15), drained)
        .await
        .expect("the sidecar never finished draining")
        .unwrap();

    let ok = tally.ok.load(Ordering::SeqCst);
    eprintln!(
        "ok {ok} (after the drain began {}), refused after it {}, failed before {}, app answered {}",
        tally.ok_after_term.load(Ordering::SeqCst),
        tally.refused_after_term.load(Ordering::SeqCst),
        tally.failed_before_term.load(Ordering::SeqCst),
        answered.load(Ordering::SeqCst)
    );
    assert_eq!(
        tally.failed_before_term.load(Ordering::SeqCst),
        0,
        "requests failed during rotation and reload"
    );
    assert!(ok > 100, "too little load to mean anything: {ok}");
    assert_eq!(
        answered.load(Ordering::SeqCst),
        ok,
        "the app answered requests whose answers never reached the client"
    );
    assert!(
        tally.ok_after_term.load(Ordering::SeqCst) > 0,
        "no request in flight when the drain began finished"
    );
}
