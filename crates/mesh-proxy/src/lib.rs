//! The mesh for workloads that are not Rust, as a library: the sidecar, the
//! gateway, their admin listener and identity, and the `check` and
//! `explain` reports. The `mesh-proxy` binary is a thin command line over
//! it; tests start the same code in their own runtime.
//!
//! A role is started on sockets the caller bound (port 0 included, so no
//! port is ever chosen and then lost to a neighbour): the admin listener is
//! served at once, and the serving ports are listened on only once the
//! identity is issued, so a client before then is refused, not held.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_proxy::{BoundSocket, IdentitySource, InboundListener, Sidecar, SidecarListeners};
//!
//! let sidecar = Sidecar::builder("mesh/", "default", "web")
//!     .identity(IdentitySource::files("web/cert.pem", "web/key.pem", "web/bundle.pem"))
//!     .build()?;
//! let app = "127.0.0.1:8080".parse()?;
//! let inbound = sidecar
//!     .inbound_ports()
//!     .into_iter()
//!     .map(|p| Ok(InboundListener::new(BoundSocket::bind(p.addr)?, app)))
//!     .collect::<std::io::Result<_>>()?;
//! let proxy = sidecar.start(SidecarListeners {
//!     admin: tokio::net::TcpListener::bind("127.0.0.1:0").await?,
//!     inbound,
//!     outbound: Vec::new(),
//!     http_proxy: None,
//!     capture: None,
//! })?;
//! proxy.ready().await?;
//! // ... serve until asked to stop, then let what is in flight finish.
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
pub mod agent;
#[cfg(feature = "tools")]
pub mod check;
#[cfg(feature = "gateway")]
mod gateway;
mod identity;
#[cfg(feature = "gateway")]
mod passthrough;
mod runtime;
mod sidecar;

#[cfg(feature = "gateway")]
pub use gateway::{Gateway, GatewayBuilder, GatewayListeners};
pub use identity::IdentitySource;
pub use runtime::{BoundSocket, Error, ProxyHandle};
pub use sidecar::{
    CaptureListeners, InboundListener, OutboundListener, Place, Sidecar, SidecarBuilder,
    SidecarListeners, WorkloadPort,
};
