//! The monitor: windows of statistics per cluster and per member, fed from the bus; every tick,
//! for each cluster instance, the rules decide and the controller scales.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use nubo_bus::EventBus;
use nubo_controller::plan::scope_instance;
use nubo_controller::{ControllerHandle, ControllerState};
use nubo_events::{Category, Event, InstanceStatus, MemberStatus};
use nubo_store::{Key, Store, Write};

use crate::cep::{Sample, window};
use crate::faults::Liveness;
use crate::rules::{self, Cooldowns, Decision, Sizes};

/// Settings of the monitor.
#[derive(Debug, Clone, Copy)]
pub struct MonitorConfig {
    /// How often decisions are made (Stratos: 90 s).
    pub tick: Duration,
    /// The statistics window (Stratos' CEP: 60 s).
    pub window: Duration,
    /// No scale-up sooner than this after the last.
    pub up_cooldown: Duration,
    /// No scale-down sooner than this after the last scaling.
    pub down_cooldown: Duration,
    /// An Active member silent for longer than this is faulty and replaced (Stratos: 60 s).
    pub fault_timeout: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            tick: Duration::from_secs(1),
            window: Duration::from_secs(5),
            up_cooldown: Duration::from_secs(3),
            down_cooldown: Duration::from_secs(15),
            fault_timeout: Duration::from_secs(5),
        }
    }
}

/// The predictions a decision was made from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Predicted {
    /// Requests in flight over the cluster instance.
    pub requests_in_flight: Option<f64>,
    /// Memory consumption, mean over the active members (percent).
    pub memory_consumption: Option<f64>,
    /// Load average, mean over the active members (percent).
    pub load_average: Option<f64>,
}

/// One scaling decision, with everything it was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScalingEvent {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Application.
    pub application_id: String,
    /// Cluster.
    pub cluster_id: String,
    /// Cluster instance.
    pub instance_id: String,
    /// The decision.
    pub decision: Decision,
    /// What each factor required.
    pub required: rules::Required,
    /// The predicted values.
    pub predicted: Predicted,
    /// The policy's thresholds.
    pub thresholds: nubo_controller::Thresholds,
    /// Active members then.
    pub active: u32,
    /// Members starting then.
    pub starting: u32,
    /// Minimum members.
    pub min: u32,
    /// Maximum members.
    pub max: u32,
}

/// The recent scaling decisions (the newest last), shared with the API; persisted in the store per
/// application (the last [`PERSISTED_PER_APP`]), so they survive a restart.
#[derive(Debug, Clone, Default)]
pub struct ScalingLog {
    events: Arc<Mutex<VecDeque<ScalingEvent>>>,
    /// Applications with decisions not yet persisted.
    dirty: Arc<Mutex<BTreeSet<String>>>,
}

/// How many decisions the log keeps in memory.
pub const LOG_SIZE: usize = 10_000;
/// How many decisions per application the store keeps.
pub const PERSISTED_PER_APP: usize = 1_000;
/// The store's document kind for an application's decisions.
const EVENTS_KIND: &str = "scalingEvents";

impl ScalingLog {
    fn push(&self, e: ScalingEvent) {
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(e.application_id.clone());
        }
        if let Ok(mut q) = self.events.lock() {
            if q.len() >= LOG_SIZE {
                q.pop_front();
            }
            q.push_back(e);
        }
    }

    /// The decisions about an application, oldest first.
    pub fn for_application(&self, application_id: &str) -> Vec<ScalingEvent> {
        self.events
            .lock()
            .map(|q| {
                q.iter()
                    .filter(|e| e.application_id == application_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Loads the persisted decisions (at start).
    async fn load(&self, store: &dyn Store) {
        let records = match store.list(nubo_model::SUPER_TENANT_ID, EVENTS_KIND).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the recorded scaling decisions");
                return;
            }
        };
        let mut all: Vec<ScalingEvent> = records
            .into_iter()
            .filter_map(|r| serde_json::from_value::<Vec<ScalingEvent>>(r.body).ok())
            .flatten()
            .collect();
        all.sort_by_key(|e| e.at_ms);
        if let Ok(mut q) = self.events.lock() {
            for e in all {
                if q.len() >= LOG_SIZE {
                    q.pop_front();
                }
                q.push_back(e);
            }
        }
    }

    /// Writes the decisions of the applications that have new ones.
    async fn persist(&self, store: &dyn Store) {
        let apps: Vec<String> = self
            .dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d).into_iter().collect())
            .unwrap_or_default();
        for app in apps {
            let mut events = self.for_application(&app);
            let skip = events.len().saturating_sub(PERSISTED_PER_APP);
            events.drain(..skip);
            let body = match serde_json::to_value(&events) {
                Ok(b) => b,
                Err(_) => continue,
            };
            let w = Write {
                tenant: nubo_model::SUPER_TENANT_ID,
                key: Key::new(EVENTS_KIND, app.clone()),
                body,
                refs: vec![],
            };
            if let Err(e) = store.upsert(w).await {
                tracing::warn!(application = %app, error = %e, "cannot persist scaling decisions");
                if let Ok(mut d) = self.dirty.lock() {
                    d.insert(app);
                }
            }
        }
    }
}

