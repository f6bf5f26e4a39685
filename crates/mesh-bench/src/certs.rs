//! One CA and two workload identities, shared by every topology: the same
//! ECDSA P-256 SVIDs for rustls, the mesh, nginx and HAProxy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use mesh_ca::CertificateAuthority;
use mesh_core::identity::{SpiffeId, TrustDomain};

/// The client side's identity (load generator, sidecar A, proxy A).
pub(crate) const CLIENT_SA: &str = "bench-client";
/// The server side's identity (servers, sidecar B, proxy B).
pub(crate) const SERVER_SA: &str = "bench-server";
/// A DNS SAN beside the URI SAN of the server's SVID, so that nginx and
/// HAProxy, which cannot check a SPIFFE ID, verify the server by name.
pub(crate) const SERVER_DNS: &str = "bench-server.bench.test";

/// The files of one identity.
#[derive(Debug, Clone)]
pub(crate) struct IdentityFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) bundle: PathBuf,
    /// Certificate chain then key, as HAProxy's `crt` wants them.
    pub(crate) combined: PathBuf,
}

impl IdentityFiles {
    /// Credentials for rustls, read from the files.
    pub(crate) fn store(&self) -> Result<mesh_ca::CredentialStore> {
        let creds = mesh_ca::FileSource::new(&self.cert, &self.key, &self.bundle)
            .load()
            .with_context(|| format!("loading {}", self.cert.display()))?;
        Ok(mesh_ca::CredentialStore::new(creds))
    }
}

/// Both identities.
#[derive(Debug, Clone)]
pub(crate) struct Certs {
    pub(crate) client: IdentityFiles,
    pub(crate) server: IdentityFiles,
}

pub(crate) fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
}

/// Creates a CA in `dir/ca` and issues both SVIDs, as `mesh-ca init` and
/// `mesh-ca issue` would.
pub(crate) fn generate(dir: &Path) -> Result<Certs> {
    let ca = CertificateAuthority::init_dir(&dir.join("ca"), TrustDomain::new("cluster.local")?)?;
    let issue = |sa: &str, dns: &[String]| -> Result<IdentityFiles> {
        let id = SpiffeId::parse(&spiffe(sa))?;
        let (svid, key) =
            ca.issue_with_new_key_and_dns_names(&id, dns, None, time::OffsetDateTime::now_utc())?;
        let out = dir.join(sa);
        std::fs::create_dir_all(&out)?;
        let pems = svid.istio_chain_pem();
        let (chain, bundle) = pems.split_at(1 + svid.intermediates.len());
        let files = IdentityFiles {
            cert: out.join("cert.pem"),
            key: out.join("key.pem"),
            bundle: out.join("bundle.pem"),
            combined: out.join("combined.pem"),
        };
        std::fs::write(&files.cert, chain.concat())?;
        std::fs::write(&files.key, &key)?;
        std::fs::write(&files.bundle, bundle.concat())?;
        std::fs::write(&files.combined, format!("{}{key}", chain.concat()))?;
        Ok(files)
    };
    Ok(Certs {
        client: issue(CLIENT_SA, &[])?,
        server: issue(SERVER_SA, &[SERVER_DNS.to_owned()])?,
    })
}
