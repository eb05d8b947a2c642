//! Bearer tokens: sessions (`POST /api/login`, short-lived) and API tokens for automation
//! (created, listed, revoked). A token is `nubo.<tenant>.<id>.<secret>`: the store keeps its
//! row under the user's tenant (kind `token`) with the SHA-256 of the secret (256 random bits:
//! no slow hash is needed), never the secret. A token acts as its user with the user's role at
//! each request (a removed user's tokens stop at once, a demoted admin's lose the admin's
//! rights), narrowed by its scope (`read`: what any user may read).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use nubo_model::{Kind, SUPER_TENANT_ID, Tenant, User};
use nubo_store::{Key, Write};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::auth::{Principal, Role, constant_time_eq};
use crate::{Manager, ManagerError, store_err};

/// The store's kind of token rows (no API route serves them whole).
const TOKEN: &str = "token";
/// Sessions a user may hold at once (the oldest go first).
pub const SESSIONS_PER_USER: usize = 50;
/// API tokens a user may hold at once.
pub const API_TOKENS_PER_USER: usize = 100;
/// The longest life of an API token.
pub const API_TOKEN_MAX_DAYS: u64 = 366;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A login's: short-lived.
    Session,
    /// For automation: named, longer-lived, revoked by hand.
    Api,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Whatever its user may.
    #[default]
    Write,
    /// Only what any user may (reads).
    Read,
}

