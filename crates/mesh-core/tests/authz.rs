//! AuthorizationPolicy semantics as tables: each source, operation and
//! condition field and its not-variant, DENY before ALLOW, the empty-ALLOW
//! rule, AUDIT, requests without identity, root-namespace policies, repeated
//! headers, paths crafted to dodge a DENY, and the L4 rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use mesh_core::authz::{AuthzDecision, AuthzRequest, ConnectionInfo, Sni, evaluate, evaluate_tcp};
use mesh_core::identity::SpiffeId;
use mesh_core::load::load_str;
use mesh_core::snapshot::{Snapshot, compile};

const WORKLOAD: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: w, namespace: shop}
spec: {address: 10.0.0.9, labels: {app: w}, serviceAccount: w}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: shop}
spec: {address: 10.0.0.8, labels: {app: other}, serviceAccount: other}
"#;

fn snap(policies: &str) -> Snapshot {
    let yaml = format!("{WORKLOAD}---\n{policies}");
    let r = load_str(Path::new("t.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    compile(&r).unwrap_or_else(|e| panic!("{e}"))
}

/// One policy named `name` on workload `w`.
fn policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: w}}}}\n  action: {action}\n  rules: {rules}\n"
    )
}

#[derive(Clone)]
struct Req {
    peer: Option<&'static str>,
    src: Option<&'static str>,
    dst: Option<&'static str>,
    port: u16,
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
}

impl Default for Req {
    fn default() -> Self {
        Self {
            peer: Some("spiffe://cluster.local/ns/front/sa/web"),
            src: Some("10.1.0.1"),
            dst: Some("10.0.0.9"),
            port: 8080,
            host: "w.shop.svc.cluster.local",
            method: "GET",
            path: "/",
            headers: Vec::new(),
        }
    }
}

