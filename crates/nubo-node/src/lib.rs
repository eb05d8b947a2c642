//! The node supervisor (the role of Cloud Foundry's DEA): the `local` IaaS provider. Each member
//! runs as `nubo agent` in its own working directory and its own session; the supervisor watches
//! it, stops it, reports its exit on the bus, and keeps a record of it on disk so that, after a
//! restart, it re-adopts running members (watching processes that are no longer its children)
//! instead of starting duplicates. Whatever is left of a member's session when its agent exits
//! is killed, so no workload lingers holding the member's ports.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nubo_bus::EventBus;
use nubo_events::RunAs;
use nubo_events::{Event, MemberPort};
use nubo_iaas::{AgentPayload, AgentRecord, IaasError, MemberSpec, Provider, StartedMember, proc};
use serde::{Deserialize, Serialize};

pub mod remote;

pub use remote::NodeProvider;

/// The on-disk record of a running member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    member_id: String,
    pid: i32,
    start_time: u64,
    ports: Vec<MemberPort>,
}

struct Tracked {
    pid: i32,
    start_time: u64,
}

/// How the supervisor starts agents.
#[derive(Debug, Clone)]
pub struct AgentCommand {
    /// The executable (the `nubo` binary).
    pub program: PathBuf,
    /// Arguments before `--payload FILE` (`["agent"]`).
    pub args: Vec<String>,
}

/// The node supervisor.
pub struct NodeSupervisor {
    dir: PathBuf,
    agent: AgentCommand,
    events: EventBus,
    members: Arc<Mutex<HashMap<String, Tracked>>>,
    /// Address members listen on.
    host: String,
    /// Choosing a member's user and making its directory, one member at a time.
    run_as_lock: tokio::sync::Mutex<()>,
}

fn record_path(dir: &Path, member_id: &str) -> PathBuf {
    dir.join(member_id).join("supervisor.json")
}

/// The running agent of a member's directory: the supervisor's record, or, when the supervisor
/// died before writing it (or it names a process that is gone), the agent's own with the ports of
/// its payload. `None` when no agent runs there.
fn running_record(member_dir: &Path) -> Option<Record> {
    let alive = |pid: i32, start: u64| proc::start_time(pid) == Some(start);
    let sup: Option<Record> = read_json(&member_dir.join("supervisor.json"));
    if let Some(r) = &sup
        && alive(r.pid, r.start_time)
    {
        return sup;
    }
    let agent: AgentRecord = read_json(&member_dir.join("agent.json"))
        .filter(|a: &AgentRecord| alive(a.pid, a.start_time))?;
    let payload: AgentPayload = read_json(&member_dir.join("payload.json"))?;
    Some(Record {
        member_id: payload.member_id,
        pid: agent.pid,
        start_time: agent.start_time,
        ports: payload.ports,
    })
}

