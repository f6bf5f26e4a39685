//! Request bodies through the sidecar: huge bodies stream in bounded memory
//! (a `mesh-proxy sidecar` process, whose peak memory is its own), bodies
//! over the body cap (`--max-request-body`) are answered 413 and never
//! reach the app whole, and a client that stalls its body is cut off after
//! the body read timeout (`--body-read-timeout`) with 408 (both with the
//! sidecar in the test's runtime).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use mesh_tower::limits::BodyLimits;
use mesh_tower::server::ServerSettings;
use support::{World, counting_app, ready_sidecar, ready_sidecar_process};
use tokio::sync::mpsc;

/// A request body the test feeds frame by frame; dropping the sender ends
/// it cleanly.
struct Fed(mpsc::Receiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// `n` chunks of the same 64 KiB, with no size announced.
struct Repeat {
    chunk: Bytes,
    left: usize,
}

impl http_body::Body for Repeat {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

fn repeat(kib64: usize) -> Repeat {
    Repeat {
        chunk: Bytes::from(vec![b'x'; 64 << 10]),
        left: kib64,
    }
}

/// Sends `req` over HTTP/1.1 or h2; the status and body, or the error.
async fn send<B>(
    creds: &mesh_ca::CredentialStore,
    inbound: u16,
    h2: bool,
    req: http::Request<B>,
) -> Result<(u16, String), String>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resp = support::send_mtls(creds, inbound, h2, req)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .map_err(|_| "the response body never ended".to_owned())?
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn post<B>(body: B) -> http::Request<B> {
    http::Request::post("http://web/upload").body(body).unwrap()
}

/// The peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_streams_through_in_bounded_memory() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let (proc, inbound) = ready_sidecar_process(&world, app, "STRICT", &[]).await;
    let creds = world.creds("client");
    let before = peak_rss_kib(proc.child.id());

    // 96 MiB, no Content-Length (chunked over HTTP/1.1, DATA frames over
    // h2): no cap is configured, so all of it must arrive.
    for h2 in [false, true] {
        let (status, body) = send(&creds, inbound, h2, post(repeat(96 * 16)))
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "ok 100663296"), "h2: {h2}");
    }
    assert_eq!(seen.complete(), 2);
    // Buffering even one body would take the peak past 96 MiB; streaming
    // costs the frames in flight.
    let after = peak_rss_kib(proc.child.id());
    assert!(
        after < before + 48 * 1024,
        "the sidecar's peak RSS grew from {before} KiB to {after} KiB for a 96 MiB body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_get_413_and_never_reach_the_app_whole() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let settings = ServerSettings {
        body: BodyLimits::default().max_request_body(Some(64 << 10)),
        ..ServerSettings::default()
    };
    let (proxy, inbound) = ready_sidecar(&world, app, "STRICT", settings).await;
    let creds = world.creds("client");

    for h2 in [false, true] {
        // Exactly the cap: forwarded whole.
        let (status, body) = send(&creds, inbound, h2, post(repeat(1))).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok 65536"), "h2: {h2}");

        // A Content-Length over the cap: 413 before anything is forwarded.
        let heads = seen.heads();
        let req = http::Request::post("http://web/upload")
            .header("content-length", "1048576")
            .body(http_body_util::Full::new(Bytes::from(vec![b'x'; 1 << 20])))
            .unwrap();
        let (status, body) = send(&creds, inbound, h2, req).await.unwrap();
        assert_eq!(status, 413, "h2: {h2}: {body}");
        assert!(body.contains("larger than 65536 bytes"), "{body}");
        assert_eq!(
            seen.heads(),
            heads,
            "h2: {h2}: the app saw the refused request"
        );

        // No length announced, 1 MiB sent: cut off at the cap. The app may
        // have seen the head, never a complete body.
        let complete = seen.complete();
        match send(&creds, inbound, h2, post(repeat(16))).await {
            Ok((status, body)) => {
                assert_eq!(status, 413, "h2: {h2}: {body}");
                assert!(body.contains("larger than 65536 bytes"), "{body}");
            }
            // The sidecar may close the stream while the client still sends.
            Err(e) => assert!(!e.is_empty()),
        }
        assert_eq!(
            seen.complete(),
            complete,
            "h2: {h2}: a body over the cap reached the app whole"
        );
    }
    // The refusals are counted as 413s in the Istio metrics.
    let (_, metrics) = support::http_get(&proxy.admin_url("/stats/prometheus"))
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"413\"")),
        "{metrics}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_a_slow_steady_one_gets_through() {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let settings = ServerSettings {
        body: BodyLimits::default().body_read_timeout(Some(Duration::from_secs(1))),
        ..ServerSettings::default()
    };
    let (proxy, inbound) = ready_sidecar(&world, app, "STRICT", settings).await;
    let creds = world.creds("client");

    for h2 in [false, true] {
        // A byte every 300 ms for about 2 s: slow, never stalled for 1 s.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..7 {
                tx.send(Bytes::from_static(b"x")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let (status, body) = send(&creds, inbound, h2, post(Fed(rx))).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok 7"), "h2: {h2}");

        // Ten bytes of a promised hundred, then silence (the sender stays
        // open): 408, and the app never gets a complete body.
        let complete = seen.complete();
        let (tx, rx) = mpsc::channel(1);
        tx.send(Bytes::from_static(b"0123456789")).await.unwrap();
        let req = http::Request::post("http://web/upload")
            .header("content-length", "100")
            .body(Fed(rx))
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(15), send(&creds, inbound, h2, req))
            .await
            .expect("the stalled body was never cut off");
        let (status, body) = answer.unwrap();
        assert_eq!(status, 408, "h2: {h2}: {body}");
        assert!(body.contains("request body timeout"), "{body}");
        assert_eq!(seen.complete(), complete, "h2: {h2}");
        drop(tx);
    }
    proxy.shutdown().await;
}
