//! The rules of an HTTPRoute as VirtualService rules: matches in the
//! Gateway API's precedence, filters, backends and their weights.

use serde_json::{Map, Value, json};

use super::route::Attachment;
use super::types::*;
use super::{Document, Errs, fqdn, is_core};

/// What every Istio rule made of one Gateway API rule does.
#[derive(Default)]
pub(super) struct Action {
    pub(super) fields: Map<String, Value>,
    /// URLRewrite `ReplacePrefixMatch`: the prefix replacement, which a
    /// split prefix match needs per piece.
    pub(super) replace_prefix: Option<String>,
    /// The rule has a `ReplaceFullPath` rewrite (exact or regex matches only).
    pub(super) full_path: bool,
}

pub(super) fn rule_action(
    e: &mut Errs<'_>,
    f: &str,
    d: &Document,
    rule: &Rule,
    at: &Attachment,
) -> Action {
    let mut a = Action::default();
    if let Some(name) = &rule.name {
        a.fields.insert("name".into(), json!(name));
    }
    let mut headers = Map::new();
    let mut rewrite = Map::new();
    let mut redirect: Option<Value> = None;
    let mut mirror = false;
    let mut seen: Vec<&str> = Vec::new();
    for (fi, filter) in rule.filters.iter().enumerate() {
        let ff = format!("{f}.filters[{fi}]");
        let t = filter.kind.as_str();
        let given = [
            (
                "RequestHeaderModifier",
                filter.request_header_modifier.is_some(),
            ),
            (
                "ResponseHeaderModifier",
                filter.response_header_modifier.is_some(),
            ),
            ("URLRewrite", filter.url_rewrite.is_some()),
            ("RequestRedirect", filter.request_redirect.is_some()),
            ("RequestMirror", filter.request_mirror.is_some()),
        ];
        if !given.iter().any(|(k, _)| *k == t) {
            e.err(
                format!("{ff}.type"),
                format!(
                    "`{t}` is not supported: this mesh reads RequestHeaderModifier, \
                     ResponseHeaderModifier, URLRewrite, RequestRedirect and RequestMirror"
                ),
            );
            continue;
        }
        for (k, set) in given {
            if set != (k == t) {
                e.err(
                    ff.clone(),
                    format!("a {t} filter must set exactly its own field"),
                );
            }
        }
        if t != "RequestMirror" && seen.contains(&t) {
            e.err(
                format!("{ff}.type"),
                format!("{t} is given twice in one rule"),
            );
            continue;
        }
        seen.push(t);
        match t {
            "RequestHeaderModifier" | "ResponseHeaderModifier" => {
                let m = filter
                    .request_header_modifier
                    .as_ref()
                    .or(filter.response_header_modifier.as_ref());
                if let Some(m) = m {
                    let side = if t == "RequestHeaderModifier" {
                        "request"
                    } else {
                        "response"
                    };
                    headers.insert(side.into(), header_ops(m));
                }
            }
            "URLRewrite" => {
                let Some(u) = &filter.url_rewrite else {
                    continue;
                };
                if let Some(h) = &u.hostname {
                    rewrite.insert("authority".into(), json!(h));
                }
                if let Some(p) = &u.path {
                    let pf = format!("{ff}.urlRewrite.path");
                    match (
                        p.kind.as_str(),
                        &p.replace_full_path,
                        &p.replace_prefix_match,
                    ) {
                        ("ReplaceFullPath", Some(v), None) => {
                            a.full_path = true;
                            rewrite.insert("uri".into(), json!(v));
                        }
                        ("ReplacePrefixMatch", None, Some(v)) => a.replace_prefix = Some(v.clone()),
                        _ => e.err(
                            pf,
                            "type must be ReplaceFullPath with replaceFullPath, or \
                             ReplacePrefixMatch with replacePrefixMatch",
                        ),
                    }
                }
            }
            "RequestRedirect" => {
                if let Some(r) = &filter.request_redirect {
                    redirect = request_redirect(e, &format!("{ff}.requestRedirect"), r, at);
                }
            }
            "RequestMirror" => {
                let Some(m) = &filter.request_mirror else {
                    continue;
                };
                if mirror {
                    e.err(ff.clone(), "one RequestMirror per rule is read");
                    continue;
                }
                mirror = true;
                let mf = format!("{ff}.requestMirror");
                if let Some(dest) = backend(
                    e,
                    &format!("{mf}.backendRef"),
                    d,
                    m.backend_ref.group.as_deref(),
                    m.backend_ref.kind.as_deref(),
                    &m.backend_ref.name,
                    m.backend_ref.namespace.as_deref(),
                    m.backend_ref.port,
                ) {
                    a.fields.insert("mirror".into(), dest);
                }
                let pct = match (m.percent, &m.fraction) {
                    (Some(_), Some(_)) => {
                        e.err(mf.clone(), "percent and fraction are exclusive");
                        100.0
                    }
                    (Some(p), None) => f64::from(p),
                    (None, Some(fr)) => {
                        let den = fr.denominator.unwrap_or(100);
                        if den == 0 || fr.numerator > den {
                            e.err(format!("{mf}.fraction"), "must be a fraction of at most 1");
                            100.0
                        } else {
                            100.0 * f64::from(fr.numerator) / f64::from(den)
                        }
                    }
                    (None, None) => 100.0,
                };
                a.fields
                    .insert("mirrorPercentage".into(), json!({"value": pct}));
            }
            _ => {}
        }
    }
    if !headers.is_empty() {
        a.fields.insert("headers".into(), Value::Object(headers));
    }
    if let Some(t) = &rule.timeouts {
        if let Some(req) = &t.request {
            match crate::resources::Duration::parse(req) {
                Ok(_) => {
                    a.fields.insert("timeout".into(), json!(req));
                }
                Err(m) => e.err(format!("{f}.timeouts.request"), m),
            }
        }
    }
    if let Some(r) = redirect {
        if !rule.backend_refs.is_empty() {
            e.err(
                format!("{f}.backendRefs"),
                "a rule that redirects sends nowhere; remove its backendRefs",
            );
        }
        if !rewrite.is_empty() || a.replace_prefix.is_some() {
            e.err(
                format!("{f}.filters"),
                "URLRewrite and RequestRedirect cannot be in one rule",
            );
        }
        a.fields.insert("redirect".into(), r);
        return a;
    }
    if !rewrite.is_empty() {
        a.fields.insert("rewrite".into(), Value::Object(rewrite));
    }
    let dests = destinations(e, f, d, &rule.backend_refs);
    if dests.is_empty() {
        // The Gateway API answers 500 when no backend can take the request.
        a.fields
            .insert("directResponse".into(), json!({"status": 500}));
    } else {
        a.fields.insert("route".into(), Value::Array(dests));
    }
    a
}

