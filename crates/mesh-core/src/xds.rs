//! What the control plane sends each data plane, and reading it back: the
//! pure half of the mesh's own xDS stream (the gRPC half is in
//! `mesh-control` and `mesh-tower`).
//!
//! The unit on the wire is one Istio document as the user wrote it (JSON),
//! named `Kind/namespace/name`, versioned by a hash of its bytes. A data
//! plane turns the documents it holds back into [`Resources`] with
//! [`read`], which is the file loader's own reading and validation, and
//! feeds the same [`Store`](crate::store::Store): a proxy on a control
//! plane compiles the same snapshot as one reading the same files.
//!
//! All kinds travel under one type URL, [`CONFIG_TYPE_URL`], so that one
//! response is one consistent configuration (a VirtualService and the
//! DestinationRule whose subset it names arrive together), where Envoy's
//! one-type-per-response needs its warming rules.
//!
//! A [`Catalog`] is built once per configuration; [`Catalog::view`] is what
//! one workload is entitled to (Istio's visibility rules):
//! - ServiceEntries, VirtualServices and DestinationRules exported to its
//!   namespace (`exportTo`, [`crate::visibility`]: `*` everyone, `.` the
//!   resource's own namespace, a name that namespace, `~` nobody, empty the
//!   MeshConfig default);
//! - its own WorkloadEntry and those selected by the ServiceEntries it sees
//!   (their endpoints);
//! - AuthorizationPolicies and Sidecars of its namespace and of the root
//!   namespace;
//! - every Gateway, PeerAuthentication and legacy policy (few, and
//!   client-side TLS decisions read the destination's mTLS mode), and the
//!   MeshConfig.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{ConfigError, ConfigErrors};
use crate::resources::common::labels_match;
use crate::resources::networking::WorkloadEntry;
use crate::resources::{Item, Kind, Origin, Resources};

/// The type URL of every document of the mesh's own stream.
pub const CONFIG_TYPE_URL: &str = "type.mesh.local/istio.config.v1.Document";

/// The scheme of the origin ([`Origin::file`]) of a document read from a
/// control plane: errors name `xds:Kind/namespace/name`.
pub const ORIGIN_SCHEME: &str = "xds:";

/// The node id a gateway follows a control plane as:
/// `Gateway/namespace/name`; any other node id is a WorkloadEntry's
/// `namespace/name`.
pub const GATEWAY_NODE_PREFIX: &str = "Gateway/";

/// The namespace a data plane of node id `node` serves, whose
/// [`crate::visibility::view`] it compiles: a WorkloadEntry's (`ns/name`)
/// or a Gateway's (`Gateway/ns/name`); `default` for a bare name.
pub fn node_namespace(node: &str) -> &str {
    let key = node.strip_prefix(GATEWAY_NODE_PREFIX).unwrap_or(node);
    key.split_once('/').map_or("default", |(ns, _)| ns)
}

/// What the data plane of node id `node` compiles of `r`: a gateway's
/// namespace view, or a workload's view through its Sidecar
/// ([`crate::visibility`]).
pub fn node_view(r: &Resources, node: &str) -> Resources {
    match node.strip_prefix(GATEWAY_NODE_PREFIX) {
        Some(gw) => crate::visibility::view(r, node_namespace(gw)),
        None => crate::visibility::workload_view(r, node),
    }
}

/// One document as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// `Kind/namespace/name`; the MeshConfig is `MeshConfig/<root>/mesh`.
    pub name: String,
    /// `apiVersion/kind` as written (`networking.istio.io/v1/ServiceEntry`).
    pub kind: String,
    /// The document, JSON.
    pub body: Arc<[u8]>,
    /// A hash of `body`, stable across processes: a data plane that
    /// reconnects says which versions it holds and gets only the others.
    pub version: String,
}

impl Document {
    fn new(name: String, raw: &Value) -> Self {
        let kind = format!(
            "{}/{}",
            raw.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
            raw.get("kind").and_then(Value::as_str).unwrap_or("")
        );
        // Serializing a `Value` cannot fail (its keys are strings).
        let body: Arc<[u8]> = serde_json::to_vec(raw).unwrap_or_default().into();
        let version = content_version(&body);
        Self {
            name,
            kind,
            body,
            version,
        }
    }
}

