//! mesh-core
#![forbid(unsafe_code)]
pub mod authz;
pub mod error;
pub mod identity;
pub mod load;
pub mod meshconfig;
pub mod resources;
pub mod route;
pub mod snapshot;
pub mod validate;
