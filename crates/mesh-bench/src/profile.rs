//! `mesh-bench profile`: a fixed number of requests through (c) or (d), one
//! after another, so that callgrind's instruction counts per request can be
//! compared before and after a change (wall-clock figures cannot, on a
//! shared machine).
//!
//! ```text
//! # (c): client and server layers in this one process; the measured phase
//! # is bracketed by two marker functions.
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.c \
//!     --zero-before='*profile_phase_start*' --dump-before='*profile_phase_end*' \
//!     target/release/mesh-bench profile --topology c --requests 1000
//! # (d): the sidecars run under the wrapper; their counters are zeroed after
//! # the warm-up and dumped after the measured phase (callgrind_control).
//! target/release/mesh-bench profile --topology d --requests 1000 \
//!     --sidecar-wrapper 'valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.{name}'
//! ```
//!
//! Instructions per request = the dump's total / `--requests` (plus
//! `--fresh`, each on a new connection, when given).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use crate::client::Target;
use crate::topo::{Programs, Topology};

/// `mesh-bench profile`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProfileArgs {
    /// `c` or `d`.
    #[arg(long, value_enum)]
    topology: Topology,
    /// Requests measured, one after another on one keep-alive connection.
    #[arg(long, default_value_t = 1000)]
    requests: u64,
    /// Requests measured after those, each on a new connection.
    #[arg(long, default_value_t = 0)]
    fresh: u64,
    /// Requests before the measured phase (pools, caches, lazy statics).
    #[arg(long, default_value_t = 50)]
    warmup: u64,
    /// (d): the command the sidecars run under, `{name}` replaced by the
    /// sidecar's name.
    #[arg(long)]
    sidecar_wrapper: Option<String>,
    /// The mesh-proxy binary (default: beside this one).
    #[arg(long)]
    mesh_proxy: Option<PathBuf>,
    /// (d): after the requests, print each process's resident memory, then
    /// hold this many idle mTLS connections to sidecar B and print what
    /// each cost it (resident memory is not noisy, unlike time).
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Seconds to hold the idle connections open after measuring them (to
    /// take a heap snapshot of the sidecars, e.g. with `vgdb`).
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
}

/// Runs the profile; prints what was sent.
pub(crate) fn run(args: ProfileArgs) -> Result<()> {
    if !matches!(args.topology, Topology::C | Topology::D) {
        bail!("profile runs topology c or d");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(profile(args))
}

async fn profile(args: ProfileArgs) -> Result<()> {
    let work = tempfile::tempdir()?;
    let certs = crate::certs::generate(work.path())?;
    let exe = std::env::current_exe()?;
    let programs = Programs {
        mesh_proxy: args
            .mesh_proxy
            .clone()
            .unwrap_or_else(|| exe.with_file_name("mesh-proxy")),
        bench: exe,
        sidecar_wrapper: args.sidecar_wrapper.clone(),
        // One process for callgrind; the server's own process when its
        // memory is measured.
        in_process_server: args.idle == 0,
    };
    // Memory is measured as the harness measures it: the system under test
    // pinned to one core (one runtime worker). Instruction counts are taken
    // unpinned, as they always were.
    let core = (args.idle > 0).then_some(1);
    let running =
        crate::topo::start(args.topology, &programs, &certs, work.path(), core, 100).await?;
    let Some(target) = running.local_target().cloned() else {
        bail!("profile runs (c) and (d)");
    };
    let mut conn = target.connect(false).await?;
    for _ in 0..args.warmup {
        conn.send().await?;
    }
    // Let timers and background tasks of the warm-up settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let wrapped = args.topology == Topology::D && args.sidecar_wrapper.is_some();
    if wrapped {
        callgrind_control("-z", &running)?;
    }
    profile_phase_start();
    for _ in 0..args.requests {
        conn.send().await?;
    }
    for _ in 0..args.fresh {
        fresh_request(&target).await?;
    }
    profile_phase_end();
    if wrapped {
        callgrind_control("-d", &running)?;
    }
    eprintln!(
        "profile ({}): {} keep-alive and {} new-connection requests measured",
        args.topology.name(),
        args.requests,
        args.fresh
    );
    if args.idle > 0 {
        idle_memory(&running, args.idle, Duration::from_secs_f64(args.hold)).await?;
    }
    drop(conn);
    drop(running);
    Ok(())
}

async fn fresh_request(target: &Target) -> Result<()> {
    let mut c = target.connect(true).await?;
    c.send().await
}

/// callgrind's `--zero-before` names this function: the measured phase
/// starts here.
#[inline(never)]
fn profile_phase_start() {
    // Bodies that differ, so the linker cannot fold the two markers into one.
    std::hint::black_box(1u8);
}

/// callgrind's `--dump-before` names this function: the measured phase
/// ends here.
#[inline(never)]
fn profile_phase_end() {
    std::hint::black_box(2u16);
}

/// Zeroes (`-z`) or dumps (`-d`) the counters of every process of the
/// topology that runs under callgrind.
fn callgrind_control(op: &str, running: &crate::topo::Running) -> Result<()> {
    for p in &running.procs {
        if !p.name.starts_with("sidecar") {
            continue;
        }
        let out = Command::new("callgrind_control")
            .arg(op)
            .arg(p.pid().to_string())
            .output()?;
        if !out.status.success() {
            bail!(
                "callgrind_control {op} {}: {}",
                p.pid(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

/// Prints each process's resident memory, then the cost of `n` idle mTLS
/// connections to the topology's mTLS server.
async fn idle_memory(running: &crate::topo::Running, n: usize, hold: Duration) -> Result<()> {
    for p in &running.procs {
        println!("rss {} {} KiB", p.name, p.rss_kib());
    }
    let Some((target, index)) = &running.mtls_server else {
        bail!("this topology has no mTLS server to hold idle connections to");
    };
    let proc = &running.procs[*index];
    let before = proc.rss_kib();
    let conns = target.hold_idle(n).await?;
    tokio::time::sleep(Duration::from_millis(if n > 1000 { 1000 } else { 300 })).await;
    let after = proc.rss_kib();
    println!(
        "idle {n} connections to {}: {before} -> {after} KiB, {:.1} KiB per connection",
        proc.name,
        after.saturating_sub(before) as f64 / n as f64
    );
    tokio::time::sleep(hold).await;
    drop(conns);
    Ok(())
}
