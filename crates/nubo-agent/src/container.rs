//! A member's workload as a container (the `docker` provider): the agent runs beside it, on the
//! host, and drives a Docker Engine (or Podman's Docker-compatible API) through its socket. The
//! image's own entrypoint is the workload; it listens on the cartridge's ports inside the
//! container, each published on the loopback port the platform chose for the member, where the
//! agent checks it and load balancers reach it. The container runs unprivileged: every capability
//! dropped, no new privileges, a pids limit, the bridge network (never the host's), the memory
//! and CPU limits of the cartridge's properties, and no host mount but one: a member with a
//! repository gets its checkout (on the host, kept current by the agent) at `/app`. Labels name
//! its member, so that what a restarted agent finds is its own.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, LogsOptions,
    RemoveContainerOptions, StatsOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use nubo_events::LogStream;
use nubo_iaas::AgentPayload;

use crate::logs::{LineCutter, RotatingLog, Shipper, keep};

/// Where a container member's artifacts are, inside its container.
pub const APP_MOUNT: &str = "/app";

/// The label that names a container's member.
pub const MEMBER_LABEL: &str = "io.nubo.member";

/// The files of a TLS engine's client: the authority to trust, the client's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineTls {
    /// The certificate authority (PEM file).
    pub ca: std::path::PathBuf,
    /// The client's certificate (PEM file).
    pub cert: std::path::PathBuf,
    /// The client's key (PEM file).
    pub key: std::path::PathBuf,
}

impl EngineTls {
    /// From the payload (`NUBO_DOCKER_TLS_CA`, `_CERT`, `_KEY`: the partition's `tlsCa`,
    /// `tlsCert` and `tlsKey` properties), when all three are there: each a file on this host,
    /// or the PEM itself (the key kept sealed in the platform's store, opened for this payload),
    /// which is written into `dir` (readable by the agent alone; never a directory the
    /// container sees) for the engine's client to read.
    pub fn of(p: &AgentPayload, dir: &std::path::Path) -> anyhow::Result<Option<EngineTls>> {
        let mut files = Vec::new();
        for (parameter, name) in [
            ("NUBO_DOCKER_TLS_CA", "engine-ca.pem"),
            ("NUBO_DOCKER_TLS_CERT", "engine-cert.pem"),
            ("NUBO_DOCKER_TLS_KEY", "engine-key.pem"),
        ] {
            let Some(v) = p.parameters.get(parameter) else {
                return Ok(None);
            };
            if v.trim_start().starts_with("-----BEGIN") {
                let file = dir.join(name);
                write_private(&file, v.as_bytes())?;
                files.push(file);
            } else {
                files.push(std::path::PathBuf::from(v));
            }
        }
        let [ca, cert, key] = <[std::path::PathBuf; 3]>::try_from(files)
            .map_err(|_| anyhow::anyhow!("three TLS files"))?;
        Ok(Some(EngineTls { ca, cert, key }))
    }
}

