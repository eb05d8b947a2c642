//! The `mock` IaaS provider (compatible with Stratos' mock IaaS): instances that exist only in this process,
//! answer the agent handshake on the bus like a real agent (MemberInitialized → InstanceStarted,
//! MemberStarted → InstanceActivated after a configurable boot delay, clean-up → maintenance →
//! ready to shut down), and publish health statistics from `mock-iaas.xml` patterns on a
//! controllable clock. Mock members go through the same bus, event processor and autoscaler as
//! real ones. Beyond Stratos' mock: a boot delay, injected start failures, a clock that runs
//! faster than real time and can be moved forward, and patterns that start over when a type's
//! first instance starts (Stratos resumes mid-pattern on a redeploy).
//!
//! `DELETE` through the API ([`MockIaas::kill`]) makes an instance vanish without a word, as a
//! lost virtual machine: its statistics stop, the event processor declares a member fault, and
//! the controller replaces it.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Serialize;

use nubo_bus::EventBus;
use nubo_events::{Category, Event, InstanceRef, MemberHealth, MemberPort, RequestsInFlight};
use nubo_iaas::{IaasError, MemberSpec, Provider, StartedMember};

pub mod patterns;

pub use patterns::Patterns;

/// Settings of the mock IaaS.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Health-statistics patterns by cartridge type.
    pub patterns: Patterns,
    /// Mock seconds per real second (pattern sample durations pass this much faster).
    pub speed: f64,
    /// Real time between two health statistics of a member (Stratos: 15 s).
    pub stats_interval: Duration,
    /// Real time from a member's start to its activation.
    pub boot_delay: Duration,
    /// Where the instances are kept, so that they outlive a restart of the server as virtual
    /// machines outlive a restart of Stratos (`None`: in memory only).
    pub state_file: Option<std::path::PathBuf>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            patterns: Patterns::default(),
            speed: 1.0,
            stats_interval: Duration::from_secs(1),
            boot_delay: Duration::ZERO,
            state_file: None,
        }
    }
}

/// The mock IaaS's clock: real time times a speed, plus manual advances.
#[derive(Debug)]
pub struct MockClock {
    origin: Instant,
    speed: f64,
    advanced_ms: AtomicU64,
}

impl MockClock {
    /// A clock running `speed` times real time.
    pub fn new(speed: f64) -> Self {
        MockClock {
            origin: Instant::now(),
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            advanced_ms: AtomicU64::new(0),
        }
    }

    /// Mock seconds since the clock started.
    pub fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * self.speed
            + self.advanced_ms.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.advanced_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Where a mock instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InstanceState {
    /// Started; waiting for the controller's MemberInitialized / MemberStarted.
    Starting,
    /// Active: publishing statistics.
    Active,
    /// Cleaned up; about to be terminated.
    Maintenance,
}

/// A mock instance, as the API shows it (Stratos' `MockInstanceMetadata` and context).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MockInstance {
    /// Instance id (= member id, as in Stratos).
    pub instance_id: String,
    /// Member.
    pub member_id: String,
    /// Application.
    pub application_id: String,
    /// Cartridge type.
    pub service_name: String,
    /// Cluster.
    pub cluster_id: String,
    /// Cluster instance.
    pub cluster_instance_id: String,
    /// Network partition.
    pub network_partition_id: String,
    /// Partition.
    pub partition_id: String,
    /// Private address (10.0.x.y).
    pub default_private_ip: String,
    /// Public address (20.0.x.y).
    pub default_public_ip: String,
    /// Its payload.
    pub payload: BTreeMap<String, String>,
    /// Where it is in its life.
    pub state: InstanceState,
    /// When it was started (ms since the epoch).
    pub started_at_ms: u64,
    /// The slice of the statistics interval it reports in (from its id: stable; computed once).
    #[serde(skip)]
    slice: u32,
}

