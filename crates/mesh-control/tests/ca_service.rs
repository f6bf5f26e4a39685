#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The signing service over gRPC and TLS, served as it always is, by
//! [`ControlPlane`] (on listeners bound to port 0): join tokens work once,
//! renewals authenticate with the current SVID, the identity issued is the
//! token's, every refusal is counted by reason, and a restarted CA keeps
//! its root. (These ran on `mesh-ca`'s own tonic-served `CaServer` until
//! it was removed: the CA is served one way.)

use std::sync::Arc;
use std::time::Duration;

use mesh_ca::metrics::RefusalReason;
use mesh_ca::service::ca_identity;
use mesh_ca::{
    CaClient, CertManager, CertificateAuthority, IssuedSvid, LeafPolicy, ManagerConfig, SignError,
    TokenStore, TrustBundle, TrustBundleSet,
};
use mesh_control::{ControlPlane, ControlPlaneConfig};
use mesh_core::identity::{SpiffeId, TrustDomain};
use tokio::net::TcpListener;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::for_workload(&td(), "default", sa).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Arc<CertificateAuthority>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::init_dir(dir.path(), td()).unwrap();
        let ca = Arc::new(Self::open(dir.path()));
        Self { dir, ca }
    }

    fn open(dir: &std::path::Path) -> CertificateAuthority {
        CertificateAuthority::open_dir(dir)
            .unwrap()
            .with_policy(LeafPolicy {
                default_ttl: Duration::from_secs(2),
                max_ttl: Duration::from_secs(2),
                backdate: Duration::from_secs(1),
            })
    }

    async fn serve_on(&self, addr: &str) -> ControlPlane {
        self.serve_with(TcpListener::bind(addr).await.unwrap())
            .await
    }

    async fn serve_with(&self, listener: TcpListener) -> ControlPlane {
        let ca = Arc::new(Self::open(self.dir.path()));
        ControlPlane::start(
            ca,
            TokenStore::new(self.dir.path()),
            listener,
            ControlPlaneConfig::default(),
        )
        .await
        .unwrap()
    }

    fn token(&self, sa: &str) -> String {
        TokenStore::new(self.dir.path())
            .create(&id(sa), Duration::from_secs(60))
            .unwrap()
    }

    fn client(&self, server: &ControlPlane) -> CaClient {
        let bootstrap = TrustBundleSet::single(
            td(),
            TrustBundle::new(vec![self.ca.root().clone()]).unwrap(),
        );
        CaClient::new(
            server.ca_addr().to_string(),
            ca_identity(&self.ca).unwrap(),
            bootstrap,
        )
        .with_timeout(Duration::from_secs(5))
    }
}

fn config() -> ManagerConfig {
    ManagerConfig {
        ttl: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        first_fetch_timeout: Duration::from_millis(300),
        ..ManagerConfig::default()
    }
}

fn csr_asking_for(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn a_join_token_works_once_then_renewals_use_mtls() {
    let fx = Fixture::new();
    let server = fx.serve_on("127.0.0.1:0").await;
    let token = fx.token("app");

    let client = Arc::new(fx.client(&server).with_token(token.clone()));
    let manager = CertManager::start(id("app"), client, config())
        .await
        .unwrap();
    assert_eq!(manager.store().load().id(), &id("app"));

    // The same token again: refused.
    let again = Arc::new(fx.client(&server).with_token(token));
    let err = CertManager::start(id("app"), again, config())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown or already used join token"),
        "{err}"
    );

    // The token is spent, yet renewals go on: they authenticate by mTLS.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        manager.status().renewals() >= 3,
        "renewals {}",
        manager.status().renewals()
    );
    assert_eq!(manager.status().failures(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_identity_is_the_tokens_not_the_csrs() {
    let fx = Fixture::new();
    let server = fx.serve_on("127.0.0.1:0").await;
    let client = fx.client(&server).with_token(fx.token("app"));
    let ten_years = Duration::from_secs(10 * 365 * 86400);
    let chain = client
        .create_certificate(
            csr_asking_for("spiffe://cluster.local/ns/kube-system/sa/admin"),
            ten_years,
            None,
        )
        .await
        .unwrap();
    let svid = IssuedSvid::from_istio_chain(&chain).unwrap();
    assert_eq!(mesh_ca::svid_id(&svid.leaf).unwrap(), id("app"));
    assert!(svid.not_after <= time::OffsetDateTime::now_utc() + time::Duration::seconds(3));
    assert_eq!(svid.bundle, vec![fx.ca.root().clone()]);
    // Istio's order: leaf first, root last.
    assert_eq!(chain.len(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn refuses_unauthenticated_and_bad_requests() {
    let fx = Fixture::new();
    let server = fx.serve_on("127.0.0.1:0").await;
    let csr = csr_asking_for("spiffe://cluster.local/ns/default/sa/app");

    let bogus = fx.client(&server).with_token("bm90LWEtdG9rZW4");
    let err = bogus
        .create_certificate(csr.clone(), Duration::ZERO, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignError::Refused(m) if m.contains("Unauthenticated")),
        "{err}"
    );

    let none = fx.client(&server);
    let err = none
        .create_certificate(csr, Duration::ZERO, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no join token"), "{err}");

    // A bad CSR does not spend the token.
    let token = fx.token("app");
    let client = fx.client(&server).with_token(token.clone());
    let err = client
        .create_certificate("garbage".into(), Duration::ZERO, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SignError::Refused(m) if m.contains("InvalidArgument")),
        "{err}"
    );
    let client = fx.client(&server).with_token(token);
    let ok = client
        .create_certificate(csr_asking_for("spiffe://x/y"), Duration::ZERO, None)
        .await;
    assert!(ok.is_ok(), "{ok:?}");

    // Counted by reason (the request without a token never left the client).
    let m = server.ca_metrics();
    assert_eq!(m.issued(), 1);
    assert_eq!(m.refused(RefusalReason::Unauthenticated), 1);
    assert_eq!(m.refused(RefusalReason::InvalidCsr), 1);
    assert_eq!(m.refused(RefusalReason::ForeignTrustDomain), 0);
    assert_eq!(m.refused(RefusalReason::Internal), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_restarted_ca_keeps_its_root_and_its_workloads() {
    let fx = Fixture::new();
    // A second handle on the listening socket keeps the port held across
    // the restart: nothing re-binds a port another test could have taken.
    let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    first.set_nonblocking(true).unwrap();
    let again = first.try_clone().unwrap();
    let server = fx.serve_with(TcpListener::from_std(first).unwrap()).await;
    let addr = server.ca_addr();
    let client = Arc::new(fx.client(&server).with_token(fx.token("app")));
    let manager = CertManager::start(id("app"), client, config())
        .await
        .unwrap();
    server.shutdown().await;

    // Same directory, same address: the workload renews with the SVID it
    // has, which the restarted CA still trusts.
    let server = fx.serve_with(TcpListener::from_std(again).unwrap()).await;
    assert_eq!(server.ca_addr(), addr);
    let before = manager.status().renewals();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        manager.status().renewals() > before,
        "no renewal after the restart"
    );
    assert_eq!(manager.status().consecutive_failures(), 0);
    let root = CertificateAuthority::open_dir(fx.dir.path())
        .unwrap()
        .root()
        .clone();
    assert_eq!(&root, fx.ca.root());
    server.shutdown().await;
}
