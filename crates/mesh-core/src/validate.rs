//! Checks that reject a configuration: values that are malformed, settings
//! that contradict each other inside one resource, and anything a security
//! resource asks for that this mesh cannot honour (fail closed). Problems
//! that span resources and still leave a usable configuration (a route to a
//! missing subset, say) are the analyzers' business, in [`crate::analyze`].

use crate::error::ConfigError;
use crate::resources::common::StringMatch;
use crate::resources::networking::{
    ClientTlsMode, ClientTlsSettings, DestinationRule, Gateway, HttpRoute, LoadBalancerSettings,
    LocalityLbSetting, Protocol, Resolution, ServerTlsMode, ServiceEntry, Sidecar, TrafficPolicy,
    VirtualService, WorkloadEntry,
};
use crate::resources::security::{
    AuthorizationPolicy, AuthzAction, LegacyPolicy, PeerAuthentication, RequestAuthentication,
};
use crate::resources::{Item, Kind, Percent, Resources};

/// Conditions `retryOn` may name (Envoy's vocabulary, as Istio passes it on).
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// The `when` keys an AuthorizationPolicy may use here.
pub const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "source.trustDomain",
    "destination.ip",
    "destination.port",
    "connection.sni",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];

struct Checker<'a> {
    errors: &'a mut Vec<ConfigError>,
    item: (&'a crate::resources::Origin, String),
}

impl Checker<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::at(
            self.item.0,
            Some(self.item.1.clone()),
            field,
            message,
        ));
    }

    fn percent(&mut self, field: &str, p: Option<Percent>) {
        if let Some(p) = p {
            if !(0.0..=100.0).contains(&p.value) {
                self.err(
                    format!("{field}.value"),
                    format!("{} is not between 0 and 100", p.value),
                );
            }
        }
    }

    /// A `*` only as the first character (`*.example.com`, or Istio's
    /// "weird but allowed" `*x`), as Istio's host validation allows: `foo*`
    /// and `a.*.com` match nothing the way their writer meant.
    fn wildcard(&mut self, field: &str, host: &str) {
        if host.get(1..).is_some_and(|rest| rest.contains('*')) {
            self.err(
                field.to_owned(),
                format!(
                    "`{host}`: a wildcard is allowed only as the first character (`*.example.com`)"
                ),
            );
        }
    }

    fn export_to(&mut self, list: &[String]) {
        for (field, message) in crate::visibility::export_to_problems("spec.exportTo", list) {
            self.err(field, message);
        }
    }

    fn string_match(&mut self, field: &str, m: &StringMatch) {
        if let StringMatch::Regex(re) = m {
            if let Err(e) = crate::route::compile_regex(re) {
                self.err(
                    format!("{field}.regex"),
                    format!("invalid regular expression: {e}"),
                );
            }
        }
    }
}

fn checker<'a, T>(errors: &'a mut Vec<ConfigError>, item: &'a Item<T>) -> Checker<'a> {
    Checker {
        errors,
        item: (&item.source.origin, item.source.to_string()),
    }
}

/// Validates every resource; returns all problems found.
pub fn validate(r: &Resources) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for i in &r.virtual_services {
        virtual_service(&mut checker(&mut errors, i), &i.spec);
    }
    for i in &r.destination_rules {
        destination_rule(&mut checker(&mut errors, i), &i.spec);
    }
    for i in &r.gateways {
        gateway(&mut checker(&mut errors, i), &i.spec);
    }
    for i in &r.service_entries {
        service_entry(&mut checker(&mut errors, i), &i.spec);
    }
    for i in &r.workload_entries {
        workload_entry(&mut checker(&mut errors, i), "spec", &i.spec);
    }
    for i in &r.sidecars {
        sidecar(&mut checker(&mut errors, i), &i.spec);
    }
    for i in &r.peer_authentications {
        peer_authentication(&mut checker(&mut errors, i), &i.spec);
    }
    for i in &r.legacy_policies {
        legacy_policy(&mut checker(&mut errors, i), i.source.kind, &i.spec);
    }
    for i in &r.request_authentications {
        request_authentication(&mut checker(&mut errors, i), &i.spec);
    }
    for i in &r.telemetries {
        errors.extend(crate::telemetry::validate(i, &r.mesh));
    }
    for i in &r.authorization_policies {
        let c = &mut checker(&mut errors, i);
        authorization_policy(c, &i.spec);
        if let Err(why) = crate::resources::security::dry_run(&i.meta) {
            c.err(crate::resources::security::DRY_RUN_FIELD, why);
        }
    }
    errors
}

fn virtual_service(c: &mut Checker<'_>, vs: &VirtualService) {
    c.export_to(&vs.export_to);
    if vs.hosts.is_empty() {
        c.err("spec.hosts", "at least one host is required");
    }
    let mesh_bound = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    for (i, h) in vs.hosts.iter().enumerate() {
        if h.is_empty() {
            c.err(format!("spec.hosts[{i}]"), "is empty");
        } else if h == "*" && mesh_bound {
            c.err(
                format!("spec.hosts[{i}]"),
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
        } else {
            c.wildcard(&format!("spec.hosts[{i}]"), h);
        }
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        if g.is_empty() || g.matches('/').count() > 1 {
            c.err(
                format!("spec.gateways[{i}]"),
                format!("`{g}` is not `name`, `namespace/name` or `mesh`"),
            );
        }
    }
    for (i, route) in vs.http.iter().enumerate() {
        http_route(c, &format!("spec.http[{i}]"), route, mesh_bound);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        let f = format!("spec.tcp[{i}]");
        if route.route.is_empty() {
            c.err(format!("{f}.route"), "at least one destination is required");
        }
        let weights: Vec<Option<u32>> = route.route.iter().map(|d| d.weight).collect();
        weights_present(c, &f, &weights);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        tls_route(c, &format!("spec.tls[{i}]"), route, vs);
    }
}

/// Istio's checks of a TLS route (`validateTLSRoute`), and the match
/// fields this mesh does not read, refused by name.
fn tls_route(
    c: &mut Checker<'_>,
    f: &str,
    r: &crate::resources::networking::TlsRoute,
    vs: &VirtualService,
) {
    if r.matches.is_empty() {
        c.err(format!("{f}.match"), "at least one match is required");
    }
    if r.route.is_empty() {
        c.err(format!("{f}.route"), "at least one destination is required");
    }
    let weights: Vec<Option<u32>> = r.route.iter().map(|d| d.weight).collect();
    weights_present(c, f, &weights);
    for (j, m) in r.matches.iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        if m.sni_hosts.is_empty() {
            c.err(
                format!("{mf}.sniHosts"),
                "at least one SNI host is required",
            );
        }
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let sf = format!("{mf}.sniHosts[{k}]");
            if sni.is_empty() {
                c.err(sf.clone(), "is empty");
                continue;
            }
            c.wildcard(&sf, sni);
            let within = vs.hosts.iter().any(|h| {
                crate::visibility::host_matches(h, sni) || crate::visibility::host_matches(sni, h)
            });
            if !within {
                c.err(
                    sf,
                    format!(
                        "`{sni}` is not a compatible subset of any of the VirtualService's hosts"
                    ),
                );
            }
        }
        for (name, set) in [
            ("destinationSubnets", !m.destination_subnets.is_empty()),
            ("sourceLabels", !m.source_labels.is_empty()),
            ("sourceNamespace", m.source_namespace.is_some()),
        ] {
            if set {
                c.err(
                    format!("{mf}.{name}"),
                    "is not read for TLS routes: match by sniHosts, port and gateways",
                );
            }
        }
    }
}