/// A version string for content `bytes`, stable across processes (the
/// documents' versions are made so).
pub fn content_version(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// FNV-1a, 64 bits: stable across builds and processes, unlike std's
/// hasher, and enough to tell two versions of one document apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The name of a resource's document.
pub fn document_name(kind: Kind, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// Why a configuration cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The resources were loaded without their documents
    /// ([`crate::load::load_path_keeping_documents`] keeps them).
    #[error("{0} was loaded without its document; load with documents kept to serve it")]
    NoDocument(String),
}

/// Why a workload gets no view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// No WorkloadEntry `namespace/name` is in the configuration.
    #[error("no WorkloadEntry {0} in the configuration")]
    UnknownWorkload(String),
}

/// A configuration ready to be served: every document, and what each
/// workload may see of it.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    documents: HashMap<String, Entry>,
    root_namespace: String,
    /// Documents every workload sees.
    everyone: Vec<String>,
    /// `(exportTo, owner namespace, document)` of ServiceEntries,
    /// VirtualServices and DestinationRules; a ServiceEntry also with the
    /// WorkloadEntries it selects.
    exported: Vec<Exported>,
    /// AuthorizationPolicies, RequestAuthentications and Sidecars by
    /// namespace.
    policies: HashMap<String, Vec<String>>,
    /// WorkloadEntries by `namespace/name`: their document and namespace.
    workloads: HashMap<String, (String, String)>,
    /// WorkloadEntry document → the [`Exported`] ServiceEntries selecting
    /// it (by index): a workload sees its own services whatever their
    /// exportTo.
    member_of: HashMap<String, Vec<usize>>,
    /// What each namespace sees, built once per catalog on first ask: a
    /// thousand data planes of a namespace share one computation per push.
    namespace_views: ViewMemo,
    /// The namespace views of the catalog this one was built after: a view
    /// that did not change is that very [`View`], so a stream that holds it
    /// knows without comparing that it has nothing to send.
    earlier_views: HashMap<String, View>,
}

/// The documents one data plane may see, name → version, sorted by name.
/// Data planes of one namespace share one.
pub type View = Arc<BTreeMap<String, String>>;

/// [`Catalog::namespace_views`]: a clone starts empty (it is a cache).
#[derive(Default)]
struct ViewMemo(std::sync::Mutex<HashMap<String, View>>);

impl Clone for ViewMemo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for ViewMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewMemo")
    }
}

/// What the catalog reads of an [`Item`] of any kind.
trait Described {
    fn source(&self) -> &crate::resources::ResourceRef;
    fn raw(&self) -> Option<&Arc<Value>>;
}

impl<T> Described for Item<T> {
    fn source(&self) -> &crate::resources::ResourceRef {
        &self.source
    }
    fn raw(&self) -> Option<&Arc<Value>> {
        self.raw.as_ref()
    }
}

/// A document and the tree it was serialized from: a catalog built after
/// this one takes the document as it is when its resource holds the very
/// same tree ([`Catalog::after`]).
#[derive(Debug, Clone)]
struct Entry {
    document: Arc<Document>,
    raw: Arc<Value>,
}

#[derive(Debug, Clone)]
struct Exported {
    /// `exportTo`, or the MeshConfig default for the kind when empty.
    export_to: Vec<String>,
    namespace: String,
    document: String,
    members: Vec<String>,
}

/// `list`, or `default` when it is empty.
fn or_default(list: &[String], default: &[String]) -> Vec<String> {
    if list.is_empty() { default } else { list }.to_vec()
}

impl Catalog {
    /// Builds the catalog of `r`, which must have been loaded with its
    /// documents kept.
    pub fn new(r: &Resources) -> Result<Self, CatalogError> {
        Self::build(r, None)
    }

    /// [`new`](Self::new), taking from `previous` each document whose
    /// resource still holds the tree `previous` serialized (a source that
    /// keeps unchanged resources as they were, as a
    /// [`FileSource`](crate::store::FileSource) does, shares them): one
    /// changed file costs the serializing of its own documents, not of the
    /// whole mesh.
    pub fn after(r: &Resources, previous: &Self) -> Result<Self, CatalogError> {
        Self::build(r, Some(previous))
    }

