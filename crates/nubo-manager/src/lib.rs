//! The manager: the artifact catalogue of the platform (Stratos' SM, with the artifact halves of the
//! autoscaler and cloud controller). Every write goes parse → validate → check references → store,
//! and every error names the artifact, the field and the reason.
//!
//! The manager knows nothing of HTTP: the API crate maps [`ManagerError`] to status codes.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::sync::Arc;

use nubo_model::json;
use nubo_model::{
    Application, ApplicationPolicy, Artifact, AutoscalingPolicy, Cartridge, CartridgeGroup,
    Catalog, DeploymentPolicy, FieldError, Kind, KubernetesCluster, NetworkPartition, ParseError,
    Problems,
};
use nubo_store::{Key, Record, Ref, Store, StoreError, Write};
use serde_json::Value;

pub mod audit;
mod auth;
pub mod certificates;
mod engines;
pub mod kubernetes;
pub mod metadata;
pub mod quotas;
mod repositories;
mod sealing;
mod secrets;
pub mod signups;
mod tenants;
pub mod tokens;

pub use auth::{CACHE_TTL, Principal, Role, constant_time_eq};
pub use kubernetes::KubernetesAccess;
pub use repositories::RepositoryAccess;
pub use sealing::{SealError, SecretsKey};
pub use secrets::{
    BROKER_PASSWORD, BROKER_PASSWORD_PREVIOUS, BUS_KEY, BUS_KEY_PREVIOUS, Rotating, sealed_with,
};

/// The IaaS providers this build of the platform can place members on.
pub const DEFAULT_PROVIDERS: [&str; 2] = ["local", "mock"];

/// What can go wrong; the API maps each variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The body is not valid JSON or not of the artifact's shape.
    #[error("invalid {}: {error}", kind.label())]
    Parse {
        /// Artifact kind.
        kind: Kind,
        /// What is wrong.
        error: ParseError,
    },
    /// The artifact breaks one or more rules.
    #[error("invalid {}: {}", kind.label(), errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Artifact kind.
        kind: Kind,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
    /// No such artifact.
    #[error("{} `{id}` does not exist", kind.label())]
    NotFound {
        /// Artifact kind.
        kind: Kind,
        /// Its id.
        id: String,
    },
    /// An artifact with this id exists already.
    #[error("{} `{id}` already exists", kind.label())]
    Conflict {
        /// Artifact kind.
        kind: Kind,
        /// Its id.
        id: String,
    },
    /// The change would break artifacts that use this one.
    #[error("{} `{id}` is used by {}{}", kind.label(), fmt_users(by), detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    InUse {
        /// Artifact kind.
        kind: Kind,
        /// Its id.
        id: String,
        /// Who uses it.
        by: Vec<(Kind, String)>,
        /// What would break, for updates.
        detail: Option<String>,
    },
    /// The change conflicts with the current state (a duplicate part of an artifact, or an
    /// artifact that kept changing under the edit); the message says what.
    #[error("{0}")]
    StateConflict(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Credentials are missing or wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// Too many attempts, or too many at once: try again after the delay.
    #[error("{message}")]
    TooManyRequests {
        /// What happened and what to do.
        message: String,
        /// Seconds to wait.
        retry_after_secs: u64,
    },
    /// The request breaks a rule of something that is not an artifact (the metadata
    /// service's bounds); each problem names its field.
    #[error("{message}")]
    BadRequest {
        /// What was refused.
        message: String,
        /// Every problem found.
        errors: Vec<FieldError>,
    },
    /// A tenant's quota is reached.
    #[error("quota `{quota}` of tenant {tenant}: {used} used of {limit}; {what}")]
    Quota {
        /// Which quota (`applications`, `instances`).
        quota: &'static str,
        /// The tenant (its domain).
        tenant: String,
        /// The quota.
        limit: u32,
        /// What is used (with what was asked, for a deploy).
        used: u32,
        /// What to do.
        what: String,
    },
    /// The store is unavailable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

fn fmt_users(by: &[(Kind, String)]) -> String {
    by.iter()
        .map(|(k, id)| format!("{} `{id}`", k.label()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ManagerError {
    /// The field errors to report (one for a parse error; empty for the others).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            ManagerError::Parse { error, .. } => vec![FieldError {
                field: error.field(),
                reason: error.to_string(),
            }],
            ManagerError::Invalid { errors, .. } | ManagerError::BadRequest { errors, .. } => {
                errors.clone()
            }
            ManagerError::Quota {
                quota, limit, used, ..
            } => vec![FieldError {
                field: format!("quota.{quota}"),
                reason: format!("{used} of {limit}"),
            }],
            _ => Vec::new(),
        }
    }
}