impl MockInstance {
    fn instance_ref(&self) -> InstanceRef {
        InstanceRef {
            application_id: self.application_id.clone(),
            service_name: self.service_name.clone(),
            cluster_id: self.cluster_id.clone(),
            cluster_instance_id: self.cluster_instance_id.clone(),
            member_id: self.member_id.clone(),
            network_partition_id: self.network_partition_id.clone(),
            partition_id: self.partition_id.clone(),
        }
    }
}

#[derive(Default)]
struct Inner {
    instances: BTreeMap<String, MockInstance>,
    /// Instances per cartridge type (a type's patterns start over when its last one goes).
    per_type: HashMap<String, usize>,
    /// When each cartridge type's patterns started (mock seconds).
    epochs: HashMap<String, f64>,
    /// Injected failures: the next N starts of a type fail.
    fail_next: HashMap<String, u32>,
}

/// The mock IaaS.
pub struct MockIaas {
    config: MockConfig,
    clock: MockClock,
    events: EventBus,
    inner: Mutex<Inner>,
    addresses: AtomicU32,
    /// The state file, open for appending.
    log: Mutex<Option<StateLog>>,
}

/// One line of the state file: an instance as it is now, or one that is gone.
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(clippy::large_enum_variant)]
enum LogLine {
    Put(MockInstance),
    Del(String),
}

/// The state file: a line per change (`{"put":…}` or `{"del":"id"}`), so that a change costs a
/// line, never the whole list; rewritten with only the live instances once it holds more than
/// twice as many lines as there are instances.
struct StateLog {
    path: std::path::PathBuf,
    file: std::fs::File,
    lines: usize,
}

impl StateLog {
    fn open(path: &std::path::Path) -> std::io::Result<StateLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(StateLog {
            path: path.to_path_buf(),
            file,
            lines: 0,
        })
    }

    fn append(&mut self, lines: &[LogLine]) -> std::io::Result<()> {
        use std::io::Write;
        let mut bytes = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut bytes, line).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
        }
        self.file.write_all(&bytes)?;
        self.lines += lines.len();
        Ok(())
    }

    /// Rewrites the file with `live` only (a temporary file renamed over it).
    fn compact<'a>(&mut self, live: impl Iterator<Item = &'a MockInstance>) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut n = 0;
        for m in live {
            serde_json::to_writer(&mut out, &LogLine::Put(m.clone()))
                .map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
            n += 1;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&tmp, &self.path)?;
        *self = StateLog::open(&self.path)?;
        self.lines = n;
        Ok(())
    }
}

/// The instances a state file holds: its lines applied in order (or, in the format of earlier
/// versions, one JSON list).
fn read_state(bytes: &[u8]) -> Result<Vec<MockInstance>, serde_json::Error> {
    if bytes.first() == Some(&b'[') {
        return serde_json::from_slice(bytes);
    }
    let mut live: BTreeMap<String, MockInstance> = BTreeMap::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<LogLine>(line) {
            Ok(LogLine::Put(m)) => {
                live.insert(m.instance_id.clone(), m);
            }
            Ok(LogLine::Del(id)) => {
                live.remove(&id);
            }
            // A line cut short by a crash: what came before stands.
            Err(e) if e.is_eof() => break,
            Err(e) => return Err(e),
        }
    }
    Ok(live.into_values().collect())
}

/// Slices of the statistics interval: each instance reports in one of them.
const SLICES: u32 = 20;

/// The slice an instance reports in (from its id: stable across restarts).
fn slice_of(instance_id: &str) -> u32 {
    let h = instance_id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h % SLICES
}

fn address(prefix: u8, n: u32) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

