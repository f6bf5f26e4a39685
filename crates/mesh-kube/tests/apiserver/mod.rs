//! An in-test HTTP server playing the Kubernetes API server's part for the
//! requests kube-rs makes, answering with JSON shaped as the API reference
//! gives it: lists with `metadata.resourceVersion`, watch streams of
//! newline-delimited `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`/`ERROR` events,
//! `410 Gone` (an `ERROR` event with an `Expired` Status, as the API server
//! sends it) for a watch from a compacted resourceVersion, discovery of the
//! groups it serves, `Status` bodies for errors, and TokenReview.
//!
//! No Kubernetes API server can run on these machines; this is what stands
//! in its place, for the kube-rs code only. It listens on a loopback port
//! the OS picks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The body of a response: a whole JSON document or a watch stream.
pub(crate) enum ApiBody {
    Full(Full<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(f) => Pin::new(f).poll_frame(cx),
            ApiBody::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
}

/// One collection: `/api/v1/services`, `/apis/networking.istio.io/v1/virtualservices`.
struct Collection {
    api_version: String,
    kind: String,
    objects: BTreeMap<(String, String), Value>,
    /// Every change, for watches that resume from a resourceVersion.
    log: Vec<(u64, &'static str, Value)>,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    collections: HashMap<String, Collection>,
    /// Served group versions (discovery): `networking.istio.io/v1`.
    groups: Vec<String>,
    /// Path prefixes answered with an error status, `count` more times
    /// (`u32::MAX`: always).
    failures: Vec<(String, u16, u32)>,
    /// The requests made: `GET /api/v1/pods?watch=true...`.
    requests: Vec<String>,
    /// token → (authenticated, username, audiences).
    tokens: HashMap<String, (bool, String, Vec<String>)>,
    /// ConfigMaps written by server-side apply, by path.
    applied: BTreeMap<String, Value>,
    /// Events created (`events.k8s.io/v1`), in order.
    events: Vec<Value>,
}

/// The fake API server.
#[derive(Clone)]
pub(crate) struct ApiServer {
    pub(crate) addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn reason_of(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        410 => "Expired",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response<ApiBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(ApiBody::Full(Full::new(Bytes::from(
            serde_json::to_vec(v).unwrap(),
        ))))
        .unwrap()
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = v
                .replace("%3D", "=")
                .replace("%2F", "/")
                .replace("%2C", ",");
            (k.to_owned(), v)
        })
        .collect()
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_owned(),
        m["name"].as_str().unwrap_or("").to_owned(),
    )
}

/// `/api/v1/namespaces/NS/pods` → (`/api/v1/pods`, Some(NS)).
fn split_namespace(path: &str) -> (String, Option<String>) {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if let Some(i) = parts
        .iter()
        .position(|p| *p == "namespaces")
        .filter(|i| parts.len() == i + 3)
    {
        let mut base: Vec<&str> = parts[..i].to_vec();
        base.push(parts[i + 2]);
        return (base.join("/"), Some(parts[i + 1].to_owned()));
    }
    (path.to_owned(), None)
}

