//! Sidecar injection: the proxy added to a pod, as `istioctl kube-inject`
//! and Istio's injection webhook do, for `mesh-proxy inject -f FILE` and
//! the control plane's admission webhook alike.
//!
//! Objects are handled as JSON values, not as `k8s-openapi` structs: a
//! field this code does not know (a newer API's, an alpha gate's) must come
//! out exactly as it went in, and a typed round trip would drop it.
//!
//! What a pod gets:
//! - `mesh-init`, first among the init containers: `mesh-proxy init`, the
//!   nftables capture rules (CAP_NET_ADMIN, as root, then gone);
//! - `mesh-proxy`, a native sidecar (an init container with
//!   `restartPolicy: Always`, Kubernetes 1.29+): started before the app's
//!   init containers and containers, which wait for its startup probe
//!   (`/healthz/ready` on 15020), stopped after them;
//! - the projected service-account token (audience `istio-ca`) the CA
//!   checks with TokenReview, and the mesh's root certificate
//!   (ConfigMap `mesh-ca-root-cert`);
//! - `sidecar.istio.io/status` (as Istio's, so tools that look for it, Kiali
//!   among them, see the sidecar) and `security.istio.io/tlsMode: istio`.
//!
//! Injecting twice changes nothing. A pod the mesh could not hold is refused
//! by name, never half-injected: one that runs as the proxy's uid or gid
//! (capture lets the proxy's own traffic through, so the app's would bypass
//! the mesh), one that uses the proxy's ports, one that names an Istio
//! annotation this injector does not honour.

use serde_json::{Map, Value, json};

/// The sidecar's container, among the init containers.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// The capture rules' init container.
pub const INIT_CONTAINER: &str = "mesh-init";
/// What was injected, in Istio's annotation.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// `"false"` on a pod (label or annotation): not injected.
pub const INJECT_LABEL: &str = "sidecar.istio.io/inject";
/// The projected service-account token's volume.
pub const TOKEN_VOLUME: &str = "mesh-token";
/// The mesh root certificate's volume.
pub const CA_ROOT_VOLUME: &str = "mesh-ca-root";
/// The ConfigMap every injected namespace holds the root certificate in.
pub const CA_ROOT_CONFIG_MAP: &str = "mesh-ca-root-cert";
/// The sidecar's status port: readiness and metrics (Istio's 15020).
pub const STATUS_PORT: u16 = 15020;
/// The uid and gid the proxy runs as; capture lets their traffic through.
pub const PROXY_UID: i64 = 1337;
/// The ports the proxy itself listens on in the pod: admin (loopback),
/// outbound and inbound capture, status.
pub const PROXY_PORTS: [u16; 4] = [15000, 15001, 15006, STATUS_PORT];

/// Where the token and the root certificate are mounted in the sidecar.
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const CA_ROOT_DIR: &str = "/var/run/mesh/ca";

/// The pod annotations this injector honours; any other in Istio's
/// injection prefixes is refused by name.
const HONOURED_ANNOTATIONS: &[&str] = &[
    INJECT_LABEL,
    STATUS_ANNOTATION,
    "sidecar.istio.io/proxyImage",
    "sidecar.istio.io/proxyCPU",
    "sidecar.istio.io/proxyMemory",
    "sidecar.istio.io/proxyCPULimit",
    "sidecar.istio.io/proxyMemoryLimit",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    REWRITE_PROBES_ANNOTATION,
];

/// `"false"`: the app's probes are left as they are (Istio's).
pub const REWRITE_PROBES_ANNOTATION: &str = "sidecar.istio.io/rewriteAppHTTPProbers";
/// The sidecar's environment variable holding the app's original probes.
pub const APP_PROBES_ENV: &str = "MESH_APP_PROBES";
/// Where the status port answers the app's rewritten probes.
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The prefixes of Istio's injection annotations.
const ISTIO_PREFIXES: &[&str] = &[
    "sidecar.istio.io/",
    "traffic.sidecar.istio.io/",
    "proxy.istio.io/",
];

