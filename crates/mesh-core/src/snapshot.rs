//! The compiled, immutable view of a configuration: services with their
//! ports, workloads, routes and subsets, the DestinationRule in force per
//! host (client TLS is read from it per host, port and subset), and per
//! workload and port the inbound mTLS mode and the authorization policies.
//! Every request reads one snapshot from start to end.
//!
//! [`compile`] is linear in the size of the mesh: selectors read an index
//! of workloads by namespace and label, each workload's services and
//! policies come from reverse maps built once, never from a scan of the
//! whole mesh per workload (`mesh-bench config-scale` measures it).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use crate::authz::AuthzPolicy;
use crate::error::{ConfigError, ConfigErrors};
use crate::identity::SpiffeId;
use crate::meshconfig::MeshConfig;
use crate::resources::common::{Labels, labels_match};
use crate::resources::networking::{
    ClientTlsMode, ClientTlsSettings, Destination, Location, Protocol, Resolution, Server,
    ServicePort, TrafficPolicy, WorkloadEntry,
};
use crate::resources::security::{AuthzAction, MtlsMode};
use crate::resources::{Item, Kind, ResourceRef, Resources, Skipped};
use crate::route::{HttpRouteRule, Matcher, RouteAction, RouteMatch, WeightedDestination};

/// The snapshot's lookups hash with foldhash: their keys come from the
/// configuration, not from requests, and a request looks one up (its
/// workload) where SipHash cost a few hundred instructions.
type HashMap<K, V> = foldhash::HashMap<K, V>;

/// A workload: a WorkloadEntry or a ServiceEntry's inline endpoint.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// `namespace/name` (inline endpoints: `namespace/serviceentry[i]`).
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// Address.
    pub address: String,
    /// Labels (shared with the WorkloadEntry they come from).
    pub labels: Arc<Labels>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// The SPIFFE ID it proves.
    pub identity: SpiffeId,
    /// Service port name → workload port.
    pub ports: BTreeMap<String, u16>,
    /// Where it was defined.
    pub source: ResourceRef,
    /// Inbound mTLS mode per workload port it serves, by port (written
    /// as a map, port → mode).
    #[serde(serialize_with = "ports_as_map")]
    pub inbound: Vec<(u16, InboundMode)>,
    /// Indexes into [`Snapshot::authz_policies`] of the policies that apply.
    pub authz_policies: Vec<usize>,
    /// Indexes into [`Snapshot::jwt_policies`] of the RequestAuthentications
    /// that apply.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jwt_policies: Vec<usize>,
    /// Whether new requests may go to it: `false` for a draining workload
    /// (a WorkloadEntry whose status says `Healthy: "False"`, a Kubernetes
    /// pod that is terminating or not ready). It stays a member of its
    /// services (its identity, its own inbound configuration) but is no
    /// endpoint.
    pub healthy: bool,
    /// For an endpoint the mesh made of a ServiceEntry host to resolve by
    /// DNS (`resolution: DNS` without endpoints): no workload of the mesh,
    /// so not the owner of [`Workload::identity`]; the identities that may
    /// answer there are the entry's SPIFFE `subjectAltNames` (none: mesh
    /// mTLS to it fails closed). `None` for every other workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Arc<[SpiffeId]>>,
    /// Its `region/zone/subzone` (WorkloadEntry `locality`; on
    /// Kubernetes the pod's `istio-locality` label or topology labels).
    #[serde(skip_serializing_if = "crate::locality::Locality::is_empty")]
    pub locality: crate::locality::Locality,
    /// Its network; `None` is every network's (Istio: an unset network
    /// is the same as any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The inbound ports its Sidecar's `ingress` listeners name, in place
    /// of its WorkloadEntry's ports (`None`: no Sidecar in force says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Arc<[IngressPort]>>,
    /// Its load-balancing weight (at least 1).
    pub weight: u32,
    /// What a data plane derives from this workload once per snapshot
    /// rather than per request (its telemetry labels): see [`DerivedSlot`].
    #[serde(skip)]
    pub derived: DerivedSlot,
}

/// An inbound port a Sidecar's `ingress` listener names for a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressPort {
    /// The port served.
    pub number: u16,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its protocol (from the name when the listener gives none).
    pub protocol: Protocol,
    /// The address to bind, if the listener names one (`bind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<std::net::IpAddr>,
    /// The app (`defaultEndpoint`): loopback, or the workload's address
    /// for `0.0.0.0`; the listener's port on loopback when unset.
    pub app: std::net::SocketAddr,
}

/// The ingress ports of the Sidecar in force for a workload of `namespace`
/// with `labels` at `address`, if it has any.
fn ingress_ports(
    r: &Resources,
    namespace: &str,
    labels: &Labels,
    address: &str,
) -> Option<Arc<[IngressPort]>> {
    if r.sidecars.is_empty() {
        return None;
    }
    let sc = crate::visibility::sidecar_for(r, namespace, labels)?;
    if sc.spec.ingress.is_empty() {
        return None;
    }
    let own: Option<std::net::IpAddr> = address.parse().ok();
    let ports = sc
        .spec
        .ingress
        .iter()
        .map(|l| {
            let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], l.port.number));
            let app = match l
                .default_endpoint
                .as_deref()
                .map(crate::resources::networking::ingress_endpoint)
            {
                Some(Ok((a, false))) => a,
                Some(Ok((a, true))) => own.map_or(a, |ip| std::net::SocketAddr::new(ip, a.port())),
                // Validation refused anything else.
                _ => loopback,
            };
            IngressPort {
                number: l.port.number,
                name: l.port.name.clone(),
                protocol: l.port.protocol.unwrap_or_else(|| {
                    Protocol::from_port_name(l.port.name.as_deref().unwrap_or_default())
                }),
                bind: l.bind.as_deref().and_then(|b| b.parse().ok()),
                app,
            }
        })
        .collect();
    Some(ports)
}

impl Workload {
    /// The identities that may answer at this workload (secure naming):
    /// its own, or for a DNS-made endpoint the entry's subjectAltNames.
    pub fn serving_identities(&self) -> &[SpiffeId] {
        match &self.dns {
            Some(ids) => ids,
            None => std::slice::from_ref(&self.identity),
        }
    }
}

fn ports_as_map<S: serde::Serializer>(
    ports: &[(u16, InboundMode)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(ports.iter().map(|(p, m)| (p, m)))
}

/// The inbound mTLS mode of one workload port and the resource that set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundMode {
    /// The mode in force.
    pub mode: MtlsMode,
    /// The deciding resource; `None` means the MeshConfig default. (Shared
    /// with the policy: every workload port of a mesh names one of a few.)
    pub decided_by: Option<Arc<ResourceRef>>,
}

/// A service port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortEntry {
    /// Number clients use.
    pub number: u16,
    /// Name (WorkloadEntry ports are keyed by it).
    pub name: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
    /// Fallback workload port.
    pub target_port: Option<u16>,
    /// HTTP rules (mesh-bound VirtualServices) that apply on this port.
    pub http_routes: Vec<Arc<HttpRouteRule>>,
    /// TCP rules of mesh-bound VirtualServices on this port, in order:
    /// the first whose `sourceLabels` the caller carries decides; none,
    /// every workload of the service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_routes: Vec<TcpRule>,
    /// TLS rules of mesh-bound VirtualServices on this (TLS or HTTPS)
    /// port, in order: the first whose SNI hosts name the connection's SNI
    /// decides; none, the TCP rules above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_routes: Vec<TlsRule>,
}

/// A TLS rule of a mesh-bound VirtualService on one service port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRule {
    /// SNI patterns, lowercase.
    pub sni_hosts: Vec<String>,
    /// Where the connection goes.
    pub route: Vec<WeightedDestination>,
}

/// A TCP rule of a mesh-bound VirtualService on one service port.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRule {
    /// Labels the calling workload must carry (none: every caller).
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub source_labels: Labels,
    /// Where the connection goes.
    pub route: Vec<WeightedDestination>,
}

impl ServicePortEntry {
    /// The TLS rule for a connection whose ClientHello named `sni`
    /// (compared without case), if any names it.
    pub fn tls_rule(&self, sni: &str) -> Option<&TlsRule> {
        let sni = sni.to_ascii_lowercase();
        self.tls_routes
            .iter()
            .find(|r| names_sni(&r.sni_hosts, &sni))
    }

    /// The TCP rule for a caller carrying `labels`, if any applies.
    pub fn tcp_rule(&self, labels: &Labels) -> Option<&TcpRule> {
        self.tcp_routes
            .iter()
            .find(|r| crate::resources::common::labels_match(&r.source_labels, labels))
    }
}