impl ApiServer {
    /// Starts the server on a loopback port the OS picks.
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self {
            addr,
            state: Arc::new(Mutex::new(State {
                rv: 1000,
                ..State::default()
            })),
        };
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    /// A kube client of this server.
    pub(crate) fn client(&self) -> kube::Client {
        let url: http::Uri = format!("http://{}", self.addr).parse().unwrap();
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".to_owned();
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig file in `dir` naming this server (context `test`, a
    /// bearer token), as `kubectl config view --raw` prints one.
    pub(crate) fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\npreferences: {{}}\n\
                 clusters:\n- name: test\n  cluster:\n    server: http://{}\n\
                 users:\n- name: operator\n  user:\n    token: operator-token\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: operator\n    namespace: default\n\
                 current-context: test\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// Serves a collection (empty), e.g. `("/api/v1/services", "v1", "Service")`.
    pub(crate) fn serve(&self, path: &str, api_version: &str, kind: &str) {
        let mut st = self.state.lock().unwrap();
        st.collections
            .entry(path.to_owned())
            .or_insert_with(|| Collection {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
                objects: BTreeMap::new(),
                log: Vec::new(),
                watchers: Vec::new(),
            });
        if let Some(gv) = path.strip_prefix("/apis/") {
            let gv: Vec<&str> = gv.split('/').collect();
            let gv = format!("{}/{}", gv[0], gv[1]);
            if !st.groups.contains(&gv) {
                st.groups.push(gv);
            }
        }
    }

    /// Serves the collection of a list document (a `ServiceList` file as
    /// the API returns it), with its items.
    pub(crate) fn serve_list_file(&self, path: &str, file: &Path) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        let list: Value = serde_json::from_str(&text).unwrap();
        let kind = list["kind"]
            .as_str()
            .unwrap()
            .trim_end_matches("List")
            .to_owned();
        let api_version = list["apiVersion"].as_str().unwrap().to_owned();
        self.serve(path, &api_version, &kind);
        let mut st = self.state.lock().unwrap();
        let list_rv: u64 = list["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        st.rv = st.rv.max(list_rv);
        let c = st.collections.get_mut(path).unwrap();
        for item in list["items"].as_array().unwrap() {
            let mut item = item.clone();
            item["apiVersion"] = json!(api_version);
            item["kind"] = json!(kind);
            c.objects.insert(key_of(&item), item);
        }
    }

    /// Serves every recorded list in `dir` (`services.json`, `pods.json`,
    /// `endpointslices.json`, and `PLURAL.json` of the Istio kinds the
    /// mesh reads, at v1), as the API server lists them.
    pub(crate) fn serve_fixtures(&self, dir: &Path) {
        let mut paths = vec![
            ("services", "/api/v1/services".to_owned()),
            ("pods", "/api/v1/pods".to_owned()),
            (
                "endpointslices",
                "/apis/discovery.k8s.io/v1/endpointslices".to_owned(),
            ),
        ];
        for k in mesh_kube::source::ISTIO_KINDS {
            paths.push((k.plural, format!("/apis/{}/v1/{}", k.group, k.plural)));
        }
        for (plural, path) in paths {
            let file = dir.join(format!("{plural}.json"));
            if file.exists() {
                self.serve_list_file(&path, &file);
            }
        }
    }

    /// Adds or replaces an object (giving it the next resourceVersion) and
    /// tells the collection's watches.
    pub(crate) fn put(&self, path: &str, obj: Value) {
        let mut st = self.state.lock().unwrap();
        assert!(put_in(&mut st, path, obj), "{path} is not served");
    }

    /// Deletes an object and tells the watches.
    pub(crate) fn delete(&self, path: &str, namespace: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        let c = st.collections.get_mut(path).unwrap();
        let mut obj = c
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {namespace}/{name} in {path}"));
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.log.push((rv, "DELETED", obj.clone()));
        let line = event("DELETED", &obj);
        c.watchers.retain(|w| w.send(line.clone()).is_ok());
    }

    /// The object at `path` `namespace/name`.
    pub(crate) fn get(&self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.state.lock().unwrap();
        st.collections[path]
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch of
    /// `path`.
    pub(crate) fn bookmark(&self, path: &str) {
        let mut st = self.state.lock().unwrap();
        let rv = st.rv;
        let c = st.collections.get_mut(path).unwrap();
        let line = event(
            "BOOKMARK",
            &json!({"apiVersion": c.api_version, "kind": c.kind,
                    "metadata": {"resourceVersion": rv.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}),
        );
        c.watchers.retain(|w| w.send(line.clone()).is_ok());
    }

    /// Ends every open watch of `path` (as the API server does at its
    /// timeout).
    pub(crate) fn end_watches(&self, path: &str) {
        let mut st = self.state.lock().unwrap();
        st.collections.get_mut(path).unwrap().watchers.clear();
    }

    /// Ends every open watch of every collection.
    pub(crate) fn end_all_watches(&self) {
        let mut st = self.state.lock().unwrap();
        for c in st.collections.values_mut() {
            c.watchers.clear();
        }
    }

    /// How many watches are open, over every collection.
    pub(crate) fn open_watches(&self) -> usize {
        let mut st = self.state.lock().unwrap();
        st.collections
            .values_mut()
            .map(|c| {
                c.watchers.retain(|w| !w.is_closed());
                c.watchers.len()
            })
            .sum()
    }

    /// Forgets the history: a watch resuming from before now gets 410 Gone
    /// and must relist; open watches are ended with that 410.
    pub(crate) fn compact(&self) {
        let mut st = self.state.lock().unwrap();
        st.compacted = st.rv;
        let gone = event(
            "ERROR",
            &status(410, "Expired", "too old resource version: 1 (2)"),
        );
        for c in st.collections.values_mut() {
            c.log.clear();
            for w in c.watchers.drain(..) {
                let _ = w.send(gone.clone());
            }
        }
    }

    /// Answers requests under `prefix` with `code`, `count` times
    /// (`u32::MAX`: until [`ApiServer::heal`]).
    pub(crate) fn fail(&self, prefix: &str, code: u16, count: u32) {
        self.state
            .lock()
            .unwrap()
            .failures
            .push((prefix.to_owned(), code, count));
    }

    /// Ends every failure.
    pub(crate) fn heal(&self) {
        self.state.lock().unwrap().failures.clear();
    }

    /// A token TokenReview knows.
    pub(crate) fn token(
        &self,
        token: &str,
        authenticated: bool,
        username: &str,
        audiences: &[&str],
    ) {
        self.state.lock().unwrap().tokens.insert(
            token.to_owned(),
            (
                authenticated,
                username.to_owned(),
                audiences.iter().map(|s| (*s).to_owned()).collect(),
            ),
        );
    }

    /// The newest resourceVersion handed out.
    pub(crate) fn resource_version(&self) -> u64 {
        self.state.lock().unwrap().rv
    }

    /// The requests made so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// What server-side apply wrote at `path`.
    /// The Events created, in order.
    pub(crate) fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    pub(crate) fn applied(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().applied.get(path).cloned()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ApiBody> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let q = query(req.uri().query());
        let line = format!(
            "{method} {path}{}",
            req.uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut st = self.state.lock().unwrap();
        st.requests.push(line);
        if let Some(f) = st
            .failures
            .iter_mut()
            .find(|f| path.starts_with(&f.0) && f.2 > 0)
        {
            let code = f.1;
            if f.2 != u32::MAX {
                f.2 -= 1;
            }
            let msg = match code {
                403 => format!(
                    "{path} is forbidden: User \"system:serviceaccount:mesh-system:mesh-control\" cannot {} resource",
                    method.as_str().to_lowercase()
                ),
                _ => format!("the server answered {code}"),
            };
            return json_response(
                StatusCode::from_u16(code).unwrap(),
                &status(code, reason_of(code), &msg),
            );
        }
        if method == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
            let review: Value = serde_json::from_slice(&body).unwrap();
            let token = review["spec"]["token"].as_str().unwrap_or_default();
            let asked: Vec<String> = review["spec"]["audiences"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mut out = json!({
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "spec": review["spec"],
            });
            match st.tokens.get(token) {
                Some((true, user, auds)) if asked.iter().any(|a| auds.contains(a)) => {
                    let parts: Vec<&str> = user.split(':').collect();
                    out["status"] = json!({
                        "authenticated": true,
                        "user": {
                            "username": user,
                            "uid": "0b8f1e2c-6a3d-4c1e-9f7a-2d5e8c4b1a90",
                            "groups": ["system:serviceaccounts",
                                       format!("system:serviceaccounts:{}", parts.get(2).unwrap_or(&"")),
                                       "system:authenticated"],
                            "extra": {"authentication.kubernetes.io/pod-name": ["web-0"]},
                        },
                        "audiences": auds.iter().filter(|a| asked.contains(a)).collect::<Vec<_>>(),
                    });
                }
                Some((true, _, _)) => {
                    out["status"] = json!({"user": {}, "error": "[invalid bearer token, token audiences [\"other\"] is invalid for the target audiences [\"istio-ca\"]]"});
                }
                _ => {
                    out["status"] = json!({"user": {}, "error": "[invalid bearer token, service account token has expired]"});
                }
            }
            return json_response(StatusCode::CREATED, &out);
        }
        if method == Method::POST
            && path.starts_with("/apis/events.k8s.io/v1/namespaces/")
            && path.ends_with("/events")
        {
            // The API server's validation of an events.k8s.io/v1 Event on
            // create: these fields are required, the note is at most 1 kB,
            // the namespace is the path's.
            let ev: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let ns = path.split('/').nth(5).unwrap_or_default();
            let mut invalid = Vec::new();
            for field in [
                "eventTime",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
            ] {
                if ev[field].as_str().is_none_or(str::is_empty) {
                    invalid.push(format!("{field}: Required value"));
                }
            }
            if ev["metadata"]["name"].as_str().is_none_or(str::is_empty) {
                invalid.push("metadata.name: Required value".to_owned());
            }
            if ev["metadata"]["namespace"].as_str() != Some(ns) {
                invalid.push("metadata.namespace: does not match the namespace".to_owned());
            }
            if ev["note"].as_str().is_some_and(|n| n.len() > 1024) {
                invalid.push("note: Too long: may not be longer than 1024".to_owned());
            }
            if ev["regarding"]["kind"].as_str().is_none()
                || ev["regarding"]["name"].as_str().is_none()
            {
                invalid.push("regarding: Required value".to_owned());
            }
            if !invalid.is_empty() {
                return json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &status(
                        422,
                        "Invalid",
                        &format!("Event is invalid: {}", invalid.join(", ")),
                    ),
                );
            }
            let mut created = ev.clone();
            created["metadata"]["uid"] = json!(format!("ev-{}", st.events.len()));
            created["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            st.events.push(created.clone());
            return json_response(StatusCode::CREATED, &created);
        }
        if method == Method::PATCH {
            // Server-side apply of a ConfigMap: recorded, and held in the
            // configmaps collection (when served) for its watches.
            let mut obj: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            st.applied.insert(path.clone(), obj.clone());
            let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
            if let ["api", "v1", "namespaces", ns, "configmaps", _] = segs.as_slice() {
                obj["metadata"]["namespace"] = json!(ns);
                put_in(&mut st, "/api/v1/configmaps", obj.clone());
            }
            return json_response(StatusCode::OK, &obj);
        }
        // Discovery: /apis/GROUP/VERSION.
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        if segs.len() == 3 && segs[0] == "apis" {
            let gv = format!("{}/{}", segs[1], segs[2]);
            if !st.groups.contains(&gv) {
                return not_found();
            }
            let resources: Vec<Value> = st
                .collections
                .iter()
                .filter(|(p, _)| p.starts_with(&format!("/apis/{gv}/")))
                .map(|(p, c)| {
                    json!({"name": p.rsplit('/').next().unwrap(), "singularName": c.kind.to_lowercase(),
                           "namespaced": true, "kind": c.kind,
                           "verbs": ["delete","deletecollection","get","list","patch","create","update","watch"]})
                })
                .collect();
            return json_response(
                StatusCode::OK,
                &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
            );
        }
        let (base, namespace) = split_namespace(&path);
        let rv_now = st.rv;
        let compacted = st.compacted;
        let Some(c) = st.collections.get_mut(&base) else {
            return not_found();
        };
        let field_name = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_owned);
        let matches = |o: &Value| {
            let (ns, name) = key_of(o);
            namespace.as_ref().is_none_or(|n| *n == ns)
                && field_name.as_ref().is_none_or(|f| *f == name)
        };
        if q.get("watch").map(String::as_str) == Some("true") {
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|s| s.parse().ok())
                .unwrap_or(rv_now);
            let (tx, rx) = mpsc::unbounded_channel();
            if from < compacted {
                let _ = tx.send(event(
                    "ERROR",
                    &status(
                        410,
                        "Expired",
                        &format!("too old resource version: {from} ({compacted})"),
                    ),
                ));
                drop(tx);
            } else {
                for (rv, kind, obj) in &c.log {
                    if *rv > from && matches(obj) {
                        let _ = tx.send(event(kind, obj));
                    }
                }
                // Filtering live events by namespace/name is left to the
                // client for a watch with a selector: send only matching.
                if namespace.is_none() && field_name.is_none() {
                    c.watchers.push(tx);
                } else {
                    let (ftx, mut frx) = mpsc::unbounded_channel::<Bytes>();
                    c.watchers.push(ftx);
                    let ns = namespace.clone();
                    let fname = field_name.clone();
                    tokio::spawn(async move {
                        while let Some(line) = frx.recv().await {
                            let v: Value = serde_json::from_slice(&line).unwrap();
                            let (ons, oname) = key_of(&v["object"]);
                            let keep = v["type"] == "BOOKMARK"
                                || v["type"] == "ERROR"
                                || (ns.as_ref().is_none_or(|n| *n == ons)
                                    && fname.as_ref().is_none_or(|f| *f == oname));
                            if keep && tx.send(line).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .header("transfer-encoding", "chunked")
                .body(ApiBody::Stream(rx))
                .unwrap();
        }
        let items: Vec<&Value> = c.objects.values().filter(|o| matches(o)).collect();
        json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", c.kind),
                "apiVersion": c.api_version,
                "metadata": {"resourceVersion": rv_now.to_string()},
                "items": items,
            }),
        )
    }
}

/// Adds or replaces an object in the collection at `path`; false when it
/// is not served.
fn put_in(st: &mut State, path: &str, mut obj: Value) -> bool {
    st.rv += 1;
    let rv = st.rv;
    let Some(c) = st.collections.get_mut(path) else {
        return false;
    };
    obj["apiVersion"] = json!(c.api_version);
    obj["kind"] = json!(c.kind);
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let key = key_of(&obj);
    let kind = if c.objects.contains_key(&key) {
        "MODIFIED"
    } else {
        "ADDED"
    };
    c.objects.insert(key, obj.clone());
    c.log.push((rv, kind, obj.clone()));
    let line = event(kind, &obj);
    c.watchers.retain(|w| w.send(line.clone()).is_ok());
    true
}

fn event(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// The collections the mesh's source watches, served empty.
pub(crate) fn serve_mesh_kinds(api: &ApiServer) {
    api.serve("/api/v1/services", "v1", "Service");
    api.serve("/api/v1/pods", "v1", "Pod");
    api.serve(
        "/apis/discovery.k8s.io/v1/endpointslices",
        "discovery.k8s.io/v1",
        "EndpointSlice",
    );
    api.serve("/api/v1/configmaps", "v1", "ConfigMap");
    for group in ["networking.istio.io", "security.istio.io"] {
        serve_istio_group(api, group);
    }
}

/// The collections of one Istio group at v1 (its CRDs installed), served
/// empty: the kinds the source watches.
pub(crate) fn serve_istio_group(api: &ApiServer, group: &str) {
    for k in mesh_kube::source::ISTIO_KINDS
        .iter()
        .filter(|k| k.group == group)
    {
        api.serve(
            &format!("/apis/{group}/v1/{}", k.plural),
            &format!("{group}/v1"),
            k.kind,
        );
    }
}

fn not_found() -> Response<ApiBody> {
    json_response(
        StatusCode::NOT_FOUND,
        &status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    )
}
