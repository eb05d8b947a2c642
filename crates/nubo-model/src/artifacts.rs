//! The Stratos 4.1 artifacts (as in Apache Stratos 4.1), field for field.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::Problems;
use crate::lenient;
use crate::refs::{Catalog, Reference};

/// Fields Nubo does not know, kept and returned verbatim.
pub type Extra = BTreeMap<String, Value>;

/// Every kind of stored artifact.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// A network partition with its partitions (cloud controller).
    NetworkPartition,
    /// Where a cluster's members go (autoscaler).
    DeploymentPolicy,
    /// Load thresholds that drive scaling (autoscaler).
    AutoscalingPolicy,
    /// Which network partitions an application spans (autoscaler).
    ApplicationPolicy,
    /// What runs: a cartridge type (cloud controller).
    Cartridge,
    /// A reusable group of cartridges with dependencies.
    CartridgeGroup,
    /// A composite application definition.
    Application,
    /// A registered Kubernetes cluster.
    KubernetesCluster,
    /// A tenant.
    Tenant,
    /// A user of a tenant.
    User,
    /// A tenant's signup to a multi-tenant application.
    ApplicationSignup,
    /// Domain names mapped onto an application's clusters.
    DomainMapping,
}

impl Kind {
    /// The stable name stored with every row.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::NetworkPartition => "networkPartition",
            Kind::DeploymentPolicy => "deploymentPolicy",
            Kind::AutoscalingPolicy => "autoscalingPolicy",
            Kind::ApplicationPolicy => "applicationPolicy",
            Kind::Cartridge => "cartridge",
            Kind::CartridgeGroup => "cartridgeGroup",
            Kind::Application => "application",
            Kind::KubernetesCluster => "kubernetesCluster",
            Kind::Tenant => "tenant",
            Kind::User => "user",
            Kind::ApplicationSignup => "applicationSignup",
            Kind::DomainMapping => "domainMapping",
        }
    }

    /// Words for messages: "network partition", "cartridge group".
    pub const fn label(self) -> &'static str {
        match self {
            Kind::NetworkPartition => "network partition",
            Kind::DeploymentPolicy => "deployment policy",
            Kind::AutoscalingPolicy => "autoscaling policy",
            Kind::ApplicationPolicy => "application policy",
            Kind::Cartridge => "cartridge",
            Kind::CartridgeGroup => "cartridge group",
            Kind::Application => "application",
            Kind::KubernetesCluster => "kubernetes cluster",
            Kind::Tenant => "tenant",
            Kind::User => "user",
            Kind::ApplicationSignup => "application signup",
            Kind::DomainMapping => "domain mapping",
        }
    }

    /// Whether the super tenant's definitions of this kind are shared with every tenant
    /// (Stratos' global definitions): a tenant reads them, names them in its own definitions and
    /// deploys on them, and changes only its own. Applications, and the platform's own records
    /// (tenants, users, signups, domain mappings), are never shared.
    pub const fn is_shared(self) -> bool {
        matches!(
            self,
            Kind::NetworkPartition
                | Kind::DeploymentPolicy
                | Kind::AutoscalingPolicy
                | Kind::ApplicationPolicy
                | Kind::Cartridge
                | Kind::CartridgeGroup
                | Kind::KubernetesCluster
        )
    }

    /// Every kind.
    pub const ALL: [Kind; 12] = [
        Kind::NetworkPartition,
        Kind::DeploymentPolicy,
        Kind::AutoscalingPolicy,
        Kind::ApplicationPolicy,
        Kind::Cartridge,
        Kind::CartridgeGroup,
        Kind::Application,
        Kind::KubernetesCluster,
        Kind::Tenant,
        Kind::User,
        Kind::ApplicationSignup,
        Kind::DomainMapping,
    ];

    /// Parses [`Kind::as_str`] back.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A stored, validated artifact kind.
pub trait Artifact: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Its kind.
    const KIND: Kind;
    /// Its id, unique within a tenant and kind.
    fn id(&self) -> &str;
    /// The JSON field that holds the id (`id`, `type`, `name`, `applicationId`, `clusterId`).
    const ID_FIELD: &'static str;
    /// Checks that need nothing but the artifact itself.
    fn validate(&self, p: &mut Problems);
    /// The artifacts this one names; the store refuses to delete any of them while this one exists.
    fn references(&self) -> Vec<Reference> {
        Vec::new()
    }
    /// Checks against other artifacts. The default checks that every reference exists.
    fn check_references(&self, catalog: &Catalog, p: &mut Problems) {
        catalog.check_exist(&self.references(), p);
    }
    /// Removes what is kept sealed and never served (passwords, tokens): what the API serves.
    fn redact_secrets(&mut self) {}
}

/// A `{"name": ..., "value": ...}` pair, as Stratos writes properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Property {
    /// Property name.
    pub name: String,
    /// Property value (numbers and booleans are taken as text).
    #[serde(deserialize_with = "lenient::text")]
    pub value: String,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// The properties that set a cluster's timeouts, in seconds: from creation to Active, the
/// agent's wait for the workload's ports, a member's drain, and the workload's stop (SIGTERM to
/// SIGKILL).
pub const TIMEOUT_PROPERTIES: [&str; 4] = [
    "activationTimeout",
    "portCheckTimeout",
    "drainTimeout",
    "terminationTimeout",
];

/// A timeout property's value: a whole number of seconds from 1 to 86,400.
pub fn timeout_seconds(name: &str, value: &str) -> Result<u64, String> {
    match value.trim().parse::<u64>() {
        Ok(n) if (1..=86_400).contains(&n) => Ok(n),
        _ => Err(format!(
            "property `{name}` is `{value}`: a whole number of seconds from 1 to 86400"
        )),
    }
}

fn check_properties(p: &mut Problems, field: &str, props: &Option<Vec<Property>>) {
    let mut seen = HashSet::new();
    for (i, prop) in props.iter().flatten().enumerate() {
        p.require_text(&format!("{field}[{i}].name"), &prop.name);
        if TIMEOUT_PROPERTIES.contains(&prop.name.as_str())
            && let Err(e) = timeout_seconds(&prop.name, &prop.value)
        {
            p.add(format!("{field}[{i}].value"), e);
        }
        if (prop.name == "readinessPath" || prop.name == "livenessPath")
            && (!prop.value.starts_with('/')
                || prop.value.len() > 1024
                || prop
                    .value
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control()))
        {
            p.add(
                format!("{field}[{i}].value"),
                format!(
                    "property `{}` is an HTTP path: it starts with `/` and holds no space",
                    prop.name
                ),
            );
        }
        if prop.name == "commitEnabled" && !matches!(prop.value.trim(), "true" | "false") {
            p.add(
                format!("{field}[{i}].value"),
                "property `commitEnabled` is `true` or `false`",
            );
        }
        if prop.name == "unhealthyTimeout"
            && !matches!(prop.value.trim().parse::<u64>(), Ok(0..=86_400))
        {
            p.add(
                format!("{field}[{i}].value"),
                "property `unhealthyTimeout` is a whole number of seconds from 0 to 86400",
            );
        }
        if prop.name == "artifactUpdateInterval"
            && !matches!(prop.value.trim().parse::<u64>(), Ok(1..=86_400))
        {
            p.add(
                format!("{field}[{i}].value"),
                "property `artifactUpdateInterval` is a whole number of seconds from 1 to 86400",
            );
        }
        if !seen.insert(prop.name.as_str()) {
            p.add(
                format!("{field}[{i}].name"),
                format!("property `{}` is given twice", prop.name),
            );
        }
    }
}

