//! Results: the JSON document, the markdown tables, the ratios and the
//! issue's targets.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Latency;
use crate::topo::Topology;

/// One process of the system under test.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcResult {
    pub(crate) name: String,
    pub(crate) rss_idle_kib: u64,
    /// The anonymous part of `rss_idle_kib` (the rest is file pages: code).
    pub(crate) rss_idle_anon_kib: u64,
    /// The largest resident size seen during the fixed-rate run.
    pub(crate) rss_load_kib: u64,
    /// CPU seconds per second, per 1,000 requests per second, during the
    /// fixed-rate run.
    pub(crate) vcpu_per_1k_rps: f64,
}

/// Idle mTLS connections held open against the topology's mTLS server.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleResult {
    pub(crate) server: String,
    pub(crate) connections: usize,
    pub(crate) rss_before_kib: u64,
    pub(crate) rss_after_kib: u64,
    pub(crate) kib_per_connection: f64,
}

/// A new connection per request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NewConnResult {
    pub(crate) latency: Latency,
    /// CPU time of the whole system under test per request, in ms.
    pub(crate) sut_cpu_ms_per_request: f64,
}

/// One topology.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TopoResult {
    pub(crate) topology: Topology,
    pub(crate) description: &'static str,
    /// `ok`, or why it did not run.
    pub(crate) status: String,
    pub(crate) at_rate: Option<Latency>,
    pub(crate) at_high_rate: Option<Latency>,
    pub(crate) max_rps: Option<f64>,
    /// The load generator's core use during the max-throughput run: near 1.0
    /// the client, not the system under test, was the limit.
    pub(crate) max_rps_loadgen_busy: Option<f64>,
    pub(crate) new_connection: Option<NewConnResult>,
    pub(crate) idle: Option<IdleResult>,
    pub(crate) processes: Vec<ProcResult>,
}

impl TopoResult {
    pub(crate) fn failed(topology: Topology, status: String) -> Self {
        Self {
            topology,
            description: topology.describe(),
            status,
            at_rate: None,
            at_high_rate: None,
            max_rps: None,
            max_rps_loadgen_busy: None,
            new_connection: None,
            idle: None,
            processes: Vec::new(),
        }
    }

    fn total_vcpu(&self) -> Option<f64> {
        (!self.processes.is_empty()).then(|| self.processes.iter().map(|p| p.vcpu_per_1k_rps).sum())
    }
}

/// Where the numbers came from.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory_mib: u64,
    pub(crate) kernel: String,
    pub(crate) loadgen_core: Option<usize>,
    pub(crate) sut_core: Option<usize>,
    pub(crate) nginx: String,
    pub(crate) haproxy: String,
    pub(crate) build: &'static str,
    /// /proc/loadavg when the run started: the machine is shared.
    pub(crate) loadavg_at_start: String,
}

/// The run's settings.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) duration_s: f64,
    pub(crate) rate: f64,
    pub(crate) high_rate: f64,
    pub(crate) max_duration_s: f64,
    pub(crate) connections: usize,
    pub(crate) new_connection_rate: f64,
    pub(crate) idle_connections: usize,
    pub(crate) smoke: bool,
}

/// A ratio of two topologies.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ratio {
    pub(crate) name: String,
    pub(crate) max_rps: Option<f64>,
    pub(crate) p99_at_rate: Option<f64>,
    /// p99 at the fixed rate, numerator minus denominator, µs.
    pub(crate) p99_at_rate_delta_us: Option<i64>,
}

/// One target of issue 7.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub(crate) target: &'static str,
    pub(crate) measured: String,
    /// `None` when the run did not measure it.
    pub(crate) met: Option<bool>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    pub(crate) topologies: Vec<TopoResult>,
    pub(crate) ratios: Vec<Ratio>,
    pub(crate) targets: Vec<Target>,
}

impl Report {
    pub(crate) fn new(machine: Machine, settings: Settings, topologies: Vec<TopoResult>) -> Self {
        let mut r = Self {
            machine,
            settings,
            topologies,
            ratios: Vec::new(),
            targets: Vec::new(),
        };
        use Topology::*;
        r.ratios = [
            (B, A),
            (C, B),
            (CJwt, C),
            (D, E1),
            (D, E2),
            (D, DH2),
            (DCapture, D),
        ]
        .into_iter()
        .map(|(n, d)| r.ratio(n, d))
        .collect();
        r.targets = r.targets();
        r
    }

    fn get(&self, t: Topology) -> Option<&TopoResult> {
        self.topologies
            .iter()
            .find(|r| r.topology == t && r.status == "ok")
    }

