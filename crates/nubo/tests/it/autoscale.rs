//! Autoscaling with real load: a load generator through the load balancer raises requests in
//! flight, the cluster scales up within seconds, and back down after the load stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Api, ServerProcess, eventually};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn requests_in_flight_scale_a_cluster_up_and_back_down() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--insecure-http",
            "--scale-window",
            "2",
            "--scale-up-cooldown",
            "1",
            "--scale-down-cooldown",
            "2",
        ],
    );
    let api = Api::new(&server);
    let proxy = free_port();
    let script = crate::support::manifest_dir().join("tests/it/fixtures/slow.py");
    api.add_all(&[
        ("autoscalingPolicies", json!({"id": "busy", "loadThresholds": {"requestsInFlight": {"threshold": 4}}})),
        ("networkPartitions", json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}, {"id": "p2"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}, {"id": "p2"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", json!({"type": "slow", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})),
        ("applications", json!({"applicationId": "busy", "components": {"cartridges": [
            {"type": "slow", "cartridgeMin": 1, "cartridgeMax": 4, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "busy", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    assert_eq!(
        api.post("/api/applications/busy/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    eventually(30, "one member active", || async {
        (api.active("busy", "web").await.len() == 1).then_some(())
    })
    .await;

    // 16 clients, each with a request always in flight (each held 200 ms): 16 in flight, threshold 4.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..16 {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                match client
                    .get(format!("http://127.0.0.1:{proxy}/"))
                    .header("host", "busy.web.localhost")
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {}
                    _ => failures += 1,
                }
            }
            failures
        }));
    }
    let started = Instant::now();
    eventually(20, "scaled up to the maximum of 4", || async {
        (api.active("busy", "web").await.len() == 4).then_some(())
    })
    .await;
    let scaled_up_in = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for l in load {
        failures += l.await.unwrap();
    }
    assert_eq!(failures, 0, "no request failed while the cluster scaled up");
    assert!(
        scaled_up_in < Duration::from_secs(15),
        "scale-up took {scaled_up_in:?}"
    );
    // Every decision is recorded with what it was made from.
    let (status, events) = api.get("/api/applications/busy/scalingEvents").await;
    assert_eq!(status, 200);
    let up = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["decision"].get("ScaleUp").is_some())
        .cloned()
        .unwrap_or_else(|| panic!("{events}"));
    assert_eq!(up["required"]["reason"], "RequestsInFlight", "{up}");
    assert_eq!(up["thresholds"]["requestsInFlight"], 4.0);
    assert!(
        up["predicted"]["requestsInFlight"].as_f64().unwrap() > 4.0,
        "{up}"
    );
    assert_eq!(up["clusterId"], "busy.web.slow.domain");
    // Without load, back to the minimum, one member at a time.
    let stopped = Instant::now();
    eventually(40, "scaled back down to 1", || async {
        let members = api.members("busy").await;
        (members
            .iter()
            .filter(|(_, m)| m["status"] == "Active")
            .count()
            == 1
            && members.len() == 1)
            .then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() > Duration::from_secs(2),
        "scale-down waits for its cool-down"
    );
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("nubo_members{status=\"Active\"} 1"),
        "{metrics}"
    );
}