/// A JSON file, when it exists and reads as a `T`.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes a file only its owner reads.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Writes the supervisor's record of a running member (atomically).
fn write_record(dir: &Path, rec: &Record) {
    let Ok(text) = serde_json::to_vec(rec) else {
        return;
    };
    let path = record_path(dir, &rec.member_id);
    let tmp = path.with_extension("json.tmp");
    if write_private(&tmp, &text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// A user by name (from `/etc/passwd`) or as `uid[:gid]`: (uid, gid).
fn user_named(user: &str) -> Option<(u32, u32)> {
    if let Some((u, g)) = user.split_once(':')
        && let (Ok(u), Ok(g)) = (u.parse(), g.parse())
    {
        return Some((u, g));
    }
    if let Ok(u) = user.parse::<u32>() {
        return Some((u, u));
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// The descriptor the agent program is executed through when a member runs as its own user.
const AGENT_FD: i32 = 100;

/// How many ended members' last logs are kept (the oldest go first).
pub const ENDED_KEPT: usize = 200;
/// How long an ended member's last logs are kept.
pub const ENDED_FOR: Duration = Duration::from_secs(24 * 3600);

/// Where the last logs of ended members are kept: `ended/<member>/` beside the members' directory.
pub fn ended_dir(members: &Path) -> PathBuf {
    members
        .parent()
        .map(|p| p.join("ended"))
        .unwrap_or_else(|| members.join(".ended"))
}

/// An ended member's directory goes: its logs move to [`ended_dir`] (kept for [`ENDED_FOR`], the
/// [`ENDED_KEPT`] most recent), the rest (its payload with its key, its files) is removed.
/// Where the payloads of container members wait until their container is removed: `removals/`
/// beside the members' directory (kept across a restart of the node supervisor).
fn removals_dir(members: &Path) -> PathBuf {
    members
        .parent()
        .map(|p| p.join("removals"))
        .unwrap_or_else(|| members.join(".removals"))
}

/// When a container member's agent has ended: its payload is kept in [`removals_dir`] (before
/// the member's directory is retired) for [`remove_until_gone`]. `None` for a process member.
fn keep_for_removal(dir: &Path, member_id: &str) -> Option<PathBuf> {
    let payload = dir.join(member_id).join("payload.json");
    let container = read_json::<AgentPayload>(&payload)
        .is_some_and(|p| p.parameters.get("NUBO_RUNTIME").map(String::as_str) == Some("docker"));
    if !container {
        return None;
    }
    let to = removals_dir(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&to)
        .ok()?;
    let file = to.join(format!("{member_id}.json"));
    write_private(&file, &std::fs::read(&payload).ok()?).ok()?;
    Some(file)
}

/// How long a container's removal is retried before it waits for the next start of the node
/// supervisor (its engine may be down for longer).
const REMOVAL_FOR: Duration = Duration::from_secs(3600);

/// Removes the container a member left, whatever ended its agent (killed, or its engine stopped
/// answering), through the agent program (`agent --remove-container`): tried again, 1 s then up
/// to every 30 s, until the engine says it is gone; then its kept payload goes. A member leaves
/// no container, even on an engine that was down when it ended.
async fn remove_until_gone(agent: AgentCommand, file: PathBuf) {
    let deadline = tokio::time::Instant::now() + REMOVAL_FOR;
    let mut pause = Duration::from_secs(1);
    loop {
        if remove_container(&agent, &file).await {
            let _ = std::fs::remove_file(&file);
            return;
        }
        if tokio::time::Instant::now() + pause > deadline {
            tracing::warn!(payload = %file.display(), "a member's container could not be removed for an hour: tried again at the node's next start");
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// One attempt (within 30 s): whether the container is gone.
async fn remove_container(agent: &AgentCommand, payload: &Path) -> bool {
    let mut cmd = tokio::process::Command::new(&agent.program);
    cmd.args(&agent.args)
        .arg("--remove-container")
        .arg("--payload")
        .arg(payload)
        .env_clear()
        .envs(nubo_iaas::base_environment())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(payload = %payload.display(), "the ended member's container is gone");
            true
        }
        Ok(Ok(out)) => {
            tracing::warn!(
                payload = %payload.display(),
                error = %String::from_utf8_lossy(&out.stderr).trim(),
                "cannot remove an ended member's container yet"
            );
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot run the agent to remove a container");
            false
        }
        Err(_) => {
            tracing::warn!("removing an ended member's container took more than 30 s");
            false
        }
    }
}

fn retire(dir: &Path, member_id: &str) {
    let from = dir.join(member_id);
    if !from.is_dir() {
        return;
    }
    let ended = ended_dir(dir);
    let to = ended.join(member_id);
    let moved = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&to)
        .is_ok();
    if moved {
        for f in ["agent.log", "workload.log", "workload.log.1"] {
            let _ = std::fs::rename(from.join(f), to.join(f));
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&from) {
        tracing::warn!(member = %member_id, error = %e, "cannot remove an ended member's directory");
    }
    prune_ended(&ended);
}

/// Drops the ended members' logs beyond what is kept.
fn prune_ended(ended: &Path) {
    let Ok(entries) = std::fs::read_dir(ended) else {
        return;
    };
    let mut all: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.0));
    let now = std::time::SystemTime::now();
    for (i, (at, path)) in all.iter().enumerate() {
        let old = now.duration_since(*at).is_ok_and(|d| d > ENDED_FOR);
        if i >= ENDED_KEPT || old {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Every process recorded in a member's directory (the supervisor's record and the agent's own),
/// as (pid, start time).
fn recorded_processes(member_dir: &Path) -> Vec<(i32, u64)> {
    let sup: Option<Record> = read_json(&member_dir.join("supervisor.json"));
    let agent: Option<AgentRecord> = read_json(&member_dir.join("agent.json"));
    let mut out: Vec<(i32, u64)> = sup.map(|r| (r.pid, r.start_time)).into_iter().collect();
    if let Some(a) = agent
        && !out.contains(&(a.pid, a.start_time))
    {
        out.push((a.pid, a.start_time));
    }
    out
}

impl NodeSupervisor {
    /// A supervisor keeping its members under `dir`; re-adopts the members recorded there whose
    /// agents still run, and cleans up after the others.
    pub fn new(dir: PathBuf, agent: AgentCommand, events: EventBus) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let sup = Arc::new(NodeSupervisor {
            dir: dir.clone(),
            agent,
            events,
            members: Arc::new(Mutex::new(HashMap::new())),
            host: "127.0.0.1".into(),
            run_as_lock: tokio::sync::Mutex::new(()),
        });
        let mut gone = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let member_dir = entry?.path();
            let path = member_dir.join("supervisor.json");
            if let Some(rec) = running_record(&member_dir) {
                tracing::info!(member = %rec.member_id, pid = rec.pid, "re-adopted a running member");
                write_record(&dir, &rec);
                sup.track(rec.member_id.clone(), rec.pid, rec.start_time);
                sup.watch_foreign(rec.member_id, rec.pid, rec.start_time);
                continue;
            }
            let Some(rec) = read_json::<Record>(&path) else {
                continue;
            };
            tracing::info!(member = %rec.member_id, pid = rec.pid, "a recorded member is no longer running: cleaning up");
            proc::signal_recorded_session(rec.pid, rec.start_time, libc::SIGKILL);
            let _ = std::fs::remove_file(&path);
            keep_for_removal(&dir, &rec.member_id);
            retire(&dir, &rec.member_id);
            gone.push(rec.member_id);
        }
        // The containers of members that ended while it was down, or whose engine did not
        // answer before: removed now (tried until their engine answers).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            for entry in std::fs::read_dir(removals_dir(&dir))
                .into_iter()
                .flatten()
                .flatten()
            {
                let file = entry.path();
                if file.extension().is_some_and(|e| e == "json") {
                    rt.spawn(remove_until_gone(sup.agent.clone(), file));
                }
            }
        }
        // Said on the bus, for a controller in another process that cannot see this directory.
        if let (false, Ok(rt)) = (gone.is_empty(), tokio::runtime::Handle::try_current()) {
            let events = sup.events.clone();
            rt.spawn(async move {
                for member_id in gone {
                    let _ = events
                        .publish(&Event::MemberProcessExited {
                            member_id,
                            code: None,
                            signal: None,
                            reason: "not running when the node supervisor started".into(),
                        })
                        .await;
                }
            });
        }
        Ok(sup)
    }

    fn track(&self, member_id: String, pid: i32, start_time: u64) {
        if let Ok(mut m) = self.members.lock() {
            m.insert(member_id, Tracked { pid, start_time });
        }
    }

    fn exited(
        members: &Mutex<HashMap<String, Tracked>>,
        dir: &Path,
        member_id: &str,
        pid: i32,
        start_time: u64,
    ) {
        // Whatever the agent left in its session goes with it.
        proc::signal_recorded_session(pid, start_time, libc::SIGKILL);
        if let Ok(mut m) = members.lock() {
            m.remove(member_id);
        }
        retire(dir, member_id);
    }

    /// Watches an adopted member (not our child) by polling `/proc`.
    fn watch_foreign(&self, member_id: String, pid: i32, start_time: u64) {
        let members = self.members.clone();
        let dir = self.dir.clone();
        let events = self.events.clone();
        let agent = self.agent.clone();
        tokio::spawn(async move {
            while proc::start_time(pid) == Some(start_time) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Some(file) = keep_for_removal(&dir, &member_id) {
                tokio::spawn(remove_until_gone(agent, file));
            }
            Self::exited(&members, &dir, &member_id, pid, start_time);
            let e = Event::MemberProcessExited {
                member_id,
                code: None,
                signal: None,
                reason: "the agent exited".into(),
            };
            let _ = events.publish(&e).await;
        });
    }

    /// The (uid, gid) a member runs as. Needs the supervisor to run as root. A uid range gives
    /// the lowest uid no member directory of this node belongs to.
    fn user_for(&self, run_as: &RunAs) -> Result<(u32, u32), IaasError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(IaasError::Failed(
                "the partition's runAsUser / runAsUidRange needs the node supervisor to run as root".into(),
            ));
        }
        match run_as {
            RunAs::User(u) => user_named(u).ok_or_else(|| {
                IaasError::Failed(format!(
                    "runAsUser `{u}`: no such user (a name from /etc/passwd, or uid[:gid])"
                ))
            }),
            RunAs::UidRange(a, b) => {
                use std::os::unix::fs::MetadataExt;
                let used: std::collections::BTreeSet<u32> = std::fs::read_dir(&self.dir)
                    .map(|d| {
                        d.flatten()
                            .filter_map(|e| e.metadata().ok().map(|m| m.uid()))
                            .collect()
                    })
                    .unwrap_or_default();
                (*a..=*b)
                    .find(|u| *u != 0 && !used.contains(u))
                    .map(|u| (u, u))
                    .ok_or_else(|| {
                        IaasError::Failed(format!(
                            "every uid of runAsUidRange {a}-{b} is in use on this node: widen the range"
                        ))
                    })
            }
        }
    }

    /// Lets members' users reach their own directories: the members' directory and the data
    /// directory above it become traversable by all (`--x`), never listable or readable.
    fn traversable(&self) -> std::io::Result<()> {
        for d in [Some(self.dir.as_path()), self.dir.parent()]
            .into_iter()
            .flatten()
        {
            let mode = std::fs::metadata(d)?.permissions().mode();
            if mode & 0o011 != 0o011 {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011))?;
            }
        }
        Ok(())
    }

    fn allocate_ports(&self, req: &MemberSpec) -> Result<Vec<MemberPort>, IaasError> {
        let mut out = Vec::new();
        let mut held = Vec::new();
        for p in &req.ports {
            let l = std::net::TcpListener::bind((self.host.as_str(), 0))
                .map_err(|e| IaasError::Failed(format!("cannot find a free port: {e}")))?;
            let port = l
                .local_addr()
                .map_err(|e| IaasError::Failed(e.to_string()))?
                .port();
            held.push(l);
            out.push(MemberPort::of(p, port));
        }
        Ok(out)
    }
}

