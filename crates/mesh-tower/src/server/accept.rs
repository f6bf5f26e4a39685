//! The one accept loop, the acceptor that reads the mTLS mode per
//! connection, and the handle of a running server.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_core::resources::security::MtlsMode;
use mesh_core::snapshot::Snapshot;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{Drain, DrainController};
use crate::tls::{CredentialStore, MeshAcceptor, TlsMode};

/// Accepts on `listener` until the drain begins, handing each connection
/// (Nagle off) to `on`. Connections the kernel completed before the drain
/// are still handed on: they are clients that came before it, and the
/// drain grace covers them. A failed accept (out of descriptors, a
/// connection reset before it was taken) is logged at debug and the loop
/// goes on.
pub async fn accept_loop(
    listener: TcpListener,
    drain: Drain,
    mut on: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = drain.signaled() => {
                while let Ok(Ok((tcp, remote))) =
                    tokio::time::timeout(Duration::ZERO, listener.accept()).await
                {
                    // Nagle would hold the first answer after a handshake
                    // until the client's delayed ACK: 40 ms per new
                    // connection (BENCHMARKS.md).
                    let _ = tcp.set_nodelay(true);
                    on(tcp, remote);
                }
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        on(tcp, remote);
    }
}

/// Acceptors for the three inbound modes of Istio's PeerAuthentication; the
/// mode is read from the snapshot for each connection, so a reload applies
/// to the next connection without a restart.
#[derive(Debug, Clone)]
pub struct ModeAcceptor {
    strict: MeshAcceptor,
    permissive: MeshAcceptor,
    disable: MeshAcceptor,
}

impl ModeAcceptor {
    /// The three acceptors, presenting `creds`' SVID.
    pub fn new(creds: &CredentialStore) -> Result<Self, rustls::Error> {
        Ok(Self {
            strict: MeshAcceptor::new(creds, TlsMode::Strict)?,
            permissive: MeshAcceptor::new(creds, TlsMode::Permissive)?,
            disable: MeshAcceptor::new(creds, TlsMode::Disable)?,
        })
    }

    /// The longest a TLS handshake may take.
    #[must_use]
    pub fn with_handshake_timeout(self, timeout: Duration) -> Self {
        Self {
            strict: self.strict.with_handshake_timeout(timeout),
            permissive: self.permissive.with_handshake_timeout(timeout),
            disable: self.disable.with_handshake_timeout(timeout),
        }
    }

    /// The acceptor of a mode; UNSET (which inherits, and so never comes
    /// out of a snapshot) is STRICT.
    pub fn for_mode(&self, mode: MtlsMode) -> &MeshAcceptor {
        match mode {
            MtlsMode::Disable => &self.disable,
            MtlsMode::Permissive => &self.permissive,
            MtlsMode::Strict | MtlsMode::Unset => &self.strict,
        }
    }

    /// The acceptor for a connection to `port` of the workload `key`
    /// (`namespace/name`): the port's mode in `snap`. A workload missing
    /// from the configuration is STRICT, and authorization refuses its
    /// requests with the reason (`workload ... is not in the
    /// configuration`): fail closed, with an answer the caller can read.
    pub fn for_connection(&self, snap: &Snapshot, key: &str, port: u16) -> &MeshAcceptor {
        let mode = snap
            .workload(key)
            .map_or(MtlsMode::Strict, |(_, w)| snap.inbound_mode(w, port).mode);
        self.for_mode(mode)
    }
}

/// A running server. [`shutdown`](Self::shutdown) stops accepting, lets
/// what is in flight finish and surfaces a panic of the accept task;
/// dropping the handle stops accepting and starts the drain of its
/// connections without waiting.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    controller: Option<DrainController>,
    task: Option<JoinHandle<()>>,
    deadline: Duration,
}

impl ServerHandle {
    /// Runs `accept` (an [`accept_loop`] over a listener bound to
    /// `local_addr`, watching the drain of `controller`) as the server's
    /// task; `deadline` bounds [`shutdown`](Self::shutdown).
    pub fn spawn(
        local_addr: SocketAddr,
        controller: DrainController,
        deadline: Duration,
        accept: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        Self {
            local_addr,
            controller: Some(controller),
            task: Some(tokio::spawn(accept)),
            deadline,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and lets in-flight requests finish (up to the
    /// deadline the server was started with).
    pub async fn shutdown(mut self) {
        if let Some(controller) = self.controller.take() {
            controller.drain(self.deadline).await;
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Dropping the controller ends its watch channel, which every
        // connection reads as the drain's start.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