impl MockIaas {
    /// Starts the mock IaaS: follows the topology and the instance notifier on the bus, and
    /// publishes its Active instances' statistics.
    pub async fn start(
        events: EventBus,
        config: MockConfig,
    ) -> Result<Arc<Self>, nubo_bus::BusError> {
        // What a mock instance answers; the complete topology is large, and never decoded here.
        let mut topology = events
            .subscribe_only(Category::Topology, &["MemberInitialized", "MemberStarted"])
            .await?;
        let mut notifier = events
            .subscribe_only(
                Category::InstanceNotifier,
                &[
                    "InstanceCleanupMember",
                    "InstanceCleanupCluster",
                    "InstanceArtifactUpdate",
                ],
            )
            .await?;
        let mut inner = Inner::default();
        let mut addresses = 0;
        if let Some(file) = &config.state_file {
            match std::fs::read(file) {
                Ok(bytes) => match read_state(&bytes) {
                    Ok(list) => {
                        // Patterns start over: the mock clock restarts with the server.
                        for mut m in list {
                            m.slice = slice_of(&m.instance_id);
                            inner.epochs.entry(m.service_name.clone()).or_insert(0.0);
                            *inner.per_type.entry(m.service_name.clone()).or_default() += 1;
                            addresses += 1;
                            inner.instances.insert(m.instance_id.clone(), m);
                        }
                        tracing::info!(instances = inner.instances.len(), file = %file.display(), "mock IaaS instances restored");
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "unreadable mock IaaS state: starting without instances")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cannot read the mock IaaS state")
                }
            }
        }
        // The file starts as the live instances, then takes a line per change.
        let log = match &config.state_file {
            Some(file) => {
                let opened = StateLog::open(file)
                    .and_then(|mut log| log.compact(inner.instances.values()).map(|()| log));
                match opened {
                    Ok(log) => Some(log),
                    Err(e) => {
                        tracing::warn!(file = %file.display(), error = %e, "cannot write the mock IaaS state: instances will not outlive a restart");
                        None
                    }
                }
            }
            None => None,
        };
        let mock = Arc::new(MockIaas {
            clock: MockClock::new(config.speed),
            config,
            events,
            inner: Mutex::new(inner),
            addresses: AtomicU32::new(addresses),
            log: Mutex::new(log),
        });
        let me = mock.clone();
        tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    e = topology.recv() => e,
                    e = notifier.recv() => e,
                };
                match e {
                    Some(e) => me.on_event(e).await,
                    None => return,
                }
            }
        });
        let me = mock.clone();
        tokio::spawn(async move {
            // Each instance reports once per interval, in its own slice of it (as agents that
            // started at different times do), not all at once.
            let mut tick = tokio::time::interval(me.config.stats_interval / SLICES);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut slice = 0;
            loop {
                tick.tick().await;
                me.publish_statistics(slice).await;
                slice = (slice + 1) % SLICES;
            }
        });
        Ok(mock)
    }

    /// The clock patterns run on.
    pub fn clock(&self) -> &MockClock {
        &self.clock
    }

    /// Every instance.
    pub fn list(&self) -> Vec<MockInstance> {
        self.inner
            .lock()
            .map(|i| i.instances.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One instance.
    pub fn get(&self, instance_id: &str) -> Option<MockInstance> {
        self.inner.lock().ok()?.instances.get(instance_id).cloned()
    }

    /// Makes an instance vanish without a word, as a lost virtual machine (Stratos' `DELETE
    /// /instances/{id}`): its statistics stop, and the event processor's fault detection has the
    /// member replaced. `false`: no such instance.
    pub fn kill(&self, instance_id: &str) -> bool {
        self.remove(instance_id).is_some()
    }

    /// The next `count` starts of `cartridge_type` fail.
    pub fn fail_next_starts(&self, cartridge_type: &str, count: u32) {
        if let Ok(mut i) = self.inner.lock() {
            i.fail_next.insert(cartridge_type.to_owned(), count);
        }
    }

    /// Records a change in the state file: a line, and now and then a rewrite of the live
    /// instances (`inner`, still locked by the caller, so that lines stay in the order of the
    /// changes).
    fn record(&self, inner: &Inner, line: LogLine) {
        self.record_all(inner, vec![line]);
    }

    /// Records changes in the state file with one write.
    fn record_all(&self, inner: &Inner, lines: Vec<LogLine>) {
        if lines.is_empty() {
            return;
        }
        let Ok(mut log) = self.log.lock() else { return };
        let Some(log) = log.as_mut() else { return };
        let result = if log.lines + lines.len() > 2 * inner.instances.len() + 1_000 {
            log.compact(inner.instances.values())
        } else {
            log.append(&lines)
        };
        if let Err(e) = result {
            tracing::warn!(file = %log.path.display(), error = %e, "cannot write the mock IaaS state");
        }
    }

    fn remove(&self, instance_id: &str) -> Option<MockInstance> {
        let mut i = self.inner.lock().ok()?;
        let gone = i.instances.remove(instance_id)?;
        // The last instance of a type gone: its patterns start over with the next one.
        let left = i.per_type.get_mut(&gone.service_name).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left.unwrap_or(0) == 0 {
            i.per_type.remove(&gone.service_name);
            i.epochs.remove(&gone.service_name);
        }
        self.record(&i, LogLine::Del(gone.instance_id.clone()));
        Some(gone)
    }

    fn set_state(
        &self,
        member_id: &str,
        from: &[InstanceState],
        to: InstanceState,
    ) -> Option<InstanceRef> {
        let mut i = self.inner.lock().ok()?;
        let m = i.instances.get_mut(member_id)?;
        if !from.contains(&m.state) {
            return None;
        }
        m.state = to;
        let r = m.instance_ref();
        let line = LogLine::Put(m.clone());
        self.record(&i, line);
        Some(r)
    }

    /// Publishes; a failure is logged and counted by the bus (`PublishFailed`).
    async fn publish(&self, e: Event) {
        let _ = self.events.publish(&e).await;
    }

    async fn on_event(self: &Arc<Self>, e: Event) {
        match e {
            Event::MemberInitialized(c) => {
                // As an agent does once its member shows in the topology.
                if let Some(r) = self
                    .get(&c.member.member_id)
                    .filter(|m| m.state == InstanceState::Starting)
                {
                    self.publish(Event::InstanceStarted(r.instance_ref())).await;
                }
            }
            Event::MemberStarted(c) => {
                let me = self.clone();
                let id = c.member.member_id;
                let delay = self.config.boot_delay;
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(r) =
                        me.set_state(&id, &[InstanceState::Starting], InstanceState::Active)
                    {
                        me.publish(Event::InstanceActivated(r)).await;
                    }
                });
            }
            Event::InstanceCleanupMember { member_id } => self.clean_up(&[member_id]).await,
            // A simulated instance has no files: it answers an artifact update at once.
            Event::InstanceArtifactUpdate { member_id } => {
                let active = self.inner.lock().ok().and_then(|i| {
                    i.instances
                        .get(&member_id)
                        .filter(|m| m.state == InstanceState::Active)
                        .map(|m| m.instance_ref())
                });
                if let Some(r) = active {
                    self.publish(Event::InstanceArtifactUpdated {
                        instance: r,
                        commit: Some("mock".into()),
                        error: None,
                    })
                    .await;
                }
            }
            Event::InstanceCleanupCluster {
                cluster_id,
                cluster_instance_id,
            } => {
                let ids: Vec<String> = self
                    .list()
                    .into_iter()
                    .filter(|m| {
                        m.cluster_id == cluster_id && m.cluster_instance_id == cluster_instance_id
                    })
                    .map(|m| m.member_id)
                    .collect();
                self.clean_up(&ids).await;
            }
            _ => {}
        }
    }

    async fn clean_up(&self, ids: &[String]) {
        for id in ids {
            let from = [InstanceState::Starting, InstanceState::Active];
            if let Some(r) = self.set_state(id, &from, InstanceState::Maintenance) {
                self.publish(Event::InstanceMaintenanceMode(r.clone()))
                    .await;
                self.publish(Event::InstanceReadyToShutdown(r)).await;
            }
        }
    }

    /// One slice of a round of statistics: the Active instances of that slice their type's
    /// values now; with the first slice, requests in flight once per cluster instance.
    async fn publish_statistics(&self, slice: u32) {
        let now = self.clock.now();
        let at_ms = nubo_bus::now_ms();
        let mut stats = Vec::new();
        let mut rif = BTreeMap::new();
        if let Ok(i) = self.inner.lock() {
            for m in i
                .instances
                .values()
                .filter(|m| m.state == InstanceState::Active)
            {
                let mine = m.slice == slice;
                if !mine && slice != 0 {
                    continue;
                }
                let since = i.epochs.get(&m.service_name).copied().unwrap_or(now);
                let v = self.config.patterns.values(&m.service_name, now - since);
                if mine && (v.memory_consumption.is_some() || v.load_average.is_some()) {
                    stats.push(MemberHealth {
                        instance: m.instance_ref(),
                        memory_consumption: v.memory_consumption,
                        load_average: v.load_average,
                        ports_open: true,
                        at_ms,
                    });
                }
                if let Some(count) = v.requests_in_flight.filter(|_| slice == 0) {
                    rif.entry((m.cluster_id.clone(), m.cluster_instance_id.clone()))
                        .or_insert((m.network_partition_id.clone(), count));
                }
            }
        }
        for s in stats {
            self.publish(Event::MemberHealthStat(s)).await;
        }
        for ((cluster_id, instance_id), (np, count)) in rif {
            self.publish(Event::InFlightRequests(RequestsInFlight {
                load_balancer_id: format!("mock-iaas/{instance_id}"),
                cluster_id,
                network_partition_id: np,
                cluster_instance_id: Some(instance_id),
                count,
                served: 0,
                at_ms,
            }))
            .await;
        }
    }
}

