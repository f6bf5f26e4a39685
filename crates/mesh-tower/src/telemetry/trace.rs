//! Trace context propagation: W3C Trace Context (`traceparent`,
//! `tracestate`) and Zipkin's B3 (`x-b3-*` headers and the single `b3`
//! header).
//!
//! Inbound, the [`Telemetry`](super::Telemetry) layer (reporter
//! `destination`) extracts the caller's context, or starts a trace, opens a
//! server span as its child, and makes it [`current`] for the handler's task
//! through a tokio task-local. Outbound, the `source` layer (or
//! [`PropagateLayer`] alone) reads the current context and sends a new child
//! span of it, so a handler's calls carry its trace with no code in the
//! handler. The task-local does not follow `tokio::spawn`: carry it with
//! [`TraceContext::scope`].
//!
//! We only propagate: spans are not recorded or exported here.

use std::future::Future;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static CURRENT: TraceContext;
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const B3: &str = "b3";
const B3_TRACE_ID: &str = "x-b3-traceid";
const B3_SPAN_ID: &str = "x-b3-spanid";
const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
const B3_SAMPLED: &str = "x-b3-sampled";
const B3_FLAGS: &str = "x-b3-flags";

const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);
const B3_NAME: HeaderName = HeaderName::from_static(B3);
const B3_TRACE_ID_NAME: HeaderName = HeaderName::from_static(B3_TRACE_ID);
const B3_SPAN_ID_NAME: HeaderName = HeaderName::from_static(B3_SPAN_ID);
const B3_PARENT_SPAN_ID_NAME: HeaderName = HeaderName::from_static(B3_PARENT_SPAN_ID);
const B3_SAMPLED_NAME: HeaderName = HeaderName::from_static(B3_SAMPLED);
const B3_FLAGS_NAME: HeaderName = HeaderName::from_static(B3_FLAGS);

/// Lowercase hex, as W3C and B3 write IDs.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// `v` as 32 lowercase hex digits.
fn hex32(v: u128) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// `v` as 16 lowercase hex digits.
fn hex16(v: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Sets a header to hex digits and dashes (always a valid value).
fn put(headers: &mut HeaderMap, name: &HeaderName, value: bytes::Bytes) {
    if let Ok(v) = HeaderValue::from_maybe_shared(value) {
        headers.insert(name.clone(), v);
    }
}

/// One span's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    sampled: bool,
    tracestate: Option<String>,
    /// The trace ID came as 64-bit B3 and goes out the same way in B3.
    b3_short_trace_id: bool,
    /// The caller used the single `b3` header; answer in kind.
    b3_single: bool,
}

