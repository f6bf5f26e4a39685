//! Authorization as a Tower layer: Istio's `AuthorizationPolicy` enforced
//! in process, with the decisions of [`mesh_core::authz`].
//!
//! Per request, [`Authorize`] takes one snapshot from the [`Store`], finds
//! the policies of the local workload and checks the request: the caller's
//! verified identity from the [`PeerIdentity`] extension, its address from
//! [`ClientAddr`], the local address from [`LocalAddr`] (or the port given
//! with [`AuthorizeLayer::with_port`]), the host, the method, the headers
//! and the path normalised by [`normalize_path`]. A denied request gets
//! 403 with the reason in `x-mesh-reason`; a path that cannot be normalised
//! safely gets 400. An allowed request goes on **with the normalised path**
//! (the query kept), so the application serves exactly the path the policy
//! checked. Denials are logged at INFO on the `mesh::authz` target, never
//! at ERROR: they are the client's doing. So is what dry-run policies
//! (`istio.io/dry-run: "true"`) would have decided, which is never enforced.
//!
//! Until a configuration is loaded, and while a named workload is missing
//! from it, every request is denied: no policy known is not "no policy".
//!
//! `connection.sni` reads the SNI the [`PeerIdentity`] extension carries
//! (the mesh acceptor records it at the handshake); a request without
//! that extension has an SNI nobody can tell, so ALLOW rules on it never
//! match and DENY rules always do.
//!
//! For the L4 proxy, [`AuthorizeLayer::check_connection_from`] decides a
//! TCP connection by Istio's TCP rules (HTTP-only fields never match in
//! ALLOW rules, always match in DENY rules).
//!
//! ```
//! use std::path::Path;
//! use std::sync::Arc;
//! use mesh_core::store::Store;
//! use mesh_tower::authz::{AuthorizeLayer, LocalWorkload};
//! use mesh_tower::body::{BoxBody, full};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! let yaml = r#"
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: no-admin}
//! spec:
//!   action: DENY
//!   rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
//! "#;
//! let store = Arc::new(Store::new());
//! store.apply(mesh_core::load::load_str(Path::new("p.yaml"), yaml))?;
//! let app = service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(full(req.uri().to_string())))
//! });
//! let svc = AuthorizeLayer::new(store, LocalWorkload::labels("default", Default::default()))
//!     .layer(app);
//!
//! let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
//! let req = http::Request::get("/public/..%2F%61dmin").header("host", "web").body(())?;
//! let resp = rt.block_on(svc.clone().oneshot(req))?;
//! assert_eq!(resp.status(), 403);
//! let req = http::Request::get("/./docs//intro?lang=en").header("host", "web").body(())?;
//! let resp = rt.block_on(svc.oneshot(req))?;
//! assert_eq!(resp.status(), 200); // and the app saw `/docs/intro?lang=en`
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use mesh_core::authz::{
    AuthzDecision, AuthzPolicy, AuthzRequest, ConnectionInfo, HeaderValues, Sni, evaluate,
    evaluate_tcp,
};
use mesh_core::identity::SpiffeId;
use mesh_core::jwt::{self, JwtError, JwtRule, KeyLookup, KeySource, RequestAuth, TokenLocation};
use mesh_core::normalize::normalize_path;
use mesh_core::resources::common::Labels;
use mesh_core::snapshot::Snapshot;
use mesh_core::store::Store;
use tower::{Layer, Service};

use crate::body::{BoxBody, full};
use crate::error::{MeshError, REASON_HEADER};
use crate::jwks::{Cached, JwksCache};
use crate::tls::PeerIdentity;
use crate::traffic::ClientAddr;

/// The local address a request or connection arrived at, as an
/// `http::Extensions` value; servers insert it. It gives `destination.ip`
/// and the port `ports` and `destination.port` match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr(pub SocketAddr);