impl Req {
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

fn decide_on(s: &Snapshot, workload: &str, r: &Req) -> AuthzDecision {
    let (_, w) = s.workload(workload).unwrap();
    let peer = r.peer.map(|p| SpiffeId::parse(p).unwrap());
    // As the data plane reads it: the canonical spelling.
    let host = s.canonical_host(r.host, &w.namespace);
    let req = AuthzRequest {
        peer: peer.as_ref(),
        source_ip: r.src.map(|a| a.parse().unwrap()),
        remote_ip: r.src.map(|a| a.parse().unwrap()),
        destination_ip: r.dst.map(|a| a.parse().unwrap()),
        destination_port: r.port,
        host: &host,
        host_aliases: &[],
        method: r.method,
        path: r.path,
        headers: Some(&r.headers),
        auth: None,
        sni: Sni::Absent,
    };
    evaluate(s.workload_policies(w), &req)
}

fn decide(s: &Snapshot, r: &Req) -> AuthzDecision {
    decide_on(s, "shop/w", r)
}

/// `(rule, request, matches)`: an ALLOW policy with the rule allows the
/// request exactly when the rule matches it; a DENY policy with the same
/// rule denies it exactly then too (the readings all agree here).
fn field_table() -> Vec<(&'static str, Req, bool)> {
    let d = Req::default;
    let plain = || Req { peer: None, ..d() };
    vec![
        // principals / notPrincipals
        (
            "{from: [{source: {principals: [cluster.local/ns/front/sa/web]}}]}",
            d(),
            true,
        ),
        (
            "{from: [{source: {principals: [cluster.local/ns/front/sa/api]}}]}",
            d(),
            false,
        ),
        (
            "{from: [{source: {principals: [\"cluster.local/ns/front/*\"]}}]}",
            d(),
            true,
        ),
        (
            "{from: [{source: {principals: [\"*/sa/web\"]}}]}",
            d(),
            true,
        ),
        ("{from: [{source: {principals: [\"*\"]}}]}", d(), true),
        ("{from: [{source: {principals: [\"*\"]}}]}", plain(), false),
        (
            "{from: [{source: {notPrincipals: [cluster.local/ns/front/sa/web]}}]}",
            d(),
            false,
        ),
        (
            "{from: [{source: {notPrincipals: [cluster.local/ns/front/sa/api]}}]}",
            d(),
            true,
        ),
        (
            "{from: [{source: {notPrincipals: [\"*\"]}}]}",
            plain(),
            true,
        ),
        ("{from: [{source: {notPrincipals: [\"*\"]}}]}", d(), false),
        // namespaces / notNamespaces
        ("{from: [{source: {namespaces: [front]}}]}", d(), true),
        ("{from: [{source: {namespaces: [back]}}]}", d(), false),
        ("{from: [{source: {namespaces: [\"fr*\"]}}]}", d(), true),
        ("{from: [{source: {namespaces: [front]}}]}", plain(), false),
        ("{from: [{source: {notNamespaces: [front]}}]}", d(), false),
        ("{from: [{source: {notNamespaces: [back]}}]}", d(), true),
        (
            "{from: [{source: {notNamespaces: [front]}}]}",
            plain(),
            true,
        ),
        // ipBlocks / notIpBlocks
        ("{from: [{source: {ipBlocks: [10.1.0.0/16]}}]}", d(), true),
        (
            "{from: [{source: {ipBlocks: [10.2.0.0/16, 10.1.0.1]}}]}",
            d(),
            true,
        ),
        ("{from: [{source: {ipBlocks: [10.2.0.0/16]}}]}", d(), false),
        (
            "{from: [{source: {notIpBlocks: [10.1.0.0/16]}}]}",
            d(),
            false,
        ),
        (
            "{from: [{source: {notIpBlocks: [10.2.0.0/16]}}]}",
            d(),
            true,
        ),
        // hosts / notHosts: case-insensitive, with or without the port
        (
            "{to: [{operation: {hosts: [w.shop.svc.cluster.local]}}]}",
            d(),
            true,
        ),
        (
            "{to: [{operation: {hosts: [W.Shop.SVC.cluster.local]}}]}",
            d(),
            true,
        ),
        (
            "{to: [{operation: {hosts: [\"*.shop.svc.cluster.local\"]}}]}",
            d(),
            true,
        ),
        (
            "{to: [{operation: {hosts: [w.shop.svc.cluster.local]}}]}",
            Req {
                host: "W.shop.svc.cluster.local:8080",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {hosts: [\"w.shop.svc.cluster.local:8080\"]}}]}",
            Req {
                host: "w.shop.svc.cluster.local:8080",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {hosts: [\"w.shop.svc.cluster.local:8080\"]}}]}",
            Req {
                host: "w.shop.svc.cluster.local:9090",
                ..d()
            },
            false,
        ),
        (
            "{to: [{operation: {hosts: [w.shop.svc.cluster.local]}}]}",
            Req {
                host: "w.shop.svc.cluster.local.",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {hosts: [\"*.example.com\"]}}]}",
            d(),
            false,
        ),
        (
            "{to: [{operation: {notHosts: [w.shop.svc.cluster.local]}}]}",
            Req {
                host: "w.SHOP.svc.cluster.local:80",
                ..d()
            },
            false,
        ),
        (
            "{to: [{operation: {notHosts: [\"*.example.com\"]}}]}",
            d(),
            true,
        ),
        // ports / notPorts
        ("{to: [{operation: {ports: [\"8080\"]}}]}", d(), true),
        ("{to: [{operation: {ports: [\"9090\"]}}]}", d(), false),
        ("{to: [{operation: {notPorts: [\"8080\"]}}]}", d(), false),
        ("{to: [{operation: {notPorts: [\"9090\"]}}]}", d(), true),
        // methods / notMethods
        ("{to: [{operation: {methods: [GET, HEAD]}}]}", d(), true),
        ("{to: [{operation: {methods: [POST]}}]}", d(), false),
        ("{to: [{operation: {notMethods: [GET]}}]}", d(), false),
        ("{to: [{operation: {notMethods: [POST]}}]}", d(), true),
        // paths / notPaths: exact, prefix, suffix, any
        (
            "{to: [{operation: {paths: [/api]}}]}",
            Req {
                path: "/api",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {paths: [/api]}}]}",
            Req {
                path: "/api/",
                ..d()
            },
            false,
        ),
        (
            "{to: [{operation: {paths: [/api]}}]}",
            Req {
                path: "/api?x=1",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {paths: [\"/api/*\"]}}]}",
            Req {
                path: "/api/v1",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {paths: [\"/api/*\"]}}]}",
            Req {
                path: "/apix",
                ..d()
            },
            false,
        ),
        (
            "{to: [{operation: {paths: [\"*.php\"]}}]}",
            Req {
                path: "/index.php",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {paths: [\"*.php\"]}}]}",
            Req {
                path: "/index.html",
                ..d()
            },
            false,
        ),
        (
            "{to: [{operation: {paths: [\"*\"]}}]}",
            Req {
                path: "/anything",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {paths: [\"/a b\"]}}]}",
            Req {
                path: "/a%20b",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {paths: [\"/a%20b\"]}}]}",
            Req {
                path: "/a%20b",
                ..d()
            },
            true,
        ),
        (
            "{to: [{operation: {notPaths: [\"/admin*\"]}}]}",
            Req {
                path: "/admin/x",
                ..d()
            },
            false,
        ),
        (
            "{to: [{operation: {notPaths: [\"/admin*\"]}}]}",
            Req {
                path: "/public",
                ..d()
            },
            true,
        ),
        // fields AND, values OR
        (
            "{to: [{operation: {methods: [GET], paths: [/x]}}]}",
            Req { path: "/x", ..d() },
            true,
        ),
        (
            "{to: [{operation: {methods: [POST], paths: [/x]}}]}",
            Req { path: "/x", ..d() },
            false,
        ),
        // from and to AND; entries of from OR
        (
            "{from: [{source: {namespaces: [back]}}, {source: {namespaces: [front]}}], to: [{operation: {methods: [GET]}}]}",
            d(),
            true,
        ),
        (
            "{from: [{source: {namespaces: [front]}}], to: [{operation: {methods: [PUT]}}]}",
            d(),
            false,
        ),
        // when: source / destination / headers
        (
            "{when: [{key: source.ip, values: [10.1.0.0/16]}]}",
            d(),
            true,
        ),
        (
            "{when: [{key: source.ip, notValues: [10.1.0.0/16]}]}",
            d(),
            false,
        ),
        (
            "{when: [{key: destination.ip, values: [10.0.0.9]}]}",
            d(),
            true,
        ),
        (
            "{when: [{key: destination.ip, notValues: [10.0.0.0/24]}]}",
            d(),
            false,
        ),
        (
            "{when: [{key: destination.port, values: [\"8080\"]}]}",
            d(),
            true,
        ),
        (
            "{when: [{key: destination.port, notValues: [\"8080\"]}]}",
            d(),
            false,
        ),
        (
            "{when: [{key: source.principal, values: [cluster.local/ns/front/sa/web]}]}",
            d(),
            true,
        ),
        (
            "{when: [{key: source.principal, values: [\"*\"]}]}",
            plain(),
            false,
        ),
        (
            "{when: [{key: source.principal, notValues: [cluster.local/ns/front/sa/web]}]}",
            d(),
            false,
        ),
        (
            "{when: [{key: source.namespace, values: [front]}]}",
            d(),
            true,
        ),
        (
            "{when: [{key: source.namespace, values: [front]}]}",
            plain(),
            false,
        ),
        (
            "{when: [{key: source.namespace, notValues: [back]}]}",
            plain(),
            true,
        ),
        (
            "{when: [{key: \"request.headers[x-tenant]\", values: [acme]}]}",
            d().header("X-Tenant", "acme"),
            true,
        ),
        (
            "{when: [{key: \"request.headers[x-tenant]\", values: [\"ac*\"]}]}",
            d().header("x-tenant", "acme"),
            true,
        ),
        (
            "{when: [{key: \"request.headers[x-tenant]\", values: [acme]}]}",
            d().header("x-tenant", "other"),
            false,
        ),
        (
            "{when: [{key: \"request.headers[x-tenant]\", values: [acme]}]}",
            d(),
            false,
        ),
        (
            "{when: [{key: \"request.headers[x-tenant]\", notValues: [acme]}]}",
            d(),
            true,
        ),
        (
            "{when: [{key: \"request.headers[x-tenant]\", notValues: [acme]}]}",
            d().header("x-tenant", "acme"),
            false,
        ),
        (
            "{when: [{key: \"request.headers[x-tenant]\", values: [\"*\"]}]}",
            d().header("x-tenant", ""),
            true,
        ),
        // when: every condition must hold
        (
            "{when: [{key: source.namespace, values: [front]}, {key: destination.port, values: [\"9090\"]}]}",
            d(),
            false,
        ),
        // values and notValues together
        (
            "{when: [{key: source.ip, values: [10.0.0.0/8], notValues: [10.1.0.0/16]}]}",
            d(),
            false,
        ),
    ]
}

#[test]
fn every_field_and_its_not_variant() {
    for (i, (rule, req, matches)) in field_table().into_iter().enumerate() {
        let allow = snap(&policy("p", "ALLOW", &format!("[{rule}]")));
        let d = decide(&allow, &req);
        assert_eq!(
            d.allowed, matches,
            "#{i} ALLOW {rule} on {}: {}",
            req.path, d.reason
        );
        let deny = snap(&policy("p", "DENY", &format!("[{rule}]")));
        let d = decide(&deny, &req);
        assert_eq!(
            d.allowed, !matches,
            "#{i} DENY {rule} on {}: {}",
            req.path, d.reason
        );
    }
}

#[test]
fn deny_before_allow_and_the_empty_allow_rule() {
    let d = Req::default;
    let both = snap(&format!(
        "{}---\n{}",
        policy("allow-all", "ALLOW", "[{}]"),
        policy(
            "deny-post",
            "DENY",
            "[{to: [{operation: {methods: [POST]}}]}]"
        ),
    ));
    let r = decide(
        &both,
        &Req {
            method: "POST",
            ..d()
        },
    );
    assert!(!r.allowed);
    assert_eq!(r.policy.unwrap().name, "deny-post");
    assert_eq!(
        r.reason,
        "denied by AuthorizationPolicy shop/deny-post rule 0"
    );
    let r = decide(&both, &d());
    assert!(r.allowed);
    assert_eq!(r.policy.unwrap().name, "allow-all");

    // `spec: {}` is an ALLOW policy that matches nothing: deny all.
    let empty = snap(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-all, namespace: shop}\nspec: {}\n",
    );
    let r = decide(&empty, &d());
    assert!(!r.allowed);
    assert_eq!(r.reason, "no ALLOW policy matched");
    // ... and it applies to every workload of the namespace.
    assert!(!decide_on(&empty, "shop/other", &d()).allowed);

    // `rules: [{}]` matches everything.
    assert!(decide(&snap(&policy("p", "ALLOW", "[{}]")), &d()).allowed);
    // A DENY policy with no rules denies nothing; with `[{}]` everything.
    let r = decide(&snap(&policy("p", "DENY", "[]")), &d());
    assert!(r.allowed);
    assert_eq!(r.reason, "no ALLOW policy applies");
    assert!(!decide(&snap(&policy("p", "DENY", "[{}]")), &d()).allowed);

    // No policy at all: allow. A policy for another workload: allow.
    let s = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {methods: [PUT]}}]}]",
    ));
    assert!(!decide(&s, &d()).allowed);
    assert!(decide_on(&s, "shop/other", &d()).allowed);

    // Several ALLOW policies: any may allow.
    let s = snap(&format!(
        "{}---\n{}",
        policy("a", "ALLOW", "[{to: [{operation: {methods: [PUT]}}]}]"),
        policy("b", "ALLOW", "[{to: [{operation: {methods: [GET]}}]}]"),
    ));
    assert_eq!(decide(&s, &d()).policy.unwrap().name, "b");
}

#[test]
fn audit_never_changes_the_decision() {
    let d = Req::default;
    let audit = policy("audit", "AUDIT", "[{to: [{operation: {methods: [GET]}}]}]");
    for (extra, get_allowed) in [
        (String::new(), true),
        (policy("deny", "DENY", "[{}]"), false),
        (
            policy("allow", "ALLOW", "[{to: [{operation: {methods: [POST]}}]}]"),
            false,
        ),
        (policy("allow", "ALLOW", "[{}]"), true),
    ] {
        let with = snap(&format!("{audit}---\n{extra}"));
        let r = decide(&with, &d());
        assert_eq!(r.allowed, get_allowed, "{extra}");
        assert_eq!(r.audited_by.as_ref().unwrap().name, "audit");
        if !extra.is_empty() {
            let without = decide(&snap(&extra), &d());
            let name = |d: &AuthzDecision| d.policy.as_ref().map(|p| p.name.clone());
            assert_eq!((r.allowed, name(&r)), (without.allowed, name(&without)));
        }
        let post = decide(
            &with,
            &Req {
                method: "POST",
                ..d()
            },
        );
        assert_eq!(post.audited_by, None);
    }
    // An AUDIT policy alone is not an ALLOW policy: nothing is denied.
    assert!(
        decide(
            &snap(&audit),
            &Req {
                method: "POST",
                ..d()
            }
        )
        .allowed
    );
}

#[test]
fn no_identity_never_satisfies_principals_or_namespaces() {
    let plain = Req {
        peer: None,
        ..Req::default()
    };
    for rule in [
        "{from: [{source: {principals: [\"*\"]}}]}",
        "{from: [{source: {principals: [\"cluster.local/*\"]}}]}",
        "{from: [{source: {namespaces: [\"*\"]}}]}",
        "{from: [{source: {namespaces: [front]}}]}",
        "{when: [{key: source.principal, values: [\"*\"]}]}",
        "{when: [{key: source.namespace, values: [\"*\"]}]}",
    ] {
        let s = snap(&policy("p", "ALLOW", &format!("[{rule}]")));
        assert!(!decide(&s, &plain).allowed, "{rule}");
    }
    // An identity outside the /ns/<ns>/sa/<sa> shape has no namespace.
    let odd = Req {
        peer: Some("spiffe://cluster.local/job/42"),
        ..Req::default()
    };
    let s = snap(&policy(
        "p",
        "ALLOW",
        "[{from: [{source: {namespaces: [\"*\"]}}]}]",
    ));
    assert!(!decide(&s, &odd).allowed);
    let s = snap(&policy(
        "p",
        "ALLOW",
        "[{from: [{source: {principals: [\"*\"]}}]}]",
    ));
    assert!(decide(&s, &odd).allowed);
}

#[test]
fn root_namespace_policies_apply_everywhere() {
    let d = Req::default;
    let mesh_wide = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: mtls-only, namespace: istio-system}\nspec:\n  action: DENY\n  \
         rules: [{from: [{source: {notPrincipals: [\"*\"]}}]}]\n";
    let s = snap(mesh_wide);
    for w in ["shop/w", "shop/other"] {
        let r = decide_on(&s, w, &Req { peer: None, ..d() });
        assert!(!r.allowed, "{w}");
        assert_eq!(r.policy.unwrap().namespace, "istio-system");
        assert!(decide_on(&s, w, &d()).allowed);
    }
    // A selector in the root namespace picks workloads of every namespace.
    let selected = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: w-only, namespace: istio-system}\nspec:\n  \
         selector: {matchLabels: {app: w}}\n  action: DENY\n  rules: [{}]\n";
    let s = snap(selected);
    assert!(!decide_on(&s, "shop/w", &d()).allowed);
    assert!(decide_on(&s, "shop/other", &d()).allowed);
    // A policy in another namespace does not apply.
    let elsewhere = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: x, namespace: front}\nspec:\n  action: DENY\n  rules: [{}]\n";
    assert!(decide(&snap(elsewhere), &d()).allowed);
}

#[test]
fn repeated_headers_resolve_against_the_requester() {
    let d = Req::default;
    let deny = snap(&policy(
        "p",
        "DENY",
        "[{when: [{key: \"request.headers[x-role]\", values: [admin]}]}]",
    ));
    let allow = snap(&policy(
        "p",
        "ALLOW",
        "[{when: [{key: \"request.headers[x-role]\", values: [user]}]}]",
    ));
    let not_allow = snap(&policy(
        "p",
        "ALLOW",
        "[{when: [{key: \"request.headers[x-role]\", notValues: [admin]}]}]",
    ));
    let twice = d().header("x-role", "user").header("X-Role", "admin");
    assert!(!decide(&deny, &twice).allowed, "any value may deny");
    assert!(!decide(&allow, &twice).allowed, "every value must allow");
    assert!(
        !decide(&not_allow, &twice).allowed,
        "no value may be excluded"
    );
    let same = d().header("x-role", "user").header("x-role", "user");
    assert!(
        !decide(&allow, &same).allowed,
        "joined `user,user` is not `user`"
    );
    let one = d().header("x-role", "user");
    assert!(decide(&deny, &one).allowed);
    assert!(decide(&allow, &one).allowed);
    assert!(decide(&not_allow, &one).allowed);
    // The joined value is a reading too (it is what Envoy matches).
    let joined = snap(&policy(
        "p",
        "DENY",
        "[{when: [{key: \"request.headers[x-role]\", values: [\"user,admin\"]}]}]",
    ));
    assert!(
        !decide(
            &joined,
            &d().header("x-role", "user").header("x-role", "admin")
        )
        .allowed
    );
}

#[test]
fn crafted_paths_cannot_dodge_a_deny() {
    let deny = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {paths: [\"/admin*\"]}}]}]",
    ));
    let exact = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {paths: [/admin]}}]}]",
    ));
    let allow_public = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {paths: [\"/public/*\"]}}]}]",
    ));
    for path in [
        "/admin",
        "/Admin",
        "/ADMIN/users",
        "/./admin",
        "//admin",
        "///admin//x",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E%2Fadmin",
        "/public/..%2fadmin",
        "/public/..%5cadmin",
        "/%61dmin",
        "/%41dmin",
        "/adm%69n/",
        "/admin%2F",
        "/admin/",
        "\\admin",
        "/public\\..\\admin",
        "/admin;x",
        "/admin?x=1",
        "/../../admin",
        "/public/./../admin/.",
    ] {
        let req = Req {
            path,
            ..Req::default()
        };
        let r = decide(&deny, &req);
        assert!(!r.allowed, "{path} reached /admin*: {}", r.reason);
        assert!(
            !decide(&allow_public, &req).allowed,
            "{path} allowed as /public/*"
        );
    }
    for path in [
        "/admin",
        "/./admin",
        "/%61dmin",
        "/Admin",
        "/admin;jsessionid=1",
        "/public/..;x/../admin",
    ] {
        let req = Req {
            path,
            ..Req::default()
        };
        let r = decide(&exact, &req);
        assert!(!r.allowed, "{path} reached /admin: {}", r.reason);
    }
    // Paths that cannot be normalised are denied whatever the policies.
    let none = snap(&policy("p", "DENY", "[]"));
    for path in ["/admin%zz", "/admin%", "/a%00", "/..;/admin", "/a\u{1}"] {
        let req = Req {
            path,
            ..Req::default()
        };
        let r = decide(&none, &req);
        assert!(!r.allowed, "{path}");
        assert!(
            r.reason
                .to_string()
                .starts_with("the path cannot be normalised"),
            "{}",
            r.reason
        );
    }
    // And what should pass does.
    for path in ["/public/x", "/public/a/../b", "/public//x", "/public/%61"] {
        let req = Req {
            path,
            ..Req::default()
        };
        assert!(decide(&deny, &req).allowed, "{path}");
        assert!(decide(&allow_public, &req).allowed, "{path}");
    }
}

#[test]
fn case_is_resolved_against_the_requester() {
    let d = Req::default;
    // Paths compare case-sensitively as in Istio, so an ALLOW rule does not
    // allow another case ...
    let allow = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {paths: [\"/docs/*\"]}}]}]",
    ));
    assert!(
        decide(
            &allow,
            &Req {
                path: "/docs/a",
                ..d()
            }
        )
        .allowed
    );
    assert!(
        !decide(
            &allow,
            &Req {
                path: "/DOCS/a",
                ..d()
            }
        )
        .allowed
    );
    // ... but a DENY rule denies every case, and so does an ALLOW notPaths.
    let deny = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {paths: [\"/admin*\"]}}]}]",
    ));
    assert!(
        !decide(
            &deny,
            &Req {
                path: "/aDmIn",
                ..d()
            }
        )
        .allowed
    );
    let not = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {notPaths: [\"/admin*\"]}}]}]",
    ));
    assert!(
        !decide(
            &not,
            &Req {
                path: "/ADMIN",
                ..d()
            }
        )
        .allowed
    );
    assert!(
        decide(
            &not,
            &Req {
                path: "/public",
                ..d()
            }
        )
        .allowed
    );
    // A DENY notPaths: anything not exactly /public* is denied.
    let deny_not = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {notPaths: [\"/public*\"]}}]}]",
    ));
    assert!(
        decide(
            &deny_not,
            &Req {
                path: "/public/x",
                ..d()
            }
        )
        .allowed
    );
    assert!(
        !decide(
            &deny_not,
            &Req {
                path: "/PUBLIC/x",
                ..d()
            }
        )
        .allowed
    );
    // Methods the same way.
    let deny_delete = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {methods: [DELETE]}}]}]",
    ));
    assert!(
        !decide(
            &deny_delete,
            &Req {
                method: "delete",
                ..d()
            }
        )
        .allowed
    );
    let allow_get = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {methods: [GET]}}]}]",
    ));
    assert!(
        !decide(
            &allow_get,
            &Req {
                method: "get",
                ..d()
            }
        )
        .allowed
    );
}

#[test]
fn unknown_addresses_and_ports_resolve_against_the_requester() {
    let unknown = Req {
        src: None,
        dst: None,
        port: 0,
        ..Req::default()
    };
    for rule in [
        "{from: [{source: {ipBlocks: [10.9.0.0/16]}}]}",
        "{from: [{source: {notIpBlocks: [10.1.0.0/16]}}]}",
        "{to: [{operation: {ports: [\"9090\"]}}]}",
        "{to: [{operation: {notPorts: [\"8080\"]}}]}",
        "{when: [{key: source.ip, values: [10.9.0.0/16]}]}",
        "{when: [{key: destination.ip, notValues: [10.0.0.9]}]}",
        "{when: [{key: destination.port, values: [\"1\"]}]}",
    ] {
        let deny = snap(&policy("p", "DENY", &format!("[{rule}]")));
        assert!(!decide(&deny, &unknown).allowed, "DENY {rule}");
        let allow = snap(&policy("p", "ALLOW", &format!("[{rule}]")));
        assert!(!decide(&allow, &unknown).allowed, "ALLOW {rule}");
    }
}

#[test]
fn tcp_connections_follow_istios_tcp_rules() {
    let web = SpiffeId::parse("spiffe://cluster.local/ns/front/sa/web").unwrap();
    let conn = |peer| ConnectionInfo {
        peer,
        source_ip: Some("10.1.0.1".parse().unwrap()),
        destination_ip: Some("10.0.0.9".parse().unwrap()),
        destination_port: 3306,
        sni: Sni::Absent,
    };
    let tcp = |policies: &str, peer| {
        let s = snap(policies);
        let (_, w) = s.workload("shop/w").unwrap();
        evaluate_tcp(s.workload_policies(w), &conn(peer))
    };
    // L4 fields apply as for HTTP.
    let by_principal = policy(
        "p",
        "ALLOW",
        "[{from: [{source: {principals: [cluster.local/ns/front/sa/web]}}], to: [{operation: {ports: [\"3306\"]}}]}]",
    );
    assert!(tcp(&by_principal, Some(&web)).allowed);
    assert!(!tcp(&by_principal, None).allowed);
    let by_ns = policy(
        "p",
        "DENY",
        "[{from: [{source: {notNamespaces: [front]}}]}]",
    );
    assert!(tcp(&by_ns, Some(&web)).allowed);
    assert!(!tcp(&by_ns, None).allowed);
    let by_ip = policy(
        "p",
        "ALLOW",
        "[{from: [{source: {ipBlocks: [10.1.0.0/16]}}], when: [{key: destination.port, values: [\"3306\"]}]}]",
    );
    assert!(tcp(&by_ip, None).allowed);

    // A rule with HTTP-only fields never matches in ALLOW ...
    for http_only in [
        "{to: [{operation: {methods: [GET]}}]}",
        "{to: [{operation: {paths: [\"*\"]}}]}",
        "{to: [{operation: {hosts: [\"*\"], ports: [\"3306\"]}}]}",
        "{to: [{operation: {notPaths: [/x]}}]}",
        "{from: [{source: {principals: [\"*\"]}}], when: [{key: \"request.headers[x]\", values: [v]}]}",
    ] {
        let allow = policy("p", "ALLOW", &format!("[{http_only}]"));
        assert!(!tcp(&allow, Some(&web)).allowed, "ALLOW {http_only}");
        // ... and always matches in DENY (the rest of the rule still counts).
        let deny = policy("p", "DENY", &format!("[{http_only}]"));
        assert!(!tcp(&deny, Some(&web)).allowed, "DENY {http_only}");
    }
    let deny_other_ns = policy(
        "p",
        "DENY",
        "[{from: [{source: {namespaces: [back]}}], to: [{operation: {paths: [/admin]}}]}]",
    );
    assert!(
        tcp(&deny_other_ns, Some(&web)).allowed,
        "the source still has to match"
    );
    // An ALLOW policy whose only rule is HTTP-only leaves another rule to allow.
    let mixed = policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [front]}}]}]",
    );
    let r = tcp(&mixed, Some(&web));
    assert!(r.allowed);
    assert_eq!(r.rule, Some(1));
}

