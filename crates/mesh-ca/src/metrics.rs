//! Every metric this crate defines, in one place: name, type and help text
//! ([`MetricDef`]), the values behind them, and their Prometheus text. The
//! CA's metrics endpoint (`mesh-control`) and `mesh-proxy`'s admin
//! `/stats/prometheus` both render through [`CertMetrics::render`] and
//! [`CaMetrics::render`], so a name, a type or a help text exists once.
//!
//! Why not the `metrics` facade (which this crate used before): its values
//! go to one process-global recorder. Nothing here installed one, so they
//! went nowhere; installing one would make two meshes (or two tests) in one
//! process share, and fight over, one set of counters, and rendering it
//! needs an exporter crate. The values already live per instance
//! ([`ManagerStatus`](crate::ManagerStatus), the [`FileWatcher`](crate::FileWatcher)'s
//! counters, the signing service's [`CaMetrics`]): plain atomics, read at
//! scrape time and rendered by the few lines below. No labels but the
//! refusal reason, whose values are the fixed set of [`RefusalReason`]; the
//! certificate metrics describe one workload identity per process.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a metric is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic counter.
    Counter,
    /// A value that goes up and down.
    Gauge,
}

impl MetricKind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// A metric's name, help text and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDef {
    /// The Prometheus name.
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
}

impl MetricDef {
    /// Appends the `# HELP` and `# TYPE` lines.
    pub fn write_header(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
    }

    /// Appends the header and one unlabelled sample.
    pub fn write_value(&self, out: &mut String, value: u64) {
        self.write_header(out);
        let _ = writeln!(out, "{} {value}", self.name);
    }
}

/// Istio's build information metric, which its dashboards read ("Istio
/// Component Versions": `sum by (component,tag) (istio_build)`).
pub const ISTIO_BUILD: MetricDef = MetricDef {
    name: "istio_build",
    help: "Istio component build info: 1 per component (proxy, pilot) and version (tag).",
    kind: MetricKind::Gauge,
};

/// Appends `istio_build{component="<component>",tag="<this version>"} 1`
/// with its header: `proxy` for a data plane, `pilot` for the control plane,
/// as Istio names them.
pub fn write_build(out: &mut String, component: &str) {
    ISTIO_BUILD.write_header(out);
    let _ = writeln!(
        out,
        "{}{{component=\"{component}\",tag=\"{}\"}} 1",
        ISTIO_BUILD.name,
        env!("CARGO_PKG_VERSION")
    );
}

/// Unix time at which the workload's current SVID expires.
pub const CERT_EXPIRY: MetricDef = MetricDef {
    name: "mesh_cert_expiry_timestamp_seconds",
    help: "Unix time at which the workload's current certificate expires.",
    kind: MetricKind::Gauge,
};

/// SVIDs obtained from the CA (the first one included), or reloaded from
/// changed files.
pub const CERT_RENEWALS: MetricDef = MetricDef {
    name: "mesh_cert_renewals_total",
    help: "Workload certificates obtained from the CA, or reloaded from changed files.",
    kind: MetricKind::Counter,
};

/// Failed attempts to get or renew an SVID, or to reload certificate files.
pub const CERT_RENEWAL_FAILURES: MetricDef = MetricDef {
    name: "mesh_cert_renewal_failures_total",
    help: "Failed attempts to obtain, renew or reload the workload certificate.",
    kind: MetricKind::Counter,
};

/// Certificates issued by the signing service.
pub const CA_ISSUED: MetricDef = MetricDef {
    name: "mesh_ca_certificates_issued_total",
    help: "Certificates issued by the CA.",
    kind: MetricKind::Counter,
};

/// Signing requests the signing service refused, by [`RefusalReason`].
pub const CA_REFUSED: MetricDef = MetricDef {
    name: "mesh_ca_requests_refused_total",
    help: "Signing requests the CA refused, by reason.",
    kind: MetricKind::Counter,
};

/// Every metric of this crate.
pub const ALL: [MetricDef; 5] = [
    CERT_EXPIRY,
    CERT_RENEWALS,
    CERT_RENEWAL_FAILURES,
    CA_ISSUED,
    CA_REFUSED,
];

/// What a workload's certificate source reports, read at scrape time from
/// a [`CertManager`](crate::CertManager) or a [`FileWatcher`](crate::FileWatcher).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CertMetrics {
    /// When the certificate in service expires, unix seconds.
    pub expiry_unix: u64,
    /// [`CERT_RENEWALS`].
    pub renewals: u64,
    /// [`CERT_RENEWAL_FAILURES`].
    pub failures: u64,
}

