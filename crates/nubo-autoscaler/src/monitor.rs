//! The monitor: windows of statistics per cluster and per member, fed from the bus; every tick,
//! for each cluster instance, the rules decide and the controller scales.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use nubo_bus::EventBus;
use nubo_controller::{ControllerHandle, ControllerState, RemoteControl};
use nubo_events::{Category, Event, InstanceKey, InstanceStatus, MemberStatus, ScaleCommand};
use nubo_plan::scope_instance;
use nubo_store::{Key, Store, Write};
use nubo_telemetry::{InternalEvent, MemberFault, ScalingDecision};

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
    pub thresholds: nubo_plan::Thresholds,
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
    last_up: HashMap<InstanceKey, u64, Fast>,
    last_down: HashMap<InstanceKey, u64, Fast>,
    /// When each cluster instance was first evaluated (a new instance is not scaled in at once).
    first_seen: HashMap<InstanceKey, u64, Fast>,
    /// The predictions of an event processor in another process, when the statistics are
    /// processed there (then `rif` and `members` stay empty).
    received: Option<Received>,
}

/// Predictions received from an event processor in another process.
#[derive(Default)]
struct Received {
    /// When the last predictions arrived (this process's clock).
    last_ms: Option<u64>,
    /// Requests in flight per cluster, and when it arrived.
    clusters: HashMap<String, (f64, u64), Fast>,
    /// Memory and load per member, and when they arrived.
    members: HashMap<String, (Option<f64>, Option<f64>, u64), Fast>,
}

impl Windows {
    /// A cluster's predicted requests in flight, summed over the load balancers.
    fn requests(&self, cluster_id: &str, now: u64, window_ms: u64) -> Option<f64> {
        if let Some(r) = &self.received {
            return r.clusters.get(cluster_id).map(|(v, _)| *v);
        }
        let (sum, n) = self
            .rif
            .get(cluster_id)?
            .values()
            .filter_map(|q| predicted(Some(q), now, window_ms))
            .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
        (n > 0).then_some(sum)
    }

    /// A member's predicted memory consumption and load average (`None` when no statistics).
    fn member(
        &self,
        member_id: &str,
        now: u64,
        window_ms: u64,
    ) -> Option<(Option<f64>, Option<f64>)> {
        if let Some(r) = &self.received {
            return r.members.get(member_id).map(|(m, l, _)| (*m, *l));
        }
        let m = self.members.get(member_id)?;
        Some((
            predicted(Some(&m.memory), now, window_ms),
            predicted(Some(&m.load), now, window_ms),
        ))
    }

