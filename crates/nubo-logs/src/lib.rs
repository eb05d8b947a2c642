//! Workloads' logs. Each member's agent ships its workload's output over the bus (`InstanceLog`
//! on `nubo/v1/logs`, proved with the member's key); every API server keeps the recent lines of
//! every member in memory ([`store::LogStore`], bounded per member, in all, and in time), and
//! serves them to the member's own tenant, as a list or followed as they come.
//!
//! Where they are kept: in the memory of each process that serves the API (all in one: the
//! server; distributed: every API server, each following the bus by itself), for an hour after a
//! member's last line at most; a server that starts again has only what arrived since. The
//! agent's own copy, `workload.log` in the member's directory on its host (rotated at 8 MiB),
//! holds the rest.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nubo_bus::EventBus;
use nubo_events::{Category, Event, LogBatch};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

pub mod store;

pub use store::{Limits, LogStore, Owner, Query, Record};

/// Who owns a member: its application and tenant, from the platform's topology (never from what
/// the member says).
#[async_trait::async_trait]
pub trait Owners: Send + Sync + 'static {
    /// The member's owner; `None` when the topology does not know it.
    async fn owner(&self, member_id: &str) -> Option<Owner>;
}

/// A line as followers get it: the record and its owner.
#[derive(Debug, Clone)]
pub struct Tagged {
    /// The member's owner.
    pub owner: Owner,
    /// The line.
    pub record: Record,
}

#[derive(Clone, Default)]
struct Metrics {
    lines: Counter,
    dropped_by_agents: Counter,
    evicted: Counter,
    refused: Counter,
    bytes: Gauge,
}

/// The log store of this process, and the lines as they come for followers.
pub struct Logs {
    store: Mutex<LogStore>,
    owners: Mutex<HashMap<String, Owner>>,
    live: broadcast::Sender<Arc<Tagged>>,
    metrics: Metrics,
}

/// How many lines a follower may lag before it misses some (and is told how many).
pub const FOLLOW_BUFFER: usize = 16_384;

fn now_ms() -> u64 {
    nubo_bus::now_ms()
}

impl Logs {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Arc<Self> {
        let (live, _) = broadcast::channel(FOLLOW_BUFFER);
        Arc::new(Logs {
            store: Mutex::new(LogStore::new(limits)),
            owners: Mutex::new(HashMap::new()),
            live,
            metrics: Metrics::default(),
        })
    }

    /// Registers the store's metrics.
    pub fn register_metrics(&self, r: &mut Registry) {
        let m = &self.metrics;
        r.register(
            "nubo_logs_lines",
            "Workload log lines taken from agents",
            m.lines.clone(),
        );
        r.register(
            "nubo_logs_dropped_by_agents",
            "Workload log lines agents dropped because the platform did not take them fast enough",
            m.dropped_by_agents.clone(),
        );
        r.register(
            "nubo_logs_evicted",
            "Workload log lines pushed out of the store by its bounds",
            m.evicted.clone(),
        );
        r.register(
            "nubo_logs_refused_batches",
            "Log batches of members the topology does not know",
            m.refused.clone(),
        );
        r.register(
            "nubo_logs_bytes",
            "Bytes of workload logs kept",
            m.bytes.clone(),
        );
    }

    /// Takes a batch of a member owned by `owner`.
    pub fn take(&self, owner: Owner, batch: &LogBatch) {
        let (made, done) = match self.store.lock() {
            Ok(mut s) => {
                let r = s.append(owner.clone(), batch, now_ms());
                self.metrics.bytes.set(s.bytes() as i64);
                r
            }
            Err(_) => return,
        };
        self.metrics.lines.inc_by(done.lines);
        self.metrics.dropped_by_agents.inc_by(done.dropped_by_agent);
        self.metrics.evicted.inc_by(done.evicted);
        for record in made {
            // No follower: nothing to do.
            let _ = self.live.send(Arc::new(Tagged {
                owner: owner.clone(),
                record,
            }));
        }
    }

    /// The lines of `application` of `tenant` that `q` asks for.
    pub fn read(&self, tenant: i64, application: &str, q: &Query) -> Vec<Record> {
        match self.store.lock() {
            Ok(s) => s.read(tenant, application, q),
            Err(_) => Vec::new(),
        }
    }

    /// Lines as they come (subscribe before reading the history, then skip what the history
    /// had: records carry their `seq`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Tagged>> {
        self.live.subscribe()
    }

    /// Follows the bus's logs topic until it ends, resolving each member's owner once.
    pub async fn follow(
        self: &Arc<Self>,
        events: &EventBus,
        owners: Arc<dyn Owners>,
    ) -> Result<tokio::task::JoinHandle<()>, nubo_bus::BusError> {
        let mut sub = events.subscribe(Category::Logs).await?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(e) = sub.recv().await {
                let Event::InstanceLog(batch) = e else {
                    continue;
                };
                let known = me
                    .owners
                    .lock()
                    .ok()
                    .and_then(|o| o.get(&batch.member_id).cloned());
                let owner = match known {
                    Some(o) => Some(o),
                    None => {
                        let o = owners.owner(&batch.member_id).await;
                        if let (Some(o), Ok(mut cache)) = (&o, me.owners.lock()) {
                            // Bounded: the cache is cleared when it outgrows a platform's members.
                            if cache.len() > 1_000_000 {
                                cache.clear();
                            }
                            cache.insert(batch.member_id.clone(), o.clone());
                        }
                        o
                    }
                };
                match owner {
                    Some(o) => me.take(o, &batch),
                    None => {
                        me.metrics.refused.inc();
                        tracing::debug!(member = %batch.member_id, "logs of a member the topology does not know: dropped");
                    }
                }
            }
        }))
    }
}