#[async_trait]
impl Provider for NodeSupervisor {
    async fn start(&self, req: MemberSpec) -> Result<StartedMember, IaasError> {
        let m = &req.member;
        if req.image.trim().is_empty() {
            return Err(IaasError::Failed(
                "the cartridge's `local` iaasProvider has no imageId (the command line to run)"
                    .into(),
            ));
        }
        // An agent of this member may already run (started for a supervisor that died before
        // recording it): adopt it rather than start a second.
        if let Some(rec) = running_record(&self.dir.join(&m.member_id)) {
            tracing::warn!(member = %m.member_id, pid = rec.pid, "an agent of this member already runs: adopting it");
            write_record(&self.dir, &rec);
            self.track(rec.member_id.clone(), rec.pid, rec.start_time);
            self.watch_foreign(rec.member_id.clone(), rec.pid, rec.start_time);
            return Ok(StartedMember {
                ip: self.host.clone(),
                ports: rec.ports,
            });
        }
        let ports = self.allocate_ports(&req)?;
        let workdir = self.dir.join(&m.member_id);
        let fail = |what: &str, e: std::io::Error| {
            IaasError::Failed(format!("{what} {}: {e}", workdir.display()))
        };
        // Who it runs as is chosen, and its directory made, under one lock: two members of a
        // uid range never get the same uid.
        let user = {
            let _one_at_a_time = self.run_as_lock.lock().await;
            let user = match &req.run_as {
                Some(r) => Some(self.user_for(r)?),
                None => None,
            };
            // The member's directory is its own: no other member (nor any other user) reads it.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(workdir.join("app"))
                .map_err(|e| fail("cannot create", e))?;
            std::fs::set_permissions(&workdir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| fail("cannot make private", e))?;
            if let Some((uid, gid)) = user {
                for d in [workdir.clone(), workdir.join("app")] {
                    std::os::unix::fs::chown(&d, Some(uid), Some(gid))
                        .map_err(|e| fail("cannot give to its user", e))?;
                }
                self.traversable()
                    .map_err(|e| fail("cannot open the way to", e))?;
            }
            user
        };
        let mut payload = AgentPayload::new(&req, ports.clone());
        payload.bus_key = self.events.member_key(&m.member_id).map(|k| k.to_hex());
        // Its token for the metadata service (Stratos' `TOKEN`), when the platform offers one.
        if payload.parameters.contains_key("METADATA_SERVICE_URL")
            && let Some(token) = self.events.member_token(&m.member_id)
        {
            payload.parameters.insert("TOKEN".to_owned(), token);
        }
        let payload_file = workdir.join("payload.json");
        let text =
            serde_json::to_vec_pretty(&payload).map_err(|e| IaasError::Failed(e.to_string()))?;
        write_private(&payload_file, &text).map_err(|e| fail("cannot write the payload in", e))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(workdir.join("agent.log"))
            .map_err(|e| fail("cannot open the agent log in", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| fail("cannot open the agent log in", e))?;
        if let Some((uid, gid)) = user {
            for f in [payload_file.clone(), workdir.join("agent.log")] {
                std::os::unix::fs::chown(&f, Some(uid), Some(gid))
                    .map_err(|e| fail("cannot give to its user", e))?;
            }
        }
        // A member's user may not reach the agent program's directory (a build under /root):
        // it is executed through a descriptor opened here, as `/proc/self/fd/N` in the child.
        let program_file = match user {
            Some(_) => Some(std::fs::File::open(&self.agent.program).map_err(|e| {
                IaasError::Failed(format!(
                    "cannot open the agent {}: {e}",
                    self.agent.program.display()
                ))
            })?),
            None => None,
        };
        let program = match &program_file {
            Some(_) => PathBuf::from(format!("/proc/self/fd/{AGENT_FD}")),
            None => self.agent.program.clone(),
        };
        let program_fd = program_file.as_ref().map(|f| {
            use std::os::fd::AsRawFd;
            f.as_raw_fd()
        });
        let mut cmd = tokio::process::Command::new(&program);
        // Nothing of the platform's environment (its secrets and settings) reaches the agent.
        cmd.env_clear()
            .envs(nubo_iaas::base_environment())
            .env("HOME", &workdir);
        for k in ["NUBO_AGENT_LOG", "NUBO_LOG_FORMAT"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        if let Some((uid, gid)) = user {
            // The agent and its workload run as the member's user (supplementary groups
            // dropped): the store, the platform's files and other members' are out of reach.
            cmd.uid(uid).gid(gid);
        }
        cmd.args(&self.agent.args)
            .arg("--payload")
            .arg(&payload_file)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false);
        // SAFETY: setsid is async-signal-safe; the child gets its own session (and process group),
        // so that stopping the server never stops it, and its whole session can be cleaned up.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 is async-signal-safe, and the copy is not closed at exec.
                if let Some(fd) = program_fd
                    && libc::dup2(fd, AGENT_FD) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        drop(program_file);
        let mut child = spawned.map_err(|e| {
            IaasError::Failed(format!(
                "cannot start the agent {}: {e}",
                self.agent.program.display()
            ))
        })?;
        let pid = child
            .id()
            .map(|p| p as i32)
            .ok_or_else(|| IaasError::Failed("the agent exited at once".into()))?;
        let start_time = proc::start_time(pid).unwrap_or(0);
        let rec = Record {
            member_id: m.member_id.clone(),
            pid,
            start_time,
            ports: ports.clone(),
        };
        write_record(&self.dir, &rec);
        self.track(m.member_id.clone(), pid, start_time);
        tracing::info!(member = %m.member_id, pid, ports = ?ports.iter().map(|p| p.port).collect::<Vec<_>>(), "member started");
        let members = self.members.clone();
        let dir = self.dir.clone();
        let events = self.events.clone();
        let member_id = m.member_id.clone();
        let agent = self.agent.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Its container goes too, whatever ended the agent (killed, or its engine lost).
            if let Some(file) = keep_for_removal(&dir, &member_id) {
                tokio::spawn(remove_until_gone(agent, file));
            }
            Self::exited(&members, &dir, &member_id, pid, start_time);
            use std::os::unix::process::ExitStatusExt;
            let (code, signal) = match &status {
                Ok(s) => (s.code(), s.signal()),
                Err(_) => (None, None),
            };
            let reason = match (code, signal) {
                (Some(0), _) => "the agent exited".to_owned(),
                (Some(c), _) => format!(
                    "the agent exited with code {c}; see {}",
                    ended_dir(&dir).join(&member_id).join("agent.log").display()
                ),
                (None, Some(s)) => format!("the agent was killed by signal {s}"),
                _ => "the agent exited".to_owned(),
            };
            tracing::info!(member = %member_id, ?code, ?signal, "member exited");
            let _ = events
                .publish(&Event::MemberProcessExited {
                    member_id,
                    code,
                    signal,
                    reason,
                })
                .await;
        });
        Ok(StartedMember {
            ip: self.host.clone(),
            ports,
        })
    }

    async fn terminate(&self, member_id: &str) -> Result<(), IaasError> {
        let (pid, start_time) = self
            .members
            .lock()
            .ok()
            .and_then(|m| m.get(member_id).map(|t| (t.pid, t.start_time)))
            .ok_or_else(|| IaasError::NotFound(member_id.to_owned()))?;
        // The agent stops its workload on SIGTERM, giving it its termination timeout; anything
        // still there 5 s after that is killed.
        let grace = read_json::<AgentPayload>(&self.dir.join(member_id).join("payload.json"))
            .and_then(|p| p.parameters.get("TERMINATION_TIMEOUT")?.parse::<u64>().ok())
            .unwrap_or(10);
        proc::signal_recorded(pid, start_time, libc::SIGTERM);
        let members = self.members.clone();
        let id = member_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(grace + 5)).await;
            let still = members
                .lock()
                .map(|m| m.get(&id).is_some_and(|t| t.pid == pid))
                .unwrap_or(false);
            if still {
                tracing::warn!(member = %id, pid, after_s = grace + 5, "the agent did not stop in time: killing its session");
                proc::signal_recorded_session(pid, start_time, libc::SIGKILL);
            }
        });
        Ok(())
    }

    async fn running(&self) -> Result<Vec<String>, IaasError> {
        self.members
            .lock()
            .map(|m| m.keys().cloned().collect())
            .map_err(|_| IaasError::Failed("the node supervisor's state is poisoned".into()))
    }
}

