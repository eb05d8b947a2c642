//! The control plane as the API sees it: the controller's state and its commands, whether the
//! controller runs in this process ([`ControllerHandle`]) or in another one ([`RemoteControl`]:
//! commands on the bus's `control` topic, state read from the store, where the controller writes
//! it before acting). An `--ha` server uses [`SwitchableControl`]: remote while it stands by, its
//! own controller from the moment it leads.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use nubo_bus::EventBus;
use nubo_events::view::{ApplicationRuntime, MemberPage};
use nubo_events::{Event, InstanceStatus, Member};
use nubo_store::Store;

use crate::journal::Replica;
use crate::runtime::ControllerHandle;
use crate::state::ControllerState;
use nubo_plan::DeploymentPlan;
use nubo_plan::DeploymentStatus;

/// How long a command to a controller in another process may take to show in its state.
pub const REMOTE_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// The lease the `--ha` servers compete for: its holder runs the controller.
pub const CONTROLLER_LEASE: &str = "controller";

/// Where the controller a server's API uses runs, as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlRole {
    /// In this process (no leader election).
    Local,
    /// In another process: this server runs no controller (`--components` without it).
    Remote,
    /// `--ha`: this server holds the controller lease and runs the controller.
    Leader,
    /// `--ha`: another server holds the lease; this one sends its commands there and waits to
    /// take over.
    Standby,
}

impl ControlRole {
    /// Whether the controller runs in this process.
    pub fn runs_here(self) -> bool {
        matches!(self, ControlRole::Local | ControlRole::Leader)
    }
}

/// Why the controller did not take a command in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Deploy: the application is deployed already.
    #[error("application `{0}` is already deployed")]
    AlreadyDeployed(String),
    /// Undeploy or change: the application is not deployed.
    #[error("application `{0}` is not deployed")]
    NotDeployed(String),
    /// Deploy: another application (of any tenant) has one of its host names.
    #[error(
        "host name `{0}` is used by another application: give the cartridge another `host`, or the application another id or alias"
    )]
    HostTaken(String),
    /// The controller cannot be reached or read now (stopped, another process not answering,
    /// the store unreachable); the reason says what to check.
    #[error("{0}")]
    Unavailable(String),
}

/// The deployed applications, as [`ControlPlane::deployments`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSummary {
    /// The plan it runs.
    pub plan: DeploymentPlan,
    /// Its status.
    pub status: DeploymentStatus,
}

fn unreadable() -> ControlError {
    ControlError::Unavailable("the controller's state cannot be read now: retry".into())
}

