//! X.509-SVID verification: the SPIFFE rules for the leaf, and the chain
//! checked against the trust bundle of the leaf's own trust domain.

use std::collections::BTreeMap;
use std::fmt;

use mesh_core::identity::{IdError, SpiffeId, TrustDomain};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a peer's certificate is not an acceptable X.509-SVID.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The leaf does not parse as an X.509 certificate.
    #[error("the certificate does not parse: {0}")]
    Malformed(String),
    /// The leaf has no URI SAN at all.
    #[error("the certificate has no URI SAN, so no SPIFFE ID")]
    NoUriSan,
    /// The leaf names a DNS SAN but no URI SAN: SPIFFE identities are only
    /// ever taken from the URI SAN.
    #[error("the certificate names {0:?} only in a DNS SAN; a SPIFFE ID must be the URI SAN")]
    IdentityOnlyInDnsSan(String),
    /// The leaf has more than one URI SAN.
    #[error("the certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a SPIFFE ID.
    #[error("the URI SAN {uri:?} is not a SPIFFE ID: {error}")]
    NotSpiffeId {
        /// The URI found.
        uri: String,
        /// Why it is not a SPIFFE ID.
        error: IdError,
    },
    /// The leaf is a CA certificate.
    #[error("the leaf certificate is a CA (basicConstraints cA=true)")]
    LeafIsCa,
    /// The leaf may sign certificates or CRLs.
    #[error("the leaf certificate has keyCertSign or cRLSign key usage")]
    LeafCanSign,
    /// The leaf's key usage lacks digitalSignature.
    #[error("the leaf certificate's key usage lacks digitalSignature")]
    NoDigitalSignature,
    /// No trust bundle is known for the leaf's trust domain.
    #[error("no trust bundle for trust domain {0:?}")]
    UnknownTrustDomain(TrustDomain),
    /// The certificate (or one in its chain) has expired.
    #[error("the certificate expired at {not_after} (unix seconds; now {now})")]
    Expired {
        /// notAfter, unix seconds.
        not_after: u64,
        /// The verification time, unix seconds.
        now: u64,
    },
    /// The certificate is not valid yet.
    #[error("the certificate is not valid before {not_before} (unix seconds; now {now})")]
    NotYetValid {
        /// notBefore, unix seconds.
        not_before: u64,
        /// The verification time, unix seconds.
        now: u64,
    },
    /// The chain does not lead to a root of the trust domain's bundle.
    #[error("the certificate does not chain to a root of trust domain {0:?}")]
    UntrustedChain(TrustDomain),
    /// The leaf is not meant for this side of TLS (extended key usage).
    #[error("the certificate's extended key usage does not allow {0}")]
    WrongPurpose(&'static str),
    /// Any other path validation failure.
    #[error("certificate path validation failed: {0}")]
    Path(String),
    /// Secure naming: a valid SVID, but not one of the identities allowed for
    /// the destination.
    #[error(
        "{peer} is not an identity allowed for this destination (allowed: {})",
        join(allowed)
    )]
    NotAllowed {
        /// The server's verified identity.
        peer: SpiffeId,
        /// The identities the destination may have.
        allowed: Vec<SpiffeId>,
    },
}

fn join(ids: &[SpiffeId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl SvidError {
    /// Finds the SVID refusal inside a rustls error, if that is what it was.
    pub fn from_rustls(error: &rustls::Error) -> Option<&SvidError> {
        match error {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<SvidError>()
            }
            _ => None,
        }
    }
}

impl From<SvidError> for rustls::Error {
    fn from(e: SvidError) -> Self {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            std::sync::Arc::new(e),
        )))
    }
}

/// Which side of a TLS connection the certificate belongs to; it chooses the
/// extended key usage required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The certificate is a server's.
    Server,
    /// The certificate is a client's.
    Client,
}

/// The roots of one trust domain. Several roots may be trusted at once, which
/// is how a root is rotated: A, then A+B, then B.
#[derive(Clone)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl TrustBundle {
    /// A bundle of the given roots (DER).
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, SvidError> {
        let anchors = roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| SvidError::Malformed(format!("trust anchor: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { roots, anchors })
    }

    /// A bundle read from PEM (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: &[u8]) -> Result<Self, SvidError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvidError::Malformed(format!("trust bundle PEM: {e}")))?;
        if roots.is_empty() {
            return Err(SvidError::Malformed(
                "trust bundle PEM holds no certificate".into(),
            ));
        }
        Self::new(roots)
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

/// Trust bundles by trust domain: a peer is verified against the bundle of
/// the trust domain its own SPIFFE ID names, never another's.
#[derive(Debug, Clone, Default)]
pub struct TrustBundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustBundleSet {
    /// An empty set: every peer is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set of one trust domain's bundle.
    pub fn single(trust_domain: TrustDomain, bundle: TrustBundle) -> Self {
        let mut set = Self::new();
        set.insert(trust_domain, bundle);
        set
    }

    /// Sets (replaces) the bundle of a trust domain.
    pub fn insert(&mut self, trust_domain: TrustDomain, bundle: TrustBundle) {
        self.bundles.insert(trust_domain, bundle);
    }

    /// The bundle of a trust domain.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    /// The trust domains known.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    /// Verifies an X.509-SVID chain and returns the peer's SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> Result<SpiffeId, SvidError> {
        let id = svid_id(end_entity)?;
        let bundle = self
            .get(id.trust_domain())
            .ok_or_else(|| SvidError::UnknownTrustDomain(id.trust_domain().clone()))?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| SvidError::Malformed(e.to_string()))?;
        let usage = match role {
            PeerRole::Server => webpki::KeyUsage::server_auth(),
            PeerRole::Client => webpki::KeyUsage::client_auth(),
        };
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        cert.verify_for_usage(
            algs.all,
            &bundle.anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| path_error(e, &id, role))?;
        Ok(id)
    }
}

