//! State-of-the-world ADS (`StreamAggregatedResources`) for gRPC's
//! proxyless clients: listeners, clusters and endpoints as Envoy's v3
//! resources ([`crate::grpc`]), computed from the routing plan of the
//! workload the client is.
//!
//! gRPC's xDS client (gRFC A27) speaks only this protocol: one stream,
//! one subscription per type URL, each request naming every resource of
//! the type it wants; each response carries every subscribed resource
//! that exists (a listener or cluster missing from a response is gone;
//! for endpoints, gRPC waits for them). Admission is the delta stream's:
//! the client's SVID must be the identity of the WorkloadEntry its
//! `node.id` names (`namespace/name`), re-checked at every push.
//!
//! The client's view of the mesh is the delta stream's too (the documents
//! its namespace may see, [`mesh_core::xds::Catalog::view`]), read back
//! and compiled into a [`Snapshot`] exactly as a Rust data plane compiles
//! what it receives, so the two take their routing from the same plan.
//! It is recompiled when the control plane publishes a new version, and a
//! type's response is sent again only when its content changed (the
//! version is a hash of the resources).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use mesh_ca::service::CaPeer;
use mesh_core::snapshot::{self, Snapshot};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::grpc::{self, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Warnings};
use crate::xds::{Client, ConfigServer, Connected, End, Inner, Published, Refusal};

type Responses = ReceiverStream<Result<DiscoveryResponse, Status>>;

/// The type URLs served, in the order a push sends them (a listener's
/// clusters before their endpoints, as gRPC subscribes).
const TYPES: [&str; 4] = [LISTENER_TYPE, ROUTE_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE];

fn check_type(type_url: &str) -> Result<usize, Status> {
    TYPES.iter().position(|t| *t == type_url).ok_or_else(|| {
        Status::invalid_argument(format!(
            "type_url {type_url:?} is not served; this stream carries {}",
            TYPES.join(", ")
        ))
    })
}

