//! The mesh as Tower layers: mTLS connector and acceptor with secure naming,
//! authorization, routing and load balancing, retries and timeouts, telemetry.
//!
//! Built so far: [`tls`], mesh mTLS with SPIFFE identities; [`traffic`],
//! routing, load balancing and resilience; [`error`], the one place failures
//! become HTTP answers; [`telemetry`], Istio's metrics, the access log and
//! trace propagation.
#![forbid(unsafe_code)]

pub mod authz;
pub mod body;
pub mod error;
pub mod telemetry;
pub mod tls;
pub mod traffic;
pub mod upstream;
