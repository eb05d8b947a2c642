//! Scaling: the autoscaler's requests (scale to, scale down, faults, members proven active),
//! group instances beyond a cluster's maximum, bursting, and scaling group and burst instances in.

use super::*;

impl ControllerState {
    /// A request of the autoscaler.
    pub(super) fn scale(&mut self, now_ms: u64, command: ScaleCommand, out: &mut Vec<Action>) {
        match command {
            ScaleCommand::ScaleTo {
                cluster_id,
                instance_id,
                count,
            } => self.scale_to(&cluster_id, &instance_id, count, out),
            ScaleCommand::ScaleDown {
                cluster_id,
                instance_id,
                member_id,
            } => self.scale_down(now_ms, &cluster_id, &instance_id, member_id.as_deref(), out),
            ScaleCommand::MemberFault { member_id, reason } => {
                let active = self
                    .member_mut(&member_id)
                    .filter(|m| m.status == MemberStatus::Active && m.failure.is_none())
                    .map(|m| m.failure = Some(format!("member fault: {reason}")))
                    .is_some();
                if active {
                    tracing::warn!(member = %member_id, %reason, "member fault: replacing it");
                    if let Some(provider) = self.provider_of(&member_id) {
                        out.push(Action::Terminate {
                            member_id,
                            provider,
                        });
                    }
                }
            }
            ScaleCommand::MemberActive { instance } => {
                self.event(now_ms, Event::InstanceActivated(instance), out)
            }
            ScaleCommand::BeyondMax {
                cluster_id,
                instance_id,
            } => self.beyond_max(&cluster_id, &instance_id, out),
            ScaleCommand::ScaleIn {
                application_id,
                instance_id,
            } => self.scale_in(now_ms, &application_id, &instance_id, out),
            ScaleCommand::GroupInstances {
                application_id,
                parent_instance_id,
                group_path,
                count,
            } => self.group_instances(
                now_ms,
                &application_id,
                &parent_instance_id,
                &group_path,
                count,
                out,
            ),
        }
    }

