//! Abuse at the sidecar's inbound listener: a flood of connections that
//! never finish their handshake (silent, or half a ClientHello), and the
//! HTTP/2 floods (rapid reset, CONTINUATION, PING, SETTINGS, WINDOW_UPDATE)
//! sent as hand-made frames by a mesh peer over real mTLS, while an
//! established mesh client keeps being served. The floods judged by the
//! sidecar's memory run it as a `mesh-proxy` process (its resident set is
//! its own); the others start it in the test's runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tower::server::ServerSettings;
use support::h2::{
    ACK, CONTINUATION, END_STREAM, ENHANCE_YOUR_CALM, Frame, GOAWAY, HEADERS, PING, SETTINGS,
    WINDOW_UPDATE, block, frame, preface, take_frames,
};
use support::{AppSeen, Proc, Proxy, World, counting_app, mtls, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_do_not_starve_established_traffic() {
    let (world, proxy, inbound, seen) = start().await;
    let creds = world.creds("client");

    // The established client: one h2 connection, made before the flood.
    let io = TokioIo::new(mtls(&creds, inbound, b"h2").await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);

    // 300 connections: a third silent, a third with the first bytes of a TLS
    // ClientHello, a third with a record header promising more than follows.
    let mut flood = Vec::new();
    for i in 0..300 {
        let mut tcp = TcpStream::connect(("127.0.0.1", inbound)).await.unwrap();
        match i % 3 {
            0 => {}
            1 => tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(),
            _ => tcp
                .write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00])
                .await
                .unwrap(),
        }
        flood.push(tcp);
    }

    // Established traffic is still served, promptly, during the flood.
    for _ in 0..20 {
        let started = Instant::now();
        let resp = send
            .send_request(
                http::Request::get("http://web/")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    // And so is a brand-new mesh connection.
    let io = TokioIo::new(mtls(&creds, inbound, b"http/1.1").await);
    let (mut send1, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let resp = send1
        .send_request(
            http::Request::get("http://web/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(seen.heads(), 21);
    drop(flood);
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- HTTP/2 floods

async fn start() -> (World, Proxy, u16, Arc<AppSeen>) {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let (proxy, inbound) =
        support::ready_sidecar(&world, app, "STRICT", ServerSettings::default()).await;
    (world, proxy, inbound, seen)
}

/// The sidecar as a process, for what is measured in its memory.
async fn start_process() -> (World, Proc, u16, Arc<AppSeen>) {
    let world = World::new();
    let (app, seen) = counting_app().await;
    let (proc, inbound) = support::ready_sidecar_process(&world, app, "STRICT", &[]).await;
    (world, proc, inbound, seen)
}

/// An h2 client of the mesh, connected before the attack starts.
async fn established(world: &World, inbound: u16) -> SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(mtls(&world.creds("client"), inbound, b"h2").await);
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// One GET on the established client, answered 200 in full.
async fn served(send: &mut SendRequest<Empty<Bytes>>, path: &str) {
    let req = http::Request::get(format!("http://web{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .expect("the established client waited 20 s for an answer")
        .expect("the established client's request failed");
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

fn goaway(frames: &[Frame]) -> Option<&Frame> {
    frames.iter().find(|f| f.kind == GOAWAY)
}

const GET_HEADERS: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "web"),
    (":path", "/attack"),
];

/// CVE-2023-44487: streams opened with HEADERS and cancelled at once with
/// RST_STREAM, thousands of times on one connection, so the server does the
/// work of each request while the client's concurrency limit never counts
/// them. h2 counts streams reset before they were accepted
/// (`max_pending_accept_reset_streams`, 20, set in `src/runtime.rs`) and
/// answers GOAWAY ENHANCE_YOUR_CALM past that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_with_goaway_and_reaches_the_app_a_bounded_number_of_times() {
    const STREAMS: u32 = 10_000;
    let (world, proxy, inbound, seen) = start().await;
    let mut send = established(&world, inbound).await;
    served(&mut send, "/before").await;

    let tls = mtls(&world.creds("client"), inbound, b"h2").await;
    let attack = tokio::spawn(support::h2::rapid_reset(tls, "web", "/attack", STREAMS));

    // The established client is served all along.
    let mut during = 0;
    while !attack.is_finished() || during < 3 {
        served(&mut send, "/during").await;
        during += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attack = attack.await.unwrap();
    let goaway = attack.goaway().expect("no GOAWAY for a rapid reset");
    assert_eq!(
        goaway.goaway_code(),
        Some(ENHANCE_YOUR_CALM),
        "GOAWAY {goaway:?}"
    );
    assert!(attack.closed, "the attacking connection was left open");
    let last = goaway.goaway_last_stream().unwrap();
    assert!(
        last < STREAMS / 10,
        "the server took {} of {STREAMS} streams before its GOAWAY (last stream {last})",
        last.div_ceil(2)
    );
    let sent = attack.sent;
    let reached = seen.paths().iter().filter(|p| *p == "/attack").count();
    eprintln!(
        "rapid reset: {sent} pairs written, last stream {last}, {reached} reached the app, {during} served meanwhile"
    );
    assert!(reached <= 100, "{reached} reset requests reached the app");
    served(&mut send, "/after").await;
    proxy.shutdown().await;
}

/// CVE-2024-27316 class: a HEADERS frame without END_HEADERS, then an
/// endless run of CONTINUATION frames, empty (nothing for a size limit to
/// see) or each carrying 1 KiB of header. h2 allows a few CONTINUATION
/// frames past what the advertised 16 KiB header list needs and answers
/// GOAWAY ENHANCE_YOUR_CALM past that; nothing is buffered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off_in_bounded_memory() {
    const CAP: usize = 64 * 1024 * 1024;
    let (world, proc, inbound, seen) = start_process().await;
    let mut send = established(&world, inbound).await;
    served(&mut send, "/before").await;
    let pid = proc.child.id();
    let rss_before = rss_kib(pid);

    let mut one_kib = Vec::new();
    support::h2::hpack_literal(&mut one_kib, b"x-flood", &[b'a'; 1000]);
    for (what, payload) in [("empty", Vec::new()), ("1 KiB each", one_kib)] {
        let tls = mtls(&world.creds("client"), inbound, b"h2").await;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let watch = tokio::spawn(async move {
            support::h2::frames_until_closed(&mut rd, Duration::from_secs(60)).await
        });
        let attack = tokio::spawn(async move {
            let mut first = preface();
            first.extend(frame(HEADERS, END_STREAM, 1, &block(&GET_HEADERS[..2])));
            if wr.write_all(&first).await.is_err() {
                return 0;
            }
            let one = frame(CONTINUATION, 0, 1, &payload);
            let batch = one.repeat((64 * 1024) / one.len());
            let mut sent = 0;
            while sent < CAP {
                if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                sent += batch.len();
            }
            sent
        });
        let (frames, closed) = watch.await.unwrap();
        let sent = tokio::time::timeout(Duration::from_secs(60), attack)
            .await
            .expect("the flood could still write 60 s after the GOAWAY")
            .unwrap();
        let goaway = goaway(&frames).unwrap_or_else(|| panic!("{what}: no GOAWAY, got {frames:?}"));
        assert_eq!(
            goaway.goaway_code(),
            Some(ENHANCE_YOUR_CALM),
            "{what}: GOAWAY {goaway:?}"
        );
        assert!(closed, "{what}: the flooding connection was left open");
        assert!(
            sent < CAP,
            "{what}: the server took all {CAP} bytes of CONTINUATION"
        );
        eprintln!("continuation flood ({what}): {sent} bytes written before the close");
        served(&mut send, "/during").await;
    }
    let rss_after = rss_kib(pid);
    eprintln!("continuation flood: RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(
        seen.paths().iter().filter(|p| *p == "/attack").count(),
        0,
        "a flooded header block reached the app"
    );
}

/// An mTLS h2 connection to `web` whose socket buffers are small (no
/// autotuning), so a client that stops reading is felt by the server after
/// a few KiB instead of tens of MiB of kernel buffers.
async fn mtls_small_buffers(
    world: &World,
    inbound: u16,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(([127, 0, 0, 1], inbound).into())
        .await
        .unwrap();
    mesh_tower::tls::MeshConnector::new(world.creds("client"))
        .with_alpn(vec![b"h2".to_vec()])
        .connect(tcp, &[support::id("web")])
        .await
        .unwrap()
        .into_inner()
}

/// Control frames that each ask for an answer (PING, SETTINGS) or for
/// bookkeeping (WINDOW_UPDATE), sent by the hundred thousand without ever
/// reading: h2 keeps one pending PING ACK and one pending SETTINGS ACK and
/// reads no further until it is written, so an attacker that does not read
/// stalls itself (TCP backpressure) instead of filling the proxy's memory.
/// Afterwards the attacker reads again and sends one last PING: its ACK
/// proves the server got through the whole flood on a live connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_control_frame_floods_stay_in_bounded_memory() {
    const FRAMES: usize = 500_000;
    let (world, proc, inbound, _seen) = start_process().await;
    let mut send = established(&world, inbound).await;
    served(&mut send, "/before").await;
    let pid = proc.child.id();
    let rss_before = rss_kib(pid);
    let cases = [
        ("PING", frame(PING, 0, 0, b"12345678")),
        // INITIAL_WINDOW_SIZE = 65535, the default: valid, and each needs an ACK.
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])),
        // +1 on the connection window: FRAMES of them stay below 2^31 - 1.
        (
            "WINDOW_UPDATE",
            frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()),
        ),
    ];
    for (what, one) in cases {
        let tls = mtls_small_buffers(&world, inbound).await;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let started = Instant::now();
        let attack = tokio::spawn(async move {
            let _ = wr.write_all(&preface()).await;
            let mut flood = one.repeat(FRAMES);
            let mut written = 0;
            // Plain writes, so what was taken is known to the byte: a write
            // that makes no progress for 3 s means the server stopped
            // reading (backpressure), which is the point.
            let how = loop {
                if written == flood.len() {
                    break "all written";
                }
                let end = flood.len().min(written + 64 * 1024);
                match tokio::time::timeout(Duration::from_secs(3), wr.write(&flood[written..end]))
                    .await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break "closed",
                    Ok(Ok(n)) => written += n,
                    Err(_) => break "stalled",
                }
            };
            flood.drain(..written);
            (wr, written / one.len(), flood, how)
        });
        let mut during = 0;
        while !attack.is_finished() {
            served(&mut send, "/during").await;
            during += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (mut wr, sent, rest, how) = attack.await.unwrap();
        let rss_peak = rss_kib(pid);
        // Read again, and ask for one last ACK behind everything sent.
        let drain = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 64 * 1024]);
            loop {
                match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
                    Err(_) => return "timed out",
                    Ok(Ok(0)) | Ok(Err(_)) => return "closed",
                    Ok(Ok(n)) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if take_frames(&mut buf).iter().any(|f| {
                            f.kind == PING && f.flags & ACK != 0 && f.payload == b"lastping"
                        }) {
                            return "acked";
                        }
                    }
                }
            }
        });
        let _ = wr.write_all(&rest).await;
        let _ = wr.write_all(&frame(PING, 0, 0, b"lastping")).await;
        let _ = wr.flush().await;
        let end = drain.await.unwrap();
        let rss_after = rss_kib(pid);
        eprintln!(
            "{what} flood: {sent} frames in {:?} ({how}), {during} requests served meanwhile, last PING {end}, RSS {rss_before} -> {rss_peak} -> {rss_after} KiB",
            started.elapsed()
        );
        // A server that had ended the connection instead would be fine
        // too; one that stopped answering would not.
        assert_ne!(end, "timed out", "{what} flood: the connection hung");
        served(&mut send, "/after").await;
        for rss in [rss_peak, rss_after] {
            assert!(
                rss < rss_before + 48 * 1024,
                "{what} flood: RSS grew from {rss_before} KiB to {rss} KiB"
            );
        }
    }
}
