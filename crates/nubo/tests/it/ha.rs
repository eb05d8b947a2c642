//! A highly available control plane, for real: PostgreSQL, Mosquitto (and again NATS), a node
//! supervisor, two controller servers (the leader and a standby), an API-only server (the
//! manager) and two load balancers, each its own process. The standby serves the API from the
//! start (through the leader); the leader is killed in the middle of a scale-up ordered through
//! the standby: the standby takes over and completes it, nothing is lost or started twice, the
//! load balancers serve throughout, and the standby's API keeps answering, from its own
//! controller.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::node::NodeProcess;
use crate::support::{
    Api, Proc, ServerProcess, bus_credentials_file, eventually, free_port, holds, web_app,
    web_app_artifacts,
};

async fn get(addr: &str, host: &str) -> u16 {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("http://{addr}/"))
        .header("host", host)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_standby_takes_over_a_scale_up_on_mosquitto() {
    scenario("mosquitto").await;
}

#[tokio::test]
async fn the_standby_takes_over_a_scale_up_on_nats() {
    scenario("nats-server").await;
}

/// The whole scenario on a broker of the test's own (so that no other test's events mix in).
async fn scenario(broker: &str) {
    let Some(db) = nubo_store::conformance::TempPostgres::create_or_skip(&format!(
        "the HA control plane on {broker} (needs PostgreSQL)"
    ))
    .await
    else {
        return;
    };
    if nubo_testing::program(broker, &format!("the HA control plane on {broker}")).is_none() {
        return;
    }
    let broker_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (_broker, bus) = if broker == "mosquitto" {
        let conf = broker_dir.path().join("m.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n"),
        )
        .unwrap();
        (
            Proc::spawn(Command::new("mosquitto").arg("-c").arg(&conf)),
            format!("mqtt://127.0.0.1:{port}"),
        )
    } else {
        (
            Proc::spawn(Command::new("nats-server").args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])),
            format!("nats://127.0.0.1:{port}"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The operator's credentials file: the broker's URL and the platform's key, for every
    // process of the platform (the first server seeds the store with the key).
    let creds = bus_credentials_file(broker_dir.path(), &bus);
    let node_dir = tempfile::tempdir().unwrap();
    let _node = NodeProcess::start(&creds, "n1", node_dir.path());
    let proxy = free_port();
    let lb = |ip: &str, id: &str| {
        Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_nubo"))
                .args(["lb", "--bus-credentials", &creds, "--bind", ip, "--id", id])
                .env("NUBO_LOG", "warn"),
        )
    };
    let mut lb_a = lb("127.0.0.2", "lb-a");
    let _lb_b = lb("127.0.0.3", "lb-b");

    // The secrets key, which every server sharing the store holds (the first one makes it).
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("secrets.key").display().to_string();
    let args = [
        "--insecure-http",
        "--store",
        db.url(),
        "--secrets-key",
        &key,
        "--bus-credentials",
        &creds,
        "--components",
        "api,controller,autoscaler,event-processor",
        "--node",
        "n1",
        "--ha",
        "--ha-lease",
        "4",
    ];
    let dir_a = tempfile::tempdir().unwrap();
    let mut leader = ServerProcess::start_with(dir_a.path(), &args);
    // The standby serves the API at once, while it waits for the lease.
    let dir_b = tempfile::tempdir().unwrap();
    let standby = ServerProcess::start_with(dir_b.path(), &args);
    let (leader_api, standby_api) = (Api::new(&leader), Api::new(&standby));
    let (code, health) = leader_api.get("/health").await;
    assert_eq!(
        (code, &health["controller"]),
        (200, &json!("leader")),
        "{health}"
    );
    let (code, health) = standby_api.get("/health").await;
    assert_eq!(
        (code, &health["controller"]),
        (200, &json!("standby")),
        "{health}"
    );
    let holder = health["leader"].as_str().unwrap_or_default();
    assert!(!holder.is_empty(), "the standby names the leader: {health}");
    assert!(
        standby.said(&format!(
            "nubo: standby: the controller runs in {holder}; waiting to take over"
        )),
        "{:?}",
        standby.said
    );
    assert!(!leader.said("nubo: standby:"));
    // A manager: an API-only server, driving whichever server leads, through the bus.
    let dir_m = tempfile::tempdir().unwrap();
    let manager = ServerProcess::start_with(
        dir_m.path(),
        &[
            "--insecure-http",
            "--store",
            db.url(),
            "--secrets-key",
            &key,
            "--bus-credentials",
            &creds,
            "--components",
            "api",
        ],
    );
    let api = Api::new(&manager);
    let app = |min: u32| web_app("ha", min, 6);
    api.add_all(&web_app_artifacts("ha", 2, 6, proxy)).await;
    // Deployed through the standby: the leader's controller takes it in.
    let (code, answer) = standby_api
        .post("/api/applications/ha/deploy/ap", json!({}))
        .await;
    assert_eq!(code, 202, "{answer}");
    let (code, apps) = standby_api.get("/api/applications").await;
    assert_eq!(code, 200, "{apps}");
    assert_eq!(apps[0]["applicationId"], "ha", "{apps}");
    // Deployed, and Active as soon as its members are (Stratos' statuses).
    assert!(
        apps[0]["status"] == "Deployed" || apps[0]["status"] == "Active",
        "{apps}"
    );
    eventually(
        40,
        "two members Active, seen through the standby",
        || async { (standby_api.active("ha", "web").await.len() == 2).then_some(()) },
    )
    .await;
    assert_eq!(api.active("ha", "web").await.len(), 2);
    let a = format!("127.0.0.2:{proxy}");
    let b = format!("127.0.0.3:{proxy}");
    eventually(20, "both load balancers serve", || async {
        (get(&a, "ha.web.localhost").await == 200 && get(&b, "ha.web.localhost").await == 200)
            .then_some(())
    })
    .await;
    // What only the leader's process has is refused with the reason.
    let (code, answer) = standby_api.get("/api/mock-iaas/instances").await;
    assert_eq!(code, 503, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("this server is a standby")),
        "{answer}"
    );
    let (code, events) = standby_api.get("/api/applications/ha/scalingEvents").await;
    assert_eq!(code, 200, "{events}");
    assert!(events.is_array(), "{events}");

    // A scale-up (the minimum raised to 4) through the standby, and the leader killed right away.
    let (code, answer) = standby_api
        .send(reqwest::Method::PUT, "/api/applications", Some(app(4)))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("applied to running application `ha`"),
        "the leader took the change in: {answer}"
    );
    assert_eq!(
        standby_api.get("/health").await.1["controller"],
        "standby",
        "the standby waits while the leader runs"
    );
    leader.kill9();
    let killed = Instant::now();
    // No controller at all: the load balancers keep serving, and the standby's API answers.
    assert_eq!(get(&a, "ha.web.localhost").await, 200);
    assert_eq!(get(&b, "ha.web.localhost").await, 200);
    let (code, _) = standby_api.get("/api/applications/ha").await;
    assert_eq!(code, 200);
    eventually(30, "the standby leads", || async {
        (standby_api.get("/health").await.1["controller"] == "leader").then_some(())
    })
    .await;
    let failover = killed.elapsed();
    eventually(5, "the standby said it took over", || async {
        standby
            .said("nubo: leader: this server took over")
            .then_some(())
    })
    .await;
    let four = eventually(60, "the standby completed the scale-up to 4", || async {
        let a = standby_api.active("ha", "web").await;
        (a.len() == 4).then_some(a)
    })
    .await;
    // Nothing started twice: exactly 4 members known, and exactly 4 running on the node, while
    // the new leader settles.
    let members_dir = node_dir.path().join("members");
    holds(
        Duration::from_secs(5),
        "4 members known and 4 running",
        || async {
            api.members("ha").await.len() == 4 && nubo_node::stop_all_pending(&members_dir) == 4
        },
    )
    .await;
    eprintln!(
        "failover: the standby led {:.1} s after the leader's kill -9",
        failover.as_secs_f64()
    );
    assert!(failover < Duration::from_secs(20), "{failover:?}");
    // The same API, now from the new leader's own controller: its metrics, and commands.
    let metrics = standby_api.metrics().await;
    assert!(
        metrics.contains("nubo_members{status=\"Active\"} 4"),
        "the controller's metrics are served once it leads: {metrics}"
    );
    let (code, answer) = standby_api
        .send(
            reqwest::Method::PUT,
            "/api/applications",
            Some(web_app("ha", 4, 5)),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .contains("applied to running application `ha`"),
        "its own controller took the change in: {answer}"
    );
    let (code, answer) = standby_api
        .post("/api/applications/ha/deploy/ap", json!({}))
        .await;
    assert_eq!(
        code, 409,
        "already deployed, as its own controller says: {answer}"
    );

    // One load balancer killed: the other serves.
    lb_a.kill9();
    assert_eq!(get(&b, "ha.web.localhost").await, 200);

    // Everything restarted: the same members, nothing new.
    let mut standby = standby;
    assert!(standby.terminate(), "a clean stop hands the lease over");
    let again = ServerProcess::start_with(dir_a.path(), &args);
    assert_eq!(
        Api::new(&again).get("/health").await.1["controller"],
        "leader",
        "the lease was free at once"
    );
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&four);
    eventually(30, "the same four members", || async {
        (ids(&api.active("ha", "web").await) == before).then_some(())
    })
    .await;
    assert_eq!(
        nubo_node::stop_all_pending(&node_dir.path().join("members")),
        4
    );
}

