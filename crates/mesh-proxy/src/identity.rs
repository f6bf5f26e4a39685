//! The proxy's own identity: an SVID from mesh-ca (join token first, then
//! renewals over mTLS) or from files (SPIRE, cert-manager, `mesh-ca issue`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use mesh_ca::{
    CaClient, CertManager, CredentialStore, FileSource, FileWatcher, ManagerConfig, SvidFiles,
    SvidSink, TrustBundle, TrustBundleSet,
};
use mesh_core::identity::SpiffeId;

/// Where the proxy's own certificate comes from: files (SPIRE,
/// cert-manager, `mesh-ca issue`), reloaded on change, or mesh-ca (a join
/// token for the first certificate, then renewals over mTLS).
#[derive(Clone)]
pub struct IdentitySource(Source);

#[derive(Clone)]
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
        bundle: PathBuf,
    },
    Ca {
        addr: String,
        root: PathBuf,
        token: Option<String>,
        token_file: Option<PathBuf>,
        ca_id: Option<String>,
        ttl: Option<Duration>,
        write_to: Option<PathBuf>,
    },
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Files { cert, key, bundle } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .field("bundle", bundle)
                .finish(),
            // The join token is a credential: never printed.
            Source::Ca {
                addr,
                root,
                token,
                token_file,
                ca_id,
                ttl,
                write_to,
            } => f
                .debug_struct("Ca")
                .field("addr", addr)
                .field("root", root)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .field("token_file", token_file)
                .field("ca_id", ca_id)
                .field("ttl", ttl)
                .field("write_to", write_to)
                .finish(),
        }
    }
}

impl IdentitySource {
    /// A certificate chain, its private key and the trust bundle, from
    /// files that are reloaded when they change.
    pub fn files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        bundle: impl Into<PathBuf>,
    ) -> Self {
        Self(Source::Files {
            cert: cert.into(),
            key: key.into(),
            bundle: bundle.into(),
        })
    }

    /// mesh-ca at `addr` (`host:port`), trusted through its root
    /// certificate (its `root-cert.pem`) before the first SVID.
    pub fn ca(addr: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        Self(Source::Ca {
            addr: addr.into(),
            root: root.into(),
            token: None,
            token_file: None,
            ca_id: None,
            ttl: None,
            write_to: None,
        })
    }

    /// Also writes every SVID mesh-ca issues, with its key and the trust
    /// bundle, into `dir` (`cert.pem`, `key.pem`, `bundle.pem`), for a
    /// program that reads its certificates from files: what
    /// [`crate::agent`] does for gRPC's proxyless clients. Nothing for files.
    #[must_use]
    pub fn writing_to(mut self, dir: impl Into<PathBuf>) -> Self {
        if let Source::Ca { write_to, .. } = &mut self.0 {
            *write_to = Some(dir.into());
        }
        self
    }

    /// Whether the certificates come from files rather than mesh-ca.
    pub(crate) fn is_files(&self) -> bool {
        matches!(self.0, Source::Files { .. })
    }

    /// The certificate lifetime asked of mesh-ca (Istio's `SECRET_TTL`;
    /// the CA grants at most its maximum); default 24 h. Nothing for files.
    #[must_use]
    pub fn with_ttl(mut self, requested: Duration) -> Self {
        if let Source::Ca { ttl, .. } = &mut self.0 {
            *ttl = Some(requested);
        }
        self
    }

    /// The single-use join token for the first certificate from mesh-ca
    /// (see `mesh-ca token`); nothing for files.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        if let Source::Ca { token: t, .. } = &mut self.0 {
            *t = Some(token.into());
        }
        self
    }

    /// A Kubernetes service-account token file (the projected token the
    /// injector mounts, audience `istio-ca`): read afresh for every
    /// certificate request made without an SVID, and never spent; the CA
    /// checks it with TokenReview and issues the token's service account's
    /// SVID. Nothing for files.
    #[must_use]
    pub fn with_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Source::Ca { token_file, .. } = &mut self.0 {
            *token_file = Some(path.into());
        }
        self
    }

    /// The SPIFFE ID mesh-ca presents, by default
    /// `spiffe://<trust domain>/ns/mesh-system/sa/mesh-ca`; nothing for
    /// files.
    #[must_use]
    pub fn with_ca_id(mut self, id: impl Into<String>) -> Self {
        if let Source::Ca { ca_id, .. } = &mut self.0 {
            *ca_id = Some(id.into());
        }
        self
    }
}