impl MockIaas {
    /// Starts one instance under the state's lock (`inner`); the line to record it with.
    fn start_locked(
        &self,
        i: &mut Inner,
        req: &MemberSpec,
    ) -> (Result<StartedMember, IaasError>, Option<LogLine>) {
        let m = &req.member;
        if let Some(left) = i.fail_next.get_mut(&m.service_name).filter(|n| **n > 0) {
            *left -= 1;
            return (
                Err(IaasError::Failed(format!(
                    "mock IaaS: injected start failure for cartridge type {}",
                    m.service_name
                ))),
                None,
            );
        }
        let n = self.addresses.fetch_add(1, Ordering::Relaxed) + 1;
        let instance = MockInstance {
            instance_id: m.member_id.clone(),
            member_id: m.member_id.clone(),
            application_id: m.application_id.clone(),
            service_name: m.service_name.clone(),
            cluster_id: m.cluster_id.clone(),
            cluster_instance_id: m.cluster_instance_id.clone(),
            network_partition_id: m.network_partition_id.clone(),
            partition_id: m.partition_id.clone(),
            default_private_ip: address(10, n),
            default_public_ip: address(20, n),
            payload: req.parameters.clone(),
            state: InstanceState::Starting,
            started_at_ms: nubo_bus::now_ms(),
            slice: slice_of(&m.member_id),
        };
        let ip = instance.default_private_ip.clone();
        let now = self.clock.now();
        i.epochs.entry(m.service_name.clone()).or_insert(now);
        *i.per_type.entry(m.service_name.clone()).or_default() += 1;
        let line = LogLine::Put(instance.clone());
        i.instances.insert(m.member_id.clone(), instance);
        let started = StartedMember {
            ip,
            ports: req
                .ports
                .iter()
                .map(|p| MemberPort::of(p, p.port))
                .collect(),
        };
        (Ok(started), Some(line))
    }
}

