//! Test PKI and HTTP helpers shared by the mesh-tower integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_ca::{CertificateAuthority, CredentialStore, Credentials, TrustBundle, TrustBundleSet};
use mesh_core::identity::{SpiffeId, TrustDomain};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};

/// A root CA for tests, usable both as a mesh CA and as a raw rcgen issuer
/// (to sign certificates that break the X.509-SVID rules).
pub struct TestPki {
    pub td: TrustDomain,
    pub ca: CertificateAuthority,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
}

impl TestPki {
    pub fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test root {td}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let ca = CertificateAuthority::from_pem(
            td.clone(),
            &cert.pem(),
            &key.serialize_pem(),
            "",
            &cert.pem(),
        )
        .unwrap();
        Self {
            td,
            ca,
            root: cert.der().clone(),
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn root(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn bundles(&self) -> TrustBundleSet {
        TrustBundleSet::single(
            self.td.clone(),
            TrustBundle::new(vec![self.root()]).unwrap(),
        )
    }

    pub fn id(&self, sa: &str) -> SpiffeId {
        SpiffeId::for_workload(&self.td, "default", sa).unwrap()
    }

    /// Credentials for `sa`, issued by the mesh CA, trusting this PKI only.
    pub fn creds(&self, sa: &str) -> Credentials {
        self.creds_at(sa, OffsetDateTime::now_utc(), None)
    }

    pub fn creds_at(&self, sa: &str, now: OffsetDateTime, ttl: Option<Duration>) -> Credentials {
        let (svid, key) = self.ca.issue_with_new_key(&self.id(sa), ttl, now).unwrap();
        let key = PrivateKeyDer::from_pem_slice_compat(key.as_bytes());
        Credentials::from_issued(&svid, key, TrustBundleSet::new()).unwrap()
    }

    /// A valid SVID's chain and key, for a raw rustls peer.
    pub fn raw_svid(&self, sa: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let (svid, key) = self
            .ca
            .issue_with_new_key(&self.id(sa), None, OffsetDateTime::now_utc())
            .unwrap();
        (
            svid.chain(),
            PrivateKeyDer::from_pem_slice_compat(key.as_bytes()),
        )
    }

    pub fn store(&self, sa: &str) -> CredentialStore {
        CredentialStore::new(self.creds(sa))
    }

    /// A leaf signed by this root with arbitrary SANs: breaks SVID rules on
    /// purpose. Returns the chain and key for a raw rustls peer.
    pub fn raw_leaf(
        &self,
        sans: Vec<SanType>,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "raw");
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

impl TestPki {
    /// A valid SVID for `sa` issued through `depth` intermediate CAs below
    /// this root: the chain (leaf first, then the intermediates from the
    /// leaf's issuer up) and the leaf's key.
    pub fn raw_chain(
        &self,
        sa: &str,
        depth: usize,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut issuers = Vec::with_capacity(depth);
        let mut certs = Vec::with_capacity(depth);
        for i in 0..depth {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("intermediate {i}"));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let parent = issuers.last().unwrap_or(&self.issuer);
            let cert = params.signed_by(&key, parent).unwrap();
            certs.push(cert.der().clone());
            issuers.push(Issuer::new(params, key));
        }
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![uri(&self.id(sa).to_string())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params
            .signed_by(&key, issuers.last().unwrap_or(&self.issuer))
            .unwrap();
        let mut chain = vec![leaf.der().clone()];
        chain.extend(certs.into_iter().rev());
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// `PrivateKeyDer::from_pem_slice` under a name that reads well above.
trait FromPemCompat {
    fn from_pem_slice_compat(pem: &[u8]) -> PrivateKeyDer<'static>;
}

impl FromPemCompat for PrivateKeyDer<'static> {
    fn from_pem_slice_compat(pem: &[u8]) -> PrivateKeyDer<'static> {
        use rustls_pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(pem).unwrap()
    }
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// A raw rustls client config presenting `chain` (or nothing), trusting any
/// server with a valid SVID of `trust`'s bundles.
pub fn raw_client(
    trust: &CredentialStore,
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            mesh_ca::tls::SpiffeServerVerifier::dangerous_any_identity(trust.clone()),
        ));
    let mut config = match cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Sends `GET /` over an established stream, h2 or HTTP/1.1 per `h2`, and
/// returns the status and body.
pub async fn get<IO>(io: IO, h2: bool) -> Result<(u16, String), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let req = http::Request::get("http://mesh.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A handler answering with the caller's SPIFFE ID, or "plaintext".
pub fn whoami() -> impl tower::Service<
    http::Request<mesh_tower::body::BoxBody>,
    Response = http::Response<http_body_util::Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(|req: http::Request<mesh_tower::body::BoxBody>| async move {
        let peer = req
            .extensions()
            .get::<mesh_tower::tls::PeerIdentity>()
            .cloned();
        let body = match peer.as_ref().and_then(|p| p.spiffe_id()) {
            Some(id) => id.to_string(),
            None if peer.is_some() => "plaintext".to_owned(),
            None => "no PeerIdentity extension".to_owned(),
        };
        Ok(http::Response::new(http_body_util::Full::new(Bytes::from(
            body,
        ))))
    })
}
