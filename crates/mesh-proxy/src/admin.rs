//! The admin listener: `/ready`, `/stats/prometheus`, `/config_dump`,
//! `/certs`. Loopback only unless the user names another address and asks
//! for it with `--admin-allow-remote`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use http::{Request, Response, StatusCode};
use mesh_core::store::Store;
use mesh_tower::body::{BoxBody, full};
use tokio::net::TcpListener;

use crate::identity::Identity;
use mesh_kube::inject::{APP_HEALTH_PREFIX, AppProbes, HttpGetProbe};
use mesh_tower::server::{Drain, accept_loop, serve_connection};

/// Something that adds lines to `/stats/prometheus`.
pub(crate) type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// What the admin endpoints show.
pub(crate) struct AdminState {
    pub(crate) store: Arc<Store>,
    pub(crate) identity: ArcSwapOption<Identity>,
    pub(crate) listeners_up: AtomicBool,
    pub(crate) metrics: Vec<MetricsSource>,
    /// How the proxy takes its traffic, said by `/ready` (the sidecar's
    /// `explicit` or `capture (...)`, or `gateway`).
    pub(crate) mode: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

impl AdminState {
    pub(crate) fn new(store: Arc<Store>, metrics: Vec<MetricsSource>) -> Arc<Self> {
        Arc::new(Self {
            store,
            identity: ArcSwapOption::empty(),
            listeners_up: AtomicBool::new(false),
            metrics,
            mode: std::sync::OnceLock::new(),
        })
    }

    /// Ready once the configuration is loaded, the identity issued and the
    /// listeners bound.
    fn ready(&self) -> Result<(), &'static str> {
        if !self.store.is_ready() {
            return Err("configuration not loaded");
        }
        if self.identity.load().is_none() {
            return Err("no identity issued yet");
        }
        if !self.listeners_up.load(Ordering::Acquire) {
            return Err("listeners not up");
        }
        Ok(())
    }

    fn prometheus(&self) -> String {
        let stats = self.store.stats();
        let mut out = format!(
            "# HELP mesh_config_version Version of the configuration in force.\n\
             # TYPE mesh_config_version gauge\nmesh_config_version {}\n\
             # HELP mesh_config_reloads_total Configurations applied.\n\
             # TYPE mesh_config_reloads_total counter\nmesh_config_reloads_total {}\n\
             # HELP mesh_config_rejections_total Configurations rejected (the previous one stayed in force).\n\
             # TYPE mesh_config_rejections_total counter\nmesh_config_rejections_total {}\n",
            stats.version, stats.reloads, stats.rejections
        );
        mesh_ca::metrics::write_build(&mut out, "proxy");
        if let Some(id) = self.identity.load_full() {
            out.push_str(&id.metrics());
        }
        for m in &self.metrics {
            out.push_str(&m());
        }
        out
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<BoxBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Which endpoints a listener answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// All of them: the admin listener, loopback unless asked.
    Admin,
    /// Readiness and metrics only: the status listener (`--status-addr`,
    /// Istio's 15020), which the kubelet's probes and Prometheus reach on
    /// the pod's address. The configuration and certificate dumps are not
    /// served there. Also the app's own probes, rewritten by the injector
    /// to `/app-health/CONTAINER/KIND` and run here against the app.
    Status(Arc<AppProbes>),
}

fn handle<B>(state: &AdminState, req: &Request<B>, endpoints: &Endpoints) -> Response<BoxBody> {
    let path = req.uri().path();
    if matches!(endpoints, Endpoints::Status(_))
        && !matches!(
            path,
            "/ready" | "/healthz/ready" | "/stats/prometheus" | "/metrics"
        )
    {
        return text(
            StatusCode::NOT_FOUND,
            "endpoints: /healthz/ready /stats/prometheus\n".into(),
            "text/plain",
        );
    }
    match path {
        "/ready" | "/healthz/ready" => match state.ready() {
            Ok(()) => {
                let mode = state.mode.get().map_or("", String::as_str);
                text(
                    StatusCode::OK,
                    format!("LIVE\nmode: {mode}\n"),
                    "text/plain",
                )
            }
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}\n"),
                "text/plain",
            ),
        },
        "/stats/prometheus" | "/metrics" => text(
            StatusCode::OK,
            state.prometheus(),
            "text/plain; version=0.0.4",
        ),
        "/config_dump" => {
            let snap = state.store.load();
            let v = serde_json::json!({ "stats": state.store.stats(), "snapshot": &*snap });
            text(
                StatusCode::OK,
                serde_json::to_string_pretty(&v).unwrap_or_default(),
                "application/json",
            )
        }
        "/certs" => match state.identity.load_full() {
            Some(id) => text(
                StatusCode::OK,
                serde_json::to_string_pretty(&id.describe()).unwrap_or_default(),
                "application/json",
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no identity issued yet\n".into(),
                "text/plain",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /ready /stats/prometheus /config_dump /certs\n".into(),
            "text/plain",
        ),
    }
}

