//! Who is on each side of a request, as Istio's labels name them, and the
//! extension types through which the rest of the mesh tells telemetry.

use std::sync::Arc;

use mesh_core::identity::SpiffeId;
use mesh_core::snapshot::{Service, Workload};

use super::metrics::{DEFAULT_CLUSTER, UNKNOWN};
use mesh_core::resources::common::Labels;

/// Which side of a request reports it: Istio's `reporter` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The caller (outbound): `reporter="source"`.
    Source,
    /// The server (inbound): `reporter="destination"`.
    Destination,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// A workload as Istio's `*_workload`, `*_workload_namespace`,
/// `*_principal`, `*_app`, `*_version`, `*_canonical_service`,
/// `*_canonical_revision` and `*_cluster` labels describe it. Anything not
/// known is `"unknown"`.
///
/// The canonical service and revision are derived as Istio derives them
/// from a workload's labels: `service.istio.io/canonical-name`, else
/// `app.kubernetes.io/name`, else `app`, else the workload's name; and
/// `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`,
/// else `version`, else `latest`. Kiali drops series without them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkloadInfo {
    /// Workload name (`source_workload` / `destination_workload`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its SPIFFE ID, `spiffe://cluster.local/ns/x/sa/y`.
    pub principal: String,
    /// The value of its `version` label.
    pub version: String,
    /// The value of its `app` label.
    pub app: String,
    /// Its canonical service.
    pub canonical_service: String,
    /// Its canonical revision.
    pub canonical_revision: String,
    /// Its cluster ([`DEFAULT_CLUSTER`] for this mesh's own workloads).
    pub cluster: String,
}

impl Default for WorkloadInfo {
    fn default() -> Self {
        Self::unknown()
    }
}

impl WorkloadInfo {
    /// A workload of this mesh with a name and namespace: its canonical
    /// service is its name, revision `latest`; principal, app and version
    /// unknown.
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            canonical_service: name.to_owned(),
            canonical_revision: "latest".to_owned(),
            cluster: DEFAULT_CLUSTER.to_owned(),
            ..Self::unknown()
        }
    }

    /// Nothing known.
    pub fn unknown() -> Self {
        Self {
            name: UNKNOWN.to_owned(),
            namespace: UNKNOWN.to_owned(),
            principal: UNKNOWN.to_owned(),
            version: UNKNOWN.to_owned(),
            app: UNKNOWN.to_owned(),
            canonical_service: UNKNOWN.to_owned(),
            canonical_revision: UNKNOWN.to_owned(),
            cluster: UNKNOWN.to_owned(),
        }
    }

    /// Sets the principal.
    pub fn with_principal(mut self, id: &SpiffeId) -> Self {
        self.principal = id.to_string();
        self
    }

    /// Sets the version (and the canonical revision, unless a label named
    /// another).
    pub fn with_version(mut self, version: &str) -> Self {
        if self.canonical_revision == "latest" || self.canonical_revision == UNKNOWN {
            version.clone_into(&mut self.canonical_revision);
        }
        version.clone_into(&mut self.version);
        self
    }

    /// Takes `app`, `version` and the canonical service and revision from
    /// a workload's labels, as Istio derives them.
    pub fn with_labels(mut self, labels: &Labels) -> Self {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty());
        if let Some(app) = get("app") {
            app.clone_into(&mut self.app);
        }
        if let Some(v) = get("version") {
            v.clone_into(&mut self.version);
        }
        if let Some(c) = get("service.istio.io/canonical-name")
            .or_else(|| get("app.kubernetes.io/name"))
            .or_else(|| get("app"))
        {
            c.clone_into(&mut self.canonical_service);
        }
        if let Some(r) = get("service.istio.io/canonical-revision")
            .or_else(|| get("app.kubernetes.io/version"))
            .or_else(|| get("version"))
        {
            r.clone_into(&mut self.canonical_revision);
        }
        self
    }

    /// [`from_workload`](Self::from_workload), built once per workload and
    /// snapshot and shared: what the request path uses.
    pub fn shared(w: &Workload) -> Arc<Self> {
        w.derived.get_or_init(|| Self::from_workload(w))
    }

    /// A workload of the snapshot: its name (the WorkloadEntry's), namespace,
    /// identity and `version` label.
    pub fn from_workload(w: &Workload) -> Self {
        let name = w.key.rsplit_once('/').map_or(w.key.as_str(), |(_, n)| n);
        Self {
            principal: w.identity.to_string(),
            ..Self::new(name, &w.namespace)
        }
        .with_labels(&w.labels)
    }

    /// A peer known only by its verified SPIFFE ID: principal and
    /// namespace; the workload name and version are unknown.
    pub fn from_peer(id: &SpiffeId) -> Self {
        Self {
            namespace: id.namespace().unwrap_or(UNKNOWN).to_owned(),
            principal: id.to_string(),
            ..Self::unknown()
        }
    }
}