fn weights_present(c: &mut Checker<'_>, f: &str, weights: &[Option<u32>]) {
    for (j, w) in weights.iter().enumerate() {
        match w {
            None if weights.len() > 1 => c.err(
                format!("{f}.route[{j}].weight"),
                "is required when a rule has more than one destination",
            ),
            Some(w) if *w > 100 => c.err(
                format!("{f}.route[{j}].weight"),
                format!("{w} is more than 100"),
            ),
            _ => {}
        }
    }
}

/// `mesh_bound`: the VirtualService applies to mesh traffic (no
/// `gateways`, or `mesh` among them).
fn http_route(c: &mut Checker<'_>, f: &str, r: &HttpRoute, mesh_bound: bool) {
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => c.err(
            f.to_owned(),
            "needs one of route, redirect or directResponse",
        ),
        1 => {}
        _ => c.err(
            f.to_owned(),
            "route, redirect and directResponse exclude each other",
        ),
    }
    for (j, m) in r.matches.iter().enumerate() {
        let mf = format!("{f}.match[{j}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                c.string_match(&format!("{mf}.{name}"), sm);
            }
        }
        for (map_name, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
            ("queryParams", &m.query_params),
        ] {
            for (k, sm) in map {
                c.string_match(&format!("{mf}.{map_name}.{k}"), sm);
                if map_name != "queryParams" && k.starts_with('@') {
                    // Istio's `@request.auth.claims.*` pseudo-headers match
                    // the claims of the token the gateway validated before
                    // routing. A sidecar routes outbound requests, which no
                    // RequestAuthentication has checked: as in Istio, only
                    // gateway routes may match on claims, and elsewhere the
                    // rule is refused rather than never applied.
                    let match_mesh = m.gateways.iter().any(|g| g == "mesh");
                    if crate::route::claim_match_path(k).is_none() {
                        c.err(
                            format!("{mf}.{map_name}.{k}"),
                            format!("`{k}` is no HTTP header and names no claim (write @request.auth.claims.NAME, nested as NAME.SUB)"),
                        );
                    } else if mesh_bound || match_mesh {
                        c.err(
                            format!("{mf}.{map_name}.{k}"),
                            format!(
                                "`{k}`: routing on JWT claims applies to gateway routes only (Istio's rule): bind the VirtualService to its Gateway, not to `mesh`"
                            ),
                        );
                    }
                }
            }
        }
    }
    let weights: Vec<Option<u32>> = r.route.iter().map(|d| d.weight).collect();
    weights_present(c, f, &weights);
    match (r.mirror_percent, r.mirror_percentage) {
        (Some(_), Some(_)) => c.err(
            format!("{f}.mirrorPercent"),
            "mirrorPercent and mirrorPercentage exclude each other (mirrorPercent is the deprecated spelling)",
        ),
        (Some(p), None) if p > 100 => {
            c.err(format!("{f}.mirrorPercent"), format!("{p} is more than 100"));
        }
        _ => {}
    }
    if r.mirror.is_none() && (r.mirror_percent.is_some() || r.mirror_percentage.is_some()) {
        c.err(
            format!("{f}.mirrorPercentage"),
            "a share of requests to mirror needs a mirror destination",
        );
    }
    if let Some(redirect) = &r.redirect {
        if let Some(code) = redirect.redirect_code {
            if !(300..=399).contains(&code) {
                c.err(
                    format!("{f}.redirect.redirectCode"),
                    format!("{code} is not a 3xx status"),
                );
            }
        }
    }
    if let Some(d) = &r.direct_response {
        if !(200..=599).contains(&d.status) {
            c.err(
                format!("{f}.directResponse.status"),
                format!("{} is not an HTTP status", d.status),
            );
        }
    }
    if let Some(retries) = &r.retries {
        if let Some(on) = &retries.retry_on {
            for cond in on.split(',').map(str::trim) {
                if !(RETRY_ON.contains(&cond)
                    || cond.parse::<u16>().is_ok_and(|s| (100..=599).contains(&s)))
                {
                    c.err(
                        format!("{f}.retries.retryOn"),
                        format!(
                            "`{cond}` is not a retry condition; use {}",
                            RETRY_ON.join(", ")
                        ),
                    );
                }
            }
        }
    }
    if let Some(fault) = &r.fault {
        if fault.delay.is_none() && fault.abort.is_none() {
            c.err(format!("{f}.fault"), "needs delay or abort");
        }
        if let Some(d) = &fault.delay {
            c.percent(&format!("{f}.fault.delay.percentage"), d.percentage);
        }
        if let Some(a) = &fault.abort {
            c.percent(&format!("{f}.fault.abort.percentage"), a.percentage);
            if !(200..=599).contains(&a.http_status) {
                c.err(
                    format!("{f}.fault.abort.httpStatus"),
                    format!("{} is not an HTTP status", a.http_status),
                );
            }
        }
    }
    c.percent(&format!("{f}.mirrorPercentage"), r.mirror_percentage);
    if let Some(p) = &r.cors_policy {
        cors_policy(c, &format!("{f}.corsPolicy"), p);
    }
}

