//! PostgreSQL: the store several servers can share (`--store postgres://…`).
//!
//! # Concurrent writers
//!
//! Other processes may write the same database at any moment, so nothing here relies on an
//! in-process lock (as [`SqliteStore`](crate::SqliteStore) does). Each call is one transaction at
//! READ COMMITTED (each statement sees everything committed before it started) that takes row
//! locks in a fixed pattern, with constraints as the last word:
//!
//! - **create** inserts with `ON CONFLICT DO NOTHING`: of two creates of one key, the second waits
//!   for the first to commit, then inserts nothing and reports `Conflict`.
//! - every **referenced** document is locked `FOR KEY SHARE` before the references are written; a
//!   missing one is `MissingReference`. That lock conflicts only with a delete's `FOR UPDATE`, so
//!   creates and updates that reference one document never wait for each other.
//! - **update** locks its document `FOR NO KEY UPDATE` (concurrent updates of one document run one
//!   after the other, none is lost; referencing it stays possible meanwhile).
//! - **delete** locks its document `FOR UPDATE`, then reads the referrers: whoever had locked the
//!   document to reference it has committed by then, and nobody can start referencing it
//!   until the delete commits, so `InUse` is exact and a reference never dangles.
//! - foreign keys from `document_refs` to `documents` (both ends, tenant included) make a dangling
//!   or cross-tenant reference impossible to commit, whatever the code above does.
//!
//! Why row locks and not SERIALIZABLE: both are correct, but serializable transactions abort on
//! conflicts PostgreSQL only suspects (its predicate locks are coarse under load), so every call
//! would need retrying as a matter of course; row locks make the waits explicit and leave retries
//! for the rare real deadlock. Deadlocks (`40P01`), serialization failures (`40001`, should the
//! database force a stricter isolation) and a foreign key firing (`23503`) re-run the whole call,
//! a few times with backoff, so it reports what it then finds as a typed error.
//!
//! Leases (see [`crate::lease`]) are judged by the database server's clock (`clock_timestamp()`,
//! read after the lease row is locked), never the callers'. Acquiring and releasing lock the
//! lease row `FOR NO KEY UPDATE`; a fenced write locks it `FOR SHARE` before checking the token,
//! and keeps that lock until it commits, so a takeover waits for the fenced writes of the term
//! it ends, and the fenced writes that come after it see the new token.
//!
//! Bodies are stored as `json` (the text as written: key order and numbers kept, as in SQLite,
//! unlike `jsonb`); times as RFC 3339 text; lists and referrers are ordered bytewise
//! (`COLLATE "C"`), as SQLite orders, whatever the database's collation.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};

use crate::lease::{LeaseRow, token_from_db, token_to_db};
use crate::{Fence, JournalEntry, Key, Lease, Record, Ref, Store, StoreError, Write, now_rfc3339};

/// Schema migrations, applied in order; the applied version is kept in `nubo_schema`.
const MIGRATIONS: &[&str] = &[
    // 1: documents and their references.
    r#"
CREATE TABLE documents (
    tenant_id  BIGINT NOT NULL,
    kind       TEXT   NOT NULL,
    id         TEXT   NOT NULL,
    body       JSON   NOT NULL,
    version    BIGINT NOT NULL,
    created_at TEXT   NOT NULL,
    updated_at TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, kind, id)
);
CREATE TABLE document_refs (
    tenant_id BIGINT NOT NULL,
    from_kind TEXT   NOT NULL,
    from_id   TEXT   NOT NULL,
    to_kind   TEXT   NOT NULL,
    to_id     TEXT   NOT NULL,
    PRIMARY KEY (tenant_id, from_kind, from_id, to_kind, to_id),
    FOREIGN KEY (tenant_id, from_kind, from_id) REFERENCES documents (tenant_id, kind, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, to_kind, to_id) REFERENCES documents (tenant_id, kind, id)
);
CREATE INDEX document_refs_to ON document_refs (tenant_id, to_kind, to_id);
"#,
    // 2: leases (see `crate::lease`); a row per name, kept for good so that tokens never repeat.
    r#"
CREATE TABLE leases (
    name          TEXT   NOT NULL PRIMARY KEY,
    holder        TEXT   NOT NULL,
    token         BIGINT NOT NULL CHECK (token >= 0),
    expires_at_ms BIGINT NOT NULL
);
"#,
    // 3: journals (see `crate::journal`): entries, the last sequence number per stream, and one
    // snapshot per stream.
    r#"
