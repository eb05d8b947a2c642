//! The runtime view of an application (`stratos.md` §6.12): application instances → group
//! instances → cluster instances → members, with statuses, addresses, ports and access URLs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::state::{ControllerState, DeploymentStatus};

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

/// The runtime tree of `application_id`, or `None` when it is not deployed.
pub fn runtime_view(state: &ControllerState, application_id: &str) -> Option<Value> {
    let d = state.deployments.get(application_id)?;
    let instances: Vec<Value> = d
        .instances
        .iter()
        .map(|inst| {
            // Groups nest by the clusters' group paths.
            let mut groups: BTreeMap<Vec<String>, Vec<Value>> = BTreeMap::new();
            let mut top = Vec::new();
            for c in &d.plan.clusters {
                let Some(v) = cluster_instance_view(state, &c.cluster_id, &inst.instance_id) else { continue };
                if c.group_path.is_empty() {
                    top.push(v);
                } else {
                    groups.entry(c.group_path.clone()).or_default().push(v);
                }
            }
            let mut paths: Vec<Vec<String>> = groups.keys().cloned().collect();
            for p in groups.keys() {
                for n in 1..p.len() {
                    paths.push(p[..n].to_vec());
                }
            }
            paths.sort();
            paths.dedup();
            fn build(prefix: &[String], paths: &[Vec<String>], groups: &BTreeMap<Vec<String>, Vec<Value>>, instance: &str) -> Vec<Value> {
                paths
                    .iter()
                    .filter(|p| p.len() == prefix.len() + 1 && p.starts_with(prefix))
                    .map(|p| {
                        let clusters = groups.get(p).cloned().unwrap_or_default();
                        let all_active = clusters.iter().all(|c| c["status"] == "Active");
                        let children = build(p, paths, groups, instance);
                        let children_active = children.iter().all(|c| c["status"] == "Active");
                        json!({
                            "groupId": p.last(),
                            "instanceId": format!("{}-{}", p.last().map(String::as_str).unwrap_or(""), instance.rsplit('-').next().unwrap_or("1")),
                            "parentInstanceId": instance,
                            "status": if all_active && children_active { "Active" } else { "Created" },
                            "clusterInstances": clusters,
                            "groupInstances": children,
                        })
                    })
                    .collect()
            }
            json!({
                "instanceId": inst.instance_id,
                "networkPartitionId": inst.network_partition_id,
                "status": format!("{:?}", inst.status),
                "clusterInstances": top,
                "groupInstances": build(&[], &paths, &groups, &inst.instance_id),
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
