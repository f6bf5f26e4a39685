//! The balance layer: the endpoint of the planned destination, by the
//! DestinationRule's load-balancing algorithm (Istio's default,
//! `LEAST_REQUEST` as power of two choices; round robin; random; consistent
//! hash by the request's sticky key) among the endpoints outlier detection
//! has not ejected, avoiding the one the last attempt failed at. Then how to
//! reach it: client TLS and the secure-naming identities, both from the plan
//! (the snapshot the request was routed by, never a newer one). After the
//! attempt it records the outcome for outlier detection.
//!
//! Why not `tower::balance`: its power-of-two-choices balances over a
//! `Discover` stream of ready services, while Istio's algorithms (and the
//! sticky hash, and ejection) choose among the snapshot's endpoints per
//! request, with counters and health kept in [`TrafficState`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use mesh_core::outlier::Outcome;
use mesh_core::plan::EndpointTls;
use mesh_core::retry::Failure;
use tower::Service;

use super::pick::{self, EndpointSet};
use super::state::{EndpointState, RandomSource, TrafficState};
use super::{AttemptFuture, Avoid, Destination, Failed, Tried, attempt, planned};
use crate::body::BoxBody;
use crate::error::MeshError;
use crate::upstream::Dial;

/// Chooses the endpoint of each attempt and keeps its health.
#[derive(Debug, Clone)]
pub(crate) struct Balance<S> {
    next: S,
    state: Arc<TrafficState>,
    random: Arc<dyn RandomSource>,
}

impl<S> Balance<S> {
    pub(crate) fn new(next: S, state: Arc<TrafficState>, random: Arc<dyn RandomSource>) -> Self {
        Self {
            next,
            state,
            random,
        }
    }
}

impl<S> Service<Request<BoxBody>> for Balance<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Failed>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Failed;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        self.next.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> AttemptFuture {
        let plan = match planned(&req) {
            Ok(p) => p,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let (tried, endpoint) = match self.prepare(&plan, &mut req) {
            Ok(t) => t,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let in_flight = endpoint.start();
        let fut = attempt(self.next.call(req));
        let state = self.state.clone();
        Box::pin(async move {
            let mut result = fut.await;
            drop(in_flight);
            record_outcome(&state, &plan, &tried, &result);
            match &mut result {
                Ok(resp) => {
                    resp.extensions_mut().insert(tried);
                }
                Err(f) => {
                    name_endpoint(&mut f.error, &tried.endpoint.key);
                    f.tried = Some(tried);
                }
            }
            result
        })
    }
}

impl<S> Balance<S> {
    /// Chooses the endpoint and addresses the request to it.
    fn prepare(
        &self,
        plan: &Destination,
        req: &mut Request<BoxBody>,
    ) -> Result<(Tried, Arc<EndpointState>), Failed> {
        let subset = plan.subset.as_deref();
        let set = if plan.mirrored {
            EndpointSet::Mirror { host: &plan.host }
        } else {
            EndpointSet::Http {
                host: &plan.host,
                subset,
            }
        };
        let avoid = req.extensions().get::<Avoid>().map(|a| a.0.as_str());
        let ep = pick::endpoint(
            &plan.endpoints,
            &plan.spread,
            plan.load_balancer.as_ref(),
            plan.hash_key,
            &self.state,
            set,
            avoid,
            self.random.as_ref(),
        )
        .ok_or_else(|| {
            let target = match subset {
                Some(s) => format!("{} subset {s}", plan.host),
                None => plan.host.clone(),
            };
            Failed::before_endpoint(MeshError::NoHealthyEndpoint { target }, None)
        })?;
        let snap = &plan.snap;
        let service = snap.services.get(&plan.host).ok_or_else(|| {
            Failed::before_endpoint(
                MeshError::UnknownHost {
                    host: plan.host.clone(),
                },
                None,
            )
        })?;
        let tls = mesh_core::plan::endpoint_tls(snap, service, plan.port, subset, &ep).map_err(
            |why| {
                Failed::before_endpoint(
                    MeshError::CannotSecure {
                        host: plan.host.clone(),
                        why,
                    },
                    None,
                )
            },
        )?;
        let mtls = tls == EndpointTls::MeshMtls;
        if !mtls {
            // Who this workload is goes to mesh peers only, over mTLS,
            // never to a plaintext or external endpoint.
            req.headers_mut().remove(crate::telemetry::PEER_HEADER);
        }
        let origin = match tls {
            EndpointTls::Originate => {
                let settings = snap.client_tls(&service.host, plan.port, subset).settings;
                Some(
                    self.state
                        .origin(settings.as_ref(), &plan.host)
                        .map_err(|why| {
                            Failed::before_endpoint(
                                MeshError::CannotSecure {
                                    host: plan.host.clone(),
                                    why,
                                },
                                None,
                            )
                        })?,
                )
            }
            _ => None,
        };
        let scheme = if mtls || origin.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        // The endpoint's address parsed once per router and endpoint (its
        // state keeps it), the request's path moved over: no URI is
        // formatted or parsed per attempt.
        let endpoint = self.state.endpoint(&ep.key);
        let authority = endpoint.authority(&ep.key).map_err(|why| {
            Failed::before_endpoint(
                MeshError::UpstreamConnect {
                    endpoint: ep.key.clone(),
                    why,
                },
                None,
            )
        })?;
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| {
            Failed::before_endpoint(
                MeshError::UpstreamConnect {
                    endpoint: ep.key.clone(),
                    why: e.to_string(),
                },
                None,
            )
        })?;
        *req.version_mut() = http::Version::HTTP_11;
        let identities = if mtls {
            self.state
                .identity_set(mesh_core::plan::identities_in(snap, &ep))
        } else {
            Arc::from([])
        };
        req.extensions_mut().insert(Dial {
            identities,
            connect_timeout: plan.connect_timeout,
            http_conn: plan.http_conn,
            originate: origin,
            http2: if mtls { plan.h2_over_mtls } else { plan.h2 },
        });
        // The endpoint is not put in the request for the layers below:
        // this layer reports it with the attempt's answer or failure
        // (naming it in an upstream error, see `name_endpoint`).
        Ok((Tried { endpoint: ep, mtls }, endpoint))
    }
}

