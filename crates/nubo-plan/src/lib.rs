//! Deployment plans: from an application and the artifacts it names to the clusters to create,
//! with their host names, ports, placement and startup dependencies. Pure: the manager plans, the
//! controller carries a plan out, the autoscaler reads its thresholds.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};

use nubo_model::{
    Application, ApplicationPolicy, Cartridge, CartridgeGroup, ChildRef, DeploymentPolicy,
    GroupRef, NetworkPartition,
};
use serde::{Deserialize, Serialize};

/// A port of a cluster: the workload's port and the load balancer's port in front of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPort {
    /// Name from the cartridge (or `port-<n>`).
    pub name: String,
    /// `http`, `https`, `tcp`, `udp`.
    pub protocol: String,
    /// The port declared by the cartridge.
    pub port: u16,
    /// The load balancer's port.
    pub proxy_port: Option<u16>,
}

/// A deployment's status (§5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeploymentStatus {
    /// Deployed: members are kept at their minimum.
    Deployed,
    /// Being undeployed.
    Undeploying,
}

/// A partition a cluster may place members in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementPartition {
    /// Partition id.
    pub id: String,
    /// Cap on members in it (`None`: no cap).
    pub max: Option<u32>,
    /// Who its members run as (the partition's `runAsUser` or `runAsUidRange` property), for
    /// providers that run processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
    /// The container engine its members run on (the partition's `endpoint` property, for the
    /// `docker` provider: `unix:///run/docker.sock`, a Podman socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The engine's TLS files on the hosts (the partition's `tlsCa`, `tlsCert` and `tlsKey`
    /// properties), for a `tcp://` engine.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_tls: BTreeMap<String, String>,
    /// The platform's Kubernetes cluster its members run on (the partition's `cluster`
    /// property, Stratos' name), for the `kubernetes` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_cluster: Option<String>,
    /// The user namespace of its members' containers (the partition's `userNamespace`
    /// property: `auto`, a private range of ids per container, which Podman offers; `host`,
    /// none), for the `docker` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_namespace: Option<String>,
}

/// The values of a `docker` partition's `userNamespace` property.
pub const USER_NAMESPACES: [&str; 2] = ["auto", "host"];

/// Whether `image` is one a partition's `allowedImages` property allows: a comma-separated list
/// of images, each exact or ending in `*` (a prefix); no property, any image.
pub fn image_allowed(allowed: Option<&str>, image: &str) -> bool {
    let Some(list) = allowed else {
        return true;
    };
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .any(|p| match p.strip_suffix('*') {
            Some(prefix) => image.starts_with(prefix),
            None => image == p,
        })
}

/// Who a member's processes run as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunAs {
    /// A user (a name, or `uid[:gid]`), the same for every member of the partition.
    User(String),
    /// A user id of its own per member, from this range (its group id is the same number).
    UidRange(u32, u32),
}

impl RunAs {
    /// Reads a partition's properties: `runAsUidRange` (`A-B`) or `runAsUser`.
    pub fn from_properties(props: &[nubo_model::Property]) -> Result<Option<RunAs>, String> {
        let get = |name: &str| {
            props
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.value.trim())
        };
        if let Some(range) = get("runAsUidRange") {
            let parsed = range
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
                })
                .filter(|(a, b)| *a >= 1000 && a <= b);
            return match parsed {
                Some((a, b)) => Ok(Some(RunAs::UidRange(a, b))),
                None => Err(format!(
                    "runAsUidRange `{range}` is not a range of user ids `A-B` with 1000 <= A <= B"
                )),
            };
        }
        match get("runAsUser") {
            Some("") | None => Ok(None),
            Some(u) => Ok(Some(RunAs::User(u.to_owned()))),
        }
    }
}

/// Where a cluster's members go in one network partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Network partition.
    pub network_partition_id: String,
    /// IaaS provider of the network partition.
    pub provider: String,
    /// `round-robin` or `one-after-another`.
    pub algorithm: String,
    /// Partitions in order.
    pub partitions: Vec<PlacementPartition>,
}