/// A service: a ServiceEntry host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Fully qualified host.
    pub host: String,
    /// Namespace of the ServiceEntry.
    pub namespace: String,
    /// Inside the mesh (mTLS applies) or outside.
    pub location: Location,
    /// Ports.
    pub ports: Vec<ServicePortEntry>,
    /// Indexes into [`Snapshot::workloads`].
    pub workloads: Vec<usize>,
    /// Identities allowed to serve it (secure naming): the workloads'
    /// identities plus the ServiceEntry's subjectAltNames.
    pub identities: Vec<String>,
    /// Its virtual IPs (ServiceEntry `addresses`): a captured connection to
    /// one of them, on one of the ports, is a connection to the service.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<crate::net::IpBlock>,
    /// How its endpoints are found: `NONE` has none, and a captured
    /// connection to it goes on to its original destination.
    pub resolution: Resolution,
    /// The ServiceEntry.
    pub source: ResourceRef,
    /// What a crate above computes once per snapshot for this service (its
    /// telemetry labels): see [`DerivedSlot`].
    #[serde(skip)]
    pub derived: DerivedSlot,
    /// Its endpoint lists per port and subset, made on first use
    /// ([`crate::plan::endpoints_shared`]).
    #[serde(skip)]
    pub endpoint_lists: EndpointLists,
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePortEntry> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// The workload port serving `port` on workload `w`.
    pub fn target_port(&self, port: &ServicePortEntry, w: &Workload) -> u16 {
        port.name
            .as_ref()
            .and_then(|n| w.ports.get(n).copied())
            .or(port.target_port)
            .unwrap_or(port.number)
    }
}

/// A DestinationRule subset with the workloads it selects.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubsetEntry {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Indexes into [`Snapshot::workloads`] (those of the host's service).
    pub workloads: Vec<usize>,
    /// The subset's policy override.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// The DestinationRule in force for a host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPolicy {
    /// The DestinationRule.
    pub source: ResourceRef,
    /// Host-wide policy.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets.
    pub subsets: Vec<SubsetEntry>,
}

impl DestinationPolicy {
    /// The subset with this name.
    pub fn subset(&self, name: &str) -> Option<&SubsetEntry> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// The client TLS the DestinationRule gives a host, port and subset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTls {
    /// The mode; `None` is automatic: mesh mTLS to workloads that accept it.
    pub mode: Option<ClientTlsMode>,
    /// The full settings.
    pub settings: Option<ClientTlsSettings>,
    /// The deciding DestinationRule.
    pub decided_by: Option<ResourceRef>,
}

/// A Gateway and the routes bound to it, by host.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayEntry {
    /// The Gateway.
    pub source: ResourceRef,
    /// Labels of the gateway workloads.
    pub selector: Labels,
    /// Listeners.
    pub servers: Vec<Server>,
    /// Host (as the VirtualService wrote it, lowercase) → HTTP rules, of
    /// every VirtualService bound to the Gateway.
    pub routes: BTreeMap<String, Vec<Arc<HttpRouteRule>>>,
    /// One table per server (same order as `servers`): what the server
    /// serves. Requests are routed by these ([`GatewayEntry::route`]).
    pub server_routes: Vec<crate::gateway::RouteTable>,
    /// TLS routes of the VirtualServices bound to the Gateway, in load
    /// order, for its PASSTHROUGH servers ([`GatewayEntry::tls_route`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_routes: Vec<Arc<TlsRouteRule>>,
}

/// A TLS route of a VirtualService bound to a Gateway, compiled.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRouteRule {
    /// The VirtualService.
    pub source: ResourceRef,
    /// Its index in `spec.tls`.
    pub index: usize,
    /// The matches that apply to this Gateway (OR).
    pub matches: Vec<TlsRouteMatch>,
    /// Where a matching connection goes.
    pub route: Vec<WeightedDestination>,
}

/// One match of a [`TlsRouteRule`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRouteMatch {
    /// SNI patterns, lowercase.
    pub sni_hosts: Vec<String>,
    /// The gateway port, if the match names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Whether one of `patterns` (`sniHosts`, lowercase) names `sni`
/// (lowercase).
fn names_sni(patterns: &[String], sni: &str) -> bool {
    patterns
        .iter()
        .any(|h| crate::visibility::host_matches(h, sni))
}

impl GatewayEntry {
    /// The first TLS route for a connection to `port` whose ClientHello
    /// named `sni` (compared without case).
    pub fn tls_route(&self, port: u16, sni: &str) -> Option<&TlsRouteRule> {
        let sni = sni.to_ascii_lowercase();
        self.tls_routes
            .iter()
            .find(|r| {
                r.matches
                    .iter()
                    .any(|m| m.port.is_none_or(|p| p == port) && names_sni(&m.sni_hosts, &sni))
            })
            .map(|r| &**r)
    }
}

/// A normalised peer-authentication policy: PeerAuthentication, or a legacy
/// MeshPolicy/Policy mapped onto its semantics.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPolicy {
    /// The resource.
    pub source: Arc<ResourceRef>,
    /// What it applies to.
    pub scope: PeerScope,
    /// The mode for all ports (UNSET inherits).
    pub mode: MtlsMode,
    /// Per workload port.
    pub port_modes: BTreeMap<u16, MtlsMode>,
}

/// The scope of a peer policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerScope {
    /// Every workload.
    Mesh,
    /// Every workload of the namespace.
    Namespace(String),
    /// Workloads of the namespace with these labels.
    Workloads {
        /// Namespace.
        namespace: String,
        /// Labels.
        labels: Labels,
    },
    /// Workloads behind these services (legacy Policy targets), with the
    /// workload ports to apply to (empty: all).
    Services(Vec<(String, Vec<u16>)>),
}

impl PeerScope {
    /// The one namespace whose workloads it can select; `None` when it can
    /// select workloads anywhere (mesh-wide, or legacy service targets).
    fn namespace(&self) -> Option<&str> {
        match self {
            Self::Workloads { namespace, .. } | Self::Namespace(namespace) => Some(namespace),
            Self::Mesh | Self::Services(_) => None,
        }
    }
}

/// The compiled configuration.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Set by the [`crate::store::Store`]: 1 for the first configuration
    /// applied, one more for each reload; 0 for a snapshot never stored.
    pub version: u64,
    /// Mesh settings.
    pub mesh: MeshConfig,
    /// Services by fully qualified host.
    pub services: BTreeMap<String, Service>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Host → HTTP rules of mesh-bound VirtualServices (hosts with no
    /// service included).
    pub mesh_routes: BTreeMap<String, Vec<Arc<HttpRouteRule>>>,
    /// Host → DestinationRule in force.
    pub destination_policies: BTreeMap<String, DestinationPolicy>,
    /// Gateways by `namespace/name`.
    pub gateways: BTreeMap<String, GatewayEntry>,
    /// Peer-authentication policies, in load order.
    pub peer_policies: Vec<PeerPolicy>,
    /// Authorization policies, in load order.
    pub authz_policies: Vec<AuthzPolicy>,
    /// RequestAuthentications, in load order.
    pub jwt_policies: Vec<crate::jwt::JwtPolicy>,
    /// Documents that were not used.
    pub skipped: Vec<Skipped>,
    /// The Telemetries, resolved per workload ([`crate::telemetry`]).
    #[serde(skip)]
    pub telemetry: crate::telemetry::TelemetryTable,
    /// Lookups [`compile`] builds so that requests and the compile itself
    /// never scan the whole mesh: derived from the fields above.
    #[serde(skip)]
    index: Index,
}

/// What [`compile`] derives for lookups.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Workload key → its index (the first, should two share a key).
    workloads: HashMap<String, usize>,
    /// Namespace → its workloads, ascending.
    by_namespace: HashMap<String, Vec<usize>>,
    /// Per workload, the hosts of the services it serves.
    served_by: Vec<Vec<String>>,
    /// The peer policies that can apply in a namespace.
    peer: PolicyIndex,
    /// Services whose host is a wildcard (`*.wikipedia.org`): their host.
    wildcard_services: crate::visibility::WildcardIndex<String>,
    /// The hosts of the services with virtual IPs (`addresses`), for
    /// captured connections: few, where every service would be many.
    with_addresses: Vec<String>,
    /// Workloads by IP address (those whose address is one), ascending.
    by_address: HashMap<std::net::IpAddr, Vec<usize>>,
}

/// Policies by the namespace they can apply in, each list in load order:
/// the order decides which policy of a level is in force.
#[derive(Debug, Clone, Default)]
struct PolicyIndex {
    /// Policies that can apply in every namespace.
    everywhere: Vec<usize>,
    by_namespace: HashMap<String, Vec<usize>>,
}