/// The methods a CORS policy may allow (Istio's list).
const CORS_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Istio's checks of a `corsPolicy`, and what this mesh adds: the header
/// names it answers with are tokens (no value can split a header).
fn cors_policy(c: &mut Checker<'_>, f: &str, p: &crate::resources::networking::CorsPolicy) {
    if !p.allow_origins.is_empty() && !p.allow_origin.is_empty() {
        c.err(
            format!("{f}.allowOrigin"),
            "allowOrigin (deprecated) and allowOrigins exclude each other",
        );
    }
    for (i, o) in p.allow_origins.iter().enumerate() {
        let of = format!("{f}.allowOrigins[{i}]");
        let (kind, v) = match o {
            StringMatch::Exact(v) => ("exact", v),
            StringMatch::Prefix(v) => ("prefix", v),
            StringMatch::Regex(v) => ("regex", v),
        };
        if v.is_empty() {
            c.err(format!("{of}.{kind}"), "an origin match cannot be empty");
        }
        c.string_match(&of, o);
    }
    for (i, o) in p.allow_origin.iter().enumerate() {
        if o.is_empty() {
            c.err(format!("{f}.allowOrigin[{i}]"), "an origin cannot be empty");
        }
    }
    for (i, m) in p.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&m.as_str()) {
            c.err(
                format!("{f}.allowMethods[{i}]"),
                format!(
                    "`{m}` is not an HTTP method; use {}",
                    CORS_METHODS.join(", ")
                ),
            );
        }
    }
    for (list, name) in [
        (&p.allow_headers, "allowHeaders"),
        (&p.expose_headers, "exposeHeaders"),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" && !is_token(h) {
                c.err(
                    format!("{f}.{name}[{i}]"),
                    format!("`{h}` is not a header name"),
                );
            }
        }
    }
    if let Some(d) = p.max_age {
        if d.0.subsec_nanos() != 0 {
            c.err(
                format!("{f}.maxAge"),
                "is read in whole seconds (Access-Control-Max-Age); write e.g. `300s`",
            );
        }
    }
}

/// An RFC 9110 token (a header name, a method).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

fn destination_rule(c: &mut Checker<'_>, dr: &DestinationRule) {
    c.export_to(&dr.export_to);
    if dr.host.is_empty() {
        c.err("spec.host", "is required");
    }
    c.wildcard("spec.host", &dr.host);
    if let Some(p) = &dr.traffic_policy {
        traffic_policy(c, "spec.trafficPolicy", p);
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        if s.name.is_empty() {
            c.err(format!("spec.subsets[{i}].name"), "is required");
        } else if !names.insert(s.name.as_str()) {
            c.err(
                format!("spec.subsets[{i}].name"),
                format!("subset `{}` is defined twice", s.name),
            );
        }
        if let Some(p) = &s.traffic_policy {
            traffic_policy(c, &format!("spec.subsets[{i}].trafficPolicy"), p);
        }
    }
}

fn traffic_policy(c: &mut Checker<'_>, f: &str, p: &TrafficPolicy) {
    if let Some(lb) = &p.load_balancer {
        load_balancer(c, &format!("{f}.loadBalancer"), lb);
    }
    if let Some(tls) = &p.tls {
        client_tls(c, &format!("{f}.tls"), tls);
    }
    if let Some(od) = &p.outlier_detection {
        if od.max_ejection_percent.is_some_and(|m| m > 100) {
            c.err(
                format!("{f}.outlierDetection.maxEjectionPercent"),
                "is more than 100",
            );
        }
    }
    if let Some(cp) = &p.connection_pool {
        connection_pool(c, &format!("{f}.connectionPool"), cp);
    }
    for (i, pl) in p.port_level_settings.iter().enumerate() {
        let pf = format!("{f}.portLevelSettings[{i}]");
        if let Some(lb) = &pl.load_balancer {
            load_balancer(c, &format!("{pf}.loadBalancer"), lb);
        }
        if let Some(cp) = &pl.connection_pool {
            connection_pool(c, &format!("{pf}.connectionPool"), cp);
        }
        if let Some(tls) = &pl.tls {
            client_tls(c, &format!("{pf}.tls"), tls);
        }
    }
}

fn connection_pool(
    c: &mut Checker<'_>,
    f: &str,
    cp: &crate::resources::networking::ConnectionPoolSettings,
) {
    let Some(k) = cp.http.as_ref().and_then(|h| h.http2_keep_alive.as_ref()) else {
        return;
    };
    let f = format!("{f}.http.http2KeepAlive");
    match k.interval {
        None => c.err(
            format!("{f}.interval"),
            "Required value: how often to send a PING",
        ),
        Some(d) if d.0 < std::time::Duration::from_millis(1) => {
            c.err(format!("{f}.interval"), "must be at least 1ms");
        }
        Some(_) => {}
    }
    if k.timeout
        .is_some_and(|d| d.0 < std::time::Duration::from_millis(1))
    {
        c.err(format!("{f}.timeout"), "must be at least 1ms");
    }
}

fn load_balancer(c: &mut Checker<'_>, f: &str, lb: &LoadBalancerSettings) {
    if let Some(l) = &lb.locality_lb_setting {
        locality_lb_setting(c, &format!("{f}.localityLbSetting"), l);
    }
    let warms = lb.warmup.is_some() || lb.warmup_duration_secs.is_some();
    if let Some(w) = &lb.warmup {
        let f = format!("{f}.warmup");
        match w.duration {
            None => c.err(format!("{f}.duration"), "Required value"),
            Some(d) if d.0.is_zero() => c.err(format!("{f}.duration"), "must be more than 0"),
            Some(_) => {}
        }
        if w.minimum_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            c.err(
                format!("{f}.minimumPercent"),
                "Invalid value: a percentage from 0 to 100",
            );
        }
        if w.aggression.is_some_and(|a| a.is_nan() || a < 1.0) {
            c.err(format!("{f}.aggression"), "Invalid value: at least 1");
        }
        if lb.warmup_duration_secs.is_some() {
            c.err(
                f.clone(),
                "warmup and warmupDurationSecs exclude each other",
            );
        }
    }
    if lb.warmup_duration_secs.is_some_and(|d| d.0.is_zero()) {
        c.err(format!("{f}.warmupDurationSecs"), "must be more than 0");
    }
    if warms && lb.consistent_hash.is_some() {
        // Envoy's slow start exists for round robin and least request;
        // accepted here it would do nothing.
        c.err(
            format!("{f}.warmup"),
            "slow start has no effect with consistentHash: an endpoint's keys go to it at once; remove one of them",
        );
    }
    match (&lb.simple, &lb.consistent_hash) {
        (Some(_), Some(_)) => c.err(f.to_owned(), "simple and consistentHash exclude each other"),
        (None, None) if warms || lb.locality_lb_setting.is_some() => {}
        (None, None) => c.err(f.to_owned(), "needs simple or consistentHash"),
        (None, Some(h)) => {
            let keys = [
                h.http_header_name.is_some(),
                h.http_cookie.is_some(),
                h.use_source_ip == Some(true),
                h.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                c.err(
                    format!("{f}.consistentHash"),
                    "needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
                );
            }
        }
        (Some(_), None) => {}
    }
}

