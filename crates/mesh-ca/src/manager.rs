//! The workload certificate manager: gets the first SVID, renews it at about
//! half its lifetime, retries with jittered backoff while keeping the valid
//! certificate in service, and publishes each new SVID and trust bundle
//! together in a [`CredentialStore`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mesh_core::identity::SpiffeId;
use rand::Rng;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;

use crate::authority::{CertificateAuthority, IssuedSvid};
use crate::credentials::{CredentialStore, Credentials, CredentialsError};
use crate::metrics::CertMetrics;
use crate::svid::TrustBundleSet;

/// A boxed future, for the object-safe [`SvidSigner`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a signing request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The CA could not be reached or did not answer in time: try again later.
    #[error("the CA is unavailable: {0}")]
    Unavailable(String),
    /// The CA answered with a refusal.
    #[error("the CA refused: {0}")]
    Refused(String),
    /// The CA's answer is unusable.
    #[error("the CA's answer is unusable: {0}")]
    BadResponse(String),
}

/// Where a workload's SVIDs come from: the CA over gRPC, or a CA in process.
pub trait SvidSigner: Send + Sync + fmt::Debug + 'static {
    /// Asks for a certificate over the key of `csr_pem`, living `ttl`.
    /// `current` is the SVID in service, if any: a remote CA authenticates
    /// renewals with it (mTLS).
    fn sign(
        &self,
        csr_pem: String,
        ttl: Duration,
        current: Option<Arc<Credentials>>,
    ) -> BoxFuture<'_, Result<IssuedSvid, SignError>>;
}

/// Where a manager also hands each SVID it obtains, with its key, before
/// it goes into service: an agent writes them to files for a program that
/// reads its certificates from disk (gRPC's `file_watcher` provider). A
/// sink that fails fails the fetch, which is retried as any other failure.
pub trait SvidSink: Send + Sync + fmt::Debug + 'static {
    /// Takes the SVID and its private key (PKCS#8 DER).
    fn issued(&self, svid: &IssuedSvid, key_pkcs8_der: &[u8]) -> Result<(), String>;
}

/// The file names [`SvidFiles`] writes (those of `mesh-ca issue --out`).
pub const SVID_CERT_FILE: &str = "cert.pem";
/// The private key, PKCS#8 PEM, mode 0600.
pub const SVID_KEY_FILE: &str = "key.pem";
/// The trust bundle of the SVID's trust domain.
pub const SVID_BUNDLE_FILE: &str = "bundle.pem";

/// Writes each SVID to a folder: [`SVID_CERT_FILE`] (leaf and
/// intermediates), [`SVID_KEY_FILE`] and [`SVID_BUNDLE_FILE`], each
/// atomically (a temporary file renamed over the old one), the key first so
/// that a reader that sees the new certificate finds its key.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    dir: std::path::PathBuf,
}

