//! The reports of `mesh-proxy check` and `explain`, as text (a table, or
//! JSON for tools) with the exit status the command line gives: pure
//! functions of a configuration, so the command line (on a folder) and the
//! control plane's admin endpoint (on the configuration it serves,
//! [`crate::CHECK_PATH`], [`crate::EXPLAIN_PATH`]) print the same thing.

use std::fmt::Write as _;

use mesh_core::analyze::{self, Report, Severity, TlsStatus};
use mesh_core::error::ConfigErrors;
use mesh_core::explain::{self, Query};
use mesh_core::resources::{ResourceRef, Resources};
use mesh_core::snapshot::Snapshot;

/// Exit status when the configuration (or the query) cannot be read.
pub const UNREADABLE: u8 = 2;

/// A report: what goes to standard output and to standard error, and the
/// exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The report.
    pub stdout: String,
    /// Errors for people (nothing with JSON: they are in the report).
    pub stderr: String,
    /// 0, 1 or [`UNREADABLE`], as each command documents.
    pub exit: u8,
}

/// The report of a configuration that cannot be used.
pub fn unreadable(errors: &ConfigErrors, json: bool) -> Output {
    if json {
        let v = serde_json::json!({ "readable": false, "errors": errors });
        Output {
            stdout: serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            stderr: String::new(),
            exit: UNREADABLE,
        }
    } else {
        Output {
            stdout: String::new(),
            stderr: format!("error: the configuration cannot be used: {errors}\n"),
            exit: UNREADABLE,
        }
    }
}

/// `check`: the TLS table (server mTLS mode against the client TLS of
/// DestinationRules, per service port), the analyzers, and what gRPC's
/// proxyless clients cannot honour ([`crate::grpc::findings`]). Exit 0
/// clean (warnings allowed), 1 errors or conflicts.
pub fn check(
    resources: &Resources,
    snap: &Snapshot,
    options: analyze::CheckOptions,
    json: bool,
) -> Output {
    let mut report = analyze::check_with(snap, resources, options);
    report.findings.extend(crate::grpc::findings(snap));
    let stdout = if json {
        let v = serde_json::json!({
            "readable": true,
            "tls": report.tls,
            "findings": report.findings,
            "skipped": resources.skipped,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        render(&report, resources)
    };
    Output {
        stdout,
        stderr: String::new(),
        exit: u8::from(report.has_errors()),
    }
}

/// `explain`: the decision for one request, step by step, naming the
/// resource behind each step. Exit 0 when the request would get through, 1
/// when some step refuses it, [`UNREADABLE`] when the query cannot be read.
/// Decided over what the source's namespace sees of `resources` (`snap`
/// is their compile), as its data plane decides.
pub fn explain(resources: &Resources, snap: &Snapshot, query: &Query, json: bool) -> Output {
    match explain::explain_in_view(resources, snap, query) {
        Ok(x) => Output {
            stdout: if json {
                serde_json::to_string_pretty(&x).unwrap_or_default() + "\n"
            } else {
                format!("{x}\n")
            },
            stderr: String::new(),
            exit: u8::from(!x.steps.iter().all(|s| s.ok)),
        },
        Err(e) => Output {
            stdout: String::new(),
            stderr: format!("error: {e}\n"),
            exit: UNREADABLE,
        },
    }
}

fn names(refs: &[ResourceRef]) -> String {
    if refs.is_empty() {
        return "-".to_owned();
    }
    refs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn render(report: &Report, resources: &Resources) -> String {
    let mut out = String::new();
    let header = [
        "HOST:PORT",
        "STATUS",
        "SERVER",
        "CLIENT",
        "AUTHN POLICY",
        "DESTINATION RULE",
    ];
    let rows: Vec<[String; 6]> = report
        .tls
        .iter()
        .map(|r| {
            [
                r.host_port.clone(),
                match r.status {
                    TlsStatus::Ok => "OK".to_owned(),
                    TlsStatus::Conflict => "CONFLICT".to_owned(),
                },
                r.server.clone(),
                r.client.clone(),
                names(&r.authn_policies),
                r.destination_rule
                    .as_ref()
                    .map_or("-".to_owned(), ToString::to_string),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |out: &mut String, cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &header);
    for row in &rows {
        line(
            &mut out,
            &row.iter().map(String::as_str).collect::<Vec<_>>(),
        );
    }
    for r in report
        .tls
        .iter()
        .filter(|r| r.status == TlsStatus::Conflict)
    {
        let _ = writeln!(
            out,
            "  CONFLICT {}: {}",
            r.host_port,
            r.reason.as_deref().unwrap_or_default()
        );
    }
    if !report.findings.is_empty() {
        out.push('\n');
    }
    for f in &report.findings {
        let sev = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
        };
        let _ = writeln!(out, "{sev:<7} {} {}", f.code, f.message);
        for r in &f.resources {
            let _ = writeln!(out, "          {r}: {}", r.origin);
        }
    }
    if !resources.skipped.is_empty() {
        let _ = writeln!(
            out,
            "\nskipped {} document(s) of kinds the mesh does not read:",
            resources.skipped.len()
        );
        for s in &resources.skipped {
            let _ = writeln!(
                out,
                "  {} {} {}: {}",
                s.api_version,
                s.kind,
                s.name.as_deref().unwrap_or("(unnamed)"),
                s.origin
            );
        }
    }
    let errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = report.findings.len() - errors;
    let conflicts = report
        .tls
        .iter()
        .filter(|r| r.status == TlsStatus::Conflict)
        .count();
    let _ = writeln!(
        out,
        "\n{} service port(s): {conflicts} conflict(s), {errors} error(s), {warnings} warning(s)",
        report.tls.len()
    );
    out
}