CREATE TABLE journal_streams (
    stream   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
CREATE TABLE journal_entries (
    stream TEXT COLLATE "C" NOT NULL,
    seq    BIGINT NOT NULL,
    body   TEXT   NOT NULL,
    PRIMARY KEY (stream, seq)
);
CREATE TABLE journal_snapshots (
    stream TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    seq    BIGINT NOT NULL,
    body   TEXT   NOT NULL
);
"#,
    // 4: references across tenants (a tenant's definition naming one of the super tenant's
    // shared definitions): the named document's tenant, and the foreign key on it.
    r#"
ALTER TABLE document_refs ADD COLUMN to_tenant_id BIGINT;
UPDATE document_refs SET to_tenant_id = tenant_id;
ALTER TABLE document_refs ALTER COLUMN to_tenant_id SET NOT NULL;
ALTER TABLE document_refs DROP CONSTRAINT document_refs_tenant_id_to_kind_to_id_fkey;
ALTER TABLE document_refs ADD CONSTRAINT document_refs_to_fkey
    FOREIGN KEY (to_tenant_id, to_kind, to_id) REFERENCES documents (tenant_id, kind, id);
DROP INDEX document_refs_to;
CREATE INDEX document_refs_to ON document_refs (to_tenant_id, to_kind, to_id);
"#,
];

/// The advisory lock that serializes migrations of servers starting at once on one database.
const MIGRATION_LOCK: i64 = 0x6e75_626f_5f73_6368; // "nubo_sch"

/// How long connecting may take before the server gives up with an explanation.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often one call runs at most when it meets a deadlock or a serialization failure.
const ATTEMPTS: u32 = 8;

/// Connections per process.
const MAX_CONNECTIONS: u32 = 8;

/// PostgreSQL store.
pub struct PostgresStore {
    pool: PgPool,
}