    fn build(r: &Resources, previous: Option<&Self>) -> Result<Self, CatalogError> {
        let mut c = Self {
            root_namespace: r.mesh.root_namespace.clone(),
            earlier_views: previous.map_or_else(HashMap::new, |p| {
                p.namespace_views
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            }),
            ..Self::default()
        };
        let mesh_name = document_name(Kind::MeshConfig, &r.mesh.root_namespace, "mesh");
        if let Some(raw) = &r.mesh_raw {
            c.add(mesh_name.clone(), raw, previous);
            c.everyone.push(mesh_name);
        }
        let doc = |c: &mut Catalog, item: &dyn Described| -> Result<String, CatalogError> {
            let source = item.source();
            let name = document_name(source.kind, &source.namespace, &source.name);
            let raw = item
                .raw()
                .ok_or_else(|| CatalogError::NoDocument(source.to_string()))?;
            c.add(name.clone(), raw, previous);
            Ok(name)
        };
        for g in &r.gateways {
            let name = doc(&mut c, g)?;
            c.everyone.push(name);
        }
        for p in &r.peer_authentications {
            let name = doc(&mut c, p)?;
            c.everyone.push(name);
        }
        for p in &r.legacy_policies {
            let name = doc(&mut c, p)?;
            c.everyone.push(name);
        }
        for p in &r.authorization_policies {
            let name = doc(&mut c, p)?;
            c.policies
                .entry(p.namespace().to_owned())
                .or_default()
                .push(name);
        }
        // RequestAuthentications too: a data plane that missed one would
        // take a forged token's claims for anonymous, or an ALLOW on
        // request principals for no rule at all.
        for p in &r.request_authentications {
            let name = doc(&mut c, p)?;
            c.policies
                .entry(p.namespace().to_owned())
                .or_default()
                .push(name);
        }
        // Sidecars travel as policies do (the namespace's and the root
        // namespace's): the data plane picks the one in force for it.
        for s in &r.sidecars {
            let name = doc(&mut c, s)?;
            c.policies
                .entry(s.namespace().to_owned())
                .or_default()
                .push(name);
        }
        // Telemetries as Sidecars: the namespace's and the root namespace's
        // reach the namespace's data planes, which resolve their own.
        for t in &r.telemetries {
            let name = doc(&mut c, t)?;
            c.policies
                .entry(t.namespace().to_owned())
                .or_default()
                .push(name);
        }
        // WorkloadEntries by namespace, for the ServiceEntries' selectors.
        let mut by_namespace: HashMap<&str, Vec<(&Item<WorkloadEntry>, String)>> = HashMap::new();
        for w in &r.workload_entries {
            let name = doc(&mut c, w)?;
            c.workloads
                .insert(w.source.key(), (name.clone(), w.namespace().to_owned()));
            by_namespace
                .entry(w.namespace())
                .or_default()
                .push((w, name));
        }
        for se in &r.service_entries {
            let document = doc(&mut c, se)?;
            let members: Vec<String> = se
                .spec
                .workload_selector
                .as_ref()
                .map(|sel| {
                    by_namespace
                        .get(se.namespace())
                        .into_iter()
                        .flatten()
                        .filter(|(w, _)| labels_match(&sel.labels, &w.spec.labels))
                        .map(|(_, name)| name.clone())
                        .collect()
                })
                .unwrap_or_default();
            for m in &members {
                c.member_of
                    .entry(m.clone())
                    .or_default()
                    .push(c.exported.len());
            }
            c.exported.push(Exported {
                export_to: or_default(&se.spec.export_to, &r.mesh.default_service_export_to),
                namespace: se.namespace().to_owned(),
                document,
                members,
            });
        }
        for vs in &r.virtual_services {
            let document = doc(&mut c, vs)?;
            c.exported.push(Exported {
                export_to: or_default(
                    &vs.spec.export_to,
                    &r.mesh.default_virtual_service_export_to,
                ),
                namespace: vs.namespace().to_owned(),
                document,
                members: Vec::new(),
            });
        }
        for dr in &r.destination_rules {
            let document = doc(&mut c, dr)?;
            c.exported.push(Exported {
                export_to: or_default(
                    &dr.spec.export_to,
                    &r.mesh.default_destination_rule_export_to,
                ),
                namespace: dr.namespace().to_owned(),
                document,
                members: Vec::new(),
            });
        }
        Ok(c)
    }

