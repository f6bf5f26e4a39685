//! Istio's visibility rules: which ServiceEntries, VirtualServices and
//! DestinationRules a namespace sees (`exportTo`), and which one is in
//! force when several it sees name one host.
//!
//! `exportTo` lists namespaces: `*` every namespace, `.` the resource's
//! own, `~` none, any other entry that namespace. An empty list means the
//! MeshConfig default for the kind (`defaultServiceExportTo`,
//! `defaultVirtualServiceExportTo`, `defaultDestinationRuleExportTo`),
//! itself `*` when unset, as in Istio.
//!
//! Every data plane serves one namespace (its workload's, or its
//! Gateway's) and compiles that namespace's [`view`]: what it cannot see
//! does not exist for it. A data plane on a control plane receives what
//! [`crate::xds::Catalog::view`] selects, by the same rule, and compiles
//! the same view of it, so the precedence below holds whatever order the
//! documents arrive in.
//!
//! Precedence, where several resources a namespace sees name one host: a
//! ServiceEntry or VirtualService of the namespace's own comes first (the
//! view orders them so; the compile keeps the first), as Istio prefers the
//! proxy's namespace. A DestinationRule is in force only at Istio's lookup
//! levels ([`rule_level`]: the client's namespace, the service's, the
//! root's), the most specific host within a level; the compile settles it
//! per service from the view's namespace.

use std::collections::BTreeSet;

use crate::meshconfig::MeshConfig;
use crate::resources::common::{Labels, labels_match};
use crate::resources::networking::Sidecar;
use crate::resources::{Item, Resources};

/// True if a resource of namespace `owner` exported to `export_to` (or,
/// when that is empty, to `default`) is visible in `namespace`.
pub fn exported_to(export_to: &[String], default: &[String], owner: &str, namespace: &str) -> bool {
    let list = if export_to.is_empty() {
        default
    } else {
        export_to
    };
    list.is_empty()
        || list
            .iter()
            .any(|e| e == "*" || e == namespace || (e == "." && owner == namespace))
}

/// The namespaces a resource of `owner` is visible in: `None` for every
/// namespace, else the set (empty: none).
fn audience(export_to: &[String], default: &[String], owner: &str) -> Option<BTreeSet<String>> {
    let list = if export_to.is_empty() {
        default
    } else {
        export_to
    };
    if list.is_empty() || list.iter().any(|e| e == "*") {
        return None;
    }
    Some(
        list.iter()
            .filter(|e| *e != "~")
            .map(|e| if e == "." { owner } else { e.as_str() }.to_owned())
            .collect(),
    )
}

/// The namespaces in which resources `a` and `b` (each `(exportTo,
/// default, owner)`) are both visible: `None` for every namespace, else
/// the set.
pub fn seen_together(
    a: (&[String], &[String], &str),
    b: (&[String], &[String], &str),
) -> Option<BTreeSet<String>> {
    match (audience(a.0, a.1, a.2), audience(b.0, b.1, b.2)) {
        (None, None) => None,
        (Some(s), None) | (None, Some(s)) => Some(s),
        (Some(x), Some(y)) => Some(x.intersection(&y).cloned().collect()),
    }
}

/// Istio's checks of one `exportTo` list, as `(field, message)`: each
/// entry `.`, `*`, `~` or a namespace name (a DNS-1123 label), `~` and `*`
/// alone, no entry twice.
pub fn export_to_problems(field: &str, list: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let special = matches!(e.as_str(), "." | "*" | "~");
        if !special && !crate::load::is_dns_label(e) {
            out.push((
                f.clone(),
                format!("`{e}` is not `.`, `*`, `~` or a namespace name"),
            ));
        }
        if !seen.insert(e.as_str()) {
            out.push((f.clone(), format!("`{e}` is listed twice")));
        }
        if (e == "~" || e == "*") && list.len() > 1 {
            out.push((f, format!("`{e}` cannot be combined with other entries")));
        }
    }
    out
}

/// What `namespace` sees of `r`: the ServiceEntries, VirtualServices and
/// DestinationRules exported to it, in the order of precedence (module
/// docs); everything else as it is.
pub fn view(r: &Resources, namespace: &str) -> Resources {
    view_keeping(r, namespace, |_| false)
}

