//! Convergence: each cluster instance brought towards its goal (minimum members, startup order,
//! statuses), application and group instance statuses, termination behaviours and the restart in
//! startup order.

use super::*;

impl ControllerState {
    /// Brings every deployment towards its goal: minimum members, startup order, statuses,
    /// timeouts, and the end of undeployments.
    /// Brings one deployment towards its goal: its cluster instances (again while they change
    /// status, so that what waits for a cluster that has just become Active starts in the same
    /// step), terminations, application instances; or the end of its undeployment.
    pub(super) fn converge_app(&mut self, now_ms: u64, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get(app_id).cloned() else {
            return;
        };
        match d.status {
            DeploymentStatus::Deployed => {
                for _ in 0..=d.plan.clusters.len() {
                    let before = out.len();
                    for c in &d.plan.clusters {
                        for (instance_id, np, _) in d.slots(c) {
                            if self.converge_cluster(now_ms, &d, &instance_id, &np, c, out) {
                                self.termination_behaviour(
                                    now_ms,
                                    app_id,
                                    &c.cluster_id,
                                    &instance_id,
                                    out,
                                );
                                self.converge_cluster(now_ms, &d, &instance_id, &np, c, out);
                            }
                        }
                    }
                    let changed = out[before..].iter().any(|a| {
                        matches!(
                            a,
                            Action::Publish(Event::ClusterInstanceStatusChanged { .. })
                        )
                    });
                    if !changed {
                        break;
                    }
                }
                self.finish_terminations(app_id, out);
                self.update_app_instances(app_id, out);
                self.advance_rollouts(now_ms, app_id, out);
            }
            DeploymentStatus::Undeploying => self.finish_undeploy(app_id, out),
        }
    }

