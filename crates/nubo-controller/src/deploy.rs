//! Deploying, owned in one place: the API calls [`Deployments`] once per request; it asks the
//! [`Planner`] (the manager) for the plan and the [`ControlPlane`] (this process's controller or
//! another's) to carry it out, and re-plans running applications when their artifacts change.

use std::sync::Arc;

use nubo_events::view::{ApplicationRuntime, MemberPage};
use nubo_plan::{DeploymentStatus, Planner, runtime_id, split_runtime_id};

use crate::control::{ControlError, ControlPlane};

/// Why a deployment request failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError<E: std::error::Error + 'static> {
    /// The planner refused (the application or a policy is missing or invalid).
    #[error(transparent)]
    Plan(E),
    /// No controller serves this server (deploying is not available here).
    #[error("no cloud controller runs in this server: deployment is not available here")]
    NoController,
    /// The application is deployed: it cannot be removed.
    #[error("application `{0}` is deployed: undeploy it first")]
    Deployed(String),
    /// The controller refused or could not be reached.
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// The deploy service.
pub struct Deployments<P> {
    planner: Arc<P>,
    control: Option<Arc<dyn ControlPlane>>,
}

impl<P> Clone for Deployments<P> {
    fn clone(&self) -> Self {
        Deployments {
            planner: self.planner.clone(),
            control: self.control.clone(),
        }
    }
}

type Result<T, P> = std::result::Result<T, DeployError<<P as Planner>::Error>>;

/// The controller's errors about a runtime id, told with the application's own id (a tenant
/// never sees another's, nor its own runtime id).
fn named(e: ControlError, application_id: &str) -> ControlError {
    match e {
        ControlError::AlreadyDeployed(_) => ControlError::AlreadyDeployed(application_id.into()),
        ControlError::NotDeployed(_) => ControlError::NotDeployed(application_id.into()),
        other => other,
    }
}

impl<P: Planner> Deployments<P> {
    /// Over `planner`, carried out by `control` (`None`: this server cannot deploy).
    pub fn new(planner: Arc<P>, control: Option<Arc<dyn ControlPlane>>) -> Self {
        Deployments { planner, control }
    }

    fn control(&self) -> Result<&Arc<dyn ControlPlane>, P> {
        self.control.as_ref().ok_or(DeployError::NoController)
    }

    /// Deploys `tenant`'s application with an application policy. What is wrong with the request
    /// is said first (the planner's errors), then whether this server can deploy.
    pub async fn deploy(
        &self,
        tenant: i64,
        application_id: &str,
        policy_id: &str,
    ) -> Result<(), P> {
        let plan = self
            .planner
            .plan(tenant, application_id, policy_id)
            .await
            .map_err(DeployError::Plan)?;
        Ok(self
            .control()?
            .deploy(plan)
            .await
            .map_err(|e| named(e, application_id))?)
    }

    /// Undeploys `tenant`'s application (draining its members unless `force`).
    pub async fn undeploy(&self, tenant: i64, application_id: &str, force: bool) -> Result<(), P> {
        let control = self.control()?;
        self.planner
            .application(tenant, application_id)
            .await
            .map_err(DeployError::Plan)?;
        Ok(control
            .undeploy(&runtime_id(tenant, application_id), force)
            .await
            .map_err(|e| named(e, application_id))?)
    }

    /// A tenant's applications get traffic again (`suspended: false`), or no more (its tenant
    /// was deactivated; its members keep running). Nothing to do without a controller here.
    pub async fn tenant_routing(&self, tenant: i64, suspended: bool) -> Result<(), P> {
        match &self.control {
            Some(c) => Ok(c.tenant_routing(tenant, suspended).await?),
            None => Ok(()),
        }
    }

    /// `tenant`'s application's deployment status (`None`: not deployed, or no controller here).
    pub async fn status(
        &self,
        tenant: i64,
        application_id: &str,
    ) -> Result<Option<DeploymentStatus>, P> {
        match &self.control {
            Some(c) => Ok(c.status(&runtime_id(tenant, application_id)).await?),
            None => Ok(None),
        }
    }

