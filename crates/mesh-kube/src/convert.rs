//! The cluster's objects as the mesh's documents: a pure function from what
//! the watches hold ([`Cluster`]) to the Istio YAML documents the file
//! loader reads ([`documents`]), so that everything after this point (the
//! loader's validation, the snapshot, the control plane's scoping, the data
//! planes) is the code the file source runs.
//!
//! - Istio's own objects (VirtualService, AuthorizationPolicy, ...) pass
//!   through as they are, minus what the API server adds (uid,
//!   managedFields, `last-applied-configuration`, status).
//! - A Service with a selector is a ServiceEntry of the same name:
//!   `NAME.NAMESPACE.svc.CLUSTER_DOMAIN`, its ClusterIP as the address,
//!   MESH_INTERNAL, its TCP ports (the protocol from `appProtocol`, else
//!   from the port name, as Istio reads them), selecting by its selector.
//!   A Service without a selector is MESH_EXTERNAL with its EndpointSlices'
//!   addresses inline (nothing says a sidecar is there).
//! - A running Pod with an IP is a WorkloadEntry of the same name: its
//!   address, all its labels, its service account, the ports its
//!   EndpointSlices give (named target ports resolved). A pod that is
//!   terminating or not ready carries `status.conditions: Healthy=False`,
//!   which the mesh reads as "no new requests": it drains.
//!
//! Each document's origin is the object's API path (`k8s:/api/v1/...`),
//! which every error of the loader names with the field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_core::error::ConfigError;
use mesh_core::resources::Origin;
use serde_json::{Map, Value, json};

/// The scheme of a Kubernetes object's origin: `k8s:/api/v1/namespaces/default/services/web`.
pub const ORIGIN_SCHEME: &str = mesh_core::resources::API_ORIGIN_SCHEME;

/// The annotation kubectl leaves on applied objects: a copy of the object,
/// dropped from what is served.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The ConfigMap key holding the MeshConfig document.
pub const MESH_CONFIG_KEY: &str = "mesh.yaml";

/// `namespace/name`.
pub type Key = (String, String);

/// An Istio object as the API server returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioObject {
    /// The API path of its collection: `/apis/networking.istio.io/v1`.
    pub group_version: String,
    /// Its resource (plural): `virtualservices`.
    pub plural: String,
    /// The object.
    pub object: Value,
}

/// What the watches hold: every object of the kinds the mesh reads.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Services by namespace/name.
    pub services: BTreeMap<Key, Service>,
    /// Pods by namespace/name.
    pub pods: BTreeMap<Key, Pod>,
    /// EndpointSlices by namespace/name.
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    /// Istio objects by (plural, namespace, name).
    pub istio: BTreeMap<(String, String, String), IstioObject>,
    /// The MeshConfig ConfigMap, when there is one.
    pub mesh_config: Option<ConfigMap>,
}

/// Something the conversion did not carry over, said so rather than
/// dropped silently (logged, and on the control plane's status).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    /// The object: `Service default/web`.
    pub object: String,
    /// What and why.
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

/// The documents of a cluster, with their origins, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// What the loader reads.
    pub documents: Vec<(Origin, Value)>,
    /// What was not carried over, and why.
    pub notes: Vec<Note>,
    /// What cannot be read at all (a MeshConfig that is not YAML): the
    /// configuration is rejected, as a broken file is.
    pub errors: Vec<ConfigError>,
}

fn origin(path: String) -> Origin {
    Origin {
        file: PathBuf::from(format!("{ORIGIN_SCHEME}{path}")),
        document: 1,
        item: None,
    }
}

fn core_path(namespace: &str, plural: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/{plural}/{name}")
}

