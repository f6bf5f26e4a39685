//! The mesh as Tower layers, in your own process: no sidecar, no extra hop.
//!
//! A Rust service goes from no mesh to mTLS, authorization and Istio metrics
//! with [`Mesh`]:
//!
//! ```no_run
//! use mesh_tower::Mesh;
//! use tower::ServiceExt;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!     let mesh = Mesh::builder()
//!         .config("mesh/") // Istio YAML: VirtualService, DestinationRule, AuthorizationPolicy...
//!         .workload("default", "reviews-v1")
//!         .identity_files("id/cert.pem", "id/key.pem", "id/bundle.pem")
//!         .build()
//!         .await?;
//!     let app = tower::service_fn(|_req: http::Request<mesh_tower::body::BoxBody>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(mesh_tower::body::full("hi")))
//!     });
//!     let server = mesh.serve("127.0.0.1:9080".parse()?, app).await?; // mTLS + policy + metrics
//!     let req = http::Request::get("http://ratings/").body(mesh_tower::body::empty())?;
//!     let answer = mesh.client().oneshot(req).await?; // routed, secured, measured
//!     println!("ratings said {}", answer.status());
//!     server.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! The pieces, usable on their own: [`tls`], mesh mTLS with SPIFFE
//! identities and secure naming; [`authz`], AuthorizationPolicy as Istio
//! defines it; [`traffic`], routing, load balancing and resilience;
//! [`telemetry`], Istio's metrics, the access log and trace propagation;
//! [`error`], the one place failures become HTTP answers.
#![forbid(unsafe_code)]

pub mod authz;
pub mod body;
pub mod error;
pub mod jwks;
pub mod limits;
pub mod mesh;
pub mod sanitize;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod traffic;
mod uds;
pub mod upgrade;
pub mod upstream;
pub mod xds;

pub use mesh::{Mesh, MeshBuilder, MeshClient, MeshServer};