fn client_tls(c: &mut Checker<'_>, f: &str, tls: &ClientTlsSettings) {
    if tls.mode == ClientTlsMode::Mutual
        && (tls.client_certificate.is_none() || tls.private_key.is_none())
    {
        c.err(
            f.to_owned(),
            "mode MUTUAL needs clientCertificate and privateKey",
        );
    }
    if tls.mode == ClientTlsMode::IstioMutual
        && (tls.client_certificate.is_some()
            || tls.private_key.is_some()
            || tls.ca_certificates.is_some())
    {
        c.err(
            f.to_owned(),
            "mode ISTIO_MUTUAL uses the mesh's certificates; remove the certificate files",
        );
    }
}

fn gateway(c: &mut Checker<'_>, g: &Gateway) {
    if g.servers.is_empty() {
        c.err("spec.servers", "at least one server is required");
    }
    let mut ports = std::collections::BTreeMap::new();
    for (i, s) in g.servers.iter().enumerate() {
        let f = format!("spec.servers[{i}]");
        if s.hosts.is_empty() {
            c.err(format!("{f}.hosts"), "at least one host is required");
        }
        if let Some(other) = ports.insert(s.port.number, s.port.protocol) {
            if other != s.port.protocol {
                c.err(
                    format!("{f}.port"),
                    format!(
                        "port {} is already served with protocol {other:?}",
                        s.port.number
                    ),
                );
            }
        }
        let terminates = matches!(s.port.protocol, Protocol::Https | Protocol::Tls);
        match (&s.tls, terminates) {
            (None, true) => c.err(
                format!("{f}.tls"),
                format!("is required for protocol {:?}", s.port.protocol),
            ),
            (Some(tls), _) => {
                let mode = tls.mode;
                if terminates && mode.is_none() {
                    c.err(format!("{f}.tls.mode"), "is required");
                }
                let files = tls.server_certificate.is_some()
                    || tls.private_key.is_some()
                    || tls.ca_certificates.is_some();
                match &tls.credential_name {
                    Some(name) if files => c.err(
                        format!("{f}.tls.credentialName"),
                        format!("{name:?} with serverCertificate, privateKey or caCertificates: give one or the other"),
                    ),
                    Some(name) if !crate::load::is_dns_name(name) => c.err(
                        format!("{f}.tls.credentialName"),
                        format!("{name:?} is not a Secret name (lowercase letters, digits, '-' and '.')"),
                    ),
                    _ => {}
                }
                if matches!(mode, Some(ServerTlsMode::Simple | ServerTlsMode::Mutual))
                    && tls.credential_name.is_none()
                    && (tls.server_certificate.is_none() || tls.private_key.is_none())
                {
                    c.err(
                        format!("{f}.tls"),
                        "modes SIMPLE and MUTUAL need credentialName, or serverCertificate and privateKey",
                    );
                }
                if mode == Some(ServerTlsMode::Mutual)
                    && tls.ca_certificates.is_none()
                    && tls.credential_name.is_none()
                {
                    c.err(
                        format!("{f}.tls.caCertificates"),
                        "is required with mode MUTUAL",
                    );
                }
                if tls.https_redirect && terminates {
                    c.err(
                        format!("{f}.tls.httpsRedirect"),
                        "only applies to plain HTTP servers",
                    );
                }
            }
            (None, false) => {}
        }
    }
}

fn service_entry(c: &mut Checker<'_>, se: &ServiceEntry) {
    c.export_to(&se.export_to);
    if se.hosts.is_empty() {
        c.err("spec.hosts", "at least one host is required");
    }
    for (i, h) in se.hosts.iter().enumerate() {
        if h == "*" {
            c.err(format!("spec.hosts[{i}]"), "hostname cannot be wildcard");
        } else {
            c.wildcard(&format!("spec.hosts[{i}]"), h);
        }
    }
    let mut numbers = std::collections::BTreeSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        if p.number == 0 {
            c.err(format!("spec.ports[{i}].number"), "must be 1-65535");
        }
        if !numbers.insert(p.number) {
            c.err(
                format!("spec.ports[{i}].number"),
                format!("port {} is listed twice", p.number),
            );
        }
        // WorkloadEntries map ports by name: two of one name are ambiguous.
        if let Some(name) = &p.name {
            if se.ports[..i]
                .iter()
                .any(|q| q.name.as_deref() == Some(name))
            {
                c.err(
                    format!("spec.ports[{i}].name"),
                    format!("Duplicate value: port name `{name}` is listed twice"),
                );
            }
        }
    }
    let resolution = se.resolution.unwrap_or(Resolution::Static);
    for (i, a) in se.addresses.iter().enumerate() {
        match crate::net::IpBlock::parse(a) {
            None => c.err(
                format!("spec.addresses[{i}]"),
                format!("`{a}` is not an IP address or CIDR block"),
            ),
            Some(_) if a.contains('/') && resolution.is_dns() => {
                c.err(
                    format!("spec.addresses[{i}]"),
                    format!(
                        "`{a}`: CIDR addresses are allowed only for NONE/STATIC resolution types"
                    ),
                );
            }
            Some(_) => {}
        }
    }
    if resolution == Resolution::None && !se.endpoints.is_empty() {
        c.err("spec.endpoints", "NONE mode cannot set endpoints");
    }
    if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
        c.err(
            "spec.endpoints",
            "DNS_ROUND_ROBIN mode cannot have multiple endpoints",
        );
    }
    if resolution.is_dns() && se.endpoints.is_empty() && se.workload_selector.is_none() {
        // The hosts are what is resolved: a wildcard names no address.
        for (i, h) in se.hosts.iter().enumerate() {
            if h.starts_with('*') {
                c.err(
                    format!("spec.hosts[{i}]"),
                    format!("`{h}`: a wildcard host cannot be resolved by DNS; give endpoints, or resolution NONE"),
                );
            }
        }
    }
    if let Some(sel) = &se.workload_selector {
        for (k, v) in sel.labels.iter() {
            if k.contains('*') || v.contains('*') {
                c.err(
                    format!("spec.workloadSelector.labels.{k}"),
                    "wildcard is not supported in selector",
                );
            }
        }
    }
    if !se.endpoints.is_empty() && se.workload_selector.is_some() {
        c.err(
            "spec.workloadSelector",
            "endpoints and workloadSelector exclude each other",
        );
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        workload_entry(c, &format!("spec.endpoints[{i}]"), e);
        if e.address.starts_with(crate::plan::UNIX_PREFIX)
            && se.resolution != Some(crate::resources::networking::Resolution::Static)
        {
            c.err(
                format!("spec.endpoints[{i}].address"),
                "Unix domain socket endpoints need resolution: STATIC",
            );
        }
    }
}

