//! Types shared by several Istio resources: metadata, string matches,
//! percentages, durations and label selectors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration as StdDuration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// Labels, as in `metadata.labels` or a subset's `labels`.
pub type Labels = BTreeMap<String, String>;

/// Kubernetes object metadata. Only `name`, `namespace`, `labels` and
/// `annotations` carry meaning here; the bookkeeping fields a `kubectl get -o
/// yaml` export adds are accepted and ignored because they never change
/// behaviour. Anything else is an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The resource's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The resource's namespace; `default` when absent.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Labels of the resource itself.
    #[serde(default)]
    pub labels: Labels,
    /// Annotations of the resource itself.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, rename = "uid")]
    _uid: Option<IgnoredAny>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<IgnoredAny>,
    #[serde(default, rename = "generation")]
    _generation: Option<IgnoredAny>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<IgnoredAny>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<IgnoredAny>,
    #[serde(default, rename = "selfLink")]
    _self_link: Option<IgnoredAny>,
}

/// A string match: exactly one of `exact`, `prefix` or `regex`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    /// The whole value equals this string.
    Exact(String),
    /// The value starts with this string.
    Prefix(String),
    /// The whole value matches this RE2-style regular expression.
    Regex(String),
}

/// A percentage, `{value: 12.5}`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// Between 0 and 100.
    pub value: f64,
}

/// A workload selector, `{matchLabels: {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all carry to be selected.
    #[serde(default)]
    pub match_labels: Labels,
}

/// A duration written the way Istio writes them: `10s`, `1.5s`, `250ms`,
/// `1m30s`, `2h`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Duration {
    /// Parses a Go-style duration: one or more `<number><unit>` with units
    /// `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("`{s}` is not a duration (write e.g. `10s`, `250ms`, `1m30s`)");
        if s.is_empty() {
            return Err(err());
        }
        let mut total = 0f64;
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if num_len == 0 {
                return Err(err());
            }
            let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            total += n * scale;
        }
        StdDuration::try_from_secs_f64(total)
            .map(Duration)
            .map_err(|_| err())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}s", self.0.as_secs_f64()))
    }
}

/// True when every label in `selector` is carried by `labels` with the same
/// value. An empty selector selects everything.
pub fn labels_match(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |s: &str| Duration::parse(s).map(|d| d.0.as_millis());
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("2h"), Ok(7_200_000));
        for bad in ["", "10", "s", "10x", "-1s", "1..2s", "1e9999h"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
    }
}
