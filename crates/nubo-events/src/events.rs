//! Every event on the bus, its category and topic, and its encoding.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::topology::{Cluster, ClusterInstance, InstanceStatus, Member, MemberPort, Topology};
use crate::{ClusterPort, DeploymentPlan, RunAs};
use crate::{EVENT_VERSION, TOPIC_PREFIX, TopologyPart};

/// The topic families (as in Apache Stratos 4.1), each a topic prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// Topology changes (publisher: cloud controller).
    Topology,
    /// Application, group and application-instance statuses (publisher: autoscaler / controller).
    Application,
    /// Cluster status decisions (publisher: autoscaler; consumer: cloud controller).
    ClusterStatus,
    /// Agent lifecycle reports (publisher: agent; consumer: cloud controller).
    InstanceStatus,
    /// Commands to agents (publisher: controller / autoscaler).
    InstanceNotifier,
    /// Health statistics and requests in flight (publishers: agents, load balancers).
    HealthStats,
    /// Complete-state requests (anyone → the state owners).
    Initializer,
    /// Node supervisor reports (publisher: node supervisor).
    Supervisor,
    /// Commands to node supervisors (publisher: cloud controller; consumer: the node named).
    Node,
    /// Commands to the cloud controller from an API in another process.
    Control,
    /// The event processor's predictions (publisher: an event processor in its own process;
    /// consumer: the autoscaler).
    Predictions,
    /// Workloads' output (publisher: agents; consumers: the API servers' log stores).
    Logs,
    /// The certificates of the tenants' domains, with their private keys (publisher: the API
    /// servers; consumers: the load balancers). Sealed: members never read them.
    Tls,
}

impl Category {
    /// The topic segment.
    pub const fn segment(self) -> &'static str {
        match self {
            Category::Topology => "topology",
            Category::Application => "application",
            Category::ClusterStatus => "cluster/status",
            Category::InstanceStatus => "instance/status",
            Category::InstanceNotifier => "instance/notifier",
            Category::HealthStats => "health",
            Category::Initializer => "initializer",
            Category::Supervisor => "supervisor",
            Category::Node => "node",
            Category::Control => "control",
            Category::Predictions => "predictions",
            Category::Logs => "logs",
            Category::Tls => "tls",
        }
    }

    /// The one topic of this category. Every event of a category goes on the same topic, because
    /// MQTT orders messages per topic only: a member's `MemberInitialized` must never overtake its
    /// `MemberActivated` on the way to a load balancer.
    pub fn topic(self) -> String {
        format!("{TOPIC_PREFIX}/{}", self.segment())
    }

    /// The filter to subscribe to this category with: its topic, and for the commands to agents
    /// every member's topic below it too ([`Category::member_topic`]).
    pub fn filter(self) -> String {
        match self {
            Category::InstanceNotifier => format!("{}/#", self.topic()),
            _ => self.topic(),
        }
    }

    /// The topic of what this category addresses to one member: below the category's topic, so
    /// that an agent subscribes to its own commands only (and the broker sends each agent only
    /// its own). `None` for an id that cannot be a topic level.
    pub fn member_topic(self, member_id: &str) -> Option<String> {
        let valid = !member_id.is_empty() && !member_id.contains(['/', '+', '#', '\0']);
        valid.then(|| format!("{}/{member_id}", self.topic()))
    }
}

/// Ids of one member, as an agent reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRef {
    /// Application.
    pub application_id: String,
    /// Cartridge type.
    pub service_name: String,
    /// Cluster.
    pub cluster_id: String,
    /// Cluster instance.
    pub cluster_instance_id: String,
    /// Member.
    pub member_id: String,
    /// Network partition.
    pub network_partition_id: String,
    /// Partition.
    pub partition_id: String,
}

impl From<&Member> for InstanceRef {
    fn from(m: &Member) -> Self {
        InstanceRef {
            application_id: m.application_id.clone(),
            service_name: m.service_name.clone(),
            cluster_id: m.cluster_id.clone(),
            cluster_instance_id: m.cluster_instance_id.clone(),
            member_id: m.member_id.clone(),
            network_partition_id: m.network_partition_id.clone(),
            partition_id: m.partition_id.clone(),
        }
    }
}

/// A member-level change: the member as it now is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberChange {
    /// The member after the change.
    pub member: Member,
}

/// One member's health, measured by its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberHealth {
    /// Who.
    pub instance: InstanceRef,
    /// Resident memory as a percentage of the member's limit (absent: not measured, as for a
    /// mock member whose pattern has no memory factor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_consumption: Option<f64>,
    /// CPU use as a percentage of the cores the member may use (absent: not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<f64>,
    /// Whether every port of the member accepts connections.
    pub ports_open: bool,
    /// Measurement time, milliseconds since the epoch.
    pub at_ms: u64,
}

/// Which output of a workload a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a workload's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// When the agent read it, milliseconds since the epoch.
    pub at_ms: u64,
    /// Standard output or error.
    pub stream: LogStream,
    /// The line, without its end (at most 16 KiB; invalid UTF-8 replaced).
    pub text: String,
}

/// Lines of one member's workload, as its agent ships them (about four times a second).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogBatch {
    /// The member (the only id a receiver believes: its agent proved it).
    pub member_id: String,
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
    /// Lines the agent dropped since its last batch, because the platform did not take them fast
    /// enough (a workload is never slowed down by its logs).
    #[serde(default)]
    pub dropped: u64,
}

