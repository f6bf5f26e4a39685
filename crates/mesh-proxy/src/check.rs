//! The `check` and `explain` commands on a folder: each prints its report
//! (a table, or JSON for tools; [`mesh_control::report`] makes it, the
//! same one the control plane's admin endpoint answers) to standard output,
//! errors to standard error, and returns the exit status the command line
//! gives.

use std::path::Path;
use std::process::ExitCode;

use mesh_control::report::{self, Output};
use mesh_core::analyze;
use mesh_core::error::ConfigErrors;
use mesh_core::explain::Query;
use mesh_core::resources::Resources;
use mesh_core::snapshot::{self, Snapshot};

fn load(config: &Path) -> Result<(Resources, Snapshot), ConfigErrors> {
    let resources = mesh_core::load::load_path(config)?;
    let snap = snapshot::compile(&resources)?;
    Ok((resources, snap))
}

/// Prints `out` and returns its exit status.
pub fn print(out: &Output) -> ExitCode {
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    ExitCode::from(out.exit)
}

/// Checks the configuration at `config`: the TLS table (server mTLS mode
/// against the client TLS of DestinationRules, per service port) and the
/// analyzers. 0 clean (warnings allowed), 1 errors or conflicts, 2 the
/// configuration cannot be read.
pub fn check(config: &Path, json: bool, options: analyze::CheckOptions) -> ExitCode {
    print(&match load(config) {
        Ok((resources, snap)) => report::check(&resources, &snap, options, json),
        Err(e) => report::unreadable(&e, json),
    })
}

/// Explains the decision for one request, step by step, naming the
/// resource behind each step. 0 when the request would get through, 1 when
/// some step refuses it, 2 when the configuration or the query cannot be
/// read.
pub fn explain(config: &Path, query: &Query, json: bool) -> ExitCode {
    print(&match load(config) {
        Ok((resources, snap)) => report::explain(&resources, &snap, query, json),
        Err(e) => report::unreadable(&e, json),
    })
}

/// Where a cluster's configuration is read from, for `check` and
/// `explain` on a live cluster (`--kubeconfig`).
#[derive(Debug, Clone)]
pub struct ClusterSource {
    /// The kubeconfig file; `None`: `KUBECONFIG`, then `~/.kube/config`
    /// (or in-cluster, run from a pod).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context (default: its current one).
    pub context: Option<String>,
    /// The MeshConfig ConfigMap the control plane reads: namespace and name.
    pub mesh_config: (String, String),
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// How long every kind may take to list.
    pub timeout: std::time::Duration,
}

/// Reads what the cluster holds, as the control plane's Kubernetes source
/// reads it (the same watches and conversion, then the file loader's
/// validation), once; or the report of why it cannot be read.
fn load_cluster(cluster: &ClusterSource, json: bool) -> Result<(Resources, Snapshot), Output> {
    let unreachable = |why: String| {
        let why = format!("the cluster cannot be read: {why}");
        Output {
            stdout: if json {
                format!(
                    "{:#}\n",
                    serde_json::json!({"readable": false, "error": why})
                )
            } else {
                String::new()
            },
            stderr: if json {
                String::new()
            } else {
                format!("error: {why}\n")
            },
            exit: report::UNREADABLE,
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unreachable(format!("cannot start the runtime: {e}")))?;
    let read = runtime.block_on(async {
        let client =
            mesh_kube::client::client(cluster.kubeconfig.as_deref(), cluster.context.as_deref())
                .await
                .map_err(mesh_kube::source::ReadError::NotListed)?;
        let options = mesh_kube::KubeOptions {
            cluster_domain: cluster.cluster_domain.clone(),
            mesh_config: Some(cluster.mesh_config.clone()),
            ..mesh_kube::KubeOptions::default()
        };
        mesh_kube::KubeSource::read_once(client, options, cluster.timeout).await
    });
    let resources = match read {
        Ok(r) => r,
        Err(mesh_kube::source::ReadError::NotListed(why)) => return Err(unreachable(why)),
        Err(mesh_kube::source::ReadError::Invalid(e)) => return Err(report::unreadable(&e, json)),
    };
    let snap = snapshot::compile(&resources).map_err(|e| report::unreadable(&e, json))?;
    Ok((resources, snap))
}

/// `check` on a live cluster: the same table and analyzers as for a
/// folder, over what the control plane would read from it.
pub fn check_cluster(
    cluster: &ClusterSource,
    json: bool,
    options: analyze::CheckOptions,
) -> ExitCode {
    print(&match load_cluster(cluster, json) {
        Ok((resources, snap)) => report::check(&resources, &snap, options, json),
        Err(out) => out,
    })
}

/// `explain` on a live cluster.
pub fn explain_cluster(cluster: &ClusterSource, query: &Query, json: bool) -> ExitCode {
    print(&match load_cluster(cluster, json) {
        Ok((resources, snap)) => report::explain(&resources, &snap, query, json),
        Err(out) => out,
    })
}

/// `check` on the configuration a running control plane serves, read from
/// its admin (metrics) address (`mesh-ca serve --metrics-addr`).
pub fn check_remote(admin: &str, json: bool, options: analyze::CheckOptions) -> ExitCode {
    let mut params = Vec::new();
    if json {
        params.push(("output", "json".to_owned()));
    }
    if options.capture {
        params.push(("capture", "true".to_owned()));
    }
    remote(admin, mesh_control::CHECK_PATH, &params)
}

/// `explain` on the configuration a running control plane serves.
pub fn explain_remote(admin: &str, query: &Query, json: bool) -> ExitCode {
    let mut params = vec![
        ("from", query.from.clone()),
        ("to", query.to.clone()),
        ("method", query.method.clone()),
        ("path", query.path.clone()),
    ];
    params.extend(
        query
            .headers
            .iter()
            .map(|(k, v)| ("header", format!("{k}={v}"))),
    );
    if json {
        params.push(("output", "json".to_owned()));
    }
    remote(admin, mesh_control::EXPLAIN_PATH, &params)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GETs a report from the control plane's admin address and prints it;
/// exit 2 (with the reason) when it cannot be had.
fn remote(admin: &str, path: &str, params: &[(&str, String)]) -> ExitCode {
    match fetch(admin, path, params) {
        Ok((exit, body)) => {
            print!("{body}");
            ExitCode::from(exit)
        }
        Err(e) => {
            eprintln!("error: --control-plane-admin {admin}: {e}");
            ExitCode::from(report::UNREADABLE)
        }
    }
}

fn fetch(admin: &str, path: &str, params: &[(&str, String)]) -> Result<(u8, String), String> {
    use std::io::{Read as _, Write as _};
    if admin.starts_with("https://") {
        return Err("the admin address is plain HTTP (http://HOST:PORT or HOST:PORT)".into());
    }
    let authority = admin
        .strip_prefix("http://")
        .unwrap_or(admin)
        .trim_end_matches('/');
    if authority.contains('/') {
        return Err("give the address only (http://HOST:PORT), not a path".into());
    }
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let target = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let timeout = std::time::Duration::from_secs(10);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut tcp =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        tcp,
        "GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the control plane's answer has no head")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default();
    let exit = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case(mesh_control::EXIT_HEADER)
            .then(|| value.trim().parse::<u8>().ok())
            .flatten()
    });
    match (status, exit) {
        ("200", Some(exit)) => Ok((exit, body.to_owned())),
        ("404", _) => Err(format!(
            "{path} is not served there: is it `mesh-ca serve --config` with --metrics-addr?"
        )),
        (status, _) => Err(format!("answered {status}: {}", body.trim())),
    }
}
