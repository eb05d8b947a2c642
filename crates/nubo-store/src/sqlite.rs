//! The embedded default: SQLite in WAL mode with full synchronous commits.
//!
//! Writers of this process take turns on a mutex; every write transaction starts with
//! `BEGIN IMMEDIATE`, so that a writer in another process (or another handle on the file) waits
//! for the write lock (up to the busy timeout) instead of failing when its snapshot is stale.
//!
//! Leases are judged by the local clock: every process that opens the file runs on this host.
//! Acquiring, releasing and fenced writes run under the write lock, so a takeover and a fenced
//! write never interleave. Should the host's clock be stepped back, a running term lasts that
//! much longer (never less).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Mutex;

use crate::lease::{LeaseRow, token_from_db, token_to_db};
use crate::{
    Fence, JournalEntry, Key, Lease, Record, Ref, Store, StoreError, Write, now_rfc3339,
    now_unix_ms,
};

/// Schema migrations, applied in order; the applied version is kept in `nubo_schema`.
const MIGRATIONS: &[&str] = &[
    // 1: documents and their references.
    r#"
CREATE TABLE documents (
    tenant_id  INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, kind, id)
);
CREATE TABLE document_refs (
    tenant_id INTEGER NOT NULL,
    from_kind TEXT    NOT NULL,
    from_id   TEXT    NOT NULL,
    to_kind   TEXT    NOT NULL,
    to_id     TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, from_kind, from_id, to_kind, to_id)
);
CREATE INDEX document_refs_to ON document_refs (tenant_id, to_kind, to_id);
"#,
    // 2: leases (see `crate::lease`); a row per name, kept for good so that tokens never repeat.
    r#"
CREATE TABLE leases (
    name          TEXT    NOT NULL PRIMARY KEY,
    holder        TEXT    NOT NULL,
    token         INTEGER NOT NULL CHECK (token >= 0),
    expires_at_ms INTEGER NOT NULL
);
"#,
    // 3: journals (see `crate::journal`): entries, the last sequence number per stream, and one
    // snapshot per stream.
    r#"
