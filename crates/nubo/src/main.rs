//! `nubo`: the thin binary. `nubo server` runs the platform; every other command is a client of
//! its REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nubo_server::Settings;

#[derive(Parser)]
#[command(
    name = "nubo",
    version,
    about = "Nubo: a platform-as-a-service framework (the Apache Stratos model) in one binary",
    long_about = "Nubo runs a whole PaaS from one binary.\n\n  nubo server                      start the platform (HTTPS API on 127.0.0.1:9443)\n  nubo cartridge add -f php.json   talk to it (every command but `server` is an API client)\n\nClient commands read NUBO_URL, NUBO_USER, NUBO_PASSWORD and NUBO_CA_CERT, or the file written by `nubo login`.",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: nubo_cli::Global,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Start the platform: store, API, message bus, cloud controller, node supervisor
    Server(Box<ServerArgs>),
    /// Run a member's cartridge agent (started by the node supervisor, not by hand)
    #[command(hide = true)]
    Agent {
        /// The member's payload file
        #[arg(long, value_name = "FILE")]
        payload: PathBuf,
        /// Only remove the member's container (its agent died), then exit
        #[arg(long)]
        remove_container: bool,
    },
    /// Run a load balancer on its own, following the topology on the bus
    Lb(LbArgs),
    /// Run a node supervisor on its own: this host's `local` members, commanded through the bus
    Node(NodeArgs),
    /// Stop every member of a stopped server's data directory (running applications outlive the server)
    Down {
        /// The platform's data directory [default: $XDG_DATA_HOME/nubo or ~/.local/share/nubo]
        #[arg(long, env = "NUBO_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    #[command(flatten)]
    Client(nubo_cli::Command),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl From<LogFormat> for nubo_server::config::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => nubo_server::config::LogFormat::Text,
            LogFormat::Json => nubo_server::config::LogFormat::Json,
        }
    }
}

