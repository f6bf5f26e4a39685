//! HTTP/1.1 protocol upgrades through the proxy (RFC 9110 section 7.8):
//! WebSocket, as Istio's sidecars pass it (on by default since Istio 1.0; a
//! VirtualService route's `websocketUpgrade: false` turns it off for that
//! route, see [`NoUpgrade`]). Any other `Upgrade` is removed and the
//! request goes on as a plain one ([`requested`]); a 101 must switch to
//! WebSocket ([`splice`]).
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Set on a request whose route says `websocketUpgrade: false`: its
/// `Upgrade` is dropped and it is forwarded as a plain request.
#[derive(Debug, Clone, Copy)]
pub struct NoUpgrade;

/// Whether `req` asks to switch to WebSocket: HTTP/1.1, `Connection`
/// naming `upgrade`, and `Upgrade` naming `websocket`. Only WebSocket is
/// passed, as Istio configures Envoy (`upgrade_configs: websocket`): any
/// other `Upgrade` (`h2c` among them) is removed and the request goes on
/// as a plain one, so no client opens a raw tunnel that per-request
/// authorization never sees again.
pub fn requested<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && asks_websocket(req.headers())
}

/// `Connection: upgrade` and `Upgrade: websocket` (tokens, any case).
fn asks_websocket(headers: &HeaderMap) -> bool {
    tokens(headers, &UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"))
        && tokens(headers, &CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of every `name` header.
fn tokens<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(name)
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

/// Whether `name` is one of the headers [`strip_hop_by_hop`] reads.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == UPGRADE || name == http::header::TE || HOP_BY_HOP.contains(name)
}

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
    // One pass over the names for the usual request, which has none of
    // them (a standard header's name compares as a tag; a lookup per name
    // would hash each).
    if !req.headers().keys().any(is_hop_by_hop) {
        return;
    }
    let upgrade = requested(req);
    let headers = req.headers_mut();
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = tokens(headers, &CONNECTION)
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
        headers.remove(name);
    }
    if let Some(te) = headers.get(http::header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(http::header::TE);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// The drain of the connection an upgrade request came on (set by the
/// mesh's server): the tunnel counts as one of its open connections and
/// ends with the drain.
#[derive(Debug, Clone)]
pub struct TunnelDrain(pub crate::server::Drain);

/// How long a tunnel may carry no byte either way before it is closed:
/// Envoy's TCP proxy default (an idle WebSocket holds two sockets; none is
/// held forever).
pub const TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a tunnel goes on once its connection's drain began (the
/// mesh-proxy's default drain timeout), so a rollout does not cut a
/// WebSocket's last messages yet no tunnel outlives the proxy.
pub const TUNNEL_DRAIN_GRACE: Duration = Duration::from_secs(10);

/// The client's half of an upgrade, taken from its request before the
/// request is forwarded. Without a connection (a caller in the same
/// process, through the router as a Tower service) there is nothing to
/// join: the caller takes the upgrade from the response itself
/// (`hyper::upgrade::on`).
#[derive(Debug)]
pub struct Downstream(Option<OnUpgrade>, Option<TunnelDrain>);

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
    let drain = req.extensions_mut().remove::<TunnelDrain>();
    Some(Downstream(
        req.extensions_mut().remove::<OnUpgrade>(),
        drain,
    ))
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
    // The server must have switched to what was asked: WebSocket.
    if !asks_websocket(resp.headers()) {
        return Spliced::Refused;
    }
    let (down, drain) = match down {
        None => return Spliced::Refused,
        // The caller in this process upgrades the response itself.
        Some(Downstream(None, _)) => return Spliced::Answer,
        Some(Downstream(Some(down), drain)) => (down, drain),
    };
    let Some(up) = resp.extensions_mut().remove::<OnUpgrade>() else {
        return Spliced::Refused;
    };
    tokio::spawn(async move {
        // An open connection of the server's until it ends: the drain
        // waits for it (up to its deadline).
        let _guard = drain.as_ref().map(|d| d.0.guard());
        let (down, up) = match tokio::try_join!(down, up) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "the upgrade did not complete");
                return;
            }
        };
        tunnel(TokioIo::new(down), TokioIo::new(up), drain.as_ref()).await;
    });
    Spliced::Joined
}