/// The workload whose policies apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalWorkload {
    /// A workload of the registry (a `WorkloadEntry` or a ServiceEntry
    /// endpoint) by `name` (in `default`) or `namespace/name`; its address
    /// is the destination IP when no [`LocalAddr`] is given.
    Named(String),
    /// A workload known only by its namespace and labels, such as a
    /// proxyless service with no registry entry.
    Labels {
        /// Its namespace.
        namespace: String,
        /// Its labels, for policy selectors.
        labels: Labels,
    },
    /// The proxy of a Gateway (`namespace/name` of the Gateway), running in
    /// `namespace`: its labels are the Gateway's `selector`, read from each
    /// snapshot, as Istio's gateway pods carry the labels their Gateway
    /// selects. A Gateway missing from the configuration denies.
    Gateway {
        /// The Gateway, `namespace/name`.
        gateway: String,
        /// The namespace the gateway proxy runs in (its identity's).
        namespace: String,
    },
}

impl LocalWorkload {
    /// A registry workload by `name` or `namespace/name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self::Named(name.into())
    }

    /// A workload by namespace and labels.
    pub fn labels(namespace: impl Into<String>, labels: Labels) -> Self {
        Self::Labels {
            namespace: namespace.into(),
            labels,
        }
    }

    /// The proxy of Gateway `gateway` (`namespace/name`), running in
    /// `namespace`.
    pub fn gateway(gateway: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self::Gateway {
            gateway: gateway.into(),
            namespace: namespace.into(),
        }
    }

    /// The policies that apply, and the workload's address if known.
    fn policies<'s>(
        &'s self,
        snap: &'s Snapshot,
    ) -> Result<(Vec<&'s AuthzPolicy>, Option<IpAddr>), String> {
        self.resolve(snap)
            .map(|r| (r.policies, r.workload.and_then(|(_, ip)| ip)))
    }

    fn resolve<'s>(&'s self, snap: &'s Snapshot) -> Result<Resolved<'s>, String> {
        if snap.version == 0 {
            return Err("no configuration has been loaded yet".to_owned());
        }
        match self {
            Self::Named(name) => {
                let (i, w) = snap
                    .workload(name)
                    .ok_or_else(|| format!("workload {name} is not in the configuration"))?;
                Ok(Resolved {
                    policies: snap.workload_policies(w).collect(),
                    jwt_rules: snap.workload_jwt_rules(w),
                    namespace: &w.namespace,
                    workload: Some((i, w.address.parse().ok())),
                })
            }
            Self::Labels { namespace, labels } => Ok(Resolved {
                policies: snap
                    .authz_policies
                    .iter()
                    .filter(|p| p.applies_to(namespace, labels))
                    .collect(),
                jwt_rules: snap.jwt_rules_for(namespace, labels),
                namespace,
                workload: None,
            }),
            Self::Gateway { gateway, namespace } => {
                let labels = &snap
                    .gateways
                    .get(gateway)
                    .ok_or_else(|| format!("Gateway {gateway} is not in the configuration"))?
                    .selector;
                Ok(Resolved {
                    policies: snap
                        .authz_policies
                        .iter()
                        .filter(|p| p.applies_to(namespace, labels))
                        .collect(),
                    jwt_rules: snap.jwt_rules_for(namespace, labels),
                    namespace,
                    workload: None,
                })
            }
        }
    }
}

/// The local workload as one snapshot knows it.
struct Resolved<'s> {
    policies: Vec<&'s AuthzPolicy>,
    /// The RequestAuthentication rules that apply.
    jwt_rules: Vec<Arc<JwtRule>>,
    namespace: &'s str,
    /// Its index in the snapshot and its address, for a registry workload.
    workload: Option<(usize, Option<IpAddr>)>,
}

/// Applies [`Authorize`]: holds the store and the local workload.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    store: Arc<Store>,
    workload: Arc<LocalWorkload>,
    port: Option<u16>,
    jwks: Arc<JwksCache>,
}

impl AuthorizeLayer {
    /// Authorizes requests to `workload` against the policies in `store`.
    pub fn new(store: Arc<Store>, workload: LocalWorkload) -> Self {
        Self {
            store,
            workload: Arc::new(workload),
            port: None,
            jwks: JwksCache::global(),
        }
    }

