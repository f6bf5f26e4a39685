//! The metrics endpoint (istiod's "monitoring" port): the CA's counters and
//! its serving certificate's, in Prometheus text format, rendered by the
//! definitions in [`mesh_ca::metrics`] that `mesh-proxy`'s admin
//! `/stats/prometheus` renders with too; and, with a configuration server,
//! its status ([`CONFIG_STATUS_PATH`]) and `check` and `explain` on the
//! configuration it serves ([`CHECK_PATH`], [`EXPLAIN_PATH`]). Those tell
//! the configuration's content (policies, routes): bind the endpoint where
//! only operators reach it (its default is loopback), as istiod's debug
//! endpoints.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use mesh_ca::CertManager;
use mesh_ca::metrics::CaMetrics;
use mesh_tower::body::{BoxBody, empty, full};
use mesh_tower::server::{ServerBody, ServerHandle, accept_loop, drain_pair, serve_connection};
use mesh_tower::telemetry::PROMETHEUS_CONTENT_TYPE;
use tokio::net::TcpListener;

use crate::ControlPlaneConfig;
use crate::xds::ConfigServer;

/// The paths the metrics endpoint answers at: Prometheus' default, and the
/// proxy admin's.
pub const METRICS_PATHS: [&str; 2] = ["/metrics", "/stats/prometheus"];

/// Where the configuration server says what it serves, as JSON: the
/// version, reloads, rejections, and the errors of the newest
/// configuration read if it was rejected (file, resource and field, as
/// `mesh-proxy check` names them).
pub const CONFIG_STATUS_PATH: &str = "/debug/config";

/// Readiness (the Deployment's probe): `200 ready` once the control plane
/// serves a configuration (or serves none, as a CA alone), else `503` and
/// why (a Kubernetes watch not listed, the first configuration rejected).
pub const READY_PATH: &str = "/ready";

/// `mesh-proxy check` on the configuration the control plane serves: the
/// report as the command prints it (`?output=json` for JSON, `&capture=true`
/// for `--capture`), its exit status in [`EXIT_HEADER`].
pub const CHECK_PATH: &str = "/debug/check";

/// `mesh-proxy explain` on the configuration the control plane serves:
/// `?from=..&to=..` and optionally `method`, `path`, `header=NAME=VALUE`
/// (repeatable), `output=json`; the exit status in [`EXIT_HEADER`].
pub const EXPLAIN_PATH: &str = "/debug/explain";

/// The header carrying a report's exit status (0, 1 or 2).
pub const EXIT_HEADER: &str = "x-mesh-exit-code";

/// The query's parameters, percent-decoded (`+` is a space, as in forms).
fn params(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let decode =
                |s: &str| mesh_core::normalize::decode_once(&s.replace('+', " ")).into_owned();
            (decode(k), decode(v))
        })
        .collect()
}

/// A report as an answer: its text (stdout, then stderr) and exit status.
fn report_answer(out: &crate::report::Output, json: bool) -> Response<BoxBody> {
    let content_type = if json {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut r = answer(
        StatusCode::OK,
        full(format!("{}{}", out.stdout, out.stderr)),
        content_type,
    );
    r.headers_mut()
        .insert(EXIT_HEADER, HeaderValue::from(u16::from(out.exit)));
    r
}

/// `check` or `explain` on what `xds` serves now.
fn debug_report(xds: &ConfigServer, path: &str, query: Option<&str>) -> Response<BoxBody> {
    let params = params(query);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let json = get("output") == Some("json");
    let snap = xds.snapshot();
    if path == CHECK_PATH {
        let options = mesh_core::analyze::CheckOptions {
            capture: get("capture") == Some("true"),
        };
        let resources = xds.resources();
        return report_answer(
            &crate::report::check(&resources, &snap, options, json),
            json,
        );
    }
    let (Some(from), Some(to)) = (get("from"), get("to")) else {
        return answer(
            StatusCode::BAD_REQUEST,
            full(format!(
                "{EXPLAIN_PATH} needs from= and to= (and may take method=, path=, header=NAME=VALUE, output=json)\n"
            )),
            "text/plain",
        );
    };
    let mut headers = Vec::new();
    for (k, v) in params.iter().filter(|(k, _)| k == "header") {
        let _ = k;
        match v.split_once('=') {
            Some((n, v)) if !n.trim().is_empty() => {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
            _ => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    full(format!("header={v:?} is not NAME=VALUE\n")),
                    "text/plain",
                );
            }
        }
    }
    let query = mesh_core::explain::Query {
        from: from.to_owned(),
        to: to.to_owned(),
        method: get("method").unwrap_or("GET").to_owned(),
        path: get("path").unwrap_or("/").to_owned(),
        headers,
    };
    report_answer(
        &crate::report::explain(&xds.resources(), &snap, &query, json),
        json,
    )
}

