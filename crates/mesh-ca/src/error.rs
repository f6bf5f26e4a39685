use std::path::PathBuf;

use mesh_core::identity::{SpiffeId, TrustDomain};

use crate::csr::CsrError;

/// Why the certificate authority could not load, save or issue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A file of the CA directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// `init` was asked to create a CA where one already exists.
    #[error("{0} already holds a CA key; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
    /// The directory holds no CA.
    #[error("{} holds no CA (run `mesh-ca init --dir {}` first)", .0.display(), .0.display())]
    NotInitialized(PathBuf),
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    /// The signing certificate is not a CA certificate.
    #[error("the signing certificate is not a CA (basicConstraints cA is not set)")]
    NotACa,
    /// A CA certificate carries URI name constraints, which rustls-webpki
    /// rejects: every SVID it signed would fail verification.
    #[error("a CA certificate has URI name constraints; rustls-webpki rejects every leaf under it")]
    UriNameConstraints,
    /// The CA certificate has expired.
    #[error("the CA certificate expired; it can no longer issue")]
    CaExpired,
    /// The identity belongs to another trust domain than the CA's.
    #[error("{id} is not in this CA's trust domain {ca}")]
    ForeignTrustDomain {
        /// The identity asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        ca: TrustDomain,
    },
    /// The CSR was refused.
    #[error("bad CSR: {0}")]
    Csr(#[from] CsrError),
    /// rcgen could not build or sign the certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate could not be parsed.
    #[error("cannot parse certificate: {0}")]
    Parse(String),
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random,
}

impl CaError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
