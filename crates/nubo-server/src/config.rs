//! The server's configuration in one place: the components a process runs, the settings as
//! flags, environment and the configuration file give them ([`Settings`], every one optional),
//! merged (flags and environment win over the file) and resolved into a [`ServerConfig`], which
//! refuses invalid combinations with a message that says what to change.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use nubo_store::StoreLocation;
use serde::Deserialize;

// === components ===

/// A component a server process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// The REST API, with the manager.
    Api,
    /// The cloud controller.
    Controller,
    /// The autoscaler.
    Autoscaler,
    /// The event processor (Stratos' CEP).
    EventProcessor,
    /// The load balancer.
    Lb,
    /// The node supervisor (the `local` provider's members).
    Node,
}

impl Component {
    /// Every component, in the order they are listed.
    pub const ALL: [Component; 6] = [
        Component::Api,
        Component::Controller,
        Component::Autoscaler,
        Component::EventProcessor,
        Component::Lb,
        Component::Node,
    ];

    /// Its name in `--components`.
    pub fn name(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Controller => "controller",
            Component::Autoscaler => "autoscaler",
            Component::EventProcessor => "event-processor",
            Component::Lb => "lb",
            Component::Node => "node",
        }
    }

    /// Stratos' name for it.
    pub fn stratos_name(self) -> &'static str {
        match self {
            Component::Api => "manager",
            Component::Controller => "cloud-controller",
            Component::Autoscaler => "autoscaler",
            Component::EventProcessor => "cep",
            Component::Lb => "load-balancer",
            Component::Node => "node-supervisor",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::str::FromStr for Component {
    type Err = String;

    /// A name of Nubo's or Stratos', in any case, `_` or `-`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Component::ALL
            .into_iter()
            .find(|c| c.name() == s || c.stratos_name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown component `{s}`; the components are {} (or Stratos' names: {})",
                    Component::ALL.map(Component::name).join(", "),
                    Component::ALL.map(Component::stratos_name).join(", ")
                )
            })
    }
}

/// The components a process runs (`--components`): a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components(u8);

impl Components {
    /// Every component (the default).
    pub fn all() -> Self {
        Components(Component::ALL.iter().fold(0, |b, c| b | c.bit()))
    }

    /// Exactly these.
    pub fn of(list: &[Component]) -> Self {
        Components(list.iter().fold(0, |b, c| b | c.bit()))
    }

    /// The set `--components` names (empty names are skipped; at least one is needed).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        let mut set = Components(0);
        for n in names
            .iter()
            .map(AsRef::as_ref)
            .filter(|n| !n.trim().is_empty())
        {
            set = set.with(n.parse()?);
        }
        if set.0 == 0 {
            return Err(format!(
                "name at least one of {}",
                Component::ALL.map(Component::name).join(", ")
            ));
        }
        Ok(set)
    }

    /// Whether `c` is in the set.
    pub fn has(self, c: Component) -> bool {
        self.0 & c.bit() != 0
    }

    /// The set with `c`.
    pub fn with(self, c: Component) -> Self {
        Components(self.0 | c.bit())
    }

    /// The set without `c`.
    pub fn without(self, c: Component) -> Self {
        Components(self.0 & !c.bit())
    }

    /// The components in the set, in [`Component::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = Component> {
        Component::ALL.into_iter().filter(move |c| self.has(*c))
    }
}

impl fmt::Display for Components {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Component::name).collect();
        f.write_str(&names.join(","))
    }
}

// === settings ===