impl SvidFiles {
    /// Writes into `dir`, which must exist.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl SvidSink for SvidFiles {
    fn issued(&self, svid: &IssuedSvid, key_pkcs8_der: &[u8]) -> Result<(), String> {
        let pems = svid.istio_chain_pem();
        let (chain, bundle) = pems.split_at(1 + svid.intermediates.len());
        let key = crate::authority::pem_encode("PRIVATE KEY", key_pkcs8_der);
        for (name, contents, mode) in [
            (SVID_KEY_FILE, key, 0o600),
            (SVID_CERT_FILE, chain.concat(), 0o644),
            (SVID_BUNDLE_FILE, bundle.concat(), 0o644),
        ] {
            crate::store::write_file(&self.dir.join(name), contents.as_bytes(), mode)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A signer backed by a CA in this process (for the CA's own serving
/// certificate, and for tests). The CA can be swapped, e.g. to rotate roots.
#[derive(Debug, Clone)]
pub struct LocalSigner {
    ca: Arc<ArcSwap<CertificateAuthority>>,
    id: SpiffeId,
    dns_names: Vec<String>,
}

impl LocalSigner {
    /// Signs for `id` with `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, id: SpiffeId) -> Self {
        Self {
            ca: Arc::new(ArcSwap::new(ca)),
            id,
            dns_names: Vec::new(),
        }
    }

    /// Also puts `dns_names` in every certificate, beside the URI SAN
    /// (the CA's serving certificate, for clients that verify it by name).
    #[must_use]
    pub fn with_dns_names(mut self, dns_names: Vec<String>) -> Self {
        self.dns_names = dns_names;
        self
    }

    /// Signs with `ca` from now on (clones share the slot).
    pub fn set_ca(&self, ca: Arc<CertificateAuthority>) {
        self.ca.store(ca);
    }
}

impl SvidSigner for LocalSigner {
    fn sign(
        &self,
        csr_pem: String,
        ttl: Duration,
        _current: Option<Arc<Credentials>>,
    ) -> BoxFuture<'_, Result<IssuedSvid, SignError>> {
        let result = self
            .ca
            .load()
            .issue_with_dns_names(csr_pem.as_bytes(), &self.id, &self.dns_names, Some(ttl))
            .map_err(|e| SignError::Refused(e.to_string()));
        Box::pin(async move { result })
    }
}

/// How the manager renews.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Lifetime asked of the CA (the CA may grant less). Default 24 h.
    pub ttl: Duration,
    /// Fraction of the lifetime after which to renew. Default 0.5.
    pub renew_at: f64,
    /// Renewal time is spread by up to this fraction of the lifetime, so a
    /// fleet does not renew in lockstep. Default 0.05.
    pub jitter: f64,
    /// First retry delay after a failure; doubles each time. Default 1 s.
    pub initial_backoff: Duration,
    /// Longest retry delay. Default 60 s.
    pub max_backoff: Duration,
    /// How long [`CertManager::start`] keeps trying for the first SVID.
    /// Default 30 s.
    pub first_fetch_timeout: Duration,
    /// Bundles of other trust domains (federation), kept beside the one the
    /// CA hands out for the workload's own trust domain.
    pub extra_bundles: TrustBundleSet,
    /// Where the time and the jitter come from: the system clock and a
    /// random draw by default; tests give fixed ones.
    pub clock: Arc<dyn RenewalClock>,
    /// Also hands every SVID obtained, with its key, to this sink (an
    /// agent's files). Default none.
    pub sink: Option<Arc<dyn SvidSink>>,
}

/// What the renewal schedule reads: the wall-clock time (certificate
/// lifetimes are wall-clock), and uniform draws for the jitter. Sleeping
/// goes through tokio's clock, which tests pause and advance.
pub trait RenewalClock: Send + Sync + fmt::Debug {
    /// Now, on the clock certificates' validity is read on.
    fn now(&self) -> SystemTime;
    /// A uniform draw in `[0, 1]`.
    fn roll(&self) -> f64;
}

/// The system clock and the thread's random generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl RenewalClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn roll(&self) -> f64 {
        rand::rng().random_range(0.0..=1.0)
    }
}

/// When to renew a certificate with `lifetime` left when it was obtained:
/// at `renew_at` of it, moved by up to `jitter` of it either way (`roll` in
/// `[0, 1]` picks where), so that a fleet does not renew in lockstep.
/// `renew_at` is kept within 5–95% and the jitter within 40%, so that a
/// renewal never waits for the expiry nor hammers the CA at once.
pub fn renew_delay(lifetime: Duration, renew_at: f64, jitter: f64, roll: f64) -> Duration {
    let base = lifetime.mul_f64(renew_at.clamp(0.05, 0.95));
    let j = jitter.clamp(0.0, 0.4);
    let spread = (roll.clamp(0.0, 1.0) * 2.0 - 1.0) * j;
    let target = base.as_secs_f64() + lifetime.as_secs_f64() * spread;
    Duration::from_secs_f64(target.max(0.0))
}

/// `d` spread by up to `jitter` (at most 100%) of itself either way;
/// `roll` in `[0, 1]` picks where.
pub fn jittered(d: Duration, jitter: f64, roll: f64) -> Duration {
    let j = jitter.clamp(0.0, 1.0);
    d.mul_f64(1.0 - j + 2.0 * j * roll.clamp(0.0, 1.0))
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            ttl: crate::DEFAULT_LEAF_TTL,
            renew_at: 0.5,
            jitter: 0.05,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            first_fetch_timeout: Duration::from_secs(30),
            extra_bundles: TrustBundleSet::new(),
            clock: Arc::new(SystemClock),
            sink: None,
        }
    }
}

