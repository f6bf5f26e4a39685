//! Abuse at the sidecar's inbound listener: a flood of connections that
//! never finish their handshake (silent, or half a ClientHello) while an
//! established mesh client keeps being served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{World, counting_app, free_port, mesh_config, mtls, sidecar};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_do_not_starve_established_traffic() {
    let world = World::new();
    let inbound = free_port();
    world.write_config("mesh.yaml", &mesh_config(inbound, "STRICT"));
    let (app, seen) = counting_app().await;
    let mut proc = sidecar(&world, app, &[]);
    proc.ready().await;
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
}