fn workload_entry(c: &mut Checker<'_>, f: &str, we: &WorkloadEntry) {
    // Istio's `validateWorkloadEntry`: an entry with a network may leave
    // the address out (it is reached through that network's gateway).
    if we.address.is_empty() && we.network.as_deref().is_none_or(str::is_empty) {
        c.err(format!("{f}.address"), "is required");
    }
    if let Some(rest) = we.address.strip_prefix(crate::plan::UNIX_PREFIX) {
        // Istio's Unix domain socket endpoints (`ValidateUnixAddress`): an
        // absolute path or `@name` (the abstract namespace), within a
        // socket address's 107 bytes, and no ports (a socket has none).
        if rest.is_empty() {
            c.err(format!("{f}.address"), "unix address must not be empty");
        } else if !rest.starts_with('@') && (!rest.starts_with('/') || rest.ends_with('/')) {
            c.err(
                format!("{f}.address"),
                format!("`{}` is not an absolute path to a file (unix:///path) nor abstract (unix://@name)", we.address),
            );
        } else if rest.len() > 107 {
            c.err(
                format!("{f}.address"),
                format!("`{}`: a Unix socket path is at most 107 bytes", we.address),
            );
        }
        if !we.ports.is_empty() {
            c.err(
                format!("{f}.ports"),
                "a Unix domain socket endpoint takes no ports",
            );
        }
    }
    for name in we.ports.keys() {
        let ok = crate::load::is_dns_label(name);
        if !ok {
            c.err(
                format!("{f}.ports.{name}"),
                format!(
                    "Invalid value: `{name}` is not a port name (lowercase letters, digits and '-')"
                ),
            );
        }
    }
    if let Some(sa) = &we.service_account {
        if sa.is_empty()
            || !sa
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            c.err(
                format!("{f}.serviceAccount"),
                format!("`{sa}` is not a valid service account name"),
            );
        }
    }
    for (name, port) in &we.ports {
        if *port == 0 {
            c.err(format!("{f}.ports.{name}"), "must be 1-65535");
        }
    }
}

fn sidecar(c: &mut Checker<'_>, sc: &Sidecar) {
    if sc.egress.is_empty() && sc.ingress.is_empty() && sc.outbound_traffic_policy.is_none() {
        c.err("spec", "sidecar: empty configuration provided");
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, l) in sc.ingress.iter().enumerate() {
        let f = format!("spec.ingress[{i}]");
        if l.port.number == 0 {
            c.err(format!("{f}.port.number"), "must be 1-65535");
        }
        if !seen.insert(l.port.number) {
            c.err(
                format!("{f}.port.number"),
                format!(
                    "sidecar: ports on IP bound listeners must be unique: {} is listed twice",
                    l.port.number
                ),
            );
        }
        if let Some(b) = &l.bind {
            if b.parse::<std::net::IpAddr>().is_err() {
                c.err(format!("{f}.bind"), format!("`{b}` is not an IP address"));
            }
        }
        if l.capture_mode == Some(crate::resources::networking::CaptureMode::None) {
            c.err(
                format!("{f}.captureMode"),
                "NONE is not read: the sidecar serves the port as its mode (explicit or capture) does",
            );
        }
        if let Some(e) = &l.default_endpoint {
            if let Err(why) = crate::resources::networking::ingress_endpoint(e) {
                c.err(format!("{f}.defaultEndpoint"), why);
            }
        }
    }
    if sc.egress.len() > 1 {
        // Without ports (not implemented) every listener is the catch-all.
        c.err(
            "spec.egress[1]",
            "only one egress listener without a port is allowed (egress ports are not implemented)",
        );
    }
    for (i, e) in sc.egress.iter().enumerate() {
        if e.hosts.is_empty() {
            c.err(
                format!("spec.egress[{i}].hosts"),
                "sidecar: at least one egress host must be provided",
            );
        }
        for (j, h) in e.hosts.iter().enumerate() {
            let f = format!("spec.egress[{i}].hosts[{j}]");
            let Some((ns, name)) = h.split_once('/') else {
                c.err(
                    f,
                    format!("`{h}`: sidecar: host must be of form namespace/dnsName"),
                );
                continue;
            };
            let ns_ok = matches!(ns, "*" | "." | "~") || crate::load::is_dns_label(ns);
            if !ns_ok || name.is_empty() || name.contains('/') {
                c.err(
                    f,
                    format!("`{h}`: sidecar: host must be of form namespace/dnsName"),
                );
                continue;
            }
            c.wildcard(&f, name);
        }
    }
}

fn peer_authentication(c: &mut Checker<'_>, pa: &PeerAuthentication) {
    let has_selector = pa
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !pa.port_level_mtls.is_empty() && !has_selector {
        // Istio ignores port-level settings without a selector; a rule that
        // would be ignored is refused instead.
        c.err(
            "spec.portLevelMtls",
            "needs a selector: port-level modes apply to selected workloads only",
        );
    }
    for port in pa.port_level_mtls.keys() {
        if *port == 0 {
            c.err(format!("spec.portLevelMtls.{port}"), "must be 1-65535");
        }
    }
}

fn legacy_policy(c: &mut Checker<'_>, kind: Kind, p: &LegacyPolicy) {
    if kind == Kind::MeshPolicy && !p.targets.is_empty() {
        c.err(
            "spec.targets",
            "a MeshPolicy applies to the whole mesh and takes no targets",
        );
    }
    if p.peers.len() > 1 {
        c.err("spec.peers", "list one peer method (mtls)");
    }
}

