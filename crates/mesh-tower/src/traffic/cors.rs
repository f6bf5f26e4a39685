//! A route's `corsPolicy` (the Fetch standard's CORS protocol), as Envoy's
//! CORS filter answers it:
//!
//! - a request without `Origin` is not a CORS request: untouched;
//! - a **preflight** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) from an allowed origin is answered
//!   by the proxy, 200 with the policy's `Access-Control-Allow-*` and
//!   `Max-Age`; from any other origin it goes on to the destination
//!   (`unmatchedPreflights: FORWARD`, the default) or is answered 200
//!   without CORS headers (`IGNORE`), so the browser refuses the call;
//! - any other request from an allowed origin is forwarded, and its answer
//!   gets `Access-Control-Allow-Origin` (the origin itself, never `*`),
//!   `Allow-Credentials` and `Expose-Headers`. An origin not allowed gets
//!   the answer as it came: the browser refuses to show it.
//!
//! Every answer to a request with `Origin` on such a route carries `Vary:
//! Origin`, so a shared cache never hands one origin's answer to another.
//! CORS is the browser's protection, not the server's: authorization still
//! decides every request, preflights included.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use mesh_core::route::Cors;

use crate::body::{BoxBody, empty};

/// What a route's policy makes of a request.
pub(crate) enum OnRequest {
    /// Not a CORS request (no `Origin`).
    NotCors,
    /// A preflight the proxy answers.
    Answer(Response<BoxBody>),
    /// Forwarded; the answer gets the CORS headers of an allowed origin
    /// (`Some`) or only `Vary` (`None`).
    Forward(Option<HeaderValue>),
}

/// Reads `req` against `cors` (see the module docs).
pub(crate) fn on_request<B>(cors: &Cors, req: &Request<B>) -> OnRequest {
    let Some(origin) = req.headers().get(ORIGIN) else {
        return OnRequest::NotCors;
    };
    let allowed = origin.to_str().is_ok_and(|o| cors.allows(o));
    let preflight = req.method() == Method::OPTIONS
        && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    match (preflight, allowed) {
        (true, true) => {
            let mut resp = Response::new(empty());
            let h = resp.headers_mut();
            allow_origin(cors, origin.clone(), h);
            for (name, value) in [
                (ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods),
                (ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers),
            ] {
                if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                    h.insert(name, v);
                }
            }
            if let Some(secs) = cors.max_age {
                h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(secs));
            }
            h.append(VARY, HeaderValue::from_static("origin"));
            OnRequest::Answer(resp)
        }
        (true, false) if !cors.forward_unmatched_preflights => {
            let mut resp = Response::new(empty());
            resp.headers_mut()
                .append(VARY, HeaderValue::from_static("origin"));
            OnRequest::Answer(resp)
        }
        (_, true) => OnRequest::Forward(Some(origin.clone())),
        (_, false) => OnRequest::Forward(None),
    }
}

/// The CORS headers of an answer to a forwarded request.
pub(crate) fn on_response(cors: &Cors, allowed: Option<HeaderValue>, resp: &mut Response<BoxBody>) {
    let h = resp.headers_mut();
    if let Some(origin) = allowed {
        allow_origin(cors, origin, h);
        if let Some(v) = cors
            .expose_headers
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
    h.append(VARY, HeaderValue::from_static("origin"));
}

/// `Access-Control-Allow-Origin` (replacing any the destination wrote:
/// the route's policy is the one in force) and `Allow-Credentials`.
fn allow_origin(cors: &Cors, origin: HeaderValue, h: &mut HeaderMap) {
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if cors.allow_credentials {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    } else {
        h.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
    }
}
