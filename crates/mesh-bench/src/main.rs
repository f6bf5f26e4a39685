//! `mesh-bench`: the mesh side by side with plain hyper, plain rustls, nginx
//! and HAProxy, on one machine, in one command (issue 7).
//!
//! ```text
//! cargo run --release -p mesh-bench                  # the full run (a few minutes)
//! cargo run --release -p mesh-bench -- --smoke       # a second or so per topology
//! cargo run --release -p mesh-bench -- --topology d --topology e1 --duration 20
//! ```
//!
//! The harness pins itself (the load generator) to one core and every
//! process of the system under test to another (`taskset -c`), drives each
//! topology open-loop at fixed rates with latency taken from each request's
//! intended send time, then closed-loop for the maximum throughput, then with
//! a new connection per request, then holds idle mTLS connections; it prints
//! markdown tables and writes the same numbers as JSON.

#![forbid(unsafe_code)]

mod capture;
mod certs;
mod client;
mod config_scale;
mod load;
mod pod_load;
mod procs;
mod profile;
mod report;
mod serve;
mod thirdparty;
mod topo;
mod xds_scale;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::procs::Proc;
use crate::report::{IdleResult, Machine, NewConnResult, ProcResult, Report, Settings, TopoResult};
use crate::topo::{Programs, Running, Topology};

/// Benchmarks the mesh against hyper, rustls, nginx and HAProxy.
#[derive(Debug, Parser)]
#[command(
    name = "mesh-bench",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A server of the system under test (started by the harness).
    #[command(hide = true)]
    Serve(serve::ServeArgs),
    /// A fixed number of requests through (c) or (d), for callgrind.
    Profile(profile::ProfileArgs),
    /// One phase of the load generator, figures as JSON on stdout (run by
    /// the harness inside a pod's network namespace).
    #[command(hide = true)]
    Load(pod_load::LoadArgs),
    /// The control plane at scale: services, endpoints and data planes in
    /// one process; push latency, bytes, CPU and memory.
    XdsScale(xds_scale::ScaleArgs),
    /// The configuration at scale: load, compile, check and reload times
    /// and memory for 100 to 10,000 services.
    ConfigScale(config_scale::ConfigScaleArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// A second or so per topology at small rates: checks that everything
    /// runs, measures nothing worth reading.
    #[arg(long)]
    smoke: bool,
    /// Topologies to run (repeatable); all by default.
    #[arg(long = "topology", value_enum)]
    topologies: Vec<Topology>,
    /// Seconds of each fixed-rate run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The fixed rate, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// The high fixed rate, requests per second.
    #[arg(long, default_value_t = 4000.0)]
    high_rate: f64,
    /// Seconds of the closed-loop maximum-throughput run.
    #[arg(long, default_value_t = 5.0)]
    max_duration: f64,
    /// Keep-alive connections of the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Requests per second with a new connection each.
    #[arg(long, default_value_t = 200.0)]
    new_connection_rate: f64,
    /// Idle mTLS connections held against each mTLS server.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// The load generator's core.
    #[arg(long, default_value_t = 0)]
    loadgen_core: usize,
    /// The system under test's core.
    #[arg(long, default_value_t = 1)]
    sut_core: usize,
    /// Where to write the JSON results (default: next to the binary's
    /// target folder, `mesh-bench-results.json`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// The mesh-proxy binary (default: beside this one, built if missing).
    #[arg(long)]
    mesh_proxy: Option<PathBuf>,
    /// Run the sidecars under this command, for profiling; `{name}` becomes
    /// the sidecar's name, e.g.
    /// `valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.{name}`.
    #[arg(long)]
    sidecar_wrapper: Option<String>,
    /// Do not install nginx and HAProxy when missing.
    #[arg(long)]
    no_install: bool,
}

