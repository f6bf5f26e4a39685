//! The mesh's failures as small typed errors, and the one place that turns
//! them into HTTP answers: 403, 404, 502, 503 or 504 with the reason in the
//! `x-mesh-reason` header and the body. Nothing here is logged at ERROR: these
//! are the client's or the upstream's problems, not the mesh's.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::body::{BoxBody, boxed};

/// The response header carrying why the mesh answered itself.
pub const REASON_HEADER: &str = "x-mesh-reason";

/// Why the mesh answered a request itself instead of passing on the
/// upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The host is no known service.
    #[error("no route: {host} is not a known service")]
    UnknownHost {
        /// The host asked for.
        host: String,
    },
    /// The service has no such port.
    #[error("no route: {host} has no port {port}")]
    UnknownPort {
        /// The host.
        host: String,
        /// The port asked for.
        port: u16,
    },
    /// VirtualService rules exist for the host and none matches.
    #[error("no route: no rule of {vs} matches the request")]
    NoRuleMatched {
        /// The VirtualService.
        vs: String,
    },
    /// The chosen subset is not defined.
    #[error("no route: subset {subset} of {host} is not defined")]
    NoSubset {
        /// The host.
        host: String,
        /// The subset.
        subset: String,
    },
    /// No endpoint is available (none, or all ejected).
    #[error("no healthy endpoint for {target}")]
    NoHealthyEndpoint {
        /// `host` or `host subset`.
        target: String,
    },
    /// The destination's connection pool is full.
    #[error("overflow: the connection pool of {host} is full")]
    Overflow {
        /// The host.
        host: String,
    },
    /// The client TLS the DestinationRule asks for cannot be done here.
    #[error("cannot secure the connection to {host}: {why}")]
    CannotSecure {
        /// The host.
        host: String,
        /// Why.
        why: String,
    },
    /// Connecting to the upstream failed (after retries).
    #[error("upstream connect error to {endpoint}: {why}")]
    UpstreamConnect {
        /// `address:port`.
        endpoint: String,
        /// Why.
        why: String,
    },
    /// The upstream broke the protocol or reset the stream.
    #[error("upstream protocol error from {endpoint}: {why}")]
    UpstreamProtocol {
        /// `address:port`.
        endpoint: String,
        /// Why.
        why: String,
    },
    /// The route's timeout (or the last try's) ran out.
    #[error("upstream request timeout after {0:?}")]
    Timeout(std::time::Duration),
    /// Fault injection aborted the request.
    #[error("fault injected by {0}")]
    FaultAbort(String, u16),
    /// Authorization denied the request.
    #[error("RBAC: access denied: {0}")]
    Denied(String),
    /// The request's JWT failed validation (RequestAuthentication).
    #[error("{0}")]
    Unauthenticated(String),
    /// The request body is larger than the configured cap.
    #[error("request body larger than {limit} bytes")]
    RequestBodyTooLarge {
        /// The cap, in bytes.
        limit: u64,
    },
    /// The client stopped sending the request body.
    #[error("request body timeout: nothing received for {0:?}")]
    RequestBodyTimeout(std::time::Duration),
    /// The request cannot be read one way only (no Host, a malformed Host,
    /// a header name with an underscore...), so it is refused before
    /// anything decides on it.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request names a host the TLS connection it came on was not
    /// opened for (its SNI names another server of the gateway).
    #[error("misdirected request: {host} is not served on this connection (SNI {sni})")]
    Misdirected {
        /// The host the request names.
        host: String,
        /// The server name the connection was opened for.
        sni: String,
    },
    /// The mesh broke one of its own invariants (a bug): answered rather
    /// than panicking mid-request.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<mesh_core::plan::PlanError> for MeshError {
    fn from(e: mesh_core::plan::PlanError) -> Self {
        use mesh_core::plan::PlanError;
        match e {
            PlanError::UnknownHost { host } => Self::UnknownHost { host },
            PlanError::UnknownPort { host, port } => Self::UnknownPort { host, port },
            PlanError::NoRuleMatched { vs } => Self::NoRuleMatched { vs },
            PlanError::NoSubset { host, subset } => Self::NoSubset { host, subset },
            // A variant added to the plan is a 503 until it is named here.
            other => Self::NoHealthyEndpoint {
                target: other.to_string(),
            },
        }
    }
}