/// Requests in flight at one load balancer for one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestsInFlight {
    /// Cluster.
    pub cluster_id: String,
    /// Network partition of the load balancer.
    pub network_partition_id: String,
    /// Cluster instance, when the load balancer serves one.
    pub cluster_instance_id: Option<String>,
    /// Requests in flight now.
    pub count: f64,
    /// Requests served since the last report.
    pub served: u64,
    /// Which load balancer.
    pub load_balancer_id: String,
    /// Measurement time, milliseconds since the epoch.
    pub at_ms: u64,
}

/// What the event processor predicts for the next minute (Stratos' CEP output, §8): per cluster,
/// the requests in flight summed over the load balancers; per member, memory and load, and when
/// its statistics last arrived. A large platform's predictions come in several events, each for a
/// share of the members; each entry replaces the previous one for its cluster or member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Predictions {
    /// When they were computed, milliseconds since the epoch.
    pub at_ms: u64,
    /// Per cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterPrediction>,
    /// Per member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberPrediction>,
}

/// A cluster's predicted requests in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPrediction {
    /// Cluster.
    pub cluster_id: String,
    /// The cluster instance the figure is for, when the load balancers said which; `None` for
    /// a figure of the whole cluster in a network partition, which the autoscaler splits across
    /// that network partition's instances by their active members (as Stratos does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_instance_id: Option<String>,
    /// The network partition of the load balancers that reported it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network_partition_id: String,
    /// Requests in flight, summed over the load balancers.
    pub requests_in_flight: f64,
}

/// A member's predicted memory and load, and its liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberPrediction {
    /// Member.
    pub member_id: String,
    /// Memory consumption, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_consumption: Option<f64>,
    /// Load average, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<f64>,
    /// When its last statistics arrived at the event processor, milliseconds since the epoch.
    pub last_stat_ms: u64,
    /// Whether they said its ports are open.
    pub ports_open: bool,
}

/// Every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "body")]
pub enum Event {
    // === topology (cloud controller) ===
    /// The whole topology (periodic, and in answer to `CompleteTopologyRequest`); a large one
    /// comes in parts of one snapshot ([`crate::parts`]), which receivers put back together with an
    /// [`crate::Assembler`].
    CompleteTopology {
        /// The topology, or this part's share of it.
        topology: Topology,
        /// Which part of the snapshot this is; absent when the event holds the whole topology.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        part: Option<TopologyPart>,
    },
    /// A tenant's applications get traffic again (`suspended: false`) or no more (its tenant
    /// was deactivated: its members keep running).
    TenantRouting {
        /// The tenant.
        #[serde(rename = "tenantId")]
        tenant_id: i64,
        /// No traffic to its applications.
        suspended: bool,
    },
    /// The tenants' domains mapped onto clusters changed: the whole set.
    DomainRoutes {
        /// Every route.
        routes: Vec<crate::topology::DomainRoute>,
        /// Every tenant's signup to a multi-tenant application.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        signups: Vec<crate::topology::TenantSignup>,
    },
    /// Clusters of an application were created.
    ApplicationClustersCreated {
        /// Application.
        #[serde(rename = "applicationId")]
        application_id: String,
        /// The new clusters.
        clusters: Vec<Cluster>,
    },
    /// Clusters of an application were removed.
    ApplicationClustersRemoved {
        /// Application.
        #[serde(rename = "applicationId")]
        application_id: String,
        /// Their ids.
        #[serde(rename = "clusterIds")]
        cluster_ids: Vec<String>,
    },
    /// A cluster instance was created.
    ClusterInstanceCreated {
        /// Cluster.
        #[serde(rename = "clusterId")]
        cluster_id: String,
        /// The instance.
        instance: ClusterInstance,
    },
    /// A cluster instance changed status (Activated, Inactivate, Terminating, Terminated in Stratos).
    ClusterInstanceStatusChanged {
        /// Cluster.
        #[serde(rename = "clusterId")]
        cluster_id: String,
        /// Instance.
        #[serde(rename = "instanceId")]
        instance_id: String,
        /// New status.
        status: InstanceStatus,
    },
    /// A member was asked of the IaaS.
    MemberCreated(MemberChange),
    /// The IaaS started it.
    MemberInitialized(MemberChange),
    /// Its agent started the workload.
    MemberStarted(MemberChange),
    /// It is active: route to it.
    MemberActivated(MemberChange),
    /// It is draining: route no more to it.
    MemberMaintenanceMode(MemberChange),
    /// Its health changed while Active (Nubo's): with the member property `unhealthy` (why), route
    /// no more to it until it recovers; without, route to it again.
    MemberHealthChanged(MemberChange),
    /// It may be terminated.
    MemberReadyToShutdown(MemberChange),
    /// It is gone.
    MemberTerminated(MemberChange),

    // === application (autoscaler / controller) ===
    /// An application instance or group instance changed status.
    ApplicationInstanceStatusChanged {
        /// Application.
        #[serde(rename = "applicationId")]
        application_id: String,
        /// Application instance (`<appId>-<n>`) or group instance id.
        #[serde(rename = "instanceId")]
        instance_id: String,
        /// Group alias for a group instance; `None` for the application instance.
        #[serde(rename = "groupAlias")]
        group_alias: Option<String>,
        /// New status.
        status: InstanceStatus,
    },

