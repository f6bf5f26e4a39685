//! Choosing a destination among a rule's weighted ones, and an endpoint
//! inside it, against one snapshot.

use std::time::Instant;

use http::request::Parts;
use mesh_core::balance::{hash_key, p2c, sticky_pick};
use mesh_core::resources::networking::{
    ConsistentHash, LoadBalancerSettings, SimpleLb, TrafficPolicy,
};
use mesh_core::route::WeightedDestination;
use mesh_core::snapshot::{Service, ServicePortEntry, Snapshot};

use super::ClientAddr;
use super::state::{RandomSource, TrafficState};

/// A chosen endpoint.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// `address:port`.
    pub(crate) key: String,
    /// Index into the snapshot's workloads.
    pub(crate) workload: usize,
    /// The workload port.
    pub(crate) port: u16,
}

/// The endpoints of a destination: the subset's workloads, or all of the
/// service's.
pub(crate) fn endpoints(
    snap: &Snapshot,
    svc: &Service,
    port: &ServicePortEntry,
    subset: Option<&str>,
) -> Option<Vec<Endpoint>> {
    let members: &[usize] = match subset {
        None => &svc.workloads,
        Some(s) => {
            &snap
                .destination_policies
                .get(&svc.host)?
                .subset(s)?
                .workloads
        }
    };
    Some(
        members
            .iter()
            .map(|i| {
                let w = &snap.workloads[*i];
                let p = svc.target_port(port, w);
                Endpoint {
                    key: format!("{}:{p}", w.address),
                    workload: *i,
                    port: p,
                }
            })
            .collect(),
    )
}

/// The traffic policy for a host, port and subset, merged the way Istio
/// merges: subset over host, port-level over the whole.
pub(crate) fn effective_policy(
    snap: &Snapshot,
    host: &str,
    port: u16,
    subset: Option<&str>,
) -> TrafficPolicy {
    let Some(dp) = snap.destination_policies.get(host) else {
        return TrafficPolicy::default();
    };
    let flatten = |p: &TrafficPolicy| {
        let mut out = p.clone();
        if let Some(pl) = p
            .port_level_settings
            .iter()
            .find(|pl| pl.port.number == port)
        {
            out.load_balancer = pl.load_balancer.clone().or(out.load_balancer);
            out.connection_pool = pl.connection_pool.clone().or(out.connection_pool);
            out.outlier_detection = pl.outlier_detection.clone().or(out.outlier_detection);
            out.tls = pl.tls.clone().or(out.tls);
        }
        out
    };
    let mut merged = dp.traffic_policy.as_ref().map(flatten).unwrap_or_default();
    if let Some(sp) = subset
        .and_then(|s| dp.subset(s))
        .and_then(|s| s.traffic_policy.as_ref())
    {
        let sp = flatten(sp);
        merged.load_balancer = sp.load_balancer.or(merged.load_balancer);
        merged.connection_pool = sp.connection_pool.or(merged.connection_pool);
        merged.outlier_detection = sp.outlier_detection.or(merged.outlier_detection);
        merged.tls = sp.tls.or(merged.tls);
    }
    merged
}

/// The consistent-hash settings of a host (port-level first), if any.
pub(crate) fn consistent_hash(snap: &Snapshot, host: &str, port: u16) -> Option<ConsistentHash> {
    effective_policy(snap, host, port, None)
        .load_balancer
        .and_then(|lb| lb.consistent_hash)
}

/// A cookie the mesh must set on the response, for a sticky session.
#[derive(Debug, Clone)]
pub(crate) struct NewCookie {
    pub(crate) header: String,
}