/// [`view`], keeping also the ServiceEntries `keep` says (a workload's
/// own, whatever their `exportTo`).
fn view_keeping(
    r: &Resources,
    namespace: &str,
    keep: impl Fn(&Item<crate::resources::networking::ServiceEntry>) -> bool,
) -> Resources {
    let m = &r.mesh;
    let own_first = |owner: &str| u8::from(owner != namespace);
    let mut out = r.clone();
    out.service_entries.retain(|se| {
        keep(se)
            || exported_to(
                &se.spec.export_to,
                &m.default_service_export_to,
                se.namespace(),
                namespace,
            )
    });
    out.service_entries
        .sort_by_key(|se| own_first(se.namespace()));
    out.virtual_services.retain(|vs| {
        exported_to(
            &vs.spec.export_to,
            &m.default_virtual_service_export_to,
            vs.namespace(),
            namespace,
        )
    });
    out.virtual_services
        .sort_by_key(|vs| own_first(vs.namespace()));
    out.destination_rules.retain(|dr| {
        exported_to(
            &dr.spec.export_to,
            &m.default_destination_rule_export_to,
            dr.namespace(),
            namespace,
        )
    });
    // DestinationRules keep their load order: the compile settles them per
    // service by level (`rule_level`, read from `view`).
    out.view = Some(namespace.to_owned());
    out
}

/// The Sidecar in force for a workload of `namespace` with `labels`, as
/// Istio picks it: the first of its namespace whose selector matches, else
/// its namespace's selector-less one, else the root namespace's.
pub fn sidecar_for<'r>(
    r: &'r Resources,
    namespace: &str,
    labels: &Labels,
) -> Option<&'r Item<Sidecar>> {
    let selector = |s: &Item<Sidecar>| {
        s.spec
            .workload_selector
            .as_ref()
            .filter(|sel| !sel.labels.is_empty())
            .map(|sel| sel.labels.clone())
    };
    let root = r.mesh.root_namespace.as_str();
    r.sidecars
        .iter()
        .find(|s| {
            s.namespace() == namespace && selector(s).is_some_and(|sel| labels_match(&sel, labels))
        })
        .or_else(|| {
            r.sidecars
                .iter()
                .find(|s| s.namespace() == namespace && selector(s).is_none())
        })
        .or_else(|| {
            r.sidecars
                .iter()
                .find(|s| s.namespace() == root && selector(s).is_none())
        })
}

/// What the sidecar of `workload` (`namespace/name`) sees of `r`: its
/// namespace's [`view`], narrowed by the Sidecar in force for it
/// ([`sidecar_for`]): only the ServiceEntries and mesh VirtualServices
/// whose namespace and a host match one of its egress hosts
/// (`namespace/dnsName`: `*` any namespace, `.` the workload's, `~` none;
/// `*`, `*.suffix` or a host), with the Sidecar's
/// `outboundTrafficPolicy` in place of the MeshConfig's. The services the
/// workload itself serves stay, whatever their `exportTo` and its Sidecar
/// say (its inbound is built from them, as Istio's). A workload without a
/// WorkloadEntry gets the namespace's view.
pub fn workload_view(r: &Resources, workload: &str) -> Resources {
    let namespace = crate::xds::node_namespace(workload);
    let key = if workload.contains('/') {
        workload.to_owned()
    } else {
        format!("default/{workload}")
    };
    let Some(we) = r.workload_entries.iter().find(|w| w.source.key() == key) else {
        return view(r, namespace);
    };
    let labels = we.spec.labels.clone();
    // The services the workload serves: its inbound is built from them,
    // whatever their exportTo or its Sidecar say (as Istio's).
    let serves_it = |se: &Item<crate::resources::networking::ServiceEntry>| {
        se.namespace() == namespace
            && se
                .spec
                .workload_selector
                .as_ref()
                .is_some_and(|sel| labels_match(&sel.labels, &labels))
    };
    let mut out = view_keeping(r, namespace, serves_it);
    let Some(sc) = sidecar_for(r, namespace, &labels) else {
        return out;
    };
    if let Some(p) = sc.spec.outbound_traffic_policy {
        out.mesh.outbound_traffic_policy = p;
    }
    let Some(egress) = sc.spec.egress.first() else {
        return out;
    };
    let m = &r.mesh;
    let imports = |owner: &str, host: &str| {
        egress.hosts.iter().any(|h| {
            let Some((ns, name)) = h.split_once('/') else {
                return false;
            };
            let ns_ok = match ns {
                "*" => true,
                "." => owner == namespace,
                "~" => false,
                n => n == owner,
            };
            ns_ok && host_matches(&name.to_ascii_lowercase(), host)
        })
    };
    out.service_entries.retain(|se| {
        let ns = se.namespace();
        serves_it(se)
            || se
                .spec
                .hosts
                .iter()
                .any(|h| imports(ns, &m.resolve_host(h, ns)))
    });
    out.virtual_services.retain(|vs| {
        let ns = vs.namespace();
        let mesh_bound =
            vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        !mesh_bound
            || vs
                .spec
                .hosts
                .iter()
                .any(|h| imports(ns, &m.resolve_host(h, ns)))
    });
    out
}