    /// `tenant`'s application's deployment status and its status in the topology, in one read
    /// (`None`: not deployed, or no controller here).
    pub async fn application_status(
        &self,
        tenant: i64,
        application_id: &str,
    ) -> Result<Option<(DeploymentStatus, nubo_events::InstanceStatus)>, P> {
        match &self.control {
            Some(c) => Ok(c
                .application_status(&runtime_id(tenant, application_id))
                .await?),
            None => Ok(None),
        }
    }

    /// Refuses while `tenant`'s application is deployed (before its definition is removed).
    pub async fn ensure_not_deployed(&self, tenant: i64, application_id: &str) -> Result<(), P> {
        match self.status(tenant, application_id).await? {
            Some(_) => Err(DeployError::Deployed(application_id.to_owned())),
            None => Ok(()),
        }
    }

    /// The runtime view of `tenant`'s application (`ControlError::NotDeployed` when it is not).
    pub async fn runtime(
        &self,
        tenant: i64,
        application_id: &str,
    ) -> Result<ApplicationRuntime, P> {
        self.planner
            .application(tenant, application_id)
            .await
            .map_err(DeployError::Plan)?;
        let mut view = self
            .control()?
            .runtime(&runtime_id(tenant, application_id))
            .await?
            .ok_or_else(|| ControlError::NotDeployed(application_id.to_owned()))?;
        view.id = application_id.to_owned();
        Ok(view)
    }

    /// A cluster of `tenant`'s applications (`None`: no such cluster, or another tenant's).
    pub async fn cluster(
        &self,
        tenant: i64,
        cluster_id: &str,
    ) -> Result<Option<nubo_events::Cluster>, P> {
        let Some(c) = &self.control else {
            return Ok(None);
        };
        Ok(c.cluster(cluster_id)
            .await?
            .filter(|c| c.tenant_id == tenant))
    }

    /// A page of the members of `tenant`'s application (`ControlError::NotDeployed` when it is
    /// not deployed).
    pub async fn members(
        &self,
        tenant: i64,
        application_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<MemberPage, P> {
        self.planner
            .application(tenant, application_id)
            .await
            .map_err(DeployError::Plan)?;
        self.control()?
            .members(&runtime_id(tenant, application_id), offset, limit)
            .await?
            .ok_or_else(|| ControlError::NotDeployed(application_id.to_owned()).into())
    }

    /// Re-plans `tenant`'s running applications after an artifact they may use changed, so that
    /// thresholds, minimum and maximum members, placement and group bounds take effect at once.
    /// Returns what happened to each application whose plan changed, for the answer.
    pub async fn replan_running(&self, tenant: i64) -> Vec<String> {
        let Some(c) = self.control.as_ref() else {
            return Vec::new();
        };
        let running = match c.deployments(tenant).await {
            Ok(r) => r,
            Err(_) => {
                return vec!["the running applications could not be read: the change applies at their next deployment".into()];
            }
        };
        let mut notes = Vec::new();
        for d in running {
            if d.status != DeploymentStatus::Deployed {
                continue;
            }
            let app = split_runtime_id(&d.plan.application_id).1;
            match self
                .planner
                .plan(tenant, app, &d.plan.application_policy)
                .await
            {
                Ok(mut plan) => {
                    plan.instances = d.plan.instances.clone();
                    if plan == d.plan {
                        continue;
                    }
                    if plan.cluster_ids() != d.plan.cluster_ids() {
                        notes.push(format!("application `{app}` runs other clusters than its new definition: the change takes effect when it is deployed again"));
                    } else {
                        match c.update_plan(plan).await {
                            Ok(()) => notes.push(format!("applied to running application `{app}`")),
                            Err(e) => notes.push(format!(
                                "running application `{app}` keeps its current settings for now: {e}"
                            )),
                        }
                    }
                }
                Err(e) => notes.push(format!(
                    "running application `{app}` keeps its current settings: {e}"
                )),
            }
        }
        notes
    }
}