/// Headers a RequestAuthentication may not write: framing and hop-by-hop
/// headers, the ones routing and identity are read from, and the mesh's
/// own.
fn reserved_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    matches!(
        n.as_str(),
        "host"
            | "authorization"
            | "cookie"
            | "content-length"
            | "content-type"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-connection"
            | "forwarded"
            | "x-real-ip"
    ) || [
        "x-forwarded-",
        "x-mesh-",
        "x-envoy-",
        "x-istio-",
        "x-b3-",
        "traceparent",
        "tracestate",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

fn request_authentication(c: &mut Checker<'_>, ra: &RequestAuthentication) {
    let mut issuers = std::collections::HashSet::new();
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() {
            c.err(format!("{f}.issuer"), "required: the `iss` the rule is for");
        } else if !issuers.insert(rule.issuer.as_str()) {
            // Envoy keys providers by issuer: two rules for one issuer
            // would leave which one checks a token to chance.
            c.err(
                format!("{f}.issuer"),
                format!("`{}` has a rule already in this policy", rule.issuer),
            );
        }
        for (k, a) in rule.audiences.iter().enumerate() {
            if a.is_empty() {
                c.err(
                    format!("{f}.audiences[{k}]"),
                    "should be at least 1 chars long",
                );
            }
        }
        match (&rule.jwks_uri, &rule.jwks) {
            (Some(_), Some(_)) => c.err(
                format!("{f}.jwks"),
                "set jwksUri or jwks, not both: which keys count would be ambiguous",
            ),
            // OpenID discovery from the issuer; `check` warns when the
            // issuer is no URL to discover from.
            (None, None) => {}
            (Some(uri), None) => {
                if let Err(why) = crate::jwt::jwks_uri(uri) {
                    c.err(format!("{f}.jwksUri"), format!("`{uri}`: {why}"));
                }
            }
            (None, Some(jwks)) => {
                if let Err(why) = crate::jwt::JwtKeys::parse(jwks) {
                    c.err(format!("{f}.jwks"), why);
                }
            }
        }
        for (k, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                c.err(format!("{f}.fromHeaders[{k}].name"), "Required value");
            } else if !h.name.bytes().all(is_tchar) {
                c.err(
                    format!("{f}.fromHeaders[{k}].name"),
                    format!("`{}` is not an HTTP header name", h.name),
                );
            }
        }
        for (name, values) in [
            ("fromParams", &rule.from_params),
            ("fromCookies", &rule.from_cookies),
        ] {
            for (k, v) in values.iter().enumerate() {
                if v.is_empty() {
                    c.err(
                        format!("{f}.{name}[{k}]"),
                        "should be at least 1 chars long",
                    );
                }
            }
        }
        let header = |c: &mut Checker<'_>, field: String, name: &str| {
            if name.is_empty() {
                c.err(field, "should be at least 1 chars long");
            } else if !name.bytes().all(is_tchar) {
                c.err(field, format!("`{name}` is not an HTTP header name"));
            } else if reserved_header(name) {
                c.err(
                    field,
                    format!("`{name}` is a header the mesh or HTTP itself owns (framing, hop-by-hop, routing, identity): a claim must not overwrite it"),
                );
            }
        };
        if let Some(h) = &rule.output_payload_to_header {
            header(c, format!("{f}.outputPayloadToHeader"), h);
        }
        for (k, o) in rule.output_claim_to_headers.iter().enumerate() {
            header(
                c,
                format!("{f}.outputClaimToHeaders[{k}].header"),
                &o.header,
            );
            if o.claim.is_empty() {
                c.err(
                    format!("{f}.outputClaimToHeaders[{k}].claim"),
                    "should be at least 1 chars long",
                );
            }
        }
        for (k, v) in rule.space_delimited_claims.iter().enumerate() {
            if v.is_empty() {
                c.err(
                    format!("{f}.spaceDelimitedClaims[{k}]"),
                    "should be at least 1 chars long",
                );
            }
        }
        if rule.timeout.is_some_and(|t| t.0.is_zero()) {
            c.err(
                format!("{f}.timeout"),
                "must be a valid duration greater than 0",
            );
        }
    }
}

