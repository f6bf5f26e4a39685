//! The load generator: open-loop at a fixed rate (latency measured from each
//! request's intended send time, so a stalled server cannot hide its queue:
//! no coordinated omission), closed-loop for the maximum throughput, and the
//! idle-connection test.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tokio::sync::mpsc;

use crate::client::{Conn, Target};
use crate::pod_load::{HeldInPod, MaxThroughput, PodClient};

/// Where the load generator runs: in this process, or as a process of its
/// own inside a pod's network namespace (capture mode; see `pod_load` for
/// why a process).
#[derive(Debug, Clone)]
pub(crate) enum Generator {
    Here(Target),
    InPod(PodClient),
}

/// Idle connections, open until dropped (they are only ever dropped).
pub(crate) struct Held {
    _here: Vec<Conn>,
    _in_pod: Option<HeldInPod>,
}

impl Generator {
    /// [`open_loop`], wherever the generator runs.
    pub(crate) async fn open_loop(
        &self,
        rate: f64,
        duration: Duration,
        connections: usize,
        fresh: bool,
    ) -> Result<Latency> {
        match self {
            Self::Here(t) => open_loop(t, rate, duration, connections, fresh).await,
            Self::InPod(p) => p.open_loop(rate, duration, connections, fresh).await,
        }
    }

    /// [`max_throughput`], with the generator's own core use.
    pub(crate) async fn max_throughput(
        &self,
        duration: Duration,
        connections: usize,
    ) -> Result<MaxThroughput> {
        match self {
            Self::Here(t) => {
                let (own0, wall) = (crate::procs::own_cpu_seconds(), Instant::now());
                let rps = max_throughput(t, duration, connections).await?;
                Ok(MaxThroughput {
                    rps,
                    loadgen_busy: (crate::procs::own_cpu_seconds() - own0)
                        / wall.elapsed().as_secs_f64(),
                })
            }
            Self::InPod(p) => p.max_throughput(duration, connections).await,
        }
    }

    /// [`idle_connections`], held until the value is dropped.
    pub(crate) async fn hold_idle(&self, n: usize) -> Result<Held> {
        match self {
            Self::Here(t) => Ok(Held {
                _here: idle_connections(t, n).await?,
                _in_pod: None,
            }),
            Self::InPod(p) => Ok(Held {
                _here: Vec::new(),
                _in_pod: Some(p.hold_idle(n).await?),
            }),
        }
    }
}

/// Latencies of one fixed-rate run, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Latency {
    pub(crate) target_rps: f64,
    pub(crate) achieved_rps: f64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    /// How late the generator itself dispatched requests (its sleep
    /// precision and scheduling): a floor under every latency above.
    pub(crate) dispatch_lag_p50_us: u64,
    pub(crate) dispatch_lag_p99_us: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s with 3 significant digits; the bounds are constants
    // hdrhistogram accepts, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// Sends `rate` requests per second for `duration` over `connections`
/// keep-alive connections (or a new connection per request when `fresh`).
/// Requests are dispatched at their intended times whether or not earlier
/// ones have come back; a request waiting for a free connection is late, and
/// its wait counts.
pub(crate) async fn open_loop(
    target: &Target,
    rate: f64,
    duration: Duration,
    connections: usize,
    fresh: bool,
) -> Result<Latency> {
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let hist = Arc::new(Mutex::new(histogram()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut conn = if fresh {
            None
        } else {
            Some(target.connect(false).await?)
        };
        let (target, rx, hist, errors) = (target.clone(), rx.clone(), hist.clone(), errors.clone());
        workers.spawn(async move {
            let mut last = None;
            loop {
                let Some(intended) = rx.lock().await.recv().await else {
                    break;
                };
                let ok = match conn.as_mut() {
                    Some(c) if !fresh => c.send().await.is_ok(),
                    _ => match target.connect(true).await {
                        Ok(mut c) => c.send().await.is_ok(),
                        Err(_) => false,
                    },
                };
                let now = Instant::now();
                if ok {
                    let us = now.saturating_duration_since(intended).as_micros();
                    let us = u64::try_from(us).unwrap_or(u64::MAX).max(1);
                    hist.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .saturating_record(us);
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !fresh {
                        // The connection may be gone: the next request gets a new one.
                        conn = target.connect(false).await.ok();
                    }
                }
                last = Some(now);
            }
            last
        });
    }
    // The schedule runs on its own thread: std's sleep (nanosleep) wakes
    // within tens of µs where tokio's timer has 1 ms granularity.
    let start = Instant::now() + Duration::from_millis(5);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let ticker = std::thread::spawn(move || {
        let mut lag = histogram();
        for i in 0..total {
            let at = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let late = Instant::now().saturating_duration_since(at).as_micros();
            lag.saturating_record(u64::try_from(late).unwrap_or(u64::MAX).max(1));
            if tx.send(at).is_err() {
                break;
            }
        }
        lag
    });
    // Whatever has not come back a few seconds after the last send is lost.
    let deadline = tokio::time::Instant::from_std(start) + duration + Duration::from_secs(5);
    let mut end = start;
    loop {
        match tokio::time::timeout_at(deadline, workers.join_next()).await {
            Ok(Some(Ok(Some(t)))) => end = end.max(t),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                workers.abort_all();
                break;
            }
        }
    }
    // The ticker has finished: the workers ran until its channel closed (or
    // were aborted, which ends the channel too).
    let lag = ticker.join().unwrap_or_else(|_| histogram());
    let hist = hist.lock().unwrap_or_else(PoisonError::into_inner);
    let done = hist.len();
    let elapsed = end.saturating_duration_since(start).as_secs_f64().max(1e-3);
    Ok(Latency {
        target_rps: rate,
        achieved_rps: done as f64 / elapsed,
        requests: done,
        errors: total - done.min(total),
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        dispatch_lag_p50_us: lag.value_at_quantile(0.5),
        dispatch_lag_p99_us: lag.value_at_quantile(0.99),
    })
}

/// The most requests per second `connections` closed-loop clients get
/// through in `duration`: each sends its next request as soon as the
/// previous answer is in.
pub(crate) async fn max_throughput(
    target: &Target,
    duration: Duration,
    connections: usize,
) -> Result<f64> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let mut conn = target.connect(false).await?;
        let target = target.clone();
        workers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                if conn.send().await.is_ok() {
                    n += 1;
                } else if let Ok(c) = target.connect(false).await {
                    conn = c;
                }
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = workers.join_next().await {
        total += n.unwrap_or(0);
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Opens `n` connections, sends one request on each, and returns them open
/// and idle.
pub(crate) async fn idle_connections(target: &Target, n: usize) -> Result<Vec<Conn>> {
    const PARALLEL: usize = 32;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..PARALLEL {
        let count = n / PARALLEL + usize::from(k < n % PARALLEL);
        let target = target.clone();
        tasks.spawn(async move {
            let mut conns = Vec::with_capacity(count);
            for _ in 0..count {
                let mut c = target.connect(true).await?;
                c.send().await?;
                conns.push(c);
            }
            anyhow::Ok(conns)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}
