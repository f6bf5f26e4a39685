//! The data plane's side of the control plane's configuration stream: a
//! delta ADS client ([`mesh_core::xds`] says what travels on it) that feeds
//! the same [`Store`] a configuration folder feeds, so a proxy or a
//! [`Mesh`](crate::Mesh) on a control plane compiles, swaps and reports
//! its snapshots exactly as one reading files.
//!
//! - The stream is mTLS with the workload's SVID (read from its
//!   [`CredentialStore`] at each connection, so rotations apply), and the
//!   control plane must present its own SVID ([`mesh_ca::ca_id`]).
//! - Every response is applied whole: the documents held, updated by it,
//!   are read and compiled; a good one is swapped in and ACKed, a bad one
//!   is NACKed with its errors (file, resource, field) and the last good
//!   snapshot stays in force. Both are counted and logged.
//! - The store is ready after the first good configuration; while the
//!   control plane is away the last good one serves. The client
//!   reconnects with jittered exponential backoff and says which versions
//!   it holds, so the control plane sends only what changed meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_ca::CredentialStore;
use mesh_ca::metrics::{MetricDef, MetricKind};
use mesh_ca::tls::{SpiffeServerVerifier, client_config};
use mesh_core::identity::SpiffeId;
use mesh_core::store::Store;
use mesh_core::xds::CONFIG_TYPE_URL;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

/// Where the control plane is and who this data plane is.
#[derive(Debug, Clone)]
pub struct XdsConfig {
    /// `host:port` of the control plane (the CA's port: 15012).
    pub addr: String,
    /// The SPIFFE ID the control plane must present.
    pub server_id: SpiffeId,
    /// The WorkloadEntry this data plane runs as, `namespace/name`.
    pub workload: String,
    /// The first wait before a reconnection; doubled up to `max_backoff`,
    /// each wait jittered down by up to half.
    pub min_backoff: Duration,
    /// The longest wait between reconnections.
    pub max_backoff: Duration,
    /// The port this data plane serves its metrics on (`/stats/prometheus`),
    /// told to the control plane in the node's metadata
    /// ([`METRICS_PORT_METADATA`]) so its mesh page can read them. Only a
    /// port: the control plane reads it at the address the stream came
    /// from, so a data plane cannot point it at another host.
    pub metrics_port: Option<u16>,
}

/// The node metadata field naming [`XdsConfig::metrics_port`].
pub const METRICS_PORT_METADATA: &str = "MESH_METRICS_PORT";

impl XdsConfig {
    /// The control plane at `addr`, presenting `server_id`, for `workload`
    /// (`namespace/name`, or `name` in `default`); backoff 100 ms to 15 s.
    pub fn new(addr: impl Into<String>, server_id: SpiffeId, workload: &str) -> Self {
        let workload = if workload.contains('/') {
            workload.to_owned()
        } else {
            format!("default/{workload}")
        };
        Self {
            addr: addr.into(),
            server_id,
            workload,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            metrics_port: None,
        }
    }
}

/// The stream connected now.
pub const CLIENT_CONNECTED: MetricDef = MetricDef {
    name: "mesh_xds_client_connected",
    help: "1 while the configuration stream to the control plane is open.",
    kind: MetricKind::Gauge,
};
/// Connections made.
pub const CLIENT_CONNECTS: MetricDef = MetricDef {
    name: "mesh_xds_client_connects_total",
    help: "Configuration streams opened to the control plane.",
    kind: MetricKind::Counter,
};
/// Responses applied.
pub const CLIENT_ACKS: MetricDef = MetricDef {
    name: "mesh_xds_client_acks_total",
    help: "Configuration responses applied and acknowledged.",
    kind: MetricKind::Counter,
};
/// Responses rejected.
pub const CLIENT_NACKS: MetricDef = MetricDef {
    name: "mesh_xds_client_nacks_total",
    help: "Configuration responses rejected (NACK); the last good configuration stayed in force.",
    kind: MetricKind::Counter,
};

/// What the client reports, read at scrape time.
#[derive(Debug, Default)]
pub struct XdsStatus {
    connected: AtomicBool,
    connects: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    last_nack: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
}