/// The level of a DestinationRule of namespace `owner` for a client in
/// `client` calling a service of `service` (its namespace, when the host
/// is a service of the mesh), lower first, as Istio looks rules up: the
/// client's namespace, the service's, the root namespace. `None`: Istio
/// does not look there, so the rule is not in force for that client and
/// service (a rule of a third namespace governs nobody else's traffic).
/// Within a level the most specific host wins: a wildcard rule of the
/// client's namespace is in force over an exact one of the service's.
pub fn rule_level(m: &MeshConfig, owner: &str, client: &str, service: Option<&str>) -> Option<u8> {
    if owner == client {
        Some(0)
    } else if service == Some(owner) {
        Some(1)
    } else if owner == m.root_namespace {
        Some(2)
    } else {
        None
    }
}

/// The namespace a host names when it is a Kubernetes-style service host
/// (`name.namespace.svc.<clusterDomain>`).
pub fn host_namespace<'h>(m: &MeshConfig, host: &'h str) -> Option<&'h str> {
    host.strip_suffix(m.cluster_domain.as_str())
        .and_then(|h| h.strip_suffix(".svc."))
        .and_then(|h| h.rsplit_once('.'))
        .map(|(_, ns)| ns)
}

/// True if a host pattern as Istio writes it matches `host` (both lower
/// case), as Istio's `host.Name.Matches` does: equal, or a pattern
/// `*suffix` for every host ending in `suffix` (`*` every host,
/// `*.example.com` the hosts under `example.com`, never `example.com`).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    pattern == host
        || pattern
            .strip_prefix('*')
            .is_some_and(|suffix| host.ends_with(suffix))
}

/// The keys ([`wildcard_key`]) of the wildcard patterns of whole labels
/// that can match `host` (`*.example.com`, `*.com`, `*`), most specific
/// first: each suffix of it at a dot, then the empty one of `*`. For
/// looking patterns up by key instead of scanning them all; Istio's
/// partial patterns (`*x`, a key not starting with a dot) are few and
/// matched by [`host_matches`] apart.
pub fn wildcard_keys(host: &str) -> impl Iterator<Item = &str> {
    host.char_indices()
        .filter(|(i, c)| *c == '.' && *i > 0)
        .map(move |(i, _)| &host[i..])
        .chain(std::iter::once(""))
}

/// True for the key of a partial pattern (`*x`: not `*`, not `*.`...),
/// which [`wildcard_keys`] does not produce.
pub fn is_partial_key(key: &str) -> bool {
    !key.is_empty() && !key.starts_with('.')
}

/// Values by wildcard pattern, for finding the most specific pattern that
/// matches a host without scanning every pattern: whole-label patterns by
/// their key, looked up at each dot of the host; the few partial ones
/// (`*x`) scanned.
#[derive(Debug, Clone)]
pub struct WildcardIndex<V> {
    dotted: std::collections::HashMap<String, V>,
    partial: Vec<(String, V)>,
}

impl<V> Default for WildcardIndex<V> {
    fn default() -> Self {
        Self {
            dotted: std::collections::HashMap::new(),
            partial: Vec::new(),
        }
    }
}

impl<V> WildcardIndex<V> {
    /// Adds `v` under `pattern` unless the pattern is no wildcard or is
    /// already there (the first one stays).
    pub fn insert(&mut self, pattern: &str, v: V) {
        let Some(key) = wildcard_key(pattern) else {
            return;
        };
        if is_partial_key(key) {
            if !self.partial.iter().any(|(k, _)| k == key) {
                self.partial.push((key.to_owned(), v));
            }
        } else {
            self.dotted.entry(key.to_owned()).or_insert(v);
        }
    }

    /// True when it holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.dotted.is_empty() && self.partial.is_empty()
    }

    /// The value of the most specific pattern (the longest) that matches
    /// `host`.
    pub fn best(&self, host: &str) -> Option<&V> {
        let dotted = wildcard_keys(host).find_map(|k| self.dotted.get(k).map(|v| (k.len(), v)));
        let partial = self
            .partial
            .iter()
            .filter(|(k, _)| host.ends_with(k.as_str()))
            .map(|(k, v)| (k.len(), v))
            .max_by_key(|(len, _)| *len);
        match (dotted, partial) {
            (Some(d), Some(p)) => Some(if p.0 > d.0 { p.1 } else { d.1 }),
            (d, p) => d.or(p).map(|(_, v)| v),
        }
    }
}

