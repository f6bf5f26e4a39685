//! The sidecar injector's admission webhook: `POST /inject` with an
//! `AdmissionReview` (v1), answered by [`mesh_kube::inject::review`] with
//! the JSON Patch that adds the proxy, or the pod refused with the reason.
//!
//! HTTPS only, as the API server requires: the control plane's own serving
//! certificate (the mesh root signs it, so the webhook configuration's
//! `caBundle` is `root-cert.pem`; its DNS names are `--serving-dns-name`,
//! `mesh-control.mesh-system.svc` in the install), renewed by the CA
//! itself. No client certificate is asked for: the API server presents
//! none unless configured to, and the webhook only answers what it is
//! sent, with no access to anything.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use mesh_ca::CredentialStore;
use mesh_ca::service::ServeError;
use mesh_kube::inject::InjectConfig;
use mesh_tower::body::{BoxBody, full};
use mesh_tower::server::{ServerBody, ServerHandle, accept_loop, drain_pair, serve_connection};
use tokio::net::TcpListener;

use crate::ControlPlaneConfig;

/// Where the webhook answers.
pub const INJECT_PATH: &str = "/inject";

/// The largest AdmissionReview read: a pod is far smaller (the API server
/// caps whole objects at 1.5 MiB).
const MAX_REVIEW_BYTES: usize = 3 << 20;

fn answer(status: StatusCode, body: String, content_type: &'static str) -> Response<BoxBody> {
    crate::monitor::answer(status, full(body), content_type)
}

/// One request to the webhook.
async fn respond(req: Request<ServerBody>, config: &InjectConfig) -> Response<BoxBody> {
    if req.uri().path() != INJECT_PATH {
        return answer(
            StatusCode::NOT_FOUND,
            format!("the injector answers POST {INJECT_PATH}\n"),
            "text/plain",
        );
    }
    if req.method() != Method::POST {
        let mut r = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("POST an AdmissionReview to {INJECT_PATH}\n"),
            "text/plain",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the AdmissionReview: {e}\n"),
                "text/plain",
            );
        }
    };
    let review: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("the body is not an AdmissionReview (JSON): {e}\n"),
                "text/plain",
            );
        }
    };
    let response = mesh_kube::inject::review(&review, config);
    let allowed = response["response"]["allowed"].as_bool().unwrap_or(false);
    let patched = response["response"].get("patch").is_some();
    let uid = review["request"]["uid"].as_str().unwrap_or("");
    if allowed {
        tracing::info!(uid, injected = patched, "admission review");
    } else {
        let reason = response["response"]["status"]["message"]
            .as_str()
            .unwrap_or("");
        tracing::warn!(uid, reason, "admission review: pod refused");
    }
    answer(StatusCode::OK, response.to_string(), "application/json")
}

/// Serves the webhook on `listener` with the serving certificate in
/// `store` until the handle drains.
pub(crate) fn spawn(
    listener: TcpListener,
    store: CredentialStore,
    inject: InjectConfig,
    config: &ControlPlaneConfig,
) -> Result<ServerHandle, crate::StartError> {
    let local_addr = listener.local_addr()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(ServeError::from)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store));
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (controller, drain) = drain_pair(config.settings);
    let conns = drain.clone();
    let handshake_timeout = config.settings.handshake_timeout;
    let inject = Arc::new(inject);
    let service = tower::service_fn(move |req: Request<ServerBody>| {
        let inject = inject.clone();
        async move { Ok::<_, Infallible>(respond(req, &inject).await) }
    });
    let accept = accept_loop(listener, drain, move |tcp, remote| {
        let (acceptor, service, conns) = (acceptor.clone(), service.clone(), conns.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve_connection(tls, service, conns, None).await,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "injector: TLS handshake failed")
                }
                Err(_) => tracing::debug!(%remote, "injector: TLS handshake timed out"),
            }
        });
    });
    Ok(ServerHandle::spawn(
        local_addr,
        controller,
        config.drain_deadline,
        accept,
    ))
}