fn store_err(kind: Kind, e: StoreError) -> ManagerError {
    match e {
        StoreError::NotFound(k) => ManagerError::NotFound {
            kind: Kind::parse(&k.kind).unwrap_or(kind),
            id: k.id,
        },
        StoreError::Conflict(k) => ManagerError::Conflict {
            kind: Kind::parse(&k.kind).unwrap_or(kind),
            id: k.id,
        },
        StoreError::InUse { key, by } => ManagerError::InUse {
            kind: Kind::parse(&key.kind).unwrap_or(kind),
            id: key.id,
            by: users(SHARED, by),
            detail: None,
        },
        StoreError::MissingReference(k) => ManagerError::Invalid {
            kind,
            errors: vec![FieldError {
                field: String::new(),
                reason: format!(
                    "{} `{}` does not exist (it was removed meanwhile): add it first",
                    Kind::parse(&k.key.kind).map_or(k.key.kind.clone(), |x| x.label().to_owned()),
                    k.key.id
                ),
            }],
        },
        StoreError::Unavailable(m) | StoreError::Corrupt(m) => ManagerError::Unavailable(m),
        // The manager makes no fenced writes; a deposed leader's is as good as unavailable.
        e @ StoreError::Fenced { .. } => ManagerError::Unavailable(e.to_string()),
        // `edit` retries these; one that still races after its retries is a conflict to retry.
        e @ StoreError::Stale { .. } => ManagerError::StateConflict(format!("{e}; retry")),
    }
}

/// The store kind of the platform's own facts, and the id of the providers it offers.
const PLATFORM: &str = "platform";
const PROVIDERS: &str = "providers";

/// The tenant whose definitions of the shared kinds ([`Kind::is_shared`]) every tenant uses.
const SHARED: i64 = nubo_model::SUPER_TENANT_ID;

/// Users of a document, for a message to `caller`: another tenant's are named with their tenant
/// (only the super tenant's shared definitions have users in other tenants).
fn users(caller: i64, refs: Vec<Ref>) -> Vec<(Kind, String)> {
    refs.into_iter()
        .filter_map(|r| {
            Kind::parse(&r.key.kind).map(|kind| {
                if r.tenant == caller {
                    (kind, r.key.id)
                } else {
                    (kind, format!("{}` of tenant `{}", r.key.id, r.tenant))
                }
            })
        })
        .collect()
}

/// A network partition's `runAsUser` / `runAsUidRange` properties choose which user of the
/// platform's hosts runs members (root included): the platform administrator's choice only.
fn run_as_is_for_the_platform(np: &Value) -> Result<(), ManagerError> {
    // A container engine's socket is the host's root: the `docker` provider's partitions (their
    // engines, and which images they allow) are the platform administrator's.
    if np
        .get("provider")
        .and_then(Value::as_str)
        .is_some_and(|p| p.eq_ignore_ascii_case("docker"))
    {
        return Err(ManagerError::Forbidden(
            "provider: a `docker` network partition names a container engine of the platform's hosts (whose socket is their root) and the images it allows; only the platform's administrator (the super tenant's admin) may define one: use one of the platform's global network partitions".into(),
        ));
    }
    let names = |v: Option<&Value>| -> Option<usize> {
        v.and_then(Value::as_array)?.iter().position(|prop| {
            prop.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n == "runAsUser" || n == "runAsUidRange")
        })
    };
    let mut found = names(np.get("properties").or_else(|| np.get("property")))
        .map(|j| format!("property[{j}]"));
    if found.is_none() {
        let partitions = np.get("partitions").and_then(Value::as_array);
        found = partitions
            .into_iter()
            .flatten()
            .enumerate()
            .find_map(|(i, part)| {
                names(part.get("property").or_else(|| part.get("properties")))
                    .map(|j| format!("partitions[{i}].property[{j}]"))
            });
    }
    match found {
        None => Ok(()),
        Some(field) => Err(ManagerError::Forbidden(format!(
            "{field}: runAsUser and runAsUidRange choose which user of the platform's hosts runs members; only the platform's administrator (the super tenant's admin) may set them: use one of the platform's global network partitions"
        ))),
    }
}