/// One cluster to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlan {
    /// `<appId>.<alias>.<type>.domain`.
    pub cluster_id: String,
    /// Alias.
    pub alias: String,
    /// Cartridge type.
    pub service_name: String,
    /// Host names.
    pub host_names: Vec<String>,
    /// Ports.
    pub ports: Vec<ClusterPort>,
    /// Minimum members per cluster instance.
    pub min: u32,
    /// Maximum members per cluster instance.
    pub max: u32,
    /// Deployment policy id.
    pub deployment_policy: String,
    /// Autoscaling policy id.
    pub autoscaling_policy: String,
    /// Placement per network partition.
    pub placements: Vec<Placement>,
    /// Clusters that must be Active before this one starts.
    pub depends_on: Vec<String>,
    /// The `iaasProvider` entries of the cartridge: type → image id (for `local`, the command line).
    pub images: BTreeMap<String, String>,
    /// Cartridge and subscription properties (`payload_parameter.*` and the rest).
    pub properties: BTreeMap<String, String>,
    /// Enclosing group aliases, outermost first.
    pub group_path: Vec<String>,
    /// Stratos' payload keys the definitions give (`MULTITENANT`, `TENANT_ID`, `TENANT_RANGE`,
    /// `PROVIDER`, `REPO_URL`, `DEPENDENCY_ALIASES`, `PORT_MAPPINGS`, `GROUP_NAME`,
    /// `DEPLOYMENT`), for the agent's payload (docs/api.md, "The member's payload").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub payload: BTreeMap<String, String>,
    /// Its members' timeouts, from the cartridge's or the subscription's properties (the
    /// server's defaults where they say nothing).
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    /// The autoscaling policy's thresholds, as they were at deployment.
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// A cluster's timeouts, in seconds, each `None` where the server's default applies. Set with
/// the cartridge's (or the subscription's) properties `activationTimeout` (creation to Active),
/// `portCheckTimeout` (the agent's wait for the workload's ports), `drainTimeout` (maintenance
/// to ready-to-shut-down, and an unanswered clean-up) and `terminationTimeout` (from SIGTERM to
/// SIGKILL of the workload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Seconds from a member's creation to Active before it is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<u64>,
    /// Seconds the agent waits for the workload's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_check: Option<u64>,
    /// Seconds a member may drain before it is terminated anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<u64>,
    /// Seconds a workload has from SIGTERM to its end before it is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<u64>,
}

impl Timeouts {
    /// Whether none is set.
    pub fn is_empty(&self) -> bool {
        *self == Timeouts::default()
    }

    /// Reads the properties; a value that is not a whole number of seconds from 1 to 86,400 is
    /// an error naming the property.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Timeouts, String> {
        let get = |name: &str| -> Result<Option<u64>, String> {
            match props.get(name).map(|v| v.trim()) {
                None | Some("") => Ok(None),
                Some(v) => nubo_model::timeout_seconds(name, v).map(Some),
            }
        };
        let [a, p, d, t] = nubo_model::TIMEOUT_PROPERTIES;
        Ok(Timeouts {
            activation: get(a)?,
            port_check: get(p)?,
            drain: get(d)?,
            termination: get(t)?,
        })
    }

    /// Each timeout from `self`, else from `defaults`.
    pub fn or(self, defaults: Timeouts) -> Timeouts {
        Timeouts {
            activation: self.activation.or(defaults.activation),
            port_check: self.port_check.or(defaults.port_check),
            drain: self.drain.or(defaults.drain),
            termination: self.termination.or(defaults.termination),
        }
    }
}

/// Load thresholds of an autoscaling policy (`None`: the factor is not used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// Requests in flight one member should carry.
    pub requests_in_flight: Option<f64>,
    /// Memory consumption, percent.
    pub memory_consumption: Option<f64>,
    /// Load average, percent of the cores.
    pub load_average: Option<f64>,
}

/// An application instance: the application in one network partition (or group of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstancePlan {
    /// `<appId>-<n>`.
    pub instance_id: String,
    /// The network partition of this instance.
    pub network_partition_id: String,
}

/// What happens to the siblings of a child (cluster or group) that becomes Inactive (§7.8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Termination {
    /// `terminate-all`: every child of the level is terminated, then everything restarts.
    #[serde(rename = "terminate-all")]
    All,
    /// `terminate-dependents`: the inactive child and what starts after it are terminated, then
    /// restarted in startup order.
    #[serde(rename = "terminate-dependents")]
    Dependents,
    /// `terminate-none` (the default): nothing is terminated; the level itself becomes Inactive,
    /// and the enclosing level's behaviour applies to it.
    #[default]
    #[serde(rename = "terminate-none")]
    None,
}

impl Termination {
    /// From the artifact's string (`None` when absent or unknown).
    pub fn parse(s: Option<&str>) -> Termination {
        match s.map(str::trim) {
            Some("terminate-all") => Termination::All,
            Some("terminate-dependents") => Termination::Dependents,
            _ => Termination::None,
        }
    }
}

