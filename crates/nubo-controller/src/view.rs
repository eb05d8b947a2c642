//! Builds the runtime view of an application (`nubo_events::view`, Stratos' §6.12) from the
//! controller's state: application instances → group instances → cluster instances → members,
//! with statuses, addresses, ports and access URLs.

use nubo_events::view::{
    ApplicationInstanceView, ApplicationRuntime, ClusterInstanceState, ClusterInstanceView,
    GroupInstanceView, MemberPage, MemberRow, MemberView,
};
use nubo_events::{InstanceKey, InstanceStatus};
use nubo_plan::group_instance_id;

use crate::state::{ControllerState, Deployment};

fn cluster_instance_view(
    state: &ControllerState,
    cluster_id: &str,
    instance_id: &str,
) -> Option<ClusterInstanceView> {
    let c = state.topology.clusters.get(cluster_id)?;
    let inst = c.instances.get(instance_id);
    let backoff = state
        .deployments
        .get(&c.application_id)
        .and_then(|d| d.backoff.get(&InstanceKey::new(cluster_id, instance_id)));
    let access_urls: Vec<String> = c
        .ports
        .iter()
        .filter_map(|p| p.proxy_port.map(|px| (p, px)))
        .flat_map(|(p, px)| {
            c.host_names
                .iter()
                .map(move |h| format!("{}://{h}:{px}", p.protocol))
        })
        .collect();
    let member = c
        .members
        .values()
        .filter(|m| m.cluster_instance_id == instance_id)
        .map(member_view)
        .collect();
    Some(ClusterInstanceView {
        alias: c.alias.clone(),
        service_name: c.service_name.clone(),
        cluster_id: c.cluster_id.clone(),
        instance_id: instance_id.to_owned(),
        status: inst.map_or(ClusterInstanceState::Waiting, |i| i.status.into()),
        min_members: inst.map(|i| i.min_members),
        max_members: inst.map(|i| i.max_members),
        host_names: c.host_names.clone(),
        access_urls,
        member,
        last_failure: backoff.and_then(|b| b.last_reason.clone()),
        failures_in_a_row: backoff.map(|b| b.failures),
    })
}

/// The clusters directly at `path` and the group instances below it, inside instance `instance`.
fn level(
    state: &ControllerState,
    d: &Deployment,
    path: &[String],
    instance: &str,
) -> (Vec<ClusterInstanceView>, Vec<GroupInstanceView>) {
    let clusters: Vec<ClusterInstanceView> = d
        .plan
        .clusters
        .iter()
        .filter(|c| c.group_path == path)
        .filter_map(|c| cluster_instance_view(state, &c.cluster_id, instance))
        .collect();
    let mut aliases: Vec<&String> = Vec::new();
    for c in &d.plan.clusters {
        if c.group_path.len() > path.len()
            && c.group_path.starts_with(path)
            && !aliases.contains(&&c.group_path[path.len()])
        {
            aliases.push(&c.group_path[path.len()]);
        }
    }
    let mut groups = Vec::new();
    for alias in aliases {
        let mut child = path.to_vec();
        child.push(alias.clone());
        for n in d.group_numbers(instance, &child) {
            let id = group_instance_id(instance, alias, n);
            let (clusters, children) = level(state, d, &child, &id);
            let statuses: Vec<ClusterInstanceState> = clusters
                .iter()
                .map(|c| c.status)
                .chain(children.iter().map(|g| g.status.into()))
                .collect();
            let derived = if statuses.iter().all(|s| *s == ClusterInstanceState::Active) {
                InstanceStatus::Active
            } else if statuses.iter().any(|s| {
                matches!(
                    s,
                    ClusterInstanceState::Inactive | ClusterInstanceState::Terminating
                )
            }) {
                InstanceStatus::Inactive
            } else {
                InstanceStatus::Created
            };
            // The group lifecycle's status, once the controller has recorded one.
            let status = d
                .group_status
                .get(&crate::state::group_status_key(&child, &id))
                .copied()
                .unwrap_or(derived);
            groups.push(GroupInstanceView {
                group_id: alias.clone(),
                instance_id: id.clone(),
                parent_instance_id: instance.to_owned(),
                status,
                cluster_instances: clusters,
                group_instances: children,
            });
        }
    }
    (clusters, groups)
}

/// A page of the members of `application_id` (clusters in the plan's order, members by id), or
/// `None` when it is not deployed. Costs the page and the members skipped, nothing else.
pub fn member_page(
    state: &ControllerState,
    application_id: &str,
    offset: usize,
    limit: usize,
) -> Option<MemberPage> {
    let d = state.deployments.get(application_id)?;
    let clusters: Vec<&nubo_events::Cluster> = d
        .plan
        .clusters
        .iter()
        .filter_map(|c| state.topology.clusters.get(&c.cluster_id))
        .collect();
    let total = clusters.iter().map(|c| c.members.len()).sum();
    let members = clusters
        .iter()
        .flat_map(|c| c.members.values().map(move |m| (*c, m)))
        .skip(offset)
        .take(limit)
        .map(|(c, m)| MemberRow {
            application_id: application_id.to_owned(),
            alias: c.alias.clone(),
            cluster_instance_id: m.cluster_instance_id.clone(),
            member: member_view(m),
        })
        .collect();
    Some(MemberPage {
        total,
        offset,
        members,
    })
}

fn member_view(m: &nubo_events::Member) -> MemberView {
    MemberView {
        member_id: m.member_id.clone(),
        status: m.status,
        default_private_ip: m.default_private_ip.clone(),
        default_public_ip: m.default_public_ip.clone(),
        network_partition_id: m.network_partition_id.clone(),
        partition_id: m.partition_id.clone(),
        ports: m.ports.clone(),
        failure: m.failure.clone(),
        artifact_commit: m.properties.get(crate::state::COMMIT_PROPERTY).cloned(),
        artifact_error: m
            .properties
            .get(crate::state::ARTIFACT_ERROR_PROPERTY)
            .cloned(),
        unhealthy: m.properties.get(crate::state::UNHEALTHY_PROPERTY).cloned(),
        init_time: m.init_time,
    }
}

/// The runtime tree of `application_id`, or `None` when it is not deployed.
pub fn runtime_view(state: &ControllerState, application_id: &str) -> Option<ApplicationRuntime> {
    let d = state.deployments.get(application_id)?;
    let application_instances = d
        .instances
        .iter()
        .map(|inst| {
            let (cluster_instances, group_instances) = level(state, d, &[], &inst.instance_id);
            ApplicationInstanceView {
                instance_id: inst.instance_id.clone(),
                network_partition_id: inst.network_partition_id.clone(),
                status: inst.status,
                cluster_instances,
                group_instances,
            }
        })
        .collect();
    Some(ApplicationRuntime {
        id: application_id.to_owned(),
        name: None,
        description: None,
        status: d.application_status(),
        deployment_status: d.status,
        application_policy: d.plan.application_policy.clone(),
        application_instances,
    })
}
