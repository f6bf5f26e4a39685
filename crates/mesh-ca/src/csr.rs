//! Certificate signing requests: only the public key and the proof of
//! possession are taken from a CSR. Everything else it asks for (names,
//! CA rights, key usages, extensions) is ignored on purpose: the issued
//! certificate's content is decided by the CA from the authenticated identity.

use rcgen::{PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

/// Why a certificate signing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The input is neither a PEM `CERTIFICATE REQUEST` nor DER.
    #[error("the CSR is not a PEM or DER encoded PKCS#10 request")]
    Encoding,
    /// The request's self-signature does not verify: no proof of possession.
    #[error("the CSR's signature does not verify (no proof of possession of the key)")]
    Signature,
    /// The subject key is of a kind the CA does not sign.
    #[error("the CSR's key algorithm {0} is not supported (use ECDSA P-256/P-384, Ed25519 or RSA)")]
    UnsupportedKey(String),
}

/// The subject public key taken from a verified CSR.
#[derive(Debug, Clone)]
pub(crate) struct CsrKey {
    alg: &'static SignatureAlgorithm,
    raw: Vec<u8>,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Parses a CSR given as PEM or DER, verifies its signature and returns its key.
pub(crate) fn parse_csr(input: &[u8]) -> Result<CsrKey, CsrError> {
    let der = if input.trim_ascii_start().starts_with(b"-----BEGIN") {
        CertificateSigningRequestDer::from_pem_slice(input)
            .map_err(|_| CsrError::Encoding)?
            .as_ref()
            .to_vec()
    } else {
        input.to_vec()
    };
    let (_, csr) = X509CertificationRequest::from_der(&der).map_err(|_| CsrError::Encoding)?;
    csr.verify_signature().map_err(|_| CsrError::Signature)?;
    let spki = &csr.certification_request_info.subject_pki;
    let alg_oid = &spki.algorithm.algorithm;
    let alg: &'static SignatureAlgorithm = if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Some(c) if c == OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            other => {
                return Err(CsrError::UnsupportedKey(format!(
                    "EC on curve {}",
                    other.map(|o| o.to_id_string()).unwrap_or_default()
                )));
            }
        }
    } else if *alg_oid == OID_SIG_ED25519 {
        &rcgen::PKCS_ED25519
    } else if *alg_oid == OID_PKCS1_RSAENCRYPTION {
        &rcgen::PKCS_RSA_SHA256
    } else {
        return Err(CsrError::UnsupportedKey(alg_oid.to_id_string()));
    };
    Ok(CsrKey {
        alg,
        raw: spki.subject_public_key.data.to_vec(),
    })
}