impl XdsStatus {
    /// Whether the stream is open now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Streams opened.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Responses applied.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Responses rejected.
    pub fn nacks(&self) -> u64 {
        self.nacks.load(Ordering::Relaxed)
    }

    /// Why the last rejected response was rejected.
    pub fn last_nack(&self) -> Option<String> {
        self.last_nack.lock().ok().and_then(|g| g.clone())
    }

    /// Why the last stream failed or ended, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
        if let Ok(mut g) = slot.lock() {
            *g = value;
        }
    }

    /// Appends the client's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        CLIENT_CONNECTED.write_value(out, u64::from(self.connected()));
        CLIENT_CONNECTS.write_value(out, self.connects());
        CLIENT_ACKS.write_value(out, self.acks());
        CLIENT_NACKS.write_value(out, self.nacks());
    }
}

/// A running client; dropping it closes the stream.
#[derive(Debug)]
pub struct XdsClient {
    status: Arc<XdsStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl XdsClient {
    /// Follows the control plane of `config`, authenticating with
    /// `credentials`, applying what it sends to `store`. Must be called
    /// within a Tokio runtime.
    pub fn spawn(config: XdsConfig, credentials: CredentialStore, store: Arc<Store>) -> Self {
        let status = Arc::new(XdsStatus::default());
        let node = config.workload.clone();
        let mut session = Session {
            config,
            credentials,
            applier: Applier {
                node,
                store,
                status: status.clone(),
                held: BTreeMap::new(),
            },
        };
        let task = tokio::spawn(async move { session.run().await });
        Self { status, task }
    }

    /// What the client reports.
    pub fn status(&self) -> &Arc<XdsStatus> {
        &self.status
    }
}

/// Follows the control plane of `config`, authenticating with
/// `credentials`, into a store of its own; returns once the first good
/// configuration is in it, logging every 5 s why there is none yet (no
/// answer, a refusal, a rejected configuration). What `mesh-proxy
/// --control-plane` and [`MeshBuilder::control_plane`] start with.
///
/// [`MeshBuilder::control_plane`]: crate::MeshBuilder::control_plane
pub async fn follow(config: XdsConfig, credentials: CredentialStore) -> (Arc<Store>, XdsClient) {
    // The store says when it applied: no polling for readiness.
    let (applied, mut ready) = tokio::sync::watch::channel(0u64);
    let store = Arc::new(Store::new().on_apply(move |v| {
        applied.send_replace(v);
    }));
    let (addr, node) = (config.addr.clone(), config.workload.clone());
    let client = XdsClient::spawn(config, credentials, store.clone());
    while tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|v| *v > 0))
        .await
        .is_err()
    {
        let status = client.status();
        let why = status
            .last_nack()
            .map(|e| format!("the configuration was rejected: {e}"))
            .or_else(|| status.last_error())
            .unwrap_or_else(|| "no answer yet".into());
        tracing::warn!(control_plane = %addr, %node, "waiting for the first configuration: {why}");
    }
    (store, client)
}

/// The documents held: name → (version, body).
type Held = BTreeMap<String, (String, Vec<u8>)>;

struct Session {
    config: XdsConfig,
    credentials: CredentialStore,
    applier: Applier,
}

/// What the client holds and where it applies it.
struct Applier {
    /// The node id: whose view is compiled.
    node: String,
    store: Arc<Store>,
    status: Arc<XdsStatus>,
    held: Held,
}

