//! The Kubernetes Gateway API, read as Istio reads it: Istio's own
//! Gateway API samples (`../shared/istio-corpus/A1g-samples-gateway-api`,
//! read where they are) compiled into the routing they ask for, and what
//! has no exact translation refused by file and field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use mesh_core::load::load_str;
use mesh_core::plan::{self, PlanError, PlanRequest, PlannedAction};
use mesh_core::resources::Resources;
use mesh_core::route::RequestInfo;
use mesh_core::snapshot::{Snapshot, compile};

fn samples() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/istio-corpus/A1g-samples-gateway-api");
    dir.is_dir().then_some(dir)
}

/// The sample file of a corpus folder, with `extra` documents after it,
/// loaded under the sample's own path (errors name it).
fn sample(folder: &str, extra: &str) -> Option<(PathBuf, Result<Resources, String>)> {
    let Some(dir) = samples() else {
        eprintln!("SKIPPED LOUDLY: ../shared/istio-corpus is not on this machine");
        return None;
    };
    let dir = dir.join(folder);
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    let text = if extra.is_empty() {
        text
    } else {
        format!("{text}\n---\n{extra}")
    };
    let r = load_str(&file, &text).map_err(|e| e.to_string());
    Some((file, r))
}

fn snap(r: &Resources) -> Snapshot {
    compile(r).unwrap_or_else(|e| panic!("{e}"))
}

fn load(yaml: &str) -> Resources {
    load_str(Path::new("gw.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(yaml: &str, field: &str, words: &str) {
    let e = match load_str(Path::new("bad.yaml"), yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("bad.yaml") && e.contains(field) && e.contains(words),
        "want {field}: {words}\n got {e}"
    );
}

type Headers = Vec<(String, String)>;

/// A request through Gateway `gw` (its first server), as `(host, port)`
/// of each destination and its weight.
fn through_gateway<'s>(
    s: &'s Snapshot,
    gw: &'s str,
    host: &'s str,
    path: &'s str,
    headers: &'s Headers,
    port: u16,
) -> Result<plan::RoutePlan<'s>, PlanError> {
    static LABELS: std::sync::LazyLock<mesh_core::resources::Labels> =
        std::sync::LazyLock::new(Default::default);
    const SERVERS: &[usize] = &[0, 1];
    let req = PlanRequest {
        host,
        info: RequestInfo {
            method: "GET",
            path_and_query: path,
            authority: host,
            scheme: "http",
            port,
            headers,
            source_labels: &LABELS,
            source_namespace: None,
            gateway: Some(gw),
            auth: None,
        },
        namespace: "default",
        gateway: Some((gw, SERVERS)),
    };
    plan::route(s, &req)
}

fn forwards(p: &plan::RoutePlan<'_>) -> Vec<(String, Option<u16>, u32)> {
    match &p.action {
        PlannedAction::Forward(ds) => ds
            .iter()
            .map(|d| (d.host.clone(), d.port, d.weight))
            .collect(),
        other => panic!("not forwarded: {other:?}"),
    }
}

#[test]
fn bookinfo_gateway_routes_its_paths_to_productpage() {
    let Some((file, r)) = sample("bookinfo_gateway-api_bookinfo-gateway.yaml", "") else {
        return;
    };
    let r = r.unwrap_or_else(|e| panic!("{e}"));
    // The Istio Gateway: same name, Istio's automated-deployment selector,
    // the listener's namespace scope in its hosts.
    let gw = &r.gateways[0];
    assert_eq!(gw.source.key(), "default/bookinfo-gateway");
    assert_eq!(gw.source.origin.file, file);
    assert_eq!(
        gw.spec.selector["gateway.networking.k8s.io/gateway-name"],
        "bookinfo-gateway"
    );
    assert_eq!(gw.spec.servers[0].hosts, ["default/*"]);
    assert_eq!(gw.spec.servers[0].port.number, 80);
    let vs = &r.virtual_services[0];
    assert_eq!(vs.source.key(), "default/bookinfo");
    assert_eq!(vs.source.origin.file, file);
    assert_eq!(vs.source.origin.document, 2);
    assert_eq!(vs.spec.gateways, ["default/bookinfo-gateway"]);

    let s = snap(&r);
    let none: Headers = vec![];
    let gw = "default/bookinfo-gateway";
    let at = |path| through_gateway(&s, gw, "bookinfo.example.com", path, &none, 80);
    for path in [
        "/productpage",
        "/productpage?u=normal",
        "/static/css/app.css",
        "/static",
        "/login",
        "/api/v1/products/0",
    ] {
        let p = at(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            forwards(&p),
            [(
                "productpage.default.svc.cluster.local".to_owned(),
                Some(9080),
                100
            )],
            "{path}"
        );
    }
    // Exact is exact, and a Gateway API prefix is whole path elements.
    for path in [
        "/other",
        "/productpage/x",
        "/staticfoo",
        "/",
        "/api/v1/productsx",
    ] {
        assert!(
            matches!(at(path), Err(PlanError::NoRuleMatched { .. })),
            "{path}: {:?}",
            at(path)
        );
    }
}

