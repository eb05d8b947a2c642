//! The state store: every artifact as a JSON document keyed by (tenant, kind, id), with the
//! references between documents, behind the small [`Store`] trait.
//!
//! The store knows nothing of artifact shapes: kinds are strings, bodies are JSON. It enforces
//! what must hold across concurrent writers, inside one transaction per call: ids are unique
//! within a tenant and kind, a document can only reference existing documents, and a referenced
//! document cannot be deleted. A crash in the middle of a call leaves the old state or the new
//! one, never a mix.
//!
//! The store also holds [`Lease`]s: named, expiring, fenced, for electing one leader among
//! several controllers (see [`lease`] for the design).
//!
//! Two implementations pass the same [`conformance`] suite: [`SqliteStore`], embedded, for one
//! server per data directory, and [`PostgresStore`] (feature `postgres`), which several processes
//! may share. [`StoreLocation`] is the `--store` URL that chooses one; [`open`] opens it.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

#[cfg(feature = "conformance")]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance;
pub mod journal;
pub mod lease;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

pub use journal::{Fence, JournalEntry};
pub use lease::Lease;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
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

/// A document named by another one: in the writer's own tenant, or in another tenant (a tenant's
/// definition naming one of the super tenant's shared definitions).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ref {
    /// The tenant the named document belongs to.
    pub tenant: i64,
    /// Its kind and id.
    pub key: Key,
}

impl Ref {
    /// A reference to `key` in `tenant`.
    pub fn new(tenant: i64, key: Key) -> Self {
        Ref { tenant, key }
    }
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (tenant {})", self.key, self.tenant)
    }
}

/// A document to write, with the documents it references.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Owning tenant.
    pub tenant: i64,
    /// Kind and id.
    pub key: Key,
    /// The document.
    pub body: Value,
    /// Documents this one names (in its own tenant or another); each must exist, and cannot be
    /// deleted while this one does.
    pub refs: Vec<Ref>,
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
        /// Who references it (any tenant).
        by: Vec<Ref>,
    },
    /// A referenced document does not exist.
    #[error("{0} does not exist (referenced)")]
    MissingReference(Ref),
    /// The backend cannot be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored document could not be read back.
    #[error("corrupt document: {0}")]
    Corrupt(String),
    /// A conditional update was refused, and nothing written: the document changed since it was
    /// read (optimistic concurrency: read again, apply the change again).
    #[error("{key} changed meanwhile (version {found}, expected {expected}): nothing was written")]
    Stale {
        /// The document.
        key: Key,
        /// The version the writer read.
        expected: i64,
        /// The version stored now.
        found: i64,
    },
    /// A fenced write was refused, and nothing written: the lease is no longer held with this
    /// token (another holder took over, or it expired). The writer is no longer the leader.
    #[error(
        "fenced off: lease `{lease}` is no longer held with token {token} (another holder took over, or it expired): nothing was written"
    )]
    Fenced {
        /// The lease the write was fenced by.
        lease: String,
        /// The writer's token.
        token: u64,
    },
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
    /// A document's version (1 on creation, +1 on each change) without its body; `None` when it
    /// does not exist. Lets a reader of a large document skip it while it has not changed.
    async fn version(&self, tenant: i64, key: &Key) -> Result<Option<i64>, StoreError>;
    /// Every document of a kind in a tenant, ordered by id.
    async fn list(&self, tenant: i64, kind: &str) -> Result<Vec<Record>, StoreError>;
    /// Creates a document: `Conflict` if it exists, `MissingReference` if a reference does not.
    async fn create(&self, write: Write) -> Result<Record, StoreError>;
    /// Replaces a document and its references: `NotFound` if it does not exist.
    async fn update(&self, write: Write) -> Result<Record, StoreError>;
    /// Replaces a document only if its version is still `expected_version` (optimistic
    /// concurrency): `Stale` otherwise, and nothing written.
    async fn update_if(&self, write: Write, expected_version: i64) -> Result<Record, StoreError>;
    /// Deletes a document: `NotFound`, or `InUse` naming who references it.
    async fn delete(&self, tenant: i64, key: &Key) -> Result<(), StoreError>;
    /// Who references a document, in any tenant (ordered by tenant, kind, id).
    async fn referrers(&self, tenant: i64, key: &Key) -> Result<Vec<Ref>, StoreError>;
    /// A short name for logs and metrics (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// Closes the connections (the store is not used afterwards).
    async fn close(&self) {}
    /// Takes or renews the lease `name` for `holder`, until `ttl` from now on the store's clock,
    /// in one transaction. `None` while another holder's term runs. A renewal (the holder's
    /// term still running) keeps the token; a new term (the name free, released or expired)
    /// gets a token greater than every one issued for `name` before. See [`lease`].
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError>;
    /// Ends the term of `holder` with `token` at once, so that another holder can take over
    /// without waiting for the TTL. `false` when that term was over already (expired, released
    /// or taken over): then nothing changes.
    async fn release_lease(&self, name: &str, holder: &str, token: u64)
    -> Result<bool, StoreError>;
    /// Who holds `name` now: `None` when free, released or expired.
    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError>;
    /// [`Store::upsert`], only while `lease_name` is held with exactly `token` (not expired),
    /// checked in the write's transaction; otherwise [`StoreError::Fenced`] and nothing is
    /// written. This keeps a deposed leader from overwriting its successor's state.
    async fn upsert_fenced(
        &self,
        write: Write,
        lease_name: &str,
        token: u64,
    ) -> Result<Record, StoreError>;
    /// Appends `bodies` to the journal `stream`, in order, in one transaction; returns the
    /// sequence number of the last (each entry gets the next number: numbers only grow, even
    /// across snapshots and trims). With `fence`, only while that lease is held with that token
    /// (else [`StoreError::Fenced`], and nothing is written). See [`journal`].
    async fn journal_append(
        &self,
        stream: &str,
        bodies: &[String],
        fence: Option<Fence<'_>>,
    ) -> Result<i64, StoreError>;
    /// Up to `limit` entries of `stream` after sequence number `after`, in order.
    async fn journal_read(
        &self,
        stream: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<JournalEntry>, StoreError>;
    /// The sequence number of the last entry appended to `stream` (0 before any): cheap, for a
    /// reader that polls.
    async fn journal_last(&self, stream: &str) -> Result<i64, StoreError>;
    /// Replaces the snapshot of `stream` by `body`, the state after entry `seq`, and drops the
    /// entries up to `seq`, in one transaction (fenced as [`Store::journal_append`]).
    async fn snapshot_write(
        &self,
        stream: &str,
        seq: i64,
        body: &str,
        fence: Option<Fence<'_>>,
    ) -> Result<(), StoreError>;
    /// The snapshot of `stream` and the sequence number it is the state after, if any.
    async fn snapshot_read(&self, stream: &str) -> Result<Option<(i64, String)>, StoreError>;
    /// Replaces a document, creating it when it does not exist yet.
    async fn upsert(&self, write: Write) -> Result<Record, StoreError> {
        match self.update(write.clone()).await {
            Err(StoreError::NotFound(_)) => self.create(write).await,
            other => other,
        }
    }
}

