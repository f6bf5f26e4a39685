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
            serve_connection(stream, with_peer(routes, peer), drain, known).await;
        });
    });
    Ok(ServerHandle::spawn(
        local_addr,
        controller,
        config.drain_deadline,
        accept,
    ))
}

/// `routes` as the server serves it, for the connection of `peer`.
fn with_peer(routes: Routes, peer: CaPeer) -> impl ServeService {
    tower::ServiceBuilder::new()
        .map_request(move |mut req: Request<ServerBody>| {
            req.extensions_mut().insert(peer.clone());
            req
        })
        .map_response(|resp: Response<tonic::body::Body>| -> Response<BoxBody> { resp.map(boxed) })
        .service(routes)
}