/// The documents the mesh reads from `cluster`. The cluster domain names
/// the Services' hosts (`name.namespace.svc.DOMAIN`); the MeshConfig's
/// `clusterDomain` wins when the ConfigMap gives one, so the hosts and the
/// short names the MeshConfig resolves agree.
pub fn documents(cluster: &Cluster, cluster_domain: &str) -> Documents {
    let mut out = Documents::default();
    let mut domain = cluster_domain.to_owned();
    if let Some(cm) = &cluster.mesh_config {
        mesh_config(cm, &mut out, &mut domain);
    }
    for obj in cluster.istio.values() {
        if let Some(doc) = istio_document(obj) {
            let path = format!(
                "{}/namespaces/{}/{}/{}",
                obj.group_version,
                meta_str(&obj.object, "namespace").unwrap_or("default"),
                obj.plural,
                meta_str(&obj.object, "name").unwrap_or("?"),
            );
            out.documents.push((origin(path), doc));
        }
    }
    let ports = pod_ports(cluster, &mut out.notes);
    for ((ns, name), svc) in &cluster.services {
        if let Some(doc) = service_entry(ns, name, svc, cluster, &domain, &mut out.notes) {
            out.documents
                .push((origin(core_path(ns, "services", name)), doc));
        }
    }
    for ((ns, name), pod) in &cluster.pods {
        if let Some(doc) = workload_entry(ns, name, pod, &ports, &mut out.notes) {
            out.documents
                .push((origin(core_path(ns, "pods", name)), doc));
        }
    }
    out.notes.sort();
    out.notes.dedup();
    out
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// The MeshConfig document(s) of the ConfigMap's `mesh.yaml`.
fn mesh_config(cm: &ConfigMap, out: &mut Documents, domain: &mut String) {
    let ns = cm.metadata.namespace.as_deref().unwrap_or("default");
    let name = cm.metadata.name.as_deref().unwrap_or("?");
    let path = format!("{}#{MESH_CONFIG_KEY}", core_path(ns, "configmaps", name));
    if cm
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key("meshNetworks"))
    {
        // Istio's `meshNetworks` names each network's east-west gateways;
        // this mesh has none, so a network's endpoints are reached only
        // from its own network, and the key is refused rather than ignored.
        out.errors.push(ConfigError::at(
            &origin(format!("{}#meshNetworks", core_path(ns, "configmaps", name))),
            None,
            "meshNetworks",
            "is not supported: this mesh has no east-west gateways; endpoints of another network are not dialled",
        ));
    }
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(MESH_CONFIG_KEY)) else {
        out.notes.push(Note {
            object: format!("ConfigMap {ns}/{name}"),
            message: format!("has no key {MESH_CONFIG_KEY}: the MeshConfig defaults apply"),
        });
        return;
    };
    match serde_saphyr::from_multiple::<Value>(text) {
        Ok(docs) => {
            for (i, doc) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
                if let Some(d) = doc
                    .get("spec")
                    .and_then(|s| s.get("clusterDomain"))
                    .and_then(Value::as_str)
                {
                    d.clone_into(domain);
                }
                let mut o = origin(path.clone());
                o.document = i + 1;
                out.documents.push((o, doc));
            }
        }
        Err(e) => out.errors.push(ConfigError::at(
            &origin(path),
            None,
            "",
            format!("is not valid YAML: {e}"),
        )),
    }
}

/// An Istio object as the loader reads it: apiVersion, kind, the metadata
/// the mesh reads, spec, and for a WorkloadEntry its status (its health).
fn istio_document(obj: &IstioObject) -> Option<Value> {
    let Value::Object(o) = &obj.object else {
        return None;
    };
    let mut doc = Map::new();
    for k in ["apiVersion", "kind", "spec"] {
        if let Some(v) = o.get(k) {
            doc.insert(k.to_owned(), v.clone());
        }
    }
    doc.insert("metadata".to_owned(), object_meta(o.get("metadata")));
    if let (Some("WorkloadEntry"), Some(status)) =
        (o.get("kind").and_then(Value::as_str), o.get("status"))
    {
        doc.insert("status".to_owned(), status.clone());
    }
    Some(Value::Object(doc))
}

/// name, namespace, labels and annotations (minus kubectl's copy of the
/// object).
fn object_meta(meta: Option<&Value>) -> Value {
    let mut out = Map::new();
    let Some(Value::Object(m)) = meta else {
        return Value::Object(out);
    };
    for k in ["name", "namespace", "labels"] {
        if let Some(v) = m.get(k) {
            out.insert(k.to_owned(), v.clone());
        }
    }
    if let Some(Value::Object(a)) = m.get("annotations") {
        let a: Map<String, Value> = a
            .iter()
            .filter(|(k, _)| k.as_str() != LAST_APPLIED)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !a.is_empty() {
            out.insert("annotations".to_owned(), Value::Object(a));
        }
    }
    Value::Object(out)
}

/// Istio's protocol for a port's `appProtocol`, as Istio reads it; `None`
/// for a value Istio does not know (then the port name decides, as in
/// Istio).
fn app_protocol(value: &str) -> Option<&'static str> {
    Some(match value.to_ascii_lowercase().as_str() {
        "http" => "HTTP",
        "http2" | "kubernetes.io/h2c" => "HTTP2",
        "grpc" | "grpc-web" => "GRPC",
        "https" => "HTTPS",
        "tls" => "TLS",
        "tcp" => "TCP",
        "mysql" => "MYSQL",
        "mongo" => "MONGO",
        "redis" => "REDIS",
        _ => return None,
    })
}