/// Round 2 of the attack run: `;` parameters on any segment, empty ones
/// included, read as Tomcat and Spring read them (cut, then merged).
#[test]
fn path_parameters_on_any_segment_cannot_dodge_a_deny() {
    let prefix = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {paths: [\"/admin*\"]}}]}]",
    ));
    let exact = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {paths: [/admin]}}]}]",
    ));
    let allow_public = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {paths: [\"/public/*\"]}}]}]",
    ));
    for path in [
        "/;x/admin",
        "/;/admin",
        "/;x;y/admin",
        "/%3B/admin",
        "/%3b/admin",
        "/%3Bx/admin",
        "/;x//admin",
        "//;x/admin",
        "/;x/;y/admin",
        "/;=/admin",
        "/a;x/../admin",
        "/public;x/../admin",
        "/x;/../admin",
        "/admin;",
        "/;x/admin;y",
        "/%3B%3B/admin",
        "/;x/%61dmin",
        "/;x/./admin",
        "/public/;x/../../admin",
        "/public%3B/../admin",
        "/;%2F/admin",
    ] {
        let req = Req {
            path,
            ..Req::default()
        };
        let r = decide(&exact, &req);
        assert!(!r.allowed, "{path} reached /admin: {}", r.reason);
        assert!(!decide(&prefix, &req).allowed, "{path} reached /admin*");
        assert!(
            !decide(&allow_public, &req).allowed,
            "{path} allowed as /public/*"
        );
    }
    // Parameters that change nothing still pass.
    let req = Req {
        path: "/admin;x/",
        ..Req::default()
    };
    assert!(!decide(&prefix, &req).allowed, "/admin;x/ reached /admin*");
    for path in ["/public/x;jsessionid=1", "/public;v=1/x", "/;x/public/y"] {
        let req = Req {
            path,
            ..Req::default()
        };
        assert!(decide(&prefix, &req).allowed, "{path}");
    }
    // An ALLOW needs every reading: `/public;v=1/x` is also read as it is.
    let req = Req {
        path: "/public/x;jsessionid=1",
        ..Req::default()
    };
    assert!(decide(&allow_public, &req).allowed);
}

