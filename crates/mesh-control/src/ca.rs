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
    Known, ServeService, ServerBody, ServerHandle, accept_loop, drain_pair, serve_connection,
};
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::ControlPlaneConfig;

/// Serves `service` on `listener` until the returned handle drains.
pub(crate) fn spawn(
    listener: TcpListener,
    acceptor: CaAcceptor,
    service: CaService,
    config: &ControlPlaneConfig,
) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr()?;
    // A router, not the bare service: the xDS services join it here.
    let routes = Routes::new(service.into_server());
    let (controller, drain) = drain_pair(config.settings);
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
fn with_peer(routes: Routes, peer: CaPeer, timeout: Duration) -> impl ServeService {
    let remote = peer.remote;
    tower::ServiceBuilder::new()
        .map_request(move |mut req: Request<ServerBody>| {
            req.extensions_mut().insert(peer.clone());
            req
        })
        .map_future(move |answer| within(timeout, answer, remote))
        .map_response(|resp: Response<tonic::body::Body>| -> Response<BoxBody> { resp.map(boxed) })
        .service(routes)
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
