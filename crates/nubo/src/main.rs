//! `nubo`: the thin binary. `nubo server` runs the platform; every other command is a client of
//! its REST API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use nubo_server::{ServerConfig, TlsMode};

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

#[derive(Clone, Copy, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
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
    store: Option<nubo_server::StoreLocation>,
    /// Address of the REST API; port 0 picks a free port [default: 127.0.0.1:9443]
    #[arg(long, env = "NUBO_API_ADDR")]
    api_addr: Option<SocketAddr>,
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
    /// Address of the embedded MQTT broker (with `--bus embedded`) [default: 127.0.0.1:1883]
    #[arg(long, env = "NUBO_BUS_ADDR")]
    bus_addr: Option<SocketAddr>,
    /// Address the load balancer's proxy ports bind to [default: 127.0.0.1]
    #[arg(long, env = "NUBO_LB_BIND")]
    lb_bind: Option<std::net::IpAddr>,
    /// How the load balancer picks a member
    #[arg(long, env = "NUBO_LB_STRATEGY", value_enum)]
    lb_strategy: Option<LbStrategy>,
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

#[derive(Clone, Copy, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum LbStrategy {
    /// In turn
    RoundRobin,
    /// The member with the fewest requests in flight
    LeastOutstanding,
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
    /// The bus the controller is on: the server's (it prints `nubo: bus: URL` at start), mqtt://host:port or nats://host:port
    #[arg(long, env = "NUBO_BUS", value_name = "URL")]
    bus: String,
    /// The node's name: the controller's `--node` names it [default: local]
    #[arg(long, env = "NUBO_NODE_NAME", default_value = "local")]
    name: String,
    /// Where the node keeps its members (each in `<DIR>/members/<member>/`) [default: $XDG_DATA_HOME/nubo-node or ~/.local/share/nubo-node]
    #[arg(long, env = "NUBO_NODE_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
struct LbArgs {
    /// The bus to follow the topology on: the server's (it prints `nubo: bus: URL` at start), mqtt://host:port or nats://host:port
    #[arg(
        long,
        env = "NUBO_BUS",
        value_name = "URL",
        required_unless_present_any = ["route", "bus_url"]
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
}

