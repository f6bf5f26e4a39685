//! What a listener that faces clients checks of a request before anything
//! decides on it, so that the mesh and the application read it one way:
//!
//! - **the host**: a request names one host, in one place. An HTTP/1.1
//!   request without `Host` (the application would see the listener's
//!   address), two `Host` headers, a `Host` that disagrees with the
//!   request target (an absolute URI or `:authority`), and a host that is
//!   no host name (`user@host`, `host..`, an empty label, a bad port) are
//!   refused with 400;
//! - **header names with underscores** (`x_role`), which PHP, WSGI and
//!   other CGI-style applications read as the dashed name, are refused,
//!   dropped or let through by [`UnderscoreAction`]; even when let through,
//!   one that reads as a header the mesh sets (`x_forwarded_client_cert`)
//!   or as another header of the request is dropped;
//! - **hop-by-hop headers** (`Connection`, `Keep-Alive`, `Upgrade` but for
//!   an upgrade, and every header a `Connection` names) are removed, so no
//!   client makes the next hop drop a header the policies read
//!   ([`crate::upgrade::strip_hop_by_hop`]);
//! - **header values** lose leading and trailing whitespace (RFC 9110
//!   5.5: a recipient trims it; HTTP/1.1 parsers do, HTTP/2 carries it),
//!   so a policy matches the value the application reads.
//!
//! ```
//! use mesh_core::meshconfig::UnderscoreAction;
//! use mesh_tower::sanitize::sanitize;
//!
//! let mut req = http::Request::get("/").header("host", "blog.example.test").body(())?;
//! req.headers_mut().insert("x-role", http::HeaderValue::from_static(" root\t"));
//! assert_eq!(sanitize(&mut req, UnderscoreAction::RejectRequest)?, "blog.example.test");
//! assert_eq!(req.headers()["x-role"], "root");
//!
//! let mut req = http::Request::get("/").header("host", "a").header("x_role", "root").body(())?;
//! assert!(sanitize(&mut req, UnderscoreAction::RejectRequest).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::Ipv6Addr;

use http::{HeaderName, HeaderValue, Request};
pub use mesh_core::meshconfig::UnderscoreAction;

use crate::error::MeshError;

/// Headers the mesh itself sets for the application, and the prefixes of
/// its own: a client's header that reads as one of them never reaches it.
const OWNED: &[&str] = &[
    "x-forwarded-client-cert",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
    "forwarded",
    "host",
];
const OWNED_PREFIXES: &[&str] = &["x-mesh-", "x-envoy-", "x-istio-"];

fn owned(dashed: &str) -> bool {
    OWNED.contains(&dashed) || OWNED_PREFIXES.iter().any(|p| dashed.starts_with(p))
}

/// Checks and normalises `req` (see the [module docs](self)); returns the
/// host it names, as written. A refusal is a [`MeshError::BadRequest`].
pub fn sanitize<B>(
    req: &mut Request<B>,
    underscores: UnderscoreAction,
) -> Result<String, MeshError> {
    let host = request_host(req)?;
    crate::upgrade::strip_hop_by_hop(req);
    underscored_headers(req, underscores)?;
    trim_values(req.headers_mut());
    Ok(host)
}

/// The host a request names: the request target's authority, else the one
/// Host header; both present must agree. Refuses what cannot be read one
/// way.
pub fn request_host<B>(req: &Request<B>) -> Result<String, MeshError> {
    let bad = |why: &str| MeshError::BadRequest(why.to_owned());
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (None, _) => None,
        (Some(h), None) => Some(
            h.to_str()
                .map_err(|_| bad("the Host header is not valid text"))?,
        ),
        (Some(_), Some(_)) => return Err(bad("more than one Host header")),
    };
    let host = match (req.uri().authority(), header) {
        (Some(a), Some(h)) if !a.as_str().eq_ignore_ascii_case(h) => {
            return Err(bad(
                "the Host header and the request target name different hosts",
            ));
        }
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => h,
        (None, None) => return Err(bad("the request names no host (no Host header)")),
    };
    check_host(host).map_err(|why| MeshError::BadRequest(format!("Host {host:?}: {why}")))?;
    Ok(host.to_owned())
}

