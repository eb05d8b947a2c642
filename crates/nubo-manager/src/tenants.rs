//! Tenants (managed by the super tenant) and the users of each tenant (as in Apache Stratos 4.1).
//! Passwords are stored only as argon2 hashes, under a store kind the API never serves.

use nubo_model::{FieldError, Kind, Problems, SUPER_TENANT_ID, Tenant, User};
use nubo_store::{Key, Write};

use crate::{Manager, ManagerError, store_err};

const TENANT_SEQUENCE: &str = "tenantSequence";

fn invalid(kind: Kind, field: &str, reason: impl Into<String>) -> ManagerError {
    ManagerError::Invalid {
        kind,
        errors: vec![FieldError {
            field: field.into(),
            reason: reason.into(),
        }],
    }
}

impl Manager {
    async fn next_tenant_id(&self) -> Result<i64, ManagerError> {
        let key = Key::new(TENANT_SEQUENCE, "next");
        let current = self
            .store
            .get(SUPER_TENANT_ID, &key)
            .await
            .map_err(|e| store_err(Kind::Tenant, e))?
            .and_then(|r| r.body.get("next").and_then(|v| v.as_i64()))
            .unwrap_or(1);
        let w = Write {
            tenant: SUPER_TENANT_ID,
            key,
            body: serde_json::json!({ "next": current + 1 }),
            refs: vec![],
        };
        let r = self.store.upsert(w).await;
        r.map_err(|e| store_err(Kind::Tenant, e))?;
        Ok(current)
    }

    /// Adds a tenant and its admin user (`admin@domain`). The admin's password is required.
    pub async fn add_tenant(&self, body: &[u8]) -> Result<Tenant, ManagerError> {
        let mut t = Self::parse::<Tenant>(body)?;
        let mut p = Problems::default();
        let admin = t.admin.clone().unwrap_or_default();
        p.require_id("admin", &admin);
        let password = t.admin_password.take().unwrap_or_default();
        if password.len() < 6 {
            p.add(
                "adminPassword",
                "a password of at least 6 characters is required",
            );
        }
        if t.email.is_none() {
            p.add("email", "an email address is required");
        }
        p.into_result().map_err(|errors| ManagerError::Invalid {
            kind: Kind::Tenant,
            errors,
        })?;
        if self
            .store
            .get(
                SUPER_TENANT_ID,
                &Key::new(Kind::Tenant.as_str(), &t.tenant_domain),
            )
            .await
            .map_err(|e| store_err(Kind::Tenant, e))?
            .is_some()
        {
            return Err(ManagerError::Conflict {
                kind: Kind::Tenant,
                id: t.tenant_domain.clone(),
            });
        }
        let id = self.next_tenant_id().await?;
        t.tenant_id = Some(id);
        t.active = Some(t.active.unwrap_or(true));
        let body =
            serde_json::to_value(&t).map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        self.store
            .create(Write {
                tenant: SUPER_TENANT_ID,
                key: Key::new(Kind::Tenant.as_str(), &t.tenant_domain),
                body,
                refs: vec![],
            })
            .await
            .map_err(|e| store_err(Kind::Tenant, e))?;
        let user = User {
            user_name: admin.clone(),
            credential: None,
            role: Some("admin".into()),
            first_name: t.first_name.clone(),
            last_name: t.last_name.clone(),
            email: t.email.clone(),
            profile_name: None,
            extra: Default::default(),
        };
        self.put_user(id, &user, Some(&password), true).await?;
        tracing::info!(tenant = %t.tenant_domain, tenant_id = id, "tenant added");
        Ok(t)
    }

    /// Updates a tenant's details (and its admin's password when given).
    pub async fn update_tenant(&self, body: &[u8]) -> Result<Tenant, ManagerError> {
        let mut t = Self::parse::<Tenant>(body)?;
        let old: Tenant = self.get(SUPER_TENANT_ID, &t.tenant_domain).await?;
        t.tenant_id = old.tenant_id;
        t.active = t.active.or(old.active);
        t.admin = old.admin.clone();
        if let Some(pw) = t.admin_password.take() {
            if pw.len() < 6 {
                return Err(invalid(
                    Kind::Tenant,
                    "adminPassword",
                    "a password of at least 6 characters is required",
                ));
            }
            self.set_password(
                old.tenant_id.unwrap_or(0),
                old.admin.as_deref().unwrap_or("admin"),
                &pw,
            )
            .await?;
        }
        let body =
            serde_json::to_value(&t).map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        self.store
            .update(Write {
                tenant: SUPER_TENANT_ID,
                key: Key::new(Kind::Tenant.as_str(), &t.tenant_domain),
                body,
                refs: vec![],
            })
            .await
            .map_err(|e| store_err(Kind::Tenant, e))?;
        Ok(t)
    }