#[tokio::test]
async fn the_platform_converges_after_its_broker_restarts_on_mosquitto() {
    converges_through_broker_restarts("mosquitto").await;
}

#[tokio::test]
async fn the_platform_converges_after_its_broker_restarts_on_nats() {
    converges_through_broker_restarts("nats-server").await;
}

/// The server, its agents and its load balancer on a broker of the test's own (Mosquitto or
/// nats-server), which restarts (same port, nothing kept): everyone reconnects, and a member lost
/// afterwards is replaced and routed, without restarting Nubo. Then an undeploy issued while the
/// broker is down completes within seconds of its return: nothing relies on the broker keeping
/// a message across its restart.
async fn converges_through_broker_restarts(program: &str) {
    if nubo_testing::program(program, "the broker restart").is_none() {
        return;
    }
    let broker_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = broker_dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n"),
    )
    .unwrap();
    let start_broker = || {
        let p = if program == "mosquitto" {
            Proc::spawn(Command::new("mosquitto").arg("-c").arg(&conf))
        } else {
            Proc::spawn(Command::new("nats-server").args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    };
    let mut broker = start_broker();
    let scheme = if program == "mosquitto" {
        "mqtt"
    } else {
        "nats"
    };
    let bus = format!("{scheme}://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--bus", &bus]);
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&web_app_artifacts("mq", 1, 1, proxy)).await;
    assert_eq!(
        api.post("/api/applications/mq/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let first = eventually(40, "one member Active", || async {
        api.active("mq", "web")
            .await
            .first()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
    })
    .await;
    let addr = format!("127.0.0.1:{proxy}");
    eventually(20, "served", || async {
        (get(&addr, "mq.web.localhost").await == 200).then_some(())
    })
    .await;

    broker.kill9();
    broker = start_broker();
    // Everyone reconnects (backoff up to 2 s); then the member dies.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pid = crate::support::agent_pid(dir.path(), &first).unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let second = eventually(40, "replaced and served again", || async {
        let a = api.active("mq", "web").await;
        let replaced = a.len() == 1 && a[0]["memberId"] != first.as_str();
        (replaced && get(&addr, "mq.web.localhost").await == 200)
            .then(|| a[0]["memberId"].as_str().unwrap().to_owned())
    })
    .await;

    // The broker goes away; an undeploy is issued meanwhile (graceful: the agent must hear its
    // clean-up request); the broker comes back after 3 s.
    let agent = crate::support::agent_pid(dir.path(), &second).unwrap();
    broker.kill9();
    let (code, body) = api.post("/api/applications/mq/undeploy", json!({})).await;
    assert_eq!(code, 202, "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _broker = start_broker();
    let back = Instant::now();
    eventually(
        10,
        "the member gone within 10 s of the broker's return",
        || async {
            (!crate::support::alive(agent)
                && api.get("/api/applications/mq/runtime").await.0 == 404)
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "{program}: undeployed {:.1} s after the broker came back",
        back.elapsed().as_secs_f64()
    );
}