impl PolicyIndex {
    /// Adds policy `i` (policies are added in load order), applying in
    /// `namespace` or, for `None`, everywhere.
    fn add(&mut self, namespace: Option<&str>, i: usize) {
        match namespace {
            Some(ns) => self.by_namespace.entry(ns.to_owned()).or_default().push(i),
            None => self.everywhere.push(i),
        }
    }

    /// The policies that can apply in `namespace`, in load order.
    fn of(&self, namespace: &str) -> Merged<'_> {
        Merged {
            a: &self.everywhere,
            b: self
                .by_namespace
                .get(namespace)
                .map_or(&[][..], Vec::as_slice),
        }
    }
}

/// Two ascending lists of indexes merged, in ascending order.
struct Merged<'a> {
    a: &'a [usize],
    b: &'a [usize],
}

impl Iterator for Merged<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let list = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) if x > y => &mut self.b,
            (Some(_), _) => &mut self.a,
            (None, _) => &mut self.b,
        };
        let (head, rest) = list.split_first()?;
        *list = rest;
        Some(*head)
    }
}

impl Snapshot {
    /// An empty snapshot: no services, nothing routable.
    pub fn empty() -> Self {
        Self {
            version: 0,
            mesh: MeshConfig::default(),
            services: BTreeMap::new(),
            workloads: Vec::new(),
            mesh_routes: BTreeMap::new(),
            destination_policies: BTreeMap::new(),
            gateways: BTreeMap::new(),
            peer_policies: Vec::new(),
            authz_policies: Vec::new(),
            jwt_policies: Vec::new(),
            skipped: Vec::new(),
            telemetry: crate::telemetry::TelemetryTable::default(),
            index: Index::default(),
        }
    }

    /// The Telemetry settings of workload `name` of `namespace`: resolved
    /// when the snapshot was compiled (the data plane looks them up once
    /// per snapshot). A workload the snapshot does not list gets its
    /// namespace's (or the mesh's).
    pub fn telemetry_for(
        &self,
        namespace: &str,
        name: &str,
    ) -> &Arc<crate::telemetry::WorkloadTelemetry> {
        match self.workload(&format!("{namespace}/{name}")) {
            Some((_, w)) => self
                .telemetry
                .for_workload(namespace, Some(&w.key), Some(&*w.labels)),
            None => self.telemetry.for_workload(namespace, None, None),
        }
    }

    /// The service a client in `namespace` means by `host`: the one of
    /// that host, else the one whose wildcard host matches it most
    /// specifically (`*.wikipedia.org` for `en.wikipedia.org`).
    pub fn service(&self, host: &str, namespace: &str) -> Option<&Service> {
        self.service_for(&self.mesh.resolve_host(host, namespace))
    }

    /// The service of a fully qualified (lower-case) host: the one of that
    /// host, else the one whose wildcard host matches it most specifically.
    pub fn service_for(&self, host: &str) -> Option<&Service> {
        if let Some(s) = self.services.get(host) {
            return Some(s);
        }
        if self.index.wildcard_services.is_empty() {
            return None;
        }
        self.index
            .wildcard_services
            .best(host)
            .and_then(|h| self.services.get(h))
    }

    /// Finds a workload by `name` (in `default`) or `namespace/name`.
    pub fn workload(&self, name: &str) -> Option<(usize, &Workload)> {
        let i = if name.contains('/') {
            self.index.workloads.get(name)
        } else {
            self.index.workloads.get(&format!("default/{name}"))
        };
        i.map(|&i| (i, &self.workloads[i]))
    }

    /// The inbound mTLS mode of a workload port, by Istio's precedence:
    /// workload-level policy (port-level first), then namespace, then mesh,
    /// then the MeshConfig default; UNSET inherits from the next level.
    pub fn inbound_mode(&self, w: &Workload, port: u16) -> InboundMode {
        // The ports its services name were compiled; others (a port only a
        // capture rule or a probe reaches) are decided here.
        match w.inbound.binary_search_by_key(&port, |(p, _)| *p) {
            Ok(i) => w.inbound[i].1.clone(),
            Err(_) => self.decide_inbound_mode(w, port),
        }
    }

    fn decide_inbound_mode(&self, w: &Workload, port: u16) -> InboundMode {
        let mut levels: [Option<&PeerPolicy>; 3] = [None; 3];
        for p in self
            .index
            .peer
            .of(&w.namespace)
            .map(|i| &self.peer_policies[i])
        {
            let level = match &p.scope {
                PeerScope::Workloads { namespace, labels } => {
                    (namespace == &w.namespace && labels_match(labels, &w.labels)).then_some(0)
                }
                PeerScope::Services(targets) => targets
                    .iter()
                    .any(|(host, ports)| {
                        self.services.get(host).is_some_and(|s| {
                            s.workloads.iter().any(|i| self.workloads[*i].key == w.key)
                        }) && (ports.is_empty() || ports.contains(&port))
                    })
                    .then_some(0),
                PeerScope::Namespace(ns) => (ns == &w.namespace).then_some(1),
                PeerScope::Mesh => Some(2),
            };
            if let Some(l) = level {
                // The first policy read at a level wins; `check` reports
                // the others as overlapping or contradicting.
                levels[l].get_or_insert(p);
            }
        }
        for (i, p) in levels.iter().enumerate() {
            let Some(p) = p else { continue };
            if i == 0 {
                if let Some(m) = p.port_modes.get(&port).filter(|m| **m != MtlsMode::Unset) {
                    return InboundMode {
                        mode: *m,
                        decided_by: Some(p.source.clone()),
                    };
                }
            }
            if p.mode != MtlsMode::Unset {
                return InboundMode {
                    mode: p.mode,
                    decided_by: Some(p.source.clone()),
                };
            }
        }
        InboundMode {
            mode: self.mesh.default_mtls_mode,
            decided_by: None,
        }
    }

    /// The client TLS for a host (fully qualified), service port and subset:
    /// subset port-level, subset, rule port-level, rule; automatic when none
    /// says.
    pub fn client_tls(&self, host: &str, port: u16, subset: Option<&str>) -> ClientTls {
        client_tls_in(&self.destination_policies, host, port, subset)
    }

    /// The JWT rules of the RequestAuthentications that apply to a
    /// workload, in load order.
    pub fn workload_jwt_rules(&self, w: &Workload) -> Vec<std::sync::Arc<crate::jwt::JwtRule>> {
        w.jwt_policies
            .iter()
            .flat_map(|i| self.jwt_policies[*i].rules.iter().cloned())
            .collect()
    }

    /// The JWT rules that apply to a workload known only by namespace and
    /// labels (a proxyless service without a registry entry).
    pub fn jwt_rules_for(
        &self,
        namespace: &str,
        labels: &Labels,
    ) -> Vec<std::sync::Arc<crate::jwt::JwtRule>> {
        self.jwt_policies
            .iter()
            .filter(|p| p.applies_to(namespace, labels))
            .flat_map(|p| p.rules.iter().cloned())
            .collect()
    }

    /// The authorization policies of a workload.
    pub fn workload_policies<'a>(
        &'a self,
        w: &'a Workload,
    ) -> impl Iterator<Item = &'a AuthzPolicy> + Clone {
        w.authz_policies.iter().map(|i| &self.authz_policies[*i])
    }

    /// The workloads of a namespace (indexes into [`Snapshot::workloads`]),
    /// ascending.
    pub fn workloads_in(&self, namespace: &str) -> &[usize] {
        self.index
            .by_namespace
            .get(namespace)
            .map_or(&[][..], Vec::as_slice)
    }

    /// The services with virtual IPs (ServiceEntry `addresses`).
    pub fn services_with_addresses(&self) -> impl Iterator<Item = &Service> {
        self.index
            .with_addresses
            .iter()
            .filter_map(|h| self.services.get(h))
    }

    /// The workloads whose address is `ip` (indexes into
    /// [`Snapshot::workloads`]), ascending.
    pub fn workloads_at(&self, ip: std::net::IpAddr) -> &[usize] {
        self.index
            .by_address
            .get(&ip.to_canonical())
            .map_or(&[][..], Vec::as_slice)
    }

    /// The hosts of the services a workload (an index into
    /// [`Snapshot::workloads`]) serves.
    pub fn hosts_served_by(&self, workload: usize) -> &[String] {
        self.index
            .served_by
            .get(workload)
            .map_or(&[][..], Vec::as_slice)
    }

    /// One spelling for every way a client may name a host, as
    /// authorization's `hosts` compare it: lower case, one trailing dot
    /// removed, and a service's short or partial name (`reviews`,
    /// `reviews.default`, `reviews.default.svc`, resolved in `namespace`)
    /// as its fully qualified host. A port is kept (`host:port`), so a
    /// pattern that names one can match it. Anything else is returned in
    /// that spelling unchanged.
    ///
    /// ```
    /// let snap = mesh_core::snapshot::Snapshot::empty();
    /// assert_eq!(snap.canonical_host("Example.COM.:8080", "default"), "example.com:8080");
    /// ```
    pub fn canonical_host(&self, host: &str, namespace: &str) -> String {
        let (name, port) = split_host_port(host);
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let domain = &self.mesh.cluster_domain;
        let dots = name.bytes().filter(|b| *b == b'.').count();
        let candidate = match dots {
            0 => Some(format!("{name}.{namespace}.svc.{domain}")),
            1 => Some(format!("{name}.svc.{domain}")),
            2 if name.ends_with(".svc") => Some(format!("{name}.{domain}")),
            _ => None,
        };
        let name = match candidate {
            Some(fqdn)
                if !self.services.contains_key(&name) && self.services.contains_key(&fqdn) =>
            {
                fqdn
            }
            _ => name,
        };
        match port {
            Some(p) => format!("{name}:{p}"),
            None => name,
        }
    }
}

