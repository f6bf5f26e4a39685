//! Shared, mutable traffic state: requests in flight and outlier health per
//! endpoint, round-robin counters, connection pool limits, and the random
//! source. Maps are swapped whole (arc-swap) when a new key appears, so the
//! request path reads them without a lock; the one lock is an endpoint's
//! outlier record, held for a few instructions when an outcome is recorded.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use mesh_core::identity::SpiffeId;
use mesh_core::outlier::{EndpointHealth, Outcome, OutlierPolicy};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where randomness comes from. Tests pass a seeded source.
pub trait RandomSource: Send + Sync + fmt::Debug {
    /// A uniformly random 64-bit value.
    fn next_u64(&self) -> u64;

    /// A uniform draw in [0, 1).
    fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A lock-free SplitMix64 sequence: deterministic for a given seed.
#[derive(Debug)]
pub struct SeededRandom(AtomicU64);

impl SeededRandom {
    /// A sequence starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// A sequence seeded from the clock and the process id.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos ^ (u64::from(std::process::id()) << 32))
    }
}

impl RandomSource for SeededRandom {
    fn next_u64(&self) -> u64 {
        mesh_core::balance::mix(self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
    }
}

/// One endpoint's live state.
#[derive(Debug)]
pub(crate) struct EndpointState {
    in_flight: AtomicUsize,
    health: Mutex<EndpointHealth>,
    /// When this router first saw it: when it joined, for slow start.
    joined: Instant,
    /// Its `address:port` as a URI authority, parsed on first use.
    authority: std::sync::OnceLock<Result<http::uri::Authority, String>>,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            health: Mutex::default(),
            joined: Instant::now(),
            authority: std::sync::OnceLock::new(),
        }
    }
}

impl EndpointState {
    /// The endpoint `key` (`address:port`, the key this state is kept
    /// under) as a URI authority: parsed once, then a reference count per
    /// request.
    pub(crate) fn authority(&self, key: &str) -> Result<http::uri::Authority, String> {
        self.authority
            .get_or_init(|| {
                if let Some(a) = crate::uds::authority(key) {
                    return http::uri::Authority::try_from(a).map_err(|e| e.to_string());
                }
                http::uri::Authority::from_maybe_shared(bytes::Bytes::copy_from_slice(
                    key.as_bytes(),
                ))
                .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// When this router first saw the endpoint.
    pub(crate) fn joined(&self) -> Instant {
        self.joined
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Can requests go here now?
    pub(crate) fn is_available(&self, now: Instant) -> bool {
        self.health.lock().map_or(true, |h| h.is_available(now))
    }

    /// Marks a request in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Records an outcome for outlier detection; true when it ejected.
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        now: Instant,
        policy: &OutlierPolicy,
        may_eject: bool,
    ) -> bool {
        self.health
            .lock()
            .map(|mut h| h.record(outcome, now, policy, may_eject))
            .unwrap_or(false)
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<EndpointState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A destination's connection pool limits: requests at once, and requests
/// waiting for one of those places.
#[derive(Debug)]
pub(crate) struct Pool {
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
    max_pending: usize,
}

impl Pool {
    fn new(max_requests: usize, max_pending: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_requests)),
            pending: AtomicUsize::new(0),
            max_pending,
        }
    }

    /// A place in the pool, waiting if the queue has room; `None` when the
    /// pool overflows.
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let permit = self.permits.clone().acquire_owned().await.ok();
        self.pending.fetch_sub(1, Ordering::AcqRel);
        permit
    }
}

fn get_or_insert<V>(
    map: &ArcSwap<foldhash::HashMap<String, Arc<V>>>,
    key: &str,
    make: impl Fn() -> V,
) -> Arc<V> {
    if let Some(v) = map.load().get(key) {
        return v.clone();
    }
    let mut out = None;
    map.rcu(|m| {
        if let Some(v) = m.get(key) {
            out = Some(v.clone());
            return m.clone();
        }
        let mut m = foldhash::HashMap::clone(m);
        let v = Arc::new(make());
        out = Some(v.clone());
        m.insert(key.to_owned(), v);
        Arc::new(m)
    });
    out.unwrap_or_else(|| Arc::new(make()))
}

/// All live traffic state of one router.
#[derive(Debug, Default)]
pub(crate) struct TrafficState {
    endpoints: ArcSwap<foldhash::HashMap<String, Arc<EndpointState>>>,
    counters: ArcSwap<foldhash::HashMap<String, Arc<AtomicUsize>>>,
    /// When each endpoint set with slow start was first picked from: its
    /// endpoints seen by then are its first members, not joiners.
    sets_seen: ArcSwap<foldhash::HashMap<String, Arc<Instant>>>,
    pools: ArcSwap<foldhash::HashMap<String, Arc<Pool>>>,
    identity_sets: ArcSwap<foldhash::HashSet<Arc<[SpiffeId]>>>,
    /// Originated TLS by its settings (roots, server name), with when it
    /// was built: a config (or why there is none) is built once a minute
    /// at most, not per request, and a changed roots file is read again.
    origins: ArcSwap<foldhash::HashMap<Arc<str>, BuiltOrigin>>,
}

/// An originated-TLS config (or why there is none) and when it was built.
type BuiltOrigin = (
    std::time::Instant,
    Result<crate::upstream::OriginateTls, String>,
);

impl TrafficState {
    /// The TLS to originate to `host` by a DestinationRule's `tls: SIMPLE`
    /// settings: the server's certificate checked against
    /// `caCertificates` (a PEM file), else the system's roots, for the name
    /// `sni` (else `host`). Built at most once a minute per settings (a
    /// roots file rotated on disk is read again), failures included.
    pub(crate) fn origin(
        &self,
        tls: Option<&mesh_core::resources::networking::ClientTlsSettings>,
        host: &str,
    ) -> Result<crate::upstream::OriginateTls, String> {
        const REBUILD: std::time::Duration = std::time::Duration::from_secs(60);
        let ca = tls.and_then(|t| t.ca_certificates.as_deref());
        let sni = tls.and_then(|t| t.sni.as_deref()).unwrap_or(host);
        let key: Arc<str> = match ca {
            Some(path) => format!("file:{path}|{sni}"),
            None => format!("system|{sni}"),
        }
        .into();
        if let Some((at, o)) = self.origins.load().get(&key) {
            if at.elapsed() < REBUILD {
                return o.clone();
            }
        }
        let built = Self::build_origin(key.clone(), ca, sni);
        let now = std::time::Instant::now();
        self.origins.rcu(|m| {
            let mut m = foldhash::HashMap::clone(m);
            m.insert(key.clone(), (now, built.clone()));
            m
        });
        built
    }