impl Session {
    async fn run(&mut self) {
        let mut backoff = self.config.min_backoff;
        loop {
            let got_response = match self.stream().await {
                Ok(got) => {
                    XdsStatus::set(
                        &self.applier.status.last_error,
                        Some("the control plane ended the stream".into()),
                    );
                    got
                }
                Err((got, e)) => {
                    tracing::warn!(
                        control_plane = %self.config.addr,
                        "configuration stream: {e}; the configuration in force stays"
                    );
                    XdsStatus::set(&self.applier.status.last_error, Some(e));
                    got
                }
            };
            self.applier
                .status
                .connected
                .store(false, Ordering::Relaxed);
            if got_response {
                backoff = self.config.min_backoff;
            }
            // Jitter down by up to half, so data planes cut off together
            // do not all come back in the same instant.
            let jitter = rand::random::<f64>() * 0.5;
            tokio::time::sleep(backoff.mul_f64(1.0 - jitter)).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    /// One stream, until it ends. Says whether a response arrived (the
    /// control plane was up: the backoff starts again from the bottom).
    async fn stream(&mut self) -> Result<bool, (bool, String)> {
        let tls = client_config(
            &self.credentials,
            SpiffeServerVerifier::new(
                self.credentials.clone(),
                vec![self.config.server_id.clone()],
            ),
        )
        .map_err(|e| (false, format!("TLS: {e}")))?;
        let channel = mesh_ca::connect_channel(&self.config.addr, tls)
            .await
            .map_err(|e| {
                (
                    false,
                    format!("cannot connect: {e}: {}", mesh_ca::source_chain(&e)),
                )
            })?;
        let (tx, rx) = mpsc::channel(4);
        let first = DeltaDiscoveryRequest {
            node: Some(Node {
                id: self.config.workload.clone(),
                metadata: self.config.metrics_port.map(metrics_metadata),
                ..Node::default()
            }),
            type_url: CONFIG_TYPE_URL.to_owned(),
            initial_resource_versions: self
                .applier
                .held
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect::<HashMap<_, _>>(),
            ..DeltaDiscoveryRequest::default()
        };
        // Cannot fail: the receiver is alive and the queue empty.
        let _ = tx.send(first).await;
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .map_err(|s| (false, describe(&s)))?
            .into_inner();
        self.applier.status.connected.store(true, Ordering::Relaxed);
        self.applier.status.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(control_plane = %self.config.addr, workload = %self.config.workload, "configuration stream open");
        let mut got = false;
        loop {
            let resp = match responses.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return Ok(got),
                Err(s) => return Err((got, describe(&s))),
            };
            got = true;
            let answer = self.applier.apply(resp);
            if tx.send(answer).await.is_err() {
                return Ok(got);
            }
        }
    }
}

impl Applier {
    /// Applies one response; returns its ACK or NACK.
    fn apply(&mut self, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let mut answer = DeltaDiscoveryRequest {
            type_url: CONFIG_TYPE_URL.to_owned(),
            response_nonce: resp.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        };
        let result = if resp.type_url == CONFIG_TYPE_URL {
            self.merge(resp)
        } else {
            Err(format!(
                "type_url {:?} was not asked for; this client reads {CONFIG_TYPE_URL}",
                resp.type_url
            ))
        };
        let result = result.and_then(|version| {
            let docs = self
                .held
                .iter()
                .map(|(n, (_, body))| (n.as_str(), body.as_slice()));
            // The view of its namespace, as from files: the control plane
            // sent only what it may see, and the view orders it by
            // precedence, whatever order the documents came in.
            let view =
                mesh_core::xds::read(docs).map(|r| mesh_core::xds::node_view(&r, &self.node));
            self.store
                .apply(view)
                .map(|v| (version, v))
                .map_err(|e| e.to_string())
        });
        match result {
            Ok((served, local)) => {
                self.status.acks.fetch_add(1, Ordering::Relaxed);
                XdsStatus::set(&self.status.last_nack, None);
                tracing::info!(version = local, control_plane_version = %served, "configuration applied");
            }
            Err(e) => {
                self.status.nacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "configuration from the control plane rejected, the previous one stays in force: {e}"
                );
                XdsStatus::set(&self.status.last_nack, Some(e.clone()));
                answer.error_detail = Some(RpcStatus {
                    code: tonic::Code::InvalidArgument as i32,
                    message: e,
                    details: Vec::new(),
                });
            }
        }
        answer
    }

    /// Updates the documents held with `resp`; returns its version. What
    /// it holds stays updated even if the result is rejected: the control
    /// plane's next response is a difference from it.
    fn merge(&mut self, resp: DeltaDiscoveryResponse) -> Result<String, String> {
        for name in &resp.removed_resources {
            self.held.remove(name);
        }
        for r in resp.resources {
            let Some(any) = r.resource else {
                return Err(format!("resource {} has no body", r.name));
            };
            self.held.insert(r.name, (r.version, any.value));
        }
        Ok(resp.system_version_info)
    }
}