    // === instance status (agent) ===
    /// The agent started the workload.
    InstanceStarted(InstanceRef),
    /// The workload's ports answer.
    InstanceActivated(InstanceRef),
    /// The agent is draining the member.
    InstanceMaintenanceMode(InstanceRef),
    /// Clean-up is done.
    InstanceReadyToShutdown(InstanceRef),
    /// The workload failed (did not start, or exited); Nubo addition.
    InstanceFailed {
        /// Who.
        instance: InstanceRef,
        /// Why.
        reason: String,
    },
    /// The workload stopped answering its health checks (`healthy: false`, with why), or answers
    /// again: taken out of the load balancers, then put back (Nubo addition). A member that stays
    /// unhealthy reports itself down in its statistics, and is replaced.
    InstanceHealth {
        /// Who.
        instance: InstanceRef,
        /// Whether it answers.
        healthy: bool,
        /// Why not.
        reason: Option<String>,
    },
    /// The member's artifacts (its git repository's checkout) are at `commit`, after the first
    /// checkout or an update; `error` when an update failed (the member keeps what it had).
    /// Nubo addition: Stratos' agent reported nothing.
    InstanceArtifactUpdated {
        /// Who.
        instance: InstanceRef,
        /// The commit checked out (its full id), when known.
        commit: Option<String>,
        /// Why the update failed, when it did.
        error: Option<String>,
    },

    // === instance notifier (to agents) ===
    /// Clean up one member before it is terminated.
    InstanceCleanupMember {
        /// Member.
        #[serde(rename = "memberId")]
        member_id: String,
    },
    /// Fetch the member's artifacts again (the latest commit of its repository) and run the
    /// cartridge's `ArtifactUpdatedEvent` hook: Stratos' `ArtifactUpdatedEvent`, addressed to one
    /// member at a time (the controller updates a cluster's members one after another), without
    /// credentials (the agent reads them from the platform's API with its token).
    InstanceArtifactUpdate {
        /// Member.
        #[serde(rename = "memberId")]
        member_id: String,
    },
    /// Clean up every member of a cluster instance.
    InstanceCleanupCluster {
        /// Cluster.
        #[serde(rename = "clusterId")]
        cluster_id: String,
        /// Instance.
        #[serde(rename = "clusterInstanceId")]
        cluster_instance_id: String,
    },

    // === logs ===
    /// Lines of a member's workload output; Nubo addition.
    InstanceLog(LogBatch),

    // === health statistics ===
    /// One member's health.
    MemberHealthStat(MemberHealth),
    /// Requests in flight at a load balancer.
    InFlightRequests(RequestsInFlight),

    // === predictions (event processor → autoscaler in another process) ===
    /// The event processor's predictions, every tick.
    PredictedStatistics(Predictions),

    // === initializer ===
    /// Ask the controller for the whole topology.
    CompleteTopologyRequest {},
    /// Ask the API servers for every domain's certificate (a load balancer starting).
    TlsCertificatesRequest {},

    // === TLS (sealed) ===
    /// Domains' certificates for the load balancers: `complete` replaces every certificate the
    /// load balancer holds (the first part of an answer to `TlsCertificatesRequest`; the parts
    /// after it add); otherwise these are added or replaced, and `removed` go.
    TlsCertificates {
        /// Replace all (the first part of a complete set).
        #[serde(default)]
        complete: bool,
        /// Certificates to add or replace.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        certificates: Vec<crate::topology::TlsCertificate>,
        /// Domains whose certificate goes.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed: Vec<String>,
    },

    // === node supervisor ===
    /// A member's process exited (or could not be started).
    MemberProcessExited {
        /// Member.
        #[serde(rename = "memberId")]
        member_id: String,
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal, when it was killed.
        signal: Option<i32>,
        /// What happened, in words.
        reason: String,
    },
    /// A node supervisor started a member (the answer to `NodeStartMember`).
    NodeMemberStarted {
        /// The node.
        node: String,
        /// Member.
        #[serde(rename = "memberId")]
        member_id: String,
        /// Its address.
        ip: String,
        /// Its ports.
        ports: Vec<MemberPort>,
    },
    /// A node supervisor could not start a member (the answer to `NodeStartMember`).
    NodeMemberStartFailed {
        /// The node.
        node: String,
        /// Member.
        #[serde(rename = "memberId")]
        member_id: String,
        /// Why.
        reason: String,
    },
    /// The members a node supervisor runs (every few seconds, and when asked).
    NodeInventory {
        /// The node.
        node: String,
        /// Member ids.
        members: Vec<String>,
        /// When (ms since the epoch).
        #[serde(rename = "atMs")]
        at_ms: u64,
    },

    // === node commands (controller → node supervisor) ===
    /// Start a member on a node: its agent with this payload, the workload from `image`.
    NodeStartMember {
        /// The node that must start it.
        node: String,
        /// The member (status Created).
        member: Member,
        /// For `local`: the workload's command line.
        image: String,
        /// The cluster's ports.
        ports: Vec<ClusterPort>,
        /// Stratos' launch parameters, for the agent's payload.
        payload: BTreeMap<String, String>,
        /// The bus the member's agent reports on.
        #[serde(rename = "busUrl", default)]
        bus_url: String,
        /// The sending controller's lease token (highly available control plane): a node refuses
        /// commands with a token older than the newest it has seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<u64>,
        /// Who its processes run as (its partition's setting).
        #[serde(rename = "runAs", default, skip_serializing_if = "Option::is_none")]
        run_as: Option<RunAs>,
    },
    /// Terminate a member on a node (its exit is reported as `MemberProcessExited`).
    NodeTerminateMember {
        /// The node.
        node: String,
        /// Member.
        #[serde(rename = "memberId")]
        member_id: String,
        /// The sending controller's lease token, as in `NodeStartMember`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<u64>,
    },
    /// Every node supervisor answers with its `NodeInventory`.
    NodeInventoryRequest {},

