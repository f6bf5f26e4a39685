//! Sidecar injection: `mesh-proxy inject`'s transformation and the
//! admission webhook's answer, on the article's WordPress manifests and a
//! recorded AdmissionReview v1 (`fixtures/admission/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use mesh_kube::inject::{
    self, CA_ROOT_CONFIG_MAP, INIT_CONTAINER, InjectConfig, Outcome, PROXY_CONTAINER,
    STATUS_ANNOTATION,
};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn pod(spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": "shop", "labels": {"app": "shop"}},
        "spec": spec,
    })
}

fn simple_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 8080}]}]})
}

fn init_containers(pod_spec: &Value) -> Vec<String> {
    pod_spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Applies an RFC 6902 patch of add, replace and remove operations, as the
/// API server does with a webhook's answer.
fn apply_patch(doc: &Value, patch: &[Value]) -> Value {
    let mut doc = doc.clone();
    for op in patch {
        let path = op["path"].as_str().unwrap();
        let tokens: Vec<String> = path
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let (last, parents) = tokens.split_last().unwrap();
        let mut at = &mut doc;
        for t in parents {
            at = match at {
                Value::Object(m) => m.get_mut(t).unwrap(),
                Value::Array(a) => &mut a[t.parse::<usize>().unwrap()],
                _ => panic!("{path}: no parent"),
            };
        }
        let m = at.as_object_mut().expect("objects only");
        match op["op"].as_str().unwrap() {
            "add" => {
                assert!(!m.contains_key(last), "add over {path}");
                m.insert(last.clone(), op["value"].clone());
            }
            "replace" => {
                assert!(m.contains_key(last), "replace of absent {path}");
                m.insert(last.clone(), op["value"].clone());
            }
            "remove" => {
                m.remove(last).unwrap();
            }
            other => panic!("unexpected op {other}"),
        }
    }
    doc
}

#[test]
fn the_article_s_deployments_get_a_native_sidecar_the_capture_init_and_the_token() {
    let text =
        std::fs::read_to_string(repo().join("examples/wordpress-canary/kubernetes/app.yaml"))
            .unwrap();
    let config = InjectConfig::default();
    let out = inject::inject_yaml(&text, &config).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    let before: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(docs.len(), before.iter().filter(|d| !d.is_null()).count());
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 3, "mysql, wordpress v1 and v2");
    for d in &deployments {
        let template = &d["spec"]["template"];
        let spec = &template["spec"];
        let names = init_containers(spec);
        assert_eq!(&names[..2], [INIT_CONTAINER, PROXY_CONTAINER], "{names:?}");
        let proxy = &spec["initContainers"][1];
        assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
        assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
        assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/healthz/ready");
        let a = args(proxy);
        for flag in [
            "--capture",
            "--token-file",
            "--status-addr",
            "--control-plane",
        ] {
            assert!(a.iter().any(|x| x == flag), "{flag} in {a:?}");
        }
        let init = &spec["initContainers"][0];
        assert_eq!(args(init)[0], "init");
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        let volumes = spec["volumes"].as_array().unwrap();
        let token = volumes.iter().find(|v| v["name"] == "mesh-token").unwrap();
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "istio-ca"
        );
        let root = volumes
            .iter()
            .find(|v| v["name"] == "mesh-ca-root")
            .unwrap();
        assert_eq!(root["configMap"]["name"], CA_ROOT_CONFIG_MAP);
        let labels = &template["metadata"]["labels"];
        assert_eq!(labels["security.istio.io/tlsMode"], "istio");
        assert_eq!(labels["service.istio.io/canonical-name"], labels["app"]);
        assert!(
            template["metadata"]["annotations"][STATUS_ANNOTATION]
                .as_str()
                .unwrap()
                .contains("mesh-proxy")
        );
        // The app's own containers are untouched.
        let original = before
            .iter()
            .find(|b| b["metadata"]["name"] == d["metadata"]["name"] && b["kind"] == "Deployment")
            .unwrap();
        assert_eq!(
            spec["containers"],
            original["spec"]["template"]["spec"]["containers"]
        );
    }
    // Services, ConfigMaps: as they were.
    for (b, a) in before.iter().filter(|d| !d.is_null()).zip(&docs) {
        if b["kind"] != "Deployment" {
            assert_eq!(a, b);
        }
    }
    // Idempotent: injecting the output changes nothing.
    assert_eq!(inject::inject_yaml(&out, &config).unwrap(), out);
}

