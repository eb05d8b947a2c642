//! The controller's runtime: feeds bus events, API commands and ticks into the state machine,
//! in batches of what has arrived; writes the inputs that changed the state to its journal in
//! one transaction per batch (fenced under `--ha`) before carrying out their actions (publish,
//! start and stop members through IaaS providers); snapshots the state now and then; and
//! re-publishes the complete topology periodically.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nubo_bus::EventBus;
use nubo_events::{Category, Event, ScaleCommand};
use nubo_store::{Fence as StoreFence, Store, StoreError};
use tokio::sync::mpsc;

use crate::control::ControlError;
use crate::journal;
use crate::state::{Action, ControllerState, Input};
use nubo_iaas::{MemberSpec, Provider};
use nubo_plan::DeploymentStatus;
use nubo_plan::{ClusterPlan, DeploymentPlan};
use nubo_telemetry::{InternalEvent, MemberStartFailed, MemberStarted};

/// Commands (from the API and the autoscaler in this process) waiting for the controller at
/// most; more wait to be taken in.
pub const COMMAND_INBOX: usize = 1_024;
/// Most inputs stepped and written to the journal together.
pub const MAX_BATCH: usize = 1_024;
/// A snapshot is written once the journal since the last one is larger than this, or than the
/// last snapshot, whichever is larger: the cost of snapshots stays proportional to what changed,
/// and a restart replays at most about a snapshot's worth of entries.
pub const MIN_SNAPSHOT_GAP: usize = 1 << 20;
/// Starts in flight per provider (each a batch of at most [`START_BATCH`] members): a deploy or
/// scale-up of thousands of members never asks a provider (a node, an engine) for thousands of
/// starts at once.
pub const STARTS_IN_FLIGHT: usize = 8;
/// Members per start batch.
pub const START_BATCH: usize = 256;
/// How long to wait before writing the journal again after the store failed.
const RETRY: Duration = Duration::from_millis(500);

/// How often time advances in the state machine: timeouts, retries after a backoff, clean-up
/// requests sent again (each tick converges every deployment).
pub const TICK: Duration = Duration::from_secs(1);
/// How often the complete topology is re-published, for a receiver that missed events (as
/// Stratos does); a receiver that starts asks for it at once (`CompleteTopologyRequest`).
pub const RESYNC: Duration = Duration::from_secs(60);

/// Settings of the controller.
#[derive(Clone)]
pub struct ControllerConfig {
    /// Providers by name (`local`, `mock`).
    pub providers: BTreeMap<String, Arc<dyn Provider>>,
    /// The bus URL given to agents.
    pub bus_url: String,
    /// The server's timeouts where a cluster's properties set none (`--activation-timeout`,
    /// `--port-check-timeout`, `--drain-timeout`); unset, Nubo's defaults.
    pub timeouts: nubo_plan::Timeouts,
    /// In a highly available control plane, the lease this controller holds and its fencing
    /// token: every state write is fenced with it, and the controller stops (acting on nothing
    /// more) the moment a write is refused because another controller took over.
    pub fence: Option<Fence>,
    /// Where members reach the platform's API (the metadata service): `None`, no metadata
    /// service for members (no `METADATA_SERVICE_URL` nor `TOKEN` in their payloads).
    pub platform_api: Option<PlatformApi>,
    /// Opens the secrets the definitions keep sealed, for members' payloads (`None`: none
    /// opens, and a member that needs one fails to start, saying so).
    pub secrets: Option<Arc<dyn OpenSecrets>>,
}

/// Opens what the platform's definitions keep sealed, for a member's payload (which travels
/// sealed on the bus and is written where the member's workload cannot read it). The controller
/// knows where such a value is, not how it is sealed.
pub trait OpenSecrets: Send + Sync {
    /// The client key (PEM) of the engine of a `docker` partition, from its sealed form.
    fn engine_key(&self, network_partition: &str, partition: &str, sealed: &str) -> Option<String>;
}

/// How members reach the platform's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformApi {
    /// The API's URL as members see it (`https://127.0.0.1:9443`).
    pub url: String,
    /// The certificate to trust for it (PEM), when it is the server's own self-signed one.
    pub ca_pem: Option<String>,
}

/// A lease name and the fencing token this controller holds it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease (`controller`).
    pub lease: String,
    /// The token.
    pub token: u64,
}

/// The controller loop's own measures: how it keeps up.
#[derive(Clone)]
struct LoopMetrics {
    /// Inputs per batch.
    batch: prometheus_client::metrics::histogram::Histogram,
    /// Seconds to write a batch's journal entries.
    journal: prometheus_client::metrics::histogram::Histogram,
    /// Seconds to apply and converge a batch (under the state's lock).
    step: prometheus_client::metrics::histogram::Histogram,
    /// Inputs waiting in the loop's queues (after the last batch was taken).
    queued: prometheus_client::metrics::gauge::Gauge,
}