/// What the injected sidecar is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// The image of `mesh-proxy` (the sidecar and `mesh-init`).
    pub proxy_image: String,
    /// The control plane, `host:port`, as the sidecar dials it.
    pub control_plane: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The projected token's audience, which the CA's TokenReview expects.
    pub token_audience: String,
    /// The projected token's lifetime (the kubelet renews it at 80%).
    pub token_expiration_seconds: i64,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: "mesh-proxy:0.1.0".into(),
            control_plane: "mesh-control.mesh-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            token_audience: crate::tokenreview::DEFAULT_AUDIENCE.into(),
            token_expiration_seconds: 43200,
        }
    }
}

/// What injection did to one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added.
    Injected,
    /// It was already there: nothing changed.
    AlreadyInjected,
    /// Left alone, and why.
    Skipped(String),
}

/// A pod the mesh cannot hold, naming the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct InjectError {
    /// `Kind namespace/name`.
    pub object: String,
    /// The field, from the object's root (`spec.template.spec...`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Injects one Kubernetes object in place: a Pod, the pod template of a
/// Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
/// Job or CronJob, or each item of a `List`. Any other kind is left alone
/// (`Skipped`).
pub fn inject_object(object: &mut Value, config: &InjectConfig) -> Result<Outcome, InjectError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if kind == "List" || kind.ends_with("List") {
        let mut any = Outcome::Skipped("no pod template in the list".into());
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                let out = inject_object(item, config)?;
                if out == Outcome::Injected || matches!(any, Outcome::Skipped(_)) {
                    any = out;
                }
            }
        }
        return Ok(any);
    }
    let who = describe(object, &kind, None);
    let template: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(Outcome::Skipped(format!("{kind} has no pod template"))),
    };
    let mut at = object;
    for key in template {
        at = match at.get_mut(*key) {
            Some(v) => v,
            None => {
                return Err(InjectError {
                    object: who,
                    field: template.join("."),
                    message: "missing: no pod template to inject".into(),
                });
            }
        };
    }
    let prefix = template.join(".");
    inject_template(at, &prefix, &who, config)
}

/// `Kind namespace/name`, the namespace from the object or `namespace`.
fn describe(object: &Value, kind: &str, namespace: Option<&str>) -> String {
    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name").or_else(|| m.get("generateName")))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or(namespace)
        .unwrap_or("default");
    format!("{kind} {ns}/{name}")
}

/// The field path `prefix.rest` (just `rest` for a Pod).
fn field(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_owned()
    } else {
        format!("{prefix}.{rest}")
    }
}

