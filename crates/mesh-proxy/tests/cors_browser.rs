//! CORS as a browser enforces it: headless Chromium (Debian's `chromium`,
//! driven by playwright-core: `tests/browser/`) loads a page from one
//! origin whose script calls an API behind the gateway on another, with a
//! credentialed `PUT` and custom headers (so the browser sends a
//! preflight). The VirtualService's `corsPolicy` allows one page origin:
//! its call goes through and the script reads the answer and an exposed
//! header; the other origin's script is refused by the browser, and its
//! `PUT` never reaches the app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Command;

use mesh_tower::server::ServerSettings;
use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A page at `/` whose script `PUT`s to `api` and leaves what it could
/// read in `window.results`.
async fn page_server(api: String, path: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let html = format!(
        r#"<!doctype html><html><body><script>
(async () => {{
  const out = {{}};
  try {{
    const r = await fetch("{api}{path}", {{
      method: "PUT", credentials: "include", body: "{{}}",
      headers: {{"content-type": "application/json", "x-token": "t-1"}},
    }});
    out.status = r.status;
    out.body = await r.text();
    out.exposed = r.headers.get("x-backend-name");
    out.hidden = r.headers.get("x-internal");
  }} catch (e) {{
    out.error = String(e);
  }}
  window.results = out;
}})();
</script></body></html>"#
    );
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let html = html.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let html = html.clone();
                    async move {
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(html),
                        ));
                        resp.headers_mut()
                            .insert("content-type", http::HeaderValue::from_static("text/html"));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_reads_the_api_from_the_allowed_origin_only() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let driver = repo().join("tests/browser/node_modules/playwright-core");
    if !std::path::Path::new(&chromium).exists() || !driver.exists() {
        eprintln!(
            "\n*** SKIPPED CORS in a browser: needs {chromium} (Debian's chromium) and {} \
             (npm ci --prefix tests/browser); .ci/run installs both ***\n",
            driver.display()
        );
        return;
    }
    let world = World::new();
    let (app, seen) = counting_app().await;
    let inbound = bound();
    let edge = bound();
    let edge_port = edge.local_addr().port();
    let api = format!("http://localhost:{edge_port}");
    let allowed = page_server(api.clone(), "/api/allowed").await;
    let other = page_server(api, "/api/denied").await;
    world.write_config(
        "mesh.yaml",
        &format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge}}\n\
             spec: {{selector: {{istio: ingressgateway}}, servers: [{{port: {{number: {edge_port}, name: http, protocol: HTTP}}, hosts: [localhost]}}]}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\n\
             spec:\n  hosts: [localhost]\n  gateways: [edge]\n  http:\n  - route: [{{destination: {{host: web}}}}]\n\
             \x20   headers: {{response: {{set: {{x-backend-name: web, x-internal: secret}}}}}}\n\
             \x20   corsPolicy:\n      allowOrigins: [{{exact: 'http://127.0.0.1:{allowed}'}}]\n\
             \x20     allowMethods: [PUT, GET]\n      allowHeaders: [content-type, x-token]\n\
             \x20     exposeHeaders: [x-backend-name]\n      maxAge: 60s\n      allowCredentials: true\n",
            mesh_config(inbound.local_addr().port(), "STRICT")
        ),
    );
    let web = start_sidecar(
        &world,
        inbound,
        app,
        files_identity(&world, "web"),
        ServerSettings::default(),
        TEARDOWN_DRAIN,
    )
    .await;
    web.ready().await;
    let gateway = ready_gateway(&world, vec![edge]).await;

    let pages = [
        format!("http://127.0.0.1:{allowed}/"),
        format!("http://127.0.0.1:{other}/"),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(repo().join("tests/browser/cors.mjs"))
            .args(&pages)
            .output()
            .expect("running node")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ok = &shown[format!("http://127.0.0.1:{allowed}/")]["results"];
    let refused = &shown[format!("http://127.0.0.1:{other}/")]["results"];

    // The allowed origin's script reads the answer and the exposed header,
    // not the one the policy does not expose.
    assert_eq!(ok["status"], 200, "{shown}");
    assert_eq!(ok["body"], "ok 2", "{shown}");
    assert_eq!(ok["exposed"], "web", "{shown}");
    assert_eq!(ok["hidden"], serde_json::Value::Null, "{shown}");
    // The other origin's script gets nothing: the browser refused it.
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{shown}"
    );
    // At the app: the allowed PUT once (its preflight was the gateway's to
    // answer), with its headers; for the other origin only the forwarded
    // preflight (FORWARD), never its PUT.
    let paths = seen.paths();
    assert_eq!(
        paths.iter().filter(|p| *p == "/api/allowed").count(),
        1,
        "{paths:?}"
    );
    assert_eq!(
        paths.iter().filter(|p| *p == "/api/denied").count(),
        1,
        "{paths:?}"
    );
    let headers = seen.headers();
    let put = paths.iter().position(|p| p == "/api/allowed").unwrap();
    assert_eq!(headers[put]["x-token"], "t-1");
    let preflight = paths.iter().position(|p| p == "/api/denied").unwrap();
    assert!(headers[preflight].contains_key("access-control-request-method"));
    gateway.shutdown().await;
    web.shutdown().await;
}