#[test]
fn gamma_route_splits_reviews_90_10() {
    const REVIEWS: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 9080, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.9}]\n";
    let Some((_, r)) = sample("bookinfo_gateway-api_route-reviews-90-10.yaml", REVIEWS) else {
        return;
    };
    let r = r.unwrap_or_else(|e| panic!("{e}"));
    let vs = &r.virtual_services[0];
    assert_eq!(vs.spec.hosts, ["reviews.default.svc.cluster.local"]);
    assert!(vs.spec.gateways.is_empty(), "a mesh route");
    assert_eq!(vs.spec.http[0].matches[0].port, Some(9080));
    let s = snap(&r);
    let none: Headers = vec![];
    let p = plan::route(
        &s,
        &PlanRequest::mesh("reviews.default.svc.cluster.local", 9080, "default", &none),
    )
    .unwrap();
    assert_eq!(
        forwards(&p),
        [
            (
                "reviews-v1.default.svc.cluster.local".to_owned(),
                Some(9080),
                90
            ),
            (
                "reviews-v2.default.svc.cluster.local".to_owned(),
                Some(9080),
                10
            ),
        ]
    );
}

#[test]
fn every_bookinfo_and_helloworld_sample_is_read() {
    for folder in [
        "ambient-argo_application_ingress-gateway.yaml",
        "ambient-argo_application_route-reviews-90-10.yaml",
        "bookinfo_gateway-api_route-all-v1.yaml",
        "bookinfo_gateway-api_route-reviews-50-v3.yaml",
        "bookinfo_gateway-api_route-reviews-v1.yaml",
        "bookinfo_gateway-api_route-reviews-v3.yaml",
        "helloworld_gateway-api_helloworld-gateway.yaml",
        "helloworld_gateway-api_helloworld-route.yaml",
        "httpbin_gateway-api_httpbin-gateway.yaml",
    ] {
        let Some((_, r)) = sample(folder, "") else {
            return;
        };
        let r = r.unwrap_or_else(|e| panic!("{folder}: {e}"));
        snap(&r);
    }
}

#[test]
fn waypoints_are_refused_by_file_and_field() {
    let Some((file, r)) = sample("ambient-argo_application_details-waypoint.yaml", "") else {
        return;
    };
    let e = r.unwrap_err();
    assert!(
        e.contains(&file.display().to_string())
            && e.contains("spec.gatewayClassName")
            && e.contains("istio-waypoint"),
        "{e}"
    );
}

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: shop.example.com
    tls: {certificateRefs: [{name: shop-cert}]}
    allowedRoutes: {namespaces: {from: All}}
"#;

fn with_route(spec: &str) -> String {
    format!(
        "{GATEWAY}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: edge}}\nspec:\n{spec}"
    )
}

#[test]
fn https_listeners_terminate_with_their_secret() {
    let r = load(GATEWAY);
    let servers = &r.gateways[0].spec.servers;
    assert_eq!(servers[0].hosts, ["edge/*.example.com"]);
    assert_eq!(servers[1].hosts, ["*/shop.example.com"]);
    let tls = servers[1].tls.as_ref().unwrap();
    assert_eq!(tls.credential_name.as_deref(), Some("shop-cert"));
}