fn key<T: Artifact>(id: &str) -> Key {
    Key::new(T::KIND.as_str(), id)
}

/// The manager.
pub struct Manager {
    store: Arc<dyn Store>,
    providers: Vec<String>,
    auth: auth::AuthState,
    secrets_key: SecretsKey,
}

impl Manager {
    /// A manager of `store`, offering `providers`, sealing secrets with `secrets_key`.
    pub fn new(store: Arc<dyn Store>, providers: Vec<String>, secrets_key: SecretsKey) -> Self {
        Manager {
            store,
            providers,
            auth: auth::AuthState::new(),
            secrets_key,
        }
    }

    /// The IaaS providers network partitions may name: this process's own when it runs a
    /// controller; otherwise those the platform's controller published in the store
    /// ([`Self::publish_providers`]), so that an API-only server knows them.
    pub async fn providers(&self) -> Result<Vec<String>, ManagerError> {
        if !self.providers.is_empty() {
            return Ok(self.providers.clone());
        }
        let doc = self
            .store
            .get(SHARED, &Key::new(PLATFORM, PROVIDERS))
            .await
            .map_err(|e| store_err(Kind::NetworkPartition, e))?;
        Ok(doc
            .and_then(|d| serde_json::from_value(d.body.get("providers")?.clone()).ok())
            .unwrap_or_default())
    }

    /// Publishes this process's providers in the store, for the API-only servers of the
    /// platform (a process running the controller calls it at its start).
    pub async fn publish_providers(&self) -> Result<(), ManagerError> {
        self.store
            .upsert(Write {
                tenant: SHARED,
                key: Key::new(PLATFORM, PROVIDERS),
                body: serde_json::json!({ "providers": self.providers }),
                refs: vec![],
            })
            .await
            .map_err(|e| store_err(Kind::NetworkPartition, e))?;
        Ok(())
    }

    /// The store (for health checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Parses and validates `body` as a `T` without storing it.
    pub fn parse<T: Artifact>(body: &[u8]) -> Result<T, ManagerError> {
        let value = json::parse_strict(body).map_err(|error| ManagerError::Parse {
            kind: T::KIND,
            error,
        })?;
        if !value.is_object() {
            return Err(ManagerError::Parse {
                kind: T::KIND,
                error: ParseError::Shape {
                    field: String::new(),
                    reason: format!("expected a JSON object describing a {}", T::KIND.label()),
                },
            });
        }
        let artifact: T = json::from_value(value).map_err(|error| ManagerError::Parse {
            kind: T::KIND,
            error,
        })?;
        let mut p = Problems::default();
        artifact.validate(&mut p);
        p.into_result().map_err(|errors| ManagerError::Invalid {
            kind: T::KIND,
            errors,
        })?;
        Ok(artifact)
    }

    /// The definition `tenant` means by `kind`/`id`, with the tenant that owns it: its own, else,
    /// for a shared kind, the super tenant's (a tenant's own definition of an id hides a shared
    /// one of the same id from it).
    async fn resolve(
        &self,
        tenant: i64,
        kind: Kind,
        id: &str,
    ) -> Result<Option<(i64, Record)>, StoreError> {
        let key = Key::new(kind.as_str(), id);
        if let Some(rec) = self.store.get(tenant, &key).await? {
            return Ok(Some((tenant, rec)));
        }
        if tenant == SHARED || !kind.is_shared() {
            return Ok(None);
        }
        Ok(self.store.get(SHARED, &key).await?.map(|rec| (SHARED, rec)))
    }

    /// The artifacts `artifact` names, as `tenant` sees them, and the references to record.
    async fn catalog_for<T: Artifact>(
        &self,
        tenant: i64,
        artifact: &T,
    ) -> Result<(Catalog, Vec<Ref>), ManagerError> {
        let mut catalog = Catalog::new(self.providers().await?);
        let mut refs = Vec::new();
        for r in artifact.references() {
            if catalog.contains(r.kind, &r.id) {
                continue;
            }
            if let Some((owner, rec)) = self
                .resolve(tenant, r.kind, &r.id)
                .await
                .map_err(|e| store_err(T::KIND, e))?
            {
                catalog.insert(r.kind, &r.id, rec.body);
                refs.push(Ref::new(owner, Key::new(r.kind.as_str(), &r.id)));
            }
        }
        Ok((catalog, refs))
    }

