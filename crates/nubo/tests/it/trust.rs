//! A hostile bus: clients that reach the platform's broker and try to command it.

use std::time::Duration;

use nubo_bus::{Bus, BusAuth, BusCredentials, BusKey, EventBus, MqttBus, MqttConfig};
use nubo_events::{Event, Member, MemberChange, MemberPort, MemberStatus};
use serde_json::{Value, json};

use crate::support::{
    Api, ServerProcess, dropped, eventually, free_port, holds, instance_of, member_payload,
    web_app_artifacts,
};

async fn get_through(proxy: u16, host: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{proxy}/"))
        .header("host", host)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    (r.status() == 200).then_some(())?;
    r.text().await.ok()
}

#[tokio::test]
async fn forged_replayed_and_unsigned_messages_on_the_bus_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&web_app_artifacts("safe", 2, 4, proxy)).await;
    let (status, body) = api
        .post("/api/applications/safe/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let active = eventually(30, "two members active", || async {
        let a = api.active("safe", "web").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let ids: Vec<String> = active
        .iter()
        .map(|m| m["memberId"].as_str().unwrap().to_owned())
        .collect();
    eventually(20, "the load balancer routes to them", || async {
        get_through(proxy, "safe.web.localhost").await
    })
    .await;
    let creds = BusCredentials::read(std::path::Path::new(&server.bus_credentials)).unwrap();
    assert!(
        !server
            .bus_url
            .contains(&creds.url[creds.url.find(':').unwrap() + 3..]),
        "the printed bus URL hides the broker's password"
    );

    // Anonymous, or with a wrong password: the broker refuses the connection.
    let addr = creds.url.rsplit('@').next().unwrap().to_owned();
    for url in [
        format!("mqtt://{addr}"),
        format!("mqtt://nubo:guess@{addr}"),
    ] {
        let c = MqttBus::connect(MqttConfig::from_url(&url, "intruder").unwrap()).unwrap();
        assert!(
            c.wait_connected(Duration::from_millis(1500)).await.is_err(),
            "{url} connected"
        );
    }

    // A client holding what a member holds: the broker's credentials and member A's own key.
    let payload = member_payload(dir.path(), &ids[0]);
    let member_key = BusKey::from_hex(payload["busKey"].as_str().expect("a member key")).unwrap();
    let raw = std::sync::Arc::new(
        MqttBus::connect(MqttConfig::from_url(&creds.url, "member-a").unwrap()).unwrap(),
    );
    raw.wait_connected(Duration::from_secs(10)).await.unwrap();
    // Real messages of member A, captured to be replayed.
    let mut captured = raw.subscribe("nubo/v1/health/#").await.unwrap();
    let mut replays = Vec::new();
    while replays.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), captured.recv())
            .await
            .expect("health statistics on the bus")
            .unwrap();
        if String::from_utf8_lossy(&m.payload).contains(&format!("m/{}", ids[0])) {
            replays.push(m);
        }
    }
    let as_member_a = EventBus::with_auth(
        raw.clone(),
        BusAuth::Member {
            member_id: ids[0].clone(),
            key: member_key.clone(),
        },
    );
    let as_stranger = EventBus::with_auth(raw.clone(), BusAuth::Platform(BusKey::generate()));
    let unsigned = EventBus::new(raw.clone());
    // An address the attacker would like the load balancer to send traffic to.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let a = instance_of(&payload);
    let fake = Member {
        member_id: "safe.web.web-666".into(),
        cluster_id: a.cluster_id.clone(),
        cluster_instance_id: a.cluster_instance_id.clone(),
        service_name: a.service_name.clone(),
        application_id: a.application_id.clone(),
        network_partition_id: a.network_partition_id.clone(),
        partition_id: a.partition_id.clone(),
        status: MemberStatus::Active,
        default_private_ip: Some("127.0.0.1".into()),
        default_public_ip: None,
        ports: vec![MemberPort {
            name: "http".into(),
            protocol: "http".into(),
            port: trap_port,
            proxy_port: Some(proxy),
        }],
        init_time: 0,
        failure: None,
        properties: Default::default(),
    };
    let mut b = a.clone();
    b.member_id = ids[1].clone();
    let forged = [
        Event::ControlUndeploy {
            application_id: "safe".into(),
            force: true,
        },
        Event::NodeTerminateMember {
            node: "local".into(),
            member_id: ids[1].clone(),
            fence: Some(u64::MAX),
        },
        Event::MemberActivated(MemberChange {
            member: fake.clone(),
        }),
        Event::InstanceFailed {
            instance: b.clone(),
            reason: "forged".into(),
        },
        Event::InstanceCleanupMember {
            member_id: ids[1].clone(),
        },
        Event::ControlScale {
            command: nubo_events::ScaleCommand::ScaleTo {
                cluster_id: a.cluster_id.clone(),
                instance_id: a.cluster_instance_id.clone(),
                count: 4,
            },
        },
    ];
    for bus in [&unsigned, &as_stranger, &as_member_a] {
        for e in &forged {
            bus.publish(e).await.unwrap();
        }
    }
    for m in &replays {
        for _ in 0..3 {
            raw.publish(&m.topic, m.payload.clone()).await.unwrap();
        }
    }

    // Nothing is deployed, started, routed or terminated.
    holds(Duration::from_secs(4), "the platform unchanged", || async {
        let now: Vec<String> = api
            .active("safe", "web")
            .await
            .iter()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
            .collect();
        let members = api.members("safe").await.len();
        now == ids && members == 2
    })
    .await;
    for _ in 0..20 {
        let body = get_through(proxy, "safe.web.localhost")
            .await
            .unwrap_or_default();
        assert!(
            body.starts_with("safe.web.web-"),
            "answered by a member: {body}"
        );
    }
    assert!(
        trap.accept().is_err(),
        "the load balancer never connected to the forged member's address"
    );
    let metrics = api.metrics().await;
    for reason in ["unsigned", "forged", "not_permitted", "replayed"] {
        assert!(
            dropped(&metrics, reason) > 0,
            "{reason} drops counted:\n{metrics}"
        );
    }
    // A member's own reports still count: the platform keeps working.
    let (status, _) = api.get("/api/applications/safe/runtime").await;
    assert_eq!(status, 200);
}

