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

/// One HTTP/1.1 request over TLS to `addr`, verifying the server as `name`
/// against `root`: the status and the body.
async fn https(
    addr: SocketAddr,
    name: &str,
    root: &rustls_pki_types::CertificateDer<'static>,
    method: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server_name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(
        format!(
            "{method} /inject HTTP/1.1\r\nhost: {name}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tls.read_to_string(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injector_answers_admission_reviews_over_https_as_the_service_s_name() {
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    let ca_dir = tempfile::tempdir().unwrap();
    CertificateAuthority::init_dir(ca_dir.path(), td()).unwrap();
    let ca = Arc::new(CertificateAuthority::open_dir(ca_dir.path()).unwrap());
    let source = Arc::new(KubeSource::start(api.client(), KubeOptions::default()).await);
    let xds = ConfigServer::from_source(source.clone(), source.changes()).unwrap();
    let service = "mesh-control.mesh-system.svc";
    let plane = ControlPlane::start_on_kubernetes(
        ca.clone(),
        TokenStore::new(ca_dir.path()),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ControlPlaneConfig {
            serving_dns_names: vec![service.into()],
            ..ControlPlaneConfig::default()
        },
        xds,
        Arc::new(TokenReviewer::new(api.client(), "istio-ca")),
    )
    .await
    .unwrap()
    .with_injector(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        mesh_kube::inject::InjectConfig::default(),
    )
    .unwrap();
    let injector = plane.injector_addr().unwrap();
    let root = ca.root().clone();
    let review = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../mesh-kube/tests/fixtures/admission/pod-create.json"),
    )
    .unwrap();

    let (status, body) = https(injector, service, &root, "POST", &review)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    // A pod the mesh cannot hold: refused, with the field.
    let mut bad: serde_json::Value = serde_json::from_str(&review).unwrap();
    bad["request"]["object"]["spec"]["securityContext"] = json!({"runAsUser": 1337});
    let (status, body) = https(injector, service, &root, "POST", &bad.to_string())
        .await
        .unwrap();
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.securityContext.runAsUser"),
        "{answer}"
    );

    // Not JSON, not POST.
    let (status, body) = https(injector, service, &root, "POST", "{not json")
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, _) = https(injector, service, &root, "GET", "").await.unwrap();
    assert_eq!(status, 405);

    // The certificate names the Service, and only what was asked: a client
    // dialling another name does not get through.
    let e = https(injector, "mesh-control.default.svc", &root, "POST", &review)
        .await
        .expect_err("another name");
    assert!(e.contains("certificate"), "{e}");
    plane.shutdown().await;
}

/// A VirtualService in namespace shop: `weight` as given.
fn virtual_service(weight: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "web", "namespace": "shop",
                     "uid": "6c1b2a3d-0000-4000-8000-00000000abcd"},
        "spec": {"hosts": ["web.shop.svc.cluster.local"],
                 "http": [{"route": [{"destination": {"host": "web.shop.svc.cluster.local"},
                                      "weight": weight}]}]},
    })
}

/// A rejected object gets a Warning Event naming the field, once per
/// distinct error (not on every re-read the rest of the cluster causes);
/// fixed and broken again, it gets another; an API server that refuses the
/// Event costs a count and a log line, not the configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_object_gets_a_warning_event_once_per_error() {
    const VS: &str = "/apis/networking.istio.io/v1/virtualservices";
    let api = ApiServer::start().await;
    serve_mesh_kinds(&api);
    api.put(VS, virtual_service(json!(100)));
    let options = KubeOptions {
        instance: "mesh-control-7d9f-x2x".to_owned(),
        ..KubeOptions::default()
    };
    let source = Arc::new(KubeSource::start(api.client(), options).await);
    let xds = ConfigServer::from_source(source.clone(), source.changes()).unwrap();
    eventually("the first configuration", async || {
        xds.not_ready().is_none()
    })
    .await;
    let rejected = xds.stats().rejections;

    api.put(VS, virtual_service(json!("ninety")));
    eventually("an Event for the rejected VirtualService", async || {
        !api.events().is_empty()
    })
    .await;
    let ev = &api.events()[0];
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert_eq!(ev["reason"], "Rejected", "{ev}");
    assert_eq!(ev["reportingController"], "mesh.io/mesh-control", "{ev}");
    assert_eq!(ev["reportingInstance"], "mesh-control-7d9f-x2x", "{ev}");
    assert_eq!(ev["metadata"]["namespace"], "shop", "{ev}");
    assert_eq!(
        ev["regarding"],
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "namespace": "shop", "name": "web",
               "uid": "6c1b2a3d-0000-4000-8000-00000000abcd"}),
        "{ev}"
    );
    let note = ev["note"].as_str().unwrap();
    assert!(
        note.starts_with("spec.http[0].route[0].weight: ") && note.contains("last good"),
        "{note}"
    );
    assert!(xds.stats().rejections > rejected);

    // Another change in the cluster re-reads it: the same error, no new Event.
    let reads = xds.stats().rejections;
    api.put(
        "/api/v1/pods",
        json!({"metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
               "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]},
               "status": {"phase": "Running", "podIP": "10.244.0.11"}}),
    );
    eventually("the re-read", async || xds.stats().rejections > reads).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.events().len(), 1, "{:?}", api.events());

    // Fixed, then broken another way: a second Event, with the new error.
    api.put(VS, virtual_service(json!(100)));
    eventually("accepted again", async || xds.stats().last_error.is_none()).await;
    api.put(VS, virtual_service(json!(-5)));
    eventually("a second Event", async || api.events().len() == 2).await;
    assert_ne!(api.events()[1]["note"], api.events()[0]["note"]);
    assert_eq!(source.event_counts().posted, 2);

    // The API server refuses Events: counted and logged; the mesh goes on.
    api.fail("/apis/events.k8s.io", 403, u32::MAX);
    api.put(VS, virtual_service(json!("x")));
    eventually("the refused Event is counted", async || {
        source.event_counts().failed == 1
    })
    .await;
    let mut text = String::new();
    mesh_control::SourceHealth::render(&*source, &mut text);
    assert!(
        text.contains("mesh_kubernetes_events_total{result=\"posted\"} 2\n")
            && text.contains("mesh_kubernetes_events_total{result=\"failed\"} 1\n"),
        "{text}"
    );
    api.heal();
    api.put(VS, virtual_service(json!(100)));
    eventually("accepted once fixed", async || {
        xds.stats().last_error.is_none()
    })
    .await;
}
