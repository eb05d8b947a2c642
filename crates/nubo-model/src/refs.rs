//! Cross-references between artifacts, checked against a [`Catalog`] of what already exists.

use std::collections::HashMap;

use serde_json::Value;

use crate::artifacts::{Artifact, Kind};
use crate::error::Problems;

/// One artifact naming another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Kind of the named artifact.
    pub kind: Kind,
    /// Its id.
    pub id: String,
    /// The field of the referring artifact that names it.
    pub field: String,
}

impl Reference {
    /// A reference to `kind`/`id` from `field`.
    pub fn new(kind: Kind, id: &str, field: impl Into<String>) -> Self {
        Reference {
            kind,
            id: id.to_owned(),
            field: field.into(),
        }
    }
}

/// What a validation may look at: the artifacts an artifact references, and the platform's
/// IaaS providers. Filled by the caller (the manager) from the store; pure here.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// IaaS providers available on this platform (`local`, `mock`, ...).
    pub providers: Vec<String>,
    entries: HashMap<(Kind, String), Value>,
}

impl Catalog {
    /// An empty catalog with these providers.
    pub fn new(providers: Vec<String>) -> Self {
        Catalog {
            providers,
            entries: HashMap::new(),
        }
    }

    /// Adds an artifact's stored JSON.
    pub fn insert(&mut self, kind: Kind, id: &str, body: Value) {
        self.entries.insert((kind, id.to_owned()), body);
    }

    /// Whether `kind`/`id` exists.
    pub fn contains(&self, kind: Kind, id: &str) -> bool {
        self.entries.contains_key(&(kind, id.to_owned()))
    }

    /// The typed artifact, when present and well formed.
    pub fn get<T: Artifact>(&self, id: &str) -> Option<T> {
        self.entries
            .get(&(T::KIND, id.to_owned()))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Records a problem for every reference that does not exist.
    pub fn check_exist(&self, refs: &[Reference], p: &mut Problems) {
        for r in refs {
            if !self.contains(r.kind, &r.id) {
                p.add(
                    &r.field,
                    format!("{} `{}` does not exist: add it first", r.kind.label(), r.id),
                );
            }
        }
    }
}