/// How the server logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of `nubo server`, as flags, environment or the configuration file (TOML, the
/// same names) give it; each optional. [`Settings::or`] merges two sources, [`Settings::resolve`]
/// makes a [`ServerConfig`] of the result.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where state lives.
    pub data_dir: Option<PathBuf>,
    /// The key that seals the stored secrets (default `<data-dir>/secrets.key`).
    pub secrets_key: Option<PathBuf>,
    /// The previous secrets key, during a rotation.
    pub secrets_key_previous: Option<PathBuf>,
    /// The store's URL.
    pub store: Option<String>,
    /// The API's address.
    pub api_addr: Option<SocketAddr>,
    /// The API's URL as members reach it (the metadata service).
    pub api_url: Option<String>,
    /// Plain HTTP.
    pub insecure_http: Option<bool>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// The embedded broker's address.
    pub bus_addr: Option<SocketAddr>,
    /// The bus URL (`embedded`, `mqtt://…`, `nats://…`).
    #[serde(alias = "bus_url")]
    pub bus: Option<String>,
    /// The load balancer's bind address.
    pub lb_bind: Option<IpAddr>,
    /// `round-robin` or `least-outstanding`.
    pub lb_strategy: Option<String>,
    /// The tenants the load balancer serves (`*`, ids, ranges, `super`).
    pub lb_tenants: Option<String>,
    /// The load balancer's default certificate chain for HTTPS (PEM).
    pub lb_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub lb_tls_key: Option<PathBuf>,
    /// No load balancer in this process.
    pub no_lb: Option<bool>,
    /// The components (names of Nubo's or Stratos').
    pub components: Option<Vec<String>>,
    /// The node supervisor's name.
    pub node: Option<String>,
    /// Leader election among servers sharing a store.
    pub ha: Option<bool>,
    /// The lease's time to live, in seconds.
    pub ha_lease: Option<f64>,
    /// Seconds between decision rounds.
    pub scale_tick: Option<f64>,
    /// Seconds of statistics averaged.
    pub scale_window: Option<f64>,
    /// Seconds between two scale-ups.
    pub scale_up_cooldown: Option<f64>,
    /// Seconds after a scaling before a scale-down.
    pub scale_down_cooldown: Option<f64>,
    /// Seconds without statistics before an Active member is faulty.
    pub fault_timeout: Option<f64>,
    /// Seconds from a member's creation to Active before it is replaced.
    pub activation_timeout: Option<u64>,
    /// Seconds the agent waits for a workload's ports.
    pub port_check_timeout: Option<u64>,
    /// Seconds a member may drain.
    pub drain_timeout: Option<u64>,
    /// Seconds a workload has from SIGTERM to its end.
    pub termination_timeout: Option<u64>,
    /// The longest life of a login's session, in seconds.
    pub session_ttl: Option<u64>,
    /// Days the audit log keeps an entry.
    pub audit_retention_days: Option<u64>,
    /// The mock IaaS's patterns (`-`: the defaults).
    pub mock_iaas: Option<PathBuf>,
    /// The mock clock's speed.
    pub mock_speed: Option<f64>,
    /// Seconds between two statistics of a mock member.
    pub mock_stats_interval: Option<f64>,
    /// Seconds from a mock member's start to its activation.
    pub mock_boot_delay: Option<f64>,
}

macro_rules! merge {
    ($a:ident, $b:ident, $($f:ident),* $(,)?) => {
        Settings { $($f: $a.$f.or($b.$f)),* }
    };
}

/// What the settings do not say: facts of the process and its environment.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The admin password to set at first start (`NUBO_ADMIN_PASSWORD`).
    pub admin_password: Option<String>,
    /// The platform's bus key from a credentials file (`--bus-credentials`), to seed a store
    /// that has none yet.
    pub bus_key: Option<String>,
    /// How the node supervisor starts agents (this binary, `agent`).
    pub agent: nubo_node::AgentCommand,
    /// This process's name as a lease holder (`host:pid`).
    pub holder: String,
    /// Where the configuration file was, for messages.
    pub config_file: Option<PathBuf>,
}

