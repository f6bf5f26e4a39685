//! SPIFFE identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing follows the SPIFFE ID standard: lowercase scheme and trust domain,
//! trust domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]` that are
//! neither empty, `.` nor `..`, no query, fragment, port or user info, at most
//! 2048 bytes. The mesh's workload identities additionally have the Istio path
//! shape `/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest SPIFFE ID the standard allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID or a trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The string does not start with `spiffe://`.
    #[error("a SPIFFE ID starts with `spiffe://`")]
    Scheme,
    /// The trust domain is empty.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain holds a character outside `[a-z0-9.-_]`.
    #[error(
        "the trust domain holds {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar(char),
    /// The trust domain is longer than 255 bytes.
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("the path has an empty segment")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("the path has a relative segment ('.' or '..')")]
    DotSegment,
    /// A path segment holds a character outside `[A-Za-z0-9.-_]`.
    #[error("the path holds {0:?}; only letters, digits, '.', '-' and '_' are allowed")]
    PathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("the SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("a workload identity has the path /ns/<namespace>/sa/<service-account>")]
    NotWorkloadPath,
}

/// A SPIFFE trust domain, such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (no scheme).
    pub fn new(name: &str) -> Result<Self, IdError> {
        if name.is_empty() {
            return Err(IdError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(IdError::TrustDomainTooLong);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(IdError::TrustDomainChar(c));
        }
        Ok(Self(name.to_owned()))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID naming the trust domain itself, `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("spiffe://{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A SPIFFE ID: a trust domain and a path.
///
/// ```
/// use mesh_core::identity::SpiffeId;
///
/// let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/wordpress".parse()?;
/// assert_eq!(id.trust_domain().as_str(), "cluster.local");
/// assert_eq!(id.namespace(), Some("default"));
/// assert_eq!(id.service_account(), Some("wordpress"));
/// # Ok::<(), mesh_core::identity::IdError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg/seg...`.
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID by the standard's rules.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(IdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let trust_domain = TrustDomain::new(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(IdError::EmptySegment);
                }
                if seg == "." || seg == ".." {
                    return Err(IdError::DotSegment);
                }
                if let Some(c) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(IdError::PathChar(c));
                }
            }
        }
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// The Istio-shaped identity of a workload's service account.
    pub fn for_workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdError> {
        Self::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain the ID belongs to; it chooses the trust bundle.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn workload_parts(&self) -> Option<(&str, &str)> {
        let mut segs = self.path.strip_prefix('/')?.split('/');
        match (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace of an Istio-shaped workload identity.
    pub fn namespace(&self) -> Option<&str> {
        self.workload_parts().map(|(ns, _)| ns)
    }

    /// The service account of an Istio-shaped workload identity.
    pub fn service_account(&self) -> Option<&str> {
        self.workload_parts().map(|(_, sa)| sa)
    }

    /// Checks that the ID has the `/ns/<namespace>/sa/<service-account>` shape.
    pub fn require_workload(&self) -> Result<(), IdError> {
        self.workload_parts()
            .map(|_| ())
            .ok_or(IdError::NotWorkloadPath)
    }

    /// The principal as Istio's AuthorizationPolicy writes it: the ID without
    /// its `spiffe://` scheme, `cluster.local/ns/default/sa/wordpress`.
    pub fn principal(&self) -> String {
        format!("{}{}", self.trust_domain, self.path)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/mysql").unwrap();
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("mysql"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/mysql");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/mysql");
        assert!(id.require_workload().is_ok());
    }

    #[test]
    fn rejects_what_the_standard_rejects() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", IdError::Scheme),
            ("SPIFFE://cluster.local/x", IdError::Scheme),
            ("spiffe:///ns/a", IdError::EmptyTrustDomain),
            ("spiffe://Cluster.local/x", IdError::TrustDomainChar('C')),
            (
                "spiffe://cluster.local:8080/x",
                IdError::TrustDomainChar(':'),
            ),
            ("spiffe://user@td/x", IdError::TrustDomainChar('@')),
            ("spiffe://td/ns//sa", IdError::EmptySegment),
            ("spiffe://td/ns/a/", IdError::EmptySegment),
            ("spiffe://td/ns/../sa/b", IdError::DotSegment),
            ("spiffe://td/ns/./b", IdError::DotSegment),
            ("spiffe://td/ns/a?x=1", IdError::PathChar('?')),
            ("spiffe://td/ns/a#f", IdError::PathChar('#')),
            ("spiffe://td/ns/%41", IdError::PathChar('%')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(IdError::TooLong));
    }

    #[test]
    fn workload_shape_is_checked_separately() {
        let id = SpiffeId::parse("spiffe://td/some/other/path").unwrap();
        assert_eq!(id.namespace(), None);
        assert_eq!(id.require_workload(), Err(IdError::NotWorkloadPath));
        let bare = SpiffeId::parse("spiffe://td").unwrap();
        assert_eq!(bare.path(), "");
    }
}