/// Round 2: values with optional whitespace (which HTTP/2 carries) and
/// comma lists in one line are read as the application reads them.
#[test]
fn header_whitespace_and_lists_cannot_dodge_a_deny() {
    let d = Req::default;
    let deny = snap(&policy(
        "p",
        "DENY",
        "[{when: [{key: \"request.headers[x-role]\", values: [root]}]}]",
    ));
    let deny_prefix = snap(&policy(
        "p",
        "DENY",
        "[{when: [{key: \"request.headers[x-role]\", values: [\"adm*\"]}]}]",
    ));
    let allow = snap(&policy(
        "p",
        "ALLOW",
        "[{when: [{key: \"request.headers[x-role]\", values: [user]}]}]",
    ));
    for v in [
        " root",
        "root ",
        "root\t",
        "\troot",
        " \t root \t ",
        "user,root",
        "user, root",
        "root,user",
        "root , user",
        "user,\troot",
        "a, b, root, c",
        ",root",
        "root,",
    ] {
        let r = d().header("x-role", v);
        assert!(!decide(&deny, &r).allowed, "{v:?} passed DENY root");
        assert!(!decide(&allow, &r).allowed, "{v:?} allowed as user");
    }
    for v in [" admin", "user, admin", "admin\t,user"] {
        let r = d().header("x-role", v);
        assert!(!decide(&deny_prefix, &r).allowed, "{v:?} passed DENY adm*");
    }
    // Split across lines, with whitespace.
    let r = d().header("x-role", "user ").header("x-role", " root");
    assert!(!decide(&deny, &r).allowed);
    // What is only `user` is allowed, however it is spaced.
    for v in ["user", " user", "user\t", " user "] {
        let r = d().header("x-role", v);
        assert!(decide(&deny, &r).allowed, "{v:?}");
        assert!(decide(&allow, &r).allowed, "{v:?}");
    }
}