/// The ServiceEntry of a Service.
fn service_entry(
    ns: &str,
    name: &str,
    svc: &Service,
    cluster: &Cluster,
    domain: &str,
    notes: &mut Vec<Note>,
) -> Option<Value> {
    let what = format!("Service {ns}/{name}");
    let spec = svc.spec.as_ref()?;
    let host = format!("{name}.{ns}.svc.{domain}");
    if spec.type_.as_deref() == Some("ExternalName") {
        notes.push(Note {
            object: what,
            message: format!(
                "is an ExternalName Service ({}): not read; write a ServiceEntry with \
                 resolution DNS for it",
                spec.external_name.as_deref().unwrap_or("?")
            ),
        });
        return None;
    }
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if proto != "TCP" {
            notes.push(Note {
                object: what.clone(),
                message: format!("port {} is {proto}: the mesh carries TCP only", p.port),
            });
            continue;
        }
        let Ok(number) = u16::try_from(p.port) else {
            continue;
        };
        let mut port = Map::new();
        port.insert("number".to_owned(), json!(number));
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            port.insert("name".to_owned(), json!(n));
        }
        if let Some(ap) = p.app_protocol.as_deref() {
            match app_protocol(ap) {
                Some(proto) => {
                    port.insert("protocol".to_owned(), json!(proto));
                }
                None => notes.push(Note {
                    object: what.clone(),
                    message: format!(
                        "port {number}: appProtocol {ap:?} is not a protocol the mesh knows; \
                         the port name decides, as in Istio"
                    ),
                }),
            }
        }
        if let Some(Ok(t)) = match &p.target_port {
            Some(IntOrString::Int(t)) => Some(u16::try_from(*t)),
            _ => None,
        } {
            port.insert("targetPort".to_owned(), json!(t));
        }
        ports.push(Value::Object(port));
    }
    let addresses: Vec<&str> = spec
        .cluster_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(spec.cluster_ip.as_deref())
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .fold(Vec::new(), |mut v, ip| {
            if !v.contains(&ip) {
                v.push(ip);
            }
            v
        });
    let mut se = Map::new();
    se.insert("hosts".to_owned(), json!([host]));
    if !addresses.is_empty() {
        se.insert("addresses".to_owned(), json!(addresses));
    }
    se.insert("ports".to_owned(), Value::Array(ports));
    se.insert("resolution".to_owned(), json!("STATIC"));
    match spec.selector.as_ref().filter(|s| !s.is_empty()) {
        Some(selector) => {
            se.insert("location".to_owned(), json!("MESH_INTERNAL"));
            se.insert("workloadSelector".to_owned(), json!({ "labels": selector }));
        }
        None => {
            se.insert("location".to_owned(), json!("MESH_EXTERNAL"));
            se.insert(
                "endpoints".to_owned(),
                Value::Array(selectorless_endpoints(ns, name, cluster)),
            );
        }
    }
    if let Some(export) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("networking.istio.io/exportTo"))
    {
        let to: Vec<&str> = export
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        se.insert("exportTo".to_owned(), json!(to));
    }
    Some(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": se,
    }))
}

/// The EndpointSlices of a Service.
fn slices_of<'a>(
    ns: &'a str,
    service: &'a str,
    cluster: &'a Cluster,
) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
    cluster
        .endpoint_slices
        .iter()
        .filter(move |((sns, _), s)| {
            sns == ns
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|n| n == service)
        })
        .map(|(_, s)| s)
}

fn slice_ports(slice: &EndpointSlice) -> BTreeMap<String, u16> {
    slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let name = p.name.clone().filter(|n| !n.is_empty())?;
            let port = u16::try_from(p.port?).ok()?;
            Some((name, port))
        })
        .collect()
}

/// Whether an EndpointSlice endpoint may take new requests: ready (unset
/// means ready) and not terminating.
fn endpoint_ready(e: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    e.conditions
        .as_ref()
        .is_none_or(|c| c.ready != Some(false) && c.terminating != Some(true))
}

/// The inline endpoints of a Service without a selector: its slices' ready
/// addresses.
fn selectorless_endpoints(ns: &str, name: &str, cluster: &Cluster) -> Vec<Value> {
    let mut out = Vec::new();
    for slice in slices_of(ns, name, cluster) {
        let ports = slice_ports(slice);
        for e in slice.endpoints.iter().filter(|e| endpoint_ready(e)) {
            for a in &e.addresses {
                let mut ep = Map::new();
                ep.insert("address".to_owned(), json!(a));
                if !ports.is_empty() {
                    ep.insert("ports".to_owned(), json!(ports));
                }
                out.push(Value::Object(ep));
            }
        }
    }
    out
}

