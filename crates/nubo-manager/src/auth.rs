//! Users and authentication: HTTP Basic credentials checked against argon2 hashes in the store.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use nubo_model::{Kind, SUPER_TENANT_ID, User};
use nubo_store::{Key, Write};
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Manager, ManagerError, store_err};

/// The store kind holding password hashes (never served by the API).
const CREDENTIAL: &str = "credential";

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything in its tenant (and, in the super tenant, the platform).
    Admin,
    /// Ordinary user.
    User,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Tenant of the caller.
    pub tenant_id: i64,
    /// User name.
    pub user: String,
    /// Role.
    pub role: Role,
}

fn digest(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

impl Manager {
    /// Makes sure the super tenant's `admin` user exists. On first start it takes `password`, or
    /// generates one and returns it so the caller can print it once.
    pub async fn ensure_admin(
        &self,
        password: Option<&str>,
    ) -> Result<Option<String>, ManagerError> {
        let tenant = SUPER_TENANT_ID;
        let cred_key = Key::new(CREDENTIAL, "admin");
        if self
            .store
            .get(tenant, &cred_key)
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .is_some()
        {
            return Ok(None);
        }
        let (password, generated) = match password {
            Some(p) if !p.is_empty() => (p.to_owned(), false),
            _ => (
                rand::thread_rng()
                    .sample_iter(&rand::distributions::Alphanumeric)
                    .take(24)
                    .map(char::from)
                    .collect::<String>(),
                true,
            ),
        };
        let hash = hash_password(password.clone()).await?;
        let user = User {
            user_name: "admin".into(),
            credential: None,
            role: Some("admin".into()),
            first_name: None,
            last_name: None,
            email: None,
            profile_name: None,
            extra: Default::default(),
        };
        if self
            .store
            .get(tenant, &Key::new(Kind::User.as_str(), "admin"))
            .await
            .map_err(|e| store_err(Kind::User, e))?
            .is_none()
        {
            self.store
                .create(Write {
                    tenant,
                    key: Key::new(Kind::User.as_str(), "admin"),
                    body: serde_json::to_value(&user)
                        .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
                    refs: vec![],
                })
                .await
                .map_err(|e| store_err(Kind::User, e))?;
        }
        self.store
            .create(Write {
                tenant,
                key: cred_key,
                body: json!({ "passwordHash": hash }),
                refs: vec![Key::new(Kind::User.as_str(), "admin")],
            })
            .await
            .map_err(|e| store_err(Kind::User, e))?;
        tracing::info!(user = "admin", "admin user created");
        Ok(generated.then_some(password))
    }

    /// Checks a user name (`admin`, or `user@tenant.domain` once tenants exist) and password.
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Principal, ManagerError> {
        let denied = || ManagerError::Unauthenticated("wrong user name or password".into());
        let (name, tenant) = match user.rsplit_once('@') {
            None => (user, SUPER_TENANT_ID),
            Some((name, "carbon.super")) => (name, SUPER_TENANT_ID),
            Some((name, domain)) => match self
                .get::<nubo_model::Tenant>(SUPER_TENANT_ID, domain)
                .await
            {
                Ok(t) if t.active != Some(false) => (name, t.tenant_id.unwrap_or(0)),
                Ok(_) => {
                    return Err(ManagerError::Unauthenticated(format!(
                        "tenant `{domain}` is deactivated: ask the platform administrator to activate it"
                    )));
                }
                Err(_) => return Err(denied()),
            },
        };
        let cache_key = (tenant, name.to_owned());
        let d = digest(password);
        let cached = self
            .auth_cache
            .lock()
            .map(|c| c.get(&cache_key) == Some(&d))
            .unwrap_or(false);
        if !cached {
            let Some(rec) = self
                .store
                .get(tenant, &Key::new(CREDENTIAL, name))
                .await
                .map_err(|e| store_err(Kind::User, e))?
            else {
                return Err(denied());
            };
            let hash = rec
                .body
                .get("passwordHash")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned();
            if !verify_password(password.to_owned(), hash).await? {
                return Err(denied());
            }
            if let Ok(mut c) = self.auth_cache.lock() {
                c.insert(cache_key, d);
            }
        }
        let role = match self.get::<User>(tenant, name).await {
            Ok(u) if u.role.as_deref() == Some("admin") => Role::Admin,
            _ => Role::User,
        };
        Ok(Principal {
            tenant_id: tenant,
            user: name.to_owned(),
            role,
        })
    }
}

impl Manager {
    /// Stores (or replaces) a user's password hash and forgets cached logins of that user.
    pub(crate) async fn set_password(
        &self,
        tenant: i64,
        user: &str,
        password: &str,
    ) -> Result<(), ManagerError> {
        let hash = hash_password(password.to_owned()).await?;
        let w = Write {
            tenant,
            key: Key::new(CREDENTIAL, user),
            body: json!({ "passwordHash": hash }),
            refs: vec![Key::new(Kind::User.as_str(), user)],
        };
        let r = self.store.upsert(w).await;
        r.map_err(|e| store_err(Kind::User, e))?;
        if let Ok(mut c) = self.auth_cache.lock() {
            c.retain(|(t, u), _| !(*t == tenant && u == user));
        }
        Ok(())
    }

    /// Forgets a user's password.
    pub(crate) async fn drop_password(&self, tenant: i64, user: &str) -> Result<(), ManagerError> {
        match self.store.delete(tenant, &Key::new(CREDENTIAL, user)).await {
            Ok(()) | Err(nubo_store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(store_err(Kind::User, e)),
        }
        if let Ok(mut c) = self.auth_cache.lock() {
            c.retain(|(t, u), _| !(*t == tenant && u == user));
        }
        Ok(())
    }
}

async fn hash_password(password: String) -> Result<String, ManagerError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ManagerError::Unavailable(format!("cannot hash password: {e}")))
    })
    .await
    .map_err(|e| ManagerError::Unavailable(e.to_string()))?
}

async fn verify_password(password: String, hash: String) -> Result<bool, ManagerError> {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(|e| ManagerError::Unavailable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nubo_store::SqliteStore;

    use super::*;

    #[tokio::test]
    async fn admin_is_created_once_and_authenticates() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("db")).await.unwrap());
        let m = Manager::new(store, vec!["local".into()]);
        let generated = m
            .ensure_admin(None)
            .await
            .unwrap()
            .expect("a generated password");
        assert_eq!(generated.len(), 24);
        assert_eq!(
            m.ensure_admin(Some("other")).await.unwrap(),
            None,
            "second start keeps the first password"
        );
        let p = m.authenticate("admin", &generated).await.unwrap();
        assert_eq!((p.tenant_id, p.role), (SUPER_TENANT_ID, Role::Admin));
        assert!(
            m.authenticate("admin@carbon.super", &generated)
                .await
                .is_ok()
        );
        assert!(matches!(
            m.authenticate("admin", "other").await,
            Err(ManagerError::Unauthenticated(_))
        ));
        assert!(matches!(
            m.authenticate("nobody", "x").await,
            Err(ManagerError::Unauthenticated(_))
        ));
    }
}