/// Is `host` (`name[:port]` or `[v6][:port]`) a host the mesh can read one
/// way? Lets one trailing dot through (`example.com.`).
pub fn check_host(host: &str) -> Result<(), &'static str> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or("an unclosed '['")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address in '[...]'")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("text after ']'")?),
        };
        (None, port)
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
            return Err("an invalid port");
        }
    }
    let Some(name) = name else { return Ok(()) };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("an empty name");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("an empty label");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a character no host name has (userinfo, '%', a space...)");
        }
    }
    Ok(())
}

fn underscored_headers<B>(req: &mut Request<B>, action: UnderscoreAction) -> Result<(), MeshError> {
    let underscored: Vec<HeaderName> = req
        .headers()
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in underscored {
        let dashed = name.as_str().replace('_', "-");
        let drop = match action {
            UnderscoreAction::RejectRequest => {
                return Err(MeshError::BadRequest(format!(
                    "header name {name} has an underscore"
                )));
            }
            UnderscoreAction::DropHeader => true,
            UnderscoreAction::Allow => owned(&dashed) || req.headers().contains_key(&dashed),
        };
        if drop {
            tracing::info!(target: "mesh::sanitize", header = %name, "header with an underscore dropped");
            req.headers_mut().remove(&name);
        }
    }
    Ok(())
}

fn trim_values(headers: &mut http::HeaderMap) {
    const OWS: [u8; 2] = [b' ', b'\t'];
    for v in headers.values_mut() {
        let b = v.as_bytes();
        if b.first().is_some_and(|c| OWS.contains(c)) || b.last().is_some_and(|c| OWS.contains(c)) {
            let trimmed = b.trim_ascii();
            // A slice of a valid value without its ends is a valid value.
            if let Ok(mut t) = HeaderValue::from_bytes(trimmed) {
                t.set_sensitive(v.is_sensitive());
                *v = t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "a",
            "blog.example.test",
            "blog.example.test.",
            "Blog.Example.Test:8443",
            "10.0.0.1:80",
            "[::1]",
            "[fe80::1]:8080",
            "my_host.local",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "host..",
            "a..b",
            ".a",
            "user@host",
            "user:pw@host",
            "host:",
            "host:99999",
            "host:8o",
            "host name",
            "h%6fst",
            "[::1",
            "[::1]x",
            "[nope]",
            "a:b:c",
        ] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn underscores_by_action() {
        let headers = [
            ("host", "a"),
            ("x_role", "root"),
            ("x_forwarded_client_cert", "URI=spiffe://evil"),
            ("x-dup", "1"),
            ("x_dup", "2"),
        ];
        let mut r = req(&headers);
        let e = sanitize(&mut r, UnderscoreAction::RejectRequest).unwrap_err();
        assert_eq!(e.status(), 400);

        let mut r = req(&headers);
        sanitize(&mut r, UnderscoreAction::DropHeader).unwrap();
        assert!(r.headers().keys().all(|k| !k.as_str().contains('_')));
        assert_eq!(r.headers()["x-dup"], "1");

        let mut r = req(&headers);
        sanitize(&mut r, UnderscoreAction::Allow).unwrap();
        assert_eq!(r.headers()["x_role"], "root");
        assert!(!r.headers().contains_key("x_forwarded_client_cert"));
        assert!(!r.headers().contains_key("x_dup"));
    }

    #[test]
    fn the_host_is_read_one_way() {
        let e = |r: &Request<()>| request_host(r).unwrap_err().status();
        assert_eq!(e(&req(&[])), 400);
        assert_eq!(e(&req(&[("host", "a"), ("host", "b")])), 400);
        assert_eq!(e(&req(&[("host", "user@a")])), 400);
        let mut r = Request::get("http://a/x").body(()).unwrap();
        r.headers_mut()
            .insert("host", HeaderValue::from_static("b"));
        assert_eq!(e(&r), 400);
        r.headers_mut()
            .insert("host", HeaderValue::from_static("A"));
        assert_eq!(request_host(&r).unwrap(), "a");
    }
}
