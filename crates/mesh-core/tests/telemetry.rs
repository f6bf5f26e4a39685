//! The Telemetry API: what is read and refused by field, how the levels
//! (root namespace, namespace, workload) merge as Istio's `telemetry.go`
//! merges them, what `check` warns of, and that a control plane carries
//! Telemetries to the data planes of their namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::analyze::{self, Severity, codes};
use mesh_core::load::load_str;
use mesh_core::resources::Resources;
use mesh_core::resources::telemetry::IstioMetric;
use mesh_core::snapshot::{Snapshot, compile};
use mesh_core::telemetry::{AccessLog, Side, TagAction, WorkloadTelemetry};

fn load(yaml: &str) -> Resources {
    load_str(Path::new("t.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(yaml: &str) -> String {
    match load_str(Path::new("t.yaml"), yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn snap(yaml: &str) -> (Resources, Snapshot) {
    let r = load(yaml);
    let s = compile(&r).unwrap_or_else(|e| panic!("{e}"));
    (r, s)
}

/// Workloads `shop/web` (app web), `shop/api` (app api) and `blog/wp`.
const WORKLOADS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api, namespace: shop}
spec: {address: 10.0.0.2, labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: wp, namespace: blog}
spec: {address: 10.0.0.3, labels: {app: wp}}
"#;

fn with_workloads(telemetry: &str) -> String {
    format!("{WORKLOADS}---\n{telemetry}")
}

fn of<'s>(s: &'s Snapshot, ns: &str, name: &str) -> &'s WorkloadTelemetry {
    s.telemetry_for(ns, name)
}

fn tags(w: &WorkloadTelemetry, side: Side, m: IstioMetric) -> Vec<String> {
    w.side(side)
        .of(m)
        .tags
        .iter()
        .map(|(n, a)| match a {
            TagAction::Remove => format!("-{n}"),
            TagAction::Upsert(_) => format!("+{n}"),
        })
        .collect()
}

#[test]
fn both_versions_are_read_and_others_refused() {
    for v in ["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"] {
        let r = load(&format!(
            "apiVersion: {v}\nkind: Telemetry\nmetadata: {{name: t}}\nspec:\n  tracing:\n  - randomSamplingPercentage: 10.0\n"
        ));
        assert_eq!(r.telemetries.len(), 1);
    }
    let e =
        refused("apiVersion: telemetry.istio.io/v1beta1\nkind: Telemetry\nmetadata: {name: t}\n");
    assert!(
        e.contains("apiVersion") && e.contains("telemetry.istio.io/v1"),
        "{e}"
    );
}

#[test]
fn bad_fields_are_refused_by_name() {
    let cases = [
        // Istio's own invalid samples.
        (
            "metrics: [{providers: [{name: ''}]}]",
            "spec.metrics[0].providers[0].name",
            "must not be empty",
        ),
        (
            "metrics: [{overrides: [{match: {customMetric: ''}}]}]",
            "spec.metrics[0].overrides[0].match.customMetric",
            "must not be empty",
        ),
        (
            "metrics: [{overrides: [{tagOverrides: {foo: {operation: UPSERT}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.foo.value",
            "value must be set when operation is UPSERT",
        ),
        (
            "metrics: [{overrides: [{tagOverrides: {foo: {operation: REMOVE, value: oops}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.foo.value",
            "value must not be set when operation is REMOVE",
        ),
        (
            "metrics: [{overrides: [{match: {metric: REQUEST_COUNT, customMetric: x}}]}]",
            "spec.metrics[0].overrides[0].match",
            "only one of metric and customMetric",
        ),
        (
            "metrics: [{overrides: [{match: {metric: NOT_A_METRIC}}]}]",
            "spec.metrics[0].overrides[0].match.metric",
            "NOT_A_METRIC",
        ),
        (
            "metrics: [{overrides: [{tagOverrides: {foo: {value: 'size(request.path)'}}}]}]",
            "spec.metrics[0].overrides[0].tagOverrides.foo.value",
            "`size(request.path)`",
        ),
        (
            "metrics: [{reportingInterval: 0s}]",
            "spec.metrics[0].reportingInterval",
            "more than 0",
        ),
        (
            "accessLogging: [{filter: {expression: 'response.code >= 400 && upstream.address'}}]",
            "spec.accessLogging[0].filter.expression",
            "attribute `upstream.address`",
        ),
        (
            "accessLogging: [{filter: {expression: 'response.code + 1'}}]",
            "spec.accessLogging[0].filter.expression",
            "`response.code + 1`",
        ),
        (
            "tracing: [{randomSamplingPercentage: 150}]",
            "spec.tracing[0].randomSamplingPercentage",
            "not between 0 and 100",
        ),
        (
            "tracing: [{sampling: 1}]",
            "spec.tracing[0].sampling",
            "unsupported field",
        ),
        (
            "targetRef: {group: '', kind: Service, name: web}",
            "spec.targetRef.kind",
            "waypoints",
        ),
        (
            "selector: {matchLabels: {app: web}}\n  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}",
            "spec.targetRef",
            "only one of selector",
        ),
    ];
    for (spec, field, why) in cases {
        let e = refused(&format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: shop}}\nspec:\n  {spec}\n"
        ));
        assert!(e.contains("t.yaml"), "{spec}: {e}");
        assert!(e.contains(field), "{spec}: wanted {field}: {e}");
        assert!(e.contains(why), "{spec}: wanted {why}: {e}");
    }
}