/// The controller, wherever it runs. The queries read only what they answer; `state` (the whole
/// state) is for tests and tools.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Where the controller runs.
    fn role(&self) -> ControlRole;
    /// The controller's whole state (`None`: it cannot be read now).
    async fn state(&self) -> Option<ControllerState>;
    /// Deploys an application; returns once the controller has taken it in.
    async fn deploy(&self, plan: DeploymentPlan) -> Result<(), ControlError>;
    /// Undeploys an application.
    async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), ControlError>;
    /// Applies changed artifacts to a running application.
    async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), ControlError>;
    /// Routes a tenant's applications, or no more (`suspended`: its tenant was deactivated).
    async fn tenant_routing(&self, tenant_id: i64, suspended: bool) -> Result<(), ControlError> {
        let _ = (tenant_id, suspended);
        Err(ControlError::Unavailable(
            "this controller cannot change a tenant's routing".into(),
        ))
    }
    /// Sets the tenants' domain routes (the whole set).
    async fn domain_routes(
        &self,
        routes: Vec<nubo_events::DomainRoute>,
        signups: Vec<nubo_events::TenantSignup>,
    ) -> Result<(), ControlError> {
        let _ = (routes, signups);
        Err(ControlError::Unavailable(
            "this controller cannot route tenants' domains".into(),
        ))
    }
    /// Updates the artifacts of clusters of a deployed application, member after member.
    async fn update_artifacts(
        &self,
        _application_id: &str,
        _cluster_ids: Vec<String>,
    ) -> Result<(), ControlError> {
        Err(ControlError::Unavailable(
            "this controller cannot update artifacts".into(),
        ))
    }
    /// The clusters of deployed applications whose repository is `url` (`REPO_URL` of their
    /// plan, compared without a trailing `/` or `.git`): `(tenant, application, cluster id,
    /// cluster alias)`.
    async fn clusters_of_repository(
        &self,
        url: &str,
    ) -> Result<Vec<RepositoryCluster>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(clusters_of_repository(&s, url))
    }
    /// Every deployed cluster's host names (the platform's own, which no tenant may map).
    async fn host_names(&self) -> Result<Vec<String>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(host_names(&s))
    }
    /// A tenant's members now, counted per cluster (what its instance quota bounds).
    async fn tenant_members(&self, tenant: i64) -> Result<u32, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(tenant_members(&s, tenant))
    }
    /// The instance time of every (tenant, application, cartridge) until `now_ms`
    /// ([`ControllerState::usage`]).
    async fn usage(
        &self,
        now_ms: u64,
        tenant: Option<i64>,
    ) -> Result<Vec<crate::state::metering::Usage>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(s.usage(now_ms, tenant))
    }
    /// An application's deployment status (`None`: not deployed).
    async fn status(&self, application_id: &str) -> Result<Option<DeploymentStatus>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(s.deployments.get(application_id).map(|d| d.status))
    }
    /// An application's deployment status and its status in the topology (`None`: not deployed).
    async fn application_status(
        &self,
        application_id: &str,
    ) -> Result<Option<(DeploymentStatus, InstanceStatus)>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(s.deployments
            .get(application_id)
            .map(|d| (d.status, d.application_status())))
    }
    /// The deployments of a tenant.
    async fn deployments(&self, tenant: i64) -> Result<Vec<DeploymentSummary>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(summaries(&s, tenant))
    }
    /// One cluster of the topology.
    async fn cluster(
        &self,
        cluster_id: &str,
    ) -> Result<Option<nubo_events::Cluster>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(s.topology.clusters.get(cluster_id).cloned())
    }
    /// The runtime view of an application (`None`: not deployed).
    async fn runtime(
        &self,
        application_id: &str,
    ) -> Result<Option<ApplicationRuntime>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(crate::view::runtime_view(&s, application_id))
    }
    /// A member of the topology, its application's tenant and its cluster's alias (`None`: no
    /// such member now).
    async fn member(&self, member_id: &str) -> Result<Option<MemberIdentity>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(member_of(&s, member_id))
    }
    /// A page of an application's members (`None`: not deployed).
    async fn members(
        &self,
        application_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Option<MemberPage>, ControlError> {
        let s = self.state().await.ok_or_else(unreadable)?;
        Ok(crate::view::member_page(&s, application_id, offset, limit))
    }
}

/// A cluster whose artifacts come from a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryCluster {
    /// The application's tenant.
    pub tenant_id: i64,
    /// The application.
    pub application_id: String,
    /// The cluster.
    pub cluster_id: String,
    /// Its alias in the application.
    pub alias: String,
}

/// A repository URL as compared: without a trailing `/` or `.git`, the scheme and host in
/// lower case.
pub fn normalize_repository_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let host_end = rest.find('/').unwrap_or(rest.len());
            format!(
                "{}://{}{}",
                url[..i].to_ascii_lowercase(),
                rest[..host_end].to_ascii_lowercase(),
                &rest[host_end..]
            )
        }
        None => url.to_owned(),
    }
}

fn tenant_members(s: &ControllerState, tenant: i64) -> u32 {
    s.members_per_tenant().get(&tenant).copied().unwrap_or(0)
}

fn host_names(s: &ControllerState) -> Vec<String> {
    s.topology
        .clusters
        .values()
        .flat_map(|c| c.host_names.iter().cloned())
        .collect()
}

fn clusters_of_repository(s: &ControllerState, url: &str) -> Vec<RepositoryCluster> {
    let wanted = normalize_repository_url(url);
    s.deployments
        .iter()
        .filter(|(_, d)| d.status == DeploymentStatus::Deployed)
        .flat_map(|(app, d)| {
            d.plan.clusters.iter().filter_map(|c| {
                let repo = c.payload.get("REPO_URL")?;
                (normalize_repository_url(repo) == wanted).then(|| RepositoryCluster {
                    tenant_id: d.plan.tenant_id,
                    application_id: app.clone(),
                    cluster_id: c.cluster_id.clone(),
                    alias: c.alias.clone(),
                })
            })
        })
        .collect()
}

