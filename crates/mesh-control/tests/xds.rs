#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The configuration server end to end, over real mTLS on listeners bound
//! to port 0: a data plane (`mesh_tower::xds::XdsClient`) gets the view its
//! workload is entitled to and follows every edit of the control plane's
//! folder; a broken edit is rejected at the control plane, which keeps
//! serving the last good one and says why; streams without the workload's
//! SVID, for another workload or for something not served are refused and
//! counted; NACKs are counted; the state-of-the-world stream of gRPC's
//! proxyless clients is served Envoy's resources; a restarted control plane is followed
//! without a resend of what the data plane holds; a client that never reads
//! holds back no one.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_ca::service::ca_identity;
use mesh_ca::tls::{SpiffeServerVerifier, client_config, client_config_without_cert};
use mesh_ca::{
    CertificateAuthority, CredentialStore, Credentials, TokenStore, TrustBundle, TrustBundleSet,
};
use mesh_control::{ConfigServer, ControlPlane, ControlPlaneConfig};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_core::store::Store;
use mesh_core::xds::CONFIG_TYPE_URL;
use mesh_tower::xds::{XdsClient, XdsConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: bank}
spec:
  hosts: [ledger]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: ledger}}
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 127.0.0.10, labels: {app: reviews, version: v1}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: shop}
spec: {address: 127.0.0.11, labels: {app: reviews, version: v2}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger-1, namespace: bank}
spec: {address: 127.0.0.12, labels: {app: ledger}, serviceAccount: ledger}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.0.0.13, labels: {app: web}, serviceAccount: web}
"#;

const SPLIT: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
"#;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::for_workload(&td(), ns, sa).unwrap()
}

struct Fixture {
    ca_dir: tempfile::TempDir,
    config: tempfile::TempDir,
    ca: Arc<CertificateAuthority>,
}

impl Fixture {
    fn new() -> Self {
        let ca_dir = tempfile::tempdir().unwrap();
        CertificateAuthority::init_dir(ca_dir.path(), td()).unwrap();
        let ca = Arc::new(CertificateAuthority::open_dir(ca_dir.path()).unwrap());
        let config = tempfile::tempdir().unwrap();
        std::fs::write(config.path().join("mesh.yaml"), MESH).unwrap();
        Self { ca_dir, config, ca }
    }

    fn write(&self, file: &str, text: &str) {
        // Written aside and renamed, as config management does: the
        // watcher never reads half a file.
        let tmp = self.config.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config.path().join(file)).unwrap();
    }

    async fn serve(&self, listener: TcpListener) -> ControlPlane {
        let ca = Arc::new(CertificateAuthority::open_dir(self.ca_dir.path()).unwrap());
        let xds = ConfigServer::from_files(self.config.path()).unwrap();
        ControlPlane::start_serving(
            ca,
            TokenStore::new(self.ca_dir.path()),
            listener,
            ControlPlaneConfig::default(),
            xds,
        )
        .await
        .unwrap()
        .with_metrics(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .unwrap()
    }

    fn credentials(&self, ns: &str, sa: &str) -> CredentialStore {
        let (svid, key) = self
            .ca
            .issue_with_new_key(&id(ns, sa), None, time::OffsetDateTime::now_utc())
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        CredentialStore::new(Credentials::from_issued(&svid, key, TrustBundleSet::new()).unwrap())
    }

    fn xds_config(&self, plane: &ControlPlane, workload: &str) -> XdsConfig {
        let mut c = XdsConfig::new(
            plane.ca_addr().to_string(),
            ca_identity(&self.ca).unwrap(),
            workload,
        );
        c.min_backoff = Duration::from_millis(20);
        c.max_backoff = Duration::from_millis(200);
        c
    }

    /// A data plane for `workload` with the SVID of `ns/sa`.
    fn follow(&self, plane: &ControlPlane, workload: &str, ns: &str, sa: &str) -> Follower {
        let store = Arc::new(Store::new());
        let client = XdsClient::spawn(
            self.xds_config(plane, workload),
            self.credentials(ns, sa),
            store.clone(),
        );
        Follower { store, client }
    }

    /// A raw gRPC channel with `creds` (none: no client certificate).
    async fn channel(
        &self,
        plane: &ControlPlane,
        creds: Option<CredentialStore>,
    ) -> tonic::transport::Channel {
        let server = vec![ca_identity(&self.ca).unwrap()];
        let tls = match creds {
            Some(c) => client_config(&c, SpiffeServerVerifier::new(c.clone(), server)).unwrap(),
            None => {
                let bundles = TrustBundleSet::single(
                    td(),
                    TrustBundle::new(vec![self.ca.root().clone()]).unwrap(),
                );
                client_config_without_cert(SpiffeServerVerifier::with_bundles(
                    Arc::new(bundles),
                    server,
                ))
                .unwrap()
            }
        };
        mesh_ca::connect_channel(&plane.ca_addr().to_string(), tls)
            .await
            .unwrap()
    }
}