/// The decisions about an application as the autoscaler last persisted them (oldest first, the
/// last [`PERSISTED_PER_APP`]; written every second): what a server without an autoscaler of its
/// own serves.
pub async fn recorded_for_application(
    store: &dyn Store,
    application_id: &str,
) -> Result<Vec<ScalingEvent>, nubo_store::StoreError> {
    let rec = store
        .get(
            nubo_model::SUPER_TENANT_ID,
            &Key::new(EVENTS_KIND, application_id),
        )
        .await?;
    Ok(rec
        .and_then(|r| serde_json::from_value::<Vec<ScalingEvent>>(r.body).ok())
        .unwrap_or_default())
}

type Fast = foldhash::fast::RandomState;

#[derive(Default)]
struct Windows {
    /// Requests in flight per cluster (load balancers report per cluster), per load balancer.
    rif: HashMap<String, BTreeMap<String, VecDeque<Sample>>, Fast>,
    /// Memory and load per member.
    members: HashMap<String, MemberWindows, Fast>,
    last_up: HashMap<String, u64, Fast>,
    last_down: HashMap<String, u64, Fast>,
    /// When each cluster instance was first evaluated (a new instance is not scaled in at once).
    first_seen: HashMap<String, u64, Fast>,
}

/// Appends a sample, drops those older than `keep_ms`, and keeps the samples contiguous so that
/// a window is a slice (no copy when predicting).
/// A member's samples.
#[derive(Default)]
struct MemberWindows {
    memory: VecDeque<Sample>,
    load: VecDeque<Sample>,
}

impl MemberWindows {
    /// When the newest sample was taken.
    fn newest(&self) -> u64 {
        let last = |q: &VecDeque<Sample>| q.back().map_or(0, |s| s.at_ms);
        last(&self.memory).max(last(&self.load))
    }
}

fn push(q: &mut VecDeque<Sample>, s: Sample, keep_ms: u64) {
    q.push_back(s);
    while q
        .front()
        .is_some_and(|f| s.at_ms.saturating_sub(f.at_ms) > keep_ms)
    {
        q.pop_front();
    }
    q.make_contiguous();
}

fn predicted(q: Option<&VecDeque<Sample>>, now: u64, window_ms: u64) -> Option<f64> {
    // Contiguous (see `push`), and in time order: one publisher per member, on an ordered topic.
    let (all, _) = q?.as_slices();
    let start = all.partition_point(|s| now.saturating_sub(s.at_ms) > window_ms);
    window(&all[start..]).map(|w| rules::predict(w, 1.0).max(0.0))
}