fn describe(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// The node metadata telling the control plane where the metrics are.
fn metrics_metadata(port: u16) -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    Struct {
        fields: [(
            METRICS_PORT_METADATA.to_owned(),
            Value {
                kind: Some(Kind::StringValue(port.to_string())),
            },
        )]
        .into_iter()
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    fn doc(name: &str, json: &str) -> Resource {
        Resource {
            name: name.into(),
            version: format!("v{}", json.len()),
            resource: Some(Any {
                type_url: "networking.istio.io/v1/ServiceEntry".into(),
                value: json.as_bytes().to_vec(),
            }),
            ..Resource::default()
        }
    }

    fn response(nonce: &str, resources: Vec<Resource>, removed: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            resources,
            type_url: CONFIG_TYPE_URL.into(),
            removed_resources: removed.iter().map(|s| (*s).to_owned()).collect(),
            nonce: nonce.into(),
            ..DeltaDiscoveryResponse::default()
        }
    }

    const WEB: &str = r#"{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"web"},"spec":{"hosts":["web"],"ports":[{"number":80,"name":"http"}]}}"#;
    const API: &str = r#"{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"api"},"spec":{"hosts":["api"],"ports":[{"number":80,"name":"http"}]}}"#;

    fn applier() -> Applier {
        Applier {
            node: "default/web".to_owned(),
            store: Arc::new(Store::new()),
            status: Arc::new(XdsStatus::default()),
            held: BTreeMap::new(),
        }
    }

    #[test]
    fn a_good_response_is_applied_and_acked() {
        let mut a = applier();
        let ack = a.apply(response(
            "1",
            vec![doc("ServiceEntry/default/web", WEB)],
            &[],
        ));
        assert_eq!(ack.response_nonce, "1");
        assert!(ack.error_detail.is_none());
        assert!(a.store.is_ready());
        assert!(
            a.store
                .load()
                .services
                .contains_key("web.default.svc.cluster.local")
        );
        // A difference: one added, one removed.
        let ack = a.apply(response(
            "2",
            vec![doc("ServiceEntry/default/api", API)],
            &["ServiceEntry/default/web"],
        ));
        assert!(ack.error_detail.is_none());
        let snap = a.store.load();
        assert!(snap.services.contains_key("api.default.svc.cluster.local"));
        assert!(!snap.services.contains_key("web.default.svc.cluster.local"));
        assert_eq!(a.status.acks(), 2);
    }

    #[test]
    fn a_bad_response_is_nacked_naming_the_field_and_the_last_good_stays() {
        let mut a = applier();
        a.apply(response(
            "1",
            vec![doc("ServiceEntry/default/web", WEB)],
            &[],
        ));
        let before = a.store.load();
        let bad = WEB.replace(r#""hosts""#, r#""bogus":1,"hosts""#);
        let nack = a.apply(response(
            "2",
            vec![doc("ServiceEntry/default/web", &bad)],
            &[],
        ));
        let detail = nack.error_detail.expect("a NACK");
        assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
        assert!(
            detail.message.contains("xds:ServiceEntry/default/web"),
            "{}",
            detail.message
        );
        assert!(detail.message.contains("bogus"), "{}", detail.message);
        assert!(
            Arc::ptr_eq(&before, &a.store.load()),
            "the last good one stays"
        );
        assert_eq!(a.status.nacks(), 1);
        assert!(a.status.last_nack().unwrap().contains("bogus"));
        // Not JSON, a resource without a body, a type not asked for: all NACKed.
        for resp in [
            response("3", vec![doc("ServiceEntry/default/web", "{not json")], &[]),
            response(
                "4",
                vec![Resource {
                    name: "ServiceEntry/default/x".into(),
                    ..Resource::default()
                }],
                &[],
            ),
            DeltaDiscoveryResponse {
                type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                ..response("5", vec![], &[])
            },
        ] {
            assert!(a.apply(resp).error_detail.is_some());
        }
        assert!(Arc::ptr_eq(&before, &a.store.load()));
        // The fix is applied.
        let ack = a.apply(response(
            "6",
            vec![doc("ServiceEntry/default/web", WEB)],
            &["ServiceEntry/default/x"],
        ));
        assert!(ack.error_detail.is_none(), "{ack:?}");
        assert!(a.status.last_nack().is_none());
    }
}