    // === control (API → cloud controller in another process) ===
    /// Deploy an application: its deployment plan.
    ControlDeploy {
        /// The plan.
        plan: Box<DeploymentPlan>,
    },
    /// Undeploy an application.
    ControlUndeploy {
        /// Application.
        #[serde(rename = "applicationId")]
        application_id: String,
        /// Terminate at once instead of draining.
        force: bool,
    },
    /// Apply changed artifacts to a running application: its new deployment plan.
    ControlUpdatePlan {
        /// The plan.
        plan: Box<DeploymentPlan>,
    },
    /// What an autoscaler in another process asks of the controller (its decisions, faults it
    /// detected, members its statistics prove active).
    ControlScale {
        /// The request.
        command: ScaleCommand,
    },
    /// Route a tenant's applications, or no more (from an API-only server or a standby).
    ControlTenantRouting {
        /// The tenant.
        #[serde(rename = "tenantId")]
        tenant_id: i64,
        /// No traffic to its applications.
        suspended: bool,
    },
    /// Set the tenants' domain routes (from an API-only server or a standby).
    ControlDomainRoutes {
        /// Every route.
        routes: Vec<crate::topology::DomainRoute>,
        /// Every tenant's signup to a multi-tenant application.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        signups: Vec<crate::topology::TenantSignup>,
    },
    /// Update the artifacts of these clusters of a deployed application, member after member.
    ControlUpdateArtifacts {
        /// Application.
        #[serde(rename = "applicationId")]
        application_id: String,
        /// Its clusters to update.
        #[serde(rename = "clusterIds")]
        cluster_ids: Vec<String>,
    },
}

/// A request of the autoscaler to the cloud controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum ScaleCommand {
    /// Scale a cluster instance up to `count` members.
    ScaleTo {
        /// Cluster.
        cluster_id: String,
        /// Cluster instance.
        instance_id: String,
        /// Members wanted.
        count: u32,
    },
    /// Remove one member of a cluster instance (this one, when given).
    ScaleDown {
        /// Cluster.
        cluster_id: String,
        /// Cluster instance.
        instance_id: String,
        /// The member to remove.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_id: Option<String>,
    },
    /// A cluster instance at its maximum needs more: grow its group or burst.
    BeyondMax {
        /// Cluster.
        cluster_id: String,
        /// Cluster instance.
        instance_id: String,
    },
    /// Terminate an idle group instance or burst application instance.
    ScaleIn {
        /// Application.
        application_id: String,
        /// The group or application instance.
        instance_id: String,
    },
    /// A group in a `scalingDependents` list follows the list by its number of instances inside
    /// one parent instance (Stratos' `GroupMonitor.onParentScalingEvent`): the controller adds or
    /// scales in one group instance at a time towards `count` (within the group's bounds).
    GroupInstances {
        /// Application.
        application_id: String,
        /// The parent (application or group) instance.
        parent_instance_id: String,
        /// The group's path of aliases, outermost first.
        group_path: Vec<String>,
        /// Group instances wanted.
        count: u32,
    },
    /// An Active member is faulty: replace it.
    MemberFault {
        /// Member.
        member_id: String,
        /// Why.
        reason: String,
    },
    /// A member the controller sees starting sends statistics with its ports open: it is active
    /// (its own report was lost).
    MemberActive {
        /// The member.
        instance: InstanceRef,
    },
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not an event of this format.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// An event of another version.
    #[error("event version {0} is not supported (this build speaks {EVENT_VERSION})")]
    Version(u32),
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u32,
    #[serde(flatten)]
    event: &'a Event,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    v: u32,
    #[serde(flatten)]
    event: serde_json::Value,
}

/// How `encode` starts every message.
const VERSION_PREFIX: &str = concat!("{\"v\":", "1", ",\"event\":\"");

const _: () = assert!(EVENT_VERSION == 1, "VERSION_PREFIX names the version");