/// Round 2: a host is one host however it is spelled: its short and
/// partial names, case, a trailing dot and a port are one spelling, for
/// the policy's hosts and the request's.
#[test]
fn every_spelling_of_a_host_is_one_host() {
    const SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: w, namespace: shop}\n\
        spec: {hosts: [w.shop.svc.cluster.local], location: MESH_INTERNAL, resolution: STATIC,\n\
        ports: [{number: 8080, name: http, protocol: HTTP}], workloadSelector: {labels: {app: w}}}\n---\n";
    let deny_fqdn = snap(&format!(
        "{SERVICE}{}",
        policy(
            "p",
            "DENY",
            "[{to: [{operation: {hosts: [w.shop.svc.cluster.local]}}]}]"
        )
    ));
    let deny_short = snap(&format!(
        "{SERVICE}{}",
        policy("p", "DENY", "[{to: [{operation: {hosts: [w]}}]}]")
    ));
    let allow_short = snap(&format!(
        "{SERVICE}{}",
        policy("p", "ALLOW", "[{to: [{operation: {hosts: [w]}}]}]")
    ));
    for host in [
        "w",
        "W",
        "w:8080",
        "w.",
        "w.shop",
        "W.Shop:8080",
        "w.shop.svc",
        "w.shop.svc.cluster.local",
        "w.shop.svc.cluster.local.",
        "W.SHOP.SVC.CLUSTER.LOCAL.:8080",
    ] {
        let req = Req {
            host,
            ..Req::default()
        };
        assert!(!decide(&deny_fqdn, &req).allowed, "{host} passed DENY fqdn");
        assert!(
            !decide(&deny_short, &req).allowed,
            "{host} passed DENY short"
        );
        assert!(decide(&allow_short, &req).allowed, "{host} not allowed");
    }
    for host in ["other", "w.other", "w.shop.svc.cluster.local.evil", "ww"] {
        let req = Req {
            host,
            ..Req::default()
        };
        assert!(decide(&deny_fqdn, &req).allowed, "{host}");
        assert!(!decide(&allow_short, &req).allowed, "{host}");
    }
    // An IP address stands for the services of the workload.
    let (i, w) = deny_fqdn.workload("shop/w").unwrap();
    let aliases = deny_fqdn.hosts_served_by(i);
    assert_eq!(aliases, ["w.shop.svc.cluster.local"]);
    let req = AuthzRequest {
        peer: None,
        source_ip: None,
        remote_ip: None,
        destination_ip: None,
        destination_port: 8080,
        host: "10.0.0.9:8080",
        host_aliases: aliases,
        method: "GET",
        path: "/",
        headers: None,
        auth: None,
        sni: Sni::Absent,
    };
    assert!(!evaluate(deny_fqdn.workload_policies(w), &req).allowed);
    assert!(!evaluate(allow_short.workload_policies(w), &req).allowed);
}