/// Why the manager could not get its first SVID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The CA kept failing for the whole first-fetch timeout.
    #[error("no SVID within {timeout:?}; last error: {last}")]
    FirstFetch {
        /// How long it tried.
        timeout: Duration,
        /// The last failure.
        last: String,
    },
}

/// Counters of a running manager, exported through [`CertManager::metrics`].
#[derive(Debug, Default)]
pub struct ManagerStatus {
    renewals: AtomicU64,
    failures: AtomicU64,
    consecutive_failures: AtomicU64,
    not_after: AtomicU64,
}

impl ManagerStatus {
    /// SVIDs obtained, the first one included.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// Failed signing attempts, in total.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Failed attempts since the last success.
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// When the current SVID expires, unix seconds.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after.load(Ordering::Relaxed)
    }
}

/// A running certificate manager. Dropping it stops renewals (the store
/// keeps its last credentials).
#[derive(Debug)]
pub struct CertManager {
    store: CredentialStore,
    status: Arc<ManagerStatus>,
    task: JoinHandle<()>,
}

impl Drop for CertManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Worker {
    id: SpiffeId,
    signer: Arc<dyn SvidSigner>,
    config: ManagerConfig,
    status: Arc<ManagerStatus>,
}

impl CertManager {
    /// Gets the first SVID for `id` from `signer` (retrying until
    /// `first_fetch_timeout`), then renews in the background.
    pub async fn start(
        id: SpiffeId,
        signer: Arc<dyn SvidSigner>,
        config: ManagerConfig,
    ) -> Result<Self, ManagerError> {
        let worker = Worker {
            id,
            signer,
            config,
            status: Arc::new(ManagerStatus::default()),
        };
        let deadline = tokio::time::Instant::now() + worker.config.first_fetch_timeout;
        let mut backoff = worker.config.initial_backoff;
        let first = loop {
            match worker.fetch(None).await {
                Ok(c) => break c,
                Err(e) => {
                    worker.failed(&e);
                    let now = tokio::time::Instant::now();
                    if now + backoff > deadline {
                        return Err(ManagerError::FirstFetch {
                            timeout: worker.config.first_fetch_timeout,
                            last: e,
                        });
                    }
                    tokio::time::sleep(worker.jittered(backoff)).await;
                    backoff = (backoff * 2).min(worker.config.max_backoff);
                }
            }
        };
        let store = CredentialStore::new(first);
        let status = worker.status.clone();
        let task = tokio::spawn(worker.run(store.clone()));
        Ok(Self {
            store,
            status,
            task,
        })
    }

    /// The store rustls reads; always holds a valid SVID once started.
    pub fn store(&self) -> &CredentialStore {
        &self.store
    }

    /// Renewal counters.
    pub fn status(&self) -> &Arc<ManagerStatus> {
        &self.status
    }

    /// The certificate metrics, now: what a metrics endpoint renders with
    /// [`CertMetrics::render`].
    pub fn metrics(&self) -> CertMetrics {
        CertMetrics {
            expiry_unix: unix_secs(self.store.load().not_after()),
            renewals: self.status.renewals(),
            failures: self.status.failures(),
        }
    }
}

fn new_key_and_csr(id: &SpiffeId) -> Result<(String, PrivateKeyDer<'static>), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // Istio's agents put the identity in the CSR too; the CA ignores it.
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| e.to_string())?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((csr, der))
}

impl Worker {
    async fn fetch(&self, current: Option<Arc<Credentials>>) -> Result<Credentials, String> {
        let (csr, key) = new_key_and_csr(&self.id)?;
        let svid = self
            .signer
            .sign(csr, self.config.ttl, current)
            .await
            .map_err(|e| e.to_string())?;
        let key_der = self
            .config
            .sink
            .is_some()
            .then(|| key.secret_der().to_vec());
        let creds = Credentials::from_issued(&svid, key, self.config.extra_bundles.clone())
            .map_err(|e: CredentialsError| e.to_string())?;
        if creds.id() != &self.id {
            return Err(format!(
                "the CA issued {} instead of {}",
                creds.id(),
                self.id
            ));
        }
        if let (Some(sink), Some(der)) = (&self.config.sink, key_der) {
            sink.issued(&svid, &der)
                .map_err(|e| format!("writing the SVID: {e}"))?;
        }
        self.succeeded(&creds);
        Ok(creds)
    }

