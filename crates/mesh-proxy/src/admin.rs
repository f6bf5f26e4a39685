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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// All of them: the admin listener, loopback unless asked.
    Admin,
    /// Readiness and metrics only: the status listener (`--status-addr`,
    /// Istio's 15020), which the kubelet's probes and Prometheus reach on
    /// the pod's address. The configuration and certificate dumps are not
    /// served there.
    Status,
}

fn handle<B>(state: &AdminState, req: &Request<B>, endpoints: Endpoints) -> Response<BoxBody> {
    let path = req.uri().path();
    if endpoints == Endpoints::Status
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
        let svc = tower::service_fn(move |req: Request<crate::runtime::ProxyBody>| {
            let resp = handle(&state, &req, endpoints);
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(serve_connection(tcp, svc, conns.clone(), None));
    })
}