    /// Key sets for `jwksUri` from `cache` rather than the process-wide
    /// one ([`JwksCache::global`]).
    pub fn with_jwks(mut self, cache: Arc<JwksCache>) -> Self {
        self.jwks = cache;
        self
    }

    /// The workload port requests arrive at, for when the server does not
    /// insert [`LocalAddr`]. Without either, the port is unknown: rules on
    /// ports never match in ALLOW policies and always match in DENY ones.
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Decides a TCP connection for the L4 proxy by Istio's TCP rules:
    /// principal, namespace, IP and port fields apply; HTTP-only fields
    /// never match in ALLOW rules and always match in DENY rules. Denials
    /// are logged at INFO. The SNI is not known here: `connection.sni`
    /// never allows and always denies; a server that accepted the
    /// connection calls [`check_connection_from`](Self::check_connection_from).
    pub fn check_connection(
        &self,
        peer: Option<&SpiffeId>,
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> AuthzDecision {
        self.decide_connection(peer, Sni::Unknown, client, local)
    }

    /// [`check_connection`](Self::check_connection) for a connection the
    /// mesh acceptor accepted: its verified identity and its SNI from
    /// `peer`.
    pub fn check_connection_from(
        &self,
        peer: &PeerIdentity,
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> AuthzDecision {
        self.decide_connection(peer.spiffe_id(), Sni::of(peer.sni()), client, local)
    }

    /// [`check_connection`](Self::check_connection) for a TLS connection
    /// the proxy routes without terminating (a Gateway's PASSTHROUGH
    /// server): no verified peer, and the SNI its ClientHello named.
    pub fn check_passthrough(
        &self,
        sni: Option<&str>,
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> AuthzDecision {
        self.decide_connection(None, Sni::of(sni), client, local)
    }

    fn decide_connection(
        &self,
        peer: Option<&SpiffeId>,
        sni: Sni<'_>,
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> AuthzDecision {
        let snap = self.store.load();
        let decision = match self.workload.policies(&snap) {
            Ok((policies, workload_ip)) => {
                let conn = ConnectionInfo {
                    peer,
                    source_ip: client.map(|a| a.ip()),
                    destination_ip: local.map(|a| a.ip()).or(workload_ip),
                    destination_port: local.map(|a| a.port()).or(self.port).unwrap_or(0),
                    sni,
                };
                evaluate_tcp(policies, &conn)
            }
            Err(reason) => denied(reason),
        };
        log_connection(peer, client, &decision);
        decision
    }

    /// Checks a request: the answer if it is refused; key sets to wait for
    /// (`may_fetch`: on the first pass only); otherwise authenticates its
    /// token, rewrites its path to the normalised one and puts the
    /// [`AuthzDecision`] in its extensions.
    fn check<B>(&self, req: &mut Request<B>, may_fetch: bool) -> Check {
        match self.refusal(req, may_fetch) {
            Ok(None) => Check::Pass,
            Ok(Some(resp)) => Check::Answer(resp),
            Err(fetch) => Check::Fetch(fetch),
        }
    }

    /// Request authentication (RequestAuthentication): the identity of the
    /// request's valid token (`None` without one), a 401, or key sets to
    /// fetch first.
    fn authenticate<B>(
        &self,
        req: &mut Request<B>,
        rules: &[Arc<JwtRule>],
        may_fetch: bool,
    ) -> Authn {
        if rules.is_empty() {
            return Authn::Identity(None);
        }
        let need = std::cell::RefCell::new(Vec::new());
        let result = jwt::authenticate(
            rules,
            &HeaderMapValues(req.headers()),
            req.uri().query(),
            |rule| match &rule.keys {
                KeySource::Inline(keys) => KeyLookup::Keys(keys.clone()),
                KeySource::Uri(uri) => match self.jwks.cached(uri, rule.timeout) {
                    Cached::Keys(keys) => KeyLookup::Keys(keys),
                    Cached::Fetch => {
                        need.borrow_mut().push((uri.clone(), rule.timeout));
                        KeyLookup::Unavailable(
                            self.jwks
                                .last_error(uri)
                                .unwrap_or_else(|| format!("{uri}: not fetched yet")),
                        )
                    }
                    Cached::Failed(why) => KeyLookup::Unavailable(why),
                },
            },
            Some(self.jwks.tokens()),
        );
        let authn = match result {
            Ok(a) => a,
            Err(f) => {
                let need = need.into_inner();
                if may_fetch {
                    if matches!(f.error, JwtError::KeysUnavailable(_)) && !need.is_empty() {
                        return Authn::Fetch(need);
                    }
                    // A key id the set lacks: the issuer may have rotated.
                    if let (JwtError::NoKey, Some(rule)) = (&f.error, &f.rule)
                        && let KeySource::Uri(uri) = &rule.keys
                        && self.jwks.refetch_for_unknown_kid(uri)
                    {
                        return Authn::Fetch(vec![(uri.clone(), rule.timeout)]);
                    }
                }
                tracing::info!(target: "mesh::authz", method = %req.method(), path = %req.uri().path(), reason = %f.error, "request unauthenticated");
                // What the client is told: Envoy's words, never the key
                // server's address or its error (those are in the log).
                let said = match &f.error {
                    JwtError::KeysUnavailable(_) => "Jwks remote fetch is failed".to_owned(),
                    other => other.to_string(),
                };
                let resp = MeshError::Unauthenticated(said)
                    .to_response_for(crate::error::is_grpc(req.headers()));
                return Authn::Refused(refuse(req, resp));
            }
        };
        // What the rules write upstream is only ever the mesh's: a client
        // that sends these headers itself (with or without a token) has
        // them removed, so an application reading them reads a verified
        // token or nothing.
        let headers = req.headers_mut();
        for rule in rules {
            if let Some(h) = &rule.output_payload_to_header {
                remove_header_family(headers, h);
            }
            for (h, _) in &rule.output_claim_to_headers {
                remove_header_family(headers, h);
            }
        }
        for (found, rule, auth) in &authn.tokens {
            if !rule.forward_original_token
                && let TokenLocation::Header { name, .. } = &found.location
            {
                remove_header_family(headers, name);
            }
            if let Some(h) = &rule.output_payload_to_header
                && let Some(v) =
                    jwt::payload_part(&found.token).and_then(|p| HeaderValue::from_str(p).ok())
                && let Ok(name) = http::HeaderName::from_bytes(h.as_bytes())
            {
                headers.insert(name, v);
            }
            for (h, claim) in &rule.output_claim_to_headers {
                if let Some(v) = jwt::claim_header_value(auth, claim)
                    .and_then(|v| HeaderValue::from_str(&v).ok())
                    && let Ok(name) = http::HeaderName::from_bytes(h.as_bytes())
                {
                    headers.insert(name, v);
                }
            }
        }
        Authn::Identity(authn.auth)
    }

    /// [`check`](Self::check) in `Result` form: `Err` lists key sets to
    /// fetch.
    fn refusal<B>(
        &self,
        req: &mut Request<B>,
        may_fetch: bool,
    ) -> Result<Option<Response<BoxBody>>, Vec<(String, Duration)>> {
        let snap = self.store.load();
        // Before anything reads the request: one host, no header that the
        // app reads under another name, values as the app reads them.
        let host = match crate::sanitize::sanitize(req, snap.mesh.headers_with_underscores_action) {
            Ok(h) => h,
            Err(e) => {
                return Ok(Some(refuse(
                    req,
                    e.to_response_for(crate::error::is_grpc(req.headers())),
                )));
            }
        };
        let path = match normalize_path(req.uri().path()) {
            Ok(p) => p.into_owned(),
            Err(e) => {
                return Ok(Some(refuse(
                    req,
                    bad_request(format!("the path cannot be normalised: {e}")),
                )));
            }
        };
        let (decision, auth) = match self.workload.resolve(&snap) {
            Ok(local_workload) => {
                let auth = match self.authenticate(req, &local_workload.jwt_rules, may_fetch) {
                    Authn::Identity(auth) => auth,
                    Authn::Refused(resp) => return Ok(Some(resp)),
                    Authn::Fetch(fetch) => return Err(fetch),
                };
                let local = req.extensions().get::<LocalAddr>().map(|a| a.0);
                let headers = HeaderMapValues(req.headers());
                // The policies' hosts are compiled to the canonical
                // spelling; the request's host is read in it too, and an
                // IP address stands for every service the workload serves.
                let canonical = snap.canonical_host(&host, local_workload.namespace);
                let aliases = match local_workload.workload {
                    Some((i, _)) if names_an_ip(&host) => snap.hosts_served_by(i),
                    _ => &[],
                };
                let workload_ip = local_workload.workload.and_then(|(_, ip)| ip);
                let identity = req.extensions().get::<PeerIdentity>();
                let peer = identity.and_then(PeerIdentity::spiffe_id);
                // No PeerIdentity: no server of the mesh's told us.
                let sni = identity.map_or(Sni::Unknown, |p| Sni::of(p.sni()));
                let source_ip = req.extensions().get::<ClientAddr>().map(|a| a.0.ip());
                let areq = AuthzRequest {
                    peer,
                    source_ip,
                    remote_ip: remote_ip(req.headers(), peer.is_some(), source_ip),
                    destination_ip: local.map(|a| a.ip()).or(workload_ip),
                    destination_port: local.map(|a| a.port()).or(self.port).unwrap_or(0),
                    host: &canonical,
                    host_aliases: aliases,
                    method: req.method().as_str(),
                    path: &path,
                    headers: Some(&headers),
                    auth: auth.as_deref(),
                    sni,
                };
                (evaluate(local_workload.policies, &areq), auth)
            }
            Err(reason) => (denied(reason), None),
        };
        log_shadow_request(req, &path, &decision);
        if !decision.allowed {
            let resp = MeshError::Denied(decision.reason.to_string())
                .to_response_for(crate::error::is_grpc(req.headers()));
            return Ok(Some(refuse(req, resp)));
        }
        if let Some(audit) = &decision.audited_by {
            tracing::info!(target: "mesh::authz", method = %req.method(), path = %path, audited_by = %audit, "request audited");
        }
        if path != req.uri().path() && req.uri().path_and_query().is_some() {
            match rewrite_path(req.uri(), &path) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(e) => {
                    let why = format!("cannot rewrite the path: {e}");
                    return Ok(Some(refuse(req, bad_request(why))));
                }
            }
        }
        req.extensions_mut().insert(decision);
        // The validated token's identity, for the gateway's claim routes
        // and for an in-process application (`Mesh::serve`).
        if let Some(auth) = auth {
            req.extensions_mut().insert(auth);
        }
        Ok(None)
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            layer: self.clone(),
        }
    }
}

/// Authorizes each request before the inner service sees it; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    layer: AuthorizeLayer,
}

impl<S> Authorize<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, store: Arc<Store>, workload: LocalWorkload) -> Self {
        AuthorizeLayer::new(store, workload).layer(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl Authorize<()> {
    /// A layer that wraps services in [`Authorize`]; the same as
    /// [`AuthorizeLayer::new`].
    pub fn layer(store: Arc<Store>, workload: LocalWorkload) -> AuthorizeLayer {
        AuthorizeLayer::new(store, workload)
    }
}

/// How many rounds of key fetches one request may wait for.
const MAX_FETCH_PASSES: usize = 3;

/// Removes `name` and every header that reads as it to a CGI-style
/// application (`x_jwt` for `x-jwt`), where underscores were let through.
fn remove_header_family(headers: &mut http::HeaderMap, name: &str) {
    headers.remove(name);
    let aliases: Vec<http::HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.contains('_')
                && k.len() == name.len()
                && k.bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'))
        })
        .cloned()
        .collect();
    for k in aliases {
        headers.remove(k);
    }
}