/// What the control plane reports: the signing service's counters and the
/// CA's serving certificate. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Monitor {
    ca: Arc<CaMetrics>,
    identity: Arc<CertManager>,
    xds: Option<ConfigServer>,
    page: Option<Arc<crate::page::MeshView>>,
}

impl Monitor {
    /// Reports `ca`'s counters and the certificate of `identity`.
    pub(crate) fn new(
        ca: Arc<CaMetrics>,
        identity: CertManager,
        xds: Option<ConfigServer>,
    ) -> Self {
        Self {
            ca,
            identity: Arc::new(identity),
            page: xds.clone().map(crate::page::MeshView::new),
            xds,
        }
    }

    /// The mesh page, with a configuration server.
    pub(crate) fn page(&self) -> Option<&Arc<crate::page::MeshView>> {
        self.page.as_ref()
    }

    /// The signing service's counters.
    pub(crate) fn ca(&self) -> &Arc<CaMetrics> {
        &self.ca
    }

    /// The CA's serving certificate manager.
    pub(crate) fn identity(&self) -> &CertManager {
        &self.identity
    }

    /// Everything, in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        mesh_ca::metrics::write_build(&mut out, "pilot");
        self.ca.render(&mut out);
        self.identity.metrics().render(&mut out);
        if let Some(xds) = &self.xds {
            xds.render(&mut out);
        }
        out
    }

    /// The answer to a scrape (or anything else) of the endpoint.
    pub(crate) fn respond<B>(&self, req: &Request<B>) -> Response<BoxBody> {
        let path = req.uri().path();
        if let (CONFIG_STATUS_PATH, Some(xds), &Method::GET) = (path, &self.xds, req.method()) {
            let mut status = serde_json::to_value(xds.stats()).unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut status {
                m.insert("ready".to_owned(), xds.not_ready().is_none().into());
                if let Some(why) = xds.not_ready() {
                    m.insert("notReady".to_owned(), why.into());
                }
                if let Some(source) = xds.source_status() {
                    m.insert("source".to_owned(), source);
                }
            }
            let body = serde_json::to_string_pretty(&status).unwrap_or_default();
            return answer(StatusCode::OK, full(body + "\n"), "application/json");
        }
        if path == READY_PATH {
            return match self.xds.as_ref().and_then(ConfigServer::not_ready) {
                None => answer(StatusCode::OK, full("ready\n"), "text/plain"),
                Some(why) => answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    full(format!("not ready: {why}\n")),
                    "text/plain; charset=utf-8",
                ),
            };
        }
        if let (CHECK_PATH | EXPLAIN_PATH, Some(xds), &Method::GET) =
            (path, &self.xds, req.method())
        {
            return debug_report(xds, path, req.uri().query());
        }
        if let (Some(page), &Method::GET) = (&self.page, req.method()) {
            if let Some((content_type, body)) = page.respond(path) {
                let mut r = answer(StatusCode::OK, full(body), content_type);
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return r;
            }
        }
        if !METRICS_PATHS.contains(&path) {
            return answer(
                StatusCode::NOT_FOUND,
                full(
                    "endpoints: /metrics /stats/prometheus /ready /debug/config /debug/check /debug/explain /mesh /mesh/data\n",
                ),
                "text/plain",
            );
        }
        match *req.method() {
            Method::GET => answer(StatusCode::OK, full(self.render()), PROMETHEUS_CONTENT_TYPE),
            Method::HEAD => answer(StatusCode::OK, empty(), PROMETHEUS_CONTENT_TYPE),
            _ => {
                let mut r = answer(StatusCode::METHOD_NOT_ALLOWED, empty(), "text/plain");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                r
            }
        }
    }
}

pub(crate) fn answer(
    status: StatusCode,
    body: BoxBody,
    content_type: &'static str,
) -> Response<BoxBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Serves `monitor` in plain HTTP on `listener` until the handle drains.
pub(crate) fn spawn(
    listener: TcpListener,
    monitor: Monitor,
    config: &ControlPlaneConfig,
) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr()?;
    let (controller, drain) = drain_pair(config.settings);
    let conns = drain.clone();
    let service = tower::service_fn(move |req: Request<ServerBody>| {
        let resp = monitor.respond(&req);
        async move { Ok::<_, Infallible>(resp) }
    });
    let accept = accept_loop(listener, drain, move |tcp, _remote| {
        tokio::spawn(serve_connection(tcp, service.clone(), conns.clone(), None));
    });
    Ok(ServerHandle::spawn(
        local_addr,
        controller,
        config.drain_deadline,
        accept,
    ))
}