impl MeshError {
    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRuleMatched { .. } => StatusCode::NOT_FOUND,
            Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Denied(_) => StatusCode::FORBIDDEN,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::RequestBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::FaultAbort(_, status) => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Envoy's response flag, as Istio's telemetry reports it.
    pub fn response_flag(&self) -> &'static str {
        match self {
            Self::UnknownHost { .. } | Self::UnknownPort { .. } | Self::NoRuleMatched { .. } => {
                "NR"
            }
            Self::NoSubset { .. } | Self::NoHealthyEndpoint { .. } => "UH",
            Self::Overflow { .. } => "UO",
            Self::CannotSecure { .. } | Self::UpstreamConnect { .. } => "UF",
            Self::UpstreamProtocol { .. } => "UPE",
            Self::Timeout(_) => "UT",
            Self::FaultAbort(..) => "FI",
            Self::Denied(_) => "RBAC",
            // Envoy's jwt_authn sets no flag of its own.
            Self::Unauthenticated(_) => "-",
            // Envoy has no flag for either; both are the downstream's doing.
            Self::RequestBodyTooLarge { .. } | Self::BadRequest(_) => "DPE",
            Self::RequestBodyTimeout(_) => "SI",
            Self::Misdirected { .. } => "NR",
            // No Envoy flag says "the proxy's own bug".
            Self::Internal(_) => "-",
        }
    }

    /// The class of the reason without its detail (no host, address or
    /// upstream error text): what an edge that faces the internet says in
    /// `x-mesh-reason`, while the detail goes to the log.
    pub fn class(&self) -> &'static str {
        match self {
            Self::UnknownHost { .. }
            | Self::UnknownPort { .. }
            | Self::NoRuleMatched { .. }
            | Self::NoSubset { .. } => "no route",
            Self::NoHealthyEndpoint { .. }
            | Self::CannotSecure { .. }
            | Self::UpstreamConnect { .. } => "upstream unavailable",
            Self::Overflow { .. } => "overflow",
            Self::UpstreamProtocol { .. } => "upstream protocol error",
            Self::Timeout(_) => "upstream request timeout",
            Self::FaultAbort(..) => "fault injected",
            Self::Denied(_) => "RBAC: access denied",
            Self::Unauthenticated(_) => "Jwt verification fails",
            Self::RequestBodyTooLarge { .. } => "request body too large",
            Self::RequestBodyTimeout(_) => "request body timeout",
            Self::BadRequest(_) => "bad request",
            Self::Misdirected { .. } => "misdirected request",
            Self::Internal(_) => "internal error",
        }
    }

    /// [`to_response_for`](Self::to_response_for) with only the
    /// [`class`](Self::class) of the reason in the header and the body.
    pub fn to_edge_response_for(&self, grpc: bool) -> Response<BoxBody> {
        let mut resp = self.to_response_for(grpc);
        let class = HeaderValue::from_static(self.class());
        if grpc {
            resp.headers_mut().insert("grpc-message", class.clone());
        } else {
            *resp.body_mut() = boxed(
                Full::new(Bytes::from(format!("{}\n", self.class())))
                    .map_err(|never| match never {}),
            );
        }
        resp.headers_mut().insert(REASON_HEADER, class);
        resp
    }

    /// The gRPC status a gRPC caller gets, by the HTTP-to-gRPC mapping of
    /// the gRPC specification (and Envoy's choices for the mesh's own
    /// answers).
    pub fn grpc_code(&self) -> u8 {
        match self.status().as_u16() {
            400 => 13,             // INTERNAL
            401 => 16,             // UNAUTHENTICATED
            403 => 7,              // PERMISSION_DENIED
            404 => 12,             // UNIMPLEMENTED
            413 => 8,              // RESOURCE_EXHAUSTED, as gRPC's own size limit
            504 => 4,              // DEADLINE_EXCEEDED
            429 | 502 | 503 => 14, // UNAVAILABLE
            _ => 2,                // UNKNOWN
        }
    }

    /// The answer for a caller: gRPC callers get a trailers-only gRPC
    /// response (HTTP 200, `grpc-status`, `grpc-message`), as Envoy answers
    /// them, so their client library reports the right code instead of
    /// failing to parse a text body; everyone else gets
    /// [`to_response`](Self::to_response).
    pub fn to_response_for(&self, grpc: bool) -> Response<BoxBody> {
        if !grpc {
            return self.to_response();
        }
        let reason = self.to_string();
        let mut resp = Response::new(crate::body::empty());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_code())),
        );
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&reason)) {
            h.insert("grpc-message", v);
        }
        if let Ok(v) = HeaderValue::from_str(&reason) {
            h.insert(REASON_HEADER, v);
        }
        resp.extensions_mut().insert(self.clone());
        resp
    }

    /// The answer: status, `x-mesh-reason`, and the reason as text.
    pub fn to_response(&self) -> Response<BoxBody> {
        let reason = self.to_string();
        let mut resp = Response::new(boxed(
            Full::new(Bytes::from(format!("{reason}\n"))).map_err(|never| match never {}),
        ));
        *resp.status_mut() = self.status();
        let header = HeaderValue::from_str(&reason)
            .unwrap_or_else(|_| HeaderValue::from_static("invalid reason"));
        resp.headers_mut().insert(REASON_HEADER, header);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        if let Self::Unauthenticated(_) = self {
            // RFC 6750 3.1, as Envoy's jwt_authn answers.
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        resp.extensions_mut().insert(self.clone());
        resp
    }
}