impl LoopMetrics {
    fn new() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        LoopMetrics {
            batch: Histogram::new(exponential_buckets(1.0, 4.0, 7)),
            journal: Histogram::new(exponential_buckets(0.0005, 4.0, 8)),
            step: Histogram::new(exponential_buckets(0.0001, 4.0, 9)),
            queued: Default::default(),
        }
    }
}

/// A handle to the running controller (cheap to clone).
#[derive(Clone)]
pub struct ControllerHandle {
    metrics: LoopMetrics,
    commands: mpsc::Sender<(Input, tokio::sync::oneshot::Sender<()>)>,
    state: Arc<Mutex<ControllerState>>,
    deposed: tokio::sync::watch::Receiver<bool>,
}

impl ControllerHandle {
    /// Deploys an application (refused when it is already deployed). Returns once the controller
    /// has taken it in: the runtime view shows it from then on.
    pub async fn deploy(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        if self.status(&plan.application_id).is_some() {
            return Err(ControlError::AlreadyDeployed(plan.application_id));
        }
        if let Some(Some(host)) = self.read(|s| s.host_conflict(&plan)) {
            return Err(ControlError::HostTaken(host));
        }
        self.command(Input::Deploy(plan)).await
    }

    /// Undeploys an application; returns once the controller has taken it in.
    pub async fn undeploy(&self, application_id: &str, force: bool) -> Result<(), ControlError> {
        if self.status(application_id).is_none() {
            return Err(ControlError::NotDeployed(application_id.to_owned()));
        }
        self.command(Input::Undeploy {
            application_id: application_id.to_owned(),
            force,
        })
        .await
    }

    /// Carries out a request of the autoscaler (scale, replace a faulty member, grow a group or
    /// burst, scale in, a member proven active); returns once the controller has taken it in.
    pub async fn scale(&self, command: ScaleCommand) -> Result<(), ControlError> {
        self.command(Input::Scale(command)).await
    }

    /// Applies changed artifacts (policies, min / max) to a running application.
    pub async fn update_plan(&self, plan: DeploymentPlan) -> Result<(), ControlError> {
        self.command(Input::UpdatePlan(plan)).await
    }

    /// Routes a tenant's applications, or no more; returns once the controller has taken it in.
    pub async fn tenant_routing(
        &self,
        tenant_id: i64,
        suspended: bool,
    ) -> Result<(), ControlError> {
        self.command(Input::TenantRouting {
            tenant_id,
            suspended,
        })
        .await
    }

    /// Sets the tenants' domain routes (the whole set); returns once the controller has taken
    /// them in.
    pub async fn domain_routes(
        &self,
        routes: Vec<nubo_events::DomainRoute>,
        signups: Vec<nubo_events::TenantSignup>,
    ) -> Result<(), ControlError> {
        self.command(Input::DomainRoutes(routes, signups)).await
    }

    /// Updates the artifacts of clusters of a deployed application, member after member;
    /// returns once the controller has taken it in.
    pub async fn update_artifacts(
        &self,
        application_id: &str,
        cluster_ids: Vec<String>,
    ) -> Result<(), ControlError> {
        self.command(Input::UpdateArtifacts {
            application_id: application_id.to_owned(),
            cluster_ids,
        })
        .await
    }

    async fn command(&self, input: Input) -> Result<(), ControlError> {
        let stopped = || ControlError::Unavailable("the controller has stopped".to_owned());
        let (ack, done) = tokio::sync::oneshot::channel();
        // Bounded: a flood of commands waits here (the API answers later), never piles up.
        self.commands
            .send((input, ack))
            .await
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())
    }

    /// The deployment status of an application (`None`: not deployed).
    pub fn status(&self, application_id: &str) -> Option<DeploymentStatus> {
        self.state
            .lock()
            .ok()?
            .deployments
            .get(application_id)
            .map(|d| d.status)
    }

    /// Runs `f` over the state under the controller's lock (no copy): keep it short, the
    /// controller waits meanwhile. `None` if the lock is poisoned.
    pub fn read<R>(&self, f: impl FnOnce(&ControllerState) -> R) -> Option<R> {
        self.state.lock().ok().map(|s| f(&s))
    }

    /// Returns when the controller has stopped because another controller took over (a fenced
    /// write was refused); never, without a fence.
    pub async fn deposed(&self) {
        let mut d = self.deposed.clone();
        let _ = d.wait_for(|d| *d).await;
    }

    /// A copy of the whole state.
    pub fn snapshot(&self) -> ControllerState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The controller.
pub struct Controller;