impl Settings {
    /// Reads a configuration file.
    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid server configuration", path.display()))
    }

    /// Each setting from `self`, else from `other` (flags and environment over the file).
    pub fn or(self, other: Settings) -> Settings {
        let (a, b) = (self, other);
        merge!(
            a,
            b,
            data_dir,
            secrets_key,
            secrets_key_previous,
            store,
            api_addr,
            api_url,
            insecure_http,
            tls_cert,
            tls_key,
            log_format,
            bus_addr,
            bus,
            lb_bind,
            lb_strategy,
            lb_tenants,
            lb_tls_cert,
            lb_tls_key,
            no_lb,
            components,
            node,
            ha,
            ha_lease,
            scale_tick,
            scale_window,
            scale_up_cooldown,
            scale_down_cooldown,
            fault_timeout,
            activation_timeout,
            port_check_timeout,
            drain_timeout,
            termination_timeout,
            session_ttl,
            audit_retention_days,
            mock_iaas,
            mock_speed,
            mock_stats_interval,
            mock_boot_delay,
        )
    }

    /// The configuration these settings describe, or what to change.
    pub fn resolve(self, env: Environment) -> anyhow::Result<ServerConfig> {
        let mut components = match &self.components {
            None => Components::all(),
            Some(list) => {
                Components::parse(list).map_err(|e| anyhow::anyhow!("--components: {e}"))?
            }
        };
        let explicit = |c: Component| self.components.is_some() && components.has(c);
        if self.no_lb == Some(true) {
            if explicit(Component::Lb) {
                bail!("--no-lb and `lb` in --components contradict each other: drop one");
            }
            components = components.without(Component::Lb);
        }
        let api = components.has(Component::Api);
        let controller = components.has(Component::Controller);
        let insecure = self.insecure_http.unwrap_or(false);
        let tls = match (insecure, self.tls_cert.clone(), self.tls_key.clone()) {
            (true, None, None) => TlsMode::Insecure,
            (true, _, _) => bail!(
                "--insecure-http serves plain HTTP: it does not go with --tls-cert and --tls-key"
            ),
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            (false, None, None) => TlsMode::SelfSigned,
            _ => bail!("--tls-cert and --tls-key go together: give both or neither"),
        };
        // Settings of a component this process does not run: said, and ignored.
        let mut ignored = Vec::new();
        if !api && matches!(tls, TlsMode::Files { .. }) {
            ignored.push("--tls-cert and --tls-key: this process serves no API (`api` is not in --components)".to_owned());
        }
        if !components.has(Component::Lb) && (self.lb_bind.is_some() || self.lb_strategy.is_some())
        {
            ignored.push("--lb-bind and --lb-strategy: this process runs no load balancer (add `lb` to --components, and drop --no-lb, to run one)".to_owned());
        }
        let strategy = match self.lb_strategy.as_deref() {
            None => nubo_lb::Strategy::default(),
            Some("round-robin") => nubo_lb::Strategy::RoundRobin,
            Some("least-outstanding") => nubo_lb::Strategy::LeastOutstanding,
            Some(other) => {
                bail!("--lb-strategy `{other}`: choose round-robin or least-outstanding")
            }
        };
        let runs_node = components.has(Component::Node);
        if runs_node && controller && self.node.is_some() {
            bail!(
                "--node names a node supervisor in another process, and this server runs its own (`node` in --components): drop --node, or drop `node` from --components"
            );
        }
        if self.mock_iaas.is_some() && !controller {
            ignored.push("--mock-iaas: the mock IaaS runs beside the controller, and this process runs none (add `controller` to --components)".to_owned());
        }
        let ha = self.ha.unwrap_or(false);
        if ha && !controller && !components.has(Component::Autoscaler) {
            bail!(
                "--ha elects a controller (or an autoscaler) among servers, and this process runs neither: add `controller` to --components, or drop --ha"
            );
        }
        let bus = bus_mode(self.bus.clone(), self.bus_addr)?;
        if ha && matches!(bus, BusMode::Embedded(_)) {
            bail!(
                "--ha needs a bus the servers share: pass --bus mqtt://… or nats://… (the embedded broker lives and dies with its server)"
            );
        }
        let store = match &self.store {
            Some(url) => Some(url.parse::<StoreLocation>().with_context(
                || match &env.config_file {
                    Some(f) => format!("--store, NUBO_STORE or `store` in {}", f.display()),
                    None => "--store or NUBO_STORE".to_owned(),
                },
            )?),
            None => None,
        };
        let data_dir = self.data_dir.clone().unwrap_or_else(default_data_dir);
        let node_name = self.node.clone().unwrap_or_else(|| "local".into());
        let d = nubo_autoscaler::monitor::MonitorConfig::default();
        let autoscaler = nubo_autoscaler::monitor::MonitorConfig {
            tick: secs(self.scale_tick.filter(|t| *t > 0.0), d.tick),
            window: secs(self.scale_window, d.window),
            up_cooldown: secs(self.scale_up_cooldown, d.up_cooldown),
            down_cooldown: secs(self.scale_down_cooldown, d.down_cooldown),
            fault_timeout: secs(self.fault_timeout, d.fault_timeout),
        };
        let mock = if controller {
            self.mock_config()?
        } else {
            None
        };
        let tenants = match self.lb_tenants.as_deref() {
            None => nubo_lb::TenantSet::all(),
            Some(t) => {
                nubo_lb::TenantSet::parse(t).map_err(|e| anyhow::anyhow!("--lb-tenants: {e}"))?
            }
        };
        let lb = components.has(Component::Lb).then(|| nubo_lb::LbConfig {
            bind: self.lb_bind.unwrap_or([127, 0, 0, 1].into()),
            strategy,
            tenants,
            ..Default::default()
        });
        for (flag, v) in [
            ("--activation-timeout", self.activation_timeout),
            ("--port-check-timeout", self.port_check_timeout),
            ("--drain-timeout", self.drain_timeout),
            ("--termination-timeout", self.termination_timeout),
        ] {
            if v.is_some_and(|s| !(1..=86_400).contains(&s)) {
                bail!("{flag}: a whole number of seconds from 1 to 86400");
            }
        }
        if self
            .session_ttl
            .is_some_and(|s| !(60..=30 * 86_400).contains(&s))
        {
            bail!("--session-ttl: a whole number of seconds from 60 to 2592000 (30 days)");
        }
        if self
            .audit_retention_days
            .is_some_and(|d| !(1..=3650).contains(&d))
        {
            bail!("--audit-retention-days: a whole number of days from 1 to 3650");
        }
        Ok(ServerConfig {
            audit_retention: std::time::Duration::from_secs(
                self.audit_retention_days.unwrap_or(90) * 86_400,
            ),
            session_ttl: std::time::Duration::from_secs(
                self.session_ttl
                    .unwrap_or(nubo_api::DEFAULT_SESSION_TTL.as_secs()),
            ),
            timeouts: nubo_controller::Timeouts {
                activation: self.activation_timeout,
                port_check: self.port_check_timeout,
                drain: self.drain_timeout,
                termination: self.termination_timeout,
            },
            secrets_key: self
                .secrets_key
                .clone()
                .unwrap_or_else(|| data_dir.join("secrets.key")),
            secrets_key_previous: self.secrets_key_previous.clone(),
            data_dir,
            store,
            api_addr: self.api_addr.unwrap_or(([127, 0, 0, 1], 9443).into()),
            api_url: match &self.api_url {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    Some(u.trim_end_matches('/').to_owned())
                }
                Some(u) => bail!("--api-url `{u}` is not an http:// or https:// URL"),
                None => None,
            },
            tls,
            lb_certificate: match (self.lb_tls_cert.clone(), self.lb_tls_key.clone()) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => bail!("--lb-tls-cert and --lb-tls-key go together: give both or neither"),
            },
            admin_password: env.admin_password.filter(|p| !p.is_empty()),
            bus_key: env.bus_key,
            // What the controller of this process can place members on; none without one (an
            // API-only server takes the providers the controller published in the store).
            providers: if controller {
                [
                    "local".to_owned(),
                    "docker".to_owned(),
                    "kubernetes".to_owned(),
                ]
                .into_iter()
                .chain(mock.is_some().then(|| "mock".to_owned()))
                .collect()
            } else {
                Vec::new()
            },
            bus,
            agent: env.agent,
            lb,
            autoscaler,
            mock,
            components,
            ignored,
            node: node_name,
            ha: ha.then(|| HaConfig {
                holder: env.holder,
                ttl: secs(self.ha_lease.filter(|t| *t > 0.0), Duration::from_secs(5)),
            }),
        })
    }

    /// The mock IaaS's configuration, when `--mock-iaas` asks for it.
    fn mock_config(&self) -> anyhow::Result<Option<nubo_mock::MockConfig>> {
        let Some(path) = &self.mock_iaas else {
            return Ok(None);
        };
        let d = nubo_mock::MockConfig::default();
        let patterns = if path.as_os_str() == "-" {
            nubo_mock::Patterns::default()
        } else {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!("cannot read the mock IaaS patterns {}", path.display())
            })?;
            nubo_mock::Patterns::from_xml(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (the format is Stratos' mock-iaas.xml; see docs/mock-iaas.md)",
                    path.display()
                )
            })?
        };
        Ok(Some(nubo_mock::MockConfig {
            patterns,
            speed: self
                .mock_speed
                .filter(|s| s.is_finite() && *s > 0.0)
                .unwrap_or(d.speed),
            stats_interval: secs(self.mock_stats_interval, d.stats_interval)
                .max(Duration::from_millis(10)),
            boot_delay: secs(self.mock_boot_delay, d.boot_delay),
            state_file: None,
        }))
    }
}