/// Does the request speak gRPC (`content-type: application/grpc...`)?
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Status-Message").
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_callers_get_a_grpc_status() {
        let e = MeshError::Denied("no ALLOW policy matched".into());
        let r = e.to_response_for(true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "RBAC: access denied: no ALLOW policy matched"
        );
        assert_eq!(
            r.headers()[REASON_HEADER],
            "RBAC: access denied: no ALLOW policy matched"
        );
        assert_eq!(
            MeshError::Timeout(std::time::Duration::from_secs(1)).grpc_code(),
            4
        );
        assert_eq!(MeshError::Overflow { host: "x".into() }.grpc_code(), 14);
        assert_eq!(percent_encode("50% ümlaut"), "50%25 %C3%BCmlaut");
        assert_eq!(e.to_response_for(false).status(), 403);
    }

    #[test]
    fn statuses_and_reasons() {
        let cases = [
            (MeshError::UnknownHost { host: "x".into() }, 503, "NR"),
            (
                MeshError::NoRuleMatched {
                    vs: "VirtualService default/x".into(),
                },
                404,
                "NR",
            ),
            (
                MeshError::NoHealthyEndpoint {
                    target: "x v2".into(),
                },
                503,
                "UH",
            ),
            (MeshError::Overflow { host: "x".into() }, 503, "UO"),
            (
                MeshError::Timeout(std::time::Duration::from_secs(1)),
                504,
                "UT",
            ),
            (
                MeshError::UpstreamProtocol {
                    endpoint: "a".into(),
                    why: "b".into(),
                },
                502,
                "UPE",
            ),
            (
                MeshError::FaultAbort("VirtualService default/x".into(), 418),
                418,
                "FI",
            ),
            (
                MeshError::Denied("no ALLOW policy matched".into()),
                403,
                "RBAC",
            ),
        ];
        for (e, status, flag) in cases {
            let r = e.to_response();
            assert_eq!(r.status().as_u16(), status, "{e}");
            assert_eq!(e.response_flag(), flag);
            assert_eq!(r.headers()[REASON_HEADER], e.to_string().as_str());
        }
    }
}
