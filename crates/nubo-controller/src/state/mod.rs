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

mod artifacts;
mod convergence;
mod deployments;
mod lifecycle;
pub mod metering;
mod scaling;
#[cfg(test)]
mod tests;

pub use artifacts::{
    ARTIFACT_ERROR_PROPERTY, ARTIFACT_UPDATE_TIMEOUT_MS, COMMIT_PROPERTY, Rollout,
};
use nubo_plan::{
    ClusterPlan, DeploymentPlan, DeploymentStatus, Placement, Termination, group_instance_id,
    scope_instance,
};

/// The member property that says an Active member does not answer its health checks (and why):
/// load balancers route no request to it (`nubo_lb`'s `UNHEALTHY`, the same name).
pub const UNHEALTHY_PROPERTY: &str = "unhealthy";
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
    /// Rounds of retries failed in a row (members that never became Active; those failing
    /// while a delay runs count with the round that set it).
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
    /// Each group instance's status (Stratos' group lifecycle: Created → Active ⇄ Inactive →
    /// Terminating → Terminated), by [`group_status_key`].
    #[serde(default)]
    pub group_status: BTreeMap<String, InstanceStatus>,
    /// Artifact updates under way, by cluster id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, Rollout>,
    /// Partitions whose members keep failing to start (an engine or host that does not answer),
    /// by [`partition_key`]: new members go to the others while one is failing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failing_partitions: BTreeMap<String, PartitionFailures>,
}

/// A partition's members failing to start in a row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionFailures {
    /// Members that failed to start there in a row (since one became Active there).
    pub in_a_row: u32,
    /// When the last one failed (ms).
    pub last_ms: u64,
}

/// Failures in a row after which a partition is avoided.
pub const PARTITION_FAILURES: u32 = 2;
/// How long a failing partition is avoided before a member is tried there again.
pub const PARTITION_AVOID_MS: u64 = 60_000;

/// The key of a partition of a network partition.
pub fn partition_key(network_partition: &str, partition: &str) -> String {
    format!("{network_partition}|{partition}")
}

/// The key of a group instance's status: its group path and its id (group instance 1 shares
/// its parent's id, so the id alone is not unique).
pub fn group_status_key(path: &[String], instance_id: &str) -> String {
    format!("{}|{instance_id}", path.join("/"))
}

fn group_key(parent: &str, path: &[String]) -> String {
    format!("{parent}|{}", path.join("/"))
}

impl Deployment {
    /// The application's status in the topology (Stratos' `ApplicationStatus`): `Terminating`
    /// while it is undeployed; `Inactive` while one of its application instances is; `Active`
    /// once one is Active (an instance opened later, a burst, does not take the application back
    /// to Created); `Created` before.
    pub fn application_status(&self) -> InstanceStatus {
        if self.status == DeploymentStatus::Undeploying {
            return InstanceStatus::Terminating;
        }
        let live = self.instances.iter().filter(|i| {
            !matches!(
                i.status,
                InstanceStatus::Terminating | InstanceStatus::Terminated
            )
        });
        let mut status = InstanceStatus::Created;
        for i in live {
            match i.status {
                InstanceStatus::Inactive => return InstanceStatus::Inactive,
                InstanceStatus::Active => status = InstanceStatus::Active,
                _ => {}
            }
        }
        status
    }

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

/// Inputs to the state machine. Serializable: the controller's journal is the sequence of
/// inputs that changed its state, with their times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// A tenant was deactivated (its applications get no traffic; its members keep running) or
    /// activated again.
    TenantRouting {
        /// The tenant.
        tenant_id: i64,
        /// No traffic to its applications.
        suspended: bool,
    },
    /// The tenants' domain mappings (the whole set).
    DomainRoutes(
        Vec<nubo_events::DomainRoute>,
        Vec<nubo_events::TenantSignup>,
    ),
    /// The artifacts of these clusters changed (a repository's webhook): their members fetch
    /// them again, one after another.
    UpdateArtifacts {
        /// Application.
        application_id: String,
        /// Its clusters.
        cluster_ids: Vec<String>,
    },
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
    /// Instance time of ended members per tenant, application and cartridge ([`metering`]).
    #[serde(default)]
    pub usage: BTreeMap<String, metering::Usage>,
    /// The server's timeouts, where a cluster's properties set none (not persisted: the
    /// configuration's; unset, [`ACTIVATION_TIMEOUT_MS`] and [`DRAIN_TIMEOUT_MS`]).
    #[serde(skip)]
    pub timeouts: nubo_plan::Timeouts,
    /// When a clean-up request was last sent to each member that has not answered it (ms; not
    /// persisted: after a restart the next one goes at once).
    #[serde(skip)]
    pub cleanup_sent_ms: BTreeMap<String, u64>,
    /// Deployments an input touched since the last convergence (not persisted: a snapshot is
    /// taken between batches, after their convergence).
    #[serde(skip)]
    dirty: BTreeSet<String>,
    /// Every deployment is to converge (a tick: time passed for all of them).
    #[serde(skip)]
    all_dirty: bool,
}