/// A setting in seconds (finite, ≥ 0), or `default`.
fn secs(v: Option<f64>, default: Duration) -> Duration {
    v.filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(default)
}

/// Where the server's bus is: `--bus` (`embedded` by default) and, for the embedded broker,
/// `--bus-addr`.
pub fn bus_mode(bus: Option<String>, addr: Option<SocketAddr>) -> anyhow::Result<BusMode> {
    let url = bus.unwrap_or_else(|| "embedded".into());
    match url.parse::<nubo_bus::BusUrl>() {
        Ok(nubo_bus::BusUrl::Embedded) => Ok(BusMode::Embedded(
            addr.unwrap_or(([127, 0, 0, 1], 1883).into()),
        )),
        Ok(_) if addr.is_some() => {
            bail!("--bus-addr is the embedded broker's address: it does not go with --bus {url}")
        }
        Ok(_) => Ok(BusMode::External(url)),
        Err(e) => Err(anyhow::Error::new(e).context("--bus")),
    }
}

/// The default data directory: `$NUBO_DATA_DIR`, else `$XDG_DATA_HOME/nubo`, else
/// `~/.local/share/nubo`. The CLI looks there for a local server's certificate.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("NUBO_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    default_dir("nubo")
}

/// The default directory of `nubo node`: `$XDG_DATA_HOME/nubo-node`, else
/// `~/.local/share/nubo-node`.
pub fn default_node_dir() -> PathBuf {
    default_dir("nubo-node")
}