#[test]
fn header_query_and_method_matches_and_precedence() {
    let r = load(&with_route(
        r#"
  parentRefs: [{name: web}]
  hostnames: [a.example.com]
  rules:
  - backendRefs: [{name: main, port: 80}]
  - matches:
    - headers: [{name: X-Env, value: canary}]
    - queryParams: [{name: debug, type: RegularExpression, value: "1|yes"}]
    backendRefs: [{name: canary, port: 80}]
  - matches: [{path: {type: Exact, value: /login}, method: POST}]
    backendRefs: [{name: login, port: 8080}]
"#,
    ));
    let s = snap(&r);
    let host = |p: &plan::RoutePlan<'_>| forwards(p)[0].0.clone();
    let gw = "edge/web";
    let plain: Headers = vec![];
    let canary: Headers = vec![("x-env".into(), "canary".into())];
    let go = |path, h| through_gateway(&s, gw, "a.example.com", path, h, 80).unwrap();
    assert_eq!(host(&go("/", &plain)), "main.edge.svc.cluster.local");
    // Headers and query beat a bare prefix of the same length, whatever
    // the rule order (Gateway API precedence).
    assert_eq!(host(&go("/x", &canary)), "canary.edge.svc.cluster.local");
    assert_eq!(
        host(&go("/x?debug=yes", &plain)),
        "canary.edge.svc.cluster.local"
    );
    assert_eq!(
        host(&go("/x?debug=no", &plain)),
        "main.edge.svc.cluster.local"
    );
    // The method is part of the match: GET /login is not POST /login.
    assert_eq!(host(&go("/login", &plain)), "main.edge.svc.cluster.local");
    // The route's hostname: another host of the listener has no route.
    assert!(through_gateway(&s, gw, "b.example.com", "/", &plain, 80).is_err());
    // The exact path match was sorted first.
    let http = &r.virtual_services[0].spec.http;
    assert!(http[0].matches[0].method.is_some(), "{http:#?}");
}

#[test]
fn filters_become_headers_rewrites_redirects_and_mirrors() {
    let r = load(&with_route(
        r#"
  parentRefs: [{name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Via, value: gw}]
        add: [{name: X-Trace, value: "1"}]
        remove: [X-Debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: Cache-Control, value: no-store}]}
    - type: URLRewrite
      urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 80}, percent: 25}
    backendRefs: [{name: api, port: 80}]
    timeouts: {request: 5s}
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: new.example.com, statusCode: 301}
"#,
    ));
    let http = &r.virtual_services[0].spec.http;
    // /api is split: the exact path, and what is below /api/, each with
    // the prefix replacement that keeps the split exact.
    let api: Vec<_> = http
        .iter()
        .filter(|h| !h.route.is_empty())
        .map(|h| {
            let rw = h.rewrite.as_ref().unwrap();
            assert_eq!(rw.authority.as_deref(), Some("api.internal"));
            let hd = h.headers.as_ref().unwrap();
            let req = hd.request.as_ref().unwrap();
            assert_eq!(req.set["x-via"], "gw");
            assert_eq!(req.add["x-trace"], "1");
            assert_eq!(req.remove, ["x-debug"]);
            assert_eq!(
                hd.response.as_ref().unwrap().set["cache-control"],
                "no-store"
            );
            assert_eq!(
                h.mirror.as_ref().unwrap().host,
                "shadow.edge.svc.cluster.local"
            );
            assert_eq!(h.mirror_percentage.unwrap().value, 25.0);
            assert_eq!(h.timeout.unwrap().0, std::time::Duration::from_secs(5));
            (format!("{:?}", h.matches[0].uri), rw.uri.clone())
        })
        .collect();
    assert_eq!(
        api,
        [
            (r#"Some(Exact("/api"))"#.to_owned(), Some("/v2".to_owned())),
            (
                r#"Some(Prefix("/api/"))"#.to_owned(),
                Some("/v2/".to_owned())
            ),
        ]
    );
    let s = snap(&r);
    let none: Headers = vec![];
    let p = through_gateway(&s, "edge/web", "a.example.com", "/old", &none, 80).unwrap();
    let PlannedAction::Redirect(to) = p.action else {
        panic!("{p:?}")
    };
    assert_eq!(to.scheme.as_deref(), Some("https"));
    assert_eq!(to.authority.as_deref(), Some("new.example.com"));
    assert_eq!(to.redirect_code, Some(301));
}

