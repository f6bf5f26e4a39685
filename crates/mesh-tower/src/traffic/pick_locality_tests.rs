//! Locality-aware picks ([`mesh_core::locality`]): traffic stays in the
//! proxy's locality, spills at Envoy's thresholds as endpoints are ejected,
//! fails over in priority order, `distribute` weights hold; endpoints of
//! other networks are never picked. Statistical, over a seeded random
//! source.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Instant;

use mesh_core::locality::{Locality, Whereabouts};
use mesh_core::outlier::{Outcome, OutlierPolicy};
use mesh_core::route::WeightedDestination;

use super::*;
use crate::traffic::state::SeededRandom;
use crate::traffic::test_store;

/// A service whose endpoints are `(address, locality, network)`, and a
/// DestinationRule with `policy` (its trafficPolicy body).
fn mesh(endpoints: &[(&str, &str, Option<&str>)], policy: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, l, n)| {
            let net = n.map(|n| format!(", network: {n}")).unwrap_or_default();
            format!("    - {{address: \"{a}\", locality: {l}{net}}}")
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: default}}\n\
         spec:\n  hosts: [svc.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  \
         ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints:\n{}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: default}}\n\
         spec:\n  host: svc.default.svc.cluster.local\n  trafficPolicy: {policy}\n",
        eps.join("\n")
    )
}

const OUTLIER: &str = "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 300s}}";

struct Fixture {
    store: std::sync::Arc<mesh_core::store::Store>,
    state: TrafficState,
}

impl Fixture {
    fn new(endpoints: &[(&str, &str, Option<&str>)], policy: &str) -> Self {
        Self {
            store: test_store(&mesh(endpoints, policy)),
            state: TrafficState::default(),
        }
    }

    /// Ejects the endpoint at `address` (port 80).
    fn eject(&self, address: &str) {
        let snap = self.store.load();
        let od =
            mesh_core::plan::effective_policy(&snap, "svc.default.svc.cluster.local", 80, None)
                .outlier_detection
                .unwrap();
        let policy = OutlierPolicy::from_config(&od).unwrap();
        let ejected = self.state.endpoint(&format!("{address}:80")).record(
            Outcome::ConnectFailure,
            Instant::now(),
            &policy,
            true,
        );
        assert!(ejected, "{address} ejected");
    }

    /// Picks `n` times for a proxy at `me`; picks per endpoint address.
    fn picks(&self, me: &Whereabouts, n: usize) -> BTreeMap<String, usize> {
        let snap = self.store.load();
        let d = WeightedDestination {
            host: "svc.default.svc.cluster.local".into(),
            subset: None,
            port: None,
            weight: 100,
            headers: None,
        };
        let r = mesh_core::plan::resolve_destination(&snap, &d, 80).unwrap();
        let outlier = r.policy.outlier_detection.is_some();
        let lb = r.policy.load_balancer.clone();
        let (eps, spread) = Spread::of(&snap, r.endpoints, lb.as_ref(), outlier, me);
        let random = SeededRandom::new(11);
        let set = EndpointSet::Http {
            host: "svc",
            subset: None,
        };
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let Some(e) = endpoint(
                &eps,
                &spread,
                lb.as_ref(),
                None,
                &self.state,
                set,
                None,
                &random,
            ) else {
                *out.entry("none".to_owned()).or_default() += 1;
                continue;
            };
            let addr = e.key.trim_end_matches(":80").to_owned();
            *out.entry(addr).or_default() += 1;
        }
        out
    }
}

fn at(locality: &str) -> Whereabouts {
    Whereabouts {
        locality: Locality::parse(locality),
        ..Whereabouts::default()
    }
}