    fn add(&mut self, name: String, raw: &Arc<Value>, previous: Option<&Self>) {
        let document = match previous.and_then(|p| p.documents.get(&name)) {
            Some(e) if Arc::ptr_eq(&e.raw, raw) => e.document.clone(),
            _ => Arc::new(Document::new(name.clone(), raw)),
        };
        let raw = raw.clone();
        self.documents.insert(name, Entry { document, raw });
    }

    /// A document by name.
    pub fn get(&self, name: &str) -> Option<&Document> {
        self.documents.get(name).map(|e| &*e.document)
    }

    /// How many documents the configuration has.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// True for an empty configuration.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// The namespace of a WorkloadEntry `namespace/name`, if there is one.
    pub fn workload_namespace(&self, workload: &str) -> Option<&str> {
        self.workloads.get(workload).map(|(_, ns)| ns.as_str())
    }

    /// The names of the documents the WorkloadEntry `namespace/name` may
    /// see, with their versions.
    pub fn view(&self, workload: &str) -> Result<View, ViewError> {
        let (own, namespace) = self
            .workloads
            .get(workload)
            .ok_or_else(|| ViewError::UnknownWorkload(workload.to_owned()))?;
        Ok(self.view_in(namespace, Some(own)))
    }

    /// The view of a gateway: what its namespace may see (a gateway has
    /// no WorkloadEntry of its own; every Gateway is in every view).
    pub fn gateway_view(&self, namespace: &str) -> View {
        self.view_in(namespace, None)
    }

    fn view_in(&self, namespace: &str, own: Option<&String>) -> View {
        let shared = self.namespace_view(namespace);
        let Some(own) = own else {
            return shared;
        };
        // A workload's own services too, whatever their exportTo: its
        // inbound is built from them.
        let owned = self
            .member_of
            .get(own)
            .into_iter()
            .flatten()
            .flat_map(|&i| {
                let e = &self.exported[i];
                std::iter::once(&e.document).chain(&e.members)
            });
        let extra: Vec<&String> = std::iter::once(own)
            .chain(owned)
            .filter(|n| !shared.contains_key(*n) && self.documents.contains_key(*n))
            .collect();
        if extra.is_empty() {
            // The usual case: its services are exported to its namespace.
            return shared;
        }
        let mut view = (*shared).clone();
        for name in extra {
            if let Some(e) = self.documents.get(name) {
                view.insert(name.clone(), e.document.version.clone());
            }
        }
        Arc::new(view)
    }

