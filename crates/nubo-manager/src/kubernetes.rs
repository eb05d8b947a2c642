//! The hosts of a Kubernetes cluster (Stratos' `/kubernetesClusters/{id}/minion`, `/hosts`,
//! `/master`): each edit is a read-modify-write of the cluster artifact through
//! [`Manager::edit`], so that two concurrent edits never lose one.

use nubo_model::{Kind, KubernetesCluster, KubernetesHost, Problems};

use crate::{Manager, ManagerError};

/// Parses and checks a host from a request body.
pub fn parse_host(body: &[u8]) -> Result<KubernetesHost, ManagerError> {
    let host: KubernetesHost =
        nubo_model::json::from_slice(body).map_err(|error| ManagerError::Parse {
            kind: Kind::KubernetesCluster,
            error,
        })?;
    let mut p = Problems::default();
    p.require_id("hostId", &host.host_id);
    p.require_text("hostname", &host.hostname);
    p.into_result().map_err(|errors| ManagerError::Invalid {
        kind: Kind::KubernetesCluster,
        errors,
    })?;
    Ok(host)
}

fn has_host(c: &KubernetesCluster, host_id: &str) -> bool {
    c.kubernetes_master.host_id == host_id
        || c.kubernetes_hosts
            .iter()
            .flatten()
            .any(|h| h.host_id == host_id)
}

impl Manager {
    /// Adds a host (a minion) to a Kubernetes cluster: `Invalid` when the cluster has a host of
    /// that id already.
    pub async fn add_kubernetes_host(
        &self,
        tenant: i64,
        cluster_id: &str,
        host: KubernetesHost,
    ) -> Result<(), ManagerError> {
        self.edit::<KubernetesCluster, ()>(tenant, cluster_id, |c| {
            if has_host(c, &host.host_id) {
                return Err(ManagerError::StateConflict(format!(
                    "kubernetes cluster `{cluster_id}` already has a host `{}`",
                    host.host_id
                )));
            }
            c.kubernetes_hosts
                .get_or_insert_with(Vec::new)
                .push(host.clone());
            Ok(())
        })
        .await
    }

    /// Replaces the master of a Kubernetes cluster.
    pub async fn set_kubernetes_master(
        &self,
        tenant: i64,
        cluster_id: &str,
        host: KubernetesHost,
    ) -> Result<(), ManagerError> {
        self.edit::<KubernetesCluster, ()>(tenant, cluster_id, |c| {
            c.kubernetes_master = host.clone();
            Ok(())
        })
        .await
    }