#[derive(Args)]
struct ServerArgs {
    /// Configuration file (TOML) with any of: data_dir, store, bus, api_addr, insecure_http, tls_cert, tls_key, log_format, …; flags and environment win over it
    #[arg(long, env = "NUBO_SERVER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the platform keeps its state [default: $XDG_DATA_HOME/nubo or ~/.local/share/nubo]
    #[arg(long, env = "NUBO_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where artifacts and state are stored: sqlite://PATH, or postgres://USER:PASSWORD@HOST:PORT/DATABASE (an existing database; tables are created) [default: sqlite://<data-dir>/nubo.db]
    #[arg(long, env = "NUBO_STORE", value_name = "URL")]
    store: Option<String>,
    /// The key that seals the secrets kept in the store (64 hex digits; created when missing). Every server sharing a store needs the same file: copy it from the first server [default: <data-dir>/secrets.key]
    #[arg(long, env = "NUBO_SECRETS_KEY_FILE", value_name = "FILE")]
    secrets_key: Option<PathBuf>,
    /// While the secrets key rotates: the previous key's file. The server seals every stored secret again with --secrets-key at its start; drop this flag once every server has restarted
    #[arg(long, env = "NUBO_SECRETS_KEY_PREVIOUS_FILE", value_name = "FILE")]
    secrets_key_previous: Option<PathBuf>,
    /// Address of the REST API; port 0 picks a free port [default: 127.0.0.1:9443]
    #[arg(long, env = "NUBO_API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// The API's URL as members reach it, for the metadata service (Stratos' METADATA_SERVICE_URL in their payloads) [default: this server's own API, on 127.0.0.1 when it listens on every address]
    #[arg(long, env = "NUBO_API_URL", value_name = "URL")]
    api_url: Option<String>,
    /// Serve plain HTTP instead of HTTPS
    #[arg(long, env = "NUBO_INSECURE_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_http: bool,
    /// TLS certificate chain (PEM); without it a self-signed certificate is generated into the data directory
    #[arg(long, env = "NUBO_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "NUBO_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Log format [default: text]
    #[arg(long, env = "NUBO_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// The message bus, which agents and load balancers connect to too: `embedded` (the MQTT broker built into the server), `mqtt://host:port` (an MQTT broker, e.g. Mosquitto) or `nats://host:port` (a NATS server) [default: embedded]
    #[arg(long, env = "NUBO_BUS", value_name = "URL")]
    bus: Option<String>,
    /// The former name of --bus
    #[arg(
        long,
        env = "NUBO_BUS_URL",
        value_name = "URL",
        hide = true,
        conflicts_with = "bus"
    )]
    bus_url: Option<String>,
    /// The bus of another server of the same platform: the credentials file it wrote (`<data-dir>/bus.json`, printed at its start as `nubo: bus credentials: FILE`); the platform's key itself comes from the shared store
    #[arg(long, env = "NUBO_BUS_CREDENTIALS", value_name = "FILE", conflicts_with_all = ["bus", "bus_url"])]
    bus_credentials: Option<PathBuf>,
    /// Address of the embedded MQTT broker (with `--bus embedded`) [default: 127.0.0.1:1883]
    #[arg(long, env = "NUBO_BUS_ADDR")]
    bus_addr: Option<SocketAddr>,
    /// Address the load balancer's proxy ports bind to [default: 127.0.0.1]
    #[arg(long, env = "NUBO_LB_BIND")]
    lb_bind: Option<std::net::IpAddr>,
    /// How the load balancer picks a member
    #[arg(long, env = "NUBO_LB_STRATEGY", value_enum)]
    lb_strategy: Option<LbStrategy>,
    /// The tenants this server's load balancer serves: `*`, or tenant ids, ranges `A-B` and `super`, comma-separated [default: *]
    #[arg(long, env = "NUBO_LB_TENANTS", value_name = "SET")]
    lb_tenants: Option<String>,
    /// The load balancer's default certificate chain for HTTPS (PEM), presented to clients naming no domain with a certificate of its own [default: a self-signed one generated into the data directory]
    #[arg(
        long,
        env = "NUBO_LB_TLS_CERT",
        requires = "lb_tls_key",
        value_name = "FILE"
    )]
    lb_tls_cert: Option<PathBuf>,
    /// The private key of --lb-tls-cert (PEM)
    #[arg(
        long,
        env = "NUBO_LB_TLS_KEY",
        requires = "lb_tls_cert",
        value_name = "FILE"
    )]
    lb_tls_key: Option<PathBuf>,
    /// Do not run the built-in load balancer
    #[arg(long, env = "NUBO_NO_LB")]
    no_lb: bool,
    /// The components this process runs, comma-separated, from: api (with the manager), controller, autoscaler, event-processor, lb, node (Stratos' names work too: manager, cloud-controller, cep, load-balancer, node-supervisor). Without `controller`, the API and the autoscaler reach another server's controller through the bus and read its state from the store (same --store and --bus; run one autoscaler per platform). An autoscaler without `event-processor` decides on the predictions of an event processor in another process. Without `node`, `local` members run on the node supervisor named by --node (`nubo node`) [default: all]
    #[arg(
        long,
        env = "NUBO_COMPONENTS",
        value_name = "LIST",
        value_delimiter = ','
    )]
    components: Option<Vec<String>>,
    /// One of several servers sharing a store (PostgreSQL) and a bus: only the holder of the controller lease runs the controller; the others serve the API as standbys (through the leader) and take over within --ha-lease seconds of its death
    #[arg(long, env = "NUBO_HA")]
    ha: bool,
    /// How long the controller lease lasts without renewal (renewed every third of it) [default: 5]
    #[arg(long, env = "NUBO_HA_LEASE", value_name = "SECONDS")]
    ha_lease: Option<f64>,
    /// The node supervisor (`nubo node --name NAME`) that runs `local` members when this process runs no `node` component [default: local]
    #[arg(long, env = "NUBO_NODE", value_name = "NAME")]
    node: Option<String>,
    /// Seconds between two autoscaling decision rounds (Stratos: 90) [default: 1]
    #[arg(long, env = "NUBO_SCALE_TICK", value_name = "SECONDS")]
    scale_tick: Option<f64>,
    /// Seconds of statistics the autoscaler averages over (Stratos: 60) [default: 5]
    #[arg(long, env = "NUBO_SCALE_WINDOW", value_name = "SECONDS")]
    scale_window: Option<f64>,
    /// Seconds between two scale-ups of a cluster [default: 3]
    #[arg(long, env = "NUBO_SCALE_UP_COOLDOWN", value_name = "SECONDS")]
    scale_up_cooldown: Option<f64>,
    /// Seconds after any scaling before a cluster scales down [default: 15]
    #[arg(long, env = "NUBO_SCALE_DOWN_COOLDOWN", value_name = "SECONDS")]
    scale_down_cooldown: Option<f64>,
    /// Seconds an Active member may go without health statistics before it is replaced (Stratos: 60) [default: 5]
    #[arg(long, env = "NUBO_FAULT_TIMEOUT", value_name = "SECONDS")]
    fault_timeout: Option<f64>,
    /// Seconds a member may take from creation to Active before it is replaced; a cartridge's `activationTimeout` property wins (Stratos: 900) [default: 120]
    #[arg(long, env = "NUBO_ACTIVATION_TIMEOUT", value_name = "SECONDS")]
    activation_timeout: Option<u64>,
    /// Seconds the agent waits for a workload's ports to open; a cartridge's `portCheckTimeout` property wins (Stratos: 600) [default: 120]
    #[arg(long, env = "NUBO_PORT_CHECK_TIMEOUT", value_name = "SECONDS")]
    port_check_timeout: Option<u64>,
    /// Seconds a member may drain before it is terminated anyway; a cartridge's `drainTimeout` property wins (Stratos: 1800) [default: 30]
    #[arg(long, env = "NUBO_DRAIN_TIMEOUT", value_name = "SECONDS")]
    drain_timeout: Option<u64>,
    /// Seconds a workload has from SIGTERM to its end before it is killed; a cartridge's `terminationTimeout` property wins [default: 10]
    #[arg(long, env = "NUBO_TERMINATION_TIMEOUT", value_name = "SECONDS")]
    termination_timeout: Option<u64>,
    /// The longest life of a login's session (`POST /api/login`), in seconds [default: 43200, 12 hours]
    #[arg(long, env = "NUBO_SESSION_TTL", value_name = "SECONDS")]
    session_ttl: Option<u64>,
    /// Days the audit log (`GET /api/audit`: every change through the API) keeps an entry [default: 90]
    #[arg(long, env = "NUBO_AUDIT_RETENTION_DAYS", value_name = "DAYS")]
    audit_retention_days: Option<u64>,
    /// Offer the `mock` IaaS provider, with the health-statistics patterns of this Stratos mock-iaas.xml (`-` for the defaults: memory 20, load 20, requests 1)
    #[arg(long, env = "NUBO_MOCK_IAAS", value_name = "FILE")]
    mock_iaas: Option<PathBuf>,
    /// How fast the mock IaaS's clock runs: pattern sample durations are divided by it [default: 1]
    #[arg(long, env = "NUBO_MOCK_SPEED", value_name = "FACTOR")]
    mock_speed: Option<f64>,
    /// Seconds between two health statistics of a mock member (Stratos: 15) [default: 1]
    #[arg(long, env = "NUBO_MOCK_STATS_INTERVAL", value_name = "SECONDS")]
    mock_stats_interval: Option<f64>,
    /// Seconds from a mock member's start to its activation [default: 0]
    #[arg(long, env = "NUBO_MOCK_BOOT_DELAY", value_name = "SECONDS")]
    mock_boot_delay: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LbStrategy {
    /// In turn
    RoundRobin,
    /// The member with the fewest requests in flight
    LeastOutstanding,
}

