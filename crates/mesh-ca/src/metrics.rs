//! Every metric this crate emits, in one place. No labels: one workload
//! identity per process.

use std::sync::Once;

/// Unix time at which the workload's current SVID expires.
pub const CERT_EXPIRY: &str = "mesh_cert_expiry_timestamp_seconds";
/// SVIDs obtained (first one included).
pub const CERT_RENEWALS: &str = "mesh_cert_renewals_total";
/// Failed attempts to get or renew an SVID, or to reload certificate files.
pub const CERT_RENEWAL_FAILURES: &str = "mesh_cert_renewal_failures_total";
/// Certificates issued by the CA.
pub const CA_ISSUED: &str = "mesh_ca_certificates_issued_total";
/// Signing requests the CA refused.
pub const CA_REFUSED: &str = "mesh_ca_requests_refused_total";

pub(crate) fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        metrics::describe_gauge!(
            CERT_EXPIRY,
            metrics::Unit::Seconds,
            "Unix time at which the workload's current certificate expires"
        );
        metrics::describe_counter!(CERT_RENEWALS, "Workload certificates obtained");
        metrics::describe_counter!(
            CERT_RENEWAL_FAILURES,
            "Failed attempts to obtain, renew or reload the workload certificate"
        );
        metrics::describe_counter!(CA_ISSUED, "Certificates issued by the CA");
        metrics::describe_counter!(CA_REFUSED, "Signing requests refused by the CA");
    });
}

pub(crate) fn renewed(not_after_unix: u64) {
    metrics::counter!(CERT_RENEWALS).increment(1);
    // f64 holds unix seconds exactly for the next 285 million years.
    #[allow(clippy::cast_precision_loss)]
    metrics::gauge!(CERT_EXPIRY).set(not_after_unix as f64);
}

pub(crate) fn renewal_failed() {
    metrics::counter!(CERT_RENEWAL_FAILURES).increment(1);
}

#[allow(dead_code)] // used by the signing service
pub(crate) fn issued() {
    metrics::counter!(CA_ISSUED).increment(1);
}

#[allow(dead_code)] // used by the signing service
pub(crate) fn refused() {
    metrics::counter!(CA_REFUSED).increment(1);
}
