//! Credentials from files (cert, key and bundle PEM), reloaded when they
//! change: for users who bring SPIRE, cert-manager or their own PKI.
//!
//! Files are polled, not watched with inotify: Kubernetes updates mounted
//! secrets by swapping a symlink, which inotify watches on the files miss.
//! A half-written or mismatched set is refused and the last good one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::credentials::{CredentialStore, Credentials, CredentialsError};
use crate::manager::unix_secs;
use crate::metrics::CertMetrics;
use crate::svid::{SvidError, TrustBundle, TrustBundleSet};

/// Why the credential files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileSourceError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The certificate and key do not make credentials.
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
    /// The bundle file is unusable.
    #[error("trust bundle: {0}")]
    Bundle(#[from] SvidError),
}

/// Where the files are.
#[derive(Debug, Clone)]
pub struct FileSource {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
    extra_bundles: TrustBundleSet,
    interval: Duration,
}

type Contents = (Vec<u8>, Vec<u8>, Vec<u8>);

impl FileSource {
    /// `cert` holds the chain (leaf first), `key` its private key, `bundle`
    /// the roots of the workload's own trust domain.
    pub fn new(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
            extra_bundles: TrustBundleSet::new(),
            interval: Duration::from_secs(2),
        }
    }

    /// The `cert.pem`, `key.pem` and `bundle.pem` that `mesh-ca issue` writes.
    pub fn in_dir(dir: &Path) -> Self {
        Self::new(
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("bundle.pem"),
        )
    }

    /// How often the files are checked. Default 2 s.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Bundles of other trust domains to keep beside the file's.
    pub fn with_extra_bundles(mut self, bundles: TrustBundleSet) -> Self {
        self.extra_bundles = bundles;
        self
    }

    fn read_all(&self) -> Result<Contents, FileSourceError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| FileSourceError::Io {
                path: p.to_owned(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?, read(&self.bundle)?))
    }

    fn build(&self, (cert, key, bundle): &Contents) -> Result<Credentials, FileSourceError> {
        let creds = Credentials::from_pem(cert, key, TrustBundleSet::new())?;
        let mut bundles = self.extra_bundles.clone();
        bundles.insert(
            creds.id().trust_domain().clone(),
            TrustBundle::from_pem(bundle)?,
        );
        Ok(creds.with_bundles(bundles))
    }

    /// Reads the files once.
    pub fn load(&self) -> Result<Credentials, FileSourceError> {
        self.build(&self.read_all()?)
    }

    /// Reads the files and keeps reloading them when they change.
    pub fn watch(self) -> Result<FileWatcher, FileSourceError> {
        let contents = self.read_all()?;
        let creds = self.build(&contents)?;
        let store = CredentialStore::new(creds);
        let reloads = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let task =
            tokio::spawn(self.poll(contents, store.clone(), reloads.clone(), failures.clone()));
        Ok(FileWatcher {
            store,
            reloads,
            failures,
            task,
        })
    }

    async fn poll(
        self,
        mut last: Contents,
        store: CredentialStore,
        reloads: Arc<AtomicU64>,
        failures: Arc<AtomicU64>,
    ) {
        let mut failed_contents: Option<Contents> = None;
        loop {
            tokio::time::sleep(self.interval).await;
            let contents = match self.read_all() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read certificate files; keeping the current ones");
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if contents == last || failed_contents.as_ref() == Some(&contents) {
                continue;
            }
            match self.build(&contents) {
                Ok(creds) => {
                    store.publish(creds);
                    reloads.fetch_add(1, Ordering::Relaxed);
                    last = contents;
                    failed_contents = None;
                }
                Err(e) => {
                    // Often a write in progress; retried at the next change.
                    tracing::warn!(error = %e, "certificate files changed but are unusable; keeping the current ones");
                    failures.fetch_add(1, Ordering::Relaxed);
                    failed_contents = Some(contents);
                }
            }
        }
    }
}

/// Credentials kept in step with files. Dropping it stops the reloads.
#[derive(Debug)]
pub struct FileWatcher {
    store: CredentialStore,
    reloads: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FileWatcher {
    /// The store rustls reads.
    pub fn store(&self) -> &CredentialStore {
        &self.store
    }

    /// Successful reloads since the first load.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changes refused (unreadable or invalid files).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The certificate metrics, now: reloads count as renewals (the first
    /// load does not), refused changes as failures.
    pub fn metrics(&self) -> CertMetrics {
        CertMetrics {
            expiry_unix: unix_secs(self.store.load().not_after()),
            renewals: self.reloads(),
            failures: self.failures(),
        }
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