impl LbStrategy {
    /// Its name in the configuration.
    fn name(self) -> &'static str {
        match self {
            LbStrategy::RoundRobin => "round-robin",
            LbStrategy::LeastOutstanding => "least-outstanding",
        }
    }
}

impl From<LbStrategy> for nubo_lb::Strategy {
    fn from(s: LbStrategy) -> Self {
        match s {
            LbStrategy::RoundRobin => nubo_lb::Strategy::RoundRobin,
            LbStrategy::LeastOutstanding => nubo_lb::Strategy::LeastOutstanding,
        }
    }
}

#[derive(Args)]
struct NodeArgs {
    /// The platform's bus credentials: the file `nubo server` writes (it prints `nubo: bus credentials: FILE` at start; `<data-dir>/bus.json`), with the bus URL and the key that proves every message
    #[arg(long, env = "NUBO_BUS_CREDENTIALS", value_name = "FILE")]
    bus_credentials: PathBuf,
    /// Another URL for the same bus than the credentials' (an address this host reaches it at)
    #[arg(long, env = "NUBO_BUS", value_name = "URL")]
    bus: Option<String>,
    /// The node's name: the controller's `--node` names it [default: local]
    #[arg(long, env = "NUBO_NODE_NAME", default_value = "local")]
    name: String,
    /// Where the node keeps its members (each in `<DIR>/members/<member>/`) [default: $XDG_DATA_HOME/nubo-node or ~/.local/share/nubo-node]
    #[arg(long, env = "NUBO_NODE_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct LbArgs {
    /// The platform's bus credentials, to follow the topology: the file `nubo server` writes (it prints `nubo: bus credentials: FILE` at start; `<data-dir>/bus.json`), with the bus URL and the key that proves every message
    #[arg(
        long,
        env = "NUBO_BUS_CREDENTIALS",
        value_name = "FILE",
        required_unless_present_any = ["route"]
    )]
    bus_credentials: Option<PathBuf>,
    /// Another URL for the same bus than the credentials' (an address this host reaches it at)
    #[arg(
        long,
        env = "NUBO_BUS",
        value_name = "URL",
        requires = "bus_credentials"
    )]
    bus: Option<String>,
    /// The former name of --bus
    #[arg(
        long,
        env = "NUBO_BUS_URL",
        value_name = "URL",
        hide = true,
        conflicts_with = "bus"
    )]
    bus_url: Option<String>,
    /// A static route instead of the bus: HOST:PROXY_PORT=MEMBER_ADDR[,MEMBER_ADDR...] (repeatable)
    #[arg(long, value_name = "ROUTE")]
    route: Vec<String>,
    /// Address the proxy ports bind to
    #[arg(long, env = "NUBO_LB_BIND", default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// How to pick a member
    #[arg(
        long,
        env = "NUBO_LB_STRATEGY",
        value_enum,
        default_value = "round-robin"
    )]
    strategy: LbStrategy,
    /// This load balancer's id in statistics [default: lb-<bind address>]
    #[arg(long)]
    id: Option<String>,
    /// The tenants it serves: `*`, or tenant ids, ranges `A-B` and `super`, comma-separated (the others' host names and domains get 404)
    #[arg(long, env = "NUBO_LB_TENANTS", default_value = "*", value_name = "SET")]
    tenants: String,
    /// The default certificate chain for HTTPS (PEM): presented to clients naming no domain with a certificate of its own (the tenants' domains' come on the bus). Without it, only those domains are served over HTTPS
    #[arg(
        long,
        env = "NUBO_LB_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(
        long,
        env = "NUBO_LB_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    tls_key: Option<PathBuf>,
}

