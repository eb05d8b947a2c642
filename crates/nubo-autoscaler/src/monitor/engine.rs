//! The engine without I/O: statistics in ([`Engine::feed`]), a decision round out
//! ([`Engine::round`]): faults, each cluster instance's decision, the commands; and the event
//! processor on its own ([`EventProcessor`]), which turns statistics into predictions. Pure.

use super::*;

/// Most members in one `PredictedStatistics` event (about 150 bytes each: a few hundred
/// kilobytes, under any broker's limit).
pub const PREDICTIONS_PER_EVENT: usize = 2_000;

/// The event processor on its own (Stratos' CEP in its own process): health statistics in, every
/// tick the predictions out, for an autoscaler in another process ([`Engine::remote`]). Pure.
pub struct EventProcessor {
    config: MonitorConfig,
    w: Windows,
    /// Per member: when its last statistics arrived and whether they said its ports are open.
    last: HashMap<String, (u64, bool), Fast>,
}

impl EventProcessor {
    /// With empty windows.
    pub fn new(config: MonitorConfig) -> EventProcessor {
        EventProcessor {
            config,
            w: Windows::default(),
            last: HashMap::default(),
        }
    }

    /// Takes in a health-statistics event (others are ignored) received at `now_ms`.
    pub fn feed(&mut self, e: &Event, now_ms: u64) {
        if let Event::MemberHealthStat(h) = e {
            self.last
                .insert(h.instance.member_id.clone(), (now_ms, h.ports_open));
        }
        feed_windows(&mut self.w, self.config, e);
    }

    /// The predictions at `now`, as events of at most `per_event` members (the clusters in the
    /// first); forgets the members and clusters whose statistics stopped.
    pub fn predictions(&mut self, now: u64, per_event: usize) -> Vec<Event> {
        let window_ms = self.config.window.as_millis() as u64;
        let keep = window_ms * 2;
        self.w.forget(now, keep);
        self.last
            .retain(|_, (at, _)| now.saturating_sub(*at) <= keep);
        let clusters: Vec<nubo_events::ClusterPrediction> = self
            .w
            .rif
            .keys()
            .flat_map(|id| {
                self.w
                    .requests_by_scope(id, now, window_ms)
                    .into_iter()
                    .map(|(scope, v)| nubo_events::ClusterPrediction {
                        cluster_id: id.clone(),
                        cluster_instance_id: scope.instance,
                        network_partition_id: scope.network_partition,
                        requests_in_flight: v,
                    })
            })
            .collect();
        let members: Vec<nubo_events::MemberPrediction> = self
            .last
            .iter()
            .map(|(id, (last_stat_ms, ports_open))| {
                let (memory_consumption, load_average) =
                    self.w.member(id, now, window_ms).unwrap_or((None, None));
                nubo_events::MemberPrediction {
                    member_id: id.clone(),
                    memory_consumption,
                    load_average,
                    last_stat_ms: *last_stat_ms,
                    ports_open: *ports_open,
                }
            })
            .collect();
        let mut out: Vec<Event> = members
            .chunks(per_event.max(1))
            .map(|chunk| {
                Event::PredictedStatistics(nubo_events::Predictions {
                    at_ms: now,
                    clusters: Vec::new(),
                    members: chunk.to_vec(),
                })
            })
            .collect();
        // The clusters go in the first event (one of their own when no member reports).
        match out.first_mut() {
            Some(Event::PredictedStatistics(first)) => first.clusters = clusters,
            _ if !clusters.is_empty() => {
                out.push(Event::PredictedStatistics(nubo_events::Predictions {
                    at_ms: now,
                    clusters,
                    members: Vec::new(),
                }))
            }
            _ => {}
        }
        out
    }
}

/// One decision round's outcome.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Every cluster instance's decision with its inputs.
    pub events: Vec<ScalingEvent>,
    /// What to ask of the controller, in order.
    pub commands: Vec<ScaleCommand>,
}