impl Controller {
    /// Loads the persisted state, reconciles it with what the providers run, and starts the loop.
    pub async fn start(
        store: Arc<dyn Store>,
        events: EventBus,
        config: ControllerConfig,
    ) -> Result<ControllerHandle, StoreError> {
        let (mut state, seq) = journal::load(store.as_ref()).await?;
        state.timeouts = config.timeouts;
        let fence = config.fence.as_ref().map(|f| StoreFence {
            lease: &f.lease,
            token: f.token,
        });
        // A state carried over from before the journal, or none yet: it becomes the first
        // snapshot, so that readers and restarts find it there.
        let snapshot_bytes = if seq == 0 {
            let body = serde_json::to_string(&state)
                .map_err(|e| StoreError::Corrupt(format!("controller state: {e}")))?;
            let last = store.journal_last(journal::STREAM).await?;
            journal::snapshot(store.as_ref(), body, last, fence).await?
        } else {
            0
        };
        // What runs now, per provider; the members of a provider that cannot tell are left alone.
        let mut running = std::collections::BTreeSet::new();
        let mut unknown = std::collections::BTreeSet::new();
        for (name, p) in &config.providers {
            match p.running().await {
                Ok(r) => running.extend(r),
                Err(e) => {
                    tracing::warn!(provider = %name, error = %e, "cannot tell which members run: leaving its members as they are");
                    unknown.insert(name.clone());
                }
            }
        }
        // A member still Created whose instance runs was started but its start's result (its
        // address) never recorded: it is stopped and replaced like one that is not running.
        for m in state.members_created() {
            if running.remove(&m) {
                tracing::info!(member = %m, "member started but not recorded before the restart: it will be replaced");
                if let Some(p) = state.provider_of(&m).and_then(|p| config.providers.get(&p)) {
                    let _ = p.terminate(&m).await;
                }
            }
        }
        let known = state.member_ids();
        let announcements = state.restart_announcements(&running);
        let mut pending = Vec::new();
        for m in known
            .iter()
            .filter(|m| !running.contains(*m))
            .filter(|m| state.provider_of(m).is_none_or(|p| !unknown.contains(&p)))
        {
            tracing::info!(member = %m, "member not running after restart: it will be replaced");
            pending.push(Input::Event(Event::MemberProcessExited {
                member_id: m.clone(),
                code: None,
                signal: None,
                reason: "not running when the controller started".into(),
            }));
        }
        for orphan in running.iter().filter(|m| !known.contains(*m)) {
            tracing::warn!(member = %orphan, "a running member the topology does not know: terminating it");
            for p in config.providers.values() {
                let _ = p.terminate(orphan).await;
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (commands, mut command_rx) =
            mpsc::channel::<(Input, tokio::sync::oneshot::Sender<()>)>(COMMAND_INBOX);
        let shared = Arc::new(Mutex::new(std::mem::take(&mut state)));
        let (deposed_tx, deposed) = tokio::sync::watch::channel(false);
        let metrics = LoopMetrics::new();
        let handle = ControllerHandle {
            metrics: metrics.clone(),
            commands,
            state: shared.clone(),
            deposed,
        };
        let mut agents = events
            .subscribe(Category::InstanceStatus)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut supervisors = events
            .subscribe(Category::Supervisor)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut requests = events
            .subscribe(Category::Initializer)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut control = events
            .subscribe(Category::Control)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        for p in pending {
            let _ = tx.send(p);
        }
        if !announcements.is_empty() {
            tracing::info!(
                members = announcements.len(),
                "members on their way to Active: their statuses published again"
            );
        }
        for e in &announcements {
            let _ = events.publish(e).await;
        }
        let start_limits = config
            .providers
            .keys()
            .map(|p| {
                (
                    p.clone(),
                    Arc::new(tokio::sync::Semaphore::new(STARTS_IN_FLIGHT)),
                )
            })
            .collect();
        let runner = Runner {
            start_limits,
            deposed: deposed_tx,
            state: shared,
            events,
            store,
            config,
            tx,
            snapshot: std::sync::atomic::AtomicU64::new(nubo_bus::now_ms()),
            journal: Mutex::new(JournalState {
                since_snapshot: 0,
                snapshot_bytes,
            }),
            metrics,
        };
        tokio::spawn(async move {
            let mut rx = rx;
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut resync = tokio::time::interval(RESYNC);
            loop {
                if *runner.deposed.borrow() {
                    // Another controller took over: this one publishes and acts on nothing more.
                    return;
                }
                let mut batch: Vec<(Input, Option<Ack>)> = Vec::new();
                tokio::select! {
                    i = rx.recv() => match i { Some(i) => batch.push((i, None)), None => return },
                    Some((input, ack)) = command_rx.recv() => batch.push((input, Some(ack))),
                    Some(e) = agents.recv() => batch.push((Input::Event(e), None)),
                    Some(e) = supervisors.recv() => {
                        if let Event::NodeInventory { node, members, .. } = &e {
                            runner.terminate_orphans(node, members).await;
                            continue;
                        }
                        batch.push((Input::Event(e), None));
                    }
                    Some(e) = requests.recv() => {
                        if matches!(e, Event::CompleteTopologyRequest {}) {
                            runner.publish_topology().await;
                        }
                        continue;
                    }
                    Some(e) = control.recv() => match command_from(e) {
                        Some(input) => batch.push((input, None)),
                        None => continue,
                    },
                    _ = tick.tick() => batch.push((Input::Tick, None)),
                    _ = resync.tick() => {
                        runner.publish_topology().await;
                        continue;
                    }
                };
                // What else has arrived goes in the same batch: one journal write for all.
                while batch.len() < MAX_BATCH {
                    if let Ok(i) = rx.try_recv() {
                        batch.push((i, None));
                    } else if let Some(e) = agents.try_recv() {
                        batch.push((Input::Event(e), None));
                    } else if let Ok((input, ack)) = command_rx.try_recv() {
                        batch.push((input, Some(ack)));
                    } else {
                        break;
                    }
                }
                runner
                    .metrics
                    .queued
                    .set((rx.len() + agents.backlog() + command_rx.len()) as i64);
                runner.handle(batch).await;
            }
        });
        Ok(handle)
    }
}

/// A command from an API in another process (the `control` topic).
fn command_from(e: Event) -> Option<Input> {
    match e {
        Event::ControlDeploy { plan } => Some(Input::Deploy(*plan)),
        Event::ControlUndeploy {
            application_id,
            force,
        } => Some(Input::Undeploy {
            application_id,
            force,
        }),
        Event::ControlUpdatePlan { plan } => Some(Input::UpdatePlan(*plan)),
        Event::ControlScale { command } => Some(Input::Scale(command)),
        Event::ControlTenantRouting {
            tenant_id,
            suspended,
        } => Some(Input::TenantRouting {
            tenant_id,
            suspended,
        }),
        Event::ControlDomainRoutes { routes, signups } => {
            Some(Input::DomainRoutes(routes, signups))
        }
        Event::ControlUpdateArtifacts {
            application_id,
            cluster_ids,
        } => Some(Input::UpdateArtifacts {
            application_id,
            cluster_ids,
        }),
        _ => None,
    }
}

/// The answer to an API command: sent once its step is in the journal.
type Ack = tokio::sync::oneshot::Sender<()>;

/// Where the journal stands since the last snapshot.
struct JournalState {
    /// Bytes appended since.
    since_snapshot: usize,
    /// The last snapshot's size.
    snapshot_bytes: usize,
}

struct Runner {
    /// Start batches in flight, per provider (at most [`STARTS_IN_FLIGHT`]).
    start_limits: BTreeMap<String, Arc<tokio::sync::Semaphore>>,
    metrics: LoopMetrics,
    journal: Mutex<JournalState>,
    deposed: tokio::sync::watch::Sender<bool>,
    state: Arc<Mutex<ControllerState>>,
    events: EventBus,
    store: Arc<dyn Store>,
    config: ControllerConfig,
    tx: mpsc::UnboundedSender<Input>,
    /// The last complete-topology snapshot's id (starts at the start time, so that a new leader's
    /// snapshots are told apart from its predecessor's).
    snapshot: std::sync::atomic::AtomicU64,
}

impl Runner {
    /// Members a node runs that the topology does not know (started for a controller that died
    /// before it recorded them, or dropped while the node was away) are terminated: nothing runs
    /// twice.
    async fn terminate_orphans(&self, node: &str, members: &[String]) {
        let orphans: Vec<String> = match self.state.lock() {
            Ok(s) => {
                let known = s.member_ids();
                members
                    .iter()
                    .filter(|m| !known.contains(*m))
                    .cloned()
                    .collect()
            }
            Err(_) => return,
        };
        for member_id in orphans {
            tracing::warn!(%node, member = %member_id, "a member the topology does not know runs on the node: terminating it");
            let e = Event::NodeTerminateMember {
                node: node.to_owned(),
                member_id,
                fence: self.config.fence.as_ref().map(|f| f.token),
            };
            if let Err(err) = self.events.publish(&e).await {
                tracing::warn!(error = %err, "cannot reach the node");
            }
        }
    }

    /// Publishes the complete topology: one event, or parts of one snapshot when it is large
    /// (brokers limit a message's size).
    async fn publish_topology(&self) {
        let snapshot = self
            .snapshot
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let started = std::time::Instant::now();
        let topology = match self.state.lock() {
            Ok(s) => s.topology.clone(),
            Err(_) => return,
        };
        let events = nubo_events::parts::split(topology, snapshot, nubo_events::parts::PART_BYTES);
        for e in &events {
            if let Err(err) = self.events.publish(e).await {
                tracing::warn!(error = %err, "cannot publish the complete topology");
                return;
            }
        }
        tracing::info!(
            parts = events.len(),
            ms = started.elapsed().as_millis() as u64,
            "complete topology published"
        );
    }

    /// Steps a batch of inputs, writes those that changed the state to the journal (one
    /// transaction), then carries out their actions and answers the commands among them. A step
    /// is written before anything of it is done: a crash at any moment loses no decision that
    /// was acted on. Deposed (the fenced write refused), the controller stops at once.
    async fn handle(&self, batch: Vec<(Input, Option<Ack>)>) {
        if *self.deposed.borrow() {
            return;
        }
        let mut lines = Vec::new();
        let mut actions = Vec::new();
        let mut acks = Vec::new();
        self.metrics.batch.observe(batch.len() as f64);
        let stepping = std::time::Instant::now();
        {
            let Ok(mut s) = self.state.lock() else { return };
            for (input, ack) in batch {
                let at = nubo_bus::now_ms();
                // Every input is written (serialized before `apply` consumes it), but a tick
                // only when its timeouts did something.
                let line = match &input {
                    Input::Tick => None,
                    other => journal::line(at, other).ok(),
                };
                let out = s.apply(at, input);
                match line {
                    Some(l) => lines.push(l),
                    None if !out.is_empty() => lines.extend(journal::line(at, &Input::Tick).ok()),
                    None => {}
                }
                actions.extend(out);
                acks.extend(ack);
            }
            // One convergence for the batch: each deployment it touched, once. Written when
            // the batch wrote anything, or the convergence did something (a state change always
            // comes with an action): a quiet tick writes nothing.
            if s.needs_convergence() {
                let at = nubo_bus::now_ms();
                let converged = s.converge_dirty(at);
                if !lines.is_empty() || !converged.is_empty() {
                    lines.extend(journal::converge_line(at).ok());
                }
                actions.extend(converged);
            }
        }
        self.metrics.step.observe(stepping.elapsed().as_secs_f64());
        let writing = std::time::Instant::now();
        if !lines.is_empty() && !self.append(&lines).await {
            return;
        }
        self.metrics
            .journal
            .observe(writing.elapsed().as_secs_f64());
        // The batch's starts, per provider, go in batches of their own.
        let mut starts: BTreeMap<String, Vec<MemberSpec>> = BTreeMap::new();
        let mut stops: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in actions {
            match a {
                // A failure is logged and counted by the bus (`PublishFailed`).
                Action::Publish(e) => {
                    let _ = self.events.publish(&e).await;
                }
                Action::Start {
                    member,
                    provider,
                    image,
                    cluster,
                } => {
                    // The member's partition: its engine, Kubernetes cluster, user.
                    let part = cluster
                        .placements
                        .iter()
                        .find(|q| q.network_partition_id == member.network_partition_id)
                        .and_then(|q| q.partitions.iter().find(|x| x.id == member.partition_id))
                        .cloned();
                    let mut p = parameters(&member, &cluster, self.config.timeouts);
                    if let Some(api) = &self.config.platform_api {
                        add_platform_api(&mut p, api);
                    }
                    if provider == "docker" {
                        add_container(
                            &mut p,
                            &cluster,
                            part.as_ref().and_then(|x| x.engine.clone()),
                        );
                        for (property, parameter) in [
                            ("tlsCa", "NUBO_DOCKER_TLS_CA"),
                            ("tlsCert", "NUBO_DOCKER_TLS_CERT"),
                            ("tlsKey", "NUBO_DOCKER_TLS_KEY"),
                        ] {
                            let Some(v) = part.as_ref().and_then(|x| x.engine_tls.get(property))
                            else {
                                continue;
                            };
                            // A key given in place is sealed in the definition: opened for the
                            // payload (a file path is passed as it is).
                            let v = if property == "tlsKey" && !v.starts_with('/') {
                                match self.config.secrets.as_ref().and_then(|o| {
                                    o.engine_key(
                                        &member.network_partition_id,
                                        &member.partition_id,
                                        v,
                                    )
                                }) {
                                    Some(key) => key,
                                    None => continue,
                                }
                            } else {
                                v.clone()
                            };
                            p.insert(parameter.to_owned(), v);
                        }
                        if let Some(u) = part.as_ref().and_then(|x| x.user_namespace.clone()) {
                            p.insert("NUBO_DOCKER_USERNS".to_owned(), u);
                        }
                    }
                    if provider == "kubernetes" {
                        add_kubernetes(
                            &mut p,
                            &cluster,
                            part.as_ref().and_then(|x| x.kube_cluster.clone()),
                        );
                    }
                    starts
                        .entry(provider.clone())
                        .or_default()
                        .push(MemberSpec {
                            parameters: p,
                            run_as: part.and_then(|q| q.run_as),
                            member,
                            image,
                            ports: cluster.ports.clone(),
                            bus_url: self.config.bus_url.clone(),
                        });
                }
                Action::Terminate {
                    member_id,
                    provider,
                } => stops.entry(provider).or_default().push(member_id),
                Action::ApplicationStatus {
                    application_id,
                    status,
                } => {
                    tracing::info!(application = %application_id, %status, "application status");
                }
                Action::Persist => {}
            }
        }
        for (provider, specs) in starts {
            self.start(provider, specs);
        }
        for (provider, ids) in stops {
            self.terminate(provider, ids);
        }
        for ack in acks {
            let _ = ack.send(());
        }
        self.maybe_snapshot().await;
    }

    fn fence(&self) -> Option<StoreFence<'_>> {
        self.config.fence.as_ref().map(|f| StoreFence {
            lease: &f.lease,
            token: f.token,
        })
    }

    /// Writes `lines` to the journal; `false` when this controller has been deposed. A store that
    /// fails otherwise is tried again until it takes them: nothing of these steps is carried out
    /// before (the controller waits, and what arrives meanwhile waits in its queues).
    async fn append(&self, lines: &[String]) -> bool {
        let bytes: usize = lines.iter().map(String::len).sum();
        loop {
            match self
                .store
                .journal_append(journal::STREAM, lines, self.fence())
                .await
            {
                Ok(_) => {
                    if let Ok(mut j) = self.journal.lock() {
                        j.since_snapshot += bytes;
                    }
                    return true;
                }
                Err(e @ StoreError::Fenced { .. }) => {
                    tracing::error!(error = %e, "another controller took over: this one stops");
                    let _ = self.deposed.send(true);
                    return false;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the controller's journal: trying again; nothing of these steps is done until it is written");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Writes a snapshot when the journal since the last one outgrew it.
    async fn maybe_snapshot(&self) {
        let due = self
            .journal
            .lock()
            .is_ok_and(|j| j.since_snapshot > j.snapshot_bytes.max(MIN_SNAPSHOT_GAP));
        if !due {
            return;
        }
        // The state now includes every entry written: it is the state after the last one.
        let body = match self.state.lock() {
            Ok(s) => serde_json::to_string(&*s),
            Err(_) => return,
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialize the controller state");
                return;
            }
        };
        let seq = match self.store.journal_last(journal::STREAM).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(error = %e, "cannot snapshot the controller state now");
                return;
            }
        };
        match journal::snapshot(self.store.as_ref(), body, seq, self.fence()).await {
            Ok(n) => {
                if let Ok(mut j) = self.journal.lock() {
                    j.since_snapshot = 0;
                    j.snapshot_bytes = n;
                }
            }
            Err(e @ StoreError::Fenced { .. }) => {
                tracing::error!(error = %e, "another controller took over: this one stops");
                let _ = self.deposed.send(true);
            }
            Err(e) => tracing::warn!(error = %e, "cannot snapshot the controller state now"),
        }
    }

    /// Starts members on `provider`, in batches of [`START_BATCH`], at most [`STARTS_IN_FLIGHT`]
    /// batches at a time per provider; each answer comes back as an input.
    fn start(&self, provider: String, specs: Vec<MemberSpec>) {
        let (Some(p), Some(limit)) = (
            self.config.providers.get(&provider).cloned(),
            self.start_limits.get(&provider).cloned(),
        ) else {
            for spec in specs {
                let _ = self.tx.send(Input::StartFailed {
                    member_id: spec.member.member_id,
                    reason: format!("no IaaS provider `{provider}` on this platform"),
                });
            }
            return;
        };
        let mut specs = specs.into_iter().peekable();
        while specs.peek().is_some() {
            let batch: Vec<MemberSpec> = specs.by_ref().take(START_BATCH).collect();
            let (p, limit, tx, provider) =
                (p.clone(), limit.clone(), self.tx.clone(), provider.clone());
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return;
                };
                let ids: Vec<String> = batch.iter().map(|s| s.member.member_id.clone()).collect();
                let answers = p.start_many(batch).await;
                for (member_id, answer) in ids.into_iter().zip(answers) {
                    let input = match answer {
                        Ok(started) => {
                            MemberStarted {
                                member_id: &member_id,
                                provider: &provider,
                                ip: &started.ip,
                            }
                            .emit();
                            Input::Started {
                                member_id,
                                ip: started.ip,
                                ports: started.ports,
                            }
                        }
                        Err(e) => {
                            let reason = e.to_string();
                            MemberStartFailed {
                                member_id: &member_id,
                                provider: &provider,
                                error: &reason,
                            }
                            .emit();
                            Input::StartFailed { member_id, reason }
                        }
                    };
                    let _ = tx.send(input);
                }
            });
        }
    }

    /// Terminates members on `provider`, in batches of [`START_BATCH`] under the same limit of
    /// batches in flight as starts; a member the provider does not run is reported gone.
    fn terminate(&self, provider: String, ids: Vec<String>) {
        let p = self.config.providers.get(&provider).cloned();
        let limit = self.start_limits.get(&provider).cloned();
        let mut ids = ids.into_iter().peekable();
        while ids.peek().is_some() {
            let batch: Vec<String> = ids.by_ref().take(START_BATCH).collect();
            let (p, limit, tx) = (p.clone(), limit.clone(), self.tx.clone());
            tokio::spawn(async move {
                let _permit = match limit {
                    Some(l) => l.acquire_owned().await.ok(),
                    None => None,
                };
                for member_id in batch {
                    let gone = match &p {
                        Some(p) => matches!(
                            p.terminate(&member_id).await,
                            Err(nubo_iaas::IaasError::NotFound(_))
                        ),
                        None => true,
                    };
                    if gone {
                        let _ = tx.send(Input::Event(Event::MemberProcessExited {
                            member_id,
                            code: None,
                            signal: None,
                            reason: "not running".into(),
                        }));
                    }
                }
            });
        }
    }
}

