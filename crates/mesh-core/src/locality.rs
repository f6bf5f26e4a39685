//! Locality-aware load balancing and networks, as Istio configures Envoy
//! for them, as plain functions: which priority each endpoint gets, the
//! share of traffic each priority gets as endpoints fail (Envoy's priority
//! load), and `distribute`'s weights per locality.
//!
//! Istio's sources: `pilot/pkg/networking/core/loadbalancer/loadbalancer.go`
//! (`ApplyLocalityLoadBalancer`, `applyLocalityFailover`,
//! `applyLocalityWeights`, `applyFailoverPriorities`), `pkg/util/...`
//! (`LbPriority`, `LocalityMatch`); Envoy's
//! `source/common/upstream/load_balancer_impl.cc` (`distributeLoad`,
//! `recalculatePerPriorityState`) and its "Priority levels" and
//! "Locality weighted load balancing" documents.

use crate::plan::Endpoint;
use crate::resources::common::Labels;
use crate::resources::networking::{LoadBalancerSettings, LocalityLbSetting};
use crate::snapshot::Snapshot;

/// Envoy's default overprovisioning factor, in percent (1.4).
pub const OVERPROVISIONING: u64 = 140;

/// `region/zone/subzone`; missing parts are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Locality {
    /// The region.
    pub region: String,
    /// The zone within it.
    pub zone: String,
    /// The subzone within the zone.
    pub subzone: String,
}

impl Locality {
    /// Reads `region/zone/subzone` as Istio's `SplitLocalityLabel` does
    /// (at most three parts, the rest of the string in the last).
    ///
    /// ```
    /// use mesh_core::locality::Locality;
    /// let l = Locality::parse("us-east1/b");
    /// assert_eq!((l.region.as_str(), l.zone.as_str(), l.subzone.as_str()), ("us-east1", "b", ""));
    /// ```
    pub fn parse(s: &str) -> Self {
        let mut parts = s.splitn(3, '/');
        let mut next = || parts.next().unwrap_or("").to_owned();
        Self {
            region: next(),
            zone: next(),
            subzone: next(),
        }
    }

    /// No part set.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// Does `rule` (`region/zone/subzone`, a part `*` or left out matches
    /// any) match this locality? Istio's `LocalityMatch`: the region must
    /// be given (or `*`).
    pub fn matches(&self, rule: &str) -> bool {
        let r = Self::parse(rule);
        let part = |rule: &str, mine: &str, optional: bool| {
            rule == "*" || (optional && rule.is_empty()) || rule == mine
        };
        part(&r.region, &self.region, false)
            && part(&r.zone, &self.zone, true)
            && part(&r.subzone, &self.subzone, true)
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// How much of its locality an endpoint shares with the proxy: 0 all of
/// it, 1 region and zone, 2 the region, 3 none (Istio's `LbPriority`).
pub fn lb_priority(proxy: &Locality, endpoint: &Locality) -> u32 {
    if proxy.region != endpoint.region {
        3
    } else if proxy.zone != endpoint.zone {
        2
    } else if proxy.subzone != endpoint.subzone {
        1
    } else {
        0
    }
}

/// Envoy's priority load: the percent of traffic each priority gets, from
/// each priority's `(healthy, total)` endpoint weights. A priority's
/// health is `min(100, 1.4 × healthy% )` (integer); the loads follow the
/// health in order, scaled up when the total health is under 100; what
/// integer rounding leaves goes to the first priority with health. With no
/// health anywhere all traffic goes to priority 0 (which then has nothing
/// to serve it).
///
/// ```
/// use mesh_core::locality::priority_load;
/// // Envoy's documented example: P0 half healthy → 70% / 30%.
/// assert_eq!(priority_load(&[(50, 100), (100, 100)]), vec![70, 30]);
/// ```
pub fn priority_load(levels: &[(u64, u64)]) -> Vec<u32> {
    let health: Vec<u64> = levels
        .iter()
        .map(|&(healthy, total)| {
            (OVERPROVISIONING * healthy)
                .checked_div(total)
                .map_or(0, |h| h.min(100))
        })
        .collect();
    let mut load = vec![0u32; levels.len()];
    let normalized = health.iter().sum::<u64>().min(100);
    if normalized == 0 {
        if let Some(first) = load.first_mut() {
            *first = 100;
        }
        return load;
    }
    // `distributeLoad`: each priority in turn takes its health scaled to
    // the total, while load is left.
    let mut left: u64 = 100;
    let mut first_healthy = None;
    for (i, h) in health.iter().enumerate() {
        if first_healthy.is_none() && *h > 0 {
            first_healthy = Some(i);
        }
        let take = (h * 100 / normalized).min(left);
        load[i] = take as u32;
        left -= take;
    }
    if let Some(i) = first_healthy {
        load[i] += left as u32;
    }
    load
}

/// The locality plan of one destination, for one proxy: per endpoint, its
/// priority (0 best; `None`: left out, as `distribute` leaves out the
/// localities it does not name) and its locality's weight when
/// `distribute` set weights (Envoy's locality weighted load balancing).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityPlan {
    /// Per endpoint, in the order given.
    pub priority: Vec<Option<u32>>,
    /// Per endpoint, its locality's weight under `distribute`.
    pub weight: Option<Vec<u32>>,
    /// Per endpoint, its locality (groups for the weights).
    pub group: Vec<usize>,
}

/// What an endpoint brings to the plan.
#[derive(Debug, Clone, Copy)]
pub struct EndpointFacts<'a> {
    /// Its locality.
    pub locality: &'a Locality,
    /// Its labels, for `failoverPriority`.
    pub labels: &'a Labels,
    /// Its own weight.
    pub weight: u32,
}