mod paths_as_apps_read_them {
    //! A property: whatever the encoding, a path an application would
    //! serve as `/admin...` never passes `DENY /admin*`, and normalising is
    //! idempotent. The model of the application is written here, apart from
    //! the mesh's code: decode once, cut `;` parameters from every segment,
    //! map `\` to `/`, merge slashes, resolve dot segments.
    use super::*;
    use proptest::prelude::*;

    fn app_reads(raw: &str) -> String {
        let mut bytes = Vec::new();
        let b = raw.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 3], 16) {
                    bytes.push(v);
                    i += 3;
                    continue;
                }
            }
            bytes.push(b[i]);
            i += 1;
        }
        let decoded = String::from_utf8_lossy(&bytes).replace('\\', "/");
        let mut out: Vec<&str> = Vec::new();
        for seg in decoded.split('/') {
            let seg = seg.split(';').next().unwrap_or(seg);
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s => out.push(s),
            }
        }
        format!("/{}", out.join("/"))
    }

    fn token() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/", "//", "admin", "Admin", "%61dmin", "adm%69n", "public", ";", ";x", ";a=b", "%3B",
            "%3b", ".", "..", "%2e", "%2E%2E", "%2F", "%2f", "\\", "%5C", "x", ".;", "..;",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn no_encoding_of_a_denied_path_is_served(tokens in prop::collection::vec(token(), 1..9)) {
            let path = format!("/{}", tokens.concat());
            let deny = snap(&policy("p", "DENY", "[{to: [{operation: {paths: [\"/admin*\"]}}]}]"));
            let served = app_reads(&path);
            if let Ok(n) = mesh_core::normalize::normalize_path(&path) {
                prop_assert_eq!(mesh_core::normalize::normalize_path(&n).unwrap(), n.clone());
            }
            if served.to_ascii_lowercase().starts_with("/admin") {
                let req = Req { path: Box::leak(path.clone().into_boxed_str()), ..Req::default() };
                let r = decide(&deny, &req);
                prop_assert!(!r.allowed, "{} (served as {}) passed: {}", path, served, r.reason);
            }
        }
    }
}