/// How long the agent waits for a workload's ports where nothing says otherwise (seconds).
pub const PORT_CHECK_TIMEOUT_SECS: u64 = 120;
/// How long a workload has from SIGTERM to its end where nothing says otherwise (seconds).
pub const TERMINATION_TIMEOUT_SECS: u64 = 10;

/// The agent's launch parameters: Stratos' (§6.13 of the reference), the cartridge's
/// `payload_parameter.*` properties, and `PORT_CHECK_TIMEOUT` (seconds: the cluster's
/// `portCheckTimeout`, else the server's default).
pub fn parameters(
    member: &nubo_events::Member,
    cluster: &ClusterPlan,
    defaults: nubo_plan::Timeouts,
) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    let limits = cluster.timeouts.or(defaults);
    p.insert(
        "PORT_CHECK_TIMEOUT".to_owned(),
        limits
            .port_check
            .unwrap_or(PORT_CHECK_TIMEOUT_SECS)
            .to_string(),
    );
    // Health probes (docs/api.md): the cartridge's readiness and liveness paths.
    for (property, parameter) in [
        ("readinessPath", "READINESS_PATH"),
        ("livenessPath", "LIVENESS_PATH"),
        ("extensionsDir", "EXTENSIONS_DIR"),
        ("commitEnabled", "COMMIT_ENABLED"),
        ("artifactUpdateInterval", "ARTIFACT_UPDATE_INTERVAL"),
        ("unhealthyTimeout", "UNHEALTHY_TIMEOUT"),
    ] {
        if let Some(path) = cluster.properties.get(property) {
            p.insert(parameter.to_owned(), path.clone());
        }
    }
    // How long a draining member may take (its agent waits that long, less the termination
    // grace, for its requests in flight to end before it stops the workload).
    p.insert(
        "DRAIN_TIMEOUT".to_owned(),
        limits
            .drain
            .unwrap_or(crate::state::DRAIN_TIMEOUT_MS / 1000)
            .to_string(),
    );
    p.insert(
        "TERMINATION_TIMEOUT".to_owned(),
        limits
            .termination
            .unwrap_or(TERMINATION_TIMEOUT_SECS)
            .to_string(),
    );
    let mut put = |k: &str, v: String| {
        p.insert(k.to_owned(), v);
    };
    put("APPLICATION_ID", member.application_id.clone());
    put("SERVICE_NAME", member.service_name.clone());
    put("CLUSTER_ID", member.cluster_id.clone());
    put("CLUSTER_INSTANCE_ID", member.cluster_instance_id.clone());
    put("MEMBER_ID", member.member_id.clone());
    put("NETWORK_PARTITION_ID", member.network_partition_id.clone());
    put("PARTITION_ID", member.partition_id.clone());
    put("CARTRIDGE_ALIAS", cluster.alias.clone());
    put(
        "HOST_NAME",
        cluster.host_names.first().cloned().unwrap_or_default(),
    );
    put(
        "PORTS",
        cluster
            .ports
            .iter()
            .map(|p| p.port.to_string())
            .collect::<Vec<_>>()
            .join("|"),
    );
    put("MIN_COUNT", cluster.min.to_string());
    // Stratos' other keys: what the definitions give (the plan's), the member's own, and fixed
    // ones of a platform without Stratos' internal members and primaries.
    for (k, v) in &cluster.payload {
        put(k, v.clone());
    }
    put("INSTANCE_ID", member.member_id.clone());
    put("DEPENDENCY_CLUSTER_IDS", cluster.depends_on.join(","));
    put("INTERNAL", "false".into());
    put("PRIMARY", "false".into());
    for (k, v) in &cluster.properties {
        if let Some(key) = k.strip_prefix("payload_parameter.") {
            put(key, v.clone());
        }
    }
    p
}