    fn ratio(&self, n: Topology, d: Topology) -> Ratio {
        let (a, b) = (self.get(n), self.get(d));
        let max = a.and_then(|a| a.max_rps).zip(b.and_then(|b| b.max_rps));
        let p99 = a
            .and_then(|a| a.at_rate.as_ref())
            .zip(b.and_then(|b| b.at_rate.as_ref()));
        Ratio {
            name: format!("({})/({})", n.name(), d.name()),
            max_rps: max.map(|(x, y)| x / y),
            p99_at_rate: p99.map(|(x, y)| x.p99_us as f64 / y.p99_us.max(1) as f64),
            p99_at_rate_delta_us: p99.map(|(x, y)| x.p99_us as i64 - y.p99_us as i64),
        }
    }

    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let ratio = |name: &str| self.ratios.iter().find(|r| r.name == name);
        let cb = ratio("(c)/(b)");
        out.push(Target {
            target: "(c) within 5% of (b) in max throughput",
            measured: fmt_opt(cb.and_then(|r| r.max_rps), |x| format!("{x:.3}×")),
            met: cb.and_then(|r| r.max_rps).map(|x| x >= 0.95),
        });
        out.push(Target {
            target: "(c) within 50 µs of (b) at p99 (fixed rate)",
            measured: fmt_opt(cb.and_then(|r| r.p99_at_rate_delta_us), |x| {
                format!("{x:+} µs")
            }),
            met: cb.and_then(|r| r.p99_at_rate_delta_us).map(|x| x <= 50),
        });
        let de1 = ratio("(d)/(e1)");
        out.push(Target {
            target: "(d) at least 1.3× nginx's max throughput",
            measured: fmt_opt(de1.and_then(|r| r.max_rps), |x| format!("{x:.2}×")),
            met: de1.and_then(|r| r.max_rps).map(|x| x >= 1.3),
        });
        for (name, label) in [("(d)/(e1)", "nginx"), ("(d)/(e2)", "HAProxy")] {
            let r = ratio(name).and_then(|r| r.p99_at_rate_delta_us);
            out.push(Target {
                target: if label == "nginx" {
                    "(d) lower p99 at the fixed rate than nginx"
                } else {
                    "(d) lower p99 at the fixed rate than HAProxy"
                },
                measured: fmt_opt(r, |x| format!("{x:+} µs")),
                met: r.map(|x| x < 0),
            });
        }
        let sidecars: Vec<&ProcResult> = self
            .get(Topology::D)
            .map(|d| {
                d.processes
                    .iter()
                    .filter(|p| p.name.starts_with("sidecar"))
                    .collect()
            })
            .unwrap_or_default();
        let worst = |f: fn(&ProcResult) -> f64| {
            sidecars
                .iter()
                .map(|p| f(p))
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
        };
        let cpu = worst(|p| p.vcpu_per_1k_rps);
        out.push(Target {
            target: "per sidecar ≤ 0.10 vCPU per 1,000 rps",
            measured: fmt_opt(cpu, |x| format!("{x:.3} (worst sidecar)")),
            met: cpu.map(|x| x <= 0.10),
        });
        let idle = worst(|p| p.rss_idle_kib as f64 / 1024.0);
        out.push(Target {
            target: "per sidecar idle RSS ≤ 8 MiB",
            measured: fmt_opt(idle, |x| {
                let anon = worst(|p| p.rss_idle_anon_kib as f64 / 1024.0).unwrap_or(0.0);
                format!("{x:.1} MiB ({anon:.1} MiB anonymous)")
            }),
            met: idle.map(|x| x <= 8.0),
        });
        let load = worst(|p| p.rss_load_kib as f64 / 1024.0);
        out.push(Target {
            target: "per sidecar RSS at the fixed rate ≤ 20 MiB",
            measured: fmt_opt(load, |x| format!("{x:.1} MiB")),
            met: load.map(|x| x <= 20.0),
        });
        let per_conn = self
            .get(Topology::D)
            .and_then(|d| d.idle.as_ref())
            .map(|i| i.kib_per_connection);
        out.push(Target {
            target: "≤ 20 KiB per idle mTLS connection (sidecar inbound)",
            measured: fmt_opt(per_conn, |x| format!("{x:.1} KiB")),
            met: per_conn.map(|x| x <= 20.0),
        });
        out
    }

    /// The markdown tables.
    pub(crate) fn markdown(&self) -> String {
        let s = &self.settings;
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Machine: {} ({} cores, {} MiB, Linux {}, load average at start {}); load generator on core {}, system under test on core {}; {} build; {}; {}.\n\
             Fixed rate {} rps and high rate {} rps for {} s each over {} keep-alive connections; max throughput closed-loop for {} s; \
             new connection per request at {} rps; {} idle mTLS connections.{}\n",
            m.cpu,
            m.cores,
            m.memory_mib,
            m.kernel,
            m.loadavg_at_start,
            fmt_core(m.loadgen_core),
            fmt_core(m.sut_core),
            m.build,
            m.nginx,
            m.haproxy,
            s.rate,
            s.high_rate,
            s.duration_s,
            s.connections,
            s.max_duration_s,
            s.new_connection_rate,
            s.idle_connections,
            if s.smoke {
                " SMOKE RUN: numbers are meaningless."
            } else {
                ""
            },
        );
        let _ = writeln!(
            out,
            "| topology | p50 / p99 / p99.9 µs @ {r} rps | p50 / p99 / p99.9 µs @ {h} rps | max rps | vCPU per 1k rps (SUT) | RSS idle (anon) → load MiB | new conn p50 / p99 µs, SUT ms/req | KiB per idle mTLS conn |",
            r = s.rate,
            h = s.high_rate
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for t in &self.topologies {
            let name = format!("({}) {}", t.topology.name(), t.description);
            if t.status != "ok" {
                let _ = writeln!(out, "| {name} | {} | | | | | | |", t.status);
                continue;
            }
            let lat = |l: &Option<Latency>| {
                l.as_ref().map_or("-".to_owned(), |l| {
                    let errs = if l.errors > 0 {
                        format!(" ({} lost)", l.errors)
                    } else {
                        String::new()
                    };
                    format!(
                        "{} / {} / {}{errs} (gen lag p99 {})",
                        l.p50_us, l.p99_us, l.p999_us, l.dispatch_lag_p99_us
                    )
                })
            };
            let procs = |f: &dyn Fn(&ProcResult) -> String| {
                t.processes
                    .iter()
                    .map(|p| format!("{} {}", p.name, f(p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let cpu = format!(
                "{:.3}: {}",
                t.total_vcpu().unwrap_or(0.0),
                procs(&|p| format!("{:.3}", p.vcpu_per_1k_rps))
            );
            let rss = procs(&|p| {
                format!(
                    "{:.1} ({:.1} anon) → {:.1}",
                    p.rss_idle_kib as f64 / 1024.0,
                    p.rss_idle_anon_kib as f64 / 1024.0,
                    p.rss_load_kib as f64 / 1024.0
                )
            });
            let newc = t.new_connection.as_ref().map_or("-".to_owned(), |n| {
                format!(
                    "{} / {}, {:.3}",
                    n.latency.p50_us, n.latency.p99_us, n.sut_cpu_ms_per_request
                )
            });
            let idle = t.idle.as_ref().map_or("-".to_owned(), |i| {
                format!("{:.1} ({})", i.kib_per_connection, i.server)
            });
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {cpu} | {rss} | {newc} | {idle} |",
                lat(&t.at_rate),
                lat(&t.at_high_rate),
                t.max_rps.map_or("-".to_owned(), |x| format!(
                    "{x:.0} (client {:.0}% busy)",
                    t.max_rps_loadgen_busy.unwrap_or(0.0) * 100.0
                )),
            );
        }
        let _ = writeln!(
            out,
            "\n| ratio | max throughput | p99 @ {} rps | p99 difference |",
            s.rate
        );
        let _ = writeln!(out, "|---|---|---|---|");
        for r in &self.ratios {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                r.name,
                fmt_opt(r.max_rps, |x| format!("{x:.3}")),
                fmt_opt(r.p99_at_rate, |x| format!("{x:.3}")),
                fmt_opt(r.p99_at_rate_delta_us, |x| format!("{x:+} µs")),
            );
        }
        let _ = writeln!(out, "\n| target | measured | met |");
        let _ = writeln!(out, "|---|---|---|");
        for t in &self.targets {
            let met = match t.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "not measured",
            };
            let _ = writeln!(out, "| {} | {} | {met} |", t.target, t.measured);
        }
        out
    }
}

fn fmt_opt<T>(x: Option<T>, f: impl Fn(T) -> String) -> String {
    x.map_or("-".to_owned(), f)
}

fn fmt_core(c: Option<usize>) -> String {
    c.map_or("(unpinned)".to_owned(), |c| c.to_string())
}