#[test]
fn inject_s_output_is_valid_for_the_kubernetes_api() {
    // kubernetes-validate (CI installs it; validate.sh installs it when
    // missing), strict, Kubernetes 1.33: a field the API does not define is
    // an error.
    let text =
        std::fs::read_to_string(repo().join("examples/wordpress-canary/kubernetes/app.yaml"))
            .unwrap();
    let out = inject::inject_yaml(&text, &InjectConfig::default()).unwrap();
    let dir = tempfile_dir();
    let file = dir.join("injected.yaml");
    std::fs::write(&file, &out).unwrap();
    let result = std::process::Command::new("bash")
        .arg(repo().join("deploy/kubernetes/validate.sh"))
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("injected.yaml"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_workload_kind_is_injected_and_others_are_left_alone() {
    let template = json!({"metadata": {"labels": {"app": "a"}}, "spec": simple_spec()});
    let config = InjectConfig::default();
    for (kind, mut obj, path) in [
        (
            "Deployment",
            json!({"kind": "Deployment", "spec": {"template": template}}),
            vec!["spec", "template"],
        ),
        (
            "StatefulSet",
            json!({"kind": "StatefulSet", "spec": {"template": template}}),
            vec!["spec", "template"],
        ),
        (
            "DaemonSet",
            json!({"kind": "DaemonSet", "spec": {"template": template}}),
            vec!["spec", "template"],
        ),
        (
            "Job",
            json!({"kind": "Job", "spec": {"template": template}}),
            vec!["spec", "template"],
        ),
        (
            "CronJob",
            json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": template}}}}),
            vec!["spec", "jobTemplate", "spec", "template"],
        ),
        ("Pod", pod(simple_spec()), vec![]),
    ] {
        assert_eq!(
            inject::inject_object(&mut obj, &config).unwrap(),
            Outcome::Injected,
            "{kind}"
        );
        let mut at = &obj;
        for p in &path {
            at = &at[*p];
        }
        assert_eq!(init_containers(&at["spec"])[1], PROXY_CONTAINER, "{kind}");
    }
    let mut list =
        json!({"kind": "List", "items": [pod(simple_spec()), {"kind": "Service", "spec": {}}]});
    assert_eq!(
        inject::inject_object(&mut list, &config).unwrap(),
        Outcome::Injected
    );
    assert_eq!(
        init_containers(&list["items"][0]["spec"])[1],
        PROXY_CONTAINER
    );
    let mut svc = json!({"kind": "Service", "spec": {"ports": [{"port": 80}]}});
    let before = svc.clone();
    assert!(matches!(
        inject::inject_object(&mut svc, &config).unwrap(),
        Outcome::Skipped(_)
    ));
    assert_eq!(svc, before);
}

#[test]
fn the_user_s_init_containers_run_after_the_sidecar() {
    let mut p = pod(json!({
        "initContainers": [{"name": "migrate", "image": "app", "args": ["migrate"]}],
        "containers": [{"name": "app", "image": "app"}],
    }));
    inject::inject_object(&mut p, &InjectConfig::default()).unwrap();
    assert_eq!(
        init_containers(&p["spec"]),
        [INIT_CONTAINER, PROXY_CONTAINER, "migrate"]
    );
}

#[test]
fn opting_out_and_host_network_are_left_alone_and_a_bad_value_is_refused() {
    let config = InjectConfig::default();
    for p in [
        {
            let mut p = pod(simple_spec());
            p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("false");
            p
        },
        {
            let mut p = pod(simple_spec());
            p["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
            p
        },
        pod(json!({"hostNetwork": true, "containers": [{"name": "app", "image": "x"}]})),
    ] {
        let mut q = p.clone();
        let out = inject::inject_object(&mut q, &config).unwrap();
        assert!(matches!(out, Outcome::Skipped(_)), "{out:?}");
        assert_eq!(q, p, "nothing changed");
    }
    let mut p = pod(simple_spec());
    p["metadata"]["labels"]["sidecar.istio.io/inject"] = json!("no");
    let e = inject::inject_object(&mut p, &config).unwrap_err();
    assert_eq!(e.field, "metadata.labels.sidecar.istio.io/inject");
    assert!(e.to_string().contains("Pod shop/app"), "{e}");
}

#[test]
fn a_pod_that_would_bypass_capture_is_refused_naming_the_field() {
    let config = InjectConfig::default();
    let cases = [
        (
            json!({"securityContext": {"runAsUser": 1337}, "containers": [{"name": "a", "image": "x"}]}),
            "spec.securityContext.runAsUser",
        ),
        (
            json!({"securityContext": {"runAsGroup": 1337}, "containers": [{"name": "a", "image": "x"}]}),
            "spec.securityContext.runAsGroup",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x", "securityContext": {"runAsUser": 1337}}]}),
            "spec.containers[1].securityContext.runAsUser",
        ),
        (
            json!({"initContainers": [{"name": "i", "image": "x", "securityContext": {"runAsGroup": 1337}}], "containers": [{"name": "a", "image": "x"}]}),
            "spec.initContainers[0].securityContext.runAsGroup",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 15006}]}]}),
            "spec.containers[0].ports[0].containerPort",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}, {"containerPort": 15020}]}]}),
            "spec.containers[0].ports[1].containerPort",
        ),
        (
            json!({"containers": [{"name": "mesh-init", "image": "x"}]}),
            "spec.containers",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x"}, {"name": "istio-proxy", "image": "istio/proxyv2"}]}),
            "spec.containers",
        ),
        (
            json!({"containers": [{"name": "a", "image": "x"}], "volumes": [{"name": "mesh-token", "emptyDir": {}}]}),
            "spec.volumes[0].name",
        ),
    ];
    for (spec, field) in cases {
        let mut p = pod(spec);
        let before = p.clone();
        let e = inject::inject_object(&mut p, &config).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert_eq!(p, before, "nothing half-injected");
    }
    // The same under a Deployment names the field from the object's root.
    let mut d = json!({"kind": "Deployment", "metadata": {"name": "w", "namespace": "n"},
        "spec": {"template": {"spec": {"securityContext": {"runAsUser": 1337}, "containers": []}}}});
    let e = inject::inject_object(&mut d, &config).unwrap_err();
    assert_eq!(e.field, "spec.template.spec.securityContext.runAsUser");
    assert_eq!(e.object, "Deployment n/w");
}

