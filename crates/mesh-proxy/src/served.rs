//! One served HTTP connection, by the protocol TLS agreed when it did.
//!
//! hyper-util's `auto` builder tells HTTP/1.1 from h2 by reading the first
//! bytes and handing them back through a rewind buffer. On a TLS connection
//! ALPN has already said which it is, and the rewind costs memory for the
//! connection's whole life: hyper's read buffer, 8 KiB, finds 24 bytes in
//! it on the first read and doubles to 16 KiB (measured with massif: about
//! 8 KiB of the 30 KiB an idle mTLS connection cost sidecar B). So
//! connections whose protocol is known are served by hyper's own HTTP/1.1
//! or h2 connection; the others (plaintext, no ALPN) still by `auto`.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The protocol a connection speaks, when TLS has said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// ALPN `http/1.1`.
    Http1,
    /// ALPN `h2`.
    H2,
}

impl Known {
    /// From an ALPN protocol name; `None` for none or another.
    pub(crate) fn from_alpn(alpn: Option<&[u8]>) -> Option<Self> {
        match alpn {
            Some(b"http/1.1") => Some(Self::Http1),
            Some(b"h2") => Some(Self::H2),
            _ => None,
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection being served; see the [module docs](self).
    #[project = ServedProj]
    pub(crate) enum Served<'a, I, S>
    where
        S: HttpService<Incoming>,
    {
        // Boxed: the enum is as large as its largest variant, and most
        // connections are HTTP/1.1.
        Auto { conn: Pin<Box<auto::UpgradeableConnection<'a, I, S, TokioExecutor>>> },
        Http1 { #[pin] conn: hyper::server::conn::http1::UpgradeableConnection<I, S> },
        H2 { conn: Pin<Box<hyper::server::conn::http2::Connection<I, S, TokioExecutor>>> },
    }
}

/// Serves `io` with `service`: by `auto` when the protocol is not
/// `known`, else by hyper's connection for it, configured as `auto`'s
/// (the same timer and header-read timeout).
pub(crate) fn serve<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    header_read_timeout: std::time::Duration,
    known: Option<Known>,
    io: I,
    service: S,
) -> Served<'_, I, S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
{
    match known {
        None => Served::Auto {
            conn: Box::pin(builder.serve_connection_with_upgrades(io, service)),
        },
        Some(Known::Http1) => Served::Http1 {
            conn: hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(io, service)
                .with_upgrades(),
        },
        Some(Known::H2) => Served::H2 {
            conn: Box::pin(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .serve_connection(io, service),
            ),
        },
    }
}

impl<I, S, B> Served<'_, I, S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
{
    /// Finishes what is in flight, then closes (GOAWAY for h2).
    pub(crate) fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.project() {
            ServedProj::Auto { conn } => conn.as_mut().graceful_shutdown(),
            ServedProj::Http1 { conn } => conn.graceful_shutdown(),
            ServedProj::H2 { conn } => conn.as_mut().graceful_shutdown(),
        }
    }
}

impl<I, S, B> Future for Served<'_, I, S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.project() {
            ServedProj::Auto { conn } => ready!(conn.as_mut().poll(cx)),
            ServedProj::Http1 { conn } => ready!(conn.poll(cx)).map_err(Into::into),
            ServedProj::H2 { conn } => ready!(conn.as_mut().poll(cx)).map_err(Into::into),
        })
    }
}