/// Starts the monitor in the background; its decisions go to the returned log.
pub async fn start(
    events: EventBus,
    controller: ControllerHandle,
    config: MonitorConfig,
    store: Option<Arc<dyn Store>>,
) -> Result<ScalingLog, nubo_bus::BusError> {
    let mut stats = events.subscribe(Category::HealthStats).await?;
    let log = ScalingLog::default();
    if let Some(store) = store {
        log.load(store.as_ref()).await;
        let log = log.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                log.persist(store.as_ref()).await;
            }
        });
    }
    let log_out = log.clone();
    tokio::spawn(async move {
        let mut engine = Engine::new(config);
        let mut tick = tokio::time::interval(config.tick.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                e = stats.recv() => match e {
                    Some(e) => engine.feed(&e, nubo_events::now_ms()),
                    None => return,
                },
                _ = tick.tick() => {
                    let now = nubo_events::now_ms();
                    // Decided under the controller's lock (no copy of the state), acted on after.
                    let Some(round) = controller.read(|state| engine.round(state, now)) else {
                        continue;
                    };
                    for e in round.events {
                        if matches!(e.decision, Decision::ScaleUp { .. } | Decision::ScaleDown | Decision::AtMax) {
                            log.push(e);
                        }
                    }
                    for c in round.commands {
                        let _ = match c {
                            Command::Activated(r) => {
                                tracing::info!(member = %r.member_id, "statistics from a member still starting: it is active (its report was lost)");
                                controller.member_active(r).await
                            }
                            Command::Fault { member, reason } => {
                                tracing::warn!(%member, %reason, "member fault");
                                controller.member_fault(&member, reason).await
                            }
                            Command::ScaleTo { cluster, instance, count } => controller.scale_to(&cluster, &instance, count).await,
                            Command::ScaleDown { cluster, instance, member } => controller.scale_down(&cluster, &instance, member.as_deref()).await,
                            Command::BeyondMax { cluster, instance } => controller.beyond_max(&cluster, &instance).await,
                            Command::ScaleIn { application, instance } => {
                                tracing::info!(%application, %instance, "every cluster of the instance is at its minimum: scaling it in");
                                controller.scale_in(&application, &instance).await
                            }
                        };
                    }
                }
            }
        }
    });
    Ok(log_out)
}

/// What a decision round asks of the controller.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A member the controller sees starting sends statistics with its ports open: it is active
    /// (its own report was lost).
    Activated(nubo_events::InstanceRef),
    /// An Active member is faulty: replace it.
    Fault {
        /// Member.
        member: String,
        /// Why.
        reason: String,
    },
    /// Scale a cluster instance up to `count` members.
    ScaleTo {
        /// Cluster.
        cluster: String,
        /// Cluster instance.
        instance: String,
        /// Members wanted.
        count: u32,
    },
    /// Remove one member (the least loaded).
    ScaleDown {
        /// Cluster.
        cluster: String,
        /// Cluster instance.
        instance: String,
        /// The member.
        member: Option<String>,
    },
    /// A cluster instance is full: grow its group or burst.
    BeyondMax {
        /// Cluster.
        cluster: String,
        /// Cluster instance.
        instance: String,
    },
    /// Terminate an idle group instance or burst application instance.
    ScaleIn {
        /// Application.
        application: String,
        /// The group or application instance.
        instance: String,
    },
}

/// One decision round's outcome.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Every cluster instance's decision with its inputs.
    pub events: Vec<ScalingEvent>,
    /// What to ask of the controller, in order.
    pub commands: Vec<Command>,
}

/// The event processor and the autoscaler without I/O: statistics in ([`Engine::feed`]),
/// decisions out ([`Engine::round`]) over the controller's state. The monitor drives it from the
/// bus; the scale benchmark feeds it directly.
pub struct Engine {
    config: MonitorConfig,
    w: Windows,
    liveness: Liveness,
}

impl Engine {
    /// An engine with empty windows.
    pub fn new(config: MonitorConfig) -> Engine {
        Engine {
            config,
            w: Windows::default(),
            liveness: Liveness::default(),
        }
    }