#[test]
fn section_name_binds_to_its_listener() {
    let r = load(&with_route(
        "  parentRefs: [{name: web, sectionName: https}]\n  rules: [{backendRefs: [{name: shop, port: 80}]}]\n",
    ));
    let vs = &r.virtual_services[0].spec;
    assert_eq!(vs.hosts, ["shop.example.com"]);
    assert_eq!(vs.http[0].matches[0].port, Some(443));
}

#[test]
fn weights_are_relative() {
    let r = load(&with_route(
        "  parentRefs: [{name: web}]\n  rules:\n  - backendRefs: [{name: a, port: 80, weight: 900}, {name: b, port: 80, weight: 300}]\n",
    ));
    let w: Vec<_> = r.virtual_services[0].spec.http[0]
        .route
        .iter()
        .map(|d| d.weight)
        .collect();
    assert_eq!(w, [Some(3), Some(1)]);
}

#[test]
fn what_has_no_exact_translation_is_refused_by_field() {
    let route = |spec: &str| with_route(spec);
    refused(
        &route("  parentRefs: [{name: web}]\n  rules:\n  - filters: [{type: CORS, cors: {}}]\n"),
        "spec.rules[0].filters[0].cors",
        "unsupported field `cors`",
    );
    refused(
        &route("  parentRefs: [{name: web}]\n  rules:\n  - filters: [{type: ExtensionRef}]\n"),
        "spec.rules[0].filters[0].type",
        "`ExtensionRef` is not supported",
    );
    refused(
        &route(
            "  parentRefs: [{name: web, sectionName: grpc}]\n  rules: [{backendRefs: [{name: a, port: 80}]}]\n",
        ),
        "spec.parentRefs[0].sectionName",
        "has no such listener (its listeners: http, https)",
    );
    refused(
        &route("  parentRefs: [{name: web}]\n  rules:\n  - retry: {attempts: 2}\n"),
        "spec.rules[0].retry",
        "unsupported field `retry`",
    );
    refused(
        &route(
            "  parentRefs: [{name: web}]\n  rules:\n  - backendRefs: [{name: a, namespace: other, port: 80}]\n",
        ),
        "spec.rules[0].backendRefs[0].namespace",
        "ReferenceGrant",
    );
    refused(
        &route(
            "  parentRefs: [{name: web}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /a}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /b}}}]\n    backendRefs: [{name: a, port: 80}]\n",
        ),
        "spec.rules[0].matches[0].path",
        "ReplaceFullPath",
    );
    // A route of another namespace: the http listener takes routes of its
    // own namespace only (the default, Same).
    refused(
        &format!(
            "{GATEWAY}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{name: web, namespace: edge, sectionName: http}}]\n  rules: [{{backendRefs: [{{name: a, port: 80}}]}}]\n"
        ),
        "spec.parentRefs[0]",
        "does not admit routes of namespace shop",
    );
    refused(
        &GATEWAY.replace(
            "{from: All}",
            "{from: Selector, selector: {matchLabels: {a: b}}}",
        ),
        "spec.listeners[1].allowedRoutes.namespaces.from",
        "Selector is not supported",
    );
    refused(
        &GATEWAY.replace("protocol: HTTP,", "protocol: TCP,"),
        "spec.listeners[0].protocol",
        "`TCP` is not supported",
    );
    refused(
        &GATEWAY.replace("tls: {", "tls: {mode: Passthrough, "),
        "spec.listeners[1].tls.mode",
        "only Terminate",
    );
    refused(
        &GATEWAY.replace(
            "gatewayClassName: istio",
            "gatewayClassName: istio\n  addresses: [{value: 1.2.3.4}]",
        ),
        "spec.addresses",
        "unsupported field `addresses`",
    );
}

#[test]
fn two_routes_for_one_host_of_one_parent_are_refused() {
    let second = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r2, namespace: edge}\nspec:\n  parentRefs: [{name: web}]\n  hostnames: [\"*.example.com\"]\n  rules: [{backendRefs: [{name: b, port: 80}]}]\n";
    refused(
        &format!(
            "{}{second}",
            with_route(
                "  parentRefs: [{name: web}]\n  hostnames: [a.example.com]\n  rules: [{backendRefs: [{name: a, port: 80}]}]\n"
            )
        ),
        "spec.parentRefs",
        "HTTPRoute edge/r (bad.yaml (document 2)) routes host *.example.com at the same parent",
    );
    // Hosts that do not meet do not merge.
    load(&format!(
        "{}{}",
        with_route(
            "  parentRefs: [{name: web}]\n  hostnames: [a.example.org]\n  rules: [{backendRefs: [{name: a, port: 80}]}]\n"
        ),
        second
    ));
}

