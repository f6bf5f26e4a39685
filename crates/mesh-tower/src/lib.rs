//! The mesh as Tower layers: mTLS connector and acceptor with secure naming,
//! authorization, routing and load balancing, retries and timeouts, telemetry.
//!
//! This crate is being built; see the project's issue tracker.
#![forbid(unsafe_code)]