impl Event {
    /// The name of the event `bytes` encode, read without decoding it (`None`: not as `encode`
    /// writes it): lets a receiver skip what it does not use, a large complete topology say.
    pub fn peek_name(bytes: &[u8]) -> Option<&str> {
        let rest = bytes.strip_prefix(VERSION_PREFIX.as_bytes())?;
        let end = rest.iter().position(|b| *b == b'"')?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// The event's name (its variant), the last segment of its topic.
    pub fn name(&self) -> &'static str {
        match self {
            Event::CompleteTopology { .. } => "CompleteTopology",
            Event::TenantRouting { .. } => "TenantRouting",
            Event::DomainRoutes { .. } => "DomainRoutes",
            Event::ApplicationClustersCreated { .. } => "ApplicationClustersCreated",
            Event::ApplicationClustersRemoved { .. } => "ApplicationClustersRemoved",
            Event::ClusterInstanceCreated { .. } => "ClusterInstanceCreated",
            Event::ClusterInstanceStatusChanged { .. } => "ClusterInstanceStatusChanged",
            Event::MemberCreated(_) => "MemberCreated",
            Event::MemberInitialized(_) => "MemberInitialized",
            Event::MemberStarted(_) => "MemberStarted",
            Event::MemberActivated(_) => "MemberActivated",
            Event::MemberMaintenanceMode(_) => "MemberMaintenanceMode",
            Event::MemberHealthChanged(_) => "MemberHealthChanged",
            Event::MemberReadyToShutdown(_) => "MemberReadyToShutdown",
            Event::MemberTerminated(_) => "MemberTerminated",
            Event::ApplicationInstanceStatusChanged { .. } => "ApplicationInstanceStatusChanged",
            Event::InstanceStarted(_) => "InstanceStarted",
            Event::InstanceActivated(_) => "InstanceActivated",
            Event::InstanceMaintenanceMode(_) => "InstanceMaintenanceMode",
            Event::InstanceReadyToShutdown(_) => "InstanceReadyToShutdown",
            Event::InstanceFailed { .. } => "InstanceFailed",
            Event::InstanceArtifactUpdated { .. } => "InstanceArtifactUpdated",
            Event::InstanceHealth { .. } => "InstanceHealth",
            Event::InstanceArtifactUpdate { .. } => "InstanceArtifactUpdate",
            Event::InstanceCleanupMember { .. } => "InstanceCleanupMember",
            Event::InstanceCleanupCluster { .. } => "InstanceCleanupCluster",
            Event::MemberHealthStat(_) => "MemberHealthStat",
            Event::InstanceLog(_) => "InstanceLog",
            Event::InFlightRequests(_) => "InFlightRequests",
            Event::PredictedStatistics(_) => "PredictedStatistics",
            Event::CompleteTopologyRequest {} => "CompleteTopologyRequest",
            Event::TlsCertificatesRequest {} => "TlsCertificatesRequest",
            Event::TlsCertificates { .. } => "TlsCertificates",
            Event::MemberProcessExited { .. } => "MemberProcessExited",
            Event::NodeMemberStarted { .. } => "NodeMemberStarted",
            Event::NodeMemberStartFailed { .. } => "NodeMemberStartFailed",
            Event::NodeInventory { .. } => "NodeInventory",
            Event::NodeStartMember { .. } => "NodeStartMember",
            Event::NodeTerminateMember { .. } => "NodeTerminateMember",
            Event::NodeInventoryRequest {} => "NodeInventoryRequest",
            Event::ControlDeploy { .. } => "ControlDeploy",
            Event::ControlUndeploy { .. } => "ControlUndeploy",
            Event::ControlUpdatePlan { .. } => "ControlUpdatePlan",
            Event::ControlScale { .. } => "ControlScale",
            Event::ControlTenantRouting { .. } => "ControlTenantRouting",
            Event::ControlDomainRoutes { .. } => "ControlDomainRoutes",
            Event::ControlUpdateArtifacts { .. } => "ControlUpdateArtifacts",
        }
    }

    /// The member an event is addressed to, when it is one member's alone (a clean-up request):
    /// the platform proves such an event with that member's key, so that its agent can check it.
    pub fn addressed_to(&self) -> Option<&str> {
        match self {
            Event::InstanceCleanupMember { member_id }
            | Event::InstanceArtifactUpdate { member_id } => Some(member_id),
            _ => None,
        }
    }

    /// Whether the agent of `member_id` may send this event: its own lifecycle reports and
    /// health statistics, and a request for the complete topology.
    pub fn member_may_send(&self, member_id: &str) -> bool {
        match self {
            Event::InstanceStarted(r)
            | Event::InstanceActivated(r)
            | Event::InstanceMaintenanceMode(r)
            | Event::InstanceReadyToShutdown(r)
            | Event::InstanceFailed { instance: r, .. }
            | Event::InstanceArtifactUpdated { instance: r, .. }
            | Event::InstanceHealth { instance: r, .. } => r.member_id == member_id,
            Event::MemberHealthStat(h) => h.instance.member_id == member_id,
            Event::InstanceLog(b) => b.member_id == member_id,
            Event::CompleteTopologyRequest {} => true,
            _ => false,
        }
    }

