//! Containers (issue 14): the `docker` provider on a real Docker daemon (`NUBO_TEST_DOCKER_HOST`,
//! which the full test run starts), with an image built from busybox (no registry is reachable).

use serde_json::{Value, json};

use crate::support::{Api, ServerProcess, eventually, free_port};

/// `docker -H HOST ARGS…`: its standard output (panics on failure).
fn docker(host: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .output()
        .expect("the docker command");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// An image of busybox's httpd serving `text` on `$PORT`, logging each request: a root file
/// system of one static binary, imported (built here: no registry).
fn build_image(host: &str, tag: &str, text: &str) {
    build_image_serving(host, tag, text, "/www");
}

/// The same, serving the directory `serve` of the container.
fn build_image_serving(host: &str, tag: &str, text: &str, serve: &str) {
    build_image_running(
        host,
        tag,
        text,
        &format!("exec /bin/httpd -f -v -p $PORT -h {serve}"),
    );
}

/// An image of busybox (its `sh`, `httpd`, `head`, `tr` and `sleep`) running the shell command
/// `cmd`, with `text` in `/www/index.html`.
fn build_image_running(host: &str, tag: &str, text: &str, cmd: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
    for link in ["sh", "httpd", "head", "tr", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(link)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), text).unwrap();
    let tar = dir.path().join("root.tar");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    docker(
        host,
        &[
            "import",
            "--change",
            &format!(r#"CMD ["/bin/sh", "-c", "{cmd}"]"#),
            tar.to_str().unwrap(),
            tag,
        ],
    );
}

/// The containers of an application's members on `host` (tests share the engine).
fn member_containers(host: &str, app: &str) -> Vec<String> {
    let label = format!("label=io.nubo.application={app}");
    docker(
        host,
        &["ps", "-a", "--filter", &label, "--format", "{{.Names}}"],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// Removes the containers of an application's members when dropped, whatever happened (the
/// server's members are killed by process at the end of a test; their containers are not).
struct Containers<'a> {
    host: &'a str,
    application: &'a str,
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        let label = format!("label=io.nubo.application={}", self.application);
        let ids = std::process::Command::new("docker")
            .args(["-H", self.host, "ps", "-aq", "--filter", &label])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for id in ids.lines() {
            let _ = std::process::Command::new("docker")
                .args(["-H", self.host, "rm", "-f", id])
                .output();
        }
    }
}

/// A container application: `min` members of a cartridge `{app}-box` running `image` (behind
/// proxy port `proxy`, with the cartridge's `props` and the subscription's extra fields `sub`),
/// on a `docker` network partition `{app}-np` of `partitions` (`[{"id", "property"}]`),
/// round-robin; deployed with the application policy `{app}-ap` ([`deploy`]).
fn docker_app(
    app: &str,
    image: &str,
    partitions: Value,
    proxy: Option<u16>,
    min: u32,
    props: Value,
    sub: Value,
) -> Vec<(&'static str, Value)> {
    let ids: Vec<Value> = partitions
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!({"id": p["id"]}))
        .collect();
    let mut port = json!({"name": "http", "protocol": "http", "port": 8080});
    if let Some(proxy) = proxy {
        port["proxyPort"] = json!(proxy);
    }
    let mut info = json!({"alias": "web", "autoscalingPolicy": format!("{app}-asp"),
        "deploymentPolicy": format!("{app}-dp")});
    for (k, v) in sub.as_object().into_iter().flatten() {
        info[k] = v.clone();
    }
    vec![
        (
            "autoscalingPolicies",
            json!({"id": format!("{app}-asp"), "loadThresholds": {"memoryConsumption": {"threshold": 95}}}),
        ),
        (
            "networkPartitions",
            json!({"id": format!("{app}-np"), "provider": "docker", "partitions": partitions}),
        ),
        (
            "deploymentPolicies",
            json!({"id": format!("{app}-dp"), "networkPartitions": [
            {"id": format!("{app}-np"), "partitionAlgo": "round-robin", "partitions": ids}]}),
        ),
        (
            "applicationPolicies",
            json!({"id": format!("{app}-ap"), "algorithm": "one-after-another",
            "networkPartitions": [format!("{app}-np")]}),
        ),
        (
            "cartridges",
            json!({"type": format!("{app}-box"), "category": "framework", "host": "localhost",
            "portMapping": [port], "property": props,
            "iaasProvider": [{"type": "docker", "imageId": image}]}),
        ),
        (
            "applications",
            json!({"applicationId": app, "components": {"cartridges": [
            {"type": format!("{app}-box"), "cartridgeMin": min, "cartridgeMax": min, "subscribableInfo": info}]}}),
        ),
    ]
}

