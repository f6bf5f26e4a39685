//! Outlier detection as a plain state machine, with time passed in: an
//! endpoint is ejected after consecutive 5xx answers or connection failures,
//! comes back after an ejection time that grows with each ejection, and the
//! caller never ejects more than `maxEjectionPercent` of a set (but always
//! at least one endpoint, as Envoy does).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::resources::networking::OutlierDetection;

/// Longest ejection, however often an endpoint was ejected (Envoy's default).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The outlier settings in force, with Istio's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierPolicy {
    /// Eject after this many 5xx in a row (None: not on 5xx).
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many 502/503/504 or connection failures in a row.
    pub consecutive_gateway: Option<u32>,
    /// First ejection's length.
    pub base_ejection: Duration,
    /// Most of a set that may be ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl OutlierPolicy {
    /// From a DestinationRule's settings; `None` when it asks for nothing.
    pub fn from_config(od: &OutlierDetection) -> Option<Self> {
        let c5 = od.consecutive5xx_errors.or(od.consecutive_errors);
        let gw = od.consecutive_gateway_errors;
        if c5.is_none() && gw.is_none() {
            return None;
        }
        Some(Self {
            consecutive_5xx: c5.filter(|n| *n > 0),
            consecutive_gateway: gw.filter(|n| *n > 0),
            base_ejection: od
                .base_ejection_time
                .map_or(Duration::from_secs(30), |d| d.0),
            max_ejection_percent: od.max_ejection_percent.unwrap_or(10),
        })
    }

    /// How many of `total` endpoints may be ejected at once: the percentage,
    /// but at least one.
    pub fn max_ejected(&self, total: usize) -> usize {
        (total * self.max_ejection_percent as usize / 100).max(1)
    }
}

/// What happened to one request to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer below 500.
    Success,
    /// A 5xx answer.
    Status(u16),
    /// No connection, a reset, or a broken response: a gateway error.
    ConnectFailure,
}

/// The health of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealth {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

impl EndpointHealth {
    /// Can requests go to the endpoint at `now`?
    pub fn is_available(&self, now: Instant) -> bool {
        self.ejected_until.is_none_or(|t| now >= t)
    }

    /// How often it was ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    /// Records an outcome. `may_eject` says whether the set still has room
    /// for one more ejection. Returns true when this outcome ejected the
    /// endpoint.
    pub fn record(
        &mut self,
        outcome: Outcome,
        now: Instant,
        policy: &OutlierPolicy,
        may_eject: bool,
    ) -> bool {
        if self.ejected_until.is_some_and(|t| now >= t) {
            // Back from ejection: counting starts afresh.
            self.ejected_until = None;
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
        }
        match outcome {
            Outcome::Success => {
                self.consecutive_5xx = 0;
                self.consecutive_gateway = 0;
                return false;
            }
            Outcome::Status(s) => {
                self.consecutive_5xx += 1;
                if matches!(s, 502..=504) {
                    self.consecutive_gateway += 1;
                } else {
                    self.consecutive_gateway = 0;
                }
            }
            Outcome::ConnectFailure => {
                self.consecutive_5xx += 1;
                self.consecutive_gateway += 1;
            }
        }
        let tripped = policy
            .consecutive_5xx
            .is_some_and(|n| self.consecutive_5xx >= n)
            || policy
                .consecutive_gateway
                .is_some_and(|n| self.consecutive_gateway >= n);
        if tripped && may_eject && self.is_available(now) {
            self.ejections += 1;
            let length = policy
                .base_ejection
                .saturating_mul(self.ejections)
                .min(MAX_EJECTION.max(policy.base_ejection));
            self.ejected_until = Some(now + length);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_5xx: Some(3),
            consecutive_gateway: None,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_errors_and_returns_later_for_longer() {
        let p = policy();
        let t0 = Instant::now();
        let mut h = EndpointHealth::default();
        assert!(!h.record(Outcome::Status(500), t0, &p, true));
        assert!(
            !h.record(Outcome::Success, t0, &p, true),
            "a success resets the count"
        );
        assert!(!h.record(Outcome::Status(500), t0, &p, true));
        assert!(!h.record(Outcome::ConnectFailure, t0, &p, true));
        assert!(h.record(Outcome::Status(503), t0, &p, true));
        assert!(!h.is_available(t0 + Duration::from_secs(9)));
        assert!(h.is_available(t0 + Duration::from_secs(10)));
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            h.record(Outcome::Status(500), t1, &p, true);
        }
        assert_eq!(h.ejections(), 2);
        assert!(
            !h.is_available(t1 + Duration::from_secs(19)),
            "the second ejection is twice as long"
        );
        assert!(h.is_available(t1 + Duration::from_secs(20)));
    }

    #[test]
    fn respects_the_set_limit() {
        let p = policy();
        let now = Instant::now();
        let mut h = EndpointHealth::default();
        for _ in 0..5 {
            assert!(!h.record(Outcome::Status(500), now, &p, false));
        }
        assert!(h.is_available(now));
        assert_eq!(p.max_ejected(2), 1);
        assert_eq!(p.max_ejected(10), 5);
        let ten = OutlierPolicy {
            max_ejection_percent: 10,
            ..p
        };
        assert_eq!(ten.max_ejected(2), 1, "at least one");
    }

    #[test]
    fn defaults_follow_istio() {
        let od = OutlierDetection {
            consecutive5xx_errors: Some(5),
            ..Default::default()
        };
        let p = OutlierPolicy::from_config(&od).unwrap();
        assert_eq!(p.base_ejection, Duration::from_secs(30));
        assert_eq!(p.max_ejection_percent, 10);
        assert!(OutlierPolicy::from_config(&OutlierDetection::default()).is_none());
    }
}