/// How often a node served on the bus publishes its inventory.
pub const INVENTORY_INTERVAL: Duration = Duration::from_secs(2);

/// Members a node starts at once (each a process to spawn); the others wait their turn.
pub const NODE_STARTS_AT_ONCE: usize = 32;

/// Serves the supervisor on the bus as node `node` (`nubo node`): starts and terminates members
/// on the controller's `NodeStartMember` / `NodeTerminateMember`, answers with
/// `NodeMemberStarted` / `NodeMemberStartFailed`, and publishes its `NodeInventory` every
/// [`INVENTORY_INTERVAL`] and when asked. The members stay this process's: a controller that
/// dies orphans nothing, and a new one finds them in the inventory.
pub async fn serve(
    sup: Arc<NodeSupervisor>,
    events: EventBus,
    node: String,
) -> Result<(), nubo_bus::BusError> {
    let mut commands = events.subscribe(nubo_events::Category::Node).await?;
    let inventory = |sup: &NodeSupervisor, node: &str| Event::NodeInventory {
        node: node.to_owned(),
        members: sup
            .members
            .lock()
            .map(|m| {
                let mut v: Vec<String> = m.keys().cloned().collect();
                v.sort();
                v
            })
            .unwrap_or_default(),
        at_ms: nubo_bus::now_ms(),
    };
    let _ = events.publish(&inventory(&sup, &node)).await;
    // The newest controller-lease token seen, kept across restarts: commands of an older leader
    // are refused.
    let fence_file = sup.dir.join(".fence");
    let mut newest: u64 = std::fs::read_to_string(&fence_file)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let mut admit = |fence: Option<u64>| -> bool {
        match fence {
            None => true,
            Some(t) if t < newest => false,
            Some(t) => {
                if t > newest {
                    newest = t;
                    let _ = std::fs::write(&fence_file, t.to_string());
                }
                true
            }
        }
    };
    let starting = Arc::new(tokio::sync::Semaphore::new(NODE_STARTS_AT_ONCE));
    // The first inventory is the one above; the next ones every INVENTORY_INTERVAL.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + INVENTORY_INTERVAL,
        INVENTORY_INTERVAL,
    );
    loop {
        tokio::select! {
            e = commands.recv() => {
                let Some(e) = e else { return Ok(()) };
                match e {
                    Event::NodeStartMember { node: n, member, fence, .. } if n == node && !admit(fence) => {
                        tracing::warn!(member = %member.member_id, ?fence, "a start from an older controller: refused");
                        let _ = events.publish(&Event::NodeMemberStartFailed {
                            node: node.clone(),
                            member_id: member.member_id,
                            reason: "refused: a newer controller leads (fenced)".into(),
                        }).await;
                    }
                    Event::NodeTerminateMember { node: n, member_id, fence } if n == node && !admit(fence) => {
                        tracing::warn!(member = %member_id, ?fence, "a terminate from an older controller: refused");
                    }
                    Event::NodeStartMember { node: n, member, image, ports, payload, bus_url, run_as, .. } if n == node => {
                        let sup = sup.clone();
                        let events = events.clone();
                        let node = node.clone();
                        let starting = starting.clone();
                        tokio::spawn(async move {
                            // At most NODE_STARTS_AT_ONCE members start at a time on a node.
                            let Ok(_permit) = starting.acquire_owned().await else { return };
                            let member_id = member.member_id.clone();
                            let req = MemberSpec { member, image, ports, bus_url, parameters: payload, run_as };
                            let answer = match sup.start(req).await {
                                Ok(s) => Event::NodeMemberStarted { node, member_id, ip: s.ip, ports: s.ports },
                                Err(e) => Event::NodeMemberStartFailed { node, member_id, reason: e.to_string() },
                            };
                            let _ = events.publish(&answer).await;
                        });
                    }
                    Event::NodeTerminateMember { node: n, member_id, .. } if n == node => {
                        if let Err(e) = sup.terminate(&member_id).await {
                            tracing::info!(member = %member_id, error = %e, "terminate: not running here");
                            // Not here: say so, as an exit, so that the controller stops waiting.
                            let _ = events.publish(&Event::MemberProcessExited {
                                member_id,
                                code: None,
                                signal: None,
                                reason: format!("not running on node {node}"),
                            }).await;
                        }
                    }
                    Event::NodeInventoryRequest {} => {
                        let _ = events.publish(&inventory(&sup, &node)).await;
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let _ = events.publish(&inventory(&sup, &node)).await;
            }
        }
    }
}

fn live_records(dir: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| running_record(&e.path()))
        .collect()
}