    /// Takes in a health-statistics event (others are ignored) received at `now_ms`.
    pub fn feed(&mut self, e: &Event, now_ms: u64) {
        let keep = self.config.window.as_millis() as u64 * 2;
        let w = &mut self.w;
        match e {
            Event::InFlightRequests(r) => {
                let lbs = match w.rif.get_mut(&r.cluster_id) {
                    Some(l) => l,
                    None => w.rif.entry(r.cluster_id.clone()).or_default(),
                };
                let q = match lbs.get_mut(&r.load_balancer_id) {
                    Some(q) => q,
                    None => lbs.entry(r.load_balancer_id.clone()).or_default(),
                };
                push(
                    q,
                    Sample {
                        at_ms: r.at_ms,
                        value: r.count,
                    },
                    keep,
                );
            }
            Event::MemberHealthStat(h) => {
                let id = &h.instance.member_id;
                self.liveness.stat(id, now_ms, h.ports_open);
                if h.memory_consumption.is_none() && h.load_average.is_none() {
                    return;
                }
                let m = match w.members.get_mut(id) {
                    Some(m) => m,
                    None => w.members.entry(id.clone()).or_default(),
                };
                if let Some(value) = h.memory_consumption {
                    push(
                        &mut m.memory,
                        Sample {
                            at_ms: h.at_ms,
                            value,
                        },
                        keep,
                    );
                }
                if let Some(value) = h.load_average {
                    push(
                        &mut m.load,
                        Sample {
                            at_ms: h.at_ms,
                            value,
                        },
                        keep,
                    );
                }
            }
            _ => {}
        }
    }

    /// One decision round at `now`: faults, every cluster instance's decision, and the commands
    /// that follow from them.
    pub fn round(&mut self, state: &ControllerState, now: u64) -> Round {
        let config = self.config;
        let fault_ms = config.fault_timeout.as_millis() as u64;
        let mut activated: Vec<Command> = starting_members(state)
            .filter(|m| self.liveness.reporting(&m.member_id, now, fault_ms))
            .map(|m| {
                Command::Activated(nubo_events::InstanceRef {
                    application_id: m.application_id.clone(),
                    service_name: m.service_name.clone(),
                    cluster_id: m.cluster_id.clone(),
                    cluster_instance_id: m.cluster_instance_id.clone(),
                    member_id: m.member_id.clone(),
                    network_partition_id: m.network_partition_id.clone(),
                    partition_id: m.partition_id.clone(),
                })
            })
            .collect();
        let mut commands: Vec<Command> = self
            .liveness
            .check(
                active_members(state),
                now,
                config.fault_timeout.as_millis() as u64,
            )
            .into_iter()
            .map(|(member, reason)| Command::Fault { member, reason })
            .collect();
        commands.append(&mut activated);
        let events = evaluate(state, &mut self.w, config, now);
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
            commands.push(Command::ScaleIn {
                application,
                instance,
            });
        }
        // Forget the members and clusters whose statistics stopped.
        let keep = config.window.as_millis() as u64 * 2;
        self.w
            .members
            .retain(|_, m| now.saturating_sub(m.newest()) <= keep);
        self.w.rif.retain(|_, lbs| {
            lbs.retain(|_, q| {
                q.back()
                    .is_some_and(|s| now.saturating_sub(s.at_ms) <= keep)
            });
            !lbs.is_empty()
        });
        // Forget the cluster instances that are gone.
        if self.w.first_seen.len() > events.len() {
            let live: BTreeSet<String> = events
                .iter()
                .map(|e| format!("{}|{}", e.cluster_id, e.instance_id))
                .collect();
            self.w.first_seen.retain(|k, _| live.contains(k));
        }
        Round { events, commands }
    }

    /// The command a decision calls for (the victim of a scale-down chosen here), noting the
    /// time of the scaling for the cool-downs.
    fn command(&mut self, state: &ControllerState, e: &ScalingEvent, now: u64) -> Option<Command> {
        let (cluster, instance) = (&e.cluster_id, &e.instance_id);
        let key = format!("{cluster}|{instance}");
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
                Some(Command::ScaleTo {
                    cluster: cluster.clone(),
                    instance: instance.clone(),
                    count: live().count() as u32 + add,
                })
            }
            Decision::ScaleDown => {
                // The least loaded active member: lowest predicted (load + memory) / 2.
                let w = &self.w;
                let load = |id: &str| {
                    let m = w.members.get(id);
                    (predicted(m.map(|m| &m.load), now, window_ms).unwrap_or(0.0)
                        + predicted(m.map(|m| &m.memory), now, window_ms).unwrap_or(0.0))
                        / 2.0
                };
                let victim = live()
                    .filter(|m| m.status == MemberStatus::Active)
                    .min_by(|a, b| {
                        load(&a.member_id)
                            .total_cmp(&load(&b.member_id))
                            .then_with(|| b.member_id.cmp(&a.member_id))
                    })
                    .map(|m| m.member_id.clone());
                self.w.last_down.insert(key, now);
                Some(Command::ScaleDown {
                    cluster: cluster.clone(),
                    instance: instance.clone(),
                    member: victim,
                })
            }
            // Full: the group grows or the application bursts (the controller decides which,
            // and does nothing while a new instance is still on its way).
            Decision::AtMax => Some(Command::BeyondMax {
                cluster: cluster.clone(),
                instance: instance.clone(),
            }),
            _ => None,
        }
    }
}

