//! The serving edge: one accept loop, one acceptor that reads the mTLS mode
//! per connection from the snapshot, one settings type, one per-connection
//! serve (HTTP/1.1 and h2, with the ALPN fast path), one drain. Every
//! listener of the mesh is a few lines over it: [`Mesh::serve`], the
//! sidecar's inbound, outbound and HTTP-proxy listeners, the gateway and
//! the admin listener.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use mesh_tower::server::{ServerSettings, accept_loop, drain_pair, serve_connection};
//!
//! let (controller, drain) = drain_pair(ServerSettings::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let app = tower::service_fn(|_req| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(mesh_tower::body::full("hi")))
//! });
//! let conns = drain.clone();
//! tokio::spawn(accept_loop(listener, drain, move |tcp, _remote| {
//!     tokio::spawn(serve_connection(tcp, app.clone(), conns.clone(), None));
//! }));
//! // ... later: stop accepting, let what is in flight finish.
//! controller.drain(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! [`Mesh::serve`]: crate::Mesh::serve

mod accept;
mod app;
mod conn;
mod drain;
mod original;

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

pub use accept::{ModeAcceptor, ServerHandle, accept_loop};
pub use app::AppService;
pub use conn::{Known, serve_connection};
pub use drain::{ConnGuard, Drain, DrainController, drain_pair};
pub use original::{Original, original_destination};

use crate::body::BoxBody;
use crate::limits::{BodyLimits, LimitedBody};

/// The HTTP/2 flood limits, set explicitly rather than inherited so that an
/// upgrade of hyper cannot loosen them unnoticed. The defaults equal
/// hyper/h2's: past 20 streams reset by the client before they were
/// accepted (rapid reset, CVE-2023-44487) or 1024 streams the server had to
/// reset for the client's errors, the connection gets GOAWAY
/// ENHANCE_YOUR_CALM; 200 streams at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    /// Streams reset by the client before they were accepted.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server reset for the client's protocol errors.
    pub max_local_error_reset_streams: usize,
    /// Streams open at once.
    pub max_concurrent_streams: u32,
}

impl Default for H2Limits {
    fn default() -> Self {
        Self {
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_concurrent_streams: 200,
        }
    }
}

/// What every served connection is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    /// How long a client may take to send a request's headers (HTTP/1.1),
    /// and to start its first request (HTTP/1.1 and h2), before the
    /// connection is closed: the slowloris guard.
    pub header_read_timeout: Duration,
    /// How long a connection may go without starting a request (and with
    /// none in flight) before it is shut down gracefully.
    pub idle_timeout: Duration,
    /// How long a TLS client may take to finish its handshake.
    pub handshake_timeout: Duration,
    /// The request body's cap (413) and read timeout (408).
    pub body: BodyLimits,
    /// The HTTP/2 flood limits.
    pub h2: H2Limits,
    /// How long a connection keeps taking requests once a drain has begun
    /// (its HTTP/1.1 answers saying `Connection: close`), so a request a
    /// client wrote just as the drain began is served, not failed.
    pub drain_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            body: BodyLimits::default(),
            h2: H2Limits::default(),
            drain_grace: Duration::from_secs(1),
        }
    }
}

/// The body of every request the server serves: the client's, held to the
/// [`ServerSettings`] body limits.
pub type ServerBody = LimitedBody<Incoming>;

/// What a server serves connections with: a cloneable tower service that
/// answers every request (errors are answers, not failures).
pub trait ServeService:
    tower::Service<
        Request<ServerBody>,
        Response = Response<BoxBody>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> ServeService for S where
    S: tower::Service<
            Request<ServerBody>,
            Response = Response<BoxBody>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}
