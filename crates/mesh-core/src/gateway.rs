//! A Gateway's route tables, one per server, as Istio builds one route
//! configuration per Gateway server: a host is served only through the
//! servers that name it, with their TLS. A host that only a `MUTUAL`
//! server names is not reachable on a `SIMPLE` or a plain-HTTP port of the
//! same gateway, and an HTTPS-only host is never served in cleartext.
//!
//! A server's `hosts` are `host`, `namespace/host`, `./host` (the Gateway's
//! own namespace) or `*/host`; a VirtualService bound to the Gateway lands
//! in a server's table when one of its hosts and one of the server's hosts
//! intersect and the server takes VirtualServices of its namespace. A
//! request is then looked up by its host in the tables of the servers its
//! connection came in on (the servers of the listener port, narrowed to the
//! one its SNI picked for TLS), and the host must be one the server names.
//!
//! ```
//! use std::path::Path;
//! use mesh_core::gateway::GatewayRoute;
//!
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: Gateway
//! metadata: {name: edge}
//! spec:
//!   servers:
//!   - {port: {number: 80, name: http, protocol: HTTP}, hosts: [www.example.test]}
//!   - port: {number: 443, name: https, protocol: HTTPS}
//!     hosts: [admin.example.test]
//!     tls: {mode: MUTUAL, serverCertificate: c.pem, privateKey: k.pem, caCertificates: ca.pem}
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: {name: sites}
//! spec:
//!   hosts: [www.example.test, admin.example.test]
//!   gateways: [edge]
//!   http: [{route: [{destination: {host: web}}]}]
//! "#;
//! let snap = mesh_core::snapshot::compile(&mesh_core::load::load_str(Path::new("g.yaml"), yaml)?)?;
//! let gw = &snap.gateways["default/edge"];
//! // The plain-HTTP server (index 0) serves www, never admin.
//! assert!(matches!(gw.route(&[0], "www.example.test"), GatewayRoute::Rules(_)));
//! assert!(matches!(gw.route(&[0], "admin.example.test"), GatewayRoute::OtherServer));
//! assert!(matches!(gw.route(&[1], "admin.example.test"), GatewayRoute::Rules(_)));
//! # Ok::<(), mesh_core::error::ConfigErrors>(())
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::route::HttpRouteRule;
use crate::snapshot::GatewayEntry;

/// Host → HTTP rules.
pub type RouteTable = BTreeMap<String, Vec<Arc<HttpRouteRule>>>;

/// What a gateway does with a request's host on the servers of its
/// connection.
#[derive(Debug, Clone, Copy)]
pub enum GatewayRoute<'a> {
    /// The rules of the VirtualServices that serve the host here.
    Rules(&'a [Arc<HttpRouteRule>]),
    /// The host is served by another server of the gateway (another port,
    /// or another TLS server of this port): not on this connection.
    OtherServer,
    /// No server of the gateway serves the host.
    Unknown,
}

/// Case-insensitive host match of Istio's wildcards: `*`, `*.suffix` (at
/// least one label before the suffix) and exact names.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Do two host patterns have a host in common?
pub fn hosts_intersect(a: &str, b: &str) -> bool {
    host_matches(a, b) || host_matches(b, a)
}

/// A server host (`host`, `ns/host`, `./host`, `*/host`) as the namespace
/// it takes VirtualServices from (`None`: any) and the host.
pub fn split_server_host<'h>(h: &'h str, gateway_namespace: &'h str) -> (Option<&'h str>, &'h str) {
    match h.split_once('/') {
        Some(("*", host)) => (None, host),
        Some((".", host)) => (Some(gateway_namespace), host),
        Some((ns, host)) => (Some(ns), host),
        None => (None, h),
    }
}