const PROVIDERS: &str = r#"
apiVersion: mesh.config/v1alpha1
kind: MeshConfig
spec:
  extensionProviders:
  - name: prom2
    prometheus: {}
  - name: zipkin
    zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
  - name: stdout-json
    envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {code: "%RESPONSE_CODE%"}}}
  - name: file
    envoyFileAccessLog: {path: /var/log/access.log}
  - name: console
    envoyFileAccessLog: {path: /dev/stdout}
"#;

#[test]
fn providers_of_kinds_this_mesh_cannot_report_to_are_refused_by_name() {
    for (spec, field, why) in [
        (
            "metrics: [{providers: [{name: zipkin}]}]",
            "spec.metrics[0].providers[0].name",
            "zipkin provider; this mesh reports metrics to Prometheus only",
        ),
        (
            "metrics: [{providers: [{name: console}]}]",
            "spec.metrics[0].providers[0].name",
            "access-log provider",
        ),
        (
            "accessLogging: [{providers: [{name: file}]}]",
            "spec.accessLogging[0].providers[0].name",
            "writes to `/var/log/access.log`",
        ),
        (
            "accessLogging: [{providers: [{name: stdout-json}]}]",
            "spec.accessLogging[0].providers[0].name",
            "logFormat",
        ),
        (
            "accessLogging: [{providers: [{name: ZIPKIN}]}]",
            "spec.accessLogging[0].providers[0].name",
            "zipkin provider",
        ),
    ] {
        let e = refused(&format!(
            "{PROVIDERS}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t}}\nspec:\n  {spec}\n"
        ));
        assert!(e.contains(field) && e.contains(why), "{spec}: {e}");
    }
    // Defined as what this mesh has: read.
    load(&format!(
        "{PROVIDERS}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t}}\nspec:\n  metrics: [{{providers: [{{name: PROM2}}]}}]\n  accessLogging: [{{providers: [{{name: console}}, {{name: envoy}}]}}]\n"
    ));
    // A provider with two kinds, or none, is no provider.
    let e = refused(
        "apiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nspec:\n  extensionProviders: [{name: x, prometheus: {}, zipkin: {}}]\n",
    );
    assert!(e.contains("exactly one provider field"), "{e}");
}

#[test]
fn without_telemetry_everything_is_the_default() {
    let (_, s) = snap(WORKLOADS);
    let w = of(&s, "shop", "web");
    for side in [Side::Client, Side::Server] {
        let t = w.side(side);
        assert!(t.metrics && !t.overrides_metrics());
        assert!(matches!(t.access_log, AccessLog::Default));
        assert_eq!(t.sampling, None);
    }
    assert!(s.telemetry.is_empty());
}

