//! The mesh on Kubernetes: the cluster's own objects as the mesh's
//! configuration, a thin layer over the core the file source uses.
//!
//! - [`client`]: the API server's client, from a kubeconfig or in-cluster.
//! - [`convert`]: a pure function from the objects the watches hold (Istio's
//!   CRDs, Services, EndpointSlices, Pods, the MeshConfig ConfigMap) to the
//!   Istio documents the file loader reads, so the loader's validation,
//!   the snapshot and everything after it are shared with `--config DIR`.
//! - [`source`]: the watches (kube-runtime reflectors' watcher: list, watch
//!   with bookmarks, relist on 410 Gone, backoff), as a
//!   [`ConfigSource`](mesh_core::store::ConfigSource).
//! - [`events`]: rejected objects reported as Kubernetes Events.
//! - [`inject`]: the sidecar added to pods, for `mesh-proxy inject` and
//!   the control plane's admission webhook.
//! - [`rootcert`]: the mesh root published in every namespace
//!   (`mesh-ca-root-cert`), which injected sidecars mount.
//! - [`tokenreview`]: service-account tokens at the CA, checked by the API
//!   server's TokenReview.

pub mod client;
pub mod convert;
pub mod events;
pub mod inject;
pub mod rootcert;
pub mod source;
pub mod tokenreview;

pub use source::{KubeOptions, KubeSource, KubeStatus, WatchStatus};
pub use tokenreview::TokenReviewer;