/// A request host as the tables compare it: lower case, no port, no
/// trailing dot.
pub fn request_host_name(host: &str) -> String {
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':')
            .filter(|(n, p)| !n.contains(':') && p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(n, _)| n)
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// One table per server of `entry`, from the rules bound to the gateway
/// (`entry.routes`).
pub(crate) fn server_tables(entry: &GatewayEntry) -> Vec<RouteTable> {
    let gw_ns = entry.source.namespace.as_str();
    entry
        .servers
        .iter()
        .map(|server| {
            let mut table = RouteTable::new();
            for (vs_host, rules) in &entry.routes {
                let kept: Vec<Arc<HttpRouteRule>> = rules
                    .iter()
                    .filter(|r| {
                        server.hosts.iter().any(|h| {
                            let (ns, host) = split_server_host(h, gw_ns);
                            ns.is_none_or(|ns| ns == r.source.namespace)
                                && hosts_intersect(host, vs_host)
                        })
                    })
                    .cloned()
                    .collect();
                if !kept.is_empty() {
                    table.insert(vs_host.clone(), kept);
                }
            }
            table
        })
        .collect()
}

impl GatewayEntry {
    /// Does server `index` name `host` (a request host name, see
    /// [`request_host_name`])?
    pub fn admits(&self, index: usize, host: &str) -> bool {
        let gw_ns = self.source.namespace.as_str();
        self.servers.get(index).is_some_and(|s| {
            s.hosts
                .iter()
                .any(|h| host_matches(split_server_host(h, gw_ns).1, host))
        })
    }

    /// The rules for a request for `host` (any spelling: see
    /// [`request_host_name`]) that came in on a connection of `servers`
    /// (indexes into [`GatewayEntry::servers`]). The first server, in the
    /// order given, that names the host and has a VirtualService for it
    /// decides; among a table's hosts an exact one wins over wildcards,
    /// and a longer wildcard over a shorter.
    pub fn route(&self, servers: &[usize], host: &str) -> GatewayRoute<'_> {
        let host = request_host_name(host);
        for &i in servers {
            if !self.admits(i, &host) {
                continue;
            }
            if let Some(rules) = self.server_routes.get(i).and_then(|t| lookup(t, &host)) {
                return GatewayRoute::Rules(rules);
            }
        }
        let elsewhere = (0..self.servers.len())
            .filter(|i| !servers.contains(i))
            .any(|i| {
                self.admits(i, &host)
                    && self
                        .server_routes
                        .get(i)
                        .is_some_and(|t| lookup(t, &host).is_some())
            });
        if elsewhere {
            GatewayRoute::OtherServer
        } else {
            GatewayRoute::Unknown
        }
    }
}

/// A table's rules for `host`: an exact host first, then the longest
/// wildcard that matches.
fn lookup<'t>(table: &'t RouteTable, host: &str) -> Option<&'t [Arc<HttpRouteRule>]> {
    if let Some(rules) = table.get(host) {
        return Some(rules);
    }
    table
        .iter()
        .filter(|(pattern, _)| pattern.starts_with('*') && host_matches(pattern, host))
        .max_by_key(|(pattern, _)| pattern.len())
        .map(|(_, rules)| rules.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(host_matches("*", "a.b"));
        assert!(host_matches("*.example.test", "a.example.test"));
        assert!(host_matches("*.example.test", "A.b.EXAMPLE.test"));
        assert!(!host_matches("*.example.test", "example.test"));
        assert!(!host_matches("*.example.test", "evilexample.test"));
        assert!(host_matches("Blog.example.test", "blog.example.test"));
        assert!(hosts_intersect("*.example.test", "blog.example.test"));
        assert!(hosts_intersect("blog.example.test", "*"));
        assert!(!hosts_intersect("a.test", "b.test"));
    }

    #[test]
    fn request_hosts() {
        assert_eq!(
            request_host_name("Blog.Example.Test.:8443"),
            "blog.example.test"
        );
        assert_eq!(request_host_name("[::1]:80"), "[::1]");
        assert_eq!(request_host_name("10.0.0.1"), "10.0.0.1");
    }
}
