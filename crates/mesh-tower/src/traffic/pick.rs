//! What the routing plan ([`mesh_core::plan`]) leaves to the data plane,
//! because it depends on the request's bytes or on live state: the sticky
//! key of a request, whether a destination can serve now, and the endpoint
//! chosen by the load-balancing algorithm among those not ejected.

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use mesh_core::balance::{hash_key, p2c, sticky_pick};
use mesh_core::locality::{LocalityPlan, Whereabouts, localize, priority_load};
pub(crate) use mesh_core::plan::Endpoint;
use mesh_core::resources::networking::{ConsistentHash, LoadBalancerSettings, SimpleLb};
use mesh_core::route::WeightedDestination;
use mesh_core::snapshot::Snapshot;

use super::ClientAddr;
use super::state::{RandomSource, TrafficState};

/// The consistent-hash settings of a host (port-level first), if any.
pub(crate) fn consistent_hash(snap: &Snapshot, host: &str, port: u16) -> Option<ConsistentHash> {
    // The policy is the service's: a host under a wildcard entry has it.
    let host = snap.service_for(host).map_or(host, |s| s.host.as_str());
    mesh_core::plan::effective_policy(snap, host, port, None)
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

/// How a destination's endpoints share its traffic beyond the algorithm:
/// their weights (WorkloadEntry `weight`) and, for the proxy asking, the
/// locality plan ([`mesh_core::locality`]). Parallel to the endpoints.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spread {
    /// Per endpoint, its weight; `None` when all are 1.
    pub(crate) weights: Option<Vec<u32>>,
    /// The priorities and locality weights, when locality load balancing
    /// applies.
    pub(crate) locality: Option<LocalityPlan>,
}

impl Spread {
    /// The endpoints `me` may dial (its network's: [`localize`]) and how
    /// they share traffic.
    pub(crate) fn of(
        snap: &Snapshot,
        eps: Arc<[Endpoint]>,
        lb: Option<&LoadBalancerSettings>,
        outlier: bool,
        me: &Whereabouts,
    ) -> (Arc<[Endpoint]>, Self) {
        let (eps, locality) = localize(snap, eps, lb, outlier, me);
        // Weights only when one differs from 1: no vector per request
        // otherwise.
        let weights = eps
            .iter()
            .any(|e| snap.workloads[e.workload].weight != 1)
            .then(|| {
                eps.iter()
                    .map(|e| snap.workloads[e.workload].weight)
                    .collect()
            });
        (eps, Self { weights, locality })
    }
}

/// Chooses an endpoint by the policy's algorithm among those not ejected
/// (and not `avoid`, the one that just failed, when there is another).
///
/// With a locality plan, first a priority, by Envoy's priority load over
/// the share of each priority's endpoints that are not ejected (ejected
/// ones count as unhealthy, so traffic fails over), then, under
/// `distribute`, a locality by its weight scaled by its own health
/// (Envoy's locality weighted load balancing), then the endpoint.
#[allow(clippy::too_many_arguments)]
pub(crate) fn endpoint(
    eps: &[Endpoint],
    spread: &Spread,
    lb: Option<&LoadBalancerSettings>,
    key: Option<u64>,
    state: &TrafficState,
    set: EndpointSet<'_>,
    avoid: Option<&str>,
    random: &dyn RandomSource,
) -> Option<Endpoint> {
    let now = Instant::now();
    let available: Vec<bool> = eps
        .iter()
        .map(|e| state.endpoint(&e.key).is_available(now))
        .collect();
    let up: Vec<usize> = (0..eps.len()).filter(|i| available[*i]).collect();
    // Without the endpoint to avoid among them (the first attempt, or a
    // retry whose endpoint is ejected) the pool is `up` itself.
    let mut pool = match avoid {
        Some(a) if up.iter().any(|i| eps[*i].key == a) => {
            let others: Vec<usize> = up.iter().copied().filter(|i| eps[*i].key != a).collect();
            if others.is_empty() { up } else { others }
        }
        _ => up,
    };
    if pool.is_empty() {
        return None;
    }
    if let Some(lp) = &spread.locality {
        pool = by_locality(lp, spread.weights.as_deref(), &available, pool, random);
    }
    let weight = |i: usize| spread.weights.as_ref().map_or(1, |w| w[i]);
    let simple = lb.and_then(|l| l.simple);
    let hashed = lb.and_then(|l| l.consistent_hash.as_ref()).and(key);
    if let Some(k) = hashed {
        let i = sticky_pick(pool.iter().map(|i| (eps[*i].key.as_str(), weight(*i))), k)?;
        return pool.get(i).map(|i| eps[*i].clone());
    }
    // Slow start: each endpoint's share of its weight, when one of them
    // joined the set less than the window ago (the set's first members
    // never warm up, as in Envoy); and each endpoint's own weight, as a
    // share of the largest.
    let warming = lb.and_then(LoadBalancerSettings::slow_start).map(|slow| {
        let first = state.set_first_seen(&set.key());
        pool.iter()
            .map(|i| {
                let joined = state.endpoint(&eps[*i].key).joined();
                if joined <= first {
                    1.0
                } else {
                    slow.factor(now.saturating_duration_since(joined))
                }
            })
            .collect::<Vec<f64>>()
    });
    let heaviest = pool.iter().map(|i| weight(*i)).max().unwrap_or(1).max(1);
    let factors: Vec<f64> = pool
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let warm = warming.as_ref().map_or(1.0, |w| w[n]);
            warm * f64::from(weight(*i)) / f64::from(heaviest)
        })
        .collect();
    let shares = factors.iter().any(|f| *f < 1.0);
    let one = || match simple {
        Some(SimpleLb::RoundRobin) => state.next_rr(&set.key()) % pool.len(),
        Some(SimpleLb::Random) => (random.next_u64() % pool.len() as u64) as usize,
        // LEAST_REQUEST is Istio's default: power of two choices.
        _ => {
            let n = pool.len() as u64;
            let a = (random.next_u64() % n) as usize;
            let b = (random.next_u64() % n) as usize;
            if n == 1 {
                // One choice: no loads to compare (the draws above still
                // happen, so seeded sequences stay the same).
                0
            } else {
                let loads: Vec<usize> = pool
                    .iter()
                    .map(|i| state.endpoint(&eps[*i].key).in_flight())
                    .collect();
                p2c(&loads, a, b)
            }
        }
    };
    // An endpoint with less than the whole share (warming, or lighter
    // than the heaviest) is accepted with its share as probability, and
    // the algorithm draws again otherwise (a bounded number of times):
    // over round robin's and random's uniform draws this picks each
    // endpoint in proportion to its share; least request still prefers
    // the less loaded of its two candidates, a lighter one only as often
    // as its share.
    let mut n = one();
    if shares {
        for _ in 0..16 {
            if factors[n] >= 1.0 || random.next_f64() < factors[n] {
                break;
            }
            n = one();
        }
    }
    pool.get(n).map(|i| eps[*i].clone())
}

