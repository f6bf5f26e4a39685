//! RequestAuthentication in the authorization layer, against a real key
//! server (HTTP and HTTPS on loopback, port 0): the first token waits for
//! the issuer's key set, a rotated key is fetched on its first token, the
//! last good set outlives an outage, a bad token gets 401 with the reason,
//! and the headers the rules write are only ever the mesh's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use mesh_core::jwt::{Algorithm, sign_for_test, test_es256_key};
use mesh_core::store::Store;
use mesh_tower::authz::{AuthorizeLayer, LocalWorkload};
use mesh_tower::body::{BoxBody, full};
use mesh_tower::error::REASON_HEADER;
use mesh_tower::jwks::{JwksCache, JwksSettings};
use serde_json::json;
use tower::{Layer, ServiceExt};

/// A key server: `/jwks` answers the current set (or 500 while `broken`),
/// `/.well-known/openid-configuration` points at it. Counts `/jwks` hits.
#[derive(Clone)]
struct KeyServer {
    jwks: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    /// Milliseconds `/jwks` waits before answering.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    base: String,
}

impl KeyServer {
    async fn start(jwks: &str, tls: Option<&support::TestPki>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tls.map(|pki| {
            let (chain, key) = pki.raw_leaf(vec![support::dns("localhost")]);
            let config =
                rustls::ServerConfig::builder_with_provider(mesh_ca::tls::crypto_provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let base = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let this = Self {
            jwks: Arc::new(Mutex::new(jwks.to_owned())),
            hits: Arc::default(),
            broken: Arc::default(),
            delay_ms: Arc::default(),
            base,
        };
        let server = this.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (server, acceptor) = (server.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let server = server.clone();
                            async move {
                                let ms = server.delay_ms.load(Ordering::SeqCst);
                                if ms > 0 && req.uri().path() == "/jwks" {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                Ok::<_, Infallible>(server.answer(req.uri().path()))
                            }
                        });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                                    .await;
                            }
                        }
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                                .await;
                        }
                    }
                });
            }
        });
        this
    }

    fn answer(&self, path: &str) -> Response<BoxBody> {
        let mut resp = match path {
            "/jwks" => {
                self.hits.fetch_add(1, Ordering::SeqCst);
                if self.broken.load(Ordering::SeqCst) {
                    let mut r = Response::new(full("down"));
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    return r;
                }
                Response::new(full(self.jwks.lock().unwrap().clone()))
            }
            "/.well-known/openid-configuration" => Response::new(full(
                json!({"issuer": self.base, "jwks_uri": format!("{}/jwks", self.base)}).to_string(),
            )),
            _ => {
                let mut r = Response::new(full("no"));
                *r.status_mut() = StatusCode::NOT_FOUND;
                r
            }
        };
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }

    fn set(&self, jwks: &str) {
        *self.jwks.lock().unwrap() = jwks.to_owned();
    }
}

/// Workload `shop/api`, tokens of `issuer` per `rule` (YAML fields of the
/// jwtRule beside `issuer`), `/admin` only for a request principal.
fn store(issuer: &str, rule: &str) -> Arc<Store> {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api, namespace: shop}}
spec: {{address: 10.0.0.9, labels: {{app: api}}, serviceAccount: api}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: shop}}
spec:
  jwtRules:
  - issuer: "{issuer}"
{rule}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: admin-needs-token, namespace: shop}}
spec:
  action: DENY
  rules: [{{from: [{{source: {{notRequestPrincipals: ["*"]}}}}], to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
"#
    );
    let store = Arc::new(Store::new());
    store
        .apply(mesh_core::load::load_str(Path::new("jwt.yaml"), &yaml))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    store
}

/// The app: answers with the request headers it saw, one `name: value`
/// per line.
fn app() -> tower::util::BoxCloneSyncService<Request<()>, Response<BoxBody>, Infallible> {
    tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Request<()>| async move {
        let mut seen: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        seen.sort();
        Ok::<_, Infallible>(Response::new(full(seen.join("\n"))))
    }))
}

type Svc = tower::util::BoxCloneSyncService<Request<()>, Response<BoxBody>, Infallible>;

fn service(store: Arc<Store>, cache: Arc<JwksCache>) -> Svc {
    // Boxed, as every stack of the mesh boxes it.
    tower::util::BoxCloneSyncService::new(
        AuthorizeLayer::new(store, LocalWorkload::named("shop/api"))
            .with_jwks(cache)
            .layer(app()),
    )
}

