//! The audit log: every change made through the API (who, what, when, from where, and how it
//! ended), in the store's journal stream `audit` (append-only, in order, shared by every server
//! of the platform), readable by admins (a tenant's admin: its tenant's; the platform's
//! administrator: all), kept for a configurable retention (older entries are trimmed).

use serde::{Deserialize, Serialize};

use crate::auth::{Principal, Role};
use crate::{Manager, ManagerError};

/// The journal stream of the audit log.
const STREAM: &str = "audit";
/// Entries read from the store at a time.
const PAGE: i64 = 1000;

/// One change, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Its place in the log (1, 2, …; set when read).
    #[serde(default)]
    pub seq: i64,
    /// When (RFC 3339).
    pub at: String,
    /// When, milliseconds since the epoch.
    pub at_ms: u64,
    /// The caller's tenant.
    pub tenant_id: i64,
    /// The caller.
    pub user: String,
    /// How it proved itself: `password`, `session`, `apiToken`.
    pub via: String,
    /// The token, when one was used (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// From where (the client's address).
    pub client: String,
    /// The method.
    pub method: String,
    /// The path (without its query).
    pub path: String,
    /// The answer's status (a refusal is recorded too).
    pub status: u16,
}

impl Manager {
    /// Appends an entry to the audit log.
    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), ManagerError> {
        let body =
            serde_json::to_string(entry).map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        self.store
            .journal_append(STREAM, &[body], None)
            .await
            .map_err(|e| ManagerError::Unavailable(format!("cannot write the audit log: {e}")))?;
        Ok(())
    }

    /// Up to `limit` entries after `after` that `viewer` may read (a tenant's admin: its
    /// tenant's; the platform's administrator: every tenant's), optionally of one user, oldest
    /// first.
    pub async fn audit_log(
        &self,
        viewer: &Principal,
        after: i64,
        limit: usize,
        user: Option<&str>,
    ) -> Result<Vec<AuditEntry>, ManagerError> {
        if viewer.role != Role::Admin {
            return Err(ManagerError::Forbidden(
                "only an admin reads the audit log".into(),
            ));
        }
        let all = viewer.tenant_id == nubo_model::SUPER_TENANT_ID;
        let mut out = Vec::new();
        let mut from = after.max(0);
        loop {
            let page = self
                .store
                .journal_read(STREAM, from, PAGE)
                .await
                .map_err(|e| ManagerError::Unavailable(e.to_string()))?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for e in page {
                let Ok(mut entry) = serde_json::from_str::<AuditEntry>(&e.body) else {
                    continue;
                };
                entry.seq = e.seq;
                if (all || entry.tenant_id == viewer.tenant_id)
                    && user.is_none_or(|u| entry.user == u)
                {
                    out.push(entry);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            from = last;
        }
        Ok(out)
    }

    /// Drops the entries recorded before `before_ms` (milliseconds since the epoch); how many.
    pub async fn trim_audit(&self, before_ms: u64) -> Result<usize, ManagerError> {
        let unavailable = |e: nubo_store::StoreError| ManagerError::Unavailable(e.to_string());
        let mut through = None;
        let mut count = 0;
        let mut from = self
            .store
            .snapshot_read(STREAM)
            .await
            .map_err(unavailable)?
            .map_or(0, |(seq, _)| seq);
        'pages: loop {
            let page = self
                .store
                .journal_read(STREAM, from, PAGE)
                .await
                .map_err(unavailable)?;
            let Some(last) = page.last().map(|e| e.seq) else {
                break;
            };
            for e in page {
                let at = serde_json::from_str::<AuditEntry>(&e.body).map_or(0, |x| x.at_ms);
                if at >= before_ms {
                    break 'pages;
                }
                through = Some(e.seq);
                count += 1;
            }
            from = last;
        }
        if let Some(seq) = through {
            self.store
                .snapshot_write(
                    STREAM,
                    seq,
                    &serde_json::json!({"trimmedThrough": seq, "beforeMs": before_ms}).to_string(),
                    None,
                )
                .await
                .map_err(unavailable)?;
            tracing::info!(entries = count, "audit log trimmed to its retention");
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tenant: i64, user: &str, at_ms: u64) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: String::new(),
            at_ms,
            tenant_id: tenant,
            user: user.into(),
            via: "password".into(),
            token_id: None,
            client: "127.0.0.1".into(),
            method: "POST".into(),
            path: "/api/cartridges".into(),
            status: 201,
        }
    }

    #[tokio::test]
    async fn admins_read_their_tenant_s_entries_and_old_ones_are_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::test_manager(dir.path()).await;
        for (i, (t, u)) in [(1, "alice"), (2, "bob"), (1, "carol"), (1, "alice")]
            .into_iter()
            .enumerate()
        {
            m.audit(&entry(t, u, 1000 * (i as u64 + 1))).await.unwrap();
        }
        let admin = |t: i64| Principal {
            tenant_id: t,
            user: "a".into(),
            role: Role::Admin,
        };
        let mine = m.audit_log(&admin(1), 0, 100, None).await.unwrap();
        assert_eq!(
            mine.iter().map(|e| e.user.as_str()).collect::<Vec<_>>(),
            ["alice", "carol", "alice"]
        );
        assert_eq!(mine[0].seq, 1);
        let alices = m.audit_log(&admin(1), 1, 100, Some("alice")).await.unwrap();
        assert_eq!(alices.len(), 1, "after the first");
        let everyone = m
            .audit_log(&admin(nubo_model::SUPER_TENANT_ID), 0, 2, None)
            .await
            .unwrap();
        assert_eq!(everyone.len(), 2, "limited");
        let user = Principal {
            role: Role::User,
            ..admin(1)
        };
        assert!(m.audit_log(&user, 0, 100, None).await.is_err());
        // Entries before 2.5 s go; the rest stay, in order.
        assert_eq!(m.trim_audit(2500).await.unwrap(), 2);
        let left = m
            .audit_log(&admin(nubo_model::SUPER_TENANT_ID), 0, 100, None)
            .await
            .unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(m.trim_audit(2500).await.unwrap(), 0, "once");
    }
}
