//! rustls glue: SPIFFE peer verifiers and config builders, on the `ring`
//! provider only.
//!
//! The verifiers read the trust bundles from a [`CredentialStore`] at each
//! handshake, so a bundle change (root rotation) needs no new config.

use std::sync::{Arc, OnceLock};

use mesh_core::identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::credentials::CredentialStore;
use crate::svid::{PeerRole, SvidError, TrustBundleSet};

/// The one crypto provider used: `ring`. Configs are always built with it
/// explicitly, never from a process default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    crypto_provider().signature_verification_algorithms
}

/// Whether a server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a valid X.509-SVID (mesh mTLS).
    Required,
    /// A client may present one; if it does, it must be valid. For the CA's
    /// signing service, where a first request authenticates with a token.
    Optional,
}

/// Verifies client certificates as X.509-SVIDs against the bundle of their
/// trust domain.
#[derive(Debug, Clone)]
pub struct SpiffeClientVerifier {
    store: CredentialStore,
    auth: ClientAuth,
}

impl SpiffeClientVerifier {
    /// A verifier reading bundles from `store`.
    pub fn new(store: CredentialStore, auth: ClientAuth) -> Self {
        Self { store, auth }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.auth == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would name one root; during a rotation peers hold several,
        // and SPIFFE clients send their one SVID anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.store
            .load()
            .bundles()
            .verify(end_entity, intermediates, PeerRole::Client, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Verifies a server's certificate as an X.509-SVID and enforces secure
/// naming: its SPIFFE ID must be one of those allowed for the destination.
/// The TLS server name is not used: identities are SPIFFE IDs, not DNS names.
#[derive(Debug, Clone)]
pub struct SpiffeServerVerifier {
    bundles: BundleSource,
    /// `None` only when built by `dangerous_any_identity`.
    allowed: Option<Arc<[SpiffeId]>>,
}

impl SpiffeServerVerifier {
    /// A verifier accepting only servers whose SPIFFE ID is in `allowed`.
    pub fn new(store: CredentialStore, allowed: impl Into<Arc<[SpiffeId]>>) -> Self {
        Self {
            bundles: BundleSource::Store(store),
            allowed: Some(allowed.into()),
        }
    }

    /// A verifier with fixed bundles, for a workload that has no SVID yet
    /// (its first request to the CA).
    pub fn with_bundles(bundles: Arc<TrustBundleSet>, allowed: impl Into<Arc<[SpiffeId]>>) -> Self {
        Self {
            bundles: BundleSource::Fixed(bundles),
            allowed: Some(allowed.into()),
        }
    }

    /// A verifier accepting any server with a valid SVID of a trusted trust
    /// domain. This skips secure naming: any workload of the mesh could
    /// impersonate the destination. Only for bootstrapping and tools.
    pub fn dangerous_any_identity(store: CredentialStore) -> Self {
        Self {
            bundles: BundleSource::Store(store),
            allowed: None,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let bundles = match &self.bundles {
            BundleSource::Store(store) => store.load().bundles().clone(),
            BundleSource::Fixed(bundles) => bundles.clone(),
        };
        let id = bundles.verify(end_entity, intermediates, PeerRole::Server, now)?;
        if let Some(allowed) = &self.allowed {
            if !allowed.contains(&id) {
                return Err(SvidError::NotAllowed {
                    peer: id,
                    allowed: allowed.to_vec(),
                }
                .into());
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

#[derive(Debug, Clone)]
enum BundleSource {
    Store(CredentialStore),
    Fixed(Arc<TrustBundleSet>),
}

/// A client config that presents no certificate, verifying the server with
/// `verifier`. For a workload's first request to the CA.
pub fn client_config_without_cert(
    verifier: SpiffeServerVerifier,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A server config presenting the store's current SVID and verifying clients
/// against its current bundles. Build it once: rotation needs no rebuild.
///
/// Session resumption is off: a resumed TLS session skips the client
/// certificate check and brings back the identity verified when the
/// session was made, so after a trust change (a root removed, a bundle
/// replaced) a ticket would let an identity the mesh no longer trusts
/// through. rustls' defaults (tickets and a 256-entry session cache)
/// allowed exactly that; `tests/resumption.rs` in mesh-tower proves it
/// no longer can. The cost is a full handshake per connection, which mesh
/// connections, long-lived and pooled, rarely pay.
pub fn server_config(
    store: &CredentialStore,
    auth: ClientAuth,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(store.clone(), auth)))
        .with_cert_resolver(Arc::new(store.clone()));
    no_resumption(&mut config);
    Ok(config)
}

/// Turns TLS session resumption off on a server config (see
/// [`server_config`] for why): no tickets sent, no sessions kept.
pub fn no_resumption(config: &mut ServerConfig) {
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
}

/// A client config presenting the store's current SVID and verifying the
/// server with `verifier` (which carries the secure-naming allow list).
pub fn client_config(
    store: &CredentialStore,
    verifier: SpiffeServerVerifier,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        // Not a weakening: the custom verifier is the SPIFFE one above.
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(store.clone()));
    // A resumed session skips the server's certificate, and with it the
    // secure-naming check against the current bundles (see server_config).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
