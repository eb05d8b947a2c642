//! The platform on a NATS server (`nubo server --bus nats://…`): the controller, the agents the
//! local provider starts and the load balancers (built in, and `nubo lb --bus nats://…`) all meet
//! there. Needs `NUBO_TEST_NATS_URL` (set by `scripts/test`); skipped with a message otherwise.

use std::time::Duration;

use serde_json::json;

use crate::support::{Api, ServerProcess, eventually, free_port};

/// `GET /` through a load balancer: the body, when the answer is 200.
async fn through(client: &reqwest::Client, addr: &str, proxy: u16, host: &str) -> Option<String> {
    let r = client
        .get(format!("http://{addr}:{proxy}/"))
        .header("host", host)
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    r.text().await.ok()
}

/// The artifacts of application `app`: `min` members of the whoami script (`local` provider),
/// alias `www`, host `localhost`, behind the load balancer's `proxy` port.
fn whoami_app(app: &str, min: u32, proxy: u16) -> Vec<(&'static str, serde_json::Value)> {
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    vec![
        (
            "autoscalingPolicies",
            json!({"id": "asp", "loadThresholds": {"requestsInFlight": {"threshold": 20}}}),
        ),
        (
            "networkPartitions",
            json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}]}),
        ),
        (
            "deploymentPolicies",
            json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}),
        ),
        (
            "applicationPolicies",
            json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        ),
        (
            "cartridges",
            json!({"type": "web", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": "8080", "proxyPort": proxy}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]}),
        ),
        (
            "applications",
            json!({"applicationId": app, "components": {"cartridges": [
            {"type": "web", "cartridgeMin": min, "cartridgeMax": min + 1, "subscribableInfo": {"alias": "www", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}}),
        ),
    ]
}

/// Adds and deploys [`whoami_app`], and waits for its `min` members to be Active: returns them.
async fn run_whoami(api: &Api, app: &str, min: u32, proxy: u16) -> Vec<serde_json::Value> {
    api.add_all(&whoami_app(app, min, proxy)).await;
    let (status, body) = api
        .post(&format!("/api/applications/{app}/deploy/ap"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(60, "the members active", || async {
        let a = api.active(app, "www").await;
        (a.len() == min as usize).then_some(a)
    })
    .await
}

/// The whole platform over an MQTT broker reached with TLS (`mqtts://…?ca=FILE`): the server,
/// its load balancer and the members' agents all connect with TLS and check the broker's
/// certificate against the authority the URL names.
#[tokio::test]
async fn an_application_runs_with_its_agents_on_an_mqtt_bus_over_tls() {
    let Some(url) = nubo_testing::service("NUBO_TEST_MQTTS_URL", "the platform on MQTT over TLS")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--bus", &url]);
    assert!(
        server.bus_url.starts_with("mqtts://nubo:***@"),
        "{}",
        server.bus_url
    );
    let api = Api::new(&server);
    let proxy = free_port();
    let members = run_whoami(&api, "tlsy", 1, proxy).await;
    let id = members[0]["memberId"].as_str().unwrap();
    let payload = crate::support::member_payload(dir.path(), id);
    assert_eq!(payload["busUrl"].as_str(), Some(url.as_str()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let body = eventually(
        30,
        "the application answers through the load balancer",
        || through(&client, "127.0.0.1", proxy, "tlsy.www.localhost"),
    )
    .await;
    assert!(body.starts_with("tlsy.www.web-"), "{body}");
    // Without the authority the broker's certificate is not trusted: no connection.
    let untrusted = url.split('?').next().unwrap();
    let c = nubo_bus::connect_url(untrusted, "untrusting")
        .await
        .unwrap();
    assert!(c.wait_connected(Duration::from_millis(1500)).await.is_err());
}

#[tokio::test]
async fn an_application_runs_with_its_agents_on_a_nats_bus() {
    use std::os::unix::process::CommandExt;
    let Some(url) = nubo_testing::service("NUBO_TEST_NATS_URL", "the platform on NATS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--bus", &url]);
    assert_eq!(
        server.bus_url,
        nubo_bus::redact_url(&url),
        "the server reports the NATS bus, without its password"
    );
    let api = Api::new(&server);
    let proxy = free_port();
    // Active means each agent reported InstanceStarted and InstanceActivated: over NATS, the
    // only bus this server has.
    let members = run_whoami(&api, "natsy", 2, proxy).await;
    for m in &members {
        let id = m["memberId"].as_str().unwrap();
        let workdir = dir.path().join("members").join(id);
        let payload: serde_json::Value =
            serde_json::from_slice(&std::fs::read(workdir.join("payload.json")).unwrap()).unwrap();
        assert_eq!(payload["busUrl"].as_str(), Some(url.as_str()), "{payload}");
        let log = std::fs::read_to_string(workdir.join("agent.log")).unwrap_or_default();
        assert!(
            log.contains("bus connected (NATS)"),
            "agent {id}'s log: {log}"
        );
    }
    // The built-in load balancer learnt the routes from the topology on NATS.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let body = eventually(
        30,
        "the application answers through the load balancer",
        || through(&client, "127.0.0.1", proxy, "natsy.www.localhost"),
    )
    .await;
    assert!(body.starts_with("natsy.www.web-"), "{body}");
    // So does a load balancer of its own, following the same NATS bus.
    let mut lb = std::process::Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args([
            "lb",
            "--bus-credentials",
            &server.bus_credentials,
            "--bind",
            "127.0.0.3",
            "--id",
            "lb-nats",
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
    eventually(
        30,
        "the standalone load balancer on NATS routes the application",
        || through(&client, "127.0.0.3", proxy, "natsy.www.localhost"),
    )
    .await;
    unsafe { libc::killpg(lb.id() as i32, libc::SIGTERM) };
    let _ = lb.wait();
    // A raw NATS client on the platform's bus, unsigned and then with member A's own key, orders
    // an undeploy and reports member B failed: nothing happens, and the drops are counted.
    let ids: Vec<String> = members
        .iter()
        .map(|m| m["memberId"].as_str().unwrap().to_owned())
        .collect();
    let payload = crate::support::member_payload(dir.path(), &ids[0]);
    let raw = nubo_bus::connect_url(&url, "intruder").await.unwrap();
    raw.wait_connected(Duration::from_secs(10)).await.unwrap();
    let as_member = nubo_bus::EventBus::with_auth(
        raw.clone(),
        nubo_bus::BusAuth::Member {
            member_id: ids[0].clone(),
            key: nubo_bus::BusKey::from_hex(payload["busKey"].as_str().unwrap()).unwrap(),
        },
    );
    let mut b = crate::support::instance_of(&payload);
    b.member_id = ids[1].clone();
    for bus in [nubo_bus::EventBus::new(raw.clone()), as_member] {
        for e in [
            nubo_events::Event::ControlUndeploy {
                application_id: "natsy".into(),
                force: true,
            },
            nubo_events::Event::InstanceFailed {
                instance: b.clone(),
                reason: "forged".into(),
            },
        ] {
            bus.publish(&e).await.unwrap();
        }
    }
    crate::support::holds(
        Duration::from_secs(3),
        "nothing forged is obeyed",
        || async {
            let now: Vec<String> = api
                .active("natsy", "www")
                .await
                .iter()
                .map(|m| m["memberId"].as_str().unwrap().to_owned())
                .collect();
            now == ids
        },
    )
    .await;
    let metrics = api.metrics().await;
    for reason in ["unsigned", "not_permitted"] {
        assert!(
            crate::support::dropped(&metrics, reason) > 0,
            "{reason} drops counted"
        );
    }
    assert_eq!(
        api.post("/api/applications/natsy/undeploy", json!({}))
            .await
            .0,
        202
    );
    eventually(30, "undeployed over NATS", || async {
        let (_, app) = api.get("/api/applications/natsy").await;
        (app["status"] == "Created").then_some(())
    })
    .await;
}