fn init_logging(format: nubo_server::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NUBO_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,tower_http=warn,rumqttd=warn,rumqttc=warn",
        )
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        nubo_server::config::LogFormat::Text => b.init(),
        nubo_server::config::LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

impl ServerArgs {
    /// The settings the flags and the environment give.
    fn settings(self) -> Settings {
        Settings {
            data_dir: self.data_dir,
            secrets_key: self.secrets_key,
            secrets_key_previous: self.secrets_key_previous,
            store: self.store,
            api_addr: self.api_addr,
            api_url: self.api_url,
            insecure_http: self.insecure_http.then_some(true),
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            log_format: self.log_format.map(Into::into),
            bus_addr: self.bus_addr,
            bus: self.bus.or(self.bus_url),
            lb_bind: self.lb_bind,
            lb_strategy: self.lb_strategy.map(|s| s.name().to_owned()),
            lb_tenants: self.lb_tenants,
            lb_tls_cert: self.lb_tls_cert,
            lb_tls_key: self.lb_tls_key,
            no_lb: self.no_lb.then_some(true),
            components: self.components,
            node: self.node,
            ha: self.ha.then_some(true),
            ha_lease: self.ha_lease,
            scale_tick: self.scale_tick,
            scale_window: self.scale_window,
            scale_up_cooldown: self.scale_up_cooldown,
            scale_down_cooldown: self.scale_down_cooldown,
            fault_timeout: self.fault_timeout,
            activation_timeout: self.activation_timeout,
            port_check_timeout: self.port_check_timeout,
            drain_timeout: self.drain_timeout,
            termination_timeout: self.termination_timeout,
            session_ttl: self.session_ttl,
            audit_retention_days: self.audit_retention_days,
            mock_iaas: self.mock_iaas,
            mock_speed: self.mock_speed,
            mock_stats_interval: self.mock_stats_interval,
            mock_boot_delay: self.mock_boot_delay,
        }
    }
}

