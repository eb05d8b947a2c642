//! Applications running for real: members are processes with an agent each, on loopback.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Api, ServerProcess, agent_pid, alive, eventually, free_port, holds, session_pids,
};

/// A cartridge running a Python HTTP server on its port, behind the load balancer on `proxy`.
fn http_cartridge(ty: &str, proxy: u16) -> Value {
    json!({"type": ty, "category": "framework", "provider": "nubo", "host": "localhost",
        "portMapping": [{"name": "http", "protocol": "http", "port": "8080", "proxyPort": proxy}],
        "iaasProvider": [{"type": "local", "imageId": "exec python3 -m http.server $PORT --bind 127.0.0.1"}]})
}

fn base_artifacts() -> Vec<(&'static str, Value)> {
    vec![
        (
            "autoscalingPolicies",
            json!({"id": "asp", "loadThresholds": {"requestsInFlight": {"threshold": 20}}}),
        ),
        (
            "networkPartitions",
            json!({"id": "np", "provider": "local", "partitions": [{"id": "p1"}, {"id": "p2"}]}),
        ),
        (
            "deploymentPolicies",
            json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1", "partitionMax": 5}, {"id": "p2", "partitionMax": 5}]}]}),
        ),
        (
            "applicationPolicies",
            json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        ),
    ]
}

