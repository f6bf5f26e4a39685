//! Retry and fault decisions as plain functions.

use std::time::Duration;

use serde::Serialize;

use crate::resources::networking::{HttpFaultInjection, HttpRetry};

/// Why an attempt failed, as far as retry conditions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The connection or stream was reset mid-request.
    Reset,
    /// HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// The attempt took longer than the per-try timeout.
    PerTryTimeout,
}

/// The retry policy of a route, with Istio's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Conditions, Envoy's names.
    pub conditions: Vec<String>,
    /// Status codes retried under `retriable-status-codes`, or named directly.
    pub statuses: Vec<u16>,
    /// The route asked for retries by name: requests with bodies and
    /// non-idempotent methods are retried too.
    pub explicit: bool,
}

impl RetryPolicy {
    /// Istio's default when a route says nothing: two retries on connection
    /// failures, refused streams and 503, for requests that are safe to
    /// repeat.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            conditions: [
                "connect-failure",
                "refused-stream",
                "unavailable",
                "cancelled",
                "retriable-status-codes",
            ]
            .map(str::to_owned)
            .to_vec(),
            statuses: vec![503],
            explicit: false,
        }
    }

    /// From a route's `retries`, or the default.
    pub fn from_config(r: Option<&HttpRetry>) -> Self {
        let Some(r) = r else {
            return Self::istio_default();
        };
        let mut conditions = Vec::new();
        let mut statuses = Vec::new();
        for c in r
            .retry_on
            .as_deref()
            .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503")
            .split(',')
        {
            let c = c.trim();
            match c.parse::<u16>() {
                Ok(s) => statuses.push(s),
                Err(_) if !c.is_empty() => conditions.push(c.to_owned()),
                Err(_) => {}
            }
        }
        Self {
            attempts: r.attempts,
            per_try_timeout: r.per_try_timeout.map(|d| d.0),
            conditions,
            statuses,
            explicit: true,
        }
    }

    fn has(&self, c: &str) -> bool {
        self.conditions.iter().any(|x| x == c)
    }

    /// May a request with this method, and with or without a body, be sent
    /// more than once? Only idempotent methods without a body, unless the
    /// route asked for retries by name.
    pub fn request_is_retryable(&self, method: &str, has_body: bool) -> bool {
        self.explicit
            || (!has_body
                && matches!(
                    method,
                    "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
                ))
    }

    /// Does this failure warrant another attempt?
    pub fn retries_on(&self, f: Failure) -> bool {
        match f {
            Failure::ConnectFailure => {
                self.has("connect-failure") || self.has("5xx") || self.has("gateway-error")
            }
            Failure::Reset => self.has("reset") || self.has("5xx"),
            Failure::RefusedStream => self.has("refused-stream") || self.has("reset"),
            Failure::PerTryTimeout => {
                self.has("5xx") || self.has("gateway-error") || self.has("reset")
            }
            Failure::Status(s) => {
                self.statuses.contains(&s)
                    || (self.has("5xx") && s >= 500)
                    || (self.has("gateway-error") && matches!(s, 502..=504))
                    || (self.has("unavailable") && s == 503)
                    || (self.has("retriable-4xx") && s == 409)
            }
        }
    }
}

/// Envoy's default base interval between retries (Istio's routes do not
/// set one).
pub const BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Envoy's default cap on the interval: ten times the base.
pub const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How long to wait before retry number `retry` (1 for the first retry):
/// Envoy's fully jittered exponential back-off, a uniform draw (from
/// `roll`) in `[0, min(base * 2^(retry-1), max)]`.
pub fn backoff(retry: u32, roll: u64) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(roll % (ceiling_us + 1))
}

/// What fault injection does to one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultDecision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Answer with this status instead of forwarding.
    pub abort: Option<u16>,
}

/// Decides faults from two uniform rolls in [0, 1).
pub fn fault_decision(f: &HttpFaultInjection, delay_roll: f64, abort_roll: f64) -> FaultDecision {
    let hit = |p: Option<crate::resources::Percent>, roll: f64| {
        roll * 100.0 < p.map_or(100.0, |p| p.value)
    };
    FaultDecision {
        delay: f
            .delay
            .as_ref()
            .filter(|d| hit(d.percentage, delay_roll))
            .map(|d| d.fixed_delay.0),
        abort: f
            .abort
            .as_ref()
            .filter(|a| hit(a.percentage, abort_roll))
            .map(|a| a.http_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_and_bodies_are_not_retried_by_default() {
        let d = RetryPolicy::istio_default();
        assert!(d.request_is_retryable("GET", false));
        assert!(!d.request_is_retryable("POST", false));
        assert!(!d.request_is_retryable("PUT", true));
        let explicit = RetryPolicy::from_config(Some(&HttpRetry {
            attempts: 3,
            per_try_timeout: None,
            retry_on: Some("5xx".into()),
        }));
        assert!(explicit.request_is_retryable("POST", true));
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        assert_eq!(backoff(1, 0), Duration::ZERO);
        assert_eq!(backoff(1, 25_000), Duration::from_millis(25));
        assert_eq!(backoff(1, 25_001), Duration::ZERO);
        assert_eq!(backoff(2, 50_000), Duration::from_millis(50));
        assert_eq!(backoff(9, u64::MAX), backoff(9, u64::MAX % 250_001));
        for r in [0, 7, 1 << 40, u64::MAX] {
            for retry in 1..40 {
                assert!(backoff(retry, r) <= BACKOFF_MAX);
            }
        }
    }

    #[test]
    fn conditions() {
        let p = RetryPolicy::from_config(Some(&HttpRetry {
            attempts: 3,
            per_try_timeout: None,
            retry_on: Some("gateway-error,429".into()),
        }));
        assert!(p.retries_on(Failure::Status(502)));
        assert!(p.retries_on(Failure::Status(429)));
        assert!(!p.retries_on(Failure::Status(500)));
        assert!(p.retries_on(Failure::ConnectFailure));
        let d = RetryPolicy::istio_default();
        assert!(d.retries_on(Failure::Status(503)));
        assert!(!d.retries_on(Failure::Status(500)));
        assert!(!d.retries_on(Failure::PerTryTimeout));
    }

    #[test]
    fn faults_hit_their_share() {
        use crate::resources::networking::{FaultAbort, FaultDelay};
        use crate::resources::{Duration as D, Percent};
        let f = HttpFaultInjection {
            delay: Some(FaultDelay {
                fixed_delay: D(Duration::from_millis(5)),
                percentage: Some(Percent { value: 25.0 }),
            }),
            abort: Some(FaultAbort {
                http_status: 503,
                percentage: Some(Percent { value: 10.0 }),
            }),
        };
        let n = 10_000;
        let (mut delays, mut aborts) = (0, 0);
        for i in 0..n {
            let roll = f64::from(i) / f64::from(n);
            let d = fault_decision(&f, roll, 1.0 - roll - 1e-9);
            delays += u32::from(d.delay.is_some());
            aborts += u32::from(d.abort == Some(503));
        }
        assert_eq!((delays, aborts), (2_500, 1_000));
    }
}
