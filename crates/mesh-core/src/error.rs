//! Configuration errors. Every message names the file, the document (and the
//! item, inside a `List`), the resource when it is known, and the field path
//! within it.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::resources::Origin;

/// One problem found while reading or validating configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based document within the file, when the problem is in one.
    pub document: Option<usize>,
    /// The 1-based item within a `List` document, when the problem is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    /// `Kind namespace/name`, when known.
    pub resource: Option<String>,
    /// The field path, `spec.http[0].route[1].weight`, when the problem is in
    /// one field.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// A problem with the file as a whole (unreadable, not YAML).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            document: None,
            item: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem in one field of one document.
    pub fn at(
        origin: &Origin,
        resource: Option<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let field = field.into();
        Self {
            file: origin.file.clone(),
            document: Some(origin.document),
            item: origin.item,
            resource,
            field: (!field.is_empty()).then_some(field),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        let api_object = self
            .file
            .to_str()
            .is_some_and(|f| f.starts_with(crate::resources::API_ORIGIN_SCHEME));
        if let Some(doc) = self.document.filter(|_| !api_object) {
            write!(f, ": document {doc}")?;
        }
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        if let Some(res) = &self.resource {
            write!(f, " ({res})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All the problems that made a configuration unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} configuration error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}