/// Path templates (Istio 1.22's `{*}` one segment, `{**}` any run of
/// segments, as Envoy's uri_template matches them): matched on the
/// normalised path; a DENY's
/// template also matches in any case, and crafted spellings do not dodge
/// it.
#[test]
fn path_templates_match_whole_segments() {
    let allow = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {paths: [\"/api/{*}/items\", \"/static/{**}\"]}}]}]",
    ));
    for (path, allowed) in [
        ("/api/v1/items", true),
        ("/api/v2/items", true),
        ("/api/v1/items/3", false),
        ("/api//items", false),
        ("/api/items", false),
        ("/api/v1/x/items", false),
        ("/static/app.js", true),
        ("/static/css/site.css", true),
        // Envoy's `**` is `[pchar/]*`: it may be empty.
        ("/static/", true),
        ("/static", false),
        ("/API/v1/items", false),
        ("/api/v1/../v2/items", true),
        ("/other/v1/items", false),
    ] {
        let r = Req {
            path,
            ..Req::default()
        };
        assert_eq!(decide(&allow, &r).allowed, allowed, "ALLOW {path}");
    }
    let deny = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {paths: [\"/admin/{**}\", \"/users/{*}/secrets\"]}}]}]",
    ));
    for (path, denied) in [
        ("/admin/x", true),
        ("/admin/x/y", true),
        ("/ADMIN/x", true),
        ("/public/../admin/x", true),
        ("/%61dmin/x", true),
        ("/admin;x/y", true),
        ("//admin//x", true),
        ("/admin", false),
        ("/users/7/secrets", true),
        ("/Users/7/SECRETS", true),
        ("/users/7/secrets/", false),
        ("/users/7/public", false),
    ] {
        let r = Req {
            path,
            ..Req::default()
        };
        assert_eq!(!decide(&deny, &r).allowed, denied, "DENY {path}");
    }
}

#[test]
fn malformed_path_templates_are_refused_by_field() {
    for (path, words) in [
        ("/a/{*}x", "a segment is a literal"),
        ("/{**}/{*}", "must be the last operator"),
        ("/{**}/a/{**}", "must be the last operator"),
        ("/a{*}", "a segment is a literal"),
        ("{*}/a", "starts with /"),
        ("/a/{*}*", "a segment is a literal"),
    ] {
        let yaml = format!(
            "{WORKLOAD}---\n{}",
            policy(
                "p",
                "ALLOW",
                &format!("[{{to: [{{operation: {{paths: [\"{path}\"]}}}}]}}]")
            )
        );
        let e = load_str(Path::new("t.yaml"), &yaml)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spec.rules[0].to[0].operation.paths[0]") && e.contains(words),
            "{path}: {e}"
        );
    }
    // A template anywhere but paths is refused too.
    let yaml = format!(
        "{WORKLOAD}---\n{}",
        policy(
            "p",
            "ALLOW",
            "[{to: [{operation: {hosts: [\"{*}.example.com\"]}}]}]"
        )
    );
    let e = load_str(Path::new("t.yaml"), &yaml)
        .unwrap_err()
        .to_string();
    assert!(e.contains("for paths only"), "{e}");
}

