//! The signing CA and the X.509-SVID leaf profile.

use std::fmt;
use std::time::Duration;

use mesh_core::identity::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::csr::parse_csr;
use crate::error::CaError;

/// One day, the default and maximum leaf lifetime.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long the leaves a CA signs may live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafPolicy {
    /// Lifetime when the request names none (or zero).
    pub default_ttl: Duration,
    /// The longest lifetime granted, whatever the request asks.
    pub max_ttl: Duration,
    /// How far NotBefore is set back, for peers whose clocks run behind.
    pub backdate: Duration,
}

impl Default for LeafPolicy {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_LEAF_TTL,
            max_ttl: DEFAULT_LEAF_TTL,
            backdate: Duration::from_secs(60),
        }
    }
}

/// A certificate authority able to sign X.509-SVIDs for one trust domain.
///
/// The signing certificate may be the root itself (what `init` creates) or an
/// intermediate under a root the user brings (Istio's plug-in CA layout).
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    ca_cert: CertificateDer<'static>,
    ca_not_after: OffsetDateTime,
    /// Certificates between `ca_cert` and the root, nearest first.
    intermediates: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
    /// Other roots workloads must trust, e.g. the next root during a rotation.
    extra_roots: Vec<CertificateDer<'static>>,
    policy: LeafPolicy,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("ca_not_after", &self.ca_not_after)
            .field("intermediates", &self.intermediates.len())
            .field("extra_roots", &self.extra_roots.len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// A freshly issued X.509-SVID with what a workload needs beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSvid {
    /// The leaf certificate.
    pub leaf: CertificateDer<'static>,
    /// Intermediates from the leaf's issuer up to (not including) the root.
    pub intermediates: Vec<CertificateDer<'static>>,
    /// The trust bundle of the CA's trust domain: every root to trust.
    pub bundle: Vec<CertificateDer<'static>>,
    /// When the leaf stops being valid.
    pub not_after: OffsetDateTime,
}

impl IssuedSvid {
    /// The chain a workload presents in a handshake: leaf then intermediates.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = Vec::with_capacity(1 + self.intermediates.len());
        chain.push(self.leaf.clone());
        chain.extend(self.intermediates.iter().cloned());
        chain
    }

    /// The chain as Istio's CA protocol answers it: leaf, intermediates, then
    /// the roots, the issuing root last.
    pub fn istio_chain_pem(&self) -> Vec<String> {
        self.chain()
            .iter()
            .chain(self.bundle.iter())
            .map(|c| pem_cert(c))
            .collect()
    }

    /// Splits an Istio CA answer back into leaf, intermediates and roots:
    /// every self-signed certificate after the leaf is a root.
    pub fn from_istio_chain(pems: &[String]) -> Result<Self, CaError> {
        let mut certs = Vec::new();
        for pem in pems {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                certs.push(cert.map_err(|e| CaError::Parse(e.to_string()))?);
            }
        }
        let mut iter = certs.into_iter();
        let leaf = iter
            .next()
            .ok_or_else(|| CaError::Parse("the chain is empty".into()))?;
        let not_after = parse(&leaf)?.validity().not_after.to_datetime();
        let (mut intermediates, mut bundle) = (Vec::new(), Vec::new());
        for cert in iter {
            let parsed = parse(&cert)?;
            // A root is self-issued and self-signed; names alone can collide.
            if parsed.subject() == parsed.issuer() && parsed.verify_signature(None).is_ok() {
                bundle.push(cert);
            } else {
                intermediates.push(cert);
            }
        }
        Ok(Self {
            leaf,
            intermediates,
            bundle,
            not_after,
        })
    }
}

pub(crate) fn pem_cert(cert: &CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", cert.as_ref())
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

pub(crate) fn parse<'a>(cert: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(cert.as_ref())
        .map(|(_, c)| c)
        .map_err(|e| CaError::Parse(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Random)?;
    // A positive INTEGER that is never zero.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(
    trust_domain: &TrustDomain,
    cn: &str,
    now: OffsetDateTime,
    years: i64,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain.as_str());
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Never name constraints: rustls-webpki refuses URI name constraints.
    params.name_constraints = None;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365 * years);
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Checks what the CA must hold true of a CA certificate it signs with.
fn check_ca_cert(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    if !cert.is_ca() {
        return Err(CaError::NotACa);
    }
    for ext in cert.extensions() {
        if let ParsedExtension::NameConstraints(nc) = ext.parsed_extension() {
            let trees = nc
                .permitted_subtrees
                .iter()
                .flatten()
                .chain(nc.excluded_subtrees.iter().flatten());
            if trees
                .into_iter()
                .any(|t| matches!(t.base, GeneralName::URI(_)))
            {
                return Err(CaError::UriNameConstraints);
            }
        }
    }
    Ok(())
}

