//! The controller's state machine: `step(now, input) -> actions`, with time passed in. It owns the
//! topology and the deployments, decides which members to start and stop, and follows the
//! lifecycle reports of agents and node supervisors. No I/O: the runtime executes the actions.

use std::collections::{BTreeMap, BTreeSet};

use nubo_events::{
    Cluster, ClusterInstance, Event, InstanceKey, InstanceRef, InstanceStatus, Member,
    MemberChange, MemberPort, MemberStatus, ScaleCommand, Topology,
};
use nubo_telemetry::{Ending, InternalEvent, MemberEnded};
use serde::{Deserialize, Serialize};

use nubo_plan::{
    ClusterPlan, DeploymentPlan, DeploymentStatus, Placement, Termination, group_instance_id,
    scope_instance,
};

/// How long a member may drain (maintenance → ready to shut down) before it is terminated anyway.
pub const DRAIN_TIMEOUT_MS: u64 = 30_000;
/// The failure a scaled-down member carries (it is not replaced).
const SCALED_DOWN: &str = "scaled down";
/// How often a clean-up request that got no answer is sent again: an agent that was away from
/// the bus when it went (a broker restart, a re-adopted agent still reconnecting) gets it then,
/// instead of being cut off at the drain timeout.
pub const CLEANUP_RESEND_MS: u64 = 2_000;
/// How long a member may take from creation to Active before it is replaced.
pub const ACTIVATION_TIMEOUT_MS: u64 = 120_000;
/// First retry delay after a member failed before becoming Active; doubles up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 500;
/// Longest retry delay.
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// An application instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppInstance {
    /// `<appId>-<n>`.
    pub instance_id: String,
    /// Network partition.
    pub network_partition_id: String,
    /// Status.
    pub status: InstanceStatus,
    /// The burst group it was opened in (an index into the plan's `burst_groups`); `None` for
    /// the instances started at deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_group: Option<usize>,
}

/// Retry state of a cluster instance whose members keep failing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// Failures in a row (members that never became Active).
    pub failures: u32,
    /// No new member before this time (ms).
    pub not_before_ms: u64,
    /// The last failure's reason.
    pub last_reason: Option<String>,
}

/// A deployed application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The plan it was deployed with.
    pub plan: DeploymentPlan,
    /// Status.
    pub status: DeploymentStatus,
    /// Forced undeploy.
    pub force: bool,
    /// Application instances.
    pub instances: Vec<AppInstance>,
    /// Retry state per cluster instance.
    pub backoff: BTreeMap<InstanceKey, Backoff>,
    /// Members wanted per cluster instance, set by scaling; the minimum when absent, always kept
    /// between the cluster's minimum and maximum.
    #[serde(default)]
    pub desired: BTreeMap<InstanceKey, u32>,
    /// Group instance numbers per `(parent instance id, group path)` joined by `|` (the path by
    /// `/`); `1..=groupMinInstances` when absent. Number 1 shares its parent's instance id.
    #[serde(default)]
    pub group_instances: BTreeMap<String, Vec<u32>>,
    /// The next group instance number (never reused, so ids of terminating instances never clash).
    #[serde(default)]
    pub next_group_instance: u32,
    /// Burst groups open (`plan.burst_groups[..burst_level]`).
    #[serde(default)]
    pub burst_level: usize,
    /// The last application instance number given.
    #[serde(default)]
    pub next_instance: u32,
}

fn group_key(parent: &str, path: &[String]) -> String {
    format!("{parent}|{}", path.join("/"))
}

impl Deployment {
    /// The numbers of the group instances of `path` inside the parent instance `parent`.
    pub fn group_numbers(&self, parent: &str, path: &[String]) -> Vec<u32> {
        self.group_instances
            .get(&group_key(parent, path))
            .cloned()
            .unwrap_or_else(|| {
                let min = self.plan.scope(path).map_or(1, |s| s.min_instances);
                (1..=min).collect()
            })
    }

    /// The cluster instances the deployment wants for `cluster`: `(instance id, network
    /// partition, application instance id)`, for every application instance not being
    /// terminated and every instance of the groups around the cluster.
    pub fn slots(&self, cluster: &ClusterPlan) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for inst in self.instances.iter().filter(|i| {
            !matches!(
                i.status,
                InstanceStatus::Terminating | InstanceStatus::Terminated
            )
        }) {
            let mut ids = vec![inst.instance_id.clone()];
            for depth in 0..cluster.group_path.len() {
                let path = &cluster.group_path[..=depth];
                ids = ids
                    .into_iter()
                    .flat_map(|parent| {
                        self.group_numbers(&parent, path)
                            .into_iter()
                            .map(move |n| group_instance_id(&parent, &path[depth], n))
                            .collect::<Vec<_>>()
                    })
                    .collect();
            }
            out.extend(ids.into_iter().map(|id| {
                (
                    id,
                    inst.network_partition_id.clone(),
                    inst.instance_id.clone(),
                )
            }));
        }
        out
    }

    /// The ids of the application's clusters.
    pub fn cluster_ids(&self) -> Vec<String> {
        self.plan
            .clusters
            .iter()
            .map(|c| c.cluster_id.clone())
            .collect()
    }
}

/// Inputs to the state machine.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// Deploy an application.
    Deploy(DeploymentPlan),
    /// Undeploy an application.
    Undeploy {
        /// Application.
        application_id: String,
        /// Terminate at once instead of draining.
        force: bool,
    },
    /// An event from the bus (agents, node supervisors).
    Event(Event),
    /// The IaaS started a member.
    Started {
        /// Member.
        member_id: String,
        /// Its address.
        ip: String,
        /// Its ports.
        ports: Vec<MemberPort>,
    },
    /// The IaaS could not start a member.
    StartFailed {
        /// Member.
        member_id: String,
        /// Why.
        reason: String,
    },
    /// A request of the autoscaler (in this process, or through the bus): scale a cluster
    /// instance, replace a faulty member, grow a group or burst, scale a group or burst
    /// instance in, or take a member's statistics as proof that it is active.
    Scale(ScaleCommand),
    /// The application's artifacts changed while it runs (a policy, its own min / max): the
    /// new plan replaces the old one; the clusters must be the same.
    UpdatePlan(DeploymentPlan),
    /// Time passed.
    Tick,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish an event.
    Publish(Event),
    /// Ask the IaaS provider to start a member.
    Start {
        /// The member (status Created).
        member: Member,
        /// IaaS provider (`local`, `mock`, …).
        provider: String,
        /// Image id for that provider (for `local`, the command line).
        image: String,
        /// Cluster plan (ports, properties).
        cluster: Box<ClusterPlan>,
    },
    /// Ask the IaaS provider to terminate a member.
    Terminate {
        /// Member.
        member_id: String,
        /// IaaS provider.
        provider: String,
    },
    /// The state changed: persist it.
    Persist,
    /// An application's definition status changed (`Deployed`, `Undeploying`, `Created`).
    ApplicationStatus {
        /// Application.
        application_id: String,
        /// New status.
        status: String,
    },
}

/// The controller's whole state; serializable so that a restart resumes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerState {
    /// The topology.
    pub topology: Topology,
    /// Deployments by application id.
    pub deployments: BTreeMap<String, Deployment>,
    /// Next member sequence number.
    pub next_member: u64,
    /// When each member entered its current status (ms), for timeouts.
    pub since_ms: BTreeMap<String, u64>,
    /// When a clean-up request was last sent to each member that has not answered it (ms; not
    /// persisted: after a restart the next one goes at once).
    #[serde(skip)]
    pub cleanup_sent_ms: BTreeMap<String, u64>,
}