/// [`Snapshot::client_tls`] from the DestinationRules in force.
fn client_tls_in(
    policies: &BTreeMap<String, DestinationPolicy>,
    host: &str,
    port: u16,
    subset: Option<&str>,
) -> ClientTls {
    client_tls_of(policies.get(host), port, subset)
}

/// The client TLS a DestinationRule (compiled for one host) gives a port
/// and subset: subset port-level, subset, rule port-level, rule;
/// automatic when none says, or without a rule.
pub(crate) fn client_tls_of(
    dp: Option<&DestinationPolicy>,
    port: u16,
    subset: Option<&str>,
) -> ClientTls {
    let Some(dp) = dp else {
        return ClientTls {
            mode: None,
            settings: None,
            decided_by: None,
        };
    };
    let from_policy = |p: &TrafficPolicy| {
        p.port_level_settings
            .iter()
            .find(|pl| pl.port.number == port)
            .and_then(|pl| pl.tls.clone())
            .or_else(|| p.tls.clone())
    };
    let settings = subset
        .and_then(|s| dp.subset(s))
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(from_policy)
        .or_else(|| dp.traffic_policy.as_ref().and_then(from_policy));
    ClientTls {
        mode: settings.as_ref().map(|s| s.mode),
        decided_by: settings.as_ref().map(|_| dp.source.clone()),
        settings,
    }
}

/// `host[:port]` or `[v6][:port]` as the name and the port.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => (&host[..=i], host[i + 1..].strip_prefix(':')),
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

/// DestinationRules by host, for finding the one in force for a host.
pub(crate) struct RuleIndex {
    /// By host as written (resolved), wildcards included.
    exact: HashMap<String, Vec<usize>>,
    /// Wildcard rules by their key ([`crate::visibility::wildcard_key`]).
    wild: HashMap<String, Vec<usize>>,
}

impl RuleIndex {
    pub(crate) fn new(r: &Resources) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::default();
        let mut wild: HashMap<String, Vec<usize>> = HashMap::default();
        for (i, dr) in r.destination_rules.iter().enumerate() {
            let host = r.mesh.resolve_host(&dr.spec.host, dr.namespace());
            if let Some(key) = crate::visibility::wildcard_key(&host) {
                wild.entry(key.to_owned()).or_default().push(i);
            }
            exact.entry(host).or_default().push(i);
        }
        Self { exact, wild }
    }

    /// The rule (an index into `r.destination_rules`) in force for `host`
    /// (of a service in `service_ns`) for clients in `client`, as Istio
    /// looks it up: the lowest level ([`crate::visibility::rule_level`]),
    /// then the most specific host (exact, then the longest wildcard),
    /// then the first read. Without a client (the whole mesh): the most
    /// specific, then the first.
    pub(crate) fn in_force(
        &self,
        r: &Resources,
        host: &str,
        service_ns: Option<&str>,
        client: Option<&str>,
    ) -> Option<usize> {
        let level = |i: usize| match client {
            Some(client) => crate::visibility::rule_level(
                &r.mesh,
                r.destination_rules[i].namespace(),
                client,
                service_ns,
            ),
            None => Some(0),
        };
        // (level, specificity reversed, load order): the smallest wins.
        let candidates = |list: Option<&Vec<usize>>, specificity: usize| {
            list.into_iter()
                .flatten()
                .filter_map(move |&i| level(i).map(|l| (l, usize::MAX - specificity, i)))
                .collect::<Vec<_>>()
        };
        let mut all = candidates(self.exact.get(host), usize::MAX);
        for k in crate::visibility::wildcard_keys(host) {
            all.extend(candidates(self.wild.get(k), k.len()));
        }
        for (k, list) in self
            .wild
            .iter()
            .filter(|(k, _)| crate::visibility::is_partial_key(k))
        {
            if host.ends_with(k.as_str()) {
                all.extend(candidates(Some(list), k.len()));
            }
        }
        all.into_iter().min().map(|(_, _, i)| i)
    }
}

/// A TCP match as it applies to mesh traffic: the port (`None` any) and
/// the callers' labels.
type TcpMatch = (Option<u16>, Labels);

/// A TCP route's matches that apply to mesh traffic. Empty when the route
/// has no match (it applies to every port and caller); `None` when every
/// match names gateways only.
fn mesh_tcp_matches(tcp: &crate::resources::networking::TcpRoute) -> Option<Vec<TcpMatch>> {
    let ms: Vec<TcpMatch> = tcp
        .matches
        .iter()
        .filter(|m| m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"))
        .map(|m| (m.port, m.source_labels.clone()))
        .collect();
    (tcp.matches.is_empty() || !ms.is_empty()).then_some(ms)
}

/// Adds to a service's opaque TCP ports the rule `dests` for the callers
/// of each of `matches` that applies to the port (none: every port, every
/// caller), after the rules they have. One VirtualService decides a port
/// (`owner`, its key, in `owners` by host and port): the first that
/// attaches a rule to it, an exact host's before any wildcard's, the most
/// specific wildcard first; a caller none of its rules is for gets the
/// default route, never another VirtualService's.
fn attach_tcp(
    svc: &mut Service,
    owner: &str,
    owners: &mut HashMap<(String, u16), String>,
    matches: &[TcpMatch],
    dests: &[WeightedDestination],
) {
    for p in &mut svc.ports {
        if p.protocol.is_http() {
            continue;
        }
        let labels: Vec<&Labels> = if matches.is_empty() {
            static ANY: std::sync::LazyLock<Labels> = std::sync::LazyLock::new(Labels::new);
            vec![&*ANY]
        } else {
            matches
                .iter()
                .filter(|(port, _)| port.is_none_or(|n| n == p.number))
                .map(|(_, labels)| labels)
                .collect()
        };
        if labels.is_empty() {
            continue;
        }
        if !claim(owners, &svc.host, p.number, owner) {
            continue;
        }
        for l in labels {
            p.tcp_routes.push(TcpRule {
                source_labels: l.clone(),
                route: dests.to_vec(),
            });
        }
    }
}

/// Whether `owner` (a VirtualService, with the host pattern it attaches
/// by) decides `host:port`: the first to claim a port decides it, and
/// its later rules join; another's are not blended in.
fn claim(owners: &mut HashMap<(String, u16), String>, host: &str, port: u16, owner: &str) -> bool {
    match owners.entry((host.to_owned(), port)) {
        std::collections::hash_map::Entry::Occupied(o) => o.get() == owner,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(owner.to_owned());
            true
        }
    }
}

/// A mesh-bound VirtualService's TLS route, for one of its hosts.
struct MeshTls {
    pattern: String,
    owner: String,
    matches: Vec<TlsRouteMatch>,
    route: Vec<WeightedDestination>,
}