#[test]
fn istio_s_traffic_annotations_are_honoured_and_others_refused_by_name() {
    let config = InjectConfig::default();
    let mut p = pod(simple_spec());
    p["metadata"]["annotations"] = json!({
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "169.254.169.254/32, 10.96.0.0/12",
        "traffic.sidecar.istio.io/excludeInboundPorts": "9100",
        "sidecar.istio.io/proxyCPU": "50m",
        "sidecar.istio.io/proxyMemoryLimit": "256Mi",
        "sidecar.istio.io/proxyImage": "registry.example/mesh-proxy:dev",
    });
    inject::inject_object(&mut p, &config).unwrap();
    let init = &p["spec"]["initContainers"][0];
    let a = args(init);
    let at = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
    assert_eq!(
        at("--exclude-outbound-ip-ranges"),
        "169.254.169.254/32,10.96.0.0/12"
    );
    assert_eq!(at("--exclude-inbound-ports"), "9100");
    assert_eq!(at("--proxy-ports"), "15000,15020");
    let proxy = &p["spec"]["initContainers"][1];
    assert_eq!(proxy["image"], "registry.example/mesh-proxy:dev");
    assert_eq!(init["image"], "registry.example/mesh-proxy:dev");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "50m");
    assert_eq!(proxy["resources"]["limits"]["memory"], "256Mi");

    for (key, value) in [
        ("sidecar.istio.io/logLevel", "debug"),
        ("traffic.sidecar.istio.io/includeInboundPorts", "80"),
        ("proxy.istio.io/config", "{}"),
        ("sidecar.istio.io/status", "{}"),
    ] {
        let mut p = pod(simple_spec());
        p["metadata"]["annotations"] = json!({ key: value });
        let e = inject::inject_object(&mut p, &config).unwrap_err();
        assert_eq!(e.field, format!("metadata.annotations.{key}"), "{e}");
    }
    for (key, value) in [
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.0/33",
        ),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "ten"),
        ("traffic.sidecar.istio.io/excludeInboundPorts", "70000"),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", "0"),
    ] {
        let mut p = pod(simple_spec());
        p["metadata"]["annotations"] = json!({ key: value });
        let e = inject::inject_object(&mut p, &config).unwrap_err();
        assert_eq!(e.field, format!("metadata.annotations.{key}"), "{e}");
    }
}