fn default_dir(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&d).join(name);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Path::new(&h).join(".local/share").join(name),
        None => PathBuf::from(format!("{name}-data")),
    }
}

// === the resolved configuration ===

/// How the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTPS with a certificate generated into `<data-dir>/tls/` on first start.
    SelfSigned,
    /// HTTPS with the given PEM files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Plain HTTP (for loopback-only set-ups and tests).
    Insecure,
}

/// Where the bus is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMode {
    /// The embedded MQTT broker, listening here (loopback by default).
    Embedded(SocketAddr),
    /// An external broker: `mqtt://host:port` (MQTT 3.1.1, e.g. Mosquitto) or `nats://host:port`
    /// (a NATS server). Agents get the same URL.
    External(String),
}

/// Leader election among controllers sharing one store.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// This process's name as a lease holder (unique among the controllers).
    pub holder: String,
    /// How long the lease lasts without renewal: the longest a dead leader goes unnoticed.
    /// Renewed every third of it.
    pub ttl: Duration,
}

/// The server's configuration, resolved and checked ([`Settings::resolve`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// The longest life of a login's session (`--session-ttl`).
    pub session_ttl: std::time::Duration,
    /// How long the audit log keeps an entry (`--audit-retention-days`).
    pub audit_retention: std::time::Duration,
    /// Members' timeouts where a cartridge's properties set none.
    pub timeouts: nubo_controller::Timeouts,
    /// The file of the key that seals the stored secrets (created when missing).
    pub secrets_key: PathBuf,
    /// The previous secrets key's file, during a rotation.
    pub secrets_key_previous: Option<PathBuf>,
    /// The store (`None`: SQLite at `<data-dir>/nubo.db`).
    pub store: Option<StoreLocation>,
    /// Where the API listens (port 0: any free port).
    pub api_addr: SocketAddr,
    /// The API's URL as members reach it (`None`: this server's own API, if it serves one).
    pub api_url: Option<String>,
    /// HTTPS or HTTP.
    pub tls: TlsMode,
    /// The admin password to set at first start (else one is generated and printed once).
    pub admin_password: Option<String>,
    /// The platform's bus key to seed the store with, when it has none yet (else one is
    /// generated); a store with another key is an error.
    pub bus_key: Option<String>,
    /// IaaS providers to offer.
    pub providers: Vec<String>,
    /// The message bus.
    pub bus: BusMode,
    /// The program (and arguments) the node supervisor runs as each member's agent.
    pub agent: nubo_node::AgentCommand,
    /// The built-in load balancer (`Some` exactly when [`Component::Lb`] runs).
    pub lb: Option<nubo_lb::LbConfig>,
    /// The load balancer's default certificate and key files (`None`: a self-signed one is
    /// generated into `<data-dir>/lb-tls/`).
    pub lb_certificate: Option<(PathBuf, PathBuf)>,
    /// The autoscaler's tick, window and cool-downs.
    pub autoscaler: nubo_autoscaler::monitor::MonitorConfig,
    /// The `mock` IaaS provider (`None`: not offered).
    pub mock: Option<nubo_mock::MockConfig>,
    /// What this process runs.
    pub components: Components,
    /// Settings given for components this process does not run, and ignored: each with what to
    /// change, for the operator.
    pub ignored: Vec<String>,
    /// The node supervisor's name: the one this process runs when it runs `node` without the
    /// controller (commanded through the bus, as `nubo node`), or the one in another process
    /// that runs `local` members when it runs the controller without `node`.
    pub node: String,
    /// One of several servers sharing the store (`--ha`): only the holder of the `controller`
    /// lease runs the controller; the others wait as standbys.
    pub ha: Option<HaConfig>,
}