/// What request authentication made of a request.
enum Authn {
    /// The valid token's identity; `None`: no token.
    Identity(Option<Arc<RequestAuth>>),
    /// The 401.
    Refused(Response<BoxBody>),
    /// Key sets to wait for, then check again.
    Fetch(Vec<(String, Duration)>),
}

/// What [`AuthorizeLayer::check`] made of a request.
enum Check {
    /// On to the inner service.
    Pass,
    /// The mesh's own answer (400, 401, 403).
    Answer(Response<BoxBody>),
    /// Key sets to wait for, then check again.
    Fetch(Vec<(String, Duration)>),
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let since = std::time::Instant::now();
        let state = match self.layer.check(&mut req, true) {
            Check::Pass => State::Inner(Box::pin(self.inner.call(req))),
            Check::Answer(resp) => State::Answer(Some(resp)),
            Check::Fetch(uris) => {
                // The request waits for its issuer's keys; the service
                // made ready for it goes with it (tower's clone-and-swap).
                let fresh = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, fresh);
                let layer = self.layer.clone();
                State::Waiting(Box::pin(async move {
                    let mut uris = uris;
                    // Each pass may find the next token's issuer unfetched
                    // (two tokens, two issuers): a few passes, then the
                    // check that may not ask again decides.
                    for pass in 1..=MAX_FETCH_PASSES {
                        for (uri, timeout) in &uris {
                            let _ = layer.jwks.wait_for(uri, *timeout, since).await;
                        }
                        match layer.check(&mut req, pass < MAX_FETCH_PASSES) {
                            Check::Pass => return inner.call(req).await,
                            Check::Answer(resp) => return Ok(resp),
                            Check::Fetch(more) => uris = more,
                        }
                    }
                    // Not asked for on the last pass; answered as a token
                    // that cannot be verified, never passed.
                    Ok(
                        MeshError::Unauthenticated("Jwks remote fetch is failed".to_owned())
                            .to_response(),
                    )
                }))
            }
        };
        ResponseFuture { state }
    }
}