/// The server's configuration file; every key optional.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    api_addr: Option<SocketAddr>,
    insecure_http: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    log_format: Option<LogFormat>,
    bus_addr: Option<SocketAddr>,
    #[serde(alias = "bus_url")]
    bus: Option<String>,
    lb_bind: Option<std::net::IpAddr>,
    lb_strategy: Option<LbStrategy>,
    no_lb: Option<bool>,
    components: Option<Vec<String>>,
    node: Option<String>,
    ha: Option<bool>,
    ha_lease: Option<f64>,
    scale_window: Option<f64>,
    scale_tick: Option<f64>,
    scale_up_cooldown: Option<f64>,
    scale_down_cooldown: Option<f64>,
    fault_timeout: Option<f64>,
    mock_iaas: Option<PathBuf>,
    mock_speed: Option<f64>,
    mock_stats_interval: Option<f64>,
    mock_boot_delay: Option<f64>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NUBO_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,tower_http=warn,rumqttd=warn,rumqttc=warn",
        )
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let file: ServerFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text).with_context(|| {
                format!("{} is not a valid server configuration", path.display())
            })?
        }
        None => ServerFile::default(),
    };
    init_logging(
        args.log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
    );
    let mock = mock_config(&args, &file)?;
    let components = components(args.components.clone().or(file.components.clone()))?;
    let has = |c: &str| components.iter().any(|x| x == c);
    let insecure = args.insecure_http || file.insecure_http.unwrap_or(false);
    let tls = match (
        insecure,
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (true, _, _) => TlsMode::Insecure,
        (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
        (false, None, None) => TlsMode::SelfSigned,
        _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
    };
    let store = match (args.store, &file.store) {
        (Some(store), _) => Some(store),
        (None, Some(url)) => Some(url.parse().with_context(|| {
            format!(
                "`store` in {}",
                args.config.as_deref().unwrap_or(Path::new("")).display()
            )
        })?),
        (None, None) => None,
    };
    let default_addr: SocketAddr = ([127, 0, 0, 1], 9443).into();
    let config = ServerConfig {
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(nubo_server::default_data_dir),
        store,
        api_addr: args.api_addr.or(file.api_addr).unwrap_or(default_addr),
        tls,
        admin_password: std::env::var("NUBO_ADMIN_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty()),
        providers: nubo_manager_providers(),
        bus: bus_mode(
            args.bus.or(args.bus_url).or(file.bus),
            args.bus_addr.or(file.bus_addr),
        )?,
        agent: nubo_node::AgentCommand {
            program: std::env::current_exe().context("cannot tell where the nubo binary is")?,
            args: vec!["agent".into()],
        },
        autoscaler: {
            let d = nubo_autoscaler::monitor::MonitorConfig::default();
            nubo_autoscaler::monitor::MonitorConfig {
                tick: secs(
                    args.scale_tick.or(file.scale_tick).filter(|t| *t > 0.0),
                    d.tick,
                ),
                window: secs(args.scale_window.or(file.scale_window), d.window),
                up_cooldown: secs(
                    args.scale_up_cooldown.or(file.scale_up_cooldown),
                    d.up_cooldown,
                ),
                down_cooldown: secs(
                    args.scale_down_cooldown.or(file.scale_down_cooldown),
                    d.down_cooldown,
                ),
                fault_timeout: secs(args.fault_timeout.or(file.fault_timeout), d.fault_timeout),
            }
        },
        mock,
        remote_node: (!has("node")).then(|| {
            args.node
                .clone()
                .or(file.node.clone())
                .unwrap_or_else(|| "local".into())
        }),
        autoscale: has("autoscaler"),
        event_processor: has("event-processor"),
        controller: has("controller"),
        api: has("api"),
        serve_node: (has("node") && !has("controller")).then(|| {
            args.node
                .clone()
                .or(file.node.clone())
                .unwrap_or_else(|| "local".into())
        }),
        ha: (args.ha || file.ha.unwrap_or(false)).then(|| nubo_server::HaConfig {
            holder: format!(
                "{}:{}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "host".into()),
                std::process::id()
            ),
            ttl: secs(
                args.ha_lease.or(file.ha_lease).filter(|t| *t > 0.0),
                std::time::Duration::from_secs(5),
            ),
        }),
        lb: (has("lb") && !(args.no_lb || file.no_lb.unwrap_or(false))).then(|| {
            nubo_lb::LbConfig {
                bind: args
                    .lb_bind
                    .or(file.lb_bind)
                    .unwrap_or([127, 0, 0, 1].into()),
                strategy: args
                    .lb_strategy
                    .or(file.lb_strategy)
                    .map(Into::into)
                    .unwrap_or_default(),
                ..Default::default()
            }
        }),
    };
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
            println!("nubo: bus: {}", ready.bus_url);
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

async fn lb(args: LbArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let config = nubo_lb::LbConfig {
        bind: args.bind,
        strategy: args.strategy.into(),
        id: args.id.unwrap_or_else(|| format!("lb-{}", args.bind)),
        ..Default::default()
    };
    let lb = nubo_lb::LoadBalancer::new(config);
    if !args.route.is_empty() {
        let topology = nubo_lb::static_topology(&args.route).map_err(anyhow::Error::msg)?;
        lb.set_topology(&topology).await;
        println!(
            "nubo: load balancer with {} static route(s) on {}",
            args.route.len(),
            args.bind
        );
    }
    if let Some(url) = args.bus.or(args.bus_url) {
        let bus = nubo_bus::connect_url(&url, "nubo-lb")
            .await
            .with_context(|| format!("cannot use the bus {url}"))?;
        bus.wait_connected(std::time::Duration::from_secs(15))
            .await
            .with_context(|| format!("cannot reach the bus at {url}"))?;
        lb.follow(nubo_bus::EventBus::new(bus)).await?;
        println!(
            "nubo: load balancer following {url} (proxy ports bind to {})",
            args.bind
        );
    }
    nubo_server::shutdown_signal().await;
    Ok(())
}

/// The components a server runs (`--components`): every one by default. Stratos' names are
/// accepted too: `manager` (the API), `cloud-controller`, `cep` (the event processor),
/// `load-balancer`, `node-supervisor`.
fn components(list: Option<Vec<String>>) -> anyhow::Result<Vec<String>> {
    const ALL: [&str; 6] = [
        "api",
        "controller",
        "autoscaler",
        "event-processor",
        "lb",
        "node",
    ];
    const ALIASES: [(&str, &str); 5] = [
        ("manager", "api"),
        ("cloud-controller", "controller"),
        ("cep", "event-processor"),
        ("load-balancer", "lb"),
        ("node-supervisor", "node"),
    ];
    let list: Vec<String> = match list {
        None => return Ok(ALL.iter().map(|s| (*s).to_owned()).collect()),
        Some(l) => l
            .iter()
            .map(|s| s.trim().to_ascii_lowercase().replace('_', "-"))
            .filter(|s| !s.is_empty())
            .collect(),
    };
    let mut out = Vec::new();
    for c in list {
        let name = ALIASES
            .iter()
            .find(|(alias, _)| *alias == c)
            .map_or(c.as_str(), |(_, name)| name);
        if !ALL.contains(&name) {
            anyhow::bail!(
                "--components: unknown component `{c}`; the components are {} (or Stratos' names: manager, cloud-controller, cep, load-balancer, node-supervisor)",
                ALL.join(", ")
            );
        }
        if !out.iter().any(|o| o == name) {
            out.push(name.to_owned());
        }
    }
    if out.is_empty() {
        anyhow::bail!("--components: name at least one of {}", ALL.join(", "));
    }
    Ok(out)
}

async fn node(args: NodeArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let dir = args.data_dir.unwrap_or_else(|| {
        let d = nubo_server::default_data_dir();
        d.with_file_name(format!(
            "{}-node",
            d.file_name().and_then(|n| n.to_str()).unwrap_or("nubo")
        ))
    });
    let bus = nubo_bus::connect_url(&args.bus, &format!("nubo-node-{}", args.name))
        .await
        .with_context(|| format!("cannot use the bus {}", args.bus))?;
    bus.wait_connected(std::time::Duration::from_secs(15))
        .await
        .with_context(|| format!("cannot reach the bus at {}", args.bus))?;
    let events = nubo_bus::EventBus::new(bus);
    let agent = nubo_node::AgentCommand {
        program: std::env::current_exe().context("cannot tell where the nubo binary is")?,
        args: vec!["agent".into()],
    };
    let sup = nubo_node::NodeSupervisor::new(dir.join("members"), agent, events.clone())
        .with_context(|| format!("cannot keep members in {}", dir.display()))?;
    println!(
        "nubo: node `{}` on {} (members in {})",
        args.name,
        args.bus,
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

/// Where the server's bus is: `--bus` (`embedded` by default) and, for the embedded broker, `--bus-addr`.
fn bus_mode(bus: Option<String>, addr: Option<SocketAddr>) -> anyhow::Result<nubo_server::BusMode> {
    let url = bus.unwrap_or_else(|| "embedded".into());
    match url.parse::<nubo_bus::BusUrl>() {
        Ok(nubo_bus::BusUrl::Embedded) => Ok(nubo_server::BusMode::Embedded(
            addr.unwrap_or(([127, 0, 0, 1], 1883).into()),
        )),
        Ok(_) if addr.is_some() => anyhow::bail!(
            "--bus-addr is the embedded broker's address: it does not go with --bus {url}"
        ),
        Ok(_) => Ok(nubo_server::BusMode::External(url)),
        Err(e) => Err(anyhow::Error::new(e).context("--bus")),
    }
}

/// A setting in seconds (finite, ≥ 0), or `default`.
fn secs(v: Option<f64>, default: std::time::Duration) -> std::time::Duration {
    v.filter(|s| s.is_finite() && *s >= 0.0)
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(default)
}

/// The mock IaaS's settings, when `--mock-iaas` (or `mock_iaas` in the config file) asks for it.
fn mock_config(
    args: &ServerArgs,
    file: &ServerFile,
) -> anyhow::Result<Option<nubo_mock::MockConfig>> {
    let Some(path) = args.mock_iaas.clone().or(file.mock_iaas.clone()) else {
        return Ok(None);
    };
    let d = nubo_mock::MockConfig::default();
    let patterns = if path.as_os_str() == "-" {
        nubo_mock::Patterns::default()
    } else {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the mock IaaS patterns {}", path.display()))?;
        nubo_mock::Patterns::from_xml(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (the format is Stratos' mock-iaas.xml; see docs/mock-iaas.md)",
                path.display()
            )
        })?
    };
    Ok(Some(nubo_mock::MockConfig {
        patterns,
        speed: args
            .mock_speed
            .or(file.mock_speed)
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(d.speed),
        stats_interval: secs(
            args.mock_stats_interval.or(file.mock_stats_interval),
            d.stats_interval,
        )
        .max(std::time::Duration::from_millis(10)),
        boot_delay: secs(args.mock_boot_delay.or(file.mock_boot_delay), d.boot_delay),
        state_file: None,
    }))
}

fn nubo_manager_providers() -> Vec<String> {
    ["local", "mock"].iter().map(|s| s.to_string()).collect()
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
    if let Top::Agent { payload } = &cli.command {
        return agent(payload);
    }
    let result = rt.block_on(async {
        match cli.command {
            Top::Server(args) => server(*args).await,
            Top::Client(cmd) => nubo_cli::run(&cli.global, &cmd).await,
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
    #[test]
    fn components_take_nubo_and_stratos_names() {
        use super::components;
        let l = |s: &[&str]| Some(s.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(components(None).unwrap().len(), 6);
        assert_eq!(
            components(l(&[
                "Manager",
                "cloud_controller",
                "CEP",
                "autoscaler",
                "event-processor"
            ]))
            .unwrap(),
            ["api", "controller", "event-processor", "autoscaler"]
        );
        assert_eq!(
            components(l(&["load-balancer", "node-supervisor", " "])).unwrap(),
            ["lb", "node"]
        );
        let err = components(l(&["scheduler"])).unwrap_err().to_string();
        assert!(err.contains("unknown component `scheduler`"), "{err}");
        assert!(components(l(&[""])).is_err());
    }

    /// clap's own consistency checks over every subcommand (unique flags, valid defaults).
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn bus_urls_choose_the_bus() {
        use nubo_server::BusMode;
        let addr = |s: &str| Some(s.parse().unwrap());
        let mode = |bus: Option<&str>, a| super::bus_mode(bus.map(str::to_owned), a);
        assert_eq!(
            mode(None, None).unwrap(),
            BusMode::Embedded(([127, 0, 0, 1], 1883).into())
        );
        assert_eq!(
            mode(Some("embedded"), addr("127.0.0.1:0")).unwrap(),
            BusMode::Embedded(([127, 0, 0, 1], 0).into())
        );
        assert_eq!(
            mode(Some("nats://127.0.0.1:4222"), None).unwrap(),
            BusMode::External("nats://127.0.0.1:4222".into())
        );
        assert_eq!(
            mode(Some("mqtt://broker:1883"), None).unwrap(),
            BusMode::External("mqtt://broker:1883".into())
        );
        let err = mode(Some("nats://x:1"), addr("127.0.0.1:1")).unwrap_err();
        assert!(err.to_string().contains("--bus-addr"), "{err}");
        let err = format!("{:#}", mode(Some("amqp://x"), None).unwrap_err());
        assert!(err.contains("--bus") && err.contains("nats://"), "{err}");
    }

    #[test]
    fn the_config_file_names_the_bus() {
        for key in ["bus", "bus_url"] {
            let f: super::ServerFile =
                toml::from_str(&format!("{key} = \"nats://n:4222\"")).unwrap();
            assert_eq!(f.bus.as_deref(), Some("nats://n:4222"));
        }
    }
}
