//! Applications' artifact repositories: their secrets (`repoPassword`, `webhookSecret`) are
//! sealed before the application is stored, never served back, and opened only for a member of
//! the application (its clone) or to check a webhook's proof.

use serde_json::{Map, Value};

use crate::{Manager, ManagerError};

/// The fields of an `artifactRepository` that are sealed.
pub const SECRET_FIELDS: [&str; 2] = ["repoPassword", "webhookSecret"];

/// A repository as the agent needs it to clone.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryAccess {
    /// Where it is.
    pub repo_url: String,
    /// The user name, for a private repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_username: Option<String>,
    /// The password, for a private repository (opened from the store for this member only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_password: Option<String>,
}

impl std::fmt::Debug for RepositoryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryAccess")
            .field("repo_url", &self.repo_url)
            .field("repo_username", &self.repo_username)
            .field("repo_password", &self.repo_password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Calls `f` with the alias and the `artifactRepository` object of every cartridge of an
/// application document, groups included.
fn each_repository(app: &mut Value, f: &mut dyn FnMut(&str, &mut Map<String, Value>)) {
    fn level(v: &mut Value, f: &mut dyn FnMut(&str, &mut Map<String, Value>)) {
        if let Some(cs) = v.get_mut("cartridges").and_then(Value::as_array_mut) {
            for c in cs {
                let Some(info) = c.get_mut("subscribableInfo") else {
                    continue;
                };
                let alias = info
                    .get("alias")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if let Some(repo) = info
                    .get_mut("artifactRepository")
                    .and_then(Value::as_object_mut)
                {
                    f(&alias, repo);
                }
            }
        }
        if let Some(gs) = v.get_mut("groups").and_then(Value::as_array_mut) {
            for g in gs {
                level(g, f);
            }
        }
    }
    if let Some(c) = app.get_mut("components") {
        level(c, f);
    }
}

/// The sealing context of one secret of one repository: a sealed value copied to another
/// tenant, application, alias or field does not open.
fn context(tenant: i64, application_id: &str, alias: &str, field: &str) -> String {
    format!("artifactRepository/{tenant}/{application_id}/{alias}/{field}")
}

fn same_repository(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let url = |m: &Map<String, Value>| m.get("repoUrl").and_then(Value::as_str).map(str::to_owned);
    url(a).is_some() && url(a) == url(b)
}

impl Manager {
    /// Seals the secrets of an application document's repositories, in place, before it is
    /// stored. A secret left out keeps the one `previous` (the stored version) had for the same
    /// alias and repository URL, so that a definition read back (without its secrets) and
    /// written again keeps them.
    pub(crate) fn seal_repositories(
        &self,
        tenant: i64,
        application_id: &str,
        body: &mut Value,
        previous: Option<&Value>,
    ) -> Result<(), ManagerError> {
        let mut kept: Vec<(String, Map<String, Value>)> = Vec::new();
        if let Some(mut prev) = previous.cloned() {
            each_repository(&mut prev, &mut |alias, repo| {
                kept.push((alias.to_owned(), repo.clone()))
            });
        }
        let mut failure = None;
        each_repository(body, &mut |alias, repo| {
            for field in SECRET_FIELDS {
                match repo.get(field) {
                    Some(Value::String(plain)) if !plain.is_empty() => {
                        match self
                            .secrets_key
                            .seal(&context(tenant, application_id, alias, field), plain)
                        {
                            Ok(sealed) => {
                                repo.insert(field.to_owned(), Value::String(sealed));
                            }
                            Err(e) => failure = Some(e.to_string()),
                        }
                    }
                    Some(_) => {
                        // Empty: no secret.
                        repo.remove(field);
                    }
                    None => {
                        if let Some(old) = kept
                            .iter()
                            .find(|(a, r)| a == alias && same_repository(r, repo))
                            .and_then(|(_, r)| r.get(field))
                        {
                            repo.insert(field.to_owned(), old.clone());
                        }
                    }
                }
            }
        });
        match failure {
            Some(e) => Err(ManagerError::Unavailable(format!(
                "cannot seal a repository secret: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// The stored application document of `tenant` (its own only).
    async fn application_document(
        &self,
        tenant: i64,
        application_id: &str,
    ) -> Result<Value, ManagerError> {
        let key = nubo_store::Key {
            kind: nubo_model::Kind::Application.as_str().to_owned(),
            id: application_id.to_owned(),
        };
        self.store
            .get(tenant, &key)
            .await
            .map_err(|e| ManagerError::Unavailable(e.to_string()))?
            .map(|r| r.body)
            .ok_or_else(|| ManagerError::NotFound {
                kind: nubo_model::Kind::Application,
                id: application_id.to_owned(),
            })
    }

    /// One secret of the repository of cartridge `alias` in an application, opened.
    async fn repository_secret(
        &self,
        tenant: i64,
        application_id: &str,
        alias: &str,
        field: &str,
    ) -> Result<(Option<Map<String, Value>>, Option<String>), ManagerError> {
        let mut doc = self.application_document(tenant, application_id).await?;
        let mut found = None;
        each_repository(&mut doc, &mut |a, repo| {
            if a == alias {
                found = Some(repo.clone());
            }
        });
        let Some(repo) = found else {
            return Ok((None, None));
        };
        let secret = match repo.get(field).and_then(Value::as_str) {
            Some(sealed) => Some(
                self.secrets_key
                    .open(&context(tenant, application_id, alias, field), sealed)
                    .map_err(|e| {
                        ManagerError::Unavailable(format!(
                            "the {field} of `{application_id}`/{alias} does not open: {e}"
                        ))
                    })?
                    .0,
            ),
            None => None,
        };
        Ok((Some(repo), secret))
    }

    /// What a member of cartridge `alias` of an application needs to clone its repository
    /// (`None`: the cartridge has no repository).
    pub async fn repository_access(
        &self,
        tenant: i64,
        application_id: &str,
        alias: &str,
    ) -> Result<Option<RepositoryAccess>, ManagerError> {
        let (repo, password) = self
            .repository_secret(tenant, application_id, alias, "repoPassword")
            .await?;
        let Some(repo) = repo else {
            return Ok(None);
        };
        let Some(url) = repo.get("repoUrl").and_then(Value::as_str) else {
            return Ok(None);
        };
        Ok(Some(RepositoryAccess {
            repo_url: url.to_owned(),
            repo_username: repo
                .get("repoUsername")
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
            repo_password: password,
        }))
    }

    /// Seals again, with the current secrets key, every application's repository secrets (in
    /// every tenant) still sealed with the previous one of a rotation; how many. Run at each
    /// start, as [`Manager::reseal_secrets`] is for the platform's own secrets, so that the
    /// previous key can be dropped once every server has started with the new one.
    pub async fn reseal_repository_secrets(&self) -> Result<usize, ManagerError> {
        let unavailable = |e: nubo_store::StoreError| ManagerError::Unavailable(e.to_string());
        let mut tenants = vec![nubo_model::SUPER_TENANT_ID];
        for t in self
            .store
            .list(
                nubo_model::SUPER_TENANT_ID,
                nubo_model::Kind::Tenant.as_str(),
            )
            .await
            .map_err(unavailable)?
        {
            if let Some(id) = t.body.get("tenantId").and_then(Value::as_i64) {
                tenants.push(id);
            }
        }
        let mut resealed = 0;
        for tenant in tenants {
            resealed += self
                .reseal_stored::<nubo_model::Application>(tenant, |app, body| {
                    let mut changed = 0;
                    let mut failure = None;
                    each_repository(body, &mut |alias, repo| {
                        for field in SECRET_FIELDS {
                            let Some(value) = repo.get_mut(field) else {
                                continue;
                            };
                            match self.reseal_value(value, &context(tenant, app, alias, field)) {
                                Ok(again) => changed += usize::from(again),
                                Err(e) => failure = Some(e.to_string()),
                            }
                        }
                    });
                    match failure {
                        Some(e) => Err(ManagerError::Unavailable(format!(
                            "the repository secrets of application `{app}` (tenant {tenant}) do not open: {e}; start with the key they were sealed with as --secrets-key-previous"
                        ))),
                        None => Ok(changed),
                    }
                })
                .await?;
        }
        // The tenants' repositories signed up to multi-tenant applications.
        Ok(resealed + self.reseal_signup_secrets().await?)
    }

    /// The webhook secret of the repository of cartridge `alias` of an application, opened.
    pub async fn webhook_secret(
        &self,
        tenant: i64,
        application_id: &str,
        alias: &str,
    ) -> Result<Option<String>, ManagerError> {
        Ok(self
            .repository_secret(tenant, application_id, alias, "webhookSecret")
            .await?
            .1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn repository_secrets_are_sealed_again_with_the_new_key_of_a_rotation() {
        use nubo_model::{
            Application, AutoscalingPolicy, Cartridge, DeploymentPolicy, NetworkPartition,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let manager = |key: [u8; 32], previous: Option<[u8; 32]>| {
            let path = path.clone();
            async move { crate::keyed_manager(&path, "local", key, previous).await }
        };
        let old = manager([1; 32], None).await;
        let t = nubo_model::SUPER_TENANT_ID;
        let add = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
        old.add::<AutoscalingPolicy>(
            t,
            &add(json!({"id": "asp", "loadThresholds": {"memoryConsumption": {"threshold": 90}}})),
        )
        .await
        .unwrap();
        old.add::<NetworkPartition>(
            t,
            &add(json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}]})),
        )
        .await
        .unwrap();
        old.add::<DeploymentPolicy>(t, &add(json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}))).await.unwrap();
        old.add::<Cartridge>(
            t,
            &add(json!({"type": "web", "category": "x", "host": "localhost",
            "iaasProvider": [{"type": "local", "imageId": "true"}]})),
        )
        .await
        .unwrap();
        old.add::<Application>(t, &add(json!({"applicationId": "app", "multiTenant": true, "components": {"cartridges": [
            {"type": "web", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "web",
              "autoscalingPolicy": "asp", "deploymentPolicy": "dp",
              "artifactRepository": {"repoUrl": "https://git.local/x.git", "repoUsername": "u",
                "repoPassword": "pw-1", "webhookSecret": "hook-1"}}}]}}))).await.unwrap();
        // A signup's repository secrets, and a mapped domain's private key.
        old.add_signup(
            t,
            "app",
            &add(json!({"artifactRepositories": [{"alias": "web",
            "repoUrl": "https://git.local/t.git", "repoUsername": "t", "repoPassword": "pw-t",
            "webhookSecret": "hook-t"}]})),
        )
        .await
        .unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["shop.t.example".to_owned()]).unwrap();
        let key_pem = c.key_pair.serialize_pem();
        old.add_domain_mappings(
            t,
            "app",
            &add(json!({"domainMappings": [{"cartridgeAlias": "web",
            "domainName": "shop.t.example", "certificate": c.cert.pem(), "privateKey": key_pem}]})),
            &[],
        )
        .await
        .unwrap();
        // The new key, the old one still given: the secrets open, and are sealed again.
        let rotating = manager([2; 32], Some([1; 32])).await;
        assert_eq!(rotating.reseal_domain_certificates().await.unwrap(), 1);
        assert_eq!(rotating.reseal_domain_certificates().await.unwrap(), 0);
        let access = rotating
            .repository_access(t, "app", "web")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(access.repo_password.as_deref(), Some("pw-1"));
        assert_eq!(rotating.reseal_repository_secrets().await.unwrap(), 4);
        assert_eq!(
            rotating.reseal_repository_secrets().await.unwrap(),
            0,
            "once"
        );
        // The old key dropped: they still open.
        let new = manager([2; 32], None).await;
        let access = new
            .repository_access(t, "app", "web")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(access.repo_password.as_deref(), Some("pw-1"));
        assert_eq!(
            new.webhook_secret(t, "app", "web")
                .await
                .unwrap()
                .as_deref(),
            Some("hook-1")
        );
        let signed = new.signup_repositories("app", "web").await.unwrap();
        assert_eq!(signed[0].1.repo_password.as_deref(), Some("pw-t"));
        let hooks = new.signup_hooks(|u| u.ends_with("/t.git")).await.unwrap();
        assert_eq!(hooks[0].webhook_secret.as_deref(), Some("hook-t"));
        let cert = new
            .domain_certificate("shop.t.example")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cert.private_key, key_pem);
        // A server with neither key says what to do.
        let lost = manager([3; 32], None).await;
        let e = lost
            .reseal_repository_secrets()
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("--secrets-key-previous"), "{e}");
    }

    #[test]
    fn every_repository_is_found_groups_included() {
        let mut app = json!({"components": {
            "cartridges": [{"subscribableInfo": {"alias": "a", "artifactRepository": {"repoUrl": "u1"}}}],
            "groups": [{"cartridges": [{"subscribableInfo": {"alias": "b"}}],
                "groups": [{"cartridges": [{"subscribableInfo": {"alias": "c", "artifactRepository": {"repoUrl": "u2"}}}]}]}]}});
        let mut seen = Vec::new();
        each_repository(&mut app, &mut |alias, repo| {
            seen.push((alias.to_owned(), repo["repoUrl"].clone()))
        });
        assert_eq!(
            seen,
            [("a".to_owned(), json!("u1")), ("c".to_owned(), json!("u2"))]
        );
    }
}
