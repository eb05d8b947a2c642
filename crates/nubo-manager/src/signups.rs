//! Tenants' signups to the platform's multi-tenant applications (Stratos §6.8) and their domain
//! mappings (§6.9). A signup is the tenant's (kind `applicationSignup`, by application id) with
//! its artifact repositories' passwords sealed; a domain mapping is the platform's (kind
//! `domainMapping` under the super tenant, by domain name), so that a domain is mapped once
//! across the platform, and names its tenant.

use nubo_model::{
    Application, ApplicationSignup, DomainMapping, DomainMappings, Kind, Problems, SUPER_TENANT_ID,
};
use nubo_store::{Key, Write};
use serde::{Deserialize, Serialize};

use crate::{Manager, ManagerError, store_err};

/// A stored domain mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MappedDomain {
    /// The domain name.
    pub domain_name: String,
    /// The context path (`/` when none was given).
    pub context_path: String,
    /// The cartridge alias it routes to.
    pub cartridge_alias: String,
    /// The application (the super tenant's for a signup; the tenant's own otherwise).
    pub application_id: String,
    /// Whose application it is.
    pub application_tenant_id: i64,
    /// The tenant that mapped it.
    pub tenant_id: i64,
    /// Plain HTTP requests for it are redirected to HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_https: bool,
    /// Its certificate, if it has one (the key sealed; served without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::certificates::MappedTls>,
    /// ACME HTTP-01 challenges the load balancers answer for it: token → (key authorization,
    /// until when, in milliseconds since the epoch).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub acme_challenges: std::collections::BTreeMap<String, (String, u64)>,
}

fn context(tenant: i64, application: &str, alias: &str) -> String {
    sealing_context(tenant, application, alias, "repoPassword")
}

/// The sealing context of a signup repository's secret `field`: a sealed value copied elsewhere
/// does not open.
fn sealing_context(tenant: i64, application: &str, alias: &str, field: &str) -> String {
    format!("applicationSignup/{tenant}/{application}/{alias}/{field}")
}

/// A tenant's signup repository a push to which updates the members' checkouts of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignupHook {
    /// The tenant signed up.
    pub tenant_id: i64,
    /// The platform's (super tenant's) multi-tenant application.
    pub application_id: String,
    /// The cartridge alias the repository is for.
    pub alias: String,
    /// The repository's `webhookSecret`, opened (`None`: none was given).
    pub webhook_secret: Option<String>,
}

fn invalid(kind: Kind, errors: Vec<nubo_model::FieldError>) -> ManagerError {
    ManagerError::Invalid { kind, errors }
}

impl Manager {
    /// The application a tenant's signup or mapping is for: the platform's multi-tenant one of
    /// that id (the super tenant: its own application).
    async fn signup_application(
        &self,
        tenant: i64,
        id: &str,
    ) -> Result<(i64, Application), ManagerError> {
        let app: Application = self.get(SUPER_TENANT_ID, id).await.map_err(|e| match e {
            ManagerError::NotFound { .. } => ManagerError::NotFound {
                kind: Kind::Application,
                id: format!("{id} (no multi-tenant application of the platform has this id)"),
            },
            e => e,
        })?;
        if tenant != SUPER_TENANT_ID && app.multi_tenant != Some(true) {
            return Err(ManagerError::NotFound {
                kind: Kind::Application,
                id: format!("{id} (no multi-tenant application of the platform has this id)"),
            });
        }
        Ok((SUPER_TENANT_ID, app))
    }