/// Root, namespace and workload levels, later over earlier, as
/// `mergeMetrics` merges: per metric and side, `disabled` and each tag
/// override replaced by the later one.
#[test]
fn levels_merge_later_over_earlier() {
    let (_, s) = snap(&with_workloads(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - tagOverrides:
        request_protocol: {operation: REMOVE}
    - match: {metric: REQUEST_SIZE}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: shop, namespace: shop}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        request_method: {value: request.method}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_SIZE, mode: CLIENT}
      disabled: false
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_protocol: {value: "'h'"}
"#,
    ));
    let web = of(&s, "shop", "web");
    assert_eq!(web.sources.len(), 3);
    assert_eq!(
        tags(web, Side::Server, IstioMetric::RequestCount),
        ["+request_method", "+request_protocol"]
    );
    assert_eq!(
        tags(web, Side::Client, IstioMetric::RequestCount),
        ["+request_protocol"]
    );
    assert_eq!(
        tags(web, Side::Server, IstioMetric::RequestDuration),
        ["-request_protocol"]
    );
    assert!(web.client.reports(IstioMetric::RequestSize));
    assert!(!web.server.reports(IstioMetric::RequestSize));

    let api = of(&s, "shop", "api");
    assert_eq!(api.sources.len(), 2);
    assert_eq!(
        tags(api, Side::Server, IstioMetric::RequestCount),
        ["+request_method", "-request_protocol"]
    );
    assert!(!api.client.reports(IstioMetric::RequestSize));

    // Another namespace: the mesh's only.
    let wp = of(&s, "blog", "wp");
    assert_eq!(wp.sources.len(), 1);
    assert_eq!(
        tags(wp, Side::Server, IstioMetric::RequestCount),
        ["-request_protocol"]
    );
    // A workload the snapshot does not list: its namespace's.
    assert_eq!(of(&s, "shop", "unlisted").sources.len(), 2);
}

/// `ALL_METRICS` disabled at the root is undone by any later override
/// ("root namespace disables all, but then enables them by namespace
/// scoped"), and a level whose providers name no Prometheus provider
/// leaves the workload without metrics.
#[test]
fn all_metrics_and_providers_as_istio_merges_them() {
    let (r, s) = snap(&with_workloads(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: all-off, namespace: istio-system}
spec:
  metrics:
  - overrides: [{match: {metric: ALL_METRICS}, disabled: true}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: shop-on, namespace: shop}
spec:
  metrics:
  - overrides: [{match: {metric: REQUEST_COUNT}, disabled: false}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: api-elsewhere, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  metrics:
  - providers: [{name: nowhere}]
"#,
    ));
    assert!(!of(&s, "blog", "wp").server.metrics);
    assert!(of(&s, "shop", "web").server.metrics);
    assert!(
        of(&s, "shop", "web")
            .server
            .reports(IstioMetric::RequestCount)
    );
    assert!(!of(&s, "shop", "api").server.metrics);
    let report = analyze::check(&s, &r);
    let f = report
        .findings
        .iter()
        .find(|f| f.code == codes::TELEMETRY_PROVIDER)
        .expect("an undefined provider is warned of");
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("t.yaml"), "{}", f.message);
    assert!(
        f.message.contains("spec.metrics[0].providers[0].name"),
        "{}",
        f.message
    );
    assert!(f.message.contains("`nowhere`"), "{}", f.message);
}

#[test]
fn access_logging_merges_per_side() {
    let (r, s) = snap(&with_workloads(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-logs, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 500"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: api-quiet, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  accessLogging:
  - disabled: true
    match: {mode: SERVER}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: blog-elsewhere, namespace: blog}
spec:
  accessLogging:
  - providers: [{name: loki}]
"#,
    ));
    let one_filtered =
        |a: &AccessLog| matches!(a, AccessLog::Providers(p) if p.len() == 1 && p[0].is_some());
    let none = |a: &AccessLog| matches!(a, AccessLog::Providers(p) if p.is_empty());
    let web = of(&s, "shop", "web");
    assert!(one_filtered(&web.server.access_log));
    assert!(one_filtered(&web.client.access_log));
    let api = of(&s, "shop", "api");
    assert!(none(&api.server.access_log));
    assert!(one_filtered(&api.client.access_log));
    // An undefined provider is skipped: no access log, and a warning.
    let wp = of(&s, "blog", "wp");
    assert!(none(&wp.server.access_log) && none(&wp.client.access_log));
    let report = analyze::check(&s, &r);
    assert!(report.findings.iter().any(|f| {
        f.code == codes::TELEMETRY_PROVIDER
            && f.message
                .contains("spec.accessLogging[0].providers[0].name")
            && f.message.contains("`loki`")
    }));
}

