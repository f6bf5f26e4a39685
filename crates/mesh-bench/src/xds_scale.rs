//! `mesh-bench xds-scale`: the control plane at the size of a real mesh,
//! in one process. A configuration of `--services` services with
//! `--endpoints` WorkloadEntries each, spread over `--namespaces`
//! namespaces whose ServiceEntries are exported to their own namespace only
//! (`exportTo: ["."]`: each data plane's view is its namespace), and
//! `--clients` data planes (`mesh_tower::xds::XdsClient`, each with its own
//! SVID, stream and `Store`, exactly what a sidecar runs), a client
//! WorkloadEntry each, spread over the namespaces too.
//!
//! Measured: the time until every client has its first configuration; then,
//! `--changes` times, one endpoint's address changed in one namespace's file
//! (what a pod restart does): the time from the write to each client of
//! that namespace having applied it (p50, p99, max; this includes the
//! control plane's file watcher and its reload of the whole folder), that no
//! client of another namespace was pushed anything, the bytes and
//! responses sent per change, the process's CPU time and resident memory
//! (the control plane before the clients; what the clients add, per client
//! and per service a client sees).
//!
//! The clients share the process and its two cores with the control plane:
//! the figures are an upper bound on the control plane's own cost.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use mesh_ca::{CertificateAuthority, CredentialStore, Credentials, TokenStore, TrustBundleSet};
use mesh_control::{ConfigServer, ControlPlane, ControlPlaneConfig};
use mesh_core::identity::{SpiffeId, TrustDomain};
use mesh_core::store::Store;
use mesh_tower::xds::{XdsClient, XdsConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// `mesh-bench xds-scale`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ScaleArgs {
    /// Services in the mesh.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// WorkloadEntries (endpoints) per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Namespaces the services and clients are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Simulated data planes.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Endpoint changes to time.
    #[arg(long, default_value_t = 20)]
    changes: usize,
}

fn td() -> Result<TrustDomain> {
    Ok(TrustDomain::new("cluster.local")?)
}