/// The hash key of a request under consistent hashing, and a cookie to set
/// when the request had none and the policy gives it a lifetime.
pub(crate) fn request_key(
    parts: &Parts,
    ch: &ConsistentHash,
    random: &dyn RandomSource,
) -> (Option<u64>, Option<NewCookie>) {
    if let Some(name) = &ch.http_header_name {
        return (
            parts
                .headers
                .get(name.as_str())
                .map(|v| hash_key(v.as_bytes())),
            None,
        );
    }
    if let Some(c) = &ch.http_cookie {
        if let Some(v) = cookie(parts, &c.name) {
            return (Some(hash_key(v.as_bytes())), None);
        }
        let Some(ttl) = c.ttl else {
            return (None, None);
        };
        let value = format!("{:016x}", random.next_u64());
        let path = c.path.as_deref().unwrap_or("/");
        let header = format!(
            "{}={value}; Path={path}; Max-Age={}; HttpOnly",
            c.name,
            ttl.0.as_secs()
        );
        return (Some(hash_key(value.as_bytes())), Some(NewCookie { header }));
    }
    if ch.use_source_ip == Some(true) {
        let ip = parts
            .extensions
            .get::<ClientAddr>()
            .map(|a| a.0.ip().to_string());
        return (ip.map(|ip| hash_key(ip.as_bytes())), None);
    }
    if let Some(q) = &ch.http_query_parameter_name {
        let v = parts.uri.query().and_then(|query| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == q).then_some(v)
            })
        });
        return (v.map(|v| hash_key(v.as_bytes())), None);
    }
    (None, None)
}

fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|line| {
            line.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then_some(v)
            })
        })
}

/// Chooses among weighted destinations: sticky by `key` when there is one,
/// random by weight otherwise. Destinations whose endpoints are all down are
/// skipped while another can serve (failover), so a dead canary does not
/// take its share of users down with it.
pub(crate) fn destination<'d>(
    dests: &'d [WeightedDestination],
    available: impl Fn(&WeightedDestination) -> bool,
    key: Option<u64>,
    random: &dyn RandomSource,
) -> Option<&'d WeightedDestination> {
    if let [only] = dests {
        // The only one is chosen whether or not it can serve (as below,
        // where failover needs another): skip resolving its endpoints.
        if key.is_none() {
            // The draw the weighted choice below makes, kept so that seeded
            // sequences do not shift.
            random.next_u64();
        }
        return (only.weight > 0).then_some(only);
    }
    let up: Vec<bool> = dests.iter().map(&available).collect();
    let any_up = dests.iter().zip(&up).any(|(d, u)| *u && d.weight > 0);
    let weight = |i: usize| if !any_up || up[i] { dests[i].weight } else { 0 };
    let i = match key {
        Some(k) => {
            // Only sticky choices need the names: no allocation otherwise.
            let names: Vec<String> = dests
                .iter()
                .map(|d| format!("{}/{}", d.host, d.subset.as_deref().unwrap_or("")))
                .collect();
            sticky_pick(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.as_str(), weight(i))),
                k,
            )?
        }
        None => {
            let weights: Vec<u32> = (0..dests.len()).map(weight).collect();
            mesh_core::route::pick_weighted(&weights, random.next_u64())?
        }
    };
    dests.get(i)
}

/// Which endpoints an endpoint is chosen among: round robin keeps one
/// counter per set.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EndpointSet<'a> {
    /// A destination of HTTP traffic.
    Http {
        host: &'a str,
        subset: Option<&'a str>,
    },
    /// A destination of opaque TCP.
    Tcp {
        host: &'a str,
        subset: Option<&'a str>,
    },
    /// Mirrored copies to a host.
    Mirror { host: &'a str },
}

impl EndpointSet<'_> {
    /// The round-robin counter's name; formatted only for round robin.
    fn key(&self) -> String {
        match self {
            Self::Http { host, subset } => format!("{host}/{}", subset.unwrap_or("")),
            Self::Tcp { host, subset } => format!("tcp:{host}/{}", subset.unwrap_or("")),
            Self::Mirror { host } => format!("mirror:{host}"),
        }
    }
}

