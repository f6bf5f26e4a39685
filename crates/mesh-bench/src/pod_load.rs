//! The load generator as a process of its own inside a pod's network
//! namespace (`mesh-bench load`, hidden), and the harness's handle on it.
//!
//! Capture mode ((d-capture)) needs the client inside pod A's namespace, so
//! that its connections to the service's virtual IP meet `mesh-proxy init`'s
//! rules exactly as an unchanged app's would. A network namespace belongs to
//! a thread and is entered with `setns(2)`: from this crate that would take
//! `unsafe` (forbidden here) or a new dependency, and every socket of the
//! generator, its tokio runtime's included, would have to be made on that
//! one thread. `ip netns exec` is how the capture tests and the WordPress
//! canary start an app in a pod, so the generator is started the same way,
//! as this binary's `load` subcommand: the same code as the in-process
//! generator (`load::open_loop`, `load::max_throughput`,
//! `load::idle_connections`), on the generator's core (it inherits the
//! harness's pinning), each phase one process that prints its figures as JSON on
//! stdout. Starting it costs a few milliseconds before each phase, outside
//! what it measures.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::certs::IdentityFiles;
use crate::client::Target;
use crate::load::{self, Latency};

/// `mesh-bench load`: one phase of the load generator, figures as JSON on
/// stdout.
#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    /// The first hop (plain HTTP/1.1 unless `--cert` is given).
    #[arg(long)]
    connect: SocketAddr,
    /// mTLS client identity (the idle-connection test).
    #[arg(long, requires_all = ["key", "bundle"])]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long)]
    bundle: Option<PathBuf>,
    #[command(subcommand)]
    phase: Phase,
}

#[derive(Debug, Clone, Subcommand)]
enum Phase {
    /// `load::open_loop`: prints a `Latency`.
    OpenLoop {
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        duration: f64,
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        fresh: bool,
    },
    /// `load::max_throughput`: prints a `MaxThroughput`.
    Max {
        #[arg(long)]
        duration: f64,
        #[arg(long)]
        connections: usize,
    },
    /// One request, tried again until it is answered or `--within` seconds
    /// have passed.
    Once {
        #[arg(long, default_value_t = 0.0)]
        within: f64,
    },
    /// Opens this many connections with one request each, prints
    /// `holding N`, and holds them until stdin closes.
    Idle {
        #[arg(long)]
        connections: usize,
    },
}

/// The closed-loop phase's result.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct MaxThroughput {
    pub(crate) rps: f64,
    /// The generator's core use during the phase (1.0: the client was the
    /// limit).
    pub(crate) loadgen_busy: f64,
}

/// Runs one phase in this process.
pub(crate) fn run(args: LoadArgs) -> Result<()> {
    let target = match (&args.cert, &args.key, &args.bundle) {
        (Some(cert), Some(key), Some(bundle)) => {
            let files = IdentityFiles {
                cert: cert.clone(),
                key: key.clone(),
                bundle: bundle.clone(),
                combined: PathBuf::new(),
            };
            Target::mtls(args.connect, &files.store()?)?
        }
        _ => Target::Plain { addr: args.connect },
    };
    // As the in-process generator: one thread for the connections, one for
    // the schedule.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let secs = Duration::from_secs_f64;
        let json = match args.phase {
            Phase::OpenLoop {
                rate,
                duration,
                connections,
                fresh,
            } => serde_json::to_string(
                &load::open_loop(&target, rate, secs(duration), connections, fresh).await?,
            )?,
            Phase::Max {
                duration,
                connections,
            } => {
                let (own0, wall) = (crate::procs::own_cpu_seconds(), Instant::now());
                let rps = load::max_throughput(&target, secs(duration), connections).await?;
                let busy = (crate::procs::own_cpu_seconds() - own0) / wall.elapsed().as_secs_f64();
                serde_json::to_string(&MaxThroughput {
                    rps,
                    loadgen_busy: busy,
                })?
            }
            Phase::Once { within } => {
                let deadline = Instant::now() + secs(within);
                loop {
                    // A hop that accepts and never answers must not hang
                    // the harness: each try has 5 s.
                    let result = tokio::time::timeout(Duration::from_secs(5), async {
                        target.connect(false).await?.send().await
                    })
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("no answer within 5 s")));
                    match result {
                        Ok(()) => break "\"ok\"".to_owned(),
                        Err(e) if Instant::now() >= deadline => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
            Phase::Idle { connections } => {
                let held = load::idle_connections(&target, connections).await?;
                println!("holding {}", held.len());
                // Until the harness closes our stdin (or dies).
                tokio::task::spawn_blocking(|| {
                    std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
                })
                .await??;
                drop(held);
                return Ok(());
            }
        };
        println!("{json}");
        anyhow::Ok(())
    })
}