/// The future of [`Authorize`]: the mesh's own answer, or the inner
/// service's. (The inner future is boxed: one allocation per allowed
/// request buys pin projection without `unsafe` or another dependency.)
pub struct ResponseFuture<F: Future> {
    state: State<F>,
}

enum State<F: Future> {
    Inner(Pin<Box<F>>),
    Answer(Option<Response<BoxBody>>),
    /// Waiting for a key set, then the check and the inner service.
    Waiting(Pin<Box<dyn Future<Output = F::Output> + Send>>),
}

impl<F: Future> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Inner(_) => "inner",
            State::Answer(_) => "answer",
            State::Waiting(_) => "waiting for keys",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, E>>,
{
    type Output = Result<Response<BoxBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Inner(f) => f.as_mut().poll(cx),
            State::Waiting(f) => f.as_mut().poll(cx),
            State::Answer(resp) => match resp.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                // Polled after completion.
                None => Poll::Pending,
            },
        }
    }
}

/// The original client's address ([`AuthzRequest::remote_ip`]): from an
/// authenticated mesh peer, the last X-Forwarded-For entry (the one the
/// mesh proxy before it wrote; `None` if it does not read as an address),
/// else the peer itself. A plaintext client's X-Forwarded-For is its own
/// claim and never read.
fn remote_ip(headers: &http::HeaderMap, via_mesh: bool, peer: Option<IpAddr>) -> Option<IpAddr> {
    if !via_mesh {
        return peer;
    }
    let Some(last) = headers.get_all("x-forwarded-for").iter().next_back() else {
        return peer;
    };
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

fn denied(reason: String) -> AuthzDecision {
    AuthzDecision {
        allowed: false,
        policy: None,
        rule: None,
        reason: mesh_core::authz::Reason::other(reason),
        audited_by: None,
        shadow: None,
    }
}

/// Logs a connection's denial or audit, and its dry-run verdict, at INFO.
fn log_connection(peer: Option<&SpiffeId>, client: Option<SocketAddr>, decision: &AuthzDecision) {
    let peer = peer.map(tracing::field::display);
    let client = client.map(tracing::field::display);
    if !decision.allowed {
        tracing::info!(
            target: "mesh::authz",
            peer,
            client,
            reason = %decision.reason,
            "connection denied"
        );
    } else if let Some(audit) = &decision.audited_by {
        tracing::info!(
            target: "mesh::authz",
            peer,
            client,
            audited_by = %audit,
            "connection audited"
        );
    }
    if let Some(shadow) = &decision.shadow {
        tracing::info!(
            target: "mesh::authz",
            peer,
            client,
            dry_run_allowed = shadow.allowed,
            dry_run_policy = shadow.policy.as_ref().map(tracing::field::display),
            "connection: {}",
            shadow.reason
        );
    }
}

/// Logs what the dry-run policies would have done to a request, at INFO:
/// shadow mode is there so that verdict is seen before it is enforced.
fn log_shadow_request<B>(req: &Request<B>, path: &str, decision: &AuthzDecision) {
    let Some(shadow) = &decision.shadow else {
        return;
    };
    tracing::info!(
        target: "mesh::authz",
        method = %req.method(),
        path,
        allowed = decision.allowed,
        dry_run_allowed = shadow.allowed,
        dry_run_policy = shadow.policy.as_ref().map(tracing::field::display),
        "request: {}",
        shadow.reason
    );
}

/// Logs a refusal at INFO and passes the answer on.
fn refuse<B>(req: &Request<B>, resp: Response<BoxBody>) -> Response<BoxBody> {
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .and_then(PeerIdentity::spiffe_id);
    let reason = resp
        .headers()
        .get(REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info!(
        target: "mesh::authz",
        status = resp.status().as_u16(),
        peer = peer.map(tracing::field::display),
        client = req.extensions().get::<ClientAddr>().map(|a| tracing::field::display(a.0)),
        method = %req.method(),
        path = %req.uri().path(),
        reason,
        "request refused"
    );
    resp
}

fn bad_request(reason: String) -> Response<BoxBody> {
    let mut resp = Response::new(full(format!("{reason}\n")));
    *resp.status_mut() = StatusCode::BAD_REQUEST;
    let value =
        HeaderValue::from_str(&reason).unwrap_or_else(|_| HeaderValue::from_static("bad request"));
    resp.headers_mut().insert(REASON_HEADER, value);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Does the host (`name[:port]`, `[v6][:port]`) name an IP address?
fn names_an_ip(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.parse::<IpAddr>().is_ok()
}

fn rewrite_path(uri: &Uri, path: &str) -> Result<Uri, http::Error> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(pq)?);
    Ok(Uri::from_parts(parts)?)
}

/// Every value of a header, for `request.headers[...]` conditions.
struct HeaderMapValues<'a>(&'a http::HeaderMap);