/// One partition `p1` on the engine `endpoint`.
fn on_engine(endpoint: &str) -> Value {
    json!([{"id": "p1", "property": [{"name": "endpoint", "value": endpoint}]}])
}

/// Deploys a [`docker_app`].
async fn deploy(api: &Api, app: &str) {
    let (status, body) = api
        .post(
            &format!("/api/applications/{app}/deploy/{app}-ap"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}

/// Undeploys `app` and waits until it is gone and no container of it is left on `host`.
async fn undeploy_leaving_no_container(api: &Api, host: &str, app: &str) {
    let (status, body) = api
        .post(&format!("/api/applications/{app}/undeploy"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(60, "undeployed, no container left", || async {
        let gone = api.get(&format!("/api/applications/{app}/runtime")).await.0 == 404;
        (gone && member_containers(host, app).is_empty()).then_some(())
    })
    .await;
}

/// On Docker Engine.
#[tokio::test]
async fn a_container_application_is_served_and_leaves_no_container_on_docker() {
    if let Some(host) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker") {
        served_and_cleaned(host, "boxed", None).await;
    }
}

/// The same on Podman, through its Docker-compatible API, each container in a user namespace of
/// its own (the partition's `userNamespace: auto`).
#[tokio::test]
async fn a_container_application_is_served_and_leaves_no_container_on_podman() {
    if let Some(host) = nubo_testing::service("NUBO_TEST_PODMAN_HOST", "containers on Podman") {
        served_and_cleaned(host, "podded", Some("auto")).await;
    }
}

/// An application of two members in containers: Active once their published ports answer,
/// served through the load balancer, unprivileged with the cartridge's memory limit (and, with
/// `userns`, root in the container is no user of the host), their output in `nubo logs`;
/// undeployed, no container is left.
async fn served_and_cleaned(host: String, app: &str, userns: Option<&str>) {
    build_image(&host, "nubo-test/hello:1", "hello from a container");
    let _cleanup = Containers {
        host: &host,
        application: app,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    let mut partitions = on_engine(&host);
    if let Some(u) = userns {
        partitions[0]["property"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "userNamespace", "value": u}));
    }
    api.add_all(&docker_app(
        app,
        "nubo-test/hello:1",
        partitions,
        Some(proxy),
        2,
        json!([{"name": "memoryLimit", "value": "64m"}, {"name": "unhealthyTimeout", "value": "1"}]),
        json!({}),
    ))
    .await;
    deploy(&api, app).await;
    let members: Vec<Value> = eventually(60, "two container members Active", || async {
        let m = api.active(app, "web").await;
        (m.len() == 2).then_some(m)
    })
    .await;
    let host_name = format!("{app}.web.localhost");
    let body = eventually(20, "served through the load balancer", || {
        crate::agent::through(proxy, &host_name)
    })
    .await;
    assert_eq!(body, "hello from a container");
    // One container per member, named for it, unprivileged, limited, published on loopback only.
    let names = member_containers(&host, app);
    assert_eq!(names.len(), 2, "{names:?}");
    let id = members[0]["memberId"].as_str().unwrap();
    let name = names
        .iter()
        .find(|n| n.ends_with(id))
        .unwrap_or_else(|| panic!("{id} in {names:?}"));
    let inspect: Value = serde_json::from_str(&docker(&host, &["inspect", name])).unwrap();
    let hc = &inspect[0]["HostConfig"];
    // No capability at all (Docker says `CapDrop: ["ALL"]`, Podman lists each one): read from
    // the host, in the status of the container's first process (an `exec` would leave Podman's
    // monitor of the session behind for minutes).
    let pid = docker(&host, &["inspect", "--format", "{{.State.Pid}}", name]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let caps = status
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or_default()
        .to_owned();
    assert!(caps.ends_with("0000000000000000"), "{caps}");
    // Its user ids: the host's (no user namespace), or a private range of its own, where its
    // root is no user of the host.
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let first: Vec<u64> = uid_map
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    if userns.is_some() {
        assert!(
            first[0] == 0 && first[1] != 0 && first[2] < 1 << 20,
            "root inside maps to a high id outside: {uid_map}"
        );
    } else {
        assert_eq!(first, [0, 0, 4294967295], "{uid_map}");
    }
    assert_eq!(hc["Memory"], json!(64 << 20), "{hc}");
    assert_eq!(hc["NetworkMode"], "bridge");
    assert_eq!(hc["Privileged"], false);
    assert!(
        hc["SecurityOpt"].to_string().contains("no-new-privileges"),
        "{hc}"
    );
    let bound = hc["PortBindings"]["8080/tcp"][0].clone();
    assert_eq!(bound["HostIp"], "127.0.0.1", "{hc}");
    let port = members[0]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        bound["HostPort"],
        port.to_string(),
        "published on the member's port"
    );
    // Its output reaches `nubo logs` (busybox httpd logs each answer on stderr).
    eventually(30, "a request in the members' logs", || async {
        let (_, lines) = api.get(&format!("/api/applications/{app}/logs")).await;
        lines
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| {
                l["stream"] == "stderr" && l["text"].as_str().unwrap_or("").contains("response:200")
            })
            .then_some(())
    })
    .await;
    // An agent killed (`kill -9`): its member is replaced, and the container it left is removed.
    let victim = members[1]["memberId"].as_str().unwrap().to_owned();
    let agent = crate::support::agent_pid(dir.path(), &victim).expect("the agent's pid");
    unsafe { libc::kill(agent, libc::SIGKILL) };
    eventually(60, "replaced, and its container gone", || async {
        let active = api.active(app, "web").await;
        let names = member_containers(&host, app);
        (active.len() == 2
            && active.iter().all(|m| m["memberId"] != victim.as_str())
            && names.len() == 2
            && !names.iter().any(|n| n.ends_with(&victim)))
        .then_some(())
    })
    .await;
    // A paused container (the engine still accepts connections on its published port, so a
    // port check would not see it) is found unhealthy from the engine's pause event, and its
    // member replaced.
    let paused = members[0]["memberId"].as_str().unwrap().to_owned();
    let name = member_containers(&host, app)
        .into_iter()
        .find(|n| n.ends_with(&paused))
        .expect("the member's container");
    docker(&host, &["pause", &name]);
    eventually(
        60,
        "the paused member replaced, its container gone",
        || async {
            let active = api.active(app, "web").await;
            let names = member_containers(&host, app);
            (active.len() == 2
                && active.iter().all(|m| m["memberId"] != paused.as_str())
                && names.len() == 2
                && !names.iter().any(|n| n.ends_with(&paused)))
            .then_some(())
        },
    )
    .await;
    // Undeployed: the containers are stopped and removed.
    undeploy_leaving_no_container(&api, &host, app).await;
}

/// Which images run is the platform administrator's: a `docker` network partition (its engine,
/// whose socket is the host's root, and its `allowedImages`) is the super tenant admin's alone,
/// and a deployment whose image a partition does not allow is refused, naming both.
#[tokio::test]
async fn only_the_administrator_s_partitions_and_allowed_images_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let np = |id: &str, allowed: &str| {
        json!({"id": id, "provider": "docker", "partitions": [{"id": "p1", "property": [
            {"name": "endpoint", "value": "unix:///var/run/docker.sock"},
            {"name": "allowedImages", "value": allowed}]}]})
    };
    // A tenant's admin may not define one.
    let t = json!({"admin": "alice", "firstName": "A", "lastName": "A", "adminPassword": "s3cret!", "tenantDomain": "a.com", "email": "alice@a.com", "active": "true"});
    assert_eq!(api.post("/api/tenants", t).await.0, 201);
    let alice = Api::as_user(&server, "alice@a.com", "s3cret!");
    let (status, body) = alice.post("/api/networkPartitions", np("mine", "*")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("docker"), "{body}");
    api.add_all(&[
        ("networkPartitions", np("engine", "registry.local/approved/*")),
        ("autoscalingPolicies", json!({"id": "asp", "loadThresholds": {"memoryConsumption": {"threshold": 95}}})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "engine", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["engine"]})),
        ("cartridges", json!({"type": "rogue", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
            "iaasProvider": [{"type": "docker", "imageId": "registry.local/other/miner:1"}]})),
        ("applications", json!({"applicationId": "rogue", "components": {"cartridges": [
            {"type": "rogue", "cartridgeMin": 1, "cartridgeMax": 1,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    let (status, body) = api
        .post("/api/applications/rogue/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("registry.local/other/miner:1") && text.contains("allowedImages"),
        "{text}"
    );
}

/// A container member serves its application's git repository, mounted at `/app`, and an update
/// (Stratos' webhook) reaches it in place.
#[tokio::test]
async fn a_container_serves_its_git_artifacts_and_their_update() {
    let Some(host) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker") else {
        return;
    };
    build_image_serving(&host, "nubo-test/app:1", "unused", "/app");
    let _cleanup = Containers {
        host: &host,
        application: "gitbox",
    };
    let dir = tempfile::tempdir().unwrap();
    let git = crate::gitserver::GitServer::start(&dir.path().join("git"), "u", "p").await;
    let site = git.repository(
        "site.git",
        &[("index.html", "version 1")],
        &dir.path().join("work"),
    );
    let server = ServerProcess::start(&dir.path().join("nubo"));
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&docker_app(
        "gitbox",
        "nubo-test/app:1",
        on_engine(&host),
        Some(proxy),
        1,
        json!([]),
        json!({"artifactRepository": {"repoUrl": format!("{}/site.git", git.url)}}),
    ))
    .await;
    deploy(&api, "gitbox").await;
    let get = || crate::agent::through(proxy, "gitbox.web.localhost");
    let v1 = eventually(60, "version 1 from the container", || async { get().await }).await;
    assert_eq!(v1, "version 1");
    git.push(&site, "site.git", &[("index.html", "version 2")], "v2");
    let (status, body) = api
        .post(
            "/api/repo/notify",
            json!({"repository": {"url": format!("{}/site.git", git.url)}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(30, "version 2 from the container", || async {
        get().await.filter(|b| b == "version 2")
    })
    .await;
    undeploy_leaving_no_container(&api, &host, "gitbox").await;
}

/// A partition whose engine does not answer: its members fail to start, and after two in a row
/// new members go to the partition still alive; the application ends with its members there.
#[tokio::test]
async fn members_go_to_the_partition_whose_engine_answers() {
    let Some(host) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker") else {
        return;
    };
    build_image(&host, "nubo-test/hello:1", "hello from a container");
    let _cleanup = Containers {
        host: &host,
        application: "survivor",
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let dead = format!("unix://{}/no-engine.sock", dir.path().display());
    api.add_all(&docker_app(
        "survivor",
        "nubo-test/hello:1",
        json!([
            {"id": "dead", "property": [{"name": "endpoint", "value": dead}]},
            {"id": "live", "property": [{"name": "endpoint", "value": host}]}]),
        None,
        2,
        json!([]),
        json!({}),
    ))
    .await;
    deploy(&api, "survivor").await;
    let active = eventually(60, "two members Active in the live partition", || async {
        let a = api.active("survivor", "web").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    assert!(
        active.iter().all(|m| m["partitionId"] == "live"),
        "{active:?}"
    );
    undeploy_leaving_no_container(&api, &host, "survivor").await;
}

/// Distributed: the controller's server has no node of its own; `nubo node` in another process
/// runs the container members' agents, which drive the engine.
#[tokio::test]
async fn a_node_supervisor_in_another_process_runs_container_members() {
    let Some(host) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker") else {
        return;
    };
    build_image(&host, "nubo-test/hello:1", "hello from a container");
    let _cleanup = Containers {
        host: &host,
        application: "afar",
    };
    let dir = tempfile::tempdir().unwrap();
    let node_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--insecure-http",
            "--components",
            "api,controller,autoscaler,event-processor,lb",
            "--node",
            "n1",
        ],
    );
    let _node = crate::node::NodeProcess::start(&server.bus_credentials, "n1", node_dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&docker_app(
        "afar",
        "nubo-test/hello:1",
        on_engine(&host),
        Some(proxy),
        2,
        json!([]),
        json!({}),
    ))
    .await;
    deploy(&api, "afar").await;
    let members = eventually(60, "two container members Active", || async {
        let m = api.active("afar", "web").await;
        (m.len() == 2).then_some(m)
    })
    .await;
    // Their agents run under the node's directory.
    for m in &members {
        let id = m["memberId"].as_str().unwrap();
        assert!(
            crate::support::agent_pid(node_dir.path(), id).is_some(),
            "{id} on the node"
        );
    }
    let body = eventually(20, "served through the load balancer", || {
        crate::agent::through(proxy, "afar.web.localhost")
    })
    .await;
    assert_eq!(body, "hello from a container");
    undeploy_leaving_no_container(&api, &host, "afar").await;
}

/// An engine on TCP with TLS (both ways checked): the partition gives the authority and the
/// client's certificate and key in place (PEM; the key sealed in the store, never served, in
/// clear in no file once its members are gone), and its member's container is removed with them
/// after its agent is killed; a tcp:// engine without them is refused by the agent, which says
/// what is missing.
#[tokio::test]
async fn an_engine_on_tcp_is_reached_with_its_tls_files() {
    let Some(host) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker") else {
        return;
    };
    let Some(url) =
        nubo_testing::service("NUBO_TEST_DOCKER_TLS_URL", "containers on Docker over TLS")
    else {
        return;
    };
    let Some(tls) =
        nubo_testing::service("NUBO_TEST_DOCKER_TLS_DIR", "containers on Docker over TLS")
    else {
        return;
    };
    build_image(&host, "nubo-test/hello-tls:1", "hello over tls");
    let _cleanup = Containers {
        host: &host,
        application: "sealed",
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    let pem = |f: &str| std::fs::read_to_string(format!("{tls}/{f}")).unwrap();
    let key = pem("client.key");
    let key_line = key.lines().nth(1).unwrap().to_owned();
    let tls_files = json!([{"id": "p1", "property": [{"name": "endpoint", "value": url},
        {"name": "tlsCa", "value": pem("ca.pem")},
        {"name": "tlsCert", "value": pem("client.pem")},
        {"name": "tlsKey", "value": key}]}]);
    let image = "nubo-test/hello-tls:1";
    let mut artifacts = docker_app(
        "sealed",
        image,
        tls_files,
        Some(proxy),
        1,
        json!([]),
        json!({}),
    );
    artifacts.extend(docker_app(
        "bare",
        image,
        on_engine(&url),
        None,
        1,
        json!([]),
        json!({}),
    ));
    api.add_all(&artifacts).await;
    deploy(&api, "sealed").await;
    deploy(&api, "bare").await;
    let body = eventually(60, "served from the engine on TCP", || {
        crate::agent::through(proxy, "sealed.web.localhost")
    })
    .await;
    assert_eq!(body, "hello over tls");
    // The key is never served.
    let (_, np) = api.get("/api/networkPartitions/sealed-np").await;
    assert!(
        !np.to_string().contains("tlsKey") && np.to_string().contains("tlsCert"),
        "{np}"
    );
    // The agent killed: its member is replaced, and its container removed with the key given
    // in place.
    let victim = api.active("sealed", "web").await[0]["memberId"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = crate::support::agent_pid(dir.path(), &victim).expect("the agent's pid");
    unsafe { libc::kill(agent, libc::SIGKILL) };
    eventually(60, "replaced, and its container gone", || async {
        let active = api.active("sealed", "web").await;
        let names = member_containers(&host, "sealed");
        (active.len() == 1
            && active[0]["memberId"] != victim.as_str()
            && names.len() == 1
            && !names.iter().any(|n| n.ends_with(&victim)))
        .then_some(())
    })
    .await;
    eventually(
        60,
        "the engine without TLS files refused, saying why",
        || async {
            let (_, view) = api.get("/api/applications/bare/runtime").await;
            view.to_string().contains("tlsCa").then_some(())
        },
    )
    .await;
    undeploy_leaving_no_container(&api, &host, "sealed").await;
    eventually(
        30,
        "the key in clear in no file once its members are gone",
        || async {
            crate::agent::files_containing(dir.path(), key_line.as_bytes())
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// The ids and names of an application's containers on `host`, sorted.
fn container_ids(host: &str, app: &str) -> Vec<String> {
    let label = format!("label=io.nubo.application={app}");
    let mut ids: Vec<String> = docker(
        host,
        &[
            "ps",
            "-a",
            "--filter",
            &label,
            "--format",
            "{{.ID}} {{.Names}}",
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    ids.sort();
    ids
}

/// `docker kill` of a member's container under load: the member is replaced and no client
/// request fails. Then the server is killed and started again: the members' containers are
/// adopted (the same containers, none started twice). Then the server is killed with every
/// agent: started again, it removes their containers and replaces their members.
#[tokio::test]
async fn a_killed_container_is_replaced_with_no_failed_request_and_a_restarted_server_adopts_the_rest()
 {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(host) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker") else {
        return;
    };
    build_image(&host, "nubo-test/hello:1", "hello from a container");
    let _cleanup = Containers {
        host: &host,
        application: "sturdy",
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&docker_app(
        "sturdy",
        "nubo-test/hello:1",
        on_engine(&host),
        Some(proxy),
        2,
        json!([]),
        json!({}),
    ))
    .await;
    deploy(&api, "sturdy").await;
    let members = eventually(60, "two container members Active", || async {
        let m = api.active("sturdy", "web").await;
        (m.len() == 2).then_some(m)
    })
    .await;
    eventually(20, "served through the load balancer", || {
        crate::agent::through(proxy, "sturdy.web.localhost")
    })
    .await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = crate::agent::clients(proxy, "sturdy.web.localhost", 4, stop.clone());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let victim = members[0]["memberId"].as_str().unwrap().to_owned();
    docker(&host, &["kill", &format!("nubo-{victim}")]);
    let after = eventually(60, "replaced, its container gone", || async {
        let active = api.active("sturdy", "web").await;
        let names = member_containers(&host, "sturdy");
        (active.len() == 2
            && active.iter().all(|m| m["memberId"] != victim.as_str())
            && names.len() == 2
            && !names.iter().any(|n| n.ends_with(&victim)))
        .then_some(active)
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = 0;
    for c in load {
        failed += c.await.unwrap().0;
    }
    assert_eq!(failed, 0, "failed requests while a container was killed");
    // The server killed (its members' agents outlive it) and started again.
    let before = container_ids(&host, "sturdy");
    let mut ids: Vec<&str> = after
        .iter()
        .map(|m| m["memberId"].as_str().unwrap())
        .collect();
    ids.sort();
    server.kill9();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    eventually(60, "the same two members Active again", || async {
        let mut now: Vec<String> = api
            .active("sturdy", "web")
            .await
            .iter()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
            .collect();
        now.sort();
        (now == ids).then_some(())
    })
    .await;
    let body = eventually(20, "served after the restart", || {
        crate::agent::through(proxy, "sturdy.web.localhost")
    })
    .await;
    assert_eq!(body, "hello from a container");
    crate::support::holds(
        std::time::Duration::from_secs(2),
        "the same containers, none started twice",
        || async { container_ids(&host, "sturdy") == before },
    )
    .await;
    // The server killed with every agent (a host's crash, say): started again, it removes the
    // containers the dead agents left, and their members are replaced.
    let mut server = server;
    server.kill9();
    for id in &ids {
        let pid = crate::support::agent_pid(dir.path(), id).expect("the agent's pid");
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    eventually(60, "replaced, the dead agents' containers gone", || async {
        let active = api.active("sturdy", "web").await;
        let names = member_containers(&host, "sturdy");
        (active.len() == 2
            && active
                .iter()
                .all(|m| !ids.iter().any(|i| m["memberId"] == *i))
            && names.len() == 2
            && !names.iter().any(|n| ids.iter().any(|i| n.ends_with(*i))))
        .then_some(())
    })
    .await;
    undeploy_leaving_no_container(&api, &host, "sturdy").await;
}

/// A door to an engine's socket: it forwards every connection to the engine until it is shut,
/// when it cuts them all and stops answering, as a stopped engine does (the engines themselves
/// are shared by the run's tests).
struct Door {
    shut: tokio::sync::watch::Sender<bool>,
    path: std::path::PathBuf,
}

impl Door {
    fn open(path: &std::path::Path, engine: &str) -> Door {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let engine = engine.trim_start_matches("unix://").to_owned();
        let (shut, rx) = tokio::sync::watch::channel(false);
        let mut stop = rx.clone();
        tokio::spawn(async move {
            loop {
                let (mut a, _) = tokio::select! {
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => return },
                    _ = stop.changed() => return,
                };
                let engine = engine.clone();
                let mut stop = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut b) = tokio::net::UnixStream::connect(&engine).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Door {
            shut,
            path: path.to_owned(),
        }
    }

    fn shut(&self) {
        let _ = self.shut.send(true);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Two engines, dockerd and Podman, as two partitions (round-robin): the members spread across
/// both. Podman stops answering: its member is replaced on dockerd. When it answers again, the
/// container its member left there is removed.
#[tokio::test]
async fn members_spread_over_two_engines_and_leave_the_one_that_stops() {
    let Some(dockerd) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker")
    else {
        return;
    };
    let Some(podman) = nubo_testing::service("NUBO_TEST_PODMAN_HOST", "containers on Podman")
    else {
        return;
    };
    build_image(&dockerd, "nubo-test/hello:1", "hello from a container");
    build_image(&podman, "nubo-test/hello:1", "hello from a container");
    let _on_dockerd = Containers {
        host: &dockerd,
        application: "spread",
    };
    let _on_podman = Containers {
        host: &podman,
        application: "spread",
    };
    let dir = tempfile::tempdir().unwrap();
    let door_path = dir.path().join("podman-door.sock");
    let door = Door::open(&door_path, &podman);
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    api.add_all(&docker_app(
        "spread",
        "nubo-test/hello:1",
        json!([
            {"id": "dockerd", "property": [{"name": "endpoint", "value": dockerd}]},
            {"id": "podman", "property": [{"name": "endpoint",
                "value": format!("unix://{}", door_path.display())}]}]),
        None,
        2,
        json!([]),
        json!({}),
    ))
    .await;
    deploy(&api, "spread").await;
    let members = eventually(60, "two members Active", || async {
        let m = api.active("spread", "web").await;
        (m.len() == 2).then_some(m)
    })
    .await;
    let mut partitions: Vec<&str> = members
        .iter()
        .map(|m| m["partitionId"].as_str().unwrap())
        .collect();
    partitions.sort();
    assert_eq!(
        partitions,
        ["dockerd", "podman"],
        "one member on each engine"
    );
    assert_eq!(member_containers(&dockerd, "spread").len(), 1);
    assert_eq!(member_containers(&podman, "spread").len(), 1);
    let lost = members
        .iter()
        .find(|m| m["partitionId"] == "podman")
        .unwrap()["memberId"]
        .as_str()
        .unwrap()
        .to_owned();
    // Podman stops answering.
    door.shut();
    eventually(60, "both members on dockerd", || async {
        let a = api.active("spread", "web").await;
        (a.len() == 2 && a.iter().all(|m| m["partitionId"] == "dockerd")).then_some(())
    })
    .await;
    assert_eq!(member_containers(&dockerd, "spread").len(), 2);
    // What the lost member left on Podman is still there while Podman does not answer ...
    let left = member_containers(&podman, "spread");
    assert!(left.iter().any(|n| n.ends_with(&lost)), "{left:?}");
    // ... and removed once it answers again.
    let _door = Door::open(&door_path, &podman);
    eventually(60, "the lost member's container removed", || async {
        member_containers(&podman, "spread")
            .is_empty()
            .then_some(())
    })
    .await;
    undeploy_leaving_no_container(&api, &dockerd, "spread").await;
}

/// Memory is reported as a share of the container's limit: a workload holding about 12 MB
/// under a 48 MiB limit (a quarter; 0.05 % of this host's memory) is over a 10 % threshold,
/// and its cluster scales out to its maximum.
#[tokio::test]
async fn memory_is_reported_as_a_share_of_the_container_s_limit() {
    let Some(host) = nubo_testing::service("NUBO_TEST_DOCKER_HOST", "containers on Docker") else {
        return;
    };
    build_image_running(
        &host,
        "nubo-test/holder:1",
        "holding",
        r#"/bin/httpd -p $PORT -h /www; held=$(head -c 12000000 /dev/zero | tr '\\0' a); trap 'exit 0' TERM; sleep 100000 & wait"#,
    );
    let _cleanup = Containers {
        host: &host,
        application: "holder",
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--insecure-http",
            "--scale-window",
            "2",
            "--scale-up-cooldown",
            "1",
        ],
    );
    let api = Api::new(&server);
    let mut artifacts = docker_app(
        "holder",
        "nubo-test/holder:1",
        on_engine(&host),
        None,
        1,
        json!([{"name": "memoryLimit", "value": "48m"}]),
        json!({}),
    );
    for (kind, body) in &mut artifacts {
        match *kind {
            "autoscalingPolicies" => {
                body["loadThresholds"]["memoryConsumption"]["threshold"] = json!(10)
            }
            "applications" => body["components"]["cartridges"][0]["cartridgeMax"] = json!(2),
            _ => {}
        }
    }
    api.add_all(&artifacts).await;
    deploy(&api, "holder").await;
    eventually(90, "scaled out to two members on memory", || async {
        (api.active("holder", "web").await.len() == 2).then_some(())
    })
    .await;
    undeploy_leaving_no_container(&api, &host, "holder").await;
}
