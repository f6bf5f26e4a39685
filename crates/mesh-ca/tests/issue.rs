#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The CA issues the SPIFFE leaf profile for the authenticated identity,
//! whatever the CSR asks, and keeps its root across restarts.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mesh_ca::{CaError, CertificateAuthority, CsrError, IssuedSvid, LeafPolicy};
use mesh_core::identity::{SpiffeId, TrustDomain};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::for_workload(&td(), "default", sa).unwrap()
}

/// A CSR asking for everything a workload must not get.
fn greedy_csr() -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "admin");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
        SanType::URI("spiffe://evil.example/ns/x/sa/y".try_into().unwrap()),
        SanType::DnsName("istiod.istio-system.svc".try_into().unwrap()),
    ];
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    // basicConstraints cA=TRUE, pathLen 5, critical.
    let mut bc = CustomExtension::from_oid_content(
        &[2, 5, 29, 19],
        vec![0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x05],
    );
    bc.set_criticality(true);
    params.custom_extensions = vec![bc];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn plain_csr() -> String {
    let key = KeyPair::generate().unwrap();
    CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

/// Asserts the SPIFFE X.509-SVID leaf profile and returns the URI SAN.
fn assert_leaf_profile(svid: &IssuedSvid, now: OffsetDateTime, max: Duration) -> String {
    let (_, cert) = X509Certificate::from_der(svid.leaf.as_ref()).unwrap();
    let mut uris = Vec::new();
    let mut saw = (false, false, false);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        other => panic!("unexpected SAN {other:?}"),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) => {
                assert!(!bc.ca, "leaf must not be a CA");
                assert!(bc.path_len_constraint.is_none());
                saw.0 = true;
            }
            ParsedExtension::KeyUsage(ku) => {
                assert!(ext.critical, "key usage must be critical");
                assert!(ku.digital_signature());
                assert!(!ku.key_cert_sign() && !ku.crl_sign());
                saw.1 = true;
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                assert!(eku.server_auth && eku.client_auth);
                assert!(!eku.code_signing && !eku.any && eku.other.is_empty());
                saw.2 = true;
            }
            _ => {}
        }
    }
    assert_eq!(
        saw,
        (true, true, true),
        "basicConstraints, keyUsage, EKU present"
    );
    assert_eq!(uris.len(), 1, "exactly one URI SAN: {uris:?}");
    assert!(!cert.is_ca());
    assert!(
        cert.subject().iter_common_name().next().is_none(),
        "no CN from the CSR"
    );
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    assert!(nb < now, "NotBefore is backdated");
    assert!(now - nb <= time::Duration::minutes(5));
    assert!(na - now <= time::Duration::try_from(max).unwrap() + time::Duration::seconds(1));
    assert_eq!(na, svid.not_after);
    uris.pop().unwrap()
}

#[test]
fn greedy_csr_gets_the_leaf_profile_and_the_authenticated_identity() {
    let ca = CertificateAuthority::generate_root(td(), OffsetDateTime::now_utc()).unwrap();
    let now = OffsetDateTime::now_utc();
    let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
    let svid = ca
        .issue_at(
            greedy_csr().as_bytes(),
            &id("wordpress"),
            Some(ten_years),
            now,
        )
        .unwrap();
    let uri = assert_leaf_profile(&svid, now, Duration::from_secs(24 * 3600));
    assert_eq!(uri, "spiffe://cluster.local/ns/default/sa/wordpress");
    assert!(svid.intermediates.is_empty());
    assert_eq!(svid.bundle, vec![ca.root().clone()]);
}

#[test]
fn default_and_capped_lifetimes() {
    let ca = CertificateAuthority::generate_root(td(), OffsetDateTime::now_utc())
        .unwrap()
        .with_policy(LeafPolicy {
            default_ttl: Duration::from_secs(3600),
            max_ttl: Duration::from_secs(7200),
            backdate: Duration::from_secs(30),
        });
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let svid = ca
        .issue_at(plain_csr().as_bytes(), &id("a"), None, now)
        .unwrap();
    assert_eq!(svid.not_after, now + time::Duration::hours(1));
    let svid = ca
        .issue_at(
            plain_csr().as_bytes(),
            &id("a"),
            Some(Duration::from_secs(1 << 40)),
            now,
        )
        .unwrap();
    assert_eq!(svid.not_after, now + time::Duration::hours(2));
    let svid = ca
        .issue_at(
            plain_csr().as_bytes(),
            &id("a"),
            Some(Duration::from_secs(5)),
            now,
        )
        .unwrap();
    assert_eq!(svid.not_after, now + time::Duration::seconds(5));
    assert_leaf_profile(&svid, now, Duration::from_secs(5));
}

#[test]
fn refusals() {
    let ca = CertificateAuthority::generate_root(td(), OffsetDateTime::now_utc()).unwrap();
    let foreign = SpiffeId::parse("spiffe://other.domain/ns/a/sa/b").unwrap();
    assert!(matches!(
        ca.issue(plain_csr().as_bytes(), &foreign, None),
        Err(CaError::ForeignTrustDomain { .. })
    ));
    assert!(matches!(
        ca.issue(b"not a csr", &id("a"), None),
        Err(CaError::Csr(CsrError::Encoding))
    ));
    // Flip a bit in the signature: no proof of possession.
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let mut der = csr.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    assert!(matches!(
        ca.issue(&der, &id("a"), None),
        Err(CaError::Csr(CsrError::Signature))
    ));
    // An expired CA does not issue.
    let old = OffsetDateTime::now_utc() - time::Duration::days(365 * 11);
    let expired = CertificateAuthority::generate_root(td(), old).unwrap();
    assert!(matches!(
        expired.issue(plain_csr().as_bytes(), &id("a"), None),
        Err(CaError::CaExpired)
    ));
}