#[test]
fn the_webhook_answers_a_recorded_admission_review_with_a_patch_that_injects() {
    let review = fixture("pod-create.json");
    let config = InjectConfig::default();
    let answer = inject::review(&review, &config);
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch: Vec<Value> = {
        let k8s_openapi::ByteString(bytes) =
            serde_json::from_value(response["patch"].clone()).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let pod = &review["request"]["object"];
    let patched = apply_patch(pod, &patch);
    // The same pod `inject` makes, without the namespace the webhook only
    // used for its messages.
    let mut expected = pod.clone();
    assert_eq!(
        inject::inject_object(&mut expected, &config).unwrap(),
        Outcome::Injected
    );
    assert_eq!(patched, expected);
    assert!(patched["metadata"].get("namespace").is_none());
    // The existing annotation is kept; the API's own volumes too.
    assert_eq!(
        patched["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
        "2026-12-01T10:00:00Z"
    );
    assert_eq!(
        patched["spec"]["volumes"][1]["name"],
        "kube-api-access-8x2kq"
    );
    // The patched pod, reviewed again (reinvocation), is left alone.
    let mut again = review.clone();
    again["request"]["object"] = patched;
    let second = inject::review(&again, &config);
    assert_eq!(second["response"]["allowed"], true);
    assert!(second["response"].get("patch").is_none());
}

#[test]
fn the_webhook_refuses_a_pod_it_cannot_hold_and_lets_an_opted_out_one_through() {
    let config = InjectConfig::default();
    let mut review = fixture("pod-create.json");
    review["request"]["object"]["spec"]["securityContext"] = json!({"runAsUser": 1337});
    let answer = inject::review(&review, &config);
    let r = &answer["response"];
    assert_eq!(r["allowed"], false);
    assert_eq!(r["uid"], review["request"]["uid"]);
    assert_eq!(r["status"]["code"], 403);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("Pod default/wordpress-v1-6d9f7c5b8-")
            && message.contains("spec.securityContext.runAsUser"),
        "{message}"
    );

    let mut review = fixture("pod-create.json");
    review["request"]["object"]["metadata"]["annotations"]["sidecar.istio.io/inject"] =
        json!("false");
    let answer = inject::review(&review, &config);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    // Not an AdmissionReview v1: refused, not guessed at.
    let mut old = fixture("pod-create.json");
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let answer = inject::review(&old, &config);
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 400);
}

#[test]
fn the_json_patch_escapes_keys_and_removes_what_is_gone() {
    let before = json!({"a": {"x/y": 1, "t~": 2, "gone": 3}});
    let after = json!({"a": {"x/y": 5, "t~": 2, "new": [1]}});
    let patch = inject::json_patch(&before, &after);
    assert!(patch.contains(&json!({"op": "replace", "path": "/a/x~1y", "value": 5})));
    assert!(patch.contains(&json!({"op": "remove", "path": "/a/gone"})));
    assert_eq!(apply_patch(&before, &patch), after);
}