#[test]
fn a_redirect_keeps_the_listeners_scheme_and_port() {
    let r = load(&with_route(
        "  parentRefs: [{name: web, sectionName: https}]\n  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {hostname: www.example.com}}]\n",
    ));
    let to = r.virtual_services[0].spec.http[0]
        .redirect
        .as_ref()
        .unwrap();
    assert_eq!(to.scheme.as_deref(), Some("https"));
    assert_eq!(to.redirect_code, Some(302), "the Gateway API's default");
    // On both listeners, the scheme is not one.
    refused(
        &with_route(
            "  parentRefs: [{name: web}]\n  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {hostname: www.example.com}}]\n",
        ),
        "spec.rules[0].filters[0].requestRedirect.scheme",
        "HTTP and HTTPS listeners",
    );
    // A listener off its scheme's port: the port must be said.
    refused(
        &with_route(
            "  parentRefs: [{name: web, port: 80}]\n  rules:\n  - filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /x}}}]\n",
        )
        .replace("port: 80, protocol: HTTP", "port: 8080, protocol: HTTP")
        .replace("{name: web, port: 80}", "{name: web, port: 8080}"),
        "spec.rules[0].filters[0].requestRedirect.port",
        "is required here",
    );
}

#[test]
fn explain_names_the_users_gateway_api_document() {
    const MESH: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 9080, name: http}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.9}]\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: productpage}\nspec: {address: 10.0.0.3, labels: {app: productpage}, serviceAccount: productpage}\n";
    let Some((file, r)) = sample("bookinfo_gateway-api_route-reviews-90-10.yaml", MESH) else {
        return;
    };
    let r = r.unwrap_or_else(|e| panic!("{e}"));
    let q = mesh_core::explain::Query {
        from: "productpage".to_owned(),
        to: "reviews.default.svc.cluster.local:9080".to_owned(),
        ..Default::default()
    };
    let x = mesh_core::explain::explain(&snap(&r), &q).unwrap();
    let route = x.steps.iter().find(|s| s.step == "route").unwrap();
    let by = route.decided_by.as_ref().unwrap();
    assert_eq!(
        (by.origin.file.as_path(), by.origin.document),
        (file.as_path(), 1)
    );
    assert!(x.to_string().contains("route-reviews-90-10.yaml"), "{x}");
}

#[test]
fn a_control_plane_serves_the_translation_as_istio_documents() {
    let Some(dir) = samples() else {
        return;
    };
    let dir = dir.join("bookinfo_gateway-api_bookinfo-gateway.yaml");
    let r = mesh_core::load::load_path_keeping_documents(&dir).unwrap();
    mesh_core::xds::Catalog::new(&r).unwrap();
    // What a data plane gets reads back as the same routing.
    let docs = r
        .gateways
        .iter()
        .map(|g| (g.source.origin.clone(), (**g.raw.as_ref().unwrap()).clone()))
        .chain(
            r.virtual_services
                .iter()
                .map(|v| (v.source.origin.clone(), (**v.raw.as_ref().unwrap()).clone())),
        );
    let again = mesh_core::load::load_documents(docs).unwrap();
    assert_eq!(again.gateways[0].api_version, "networking.istio.io/v1");
    assert_eq!(
        format!("{:?}", again.virtual_services[0].spec.http),
        format!("{:?}", r.virtual_services[0].spec.http)
    );
}

#[test]
fn a_mesh_redirect_keeps_the_service_port() {
    let route = |port: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web{port}}}]\n  rules:\n  - filters: [{{type: RequestRedirect, requestRedirect: {{hostname: www.example.com}}}}]\n"
        )
    };
    let r = load(&route(", port: 9080"));
    let to = r.virtual_services[0].spec.http[0]
        .redirect
        .as_ref()
        .unwrap();
    assert_eq!(to.port, Some(9080));
    // Without a port, the request's port is not known here.
    refused(
        &route(""),
        "spec.rules[0].filters[0].requestRedirect.port",
        "is required here",
    );
}