/// The members of deployed applications the controller sees initialized or starting.
fn starting_members(state: &ControllerState) -> impl Iterator<Item = &nubo_events::Member> {
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
fn active_members(state: &ControllerState) -> impl Iterator<Item = &str> {
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
fn evaluate(
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
                // Requests in flight: summed over the load balancers; a load balancer serving several
                // instances of the cluster reports for all of them, shared by active members.
                let rif = w.rif.get(&plan.cluster_id).and_then(|lbs| {
                    let values: Vec<f64> = lbs
                        .values()
                        .filter_map(|q| predicted(Some(q), now, window_ms))
                        .collect();
                    (!values.is_empty()).then(|| values.iter().sum::<f64>())
                });
                // Memory and load: the mean over the active members of each one's prediction.
                let (mut memory, mut load) = ((0.0, 0u32), (0.0, 0u32));
                for a in &active {
                    let Some(m) = w.members.get(&a.member_id) else {
                        continue;
                    };
                    if let Some(p) = predicted(Some(&m.memory), now, window_ms) {
                        memory = (memory.0 + p, memory.1 + 1);
                    }
                    if let Some(p) = predicted(Some(&m.load), now, window_ms) {
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
                    .entry(format!("{}|{}", plan.cluster_id, inst.instance_id))
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
            let key = format!("{}|{}", e.cluster_id, e.instance_id);
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
            if matches!(e.decision, Decision::ScaleUp { .. } | Decision::ScaleDown) {
                tracing::info!(cluster = %e.cluster_id, instance = %e.instance_id, required = ?e.required, active = e.active, starting = e.starting, decision = ?e.decision, "scaling decision");
            }
            out.push(e);
        }
    }
    out
}

/// The group instances and burst application instances to scale in: every cluster instance
/// with that id sits at its minimum wanting fewer, with nothing starting, and has not scaled
/// for the scale-down cool-down (nor been created more recently than that).
fn scale_ins(
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
        let key = format!("{}|{}", e.cluster_id, e.instance_id);
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(app: &str, at_ms: u64) -> ScalingEvent {
        ScalingEvent {
            at_ms,
            application_id: app.into(),
            cluster_id: format!("{app}.web.domain"),
            instance_id: format!("{app}-1"),
            decision: Decision::ScaleDown,
            required: rules::Required {
                requests_in_flight: None,
                memory: None,
                load: Some(1),
                count: Some(1),
                reason: None,
                dependents: None,
            },
            predicted: Predicted {
                requests_in_flight: None,
                memory_consumption: None,
                load_average: Some(3.0),
            },
            thresholds: nubo_controller::Thresholds::default(),
            active: 2,
            starting: 0,
            min: 1,
            max: 4,
        }
    }

    #[tokio::test]
    async fn a_server_without_an_autoscaler_reads_the_persisted_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = nubo_store::SqliteStore::open(&dir.path().join("nubo.db"))
            .await
            .unwrap();
        assert_eq!(
            recorded_for_application(&store, "a").await.unwrap(),
            [],
            "none yet"
        );
        let log = ScalingLog::default();
        log.push(event("a", 1));
        log.push(event("b", 2));
        log.push(event("a", 3));
        log.persist(&store).await;
        assert_eq!(
            recorded_for_application(&store, "a").await.unwrap(),
            [event("a", 1), event("a", 3)]
        );
        assert_eq!(
            recorded_for_application(&store, "b").await.unwrap(),
            log.for_application("b")
        );
    }
}
