//! The proxy's own identity: an SVID from mesh-ca (join token first, then
//! renewals over mTLS) or from files (SPIRE, cert-manager, `mesh-ca issue`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use mesh_ca::{
    CaClient, CertManager, CredentialStore, FileSource, FileWatcher, ManagerConfig, TrustBundle,
    TrustBundleSet,
};
use mesh_core::identity::SpiffeId;

/// Where the proxy's certificate comes from.
#[derive(Debug, Clone, Args)]
pub(crate) struct IdentityArgs {
    /// mesh-ca address (`host:port`); with `--token` and `--ca-root`.
    #[arg(long)]
    pub(crate) ca: Option<String>,
    /// Single-use join token for the first certificate (see `mesh-ca token`).
    /// Base64url may start with `-`: taken as the value, not as a flag.
    #[arg(
        long,
        env = "MESH_JOIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub(crate) token: Option<String>,
    /// The CA's root certificate (its `root-cert.pem`), to trust it before the
    /// first SVID.
    #[arg(long)]
    pub(crate) ca_root: Option<PathBuf>,
    /// The SPIFFE ID the CA presents.
    #[arg(long)]
    pub(crate) ca_id: Option<String>,
    /// Certificate chain file (with `--key` and `--bundle`), reloaded on change.
    #[arg(long)]
    pub(crate) cert: Option<PathBuf>,
    /// Private key file.
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// Trust bundle file.
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
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

impl IdentityArgs {
    /// Obtains the identity. With a CA, this waits (retrying with backoff)
    /// until the CA answers: the proxy stays not-ready meanwhile and serves
    /// nothing, failing closed.
    pub(crate) async fn obtain(&self, id: &SpiffeId) -> Result<Identity> {
        if let (Some(cert), Some(key), Some(bundle)) = (&self.cert, &self.key, &self.bundle) {
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
        let (Some(addr), Some(root)) = (&self.ca, &self.ca_root) else {
            bail!("give --ca ADDR --ca-root FILE [--token T], or --cert --key --bundle");
        };
        let pem = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
        let bundle =
            TrustBundleSet::single(id.trust_domain().clone(), TrustBundle::from_pem(&pem)?);
        let ca_id: SpiffeId = match &self.ca_id {
            Some(s) => s.parse()?,
            None => mesh_ca::ca_id(id.trust_domain()),
        };
        let mut client = CaClient::new(addr.clone(), ca_id, bundle);
        if let Some(t) = &self.token {
            client = client.with_token(t.clone());
        }
        let config = ManagerConfig {
            first_fetch_timeout: Duration::from_secs(365 * 24 * 3600),
            max_backoff: Duration::from_secs(5),
            ..ManagerConfig::default()
        };
        let manager = CertManager::start(id.clone(), Arc::new(client), config).await?;
        Ok(Identity::Ca(manager))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        identity: IdentityArgs,
    }

    #[test]
    fn a_token_that_starts_with_a_hyphen_is_a_value() {
        let cli = Cli::try_parse_from(["mesh-proxy", "--token", "-iQx_3", "--ca", "127.0.0.1:1"])
            .unwrap();
        assert_eq!(cli.identity.token.as_deref(), Some("-iQx_3"));
        assert_eq!(cli.identity.ca.as_deref(), Some("127.0.0.1:1"));
    }
}