/// A token as it is listed (never its secret, nor its digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Its id (the third part of the token).
    pub id: String,
    /// Its name (a session's is `session`).
    pub name: String,
    /// Its user.
    pub user: String,
    /// Session or API token.
    pub kind: TokenKind,
    /// Its scope.
    pub scope: Scope,
    /// When it was made (RFC 3339).
    pub created: String,
    /// When it ends (RFC 3339).
    pub expires: String,
    /// Its end, seconds since the epoch.
    pub expires_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    #[serde(flatten)]
    info: TokenInfo,
    digest: String,
    tenant_domain: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn digest(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The parts of a presented token: tenant, id, secret; `None` for anything else.
pub fn parse(token: &str) -> Option<(i64, &str, &str)> {
    let rest = token.strip_prefix("nubo.")?;
    let (tenant, rest) = rest.split_once('.')?;
    let (id, secret) = rest.split_once('.')?;
    let ok = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (ok(id, 16) && ok(secret, 43)).then_some(())?;
    Some((tenant.parse().ok()?, id, secret))
}

fn unauthenticated() -> ManagerError {
    ManagerError::Unauthenticated(
        "this token is not valid (expired, revoked, or not a token of this platform): log in again, or create another".into(),
    )
}

impl Manager {
    async fn rows(&self, tenant: i64) -> Result<Vec<Row>, ManagerError> {
        Ok(self
            .store
            .list(tenant, TOKEN)
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .into_iter()
            .filter_map(|r| serde_json::from_value(r.body).ok())
            .collect())
    }

    async fn delete_row(&self, tenant: i64, id: &str) -> Result<(), ManagerError> {
        match self.store.delete(tenant, &Key::new(TOKEN, id)).await {
            Ok(()) | Err(nubo_store::StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(store_err(Kind::User, e)),
        }
    }

    /// Issues a token for `p` (who proved itself by password, or by a session for an API
    /// token): the token, shown once, and what is listed of it. The user's expired tokens go,
    /// and the oldest session beyond [`SESSIONS_PER_USER`]; more than [`API_TOKENS_PER_USER`]
    /// API tokens are refused.
    pub async fn issue_token(
        &self,
        p: &Principal,
        kind: TokenKind,
        name: &str,
        scope: Scope,
        life: Duration,
    ) -> Result<(String, TokenInfo), ManagerError> {
        let now = now_secs();
        let mut mine: Vec<Row> = Vec::new();
        for r in self.rows(p.tenant_id).await? {
            if r.info.user != p.user {
                continue;
            }
            if r.info.expires_at <= now {
                self.delete_row(p.tenant_id, &r.info.id).await?;
            } else if r.info.kind == kind {
                mine.push(r);
            }
        }
        match kind {
            TokenKind::Api if mine.len() >= API_TOKENS_PER_USER => {
                return Err(ManagerError::StateConflict(format!(
                    "{} holds {API_TOKENS_PER_USER} API tokens, the most a user may: revoke one first (DELETE /api/tokens/ID)",
                    p.user
                )));
            }
            TokenKind::Session if mine.len() >= SESSIONS_PER_USER => {
                mine.sort_by_key(|r| r.info.expires_at);
                for r in &mine[..=mine.len() - SESSIONS_PER_USER] {
                    self.delete_row(p.tenant_id, &r.info.id).await?;
                }
            }
            _ => {}
        }
        // (The thread's generator is not held across an await.)
        let (id, secret) = {
            let mut rng = rand::thread_rng();
            let id: String = (0..16)
                .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
                .collect();
            let bytes: [u8; 32] = rng.r#gen();
            (
                id,
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            )
        };
        let expires_at = now + life.as_secs();
        let info = TokenInfo {
            id: id.clone(),
            name: name.to_owned(),
            user: p.user.clone(),
            kind,
            scope,
            created: rfc3339(now),
            expires: rfc3339(expires_at),
            expires_at,
        };
        let row = Row {
            info: info.clone(),
            digest: digest(&secret),
            // The super tenant is in no tenant list (it is never deactivated).
            tenant_domain: self.tenant_domains().await?.remove(&p.tenant_id),
        };
        self.store
            .create(Write {
                tenant: p.tenant_id,
                key: Key::new(TOKEN, &id),
                body: serde_json::to_value(&row)
                    .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
                refs: Vec::new(),
            })
            .await
            .map_err(|e| store_err(Kind::User, e))?;
        tracing::info!(user = %p.user, tenant = p.tenant_id, token = %id, kind = ?kind, "token issued");
        Ok((format!("nubo.{}.{id}.{secret}", p.tenant_id), info))
    }

    /// The user a bearer token proves, with the user's role now (narrowed by the token's
    /// scope), and the token's row as listed. The same refusal for every bad token.
    pub async fn authenticate_token(
        &self,
        token: &str,
    ) -> Result<(Principal, TokenInfo), ManagerError> {
        let (tenant, id, secret) = parse(token).ok_or_else(unauthenticated)?;
        let row: Row = self
            .store
            .get(tenant, &Key::new(TOKEN, id))
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .and_then(|r| serde_json::from_value(r.body).ok())
            .ok_or_else(unauthenticated)?;
        if !constant_time_eq(row.digest.as_bytes(), digest(secret).as_bytes()) {
            return Err(unauthenticated());
        }
        if row.info.expires_at <= now_secs() {
            return Err(ManagerError::Unauthenticated(
                "this token has expired: log in again (POST /api/login), or create another API token".into(),
            ));
        }
        if let Some(domain) = &row.tenant_domain {
            let t: Tenant = self
                .get(SUPER_TENANT_ID, domain)
                .await
                .map_err(|_| unauthenticated())?;
            if t.active == Some(false) {
                return Err(ManagerError::Unauthenticated(format!(
                    "tenant `{domain}` is deactivated: ask the platform administrator to activate it"
                )));
            }
        }
        let user: User = self
            .get(tenant, &row.info.user)
            .await
            .map_err(|_| unauthenticated())?;
        let role = match (row.info.scope, user.role.as_deref()) {
            (Scope::Write, Some("admin")) => Role::Admin,
            _ => Role::User,
        };
        Ok((
            Principal {
                tenant_id: tenant,
                user: row.info.user.clone(),
                role,
            },
            row.info,
        ))
    }

    /// The tokens of `p`'s tenant that `p` may see: its own; every user's for a tenant admin.
    pub async fn list_tokens(&self, p: &Principal) -> Result<Vec<TokenInfo>, ManagerError> {
        let now = now_secs();
        let mut out: Vec<TokenInfo> = self
            .rows(p.tenant_id)
            .await?
            .into_iter()
            .map(|r| r.info)
            .filter(|i| i.expires_at > now && (p.role == Role::Admin || i.user == p.user))
            .collect();
        out.sort_by(|a, b| (&a.user, &a.created, &a.id).cmp(&(&b.user, &b.created, &b.id)));
        Ok(out)
    }

    /// Revokes a token: one's own, or any of the tenant's for a tenant admin (404 otherwise, as
    /// for a token that does not exist).
    pub async fn revoke_token(&self, p: &Principal, id: &str) -> Result<(), ManagerError> {
        let not_found = || ManagerError::NotFound {
            kind: Kind::User,
            id: format!("token {id}"),
        };
        let row: Row = self
            .store
            .get(p.tenant_id, &Key::new(TOKEN, id))
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .and_then(|r| serde_json::from_value(r.body).ok())
            .ok_or_else(not_found)?;
        if row.info.user != p.user && p.role != Role::Admin {
            return Err(not_found());
        }
        self.delete_row(p.tenant_id, id).await?;
        tracing::info!(user = %p.user, tenant = p.tenant_id, token = %id, "token revoked");
        Ok(())
    }

    /// Revokes every token of a user (removed, or its password changed: sessions only).
    pub(crate) async fn revoke_tokens_of(
        &self,
        tenant: i64,
        user: &str,
        sessions_only: bool,
    ) -> Result<(), ManagerError> {
        for r in self.rows(tenant).await? {
            if r.info.user == user && (!sessions_only || r.info.kind == TokenKind::Session) {
                self.delete_row(tenant, &r.info.id).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_expired_token_is_refused_saying_so_and_goes_at_the_next_issue() {
        let dir = tempfile::tempdir().unwrap();
        let m = crate::test_manager(dir.path()).await;
        m.ensure_admin(Some("pw-admin")).await.unwrap();
        let p = m.authenticate("c", "admin", "pw-admin").await.unwrap();
        let (old, _) = m
            .issue_token(
                &p,
                TokenKind::Session,
                "session",
                Scope::Write,
                Duration::ZERO,
            )
            .await
            .unwrap();
        let e = m.authenticate_token(&old).await.unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        let (fresh, info) = m
            .issue_token(
                &p,
                TokenKind::Session,
                "session",
                Scope::Write,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let (who, _) = m.authenticate_token(&fresh).await.unwrap();
        assert_eq!(who.user, "admin");
        assert_eq!(who.role, Role::Admin);
        // The expired one is gone from the store; the list shows the live one only.
        let listed = m.list_tokens(&p).await.unwrap();
        assert_eq!(listed, [info]);
        assert_eq!(m.rows(SUPER_TENANT_ID).await.unwrap().len(), 1);
        // Sessions beyond the cap push the oldest out.
        for _ in 0..SESSIONS_PER_USER + 3 {
            m.issue_token(
                &p,
                TokenKind::Session,
                "session",
                Scope::Write,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        }
        assert_eq!(
            m.rows(SUPER_TENANT_ID).await.unwrap().len(),
            SESSIONS_PER_USER
        );
    }

    #[test]
    fn only_well_formed_tokens_parse() {
        let secret = "A".repeat(43);
        let good = format!("nubo.-1234.0123456789abcdef.{secret}");
        assert_eq!(
            parse(&good),
            Some((-1234, "0123456789abcdef", secret.as_str()))
        );
        for bad in [
            "",
            "nubo.",
            "Basic xyz",
            &format!("nubo.x.0123456789abcdef.{secret}"),
            &format!("nubo.1.0123456789abcde.{secret}"),
            &format!("nubo.1.0123456789abcdef.{}", "A".repeat(42)),
            &format!("nubo.1.0123456789abcdef.{}", "A/".repeat(22)),
            &format!("nubo.1.../..{secret}"),
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