/// A member of the topology, with what a caller authenticating it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberIdentity {
    /// The member.
    pub member: Member,
    /// Its application's tenant.
    pub tenant_id: i64,
    /// Its cluster's alias in the application.
    pub alias: String,
}

fn member_of(s: &ControllerState, member_id: &str) -> Option<MemberIdentity> {
    let (cluster, m) = s
        .topology
        .clusters
        .values()
        .find_map(|c| c.members.get(member_id).map(|m| (c, m)))?;
    let tenant_id = s.deployments.get(&m.application_id)?.plan.tenant_id;
    Some(MemberIdentity {
        member: m.clone(),
        tenant_id,
        alias: cluster.alias.clone(),
    })
}

fn summaries(s: &ControllerState, tenant: i64) -> Vec<DeploymentSummary> {
    s.deployments
        .values()
        .filter(|d| d.plan.tenant_id == tenant)
        .map(|d| DeploymentSummary {
            plan: d.plan.clone(),
            status: d.status,
        })
        .collect()
}

#[async_trait]
impl ControlPlane for ControllerHandle {
    fn role(&self) -> ControlRole {
        ControlRole::Local
    }
    async fn state(&self) -> Option<ControllerState> {
        Some(self.snapshot())
    }
    async fn deploy(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        ControllerHandle::deploy(self, plan).await
    }
    async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), ControlError> {
        ControllerHandle::undeploy(self, application_id, force).await
    }
    async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        ControllerHandle::update_plan(self, plan).await
    }
    async fn tenant_routing(&self, tenant_id: i64, suspended: bool) -> Result<(), ControlError> {
        ControllerHandle::tenant_routing(self, tenant_id, suspended).await
    }
    async fn domain_routes(
        &self,
        routes: Vec<nubo_events::DomainRoute>,
        signups: Vec<nubo_events::TenantSignup>,
    ) -> Result<(), ControlError> {
        ControllerHandle::domain_routes(self, routes, signups).await
    }
    async fn status(&self, application_id: &str) -> Result<Option<DeploymentStatus>, ControlError> {
        self.read(|s| s.deployments.get(application_id).map(|d| d.status))
            .ok_or_else(unreadable)
    }
    async fn application_status(
        &self,
        application_id: &str,
    ) -> Result<Option<(DeploymentStatus, InstanceStatus)>, ControlError> {
        self.read(|s| {
            s.deployments
                .get(application_id)
                .map(|d| (d.status, d.application_status()))
        })
        .ok_or_else(unreadable)
    }
    async fn deployments(&self, tenant: i64) -> Result<Vec<DeploymentSummary>, ControlError> {
        self.read(|s| summaries(s, tenant)).ok_or_else(unreadable)
    }
    async fn cluster(
        &self,
        cluster_id: &str,
    ) -> Result<Option<nubo_events::Cluster>, ControlError> {
        self.read(|s| s.topology.clusters.get(cluster_id).cloned())
            .ok_or_else(unreadable)
    }
    async fn member(&self, member_id: &str) -> Result<Option<MemberIdentity>, ControlError> {
        self.read(|s| member_of(s, member_id))
            .ok_or_else(unreadable)
    }
    async fn update_artifacts(
        &self,
        application_id: &str,
        cluster_ids: Vec<String>,
    ) -> Result<(), ControlError> {
        ControllerHandle::update_artifacts(self, application_id, cluster_ids).await
    }
    async fn clusters_of_repository(
        &self,
        url: &str,
    ) -> Result<Vec<RepositoryCluster>, ControlError> {
        self.read(|s| clusters_of_repository(s, url))
            .ok_or_else(unreadable)
    }
    async fn host_names(&self) -> Result<Vec<String>, ControlError> {
        self.read(host_names).ok_or_else(unreadable)
    }
    async fn tenant_members(&self, tenant: i64) -> Result<u32, ControlError> {
        self.read(|s| tenant_members(s, tenant))
            .ok_or_else(unreadable)
    }
    async fn usage(
        &self,
        now_ms: u64,
        tenant: Option<i64>,
    ) -> Result<Vec<crate::state::metering::Usage>, ControlError> {
        self.read(|s| s.usage(now_ms, tenant))
            .ok_or_else(unreadable)
    }
    async fn runtime(
        &self,
        application_id: &str,
    ) -> Result<Option<ApplicationRuntime>, ControlError> {
        // Under the lock, only a copy of this application's part of the state; the tree is
        // built (and later serialized) without holding up the controller.
        let part = self
            .read(|s| s.application_part(application_id))
            .ok_or_else(unreadable)?;
        Ok(part.and_then(|p| crate::view::runtime_view(&p, application_id)))
    }
    async fn members(
        &self,
        application_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Option<MemberPage>, ControlError> {
        self.read(|s| crate::view::member_page(s, application_id, offset, limit))
            .ok_or_else(unreadable)
    }
}