impl RunArgs {
    fn settings(&self) -> Settings {
        if self.smoke {
            Settings {
                duration_s: 1.0,
                rate: 200.0,
                high_rate: 500.0,
                max_duration_s: 0.5,
                connections: 4,
                new_connection_rate: 50.0,
                idle_connections: 50,
                smoke: true,
            }
        } else {
            Settings {
                duration_s: self.duration,
                rate: self.rate,
                high_rate: self.high_rate,
                max_duration_s: self.max_duration,
                connections: self.connections,
                new_connection_rate: self.new_connection_rate,
                idle_connections: self.idle_connections,
                smoke: false,
            }
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Serve(args)) => serve::run(args),
        Some(Cmd::Profile(args)) => profile::run(args),
        Some(Cmd::Load(args)) => pod_load::run(args),
        Some(Cmd::XdsScale(args)) => xds_scale::run(args),
        Some(Cmd::ConfigScale(args)) => config_scale::run(args),
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let cores_total = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cores.iter().any(|c| c.id == args.loadgen_core)
        && cores.iter().any(|c| c.id == args.sut_core)
        && args.loadgen_core != args.sut_core;
    let (loadgen_core, sut_core) = if pinned {
        // Threads started from here on (the runtime's) inherit the mask.
        if !core_affinity::set_for_current(core_affinity::CoreId {
            id: args.loadgen_core,
        }) {
            bail!(
                "cannot pin the load generator to core {}",
                args.loadgen_core
            );
        }
        (Some(args.loadgen_core), Some(args.sut_core))
    } else {
        eprintln!("warning: fewer than two usable cores: nothing is pinned");
        (None, None)
    };
    raise_fd_limit();
    if !args.no_install {
        if let Err(e) = thirdparty::install_missing() {
            eprintln!("warning: {e:#}");
        }
    }
    let programs = Programs {
        bench: std::env::current_exe()?,
        mesh_proxy: match &args.mesh_proxy {
            Some(p) => p.clone(),
            None => find_or_build_mesh_proxy()?,
        },
        sidecar_wrapper: args.sidecar_wrapper.clone(),
        in_process_server: false,
    };
    let machine = machine(cores_total, loadgen_core, sut_core);
    let settings = args.settings();
    let work = tempfile::tempdir()?;
    let certs = certs::generate(work.path())?;
    let topologies = if args.topologies.is_empty() {
        Topology::ALL.to_vec()
    } else {
        args.topologies.clone()
    };
    // The load generator: one thread, on its core.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(async {
        let all = async {
            let mut results = Vec::new();
            for t in topologies {
                eprintln!("== ({}) {}", t.name(), t.describe());
                if let Some(why) = (t == Topology::DCapture)
                    .then(capture::unavailable)
                    .flatten()
                {
                    eprintln!("!! ({}) SKIPPED: {why}", t.name());
                    results.push(TopoResult::failed(t, format!("SKIPPED: {why}")));
                    continue;
                }
                let r =
                    match bench_one(t, &programs, &certs, work.path(), sut_core, &settings).await {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("({}) failed: {e:#}", t.name());
                            let first = format!("{e:#}").lines().next().unwrap_or("").to_owned();
                            TopoResult::failed(t, format!("failed: {first}"))
                        }
                    };
                results.push(r);
            }
            results
        };
        // On ctrl-c or SIGTERM the run's future is dropped, and with it the
        // running topology: its processes are stopped and (d-capture)'s
        // namespaces and rules removed before the harness exits.
        tokio::select! {
            biased;
            sig = stop_signal() => Err(sig),
            r = all => Ok(r),
        }
    });
    let results = match results {
        Ok(r) => r,
        Err(sig) => bail!("stopped by {sig}: everything started was stopped and removed"),
    };
    let report = Report::new(machine, settings, results);
    println!("{}", report.markdown());
    let json = args.json.clone().unwrap_or_else(default_json_path);
    if let Some(dir) = json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    eprintln!("JSON results in {}", json.display());
    Ok(())
}