/// Injects a pod template (`{metadata, spec}`, or a Pod itself).
fn inject_template(
    template: &mut Value,
    prefix: &str,
    who: &str,
    config: &InjectConfig,
) -> Result<Outcome, InjectError> {
    let err = |f: &str, message: String| InjectError {
        object: who.to_owned(),
        field: field(prefix, f),
        message,
    };
    let Some(obj) = template.as_object_mut() else {
        return Err(err("", "not an object".into()));
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        return Err(err("metadata", "not an object".into()));
    }
    let labels = string_map(
        meta.get("labels"),
        |f, m| err(&format!("metadata.{f}"), m),
        "labels",
    )?;
    let annotations = string_map(
        meta.get("annotations"),
        |f, m| err(&format!("metadata.{f}"), m),
        "annotations",
    )?;

    // The opt-out, as a label (what the webhook's objectSelector sees) or
    // an annotation (what Istio reads too).
    for (source, map) in [("labels", &labels), ("annotations", &annotations)] {
        match map.get(INJECT_LABEL).map(String::as_str) {
            None | Some("true") => {}
            Some("false") => {
                return Ok(Outcome::Skipped(format!(
                    "metadata.{source}.{INJECT_LABEL} is \"false\""
                )));
            }
            Some(other) => {
                return Err(err(
                    &format!("metadata.{source}.{INJECT_LABEL}"),
                    format!("{other:?}: expected \"true\" or \"false\""),
                ));
            }
        }
    }

    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if !spec.is_object() {
        return Err(err("spec", "missing: not a pod spec".into()));
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(
            "spec.hostNetwork: the pod shares the node's network, which capture would take over"
                .into(),
        ));
    }
    let init = containers(&spec, "initContainers");
    let apps = containers(&spec, "containers");
    if init.iter().any(|c| name_of(c) == PROXY_CONTAINER) {
        return Ok(Outcome::AlreadyInjected);
    }
    if init
        .iter()
        .chain(&apps)
        .any(|c| name_of(c) == "istio-proxy")
    {
        return Err(err(
            "spec.containers",
            "already injected by Istio's injector (istio-proxy): run one mesh's injector, not both"
                .into(),
        ));
    }
    if annotations.contains_key(STATUS_ANNOTATION) {
        return Err(err(
            &format!("metadata.annotations.{STATUS_ANNOTATION}"),
            "says the pod is injected, but it has no mesh-proxy: remove the annotation".into(),
        ));
    }
    for key in annotations.keys() {
        if ISTIO_PREFIXES.iter().any(|p| key.starts_with(p))
            && !HONOURED_ANNOTATIONS.contains(&key.as_str())
        {
            return Err(err(
                &format!("metadata.annotations.{key}"),
                "not honoured by this mesh's injector: remove it (honoured: \
                 sidecar.istio.io/{inject,proxyImage,proxyCPU,proxyMemory,proxyCPULimit,proxyMemoryLimit,rewriteAppHTTPProbers}, \
                 traffic.sidecar.istio.io/{include,exclude}OutboundIPRanges, \
                 traffic.sidecar.istio.io/exclude{Inbound,Outbound}Ports)"
                    .into(),
            ));
        }
    }

    check_identity(&spec, &init, &apps, &err)?;
    let taken_names: Vec<String> = init
        .iter()
        .chain(&apps)
        .map(|c| name_of(c).into())
        .collect();
    for name in [PROXY_CONTAINER, INIT_CONTAINER] {
        if taken_names.iter().any(|n| n == name) {
            return Err(err(
                "spec.containers",
                format!("a container is named {name}, the injector's"),
            ));
        }
    }
    let volumes = spec
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, v) in volumes.iter().enumerate() {
        let n = name_of(v);
        if n == TOKEN_VOLUME || n == CA_ROOT_VOLUME {
            return Err(err(
                &format!("spec.volumes[{i}].name"),
                format!("{n} is the injector's volume"),
            ));
        }
    }

    // The injection proper.
    let init_args = init_args(&annotations, &err)?;
    let image = annotations
        .get("sidecar.istio.io/proxyImage")
        .cloned()
        .unwrap_or_else(|| config.proxy_image.clone());
    let mut spec = spec;
    let probes = match annotations
        .get(REWRITE_PROBES_ANNOTATION)
        .map(String::as_str)
    {
        Some("false") => AppProbes::default(),
        None | Some("true") => rewrite_probes(&mut spec, &err)?,
        Some(other) => {
            return Err(err(
                &format!("metadata.annotations.{REWRITE_PROBES_ANNOTATION}"),
                format!("{other:?}: expected \"true\" or \"false\""),
            ));
        }
    };
    let mut proxy = proxy_container(&image, config, &annotations);
    if !probes.0.is_empty() {
        let text = serde_json::to_string(&probes).unwrap_or_default();
        if let Some(env) = proxy.get_mut("env").and_then(Value::as_array_mut) {
            env.push(json!({"name": APP_PROBES_ENV, "value": text}));
        }
    }
    let mut injected = vec![init_container(&image, init_args), proxy];
    injected.extend(init);
    let spec_obj = spec
        .as_object_mut()
        .ok_or_else(|| err("spec", "not an object".into()))?;
    spec_obj.insert("initContainers".into(), Value::Array(injected));
    let mut volumes = volumes;
    volumes.push(json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience,
            "expirationSeconds": config.token_expiration_seconds,
            "path": TOKEN_VOLUME,
        }}]},
    }));
    volumes.push(json!({
        "name": CA_ROOT_VOLUME,
        "configMap": {"name": CA_ROOT_CONFIG_MAP},
    }));
    spec_obj.insert("volumes".into(), Value::Array(volumes));
    obj.insert("spec".into(), spec);

    let status = json!({
        "initContainers": [INIT_CONTAINER, PROXY_CONTAINER],
        "containers": [],
        "volumes": [TOKEN_VOLUME, CA_ROOT_VOLUME],
        "imagePullSecrets": null,
        "revision": "default",
    });
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| err("metadata", "not an object".into()))?;
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(ann) = ann.as_object_mut() {
        ann.insert(STATUS_ANNOTATION.into(), Value::String(status.to_string()));
        // Prometheus finds the sidecar's metrics, as Istio's annotations
        // say; a pod that already names its own scrape target keeps it.
        if !ann.contains_key("prometheus.io/scrape") {
            ann.insert("prometheus.io/scrape".into(), "true".into());
            ann.insert("prometheus.io/port".into(), STATUS_PORT.to_string().into());
            ann.insert("prometheus.io/path".into(), "/stats/prometheus".into());
        }
    }
    let lab = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(lab) = lab.as_object_mut() {
        lab.entry("security.istio.io/tlsMode")
            .or_insert_with(|| "istio".into());
        let (name, revision) = canonical_labels(&labels);
        if let Some(name) = name {
            lab.entry("service.istio.io/canonical-name")
                .or_insert_with(|| name.into());
        }
        lab.entry("service.istio.io/canonical-revision")
            .or_insert_with(|| revision.into());
    }
    Ok(Outcome::Injected)
}