struct Follower {
    store: Arc<Store>,
    client: XdsClient,
}

/// Waits (up to 10 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn request(workload: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: workload.to_owned(),
            ..Node::default()
        }),
        type_url: CONFIG_TYPE_URL.to_owned(),
        ..DeltaDiscoveryRequest::default()
    }
}

/// Opens a raw stream; returns the sender of further requests and the
/// first answer (a response or the status the stream was refused with).
async fn raw_stream(
    channel: tonic::transport::Channel,
    first: DeltaDiscoveryRequest,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Result<
        (
            envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
            tonic::Streaming<
                envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
            >,
        ),
        tonic::Status,
    >,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let answer = async {
        let mut stream = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unknown("stream ended"))?;
        Ok((first, stream))
    }
    .await;
    (tx, answer)
}

fn metric(plane: &ControlPlane, line_start: &str) -> u64 {
    let text = plane.render_metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).map(str::trim))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .parse()
        .unwrap()
}

/// A listener on a loopback port bound to 0, and a second handle on the
/// same socket for the control plane's restart: the port stays held while
/// the first control plane is gone (a connection then waits in the
/// backlog), so nothing else can take it and nothing is re-bound.
fn held_listener() -> (TcpListener, std::net::TcpListener) {
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let again = std.try_clone().unwrap();
    (TcpListener::from_std(std).unwrap(), again)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_plane_gets_its_view_and_follows_every_edit() {
    let f = Fixture::new();
    let plane = f
        .serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await;
    let web = f.follow(&plane, "shop/web", "shop", "web");
    until("the data plane has its first configuration", || {
        web.store.is_ready()
    })
    .await;
    let snap = web.store.load();
    assert!(snap.services.contains_key("reviews.shop.svc.cluster.local"));
    assert!(
        !snap.services.contains_key("ledger.bank.svc.cluster.local"),
        "bank's ledger is exported to bank only"
    );
    let keys: Vec<&str> = snap.workloads.iter().map(|w| w.key.as_str()).collect();
    assert_eq!(keys, ["shop/reviews-v1", "shop/reviews-v2", "shop/web"]);

    // A client that opens a stream and never reads holds back no one.
    let (_stuck, answer) = raw_stream(
        f.channel(&plane, Some(f.credentials("shop", "web"))).await,
        request("shop/web"),
    )
    .await;
    let (_first, _unread) = answer.unwrap();

    // An edit reaches the data plane.
    f.write("split.yaml", SPLIT);
    until("the split reaches the data plane", || {
        web.store
            .load()
            .mesh_routes
            .contains_key("reviews.shop.svc.cluster.local")
    })
    .await;
    let version = web.store.stats().version;

    // A broken edit is rejected at the control plane, which keeps serving
    // the last good configuration and says why.
    f.write(
        "broken.yaml",
        &SPLIT.replace(
            "reviews, namespace: shop}\nspec:\n  hosts",
            "other, namespace: shop}\nspec:\n  bogus: 1\n  hosts",
        ),
    );
    until("the control plane rejects the edit", || {
        metric(&plane, "mesh_config_last_rejected ") == 1
    })
    .await;
    let stats = plane_stats(&plane).await;
    assert!(stats.contains("broken.yaml"), "{stats}");
    assert!(stats.contains("bogus"), "{stats}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(web.store.stats().version, version, "nothing was pushed");
    assert!(
        web.store
            .load()
            .mesh_routes
            .contains_key("reviews.shop.svc.cluster.local")
    );

    // Fixed, it is served again; a removal is pushed too.
    std::fs::remove_file(f.config.path().join("broken.yaml")).unwrap();
    std::fs::remove_file(f.config.path().join("split.yaml")).unwrap();
    until("the removal reaches the data plane", || {
        !web.store
            .load()
            .mesh_routes
            .contains_key("reviews.shop.svc.cluster.local")
    })
    .await;
    assert_eq!(metric(&plane, "mesh_config_last_rejected "), 0);
    assert!(web.client.status().acks() >= 3, "{:?}", web.client.status());
    assert_eq!(web.client.status().nacks(), 0);
    // The data plane applies, then ACKs: the control plane counts the ACK
    // a moment after the data plane's store has the configuration.
    until("the control plane has counted the ACKs", || {
        metric(&plane, "mesh_xds_acks_total ") >= 3
    })
    .await;
    assert_eq!(metric(&plane, "mesh_xds_connected_clients "), 2);
    plane.shutdown().await;
}

/// `GET /debug/config` on the control plane's metrics endpoint, as a user
/// would read it.
async fn plane_stats(plane: &ControlPlane) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(plane.metrics_addr().unwrap())
        .await
        .unwrap();
    tcp.write_all(b"GET /debug/config HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// What is asked, with whose SVID (`namespace`, `sa`), and the refusal.
type Case<'a> = (
    &'a str,
    Option<(&'a str, &'a str)>,
    DeltaDiscoveryRequest,
    tonic::Code,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_the_workloads_identity_are_refused_by_name() {
    let f = Fixture::new();
    let plane = f
        .serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await;
    let cases: [Case<'_>; 6] = [
        (
            "no SVID",
            None,
            request("shop/web"),
            tonic::Code::PermissionDenied,
            "SVID",
        ),
        (
            "another workload's config",
            Some(("shop", "reviews")),
            request("shop/web"),
            tonic::Code::PermissionDenied,
            "is not the identity of WorkloadEntry shop/web",
        ),
        (
            "a workload the configuration does not have",
            Some(("shop", "web")),
            request("shop/nobody"),
            tonic::Code::PermissionDenied,
            "no WorkloadEntry shop/nobody",
        ),
        (
            "a node id that is not namespace/name",
            Some(("shop", "web")),
            request("sidecar~127.0.0.13~web.shop~shop.svc.cluster.local"),
            tonic::Code::InvalidArgument,
            "namespace/name",
        ),
        (
            "a type not served",
            Some(("shop", "web")),
            DeltaDiscoveryRequest {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                ..request("shop/web")
            },
            tonic::Code::InvalidArgument,
            "is not served",
        ),
        (
            "named subscriptions",
            Some(("shop", "web")),
            DeltaDiscoveryRequest {
                resource_names_subscribe: vec!["ServiceEntry/bank/ledger".into()],
                ..request("shop/web")
            },
            tonic::Code::InvalidArgument,
            "wildcard",
        ),
    ];
    for (what, creds, req, code, message) in cases {
        let creds = creds.map(|(ns, sa)| f.credentials(ns, sa));
        let (_tx, answer) = raw_stream(f.channel(&plane, creds).await, req).await;
        let status = answer.err().unwrap_or_else(|| panic!("{what}: served"));
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {status:?}");
    }
    for (reason, n) in [
        ("no_svid", 1),
        ("wrong_identity", 1),
        ("unknown_workload", 1),
        ("bad_request", 3),
    ] {
        let line = format!("mesh_xds_streams_refused_total{{reason=\"{reason}\"}} ");
        assert_eq!(metric(&plane, &line), n, "{reason}");
    }
    plane.shutdown().await;
}

fn sotw(workload: &str, type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: workload.to_owned(),
            ..Node::default()
        }),
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..DiscoveryRequest::default()
    }
}