/// A server on the mock IaaS without a load balancer, its administrator, and the admins of two
/// tenants, `alice@a.com` and `bob@b.com`.
async fn two_tenants(dir: &std::path::Path) -> (ServerProcess, Api, Api, Api) {
    let server =
        ServerProcess::start_with(dir, &["--insecure-http", "--no-lb", "--mock-iaas", "-"]);
    let root = Api::new(&server);
    for (domain, admin) in [("a.com", "alice"), ("b.com", "bob")] {
        let t = json!({"admin": admin, "firstName": "F", "lastName": "L", "adminPassword": "s3cret!", "tenantDomain": domain, "email": format!("{admin}@{domain}"), "active": "true"});
        assert_eq!(root.post("/api/tenants", t).await.0, 201);
    }
    let a = Api::as_user(&server, "alice@a.com", "s3cret!");
    let b = Api::as_user(&server, "bob@b.com", "s3cret!");
    (server, root, a, b)
}

/// The artifacts of a mock-IaaS application `shop` whose cartridge has host `host`.
fn shop(host: &str) -> Vec<(&'static str, Value)> {
    vec![
        (
            "autoscalingPolicies",
            json!({"id": "asp", "loadThresholds": {"memoryConsumption": {"threshold": 95}}}),
        ),
        (
            "networkPartitions",
            json!({"id": "np", "provider": "mock", "partitions": [{"id": "p1"}]}),
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
            json!({"type": "php", "category": "framework", "host": host,
                "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": 8280}],
                "iaasProvider": [{"type": "mock", "imageId": "mock"}]}),
        ),
        (
            "applications",
            json!({"applicationId": "shop", "components": {"cartridges": [
                {"type": "php", "cartridgeMin": 1, "cartridgeMax": 2,
                 "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}}),
        ),
    ]
}

#[tokio::test]
async fn tenants_run_applications_of_the_same_id_apart_and_host_names_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _root, a, b) = two_tenants(dir.path()).await;
    a.add_all(&shop("a.example")).await;
    b.add_all(&shop("b.example")).await;
    // The same application id in two tenants: both deploy, each its own.
    for api in [&a, &b] {
        let (status, body) = api
            .post("/api/applications/shop/deploy/ap", json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    for api in [&a, &b] {
        eventually(30, "each tenant's shop active", || async {
            (api.active("shop", "web").await.len() == 1).then_some(())
        })
        .await;
    }
    let (_, view_a) = a.get("/api/applications/shop/runtime").await;
    let (_, view_b) = b.get("/api/applications/shop/runtime").await;
    assert_eq!(
        view_a["id"], "shop",
        "a tenant sees its application's own id"
    );
    let member = |v: &Value| {
        v.to_string()
            .split("\"memberId\":\"")
            .nth(1)
            .map(|s| s.split('"').next().unwrap().to_owned())
            .unwrap()
    };
    let (ma, mb) = (member(&view_a), member(&view_b));
    assert_ne!(ma, mb, "two members, one per tenant");
    assert!(!view_a.to_string().contains(&mb) && !view_b.to_string().contains(&ma));
    // A tenant cannot read another's clusters.
    let cluster_a = view_a
        .to_string()
        .split("\"clusterId\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(a.get(&format!("/api/cluster/{cluster_a}")).await.0, 200);
    assert_eq!(b.get(&format!("/api/cluster/{cluster_a}")).await.0, 404);
    // Undeploying is a tenant's own: B's undeploy leaves A's running.
    let (status, body) = b
        .post("/api/applications/shop/undeploy?force=true", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(30, "B's shop gone", || async {
        (b.get("/api/applications/shop/runtime").await.0 != 200).then_some(())
    })
    .await;
    holds(Duration::from_secs(1), "A's shop keeps running", || async {
        a.active("shop", "web").await.len() == 1
    })
    .await;
    // Host names are unique across the platform: the 409 names the host, nothing of tenant A's.
    let (status, _) = b
        .send(
            reqwest::Method::PUT,
            "/api/cartridges",
            Some(shop("a.example")[4].1.clone()),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = b.post("/api/applications/shop/deploy/ap", json!({})).await;
    assert_eq!(status, 409, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("host name `shop.web.a.example`"),
        "{message}"
    );
    assert!(
        !message.contains("t1") && !message.contains("alice"),
        "{message}"
    );
    // A tenant's user reads, and cannot deploy.
    let dev = json!({"userName": "dev", "credential": "devpass1", "role": "Internal/user", "email": "dev@a.com"});
    assert_eq!(a.post("/api/users", dev).await.0, 201);
    let dev = Api::as_user(&server, "dev@a.com", "devpass1");
    assert_eq!(dev.get("/api/applications/shop/runtime").await.0, 200);
    assert_eq!(
        dev.post("/api/applications/shop/undeploy", json!({}))
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn tenants_deploy_on_the_platforms_global_definitions_and_change_only_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, root, a, b) = two_tenants(dir.path()).await;
    // The platform's administrator defines everything but the application.
    let defs = shop("global.example");
    root.add_all(&defs[..5]).await;
    for api in [&a, &b] {
        let (status, list) = api.get("/api/cartridges").await;
        assert_eq!(status, 200);
        assert_eq!(
            list[0]["type"], "php",
            "a tenant sees the global cartridge: {list}"
        );
        assert_eq!(api.get("/api/autoscalingPolicies/asp").await.0, 200);
    }
    // Tenant A's own application names the global cartridge and policies, and runs on them.
    a.add_all(&defs[5..]).await;
    let (status, body) = a.post("/api/applications/shop/deploy/ap", json!({})).await;
    assert_eq!(status, 202, "{body}");
    eventually(30, "A's shop active on global definitions", || async {
        (a.active("shop", "web").await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        b.get("/api/applications/shop").await.0,
        404,
        "applications are never shared"
    );
    // Tenants change only their own definitions.
    let (status, body) = a
        .send(
            reqwest::Method::PUT,
            "/api/cartridges",
            Some(defs[4].1.clone()),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("global definition"),
        "{body}"
    );
    assert_eq!(a.delete("/api/autoscalingPolicies/asp").await.0, 403);
    let (status, body) = a.post("/api/cartridges", defs[4].1.clone()).await;
    assert_eq!(status, 409, "{body}");
    // Choosing which user of the platform's hosts runs members is the administrator's.
    let np = json!({"id": "mine", "provider": "mock", "partitions": [{"id": "p1", "property": [{"name": "runAsUser", "value": "root"}]}]});
    let (status, body) = a.post("/api/networkPartitions", np).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("partitions[0].property[0]"),
        "{body}"
    );
    // The administrator cannot remove a global definition a tenant uses; the 409 says who.
    let (status, body) = root.delete("/api/autoscalingPolicies/asp").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`shop` of tenant"),
        "{body}"
    );
    // A change of a global policy re-plans the tenants' running applications at once.
    let mut asp = defs[0].1.clone();
    asp["loadThresholds"]["memoryConsumption"]["threshold"] = json!(90);
    let (status, body) = root
        .send(reqwest::Method::PUT, "/api/autoscalingPolicies", Some(asp))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("applied to running application `shop`"),
        "{body}"
    );
}

/// Whether the load balancer on `proxy` routes `host`: a host it does not serve gets its own 404
/// at once; a routed one goes on to a member (here a mock one, whose address answers nothing,
/// or whatever the network puts there).
async fn routed(proxy: u16, host: &str) -> bool {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{proxy}/"))
        .header("host", host)
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    match r {
        Ok(r) if r.status() == 404 => !r
            .text()
            .await
            .unwrap_or_default()
            .contains("no application is served"),
        _ => true,
    }
}

#[tokio::test]
async fn a_deactivated_tenants_applications_get_no_traffic_and_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--mock-iaas", "-"]);
    let root = Api::new(&server);
    let t = json!({"admin": "alice", "firstName": "F", "lastName": "L", "adminPassword": "s3cret!", "tenantDomain": "a.com", "email": "alice@a.com", "active": "true"});
    assert_eq!(root.post("/api/tenants", t).await.0, 201);
    let a = Api::as_user(&server, "alice@a.com", "s3cret!");
    let proxy = free_port();
    let mut arts = shop("a.example");
    arts[4].1["portMapping"][0]["proxyPort"] = json!(proxy);
    a.add_all(&arts).await;
    assert_eq!(
        a.post("/api/applications/shop/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    eventually(30, "the shop active", || async {
        (a.active("shop", "web").await.len() == 1).then_some(())
    })
    .await;
    let host = "shop.web.a.example";
    eventually(20, "the shop routed", || async {
        routed(proxy, host).await.then_some(())
    })
    .await;
    let send = |path: &'static str| root.send(reqwest::Method::PUT, path, None);
    assert_eq!(send("/api/tenants/deactivate/a.com").await.0, 200);
    eventually(20, "no traffic to a deactivated tenant", || async {
        (!routed(proxy, host).await).then_some(())
    })
    .await;
    // Its members keep running, and its users can do nothing.
    assert_eq!(a.get("/api/applications/shop/runtime").await.0, 401);
    let (_, instances) = root.get("/api/mock-iaas/instances").await;
    assert_eq!(instances.as_array().unwrap().len(), 1, "{instances}");
    assert_eq!(send("/api/tenants/activate/a.com").await.0, 200);
    eventually(20, "routed again", || async {
        routed(proxy, host).await.then_some(())
    })
    .await;
    assert_eq!(a.active("shop", "web").await.len(), 1);
}

#[tokio::test]
async fn the_bus_key_rotates_without_stopping_the_members_of_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = free_port();
    api.add_all(&web_app_artifacts("rot", 2, 4, proxy)).await;
    assert_eq!(
        api.post("/api/applications/rot/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let ids = |a: Vec<Value>| -> Vec<String> {
        a.iter()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = ids(eventually(30, "two members active", || async {
        let a = api.active("rot", "web").await;
        (a.len() == 2).then_some(a)
    })
    .await);
    let old = BusCredentials::read(std::path::Path::new(&server.bus_credentials)).unwrap();
    let (old_key, old_url) = (old.key, old.url);
    let (status, body) = api.post("/api/platform/busKey/rotate", json!({})).await;
    assert_eq!(status, 200, "{body}");
    // The embedded broker's password rotates the same way, at the same time.
    let (status, body) = api
        .post("/api/platform/brokerPassword/rotate", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.post("/api/platform/busKey/rotate", json!({})).await.0,
        409,
        "one rotation at a time"
    );
    // The server starts again with the new key, still accepting the previous one: the members
    // started before (their keys derived from the previous key) go on, and are not replaced.
    server.kill9();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let creds = BusCredentials::read(std::path::Path::new(&server.bus_credentials)).unwrap();
    assert_ne!(creds.key, old_key);
    assert_eq!(creds.previous_key.as_deref(), Some(old_key.as_str()));
    assert_ne!(creds.url, old_url, "a new broker password in the URL");
    let connects = |url: String| async move {
        let c = nubo_bus::connect_url(&url, "rotation").await.unwrap();
        c.wait_connected(Duration::from_secs(2)).await.is_ok()
    };
    assert!(
        connects(old_url.clone()).await,
        "the previous password still connects"
    );
    eventually(30, "the members re-adopted", || async {
        (ids(api.active("rot", "web").await) == before).then_some(())
    })
    .await;
    holds(
        Duration::from_secs(7),
        "the previous key's members are not taken for faulty",
        || async { ids(api.active("rot", "web").await) == before },
    )
    .await;
    // A member started now gets a key derived from the new one.
    let (status, _) = api
        .send(
            reqwest::Method::PUT,
            "/api/applications",
            Some(crate::support::web_app("rot", 3, 4)),
        )
        .await;
    assert_eq!(status, 200);
    let third = eventually(30, "a third member active", || async {
        let a = ids(api.active("rot", "web").await);
        (a.len() == 3).then_some(a)
    })
    .await;
    let new_member = third.iter().find(|m| !before.contains(m)).unwrap();
    let payload = member_payload(dir.path(), new_member);
    let new = BusKey::from_hex(&creds.key).unwrap();
    assert_eq!(
        payload["busKey"].as_str(),
        Some(new.member_key(new_member).to_hex().as_str())
    );
    assert_eq!(
        api.send(
            reqwest::Method::DELETE,
            "/api/platform/busKey/previous",
            None
        )
        .await
        .0,
        200
    );
    let bus = BusCredentials::read(std::path::Path::new(&server.bus_credentials)).unwrap();
    assert!(
        bus.previous_key.is_some(),
        "this server keeps accepting it until it starts again"
    );
    assert_eq!(
        api.send(
            reqwest::Method::DELETE,
            "/api/platform/brokerPassword/previous",
            None
        )
        .await
        .0,
        200
    );
    // Started again: the previous password is refused, the new one connects.
    let mut server = server;
    server.kill9();
    let server = ServerProcess::start(dir.path());
    let creds = BusCredentials::read(std::path::Path::new(&server.bus_credentials)).unwrap();
    assert!(creds.previous_key.is_none());
    assert!(!connects(old_url).await, "the previous password is refused");
    assert!(connects(creds.url).await);
}