/// The part of `pool` (indexes of endpoints that may be picked) that the
/// locality plan sends this request to.
fn by_locality(
    lp: &LocalityPlan,
    weights: Option<&[u32]>,
    available: &[bool],
    pool: Vec<usize>,
    random: &dyn RandomSource,
) -> Vec<usize> {
    let weight = |i: usize| u64::from(weights.map_or(1, |w| w[i]));
    let levels = lp
        .priority
        .iter()
        .flatten()
        .max()
        .map_or(0, |m| *m as usize + 1);
    let mut health = vec![(0u64, 0u64); levels];
    for (i, p) in lp.priority.iter().enumerate() {
        if let Some(p) = p {
            let h = &mut health[*p as usize];
            h.1 += weight(i);
            if available[i] {
                h.0 += weight(i);
            }
        }
    }
    let load = priority_load(&health);
    let draw = random.next_u64() % 100;
    let mut acc = 0u64;
    let chosen = load
        .iter()
        .position(|l| {
            acc += u64::from(*l);
            draw < acc
        })
        .unwrap_or(0) as u32;
    let mut at: Vec<usize> = pool
        .iter()
        .copied()
        .filter(|i| lp.priority[*i] == Some(chosen))
        .collect();
    if at.is_empty() {
        // The priority drawn has nothing left to pick (all its endpoints
        // ejected, or the one to avoid): the best priority that has.
        let best = pool.iter().filter_map(|i| lp.priority[*i]).min();
        at = pool
            .iter()
            .copied()
            .filter(|i| lp.priority[*i] == best)
            .collect();
    }
    let Some(lw) = &lp.weight else {
        return at;
    };
    // Locality weighted: a locality's effective weight is its weight
    // scaled by its health (`min(1, 1.4 × healthy share)`).
    let mut groups: Vec<(usize, u64)> = Vec::new();
    for i in &at {
        let g = lp.group[*i];
        if groups.iter().all(|(x, _)| *x != g) {
            let (mut healthy, mut total) = (0u64, 0u64);
            for (j, gj) in lp.group.iter().enumerate() {
                if *gj == g {
                    total += weight(j);
                    if available[j] {
                        healthy += weight(j);
                    }
                }
            }
            let health = (mesh_core::locality::OVERPROVISIONING * healthy / total.max(1)).min(100);
            groups.push((g, u64::from(lw[*i]) * health));
        }
    }
    let sum: u64 = groups.iter().map(|(_, w)| *w).sum();
    if sum == 0 {
        return at;
    }
    let mut draw = random.next_u64() % sum;
    let g = groups
        .iter()
        .find(|(_, w)| {
            if draw < *w {
                true
            } else {
                draw -= w;
                false
            }
        })
        .map_or(groups[0].0, |(g, _)| *g);
    at.retain(|i| lp.group[*i] == g);
    at
}