/// A controller in another process: commands through the bus; its state read from the store
/// into a replica kept current from the controller's journal (each read costs what changed since
/// the last, and one small query when nothing did).
pub struct RemoteControl {
    store: Arc<dyn Store>,
    events: EventBus,
    replica: tokio::sync::Mutex<Replica>,
}

impl RemoteControl {
    /// Over this store and bus (the controller's).
    pub fn new(store: Arc<dyn Store>, events: EventBus) -> Self {
        RemoteControl {
            store,
            events,
            replica: tokio::sync::Mutex::new(Replica::default()),
        }
    }

    /// Runs `f` over the controller's state as the store holds it now (`None` when the store
    /// cannot be read), and says whether it changed since the previous read.
    pub async fn read<R>(&self, f: impl FnOnce(&ControllerState, bool) -> R) -> Option<R> {
        let mut replica = self.replica.lock().await;
        match replica.catch_up(self.store.as_ref()).await {
            Ok(changed) => Some(f(&replica.state, changed)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the controller's state from the store");
                None
            }
        }
    }

    async fn send(&self, e: Event) -> Result<(), ControlError> {
        self.events.publish(&e).await.map_err(|err| {
            ControlError::Unavailable(format!(
                "cannot reach the controller through the bus: {err}"
            ))
        })
    }