impl ControllerState {
    /// Applies one input at `now_ms` and converges what it touched; returns what to do.
    /// ([`Self::apply`] then [`Self::converge_dirty`].)
    pub fn step(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        let mut out = self.apply(now_ms, input);
        out.extend(self.converge_dirty(now_ms));
        out
    }

    /// Applies one input at `now_ms` without converging: the deployment it concerns is marked,
    /// and converges at the next [`Self::converge_dirty`]. A batch of inputs applied then
    /// converged once costs one convergence of each deployment they touched, not one per input.
    /// A tick runs the timeouts and marks every deployment (time passed for all).
    pub fn apply(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match self.application_of(&input) {
            Some(app) => {
                if !self.dirty.contains(&app) {
                    self.dirty.insert(app);
                }
            }
            None => self.all_dirty = true,
        }
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
            Input::TenantRouting {
                tenant_id,
                suspended,
            } => {
                let changed = if suspended {
                    self.topology.suspended_tenants.insert(tenant_id)
                } else {
                    self.topology.suspended_tenants.remove(&tenant_id)
                };
                if changed {
                    out.push(Action::Publish(Event::TenantRouting {
                        tenant_id,
                        suspended,
                    }));
                    out.push(Action::Persist);
                }
            }
            Input::DomainRoutes(mut routes, mut signups) => {
                routes.sort();
                routes.dedup();
                signups.sort();
                signups.dedup();
                if self.topology.domain_routes != routes || self.topology.tenant_signups != signups
                {
                    self.topology.domain_routes = routes.clone();
                    self.topology.tenant_signups = signups.clone();
                    out.push(Action::Publish(Event::DomainRoutes { routes, signups }));
                    out.push(Action::Persist);
                }
            }
            Input::UpdateArtifacts {
                application_id,
                cluster_ids,
            } => self.update_artifacts(&application_id, &cluster_ids, &mut out),
            Input::Tick => {
                let apps: Vec<String> = self.deployments.keys().cloned().collect();
                for app in apps {
                    self.timeouts(now_ms, &app, &mut out);
                }
            }
        }
        out
    }

    /// A copy of what concerns one application (its deployment, its clusters, its members'
    /// timers), `None` when it is not deployed: what its views are built from, outside the lock.
    pub fn application_part(&self, application_id: &str) -> Option<ControllerState> {
        let d = self.deployments.get(application_id)?;
        let mut part = ControllerState::default();
        for c in &d.plan.clusters {
            if let Some(cluster) = self.topology.clusters.get(&c.cluster_id) {
                part.topology
                    .clusters
                    .insert(c.cluster_id.clone(), cluster.clone());
            }
        }
        part.deployments
            .insert(application_id.to_owned(), d.clone());
        Some(part)
    }

    /// Whether a deployment waits to converge.
    pub fn needs_convergence(&self) -> bool {
        self.all_dirty || !self.dirty.is_empty()
    }

    /// Converges the deployments inputs touched since the last call (all of them after a tick):
    /// minimum members, startup order, statuses, terminations, the end of undeployments.
    pub fn converge_dirty(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let apps: Vec<String> = if std::mem::take(&mut self.all_dirty) {
            self.dirty.clear();
            self.deployments.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.dirty).into_iter().collect()
        };
        for app in apps {
            self.converge_app(now_ms, &app, &mut out);
        }
        out
    }

    /// The application an input concerns (`None`: it may concern any, or is a tick).
    fn application_of(&self, input: &Input) -> Option<String> {
        let of_member = |id: &str| self.topology.member(id).map(|m| m.application_id.clone());
        match input {
            Input::Deploy(plan) | Input::UpdatePlan(plan) => Some(plan.application_id.clone()),
            Input::Undeploy { application_id, .. }
            | Input::UpdateArtifacts { application_id, .. } => Some(application_id.clone()),
            Input::Started { member_id, .. } | Input::StartFailed { member_id, .. } => {
                of_member(member_id)
            }
            Input::Event(e) => match e {
                Event::InstanceStarted(r)
                | Event::InstanceActivated(r)
                | Event::InstanceMaintenanceMode(r)
                | Event::InstanceReadyToShutdown(r)
                | Event::InstanceFailed { instance: r, .. }
                | Event::InstanceArtifactUpdated { instance: r, .. }
                | Event::InstanceHealth { instance: r, .. } => Some(r.application_id.clone()),
                Event::MemberProcessExited { member_id, .. } => of_member(member_id),
                _ => None,
            },
            Input::Scale(c) => match c {
                ScaleCommand::ScaleTo { cluster_id, .. }
                | ScaleCommand::ScaleDown { cluster_id, .. }
                | ScaleCommand::BeyondMax { cluster_id, .. } => self
                    .topology
                    .clusters
                    .get(cluster_id)
                    .map(|c| c.application_id.clone()),
                ScaleCommand::ScaleIn { application_id, .. }
                | ScaleCommand::GroupInstances { application_id, .. } => {
                    Some(application_id.clone())
                }
                ScaleCommand::MemberFault { member_id, .. } => of_member(member_id),
                ScaleCommand::MemberActive { instance } => Some(instance.application_id.clone()),
            },
            Input::Tick | Input::TenantRouting { .. } | Input::DomainRoutes(..) => None,
        }
    }

    pub(super) fn cluster_plan(&self, cluster_id: &str) -> Option<(String, ClusterPlan)> {
        self.deployments.iter().find_map(|(app, d)| {
            d.plan
                .clusters
                .iter()
                .find(|c| c.cluster_id == cluster_id)
                .map(|c| (app.clone(), c.clone()))
        })
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

    pub(super) fn member_mut(&mut self, member_id: &str) -> Option<&mut Member> {
        self.topology
            .clusters
            .values_mut()
            .find_map(|c| c.members.get_mut(member_id))
    }

    pub(super) fn instance_active(&self, cluster_id: &str, instance_id: &str) -> bool {
        self.topology
            .clusters
            .get(cluster_id)
            .and_then(|c| c.instances.get(instance_id))
            .is_some_and(|i| i.status == InstanceStatus::Active)
    }

    /// A host name of `plan` that another deployed application's cluster already has: host names
    /// are unique across the platform, since the load balancer routes by them.
    pub fn host_conflict(&self, plan: &DeploymentPlan) -> Option<String> {
        let wanted: BTreeSet<&str> = plan
            .clusters
            .iter()
            .flat_map(|c| c.host_names.iter().map(String::as_str))
            .collect();
        self.topology
            .clusters
            .values()
            .filter(|c| c.application_id != plan.application_id)
            .flat_map(|c| c.host_names.iter())
            .find(|h| wanted.contains(h.as_str()))
            .cloned()
    }

    /// Members still Created: asked of the provider, its answer not recorded.
    pub fn members_created(&self) -> Vec<String> {
        self.topology
            .clusters
            .values()
            .flat_map(|c| c.members.values())
            .filter(|m| m.status == MemberStatus::Created)
            .map(|m| m.member_id.clone())
            .collect()
    }

    /// What a controller starting over tells the members still on their way to Active: the
    /// status each one reached (`MemberInitialized`, `MemberStarted`), published again. An agent
    /// that waits for its member's status (the mock IaaS' simulated agents do) or missed it while
    /// the controller was away goes on from there instead of waiting out the activation timeout.
    pub fn restart_announcements(&self, running: &BTreeSet<String>) -> Vec<Event> {
        self.topology
            .clusters
            .values()
            .flat_map(|c| c.members.values())
            .filter(|m| running.contains(&m.member_id))
            .filter_map(|m| {
                let change = MemberChange { member: m.clone() };
                match m.status {
                    MemberStatus::Initialized => Some(Event::MemberInitialized(change)),
                    MemberStatus::Starting => Some(Event::MemberStarted(change)),
                    _ => None,
                }
            })
            .collect()
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

/// The partition to take a member from when scaling down, as Stratos' partition algorithms do:
/// `one-after-another` empties the last partition (in the policy's order) that has members;
/// `round-robin` takes from the fullest (the last on a tie). `None` when no partition has one.
pub fn choose_victim_partition(
    placement: &Placement,
    per_partition: &BTreeMap<String, u32>,
) -> Option<String> {
    let count = |p: &nubo_plan::PlacementPartition| per_partition.get(&p.id).copied().unwrap_or(0);
    let with_members = placement.partitions.iter().filter(|p| count(p) > 0);
    if placement.algorithm == "one-after-another" {
        with_members.map(|p| p.id.clone()).next_back()
    } else {
        with_members
            .enumerate()
            .max_by_key(|(i, p)| (count(p), *i))
            .map(|(_, p)| p.id.clone())
    }
}

/// The partition of cluster `plan` to take one of the `live` members of an instance from when
/// scaling down ([`choose_victim_partition`] over their placement); `None` when their network
/// partition has no placement (any member may go then).
pub fn victim_partition<'a>(
    plan: &ClusterPlan,
    live: impl IntoIterator<Item = &'a Member>,
) -> Option<String> {
    let mut live = live.into_iter().peekable();
    let np = live.peek()?.network_partition_id.clone();
    let placement = plan
        .placements
        .iter()
        .find(|p| p.network_partition_id == np)?;
    let mut per_partition = BTreeMap::new();
    for m in live {
        *per_partition.entry(m.partition_id.clone()).or_insert(0u32) += 1;
    }
    choose_victim_partition(placement, &per_partition)
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