/// Istio's canonical service name and revision from a pod's labels:
/// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else
/// `app`; `service.istio.io/canonical-revision`, else
/// `app.kubernetes.io/version`, else `version`, else `latest`.
pub fn canonical_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> (Option<String>, String) {
    let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k).cloned());
    let name = first(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]);
    let revision = first(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".into());
    (name, revision)
}

/// A `map[string]string` field (labels, annotations).
fn string_map<E>(
    v: Option<&Value>,
    err: impl Fn(&str, String) -> E,
    name: &str,
) -> Result<std::collections::BTreeMap<String, String>, E> {
    let mut out = std::collections::BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    other => {
                        return Err(err(
                            &format!("{name}.{k}"),
                            format!("{other}: expected a string"),
                        ));
                    }
                }
            }
        }
        Some(_) => return Err(err(name, "expected a map of strings".into())),
    }
    Ok(out)
}

fn containers(spec: &Value, key: &str) -> Vec<Value> {
    spec.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn name_of(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or("")
}

/// Refuses a pod whose containers would run as the proxy's uid or gid, or
/// listen on the proxy's ports: capture lets the proxy's own traffic
/// through, so such an app would bypass the mesh.
fn check_identity(
    spec: &Value,
    init: &[Value],
    apps: &[Value],
    err: &impl Fn(&str, String) -> InjectError,
) -> Result<(), InjectError> {
    let as_proxy = |ctx: Option<&Value>, at: &str| -> Result<(), InjectError> {
        for key in ["runAsUser", "runAsGroup"] {
            if ctx.and_then(|c| c.get(key)).and_then(Value::as_i64) == Some(PROXY_UID) {
                return Err(err(
                    &format!("{at}.securityContext.{key}"),
                    format!(
                        "{PROXY_UID} is the proxy's: capture lets its traffic through, \
                         so this container's would bypass the mesh"
                    ),
                ));
            }
        }
        Ok(())
    };
    as_proxy(spec.get("securityContext"), "spec")?;
    for (list, key) in [(init, "initContainers"), (apps, "containers")] {
        for (i, c) in list.iter().enumerate() {
            let at = format!("spec.{key}[{i}]");
            as_proxy(c.get("securityContext"), &at)?;
            for (j, p) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let port = p.get("containerPort").and_then(Value::as_u64);
                if let Some(port) = port.filter(|p| PROXY_PORTS.iter().any(|q| u64::from(*q) == *p))
                {
                    return Err(err(
                        &format!("{at}.ports[{j}].containerPort"),
                        format!("{port} is one of the proxy's ports ({PROXY_PORTS:?})"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `mesh-proxy init`'s arguments, from the pod's traffic annotations.
fn init_args(
    annotations: &std::collections::BTreeMap<String, String>,
    err: &impl Fn(&str, String) -> InjectError,
) -> Result<Vec<String>, InjectError> {
    let ports = PROXY_PORTS
        .iter()
        .filter(|p| **p != 15001 && **p != 15006)
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<String> = vec![
        "init".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--proxy-gid".into(),
        PROXY_UID.to_string(),
        // Only the ports the injected proxy listens on go uncaptured (the
        // default also spares 15021 and 15090, which nothing here serves:
        // an app on them would be reached outside the mesh).
        "--proxy-ports".into(),
        ports,
    ];
    for (annotation, flag, check) in [
        (
            "includeOutboundIPRanges",
            "--include-outbound-ip-ranges",
            Check::Ranges,
        ),
        (
            "excludeOutboundIPRanges",
            "--exclude-outbound-ip-ranges",
            Check::Ranges,
        ),
        (
            "excludeInboundPorts",
            "--exclude-inbound-ports",
            Check::Ports,
        ),
        (
            "excludeOutboundPorts",
            "--exclude-outbound-ports",
            Check::Ports,
        ),
    ] {
        let key = format!("traffic.sidecar.istio.io/{annotation}");
        if let Some(v) = annotations.get(&key) {
            let v: String = v.split(',').map(str::trim).collect::<Vec<_>>().join(",");
            check
                .validate(&v)
                .map_err(|m| err(&format!("metadata.annotations.{key}"), m))?;
            args.push(flag.into());
            args.push(v);
        }
    }
    Ok(args)
}

/// What a traffic annotation holds.
#[derive(Clone, Copy)]
enum Check {
    Ports,
    Ranges,
}

impl Check {
    fn validate(self, v: &str) -> Result<(), String> {
        if v.is_empty() {
            return Ok(());
        }
        for item in v.split(',') {
            let ok = match self {
                Check::Ports => item.parse::<u16>().is_ok_and(|p| p > 0),
                Check::Ranges => item == "*" || valid_cidr(item),
            };
            if !ok {
                let what = match self {
                    Check::Ports => "a port (1-65535)",
                    Check::Ranges => "a CIDR (10.0.0.0/8, fd00::/8) or *",
                };
                return Err(format!("{item:?} is not {what}"));
            }
        }
        Ok(())
    }
}

fn valid_cidr(s: &str) -> bool {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len.is_empty() || len.parse::<u8>().is_ok_and(|l| l <= 32),
        Ok(std::net::IpAddr::V6(_)) => len.is_empty() || len.parse::<u8>().is_ok_and(|l| l <= 128),
        Err(_) => false,
    }
}

fn init_container(image: &str, args: Vec<String>) -> Value {
    json!({
        "name": INIT_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["mesh-proxy"],
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        },
    })
}

fn proxy_container(
    image: &str,
    config: &InjectConfig,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Value {
    let probe = |period: u32, failures: u32| {
        json!({
            "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT, "scheme": "HTTP"},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 3,
        })
    };
    let mut requests = Map::new();
    requests.insert(
        "cpu".into(),
        annotations
            .get("sidecar.istio.io/proxyCPU")
            .map_or("100m", String::as_str)
            .into(),
    );
    requests.insert(
        "memory".into(),
        annotations
            .get("sidecar.istio.io/proxyMemory")
            .map_or("128Mi", String::as_str)
            .into(),
    );
    let mut resources = Map::new();
    resources.insert("requests".into(), Value::Object(requests));
    let mut limits = Map::new();
    for (key, annotation) in [
        ("cpu", "sidecar.istio.io/proxyCPULimit"),
        ("memory", "sidecar.istio.io/proxyMemoryLimit"),
    ] {
        if let Some(v) = annotations.get(annotation) {
            limits.insert(key.into(), v.clone().into());
        }
    }
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    json!({
        "name": PROXY_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        // A native sidecar: up before the app, down after it.
        "restartPolicy": "Always",
        "command": ["mesh-proxy"],
        "args": [
            "sidecar",
            "--capture",
            "--control-plane", config.control_plane,
            "--ca-root", format!("{CA_ROOT_DIR}/root-cert.pem"),
            "--token-file", format!("{TOKEN_DIR}/{TOKEN_VOLUME}"),
            "--trust-domain", config.trust_domain,
            "--namespace", "$(POD_NAMESPACE)",
            "--workload", "$(POD_NAME)",
            "--service-account", "$(SERVICE_ACCOUNT)",
            "--status-addr", format!("0.0.0.0:{STATUS_PORT}"),
        ],
        "env": [
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "ports": [{"name": "mesh-status", "containerPort": STATUS_PORT, "protocol": "TCP"}],
        // The app's containers start once this succeeds.
        "startupProbe": probe(1, 600),
        "readinessProbe": probe(2, 30),
        "resources": Value::Object(resources),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "runAsUser": PROXY_UID,
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": CA_ROOT_VOLUME, "mountPath": CA_ROOT_DIR, "readOnly": true},
        ],
    })
}

/// Injects every document of a YAML stream (`kubectl apply -f`'s input)
/// and gives the stream back, as `istioctl kube-inject` does. Documents
/// that hold no pod template come back as they were (re-serialized).
pub fn inject_yaml(input: &str, config: &InjectConfig) -> Result<String, InjectError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(input).map_err(|e| InjectError {
        object: "input".into(),
        field: "YAML".into(),
        message: e.to_string(),
    })?;
    let mut out = String::new();
    for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
        inject_object(&mut doc, config)?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        let text = serde_saphyr::to_string(&doc).map_err(|e| InjectError {
            object: describe(
                &doc,
                doc.get("kind").and_then(Value::as_str).unwrap_or(""),
                None,
            ),
            field: "YAML".into(),
            message: e.to_string(),
        })?;
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// The mutating admission webhook's answer to one `AdmissionReview` (v1):
/// the JSON Patch that injects the pod, no patch for a pod left alone, or
/// the pod refused with the reason (failing closed: a pod that should be
/// in the mesh never starts half in it).
pub fn review(request: &Value, config: &InjectConfig) -> Value {
    let req = request.get("request");
    let uid = req
        .and_then(|r| r.get("uid"))
        .cloned()
        .unwrap_or(Value::String(String::new()));
    let respond = |response: Value| {
        let mut r = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        });
        r["response"]["uid"] = uid.clone();
        r
    };
    let deny = |code: u16, message: String| {
        respond(json!({
            "allowed": false,
            "status": {"code": code, "message": message, "status": "Failure"},
        }))
    };
    if request.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || request.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return deny(
            400,
            "expected an admission.k8s.io/v1 AdmissionReview".into(),
        );
    }
    let Some(req) = req else {
        return deny(400, "AdmissionReview without request".into());
    };
    let resource = req
        .get("kind")
        .and_then(|k| k.get("kind"))
        .and_then(Value::as_str);
    if resource != Some("Pod") {
        // Only pods are registered; anything else is let through untouched.
        return respond(json!({"allowed": true}));
    }
    let Some(pod) = req.get("object") else {
        return deny(400, "AdmissionReview without request.object".into());
    };
    let mut after = pod.clone();
    if let Some(ns) = req.get("namespace").and_then(Value::as_str) {
        // On CREATE the pod may not say its namespace yet; errors name it.
        if let Some(meta) = after.get_mut("metadata").and_then(Value::as_object_mut)
            && !meta.contains_key("namespace")
        {
            meta.insert("namespace".into(), ns.into());
        }
    }
    match inject_object(&mut after, config) {
        Ok(Outcome::Injected) => {
            // Only the injector's changes: the namespace filled in above
            // for the messages is not patched.
            if let (Some(meta), Some(before)) = (
                after.get_mut("metadata").and_then(Value::as_object_mut),
                pod.get("metadata"),
            ) && before.get("namespace").is_none()
            {
                meta.remove("namespace");
            }
            let patch = Value::Array(json_patch(pod, &after));
            let bytes = patch.to_string().into_bytes();
            let encoded =
                serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or(Value::Null);
            respond(json!({"allowed": true, "patchType": "JSONPatch", "patch": encoded}))
        }
        Ok(Outcome::AlreadyInjected | Outcome::Skipped(_)) => respond(json!({"allowed": true})),
        Err(e) => deny(403, format!("sidecar injection refused: {e}")),
    }
}

/// The JSON Patch (RFC 6902) from `before` to `after`: objects compared key
/// by key, anything else replaced whole.
pub fn json_patch(before: &Value, after: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff(before, after, &mut String::new(), &mut ops);
    ops
}

fn diff(before: &Value, after: &Value, path: &mut String, ops: &mut Vec<Value>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, bv) in b {
                let len = path.len();
                push_token(path, k);
                match a.get(k) {
                    Some(av) => diff(bv, av, path, ops),
                    None => ops.push(json!({"op": "remove", "path": path.clone()})),
                }
                path.truncate(len);
            }
            for (k, av) in a {
                if !b.contains_key(k) {
                    let len = path.len();
                    push_token(path, k);
                    ops.push(json!({"op": "add", "path": path.clone(), "value": av}));
                    path.truncate(len);
                }
            }
        }
        (b, a) if b == a => {}
        (_, a) => ops.push(json!({"op": "replace", "path": path.clone(), "value": a})),
    }
}

/// Appends `/token` to a JSON Pointer, escaped (`~` as `~0`, `/` as `~1`).
fn push_token(path: &mut String, token: &str) {
    path.push('/');
    path.push_str(&token.replace('~', "~0").replace('/', "~1"));
}

/// The app's original probes, by the status port's path that answers them
/// (`/app-health/CONTAINER/readyz|livez|startupz`): what the injector
/// passes the sidecar in `MESH_APP_PROBES`, as Istio's injector passes
/// pilot-agent `ISTIO_KUBE_APP_PROBERS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppProbes(pub std::collections::BTreeMap<String, AppProbe>);

/// One original probe, its port resolved to a number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppProbe {
    /// An HTTP GET of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetProbe>,
    /// A TCP connection to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpProbe>,
    /// The probe's timeout (the kubelet's default, 1 s, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// The app's HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetProbe {
    /// The path (and query).
    pub path: String,
    /// The app's port.
    pub port: u16,
    /// Headers the probe sends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<ProbeHeader>,
}

