//! The `check` and `explain` commands: each prints its report (a table,
//! or JSON for tools) to standard output, errors to standard error, and
//! returns the exit status the command line gives.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use mesh_core::analyze::{self, Report, Severity, TlsStatus};
use mesh_core::error::ConfigErrors;
use mesh_core::explain::{self, Query};
use mesh_core::resources::{ResourceRef, Resources};
use mesh_core::snapshot::{self, Snapshot};

/// Exit status when the configuration cannot be read.
const UNREADABLE: u8 = 2;

fn load(config: &Path) -> Result<(Resources, Snapshot), ConfigErrors> {
    let resources = mesh_core::load::load_path(config)?;
    let snap = snapshot::compile(&resources)?;
    Ok((resources, snap))
}

fn unreadable(errors: &ConfigErrors, json: bool) -> ExitCode {
    if json {
        let v = serde_json::json!({ "readable": false, "errors": errors });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        eprintln!("error: the configuration cannot be used: {errors}");
    }
    ExitCode::from(UNREADABLE)
}

/// Checks the configuration at `config`: the TLS table (server mTLS mode
/// against the client TLS of DestinationRules, per service port) and the
/// analyzers. 0 clean (warnings allowed), 1 errors or conflicts, 2 the
/// configuration cannot be read.
pub fn check(config: &Path, json: bool, options: analyze::CheckOptions) -> ExitCode {
    let (resources, snap) = match load(config) {
        Ok(x) => x,
        Err(e) => return unreadable(&e, json),
    };
    let mut report = analyze::check_with(&snap, &resources, options);
    // What gRPC's proxyless clients (served by the control plane) cannot
    // honour of the gRPC ports: warnings, after the analyzers' own.
    report.findings.extend(mesh_control::grpc::findings(&snap));
    if json {
        let v = serde_json::json!({
            "readable": true,
            "tls": report.tls,
            "findings": report.findings,
            "skipped": resources.skipped,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", render(&report, &resources));
    }
    if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
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

/// Explains the decision for one request, step by step, naming the
/// resource behind each step. 0 when the request would get through, 1 when
/// some step refuses it, 2 when the configuration or the query cannot be
/// read.
pub fn explain(config: &Path, query: &Query, json: bool) -> ExitCode {
    let snap = match load(config) {
        Ok((_, snap)) => snap,
        Err(e) => return unreadable(&e, json),
    };
    match explain::explain(&snap, query) {
        Ok(x) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&x).unwrap_or_default());
            } else {
                println!("{x}");
            }
            if x.steps.iter().all(|s| s.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(UNREADABLE)
        }
    }
}