    /// The event's category.
    pub fn category(&self) -> Category {
        match self {
            Event::CompleteTopology { .. }
            | Event::TenantRouting { .. }
            | Event::DomainRoutes { .. }
            | Event::ApplicationClustersCreated { .. }
            | Event::ApplicationClustersRemoved { .. }
            | Event::ClusterInstanceCreated { .. }
            | Event::ClusterInstanceStatusChanged { .. }
            | Event::MemberCreated(_)
            | Event::MemberInitialized(_)
            | Event::MemberStarted(_)
            | Event::MemberActivated(_)
            | Event::MemberMaintenanceMode(_)
            | Event::MemberHealthChanged(_)
            | Event::MemberReadyToShutdown(_)
            | Event::MemberTerminated(_) => Category::Topology,
            Event::ApplicationInstanceStatusChanged { .. } => Category::Application,
            Event::InstanceStarted(_)
            | Event::InstanceActivated(_)
            | Event::InstanceMaintenanceMode(_)
            | Event::InstanceReadyToShutdown(_)
            | Event::InstanceFailed { .. }
            | Event::InstanceArtifactUpdated { .. }
            | Event::InstanceHealth { .. } => Category::InstanceStatus,
            Event::InstanceCleanupMember { .. }
            | Event::InstanceCleanupCluster { .. }
            | Event::InstanceArtifactUpdate { .. } => Category::InstanceNotifier,
            Event::MemberHealthStat(_) | Event::InFlightRequests(_) => Category::HealthStats,
            Event::InstanceLog(_) => Category::Logs,
            Event::PredictedStatistics(_) => Category::Predictions,
            Event::CompleteTopologyRequest {} | Event::TlsCertificatesRequest {} => {
                Category::Initializer
            }
            Event::TlsCertificates { .. } => Category::Tls,
            Event::MemberProcessExited { .. }
            | Event::NodeMemberStarted { .. }
            | Event::NodeMemberStartFailed { .. }
            | Event::NodeInventory { .. } => Category::Supervisor,
            Event::NodeStartMember { .. }
            | Event::NodeTerminateMember { .. }
            | Event::NodeInventoryRequest {} => Category::Node,
            Event::ControlDeploy { .. }
            | Event::ControlUndeploy { .. }
            | Event::ControlUpdatePlan { .. }
            | Event::ControlScale { .. }
            | Event::ControlTenantRouting { .. }
            | Event::ControlDomainRoutes { .. }
            | Event::ControlUpdateArtifacts { .. } => Category::Control,
        }
    }

    /// The topic it is published on: its category's (`nubo/v1/<category>`); the event's name is in
    /// the payload.
    pub fn topic(&self) -> String {
        let category = self.category();
        self.addressed_to()
            .and_then(|m| category.member_topic(m))
            .unwrap_or_else(|| category.topic())
    }