impl ServerConfig {
    /// Whether this process runs `c`.
    pub fn runs(&self, c: Component) -> bool {
        self.components.has(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            admin_password: None,
            bus_key: None,
            agent: nubo_node::AgentCommand {
                program: "/bin/nubo".into(),
                args: vec!["agent".into()],
            },
            holder: "h:1".into(),
            config_file: None,
        }
    }

    fn with(components: &[&str]) -> Settings {
        Settings {
            components: Some(components.iter().map(|s| (*s).to_owned()).collect()),
            ..Settings::default()
        }
    }

    #[test]
    fn components_take_nubo_and_stratos_names() {
        assert_eq!(Components::all().iter().count(), 6);
        let c = Components::parse(&[
            "Manager",
            "cloud_controller",
            "CEP",
            "autoscaler",
            "event-processor",
        ])
        .unwrap();
        assert_eq!(c.to_string(), "api,controller,autoscaler,event-processor");
        assert_eq!(
            Components::parse(&["load-balancer", "node-supervisor", " "])
                .unwrap()
                .to_string(),
            "lb,node"
        );
        let err = Components::parse(&["scheduler"]).unwrap_err();
        assert!(err.contains("unknown component `scheduler`"), "{err}");
        assert!(Components::parse(&[""]).is_err());
    }