/// Looks a property up by name.
pub fn property<'a>(props: &'a Option<Vec<Property>>, name: &str) -> Option<&'a str> {
    props
        .iter()
        .flatten()
        .find(|p| p.name == name)
        .map(|p| p.value.as_str())
}

// === Network partitions (§6.1) ===

/// A network partition: a set of partitions on one IaaS provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPartition {
    /// Unique id.
    pub id: String,
    /// IaaS provider: `local`, `mock` (later `docker`, `kubernetes`).
    pub provider: String,
    /// Its partitions (at least one).
    pub partitions: Vec<Partition>,
    /// Properties; `payload_parameter.X` goes into member payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Vec<Property>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A partition: a placement zone inside a network partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Partition {
    /// Id, unique within the network partition.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Provider override (Stratos samples carry it; informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// IaaS-specific properties (`region`, `zone`, `cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<Vec<Property>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A `docker` partition's property holding its engine's client key: a file on the hosts (an
/// absolute path), or the key itself (PEM), which is sealed in the store and never served.
pub const ENGINE_KEY_PROPERTY: &str = "tlsKey";

/// Whether a property value is a key given in place (not a file path): sealed, never served.
pub fn engine_key_in_place(value: &str) -> bool {
    !value.starts_with('/')
}

impl Artifact for NetworkPartition {
    const KIND: Kind = Kind::NetworkPartition;
    fn redact_secrets(&mut self) {
        for part in &mut self.partitions {
            if let Some(props) = part.property.as_mut() {
                props.retain(|p| p.name != ENGINE_KEY_PROPERTY || !engine_key_in_place(&p.value));
            }
        }
    }
    const ID_FIELD: &'static str = "id";
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("id", &self.id);
        p.require_text("provider", &self.provider);
        if self.partitions.is_empty() {
            p.add("partitions", "at least one partition is required");
        }
        let mut seen = HashSet::new();
        for (i, part) in self.partitions.iter().enumerate() {
            p.require_id(&format!("partitions[{i}].id"), &part.id);
            if !seen.insert(part.id.as_str()) {
                p.add(
                    format!("partitions[{i}].id"),
                    format!("partition `{}` appears twice", part.id),
                );
            }
            check_properties(p, &format!("partitions[{i}].property"), &part.property);
        }
        check_properties(p, "properties", &self.properties);
    }
    fn check_references(&self, catalog: &Catalog, p: &mut Problems) {
        if !catalog.providers.iter().any(|x| x == &self.provider) {
            let available = if catalog.providers.is_empty() {
                "none yet (no server of this platform runs the controller: start one)".to_owned()
            } else {
                catalog.providers.join(", ")
            };
            let hint = if self.provider == "mock" {
                " (the mock IaaS is offered by a server started with --mock-iaas)"
            } else {
                ""
            };
            p.add(
                "provider",
                format!(
                    "provider `{}` is not available on this platform{hint}; available providers: {available}",
                    self.provider,
                ),
            );
        }
    }
}

// === Deployment policies (§6.2) ===

/// The partition algorithms of a deployment policy.
pub const PARTITION_ALGORITHMS: [&str; 2] = ["one-after-another", "round-robin"];

