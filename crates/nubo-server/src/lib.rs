//! The all-in-one server: opens the data directory (one server per directory, enforced by a lock),
//! the store (SQLite in the data directory, or the PostgreSQL database `--store` names), the
//! manager and the API, and serves HTTPS with a self-signed certificate
//! generated on first start (or a configured one, or plain HTTP when asked). Stops gracefully on
//! SIGINT and SIGTERM. The bus (the embedded MQTT broker, or an external MQTT or NATS broker), the
//! node supervisor, the controller, the autoscaler and the load balancer start here too.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use nubo_api::AppState;
use nubo_manager::Manager;
pub use nubo_store::StoreLocation;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub mod config;
mod lock;
pub mod tls;

pub use config::{
    BusMode, Component, Components, HaConfig, ServerConfig, Settings, TlsMode, default_data_dir,
    default_node_dir,
};

/// The lease the controllers compete for.
pub use nubo_controller::CONTROLLER_LEASE;

/// The lease the autoscalers without a controller compete for (`--ha`): one decides at a time.
pub const AUTOSCALER_LEASE: &str = "autoscaler";

/// One attempt at the controller lease: its fencing token when this process holds it now.
async fn try_lead(store: &dyn nubo_store::Store, ha: &HaConfig) -> Option<u64> {
    try_lease(store, ha, CONTROLLER_LEASE).await
}

/// One attempt at a lease: its token when this process holds it now.
async fn try_lease(store: &dyn nubo_store::Store, ha: &HaConfig, lease: &str) -> Option<u64> {
    match store.acquire_lease(lease, &ha.holder, ha.ttl).await {
        Ok(Some(l)) => {
            tracing::info!(holder = %ha.holder, token = l.token, %lease, "this server holds the lease: it runs the component");
            Some(l.token)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, %lease, "cannot reach the store for the lease");
            None
        }
    }
}

/// Says that this server stands by, and for whom: `lease` names the component (`controller`,
/// `autoscaler`), `meanwhile` what this server does while it waits.
async fn announce_standby(store: &dyn nubo_store::Store, lease: &str, meanwhile: &str) {
    let leader = store
        .lease(lease)
        .await
        .ok()
        .flatten()
        .map(|l| l.holder)
        .unwrap_or_else(|| "another server".into());
    println!("nubo: standby: the {lease} runs in {leader}; waiting to take over{meanwhile}");
    tracing::info!(%leader, %lease, "standby");
}

/// Waits until this process holds the controller lease; returns its fencing token.
async fn become_leader(store: &dyn nubo_store::Store, ha: &HaConfig) -> u64 {
    wait_for_lease(store, ha, CONTROLLER_LEASE).await
}

/// Waits until this process holds `lease`; returns its token.
async fn wait_for_lease(store: &dyn nubo_store::Store, ha: &HaConfig, lease: &str) -> u64 {
    loop {
        tokio::time::sleep(ha.ttl / 3).await;
        if let Some(token) = try_lease(store, ha, lease).await {
            return token;
        }
    }
}

/// What a controller (and its autoscaler) starts from: kept by a standby until it leads.
struct ControllerParts {
    store: Arc<dyn nubo_store::Store>,
    events: nubo_bus::EventBus,
    providers: std::collections::BTreeMap<String, Arc<dyn nubo_iaas::Provider>>,
    remote_node: Option<Arc<nubo_node::NodeProvider>>,
    bus_url: String,
    autoscale: bool,
    statistics: nubo_autoscaler::monitor::Statistics,
    autoscaler: nubo_autoscaler::monitor::MonitorConfig,
    timeouts: nubo_controller::Timeouts,
    platform_api: Option<nubo_controller::PlatformApi>,
    secrets: Arc<dyn nubo_controller::OpenSecrets>,
}

impl ControllerParts {
    /// Starts the controller (its writes fenced with `token` under `--ha`) and the autoscaler.
    async fn start(
        self,
        token: Option<u64>,
    ) -> anyhow::Result<(
        nubo_controller::ControllerHandle,
        Option<nubo_autoscaler::monitor::ScalingLog>,
    )> {
        let fence = token.map(|token| nubo_controller::Fence {
            lease: CONTROLLER_LEASE.into(),
            token,
        });
        if let (Some(remote), Some(f)) = (&self.remote_node, &fence) {
            remote.set_fence(f.token);
        }
        let controller = nubo_controller::Controller::start(
            self.store.clone(),
            self.events.clone(),
            nubo_controller::ControllerConfig {
                providers: self.providers,
                bus_url: self.bus_url,
                fence,
                timeouts: self.timeouts,
                platform_api: self.platform_api,
                secrets: Some(self.secrets),
            },
        )
        .await
        .context("cannot start the cloud controller")?;
        let scaling = if self.autoscale {
            Some(
                nubo_autoscaler::monitor::start(
                    self.events,
                    nubo_autoscaler::monitor::Target::Local(controller.clone()),
                    self.statistics,
                    self.autoscaler,
                    Some(self.store),
                )
                .await
                .context("cannot start the autoscaler")?,
            )
        } else {
            None
        };
        Ok((controller, scaling))
    }
}

