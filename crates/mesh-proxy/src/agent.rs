//! The agent of a proxyless gRPC workload (Istio's pilot-agent in its
//! proxyless role): it obtains the workload's SVID from mesh-ca (a join
//! token first, then renewals over mTLS), writes it to files that gRPC's
//! `file_watcher` certificate provider reloads, and writes the xDS
//! bootstrap that points the workload's gRPC library at the control plane.
//! The workload itself (Python, Go, Java, C++ or Node gRPC) runs unchanged
//! with `GRPC_XDS_BOOTSTRAP` set to the bootstrap file, and takes its
//! routing, endpoints and mTLS from the control plane (gRFC A27, A28, A29).
//!
//! The files, in the agent's folder:
//!
//! | file | what |
//! | --- | --- |
//! | `cert.pem` | the SVID and its intermediates |
//! | `key.pem` | its private key (PKCS#8, mode 0600) |
//! | `bundle.pem` | the roots of the trust domain |
//! | `bootstrap.json` | gRPC's xDS bootstrap (gRFC A27) |
//!
//! The bootstrap names the control plane as the xDS server with the
//! `tls` channel credentials of gRFC A65 (mTLS with the same files: the
//! control plane admits a stream only with the workload's SVID), the node
//! id the control plane expects (`namespace/name` of the workload's
//! WorkloadEntry), the `file_watcher` provider the served clusters and
//! listeners name, and the template of an xDS server's listener name.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_proxy::IdentitySource;
//! use mesh_proxy::agent::{Agent, AgentConfig};
//!
//! let agent = Agent::start(AgentConfig {
//!     control_plane: "localhost:15012".into(),
//!     namespace: "demo".into(),
//!     workload: "echo-v1".into(),
//!     identity: "spiffe://cluster.local/ns/demo/sa/echo".parse()?,
//!     source: IdentitySource::ca("localhost:15012", "root-cert.pem").with_token("..."),
//!     dir: "agent/".into(),
//! })
//! .await?;
//! // GRPC_XDS_BOOTSTRAP=agent/bootstrap.json python3 server.py
//! println!("{}", agent.bootstrap_path().display());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use mesh_ca::{SVID_BUNDLE_FILE, SVID_CERT_FILE, SVID_KEY_FILE};
use mesh_core::identity::SpiffeId;
use serde_json::{Value, json};

use crate::IdentitySource;
use crate::identity::Identity;

/// The bootstrap's file name in the agent's folder.
pub const BOOTSTRAP_FILE: &str = "bootstrap.json";

/// The prefix of an xDS server's listener name, as the control plane
/// serves it (`mesh_control::grpc::SERVER_LISTENER_PREFIX`).
pub const SERVER_LISTENER_PREFIX: &str = "xds.mesh.local/grpc/lds/inbound/";

/// The certificate provider instance the control plane's resources name
/// (`mesh_control::grpc::CERT_PROVIDER`).
pub const CERT_PROVIDER: &str = "default";

/// What the agent serves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The control plane, `host:port`, as the workload's gRPC dials it: the
    /// host must be a name in the control plane's serving certificate
    /// (`mesh-ca serve --serving-dns-name`), which gRPC checks.
    pub control_plane: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's WorkloadEntry name.
    pub workload: String,
    /// The workload's identity, the one its WorkloadEntry names.
    pub identity: SpiffeId,
    /// mesh-ca, with the join token for the first certificate.
    pub source: IdentitySource,
    /// Where the files go; created (mode 0700) if missing.
    pub dir: PathBuf,
}

/// A running agent: it renews the SVID (rewriting the files) until
/// dropped.
#[derive(Debug)]
pub struct Agent {
    _identity: Arc<Identity>,
    dir: PathBuf,
}

impl Agent {
    /// Obtains the first SVID (waiting, with backoff, until mesh-ca
    /// answers), writes it and the bootstrap, then renews in the
    /// background.
    pub async fn start(config: AgentConfig) -> Result<Self> {
        if config.source.is_files() {
            bail!(
                "the agent obtains the workload's SVID from mesh-ca; with certificate files, \
                 point the bootstrap at them instead"
            );
        }
        create_private_dir(&config.dir)?;
        let dir = config
            .dir
            .canonicalize()
            .with_context(|| config.dir.display().to_string())?;
        let identity = config
            .source
            .clone()
            .writing_to(&dir)
            .obtain(&config.identity)
            .await?;
        let bootstrap = bootstrap(
            &config.control_plane,
            &format!("{}/{}", config.namespace, config.workload),
            &dir,
        );
        let path = dir.join(BOOTSTRAP_FILE);
        let tmp = dir.join(format!("{BOOTSTRAP_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&bootstrap)?)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| path.display().to_string())?;
        Ok(Self {
            _identity: Arc::new(identity),
            dir,
        })
    }

    /// The bootstrap file, for `GRPC_XDS_BOOTSTRAP`.
    pub fn bootstrap_path(&self) -> PathBuf {
        self.dir.join(BOOTSTRAP_FILE)
    }

    /// The folder of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// gRPC's xDS bootstrap (gRFC A27, with A65's mTLS to the server and A29's
/// certificate providers) for node `node` (`namespace/name`) of the
/// control plane at `control_plane`, the SVID files being in `dir`.
pub fn bootstrap(control_plane: &str, node: &str, dir: &Path) -> Value {
    let file = |name: &str| dir.join(name).display().to_string();
    let files = json!({
        "certificate_file": file(SVID_CERT_FILE),
        "private_key_file": file(SVID_KEY_FILE),
        "ca_certificate_file": file(SVID_BUNDLE_FILE),
        // gRPC rereads the files this often; the agent renews at half
        // the lifetime, so a renewal is picked up long before expiry.
        "refresh_interval": "10s",
    });
    json!({
        "xds_servers": [{
            "server_uri": control_plane,
            "channel_creds": [{"type": "tls", "config": files}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node,
            "cluster": node.split_once('/').map_or(node, |(_, name)| name),
            "locality": {},
            "metadata": {"GENERATOR": "mesh"},
        },
        "certificate_providers": {
            CERT_PROVIDER: {"plugin_name": "file_watcher", "config": files},
        },
        "server_listener_resource_name_template": format!("{SERVER_LISTENER_PREFIX}%s"),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_bootstrap_names_the_server_the_node_and_the_files() {
        let b = bootstrap("localhost:15012", "demo/echo-v1", Path::new("/run/agent"));
        assert_eq!(b["xds_servers"][0]["server_uri"], "localhost:15012");
        assert_eq!(b["xds_servers"][0]["channel_creds"][0]["type"], "tls");
        assert_eq!(
            b["xds_servers"][0]["channel_creds"][0]["config"]["certificate_file"],
            "/run/agent/cert.pem"
        );
        assert_eq!(b["node"]["id"], "demo/echo-v1");
        let provider = &b["certificate_providers"]["default"];
        assert_eq!(provider["plugin_name"], "file_watcher");
        assert_eq!(provider["config"]["private_key_file"], "/run/agent/key.pem");
        assert_eq!(
            provider["config"]["ca_certificate_file"],
            "/run/agent/bundle.pem"
        );
        assert_eq!(
            b["server_listener_resource_name_template"],
            "xds.mesh.local/grpc/lds/inbound/%s"
        );
    }
}
