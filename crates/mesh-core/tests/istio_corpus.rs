//! `check` over Istio's own material (`../shared/istio-corpus`: samples,
//! test data, validation datasets, task pages, the Bookinfo tutorial;
//! nobody here wrote it). Prints the figures and asserts them:
//! - Istio-valid folders read (what `check` exits 0 or 1 on): at least
//!   [`VALID_FLOOR`]. Issue 12's goal is 85%; the floor is what is read
//!   today, so that nothing read goes back to refused. The rest are kinds
//!   and fields refused by name (EnvoyFilter, Telemetry, WorkloadGroup,
//!   ambient waypoints, the Gateway API's TCPRoute...), listed by the test.
//! - Istio-invalid documents (`A4-invalid`) refused: at least 95%.
//! - Every Bookinfo tutorial step clean but `certmanager-gateway`, whose
//!   VirtualService routes to a service the folder does not define (a true
//!   positive).
//!
//! Skipped, loudly, where the corpus is not on the machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The share of Istio-valid folders read today (185 of 253, with the
/// Gateway API's Gateway and HTTPRoute; its waypoints and TCP folders are
/// refused by name).
const VALID_FLOOR: f64 = 0.85;

fn corpus() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/istio-corpus");
    dir.is_dir().then_some(dir)
}

fn folders(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// `check` on a folder: `Err` (exit 2) when it cannot be read, else
/// whether it has errors (exit 1) or not (exit 0).
fn check(dir: &Path) -> Result<bool, String> {
    let r = mesh_core::load::load_path(dir).map_err(|e| e.to_string())?;
    let snap = mesh_core::snapshot::compile(&r).map_err(|e| e.to_string())?;
    Ok(mesh_core::analyze::check(&snap, &r).has_errors())
}

#[test]
fn check_reads_istios_own_material() {
    let Some(root) = corpus() else {
        eprintln!("SKIPPED LOUDLY: ../shared/istio-corpus is not on this machine");
        return;
    };
    let valid_groups = [
        "A1-samples",
        "A1g-samples-gateway-api",
        "A2-testdata",
        "A3-authz",
        "A3-peerauthn",
        "A3-xds-bench",
        "A4-valid",
        "A6-istio-io",
    ];
    let (mut read, mut total) = (0usize, 0usize);
    for g in valid_groups {
        for f in folders(&root.join(g)) {
            total += 1;
            match check(&f) {
                Ok(_) => read += 1,
                Err(e) => {
                    let first = e.lines().nth(1).unwrap_or(&e).trim().to_owned();
                    eprintln!(
                        "not read: {g}/{}: {first}",
                        f.file_name().unwrap().to_string_lossy()
                    );
                }
            }
        }
    }
    let (mut refused, mut invalid) = (0usize, 0usize);
    for f in folders(&root.join("A4-invalid")) {
        invalid += 1;
        match check(&f) {
            Err(_) => refused += 1,
            Ok(_) => {
                let expected = std::fs::read_to_string(f.join("EXPECTED.txt")).unwrap_or_default();
                eprintln!(
                    "accepted, Istio refuses: {} ({})",
                    f.file_name().unwrap().to_string_lossy(),
                    expected.trim()
                );
            }
        }
    }
    let mut unclean = Vec::new();
    let mut steps = 0;
    for f in folders(&root.join("A5-bookinfo-tutorial")) {
        steps += 1;
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match check(&f) {
            Ok(false) => {}
            Ok(true) => unclean.push(name),
            Err(e) => unclean.push(format!("{name} (unreadable: {e})")),
        }
    }
    let share = |a: usize, b: usize| a as f64 / b.max(1) as f64;
    eprintln!(
        "Istio-valid folders read: {read}/{total} ({:.1}%); Istio-invalid refused: {refused}/{invalid} ({:.1}%); Bookinfo steps clean: {}/{steps}",
        100.0 * share(read, total),
        100.0 * share(refused, invalid),
        steps - unclean.len()
    );
    assert!(
        total > 200 && invalid > 50 && steps > 15,
        "the corpus is not whole"
    );
    assert!(
        share(read, total) >= VALID_FLOOR,
        "{read}/{total} Istio-valid folders read, below the floor {VALID_FLOOR}"
    );
    assert!(
        share(refused, invalid) >= 0.95,
        "{refused}/{invalid} Istio-invalid documents refused"
    );
    assert_eq!(
        unclean,
        ["bookinfo_networking_certmanager-gateway.yaml"],
        "Bookinfo steps that are not clean"
    );
}
