//! The mesh as Tower layers: mTLS connector and acceptor with secure naming,
//! authorization, routing and load balancing, retries and timeouts, telemetry.
//!
//! Built so far: [`tls`], mesh mTLS with SPIFFE identities.
#![forbid(unsafe_code)]

pub mod tls;