/// Who owns a member, for the log store: its application and tenant in the controller's topology.
struct TopologyOwners(Arc<dyn nubo_controller::ControlPlane>);

#[async_trait::async_trait]
impl nubo_logs::Owners for TopologyOwners {
    async fn owner(&self, member_id: &str) -> Option<nubo_logs::Owner> {
        let id = self.0.member(member_id).await.ok().flatten()?;
        Some(nubo_logs::Owner {
            application_id: id.member.application_id,
            tenant_id: id.tenant_id,
        })
    }
}

/// An autoscaler for a controller in another process, kept by an `--ha` standby until it holds
/// the autoscaler lease.
struct RemoteAutoscaler {
    store: Arc<dyn nubo_store::Store>,
    events: nubo_bus::EventBus,
    statistics: nubo_autoscaler::monitor::Statistics,
    config: nubo_autoscaler::monitor::MonitorConfig,
}

impl RemoteAutoscaler {
    async fn start(self) -> anyhow::Result<nubo_autoscaler::monitor::ScalingLog> {
        nubo_autoscaler::monitor::start(
            self.events.clone(),
            nubo_autoscaler::monitor::Target::remote(self.store.clone(), self.events.clone()),
            self.statistics,
            self.config,
            Some(self.store),
        )
        .await
        .context("cannot start the autoscaler")
    }
}

/// How the accept loop ended.
enum Ending {
    /// SIGINT or SIGTERM.
    Shutdown,
    /// Leadership lost: this process stops so that one controller acts.
    LeadershipLost,
    /// A standby that won the lease could not start its controller.
    Failed(anyhow::Error),
}

/// Renews the lease every third of its TTL; returns when it is lost (taken over, or not renewed
/// in time because the store was unreachable).
async fn keep_lease(store: Arc<dyn nubo_store::Store>, ha: HaConfig, token: u64, lease: &str) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ha.ttl / 3).await;
        match store.acquire_lease(lease, &ha.holder, ha.ttl).await {
            Ok(Some(l)) if l.token == token => last_ok = tokio::time::Instant::now(),
            Ok(_) => {
                tracing::error!(%lease, "the lease was taken over");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, %lease, "cannot renew the lease");
                if last_ok.elapsed() >= ha.ttl {
                    tracing::error!(%lease, "the lease expired: another server may hold it now");
                    return;
                }
            }
        }
    }
}

/// Runs `start` (a controller starting: loading its state, reconciling) while renewing the
/// controller lease `token` holds, so that a long start does not let the lease expire under it.
async fn renewing<T>(
    store: &Arc<dyn nubo_store::Store>,
    ha: Option<&HaConfig>,
    token: Option<u64>,
    start: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let (Some(ha), Some(token)) = (ha, token) else {
        return start.await;
    };
    tokio::select! {
        r = start => r,
        () = keep_lease(store.clone(), ha.clone(), token, CONTROLLER_LEASE) => Err(anyhow::anyhow!(
            "the controller lease was lost while the controller started (the store was unreachable for longer than the lease)"
        )),
    }
}

/// A running server's facts, given to `on_ready`.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The API's base URL (`https://127.0.0.1:9443`); empty when this process serves no API.
    pub api_url: String,
    /// The CA certificate a client should trust, when self-signed.
    pub ca_cert: Option<PathBuf>,
    /// The admin password, when it was generated at this start.
    pub generated_password: Option<String>,
    /// The bus URL (agents connect to it; with the broker's password: show it redacted).
    pub bus_url: String,
    /// The file with the bus URL and the platform's key, for `nubo lb` and `nubo node`.
    pub bus_credentials: PathBuf,
    /// The store, without its password (`sqlite:///…/nubo.db`, `postgres://…`).
    pub store: String,
}

/// Where this server's autoscaler gets its statistics: its own event processor, or one in
/// another process.
fn statistics(config: &ServerConfig) -> nubo_autoscaler::monitor::Statistics {
    if config.runs(Component::EventProcessor) || !config.runs(Component::Autoscaler) {
        nubo_autoscaler::monitor::Statistics::Here
    } else {
        tracing::info!(
            "autoscaler without an event processor: it decides on the predictions of an event processor in another process"
        );
        nubo_autoscaler::monitor::Statistics::Remote
    }
}

