//! Members on a node supervisor in another process (`nubo node`), commanded through the bus: the
//! controller's process owns no member, so killing it orphans nothing, and a new one finds the
//! members in the node's inventory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{
    Api, ServerProcess, agent_pid, alive, eventually, free_port, holds, shared_secrets_key,
    web_app_artifacts,
};

/// A `nubo node` process in its own process group; killed (with its members) when dropped.
pub struct NodeProcess {
    child: Option<Child>,
    dir: PathBuf,
}

impl NodeProcess {
    /// A node on the bus `credentials` (a bus credentials file) names.
    pub fn start(credentials: &str, name: &str, dir: &Path) -> Self {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(env!("CARGO_BIN_EXE_nubo"))
            .args([
                "node",
                "--bus-credentials",
                credentials,
                "--name",
                name,
                "--data-dir",
            ])
            .arg(dir)
            .env("NUBO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn nubo node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("nubo: node") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the node did not start within 30 s");
        NodeProcess {
            child: Some(child),
            dir: dir.to_owned(),
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
        nubo_node::kill_all(&self.dir.join("members"));
    }
}

fn member_ids(members: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = members
        .iter()
        .map(|m| m["memberId"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn members_run_on_a_node_supervisor_in_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    let args = [
        "--insecure-http",
        "--components",
        "api,controller,autoscaler,event-processor,lb",
        "--node",
        "n1",
    ];
    let mut server = ServerProcess::start_with(dir.path(), &args);
    let mut node = NodeProcess::start(&server.bus_credentials, "n1", node_dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&web_app_artifacts("far", 2, 2, proxy)).await;
    assert_eq!(
        api.post("/api/applications/far/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let before = eventually(40, "two members Active", || async {
        let a = api.active("far", "web").await;
        (a.len() == 2).then(|| member_ids(&a))
    })
    .await;
    // They run under the node's directory, not the server's.
    for id in &before {
        assert!(
            agent_pid(node_dir.path(), id).is_some_and(alive),
            "{id} on the node"
        );
        assert!(
            agent_pid(dir.path(), id).is_none(),
            "{id} not in the server"
        );
    }
    let through_lb = || async {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{proxy}/"))
            .header("host", "far.web.localhost")
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    eventually(20, "served through the load balancer", || async {
        (through_lb().await == 200).then_some(())
    })
    .await;

    // kill -9 of the controller's process: the node keeps the members; a new controller finds
    // them in the node's inventory and starts nothing.
    server.kill9();
    holds(
        Duration::from_millis(500),
        "the members outlive the controller",
        || async {
            before
                .iter()
                .all(|id| agent_pid(node_dir.path(), id).is_some_and(alive))
        },
    )
    .await;
    let server = ServerProcess::start_with(dir.path(), &args);
    let api = Api::new(&server);
    eventually(30, "the same two members Active again", || async {
        (member_ids(&api.active("far", "web").await) == before).then_some(())
    })
    .await;
    holds(Duration::from_secs(3), "nothing started twice", || async {
        api.members("far").await.len() == 2
    })
    .await;

    // kill -9 of the node: its members run on (own sessions); one dies meanwhile. The restarted
    // node re-adopts the living one and reports the dead one, which the controller replaces.
    let victim = before[0].clone();
    let victim_pid = agent_pid(node_dir.path(), &victim).unwrap();
    node.kill9();
    unsafe { libc::kill(victim_pid, libc::SIGKILL) };
    let survivor_pid = agent_pid(node_dir.path(), &before[1]).unwrap();
    assert!(alive(survivor_pid));
    let _node = NodeProcess::start(&server.bus_credentials, "n1", node_dir.path());
    let after = eventually(
        40,
        "the dead member replaced, the living one kept",
        || async {
            let a = member_ids(&api.active("far", "web").await);
            (a.len() == 2 && !a.contains(&victim) && a.contains(&before[1])).then_some(a)
        },
    )
    .await;
    assert_eq!(
        agent_pid(node_dir.path(), &before[1]),
        Some(survivor_pid),
        "re-adopted, not restarted"
    );
    assert!(
        after
            .iter()
            .all(|id| agent_pid(node_dir.path(), id).is_some())
    );
    eventually(20, "still served", || async {
        (through_lb().await == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_api_server_without_a_controller_drives_the_controller_of_another() {
    // Two servers on one store and one bus: one runs the controller and no API, the other the API
    // and the node supervisor that runs the members. Deploying, reading the runtime view and undeploying through the second work:
    // its commands go through the bus, its reads come from the store.
    let dir_c = tempfile::tempdir().unwrap();
    let dir_a = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", shared.path().join("nubo.db").display());
    let key = shared_secrets_key(&store);
    // The controller's process serves no API at all.
    let controller = ServerProcess::start_with(
        dir_c.path(),
        &[
            "--insecure-http",
            "--store",
            &store,
            "--secrets-key",
            &key,
            "--components",
            "controller,autoscaler,event-processor,lb",
            "--node",
            "n2",
        ],
    );
    assert!(
        controller.url.is_empty(),
        "no API in the controller's process"
    );
    let api_only = ServerProcess::start_with(
        dir_a.path(),
        &[
            "--insecure-http",
            "--store",
            &store,
            "--secrets-key",
            &key,
            "--bus-credentials",
            &controller.bus_credentials,
            "--components",
            "api,node",
            "--node",
            "n2",
        ],
    );
    let api = Api::new(&api_only);
    let proxy = free_port();
    api.add_all(&web_app_artifacts("split", 2, 2, proxy)).await;
    let (code, answer) = api
        .post("/api/applications/split/deploy/ap", json!({}))
        .await;
    assert_eq!(code, 202, "{answer}");
    let (_, app) = api.get("/api/applications/split").await;
    assert!(
        app["status"] == "Deployed" || app["status"] == "Active",
        "{app}"
    );
    let (code, _) = api
        .post("/api/applications/split/deploy/ap", json!({}))
        .await;
    assert_eq!(code, 409, "already deployed, as the store says");
    eventually(
        40,
        "two members Active, seen through the API-only server",
        || async { (api.active("split", "web").await.len() == 2).then_some(()) },
    )
    .await;
    // The members run on the node supervisor of the API's server, not in the controller's.
    for (_, m) in api.members("split").await {
        let id = m["memberId"].as_str().unwrap();
        assert!(agent_pid(dir_a.path(), id).is_some_and(alive), "{id}");
        assert!(agent_pid(dir_c.path(), id).is_none(), "{id}");
    }
    // Their output reaches the API-only server over the bus, owned as the controller's topology
    // says.
    eventually(
        30,
        "each member's first line read through the API-only server",
        || async {
            let (_, lines) = api.get("/api/applications/split/logs").await;
            let starts: std::collections::BTreeSet<&str> = lines
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| {
                    l["text"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("slow: serving on")
                })
                .filter_map(|l| l["memberId"].as_str())
                .collect();
            (starts.len() == 2).then_some(())
        },
    )
    .await;
    let (code, answer) = api
        .post("/api/applications/split/undeploy", json!({}))
        .await;
    assert_eq!(code, 202, "{answer}");
    eventually(40, "undeployed", || async {
        let (_, app) = api.get("/api/applications/split").await;
        (app["status"] == "Created").then_some(())
    })
    .await;
    drop(controller);
}

#[tokio::test]
async fn a_server_killed_in_the_middle_of_a_deploy_converges_after_a_restart() {
    // kill -9 a few milliseconds after a deploy of four members is accepted, while the members are
    // being started; after a restart exactly four members run: none lost, none twice.
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&web_app_artifacts("crash", 4, 4, proxy)).await;
    assert_eq!(
        api.post("/api/applications/crash/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    server.kill9();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    eventually(40, "four members Active", || async {
        (api.active("crash", "web").await.len() == 4).then_some(())
    })
    .await;
    // Settled: four members known, four agents running, no strays.
    let members_dir = dir.path().join("members");
    holds(
        Duration::from_secs(3),
        "4 members known and 4 running",
        || async {
            api.members("crash").await.len() == 4 && nubo_node::stop_all_pending(&members_dir) == 4
        },
    )
    .await;
}
