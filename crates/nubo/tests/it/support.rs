//! Shared helpers: an in-process API on a temporary store, a real server process, JSON comparison.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub const PASSWORD: &str = "test-password";

/// This crate's directory, as the test runner gives it at run time (a binary built in another
/// checkout sharing the target directory must not point at that checkout's files).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Stratos samples (`NUBO_SAMPLES`, or `../shared/stratos-samples` beside the repository), for
/// a test that checked with [`have_samples`] that they are there.
pub fn samples() -> PathBuf {
    nubo_testing::samples_dir().expect("the Stratos samples: check with have_samples first")
}

/// Whether the Stratos samples are found; when not, `suite` is skipped (and said so): a clone of
/// the repository need not have them, and the project's own fixtures cover the model.
pub fn have_samples(suite: &str) -> bool {
    nubo_testing::samples(suite).is_some()
}

/// One of the project's own artifacts (`tests/it/fixtures/artifacts/`).
pub fn fixture_artifact(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture_path(name)).unwrap()).unwrap()
}

/// The path of one of the project's own artifacts.
pub fn fixture_path(name: &str) -> PathBuf {
    manifest_dir()
        .join("tests/it/fixtures/artifacts")
        .join(name)
}

pub fn read_sample(rel: &str) -> Vec<u8> {
    std::fs::read(samples().join(rel)).unwrap_or_else(|e| panic!("cannot read sample {rel}: {e}"))
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The whole HTTP application in process, on a fresh SQLite store in a temporary directory.
pub struct TestApi {
    pub app: axum::Router,
    _dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl TestApi {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            nubo_store::SqliteStore::open(&dir.path().join("nubo.db"))
                .await
                .unwrap(),
        );
        let manager = Arc::new(nubo_manager::Manager::new(
            store,
            vec!["local".into(), "mock".into()],
            nubo_manager::SecretsKey::random().unwrap(),
        ));
        manager.ensure_admin(Some(PASSWORD)).await.unwrap();
        let state = nubo_api::AppState::new(
            manager,
            None,
            None,
            prometheus_client::registry::Registry::default(),
        );
        TestApi {
            app: nubo_api::router(state),
            _dir: dir,
        }
    }

    pub async fn call_as(
        &self,
        auth: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req
            .header("content-type", "application/json")
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer {
            status,
            body,
            headers,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        self.call_as(Some(&basic("admin", PASSWORD)), method, path, body)
            .await
    }

    pub async fn post(&self, path: &str, body: &[u8]) -> Answer {
        self.call(Method::POST, path, Some(body.to_vec())).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }
}

/// The id field of each collection.
pub fn id_field(collection: &str) -> &'static str {
    match collection {
        "cartridges" => "type",
        "cartridgeGroups" => "name",
        "applications" => "applicationId",
        "kubernetesClusters" => "clusterId",
        _ => "id",
    }
}

/// Whether `got` reads back as `sent`: same keys and values, where a string holding a number or
/// boolean equals that value, and numbers compare by value. `got` may carry the keys in `extra_ok`.
pub fn equivalent(sent: &Value, got: &Value, path: &str, extra_ok: &[&str]) -> Result<(), String> {
    match (sent, got) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                // Secrets are sealed in the store and never served back.
                if ["repoPassword", "webhookSecret"].contains(&k.as_str()) {
                    if b.contains_key(k) {
                        return Err(format!("{p} is a secret: it must never come back"));
                    }
                    continue;
                }
                let g = b
                    .get(k)
                    .ok_or_else(|| format!("{p} is missing from the answer"))?;
                equivalent(v, g, &p, extra_ok)?;
            }
            for k in b.keys() {
                if !a.contains_key(k) && !extra_ok.contains(&k.as_str()) {
                    return Err(format!("{path}.{k} was not sent but came back"));
                }
            }
            Ok(())
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Err(format!(
                    "{path}: {} elements sent, {} came back",
                    a.len(),
                    b.len()
                ));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                equivalent(x, y, &format!("{path}[{i}]"), extra_ok)?;
            }
            Ok(())
        }
        (Value::String(s), Value::Number(n)) | (Value::Number(n), Value::String(s)) => {
            match (s.trim().parse::<f64>(), n.as_f64()) {
                (Ok(x), Some(y)) if x == y => Ok(()),
                _ => Err(format!("{path}: `{s}` vs {n}")),
            }
        }
        (Value::String(s), Value::Bool(b)) | (Value::Bool(b), Value::String(s)) => {
            if s.trim().eq_ignore_ascii_case(&b.to_string()) {
                Ok(())
            } else {
                Err(format!("{path}: `{s}` vs {b}"))
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => Ok(()),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: sent {a}, got {b}")),
    }
}