#[test]
fn the_app_s_http_and_tcp_probes_move_to_the_status_port() {
    let config = InjectConfig::default();
    let mut p = pod(json!({"containers": [{
        "name": "web", "image": "wordpress",
        "ports": [{"name": "http", "containerPort": 80}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http",
                                       "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
                           "periodSeconds": 5, "timeoutSeconds": 2},
        "livenessProbe": {"tcpSocket": {"port": 80}, "failureThreshold": 4},
        "startupProbe": {"exec": {"command": ["true"]}},
    }, {
        "name": "side", "image": "x",
        "readinessProbe": {"httpGet": {"path": "/", "port": 9000, "host": "example.test"}},
    }]}));
    inject::inject_object(&mut p, &config).unwrap();
    let web = &p["spec"]["containers"][0];
    assert_eq!(
        web["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/web/readyz", "port": 15020, "scheme": "HTTP"},
               "periodSeconds": 5, "timeoutSeconds": 2})
    );
    assert_eq!(
        web["livenessProbe"],
        json!({"httpGet": {"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP"},
               "failureThreshold": 4})
    );
    assert_eq!(
        web["startupProbe"],
        json!({"exec": {"command": ["true"]}}),
        "exec: as it was"
    );
    assert_eq!(
        p["spec"]["containers"][1]["readinessProbe"]["httpGet"]["host"], "example.test",
        "another host's probe: as it was"
    );
    let proxy = &p["spec"]["initContainers"][1];
    let env = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MESH_APP_PROBES")
        .unwrap();
    let probes: inject::AppProbes = serde_json::from_str(env["value"].as_str().unwrap()).unwrap();
    let ready = &probes.0["/app-health/web/readyz"];
    let get = ready.http_get.as_ref().unwrap();
    assert_eq!(
        (get.path.as_str(), get.port),
        ("/ready", 80),
        "the named port resolved"
    );
    assert_eq!(get.http_headers[0].name, "X-Probe");
    assert_eq!(ready.timeout_seconds, Some(2));
    assert_eq!(
        probes.0["/app-health/web/livez"]
            .tcp_socket
            .as_ref()
            .unwrap()
            .port,
        80
    );
    assert_eq!(probes.0.len(), 2);
    // Idempotent with probes too.
    let once = p.clone();
    assert_eq!(
        inject::inject_object(&mut p, &config).unwrap(),
        Outcome::AlreadyInjected
    );
    assert_eq!(p, once);

    // Opted out: the probes stay, and no variable.
    let mut p = pod(json!({"containers": [{"name": "web", "image": "x",
        "readinessProbe": {"tcpSocket": {"port": 80}}}]}));
    p["metadata"]["annotations"] = json!({"sidecar.istio.io/rewriteAppHTTPProbers": "false"});
    inject::inject_object(&mut p, &config).unwrap();
    assert_eq!(
        p["spec"]["containers"][0]["readinessProbe"],
        json!({"tcpSocket": {"port": 80}})
    );
    assert!(
        !p["spec"]["initContainers"][1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "MESH_APP_PROBES")
    );
}

#[test]
fn probes_that_cannot_be_moved_are_refused_by_field() {
    let config = InjectConfig::default();
    for (probe, field) in [
        (
            json!({"httpGet": {"path": "/", "port": 443, "scheme": "HTTPS"}}),
            "spec.containers[0].readinessProbe.httpGet.scheme",
        ),
        (
            json!({"grpc": {"port": 9090}}),
            "spec.containers[0].readinessProbe.grpc",
        ),
        (
            json!({"httpGet": {"path": "/", "port": "nope"}}),
            "spec.containers[0].readinessProbe.httpGet.port",
        ),
        (
            json!({"tcpSocket": {"port": 70000}}),
            "spec.containers[0].readinessProbe.tcpSocket.port",
        ),
    ] {
        let mut p =
            pod(json!({"containers": [{"name": "web", "image": "x", "readinessProbe": probe}]}));
        let before = p.clone();
        let e = inject::inject_object(&mut p, &config).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert_eq!(p, before);
    }
    let mut p = pod(json!({"containers": [{"name": "web", "image": "x"}]}));
    p["metadata"]["annotations"] = json!({"sidecar.istio.io/rewriteAppHTTPProbers": "maybe"});
    let e = inject::inject_object(&mut p, &config).unwrap_err();
    assert_eq!(
        e.field,
        "metadata.annotations.sidecar.istio.io/rewriteAppHTTPProbers"
    );
}