/// Two cartridges in a group, `db` before `web`; returns the load balancer's port for both.
async fn deploy_grouped(api: &Api) -> u16 {
    let proxy = free_port();
    let mut arts = base_artifacts();
    arts.push(("cartridges", http_cartridge("db", proxy)));
    arts.push(("cartridges", http_cartridge("web", proxy)));
    arts.push(("cartridgeGroups", json!({"name": "stack", "cartridges": ["db", "web"], "dependencies": {"startupOrders": [{"aliases": ["cartridge.db", "cartridge.web"]}], "terminationBehaviour": "terminate-none"}})));
    arts.push(("applications", json!({"applicationId": "shop", "components": {"groups": [{"name": "stack", "alias": "s", "deploymentPolicy": "dp", "cartridges": [
        {"type": "db", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "db", "autoscalingPolicy": "asp"}},
        {"type": "web", "cartridgeMin": 2, "cartridgeMax": 4, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp"}}]}]}})));
    api.add_all(&arts).await;
    let (status, body) = api
        .post("/api/applications/shop/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    proxy
}

/// `GET /` through the load balancer with a host name; the status code.
async fn through_lb(proxy: u16, host: &str) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    match client
        .get(format!("http://127.0.0.1:{proxy}/"))
        .header("host", host)
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn http_get(port: u64) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port as u16)).await else {
        return false;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn a_grouped_application_starts_in_order_and_undeploys_completely() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = deploy_grouped(&api).await;
    // While db is not Active, web has no member at all.
    let db = eventually(30, "db active", || async {
        let members = api.members("shop").await;
        let web_started = members.iter().any(|(a, _)| a == "web");
        let db_active: Vec<Value> = members
            .iter()
            .filter(|(a, m)| a == "db" && m["status"] == "Active")
            .map(|(_, m)| m.clone())
            .collect();
        assert!(
            !web_started || !db_active.is_empty(),
            "web started before db was active: {members:?}"
        );
        (!db_active.is_empty()).then_some(db_active)
    })
    .await;
    assert_eq!(db.len(), 1);
    let web = eventually(30, "two web members active", || async {
        let a = api.active("shop", "web").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    // Each member answers on its own port, in its own partition (round robin).
    let mut partitions: Vec<String> = web
        .iter()
        .map(|m| m["partitionId"].as_str().unwrap().to_owned())
        .collect();
    partitions.sort();
    assert_eq!(partitions, ["p1", "p2"]);
    for m in db.iter().chain(&web) {
        assert!(
            http_get(m["ports"][0]["port"].as_u64().unwrap()).await,
            "member {} answers",
            m["memberId"]
        );
    }
    // Both clusters answer through the load balancer by host name.
    for host in ["shop.db.localhost", "shop.web.localhost"] {
        eventually(10, host, || async {
            (through_lb(proxy, host).await == 200).then_some(())
        })
        .await;
    }
    let (_, view) = api.get("/api/applications/shop/runtime").await;
    assert_eq!(
        view["applicationInstances"][0]["status"], "Active",
        "{view}"
    );
    let group = &view["applicationInstances"][0]["groupInstances"][0];
    assert_eq!(group["groupId"], "s");
    assert_eq!(group["status"], "Active");
    assert_eq!(
        group["clusterInstances"][1]["hostNames"][0],
        "shop.web.localhost"
    );
    assert_eq!(
        group["clusterInstances"][1]["accessUrls"][0],
        format!("http://shop.web.localhost:{proxy}")
    );
    // Every member Active: the application is Active, in its definition and at the top of its
    // runtime view (Stratos' statuses).
    let (_, app) = api.get("/api/applications/shop").await;
    assert_eq!(app["status"], "Active");
    let (_, view) = api.get("/api/applications/shop/runtime").await;
    assert_eq!(
        (&view["status"], &view["deploymentStatus"]),
        (&json!("Active"), &json!("Deployed"))
    );
    assert_eq!(
        api.post("/api/applications/shop/deploy/ap", json!({}))
            .await
            .0,
        409,
        "deployed twice"
    );
    assert_eq!(
        api.send(reqwest::Method::DELETE, "/api/applications/shop", None)
            .await
            .0,
        409,
        "deleted while deployed"
    );

    // Undeploy: every process goes, the runtime view empties, the status is Created again.
    let sessions: Vec<i32> = db
        .iter()
        .chain(&web)
        .map(|m| agent_pid(dir.path(), m["memberId"].as_str().unwrap()).unwrap())
        .collect();
    let pids: Vec<i32> = sessions.iter().flat_map(|s| session_pids(*s)).collect();
    assert!(pids.len() >= 6, "agent and workload per member: {pids:?}");
    let (status, _) = api.post("/api/applications/shop/undeploy", json!({})).await;
    assert_eq!(status, 202);
    eventually(30, "every member process gone", || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    eventually(10, "the application back to Created", || async {
        let (_, app) = api.get("/api/applications/shop").await;
        (app["status"] == "Created").then_some(())
    })
    .await;
    assert_eq!(api.get("/api/applications/shop/runtime").await.0, 404);
    assert_eq!(
        api.post("/api/applications/shop/undeploy", json!({}))
            .await
            .0,
        409,
        "not deployed any more"
    );
    // The drain was graceful: the agents logged it, and their last logs are kept while their
    // directories (payload, key, files) are gone.
    let id = web[0]["memberId"].as_str().unwrap();
    let log = eventually(10, "the ended member's log kept", || async {
        crate::support::member_file(dir.path(), id, "agent.log")
            .filter(|l| l.contains("drained and stopped"))
    })
    .await;
    assert!(log.contains("drained and stopped"), "{log}");
    eventually(10, "the ended member's directory removed", || async {
        (!dir.path().join("members").join(id).exists()).then_some(())
    })
    .await;
    assert!(dir.path().join("ended").join(id).join("agent.log").exists());
    assert!(
        !dir.path()
            .join("ended")
            .join(id)
            .join("payload.json")
            .exists()
    );
}

#[tokio::test]
async fn killed_workloads_and_agents_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    deploy_grouped(&api).await;
    let web = eventually(30, "two web members active", || async {
        let a = api.active("shop", "web").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let victim = web[0]["memberId"].as_str().unwrap().to_owned();
    let agent = agent_pid(dir.path(), &victim).unwrap();
    let workload: Vec<i32> = session_pids(agent)
        .into_iter()
        .filter(|p| *p != agent)
        .collect();
    for p in &workload {
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    let replaced = eventually(30, "a replacement for the killed workload", || async {
        let a = api.active("shop", "web").await;
        (a.len() == 2 && a.iter().all(|m| m["memberId"] != victim.as_str())).then_some(a)
    })
    .await;
    eventually(10, "the agent of the killed workload gone", || async {
        (!alive(agent)).then_some(())
    })
    .await;
    // Now kill an agent: its workload must not linger, and a replacement comes.
    let victim = replaced[0]["memberId"].as_str().unwrap().to_owned();
    let agent = agent_pid(dir.path(), &victim).unwrap();
    let session = session_pids(agent);
    unsafe { libc::kill(agent, libc::SIGKILL) };
    eventually(30, "a replacement for the killed agent", || async {
        let a = api.active("shop", "web").await;
        (a.len() == 2 && a.iter().all(|m| m["memberId"] != victim.as_str())).then_some(())
    })
    .await;
    eventually(10, "nothing left of the killed agent's session", || async {
        session.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_member_sees_no_platform_secret_and_its_files_are_private() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    let mut arts = base_artifacts();
    let mut cartridge = http_cartridge("probe", proxy);
    cartridge["iaasProvider"][0]["imageId"] = json!(
        "env > env.txt; umask > umask.txt; exec python3 -m http.server $PORT --bind 127.0.0.1"
    );
    arts.push(("cartridges", cartridge));
    arts.push(("applications", json!({"applicationId": "probe", "components": {"cartridges": [
        {"type": "probe", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "p", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})));
    api.add_all(&arts).await;
    let (status, body) = api
        .post("/api/applications/probe/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let m = eventually(30, "the probe member active", || async {
        api.active("probe", "p").await.into_iter().next()
    })
    .await;
    let member_dir = dir
        .path()
        .join("members")
        .join(m["memberId"].as_str().unwrap());
    let env = std::fs::read_to_string(member_dir.join("app/env.txt")).unwrap();
    let names: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    // The server runs with NUBO_ADMIN_PASSWORD (and whatever else the test runner has).
    for k in &names {
        assert!(
            !k.starts_with("NUBO_") || *k == "NUBO_MEMBER_ID",
            "{k} reached the workload: {env}"
        );
        assert!(
            std::env::var(k).is_err()
                || ["PATH", "LANG", "LC_ALL", "TZ", "HOME", "PWD", "SHLVL", "_"].contains(k),
            "{k} of the platform's environment reached the workload"
        );
    }
    assert!(names.contains(&"PORT") && names.contains(&"NUBO_MEMBER_ID"));
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        mode(&member_dir),
        0o700,
        "the member's directory is private"
    );
    assert_eq!(mode(&member_dir.join("payload.json")), 0o600);
    assert_eq!(mode(&member_dir.join("agent.log")), 0o600);
    assert_eq!(mode(&member_dir.join("workload.log")), 0o600);
    assert_eq!(
        mode(&member_dir.join("app/env.txt")),
        0o600,
        "the workload's own files are private"
    );
    assert_eq!(
        std::fs::read_to_string(member_dir.join("app/umask.txt"))
            .unwrap()
            .trim(),
        "0077"
    );
    assert_eq!(
        mode(&dir.path().join("nubo.db")),
        0o600,
        "the store is the platform's alone"
    );
    // Nothing in the data directory is readable by another user.
    let mut todo = vec![dir.path().to_path_buf()];
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                todo.push(e.path());
            }
            if !meta.file_type().is_symlink() && !meta.file_type().is_socket() {
                seen += 1;
                assert_eq!(
                    meta.permissions().mode() & 0o077,
                    0,
                    "{} is readable by others",
                    e.path().display()
                );
            }
        }
    }
    assert!(seen > 5);
}

#[tokio::test]
async fn members_of_a_uid_range_run_as_users_of_their_own_and_cannot_read_each_other() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED members_of_a_uid_range_run_as…: needs root (the node supervisor switches users)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    let mut arts = base_artifacts();
    arts[1].1 = json!({"id": "np", "provider": "local", "partitions": [
        {"id": "p1", "property": [{"name": "runAsUidRange", "value": "61000-61099"}]},
        {"id": "p2", "property": [{"name": "runAsUidRange", "value": "61000-61099"}]}]});
    let mut cartridge = http_cartridge("iso", proxy);
    cartridge["iaasProvider"][0]["imageId"] =
        json!("id -u > uid.txt; exec python3 -m http.server $PORT --bind 127.0.0.1");
    arts.push(("cartridges", cartridge));
    arts.push(("applications", json!({"applicationId": "iso", "components": {"cartridges": [
        {"type": "iso", "cartridgeMin": 2, "cartridgeMax": 2, "subscribableInfo": {"alias": "i", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})));
    api.add_all(&arts).await;
    let (status, body) = api.post("/api/applications/iso/deploy/ap", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let members = eventually(30, "two members active", || async {
        let a = api.active("iso", "i").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let dirs: Vec<std::path::PathBuf> = members
        .iter()
        .map(|m| {
            dir.path()
                .join("members")
                .join(m["memberId"].as_str().unwrap())
        })
        .collect();
    let uids: Vec<u32> = dirs
        .iter()
        .map(|d| {
            std::fs::read_to_string(d.join("app/uid.txt"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(uids.iter().all(|u| (61000..=61099).contains(u)), "{uids:?}");
    assert_ne!(uids[0], uids[1], "a user of its own per member");
    for (d, u) in dirs.iter().zip(&uids) {
        let meta = std::fs::metadata(d).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (*u, 0o700));
    }
    // As member 0's user: its own payload yes; member 1's, the store, the members' list no.
    let as_member = |path: &std::path::Path, what: &str| {
        std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={}", uids[0]),
                &format!("--regid={}", uids[0]),
                "--clear-groups",
                what,
            ])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(
        as_member(&dirs[0].join("payload.json"), "cat"),
        "its own files"
    );
    assert!(
        !as_member(&dirs[1].join("payload.json"), "cat"),
        "another member's payload"
    );
    assert!(!as_member(&dirs[1], "ls"), "another member's directory");
    assert!(!as_member(&dir.path().join("nubo.db"), "cat"), "the store");
    assert!(
        !as_member(&dir.path().join("bus.json"), "cat"),
        "the bus credentials"
    );
    assert!(
        !as_member(&dir.path().join("members"), "ls"),
        "the list of members"
    );
}

#[tokio::test]
async fn a_workload_that_cannot_start_is_retried_with_backoff_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let mut arts = base_artifacts();
    arts.push((
        "cartridges",
        json!({"type": "broken", "category": "x", "portMapping": [{"protocol": "http", "port": 80}],
        "iaasProvider": [{"type": "local", "imageId": "echo starting; exit 7"}]}),
    ));
    arts.push(("applications", json!({"applicationId": "bad", "components": {"cartridges": [
        {"type": "broken", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "b", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})));
    api.add_all(&arts).await;
    assert_eq!(
        api.post("/api/applications/bad/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let deployed = std::time::Instant::now();
    let failures = eventually(20, "three failures in a row", || async {
        let (_, view) = api.get("/api/applications/bad/runtime").await;
        let f =
            view["applicationInstances"][0]["clusterInstances"][0]["failuresInARow"].as_u64()?;
        (f >= 3).then_some(f)
    })
    .await;
    // With backoff (0.5 s after the first failure, 1 s after the second), the third failure
    // comes 1.5 s after the first at the earliest: attempts are spaced, not dozens in a burst.
    let took = deployed.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "3 failures in {took:?}"
    );
    let seen = crate::support::members_seen(dir.path());
    let attempts = seen.iter().collect::<std::collections::BTreeSet<_>>().len() as u64;
    assert!(
        (failures..=failures + 1).contains(&attempts),
        "{attempts} attempts for {failures} failures"
    );
    let agent_log = seen
        .iter()
        .filter_map(|id| crate::support::member_file(dir.path(), id, "agent.log"))
        .collect::<String>();
    assert!(
        agent_log.contains("exited") && agent_log.contains("starting"),
        "the failure and the workload's output are logged: {agent_log}"
    );
    let (_, view) = api.get("/api/applications/bad/runtime").await;
    assert_eq!(view["applicationInstances"][0]["status"], "Created");
    assert_eq!(
        api.post("/api/applications/bad/undeploy?force=true", json!({}))
            .await
            .0,
        202
    );
    eventually(20, "the failing application undeployed", || async {
        let (_, app) = api.get("/api/applications/bad").await;
        (app["status"] == "Created").then_some(())
    })
    .await;
}

#[tokio::test]
async fn members_survive_a_server_kill_and_are_re_adopted_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    deploy_grouped(&api).await;
    let web = eventually(30, "two web members active", || async {
        let a = api.active("shop", "web").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let db = api.active("shop", "db").await;
    let before: Vec<(String, i32)> = db
        .iter()
        .chain(&web)
        .map(|m| {
            let id = m["memberId"].as_str().unwrap().to_owned();
            let pid = agent_pid(dir.path(), &id).unwrap();
            (id, pid)
        })
        .collect();
    server.kill9();
    // The members keep running without the server.
    holds(
        Duration::from_millis(500),
        "members outlive the server",
        || async { before.iter().all(|(_, p)| alive(*p)) },
    )
    .await;
    // One member dies while the server is down.
    let (dead_id, dead_pid) = before[1].clone();
    let dead_session = session_pids(dead_pid);
    unsafe { libc::kill(dead_pid, libc::SIGKILL) };
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let web_after = eventually(30, "web back to two active members", || async {
        let a = api.active("shop", "web").await;
        (a.len() == 2 && a.iter().all(|m| m["memberId"] != dead_id.as_str())).then_some(a)
    })
    .await;
    // The survivors are the same processes, re-adopted, not duplicates.
    for (id, pid) in before.iter().filter(|(id, _)| *id != dead_id) {
        assert!(alive(*pid), "{id} still runs");
        assert_eq!(
            agent_pid(dir.path(), id),
            Some(*pid),
            "{id} was re-adopted, not restarted"
        );
    }
    assert!(
        web_after
            .iter()
            .any(|m| m["memberId"] == before[2].0.as_str()),
        "the surviving web member is still in the topology"
    );
    assert_eq!(
        api.active("shop", "db").await.len(),
        1,
        "no duplicate db member"
    );
    let agents = std::fs::read_dir(dir.path().join("members"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("supervisor.json").exists())
        .count();
    assert_eq!(agents, 3, "exactly three members run");
    assert!(
        dead_session.iter().all(|p| !alive(*p)),
        "what the dead agent left was cleaned up"
    );
    // Stopping the server does not stop the application; undeploy does. A graceful one: the
    // re-adopted agents reconnected to the bus, so they get the clean-up request and drain
    // (a silent agent would only be stopped after the 30 s drain timeout).
    assert_eq!(
        api.post("/api/applications/shop/undeploy", json!({}))
            .await
            .0,
        202
    );
    eventually(20, "undeployed gracefully", || async {
        let (_, app) = api.get("/api/applications/shop").await;
        (app["status"] == "Created").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_platform_runs_on_an_external_mosquitto() {
    let Some(url) = nubo_testing::service("NUBO_TEST_MQTT_URL", "the platform on Mosquitto") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--bus-url", &url]);
    let api = Api::new(&server);
    deploy_grouped(&api).await;
    eventually(30, "two web members active over Mosquitto", || async {
        (api.active("shop", "web").await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        api.post("/api/applications/shop/undeploy", json!({}))
            .await
            .0,
        202
    );
    eventually(30, "undeployed over Mosquitto", || async {
        let (_, app) = api.get("/api/applications/shop").await;
        (app["status"] == "Created").then_some(())
    })
    .await;
}

/// A network partition names a provider this platform offers: without `--mock-iaas`, `mock` is
/// refused when the partition is added (Stratos validates partitions against the IaaS), naming
/// the providers there are.
#[tokio::test]
async fn a_partition_of_a_provider_this_platform_lacks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    assert_eq!(
        api.get("/api/iaasProviders").await,
        (
            200,
            json!({"iaasProviders": ["local", "docker", "kubernetes"]})
        )
    );
    let np = json!({"id": "np", "provider": "mock", "partitions": [{"id": "p1"}]});
    let (status, body) = api.post("/api/networkPartitions", np).await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("provider") && text.contains("--mock-iaas") && text.contains("local"),
        "{text}"
    );
}

/// Timeouts are settings: with the server's at 2 s, a workload that takes 4 s to open its port
/// is replaced, unless its cartridge sets `activationTimeout` and `portCheckTimeout` above its
/// start, and then it becomes Active.
#[tokio::test]
async fn a_slow_cartridge_with_timeouts_above_its_start_becomes_active() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--insecure-http",
            "--activation-timeout",
            "2",
            "--port-check-timeout",
            "2",
        ],
    );
    let api = Api::new(&server);
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    let command = format!("sleep 4; exec python3 {}", script.display());
    let cartridge = |ty: &str, props: Value| {
        json!({"type": ty, "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": "8080"}],
            "property": props,
            "iaasProvider": [{"type": "local", "imageId": command}]})
    };
    let sub = |ty: &str| {
        json!({"type": ty, "cartridgeMin": 1, "cartridgeMax": 1,
            "subscribableInfo": {"alias": ty, "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}})
    };
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", cartridge("patient", json!([
            {"name": "activationTimeout", "value": "20"},
            {"name": "portCheckTimeout", "value": "20"},
            {"name": "terminationTimeout", "value": "3"}]))),
        ("cartridges", cartridge("hasty", json!([]))),
        ("applications", json!({"applicationId": "slow", "components": {"cartridges": [sub("patient"), sub("hasty")]}})),
    ])
    .await;
    let (status, body) = api
        .post("/api/applications/slow/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let patient = eventually(30, "the patient cartridge Active", || async {
        api.active("slow", "patient").await.first().cloned()
    })
    .await;
    // The agent is given its timeouts in its payload.
    let payload = crate::support::member_payload(dir.path(), patient["memberId"].as_str().unwrap());
    assert_eq!(
        (
            &payload["parameters"]["PORT_CHECK_TIMEOUT"],
            &payload["parameters"]["TERMINATION_TIMEOUT"]
        ),
        (&json!("20"), &json!("3")),
        "{payload}"
    );
    // The hasty one's members never made it: each was cut off at 2 s, with the reason.
    assert!(api.active("slow", "hasty").await.is_empty());
    let (_, view) = api.get("/api/applications/slow/runtime").await;
    let text = view.to_string();
    assert!(
        text.contains("did not open within 2 s") || text.contains("not Active within"),
        "{text}"
    );
    // A value that is not a number of seconds is refused, naming the property.
    let bad = cartridge(
        "patient",
        json!([{"name": "drainTimeout", "value": "soon"}]),
    );
    let (status, body) = api
        .send(reqwest::Method::PUT, "/api/cartridges", Some(bad))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("property[0].value"), "{body}");
}

/// Health beyond open ports: a member with readiness and liveness paths becomes Active once its
/// readiness path answers; its workload stopped (`SIGSTOP`: the kernel still completes TCP
/// handshakes for it, so an open-port check would not see it) is reported unhealthy and replaced.
#[tokio::test]
async fn a_stopped_workload_is_found_unhealthy_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", json!({"type": "probed", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": "8080"}],
            "property": [{"name": "readinessPath", "value": "/ready"}, {"name": "livenessPath", "value": "/alive"}, {"name": "unhealthyTimeout", "value": "1"}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})),
        ("applications", json!({"applicationId": "probed", "components": {"cartridges": [
            {"type": "probed", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    let (status, body) = api
        .post("/api/applications/probed/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let first = eventually(30, "the member Active", || async {
        api.active("probed", "web")
            .await
            .first()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
    })
    .await;
    let payload = crate::support::member_payload(dir.path(), &first);
    assert_eq!(
        payload["parameters"]["LIVENESS_PATH"], "/alive",
        "{payload}"
    );
    // Stop the workload (the agent's child).
    let agent = crate::support::agent_pid(dir.path(), &first).unwrap();
    let out = std::process::Command::new("pgrep")
        .args(["-P", &agent.to_string()])
        .output()
        .unwrap();
    let workload: i32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("the workload's pid");
    unsafe { libc::kill(workload, libc::SIGSTOP) };
    let second = eventually(30, "replaced by a healthy member", || async {
        let a = api.active("probed", "web").await;
        (a.len() == 1 && a[0]["memberId"] != first.as_str())
            .then(|| a[0]["memberId"].as_str().unwrap().to_owned())
    })
    .await;
    assert_ne!(second, first);
    assert!(
        !crate::support::alive(workload),
        "the stopped workload was killed with its member"
    );
}

/// Extension hooks, as Stratos' agent runs them: `<extensionsDir>/<Event>.sh` with the member's
/// values under Stratos' names; a failing start hook fails the member, with the hook's words.
#[tokio::test]
async fn extension_hooks_run_with_stratos_values_and_a_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let hooks = tempfile::tempdir().unwrap();
    let seen = hooks.path().join("seen");
    let good = hooks.path().join("good");
    let bad = hooks.path().join("bad");
    std::fs::create_dir(&good).unwrap();
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        good.join("InstanceStartedEvent.sh"),
        format!(
            "echo \"$EVENT $STRATOS_MEMBER_ID $STRATOS_CARTRIDGE_ALIAS $STRATOS_APPLICATION_PATH\" >> {}\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::write(
        good.join("InstanceActivatedEvent.sh"),
        format!("echo \"$EVENT $STRATOS_PORT\" >> {}\n", seen.display()),
    )
    .unwrap();
    std::fs::write(
        bad.join("InstanceStartedEvent.sh"),
        "echo 'cannot set up the cache' >&2\nexit 1\n",
    )
    .unwrap();
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    let cartridge = |ty: &str, ext: &std::path::Path| {
        json!({"type": ty, "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": "8080"}],
            "property": [{"name": "extensionsDir", "value": ext.display().to_string()}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})
    };
    let sub = |ty: &str| {
        json!({"type": ty, "cartridgeMin": 1, "cartridgeMax": 1,
            "subscribableInfo": {"alias": ty, "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}})
    };
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", cartridge("hooked", &good)),
        ("cartridges", cartridge("broken", &bad)),
        ("applications", json!({"applicationId": "hooks", "components": {"cartridges": [sub("hooked"), sub("broken")]}})),
    ])
    .await;
    let (status, body) = api
        .post("/api/applications/hooks/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let member = eventually(30, "the hooked member Active", || async {
        api.active("hooks", "hooked")
            .await
            .first()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
    })
    .await;
    let lines = eventually(10, "both hooks ran", || async {
        let text = std::fs::read_to_string(&seen).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    })
    .await;
    let mut lines = lines.lines();
    let started = lines.next().unwrap();
    assert!(
        started.starts_with(&format!("InstanceStartedEvent {member} hooked /")),
        "{started}"
    );
    assert!(
        lines.next().unwrap().starts_with("InstanceActivatedEvent "),
        "activated hook"
    );
    // The broken cartridge's start hook fails: its members fail, saying why.
    eventually(30, "the hook's failure shown", || async {
        let (_, view) = api.get("/api/applications/hooks/runtime").await;
        view.to_string()
            .contains("cannot set up the cache")
            .then_some(())
    })
    .await;
    assert!(api.active("hooks", "broken").await.is_empty());
}

/// The policies and network partition the `local` tests deploy on: `asp` (memory, 95 %), `np`
/// (one partition `p1`), `dp`, and the application policy `ap`.
pub(crate) fn basics() -> Vec<(&'static str, Value)> {
    vec![
        (
            "autoscalingPolicies",
            json!({"id": "asp", "loadThresholds": {"memoryConsumption": {"threshold": 95}}}),
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
    ]
}
