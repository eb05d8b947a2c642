//! Tenants' quotas: how many applications a tenant may define and how many members (instances)
//! its applications may run at once. The platform's administrator sets them; the manager refuses
//! an application beyond the quota, the API a deploy, and the autoscaler holds there (it reads
//! the same documents from the store).

use nubo_model::{Kind, QUOTA_KIND, SUPER_TENANT_ID, Tenant, TenantQuota};
use nubo_store::{Key, Write};

use crate::{Manager, ManagerError, store_err};

impl Manager {
    /// The tenant of a domain: its id.
    pub async fn tenant_id_of(&self, domain: &str) -> Result<i64, ManagerError> {
        let t: Tenant = self.get(SUPER_TENANT_ID, domain).await?;
        t.tenant_id.ok_or_else(|| ManagerError::NotFound {
            kind: Kind::Tenant,
            id: domain.to_owned(),
        })
    }

    /// Sets a tenant's quotas (`null` or absent: no limit).
    pub async fn set_quota(&self, domain: &str, body: &[u8]) -> Result<TenantQuota, ManagerError> {
        let tenant = self.tenant_id_of(domain).await?;
        let mut q: TenantQuota =
            nubo_model::json::from_slice(body).map_err(|error| ManagerError::Parse {
                kind: Kind::Tenant,
                error,
            })?;
        q.tenant_id = tenant;
        let w = Write {
            tenant: SUPER_TENANT_ID,
            key: Key::new(QUOTA_KIND, tenant.to_string()),
            body: serde_json::to_value(&q).map_err(|e| ManagerError::Unavailable(e.to_string()))?,
            refs: Vec::new(),
        };
        let exists = self
            .store
            .get(SUPER_TENANT_ID, &w.key)
            .await
            .map_err(|e| store_err(Kind::Tenant, e))?
            .is_some();
        if exists {
            self.store.update(w).await
        } else {
            self.store.create(w).await
        }
        .map_err(|e| store_err(Kind::Tenant, e))?;
        tracing::info!(tenant = %domain, applications = ?q.applications, instances = ?q.instances, "tenant quota set");
        Ok(q)
    }

    /// A tenant's quotas (none set: no limit).
    pub async fn quota(&self, tenant: i64) -> Result<TenantQuota, ManagerError> {
        Ok(self
            .store
            .get(SUPER_TENANT_ID, &Key::new(QUOTA_KIND, tenant.to_string()))
            .await
            .map_err(|e| store_err(Kind::Tenant, e))?
            .and_then(|r| serde_json::from_value(r.body).ok())
            .unwrap_or(TenantQuota {
                tenant_id: tenant,
                ..TenantQuota::default()
            }))
    }

    /// A tenant's quotas by its domain.
    pub async fn quota_of(&self, domain: &str) -> Result<TenantQuota, ManagerError> {
        let tenant = self.tenant_id_of(domain).await?;
        self.quota(tenant).await
    }

    /// A tenant's domain, for messages (the super tenant's: `carbon.super`).
    pub async fn domain_of(&self, tenant: i64) -> Result<String, ManagerError> {
        Ok(domain_in(&self.tenant_domains().await?, tenant))
    }

    /// Every tenant's domain by id (the super tenant's not among them): one read, for who
    /// needs the domains of many.
    pub async fn tenant_domains(
        &self,
    ) -> Result<std::collections::BTreeMap<i64, String>, ManagerError> {
        Ok(self
            .list::<Tenant>(SUPER_TENANT_ID)
            .await?
            .into_iter()
            .filter_map(|t| Some((t.tenant_id?, t.tenant_domain)))
            .collect())
    }

    /// The applications a tenant defined (its own).
    pub async fn applications_of(&self, tenant: i64) -> Result<u32, ManagerError> {
        Ok(self
            .store
            .list(tenant, Kind::Application.as_str())
            .await
            .map_err(|e| store_err(Kind::Application, e))?
            .len() as u32)
    }

    /// Refuses one more application beyond the tenant's `applications` quota.
    pub(crate) async fn within_application_quota(&self, tenant: i64) -> Result<(), ManagerError> {
        if tenant == SUPER_TENANT_ID {
            return Ok(());
        }
        let Some(limit) = self.quota(tenant).await?.applications else {
            return Ok(());
        };
        let used = self.applications_of(tenant).await?;
        if used >= limit {
            return Err(ManagerError::Quota {
                quota: "applications",
                tenant: self.domain_of(tenant).await?,
                limit,
                used,
                what:
                    "remove an application, or ask the platform's administrator for a larger quota"
                        .into(),
            });
        }
        Ok(())
    }

    /// Refuses a deploy that would take a tenant's members beyond its `instances` quota: `used`
    /// members run now, `more` are the new application's minimum.
    pub async fn within_instance_quota(
        &self,
        tenant: i64,
        used: u32,
        more: u32,
    ) -> Result<(), ManagerError> {
        let Some(limit) = self.quota(tenant).await?.instances else {
            return Ok(());
        };
        if used + more > limit {
            return Err(ManagerError::Quota {
                quota: "instances",
                tenant: self.domain_of(tenant).await?,
                limit,
                used: used + more,
                what: format!(
                    "{used} members run, and this deploy needs {more} more; undeploy an application, lower its minimum, or ask the platform's administrator for a larger quota"
                ),
            });
        }
        Ok(())
    }
}

/// A tenant's domain in `domains` ([`Manager::tenant_domains`]); the super tenant's is
/// `carbon.super`, an unknown tenant's its id.
pub fn domain_in(domains: &std::collections::BTreeMap<i64, String>, tenant: i64) -> String {
    if tenant == SUPER_TENANT_ID {
        return "carbon.super".into();
    }
    domains
        .get(&tenant)
        .cloned()
        .unwrap_or_else(|| tenant.to_string())
}