/// A bus credentials file for an external broker at `url`, with a new platform key: what an
/// operator writes to start the platform's processes before any server ran.
pub fn bus_credentials_file(dir: &Path, url: &str) -> String {
    let path = dir.join("bus.json");
    nubo_bus::BusCredentials {
        url: url.to_owned(),
        key: nubo_bus::BusKey::generate().to_hex(),
        previous_key: None,
    }
    .write(&path)
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// A real `nubo server` process on a free loopback port, in its own process group; killed (with
/// its group) when dropped, whatever happens.
pub struct ServerProcess {
    pub child: Option<Child>,
    pub url: String,
    /// The bus URL as the server shows it (its password hidden).
    pub bus_url: String,
    /// The file with the bus URL and the platform's key (`--bus-credentials`).
    pub bus_credentials: String,
    pub data_dir: PathBuf,
    /// The `nubo: …` lines the server printed so far.
    pub said: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &["--insecure-http"])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_timeout(data_dir, extra, 30)
    }

    /// [`Self::start_with`], waiting up to `secs` for the server to report its address.
    pub fn start_with_timeout(data_dir: &Path, extra: &[&str], secs: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nubo"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-addr", "127.0.0.1:0"])
            .args(
                if extra.contains(&"--bus-url")
                    || extra.contains(&"--bus")
                    || extra.contains(&"--bus-credentials")
                {
                    &[][..]
                } else {
                    &["--bus-addr", "127.0.0.1:0"][..]
                },
            )
            .args(extra)
            .env("NUBO_ADMIN_PASSWORD", PASSWORD)
            .env(
                "NUBO_LOG",
                std::env::var("NUBO_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(match std::env::var_os("NUBO_TEST_SERVER_LOG_FILE") {
                Some(f) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
                None => Stdio::null(),
            })
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn nubo server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let said = Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = said.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("nubo: ") {
                    lines.lock().unwrap().push(line.clone());
                }
                if let Some(url) = line.strip_prefix("nubo: API listening on ") {
                    let _ = tx.send(url.to_owned());
                }
                if line.starts_with("nubo: no API in this process") {
                    let _ = tx.send(String::new());
                }
                if let Some(bus) = line.strip_prefix("nubo: bus: ") {
                    let _ = tx.send(bus.to_owned());
                }
            }
        });
        let mut server = ServerProcess {
            child: Some(child),
            url: String::new(),
            bus_url: String::new(),
            bus_credentials: data_dir.join("bus.json").to_string_lossy().into_owned(),
            data_dir: data_dir.to_owned(),
            said,
        };
        server.url = rx
            .recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("the server did not report its address within {secs} s"));
        server.bus_url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not report its bus within 30 s");
        server
    }

    /// Whether the server printed a line starting with `prefix`.
    pub fn said(&self, prefix: &str) -> bool {
        self.said
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with(prefix))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait up to 15 s for a clean exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
        // Members outlive the server by design: stop them too, whatever happened.
        nubo_node::kill_all(&self.data_dir.join("members"));
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that `check` holds throughout the next `window` (polled every 100 ms, failing at the
/// first time it does not): for what must *not* happen (a member started twice, a scale beyond
/// what is required), which no condition can signal.
pub async fn holds<F, Fut>(window: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + window;
    loop {
        assert!(check().await, "no longer true: {what}");
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The secrets key file for the servers sharing the SQLite store `store` (`sqlite://DIR/FILE`):
/// `DIR/secrets.key`, made by the first server and read by the others, as an operator would copy it.
pub fn shared_secrets_key(store: &str) -> String {
    let path = std::path::Path::new(store.strip_prefix("sqlite://").expect("a SQLite store URL"));
    path.with_file_name("secrets.key").display().to_string()
}

/// A client of one server process, with the admin's credentials.
pub struct Api {
    pub url: String,
    pub http: reqwest::Client,
    pub user: String,
    pub password: String,
}

impl Api {
    pub fn new(server: &ServerProcess) -> Self {
        Api {
            url: server.url.clone(),
            http: client(),
            user: "admin".into(),
            password: PASSWORD.into(),
        }
    }

    /// The same server's API over HTTPS, trusting the server's own certificate
    /// (`<data-dir>/tls/cert.pem`, generated at its first start).
    pub fn trusting(server: &ServerProcess) -> Self {
        let pem = std::fs::read(server.data_dir.join("tls/cert.pem")).unwrap();
        let _ = nubo_server::install_crypto_provider();
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .use_rustls_tls()
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .build()
                .unwrap(),
            ..Api::new(server)
        }
    }

    /// The same server's API, as another user (`user@tenant.domain`).
    pub fn as_user(server: &ServerProcess, user: &str, password: &str) -> Self {
        Api {
            user: user.into(),
            password: password.into(),
            ..Api::new(server)
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.url))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    }

    /// Adds artifacts in order, asserting each is created.
    pub async fn add_all(&self, artifacts: &[(&str, Value)]) {
        for (collection, body) in artifacts {
            let (status, answer) = self.post(&format!("/api/{collection}"), body.clone()).await;
            assert_eq!(status, 201, "{collection}: {answer}");
        }
    }

    /// Every member of an application's runtime view: (cluster alias, member).
    pub async fn members(&self, app: &str) -> Vec<(String, Value)> {
        let (status, view) = self.get(&format!("/api/applications/{app}/runtime")).await;
        if status != 200 {
            return Vec::new();
        }
        let mut out = Vec::new();
        fn walk(v: &Value, out: &mut Vec<(String, Value)>) {
            for ci in v["clusterInstances"].as_array().into_iter().flatten() {
                for m in ci["member"].as_array().into_iter().flatten() {
                    out.push((
                        ci["alias"].as_str().unwrap_or_default().to_owned(),
                        m.clone(),
                    ));
                }
            }
            for g in v["groupInstances"].as_array().into_iter().flatten() {
                walk(g, out);
            }
        }
        for inst in view["applicationInstances"]
            .as_array()
            .into_iter()
            .flatten()
        {
            walk(inst, &mut out);
        }
        out
    }

    /// Active members of a cluster alias.
    pub async fn active(&self, app: &str, alias: &str) -> Vec<Value> {
        self.members(app)
            .await
            .into_iter()
            .filter(|(a, m)| a == alias && m["status"] == "Active")
            .map(|(_, m)| m)
            .collect()
    }
}

/// Pid of the agent of a member (from the supervisor's record).
/// A file of a member's directory (`agent.log`, `workload.log`), whether the member still runs
/// (`members/<id>/`) or ended (its last logs, in `ended/<id>/`).
pub fn member_file(data_dir: &Path, member_id: &str, file: &str) -> Option<String> {
    ["members", "ended"]
        .iter()
        .find_map(|d| std::fs::read_to_string(data_dir.join(d).join(member_id).join(file)).ok())
}

/// The members a node's data directory knows, running or ended.
pub fn members_seen(data_dir: &Path) -> Vec<String> {
    ["members", "ended"]
        .iter()
        .filter_map(|d| std::fs::read_dir(data_dir.join(d)).ok())
        .flat_map(|r| r.flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn agent_pid(data_dir: &Path, member_id: &str) -> Option<i32> {
    let text = std::fs::read_to_string(
        data_dir
            .join("members")
            .join(member_id)
            .join("supervisor.json"),
    )
    .ok()?;
    serde_json::from_str::<Value>(&text).ok()?["pid"]
        .as_i64()
        .map(|p| p as i32)
}

/// Pids of every process in the session led by `sid`.
pub fn session_pids(sid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| {
                    t.rfind(')')
                        .map(|i| t[i + 1..].split_whitespace().nth(3).map(str::to_owned))
                })
                .flatten()
                .and_then(|s| s.parse::<i32>().ok())
                == Some(sid)
        })
        .collect()
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|t| {
        !t.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// An HTTP client for a server process (installs the TLS crypto provider first).
pub fn client() -> reqwest::Client {
    let _ = nubo_server::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .use_rustls_tls()
        .build()
        .unwrap()
}

/// A port the OS says is free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The artifacts of application `app`: one cluster `web` of an HTTP workload (`slow.py`, answering
/// at once) on the `local` provider between `min` and `max` members, behind `proxy`, that never
/// scales on load; `PUT /api/applications` with [`web_app`] changes its bounds.
pub fn web_app_artifacts(app: &str, min: u32, max: u32, proxy: u16) -> Vec<(&'static str, Value)> {
    let script = manifest_dir().join("tests/it/fixtures/slow.py");
    vec![
        (
            "autoscalingPolicies",
            serde_json::json!({"id": "asp", "loadThresholds": {"requestsInFlight": {"threshold": 1000}}}),
        ),
        (
            "networkPartitions",
            serde_json::json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}]}),
        ),
        (
            "deploymentPolicies",
            serde_json::json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "one-after-another", "partitions": [{"id": "p1"}]}]}),
        ),
        (
            "applicationPolicies",
            serde_json::json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        ),
        (
            "cartridges",
            serde_json::json!({"type": "web", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "iaasProvider": [{"type": "local", "imageId": format!("DELAY=0 exec python3 {}", script.display())}]}),
        ),
        ("applications", web_app(app, min, max)),
    ]
}

