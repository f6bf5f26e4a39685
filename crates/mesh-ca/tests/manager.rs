#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The certificate manager renews, rides out CA outages and reloads files.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_ca::{
    BoxFuture, CertManager, CertificateAuthority, Credentials, FileSource, IssuedSvid, LeafPolicy,
    LocalSigner, ManagerConfig, ManagerError, SignError, SvidSigner,
};
use mesh_core::identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id() -> SpiffeId {
    SpiffeId::for_workload(&td(), "default", "app").unwrap()
}

fn short_lived_ca(ttl: Duration) -> Arc<CertificateAuthority> {
    Arc::new(
        CertificateAuthority::generate_root(td(), OffsetDateTime::now_utc())
            .unwrap()
            .with_policy(LeafPolicy {
                default_ttl: ttl,
                max_ttl: ttl,
                backdate: Duration::from_secs(1),
            }),
    )
}

/// A signer whose CA can be taken down.
#[derive(Debug)]
struct Flaky {
    inner: LocalSigner,
    down: AtomicBool,
}

impl SvidSigner for Flaky {
    fn sign(
        &self,
        csr: String,
        ttl: Duration,
        current: Option<Arc<Credentials>>,
    ) -> BoxFuture<'_, Result<IssuedSvid, SignError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(SignError::Unavailable("connection refused".into())) });
        }
        self.inner.sign(csr, ttl, current)
    }
}

fn fast_config() -> ManagerConfig {
    ManagerConfig {
        ttl: Duration::from_secs(2),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        first_fetch_timeout: Duration::from_millis(500),
        ..ManagerConfig::default()
    }
}

#[tokio::test]
async fn renews_at_about_half_life_and_rides_out_an_outage() {
    let signer = Arc::new(Flaky {
        inner: LocalSigner::new(short_lived_ca(Duration::from_secs(2)), id()),
        down: AtomicBool::new(false),
    });
    let manager = CertManager::start(id(), signer.clone(), fast_config())
        .await
        .unwrap();
    let first = manager.store().load();
    assert_eq!(first.id(), &id());
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let renewals = manager.status().renewals();
    // First SVID, then one renewal a second: 3 or 4 by now.
    assert!((3..=5).contains(&renewals), "renewals: {renewals}");
    assert_ne!(manager.store().load().chain(), first.chain());
    assert_eq!(manager.status().failures(), 0);

    // CA down: the manager keeps the SVID it has and counts failures.
    signer.down.store(true, Ordering::SeqCst);
    let before = manager.store().load();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(manager.status().failures() > 0);
    assert!(manager.status().consecutive_failures() > 0);
    assert_eq!(manager.store().load().chain(), before.chain());

    // CA back: renewals resume.
    signer.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(manager.status().consecutive_failures(), 0);
    assert_ne!(manager.store().load().chain(), before.chain());
    assert!(manager.status().not_after_unix() > 0);
}

#[tokio::test]
async fn first_fetch_gives_up_after_its_timeout() {
    let signer = Arc::new(Flaky {
        inner: LocalSigner::new(short_lived_ca(Duration::from_secs(2)), id()),
        down: AtomicBool::new(true),
    });
    let err = CertManager::start(id(), signer, fast_config())
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::FirstFetch { .. }));
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn refuses_an_svid_for_another_identity() {
    let other = SpiffeId::for_workload(&td(), "default", "other").unwrap();
    let signer = Arc::new(LocalSigner::new(
        short_lived_ca(Duration::from_secs(60)),
        other,
    ));
    let err = CertManager::start(id(), signer, fast_config())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("instead of"), "{err}");
}

#[tokio::test]
async fn file_source_reloads_on_change_and_keeps_the_last_good_set() {
    let ca = short_lived_ca(Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let write = |svid: &IssuedSvid, key: &str| {
        let pems = svid.istio_chain_pem();
        let chain = pems[..1 + svid.intermediates.len()].concat();
        let bundle = pems[1 + svid.intermediates.len()..].concat();
        std::fs::write(dir.path().join("cert.pem"), chain).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        std::fs::write(dir.path().join("bundle.pem"), bundle).unwrap();
    };
    let now = OffsetDateTime::now_utc();
    let (svid, key) = ca.issue_with_new_key(&id(), None, now).unwrap();
    write(&svid, &key);
    let watcher = FileSource::in_dir(dir.path())
        .with_poll_interval(Duration::from_millis(20))
        .watch()
        .unwrap();
    assert_eq!(watcher.store().load().chain()[0], svid.leaf);
    assert!(watcher.store().load().bundles().get(&td()).is_some());

    let (svid2, key2) = ca.issue_with_new_key(&id(), None, now).unwrap();
    write(&svid2, &key2);
    for _ in 0..100 {
        if watcher.reloads() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(watcher.reloads(), 1);
    assert_eq!(watcher.store().load().chain()[0], svid2.leaf);

    // A key that does not match the certificate: refused, last good kept.
    let (_, key3) = ca.issue_with_new_key(&id(), None, now).unwrap();
    std::fs::write(dir.path().join("key.pem"), key3).unwrap();
    for _ in 0..100 {
        if watcher.failures() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(watcher.failures(), 1);
    assert_eq!(watcher.store().load().chain()[0], svid2.leaf);
}