    /// Signs `tenant` up to the multi-tenant application `id` with its artifact repositories
    /// (their passwords sealed); 409 when it is signed up already.
    pub async fn add_signup(
        &self,
        tenant: i64,
        id: &str,
        body: &[u8],
    ) -> Result<ApplicationSignup, ManagerError> {
        let (_, app) = self.signup_application(tenant, id).await?;
        let mut signup: ApplicationSignup =
            nubo_model::json::from_slice(body).map_err(|error| ManagerError::Parse {
                kind: Kind::ApplicationSignup,
                error,
            })?;
        let mut p = Problems::default();
        signup.validate_for(&app, &mut p);
        p.into_result()
            .map_err(|errors| invalid(Kind::ApplicationSignup, errors))?;
        signup.application_id = Some(id.to_owned());
        signup.tenant_id = Some(tenant);
        for r in signup.artifact_repositories.iter_mut().flatten() {
            let alias = r.alias.clone().unwrap_or_default();
            for (field, value) in [
                ("repoPassword", &mut r.repo_password),
                ("webhookSecret", &mut r.webhook_secret),
            ] {
                *value = match value.take().filter(|v| !v.is_empty()) {
                    Some(plain) => Some(
                        self.secrets_key
                            .seal(&sealing_context(tenant, id, &alias, field), &plain)
                            .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
                    ),
                    None => None,
                };
            }
        }
        self.store
            .create(Write {
                tenant,
                key: Key::new(Kind::ApplicationSignup.as_str(), id),
                body: serde_json::to_value(&signup)
                    .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
                refs: Vec::new(),
            })
            .await
            .map_err(|e| store_err(Kind::ApplicationSignup, e))?;
        tracing::info!(tenant, application = id, "application signup added");
        Ok(redacted(signup))
    }

    /// A tenant's signup to application `id` (passwords left out).
    pub async fn signup(&self, tenant: i64, id: &str) -> Result<ApplicationSignup, ManagerError> {
        let rec = self
            .store
            .get(tenant, &Key::new(Kind::ApplicationSignup.as_str(), id))
            .await
            .map_err(|e| store_err(Kind::ApplicationSignup, e))?
            .ok_or_else(|| ManagerError::NotFound {
                kind: Kind::ApplicationSignup,
                id: id.to_owned(),
            })?;
        let s: ApplicationSignup = serde_json::from_value(rec.body)
            .map_err(|e| ManagerError::Unavailable(e.to_string()))?;
        Ok(redacted(s))
    }

    /// Whether any tenant signed up to application `id`.
    pub async fn signups_exist(&self, id: &str) -> Result<bool, ManagerError> {
        Ok(self.signup_count(id).await? > 0)
    }

