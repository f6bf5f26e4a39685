//! The control plane on Kubernetes, against an API server playing its part
//! (the in-test server of `mesh-kube`'s tests): not ready, and saying why,
//! while a kind cannot be listed, ready once everything is; the CA issues a
//! first certificate for a service-account token the TokenReview API
//! accepts (for the reviewed service account, whatever the CSR asks) and
//! refuses, by reason and counted, a token for another audience, an expired
//! one, a user's, and any while TokenReview is unavailable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../mesh-kube/tests/apiserver/mod.rs"]
mod apiserver;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, serve_mesh_kinds};
use mesh_ca::service::ca_identity;
use mesh_ca::{
    CaClient, CertificateAuthority, IssuedSvid, TokenStore, TrustBundle, TrustBundleSet,
};
use mesh_control::{ConfigServer, ControlPlane, ControlPlaneConfig};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_kube::{KubeOptions, KubeSource, TokenReviewer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

/// `GET path` over plain HTTP/1.1: the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn csr_asking_for(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_synced_and_service_account_tokens_reviewed_at_the_ca() {
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.put(
        "/api/v1/pods",
        json!({"metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
               "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]},
               "status": {"phase": "Running", "podIP": "10.244.0.11"}}),
    );
    api.fail(POLICIES, 403, u32::MAX);

    let ca_dir = tempfile::tempdir().unwrap();
    CertificateAuthority::init_dir(ca_dir.path(), td()).unwrap();
    let ca = Arc::new(CertificateAuthority::open_dir(ca_dir.path()).unwrap());
    let source = Arc::new(KubeSource::start(api.client(), KubeOptions::default()).await);
    let xds = ConfigServer::from_source(source.clone(), source.changes()).unwrap();
    let plane = ControlPlane::start_on_kubernetes(
        ca.clone(),
        TokenStore::new(ca_dir.path()),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ControlPlaneConfig::default(),
        xds.clone(),
        Arc::new(TokenReviewer::new(api.client(), "istio-ca")),
    )
    .await
    .unwrap()
    .with_metrics(TcpListener::bind("127.0.0.1:0").await.unwrap())
    .unwrap();
    let admin = plane.metrics_addr().unwrap();

    // Forbidden to list AuthorizationPolicies: not ready, and why.
    eventually("the refusal is what /ready says", async || {
        let (status, body) = get(admin, "/ready").await;
        status == 503 && body.contains("403")
    })
    .await;
    let (_, body) = get(admin, "/ready").await;
    assert!(
        body.contains("cannot list authorizationpolicies.security.istio.io/v1 (all namespaces)"),
        "{body}"
    );
    assert!(xds.not_ready().is_some());

    api.heal();
    eventually("ready once every kind is listed", async || {
        get(admin, "/ready").await.0 == 200
    })
    .await;
    let (_, status) = get(admin, "/debug/config").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["source"]["synced"], true, "{status}");
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(
        metrics.contains("mesh_kubernetes_watch_listed{resource=\"pods\"} 1"),
        "{metrics}"
    );

    // Service-account tokens, as the kubelet projects them into a file.
    api.token(
        "eyJ.web.ok",
        true,
        "system:serviceaccount:default:web",
        &["istio-ca"],
    );
    api.token(
        "eyJ.web.other",
        true,
        "system:serviceaccount:default:web",
        &["vault"],
    );
    api.token("eyJ.admin.ok", true, "kubernetes-admin", &["istio-ca"]);
    let tokens = tempfile::tempdir().unwrap();
    let bootstrap =
        TrustBundleSet::single(td(), TrustBundle::new(vec![ca.root().clone()]).unwrap());
    let ask = async |token: &str| {
        let file = tokens.path().join("istio-token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        CaClient::new(
            plane.ca_addr().to_string(),
            ca_identity(&ca).unwrap(),
            bootstrap.clone(),
        )
        .with_token_file(&file)
        .create_certificate(
            csr_asking_for("spiffe://cluster.local/ns/kube-system/sa/admin"),
            Duration::from_secs(3600),
            None,
        )
        .await
    };
    let chain = ask("eyJ.web.ok").await.unwrap();
    let svid = IssuedSvid::from_istio_chain(&chain).unwrap();
    assert_eq!(
        mesh_ca::svid_id(&svid.leaf).unwrap(),
        SpiffeId::for_workload(&td(), "default", "web").unwrap(),
        "the reviewed service account's, not the CSR's"
    );
    // The same token again: a projected token is not single-use.
    ask("eyJ.web.ok").await.unwrap();

    for (token, why) in [
        ("eyJ.web.other", "audiences"),
        ("eyJ.expired.x", "expired"),
        ("eyJ.admin.ok", "is not a service account"),
    ] {
        let e = ask(token).await.expect_err(token).to_string();
        assert!(
            e.contains("Unauthenticated") && e.contains("was not accepted") && e.contains(why),
            "{token}: {e}"
        );
    }
    api.fail("/apis/authentication.k8s.io", 500, u32::MAX);
    let e = ask("eyJ.web.ok").await.expect_err("no review").to_string();
    assert!(
        e.contains("Unavailable") && e.contains("could not be reviewed"),
        "{e}"
    );
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(
        metrics.contains("mesh_ca_requests_refused_total{reason=\"unauthenticated\"} 3\n")
            && metrics.contains("mesh_ca_certificates_issued_total 2\n"),
        "{metrics}"
    );
    plane.shutdown().await;
}

#[tokio::test]
async fn a_ca_without_kubernetes_refuses_service_account_tokens_by_name() {
    let ca_dir = tempfile::tempdir().unwrap();
    CertificateAuthority::init_dir(ca_dir.path(), td()).unwrap();
    let ca = Arc::new(CertificateAuthority::open_dir(ca_dir.path()).unwrap());
    let plane = ControlPlane::start(
        ca.clone(),
        TokenStore::new(ca_dir.path()),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ControlPlaneConfig::default(),
    )
    .await
    .unwrap();
    let bootstrap =
        TrustBundleSet::single(td(), TrustBundle::new(vec![ca.root().clone()]).unwrap());
    let e = CaClient::new(
        plane.ca_addr().to_string(),
        ca_identity(&ca).unwrap(),
        bootstrap,
    )
    .with_token("eyJ.a.b")
    .create_certificate(
        csr_asking_for("spiffe://cluster.local/ns/default/sa/web"),
        Duration::from_secs(3600),
        None,
    )
    .await
    .expect_err("no reviewer")
    .to_string();
    assert!(
        e.contains("does not accept Kubernetes service-account tokens"),
        "{e}"
    );
    plane.shutdown().await;
}