/// The event processor and the autoscaler without I/O: statistics in ([`Engine::feed`]),
/// decisions out ([`Engine::round`]) over the controller's state. The monitor drives it from the
/// bus; the scale benchmark feeds it directly.
pub struct Engine {
    config: MonitorConfig,
    w: Windows,
    liveness: Liveness,
    /// The largest delay seen since the last round between a statistic's sending and its
    /// taking in here (ms): how far behind the statistics path runs.
    lag_ms: u64,
    /// The largest delay seen in the last round.
    last_lag_ms: u64,
    /// No member is found faulty before this time (ms): the statistics path lagged or lost
    /// messages, so a member's silence may be the platform's.
    hold_until_ms: u64,
    /// When the last round ran (ms; 0 before the first).
    last_round_ms: u64,
    /// The tenants' instance quotas (the platform's administrator's setting).
    quotas: BTreeMap<i64, u32>,
}

/// Why fault detection is held in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Statistics arrive later than half the fault timeout after they were sent.
    Lagging,
    /// The statistics subscription lost messages (it lagged by more than its buffer).
    Dropped,
    /// This process did not run for a while (its rounds stopped: starved of CPU, or stopped):
    /// what it did not take in meanwhile says nothing of the members.
    Stalled,
}

impl Engine {
    /// An engine with empty windows, fed with the statistics themselves (its event processor in
    /// the same process).
    pub fn new(config: MonitorConfig) -> Engine {
        Engine {
            config,
            w: Windows::default(),
            liveness: Liveness::default(),
            lag_ms: 0,
            last_lag_ms: 0,
            hold_until_ms: 0,
            last_round_ms: 0,
            quotas: BTreeMap::new(),
        }
    }

    /// An engine fed with the predictions of an event processor in another process
    /// (`PredictedStatistics` events) instead of the statistics. It detects no faults while
    /// predictions do not arrive (the event processor is down or cut off: members' silence would
    /// be the event processor's).
    pub fn remote(config: MonitorConfig) -> Engine {
        Engine {
            config,
            w: Windows {
                received: Some(Received::default()),
                ..Windows::default()
            },
            liveness: Liveness::default(),
            lag_ms: 0,
            last_lag_ms: 0,
            hold_until_ms: 0,
            last_round_ms: 0,
            quotas: BTreeMap::new(),
        }
    }

    /// The statistics subscription lost messages at `now`: no member is found faulty for a
    /// fault timeout (a healthy member reports within it once nothing is lost).
    pub fn statistics_dropped(&mut self, now: u64) {
        self.hold(now, Held::Dropped);
    }

    fn hold(&mut self, now: u64, why: Held) {
        let until = now + self.config.fault_timeout.as_millis() as u64;
        if until > self.hold_until_ms {
            if self.hold_until_ms <= now {
                tracing::warn!(reason = ?why, lag_ms = self.last_lag_ms.max(self.lag_ms), "fault detection held: the statistics path is behind, so silence proves nothing now");
            }
            self.hold_until_ms = until;
        }
    }

    /// Whether fault detection is held at `now`.
    pub fn faults_held(&self, now: u64) -> bool {
        now < self.hold_until_ms
    }

    /// The largest delay between a statistic's sending and its taking in, over the last round
    /// (ms).
    pub fn statistics_lag_ms(&self) -> u64 {
        self.last_lag_ms
    }

    /// Whether this engine's statistics come as predictions, and have within the fault timeout.
    pub(super) fn predictions_fresh(&self, now: u64) -> bool {
        match &self.w.received {
            None => true,
            Some(r) => r.last_ms.is_some_and(|t| {
                now.saturating_sub(t) <= self.config.fault_timeout.as_millis() as u64
            }),
        }
    }

    /// Takes in a health-statistics event, or for an engine made with [`Engine::remote`]
    /// predictions (others are ignored), received at `now_ms`.
    pub fn feed(&mut self, e: &Event, now_ms: u64) {
        match e {
            Event::PredictedStatistics(p) => {
                let Some(r) = &mut self.w.received else {
                    return;
                };
                r.last_ms = Some(now_ms);
                // A cluster's figures come together, in one event: they replace its previous ones.
                let mut fresh: HashMap<&str, Vec<(super::windows::Scope, f64)>> = HashMap::new();
                for c in &p.clusters {
                    fresh.entry(c.cluster_id.as_str()).or_default().push((
                        super::windows::Scope {
                            instance: c.cluster_instance_id.clone(),
                            network_partition: c.network_partition_id.clone(),
                        },
                        c.requests_in_flight,
                    ));
                }
                for (id, scopes) in fresh {
                    r.clusters.insert(id.to_owned(), (scopes, now_ms));
                }
                for m in &p.members {
                    self.liveness
                        .stat(&m.member_id, m.last_stat_ms, m.ports_open);
                    if m.memory_consumption.is_some() || m.load_average.is_some() {
                        r.members.insert(
                            m.member_id.clone(),
                            (m.memory_consumption, m.load_average, now_ms),
                        );
                    } else {
                        // No statistics within the window any more.
                        r.members.remove(&m.member_id);
                    }
                }
            }
            Event::MemberHealthStat(h) if self.w.received.is_none() => {
                self.lag_ms = self.lag_ms.max(now_ms.saturating_sub(h.at_ms));
                self.liveness
                    .stat(&h.instance.member_id, now_ms, h.ports_open);
                feed_windows(&mut self.w, self.config, e);
            }
            Event::InFlightRequests(_) if self.w.received.is_none() => {
                feed_windows(&mut self.w, self.config, e);
            }
            _ => {}
        }
    }

