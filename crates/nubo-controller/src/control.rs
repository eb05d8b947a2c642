//! The control plane as the API sees it: the controller's state and its commands, whether the
//! controller runs in this process ([`ControllerHandle`]) or in another one ([`RemoteControl`]:
//! commands on the bus's `control` topic, state read from the store, where the controller writes
//! it before acting).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nubo_bus::EventBus;
use nubo_events::Event;
use nubo_store::{Key, Store};

use crate::plan::DeploymentPlan;
use crate::runtime::{ControllerHandle, STATE_ID, STATE_KIND, STATE_TENANT};
use crate::state::{ControllerState, DeploymentStatus};

/// How long a command to a controller in another process may take to show in its state.
pub const REMOTE_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// The controller, wherever it runs.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// The controller's state (`None`: it cannot be read now).
    async fn state(&self) -> Option<ControllerState>;
    /// Deploys an application; returns once the controller has taken it in.
    async fn deploy(&self, plan: DeploymentPlan) -> Result<(), String>;
    /// Undeploys an application.
    async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), String>;
    /// Applies changed artifacts to a running application.
    async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), String>;
    /// An application's deployment status (`None`: not deployed).
    async fn status(&self, application_id: &str) -> Option<DeploymentStatus> {
        self.state()
            .await?
            .deployments
            .get(application_id)
            .map(|d| d.status)
    }
    /// One cluster of the topology.
    async fn cluster(&self, cluster_id: &str) -> Option<nubo_events::Cluster> {
        self.state()
            .await?
            .topology
            .clusters
            .get(cluster_id)
            .cloned()
    }
}

#[async_trait]
impl ControlPlane for ControllerHandle {
    async fn state(&self) -> Option<ControllerState> {
        Some(self.snapshot())
    }
    async fn deploy(&self, plan: DeploymentPlan) -> Result<(), String> {
        ControllerHandle::deploy(self, plan).await
    }
    async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), String> {
        ControllerHandle::undeploy(self, application_id, force).await
    }
    async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), String> {
        ControllerHandle::update_plan(self, plan).await
    }
    async fn status(&self, application_id: &str) -> Option<DeploymentStatus> {
        ControllerHandle::status(self, application_id)
    }
    async fn cluster(&self, cluster_id: &str) -> Option<nubo_events::Cluster> {
        self.read(|s| s.topology.clusters.get(cluster_id).cloned())
            .flatten()
    }
}

/// A controller in another process: commands through the bus, state from the store.
pub struct RemoteControl {
    store: Arc<dyn Store>,
    events: EventBus,
}

impl RemoteControl {
    /// Over this store and bus (the controller's).
    pub fn new(store: Arc<dyn Store>, events: EventBus) -> Self {
        RemoteControl { store, events }
    }

    async fn send(&self, e: Event) -> Result<(), String> {
        self.events
            .publish(&e)
            .await
            .map_err(|err| format!("cannot reach the controller through the bus: {err}"))
    }

    /// Waits until the controller's state satisfies `done`.
    async fn until(
        &self,
        what: &str,
        done: impl Fn(&ControllerState) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + REMOTE_COMMAND_TIMEOUT;
        loop {
            if self.state().await.is_some_and(|s| done(&s)) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "no controller took the {what} in within {} s: is a controller running on this store and bus (a server with the `controller` component, or the --ha leader)?",
                    REMOTE_COMMAND_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn plan_json(plan: &DeploymentPlan) -> Result<serde_json::Value, String> {
    serde_json::to_value(plan).map_err(|e| format!("cannot encode the deployment plan: {e}"))
}

#[async_trait]
impl ControlPlane for RemoteControl {
    async fn state(&self) -> Option<ControllerState> {
        let rec = self
            .store
            .get(STATE_TENANT, &Key::new(STATE_KIND, STATE_ID))
            .await
            .ok()?;
        match rec {
            Some(r) => serde_json::from_value(r.body).ok(),
            None => Some(ControllerState::default()),
        }
    }

    async fn deploy(&self, plan: DeploymentPlan) -> Result<(), String> {
        let app = plan.application_id.clone();
        self.send(Event::ControlDeploy {
            plan: plan_json(&plan)?,
        })
        .await?;
        self.until("deployment", |s| s.deployments.contains_key(&app))
            .await
    }

    async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), String> {
        self.send(Event::ControlUndeploy {
            application_id: application_id.to_owned(),
            force,
        })
        .await?;
        self.until("undeployment", |s| {
            s.deployments
                .get(application_id)
                .is_none_or(|d| d.status == DeploymentStatus::Undeploying)
        })
        .await
    }

    async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), String> {
        let app = plan.application_id.clone();
        let wanted = plan.clone();
        self.send(Event::ControlUpdatePlan {
            plan: plan_json(&plan)?,
        })
        .await?;
        self.until("change", |s| {
            s.deployments.get(&app).is_none_or(|d| {
                d.plan.clusters == wanted.clusters && d.plan.scopes == wanted.scopes
            })
        })
        .await
    }
}