#[test]
fn leaf_never_outlives_its_ca() {
    let old = OffsetDateTime::now_utc() - time::Duration::days(365 * 10) + time::Duration::hours(1);
    let ca = CertificateAuthority::generate_root(td(), old).unwrap();
    let now = OffsetDateTime::now_utc();
    let svid = ca
        .issue_at(plain_csr().as_bytes(), &id("a"), None, now)
        .unwrap();
    assert!(svid.not_after <= now + time::Duration::hours(1));
}

#[test]
fn restarted_ca_keeps_its_root_and_key_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca");
    let first = CertificateAuthority::init_dir(&path, td()).unwrap();
    let mode = std::fs::metadata(path.join(mesh_ca::CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0);
    assert!(matches!(
        CertificateAuthority::init_dir(&path, td()),
        Err(CaError::AlreadyInitialized(_))
    ));
    let again = CertificateAuthority::open_dir(&path).unwrap();
    assert_eq!(again.root(), first.root());
    assert_eq!(again.trust_domain(), &td());
    let svid = again.issue(plain_csr().as_bytes(), &id("a"), None).unwrap();
    assert_eq!(svid.bundle, vec![first.root().clone()]);
    assert!(matches!(
        CertificateAuthority::open_dir(&dir.path().join("nothing")),
        Err(CaError::NotInitialized(_))
    ));
}

fn pem(cert: &rustls_pki_types::CertificateDer<'_>) -> String {
    IssuedSvid {
        leaf: cert.clone().into_owned(),
        intermediates: vec![],
        bundle: vec![],
        not_after: OffsetDateTime::now_utc(),
    }
    .istio_chain_pem()
    .remove(0)
}

#[test]
fn intermediates_sign_under_the_same_root() {
    let now = OffsetDateTime::now_utc();
    let root = CertificateAuthority::generate_root(td(), now).unwrap();
    let inter = root.generate_intermediate(now).unwrap();
    let issued = inter.issue_with_new_key(&id("x"), None, now).unwrap().0;
    assert_eq!(issued.intermediates, vec![inter.ca_cert().clone()]);
    assert_eq!(issued.bundle, vec![root.root().clone()]);
}

#[test]
fn imports_istio_plug_in_layout_with_an_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("plugin");
    std::fs::create_dir(&src).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.distinguished_name = DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "user root");
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "user intermediate");
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root_params, root_key);
    let inter_cert = params.signed_by(&key, &root_issuer).unwrap();
    std::fs::write(src.join("ca-cert.pem"), inter_cert.pem()).unwrap();
    std::fs::write(src.join("ca-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(src.join("root-cert.pem"), root_cert.pem()).unwrap();
    std::fs::write(
        src.join("cert-chain.pem"),
        inter_cert.pem() + &root_cert.pem(),
    )
    .unwrap();

    let dst = dir.path().join("ca");
    let ca = CertificateAuthority::import_istio_dir(&dst, &src, td()).unwrap();
    assert_eq!(ca.root().as_ref(), root_cert.der().as_ref());
    let svid = ca.issue(plain_csr().as_bytes(), &id("a"), None).unwrap();
    assert_eq!(svid.intermediates.len(), 1);
    assert_eq!(svid.intermediates[0].as_ref(), inter_cert.der().as_ref());
    assert_eq!(svid.bundle.len(), 1);
    let mode = std::fs::metadata(dst.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The chain answer round-trips into leaf, intermediates and roots.
    let back = IssuedSvid::from_istio_chain(&svid.istio_chain_pem()).unwrap();
    assert_eq!(back, svid);
    // Reopened after a restart: same root.
    let reopened = CertificateAuthority::open_dir(&dst).unwrap();
    assert_eq!(reopened.root(), ca.root());
}

#[test]
fn refuses_a_ca_with_uri_name_constraints() {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // nameConstraints { permittedSubtrees [ URI "spiffe://cluster.local" ] }
    let uri = b"spiffe://cluster.local";
    let mut subtree = vec![0x86, uri.len() as u8];
    subtree.extend_from_slice(uri);
    let mut general_subtree = vec![0x30, subtree.len() as u8];
    general_subtree.extend(subtree);
    let mut permitted = vec![0xa0, general_subtree.len() as u8];
    permitted.extend(general_subtree);
    let mut nc = vec![0x30, permitted.len() as u8];
    nc.extend(permitted);
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 30], nc);
    ext.set_criticality(true);
    params.custom_extensions = vec![ext];
    let cert = params.self_signed(&key).unwrap();
    let err =
        CertificateAuthority::from_pem(td(), &cert.pem(), &key.serialize_pem(), "", &cert.pem())
            .unwrap_err();
    assert!(matches!(err, CaError::UriNameConstraints), "{err}");
}

#[test]
fn refuses_a_key_that_is_not_the_ca_s() {
    let ca = CertificateAuthority::generate_root(td(), OffsetDateTime::now_utc()).unwrap();
    let other = KeyPair::generate().unwrap();
    let err = CertificateAuthority::from_pem(
        td(),
        &pem(ca.root()),
        &other.serialize_pem(),
        "",
        &pem(ca.root()),
    )
    .unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err}");
}