    /// One decision round at `now`: faults, every cluster instance's decision, and the commands
    /// that follow from them.
    pub fn round(&mut self, state: &ControllerState, now: u64) -> Round {
        let config = self.config;
        // Statistics taken in more than half the fault timeout after they were sent: the
        // platform lags, and a member's silence may be its own queue.
        self.last_lag_ms = std::mem::take(&mut self.lag_ms);
        let half_timeout = config.fault_timeout.as_millis() as u64 / 2;
        if self.last_lag_ms > half_timeout {
            self.hold(now, Held::Lagging);
        }
        // Rounds run every tick: a gap of half the fault timeout beyond it means this process
        // itself did not run.
        let gap = now.saturating_sub(self.last_round_ms);
        if self.last_round_ms > 0 && gap > config.tick.as_millis() as u64 + half_timeout {
            self.hold(now, Held::Stalled);
        }
        self.last_round_ms = now;
        let faults = self.predictions_fresh(now) && !self.faults_held(now);
        let mut commands = self.liveness_commands(state, now, faults);
        let mut events = evaluate(state, &mut self.w, config, now);
        if !self.quotas.is_empty() {
            hold_within_quotas(state, &mut events, &self.quotas);
        }
        for e in &events {
            if let Some(c) = self.command(state, e, now) {
                commands.push(c);
            }
        }
        for (application, instance) in scale_ins(
            state,
            &events,
            &self.w,
            config.down_cooldown.as_millis() as u64,
            now,
        ) {
            commands.push(ScaleCommand::ScaleIn {
                application_id: application,
                instance_id: instance,
            });
        }
        commands.extend(group_dependents(state, &events, &mut self.w, config, now));
        // Forget the members and clusters whose statistics stopped.
        self.w.forget(now, config.window.as_millis() as u64 * 2);
        // Forget the cluster instances that are gone.
        if self.w.first_seen.len() > events.len() {
            let live: BTreeSet<InstanceKey> = events
                .iter()
                .map(|e| InstanceKey::new(&e.cluster_id, &e.instance_id))
                .collect();
            self.w.first_seen.retain(|k, _| live.contains(k));
        }
        Round { events, commands }
    }

    /// Sets the tenants' instance quotas (tenant id → members at most).
    pub fn set_quotas(&mut self, quotas: BTreeMap<i64, u32>) {
        self.quotas = quotas;
    }

    /// Faulty Active members, and starting members whose statistics prove them active.
    /// Faulty Active members (unless `faults` is off: detection held), and starting members
    /// whose statistics prove them active.
    pub(super) fn liveness_commands(
        &mut self,
        state: &ControllerState,
        now: u64,
        faults: bool,
    ) -> Vec<ScaleCommand> {
        let fault_ms = self.config.fault_timeout.as_millis() as u64;
        let mut activated: Vec<ScaleCommand> = starting_members(state)
            .filter(|m| self.liveness.reporting(&m.member_id, now, fault_ms))
            .map(|m| ScaleCommand::MemberActive { instance: m.into() })
            .collect();
        let mut commands: Vec<ScaleCommand> = if faults {
            self.liveness
                .check(active_members(state), now, fault_ms)
                .into_iter()
                .map(|(member_id, reason)| ScaleCommand::MemberFault { member_id, reason })
                .collect()
        } else {
            Vec::new()
        };
        commands.append(&mut activated);
        commands
    }

