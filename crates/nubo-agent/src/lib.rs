//! The cartridge agent (as in Apache Stratos 4.1), `nubo agent --payload FILE`: reads its payload,
//! connects to the bus (reconnecting by itself), reports InstanceStarted, starts the workload
//! (`sh -c <command>` with `PORT`, `PORT_<NAME>`, `PORT_<N>` set), waits until its ports accept
//! connections, reports InstanceActivated, then publishes health statistics every second. On a
//! clean-up request it drains (maintenance → stop the workload → ready to shut down) and exits.
//! If the workload dies, it reports the failure and exits, so that the member is replaced.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nubo_bus::EventBus;
use nubo_events::{Category, Event, InstanceRef, LogStream, MemberHealth, MemberStatus};
pub use nubo_iaas::record_agent;
use nubo_iaas::{API_CA_PARAMETER, AgentPayload, proc};
use tokio::process::Child;

mod artifacts;
mod container;
mod health;
mod hooks;
mod logs;
mod members;

/// How long the workload has to stop after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a draining member keeps serving after announcing maintenance, so that load balancers
/// stop routing to it before its workload stops.
pub const DRAIN_DELAY: Duration = Duration::from_millis(500);
/// How long a member may stay unhealthy (out of the load balancers) before it reports itself down
/// and is replaced, where the cartridge's `unhealthyTimeout` says nothing.
pub const UNHEALTHY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a multi-tenant member brings its tenants' artifacts in line with the signups (new
/// tenants checked out, those gone removed: one call to the API).
pub const TENANT_SYNC: Duration = Duration::from_secs(3);
/// How often it fetches every tenant's repository again, without a push to its webhook (which
/// updates at once).
pub const TENANT_FETCH: Duration = Duration::from_secs(60);
/// How often health statistics are published.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

pub use nubo_iaas::port_env_name;

/// Removes the container of the member `payload_file` describes (`nubo agent --remove-container`,
/// run by the node supervisor after the member's agent died): whether it was a container member.
pub async fn remove_container(payload_file: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read(payload_file)
        .with_context(|| format!("cannot read the payload {}", payload_file.display()))?;
    let p: AgentPayload = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an agent payload", payload_file.display()))?;
    container::remove_for(&p).await
}