/// The picks whose address starts with `prefix`.
fn share(picks: &BTreeMap<String, usize>, prefix: &str) -> usize {
    picks
        .iter()
        .filter(|(a, _)| a.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

/// Ten endpoints in the proxy's zone (10.0.0.x), ten in another zone of
/// its region (10.0.1.x), ten in another region (10.0.2.x).
fn three_tiers() -> Vec<(String, &'static str)> {
    let mut v = Vec::new();
    for (net, loc) in [
        ("10.0.0", "r1/z1/s1"),
        ("10.0.1", "r1/z2/s1"),
        ("10.0.2", "r2/z1/s1"),
    ] {
        for i in 1..=10 {
            v.push((format!("{net}.{i}"), loc));
        }
    }
    v
}

fn fixture(eps: &[(String, &'static str)], policy: &str) -> Fixture {
    let eps: Vec<(&str, &str, Option<&str>)> =
        eps.iter().map(|(a, l)| (a.as_str(), *l, None)).collect();
    Fixture::new(&eps, policy)
}

#[test]
fn with_outlier_detection_traffic_stays_in_the_proxys_locality() {
    let f = fixture(&three_tiers(), OUTLIER);
    let p = f.picks(&at("r1/z1/s1"), 2_000);
    assert_eq!(share(&p, "10.0.0."), 2_000, "{p:?}");
    // Another proxy, in the other zone: its own zone's.
    let p = f.picks(&at("r1/z2/s1"), 2_000);
    assert_eq!(share(&p, "10.0.1."), 2_000, "{p:?}");
}

#[test]
fn without_outlier_detection_there_is_no_locality_preference() {
    // Istio applies locality failover only with outlier detection.
    let f = fixture(&three_tiers(), "{loadBalancer: {simple: ROUND_ROBIN}}");
    let p = f.picks(&at("r1/z1/s1"), 3_000);
    for tier in ["10.0.0.", "10.0.1.", "10.0.2."] {
        assert_eq!(share(&p, tier), 1_000, "{tier} {p:?}");
    }
    // Nor with `enabled: false`.
    let off = "{loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: false}}, outlierDetection: {consecutive5xxErrors: 1}}";
    let f = fixture(&three_tiers(), off);
    let p = f.picks(&at("r1/z1/s1"), 3_000);
    assert_eq!(share(&p, "10.0.0."), 1_000, "{p:?}");
}

#[test]
fn traffic_spills_to_the_next_priority_at_envoys_thresholds() {
    let me = at("r1/z1/s1");
    let n = 20_000;
    // 8 of 10 healthy: 8 × 1.4 > 10, still all local.
    let f = fixture(&three_tiers(), OUTLIER);
    for i in 1..=2 {
        f.eject(&format!("10.0.0.{i}"));
    }
    let p = f.picks(&me, n);
    assert_eq!(share(&p, "10.0.0."), n, "{p:?}");
    // 7 of 10: health 98, 2% spills to the zone next door, none further.
    f.eject("10.0.0.3");
    let p = f.picks(&me, n);
    let spill = share(&p, "10.0.1.") as f64 / n as f64;
    assert!((0.01..0.03).contains(&spill), "{spill} {p:?}");
    assert_eq!(share(&p, "10.0.2."), 0, "{p:?}");
    assert_eq!(
        share(&p, "10.0.0.1"),
        share(&p, "10.0.0.10"),
        "ejected ones get none"
    );
    // 5 of 10: 70 / 30.
    f.eject("10.0.0.4");
    f.eject("10.0.0.5");
    let p = f.picks(&me, n);
    let local = share(&p, "10.0.0.") as f64 / n as f64;
    assert!((0.68..0.72).contains(&local), "{local} {p:?}");
    for i in 1..=5 {
        assert!(
            !p.contains_key(&format!("10.0.0.{i}")),
            "{i} ejected: {p:?}"
        );
    }
}

#[test]
fn when_the_local_endpoints_are_ejected_traffic_fails_over_in_order() {
    let me = at("r1/z1/s1");
    let f = fixture(&three_tiers(), OUTLIER);
    for i in 1..=10 {
        f.eject(&format!("10.0.0.{i}"));
    }
    let p = f.picks(&me, 2_000);
    assert_eq!(
        share(&p, "10.0.1."),
        2_000,
        "the region's other zone next: {p:?}"
    );
    for i in 1..=10 {
        f.eject(&format!("10.0.1.{i}"));
    }
    let p = f.picks(&me, 2_000);
    assert_eq!(share(&p, "10.0.2."), 2_000, "then the other region: {p:?}");
}

#[test]
fn failover_sends_a_region_to_the_region_it_names_first() {
    let mut eps = three_tiers();
    for i in 1..=10 {
        eps.push((format!("10.0.3.{i}"), "r3/z1/s1"));
    }
    let policy = "{loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {failover: [{from: r1, to: r3}]}}, outlierDetection: {consecutive5xxErrors: 1}}";
    let f = fixture(&eps, policy);
    for i in 1..=10 {
        f.eject(&format!("10.0.0.{i}"));
        f.eject(&format!("10.0.1.{i}"));
    }
    let p = f.picks(&at("r1/z1/s1"), 2_000);
    assert_eq!(share(&p, "10.0.3."), 2_000, "r3 before r2: {p:?}");
}

#[test]
fn distribute_weights_hold_and_localities_it_names_not_get_nothing() {
    let policy = "{loadBalancer: {simple: RANDOM, localityLbSetting: {distribute: [{from: r1/z1/*, to: {r1/z1/*: 70, r2/*: 30}}]}}}";
    let f = fixture(&three_tiers(), policy);
    let n = 20_000;
    let p = f.picks(&at("r1/z1/s1"), n);
    let local = share(&p, "10.0.0.") as f64 / n as f64;
    let remote = share(&p, "10.0.2.") as f64 / n as f64;
    assert!((0.68..0.72).contains(&local), "{local} {p:?}");
    assert!((0.28..0.32).contains(&remote), "{remote} {p:?}");
    assert_eq!(share(&p, "10.0.1."), 0, "r1/z2 is not named: {p:?}");
    // A proxy no `from` matches: every endpoint, evenly.
    let p = f.picks(&at("r9/z1/s1"), 3_000);
    assert!(share(&p, "10.0.1.") > 800, "{p:?}");
}

#[test]
fn endpoints_on_another_network_are_never_picked() {
    let f = Fixture::new(
        &[
            ("10.0.0.1", "r1", Some("net-a")),
            ("10.0.0.2", "r1", Some("net-b")),
            ("10.0.0.3", "r1", None),
        ],
        "{loadBalancer: {simple: ROUND_ROBIN}}",
    );
    let mut me = at("r1");
    me.network = Some("net-a".into());
    let p = f.picks(&me, 1_000);
    assert_eq!(p.get("10.0.0.2"), None, "{p:?}");
    // An endpoint without a network is on every network (Istio's
    // IsSameOrEmpty).
    assert_eq!(p.get("10.0.0.1"), Some(&500), "{p:?}");
    assert_eq!(p.get("10.0.0.3"), Some(&500), "{p:?}");
    // A proxy without a network reaches every endpoint.
    let p = f.picks(&at("r1"), 900);
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn endpoint_weights_share_traffic_in_proportion() {
    // Istio's testdata static-weighted-se: weights unset (1), 8 and 3.
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: svc, namespace: default}\n\
        spec:\n  hosts: [svc.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  \
        ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints:\n\
        \x20   - {address: 3.3.3.3, locality: a}\n\
        \x20   - {address: 2.2.2.2, locality: a, weight: 8}\n\
        \x20   - {address: 1.1.1.1, locality: b, weight: 3}\n";
    for simple in ["RANDOM", "ROUND_ROBIN", "LEAST_REQUEST"] {
        let f = Fixture {
            store: test_store(&format!(
                "{yaml}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: default}}\nspec:\n  host: svc.default.svc.cluster.local\n  trafficPolicy: {{loadBalancer: {{simple: {simple}}}}}\n"
            )),
            state: TrafficState::default(),
        };
        let n = 24_000;
        let p = f.picks(&at("a"), n);
        for (addr, want) in [
            ("3.3.3.3", 1.0 / 12.0),
            ("2.2.2.2", 8.0 / 12.0),
            ("1.1.1.1", 3.0 / 12.0),
        ] {
            let got = p.get(addr).copied().unwrap_or(0) as f64 / n as f64;
            assert!(
                (got - want).abs() < 0.03,
                "{simple} {addr}: {got:.3} for {want:.3}: {p:?}"
            );
        }
    }
}
