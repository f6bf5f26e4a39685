//! The canary as Istio's users watch it: a real Prometheus (Debian's
//! `prometheus` package) scrapes the four proxies and the control plane of
//! the explicit mode, and the queries of Istio's three Grafana dashboards
//! and Kiali's graph and health queries run against it. Every panel Istio
//! would fill for this traffic must have data, every Kiali edge must name
//! real workloads, and `promtool` must find nothing wrong with the
//! exposition but Istio's own metric names.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Scenario, repo};
use serde_json::Value as Json;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
/// A fixed port, as the canary's own are: the canary runs one mode at a
/// time, and 19090 is below Linux's ephemeral range (32768-60999), so no
/// other test's `bind(0)` can take it meanwhile.
const LISTEN: &str = "127.0.0.1:19090";

/// What Prometheus scrapes: the explicit mode's admin ports (run.sh's
/// `start_explicit`) and the control plane's metrics.
struct Target {
    job: &'static str,
    instance: &'static str,
    address: &'static str,
    path: &'static str,
}

const fn target(
    job: &'static str,
    instance: &'static str,
    address: &'static str,
    path: &'static str,
) -> Target {
    Target {
        job,
        instance,
        address,
        path,
    }
}

const STATS: &str = "/stats/prometheus";
const TARGETS: [Target; 5] = [
    target("mesh-proxy", "blog-gateway", "127.0.0.1:15000", STATS),
    target("mesh-proxy", "mysql", "127.0.0.1:15300", STATS),
    target("mesh-proxy", "wordpress-v1", "127.0.0.1:15301", STATS),
    target("mesh-proxy", "wordpress-v2", "127.0.0.1:15302", STATS),
    target("mesh-ca", "mesh-ca", "127.0.0.1:15014", "/metrics"),
];

/// Everything this file checks, on the scenario `end_to_end` has driven.
pub(super) fn istio_dashboards_and_kiali(s: &Scenario) {
    if !Path::new(PROMETHEUS).exists() || !Path::new(PROMTOOL).exists() {
        eprintln!(
            "SKIPPED the Prometheus checks of the WordPress canary (Istio's dashboards, Kiali's queries, promtool): \
             {PROMETHEUS} or {PROMTOOL} is missing; `apt-get install prometheus` (CI does)"
        );
        return;
    }
    assert_eq!(
        s.endpoint("MODE"),
        "explicit",
        "the targets are explicit mode's"
    );
    assert_eq!(s.endpoint("CA_METRICS"), TARGETS[4].address);
    exposition_lints_clean();
    let mut prom = Prometheus::start();
    let at = drive_traffic(s, &mut prom);
    dashboards(&prom, &at);
    kiali(&prom, &at);
}