    /// The error for a write of `tenant` to `kind`/`id` that it does not own: a shared definition
    /// of the super tenant's is the platform administrator's to change (403), anything else is
    /// `otherwise`.
    async fn not_own(
        &self,
        tenant: i64,
        kind: Kind,
        id: &str,
        otherwise: ManagerError,
    ) -> ManagerError {
        if tenant == SHARED || !kind.is_shared() {
            return otherwise;
        }
        match self.store.get(SHARED, &Key::new(kind.as_str(), id)).await {
            Ok(Some(_)) => ManagerError::Forbidden(format!(
                "{} `{id}` is a global definition of the platform (the super tenant's), shared by every tenant: only the platform's administrator may change or remove it; define one of your own under another id",
                kind.label()
            )),
            _ => otherwise,
        }
    }

    async fn checked<T: Artifact>(
        &self,
        tenant: i64,
        body: &[u8],
    ) -> Result<(T, Write), ManagerError> {
        let artifact = Self::parse::<T>(body)?;
        let (catalog, refs) = self.catalog_for(tenant, &artifact).await?;
        let mut p = Problems::default();
        artifact.check_references(&catalog, &mut p);
        p.into_result().map_err(|errors| ManagerError::Invalid {
            kind: T::KIND,
            errors,
        })?;
        let write = Write {
            tenant,
            key: key::<T>(artifact.id()),
            body: serde_json::to_value(&artifact)
                .map_err(|e| ManagerError::Unavailable(e.to_string()))?,
            refs,
        };
        Ok((artifact, write))
    }