/// One namespace's file; endpoint `bump` of service 0 gets another address.
fn namespace_yaml(a: &ScaleArgs, ns: usize, bump: usize) -> String {
    let per_ns = a.services / a.namespaces;
    let mut out = String::new();
    for s in 0..per_ns {
        let svc = ns * per_ns + s;
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: svc-{svc}, namespace: ns-{ns}}}\n\
             spec: {{hosts: [svc-{svc}.ns-{ns}.svc.cluster.local], exportTo: [\".\"], \
             ports: [{{number: 80, name: http}}], workloadSelector: {{labels: {{app: svc-{svc}}}}}}}\n---\n"
        ));
        for e in 0..a.endpoints {
            let n = svc * a.endpoints + e;
            let last = if s == 0 && e == 0 { 200 + bump % 50 } else { 1 };
            out.push_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
                 metadata: {{name: svc-{svc}-{e}, namespace: ns-{ns}}}\n\
                 spec: {{address: 10.{}.{}.{last}, labels: {{app: svc-{svc}}}, serviceAccount: svc-{svc}}}\n---\n",
                n / 256 % 256,
                n % 256,
            ));
        }
    }
    for c in (0..a.clients).filter(|c| c % a.namespaces == ns) {
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
             metadata: {{name: client-{c}, namespace: ns-{ns}}}\n\
             spec: {{address: 10.250.{}.{}, labels: {{app: client}}, serviceAccount: client}}\n---\n",
            c / 256,
            c % 256
        ));
    }
    out
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn metric(plane: &ControlPlane, name: &str) -> u64 {
    plane
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// When each client applied each version: client → versions applied, with
/// the instant.
type Applied = Arc<Mutex<Vec<Vec<(u64, Instant)>>>>;

pub(crate) fn run(a: ScaleArgs) -> Result<()> {
    if a.namespaces == 0 || a.services % a.namespaces != 0 || a.changes > a.namespaces {
        bail!("--services must be a multiple of --namespaces, and --changes at most --namespaces");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: ScaleArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca_dir = dir.path().join("ca");
    let mesh = dir.path().join("mesh");
    std::fs::create_dir_all(&mesh)?;
    let ca = CertificateAuthority::init_dir(&ca_dir, td()?)?;
    for ns in 0..a.namespaces {
        write_atomic(
            &mesh.join(format!("ns-{ns}.yaml")),
            &namespace_yaml(&a, ns, 0),
        )?;
    }
    let documents = a.services * (1 + a.endpoints) + a.clients;
    println!(
        "xds-scale: {} services, {} endpoints, {} namespaces, {} clients ({documents} documents)",
        a.services,
        a.services * a.endpoints,
        a.namespaces,
        a.clients
    );
    let (cpu0, rss0) = (
        crate::procs::own_cpu_seconds(),
        crate::procs::own_rss_mib().0,
    );
    let started = Instant::now();
    let xds = ConfigServer::from_files(&mesh).context("the configuration")?;
    let loaded = started.elapsed();
    let plane = ControlPlane::start_serving(
        Arc::new(CertificateAuthority::open_dir(&ca_dir)?),
        TokenStore::new(&ca_dir),
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        ControlPlaneConfig::default(),
        xds,
    )
    .await?;
    let (cpu_cp, rss_cp) = (
        crate::procs::own_cpu_seconds(),
        crate::procs::own_rss_mib().0,
    );
    println!(
        "control plane: loaded and compiled in {:.2} s; {:.2} CPU s; RSS {:.1} MiB (+{:.1} MiB for the configuration)",
        loaded.as_secs_f64(),
        cpu_cp - cpu0,
        rss_cp,
        rss_cp - rss0
    );

    // One SVID for every client (they share the identity `client` of their
    // namespace): issued offline, as files would be.
    let mut creds: BTreeMap<usize, CredentialStore> = BTreeMap::new();
    for ns in 0..a.namespaces {
        let id = SpiffeId::for_workload(&td()?, &format!("ns-{ns}"), "client")?;
        let (svid, key) = ca.issue_with_new_key(&id, None, time::OffsetDateTime::now_utc())?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
        creds.insert(
            ns,
            CredentialStore::new(Credentials::from_issued(&svid, key, TrustBundleSet::new())?),
        );
    }
    let server_id = mesh_ca::ca_id(&td()?);
    let applied: Applied = Arc::new(Mutex::new(vec![Vec::new(); a.clients]));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let connect = Instant::now();
    let mut clients: Vec<(XdsClient, Arc<Store>)> = Vec::with_capacity(a.clients);
    for c in 0..a.clients {
        let ns = c % a.namespaces;
        let applied = applied.clone();
        let ready = ready_tx.clone();
        let store = Arc::new(Store::new().on_apply(move |v| {
            let now = Instant::now();
            let mut all = applied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if all[c].is_empty() {
                let _ = ready.send(c);
            }
            all[c].push((v, now));
        }));
        let config = XdsConfig::new(
            plane.ca_addr().to_string(),
            server_id.clone(),
            &format!("ns-{ns}/client-{c}"),
        );
        clients.push((
            XdsClient::spawn(config, creds[&ns].clone(), store.clone()),
            store,
        ));
    }
    let mut ready = 0;
    while ready < a.clients {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(_)) => ready += 1,
            _ => bail!(
                "only {ready} of {} clients got a first configuration in 120 s",
                a.clients
            ),
        }
    }
    let all_ready = connect.elapsed();
    // Let the ACKs and allocator settle before reading memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu_ready, rss_ready) = (
        crate::procs::own_cpu_seconds(),
        crate::procs::own_rss_mib().0,
    );
    let per_ns_services = a.services / a.namespaces;
    let per_client_kib = (rss_ready - rss_cp) * 1024.0 / a.clients as f64;
    println!(
        "clients: all {} with their first configuration in {:.2} s; {:.2} CPU s; \
         +{:.1} MiB RSS ({per_client_kib:.0} KiB per client, {:.0} KiB per service a client sees)",
        a.clients,
        all_ready.as_secs_f64(),
        cpu_ready - cpu_cp,
        rss_ready - rss_cp,
        per_client_kib / per_ns_services as f64
    );

    // One endpoint change per namespace, one at a time.
    let mut latencies = Vec::new();
    let mut bytes = Vec::new();
    let mut responses = Vec::new();
    let mut leaked = 0usize;
    let cpu_before_changes = crate::procs::own_cpu_seconds();
    for change in 0..a.changes {
        let ns = change;
        let before: Vec<usize> = {
            let all = applied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            all.iter().map(Vec::len).collect()
        };
        let (b0, p0) = (
            metric(&plane, "mesh_xds_sent_bytes_total"),
            metric(&plane, "mesh_xds_pushes_total"),
        );
        let t0 = Instant::now();
        write_atomic(
            &mesh.join(format!("ns-{ns}.yaml")),
            &namespace_yaml(&a, ns, change + 1),
        )?;
        let targets: Vec<usize> = (0..a.clients).filter(|c| c % a.namespaces == ns).collect();
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let done = {
                let all = applied
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                targets.iter().all(|c| all[*c].len() > before[*c])
            };
            if done {
                break;
            }
            if Instant::now() > deadline {
                bail!("change {change}: not every client of ns-{ns} applied it in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Others: give a stray push time to arrive, then count.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let all = applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in &targets {
            let (_, at) = all[*c][before[*c]];
            latencies.push(at.duration_since(t0));
        }
        leaked += (0..a.clients)
            .filter(|c| c % a.namespaces != ns && all[*c].len() > before[*c])
            .count();
        drop(all);
        bytes.push(metric(&plane, "mesh_xds_sent_bytes_total") - b0);
        responses.push(metric(&plane, "mesh_xds_pushes_total") - p0);
    }
    let cpu_changes = crate::procs::own_cpu_seconds() - cpu_before_changes;
    latencies.sort();
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    println!(
        "endpoint changes: {} in {} namespaces, each reaching its {} clients: \
         push latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (write to applied, watcher and reload included)",
        a.changes,
        a.changes,
        a.clients / a.namespaces,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    println!(
        "per change: {:.0} responses, {:.0} bytes ({:.0} bytes per response); \
         {leaked} pushes to clients of other namespaces; {:.3} CPU s per change",
        mean(&responses),
        mean(&bytes),
        mean(&bytes) / mean(&responses).max(1.0),
        cpu_changes / a.changes.max(1) as f64
    );
    println!(
        "process: RSS {:.1} MiB at the end",
        crate::procs::own_rss_mib().0
    );
    if leaked > 0 {
        bail!("{leaked} clients outside the changed namespace were pushed a change");
    }
    drop(clients);
    plane.shutdown().await;
    Ok(())
}