async fn server(mut args: ServerArgs) -> anyhow::Result<()> {
    nubo_server::private_files();
    let mut bus_key = None;
    if let Some(file) = args.bus_credentials.take() {
        let creds = nubo_bus::BusCredentials::read(&file).map_err(anyhow::Error::msg)?;
        args.bus = Some(creds.url);
        bus_key = Some(creds.key);
    }
    let config_file = args.config.clone();
    let file = match &config_file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let settings = args.settings().or(file);
    init_logging(settings.log_format.unwrap_or_default());
    let config = settings.resolve(nubo_server::config::Environment {
        admin_password: std::env::var("NUBO_ADMIN_PASSWORD").ok(),
        bus_key,
        agent: nubo_node::AgentCommand {
            program: std::env::current_exe().context("cannot tell where the nubo binary is")?,
            args: vec!["agent".into()],
        },
        holder: format!(
            "{}:{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".into()),
            std::process::id()
        ),
        config_file,
    })?;
    for note in &config.ignored {
        eprintln!("nubo: ignored: {note}");
        tracing::warn!(setting = %note, "ignored");
    }
    let data_dir = config.data_dir.clone();
    nubo_server::run(
        config,
        |ready| {
            if ready.api_url.is_empty() {
                println!("nubo: no API in this process (--components)");
            } else {
                println!("nubo: API listening on {}", ready.api_url);
            }
            if let Some(ca) = &ready.ca_cert {
                println!(
                    "nubo: self-signed certificate: {} (clients: --ca-cert or NUBO_CA_CERT)",
                    ca.display()
                );
            }
            if let Some(p) = &ready.generated_password {
                println!("nubo: generated the admin password (shown once): {p}");
                println!(
                    "nubo: set NUBO_ADMIN_PASSWORD before the first start to choose it instead"
                );
            }
            println!("nubo: bus: {}", nubo_bus::redact_url(&ready.bus_url));
            println!("nubo: bus credentials: {}", ready.bus_credentials.display());
            println!("nubo: store: {}", ready.store);
            println!("nubo: data directory: {}", data_dir.display());
        },
        nubo_server::shutdown_signal(),
    )
    .await
}

