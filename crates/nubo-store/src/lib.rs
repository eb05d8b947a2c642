//! The state store: every artifact as a JSON document keyed by (tenant, kind, id), with the
//! references between documents, behind the small [`Store`] trait.
//!
//! The store knows nothing of artifact shapes: kinds are strings, bodies are JSON. It enforces
//! what must hold across concurrent writers, inside one transaction per call: ids are unique
//! within a tenant and kind, a document can only reference existing documents, and a referenced
//! document cannot be deleted. A crash in the middle of a call leaves the old state or the new
//! one, never a mix.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

#[cfg(feature = "conformance")]
#[allow(clippy::unwrap_used, clippy::panic)]
pub mod conformance;
mod sqlite;

pub use sqlite::SqliteStore;

/// Identifies a document within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Key {
    /// Kind name (e.g. `cartridge`).
    pub kind: String,
    /// Id within the kind.
    pub id: String,
}

impl Key {
    /// A key.
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Key {
            kind: kind.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.kind, self.id)
    }
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Owning tenant.
    pub tenant: i64,
    /// Kind and id.
    pub key: Key,
    /// The document.
    pub body: Value,
    /// 1 on creation, +1 on each update.
    pub version: i64,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

/// A document to write, with the documents it references (same tenant).
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Owning tenant.
    pub tenant: i64,
    /// Kind and id.
    pub key: Key,
    /// The document.
    pub body: Value,
    /// Documents this one names; each must exist, and cannot be deleted while this one does.
    pub refs: Vec<Key>,
}

/// What can go wrong in a store call; callers act on the variant.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such document.
    #[error("{0} does not exist")]
    NotFound(Key),
    /// A document with this key exists already.
    #[error("{0} already exists")]
    Conflict(Key),
    /// The document is referenced by others.
    #[error("{key} is in use by {}", by.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "))]
    InUse {
        /// The document that was to be deleted.
        key: Key,
        /// Who references it.
        by: Vec<Key>,
    },
    /// A referenced document does not exist.
    #[error("{0} does not exist (referenced)")]
    MissingReference(Key),
    /// The backend cannot be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored document could not be read back.
    #[error("corrupt document: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// The state store.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// One document.
    async fn get(&self, tenant: i64, key: &Key) -> Result<Option<Record>, StoreError>;
    /// Every document of a kind in a tenant, ordered by id.
    async fn list(&self, tenant: i64, kind: &str) -> Result<Vec<Record>, StoreError>;
    /// Creates a document: `Conflict` if it exists, `MissingReference` if a reference does not.
    async fn create(&self, write: Write) -> Result<Record, StoreError>;
    /// Replaces a document and its references: `NotFound` if it does not exist.
    async fn update(&self, write: Write) -> Result<Record, StoreError>;
    /// Deletes a document: `NotFound`, or `InUse` naming who references it.
    async fn delete(&self, tenant: i64, key: &Key) -> Result<(), StoreError>;
    /// Who references a document.
    async fn referrers(&self, tenant: i64, key: &Key) -> Result<Vec<Key>, StoreError>;
    /// A short name for logs and metrics (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// Replaces a document, creating it when it does not exist yet.
    async fn upsert(&self, write: Write) -> Result<Record, StoreError> {
        match self.update(write.clone()).await {
            Err(StoreError::NotFound(_)) => self.create(write).await,
            other => other,
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