impl HeaderValues for HeaderMapValues<'_> {
    /// The values of `name` and, where a header name with underscores was
    /// let through ([`UnderscoreAction::Allow`]), of the names that read as
    /// `name` to a CGI-style application (`x_role` for `x-role`).
    ///
    /// [`UnderscoreAction::Allow`]: crate::sanitize::UnderscoreAction::Allow
    fn header_values(&self, name: &str) -> Vec<Cow<'_, str>> {
        let mut values: Vec<Cow<'_, str>> = self
            .0
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect();
        for (k, v) in self.0 {
            let k = k.as_str();
            if k.contains('_')
                && k.len() == name.len()
                && k.bytes()
                    .zip(name.bytes())
                    .all(|(a, b)| a.eq_ignore_ascii_case(&b) || (a == b'_' && b == b'-'))
            {
                values.push(String::from_utf8_lossy(v.as_bytes()));
            }
        }
        values
    }
}

/// Drops a request's URI authority when it names `local`, the listener the
/// request arrived on. A mesh peer speaking HTTP/2 sends `:authority` naming
/// the endpoint it dialled beside the Host the caller meant; that authority
/// is transport, not routing, and would otherwise disagree with Host (which
/// [`Authorize`] refuses). Any other authority is kept, and checked.
pub fn drop_transport_authority<B>(req: &mut Request<B>, local: SocketAddr) {
    let names_listener = req.uri().authority().is_some_and(|a| {
        let host = a.host().trim_matches(['[', ']']);
        host.parse::<IpAddr>().is_ok_and(|ip| ip == local.ip())
            && a.port_u16().is_none_or(|p| p == local.port())
    });
    if names_listener {
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
    }
}

