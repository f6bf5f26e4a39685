//! The mesh's certificate authority: root and intermediate keys, X.509-SVID
//! issuance from CSRs, the signing service and the workload certificate manager.
//!
//! This crate is being built; see the project's issue tracker.
#![forbid(unsafe_code)]