/// The state-of-the-world stream gRPC's proxyless clients speak: admitted
/// as the delta stream is, answering each type's subscription with the
/// resources that exist, counting ACKs and NACKs, pushing a changed
/// listener live, and refusing a type it does not serve by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_of_the_world_stream_serves_envoy_resources_to_grpc_clients() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use mesh_control::grpc::{CLUSTER_TYPE, LISTENER_TYPE};
    use prost::Message as _;

    let f = Fixture::new();
    let plane = f
        .serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await;
    let open = |creds: CredentialStore, first: DiscoveryRequest| {
        let f = &f;
        let plane = &plane;
        async move {
            let mut client =
                AggregatedDiscoveryServiceClient::new(f.channel(plane, Some(creds)).await);
            let (tx, rx) = mpsc::channel(4);
            tx.send(first).await.unwrap();
            let answer = client
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await;
            (tx, answer)
        }
    };

    // Admission: another workload's node id, a type not served.
    let (_tx, answer) = open(
        f.credentials("bank", "ledger"),
        sotw("shop/web", LISTENER_TYPE, &["reviews:80"]),
    )
    .await;
    let status = match answer {
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
        Err(s) => s,
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let (_tx, answer) = open(
        f.credentials("shop", "web"),
        sotw("shop/web", CONFIG_TYPE_URL, &[]),
    )
    .await;
    let status = match answer {
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
        Err(s) => s,
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("is not served"), "{status:?}");

    // A listener that exists and one that does not: the response holds
    // the one.
    let (tx, answer) = open(
        f.credentials("shop", "web"),
        sotw("shop/web", LISTENER_TYPE, &["reviews:80", "nothing:80"]),
    )
    .await;
    let mut responses = answer.unwrap().into_inner();
    let lds = responses.message().await.unwrap().unwrap();
    assert_eq!(lds.type_url, LISTENER_TYPE);
    assert_eq!(lds.resources.len(), 1);
    let listener = Listener::decode(lds.resources[0].value.as_slice()).unwrap();
    assert_eq!(listener.name, "reviews:80");
    assert_eq!(
        mesh_control::grpc::clusters_of(&listener),
        vec!["outbound|80||reviews.shop.svc.cluster.local".to_owned()]
    );
    let acks = metric(&plane, "mesh_xds_acks_total ");
    tx.send(DiscoveryRequest {
        version_info: lds.version_info.clone(),
        response_nonce: lds.nonce.clone(),
        ..sotw("shop/web", LISTENER_TYPE, &["reviews:80", "nothing:80"])
    })
    .await
    .unwrap();

    // The cluster, then a NACK of it, counted.
    tx.send(sotw(
        "shop/web",
        CLUSTER_TYPE,
        &["outbound|80||reviews.shop.svc.cluster.local"],
    ))
    .await
    .unwrap();
    let cds = responses.message().await.unwrap().unwrap();
    assert_eq!(cds.type_url, CLUSTER_TYPE);
    assert_eq!(cds.resources.len(), 1);
    let nacks = metric(&plane, "mesh_xds_nacks_total ");
    tx.send(DiscoveryRequest {
        response_nonce: cds.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cluster rejected on purpose".into(),
            ..RpcStatus::default()
        }),
        ..sotw(
            "shop/web",
            CLUSTER_TYPE,
            &["outbound|80||reviews.shop.svc.cluster.local"],
        )
    })
    .await
    .unwrap();

    // An edit: the listener is pushed again, now with the split.
    f.write("split.yaml", SPLIT);
    let pushed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let r = responses.message().await.unwrap().unwrap();
            if r.type_url == LISTENER_TYPE {
                return r;
            }
        }
    })
    .await
    .expect("the listener is pushed after the edit");
    assert_ne!(pushed.version_info, lds.version_info);
    let listener = Listener::decode(pushed.resources[0].value.as_slice()).unwrap();
    assert_eq!(
        mesh_control::grpc::clusters_of(&listener),
        vec![
            "outbound|80|v1|reviews.shop.svc.cluster.local".to_owned(),
            "outbound|80|v2|reviews.shop.svc.cluster.local".to_owned()
        ]
    );
    assert_eq!(metric(&plane, "mesh_xds_acks_total "), acks + 1);
    assert_eq!(metric(&plane, "mesh_xds_nacks_total "), nacks + 1);
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_removed_loses_its_stream_and_nacks_are_counted() {
    let f = Fixture::new();
    let plane = f
        .serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await;
    let (tx, answer) = raw_stream(
        f.channel(&plane, Some(f.credentials("shop", "web"))).await,
        request("shop/web"),
    )
    .await;
    let (first, mut stream) = answer.unwrap();
    assert!(
        first
            .resources
            .iter()
            .any(|r| r.name == "WorkloadEntry/shop/web")
    );
    tx.send(DeltaDiscoveryRequest {
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "this data plane cannot honour it".into(),
            details: vec![],
        }),
        ..request("shop/web")
    })
    .await
    .unwrap();
    until("the NACK is counted", || {
        metric(&plane, "mesh_xds_nacks_total ") == 1
    })
    .await;

    // The workload's entry goes: its stream is ended, by name.
    f.write(
        "mesh.yaml",
        &MESH.replace("name: web, namespace: shop", "name: web2, namespace: shop"),
    );
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("no WorkloadEntry shop/web"),
        "{status:?}"
    );
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_is_followed_without_a_resend() {
    let f = Fixture::new();
    let (listener, restart) = held_listener();
    let addr = listener.local_addr().unwrap();
    let plane = f.serve(listener).await;
    let web = f.follow(&plane, "shop/web", "shop", "web");
    until("the first configuration", || web.store.is_ready()).await;
    let snap = web.store.load();

    plane.shutdown().await;
    until("the data plane sees the control plane go", || {
        !web.client.status().connected()
    })
    .await;
    // The last good configuration stays in force.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(Arc::ptr_eq(&snap, &web.store.load()));

    // The same address again (the restart of a control plane behind a
    // fixed address or name).
    let plane = f.serve(TcpListener::from_std(restart).unwrap()).await;
    assert_eq!(plane.ca_addr(), addr);
    until("the data plane reconnects", || {
        web.client.status().connects() >= 2 && web.client.status().connected()
    })
    .await;
    until("the resumed stream is acknowledged", || {
        metric(&plane, "mesh_xds_acks_total ") >= 1
    })
    .await;
    assert_eq!(
        metric(&plane, "mesh_xds_resources_sent_total "),
        0,
        "the data plane held every document: nothing is resent"
    );
    // And an edit after the restart is followed.
    f.write("split.yaml", SPLIT);
    until("the split reaches the data plane", || {
        web.store
            .load()
            .mesh_routes
            .contains_key("reviews.shop.svc.cluster.local")
    })
    .await;
    assert_eq!(metric(&plane, "mesh_xds_resources_sent_total "), 2);
    plane.shutdown().await;
}

/// A WorkloadEntry's locality, network and weight reach a data plane that
/// follows the control plane, as they reach one reading files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entrys_locality_network_and_weight_reach_the_data_plane() {
    let f = Fixture::new();
    f.write(
        "placed.yaml",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: reviews-v3, namespace: shop}\n\
         spec: {address: 127.0.0.14, labels: {app: reviews, version: v3}, serviceAccount: reviews, \
         locality: us-east1/b/rack2, network: net-a, weight: 4}\n",
    );
    let plane = f
        .serve(TcpListener::bind("127.0.0.1:0").await.unwrap())
        .await;
    let web = f.follow(&plane, "shop/web", "shop", "web");
    until("the data plane has reviews-v3", || {
        web.store.load().workload("shop/reviews-v3").is_some()
    })
    .await;
    let snap = web.store.load();
    let (_, w) = snap.workload("shop/reviews-v3").unwrap();
    assert_eq!(w.locality.to_string(), "us-east1/b/rack2");
    assert_eq!(w.network.as_deref(), Some("net-a"));
    assert_eq!(w.weight, 4);
    plane.shutdown().await;
}