    /// The command a decision calls for (the victim of a scale-down chosen here), noting the
    /// time of the scaling for the cool-downs.
    pub(super) fn command(
        &mut self,
        state: &ControllerState,
        e: &ScalingEvent,
        now: u64,
    ) -> Option<ScaleCommand> {
        let (cluster, instance) = (&e.cluster_id, &e.instance_id);
        let key = InstanceKey::new(cluster, instance);
        let window_ms = self.config.window.as_millis() as u64;
        let c = state.topology.clusters.get(cluster)?;
        let live = || {
            c.members.values().filter(|m| {
                m.cluster_instance_id == *instance && m.failure.is_none() && m.status.is_live()
            })
        };
        match e.decision {
            Decision::ScaleUp { add, .. } => {
                self.w.last_up.insert(key, now);
                Some(ScaleCommand::ScaleTo {
                    cluster_id: cluster.clone(),
                    instance_id: instance.clone(),
                    count: live().count() as u32 + add,
                })
            }
            Decision::ScaleDown => {
                // As Stratos: the partition algorithm names the partition (one-after-another:
                // the last with members; round-robin: the fullest), then the least loaded active
                // member there goes: lowest predicted (load + memory) / 2.
                let w = &self.w;
                let load = |id: &str| {
                    let (mem, ld) = w.member(id, now, window_ms).unwrap_or((None, None));
                    (ld.unwrap_or(0.0) + mem.unwrap_or(0.0)) / 2.0
                };
                let partition = state
                    .deployments
                    .get(&c.application_id)
                    .and_then(|d| d.plan.cluster(cluster))
                    .and_then(|plan| nubo_controller::state::victim_partition(plan, live()));
                let victim = live()
                    .filter(|m| m.status == MemberStatus::Active)
                    .filter(|m| partition.as_ref().is_none_or(|p| &m.partition_id == p))
                    .min_by(|a, b| {
                        load(&a.member_id)
                            .total_cmp(&load(&b.member_id))
                            .then_with(|| b.member_id.cmp(&a.member_id))
                    })
                    .map(|m| m.member_id.clone());
                self.w.last_down.insert(key, now);
                Some(ScaleCommand::ScaleDown {
                    cluster_id: cluster.clone(),
                    instance_id: instance.clone(),
                    member_id: victim,
                })
            }
            // Full: the group grows or the application bursts (the controller decides which,
            // and does nothing while a new instance is still on its way).
            Decision::AtMax => Some(ScaleCommand::BeyondMax {
                cluster_id: cluster.clone(),
                instance_id: instance.clone(),
            }),
            _ => None,
        }
    }
}

/// Holds a round's scale-ups within the tenants' instance quotas (their members now, every
/// status but Terminated, counted from the topology), logging each one held.
fn hold_within_quotas(
    state: &ControllerState,
    events: &mut [ScalingEvent],
    quotas: &BTreeMap<i64, u32>,
) {
    let tenant = |app: &str| nubo_controller::state::metering::tenant_of(app).0;
    let used = state.members_per_tenant();
    let mut decisions: Vec<(i64, Decision)> = events
        .iter()
        .map(|e| (tenant(&e.application_id), e.decision))
        .collect();
    rules::within_quotas(&mut decisions, &used, quotas);
    for (e, (t, d)) in events.iter_mut().zip(decisions) {
        if d == Decision::AtQuota && e.decision != Decision::AtQuota {
            tracing::info!(cluster = %e.cluster_id, instance = %e.instance_id, tenant = t, quota = quotas.get(&t).copied().unwrap_or(0), "scale-up held: the tenant's instance quota is reached");
        }
        e.decision = d;
    }
}

/// The members of deployed applications the controller sees initialized or starting.
pub(super) fn starting_members(
    state: &ControllerState,
) -> impl Iterator<Item = &nubo_events::Member> {
    state
        .deployments
        .values()
        .filter(|d| d.status == nubo_controller::DeploymentStatus::Deployed)
        .flat_map(|d| d.plan.clusters.iter())
        .filter_map(|p| state.topology.clusters.get(&p.cluster_id))
        .flat_map(|c| c.members.values())
        .filter(|m| {
            matches!(m.status, MemberStatus::Initialized | MemberStatus::Starting)
                && m.failure.is_none()
        })
}