impl CertificateAuthority {
    /// Creates a new self-signed root CA (ECDSA P-256, ten years) for a trust domain.
    pub fn generate_root(trust_domain: TrustDomain, now: OffsetDateTime) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(&trust_domain, "mesh root CA", now, 10)?;
        let cert = params.self_signed(&key)?;
        let der = cert.der().clone();
        Ok(Self {
            trust_domain,
            ca_not_after: params.not_after,
            issuer: Issuer::new(params, key),
            ca_cert: der.clone(),
            intermediates: Vec::new(),
            root: der,
            extra_roots: Vec::new(),
            policy: LeafPolicy::default(),
        })
    }

    /// Creates an intermediate CA (ECDSA P-256, five years) signed by this one,
    /// under the same root.
    pub fn generate_intermediate(&self, now: OffsetDateTime) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = ca_params(&self.trust_domain, "mesh intermediate CA", now, 5)?;
        params.not_after = params.not_after.min(self.ca_not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Self {
            trust_domain: self.trust_domain.clone(),
            ca_not_after: params.not_after,
            issuer: Issuer::new(params, key),
            ca_cert: cert.der().clone(),
            intermediates: self.chain_above_leaf(),
            root: self.root.clone(),
            extra_roots: self.extra_roots.clone(),
            policy: self.policy,
        })
    }

    /// Loads a CA from PEM: the signing certificate and its PKCS#8 key, the chain
    /// from it up to the root (may include both ends, or be empty), and the root.
    pub fn from_pem(
        trust_domain: TrustDomain,
        ca_cert_pem: &str,
        ca_key_pem: &str,
        cert_chain_pem: &str,
        root_cert_pem: &str,
    ) -> Result<Self, CaError> {
        let one = |pem: &str, what: &str| -> Result<CertificateDer<'static>, CaError> {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| CaError::Parse(format!("{what}: {e}")))
        };
        let ca_cert = one(ca_cert_pem, "CA certificate")?;
        let root = one(root_cert_pem, "root certificate")?;
        let key = KeyPair::from_pem(ca_key_pem)?;
        let (ca_not_after, issuer) = {
            let parsed = parse(&ca_cert)?;
            check_ca_cert(&parsed)?;
            if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
                return Err(CaError::KeyMismatch);
            }
            let not_after = parsed.validity().not_after.to_datetime();
            (not_after, Issuer::from_ca_cert_der(&ca_cert, key)?)
        };
        check_ca_cert(&parse(&root)?)?;
        let mut intermediates = Vec::new();
        for cert in CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes()) {
            let cert = cert.map_err(|e| CaError::Parse(format!("certificate chain: {e}")))?;
            if cert != ca_cert && cert != root {
                check_ca_cert(&parse(&cert)?)?;
                intermediates.push(cert);
            }
        }
        Ok(Self {
            trust_domain,
            issuer,
            ca_cert,
            ca_not_after,
            intermediates,
            root,
            extra_roots: Vec::new(),
            policy: LeafPolicy::default(),
        })
    }

    /// A copy of this CA (same key and chain), e.g. to give it other extra
    /// roots with [`with_extra_roots`](Self::with_extra_roots).
    pub fn try_clone(&self) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(&self.ca_key_pem())?;
        Ok(Self {
            trust_domain: self.trust_domain.clone(),
            issuer: Issuer::from_ca_cert_der(&self.ca_cert, key)?,
            ca_cert: self.ca_cert.clone(),
            ca_not_after: self.ca_not_after,
            intermediates: self.intermediates.clone(),
            root: self.root.clone(),
            extra_roots: self.extra_roots.clone(),
            policy: self.policy,
        })
    }

    /// Sets the leaf lifetime policy.
    pub fn with_policy(mut self, policy: LeafPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Adds roots that workloads must trust beside this CA's own, for a root
    /// rotation (A, then A+B, then B).
    pub fn with_extra_roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.extra_roots = roots.into_iter().filter(|r| *r != self.root).collect();
        self
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The leaf lifetime policy.
    pub fn policy(&self) -> LeafPolicy {
        self.policy
    }

    /// The root this CA's chain ends in.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The signing certificate (the root itself for a self-created CA).
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    /// The signing key, PKCS#8 PEM.
    pub(crate) fn ca_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Certificates from the signing certificate up to the root, excluded.
    fn chain_above_leaf(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = Vec::new();
        if self.ca_cert != self.root {
            chain.push(self.ca_cert.clone());
        }
        chain.extend(self.intermediates.iter().cloned());
        chain
    }

    /// Istio's cert-chain.pem: the signing certificate up to and including the root.
    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = self.chain_above_leaf();
        chain.push(self.root.clone());
        chain
    }

    /// Every root a workload of this trust domain must trust, the CA's own last.
    pub fn trust_bundle(&self) -> Vec<CertificateDer<'static>> {
        let mut roots = self.extra_roots.clone();
        roots.push(self.root.clone());
        roots
    }

    /// Signs an X.509-SVID for `id` over the key of `csr` (PEM or DER), now.
    ///
    /// `id` must be the identity the caller authenticated; nothing in the CSR
    /// but its key is used. `ttl` is capped by the policy and by the CA's own
    /// expiry; `None` or zero means the policy's default.
    pub fn issue(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: Option<Duration>,
    ) -> Result<IssuedSvid, CaError> {
        self.issue_at(csr, id, ttl, OffsetDateTime::now_utc())
    }

    /// [`issue`](Self::issue) with the clock given.
    pub fn issue_at(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        let key = parse_csr(csr)?;
        self.sign_leaf(&key, id, &[], ttl, now)
    }

    /// [`issue`](Self::issue) with DNS SANs beside the URI SAN, for the CA's
    /// own serving certificate: clients that verify a server by host name
    /// (gRPC's xDS clients do) dial it by one of `dns_names`. Never for a
    /// workload's CSR: the names are the caller's, not the CSR's.
    pub fn issue_with_dns_names(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
    ) -> Result<IssuedSvid, CaError> {
        let key = parse_csr(csr)?;
        self.sign_leaf(&key, id, dns_names, ttl, OffsetDateTime::now_utc())
    }

    /// Generates a key and signs an SVID for it; returns the SVID and the key
    /// as PKCS#8 PEM. For offline issuance (`mesh-ca issue`).
    pub fn issue_with_new_key(
        &self,
        id: &SpiffeId,
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<(IssuedSvid, String), CaError> {
        self.issue_with_new_key_and_dns_names(id, &[], ttl, now)
    }

    /// [`issue_with_new_key`](Self::issue_with_new_key) with DNS SANs beside
    /// the URI SAN, for gateways and servers that non-mesh clients (browsers,
    /// curl) verify by host name. Peers of the mesh still read only the URI
    /// SAN. Only offline issuance offers this: names in a CSR are ignored.
    pub fn issue_with_new_key_and_dns_names(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<(IssuedSvid, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let svid = self.sign_leaf(&key, id, dns_names, ttl, now)?;
        Ok((svid, key.serialize_pem()))
    }

    fn sign_leaf(
        &self,
        key: &impl rcgen::PublicKeyData,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Option<Duration>,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                ca: self.trust_domain.clone(),
            });
        }
        // X.509 times have whole seconds; keep `not_after` exact.
        let now = now.replace_nanosecond(0).unwrap_or(now);
        if self.ca_not_after <= now {
            return Err(CaError::CaExpired);
        }
        let ttl = ttl
            .filter(|t| !t.is_zero())
            .unwrap_or(self.policy.default_ttl)
            .min(self.policy.max_ttl);
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::DAY);
        let backdate =
            time::Duration::try_from(self.policy.backdate).unwrap_or(time::Duration::MINUTE);

        let mut params = CertificateParams::default();
        // SPIFFE leaves carry their identity in the URI SAN only; an empty
        // subject makes rcgen mark the SAN extension critical (RFC 5280).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - backdate;
        params.not_after = (now + ttl).min(self.ca_not_after);
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer)?;
        Ok(IssuedSvid {
            leaf: cert.der().clone(),
            intermediates: self.chain_above_leaf(),
            bundle: self.trust_bundle(),
            not_after: params.not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_encoding_round_trips() {
        let ca = CertificateAuthority::generate_root(
            TrustDomain::new("td").unwrap(),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let pem = pem_cert(ca.root());
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(&back, ca.root());
        for len in 0..5 {
            let der = vec![0xabu8; len];
            let pem = pem_encode("X", &der);
            assert!(pem.starts_with("-----BEGIN X-----\n"));
        }
    }
}