impl TraceContext {
    /// A new trace, sampled (downstream tracers may record it).
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            parent_span_id: None,
            sampled: true,
            tracestate: None,
            b3_short_trace_id: false,
            b3_single: false,
        }
    }

    /// The same context with the sampling decision `sampled` (a new root's
    /// decision: the Telemetry API's `randomSamplingPercentage`).
    pub fn with_sampled(mut self, sampled: bool) -> Self {
        self.sampled = sampled;
        self
    }

    /// A new span in the same trace, child of this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            parent_span_id: Some(self.span_id),
            ..self.clone()
        }
    }

    /// The 128-bit trace ID.
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }

    /// The trace ID as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This span's ID.
    pub fn span_id(&self) -> u64 {
        self.span_id
    }

    /// The parent span's ID.
    pub fn parent_span_id(&self) -> Option<u64> {
        self.parent_span_id
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The W3C `tracestate`, passed through unchanged.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The caller's context from its headers: `traceparent` first, then
    /// `b3`, then `x-b3-*`. Malformed headers count as absent (the W3C rule:
    /// start a new trace rather than fail the request).
    pub fn extract(headers: &HeaderMap) -> Option<Self> {
        if let Some(mut ctx) = header(headers, TRACEPARENT).and_then(parse_traceparent) {
            let state: Vec<&str> = headers
                .get_all(TRACESTATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect();
            if !state.is_empty() {
                ctx.tracestate = Some(state.join(","));
            }
            return Some(ctx);
        }
        if let Some(ctx) = header(headers, B3).and_then(parse_b3_single) {
            return Some(ctx);
        }
        parse_b3_multi(headers)
    }

    /// Whether the headers carry any trace context.
    pub fn present_in(headers: &HeaderMap) -> bool {
        headers.contains_key(TRACEPARENT)
            || headers.contains_key(B3)
            || headers.contains_key(B3_TRACE_ID)
    }

    /// Writes this span as `traceparent` (and `tracestate`), `x-b3-*`, and
    /// `b3` when the caller used it, replacing what was there.
    pub fn inject(&self, headers: &mut HeaderMap) {
        // Every request goes through here, twice per hop: the values are
        // written into one buffer (one allocation for all of them, each
        // header a slice of it), not with `format!`, and the names are
        // constants, not parsed per call.
        let trace = hex32(self.trace_id);
        let b3_trace: &[u8] = if self.b3_short_trace_id {
            &trace[16..]
        } else {
            &trace
        };
        let span = hex16(self.span_id);
        let parent = self.parent_span_id.map(hex16);
        let mut buf = bytes::BytesMut::with_capacity(55 + 32 + 16 + 16 + 68);
        // traceparent: version, trace, span, flags.
        buf.extend_from_slice(b"00-");
        buf.extend_from_slice(&trace);
        buf.extend_from_slice(b"-");
        buf.extend_from_slice(&span);
        buf.extend_from_slice(if self.sampled { b"-01" } else { b"-00" });
        let traceparent = 0..buf.len();
        let b3_trace_at = buf.len()..buf.len() + b3_trace.len();
        buf.extend_from_slice(b3_trace);
        let span_at = buf.len()..buf.len() + span.len();
        buf.extend_from_slice(&span);
        let parent_at = parent.map(|p| {
            buf.extend_from_slice(&p);
            buf.len() - p.len()..buf.len()
        });
        let single_at = self.b3_single.then(|| {
            let from = buf.len();
            buf.extend_from_slice(b3_trace);
            buf.extend_from_slice(b"-");
            buf.extend_from_slice(&span);
            buf.extend_from_slice(if self.sampled { b"-1" } else { b"-0" });
            if let Some(p) = &parent {
                buf.extend_from_slice(b"-");
                buf.extend_from_slice(p);
            }
            from..buf.len()
        });
        let buf = buf.freeze();
        put(headers, &TRACEPARENT_NAME, buf.slice(traceparent));
        put(headers, &B3_TRACE_ID_NAME, buf.slice(b3_trace_at));
        put(headers, &B3_SPAN_ID_NAME, buf.slice(span_at));
        headers.insert(
            B3_SAMPLED_NAME,
            HeaderValue::from_static(if self.sampled { "1" } else { "0" }),
        );
        match parent_at {
            Some(at) => put(headers, &B3_PARENT_SPAN_ID_NAME, buf.slice(at)),
            None => {
                headers.remove(B3_PARENT_SPAN_ID_NAME);
            }
        }
        match single_at {
            Some(at) => put(headers, &B3_NAME, buf.slice(at)),
            None => {
                headers.remove(B3_NAME);
            }
        }
        headers.remove(B3_FLAGS_NAME);
        match self
            .tracestate
            .as_deref()
            .and_then(|s| HeaderValue::from_str(s).ok())
        {
            Some(v) => {
                headers.insert(TRACESTATE_NAME, v);
            }
            None => {
                headers.remove(TRACESTATE_NAME);
            }
        }
    }

    /// Runs `fut` with this context as the [`current`] one.
    pub fn scope<F: Future>(self, fut: F) -> TaskLocalFuture<TraceContext, F> {
        CURRENT.scope(self, fut)
    }
}

/// The trace context of the request the current task is handling, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Outbound: the context to send, and whether the headers need it. A
/// request that already carries trace headers keeps them.
pub(crate) fn outbound(headers: &mut HeaderMap, sampled: bool) -> TraceContext {
    if TraceContext::present_in(headers) {
        if let Some(ctx) = TraceContext::extract(headers) {
            return ctx;
        }
    }
    let ctx = current().map_or_else(
        || TraceContext::new_root().with_sampled(sampled),
        |c| c.child(),
    );
    ctx.inject(headers);
    ctx
}

/// Inbound: the server span, child of the caller's (or a new root), written
/// back into the request's headers so that a proxied application sees it as
/// its parent.
pub(crate) fn inbound(headers: &mut HeaderMap, sampled: bool) -> TraceContext {
    let ctx = TraceContext::extract(headers).map_or_else(
        || TraceContext::new_root().with_sampled(sampled),
        |c| c.child(),
    );
    ctx.inject(headers);
    ctx
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `version-traceid-parentid-flags`, by W3C Trace Context level 1: version
/// `ff` and all-zero IDs are invalid; a later version may append fields.
fn parse_traceparent(s: &str) -> Option<TraceContext> {
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(span) || !is_lower_hex(flags) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|v| *v != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|v| *v != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id: None,
        sampled: flags & 1 == 1,
        tracestate: None,
        b3_short_trace_id: false,
        b3_single: false,
    })
}

/// A B3 trace ID: 16 or 32 hex digits.
fn b3_trace_id(s: &str) -> Option<(u128, bool)> {
    if !(s.len() == 16 || s.len() == 32) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let v = u128::from_str_radix(s, 16).ok().filter(|v| *v != 0)?;
    Some((v, s.len() == 16))
}