async fn bench_one(
    t: Topology,
    programs: &Programs,
    certs: &certs::Certs,
    work: &Path,
    core: Option<usize>,
    s: &Settings,
) -> Result<TopoResult> {
    let mut running = topo::start(t, programs, certs, work, core, s.idle_connections).await?;
    let load = running.load.clone();
    let secs = Duration::from_secs_f64;
    // Idle: started and one request served.
    tokio::time::sleep(secs(if s.smoke { 0.1 } else { 1.0 })).await;
    let rss_idle: Vec<u64> = running.procs.iter().map(Proc::rss_kib).collect();
    let rss_idle_anon: Vec<u64> = running.procs.iter().map(Proc::rss_anon_kib).collect();
    let warmup = if s.smoke { 0.2 } else { 2.0 };
    load.open_loop(s.rate, secs(warmup), s.connections, false)
        .await?;

    eprintln!("   {} rps for {} s", s.rate, s.duration_s);
    let cpu0: Vec<f64> = running.procs.iter().map(Proc::cpu_seconds).collect();
    let wall = tokio::time::Instant::now();
    let (at_rate, rss_load) = with_rss_sampling(
        &running.procs,
        load.open_loop(s.rate, secs(s.duration_s), s.connections, false),
    )
    .await;
    let at_rate = at_rate?;
    let elapsed = wall.elapsed().as_secs_f64();
    let processes = running
        .procs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let used = p.cpu_seconds() - cpu0[i];
            ProcResult {
                name: p.name.clone(),
                rss_idle_kib: rss_idle[i],
                rss_idle_anon_kib: rss_idle_anon[i],
                rss_load_kib: rss_load[i],
                vcpu_per_1k_rps: used / elapsed / (at_rate.achieved_rps.max(1.0) / 1000.0),
            }
        })
        .collect();

    eprintln!("   {} rps for {} s", s.high_rate, s.duration_s);
    let at_high = load
        .open_loop(s.high_rate, secs(s.duration_s), s.connections, false)
        .await?;

    eprintln!("   max throughput for {} s", s.max_duration_s);
    let max = load
        .max_throughput(secs(s.max_duration_s), s.connections)
        .await?;

    eprintln!(
        "   new connection per request, {} rps",
        s.new_connection_rate
    );
    let cpu0: f64 = running.procs.iter().map(Proc::cpu_seconds).sum();
    let new_conn = load
        .open_loop(
            s.new_connection_rate,
            secs(s.duration_s.min(5.0)),
            s.connections,
            true,
        )
        .await?;
    let cpu1: f64 = running.procs.iter().map(Proc::cpu_seconds).sum();
    let new_connection = NewConnResult {
        sut_cpu_ms_per_request: (cpu1 - cpu0) * 1000.0 / new_conn.requests.max(1) as f64,
        latency: new_conn,
    };

    let idle = idle_test(&mut running, s.idle_connections).await?;
    Ok(TopoResult {
        topology: t,
        description: t.describe(),
        status: "ok".to_owned(),
        at_rate: Some(at_rate),
        at_high_rate: Some(at_high),
        max_rps: Some(max.rps),
        max_rps_loadgen_busy: Some(max.loadgen_busy),
        new_connection: Some(new_connection),
        idle,
        processes,
    })
}

/// Runs `fut` while sampling every process's RSS; returns the largest seen.
async fn with_rss_sampling<T>(
    procs: &[Proc],
    fut: impl std::future::Future<Output = T>,
) -> (T, Vec<u64>) {
    let mut peak: Vec<u64> = procs.iter().map(Proc::rss_kib).collect();
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            out = &mut fut => {
                for (p, m) in procs.iter().zip(peak.iter_mut()) {
                    *m = (*m).max(p.rss_kib());
                }
                return (out, peak);
            }
            _ = tick.tick() => {
                for (p, m) in procs.iter().zip(peak.iter_mut()) {
                    *m = (*m).max(p.rss_kib());
                }
            }
        }
    }
}

async fn idle_test(running: &mut Running, n: usize) -> Result<Option<IdleResult>> {
    let Some((target, index)) = running.mtls_server.clone() else {
        return Ok(None);
    };
    let proc = &running.procs[index];
    eprintln!("   {n} idle mTLS connections to {}", proc.name);
    let before = proc.rss_kib();
    let conns = target
        .hold_idle(n)
        .await
        .context("opening idle mTLS connections")?;
    tokio::time::sleep(Duration::from_millis(if n > 1000 { 1000 } else { 200 })).await;
    let after = proc.rss_kib();
    drop(conns);
    Ok(Some(IdleResult {
        server: proc.name.clone(),
        connections: n,
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: after.saturating_sub(before) as f64 / n.max(1) as f64,
    }))
}

/// Waits for SIGINT or SIGTERM; names it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Lifts the open-file limit to its hard limit (10,000 idle connections
/// need more than the usual 1,024); children inherit it.
fn raise_fd_limit() {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        });
    if let Some(hard) = hard {
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .status();
    }
}

/// `mesh-proxy` beside this binary; built with cargo (same profile) when
/// missing.
fn find_or_build_mesh_proxy() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the binary has no folder")?;
    let candidate = dir.join("mesh-proxy");
    if candidate.exists() {
        return Ok(candidate);
    }
    eprintln!("building mesh-proxy");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "mesh-proxy", "--manifest-path"])
        .arg(&manifest);
    if let Some(target) = dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo")?;
    if !status.success() || !candidate.exists() {
        bail!("could not build mesh-proxy; give --mesh-proxy PATH");
    }
    Ok(candidate)
}

fn default_json_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("mesh-bench-results.json")))
        .unwrap_or_else(|| PathBuf::from("mesh-bench-results.json"))
}

fn machine(cores: usize, loadgen_core: Option<usize>, sut_core: Option<usize>) -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let memory_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024;
    let version = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_else(|| "not installed".to_owned())
    };
    Machine {
        cpu,
        cores,
        memory_mib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        loadgen_core,
        sut_core,
        nginx: version("nginx", "-v"),
        haproxy: version("haproxy", "-v"),
        loadavg_at_start: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    }
}
