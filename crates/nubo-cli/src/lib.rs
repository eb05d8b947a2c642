//! The `nubo` client commands: a REST client of the API with the Stratos CLI's command set
//! (as in Apache Stratos 4.1) in a resource-first shape: `nubo cartridge list`, `nubo application describe APP`.
//!
//! Connection settings come from flags, then `NUBO_*` environment variables, then the config file
//! (`~/.config/nubo/cli.toml`, written by `nubo login`).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod client;
mod deploy;
mod render;

pub use client::{ApiClient, ApiFailure};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Human-readable tables.
    #[default]
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Connection and output options shared by every client command.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// API base URL [default: https://127.0.0.1:9443]
    #[arg(long, global = true, env = "NUBO_URL", value_name = "URL")]
    pub server: Option<String>,
    /// User name (`admin`, or `user@tenant.domain`) [default: admin]
    #[arg(long, short = 'u', global = true, env = "NUBO_USER")]
    pub user: Option<String>,
    /// Password
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "NUBO_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// CA certificate (PEM) to trust, e.g. `<data-dir>/tls/cert.pem` of a self-signed server
    #[arg(long, global = true, env = "NUBO_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the server's certificate (for throwaway set-ups only)
    #[arg(long, global = true, env = "NUBO_INSECURE")]
    pub insecure: bool,
    /// Output format
    #[arg(long, short = 'o', global = true, env = "NUBO_OUTPUT", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The data directory of a server on this machine, whose generated certificate is trusted
    /// (the binary fills it in with the server's default; not a flag).
    #[arg(skip)]
    pub local_data_dir: Option<PathBuf>,
}

/// The saved connection settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigFile {
    /// API base URL.
    pub url: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Password (older config files; `nubo login` now saves a session token instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A session's bearer token (`nubo login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// CA certificate.
    pub ca_cert: Option<PathBuf>,
    /// Skip certificate checks.
    pub insecure: Option<bool>,
}

impl ConfigFile {
    /// `$NUBO_CONFIG`, else `$XDG_CONFIG_HOME/nubo/cli.toml`, else `~/.config/nubo/cli.toml`.
    pub fn path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("NUBO_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(base.join("nubo/cli.toml"))
    }

    fn load() -> anyhow::Result<Self> {
        let Some(path) = Self::path() else {
            return Ok(Self::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("cannot read the config file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read the config file {}", path.display()))
            }
        }
    }
}