/// What the EndpointSlices say of each pod: its ports (service port name →
/// the pod's port) and whether any slice has it not ready or terminating.
#[derive(Debug, Default)]
struct PodEndpoints {
    ports: BTreeMap<String, u16>,
    not_ready: bool,
    terminating: bool,
    listed: bool,
}

fn pod_ports(cluster: &Cluster, notes: &mut Vec<Note>) -> BTreeMap<Key, PodEndpoints> {
    let mut out: BTreeMap<Key, PodEndpoints> = BTreeMap::new();
    for ((ns, slice_name), slice) in &cluster.endpoint_slices {
        let ports = slice_ports(slice);
        for e in &slice.endpoints {
            let Some(r) = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
            else {
                continue;
            };
            let (Some(name), pns) = (r.name.clone(), r.namespace.clone()) else {
                continue;
            };
            let entry = out
                .entry((pns.unwrap_or_else(|| ns.clone()), name.clone()))
                .or_default();
            entry.listed = true;
            if let Some(c) = &e.conditions {
                entry.not_ready |= c.ready == Some(false);
                entry.terminating |= c.terminating == Some(true);
            }
            for (pname, port) in &ports {
                match entry.ports.get(pname) {
                    Some(p) if p != port => notes.push(Note {
                        object: format!("Pod {ns}/{name}"),
                        message: format!(
                            "two Services name port {pname:?} with different pod ports ({p} \
                             and {port}, EndpointSlice {ns}/{slice_name}): {p} is used"
                        ),
                    }),
                    Some(_) => {}
                    None => {
                        entry.ports.insert(pname.clone(), *port);
                    }
                }
            }
        }
    }
    out
}

/// The WorkloadEntry of a pod, or `None` for a pod that is no workload
/// (no IP yet, finished, or on the host's network).
fn workload_entry(
    ns: &str,
    name: &str,
    pod: &Pod,
    endpoints: &BTreeMap<Key, PodEndpoints>,
    notes: &mut Vec<Note>,
) -> Option<Value> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    if spec.host_network == Some(true) {
        notes.push(Note {
            object: format!("Pod {ns}/{name}"),
            message: "is on the host's network: not a workload of the mesh".to_owned(),
        });
        return None;
    }
    let key = (ns.to_owned(), name.to_owned());
    let eps = endpoints.get(&key);
    let mut we = Map::new();
    we.insert("address".to_owned(), json!(ip));
    if let Some(labels) = pod.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        we.insert("labels".to_owned(), json!(labels));
    }
    let sa = spec
        .service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    we.insert("serviceAccount".to_owned(), json!(sa));
    let label = |k: &str| {
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
    };
    // Istio's `getPodLocality` reads the pod's `istio-locality` label first
    // (`.` for `/`, which label values cannot hold: `GetLocalityLabel`),
    // then the node's topology labels; Nodes are not watched here, so a
    // pod without the label has no locality.
    if let Some(l) = label("istio-locality") {
        let l = if l.contains('/') {
            l.clone()
        } else {
            l.replace('.', "/")
        };
        we.insert("locality".to_owned(), json!(l));
    }
    // Istio: the pod's `topology.istio.io/network` label is its network.
    if let Some(n) = label("topology.istio.io/network") {
        we.insert("network".to_owned(), json!(n));
    }
    if let Some(ports) = eps.map(|e| &e.ports).filter(|p| !p.is_empty()) {
        we.insert("ports".to_owned(), json!(ports));
    }
    let pod_ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .is_none_or(|c| c.status == "True");
    let reason = if pod.metadata.deletion_timestamp.is_some() || eps.is_some_and(|e| e.terminating)
    {
        Some("Terminating")
    } else if eps.is_some_and(|e| e.listed && e.not_ready)
        || (!eps.is_some_and(|e| e.listed) && !pod_ready)
    {
        Some("NotReady")
    } else {
        None
    };
    let mut doc = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": ns},
        "spec": we,
    });
    if let (Some(reason), Value::Object(d)) = (reason, &mut doc) {
        d.insert(
            "status".to_owned(),
            json!({"conditions": [{"type": "Healthy", "status": "False", "reason": reason}]}),
        );
    }
    Some(doc)
}