/// Runs the server until `shutdown` completes: [`build`], then [`Platform::serve`].
pub async fn run(
    config: ServerConfig,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let platform = build(config).await?;
    on_ready(platform.ready());
    platform.serve(shutdown).await
}

/// A platform assembled and listening, not yet serving: what [`Platform::serve`] runs.
pub struct Platform {
    config: ServerConfig,
    _lock: lock::DirLock,
    store: Arc<dyn nubo_store::Store>,
    state: Arc<AppState>,
    app: axum::Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    listener: Option<TcpListener>,
    ready: Ready,
    /// This process's controller and its lease's token, once it runs.
    leader: Option<(nubo_controller::ControllerHandle, Option<u64>)>,
    /// A standby: its API's control plane (switched when it leads) and what its controller needs.
    standby: Option<(Arc<nubo_controller::SwitchableControl>, ControllerParts)>,
    /// An autoscaler without a controller that waits for its lease (`--ha`).
    remote_autoscaler: Option<RemoteAutoscaler>,
    mock: Option<Arc<nubo_mock::MockIaas>>,
}

/// Assembles the platform `config` describes: the data directory and its lock, the store, the
/// manager, the bus, the components, the API's listener. Nothing is served yet.
pub async fn build(config: ServerConfig) -> anyhow::Result<Platform> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let _lock = lock::DirLock::acquire(&config.data_dir.join("nubo.lock")).with_context(|| {
        format!(
            "another nubo server is using {}; stop it or pass another --data-dir",
            config.data_dir.display()
        )
    })?;
    let (acceptor, ca_cert) = match &config.tls {
        _ if !config.runs(Component::Api) => (None, None),
        TlsMode::Insecure => (None, None),
        TlsMode::SelfSigned => {
            let (cert, key) = tls::ensure_self_signed(&config.data_dir.join("tls"))?;
            (Some(tls::acceptor(&cert, &key)?), Some(cert))
        }
        TlsMode::Files { cert, key } => (Some(tls::acceptor(cert, key)?), None),
    };
    let listener = if config.runs(Component::Api) {
        Some(TcpListener::bind(config.api_addr).await.with_context(|| {
            format!(
                "cannot listen on {}: is another server running? pass --api-addr",
                config.api_addr
            )
        })?)
    } else {
        None
    };
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let api_url = match &listener {
        Some(l) => format!("{scheme}://{}", l.local_addr()?),
        None => String::new(),
    };
    // Where members reach the API (the metadata service): as configured, else this server's own
    // (on loopback when it listens on every address), trusting its self-signed certificate.
    let platform_api = match (&config.api_url, &listener) {
        (Some(url), _) => Some(nubo_controller::PlatformApi {
            url: url.clone(),
            ca_pem: None,
        }),
        (None, Some(l)) => {
            let mut addr = l.local_addr()?;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            Some(nubo_controller::PlatformApi {
                url: format!("{scheme}://{addr}"),
                ca_pem: match &ca_cert {
                    Some(path) => Some(std::fs::read_to_string(path).with_context(|| {
                        format!("cannot read the API's certificate {}", path.display())
                    })?),
                    None => None,
                },
            })
        }
        (None, None) => None,
    };
    let location = config
        .store
        .clone()
        .unwrap_or_else(|| StoreLocation::Sqlite(config.data_dir.join("nubo.db")));
    let store = nubo_store::open(&location)
        .await
        .with_context(|| format!("cannot open the store {location} (--store, NUBO_STORE or `store` in the configuration file)"))?;
    // A new key only for a store whose secrets no other key sealed.
    let sealed_with = if config.secrets_key.exists() {
        None
    } else {
        nubo_manager::sealed_with(store.as_ref())
            .await
            .context("cannot read the platform's secrets in the store")?
    };
    if let Some(id) = sealed_with {
        bail!(
            "this store's secrets are sealed with the secrets key {id}, and {} does not exist: copy the key file (`secrets.key` in the data directory of the platform's first server) there, or name it with --secrets-key",
            config.secrets_key.display()
        );
    }
    let secrets_key = nubo_manager::SecretsKey::load_or_create(
        &config.secrets_key,
        config.secrets_key_previous.as_deref(),
        true,
    )
    .context("cannot read the key that seals the platform's secrets (--secrets-key)")?;
    let manager = Arc::new(Manager::new(
        store.clone(),
        config.providers.clone(),
        secrets_key,
    ));
    if config.runs(Component::Controller) {
        manager
            .publish_providers()
            .await
            .context("cannot publish this server's IaaS providers in the store")?;
    }
    let resealed = manager
        .reseal_secrets()
        .await
        .context("cannot open the platform's secrets in the store")?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            "stored secrets sealed again with the current secrets key"
        );
    }
    let resealed = manager
        .reseal_kubernetes_secrets()
        .await
        .context("cannot open the Kubernetes clusters' credentials in the store")?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            "Kubernetes credentials sealed again with the current secrets key"
        );
    }
    let resealed = manager
        .reseal_engine_keys()
        .await
        .context("cannot open the container engines' keys in the store")?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            "container engines' keys sealed again with the current secrets key"
        );
    }
    let resealed = manager
        .reseal_domain_certificates()
        .await
        .context("cannot open the domains' private keys in the store")?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            "domains' private keys sealed again with the current secrets key"
        );
    }
    let resealed = manager
        .reseal_repository_secrets()
        .await
        .context("cannot open the applications' repository secrets in the store")?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            "repository secrets sealed again with the current secrets key"
        );
    }
    let generated_password = manager
        .ensure_admin(config.admin_password.as_deref())
        .await
        .context("cannot create the admin user")?;
    // The platform's key, which proves every message on the bus, and the embedded broker's
    // password: secrets in the store, shared by every server of the platform.
    let bus_key = manager
        .platform_secret_or(nubo_manager::BUS_KEY, config.bus_key.as_deref())
        .await
        .context("cannot read the platform's bus key from the store")?;
    let bus_url = match &config.bus {
        BusMode::Embedded(addr) => {
            let password = manager
                .platform_secret(nubo_manager::BROKER_PASSWORD)
                .await
                .context("cannot read the embedded broker's password from the store")?;
            // While the password rotates, clients that still hold the previous one (members
            // started before) are accepted too.
            let previous = manager
                .platform_secret_if_any(nubo_manager::BROKER_PASSWORD_PREVIOUS)
                .await
                .context("cannot read the embedded broker's previous password from the store")?;
            nubo_broker::start_with_passwords(
                embedded_bus_addr(&config.data_dir, *addr),
                Some((
                    "nubo".to_owned(),
                    std::iter::once(password).chain(previous).collect(),
                )),
            )
            .with_context(|| format!("cannot start the embedded MQTT broker on {addr}: pass --bus-addr with a free port, or --bus mqtt://… or nats://… for an external broker"))?
            .url()
        }
        BusMode::External(url) => url.clone(),
    };
    let credentials = nubo_bus::BusCredentials {
        url: bus_url.clone(),
        key: bus_key,
        // While the key rotates, the previous one is still accepted.
        previous_key: manager
            .platform_secret_if_any(nubo_manager::BUS_KEY_PREVIOUS)
            .await
            .context("cannot read the platform's previous bus key from the store")?,
    };
    let credentials_file = config.data_dir.join("bus.json");
    credentials.write(&credentials_file).with_context(|| {
        format!(
            "cannot write the bus credentials to {}",
            credentials_file.display()
        )
    })?;
    let bus = nubo_bus::connect_url(&bus_url, "nubo-server")
        .await
        .with_context(|| format!("cannot use the bus {}", nubo_bus::redact_url(&bus_url)))?;
    bus.wait_connected(Duration::from_secs(15))
        .await
        .with_context(|| format!("cannot reach the bus at {}", nubo_bus::redact_url(&bus_url)))?;
    tracing::info!(bus = %nubo_bus::redact_url(&bus_url), kind = bus.kind(), "bus ready");
    let events = nubo_bus::EventBus::with_auth(bus, credentials.auth());
    let mut providers: std::collections::BTreeMap<String, Arc<dyn nubo_iaas::Provider>> =
        Default::default();
    let mut registry = Registry::default();
    nubo_telemetry::register(&mut registry);
    let mut mock = None;
    let mut scaling = None;
    let mut remote_autoscaler: Option<RemoteAutoscaler> = None;
    // This process's controller and its lease's token, once it runs.
    let mut leader: Option<(nubo_controller::ControllerHandle, Option<u64>)> = None;
    // A standby: its API's control plane (switched when it leads) and what its controller needs.
    let mut standby: Option<(Arc<nubo_controller::SwitchableControl>, ControllerParts)> = None;
    let control: Arc<dyn nubo_controller::ControlPlane> = if config.runs(Component::Controller) {
        let mut remote_node = None;
        match (!config.runs(Component::Node)).then_some(&config.node) {
            Some(node) => {
                let remote = nubo_node::NodeProvider::connect(events.clone(), node)
                    .await
                    .context("cannot follow the node supervisor on the bus")?;
                tracing::info!(%node, "local members run on a node supervisor reached through the bus");
                providers.insert("local".into(), remote.clone());
                // Containers too: the node's agents drive its engines.
                providers.insert("docker".into(), remote.clone());
                remote_node = Some(remote);
            }
            None => {
                let supervisor = nubo_node::NodeSupervisor::new(
                    config.data_dir.join("members"),
                    config.agent.clone(),
                    events.clone(),
                )
                .context("cannot start the node supervisor")?;
                providers.insert("local".into(), supervisor.clone());
                // Containers too: each member's agent drives its partition's engine.
                providers.insert("docker".into(), supervisor);
            }
        }
        mock = match &config.mock {
            Some(m) => {
                let mut m = m.clone();
                m.state_file
                    .get_or_insert_with(|| config.data_dir.join("mock-iaas.json"));
                let mock = nubo_mock::MockIaas::start(events.clone(), m)
                    .await
                    .context("cannot start the mock IaaS")?;
                providers.insert("mock".into(), mock.clone());
                Some(mock)
            }
            None => None,
        };
        // Kubernetes: the platform's registered clusters (their credentials opened from the store).
        let kube = nubo_kube::provider::KubeProvider::start(
            events.clone(),
            Arc::new(KubeClusters(manager.clone())),
            nubo_kube::provider::KubeTimeouts {
                pod_running: Duration::from_secs(config.timeouts.activation.unwrap_or(120)),
                termination_grace: Duration::from_secs(config.timeouts.termination.unwrap_or(10)),
            },
        )
        .await
        .context("cannot start the kubernetes provider on the bus")?;
        providers.insert("kubernetes".into(), Arc::new(kube));
        let parts = ControllerParts {
            secrets: Arc::new(ManagerSecrets(manager.clone())),
            platform_api: platform_api.clone(),
            timeouts: config.timeouts,
            store: store.clone(),
            events: events.clone(),
            providers,
            remote_node,
            bus_url: bus_url.clone(),
            autoscale: config.runs(Component::Autoscaler),
            statistics: statistics(&config),
            autoscaler: config.autoscaler,
        };
        // Without --ha, or with the lease won at once, the controller starts before the API
        // serves; a standby serves the API first, through the leader, and starts its controller
        // once it wins the lease.
        let token = match &config.ha {
            Some(ha) => try_lead(store.as_ref(), ha).await.map(Some),
            None => Some(None),
        };
        match token {
            Some(token) => {
                let (controller, log) =
                    renewing(&store, config.ha.as_ref(), token, parts.start(token)).await?;
                scaling = log;
                controller.register_metrics(&mut registry);
                leader = Some((controller.clone(), token));
                if config.ha.is_some() {
                    Arc::new(nubo_controller::SwitchableControl::leading(Arc::new(
                        controller,
                    )))
                } else {
                    Arc::new(controller)
                }
            }
            None => {
                announce_standby(
                    store.as_ref(),
                    CONTROLLER_LEASE,
                    " (this server's API forwards commands to it meanwhile)",
                )
                .await;
                let switch = Arc::new(nubo_controller::SwitchableControl::new(Arc::new(
                    nubo_controller::RemoteControl::new(store.clone(), events.clone()),
                )));
                standby = Some((switch.clone(), parts));
                switch
            }
        }
    } else {
        if let Some(node) = config.runs(Component::Node).then_some(&config.node) {
            let supervisor = nubo_node::NodeSupervisor::new(
                config.data_dir.join("members"),
                config.agent.clone(),
                events.clone(),
            )
            .context("cannot start the node supervisor")?;
            let (events, node) = (events.clone(), node.clone());
            tracing::info!(%node, "node supervisor commanded through the bus");
            tokio::spawn(async move {
                if let Err(e) = nubo_node::serve(supervisor, events, node).await {
                    tracing::error!(error = %e, "the node supervisor lost the bus");
                }
            });
        }
        tracing::info!(
            "no controller in this process: commands go through the bus to the controller of another"
        );
        if config.runs(Component::Autoscaler) {
            tracing::info!(
                "autoscaler without a controller: it reads the controller's state from the store and sends its decisions through the bus"
            );
            let parts = RemoteAutoscaler {
                store: store.clone(),
                events: events.clone(),
                statistics: statistics(&config),
                config: config.autoscaler,
            };
            if config.ha.is_some() {
                // One autoscaler decides at a time: this one once it holds the lease.
                remote_autoscaler = Some(parts);
            } else {
                scaling = Some(parts.start().await?);
            }
        }
        Arc::new(nubo_controller::RemoteControl::new(
            store.clone(),
            events.clone(),
        ))
    };
    if config.runs(Component::EventProcessor) && !config.runs(Component::Autoscaler) {
        tracing::info!(
            "event processor without an autoscaler: its predictions go on the bus for an autoscaler in another process"
        );
        nubo_autoscaler::monitor::start_event_processor(events.clone(), config.autoscaler)
            .await
            .context("cannot start the event processor")?;
    }
    if let Some(lb) = &config.lb {
        let lb = nubo_lb::LoadBalancer::new(lb.clone());
        let (cert, key) = match &config.lb_certificate {
            Some(files) => files.clone(),
            None => tls::ensure_self_signed(&config.data_dir.join("lb-tls"))?,
        };
        lb.certificates()
            .set_default(Some(tls::lb_certificate(&cert, &key)?));
        lb.register_metrics(&mut registry);
        lb.follow(events.clone())
            .await
            .context("cannot start the load balancer")?;
    }
    // Workloads' logs, kept by every process that serves the API (each follows the bus).
    let logs = if config.runs(Component::Api) {
        let logs = nubo_logs::Logs::new(nubo_logs::Limits::default());
        logs.register_metrics(&mut registry);
        logs.follow(&events, Arc::new(TopologyOwners(control.clone())))
            .await
            .context("cannot follow the workloads' logs")?;
        Some(logs)
    } else {
        None
    };
    let mut state =
        AppState::new(manager, Some(control), scaling, registry).with_bus(events.clone());
    state.set_session_ttl(config.session_ttl);
    // The tenants' domain mappings, to the controller (and through it the load balancers);
    // their certificates, to the load balancers (now, and whenever one asks).
    {
        let state = state.clone();
        tokio::spawn(async move { nubo_api::signups::push_routes(&state).await });
    }
    if config.runs(Component::Api) {
        tokio::spawn(nubo_api::signups::serve_certificates(state.clone()));
    }
    // The audit log keeps its retention: trimmed at the start, then every hour.
    {
        let manager = state.manager.clone();
        let retention = config.audit_retention;
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let before = std::time::SystemTime::now()
                    .checked_sub(retention)
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                if let Err(e) = manager.trim_audit(before).await {
                    tracing::warn!(error = %e, "cannot trim the audit log");
                }
            }
        });
    }
    if let Some(logs) = logs {
        state = state.with_logs(logs);
    }
    if standby.is_none()
        && let Some(mock) = mock.clone()
    {
        state = state.with_mock(mock);
    }
    let app = nubo_api::router(state.clone());

    let ready = Ready {
        api_url,
        ca_cert,
        generated_password,
        bus_url,
        bus_credentials: credentials_file,
        store: location.to_string(),
    };
    tracing::info!(url = %ready.api_url, data_dir = %config.data_dir.display(), store = store.backend(), store_location = %ready.store, "nubo server ready");
    Ok(Platform {
        config,
        _lock,
        store,
        state,
        app,
        acceptor,
        listener,
        ready,
        leader,
        standby,
        remote_autoscaler,
        mock,
    })
}