/// `{**}` before literals (`/{**}/path/template`, as Istio's own test data
/// writes it): Envoy's uri_template `/**/path/template`, the regex
/// `/[pchar/]*/path/template`.
#[test]
fn path_templates_with_a_multi_segment_glob_before_literals() {
    let allow = snap(&policy(
        "p",
        "ALLOW",
        "[{to: [{operation: {paths: [\"/{**}/path/template\", \"/a/{*}/{**}/z.js\"]}}]}]",
    ));
    for (path, allowed) in [
        ("/x/path/template", true),
        ("/x/y/z/path/template", true),
        ("/path/template", false),
        ("/x/path/template/", false),
        ("/x/path/templatex", false),
        ("/x/path/Template", false),
        ("/x/other/template", false),
        // `/a/*/**/z.js`: a segment, then `**` between two slashes.
        ("/a/b/z.js", false),
        ("/a/b/c/z.js", true),
        ("/a/b/c/d/z.js", true),
        ("/a/z.js", false),
        ("/a//z.js", false),
        ("/b/c/z.js", false),
        ("/a/b/z.jsx", false),
        ("/a/b/c/x.js", false),
        ("/x/a*b/path/template", false),
    ] {
        let r = Req {
            path,
            ..Req::default()
        };
        assert_eq!(decide(&allow, &r).allowed, allowed, "ALLOW {path}");
    }
    // A DENY's template matches in any case too, and through crafted
    // spellings.
    let deny = snap(&policy(
        "p",
        "DENY",
        "[{to: [{operation: {paths: [\"/{**}/secret\"]}}]}]",
    ));
    for (path, denied) in [
        ("/a/secret", true),
        ("/a/b/SECRET", true),
        ("/a/%73ecret", true),
        ("/a/x/../secret", true),
        ("/secret", false),
        ("/a/secret/x", false),
        ("/a/public", false),
    ] {
        let r = Req {
            path,
            ..Req::default()
        };
        assert_eq!(!decide(&deny, &r).allowed, denied, "DENY {path}");
    }
}

/// `request.headers[:method]`: Envoy's header matcher sees the pseudo-
/// header, so the condition is on the request's method.
#[test]
fn method_pseudo_header_conditions() {
    let deny = snap(&policy(
        "p",
        "DENY",
        "[{when: [{key: \"request.headers[:method]\", values: [DELETE, \"PO*\"]}]}]",
    ));
    for (method, denied) in [
        ("DELETE", true),
        ("POST", true),
        ("GET", false),
        ("PUT", false),
    ] {
        let r = Req {
            method,
            ..Req::default()
        };
        assert_eq!(!decide(&deny, &r).allowed, denied, "DENY {method}");
    }
    let allow = snap(&policy(
        "p",
        "ALLOW",
        "[{when: [{key: \"request.headers[:method]\", notValues: [GET]}]}]",
    ));
    for (method, allowed) in [("GET", false), ("POST", true)] {
        let r = Req {
            method,
            ..Req::default()
        };
        assert_eq!(decide(&allow, &r).allowed, allowed, "ALLOW {method}");
    }
    // The other pseudo-headers are refused by name.
    let yaml = format!(
        "{WORKLOAD}---\n{}",
        policy(
            "p",
            "ALLOW",
            "[{when: [{key: \"request.headers[:path]\", values: [\"/x\"]}]}]"
        )
    );
    let e = load_str(Path::new("t.yaml"), &yaml)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.rules[0].when[0].key") && e.contains("only `:method`"),
        "{e}"
    );
}

/// Envoy metadata keys (`experimental.envoy.filters.*`) and paths that are
/// neither absolute nor `*` patterns load, as in Istio, and match nothing
/// here: an ALLOW rule on them admits nothing, a DENY rule denies nothing;
/// a notValues on metadata that is never there always holds.
#[test]
fn conditions_that_never_match_here() {
    let meta = "{key: 'experimental.envoy.filters.a.b[c]', values: [x]}";
    let allow = snap(&policy("p", "ALLOW", &format!("[{{when: [{meta}]}}]")));
    assert!(!decide(&allow, &Req::default()).allowed);
    let deny = snap(&policy("p", "DENY", &format!("[{{when: [{meta}]}}]")));
    assert!(decide(&deny, &Req::default()).allowed);
    let not_meta = "{key: 'experimental.envoy.filters.a.b[c]', notValues: [x]}";
    let deny_not = snap(&policy("p", "DENY", &format!("[{{when: [{not_meta}]}}]")));
    assert!(!decide(&deny_not, &Req::default()).allowed);

    let path = "[{to: [{operation: {paths: [\"rule[0]-to[0]-path[1]\"]}}]}]";
    let allow = snap(&policy("p", "ALLOW", path));
    let deny = snap(&policy("p", "DENY", path));
    for p in ["/", "/rule[0]-to[0]-path[1]", "/x"] {
        let r = Req {
            path: p,
            ..Req::default()
        };
        assert!(!decide(&allow, &r).allowed, "ALLOW {p}");
        assert!(decide(&deny, &r).allowed, "DENY {p}");
    }
    // Malformed metadata keys are refused.
    let yaml = format!(
        "{WORKLOAD}---\n{}",
        policy(
            "p",
            "ALLOW",
            "[{when: [{key: 'experimental.envoy.filters.a', values: [x]}]}]"
        )
    );
    let e = load_str(Path::new("t.yaml"), &yaml)
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.rules[0].when[0].key"), "{e}");
}