impl CertMetrics {
    /// Appends the certificate metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        CERT_EXPIRY.write_value(out, self.expiry_unix);
        CERT_RENEWALS.write_value(out, self.renewals);
        CERT_RENEWAL_FAILURES.write_value(out, self.failures);
    }
}

/// Why the signing service refused a request: the `reason` label of
/// [`CA_REFUSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The CSR could not be read, or its key is not one the CA signs.
    InvalidCsr,
    /// No client certificate and no usable join token (missing, malformed,
    /// unknown, expired or already used).
    Unauthenticated,
    /// The caller's identity is not in the CA's trust domain.
    ForeignTrustDomain,
    /// The CA itself failed (its token store, or signing).
    Internal,
}

impl RefusalReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [Self; 4] = [
        Self::InvalidCsr,
        Self::Unauthenticated,
        Self::ForeignTrustDomain,
        Self::Internal,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCsr => "invalid_csr",
            Self::Unauthenticated => "unauthenticated",
            Self::ForeignTrustDomain => "foreign_trust_domain",
            Self::Internal => "internal",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::InvalidCsr => 0,
            Self::Unauthenticated => 1,
            Self::ForeignTrustDomain => 2,
            Self::Internal => 3,
        }
    }
}

/// The signing service's counters. Every reason is rendered from the start
/// (at zero), so a dashboard's rate has a series before the first refusal.
#[derive(Debug, Default)]
pub struct CaMetrics {
    issued: AtomicU64,
    refused: [AtomicU64; RefusalReason::ALL.len()],
}

impl CaMetrics {
    /// Certificates issued.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Requests refused for `reason`.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    #[cfg_attr(not(feature = "grpc"), allow(dead_code))] // the signing service counts
    pub(crate) fn record_issued(&self) {
        self.issued.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    pub(crate) fn record_refused(&self, reason: RefusalReason) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the CA's metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        CA_ISSUED.write_value(out, self.issued());
        CA_REFUSED.write_header(out);
        for reason in RefusalReason::ALL {
            let _ = writeln!(
                out,
                "{}{{reason=\"{}\"}} {}",
                CA_REFUSED.name,
                reason.as_str(),
                self.refused(reason)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_metrics_render_as_prometheus_text() {
        let mut out = String::new();
        CertMetrics {
            expiry_unix: 1_700_000_000,
            renewals: 3,
            failures: 1,
        }
        .render(&mut out);
        assert_eq!(
            out,
            "# HELP mesh_cert_expiry_timestamp_seconds Unix time at which the workload's current certificate expires.\n\
             # TYPE mesh_cert_expiry_timestamp_seconds gauge\n\
             mesh_cert_expiry_timestamp_seconds 1700000000\n\
             # HELP mesh_cert_renewals_total Workload certificates obtained from the CA, or reloaded from changed files.\n\
             # TYPE mesh_cert_renewals_total counter\n\
             mesh_cert_renewals_total 3\n\
             # HELP mesh_cert_renewal_failures_total Failed attempts to obtain, renew or reload the workload certificate.\n\
             # TYPE mesh_cert_renewal_failures_total counter\n\
             mesh_cert_renewal_failures_total 1\n"
        );
    }

    #[test]
    fn every_refusal_reason_has_a_series_and_counts_apart() {
        let m = CaMetrics::default();
        m.record_issued();
        m.record_refused(RefusalReason::Unauthenticated);
        m.record_refused(RefusalReason::Unauthenticated);
        m.record_refused(RefusalReason::InvalidCsr);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("\nmesh_ca_certificates_issued_total 1\n"));
        assert!(out.contains("mesh_ca_requests_refused_total{reason=\"unauthenticated\"} 2\n"));
        assert!(out.contains("mesh_ca_requests_refused_total{reason=\"invalid_csr\"} 1\n"));
        assert!(
            out.contains("mesh_ca_requests_refused_total{reason=\"foreign_trust_domain\"} 0\n")
        );
        assert!(out.contains("mesh_ca_requests_refused_total{reason=\"internal\"} 0\n"));
        // One HELP and one TYPE per family.
        assert_eq!(
            out.matches("# TYPE mesh_ca_requests_refused_total").count(),
            1
        );
    }

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(ALL[i + 1..].iter().all(|b| b.name != a.name), "{}", a.name);
            assert_eq!(a.kind == MetricKind::Counter, a.name.ends_with("_total"));
            assert!(a.help.ends_with('.'), "{}", a.name);
        }
    }
}