impl Platform {
    /// The running server's facts (its API's URL, the bus, the store).
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Serves until `shutdown` completes, or, under `--ha`, until leadership is lost.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Platform {
            config,
            _lock,
            store,
            state,
            app,
            acceptor,
            listener,
            ready: _,
            leader,
            standby,
            remote_autoscaler,
            mock,
        } = self;
        // The lease's token while this process holds it (released on a clean stop).
        let held: Arc<std::sync::OnceLock<(&'static str, u64)>> = Arc::default();
        if let Some(token) = leader.as_ref().and_then(|(_, t)| *t) {
            let _ = held.set((CONTROLLER_LEASE, token));
        }
        let lead = lead(
            config.ha.clone(),
            store.clone(),
            held.clone(),
            state,
            Roles {
                leader,
                standby,
                remote_autoscaler,
                mock,
            },
        );
        let ending = accept_loop(listener.as_ref(), acceptor.as_ref(), &app, shutdown, lead).await;
        drop(listener);
        ending_of(ending, store, config.ha.as_ref(), held.get().copied()).await
    }
}

/// What a server leads or waits to lead.
struct Roles {
    leader: Option<(nubo_controller::ControllerHandle, Option<u64>)>,
    standby: Option<(Arc<nubo_controller::SwitchableControl>, ControllerParts)>,
    remote_autoscaler: Option<RemoteAutoscaler>,
    mock: Option<Arc<nubo_mock::MockIaas>>,
}

