//! The workload's side of the signing service: a [`SvidSigner`] that asks
//! `mesh-ca` (or any server of Istio's CA protocol) over gRPC and TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mesh_core::identity::SpiffeId;
use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::authority::IssuedSvid;
use crate::credentials::{CredentialStore, Credentials};
use crate::manager::{BoxFuture, SignError, SvidSigner};
use crate::service::proto::IstioCertificateRequest;
use crate::service::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::svid::TrustBundleSet;
use crate::tls::{SpiffeServerVerifier, client_config, client_config_without_cert};

/// A client of the CA. The first request authenticates with a join token;
/// once the workload has an SVID, requests authenticate with it (mTLS) and
/// the CA is verified with the workload's current bundles.
#[derive(Debug)]
pub struct CaClient {
    addr: String,
    ca_id: SpiffeId,
    bootstrap: Arc<TrustBundleSet>,
    token: Mutex<Option<String>>,
    token_file: Option<std::path::PathBuf>,
    timeout: Duration,
}

impl CaClient {
    /// A client of the CA at `addr` (`host:port`), which must present the
    /// SVID `ca_id`, verified before the first SVID with `bootstrap` (the
    /// CA's root, e.g. its `root-cert.pem`).
    pub fn new(addr: impl Into<String>, ca_id: SpiffeId, bootstrap: TrustBundleSet) -> Self {
        Self {
            addr: addr.into(),
            ca_id,
            bootstrap: Arc::new(bootstrap),
            token: Mutex::new(None),
            token_file: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// The single-use join token for the first certificate.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        Self {
            token: Mutex::new(Some(token.into())),
            ..self
        }
    }

    /// A Kubernetes service-account token file (a projected token, which
    /// the kubelet rotates): read afresh for every request made without an
    /// SVID, and never spent. A join token, if also given, goes first.
    pub fn with_token_file(self, path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            token_file: Some(path.into()),
            ..self
        }
    }

    /// How long one request may take. Default 10 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one CreateCertificate request; returns Istio's chain (leaf
    /// first, root last).
    pub async fn create_certificate(
        &self,
        csr_pem: String,
        ttl: Duration,
        current: Option<Arc<Credentials>>,
    ) -> Result<Vec<String>, SignError> {
        let allowed = vec![self.ca_id.clone()];
        let mut spends = false;
        let token = if current.is_none() {
            let join = self.token.lock().map(|t| t.clone()).unwrap_or(None);
            spends = join.is_some();
            Some(match (join, &self.token_file) {
                (Some(t), _) => t,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| {
                        SignError::Unavailable(format!(
                            "reading the service-account token {}: {e}",
                            path.display()
                        ))
                    })?,
                (None, None) => {
                    return Err(SignError::Refused(
                        "no SVID yet and no join token to get one".into(),
                    ));
                }
            })
        } else {
            None
        };
        let config = match &current {
            Some(c) => {
                let store = CredentialStore::new(Credentials::clone(c));
                client_config(&store, SpiffeServerVerifier::new(store.clone(), allowed))
            }
            None => client_config_without_cert(SpiffeServerVerifier::with_bundles(
                self.bootstrap.clone(),
                allowed,
            )),
        }
        .map_err(|e| SignError::Unavailable(e.to_string()))?;
        let call = async {
            let channel = connect_channel(&self.addr, config)
                .await
                .map_err(|e| SignError::Unavailable(format!("{e}: {}", source_chain(&e))))?;
            let mut request = tonic::Request::new(IstioCertificateRequest {
                csr: csr_pem,
                validity_duration: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            });
            if let Some(token) = &token {
                let value = format!("Bearer {token}").parse().map_err(|_| {
                    SignError::Refused("the join token is not a valid header value".into())
                })?;
                request.metadata_mut().insert("authorization", value);
            }
            IstioCertificateServiceClient::new(channel)
                .create_certificate(request)
                .await
                .map_err(status_error)
        };
        let response = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                SignError::Unavailable(format!("no answer within {:?}", self.timeout))
            })??;
        if spends {
            // Spent: the CA forgets a join token once it is redeemed.
            if let Ok(mut t) = self.token.lock() {
                *t = None;
            }
        }
        Ok(response.into_inner().cert_chain)
    }
}

/// A gRPC channel to the control plane at `addr` (`host:port`) over TLS
/// with `config` (ALPN set to h2 here), which verifies the server by SPIFFE
/// ID: the name only fills SNI. One connection, made now.
pub async fn connect_channel(
    addr: &str,
    mut config: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = addr.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, addr) = (tls.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from("mesh-ca").map_err(std::io::Error::other)?;
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://mesh-ca")
        .connect_with_connector(connector)
        .await
}

/// The error and its causes, on one line.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

fn status_error(s: tonic::Status) -> SignError {
    use tonic::Code;
    let msg = format!("{:?}: {}", s.code(), s.message());
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Unknown => SignError::Unavailable(msg),
        _ => SignError::Refused(msg),
    }
}

impl SvidSigner for CaClient {
    fn sign(
        &self,
        csr_pem: String,
        ttl: Duration,
        current: Option<Arc<Credentials>>,
    ) -> BoxFuture<'_, Result<IssuedSvid, SignError>> {
        Box::pin(async move {
            let chain = self.create_certificate(csr_pem, ttl, current).await?;
            IssuedSvid::from_istio_chain(&chain).map_err(|e| SignError::BadResponse(e.to_string()))
        })
    }
}