/// A probe's header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// The app's TCP probe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// The app's port.
    pub port: u16,
}

/// Rewrites the app containers' HTTP and TCP probes to the sidecar's status
/// port, which runs them against the app from inside the pod: under
/// capture the kubelet's own would reach the sidecar's inbound port, which
/// asks for mTLS. `exec` probes need nothing. HTTPS and gRPC probes are
/// refused by name (not rewritten yet, and they would fail as they are).
fn rewrite_probes(
    spec: &mut Value,
    err: &impl Fn(&str, String) -> InjectError,
) -> Result<AppProbes, InjectError> {
    let mut probes = AppProbes::default();
    let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) else {
        return Ok(probes);
    };
    for (i, c) in containers.iter_mut().enumerate() {
        let name = name_of(c).to_owned();
        let ports: Vec<(String, u64)> = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("name")?.as_str()?.to_owned(),
                    p.get("containerPort")?.as_u64()?,
                ))
            })
            .collect();
        for (kind, suffix) in [
            ("readinessProbe", "readyz"),
            ("livenessProbe", "livez"),
            ("startupProbe", "startupz"),
        ] {
            let Some(probe) = c.get_mut(kind).and_then(Value::as_object_mut) else {
                continue;
            };
            let at = format!("spec.containers[{i}].{kind}");
            let resolve = |v: Option<&Value>, f: &str| -> Result<u16, InjectError> {
                let n = match v {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => match s.parse::<u64>() {
                        Ok(n) => Some(n),
                        Err(_) => ports.iter().find(|(n, _)| n == s).map(|(_, p)| *p),
                    },
                    _ => None,
                };
                n.and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        err(
                            &format!("{at}.{f}.port"),
                            "not a port number or a named port of the container".into(),
                        )
                    })
            };
            let timeout_seconds = probe.get("timeoutSeconds").and_then(Value::as_u64);
            let original = if let Some(get) = probe.get("httpGet") {
                if get.get("host").is_some() {
                    // The kubelet probes another host: nothing of the pod's.
                    continue;
                }
                let scheme = get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
                if scheme != "HTTP" {
                    return Err(err(
                        &format!("{at}.httpGet.scheme"),
                        format!(
                            "{scheme} probes are not rewritten to the sidecar yet, and under capture the kubelet's \
                             would reach the sidecar: use an exec probe, or {REWRITE_PROBES_ANNOTATION}: \"false\""
                        ),
                    ));
                }
                let port = resolve(get.get("port"), "httpGet")?;
                let http_headers = get
                    .get("httpHeaders")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|h| {
                        Some(ProbeHeader {
                            name: h.get("name")?.as_str()?.to_owned(),
                            value: h.get("value")?.as_str()?.to_owned(),
                        })
                    })
                    .collect();
                AppProbe {
                    http_get: Some(HttpGetProbe {
                        path: get
                            .get("path")
                            .and_then(Value::as_str)
                            .unwrap_or("/")
                            .to_owned(),
                        port,
                        http_headers,
                    }),
                    tcp_socket: None,
                    timeout_seconds,
                }
            } else if let Some(tcp) = probe.get("tcpSocket") {
                if tcp.get("host").is_some() {
                    continue;
                }
                AppProbe {
                    http_get: None,
                    tcp_socket: Some(TcpProbe {
                        port: resolve(tcp.get("port"), "tcpSocket")?,
                    }),
                    timeout_seconds,
                }
            } else if probe.contains_key("grpc") {
                return Err(err(
                    &format!("{at}.grpc"),
                    format!(
                        "gRPC probes are not rewritten to the sidecar yet, and under capture the kubelet's \
                         would reach the sidecar: use an exec probe, or {REWRITE_PROBES_ANNOTATION}: \"false\""
                    ),
                ));
            } else {
                continue;
            };
            let path = format!("{APP_HEALTH_PREFIX}{name}/{suffix}");
            probe.remove("tcpSocket");
            probe.insert(
                "httpGet".into(),
                json!({"path": path, "port": STATUS_PORT, "scheme": "HTTP"}),
            );
            probes.0.insert(path, original);
        }
    }
    Ok(probes)
}