/// Gives the TLS and HTTPS ports of the services the routes' hosts name
/// their TLS rules: one VirtualService decides a port, an exact host's
/// before the most specific wildcard's, as for TCP.
fn attach_mesh_tls(services: &mut BTreeMap<String, Service>, mut routes: Vec<MeshTls>) {
    if routes.is_empty() {
        return;
    }
    // Exact hosts first (in load order), then wildcards, the most
    // specific first.
    routes.sort_by_key(|r| {
        let wild = crate::visibility::wildcard_key(&r.pattern).is_some();
        (
            wild,
            std::cmp::Reverse(if wild { r.pattern.len() } else { 0 }),
        )
    });
    let mut owners: HashMap<(String, u16), String> = HashMap::default();
    for svc in services.values_mut() {
        for r in &routes {
            if !crate::visibility::host_matches(&r.pattern, &svc.host) {
                continue;
            }
            let owner = format!("{} {}", r.owner, r.pattern);
            for p in &mut svc.ports {
                if !matches!(p.protocol, Protocol::Tls | Protocol::Https) {
                    continue;
                }
                let snis: Vec<&Vec<String>> = r
                    .matches
                    .iter()
                    .filter(|m| m.port.is_none_or(|n| n == p.number))
                    .map(|m| &m.sni_hosts)
                    .collect();
                if snis.is_empty() {
                    continue;
                }
                if !claim(&mut owners, &svc.host, p.number, &owner) {
                    continue;
                }
                for sni in snis {
                    p.tls_routes.push(TlsRule {
                        sni_hosts: sni.clone(),
                        route: r.route.clone(),
                    });
                }
            }
        }
    }
}