CREATE TABLE journal_streams (
    stream   TEXT    NOT NULL PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE journal_entries (
    stream TEXT    NOT NULL,
    seq    INTEGER NOT NULL,
    body   TEXT    NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE journal_snapshots (
    stream TEXT    NOT NULL PRIMARY KEY,
    seq    INTEGER NOT NULL,
    body   TEXT    NOT NULL
);
"#,
    // 4: references across tenants (a tenant's definition naming one of the super tenant's
    // shared definitions): the named document's tenant.
    r#"
ALTER TABLE document_refs ADD COLUMN to_tenant_id INTEGER;
UPDATE document_refs SET to_tenant_id = tenant_id;
DROP INDEX document_refs_to;
CREATE INDEX document_refs_to ON document_refs (to_tenant_id, to_kind, to_id);
"#,
];

/// Journal entries per `INSERT` (3 parameters each, well under SQLite's limit of 32,766).
const JOURNAL_ROWS_PER_INSERT: usize = 1_000;

/// SQLite store under a file.
pub struct SqliteStore {
    pool: SqlitePool,
    /// Serializes writers of this process, so that read-then-write transactions never race.
    write: Mutex<()>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        let store = SqliteStore {
            pool,
            write: Mutex::new(()),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS nubo_schema (version INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM nubo_schema")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version <= current {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO nubo_schema (version) VALUES (?)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "store migration applied");
        }
        if current > MIGRATIONS.len() as i64 {
            return Err(StoreError::Unavailable(format!(
                "the database schema is version {current}, newer than this binary knows ({}): upgrade nubo",
                MIGRATIONS.len()
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Closes the pool (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn record(tenant: i64, row: &sqlx::sqlite::SqliteRow) -> Result<Record, StoreError> {
    let body: String = row.try_get("body")?;
    Ok(Record {
        tenant,
        key: Key::new(
            row.try_get::<String, _>("kind")?,
            row.try_get::<String, _>("id")?,
        ),
        body: serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn check_refs(tx: &mut sqlx::SqliteConnection, w: &Write) -> Result<(), StoreError> {
    for r in &w.refs {
        let found =
            sqlx::query("SELECT 1 FROM documents WHERE tenant_id = ? AND kind = ? AND id = ?")
                .bind(r.tenant)
                .bind(&r.key.kind)
                .bind(&r.key.id)
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Err(StoreError::MissingReference(r.clone()));
        }
    }
    Ok(())
}

async fn write_refs(tx: &mut sqlx::SqliteConnection, w: &Write) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM document_refs WHERE tenant_id = ? AND from_kind = ? AND from_id = ?")
        .bind(w.tenant)
        .bind(&w.key.kind)
        .bind(&w.key.id)
        .execute(&mut *tx)
        .await?;
    for r in &w.refs {
        sqlx::query(
            "INSERT OR IGNORE INTO document_refs (tenant_id, from_kind, from_id, to_tenant_id, to_kind, to_id) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(w.tenant)
        .bind(&w.key.kind)
        .bind(&w.key.id)
        .bind(r.tenant)
        .bind(&r.key.kind)
        .bind(&r.key.id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Inserts a document that does not exist yet, with its references.
async fn insert_in(tx: &mut sqlx::SqliteConnection, w: Write) -> Result<Record, StoreError> {
    check_refs(tx, &w).await?;
    let now = now_rfc3339();
    sqlx::query(
        "INSERT INTO documents (tenant_id, kind, id, body, version, created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?)",
    )
    .bind(w.tenant)
    .bind(&w.key.kind)
    .bind(&w.key.id)
    .bind(w.body.to_string())
    .bind(&now)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    write_refs(tx, &w).await?;
    Ok(Record {
        tenant: w.tenant,
        key: w.key,
        body: w.body,
        version: 1,
        created_at: now.clone(),
        updated_at: now,
    })
}

/// Replaces the existing document `old` and its references.
async fn update_in(
    tx: &mut sqlx::SqliteConnection,
    w: Write,
    old: Record,
) -> Result<Record, StoreError> {
    check_refs(tx, &w).await?;
    let now = now_rfc3339();
    sqlx::query(
        "UPDATE documents SET body = ?, version = version + 1, updated_at = ? WHERE tenant_id = ? AND kind = ? AND id = ?",
    )
    .bind(w.body.to_string())
    .bind(&now)
    .bind(w.tenant)
    .bind(&w.key.kind)
    .bind(&w.key.id)
    .execute(&mut *tx)
    .await?;
    write_refs(tx, &w).await?;
    Ok(Record {
        tenant: w.tenant,
        key: w.key,
        body: w.body,
        version: old.version + 1,
        created_at: old.created_at,
        updated_at: now,
    })
}

/// Refuses the transaction's write unless `fence`'s lease is held with its token.
async fn check_fence(
    conn: &mut sqlx::SqliteConnection,
    fence: Option<Fence<'_>>,
) -> Result<(), StoreError> {
    let Some(f) = fence else { return Ok(()) };
    let row = lease_row(conn, f.lease).await?;
    if row.is_some_and(|r| r.admits(f.token, now_unix_ms())) {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            lease: f.lease.to_owned(),
            token: f.token,
        })
    }
}

/// The last sequence number of a journal stream (0 before any entry).
async fn last_seq(conn: &mut sqlx::SqliteConnection, stream: &str) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT last_seq FROM journal_streams WHERE stream = ?")
        .bind(stream)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => r.try_get("last_seq")?,
        None => 0,
    })
}

async fn set_last_seq(
    conn: &mut sqlx::SqliteConnection,
    stream: &str,
    last: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO journal_streams (stream, last_seq) VALUES (?, ?) \
         ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
    )
    .bind(stream)
    .bind(last)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The stored state of the lease `name`, if it was ever asked for.
async fn lease_row(
    conn: &mut sqlx::SqliteConnection,
    name: &str,
) -> Result<Option<LeaseRow>, StoreError> {
    let row = sqlx::query("SELECT holder, token, expires_at_ms FROM leases WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| {
        Ok(LeaseRow {
            holder: r.try_get("holder")?,
            token: token_from_db(r.try_get("token")?)?,
            expires_at_ms: r.try_get("expires_at_ms")?,
        })
    })
    .transpose()
}

async fn fetch(
    conn: &mut sqlx::SqliteConnection,
    tenant: i64,
    key: &Key,
) -> Result<Option<Record>, StoreError> {
    let row = sqlx::query(
        "SELECT kind, id, body, version, created_at, updated_at FROM documents WHERE tenant_id = ? AND kind = ? AND id = ?",
    )
    .bind(tenant)
    .bind(&key.kind)
    .bind(&key.id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| record(tenant, &r)).transpose()
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, tenant: i64, key: &Key) -> Result<Option<Record>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch(&mut conn, tenant, key).await
    }

    async fn version(&self, tenant: i64, key: &Key) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT version FROM documents WHERE tenant_id = ? AND kind = ? AND id = ?",
        )
        .bind(tenant)
        .bind(&key.kind)
        .bind(&key.id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get::<i64, _>("version")))
    }

    async fn list(&self, tenant: i64, kind: &str) -> Result<Vec<Record>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, id, body, version, created_at, updated_at FROM documents WHERE tenant_id = ? AND kind = ? ORDER BY id",
        )
        .bind(tenant)
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| record(tenant, r)).collect()
    }

    async fn create(&self, w: Write) -> Result<Record, StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if fetch(&mut tx, w.tenant, &w.key).await?.is_some() {
            return Err(StoreError::Conflict(w.key));
        }
        let record = insert_in(&mut tx, w).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn update(&self, w: Write) -> Result<Record, StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(old) = fetch(&mut tx, w.tenant, &w.key).await? else {
            return Err(StoreError::NotFound(w.key));
        };
        let record = update_in(&mut tx, w, old).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn update_if(&self, w: Write, expected_version: i64) -> Result<Record, StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(old) = fetch(&mut tx, w.tenant, &w.key).await? else {
            return Err(StoreError::NotFound(w.key));
        };
        if old.version != expected_version {
            return Err(StoreError::Stale {
                key: w.key,
                expected: expected_version,
                found: old.version,
            });
        }
        let record = update_in(&mut tx, w, old).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete(&self, tenant: i64, key: &Key) -> Result<(), StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if fetch(&mut tx, tenant, key).await?.is_none() {
            return Err(StoreError::NotFound(key.clone()));
        }
        let by = referrers_in(&mut tx, tenant, key).await?;
        if !by.is_empty() {
            return Err(StoreError::InUse {
                key: key.clone(),
                by,
            });
        }
        sqlx::query("DELETE FROM documents WHERE tenant_id = ? AND kind = ? AND id = ?")
            .bind(tenant)
            .bind(&key.kind)
            .bind(&key.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM document_refs WHERE tenant_id = ? AND from_kind = ? AND from_id = ?",
        )
        .bind(tenant)
        .bind(&key.kind)
        .bind(&key.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn referrers(&self, tenant: i64, key: &Key) -> Result<Vec<Ref>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        referrers_in(&mut conn, tenant, key).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        // While another holder's term runs, a plain read answers, without the write lock.
        let current = lease_row(&mut *self.pool.acquire().await?, name).await?;
        if let Some(row) = current
            && row.acquire(holder, now_unix_ms(), ttl)?.is_none()
        {
            return Ok(None);
        }
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let before = lease_row(&mut tx, name).await?.unwrap_or(LeaseRow::UNHELD);
        let now = now_unix_ms();
        let Some(after) = before.acquire(holder, now, ttl)? else {
            return Ok(None);
        };
        let token = token_to_db(after.token).ok_or_else(|| {
            StoreError::Corrupt(format!("lease token {} out of range", after.token))
        })?;
        sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at_ms) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, token = excluded.token, \
             expires_at_ms = excluded.expires_at_ms",
        )
        .bind(name)
        .bind(&after.holder)
        .bind(token)
        .bind(after.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(after.granted(name)))
    }

    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        token: u64,
    ) -> Result<bool, StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let Some(row) = lease_row(&mut tx, name).await? else {
            return Ok(false);
        };
        if !row.releasable_by(holder, token, now_unix_ms()) {
            return Ok(false);
        }
        sqlx::query("UPDATE leases SET expires_at_ms = 0 WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row = lease_row(&mut conn, name).await?;
        Ok(row.and_then(|r| r.lease(name, now_unix_ms())))
    }

    async fn upsert_fenced(
        &self,
        w: Write,
        lease_name: &str,
        token: u64,
    ) -> Result<Record, StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = lease_row(&mut tx, lease_name).await?;
        if !row.is_some_and(|r| r.admits(token, now_unix_ms())) {
            return Err(StoreError::Fenced {
                lease: lease_name.to_owned(),
                token,
            });
        }
        let record = match fetch(&mut tx, w.tenant, &w.key).await? {
            Some(old) => update_in(&mut tx, w, old).await?,
            None => insert_in(&mut tx, w).await?,
        };
        tx.commit().await?;
        Ok(record)
    }

    async fn journal_append(
        &self,
        stream: &str,
        bodies: &[String],
        fence: Option<Fence<'_>>,
    ) -> Result<i64, StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        check_fence(&mut tx, fence).await?;
        let mut last = last_seq(&mut tx, stream).await?;
        // Many rows per statement: one round through the driver per chunk, not per entry.
        for chunk in bodies.chunks(JOURNAL_ROWS_PER_INSERT) {
            let mut sql = String::from("INSERT INTO journal_entries (stream, seq, body) VALUES ");
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "(?, ?, ?)" } else { ", (?, ?, ?)" });
            }
            let mut q = sqlx::query(&sql);
            for body in chunk {
                last += 1;
                q = q.bind(stream).bind(last).bind(body);
            }
            q.execute(&mut *tx).await?;
        }
        set_last_seq(&mut tx, stream, last).await?;
        tx.commit().await?;
        Ok(last)
    }

    async fn journal_read(
        &self,
        stream: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, body FROM journal_entries WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(stream)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JournalEntry {
                    seq: r.try_get("seq")?,
                    body: r.try_get("body")?,
                })
            })
            .collect()
    }

    async fn journal_last(&self, stream: &str) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        last_seq(&mut conn, stream).await
    }

    async fn snapshot_write(
        &self,
        stream: &str,
        seq: i64,
        body: &str,
        fence: Option<Fence<'_>>,
    ) -> Result<(), StoreError> {
        let _guard = self.write.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        check_fence(&mut tx, fence).await?;
        sqlx::query(
            "INSERT INTO journal_snapshots (stream, seq, body) VALUES (?, ?, ?) \
             ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq, body = excluded.body",
        )
        .bind(stream)
        .bind(seq)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM journal_entries WHERE stream = ? AND seq <= ?")
            .bind(stream)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        let last = last_seq(&mut tx, stream).await?;
        set_last_seq(&mut tx, stream, last.max(seq)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn snapshot_read(&self, stream: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, body FROM journal_snapshots WHERE stream = ?")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("body")?)))
            .transpose()
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

async fn referrers_in(
    conn: &mut sqlx::SqliteConnection,
    tenant: i64,
    key: &Key,
) -> Result<Vec<Ref>, StoreError> {
    let rows = sqlx::query(
        "SELECT tenant_id, from_kind, from_id FROM document_refs WHERE to_tenant_id = ? AND to_kind = ? AND to_id = ? ORDER BY tenant_id, from_kind, from_id",
    )
    .bind(tenant)
    .bind(&key.kind)
    .bind(&key.id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Ref::new(
                r.try_get::<i64, _>(0)?,
                Key::new(r.try_get::<String, _>(1)?, r.try_get::<String, _>(2)?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("nubo.db"))
            .await
            .unwrap();
        crate::conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn two_handles_on_one_file_pass_the_shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nubo.db");
        let a = SqliteStore::open(&path).await.unwrap();
        let b = SqliteStore::open(&path).await.unwrap();
        crate::conformance::run_shared(&a, &b).await;
    }

    #[tokio::test]
    async fn leases_pass_the_reopen_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nubo.db");
        crate::conformance::run_reopened(|| async {
            Box::new(SqliteStore::open(&path).await.unwrap()) as Box<dyn Store>
        })
        .await;
    }

    /// A database as the release before leases left it (schema 1) gains them and keeps its
    /// documents.
    #[tokio::test]
    async fn a_schema_1_database_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nubo.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .unwrap()
            .create_if_missing(true);
        let old = SqlitePoolOptions::new().connect_with(opts).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE TABLE nubo_schema (version INTEGER NOT NULL); INSERT INTO nubo_schema VALUES (1); {}
             INSERT INTO documents VALUES (1, 'k', 'a', '{{\"x\": 1}}', 1, 't', 't');",
            MIGRATIONS[0]
        ))
        .execute(&old)
        .await
        .unwrap();
        old.close().await;
        let store = SqliteStore::open(&path).await.unwrap();
        let got = store.get(1, &Key::new("k", "a")).await.unwrap().unwrap();
        assert_eq!(got.body, serde_json::json!({"x": 1}));
        let lease = store
            .acquire_lease("controller", "a", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.token, 1);
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM nubo_schema ORDER BY version")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
        store.close().await;
    }

    #[tokio::test]
    async fn reopening_keeps_documents_and_does_not_remigrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nubo.db");
        {
            let store = SqliteStore::open(&path).await.unwrap();
            store
                .create(Write {
                    tenant: 1,
                    key: Key::new("k", "a"),
                    body: serde_json::json!({"x": 1}),
                    refs: vec![],
                })
                .await
                .unwrap();
            store.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let got = store.get(1, &Key::new("k", "a")).await.unwrap().unwrap();
        assert_eq!(got.body, serde_json::json!({"x": 1}));
    }
}