/// A standby takes over when the lease is free: its controller starts and its API switches to
/// it. Then (and for a server that led from the start): leadership lost (taken over, or not
/// renewed in time), or deposed by a fenced write, ends this process, so that exactly one
/// controller acts. Completes with an error when the controller cannot start; never without
/// `--ha`.
async fn lead(
    ha: Option<HaConfig>,
    store: Arc<dyn nubo_store::Store>,
    held: Arc<std::sync::OnceLock<(&'static str, u64)>>,
    state: Arc<AppState>,
    roles: Roles,
) -> anyhow::Result<()> {
    let Roles {
        leader,
        standby,
        remote_autoscaler,
        mock,
    } = roles;
    let Some(ha) = ha else {
        return std::future::pending::<anyhow::Result<()>>().await;
    };
    let (controller, token) = match (leader, standby) {
        (Some((controller, Some(token))), _) => (controller, token),
        (_, Some((switch, parts))) => {
            let token = become_leader(store.as_ref(), &ha).await;
            let _ = held.set((CONTROLLER_LEASE, token));
            let (controller, log) =
                renewing(&store, Some(&ha), Some(token), parts.start(Some(token))).await?;
            state.register_metrics(|r| controller.register_metrics(r));
            if let Some(log) = log {
                state.attach_scaling(log)?;
            }
            if let Some(mock) = mock {
                state.attach_mock(mock)?;
            }
            switch.lead(Arc::new(controller.clone()))?;
            println!("nubo: leader: this server took over; its controller runs now");
            (controller, token)
        }
        _ => {
            let Some(parts) = remote_autoscaler else {
                return std::future::pending::<anyhow::Result<()>>().await;
            };
            // An autoscaler without a controller, one of several: it decides while it holds the
            // autoscaler lease, and this process ends when it loses it.
            let token = match try_lease(store.as_ref(), &ha, AUTOSCALER_LEASE).await {
                Some(t) => t,
                None => {
                    announce_standby(store.as_ref(), AUTOSCALER_LEASE, "").await;
                    wait_for_lease(store.as_ref(), &ha, AUTOSCALER_LEASE).await
                }
            };
            let _ = held.set((AUTOSCALER_LEASE, token));
            let log = parts.start().await?;
            state.attach_scaling(log)?;
            println!("nubo: leader: this server's autoscaler decides now");
            keep_lease(store, ha, token, AUTOSCALER_LEASE).await;
            return Ok(());
        }
    };
    tokio::select! {
        () = keep_lease(store, ha, token, CONTROLLER_LEASE) => {}
        () = controller.deposed() => {}
    }
    Ok(())
}

/// Accepts API connections (HTTPS when `acceptor` is set) until `shutdown` completes or `lead`
/// does; then lets open requests finish (10 s at most).
async fn accept_loop(
    listener: Option<&TcpListener>,
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    app: &axum::Router,
    shutdown: impl Future<Output = ()>,
    lead: impl Future<Output = anyhow::Result<()>>,
) -> Ending {
    tokio::pin!(lead);
    tokio::pin!(shutdown);
    let mut ending = Ending::Shutdown;
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = async {
                match listener {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            led = &mut lead => {
                ending = match led {
                    Ok(()) => Ending::LeadershipLost,
                    Err(e) => Ending::Failed(e),
                };
                break;
            }
        };
        let _ = tcp.set_nodelay(true);
        // Each request carries the client's address (the key of the password rate limit).
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        match acceptor {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    tracing::info!("shutting down: finishing open requests");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within 10 s; closing them");
    }
    ending
}

/// Closes the store, giving up a lease this process holds on a clean stop, and says why the
/// server stopped when it was not asked to.
async fn ending_of(
    ending: Ending,
    store: Arc<dyn nubo_store::Store>,
    ha: Option<&HaConfig>,
    held: Option<(&'static str, u64)>,
) -> anyhow::Result<()> {
    let result = match ending {
        Ending::LeadershipLost => {
            let what = match held {
                Some((AUTOSCALER_LEASE, _)) => "autoscaler",
                _ => "controller",
            };
            Err(anyhow::anyhow!(
                "this server lost the {what} lease (another server took over, or the store was unreachable for longer than the lease): it stopped so that one {what} acts; start it again to stand by"
            ))
        }
        Ending::Failed(e) => {
            release(store.as_ref(), ha, held.as_ref()).await;
            Err(e.context("this server won the lease but could not lead"))
        }
        Ending::Shutdown => {
            // Handing over at once rather than after the lease runs out.
            release(store.as_ref(), ha, held.as_ref()).await;
            Ok(())
        }
    };
    store.close().await;
    if result.is_ok() {
        tracing::info!("nubo server stopped");
    }
    result
}

/// Gives the lease this process holds up (the controller's or the autoscaler's), if any.
async fn release(
    store: &dyn nubo_store::Store,
    ha: Option<&HaConfig>,
    held: Option<&(&'static str, u64)>,
) {
    if let (Some(ha), Some((lease, token))) = (ha, held) {
        let _ = store.release_lease(lease, &ha.holder, *token).await;
    }
}

/// The embedded broker's address: with port 0, the port chosen at the first start is kept in the
/// data directory and reused, so that running agents find the bus again after a restart.
fn embedded_bus_addr(data_dir: &Path, addr: SocketAddr) -> SocketAddr {
    if addr.port() != 0 {
        return addr;
    }
    let file = data_dir.join("bus-port");
    if let Some(port) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse::<u16>().ok())
    {
        return SocketAddr::new(addr.ip(), port);
    }
    let chosen = std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .unwrap_or(addr);
    let _ = std::fs::write(&file, chosen.port().to_string());
    chosen
}

/// Whether a server holds `data_dir` now.
pub fn is_running(data_dir: &Path) -> bool {
    data_dir.join("nubo.lock").exists()
        && lock::DirLock::acquire(&data_dir.join("nubo.lock")).is_err()
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

/// The sealed secrets members' payloads need, opened by the manager (with the secrets key).
struct ManagerSecrets(Arc<Manager>);

impl nubo_controller::OpenSecrets for ManagerSecrets {
    fn engine_key(&self, network_partition: &str, partition: &str, sealed: &str) -> Option<String> {
        self.0.open_engine_key(network_partition, partition, sealed)
    }
}

/// The `kubernetes` provider's registered clusters: the platform's (the super tenant's), read
/// from the store with their credentials opened at each use (a change applies at once).
struct KubeClusters(Arc<Manager>);

#[async_trait::async_trait]
impl nubo_kube::provider::Clusters for KubeClusters {
    async fn get(&self, id: &str) -> Result<nubo_kube::provider::ClusterSettings, String> {
        use nubo_kube::cluster::Access;
        let a = self.0.kubernetes_access(id).await.map_err(|e| match e {
            nubo_manager::ManagerError::NotFound { .. } => format!(
                "no Kubernetes cluster `{id}` is registered on the platform (POST /api/kubernetesClusters as the platform's administrator)"
            ),
            e => e.to_string(),
        })?;
        let access = match a.kubeconfig {
            Some(k) => Access::Kubeconfig(k),
            None => Access::Server {
                url: a.api_server,
                token: a.token,
                ca_pem: a.ca_cert,
            },
        };
        Ok(nubo_kube::provider::ClusterSettings {
            access,
            namespace: a.namespace,
            port_range: a.port_range,
        })
    }

    async fn ids(&self) -> Result<Vec<String>, String> {
        self.0
            .kubernetes_cluster_ids()
            .await
            .map_err(|e| e.to_string())
    }
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call first thing in `main`.
pub fn install_crypto_provider() -> anyhow::Result<()> {
    if rustls::crypto::CryptoProvider::get_default().is_none()
        && rustls::crypto::aws_lc_rs::default_provider()
            .install_default()
            .is_err()
        && rustls::crypto::CryptoProvider::get_default().is_none()
    {
        bail!("cannot install the TLS crypto provider");
    }
    Ok(())
}

/// Makes what this process creates its own: files `0600`, directories `0700` (the store, the TLS
/// key, members' directories and payloads), and so the files of the workloads it starts, unless
/// they choose otherwise. For the processes of the platform (`nubo server`, `nubo node`).
pub fn private_files() {
    // SAFETY: umask(2) has no preconditions.
    unsafe { libc::umask(0o077) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_controller_start_keeps_the_lease() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn nubo_store::Store> = Arc::new(
            nubo_store::SqliteStore::open(&dir.path().join("nubo.db"))
                .await
                .unwrap(),
        );
        let ha = HaConfig {
            holder: "a".into(),
            ttl: Duration::from_millis(300),
        };
        let token = try_lead(store.as_ref(), &ha).await.unwrap();
        // A start three leases long: the lease stays this server's throughout.
        let other = HaConfig {
            holder: "b".into(),
            ..ha.clone()
        };
        let started = renewing(&store, Some(&ha), Some(token), async {
            for _ in 0..9 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                assert_eq!(try_lead(store.as_ref(), &other).await, None, "taken over");
            }
            Ok(42)
        })
        .await
        .unwrap();
        assert_eq!(started, 42);
        let lease = store.lease(CONTROLLER_LEASE).await.unwrap().unwrap();
        assert_eq!((lease.holder.as_str(), lease.token), ("a", token));
        // Without --ha, the start just runs.
        assert_eq!(
            renewing(&store, None, None, async { Ok("plain") })
                .await
                .unwrap(),
            "plain"
        );
    }
}
