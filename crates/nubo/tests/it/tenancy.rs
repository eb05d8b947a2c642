//! Tenancy (issue 16): sessions and API tokens.

use serde_json::{Value, json};

use crate::support::{Api, ServerProcess};

/// A call with `Authorization: Bearer TOKEN`.
async fn bearer(
    api: &Api,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = api
        .http
        .request(method, format!("{}{path}", api.url))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(api: &Api, token: &str, path: &str) -> (u16, Value) {
    bearer(api, token, reqwest::Method::GET, path, None).await
}

async fn post(api: &Api, token: &str, path: &str, body: Value) -> (u16, Value) {
    bearer(api, token, reqwest::Method::POST, path, Some(body)).await
}

/// Adds the tenant `domain` with its admin `admin` (password `s3cret!`); the admin's client.
async fn tenant(server: &ServerProcess, root: &Api, admin: &str, domain: &str) -> Api {
    let t = json!({"admin": admin, "firstName": "A", "lastName": "L", "adminPassword": "s3cret!",
        "tenantDomain": domain, "email": format!("{admin}@{domain}"), "active": "true"});
    let (status, body) = root.post("/api/tenants", t).await;
    assert_eq!(status, 201, "{body}");
    Api::as_user(server, &format!("{admin}@{domain}"), "s3cret!")
}

/// The platform's multi-tenant application `app` (one member of cartridge `ty`, host `host`,
/// alias `web`) on `provider` with `image`, behind proxy port `proxy`: deployed, and Active.
async fn shared_app(
    root: &Api,
    app: &str,
    ty: &str,
    host: &str,
    provider: &str,
    image: &str,
    proxy: Option<u16>,
) {
    let mut port = json!({"name": "http", "protocol": "http", "port": 8080});
    if let Some(p) = proxy {
        port["proxyPort"] = json!(p);
    }
    root.add_all(&[
        ("autoscalingPolicies", policy("asp")),
        ("networkPartitions", json!({"id": "np", "provider": provider, "partitions": [{"id": "p1"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", json!({"type": ty, "category": "framework", "host": host, "multiTenant": true,
            "portMapping": [port], "iaasProvider": [{"type": provider, "imageId": image}]})),
        ("applications", json!({"applicationId": app, "multiTenant": true, "components": {"cartridges": [
            {"type": ty, "cartridgeMin": 1, "cartridgeMax": 1,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    let (status, body) = root
        .post(&format!("/api/applications/{app}/deploy/ap"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    crate::support::eventually(60, "the shared member Active", || async {
        (root.active(app, "web").await.len() == 1).then_some(())
    })
    .await;
}

fn policy(id: &str) -> Value {
    json!({"id": id, "loadThresholds": {"memoryConsumption": {"threshold": 80}}})
}

/// A login gives a session token that acts as its user until it is ended; API tokens are made
/// from a password or a session (never from another API token), are listed without their
/// secret, may be read-only, and are revoked by their user or the tenant's admin; a removed
/// user's tokens stop at once, a new password ends the user's sessions; Basic credentials still
/// work for Stratos' scripts.
#[tokio::test]
async fn sessions_and_api_tokens_act_as_their_user_until_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--no-lb"]);
    let root = Api::new(&server);
    let alice = tenant(&server, &root, "alice", "a.com").await;
    let (status, body) = alice
        .post(
            "/api/users",
            json!({"userName": "carol", "role": "user", "credential": "carol-pw1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let carol = Api::as_user(&server, "carol@a.com", "carol-pw1");

    // A login: a bearer token with an expiry; it acts as alice, an admin of a.com.
    let (status, login) = alice.post("/api/login", json!({"expiresIn": 600})).await;
    assert_eq!(status, 201, "{login}");
    let session = login["token"].as_str().unwrap().to_owned();
    assert_eq!(login["expiresIn"], 600);
    let (status, me) = get(&alice, &session, "/api/session").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"], "alice");
    assert_eq!(me["role"], "admin");
    assert_eq!(me["authenticatedBy"], "session");
    assert_eq!(
        post(&alice, &session, "/api/autoscalingPolicies", policy("p1"))
            .await
            .0,
        201
    );
    // Basic still works (and says so).
    assert_eq!(
        alice.get("/api/session").await.1["authenticatedBy"],
        "password"
    );
    // A session longer than the server allows is refused, naming the field.
    let (status, body) = alice
        .post("/api/login", json!({"expiresIn": 999_999}))
        .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("expiresIn"), "{body}");

    // An API token, read-only: reads, never writes, never makes tokens or sessions.
    let (status, made) = post(
        &alice,
        &session,
        "/api/tokens",
        json!({"name": "ci", "scope": "read", "expiresInDays": 7}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let reader = made["token"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&alice, &reader, "/api/autoscalingPolicies/p1").await.0,
        200
    );
    assert_eq!(
        post(&alice, &reader, "/api/autoscalingPolicies", policy("p2"))
            .await
            .0,
        403
    );
    assert_eq!(
        post(&alice, &reader, "/api/tokens", json!({"name": "more"}))
            .await
            .0,
        403
    );
    assert_eq!(post(&alice, &reader, "/api/login", json!({})).await.0, 403);
    // Listed without secrets.
    let (_, list) = alice.get("/api/tokens").await;
    let text = list.to_string();
    assert!(
        text.contains("\"ci\"") && !text.contains(&reader[reader.len() - 20..]),
        "{text}"
    );
    assert!(!text.contains("digest"), "{text}");

    // carol's token: she sees her own only; alice (her tenant's admin) sees and revokes it.
    let (_, c) = carol.post("/api/tokens", json!({"name": "carol-ci"})).await;
    let carols = c["token"].as_str().unwrap().to_owned();
    let carol_id = c["id"].as_str().unwrap().to_owned();
    let (_, theirs) = carol.get("/api/tokens").await;
    assert_eq!(theirs.as_array().unwrap().len(), 1, "{theirs}");
    let (_, all) = alice.get("/api/tokens").await;
    assert!(all.to_string().contains("carol-ci"), "{all}");
    // carol's token writes only what carol may (a user: no definitions).
    assert_eq!(
        post(&alice, &carols, "/api/autoscalingPolicies", policy("p3"))
            .await
            .0,
        403
    );
    assert_eq!(
        get(&alice, &carols, "/api/autoscalingPolicies/p1").await.0,
        200
    );
    // Another tenant's admin cannot revoke it (404, as for no token).
    assert_eq!(root.delete(&format!("/api/tokens/{carol_id}")).await.0, 404);
    assert_eq!(
        alice.delete(&format!("/api/tokens/{carol_id}")).await.0,
        200
    );
    assert_eq!(get(&alice, &carols, "/api/session").await.0, 401);

    // Forged, altered or foreign tokens: 401, saying what to do.
    let mut altered = session.clone();
    altered.pop();
    altered.push(if session.ends_with('A') { 'B' } else { 'A' });
    let other_tenant = session.replacen(".", ".-1234x", 1);
    for bad in [
        altered.as_str(),
        other_tenant.as_str(),
        "nubo.1.2.3",
        "garbage",
    ] {
        let (status, body) = get(&alice, bad, "/api/session").await;
        assert_eq!(status, 401, "{bad}: {body}");
    }
    let (_, body) = get(&alice, &altered, "/api/session").await;
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("log in again"),
        "{body}"
    );

    // A new password ends alice's sessions; her API token stays.
    let (status, body) = alice
        .send(
            reqwest::Method::PUT,
            "/api/users",
            Some(json!({"userName": "alice", "role": "admin", "credential": "n3w-s3cret"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&alice, &session, "/api/session").await.0, 401);
    assert_eq!(get(&alice, &reader, "/api/session").await.0, 200);
    let alice = Api::as_user(&server, "alice@a.com", "n3w-s3cret");

    // Logout ends a session.
    let (_, login) = carol.post("/api/login", json!({})).await;
    let carol_session = login["token"].as_str().unwrap().to_owned();
    assert_eq!(
        post(&alice, &carol_session, "/api/logout", json!({}))
            .await
            .0,
        200
    );
    assert_eq!(get(&alice, &carol_session, "/api/session").await.0, 401);

    // A removed user's tokens stop at once.
    let (_, login) = carol.post("/api/login", json!({})).await;
    let carol_session = login["token"].as_str().unwrap().to_owned();
    assert_eq!(alice.delete("/api/users/carol").await.0, 200);
    assert_eq!(get(&alice, &carol_session, "/api/session").await.0, 401);
    // Nothing of a token is in clear in the data directory.
    let leaked =
        crate::agent::files_containing(dir.path(), reader.rsplit('.').next().unwrap().as_bytes());
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// Every change of a scripted session is in the audit log (who, how proved, from where, what,
/// and how it ended, refusals included), readable by the tenant's admin (its tenant's only) and
/// the platform's administrator, not by a user; kept across a restart.
#[tokio::test]
async fn every_change_of_a_scripted_session_is_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--no-lb"]);
    let root = Api::new(&server);
    let alice = tenant(&server, &root, "alice", "a.com").await;
    assert_eq!(
        alice
            .post(
                "/api/users",
                json!({"userName": "carol", "role": "user", "credential": "carol-pw1"})
            )
            .await
            .0,
        201
    );
    let carol = Api::as_user(&server, "carol@a.com", "carol-pw1");
    // The session: a login, a definition by the session's token, a token made and revoked, a
    // definition removed, and carol's refused change.
    let (_, login) = alice.post("/api/login", json!({})).await;
    let session = login["token"].as_str().unwrap().to_owned();
    assert_eq!(
        post(
            &alice,
            &session,
            "/api/autoscalingPolicies",
            policy("audited")
        )
        .await
        .0,
        201
    );
    let (_, made) = post(&alice, &session, "/api/tokens", json!({"name": "ci"})).await;
    let id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(alice.delete(&format!("/api/tokens/{id}")).await.0, 200);
    assert_eq!(
        alice.delete("/api/autoscalingPolicies/audited").await.0,
        200
    );
    assert_eq!(
        carol
            .post("/api/autoscalingPolicies", policy("nope"))
            .await
            .0,
        403
    );
    let script = [
        ("alice", "POST", "/api/users", 201, "password"),
        ("alice", "POST", "/api/login", 201, "password"),
        ("alice", "POST", "/api/autoscalingPolicies", 201, "session"),
        ("alice", "POST", "/api/tokens", 201, "session"),
        (
            "alice",
            "DELETE",
            &format!("/api/tokens/{id}"),
            200,
            "password",
        ),
        (
            "alice",
            "DELETE",
            "/api/autoscalingPolicies/audited",
            200,
            "password",
        ),
        ("carol", "POST", "/api/autoscalingPolicies", 403, "password"),
    ];
    let check = |log: &Value| {
        let entries = log.as_array().expect("a list");
        for (user, method, path, status, via) in &script {
            assert!(
                entries.iter().any(|e| e["user"] == *user
                    && e["method"] == *method
                    && e["path"] == *path
                    && e["status"] == *status
                    && e["via"] == *via
                    && e["client"] == "127.0.0.1"
                    && e["tenantId"].as_i64().unwrap() > 0
                    && e["at"].as_str().is_some_and(|a| a.starts_with("20"))),
                "{user} {method} {path} {status} {via} not in {log}"
            );
        }
        // Reads are not changes.
        assert!(!entries.iter().any(|e| e["method"] == "GET"), "{log}");
    };
    let (status, log) = alice.get("/api/audit").await;
    assert_eq!(status, 200, "{log}");
    check(&log);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenantId"] == log[0]["tenantId"]),
        "a tenant's admin reads its tenant's entries only: {log}"
    );
    // The platform's administrator sees them and its own (the tenant's creation).
    let (_, all) = root.get("/api/audit?limit=1000").await;
    check(&all);
    assert!(all.to_string().contains("\"/api/tenants\""), "{all}");
    assert_eq!(carol.get("/api/audit").await.0, 403);
    let (_, only) = alice.get("/api/audit?user=carol").await;
    assert_eq!(only.as_array().unwrap().len(), 1, "{only}");
    // Kept across a restart.
    server.kill9();
    let server = ServerProcess::start_with(dir.path(), &["--insecure-http", "--no-lb"]);
    let alice = Api::as_user(&server, "alice@a.com", "s3cret!");
    check(&alice.get("/api/audit").await.1);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Metering: a tenant's instance-seconds per application and cartridge equal its members'
/// lifetimes (from their creation, `initTime`) to the millisecond while they run, and within
/// the undeploy's own duration once they ended; kept after the undeploy; a tenant reads its
/// own, the platform's administrator any tenant's.
#[tokio::test]
async fn metering_totals_equal_the_members_lifetimes() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &["--insecure-http", "--no-lb", "--mock-iaas", "-"],
    );
    let root = Api::new(&server);
    let alice = tenant(&server, &root, "alice", "a.com").await;
    let artifacts = [
        ("autoscalingPolicies", policy("asp")),
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
            json!({"type": "metered", "category": "framework", "host": "meter.test",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
            "iaasProvider": [{"type": "mock", "imageId": "mock"}]}),
        ),
        (
            "applications",
            json!({"applicationId": "shop", "components": {"cartridges": [
            {"type": "metered", "cartridgeMin": 2, "cartridgeMax": 2,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}}),
        ),
    ];
    alice.add_all(&artifacts).await;
    assert_eq!(
        alice
            .post("/api/applications/shop/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let members = crate::support::eventually(30, "two members Active", || async {
        let a = alice.active("shop", "web").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let inits: Vec<u64> = members
        .iter()
        .map(|m| m["initTime"].as_u64().unwrap())
        .collect();
    assert!(inits.iter().all(|i| *i > 0), "{members:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // While they run: exactly their lifetimes until the answer's moment.
    let (status, u) = alice.get("/api/usage?application=shop").await;
    assert_eq!(status, 200, "{u}");
    let at = u["asOfMs"].as_u64().unwrap();
    let lifetimes: u64 = inits.iter().map(|i| at - i).sum();
    assert_eq!(
        u["usage"][0]["instanceMs"].as_u64().unwrap(),
        lifetimes,
        "{u}"
    );
    assert_eq!(u["usage"][0]["cartridge"], "metered");
    assert_eq!(u["usage"][0]["liveMembers"], 2);
    // Undeployed: their ends fall between the undeploy call and their absence.
    let before = now_ms();
    assert_eq!(
        alice
            .post("/api/applications/shop/undeploy", json!({}))
            .await
            .0,
        202
    );
    crate::support::eventually(30, "undeployed", || async {
        (alice.get("/api/applications/shop/runtime").await.0 == 404).then_some(())
    })
    .await;
    let after = now_ms();
    let (_, u) = alice.get("/api/usage").await;
    let row = &u["usage"][0];
    assert_eq!(row["endedMembers"], 2, "{u}");
    assert_eq!(row["liveMembers"], 0, "{u}");
    let ms = row["instanceMs"].as_u64().unwrap();
    let low: u64 = inits.iter().map(|i| before - i).sum();
    let high: u64 = inits.iter().map(|i| after - i).sum();
    assert!(low <= ms && ms <= high + 1000, "{low} <= {ms} <= {high}");
    assert_eq!(u["total"]["instanceSeconds"].as_u64().unwrap(), ms / 1000);
    // The platform's administrator reads it by tenant; its own usage has none of alice's.
    let tenant = row["tenantId"].as_i64().unwrap();
    let (_, theirs) = root.get(&format!("/api/usage?tenant={tenant}")).await;
    assert_eq!(theirs["usage"][0]["instanceMs"], ms, "{theirs}");
    let (_, own) = root.get("/api/usage?tenant=-1234").await;
    assert!(own["usage"].as_array().unwrap().is_empty(), "{own}");
    // A tenant cannot ask for another's.
    let (_, forced) = alice.get("/api/usage?tenant=-1234").await;
    assert!(
        forced["usage"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenantId"] == tenant),
        "{forced}"
    );
}

/// Quotas: the platform's administrator sets a tenant's; an application beyond `applications`
/// and a deploy beyond `instances` are refused with a 403 naming the quota; the autoscaler holds
/// the tenant at its instance quota and records the decision (`AtQuota`).
#[tokio::test]
async fn quotas_refuse_what_is_beyond_them_and_the_autoscaler_holds_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &[
            "--insecure-http",
            "--no-lb",
            "--mock-iaas",
            "-",
            "--scale-window",
            "2",
            "--scale-up-cooldown",
            "1",
        ],
    );
    let root = Api::new(&server);
    let alice = tenant(&server, &root, "alice", "a.com").await;
    // Only the platform's administrator sets quotas.
    let quota = json!({"applications": 2, "instances": 3});
    assert_eq!(
        alice
            .send(
                reqwest::Method::PUT,
                "/api/quotas/a.com",
                Some(quota.clone())
            )
            .await
            .0,
        403
    );
    let (status, body) = root
        .send(reqwest::Method::PUT, "/api/quotas/a.com", Some(quota))
        .await;
    assert_eq!(status, 200, "{body}");
    let app = |id: &str, min: u32| {
        json!({"applicationId": id, "components": {"cartridges": [
            {"type": "hungry", "cartridgeMin": min, "cartridgeMax": 10,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "hot", "deploymentPolicy": "dp"}}]}})
    };
    alice
        .add_all(&[
            // The mock's members report a load of 20: far above 1, they want all 10.
            ("autoscalingPolicies", json!({"id": "hot", "loadThresholds": {"loadAverage": {"threshold": 1}}})),
            ("networkPartitions", json!({"id": "np", "provider": "mock", "partitions": [{"id": "p1"}]})),
            ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]})),
            ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
            ("cartridges", json!({"type": "hungry", "category": "framework", "host": "quota.test",
                "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
                "iaasProvider": [{"type": "mock", "imageId": "mock"}]})),
            ("applications", app("one", 1)),
            ("applications", app("two", 1)),
        ])
        .await;
    // A third application: refused, naming the quota.
    let (status, body) = alice.post("/api/applications", app("three", 1)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("quota.applications"), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("2 used of 2"),
        "{body}"
    );
    // The first scales out as far as the quota lets it, and holds there.
    assert_eq!(
        alice
            .post("/api/applications/one/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    crate::support::eventually(30, "three members (the quota)", || async {
        (alice.active("one", "web").await.len() == 3).then_some(())
    })
    .await;
    crate::support::holds(
        std::time::Duration::from_secs(3),
        "held at the quota",
        || async { alice.members("one").await.len() == 3 },
    )
    .await;
    let (_, events) = alice.get("/api/applications/one/scalingEvents").await;
    assert!(events.to_string().contains("AtQuota"), "{events}");
    // The second cannot deploy: its minimum is beyond what is left.
    let (status, body) = alice
        .post("/api/applications/two/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("quota.instances"), "{body}");
    let (_, mine) = alice.get("/api/quota").await;
    assert_eq!(mine["instances"], json!({"limit": 3, "used": 3}), "{mine}");
    assert_eq!(
        mine["applications"],
        json!({"limit": 2, "used": 2}),
        "{mine}"
    );
}

/// Signups and domain mappings: two tenants sign up to the platform's multi-tenant application,
/// each with its own repository (the password sealed, never served); each maps its own domain,
/// a domain is mapped once across the platform, the platform's own host names cannot be mapped;
/// neither tenant sees or changes the other's signup or mapping; a removed signup takes its
/// mappings along.
#[tokio::test]
async fn tenants_sign_up_to_a_shared_application_and_map_their_own_domains() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &["--insecure-http", "--no-lb", "--mock-iaas", "-"],
    );
    let root = Api::new(&server);
    let alice = tenant(&server, &root, "alice", "a.com").await;
    let bob = tenant(&server, &root, "bob", "b.com").await;
    let app = |id: &str, multi: bool| {
        json!({"applicationId": id, "multiTenant": multi, "components": {"cartridges": [
            {"type": "shared", "cartridgeMin": 1, "cartridgeMax": 1,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})
    };
    root.add_all(&[
        ("autoscalingPolicies", policy("asp")),
        ("networkPartitions", json!({"id": "np", "provider": "mock", "partitions": [{"id": "p1"}]})),
        ("deploymentPolicies", json!({"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]})),
        ("applicationPolicies", json!({"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]})),
        ("cartridges", json!({"type": "shared", "category": "framework", "host": "shared.test", "multiTenant": true,
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
            "iaasProvider": [{"type": "mock", "imageId": "mock"}]})),
        ("applications", app("mt", true)),
        ("applications", app("solo", false)),
    ])
    .await;
    assert_eq!(
        root.post("/api/applications/mt/deploy/ap", json!({}))
            .await
            .0,
        202
    );
    let repo = |who: &str| {
        json!({"artifactRepositories": [{"alias": "web", "privateRepo": true,
            "repoUrl": format!("https://git.example/{who}.git"), "repoUsername": who,
            "repoPassword": format!("{who}-repo-s3cret")}]})
    };
    // Each tenant signs up with its own repository.
    let (status, body) = alice
        .post("/api/applications/mt/signup", repo("alice"))
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(!body.to_string().contains("s3cret"), "{body}");
    assert_eq!(
        alice
            .post("/api/applications/mt/signup", repo("alice"))
            .await
            .0,
        409
    );
    assert_eq!(
        bob.get("/api/applications/mt/signup").await.0,
        404,
        "bob has none yet"
    );
    assert_eq!(
        bob.post("/api/applications/mt/signup", repo("bob")).await.0,
        201
    );
    let (_, mine) = alice.get("/api/applications/mt/signup").await;
    assert!(
        mine.to_string().contains("alice.git") && !mine.to_string().contains("bob"),
        "{mine}"
    );
    assert!(!mine.to_string().contains("s3cret"), "{mine}");
    // Only multi-tenant applications, only their aliases.
    assert_eq!(
        alice
            .post("/api/applications/solo/signup", repo("alice"))
            .await
            .0,
        404
    );
    let mut bad = repo("alice");
    bad["artifactRepositories"][0]["alias"] = json!("nope");
    let (status, body) = alice.post("/api/applications/mt/signup", bad).await;
    assert!(status == 400 || status == 409, "{status} {body}");
    // The super tenant's admin sees that signups exist.
    assert_eq!(
        root.get("/api/applications/mt").await.1["signUpsExist"],
        true
    );

    // Domains: each its own, once across the platform, none of the platform's host names.
    let map = |domain: &str| json!({"domainMappings": [{"cartridgeAlias": "web", "domainName": domain, "contextPath": "/"}]});
    assert_eq!(
        alice
            .post(
                "/api/applications/mt/domainMappings",
                map("shop.alice.example")
            )
            .await
            .0,
        201
    );
    let (status, body) = bob
        .post(
            "/api/applications/mt/domainMappings",
            map("shop.alice.example"),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        bob.post(
            "/api/applications/mt/domainMappings",
            map("web.bob.example")
        )
        .await
        .0,
        201
    );
    // The multi-tenant cluster's host name (`<app>.<cartridge host>`), routed once deployed.
    let host = "mt.shared.test".to_owned();
    crate::support::eventually(30, "the application deployed", || async {
        (root.get("/api/applications/mt/runtime").await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = alice
        .post("/api/applications/mt/domainMappings", map(&host))
        .await;
    assert_eq!(status, 409, "{host}: {body}");
    let (status, body) = alice
        .post("/api/applications/mt/domainMappings", map("Not A Domain"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("domainMappings[0].domainName"),
        "{body}"
    );
    // Neither sees nor removes the other's.
    let (_, list) = alice.get("/api/applications/mt/domainMappings").await;
    assert!(
        list.to_string().contains("shop.alice.example") && !list.to_string().contains("bob"),
        "{list}"
    );
    assert_eq!(
        alice
            .delete("/api/applications/mt/domainMappings/web.bob.example")
            .await
            .0,
        404
    );
    // A tenant not signed up cannot map.
    let carl = tenant(&server, &root, "carl", "c.com").await;
    assert_eq!(
        carl.post("/api/applications/mt/domainMappings", map("carl.example"))
            .await
            .0,
        409
    );
    // Bob leaves: his mapping goes with his signup, and the domain is free again.
    assert_eq!(bob.delete("/api/applications/mt/signup").await.0, 200);
    assert_eq!(
        carl.post("/api/applications/mt/signup", repo("carl"))
            .await
            .0,
        201
    );
    assert_eq!(
        carl.post(
            "/api/applications/mt/domainMappings",
            map("web.bob.example")
        )
        .await
        .0,
        201
    );
    // The platform's administrator signs a tenant up, and off.
    assert_eq!(
        alice
            .post("/api/applications/mt/signup/b.com", repo("bob"))
            .await
            .0,
        403
    );
    assert_eq!(
        root.post("/api/applications/mt/signup/b.com", repo("bob"))
            .await
            .0,
        201
    );
    assert_eq!(bob.get("/api/applications/mt/signup").await.0, 200);
    assert_eq!(
        root.delete("/api/applications/mt/signup/b.com").await.0,
        200
    );
    // The repositories' passwords are sealed: in clear in no file of the data directory.
    let leaked = crate::agent::files_containing(dir.path(), b"alice-repo-s3cret");
    assert!(leaked.is_empty(), "{leaked:?}");
}

/// A request to the load balancer with a Host and, maybe, a forged tenant header: the body.
async fn via_lb(proxy: u16, host: &str, forged: Option<&str>) -> Option<(u16, String)> {
    via_lb_at("127.0.0.1", proxy, host, forged).await
}

/// The same, to the load balancer bound to `ip`.
async fn via_lb_at(
    ip: &str,
    proxy: u16,
    host: &str,
    forged: Option<&str>,
) -> Option<(u16, String)> {
    via_lb_path(ip, proxy, host, "/page", forged).await
}

/// The same, for `path`.
async fn via_lb_path(
    ip: &str,
    proxy: u16,
    host: &str,
    path: &str,
    forged: Option<&str>,
) -> Option<(u16, String)> {
    let mut req = crate::support::client()
        .get(format!("http://{ip}:{proxy}{path}"))
        .header("host", host);
    if let Some(f) = forged {
        req = req.header("X-Tenant-Domain", f);
    }
    let r = req.send().await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

/// Tenant-aware routing: each tenant's mapped domain reaches the shared application's members,
/// which are told the tenant (`X-Tenant-Domain`); a client cannot claim a tenant; the
/// platform's own host name names none; a removed mapping is routed no more. Two load
/// balancers each serve their own tenants: the server's the super tenant and alice's (1), a
/// `nubo lb` bob's (2); each routes its own and refuses the others'.
#[tokio::test]
async fn each_tenant_s_domain_reaches_the_shared_members_naming_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start_with(dir.path(), &["--insecure-http", "--lb-tenants", "super,1"]);
    let root = Api::new(&server);
    let alice = tenant(&server, &root, "alice", "a.com").await;
    let bob = tenant(&server, &root, "bob", "b.com").await;
    let (_, tenants) = root.get("/api/tenants").await;
    let id_of = |d: &str| {
        tenants
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenantDomain"] == d)
            .unwrap()["tenantId"]
            .as_i64()
            .unwrap()
    };
    assert_eq!((id_of("a.com"), id_of("b.com")), (1, 2), "{tenants}");
    // Bob's load balancer, on another loopback address.
    let _lb = crate::support::Proc::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_nubo")).args([
            "lb",
            "--bus-credentials",
            &server.bus_credentials,
            "--bind",
            "127.0.0.3",
            "--id",
            "lb-bob",
            "--tenants",
            "2",
        ]),
    );
    let proxy = crate::support::free_port();
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    let image = format!("exec python3 {}", script.display());
    shared_app(
        &root,
        "mt",
        "shared",
        "shared.test",
        "local",
        &image,
        Some(proxy),
    )
    .await;
    let repo =
        json!({"artifactRepositories": [{"alias": "web", "repoUrl": "https://git.example/x.git"}]});
    let map = |d: &str| json!({"domainMappings": [{"cartridgeAlias": "web", "domainName": d}]});
    for (who, domain) in [(&alice, "shop.alice.example"), (&bob, "web.bob.example")] {
        assert_eq!(
            who.post("/api/applications/mt/signup", repo.clone())
                .await
                .0,
            201
        );
        assert_eq!(
            who.post("/api/applications/mt/domainMappings", map(domain))
                .await
                .0,
            201
        );
    }
    let body = crate::support::eventually(20, "alice's domain routed", || async {
        via_lb(proxy, "shop.alice.example", None)
            .await
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    })
    .await;
    assert!(body.ends_with(" tenant=a.com"), "{body}");
    let (_, body) = via_lb(proxy, "mt.shared.test", Some("a.com"))
        .await
        .unwrap();
    assert!(
        !body.contains("tenant="),
        "the platform's host names no tenant: {body}"
    );
    // `/t/<tenant-domain>/` on the application's own host name: a tenant signed up to it,
    // and one this load balancer serves, is named; another is not.
    crate::support::eventually(20, "alice's path routed", || async {
        via_lb_path("127.0.0.1", proxy, "mt.shared.test", "/t/a.com/page", None)
            .await
            .filter(|(_, b)| b.ends_with(" /t/a.com/page tenant=a.com"))
    })
    .await;
    for path in ["/t/b.com/page", "/t/nobody.org/page", "/x/t/a.com/"] {
        let (_, body) = via_lb_path("127.0.0.1", proxy, "mt.shared.test", path, None)
            .await
            .unwrap();
        assert!(!body.contains("tenant="), "{path}: {body}");
    }
    // Bob's domain: refused by the server's load balancer, served by bob's (which refuses
    // alice's domain and the super tenant's host name).
    assert_eq!(via_lb(proxy, "web.bob.example", None).await.unwrap().0, 404);
    let body = crate::support::eventually(30, "bob's domain on bob's load balancer", || async {
        via_lb_at("127.0.0.3", proxy, "web.bob.example", Some("a.com"))
            .await
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    })
    .await;
    assert!(
        body.ends_with(" tenant=b.com"),
        "a forged header is not passed on: {body}"
    );
    assert_eq!(
        via_lb_at("127.0.0.3", proxy, "shop.alice.example", None)
            .await
            .unwrap()
            .0,
        404
    );
    assert_eq!(
        via_lb_at("127.0.0.3", proxy, "mt.shared.test", None)
            .await
            .unwrap()
            .0,
        404
    );
    // Alice's mapping removed: her domain is served no more; bob's still is.
    assert_eq!(
        alice
            .delete("/api/applications/mt/domainMappings/shop.alice.example")
            .await
            .0,
        200
    );
    crate::support::eventually(20, "alice's domain no more routed", || async {
        via_lb(proxy, "shop.alice.example", None)
            .await
            .filter(|(s, _)| *s == 404)
            .map(|_| ())
    })
    .await;
    assert_eq!(
        via_lb_at("127.0.0.3", proxy, "web.bob.example", None)
            .await
            .unwrap()
            .0,
        200
    );
}

/// Two tenants sign up to one multi-tenant application, each with its own repository (bob's
/// private); the shared member checks each out in `tenants/<domain>/`; each tenant's domain, and
/// its `/t/<domain>/` path, serves that tenant's content.
#[tokio::test]
async fn each_tenant_s_domain_serves_its_own_repository_over_https_with_its_own_certificate() {
    const BOB_PASSWORD: &str = "bob-git-pw-never-shown";
    let dir = tempfile::tempdir().unwrap();
    let git =
        crate::gitserver::GitServer::start(&dir.path().join("git"), "bob", BOB_PASSWORD).await;
    let work = dir.path().join("work");
    let alice_work = git.repository(
        "alice.git",
        &[
            ("index.html", "alice's shop"),
            ("v1/index.html", "alice's old shop"),
        ],
        &work,
    );
    git.repository("private/bob.git", &[("index.html", "bob's blog")], &work);
    let data = dir.path().join("nubo");
    let server = ServerProcess::start(&data);
    let root = Api::new(&server);
    let alice = tenant(&server, &root, "alice", "a.com").await;
    let bob = tenant(&server, &root, "bob", "b.com").await;
    let proxy = crate::support::free_port();
    let script = crate::support::manifest_dir().join("tests/it/fixtures/tenant_site.py");
    let image = format!("exec python3 {}", script.display());
    shared_app(
        &root,
        "sites",
        "sites",
        "sites.test",
        "local",
        &image,
        Some(proxy),
    )
    .await;
    let signup = |url: String, user: Option<&str>, pw: Option<&str>| {
        let mut r = json!({"alias": "web", "repoUrl": url});
        if let (Some(u), Some(p)) = (user, pw) {
            r["privateRepo"] = json!(true);
            r["repoUsername"] = json!(u);
            r["repoPassword"] = json!(p);
        }
        json!({"artifactRepositories": [r]})
    };
    const ALICE_HOOK: &str = "alice-hook-secret-never-shown";
    let mut alice_signup = signup(format!("{}/alice.git", git.url), None, None);
    alice_signup["artifactRepositories"][0]["webhookSecret"] = json!(ALICE_HOOK);
    assert_eq!(
        alice
            .post("/api/applications/sites/signup", alice_signup)
            .await
            .0,
        201
    );
    let (_, read) = alice.get("/api/applications/sites/signup").await;
    assert!(!read.to_string().contains(ALICE_HOOK), "{read}");
    assert_eq!(
        bob.post(
            "/api/applications/sites/signup",
            signup(
                format!("{}/private/bob.git", git.url),
                Some("bob"),
                Some(BOB_PASSWORD)
            )
        )
        .await
        .0,
        201
    );
    // A domain mapped with a context path: its root is that path of the tenant's content.
    let (status, body) = alice
        .post(
            "/api/applications/sites/domainMappings",
            json!({"domainMappings": [{"cartridgeAlias": "web", "domainName": "old.alice.example",
                "contextPath": "/v1/"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    crate::support::eventually(30, "old.alice.example serving /v1", || async {
        via_lb_path("127.0.0.1", proxy, "old.alice.example", "/index.html", None)
            .await
            .filter(|(s, b)| *s == 200 && b == "alice's old shop")
    })
    .await;
    // Alice maps her domain with its certificate, and wants plain HTTP sent to HTTPS; Bob maps
    // his, then puts a certificate on it.
    let alice_cert = Cert::new("shop.alice.example");
    let bob_cert = Cert::new("blog.bob.example");
    let (status, body) = alice
        .post(
            "/api/applications/sites/domainMappings",
            json!({"domainMappings": [{"cartridgeAlias": "web", "domainName": "shop.alice.example",
                "certificate": alice_cert.pem, "privateKey": alice_cert.key, "redirectHttps": true}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["domainMappings"][0]["tls"]["fingerprint"],
        alice_cert.fingerprint.as_str(),
        "{body}"
    );
    let (status, body) = bob
        .post(
            "/api/applications/sites/domainMappings",
            json!({"domainMappings": [{"cartridgeAlias": "web", "domainName": "blog.bob.example"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let cert_path = "/api/applications/sites/domainMappings/blog.bob.example/certificate";
    // A certificate for another name, or another certificate's key: refused, naming the field.
    for (cert, field) in [(&alice_cert, "certificate"), (&bob_cert, "privateKey")] {
        let (status, body) = bob
            .put(
                cert_path,
                json!({"certificate": cert.pem, "privateKey": alice_cert.key}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    let (status, body) = bob
        .put(
            cert_path,
            json!({"certificate": bob_cert.pem, "privateKey": bob_cert.key}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tls"]["fingerprint"], bob_cert.fingerprint.as_str());
    assert!(body["tls"]["notAfter"].as_str().is_some(), "{body}");
    // Neither sees nor changes the other's mapping or certificate.
    let (status, _) = bob
        .put(
            "/api/applications/sites/domainMappings/shop.alice.example/certificate",
            json!({"certificate": bob_cert.pem, "privateKey": bob_cert.key}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = bob
        .delete("/api/applications/sites/domainMappings/shop.alice.example/certificate")
        .await;
    assert_eq!(status, 404);
    let (status, list) = bob.get("/api/applications/sites/domainMappings").await;
    assert_eq!(status, 200);
    let listed = list.to_string();
    assert!(
        listed.contains("blog.bob.example") && !listed.contains("alice"),
        "{list}"
    );
    assert!(
        !listed.contains("PRIVATE KEY") && !listed.contains("sealedKey"),
        "{list}"
    );
    // Each domain over HTTPS with its own certificate (a client trusting that one alone), and
    // the tenants over the application's own host name's `/t/<domain>/` paths.
    for (host, cert, text) in [
        ("shop.alice.example", &alice_cert, "alice's shop"),
        ("blog.bob.example", &bob_cert, "bob's blog"),
    ] {
        let client = cert.client(host, proxy);
        crate::support::eventually(
            30,
            &format!("https://{host} serving its tenant's content with its certificate"),
            || async {
                let r = client
                    .get(format!("https://{host}:{proxy}/"))
                    .send()
                    .await
                    .ok()?;
                (r.status() == 200).then_some(())?;
                (r.text().await.ok()? == text).then_some(())
            },
        )
        .await;
    }
    let metrics = root.metrics().await;
    assert!(
        metrics.contains("nubo_lb_tls_certificates 2\n"),
        "the load balancer holds both domains' certificates: {metrics}"
    );
    assert!(
        !metrics.contains("nubo_lb_tls_handshakes_total 0\n"),
        "{metrics}"
    );
    for (host, path, text) in [
        ("blog.bob.example", "/", "bob's blog"),
        ("sites.sites.test", "/t/a.com/", "alice's shop"),
        ("sites.sites.test", "/t/b.com/index.html", "bob's blog"),
    ] {
        crate::support::eventually(
            30,
            &format!("{host}{path} serving its tenant's content"),
            || async {
                via_lb_path("127.0.0.1", proxy, host, path, None)
                    .await
                    .filter(|(s, b)| *s == 200 && b == text)
            },
        )
        .await;
    }
    // Alice pushes, and her repository's webhook (GitHub's form, signed with her signup's
    // secret) updates her checkout in the members at once, not at the next periodic fetch.
    let second = git.push(
        &alice_work,
        "alice.git",
        &[("index.html", "alice's shop, v2")],
        "v2",
    );
    let payload = json!({"ref": "refs/heads/main", "after": second,
        "repository": {"clone_url": format!("{}/alice.git", git.url)}})
    .to_string();
    let sign = |secret: &str| crate::support::github_signature(secret, &payload);
    let hook = |signature: String| {
        crate::support::client()
            .post(format!("{}/api/repo/notify", server.url))
            .header("x-github-event", "push")
            .header("x-hub-signature-256", signature)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
    };
    assert_eq!(hook(sign("guess")).await.unwrap().status().as_u16(), 401);
    let r = hook(sign(ALICE_HOOK)).await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    let alice_client = alice_cert.client("shop.alice.example", proxy);
    crate::support::eventually(
        20,
        "alice's new page, well before a periodic fetch",
        || async {
            let r = alice_client
                .get(format!("https://shop.alice.example:{proxy}/"))
                .send()
                .await
                .ok()?;
            (r.text().await.ok()? == "alice's shop, v2").then_some(())
        },
    )
    .await;
    // In alice's audit log (and not bob's): the webhook's call.
    let (_, log) = alice.get("/api/audit").await;
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["user"] == "webhook"
                && e["via"] == "github"
                && e["path"] == "/api/repo/notify"),
        "{log}"
    );
    let (_, log) = bob.get("/api/audit").await;
    assert!(!log.to_string().contains("/api/repo/notify"), "{log}");
    // Alice's domain over plain HTTP: sent to HTTPS, on the same port.
    let r = alice_cert
        .client("shop.alice.example", proxy)
        .get(format!("http://shop.alice.example:{proxy}/index.html?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://shop.alice.example:{proxy}/index.html?x=1").as_str()
    );
    // An ACME HTTP-01 challenge: alice's ACME client has the load balancers answer it, over
    // plain HTTP despite her redirect; bob cannot answer one for her domain; a malformed one is
    // refused naming the field.
    let challenge = "/api/applications/sites/domainMappings/shop.alice.example/acme-challenges";
    let (status, body) = alice
        .put(
            &format!("{challenge}/tok-123"),
            json!({"keyAuthorization": "tok-123.thumb_print-1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = bob
        .put(
            &format!("{challenge}/tok-999"),
            json!({"keyAuthorization": "tok-999.x"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = alice
        .put(
            &format!("{challenge}/tok-124"),
            json!({"keyAuthorization": "another.x"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["field"], "keyAuthorization", "{body}");
    let plain = alice_cert.client("shop.alice.example", proxy);
    crate::support::eventually(
        30,
        "the ACME challenge answered over plain HTTP",
        || async {
            let r = plain
                .get(format!(
                    "http://shop.alice.example:{proxy}/.well-known/acme-challenge/tok-123"
                ))
                .send()
                .await
                .ok()?;
            (r.status() == 200 && r.text().await.ok()?.trim_end() == "tok-123.thumb_print-1")
                .then_some(())
        },
    )
    .await;
    let (status, _) = alice.delete(&format!("{challenge}/tok-123")).await;
    assert_eq!(status, 200);
    // A forged tenant on alice's domain still gets alice's content.
    let r = alice_cert
        .client("shop.alice.example", proxy)
        .get(format!("https://shop.alice.example:{proxy}/"))
        .header("X-Tenant-Domain", "b.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "alice's shop, v2");
    // Bob removes his certificate: his domain gets the load balancer's default one again.
    let (status, body) = bob.delete(cert_path).await;
    assert_eq!(status, 200, "{body}");
    crate::support::eventually(
        30,
        "bob's domain no longer presenting his certificate",
        || async {
            // A new client each time: a kept-alive connection would keep the old certificate.
            bob_cert
                .client("blog.bob.example", proxy)
                .get(format!("https://blog.bob.example:{proxy}/"))
                .send()
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    // Neither Bob's password nor a private key is in clear in any file of the platform's data
    // directory.
    for secret in [
        BOB_PASSWORD,
        ALICE_HOOK,
        alice_cert.key_line(),
        bob_cert.key_line(),
    ] {
        let leaked = crate::agent::files_containing(&data, secret.as_bytes());
        assert!(leaked.is_empty(), "{leaked:?}");
    }
}

/// A self-signed certificate for a domain, and a client that trusts it alone.
struct Cert {
    pem: String,
    key: String,
    der: rustls::pki_types::CertificateDer<'static>,
    fingerprint: String,
}

impl Cert {
    fn new(domain: &str) -> Cert {
        use sha2::Digest;
        let c = rcgen::generate_simple_self_signed(vec![domain.to_owned()]).unwrap();
        let der = c.cert.der().clone();
        Cert {
            pem: c.cert.pem(),
            key: c.key_pair.serialize_pem(),
            fingerprint: hex::encode(sha2::Sha256::digest(&der)),
            der,
        }
    }

    /// A line of the key's PEM (what a leak of it would hold).
    fn key_line(&self) -> &str {
        self.key.lines().nth(1).unwrap()
    }

    /// A client reaching `domain` at the load balancer's `proxy` port, trusting this
    /// certificate only, following no redirect.
    fn client(&self, domain: &str, proxy: u16) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .use_preconfigured_tls(config)
            .resolve(domain, std::net::SocketAddr::from(([127, 0, 0, 1], proxy)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }
}

/// The CLI of tenancy: a tenant signs up, maps a domain, reads and removes it, and reads its
/// quota; the platform's administrator sets the quota.
#[tokio::test]
async fn signups_mappings_and_quotas_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        dir.path(),
        &["--insecure-http", "--no-lb", "--mock-iaas", "-"],
    );
    let root = Api::new(&server);
    let _alice = tenant(&server, &root, "alice", "a.com").await;
    shared_app(&root, "mt", "shared", "shared.test", "mock", "mock", None).await;
    let as_alice = |args: &[&str]| {
        let o = crate::cli::nubo(
            &server,
            &[&["--user", "alice@a.com", "--password", "s3cret!"], args].concat(),
        );
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let signup = dir.path().join("signup.json");
    std::fs::write(&signup, json!({"artifactRepositories": [{"alias": "web",
        "repoUrl": "https://git.example/a.git", "repoUsername": "a", "repoPassword": "cli-pw-secret"}]}).to_string()).unwrap();
    let mapping = dir.path().join("mapping.json");
    std::fs::write(
        &mapping,
        json!({"domainMappings": [{"cartridgeAlias": "web", "domainName": "cli.alice.example"}]})
            .to_string(),
    )
    .unwrap();
    let (ok, _, err) = as_alice(&["signup", "add", "mt", "-f", signup.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, out, err) = as_alice(&["signup", "describe", "mt", "-o", "json"]);
    assert!(
        ok && out.contains("a.git") && !out.contains("cli-pw-secret"),
        "{out} {err}"
    );
    let (ok, out, err) = as_alice(&[
        "domain-mapping",
        "add",
        "mt",
        "-f",
        mapping.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("cli.alice.example"), "{out} {err}");
    let (ok, out, _) = as_alice(&["domain-mapping", "list", "mt"]);
    assert!(
        ok && out.contains("cli.alice.example") && out.contains("DOMAIN"),
        "{out}"
    );
    // A certificate from PEM files: set (the key never shown), then removed.
    let c = Cert::new("cli.alice.example");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, &c.pem).unwrap();
    std::fs::write(&key, &c.key).unwrap();
    let (ok, out, err) = as_alice(&[
        "domain-mapping",
        "set-certificate",
        "mt",
        "cli.alice.example",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        ok && out.contains(&c.fingerprint) && !out.contains("PRIVATE KEY"),
        "{out} {err}"
    );
    let (ok, out, _) = as_alice(&["domain-mapping", "list", "mt"]);
    assert!(ok && out.contains("own certificate until 4096-"), "{out}");
    let (ok, out, err) = as_alice(&[
        "domain-mapping",
        "set-certificate",
        "mt",
        "cli.alice.example",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        cert.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("privateKey"), "{out} {err}");
    let (ok, _, err) = as_alice(&[
        "domain-mapping",
        "remove-certificate",
        "mt",
        "cli.alice.example",
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = as_alice(&[
        "domain-mapping",
        "acme-challenge",
        "mt",
        "cli.alice.example",
        "tok-7",
        "tok-7.thumb",
    ]);
    assert!(ok && out.contains("acme-challenge/tok-7"), "{out} {err}");
    let (ok, _, err) = as_alice(&[
        "domain-mapping",
        "remove-acme-challenge",
        "mt",
        "cli.alice.example",
        "tok-7",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = as_alice(&["domain-mapping", "remove", "mt", "cli.alice.example"]);
    assert!(ok, "{err}");
    let (_, out, _) = as_alice(&["domain-mapping", "list", "mt"]);
    assert!(!out.contains("cli.alice.example"), "{out}");
    // Quotas: refused to the tenant, set by the administrator, read by both.
    let (ok, _, err) = as_alice(&["quota", "set", "a.com", "--applications", "3"]);
    assert!(!ok && err.contains("administrator"), "{err}");
    let o = crate::cli::nubo(
        &server,
        &[
            "quota",
            "set",
            "a.com",
            "--applications",
            "3",
            "--instances",
            "5",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ok, out, _) = as_alice(&["quota", "show", "-o", "json"]);
    assert!(
        ok && out.contains("\"limit\": 5") && out.contains("\"limit\": 3"),
        "{out}"
    );
    let (ok, _, err) = as_alice(&["signup", "remove", "mt"]);
    assert!(ok, "{err}");
}