/// The application of [`web_app_artifacts`].
pub fn web_app(app: &str, min: u32, max: u32) -> Value {
    serde_json::json!({"applicationId": app, "components": {"cartridges": [
        {"type": "web", "cartridgeMin": min, "cartridgeMax": max,
         "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})
}

/// A member's payload (`members/<id>/payload.json`), as JSON.
pub fn member_payload(data_dir: &Path, member_id: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(
            data_dir
                .join("members")
                .join(member_id)
                .join("payload.json"),
        )
        .unwrap(),
    )
    .unwrap()
}

/// The member a payload describes, as its agent reports it.
pub fn instance_of(payload: &Value) -> nubo_events::InstanceRef {
    let s = |k: &str| payload[k].as_str().unwrap().to_owned();
    nubo_events::InstanceRef {
        member_id: s("memberId"),
        cluster_id: s("clusterId"),
        cluster_instance_id: s("clusterInstanceId"),
        application_id: s("applicationId"),
        service_name: s("serviceName"),
        network_partition_id: s("networkPartitionId"),
        partition_id: s("partitionId"),
    }
}

/// The count of `nubo_bus_messages_dropped_total{reason=…}` in a metrics text.
pub fn dropped(metrics: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("nubo_bus_messages_dropped_total")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A process of the test's own (broker, load balancer), in its own process group, killed on drop.
pub struct Proc(Option<std::process::Child>);

impl Proc {
    pub fn spawn(cmd: &mut std::process::Command) -> Proc {
        use std::os::unix::process::CommandExt;
        Proc(Some(
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0)
                .spawn()
                .expect("spawn"),
        ))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// GitHub's `X-Hub-Signature-256` of `payload` with `secret`.
pub fn github_signature(secret: &str, payload: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
