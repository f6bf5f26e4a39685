//! A workload's credentials (SVID, key and trust bundles) and the store that
//! swaps them whole. rustls reads the store at every handshake, so a rotation
//! is invisible to connections: the next handshake simply sees the new one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use mesh_core::identity::SpiffeId;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authority::IssuedSvid;
use crate::svid::{SvidError, TrustBundle, TrustBundleSet, svid_id};
use crate::tls::crypto_provider;

/// Why credentials could not be assembled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The certificate chain is empty.
    #[error("no certificate in the chain")]
    NoCertificate,
    /// A PEM input does not parse.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// The leaf is not an X.509-SVID.
    #[error("the certificate is not an X.509-SVID: {0}")]
    Svid(#[from] SvidError),
    /// The key does not load or does not match the certificate.
    #[error("the private key is unusable or does not match the certificate: {0}")]
    Key(rustls::Error),
}

/// An SVID with its private key and the trust bundles to verify peers with,
/// published together so that they always change at once.
#[derive(Clone)]
pub struct Credentials {
    id: SpiffeId,
    certified: Arc<CertifiedKey>,
    bundles: Arc<TrustBundleSet>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id.to_string())
            .field("not_after", &self.not_after)
            .field("bundles", &self.bundles)
            .finish_non_exhaustive()
    }
}

fn unix(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Credentials {
    /// Assembles credentials from a chain (leaf first), its key and bundles.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: TrustBundleSet,
    ) -> Result<Self, CredentialsError> {
        let leaf = chain.first().ok_or(CredentialsError::NoCertificate)?;
        let id = svid_id(leaf)?;
        let (_, parsed) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| SvidError::Malformed(e.to_string()))?;
        let not_before = unix(parsed.validity().not_before.timestamp());
        let not_after = unix(parsed.validity().not_after.timestamp());
        let certified = CertifiedKey::from_der(chain, key, &crypto_provider())
            .map_err(CredentialsError::Key)?;
        Ok(Self {
            id,
            certified: Arc::new(certified),
            bundles: Arc::new(bundles),
            not_before,
            not_after,
        })
    }

    /// Assembles credentials from PEM: the chain (leaf first) and a PKCS#8,
    /// SEC1 or PKCS#1 key.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        bundles: TrustBundleSet,
    ) -> Result<Self, CredentialsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CredentialsError::Pem(format!("certificate chain: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| CredentialsError::Pem(format!("private key: {e}")))?;
        Self::new(chain, key, bundles)
    }

    /// Credentials from a freshly issued SVID and its key; the SVID's bundle
    /// becomes the bundle of its own trust domain, beside the `others`.
    pub fn from_issued(
        svid: &IssuedSvid,
        key: PrivateKeyDer<'static>,
        mut others: TrustBundleSet,
    ) -> Result<Self, CredentialsError> {
        let id = svid_id(&svid.leaf)?;
        others.insert(
            id.trust_domain().clone(),
            TrustBundle::new(svid.bundle.clone())?,
        );
        Self::new(svid.chain(), key, others)
    }

    /// The same SVID with other trust bundles.
    pub fn with_bundles(&self, bundles: TrustBundleSet) -> Self {
        Self {
            bundles: Arc::new(bundles),
            ..self.clone()
        }
    }

    /// The workload's own SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain and key rustls presents.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// The chain presented, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The trust bundles peers are verified with.
    pub fn bundles(&self) -> &Arc<TrustBundleSet> {
        &self.bundles
    }

    /// When the SVID became valid (its NotBefore, backdated by the CA).
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the SVID expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// The current credentials, swapped whole; clones share the same slot.
///
/// It is the certificate resolver of every rustls config built by this crate
/// and by `mesh-tower`, so publishing new credentials takes effect at the next
/// handshake without touching a config or a listener.
#[derive(Clone)]
pub struct CredentialStore {
    current: Arc<ArcSwap<Credentials>>,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CredentialStore")
            .field(&*self.current.load())
            .finish()
    }
}

impl CredentialStore {
    /// A store holding `initial`.
    pub fn new(initial: Credentials) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(initial)),
        }
    }

    /// The current credentials.
    pub fn load(&self) -> Arc<Credentials> {
        self.current.load_full()
    }

    /// Replaces the credentials; the next handshake uses the new ones.
    pub fn publish(&self, credentials: Credentials) {
        self.current.store(Arc::new(credentials));
    }
}

impl ResolvesServerCert for CredentialStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}

impl ResolvesClientCert for CredentialStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