fn cache() -> Arc<JwksCache> {
    JwksCache::new(JwksSettings {
        min_refetch: Duration::ZERO,
        ..JwksSettings::default()
    })
}

struct Answer {
    status: StatusCode,
    reason: String,
    www: Option<String>,
    body: String,
}

async fn send(svc: &Svc, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::get(path).header("host", "api.shop.svc.cluster.local");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
    let (reason, www) = {
        let h = |n| {
            resp.headers()
                .get(n)
                .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned())
        };
        (h(REASON_HEADER).unwrap_or_default(), h("www-authenticate"))
    };
    Answer {
        status: resp.status(),
        reason,
        www,
        body: String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(iss: &str, kid: &str, der: &[u8], extra: serde_json::Value) -> String {
    let mut claims = json!({"iss": iss, "sub": "alice", "exp": now() + 600});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    sign_for_test(Algorithm::ES256, Some(kid), der, &claims).unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn first_tokens_wait_for_one_fetch_and_bad_tokens_get_401() {
    let (k1, jwks) = test_es256_key("k1").unwrap();
    let keys = KeyServer::start(&jwks, None).await;
    let iss = keys.base.clone();
    let svc = service(
        store(&iss, &format!("    jwksUri: {}/jwks", keys.base)),
        cache(),
    );
    let good = bearer(&token(&iss, "k1", &k1, json!({})));
    // Eight first requests at once: all wait for the same fetch.
    let answers = futures_join(&svc, "/admin/users", &good, 8).await;
    assert!(answers.iter().all(|s| *s == StatusCode::OK), "{answers:?}");
    assert_eq!(
        keys.hits.load(Ordering::SeqCst),
        1,
        "one fetch for all of them"
    );
    // No token: authenticated as nobody; the policy decides.
    assert_eq!(send(&svc, "/public", &[]).await.status, StatusCode::OK);
    let a = send(&svc, "/admin", &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.reason);
    // Bad tokens: 401, the reason said, RFC 6750's challenge.
    let expired = bearer(&token(&iss, "k1", &k1, json!({"exp": now() - 300})));
    let (other, _) = test_es256_key("k1").unwrap();
    let forged = bearer(&token(&iss, "k1", &other, json!({})));
    let stranger = bearer(&token("https://evil.example", "k1", &k1, json!({})));
    for (t, why) in [
        (&expired, "Jwt is expired"),
        (&forged, "Jwt verification fails"),
        (&stranger, "Jwt issuer is not configured"),
    ] {
        for path in ["/public", "/admin"] {
            let a = send(&svc, path, &[("authorization", t)]).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path} {why}");
            assert_eq!(a.reason, why);
            assert_eq!(a.www.as_deref(), Some("Bearer error=\"invalid_token\""));
        }
    }
    assert_eq!(
        keys.hits.load(Ordering::SeqCst),
        1,
        "known kids need no fetch"
    );
}

async fn futures_join(svc: &Svc, path: &str, auth: &str, n: usize) -> Vec<StatusCode> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let req = Request::get(path)
            .header("host", "api.shop.svc.cluster.local")
            .header("authorization", auth)
            .body(())
            .unwrap();
        let fut = svc.clone().oneshot(req);
        tasks.push(tokio::spawn(async move { fut.await.unwrap().status() }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_first_token_and_an_outage_keeps_the_last_good_set() {
    let (k1, jwks1) = test_es256_key("k1").unwrap();
    let (k2, jwks2) = test_es256_key("k2").unwrap();
    let keys = KeyServer::start(&jwks1, None).await;
    let iss = keys.base.clone();
    let svc = service(
        store(&iss, &format!("    jwksUri: {}/jwks", keys.base)),
        cache(),
    );
    let t1 = bearer(&token(&iss, "k1", &k1, json!({})));
    let t2 = bearer(&token(&iss, "k2", &k2, json!({})));
    assert_eq!(
        send(&svc, "/admin", &[("authorization", &t1)]).await.status,
        StatusCode::OK
    );
    // The issuer rotates to k2: its first token makes the proxy look again.
    keys.set(&jwks2);
    assert_eq!(
        send(&svc, "/admin", &[("authorization", &t2)]).await.status,
        StatusCode::OK
    );
    assert_eq!(keys.hits.load(Ordering::SeqCst), 2);
    // k1 is gone from the set: its tokens no longer verify.
    let a = send(&svc, "/admin", &[("authorization", &t1)]).await;
    assert_eq!(
        (a.status, a.reason.as_str()),
        (
            StatusCode::UNAUTHORIZED,
            "Jwks doesn't have key to match kid or alg from Jwt"
        )
    );
    // The key server goes down: a token of an unknown kid makes the
    // proxy try, the try fails, the kept set still serves k2.
    keys.broken.store(true, Ordering::SeqCst);
    let (k3, _) = test_es256_key("k3").unwrap();
    let t3 = bearer(&token(&iss, "k3", &k3, json!({})));
    assert_eq!(
        send(&svc, "/admin", &[("authorization", &t3)]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&svc, "/admin", &[("authorization", &t2)]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_issuer_whose_keys_cannot_be_fetched_gets_no_request_through() {
    let (k1, jwks) = test_es256_key("k1").unwrap();
    let keys = KeyServer::start(&jwks, None).await;
    keys.broken.store(true, Ordering::SeqCst);
    let iss = keys.base.clone();
    let svc = service(
        store(&iss, &format!("    jwksUri: {}/jwks", keys.base)),
        cache(),
    );
    let t = bearer(&token(&iss, "k1", &k1, json!({})));
    for path in ["/public", "/admin"] {
        let a = send(&svc, path, &[("authorization", &t)]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        // Envoy's words; the key server's address and error go to the
        // log, not to an unauthenticated client.
        assert_eq!(a.reason, "Jwks remote fetch is failed", "{path}");
    }
    // Requests without a token do not depend on the issuer.
    assert_eq!(send(&svc, "/public", &[]).await.status, StatusCode::OK);
    // A key server nobody listens on: refused too, within the timeout.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let svc = service(
        store(
            &iss,
            &format!("    jwksUri: http://127.0.0.1:{dead}/jwks\n    timeout: 2s"),
        ),
        cache(),
    );
    assert_eq!(
        send(&svc, "/public", &[("authorization", &t)]).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_rules_output_headers_are_only_ever_the_meshs() {
    let (k1, jwks) = test_es256_key("k1").unwrap();
    let keys = KeyServer::start(&jwks, None).await;
    let iss = keys.base.clone();
    let rule = format!(
        "    jwksUri: {}/jwks\n    outputPayloadToHeader: x-jwt-payload\n    outputClaimToHeaders: [{{header: x-user, claim: sub}}, {{header: x-team, claim: org.team}}]",
        keys.base
    );
    let svc = service(store(&iss, &rule), cache());
    let t = token(&iss, "k1", &k1, json!({"org": {"team": "blue"}}));
    let a = send(
        &svc,
        "/x",
        &[
            ("authorization", &bearer(&t)),
            ("x-user", "root"),
            ("x-jwt-payload", "forged"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let payload = t.split('.').nth(1).unwrap();
    assert!(
        a.body.contains(&format!("x-jwt-payload: {payload}")),
        "{}",
        a.body
    );
    assert!(
        a.body.contains("x-user: alice") && !a.body.contains("root"),
        "{}",
        a.body
    );
    assert!(a.body.contains("x-team: blue"), "{}", a.body);
    assert!(
        !a.body.contains("authorization"),
        "the token is not forwarded by default: {}",
        a.body
    );
    // Without a token, a client's own x-user is removed, not passed on.
    let a = send(
        &svc,
        "/x",
        &[("x-user", "root"), ("x-jwt-payload", "forged")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        !a.body.contains("x-user") && !a.body.contains("forged"),
        "{}",
        a.body
    );
    // forwardOriginalToken keeps it.
    let svc = service(
        store(
            &iss,
            &format!(
                "    jwksUri: {}/jwks\n    forwardOriginalToken: true",
                keys.base
            ),
        ),
        cache(),
    );
    let a = send(&svc, "/x", &[("authorization", &bearer(&t))]).await;
    assert!(
        a.body.contains(&format!("authorization: Bearer {t}")),
        "{}",
        a.body
    );
}

#[tokio::test]
async fn keys_found_by_openid_discovery_and_over_https() {
    let (k1, jwks) = test_es256_key("k1").unwrap();
    // No jwks, no jwksUri: the issuer's discovery document names the set.
    let keys = KeyServer::start(&jwks, None).await;
    let iss = keys.base.clone();
    let svc = service(store(&iss, ""), cache());
    let t = bearer(&token(&iss, "k1", &k1, json!({})));
    assert_eq!(
        send(&svc, "/admin", &[("authorization", &t)]).await.status,
        StatusCode::OK
    );
    assert_eq!(keys.hits.load(Ordering::SeqCst), 1);

    // HTTPS: verified against the roots given; the system's do not know
    // this CA, so there the fetch fails and tokens are refused.
    let pki = support::TestPki::new("cluster.local");
    let keys = KeyServer::start(&jwks, Some(&pki)).await;
    let iss = keys.base.clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.root()).unwrap();
    let trusted = JwksCache::new(JwksSettings {
        roots: Some(Arc::new(roots)),
        ..JwksSettings::default()
    });
    let cfg = format!("    jwksUri: {}/jwks", keys.base);
    let t = bearer(&token(&iss, "k1", &k1, json!({})));
    let a = send(
        &service(store(&iss, &cfg), trusted),
        "/admin",
        &[("authorization", &t)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.reason);
    let untrusted = cache();
    let a = send(
        &service(store(&iss, &cfg), untrusted.clone()),
        "/admin",
        &[("authorization", &t)],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // The cause is kept for the log and the cache's status, not the client.
    let why = untrusted
        .last_error(&format!("{}/jwks", keys.base))
        .unwrap();
    assert!(why.contains("TLS"), "{why}");
}

/// A request that gives up while the first fetch is on its way (its client
/// hung up) does not cancel that fetch: the next request finds the keys,
/// without waiting out the refetch interval, and one fetch was made.
#[tokio::test]
async fn a_waiter_that_goes_away_does_not_cancel_the_fetch() {
    let (k1, jwks) = test_es256_key("k1").unwrap();
    let keys = KeyServer::start(&jwks, None).await;
    keys.delay_ms.store(300, Ordering::SeqCst);
    let iss = keys.base.clone();
    // The default settings: one fetch per 5 s at most.
    let svc = service(
        store(&iss, &format!("    jwksUri: {}/jwks", keys.base)),
        JwksCache::new(JwksSettings::default()),
    );
    let t = bearer(&token(&iss, "k1", &k1, json!({})));
    let gone = tokio::time::timeout(
        Duration::from_millis(50),
        send(&svc, "/admin", &[("authorization", &t)]),
    )
    .await;
    assert!(gone.is_err(), "the first request was to give up");
    let a = send(&svc, "/admin", &[("authorization", &t)]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.reason);
    assert_eq!(keys.hits.load(Ordering::SeqCst), 1);
}

/// Where header names with underscores are let through, the rules' output
/// headers and the token's own header are removed in every spelling an
/// application reads as theirs (`x_jwt_payload` is `HTTP_X_JWT_PAYLOAD`).
#[tokio::test]
async fn output_headers_cannot_be_spoofed_with_underscores() {
    let (k1, jwks) = test_es256_key("k1").unwrap();
    let keys = KeyServer::start(&jwks, None).await;
    let iss = keys.base.clone();
    let rule = format!(
        "    jwksUri: {}/jwks\n    fromHeaders: [{{name: x-jwt}}]\n    outputPayloadToHeader: x-jwt-payload\n---\napiVersion: mesh.config/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh}}\nspec: {{headersWithUnderscoresAction: ALLOW}}",
        keys.base
    );
    let svc = service(store(&iss, &rule), cache());
    let t = token(&iss, "k1", &k1, json!({}));
    let a = send(&svc, "/x", &[("x_jwt_payload", "forged"), ("x-user", "u")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.body.contains("forged"), "{}", a.body);
    let a = send(&svc, "/x", &[("x_jwt", &t)]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.reason);
    assert!(
        !a.body.contains(&t[..20]) || a.body.contains("x-jwt-payload"),
        "{}",
        a.body
    );
    assert!(
        !a.body.contains("x_jwt:"),
        "the token's header is removed: {}",
        a.body
    );
}

#[tokio::test]
async fn a_required_issuer_gets_no_request_without_its_token_through() {
    let (k1, jwks) = test_es256_key("k1").unwrap();
    let iss = "https://idp.example";
    let rule = format!(
        "    jwks: {}\n    presence: REQUIRED",
        serde_json::to_string(&jwks).unwrap()
    );
    let svc = service(store(iss, &rule), cache());
    // No token: refused before any policy, with Envoy's reason.
    for path in ["/public", "/admin"] {
        let a = send(&svc, path, &[]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(a.reason, "Jwt is missing");
    }
    // A token in a place the rule does not read is no token either.
    let good = token(iss, "k1", &k1, json!({}));
    let a = send(&svc, "/public", &[("x-token", &good)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.reason, "Jwt is missing");
    // With the token: through, and the app never sees it.
    let a = send(&svc, "/admin", &[("authorization", &bearer(&good))]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.reason);
    assert!(!a.body.contains("authorization:"), "{}", a.body);
}
