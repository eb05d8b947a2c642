//! The runtime view of an application (`stratos.md` §6.12): application instances → group
//! instances → cluster instances → members, with statuses, addresses, ports and access URLs.

use serde_json::{Value, json};

use crate::state::{ControllerState, Deployment};
use nubo_plan::DeploymentStatus;
use nubo_plan::group_instance_id;

fn cluster_instance_view(
    state: &ControllerState,
    cluster_id: &str,
    instance_id: &str,
) -> Option<Value> {
    let c = state.topology.clusters.get(cluster_id)?;
    let inst = c.instances.get(instance_id);
    let backoff = state
        .deployments
        .get(&c.application_id)
        .and_then(|d| d.backoff.get(&format!("{cluster_id}|{instance_id}")));
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
    let members: Vec<Value> = c
        .members
        .values()
        .filter(|m| m.cluster_instance_id == instance_id)
        .map(|m| {
            json!({
                "memberId": m.member_id,
                "status": m.status.as_str(),
                "defaultPrivateIP": m.default_private_ip,
                "defaultPublicIP": m.default_public_ip,
                "networkPartitionId": m.network_partition_id,
                "partitionId": m.partition_id,
                "ports": m.ports,
                "failure": m.failure,
            })
        })
        .collect();
    Some(json!({
        "alias": c.alias,
        "serviceName": c.service_name,
        "clusterId": c.cluster_id,
        "instanceId": instance_id,
        "status": inst.map(|i| format!("{:?}", i.status)).unwrap_or_else(|| "Waiting".into()),
        "minMembers": inst.map(|i| i.min_members),
        "maxMembers": inst.map(|i| i.max_members),
        "hostNames": c.host_names,
        "accessUrls": access_urls,
        "member": members,
        "lastFailure": backoff.and_then(|b| b.last_reason.clone()),
        "failuresInARow": backoff.map(|b| b.failures),
    }))
}

/// The clusters directly at `path` and the group instances below it, inside instance `instance`.
fn level(
    state: &ControllerState,
    d: &Deployment,
    path: &[String],
    instance: &str,
) -> (Vec<Value>, Vec<Value>) {
    let clusters: Vec<Value> = d
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
            let statuses: Vec<&Value> = clusters
                .iter()
                .chain(children.iter())
                .map(|v| &v["status"])
                .collect();
            let status = if statuses.iter().all(|s| *s == "Active") {
                "Active"
            } else if statuses
                .iter()
                .any(|s| *s == "Inactive" || *s == "Terminating")
            {
                "Inactive"
            } else {
                "Created"
            };
            groups.push(json!({
                "groupId": alias,
                "instanceId": id,
                "parentInstanceId": instance,
                "status": status,
                "clusterInstances": clusters,
                "groupInstances": children,
            }));
        }
    }
    (clusters, groups)
}

/// The runtime tree of `application_id`, or `None` when it is not deployed.
pub fn runtime_view(state: &ControllerState, application_id: &str) -> Option<Value> {
    let d = state.deployments.get(application_id)?;
    let instances: Vec<Value> = d
        .instances
        .iter()
        .map(|inst| {
            let (clusters, groups) = level(state, d, &[], &inst.instance_id);
            json!({
                "instanceId": inst.instance_id,
                "networkPartitionId": inst.network_partition_id,
                "status": format!("{:?}", inst.status),
                "clusterInstances": clusters,
                "groupInstances": groups,
            })
        })
        .collect();
    Some(json!({
        "id": application_id,
        "status": match d.status { DeploymentStatus::Deployed => "Deployed", DeploymentStatus::Undeploying => "Undeploying" },
        "applicationPolicy": d.plan.application_policy,
        "applicationInstances": instances,
    }))
}
