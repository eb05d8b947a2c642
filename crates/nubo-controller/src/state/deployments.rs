//! Deployments: deploying a plan (clusters, instances, members in startup order), undeploying
//! (graceful or forced), taking members out, and plans changed while running.

use super::*;

impl ControllerState {
    pub(super) fn deploy(&mut self, plan: DeploymentPlan, out: &mut Vec<Action>) {
        let app_id = plan.application_id.clone();
        if self.deployments.contains_key(&app_id) {
            return;
        }
        if let Some(host) = self.host_conflict(&plan) {
            // Refused before (ControlError::HostTaken); two deploys racing end here.
            tracing::warn!(application = %app_id, host, "deploy refused: another application has this host name");
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
                group_status: BTreeMap::new(),
                rollouts: BTreeMap::new(),
                failing_partitions: BTreeMap::new(),
            },
        );
        out.push(Action::ApplicationStatus {
            application_id: app_id,
            status: "Deployed".into(),
        });
        out.push(Action::Persist);
    }

    pub(super) fn undeploy(
        &mut self,
        now_ms: u64,
        app_id: &str,
        force: bool,
        out: &mut Vec<Action>,
    ) {
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
            for (key, status) in d.group_status.iter_mut() {
                if *status != InstanceStatus::Terminating {
                    *status = InstanceStatus::Terminating;
                    out.push(group_event(app_id, key, InstanceStatus::Terminating));
                }
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
    pub(super) fn retire(&mut self, now_ms: u64, m: &Member, force: bool, out: &mut Vec<Action>) {
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

    /// Applies a new plan to a running deployment: thresholds, minimum and maximum members
    /// (cluster instances follow; converge then starts or drains members), placement, group
    /// bounds, burst groups. Ignored when the clusters differ (that needs a redeployment).
    pub(super) fn update_plan(&mut self, plan: DeploymentPlan, out: &mut Vec<Action>) {
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

    pub(super) fn finish_undeploy(&mut self, app_id: &str, out: &mut Vec<Action>) {
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
            for key in d.group_status.keys() {
                out.push(group_event(app_id, key, InstanceStatus::Terminated));
            }
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
}

/// The event of a group instance's new status, from its [`group_status_key`].
pub(super) fn group_event(app_id: &str, key: &str, status: InstanceStatus) -> Action {
    let (path, id) = key.split_once('|').unwrap_or(("", key));
    Action::Publish(Event::ApplicationInstanceStatusChanged {
        application_id: app_id.to_owned(),
        instance_id: id.to_owned(),
        group_alias: Some(path.rsplit('/').next().unwrap_or(path).to_owned()),
        status,
    })
}