    async fn signup_count(&self, id: &str) -> Result<usize, ManagerError> {
        let mut n = 0;
        for t in self.tenant_ids().await? {
            if self
                .store
                .get(t, &Key::new(Kind::ApplicationSignup.as_str(), id))
                .await
                .map_err(|e| store_err(Kind::ApplicationSignup, e))?
                .is_some()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every tenant that may hold signups: the tenants, and the super tenant.
    async fn tenant_ids(&self) -> Result<Vec<i64>, ManagerError> {
        let mut ids: Vec<i64> = self.tenant_domains().await?.into_keys().collect();
        ids.push(SUPER_TENANT_ID);
        Ok(ids)
    }

    /// Removes a tenant's signup and its domain mappings for that application.
    pub async fn remove_signup(&self, tenant: i64, id: &str) -> Result<(), ManagerError> {
        self.store
            .delete(tenant, &Key::new(Kind::ApplicationSignup.as_str(), id))
            .await
            .map_err(|e| store_err(Kind::ApplicationSignup, e))?;
        for m in self.domain_mappings(tenant, id).await? {
            self.remove_domain_mapping(tenant, id, &m.domain_name)
                .await?;
        }
        tracing::info!(tenant, application = id, "application signup removed");
        Ok(())
    }

    /// The repositories the tenants signed up to the platform's application `id` with, for its
    /// cartridge `alias`: (tenant domain, repository, its password opened), for the members'
    /// checkouts.
    pub async fn signup_repositories(
        &self,
        id: &str,
        alias: &str,
    ) -> Result<Vec<(String, crate::RepositoryAccess)>, ManagerError> {
        let domains = self.tenant_domains().await?;
        let mut out = Vec::new();
        for (tenant, application) in self.all_signups().await? {
            if application != id {
                continue;
            }
            let Some((signup, _)) = self.stored_signup(tenant, id).await? else {
                continue;
            };
            let Some(r) = signup
                .artifact_repositories
                .into_iter()
                .flatten()
                .find(|r| r.alias.as_deref() == Some(alias))
            else {
                continue;
            };
            let Some(repo_url) = r.repo_url else {
                continue;
            };
            let repo_password = match r.repo_password {
                Some(sealed) => Some(
                    self.secrets_key
                        .open(&context(tenant, id, alias), &sealed)
                        .map_err(|e| ManagerError::Unavailable(e.to_string()))?
                        .0,
                ),
                None => None,
            };
            out.push((
                crate::quotas::domain_in(&domains, tenant),
                crate::RepositoryAccess {
                    repo_url,
                    repo_username: r.repo_username.filter(|u| !u.is_empty()),
                    repo_password,
                },
            ));
        }
        Ok(out)
    }

    /// A tenant's signup to `id` as stored (its secrets sealed), with its version.
    async fn stored_signup(
        &self,
        tenant: i64,
        id: &str,
    ) -> Result<Option<(ApplicationSignup, i64)>, ManagerError> {
        let rec = self
            .store
            .get(tenant, &Key::new(Kind::ApplicationSignup.as_str(), id))
            .await
            .map_err(|e| store_err(Kind::ApplicationSignup, e))?;
        Ok(rec.and_then(|r| {
            serde_json::from_value::<ApplicationSignup>(r.body)
                .ok()
                .map(|s| (s, r.version))
        }))
    }

    /// The tenants' signup repositories whose URL is `url` (compared by `same`), with their
    /// webhook secrets opened: what a push to that repository updates.
    pub async fn signup_hooks(
        &self,
        same: impl Fn(&str) -> bool,
    ) -> Result<Vec<SignupHook>, ManagerError> {
        let mut out = Vec::new();
        for (tenant, id) in self.all_signups().await? {
            let Some((signup, _)) = self.stored_signup(tenant, &id).await? else {
                continue;
            };
            for r in signup.artifact_repositories.into_iter().flatten() {
                let (Some(alias), Some(url)) = (r.alias, r.repo_url) else {
                    continue;
                };
                if !same(&url) {
                    continue;
                }
                let webhook_secret = match r.webhook_secret {
                    Some(sealed) => Some(
                        self.secrets_key
                            .open(
                                &sealing_context(tenant, &id, &alias, "webhookSecret"),
                                &sealed,
                            )
                            .map_err(|e| ManagerError::Unavailable(e.to_string()))?
                            .0,
                    ),
                    None => None,
                };
                out.push(SignupHook {
                    tenant_id: tenant,
                    application_id: id.clone(),
                    alias,
                    webhook_secret,
                });
            }
        }
        Ok(out)
    }

    /// Seals again, with the current secrets key, the signups' repository secrets still sealed
    /// with the previous one of a rotation; how many (part of
    /// [`Manager::reseal_repository_secrets`]).
    pub(crate) async fn reseal_signup_secrets(&self) -> Result<usize, ManagerError> {
        let mut resealed = 0;
        for (tenant, id) in self.all_signups().await? {
            let key = Key::new(Kind::ApplicationSignup.as_str(), &id);
            let Some((mut signup, version)) = self.stored_signup(tenant, &id).await? else {
                continue;
            };
            let mut changed = 0;
            for r in signup.artifact_repositories.iter_mut().flatten() {
                let alias = r.alias.clone().unwrap_or_default();
                for (field, value) in [
                    ("repoPassword", &mut r.repo_password),
                    ("webhookSecret", &mut r.webhook_secret),
                ] {
                    let Some(sealed) = value.as_deref() else {
                        continue;
                    };
                    let ctx = sealing_context(tenant, &id, &alias, field);
                    match self.secrets_key.reseal(&ctx, sealed) {
                        Ok(Some(again)) => {
                            *value = Some(again);
                            changed += 1;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            return Err(ManagerError::Unavailable(format!(
                                "the repository secrets of tenant {tenant}'s signup to `{id}` do not open: {e}; start with the key they were sealed with as --secrets-key-previous"
                            )));
                        }
                    }
                }
            }
            if changed == 0 {
                continue;
            }
            let write = Write {
                tenant,
                key,
                body: serde_json::to_value(&signup)
                    .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
                refs: Vec::new(),
            };
            match self.store.update_if(write, version).await {
                Ok(_) => resealed += changed,
                Err(nubo_store::StoreError::Stale { .. } | nubo_store::StoreError::NotFound(_)) => {
                }
                Err(e) => return Err(store_err(Kind::ApplicationSignup, e)),
            }
        }
        Ok(resealed)
    }

    /// Every signup of the platform: (tenant, application id), for the load balancers'
    /// `t/<tenant-domain>/` paths.
    pub async fn all_signups(&self) -> Result<Vec<(i64, String)>, ManagerError> {
        let tenants = self.tenant_ids().await?;
        let mut out = Vec::new();
        for t in tenants {
            for r in self
                .store
                .list(t, Kind::ApplicationSignup.as_str())
                .await
                .map_err(|e| store_err(Kind::ApplicationSignup, e))?
            {
                out.push((t, r.key.id));
            }
        }
        Ok(out)
    }

    /// Every domain mapping of the platform (for the load balancers' routes).
    pub async fn all_domain_mappings(&self) -> Result<Vec<MappedDomain>, ManagerError> {
        Ok(self
            .store
            .list(SUPER_TENANT_ID, Kind::DomainMapping.as_str())
            .await
            .map_err(|e| store_err(Kind::DomainMapping, e))?
            .into_iter()
            .filter_map(|r| serde_json::from_value(r.body).ok())
            .collect())
    }

    /// A tenant's domain mappings for application `id`.
    pub async fn domain_mappings(
        &self,
        tenant: i64,
        id: &str,
    ) -> Result<Vec<MappedDomain>, ManagerError> {
        Ok(self
            .all_domain_mappings()
            .await?
            .into_iter()
            .filter(|m| m.tenant_id == tenant && m.application_id == id)
            .map(MappedDomain::served)
            .collect())
    }

    /// Maps domains of `tenant` onto cartridge aliases of application `id` (a tenant: one it
    /// signed up to). A domain mapped already (by anyone) or one of `taken` (the platform's own
    /// host names) is refused with 409, and nothing is mapped.
    pub async fn add_domain_mappings(
        &self,
        tenant: i64,
        id: &str,
        body: &[u8],
        taken: &[String],
    ) -> Result<Vec<MappedDomain>, ManagerError> {
        let (app_tenant, app) = self.signup_application(tenant, id).await?;
        if tenant != SUPER_TENANT_ID {
            self.signup(tenant, id).await.map_err(|_| {
                ManagerError::StateConflict(format!(
                    "tenant is not signed up to application `{id}`: sign up first (POST /api/applications/{id}/signup)"
                ))
            })?;
        }
        let mappings: DomainMappings =
            nubo_model::json::from_slice(body).map_err(|error| ManagerError::Parse {
                kind: Kind::DomainMapping,
                error,
            })?;
        let mut p = Problems::default();
        mappings.validate_for(&app, &mut p);
        p.into_result()
            .map_err(|errors| invalid(Kind::DomainMapping, errors))?;
        let mut seen = std::collections::HashSet::new();
        for m in &mappings.domain_mappings {
            if !seen.insert(m.domain_name.as_str()) {
                return Err(ManagerError::StateConflict(format!(
                    "domain `{}` is given twice",
                    m.domain_name
                )));
            }
            if taken.iter().any(|t| t.eq_ignore_ascii_case(&m.domain_name)) {
                return Err(ManagerError::Conflict {
                    kind: Kind::DomainMapping,
                    id: format!("{} (a host name of the platform's own)", m.domain_name),
                });
            }
        }
        let mut certificates = Vec::new();
        for (i, m) in mappings.domain_mappings.iter().enumerate() {
            certificates.push(match (&m.certificate, &m.private_key) {
                (Some(c), Some(k)) => Some(self.sealed_certificate(
                    &format!("domainMappings[{i}]."),
                    &m.domain_name,
                    c,
                    k,
                )?),
                _ => None,
            });
        }
        let mut out = Vec::new();
        let mut made: Vec<String> = Vec::new();
        for (m, tls) in mappings.domain_mappings.iter().zip(certificates) {
            let mut mapped = mapped(m, &app.application_id, app_tenant, tenant);
            mapped.tls = tls;
            let created = self
                .store
                .create(Write {
                    tenant: SUPER_TENANT_ID,
                    key: Key::new(Kind::DomainMapping.as_str(), &m.domain_name),
                    body: serde_json::to_value(&mapped)
                        .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
                    refs: Vec::new(),
                })
                .await;
            if let Err(e) = created {
                // All or nothing: the ones made in this call go.
                for d in &made {
                    let _ = self
                        .store
                        .delete(SUPER_TENANT_ID, &Key::new(Kind::DomainMapping.as_str(), d))
                        .await;
                }
                return Err(match e {
                    nubo_store::StoreError::Conflict(_) => ManagerError::Conflict {
                        kind: Kind::DomainMapping,
                        id: format!("{} (mapped already)", m.domain_name),
                    },
                    e => store_err(Kind::DomainMapping, e),
                });
            }
            made.push(m.domain_name.clone());
            out.push(mapped.served());
        }
        tracing::info!(tenant, application = id, domains = ?made, "domain mappings added");
        Ok(out)
    }

    /// Removes a tenant's domain mapping (404 for another tenant's, as for none).
    pub async fn remove_domain_mapping(
        &self,
        tenant: i64,
        id: &str,
        domain: &str,
    ) -> Result<(), ManagerError> {
        let key = Key::new(Kind::DomainMapping.as_str(), domain);
        let not_found = || ManagerError::NotFound {
            kind: Kind::DomainMapping,
            id: domain.to_owned(),
        };
        let m: MappedDomain = self
            .store
            .get(SUPER_TENANT_ID, &key)
            .await
            .map_err(|e| store_err(Kind::DomainMapping, e))?
            .and_then(|r| serde_json::from_value(r.body).ok())
            .ok_or_else(not_found)?;
        if m.tenant_id != tenant || m.application_id != id {
            return Err(not_found());
        }
        self.store
            .delete(SUPER_TENANT_ID, &key)
            .await
            .map_err(|e| store_err(Kind::DomainMapping, e))
    }
}

fn mapped(m: &DomainMapping, application: &str, app_tenant: i64, tenant: i64) -> MappedDomain {
    MappedDomain {
        domain_name: m.domain_name.clone(),
        context_path: m.context_path.clone().unwrap_or_else(|| "/".into()),
        cartridge_alias: m.cartridge_alias.clone(),
        application_id: application.to_owned(),
        application_tenant_id: app_tenant,
        tenant_id: tenant,
        redirect_https: m.redirect_https == Some(true),
        tls: None,
        acme_challenges: Default::default(),
    }
}

/// A signup as it is served: without its repositories' passwords.
fn redacted(mut s: ApplicationSignup) -> ApplicationSignup {
    for r in s.artifact_repositories.iter_mut().flatten() {
        r.repo_password = None;
        r.webhook_secret = None;
    }
    s
}
