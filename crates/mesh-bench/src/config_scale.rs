//! `mesh-bench config-scale`: what the configuration costs as the mesh
//! grows (issue 16). For each size, generated Istio YAML as a new user
//! would write it: services spread over `--namespaces` namespaces (one file
//! each), every service a ServiceEntry selecting its workloads, a
//! DestinationRule with two subsets, a 90/10 VirtualService and
//! `--endpoints` WorkloadEntries (v1 and v2); a mesh-wide STRICT
//! PeerAuthentication and one AuthorizationPolicy per namespace.
//!
//! Measured, each size in a fresh child process (so its peak memory is its
//! own): the load (read, parse, validate: what `check` and every reload pay
//! before compiling), the compile of the snapshot, `check`'s analysis, the
//! peak resident memory, and the time from a changed file (one endpoint's
//! address, as a pod restart does) to the new snapshot in force through
//! [`mesh_core::store::FileWatcher`] (which waits [`SETTLE`] for a burst of
//! events to end: that wait is printed beside the figure).
//!
//! ```text
//! cargo run --release -p mesh-bench -- config-scale --services 100,1000,10000
//! ```

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use mesh_core::store::{FileSource, FileWatcher, SETTLE, Store};
use serde::{Deserialize, Serialize};

use crate::procs::own_rss_mib;

/// `mesh-bench config-scale`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ConfigScaleArgs {
    /// Mesh sizes, in services (each a multiple of --namespaces).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    services: Vec<usize>,
    /// Namespaces the services are spread over, one file each.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// WorkloadEntries per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Compiles (and file changes) timed per size; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Skips the file-change measurement (for a profile of load and
    /// compile alone).
    #[arg(long)]
    no_change: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Runs one size in this process and prints its figures as JSON (the
    /// harness starts itself with it).
    #[arg(long, hide = true)]
    child: bool,
}

/// The figures of one size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SizeResult {
    services: usize,
    workloads: usize,
    yaml_mib: f64,
    documents: usize,
    /// Read, parse and validate, seconds (median).
    load_s: f64,
    /// `snapshot::compile`, seconds (median).
    compile_s: f64,
    /// `analyze::check`, seconds (median).
    check_s: f64,
    /// Resident memory before loading anything, MiB.
    rss_start_mib: f64,
    /// Resident memory with the resources and one snapshot held, MiB.
    rss_held_mib: f64,
    /// Peak resident memory of load, compile and check, MiB.
    peak_mib: f64,
    /// From the rename of a changed file to the new snapshot in force,
    /// seconds (median; includes the watcher's settle wait).
    change_s: f64,
    /// Peak resident memory including the reloads, MiB.
    peak_after_changes_mib: f64,
}