/// Inbound: who the caller is beyond its SPIFFE ID (workload name,
/// version), when something upstream of telemetry knows it, for example a
/// lookup of the peer's identity in the snapshot. Put it in the request's
/// extensions; without it the source labels come from the
/// [`PeerIdentity`](crate::tls::PeerIdentity) alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo(pub Arc<WorkloadInfo>);

/// The request header in which a mesh client describes its workload to the
/// mesh peer it calls: Istio's metadata exchange (`x-envoy-peer-metadata`)
/// in a simple form, `namespace/name;app=A;version=V;cs=S;cr=R;cluster=C`
/// ([`WorkloadInfo::peer_header`]). The router writes it on requests to
/// mesh mTLS endpoints only (replacing whatever the application wrote);
/// the server believes it only from an authenticated peer
/// ([`source_from_peer`]) and removes it before the application.
/// Why a header and not an ALPN-negotiated exchange: the data is per
/// workload, HTTP carries it on the request that needs it with no extra
/// round trip, and its cost is one short header per request (measured in
/// the bench's (c)). Why the labels and not only the name: with a control
/// plane a server's configuration holds only what it may reach, rarely
/// its callers.
pub const PEER_HEADER: http::HeaderName = http::HeaderName::from_static("x-mesh-peer");

/// What a peer header may carry in a value: a Kubernetes label value.
fn label_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl WorkloadInfo {
    /// This workload as [`PEER_HEADER`] describes it; `None` when a value
    /// could not travel in it.
    pub fn peer_header(&self) -> Option<http::HeaderValue> {
        let mut v = format!("{}/{}", self.namespace, self.name);
        for (k, x) in [
            ("app", &self.app),
            ("version", &self.version),
            ("cs", &self.canonical_service),
            ("cr", &self.canonical_revision),
            ("cluster", &self.cluster),
        ] {
            if x != UNKNOWN && label_value(x) {
                v.push_str(&format!(";{k}={x}"));
            }
        }
        http::HeaderValue::from_str(&v).ok()
    }
}

/// The calling workload a request describes in [`PEER_HEADER`], believed
/// only as far as `peer`, the verified identity of the connection, backs
/// it: a workload of the snapshot by that name must carry that very
/// identity (a caller can name itself or another replica of its service
/// account, never someone else); a workload the snapshot does not hold
/// (a control plane sends a server only what it may reach) must be in the
/// identity's namespace, and its principal is always the verified one.
/// As with Istio's exchange, the name, app and version are the caller's
/// word within that bound. `None`: not believed.
pub fn source_from_peer(
    snap: &mesh_core::snapshot::Snapshot,
    claimed: &http::HeaderValue,
    peer: &SpiffeId,
) -> Option<SourceInfo> {
    let text = claimed.to_str().ok()?;
    let mut parts = text.split(';');
    let key = parts.next()?;
    if let Some((_, w)) = snap.workload(key) {
        return (w.dns.is_none() && &w.identity == peer)
            .then(|| SourceInfo(WorkloadInfo::shared(w)));
    }
    let (ns, name) = key.split_once('/')?;
    if Some(ns) != peer.namespace() || !label_value(name) {
        return None;
    }
    let mut info = WorkloadInfo::new(name, ns).with_principal(peer);
    for kv in parts {
        let (k, v) = kv.split_once('=')?;
        if !label_value(v) {
            return None;
        }
        let field = match k {
            "app" => &mut info.app,
            "version" => &mut info.version,
            "cs" => &mut info.canonical_service,
            "cr" => &mut info.canonical_revision,
            "cluster" => &mut info.cluster,
            _ => continue,
        };
        v.clone_into(field);
    }
    Some(SourceInfo(Arc::new(info)))
}

/// A connection's last believed [`PEER_HEADER`]: its requests carry the
/// same description from the same verified peer, so it is read once per
/// connection and configuration version rather than per request. Cheap to
/// clone (one per connection, shared by its requests).
#[derive(Debug, Clone, Default)]
pub struct PeerMemo(Arc<std::sync::Mutex<Option<Remembered>>>);

/// The header last read, the configuration version, what was believed.
type Remembered = (http::HeaderValue, u64, Option<SourceInfo>);

