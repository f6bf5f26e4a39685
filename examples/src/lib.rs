//! Runnable examples of the mesh. Each example keeps its mesh configuration in
//! a folder beside its code, or writes it at start; this crate tells programs
//! and tests where, and holds what the single-process examples share: a CA
//! and free ports on 127.0.0.1.
//!
//! | example | run | shows |
//! | --- | --- | --- |
//! | `hello-mesh` | `cargo run -p examples --bin hello-mesh` | v1/v2 of one service, 90/10, mTLS identities, Istio metrics |
//! | `grpc` | `cargo run -p examples --bin grpc` | a tonic greeter behind an AuthorizationPolicy |
//! | WordPress canary | `examples/wordpress-canary/run.sh` | the sidecar in front of unmodified programs |

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::Context;
use mesh_ca::CertificateAuthority;
use mesh_core::identity::{SpiffeId, TrustDomain};

/// The folder holding the WordPress canary's mesh configuration: the reference
/// article's three listings plus the services and workloads behind them.
pub fn wordpress_canary_mesh_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("wordpress-canary/mesh")
}

/// The gRPC greeter of `proto/helloworld.proto`: messages and tonic stubs.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod helloworld {
    tonic::include_proto!("helloworld");
}

/// A mesh CA kept in a folder, as `mesh-ca init` makes it, issuing
/// identities as `mesh-ca issue` does: `cert.pem`, `key.pem` and
/// `bundle.pem` in a folder per service account, ready for
/// `Mesh::builder().identity_files(..)`.
#[derive(Debug)]
pub struct LocalCa {
    ca: CertificateAuthority,
    dir: PathBuf,
}

/// Where an identity's files are.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    /// The SPIFFE ID the certificate names.
    pub id: SpiffeId,
    /// The leaf, then any intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
    /// The roots of the trust domain.
    pub bundle: PathBuf,
}

impl LocalCa {
    /// A new root CA for `trust_domain` in `dir/ca`; identities go in
    /// `dir/<service account>/`.
    pub fn init(dir: &Path, trust_domain: &str) -> anyhow::Result<Self> {
        let td = TrustDomain::new(trust_domain)?;
        let ca = CertificateAuthority::init_dir(&dir.join("ca"), td)?;
        Ok(Self {
            ca,
            dir: dir.to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    /// Issues an X.509-SVID for `ns/<namespace>/sa/<service_account>` with
    /// the CA's default lifetime and writes it out.
    pub fn issue(&self, namespace: &str, service_account: &str) -> anyhow::Result<IdentityFiles> {
        let id = SpiffeId::for_workload(self.ca.trust_domain(), namespace, service_account)?;
        let (svid, key) = self
            .ca
            .issue_with_new_key(&id, None, time::OffsetDateTime::now_utc())?;
        // Istio's chain order: leaf, intermediates, then the roots.
        let pems = svid.istio_chain_pem();
        let (chain, roots) = pems.split_at(1 + svid.intermediates.len());
        let out = self.dir.join(format!("{namespace}.{service_account}"));
        std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
        let files = IdentityFiles {
            id,
            cert: out.join("cert.pem"),
            key: out.join("key.pem"),
            bundle: out.join("bundle.pem"),
        };
        for (path, text, mode) in [
            (&files.cert, chain.concat(), 0o644),
            (&files.key, key, 0o600),
            (&files.bundle, roots.concat(), 0o644),
        ] {
            write(path, &text, mode).with_context(|| path.display().to_string())?;
        }
        Ok(files)
    }
}

fn write(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// `n` distinct free ports on 127.0.0.1, for WorkloadEntries written before
/// their servers start. All are held open until every one is chosen, so
/// they differ; another process could still take one before it is bound
/// again, which is fine for an example on a developer machine.
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        *port = l.local_addr()?.port();
        held.push(l);
    }
    Ok(ports)
}

/// The lines of a Prometheus text exposition that are samples of `metric`.
pub fn samples<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}
