//! The loader refuses AuthorizationPolicies it cannot honour, naming the
//! field: fail closed, never a rule silently weakened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::load::load_str;
use mesh_core::snapshot::compile;

fn load(spec: &str) -> Result<(), String> {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: p, namespace: shop}}\nspec: {spec}\n"
    );
    load_str(Path::new("p.yaml"), &yaml)
        .and_then(|r| compile(&r))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn refused_with_the_field_named() {
    let cases = [
        (
            "{action: CUSTOM, rules: [{}]}",
            "spec.provider",
            "must be set with CUSTOM",
        ),
        (
            "{action: CUSTOM, provider: {}, rules: [{}]}",
            "spec.provider.name",
            "must be set with CUSTOM",
        ),
        (
            "{action: DENY, provider: {name: x}, rules: [{}]}",
            "spec.provider",
            "must not be set with a non-CUSTOM action",
        ),
        (
            "{rules: [{from: [{source: {requestPrincipals: [\"*a*\"]}}]}]}",
            "requestPrincipals[0]",
            "allowed only once",
        ),
        (
            "{rules: [{from: [{source: {remoteIpBlocks: [1.2.3.400]}}]}]}",
            "remoteIpBlocks[0]",
            "not an IP address",
        ),
        (
            "{rules: [{from: [{source: {serviceAccounts: [\"default/*\"]}}]}]}",
            "serviceAccounts[0]",
            "no form of wildcard",
        ),
        (
            "{provider: {name: x, kind: y}, action: CUSTOM}",
            "provider.kind",
            "unsupported field",
        ),
        (
            "{targetRefs: [{kind: Gateway, name: g}]}",
            "targetRefs",
            "unsupported field",
        ),
        (
            "{rules: [{from: [{source: {}}]}]}",
            "spec.rules[0].from[0].source",
            "at least one field",
        ),
        (
            "{rules: [{to: [{operation: {}}]}]}",
            "spec.rules[0].to[0].operation",
            "at least one field",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"*admin*\"]}}]}]}",
            "paths[0]",
            "allowed only once",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"/a*b\"]}}]}]}",
            "paths[0]",
            "allowed only once",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"/api/{*}x/admin\"]}}]}]}",
            "paths[0]",
            "a segment is a literal",
        ),
        (
            "{rules: [{to: [{operation: {notPaths: [/a/../admin]}}]}]}",
            "notPaths[0]",
            "not a normalised path",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"//admin\"]}}]}]}",
            "paths[0]",
            "not a normalised path",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"/a/%2e%2e/admin\"]}}]}]}",
            "paths[0]",
            "not a normalised path",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"/admin?x=1\"]}}]}]}",
            "paths[0]",
            "queries are not matched",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"/admin%zz\"]}}]}]}",
            "paths[0]",
            "percent-encoding",
        ),
        (
            "{rules: [{to: [{operation: {paths: [\"/a%5Cb\"]}}]}]}",
            "paths[0]",
            "encoded",
        ),
        (
            "{rules: [{to: [{operation: {ports: [http]}}]}]}",
            "ports[0]",
            "not a port number",
        ),
        (
            "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}",
            "ipBlocks[0]",
            "not an IP address",
        ),
        (
            "{rules: [{when: [{key: \"request.headers[:authority]\", values: [x]}]}]}",
            "when[0].key",
            "only `:method`",
        ),
        (
            "{rules: [{when: [{key: \"request.headers[a b]\", values: [x]}]}]}",
            "when[0].key",
            "not an HTTP header name",
        ),
        (
            "{rules: [{when: [{key: \"request.auth.claims[iss\", values: [x]}]}]}",
            "when[0].key",
            "names no claim",
        ),
        (
            "{rules: [{when: [{key: 'experimental.other', values: [x]}]}]}",
            "when[0].key",
            "not supported",
        ),
        (
            "{rules: [{when: [{key: source.ip}]}]}",
            "when[0]",
            "values or notValues",
        ),
        (
            "{rules: [{when: [{key: \"request.headers[x]\", values: [\"*a*\"]}]}]}",
            "when[0].values[0]",
            "allowed only once",
        ),
        (
            "{rules: [{to: [{operation: {methods: [\"\"]}}]}]}",
            "methods[0]",
            "is empty",
        ),
    ];
    for (spec, field, message) in cases {
        let err = load(spec).expect_err(spec);
        assert!(err.contains(field), "{spec}: {err}");
        assert!(err.contains(message), "{spec}: {err}");
    }
}

#[test]
fn istio_policies_that_load() {
    for spec in [
        "{}",
        "{action: DENY}",
        "{rules: [{}]}",
        "{action: AUDIT, rules: [{}]}",
        "{rules: [{to: [{operation: {paths: [\"*\", /, \"*.php\", \"/api/*\", \"/a/.*\", \"/a b\", \"/a%20b\"]}}]}]}",
        "{rules: [{to: [{operation: {paths: [\"/api/{*}/admin\", \"/static/{**}\"]}}]}]}",
        "{rules: [{to: [{operation: {notPaths: [\"*/x\", \"*./x\", \"/a/\"]}}]}]}",
        "{rules: [{to: [{operation: {hosts: [\"*.example.com\", \"example.com:8080\"], ports: [\"80\"], methods: [GET]}}]}]}",
        "{rules: [{when: [{key: \"request.headers[X-Tenant]\", values: [\"ac*\"], notValues: [acme-test]}]}]}",
        "{rules: [{when: [{key: source.principal, values: [\"cluster.local/*\"]}, {key: destination.port, values: [\"80\"]}]}]}",
        "{selector: {matchLabels: {app: w}}, action: DENY, rules: [{from: [{source: {notPrincipals: [\"*\"], notIpBlocks: [10.0.0.0/8]}}]}]}",
    ] {
        load(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    }
}