    /// Forgets the statistics (or predictions) older than `keep_ms`.
    fn forget(&mut self, now: u64, keep_ms: u64) {
        self.members
            .retain(|_, m| now.saturating_sub(m.newest()) <= keep_ms);
        self.rif.retain(|_, lbs| {
            lbs.retain(|_, q| {
                q.back()
                    .is_some_and(|s| now.saturating_sub(s.at_ms) <= keep_ms)
            });
            !lbs.is_empty()
        });
        if let Some(r) = &mut self.received {
            r.clusters
                .retain(|_, (_, at)| now.saturating_sub(*at) <= keep_ms);
            r.members
                .retain(|_, (_, _, at)| now.saturating_sub(*at) <= keep_ms);
        }
    }
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

/// Adds a health statistic (requests in flight, a member's memory and load) to the windows.
fn feed_windows(w: &mut Windows, config: MonitorConfig, e: &Event) {
    let keep = config.window.as_millis() as u64 * 2;
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
            if h.memory_consumption.is_none() && h.load_average.is_none() {
                return;
            }
            let id = &h.instance.member_id;
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

fn predicted(q: Option<&VecDeque<Sample>>, now: u64, window_ms: u64) -> Option<f64> {
    // Contiguous (see `push`), and in time order: one publisher per member, on an ordered topic.
    let (all, _) = q?.as_slices();
    let start = all.partition_point(|s| now.saturating_sub(s.at_ms) > window_ms);
    window(&all[start..]).map(|w| rules::predict(w, 1.0).max(0.0))
}

/// The cloud controller the autoscaler decides for.
pub enum Target {
    /// In this process: each round decides under the controller's lock (no copy of its state),
    /// and commands go straight to it.
    Local(ControllerHandle),
    /// In another process (`--components autoscaler` without `controller`): each round reads the
    /// controller's state from the store, where the controller writes it before acting, and
    /// commands go through the bus (`ControlScale`) to whichever controller runs.
    Remote {
        /// The controller's state, from the store.
        control: RemoteControl,
        /// The bus the commands go on.
        events: EventBus,
        /// The state last read, with its version (read again only when it changed).
        cache: Mutex<Option<(i64, ControllerState)>>,
    },
}

impl Target {
    /// A controller in another process, reached through the store (its state) and the bus.
    pub fn remote(store: Arc<dyn Store>, events: EventBus) -> Target {
        Target::Remote {
            control: RemoteControl::new(store, events.clone()),
            events,
            cache: Mutex::new(None),
        }
    }

    /// One decision round over the controller's current state (`None` when it cannot be read).
    async fn round(&self, engine: &mut Engine, now: u64) -> Option<Round> {
        match self {
            Target::Local(c) => c.read(|state| engine.round(state, now)),
            Target::Remote { control, cache, .. } => {
                let known = cache.lock().ok().and_then(|c| c.as_ref().map(|(v, _)| *v));
                let (version, fresh) = control.state_since(known).await?;
                let mut cache = cache.lock().ok()?;
                if let Some(state) = fresh {
                    *cache = Some((version, state));
                }
                let (_, state) = cache.as_ref()?;
                Some(engine.round(state, now))
            }
        }
    }

    /// Carries out one command.
    async fn apply(&self, command: ScaleCommand) -> Result<(), String> {
        match self {
            Target::Local(controller) => controller.scale(command).await.map_err(|e| e.to_string()),
            Target::Remote { events, .. } => events
                .publish(&Event::ControlScale { command })
                .await
                .map_err(|e| format!("cannot reach the controller through the bus: {e}")),
        }
    }
}

/// Where the autoscaler's statistics come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistics {
    /// The health statistics themselves, processed in this process (its own event processor).
    Here,
    /// The predictions of an event processor in another process ([`start_event_processor`]).
    Remote,
}

/// Starts the monitor in the background; its decisions go to the returned log.
pub async fn start(
    events: EventBus,
    target: Target,
    statistics: Statistics,
    config: MonitorConfig,
    store: Option<Arc<dyn Store>>,
) -> Result<ScalingLog, nubo_bus::BusError> {
    let mut stats = match statistics {
        Statistics::Here => events.subscribe(Category::HealthStats).await?,
        Statistics::Remote => events.subscribe(Category::Predictions).await?,
    };
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
        let mut engine = match statistics {
            Statistics::Here => Engine::new(config),
            Statistics::Remote => Engine::remote(config),
        };
        let mut silent_since = Some(nubo_bus::now_ms());
        let mut tick = tokio::time::interval(config.tick.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = stats.recv() => match e {
                    Some(e) => engine.feed(&e, nubo_bus::now_ms()),
                    None => return,
                },
                _ = tick.tick() => {
                    let now = nubo_bus::now_ms();
                    if statistics == Statistics::Remote {
                        let fresh = engine.predictions_fresh(now);
                        match silent_since {
                            Some(t) if fresh => {
                                tracing::info!(after_ms = now.saturating_sub(t), "predictions from the event processor arrive");
                                silent_since = None;
                            }
                            None if !fresh => {
                                tracing::warn!("no predictions from an event processor: no member is found faulty, and scaling decides on no statistics, until they arrive (is a server with the event-processor component running on this bus?)");
                                silent_since = Some(now);
                            }
                            _ => {}
                        }
                    }
                    let Some(round) = target.round(&mut engine, now).await else {
                        continue;
                    };
                    for e in round.events {
                        if matches!(e.decision, Decision::ScaleUp { .. } | Decision::ScaleDown | Decision::AtMax) {
                            log.push(e);
                        }
                    }
                    for c in round.commands {
                        match &c {
                            ScaleCommand::MemberActive { instance } => tracing::info!(member = %instance.member_id, "statistics from a member still starting: it is active (its report was lost)"),
                            ScaleCommand::MemberFault { member_id, reason } => MemberFault {
                                member_id,
                                kind: if reason.contains("ports closed") { "ports_closed" } else { "silent" },
                                reason,
                            }.emit(),
                            ScaleCommand::ScaleIn { application_id, instance_id } => tracing::info!(application = %application_id, instance = %instance_id, "every cluster of the instance is at its minimum: scaling it in"),
                            _ => {}
                        }
                        if let Err(e) = target.apply(c).await {
                            tracing::warn!(error = %e, "the controller did not take a scaling command");
                        }
                    }
                }
            }
        }
    });
    Ok(log_out)
}

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
            .filter_map(|id| {
                Some(nubo_events::ClusterPrediction {
                    cluster_id: id.clone(),
                    requests_in_flight: self.w.requests(id, now, window_ms)?,
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

/// Starts an event processor alone in the background: it publishes its predictions every tick
/// for an autoscaler in another process.
pub async fn start_event_processor(
    events: EventBus,
    config: MonitorConfig,
) -> Result<(), nubo_bus::BusError> {
    let mut stats = events.subscribe(Category::HealthStats).await?;
    tokio::spawn(async move {
        let mut cep = EventProcessor::new(config);
        let mut tick = tokio::time::interval(config.tick.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = stats.recv() => match e {
                    Some(e) => cep.feed(&e, nubo_bus::now_ms()),
                    None => return,
                },
                _ = tick.tick() => {
                    for e in cep.predictions(nubo_bus::now_ms(), PREDICTIONS_PER_EVENT) {
                        if let Err(err) = events.publish(&e).await {
                            tracing::warn!(error = %err, "cannot publish the predictions");
                            break;
                        }
                    }
                }
            }
        }
    });
    Ok(())
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
}

impl Engine {
    /// An engine with empty windows, fed with the statistics themselves (its event processor in
    /// the same process).
    pub fn new(config: MonitorConfig) -> Engine {
        Engine {
            config,
            w: Windows::default(),
            liveness: Liveness::default(),
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
        }
    }

    /// Whether this engine's statistics come as predictions, and have within the fault timeout.
    fn predictions_fresh(&self, now: u64) -> bool {
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
                for c in &p.clusters {
                    r.clusters
                        .insert(c.cluster_id.clone(), (c.requests_in_flight, now_ms));
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
        let mut commands = if self.predictions_fresh(now) {
            self.liveness_commands(state, now)
        } else {
            Vec::new()
        };
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
            commands.push(ScaleCommand::ScaleIn {
                application_id: application,
                instance_id: instance,
            });
        }
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

    /// Faulty Active members, and starting members whose statistics prove them active.
    fn liveness_commands(&mut self, state: &ControllerState, now: u64) -> Vec<ScaleCommand> {
        let fault_ms = self.config.fault_timeout.as_millis() as u64;
        let mut activated: Vec<ScaleCommand> = starting_members(state)
            .filter(|m| self.liveness.reporting(&m.member_id, now, fault_ms))
            .map(|m| ScaleCommand::MemberActive { instance: m.into() })
            .collect();
        let mut commands: Vec<ScaleCommand> = self
            .liveness
            .check(active_members(state), now, fault_ms)
            .into_iter()
            .map(|(member_id, reason)| ScaleCommand::MemberFault { member_id, reason })
            .collect();
        commands.append(&mut activated);
        commands
    }

    /// The command a decision calls for (the victim of a scale-down chosen here), noting the
    /// time of the scaling for the cool-downs.
    fn command(
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
                // The least loaded active member: lowest predicted (load + memory) / 2.
                let w = &self.w;
                let load = |id: &str| {
                    let (mem, ld) = w.member(id, now, window_ms).unwrap_or((None, None));
                    (ld.unwrap_or(0.0) + mem.unwrap_or(0.0)) / 2.0
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
                let rif = w.requests(&plan.cluster_id, now, window_ms);
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
            thresholds: nubo_plan::Thresholds::default(),
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