#[cfg(test)]
mod tests {
    //! With a verified identity, which only the TLS acceptor (in this
    //! crate) can vouch for; the rest is in `tests/authz_layer.rs`.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::convert::Infallible;

    use super::*;

    const CONFIG: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: data}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/api], namespaces: [shop]}}]
    to: [{operation: {methods: [GET], hosts: [db.data]}}]
"#;

    async fn status(peer: Option<&str>, host: &str) -> u16 {
        let store = Arc::new(Store::new());
        store
            .apply(mesh_core::load::load_str(
                std::path::Path::new("p.yaml"),
                CONFIG,
            ))
            .unwrap();
        let app = tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(full("ok")))
        });
        let svc =
            AuthorizeLayer::new(store, LocalWorkload::labels("data", Labels::new())).layer(app);
        let mut req = Request::get("/rows").body(()).unwrap();
        req.headers_mut()
            .insert(http::header::HOST, host.parse().unwrap());
        req.extensions_mut().insert(match peer {
            Some(id) => PeerIdentity::mtls(id.parse().unwrap()),
            None => PeerIdentity::plaintext(),
        });
        tower::ServiceExt::oneshot(svc, req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn the_verified_identity_decides() {
        let api = Some("spiffe://cluster.local/ns/shop/sa/api");
        assert_eq!(status(api, "db.data").await, 200);
        assert_eq!(status(api, "DB.data:5432").await, 200);
        assert_eq!(status(api, "other.data").await, 403);
        let web = Some("spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(status(web, "db.data").await, 403);
        assert_eq!(status(None, "db.data").await, 403);
    }

    const REMOTE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: office-only, namespace: data}
spec:
  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-blocked, namespace: data}