/// The Active, not failed, members of deployed applications.
pub(super) fn active_members(state: &ControllerState) -> impl Iterator<Item = &str> {
    state
        .deployments
        .values()
        .filter(|d| d.status == nubo_controller::DeploymentStatus::Deployed)
        .flat_map(|d| d.plan.clusters.iter())
        .filter_map(|p| state.topology.clusters.get(&p.cluster_id))
        .flat_map(|c| c.members.values())
        .filter(|m| m.status == MemberStatus::Active && m.failure.is_none())
        .map(|m| m.member_id.as_str())
}

/// Decides for every deployed cluster instance: each factor's requirement, the scaling
/// dependents' (which replaces it), then the decision.
/// Groups in scaling-dependent lists (Stratos' `GroupMonitor.onParentScalingEvent`): per list and
/// instance of the list's level, the list's factor — the highest own requirement over minimum
/// among its clusters and the clusters inside its groups — sets each of its groups to
/// `ceil(groupMinInstances × factor)` instances, within the group's bounds; a change waits for the
/// scale-up (or scale-down) cool-down of that group in that instance.
fn group_dependents(
    state: &ControllerState,
    events: &[ScalingEvent],
    w: &mut Windows,
    config: MonitorConfig,
    now: u64,
) -> Vec<ScaleCommand> {
    let mut out = Vec::new();
    for d in state.deployments.values() {
        if d.status != nubo_controller::DeploymentStatus::Deployed {
            continue;
        }
        for scope in &d.plan.scopes {
            let depth = scope.path.len();
            for (i, groups) in scope.scaling_dependent_groups.iter().enumerate() {
                if groups.is_empty() {
                    continue;
                }
                let list = scope.scaling_dependents.get(i);
                let mut factors: BTreeMap<String, f64> = BTreeMap::new();
                for e in events
                    .iter()
                    .filter(|e| e.application_id == d.plan.application_id)
                {
                    let Some(c) = d.plan.cluster(&e.cluster_id) else {
                        continue;
                    };
                    let counted = list.is_some_and(|l| l.contains(&e.cluster_id))
                        || groups.iter().any(|g| c.group_path.starts_with(g));
                    let own = [
                        e.required.requests_in_flight,
                        e.required.memory,
                        e.required.load,
                    ]
                    .into_iter()
                    .flatten()
                    .max();
                    let (true, Some(own)) = (counted, own) else {
                        continue;
                    };
                    let f = f64::from(own) / f64::from(e.min.max(1));
                    let level = scope_instance(&e.instance_id, &c.group_path, depth);
                    let entry = factors.entry(level).or_insert(0.0);
                    *entry = entry.max(f);
                }
                for (level, factor) in factors {
                    for g in groups {
                        let Some(gs) = d.plan.scope(g) else {
                            continue;
                        };
                        let want = (f64::from(gs.min_instances) * factor - 1e-9)
                            .ceil()
                            .max(0.0) as u32;
                        let want = want.clamp(gs.min_instances, gs.max_instances);
                        let have = d.group_numbers(&level, g).len() as u32;
                        if want == have {
                            continue;
                        }
                        let key = InstanceKey::new(&format!("group:{}", g.join("/")), &level);
                        let (last, cool) = if want > have {
                            (w.last_up.get(&key), config.up_cooldown)
                        } else {
                            (w.last_down.get(&key), config.down_cooldown)
                        };
                        if last.is_some_and(|t| now.saturating_sub(*t) < cool.as_millis() as u64) {
                            continue;
                        }
                        if want > have {
                            w.last_up.insert(key, now);
                        } else {
                            w.last_down.insert(key, now);
                        }
                        out.push(ScaleCommand::GroupInstances {
                            application_id: d.plan.application_id.clone(),
                            parent_instance_id: level.clone(),
                            group_path: g.clone(),
                            count: want,
                        });
                    }
                }
            }
        }
    }
    out
}

