//! The mesh page: the services and workloads as a graph, with the live
//! request rate, success rate and p99 of each edge, the split of each
//! canary as it happens, each edge's mTLS state and identities, the
//! authorization denials, and what `check` finds in the configuration the
//! control plane serves. Served by the monitoring endpoint at
//! [`PAGE_PATH`] (the page: HTML, CSS and JavaScript of its own, nothing
//! fetched from elsewhere) and [`PAGE_DATA_PATH`] (its data, JSON).
//!
//! Where the figures come from: every proxy on the configuration stream
//! tells the port of its metrics in the node's metadata
//! ([`mesh_tower::xds::METRICS_PORT_METADATA`]), and the control plane
//! reads `/stats/prometheus` there every [`ControlPlaneConfig::page_interval`]
//! (crate::ControlPlaneConfig), at the IP address the proxy's mTLS stream
//! came from: a proxy can name a port, never another host. Only proxies
//! with a stream open are read. The rates are the differences between the
//! newest reading of each proxy and its oldest within [`WINDOW`], so the
//! page needs no Prometheus; Istio's dashboards and Kiali read the same
//! series from a Prometheus of the user's.
//!
//! Edges are taken from the reports of the proxy that served them
//! (`reporter="destination"`: it knows the caller's verified identity and
//! the connection's mTLS), and from the caller's reports for destinations
//! no proxy on the stream serves (an external service, a workload without
//! a sidecar).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::xds::ConfigServer;

/// The page.
pub const PAGE_PATH: &str = "/mesh";
/// The page's data, JSON.
pub const PAGE_DATA_PATH: &str = "/mesh/data";

/// The span the rates are measured over.
pub const WINDOW: Duration = Duration::from_secs(30);

/// The most a proxy's metrics may weigh.
const MAX_SCRAPE_BYTES: u64 = 8 << 20;

/// How long one reading may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// The page itself.
const PAGE_HTML: &str = include_str!("page.html");

/// The proxies with a configuration stream open, and where their metrics
/// are.
#[derive(Debug, Default)]
pub(crate) struct Proxies {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, ProxyEntry>>,
}

/// One proxy on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxyEntry {
    /// The node id: `namespace/name`, or `Gateway/namespace/name`.
    pub(crate) node: String,
    /// Its verified SPIFFE ID.
    pub(crate) identity: String,
    /// Where its metrics are read, if it said.
    pub(crate) metrics: Option<SocketAddr>,
}

/// A proxy's place in [`Proxies`], given up when its stream ends.
#[derive(Debug)]
pub(crate) struct Registered {
    proxies: Arc<Proxies>,
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.proxies.open).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Proxies {
    /// Adds a proxy until the returned guard drops.
    pub(crate) fn register(self: &Arc<Self>, entry: ProxyEntry) -> Registered {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.open).insert(key, entry);
        Registered {
            proxies: self.clone(),
            key,
        }
    }

    fn list(&self) -> Vec<ProxyEntry> {
        lock(&self.open).values().cloned().collect()
    }
}

/// Where the proxy that opened a stream from `peer` with `node` serves its
/// metrics: the port it named, at the stream's own IP address.
pub(crate) fn metrics_addr(peer: SocketAddr, node: Option<&Node>) -> Option<SocketAddr> {
    let field = node?
        .metadata
        .as_ref()?
        .fields
        .get(mesh_tower::xds::METRICS_PORT_METADATA)?;
    let port = match field.kind.as_ref()? {
        Kind::StringValue(s) => s.parse::<u16>().ok()?,
        Kind::NumberValue(n) if n.fract() == 0.0 && (1.0..=65535.0).contains(n) => *n as u16,
        _ => return None,
    };
    (port != 0).then(|| SocketAddr::new(peer.ip(), port))
}