/// A level of the application tree: the application itself (empty path) or a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopePlan {
    /// Group aliases from the outermost; empty for the application level.
    pub path: Vec<String>,
    /// Group instances per parent instance (`groupMinInstances`; 1 for the application).
    pub min_instances: u32,
    /// At most this many (`groupMaxInstances`); group scaling is on when it is above 1.
    pub max_instances: u32,
    /// Termination behaviour of the level's children.
    pub termination: Termination,
    /// `scalingDependents`: each list's clusters scale together (its `cartridge.` entries).
    pub scaling_dependents: Vec<Vec<String>>,
    /// The `group.` entries of each list (aligned with `scaling_dependents`), as group paths: a
    /// group follows its list by its number of group instances, `groupMinInstances` times the
    /// list's factor (Stratos' `GroupMonitor.onParentScalingEvent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scaling_dependent_groups: Vec<Vec<Vec<String>>>,
}

/// The id an application of `tenant_id` runs under: its own id for the super tenant (as in
/// Stratos), `<id>.t<tenant>` for another tenant. Application ids hold no `.`, so no two tenants'
/// applications (nor their clusters, whose ids start with it) can share one.
pub fn runtime_id(tenant_id: i64, application_id: &str) -> String {
    if tenant_id == nubo_model::SUPER_TENANT_ID {
        application_id.to_owned()
    } else {
        format!("{application_id}.t{tenant_id}")
    }
}

/// The tenant and the application's own id a runtime id stands for (the inverse of
/// [`runtime_id`]).
pub fn split_runtime_id(runtime_id: &str) -> (i64, &str) {
    if let Some((app, t)) = runtime_id.rsplit_once(".t")
        && !app.contains('.')
        && let Ok(tenant) = t.parse::<i64>()
    {
        return (tenant, app);
    }
    (nubo_model::SUPER_TENANT_ID, runtime_id)
}

/// Everything needed to deploy an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPlan {
    /// The application's runtime id ([`runtime_id`]): what the topology, the events and the
    /// controller know it by.
    pub application_id: String,
    /// Owning tenant.
    pub tenant_id: i64,
    /// Application policy.
    pub application_policy: String,
    /// Application instances started now.
    pub instances: Vec<InstancePlan>,
    /// Clusters.
    pub clusters: Vec<ClusterPlan>,
    /// The application and its groups, outermost first.
    #[serde(default)]
    pub scopes: Vec<ScopePlan>,
    /// Network partitions to burst into, a group at a time, in order, when a cluster is full
    /// (`one-after-another` with several network-partition groups).
    #[serde(default)]
    pub burst_groups: Vec<Vec<String>>,
}

impl DeploymentPlan {
    /// The level with this group path.
    pub fn scope(&self, path: &[String]) -> Option<&ScopePlan> {
        self.scopes.iter().find(|s| s.path == path)
    }

    /// The cluster ids, in plan order.
    pub fn cluster_ids(&self) -> Vec<String> {
        self.clusters.iter().map(|c| c.cluster_id.clone()).collect()
    }

    /// A cluster's plan.
    pub fn cluster(&self, cluster_id: &str) -> Option<&ClusterPlan> {
        self.clusters.iter().find(|c| c.cluster_id == cluster_id)
    }
}

/// What the planner needs besides the application.
#[derive(Debug, Default, Clone)]
pub struct PlanInputs {
    /// Cartridges by type.
    pub cartridges: BTreeMap<String, Cartridge>,
    /// Cartridge groups by name.
    pub groups: BTreeMap<String, CartridgeGroup>,
    /// Deployment policies by id.
    pub deployment_policies: BTreeMap<String, DeploymentPolicy>,
    /// Network partitions by id.
    pub network_partitions: BTreeMap<String, NetworkPartition>,
    /// Autoscaling policies by id.
    pub autoscaling_policies: BTreeMap<String, nubo_model::AutoscalingPolicy>,
}

/// Why an application cannot be deployed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

fn cluster_id(app: &str, alias: &str, ty: &str) -> String {
    format!("{app}.{alias}.{ty}.domain")
}

