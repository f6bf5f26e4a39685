#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Rotation under continuous load: leaves living two seconds through many
//! renewals, then a root rotation A, A+B, B; not one request may fail.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_ca::{
    CertManager, CertificateAuthority, CredentialStore, LeafPolicy, LocalSigner, ManagerConfig,
    PeerRole, TrustBundle, TrustBundleSet,
};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_tower::tls::{MeshAcceptor, MeshConnector, TlsMode, spawn_server};
use rustls_pki_types::{CertificateDer, UnixTime};
use support::{get, whoami};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::for_workload(&td(), "default", sa).unwrap()
}

fn root_ca() -> CertificateAuthority {
    CertificateAuthority::generate_root(td(), OffsetDateTime::now_utc())
        .unwrap()
        .with_policy(LeafPolicy {
            default_ttl: Duration::from_secs(6),
            max_ttl: Duration::from_secs(6),
            backdate: Duration::from_secs(1),
        })
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl Tally {
    async fn record<E: std::fmt::Display>(&self, r: Result<(), E>) {
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_failure.lock().await.get_or_insert(e.to_string());
            }
        }
    }
}

async fn one_request(addr: std::net::SocketAddr, connector: &MeshConnector) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(tcp, &[id("backend")])
        .await
        .map_err(|e| e.to_string())?;
    let (status, body) = get(tls, false).await.map_err(|e| e.to_string())?;
    if status != 200 || body != id("frontend").to_string() {
        return Err(format!("{status} {body}"));
    }
    Ok(())
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..600 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn trusts(store: &CredentialStore, root: &CertificateDer<'static>) -> bool {
    store
        .load()
        .bundles()
        .get(&td())
        .is_some_and(|b| b.roots().contains(root))
}

fn bundle_is(store: &CredentialStore, roots: &[CertificateDer<'static>]) -> bool {
    store
        .load()
        .bundles()
        .get(&td())
        .is_some_and(|b| b.roots() == roots)
}

fn signed_by(store: &CredentialStore, root: &CertificateDer<'static>) -> bool {
    let only = TrustBundleSet::single(td(), TrustBundle::new(vec![root.clone()]).unwrap());
    let creds = store.load();
    let chain = creds.chain();
    only.verify(&chain[0], &chain[1..], PeerRole::Client, UnixTime::now())
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_and_root_rotation_drop_no_request() {
    let ca_a = root_ca();
    let ca_b = root_ca();
    let (root_a, root_b) = (ca_a.root().clone(), ca_b.root().clone());
    let server_signer = LocalSigner::new(Arc::new(ca_a.try_clone().unwrap()), id("backend"));
    let client_signer = LocalSigner::new(Arc::new(ca_a.try_clone().unwrap()), id("frontend"));
    // Leaves of six seconds, renewed at half: three seconds of slack for a
    // renewal delayed by a loaded machine (with two-second leaves, one
    // second was not always enough under a parallel build, and requests
    // met an expired certificate).
    let config = ManagerConfig {
        ttl: Duration::from_secs(6),
        initial_backoff: Duration::from_millis(50),
        ..ManagerConfig::default()
    };
    let server_mgr = CertManager::start(
        id("backend"),
        Arc::new(server_signer.clone()),
        config.clone(),
    )
    .await
    .unwrap();
    let client_mgr = CertManager::start(id("frontend"), Arc::new(client_signer.clone()), config)
        .await
        .unwrap();
    let (server_store, client_store) = (server_mgr.store().clone(), client_mgr.store().clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = MeshAcceptor::new(&server_store, TlsMode::Strict).unwrap();
    let server = spawn_server(listener, acceptor, whoami()).unwrap();
    let addr = server.local_addr();

    // Load: three loops of one fresh connection (a full handshake) per
    // request, and one long-lived h2 connection carrying a request stream.
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut loads = Vec::new();
    for _ in 0..3 {
        let (stop, tally) = (stop.clone(), tally.clone());
        let connector =
            MeshConnector::new(client_store.clone()).with_alpn(vec![b"http/1.1".to_vec()]);
        loads.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tally.record(one_request(addr, &connector).await).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    {
        let (stop, tally) = (stop.clone(), tally.clone());
        let connector = MeshConnector::new(client_store.clone());
        loads.push(tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = connector.connect(tcp, &[id("backend")]).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get("http://mesh.test/")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let r = match send.send_request(req).await {
                    Ok(resp) => resp
                        .into_body()
                        .collect()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                tally.record(r).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    // Leaves of six seconds renew about every three.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        server_mgr.status().renewals() >= 2,
        "server renewals {}",
        server_mgr.status().renewals()
    );
    assert!(
        client_mgr.status().renewals() >= 2,
        "client renewals {}",
        client_mgr.status().renewals()
    );

    // Root rotation, step 1: A still signs, everyone learns to trust B too.
    let a_plus_b = Arc::new(
        ca_a.try_clone()
            .unwrap()
            .with_extra_roots(vec![root_b.clone()]),
    );
    server_signer.set_ca(a_plus_b.clone());
    client_signer.set_ca(a_plus_b);
    wait_for("A+B bundles", || {
        trusts(&server_store, &root_b) && trusts(&client_store, &root_b)
    })
    .await;

    // Step 2: B signs; A is still trusted for the leaves not yet renewed.
    let b_plus_a = Arc::new(
        ca_b.try_clone()
            .unwrap()
            .with_extra_roots(vec![root_a.clone()]),
    );
    server_signer.set_ca(b_plus_a.clone());
    client_signer.set_ca(b_plus_a);
    wait_for("leaves signed by B", || {
        signed_by(&server_store, &root_b) && signed_by(&client_store, &root_b)
    })
    .await;

    // Step 3: B alone.
    let b_only = Arc::new(ca_b.try_clone().unwrap());
    server_signer.set_ca(b_only.clone());
    client_signer.set_ca(b_only);
    wait_for("bundles of B only", || {
        bundle_is(&server_store, std::slice::from_ref(&root_b))
            && bundle_is(&client_store, std::slice::from_ref(&root_b))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    server.shutdown().await;
    let (ok, failed) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    let first = tally.first_failure.lock().await.clone();
    eprintln!("rotation under load: {ok} requests ok, {failed} failed");
    assert_eq!(
        failed,
        0,
        "{failed} failed of {}; first: {first:?}",
        ok + failed
    );
    assert!(ok > 200, "only {ok} requests went through");
    // A client of root A only is now refused: the rotation really happened.
    assert!(!signed_by(&server_store, &root_a));
}