    /// A group in a scaling-dependent list: one group instance more or fewer inside `parent`,
    /// towards `count` within the group's bounds (one at a time, nothing while one is pending).
    pub(super) fn group_instances(
        &mut self,
        now_ms: u64,
        app_id: &str,
        parent: &str,
        path: &[String],
        count: u32,
        out: &mut Vec<Action>,
    ) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        let (Some(scope), Some(alias)) = (d.plan.scope(path), path.last()) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed {
            return;
        }
        let target = count.clamp(scope.min_instances, scope.max_instances);
        let mut numbers = d.group_numbers(parent, path);
        let current = numbers.len() as u32;
        if target > current {
            if self.group_pending(d, path, parent) {
                return;
            }
            let n = d
                .next_group_instance
                .max(numbers.iter().copied().max().unwrap_or(1) + 1)
                .max(scope.min_instances + 1);
            numbers.push(n);
            let alias = alias.clone();
            tracing::info!(application = app_id, group = %alias, instance = %group_instance_id(parent, &alias, n), "dependent scaling: a new group instance");
            if let Some(d) = self.deployments.get_mut(app_id) {
                d.next_group_instance = n + 1;
                d.group_instances.insert(group_key(parent, path), numbers);
            }
            out.push(Action::Persist);
        } else if target < current
            && let Some(n) = numbers.iter().copied().filter(|n| *n > 1).max()
        {
            let id = group_instance_id(parent, alias, n);
            tracing::info!(application = app_id, instance = %id, "dependent scaling: a group instance scaled in");
            self.scale_in(now_ms, app_id, &id, out);
        }
    }

    pub(super) fn scale_to(
        &mut self,
        cluster_id: &str,
        instance_id: &str,
        count: u32,
        out: &mut Vec<Action>,
    ) {
        let Some((app, plan)) = self.cluster_plan(cluster_id) else {
            return;
        };
        let Some(d) = self.deployments.get_mut(&app) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed {
            return;
        }
        let target = count.clamp(plan.min, plan.max.max(plan.min));
        d.desired
            .insert(InstanceKey::new(cluster_id, instance_id), target);
        tracing::info!(
            cluster = cluster_id,
            instance = instance_id,
            members = target,
            "scaling"
        );
        out.push(Action::Persist);
    }

    pub(super) fn scale_down(
        &mut self,
        now_ms: u64,
        cluster_id: &str,
        instance_id: &str,
        member_id: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        let Some((app, plan)) = self.cluster_plan(cluster_id) else {
            return;
        };
        let Some(cluster) = self.topology.clusters.get(cluster_id) else {
            return;
        };
        let live: Vec<&Member> = cluster
            .members
            .values()
            .filter(|m| {
                m.cluster_instance_id == instance_id && m.status.is_live() && m.failure.is_none()
            })
            .collect();
        if live.len() as u32 <= plan.min {
            return;
        }
        // The partition algorithm chooses the partition; the newest member there goes.
        let from = victim_partition(&plan, live.iter().copied());
        let victim = match member_id {
            Some(id) => live.iter().find(|m| m.member_id == id).copied(),
            None => live
                .iter()
                .filter(|m| from.as_ref().is_none_or(|p| &m.partition_id == p))
                .max_by_key(|m| (m.init_time, m.member_id.clone()))
                .copied(),
        };
        let Some(victim) = victim.cloned() else {
            return;
        };
        let remaining = live.len() as u32 - 1;
        if let Some(d) = self.deployments.get_mut(&app) {
            d.desired.insert(
                InstanceKey::new(cluster_id, instance_id),
                remaining.max(plan.min),
            );
        }
        if let Some(m) = self.member_mut(&victim.member_id) {
            m.failure = Some(SCALED_DOWN.into());
        }
        tracing::info!(cluster = cluster_id, instance = instance_id, member = %victim.member_id, "scaling down");
        self.retire(now_ms, &victim, false, out);
        out.push(Action::Persist);
    }

    /// A cluster instance is full and needs more (§7.8): group scaling, innermost group first,
    /// else application bursting; one new instance at a time (nothing while one is pending).
    pub(super) fn beyond_max(
        &mut self,
        cluster_id: &str,
        instance_id: &str,
        out: &mut Vec<Action>,
    ) {
        let Some((app, plan)) = self.cluster_plan(cluster_id) else {
            return;
        };
        let Some(d) = self.deployments.get(&app) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed {
            return;
        }
        for depth in (1..=plan.group_path.len()).rev() {
            let path = &plan.group_path[..depth];
            let Some(scope) = d.plan.scope(path) else {
                continue;
            };
            let parent = scope_instance(instance_id, &plan.group_path, depth - 1);
            if self.group_pending(d, path, &parent) {
                return;
            }
            let mut numbers = d.group_numbers(&parent, path);
            if numbers.len() as u32 >= scope.max_instances {
                continue;
            }
            let n = d
                .next_group_instance
                .max(numbers.iter().copied().max().unwrap_or(1) + 1)
                .max(scope.min_instances + 1);
            numbers.push(n);
            let alias = path[depth - 1].clone();
            let id = group_instance_id(&parent, &alias, n);
            tracing::info!(application = %app, group = %alias, instance = %id, "group scaling: a new group instance");
            if let Some(d) = self.deployments.get_mut(&app) {
                d.next_group_instance = n + 1;
                d.group_instances.insert(group_key(&parent, path), numbers);
            }
            // Its `Created` event comes with the group lifecycle (`update_group_instances`).
            out.push(Action::Persist);
            return;
        }
        let pending = d
            .instances
            .iter()
            .any(|i| i.status != InstanceStatus::Active)
            || d.plan.clusters.iter().any(|c| {
                d.slots(c)
                    .iter()
                    .any(|(id, _, _)| !self.instance_active(&c.cluster_id, id))
            });
        if pending {
            return;
        }
        let Some(group) = d.plan.burst_groups.get(d.burst_level).cloned() else {
            tracing::debug!(application = %app, "at the maximum everywhere: no network partition left to burst into");
            return;
        };
        let Some(d) = self.deployments.get_mut(&app) else {
            return;
        };
        let level = d.burst_level;
        d.burst_level += 1;
        for np in group {
            d.next_instance = d.next_instance.max(d.instances.len() as u32) + 1;
            let id = format!("{app}-{}", d.next_instance);
            tracing::info!(application = %app, instance = %id, network_partition = %np, "bursting into the next network partition");
            d.instances.push(AppInstance {
                instance_id: id.clone(),
                network_partition_id: np,
                status: InstanceStatus::Created,
                burst_group: Some(level),
            });
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app.clone(),
                instance_id: id,
                group_alias: None,
                status: InstanceStatus::Created,
            }));
        }
        out.push(Action::Persist);
    }

    /// Whether a group instance of `path` inside `parent` is not yet Active.
    pub(super) fn group_pending(&self, d: &Deployment, path: &[String], parent: &str) -> bool {
        let depth = path.len() - 1;
        d.plan
            .clusters
            .iter()
            .filter(|c| c.group_path.starts_with(path))
            .any(|c| {
                d.slots(c).into_iter().any(|(id, _, _)| {
                    scope_instance(&id, &c.group_path, depth) == parent
                        && !self.instance_active(&c.cluster_id, &id)
                })
            })
    }

    /// Terminates a group instance above its group's minimum, or an application instance opened
    /// by bursting (the newest burst group first).
    pub(super) fn scale_in(
        &mut self,
        now_ms: u64,
        app_id: &str,
        instance_id: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(d) = self.deployments.get_mut(app_id) else {
            return;
        };
        if d.status != DeploymentStatus::Deployed {
            return;
        }
        let newest = d.burst_level.checked_sub(1);
        let reason;
        if let Some(ai) = d
            .instances
            .iter_mut()
            .find(|i| i.instance_id == instance_id)
        {
            if ai.burst_group.is_none()
                || ai.burst_group != newest
                || ai.status != InstanceStatus::Active
            {
                return;
            }
            ai.status = InstanceStatus::Terminating;
            tracing::info!(
                application = app_id,
                instance = instance_id,
                "load fell: closing a burst application instance"
            );
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.to_owned(),
                instance_id: instance_id.to_owned(),
                group_alias: None,
                status: InstanceStatus::Terminating,
            }));
            reason = "scaled in: burst application instance closed";
        } else {
            let Some((parent, last)) = instance_id.rsplit_once('.') else {
                return;
            };
            let Some((alias, n)) = last.rsplit_once('-') else {
                return;
            };
            let Ok(n) = n.parse::<u32>() else {
                return;
            };
            let Some(scope) = d
                .plan
                .scopes
                .iter()
                .find(|s| s.path.last().map(String::as_str) == Some(alias))
                .cloned()
            else {
                return;
            };
            let mut numbers = d.group_numbers(parent, &scope.path);
            if numbers.len() as u32 <= scope.min_instances || !numbers.contains(&n) {
                return;
            }
            numbers.retain(|x| *x != n);
            d.group_instances
                .insert(group_key(parent, &scope.path), numbers);
            tracing::info!(
                application = app_id,
                instance = instance_id,
                "load fell: group instance scaled in"
            );
            // Its `Terminating`, then `Terminated`, come with the group lifecycle.
            reason = "scaled in: group instance removed";
        }
        let prefix = format!("{instance_id}.");
        let victims: Vec<(String, String)> = d
            .cluster_ids()
            .into_iter()
            .filter_map(|c| self.topology.clusters.get(&c))
            .flat_map(|c| {
                c.instances
                    .keys()
                    .filter(|k| *k == instance_id || k.starts_with(&prefix))
                    .map(|k| (c.cluster_id.clone(), k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (c, i) in victims {
            self.terminate_cluster_instance(now_ms, &c, &i, reason, out);
        }
        out.push(Action::Persist);
    }
}
