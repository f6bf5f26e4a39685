//! The mesh's certificate authority and the workload side of identity.
//!
//! | what | where |
//! | --- | --- |
//! | root / intermediate CA, Istio plug-in layout, X.509-SVID leaf profile | [`CertificateAuthority`] |
//! | single-use join tokens | [`TokenStore`] |
//! | Istio's `CreateCertificate` over gRPC + TLS (feature `grpc`, on by default) | `service::CaService`, `service::CaAcceptor`, `CaClient` |
//! | X.509-SVID verification against per-trust-domain bundles | [`TrustBundleSet::verify`], [`svid_id`] |
//! | rustls verifiers and config builders (ring provider) | [`tls`] |
//! | SVID + key + bundles swapped whole, read at each handshake | [`Credentials`], [`CredentialStore`] |
//! | renewal at half-life, backoff, CA outages | [`CertManager`] with a [`SvidSigner`] |
//! | cert/key/bundle files reloaded on change (SPIRE, cert-manager) | [`FileSource`] |
//! | metric names, types and help texts, and their Prometheus text | [`metrics`] |
//!
//! The SPIFFE verifiers and the certificate manager live here rather than in
//! `mesh-tower` because the CA's own signing service needs them (renewals are
//! authenticated by mTLS) and `mesh-tower` depends on this crate. `mesh-tower`
//! builds its acceptor and connector on them.
//!
//! The default feature `grpc` brings the signing service and its client
//! (tonic, prost and a build script compiling the proto). The `mesh-ca`
//! binary, which serves the service through `mesh_tower::server`, is in the
//! `mesh-control` crate.
//! `default-features = false` leaves everything else, with none of those
//! dependencies: the fuzz targets build it that way.
//!
//! ```
//! use mesh_ca::CertificateAuthority;
//! use mesh_core::identity::{SpiffeId, TrustDomain};
//!
//! let dir = tempfile::tempdir()?;
//! let ca = CertificateAuthority::init_dir(dir.path(), TrustDomain::new("cluster.local")?)?;
//! let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/wordpress")?;
//! let (svid, _key_pem) = ca.issue_with_new_key(&id, None, time::OffsetDateTime::now_utc())?;
//! assert_eq!(svid.bundle, vec![ca.root().clone()]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod authority;
#[cfg(feature = "grpc")]
mod client;
mod credentials;
mod csr;
mod error;
mod files;
mod manager;
pub mod metrics;
#[cfg(feature = "grpc")]
pub mod service;
mod store;
mod svid;
pub mod tls;
mod tokens;

pub use authority::{CertificateAuthority, DEFAULT_LEAF_TTL, IssuedSvid, LeafPolicy};

/// The namespace and service account of the CA's own identity, as istiod's
/// is `istio-system/istiod`.
pub const CA_NAMESPACE: &str = "mesh-system";
/// See [`CA_NAMESPACE`].
pub const CA_SERVICE_ACCOUNT: &str = "mesh-ca";

/// The SPIFFE ID the CA serves with in `trust_domain`,
/// `spiffe://<td>/ns/mesh-system/sa/mesh-ca`: what every client verifies it
/// against, and what the CA issues itself. The one place that names it.
pub fn ca_id(trust_domain: &mesh_core::identity::TrustDomain) -> mesh_core::identity::SpiffeId {
    // A trust domain that parsed makes a valid ID with this fixed path.
    match mesh_core::identity::SpiffeId::for_workload(
        trust_domain,
        CA_NAMESPACE,
        CA_SERVICE_ACCOUNT,
    ) {
        Ok(id) => id,
        Err(e) => unreachable!("the CA's fixed path is a valid SPIFFE path: {e}"),
    }
}
#[cfg(feature = "grpc")]
pub use client::{CaClient, connect_channel, source_chain};
pub use credentials::{CredentialStore, Credentials, CredentialsError};
pub use csr::CsrError;
pub use error::CaError;
pub use files::{FileSource, FileSourceError, FileWatcher};
pub use manager::{
    BoxFuture, CertManager, LocalSigner, ManagerConfig, ManagerError, ManagerStatus, RenewalClock,
    SVID_BUNDLE_FILE, SVID_CERT_FILE, SVID_KEY_FILE, SignError, SvidFiles, SvidSigner, SvidSink,
    SystemClock, jittered, renew_delay,
};
pub use store::{
    CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE, TRUST_BUNDLE_FILE,
    TRUST_DOMAIN_FILE,
};
pub use svid::{PeerRole, SvidError, TrustBundle, TrustBundleSet, svid_id};
pub use tokens::{TokenError, TokenStore};