fn authorization_policy(c: &mut Checker<'_>, ap: &AuthorizationPolicy) {
    // Istio's validation (`ValidateAuthorizationPolicy`): a provider with
    // CUSTOM only, and CUSTOM names one.
    match (&ap.action, &ap.provider) {
        (Some(AuthzAction::Custom), None) => {
            c.err("spec.provider", "`provider` must be set with CUSTOM action");
        }
        (Some(AuthzAction::Custom), Some(p)) if p.name.is_empty() => {
            c.err(
                "spec.provider.name",
                "`provider.name` must be set with CUSTOM action",
            );
        }
        (action, Some(_)) if *action != Some(AuthzAction::Custom) => {
            c.err(
                "spec.provider",
                "`provider` must not be set with a non-CUSTOM action",
            );
        }
        _ => {}
    }
    for (i, rule) in ap.rules.iter().flatten().enumerate() {
        let rf = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let f = format!("{rf}.from[{j}].source");
            let s = &from.source;
            for (name, values) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
            ] {
                wildcard_values(c, &format!("{f}.{name}"), values);
            }
            for (name, values) in [
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
            ] {
                for (k, v) in values.iter().enumerate() {
                    if !v
                        .trim_start_matches('*')
                        .trim_end_matches('*')
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_'))
                    {
                        // A rule on it would silently never match.
                        c.err(
                            format!("{f}.{name}[{k}]"),
                            format!(
                                "`{v}` can name no trust domain (letters, digits, '.', '-' and '_', with a `*` at the start or the end)"
                            ),
                        );
                    }
                }
            }
            service_accounts(c, &f, s);
            for (name, values) in [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ] {
                for (k, v) in values.iter().enumerate() {
                    if crate::authz::IpBlock::parse(v).is_none() {
                        c.err(
                            format!("{f}.{name}[{k}]"),
                            format!("`{v}` is not an IP address or CIDR block"),
                        );
                    }
                }
            }
            if [
                &s.principals,
                &s.not_principals,
                &s.namespaces,
                &s.not_namespaces,
                &s.ip_blocks,
                &s.not_ip_blocks,
                &s.request_principals,
                &s.not_request_principals,
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
                &s.service_accounts,
                &s.not_service_accounts,
                &s.trust_domains,
                &s.not_trust_domains,
            ]
            .iter()
            .all(|v| v.is_empty())
            {
                c.err(f, "a source needs at least one field");
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let f = format!("{rf}.to[{j}].operation");
            let o = &to.operation;
            for (name, values) in [
                ("hosts", &o.hosts),
                ("notHosts", &o.not_hosts),
                ("methods", &o.methods),
                ("notMethods", &o.not_methods),
            ] {
                wildcard_values(c, &format!("{f}.{name}"), values);
            }
            for (name, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                let field = format!("{f}.{name}");
                for (k, v) in values.iter().enumerate() {
                    if v.contains('{') {
                        if let Err(why) = crate::authz::path_template(v) {
                            c.err(format!("{field}[{k}]"), format!("`{v}`: {why}"));
                        }
                    } else {
                        wildcard_value(c, &format!("{field}[{k}]"), v);
                    }
                }
            }
            for (name, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                for (k, v) in values.iter().enumerate() {
                    if !v.parse::<u16>().is_ok_and(|p| p > 0) {
                        c.err(
                            format!("{f}.{name}[{k}]"),
                            format!("`{v}` is not a port number"),
                        );
                    }
                }
            }
            for (name, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
                for (k, v) in values.iter().enumerate() {
                    if let Err(why) = path_pattern(v) {
                        c.err(format!("{f}.{name}[{k}]"), format!("`{v}` {why}"));
                    }
                }
            }
            if [
                &o.hosts,
                &o.not_hosts,
                &o.ports,
                &o.not_ports,
                &o.methods,
                &o.not_methods,
                &o.paths,
                &o.not_paths,
            ]
            .iter()
            .all(|v| v.is_empty())
            {
                // Istio refuses it too; read as "any operation" it would
                // widen an ALLOW rule.
                c.err(f, "an operation needs at least one field");
            }
        }
        for (j, cond) in rule.when.iter().enumerate() {
            let f = format!("{rf}.when[{j}]");
            let header = cond
                .key
                .strip_prefix("request.headers[")
                .and_then(|k| k.strip_suffix(']'));
            if let Some(name) = header {
                if name.starts_with(':') {
                    // Envoy's header matcher sees the pseudo-headers too.
                    // `:method` is matched on the request's method; the
                    // others (`:path` with its query as received, `:scheme`,
                    // `:authority` as received) are not kept apart from
                    // their normalised forms here, so they are refused
                    // rather than matched on something else.
                    if name != ":method" {
                        c.err(
                            format!("{f}.key"),
                            format!("`{name}`: of the pseudo-headers only `:method` is supported"),
                        );
                    }
                } else if name.is_empty() || !name.bytes().all(is_tchar) {
                    c.err(
                        format!("{f}.key"),
                        format!("`{name}` is not an HTTP header name"),
                    );
                }
            }
            let metadata = cond.key.starts_with("experimental.envoy.filters.");
            if metadata && !(cond.key.contains('[') && cond.key.ends_with(']')) {
                c.err(
                    format!("{f}.key"),
                    format!(
                        "`{}`: write experimental.envoy.filters.FILTER[KEY]",
                        cond.key
                    ),
                );
            }
            let claim = cond.key.strip_prefix("request.auth.claims");
            if let Some(path) = claim
                && crate::jwt::claim_path(path).is_none()
            {
                c.err(
                    format!("{f}.key"),
                    format!(
                        "`{}` names no claim: write request.auth.claims[NAME], nested as request.auth.claims[A][B]",
                        cond.key
                    ),
                );
            }
            if matches!(
                cond.key.as_str(),
                "source.principal"
                    | "source.namespace"
                    | "source.trustDomain"
                    | "connection.sni"
                    | "request.auth.principal"
                    | "request.auth.audiences"
                    | "request.auth.presenter"
            ) || header.is_some()
                || claim.is_some()
            {
                wildcard_values(c, &format!("{f}.values"), &cond.values);
                wildcard_values(c, &format!("{f}.notValues"), &cond.not_values);
            }
            if header.is_none()
                && claim.is_none()
                && !metadata
                && !WHEN_KEYS.contains(&cond.key.as_str())
            {
                c.err(
                    format!("{f}.key"),
                    format!(
                        "`{}` is not supported; use request.headers[NAME], request.auth.claims[NAME] or one of {}",
                        cond.key,
                        WHEN_KEYS.join(", ")
                    ),
                );
            }
            if cond.values.is_empty() && cond.not_values.is_empty() {
                c.err(f.clone(), "needs values or notValues");
            }
            if matches!(
                cond.key.as_str(),
                "source.ip" | "remote.ip" | "destination.ip"
            ) {
                for v in cond.values.iter().chain(&cond.not_values) {
                    if crate::authz::IpBlock::parse(v).is_none() {
                        c.err(
                            format!("{f}.values"),
                            format!("`{v}` is not an IP address or CIDR block"),
                        );
                    }
                }
            }
            if cond.key == "destination.port" {
                for v in cond.values.iter().chain(&cond.not_values) {
                    if v.parse::<u16>().is_err() {
                        c.err(format!("{f}.values"), format!("`{v}` is not a port number"));
                    }
                }
            }
        }
    }
}

/// The most entries `serviceAccounts` and `notServiceAccounts` may have,
/// and the longest each may be (Istio's schema).
const MAX_SERVICE_ACCOUNTS: usize = 16;
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;

/// `serviceAccounts` / `notServiceAccounts` as Istio validates them: not
/// beside `principals` or `namespaces` (or their not-variants), at most
/// 16 entries of at most 320 characters, no wildcard; and each
/// `<namespace>/<name>` or `<name>` of characters a SPIFFE ID can hold,
/// since anything else would silently never match.
fn service_accounts(c: &mut Checker<'_>, f: &str, s: &crate::resources::security::Source) {
    let lists = [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ];
    if lists.iter().all(|(_, v)| v.is_empty()) {
        return;
    }
    if !(s.principals.is_empty()
        && s.not_principals.is_empty()
        && s.namespaces.is_empty()
        && s.not_namespaces.is_empty())
    {
        c.err(
            f.to_owned(),
            "Cannot set serviceAccounts with namespaces or principals: name the service accounts alone, or write principals",
        );
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_'))
    };
    for (name, values) in lists {
        if values.len() > MAX_SERVICE_ACCOUNTS {
            c.err(
                format!("{f}.{name}"),
                format!(
                    "lists {} entries; at most {MAX_SERVICE_ACCOUNTS} are allowed",
                    values.len()
                ),
            );
        }
        for (k, v) in values.iter().enumerate() {
            let field = format!("{f}.{name}[{k}]");
            if v.len() > MAX_SERVICE_ACCOUNT_LEN {
                c.err(
                    field,
                    format!(
                        "is {} characters long; at most {MAX_SERVICE_ACCOUNT_LEN} are allowed",
                        v.len()
                    ),
                );
            } else if v.contains('*') {
                c.err(
                    field,
                    format!("`{v}`: no form of wildcard is allowed in service accounts"),
                );
            } else if !v.split('/').all(part_ok) || v.matches('/').count() > 1 {
                c.err(
                    field,
                    format!(
                        "`{v}` is not `<namespace>/<service-account>` or `<service-account>` (letters, digits, '.', '-' and '_')"
                    ),
                );
            }
        }
    }
}