/// One namespace's file; endpoint 0 of the namespace's first service gets
/// address `.{200 + bump}`.
fn namespace_yaml(a: &ConfigScaleArgs, services: usize, ns: usize, bump: usize) -> String {
    let per_ns = services / a.namespaces;
    let mut out = String::new();
    out.push_str(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: allow-mesh, namespace: ns-{ns}}}\n\
         spec: {{action: ALLOW, rules: [{{from: [{{source: {{principals: [\"cluster.local/ns/ns-{ns}/sa/*\"]}}}}], \
         to: [{{operation: {{methods: [GET, POST]}}}}]}}]}}\n---\n"
    ));
    for s in 0..per_ns {
        let svc = ns * per_ns + s;
        let host = format!("svc-{svc}.ns-{ns}.svc.cluster.local");
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
             metadata: {{name: svc-{svc}, namespace: ns-{ns}}}\n\
             spec: {{hosts: [{host}], location: MESH_INTERNAL, resolution: STATIC, \
             ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8080}}], \
             workloadSelector: {{labels: {{app: svc-{svc}}}}}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {{name: svc-{svc}, namespace: ns-{ns}}}\n\
             spec: {{host: {host}, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}, \
             subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {{name: svc-{svc}, namespace: ns-{ns}}}\n\
             spec: {{hosts: [{host}], http: [{{route: [\
             {{destination: {{host: {host}, subset: v1}}, weight: 90}}, \
             {{destination: {{host: {host}, subset: v2}}, weight: 10}}], \
             retries: {{attempts: 2, perTryTimeout: 1s}}, timeout: 5s}}]}}\n---\n"
        ));
        for e in 0..a.endpoints {
            let n = svc * a.endpoints + e;
            let last = if s == 0 && e == 0 { 200 + bump % 50 } else { 1 };
            let version = if e + 1 == a.endpoints { "v2" } else { "v1" };
            out.push_str(&format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\n\
                 metadata: {{name: svc-{svc}-{e}, namespace: ns-{ns}}}\n\
                 spec: {{address: 10.{}.{}.{last}, labels: {{app: svc-{svc}, version: {version}}}, \
                 serviceAccount: svc-{svc}}}\n---\n",
                n / 256 % 256,
                n % 256,
            ));
        }
    }
    out
}

const MESH_FILE: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
    metadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn run(a: ConfigScaleArgs) -> Result<()> {
    if a.namespaces == 0
        || a.repeat == 0
        || a.services.iter().any(|s| *s == 0 || s % a.namespaces != 0)
    {
        bail!("every --services must be a positive multiple of --namespaces; --repeat at least 1");
    }
    if a.child {
        let [services] = a.services[..] else {
            bail!("--child runs one size");
        };
        let r = one_size(&a, services)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for &services in &a.services {
        eprintln!("config-scale: {services} services ...");
        let out = Command::new(&exe)
            .args(["config-scale", "--child", "--services"])
            .arg(services.to_string())
            .args(["--namespaces", &a.namespaces.to_string()])
            .args(["--endpoints", &a.endpoints.to_string()])
            .args(["--repeat", &a.repeat.to_string()])
            .args(a.no_change.then_some("--no-change"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running a size")?;
        if !out.status.success() {
            bail!("the run of {services} services failed: {}", out.status);
        }
        let r: SizeResult = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("reading the figures of {services} services"))?;
        results.push(r);
    }
    println!("{}", markdown(&a, &results));
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

fn markdown(a: &ConfigScaleArgs, rs: &[SizeResult]) -> String {
    let mut out = format!(
        "Configuration at scale: {} namespaces, {} WorkloadEntries per service, median of {}\n\n\
         | services | workloads | YAML MiB | documents | load s | compile s | check s | \
         compile µs/service | peak MiB | held MiB | file change → in force s | peak with reloads MiB |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        a.namespaces, a.endpoints, a.repeat
    );
    for r in rs {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.0} | {:.0} | {:.3} | {:.0} |\n",
            r.services,
            r.workloads,
            r.yaml_mib,
            r.documents,
            r.load_s,
            r.compile_s,
            r.check_s,
            r.compile_s * 1e6 / r.services as f64,
            r.peak_mib,
            r.rss_held_mib - r.rss_start_mib,
            r.change_s,
            r.peak_after_changes_mib,
        ));
    }
    // Growth between consecutive sizes: 1.0 is linear, 2.0 quadratic.
    for w in rs.windows(2) {
        let n = (w[1].services as f64 / w[0].services as f64).ln();
        let exp = |x: f64, y: f64| {
            if x > 0.0 && y > 0.0 {
                (y / x).ln() / n
            } else {
                f64::NAN
            }
        };
        out.push_str(&format!(
            "\n{} → {} services: load grows as n^{:.2}, compile as n^{:.2}, check as n^{:.2}",
            w[0].services,
            w[1].services,
            exp(w[0].load_s, w[1].load_s),
            exp(w[0].compile_s, w[1].compile_s),
            exp(w[0].check_s, w[1].check_s),
        ));
    }
    out.push_str(&format!(
        "\n\nThe file change figure includes the watcher's settle wait of {} ms.\n",
        SETTLE.as_millis()
    ));
    out
}

fn one_size(a: &ConfigScaleArgs, services: usize) -> Result<SizeResult> {
    let dir = tempfile::tempdir()?;
    let mut bytes = 0usize;
    for ns in 0..a.namespaces {
        let text = namespace_yaml(a, services, ns, 0);
        bytes += text.len();
        std::fs::write(dir.path().join(format!("ns-{ns}.yaml")), text)?;
    }
    std::fs::write(dir.path().join("mesh.yaml"), MESH_FILE)?;
    let rss_start_mib = own_rss_mib().0;

    let (mut loads, mut compiles, mut checks) = (Vec::new(), Vec::new(), Vec::new());
    let mut held = None;
    for _ in 0..a.repeat {
        // The previous round's resources and snapshot are freed first, so
        // the peak is one round's.
        drop(held.take());
        let t = Instant::now();
        let resources = mesh_core::load::load_path(dir.path())
            .map_err(|e| anyhow::anyhow!("the generated configuration is refused: {e}"))?;
        loads.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let snap = mesh_core::snapshot::compile(&resources)
            .map_err(|e| anyhow::anyhow!("the generated configuration does not compile: {e}"))?;
        compiles.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let report = mesh_core::analyze::check(&snap, &resources);
        checks.push(t.elapsed().as_secs_f64());
        if report.has_errors() {
            bail!("check finds errors in the generated configuration");
        }
        held = Some((resources, snap));
    }
    let (rss_held_mib, peak_mib) = own_rss_mib();
    let (workloads, documents) = held.as_ref().map_or((0, 0), |(r, s)| {
        (
            s.workloads.len(),
            r.service_entries.len()
                + r.destination_rules.len()
                + r.virtual_services.len()
                + r.workload_entries.len()
                + r.authorization_policies.len()
                + r.peer_authentications.len(),
        )
    });
    if workloads != services * a.endpoints {
        bail!(
            "{workloads} workloads compiled, {} expected",
            services * a.endpoints
        );
    }
    drop(held);

    let mut changes = Vec::new();
    if !a.no_change {
        changes = file_changes(a, services, dir.path())?;
    }
    Ok(SizeResult {
        services,
        workloads,
        yaml_mib: bytes as f64 / (1024.0 * 1024.0),
        documents,
        load_s: median(loads),
        compile_s: median(compiles),
        check_s: median(checks),
        rss_start_mib,
        rss_held_mib,
        peak_mib,
        change_s: median(changes),
        peak_after_changes_mib: own_rss_mib().1,
    })
}

/// Seconds from each changed file to its snapshot in force, through the
/// watcher a proxy runs.
fn file_changes(a: &ConfigScaleArgs, services: usize, dir: &Path) -> Result<Vec<f64>> {
    let source = FileSource::new(dir);
    let store = Arc::new(Store::new());
    store
        .reload(&source)
        .map_err(|e| anyhow::anyhow!("the store refuses the configuration: {e}"))?;
    let watcher = FileWatcher::spawn(store.clone(), source)?;
    let mut changes = Vec::new();
    for bump in 1..=a.repeat {
        let before = store.stats().version;
        let path = dir.join(format!("ns-{}.yaml", bump % a.namespaces));
        let text = namespace_yaml(a, services, bump % a.namespaces, bump);
        let t = Instant::now();
        write_atomic(&path, &text)?;
        loop {
            let stats = store.stats();
            if stats.version > before {
                break;
            }
            if stats.rejections > 0 {
                bail!(
                    "the changed configuration is refused: {:?}",
                    stats.last_error
                );
            }
            if t.elapsed() > Duration::from_secs(300) {
                bail!("the change was not applied within 300 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        changes.push(t.elapsed().as_secs_f64());
    }
    drop(watcher);
    Ok(changes)
}