/// Serves the admin listener until the drain. Whether it may listen on an
/// address other than loopback is the binder's decision (the command line
/// asks for `--admin-allow-remote`).
pub(crate) fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    drain: Drain,
    endpoints: Endpoints,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let conns = drain.clone();
    accept_loop(listener, drain, move |tcp, _| {
        let state = state.clone();
        let endpoints = endpoints.clone();
        let svc = tower::service_fn(move |req: Request<crate::runtime::ProxyBody>| {
            // Everything but the app's probes is answered at once; a probe
            // waits for the app.
            let now = match &endpoints {
                Endpoints::Status(probes) if req.uri().path().starts_with(APP_HEALTH_PREFIX) => {
                    Err(probes.clone())
                }
                _ => Ok(handle(&state, &req, &endpoints)),
            };
            async move {
                Ok::<_, Infallible>(match now {
                    Ok(resp) => resp,
                    Err(probes) => app_health(&probes, req.uri().path()).await,
                })
            }
        });
        tokio::spawn(serve_connection(tcp, svc, conns.clone(), None));
    })
}

/// Runs the app's probe that the injector moved to `path`: 200 when the
/// app answers it (an HTTP status from 200 to 399, as the kubelet counts
/// it, or a TCP connection), 503 with the reason otherwise, 404 for a path
/// no probe was moved to. The app is reached on loopback, from the proxy's
/// uid, which capture lets through.
async fn app_health(probes: &AppProbes, path: &str) -> Response<BoxBody> {
    let Some(probe) = probes.0.get(path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no app probe at {path}\n"),
            "text/plain",
        );
    };
    let timeout = std::time::Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1));
    let run = async {
        if let Some(get) = &probe.http_get {
            http_probe(get).await
        } else if let Some(tcp) = &probe.tcp_socket {
            tokio::net::TcpStream::connect(("127.0.0.1", tcp.port))
                .await
                .map(|_| format!("connected to port {}", tcp.port))
                .map_err(|e| format!("connecting to port {}: {e}", tcp.port))
        } else {
            Err("the probe names no check".into())
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(msg)) => text(StatusCode::OK, format!("{msg}\n"), "text/plain"),
        Ok(Err(why)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{why}\n"),
            "text/plain",
        ),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the app did not answer within {}s\n", timeout.as_secs()),
            "text/plain",
        ),
    }
}

/// One HTTP/1.1 GET of the app, as the kubelet sends it.
async fn http_probe(get: &HttpGetProbe) -> Result<String, String> {
    let port = get.port;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connecting to port {port}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| format!("port {port}: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::get(get.path.as_str());
    let mut host = false;
    for h in &get.http_headers {
        host |= h.name.eq_ignore_ascii_case("host");
        req = req.header(h.name.as_str(), h.value.as_str());
    }
    if !host {
        req = req.header(http::header::HOST, format!("127.0.0.1:{port}"));
    }
    let req = req
        .header(http::header::USER_AGENT, "kube-probe/mesh-proxy")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("the probe's request: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("GET {} on port {port}: {e}", get.path))?;
    let status = resp.status();
    if (200..400).contains(&status.as_u16()) {
        Ok(format!("GET {} on port {port}: {status}", get.path))
    } else {
        Err(format!("GET {} on port {port}: {status}", get.path))
    }
}