/// Copies both ways between the client's side and the upstream's until
/// either closes, neither moves a byte for [`TUNNEL_IDLE_TIMEOUT`], or
/// [`TUNNEL_DRAIN_GRACE`] has passed since the connection's drain began.
async fn tunnel<D, U>(down: D, up: U, drain: Option<&TunnelDrain>)
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut down = Active::new(down, last.clone(), start);
    let mut up = up;
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    tokio::pin!(copy);
    let drained = async {
        match drain {
            Some(d) => {
                d.0.signaled().await;
                tokio::time::sleep(TUNNEL_DRAIN_GRACE).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(drained);
    let idle = async {
        loop {
            let seen = last.load(Ordering::Relaxed);
            let at = start + Duration::from_millis(seen) + TUNNEL_IDLE_TIMEOUT;
            tokio::time::sleep_until(at).await;
            if last.load(Ordering::Relaxed) == seen {
                return;
            }
        }
    };
    tokio::select! {
        r = &mut copy => match r {
            Ok((to_up, to_down)) => tracing::debug!(to_up, to_down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection broke"),
        },
        () = &mut drained => tracing::debug!("upgraded connection closed by the drain"),
        () = idle => tracing::debug!("upgraded connection idle for {TUNNEL_IDLE_TIMEOUT:?}: closed"),
    }
}

pin_project_lite::pin_project! {
    /// The client's side of a tunnel, recording when bytes last moved
    /// either way (milliseconds since `start`) for the idle timeout.
    struct Active<IO> {
        #[pin]
        io: IO,
        last: Arc<AtomicU64>,
        start: tokio::time::Instant,
    }
}

impl<IO> Active<IO> {
    fn new(io: IO, last: Arc<AtomicU64>, start: tokio::time::Instant) -> Self {
        Self { io, last, start }
    }
}

fn touch(last: &AtomicU64, start: tokio::time::Instant) {
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    last.store(ms, Ordering::Relaxed);
}

impl<IO: tokio::io::AsyncRead> tokio::io::AsyncRead for Active<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if buf.filled().len() > before {
            touch(this.last, *this.start);
        }
        r
    }
}

impl<IO: tokio::io::AsyncWrite> tokio::io::AsyncWrite for Active<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            touch(this.last, *this.start);
        }
        r
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
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
    fn only_websocket_is_upgraded_any_other_upgrade_goes_on_plain() {
        for other in ["h2c", "TLS/1.2", "foo, bar"] {
            let mut r = req(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", other),
                ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ]);
            assert!(!requested(&r), "{other}");
            strip_hop_by_hop(&mut r);
            assert!(r.headers().is_empty(), "{other}: {:?}", r.headers());
        }
        assert!(requested(&req(&[
            ("connection", "upgrade"),
            ("upgrade", "WebSocket")
        ])));
    }

    #[test]
    fn a_101_to_another_protocol_than_websocket_is_refused() {
        let mut resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        let down = Some(Downstream(None, None));
        assert_eq!(splice(down, &mut resp), Spliced::Refused);
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

    /// Reads what the tunnel passes to `io` until it closes it (EOF).
    async fn read_until_closed(io: &mut tokio::io::DuplexStream) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut out = Vec::new();
        let _ = io.read_to_end(&mut out).await;
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_carries_bytes_both_ways_and_closes_after_an_idle_hour() {
        use tokio::io::AsyncWriteExt as _;
        let (mut client, down) = tokio::io::duplex(1024);
        let (mut server, up) = tokio::io::duplex(1024);
        let t = tokio::spawn(async move { tunnel(down, up, None).await });
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"ping");
        // Traffic keeps it open past an hour of its life...
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(3000)).await;
            server.write_all(b"pong").await.unwrap();
            tokio::io::AsyncReadExt::read_exact(&mut client, &mut buf)
                .await
                .unwrap();
        }
        assert!(!t.is_finished());
        // ...and an hour without a byte closes both sides.
        tokio::time::sleep(TUNNEL_IDLE_TIMEOUT + Duration::from_secs(1)).await;
        assert!(read_until_closed(&mut client).await.is_empty());
        assert!(read_until_closed(&mut server).await.is_empty());
        t.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_ends_a_grace_after_its_connections_drain_began() {
        let (controller, drain) =
            crate::server::drain_pair(crate::server::ServerSettings::default());
        let (mut client, down) = tokio::io::duplex(1024);
        let (_server, up) = tokio::io::duplex(1024);
        let drain = TunnelDrain(drain);
        let d = drain.clone();
        let t = tokio::spawn(async move { tunnel(down, up, Some(&d)).await });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!t.is_finished());
        let started = tokio::time::Instant::now();
        let draining = tokio::spawn(controller.drain(Duration::from_secs(30)));
        assert!(read_until_closed(&mut client).await.is_empty());
        let took = started.elapsed();
        assert!(
            took >= TUNNEL_DRAIN_GRACE && took < TUNNEL_DRAIN_GRACE + Duration::from_secs(1),
            "{took:?}"
        );
        t.await.unwrap();
        draining.await.unwrap();
    }

    #[test]
    fn a_101_nobody_asked_for_is_refused() {
        let mut resp = Response::builder().status(101).body(()).unwrap();
        assert_eq!(splice(None, &mut resp), Spliced::Refused);
        let mut ok = Response::builder().status(200).body(()).unwrap();
        assert_eq!(splice(None, &mut ok), Spliced::Answer);
    }
}