/// Opens a stream: admits the client on its first request, then serves it
/// in a task of its own until it leaves, loses its entitlement or the
/// control plane drains.
pub(crate) async fn serve(
    server: &ConfigServer,
    request: Request<Streaming<DiscoveryRequest>>,
) -> Result<Response<Responses>, Status> {
    let peer = request.extensions().get::<CaPeer>().cloned();
    let mut requests = request.into_inner();
    let first = requests
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
    let client = server.admit_node(
        peer.as_ref(),
        first.node.as_ref().map(|n| n.id.as_str()),
        check_type(&first.type_url).map(drop),
        false,
    )?;
    tracing::info!(workload = %client.workload, id = %client.id, "proxyless xDS stream open");
    let inner = server.inner().clone();
    let (tx, rx) = mpsc::channel(TYPES.len());
    inner.metrics.connected.fetch_add(1, Ordering::Relaxed);
    let stream = Stream {
        _connected: Connected(inner.clone()),
        inner,
        client,
        types: Default::default(),
        plan: None,
        warned: HashSet::new(),
        nonce: 0,
        tx,
    };
    let drain = server.drain().cloned();
    tokio::spawn(async move {
        let workload = stream.client.workload.clone();
        let ended = match drain {
            Some(d) => tokio::select! {
                e = stream.run(first, requests) => e,
                () = d.signaled() => End::Drained,
            },
            None => stream.run(first, requests).await,
        };
        tracing::info!(%workload, "proxyless xDS stream closed: {ended}");
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}

/// One type's subscription on a stream.
#[derive(Debug, Default)]
struct Subscription {
    /// Whether the client asked for this type at all.
    active: bool,
    names: BTreeSet<String>,
    /// The version and nonce of the last response of this type.
    sent: Option<(String, String)>,
}

/// The workload's routing plan at one published version.
struct Plan {
    version: u64,
    snapshot: Snapshot,
}

struct Stream {
    _connected: Connected,
    inner: Arc<Inner>,
    client: Client,
    types: [Subscription; 4],
    plan: Option<Plan>,
    /// Warnings already logged, so a push repeats none.
    warned: HashSet<grpc::Warning>,
    nonce: u64,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Stream {
    async fn run(
        mut self,
        first: DiscoveryRequest,
        mut requests: Streaming<DiscoveryRequest>,
    ) -> End {
        let mut published = self.inner.published.clone();
        let mut next = Some(first);
        loop {
            let p = published.borrow_and_update().clone();
            if let Err((why, status)) = self.client.entitled(&p) {
                return self.refuse(why, status).await;
            }
            if self
                .plan
                .as_ref()
                .is_none_or(|plan| plan.version != p.version)
            {
                match self.compile(&p) {
                    Ok(plan) => self.plan = Some(plan),
                    // The control plane validated the whole configuration;
                    // a view of it that does not compile is our bug, and
                    // the client keeps what it has.
                    Err(e) => tracing::error!(
                        workload = %self.client.workload,
                        version = p.version,
                        "proxyless view not served: {e}"
                    ),
                }
            }
            if let Some(req) = next.take() {
                match self.request(req) {
                    Ok(Some(t)) => {
                        if let Err(end) = self.push(t, true).await {
                            return end;
                        }
                    }
                    Ok(None) => {}
                    Err(status) => return self.refuse(Refusal::BadRequest, status).await,
                }
            } else {
                // A new version: every subscribed type whose content changed.
                for t in 0..TYPES.len() {
                    if self.types[t].active {
                        if let Err(end) = self.push(t, false).await {
                            return end;
                        }
                    }
                }
            }
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        return End::Drained;
                    }
                }
                msg = requests.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => return End::ClientClosed,
                    Err(e) => return End::ClientError(e.message().to_owned()),
                },
            }
        }
    }

    async fn refuse(&self, why: Refusal, status: Status) -> End {
        let message = status.message().to_owned();
        let _ = self
            .tx
            .send(Err(self.inner.metrics.refuse(why, status)))
            .await;
        End::Refused(message)
    }

    fn compile(&self, p: &Published) -> Result<Plan, String> {
        let view = p
            .catalog
            .view(&self.client.workload)
            .map_err(|e| e.to_string())?;
        let docs = view
            .keys()
            .filter_map(|n| p.catalog.get(n).map(|d| (n.as_str(), &d.body[..])));
        let resources = mesh_core::xds::read(docs).map_err(|e| e.to_string())?;
        // What the workload's namespace sees, in Istio's precedence, as
        // every data plane compiles it.
        let resources = mesh_core::visibility::workload_view(&resources, &self.client.workload);
        let snapshot = snapshot::compile(&resources).map_err(|e| e.to_string())?;
        Ok(Plan {
            version: p.version,
            snapshot,
        })
    }

    /// Reads a request: an ACK or NACK of a response, and the type's
    /// subscription. Returns the type to answer, if the subscription
    /// changed or was never answered.
    fn request(&mut self, req: DiscoveryRequest) -> Result<Option<usize>, Status> {
        let t = check_type(&req.type_url)?;
        let answers_last = self.types[t]
            .sent
            .as_ref()
            .is_some_and(|(_, nonce)| *nonce == req.response_nonce);
        if answers_last {
            self.inner.metrics.acknowledged(
                &self.client.workload,
                &req.type_url,
                &req.response_nonce,
                req.error_detail.as_ref(),
            );
        }
        let sub = &mut self.types[t];
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let changed = !sub.active || names != sub.names;
        sub.active = true;
        sub.names = names;
        Ok(changed.then_some(t))
    }

    /// Sends type `t`'s resources if they differ from what was last sent
    /// of it, or always (`answer`: the client changed its subscription and
    /// waits for an answer, the same or not).
    async fn push(&mut self, t: usize, answer: bool) -> Result<(), End> {
        let Some(plan) = &self.plan else {
            return Ok(());
        };
        let mut warnings = Warnings::default();
        let resources = resources(
            &plan.snapshot,
            &self.client.workload,
            t,
            &self.types[t].names,
            &mut warnings,
        );
        for w in warnings.0 {
            if self.warned.insert(w.clone()) {
                tracing::warn!(
                    workload = %self.client.workload,
                    resource = %w.resource,
                    "not served to gRPC clients: {}",
                    w.message
                );
            }
        }
        let mut bytes = Vec::new();
        for (name, any) in &resources {
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&any.value);
        }
        let version = mesh_core::xds::content_version(&bytes);
        let sub = &mut self.types[t];
        if !answer && sub.sent.as_ref().is_some_and(|(v, _)| *v == version) {
            return Ok(());
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        sub.sent = Some((version.clone(), nonce.clone()));
        let m = &self.inner.metrics;
        m.pushes.fetch_add(1, Ordering::Relaxed);
        m.resources
            .fetch_add(resources.len() as u64, Ordering::Relaxed);
        m.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let resp = DiscoveryResponse {
            version_info: version,
            resources: resources.into_values().collect(),
            type_url: TYPES[t].to_owned(),
            nonce,
            ..DiscoveryResponse::default()
        };
        self.tx.send(Ok(resp)).await.map_err(|_| End::ClientClosed)
    }
}

/// The resources of type `TYPES[t]` among `names` that the plan has.
fn resources(
    snap: &Snapshot,
    workload: &str,
    t: usize,
    names: &BTreeSet<String>,
    warnings: &mut Warnings,
) -> BTreeMap<String, Any> {
    let namespace = workload.split_once('/').map_or("default", |(ns, _)| ns);
    let own = snap.workload(workload).map(|(_, w)| w);
    let mut out = BTreeMap::new();
    for name in names {
        let any = match TYPES[t] {
            LISTENER_TYPE if name.starts_with(grpc::SERVER_LISTENER_PREFIX) => own
                .and_then(|w| grpc::server_listener(snap, w, name, warnings))
                .map(pack_any),
            LISTENER_TYPE => grpc::client_listener(snap, namespace, name, warnings).map(pack_any),
            CLUSTER_TYPE => grpc::cluster(snap, name, warnings).map(pack_any),
            ENDPOINT_TYPE => grpc::load_assignment(snap, name).map(pack_any),
            // Routes travel inside their listeners.
            _ => None,
        };
        if let Some(any) = any {
            out.insert(name.clone(), any);
        }
    }
    out
}