spec:
  action: DENY
  rules: [{when: [{key: remote.ip, values: [203.0.113.66]}]}]
"#;

    /// `(status)` of a request from `peer` (mTLS or plaintext, socket
    /// address 10.1.0.7) with these X-Forwarded-For lines.
    async fn remote(peer: Option<&str>, xff: &[&str]) -> u16 {
        let store = Arc::new(Store::new());
        store
            .apply(mesh_core::load::load_str(
                std::path::Path::new("r.yaml"),
                REMOTE,
            ))
            .unwrap();
        let app = tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(full("ok")))
        });
        let svc =
            AuthorizeLayer::new(store, LocalWorkload::labels("data", Labels::new())).layer(app);
        let mut req = Request::get("/")
            .header("host", "db.data")
            .body(())
            .unwrap();
        for v in xff {
            req.headers_mut()
                .append("x-forwarded-for", v.parse().unwrap());
        }
        req.extensions_mut()
            .insert(ClientAddr("10.1.0.7:40000".parse().unwrap()));
        req.extensions_mut().insert(match peer {
            Some(id) => PeerIdentity::mtls(id.parse().unwrap()),
            None => PeerIdentity::plaintext(),
        });
        tower::ServiceExt::oneshot(svc, req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn remote_ip_blocks_read_the_last_hop_a_mesh_proxy_wrote() {
        let gw = Some("spiffe://cluster.local/ns/istio-system/sa/ingress");
        // Through the gateway (an authenticated mesh peer): its entry counts.
        assert_eq!(remote(gw, &["203.0.113.9"]).await, 200);
        assert_eq!(remote(gw, &["198.51.100.1, 203.0.113.9"]).await, 200);
        assert_eq!(
            remote(gw, &["203.0.113.9", "198.51.100.1"]).await,
            403,
            "the last line's last entry"
        );
        assert_eq!(remote(gw, &["203.0.113.66"]).await, 403, "DENY remote.ip");
        assert_eq!(remote(gw, &["[2001:db8::1]:443"]).await, 403);
        // An entry that is no address is unknown: ALLOW does not match.
        assert_eq!(remote(gw, &["unknown"]).await, 403);
        // No header: the peer is the client.
        assert_eq!(remote(gw, &[]).await, 403);
        // A plaintext client's own X-Forwarded-For is never believed.
        assert_eq!(remote(None, &["203.0.113.9"]).await, 403);
    }
}