    /// What every data plane of `namespace` sees: the documents for
    /// everyone, the namespace's and the root namespace's policies, and
    /// what is exported to it with the endpoints of its services.
    fn namespace_view(&self, namespace: &str) -> View {
        let memo = &self.namespace_views.0;
        let known = memo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(namespace)
            .cloned();
        if let Some(view) = known {
            return view;
        }
        let mut names: BTreeSet<&str> = self.everyone.iter().map(String::as_str).collect();
        for ns in [namespace, self.root_namespace.as_str()] {
            names.extend(
                self.policies
                    .get(ns)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
        for e in &self.exported {
            if crate::visibility::exported_to(&e.export_to, &[], &e.namespace, namespace) {
                names.insert(&e.document);
                names.extend(e.members.iter().map(String::as_str));
            }
        }
        let view: BTreeMap<String, String> = names
            .into_iter()
            .filter_map(|n| {
                self.documents
                    .get(n)
                    .map(|e| (n.to_owned(), e.document.version.clone()))
            })
            .collect();
        let view = match self.earlier_views.get(namespace) {
            Some(earlier) if **earlier == view => earlier.clone(),
            _ => Arc::new(view),
        };
        memo.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(namespace.to_owned(), view.clone());
        view
    }
}

/// Reads documents received from a control plane back into resources,
/// through the file loader's reading and validation. Each is named
/// `xds:<name>` in errors.
pub fn read<'a>(
    documents: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Resources, ConfigErrors> {
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    for (name, body) in documents {
        let origin = Origin {
            file: PathBuf::from(format!("{ORIGIN_SCHEME}{name}")),
            document: 1,
            item: None,
        };
        match serde_json::from_slice::<Value>(body) {
            Ok(doc) => docs.push((origin, doc)),
            Err(e) => errors.push(ConfigError::at(
                &origin,
                None,
                "",
                format!("is not valid JSON: {e}"),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    crate::load::load_documents(docs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: bank}
spec:
  hosts: [ledger]
  ports: [{number: 80, name: http}]
  workloadSelector: {labels: {app: ledger}}
  exportTo: ["."]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: reviews}, serviceAccount: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger-1, namespace: bank}
spec: {address: 10.0.0.2, labels: {app: ledger}, serviceAccount: ledger}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.0.0.3, labels: {app: web}, serviceAccount: web}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ledger-only-bank, namespace: bank}
spec: {action: ALLOW, rules: [{from: [{source: {namespaces: [bank]}}]}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bank-jwt, namespace: bank}
spec: {jwtRules: [{issuer: "https://idp.bank", jwksUri: "https://idp.bank/keys"}]}
"#;

    fn catalog() -> (Resources, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, MESH).unwrap();
        let plain = crate::load::load_path(&file).unwrap();
        assert!(
            matches!(Catalog::new(&plain), Err(CatalogError::NoDocument(_))),
            "documents were not kept"
        );
        let r = crate::load::load_path_keeping_documents(&file).unwrap();
        let c = Catalog::new(&r).unwrap();
        (r, c)
    }

    #[test]
    fn a_workload_sees_what_is_exported_to_its_namespace_and_its_policies() {
        let (_, c) = catalog();
        let web: Vec<String> = c.view("shop/web").unwrap().keys().cloned().collect();
        assert_eq!(
            web,
            [
                "PeerAuthentication/istio-system/default",
                "ServiceEntry/shop/reviews",
                "WorkloadEntry/shop/reviews-v1",
                "WorkloadEntry/shop/web",
            ]
        );
        let ledger: Vec<String> = c.view("bank/ledger-1").unwrap().keys().cloned().collect();
        assert!(ledger.contains(&"ServiceEntry/bank/ledger".to_owned()));
        assert!(ledger.contains(&"AuthorizationPolicy/bank/ledger-only-bank".to_owned()));
        assert!(ledger.contains(&"RequestAuthentication/bank/bank-jwt".to_owned()));
        assert!(ledger.contains(&"ServiceEntry/shop/reviews".to_owned()));
        assert_eq!(
            c.view("shop/nobody"),
            Err(ViewError::UnknownWorkload("shop/nobody".into()))
        );
    }

    #[test]
    fn a_view_read_back_compiles_to_the_services_it_names() {
        let (_, c) = catalog();
        let view = c.view("shop/web").unwrap();
        let docs: Vec<(&str, &[u8])> = view
            .keys()
            .map(|n| (n.as_str(), &*c.get(n).unwrap().body))
            .collect();
        let r = read(docs).unwrap();
        let snap = crate::snapshot::compile(&r).unwrap();
        assert!(snap.services.contains_key("reviews.shop.svc.cluster.local"));
        assert!(!snap.services.contains_key("ledger.bank.svc.cluster.local"));
        assert_eq!(snap.workloads.len(), 2);
    }

    #[test]
    fn versions_change_with_the_document_only() {
        let (_, a) = catalog();
        let (_, b) = catalog();
        let name = "ServiceEntry/shop/reviews";
        assert_eq!(a.get(name).unwrap().version, b.get(name).unwrap().version);
        let other = Document::new(name.into(), &serde_json::json!({"kind": "ServiceEntry"}));
        assert_ne!(other.version, a.get(name).unwrap().version);
    }

    #[test]
    fn bad_documents_are_refused_naming_them() {
        let e = read([("ServiceEntry/shop/x", &b"{not json"[..])]).unwrap_err();
        assert!(e.to_string().contains("xds:ServiceEntry/shop/x"), "{e}");
        let e = read([(
            "ServiceEntry/shop/x",
            &br#"{"apiVersion":"networking.istio.io/v1","kind":"ServiceEntry","metadata":{"name":"x"},"spec":{"hosts":["x"],"bogus":1}}"#[..],
        )])
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