#[test]
fn tracing_sampling_per_side_and_span_fields_warned_of() {
    let (r, s) = snap(&with_workloads(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-tracing, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 10
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  tracing:
  - match: {mode: SERVER}
    randomSamplingPercentage: 0
    useRequestIdForTraceSampling: false
    providers: [{name: otlp}]
    customTags:
      env: {literal: {value: prod}}
"#,
    ));
    let web = of(&s, "shop", "web");
    assert_eq!(web.server.sampling, Some(0.0));
    assert!(!web.server.sample_by_request_id);
    assert_eq!(web.client.sampling, Some(10.0));
    assert!(web.client.sample_by_request_id);
    assert_eq!(of(&s, "blog", "wp").server.sampling, Some(10.0));
    let report = analyze::check(&s, &r);
    let spans: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.message.contains("no spans are reported"))
        .map(|f| f.message.as_str())
        .collect();
    assert!(
        spans
            .iter()
            .any(|m| m.contains("spec.tracing[0].providers[0].name") && m.contains("`otlp`")),
        "{spans:?}"
    );
    assert!(
        spans
            .iter()
            .any(|m| m.contains("spec.tracing[0].customTags") && m.contains("env")),
        "{spans:?}"
    );
}

#[test]
fn two_telemetries_at_one_level_are_warned_of_and_the_first_is_in_force() {
    let (r, s) = snap(&with_workloads(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: a, namespace: shop}
spec:
  tracing: [{randomSamplingPercentage: 1}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: b, namespace: shop}
spec:
  tracing: [{randomSamplingPercentage: 2}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: c, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  accessLogging: [{disabled: true}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: d, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  tracing: [{randomSamplingPercentage: 3}]
"#,
    ));
    assert_eq!(of(&s, "shop", "api").server.sampling, Some(1.0));
    let web = of(&s, "shop", "web");
    assert_eq!(web.server.sampling, Some(1.0), "d is not in force");
    assert!(matches!(&web.server.access_log, AccessLog::Providers(p) if p.is_empty()));
    let report = analyze::check(&s, &r);
    let conflicts: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.code == codes::TELEMETRY_CONFLICT)
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert!(
        conflicts
            .iter()
            .any(|m| m.contains("Telemetry shop/a and Telemetry shop/b"))
    );
    assert!(
        conflicts
            .iter()
            .any(|m| m.contains("Telemetry shop/c and Telemetry shop/d") && m.contains("shop/web"))
    );
}

#[test]
fn a_gateway_target_selects_the_gateways_pods() {
    let (_, s) = snap(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: gw, namespace: edge}
spec:
  address: 10.0.0.9
  labels: {gateway.networking.k8s.io/gateway-name: public}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: gw, namespace: edge}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: public}]
  tracing: [{randomSamplingPercentage: 5}]
"#,
    );
    assert_eq!(of(&s, "edge", "gw").client.sampling, Some(5.0));
    assert_eq!(of(&s, "edge", "other").client.sampling, None);
}

/// The control plane serves a Telemetry to the data planes of its
/// namespace (and a root-namespace one to all), and what they read back
/// resolves as the files do.
#[test]
fn the_control_plane_carries_telemetries_to_their_namespace() {
    let yaml = with_workloads(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing: [{randomSamplingPercentage: 7}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  metrics:
  - overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]
"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(&file, yaml).unwrap();
    let r = mesh_core::load::load_path_keeping_documents(&file).unwrap();
    let c = mesh_core::xds::Catalog::new(&r).unwrap();
    let web: Vec<String> = c.view("shop/web").unwrap().keys().cloned().collect();
    assert!(web.contains(&"Telemetry/shop/web".to_owned()), "{web:?}");
    assert!(
        web.contains(&"Telemetry/istio-system/mesh-default".to_owned()),
        "{web:?}"
    );
    let wp: Vec<String> = c.view("blog/wp").unwrap().keys().cloned().collect();
    assert!(!wp.contains(&"Telemetry/shop/web".to_owned()), "{wp:?}");
    assert!(
        wp.contains(&"Telemetry/istio-system/mesh-default".to_owned()),
        "{wp:?}"
    );

    let view = c.view("shop/web").unwrap();
    let docs: Vec<(&str, &[u8])> = view
        .keys()
        .map(|n| (n.as_str(), &*c.get(n).unwrap().body))
        .collect();
    let back = mesh_core::xds::read(docs).unwrap();
    let s = compile(&back).unwrap();
    let w = of(&s, "shop", "web");
    assert!(!w.server.reports(IstioMetric::RequestCount));
    assert_eq!(w.server.sampling, Some(7.0));
}