pub(super) fn evaluate(
    state: &ControllerState,
    w: &mut Windows,
    config: MonitorConfig,
    now: u64,
) -> Vec<ScalingEvent> {
    let window_ms = config.window.as_millis() as u64;
    let mut out = Vec::new();
    for d in state.deployments.values() {
        if d.status != nubo_controller::DeploymentStatus::Deployed {
            continue;
        }
        let mut evs: Vec<ScalingEvent> = Vec::new();
        for plan in &d.plan.clusters {
            let Some(cluster) = state.topology.clusters.get(&plan.cluster_id) else {
                continue;
            };
            // Active members per live instance, with its network partition (for the split of
            // figures of the whole cluster).
            let mut active_per_instance: HashMap<&str, (&str, u32)> = HashMap::new();
            for i in cluster.instances.values().filter(|i| {
                !matches!(
                    i.status,
                    InstanceStatus::Terminating | InstanceStatus::Terminated
                )
            }) {
                active_per_instance.insert(&i.instance_id, (&i.network_partition_id, 0));
            }
            for m in cluster.members.values() {
                if m.status == MemberStatus::Active
                    && m.failure.is_none()
                    && let Some((_, n)) =
                        active_per_instance.get_mut(m.cluster_instance_id.as_str())
                {
                    *n += 1;
                }
            }
            for inst in cluster.instances.values() {
                if matches!(
                    inst.status,
                    InstanceStatus::Terminating | InstanceStatus::Terminated
                ) {
                    continue;
                }
                let mut active = Vec::new();
                let mut starting = 0u32;
                for m in cluster.members.values() {
                    if m.cluster_instance_id != inst.instance_id {
                        continue;
                    }
                    if m.status == MemberStatus::Active && m.failure.is_none() {
                        active.push(m);
                    } else if m.status.is_starting() {
                        starting += 1;
                    }
                }
                let (min, max) = (inst.min_members, inst.max_members);
                let t = plan.thresholds;
                // Requests in flight: what the load balancers reported for this instance, and
                // its share, by active members, of what they reported for the whole cluster in
                // its network partition (Stratos' split).
                let in_np = active_per_instance
                    .iter()
                    .filter(|(_, (np, _))| *np == inst.network_partition_id.as_str());
                let (np_active, np_instances) =
                    in_np.fold((0u32, 0u32), |(a, n), (_, (_, k))| (a + k, n + 1));
                let share = if np_active > 0 {
                    f64::from(active.len() as u32) / f64::from(np_active)
                } else {
                    1.0 / f64::from(np_instances.max(1))
                };
                let rif = w.requests(
                    &plan.cluster_id,
                    &inst.instance_id,
                    &inst.network_partition_id,
                    share,
                    now,
                    window_ms,
                );
                // Memory and load: the mean over the active members of each one's prediction.
                let (mut memory, mut load) = ((0.0, 0u32), (0.0, 0u32));
                for a in &active {
                    let Some((mem, ld)) = w.member(&a.member_id, now, window_ms) else {
                        continue;
                    };
                    if let Some(p) = mem {
                        memory = (memory.0 + p, memory.1 + 1);
                    }
                    if let Some(p) = ld {
                        load = (load.0 + p, load.1 + 1);
                    }
                }
                let mean = |(sum, n): (f64, u32)| (n > 0).then(|| sum / f64::from(n));
                let predicted = Predicted {
                    requests_in_flight: rif,
                    memory_consumption: mean(memory),
                    load_average: mean(load),
                };
                let required = rules::combine(
                    t.requests_in_flight
                        .zip(rif)
                        .map(|(th, p)| rules::required_for_requests(p, th)),
                    t.memory_consumption
                        .zip(predicted.memory_consumption)
                        .map(|(th, p)| rules::required_for_memory(p, th, min, max)),
                    t.load_average
                        .zip(predicted.load_average)
                        .map(|(th, p)| rules::required_for_load(p, th, min)),
                );
                w.first_seen
                    .entry(InstanceKey::new(&plan.cluster_id, &inst.instance_id))
                    .or_insert(now);
                evs.push(ScalingEvent {
                    at_ms: now,
                    application_id: d.plan.application_id.clone(),
                    cluster_id: plan.cluster_id.clone(),
                    instance_id: inst.instance_id.clone(),
                    decision: Decision::Hold,
                    required,
                    predicted,
                    thresholds: t,
                    active: active.len() as u32,
                    starting,
                    min,
                    max,
                });
            }
        }
        // Scaling dependents: each list's clusters, per instance of the list's level, follow
        // the list's highest factor.
        for scope in &d.plan.scopes {
            let depth = scope.path.len();
            for list in &scope.scaling_dependents {
                let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
                for (i, e) in evs.iter().enumerate() {
                    if let Some(c) = d.plan.cluster(&e.cluster_id)
                        && list.contains(&e.cluster_id)
                    {
                        groups
                            .entry(scope_instance(&e.instance_id, &c.group_path, depth))
                            .or_default()
                            .push(i);
                    }
                }
                for idx in groups.values() {
                    let input: Vec<(Option<u32>, u32)> = idx
                        .iter()
                        .map(|&i| (evs[i].required.count, evs[i].min))
                        .collect();
                    if let Some(counts) = rules::dependent_counts(&input) {
                        for (&i, count) in idx.iter().zip(counts) {
                            evs[i].required = evs[i].required.with_dependents(count);
                        }
                    }
                }
            }
        }
        for mut e in evs {
            let key = InstanceKey::new(&e.cluster_id, &e.instance_id);
            e.decision = rules::decide(
                e.required.count,
                Sizes {
                    min: e.min,
                    max: e.max,
                    active: e.active,
                    starting: e.starting,
                },
                Cooldowns {
                    now_ms: now,
                    last_up_ms: w.last_up.get(&key).copied(),
                    last_down_ms: w.last_down.get(&key).copied(),
                    up_ms: config.up_cooldown.as_millis() as u64,
                    down_ms: config.down_cooldown.as_millis() as u64,
                },
            );
            tracing::debug!(cluster = %e.cluster_id, required = ?e.required, active = e.active, starting = e.starting, decision = ?e.decision, "evaluated");
            let decision = match e.decision {
                Decision::ScaleUp { .. } => Some("scale_up"),
                Decision::ScaleDown => Some("scale_down"),
                Decision::AtMax => Some("at_max"),
                Decision::AtQuota => Some("at_quota"),
                _ => None,
            };
            if let Some(decision) = decision {
                ScalingDecision {
                    cluster_id: &e.cluster_id,
                    instance_id: &e.instance_id,
                    decision,
                    required: e.required.count.unwrap_or(0),
                    active: e.active,
                    starting: e.starting,
                }
                .emit();
            }
            out.push(e);
        }
    }
    out
}