/// Builds the plan. Checks what only deployment can check: the application policy's network
/// partitions appear in every deployment policy the application uses (Stratos' rule).
pub fn plan(
    app: &Application,
    policy: &ApplicationPolicy,
    tenant_id: i64,
    inputs: &PlanInputs,
) -> Result<DeploymentPlan, PlanError> {
    // Clusters, members and instances carry the runtime id; host names the application's own.
    let app_id = &runtime_id(tenant_id, &app.application_id);
    let name = &app.application_id;
    let mut clusters = Vec::new();
    for spec in app.clusters() {
        let c = spec.cartridge;
        let alias = &c.subscribable_info.alias;
        let cartridge = inputs
            .cartridges
            .get(&c.cartridge_type)
            .ok_or_else(|| PlanError(format!("cartridge `{}` does not exist", c.cartridge_type)))?;
        let dp_id = spec
            .deployment_policy
            .ok_or_else(|| PlanError(format!("cluster `{alias}` has no deployment policy")))?;
        let dp = inputs
            .deployment_policies
            .get(dp_id)
            .ok_or_else(|| PlanError(format!("deployment policy `{dp_id}` does not exist")))?;
        for np in &policy.network_partitions {
            if !dp.network_partitions.iter().any(|r| &r.id == np) {
                return Err(PlanError(format!(
                    "application policy `{}` names network partition `{np}`, which deployment policy `{dp_id}` (used by `{alias}`) does not: add it there or remove it from the application policy",
                    policy.id
                )));
            }
        }
        let mut placements = Vec::new();
        for r in &dp.network_partitions {
            let np = inputs
                .network_partitions
                .get(&r.id)
                .ok_or_else(|| PlanError(format!("network partition `{}` does not exist", r.id)))?;
            placements.push(Placement {
                network_partition_id: r.id.clone(),
                provider: np.provider.clone(),
                algorithm: r.partition_algo.clone(),
                partitions: r
                    .partitions
                    .iter()
                    .map(|p| {
                        let props = np
                            .partitions
                            .iter()
                            .find(|q| q.id == p.id)
                            .and_then(|q| q.property.clone())
                            .unwrap_or_default();
                        if np.provider == "docker" || np.provider == "kubernetes" {
                            let image = cartridge
                                .iaas_provider
                                .iter()
                                .flatten()
                                .find(|i| i.iaas_type == np.provider)
                                .and_then(|i| i.image_id.clone())
                                .ok_or_else(|| {
                                    PlanError(format!(
                                        "cartridge `{}` has no `{}` iaasProvider (its image) for network partition `{}`",
                                        c.cartridge_type, np.provider, r.id
                                    ))
                                })?;
                            let allowed = props
                                .iter()
                                .find(|x| x.name == "allowedImages")
                                .map(|x| x.value.as_str());
                            if !image_allowed(allowed, &image) {
                                return Err(PlanError(format!(
                                    "image `{image}` of cartridge `{}` is not allowed on network partition `{}`, partition `{}` (its allowedImages: {}): ask the platform's administrator",
                                    c.cartridge_type,
                                    r.id,
                                    p.id,
                                    allowed.unwrap_or_default()
                                )));
                            }
                        }
                        let kube_cluster = props
                            .iter()
                            .find(|x| x.name == "cluster")
                            .map(|x| x.value.clone());
                        if np.provider == "kubernetes" && kube_cluster.is_none() {
                            return Err(PlanError(format!(
                                "network partition `{}`, partition `{}`: a `kubernetes` partition names its Kubernetes cluster with the property `cluster`",
                                r.id, p.id
                            )));
                        }
                        let user_namespace = props
                            .iter()
                            .find(|x| x.name == "userNamespace")
                            .map(|x| x.value.clone());
                        if let Some(u) = &user_namespace
                            && !USER_NAMESPACES.contains(&u.as_str())
                        {
                            return Err(PlanError(format!(
                                "network partition `{}`, partition `{}`: userNamespace `{u}` is not one of {}",
                                r.id,
                                p.id,
                                USER_NAMESPACES.join(", ")
                            )));
                        }
                        Ok(PlacementPartition {
                            kube_cluster,
                            user_namespace,
                            engine_tls: props
                                .iter()
                                .filter(|x| matches!(x.name.as_str(), "tlsCa" | "tlsCert" | "tlsKey"))
                                .map(|x| (x.name.clone(), x.value.clone()))
                                .collect(),
                            engine: props
                                .iter()
                                .find(|x| x.name == "endpoint")
                                .map(|x| x.value.clone()),
                            id: p.id.clone(),
                            max: p.partition_max,
                            run_as: RunAs::from_properties(&props).map_err(|e| {
                                PlanError(format!(
                                    "network partition `{}`, partition `{}`: {e}",
                                    r.id, p.id
                                ))
                            })?,
                        })
                    })
                    .collect::<Result<Vec<_>, PlanError>>()?,
            });
        }
        let multi_tenant = cartridge.multi_tenant == Some(true);
        let host_names = match &cartridge.host {
            Some(h) if multi_tenant => vec![format!("{name}.{h}")],
            Some(h) => vec![format!("{name}.{alias}.{h}")],
            None => Vec::new(),
        };
        let ports = cartridge
            .port_mapping
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, pm)| ClusterPort {
                name: pm.name.clone().unwrap_or_else(|| format!("port-{}", i + 1)),
                protocol: pm.protocol.clone(),
                port: pm.port,
                proxy_port: pm.proxy_port,
            })
            .collect();
        let images = cartridge
            .iaas_provider
            .iter()
            .flatten()
            .map(|i| (i.iaas_type.clone(), i.image_id.clone().unwrap_or_default()))
            .collect();
        let mut properties: BTreeMap<String, String> = cartridge
            .property
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        properties.extend(
            c.subscribable_info
                .property
                .iter()
                .flatten()
                .map(|p| (p.name.clone(), p.value.clone())),
        );
        let timeouts = Timeouts::from_properties(&properties)
            .map_err(|e| PlanError(format!("cartridge `{alias}`: {e}")))?;
        let mut payload = BTreeMap::new();
        payload.insert("MULTITENANT".to_owned(), multi_tenant.to_string());
        payload.insert("TENANT_ID".to_owned(), tenant_id.to_string());
        payload.insert(
            "TENANT_RANGE".to_owned(),
            if multi_tenant {
                "*".to_owned()
            } else {
                tenant_id.to_string()
            },
        );
        payload.insert("DEPLOYMENT".to_owned(), "default".to_owned());
        if let Some(p) = &cartridge.provider {
            payload.insert("PROVIDER".to_owned(), p.clone());
        }
        if let Some(url) = c
            .subscribable_info
            .artifact_repository
            .as_ref()
            .and_then(|r| r.repo_url.clone())
        {
            payload.insert("REPO_URL".to_owned(), url);
        }
        if let Some(d) = &c.subscribable_info.dependency_aliases {
            payload.insert("DEPENDENCY_ALIASES".to_owned(), d.join(","));
        }
        if let Some(g) = spec.group_path.last() {
            payload.insert("GROUP_NAME".to_owned(), g.to_string());
        }
        let mappings: Vec<String> = cartridge
            .port_mapping
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, pm)| {
                format!(
                    "NAME:{}|PROTOCOL:{}|PORT:{}|PROXY_PORT:{}|TYPE:{}",
                    pm.name.clone().unwrap_or_else(|| format!("port-{}", i + 1)),
                    pm.protocol,
                    pm.port,
                    pm.proxy_port.unwrap_or(0),
                    pm.kubernetes_port_type.as_deref().unwrap_or("ClusterIP")
                )
            })
            .collect();
        payload.insert("PORT_MAPPINGS".to_owned(), mappings.join(";"));
        clusters.push(ClusterPlan {
            payload,
            timeouts,
            cluster_id: cluster_id(app_id, alias, &c.cartridge_type),
            alias: alias.clone(),
            service_name: c.cartridge_type.clone(),
            host_names,
            ports,
            min: c.cartridge_min,
            max: c.cartridge_max,
            deployment_policy: dp_id.to_owned(),
            autoscaling_policy: c
                .subscribable_info
                .autoscaling_policy
                .clone()
                .unwrap_or_default(),
            placements,
            depends_on: Vec::new(),
            images,
            properties,
            group_path: spec.group_path.iter().map(|s| s.to_string()).collect(),
            thresholds: c
                .subscribable_info
                .autoscaling_policy
                .as_ref()
                .and_then(|id| inputs.autoscaling_policies.get(id))
                .map(|p| Thresholds {
                    requests_in_flight: p
                        .load_thresholds
                        .requests_in_flight
                        .as_ref()
                        .map(|t| t.threshold),
                    memory_consumption: p
                        .load_thresholds
                        .memory_consumption
                        .as_ref()
                        .map(|t| t.threshold),
                    load_average: p.load_thresholds.load_average.as_ref().map(|t| t.threshold),
                })
                .unwrap_or_default(),
        });
    }
    add_dependencies(app, inputs, &mut clusters);
    let scopes = scopes(app, inputs, &clusters);
    let (first, burst_groups) = match policy.algorithm.as_str() {
        "all-at-once" => (policy.network_partitions.clone(), Vec::new()),
        _ => {
            let mut groups = policy.network_partition_groups().into_iter();
            (groups.next().unwrap_or_default(), groups.collect())
        }
    };
    let instances = first
        .into_iter()
        .enumerate()
        .map(|(i, np)| InstancePlan {
            instance_id: format!("{app_id}-{}", i + 1),
            network_partition_id: np,
        })
        .collect::<Vec<_>>();
    if instances.is_empty() {
        return Err(PlanError(format!(
            "application policy `{}` names no network partition",
            policy.id
        )));
    }
    Ok(DeploymentPlan {
        application_id: app_id.to_owned(),
        tenant_id,
        application_policy: policy.id.clone(),
        instances,
        clusters,
        scopes,
        burst_groups,
    })
}