    fn build_origin(
        key: Arc<str>,
        ca: Option<&str>,
        sni: &str,
    ) -> Result<crate::upstream::OriginateTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                use rustls_pki_types::pem::PemObject as _;
                let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("caCertificates {path}: {e}"))?;
                for c in certs {
                    let c = c.map_err(|e| format!("caCertificates {path}: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("caCertificates {path}: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
            }
        }
        if roots.is_empty() {
            return Err(format!(
                "no root certificate to verify {sni} with ({})",
                ca.unwrap_or("the system has none")
            ));
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = rustls_pki_types::ServerName::try_from(sni.to_owned())
            .map_err(|e| format!("sni {sni}: {e}"))?;
        Ok(crate::upstream::OriginateTls {
            key,
            config: Arc::new(config),
            server_name: Arc::new(server_name),
        })
    }

    /// The state of an endpoint, `address:port`.
    pub(crate) fn endpoint(&self, key: &str) -> Arc<EndpointState> {
        get_or_insert(&self.endpoints, key, EndpointState::default)
    }

    /// Records that this router saw the endpoint `key` first at `joined`
    /// (tests: an endpoint that joined in the past).
    #[cfg(test)]
    pub(crate) fn endpoint_joined_at(&self, key: &str, joined: Instant) {
        let state = Arc::new(EndpointState {
            joined,
            ..EndpointState::default()
        });
        let mut m = foldhash::HashMap::clone(&self.endpoints.load());
        m.insert(key.to_owned(), state);
        self.endpoints.store(Arc::new(m));
    }

    /// Records that the set `set` was first picked from at `at` (tests).
    #[cfg(test)]
    pub(crate) fn sets_seen_at(&self, set: &str, at: Instant) {
        let mut m = foldhash::HashMap::clone(&self.sets_seen.load());
        m.insert(set.to_owned(), Arc::new(at));
        self.sets_seen.store(Arc::new(m));
    }

    /// When the endpoint set `set` was first picked from (now, the first
    /// time this is asked).
    pub(crate) fn set_first_seen(&self, set: &str) -> Instant {
        *get_or_insert(&self.sets_seen, set, Instant::now)
    }

    /// The next round-robin position for a set.
    pub(crate) fn next_rr(&self, set: &str) -> usize {
        get_or_insert(&self.counters, set, AtomicUsize::default).fetch_add(1, Ordering::Relaxed)
    }

    /// The shared copy of an identity set (secure naming), made on first
    /// use: a request carries the set to the upstream, and sets are few
    /// (one per service account reached).
    pub(crate) fn identity_set(&self, ids: &[SpiffeId]) -> Arc<[SpiffeId]> {
        if let Some(set) = self.identity_sets.load().get(ids) {
            return set.clone();
        }
        let mut out = None;
        self.identity_sets.rcu(|sets| {
            if let Some(set) = sets.get(ids) {
                out = Some(set.clone());
                return sets.clone();
            }
            let mut sets = foldhash::HashSet::clone(sets);
            let set: Arc<[SpiffeId]> = ids.into();
            out = Some(set.clone());
            sets.insert(set);
            Arc::new(sets)
        });
        out.unwrap_or_else(|| ids.into())
    }

    /// The pool of a host under these limits (a change of limits makes a
    /// fresh pool).
    pub(crate) fn pool(&self, host: &str, max_requests: usize, max_pending: usize) -> Arc<Pool> {
        let key = format!("{host}|{max_requests}|{max_pending}");
        get_or_insert(&self.pools, &key, || Pool::new(max_requests, max_pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_set_is_shared_once_made() {
        let state = TrafficState::default();
        let id = |s: &str| SpiffeId::parse(s).expect("a SPIFFE ID");
        let a = [id("spiffe://cluster.local/ns/default/sa/a")];
        let b = [id("spiffe://cluster.local/ns/default/sa/b")];
        let first = state.identity_set(&a);
        assert_eq!(&first[..], &a[..]);
        assert!(Arc::ptr_eq(&first, &state.identity_set(&a.clone())));
        assert!(!Arc::ptr_eq(&first, &state.identity_set(&b)));
        assert_eq!(&state.identity_set(&b)[..], &b[..]);
    }
}