    /// Whether `p` may write this artifact, beyond what its role allows for the kind: a cartridge
    /// with a `local` iaasProvider (its `imageId` is a command line the platform runs as its own
    /// user) is for the super tenant's admin only. A body that does not parse is left to the
    /// validation that follows.
    pub fn may_write<T: Artifact>(&self, p: &Principal, body: &[u8]) -> Result<(), ManagerError> {
        if !matches!(T::KIND, Kind::Cartridge | Kind::NetworkPartition)
            || (p.role == Role::Admin && p.tenant_id == nubo_model::SUPER_TENANT_ID)
        {
            return Ok(());
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Ok(());
        };
        if T::KIND == Kind::NetworkPartition {
            return run_as_is_for_the_platform(&v);
        }
        // A cartridge's extensionsDir names scripts on the platform's hosts that its members run.
        let props = v.get("property").and_then(Value::as_array);
        if let Some(j) = props
            .into_iter()
            .flatten()
            .position(|prop| prop.get("name").and_then(Value::as_str) == Some("extensionsDir"))
        {
            return Err(ManagerError::Forbidden(format!(
                "property[{j}]: extensionsDir names scripts on the platform's hosts that members run; only the platform's administrator (the super tenant's admin) may set it"
            )));
        }
        let providers = v.get("iaasProvider").and_then(Value::as_array);
        if let Some(i) = providers.into_iter().flatten().position(|e| {
            e.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("local"))
        }) {
            return Err(ManagerError::Forbidden(format!(
                "iaasProvider[{i}].type: a `local` cartridge runs its imageId as a command line on the platform's hosts; only the platform's administrator (the super tenant's admin) may define one"
            )));
        }
        Ok(())
    }

    /// Seals again with the current secrets key what the stored `T`s of `tenant` hold sealed
    /// with the previous one of a rotation: `edit` reseals a document's values in place (with
    /// [`Manager::reseal_value`]) and says how many; a changed document is written back (one
    /// changed meanwhile was sealed by its writer, with the current key). How many values.
    pub(crate) async fn reseal_stored<T: Artifact>(
        &self,
        tenant: i64,
        mut edit: impl FnMut(&str, &mut Value) -> Result<usize, ManagerError>,
    ) -> Result<usize, ManagerError> {
        let mut resealed = 0;
        for rec in self
            .store
            .list(tenant, T::KIND.as_str())
            .await
            .map_err(|e| store_err(T::KIND, e))?
        {
            let mut body = rec.body;
            let changed = edit(&rec.key.id, &mut body)?;
            if changed == 0 {
                continue;
            }
            let bytes =
                serde_json::to_vec(&body).map_err(|e| ManagerError::Unavailable(e.to_string()))?;
            let (_, mut write) = self.checked::<T>(tenant, &bytes).await?;
            write.body = body;
            match self.store.update_if(write, rec.version).await {
                Ok(_) => resealed += changed,
                Err(StoreError::Stale { .. } | StoreError::NotFound(_)) => {}
                Err(e) => return Err(store_err(T::KIND, e)),
            }
        }
        Ok(resealed)
    }

    /// Seals the sealed string at `value` again with the current key when the previous one
    /// sealed it: whether it did (anything but a string is left alone).
    pub(crate) fn reseal_value(&self, value: &mut Value, context: &str) -> Result<bool, SealError> {
        let Some(sealed) = value.as_str() else {
            return Ok(false);
        };
        match self.secrets_key.reseal(context, sealed)? {
            Some(again) => {
                *value = Value::String(again);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Adds a new artifact.
    pub async fn add<T: Artifact>(&self, tenant: i64, body: &[u8]) -> Result<T, ManagerError> {
        let (artifact, mut write) = self.checked::<T>(tenant, body).await?;
        if T::KIND == Kind::Application {
            self.within_application_quota(tenant).await?;
            self.seal_repositories(tenant, artifact.id(), &mut write.body, None)?;
        }
        if T::KIND == Kind::KubernetesCluster {
            self.seal_kubernetes_secrets(tenant, artifact.id(), &mut write.body, None)?;
        }
        if T::KIND == Kind::NetworkPartition {
            self.seal_engine_keys(tenant, artifact.id(), &mut write.body, None)?;
        }
        if tenant != SHARED
            && T::KIND.is_shared()
            && self
                .store
                .version(SHARED, &write.key)
                .await
                .map_err(|e| store_err(T::KIND, e))?
                .is_some()
        {
            return Err(ManagerError::StateConflict(format!(
                "{} `{}` is a global definition of the platform (the super tenant's), shared by every tenant: use it as it is, or choose another {}",
                T::KIND.label(),
                artifact.id(),
                T::ID_FIELD
            )));
        }
        // The store refuses an existing id (Conflict) in the same transaction as the write.
        self.store
            .create(write)
            .await
            .map_err(|e| store_err(T::KIND, e))?;
        tracing::info!(
            kind = T::KIND.as_str(),
            id = artifact.id(),
            tenant,
            "artifact added"
        );
        Ok(artifact)
    }

    /// Replaces an existing artifact. Refused with `InUse` when an artifact using it would become invalid.
    pub async fn update<T: Artifact>(&self, tenant: i64, body: &[u8]) -> Result<T, ManagerError> {
        let (artifact, mut write) = self.checked::<T>(tenant, body).await?;
        if T::KIND == Kind::Application {
            let previous = self
                .store
                .get(tenant, &write.key)
                .await
                .map_err(|e| store_err(T::KIND, e))?;
            self.seal_repositories(
                tenant,
                artifact.id(),
                &mut write.body,
                previous.as_ref().map(|r| &r.body),
            )?;
        }
        if T::KIND == Kind::KubernetesCluster {
            let previous = self
                .store
                .get(tenant, &write.key)
                .await
                .map_err(|e| store_err(T::KIND, e))?;
            self.seal_kubernetes_secrets(
                tenant,
                artifact.id(),
                &mut write.body,
                previous.as_ref().map(|r| &r.body),
            )?;
        }
        if T::KIND == Kind::NetworkPartition {
            let previous = self
                .store
                .get(tenant, &write.key)
                .await
                .map_err(|e| store_err(T::KIND, e))?;
            self.seal_engine_keys(
                tenant,
                artifact.id(),
                &mut write.body,
                previous.as_ref().map(|r| &r.body),
            )?;
        }
        // A missing artifact has no users; the store answers NotFound on the write itself.
        self.check_users_still_valid::<T>(tenant, &write).await?;
        if let Err(e) = self.store.update(write).await {
            let e = store_err(T::KIND, e);
            return Err(match e {
                ManagerError::NotFound { .. } => {
                    self.not_own(tenant, T::KIND, artifact.id(), e).await
                }
                e => e,
            });
        }
        tracing::info!(
            kind = T::KIND.as_str(),
            id = artifact.id(),
            tenant,
            "artifact updated"
        );
        Ok(artifact)
    }

    /// Changes a stored artifact in place: reads it, applies `change`, checks the result as
    /// [`Manager::update`] does, and writes it only if nobody wrote it meanwhile (the store's
    /// version); a concurrent change makes it read and apply `change` again, so that two edits
    /// of one artifact never lose one. Returns what `change` returned.
    pub async fn edit<T: Artifact, R>(
        &self,
        tenant: i64,
        id: &str,
        change: impl Fn(&mut T) -> Result<R, ManagerError>,
    ) -> Result<R, ManagerError> {
        const ATTEMPTS: usize = 8;
        let key = key::<T>(id);
        for attempt in 1..=ATTEMPTS {
            let Some(rec) = self
                .store
                .get(tenant, &key)
                .await
                .map_err(|e| store_err(T::KIND, e))?
            else {
                let missing = ManagerError::NotFound {
                    kind: T::KIND,
                    id: id.to_owned(),
                };
                return Err(self.not_own(tenant, T::KIND, id, missing).await);
            };
            let mut artifact: T = serde_json::from_value(rec.body).map_err(|e| {
                ManagerError::Unavailable(format!("stored {key} is unreadable: {e}"))
            })?;
            let out = change(&mut artifact)?;
            let body = serde_json::to_vec(&artifact)
                .map_err(|e| ManagerError::Unavailable(e.to_string()))?;
            let (_, write) = self.checked::<T>(tenant, &body).await?;
            self.check_users_still_valid::<T>(tenant, &write).await?;
            match self.store.update_if(write, rec.version).await {
                Ok(_) => {
                    tracing::info!(kind = T::KIND.as_str(), id, tenant, "artifact edited");
                    return Ok(out);
                }
                Err(StoreError::Stale { .. }) if attempt < ATTEMPTS => {
                    tracing::debug!(
                        kind = T::KIND.as_str(),
                        id,
                        attempt,
                        "edited concurrently: again"
                    );
                }
                Err(e) => return Err(store_err(T::KIND, e)),
            }
        }
        Err(ManagerError::Unavailable(format!(
            "{key} kept changing during the edit: retry"
        )))
    }

    /// Re-checks every artifact that references the one being replaced against its new version.
    async fn check_users_still_valid<T: Artifact>(
        &self,
        tenant: i64,
        write: &Write,
    ) -> Result<(), ManagerError> {
        let by = self
            .store
            .referrers(tenant, &write.key)
            .await
            .map_err(|e| store_err(T::KIND, e))?;
        let mut broken = Vec::new();
        let mut details = Vec::new();
        for user in by {
            let Some(kind) = Kind::parse(&user.key.kind) else {
                continue;
            };
            let Some(rec) = self
                .store
                .get(user.tenant, &user.key)
                .await
                .map_err(|e| store_err(T::KIND, e))?
            else {
                continue;
            };
            let problems = self
                .recheck(
                    user.tenant,
                    kind,
                    rec.body,
                    (T::KIND, &write.key.id, &write.body),
                )
                .await?;
            if !problems.is_empty() {
                let (_, named) = users(tenant, vec![user])
                    .pop()
                    .unwrap_or((kind, String::new()));
                details.extend(
                    problems
                        .iter()
                        .map(|p| format!("{} `{named}`: {p}", kind.label())),
                );
                broken.push((kind, named));
            }
        }
        if broken.is_empty() {
            Ok(())
        } else {
            Err(ManagerError::InUse {
                kind: T::KIND,
                id: write.key.id.clone(),
                by: broken,
                detail: Some(details.join("; ")),
            })
        }
    }

    async fn recheck(
        &self,
        tenant: i64,
        kind: Kind,
        body: Value,
        replaced: (Kind, &str, &Value),
    ) -> Result<Vec<FieldError>, ManagerError> {
        macro_rules! dispatch {
            ($($k:ident => $t:ty),* $(,)?) => {
                match kind {
                    $(Kind::$k => self.recheck_as::<$t>(tenant, body, replaced).await,)*
                    _ => Ok(Vec::new()),
                }
            };
        }
        dispatch!(
            NetworkPartition => NetworkPartition,
            DeploymentPolicy => DeploymentPolicy,
            AutoscalingPolicy => AutoscalingPolicy,
            ApplicationPolicy => ApplicationPolicy,
            Cartridge => Cartridge,
            CartridgeGroup => CartridgeGroup,
            Application => Application,
            KubernetesCluster => KubernetesCluster,
        )
    }

    async fn recheck_as<T: Artifact>(
        &self,
        tenant: i64,
        body: Value,
        replaced: (Kind, &str, &Value),
    ) -> Result<Vec<FieldError>, ManagerError> {
        let Ok(artifact) = serde_json::from_value::<T>(body) else {
            return Ok(Vec::new());
        };
        let (mut catalog, _) = self.catalog_for(tenant, &artifact).await?;
        catalog.insert(replaced.0, replaced.1, replaced.2.clone());
        let mut p = Problems::default();
        artifact.check_references(&catalog, &mut p);
        Ok(p.0)
    }

    /// One artifact, as `tenant` sees it: its own, else a shared one of the super tenant's.
    pub async fn get<T: Artifact>(&self, tenant: i64, id: &str) -> Result<T, ManagerError> {
        let (_, rec) = self
            .resolve(tenant, T::KIND, id)
            .await
            .map_err(|e| store_err(T::KIND, e))?
            .ok_or_else(|| ManagerError::NotFound {
                kind: T::KIND,
                id: id.to_owned(),
            })?;
        serde_json::from_value(rec.body).map_err(|e| {
            ManagerError::Unavailable(format!(
                "stored {} `{id}` is unreadable: {e}",
                T::KIND.label()
            ))
        })
    }

    /// Every artifact of a kind that `tenant` sees, ordered by id: its own, and for a shared
    /// kind the super tenant's that none of its own hides.
    pub async fn list<T: Artifact>(&self, tenant: i64) -> Result<Vec<T>, ManagerError> {
        let mut recs = self
            .store
            .list(tenant, T::KIND.as_str())
            .await
            .map_err(|e| store_err(T::KIND, e))?;
        if tenant != SHARED && T::KIND.is_shared() {
            let shared = self
                .store
                .list(SHARED, T::KIND.as_str())
                .await
                .map_err(|e| store_err(T::KIND, e))?;
            let own: std::collections::HashSet<String> =
                recs.iter().map(|r| r.key.id.clone()).collect();
            recs.extend(shared.into_iter().filter(|r| !own.contains(&r.key.id)));
            recs.sort_by(|a, b| a.key.id.cmp(&b.key.id));
        }
        recs.into_iter()
            .map(|r| {
                serde_json::from_value(r.body).map_err(|e| {
                    ManagerError::Unavailable(format!(
                        "stored {} `{}` is unreadable: {e}",
                        T::KIND.label(),
                        r.key.id
                    ))
                })
            })
            .collect()
    }

    /// The tenants other than the super tenant whose definitions name the super tenant's shared
    /// `kind`/`id` (their running applications may need a new plan after it changed).
    pub async fn tenants_using(&self, kind: Kind, id: &str) -> Result<Vec<i64>, ManagerError> {
        let mut tenants: Vec<i64> = self
            .store
            .referrers(SHARED, &Key::new(kind.as_str(), id))
            .await
            .map_err(|e| store_err(kind, e))?
            .into_iter()
            .map(|r| r.tenant)
            .filter(|t| *t != SHARED)
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        Ok(tenants)
    }

    /// Removes an artifact; refused with `InUse` naming its users.
    pub async fn remove<T: Artifact>(&self, tenant: i64, id: &str) -> Result<(), ManagerError> {
        if let Err(e) = self.store.delete(tenant, &key::<T>(id)).await {
            return Err(match e {
                StoreError::NotFound(_) => {
                    let e = store_err(T::KIND, e);
                    self.not_own(tenant, T::KIND, id, e).await
                }
                StoreError::InUse { key, by } => ManagerError::InUse {
                    kind: T::KIND,
                    id: key.id,
                    by: users(tenant, by),
                    detail: None,
                },
                e => store_err(T::KIND, e),
            });
        }
        tracing::info!(kind = T::KIND.as_str(), id, tenant, "artifact removed");
        Ok(())
    }
}

impl Manager {
    /// The deployment plan of an application under an application policy: loads every artifact
    /// it names and checks what only deployment can check.
    pub async fn deployment_plan(
        &self,
        tenant: i64,
        application_id: &str,
        policy_id: &str,
    ) -> Result<nubo_plan::DeploymentPlan, ManagerError> {
        let app: Application = self.get(tenant, application_id).await?;
        let policy: ApplicationPolicy = self.get(tenant, policy_id).await.map_err(|e| match e {
            ManagerError::NotFound { .. } => ManagerError::Invalid {
                kind: Kind::Application,
                errors: vec![FieldError {
                    field: "applicationPolicyId".into(),
                    reason: format!(
                        "application policy `{policy_id}` does not exist: add it first"
                    ),
                }],
            },
            other => other,
        })?;
        let mut inputs = nubo_plan::PlanInputs::default();
        for spec in app.clusters() {
            let ty = &spec.cartridge.cartridge_type;
            if !inputs.cartridges.contains_key(ty) {
                inputs
                    .cartridges
                    .insert(ty.clone(), self.get::<Cartridge>(tenant, ty).await?);
            }
            if let Some(asp) = &spec.cartridge.subscribable_info.autoscaling_policy
                && !inputs.autoscaling_policies.contains_key(asp)
            {
                inputs.autoscaling_policies.insert(
                    asp.clone(),
                    self.get::<AutoscalingPolicy>(tenant, asp).await?,
                );
            }
            if let Some(dp) = spec.deployment_policy
                && !inputs.deployment_policies.contains_key(dp)
            {
                let policy: DeploymentPolicy = self.get(tenant, dp).await?;
                for np in &policy.network_partitions {
                    if !inputs.network_partitions.contains_key(&np.id) {
                        inputs.network_partitions.insert(
                            np.id.clone(),
                            self.get::<NetworkPartition>(tenant, &np.id).await?,
                        );
                    }
                }
                inputs.deployment_policies.insert(dp.to_owned(), policy);
            }
        }
        for g in app.components.groups.iter().flatten() {
            if !inputs.groups.contains_key(&g.name) {
                inputs.groups.insert(
                    g.name.clone(),
                    self.get::<CartridgeGroup>(tenant, &g.name).await?,
                );
            }
        }
        nubo_plan::plan(&app, &policy, tenant, &inputs).map_err(|e| ManagerError::Invalid {
            kind: Kind::Application,
            errors: vec![FieldError {
                field: "applicationPolicyId".into(),
                reason: e.0,
            }],
        })
    }
}

impl nubo_plan::Planner for Manager {
    type Error = ManagerError;

    async fn plan(
        &self,
        tenant: i64,
        application_id: &str,
        policy_id: &str,
    ) -> Result<nubo_plan::DeploymentPlan, ManagerError> {
        self.deployment_plan(tenant, application_id, policy_id)
            .await
    }

    async fn application(&self, tenant: i64, application_id: &str) -> Result<(), ManagerError> {
        self.get::<Application>(tenant, application_id)
            .await
            .map(|_| ())
    }
}

/// A manager on the SQLite store at `path` offering `provider`, with the secrets key `key` (and
/// the `previous` one of a rotation): tests of sealing and of rotations.
#[cfg(test)]
pub(crate) async fn keyed_manager(
    path: &std::path::Path,
    provider: &str,
    key: [u8; 32],
    previous: Option<[u8; 32]>,
) -> Manager {
    Manager::new(
        Arc::new(nubo_store::SqliteStore::open(path).await.expect("a store")),
        vec![provider.to_owned()],
        SecretsKey::from_bytes(key, previous).expect("a key"),
    )
}

/// A manager on a fresh SQLite store in `dir` (tests).
#[cfg(test)]
pub(crate) async fn test_manager(dir: &std::path::Path) -> Manager {
    Manager::new(
        Arc::new(
            nubo_store::SqliteStore::open(&dir.join("db"))
                .await
                .expect("a store"),
        ),
        vec!["local".into()],
        SecretsKey::from_bytes([7; 32], None).expect("a key"),
    )
}