#[async_trait]
impl Provider for MockIaas {
    async fn start(&self, req: MemberSpec) -> Result<StartedMember, IaasError> {
        self.start_many(vec![req])
            .await
            .pop()
            .unwrap_or_else(|| Err(IaasError::Failed("mock IaaS: no answer".into())))
    }

    /// Every instance under one lock, recorded with one write.
    async fn start_many(&self, specs: Vec<MemberSpec>) -> Vec<Result<StartedMember, IaasError>> {
        let Ok(mut i) = self.inner.lock() else {
            return specs
                .iter()
                .map(|_| Err(IaasError::Failed("mock IaaS state poisoned".into())))
                .collect();
        };
        let mut answers = Vec::with_capacity(specs.len());
        let mut lines = Vec::with_capacity(specs.len());
        for req in &specs {
            let (answer, line) = self.start_locked(&mut i, req);
            answers.push(answer);
            lines.extend(line);
        }
        self.record_all(&i, lines);
        tracing::debug!(instances = answers.len(), "mock instances started");
        answers
    }

    async fn terminate(&self, member_id: &str) -> Result<(), IaasError> {
        if self.remove(member_id).is_none() {
            return Err(IaasError::NotFound(member_id.to_owned()));
        }
        self.publish(Event::MemberProcessExited {
            member_id: member_id.to_owned(),
            code: Some(0),
            signal: None,
            reason: "the mock instance was terminated".into(),
        })
        .await;
        Ok(())
    }

