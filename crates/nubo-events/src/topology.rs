//! The topology: what runs where. The cloud controller is its only writer.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ClusterPort;

/// A member's lifecycle (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Asked of the IaaS, not yet running.
    Created,
    /// The IaaS started it; addresses known.
    Initialized,
    /// Its agent started the workload.
    Starting,
    /// Its ports answer: it gets traffic.
    Active,
    /// Draining before shutdown.
    #[serde(rename = "In_Maintenance")]
    InMaintenance,
    /// Clean-up done; may be terminated.
    ReadyToShutdown,
    /// Gone.
    Terminated,
}

impl MemberStatus {
    /// Whether `self → next` is allowed (a self-transition is a no-op and allowed).
    pub fn can_become(self, next: MemberStatus) -> bool {
        use MemberStatus::*;
        self == next
            || matches!(
                (self, next),
                (Created, Initialized)
                    | (Initialized, Starting)
                    | (Starting, Active)
                    | (Active, Starting)
                    | (Active, InMaintenance)
                    | (InMaintenance, ReadyToShutdown)
                    | (_, Terminated)
            )
    }

    /// On its way to serving (Created, Initialized, Starting): capacity coming.
    pub fn is_starting(self) -> bool {
        matches!(
            self,
            MemberStatus::Created | MemberStatus::Initialized | MemberStatus::Starting
        )
    }

    /// Starting or Active: counts towards the cluster's members.
    pub fn is_live(self) -> bool {
        self.is_starting() || self == MemberStatus::Active
    }

    /// Stratos' spelling (`In_Maintenance`, `ReadyToShutDown`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Created => "Created",
            MemberStatus::Initialized => "Initialized",
            MemberStatus::Starting => "Starting",
            MemberStatus::Active => "Active",
            MemberStatus::InMaintenance => "In_Maintenance",
            MemberStatus::ReadyToShutdown => "ReadyToShutDown",
            MemberStatus::Terminated => "Terminated",
        }
    }
}

/// A cluster instance's, group instance's or application instance's status (§5.2, §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum InstanceStatus {
    /// Created; not yet at its minimum.
    Created,
    /// At or above its minimum (all children active).
    Active,
    /// Below its minimum after having been active.
    Inactive,
    /// Being terminated.
    Terminating,
    /// Gone.
    Terminated,
}

impl InstanceStatus {
    /// Whether `self → next` is allowed.
    pub fn can_become(self, next: InstanceStatus) -> bool {
        use InstanceStatus::*;
        self == next
            || matches!(
                (self, next),
                (Created, Active)
                    | (Created, Terminating)
                    | (Active, Inactive)
                    | (Active, Terminating)
                    | (Inactive, Active)
                    | (Inactive, Terminating)
                    | (Terminating, Terminated)
                    | (Terminating, Created)
            )
    }
}

/// A port of one member: the real port its workload listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberPort {
    /// Name of the cluster port.
    pub name: String,
    /// Protocol.
    pub protocol: String,
    /// The port the member listens on.
    pub port: u16,
    /// The load balancer's port in front of it.
    pub proxy_port: Option<u16>,
}

impl MemberPort {
    /// A cluster's port as one member listens on it, on `port`.
    pub fn of(cluster_port: &ClusterPort, port: u16) -> MemberPort {
        MemberPort {
            name: cluster_port.name.clone(),
            protocol: cluster_port.protocol.clone(),
            port,
            proxy_port: cluster_port.proxy_port,
        }
    }
}

/// One instance of a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Unique id (`<clusterId>-<n>`).
    pub member_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Its cluster instance.
    pub cluster_instance_id: String,
    /// Cartridge type.
    pub service_name: String,
    /// Application.
    pub application_id: String,
    /// Network partition.
    pub network_partition_id: String,
    /// Partition.
    pub partition_id: String,
    /// Lifecycle status.
    pub status: MemberStatus,
    /// Address the workload listens on.
    pub default_private_ip: Option<String>,
    /// Public address.
    pub default_public_ip: Option<String>,
    /// Ports.
    pub ports: Vec<MemberPort>,
    /// Creation time, milliseconds since the epoch.
    pub init_time: u64,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Free-form properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// One instance of a cluster (one per application instance, i.e. per network partition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInstance {
    /// Id (the parent application or group instance's id).
    pub instance_id: String,
    /// Network partition.
    pub network_partition_id: String,
    /// Status.
    pub status: InstanceStatus,
    /// Minimum members.
    pub min_members: u32,
    /// Maximum members.
    pub max_members: u32,
}

/// A cluster: the members of one cartridge alias of one application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// `<appId>.<alias>.<type>.domain`.
    pub cluster_id: String,
    /// Cartridge type.
    pub service_name: String,
    /// Application.
    pub application_id: String,
    /// Alias in the application.
    pub alias: String,
    /// Host names routed to it (`<app>.<alias>.<host>`).
    pub host_names: Vec<String>,
    /// Owning tenant.
    pub tenant_id: i64,
    /// Ports.
    pub ports: Vec<ClusterPort>,
    /// Deployment policy.
    pub deployment_policy: String,
    /// Autoscaling policy.
    pub autoscaling_policy: String,
    /// Instances by id.
    pub instances: BTreeMap<String, ClusterInstance>,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
}