impl PeerMemo {
    /// [`source_from_peer`], answered from the memo when `claimed` and the
    /// snapshot's version are those of the last request. `peer` must be the
    /// connection's (fixed) verified identity.
    pub fn source(
        &self,
        snap: &mesh_core::snapshot::Snapshot,
        claimed: &http::HeaderValue,
        peer: &SpiffeId,
    ) -> Option<SourceInfo> {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((v, version, s)) = &*last
            && v == claimed
            && *version == snap.version
        {
            return s.clone();
        }
        let s = source_from_peer(snap, claimed, peer);
        *last = Some((claimed.clone(), snap.version, s.clone()));
        s
    }
}

/// Where a request (or TCP connection) went: the destination service and,
/// once chosen, the workload that served it.
///
/// Outbound, the router inserts it into the **response** extensions once it
/// has picked the service, subset and endpoint (a request extension set by
/// the caller is used when the response carries none). Inbound, a request
/// extension overrides the service labels taken from the `Host` header.
/// Without it, the destination service is the request's host (capped, see
/// [`CardinalityLimits`](super::CardinalityLimits)) and the workload is
/// `"unknown"`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DestinationInfo {
    /// The service's fully qualified host (`destination_service`).
    pub service: Arc<str>,
    /// `destination_service_name`.
    pub service_name: Arc<str>,
    /// `destination_service_namespace`.
    pub service_namespace: Arc<str>,
    /// The workload that served the request, once known.
    pub workload: Option<Arc<WorkloadInfo>>,
    /// Whether the connection to it was mesh mTLS, once known.
    pub mtls: Option<bool>,
    /// The endpoint, `address:port`, for the access log.
    pub upstream: Option<String>,
}

impl DestinationInfo {
    /// A service by host and the namespace it is defined in. A Kubernetes
    /// host `name.namespace.svc...` is named `name` in `namespace`; any other
    /// host is its own name, as Istio reports ServiceEntry hosts.
    pub fn new(service_host: &str, service_namespace: &str) -> Self {
        let (name, namespace) = service_name(service_host, service_namespace);
        Self {
            service: service_host.into(),
            service_name: name.into(),
            service_namespace: namespace.into(),
            workload: None,
            mtls: None,
            upstream: None,
        }
    }

    /// A service of the snapshot: its names are built once per snapshot
    /// and shared by every request to it.
    pub fn for_service(svc: &Service) -> Self {
        let names = svc
            .derived
            .get_or_init(|| Self::new(&svc.host, &svc.namespace));
        (*names).clone()
    }

    /// Sets the workload that served.
    pub fn with_workload(mut self, workload: impl Into<Arc<WorkloadInfo>>) -> Self {
        self.workload = Some(workload.into());
        self
    }

    /// Sets whether the connection was mesh mTLS.
    pub fn with_mtls(mut self, mtls: bool) -> Self {
        self.mtls = Some(mtls);
        self
    }

    /// Sets the endpoint, for the access log.
    pub fn with_upstream(mut self, upstream: impl std::fmt::Display) -> Self {
        self.upstream = Some(upstream.to_string());
        self
    }
}

/// `(name, namespace)` of a service host: `reviews.default.svc.cluster.local`
/// is `reviews` in `default`; a short host is in `namespace`; any other host
/// is its own name, in `namespace`.
pub(crate) fn service_name<'a>(host: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    let mut parts = host.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(ns), Some("svc")) if !name.is_empty() && !ns.is_empty() => (name, ns),
        _ => (host, namespace),
    }
}

/// `mutual_tls`, `none` or, when the reporter cannot tell, `unknown`.
pub(crate) fn security_policy(mtls: Option<bool>) -> &'static str {
    match mtls {
        Some(true) => "mutual_tls",
        Some(false) => "none",
        None => UNKNOWN,
    }
}