/// The id of a group instance: the first instance of a group shares its parent's id (so an
/// application without group scaling has one instance id throughout); the others are
/// `<parent>.<alias>-<n>`.
pub fn group_instance_id(parent: &str, alias: &str, n: u32) -> String {
    if n <= 1 {
        parent.to_owned()
    } else {
        format!("{parent}.{alias}-{n}")
    }
}

/// The instance id, at depth `depth` of the tree (0: the application instance), that a cluster
/// instance `instance_id` of a cluster inside `group_path` belongs to.
pub fn scope_instance(instance_id: &str, group_path: &[String], depth: usize) -> String {
    let mut id = instance_id;
    for alias in group_path.iter().skip(depth).rev() {
        let marker = format!(".{alias}-");
        if let Some(pos) = id.rfind(&marker) {
            let n = &id[pos + marker.len()..];
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                id = &id[..pos];
            }
        }
    }
    id.to_owned()
}

/// The application level and every group level, with their instance bounds, termination
/// behaviour and scaling-dependent lists (expanded to cluster ids).
fn scopes(app: &Application, inputs: &PlanInputs, clusters: &[ClusterPlan]) -> Vec<ScopePlan> {
    /// Each list's clusters and groups (paths), lists of fewer than two entries left out.
    type Lists = (Vec<Vec<String>>, Vec<Vec<Vec<String>>>);
    fn dependents(
        deps: Option<&nubo_model::Dependencies>,
        clusters: &[ClusterPlan],
        scope: &[String],
    ) -> Lists {
        let lists: Vec<(Vec<String>, Vec<Vec<String>>)> = deps
            .iter()
            .flat_map(|d| d.scaling_dependents.iter().flatten())
            .filter_map(|l| l.parse().ok())
            .map(|entries: Vec<ChildRef>| {
                let mut cs = Vec::new();
                let mut gs = Vec::new();
                for e in &entries {
                    match e {
                        ChildRef::Cartridge(_) => cs.extend(clusters_under(e, clusters, scope)),
                        ChildRef::Group(g) => {
                            let mut path = scope.to_vec();
                            path.push(g.clone());
                            gs.push(path);
                        }
                    }
                }
                (cs, gs)
            })
            .filter(|(cs, gs)| cs.len() + gs.len() > 1)
            .collect();
        let groups = if lists.iter().any(|(_, gs)| !gs.is_empty()) {
            lists.iter().map(|(_, gs)| gs.clone()).collect()
        } else {
            Vec::new()
        };
        (lists.into_iter().map(|(cs, _)| cs).collect(), groups)
    }
    fn walk(
        g: &GroupRef,
        def: Option<&CartridgeGroup>,
        scope: &mut Vec<String>,
        clusters: &[ClusterPlan],
        out: &mut Vec<ScopePlan>,
    ) {
        scope.push(g.alias.clone());
        let deps = def.and_then(|d| d.dependencies.as_ref());
        let min = g.group_min_instances.unwrap_or(1).max(1);
        let (scaling_dependents, scaling_dependent_groups) = dependents(deps, clusters, scope);
        out.push(ScopePlan {
            path: scope.clone(),
            min_instances: min,
            max_instances: g.group_max_instances.unwrap_or(min).max(min),
            termination: Termination::parse(deps.and_then(|d| d.termination_behaviour.as_deref())),
            scaling_dependents,
            scaling_dependent_groups,
        });
        for child in g.groups.iter().flatten() {
            let child_def =
                def.and_then(|d| d.groups.iter().flatten().find(|x| x.name == child.name));
            walk(child, child_def, scope, clusters, out);
        }
        scope.pop();
    }
    let deps = app.components.dependencies.as_ref();
    let (scaling_dependents, scaling_dependent_groups) = dependents(deps, clusters, &[]);
    let mut out = vec![ScopePlan {
        path: Vec::new(),
        min_instances: 1,
        max_instances: 1,
        termination: Termination::parse(deps.and_then(|d| d.termination_behaviour.as_deref())),
        scaling_dependents,
        scaling_dependent_groups,
    }];
    for g in app.components.groups.iter().flatten() {
        walk(
            g,
            inputs.groups.get(&g.name),
            &mut Vec::new(),
            clusters,
            &mut out,
        );
    }
    out
}