fn b3_span_id(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok().filter(|v| *v != 0)
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// `b3: traceid-spanid[-sampled[-parentspanid]]`. A sampling decision alone
/// (`b3: 0`) carries no context.
fn parse_b3_single(s: &str) -> Option<TraceContext> {
    let mut parts = s.split('-');
    let (trace_id, short) = b3_trace_id(parts.next()?)?;
    let span_id = b3_span_id(parts.next()?)?;
    let sampled = match parts.next() {
        Some(v) => b3_sampled(v)?,
        None => true,
    };
    let parent_span_id = match parts.next() {
        Some(p) => Some(b3_span_id(p)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        sampled,
        tracestate: None,
        b3_short_trace_id: short,
        b3_single: true,
    })
}

fn parse_b3_multi(headers: &HeaderMap) -> Option<TraceContext> {
    let (trace_id, short) = b3_trace_id(header(headers, B3_TRACE_ID)?)?;
    let span_id = b3_span_id(header(headers, B3_SPAN_ID)?)?;
    let parent_span_id = header(headers, B3_PARENT_SPAN_ID).and_then(b3_span_id);
    let debug = header(headers, B3_FLAGS) == Some("1");
    let sampled = debug
        || header(headers, B3_SAMPLED)
            .and_then(b3_sampled)
            .unwrap_or(true);
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        sampled,
        tracestate: None,
        b3_short_trace_id: short,
        b3_single: false,
    })
}

/// Injects the current trace context into outbound requests: a new span,
/// child of the request being handled, in the same trace. Requests that
/// already carry trace headers pass unchanged. The
/// [`Telemetry`](super::Telemetry) layer with reporter `source` does this
/// too; use this one for calls that should not be measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateLayer;

impl PropagateLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> tower::Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Propagate::new(inner)
    }
}

/// See [`PropagateLayer`].
#[derive(Debug, Clone)]
pub struct Propagate<S> {
    inner: S,
}

impl<S> Propagate<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// A [`PropagateLayer`].
    pub fn layer() -> PropagateLayer {
        PropagateLayer
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

/// The future of [`Propagate`]: the inner future, run with the outbound
/// span as the current context.
pub type PropagateFuture<F> = TaskLocalFuture<TraceContext, F>;

impl<S, B> tower::Service<Request<B>> for Propagate<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PropagateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ctx = outbound(req.headers_mut(), true);
        ctx.scope(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn w3c_round_trip_and_rejections() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::extract(&headers(&[
            ("traceparent", tp),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]))
        .unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id(), 0x00f067aa0ba902b7);
        assert!(ctx.sampled());
        assert_eq!(
            ctx.tracestate(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        let mut out = HeaderMap::new();
        ctx.inject(&mut out);
        assert_eq!(out["traceparent"], tp);
        assert_eq!(out["tracestate"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");

        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(
                TraceContext::extract(&headers(&[("traceparent", bad)])),
                None,
                "{bad}"
            );
        }
        // A later version may add fields.
        assert!(
            TraceContext::extract(&headers(&[(
                "traceparent",
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever"
            )]))
            .is_some_and(|c| !c.sampled())
        );
    }

    #[test]
    fn b3_single_and_multi() {
        let ctx = TraceContext::extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(ctx.trace_id_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(ctx.parent_span_id(), Some(0x05e3ac9a4f6e3b90));
        let child = ctx.child();
        let mut out = HeaderMap::new();
        child.inject(&mut out);
        let b3 = out["b3"].to_str().unwrap();
        assert!(b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"), "{b3}");
        assert!(b3.ends_with("-1-e457b5a2e4d86bd1"), "{b3}");

        let ctx = TraceContext::extract(&headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert!(!ctx.sampled());
        let mut out = HeaderMap::new();
        ctx.child().inject(&mut out);
        assert_eq!(out["x-b3-traceid"], "463ac35c9f6413ad");
        assert_eq!(out["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(out["x-b3-sampled"], "0");
        assert_eq!(
            out["traceparent"].to_str().unwrap()[..35],
            *"00-0000000000000000463ac35c9f6413ad"
        );
        // Only a sampling decision: no context.
        assert_eq!(TraceContext::extract(&headers(&[("b3", "0")])), None);
        // traceparent wins over B3.
        let ctx = TraceContext::extract(&headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ]))
        .unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[tokio::test]
    async fn current_is_scoped_to_the_task() {
        assert_eq!(current(), None);
        let ctx = TraceContext::new_root();
        let seen = ctx.clone().scope(async { current() }).await;
        assert_eq!(seen, Some(ctx));
        assert_eq!(current(), None);
    }
}