#[allow(deprecated)] // RequiredEkuNotFound is deprecated but still returned by older paths.
fn path_error(e: webpki::Error, id: &SpiffeId, role: PeerRole) -> SvidError {
    use webpki::Error as E;
    match e {
        E::CertExpired { time, not_after } => SvidError::Expired {
            not_after: not_after.as_secs(),
            now: time.as_secs(),
        },
        E::CertNotValidYet { time, not_before } => SvidError::NotYetValid {
            not_before: not_before.as_secs(),
            now: time.as_secs(),
        },
        E::UnknownIssuer | E::InvalidSignatureForPublicKey => {
            SvidError::UntrustedChain(id.trust_domain().clone())
        }
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) => {
            SvidError::WrongPurpose(match role {
                PeerRole::Server => "server authentication",
                PeerRole::Client => "client authentication",
            })
        }
        E::CaUsedAsEndEntity => SvidError::LeafIsCa,
        other => SvidError::Path(other.to_string()),
    }
}

/// Applies the X.509-SVID rules to a leaf and returns its SPIFFE ID: exactly
/// one URI SAN that parses as a SPIFFE ID, not a CA, digitalSignature and no
/// certificate signing. The chain is not checked here.
pub fn svid_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let mut uris = Vec::new();
    let mut dns = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push(*u),
                        GeneralName::DNSName(d) => dns = dns.or(Some(*d)),
                        _ => {}
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(SvidError::LeafIsCa),
            ParsedExtension::KeyUsage(ku) => {
                if ku.key_cert_sign() || ku.crl_sign() {
                    return Err(SvidError::LeafCanSign);
                }
                if !ku.digital_signature() {
                    return Err(SvidError::NoDigitalSignature);
                }
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [] => Err(match dns {
            Some(d) => SvidError::IdentityOnlyInDnsSan(d.to_owned()),
            None => SvidError::NoUriSan,
        }),
        [uri] => SpiffeId::parse(uri).map_err(|error| SvidError::NotSpiffeId {
            uri: (*uri).to_owned(),
            error,
        }),
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};

    fn leaf(f: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI("spiffe://td/ns/a/sa/b".try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        f(&mut params);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn leaf_rules() {
        let ok = leaf(|_| {});
        assert_eq!(svid_id(&ok).unwrap().to_string(), "spiffe://td/ns/a/sa/b");
        let ca = leaf(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
        assert!(matches!(svid_id(&ca), Err(SvidError::LeafIsCa)));
        let signer = leaf(|p| p.key_usages.push(KeyUsagePurpose::KeyCertSign));
        assert!(matches!(svid_id(&signer), Err(SvidError::LeafCanSign)));
        let no_ds = leaf(|p| p.key_usages = vec![KeyUsagePurpose::KeyAgreement]);
        assert!(matches!(
            svid_id(&no_ds),
            Err(SvidError::NoDigitalSignature)
        ));
        let http =
            leaf(|p| p.subject_alt_names = vec![SanType::URI("https://td/x".try_into().unwrap())]);
        assert!(matches!(svid_id(&http), Err(SvidError::NotSpiffeId { .. })));
        let none = leaf(|p| p.subject_alt_names = vec![]);
        assert!(matches!(svid_id(&none), Err(SvidError::NoUriSan)));
        assert!(matches!(
            svid_id(&CertificateDer::from(vec![1, 2, 3])),
            Err(SvidError::Malformed(_))
        ));
    }

    #[test]
    fn verification_picks_the_bundle_of_the_peer_s_trust_domain() {
        let ok = leaf(|_| {});
        let set = TrustBundleSet::single(
            TrustDomain::new("other").unwrap(),
            TrustBundle::new(vec![ok.clone()]).unwrap(),
        );
        // The leaf's own certificate is a trust anchor of *another* domain:
        // still unknown for `td`.
        assert!(matches!(
            set.verify(&ok, &[], PeerRole::Client, UnixTime::now()),
            Err(SvidError::UnknownTrustDomain(_))
        ));
        assert!(TrustBundle::from_pem(b"").is_err());
    }
}
