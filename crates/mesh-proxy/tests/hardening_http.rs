//! Hostile HTTP at the sidecar's inbound listener (the sidecar started in
//! the test's runtime), sent byte for byte by a mesh peer over real mTLS:
//! request smuggling shapes, malformed lengths and chunks, invalid header
//! names, invalid HTTP/2 pseudo-headers, oversized heads and slow heads. Each is answered 400/431, reset or closed, and the
//! app behind the sidecar (which counts what reaches it) never gets a
//! request out of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tower::server::ServerSettings;
use support::h2::{
    DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, block, frame, preface,
};
use support::{World, counting_app, exchange, mtls, read_bytes_for, read_for, ready_sidecar};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(3);

async fn start(
    settings: ServerSettings,
) -> (World, support::Proxy, u16, std::sync::Arc<support::AppSeen>) {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let (proxy, inbound) = ready_sidecar(&world, app, "STRICT", settings).await;
    (world, proxy, inbound, seen)
}

/// Header-level refusals: answered 400 before anything is forwarded.
const BAD_HEADS: &[(&str, &str)] = &[
    (
        "two different Content-Length headers",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\nabcde",
    ),
    (
        "a Content-Length list",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 4, 5\r\n\r\nabcde",
    ),
    (
        "a signed Content-Length",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: +4\r\n\r\nabcd",
    ),
    (
        "a negative Content-Length",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: -1\r\n\r\nabcd",
    ),
    (
        "a hex Content-Length",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 0x4\r\n\r\nabcd",
    ),
    (
        "a Content-Length with inner space",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 4 4\r\n\r\nabcd",
    ),
    (
        "a Content-Length past u64",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 99999999999999999999999\r\n\r\nabcd",
    ),
    (
        "Transfer-Encoding not ending in chunked",
        "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding gzip",
        "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: gzip\r\n\r\n0\r\n\r\n",
    ),
    (
        "a second Transfer-Encoding line that is not chunked",
        "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\ntransfer-encoding: identity\r\n\r\n0\r\n\r\n",
    ),
    (
        "Transfer-Encoding in HTTP/1.0",
        "POST / HTTP/1.0\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "a space inside a header name",
        "GET / HTTP/1.1\r\nhost: web\r\nbad header: x\r\n\r\n",
    ),
    (
        "a space before the colon",
        "GET / HTTP/1.1\r\nhost: web\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "a control byte in a header name",
        "GET / HTTP/1.1\r\nhost: web\r\nx-a\x01b: y\r\n\r\n",
    ),
    (
        "an empty header name",
        "GET / HTTP/1.1\r\nhost: web\r\n: empty\r\n\r\n",
    ),
    (
        "a NUL in a header value",
        "GET / HTTP/1.1\r\nhost: web\r\nx-a: a\x00b\r\n\r\n",
    ),
    (
        "a bare CR in a header value",
        "GET / HTTP/1.1\r\nhost: web\r\nx-a: a\rb\r\n\r\n",
    ),
    (
        "an obsolete folded header line",
        "GET / HTTP/1.1\r\nhost: web\r\nx-a: a\r\n b\r\n\r\n",
    ),
    (
        "a method with a delimiter in it",
        "G(T / HTTP/1.1\r\nhost: web\r\n\r\n",
    ),
    (
        "a request line with two spaces",
        "GET  / HTTP/1.1\r\nhost: web\r\n\r\n",
    ),
    (
        "an unknown HTTP version",
        "GET / HTTP/1.7\r\nhost: web\r\n\r\n",
    ),
    (
        "a control byte in the target",
        "GET /a\x7fb HTTP/1.1\r\nhost: web\r\n\r\n",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_heads_are_answered_400_and_never_forwarded() {
    let (world, proxy, inbound, seen) = start(ServerSettings::default()).await;
    let creds = world.creds("client");
    for (what, raw) in BAD_HEADS {
        let mut io = mtls(&creds, inbound, b"http/1.1").await;
        let answer = exchange(&mut io, raw.as_bytes(), WAIT).await;
        assert_eq!(
            support::status_of(&answer),
            Some(400),
            "{what}: expected 400, got {answer:?}"
        );
        assert_eq!(seen.heads(), 0, "{what}: forwarded to the app");
    }
    // The listener still serves a well-formed request afterwards.
    let mut io = mtls(&creds, inbound, b"http/1.1").await;
    let ok = exchange(
        &mut io,
        b"GET /fine HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert_eq!(support::status_of(&ok), Some(200), "{ok}");
    assert_eq!(seen.paths(), ["/fine"]);
    proxy.shutdown().await;
}

/// Body-level refusals: the head may already be on its way, but the app
/// never reads a complete body, and the client never gets a 2xx.
const BAD_BODIES: &[(&str, &str)] = &[
    (
        "a chunk size that is not hex",
        "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "a chunk size past u64",
        "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "a chunk longer than its size",
        "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "a negative chunk size",
        "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "a body shorter than its Content-Length, then EOF",
        "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\nshort",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http1_bodies_never_reach_the_app_whole() {
    let (world, proxy, inbound, seen) = start(ServerSettings::default()).await;
    let creds = world.creds("client");
    for (what, raw) in BAD_BODIES {
        let mut io = mtls(&creds, inbound, b"http/1.1").await;
        io.write_all(raw.as_bytes()).await.unwrap();
        // Half-close so "then EOF" is true for the short body.
        let _ = io.shutdown().await;
        let answer = read_for(&mut io, WAIT).await;
        let status = support::status_of(&answer);
        assert!(
            !matches!(status, Some(200..=299)),
            "{what}: answered {answer:?}"
        );
        assert_eq!(seen.complete(), 0, "{what}: the app read a whole body");
    }
    proxy.shutdown().await;
}

/// Content-Length and Transfer-Encoding together: RFC 9112 §6.3 lets a
/// server process the message as chunked, drop Content-Length and close the
/// connection afterwards (hyper's choice), which is what defeats smuggling.
/// What matters is that the request hidden behind the lengths never reaches
/// the app, in either header order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    let (world, proxy, inbound, seen) = start(ServerSettings::default()).await;
    let creds = world.creds("client");
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: web\r\n\r\n";
    let cases = [
        format!(
            "POST /cl-first HTTP/1.1\r\nhost: web\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        format!(
            "POST /te-first HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // CL.TE the other way: the chunked body hides a request a
        // Content-Length reader would see as the next one.
        format!(
            "POST /te-hides HTTP/1.1\r\nhost: web\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
    ];
    for raw in &cases {
        let mut io = mtls(&creds, inbound, b"http/1.1").await;
        let answer = exchange(&mut io, raw.as_bytes(), WAIT).await;
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "one request, one answer, then close: {answer:?}"
        );
    }
    assert!(
        !seen.paths().iter().any(|p| p == "/smuggled"),
        "a smuggled request reached the app: {:?}",
        seen.paths()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_answered_431() {
    let (world, proxy, inbound, seen) = start(ServerSettings::default()).await;
    let creds = world.creds("client");

    let mut many = String::from("GET / HTTP/1.1\r\nhost: web\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut io = mtls(&creds, inbound, b"http/1.1").await;
    let answer = exchange(&mut io, many.as_bytes(), WAIT).await;
    assert_eq!(support::status_of(&answer), Some(431), "{answer:?}");

    let big = format!(
        "GET / HTTP/1.1\r\nhost: web\r\nx-big: {}\r\n\r\n",
        "a".repeat(512 * 1024)
    );
    let mut io = mtls(&creds, inbound, b"http/1.1").await;
    let answer = exchange(&mut io, big.as_bytes(), WAIT).await;
    assert_eq!(support::status_of(&answer), Some(431), "{answer:?}");

    // HTTP/2: a header list over the 16 KiB we advertise.
    let tls = mtls(&creds, inbound, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get("http://web/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    for i in 0..40 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_str(&"v".repeat(1024)).unwrap(),
        );
    }
    // h2 answers 431 when the block decodes past the limit, and ends the
    // whole connection (GOAWAY COMPRESSION_ERROR) when the encoded block
    // already does, since it cannot keep its HPACK state in step otherwise.
    match send.send_request(req).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => assert!(format!("{e:?}").contains("GoAway"), "{e:?}"),
    }
    // One frame whose block decodes just past 16 KiB (16 × (990 + 5 + 32)
    // bytes, RFC 7541 §4.1 sizes): a plain 431 on a connection that lives.
    let tls = mtls(&creds, inbound, b"h2").await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get("http://web/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    for i in 10..26 {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_str(&"v".repeat(990)).unwrap(),
        );
    }
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(seen.heads(), 0, "an oversized head reached the app");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_after_the_header_read_timeout() {
    let (world, proxy, inbound, seen) = start(ServerSettings {
        header_read_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    })
    .await;
    let creds = world.creds("client");
    let mut io = mtls(&creds, inbound, b"http/1.1").await;
    let started = Instant::now();
    io.write_all(b"GET / HTTP/1.1\r\nhost: web\r\n")
        .await
        .unwrap();
    // One header line every 200 ms: each write is progress, but the head
    // never ends. The timeout counts from the first byte, not per line.
    let mut closed = false;
    for i in 0..40 {
        if io
            .write_all(format!("x-drip-{i}: y\r\n").as_bytes())
            .await
            .is_err()
            || io.flush().await.is_err()
        {
            closed = true;
            break;
        }
        let got = read_for(&mut io, Duration::from_millis(200)).await;
        if !got.is_empty() {
            // hyper answers 408 as it closes; anything else is wrong.
            assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "the slow client was never cut off");
    assert!(took < Duration::from_secs(4), "cut off only after {took:?}");
    assert_eq!(seen.heads(), 0);
    proxy.shutdown().await;
}

/// Waits for the server to close an h2 connection (sending a PING every
/// 200 ms while `ping`); the frames it sent and how long it took.
async fn until_closed<IO>(io: IO, ping: bool) -> (Vec<support::h2::Frame>, Option<Duration>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(io);
    let pinger = tokio::spawn(async move {
        if ping {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if wr
                    .write_all(&frame(support::h2::PING, 0, 0, &[0; 8]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        // Keep the write half open without a word.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(wr);
    });
    let (frames, closed) = support::h2::frames_until_closed(&mut rd, Duration::from_secs(15)).await;
    pinger.abort();
    (frames, closed.then(|| started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http2_heads_and_idle_connections_are_shut_down() {
    let (world, proxy, inbound, seen) = start(ServerSettings {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..ServerSettings::default()
    })
    .await;
    let creds = world.creds("client");

    // Half a header block (HEADERS without END_HEADERS), then silence.
    let mut io = mtls(&creds, inbound, b"h2").await;
    let mut bytes = preface();
    let head = block(&[(":method", "GET"), (":scheme", "http"), (":path", "/")]);
    bytes.extend(frame(HEADERS, END_STREAM, 1, &head));
    io.write_all(&bytes).await.unwrap();
    let (frames, took) = until_closed(io, false).await;
    let took = took.expect("a half-sent h2 head kept its connection");
    assert!(took < Duration::from_secs(6), "closed only after {took:?}");
    assert!(frames.iter().any(|f| f.kind == GOAWAY), "{frames:?}");

    // No request at all, only PINGs: idle, closed.
    let mut io = mtls(&creds, inbound, b"h2").await;
    io.write_all(&preface()).await.unwrap();
    let (frames, took) = until_closed(io, true).await;
    let took = took.expect("an h2 connection that never asked for anything was kept");
    assert!(took < Duration::from_secs(6), "closed only after {took:?}");
    assert!(frames.iter().any(|f| f.kind == GOAWAY), "{frames:?}");
    assert_eq!(seen.heads(), 0);

    // One request, answered, then only PINGs: closed after the idle timeout.
    let mut io = mtls(&creds, inbound, b"h2").await;
    let mut bytes = preface();
    let head = block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "web"),
    ]);
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &head));
    io.write_all(&bytes).await.unwrap();
    let (frames, took) = until_closed(io, true).await;
    assert!(took.is_some(), "an idle h2 connection was kept");
    assert!(
        frames.iter().any(|f| f.kind == HEADERS && f.stream == 1),
        "the request was not answered before the close: {frames:?}"
    );
    assert_eq!(seen.heads(), 1);

    // A busy connection is never closed: a request every 300 ms for 3 s.
    let io = TokioIo::new(mtls(&creds, inbound, b"h2").await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..10 {
        let req = http::Request::get("http://web/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap_or_else(|e| {
            panic!("request {i} on a busy connection failed: {e}");
        });
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- HTTP/2

fn h2_request(headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = preface();
    let block = block(headers);
    let flags = END_HEADERS | if body.is_none() { END_STREAM } else { 0 };
    out.extend(frame(HEADERS, flags, 1, &block));
    if let Some(b) = body {
        out.extend(frame(DATA, END_STREAM, 1, b));
    }
    out
}

/// What the server did with stream 1.
#[derive(Debug, PartialEq)]
enum H2Answer {
    Reset,
    GoAway,
    /// A response HEADERS frame; `ok` when it is an indexed `:status 200`.
    Response {
        ok: bool,
    },
    Nothing,
}

fn h2_answer(raw: &[u8]) -> H2Answer {
    let mut rest = raw;
    let mut answer = H2Answer::Nothing;
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let (kind, stream) = (
            rest[3],
            u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff,
        );
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        match (kind, stream) {
            (RST_STREAM, 1) => return H2Answer::Reset,
            (GOAWAY, _) => answer = H2Answer::GoAway,
            // 0x88 is the static-table `:status 200`.
            (HEADERS, 1) => {
                return H2Answer::Response {
                    ok: payload.first() == Some(&0x88),
                };
            }
            _ => {}
        }
        rest = &rest[9 + len..];
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_http2_headers_are_reset_and_never_forwarded() {
    let (world, proxy, inbound, seen) = start(ServerSettings::default()).await;
    let creds = world.creds("client");
    let ok = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "web"),
        (":path", "/"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h = ok.to_vec();
        h.extend_from_slice(extra);
        h
    };
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "no :method",
            vec![(":scheme", "https"), (":authority", "web"), (":path", "/")],
        ),
        (
            "no :path",
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "web"),
            ],
        ),
        (
            "an empty :path",
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "web"),
                (":path", ""),
            ],
        ),
        ("an unknown pseudo-header", with(&[(":evil", "1")])),
        (
            "a response pseudo-header in a request",
            with(&[(":status", "200")]),
        ),
        ("two :path", with(&[(":path", "/admin")])),
        ("a pseudo-header after a regular one", {
            let mut h = ok[..3].to_vec();
            h.push(("x-a", "b"));
            h.push((":path", "/"));
            h
        }),
        ("an uppercase header name", with(&[("X-Upper", "1")])),
        (
            "a connection-specific header",
            with(&[("connection", "keep-alive")]),
        ),
        (
            "transfer-encoding",
            with(&[("transfer-encoding", "chunked")]),
        ),
        ("te other than trailers", with(&[("te", "gzip")])),
        ("a CR LF in a value", with(&[("x-a", "a\r\nx-injected: 1")])),
        ("a space in a header name", with(&[("x a", "1")])),
    ];
    for (what, headers) in &cases {
        let mut io = mtls(&creds, inbound, b"h2").await;
        let raw = h2_request(headers, None);
        io.write_all(&raw).await.unwrap();
        io.flush().await.unwrap();
        let got = read_bytes_for(&mut io, Duration::from_secs(1)).await;
        let answer = h2_answer(&got);
        assert!(
            matches!(
                answer,
                H2Answer::Reset | H2Answer::GoAway | H2Answer::Response { ok: false }
            ),
            "{what}: {answer:?}"
        );
        assert_eq!(seen.heads(), 0, "{what}: forwarded to the app");
    }

    // A DATA length that contradicts content-length: the app never reads a
    // whole body.
    let mut io = mtls(&creds, inbound, b"h2").await;
    let mut h = ok.to_vec();
    h[0] = (":method", "POST");
    h.push(("content-length", "10"));
    io.write_all(&h2_request(&h, Some(b"ab"))).await.unwrap();
    let got = read_bytes_for(&mut io, Duration::from_secs(1)).await;
    let answer = h2_answer(&got);
    assert_ne!(answer, H2Answer::Response { ok: true }, "{answer:?}");
    assert_eq!(
        seen.complete(),
        0,
        "the app read a body shorter than its length"
    );

    // A valid request on the same listener still works.
    let mut io = mtls(&creds, inbound, b"h2").await;
    io.write_all(&h2_request(&ok, None)).await.unwrap();
    let got = read_bytes_for(&mut io, Duration::from_secs(1)).await;
    assert_eq!(h2_answer(&got), H2Answer::Response { ok: true });
    proxy.shutdown().await;
}