    /// Brings one cluster instance towards its goal; `true` when it has just become Inactive.
    pub(super) fn converge_cluster(
        &mut self,
        now_ms: u64,
        d: &Deployment,
        instance_id: &str,
        network_partition_id: &str,
        plan: &ClusterPlan,
        out: &mut Vec<Action>,
    ) -> bool {
        let ready = plan.depends_on.iter().all(|dep| {
            let Some(dep_plan) = d.plan.cluster(dep) else {
                return true;
            };
            let common = plan
                .group_path
                .iter()
                .zip(&dep_plan.group_path)
                .take_while(|(a, b)| a == b)
                .count();
            self.instance_active(dep, &scope_instance(instance_id, &plan.group_path, common))
        });
        let Some(cluster) = self.topology.clusters.get_mut(&plan.cluster_id) else {
            return false;
        };
        let inst = AppInstance {
            instance_id: instance_id.to_owned(),
            network_partition_id: network_partition_id.to_owned(),
            status: InstanceStatus::Created,
            burst_group: None,
        };
        if !cluster.instances.contains_key(&inst.instance_id) {
            if !ready {
                return false;
            }
            let ci = ClusterInstance {
                instance_id: inst.instance_id.clone(),
                network_partition_id: inst.network_partition_id.clone(),
                status: InstanceStatus::Created,
                min_members: plan.min,
                max_members: plan.max,
            };
            cluster
                .instances
                .insert(inst.instance_id.clone(), ci.clone());
            out.push(Action::Publish(Event::ClusterInstanceCreated {
                cluster_id: plan.cluster_id.clone(),
                instance: ci,
            }));
            out.push(Action::Persist);
        }
        if cluster.instances.get(&inst.instance_id).is_some_and(|ci| {
            matches!(
                ci.status,
                InstanceStatus::Terminating | InstanceStatus::Terminated
            )
        }) {
            return false;
        }
        // Statuses from the members.
        let active = cluster
            .members
            .values()
            .filter(|m| {
                m.cluster_instance_id == inst.instance_id && m.status == MemberStatus::Active
            })
            .count() as u32;
        let live: Vec<&Member> = cluster
            .members
            .values()
            .filter(|m| m.cluster_instance_id == inst.instance_id && m.status.is_live())
            // An Active member whose agent reported its workload dead is replaced at once, without
            // waiting for its process to exit. (One that failed before becoming Active waits for
            // its exit and the backoff, so that a broken workload is not retried in a tight loop.)
            .filter(|m| !(m.status == MemberStatus::Active && m.failure.is_some()))
            .collect();
        let live_count = live.len() as u32;
        let mut per_partition: BTreeMap<String, u32> = BTreeMap::new();
        for m in &live {
            *per_partition.entry(m.partition_id.clone()).or_default() += 1;
        }
        if let Some(ci) = cluster.instances.get_mut(&inst.instance_id) {
            let next = match ci.status {
                InstanceStatus::Created | InstanceStatus::Inactive if active >= ci.min_members => {
                    Some(InstanceStatus::Active)
                }
                InstanceStatus::Active if active < ci.min_members => Some(InstanceStatus::Inactive),
                _ => None,
            };
            if let Some(next) = next {
                ci.status = next;
                out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
                    cluster_id: plan.cluster_id.clone(),
                    instance_id: inst.instance_id.clone(),
                    status: next,
                }));
                out.push(Action::Persist);
                if next == InstanceStatus::Inactive {
                    return true;
                }
            }
        }
        // Maximum check (a maximum or a partitionMax lowered while running): the newest members
        // above it leave, drained. (Counted first: the members are sorted only when some must go.)
        let placement_caps = plan
            .placements
            .iter()
            .find(|p| p.network_partition_id == inst.network_partition_id);
        let over_a_cap = placement_caps.is_some_and(|p| {
            p.partitions.iter().any(|part| {
                part.max
                    .is_some_and(|cap| per_partition.get(&part.id).copied().unwrap_or(0) > cap)
            })
        });
        if live_count <= plan.max.max(plan.min) && !over_a_cap {
            return self.fill(now_ms, d, &inst, plan, live_count, per_partition, out);
        }
        let mut newest: Vec<&Member> = live.clone();
        newest.sort_by_key(|m| std::cmp::Reverse((m.init_time, m.member_id.clone())));
        let mut excess: Vec<Member> = newest
            .iter()
            .take(live_count.saturating_sub(plan.max.max(plan.min)) as usize)
            .map(|m| (*m).clone())
            .collect();
        if let Some(placement) = plan
            .placements
            .iter()
            .find(|p| p.network_partition_id == inst.network_partition_id)
        {
            for part in &placement.partitions {
                let Some(cap) = part.max else { continue };
                let over = newest
                    .iter()
                    .filter(|m| m.partition_id == part.id)
                    .filter(|m| !excess.iter().any(|e| e.member_id == m.member_id))
                    .count()
                    .saturating_sub(cap as usize);
                let more: Vec<Member> = newest
                    .iter()
                    .filter(|m| m.partition_id == part.id)
                    .filter(|m| !excess.iter().any(|e| e.member_id == m.member_id))
                    .take(over)
                    .map(|m| (*m).clone())
                    .collect();
                excess.extend(more);
            }
        }
        if !excess.is_empty() {
            for m in &excess {
                tracing::info!(member = %m.member_id, cluster = %plan.cluster_id, max = plan.max, "above the maximum: draining a member");
                if let Some(mm) = self.member_mut(&m.member_id) {
                    mm.failure = Some("above the cluster's or partition's maximum".into());
                }
                self.retire(now_ms, m, false, out);
            }
            out.push(Action::Persist);
            return false;
        }
        self.fill(now_ms, d, &inst, plan, live_count, per_partition, out)
    }

    /// Minimum check (and scale-up): starts members up to the desired count, at least the
    /// minimum, placed by the partition algorithm. Always `false` (nothing turned Inactive).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        now_ms: u64,
        d: &Deployment,
        inst: &AppInstance,
        plan: &ClusterPlan,
        live_count: u32,
        mut per_partition: BTreeMap<String, u32>,
        out: &mut Vec<Action>,
    ) -> bool {
        let key = InstanceKey::new(&plan.cluster_id, &inst.instance_id);
        let target = d
            .desired
            .get(&key)
            .copied()
            .unwrap_or(plan.min)
            .clamp(plan.min, plan.max.max(plan.min));
        if live_count >= target {
            return false;
        }
        if d.backoff
            .get(&key)
            .is_some_and(|b| b.not_before_ms > now_ms)
        {
            return false;
        }
        let Some(placement) = plan
            .placements
            .iter()
            .find(|p| p.network_partition_id == inst.network_partition_id)
        else {
            tracing::warn!(cluster = %plan.cluster_id, network_partition = %inst.network_partition_id, "the deployment policy does not cover this network partition");
            return false;
        };
        let Some(image) = plan.images.get(&placement.provider).cloned() else {
            tracing::warn!(cluster = %plan.cluster_id, provider = %placement.provider, "the cartridge has no iaasProvider entry for this provider");
            return false;
        };
        // Partitions whose members keep failing to start are avoided while others remain.
        let failing = |p: &nubo_plan::PlacementPartition| {
            d.failing_partitions
                .get(&partition_key(&inst.network_partition_id, &p.id))
                .is_some_and(|f| {
                    f.in_a_row >= PARTITION_FAILURES
                        && now_ms.saturating_sub(f.last_ms) < PARTITION_AVOID_MS
                })
        };
        let healthy;
        let placement = if placement.partitions.iter().any(failing)
            && placement.partitions.iter().any(|p| !failing(p))
        {
            healthy = nubo_plan::Placement {
                partitions: placement
                    .partitions
                    .iter()
                    .filter(|p| !failing(p))
                    .cloned()
                    .collect(),
                ..placement.clone()
            };
            &healthy
        } else {
            placement
        };
        for _ in live_count..target {
            let Some(partition) = choose_partition(placement, &per_partition) else {
                tracing::warn!(cluster = %plan.cluster_id, "no partition has room for another member: raise partitionMax in the deployment policy");
                break;
            };
            *per_partition.entry(partition.clone()).or_default() += 1;
            self.next_member += 1;
            let member = Member {
                member_id: format!(
                    "{}-{}",
                    plan.cluster_id.trim_end_matches(".domain"),
                    self.next_member
                ),
                cluster_id: plan.cluster_id.clone(),
                cluster_instance_id: inst.instance_id.clone(),
                service_name: plan.service_name.clone(),
                application_id: d.plan.application_id.clone(),
                network_partition_id: inst.network_partition_id.clone(),
                partition_id: partition,
                status: MemberStatus::Created,
                default_private_ip: None,
                default_public_ip: None,
                ports: Vec::new(),
                init_time: now_ms,
                failure: None,
                properties: BTreeMap::new(),
            };
            if let Some(c) = self.topology.clusters.get_mut(&plan.cluster_id) {
                c.members.insert(member.member_id.clone(), member.clone());
            }
            self.since_ms.insert(member.member_id.clone(), now_ms);
            out.push(Action::Publish(Event::MemberCreated(MemberChange {
                member: member.clone(),
            })));
            out.push(Action::Start {
                member,
                provider: placement.provider.clone(),
                image: image.clone(),
                cluster: Box::new(plan.clone()),
            });
            out.push(Action::Persist);
        }
        false
    }

    pub(super) fn update_app_instances(&mut self, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        // Every cluster instance each application instance wants (its groups' instances too).
        let mut statuses: BTreeMap<String, Vec<Option<InstanceStatus>>> = BTreeMap::new();
        for c in &d.plan.clusters {
            for (id, _, app_instance) in d.slots(c) {
                let status = self
                    .topology
                    .clusters
                    .get(&c.cluster_id)
                    .and_then(|c| c.instances.get(&id))
                    .map(|i| i.status);
                statuses.entry(app_instance).or_default().push(status);
            }
        }
        let mut updates = Vec::new();
        for (idx, inst) in d.instances.iter().enumerate() {
            let s = statuses.get(&inst.instance_id).cloned().unwrap_or_default();
            let all_active = s.iter().all(|s| *s == Some(InstanceStatus::Active));
            let any_inactive = s.iter().any(|s| {
                matches!(
                    s,
                    Some(InstanceStatus::Inactive | InstanceStatus::Terminating)
                )
            });
            let next = match inst.status {
                InstanceStatus::Created | InstanceStatus::Inactive if all_active => {
                    Some(InstanceStatus::Active)
                }
                InstanceStatus::Active if any_inactive => Some(InstanceStatus::Inactive),
                _ => None,
            };
            if let Some(n) = next {
                updates.push((idx, n));
            }
        }
        if let Some(d) = self.deployments.get_mut(app_id) {
            for (idx, n) in updates {
                d.instances[idx].status = n;
                out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                    application_id: app_id.to_owned(),
                    instance_id: d.instances[idx].instance_id.clone(),
                    group_alias: None,
                    status: n,
                }));
                out.push(Action::Persist);
            }
        }
        self.update_group_instances(app_id, out);
    }

    /// Group instances through Stratos' group lifecycle, each change an event: `Created` when
    /// first wanted; `Active` once every cluster instance inside it is; `Inactive` when one of
    /// them is Inactive or Terminating after it was Active (and Active again); `Terminating`
    /// once it is no longer wanted (scaled in, or its application undeployed) while cluster
    /// instances of it remain; `Terminated` when none does.
    pub(super) fn update_group_instances(&mut self, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        // An application without groups has nothing to do here (most do: no pass over its slots).
        if d.group_status.is_empty() && d.plan.clusters.iter().all(|c| c.group_path.is_empty()) {
            return;
        }
        // The statuses of the cluster instances inside each wanted group instance.
        let mut wanted: BTreeMap<String, Vec<Option<InstanceStatus>>> = BTreeMap::new();
        for c in &d.plan.clusters {
            for (id, _, _) in d.slots(c) {
                let status = self
                    .topology
                    .clusters
                    .get(&c.cluster_id)
                    .and_then(|cl| cl.instances.get(&id))
                    .map(|i| i.status);
                for depth in 1..=c.group_path.len() {
                    let gid = scope_instance(&id, &c.group_path, depth);
                    wanted
                        .entry(group_status_key(&c.group_path[..depth], &gid))
                        .or_default()
                        .push(status);
                }
            }
        }
        let mut changes: Vec<(String, Option<InstanceStatus>)> = Vec::new();
        for (key, children) in &wanted {
            let all_active = children.iter().all(|s| *s == Some(InstanceStatus::Active));
            let any_down = children.iter().any(|s| {
                matches!(
                    s,
                    Some(InstanceStatus::Inactive | InstanceStatus::Terminating)
                )
            });
            match d.group_status.get(key) {
                None => {
                    changes.push((key.clone(), Some(InstanceStatus::Created)));
                    if all_active {
                        changes.push((key.clone(), Some(InstanceStatus::Active)));
                    }
                }
                Some(InstanceStatus::Created | InstanceStatus::Inactive) if all_active => {
                    changes.push((key.clone(), Some(InstanceStatus::Active)));
                }
                Some(InstanceStatus::Active) if any_down => {
                    changes.push((key.clone(), Some(InstanceStatus::Inactive)));
                }
                _ => {}
            }
        }
        // Those no longer wanted: Terminating while cluster instances of theirs remain.
        for (key, status) in &d.group_status {
            if wanted.contains_key(key) {
                continue;
            }
            let (path, gid) = key.split_once('|').unwrap_or(("", key));
            let path: Vec<String> = path.split('/').map(str::to_owned).collect();
            let remains = d
                .plan
                .clusters
                .iter()
                .filter(|c| c.group_path.starts_with(&path))
                .filter_map(|c| self.topology.clusters.get(&c.cluster_id).map(|cl| (c, cl)))
                .any(|(c, cl)| {
                    cl.instances
                        .keys()
                        .any(|k| scope_instance(k, &c.group_path, path.len()) == gid)
                });
            if remains {
                if *status != InstanceStatus::Terminating {
                    changes.push((key.clone(), Some(InstanceStatus::Terminating)));
                }
            } else {
                if *status != InstanceStatus::Terminating {
                    changes.push((key.clone(), Some(InstanceStatus::Terminating)));
                }
                changes.push((key.clone(), None));
            }
        }
        if changes.is_empty() {
            return;
        }
        let Some(d) = self.deployments.get_mut(app_id) else {
            return;
        };
        for (key, status) in changes {
            match status {
                Some(s) => {
                    d.group_status.insert(key.clone(), s);
                    out.push(super::deployments::group_event(app_id, &key, s));
                }
                None => {
                    d.group_status.remove(&key);
                    out.push(super::deployments::group_event(
                        app_id,
                        &key,
                        InstanceStatus::Terminated,
                    ));
                }
            }
        }
        out.push(Action::Persist);
    }

    /// Takes a cluster instance out: Terminating, its members retired gracefully. It is removed
    /// once its members are gone ([`Self::finish_terminations`]); converge re-creates it if the
    /// deployment still wants it (the restart after a termination behaviour).
    pub(super) fn terminate_cluster_instance(
        &mut self,
        now_ms: u64,
        cluster_id: &str,
        instance_id: &str,
        reason: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(cluster) = self.topology.clusters.get_mut(cluster_id) else {
            return;
        };
        let Some(ci) = cluster.instances.get_mut(instance_id) else {
            return;
        };
        if matches!(
            ci.status,
            InstanceStatus::Terminating | InstanceStatus::Terminated
        ) {
            return;
        }
        ci.status = InstanceStatus::Terminating;
        out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
            cluster_id: cluster_id.to_owned(),
            instance_id: instance_id.to_owned(),
            status: InstanceStatus::Terminating,
        }));
        let members: Vec<Member> = cluster
            .members
            .values_mut()
            .filter(|m| m.cluster_instance_id == instance_id)
            .map(|m| {
                m.failure.get_or_insert_with(|| reason.to_owned());
                m.clone()
            })
            .collect();
        for m in members {
            self.retire(now_ms, &m, false, out);
        }
        out.push(Action::Persist);
    }

    /// A cluster instance became Inactive: applies the termination behaviour of its level, from
    /// the innermost outwards while levels say `terminate-none` (§7.8).
    pub(super) fn termination_behaviour(
        &mut self,
        now_ms: u64,
        app_id: &str,
        cluster_id: &str,
        instance_id: &str,
        out: &mut Vec<Action>,
    ) {
        let Some(d) = self.deployments.get(app_id) else {
            return;
        };
        let Some(plan) = d.plan.cluster(cluster_id) else {
            return;
        };
        let path = plan.group_path.clone();
        let mut depth = path.len();
        let mut child: Vec<String> = vec![cluster_id.to_owned()];
        let (behaviour, targets) = loop {
            let scope = &path[..depth];
            let in_scope = |c: &&ClusterPlan| c.group_path.starts_with(scope);
            match d
                .plan
                .scope(scope)
                .map(|s| s.termination)
                .unwrap_or_default()
            {
                Termination::None => {
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                    let group = &path[..=depth];
                    child = d
                        .plan
                        .clusters
                        .iter()
                        .filter(|c| c.group_path.starts_with(group))
                        .map(|c| c.cluster_id.clone())
                        .collect();
                }
                Termination::All => {
                    break (
                        "terminate-all",
                        d.plan
                            .clusters
                            .iter()
                            .filter(in_scope)
                            .map(|c| c.cluster_id.clone())
                            .collect::<BTreeSet<_>>(),
                    );
                }
                Termination::Dependents => {
                    let mut set: BTreeSet<String> = child.iter().cloned().collect();
                    loop {
                        let more: Vec<String> = d
                            .plan
                            .clusters
                            .iter()
                            .filter(in_scope)
                            .filter(|c| !set.contains(&c.cluster_id))
                            .filter(|c| c.depends_on.iter().any(|x| set.contains(x)))
                            .map(|c| c.cluster_id.clone())
                            .collect();
                        if more.is_empty() {
                            break;
                        }
                        set.extend(more);
                    }
                    // Stratos (`DependencyTree.getTerminationDependencies`): a child without
                    // dependents is not terminated at all; it recovers on its own, as with
                    // terminate-none.
                    if set.len() == child.len() {
                        return;
                    }
                    break ("terminate-dependents", set);
                }
            }
        };
        let level = scope_instance(instance_id, &path, depth);
        let mut victims = Vec::new();
        for t in &targets {
            let (Some(tp), Some(c)) = (d.plan.cluster(t), self.topology.clusters.get(t)) else {
                continue;
            };
            for id in c.instances.keys() {
                if scope_instance(id, &tp.group_path, depth) == level {
                    victims.push((t.clone(), id.clone()));
                }
            }
        }
        tracing::warn!(
            cluster = cluster_id,
            instance = instance_id,
            behaviour,
            terminating = victims.len(),
            "a cluster instance became inactive: terminating, to restart in startup order"
        );
        let reason = format!("{behaviour}: {cluster_id} became inactive");
        let app_instance = scope_instance(instance_id, &path, 0);
        if let Some(d) = self.deployments.get_mut(app_id)
            && let Some(i) = d
                .instances
                .iter_mut()
                .find(|i| i.instance_id == app_instance && i.status == InstanceStatus::Active)
        {
            i.status = InstanceStatus::Inactive;
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.to_owned(),
                instance_id: app_instance,
                group_alias: None,
                status: InstanceStatus::Inactive,
            }));
        }
        for (c, i) in victims {
            self.terminate_cluster_instance(now_ms, &c, &i, &reason, out);
        }
    }

    /// Removes the terminating cluster instances whose members are gone, then the terminating
    /// application instances whose cluster instances are gone.
    pub(super) fn finish_terminations(&mut self, app_id: &str, out: &mut Vec<Action>) {
        let Some(d) = self.deployments.get_mut(app_id) else {
            return;
        };
        for cid in d.cluster_ids() {
            let Some(c) = self.topology.clusters.get_mut(&cid) else {
                continue;
            };
            let done: Vec<String> = c
                .instances
                .values()
                .filter(|i| i.status == InstanceStatus::Terminating)
                .filter(|i| {
                    !c.members
                        .values()
                        .any(|m| m.cluster_instance_id == i.instance_id)
                })
                .map(|i| i.instance_id.clone())
                .collect();
            for id in done {
                c.instances.remove(&id);
                let key = InstanceKey::new(&cid, &id);
                d.desired.remove(&key);
                d.backoff.remove(&key);
                out.push(Action::Publish(Event::ClusterInstanceStatusChanged {
                    cluster_id: cid.clone(),
                    instance_id: id,
                    status: InstanceStatus::Terminated,
                }));
                out.push(Action::Persist);
            }
        }
        let clusters = &self.topology.clusters;
        let gone: Vec<String> = d
            .instances
            .iter()
            .filter(|i| i.status == InstanceStatus::Terminating)
            .filter(|i| {
                let prefix = format!("{}.", i.instance_id);
                !d.plan.clusters.iter().any(|c| {
                    clusters.get(&c.cluster_id).is_some_and(|c| {
                        c.instances
                            .keys()
                            .any(|k| *k == i.instance_id || k.starts_with(&prefix))
                    })
                })
            })
            .map(|i| i.instance_id.clone())
            .collect();
        for id in gone {
            d.instances.retain(|i| i.instance_id != id);
            out.push(Action::Publish(Event::ApplicationInstanceStatusChanged {
                application_id: app_id.to_owned(),
                instance_id: id,
                group_alias: None,
                status: InstanceStatus::Terminated,
            }));
            out.push(Action::Persist);
        }
        while d.burst_level > 0
            && !d
                .instances
                .iter()
                .any(|i| i.burst_group == Some(d.burst_level - 1))
        {
            d.burst_level -= 1;
            tracing::info!(
                application = app_id,
                burst_level = d.burst_level,
                "burst network partitions closed"
            );
        }
    }
}
