//! The pure core of the mesh: SPIFFE identities, Istio's resources read from
//! YAML, validation and analysis, and the immutable [`Snapshot`] every
//! request decision is made against.
//!
//! Data flows one way: YAML → [`resources`] → validated → compiled
//! [`Snapshot`] → held by a [`Store`] → read once per request. Decisions are
//! plain functions over that data ([`route`], [`authz`],
//! [`Snapshot::inbound_mode`], [`Snapshot::client_tls`]); nothing here does
//! network I/O or depends on an HTTP or TLS stack.
//!
//! ```
//! use std::path::Path;
//! use mesh_core::{analyze, load, snapshot};
//!
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: {name: reviews}
//! spec:
//!   hosts: [reviews]
//!   ports: [{number: 80, name: http}]
//!   workloadSelector: {labels: {app: reviews}}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: WorkloadEntry
//! metadata: {name: reviews-v1}
//! spec: {address: 10.0.0.1, labels: {app: reviews, version: v1}, serviceAccount: reviews}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: DestinationRule
//! metadata: {name: reviews}
//! spec:
//!   host: reviews
//!   trafficPolicy: {tls: {mode: DISABLE}}
//! "#;
//! let resources = load::load_str(Path::new("reviews.yaml"), yaml)?;
//! let snap = snapshot::compile(&resources)?;
//! let report = analyze::check(&snap, &resources);
//! // The mesh is STRICT by default, and the DestinationRule sends plaintext.
//! assert_eq!(report.tls[0].host_port, "reviews.default.svc.cluster.local:80");
//! assert_eq!(report.tls[0].status, analyze::TlsStatus::Conflict);
//! # Ok::<(), mesh_core::error::ConfigErrors>(())
//! ```
//!
//! [`Snapshot`]: snapshot::Snapshot
//! [`Snapshot::inbound_mode`]: snapshot::Snapshot::inbound_mode
//! [`Snapshot::client_tls`]: snapshot::Snapshot::client_tls
//! [`Store`]: store::Store
#![forbid(unsafe_code)]

pub mod analyze;
pub mod authz;
pub mod balance;
pub mod cel;
pub mod error;
pub mod explain;
pub mod gateway;
pub mod gateway_api;
pub mod identity;
pub mod jwt;
pub mod load;
pub mod locality;
pub mod meshconfig;
pub mod net;
pub mod normalize;
pub mod outlier;
pub mod plan;
pub mod resources;
pub mod retry;
pub mod route;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod validate;
pub mod visibility;
pub mod xds;
