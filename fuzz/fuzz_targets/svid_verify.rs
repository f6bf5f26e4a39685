//! X.509-SVID verification on arbitrary DER: an error, never a panic, and
//! never an identity for a certificate our CA did not sign (the CA's key is
//! made fresh per run, so no input can be signed by it).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesh_ca::{CertificateAuthority, PeerRole, TrustBundle, TrustBundleSet};
use mesh_core::identity::TrustDomain;
use rustls_pki_types::{CertificateDer, UnixTime};

fn bundles() -> &'static TrustBundleSet {
    static B: OnceLock<TrustBundleSet> = OnceLock::new();
    B.get_or_init(|| {
        let td = TrustDomain::new("cluster.local").expect("a valid trust domain");
        let ca = CertificateAuthority::generate_root(td.clone(), time::OffsetDateTime::now_utc())
            .expect("a root CA");
        TrustBundleSet::single(
            td,
            TrustBundle::new(vec![ca.root().clone()]).expect("a bundle"),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte: how many bytes of the rest are the leaf; the remainder is
    // one intermediate.
    let Some((&split, rest)) = data.split_first() else { return };
    let at = (usize::from(split) * 8).min(rest.len());
    let (leaf, inter) = rest.split_at(at);
    let (leaf, inter) = if leaf.is_empty() { (rest, &[][..]) } else { (leaf, inter) };
    let leaf = CertificateDer::from(leaf);
    let inters = if inter.is_empty() { vec![] } else { vec![CertificateDer::from(inter)] };
    let _ = mesh_ca::svid_id(&leaf);
    for role in [PeerRole::Client, PeerRole::Server] {
        let r = bundles().verify(&leaf, &inters, role, UnixTime::now());
        assert!(r.is_err(), "an unsigned certificate verified: {r:?}");
    }
});