pub(super) fn header_ops(m: &HeaderModifier) -> Value {
    let pairs = |list: &[NameValue]| -> Map<String, Value> {
        let mut out = Map::new();
        for nv in list {
            // Header names are case-insensitive; the first of a name wins.
            out.entry(nv.name.to_ascii_lowercase())
                .or_insert_with(|| json!(nv.value));
        }
        out
    };
    let mut ops = Map::new();
    if !m.set.is_empty() {
        ops.insert("set".into(), Value::Object(pairs(&m.set)));
    }
    if !m.add.is_empty() {
        ops.insert("add".into(), Value::Object(pairs(&m.add)));
    }
    if !m.remove.is_empty() {
        let remove: Vec<String> = m.remove.iter().map(|h| h.to_ascii_lowercase()).collect();
        ops.insert("remove".into(), json!(remove));
    }
    Value::Object(ops)
}

pub(super) fn request_redirect(
    e: &mut Errs<'_>,
    f: &str,
    r: &RequestRedirect,
    at: &Attachment,
) -> Option<Value> {
    let mut out = Map::new();
    if let Some(s) = &r.scheme {
        if !matches!(s.as_str(), "http" | "https") {
            e.err(format!("{f}.scheme"), format!("`{s}` is not http or https"));
        }
        out.insert("scheme".into(), json!(s));
    } else if let Some(ls) = at.listeners.as_ref().filter(|ls| !ls.is_empty()) {
        // The Gateway API keeps the request's scheme: on an HTTPS listener
        // that is https, said here so the redirect does not fall back to
        // http where TLS was terminated.
        if ls.iter().all(|&(_, https)| https) {
            out.insert("scheme".into(), json!("https"));
        } else if ls.iter().any(|&(_, https)| https) {
            e.err(
                format!("{f}.scheme"),
                "is required here: the route is on HTTP and HTTPS listeners, whose schemes differ",
            );
        }
    }
    if let Some(h) = &r.hostname {
        out.insert("authority".into(), json!(h));
    }
    match r.port {
        Some(p) => {
            out.insert("port".into(), json!(p));
        }
        None if r.scheme.is_none() => {
            // The Gateway API keeps the listener's port; this mesh's
            // redirect leaves the port out, which is the same only on the
            // scheme's own port.
            let well_known = at.listeners.as_ref().is_some_and(|ls| {
                ls.iter()
                    .all(|&(port, https)| port == if https { 443 } else { 80 })
            });
            // A Service parent bound to a port: requests come in on it.
            let service_port = at.port.filter(|_| !at.services.is_empty());
            if let Some(p) = service_port.filter(|&p| p != 80) {
                out.insert("port".into(), json!(p));
            } else if !well_known && service_port.is_none() {
                e.err(
                    format!("{f}.port"),
                    "is required here: the port requests come in on is not known to be the \
                     scheme's own, and a redirect without a port would drop it",
                );
            }
        }
        None => {}
    }
    if let Some(p) = &r.path {
        match (p.kind.as_str(), &p.replace_full_path) {
            ("ReplaceFullPath", Some(v)) => {
                out.insert("uri".into(), json!(v));
            }
            _ => e.err(
                format!("{f}.path"),
                "only ReplaceFullPath is read in a redirect (ReplacePrefixMatch has no \
                 equivalent in a VirtualService redirect)",
            ),
        }
    }
    let code = r.status_code.unwrap_or(302);
    if !matches!(code, 301 | 302 | 303 | 307 | 308) {
        e.err(
            format!("{f}.statusCode"),
            format!("{code} is not a redirect status"),
        );
    }
    out.insert("redirectCode".into(), json!(code));
    Some(Value::Object(out))
}