/// The proxy the plan is for.
#[derive(Debug, Clone, Copy)]
pub struct ProxyFacts<'a> {
    /// Its locality.
    pub locality: &'a Locality,
    /// Its labels, for `failoverPriority`.
    pub labels: &'a Labels,
}

/// Istio's `ApplyLocalityLoadBalancer` for a destination: `setting` is
/// the DestinationRule's (unset: Istio's mesh default, enabled),
/// `outlier` whether the destination has outlier detection. `None` when
/// the plan leaves every endpoint in one priority, unweighted: Istio does
/// locality failover only with outlier detection ("otherwise Envoy will
/// never drop down to a lower priority"), and not with `enabled: false`.
pub fn plan(
    setting: Option<&LocalityLbSetting>,
    outlier: bool,
    proxy: ProxyFacts<'_>,
    endpoints: &[EndpointFacts<'_>],
) -> Option<LocalityPlan> {
    let default = LocalityLbSetting::default();
    let s = setting.unwrap_or(&default);
    if s.enabled == Some(false) || endpoints.is_empty() {
        return None;
    }
    // Localities in order of first appearance: Istio's LocalityLbEndpoints.
    let mut localities: Vec<&Locality> = Vec::new();
    let group: Vec<usize> = endpoints
        .iter()
        .map(|e| {
            localities
                .iter()
                .position(|l| *l == e.locality)
                .unwrap_or_else(|| {
                    localities.push(e.locality);
                    localities.len() - 1
                })
        })
        .collect();
    if !s.distribute.is_empty() {
        return distribute(s, proxy, endpoints, &localities, group);
    }
    if !outlier {
        return None;
    }
    // failoverPriority first (each label the proxy and the endpoint agree
    // on, in order, raises the endpoint), then the locality's priorities
    // within each: Istio multiplies the first by 5, adds the second, and
    // renumbers without gaps.
    let raw: Vec<u32> = endpoints
        .iter()
        .map(|e| {
            let by_labels = if s.failover_priority.is_empty() {
                0
            } else {
                failover_priority(&s.failover_priority, proxy.labels, e.labels)
            };
            let by_locality = if s.failover_priority.is_empty() || !s.failover.is_empty() {
                locality_priority(s, proxy.locality, e.locality)
            } else {
                0
            };
            by_labels * 5 + by_locality
        })
        .collect();
    let mut levels: Vec<u32> = raw.clone();
    levels.sort_unstable();
    levels.dedup();
    let priority = raw
        .iter()
        .map(|p| levels.iter().position(|l| l == p).map(|i| i as u32))
        .collect();
    Some(LocalityPlan {
        priority,
        weight: None,
        group,
    })
}

/// `applyLocalityFailover`'s priority of one endpoint: [`lb_priority`],
/// and 4 instead of 3 for a region other than the one a `failover` entry
/// for the proxy's region names.
fn locality_priority(s: &LocalityLbSetting, proxy: &Locality, ep: &Locality) -> u32 {
    let p = lb_priority(proxy, ep);
    if p == 3 {
        if let Some(f) = s.failover.iter().find(|f| f.from == proxy.region) {
            if ep.region != f.to {
                return 4;
            }
        }
    }
    p
}

/// `applyFailoverPriorities`: the number of labels, from the first, on
/// which the endpoint agrees with the proxy, counted down from the whole
/// list (0: all agree). A `key=value` entry asks for that value instead
/// of the proxy's.
fn failover_priority(keys: &[String], proxy: &Labels, ep: &Labels) -> u32 {
    let n = keys.len() as u32;
    for (i, k) in keys.iter().enumerate() {
        let (key, want) = match k.split_once('=') {
            Some((key, v)) => (key, Some(v)),
            None => (k.as_str(), proxy.get(k).map(String::as_str)),
        };
        let agrees = want.is_some() && ep.get(key).map(String::as_str) == want;
        if !agrees {
            return n - i as u32;
        }
    }
    0
}

/// `applyLocalityWeights`: the first `distribute` entry whose `from`
/// matches the proxy gives each destination locality its share; an
/// endpoint's locality weight is `ceil(its weight × share / the weight of
/// all endpoints the destination matches)`; localities it names none of
/// are left out. Istio walks `to` in Go's map order (random), each
/// endpoint taken by the first destination matching it; here the order
/// is the names' (deterministic), so write non-overlapping destinations.
fn distribute(
    s: &LocalityLbSetting,
    proxy: ProxyFacts<'_>,
    endpoints: &[EndpointFacts<'_>],
    localities: &[&Locality],
    group: Vec<usize>,
) -> Option<LocalityPlan> {
    let rule = s
        .distribute
        .iter()
        .find(|d| proxy.locality.matches(&d.from))?;
    // Per locality: its weight (the sum of its endpoints'), and the
    // weight Istio gives it.
    let mut own = vec![0u64; localities.len()];
    for (e, g) in endpoints.iter().zip(&group) {
        own[*g] += u64::from(e.weight.max(1));
    }
    let mut claimed: Vec<Option<u32>> = vec![None; localities.len()];
    for (dest, share) in &rule.to {
        let members: Vec<usize> = (0..localities.len())
            .filter(|l| claimed[*l].is_none() && localities[*l].matches(dest))
            .collect();
        let total: u64 = members.iter().map(|l| own[*l]).sum();
        for l in members {
            let w = (own[l] * u64::from(*share)).div_ceil(total.max(1));
            claimed[l] = Some(w.max(1).min(u64::from(u32::MAX)) as u32);
        }
    }
    let priority = group.iter().map(|g| claimed[*g].map(|_| 0)).collect();
    let weight = group.iter().map(|g| claimed[*g].unwrap_or(0)).collect();
    Some(LocalityPlan {
        priority,
        weight: Some(weight),
        group,
    })
}

/// Where a proxy is, as locality-aware load balancing and networks read
/// it: its locality (Istio's agent: `--locality`... the pod's, or its
/// WorkloadEntry's), its network (`ISTIO_META_NETWORK`) and its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Whereabouts {
    /// Its locality.
    pub locality: Locality,
    /// Its network; `None` is every network's.
    pub network: Option<String>,
    /// Its labels, for `failoverPriority`.
    pub labels: Labels,
}

/// Are two networks the same? Istio's `IsSameOrEmpty`: an unset network
/// is the same as any.
pub fn same_network(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// A destination's endpoints as one proxy sees them: those on its network
/// (Istio reaches another network only through that network's east-west
/// gateway, and leaves an endpoint out when it knows none; this mesh has
/// none), less those `distribute` leaves out, with their locality plan.
///
/// The list is the snapshot's shared one ([`crate::plan::endpoints_shared`])
/// and stays that very list, not a copy, when nothing is left out.
pub fn localize(
    snap: &Snapshot,
    endpoints: std::sync::Arc<[Endpoint]>,
    lb: Option<&LoadBalancerSettings>,
    outlier: bool,
    me: &Whereabouts,
) -> (std::sync::Arc<[Endpoint]>, Option<LocalityPlan>) {
    let mut eps = endpoints;
    let here = |e: &Endpoint| {
        same_network(
            me.network.as_deref(),
            snap.workloads[e.workload].network.as_deref(),
        )
    };
    if me.network.is_some() && !eps.iter().all(here) {
        eps = eps.iter().filter(|e| here(e)).cloned().collect();
    }
    let setting = lb.and_then(|l| l.locality_lb_setting.as_ref());
    // No plan without outlier detection unless `distribute` asks for one
    // (`plan` decides): skip gathering the facts when neither can apply.
    if !outlier && setting.is_none() {
        return (eps, None);
    }
    let facts: Vec<EndpointFacts<'_>> = eps
        .iter()
        .map(|e| {
            let w = &snap.workloads[e.workload];
            EndpointFacts {
                locality: &w.locality,
                labels: &w.labels,
                weight: w.weight,
            }
        })
        .collect();
    let proxy = ProxyFacts {
        locality: &me.locality,
        labels: &me.labels,
    };
    let Some(mut p) = plan(setting, outlier, proxy, &facts) else {
        return (eps, None);
    };
    drop(facts);
    if p.priority.iter().any(Option::is_none) {
        let keep: Vec<bool> = p.priority.iter().map(Option::is_some).collect();
        eps = keep_only(eps.to_vec(), &keep).into();
        p.priority = keep_only(p.priority, &keep);
        p.group = keep_only(p.group, &keep);
        p.weight = p.weight.map(|w| keep_only(w, &keep));
    }
    (eps, Some(p))
}

/// The items of `v` whose flag in `keep` is set.
fn keep_only<T>(v: Vec<T>, keep: &[bool]) -> Vec<T> {
    v.into_iter()
        .zip(keep)
        .filter_map(|(x, k)| k.then_some(x))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::networking::{LocalityDistribute, LocalityFailover};

    #[test]
    fn priority_load_follows_envoys_documented_examples() {
        // Envoy "Priority levels": two levels, P=1 100% healthy.
        for (p0, want) in [
            (100, [100, 0]),
            (72, [100, 0]),
            (71, [99, 1]),
            (50, [70, 30]),
            (25, [35, 65]),
            (0, [0, 100]),
        ] {
            assert_eq!(priority_load(&[(p0, 100), (100, 100)]), want, "P0 {p0}%");
        }
        // Three levels.
        assert_eq!(
            priority_load(&[(25, 100), (25, 100), (100, 100)]),
            vec![35, 35, 30]
        );
        // Degraded: total health under 100, scaled (25% and 25%: 35 and 35
        // of 70, half each).
        assert_eq!(priority_load(&[(25, 100), (25, 100)]), vec![50, 50]);
        // Nothing healthy: everything to P=0.
        assert_eq!(priority_load(&[(0, 3), (0, 2)]), vec![100, 0]);
        // Integer health of a small set: 1 of 2 healthy is 70.
        assert_eq!(priority_load(&[(1, 2), (3, 3)]), vec![70, 30]);
    }

    fn loc(s: &str) -> Locality {
        Locality::parse(s)
    }

    #[test]
    fn lb_priority_and_matching_are_istios() {
        let me = loc("r1/z1/s1");
        assert_eq!(lb_priority(&me, &loc("r1/z1/s1")), 0);
        assert_eq!(lb_priority(&me, &loc("r1/z1/s2")), 1);
        assert_eq!(lb_priority(&me, &loc("r1/z2/s1")), 2);
        assert_eq!(lb_priority(&me, &loc("r2/z1/s1")), 3);
        assert!(me.matches("r1/*"));
        assert!(me.matches("r1"));
        assert!(me.matches("*"));
        assert!(me.matches("r1/z1/*"));
        assert!(!me.matches("r1/z2/*"));
        assert!(!me.matches("r2/*"));
    }

    fn facts<'a>(ls: &'a [Locality], labels: &'a [Labels]) -> Vec<EndpointFacts<'a>> {
        ls.iter()
            .zip(labels)
            .map(|(l, lab)| EndpointFacts {
                locality: l,
                labels: lab,
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn failover_priorities_need_outlier_detection_and_are_renumbered() {
        let ls = [
            loc("r1/z1/s1"),
            loc("r2/z1/s1"),
            loc("r1/z2/s1"),
            loc("r3/z"),
        ];
        let labels = vec![Labels::new(); 4];
        let eps = facts(&ls, &labels);
        let me = loc("r1/z1/s1");
        let proxy = ProxyFacts {
            locality: &me,
            labels: &Labels::new(),
        };
        assert_eq!(plan(None, false, proxy, &eps), None);
        let off = LocalityLbSetting {
            enabled: Some(false),
            ..LocalityLbSetting::default()
        };
        assert_eq!(plan(Some(&off), true, proxy, &eps), None);
        let p = plan(None, true, proxy, &eps).unwrap();
        // 0, 3, 2, 3 renumbered without the gap: 0, 2, 1, 2.
        assert_eq!(p.priority, vec![Some(0), Some(2), Some(1), Some(2)]);
        // failover r1 → r3: r3 before r2.
        let f = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: "r1".into(),
                to: "r3".into(),
            }],
            ..LocalityLbSetting::default()
        };
        let p = plan(Some(&f), true, proxy, &eps).unwrap();
        assert_eq!(p.priority, vec![Some(0), Some(3), Some(1), Some(2)]);
    }

    #[test]
    fn failover_priority_orders_by_agreeing_labels() {
        let l = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let labels = [
            l(&[("net", "a"), ("cl", "x")]),
            l(&[("net", "a"), ("cl", "y")]),
            l(&[("net", "b"), ("cl", "x")]),
        ];
        let ls = vec![Locality::default(); 3];
        let eps = facts(&ls, &labels);
        let me = Locality::default();
        let mine = l(&[("net", "a"), ("cl", "x")]);
        let proxy = ProxyFacts {
            locality: &me,
            labels: &mine,
        };
        let s = LocalityLbSetting {
            failover_priority: vec!["net".into(), "cl".into()],
            ..LocalityLbSetting::default()
        };
        let p = plan(Some(&s), true, proxy, &eps).unwrap();
        assert_eq!(p.priority, vec![Some(0), Some(1), Some(2)]);
        // `key=value`: the value named, not the proxy's.
        let s = LocalityLbSetting {
            failover_priority: vec!["net=b".into()],
            ..LocalityLbSetting::default()
        };
        let p = plan(Some(&s), true, proxy, &eps).unwrap();
        assert_eq!(p.priority, vec![Some(1), Some(1), Some(0)]);
    }

    #[test]
    fn distribute_weights_localities_and_leaves_out_the_unnamed() {
        let ls = [loc("r1/z1"), loc("r1/z1"), loc("r1/z2"), loc("r2/z1")];
        let labels = vec![Labels::new(); 4];
        let eps = facts(&ls, &labels);
        let me = loc("r1/z1/s9");
        let proxy = ProxyFacts {
            locality: &me,
            labels: &Labels::new(),
        };
        let s = LocalityLbSetting {
            distribute: vec![
                LocalityDistribute {
                    from: "r9/*".into(),
                    to: [("r2/*".to_owned(), 100)].into(),
                },
                LocalityDistribute {
                    from: "r1/z1/*".into(),
                    to: [("r1/z1/*".to_owned(), 80), ("r1/z2/*".to_owned(), 20)].into(),
                },
            ],
            ..LocalityLbSetting::default()
        };
        // Without outlier detection too: distribute does not need it.
        let p = plan(Some(&s), false, proxy, &eps).unwrap();
        assert_eq!(p.priority, vec![Some(0), Some(0), Some(0), None]);
        assert_eq!(p.weight, Some(vec![80, 80, 20, 0]));
        assert_eq!(p.group, vec![0, 0, 1, 2]);
        // A proxy no entry matches: no plan.
        let other = loc("r5/z");
        let proxy = ProxyFacts {
            locality: &other,
            labels: &Labels::new(),
        };
        assert_eq!(plan(Some(&s), false, proxy, &eps), None);
    }
}