/// Where the member finds the metadata service (Stratos' `/metadata/api`, on the platform's API),
/// and the certificate to trust for it. The member's `TOKEN` is added by whoever starts it, with
/// the platform's key.
pub fn add_platform_api(p: &mut BTreeMap<String, String>, api: &PlatformApi) {
    p.insert(
        "METADATA_SERVICE_URL".to_owned(),
        format!("{}/metadata/api", api.url.trim_end_matches('/')),
    );
    if let Some(pem) = &api.ca_pem {
        p.insert(nubo_iaas::API_CA_PARAMETER.to_owned(), pem.clone());
    }
}

/// The default engine of the `docker` provider.
pub const DEFAULT_ENGINE: &str = "unix:///var/run/docker.sock";

/// What the agent of a member of the `docker` provider needs: that its workload is a container,
/// the engine (its partition's `endpoint`), and the cartridge's `memoryLimit` (`256m`, bytes)
/// and `cpuLimit` (cores, `0.5`).
pub fn add_container(
    p: &mut BTreeMap<String, String>,
    cluster: &ClusterPlan,
    engine: Option<String>,
) {
    p.insert("NUBO_RUNTIME".to_owned(), "docker".to_owned());
    p.insert(
        "NUBO_DOCKER_ENDPOINT".to_owned(),
        engine.unwrap_or_else(|| DEFAULT_ENGINE.to_owned()),
    );
    for (property, parameter) in [("memoryLimit", "MEMORY_LIMIT"), ("cpuLimit", "CPU_LIMIT")] {
        if let Some(v) = cluster.properties.get(property) {
            p.insert(parameter.to_owned(), v.clone());
        }
    }
}