/// A backend as an Istio destination, or `None` once refused.
#[allow(clippy::too_many_arguments)]
pub(super) fn backend(
    e: &mut Errs<'_>,
    f: &str,
    d: &Document,
    group: Option<&str>,
    kind: Option<&str>,
    name: &str,
    namespace: Option<&str>,
    port: Option<u16>,
) -> Option<Value> {
    if !is_core(group) || kind.is_some_and(|k| k != "Service") {
        e.err(
            format!("{f}.kind"),
            "only a Service (group \"\") backend is read",
        );
        return None;
    }
    if namespace.is_some_and(|n| n != d.namespace) {
        e.err(
            format!("{f}.namespace"),
            "a backend in another namespace needs a ReferenceGrant, which this mesh does not read",
        );
        return None;
    }
    let Some(port) = port else {
        e.err(format!("{f}.port"), "is required for a Service backend");
        return None;
    };
    Some(json!({"host": fqdn(name, &d.namespace), "port": {"number": port}}))
}

pub(super) fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Gateway API weights are relative (0 to 1,000,000); Istio's are at
/// most 100 each. Weights of at most 100 are kept; others are divided by
/// their greatest common divisor (the same split), and only when still
/// above 100 scaled to a sum of 100 (the split to within 1%).
pub(super) fn istio_weights(weights: &[u32]) -> Vec<u32> {
    if weights.iter().all(|&w| w <= 100) {
        // As written: `90`/`10` reads in `explain` as the user wrote it.
        return weights.to_vec();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    if reduced.iter().all(|&w| w <= 100) {
        return reduced.into_iter().map(|w| w as u32).collect();
    }
    let total: u64 = reduced.iter().sum();
    let mut out: Vec<u64> = reduced.iter().map(|&w| w * 100 / total).collect();
    let mut rest: Vec<(u64, usize)> = reduced
        .iter()
        .enumerate()
        .map(|(i, &w)| (w * 100 % total, i))
        .collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let short = 100 - out.iter().sum::<u64>();
    for &(_, i) in rest.iter().take(short as usize) {
        out[i] += 1;
    }
    out.into_iter().map(|w| w as u32).collect()
}

pub(super) fn destinations(
    e: &mut Errs<'_>,
    f: &str,
    d: &Document,
    refs: &[BackendRef],
) -> Vec<Value> {
    let mut dests = Vec::new();
    let mut weights = Vec::new();
    for (bi, b) in refs.iter().enumerate() {
        let bf = format!("{f}.backendRefs[{bi}]");
        if b.weight.is_some_and(|w| w > 1_000_000) {
            e.err(format!("{bf}.weight"), "is more than 1000000");
        }
        if let Some(dest) = backend(
            e,
            &bf,
            d,
            b.group.as_deref(),
            b.kind.as_deref(),
            &b.name,
            b.namespace.as_deref(),
            b.port,
        ) {
            dests.push(dest);
            weights.push(b.weight.unwrap_or(1));
        }
    }
    if weights.iter().all(|&w| w == 0) {
        return Vec::new();
    }
    if dests.len() == 1 {
        return vec![json!({"destination": dests[0]})];
    }
    dests
        .into_iter()
        .zip(istio_weights(&weights))
        .map(|(dest, w)| json!({"destination": dest, "weight": w}))
        .collect()
}

/// The Gateway API's precedence among matches, smallest first: exact
/// path, then prefix, then regular expression (Istio's order); the longer
/// path; a method; more headers; more query parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Precedence {
    pub(super) path_rank: u8,
    pub(super) path_len: std::cmp::Reverse<usize>,
    pub(super) no_method: bool,
    pub(super) headers: std::cmp::Reverse<usize>,
    pub(super) query: std::cmp::Reverse<usize>,
}

