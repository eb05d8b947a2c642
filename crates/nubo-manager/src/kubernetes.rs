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