    /// Waits until the controller's state satisfies `done`.
    async fn until(
        &self,
        what: &str,
        done: impl Fn(&ControllerState) -> bool,
    ) -> Result<(), ControlError> {
        let deadline = tokio::time::Instant::now() + REMOTE_COMMAND_TIMEOUT;
        loop {
            if self.read(|s, _| done(s)).await == Some(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ControlError::Unavailable(format!(
                    "no controller took the {what} in within {} s: is a controller running on this store and bus (a server with the `controller` component, or the --ha leader)?",
                    REMOTE_COMMAND_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl ControlPlane for RemoteControl {
    fn role(&self) -> ControlRole {
        ControlRole::Remote
    }

    async fn state(&self) -> Option<ControllerState> {
        self.read(|s, _| s.clone()).await
    }

    async fn status(&self, application_id: &str) -> Result<Option<DeploymentStatus>, ControlError> {
        self.read(|s, _| s.deployments.get(application_id).map(|d| d.status))
            .await
            .ok_or_else(unreadable)
    }

    async fn application_status(
        &self,
        application_id: &str,
    ) -> Result<Option<(DeploymentStatus, InstanceStatus)>, ControlError> {
        self.read(|s, _| {
            s.deployments
                .get(application_id)
                .map(|d| (d.status, d.application_status()))
        })
        .await
        .ok_or_else(unreadable)
    }

    async fn deployments(&self, tenant: i64) -> Result<Vec<DeploymentSummary>, ControlError> {
        self.read(|s, _| summaries(s, tenant))
            .await
            .ok_or_else(unreadable)
    }

    async fn cluster(
        &self,
        cluster_id: &str,
    ) -> Result<Option<nubo_events::Cluster>, ControlError> {
        self.read(|s, _| s.topology.clusters.get(cluster_id).cloned())
            .await
            .ok_or_else(unreadable)
    }

    async fn member(&self, member_id: &str) -> Result<Option<MemberIdentity>, ControlError> {
        self.read(|s, _| member_of(s, member_id))
            .await
            .ok_or_else(unreadable)
    }

    async fn clusters_of_repository(
        &self,
        url: &str,
    ) -> Result<Vec<RepositoryCluster>, ControlError> {
        self.read(|s, _| clusters_of_repository(s, url))
            .await
            .ok_or_else(unreadable)
    }

    async fn host_names(&self) -> Result<Vec<String>, ControlError> {
        self.read(|s, _| host_names(s)).await.ok_or_else(unreadable)
    }

    async fn tenant_members(&self, tenant: i64) -> Result<u32, ControlError> {
        self.read(|s, _| tenant_members(s, tenant))
            .await
            .ok_or_else(unreadable)
    }

    async fn usage(
        &self,
        now_ms: u64,
        tenant: Option<i64>,
    ) -> Result<Vec<crate::state::metering::Usage>, ControlError> {
        self.read(|s, _| s.usage(now_ms, tenant))
            .await
            .ok_or_else(unreadable)
    }

    async fn update_artifacts(
        &self,
        application_id: &str,
        cluster_ids: Vec<String>,
    ) -> Result<(), ControlError> {
        self.send(Event::ControlUpdateArtifacts {
            application_id: application_id.to_owned(),
            cluster_ids,
        })
        .await
    }

    async fn runtime(
        &self,
        application_id: &str,
    ) -> Result<Option<ApplicationRuntime>, ControlError> {
        self.read(|s, _| crate::view::runtime_view(s, application_id))
            .await
            .ok_or_else(unreadable)
    }

    async fn members(
        &self,
        application_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Option<MemberPage>, ControlError> {
        self.read(|s, _| crate::view::member_page(s, application_id, offset, limit))
            .await
            .ok_or_else(unreadable)
    }

    async fn deploy(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        let app = plan.application_id.clone();
        if self.status(&app).await?.is_some() {
            return Err(ControlError::AlreadyDeployed(app));
        }
        if let Some(host) = self
            .read(|s, _| s.host_conflict(&plan))
            .await
            .ok_or_else(unreadable)?
        {
            return Err(ControlError::HostTaken(host));
        }
        self.send(Event::ControlDeploy {
            plan: Box::new(plan),
        })
        .await?;
        self.until("deployment", |s| s.deployments.contains_key(&app))
            .await
    }

    async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), ControlError> {
        if self.status(application_id).await?.is_none() {
            return Err(ControlError::NotDeployed(application_id.to_owned()));
        }
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

    async fn domain_routes(
        &self,
        mut routes: Vec<nubo_events::DomainRoute>,
        mut signups: Vec<nubo_events::TenantSignup>,
    ) -> Result<(), ControlError> {
        routes.sort();
        routes.dedup();
        signups.sort();
        signups.dedup();
        self.send(Event::ControlDomainRoutes {
            routes: routes.clone(),
            signups: signups.clone(),
        })
        .await?;
        self.until("domain routes", |s| {
            s.topology.domain_routes == routes && s.topology.tenant_signups == signups
        })
        .await
    }

    async fn tenant_routing(&self, tenant_id: i64, suspended: bool) -> Result<(), ControlError> {
        self.send(Event::ControlTenantRouting {
            tenant_id,
            suspended,
        })
        .await?;
        self.until("tenant routing", |s| {
            s.topology.suspended_tenants.contains(&tenant_id) == suspended
        })
        .await
    }

    async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        let app = plan.application_id.clone();
        let wanted = plan.clone();
        self.send(Event::ControlUpdatePlan {
            plan: Box::new(plan),
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

/// The control plane of an `--ha` server: another server's controller (a [`RemoteControl`])
/// while this one stands by, its own from the moment it leads ([`SwitchableControl::lead`], once).
pub struct SwitchableControl {
    remote: Arc<dyn ControlPlane>,
    local: OnceLock<Arc<dyn ControlPlane>>,
}

/// [`SwitchableControl::lead`] called a second time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("this server already leads: its own controller serves the API")]
pub struct AlreadyLeading;

impl SwitchableControl {
    /// A standby's control plane: `remote` until [`Self::lead`].
    pub fn new(remote: Arc<dyn ControlPlane>) -> Self {
        SwitchableControl {
            remote,
            local: OnceLock::new(),
        }
    }

    /// An `--ha` server that led from the start: its own controller serves.
    pub fn leading(local: Arc<dyn ControlPlane>) -> Self {
        SwitchableControl {
            remote: local.clone(),
            local: OnceLock::from(local),
        }
    }

    /// From now on, this process's controller serves.
    pub fn lead(&self, local: Arc<dyn ControlPlane>) -> Result<(), AlreadyLeading> {
        self.local.set(local).map_err(|_| AlreadyLeading)
    }

    /// Whether this server leads (its own controller serves).
    pub fn leads(&self) -> bool {
        self.local.get().is_some()
    }

    fn current(&self) -> &Arc<dyn ControlPlane> {
        self.local.get().unwrap_or(&self.remote)
    }

    /// A command sent to the remote controller that failed (not taken in within
    /// [`REMOTE_COMMAND_TIMEOUT`]) while this server took over goes to its own controller: the
    /// leader it was sent to is gone, and the bus keeps nothing for the new one.
    fn after_takeover(&self, sent_remotely: bool) -> Option<&Arc<dyn ControlPlane>> {
        if sent_remotely {
            self.local.get()
        } else {
            None
        }
    }
}

#[async_trait]
impl ControlPlane for SwitchableControl {
    fn role(&self) -> ControlRole {
        if self.leads() {
            ControlRole::Leader
        } else {
            ControlRole::Standby
        }
    }
    async fn state(&self) -> Option<ControllerState> {
        self.current().state().await
    }
    // After a takeover, a command the old leader may have carried out before it died is checked
    // against the new leader's state first, so that it is neither done twice nor reported as a
    // failure ("already deployed") when it took effect.
    async fn deploy(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        let remote = !self.leads();
        match self.current().deploy(plan.clone()).await {
            Err(e) => match self.after_takeover(remote) {
                Some(local) if local.status(&plan.application_id).await?.is_some() => Ok(()),
                Some(local) => local.deploy(plan).await,
                None => Err(e),
            },
            ok => ok,
        }
    }
    async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), ControlError> {
        let remote = !self.leads();
        match self.current().undeploy(application_id, force).await {
            Err(e) => match self.after_takeover(remote) {
                Some(local)
                    if local
                        .status(application_id)
                        .await?
                        .is_none_or(|s| s == DeploymentStatus::Undeploying) =>
                {
                    Ok(())
                }
                Some(local) => local.undeploy(application_id, force).await,
                None => Err(e),
            },
            ok => ok,
        }
    }
    async fn domain_routes(
        &self,
        routes: Vec<nubo_events::DomainRoute>,
        signups: Vec<nubo_events::TenantSignup>,
    ) -> Result<(), ControlError> {
        self.current().domain_routes(routes, signups).await
    }
    async fn tenant_routing(&self, tenant_id: i64, suspended: bool) -> Result<(), ControlError> {
        self.current().tenant_routing(tenant_id, suspended).await
    }

    async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        let remote = !self.leads();
        match self.current().update_plan(plan.clone()).await {
            Err(e) => match self.after_takeover(remote) {
                Some(local) => {
                    let taken = local.state().await.is_some_and(|s| {
                        s.deployments.get(&plan.application_id).is_some_and(|d| {
                            d.plan.clusters == plan.clusters && d.plan.scopes == plan.scopes
                        })
                    });
                    if taken {
                        Ok(())
                    } else {
                        local.update_plan(plan).await
                    }
                }
                None => Err(e),
            },
            ok => ok,
        }
    }
    async fn status(&self, application_id: &str) -> Result<Option<DeploymentStatus>, ControlError> {
        self.current().status(application_id).await
    }
    async fn application_status(
        &self,
        application_id: &str,
    ) -> Result<Option<(DeploymentStatus, InstanceStatus)>, ControlError> {
        self.current().application_status(application_id).await
    }
    async fn deployments(&self, tenant: i64) -> Result<Vec<DeploymentSummary>, ControlError> {
        self.current().deployments(tenant).await
    }
    async fn cluster(
        &self,
        cluster_id: &str,
    ) -> Result<Option<nubo_events::Cluster>, ControlError> {
        self.current().cluster(cluster_id).await
    }
    async fn member(&self, member_id: &str) -> Result<Option<MemberIdentity>, ControlError> {
        self.current().member(member_id).await
    }
    async fn update_artifacts(
        &self,
        application_id: &str,
        cluster_ids: Vec<String>,
    ) -> Result<(), ControlError> {
        self.current()
            .update_artifacts(application_id, cluster_ids)
            .await
    }
    async fn clusters_of_repository(
        &self,
        url: &str,
    ) -> Result<Vec<RepositoryCluster>, ControlError> {
        self.current().clusters_of_repository(url).await
    }
    async fn host_names(&self) -> Result<Vec<String>, ControlError> {
        self.current().host_names().await
    }
    async fn tenant_members(&self, tenant: i64) -> Result<u32, ControlError> {
        self.current().tenant_members(tenant).await
    }
    async fn usage(
        &self,
        now_ms: u64,
        tenant: Option<i64>,
    ) -> Result<Vec<crate::state::metering::Usage>, ControlError> {
        self.current().usage(now_ms, tenant).await
    }
    async fn runtime(
        &self,
        application_id: &str,
    ) -> Result<Option<ApplicationRuntime>, ControlError> {
        self.current().runtime(application_id).await
    }
    async fn members(
        &self,
        application_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Option<MemberPage>, ControlError> {
        self.current().members(application_id, offset, limit).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A control plane that records the commands it gets; `fail_after` makes commands fail once
    /// it is notified (a command lost in a takeover).
    struct Fake {
        name: &'static str,
        calls: Arc<Mutex<Vec<String>>>,
        fail_after: Option<Arc<tokio::sync::Notify>>,
        /// Applications its state shows deployed.
        deployed: Vec<&'static str>,
    }

    impl Fake {
        fn new(name: &'static str, calls: &Arc<Mutex<Vec<String>>>) -> Arc<Self> {
            Arc::new(Fake {
                name,
                calls: calls.clone(),
                fail_after: None,
                deployed: vec![],
            })
        }

        async fn command(&self, what: &str) -> Result<(), ControlError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} {what}", self.name));
            match &self.fail_after {
                Some(n) => {
                    n.notified().await;
                    Err(ControlError::Unavailable(format!(
                        "{} timed out",
                        self.name
                    )))
                }
                None => Ok(()),
            }
        }
    }

    #[async_trait]
    impl ControlPlane for Fake {
        fn role(&self) -> ControlRole {
            ControlRole::Remote
        }
        async fn state(&self) -> Option<ControllerState> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} state", self.name));
            Some(ControllerState::default())
        }
        async fn status(
            &self,
            application_id: &str,
        ) -> Result<Option<DeploymentStatus>, ControlError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} status {application_id}", self.name));
            Ok(self
                .deployed
                .contains(&application_id)
                .then_some(DeploymentStatus::Deployed))
        }
        async fn deploy(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
            self.command(&format!("deploy {}", plan.application_id))
                .await
        }
        async fn undeploy(&self, application_id: &str, _force: bool) -> Result<(), ControlError> {
            self.command(&format!("undeploy {application_id}")).await
        }
        async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
            self.command(&format!("update {}", plan.application_id))
                .await
        }
    }

    fn plan(app: &str) -> DeploymentPlan {
        DeploymentPlan {
            application_id: app.into(),
            tenant_id: -1234,
            application_policy: "ap".into(),
            instances: vec![],
            clusters: vec![],
            scopes: vec![],
            burst_groups: vec![],
        }
    }

    #[tokio::test]
    async fn a_standby_sends_to_the_remote_controller_until_it_leads() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let control = SwitchableControl::new(Fake::new("remote", &calls));
        assert_eq!(control.role(), ControlRole::Standby);
        assert!(!control.role().runs_here());
        control.deploy(plan("a")).await.unwrap();
        control.state().await.unwrap();
        control.undeploy("a", false).await.unwrap();

        control.lead(Fake::new("local", &calls)).unwrap();
        assert_eq!(control.role(), ControlRole::Leader);
        assert!(control.role().runs_here());
        assert!(control.leads());
        control.deploy(plan("b")).await.unwrap();
        control.update_plan(plan("b")).await.unwrap();
        control.state().await.unwrap();
        assert_eq!(
            *calls.lock().unwrap(),
            [
                "remote deploy a",
                "remote state",
                "remote undeploy a",
                "local deploy b",
                "local update b",
                "local state"
            ]
        );
    }

    #[tokio::test]
    async fn a_server_that_leads_from_the_start_is_the_leader() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let control = SwitchableControl::leading(Fake::new("local", &calls));
        assert_eq!(control.role(), ControlRole::Leader);
        assert_eq!(
            control.lead(Fake::new("other", &calls)),
            Err(AlreadyLeading)
        );
        control.undeploy("a", false).await.unwrap();
        assert_eq!(*calls.lock().unwrap(), ["local undeploy a"]);
    }

    #[tokio::test]
    async fn it_leads_once() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let control = SwitchableControl::new(Fake::new("remote", &calls));
        control.lead(Fake::new("local", &calls)).unwrap();
        assert_eq!(
            control.lead(Fake::new("other", &calls)),
            Err(AlreadyLeading)
        );
        control.deploy(plan("a")).await.unwrap();
        assert_eq!(*calls.lock().unwrap(), ["local deploy a"]);
    }