/// A proxy's identity before it serves: where to obtain it, or already
/// obtained (on a control plane, whose stream it authenticates first).
#[derive(Debug)]
pub(crate) enum Prepared {
    Source(IdentitySource),
    Obtained(Arc<Identity>),
}

impl Prepared {
    /// The identity, obtained now if it was not yet.
    pub(crate) async fn obtain(self, id: &SpiffeId) -> Result<Arc<Identity>> {
        match self {
            Self::Source(source) => Ok(Arc::new(source.obtain(id).await?)),
            Self::Obtained(obtained) => Ok(obtained),
        }
    }
}

/// A running identity source; dropping it stops renewals.
#[derive(Debug)]
pub(crate) enum Identity {
    Ca(CertManager),
    Files(FileWatcher),
}

impl Identity {
    /// The store rustls reads at each handshake.
    pub(crate) fn store(&self) -> &CredentialStore {
        match self {
            Self::Ca(m) => m.store(),
            Self::Files(w) => w.store(),
        }
    }

    /// `/certs`: the current SVID, its validity and renewal counters.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let c = self.store().load();
        let secs =
            |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut v = serde_json::json!({
            "identity": c.id().to_string(),
            "not_before_unix": secs(c.not_before()),
            "not_after_unix": secs(c.not_after()),
            "chain_length": c.chain().len(),
        });
        match self {
            Self::Ca(m) => {
                v["source"] = "mesh-ca".into();
                v["renewals"] = m.status().renewals().into();
                v["failures"] = m.status().failures().into();
            }
            Self::Files(w) => {
                v["source"] = "files".into();
                v["reloads"] = w.reloads().into();
                v["failures"] = w.failures().into();
            }
        }
        v
    }

    /// Prometheus lines about the certificate, from the definitions that
    /// the CA's metrics endpoint renders with too (`mesh_ca::metrics`).
    pub(crate) fn metrics(&self) -> String {
        let m = match self {
            Self::Ca(m) => m.metrics(),
            Self::Files(w) => w.metrics(),
        };
        let mut out = String::new();
        m.render(&mut out);
        out
    }
}

impl IdentitySource {
    /// Obtains the identity. With a CA, this waits (retrying with backoff)
    /// until the CA answers: the proxy stays not-ready meanwhile and serves
    /// nothing, failing closed.
    pub(crate) async fn obtain(&self, id: &SpiffeId) -> Result<Identity> {
        let (addr, root, token, token_file, ca_id, ttl, write_to) = match &self.0 {
            Source::Files { cert, key, bundle } => {
                let source = FileSource::new(cert, key, bundle);
                let creds = source
                    .load()
                    .with_context(|| format!("reading {}", cert.display()))?;
                if creds.id() != id {
                    bail!(
                        "{} holds the identity {}, but this workload is {id}",
                        cert.display(),
                        creds.id()
                    );
                }
                return Ok(Identity::Files(source.watch()?));
            }
            Source::Ca {
                addr,
                root,
                token,
                token_file,
                ca_id,
                ttl,
                write_to,
            } => (addr, root, token, token_file, ca_id, ttl, write_to),
        };
        let pem = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
        let bundle =
            TrustBundleSet::single(id.trust_domain().clone(), TrustBundle::from_pem(&pem)?);
        let ca_id: SpiffeId = match ca_id {
            Some(s) => s.parse()?,
            None => mesh_ca::ca_id(id.trust_domain()),
        };
        let mut client = CaClient::new(addr.clone(), ca_id, bundle);
        if let Some(t) = token {
            client = client.with_token(t.clone());
        }
        if let Some(path) = token_file {
            client = client.with_token_file(path.clone());
        }
        let config = ManagerConfig {
            ttl: ttl.unwrap_or(ManagerConfig::default().ttl),
            first_fetch_timeout: Duration::from_secs(365 * 24 * 3600),
            max_backoff: Duration::from_secs(5),
            sink: write_to
                .as_ref()
                .map(|d| Arc::new(SvidFiles::new(d)) as Arc<dyn SvidSink>),
            ..ManagerConfig::default()
        };
        let manager = CertManager::start(id.clone(), Arc::new(client), config).await?;
        Ok(Identity::Ca(manager))
    }
}