/// Why one attempt of a call failed: an answer for the caller, or a database error that may be
/// worth another attempt.
enum Fail {
    Store(StoreError),
    Sql(sqlx::Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Sql(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`) and
    /// applies migrations. Errors say what to do next (start PostgreSQL, create the database, …).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "{} is not a valid PostgreSQL URL ({e}): the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE",
                    crate::redact_url(url)
                ))
            })?
            .application_name("nubo");
        // One connection first, so that a failure is reported as what it is rather than as the
        // pool's timeout, and so that migrations run once before the pool opens.
        let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, opts.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(explain_connect(&opts, e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "PostgreSQL at {} did not answer within {} s: check the host and port, and that a firewall lets the connection through",
                    where_(&opts),
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        migrate(&mut conn).await?;
        let _ = conn.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts.clone())
            .await
            .map_err(|e| explain_connect(&opts, e))?;
        Ok(PostgresStore { pool })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
    }

    /// Runs `op` (one transaction) until it succeeds, gives a typed answer, or fails in a way
    /// another attempt cannot fix.
    async fn retrying<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, Fail>> + Send,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Fail::Store(e)) => return Err(e),
                Err(Fail::Sql(e)) if attempt < ATTEMPTS && retryable(&e) => {
                    tracing::debug!(call = what, attempt, error = %e, "store transaction retried");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(Fail::Sql(e)) => return Err(e.into()),
            }
        }
    }

    async fn create_once(&self, w: &Write) -> Result<Record, Fail> {
        let mut tx = self.begin().await?;
        if exists(&mut tx, w.tenant, &w.key).await? {
            return Err(StoreError::Conflict(w.key.clone()).into());
        }
        lock_refs(&mut tx, w).await?;
        let now = now_rfc3339();
        let inserted = sqlx::query(
            "INSERT INTO documents (tenant_id, kind, id, body, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4::json, 1, $5, $5) ON CONFLICT DO NOTHING",
        )
        .bind(w.tenant)
        .bind(&w.key.kind)
        .bind(&w.key.id)
        .bind(w.body.to_string())
        .bind(&now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Created by another writer since the check above.
            return Err(StoreError::Conflict(w.key.clone()).into());
        }
        write_refs(&mut tx, w).await?;
        tx.commit().await?;
        Ok(Record {
            tenant: w.tenant,
            key: w.key.clone(),
            body: w.body.clone(),
            version: 1,
            created_at: now.clone(),
            updated_at: now,
        })
    }

    async fn update_once(&self, w: &Write, expected: Option<i64>) -> Result<Record, Fail> {
        let mut tx = self.begin().await?;
        let locked = sqlx::query(
            "SELECT version FROM documents WHERE tenant_id = $1 AND kind = $2 AND id = $3 FOR NO KEY UPDATE",
        )
        .bind(w.tenant)
        .bind(&w.key.kind)
        .bind(&w.key.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(locked) = locked else {
            return Err(StoreError::NotFound(w.key.clone()).into());
        };
        let found: i64 = locked.try_get("version")?;
        if let Some(expected) = expected
            && expected != found
        {
            return Err(StoreError::Stale {
                key: w.key.clone(),
                expected,
                found,
            }
            .into());
        }
        lock_refs(&mut tx, w).await?;
        let now = now_rfc3339();
        let row = sqlx::query(
            "UPDATE documents SET body = $1::json, version = version + 1, updated_at = $2 \
             WHERE tenant_id = $3 AND kind = $4 AND id = $5 RETURNING version, created_at",
        )
        .bind(w.body.to_string())
        .bind(&now)
        .bind(w.tenant)
        .bind(&w.key.kind)
        .bind(&w.key.id)
        .fetch_one(&mut *tx)
        .await?;
        write_refs(&mut tx, w).await?;
        tx.commit().await?;
        Ok(Record {
            tenant: w.tenant,
            key: w.key.clone(),
            body: w.body.clone(),
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: now,
        })
    }

    /// Refuses the transaction's write unless `fence`'s lease is held with its token (the lease
    /// row locked `FOR SHARE`, as for fenced upserts).
    async fn check_fence(tx: &mut PgConnection, fence: Option<Fence<'_>>) -> Result<(), Fail> {
        let Some(f) = fence else { return Ok(()) };
        let lease = locked_lease(tx, f.lease, "FOR SHARE").await?;
        if lease.is_some_and(|(row, now)| row.admits(f.token, now)) {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                lease: f.lease.to_owned(),
                token: f.token,
            }
            .into())
        }
    }

    /// The stream's counter row, locked (created at 0 when new), and its value.
    async fn locked_last_seq(tx: &mut PgConnection, stream: &str) -> Result<i64, Fail> {
        sqlx::query(
            "INSERT INTO journal_streams (stream, last_seq) VALUES ($1, 0) ON CONFLICT (stream) DO NOTHING",
        )
        .bind(stream)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT last_seq FROM journal_streams WHERE stream = $1 FOR UPDATE")
            .bind(stream)
            .fetch_one(&mut *tx)
            .await?;
        Ok(row.try_get("last_seq")?)
    }

    async fn journal_append_once(
        &self,
        stream: &str,
        bodies: &[String],
        fence: Option<Fence<'_>>,
    ) -> Result<i64, Fail> {
        let mut tx = self.begin().await?;
        Self::check_fence(&mut tx, fence).await?;
        let first = Self::locked_last_seq(&mut tx, stream).await? + 1;
        let last = first + bodies.len() as i64 - 1;
        if !bodies.is_empty() {
            sqlx::query(
                "INSERT INTO journal_entries (stream, seq, body) \
                 SELECT $1, $2 + n - 1, b FROM unnest($3::text[]) WITH ORDINALITY AS t(b, n)",
            )
            .bind(stream)
            .bind(first)
            .bind(bodies)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE journal_streams SET last_seq = $2 WHERE stream = $1")
                .bind(stream)
                .bind(last)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(last)
    }

    async fn snapshot_write_once(
        &self,
        stream: &str,
        seq: i64,
        body: &str,
        fence: Option<Fence<'_>>,
    ) -> Result<(), Fail> {
        let mut tx = self.begin().await?;
        Self::check_fence(&mut tx, fence).await?;
        let last = Self::locked_last_seq(&mut tx, stream).await?;
        sqlx::query(
            "INSERT INTO journal_snapshots (stream, seq, body) VALUES ($1, $2, $3) \
             ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq, body = excluded.body",
        )
        .bind(stream)
        .bind(seq)
        .bind(body)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM journal_entries WHERE stream = $1 AND seq <= $2")
            .bind(stream)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        if seq > last {
            sqlx::query("UPDATE journal_streams SET last_seq = $2 WHERE stream = $1")
                .bind(stream)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn acquire_lease_once(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, Fail> {
        // While another holder's term runs, a plain read answers: standbys that keep asking
        // never lock the row, so they never make the leader's fenced writes wait.
        let current = sqlx::query(LEASE_NOW)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        if let Some((row, now)) = current.as_ref().map(lease_row).transpose()?
            && row.acquire(holder, now, ttl)?.is_none()
        {
            return Ok(None);
        }
        let mut tx = self.begin().await?;
        // The row exists from the first request on, so that there is always one to lock; of two
        // first requests, the second waits for the first to commit and inserts nothing.
        sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at_ms) VALUES ($1, '', 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        let Some((before, now)) = locked_lease(&mut tx, name, "FOR NO KEY UPDATE").await? else {
            return Err(StoreError::Corrupt(format!("the row of lease `{name}` vanished")).into());
        };
        let Some(after) = before.acquire(holder, now, ttl)? else {
            return Ok(None);
        };
        let token = token_to_db(after.token).ok_or_else(|| {
            StoreError::Corrupt(format!("lease token {} out of range", after.token))
        })?;
        sqlx::query(
            "UPDATE leases SET holder = $2, token = $3, expires_at_ms = $4 WHERE name = $1",
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

    async fn release_lease_once(&self, name: &str, holder: &str, token: u64) -> Result<bool, Fail> {
        let mut tx = self.begin().await?;
        let Some((row, now)) = locked_lease(&mut tx, name, "FOR NO KEY UPDATE").await? else {
            return Ok(false);
        };
        if !row.releasable_by(holder, token, now) {
            return Ok(false);
        }
        sqlx::query("UPDATE leases SET expires_at_ms = 0 WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn upsert_fenced_once(
        &self,
        w: &Write,
        lease_name: &str,
        token: u64,
    ) -> Result<Record, Fail> {
        let mut tx = self.begin().await?;
        let lease = locked_lease(&mut tx, lease_name, "FOR SHARE").await?;
        if !lease.is_some_and(|(row, now)| row.admits(token, now)) {
            return Err(StoreError::Fenced {
                lease: lease_name.to_owned(),
                token,
            }
            .into());
        }
        lock_refs(&mut tx, w).await?;
        let now = now_rfc3339();
        // Of two concurrent upserts of a new key, the second waits for the first's row and then
        // updates it; an existing row is locked as by an update of non-key columns.
        let row = sqlx::query(
            "INSERT INTO documents AS d (tenant_id, kind, id, body, version, created_at, updated_at) \
             VALUES ($1, $2, $3, $4::json, 1, $5, $5) \
             ON CONFLICT (tenant_id, kind, id) DO UPDATE \
             SET body = excluded.body, version = d.version + 1, updated_at = excluded.updated_at \
             RETURNING version, created_at",
        )
        .bind(w.tenant)
        .bind(&w.key.kind)
        .bind(&w.key.id)
        .bind(w.body.to_string())
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        write_refs(&mut tx, w).await?;
        tx.commit().await?;
        Ok(Record {
            tenant: w.tenant,
            key: w.key.clone(),
            body: w.body.clone(),
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: now,
        })
    }

    async fn delete_once(&self, tenant: i64, key: &Key) -> Result<(), Fail> {
        let mut tx = self.begin().await?;
        let locked = sqlx::query(
            "SELECT 1 FROM documents WHERE tenant_id = $1 AND kind = $2 AND id = $3 FOR UPDATE",
        )
        .bind(tenant)
        .bind(&key.kind)
        .bind(&key.id)
        .fetch_optional(&mut *tx)
        .await?;
        if locked.is_none() {
            return Err(StoreError::NotFound(key.clone()).into());
        }
        let by = referrers_in(&mut tx, tenant, key).await?;
        if !by.is_empty() {
            return Err(StoreError::InUse {
                key: key.clone(),
                by,
            }
            .into());
        }
        sqlx::query(
            "DELETE FROM document_refs WHERE tenant_id = $1 AND from_kind = $2 AND from_id = $3",
        )
        .bind(tenant)
        .bind(&key.kind)
        .bind(&key.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM documents WHERE tenant_id = $1 AND kind = $2 AND id = $3")
            .bind(tenant)
            .bind(&key.kind)
            .bind(&key.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Applies the migrations this database lacks, under an advisory lock so that servers starting
/// together on a fresh database do not both create the tables.
async fn migrate(conn: &mut PgConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS nubo_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0)::BIGINT FROM nubo_schema")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if current > MIGRATIONS.len() as i64 {
        return Err(StoreError::Unavailable(format!(
            "the database schema is version {current}, newer than this binary knows ({}): upgrade nubo",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= current {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO nubo_schema (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, backend = "postgres", "store migration applied");
    }
    tx.commit().await?;
    Ok(())
}

/// Locks the row of the lease `name` with `lock` (`FOR SHARE`, `FOR NO KEY UPDATE`), then reads
/// it with the server's clock: the clock is read once the lock is held, so that time spent
/// waiting for it counts. `None` when the name was never asked for.
async fn locked_lease(
    tx: &mut PgConnection,
    name: &str,
    lock: &'static str,
) -> Result<Option<(LeaseRow, i64)>, Fail> {
    let found = sqlx::query(&format!("SELECT 1 FROM leases WHERE name = $1 {lock}"))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
    if found.is_none() {
        return Ok(None);
    }
    let row = sqlx::query(LEASE_NOW)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    Ok(Some(lease_row(&row)?))
}

/// The lease row `$1` with the server's clock (`now_ms`, milliseconds since the Unix epoch, at
/// the statement's evaluation rather than the transaction's start).
const LEASE_NOW: &str = "SELECT holder, token, expires_at_ms, \
     floor(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT AS now_ms FROM leases WHERE name = $1";

/// A row of [`LEASE_NOW`].
fn lease_row(row: &PgRow) -> Result<(LeaseRow, i64), StoreError> {
    let lease = LeaseRow {
        holder: row.try_get("holder")?,
        token: token_from_db(row.try_get("token")?)?,
        expires_at_ms: row.try_get("expires_at_ms")?,
    };
    Ok((lease, row.try_get("now_ms")?))
}

/// Deadlocks, serialization failures and a foreign key that fired under a race: another attempt
/// sees the committed state and answers properly.
fn retryable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| matches!(code.as_ref(), "40001" | "40P01" | "23503"))
}

/// 5, 10, 20, … ms, capped at 320 ms, spread by the clock's nanoseconds so that writers that
/// collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(6);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()) % (base + 1))
        .unwrap_or(0);
    Duration::from_millis(base / 2 + jitter / 2)
}

/// `host:port/database` (never the password), for messages.
fn where_(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or(opts.get_username())
    )
}

/// A connection failure as the operator's next step.
fn explain_connect(opts: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    let at = where_(opts);
    let db = opts.get_database().unwrap_or(opts.get_username());
    let user = opts.get_username();
    let code = e
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    let msg = match (&e, code.as_deref()) {
        (_, Some("3D000")) => format!(
            "the database `{db}` does not exist on {}:{}: create it (`createdb -h {} -p {} -U {user} {db}`, or CREATE DATABASE \"{db}\"), or name another one in the store URL",
            opts.get_host(),
            opts.get_port(),
            opts.get_host(),
            opts.get_port()
        ),
        (_, Some("28P01" | "28000")) => format!(
            "PostgreSQL at {at} refused user `{user}` ({e}): check the user and password in the store URL, and pg_hba.conf"
        ),
        (_, Some("53300")) => format!(
            "PostgreSQL at {at} has no connection slot left ({e}): raise max_connections or stop other clients (each nubo server opens up to {MAX_CONNECTIONS})"
        ),
        (sqlx::Error::Io(io), _) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "nothing accepts connections at {}:{} (connection refused): start PostgreSQL there, or fix the host and port in the store URL",
            opts.get_host(),
            opts.get_port()
        ),
        (sqlx::Error::Io(io), _) => format!(
            "cannot reach PostgreSQL at {at} ({io}): check the host and port in the store URL"
        ),
        (sqlx::Error::Tls(_), _) => format!(
            "cannot connect to PostgreSQL at {at} ({e}): this build of nubo talks to PostgreSQL without TLS; use sslmode=disable or sslmode=prefer, or a TLS-terminating proxy"
        ),
        (sqlx::Error::PoolTimedOut, _) => format!(
            "PostgreSQL at {at} did not give a connection within {} s: check that it is up and not overloaded",
            CONNECT_TIMEOUT.as_secs()
        ),
        _ => format!("cannot connect to PostgreSQL at {at}: {e}"),
    };
    StoreError::Unavailable(msg)
}

fn record(tenant: i64, row: &PgRow) -> Result<Record, StoreError> {
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

async fn exists(tx: &mut PgConnection, tenant: i64, key: &Key) -> Result<bool, sqlx::Error> {
    Ok(
        sqlx::query("SELECT 1 FROM documents WHERE tenant_id = $1 AND kind = $2 AND id = $3")
            .bind(tenant)
            .bind(&key.kind)
            .bind(&key.id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some(),
    )
}

/// Locks every referenced document against deletion until commit; the first missing one (in the
/// order given) is the error, as in SQLite.
async fn lock_refs(tx: &mut PgConnection, w: &Write) -> Result<(), Fail> {
    for r in &w.refs {
        let found = sqlx::query(
            "SELECT 1 FROM documents WHERE tenant_id = $1 AND kind = $2 AND id = $3 FOR KEY SHARE",
        )
        .bind(r.tenant)
        .bind(&r.key.kind)
        .bind(&r.key.id)
        .fetch_optional(&mut *tx)
        .await?;
        if found.is_none() {
            return Err(StoreError::MissingReference(r.clone()).into());
        }
    }
    Ok(())
}

async fn write_refs(tx: &mut PgConnection, w: &Write) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM document_refs WHERE tenant_id = $1 AND from_kind = $2 AND from_id = $3",
    )
    .bind(w.tenant)
    .bind(&w.key.kind)
    .bind(&w.key.id)
    .execute(&mut *tx)
    .await?;
    for r in &w.refs {
        sqlx::query(
            "INSERT INTO document_refs (tenant_id, from_kind, from_id, to_tenant_id, to_kind, to_id) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
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

async fn referrers_in(
    conn: &mut PgConnection,
    tenant: i64,
    key: &Key,
) -> Result<Vec<Ref>, StoreError> {
    let rows = sqlx::query(
        "SELECT tenant_id, from_kind, from_id FROM document_refs WHERE to_tenant_id = $1 AND to_kind = $2 AND to_id = $3 \
         ORDER BY tenant_id, from_kind COLLATE \"C\", from_id COLLATE \"C\"",
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

#[async_trait]
impl Store for PostgresStore {
    async fn get(&self, tenant: i64, key: &Key) -> Result<Option<Record>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, id, body::text AS body, version, created_at, updated_at FROM documents \
             WHERE tenant_id = $1 AND kind = $2 AND id = $3",
        )
        .bind(tenant)
        .bind(&key.kind)
        .bind(&key.id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| record(tenant, &r)).transpose()
    }

    async fn version(&self, tenant: i64, key: &Key) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT version FROM documents WHERE tenant_id = $1 AND kind = $2 AND id = $3",
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
            "SELECT kind, id, body::text AS body, version, created_at, updated_at FROM documents \
             WHERE tenant_id = $1 AND kind = $2 ORDER BY id COLLATE \"C\"",
        )
        .bind(tenant)
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| record(tenant, r)).collect()
    }

    async fn create(&self, w: Write) -> Result<Record, StoreError> {
        self.retrying("create", || self.create_once(&w)).await
    }

    async fn update(&self, w: Write) -> Result<Record, StoreError> {
        self.retrying("update", || self.update_once(&w, None)).await
    }

    async fn update_if(&self, w: Write, expected_version: i64) -> Result<Record, StoreError> {
        self.retrying("update", || self.update_once(&w, Some(expected_version)))
            .await
    }

    async fn delete(&self, tenant: i64, key: &Key) -> Result<(), StoreError> {
        self.retrying("delete", || self.delete_once(tenant, key))
            .await
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
        self.retrying("acquire_lease", || {
            self.acquire_lease_once(name, holder, ttl)
        })
        .await
    }

    async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        token: u64,
    ) -> Result<bool, StoreError> {
        self.retrying("release_lease", || {
            self.release_lease_once(name, holder, token)
        })
        .await
    }

    async fn lease(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query(LEASE_NOW)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some((lease, now)) = row.as_ref().map(lease_row).transpose()? else {
            return Ok(None);
        };
        Ok(lease.lease(name, now))
    }

    async fn upsert_fenced(
        &self,
        w: Write,
        lease_name: &str,
        token: u64,
    ) -> Result<Record, StoreError> {
        self.retrying("upsert_fenced", || {
            self.upsert_fenced_once(&w, lease_name, token)
        })
        .await
    }

    async fn journal_append(
        &self,
        stream: &str,
        bodies: &[String],
        fence: Option<Fence<'_>>,
    ) -> Result<i64, StoreError> {
        self.retrying("journal_append", || {
            self.journal_append_once(stream, bodies, fence)
        })
        .await
    }

    async fn journal_read(
        &self,
        stream: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<JournalEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, body FROM journal_entries WHERE stream = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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
        let row = sqlx::query("SELECT last_seq FROM journal_streams WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("last_seq")?,
            None => 0,
        })
    }

    async fn snapshot_write(
        &self,
        stream: &str,
        seq: i64,
        body: &str,
        fence: Option<Fence<'_>>,
    ) -> Result<(), StoreError> {
        self.retrying("snapshot_write", || {
            self.snapshot_write_once(stream, seq, body, fence)
        })
        .await
    }

    async fn snapshot_read(&self, stream: &str) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, body FROM journal_snapshots WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("seq")?, r.try_get("body")?)))
            .transpose()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::TempPostgres;

    #[tokio::test]
    async fn postgres_passes_the_conformance_suite() {
        let Some(db) = TempPostgres::create_or_skip("postgres_passes_the_conformance_suite").await
        else {
            return;
        };
        let store = PostgresStore::connect(db.url()).await.unwrap();
        crate::conformance::run_all(&store).await;
        store.close().await;
    }

    /// Two stores on one database are two processes as far as PostgreSQL is concerned.
    #[tokio::test]
    async fn two_writers_on_one_database_pass_the_shared_suite() {
        let Some(db) =
            TempPostgres::create_or_skip("two_writers_on_one_database_pass_the_shared_suite").await
        else {
            return;
        };
        let (a, b) = tokio::join!(
            PostgresStore::connect(db.url()),
            PostgresStore::connect(db.url())
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        crate::conformance::run_shared(&a, &b).await;
        a.close().await;
        b.close().await;
    }

    #[tokio::test]
    async fn leases_pass_the_reopen_suite() {
        let Some(db) = TempPostgres::create_or_skip("leases_pass_the_reopen_suite").await else {
            return;
        };
        crate::conformance::run_reopened(|| async {
            Box::new(PostgresStore::connect(db.url()).await.unwrap()) as Box<dyn Store>
        })
        .await;
    }

    #[tokio::test]
    async fn reconnecting_keeps_documents_and_does_not_remigrate() {
        let Some(db) =
            TempPostgres::create_or_skip("reconnecting_keeps_documents_and_does_not_remigrate")
                .await
        else {
            return;
        };
        let store = PostgresStore::connect(db.url()).await.unwrap();
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
        let store = PostgresStore::connect(db.url()).await.unwrap();
        let got = store.get(1, &Key::new("k", "a")).await.unwrap().unwrap();
        assert_eq!(got.body, serde_json::json!({"x": 1}));
        let versions: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM nubo_schema ORDER BY version")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        let each_once: Vec<i64> = (1..=MIGRATIONS.len() as i64).collect();
        assert_eq!(versions, each_once);
        // A schema newer than this binary is refused, with what to do.
        sqlx::query("INSERT INTO nubo_schema (version) VALUES (999)")
            .execute(&store.pool)
            .await
            .unwrap();
        store.close().await;
        let err = PostgresStore::connect(db.url()).await.err().unwrap();
        assert!(err.to_string().contains("upgrade nubo"), "{err}");
    }

    /// How many sessions of this database wait for a lock.
    async fn waiting_on_locks(conn: &mut PgConnection) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(conn)
        .await
        .unwrap()
    }

    /// A fenced write of the old term that checked its token while the lease was held, and has
    /// not committed yet, holds the takeover back: it commits first, so the new holder sees it.
    /// Another session holds the document's row to keep that write in flight.
    #[tokio::test]
    async fn a_takeover_waits_for_the_fenced_write_in_flight() {
        let Some(db) =
            TempPostgres::create_or_skip("a_takeover_waits_for_the_fenced_write_in_flight").await
        else {
            return;
        };
        let (a, b) = tokio::join!(
            PostgresStore::connect(db.url()),
            PostgresStore::connect(db.url())
        );
        let (a, b) = (std::sync::Arc::new(a.unwrap()), b.unwrap());
        let doc = |n: i64| Write {
            tenant: 1,
            key: Key::new("state", "x"),
            body: serde_json::json!({ "n": n }),
            refs: vec![],
        };
        let ttl = Duration::from_secs(1);
        let old = a.acquire_lease("leader", "a", ttl).await.unwrap().unwrap();
        a.upsert_fenced(doc(0), "leader", old.token).await.unwrap();
        let mut blocker = PgConnection::connect(db.url()).await.unwrap();
        let mut held = blocker.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM documents WHERE kind = 'state' AND id = 'x' FOR UPDATE")
            .execute(&mut *held)
            .await
            .unwrap();
        let mut admin = PgConnection::connect(db.url()).await.unwrap();
        let in_flight = tokio::spawn({
            let a = a.clone();
            async move { a.upsert_fenced(doc(1), "leader", old.token).await }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while waiting_on_locks(&mut admin).await < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never waited"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The lease expires while the write waits; the standby tries to take over.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while b.lease("leader").await.unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lease never expired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b = std::sync::Arc::new(b);
        let takeover = tokio::spawn({
            let b = b.clone();
            async move {
                b.acquire_lease("leader", "b", Duration::from_secs(60))
                    .await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                !takeover.is_finished(),
                "the takeover did not wait for the fenced write in flight: {:?}",
                takeover.await
            );
            if waiting_on_locks(&mut admin).await >= 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the takeover never waited"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        held.rollback().await.unwrap();
        let written = in_flight.await.unwrap().unwrap();
        assert_eq!(written.version, 2, "the write in flight was admitted");
        let new = takeover.await.unwrap().unwrap().unwrap();
        assert!(new.token > old.token);
        let seen = b.get(1, &Key::new("state", "x")).await.unwrap().unwrap();
        assert_eq!((seen.version, seen.body), (2, serde_json::json!({"n": 1})));
        let late = a.upsert_fenced(doc(2), "leader", old.token).await;
        assert!(matches!(late, Err(StoreError::Fenced { .. })), "{late:?}");
        a.close().await;
        b.close().await;
    }

    /// A database as the release before leases left it (schema 1) gains them and keeps its
    /// documents.
    #[tokio::test]
    async fn a_schema_1_database_is_upgraded() {
        let Some(db) = TempPostgres::create_or_skip("a_schema_1_database_is_upgraded").await else {
            return;
        };
        let mut conn = PgConnection::connect(db.url()).await.unwrap();
        sqlx::raw_sql(&format!(
            "CREATE TABLE nubo_schema (version BIGINT NOT NULL); INSERT INTO nubo_schema VALUES (1); {}
             INSERT INTO documents VALUES (1, 'k', 'a', '{{\"x\": 1}}', 1, 't', 't');",
            MIGRATIONS[0]
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        let store = PostgresStore::connect(db.url()).await.unwrap();
        let got = store.get(1, &Key::new("k", "a")).await.unwrap().unwrap();
        assert_eq!(got.body, serde_json::json!({"x": 1}));
        let lease = store
            .acquire_lease("controller", "a", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.token, 1);
        let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM nubo_schema")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        store.close().await;
    }

    #[tokio::test]
    async fn connection_failures_say_what_to_do() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = PostgresStore::connect(&format!("postgres://nubo:secret@127.0.0.1:{port}/nubo"))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("connection refused") && err.contains("start PostgreSQL"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
        let err = PostgresStore::connect("postgres://nubo:secret@127.0.0.1:notaport/nubo")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("not a valid PostgreSQL URL") && !err.contains("secret"),
            "{err}"
        );
        let Some(db) = TempPostgres::create_or_skip(
            "the missing-database case of connection_failures_say_what_to_do",
        )
        .await
        else {
            return;
        };
        let missing = format!("{}_missing", db.name());
        let url = db.url().replace(db.name(), &missing);
        let err = PostgresStore::connect(&url)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("`{missing}` does not exist")) && err.contains("createdb"),
            "{err}"
        );
    }
}
