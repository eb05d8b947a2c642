//! The server as a process: restarts keep everything, `kill -9` mid-write leaves old or new and
//! never a mix, one server per data directory, HTTPS with the generated certificate.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{PASSWORD, ServerProcess, client};

async fn post(c: &reqwest::Client, url: &str, path: &str, body: &Value) -> reqwest::StatusCode {
    c.post(format!("{url}{path}"))
        .basic_auth("admin", Some(PASSWORD))
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
}

async fn get(c: &reqwest::Client, url: &str, path: &str) -> (reqwest::StatusCode, Value) {
    let r = c
        .get(format!("{url}{path}"))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn policy(n: u64) -> Value {
    // Two fields that must always agree: a torn write would break the pairing.
    json!({"id": "asp", "description": format!("v{n}"), "loadThresholds": {"loadAverage": {"threshold": n % 99 + 1}}})
}

#[tokio::test]
async fn everything_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let mut s = ServerProcess::start_with(dir.path(), &["--insecure-http", "--mock-iaas", "-"]);
    for (path, file) in [
        ("/api/networkPartitions", "network-partition.json"),
        ("/api/autoscalingPolicies", "autoscaling-policy.json"),
        ("/api/deploymentPolicies", "deployment-policy.json"),
        ("/api/cartridges", "cartridge.json"),
        ("/api/applicationPolicies", "application-policy.json"),
        ("/api/applications", "application.json"),
    ] {
        let body = crate::support::fixture_artifact(file);
        assert_eq!(post(&c, &s.url, path, &body).await, 201, "{file}");
    }
    let before = get(&c, &s.url, "/api/applications/fixture-app").await.1;
    assert!(s.terminate(), "SIGTERM ends the server cleanly");
    let s = ServerProcess::start_with(dir.path(), &["--insecure-http", "--mock-iaas", "-"]);
    let (status, after) = get(&c, &s.url, "/api/applications/fixture-app").await;
    assert_eq!(status, 200);
    assert_eq!(after, before);
    assert_eq!(
        get(&c, &s.url, "/api/cartridges")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The in-use rule holds across the restart too.
    let r = c
        .delete(format!("{}/api/cartridges/web", s.url))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
}

#[tokio::test]
async fn kill_9_in_the_middle_of_writes_leaves_old_or_new_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let mut last_acknowledged = 0;
    for round in 0..3u64 {
        let mut s = ServerProcess::start(dir.path());
        if round == 0 {
            assert_eq!(
                post(&c, &s.url, "/api/autoscalingPolicies", &policy(0)).await,
                201
            );
        } else {
            // What was acknowledged before the kill is there, consistent.
            let (status, got) = get(&c, &s.url, "/api/autoscalingPolicies/asp").await;
            assert_eq!(status, 200);
            let n: u64 = got["description"].as_str().unwrap()[1..].parse().unwrap();
            assert_eq!(
                got["loadThresholds"]["loadAverage"]["threshold"],
                n % 99 + 1,
                "torn write: {got}"
            );
            assert!(
                n >= last_acknowledged,
                "acknowledged update {last_acknowledged} was lost (found {n})"
            );
            let (_, all) = get(&c, &s.url, "/api/networkPartitions").await;
            for np in all.as_array().unwrap() {
                assert_eq!(
                    np["partitions"][0]["id"],
                    format!("part-{}", np["id"].as_str().unwrap()),
                    "torn network partition: {np}"
                );
            }
        }
        // Hammer updates and creates from several tasks, then kill -9 while they run.
        let url = s.url.clone();
        let stop_at = Instant::now() + Duration::from_millis(400 + round * 150);
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let c = c.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = 0;
                let mut n = round * 1_000_000 + t * 100_000 + 1;
                while Instant::now() < stop_at {
                    n += 1;
                    let r = if t == 0 {
                        c.put(format!("{url}/api/autoscalingPolicies")).basic_auth("admin", Some(PASSWORD)).json(&policy(n)).send().await
                    } else {
                        let id = format!("np-{n}");
                        c.post(format!("{url}/api/networkPartitions"))
                            .basic_auth("admin", Some(PASSWORD))
                            .json(&json!({"id": id, "provider": "mock", "partitions": [{"id": format!("part-{id}")}]}))
                            .send()
                            .await
                    };
                    match r {
                        Ok(r) if r.status().is_success() && t == 0 => acked = n,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + round * 100)).await;
        s.kill9();
        let acked: Vec<u64> = futures_all(tasks).await;
        assert!(
            acked[0] > last_acknowledged,
            "round {round}: updates were acknowledged before the kill"
        );
        last_acknowledged = acked[0];
    }
    let s = ServerProcess::start(dir.path());
    let (status, _) = get(&c, &s.url, "/api/autoscalingPolicies/asp").await;
    assert_eq!(status, 200);
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<u64>>) -> Vec<u64> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn one_server_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = ServerProcess::start(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args([
            "server",
            "--insecure-http",
            "--api-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another nubo server is using"), "{err}");
}

#[tokio::test]
async fn https_with_the_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServerProcess::start_with(dir.path(), &[]);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let cert = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
    let _ = nubo_server::install_crypto_provider();
    let trusting = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap();
    let r = trusting
        .get(format!("{}/health", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = trusting
        .get(format!("{}/api/init", s.url))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A client that does not trust the certificate is refused at the handshake.
    assert!(
        client()
            .get(format!("{}/health", s.url))
            .send()
            .await
            .is_err()
    );
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(
        key_mode & 0o077,
        0,
        "the private key is readable by its owner only"
    );
}

#[tokio::test]
async fn the_server_reads_a_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(&cfg, "insecure_http = true\nlog_format = \"json\"\n").unwrap();
    let s = ServerProcess::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
    assert!(
        s.url.starts_with("http://"),
        "insecure_http from the file: {}",
        s.url
    );
    assert_eq!(get(&client(), &s.url, "/api/init").await.0, 200);
    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args(["server", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid server configuration"));
}
