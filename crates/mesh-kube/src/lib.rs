//! The mesh on Kubernetes.
//!
//! Being built: the Kubernetes source of the control plane, TokenReview
//! at the CA, and injection.