impl ControllerState {
    /// Applies one input at `now_ms` and returns what to do.
    pub fn step(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Deploy(plan) => self.deploy(plan, &mut out),
            Input::Undeploy {
                application_id,
                force,
            } => self.undeploy(now_ms, &application_id, force, &mut out),
            Input::Started {
                member_id,
                ip,
                ports,
            } => {
                let provider = self.provider_of(&member_id);
                if let Some(m) = self.member_mut(&member_id) {
                    if m.status == MemberStatus::Created {
                        m.default_private_ip = Some(ip);
                        m.ports = ports;
                        m.status = MemberStatus::Initialized;
                        let m = m.clone();
                        self.since_ms.insert(member_id, now_ms);
                        out.push(Action::Publish(Event::MemberInitialized(MemberChange {
                            member: m,
                        })));
                        out.push(Action::Persist);
                    }
                } else if let Some(provider) = provider {
                    // Started after it was dropped: stop it.
                    out.push(Action::Terminate {
                        member_id,
                        provider,
                    });
                }
            }
            Input::StartFailed { member_id, reason } => {
                self.member_gone(now_ms, &member_id, Some(reason), &mut out)
            }
            Input::Event(e) => self.event(now_ms, e, &mut out),
            Input::Scale(command) => self.scale(now_ms, command, &mut out),
            Input::UpdatePlan(plan) => self.update_plan(plan, &mut out),
            Input::Tick => {}
        }
        self.converge(now_ms, &mut out);
        out
    }

    /// A request of the autoscaler.
    fn scale(&mut self, now_ms: u64, command: ScaleCommand, out: &mut Vec<Action>) {
        match command {
            ScaleCommand::ScaleTo {
                cluster_id,
                instance_id,
                count,
            } => self.scale_to(&cluster_id, &instance_id, count, out),
            ScaleCommand::ScaleDown {
                cluster_id,
                instance_id,
                member_id,
            } => self.scale_down(now_ms, &cluster_id, &instance_id, member_id.as_deref(), out),
            ScaleCommand::MemberFault { member_id, reason } => {
                let active = self
                    .member_mut(&member_id)
                    .filter(|m| m.status == MemberStatus::Active && m.failure.is_none())
                    .map(|m| m.failure = Some(format!("member fault: {reason}")))
                    .is_some();
                if active {
                    tracing::warn!(member = %member_id, %reason, "member fault: replacing it");
                    if let Some(provider) = self.provider_of(&member_id) {
                        out.push(Action::Terminate {
                            member_id,
                            provider,
                        });
                    }
                }
            }
            ScaleCommand::MemberActive { instance } => {
                self.event(now_ms, Event::InstanceActivated(instance), out)
            }
            ScaleCommand::BeyondMax {
                cluster_id,
                instance_id,
            } => self.beyond_max(&cluster_id, &instance_id, out),
            ScaleCommand::ScaleIn {
                application_id,
                instance_id,
            } => self.scale_in(now_ms, &application_id, &instance_id, out),
        }
    }

    fn cluster_plan(&self, cluster_id: &str) -> Option<(String, ClusterPlan)> {
        self.deployments.iter().find_map(|(app, d)| {
            d.plan
                .clusters
                .iter()
                .find(|c| c.cluster_id == cluster_id)
                .map(|c| (app.clone(), c.clone()))
        })
    }

    fn scale_to(&mut self, cluster_id: &str, instance_id: &str, count: u32, out: &mut Vec<Action>) {
        let Some((app, plan)) = self.cluster_plan(cluster_id) else {
            return;
        };
        let Some(d) = self.deployments.get_mut(&app) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed {
            return;
        }
        let target = count.clamp(plan.min, plan.max.max(plan.min));
        d.desired
            .insert(InstanceKey::new(cluster_id, instance_id), target);
        tracing::info!(
            cluster = cluster_id,
            instance = instance_id,
            members = target,
            "scaling"
        );
        out.push(Action::Persist);
    }

    fn scale_down(
        &mut self,
        now_ms: u64,
        cluster_id: &str,
        instance_id: &str,
        member_id: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        let Some((app, plan)) = self.cluster_plan(cluster_id) else {
            return;
        };
        let Some(cluster) = self.topology.clusters.get(cluster_id) else {
            return;
        };
        let live: Vec<&Member> = cluster
            .members
            .values()
            .filter(|m| {
                m.cluster_instance_id == instance_id && m.status.is_live() && m.failure.is_none()
            })
            .collect();
        if live.len() as u32 <= plan.min {
            return;
        }
        let victim = match member_id {
            Some(id) => live.iter().find(|m| m.member_id == id).copied(),
            None => live
                .iter()
                .max_by_key(|m| (m.init_time, m.member_id.clone()))
                .copied(),
        };
        let Some(victim) = victim.cloned() else {
            return;
        };
        let remaining = live.len() as u32 - 1;
        if let Some(d) = self.deployments.get_mut(&app) {
            d.desired.insert(
                InstanceKey::new(cluster_id, instance_id),
                remaining.max(plan.min),
            );
        }
        if let Some(m) = self.member_mut(&victim.member_id) {
            m.failure = Some(SCALED_DOWN.into());
        }
        tracing::info!(cluster = cluster_id, instance = instance_id, member = %victim.member_id, "scaling down");
        self.retire(now_ms, &victim, false, out);
        out.push(Action::Persist);
    }

    /// The IaaS provider a member runs on (its network partition's).
    pub fn provider_of(&self, member_id: &str) -> Option<String> {
        let m = self.topology.member(member_id)?;
        let d = self.deployments.get(&m.application_id)?;
        let plan = d
            .plan
            .clusters
            .iter()
            .find(|c| c.cluster_id == m.cluster_id)?;
        plan.placements
            .iter()
            .find(|p| p.network_partition_id == m.network_partition_id)
            .map(|p| p.provider.clone())
    }

    fn member_mut(&mut self, member_id: &str) -> Option<&mut Member> {
        self.topology
            .clusters
            .values_mut()
            .find_map(|c| c.members.get_mut(member_id))
    }

    fn deploy(&mut self, plan: DeploymentPlan, out: &mut Vec<Action>) {
        let app_id = plan.application_id.clone();
        if self.deployments.contains_key(&app_id) {
            return;
        }
        let mut clusters = Vec::new();
        for c in &plan.clusters {
            let cluster = Cluster {
                cluster_id: c.cluster_id.clone(),
                service_name: c.service_name.clone(),
                application_id: app_id.clone(),
                alias: c.alias.clone(),
                host_names: c.host_names.clone(),
                tenant_id: plan.tenant_id,
                ports: c.ports.clone(),
                deployment_policy: c.deployment_policy.clone(),
                autoscaling_policy: c.autoscaling_policy.clone(),
                instances: BTreeMap::new(),
                members: BTreeMap::new(),
            };
            self.topology
                .clusters
                .insert(c.cluster_id.clone(), cluster.clone());
            clusters.push(cluster);
        }
        let instances: Vec<AppInstance> = plan
            .instances
            .iter()
            .map(|i| AppInstance {
                instance_id: i.instance_id.clone(),
                network_partition_id: i.network_partition_id.clone(),
                status: InstanceStatus::Created,
                burst_group: None,
            })
            .collect();
        for i in &instances {
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.clone(),
                instance_id: i.instance_id.clone(),
                group_alias: None,
                status: InstanceStatus::Created,
            }));
        }
        out.push(Action::Publish(Event::ApplicationClustersCreated {
            application_id: app_id.clone(),
            clusters,
        }));
        self.deployments.insert(
            app_id.clone(),
            Deployment {
                plan,
                status: DeploymentStatus::Deployed,
                force: false,
                backoff: BTreeMap::new(),
                desired: BTreeMap::new(),
                group_instances: BTreeMap::new(),
                next_group_instance: 0,
                burst_level: 0,
                next_instance: instances.len() as u32,
                instances,
            },
        );
        out.push(Action::ApplicationStatus {
            application_id: app_id,
            status: "Deployed".into(),
        });
        out.push(Action::Persist);
    }

    fn undeploy(&mut self, now_ms: u64, app_id: &str, force: bool, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get_mut(app_id) else {
            return;
        };
        let again = d.status == DeploymentStatus::Undeploying;
        d.status = DeploymentStatus::Undeploying;
        d.force = d.force || force;
        let force = d.force;
        if !again {
            for i in d.instances.iter_mut() {
                i.status = InstanceStatus::Terminating;
                out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                    application_id: app_id.to_owned(),
                    instance_id: i.instance_id.clone(),
                    group_alias: None,
                    status: InstanceStatus::Terminating,
                }));
            }
            out.push(Action::ApplicationStatus {
                application_id: app_id.to_owned(),
                status: "Undeploying".into(),
            });
        }
        let cluster_ids = d.cluster_ids();
        for cid in cluster_ids {
            let Some(cluster) = self.topology.clusters.get_mut(&cid) else {
                continue;
            };
            for inst in cluster.instances.values_mut() {
                if inst.status != InstanceStatus::Terminating
                    && inst.status != InstanceStatus::Terminated
                {
                    inst.status = InstanceStatus::Terminating;
                    out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
                        cluster_id: cid.clone(),
                        instance_id: inst.instance_id.clone(),
                        status: InstanceStatus::Terminating,
                    }));
                }
            }
            let members: Vec<Member> = cluster.members.values().cloned().collect();
            for m in members {
                self.retire(now_ms, &m, force, out);
            }
        }
        out.push(Action::Persist);
    }

    /// Starts taking a member out: gracefully (clean-up through its agent) when it is Active and
    /// `force` is false, else at once.
    fn retire(&mut self, now_ms: u64, m: &Member, force: bool, out: &mut Vec<Action>) {
        let provider = self.provider_of(&m.member_id).unwrap_or_default();
        match m.status {
            MemberStatus::Active if !force => {
                out.push(Action::Publish(Event::InstanceCleanupMember {
                    member_id: m.member_id.clone(),
                }));
                self.since_ms.insert(m.member_id.clone(), now_ms);
            }
            MemberStatus::Terminated => {}
            MemberStatus::InMaintenance | MemberStatus::ReadyToShutdown if !force => {}
            _ => out.push(Action::Terminate {
                member_id: m.member_id.clone(),
                provider,
            }),
        }
    }

    fn event(&mut self, now_ms: u64, e: Event, out: &mut Vec<Action>) {
        match e {
            Event::InstanceStarted(r) => self.advance(now_ms, &r, MemberStatus::Starting, out),
            Event::InstanceActivated(r) => self.advance(now_ms, &r, MemberStatus::Active, out),
            Event::InstanceMaintenanceMode(r) => {
                self.advance(now_ms, &r, MemberStatus::InMaintenance, out)
            }
            Event::InstanceReadyToShutdown(r) => {
                self.advance(now_ms, &r, MemberStatus::ReadyToShutdown, out);
                if let Some(provider) = self.provider_of(&r.member_id) {
                    out.push(Action::Terminate {
                        member_id: r.member_id,
                        provider,
                    });
                }
            }
            Event::InstanceFailed { instance, reason } => {
                if let Some(m) = self.member_mut(&instance.member_id) {
                    m.failure = Some(reason.clone());
                }
                if let Some(provider) = self.provider_of(&instance.member_id) {
                    out.push(Action::Terminate {
                        member_id: instance.member_id,
                        provider,
                    });
                }
            }
            Event::MemberProcessExited {
                member_id,
                code,
                signal,
                reason,
            } => {
                let detail = match (code, signal) {
                    (Some(c), _) => format!("{reason} (exit code {c})"),
                    (None, Some(s)) => format!("{reason} (signal {s})"),
                    _ => reason,
                };
                self.member_gone(now_ms, &member_id, Some(detail), out);
            }
            _ => {}
        }
    }

    /// Moves a member forward to `target`, through the statuses in between; refuses (and logs)
    /// transitions the lifecycle does not allow.
    fn advance(
        &mut self,
        now_ms: u64,
        r: &InstanceRef,
        target: MemberStatus,
        out: &mut Vec<Action>,
    ) {
        use MemberStatus::*;
        let Some(m) = self.member_mut(&r.member_id) else {
            tracing::debug!(member = %r.member_id, "status report for an unknown member: ignored");
            return;
        };
        let path: &[MemberStatus] = match (m.status, target) {
            (Created, Starting) => &[Initialized, Starting],
            (Created, Active) => &[Initialized, Starting, Active],
            (Initialized, Active) => &[Starting, Active],
            _ => std::slice::from_ref(match target {
                Starting => &Starting,
                Active => &Active,
                InMaintenance => &InMaintenance,
                ReadyToShutdown => &ReadyToShutdown,
                _ => return,
            }),
        };
        let mut changed = false;
        for next in path {
            if m.status == *next {
                continue;
            }
            if !m.status.can_become(*next) {
                tracing::warn!(member = %m.member_id, from = m.status.as_str(), to = next.as_str(), "illegal member transition refused");
                return;
            }
            m.status = *next;
            changed = true;
            let change = MemberChange { member: m.clone() };
            out.push(Action::Publish(match next {
                Initialized => Event::MemberInitialized(change),
                Starting => Event::MemberStarted(change),
                Active => Event::MemberActivated(change),
                InMaintenance => Event::MemberMaintenanceMode(change),
                _ => Event::MemberReadyToShutdown(change),
            }));
        }
        if changed {
            if target == Active {
                m.failure = None;
                let key = InstanceKey::new(&m.cluster_id, &m.cluster_instance_id);
                let app = m.application_id.clone();
                if let Some(d) = self.deployments.get_mut(&app) {
                    d.backoff.remove(&key);
                }
            }
            self.since_ms.insert(r.member_id.clone(), now_ms);
            out.push(Action::Persist);
        }
    }

    /// A member's process is gone (or never started): it is Terminated and leaves the topology.
    fn member_gone(
        &mut self,
        now_ms: u64,
        member_id: &str,
        reason: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(cluster) = self
            .topology
            .clusters
            .values_mut()
            .find(|c| c.members.contains_key(member_id))
        else {
            return;
        };
        let Some(mut m) = cluster.members.remove(member_id) else {
            return;
        };
        let prev = m.status;
        let was_active = matches!(
            prev,
            MemberStatus::Active | MemberStatus::InMaintenance | MemberStatus::ReadyToShutdown
        );
        m.status = MemberStatus::Terminated;
        if m.failure.is_none() && prev != MemberStatus::ReadyToShutdown {
            m.failure = reason.clone();
        }
        self.since_ms.remove(member_id);
        let undeploying = self
            .deployments
            .get(&m.application_id)
            .is_some_and(|d| d.status == DeploymentStatus::Undeploying);
        let mut retry = None;
        if !was_active
            && !undeploying
            && let Some(d) = self.deployments.get_mut(&m.application_id)
        {
            let b = d
                .backoff
                .entry(InstanceKey::new(&m.cluster_id, &m.cluster_instance_id))
                .or_default();
            b.failures += 1;
            let delay = FIRST_BACKOFF_MS
                .saturating_mul(1 << (b.failures - 1).min(16))
                .min(MAX_BACKOFF_MS);
            b.not_before_ms = now_ms + delay;
            b.last_reason = m.failure.clone().or(reason.clone());
            retry = Some((b.failures, delay));
        }
        let how = if prev == MemberStatus::ReadyToShutdown {
            Ending::Drained
        } else if undeploying || m.failure.as_deref() == Some(SCALED_DOWN) {
            Ending::Terminated
        } else if !was_active {
            Ending::FailedToStart
        } else {
            Ending::Lost
        };
        MemberEnded {
            member_id,
            how,
            reason: m.failure.as_deref().or(reason.as_deref()),
            retry,
        }
        .emit();
        out.push(Action::Publish(Event::MemberTerminated(MemberChange {
            member: m,
        })));
        out.push(Action::Persist);
    }

    /// Brings every deployment towards its goal: minimum members, startup order, statuses,
    /// timeouts, and the end of undeployments.
    fn converge(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let app_ids: Vec<String> = self.deployments.keys().cloned().collect();
        for app_id in app_ids {
            self.timeouts(now_ms, &app_id, out);
            let Some(d) = self.deployments.get(&app_id).cloned() else {
                continue;
            };
            match d.status {
                DeploymentStatus::Deployed => {
                    // Again while cluster instances change status, so that what waits for a
                    // cluster that has just become Active starts in the same step.
                    for _ in 0..=d.plan.clusters.len() {
                        let before = out.len();
                        for c in &d.plan.clusters {
                            for (instance_id, np, _) in d.slots(c) {
                                if self.converge_cluster(now_ms, &d, &instance_id, &np, c, out) {
                                    self.termination_behaviour(
                                        now_ms,
                                        &app_id,
                                        &c.cluster_id,
                                        &instance_id,
                                        out,
                                    );
                                    self.converge_cluster(now_ms, &d, &instance_id, &np, c, out);
                                }
                            }
                        }
                        let changed = out[before..].iter().any(|a| {
                            matches!(
                                a,
                                Action::Publish(Event::ClusterInstanceStatusChanged { .. })
                            )
                        });
                        if !changed {
                            break;
                        }
                    }
                    self.finish_terminations(&app_id, out);
                    self.update_app_instances(&app_id, out);
                }
                DeploymentStatus::Undeploying => self.finish_undeploy(&app_id, out),
            }
        }
    }

    fn timeouts(&mut self, now_ms: u64, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        let undeploying = d.status == DeploymentStatus::Undeploying;
        let members: Vec<Member> = d
            .plan
            .clusters
            .iter()
            .filter_map(|c| self.topology.clusters.get(&c.cluster_id))
            .flat_map(|c| c.members.values().cloned())
            .collect();
        for m in members {
            let since = self.since_ms.get(&m.member_id).copied().unwrap_or(now_ms);
            let late = match m.status {
                MemberStatus::InMaintenance | MemberStatus::ReadyToShutdown => {
                    now_ms.saturating_sub(since) > DRAIN_TIMEOUT_MS
                }
                MemberStatus::Created | MemberStatus::Initialized | MemberStatus::Starting => {
                    now_ms.saturating_sub(since) > ACTIVATION_TIMEOUT_MS
                }
                // A graceful clean-up that got no answer from the agent.
                // A graceful clean-up (undeploy or scale-down) that got no answer from the agent.
                MemberStatus::Active => {
                    (undeploying || m.failure.is_some())
                        && now_ms.saturating_sub(since) > DRAIN_TIMEOUT_MS
                }
                MemberStatus::Terminated => false,
            };
            let unanswered = m.status == MemberStatus::Active
                && (undeploying || m.failure.is_some())
                && self.since_ms.contains_key(&m.member_id);
            if unanswered && !late {
                let sent = self.cleanup_sent_ms.get(&m.member_id).copied().unwrap_or(0);
                if now_ms.saturating_sub(sent.max(since)) >= CLEANUP_RESEND_MS {
                    self.cleanup_sent_ms.insert(m.member_id.clone(), now_ms);
                    out.push(Action::Publish(Event::InstanceCleanupMember {
                        member_id: m.member_id.clone(),
                    }));
                }
                continue;
            }
            self.cleanup_sent_ms.remove(&m.member_id);
            if late && let Some(provider) = self.provider_of(&m.member_id) {
                tracing::warn!(member = %m.member_id, status = m.status.as_str(), "member timed out in its status: terminating it");
                if let Some(mm) = self.member_mut(&m.member_id) {
                    mm.failure.get_or_insert_with(|| {
                        format!("timed out in status {}", m.status.as_str())
                    });
                }
                self.since_ms.insert(m.member_id.clone(), now_ms);
                out.push(Action::Terminate {
                    member_id: m.member_id.clone(),
                    provider,
                });
            }
        }
    }

    fn instance_active(&self, cluster_id: &str, instance_id: &str) -> bool {
        self.topology
            .clusters
            .get(cluster_id)
            .and_then(|c| c.instances.get(instance_id))
            .is_some_and(|i| i.status == InstanceStatus::Active)
    }

    /// Brings one cluster instance towards its goal; `true` when it has just become Inactive.
    fn converge_cluster(
        &mut self,
        now_ms: u64,
        d: &Deployment,
        instance_id: &str,
        network_partition_id: &str,
        plan: &ClusterPlan,
        out: &mut Vec<Action>,
    ) -> bool {
        let ready = plan.depends_on.iter().all(|dep| {
            let Some(dep_plan) = d.plan.cluster(dep) else {
                return true;
            };
            let common = plan
                .group_path
                .iter()
                .zip(&dep_plan.group_path)
                .take_while(|(a, b)| a == b)
                .count();
            self.instance_active(dep, &scope_instance(instance_id, &plan.group_path, common))
        });
        let Some(cluster) = self.topology.clusters.get_mut(&plan.cluster_id) else {
            return false;
        };
        let inst = AppInstance {
            instance_id: instance_id.to_owned(),
            network_partition_id: network_partition_id.to_owned(),
            status: InstanceStatus::Created,
            burst_group: None,
        };
        if !cluster.instances.contains_key(&inst.instance_id) {
            if !ready {
                return false;
            }
            let ci = ClusterInstance {
                instance_id: inst.instance_id.clone(),
                network_partition_id: inst.network_partition_id.clone(),
                status: InstanceStatus::Created,
                min_members: plan.min,
                max_members: plan.max,
            };
            cluster
                .instances
                .insert(inst.instance_id.clone(), ci.clone());
            out.push(Action::Publish(Event::ClusterInstanceCreated {
                cluster_id: plan.cluster_id.clone(),
                instance: ci,
            }));
            out.push(Action::Persist);
        }
        if cluster.instances.get(&inst.instance_id).is_some_and(|ci| {
            matches!(
                ci.status,
                InstanceStatus::Terminating | InstanceStatus::Terminated
            )
        }) {
            return false;
        }
        // Statuses from the members.
        let active = cluster
            .members
            .values()
            .filter(|m| {
                m.cluster_instance_id == inst.instance_id && m.status == MemberStatus::Active
            })
            .count() as u32;
        let live: Vec<&Member> = cluster
            .members
            .values()
            .filter(|m| m.cluster_instance_id == inst.instance_id && m.status.is_live())
            // An Active member whose agent reported its workload dead is replaced at once, without
            // waiting for its process to exit. (One that failed before becoming Active waits for
            // its exit and the backoff, so that a broken workload is not retried in a tight loop.)
            .filter(|m| !(m.status == MemberStatus::Active && m.failure.is_some()))
            .collect();
        let live_count = live.len() as u32;
        let mut per_partition: BTreeMap<String, u32> = BTreeMap::new();
        for m in &live {
            *per_partition.entry(m.partition_id.clone()).or_default() += 1;
        }
        if let Some(ci) = cluster.instances.get_mut(&inst.instance_id) {
            let next = match ci.status {
                InstanceStatus::Created | InstanceStatus::Inactive if active >= ci.min_members => {
                    Some(InstanceStatus::Active)
                }
                InstanceStatus::Active if active < ci.min_members => Some(InstanceStatus::Inactive),
                _ => None,
            };
            if let Some(next) = next {
                ci.status = next;
                out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
                    cluster_id: plan.cluster_id.clone(),
                    instance_id: inst.instance_id.clone(),
                    status: next,
                }));
                out.push(Action::Persist);
                if next == InstanceStatus::Inactive {
                    return true;
                }
            }
        }
        // Maximum check (a maximum or a partitionMax lowered while running): the newest members
        // above it leave, drained.
        let mut newest: Vec<&Member> = live.clone();
        newest.sort_by_key(|m| std::cmp::Reverse((m.init_time, m.member_id.clone())));
        let mut excess: Vec<Member> = newest
            .iter()
            .take(live_count.saturating_sub(plan.max.max(plan.min)) as usize)
            .map(|m| (*m).clone())
            .collect();
        if let Some(placement) = plan
            .placements
            .iter()
            .find(|p| p.network_partition_id == inst.network_partition_id)
        {
            for part in &placement.partitions {
                let Some(cap) = part.max else { continue };
                let over = newest
                    .iter()
                    .filter(|m| m.partition_id == part.id)
                    .filter(|m| !excess.iter().any(|e| e.member_id == m.member_id))
                    .count()
                    .saturating_sub(cap as usize);
                let more: Vec<Member> = newest
                    .iter()
                    .filter(|m| m.partition_id == part.id)
                    .filter(|m| !excess.iter().any(|e| e.member_id == m.member_id))
                    .take(over)
                    .map(|m| (*m).clone())
                    .collect();
                excess.extend(more);
            }
        }
        if !excess.is_empty() {
            for m in &excess {
                tracing::info!(member = %m.member_id, cluster = %plan.cluster_id, max = plan.max, "above the maximum: draining a member");
                if let Some(mm) = self.member_mut(&m.member_id) {
                    mm.failure = Some("above the cluster's or partition's maximum".into());
                }
                self.retire(now_ms, m, false, out);
            }
            out.push(Action::Persist);
            return false;
        }
        // Minimum check (and scale-up): the desired count, at least the minimum.
        let key = InstanceKey::new(&plan.cluster_id, &inst.instance_id);
        let target = d
            .desired
            .get(&key)
            .copied()
            .unwrap_or(plan.min)
            .clamp(plan.min, plan.max.max(plan.min));
        if live_count >= target {
            return false;
        }
        if d.backoff
            .get(&key)
            .is_some_and(|b| b.not_before_ms > now_ms)
        {
            return false;
        }
        let Some(placement) = plan
            .placements
            .iter()
            .find(|p| p.network_partition_id == inst.network_partition_id)
        else {
            tracing::warn!(cluster = %plan.cluster_id, network_partition = %inst.network_partition_id, "the deployment policy does not cover this network partition");
            return false;
        };
        let Some(image) = plan.images.get(&placement.provider).cloned() else {
            tracing::warn!(cluster = %plan.cluster_id, provider = %placement.provider, "the cartridge has no iaasProvider entry for this provider");
            return false;
        };
        for _ in live_count..target {
            let Some(partition) = choose_partition(placement, &per_partition) else {
                tracing::warn!(cluster = %plan.cluster_id, "no partition has room for another member: raise partitionMax in the deployment policy");
                break;
            };
            *per_partition.entry(partition.clone()).or_default() += 1;
            self.next_member += 1;
            let member = Member {
                member_id: format!(
                    "{}-{}",
                    plan.cluster_id.trim_end_matches(".domain"),
                    self.next_member
                ),
                cluster_id: plan.cluster_id.clone(),
                cluster_instance_id: inst.instance_id.clone(),
                service_name: plan.service_name.clone(),
                application_id: d.plan.application_id.clone(),
                network_partition_id: inst.network_partition_id.clone(),
                partition_id: partition,
                status: MemberStatus::Created,
                default_private_ip: None,
                default_public_ip: None,
                ports: Vec::new(),
                init_time: now_ms,
                failure: None,
                properties: BTreeMap::new(),
            };
            if let Some(c) = self.topology.clusters.get_mut(&plan.cluster_id) {
                c.members.insert(member.member_id.clone(), member.clone());
            }
            self.since_ms.insert(member.member_id.clone(), now_ms);
            out.push(Action::Publish(Event::MemberCreated(MemberChange {
                member: member.clone(),
            })));
            out.push(Action::Start {
                member,
                provider: placement.provider.clone(),
                image: image.clone(),
                cluster: Box::new(plan.clone()),
            });
            out.push(Action::Persist);
        }
        false
    }

    fn update_app_instances(&mut self, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        // Every cluster instance each application instance wants (its groups' instances too).
        let mut statuses: BTreeMap<String, Vec<Option<InstanceStatus>>> = BTreeMap::new();
        for c in &d.plan.clusters {
            for (id, _, app_instance) in d.slots(c) {
                let status = self
                    .topology
                    .clusters
                    .get(&c.cluster_id)
                    .and_then(|c| c.instances.get(&id))
                    .map(|i| i.status);
                statuses.entry(app_instance).or_default().push(status);
            }
        }
        let mut updates = Vec::new();
        for (idx, inst) in d.instances.iter().enumerate() {
            let s = statuses.get(&inst.instance_id).cloned().unwrap_or_default();
            let all_active = s.iter().all(|s| *s == Some(InstanceStatus::Active));
            let any_inactive = s.iter().any(|s| {
                matches!(
                    s,
                    Some(InstanceStatus::Inactive | InstanceStatus::Terminating)
                )
            });
            let next = match inst.status {
                InstanceStatus::Created | InstanceStatus::Inactive if all_active => {
                    Some(InstanceStatus::Active)
                }
                InstanceStatus::Active if any_inactive => Some(InstanceStatus::Inactive),
                _ => None,
            };
            if let Some(n) = next {
                updates.push((idx, n));
            }
        }
        if let Some(d) = self.deployments.get_mut(app_id) {
            for (idx, n) in updates {
                d.instances[idx].status = n;
                out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                    application_id: app_id.to_owned(),
                    instance_id: d.instances[idx].instance_id.clone(),
                    group_alias: None,
                    status: n,
                }));
                out.push(Action::Persist);
            }
        }
    }

    /// Takes a cluster instance out: Terminating, its members retired gracefully. It is removed
    /// once its members are gone ([`Self::finish_terminations`]); converge re-creates it if the
    /// deployment still wants it (the restart after a termination behaviour).
    fn terminate_cluster_instance(
        &mut self,
        now_ms: u64,
        cluster_id: &str,
        instance_id: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(cluster) = self.topology.clusters.get_mut(cluster_id) else {
            return;
        };
        let Some(ci) = cluster.instances.get_mut(instance_id) else {
            return;
        };
        if matches!(
            ci.status,
            InstanceStatus::Terminating | InstanceStatus::Terminated
        ) {
            return;
        }
        ci.status = InstanceStatus::Terminating;
        out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
            cluster_id: cluster_id.to_owned(),
            instance_id: instance_id.to_owned(),
            status: InstanceStatus::Terminating,
        }));
        let members: Vec<Member> = cluster
            .members
            .values_mut()
            .filter(|m| m.cluster_instance_id == instance_id)
            .map(|m| {
                m.failure.get_or_insert_with(|| reason.to_owned());
                m.clone()
            })
            .collect();
        for m in members {
            self.retire(now_ms, &m, false, out);
        }
        out.push(Action::Persist);
    }

    /// A cluster instance became Inactive: applies the termination behaviour of its level, from
    /// the innermost outwards while levels say `terminate-none` (§7.8).
    fn termination_behaviour(
        &mut self,
        now_ms: u64,
        app_id: &str,
        cluster_id: &str,
        instance_id: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        let Some(plan) = d.plan.cluster(cluster_id) else {
            return;
        };
        let path = plan.group_path.clone();
        let mut depth = path.len();
        let mut child: Vec<String> = vec![cluster_id.to_owned()];
        let (behaviour, targets) = loop {
            let scope = &path[..depth];
            let in_scope = |c: &&ClusterPlan| c.group_path.starts_with(scope);
            match d
                .plan
                .scope(scope)
                .map(|s| s.termination)
                .unwrap_or_default()
            {
                Termination::None => {
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                    let group = &path[..=depth];
                    child = d
                        .plan
                        .clusters
                        .iter()
                        .filter(|c| c.group_path.starts_with(group))
                        .map(|c| c.cluster_id.clone())
                        .collect();
                }
                Termination::All => {
                    break (
                        "terminate-all",
                        d.plan
                            .clusters
                            .iter()
                            .filter(in_scope)
                            .map(|c| c.cluster_id.clone())
                            .collect::<BTreeSet<_>>(),
                    );
                }
                Termination::Dependents => {
                    let mut set: BTreeSet<String> = child.iter().cloned().collect();
                    loop {
                        let more: Vec<String> = d
                            .plan
                            .clusters
                            .iter()
                            .filter(in_scope)
                            .filter(|c| !set.contains(&c.cluster_id))
                            .filter(|c| c.depends_on.iter().any(|x| set.contains(x)))
                            .map(|c| c.cluster_id.clone())
                            .collect();
                        if more.is_empty() {
                            break;
                        }
                        set.extend(more);
                    }
                    break ("terminate-dependents", set);
                }
            }
        };
        let level = scope_instance(instance_id, &path, depth);
        let mut victims = Vec::new();
        for t in &targets {
            let (Some(tp), Some(c)) = (d.plan.cluster(t), self.topology.clusters.get(t)) else {
                continue;
            };
            for id in c.instances.keys() {
                if scope_instance(id, &tp.group_path, depth) == level {
                    victims.push((t.clone(), id.clone()));
                }
            }
        }
        tracing::warn!(
            cluster = cluster_id,
            instance = instance_id,
            behaviour,
            terminating = victims.len(),
            "a cluster instance became inactive: terminating, to restart in startup order"
        );
        let reason = format!("{behaviour}: {cluster_id} became inactive");
        let app_instance = scope_instance(instance_id, &path, 0);
        if let Some(d) = self.deployments.get_mut(app_id)
            && let Some(i) = d
                .instances
                .iter_mut()
                .find(|i| i.instance_id == app_instance && i.status == InstanceStatus::Active)
        {
            i.status = InstanceStatus::Inactive;
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.to_owned(),
                instance_id: app_instance,
                group_alias: None,
                status: InstanceStatus::Inactive,
            }));
        }
        for (c, i) in victims {
            self.terminate_cluster_instance(now_ms, &c, &i, &reason, out);
        }
    }

    /// Removes the terminating cluster instances whose members are gone, then the terminating
    /// application instances whose cluster instances are gone.
    fn finish_terminations(&mut self, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get_mut(app_id) else {
            return;
        };
        for cid in d.cluster_ids() {
            let Some(c) = self.topology.clusters.get_mut(&cid) else {
                continue;
            };
            let done: Vec<String> = c
                .instances
                .values()
                .filter(|i| i.status == InstanceStatus::Terminating)
                .filter(|i| {
                    !c.members
                        .values()
                        .any(|m| m.cluster_instance_id == i.instance_id)
                })
                .map(|i| i.instance_id.clone())
                .collect();
            for id in done {
                c.instances.remove(&id);
                let key = InstanceKey::new(&cid, &id);
                d.desired.remove(&key);
                d.backoff.remove(&key);
                out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
                    cluster_id: cid.clone(),
                    instance_id: id,
                    status: InstanceStatus::Terminated,
                }));
                out.push(Action::Persist);
            }
        }
        let clusters = &self.topology.clusters;
        let gone: Vec<String> = d
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Terminating)
            .filter(|i| {
                let prefix = format!("{}.", i.instance_id);
                !d.plan.clusters.iter().any(|c| {
                    clusters.get(&c.cluster_id).is_some_and(|c| {
                        c.instances
                            .keys()
                            .any(|k| *k == i.instance_id || k.starts_with(&prefix))
                    })
                })
            })
            .map(|i| i.instance_id.clone())
            .collect();
        for id in gone {
            d.instances.retain(|i| i.instance_id != id);
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.to_owned(),
                instance_id: id,
                group_alias: None,
                status: InstanceStatus::Terminated,
            }));
            out.push(Action::Persist);
        }
        while d.burst_level > 0
            && !d
                .instances
                .iter()
                .any(|i| i.burst_group == Some(d.burst_level - 1))
        {
            d.burst_level -= 1;
            tracing::info!(
                application = app_id,
                burst_level = d.burst_level,
                "burst network partitions closed"
            );
        }
    }

    /// A cluster instance is full and needs more (§7.8): group scaling, innermost group first,
    /// else application bursting; one new instance at a time (nothing while one is pending).
    fn beyond_max(&mut self, cluster_id: &str, instance_id: &str, out: &mut Vec<Action>) {
        let Some((app, plan)) = self.cluster_plan(cluster_id) else {
            return;
        };
        let Some(d) = self.deployments.get(&app) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed {
            return;
        }
        for depth in (1..=plan.group_path.len()).rev() {
            let path = &plan.group_path[..depth];
            let Some(scope) = d.plan.scope(path) else {
                continue;
            };
            let parent = scope_instance(instance_id, &plan.group_path, depth - 1);
            if self.group_pending(d, path, &parent) {
                return;
            }
            let mut numbers = d.group_numbers(&parent, path);
            if numbers.len() as u32 >= scope.max_instances {
                continue;
            }
            let n = d
                .next_group_instance
                .max(numbers.iter().copied().max().unwrap_or(1) + 1)
                .max(scope.min_instances + 1);
            numbers.push(n);
            let alias = path[depth - 1].clone();
            let id = group_instance_id(&parent, &alias, n);
            tracing::info!(application = %app, group = %alias, instance = %id, "group scaling: a new group instance");
            if let Some(d) = self.deployments.get_mut(&app) {
                d.next_group_instance = n + 1;
                d.group_instances.insert(group_key(&parent, path), numbers);
            }
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app.clone(),
                instance_id: id,
                group_alias: Some(alias),
                status: InstanceStatus::Created,
            }));
            out.push(Action::Persist);
            return;
        }
        let pending = d
            .instances
            .iter()
            .any(|i| i.status != InstanceStatus::Active)
            || d.plan.clusters.iter().any(|c| {
                d.slots(c)
                    .iter()
                    .any(|(id, _, _)| !self.instance_active(&c.cluster_id, id))
            });
        if pending {
            return;
        }
        let Some(group) = d.plan.burst_groups.get(d.burst_level).cloned() else {
            tracing::debug!(application = %app, "at the maximum everywhere: no network partition left to burst into");
            return;
        };
        let Some(d) = self.deployments.get_mut(&app) else {
            return;
        };
        let level = d.burst_level;
        d.burst_level += 1;
        for np in group {
            d.next_instance = d.next_instance.max(d.instances.len() as u32) + 1;
            let id = format!("{app}-{}", d.next_instance);
            tracing::info!(application = %app, instance = %id, network_partition = %np, "bursting into the next network partition");
            d.instances.push(AppInstance {
                instance_id: id.clone(),
                network_partition_id: np,
                status: InstanceStatus::Created,
                burst_group: Some(level),
            });
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app.clone(),
                instance_id: id,
                group_alias: None,
                status: InstanceStatus::Created,
            }));
        }
        out.push(Action::Persist);
    }

    /// Applies a new plan to a running deployment: thresholds, minimum and maximum members
    /// (cluster instances follow; converge then starts or drains members), placement, group
    /// bounds, burst groups. Ignored when the clusters differ (that needs a redeployment).
    fn update_plan(&mut self, plan: DeploymentPlan, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get_mut(&plan.application_id) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed || d.cluster_ids() != plan.cluster_ids() {
            return;
        }
        for c in &plan.clusters {
            if let Some(cluster) = self.topology.clusters.get_mut(&c.cluster_id) {
                for i in cluster.instances.values_mut() {
                    i.min_members = c.min;
                    i.max_members = c.max;
                }
            }
        }
        tracing::info!(application = %plan.application_id, "running deployment updated");
        let instances = std::mem::take(&mut d.plan.instances);
        d.plan = plan;
        d.plan.instances = instances;
        out.push(Action::Persist);
    }

    /// Whether a group instance of `path` inside `parent` is not yet Active.
    fn group_pending(&self, d: &Deployment, path: &[String], parent: &str) -> bool {
        let depth = path.len() - 1;
        d.plan
            .clusters
            .iter()
            .filter(|c| c.group_path.starts_with(path))
            .any(|c| {
                d.slots(c).into_iter().any(|(id, _, _)| {
                    scope_instance(&id, &c.group_path, depth) == parent
                        && !self.instance_active(&c.cluster_id, &id)
                })
            })
    }

    /// Terminates a group instance above its group's minimum, or an application instance opened
    /// by bursting (the newest burst group first).
    fn scale_in(&mut self, now_ms: u64, app_id: &str, instance_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get_mut(app_id) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed {
            return;
        }
        let newest = d.burst_level.checked_sub(1);
        let reason;
        if let Some(ai) = d
            .instances
            .iter_mut()
            .find(|i| i.instance_id == instance_id)
        {
            if ai.burst_group.is_none()
                || ai.burst_group != newest
                || ai.status != InstanceStatus::Active
            {
                return;
            }
            ai.status = InstanceStatus::Terminating;
            tracing::info!(
                application = app_id,
                instance = instance_id,
                "load fell: closing a burst application instance"
            );
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.to_owned(),
                instance_id: instance_id.to_owned(),
                group_alias: None,
                status: InstanceStatus::Terminating,
            }));
            reason = "scaled in: burst application instance closed";
        } else {
            let Some((parent, last)) = instance_id.rsplit_once('.') else {
                return;
            };
            let Some((alias, n)) = last.rsplit_once('-') else {
                return;
            };
            let Ok(n) = n.parse::<u32>() else {
                return;
            };
            let Some(scope) = d
                .plan
                .scopes
                .iter()
                .find(|s| s.path.last().map(String::as_str) == Some(alias))
                .cloned()
            else {
                return;
            };
            let mut numbers = d.group_numbers(parent, &scope.path);
            if numbers.len() as u32 <= scope.min_instances || !numbers.contains(&n) {
                return;
            }
            numbers.retain(|x| *x != n);
            d.group_instances
                .insert(group_key(parent, &scope.path), numbers);
            tracing::info!(
                application = app_id,
                instance = instance_id,
                "load fell: group instance scaled in"
            );
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.to_owned(),
                instance_id: instance_id.to_owned(),
                group_alias: Some(alias.to_owned()),
                status: InstanceStatus::Terminating,
            }));
            reason = "scaled in: group instance removed";
        }
        let prefix = format!("{instance_id}.");
        let victims: Vec<(String, String)> = d
            .cluster_ids()
            .into_iter()
            .filter_map(|c| self.topology.clusters.get(&c))
            .flat_map(|c| {
                c.instances
                    .keys()
                    .filter(|k| *k == instance_id || k.starts_with(&prefix))
                    .map(|k| (c.cluster_id.clone(), k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (c, i) in victims {
            self.terminate_cluster_instance(now_ms, &c, &i, reason, out);
        }
        out.push(Action::Persist);
    }

    fn finish_undeploy(&mut self, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        let cluster_ids = d.cluster_ids();
        let remaining = cluster_ids
            .iter()
            .filter_map(|c| self.topology.clusters.get(c))
            .any(|c| !c.members.is_empty());
        if remaining {
            return;
        }
        for cid in &cluster_ids {
            if let Some(c) = self.topology.clusters.get_mut(cid) {
                for inst in c.instances.values_mut() {
                    inst.status = InstanceStatus::Terminated;
                    out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
                        cluster_id: cid.clone(),
                        instance_id: inst.instance_id.clone(),
                        status: InstanceStatus::Terminated,
                    }));
                }
            }
            self.topology.clusters.remove(cid);
        }
        if let Some(d) = self.deployments.remove(app_id) {
            for i in d.instances {
                out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                    application_id: app_id.to_owned(),
                    instance_id: i.instance_id,
                    group_alias: None,
                    status: InstanceStatus::Terminated,
                }));
            }
        }
        out.push(Action::Publish(Event::ApplicationClustersRemoved {
            application_id: app_id.to_owned(),
            cluster_ids,
        }));
        out.push(Action::ApplicationStatus {
            application_id: app_id.to_owned(),
            status: "Created".into(),
        });
        out.push(Action::Persist);
    }

    /// Member ids of every member the state believes exists.
    pub fn member_ids(&self) -> BTreeSet<String> {
        self.topology
            .clusters
            .values()
            .flat_map(|c| c.members.keys().cloned())
            .collect()
    }
}

