//! The examples run as a user runs them, and say what they should: each
//! binary is started as a process, given a deadline, and its output read.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `bin` with `args`; returns its stdout if it exits 0 within a minute.
fn run(bin: &str, args: &[&str]) -> String {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{bin} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap().unwrap();
    let err = err.join().unwrap().unwrap();
    assert!(
        status.success(),
        "{bin} failed ({status})\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    out
}

/// The values of the lines starting `key: `.
fn values<'a>(out: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}: ");
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

fn value<'a>(out: &'a str, key: &str) -> &'a str {
    match values(out, key).as_slice() {
        [v] => v,
        other => panic!("expected one `{key}:` line, found {other:?} in\n{out}"),
    }
}

/// `892 (89.2%)` → 892.
fn count(split: &str) -> usize {
    split.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn hello_mesh_splits_90_10_over_mtls_and_reports_istio_metrics() {
    let requests = 1000;
    let out = run(env!("CARGO_BIN_EXE_hello-mesh"), &[&requests.to_string()]);

    // The split: 90% ± 6% to v1 (six standard deviations at 1000 requests),
    // the rest to v2, nothing lost.
    let v1 = count(value(&out, "split v1"));
    let v2 = count(value(&out, "split v2"));
    assert_eq!(v1 + v2, requests, "{out}");
    assert!(
        (840..=960).contains(&v1),
        "v1 got {v1} of {requests}, outside 90% ± 6%\n{out}"
    );

    // Identities: the client is `sa/client`; secure naming required
    // `sa/hello` of both versions, over mTLS; both servers saw `sa/client`.
    let client = "spiffe://cluster.local/ns/default/sa/client";
    let hello = "spiffe://cluster.local/ns/default/sa/hello";
    assert_eq!(value(&out, "client identity"), client);
    let servers = values(&out, "server identity");
    for version in ["hello-v1", "hello-v2"] {
        assert!(
            servers.iter().any(|l| l.starts_with(hello)
                && l.contains(&format!("secure naming of {version}, mtls true"))),
            "no verified server identity for {version}: {servers:?}"
        );
    }
    assert_eq!(
        values(&out, "caller identity"),
        [
            format!("v1 saw {client} ({v1} requests)"),
            format!("v2 saw {client} ({v2} requests)"),
        ],
    );
    assert!(value(&out, "reply").starts_with("hello from v"));

    // Istio's metric, from the client's registry: one series per version,
    // naming the server's verified identity, with counts that match the
    // split.
    let metrics: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    for (version, n) in [("v1", v1), ("v2", v2)] {
        let series = metrics
            .iter()
            .find(|l| l.contains(&format!(r#"destination_version="{version}""#)))
            .unwrap_or_else(|| panic!("no series for {version} in {metrics:?}"));
        for label in [
            r#"reporter="source""#,
            r#"source_workload="client""#,
            &format!(r#"source_principal="{client}""#),
            &format!(r#"destination_workload="hello-{version}""#),
            &format!(r#"destination_principal="{hello}""#),
            r#"response_code="200""#,
            // The caller's side names no security policy, as Istio's
            // ("unknown when report is from source"): the verified
            // destination_principal is what says the hop was mTLS.
            r#"connection_security_policy="unknown""#,
        ] {
            assert!(series.contains(label), "{label} missing from {series}");
        }
        assert!(series.ends_with(&format!("}} {n}")), "{series}");
    }
    assert!(out.lines().any(|l| l == "hello-mesh: ok"), "{out}");
}

#[test]
fn grpc_lets_the_frontend_in_and_keeps_the_intruder_out() {
    let out = run(env!("CARGO_BIN_EXE_grpc"), &[]);

    assert_eq!(
        value(&out, "allowed"),
        "Hello frontend, you are spiffe://cluster.local/ns/default/sa/frontend"
    );

    // The mesh refuses the intruder the gRPC way, as Envoy does: a
    // trailers-only answer with `grpc-status: 7`, so tonic reports
    // PermissionDenied with the mesh's reason.
    assert_eq!(value(&out, "denied code"), "PermissionDenied", "{out}");
    assert_eq!(
        value(&out, "denied message"),
        "RBAC: access denied: no ALLOW policy matched"
    );
    assert_eq!(
        value(&out, "denied reason"),
        "RBAC: access denied: no ALLOW policy matched"
    );
    assert!(values(&out, "not denied").is_empty(), "{out}");

    // The greeter's metrics: one 200 for each (a gRPC denial is an HTTP 200
    // carrying grpc-status 7, as in Istio), the intruder's flagged RBAC,
    // both over mutual TLS as gRPC.
    let metrics: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    for (sa, flags) in [("frontend", "-"), ("intruder", "RBAC")] {
        let series = metrics
            .iter()
            .find(|l| l.contains(&format!("sa/{sa}\"")))
            .unwrap_or_else(|| panic!("no series for {sa} in {metrics:?}"));
        for label in [
            r#"reporter="destination""#,
            r#"request_protocol="grpc""#,
            r#"response_code="200""#,
            &format!(r#"response_flags="{flags}""#),
            r#"connection_security_policy="mutual_tls""#,
        ] {
            assert!(series.contains(label), "{label} missing from {series}");
        }
        assert!(series.ends_with("} 1"), "{series}");
    }
    assert!(out.lines().any(|l| l == "grpc: ok"), "{out}");
}