/// The harness's side: where the generator runs and what it dials.
#[derive(Debug, Clone)]
pub(crate) struct PodClient {
    /// The network namespace (`ip netns exec` name).
    pub(crate) netns: String,
    /// This binary.
    pub(crate) bench: PathBuf,
    pub(crate) connect: SocketAddr,
    /// mTLS client identity, for the idle test.
    pub(crate) identity: Option<IdentityFiles>,
}

impl PodClient {
    /// The phase's process, started; killed if dropped before it ends (a
    /// ctrl-c drops the phase's future).
    fn start(&self, phase: &[String], stdin: Stdio) -> Result<Child> {
        // No `taskset`: a child inherits the harness's affinity, which is
        // the generator's core.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns.as_str()])
            .arg(&self.bench)
            .arg("load")
            .arg("--connect")
            .arg(self.connect.to_string());
        if let Some(id) = &self.identity {
            cmd.arg("--cert").arg(&id.cert);
            cmd.arg("--key").arg(&id.key);
            cmd.arg("--bundle").arg(&id.bundle);
        }
        let child = cmd
            .args(phase)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the load generator in the pod")?;
        Ok(Child(child))
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, phase: &[String]) -> Result<T> {
        let mut child = self.start(phase, Stdio::null())?;
        // Polled: its output is a line of JSON, far below a pipe's buffer,
        // and 10 ms after the end of a phase of seconds costs nothing.
        let status = loop {
            if let Some(status) = child.0.try_wait()? {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let read = |r: Option<&mut dyn Read>| {
            let mut text = String::new();
            if let Some(r) = r {
                let _ = r.read_to_string(&mut text);
            }
            text
        };
        let stdout = read(child.0.stdout.as_mut().map(|r| r as &mut dyn Read));
        let stderr = read(child.0.stderr.as_mut().map(|r| r as &mut dyn Read));
        if !status.success() {
            bail!(
                "the load generator in {} ({status}): {}",
                self.netns,
                stderr.trim()
            );
        }
        serde_json::from_str(&stdout)
            .with_context(|| format!("the load generator's output: {stdout}"))
    }

    pub(crate) async fn open_loop(
        &self,
        rate: f64,
        duration: Duration,
        connections: usize,
        fresh: bool,
    ) -> Result<Latency> {
        let mut phase = vec![
            "open-loop".to_owned(),
            "--rate".to_owned(),
            rate.to_string(),
            "--duration".to_owned(),
            duration.as_secs_f64().to_string(),
            "--connections".to_owned(),
            connections.to_string(),
        ];
        if fresh {
            phase.push("--fresh".to_owned());
        }
        self.json(&phase).await
    }

    pub(crate) async fn max_throughput(
        &self,
        duration: Duration,
        connections: usize,
    ) -> Result<MaxThroughput> {
        self.json(&[
            "max".to_owned(),
            "--duration".to_owned(),
            duration.as_secs_f64().to_string(),
            "--connections".to_owned(),
            connections.to_string(),
        ])
        .await
    }

    /// One request through, tried again for up to `within`.
    pub(crate) async fn once(&self, within: Duration) -> Result<()> {
        let _: String = self
            .json(&[
                "once".to_owned(),
                "--within".to_owned(),
                within.as_secs_f64().to_string(),
            ])
            .await?;
        Ok(())
    }

    /// `n` connections opened, one request on each, held until the value
    /// returned is dropped.
    pub(crate) async fn hold_idle(&self, n: usize) -> Result<HeldInPod> {
        let mut child = self.start(
            &["idle".to_owned(), "--connections".to_owned(), n.to_string()],
            Stdio::piped(),
        )?;
        let stdout = child.0.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        // A blocking read, off the runtime; if this future is dropped the
        // child is killed, which ends the read.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await??;
        if !line.starts_with("holding") {
            let mut stderr = String::new();
            if let Some(e) = child.0.stderr.as_mut() {
                let _ = e.read_to_string(&mut stderr);
            }
            bail!(
                "the idle-connection client in {}: {}",
                self.netns,
                stderr.trim()
            );
        }
        Ok(HeldInPod { _child: child })
    }
}

/// A process of the load generator; killed and reaped when dropped.
#[derive(Debug)]
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Idle connections held by a process in a pod; dropping this kills it,
/// which closes them.
#[derive(Debug)]
pub(crate) struct HeldInPod {
    _child: Child,
}