    /// The wire form: `{"v":1,"event":"Name","body":{…}}`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&EnvelopeOut {
            v: EVENT_VERSION,
            event: self,
        })
        .unwrap_or_default()
    }

    /// Reads the wire form; a malformed or unknown message is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        // What `encode` writes (the version first): read in one pass, without an intermediate
        // JSON value.
        if bytes.starts_with(VERSION_PREFIX.as_bytes())
            && let Ok(e) = serde_json::from_slice::<Event>(bytes)
        {
            return Ok(e);
        }
        let env: EnvelopeIn =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if env.v != EVENT_VERSION {
            return Err(DecodeError::Version(env.v));
        }
        serde_json::from_value(env.event).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::MemberStatus;

    fn member() -> Member {
        Member {
            member_id: "app.web.php.domain-1".into(),
            cluster_id: "app.web.php.domain".into(),
            cluster_instance_id: "app-1".into(),
            service_name: "php".into(),
            application_id: "app".into(),
            network_partition_id: "np1".into(),
            partition_id: "p1".into(),
            status: MemberStatus::Active,
            default_private_ip: Some("127.0.0.1".into()),
            default_public_ip: None,
            ports: vec![],
            init_time: 1,
            failure: None,
            properties: Default::default(),
        }
    }

    #[test]
    fn events_round_trip_with_their_topic() {
        let e = Event::MemberActivated(MemberChange { member: member() });
        assert_eq!(e.topic(), "nubo/v1/topology");
        let wire = e.encode();
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"v":1,"event":"MemberActivated","body":{"member":"#),
            "{text}"
        );
        assert_eq!(Event::decode(&wire).unwrap(), e);
        let r = Event::CompleteTopologyRequest {};
        assert_eq!(Event::decode(&r.encode()).unwrap(), r);
        assert_eq!(r.topic(), "nubo/v1/initializer");
        assert_eq!(Category::InstanceStatus.filter(), "nubo/v1/instance/status");
    }

    #[test]
    fn bad_messages_are_errors() {
        assert!(matches!(
            Event::decode(b"not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Event::decode(br#"{"v":1,"event":"NoSuchEvent","body":{}}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Event::decode(br#"{"v":2,"event":"CompleteTopologyRequest","body":{}}"#),
            Err(DecodeError::Version(2))
        ));
        assert!(matches!(
            Event::decode(br#"{"v":1,"event":"MemberActivated","body":{"member":{}}}"#),
            Err(DecodeError::Malformed(_))
        ));
    }
}

#[cfg(test)]
mod catalogue {
    //! The event catalogue as a checked-in contract: one example of every event, encoded.
    //! Regenerate deliberately with `NUBO_BLESS=1 cargo test -p nubo-events catalogue`.

    use std::collections::BTreeMap;

    use super::*;
    use crate::topology::{MemberPort, MemberStatus};

    fn member(status: MemberStatus) -> Member {
        Member {
            member_id: "shop.web.php-1".into(),
            cluster_id: "shop.web.php.domain".into(),
            cluster_instance_id: "shop-1".into(),
            service_name: "php".into(),
            application_id: "shop".into(),
            network_partition_id: "np1".into(),
            partition_id: "p1".into(),
            status,
            default_private_ip: Some("127.0.0.1".into()),
            default_public_ip: None,
            ports: vec![MemberPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 41234,
                proxy_port: Some(8280),
            }],
            init_time: 1_763_769_600_000,
            failure: None,
            properties: BTreeMap::new(),
        }
    }

    fn cluster() -> Cluster {
        let instance = ClusterInstance {
            instance_id: "shop-1".into(),
            network_partition_id: "np1".into(),
            status: InstanceStatus::Active,
            min_members: 1,
            max_members: 3,
        };
        Cluster {
            cluster_id: "shop.web.php.domain".into(),
            service_name: "php".into(),
            application_id: "shop".into(),
            alias: "web".into(),
            host_names: vec!["shop.web.localhost".into()],
            tenant_id: -1234,
            ports: vec![ClusterPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 80,
                proxy_port: Some(8280),
            }],
            deployment_policy: "dp".into(),
            autoscaling_policy: "asp".into(),
            instances: BTreeMap::from([("shop-1".to_owned(), instance)]),
            members: BTreeMap::from([("shop.web.php-1".to_owned(), member(MemberStatus::Active))]),
        }
    }

    fn instance() -> InstanceRef {
        InstanceRef {
            application_id: "shop".into(),
            service_name: "php".into(),
            cluster_id: "shop.web.php.domain".into(),
            cluster_instance_id: "shop-1".into(),
            member_id: "shop.web.php-1".into(),
            network_partition_id: "np1".into(),
            partition_id: "p1".into(),
        }
    }

    fn examples() -> Vec<Event> {
        let change = |s| MemberChange { member: member(s) };
        vec![
            Event::CompleteTopology {
                topology: Topology {
                    clusters: BTreeMap::from([("shop.web.php.domain".to_owned(), cluster())]),
                    suspended_tenants: [3].into(),
                    domain_routes: vec![crate::topology::DomainRoute {
                        domain: "shop.a.example".into(),
                        context_path: "/".into(),
                        application_id: "mt".into(),
                        alias: "web".into(),
                        tenant_id: 3,
                        tenant_domain: "a.com".into(),
                        redirect_https: true,
                        acme_challenges: BTreeMap::from([(
                            "tok-1".to_owned(),
                            "tok-1.thumbprint".to_owned(),
                        )]),
                    }],
                    tenant_signups: vec![crate::topology::TenantSignup {
                        application_id: "mt".into(),
                        tenant_id: 3,
                        tenant_domain: "a.com".into(),
                    }],
                },
                part: None,
            },
            Event::CompleteTopology {
                topology: Topology {
                    clusters: BTreeMap::from([("shop.web.php.domain".to_owned(), cluster())]),
                    suspended_tenants: Default::default(),
                    domain_routes: Vec::new(),
                    tenant_signups: Vec::new(),
                },
                part: Some(TopologyPart {
                    snapshot: 1_763_800_000_000,
                    index: 0,
                    count: 2,
                }),
            },
            Event::ApplicationClustersCreated {
                application_id: "shop".into(),
                clusters: vec![cluster()],
            },
            Event::ApplicationClustersRemoved {
                application_id: "shop".into(),
                cluster_ids: vec!["shop.web.php.domain".into()],
            },
            Event::ClusterInstanceCreated {
                cluster_id: "shop.web.php.domain".into(),
                instance: cluster().instances["shop-1"].clone(),
            },
            Event::ClusterInstanceStatusChanged {
                cluster_id: "shop.web.php.domain".into(),
                instance_id: "shop-1".into(),
                status: InstanceStatus::Active,
            },
            Event::MemberCreated(change(MemberStatus::Created)),
            Event::MemberInitialized(change(MemberStatus::Initialized)),
            Event::MemberStarted(change(MemberStatus::Starting)),
            Event::MemberActivated(change(MemberStatus::Active)),
            Event::MemberMaintenanceMode(change(MemberStatus::InMaintenance)),
            Event::MemberReadyToShutdown(change(MemberStatus::ReadyToShutdown)),
            Event::MemberTerminated(change(MemberStatus::Terminated)),
            Event::MemberHealthChanged(change(MemberStatus::Active)),
            Event::ApplicationInstanceStatusChanged {
                application_id: "shop".into(),
                instance_id: "shop-1".into(),
                group_alias: None,
                status: InstanceStatus::Active,
            },
            Event::InstanceStarted(instance()),
            Event::InstanceActivated(instance()),
            Event::InstanceMaintenanceMode(instance()),
            Event::InstanceReadyToShutdown(instance()),
            Event::InstanceFailed {
                instance: instance(),
                reason: "the workload exited (exit status: 7)".into(),
            },
            Event::InstanceArtifactUpdated {
                instance: instance(),
                commit: Some("0f1e2d3c".into()),
                error: None,
            },
            Event::InstanceHealth {
                instance: instance(),
                healthy: false,
                reason: Some("its liveness path /alive failed 3 times in a row".into()),
            },
            Event::InstanceLog(LogBatch {
                member_id: "shop.web.php-1".into(),
                lines: vec![LogLine {
                    at_ms: 1_763_769_600_000,
                    stream: LogStream::Stderr,
                    text: "listening on 8080".into(),
                }],
                dropped: 0,
            }),
            Event::InstanceCleanupMember {
                member_id: "shop.web.php-1".into(),
            },
            Event::InstanceCleanupCluster {
                cluster_id: "shop.web.php.domain".into(),
                cluster_instance_id: "shop-1".into(),
            },
            Event::MemberHealthStat(MemberHealth {
                instance: instance(),
                memory_consumption: Some(1.5),
                load_average: Some(12.25),
                ports_open: true,
                at_ms: 1_763_769_600_000,
            }),
            Event::InFlightRequests(RequestsInFlight {
                cluster_id: "shop.web.php.domain".into(),
                network_partition_id: "np1".into(),
                cluster_instance_id: None,
                count: 3.0,
                served: 120,
                load_balancer_id: "lb-1".into(),
                at_ms: 1_763_769_600_000,
            }),
            Event::PredictedStatistics(Predictions {
                at_ms: 1_763_769_601_000,
                clusters: vec![ClusterPrediction {
                    cluster_id: "shop.web.php.domain".into(),
                    cluster_instance_id: Some("shop-1".into()),
                    network_partition_id: "np1".into(),
                    requests_in_flight: 4.5,
                }],
                members: vec![MemberPrediction {
                    member_id: "shop.web.php-1".into(),
                    memory_consumption: Some(1.75),
                    load_average: Some(13.0),
                    last_stat_ms: 1_763_769_600_900,
                    ports_open: true,
                }],
            }),
            Event::CompleteTopologyRequest {},
            Event::TlsCertificatesRequest {},
            Event::TlsCertificates {
                complete: false,
                certificates: vec![crate::topology::TlsCertificate {
                    domain: "shop.alice.example".into(),
                    certificate: "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n"
                        .into(),
                    private_key: "-----BEGIN PRIVATE KEY-----\n…\n-----END PRIVATE KEY-----\n"
                        .into(),
                }],
                removed: vec!["blog.bob.example".into()],
            },
            Event::MemberProcessExited {
                member_id: "shop.web.php-1".into(),
                code: None,
                signal: Some(9),
                reason: "the agent was killed by signal 9".into(),
            },
            Event::NodeMemberStarted {
                node: "host-a".into(),
                member_id: "shop.web.php-1".into(),
                ip: "127.0.0.1".into(),
                ports: vec![MemberPort {
                    name: "http".into(),
                    protocol: "http".into(),
                    port: 41234,
                    proxy_port: Some(8280),
                }],
            },
            Event::NodeMemberStartFailed {
                node: "host-a".into(),
                member_id: "shop.web.php-1".into(),
                reason: "cannot allocate a port".into(),
            },
            Event::NodeInventory {
                node: "host-a".into(),
                members: vec!["shop.web.php-1".into()],
                at_ms: 1_763_769_600_000,
            },
            Event::NodeStartMember {
                node: "host-a".into(),
                member: member(MemberStatus::Created),
                image: "python3 -m http.server $PORT".into(),
                ports: cluster().ports,
                payload: BTreeMap::from([("MEMBER_ID".to_owned(), "shop.web.php-1".to_owned())]),
                bus_url: "mqtt://127.0.0.1:1883".into(),
                fence: Some(3),
                run_as: Some(RunAs::UidRange(61000, 61999)),
            },
            Event::NodeTerminateMember {
                node: "host-a".into(),
                member_id: "shop.web.php-1".into(),
                fence: Some(3),
            },
            Event::NodeInventoryRequest {},
            Event::ControlDeploy {
                plan: Box::new(plan()),
            },
            Event::ControlUndeploy {
                application_id: "shop".into(),
                force: false,
            },
            Event::ControlUpdatePlan {
                plan: Box::new(plan()),
            },
            Event::ControlScale {
                command: ScaleCommand::ScaleTo {
                    cluster_id: "shop.web.php.domain".into(),
                    instance_id: "shop-1".into(),
                    count: 3,
                },
            },
            Event::ControlTenantRouting {
                tenant_id: 3,
                suspended: true,
            },
            Event::ControlUpdateArtifacts {
                application_id: "shop".into(),
                cluster_ids: vec!["shop.web.php.domain".into()],
            },
            Event::InstanceArtifactUpdate {
                member_id: "m-1".into(),
            },
            Event::TenantRouting {
                tenant_id: 3,
                suspended: true,
            },
        ]
    }

    fn plan() -> DeploymentPlan {
        DeploymentPlan {
            application_id: "shop".into(),
            tenant_id: -1234,
            application_policy: "ap".into(),
            instances: vec![],
            clusters: vec![],
            scopes: vec![],
            burst_groups: vec![],
        }
    }

    #[test]
    fn catalogue_matches_the_checked_in_copy() {
        let mut out = String::from(
            "# Nubo event catalogue (v1): topic, then one example payload per event.\n",
        );
        for e in examples() {
            let wire = e.encode();
            assert_eq!(Event::decode(&wire).unwrap(), e, "{} round-trips", e.name());
            assert_eq!(Event::peek_name(&wire), Some(e.name()));
            // The fast path is what decoded it (no intermediate JSON value).
            assert_eq!(serde_json::from_slice::<Event>(&wire).unwrap(), e);
            let pretty: serde_json::Value = serde_json::from_slice(&wire).unwrap();
            out.push_str(&format!(
                "\n## {} on `{}`\n{}\n",
                e.name(),
                e.topic(),
                serde_json::to_string(&pretty).unwrap()
            ));
        }
        // The directory at run time: a binary built in another checkout must not compare with that one's file.
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let path = std::path::Path::new(&dir).join("catalogue.md");
        if std::env::var_os("NUBO_BLESS").is_some() {
            std::fs::write(&path, &out).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            out == checked_in,
            "the event catalogue changed: review it and run `NUBO_BLESS=1 cargo test -p nubo-events catalogue` to accept (a change is a protocol change: bump EVENT_VERSION when it is incompatible)"
        );
    }

    #[test]
    fn every_event_has_an_example() {
        let names: std::collections::BTreeSet<&str> = examples().iter().map(Event::name).collect();
        assert_eq!(names.len(), 45, "one example per event variant: {names:?}");
    }
}
