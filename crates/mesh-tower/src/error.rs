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
}

impl MeshError {
    /// The status the caller gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRuleMatched { .. } => StatusCode::NOT_FOUND,
            Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Denied(_) => StatusCode::FORBIDDEN,
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
        }
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
        resp.extensions_mut().insert(self.clone());
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