/// The cartridge properties the `kubernetes` provider reads (its pods' limits, pull settings and
/// services' session affinity), given as `CARTRIDGE_PROPERTY_<name>` parameters.
pub const KUBERNETES_PROPERTIES: [&str; 7] = [
    "KUBERNETES_CONTAINER_CPU",
    "KUBERNETES_CONTAINER_MEMORY",
    "KUBERNETES_SERVICE_SESSION_AFFINITY",
    "IMAGE_PULL_SECRETS",
    "IMAGE_PULL_POLICY",
    "cpuLimit",
    "memoryLimit",
];

/// What the `kubernetes` provider needs for a member: its partition's Kubernetes cluster (the
/// platform's, by id: never its credentials) and the cartridge's [`KUBERNETES_PROPERTIES`].
pub fn add_kubernetes(
    p: &mut BTreeMap<String, String>,
    cluster: &ClusterPlan,
    kube_cluster: Option<String>,
) {
    p.insert("NUBO_RUNTIME".to_owned(), "kubernetes".to_owned());
    if let Some(k) = kube_cluster {
        p.insert("NUBO_KUBE_CLUSTER".to_owned(), k);
    }
    for property in KUBERNETES_PROPERTIES {
        if let Some(v) = cluster.properties.get(property) {
            p.insert(format!("CARTRIDGE_PROPERTY_{property}"), v.clone());
        }
    }
}

