//! One served HTTP connection, by the protocol TLS agreed when it did.
//!
//! hyper-util's `auto` builder tells HTTP/1.1 from h2 by reading the first
//! bytes and handing them back through a rewind buffer. On a TLS connection
//! ALPN has already said which it is, and the rewind costs memory for the
//! connection's whole life: hyper's read buffer, 8 KiB, finds 24 bytes in
//! it on the first read and doubles to 16 KiB (measured with massif: about
//! 8 KiB of the 30 KiB an idle mTLS connection cost sidecar B). So
//! connections whose protocol is known skip the detection: h2 ones are
//! served by `auto` told the version (which wraps them in an empty rewind),
//! HTTP/1.1 ones by hyper's own connection with upgrades (`auto` ignores
//! the version when upgrades are on), configured by the same
//! [`http1_settings!`](crate::runtime::http1_settings) as `auto`'s. The
//! others (plaintext, no ALPN) are still detected by `auto`.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::HttpService;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::runtime::{HttpLimits, http1_settings};

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
        H2 { conn: Pin<Box<auto::Connection<'a, I, S, TokioExecutor>>> },
    }
}

/// `auto`'s builder for a connection: told the version when it is h2 (so
/// [`serve`] skips the detection with every HTTP/2 setting kept).
pub(crate) fn for_known(
    builder: auto::Builder<TokioExecutor>,
    known: Option<Known>,
) -> auto::Builder<TokioExecutor> {
    match known {
        Some(Known::H2) => builder.http2_only(),
        _ => builder,
    }
}

/// Serves `io` with `service`: by `auto` with detection when the protocol
/// is not `known`; by `auto` without it for h2 (`builder` from
/// [`for_known`]); by hyper's HTTP/1.1 connection, with the same settings,
/// for HTTP/1.1.
pub(crate) fn serve<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    limits: HttpLimits,
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
        Some(Known::Http1) => {
            let mut h1 = hyper::server::conn::http1::Builder::new();
            http1_settings!(h1, limits);
            Served::Http1 {
                conn: h1.serve_connection(io, service).with_upgrades(),
            }
        }
        Some(Known::H2) => Served::H2 {
            conn: Box::pin(builder.serve_connection(io, service)),
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
            ServedProj::H2 { conn } => ready!(conn.as_mut().poll(cx)),
        })
    }
}