    /// A deploy sent to the leader, lost as this server takes over with a controller whose state
    /// shows `deployed`: the calls every control plane got.
    async fn deploy_across_a_takeover(deployed: Vec<&'static str>) -> Vec<String> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let lost = Arc::new(tokio::sync::Notify::new());
        let control = Arc::new(SwitchableControl::new(Arc::new(Fake {
            name: "remote",
            calls: calls.clone(),
            fail_after: Some(lost.clone()),
            deployed: vec![],
        })));
        let pending = tokio::spawn({
            let control = control.clone();
            async move { control.deploy(plan("a")).await }
        });
        while calls.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        control
            .lead(Arc::new(Fake {
                name: "local",
                calls: calls.clone(),
                fail_after: None,
                deployed,
            }))
            .unwrap();
        lost.notify_one();
        pending.await.unwrap().unwrap();
        calls.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_command_lost_in_the_takeover_goes_to_the_new_controller() {
        assert_eq!(
            deploy_across_a_takeover(vec![]).await,
            ["remote deploy a", "local status a", "local deploy a"]
        );
    }

    #[tokio::test]
    async fn a_command_the_old_leader_carried_out_is_not_done_again() {
        // The old leader deployed it and died before its answer: the new leader's state has it.
        assert_eq!(
            deploy_across_a_takeover(vec!["a"]).await,
            ["remote deploy a", "local status a"],
            "taken already: not deployed twice, and not an error"
        );
    }

    #[tokio::test]
    async fn a_failure_while_standing_by_is_answered_as_it_is() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let lost = Arc::new(tokio::sync::Notify::new());
        let control = SwitchableControl::new(Arc::new(Fake {
            name: "remote",
            calls: calls.clone(),
            fail_after: Some(lost.clone()),
            deployed: vec![],
        }));
        lost.notify_one();
        assert_eq!(
            control.undeploy("a", true).await,
            Err(ControlError::Unavailable("remote timed out".to_owned()))
        );
    }