/// Every cluster id under a child (a cartridge alias, or all clusters inside a group alias).
fn clusters_under(child: &ChildRef, clusters: &[ClusterPlan], scope: &[String]) -> Vec<String> {
    clusters
        .iter()
        .filter(|c| c.group_path.starts_with(scope))
        .filter(|c| match child {
            ChildRef::Cartridge(a) => c.alias == *a && c.group_path.len() == scope.len(),
            ChildRef::Group(g) => c.group_path.get(scope.len()) == Some(g),
        })
        .map(|c| c.cluster_id.clone())
        .collect()
}

/// Startup orders at every level: every cluster under an entry depends on every cluster under
/// the entry before it. Group orders come from the group definitions.
fn add_dependencies(app: &Application, inputs: &PlanInputs, clusters: &mut [ClusterPlan]) {
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    let mut levels: Vec<(Vec<String>, Option<nubo_model::Dependencies>)> =
        vec![(Vec::new(), app.components.dependencies.clone())];
    fn walk(
        g: &GroupRef,
        def: Option<&CartridgeGroup>,
        scope: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, Option<nubo_model::Dependencies>)>,
    ) {
        scope.push(g.alias.clone());
        out.push((scope.clone(), def.and_then(|d| d.dependencies.clone())));
        for child in g.groups.iter().flatten() {
            let child_def =
                def.and_then(|d| d.groups.iter().flatten().find(|x| x.name == child.name));
            walk(child, child_def, scope, out);
        }
        scope.pop();
    }
    for g in app.components.groups.iter().flatten() {
        walk(g, inputs.groups.get(&g.name), &mut Vec::new(), &mut levels);
    }
    for (scope, deps) in levels {
        for order in deps.iter().flat_map(|d| d.startup_orders.iter().flatten()) {
            let Ok(entries) = order.parse() else { continue };
            for w in entries.windows(2) {
                for before in clusters_under(&w[0], clusters, &scope) {
                    for after in clusters_under(&w[1], clusters, &scope) {
                        edges.insert((after, before.clone()));
                    }
                }
            }
        }
    }
    for c in clusters.iter_mut() {
        c.depends_on = edges
            .iter()
            .filter(|(a, _)| *a == c.cluster_id)
            .map(|(_, b)| b.clone())
            .collect();
    }
}