/// The partition for the next member: `one-after-another` fills partitions in order;
/// `round-robin` picks the partition with the fewest members (the first on a tie). Partitions
/// at their `partitionMax` are skipped; `None` when every partition is full.
pub fn choose_partition(
    placement: &Placement,
    per_partition: &BTreeMap<String, u32>,
) -> Option<String> {
    let room = |p: &nubo_plan::PlacementPartition| {
        let n = per_partition.get(&p.id).copied().unwrap_or(0);
        p.max.is_none_or(|m| n < m)
    };
    let candidates = placement.partitions.iter().filter(|p| room(p));
    if placement.algorithm == "one-after-another" {
        candidates.map(|p| p.id.clone()).next()
    } else {
        candidates
            .enumerate()
            .min_by_key(|(i, p)| (per_partition.get(&p.id).copied().unwrap_or(0), *i))
            .map(|(_, p)| p.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use nubo_plan::{PlanInputs, plan};

    fn deployment(min: u32, algo: &str, partition_max: Option<u32>) -> DeploymentPlan {
        let mut i = PlanInputs::default();
        for ty in ["db", "web"] {
            i.cartridges.insert(
                ty.into(),
                serde_json::from_value(json!({"type": ty, "category": "x", "host": "localhost",
                "portMapping": [{"protocol": "http", "port": 80, "proxyPort": 8280}],
                "iaasProvider": [{"type": "local", "imageId": format!("run {ty}")}]}))
                .unwrap(),
            );
        }
        let mut parts = vec![json!({"id": "p1"}), json!({"id": "p2"})];
        if let Some(m) = partition_max {
            parts = vec![
                json!({"id": "p1", "partitionMax": m}),
                json!({"id": "p2", "partitionMax": m}),
            ];
        }
        i.deployment_policies.insert(
            "dp".into(),
            serde_json::from_value(json!({"id": "dp", "networkPartitions": [
            {"id": "np", "partitionAlgo": algo, "partitions": parts}]}))
            .unwrap(),
        );
        i.network_partitions.insert("np".into(), serde_json::from_value(json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}, {"id": "p2"}]})).unwrap());
        let app = serde_json::from_value(json!({"applicationId": "app", "components": {"cartridges": [
            {"type": "db", "cartridgeMin": min, "cartridgeMax": 10, "subscribableInfo": {"alias": "db", "autoscalingPolicy": "a", "deploymentPolicy": "dp"}},
            {"type": "web", "cartridgeMin": min, "cartridgeMax": 10, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "a", "deploymentPolicy": "dp"}}],
            "dependencies": {"startupOrders": [{"aliases": ["cartridge.db", "cartridge.web"]}]}}})).unwrap();
        let policy = serde_json::from_value(
            json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        )
        .unwrap();
        plan(&app, &policy, -1234, &i).unwrap()
    }

    fn starts(actions: &[Action]) -> Vec<Member> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { member, .. } => Some(member.clone()),
                _ => None,
            })
            .collect()
    }

    fn terminates(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Terminate { member_id, .. } => Some(member_id.clone()),
                _ => None,
            })
            .collect()
    }

    fn published(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish(e) => Some(e.name()),
                _ => None,
            })
            .collect()
    }

    fn r(m: &Member) -> InstanceRef {
        m.into()
    }

    /// Drives a member from Created to Active as the IaaS and its agent would.
    fn activate(s: &mut ControllerState, now: u64, m: &Member) -> Vec<Action> {
        let mut out = s.step(
            now,
            Input::Started {
                member_id: m.member_id.clone(),
                ip: "127.0.0.1".into(),
                ports: vec![],
            },
        );
        out.extend(s.step(now, Input::Event(Event::InstanceStarted(r(m)))));
        out.extend(s.step(now, Input::Event(Event::InstanceActivated(r(m)))));
        out
    }

    #[test]
    fn deploy_starts_the_minimum_in_startup_order_and_statuses_follow() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(2, "round-robin", None)));
        let db = starts(&out);
        assert_eq!(
            db.len(),
            2,
            "only the first cluster of the startup order starts"
        );
        assert!(db.iter().all(|m| m.cluster_id == "app.db.db.domain"));
        let parts: Vec<&str> = db.iter().map(|m| m.partition_id.as_str()).collect();
        assert_eq!(parts, ["p1", "p2"], "round-robin spreads over partitions");
        assert!(published(&out).contains(&"ApplicationClustersCreated"));
        assert!(out.contains(&Action::ApplicationStatus {
            application_id: "app".into(),
            status: "Deployed".into()
        }));
        // One member active is not enough for min 2; nothing else starts.
        let out = activate(&mut s, 10, &db[0]);
        assert!(starts(&out).is_empty());
        assert_eq!(
            published(&out),
            ["MemberInitialized", "MemberStarted", "MemberActivated"]
        );
        // The second activation makes the db instance Active, and web starts.
        let out = activate(&mut s, 20, &db[1]);
        assert!(published(&out).contains(&"ClusterInstanceStatusChanged"));
        let web = starts(&out);
        assert_eq!(web.len(), 2);
        assert!(web.iter().all(|m| m.cluster_id == "app.web.web.domain"));
        activate(&mut s, 30, &web[0]);
        let out = activate(&mut s, 30, &web[1]);
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Publish(Event::ApplicationInstanceStatusChanged {
                status: InstanceStatus::Active,
                ..
            })
        )));
        assert_eq!(
            s.deployments["app"].instances[0].status,
            InstanceStatus::Active
        );
    }

    #[test]
    fn a_dead_active_member_is_replaced_at_once_and_a_failing_one_with_backoff() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "one-after-another", None)));
        let db = starts(&out)[0].clone();
        assert_eq!(db.partition_id, "p1");
        activate(&mut s, 1, &db);
        let out = s.step(
            2,
            Input::Event(Event::MemberProcessExited {
                member_id: db.member_id.clone(),
                code: None,
                signal: Some(9),
                reason: "killed".into(),
            }),
        );
        assert!(published(&out).contains(&"MemberTerminated"));
        let replacement = starts(&out);
        assert_eq!(
            replacement.len(),
            1,
            "an active member that dies is replaced in the same step"
        );
        // The replacement fails before becoming active: retried only after the backoff.
        let out = s.step(
            3,
            Input::StartFailed {
                member_id: replacement[0].member_id.clone(),
                reason: "no such command".into(),
            },
        );
        assert!(starts(&out).is_empty(), "no tight loop");
        assert!(starts(&s.step(3 + FIRST_BACKOFF_MS - 1, Input::Tick)).is_empty());
        let out = s.step(3 + FIRST_BACKOFF_MS, Input::Tick);
        let again = starts(&out);
        assert_eq!(again.len(), 1);
        s.step(
            4 + FIRST_BACKOFF_MS,
            Input::StartFailed {
                member_id: again[0].member_id.clone(),
                reason: "no such command".into(),
            },
        );
        let b = &s.deployments["app"].backoff[&InstanceKey::new("app.db.db.domain", "app-1")];
        assert_eq!(b.failures, 2);
        assert_eq!(
            b.not_before_ms,
            4 + 3 * FIRST_BACKOFF_MS,
            "the delay doubles"
        );
        assert_eq!(b.last_reason.as_deref(), Some("no such command"));
    }

    #[test]
    fn an_active_member_reported_failed_is_replaced_before_its_process_exits() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        activate(&mut s, 1, &db);
        let out = s.step(
            2,
            Input::Event(Event::InstanceFailed {
                instance: r(&db),
                reason: "the workload exited".into(),
            }),
        );
        assert_eq!(terminates(&out), vec![db.member_id.clone()]);
        assert_eq!(
            starts(&out).len(),
            1,
            "the replacement starts with the failure report"
        );
        // Its exit then adds no second replacement.
        let out = s.step(
            3,
            Input::Event(Event::MemberProcessExited {
                member_id: db.member_id.clone(),
                code: Some(3),
                signal: None,
                reason: "exited".into(),
            }),
        );
        assert!(starts(&out).is_empty(), "{out:?}");
    }

    #[test]
    fn a_member_fault_replaces_an_active_member_once_and_nothing_else() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        let fault = |id: &str| {
            Input::Scale(ScaleCommand::MemberFault {
                member_id: id.to_owned(),
                reason: "no health statistics for 5 s".into(),
            })
        };
        // Not Active yet: a fault is not this member's (the activation timeout covers it).
        assert!(terminates(&s.step(1, fault(&db.member_id))).is_empty());
        activate(&mut s, 2, &db);
        let out = s.step(3, fault(&db.member_id));
        assert_eq!(terminates(&out), vec![db.member_id.clone()]);
        assert_eq!(starts(&out).len(), 1, "a replacement at once");
        let failure = s.topology.clusters["app.db.db.domain"].members[&db.member_id]
            .failure
            .clone();
        assert_eq!(
            failure.as_deref(),
            Some("member fault: no health statistics for 5 s")
        );
        // The same verdict again changes nothing.
        let out = s.step(4, fault(&db.member_id));
        assert!(
            terminates(&out).is_empty() && starts(&out).is_empty(),
            "{out:?}"
        );
    }

    #[test]
    fn scaling_up_and_down_between_the_minimum_and_the_maximum() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        activate(&mut s, 1, &db);
        let scale = |count| {
            Input::Scale(ScaleCommand::ScaleTo {
                cluster_id: "app.db.db.domain".into(),
                instance_id: "app-1".into(),
                count,
            })
        };
        let out = s.step(2, scale(3));
        assert_eq!(starts(&out).len(), 2, "1 → 3");
        let out = s.step(3, scale(50));
        assert_eq!(starts(&out).len(), 7, "capped at the maximum of 10");
        let out = s.step(4, scale(0));
        assert!(
            starts(&out).is_empty() && terminates(&out).is_empty(),
            "ScaleTo never removes members"
        );
        // Scale down: the named member is drained (cleanup through its agent) and not replaced.
        let down = |m: Option<String>| {
            Input::Scale(ScaleCommand::ScaleDown {
                cluster_id: "app.db.db.domain".into(),
                instance_id: "app-1".into(),
                member_id: m,
            })
        };
        let out = s.step(5, down(Some(db.member_id.clone())));
        assert!(
            published(&out).contains(&"InstanceCleanupMember"),
            "{out:?}"
        );
        s.step(6, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
        s.step(7, Input::Event(Event::InstanceReadyToShutdown(r(&db))));
        let out = s.step(
            8,
            Input::Event(Event::MemberProcessExited {
                member_id: db.member_id.clone(),
                code: Some(0),
                signal: None,
                reason: "stopped".into(),
            }),
        );
        assert!(
            starts(&out).is_empty(),
            "a member scaled down is not replaced"
        );
        assert_eq!(
            s.deployments["app"].desired[&InstanceKey::new("app.db.db.domain", "app-1")],
            9
        );
        // Down to the minimum, never below.
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        activate(&mut s, 1, &starts(&out)[0]);
        let out = s.step(2, down(None));
        assert!(
            published(&out).is_empty() && terminates(&out).is_empty(),
            "at the minimum: nothing"
        );
    }

    #[test]
    fn partition_max_caps_placement() {
        let mut s = ControllerState::default();
        let out = s.step(
            0,
            Input::Deploy(deployment(3, "one-after-another", Some(1))),
        );
        let parts: Vec<String> = starts(&out).into_iter().map(|m| m.partition_id).collect();
        assert_eq!(
            parts,
            ["p1", "p2"],
            "two partitions of max 1: only two members"
        );
    }

    #[test]
    fn an_unanswered_clean_up_is_sent_again_until_the_agent_answers() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        activate(&mut s, 1, &db);
        let undeploy = Input::Undeploy {
            application_id: "app".into(),
            force: false,
        };
        let cleanups = |out: &[Action]| {
            published(out)
                .iter()
                .filter(|e| **e == "InstanceCleanupMember")
                .count()
        };
        assert_eq!(cleanups(&s.step(10, undeploy)), 1);
        assert_eq!(cleanups(&s.step(1_000, Input::Tick)), 0, "not yet");
        // The agent was away from the bus: the request goes again, every CLEANUP_RESEND_MS.
        assert_eq!(cleanups(&s.step(10 + CLEANUP_RESEND_MS, Input::Tick)), 1);
        assert_eq!(cleanups(&s.step(11 + CLEANUP_RESEND_MS, Input::Tick)), 0);
        assert_eq!(
            cleanups(&s.step(10 + 2 * CLEANUP_RESEND_MS, Input::Tick)),
            1
        );
        // It answers: no more requests.
        s.step(5_000, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
        assert_eq!(cleanups(&s.step(9_000, Input::Tick)), 0);
        assert_eq!(cleanups(&s.step(15_000, Input::Tick)), 0);
    }

    #[test]
    fn graceful_and_forced_undeploy() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        let out = activate(&mut s, 1, &db);
        let web = starts(&out)[0].clone();
        // web is still starting when the undeploy comes.
        s.step(
            2,
            Input::Started {
                member_id: web.member_id.clone(),
                ip: "127.0.0.1".into(),
                ports: vec![],
            },
        );
        let out = s.step(
            3,
            Input::Undeploy {
                application_id: "app".into(),
                force: false,
            },
        );
        assert!(
            published(&out).contains(&"InstanceCleanupMember"),
            "the active member is cleaned up by its agent"
        );
        assert_eq!(
            terminates(&out),
            vec![web.member_id.clone()],
            "the starting one is terminated at once"
        );
        assert!(starts(&out).is_empty(), "no replacements while undeploying");
        s.step(
            4,
            Input::Event(Event::MemberProcessExited {
                member_id: web.member_id.clone(),
                code: Some(0),
                signal: None,
                reason: "terminated".into(),
            }),
        );
        s.step(5, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
        let out = s.step(6, Input::Event(Event::InstanceReadyToShutdown(r(&db))));
        assert_eq!(terminates(&out), vec![db.member_id.clone()]);
        let out = s.step(
            7,
            Input::Event(Event::MemberProcessExited {
                member_id: db.member_id.clone(),
                code: Some(0),
                signal: None,
                reason: "terminated".into(),
            }),
        );
        assert!(published(&out).contains(&"ApplicationClustersRemoved"));
        assert!(out.contains(&Action::ApplicationStatus {
            application_id: "app".into(),
            status: "Created".into()
        }));
        assert!(s.topology.clusters.is_empty() && s.deployments.is_empty());
        // Forced: everything terminated at once.
        let out = s.step(10, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        activate(&mut s, 11, &db);
        let out = s.step(
            12,
            Input::Undeploy {
                application_id: "app".into(),
                force: true,
            },
        );
        assert!(terminates(&out).contains(&db.member_id));
        assert!(!published(&out).contains(&"InstanceCleanupMember"));
    }

    #[test]
    fn a_drain_that_never_ends_is_cut_short() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        activate(&mut s, 1, &db);
        s.step(
            2,
            Input::Undeploy {
                application_id: "app".into(),
                force: false,
            },
        );
        assert!(terminates(&s.step(2 + DRAIN_TIMEOUT_MS, Input::Tick)).is_empty());
        assert_eq!(
            terminates(&s.step(3 + DRAIN_TIMEOUT_MS, Input::Tick)),
            vec![db.member_id.clone()]
        );
    }

    #[test]
    fn illegal_transitions_are_refused() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(deployment(1, "round-robin", None)));
        let db = starts(&out)[0].clone();
        // Ready to shut down straight from Created is not a lifecycle step.
        let out = s.step(1, Input::Event(Event::InstanceMaintenanceMode(r(&db))));
        assert!(published(&out).is_empty());
        assert_eq!(
            s.topology.member(&db.member_id).unwrap().status,
            MemberStatus::Created
        );
    }

    #[test]
    fn the_state_survives_serialization() {
        let mut s = ControllerState::default();
        s.step(0, Input::Deploy(deployment(2, "round-robin", None)));
        let back: ControllerState =
            serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    /// `front` (application level) starts after group `grp` (db, then web); `grp` has the given
    /// termination behaviour and group instance bounds; the application policy's network
    /// partitions come in the given groups.
    fn tree(termination: &str, group_max: u32, np_groups: &str) -> DeploymentPlan {
        let mut i = PlanInputs::default();
        for ty in ["db", "web", "front"] {
            i.cartridges.insert(
                ty.into(),
                serde_json::from_value(json!({"type": ty, "category": "x",
                "iaasProvider": [{"type": "local", "imageId": format!("run {ty}")}]}))
                .unwrap(),
            );
        }
        i.groups.insert(
            "g".into(),
            serde_json::from_value(json!({"name": "g", "cartridges": ["db", "web"],
            "dependencies": {"startupOrders": [{"aliases": ["cartridge.db", "cartridge.web"]}],
                "terminationBehaviour": termination}}))
            .unwrap(),
        );
        let nps: Vec<&str> = np_groups.split([',', '|']).collect();
        i.deployment_policies.insert("dp".into(), serde_json::from_value(json!({"id": "dp",
            "networkPartitions": nps.iter().map(|n| json!({"id": n, "partitionAlgo": "one-after-another", "partitions": [{"id": "p1"}]})).collect::<Vec<_>>()})).unwrap());
        for n in &nps {
            i.network_partitions.insert(
                (*n).into(),
                serde_json::from_value(
                    json!({"id": n, "provider": "local", "partitions": [{"id": "p1"}]}),
                )
                .unwrap(),
            );
        }
        let app = serde_json::from_value(json!({"applicationId": "app", "components": {
            "groups": [{"name": "g", "alias": "grp", "groupMinInstances": 1, "groupMaxInstances": group_max, "deploymentPolicy": "dp", "cartridges": [
                {"type": "db", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "db", "autoscalingPolicy": "a"}},
                {"type": "web", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "a"}}]}],
            "cartridges": [{"type": "front", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "front", "autoscalingPolicy": "a", "deploymentPolicy": "dp"}}],
            "dependencies": {"startupOrders": [{"aliases": ["group.grp", "cartridge.front"]}]}}})).unwrap();
        let policy = serde_json::from_value(json!({"id": "ap", "algorithm": "one-after-another",
            "networkPartitions": nps, "properties": [{"name": "networkPartitionGroups", "value": np_groups}]}))
        .unwrap();
        plan(&app, &policy, -1234, &i).unwrap()
    }

    /// Activates every member started by `out`, and the members those activations start, until
    /// none is left; returns every member activated, in order.
    fn run_up(s: &mut ControllerState, now: u64, out: Vec<Action>) -> Vec<Member> {
        let mut todo = starts(&out);
        let mut done = Vec::new();
        while let Some(m) = todo.first().cloned() {
            todo.remove(0);
            todo.extend(starts(&activate(s, now, &m)));
            done.push(m);
        }
        done
    }

    fn exit(s: &mut ControllerState, now: u64, m: &Member) -> Vec<Action> {
        s.step(
            now,
            Input::Event(Event::MemberProcessExited {
                member_id: m.member_id.clone(),
                code: None,
                signal: Some(9),
                reason: "killed".into(),
            }),
        )
    }

    fn cleaned(out: &[Action]) -> BTreeSet<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Publish(Event::InstanceCleanupMember { member_id }) => {
                    Some(member_id.clone())
                }
                _ => None,
            })
            .collect()
    }

    fn instance_status(
        s: &ControllerState,
        cluster: &str,
        instance: &str,
    ) -> Option<InstanceStatus> {
        s.topology.clusters[cluster]
            .instances
            .get(instance)
            .map(|i| i.status)
    }

    fn alias(m: &Member) -> &str {
        m.cluster_id.split('.').nth(1).unwrap()
    }

    #[test]
    fn termination_behaviours_and_the_restart_in_startup_order() {
        for (behaviour, fault_in, terminated) in [
            ("terminate-none", "web", vec![]),
            ("terminate-dependents", "db", vec!["web"]),
            ("terminate-dependents", "web", vec![]),
            ("terminate-all", "web", vec!["db"]),
        ] {
            let mut s = ControllerState::default();
            let out = s.step(0, Input::Deploy(tree(behaviour, 1, "np")));
            let up = run_up(&mut s, 1, out);
            assert_eq!(
                up.iter().map(alias).collect::<Vec<_>>(),
                ["db", "web", "front"],
                "startup order"
            );
            assert_eq!(
                s.deployments["app"].instances[0].status,
                InstanceStatus::Active
            );
            let victim = up.iter().find(|m| alias(m) == fault_in).unwrap();
            let out = exit(&mut s, 2, victim);
            let cleaned: Vec<String> = cleaned(&out)
                .into_iter()
                .map(|id| alias(s.topology.member(&id).unwrap()).to_owned())
                .collect();
            assert_eq!(
                cleaned, terminated,
                "{behaviour}, {fault_in} lost its member"
            );
            assert!(
                !cleaned.contains(&"front".to_owned()),
                "the application level is not touched"
            );
            let restarted = starts(&out);
            if behaviour == "terminate-none" {
                assert_eq!(
                    restarted.len(),
                    1,
                    "{behaviour}: only the lost member is replaced"
                );
                continue;
            }
            // Every terminated cluster instance goes Terminating; nothing starts until the
            // terminated members are gone.
            let cluster = |a: &str| format!("app.{a}.{a}.domain");
            let terminating: Vec<String> = out
                .iter()
                .filter_map(|a| match a {
                    Action::Publish(Event::ClusterInstanceStatusChanged {
                        cluster_id,
                        status: InstanceStatus::Terminating,
                        ..
                    }) => Some(cluster_id.clone()),
                    _ => None,
                })
                .collect();
            let mut want: Vec<String> = terminated
                .iter()
                .chain([&fault_in])
                .map(|a| cluster(a))
                .collect();
            want.sort();
            let mut got = terminating.clone();
            got.sort();
            assert_eq!(got, want, "{behaviour}");
            assert!(restarted.is_empty(), "{behaviour}: {restarted:?}");
            assert_eq!(
                s.deployments["app"].instances[0].status,
                InstanceStatus::Inactive
            );
            let mut out = s.step(3, Input::Tick);
            for id in cleaned_ids(&s, &terminated) {
                let m = s.topology.member(&id).unwrap().clone();
                s.step(4, Input::Event(Event::InstanceReadyToShutdown(r(&m))));
                out.extend(exit(&mut s, 5, &m));
            }
            out.extend(s.step(6, Input::Tick));
            // The restart: in startup order, the first of the terminated clusters first.
            let again = run_up(&mut s, 7, out);
            let mut want: Vec<&str> = vec![fault_in];
            want.extend(terminated.iter().copied());
            want.sort_by_key(|a| ["db", "web"].iter().position(|x| x == a));
            assert_eq!(
                again.iter().map(alias).collect::<Vec<_>>(),
                want,
                "{behaviour}"
            );
            for a in ["db", "web", "front"] {
                assert_eq!(
                    instance_status(&s, &cluster(a), "app-1"),
                    Some(InstanceStatus::Active)
                );
            }
            assert_eq!(
                s.deployments["app"].instances[0].status,
                InstanceStatus::Active
            );
        }
    }

    fn cleaned_ids(s: &ControllerState, aliases: &[&str]) -> Vec<String> {
        s.topology
            .clusters
            .values()
            .flat_map(|c| c.members.values())
            .filter(|m| aliases.contains(&alias(m)) && m.failure.is_some())
            .map(|m| m.member_id.clone())
            .collect()
    }

    #[test]
    fn bursting_opens_the_next_network_partition_group_and_closes_it_when_load_falls() {
        let mut s = ControllerState::default();
        let out = s.step(
            0,
            Input::Deploy(tree("terminate-none", 1, "np1|np2,np3|np4")),
        );
        let up = run_up(&mut s, 1, out);
        assert_eq!(
            up.len(),
            6,
            "two application instances (np1, np2) of three clusters"
        );
        let full = Input::Scale(ScaleCommand::BeyondMax {
            cluster_id: "app.front.front.domain".into(),
            instance_id: "app-1".into(),
        });
        let out = s.step(2, full.clone());
        let ids: Vec<(String, String)> = s.deployments["app"]
            .instances
            .iter()
            .map(|i| (i.instance_id.clone(), i.network_partition_id.clone()))
            .collect();
        assert_eq!(
            ids,
            [
                ("app-1", "np1"),
                ("app-2", "np2"),
                ("app-3", "np3"),
                ("app-4", "np4")
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
        );
        // The new instances start like the first ones: db first.
        let started = starts(&out);
        assert_eq!(started.iter().map(alias).collect::<Vec<_>>(), ["db", "db"]);
        assert_eq!(started[0].network_partition_id, "np3");
        // Nothing more while they are pending.
        assert!(starts(&s.step(3, full.clone())).is_empty());
        assert_eq!(s.deployments["app"].burst_level, 1);
        run_up(&mut s, 4, out);
        assert!(
            s.deployments["app"]
                .instances
                .iter()
                .all(|i| i.status == InstanceStatus::Active)
        );
        // No network partition left: nothing.
        assert!(s.step(5, full).iter().all(|a| matches!(a, Action::Persist)));
        // Load fell: an instance started at deployment stays; the burst ones close.
        let scale_in = |id: &str| {
            Input::Scale(ScaleCommand::ScaleIn {
                application_id: "app".into(),
                instance_id: id.into(),
            })
        };
        assert!(cleaned(&s.step(6, scale_in("app-1"))).is_empty());
        let out = s.step(7, scale_in("app-3"));
        assert_eq!(cleaned(&out).len(), 3, "app-3's three members drain");
        let members: Vec<Member> = s
            .topology
            .clusters
            .values()
            .flat_map(|c| c.members.values())
            .filter(|m| m.cluster_instance_id == "app-3")
            .cloned()
            .collect();
        for m in &members {
            exit(&mut s, 8, m);
        }
        let ids: Vec<&str> = s.deployments["app"]
            .instances
            .iter()
            .map(|i| i.instance_id.as_str())
            .collect();
        assert_eq!(ids, ["app-1", "app-2", "app-4"]);
        assert_eq!(s.deployments["app"].burst_level, 1, "app-4 still open");
        s.step(9, scale_in("app-4"));
        let members: Vec<Member> = s
            .topology
            .clusters
            .values()
            .flat_map(|c| c.members.values())
            .filter(|m| m.cluster_instance_id == "app-4")
            .cloned()
            .collect();
        for m in &members {
            exit(&mut s, 10, m);
        }
        assert_eq!(s.deployments["app"].instances.len(), 2);
        assert_eq!(
            s.deployments["app"].burst_level, 0,
            "closed: the next burst reopens np3|np4"
        );
        assert!(
            starts(&s.step(11, Input::Tick)).is_empty(),
            "closed instances are not restarted"
        );
    }

    #[test]
    fn group_scaling_adds_a_group_instance_up_to_its_maximum_then_bursts() {
        let mut s = ControllerState::default();
        let out = s.step(0, Input::Deploy(tree("terminate-none", 2, "np1,np2")));
        run_up(&mut s, 1, out);
        let full = Input::Scale(ScaleCommand::BeyondMax {
            cluster_id: "app.web.web.domain".into(),
            instance_id: "app-1".into(),
        });
        let out = s.step(2, full.clone());
        let started = starts(&out);
        assert_eq!(started.len(), 1, "{started:?}");
        assert_eq!(
            (alias(&started[0]), started[0].cluster_instance_id.as_str()),
            ("db", "app-1.grp-2")
        );
        let again = starts(&s.step(3, full.clone()));
        assert!(again.is_empty(), "one group instance at a time: {again:?}");
        let up = run_up(&mut s, 4, out);
        assert_eq!(
            up.iter().map(alias).collect::<Vec<_>>(),
            ["db", "web"],
            "the group's startup order"
        );
        // The group is at its maximum (2): the application bursts into np2.
        let out = s.step(5, full);
        assert_eq!(starts(&out).len(), 1);
        assert_eq!(starts(&out)[0].network_partition_id, "np2");
        // The extra group instance scales in; the first never does.
        let scale_in = |id: &str| {
            Input::Scale(ScaleCommand::ScaleIn {
                application_id: "app".into(),
                instance_id: id.into(),
            })
        };
        assert!(cleaned(&s.step(6, scale_in("app-1"))).is_empty());
        assert_eq!(cleaned(&s.step(7, scale_in("app-1.grp-2"))).len(), 2);
        assert_eq!(
            s.deployments["app"].group_numbers("app-1", &["grp".to_owned()]),
            [1]
        );
    }
}
