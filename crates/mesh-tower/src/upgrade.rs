//! HTTP/1.1 protocol upgrades through the proxy (RFC 9110 section 7.8):
//! WebSocket, and any other protocol a client asks for with `Connection:
//! upgrade` and `Upgrade`, as Istio's sidecars pass them (on by default
//! since Istio 1.0; a VirtualService route's `websocketUpgrade: false`
//! turns them off for that route, see [`NoUpgrade`]).
//!
//! The request is decided on like any other (authorization, routing,
//! retries until an answer, the route's timeout for that answer, telemetry
//! with the 101 it gets); each hop forwards it over HTTP/1.1, and when the
//! next hop answers `101 Switching Protocols` the two connections are
//! joined by a task that copies bytes both ways until either side closes.
//! What flows after the 101 is the application's: the mesh reads none of
//! it, as Envoy does not.
//!
//! Hop-by-hop headers (section 7.6.1) are the other half of the same rule:
//! they describe one connection and are never forwarded. [`strip_hop_by_hop`]
//! removes them, and the headers a request's `Connection` names, where a
//! request enters the mesh, before anything decides on it: what the
//! policies read is what the application gets. An upgrade keeps exactly
//! `Connection: upgrade` and its `Upgrade`.

use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Set on a request whose route says `websocketUpgrade: false`: its
/// `Upgrade` is dropped and it is forwarded as a plain request.
#[derive(Debug, Clone, Copy)]
pub struct NoUpgrade;

/// Whether `req` asks to switch protocols: HTTP/1.1, `Connection` naming
/// `upgrade`, and an `Upgrade` header.
pub fn requested<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The hop-by-hop headers RFC 9110 names (7.6.1), and the ones proxies
/// still meet: `Keep-Alive` and `Proxy-Connection`. `Transfer-Encoding`
/// is hyper's to write per hop; `TE` goes unless it is `trailers` (gRPC
/// over h2 needs it).
const HOP_BY_HOP: [HeaderName; 3] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the hop-by-hop headers of `req` and those its `Connection`
/// names (see the module docs). An upgrade request keeps `Connection:
/// upgrade` and `Upgrade`; any other request loses `Upgrade` too.
///
/// ```
/// let mut req = http::Request::get("/")
///     .header("connection", "keep-alive, x-user")
///     .header("keep-alive", "timeout=5")
///     .header("x-user", "admin")
///     .header("x-kept", "1")
///     .body(())?;
/// mesh_tower::upgrade::strip_hop_by_hop(&mut req);
/// let names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
/// assert_eq!(names, ["x-kept"]);
/// # Ok::<(), http::Error>(())
/// ```
pub fn strip_hop_by_hop<B>(req: &mut Request<B>) {
    let upgrade = requested(req);
    let headers = req.headers_mut();
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            // A request cannot make the mesh drop what identifies the
            // request itself: `Host` stays (HTTP/1.1 requires it).
            if name != http::header::HOST && name != UPGRADE {
                headers.remove(&name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    if let Some(te) = headers.get(http::header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(http::header::TE);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else if headers.contains_key(UPGRADE) {
        headers.remove(UPGRADE);
    }
}

/// The client's half of an upgrade, taken from its request before the
/// request is forwarded. Without a connection (a caller in the same
/// process, through the router as a Tower service) there is nothing to
/// join: the caller takes the upgrade from the response itself
/// (`hyper::upgrade::on`).
#[derive(Debug)]
pub struct Downstream(Option<OnUpgrade>);

/// Takes the client's half from `req` when it asks to upgrade (and its
/// route allows it); `None` for any other request, and for an upgrade the
/// route refuses, whose `Connection` and `Upgrade` are then removed so it
/// goes on as a plain request.
pub fn take<B>(req: &mut Request<B>) -> Option<Downstream> {
    if !requested(req) {
        return None;
    }
    if req.extensions().get::<NoUpgrade>().is_some() {
        req.headers_mut().remove(CONNECTION);
        req.headers_mut().remove(UPGRADE);
        return None;
    }
    Some(Downstream(req.extensions_mut().remove::<OnUpgrade>()))
}

/// What [`splice`] makes of an upstream's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Spliced {
    /// Not a 101, or a 101 to a caller without a connection: the answer
    /// goes back as it is.
    Answer,
    /// A 101 to an upgrade: the connections are joined.
    Joined,
    /// A 101 nobody asked for (or that cannot be joined): answer 502.
    Refused,
}

/// Joins the client's connection (`down`, from [`take`]) with the
/// upstream's when `resp` is a 101; the copy runs in a task of its own
/// until either side closes.
pub fn splice<B>(down: Option<Downstream>, resp: &mut Response<B>) -> Spliced {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Spliced::Answer;
    }
    let down = match down {
        None => return Spliced::Refused,
        // The caller in this process upgrades the response itself.
        Some(Downstream(None)) => return Spliced::Answer,
        Some(Downstream(Some(down))) => down,
    };
    let Some(up) = resp.extensions_mut().remove::<OnUpgrade>() else {
        return Spliced::Refused;
    };
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "the upgrade did not complete");
                return;
            }
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        match tokio::io::copy_bidirectional(&mut down, &mut up).await {
            Ok((to_up, to_down)) => tracing::debug!(to_up, to_down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection broke"),
        }
    });
    Spliced::Joined
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn an_upgrade_is_connection_upgrade_and_upgrade_over_http_1_1() {
        assert!(requested(&req(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(requested(&req(&[
            ("connection", "keep-alive, upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!requested(&req(&[("upgrade", "websocket")])));
        assert!(!requested(&req(&[("connection", "upgrade")])));
        let mut h2 = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        *h2.version_mut() = Version::HTTP_2;
        assert!(!requested(&h2));
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut r = req(&[
            ("connection", "close, X-Forwarded-Client-Cert , x-role"),
            ("connection", "te"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("x-forwarded-client-cert", "URI=spiffe://forged"),
            ("x-role", "admin"),
            ("upgrade", "websocket"),
            ("host", "web"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut r);
        let mut names: Vec<_> = r.headers().keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_exactly_connection_upgrade_and_its_upgrade() {
        let mut r = req(&[
            ("connection", "keep-alive, Upgrade, x-role"),
            ("upgrade", "websocket"),
            ("x-role", "admin"),
            ("te", "trailers"),
        ]);
        strip_hop_by_hop(&mut r);
        assert_eq!(r.headers()["connection"], "upgrade");
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert_eq!(r.headers()["te"], "trailers");
        assert!(!r.headers().contains_key("x-role"));
        assert!(requested(&r));
    }

    #[test]
    fn a_route_without_upgrades_forwards_a_plain_request() {
        let mut r = req(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        r.extensions_mut().insert(NoUpgrade);
        assert!(take(&mut r).is_none());
        assert!(!r.headers().contains_key("upgrade"));
        assert!(!r.headers().contains_key("connection"));
    }

    #[test]
    fn a_101_nobody_asked_for_is_refused() {
        let mut resp = Response::builder().status(101).body(()).unwrap();
        assert_eq!(splice(None, &mut resp), Spliced::Refused);
        let mut ok = Response::builder().status(200).body(()).unwrap();
        assert_eq!(splice(None, &mut ok), Spliced::Answer);
    }
}