/// The Istio rules of one match of a rule: one, or two when a prefix
/// match is split (an exact path and the path below it) and a prefix
/// rewrite needs each its own replacement.
pub(super) fn match_routes(
    e: &mut Errs<'_>,
    f: &str,
    m: &Match,
    a: &Action,
    port: Option<u16>,
) -> Option<(Precedence, Vec<Value>)> {
    let mut base = Map::new();
    let mut headers = Map::new();
    for (i, h) in m.headers.iter().enumerate() {
        if let Some(sm) = value_match(e, &format!("{f}.headers[{i}]"), h) {
            // Case-insensitive names; the first of a name wins (Gateway API).
            headers.entry(h.name.to_ascii_lowercase()).or_insert(sm);
        }
    }
    let mut query = Map::new();
    for (i, q) in m.query_params.iter().enumerate() {
        if let Some(sm) = value_match(e, &format!("{f}.queryParams[{i}]"), q) {
            query.entry(q.name.clone()).or_insert(sm);
        }
    }
    let prec_headers = headers.len();
    let prec_query = query.len();
    if !headers.is_empty() {
        base.insert("headers".into(), Value::Object(headers));
    }
    if !query.is_empty() {
        base.insert("queryParams".into(), Value::Object(query));
    }
    if let Some(method) = &m.method {
        const METHODS: &[&str] = &[
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        if !METHODS.contains(&method.as_str()) {
            e.err(
                format!("{f}.method"),
                format!("`{method}` is not an HTTP method"),
            );
        }
        base.insert("method".into(), json!({"exact": method}));
    }
    if let Some(p) = port {
        base.insert("port".into(), json!(p));
    }
    let path = m.path.clone().unwrap_or_default();
    let kind = path.kind.as_deref().unwrap_or("PathPrefix");
    let value = path.value.clone().unwrap_or_else(|| "/".to_owned());
    let pf = format!("{f}.path");
    if kind != "RegularExpression" && !value.starts_with('/') {
        e.err(
            format!("{pf}.value"),
            format!("`{value}` must start with /"),
        );
        return None;
    }
    let with = |uri: Value| {
        let mut entry = base.clone();
        entry.insert("uri".into(), uri);
        Value::Object(entry)
    };
    let rule = |entries: Vec<Value>, uri_rewrite: Option<&str>| {
        let mut r = a.fields.clone();
        r.insert("match".into(), Value::Array(entries));
        if let Some(u) = uri_rewrite {
            let rw = r
                .entry("rewrite")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(rw) = rw {
                rw.insert("uri".into(), json!(u));
            }
        }
        Value::Object(r)
    };
    if a.replace_prefix.is_some() && kind != "PathPrefix" {
        e.err(
            pf.clone(),
            "a ReplacePrefixMatch rewrite needs PathPrefix matches",
        );
        return None;
    }
    if a.full_path && kind == "PathPrefix" {
        e.err(
            pf.clone(),
            "a ReplaceFullPath rewrite is read with Exact or RegularExpression path matches \
             only: with a prefix match this mesh would replace only the prefix",
        );
        return None;
    }
    let (rank, routes) = match kind {
        "Exact" => (0, vec![rule(vec![with(json!({"exact": value}))], None)]),
        "RegularExpression" => {
            if let Err(err) = crate::route::compile_regex(&value) {
                e.err(
                    format!("{pf}.value"),
                    format!("is not a regular expression: {err}"),
                );
                return None;
            }
            (2, vec![rule(vec![with(json!({"regex": value}))], None)])
        }
        "PathPrefix" => {
            // A Gateway API prefix matches whole path elements: `/foo` is
            // `/foo` and what is below `/foo/`, never `/foobar`.
            let p = value.trim_end_matches('/');
            let below = format!("{p}/");
            let routes = match (&a.replace_prefix, p.is_empty()) {
                (None, true) => vec![rule(vec![with(json!({"prefix": "/"}))], None)],
                (None, false) => vec![rule(
                    vec![with(json!({"exact": p})), with(json!({"prefix": below}))],
                    None,
                )],
                (Some(r), _) => {
                    let exact = if p.is_empty() { "/" } else { p };
                    let r_below = if r.ends_with('/') {
                        r.clone()
                    } else {
                        format!("{r}/")
                    };
                    vec![
                        rule(vec![with(json!({"exact": exact}))], Some(r)),
                        rule(vec![with(json!({"prefix": below}))], Some(&r_below)),
                    ]
                }
            };
            (1, routes)
        }
        other => {
            e.err(
                format!("{pf}.type"),
                format!("`{other}` is not one of Exact, PathPrefix, RegularExpression"),
            );
            return None;
        }
    };
    let prec = Precedence {
        path_rank: rank,
        path_len: std::cmp::Reverse(value.trim_end_matches('/').len()),
        no_method: m.method.is_none(),
        headers: std::cmp::Reverse(prec_headers),
        query: std::cmp::Reverse(prec_query),
    };
    Some((prec, routes))
}

pub(super) fn value_match(e: &mut Errs<'_>, f: &str, m: &ValueMatch) -> Option<Value> {
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Some(json!({"exact": m.value})),
        "RegularExpression" => {
            if let Err(err) = crate::route::compile_regex(&m.value) {
                e.err(
                    format!("{f}.value"),
                    format!("is not a regular expression: {err}"),
                );
                return None;
            }
            Some(json!({"regex": m.value}))
        }
        other => {
            e.err(
                format!("{f}.type"),
                format!("`{other}` is not one of Exact, RegularExpression"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::istio_weights;

    #[test]
    fn weights_keep_the_split() {
        assert_eq!(istio_weights(&[90, 10]), [90, 10]);
        assert_eq!(istio_weights(&[1, 1]), [1, 1]);
        assert_eq!(istio_weights(&[900, 100]), [9, 1]);
        assert_eq!(istio_weights(&[0, 5]), [0, 5]);
        assert_eq!(istio_weights(&[1000, 1]), [100, 0]);
        assert_eq!(istio_weights(&[201, 101, 1]).iter().sum::<u32>(), 100);
    }
}