/// Runs the agent until the member is stopped. Returns the process exit code.
pub async fn run(payload_file: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read(payload_file)
        .with_context(|| format!("cannot read the payload {}", payload_file.display()))?;
    let mut p: AgentPayload = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an agent payload", payload_file.display()))?;
    let workdir = payload_file
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    // The API's certificate (when it is the server's self-signed one): a file the workload's
    // clients of the metadata service can trust, named by METADATA_SERVICE_CA.
    if let Some(pem) = p.parameters.remove(API_CA_PARAMETER) {
        let path = workdir.join("api-ca.pem");
        std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
        p.parameters
            .insert("METADATA_SERVICE_CA".into(), path.display().to_string());
    }
    let me = InstanceRef {
        application_id: p.application_id.clone(),
        service_name: p.service_name.clone(),
        cluster_id: p.cluster_id.clone(),
        cluster_instance_id: p.cluster_instance_id.clone(),
        member_id: p.member_id.clone(),
        network_partition_id: p.network_partition_id.clone(),
        partition_id: p.partition_id.clone(),
    };
    // MQTT or NATS, as the server's URL says.
    let bus = nubo_bus::connect_url(&p.bus_url, "agent")
        .await
        .with_context(|| format!("cannot use the bus {}", nubo_bus::redact_url(&p.bus_url)))?;
    let auth = match &p.bus_key {
        Some(hex) => nubo_bus::BusAuth::Member {
            member_id: p.member_id.clone(),
            key: nubo_bus::BusKey::from_hex(hex)
                .context("the payload's bus key is not 64 hex digits")?,
        },
        // A platform whose bus proves nothing (a test's in-process bus).
        None => nubo_bus::BusAuth::Open,
    };
    let events = EventBus::with_auth(bus.clone(), auth);
    // Subscriptions are made now (and renewed on every reconnection).
    // Only what the platform addresses to this member (its clean-up request), on its own topic.
    let own = Category::InstanceNotifier
        .member_topic(&p.member_id)
        .with_context(|| format!("member id `{}` cannot name a topic", p.member_id))?;
    let mut notifier = events.subscribe_filter(&own).await?;
    // Only what it needs of the topology: whether its member shows there yet.
    let mut topology = events
        .subscribe_only(
            Category::Topology,
            &["CompleteTopology", "MemberInitialized"],
        )
        .await?;
    if bus.wait_connected(Duration::from_secs(30)).await.is_err() {
        tracing::warn!(bus = %nubo_bus::redact_url(&p.bus_url), "the bus is not reachable yet; starting anyway and reporting once it is");
    }
    wait_for_member(&events, &mut topology, &p.member_id).await;
    // Extension hooks (the cartridge's extensionsDir), with the member's values.
    let extensions = p
        .parameters
        .get("EXTENSIONS_DIR")
        .map(std::path::PathBuf::from);
    let mut hook_env = p.parameters.clone();
    hook_env.insert(
        "APPLICATION_PATH".into(),
        workdir.join("app").display().to_string(),
    );
    if let Some(first) = p.ports.first() {
        hook_env.insert("PORT".into(), first.port.to_string());
    }
    let app_dir = workdir.join("app");
    if let Some(script) = hooks::hook(extensions.as_deref(), "InstanceStartedEvent")
        && let Err(reason) = hooks::run(&script, "InstanceStartedEvent", &hook_env, &app_dir).await
    {
        fail(&events, &me, "start hook failed", reason).await;
        return Ok(2);
    }
    // The hooks of other members' events, when the cartridge has any: topology events (which a
    // member cannot check) are hints to read the application's members from the API; each hook
    // runs in order beside the loop; a failure is logged and shown in the member's logs.
    let member_hooks: Vec<&str> = members::HOOKS
        .iter()
        .copied()
        .filter(|h| hooks::hook(extensions.as_deref(), h).is_some())
        .collect();
    let mut view_sub = if member_hooks.is_empty() {
        None
    } else {
        // What a member accepts from the platform unchecked: exactly these hints.
        Some(
            events
                .subscribe_only(Category::Topology, nubo_bus::MEMBER_UNCHECKED)
                .await?,
        )
    };
    // The rest of the topology is not this member's business: the broker stops sending it here
    // (every agent following every topology change would cost the platform a message per member
    // per change).
    drop(topology);
    publish(&events, Event::InstanceStarted(me.clone())).await;

    // The member's artifacts (its application's git repository), before the workload starts.
    let repository = match artifacts::repository(&p).await {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("cannot get the member's repository: {e:#}");
            fail(&events, &me, "no artifacts", reason).await;
            return Ok(2);
        }
    };
    if let Some(repo) = &repository {
        match artifacts::checkout(&app_dir, repo).await {
            Ok(commit) => {
                tracing::info!(member = %p.member_id, %commit, url = %repo.repo_url, "artifacts checked out");
                publish(
                    &events,
                    Event::InstanceArtifactUpdated {
                        instance: me.clone(),
                        commit: Some(commit),
                        error: None,
                    },
                )
                .await;
            }
            Err(reason) => {
                let reason = format!("cannot check out {}: {reason}", repo.repo_url);
                fail(&events, &me, "no artifacts", reason).await;
                return Ok(2);
            }
        }
    }
    // Git work (updates, commit-back, the tenants' checkouts) one at a time.
    let git_lock = Arc::new(tokio::sync::Mutex::new(()));
    // A member of a multi-tenant application serves every signed-up tenant's artifacts, each in
    // `app/tenants/<tenant-domain>/`, kept in line with the signups while it runs.
    if p.parameters.get("MULTITENANT").map(String::as_str) == Some("true")
        && p.parameters.contains_key("TOKEN")
    {
        match artifacts::sync_tenants(&app_dir, &p, true).await {
            Ok(served) => {
                tracing::info!(member = %p.member_id, tenants = served.len(), "tenants' artifacts checked out")
            }
            Err(e) => {
                tracing::warn!(member = %p.member_id, error = %format!("{e:#}"), "cannot read the tenants' signups yet")
            }
        }
        let (app, payload) = (app_dir.clone(), p.clone());
        let lock = git_lock.clone();
        tokio::spawn(async move {
            let mut fetched = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(TENANT_SYNC).await;
                let fetch = fetched.elapsed() >= TENANT_FETCH;
                let _one = lock.lock().await;
                match artifacts::sync_tenants(&app, &payload, fetch).await {
                    Ok(_) if fetch => fetched = tokio::time::Instant::now(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot read the tenants' signups")
                    }
                }
            }
        });
    }

    // Its output goes to the platform too.
    let shipper = logs::Shipper::start(events.clone(), p.member_id.clone());
    let mut workload = match Work::start(&p, &workdir, Some(shipper.clone())).await {
        Ok(w) => w,
        Err(e) => {
            let reason = format!("{e:#}");
            fail(&events, &me, "cannot start the workload", reason).await;
            return Ok(2);
        }
    };

    // How long the workload has from SIGTERM to its end (the cartridge's terminationTimeout).
    let stop_grace = p
        .parameters
        .get("TERMINATION_TIMEOUT")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(STOP_GRACE, Duration::from_secs);
    // Wait for the ports, or the workload's early death, as long as the platform says.
    let port_check = Duration::from_secs(
        p.parameters
            .get("PORT_CHECK_TIMEOUT")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .unwrap_or(120),
    );
    let started = Instant::now();
    // The readiness path, when the cartridge has one: the member is not Active before it answers.
    let probe_port = p.ports.iter().find(|x| x.protocol != "udp").map(|x| x.port);
    let readiness = p.parameters.get("READINESS_PATH").zip(probe_port);
    let liveness_path = p.parameters.get("LIVENESS_PATH").zip(probe_port);
    loop {
        if ports_open(&p).await
            && match readiness {
                Some((path, port)) => health::http_ok(port, path).await,
                None => true,
            }
        {
            break;
        }
        if let Some(ended) = workload.exited().await {
            let reason = format!(
                "{ended} before its ports opened; last output: {}",
                tail(&workdir.join("workload.log"))
            );
            fail(&events, &me, "workload failed", reason).await;
            return Ok(2);
        }
        if started.elapsed() > port_check {
            let reason = format!(
                "the workload's ports did not open{} within {} s (the cartridge's portCheckTimeout property, or the server's --port-check-timeout)",
                readiness.map_or(String::new(), |(path, _)| format!(
                    ", or its readiness path {path} did not answer 2xx or 3xx,"
                )),
                port_check.as_secs()
            );
            fail(&events, &me, "ports did not open", reason).await;
            workload.stop(stop_grace).await;
            return Ok(2);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(script) = hooks::hook(extensions.as_deref(), "InstanceActivatedEvent")
        && let Err(reason) =
            hooks::run(&script, "InstanceActivatedEvent", &hook_env, &app_dir).await
    {
        fail(&events, &me, "activation hook failed", reason).await;
        workload.stop(stop_grace).await;
        return Ok(2);
    }
    publish(&events, Event::InstanceActivated(me.clone())).await;
    tracing::info!(member = %p.member_id, after_ms = started.elapsed().as_millis() as u64, "member active");

    let mut view = members::AppView::new(&p.member_id);
    let (listed_tx, mut listed_rx) =
        tokio::sync::mpsc::channel::<anyhow::Result<Vec<nubo_events::view::MemberRow>>>(1);
    let fetch_members = |tx: tokio::sync::mpsc::Sender<_>| {
        let p = p.clone();
        tokio::spawn(async move {
            let _ = tx.send(members::fetch(&p).await).await;
        });
    };
    // A fetch now (the hooks' first view), then on every hint, and every 30 s in case a hint
    // was missed; one at a time.
    let (mut fetching, mut refetch) = (false, false);
    if view_sub.is_some() {
        fetching = true;
        fetch_members(listed_tx.clone());
    }
    let mut resync = tokio::time::interval(Duration::from_secs(30));
    let (hook_tx, mut hook_rx) = tokio::sync::mpsc::channel::<(
        &'static str,
        std::collections::BTreeMap<String, String>,
    )>(256);
    {
        let (ext, app_dir, shipper, member) = (
            extensions.clone(),
            app_dir.clone(),
            shipper.clone(),
            p.member_id.clone(),
        );
        tokio::spawn(async move {
            while let Some((event, env)) = hook_rx.recv().await {
                let Some(script) = hooks::hook(ext.as_deref(), event) else {
                    continue;
                };
                if let Err(reason) = hooks::run(&script, event, &env, &app_dir).await {
                    tracing::error!(%member, %reason, "hook failed");
                    shipper.note(&format!("[nubo] {reason}"));
                }
            }
        });
    }

    // Stratos' commit-back: the cluster's committer commits what the workload changed in its
    // artifacts and pushes it, every `artifactUpdateInterval` seconds.
    if repository.is_some() && members::commits_back(&p) {
        let every = p
            .parameters
            .get("ARTIFACT_UPDATE_INTERVAL")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map_or(Duration::from_secs(15), Duration::from_secs);
        let (p, app_dir, events, me, shipper, lock) = (
            p.clone(),
            app_dir.clone(),
            events.clone(),
            me.clone(),
            shipper.clone(),
            git_lock.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if !members::am_committer(&p).await {
                    continue;
                }
                let _one = lock.lock().await;
                let result = match artifacts::repository(&p).await {
                    Ok(Some(repo)) => artifacts::commit_back(&app_dir, &repo, &p.member_id).await,
                    Ok(None) => Ok(None),
                    Err(e) => Err(format!("cannot get the member's repository: {e:#}")),
                };
                match result {
                    Ok(None) => {}
                    Ok(Some(commit)) => {
                        tracing::info!(member = %p.member_id, %commit, "changes committed back");
                        publish(
                            &events,
                            Event::InstanceArtifactUpdated {
                                instance: me.clone(),
                                commit: Some(commit),
                                error: None,
                            },
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::error!(member = %p.member_id, error = %e, "commit-back failed");
                        shipper.note(&format!("[nubo] commit-back failed: {e}"));
                        publish(
                            &events,
                            Event::InstanceArtifactUpdated {
                                instance: me.clone(),
                                commit: None,
                                error: Some(e),
                            },
                        )
                        .await;
                    }
                }
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    let mut meter = Meter::new();
    let mut liveness = health::Liveness::default();
    // Unhealthy (since when): taken out of the load balancers at once, reported down (and so
    // replaced) only if it does not recover within the cartridge's unhealthyTimeout.
    let mut unhealthy_since: Option<Instant> = None;
    let unhealthy_timeout = p
        .parameters
        .get("UNHEALTHY_TIMEOUT")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(UNHEALTHY_TIMEOUT, Duration::from_secs);
    // Artifact updates run beside the loop (health keeps being reported); one at a time, and
    // one more when asked during one.
    let (updated_tx, mut updated_rx) = tokio::sync::mpsc::channel::<Result<String, String>>(1);
    let (mut updating, mut again) = (false, false);
    let start_update = |tx: tokio::sync::mpsc::Sender<Result<String, String>>| {
        let (p, app_dir, env, ext, lock) = (
            p.clone(),
            app_dir.clone(),
            hook_env.clone(),
            extensions.clone(),
            git_lock.clone(),
        );
        tokio::spawn(async move {
            let _one = lock.lock().await;
            let _ = tx
                .send(update_artifacts(&p, &app_dir, env, ext.as_deref()).await)
                .await;
        });
    };
    loop {
        tokio::select! {
            Some(_) = async {
                match view_sub.as_mut() {
                    Some(sub) => sub.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if fetching {
                    refetch = true;
                } else {
                    fetching = true;
                    fetch_members(listed_tx.clone());
                }
            }
            _ = resync.tick(), if view_sub.is_some() && !fetching => {
                fetching = true;
                fetch_members(listed_tx.clone());
            }
            Some(listed) = listed_rx.recv() => {
                fetching = false;
                match listed {
                    Ok(rows) => {
                        for (event, values) in view.update(rows) {
                            if !member_hooks.contains(&event) {
                                continue;
                            }
                            let mut env = hook_env.clone();
                            env.extend(values);
                            if hook_tx.try_send((event, env)).is_err() {
                                tracing::error!(member = %p.member_id, event, "hooks are behind: this one is skipped");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(member = %p.member_id, error = %format!("{e:#}"), "cannot read the application's members"),
                }
                if std::mem::take(&mut refetch) {
                    fetching = true;
                    fetch_members(listed_tx.clone());
                }
            }
            Some(result) = updated_rx.recv() => {
                updating = false;
                let (commit, error) = match result {
                    Ok(c) => {
                        tracing::info!(member = %p.member_id, commit = %c, "artifacts updated");
                        (Some(c), None)
                    }
                    Err(e) => {
                        tracing::error!(member = %p.member_id, error = %e, "artifact update failed");
                        (None, Some(e))
                    }
                };
                publish(&events, Event::InstanceArtifactUpdated { instance: me.clone(), commit, error }).await;
                if std::mem::take(&mut again) {
                    updating = true;
                    start_update(updated_tx.clone());
                }
            }
            ended = workload.wait() => {
                let reason = format!("{ended}; last output: {}", tail(&workdir.join("workload.log")));
                tracing::error!(member = %p.member_id, %reason, "workload ended");
                publish(&events, Event::InstanceFailed { instance: me.clone(), reason }).await;
                workload.clean_up_after_exit().await;
                linger().await;
                return Ok(3);
            }
            Some(e) = notifier.recv() => {
                if let Event::InstanceArtifactUpdate { member_id } = &e {
                    if *member_id == p.member_id {
                        if updating {
                            again = true;
                        } else {
                            updating = true;
                            start_update(updated_tx.clone());
                        }
                    }
                    continue;
                }
                let mine = match &e {
                    Event::InstanceCleanupMember { member_id } => *member_id == p.member_id,
                    Event::InstanceCleanupCluster { cluster_id, cluster_instance_id } => *cluster_id == p.cluster_id && *cluster_instance_id == p.cluster_instance_id,
                    _ => false,
                };
                if mine {
                    publish(&events, Event::InstanceMaintenanceMode(me.clone())).await;
                    // Load balancers drop the member on this event; let them, before the workload goes.
                    tokio::time::sleep(DRAIN_DELAY).await;
                    // Then its requests in flight end: load balancers close their idle
                    // connections to a member they no longer route to, so its open connections
                    // are its requests. Waited for within the drain timeout, less the time the
                    // workload has to stop.
                    drain_connections(&p, stop_grace).await;
                    // The clean hook (Stratos' `clean` extension): a failure is reported in the
                    // member's log; the member goes anyway.
                    if let Some(script) = hooks::hook(extensions.as_deref(), "clean")
                        && let Err(reason) = hooks::run(&script, "clean", &hook_env, &app_dir).await
                    {
                        tracing::error!(member = %p.member_id, %reason, "clean hook failed");
                    }
                    workload.stop(stop_grace).await;
                    publish(&events, Event::InstanceReadyToShutdown(me.clone())).await;
                    tracing::info!(member = %p.member_id, "drained and stopped");
                    linger().await;
                    return Ok(0);
                }
            }
            _ = term.recv() => {
                tracing::info!(member = %p.member_id, "SIGTERM: stopping the workload");
                workload.stop(stop_grace).await;
                return Ok(0);
            }
            _ = health.tick() => {
                // Its use and whether it is stopped (a stopped process, or a paused container,
                // still completes TCP handshakes), in one look a tick.
                let (memory, load, stopped) = workload.sample(&mut meter).await;
                // Alive: its ports open, not stopped, and answering its liveness path when it
                // has one.
                let answers = match liveness_path {
                    Some((path, port)) if !stopped => liveness.record(health::http_ok(port, path).await),
                    _ => true,
                };
                let open = stopped || !answers || ports_open(&p).await;
                let live = !stopped && answers && open;
                match (live, unhealthy_since) {
                    (false, None) => {
                        let reason = if stopped {
                            "its workload is stopped (SIGSTOP)".to_owned()
                        } else if !answers {
                            format!(
                                "its liveness path {} failed {} times in a row",
                                liveness_path.map(|(path, _)| path.as_str()).unwrap_or("?"),
                                health::LIVENESS_FAILURES
                            )
                        } else {
                            "its ports do not accept connections".to_owned()
                        };
                        tracing::warn!(member = %p.member_id, %reason, "unhealthy: taken out of the load balancers");
                        unhealthy_since = Some(Instant::now());
                        publish(&events, Event::InstanceHealth { instance: me.clone(), healthy: false, reason: Some(reason) }).await;
                    }
                    (true, Some(_)) => {
                        tracing::info!(member = %p.member_id, "healthy again: back in the load balancers");
                        unhealthy_since = None;
                        publish(&events, Event::InstanceHealth { instance: me.clone(), healthy: true, reason: None }).await;
                    }
                    _ => {}
                }
                // Down (the platform replaces it) once unhealthy for longer than the timeout.
                let down = unhealthy_since.is_some_and(|t| t.elapsed() >= unhealthy_timeout);
                let stat = MemberHealth { instance: me.clone(), memory_consumption: Some(memory), load_average: Some(load), ports_open: !down, at_ms: nubo_bus::now_ms() };
                publish(&events, Event::MemberHealthStat(stat)).await;
            }
        }
    }
}

/// Fetches the member's repository again and checks out its latest commit, then runs the
/// cartridge's `ArtifactUpdatedEvent` hook (Stratos' values `ARTIFACT_UPDATED_*`, never the
/// password); the commit, or why it failed.
async fn update_artifacts(
    p: &AgentPayload,
    app_dir: &Path,
    mut env: std::collections::BTreeMap<String, String>,
    extensions: Option<&Path>,
) -> Result<String, String> {
    // A multi-tenant member: the tenants' repositories first (a push to one of them is an
    // update of the application's members).
    let tenants = if p.parameters.get("MULTITENANT").map(String::as_str) == Some("true") {
        let served = artifacts::sync_tenants(app_dir, p, true)
            .await
            .map_err(|e| format!("cannot update the tenants' artifacts: {e:#}"))?;
        Some(served.len())
    } else {
        None
    };
    let repo = artifacts::repository(p)
        .await
        .map_err(|e| format!("cannot get the member's repository: {e:#}"))?;
    let repo = match (repo, tenants) {
        (Some(r), _) => r,
        (None, Some(n)) => return Ok(format!("tenants: {n}")),
        (None, None) => return Err("the member has no repository".to_owned()),
    };
    // With commit-back, the cluster's committer pushes what its workload changed first, so that
    // the update does not throw it away.
    if members::commits_back(p) && members::am_committer(p).await {
        artifacts::commit_back(app_dir, &repo, &p.member_id).await?;
    }
    let commit = artifacts::update(app_dir, &repo).await?;
    if let Some(script) = hooks::hook(extensions, "ArtifactUpdatedEvent") {
        for (k, v) in [
            ("ARTIFACT_UPDATED_CLUSTER_ID", p.cluster_id.clone()),
            (
                "ARTIFACT_UPDATED_TENANT_ID",
                p.parameters.get("TENANT_ID").cloned().unwrap_or_default(),
            ),
            ("ARTIFACT_UPDATED_REPO_URL", repo.repo_url.clone()),
            (
                "ARTIFACT_UPDATED_REPO_USERNAME",
                repo.repo_username.clone().unwrap_or_default(),
            ),
            ("ARTIFACT_UPDATED_STATUS", "updated".to_owned()),
            ("ARTIFACT_UPDATED_COMMIT", commit.clone()),
        ] {
            env.insert(k.to_owned(), v);
        }
        hooks::run(&script, "ArtifactUpdatedEvent", &env, app_dir).await?;
    }
    Ok(commit)
}

/// Waits until no TCP connection to the member's ports is open, at most the drain timeout less
/// the workload's termination grace and a margin (the platform terminates the member at the
/// drain timeout).
async fn drain_connections(p: &AgentPayload, stop_grace: Duration) {
    let drain = p
        .parameters
        .get("DRAIN_TIMEOUT")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs);
    let window = drain.saturating_sub(stop_grace + Duration::from_secs(2));
    let ports: Vec<u16> = p
        .ports
        .iter()
        .filter(|x| x.protocol != "udp")
        .map(|x| x.port)
        .collect();
    let started = Instant::now();
    let mut open = health::established(&ports);
    while open > 0 && started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = health::established(&ports);
    }
    if open > 0 {
        tracing::warn!(member = %p.member_id, open, waited_ms = started.elapsed().as_millis() as u64, "connections still open at the end of the drain window: stopping the workload anyway");
    } else {
        tracing::info!(member = %p.member_id, waited_ms = started.elapsed().as_millis() as u64, "drained: no connection left");
    }
}

/// Logs (`what`) and reports the member failed, with `reason`, and lets the report go out: its
/// agent ends after this.
async fn fail(events: &EventBus, me: &InstanceRef, what: &str, reason: String) {
    tracing::error!(member = %me.member_id, %reason, "{what}");
    publish(
        events,
        Event::InstanceFailed {
            instance: me.clone(),
            reason,
        },
    )
    .await;
    linger().await;
}

/// Gives the MQTT connection a moment to send what was published before the process exits.
async fn linger() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Publishes; a failure is logged and counted by the bus (`PublishFailed`).
async fn publish(events: &EventBus, e: Event) {
    let _ = events.publish(&e).await;
}

/// Waits (briefly) until the controller shows this member in the topology, as Stratos' agent does.
async fn wait_for_member(events: &EventBus, topology: &mut nubo_bus::EventStream, member_id: &str) {
    publish(events, Event::CompleteTopologyRequest {}).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let next = tokio::time::timeout_at(deadline, topology.recv()).await;
        let Ok(Some(e)) = next else { return };
        let found = match &e {
            Event::CompleteTopology { topology, .. } => topology
                .member(member_id)
                .is_some_and(|m| m.status != MemberStatus::Created),
            Event::MemberInitialized(c) => c.member.member_id == member_id,
            _ => false,
        };
        if found {
            return;
        }
    }
}

/// Waits (briefly: a daemonized child may keep the pipes open) until the workload's output so
/// far is in its log, before the log's last lines are reported.
async fn flush(output: &mut [tokio::task::JoinHandle<()>]) {
    for h in output.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_millis(500), h).await;
    }
}

/// The member's workload: a process group on this host (`local`), or a container of an engine
/// (`docker`, when the payload's `NUBO_RUNTIME` says so).
enum Work {
    Process {
        child: Child,
        pgid: i32,
        output: Vec<tokio::task::JoinHandle<()>>,
        ended: Option<String>,
    },
    Container(container::Container),
}

impl Work {
    /// Starts it, its output going to `workload.log` (bounded) and to the platform.
    async fn start(
        p: &AgentPayload,
        workdir: &Path,
        shipper: Option<logs::Shipper>,
    ) -> anyhow::Result<Work> {
        let log = Arc::new(Mutex::new(logs::RotatingLog::open(
            &workdir.join("workload.log"),
            logs::WORKLOAD_LOG_MAX,
        )?));
        if p.parameters.get("NUBO_RUNTIME").map(String::as_str) == Some("docker") {
            let c = container::Container::start(p, &workdir.join("app"), log, shipper).await?;
            tracing::info!(member = %p.member_id, image = %p.command, "container started");
            return Ok(Work::Container(c));
        }
        let (child, output) = start_workload(p, workdir, log, shipper)?;
        let pgid = child.id().map(|x| x as i32).unwrap_or(0);
        tracing::info!(member = %p.member_id, pid = pgid, command = %p.command, "workload started");
        Ok(Work::Process {
            child,
            pgid,
            output,
            ended: None,
        })
    }

    /// Why it ended, if it did (without waiting).
    async fn exited(&mut self) -> Option<String> {
        match self {
            Work::Process {
                child,
                output,
                ended,
                ..
            } => {
                if ended.is_none()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    flush(output).await;
                    *ended = Some(format!("the workload exited ({status})"));
                }
                ended.clone()
            }
            Work::Container(c) => c.exited(),
        }
    }

    /// Waits for its end; why it ended.
    async fn wait(&mut self) -> String {
        match self {
            Work::Process { child, output, .. } => {
                let status = child.wait().await;
                flush(output).await;
                match status {
                    Ok(s) => format!("the workload exited ({s})"),
                    Err(e) => format!("lost the workload: {e}"),
                }
            }
            Work::Container(c) => c.wait().await,
        }
    }

    /// Stops it: SIGTERM (then SIGCONT), SIGKILL after `grace`; a container is removed.
    async fn stop(&mut self, grace: Duration) {
        match self {
            Work::Process { child, pgid, .. } => stop_workload(child, *pgid, grace).await,
            Work::Container(c) => c.stop(grace).await,
        }
    }

    /// What it left once it ended: the rest of its process group, or its container.
    async fn clean_up_after_exit(&self) {
        match self {
            Work::Process { pgid, .. } => proc::kill_session(*pgid, libc::SIGKILL),
            Work::Container(c) => c.remove().await,
        }
    }

    /// Memory, load and whether it is stopped, now.
    async fn sample(&mut self, meter: &mut Meter) -> (f64, f64, bool) {
        match self {
            Work::Process { pgid, .. } => {
                // One scan of /proc, for the meter and the stopped check.
                let pids = if *pgid > 0 {
                    proc::group_members(*pgid)
                } else {
                    Vec::new()
                };
                let (memory, load) = meter.sample(&pids);
                (memory, load, health::stopped(&pids))
            }
            Work::Container(c) => c.sample().await,
        }
    }
}

/// Starts the workload as a process; returns it and the tasks writing its output to `log`.
fn start_workload(
    p: &AgentPayload,
    workdir: &Path,
    log: Arc<Mutex<logs::RotatingLog>>,
    shipper: Option<logs::Shipper>,
) -> anyhow::Result<(Child, Vec<tokio::task::JoinHandle<()>>)> {
    let mut cmd = tokio::process::Command::new("sh");
    // An explicit environment: where programs are, the member's ports and parameters, and
    // nothing of the agent's own.
    cmd.env_clear()
        .envs(nubo_iaas::base_environment())
        .env("HOME", workdir.join("app"));
    cmd.arg("-c")
        .arg(&p.command)
        .current_dir(workdir.join("app"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &p.parameters {
        cmd.env(k, v);
    }
    if let Some(first) = p.ports.first() {
        cmd.env("PORT", first.port.to_string());
    }
    for (i, port) in p.ports.iter().enumerate() {
        cmd.env(format!("PORT_{i}"), port.port.to_string());
        cmd.env(port_env_name(&port.name), port.port.to_string());
    }
    cmd.env("NUBO_MEMBER_ID", &p.member_id)
        .env("HOST", "127.0.0.1");
    // Its own process group, so that it (with its children) can be stopped as one.
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the workload `{}`", p.command))?;
    let mut output = Vec::new();
    if let Some(out) = child.stdout.take() {
        output.push(tokio::spawn(logs::pump(
            out,
            log.clone(),
            LogStream::Stdout,
            shipper.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        output.push(tokio::spawn(logs::pump(
            err,
            log,
            LogStream::Stderr,
            shipper,
        )));
    }
    Ok((child, output))
}

async fn stop_workload(child: &mut Child, pgid: i32, grace: Duration) {
    if pgid > 0 {
        // SAFETY: plain kill(2) on the workload's process group. A stopped process acts on
        // SIGTERM only once continued (as systemd does, SIGCONT follows).
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
            libc::kill(-pgid, libc::SIGCONT);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(
            pid = pgid,
            "the workload did not stop within the grace period: killing it"
        );
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait().await;
    }
    // Children that left the group are still in our session.
    let _ = pgid;
}

async fn ports_open(p: &AgentPayload) -> bool {
    for port in &p.ports {
        if port.protocol == "udp" {
            continue;
        }
        let ok = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", port.port)),
        )
        .await;
        if !matches!(ok, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let out: Vec<&str> = lines.into_iter().rev().collect();
    if out.is_empty() {
        "(none)".into()
    } else {
        out.join(" | ")
    }
}

/// Measures the workload's process group: memory as a percentage of the host's, CPU as a
/// percentage of the cores.
struct Meter {
    last: Option<(Instant, u64)>,
    memory: u64,
    cores: f64,
}

impl Meter {
    fn new() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        Meter {
            last: None,
            memory: proc::host_memory(),
            cores,
        }
    }

    /// Memory and load of the workload's processes `pids`.
    fn sample(&mut self, pids: &[i32]) -> (f64, f64) {
        let (mut cpu, mut rss) = (0u64, 0u64);
        for &pid in pids {
            if let Some((c, r)) = proc::usage(pid) {
                cpu += c;
                rss += r;
            }
        }
        let now = Instant::now();
        let load = match self.last {
            Some((t, prev)) => {
                let secs = now.duration_since(t).as_secs_f64().max(1e-3);
                let used = cpu.saturating_sub(prev) as f64 / proc::ticks_per_second() as f64;
                (used / secs / self.cores * 100.0).clamp(0.0, 100.0)
            }
            None => 0.0,
        };
        self.last = Some((now, cpu));
        (rss as f64 / self.memory as f64 * 100.0, load)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn port_names_become_environment_names() {
        assert_eq!(super::port_env_name("http-80"), "PORT_HTTP_80");
        assert_eq!(super::port_env_name("admin"), "PORT_ADMIN");
        assert_eq!(super::port_env_name(""), "PORT__");
    }
}
