//! The monitor: the I/O around the pure [`Engine`] (`engine.rs`, over the windows of
//! `windows.rs`). Statistics come from the bus, a round runs every tick over the controller's
//! state (under its lock in this process, or read from the store for a controller in another),
//! the commands go to the controller, and the decisions to the [`ScalingLog`], persisted per
//! application. [`start_event_processor`] runs the event processor alone.

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

mod engine;
#[cfg(test)]
mod tests;
mod windows;

pub use engine::{Engine, EventProcessor, PREDICTIONS_PER_EVENT, Round};
use windows::*;

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

/// The cloud controller the autoscaler decides for.
pub enum Target {
    /// In this process: each round decides under the controller's lock (no copy of its state),
    /// and commands go straight to it.
    Local(ControllerHandle),
    /// In another process (`--components autoscaler` without `controller`): each round reads the
    /// controller's state from the store, where the controller writes it before acting, and
    /// commands go through the bus (`ControlScale`) to whichever controller runs.
    Remote {
        /// The controller's state, a replica kept current from its journal in the store (each
        /// round reads only what changed).
        control: Box<RemoteControl>,
        /// The bus the commands go on.
        events: EventBus,
    },
}

impl Target {
    /// A controller in another process, reached through the store (its state) and the bus.
    pub fn remote(store: Arc<dyn Store>, events: EventBus) -> Target {
        Target::Remote {
            control: Box::new(RemoteControl::new(store, events.clone())),
            events,
        }
    }

    /// One decision round over the controller's current state (`None` when it cannot be read).
    async fn round(&self, engine: &mut Engine, now: u64) -> Option<Round> {
        match self {
            Target::Local(c) => c.read(|state| engine.round(state, now)),
            Target::Remote { control, .. } => {
                control.read(|state, _| engine.round(state, now)).await
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
    let quota_store = store.clone();
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
        let mut dropped = 0;
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
                    // The tenants' instance quotas, as they are now (a small read a round).
                    if let Some(store) = &quota_store {
                        match store
                            .list(nubo_model::SUPER_TENANT_ID, nubo_model::QUOTA_KIND)
                            .await
                        {
                            Ok(rows) => engine.set_quotas(
                                rows.into_iter()
                                    .filter_map(|r| serde_json::from_value::<nubo_model::TenantQuota>(r.body).ok())
                                    .filter_map(|q| Some((q.tenant_id, q.instances?)))
                                    .collect(),
                            ),
                            Err(e) => tracing::warn!(error = %e, "cannot read the tenants' quotas: the last ones read hold"),
                        }
                    }
                    if stats.dropped() > dropped {
                        dropped = stats.dropped();
                        engine.statistics_dropped(now);
                    }
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
                    nubo_telemetry::statistics_path(engine.statistics_lag_ms(), engine.faults_held(now));
                    for e in round.events {
                        if matches!(e.decision, Decision::ScaleUp { .. } | Decision::ScaleDown | Decision::AtMax | Decision::AtQuota) {
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
