//! The load balancer in front of real members: routing by host name, balancing, no failed
//! request while members are killed and replaced, no route after undeploy.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Api, ServerProcess, agent_pid, eventually, free_port, session_pids};

fn whoami_cartridge(ty: &str, proxy: u16) -> Value {
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    json!({"type": ty, "category": "framework", "host": "localhost",
        "portMapping": [{"name": "http", "protocol": "http", "port": "8080", "proxyPort": proxy}],
        "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})
}

async fn deploy(api: &Api, proxy: u16) {
    api.add_all(&[
        ("autoscalingPolicies", json!({"id": "asp", "loadThresholds": {"requestsInFlight": {"threshold": 20}}})),
        ("networkPartitions", json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", whoami_cartridge("web", proxy)),
        ("cartridges", whoami_cartridge("api", proxy)),
        ("applications", json!({"applicationId": "site", "components": {"cartridges": [
            {"type": "web", "cartridgeMin": 2, "cartridgeMax": 4, "subscribableInfo": {"alias": "www", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}},
            {"type": "api", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "api", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    assert_eq!(
        api.post("/api/applications/site/deploy/ap", json!({}))
            .await
            .0,
        202
    );
}

/// One request through the load balancer: (status, body).
async fn get(client: &reqwest::Client, proxy: u16, host: &str) -> Result<(u16, String), String> {
    let r = client
        .get(format!("http://127.0.0.1:{proxy}/"))
        .header("host", host)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.map_err(|e| e.to_string())?))
}

#[tokio::test]
async fn requests_reach_active_members_by_host_name_without_failures_while_members_die() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    deploy(&api, proxy).await;
    let www = eventually(30, "two www members active", || async {
        let a = api.active("site", "www").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    eventually(30, "one api member active", || async {
        (api.active("site", "api").await.len() == 1).then_some(())
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    // Routed by host name, balanced over both members, with X-Forwarded-For.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "both www members answer through the load balancer: saw {seen:?}"
        );
        if let Ok((200, body)) = get(&client, proxy, "site.www.localhost").await {
            let mut parts = body.split(' ');
            seen.insert(parts.next().unwrap().to_owned());
            assert_eq!(parts.next(), Some("127.0.0.1"), "X-Forwarded-For is set");
            assert_eq!(
                parts.next(),
                Some("/"),
                "the member sees the request in origin form"
            );
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let expected: std::collections::BTreeSet<String> = www
        .iter()
        .map(|m| m["memberId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, expected);
    let (status, body) = get(&client, proxy, "site.api.localhost:1234")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("site.api.api-"), "{body}");
    let (status, body) = get(&client, proxy, "nobody.localhost").await.unwrap();
    assert_eq!(status, 404);
    assert!(
        body.contains("no application is served at nobody.localhost"),
        "{body}"
    );

    // A client keeps sending requests while a workload, then an agent, are killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let (mut ok, mut failures) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(&client, proxy, "site.www.localhost").await {
                    Ok((200, _)) => ok += 1,
                    other => failures.push(format!("{other:?}")),
                }
            }
            (ok, failures)
        })
    };
    let victim = www[0]["memberId"].as_str().unwrap().to_owned();
    let agent = agent_pid(dir.path(), &victim).unwrap();
    let killed_at = Instant::now();
    for p in session_pids(agent).into_iter().filter(|p| *p != agent) {
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    eventually(30, "the killed workload replaced", || async {
        let a = api.active("site", "www").await;
        (a.len() == 2 && a.iter().all(|m| m["memberId"] != victim.as_str())).then_some(())
    })
    .await;
    let replaced_in = killed_at.elapsed();
    let victim = www[1]["memberId"].as_str().unwrap().to_owned();
    let agent = agent_pid(dir.path(), &victim).unwrap();
    unsafe { libc::kill(agent, libc::SIGKILL) };
    eventually(30, "the killed agent's member replaced", || async {
        let a = api.active("site", "www").await;
        (a.len() == 2 && a.iter().all(|m| m["memberId"] != victim.as_str())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20, "the client kept going: {ok} requests");
    assert!(
        replaced_in < Duration::from_secs(10),
        "replacement took {replaced_in:?}"
    );

    // The load balancer's and the controller's metrics.
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("nubo_lb_requests_total{cluster=\"site.www.web.domain\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nubo_members{status=\"Active\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nubo_lb_routed_members{host=\"site.www.localhost\""),
        "{metrics}"
    );

    // Undeploy: the host name is no longer routed.
    assert_eq!(
        api.post("/api/applications/site/undeploy", json!({}))
            .await
            .0,
        202
    );
    eventually(30, "the host no longer routed", || async {
        match get(&client, proxy, "site.www.localhost").await {
            Ok((404, _)) => Some(()),
            _ => None,
        }
    })
    .await;
}

/// A load balancer of its own (`nubo lb`), following the server's bus and bound to another
/// loopback address, routes the same host names.
#[tokio::test]
async fn a_standalone_load_balancer_follows_the_bus() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    deploy(&api, proxy).await;
    let mut lb = std::process::Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args([
            "lb",
            "--bus-credentials",
            &server.bus_credentials,
            "--bind",
            "127.0.0.2",
            "--id",
            "lb-test",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            unsafe { libc::killpg(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = Kill(lb.id());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let body = eventually(
        30,
        "the standalone load balancer routes the application",
        || async {
            let r = client
                .get(format!("http://127.0.0.2:{proxy}/"))
                .header("host", "site.api.localhost")
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            r.text().await.ok()
        },
    )
    .await;
    assert!(body.starts_with("site.api.api-"), "{body}");
    unsafe { libc::killpg(lb.id() as i32, libc::SIGTERM) };
    let _ = lb.wait();
}