    fn succeeded(&self, creds: &Credentials) {
        let not_after = unix_secs(creds.not_after());
        self.status.renewals.fetch_add(1, Ordering::Relaxed);
        self.status.consecutive_failures.store(0, Ordering::Relaxed);
        self.status.not_after.store(not_after, Ordering::Relaxed);
        tracing::debug!(id = %self.id, not_after, "SVID renewed");
    }

    fn failed(&self, error: &str) {
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        let n = self
            .status
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        tracing::warn!(id = %self.id, attempt = n, %error, "SVID renewal failed; the current certificate stays in service");
    }

    /// `d` spread by ±`jitter` of itself.
    fn jittered(&self, d: Duration) -> Duration {
        jittered(d, self.config.jitter, self.config.clock.roll())
    }

    /// When to renew credentials obtained at `obtained`.
    fn renew_delay(&self, creds: &Credentials, obtained: SystemTime) -> Duration {
        let lifetime = creds
            .not_after()
            .duration_since(obtained)
            .unwrap_or(Duration::ZERO);
        renew_delay(
            lifetime,
            self.config.renew_at,
            self.config.jitter,
            self.config.clock.roll(),
        )
    }

    async fn run(self, store: CredentialStore) {
        let mut obtained = self.config.clock.now();
        loop {
            let current = store.load();
            tokio::time::sleep(self.renew_delay(&current, obtained)).await;
            // Retry until a new SVID arrives; the current one stays in
            // service meanwhile, even past its expiry (peers will refuse it
            // then, which is the truth: nothing better can be done).
            let lifetime = current
                .not_after()
                .duration_since(obtained)
                .unwrap_or(Duration::from_secs(1));
            let mut backoff = self.config.initial_backoff.min(lifetime / 10);
            loop {
                match self.fetch(Some(current.clone())).await {
                    Ok(creds) => {
                        store.publish(creds);
                        obtained = self.config.clock.now();
                        break;
                    }
                    Err(e) => {
                        self.failed(&e);
                        tokio::time::sleep(self.jittered(backoff)).await;
                        backoff = (backoff * 2).min(self.config.max_backoff);
                    }
                }
            }
        }
    }
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn renewal_is_at_half_life_spread_by_the_jitter() {
        assert_eq!(renew_delay(DAY, 0.5, 0.05, 0.5), DAY / 2);
        let earliest = renew_delay(DAY, 0.5, 0.05, 0.0);
        let latest = renew_delay(DAY, 0.5, 0.05, 1.0);
        assert_eq!(earliest, DAY.mul_f64(0.45));
        assert_eq!(latest, DAY.mul_f64(0.55));
        // Two workloads with other draws renew at other times.
        assert_ne!(
            renew_delay(DAY, 0.5, 0.05, 0.2),
            renew_delay(DAY, 0.5, 0.05, 0.7)
        );
    }

    #[test]
    fn settings_out_of_range_are_held_to_safe_bounds() {
        // Never at the expiry, never at once.
        assert_eq!(renew_delay(DAY, 2.0, 0.0, 0.5), DAY.mul_f64(0.95));
        assert_eq!(renew_delay(DAY, 0.0, 0.0, 0.5), DAY.mul_f64(0.05));
        // A jitter of 90% is held to 40%; the delay never goes negative.
        assert_eq!(renew_delay(DAY, 0.05, 0.9, 0.0), Duration::ZERO);
        assert_eq!(renew_delay(DAY, 0.5, 0.9, 1.0), DAY.mul_f64(0.9));
        assert_eq!(renew_delay(Duration::ZERO, 0.5, 0.05, 1.0), Duration::ZERO);
        // Rolls outside [0, 1] are clamped.
        assert_eq!(renew_delay(DAY, 0.5, 0.05, 7.0), DAY.mul_f64(0.55));
    }

    #[test]
    fn retry_backoff_is_jittered_both_ways() {
        let s = Duration::from_secs(10);
        assert_eq!(jittered(s, 0.05, 0.0), Duration::from_millis(9_500));
        assert_eq!(jittered(s, 0.05, 1.0), Duration::from_millis(10_500));
        assert_eq!(jittered(s, 0.0, 0.3), s);
        assert_eq!(jittered(s, 3.0, 0.0), Duration::ZERO);
    }
}