/// Istio allows `*` only as a whole value, a prefix or a suffix. Both
/// (`*admin*`) Istio reads as a suffix match on `admin*`, which is not what
/// anyone means, so it is refused.
fn wildcard_values(c: &mut Checker<'_>, f: &str, values: &[String]) {
    for (k, v) in values.iter().enumerate() {
        wildcard_value(c, &format!("{f}[{k}]"), v);
    }
}

/// [`wildcard_values`] for one value at `f`; path templates belong to
/// `paths` only, which read them apart.
fn wildcard_value(c: &mut Checker<'_>, f: &str, v: &str) {
    let inner = v.strip_prefix('*').unwrap_or(v);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if v.is_empty() {
        c.err(f.to_owned(), "is empty");
    } else if v.contains("{*}") || v.contains("{**}") {
        c.err(
            f.to_owned(),
            format!("`{v}`: path templates ({{*}}, {{**}}) are for paths only"),
        );
    } else if inner.contains('*') || (v != "*" && v.starts_with('*') && v.ends_with('*')) {
        c.err(
            f.to_owned(),
            format!("`{v}`: `*` is allowed only once, at the start or the end"),
        );
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A path pattern must be able to match a normalised path: requests are
/// matched after [`crate::normalize::normalize_path`], so a pattern that is
/// not in that form (`/a/../b`, `//a`, `/a?x`) would silently never match,
/// and in a DENY policy that means a rule that is not enforced.
fn path_pattern(v: &str) -> Result<(), String> {
    let (partial_first, rest) = match v.strip_prefix('*') {
        Some(rest) => (true, rest),
        None if v.starts_with('/') => (false, v),
        // Istio takes it and Envoy matches it exactly: it never equals a
        // request's path (`check` warns, MESH0108).
        None => return Ok(()),
    };
    let (partial_last, fixed) = match rest.strip_suffix('*') {
        Some(fixed) => (true, fixed),
        None => (false, rest),
    };
    if let Some(ch) = fixed
        .chars()
        .find(|ch| matches!(ch, '?' | '#' | '\\') || ch.is_control())
    {
        return Err(format!(
            "contains {ch:?}, which a normalised path never does (queries are not matched)"
        ));
    }
    let b = fixed.as_bytes();
    for (i, _) in fixed.match_indices('%') {
        let ok = b
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit) && h != b"00");
        if !ok {
            return Err(format!("has an invalid percent-encoding at byte {i}"));
        }
    }
    // Requests are matched decoded once; so is the pattern.
    let decoded = crate::normalize::decode_once(fixed);
    if decoded.contains('\\') {
        return Err("contains an encoded '\\', which a normalised path never does".to_owned());
    }
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        let partial = (i == 0 && partial_first) || (i == last && partial_last);
        // The first segment of a pattern starting with '/' is the empty
        // string before it.
        let leading = i == 0 && !partial_first;
        let inner_empty = seg.is_empty() && !leading && i != last;
        if !partial && (matches!(*seg, "." | "..") || inner_empty) {
            return Err(
                "is not a normalised path (no `.` or `..` segments, no `//`): it would never match"
                    .to_owned(),
            );
        }
    }
    Ok(())
}

/// Istio's `validateLocalityLbSetting` (`pkg/config/validation`).
fn locality_lb_setting(c: &mut Checker<'_>, f: &str, lb: &LocalityLbSetting) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        c.err(
            f.to_owned(),
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !lb.failover.is_empty() {
        for (i, l) in lb.failover_priority.iter().enumerate() {
            if matches!(
                l.as_str(),
                "topology.kubernetes.io/region"
                    | "topology.kubernetes.io/zone"
                    | "topology.istio.io/subzone"
            ) {
                c.err(
                    format!("{f}.failoverPriority[{i}]"),
                    format!("can not simultaneously set 'failover' and topology label '{l}' in 'failover_priority'"),
                );
                return;
            }
        }
    }
    let mut sources = Vec::new();
    for (i, d) in lb.distribute.iter().enumerate() {
        sources.push(d.from.as_str());
        let mut total: u64 = 0;
        for (to, w) in &d.to {
            if !(1..=100).contains(w) {
                c.err(
                    format!("{f}.distribute[{i}].to.{to}"),
                    "locality weight must be in range [1, 100]",
                );
                return;
            }
            total += u64::from(*w);
        }
        if total != 100 {
            c.err(
                format!("{f}.distribute[{i}].to"),
                format!("total locality weight {total} != 100"),
            );
            return;
        }
        localities(
            c,
            &format!("{f}.distribute[{i}].to"),
            d.to.keys().map(String::as_str),
        );
    }
    localities(c, &format!("{f}.distribute"), sources.into_iter());
    for (i, fo) in lb.failover.iter().enumerate() {
        let ff = format!("{f}.failover[{i}]");
        if fo.from == fo.to {
            c.err(
                ff.clone(),
                "locality lb failover settings must specify different regions",
            );
        }
        if fo.from.contains('/') || fo.to.contains('/') {
            c.err(ff.clone(), "locality lb failover only specify region");
        }
        if fo.from.contains('*') || fo.to.contains('*') {
            c.err(
                ff,
                "locality lb failover region should not contain '*' wildcard",
            );
        }
    }
}

/// Istio's `validateLocalities`: one `*`, at the end; no locality given
/// twice, none after `*`.
fn localities<'a>(c: &mut Checker<'_>, f: &str, ls: impl Iterator<Item = &'a str>) {
    let mut seen: Vec<&str> = Vec::new();
    for l in ls {
        let stars = l.matches('*').count();
        if stars > 1 || (stars == 1 && !l.ends_with('*')) {
            c.err(
                f.to_owned(),
                format!("locality {l} wildcard '*' number can not exceed 1 and must be in the end"),
            );
            return;
        }
        if seen.contains(&"*") || seen.contains(&l) {
            c.err(
                f.to_owned(),
                format!("locality {l} overlap with previous specified ones"),
            );
            return;
        }
        seen.push(l);
    }
}