/// Where a cluster's members may go, and how they spread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentPolicy {
    /// Unique id.
    pub id: String,
    /// The network partitions used, each with its partitions.
    pub network_partitions: Vec<NetworkPartitionRef>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A network partition as used by a deployment policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPartitionRef {
    /// Id of an existing network partition.
    pub id: String,
    /// `one-after-another` or `round-robin`.
    pub partition_algo: String,
    /// Partitions of that network partition, each with a member cap.
    pub partitions: Vec<PartitionRef>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A partition as used by a deployment policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionRef {
    /// Id of a partition of the enclosing network partition.
    pub id: String,
    /// Most members this partition may hold (absent: no cap).
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub partition_max: Option<u32>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl Artifact for DeploymentPolicy {
    const KIND: Kind = Kind::DeploymentPolicy;
    const ID_FIELD: &'static str = "id";
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("id", &self.id);
        if self.network_partitions.is_empty() {
            p.add(
                "networkPartitions",
                "at least one network partition is required",
            );
        }
        let mut seen = HashSet::new();
        for (i, np) in self.network_partitions.iter().enumerate() {
            let f = format!("networkPartitions[{i}]");
            p.require_id(&format!("{f}.id"), &np.id);
            if !seen.insert(np.id.as_str()) {
                p.add(
                    format!("{f}.id"),
                    format!("network partition `{}` appears twice", np.id),
                );
            }
            p.require_one_of(
                &format!("{f}.partitionAlgo"),
                &np.partition_algo,
                &PARTITION_ALGORITHMS,
            );
            if np.partitions.is_empty() {
                p.add(
                    format!("{f}.partitions"),
                    "at least one partition is required",
                );
            }
            let mut parts = HashSet::new();
            for (j, part) in np.partitions.iter().enumerate() {
                p.require_id(&format!("{f}.partitions[{j}].id"), &part.id);
                if !parts.insert(part.id.as_str()) {
                    p.add(
                        format!("{f}.partitions[{j}].id"),
                        format!("partition `{}` appears twice", part.id),
                    );
                }
                if part.partition_max == Some(0) {
                    p.add(
                        format!("{f}.partitions[{j}].partitionMax"),
                        "must be at least 1 (leave it out for no cap)",
                    );
                }
            }
        }
    }
    fn references(&self) -> Vec<Reference> {
        self.network_partitions
            .iter()
            .enumerate()
            .map(|(i, np)| {
                Reference::new(
                    Kind::NetworkPartition,
                    &np.id,
                    format!("networkPartitions[{i}].id"),
                )
            })
            .collect()
    }
    fn check_references(&self, catalog: &Catalog, p: &mut Problems) {
        catalog.check_exist(&self.references(), p);
        for (i, np) in self.network_partitions.iter().enumerate() {
            let Some(def) = catalog.get::<NetworkPartition>(&np.id) else {
                continue;
            };
            for (j, part) in np.partitions.iter().enumerate() {
                if !def.partitions.iter().any(|x| x.id == part.id) {
                    p.add(
                        format!("networkPartitions[{i}].partitions[{j}].id"),
                        format!(
                            "network partition `{}` has no partition `{}` (it has: {})",
                            np.id,
                            part.id,
                            def.partitions
                                .iter()
                                .map(|x| x.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
        }
    }
}

// === Autoscaling policies (§6.3) ===

/// Load thresholds that drive the autoscaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingPolicy {
    /// Unique id.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The thresholds, per factor.
    pub load_thresholds: LoadThresholds,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Per-factor thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadThresholds {
    /// Requests in flight one member should carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_in_flight: Option<Threshold>,
    /// Memory consumption, percent (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_consumption: Option<Threshold>,
    /// Load average as a percentage of the cores (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<Threshold>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// One threshold value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Threshold {
    /// The value.
    #[serde(deserialize_with = "lenient::f64", serialize_with = "lenient::ser_f64")]
    pub threshold: f64,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl Artifact for AutoscalingPolicy {
    const KIND: Kind = Kind::AutoscalingPolicy;
    const ID_FIELD: &'static str = "id";
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("id", &self.id);
        let t = &self.load_thresholds;
        if t.requests_in_flight.is_none()
            && t.memory_consumption.is_none()
            && t.load_average.is_none()
        {
            p.add(
                "loadThresholds",
                "at least one of requestsInFlight, memoryConsumption, loadAverage is required",
            );
        }
        if let Some(r) = &t.requests_in_flight
            && (r.threshold.is_nan() || r.threshold <= 0.0)
        {
            p.add(
                "loadThresholds.requestsInFlight.threshold",
                "must be greater than 0",
            );
        }
        for (name, th) in [
            ("memoryConsumption", &t.memory_consumption),
            ("loadAverage", &t.load_average),
        ] {
            if let Some(th) = th
                && !(th.threshold > 0.0 && th.threshold <= 100.0)
            {
                p.add(
                    format!("loadThresholds.{name}.threshold"),
                    format!(
                        "is a percentage: must be above 0 and at most 100, not {}",
                        th.threshold
                    ),
                );
            }
        }
    }
}

// === Application policies (§6.4) ===

/// The network-partition algorithms of an application policy.
pub const APPLICATION_ALGORITHMS: [&str; 2] = ["one-after-another", "all-at-once"];

/// Which network partitions an application spans, and how it bursts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationPolicy {
    /// Unique id.
    pub id: String,
    /// `one-after-another` (burst) or `all-at-once`.
    pub algorithm: String,
    /// Network partition ids, in order.
    pub network_partitions: Vec<String>,
    /// Properties; `networkPartitionGroups` = `np1|np2,np3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Vec<Property>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl ApplicationPolicy {
    /// The network-partition groups: from the `networkPartitionGroups` property (also spelled
    /// `network-partition-groups`, as Stratos' samples do), else one group per network partition.
    pub fn network_partition_groups(&self) -> Vec<Vec<String>> {
        let raw = property(&self.properties, "networkPartitionGroups")
            .or_else(|| property(&self.properties, "network-partition-groups"));
        match raw {
            Some(raw) if !raw.trim().is_empty() => raw
                .split(',')
                .map(|g| {
                    g.split('|')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .filter(|g: &Vec<String>| !g.is_empty())
                .collect(),
            _ => self
                .network_partitions
                .iter()
                .map(|n| vec![n.clone()])
                .collect(),
        }
    }
}

impl Artifact for ApplicationPolicy {
    const KIND: Kind = Kind::ApplicationPolicy;
    const ID_FIELD: &'static str = "id";
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("id", &self.id);
        p.require_one_of("algorithm", &self.algorithm, &APPLICATION_ALGORITHMS);
        if self.network_partitions.is_empty() {
            p.add(
                "networkPartitions",
                "at least one network partition is required",
            );
        }
        let mut seen = HashSet::new();
        for (i, np) in self.network_partitions.iter().enumerate() {
            p.require_id(&format!("networkPartitions[{i}]"), np);
            if !seen.insert(np.as_str()) {
                p.add(
                    format!("networkPartitions[{i}]"),
                    format!("`{np}` appears twice"),
                );
            }
        }
        check_properties(p, "properties", &self.properties);
        let mut grouped = HashSet::new();
        for g in self.network_partition_groups().iter().flatten() {
            if !seen.contains(g.as_str()) {
                p.add(
                    "properties",
                    format!(
                        "networkPartitionGroups names `{g}`, which is not in networkPartitions"
                    ),
                );
            } else if !grouped.insert(g.clone()) {
                p.add(
                    "properties",
                    format!("networkPartitionGroups names `{g}` twice"),
                );
            }
        }
    }
    fn references(&self) -> Vec<Reference> {
        self.network_partitions
            .iter()
            .enumerate()
            .map(|(i, np)| {
                Reference::new(
                    Kind::NetworkPartition,
                    np,
                    format!("networkPartitions[{i}]"),
                )
            })
            .collect()
    }
}

// === Cartridges (§6.5) ===

/// The port-mapping protocols Nubo knows.
pub const PORT_PROTOCOLS: [&str; 4] = ["http", "https", "tcp", "udp"];

/// A cartridge: a kind of instance (runtime, database, load balancer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cartridge {
    /// Cartridge type: its unique id.
    #[serde(rename = "type")]
    pub cartridge_type: String,
    /// Provider (vendor) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Category: `framework`, `data`, `load-balancer`, `application`.
    pub category: String,
    /// Base host name: a cluster is reachable as `<app>.<alias>.<host>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Version text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether one member serves many tenants.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub multi_tenant: Option<bool>,
    /// `private` or `public`: which member address the load balancer uses.
    #[serde(
        rename = "loadBalancingIPType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancing_ip_type: Option<String>,
    /// Where the artifact is deployed inside an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<CartridgeDeployment>,
    /// Ports the workload listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mapping: Option<Vec<PortMapping>>,
    /// Metadata keys the cartridge may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_keys: Option<Vec<String>>,
    /// How to start an instance, per IaaS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iaas_provider: Option<Vec<IaasProvider>>,
    /// Volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// Properties (`payload_parameter.X`, Kubernetes settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<Vec<Property>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Deployment directories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartridgeDeployment {
    /// Base directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_dir: Option<String>,
    /// Extra directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Vec<String>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A port the workload listens on, and the load balancer port in front of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Name (e.g. `http-80`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `http`, `https`, `tcp` or `udp`.
    pub protocol: String,
    /// The workload's port.
    #[serde(deserialize_with = "lenient::u16")]
    pub port: u16,
    /// The load balancer's port for it.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u16",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_port: Option<u16>,
    /// Kubernetes service type: `NodePort` or `ClusterIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_port_type: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// How to start an instance on one IaaS. For the `local` provider, `imageId` is the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IaasProvider {
    /// IaaS type (`local`, `mock`, `docker`, `kubernetes`, `ec2`, ...).
    #[serde(rename = "type")]
    pub iaas_type: String,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Java class name in Stratos (kept, unused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Image id; for `local`, the workload's command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// Provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// IaaS properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<Vec<Property>>,
    /// Network interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interfaces: Option<Vec<NetworkInterface>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A network interface of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    /// Network UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_uuid: Option<String>,
    /// Fixed IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip: Option<String>,
    /// Port UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_uuid: Option<String>,
    /// Floating networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_networks: Option<Vec<FloatingNetwork>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A floating network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FloatingNetwork {
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Network UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_uuid: Option<String>,
    /// Floating IP.
    #[serde(
        rename = "floatingIP",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub floating_ip: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Persistent volumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// Whether volumes are required.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub is_required: Option<bool>,
    /// The volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<Volume>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Size in GB.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<u32>,
    /// Device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether the volume goes with the instance.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub remove_on_termination: Option<bool>,
    /// Mount path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_path: Option<String>,
    /// Snapshot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Volume id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl Artifact for Cartridge {
    const KIND: Kind = Kind::Cartridge;
    const ID_FIELD: &'static str = "type";
    fn id(&self) -> &str {
        &self.cartridge_type
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("type", &self.cartridge_type);
        p.require_text("category", &self.category);
        if let Some(host) = &self.host
            && (host.is_empty()
                || host
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || c == '.' || c == '-')))
        {
            p.add("host", format!("`{host}` is not a valid host name"));
        }
        if let Some(t) = &self.load_balancing_ip_type {
            p.require_one_of("loadBalancingIPType", t, &["private", "public"]);
        }
        let mut names = HashSet::new();
        let mut proxies = HashSet::new();
        for (i, pm) in self.port_mapping.iter().flatten().enumerate() {
            let f = format!("portMapping[{i}]");
            p.require_one_of(&format!("{f}.protocol"), &pm.protocol, &PORT_PROTOCOLS);
            if pm.port == 0 {
                p.add(format!("{f}.port"), "must be between 1 and 65535");
            }
            if pm.proxy_port == Some(0) {
                p.add(format!("{f}.proxyPort"), "must be between 1 and 65535");
            }
            if let Some(proxy) = pm.proxy_port
                && !proxies.insert(proxy)
            {
                p.add(
                    format!("{f}.proxyPort"),
                    format!("proxy port {proxy} is used twice"),
                );
            }
            if let Some(name) = &pm.name
                && !names.insert(name.as_str())
            {
                p.add(
                    format!("{f}.name"),
                    format!("port mapping name `{name}` is used twice"),
                );
            }
            if let Some(t) = &pm.kubernetes_port_type {
                p.require_one_of(
                    &format!("{f}.kubernetesPortType"),
                    t,
                    &["NodePort", "ClusterIP"],
                );
            }
        }
        for (i, iaas) in self.iaas_provider.iter().flatten().enumerate() {
            p.require_text(&format!("iaasProvider[{i}].type"), &iaas.iaas_type);
            if iaas.iaas_type == "local"
                && iaas.image_id.as_deref().is_none_or(|s| s.trim().is_empty())
            {
                p.add(
                    format!("iaasProvider[{i}].imageId"),
                    "the `local` provider needs the workload's command line in imageId",
                );
            }
            check_properties(p, &format!("iaasProvider[{i}].property"), &iaas.property);
        }
        if let Some(persistence) = &self.persistence {
            for (i, v) in persistence.volumes.iter().flatten().enumerate() {
                if v.size == Some(0) {
                    p.add(
                        format!("persistence.volumes[{i}].size"),
                        "must be at least 1 (GB)",
                    );
                }
            }
        }
        check_properties(p, "property", &self.property);
    }
}

// === Cartridge groups (§6.6) ===

/// The termination behaviours of a group.
pub const TERMINATION_BEHAVIOURS: [&str; 3] =
    ["terminate-all", "terminate-dependents", "terminate-none"];

/// A reusable group of cartridges and nested groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartridgeGroup {
    /// Unique name.
    pub name: String,
    /// Nested groups, defined inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub groups: Option<Vec<CartridgeGroup>>,
    /// Cartridge types in this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cartridges: Option<Vec<String>>,
    /// Startup order, scaling dependents, termination behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Dependencies>,
    /// Kept for Stratos compatibility; group scaling is on iff `groupMaxInstances > 1`.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_scaling_enabled: Option<bool>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Dependencies between the children of a group or application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dependencies {
    /// Each entry: the first alias starts before the second, and so on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_orders: Option<Vec<AliasList>>,
    /// Each entry: these aliases scale together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_dependents: Option<Vec<AliasList>>,
    /// `terminate-all`, `terminate-dependents` or `terminate-none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_behaviour: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A list of `cartridge.<alias>` / `group.<alias>` entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AliasList {
    /// The entries; one string may hold several, joined by commas.
    pub aliases: Vec<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A child named in a startup order or scaling dependents.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildRef {
    /// `cartridge.<alias>`.
    Cartridge(String),
    /// `group.<alias>`.
    Group(String),
}

impl ChildRef {
    /// The alias.
    pub fn alias(&self) -> &str {
        match self {
            ChildRef::Cartridge(a) | ChildRef::Group(a) => a,
        }
    }
}

impl std::fmt::Display for ChildRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildRef::Cartridge(a) => write!(f, "cartridge.{a}"),
            ChildRef::Group(a) => write!(f, "group.{a}"),
        }
    }
}

impl AliasList {
    /// The entries, split on commas and trimmed, as Stratos does.
    pub fn entries(&self) -> Vec<String> {
        self.aliases
            .iter()
            .flat_map(|a| a.split(','))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The entries parsed; an error names the malformed entry.
    pub fn parse(&self) -> Result<Vec<ChildRef>, String> {
        self.entries()
            .into_iter()
            .map(|e| {
                if let Some(a) = e.strip_prefix("cartridge.").filter(|a| !a.is_empty()) {
                    Ok(ChildRef::Cartridge(a.to_owned()))
                } else if let Some(a) = e.strip_prefix("group.").filter(|a| !a.is_empty()) {
                    Ok(ChildRef::Group(a.to_owned()))
                } else {
                    Err(format!(
                        "`{e}` is not a valid entry: write `cartridge.<alias>` or `group.<alias>`"
                    ))
                }
            })
            .collect()
    }
}

impl Dependencies {
    /// Checks the form of every entry (not whether the aliases exist).
    pub fn validate(&self, field: &str, p: &mut Problems) {
        for (list_name, lists) in [
            ("startupOrders", &self.startup_orders),
            ("scalingDependents", &self.scaling_dependents),
        ] {
            for (i, list) in lists.iter().flatten().enumerate() {
                let f = format!("{field}.{list_name}[{i}].aliases");
                match list.parse() {
                    Ok(entries) if entries.is_empty() => p.add(f, "must name at least one alias"),
                    Ok(entries) => {
                        let mut seen = HashSet::new();
                        for e in &entries {
                            if !seen.insert(e) {
                                p.add(&f, format!("`{e}` appears twice"));
                            }
                        }
                    }
                    Err(reason) => p.add(f, reason),
                }
            }
        }
        if let Some(t) = &self.termination_behaviour {
            p.require_one_of(
                &format!("{field}.terminationBehaviour"),
                t,
                &TERMINATION_BEHAVIOURS,
            );
        }
    }

    /// Checks that every alias names a child at this level, and that the startup orders have no cycle.
    pub fn check_children(&self, field: &str, children: &HashSet<ChildRef>, p: &mut Problems) {
        let mut edges: Vec<(ChildRef, ChildRef)> = Vec::new();
        for (list_name, lists) in [
            ("startupOrders", &self.startup_orders),
            ("scalingDependents", &self.scaling_dependents),
        ] {
            for (i, list) in lists.iter().flatten().enumerate() {
                let Ok(entries) = list.parse() else { continue };
                for e in &entries {
                    if !children.contains(e) {
                        let mut known: Vec<String> =
                            children.iter().map(|c| c.to_string()).collect();
                        known.sort();
                        p.add(
                            format!("{field}.{list_name}[{i}].aliases"),
                            format!(
                                "`{e}` is not a child here (children: {})",
                                if known.is_empty() {
                                    "none".to_owned()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                }
                if list_name == "startupOrders" {
                    edges.extend(entries.windows(2).map(|w| (w[0].clone(), w[1].clone())));
                }
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            p.add(
                format!("{field}.startupOrders"),
                format!(
                    "the startup orders form a cycle: {}",
                    cycle
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            );
        }
    }
}

/// Finds a cycle in a directed graph given as edges; returns it as a closed walk.
pub fn find_cycle<T: Clone + Eq + std::hash::Hash + Ord>(edges: &[(T, T)]) -> Option<Vec<T>> {
    let mut adj: BTreeMap<&T, Vec<&T>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    // 0 = unvisited, 1 = on stack, 2 = done
    let mut state: HashMap<&T, u8> = HashMap::new();
    let mut stack: Vec<&T> = Vec::new();
    fn dfs<'a, T: Eq + std::hash::Hash + Ord + Clone>(
        n: &'a T,
        adj: &BTreeMap<&'a T, Vec<&'a T>>,
        state: &mut HashMap<&'a T, u8>,
        stack: &mut Vec<&'a T>,
    ) -> Option<Vec<T>> {
        state.insert(n, 1);
        stack.push(n);
        for &m in adj.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|x| *x == m).unwrap_or(0);
                    let mut cycle: Vec<T> = stack[start..].iter().map(|x| (*x).clone()).collect();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = dfs(m, adj, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let nodes: Vec<&T> = adj.keys().copied().collect();
    for n in nodes {
        if state.get(n).copied().unwrap_or(0) == 0
            && let Some(c) = dfs(n, &adj, &mut state, &mut stack)
        {
            return Some(c);
        }
    }
    None
}

impl CartridgeGroup {
    fn validate_at(&self, field: &str, ancestors: &mut Vec<String>, p: &mut Problems) {
        let name_field = if field.is_empty() {
            "name".to_owned()
        } else {
            format!("{field}.name")
        };
        p.require_id(&name_field, &self.name);
        if ancestors.contains(&self.name) {
            p.add(
                name_field,
                format!(
                    "group `{}` is nested inside itself: {} -> {}",
                    self.name,
                    ancestors.join(" -> "),
                    self.name
                ),
            );
            return;
        }
        let prefix = |s: &str| {
            if field.is_empty() {
                s.to_owned()
            } else {
                format!("{field}.{s}")
            }
        };
        let mut seen = HashSet::new();
        for (i, c) in self.cartridges.iter().flatten().enumerate() {
            p.require_id(&prefix(&format!("cartridges[{i}]")), c);
            if !seen.insert(c.as_str()) {
                p.add(
                    prefix(&format!("cartridges[{i}]")),
                    format!("cartridge `{c}` appears twice in group `{}`", self.name),
                );
            }
        }
        let mut groups = HashSet::new();
        ancestors.push(self.name.clone());
        for (i, g) in self.groups.iter().flatten().enumerate() {
            if !groups.insert(g.name.as_str()) {
                p.add(
                    prefix(&format!("groups[{i}].name")),
                    format!("group `{}` appears twice in group `{}`", g.name, self.name),
                );
            }
            g.validate_at(&prefix(&format!("groups[{i}]")), ancestors, p);
        }
        ancestors.pop();
        if let Some(d) = &self.dependencies {
            d.validate(&prefix("dependencies"), p);
        }
    }

    /// Every cartridge type named anywhere in this group tree, with its field path.
    pub fn all_cartridges(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.collect_cartridges("", &mut out);
        out
    }

    fn collect_cartridges(&self, field: &str, out: &mut Vec<(String, String)>) {
        let prefix = |s: &str| {
            if field.is_empty() {
                s.to_owned()
            } else {
                format!("{field}.{s}")
            }
        };
        for (i, c) in self.cartridges.iter().flatten().enumerate() {
            out.push((c.clone(), prefix(&format!("cartridges[{i}]"))));
        }
        for (i, g) in self.groups.iter().flatten().enumerate() {
            g.collect_cartridges(&prefix(&format!("groups[{i}]")), out);
        }
    }
}

impl Artifact for CartridgeGroup {
    const KIND: Kind = Kind::CartridgeGroup;
    const ID_FIELD: &'static str = "name";
    fn id(&self) -> &str {
        &self.name
    }
    fn validate(&self, p: &mut Problems) {
        self.validate_at("", &mut Vec::new(), p);
    }
    fn references(&self) -> Vec<Reference> {
        let mut seen = HashSet::new();
        self.all_cartridges()
            .into_iter()
            .filter(|(c, _)| seen.insert(c.clone()))
            .map(|(c, f)| Reference::new(Kind::Cartridge, &c, f))
            .collect()
    }
}

// === Applications (§6.7) ===

/// A composite application definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Application {
    /// Unique id.
    pub application_id: String,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Multi-tenant application (tenants join by signup).
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub multi_tenant: Option<bool>,
    /// The component tree.
    pub components: Components,
    /// Properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<Vec<Property>>,
    /// Read-only: `Created`, `Deployed`, `Undeploying` (set by the platform, ignored on input).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Read-only: whether tenants signed up (set by the platform, ignored on input).
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub sign_ups_exist: Option<bool>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// The children of an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Components {
    /// Groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupRef>>,
    /// Cartridges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cartridges: Option<Vec<CartridgeRef>>,
    /// Dependencies between the top-level children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Dependencies>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A cartridge used in an application: one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartridgeRef {
    /// Cartridge type.
    #[serde(rename = "type")]
    pub cartridge_type: String,
    /// Minimum members per cluster instance.
    #[serde(deserialize_with = "lenient::u32")]
    pub cartridge_min: u32,
    /// Maximum members per cluster instance.
    #[serde(deserialize_with = "lenient::u32")]
    pub cartridge_max: u32,
    /// Alias, policies and repository.
    pub subscribable_info: SubscribableInfo,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// How a cartridge is used in an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscribableInfo {
    /// Alias, unique in the application.
    pub alias: String,
    /// Deployment policy (else inherited from the enclosing group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_policy: Option<String>,
    /// Autoscaling policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling_policy: Option<String>,
    /// Stratos 4.0 minimum (kept).
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_members: Option<u32>,
    /// Stratos 4.0 maximum (kept).
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_members: Option<u32>,
    /// Aliases this cartridge depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency_aliases: Option<Vec<String>>,
    /// Git repository of the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_repository: Option<ArtifactRepository>,
    /// Properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<Vec<Property>>,
    /// Persistence override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<Persistence>,
    /// LVS virtual IP.
    #[serde(
        rename = "lvsVirtualIP",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub lvs_virtual_ip: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A git repository holding an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRepository {
    /// Cartridge alias (in signups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Private repository.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_repo: Option<bool>,
    /// Repository URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    /// User name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_username: Option<String>,
    /// Password: kept sealed in the store, never served back (a change that leaves it out,
    /// for the same repository URL, keeps the stored one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_password: Option<String>,
    /// The secret that GitHub (`X-Hub-Signature-256`) and GitLab (`X-Gitlab-Token`) webhooks
    /// prove their calls of `/api/repo/notify` with (Nubo's): sealed, never served back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A cartridge group used in an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupRef {
    /// Name of the cartridge group definition (or of a nested group in it).
    pub name: String,
    /// Alias, unique in the application.
    pub alias: String,
    /// Minimum group instances.
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_min_instances: Option<u32>,
    /// Maximum group instances (group scaling is on when above 1).
    #[serde(
        default,
        deserialize_with = "lenient::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_max_instances: Option<u32>,
    /// Kept for Stratos compatibility (ignored, as in Stratos).
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_scaling_enabled: Option<bool>,
    /// Deployment policy inherited by the children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_policy: Option<String>,
    /// Cartridges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cartridges: Option<Vec<CartridgeRef>>,
    /// Nested groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub groups: Option<Vec<GroupRef>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A cluster of an application, found by walking its component tree.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec<'a> {
    /// The cartridge reference.
    pub cartridge: &'a CartridgeRef,
    /// Field path of the reference.
    pub field: String,
    /// Effective deployment policy (own, else the nearest group's).
    pub deployment_policy: Option<&'a str>,
    /// Aliases of the enclosing groups, outermost first.
    pub group_path: Vec<&'a str>,
}

/// A repository URL the agent can clone: `https://`, `http://`, `git://`, `ssh://` or `file://`,
/// without credentials in it (they go in `repoUsername` and `repoPassword`, which are sealed),
/// and nothing git would read as an option.
fn check_repository_url(field: &str, url: &str, p: &mut Problems) {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(
        scheme.as_deref(),
        Some("https" | "http" | "git" | "ssh" | "file")
    ) {
        p.add(
            field,
            "not a repository URL the agent can clone: use https://, http://, git://, ssh:// or file://",
        );
        return;
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        p.add(field, "contains white space or a control character");
    }
    let authority = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    if authority.contains('@') && scheme.as_deref() != Some("ssh") {
        p.add(
            field,
            "has credentials in it: give them as repoUsername and repoPassword, which are kept sealed and never shown",
        );
    }
}

impl Application {
    /// The same application without its repositories' secrets (passwords, webhook secrets):
    /// what the API serves.
    pub fn redact_secrets(&mut self) {
        fn level(cartridges: &mut Option<Vec<CartridgeRef>>, groups: &mut Option<Vec<GroupRef>>) {
            for c in cartridges.iter_mut().flatten() {
                if let Some(r) = c.subscribable_info.artifact_repository.as_mut() {
                    r.repo_password = None;
                    r.webhook_secret = None;
                }
            }
            for g in groups.iter_mut().flatten() {
                level(&mut g.cartridges, &mut g.groups);
            }
        }
        level(&mut self.components.cartridges, &mut self.components.groups);
    }

    /// Every cluster of the application, depth first.
    pub fn clusters(&self) -> Vec<ClusterSpec<'_>> {
        let mut out = Vec::new();
        for (i, c) in self.components.cartridges.iter().flatten().enumerate() {
            out.push(ClusterSpec {
                cartridge: c,
                field: format!("components.cartridges[{i}]"),
                deployment_policy: c.subscribable_info.deployment_policy.as_deref(),
                group_path: Vec::new(),
            });
        }
        for (i, g) in self.components.groups.iter().flatten().enumerate() {
            walk_group(
                g,
                &format!("components.groups[{i}]"),
                None,
                &mut Vec::new(),
                &mut out,
            );
        }
        out
    }

    /// Every group reference, depth first, with its field path.
    pub fn groups(&self) -> Vec<(&GroupRef, String)> {
        fn walk<'a>(g: &'a GroupRef, f: String, out: &mut Vec<(&'a GroupRef, String)>) {
            out.push((g, f.clone()));
            for (i, c) in g.groups.iter().flatten().enumerate() {
                walk(c, format!("{f}.groups[{i}]"), out);
            }
        }
        let mut out = Vec::new();
        for (i, g) in self.components.groups.iter().flatten().enumerate() {
            walk(g, format!("components.groups[{i}]"), &mut out);
        }
        out
    }
}

fn walk_group<'a>(
    g: &'a GroupRef,
    field: &str,
    inherited: Option<&'a str>,
    path: &mut Vec<&'a str>,
    out: &mut Vec<ClusterSpec<'a>>,
) {
    let policy = g.deployment_policy.as_deref().or(inherited);
    path.push(&g.alias);
    for (i, c) in g.cartridges.iter().flatten().enumerate() {
        out.push(ClusterSpec {
            cartridge: c,
            field: format!("{field}.cartridges[{i}]"),
            deployment_policy: c.subscribable_info.deployment_policy.as_deref().or(policy),
            group_path: path.clone(),
        });
    }
    for (i, child) in g.groups.iter().flatten().enumerate() {
        walk_group(child, &format!("{field}.groups[{i}]"), policy, path, out);
    }
    path.pop();
}

fn children_of(
    cartridges: &Option<Vec<CartridgeRef>>,
    groups: &Option<Vec<GroupRef>>,
) -> HashSet<ChildRef> {
    cartridges
        .iter()
        .flatten()
        .map(|c| ChildRef::Cartridge(c.subscribable_info.alias.clone()))
        .chain(
            groups
                .iter()
                .flatten()
                .map(|g| ChildRef::Group(g.alias.clone())),
        )
        .collect()
}

impl Artifact for Application {
    const KIND: Kind = Kind::Application;
    fn redact_secrets(&mut self) {
        Application::redact_secrets(self);
    }
    const ID_FIELD: &'static str = "applicationId";
    fn id(&self) -> &str {
        &self.application_id
    }
    fn validate(&self, p: &mut Problems) {
        p.require_name("applicationId", &self.application_id);
        if self.components.cartridges.iter().flatten().next().is_none()
            && self.components.groups.iter().flatten().next().is_none()
        {
            p.add(
                "components",
                "an application needs at least one cartridge or group",
            );
        }
        let mut aliases: HashMap<&str, String> = HashMap::new();
        for spec in self.clusters() {
            let c = spec.cartridge;
            let f = &spec.field;
            p.require_id(&format!("{f}.type"), &c.cartridge_type);
            p.require_name(
                &format!("{f}.subscribableInfo.alias"),
                &c.subscribable_info.alias,
            );
            if let Some(prev) = aliases.insert(&c.subscribable_info.alias, f.clone()) {
                p.add(
                    format!("{f}.subscribableInfo.alias"),
                    format!(
                        "alias `{}` is already used at `{prev}`",
                        c.subscribable_info.alias
                    ),
                );
            }
            if let Some(url) = c
                .subscribable_info
                .artifact_repository
                .as_ref()
                .and_then(|r| r.repo_url.as_deref())
            {
                check_repository_url(
                    &format!("{f}.subscribableInfo.artifactRepository.repoUrl"),
                    url,
                    p,
                );
            }
            if c.cartridge_min > c.cartridge_max {
                p.add(
                    format!("{f}.cartridgeMin"),
                    format!(
                        "cartridgeMin ({}) is greater than cartridgeMax ({})",
                        c.cartridge_min, c.cartridge_max
                    ),
                );
            }
            if c.cartridge_max == 0 {
                p.add(format!("{f}.cartridgeMax"), "must be at least 1");
            }
            if spec.deployment_policy.is_none() {
                p.add(
                    format!("{f}.subscribableInfo.deploymentPolicy"),
                    "no deployment policy: set one here or on an enclosing group",
                );
            }
            if c.subscribable_info
                .autoscaling_policy
                .as_deref()
                .is_none_or(str::is_empty)
            {
                p.add(
                    format!("{f}.subscribableInfo.autoscalingPolicy"),
                    "an autoscaling policy is required",
                );
            }
            check_properties(
                p,
                &format!("{f}.subscribableInfo.property"),
                &c.subscribable_info.property,
            );
        }
        for (g, f) in self.groups() {
            p.require_id(&format!("{f}.name"), &g.name);
            p.require_name(&format!("{f}.alias"), &g.alias);
            if let Some(prev) = aliases.insert(&g.alias, f.clone()) {
                p.add(
                    format!("{f}.alias"),
                    format!("alias `{}` is already used at `{prev}`", g.alias),
                );
            }
            if let (Some(min), Some(max)) = (g.group_min_instances, g.group_max_instances)
                && min > max
            {
                p.add(
                    format!("{f}.groupMinInstances"),
                    format!("groupMinInstances ({min}) is greater than groupMaxInstances ({max})"),
                );
            }
            if g.group_max_instances == Some(0) {
                p.add(format!("{f}.groupMaxInstances"), "must be at least 1");
            }
        }
        if let Some(d) = &self.components.dependencies {
            d.validate("components.dependencies", p);
            d.check_children(
                "components.dependencies",
                &children_of(&self.components.cartridges, &self.components.groups),
                p,
            );
        }
        check_properties(p, "property", &self.property);
    }
    fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut push = |kind: Kind, id: &str, field: String| {
            if seen.insert((kind, id.to_owned())) {
                out.push(Reference::new(kind, id, field));
            }
        };
        for spec in self.clusters() {
            let c = spec.cartridge;
            push(
                Kind::Cartridge,
                &c.cartridge_type,
                format!("{}.type", spec.field),
            );
            if let Some(dp) = &c.subscribable_info.deployment_policy {
                push(
                    Kind::DeploymentPolicy,
                    dp,
                    format!("{}.subscribableInfo.deploymentPolicy", spec.field),
                );
            }
            if let Some(ap) = &c.subscribable_info.autoscaling_policy {
                push(
                    Kind::AutoscalingPolicy,
                    ap,
                    format!("{}.subscribableInfo.autoscalingPolicy", spec.field),
                );
            }
        }
        for (i, g) in self.components.groups.iter().flatten().enumerate() {
            push(
                Kind::CartridgeGroup,
                &g.name,
                format!("components.groups[{i}].name"),
            );
        }
        for (g, f) in self.groups() {
            if let Some(dp) = &g.deployment_policy {
                push(Kind::DeploymentPolicy, dp, format!("{f}.deploymentPolicy"));
            }
        }
        out
    }
    fn check_references(&self, catalog: &Catalog, p: &mut Problems) {
        catalog.check_exist(&self.references(), p);
        for (i, g) in self.components.groups.iter().flatten().enumerate() {
            if let Some(def) = catalog.get::<CartridgeGroup>(&g.name) {
                check_group_against(g, &def, &format!("components.groups[{i}]"), p);
            }
        }
    }
}

/// Checks that an application's group mirrors its definition: cartridge types and nested groups
/// exist in the definition at the same level, and the definition's dependencies name children
/// that the application gives.
fn check_group_against(g: &GroupRef, def: &CartridgeGroup, field: &str, p: &mut Problems) {
    if g.name != def.name {
        p.add(
            format!("{field}.name"),
            format!("expected group `{}` here, found `{}`", def.name, g.name),
        );
        return;
    }
    let def_carts: Vec<&String> = def.cartridges.iter().flatten().collect();
    for (i, c) in g.cartridges.iter().flatten().enumerate() {
        if !def_carts.contains(&&c.cartridge_type) {
            p.add(
                format!("{field}.cartridges[{i}].type"),
                format!(
                    "cartridge group `{}` has no cartridge `{}` at this level (it has: {})",
                    def.name,
                    c.cartridge_type,
                    if def_carts.is_empty() {
                        "none".to_owned()
                    } else {
                        def_carts
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            );
        }
    }
    let def_groups: Vec<&CartridgeGroup> = def.groups.iter().flatten().collect();
    for (i, child) in g.groups.iter().flatten().enumerate() {
        let f = format!("{field}.groups[{i}]");
        match def_groups.iter().find(|d| d.name == child.name) {
            Some(d) => check_group_against(child, d, &f, p),
            None => p.add(
                format!("{f}.name"),
                format!(
                    "cartridge group `{}` has no nested group `{}` (it has: {})",
                    def.name,
                    child.name,
                    if def_groups.is_empty() {
                        "none".to_owned()
                    } else {
                        def_groups
                            .iter()
                            .map(|d| d.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ),
        }
    }
    if let Some(d) = &def.dependencies {
        let mut q = Problems::default();
        d.check_children(
            "dependencies",
            &children_of(&g.cartridges, &g.groups),
            &mut q,
        );
        for e in q.0 {
            p.add(
                field,
                format!("cartridge group `{}`: `{}` {}", def.name, e.field, e.reason),
            );
        }
    }
}

// === Kubernetes clusters (§6.10) ===

/// A registered Kubernetes cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesCluster {
    /// Unique id.
    pub cluster_id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The master.
    pub kubernetes_master: KubernetesHost,
    /// The hosts (minions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_hosts: Option<Vec<KubernetesHost>>,
    /// Service port range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
    /// Properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<Vec<Property>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A Kubernetes host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesHost {
    /// Unique id within the cluster.
    pub host_id: String,
    /// Host name.
    pub hostname: String,
    /// Private IP.
    #[serde(
        rename = "privateIPAddress",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub private_ip_address: Option<String>,
    /// Public IP.
    #[serde(
        rename = "publicIPAddress",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ip_address: Option<String>,
    /// Properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<Vec<Property>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A port range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PortRange {
    /// Upper bound.
    #[serde(deserialize_with = "lenient::u16")]
    pub upper: u16,
    /// Lower bound.
    #[serde(deserialize_with = "lenient::u16")]
    pub lower: u16,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// The properties of a Kubernetes cluster that are credentials: sealed in the store, never
/// served back (a change that leaves one out keeps the stored one).
pub const KUBERNETES_SECRET_PROPERTIES: [&str; 2] = ["token", "kubeconfig"];

impl Artifact for KubernetesCluster {
    const KIND: Kind = Kind::KubernetesCluster;
    fn redact_secrets(&mut self) {
        if let Some(props) = self.property.as_mut() {
            props.retain(|p| !KUBERNETES_SECRET_PROPERTIES.contains(&p.name.as_str()));
        }
    }
    const ID_FIELD: &'static str = "clusterId";
    fn id(&self) -> &str {
        &self.cluster_id
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("clusterId", &self.cluster_id);
        p.require_id("kubernetesMaster.hostId", &self.kubernetes_master.host_id);
        p.require_text(
            "kubernetesMaster.hostname",
            &self.kubernetes_master.hostname,
        );
        let mut ids = HashSet::from([self.kubernetes_master.host_id.as_str()]);
        for (i, h) in self.kubernetes_hosts.iter().flatten().enumerate() {
            p.require_id(&format!("kubernetesHosts[{i}].hostId"), &h.host_id);
            p.require_text(&format!("kubernetesHosts[{i}].hostname"), &h.hostname);
            if !ids.insert(h.host_id.as_str()) {
                p.add(
                    format!("kubernetesHosts[{i}].hostId"),
                    format!("host id `{}` is used twice", h.host_id),
                );
            }
        }
        if let Some(r) = &self.port_range
            && r.lower > r.upper
        {
            p.add(
                "portRange.lower",
                format!("lower ({}) is greater than upper ({})", r.lower, r.upper),
            );
        }
        check_properties(p, "property", &self.property);
    }
}

// === Tenants and users (§6.11) ===

/// The store's kind of tenants' quotas (the super tenant's documents, one per tenant, by id).
pub const QUOTA_KIND: &str = "quota";

/// A tenant's quotas, set by the platform's administrator (`PUT /api/quotas/{domain}`):
/// absent, no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantQuota {
    /// The tenant (set by the platform).
    #[serde(default)]
    pub tenant_id: i64,
    /// Applications it may define at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications: Option<u32>,
    /// Members (instances) its applications may run at once at most: deploys beyond it are
    /// refused, and the autoscaler holds there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tenant {
    /// Domain: the tenant's unique name.
    pub tenant_domain: String,
    /// Numeric id (assigned by the platform).
    #[serde(
        default,
        deserialize_with = "lenient::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant_id: Option<i64>,
    /// Admin user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Admin first name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Admin last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Admin password (write only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password: Option<String>,
    /// Admin email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Active.
    #[serde(
        default,
        deserialize_with = "lenient::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub active: Option<bool>,
    /// Success key (Carbon leftover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_key: Option<String>,
    /// Creation date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_date: Option<Value>,
    /// Originated service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originated_service: Option<String>,
    /// Usage plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_plan: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl Artifact for Tenant {
    const KIND: Kind = Kind::Tenant;
    const ID_FIELD: &'static str = "tenantDomain";
    fn id(&self) -> &str {
        &self.tenant_domain
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("tenantDomain", &self.tenant_domain);
        if !self.tenant_domain.contains('.') {
            p.add(
                "tenantDomain",
                format!(
                    "`{}` is not a domain name (e.g. example.com)",
                    self.tenant_domain
                ),
            );
        }
        if let Some(email) = &self.email
            && !email.contains('@')
        {
            p.add("email", format!("`{email}` is not an email address"));
        }
    }
}

/// A user of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// User name, unique in the tenant.
    pub user_name: String,
    /// Password (write only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Role (e.g. `admin`, `Internal/user`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// First name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_name: Option<String>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl Artifact for User {
    const KIND: Kind = Kind::User;
    const ID_FIELD: &'static str = "userName";
    fn id(&self) -> &str {
        &self.user_name
    }
    fn validate(&self, p: &mut Problems) {
        p.require_id("userName", &self.user_name);
    }
}

// === Signups and domain mappings (§6.8, §6.9); their API comes with multi-tenancy ===

/// A tenant's signup to a multi-tenant application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSignup {
    /// Application id (from the path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_id: Option<String>,
    /// Tenant id (from the caller).
    #[serde(
        default,
        deserialize_with = "lenient::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub tenant_id: Option<i64>,
    /// Artifact repositories, one per cartridge alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_repositories: Option<Vec<ArtifactRepository>>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// Domain mappings of an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainMappings {
    /// The mappings.
    pub domain_mappings: Vec<DomainMapping>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

/// A domain name mapped onto a cluster of an application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainMapping {
    /// Alias of the cartridge in the application.
    pub cartridge_alias: String,
    /// Domain name.
    pub domain_name: String,
    /// Context path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_path: Option<String>,
    /// The domain's certificate chain (PEM, the domain's certificate first), presented by the
    /// load balancers to HTTPS clients naming the domain (Nubo). Given with `privateKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The certificate's private key (PEM): sealed in the store, never served (Nubo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Plain HTTP requests for the domain are redirected to HTTPS (Nubo; default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<bool>,
    /// Unknown fields, kept verbatim.
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Extra,
}

impl DomainMappings {
    /// Checks the mappings against the application they are for.
    pub fn validate_for(&self, app: &Application, p: &mut Problems) {
        let aliases: HashSet<&str> = app
            .clusters()
            .iter()
            .map(|c| c.cartridge.subscribable_info.alias.as_str())
            .collect();
        for (i, m) in self.domain_mappings.iter().enumerate() {
            if !aliases.contains(m.cartridge_alias.as_str()) {
                p.add(
                    format!("domainMappings[{i}].cartridgeAlias"),
                    format!(
                        "alias `{}` does not exist in application `{}`",
                        m.cartridge_alias, app.application_id
                    ),
                );
            }
            if !valid_domain_name(&m.domain_name) {
                p.add(
                    format!("domainMappings[{i}].domainName"),
                    format!(
                        "`{}` is not a domain name (lower-case labels of letters, digits and `-`, at least two)",
                        m.domain_name
                    ),
                );
            }
            if let Some(c) = &m.context_path
                && (!c.starts_with('/')
                    || c.len() > 256
                    || c.chars()
                        .any(|ch| ch.is_whitespace() || ch.is_control() || ch == '?' || ch == '#'))
            {
                p.add(
                    format!("domainMappings[{i}].contextPath"),
                    "a path starting with `/`, without spaces, `?` or `#` (at most 256)",
                );
            }
            match (&m.certificate, &m.private_key) {
                (Some(_), None) => p.add(
                    format!("domainMappings[{i}].privateKey"),
                    "the certificate's private key (PEM) is required with `certificate`",
                ),
                (None, Some(_)) => p.add(
                    format!("domainMappings[{i}].certificate"),
                    "the certificate chain (PEM) is required with `privateKey`",
                ),
                _ => {}
            }
        }
        if self.domain_mappings.is_empty() {
            p.add("domainMappings", "at least one mapping is required");
        }
    }
}

impl ApplicationSignup {
    /// Checks the signup against the application it is for.
    pub fn validate_for(&self, app: &Application, p: &mut Problems) {
        if app.multi_tenant != Some(true) {
            p.add(
                "",
                format!("application `{}` is not multi-tenant: signups are for multi-tenant applications", app.application_id),
            );
        }
        let aliases: HashSet<&str> = app
            .clusters()
            .iter()
            .map(|c| c.cartridge.subscribable_info.alias.as_str())
            .collect();
        for (i, r) in self.artifact_repositories.iter().flatten().enumerate() {
            match &r.alias {
                Some(a) if aliases.contains(a.as_str()) => {}
                Some(a) => p.add(
                    format!("artifactRepositories[{i}].alias"),
                    format!(
                        "alias `{a}` does not exist in application `{}`",
                        app.application_id
                    ),
                ),
                None => p.add(
                    format!("artifactRepositories[{i}].alias"),
                    "an alias is required",
                ),
            }
            match &r.repo_url {
                Some(url) => {
                    check_repository_url(&format!("artifactRepositories[{i}].repoUrl"), url, p)
                }
                None => p.add(
                    format!("artifactRepositories[{i}].repoUrl"),
                    "a repository URL is required",
                ),
            }
        }
    }
}

/// Whether `name` is a domain name a tenant may map: lower-case letters, digits and `-` in
/// labels of 1 to 63 (not starting or ending with `-`), at least two labels, at most 253 in all.
pub fn valid_domain_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Edges that all go forward in some order never form a cycle; one edge back always does.
        #[test]
        fn cycles_are_found_exactly(n in 2usize..12, raw in proptest::collection::vec((0usize..12, 0usize..12), 0..40), back in (0usize..12, 0usize..12)) {
            let forward: Vec<(usize, usize)> = raw.into_iter().map(|(a, b)| (a % n, b % n)).filter(|(a, b)| a < b).collect();
            prop_assert!(find_cycle(&forward).is_none());
            let (a, b) = (back.0 % n, back.1 % n);
            if a < b {
                let mut with_back = forward.clone();
                with_back.push((a, b));
                // Close a path b -> a explicitly, then a -> b exists: a cycle.
                with_back.push((b, a));
                let cycle = find_cycle(&with_back).expect("a cycle");
                prop_assert_eq!(cycle.first(), cycle.last());
                for w in cycle.windows(2) {
                    prop_assert!(with_back.contains(&(w[0], w[1])), "the cycle follows real edges");
                }
            }
        }

        /// A number written as a string or as a number reads the same, and writes back as a number.
        #[test]
        fn lenient_ports_round_trip(port in 1u16..=65535, as_string in any::<bool>()) {
            let v = if as_string { serde_json::json!(port.to_string()) } else { serde_json::json!(port) };
            let pm: PortMapping = serde_json::from_value(serde_json::json!({"protocol": "http", "port": v})).unwrap();
            prop_assert_eq!(pm.port, port);
            prop_assert_eq!(serde_json::to_value(&pm).unwrap()["port"].clone(), serde_json::json!(port));
        }

        /// Thresholds keep their value through a write and a read.
        #[test]
        fn thresholds_round_trip(x in 0.0f64..1e6) {
            let t = Threshold { threshold: x, extra: Extra::new() };
            let back: Threshold = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
            prop_assert_eq!(back.threshold, x);
        }
    }

    #[test]
    fn alias_lists_split_on_commas_as_stratos_does() {
        let l = AliasList {
            aliases: vec![
                "group.my-appgroup, cartridge.my-esb".into(),
                "cartridge.x".into(),
            ],
            extra: Extra::new(),
        };
        assert_eq!(
            l.parse().unwrap(),
            vec![
                ChildRef::Group("my-appgroup".into()),
                ChildRef::Cartridge("my-esb".into()),
                ChildRef::Cartridge("x".into())
            ]
        );
        let bad = AliasList {
            aliases: vec!["cartridge.".into()],
            extra: Extra::new(),
        };
        assert!(bad.parse().is_err());
    }

    #[test]
    fn network_partition_groups_accept_both_spellings() {
        let mut p: ApplicationPolicy = serde_json::from_value(serde_json::json!({
            "id": "a", "algorithm": "one-after-another", "networkPartitions": ["n1", "n2", "n3"],
            "properties": [{"name": "network-partition-groups", "value": "n1|n2,n3"}]
        }))
        .unwrap();
        assert_eq!(
            p.network_partition_groups(),
            vec![
                vec!["n1".to_owned(), "n2".to_owned()],
                vec!["n3".to_owned()]
            ]
        );
        p.properties = None;
        assert_eq!(
            p.network_partition_groups().len(),
            3,
            "one group per network partition by default"
        );
    }
}