/// What one edge's series add up to.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counters {
    /// Requests (HTTP) or connections opened (TCP).
    count: f64,
    /// 5xx answers (HTTP) or connections that failed (flags other than `-`).
    errors: f64,
    /// Denied by authorization (`response_flags="RBAC"`).
    denied: f64,
    /// Duration histogram: `le` → cumulative count (HTTP only).
    buckets: BTreeMap<Le, f64>,
}

/// A bucket bound, ordered (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Le(f64);
impl Eq for Le {}
impl PartialOrd for Le {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Le {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// An edge of one proxy's report: who called whom, how.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SeriesKey {
    destination_reported: bool,
    tcp: bool,
    source: String,
    destination: String,
    service: String,
    version: String,
    security: String,
    source_principal: String,
    destination_principal: String,
}

/// One reading of one proxy's metrics.
type Reading = HashMap<SeriesKey, Counters>;

/// What the page keeps of one proxy.
#[derive(Debug, Default)]
struct ProxyState {
    identity: String,
    addr: Option<SocketAddr>,
    readings: VecDeque<(Instant, Reading)>,
    last_error: Option<String>,
    last_read: Option<SystemTime>,
}

/// The page's state: the readings of each proxy.
#[derive(Debug)]
pub(crate) struct MeshView {
    xds: ConfigServer,
    proxies: Arc<Proxies>,
    state: Mutex<BTreeMap<String, ProxyState>>,
    /// `check`'s findings of the configuration version served: a page
    /// refreshing every 2 s must not run the analyzers each time.
    findings: Mutex<Option<(u64, Vec<serde_json::Value>)>>,
}

/// The reading task; stops when dropped.
#[derive(Debug)]
pub(crate) struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl MeshView {
    pub(crate) fn new(xds: ConfigServer) -> Arc<Self> {
        Arc::new(Self {
            proxies: xds.proxies(),
            xds,
            state: Mutex::new(BTreeMap::new()),
            findings: Mutex::new(None),
        })
    }

    /// Reads every proxy's metrics every `interval` while `self` lives.
    pub(crate) fn spawn_reader(self: &Arc<Self>, interval: Duration) -> Reader {
        let weak: Weak<Self> = Arc::downgrade(self);
        Reader(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(view) = weak.upgrade() else { return };
                view.read_all().await;
            }
        }))
    }

    /// One round: every proxy on the stream, at once.
    async fn read_all(&self) {
        let proxies = self.proxies.list();
        // Together: each read is bounded by its timeout, and one slow
        // proxy must not hold the others' figures back.
        let mut reads = tokio::task::JoinSet::new();
        for (i, p) in proxies.iter().enumerate() {
            let addr = p.metrics;
            reads.spawn(async move {
                let got = match addr {
                    Some(addr) => read_metrics(addr).await.map(|text| parse(&text)),
                    None => Err("it named no metrics port".to_owned()),
                };
                (i, got)
            });
        }
        let mut results: Vec<Option<Result<Reading, String>>> =
            (0..proxies.len()).map(|_| None).collect();
        while let Some(done) = reads.join_next().await {
            if let Ok((i, got)) = done {
                results[i] = Some(got);
            }
        }
        let now = Instant::now();
        let mut state = lock(&self.state);
        let open: BTreeSet<&str> = proxies.iter().map(|p| p.node.as_str()).collect();
        state.retain(|node, _| open.contains(node.as_str()));
        for (p, got) in proxies.iter().zip(results) {
            let Some(got) = got else { continue };
            let s = state.entry(p.node.clone()).or_default();
            s.identity.clone_from(&p.identity);
            s.addr = p.metrics;
            match got {
                Ok(reading) => {
                    s.readings.push_back((now, reading));
                    while s.readings.len() > 2
                        && s.readings.get(1).is_some_and(|(t, _)| now - *t >= WINDOW)
                    {
                        s.readings.pop_front();
                    }
                    s.last_error = None;
                    s.last_read = Some(SystemTime::now());
                }
                Err(e) => s.last_error = Some(e),
            }
        }
    }

    /// The page's data.
    pub(crate) fn data(&self) -> serde_json::Value {
        let state = lock(&self.state);
        let served: BTreeSet<String> = state
            .keys()
            .map(|n| {
                n.strip_prefix(mesh_core::xds::GATEWAY_NODE_PREFIX)
                    .unwrap_or(n)
                    .to_owned()
            })
            .collect();
        let mut edges: BTreeMap<(String, String, bool), Edge> = BTreeMap::new();
        let mut splits: BTreeMap<String, BTreeMap<(String, String), f64>> = BTreeMap::new();
        let mut window = 0.0_f64;
        for s in state.values() {
            let (Some((t_new, newest)), Some((t_old, oldest))) =
                (s.readings.back(), s.readings.front())
            else {
                continue;
            };
            let dt = (*t_new - *t_old).as_secs_f64();
            window = window.max(dt);
            for (k, now) in newest {
                // Only edges the serving side did not report already.
                if !k.destination_reported && served.contains(&k.destination) {
                    continue;
                }
                let before = oldest.get(k);
                let delta = delta(now, before);
                let e = edges
                    .entry((k.source.clone(), k.destination.clone(), k.tcp))
                    .or_default();
                e.add(k, now, &delta, dt);
                if !k.tcp && k.destination_reported && dt > 0.0 {
                    *splits
                        .entry(k.service.clone())
                        .or_default()
                        .entry((k.version.clone(), k.destination.clone()))
                        .or_default() += delta.count / dt;
                }
            }
        }
        let gateways: BTreeSet<String> = state
            .keys()
            .filter_map(|n| n.strip_prefix(mesh_core::xds::GATEWAY_NODE_PREFIX))
            .map(str::to_owned)
            .collect();
        let mut nodes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        for (node, s) in state.iter() {
            let id = node
                .strip_prefix(mesh_core::xds::GATEWAY_NODE_PREFIX)
                .unwrap_or(node);
            nodes.insert(
                id.to_owned(),
                serde_json::json!({
                    "id": id,
                    "kind": if gateways.contains(id) { "gateway" } else { "workload" },
                    "identity": s.identity,
                    "metrics": s.addr.map(|a| a.to_string()),
                    "error": s.last_error,
                    "read": s.last_read.map(humantime_ago),
                }),
            );
        }
        for (src, dst, _) in edges.keys() {
            for n in [src, dst] {
                nodes.entry(n.clone()).or_insert_with(|| {
                    let kind = if n == "unknown" {
                        "unknown"
                    } else if n.contains('/') {
                        "workload"
                    } else {
                        "service"
                    };
                    serde_json::json!({ "id": n, "kind": kind })
                });
            }
        }
        let edges: Vec<serde_json::Value> = edges
            .iter()
            .map(|((src, dst, tcp), e)| e.json(src, dst, *tcp))
            .collect();
        let splits: Vec<serde_json::Value> = splits
            .into_iter()
            .filter(|(_, v)| v.len() > 1 || v.values().any(|r| *r > 0.0))
            .map(|(service, versions)| {
                let total: f64 = versions.values().sum();
                serde_json::json!({
                    "service": service,
                    "versions": versions.iter().map(|((version, workload), rps)| serde_json::json!({
                        "version": version,
                        "workload": workload,
                        "rps": round(*rps, 2),
                        "share": if total > 0.0 { round(rps / total, 4) } else { 0.0 },
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        drop(state);
        serde_json::json!({
            "window_seconds": round(window, 1),
            "nodes": nodes.into_values().collect::<Vec<_>>(),
            "edges": edges,
            "splits": splits,
            "problems": self.problems(),
        })
    }

    /// What `check` finds in the configuration served, and a rejected
    /// newer one.
    fn problems(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let stats = serde_json::to_value(self.xds.stats()).unwrap_or_default();
        if let Some(e) = stats.get("last_error").filter(|e| !e.is_null()) {
            out.push(serde_json::json!({
                "severity": "error",
                "code": "REJECTED",
                "message": format!("the newest configuration was rejected; the last good one is served: {}", text_of(e)),
                "resources": [],
            }));
        }
        if let Some(why) = self.xds.not_ready() {
            out.push(serde_json::json!({
                "severity": "error",
                "code": "NOT_READY",
                "message": why,
                "resources": [],
            }));
        }
        out.extend(self.findings());
        out
    }

    /// `check` on the configuration served, once per version.
    fn findings(&self) -> Vec<serde_json::Value> {
        let snap = self.xds.snapshot();
        let mut cached = lock(&self.findings);
        if let Some((version, f)) = &*cached
            && *version == snap.version
        {
            return f.clone();
        }
        let mut out = Vec::new();
        let resources = self.xds.resources();
        let report = mesh_core::analyze::check_with(
            &snap,
            &resources,
            mesh_core::analyze::CheckOptions::default(),
        );
        for row in report
            .tls
            .iter()
            .filter(|r| r.status == mesh_core::analyze::TlsStatus::Conflict)
        {
            out.push(serde_json::json!({
                "severity": "error",
                "code": "TLS_CONFLICT",
                "message": serde_json::to_value(row).unwrap_or_default(),
                "resources": [],
            }));
        }
        let mut findings = report.findings;
        findings.extend(crate::grpc::findings(&snap));
        for f in findings {
            out.push(serde_json::json!({
                "severity": f.severity,
                "code": f.code,
                "message": f.message,
                "resources": f.resources.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }));
        }
        *cached = Some((snap.version, out.clone()));
        out
    }

    /// The answer at [`PAGE_PATH`] or [`PAGE_DATA_PATH`], if `path` is one.
    pub(crate) fn respond(&self, path: &str) -> Option<(&'static str, String)> {
        match path {
            PAGE_PATH | "/mesh/" => Some(("text/html; charset=utf-8", PAGE_HTML.to_owned())),
            PAGE_DATA_PATH => Some((
                "application/json",
                serde_json::to_string(&self.data()).unwrap_or_default(),
            )),
            _ => None,
        }
    }
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn humantime_ago(t: SystemTime) -> f64 {
    round(
        SystemTime::now()
            .duration_since(t)
            .unwrap_or_default()
            .as_secs_f64(),
        1,
    )
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// `now - before`; a counter that went down (a restarted proxy) counts
/// from zero.
fn delta(now: &Counters, before: Option<&Counters>) -> Counters {
    let Some(b) = before else {
        return now.clone();
    };
    if now.count < b.count {
        return now.clone();
    }
    Counters {
        count: now.count - b.count,
        errors: (now.errors - b.errors).max(0.0),
        denied: (now.denied - b.denied).max(0.0),
        buckets: now
            .buckets
            .iter()
            .map(|(le, n)| {
                (
                    *le,
                    (n - b.buckets.get(le).copied().unwrap_or(0.0)).max(0.0),
                )
            })
            .collect(),
    }
}

/// One edge of the graph, summed over its series.
#[derive(Debug, Default)]
struct Edge {
    total: f64,
    window: Counters,
    dt: f64,
    security: BTreeSet<String>,
    source_principals: BTreeSet<String>,
    destination_principals: BTreeSet<String>,
    services: BTreeSet<String>,
    reporter: &'static str,
}

impl Edge {
    fn add(&mut self, k: &SeriesKey, now: &Counters, d: &Counters, dt: f64) {
        self.total += now.count;
        self.window.count += d.count;
        self.window.errors += d.errors;
        self.window.denied += d.denied;
        for (le, n) in &d.buckets {
            *self.window.buckets.entry(*le).or_default() += n;
        }
        self.dt = self.dt.max(dt);
        self.reporter = if k.destination_reported {
            "destination"
        } else {
            "source"
        };
        // Only the serving side knows the connection's security.
        if k.destination_reported {
            self.security.insert(k.security.clone());
        }
        for (set, v) in [
            (&mut self.source_principals, &k.source_principal),
            (&mut self.destination_principals, &k.destination_principal),
        ] {
            if v != "unknown" && !v.is_empty() {
                set.insert(v.clone());
            }
        }
        self.services.insert(k.service.clone());
    }

    fn json(&self, src: &str, dst: &str, tcp: bool) -> serde_json::Value {
        let rps = if self.dt > 0.0 {
            self.window.count / self.dt
        } else {
            0.0
        };
        let success = (self.window.count > 0.0)
            .then(|| 1.0 - (self.window.errors + self.window.denied) / self.window.count);
        let mtls = !self.security.is_empty() && self.security.iter().all(|s| s == "mutual_tls");
        let service = self.services.iter().next().cloned().unwrap_or_default();
        let explain = (src != "unknown" && src.contains('/'))
            .then(|| format!("{}?from={}&to={}", crate::EXPLAIN_PATH, src, service));
        serde_json::json!({
            "source": src,
            "destination": dst,
            "protocol": if tcp { "tcp" } else { "http" },
            "services": self.services,
            "reporter": self.reporter,
            "total": self.total,
            "rps": round(rps, 2),
            "success_rate": success.map(|s| round(s.max(0.0), 4)),
            "p99_ms": if tcp { None } else { quantile(0.99, &self.window.buckets) },
            "denied": self.window.denied,
            "mtls": mtls,
            "security": self.security,
            "source_principals": self.source_principals,
            "destination_principals": self.destination_principals,
            "explain": explain,
        })
    }
}

/// Prometheus' `histogram_quantile` on cumulative buckets.
fn quantile(q: f64, buckets: &BTreeMap<Le, f64>) -> Option<f64> {
    let total = buckets.iter().next_back().map(|(_, n)| *n)?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for (le, n) in buckets {
        if *n >= rank {
            if le.0.is_infinite() {
                return Some(round(lower.0, 1));
            }
            let (lo, below) = lower;
            let width = n - below;
            let frac = if width > 0.0 {
                (rank - below) / width
            } else {
                1.0
            };
            return Some(round(lo + (le.0 - lo) * frac, 1));
        }
        lower = (le.0, *n);
    }
    Some(round(lower.0, 1))
}

/// Reads `http://addr/stats/prometheus`.
async fn read_metrics(addr: SocketAddr) -> Result<String, String> {
    let fetch = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tcp.write_all(
            format!("GET /stats/prometheus HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
        let mut body = Vec::new();
        (&mut tcp)
            .take(MAX_SCRAPE_BYTES + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if body.len() as u64 > MAX_SCRAPE_BYTES {
            return Err(format!(
                "{addr}: the metrics exceed {MAX_SCRAPE_BYTES} bytes"
            ));
        }
        let text = String::from_utf8(body).map_err(|_| format!("{addr}: not UTF-8"))?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
        let status = head.split(' ').nth(1).unwrap_or_default();
        if status != "200" {
            return Err(format!(
                "{addr}: answered {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("{addr}: no answer within {SCRAPE_TIMEOUT:?}")))
}

/// A series: name, labels, value.
type Series<'a> = (&'a str, Vec<(&'a str, String)>, f64);

/// One series line.
fn parse_line(line: &str) -> Option<Series<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (n, v) = line.split_once(' ')?;
            return Some((n, Vec::new(), v.trim().split(' ').next()?.parse().ok()?));
        }
    };
    let mut labels = Vec::new();
    let mut rest = rest;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(r) = rest.strip_prefix('}') {
            let value = r.trim().split(' ').next()?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            return Some((name, labels, value));
        }
        let (key, r) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i + 1,
                c => value.push(c),
            }
        };
        labels.push((key.trim(), value));
        rest = &r[end..];
    }
}

/// The edges of one proxy's metrics.
fn parse(text: &str) -> Reading {
    let mut out = Reading::new();
    for line in text.lines() {
        let Some((name, labels, value)) = parse_line(line) else {
            continue;
        };
        let (tcp, bucket) = match name {
            "istio_requests_total" => (false, false),
            "istio_request_duration_milliseconds_bucket" => (false, true),
            "istio_tcp_connections_opened_total" => (true, false),
            _ => continue,
        };
        let get = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| *n == k)
                .map_or("unknown", |(_, v)| v.as_str())
        };
        let node = |ns: &str, wl: &str| {
            let (ns, wl) = (get(ns), get(wl));
            if wl == "unknown" || wl.is_empty() {
                "unknown".to_owned()
            } else {
                format!("{ns}/{wl}")
            }
        };
        let destination_reported = get("reporter") == "destination";
        let mut destination = node("destination_workload_namespace", "destination_workload");
        if destination == "unknown" {
            destination = get("destination_service").to_owned();
        }
        let key = SeriesKey {
            destination_reported,
            tcp,
            source: node("source_workload_namespace", "source_workload"),
            destination,
            service: get("destination_service").to_owned(),
            version: get("destination_version").to_owned(),
            security: get("connection_security_policy").to_owned(),
            source_principal: get("source_principal").to_owned(),
            destination_principal: get("destination_principal").to_owned(),
        };
        let c = out.entry(key).or_default();
        if bucket {
            let le = match labels.iter().find(|(n, _)| *n == "le") {
                Some((_, v)) if v == "+Inf" => f64::INFINITY,
                Some((_, v)) => match v.parse() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                None => continue,
            };
            *c.buckets.entry(Le(le)).or_default() += value;
        } else {
            c.count += value;
            let flags = get("response_flags");
            if flags.contains("RBAC") {
                c.denied += value;
            } else if tcp {
                if flags != "-" && flags != "unknown" {
                    c.errors += value;
                }
            } else if get("response_code").starts_with('5') {
                c.errors += value;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TEXT: &str = r#"# HELP istio_requests_total x
# TYPE istio_requests_total counter
istio_requests_total{reporter="destination",source_workload="gw",source_workload_namespace="default",source_principal="spiffe://td/ns/default/sa/gw",destination_workload="v1",destination_workload_namespace="default",destination_service="web.default.svc.cluster.local",destination_version="v1",destination_principal="spiffe://td/ns/default/sa/web",response_code="200",response_flags="-",connection_security_policy="mutual_tls"} 90
istio_requests_total{reporter="destination",source_workload="gw",source_workload_namespace="default",source_principal="spiffe://td/ns/default/sa/gw",destination_workload="v1",destination_workload_namespace="default",destination_service="web.default.svc.cluster.local",destination_version="v1",destination_principal="spiffe://td/ns/default/sa/web",response_code="503",response_flags="UF",connection_security_policy="mutual_tls"} 10
istio_requests_total{reporter="destination",source_workload="x",source_workload_namespace="default",source_principal="spiffe://td/ns/default/sa/x",destination_workload="v1",destination_workload_namespace="default",destination_service="web.default.svc.cluster.local",destination_version="v1",destination_principal="spiffe://td/ns/default/sa/web",response_code="403",response_flags="RBAC",connection_security_policy="mutual_tls"} 4
istio_request_duration_milliseconds_bucket{reporter="destination",source_workload="gw",source_workload_namespace="default",source_principal="spiffe://td/ns/default/sa/gw",destination_workload="v1",destination_workload_namespace="default",destination_service="web.default.svc.cluster.local",destination_version="v1",destination_principal="spiffe://td/ns/default/sa/web",response_code="200",response_flags="-",connection_security_policy="mutual_tls",le="10"} 50
istio_request_duration_milliseconds_bucket{reporter="destination",source_workload="gw",source_workload_namespace="default",source_principal="spiffe://td/ns/default/sa/gw",destination_workload="v1",destination_workload_namespace="default",destination_service="web.default.svc.cluster.local",destination_version="v1",destination_principal="spiffe://td/ns/default/sa/web",response_code="200",response_flags="-",connection_security_policy="mutual_tls",le="100"} 100
istio_request_duration_milliseconds_bucket{reporter="destination",source_workload="gw",source_workload_namespace="default",source_principal="spiffe://td/ns/default/sa/gw",destination_workload="v1",destination_workload_namespace="default",destination_service="web.default.svc.cluster.local",destination_version="v1",destination_principal="spiffe://td/ns/default/sa/web",response_code="200",response_flags="-",connection_security_policy="mutual_tls",le="+Inf"} 100
istio_build{component="proxy",tag="1.0"} 1
"#;

    #[test]
    fn series_become_edges_with_errors_denials_and_buckets() {
        let r = parse(TEXT);
        let gw = r.iter().find(|(k, _)| k.source == "default/gw").unwrap();
        assert_eq!(gw.0.destination, "default/v1");
        assert!(gw.0.destination_reported && !gw.0.tcp);
        assert_eq!(gw.1.count, 100.0);
        assert_eq!(gw.1.errors, 10.0);
        assert_eq!(gw.1.buckets.len(), 3);
        let x = r.iter().find(|(k, _)| k.source == "default/x").unwrap();
        assert_eq!((x.1.count, x.1.denied, x.1.errors), (4.0, 4.0, 0.0));
    }

    #[test]
    fn quantile_interpolates_within_the_bucket_as_prometheus_does() {
        let b: BTreeMap<Le, f64> = [
            (Le(10.0), 50.0),
            (Le(100.0), 100.0),
            (Le(f64::INFINITY), 100.0),
        ]
        .into_iter()
        .collect();
        // rank 99 of 100: 49/50 of the way from 10 to 100.
        assert_eq!(quantile(0.99, &b), Some(98.2));
        assert_eq!(quantile(0.5, &b), Some(10.0));
        assert_eq!(quantile(0.99, &BTreeMap::new()), None);
    }

    #[test]
    fn escaped_label_values_are_read_whole() {
        let (name, labels, v) = parse_line(r#"m{a="x\"y,z}",b="\\"} 2"#).unwrap();
        assert_eq!(name, "m");
        assert_eq!(
            labels,
            vec![("a", "x\"y,z}".to_owned()), ("b", "\\".to_owned())]
        );
        assert_eq!(v, 2.0);
        assert!(parse_line(r#"m{a="x} 2"#).is_none());
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero() {
        let before = Counters {
            count: 100.0,
            ..Counters::default()
        };
        let now = Counters {
            count: 7.0,
            ..Counters::default()
        };
        assert_eq!(delta(&now, Some(&before)).count, 7.0);
    }

    #[test]
    fn the_metrics_address_is_the_streams_ip_and_the_named_port() {
        use envoy_types::pb::google::protobuf::{Struct, Value};
        let node = |v: Kind| Node {
            metadata: Some(Struct {
                fields: [(
                    mesh_tower::xds::METRICS_PORT_METADATA.to_owned(),
                    Value { kind: Some(v) },
                )]
                .into_iter()
                .collect(),
            }),
            ..Node::default()
        };
        let peer: SocketAddr = "10.0.0.7:40000".parse().unwrap();
        assert_eq!(
            metrics_addr(peer, Some(&node(Kind::StringValue("15020".into())))),
            Some("10.0.0.7:15020".parse().unwrap())
        );
        // A host in the value is not a port: never read elsewhere.
        assert_eq!(
            metrics_addr(peer, Some(&node(Kind::StringValue("1.2.3.4:80".into())))),
            None
        );
        assert_eq!(
            metrics_addr(peer, Some(&node(Kind::NumberValue(0.0)))),
            None
        );
        assert_eq!(metrics_addr(peer, Some(&Node::default())), None);
    }
}