/// The agent: a small single-threaded runtime, logs to standard error (the member's agent.log).
fn agent(payload: &std::path::Path) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NUBO_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttc=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // First of all, so that a supervisor killed before it recorded this agent still finds it.
    if let Some(dir) = payload.parent()
        && let Err(e) = nubo_agent::record_agent(dir)
    {
        eprintln!(
            "warning: cannot record this agent in {}: {e}",
            dir.display()
        );
    }
    match rt.block_on(nubo_agent::run(payload)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Joins the platform's bus as one of its components, with the credentials `nubo server` wrote
/// (`url`, when given, is another address of the same bus); the events and the URL used.
async fn join_bus(
    credentials: &std::path::Path,
    url: Option<String>,
    client_id: &str,
) -> anyhow::Result<(nubo_bus::EventBus, String)> {
    let creds = nubo_bus::BusCredentials::read(credentials).map_err(|e| {
        anyhow::anyhow!("{e}: pass the file `nubo server` writes (`<data-dir>/bus.json`, printed at its start as `nubo: bus credentials: FILE`)")
    })?;
    let url = url.unwrap_or_else(|| creds.url.clone());
    let shown = nubo_bus::redact_url(&url);
    let bus = nubo_bus::connect_url(&url, client_id)
        .await
        .with_context(|| format!("cannot use the bus {shown}"))?;
    bus.wait_connected(std::time::Duration::from_secs(15))
        .await
        .with_context(|| format!("cannot reach the bus at {shown}"))?;
    Ok((nubo_bus::EventBus::with_auth(bus, creds.auth()), url))
}

async fn lb(args: LbArgs) -> anyhow::Result<()> {
    init_logging(nubo_server::config::LogFormat::Text);
    let config = nubo_lb::LbConfig {
        bind: args.bind,
        strategy: args.strategy.into(),
        id: args.id.unwrap_or_else(|| format!("lb-{}", args.bind)),
        tenants: nubo_lb::TenantSet::parse(&args.tenants)
            .map_err(|e| anyhow::anyhow!("--tenants: {e}"))?,
        ..Default::default()
    };
    let config_id = config.id.clone();
    let lb = nubo_lb::LoadBalancer::new(config);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        lb.certificates()
            .set_default(Some(nubo_server::tls::lb_certificate(cert, key)?));
    }
    if !args.route.is_empty() {
        let topology = nubo_lb::static_topology(&args.route).map_err(anyhow::Error::msg)?;
        lb.set_topology(&topology).await;
        println!(
            "nubo: load balancer with {} static route(s) on {}",
            args.route.len(),
            args.bind
        );
    }
    if let Some(file) = &args.bus_credentials {
        let (events, url) = join_bus(
            file,
            args.bus.or(args.bus_url),
            &format!("nubo-lb-{}", config_id),
        )
        .await?;
        lb.follow(events).await?;
        println!(
            "nubo: load balancer following {} (proxy ports bind to {})",
            nubo_bus::redact_url(&url),
            args.bind
        );
    }
    nubo_server::shutdown_signal().await;
    Ok(())
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    nubo_server::private_files();
    init_logging(nubo_server::config::LogFormat::Text);
    let dir = args.data_dir.unwrap_or_else(nubo_server::default_node_dir);
    let (events, url) = join_bus(
        &args.bus_credentials,
        args.bus,
        &format!("nubo-node-{}", args.name),
    )
    .await?;
    let agent = nubo_node::AgentCommand {
        program: std::env::current_exe().context("cannot tell where the nubo binary is")?,
        args: vec!["agent".into()],
    };
    let sup = nubo_node::NodeSupervisor::new(dir.join("members"), agent, events.clone())
        .with_context(|| format!("cannot keep members in {}", dir.display()))?;
    println!(
        "nubo: node `{}` on {} (members in {})",
        args.name,
        nubo_bus::redact_url(&url),
        dir.join("members").display()
    );
    tokio::select! {
        r = nubo_node::serve(sup, events, args.name) => r.context("the bus closed")?,
        _ = nubo_server::shutdown_signal() => {}
    }
    Ok(())
}

async fn down(data_dir: PathBuf) -> anyhow::Result<()> {
    if nubo_server::is_running(&data_dir) {
        anyhow::bail!(
            "a nubo server is running on {}: it would replace the members at once. Undeploy the applications (`nubo undeploy APP`), or stop the server first",
            data_dir.display()
        );
    }
    let dir = data_dir.join("members");
    let n = nubo_node::stop_all(&dir);
    println!("stopping {n} member(s) under {}", dir.display());
    for _ in 0..100 {
        if nubo_node::stop_all_pending(&dir) == 0 {
            println!("all members stopped");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    nubo_node::kill_all(&dir);
    println!("killed the members that did not stop within 10 s");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = nubo_server::install_crypto_provider() {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    // One worker asked for (`TOKIO_WORKER_THREADS=1`, as when a load balancer is pinned to a core):
    // the single-threaded scheduler, which does less work per task switch.
    let single = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Top::Agent {
        payload,
        remove_container,
    } = &cli.command
    {
        if *remove_container {
            return match rt.block_on(nubo_agent::remove_container(payload)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        return agent(payload);
    }
    let result = rt.block_on(async {
        match cli.command {
            Top::Server(args) => server(*args).await,
            Top::Client(cmd) => {
                let mut global = cli.global;
                global.local_data_dir = Some(nubo_server::default_data_dir());
                nubo_cli::run(&global, &cmd).await
            }
            Top::Down { data_dir } => {
                down(data_dir.unwrap_or_else(nubo_server::default_data_dir)).await
            }
            Top::Agent { .. } => Ok(()),
            Top::Lb(args) => lb(args).await,
            Top::Node(args) => node(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every subcommand (unique flags, valid defaults).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