/// Who turns an application into a deployment plan (the manager, over its stored artifacts). The
/// controller's deploy service asks it, so that deploying has one owner and the controller never
/// reads artifacts.
pub trait Planner: Send + Sync + 'static {
    /// Why a plan cannot be made (the application or a policy is missing, or invalid).
    type Error: std::error::Error + Send + Sync + 'static;
    /// The plan of deploying `tenant`'s application `application_id` with the application policy
    /// `policy_id`.
    fn plan(
        &self,
        tenant: i64,
        application_id: &str,
        policy_id: &str,
    ) -> impl std::future::Future<Output = Result<DeploymentPlan, Self::Error>> + Send;
    /// `Ok` when `tenant` has the application `application_id`; its error otherwise.
    fn application(
        &self,
        tenant: i64,
        application_id: &str,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

#[cfg(test)]
mod runtime_id_tests {
    use super::*;

    #[test]
    fn runtime_ids_keep_tenants_apart_and_read_back() {
        assert_eq!(runtime_id(nubo_model::SUPER_TENANT_ID, "shop"), "shop");
        assert_eq!(runtime_id(3, "shop"), "shop.t3");
        assert_eq!(split_runtime_id("shop.t3"), (3, "shop"));
        assert_eq!(
            split_runtime_id("shop"),
            (nubo_model::SUPER_TENANT_ID, "shop")
        );
        // A super-tenant application may be called `shop-t3`: it is not tenant 3's `shop`.
        assert_ne!(
            runtime_id(nubo_model::SUPER_TENANT_ID, "shop-t3"),
            runtime_id(3, "shop")
        );
        assert_eq!(
            split_runtime_id("a.b.t1"),
            (nubo_model::SUPER_TENANT_ID, "a.b.t1")
        );
    }
}

#[cfg(test)]
mod image_tests {
    #[test]
    fn allowed_images_are_exact_or_prefixes() {
        use super::image_allowed;
        assert!(image_allowed(None, "anything:1"));
        let list = Some("registry.local/shop/*, busybox:1.36");
        assert!(image_allowed(list, "registry.local/shop/web:2"));
        assert!(image_allowed(list, "busybox:1.36"));
        assert!(!image_allowed(list, "busybox:latest"));
        assert!(!image_allowed(list, "registry.local/other/x:1"));
        assert!(
            !image_allowed(Some(""), "busybox:1.36"),
            "an empty list allows nothing"
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn inputs() -> PlanInputs {
        let mut i = PlanInputs::default();
        for ty in ["php", "mysql"] {
            let c: Cartridge = serde_json::from_value(json!({"type": ty, "category": "x", "host": "example.com",
                "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": 8280}],
                "iaasProvider": [{"type": "local", "imageId": format!("run-{ty}")}]})).unwrap();
            i.cartridges.insert(ty.into(), c);
        }
        i.groups.insert(
            "g".into(),
            serde_json::from_value(json!({"name": "g", "cartridges": ["php", "mysql"],
            "dependencies": {"startupOrders": [{"aliases": ["cartridge.db", "cartridge.web"]}]}}))
            .unwrap(),
        );
        i.deployment_policies.insert("dp".into(), serde_json::from_value(json!({"id": "dp", "networkPartitions": [
            {"id": "np1", "partitionAlgo": "round-robin", "partitions": [{"id": "p1", "partitionMax": 3}]}]})).unwrap());
        i.network_partitions.insert(
            "np1".into(),
            serde_json::from_value(
                json!({"id": "np1", "provider": "local", "partitions": [{"id": "p1"}]}),
            )
            .unwrap(),
        );
        i
    }

    fn app() -> Application {
        serde_json::from_value(json!({"applicationId": "shop", "components": {
            "groups": [{"name": "g", "alias": "grp", "deploymentPolicy": "dp", "cartridges": [
                {"type": "mysql", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "db", "autoscalingPolicy": "a"}},
                {"type": "php", "cartridgeMin": 2, "cartridgeMax": 4, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "a"}}]}],
            "cartridges": [{"type": "php", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "front", "autoscalingPolicy": "a", "deploymentPolicy": "dp"}}],
            "dependencies": {"startupOrders": [{"aliases": ["group.grp", "cartridge.front"]}]}}})).unwrap()
    }

    fn policy(nps: &[&str]) -> ApplicationPolicy {
        serde_json::from_value(
            json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": nps}),
        )
        .unwrap()
    }

    #[test]
    fn clusters_host_names_ports_and_startup_dependencies() {
        let p = plan(&app(), &policy(&["np1"]), -1234, &inputs()).unwrap();
        let by_alias = |a: &str| p.clusters.iter().find(|c| c.alias == a).unwrap();
        let web = by_alias("web");
        assert_eq!(web.cluster_id, "shop.web.php.domain");
        assert_eq!(web.host_names, ["shop.web.example.com"]);
        assert_eq!((web.min, web.max), (2, 4));
        assert_eq!(web.ports[0].proxy_port, Some(8280));
        assert_eq!(web.images["local"], "run-php");
        assert_eq!(web.placements[0].partitions[0].max, Some(3));
        // web after db (group order); front after the whole group (application order).
        assert_eq!(web.depends_on, ["shop.db.mysql.domain"]);
        assert!(by_alias("db").depends_on.is_empty());
        assert_eq!(
            by_alias("front").depends_on,
            ["shop.db.mysql.domain", "shop.web.php.domain"]
        );
        assert_eq!(
            p.instances,
            [InstancePlan {
                instance_id: "shop-1".into(),
                network_partition_id: "np1".into()
            }]
        );
    }

    #[test]
    fn an_application_policy_partition_missing_from_a_deployment_policy_is_refused() {
        let e = plan(&app(), &policy(&["np1", "np2"]), -1234, &inputs()).unwrap_err();
        assert!(
            e.0.contains("`np2`") && e.0.contains("deployment policy `dp`"),
            "{e}"
        );
    }
}
