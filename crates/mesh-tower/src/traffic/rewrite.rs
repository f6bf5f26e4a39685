//! Header changes, path and authority rewrites, and redirects.

use http::header::{HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Request, Response, StatusCode};
use mesh_core::resources::networking::{HeaderOperations, Headers, HttpRedirect};
use mesh_core::route::{HttpRouteRule, Matcher, WeightedDestination};

use crate::body::{BoxBody, empty};

fn apply(headers: &mut HeaderMap, ops: &HeaderOperations) {
    for name in &ops.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
    for (k, v) in &ops.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.insert(n, v);
        }
    }
    for (k, v) in &ops.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(n, v);
        }
    }
}

fn each<'a>(
    rule: Option<&'a HttpRouteRule>,
    dest: &'a WeightedDestination,
) -> impl Iterator<Item = &'a Headers> {
    rule.and_then(|r| r.headers.as_ref())
        .into_iter()
        .chain(dest.headers.as_ref())
}

/// Applies request header changes (rule, then destination) and the
/// authority rewrite.
pub(super) fn request_headers(
    parts: &mut Parts,
    rule: Option<&HttpRouteRule>,
    dest: &WeightedDestination,
) {
    for h in each(rule, dest) {
        if let Some(ops) = &h.request {
            apply(&mut parts.headers, ops);
        }
    }
    if let Some(authority) = rule
        .and_then(|r| r.rewrite.as_ref())
        .and_then(|rw| rw.authority.as_ref())
    {
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
}

/// Applies response header changes (rule, then destination).
pub(super) fn response_headers(
    resp: &mut Response<BoxBody>,
    rule: Option<&HttpRouteRule>,
    dest: &WeightedDestination,
) {
    for h in each(rule, dest) {
        if let Some(ops) = &h.response {
            apply(resp.headers_mut(), ops);
        }
    }
}

/// The path and query to send after the rule's `rewrite.uri` (the matched
/// prefix, or the whole path for an exact or regex match, replaced), or
/// `None` when the rule rewrites no path.
pub(super) fn path(parts: &Parts, rule: Option<(&HttpRouteRule, usize)>) -> Option<String> {
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let (rule, m) = rule?;
    let new = rule.rewrite.as_ref().and_then(|r| r.uri.as_ref())?;
    let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
    let rewritten = match rule.matches.get(m).and_then(|e| e.uri.as_ref()) {
        Some(Matcher::Prefix(p)) if path.starts_with(p.as_str()) => {
            format!("{new}{}", &path[p.len()..])
        }
        _ => new.clone(),
    };
    let rewritten = if rewritten.starts_with('/') {
        rewritten
    } else {
        format!("/{rewritten}")
    };
    Some(match query {
        Some(q) => format!("{rewritten}?{q}"),
        None => rewritten,
    })
}

/// Builds a redirect answer.
pub(super) fn redirect<B>(req: &Request<B>, r: &HttpRedirect, host: &str) -> Response<BoxBody> {
    let scheme = r
        .scheme
        .clone()
        .unwrap_or_else(|| req.uri().scheme_str().unwrap_or("http").to_owned());
    let authority = r.authority.clone().unwrap_or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or_else(
                || host.to_owned(),
                |h| h.split(':').next().unwrap_or(h).to_owned(),
            )
    });
    let port = r.port.map(|p| format!(":{p}")).unwrap_or_default();
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let path = match &r.uri {
        Some(u) => match pq.split_once('?') {
            Some((_, q)) => format!("{u}?{q}"),
            None => u.clone(),
        },
        None => pq.to_owned(),
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::from_u16(r.redirect_code.unwrap_or(301))
        .unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{authority}{port}{path}")) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}