    async fn running(&self) -> Result<Vec<String>, IaasError> {
        Ok(self.list().into_iter().map(|m| m.member_id).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use nubo_bus::MemoryBus;
    use nubo_events::{ClusterPort, Member, MemberStatus};

    use super::*;

    fn spec(id: &str) -> MemberSpec {
        MemberSpec {
            member: Member {
                member_id: id.into(),
                cluster_id: "app.web.svc.domain".into(),
                cluster_instance_id: "app-1".into(),
                service_name: "svc".into(),
                application_id: "app".into(),
                network_partition_id: "np".into(),
                partition_id: "p1".into(),
                status: MemberStatus::Created,
                default_private_ip: None,
                default_public_ip: None,
                ports: vec![],
                init_time: 0,
                failure: None,
                properties: BTreeMap::new(),
            },
            image: "svc".into(),
            ports: vec![ClusterPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 80,
                proxy_port: None,
            }],
            bus_url: String::new(),
            parameters: BTreeMap::new(),
            run_as: None,
        }
    }

    async fn mock(file: &std::path::Path) -> Arc<MockIaas> {
        let events = EventBus::new(Arc::new(MemoryBus::new()));
        MockIaas::start(
            events,
            MockConfig {
                state_file: Some(file.to_path_buf()),
                ..MockConfig::default()
            },
        )
        .await
        .unwrap()
    }

    fn ids(m: &MockIaas) -> Vec<String> {
        m.list().into_iter().map(|i| i.instance_id).collect()
    }

    #[tokio::test]
    async fn instances_outlive_a_restart_and_the_file_grows_by_a_line_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mock-iaas.json");
        let m = mock(&file).await;
        for i in 0..5 {
            m.start(spec(&format!("m{i}"))).await.unwrap();
        }
        assert!(m.kill("m1"));
        m.set_state("m2", &[InstanceState::Starting], InstanceState::Active)
            .unwrap();
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert_eq!(lines, 7, "5 starts, a removal, a change: a line each");
        drop(m);
        let again = mock(&file).await;
        assert_eq!(ids(&again), vec!["m0", "m2", "m3", "m4"]);
        assert_eq!(again.get("m2").unwrap().state, InstanceState::Active);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap().lines().count(),
            4,
            "rewritten with the live instances at start"
        );
    }

    #[tokio::test]
    async fn the_file_is_compacted_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mock-iaas.json");
        let m = mock(&file).await;
        for i in 0..3_000 {
            let id = format!("m{i}");
            m.start(spec(&id)).await.unwrap();
            if i % 2 == 1 {
                assert!(m.kill(&id));
            }
        }
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        assert!(
            lines < 4_500,
            "compacted: {lines} lines for 1,500 instances"
        );
        drop(m);
        // A crash in the middle of a line: the lines before it stand.
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("{\"put\":{\"instanceId\":\"m9");
        std::fs::write(&file, text).unwrap();
        assert_eq!(mock(&file).await.list().len(), 1_500);
        // The format of earlier versions (one JSON list) is read too.
        let old = serde_json::to_vec(&vec![mock(&file).await.get("m0").unwrap()]).unwrap();
        std::fs::write(&file, old).unwrap();
        assert_eq!(ids(&*mock(&file).await), vec!["m0".to_owned()]);
    }
}