/// Names the endpoint tried in an upstream failure from below that does
/// not say where it went: the connect layer reports the endpoint only
/// when the request carries it ([`Tried`]), and this layer does not put it
/// there, to spare a copy of it on every attempt for the failing few.
fn name_endpoint(error: &mut MeshError, key: &str) {
    if let MeshError::UpstreamConnect { endpoint, .. }
    | MeshError::UpstreamProtocol { endpoint, .. } = error
    {
        if endpoint.is_empty() {
            key.clone_into(endpoint);
        }
    }
}

/// Outlier detection's bookkeeping of one attempt. A failure that is the
/// caller's (a request body over its limit) says nothing of the endpoint;
/// mirrored copies are not counted.
fn record_outcome(
    state: &TrafficState,
    plan: &Destination,
    tried: &Tried,
    result: &Result<Response<BoxBody>, Failed>,
) {
    let Some(op) = plan.outlier.as_ref().filter(|_| !plan.mirrored) else {
        return;
    };
    let outcome = match result {
        Ok(resp) if resp.status().as_u16() >= 500 => Outcome::Status(resp.status().as_u16()),
        Ok(_) => Outcome::Success,
        Err(f) => match f.failure {
            None => return,
            Some(Failure::Status(s)) => Outcome::Status(s),
            Some(_) => Outcome::ConnectFailure,
        },
    };
    let snap = &plan.snap;
    // Istio's maxEjectionPercent counts the whole service, not the subset.
    let Some(svc) = snap.services.get(&plan.host) else {
        return;
    };
    let now = Instant::now();
    let ejected = svc
        .port(plan.port)
        .and_then(|sp| mesh_core::plan::endpoints(snap, svc, sp, None))
        .map_or(0, |all| {
            all.iter()
                .filter(|e| !state.endpoint(&e.key).is_available(now))
                .count()
        });
    let may_eject = ejected < op.max_ejected(svc.workloads.len());
    if state
        .endpoint(&tried.endpoint.key)
        .record(outcome, now, op, may_eject)
    {
        tracing::info!(endpoint = %tried.endpoint.key, host = %plan.host, "outlier detection ejected an endpoint");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tower::ServiceExt;

    use super::*;
    use crate::body::full;
    use crate::traffic::state::SeededRandom;
    use crate::traffic::{test_planned, test_store};

    const MESH: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
        metadata: {name: web, namespace: default}\nspec:\n  hosts: [web.default.svc.cluster.local]\n  \
        ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  \
        endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]\n---\n\
        apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
        metadata: {name: web, namespace: default}\nspec:\n  host: web.default.svc.cluster.local\n  \
        trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    \
        outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}\n";

    type Seen = Arc<Mutex<Vec<(String, bool, Option<Vec<String>>)>>>;

    fn balance(
        status: u16,
        seen: Seen,
    ) -> Balance<
        impl Service<
            Request<BoxBody>,
            Response = Response<BoxBody>,
            Error = Failed,
            Future = impl Send + 'static,
        > + Clone,
    > {
        Balance::new(
            tower::service_fn(move |req: Request<BoxBody>| {
                let seen = seen.clone();
                async move {
                    let dial = req
                        .extensions()
                        .get::<Dial>()
                        .expect("every attempt has a dial");
                    // Secure naming's identities travel with mesh mTLS only.
                    let ids = (!dial.identities.is_empty())
                        .then(|| dial.identities.iter().map(ToString::to_string).collect());
                    seen.lock()
                        .unwrap()
                        .push((req.uri().to_string(), dial.http2, ids));
                    let mut resp = Response::new(full("x"));
                    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, Failed>(resp)
                }
            }),
            Arc::new(TrafficState::default()),
            Arc::new(SeededRandom::new(1)),
        )
    }

    fn request(store: &mesh_core::store::Store, path: &str) -> Request<BoxBody> {
        let mut r = Request::get(path).body(crate::body::empty()).unwrap();
        r.extensions_mut().insert(test_planned(
            store,
            "web.default.svc.cluster.local",
            80,
            |_| {},
        ));
        r
    }

    #[tokio::test]
    async fn round_robin_addresses_each_endpoint_with_its_tls_and_identities() {
        let store = test_store(MESH);
        let seen: Seen = Arc::default();
        let svc = balance(200, seen.clone());
        for _ in 0..4 {
            let resp = svc
                .clone()
                .oneshot(request(&store, "/a?b=c"))
                .await
                .unwrap();
            let tried = resp
                .extensions()
                .get::<Tried>()
                .expect("the endpoint tried");
            assert!(tried.mtls, "STRICT by default: mesh mTLS");
        }
        let seen = seen.lock().unwrap();
        let uris: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            uris,
            [
                "https://10.0.0.1:80/a?b=c",
                "https://10.0.0.2:80/a?b=c",
                "https://10.0.0.1:80/a?b=c",
                "https://10.0.0.2:80/a?b=c"
            ]
        );
        let ids = seen[0].2.as_ref().expect("secure naming from the plan");
        assert_eq!(ids, &["spiffe://cluster.local/ns/default/sa/default"]);
        assert!(!seen[0].1);
    }

    #[tokio::test]
    async fn a_5xx_ejects_the_endpoint_and_the_avoided_one_is_skipped() {
        let store = test_store(MESH);
        let seen: Seen = Arc::default();
        let failing = balance(503, seen.clone());
        let resp = failing.clone().oneshot(request(&store, "/")).await.unwrap();
        let first = resp
            .extensions()
            .get::<Tried>()
            .unwrap()
            .endpoint
            .key
            .clone();
        // Ejected now: every later request goes to the other endpoint, even
        // one asking to avoid that other (there is nobody else).
        for _ in 0..3 {
            let mut req = request(&store, "/");
            req.extensions_mut().insert(Avoid(
                if first == "10.0.0.1:80" {
                    "10.0.0.2:80"
                } else {
                    "10.0.0.1:80"
                }
                .into(),
            ));
            let ok = balance(200, seen.clone());
            // A fresh layer shares nothing: use the failing one's state.
            let ok = Balance {
                state: failing.state.clone(),
                ..ok
            };
            let resp = ok.oneshot(req).await.unwrap();
            assert_ne!(
                resp.extensions().get::<Tried>().unwrap().endpoint.key,
                first
            );
        }
    }

    #[tokio::test]
    async fn no_endpoint_left_is_503_no_healthy_upstream() {
        let store = test_store(MESH);
        let mut req = Request::get("/").body(crate::body::empty()).unwrap();
        req.extensions_mut().insert(test_planned(
            &store,
            "web.default.svc.cluster.local",
            80,
            |d| d.endpoints = Arc::from([]),
        ));
        let err = balance(200, Arc::default()).oneshot(req).await.unwrap_err();
        assert_eq!(err.error.response_flag(), "UH");
    }
}
