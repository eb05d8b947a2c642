//! The runtime view of a deployed application (Stratos' `ApplicationInstanceBean` tree, §6.12 of
//! the reference): application instances → group instances → cluster instances → members, with
//! statuses, addresses, ports and access URLs. The controller builds it, the API serves it, the
//! CLI reads it: one set of types for all three.

use serde::{Deserialize, Serialize};

use crate::DeploymentStatus;
use crate::topology::{InstanceStatus, MemberPort, MemberStatus};

/// `GET /api/applications/{id}/runtime`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRuntime {
    /// Application.
    pub id: String,
    /// The application's name (from its definition).
    #[serde(default)]
    pub name: Option<String>,
    /// The application's description (from its definition).
    #[serde(default)]
    pub description: Option<String>,
    /// The application's status in the topology, as Stratos gives it: `Created` until it is
    /// Active, `Active` while its application instances are, `Inactive` when one of them is
    /// (a cluster below its minimum), `Terminating` while it is undeployed.
    pub status: InstanceStatus,
    /// The deployment's status (Nubo's): `Deployed`, or `Undeploying`.
    pub deployment_status: DeploymentStatus,
    /// The application policy it was deployed with.
    pub application_policy: String,
    /// Its application instances.
    pub application_instances: Vec<ApplicationInstanceView>,
}

/// One application instance (one per network partition, plus burst instances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationInstanceView {
    /// `<appId>-<n>`.
    pub instance_id: String,
    /// Its network partition.
    pub network_partition_id: String,
    /// Its status.
    pub status: InstanceStatus,
    /// The clusters at the application's level.
    pub cluster_instances: Vec<ClusterInstanceView>,
    /// The group instances at the application's level.
    pub group_instances: Vec<GroupInstanceView>,
}

/// One instance of a cartridge group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupInstanceView {
    /// The group's alias.
    pub group_id: String,
    /// `<parent>.<alias>-<n>`.
    pub instance_id: String,
    /// The instance it belongs to.
    pub parent_instance_id: String,
    /// Active when every child is, Inactive when one is Inactive or Terminating, else Created.
    pub status: InstanceStatus,
    /// Its clusters.
    pub cluster_instances: Vec<ClusterInstanceView>,
    /// Its nested group instances.
    pub group_instances: Vec<GroupInstanceView>,
}

/// A cluster instance's status in the view: `Waiting` until the controller creates it (its
/// startup dependencies are not Active yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterInstanceState {
    /// Not created yet.
    Waiting,
    /// Created; not yet at its minimum.
    Created,
    /// At or above its minimum.
    Active,
    /// Below its minimum after having been active.
    Inactive,
    /// Being terminated.
    Terminating,
    /// Gone.
    Terminated,
}

impl From<InstanceStatus> for ClusterInstanceState {
    fn from(s: InstanceStatus) -> Self {
        match s {
            InstanceStatus::Created => ClusterInstanceState::Created,
            InstanceStatus::Active => ClusterInstanceState::Active,
            InstanceStatus::Inactive => ClusterInstanceState::Inactive,
            InstanceStatus::Terminating => ClusterInstanceState::Terminating,
            InstanceStatus::Terminated => ClusterInstanceState::Terminated,
        }
    }
}

/// One cluster instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInstanceView {
    /// The cartridge's alias in the application.
    pub alias: String,
    /// Cartridge type.
    pub service_name: String,
    /// Cluster.
    pub cluster_id: String,
    /// The application or group instance it belongs to.
    pub instance_id: String,
    /// Its status.
    pub status: ClusterInstanceState,
    /// Its minimum (once created).
    pub min_members: Option<u32>,
    /// Its maximum (once created).
    pub max_members: Option<u32>,
    /// The cluster's host names.
    pub host_names: Vec<String>,
    /// `protocol://host:proxy-port` for each proxied port and host name.
    pub access_urls: Vec<String>,
    /// Its members.
    pub member: Vec<MemberView>,
    /// Why its last member failed before becoming Active.
    pub last_failure: Option<String>,
    /// How many members failed in a row (retried with backoff).
    pub failures_in_a_row: Option<u32>,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    /// Member.
    pub member_id: String,
    /// Its lifecycle status.
    pub status: MemberStatus,
    /// Its private address.
    #[serde(rename = "defaultPrivateIP")]
    pub default_private_ip: Option<String>,
    /// Its public address.
    #[serde(rename = "defaultPublicIP")]
    pub default_public_ip: Option<String>,
    /// Network partition.
    pub network_partition_id: String,
    /// Partition.
    pub partition_id: String,
    /// Its ports.
    pub ports: Vec<MemberPort>,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// The commit of its artifacts' repository it runs, when the cluster has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_commit: Option<String>,
    /// Why its last artifact update failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_error: Option<String>,
    /// Why it is unhealthy (it gets no request until it recovers, or is replaced), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
    /// When it was created, milliseconds since the epoch (Stratos' `initTime`; metering counts
    /// from it).
    #[serde(default)]
    pub init_time: u64,
}

/// A member with where it belongs: a row of `GET /api/applications/{id}/members` and of
/// `nubo members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    /// Application.
    pub application_id: String,
    /// The cluster's alias.
    pub alias: String,
    /// The cluster instance.
    pub cluster_instance_id: String,
    /// The member.
    #[serde(flatten)]
    pub member: MemberView,
}

/// A page of an application's members (`?offset=&limit=`): however many members an application
/// has, a page costs its own size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberPage {
    /// Members of the application in all.
    pub total: usize,
    /// Where this page starts.
    pub offset: usize,
    /// The page (clusters in the application's order, members by id).
    pub members: Vec<MemberRow>,
}

impl ApplicationRuntime {
    /// Every cluster instance of the tree, application level first, then each group's, depth
    /// first.
    pub fn cluster_instances(&self) -> Vec<&ClusterInstanceView> {
        fn groups<'a>(gs: &'a [GroupInstanceView], out: &mut Vec<&'a ClusterInstanceView>) {
            for g in gs {
                out.extend(&g.cluster_instances);
                groups(&g.group_instances, out);
            }
        }
        let mut out = Vec::new();
        for i in &self.application_instances {
            out.extend(&i.cluster_instances);
            groups(&i.group_instances, &mut out);
        }
        out
    }

    /// Every member, with its cluster instance.
    pub fn members(&self) -> Vec<(&ClusterInstanceView, &MemberView)> {
        self.cluster_instances()
            .into_iter()
            .flat_map(|c| c.member.iter().map(move |m| (c, m)))
            .collect()
    }

    /// Every failure reason in the tree: `alias: member failed: reason` for the members, `alias:
    /// reason` for the clusters' last failures.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .members()
            .into_iter()
            .filter_map(|(c, m)| {
                m.failure
                    .as_ref()
                    .map(|f| format!("{}: {} failed: {f}", c.alias, m.member_id))
            })
            .collect();
        out.extend(
            self.cluster_instances()
                .into_iter()
                .filter_map(|c| c.last_failure.as_ref().map(|f| format!("{}: {f}", c.alias))),
        );
        out
    }

    /// Whether every application instance is Active (and there is one).
    pub fn is_active(&self) -> bool {
        !self.application_instances.is_empty()
            && self
                .application_instances
                .iter()
                .all(|i| i.status == InstanceStatus::Active)
    }
}
