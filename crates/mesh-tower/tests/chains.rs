#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Certificate chains a peer presents in a real handshake: a legitimate
//! chain through intermediates is served; an overlong one (a path-building
//! cost an attacker chooses) is refused before any request.

mod support;

use mesh_tower::tls::{MeshAcceptor, TlsMode, spawn_server};
use rustls_pki_types::ServerName;
use support::{TestPki, get, raw_client, whoami};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn chains_through_intermediates_are_served_and_overlong_ones_refused() {
    let pki = TestPki::new("cluster.local");
    let server_store = pki.store("backend");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(&server_store, TlsMode::Strict).unwrap();
    let server = spawn_server(listener, acceptor, whoami()).unwrap();

    let call = |depth: usize| {
        let config = raw_client(&server_store, Some(pki.raw_chain("frontend", depth)));
        let addr = server.local_addr();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from("mesh.test").unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            get(tls, true).await.map_err(|e| e.to_string())
        }
    };
    for depth in [1, 2, 4] {
        assert_eq!(
            call(depth).await.unwrap(),
            (
                200,
                "spiffe://cluster.local/ns/default/sa/frontend".to_owned()
            ),
            "a chain through {depth} intermediates"
        );
    }
    // webpki allows at most 6 intermediates; 7 and a wildly long 40 are
    // refused, and no request reaches the handler.
    for depth in [7, 40] {
        let r = call(depth).await;
        assert!(r.is_err(), "a chain through {depth} intermediates: {r:?}");
    }
    server.shutdown().await;
}