/// Exposes the topology to Prometheus: members by status, clusters, deployments.
struct ControllerCollector(Arc<Mutex<ControllerState>>);

impl std::fmt::Debug for ControllerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControllerCollector")
    }
}

impl prometheus_client::collector::Collector for ControllerCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::gauge::ConstGauge;
        let (by_status, clusters, deployments, failing) = match self.0.lock() {
            Ok(s) => {
                let mut by_status: BTreeMap<&'static str, i64> = BTreeMap::new();
                for m in s
                    .topology
                    .clusters
                    .values()
                    .flat_map(|c| c.members.values())
                {
                    *by_status.entry(m.status.as_str()).or_default() += 1;
                }
                let failing = s
                    .deployments
                    .values()
                    .flat_map(|d| d.backoff.values())
                    .filter(|b| b.failures > 0)
                    .count();
                (
                    by_status,
                    s.topology.clusters.len(),
                    s.deployments.len(),
                    failing,
                )
            }
            Err(_) => return Ok(()),
        };
        let mut members = encoder.encode_descriptor(
            "nubo_members",
            "Members in the topology, by status",
            None,
            MetricType::Gauge,
        )?;
        for (status, n) in &by_status {
            ConstGauge::new(*n).encode(members.encode_family(&[("status", *status)])?)?;
        }
        let c = encoder.encode_descriptor(
            "nubo_clusters",
            "Clusters in the topology",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(clusters as i64).encode(c)?;
        let d = encoder.encode_descriptor(
            "nubo_deployed_applications",
            "Deployed applications",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(deployments as i64).encode(d)?;
        let f = encoder.encode_descriptor(
            "nubo_failing_cluster_instances",
            "Cluster instances whose members keep failing before becoming active (retried with backoff)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(failing as i64).encode(f)?;
        Ok(())
    }
}

impl ControllerHandle {
    /// Registers the controller's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(ControllerCollector(self.state.clone())));
        registry.register(
            "nubo_controller_batch_inputs",
            "Inputs the controller stepped together (one journal write, one convergence)",
            self.metrics.batch.clone(),
        );
        registry.register(
            "nubo_controller_step_seconds",
            "Time to apply and converge a batch",
            self.metrics.step.clone(),
        );
        registry.register(
            "nubo_controller_journal_write_seconds",
            "Time to write a batch to the controller's journal",
            self.metrics.journal.clone(),
        );
        registry.register(
            "nubo_controller_queued_inputs",
            "Inputs waiting for the controller when it took its last batch",
            self.metrics.queued.clone(),
        );
    }
}