    /// Replaces the host of that id in whichever of the tenant's clusters has it; `false` when
    /// none does.
    pub async fn update_kubernetes_host(
        &self,
        tenant: i64,
        host: KubernetesHost,
    ) -> Result<bool, ManagerError> {
        for c in self.list::<KubernetesCluster>(tenant).await? {
            if !c
                .kubernetes_hosts
                .iter()
                .flatten()
                .any(|h| h.host_id == host.host_id)
            {
                continue;
            }
            let replaced = self
                .edit::<KubernetesCluster, bool>(tenant, &c.cluster_id, |c| {
                    match c
                        .kubernetes_hosts
                        .iter_mut()
                        .flatten()
                        .find(|h| h.host_id == host.host_id)
                    {
                        Some(h) => {
                            *h = host.clone();
                            Ok(true)
                        }
                        None => Ok(false),
                    }
                })
                .await?;
            if replaced {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes a host from a Kubernetes cluster; `false` when it has no such host.
    pub async fn remove_kubernetes_host(
        &self,
        tenant: i64,
        cluster_id: &str,
        host_id: &str,
    ) -> Result<bool, ManagerError> {
        self.edit::<KubernetesCluster, bool>(tenant, cluster_id, |c| {
            let hosts = c.kubernetes_hosts.get_or_insert_with(Vec::new);
            let before = hosts.len();
            hosts.retain(|h| h.host_id != host_id);
            Ok(hosts.len() != before)
        })
        .await
    }
}

/// How the `kubernetes` provider reaches a registered cluster: the cluster's properties, its
/// credentials opened.
#[derive(Clone, PartialEq, Eq)]
pub struct KubernetesAccess {
    /// `apiServer`, else `https://<master's private address, else host name>:6443`.
    pub api_server: String,
    /// `namespace` (else the kubeconfig's, else `default`).
    pub namespace: Option<String>,
    /// `token`: a bearer token (opened).
    pub token: Option<String>,
    /// `caCert`: the API server's authority (PEM).
    pub ca_cert: Option<String>,
    /// `kubeconfig`: a kubeconfig's text (opened); it wins over the three above.
    pub kubeconfig: Option<String>,
    /// The node ports services may take (`portRange`, else Kubernetes' 30000-32767).
    pub port_range: (u16, u16),
}

impl std::fmt::Debug for KubernetesAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesAccess")
            .field("api_server", &self.api_server)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The sealing context of a cluster's credential: a sealed value copied elsewhere does not open.
fn context(tenant: i64, cluster_id: &str, property: &str) -> String {
    format!("kubernetesCluster/{tenant}/{cluster_id}/{property}")
}

impl Manager {
    /// Seals a Kubernetes cluster document's credentials (`token`, `kubeconfig`) in place
    /// before it is stored; one left out keeps the stored version's.
    pub(crate) fn seal_kubernetes_secrets(
        &self,
        tenant: i64,
        cluster_id: &str,
        body: &mut serde_json::Value,
        previous: Option<&serde_json::Value>,
    ) -> Result<(), ManagerError> {
        use serde_json::Value;
        let props = body.as_object_mut().map(|o| {
            o.entry("property")
                .or_insert_with(|| Value::Array(Vec::new()))
        });
        let Some(Value::Array(props)) = props else {
            return Ok(());
        };
        for p in props.iter_mut() {
            let Some(name) = p.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            if !nubo_model::KUBERNETES_SECRET_PROPERTIES.contains(&name.as_str()) {
                continue;
            }
            let plain = p
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let sealed = self
                .secrets_key
                .seal(&context(tenant, cluster_id, &name), &plain)
                .map_err(|e| ManagerError::Unavailable(format!("cannot seal `{name}`: {e}")))?;
            p["value"] = Value::String(sealed);
        }
        let present: Vec<String> = props
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect();
        for old in previous
            .and_then(|b| b.get("property"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = old.get("name").and_then(Value::as_str)
                && nubo_model::KUBERNETES_SECRET_PROPERTIES.contains(&name)
                && !present.iter().any(|p| p == name)
            {
                props.push(old.clone());
            }
        }
        if props.is_empty() {
            body.as_object_mut().map(|o| o.remove("property"));
        }
        Ok(())
    }

    /// The ids of the platform's Kubernetes clusters (the super tenant's: the `kubernetes`
    /// provider runs members on those only).
    pub async fn kubernetes_cluster_ids(&self) -> Result<Vec<String>, ManagerError> {
        Ok(self
            .list::<KubernetesCluster>(nubo_model::SUPER_TENANT_ID)
            .await?
            .into_iter()
            .filter(|c| !c.cluster_id.is_empty())
            .map(|c| c.cluster_id)
            .collect())
    }

    /// How to reach the platform's Kubernetes cluster `cluster_id`, its credentials opened.
    pub async fn kubernetes_access(
        &self,
        cluster_id: &str,
    ) -> Result<KubernetesAccess, ManagerError> {
        let tenant = nubo_model::SUPER_TENANT_ID;
        let c: KubernetesCluster = self.get(tenant, cluster_id).await?;
        let prop = |name: &str| {
            c.property
                .iter()
                .flatten()
                .find(|p| p.name == name)
                .map(|p| p.value.clone())
                .filter(|v| !v.is_empty())
        };
        let open = |name: &str| -> Result<Option<String>, ManagerError> {
            match prop(name) {
                Some(sealed) => Ok(Some(
                    self.secrets_key
                        .open(&context(tenant, cluster_id, name), &sealed)
                        .map_err(|e| {
                            ManagerError::Unavailable(format!(
                                "the {name} of kubernetes cluster `{cluster_id}` does not open: {e}"
                            ))
                        })?
                        .0,
                )),
                None => Ok(None),
            }
        };
        let master = &c.kubernetes_master;
        let host = master
            .private_ip_address
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| master.hostname.clone());
        Ok(KubernetesAccess {
            api_server: prop("apiServer").unwrap_or_else(|| format!("https://{host}:6443")),
            namespace: prop("namespace"),
            token: open("token")?,
            ca_cert: prop("caCert"),
            kubeconfig: open("kubeconfig")?,
            port_range: c
                .port_range
                .as_ref()
                .map_or((30000, 32767), |r| (r.lower, r.upper)),
        })
    }
}

impl Manager {
    /// Seals again, with the current secrets key, the credentials of the platform's Kubernetes
    /// clusters still sealed with the previous one of a rotation; how many (run at each start,
    /// as [`Manager::reseal_repository_secrets`]).
    pub async fn reseal_kubernetes_secrets(&self) -> Result<usize, ManagerError> {
        use serde_json::Value;
        let tenant = nubo_model::SUPER_TENANT_ID;
        self.reseal_stored::<KubernetesCluster>(tenant, |id, body| {
            let mut changed = 0;
            for p in body
                .get_mut("property")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(name) = p.get("name").and_then(Value::as_str).map(str::to_owned) else {
                    continue;
                };
                if !nubo_model::KUBERNETES_SECRET_PROPERTIES.contains(&name.as_str()) {
                    continue;
                }
                let ctx = context(tenant, id, &name);
                changed += usize::from(self.reseal_value(&mut p["value"], &ctx).map_err(|e| {
                    ManagerError::Unavailable(format!(
                        "the {name} of kubernetes cluster `{id}` does not open: {e}; start with the key it was sealed with as --secrets-key-previous"
                    ))
                })?);
            }
            Ok(changed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[tokio::test]
    async fn a_cluster_s_credentials_are_sealed_kept_and_sealed_again_after_a_rotation() {
        use nubo_model::KubernetesCluster;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let manager = |key: [u8; 32], previous: Option<[u8; 32]>| {
            let path = path.clone();
            async move { crate::keyed_manager(&path, "kubernetes", key, previous).await }
        };
        let t = nubo_model::SUPER_TENANT_ID;
        let body = |props: serde_json::Value| {
            serde_json::to_vec(&json!({"clusterId": "k1",
                "kubernetesMaster": {"hostId": "m", "hostname": "m.local", "privateIPAddress": "10.0.0.1"},
                "property": props}))
            .unwrap()
        };
        let old = manager([1; 32], None).await;
        old.add::<KubernetesCluster>(
            t,
            &body(
                json!([{"name": "token", "value": "t-1"}, {"name": "namespace", "value": "apps"}]),
            ),
        )
        .await
        .unwrap();
        // Sealed in the store; opened for the provider; the API's view has no token.
        let stored = old
            .store
            .get(
                t,
                &nubo_store::Key {
                    kind: "kubernetesCluster".into(),
                    id: "k1".into(),
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.body.to_string().contains("t-1"), "{}", stored.body);
        let access = old.kubernetes_access("k1").await.unwrap();
        assert_eq!(access.token.as_deref(), Some("t-1"));
        assert_eq!(access.api_server, "https://10.0.0.1:6443");
        assert_eq!(access.namespace.as_deref(), Some("apps"));
        let mut served: KubernetesCluster = old.get(t, "k1").await.unwrap();
        nubo_model::Artifact::redact_secrets(&mut served);
        assert!(!serde_json::to_string(&served).unwrap().contains("token"));
        // An update that leaves the token out keeps it.
        old.update::<KubernetesCluster>(t, &body(json!([{"name": "namespace", "value": "other"}])))
            .await
            .unwrap();
        let access = old.kubernetes_access("k1").await.unwrap();
        assert_eq!(access.token.as_deref(), Some("t-1"));
        assert_eq!(access.namespace.as_deref(), Some("other"));
        // A rotation: sealed again once, then opened with the new key alone.
        let rotating = manager([2; 32], Some([1; 32])).await;
        assert_eq!(rotating.reseal_kubernetes_secrets().await.unwrap(), 1);
        assert_eq!(rotating.reseal_kubernetes_secrets().await.unwrap(), 0);
        let new = manager([2; 32], None).await;
        assert_eq!(
            new.kubernetes_access("k1").await.unwrap().token.as_deref(),
            Some("t-1")
        );
    }
}