    #[tokio::test]
    async fn a_remote_reader_follows_the_journal_and_reads_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            nubo_store::SqliteStore::open(&dir.path().join("nubo.db"))
                .await
                .unwrap(),
        );
        let events = EventBus::new(Arc::new(nubo_bus::MemoryBus::new()));
        let config = crate::ControllerConfig {
            providers: Default::default(),
            bus_url: String::new(),
            fence: None,
            timeouts: Default::default(),
            platform_api: None,
            secrets: None,
        };
        let controller = crate::Controller::start(store.clone(), events.clone(), config)
            .await
            .unwrap();
        let remote = RemoteControl::new(store.clone(), events);
        assert_eq!(remote.read(|s, _| s.deployments.len()).await, Some(0));
        assert_eq!(remote.read(|_, changed| changed).await, Some(false));
        controller.deploy(plan("a")).await.unwrap();
        assert_eq!(
            remote.status("a").await.unwrap(),
            Some(DeploymentStatus::Deployed),
            "the deploy is in the journal once the controller took it in"
        );
        assert_eq!(
            remote.read(|_, changed| changed).await,
            Some(false),
            "nothing new: nothing read"
        );
        controller.undeploy("a", true).await.unwrap();
        assert_eq!(remote.read(|_, changed| changed).await, Some(true));
        // What a restart loads is what the controller holds.
        let (loaded, seq) = crate::journal::load(store.as_ref()).await.unwrap();
        assert!(seq > 0);
        assert_eq!(
            serde_json::to_value(&loaded).unwrap(),
            serde_json::to_value(controller.snapshot()).unwrap()
        );
    }
}