    #[test]
    fn flags_win_over_the_file() {
        let flags = Settings {
            bus: Some("nats://a:1".into()),
            ..Settings::default()
        };
        let file: Settings =
            toml::from_str("bus_url = \"nats://b:2\"\nnode = \"n1\"\nscale_tick = 2.5\ncomponents = [\"api\", \"controller\"]").unwrap();
        let s = flags.or(file);
        assert_eq!(s.bus.as_deref(), Some("nats://a:1"));
        assert_eq!(s.node.as_deref(), Some("n1"));
        let c = s.resolve(env()).unwrap();
        assert_eq!(c.bus, BusMode::External("nats://a:1".into()));
        assert_eq!(c.autoscaler.tick, Duration::from_millis(2500));
        assert!(toml::from_str::<Settings>("no_such_setting = 1").is_err());
    }

    #[test]
    fn the_defaults_run_everything_on_the_embedded_bus() {
        let c = Settings::default().resolve(env()).unwrap();
        assert_eq!(c.components, Components::all());
        assert!(c.lb.is_some());
        assert_eq!(c.bus, BusMode::Embedded(([127, 0, 0, 1], 1883).into()));
        assert_eq!(c.tls, TlsMode::SelfSigned);
        assert_eq!(c.node, "local");
        let c = Settings {
            no_lb: Some(true),
            ..Settings::default()
        }
        .resolve(env())
        .unwrap();
        assert!(!c.runs(Component::Lb) && c.lb.is_none());
    }

    /// Each invalid combination is refused with a message naming what to change.
    #[test]
    fn invalid_combinations_say_what_to_change() {
        let refused = |s: Settings, says: &str| {
            let err = format!("{:#}", s.resolve(env()).unwrap_err());
            assert!(err.contains(says), "{err}");
        };
        refused(
            Settings {
                no_lb: Some(true),
                ..with(&["api", "lb"])
            },
            "--no-lb and `lb`",
        );
        refused(
            Settings {
                ha: Some(true),
                bus: Some("nats://n:4222".into()),
                ..with(&["api"])
            },
            "add `controller` to --components, or drop --ha",
        );
        refused(
            Settings {
                ha: Some(true),
                ..Settings::default()
            },
            "--ha needs a bus the servers share",
        );

        refused(
            Settings {
                node: Some("n1".into()),
                ..Settings::default()
            },
            "drop --node",
        );

        refused(
            Settings {
                lb_strategy: Some("random".into()),
                ..Settings::default()
            },
            "round-robin or least-outstanding",
        );

        refused(
            Settings {
                tls_cert: Some("c.pem".into()),
                ..Settings::default()
            },
            "go together",
        );
        refused(
            Settings {
                bus: Some("nats://x:1".into()),
                bus_addr: Some("127.0.0.1:1".parse().unwrap()),
                ..Settings::default()
            },
            "--bus-addr",
        );
        refused(
            Settings {
                bus: Some("amqp://x".into()),
                ..Settings::default()
            },
            "nats://",
        );
    }

    #[test]
    fn settings_of_components_not_run_are_said_and_ignored() {
        let c = Settings {
            mock_iaas: Some("-".into()),
            lb_bind: Some([0, 0, 0, 0].into()),
            ..with(&["api", "autoscaler"])
        }
        .resolve(env())
        .unwrap();
        assert!(c.mock.is_none() && c.lb.is_none());
        assert_eq!(c.ignored.len(), 2, "{:?}", c.ignored);
        assert!(c.ignored[1].starts_with("--mock-iaas"), "{:?}", c.ignored);
    }

    #[test]
    fn a_node_without_a_controller_is_commanded_through_the_bus() {
        let c = Settings {
            node: Some("n1".into()),
            ..with(&["api", "node"])
        }
        .resolve(env())
        .unwrap();
        assert!(c.runs(Component::Node) && !c.runs(Component::Controller));
        assert_eq!(c.node, "n1");
    }
}