/// Can the destination serve now: does it resolve, with an endpoint that is
/// not ejected?
pub(crate) fn has_available(
    snap: &Snapshot,
    d: &WeightedDestination,
    request_port: u16,
    state: &TrafficState,
    now: Instant,
    network: Option<&str>,
) -> bool {
    mesh_core::plan::destination_endpoints(snap, d, request_port).is_some_and(|eps| {
        eps.iter().any(|e| {
            mesh_core::locality::same_network(
                network,
                snap.workloads[e.workload].network.as_deref(),
            ) && state.endpoint(&e.key).is_available(now)
        })
    })
}

#[cfg(test)]
#[path = "pick_locality_tests.rs"]
mod locality_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use mesh_core::resources::networking::Warmup;

    use super::*;
    use crate::traffic::state::SeededRandom;

    fn eps(keys: &[&str]) -> Vec<Endpoint> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| Endpoint {
                key: (*k).to_owned(),
                workload: i,
                port: 80,
            })
            .collect()
    }

    fn lb(simple: Option<SimpleLb>, min: f64) -> LoadBalancerSettings {
        LoadBalancerSettings {
            simple,
            warmup: Some(Warmup {
                duration: Some(mesh_core::resources::common::Duration(Duration::from_secs(
                    300,
                ))),
                minimum_percent: Some(min),
                aggression: None,
            }),
            ..LoadBalancerSettings::default()
        }
    }

    const SET: EndpointSet<'static> = EndpointSet::Http {
        host: "ratings",
        subset: None,
    };

    /// Picks `n` times; how often each endpoint was chosen.
    fn shares(
        all: &[Endpoint],
        lb: &LoadBalancerSettings,
        state: &TrafficState,
        n: usize,
    ) -> Vec<usize> {
        let random = SeededRandom::new(7);
        let mut counts = vec![0; all.len()];
        for _ in 0..n {
            let e = endpoint(
                all,
                &Spread::default(),
                Some(lb),
                None,
                state,
                SET,
                None,
                &random,
            )
            .unwrap();
            counts[e.workload] += 1;
        }
        counts
    }

    #[test]
    fn an_endpoint_that_joins_starts_at_its_minimum_share_and_the_first_members_never_warm() {
        for simple in [
            Some(SimpleLb::RoundRobin),
            Some(SimpleLb::Random),
            Some(SimpleLb::LeastRequest),
            None,
        ] {
            let state = TrafficState::default();
            let lb = lb(simple, 10.0);
            // The set's first members: picked evenly from the start.
            let first = shares(&eps(&["a:80", "b:80"]), &lb, &state, 2_000);
            assert!(
                first.iter().all(|c| (800..=1_200).contains(c)),
                "{simple:?} {first:?}"
            );
            // c joins now: 10% of its weight, so about 0.1 / 2.1 of the
            // picks (4.8%), far from an even third.
            let all = eps(&["a:80", "b:80", "c:80"]);
            let n = 20_000;
            let got = shares(&all, &lb, &state, n);
            let c = got[2] as f64 / n as f64;
            assert!(
                (0.02..0.09).contains(&c),
                "{simple:?}: c got {c:.3} of {got:?}"
            );
        }
    }

    #[test]
    fn the_share_grows_with_the_time_since_joining_and_is_whole_after_the_window() {
        let lb = lb(Some(SimpleLb::RoundRobin), 10.0);
        let all = eps(&["a:80", "b:80", "c:80"]);
        let share_of_c = |age: Duration| {
            let state = TrafficState::default();
            shares(&all[..2], &lb, &state, 10);
            let joined = Instant::now().checked_sub(age).unwrap();
            // Joined after the set was first seen, `age` ago: the set is
            // dated back further still.
            state.endpoint_joined_at("c:80", joined);
            let first = joined.checked_sub(Duration::from_secs(1)).unwrap();
            for member in ["a:80", "b:80"] {
                state.endpoint_joined_at(member, first);
            }
            state.sets_seen_at(&SET.key(), first);
            let n = 20_000;
            shares(&all, &lb, &state, n)[2] as f64 / n as f64
        };
        // Half the window: weight 0.5, share 0.5 / 2.5 = 20%.
        let half = share_of_c(Duration::from_secs(150));
        assert!((0.16..0.24).contains(&half), "{half}");
        // Past the window: an even third.
        let whole = share_of_c(Duration::from_secs(400));
        assert!((0.30..0.37).contains(&whole), "{whole}");
        let early = share_of_c(Duration::from_secs(3));
        assert!(early < half, "{early} {half}");
    }

    #[test]
    fn without_warmup_a_joiner_gets_its_share_at_once() {
        let state = TrafficState::default();
        let plain = LoadBalancerSettings {
            simple: Some(SimpleLb::RoundRobin),
            ..LoadBalancerSettings::default()
        };
        shares(&eps(&["a:80", "b:80"]), &plain, &state, 10);
        let got = shares(&eps(&["a:80", "b:80", "c:80"]), &plain, &state, 3_000);
        assert!(got.iter().all(|c| (900..=1_100).contains(c)), "{got:?}");
    }
}