/// A Prometheus server in a temporary folder; dropping it (also while a
/// failed assertion unwinds) kills it.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for job in ["mesh-proxy", "mesh-ca"] {
            let mut targets = TARGETS.iter().filter(|t| t.job == job);
            let path = targets.clone().next().unwrap().path;
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n"
            ));
            for t in &mut targets {
                config.push_str(&format!(
                    "      - targets: ['{}']\n        labels: {{instance: {}}}\n",
                    t.address, t.instance
                ));
            }
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, &config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut prom = Self { child, dir };
        prom.wait_for("Prometheus to be ready and scraping", 60, |p| {
            curl(&[&format!("http://{LISTEN}/-/ready")]).contains("Ready")
                && p.query("up", None).len() == TARGETS.len()
        });
        prom
    }

    /// Polls `done` every 200 ms for up to `secs`; the log on failure.
    fn wait_for(&mut self, what: &str, secs: u64, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "prometheus exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The first value of `expr` now, as a number.
    fn number(&self, expr: &str) -> Option<f64> {
        self.query(expr, None).first().and_then(Series::number)
    }

    /// An instant query at `time` (now if `None`). A query Prometheus
    /// rejects fails the test with the query.
    fn query(&self, expr: &str, time: Option<&str>) -> Vec<Series> {
        let url = format!("http://{LISTEN}/api/v1/query");
        let query = format!("query={expr}");
        let mut args = vec!["-G", "--data-urlencode", &query];
        let time = time.map(|t| format!("time={t}"));
        if let Some(t) = &time {
            args.extend(["--data-urlencode", t]);
        }
        args.push(&url);
        let body = curl(&args);
        let answer: Json =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e} in {body:?} for {expr}"));
        assert_eq!(
            answer["status"], "success",
            "Prometheus rejected {expr}: {body}"
        );
        let value = |pair: &Json| pair[1].as_str().unwrap_or("NaN").to_owned();
        let result = &answer["data"]["result"];
        if answer["data"]["resultType"] == "scalar" {
            return vec![Series {
                labels: BTreeMap::new(),
                value: value(result),
            }];
        }
        items(Some(result))
            .iter()
            .map(|series| Series {
                labels: series["metric"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                    .collect(),
                value: value(&series["value"]),
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One series of a query's answer.
#[derive(Debug)]
struct Series {
    labels: BTreeMap<String, String>,
    value: String,
}

impl Series {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }

    fn number(&self) -> Option<f64> {
        self.value.parse().ok()
    }
}

/// A JSON array's items; nothing for anything else.
fn items(value: Option<&Json>) -> &[Json] {
    value.and_then(Json::as_array).map_or(&[], Vec::as_slice)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unix_now() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

/// Requests through the gateway until every target was scraped at least
/// four times during them (so the last two samples before the returned
/// instant both fall inside the traffic, as `irate` needs), then waits
/// until Prometheus scraped everything once more: the returned instant is
/// where every query is evaluated.
fn drive_traffic(s: &Scenario, prom: &mut Prometheus) -> String {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut answered = 0;
    loop {
        // The front page, and a missing post (WordPress's 404) for the 4xx
        // panels.
        let (pages, _) = s.burst(20, "/", &[]);
        let (missing, _) = s.burst(2, "/", &["--get", "--data", "p=999999"]);
        answered += pages
            .iter()
            .chain(&missing)
            .filter(|(c, _)| *c != 0)
            .count();
        let window = started.elapsed().as_secs() + 1;
        let scrapes = prom.number(&format!("min(count_over_time(up[{window}s]))"));
        if scrapes.is_some_and(|n| n >= 4.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no scrapes:\n{}", prom.log());
    }
    assert!(answered > 0, "the gateway answered nothing:\n{}", s.logs());
    let at = unix_now();
    let after: f64 = at.parse().unwrap();
    prom.wait_for("a scrape of every target after the traffic", 30, |p| {
        p.number("min(timestamp(up))").is_some_and(|t| t > after)
    });
    for metric in [
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "istio_tcp_sent_bytes_total",
        "istio_build",
    ] {
        assert!(
            !prom.query(metric, Some(&at)).is_empty(),
            "Prometheus has no {metric}"
        );
    }
    at
}

// ---- Istio's dashboards ----

/// Which traffic a dashboard's subject has: where Istio reports nothing,
/// the panels stay empty.
#[derive(Clone, Copy, Debug)]
struct Traffic {
    incoming: Protocols,
    outgoing: Protocols,
}

#[derive(Clone, Copy, Debug)]
struct Protocols {
    http: bool,
    tcp: bool,
}

const fn protocols(http: bool, tcp: bool) -> Protocols {
    Protocols { http, tcp }
}

const HTTP: Protocols = protocols(true, false);
const TCP: Protocols = protocols(false, true);
const BOTH: Protocols = protocols(true, true);
const NONE: Protocols = protocols(false, false);

/// A dashboard with its variables set as a user watching this traffic
/// would set them; `$qrep` both ways, as its two values show different
/// reporters' series.
struct View {
    dashboard: &'static str,
    vars: &'static [(&'static str, &'static str)],
    traffic: Traffic,
}

const fn view(
    dashboard: &'static str,
    vars: &'static [(&'static str, &'static str)],
    incoming: Protocols,
    outgoing: Protocols,
) -> View {
    View {
        dashboard,
        vars,
        traffic: Traffic { incoming, outgoing },
    }
}

const MESH: &str = "istio-mesh-dashboard.gen.json";
const SERVICE: &str = "istio-service-dashboard.json";
const WORKLOAD: &str = "istio-workload-dashboard.json";
const WORDPRESS: (&str, &str) = ("service", "wordpress.default.svc.cluster.local");
const MYSQL_SVC: (&str, &str) = ("service", "mysql.default.svc.cluster.local");
const DEFAULT: (&str, &str) = ("namespace", "default");
const BY_SERVER: (&str, &str) = ("qrep", "destination");
const BY_CLIENT: (&str, &str) = ("qrep", "source");

const WORDPRESS_V1: (&str, &str) = ("workload", "wordpress-v1");
const MYSQL_WORKLOAD: (&str, &str) = ("workload", "mysql");
const GATEWAY_WORKLOAD: (&str, &str) = ("workload", "blog-gateway");

const VIEWS: &[View] = &[
    view(MESH, &[], BOTH, BOTH),
    view(SERVICE, &[WORDPRESS, BY_SERVER], HTTP, NONE),
    view(SERVICE, &[WORDPRESS, BY_CLIENT], HTTP, NONE),
    view(SERVICE, &[MYSQL_SVC, BY_SERVER], TCP, NONE),
    view(SERVICE, &[MYSQL_SVC, BY_CLIENT], TCP, NONE),
    // WordPress: HTTP in from the gateway, MySQL's TCP out (its own HTTP
    // calls do not cross the mesh: `--http-proxy off`).
    view(WORKLOAD, &[DEFAULT, WORDPRESS_V1, BY_SERVER], HTTP, TCP),
    view(WORKLOAD, &[DEFAULT, WORDPRESS_V1, BY_CLIENT], HTTP, TCP),
    view(WORKLOAD, &[DEFAULT, MYSQL_WORKLOAD, BY_SERVER], TCP, NONE),
    view(WORKLOAD, &[DEFAULT, MYSQL_WORKLOAD, BY_CLIENT], TCP, NONE),
    // The gateway: its clients are outside the mesh (Istio's gateways
    // report only as the source), HTTP out to WordPress.
    view(
        WORKLOAD,
        &[DEFAULT, GATEWAY_WORKLOAD, BY_SERVER],
        NONE,
        HTTP,
    ),
];

struct Panel {
    id: i64,
    title: String,
    exprs: Vec<String>,
}

/// Every panel with a query, rows' nested panels included.
fn panels(node: &Json, out: &mut Vec<Panel>) {
    for key in ["panels", "rows"] {
        for p in items(node.get(key)) {
            let exprs: Vec<String> = items(p.get("targets"))
                .iter()
                .filter_map(|t| t.get("expr").and_then(Json::as_str))
                .filter(|e| !e.trim().is_empty())
                .map(str::to_owned)
                .collect();
            if !exprs.is_empty() {
                out.push(Panel {
                    id: p.get("id").and_then(Json::as_i64).unwrap_or(-1),
                    title: p
                        .get("title")
                        .and_then(Json::as_str)
                        .unwrap_or("(untitled)")
                        .to_owned(),
                    exprs,
                });
            }
            panels(p, out);
        }
    }
}

/// The value of each variable: the view's, else Grafana's All (the
/// variable's `allValue`, or `.*`); the time ranges are 1 m.
fn variables(dashboard: &Json, view: &View) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = ["__rate_interval", "__interval", "__range"]
        .into_iter()
        .map(|v| (v.to_owned(), "1m".to_owned()))
        .collect();
    for v in items(dashboard.get("templating").and_then(|t| t.get("list"))) {
        let name = v["name"].as_str().unwrap();
        if v["type"] == "datasource" {
            continue;
        }
        let value = match view.vars.iter().find(|(n, _)| *n == name) {
            Some((_, value)) => (*value).to_owned(),
            None if v["includeAll"] == true => v["allValue"].as_str().unwrap_or(".*").to_owned(),
            None => panic!("{}: the view sets no ${name}", view.dashboard),
        };
        vars.insert(name.to_owned(), value);
    }
    vars
}

/// `$name` and `${name}` (`${name:format}` too) replaced; an unknown
/// variable is an error, so no query runs half substituted.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, len) = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {expr}"))?;
            let inner = &braced[..end];
            (inner.split(':').next().unwrap_or(inner), end + 2)
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], end)
        };
        let value = vars
            .get(name)
            .ok_or_else(|| format!("unknown variable ${name} in {expr}"))?;
        out.push_str(value);
        rest = &rest[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Why Istio itself would leave this query of `view` empty, if it would.
fn istio_leaves_empty(raw: &str, view: &View) -> Option<&'static str> {
    let qrep = view
        .vars
        .iter()
        .find(|(n, _)| *n == "qrep")
        .map(|(_, v)| *v);
    let source = raw.contains("reporter=\"source\"")
        || raw.contains("reporter=~\"source|waypoint\"")
        || (raw.contains("reporter=~\"$qrep\"") && qrep == Some("source"));
    let destination = raw.contains("reporter=\"destination\"")
        || (raw.contains("reporter=~\"$qrep\"") && qrep == Some("destination"));
    let tcp = raw.contains("istio_tcp_");
    let http = raw.contains("istio_request") || raw.contains("istio_response");
    let outgoing = raw.contains("source_workload=~\"$workload\"");
    let protocols = if outgoing {
        view.traffic.outgoing
    } else {
        view.traffic.incoming
    };
    if (tcp && !protocols.tcp) || (http && !protocols.http) {
        return Some(if tcp {
            "no TCP traffic this way: Istio reports istio_tcp_* only for connections it proxies as TCP"
        } else {
            "no HTTP traffic this way"
        });
    }
    if destination && raw.contains("connection_security_policy!=\"mutual_tls\"") {
        return Some("STRICT mTLS everywhere: every server-side series is mutual_tls");
    }
    if source && raw.contains("connection_security_policy=\"mutual_tls\"") {
        return Some(
            "Istio's client side reports connection_security_policy=\"unknown\": only the server knows",
        );
    }
    if raw.contains("destination_principal!~\"spiffe.*\"") {
        // Only requests that reached no workload (end_to_end's CONFLICT
        // 503s) say "unknown", in Istio too; their series are idle here.
        return Some("every destination is a mesh workload with a SPIFFE identity");
    }
    None
}

fn has_data(series: &[Series]) -> bool {
    series.iter().any(|s| s.value != "NaN")
}

fn dashboards(prom: &Prometheus, at: &str) {
    let dir = repo().join("../shared/istio-dashboards");
    let mut failures = Vec::new();
    // Per dashboard: panel (id, title) -> has data in some view.
    let mut seen: BTreeMap<&str, BTreeMap<(i64, String), bool>> = BTreeMap::new();
    for view in VIEWS {
        let text = std::fs::read_to_string(dir.join(view.dashboard))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(view.dashboard).display()));
        let dashboard: Json =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", view.dashboard));
        let vars = variables(&dashboard, view);
        let label = view
            .vars
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut list = Vec::new();
        panels(&dashboard, &mut list);
        let (mut expected, mut filled, mut istio_empty) = (0, 0, 0);
        for panel in &list {
            let mut panel_expected = false;
            let mut panel_data = false;
            for raw in &panel.exprs {
                let expr = substitute(raw, &vars).unwrap();
                let data = has_data(&prom.query(&expr, Some(at)));
                panel_data |= data;
                match istio_leaves_empty(raw, view) {
                    None => {
                        panel_expected = true;
                        if !data {
                            failures.push(format!(
                                "{} [{label}] panel {} {:?}: no data for\n    {expr}",
                                view.dashboard, panel.id, panel.title
                            ));
                        }
                    }
                    Some(why) if data => eprintln!(
                        "note: {} [{label}] panel {} {:?} has data Istio would not give ({why}):\n    {expr}",
                        view.dashboard, panel.id, panel.title
                    ),
                    Some(_) => {}
                }
            }
            if panel_expected {
                expected += 1;
                filled += usize::from(panel_data);
            } else {
                istio_empty += 1;
            }
            *seen
                .entry(view.dashboard)
                .or_default()
                .entry((panel.id, panel.title.clone()))
                .or_default() |= panel_data;
        }
        eprintln!(
            "{} [{label}]: {filled} of {expected} panels have data ({istio_empty} more that Istio would leave empty for this traffic)",
            view.dashboard
        );
    }
    for (dashboard, panels) in &seen {
        let filled = panels.values().filter(|d| **d).count();
        eprintln!(
            "{dashboard}: {filled} of {} panels have data in at least one view",
            panels.len()
        );
        for ((id, title), data) in panels {
            if !data {
                failures.push(format!(
                    "{dashboard} panel {id} {title:?} is empty in every view"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} dashboard queries without data that Istio would fill:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---- Kiali ----

const KIALI_EDGE: &str = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_workload,destination_canonical_service,destination_canonical_revision";

/// An edge of Kiali's graph this traffic must draw: (workload, canonical
/// service) to (workload, canonical service, canonical revision).
struct Edge {
    reporter: &'static str,
    tcp: bool,
    source: (&'static str, &'static str),
    destination: (&'static str, &'static str, &'static str),
}

const GATEWAY: (&str, &str) = ("blog-gateway", "blog-gateway");
const WP_V1: (&str, &str) = ("wordpress-v1", "wordpress");
const WP_V2: (&str, &str) = ("wordpress-v2", "wordpress");
const V1: (&str, &str, &str) = ("wordpress-v1", "wordpress", "v1");
const V2: (&str, &str, &str) = ("wordpress-v2", "wordpress", "v2");
const MYSQL: (&str, &str, &str) = ("mysql", "mysql", "latest");

const fn edge(
    reporter: &'static str,
    tcp: bool,
    source: (&'static str, &'static str),
    destination: (&'static str, &'static str, &'static str),
) -> Edge {
    Edge {
        reporter,
        tcp,
        source,
        destination,
    }
}

const EDGES: [Edge; 8] = [
    edge("destination", false, GATEWAY, V1),
    edge("destination", false, GATEWAY, V2),
    edge("source", false, GATEWAY, V1),
    edge("source", false, GATEWAY, V2),
    edge("destination", true, WP_V1, MYSQL),
    edge("destination", true, WP_V2, MYSQL),
    edge("source", true, WP_V1, MYSQL),
    edge("source", true, WP_V2, MYSQL),
];

fn kiali(prom: &Prometheus, at: &str) {
    let mut failures = Vec::new();
    for reporter in ["destination", "source"] {
        for tcp in [false, true] {
            // Kiali's graph query, without its `> 0`: WordPress v2 has been
            // dead since end_to_end's last step, so its edges are idle now.
            let (metric, by) = if tcp {
                (
                    "istio_tcp_sent_bytes_total",
                    format!("{KIALI_EDGE},response_flags"),
                )
            } else {
                (
                    "istio_requests_total",
                    format!("{KIALI_EDGE},response_code,grpc_response_status,response_flags"),
                )
            };
            let expr = format!(
                "sum(rate({metric}{{reporter=\"{reporter}\",destination_cluster=\"Kubernetes\"}}[1m])) by ({by})"
            );
            let series = prom.query(&expr, Some(at));
            if series.is_empty() {
                failures.push(format!("no series: {expr}"));
            }
            for one in &series {
                // grpc_response_status: Istio leaves it empty for HTTP that
                // is not gRPC (all of this traffic), and Prometheus drops
                // empty labels.
                let missing: Vec<&str> = by
                    .split(',')
                    .filter(|l| *l != "grpc_response_status")
                    .filter(|l| one.label(l).is_none_or(str::is_empty))
                    .collect();
                if !missing.is_empty() {
                    failures.push(format!(
                        "{metric} {:?} lacks {missing:?} ({expr})",
                        one.labels
                    ));
                }
            }
            for e in EDGES
                .iter()
                .filter(|e| e.reporter == reporter && e.tcp == tcp)
            {
                let found = series.iter().any(|one| {
                    [
                        ("source_workload", e.source.0),
                        ("source_canonical_service", e.source.1),
                        ("source_cluster", "Kubernetes"),
                        ("destination_workload", e.destination.0),
                        ("destination_canonical_service", e.destination.1),
                        ("destination_canonical_revision", e.destination.2),
                    ]
                    .iter()
                    .all(|(k, v)| one.label(k) == Some(v))
                });
                let what = format!(
                    "Kiali edge {} -> {} ({metric}, reporter=\"{reporter}\")",
                    e.source.0, e.destination.0
                );
                if !found {
                    failures.push(format!("no {what} in {series:?}"));
                }
            }
            eprintln!(
                "Kiali {metric} reporter={reporter}: {} series",
                series.len()
            );
        }
    }

    // The caller side of the MySQL tunnel names the database's workload and
    // its SPIFFE identity.
    let expr = "sum(istio_tcp_connections_opened_total{reporter=\"source\",destination_service=\"mysql.default.svc.cluster.local\"}) by (source_workload,destination_workload,destination_principal)";
    let tunnel = prom.query(expr, Some(at));
    for caller in ["wordpress-v1", "wordpress-v2"] {
        let from: Vec<_> = tunnel
            .iter()
            .filter(|one| one.label("source_workload") == Some(caller))
            .collect();
        let right = |one: &&Series| {
            one.label("destination_workload") == Some("mysql")
                && one.label("destination_principal")
                    == Some("spiffe://cluster.local/ns/default/sa/mysql")
        };
        if from.is_empty() || !from.iter().all(right) {
            failures.push(format!("{caller}'s MySQL connections: {from:?} ({expr})"));
        }
    }

    // Kiali's health: per service, workload and app, both sides.
    let health = [
        ("destination", "destination_service_name", "wordpress"),
        ("destination", "destination_workload", "wordpress-v1"),
        ("destination", "destination_workload", "wordpress-v2"),
        ("destination", "destination_canonical_service", "wordpress"),
        ("source", "source_workload", "blog-gateway"),
        ("source", "source_canonical_service", "blog-gateway"),
    ];
    for (reporter, by, name) in health {
        let side = by.split('_').next().unwrap();
        let namespace = if by.ends_with("service_name") {
            "destination_service_namespace".to_owned()
        } else {
            format!("{side}_workload_namespace")
        };
        let expr = format!(
            "sum(rate(istio_requests_total{{reporter=\"{reporter}\",{namespace}=\"default\"}}[1m])) by ({by},{namespace},response_code,grpc_response_status,response_flags)"
        );
        let series = prom.query(&expr, Some(at));
        if !series
            .iter()
            .any(|one| one.label(by) == Some(name) && one.label("response_code").is_some())
        {
            failures.push(format!(
                "Kiali health: no {by}={name:?} in {series:?} ({expr})"
            ));
        }
    }
    assert!(failures.is_empty(), "Kiali:\n{}", failures.join("\n"));
}

// ---- promtool ----

/// Lint complaints that are Istio's own naming, not ours to fix.
const ISTIO_NAMES: &[&str] = &[
    // Istio's standard metric is named in milliseconds (the dashboards and
    // Kiali query it by that name); Prometheus' convention is seconds.
    "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"",
];

/// `promtool check metrics` on each endpoint's exposition: it parses, and
/// the lint finds nothing but Istio's names.
fn exposition_lints_clean() {
    let mut failures = Vec::new();
    for t in &TARGETS {
        let text = curl(&[&format!("http://{}{}", t.address, t.path)]);
        assert!(!text.is_empty(), "{} serves no metrics", t.instance);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &text).unwrap();
        let out = Command::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(file.path()).unwrap())
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let others: Vec<&str> = report
            .lines()
            .filter(|l| !l.trim().is_empty() && !ISTIO_NAMES.contains(&l.trim()))
            .collect();
        // 0: clean; 3: lint findings only (a parse error is 1).
        let code = out.status.code();
        if !others.is_empty() || !matches!(code, Some(0 | 3)) {
            failures.push(format!("{} ({code:?}): {others:?}", t.instance));
        }
        eprintln!(
            "promtool check metrics {}: {} line(s), {} of them Istio's own naming",
            t.instance,
            report.lines().count(),
            report.lines().count() - others.len()
        );
    }
    assert!(
        failures.is_empty(),
        "promtool check metrics:\n{}",
        failures.join("\n")
    );
}

#[test]
fn dashboard_queries_are_filled_in_and_classified_as_istio_would() {
    let doc: Json = serde_json::from_str(
        r#"{"panels":[{"id":1,"type":"row","panels":[{"id":2,"title":"T \u00e9","targets":[{"expr":"sum(irate(istio_tcp_sent_bytes_total{reporter=~\"$qrep\", source_workload=~\"$workload\", x=~\"${srcns}\"}[$__rate_interval]))"},{"expr":""}]}]}],
            "templating":{"list":[{"name":"datasource","type":"datasource"},{"name":"qrep","type":"custom"},{"name":"workload","type":"query"},{"name":"srcns","type":"query","includeAll":true,"allValue":null}]}}"#,
    )
    .unwrap();
    let mut list = Vec::new();
    panels(&doc, &mut list);
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id, list[0].title.as_str()), (2, "T é"));
    assert_eq!(list[0].exprs.len(), 1);
    let view = &VIEWS[5];
    let vars = variables(&doc, view);
    assert_eq!(
        substitute(&list[0].exprs[0], &vars).unwrap(),
        "sum(irate(istio_tcp_sent_bytes_total{reporter=~\"destination\", source_workload=~\"wordpress-v1\", x=~\".*\"}[1m]))"
    );
    assert!(substitute("$nope", &vars).is_err());
    // WordPress's outgoing TCP (MySQL) is Istio's to report; its incoming
    // is HTTP only; a server never reports plaintext under STRICT mTLS.
    assert_eq!(istio_leaves_empty(&list[0].exprs[0], view), None);
    assert!(
        istio_leaves_empty(
            "istio_tcp_sent_bytes_total{destination_workload=~\"$workload\"}",
            view
        )
        .is_some()
    );
    assert!(
        istio_leaves_empty(
            "istio_requests_total{reporter=\"destination\",connection_security_policy!=\"mutual_tls\"}",
            view
        )
        .is_some()
    );
}