/// The key of a wildcard pattern (what follows its `*`: `.example.com`
/// for `*.example.com`, empty for `*`), `None` for a host that is no
/// wildcard.
pub fn wildcard_key(pattern: &str) -> Option<&str> {
    pattern.strip_prefix('*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn export_to_reads_as_istio() {
        let none: Vec<String> = Vec::new();
        assert!(exported_to(&none, &none, "a", "b"));
        assert!(exported_to(&s(&["*"]), &none, "a", "b"));
        assert!(exported_to(&s(&["."]), &none, "a", "a"));
        assert!(!exported_to(&s(&["."]), &none, "a", "b"));
        assert!(exported_to(&s(&["b"]), &none, "a", "b"));
        assert!(!exported_to(&s(&["b"]), &none, "a", "a"));
        assert!(!exported_to(&s(&["~"]), &none, "a", "a"));
        // The MeshConfig default applies only when the list is empty.
        assert!(!exported_to(&none, &s(&["."]), "a", "b"));
        assert!(exported_to(&s(&["*"]), &s(&["."]), "a", "b"));
    }

    #[test]
    fn seen_together_intersects_audiences() {
        let none: Vec<String> = Vec::new();
        let dot = s(&["."]);
        assert_eq!(
            seen_together((&dot, &none, "a"), (&dot, &none, "b")),
            Some(BTreeSet::new())
        );
        assert_eq!(
            seen_together((&none, &none, "a"), (&none, &none, "b")),
            None
        );
        assert_eq!(
            seen_together((&dot, &none, "a"), (&none, &none, "b")),
            Some(BTreeSet::from(["a".to_owned()]))
        );
        assert_eq!(
            seen_together((&s(&["~"]), &none, "a"), (&none, &none, "b")),
            Some(BTreeSet::new())
        );
    }

    #[test]
    fn wildcards_match_as_istio() {
        assert!(host_matches("*.local", "reviews.default.svc.cluster.local"));
        assert!(host_matches("*.wikipedia.org", "en.wikipedia.org"));
        assert!(host_matches("*.wikipedia.org", "a.b.wikipedia.org"));
        assert!(!host_matches("*.wikipedia.org", "wikipedia.org"));
        assert!(!host_matches("*.wikipedia.org", "xwikipedia.org"));
        assert!(host_matches("*", "anything"));
        assert!(host_matches("*.wikipedia.org", "*.wikipedia.org"));
        // Istio allows a partial first label: `*x` is every host ending in x.
        assert!(host_matches("*x", "fox"));
        assert!(!host_matches("*x", "foy"));
        let keys: Vec<&str> = wildcard_keys("en.wikipedia.org").collect();
        assert_eq!(keys, [".wikipedia.org", ".org", ""]);
        assert!(is_partial_key("x") && !is_partial_key(".x") && !is_partial_key(""));
        assert_eq!(wildcard_key("*.org"), Some(".org"));
        assert_eq!(wildcard_key("*"), Some(""));
        assert_eq!(wildcard_key("a.org"), None);
        assert_eq!(wildcard_key("*org"), Some("org"));
    }

    #[test]
    fn the_most_specific_pattern_is_found() {
        let mut ix = WildcardIndex::default();
        for p in ["*", "*.org", "*.wikipedia.org", "*pedia.org", "exact.org"] {
            ix.insert(p, p);
        }
        ix.insert("*.org", "second");
        assert_eq!(ix.best("en.wikipedia.org"), Some(&"*.wikipedia.org"));
        assert_eq!(ix.best("xpedia.org"), Some(&"*pedia.org"));
        assert_eq!(ix.best("a.org"), Some(&"*.org"));
        assert_eq!(ix.best("a.com"), Some(&"*"));
        assert!(WildcardIndex::<()>::default().best("a").is_none());
    }

    #[test]
    fn bad_lists_are_named() {
        assert!(export_to_problems("spec.exportTo", &s(&[".", "*", "ns-1"])).len() == 1);
        let p = export_to_problems("spec.exportTo", &s(&["~", "a"]));
        assert_eq!(p[0].0, "spec.exportTo[0]");
        let p = export_to_problems("spec.exportTo", &s(&["Bad_NS"]));
        assert!(p[0].1.contains("not `.`"), "{p:?}");
        let p = export_to_problems("spec.exportTo", &s(&["a", "a"]));
        assert_eq!(p[0].0, "spec.exportTo[1]");
        assert!(export_to_problems("spec.exportTo", &s(&["foo", "."])).is_empty());
    }
}