/// What inbound telemetry should say about a connection, from the snapshot:
/// the service this workload serves on `port` (by its fully qualified host,
/// as the caller's side reports it), and the calling workload when exactly
/// one WorkloadEntry carries the peer's identity. Computed once per
/// connection.
pub fn inbound_labels(
    snap: &mesh_core::snapshot::Snapshot,
    workload_key: &str,
    port: u16,
    peer: Option<&SpiffeId>,
) -> (Option<DestinationInfo>, Option<SourceInfo>) {
    // The workload's own services, from the snapshot's index (a scan of
    // every service per connection would grow with the mesh); the first
    // host by name, as before.
    let service = snap.workload(workload_key).and_then(|(i, w)| {
        snap.hosts_served_by(i)
            .iter()
            .filter_map(|h| snap.services.get(h))
            .find(|s| s.ports.iter().any(|p| s.target_port(p, w) == port))
    });
    let source = peer.and_then(|id| {
        // A DNS-made endpoint proves no identity: never a caller.
        let mut callers = snap
            .workloads
            .iter()
            .filter(|w| w.dns.is_none() && &w.identity == id);
        match (callers.next(), callers.next()) {
            (Some(w), None) => Some(SourceInfo(WorkloadInfo::shared(w))),
            _ => None,
        }
    });
    (service.map(DestinationInfo::for_service), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert_eq!(
            service_name("reviews.default.svc.cluster.local", "x"),
            ("reviews", "default")
        );
        assert_eq!(service_name("reviews", "prod"), ("reviews", "prod"));
        assert_eq!(
            service_name("db.example.test", "data"),
            ("db.example.test", "data")
        );
        let d = DestinationInfo::new("ratings.shop.svc.cluster.local", "shop");
        assert_eq!(
            (&*d.service_name, &*d.service_namespace),
            ("ratings", "shop")
        );
    }

    /// A peer's claim of who it is holds only for a workload carrying the
    /// peer's verified identity.
    #[test]
    fn a_claimed_workload_must_carry_the_peers_identity() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: web-v1}\n\
                    spec: {address: 10.0.0.1, labels: {app: web, version: v1}, serviceAccount: web}\n---\n\
                    apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: db}\n\
                    spec: {address: 10.0.0.2, labels: {app: db}, serviceAccount: db}\n";
        let snap = mesh_core::snapshot::compile(
            &mesh_core::load::load_str(std::path::Path::new("w.yaml"), yaml).unwrap(),
        )
        .unwrap();
        let web = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        let claim =
            |v: &str| source_from_peer(&snap, &http::HeaderValue::from_str(v).unwrap(), &web);
        let got = claim("default/web-v1").unwrap().0;
        assert_eq!(
            (got.name.as_str(), got.version.as_str(), got.app.as_str()),
            ("web-v1", "v1", "web")
        );
        assert!(claim("default/db").is_none(), "another identity's workload");
        assert!(
            claim("default/db;app=x").is_none(),
            "labels do not change whose workload it is"
        );
        assert!(claim("web-v1").is_some(), "a bare name is in default");
        // A workload this configuration does not hold (a control plane
        // sends a server only what it may reach): its own description,
        // in its identity's namespace only, with the verified principal.
        let got = claim("default/web-v3;app=web;version=v3;cs=web;cr=v3;cluster=east;x=y")
            .unwrap()
            .0;
        assert_eq!(
            (
                got.name.as_str(),
                got.app.as_str(),
                got.version.as_str(),
                got.canonical_revision.as_str(),
                got.cluster.as_str(),
                got.principal.as_str(),
            ),
            (
                "web-v3",
                "web",
                "v3",
                "v3",
                "east",
                "spiffe://cluster.local/ns/default/sa/web"
            )
        );
        assert!(claim("other/web-v3").is_none(), "another namespace");
        assert!(claim("default/web-v3;app=a b").is_none());
        assert!(claim("default/web-v3;version").is_none());
        assert!(claim("default/a/b").is_none());
        // Read once per connection and configuration: the same answer,
        // shared, for a repeated claim; a different claim is read again.
        let memo = PeerMemo::default();
        let v = http::HeaderValue::from_static("default/web-v3;app=web");
        let (a, b) = (
            memo.source(&snap, &v, &web).unwrap(),
            memo.source(&snap, &v, &web).unwrap(),
        );
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let other = http::HeaderValue::from_static("other/x");
        assert!(memo.source(&snap, &other, &web).is_none());
        // What a workload says of itself, read back.
        let me = WorkloadInfo::from_workload(snap.workload("default/web-v1").unwrap().1);
        assert_eq!(
            me.peer_header().unwrap(),
            "default/web-v1;app=web;version=v1;cs=web;cr=v1;cluster=Kubernetes"
        );
    }

    #[test]
    fn peers_known_by_identity_only() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/blog/sa/wordpress").unwrap();
        let w = WorkloadInfo::from_peer(&id);
        assert_eq!(w.namespace, "blog");
        assert_eq!(w.principal, "spiffe://cluster.local/ns/blog/sa/wordpress");
        assert_eq!(
            (w.name.as_str(), w.version.as_str()),
            ("unknown", "unknown")
        );
    }
}