impl Cluster {
    /// Members in `status`.
    pub fn members_in(&self, status: MemberStatus) -> impl Iterator<Item = &Member> {
        self.members.values().filter(move |m| m.status == status)
    }
}

/// The whole topology.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Clusters by id.
    pub clusters: BTreeMap<String, Cluster>,
    /// Tenants whose applications get no traffic (deactivated tenants: their members keep
    /// running, the load balancers route nothing to them).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub suspended_tenants: BTreeSet<i64>,
    /// Tenants' domains mapped onto clusters (their signups' domain mappings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain_routes: Vec<DomainRoute>,
    /// Tenants signed up to multi-tenant applications (their `t/<tenant-domain>/` paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenant_signups: Vec<TenantSignup>,
}

/// A tenant signed up to a multi-tenant application: requests for `/t/<tenant-domain>/…` on the
/// application's own host names are its, and the members are told so.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSignup {
    /// The application's runtime id.
    pub application_id: String,
    /// The tenant.
    pub tenant_id: i64,
    /// Its domain.
    pub tenant_domain: String,
}

/// A tenant's domain mapped onto a cluster of an application: the load balancers route it to
/// the cluster's members and tell them the tenant (`X-Tenant-Domain`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainRoute {
    /// The domain name.
    pub domain: String,
    /// The context path (`/`: the whole domain).
    pub context_path: String,
    /// The application's runtime id.
    pub application_id: String,
    /// The cluster's alias in it.
    pub alias: String,
    /// The tenant that mapped it.
    pub tenant_id: i64,
    /// Its domain (what the members are told).
    pub tenant_domain: String,
    /// Plain HTTP requests for the domain are redirected to HTTPS (on the same proxy port).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_https: bool,
    /// ACME HTTP-01 challenges the load balancers answer for the domain: token → key
    /// authorization (public: a CA reads it over plain HTTP).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub acme_challenges: std::collections::BTreeMap<String, String>,
}

/// A domain's certificate for the load balancers, with its private key (only ever sent sealed:
/// [`crate::Category::Tls`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsCertificate {
    /// The domain name (a tenant's mapped domain).
    pub domain: String,
    /// The certificate chain, PEM, the domain's certificate first.
    pub certificate: String,
    /// Its private key, PEM.
    pub private_key: String,
}

impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("domain", &self.domain)
            .field("private_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// Whether the load balancers route to this cluster (its tenant is not suspended).
    pub fn routed(&self, cluster: &Cluster) -> bool {
        !self.suspended_tenants.contains(&cluster.tenant_id)
    }
}

impl Topology {
    /// The cluster serving `host`.
    pub fn cluster_for_host(&self, host: &str) -> Option<&Cluster> {
        self.clusters
            .values()
            .find(|c| c.host_names.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }

    /// A member by id.
    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.clusters
            .values()
            .find_map(|c| c.members.get(member_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lifecycle_follows_stratos() {
        use MemberStatus::*;
        let path = [
            Created,
            Initialized,
            Starting,
            Active,
            InMaintenance,
            ReadyToShutdown,
            Terminated,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_become(w[1]), "{:?} -> {:?}", w[0], w[1]);
        }
        assert!(!Created.can_become(Active));
        assert!(!Active.can_become(Created));
        assert!(!Terminated.can_become(Active));
        assert!(Starting.can_become(Terminated));
        assert!(Active.can_become(Starting));
        assert_eq!(
            serde_json::to_string(&InMaintenance).unwrap(),
            "\"In_Maintenance\""
        );
    }

    #[test]
    fn instance_lifecycle() {
        use InstanceStatus::*;
        assert!(Created.can_become(Active));
        assert!(Active.can_become(Inactive) && Inactive.can_become(Active));
        assert!(Terminating.can_become(Terminated));
        assert!(!Terminated.can_become(Active));
        assert!(!Created.can_become(Terminated));
    }
}

/// A cluster instance's key: its cluster and its instance. Where a string is needed (the keys of
/// a JSON object) it is written `cluster|instance`; ids never hold a `|`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    /// Cluster.
    pub cluster_id: String,
    /// Cluster instance.
    pub instance_id: String,
}

impl InstanceKey {
    /// The key of instance `instance_id` of cluster `cluster_id`.
    pub fn new(cluster_id: &str, instance_id: &str) -> Self {
        InstanceKey {
            cluster_id: cluster_id.to_owned(),
            instance_id: instance_id.to_owned(),
        }
    }
}

impl std::fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}|{}", self.cluster_id, self.instance_id)
    }
}

impl Serialize for InstanceKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InstanceKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (cluster_id, instance_id) = s
            .split_once('|')
            .ok_or_else(|| serde::de::Error::custom("expected `cluster|instance`"))?;
        Ok(InstanceKey::new(cluster_id, instance_id))
    }
}