/// One kind of artifact managed with add / update / list / describe / remove.
#[derive(Debug, Clone, Subcommand)]
pub enum ArtifactCommand {
    /// Add from a JSON file (`-` for standard input)
    Add {
        /// The artifact's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Replace from a JSON file (the id is read from the file)
    Update {
        /// The artifact's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List them all
    #[command(visible_alias = "ls")]
    List,
    /// Show one
    #[command(visible_alias = "show")]
    Describe {
        /// Its id
        id: String,
    },
    /// Remove one (refused while something uses it)
    #[command(visible_alias = "rm")]
    Remove {
        /// Its id
        id: String,
    },
}

/// Cartridge commands: the artifact commands plus filters.
#[derive(Debug, Clone, Subcommand)]
pub enum CartridgeCommand {
    #[allow(missing_docs)]
    #[command(flatten)]
    Artifact(ArtifactCommand),
    /// List cartridges matching a filter: multi-tenant, single-tenant, load-balancer, provider, category
    Filter {
        /// The filter
        filter: String,
        /// The value for `provider` and `category`
        #[arg(long)]
        criteria: Option<String>,
    },
}

/// Kubernetes cluster commands: the artifact commands plus hosts and master.
#[derive(Debug, Clone, Subcommand)]
pub enum KubernetesCommand {
    #[allow(missing_docs)]
    #[command(flatten)]
    Artifact(ArtifactCommand),
    /// Add a host (minion) to a cluster from a JSON file
    AddHost {
        /// Cluster id
        cluster: String,
        /// The host's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List a cluster's hosts
    ListHosts {
        /// Cluster id
        cluster: String,
    },
    /// Show a cluster's master
    Master {
        /// Cluster id
        cluster: String,
    },
    /// Replace a cluster's master from a JSON file
    UpdateMaster {
        /// Cluster id
        cluster: String,
        /// The master's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Replace a host (found by its hostId) from a JSON file
    UpdateHost {
        /// The host's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove a host from a cluster
    RemoveHost {
        /// Cluster id
        cluster: String,
        /// Host id
        host: String,
    },
}

/// Tenant commands (super tenant only).
#[derive(Debug, Clone, Subcommand)]
pub enum TenantCommand {
    /// Add a tenant and its admin user, from flags or a JSON file
    Add(TenantArgs),
    /// Update a tenant from a JSON file
    Update {
        /// The tenant's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List tenants (optionally those whose domain contains a string)
    #[command(visible_alias = "ls")]
    List {
        /// Part of the domain to look for
        #[arg(short = 'd', long)]
        domain: Option<String>,
    },
    /// Show a tenant
    Describe {
        /// Tenant domain
        domain: String,
    },
    /// Let a tenant's users log in again
    Activate {
        /// Tenant domain
        domain: String,
    },
    /// Stop a tenant's users from logging in
    Deactivate {
        /// Tenant domain
        domain: String,
    },
}

/// `tenant add`: Stratos' flags, or a file.
#[derive(Debug, Clone, Args)]
pub struct TenantArgs {
    /// The tenant's JSON file (instead of the flags)
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with_all = ["domain", "admin"])]
    pub file: Option<PathBuf>,
    /// Admin user name
    #[arg(short = 'a', long, requires = "domain")]
    pub admin: Option<String>,
    /// Admin first name
    #[arg(long)]
    pub first_name: Option<String>,
    /// Admin last name
    #[arg(short = 'l', long)]
    pub last_name: Option<String>,
    /// Tenant domain
    #[arg(short = 'd', long, requires = "admin")]
    pub domain: Option<String>,
    /// Admin email
    #[arg(short = 'e', long)]
    pub email: Option<String>,
    /// Admin password
    #[arg(long)]
    pub admin_password: Option<String>,
}

/// Signup commands (the caller's tenant).
#[derive(Debug, Clone, Subcommand)]
pub enum SignupCommand {
    /// Sign up to a multi-tenant application, with your repositories from a JSON file
    /// (`{"artifactRepositories": [{alias, repoUrl, repoUsername, repoPassword}]}`)
    Add {
        /// The application
        application: String,
        /// The signup's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Your signup (without passwords)
    Describe {
        /// The application
        application: String,
    },
    /// Remove your signup (and its domain mappings)
    Remove {
        /// The application
        application: String,
    },
}

/// Domain mapping commands (the caller's tenant).
#[derive(Debug, Clone, Subcommand)]
pub enum DomainMappingCommand {
    /// Map domains from a JSON file (`{"domainMappings": [{cartridgeAlias, domainName, contextPath, certificate, privateKey, redirectHttps}]}`)
    Add {
        /// The application
        application: String,
        /// The mappings' JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Your domains mapped onto an application
    List {
        /// The application
        application: String,
    },
    /// Remove one of your domain mappings
    Remove {
        /// The application
        application: String,
        /// The domain
        domain: String,
    },
    /// Put a certificate on one of your mapped domains (replacing any): the load balancers present it to HTTPS clients naming the domain; the key is sealed and never shown again
    SetCertificate {
        /// The application
        application: String,
        /// The domain
        domain: String,
        /// The certificate chain (PEM, the domain's certificate first)
        #[arg(long = "cert", value_name = "FILE")]
        cert: PathBuf,
        /// Its private key (PEM)
        #[arg(long = "key", value_name = "FILE")]
        key: PathBuf,
    },
    /// Remove a mapped domain's certificate (the load balancers' default one is presented for it)
    RemoveCertificate {
        /// The application
        application: String,
        /// The domain
        domain: String,
    },
    /// Have the load balancers answer an ACME HTTP-01 challenge for one of your domains, for an hour (certbot: --manual-auth-hook 'nubo domain-mapping acme-challenge APP "$CERTBOT_DOMAIN" "$CERTBOT_TOKEN" "$CERTBOT_VALIDATION"')
    AcmeChallenge {
        /// The application
        application: String,
        /// The domain
        domain: String,
        /// The challenge's token
        token: String,
        /// Its key authorization (`<token>.<thumbprint>`)
        key_authorization: String,
    },
    /// Stop answering an ACME challenge
    RemoveAcmeChallenge {
        /// The application
        application: String,
        /// The domain
        domain: String,
        /// The challenge's token
        token: String,
    },
}

/// Quota commands.
#[derive(Debug, Clone, Subcommand)]
pub enum QuotaCommand {
    /// Set a tenant's quotas (the platform's administrator); a quota left out has no limit
    Set {
        /// The tenant's domain
        domain: String,
        /// Applications it may define at most
        #[arg(long)]
        applications: Option<u32>,
        /// Members its applications may run at once at most
        #[arg(long)]
        instances: Option<u32>,
    },
    /// Your tenant's quotas and what it uses; a tenant's (the platform's administrator)
    Show {
        /// The tenant's domain (the platform's administrator)
        domain: Option<String>,
    },
}

/// User commands (the caller's tenant).
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Add a user from a JSON file (`credential` is the password)
    Add {
        /// The user's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Update a user from a JSON file
    Update {
        /// The user's JSON file
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// List the users of your tenant
    #[command(visible_alias = "ls")]
    List,
    /// Remove a user
    #[command(visible_alias = "rm")]
    Remove {
        /// User name
        name: String,
    },
}

/// The metadata service: keys with values per application and per cluster, which members
/// exchange at run time (Stratos' `/metadata/api`).
#[derive(Debug, Clone, Subcommand)]
pub enum MetadataCommand {
    /// Show an application's metadata (or a cluster's, or one key)
    Get {
        /// Application id
        app: String,
        /// One key only
        key: Option<String>,
        /// A cluster's metadata instead of the application's
        #[arg(long, value_name = "CLUSTER_ID")]
        cluster: Option<String>,
    },
    /// Add values to a key (values already there stay; repeats are skipped)
    Add {
        /// Application id
        app: String,
        /// The key
        key: String,
        /// The values to add
        #[arg(required = true)]
        values: Vec<String>,
        /// To a cluster's metadata instead of the application's
        #[arg(long, value_name = "CLUSTER_ID")]
        cluster: Option<String>,
    },
    /// Delete an application's metadata, a key of it, or one value of a key
    #[command(visible_alias = "rm")]
    Delete {
        /// Application id
        app: String,
        /// The key (without it: all of the application's metadata)
        key: Option<String>,
        /// One value of the key
        value: Option<String>,
    },
}

/// Application commands: the artifact commands plus deployment.
#[derive(Debug, Clone, Subcommand)]
pub enum ApplicationCommand {
    #[allow(missing_docs)]
    #[command(flatten)]
    Artifact(ArtifactCommand),
    /// Show the runtime tree: instances, clusters, members, addresses, access URLs
    Runtime {
        /// Application id
        id: String,
    },
    /// Deploy under an application policy and wait until the application is Active
    Deploy(DeployArgs),
    /// Undeploy (drain every member) and wait until it is done
    Undeploy(UndeployArgs),
}

/// Arguments of `deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// Application id
    pub id: String,
    /// Application policy id
    #[arg(long, short = 'P')]
    pub policy: String,
    /// Return once the deployment is accepted, without waiting
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Arguments of `undeploy`.
#[derive(Debug, Clone, Args)]
pub struct UndeployArgs {
    /// Application id
    pub id: String,
    /// Terminate every member at once instead of draining
    #[arg(long)]
    pub force: bool,
    /// Return once the undeployment is accepted, without waiting
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// The client commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Network partitions and their partitions
    #[command(subcommand, name = "network-partition", visible_alias = "np")]
    NetworkPartition(ArtifactCommand),
    /// Deployment policies
    #[command(subcommand, name = "deployment-policy", visible_alias = "dp")]
    DeploymentPolicy(ArtifactCommand),
    /// Autoscaling policies
    #[command(subcommand, name = "autoscaling-policy", visible_alias = "asp")]
    AutoscalingPolicy(ArtifactCommand),
    /// Application policies
    #[command(subcommand, name = "application-policy", visible_alias = "ap")]
    ApplicationPolicy(ArtifactCommand),
    /// Cartridges
    #[command(subcommand)]
    Cartridge(CartridgeCommand),
    /// Cartridge groups
    #[command(subcommand, name = "cartridge-group", visible_alias = "group")]
    CartridgeGroup(ArtifactCommand),
    /// Applications
    #[command(subcommand, visible_alias = "app")]
    Application(ApplicationCommand),
    /// Deploy an application and wait until it is Active (same as `application deploy`)
    Deploy(DeployArgs),
    /// Undeploy an application and wait until it is gone (same as `application undeploy`)
    Undeploy(UndeployArgs),
    /// List the members of an application (or of every deployed application)
    Members {
        /// Application id
        id: Option<String>,
    },
    /// Why the platform scaled an application: each decision with its factors
    #[command(name = "scaling-events")]
    ScalingEvents {
        /// Application id
        id: String,
    },
    /// The workload output of an application's members (kept by the server for an hour, bounded)
    Logs {
        /// Application id
        app: String,
        /// One member only
        #[arg(long, value_name = "MEMBER_ID")]
        member: Option<String>,
        /// Lines since an age (30s, 10m, 2h, 1d) or a time in milliseconds since the epoch
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// The last N lines only
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
        /// Keep going: print lines as they come, until interrupted
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// The metadata service: what an application's members exchange at run time
    #[command(subcommand)]
    Metadata(MetadataCommand),
    /// Kubernetes clusters and their hosts
    #[command(subcommand, name = "kubernetes-cluster", visible_alias = "k8s")]
    KubernetesCluster(KubernetesCommand),
    /// Tenants (super tenant only)
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Users of your tenant
    #[command(subcommand)]
    User(UserCommand),
    /// Your tenant's signups to the platform's multi-tenant applications
    #[command(subcommand)]
    Signup(SignupCommand),
    /// Your tenant's domains mapped onto applications it signed up to
    #[command(subcommand, name = "domain-mapping")]
    DomainMapping(DomainMappingCommand),
    /// Tenants' quotas (set: the platform's administrator; show: your own)
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// The IaaS providers network partitions may use
    #[command(name = "iaas-providers")]
    IaasProviders,
    /// Log in: a session token (not your password) saved with the connection settings
    Login,
    /// End the saved session and forget its token
    Logout,
    /// Who you are on the server, and how you proved it
    Whoami,
    /// API tokens for automation (`NUBO_TOKEN=… nubo …`)
    #[command(subcommand)]
    Token(TokenCommand),
    /// Instance-seconds per tenant, application and cartridge (metering)
    Usage {
        /// One application's only
        #[arg(long, short = 'a')]
        application: Option<String>,
        /// One tenant's only (the platform's administrator)
        #[arg(long)]
        tenant: Option<i64>,
    },
    /// The audit log: every change through the API (admins)
    Audit {
        /// One user's only
        #[arg(long)]
        user: Option<String>,
        /// Entries after this one (its SEQ)
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many (1-1000)
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// API token commands.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Make an API token (shown once)
    Create {
        /// A name to know it by
        name: String,
        /// `write` (what you may do) or `read` (reads only)
        #[arg(long, default_value = "write")]
        scope: String,
        /// Days until it expires (1-366)
        #[arg(long, default_value_t = 90)]
        days: u64,
    },
    /// Your tokens (a tenant admin: the tenant's), never their secrets
    List,
    /// Revoke a token
    Revoke {
        /// Its id
        id: String,
    },
}

/// Resolved connection settings.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Base URL.
    pub url: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: Option<String>,
    /// A bearer token (a session's, or an API token's): used when no password is given.
    pub token: Option<String>,
    /// CA certificate.
    pub ca_cert: Option<PathBuf>,
    /// Skip certificate checks.
    pub insecure: bool,
}

impl Connection {
    /// Flags and environment first, then the config file, then defaults.
    pub fn resolve(g: &Global) -> anyhow::Result<Self> {
        let file = ConfigFile::load()?;
        let url = g
            .server
            .clone()
            .or(file.url)
            .unwrap_or_else(|| "https://127.0.0.1:9443".to_owned());
        let mut ca_cert = g.ca_cert.clone().or(file.ca_cert);
        if ca_cert.is_none() && url.starts_with("https://") && is_loopback(&url) {
            // A server on this machine with the default data directory: trust its certificate.
            if let Some(candidate) = g.local_data_dir.as_ref().map(|d| d.join("tls/cert.pem"))
                && candidate.exists()
            {
                ca_cert = Some(candidate);
            }
        }
        Ok(Connection {
            url: url.trim_end_matches('/').to_owned(),
            user: g
                .user
                .clone()
                .or(file.user)
                .unwrap_or_else(|| "admin".to_owned()),
            // A password given now wins over a saved token; `NUBO_TOKEN` over both.
            token: std::env::var("NUBO_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| file.token.clone().filter(|_| g.password.is_none())),
            password: g.password.clone().or(file.password),
            ca_cert,
            insecure: g.insecure || file.insecure.unwrap_or(false),
        })
    }
}

fn is_loopback(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    matches!(host, "127.0.0.1" | "localhost" | "[" | "") || url.contains("://[::1]")
}

/// The API path of a mapped domain's ACME challenge.
fn acme_path(application: &str, domain: &str, token: &str) -> String {
    format!(
        "/api/applications/{}/domainMappings/{}/acme-challenges/{}",
        client::escape(application),
        client::escape(domain),
        client::escape(token)
    )
}

fn read_file(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

async fn artifact(
    client: &ApiClient,
    out: Output,
    collection: &str,
    cmd: &ArtifactCommand,
) -> anyhow::Result<()> {
    match cmd {
        ArtifactCommand::Add { file } => {
            let v = client
                .send(
                    "POST",
                    &format!("/api/{collection}"),
                    Some(read_file(file)?),
                )
                .await?;
            render::message(out, &v);
        }
        ArtifactCommand::Update { file } => {
            let v = client
                .send("PUT", &format!("/api/{collection}"), Some(read_file(file)?))
                .await?;
            render::message(out, &v);
        }
        ArtifactCommand::List => {
            let v = client
                .send("GET", &format!("/api/{collection}"), None)
                .await?;
            render::list(out, collection, &v);
        }
        ArtifactCommand::Describe { id } => {
            let v = client
                .send(
                    "GET",
                    &format!("/api/{collection}/{}", client::escape(id)),
                    None,
                )
                .await?;
            render::describe(out, &v);
        }
        ArtifactCommand::Remove { id } => {
            let v = client
                .send(
                    "DELETE",
                    &format!("/api/{collection}/{}", client::escape(id)),
                    None,
                )
                .await?;
            render::message(out, &v);
        }
    }
    Ok(())
}

/// Runs one client command.
pub async fn run(g: &Global, cmd: &Command) -> anyhow::Result<()> {
    let conn = Connection::resolve(g)?;
    let client = ApiClient::new(&conn)?;
    let out = g.output;
    match cmd {
        Command::NetworkPartition(c) => artifact(&client, out, "networkPartitions", c).await,
        Command::DeploymentPolicy(c) => artifact(&client, out, "deploymentPolicies", c).await,
        Command::AutoscalingPolicy(c) => artifact(&client, out, "autoscalingPolicies", c).await,
        Command::ApplicationPolicy(c) => artifact(&client, out, "applicationPolicies", c).await,
        Command::CartridgeGroup(c) => artifact(&client, out, "cartridgeGroups", c).await,
        Command::Application(ApplicationCommand::Artifact(c)) => {
            artifact(&client, out, "applications", c).await
        }
        Command::Application(ApplicationCommand::Runtime { id }) => {
            let v = deploy::runtime(&client, id).await?;
            match out {
                Output::Json => render::json(&serde_json::to_value(&v)?),
                Output::Table => print!("{}", render::runtime_tree(&v)),
            }
            Ok(())
        }
        Command::Application(ApplicationCommand::Deploy(a)) | Command::Deploy(a) => {
            deploy::deploy(&client, out, a).await
        }
        Command::Application(ApplicationCommand::Undeploy(a)) | Command::Undeploy(a) => {
            deploy::undeploy(&client, out, a).await
        }
        Command::Members { id } => deploy::members(&client, out, id.as_deref()).await,
        Command::ScalingEvents { id } => {
            let v = client
                .send(
                    "GET",
                    &format!("/api/applications/{}/scalingEvents", client::escape(id)),
                    None,
                )
                .await?;
            render::scaling_events(out, &v);
            Ok(())
        }
        Command::Metadata(c) => metadata(&client, out, c).await,
        Command::Logs {
            app,
            member,
            since,
            tail,
            follow,
        } => {
            let mut path = format!("/api/applications/{}/logs?", client::escape(app));
            if let Some(m) = member {
                path.push_str(&format!("member={}&", client::escape(m)));
            }
            if let Some(s) = since {
                path.push_str(&format!("since={}&", client::escape(s)));
            }
            if let Some(n) = tail {
                path.push_str(&format!("tail={n}&"));
            }
            if *follow {
                path.push_str("follow=true");
                client
                    .follow(&path, |l| match out {
                        Output::Json => println!("{l}"),
                        Output::Table => {
                            if let Ok(v) = serde_json::from_str::<Value>(l) {
                                render::log_line(&v);
                            }
                        }
                    })
                    .await
            } else {
                let v = client
                    .send("GET", path.trim_end_matches(['?', '&']), None)
                    .await?;
                match out {
                    Output::Json => render::json(&v),
                    Output::Table => {
                        for l in v.as_array().into_iter().flatten() {
                            render::log_line(l);
                        }
                    }
                }
                Ok(())
            }
        }
        Command::KubernetesCluster(KubernetesCommand::Artifact(c)) => {
            artifact(&client, out, "kubernetesClusters", c).await
        }
        Command::KubernetesCluster(c) => kubernetes(&client, out, c).await,
        Command::Cartridge(CartridgeCommand::Artifact(c)) => {
            artifact(&client, out, "cartridges", c).await
        }
        Command::Cartridge(CartridgeCommand::Filter { filter, criteria }) => {
            let mut path = format!("/api/cartridges/filter/{}", client::escape(filter));
            if let Some(c) = criteria {
                path.push_str(&format!("?criteria={}", client::escape(c)));
            }
            let v = client.send("GET", &path, None).await?;
            render::list(out, "cartridges", &v);
            Ok(())
        }
        Command::Tenant(c) => tenant(&client, out, c).await,
        Command::User(c) => user(&client, out, c).await,
        Command::IaasProviders => {
            let v = client.send("GET", "/api/iaasProviders", None).await?;
            match out {
                Output::Json => render::json(&v),
                Output::Table => {
                    for p in v
                        .get("iaasProviders")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        println!("{}", p.as_str().unwrap_or_default());
                    }
                }
            }
            Ok(())
        }
        Command::Login => {
            let v = client
                .send("POST", "/api/login", Some(b"{}".to_vec()))
                .await?;
            let Some(path) = ConfigFile::path() else {
                bail!("cannot tell where to save the config: set HOME or NUBO_CONFIG");
            };
            let file = ConfigFile {
                url: Some(conn.url.clone()),
                user: Some(conn.user.clone()),
                password: None,
                token: v.get("token").and_then(Value::as_str).map(str::to_owned),
                ca_cert: conn.ca_cert.clone(),
                insecure: conn.insecure.then_some(true),
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            write_private(&path, toml::to_string(&file)?.as_bytes())?;
            match out {
                Output::Json => {
                    let mut shown = v.clone();
                    shown["token"] = Value::String("(saved)".into());
                    render::json(&shown);
                }
                Output::Table => println!(
                    "logged in as {} until {}",
                    conn.user,
                    v.get("expires").and_then(Value::as_str).unwrap_or("?")
                ),
            }
            eprintln!(
                "saved the connection settings and a session token (not your password) to {}",
                path.display()
            );
            Ok(())
        }
        Command::Logout => {
            let v = client
                .send("POST", "/api/logout", Some(b"{}".to_vec()))
                .await?;
            if let Some(path) = ConfigFile::path()
                && let Ok(mut file) = ConfigFile::load()
                && file.token.take().is_some()
            {
                write_private(&path, toml::to_string(&file)?.as_bytes())?;
            }
            render::message(out, &v);
            Ok(())
        }
        Command::Whoami => {
            let v = client.send("GET", "/api/session", None).await?;
            match out {
                Output::Json => render::json(&v),
                Output::Table => render::describe(out, &v),
            }
            Ok(())
        }
        Command::Token(c) => token(&client, out, c).await,
        Command::Signup(c) => {
            let (method, path, body) = match c {
                SignupCommand::Add { application, file } => (
                    "POST",
                    format!("/api/applications/{}/signup", client::escape(application)),
                    Some(read_file(file)?),
                ),
                SignupCommand::Describe { application } => (
                    "GET",
                    format!("/api/applications/{}/signup", client::escape(application)),
                    None,
                ),
                SignupCommand::Remove { application } => (
                    "DELETE",
                    format!("/api/applications/{}/signup", client::escape(application)),
                    None,
                ),
            };
            let v = client.send(method, &path, body).await?;
            match c {
                SignupCommand::Remove { .. } => render::message(out, &v),
                _ => render::describe(out, &v),
            }
            Ok(())
        }
        Command::DomainMapping(c) => {
            match c {
                DomainMappingCommand::Add { application, file } => {
                    let v = client
                        .send(
                            "POST",
                            &format!(
                                "/api/applications/{}/domainMappings",
                                client::escape(application)
                            ),
                            Some(read_file(file)?),
                        )
                        .await?;
                    render::list(
                        out,
                        "domainMappings",
                        v.get("domainMappings").unwrap_or(&Value::Null),
                    );
                }
                DomainMappingCommand::List { application } => {
                    let v = client
                        .send(
                            "GET",
                            &format!(
                                "/api/applications/{}/domainMappings",
                                client::escape(application)
                            ),
                            None,
                        )
                        .await?;
                    render::list(
                        out,
                        "domainMappings",
                        v.get("domainMappings").unwrap_or(&Value::Null),
                    );
                }
                DomainMappingCommand::SetCertificate {
                    application,
                    domain,
                    cert,
                    key,
                } => {
                    let pem = |f: &PathBuf| -> anyhow::Result<String> {
                        String::from_utf8(read_file(f)?)
                            .with_context(|| format!("{} is not a PEM file", f.display()))
                    };
                    let body =
                        serde_json::json!({"certificate": pem(cert)?, "privateKey": pem(key)?});
                    let v = client
                        .send(
                            "PUT",
                            &format!(
                                "/api/applications/{}/domainMappings/{}/certificate",
                                client::escape(application),
                                client::escape(domain)
                            ),
                            Some(serde_json::to_vec(&body)?),
                        )
                        .await?;
                    render::describe(out, &v);
                }
                DomainMappingCommand::AcmeChallenge {
                    application,
                    domain,
                    token,
                    key_authorization,
                } => {
                    let path = acme_path(application, domain, token);
                    let body = serde_json::json!({"keyAuthorization": key_authorization});
                    let v = client
                        .send("PUT", &path, Some(serde_json::to_vec(&body)?))
                        .await?;
                    render::message(out, &v);
                }
                DomainMappingCommand::RemoveAcmeChallenge {
                    application,
                    domain,
                    token,
                } => {
                    let path = acme_path(application, domain, token);
                    render::message(out, &client.send("DELETE", &path, None).await?);
                }
                DomainMappingCommand::RemoveCertificate {
                    application,
                    domain,
                }
                | DomainMappingCommand::Remove {
                    application,
                    domain,
                } => {
                    let what = match c {
                        DomainMappingCommand::RemoveCertificate { .. } => "/certificate",
                        _ => "",
                    };
                    let path = format!(
                        "/api/applications/{}/domainMappings/{}{what}",
                        client::escape(application),
                        client::escape(domain)
                    );
                    render::message(out, &client.send("DELETE", &path, None).await?)
                }
            }
            Ok(())
        }
        Command::Quota(c) => {
            let v = match c {
                QuotaCommand::Set {
                    domain,
                    applications,
                    instances,
                } => {
                    let body =
                        serde_json::json!({"applications": applications, "instances": instances});
                    client
                        .send(
                            "PUT",
                            &format!("/api/quotas/{}", client::escape(domain)),
                            Some(serde_json::to_vec(&body)?),
                        )
                        .await?
                }
                QuotaCommand::Show { domain: Some(d) } => {
                    client
                        .send("GET", &format!("/api/quotas/{}", client::escape(d)), None)
                        .await?
                }
                QuotaCommand::Show { domain: None } => {
                    client.send("GET", "/api/quota", None).await?
                }
            };
            render::describe(out, &v);
            Ok(())
        }
        Command::Usage {
            application,
            tenant,
        } => {
            let mut q = Vec::new();
            if let Some(a) = application {
                q.push(format!("application={}", client::escape(a)));
            }
            if let Some(t) = tenant {
                q.push(format!("tenant={t}"));
            }
            let path = if q.is_empty() {
                "/api/usage".to_owned()
            } else {
                format!("/api/usage?{}", q.join("&"))
            };
            let v = client.send("GET", &path, None).await?;
            match out {
                Output::Json => render::json(&v),
                Output::Table => {
                    render::list(out, "usage", v.get("usage").unwrap_or(&Value::Null));
                    println!(
                        "total: {} instance-seconds (as of {})",
                        v["total"]["instanceSeconds"],
                        v.get("asOf").and_then(Value::as_str).unwrap_or("?")
                    );
                }
            }
            Ok(())
        }
        Command::Audit { user, after, limit } => {
            let mut path = format!("/api/audit?after={after}&limit={limit}");
            if let Some(u) = user {
                path.push_str(&format!("&user={}", client::escape(u)));
            }
            let v = client.send("GET", &path, None).await?;
            render::list(out, "audit", &v);
            Ok(())
        }
    }
}

async fn kubernetes(client: &ApiClient, out: Output, c: &KubernetesCommand) -> anyhow::Result<()> {
    let e = client::escape;
    match c {
        KubernetesCommand::Artifact(a) => {
            return artifact(client, out, "kubernetesClusters", a).await;
        }
        KubernetesCommand::AddHost { cluster, file } => render::message(
            out,
            &client
                .send(
                    "POST",
                    &format!("/api/kubernetesClusters/{}/minion", e(cluster)),
                    Some(read_file(file)?),
                )
                .await?,
        ),
        KubernetesCommand::ListHosts { cluster } => render::list(
            out,
            "kubernetesHosts",
            &client
                .send(
                    "GET",
                    &format!("/api/kubernetesClusters/{}/hosts", e(cluster)),
                    None,
                )
                .await?,
        ),
        KubernetesCommand::Master { cluster } => render::describe(
            out,
            &client
                .send(
                    "GET",
                    &format!("/api/kubernetesClusters/{}/master", e(cluster)),
                    None,
                )
                .await?,
        ),
        KubernetesCommand::UpdateMaster { cluster, file } => render::message(
            out,
            &client
                .send(
                    "PUT",
                    &format!("/api/kubernetesClusters/{}/master", e(cluster)),
                    Some(read_file(file)?),
                )
                .await?,
        ),
        KubernetesCommand::UpdateHost { file } => render::message(
            out,
            &client
                .send(
                    "PUT",
                    "/api/kubernetesClusters/host",
                    Some(read_file(file)?),
                )
                .await?,
        ),
        KubernetesCommand::RemoveHost { cluster, host } => render::message(
            out,
            &client
                .send(
                    "DELETE",
                    &format!("/api/kubernetesClusters/{}/hosts/{}", e(cluster), e(host)),
                    None,
                )
                .await?,
        ),
    }
    Ok(())
}

async fn tenant(client: &ApiClient, out: Output, c: &TenantCommand) -> anyhow::Result<()> {
    match c {
        TenantCommand::Add(a) => {
            let body = match &a.file {
                Some(f) => read_file(f)?,
                None => serde_json::to_vec(&serde_json::json!({
                    "admin": a.admin, "firstName": a.first_name, "lastName": a.last_name,
                    "tenantDomain": a.domain, "email": a.email, "adminPassword": a.admin_password,
                }))?,
            };
            render::message(out, &client.send("POST", "/api/tenants", Some(body)).await?);
        }
        TenantCommand::Update { file } => render::message(
            out,
            &client
                .send("PUT", "/api/tenants", Some(read_file(file)?))
                .await?,
        ),
        TenantCommand::List { domain } => {
            let path = match domain {
                Some(d) => format!("/api/tenants/search/{}", client::escape(d)),
                None => "/api/tenants".to_owned(),
            };
            render::list(out, "tenants", &client.send("GET", &path, None).await?);
        }
        TenantCommand::Describe { domain } => render::describe(
            out,
            &client
                .send(
                    "GET",
                    &format!("/api/tenants/{}", client::escape(domain)),
                    None,
                )
                .await?,
        ),
        TenantCommand::Activate { domain } => render::message(
            out,
            &client
                .send(
                    "PUT",
                    &format!("/api/tenants/activate/{}", client::escape(domain)),
                    None,
                )
                .await?,
        ),
        TenantCommand::Deactivate { domain } => render::message(
            out,
            &client
                .send(
                    "PUT",
                    &format!("/api/tenants/deactivate/{}", client::escape(domain)),
                    None,
                )
                .await?,
        ),
    }
    Ok(())
}

async fn token(client: &ApiClient, out: Output, c: &TokenCommand) -> anyhow::Result<()> {
    match c {
        TokenCommand::Create { name, scope, days } => {
            let body = serde_json::json!({"name": name, "scope": scope, "expiresInDays": days});
            let v = client
                .send("POST", "/api/tokens", Some(serde_json::to_vec(&body)?))
                .await?;
            match out {
                Output::Json => render::json(&v),
                Output::Table => {
                    println!(
                        "{}",
                        v.get("token").and_then(Value::as_str).unwrap_or_default()
                    );
                    eprintln!(
                        "token {} ({}, {}) until {}: shown once, keep it secret; use it as NUBO_TOKEN or `Authorization: Bearer`",
                        v.get("id").and_then(Value::as_str).unwrap_or_default(),
                        name,
                        scope,
                        v.get("expires").and_then(Value::as_str).unwrap_or_default()
                    );
                }
            }
        }
        TokenCommand::List => render::list(
            out,
            "tokens",
            &client.send("GET", "/api/tokens", None).await?,
        ),
        TokenCommand::Revoke { id } => render::message(
            out,
            &client
                .send(
                    "DELETE",
                    &format!("/api/tokens/{}", client::escape(id)),
                    None,
                )
                .await?,
        ),
    }
    Ok(())
}

async fn user(client: &ApiClient, out: Output, c: &UserCommand) -> anyhow::Result<()> {
    match c {
        UserCommand::Add { file } => render::message(
            out,
            &client
                .send("POST", "/api/users", Some(read_file(file)?))
                .await?,
        ),
        UserCommand::Update { file } => render::message(
            out,
            &client
                .send("PUT", "/api/users", Some(read_file(file)?))
                .await?,
        ),
        UserCommand::List => {
            render::list(out, "users", &client.send("GET", "/api/users", None).await?)
        }
        UserCommand::Remove { name } => render::message(
            out,
            &client
                .send(
                    "DELETE",
                    &format!("/api/users/{}", client::escape(name)),
                    None,
                )
                .await?,
        ),
    }
    Ok(())
}

fn write_private(path: &PathBuf, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

/// The metadata service's path of an application's (or one of its clusters') properties.
fn properties_path(app: &str, cluster: Option<&str>) -> String {
    use client::escape;
    match cluster {
        Some(c) => format!(
            "/metadata/api/applications/{}/clusters/{}/properties",
            escape(app),
            escape(c)
        ),
        None => format!("/metadata/api/applications/{}/properties", escape(app)),
    }
}

async fn metadata(client: &ApiClient, out: Output, c: &MetadataCommand) -> anyhow::Result<()> {
    use client::escape;
    match c {
        MetadataCommand::Get { app, key, cluster } => {
            let base = properties_path(app, cluster.as_deref());
            let path = match key {
                Some(k) => format!("{base}/{}", escape(k)),
                None => base,
            };
            let v = client.send("GET", &path, None).await?;
            match out {
                Output::Json => render::json(&v),
                Output::Table => {
                    let rows = match &v {
                        Value::Array(a) => a.clone(),
                        one => vec![one.clone()],
                    };
                    render::properties(&rows);
                }
            }
        }
        MetadataCommand::Add {
            app,
            key,
            values,
            cluster,
        } => {
            let path = properties_path(app, cluster.as_deref());
            let body = serde_json::to_vec(&serde_json::json!({"key": key, "values": values}))?;
            let v = client.send("POST", &path, Some(body)).await?;
            render::message(out, &v);
        }
        MetadataCommand::Delete { app, key, value } => {
            let mut path = format!("/metadata/api/applications/{}/properties", escape(app));
            if let Some(k) = key {
                path.push_str(&format!("/{}", escape(k)));
                if let Some(v) = value {
                    path.push_str(&format!("/value/{}", escape(v)));
                }
            }
            let v = client.send("DELETE", &path, None).await?;
            render::message(out, &v);
        }
    }
    Ok(())
}