/// The group instances and burst application instances to scale in: every cluster instance
/// with that id sits at its minimum wanting fewer, with nothing starting, and has not scaled
/// for the scale-down cool-down (nor been created more recently than that).
pub(super) fn scale_ins(
    state: &ControllerState,
    events: &[ScalingEvent],
    w: &Windows,
    down_ms: u64,
    now: u64,
) -> Vec<(String, String)> {
    let mut all_idle: BTreeMap<(String, String), bool> = BTreeMap::new();
    // Only applications with something to scale in: a burst instance or an extra group instance.
    let mut candidate: Option<(&str, bool)> = None;
    for e in events {
        let app = e.application_id.as_str();
        let wanted = match candidate {
            Some((a, w)) if a == app => w,
            _ => {
                let w = state.deployments.get(app).is_some_and(|d| {
                    d.burst_level > 0 || d.group_instances.values().any(|n| n.len() > 1)
                });
                candidate = Some((app, w));
                w
            }
        };
        if !wanted {
            continue;
        }
        let key = InstanceKey::new(&e.cluster_id, &e.instance_id);
        let last = [&w.last_up, &w.last_down, &w.first_seen]
            .iter()
            .filter_map(|m| m.get(&key).copied())
            .max()
            .unwrap_or(now);
        let idle =
            e.decision == Decision::AtMin && e.starting == 0 && now.saturating_sub(last) >= down_ms;
        *all_idle
            .entry((e.application_id.clone(), e.instance_id.clone()))
            .or_insert(true) &= idle;
    }
    all_idle
        .into_iter()
        .filter(|(_, idle)| *idle)
        .map(|(k, _)| k)
        .filter(|(app, instance)| {
            // Never an application instance started at deployment.
            state.deployments.get(app).is_some_and(|d| {
                !d.instances
                    .iter()
                    .any(|i| i.instance_id == *instance && i.burst_group.is_none())
            })
        })
        // Nor an instance of a group a scaling-dependent list sizes: its list decides.
        .filter(|(app, instance)| {
            let innermost = instance
                .rsplit_once('.')
                .and_then(|(_, last)| last.rsplit_once('-'))
                .filter(|(_, n)| n.parse::<u32>().is_ok())
                .map(|(alias, _)| alias);
            state.deployments.get(app).is_none_or(|d| {
                !d.plan
                    .scopes
                    .iter()
                    .flat_map(|s| s.scaling_dependent_groups.iter().flatten())
                    .any(|path| path.last().map(String::as_str) == innermost)
            })
        })
        .collect()
}