    /// Activates or deactivates a tenant (deactivated tenants cannot log in).
    pub async fn set_tenant_active(
        &self,
        domain: &str,
        active: bool,
    ) -> Result<Tenant, ManagerError> {
        let mut t: Tenant = self.get(SUPER_TENANT_ID, domain).await?;
        t.active = Some(active);
        let body =
            serde_json::to_value(&t).map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        self.store
            .update(Write {
                tenant: SUPER_TENANT_ID,
                key: Key::new(Kind::Tenant.as_str(), domain),
                body,
                refs: vec![],
            })
            .await
            .map_err(|e| store_err(Kind::Tenant, e))?;
        if let Some(tid) = t.tenant_id {
            self.auth.forget_tenant(tid);
        }
        Ok(t)
    }

    async fn put_user(
        &self,
        tenant: i64,
        user: &User,
        password: Option<&str>,
        create: bool,
    ) -> Result<(), ManagerError> {
        let mut stored = user.clone();
        stored.credential = None;
        let body =
            serde_json::to_value(&stored).map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        let w = Write {
            tenant,
            key: Key::new(Kind::User.as_str(), &user.user_name),
            body,
            refs: vec![],
        };
        let r = if create {
            self.store.create(w).await
        } else {
            self.store.update(w).await
        };
        r.map_err(|e| store_err(Kind::User, e))?;
        if let Some(pw) = password {
            self.set_password(tenant, &user.user_name, pw).await?;
        }
        Ok(())
    }

    /// Adds a user to a tenant; `credential` (the password) is required.
    pub async fn add_user(&self, tenant: i64, body: &[u8]) -> Result<User, ManagerError> {
        let u = Self::parse::<User>(body)?;
        let pw = u.credential.clone().unwrap_or_default();
        if pw.len() < 6 {
            return Err(invalid(
                Kind::User,
                "credential",
                "a password of at least 6 characters is required",
            ));
        }
        self.put_user(tenant, &u, Some(&pw), true).await?;
        Ok(User {
            credential: None,
            ..u
        })
    }

    /// Updates a user (and its password when `credential` is given).
    pub async fn update_user(&self, tenant: i64, body: &[u8]) -> Result<User, ManagerError> {
        let u = Self::parse::<User>(body)?;
        let pw = u.credential.clone();
        if pw.as_ref().is_some_and(|p| p.len() < 6) {
            return Err(invalid(
                Kind::User,
                "credential",
                "a password of at least 6 characters is required",
            ));
        }
        self.put_user(tenant, &u, pw.as_deref(), false).await?;
        // A new password ends the user's sessions (its API tokens stay: revoke them by hand).
        if pw.is_some() {
            self.revoke_tokens_of(tenant, &u.user_name, true).await?;
        }
        Ok(User {
            credential: None,
            ..u
        })
    }

    /// Removes a user; a tenant's last admin cannot be removed.
    pub async fn remove_user(&self, tenant: i64, name: &str) -> Result<(), ManagerError> {
        let user: User = self.get(tenant, name).await?;
        if user.role.as_deref() == Some("admin") {
            let admins = self
                .list::<User>(tenant)
                .await?
                .into_iter()
                .filter(|u| u.role.as_deref() == Some("admin"))
                .count();
            if admins <= 1 {
                return Err(ManagerError::Conflict {
                    kind: Kind::User,
                    id: format!("{name} (the last admin of its tenant)"),
                });
            }
        }
        self.drop_password(tenant, name).await?;
        self.revoke_tokens_of(tenant, name, false).await?;
        self.store
            .delete(tenant, &Key::new(Kind::User.as_str(), name))
            .await
            .map_err(|e| store_err(Kind::User, e))
    }
}
