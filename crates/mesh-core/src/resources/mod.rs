//! The Istio resources this mesh reads, typed as Istio's own APIs define them,
//! and the resource set a configuration source produces.

pub mod common;
pub mod networking;
pub mod security;
pub mod telemetry;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

pub use common::{Duration, Labels, ObjectMeta, Percent, StringMatch, WorkloadSelector};

use crate::meshconfig::MeshConfig;

/// Resource kinds the mesh understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` Gateway.
    Gateway,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `networking.istio.io` Sidecar.
    Sidecar,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` RequestAuthentication.
    RequestAuthentication,
    /// Legacy `authentication.istio.io/v1alpha1` MeshPolicy.
    MeshPolicy,
    /// Legacy `authentication.istio.io/v1alpha1` Policy.
    Policy,
    /// The mesh's own settings document.
    MeshConfig,
    /// `telemetry.istio.io` Telemetry.
    Telemetry,
}

impl Kind {
    /// The kind's name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::Gateway => "Gateway",
            Self::ServiceEntry => "ServiceEntry",
            Self::WorkloadEntry => "WorkloadEntry",
            Self::Sidecar => "Sidecar",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::RequestAuthentication => "RequestAuthentication",
            Self::MeshPolicy => "MeshPolicy",
            Self::Policy => "Policy",
            Self::MeshConfig => "MeshConfig",
            Self::Telemetry => "Telemetry",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a document came from: a file, the document's 1-based position in
/// it (empty documents are not counted), and for an item of a `List`
/// document, the item's position in `items`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based document number within the file.
    pub document: usize,
    /// 1-based item number within a `List` document; `None` for a document
    /// of its own. (`u32` keeps [`ConfigError`](crate::error::ConfigError)
    /// small enough to return by value.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
}

/// The scheme of an origin that is one object of an API rather than a file
/// (`k8s:/apis/networking.istio.io/v1/namespaces/default/virtualservices/web`):
/// it has no documents, so none is named.
pub const API_ORIGIN_SCHEME: &str = "k8s:";

impl Origin {
    /// Whether this is an API object's path rather than a file's.
    pub fn is_api_object(&self) -> bool {
        self.file
            .to_str()
            .is_some_and(|f| f.starts_with(API_ORIGIN_SCHEME))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_api_object() {
            return write!(f, "{}", self.file.display());
        }
        write!(f, "{} (document {}", self.file.display(), self.document)?;
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        f.write_str(")")
    }
}

/// Names one resource: kind, namespace, name and origin. Every decision in a
/// snapshot points back to the resource that made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceRef {
    /// The kind.
    pub kind: Kind,
    /// The namespace (the root namespace for MeshPolicy).
    pub namespace: String,
    /// The name.
    pub name: String,
    /// Where it was read.
    pub origin: Origin,
}

impl ResourceRef {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A loaded resource: where it came from, its metadata and its spec.
#[derive(Debug, Clone)]
pub struct Item<T> {
    /// Identity and origin.
    pub source: ResourceRef,
    /// The `apiVersion` as written.
    pub api_version: String,
    /// Labels and annotations of the resource itself.
    pub meta: ObjectMeta,
    /// The spec.
    pub spec: T,
    /// The document as written, when the loader was asked to keep it
    /// ([`crate::load::load_path_keeping_documents`]): what a control
    /// plane sends, so a data plane reads and validates the user's own
    /// document, not a re-serialization of it.
    pub raw: Option<Arc<serde_json::Value>>,
}

impl<T> Item<T> {
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.source.namespace
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.source.name
    }
}

/// A document of a kind the mesh does not configure itself from (a
/// Deployment, a Service...), listed so the user sees it was not used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Where it was read.
    pub origin: Origin,
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Its `metadata.name`, if any.
    pub name: Option<String>,
}

/// Everything a configuration source produced: the mesh settings and the
/// Istio resources, by kind, in the order they were read.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Mesh-level settings (defaults when no MeshConfig document was given).
    pub mesh: MeshConfig,
    /// The MeshConfig document as written, when one was given and the
    /// loader kept documents (see [`Item::raw`]).
    pub mesh_raw: Option<Arc<serde_json::Value>>,
    /// VirtualServices.
    pub virtual_services: Vec<Item<networking::VirtualService>>,
    /// DestinationRules.
    pub destination_rules: Vec<Item<networking::DestinationRule>>,
    /// Gateways.
    pub gateways: Vec<Item<networking::Gateway>>,
    /// ServiceEntries.
    pub service_entries: Vec<Item<networking::ServiceEntry>>,
    /// WorkloadEntries.
    pub workload_entries: Vec<Item<networking::WorkloadEntry>>,
    /// Sidecars: what the sidecars of selected workloads see.
    pub sidecars: Vec<Item<networking::Sidecar>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Item<security::PeerAuthentication>>,
    /// Legacy MeshPolicy and Policy resources.
    pub legacy_policies: Vec<Item<security::LegacyPolicy>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Item<security::AuthorizationPolicy>>,
    /// RequestAuthentications: the JWTs workloads accept.
    pub request_authentications: Vec<Item<security::RequestAuthentication>>,
    /// Telemetries: metrics, access logging and trace sampling per
    /// workload ([`crate::telemetry`]).
    pub telemetries: Vec<Item<telemetry::Telemetry>>,
    /// Documents of kinds the mesh does not read.
    pub skipped: Vec<Skipped>,
    /// The namespace these are the view of ([`crate::visibility::view`]);
    /// `None` for the whole mesh. The compile reads it for the precedence
    /// of DestinationRules.
    pub view: Option<String>,
}