/// Asks every member recorded under `dir` to stop (SIGTERM to its session); returns how many.
pub fn stop_all(dir: &Path) -> usize {
    let live = live_records(dir);
    for r in &live {
        proc::signal_recorded_session(r.pid, r.start_time, libc::SIGTERM);
    }
    live.len()
}

/// How many members recorded under `dir` still run.
pub fn stop_all_pending(dir: &Path) -> usize {
    live_records(dir).len()
}

/// Kills every member recorded under `dir` (SIGKILL to its session), and what its session left.
pub fn kill_all(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        for (pid, start_time) in recorded_processes(&e.path()) {
            proc::signal_recorded_session(pid, start_time, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use nubo_bus::{EventBus, MemoryBus};
    use nubo_events::{Category, Event, Member, MemberStatus};

    use super::*;

    fn member(id: &str) -> Member {
        Member {
            member_id: id.into(),
            cluster_id: "app.web.web.domain".into(),
            cluster_instance_id: "app-1".into(),
            service_name: "web".into(),
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
        }
    }

    /// The next answer that is not an inventory.
    async fn next_answer(answers: &mut nubo_bus::EventStream) -> Event {
        let fut = async {
            loop {
                match answers.recv().await {
                    Some(Event::NodeInventory { .. }) => continue,
                    Some(other) => return other,
                    None => panic!("the bus closed"),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("an answer within 5 s")
    }

    /// Waits for a node's inventory: it is serving (subscribed) from then on.
    async fn serving(answers: &mut nubo_bus::EventStream) {
        let fut = async {
            while !matches!(
                answers.recv().await,
                Some(Event::NodeInventory { .. }) | None
            ) {}
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("the node serves within 5 s");
    }

    #[tokio::test]
    async fn a_node_refuses_the_commands_of_an_older_controller_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let events = EventBus::new(Arc::new(MemoryBus::new()));
        let mut answers = events.subscribe(Category::Supervisor).await.unwrap();
        let agent = AgentCommand {
            program: "/nonexistent/nubo".into(),
            args: vec!["agent".into()],
        };
        let serve_once = |events: EventBus| {
            let sup =
                NodeSupervisor::new(dir.path().join("members"), agent.clone(), events.clone())
                    .unwrap();
            tokio::spawn(serve(sup, events, "n1".into()))
        };
        let node = serve_once(events.clone());
        serving(&mut answers).await;
        // The leader with token 7 speaks first (a terminate of nothing: answered as an exit).
        events
            .publish(&Event::NodeTerminateMember {
                node: "n1".into(),
                member_id: "ghost".into(),
                fence: Some(7),
            })
            .await
            .unwrap();
        let e = next_answer(&mut answers).await;
        assert!(matches!(e, Event::MemberProcessExited { .. }), "{e:?}");
        // A deposed leader (token 3) asks for a start: refused, nothing started.
        let start = |fence| Event::NodeStartMember {
            node: "n1".into(),
            member: member("app.web.web-1"),
            image: "true".into(),
            ports: vec![],
            payload: BTreeMap::new(),
            bus_url: String::new(),
            fence,
            run_as: None,
        };
        events.publish(&start(Some(3))).await.unwrap();
        match next_answer(&mut answers).await {
            Event::NodeMemberStartFailed { reason, .. } => {
                assert!(reason.contains("fenced"), "{reason}")
            }
            e => panic!("{e:?}"),
        }
        // The newest token survives a restart of the node.
        node.abort();
        let _ = node.await;
        let _node = serve_once(events.clone());
        serving(&mut answers).await;
        events.publish(&start(Some(6))).await.unwrap();
        match next_answer(&mut answers).await {
            Event::NodeMemberStartFailed { reason, .. } => {
                assert!(reason.contains("fenced"), "{reason}")
            }
            e => panic!("{e:?}"),
        }
    }

    /// Stands for an agent: a process in a session of its own (as the supervisor starts agents)
    /// that records itself as `nubo agent` does, in a member directory with a payload, and that
    /// the supervisor never recorded (it was killed between the spawn and its record).
    fn unrecorded_agent(members: &Path, member_id: &str) -> (std::process::Child, i32) {
        use std::os::unix::process::CommandExt;
        let workdir = members.join(member_id);
        std::fs::create_dir_all(&workdir).unwrap();
        let payload = AgentPayload {
            member_id: member_id.into(),
            cluster_id: "app.web.web.domain".into(),
            cluster_instance_id: "app-1".into(),
            application_id: "app".into(),
            service_name: "web".into(),
            network_partition_id: "np".into(),
            partition_id: "p1".into(),
            command: "true".into(),
            ports: vec![MemberPort {
                name: "http".into(),
                protocol: "http".into(),
                port: 40123,
                proxy_port: None,
            }],
            bus_url: String::new(),
            parameters: BTreeMap::new(),
            bus_key: None,
        };
        std::fs::write(
            workdir.join("payload.json"),
            serde_json::to_vec(&payload).unwrap(),
        )
        .unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60");
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let pid = child.id() as i32;
        let rec = AgentRecord {
            pid,
            start_time: proc::start_time(pid).unwrap(),
        };
        std::fs::write(
            workdir.join("agent.json"),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        (child, pid)
    }

    #[tokio::test]
    async fn an_agent_its_supervisor_never_recorded_is_adopted_and_never_started_twice() {
        let dir = tempfile::tempdir().unwrap();
        let members = dir.path().join("members");
        let (mut child, pid) = unrecorded_agent(&members, "app.web.web-2");
        let events = EventBus::new(Arc::new(MemoryBus::new()));
        let agent = AgentCommand {
            program: "/nonexistent/nubo".into(),
            args: vec!["agent".into()],
        };
        // A restarted supervisor finds it.
        let sup = NodeSupervisor::new(members.clone(), agent, events).unwrap();
        assert_eq!(sup.running().await.unwrap(), ["app.web.web-2"]);
        assert_eq!(stop_all_pending(&members), 1);
        // Asked to start the member, it adopts the running agent (the agent program does not
        // even exist: a start would fail) with the ports of its payload.
        let started = sup
            .start(MemberSpec {
                member: member("app.web.web-2"),
                image: "true".into(),
                ports: vec![],
                bus_url: String::new(),
                parameters: BTreeMap::new(),
                run_as: None,
            })
            .await
            .unwrap();
        assert_eq!(started.ports.len(), 1);
        assert_eq!(started.ports[0].port, 40123);
        // And the clean-up of tests and benchmarks stops it.
        kill_all(&members);
        let _ = child.wait();
        assert_eq!(proc::start_time(pid), None);
        assert_eq!(stop_all_pending(&members), 0);
    }

    #[tokio::test]
    async fn a_stale_record_pointing_at_an_unrelated_process_leaves_it_alone() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let members = dir.path().join("members");
        // An unrelated process that leads a session of its own, now holding the recorded pid
        // (as after a reboot): the record's start time is another process's.
        let mut other = unsafe {
            std::process::Command::new("sleep")
                .arg("30")
                .pre_exec(|| {
                    libc::setsid();
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        let pid = other.id() as i32;
        let start = proc::start_time(pid).unwrap();
        let workdir = members.join("app.web.web-3");
        std::fs::create_dir_all(&workdir).unwrap();
        let rec = Record {
            member_id: "app.web.web-3".into(),
            pid,
            start_time: start.saturating_sub(1),
            ports: vec![],
        };
        std::fs::write(
            workdir.join("supervisor.json"),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        std::fs::write(
            workdir.join("agent.json"),
            serde_json::to_vec(&AgentRecord {
                pid,
                start_time: start + 7,
            })
            .unwrap(),
        )
        .unwrap();
        let agent = AgentCommand {
            program: "/nonexistent/nubo".into(),
            args: vec!["agent".into()],
        };
        // The supervisor starting over, `nubo down` and the tests' clean-up all leave it alone.
        let sup = NodeSupervisor::new(
            members.clone(),
            agent,
            EventBus::new(Arc::new(MemoryBus::new())),
        )
        .unwrap();
        assert!(sup.running().await.unwrap().is_empty(), "not adopted");
        assert_eq!(stop_all(&members), 0);
        kill_all(&members);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            other.try_wait().unwrap().is_none(),
            "the unrelated process still runs"
        );
        assert_eq!(proc::start_time(pid), Some(start));
        other.kill().unwrap();
        let _ = other.wait();
    }
}