/// Compiles validated resources into a snapshot.
pub fn compile(r: &Resources) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Vec::new();
    let mesh = r.mesh.clone();
    let mut snap = Snapshot::empty();
    snap.workloads.reserve_exact(
        r.workload_entries.len()
            + r.service_entries
                .iter()
                .map(|se| se.spec.endpoints.len())
                .sum::<usize>(),
    );
    snap.mesh = mesh.clone();
    snap.skipped = r.skipped.clone();

    // Workloads: WorkloadEntries, then inline endpoints.
    let mut add_workload = |snap: &mut Snapshot,
                            key: String,
                            ns: &str,
                            we: &WorkloadEntry,
                            source: &ResourceRef|
     -> Option<usize> {
        let sa = we
            .service_account
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        match SpiffeId::for_workload(&mesh.trust_domain, ns, &sa) {
            Ok(identity) => {
                snap.workloads.push(Workload {
                    key,
                    namespace: ns.to_owned(),
                    address: we.address.clone(),
                    labels: we.labels.clone(),
                    service_account: sa,
                    identity,
                    ports: we.ports.clone(),
                    source: source.clone(),
                    inbound: Vec::new(),
                    authz_policies: Vec::new(),
                    jwt_policies: Vec::new(),
                    healthy: !we.unhealthy,
                    dns: None,
                    locality: we
                        .locality
                        .as_deref()
                        .map(crate::locality::Locality::parse)
                        .unwrap_or_default(),
                    network: we.network.clone().filter(|n| !n.is_empty()),
                    weight: we.weight.unwrap_or(1).max(1),
                    derived: DerivedSlot::default(),
                    ingress: ingress_ports(r, ns, &we.labels, &we.address),
                });
                Some(snap.workloads.len() - 1)
            }
            Err(e) => {
                errors.push(ConfigError::at(
                    &source.origin,
                    Some(source.to_string()),
                    "spec.serviceAccount",
                    format!("gives no valid SPIFFE ID: {e}"),
                ));
                None
            }
        }
    };
    // WorkloadEntries by namespace and by (namespace, label, value), for
    // the selectors below: each selector reads the shortest list its labels
    // name instead of every workload of the mesh.
    let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::default();
    let mut by_label: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::default();
    for we in &r.workload_entries {
        let ns = we.namespace();
        if let Some(i) = add_workload(&mut snap, we.source.key(), ns, &we.spec, &we.source) {
            by_namespace.entry(ns).or_default().push(i);
            for (k, v) in we.spec.labels.iter() {
                by_label.entry((ns, k, v)).or_default().push(i);
            }
        }
    }
    let selected = |snap: &Snapshot, ns: &str, sel: &Labels| -> Vec<usize> {
        let candidates = if sel.is_empty() {
            by_namespace.get(ns)
        } else {
            sel.iter()
                .map(|(k, v)| by_label.get(&(ns, k.as_str(), v.as_str())))
                .min_by_key(|l| l.map_or(0, Vec::len))
                .flatten()
        };
        candidates
            .into_iter()
            .flatten()
            .copied()
            .filter(|i| labels_match(sel, &snap.workloads[*i].labels))
            .collect()
    };

    // Services.
    for se in &r.service_entries {
        let ns = se.namespace();
        let mut members = Vec::new();
        if let Some(sel) = &se.spec.workload_selector {
            members.extend(selected(&snap, ns, &sel.labels));
        }
        for (i, ep) in se.spec.endpoints.iter().enumerate() {
            if let Some(idx) = add_workload(
                &mut snap,
                format!("{}[{i}]", se.source.key()),
                ns,
                ep,
                &se.source,
            ) {
                members.push(idx);
            }
        }
        let resolution = se.spec.resolution.unwrap_or(Resolution::Static);
        // Unset `location`: an entry of the mesh's own workloads (a
        // selector or endpoints: how services are written off Kubernetes)
        // is MESH_INTERNAL; one without (DNS hosts, NONE: an egress entry)
        // is Istio's default, MESH_EXTERNAL.
        let default_location =
            if se.spec.workload_selector.is_some() || !se.spec.endpoints.is_empty() {
                Location::MeshInternal
            } else {
                Location::MeshExternal
            };
        // DNS without endpoints: each host is resolved, the one endpoint of
        // its own service, dialled by name on the service's ports (Istio
        // makes a cluster per host).
        let mut by_name: HashMap<String, usize> = HashMap::default();
        if resolution.is_dns()
            && se.spec.endpoints.is_empty()
            && se.spec.workload_selector.is_none()
        {
            for host in &se.spec.hosts {
                let name = mesh.resolve_host(host, ns);
                let we = WorkloadEntry {
                    address: name.clone(),
                    ..WorkloadEntry::default()
                };
                if let Some(idx) = add_workload(
                    &mut snap,
                    format!("{}[dns:{host}]", se.source.key()),
                    ns,
                    &we,
                    &se.source,
                ) {
                    let sans: Vec<SpiffeId> = se
                        .spec
                        .subject_alt_names
                        .iter()
                        .filter_map(|s| s.parse().ok())
                        .collect();
                    snap.workloads[idx].dns = Some(sans.into());
                    by_name.insert(name, idx);
                }
            }
        }
        let mut identities: Vec<String> = members
            .iter()
            .map(|i| snap.workloads[*i].identity.to_string())
            .chain(se.spec.subject_alt_names.iter().cloned())
            .collect();
        identities.sort();
        identities.dedup();
        for host in &se.spec.hosts {
            let host = mesh.resolve_host(host, ns);
            if snap.services.contains_key(&host) {
                // Istio merges duplicates unpredictably; first one wins here
                // and `check` reports the overlap.
                continue;
            }
            let workloads = match by_name.get(&host) {
                Some(i) => vec![*i],
                None => members.clone(),
            };
            snap.services.insert(
                host.clone(),
                Service {
                    host,
                    namespace: ns.to_owned(),
                    location: se.spec.location.unwrap_or(default_location),
                    ports: se.spec.ports.iter().map(service_port).collect(),
                    workloads,
                    identities: identities.clone(),
                    addresses: se
                        .spec
                        .addresses
                        .iter()
                        .filter_map(|a| crate::net::IpBlock::parse(a))
                        .collect(),
                    resolution,
                    source: se.source.clone(),
                    derived: DerivedSlot::default(),
                    endpoint_lists: EndpointLists::default(),
                },
            );
        }
    }

    // DestinationRules: per host, the rule in force (Istio's lookup). In
    // a namespace's view: the lowest level (`visibility::rule_level`: the
    // client's namespace, the service's, the root's; rules of any other
    // namespace are not in force), then the most specific host (exact,
    // then the longest wildcard), then the first read. For the whole mesh
    // (`check`): the most specific, then the first. Each service's host
    // gets the rule in force for it, so every lookup is by the service's
    // host; an exact host of no service keeps its rule (`check` names it).
    let rules = RuleIndex::new(r);
    let in_force = |host: &str, service_ns: Option<&str>| {
        rules.in_force(r, host, service_ns, r.view.as_deref())
    };
    let hosts: BTreeSet<&str> = snap
        .services
        .keys()
        .map(String::as_str)
        .chain(
            rules
                .exact
                .keys()
                .filter(|h| crate::visibility::wildcard_key(h).is_none())
                .map(String::as_str),
        )
        .collect();
    let mut policies = BTreeMap::new();
    for host in hosts {
        let service_ns = snap
            .services
            .get(host)
            .map(|s| s.namespace.as_str())
            .or_else(|| crate::visibility::host_namespace(&mesh, host));
        let Some(i) = in_force(host, service_ns) else {
            continue;
        };
        let dr = &r.destination_rules[i];
        let members: &[usize] = snap.services.get(host).map_or(&[], |s| &s.workloads);
        let subsets = dr
            .spec
            .subsets
            .iter()
            .map(|s| SubsetEntry {
                name: s.name.clone(),
                labels: s.labels.clone(),
                workloads: members
                    .iter()
                    .copied()
                    .filter(|i| labels_match(&s.labels, &snap.workloads[*i].labels))
                    .collect(),
                traffic_policy: s.traffic_policy.clone(),
            })
            .collect();
        policies.insert(
            host.to_owned(),
            DestinationPolicy {
                source: dr.source.clone(),
                traffic_policy: dr.spec.traffic_policy.clone(),
                subsets,
            },
        );
    }
    snap.destination_policies = policies;

    // Gateways.
    for g in &r.gateways {
        snap.gateways.insert(
            g.source.key(),
            GatewayEntry {
                source: g.source.clone(),
                selector: g.spec.selector.clone(),
                servers: g.spec.servers.clone(),
                routes: BTreeMap::new(),
                server_routes: Vec::new(),
                tls_routes: Vec::new(),
            },
        );
    }

    // VirtualServices.
    let mut wild_tcp: Vec<(String, String, Vec<TcpMatch>, Vec<WeightedDestination>)> = Vec::new();
    let mut tcp_owners: HashMap<(String, u16), String> = HashMap::default();
    let mut mesh_tls: Vec<MeshTls> = Vec::new();
    for vs in &r.virtual_services {
        let ns = vs.namespace();
        let mut rules = Vec::new();
        for (i, h) in vs.spec.http.iter().enumerate() {
            match compile_http_rule(&mesh, vs, i, h) {
                Ok(rule) => rules.push(Arc::new(rule)),
                Err(e) => errors.push(e),
            }
        }
        let gateways: Vec<String> = if vs.spec.gateways.is_empty() {
            vec!["mesh".to_owned()]
        } else {
            vs.spec
                .gateways
                .iter()
                .map(|g| gateway_key(g, ns))
                .collect()
        };
        for gw in &gateways {
            for host in &vs.spec.hosts {
                if gw == "mesh" {
                    let host = mesh.resolve_host(host, ns);
                    snap.mesh_routes
                        .entry(host)
                        .or_default()
                        .extend(rules.iter().cloned());
                } else if let Some(entry) = snap.gateways.get_mut(gw) {
                    entry
                        .routes
                        .entry(host.to_ascii_lowercase())
                        .or_default()
                        .extend(rules.iter().cloned());
                }
            }
        }
        let mesh_bound = gateways.iter().any(|g| g == "mesh");
        for (i, tls) in vs.spec.tls.iter().enumerate() {
            let route: Vec<WeightedDestination> = tls
                .route
                .iter()
                .map(|d| weighted(&mesh, ns, &d.destination, d.weight, tls.route.len(), None))
                .collect();
            // The matches for the gateway `gw` (`mesh`: the sidecars).
            let matches_for = |gw: &str| -> Vec<TlsRouteMatch> {
                tls.matches
                    .iter()
                    .filter(|m| {
                        m.gateways.is_empty()
                            || m.gateways.iter().any(|g| {
                                if gw == "mesh" {
                                    g == "mesh"
                                } else {
                                    gateway_key(g, ns) == gw
                                }
                            })
                    })
                    .map(|m| TlsRouteMatch {
                        sni_hosts: m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                        port: m.port,
                    })
                    .collect()
            };
            for gw in gateways.iter().filter(|g| *g != "mesh") {
                let Some(entry) = snap.gateways.get_mut(gw) else {
                    continue;
                };
                let matches = matches_for(gw);
                if !matches.is_empty() {
                    entry.tls_routes.push(Arc::new(TlsRouteRule {
                        source: vs.source.clone(),
                        index: i,
                        matches,
                        route: route.clone(),
                    }));
                }
            }
            if mesh_bound {
                let matches = matches_for("mesh");
                for host in &vs.spec.hosts {
                    mesh_tls.push(MeshTls {
                        pattern: mesh.resolve_host(host, ns),
                        owner: vs.source.key(),
                        matches: matches.clone(),
                        route: route.clone(),
                    });
                }
            }
        }
        if mesh_bound {
            for tcp in &vs.spec.tcp {
                let dests: Vec<WeightedDestination> = tcp
                    .route
                    .iter()
                    .map(|d| weighted(&mesh, ns, &d.destination, d.weight, tcp.route.len(), None))
                    .collect();
                let Some(ports) = mesh_tcp_matches(tcp) else {
                    continue;
                };
                let owner = vs.source.key();
                for host in &vs.spec.hosts {
                    let host = mesh.resolve_host(host, ns);
                    if let Some(svc) = snap.services.get_mut(&host) {
                        attach_tcp(svc, &owner, &mut tcp_owners, &ports, &dests);
                    }
                    if crate::visibility::wildcard_key(&host).is_some() {
                        wild_tcp.push((host, owner.clone(), ports.clone(), dests.clone()));
                    }
                }
            }
        }
    }
    // TCP routes of wildcard hosts, for the services under them that have
    // none of their own: the most specific pattern first.
    wild_tcp.sort_by_key(|(pattern, _, _, _)| std::cmp::Reverse(pattern.len()));
    for svc in snap.services.values_mut() {
        for (pattern, owner, ports, dests) in &wild_tcp {
            if crate::visibility::host_matches(pattern, &svc.host) {
                // Owned by the VirtualService and the pattern: the rules
                // of one wildcard host decide a port, not a blend of them.
                attach_tcp(
                    svc,
                    &format!("{owner} {pattern}"),
                    &mut tcp_owners,
                    ports,
                    dests,
                );
            }
        }
    }
    attach_mesh_tls(&mut snap.services, mesh_tls);
    for entry in snap.gateways.values_mut() {
        entry.server_routes = crate::gateway::server_tables(entry);
    }
    // Attach mesh HTTP rules to the service ports they can apply to: a
    // service's host's own rules, else those of the most specific wildcard
    // host matching it (`*.example.com`, then `*.com`, then `*`).
    let mut wild_routes = crate::visibility::WildcardIndex::default();
    for h in snap.mesh_routes.keys() {
        wild_routes.insert(h, h.clone());
    }
    let routed: Vec<(String, String)> = snap
        .services
        .keys()
        .filter_map(|host| {
            if snap.mesh_routes.contains_key(host) {
                return Some((host.clone(), host.clone()));
            }
            wild_routes
                .best(host)
                .map(|pattern| (host.clone(), pattern.clone()))
        })
        .collect();
    drop(wild_routes);
    for (host, pattern) in routed {
        let rules = &snap.mesh_routes[&pattern];
        if let Some(svc) = snap.services.get_mut(&host) {
            for p in &mut svc.ports {
                p.http_routes = rules
                    .iter()
                    .filter(|r| {
                        r.matches.is_empty()
                            || r.matches
                                .iter()
                                .any(|m| m.port.is_none_or(|n| n == p.number))
                    })
                    .cloned()
                    .collect();
            }
        }
    }

    // Peer policies.
    for pa in &r.peer_authentications {
        let ns = pa.namespace().to_owned();
        let labels = pa
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default();
        let scope = if !labels.is_empty() {
            PeerScope::Workloads {
                namespace: ns,
                labels,
            }
        } else if ns == mesh.root_namespace {
            PeerScope::Mesh
        } else {
            PeerScope::Namespace(ns)
        };
        snap.index
            .peer
            .add(scope.namespace(), snap.peer_policies.len());
        snap.peer_policies.push(PeerPolicy {
            source: Arc::new(pa.source.clone()),
            scope,
            mode: pa.spec.mtls.and_then(|m| m.mode).unwrap_or(MtlsMode::Unset),
            port_modes: pa
                .spec
                .port_level_mtls
                .iter()
                .map(|(p, m)| (*p, m.mode.unwrap_or(MtlsMode::Unset)))
                .collect(),
        });
    }
    for lp in &r.legacy_policies {
        let ns = lp.namespace().to_owned();
        let scope = if lp.source.kind == Kind::MeshPolicy {
            PeerScope::Mesh
        } else if lp.spec.targets.is_empty() {
            if ns == mesh.root_namespace {
                PeerScope::Mesh
            } else {
                PeerScope::Namespace(ns.clone())
            }
        } else {
            PeerScope::Services(
                lp.spec
                    .targets
                    .iter()
                    .map(|t| {
                        let host = mesh.resolve_host(&t.name, &ns);
                        let ports =
                            legacy_target_ports(&snap, &host, t.ports.iter().map(|p| p.number));
                        (host, ports)
                    })
                    .collect(),
            )
        };
        snap.index
            .peer
            .add(scope.namespace(), snap.peer_policies.len());
        snap.peer_policies.push(PeerPolicy {
            source: Arc::new(lp.source.clone()),
            scope,
            mode: lp.spec.mode(),
            port_modes: BTreeMap::new(),
        });
    }

    // Request authentication: the JWTs workloads accept.
    for ra in &r.request_authentications {
        match jwt_policy(&snap, ra) {
            Ok(p) => snap.jwt_policies.push(p),
            Err(e) => errors.push(e),
        }
    }

    // Authorization policies.
    for ap in &r.authorization_policies {
        match authz_policy(&snap, ap) {
            Ok(p) => snap.authz_policies.push(p),
            Err(e) => errors.push(e),
        }
    }

    // Per workload: inbound modes of the ports it serves, and its policies,
    // from the services that list it (by key, as every lookup goes) and the
    // policies that can apply in its namespace.
    let mut served: HashMap<&str, Vec<&Service>> = HashMap::default();
    for svc in snap.services.values() {
        let mut keys: Vec<&str> = svc
            .workloads
            .iter()
            .map(|i| snap.workloads[*i].key.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            served.entry(k).or_default().push(svc);
        }
    }
    let mut authz = PolicyIndex::default();
    let mut jwt = PolicyIndex::default();
    for (i, p) in snap.jwt_policies.iter().enumerate() {
        jwt.add((!p.root_namespace).then_some(&p.source.namespace), i);
    }
    for (i, p) in snap.authz_policies.iter().enumerate() {
        authz.add((!p.root_namespace).then_some(&p.source.namespace), i);
    }
    let mut inbound = Vec::with_capacity(snap.workloads.len());
    for w in &snap.workloads {
        let services = served.get(w.key.as_str()).map_or(&[][..], Vec::as_slice);
        let ports: BTreeSet<u16> = services
            .iter()
            .flat_map(|s| {
                s.ports
                    .iter()
                    .map(|p| s.target_port(p, w))
                    .collect::<Vec<_>>()
            })
            .chain(w.ports.values().copied())
            .collect();
        let modes: Vec<(u16, InboundMode)> = ports
            .into_iter()
            .map(|p| (p, snap.inbound_mode(w, p)))
            .collect();
        let policies: Vec<usize> = authz
            .of(&w.namespace)
            .filter(|i| snap.authz_policies[*i].applies_to(&w.namespace, &w.labels))
            .collect();
        let hosts: Vec<String> = services.iter().map(|s| s.host.clone()).collect();
        let jwt_policies: Vec<usize> = jwt
            .of(&w.namespace)
            .filter(|i| snap.jwt_policies[*i].applies_to(&w.namespace, &w.labels))
            .collect();
        inbound.push((modes, (policies, jwt_policies), hosts));
    }
    drop(served);
    let mut served_by = Vec::with_capacity(inbound.len());
    for (w, (modes, (policies, jwt_policies), hosts)) in snap.workloads.iter_mut().zip(inbound) {
        w.inbound = modes;
        w.authz_policies = policies;
        w.jwt_policies = jwt_policies;
        served_by.push(hosts);
    }
    snap.index.served_by = served_by;
    for (h, svc) in &snap.services {
        snap.index.wildcard_services.insert(h, h.clone());
        if !svc.addresses.is_empty() {
            snap.index.with_addresses.push(h.clone());
        }
    }
    for (i, w) in snap.workloads.iter().enumerate() {
        if let Ok(ip) = w.address.parse::<std::net::IpAddr>() {
            snap.index
                .by_address
                .entry(ip.to_canonical())
                .or_default()
                .push(i);
        }
        snap.index.workloads.entry(w.key.clone()).or_insert(i);
        snap.index
            .by_namespace
            .entry(w.namespace.clone())
            .or_default()
            .push(i);
    }

    snap.telemetry = crate::telemetry::compile(
        r,
        snap.workloads
            .iter()
            .map(|w| (w.key.as_str(), w.namespace.as_str(), &*w.labels)),
    );

    if errors.is_empty() {
        Ok(snap)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn service_port(p: &ServicePort) -> ServicePortEntry {
    ServicePortEntry {
        number: p.number,
        name: p.name.clone(),
        protocol: p.protocol.unwrap_or_else(|| {
            p.name
                .as_deref()
                .map_or(Protocol::Tcp, Protocol::from_port_name)
        }),
        target_port: p.target_port,
        http_routes: Vec::new(),
        tcp_routes: Vec::new(),
        tls_routes: Vec::new(),
    }
}

/// Maps legacy service-port targets to the workload ports behind them.
fn legacy_target_ports(snap: &Snapshot, host: &str, ports: impl Iterator<Item = u16>) -> Vec<u16> {
    let Some(svc) = snap.services.get(host) else {
        return ports.collect();
    };
    let mut out = Vec::new();
    for number in ports {
        match svc.port(number) {
            Some(p) if !svc.workloads.is_empty() => {
                out.extend(
                    svc.workloads
                        .iter()
                        .map(|i| svc.target_port(p, &snap.workloads[*i])),
                );
            }
            Some(p) => out.push(p.target_port.unwrap_or(number)),
            None => out.push(number),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Compiles one RequestAuthentication; an inline `jwks` is parsed here,
/// once, so requests only verify.
fn jwt_policy(
    snap: &Snapshot,
    ra: &Item<crate::resources::security::RequestAuthentication>,
) -> Result<crate::jwt::JwtPolicy, ConfigError> {
    use crate::jwt::{DEFAULT_JWKS_TIMEOUT, JwtKeys, JwtRule, KeySource, TokenLocation};
    let err = |field: String, why: String| {
        ConfigError::at(&ra.source.origin, Some(ra.source.to_string()), field, why)
    };
    let mut rules = Vec::with_capacity(ra.spec.jwt_rules.len());
    for (i, r) in ra.spec.jwt_rules.iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        let keys = match (&r.jwks, &r.jwks_uri) {
            (Some(jwks), None) => KeySource::Inline(std::sync::Arc::new(
                JwtKeys::parse(jwks).map_err(|why| err(format!("{f}.jwks"), why))?,
            )),
            (None, Some(uri)) => {
                crate::jwt::jwks_uri(uri).map_err(|why| err(format!("{f}.jwksUri"), why))?;
                KeySource::Uri(uri.clone())
            }
            (None, None) => KeySource::Uri(crate::jwt::discovery_uri(&r.issuer)),
            _ => {
                return Err(err(
                    format!("{f}.jwksUri"),
                    "set jwksUri or jwks, not both".to_owned(),
                ));
            }
        };
        let mut locations: Vec<TokenLocation> = r
            .from_headers
            .iter()
            .map(|h| TokenLocation::Header {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone(),
            })
            .chain(r.from_params.iter().cloned().map(TokenLocation::Param))
            .chain(r.from_cookies.iter().cloned().map(TokenLocation::Cookie))
            .collect();
        if locations.is_empty() {
            locations = TokenLocation::defaults();
        }
        rules.push(std::sync::Arc::new(JwtRule {
            source: ra.source.clone(),
            issuer: r.issuer.clone(),
            audiences: r.audiences.clone(),
            keys,
            locations,
            forward_original_token: r.forward_original_token,
            required: r.presence == Some(crate::resources::security::JwtPresence::Required),
            output_payload_to_header: r
                .output_payload_to_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
            output_claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .map(|c| {
                    (
                        c.header.to_ascii_lowercase(),
                        c.claim.split('.').map(str::to_owned).collect(),
                    )
                })
                .collect(),
            space_delimited_claims: r.space_delimited_claims.clone(),
            timeout: r.timeout.map_or(DEFAULT_JWKS_TIMEOUT, |t| t.0),
        }));
    }
    let selector = ra
        .spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .filter(|l| !l.is_empty());
    Ok(crate::jwt::JwtPolicy {
        source: ra.source.clone(),
        root_namespace: ra.namespace() == snap.mesh.root_namespace,
        selector,
        rules,
    })
}

/// Compiles one AuthorizationPolicy. Its dry-run annotation is read again
/// here, not trusted to validation, because resources from other sources
/// reach [`compile`] too: a value that is neither true nor false is refused.
fn authz_policy(
    snap: &Snapshot,
    ap: &Item<crate::resources::security::AuthorizationPolicy>,
) -> Result<AuthzPolicy, ConfigError> {
    let dry_run = crate::resources::security::dry_run(&ap.meta).map_err(|why| {
        ConfigError::at(
            &ap.source.origin,
            Some(ap.source.to_string()),
            crate::resources::security::DRY_RUN_FIELD,
            why,
        )
    })?;
    let selector = ap
        .spec
        .selector
        .as_ref()
        .map(|s| s.match_labels.clone())
        .filter(|l| !l.is_empty());
    Ok(AuthzPolicy {
        source: Arc::new(ap.source.clone()),
        root_namespace: ap.namespace() == snap.mesh.root_namespace,
        selector,
        action: ap.spec.action.unwrap_or(AuthzAction::Allow),
        provider: ap.spec.provider.as_ref().map(|p| p.name.clone()),
        rules: canonical_rule_hosts(snap, ap.namespace(), ap.spec.rules.clone()),
        dry_run,
        trust_domain: snap.mesh.trust_domain.clone(),
    })
}

/// The `hosts` and `notHosts` of a policy's rules in the spelling requests
/// are compared in ([`Snapshot::canonical_host`], short names resolved in
/// the policy's namespace); wildcard patterns stay as written.
fn canonical_rule_hosts(
    snap: &Snapshot,
    namespace: &str,
    rules: Option<Vec<crate::resources::security::Rule>>,
) -> Vec<crate::resources::security::Rule> {
    let mut rules = rules.unwrap_or_default();
    let canonical = |hosts: &mut Vec<String>| {
        for h in hosts.iter_mut() {
            if !h.contains('*') {
                *h = snap.canonical_host(h, namespace);
            }
        }
    };
    for r in &mut rules {
        for t in &mut r.to {
            canonical(&mut t.operation.hosts);
            canonical(&mut t.operation.not_hosts);
        }
    }
    rules
}

/// `name` → `namespace/name`; `mesh` stays `mesh`.
pub fn gateway_key(name: &str, namespace: &str) -> String {
    if name == "mesh" || name.contains('/') {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

fn weighted(
    mesh: &MeshConfig,
    ns: &str,
    d: &Destination,
    weight: Option<u32>,
    siblings: usize,
    headers: Option<crate::resources::networking::Headers>,
) -> WeightedDestination {
    WeightedDestination {
        host: mesh.resolve_host(&d.host, ns),
        subset: d.subset.clone(),
        port: d.port.map(|p| p.number),
        weight: weight.unwrap_or(if siblings == 1 { 100 } else { 0 }),
        headers,
    }
}

fn compile_http_rule(
    mesh: &MeshConfig,
    vs: &Item<crate::resources::networking::VirtualService>,
    index: usize,
    h: &crate::resources::networking::HttpRoute,
) -> Result<HttpRouteRule, ConfigError> {
    let ns = vs.namespace();
    let field = format!("spec.http[{index}]");
    let err = |f: String, e: regex::Error| {
        ConfigError::at(
            &vs.source.origin,
            Some(vs.source.to_string()),
            f,
            format!("invalid regular expression: {e}"),
        )
    };
    let compile = |f: String,
                   m: &Option<crate::resources::StringMatch>|
     -> Result<Option<Matcher>, ConfigError> {
        m.as_ref()
            .map(Matcher::new)
            .transpose()
            .map_err(|e| err(f, e))
    };
    let compile_map = |f: String,
                       m: &BTreeMap<String, crate::resources::StringMatch>|
     -> Result<Vec<(String, Matcher)>, ConfigError> {
        m.iter()
            .map(|(k, v)| {
                Ok((
                    k.to_ascii_lowercase(),
                    Matcher::new(v).map_err(|e| err(format!("{f}.{k}"), e))?,
                ))
            })
            .collect()
    };
    let mut matches = Vec::new();
    for (j, m) in h.matches.iter().enumerate() {
        let f = format!("{field}.match[{j}]");
        matches.push(RouteMatch {
            name: m.name.clone(),
            uri: compile(format!("{f}.uri"), &m.uri)?,
            ignore_uri_case: m.ignore_uri_case,
            scheme: compile(format!("{f}.scheme"), &m.scheme)?,
            method: compile(format!("{f}.method"), &m.method)?,
            authority: compile(format!("{f}.authority"), &m.authority)?,
            headers: compile_map(format!("{f}.headers"), &m.headers)?,
            without_headers: compile_map(format!("{f}.withoutHeaders"), &m.without_headers)?,
            query_params: compile_map(format!("{f}.queryParams"), &m.query_params)?,
            port: m.port,
            source_labels: m.source_labels.clone(),
            source_namespace: m.source_namespace.clone(),
            gateways: m.gateways.iter().map(|g| gateway_key(g, ns)).collect(),
        });
    }
    let action = if let Some(r) = &h.redirect {
        RouteAction::Redirect(r.clone())
    } else if let Some(d) = &h.direct_response {
        RouteAction::DirectResponse(d.clone())
    } else {
        RouteAction::Forward(
            h.route
                .iter()
                .map(|d| {
                    weighted(
                        mesh,
                        ns,
                        &d.destination,
                        d.weight,
                        h.route.len(),
                        d.headers.clone(),
                    )
                })
                .collect(),
        )
    };
    Ok(HttpRouteRule {
        source: vs.source.clone(),
        index,
        name: h.name.clone(),
        matches,
        action,
        timeout: h.timeout,
        retries: h.retries.clone(),
        fault: h.fault.clone(),
        mirror: h
            .mirror
            .as_ref()
            .map(|m| weighted(mesh, ns, m, Some(100), 1, None)),
        mirror_percent: h.mirror.as_ref().map(|_| {
            h.mirror_percentage
                .map(|p| p.value)
                .or(h.mirror_percent.map(f64::from))
                .unwrap_or(100.0)
        }),
        headers: h.headers.clone(),
        rewrite: h.rewrite.clone(),
        websocket_upgrade: h.websocket_upgrade,
        cors: h
            .cors_policy
            .as_ref()
            .map(crate::route::Cors::new)
            .transpose()
            .map_err(|e| err(format!("{field}.corsPolicy.allowOrigins"), e))?,
    })
}

/// A value computed from a [`Workload`] or a [`Service`] at most once per
/// snapshot, by a
/// crate above this one (mesh-tower keeps the workload's telemetry labels
/// here, so they are built once and shared rather than per request). One
/// type per slot: a second type gets a fresh value each time.
#[derive(Clone, Default)]
pub struct DerivedSlot(std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>);

impl DerivedSlot {
    /// The value, computed by `f` the first time.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(&self, f: impl Fn() -> T) -> Arc<T> {
        self.0
            .get_or_init(|| Arc::new(f()))
            .clone()
            .downcast::<T>()
            .unwrap_or_else(|_| Arc::new(f()))
    }
}

/// A service's endpoint lists, one per port and subset, each made once per
/// snapshot on first use and then shared by every request routed there
/// (the list, each endpoint's `address:port` key among it, is otherwise
/// built per request). Few per service: its ports times its subsets.
#[derive(Default)]
pub struct EndpointLists(std::sync::RwLock<Vec<EndpointList>>);

/// One list of [`EndpointLists`]: `None` when the subset is not defined.
type EndpointList = (u16, Option<Box<str>>, Option<Arc<[crate::plan::Endpoint]>>);

impl EndpointLists {
    /// The list of `port` and `subset`, made by `make` the first time.
    pub fn get_or_make(
        &self,
        port: u16,
        subset: Option<&str>,
        make: impl FnOnce() -> Option<Vec<crate::plan::Endpoint>>,
    ) -> Option<Arc<[crate::plan::Endpoint]>> {
        let find = |lists: &[EndpointList]| {
            lists
                .iter()
                .find(|(p, s, _)| *p == port && s.as_deref() == subset)
                .map(|(_, _, l)| l.clone())
        };
        if let Some(found) = find(&self.0.read().unwrap_or_else(|e| e.into_inner())) {
            return found;
        }
        let made: Option<Arc<[crate::plan::Endpoint]>> = make().map(Arc::from);
        let mut lists = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Another request may have made it meanwhile: keep the first.
        if let Some(found) = find(&lists) {
            return found;
        }
        lists.push((port, subset.map(Box::from), made.clone()));
        made
    }
}

impl Clone for EndpointLists {
    /// A fresh cache: a clone of a service may be changed, and its lists
    /// are made again from what it then holds.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for EndpointLists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.read().map_or(0, |l| l.len());
        write!(f, "EndpointLists({n})")
    }
}

impl std::fmt::Debug for DerivedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "DerivedSlot(set)"
        } else {
            "DerivedSlot(empty)"
        })
    }
}