/// Chooses an endpoint by the policy's algorithm among those not ejected
/// (and not `avoid`, the one that just failed, when there is another).
pub(crate) fn endpoint(
    eps: &[Endpoint],
    lb: Option<&LoadBalancerSettings>,
    key: Option<u64>,
    state: &TrafficState,
    set: EndpointSet<'_>,
    avoid: Option<&str>,
    random: &dyn RandomSource,
) -> Option<Endpoint> {
    let now = Instant::now();
    let up: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| state.endpoint(&e.key).is_available(now))
        .collect();
    let mut pool: Vec<&Endpoint> = up
        .iter()
        .copied()
        .filter(|e| Some(e.key.as_str()) != avoid)
        .collect();
    if pool.is_empty() {
        pool = up;
    }
    if pool.is_empty() {
        return None;
    }
    let simple = lb.and_then(|l| l.simple);
    let hashed = lb.and_then(|l| l.consistent_hash.as_ref()).and(key);
    let i = if let Some(k) = hashed {
        sticky_pick(pool.iter().map(|e| (e.key.as_str(), 1)), k)?
    } else {
        match simple {
            Some(SimpleLb::RoundRobin) => state.next_rr(&set.key()) % pool.len(),
            Some(SimpleLb::Random) => (random.next_u64() % pool.len() as u64) as usize,
            // LEAST_REQUEST is Istio's default: power of two choices.
            _ => {
                let n = pool.len() as u64;
                let a = (random.next_u64() % n) as usize;
                let b = (random.next_u64() % n) as usize;
                if n == 1 {
                    // One choice: no loads to compare (the draws above
                    // still happen, so seeded sequences stay the same).
                    0
                } else {
                    let loads: Vec<usize> = pool
                        .iter()
                        .map(|e| state.endpoint(&e.key).in_flight())
                        .collect();
                    p2c(&loads, a, b)
                }
            }
        }
    };
    pool.get(i).map(|e| (*e).clone())
}

/// The service port a destination means: its own, else the port the
/// request came on when the service has it, else the service's only port
/// (a gateway on 8443 routing to a service on 80).
pub(crate) fn dest_port(snap: &Snapshot, d: &WeightedDestination, request_port: u16) -> u16 {
    if let Some(p) = d.port {
        return p;
    }
    match snap.services.get(&d.host) {
        Some(s) if s.port(request_port).is_none() && s.ports.len() == 1 => s.ports[0].number,
        _ => request_port,
    }
}

/// A destination resolved against one snapshot: its service, the service
/// port it means, and the endpoints of its subset.
pub(crate) struct Resolved<'s> {
    pub(crate) svc: &'s Service,
    pub(crate) port: &'s ServicePortEntry,
    pub(crate) endpoints: Vec<Endpoint>,
}

/// Resolves a destination, or says why it cannot be reached.
pub(crate) fn resolve<'s>(
    snap: &'s Snapshot,
    d: &WeightedDestination,
    request_port: u16,
) -> Result<Resolved<'s>, crate::error::MeshError> {
    use crate::error::MeshError;
    let number = dest_port(snap, d, request_port);
    let svc = snap
        .services
        .get(&d.host)
        .ok_or_else(|| MeshError::UnknownHost {
            host: d.host.clone(),
        })?;
    let port = svc.port(number).ok_or_else(|| MeshError::UnknownPort {
        host: d.host.clone(),
        port: number,
    })?;
    let subset = d.subset.as_deref();
    let endpoints = endpoints(snap, svc, port, subset).ok_or_else(|| MeshError::NoSubset {
        host: d.host.clone(),
        subset: subset.unwrap_or_default().to_owned(),
    })?;
    Ok(Resolved {
        svc,
        port,
        endpoints,
    })
}

/// Can the destination serve now: does it resolve, with an endpoint that is
/// not ejected?
pub(crate) fn has_available(
    snap: &Snapshot,
    d: &WeightedDestination,
    request_port: u16,
    state: &TrafficState,
    now: Instant,
) -> bool {
    resolve(snap, d, request_port).is_ok_and(|r| {
        r.endpoints
            .iter()
            .any(|e| state.endpoint(&e.key).is_available(now))
    })
}
