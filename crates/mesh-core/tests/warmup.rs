//! DestinationRule `loadBalancer.warmup` (slow start): read with Envoy's
//! defaults, refused where Istio refuses it and where it would do nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use mesh_core::balance::SlowStart;
use mesh_core::load::load_str;

fn dr(lb: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
         metadata: {{name: ratings}}\n\
         spec:\n  host: ratings\n  trafficPolicy:\n    loadBalancer: {lb}\n"
    )
}

fn slow_start(lb: &str) -> Option<SlowStart> {
    let r = load_str(Path::new("dr.yaml"), &dr(lb)).unwrap_or_else(|e| panic!("{lb}: {e}"));
    r.destination_rules[0]
        .spec
        .traffic_policy
        .as_ref()
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|l| l.slow_start())
}

fn refused(lb: &str) -> String {
    match load_str(Path::new("dr.yaml"), &dr(lb)) {
        Ok(_) => panic!("{lb} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn warmup_is_read_with_envoys_defaults() {
    let s = slow_start("{warmup: {duration: 300s}}").unwrap();
    assert_eq!(
        s,
        SlowStart {
            window: Duration::from_secs(300),
            min_weight: 0.1,
            aggression: 1.0
        }
    );
    let s = slow_start(
        "{simple: ROUND_ROBIN, warmup: {duration: 1m, minimumPercent: 5, aggression: 2}}",
    )
    .unwrap();
    assert_eq!((s.min_weight, s.aggression), (0.05, 2.0));
    // Istio's older spelling.
    let s = slow_start("{simple: LEAST_REQUEST, warmupDurationSecs: 100s}").unwrap();
    assert_eq!(s.window, Duration::from_secs(100));
    assert_eq!(slow_start("{simple: ROUND_ROBIN}"), None);
}

#[test]
fn bad_or_pointless_warmups_are_refused_by_field() {
    for (lb, field) in [
        (
            "{warmup: {minimumPercent: 5}}",
            "loadBalancer.warmup.duration",
        ),
        ("{warmup: {duration: 0s}}", "loadBalancer.warmup.duration"),
        (
            "{warmup: {duration: 1m, minimumPercent: 150}}",
            "loadBalancer.warmup.minimumPercent",
        ),
        (
            "{warmup: {duration: 1m, minimumPercent: -1}}",
            "loadBalancer.warmup.minimumPercent",
        ),
        (
            "{warmup: {duration: 1m, aggression: -0.1}}",
            "loadBalancer.warmup.aggression",
        ),
        (
            "{warmup: {duration: 1m, aggression: 0.5}}",
            "loadBalancer.warmup.aggression",
        ),
        (
            "{warmup: {duration: 1m}, warmupDurationSecs: 10s}",
            "loadBalancer.warmup",
        ),
        (
            "{warmup: {duration: 1m, ramp: 2}}",
            "loadBalancer.warmup.ramp",
        ),
        (
            "{consistentHash: {httpHeaderName: x-user}, warmup: {duration: 1m}}",
            "loadBalancer.warmup",
        ),
    ] {
        let e = refused(lb);
        assert!(e.contains(field), "{lb}: {e}");
    }
}
