//! The CA's signing service on the mesh's serving edge: `mesh_tower::server`'s
//! accept loop, [`CaAcceptor`] for the TLS (which names the client), and
//! tonic's [`Routes`] as the per-connection service.
//!
//! tonic's generated server is a tower service over `http::Request<B>` for
//! any body `B`, so the server's request body goes in as it is (already
//! held to the body limits); only the answer's body is boxed into the
//! server's body type. The client's [`CaPeer`] goes into each request's
//! extensions, where `CaService` reads it, as tonic's own server would put
//! its `Connected::ConnectInfo`.
//!
//! Each request is bounded by [`ControlPlaneConfig::request_timeout`], from
//! its head to its answer: `mesh_tower::server` bounds the wait for the
//! head (header-read timeout) and for each body frame (body read timeout),
//! but neither a body that trickles in under the read timeout nor a
//! signing that hangs, and a connection with a request in flight is never
//! idle. One still unanswered then gets `DEADLINE_EXCEEDED`, which the
//! mesh's `CaClient` reports as the CA being unavailable (try again later);
//! the request's future is dropped, and the stalled body with it.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use mesh_ca::service::{CaAcceptor, CaPeer, CaService};
use mesh_tower::body::{BoxBody, boxed};
use mesh_tower::server::{
    Known, ServeService, ServerBody, ServerHandle, ServerSettings, accept_loop, drain_pair,
    serve_connection,
};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tower::ServiceExt as _;

use crate::ControlPlaneConfig;
use crate::xds::{ConfigServer, DISCOVERY_PATH_PREFIX};

/// Serves `service` on `listener` until the returned handle drains.
pub(crate) fn spawn(
    listener: TcpListener,
    acceptor: CaAcceptor,
    service: CaService,
    xds: Option<ConfigServer>,
    config: &ControlPlaneConfig,
) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr()?;
    // Configuration streams stay open for as long as the data plane runs,
    // and the client sends only when it answers a push: the body read
    // timeout would cut every quiet stream. The CA's own calls are bounded
    // whole by the request timeout instead.
    let settings = ServerSettings {
        body: config.settings.body.body_read_timeout(None),
        ..config.settings
    };
    let (controller, drain) = drain_pair(settings);
    let mut routes = Routes::new(service.into_server());
    if let Some(xds) = xds {
        routes = routes.add_service(xds.with_drain(drain.clone()).into_service());
    }
    let conns = drain.clone();
    let timeout = config.request_timeout;
    let accept = accept_loop(listener, drain, move |tcp, remote| {
        let (acceptor, routes, drain) = (acceptor.clone(), routes.clone(), conns.clone());
        tokio::spawn(async move {
            // Counted from the handshake on, so a drain waits for it.
            let guard = drain.guard();
            let (stream, peer) = match acceptor.accept(tcp, remote).await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
            };
            let known = Known::from_alpn(stream.get_ref().1.alpn_protocol());
            drop(guard);
            serve_connection(stream, with_peer(routes, peer, timeout), drain, known).await;
        });
    });
    Ok(ServerHandle::spawn(
        local_addr,
        controller,
        config.drain_deadline,
        accept,
    ))
}

/// `routes` as the server serves it, for the connection of `peer`, each
/// request answered within `timeout`.
/// A discovery stream is not cut by the timeout: it lasts as long as the
/// data plane follows the control plane.
fn with_peer(routes: Routes, peer: CaPeer, timeout: Duration) -> impl ServeService {
    let remote = peer.remote;
    tower::service_fn(move |mut req: Request<ServerBody>| {
        req.extensions_mut().insert(peer.clone());
        let streaming = req.uri().path().starts_with(DISCOVERY_PATH_PREFIX);
        let call = routes.clone().oneshot(req);
        async move {
            let answer = async move {
                call.await
                    .map(|resp: Response<tonic::body::Body>| resp.map(boxed))
            };
            if streaming {
                answer.await
            } else {
                within(timeout, answer, remote).await
            }
        }
    })
}

/// `answer`, or `DEADLINE_EXCEEDED` once `timeout` has passed without it.
async fn within<F>(
    timeout: Duration,
    answer: F,
    remote: std::net::SocketAddr,
) -> Result<Response<BoxBody>, Infallible>
where
    F: Future<Output = Result<Response<BoxBody>, Infallible>>,
{
    match tokio::time::timeout(timeout, answer).await {
        Ok(answered) => answered,
        Err(_) => {
            tracing::warn!(%remote, ?timeout, "request cut at the request timeout");
            let status = tonic::Status::deadline_exceeded(format!(
                "the CA did not answer within {timeout:?}"
            ));
            Ok(status.into_http::<tonic::body::Body>().map(boxed))
        }
    }
}