/// The local clock in milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Where the state lives, as `--store` names it: `sqlite://PATH` or `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite database file (created when missing).
    Sqlite(PathBuf),
    /// A PostgreSQL database URL (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`).
    Postgres(String),
}

/// A `--store` value that names no backend.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a store URL: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
)]
pub struct InvalidLocation(String);

impl FromStr for StoreLocation {
    type Err = InvalidLocation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(InvalidLocation(s.to_owned()));
            }
            return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreLocation::Postgres(s.to_owned()));
        }
        Err(InvalidLocation(redact_url(s)))
    }
}

impl StoreLocation {
    /// The backend's short name (`sqlite`, `postgres`), as [`Store::backend`] gives it.
    pub fn backend(&self) -> &'static str {
        match self {
            StoreLocation::Sqlite(_) => "sqlite",
            StoreLocation::Postgres(_) => "postgres",
        }
    }
}

/// The location without its password, for logs and messages.
impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

/// Opens (creating and migrating as needed) the store at `location`.
pub async fn open(location: &StoreLocation) -> Result<Arc<dyn Store>, StoreError> {
    match location {
        StoreLocation::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path).await?)),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => Ok(Arc::new(PostgresStore::connect(url).await?)),
        #[cfg(not(feature = "postgres"))]
        StoreLocation::Postgres(_) => Err(StoreError::Unavailable(
            "this build has no PostgreSQL support (nubo-store's feature `postgres`)".into(),
        )),
    }
}

/// `url` with the password (in the user part or a `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user_info, host)) => match user_info.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{host}"),
                    None => authority.to_owned(),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => head.to_owned(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_locations_parse_and_hide_passwords() {
        let check = |input: &str, expect: Result<(&str, &str), ()>| {
            let got = input
                .parse::<StoreLocation>()
                .map(|l| (l.backend(), l.to_string()));
            match (got, expect) {
                (Ok((b, shown)), Ok((eb, es))) => {
                    assert_eq!((b, shown.as_str()), (eb, es), "{input}")
                }
                (Err(e), Err(())) => {
                    assert!(e.to_string().contains("sqlite://PATH"), "{e}");
                    assert!(!e.to_string().contains("secret"), "{e}");
                }
                (got, expect) => panic!("{input}: got {got:?}, expected {expect:?}"),
            }
        };
        check(
            "sqlite:///var/lib/nubo/nubo.db",
            Ok(("sqlite", "sqlite:///var/lib/nubo/nubo.db")),
        );
        check("sqlite://state.db", Ok(("sqlite", "sqlite://state.db")));
        check(
            "postgres://nubo@db:5432/nubo",
            Ok(("postgres", "postgres://nubo@db:5432/nubo")),
        );
        check(
            "postgres://nubo:secret@db:5432/nubo?sslmode=disable",
            Ok((
                "postgres",
                "postgres://nubo:***@db:5432/nubo?sslmode=disable",
            )),
        );
        check(
            "postgresql://db/nubo?user=nubo&password=secret",
            Ok(("postgres", "postgresql://db/nubo?user=nubo&password=***")),
        );
        check(
            "postgres://u:p@ss:secret@db/x",
            Ok(("postgres", "postgres://u:***@db/x")),
        );
        check("sqlite://", Err(()));
        check("mysql://root:secret@db/nubo", Err(()));
        check("/var/lib/nubo/nubo.db", Err(()));
    }
}