/// Writes `data` to `file`, readable and writable by its owner alone.
fn write_private(file: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Connects to an engine: `unix:///run/docker.sock` (a Podman socket too), or
/// `tcp://HOST:PORT` with TLS (the engine's `--tlsverify`), both ways checked.
pub async fn connect_with(endpoint: &str, tls: Option<&EngineTls>) -> anyhow::Result<Docker> {
    let version = bollard::ClientVersion {
        major_version: 1,
        minor_version: 41,
    };
    let docker = if let Some(addr) = endpoint.strip_prefix("tcp://") {
        let tls = tls.with_context(|| {
            format!("engine endpoint `{endpoint}`: a tcp:// engine needs the partition's tlsCa, tlsCert and tlsKey properties (an engine without TLS is the host's root for anyone who reaches it)")
        })?;
        Docker::connect_with_ssl(addr, &tls.key, &tls.cert, &tls.ca, 60, &version)
            .with_context(|| format!("cannot use the engine at {endpoint} with its TLS files"))?
    } else {
        let path = endpoint.strip_prefix("unix://").with_context(|| {
            format!("engine endpoint `{endpoint}`: unix:///PATH or tcp://HOST:PORT")
        })?;
        Docker::connect_with_unix(path, 60, &version)
            .with_context(|| format!("cannot use the engine at {endpoint}"))?
    };
    // API 1.41 (Docker 20.10, Podman 3 and later speak it): a ping, not a version negotiation,
    // which costs Podman a few hundred milliseconds (it runs its tools to report their versions).
    docker
        .ping()
        .await
        .with_context(|| format!("the engine at {endpoint} does not answer"))?;
    Ok(docker)
}

/// The engine of a member's payload (its TLS files, when given in place, written into `dir`).
pub async fn connect(p: &AgentPayload, dir: &std::path::Path) -> anyhow::Result<Docker> {
    let endpoint = p
        .parameters
        .get("NUBO_DOCKER_ENDPOINT")
        .map(String::as_str)
        .unwrap_or("unix:///var/run/docker.sock");
    connect_with(endpoint, EngineTls::of(p, dir)?.as_ref()).await
}

/// The container's name: `nubo-<member id>` (characters an engine refuses as `_`).
pub fn container_name(member_id: &str) -> String {
    let safe: String = member_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("nubo-{safe}")
}

/// Removes the container of the member a payload describes, if it is a container member (its
/// agent died, and the node supervisor cleans up after it): whether it was one.
pub async fn remove_for(p: &AgentPayload) -> anyhow::Result<bool> {
    if p.parameters.get("NUBO_RUNTIME").map(String::as_str) != Some("docker") {
        return Ok(false);
    }
    // The engine's TLS files, when given in place, in a directory of this process's own, gone
    // when it is done.
    let dir = std::env::temp_dir().join(format!(
        "nubo-removal-{}-{}",
        std::process::id(),
        container_name(&p.member_id)
    ));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot make {}", dir.display()))?;
    let docker = connect(p, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let docker = docker?;
    match docker
        .remove_container(
            &container_name(&p.member_id),
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(true),
        Err(e) => Err(e).context("cannot remove the member's container"),
    }
}

/// Bytes from `256m`, `1g`, `512k` or a number of bytes.
pub fn parse_bytes(text: &str) -> Option<i64> {
    let t = text.trim().to_ascii_lowercase();
    let (n, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    let n: i64 = n.parse().ok()?;
    (n > 0).then(|| n.checked_mul(mult)).flatten()
}

/// The container ports of the cartridge's port mappings, by name (`PORT_MAPPINGS` of the
/// payload: `NAME:x|PROTOCOL:y|PORT:n|…;…`).
pub fn container_ports(mappings: &str) -> Vec<(String, u16)> {
    mappings
        .split(';')
        .filter_map(|m| {
            let field = |k: &str| {
                m.split('|')
                    .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix(':')))
            };
            Some((field("NAME")?.to_owned(), field("PORT")?.parse().ok()?))
        })
        .collect()
}

/// A running container of a member.
pub struct Container {
    docker: Docker,
    id: String,
    exited: Arc<Mutex<Option<String>>>,
    done: Arc<tokio::sync::Notify>,
    usage: Arc<Mutex<Usage>>,
    /// The tasks following its statistics and its pauses (stopped with it).
    followers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Container {
    fn drop(&mut self) {
        for t in &self.followers {
            t.abort();
        }
    }
}

/// A container's use as the engine last reported it: memory as a share of its limit, CPU as a
/// share of the host, and whether it is paused.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Usage {
    memory: f64,
    load: f64,
    paused: bool,
}

/// Memory and CPU shares from one of the engine's statistics (CPU from its own previous
/// reading, which a stream carries).
fn usage_of(s: &bollard::models::ContainerStatsResponse) -> (f64, f64) {
    let memory = s
        .memory_stats
        .as_ref()
        .and_then(|m| Some((m.usage? as f64, m.limit? as f64)))
        .filter(|(_, limit)| *limit > 0.0)
        .map_or(0.0, |(usage, limit)| {
            (usage / limit * 100.0).clamp(0.0, 100.0)
        });
    let cpu = |c: Option<&bollard::models::ContainerCpuStats>| {
        let c = c?;
        Some((c.cpu_usage.as_ref()?.total_usage?, c.system_cpu_usage?))
    };
    let load = match (cpu(s.cpu_stats.as_ref()), cpu(s.precpu_stats.as_ref())) {
        (Some((t, sys)), Some((t0, sys0))) if sys > sys0 && sys0 > 0 => {
            ((t.saturating_sub(t0)) as f64 / (sys - sys0) as f64 * 100.0).clamp(0.0, 100.0)
        }
        _ => 0.0,
    };
    (memory, load)
}

/// Follows a container's statistics and its pauses on two long-lived requests to its engine
/// (rather than a call or two a second), followed again a second after either ends while the
/// container runs.
fn follow_usage(
    docker: &Docker,
    id: &str,
    usage: &Arc<Mutex<Usage>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let stats = {
        let (docker, id, usage) = (docker.clone(), id.to_owned(), usage.clone());
        tokio::spawn(async move {
            loop {
                let mut stream = docker.stats(
                    &id,
                    Some(StatsOptions {
                        stream: true,
                        one_shot: false,
                    }),
                );
                while let Some(Ok(s)) = stream.next().await {
                    let (memory, load) = usage_of(&s);
                    if let Ok(mut u) = usage.lock() {
                        u.memory = memory;
                        u.load = load;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let pauses = {
        let (docker, id, usage) = (docker.clone(), id.to_owned(), usage.clone());
        tokio::spawn(async move {
            loop {
                let filters = HashMap::from([
                    ("container".to_owned(), vec![id.clone()]),
                    (
                        "event".to_owned(),
                        vec!["pause".to_owned(), "unpause".to_owned()],
                    ),
                ]);
                let mut events = docker.events(Some(EventsOptions {
                    filters: Some(filters),
                    ..Default::default()
                }));
                // Subscribed: what it is now (a pause before this is not an event of it).
                let paused = docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
                    .ok()
                    .and_then(|i| i.state)
                    .and_then(|s| s.paused)
                    .unwrap_or(false);
                if let Ok(mut u) = usage.lock() {
                    u.paused = paused;
                }
                while let Some(Ok(e)) = events.next().await {
                    if let Ok(mut u) = usage.lock() {
                        match e.action.as_deref() {
                            Some("pause") => u.paused = true,
                            Some("unpause") => u.paused = false,
                            _ => {}
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    vec![stats, pauses]
}

impl Container {
    /// Creates and starts the member's container, its output going to `log` and `shipper`.
    pub async fn start(
        p: &AgentPayload,
        app_dir: &std::path::Path,
        log: Arc<Mutex<RotatingLog>>,
        shipper: Option<Shipper>,
    ) -> anyhow::Result<Container> {
        // The member's directory (the agent's own; the container sees only `app/` in it).
        let dir = app_dir.parent().unwrap_or(app_dir);
        let docker = connect(p, dir).await?;
        let name = container_name(&p.member_id);
        // What an earlier agent of this member left (it was killed): gone first.
        let _ = docker
            .remove_container(
                &name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        let inside = container_ports(p.parameters.get("PORT_MAPPINGS").map_or("", String::as_str));
        let mut env: Vec<String> = p
            .parameters
            .iter()
            // Not the platform's own: the engine's endpoint and TLS material (its key is the
            // host's root) stay with the agent.
            .filter(|(k, _)| {
                k.as_str() != nubo_iaas::API_CA_PARAMETER && !k.starts_with("NUBO_DOCKER_")
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut exposed = HashMap::new();
        let mut bindings = HashMap::new();
        for (i, port) in p.ports.iter().enumerate() {
            let cport = inside
                .iter()
                .find(|(n, _)| *n == port.name)
                .map_or(port.port, |(_, c)| *c);
            let proto = if port.protocol == "udp" { "udp" } else { "tcp" };
            let key = format!("{cport}/{proto}");
            exposed.insert(key.clone(), HashMap::new());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(port.port.to_string()),
                }]),
            );
            if i == 0 {
                env.push(format!("PORT={cport}"));
            }
            env.push(format!("PORT_{i}={cport}"));
            env.push(format!("{}={cport}", crate::port_env_name(&port.name)));
        }
        env.push(format!("NUBO_MEMBER_ID={}", p.member_id));
        env.push("HOST=0.0.0.0".into());
        // The member's artifacts (its repository's checkout, kept current by the agent) are the
        // container's `/app`: the platform's own mount, the only one.
        let binds = if p.parameters.contains_key("REPO_URL") {
            env.push(format!("APPLICATION_PATH={APP_MOUNT}"));
            Some(vec![format!("{}:{APP_MOUNT}", app_dir.display())])
        } else {
            None
        };
        let mut labels = HashMap::new();
        labels.insert(MEMBER_LABEL.to_owned(), p.member_id.clone());
        labels.insert("io.nubo.application".to_owned(), p.application_id.clone());
        labels.insert("io.nubo.cluster".to_owned(), p.cluster_id.clone());
        let memory = p
            .parameters
            .get("MEMORY_LIMIT")
            .and_then(|m| parse_bytes(m));
        let nano_cpus = p
            .parameters
            .get("CPU_LIMIT")
            .and_then(|c| c.trim().parse::<f64>().ok())
            .filter(|c| *c > 0.0)
            .map(|c| (c * 1e9) as i64);
        let body = ContainerCreateBody {
            image: Some(p.command.clone()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                binds,
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges".into()]),
                network_mode: Some("bridge".into()),
                pids_limit: Some(1024),
                memory,
                nano_cpus,
                // The engine's small init is the container's first process, so that a workload
                // that never handles SIGTERM (as PID 1 it would ignore it) still stops at once.
                init: Some(true),
                // The partition's `userNamespace`: `auto` gives the container a private range of
                // user ids (Podman; Docker maps user ids daemon-wide, with `userns-remap`).
                userns_mode: p.parameters.get("NUBO_DOCKER_USERNS").cloned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = || {
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                platform: String::new(),
            })
        };
        let created = match docker.create_container(options(), body.clone()).await {
            // Podman without `catatonit` has no init: the workload is then PID 1.
            Err(e) if e.to_string().contains("init binary not found") => {
                let mut body = body;
                if let Some(h) = body.host_config.as_mut() {
                    h.init = Some(false);
                }
                docker.create_container(options(), body).await
            }
            other => other,
        }
        .with_context(|| format!("cannot create the container of image `{}`", p.command))?;
        let id = created.id;
        if let Err(e) = docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await;
            return Err(e)
                .with_context(|| format!("cannot start the container of `{}`", p.command));
        }
        // Its output, as the workload's.
        let mut logs = docker.logs(
            &id,
            Some(LogsOptions {
                follow: true,
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        tokio::spawn(async move {
            let mut lines = [LineCutter::default(), LineCutter::default()];
            while let Some(Ok(out)) = logs.next().await {
                let (stream, bytes) = match out {
                    bollard::container::LogOutput::StdErr { message } => {
                        (LogStream::Stderr, message)
                    }
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => {
                        (LogStream::Stdout, message)
                    }
                    bollard::container::LogOutput::StdIn { .. } => continue,
                };
                keep(&log, &bytes);
                if let Some(s) = &shipper {
                    lines[usize::from(stream == LogStream::Stderr)].take(&bytes, stream, s);
                }
            }
        });
        // Its end, once.
        let exited = Arc::new(Mutex::new(None));
        let done = Arc::new(tokio::sync::Notify::new());
        {
            let (docker, id, exited, done) =
                (docker.clone(), id.clone(), exited.clone(), done.clone());
            tokio::spawn(async move {
                let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
                let reason = match wait.next().await {
                    Some(Ok(r)) => format!("the container exited (status {})", r.status_code),
                    Some(Err(bollard::errors::Error::DockerContainerWaitError {
                        code, ..
                    })) => {
                        format!("the container exited (status {code})")
                    }
                    Some(Err(e)) => format!("lost the container: {e}"),
                    None => "lost the container".to_owned(),
                };
                if let Ok(mut x) = exited.lock() {
                    *x = Some(reason);
                }
                done.notify_waiters();
                done.notify_one();
            });
        }
        let usage = Arc::new(Mutex::new(Usage::default()));
        let followers = follow_usage(&docker, &id, &usage);
        Ok(Container {
            docker,
            id,
            exited,
            done,
            usage,
            followers,
        })
    }

    /// Why it ended, if it did.
    pub fn exited(&self) -> Option<String> {
        self.exited.lock().ok().and_then(|x| x.clone())
    }

    /// Waits for its end; why it ended.
    pub async fn wait(&self) -> String {
        loop {
            if let Some(r) = self.exited() {
                return r;
            }
            let notified = self.done.notified();
            if let Some(r) = self.exited() {
                return r;
            }
            notified.await;
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after `grace`) and removes it: a member leaves no
    /// container.
    pub async fn stop(&self, grace: Duration) {
        let _ = self
            .docker
            .stop_container(
                &self.id,
                Some(StopContainerOptions {
                    t: Some(grace.as_secs().clamp(1, 3600) as i32),
                    signal: None,
                }),
            )
            .await;
        self.remove().await;
    }

    /// Removes it (forced).
    pub async fn remove(&self) {
        let _ = self
            .docker
            .remove_container(
                &self.id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    /// Memory (a share of its limit), CPU (a share of the host) and whether it is paused, as
    /// the engine last reported them.
    pub async fn sample(&mut self) -> (f64, f64, bool) {
        let u = self.usage.lock().map(|u| *u).unwrap_or_default();
        (u.memory, u.load, u.paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_s_statistics_give_memory_and_cpu_shares() {
        use bollard::models::{
            ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats, ContainerStatsResponse,
        };
        let cpu = |total: u64, system: u64| ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            ..Default::default()
        };
        let s = ContainerStatsResponse {
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(12 << 20),
                limit: Some(48 << 20),
                ..Default::default()
            }),
            cpu_stats: Some(cpu(3_000, 20_000)),
            precpu_stats: Some(cpu(1_000, 10_000)),
            ..Default::default()
        };
        assert_eq!(usage_of(&s), (25.0, 20.0));
        // A stream's first reading has no previous one: no CPU figure yet.
        let first = ContainerStatsResponse {
            precpu_stats: Some(cpu(0, 0)),
            ..s
        };
        assert_eq!(usage_of(&first), (25.0, 0.0));
    }

    #[test]
    fn limits_and_ports_read_as_documented() {
        assert_eq!(parse_bytes("256m"), Some(256 << 20));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("-1m"), None);
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(
            container_ports(
                "NAME:http|PROTOCOL:http|PORT:8080|PROXY_PORT:8280|TYPE:ClusterIP;NAME:admin|PROTOCOL:tcp|PORT:9000|PROXY_PORT:0|TYPE:ClusterIP"
            ),
            [("http".to_owned(), 8080), ("admin".to_owned(), 9000)]
        );
        assert!(container_ports("").is_empty());
    }
}
