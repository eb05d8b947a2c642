//! The agent's full job (issue 15), with real processes on loopback: the metadata service.

use serde_json::{Value, json};

use crate::runtime::basics;
use crate::support::{Api, ServerProcess, eventually, member_payload};

/// A GET of a member's port: the status and body.
async fn get(port: u64) -> Option<(u16, String)> {
    let r = crate::support::client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

/// A call to the metadata service with a bearer token (or none).
async fn as_member(api: &Api, token: Option<&str>, path: &str) -> (u16, Value) {
    let mut req = api.http.get(format!("{}/metadata/api{path}", api.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Two cartridges of one application exchange an address through the metadata service, over the
/// API's HTTPS with its own certificate, each with the token of its payload; a member of another
/// application, a request without a token, a forged token, and the token of a member that is gone
/// are refused; the metadata goes with the undeploy.
#[tokio::test]
async fn two_cartridges_exchange_an_address_through_the_metadata_service() {
    let dir = tempfile::tempdir().unwrap();
    // HTTPS with the generated certificate: members trust it through METADATA_SERVICE_CA.
    let server = ServerProcess::start_with(dir.path(), &[]);
    let api = Api::trusting(&server);
    let script = crate::support::manifest_dir().join("tests/it/fixtures/metadata.py");
    let cartridge = |ty: &str| {
        json!({"type": ty, "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": "8080"}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {} {ty}", script.display())}]})
    };
    let sub = |ty: &str| {
        json!({"type": ty, "cartridgeMin": 1, "cartridgeMax": 1,
            "subscribableInfo": {"alias": ty, "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}})
    };
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", cartridge("db")),
        ("cartridges", cartridge("web")),
        (
            "applications",
            json!({"applicationId": "shop", "components": {"cartridges": [sub("db"), sub("web")]}}),
        ),
        (
            "applications",
            json!({"applicationId": "other", "components": {"cartridges": [sub("db")]}}),
        ),
    ])
    .await;
    for app in ["shop", "other"] {
        let (status, body) = api
            .post(&format!("/api/applications/{app}/deploy/ap"), json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let web = eventually(60, "the web member Active", || async {
        api.active("shop", "web").await.first().cloned()
    })
    .await;
    let web_port = web["ports"][0]["port"].as_u64().unwrap();
    let db = eventually(60, "the db member Active", || async {
        api.active("shop", "db").await.first().cloned()
    })
    .await;
    let db_port = db["ports"][0]["port"].as_u64().unwrap();
    // The web member reads what the db member wrote.
    let answer = eventually(30, "web answers with the db's address", || async {
        get(web_port).await.filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!(answer.1, format!("db at 127.0.0.1:{db_port}"));
    // A user of the tenant reads it too, through Stratos' paths.
    let (status, props) = api.get("/metadata/api/applications/shop/properties").await;
    assert_eq!(status, 200, "{props}");
    assert_eq!(
        props,
        json!([{"key": "db.address", "values": [format!("127.0.0.1:{db_port}")]}])
    );
    // And through the CLI: a table, JSON, a key added by a user.
    let o = crate::cli::nubo(&server, &["metadata", "get", "shop"]);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && table.contains("db.address") && table.contains(&db_port.to_string()),
        "{table} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = crate::cli::nubo(
        &server,
        &["metadata", "add", "shop", "region", "eu", "-o", "json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = crate::cli::nubo(
        &server,
        &["-o", "json", "metadata", "get", "shop", "region"],
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, json!({"key": "region", "values": ["eu"]}));
    // The payload carries the token and where the service is; the certificate is a file.
    let shop_member = web["memberId"].as_str().unwrap();
    let payload = member_payload(&server.data_dir, shop_member);
    let params = &payload["parameters"];
    let token = params["TOKEN"].as_str().expect("a TOKEN").to_owned();
    assert_eq!(
        params["METADATA_SERVICE_URL"].as_str().unwrap(),
        format!("{}/metadata/api", server.url)
    );
    assert!(
        params.get("NUBO_API_CA_PEM").is_some(),
        "the payload carries the certificate"
    );
    // A member of another application cannot read or write this one's.
    let other = eventually(60, "the other application's member Active", || async {
        api.active("other", "db").await.first().cloned()
    })
    .await;
    let other_token = member_payload(&server.data_dir, other["memberId"].as_str().unwrap())
        ["parameters"]["TOKEN"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = as_member(&api, Some(&other_token), "/applications/shop/properties").await;
    assert_eq!(status, 403, "{body}");
    let r = api
        .http
        .post(format!(
            "{}/metadata/api/applications/shop/properties",
            api.url
        ))
        .bearer_auth(&other_token)
        .json(&json!({"key": "db.address", "values": ["10.6.6.6:1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // Members' writes are in the audit log, under their ids: the db member's, and the refused
    // one of the other member.
    let (_, log) = api.get("/api/audit?limit=1000").await;
    let entries = log.as_array().unwrap();
    let db_member = db["memberId"].as_str().unwrap();
    for (member, status) in [(db_member, 201), (other["memberId"].as_str().unwrap(), 403)] {
        assert!(
            entries.iter().any(|e| e["user"] == member
                && e["via"] == "memberToken"
                && e["path"] == "/metadata/api/applications/shop/properties"
                && e["status"] == status),
            "{member} {status}: {log}"
        );
    }
    // Its own application's, it can.
    let (status, body) =
        as_member(&api, Some(&other_token), "/applications/other/properties").await;
    assert_eq!(status, 200, "{body}");
    // No token, a forged one, another member's name on this proof: refused.
    let (status, _) = as_member(&api, None, "/applications/shop/properties").await;
    assert_eq!(status, 401);
    let (_, proof) = token.rsplit_once('.').unwrap();
    let forged = format!("{}.{proof}", other["memberId"].as_str().unwrap());
    for bad in [forged.as_str(), "nothing", "a.b"] {
        let (status, body) = as_member(&api, Some(bad), "/applications/shop/properties").await;
        assert_eq!(status, 401, "{bad}: {body}");
    }
    let (status, _) = as_member(&api, Some(&token), "/applications/shop/properties").await;
    assert_eq!(status, 200, "the member's own token is good");
    // Undeployed: the metadata is gone, and so is the token's member.
    let (status, body) = api.post("/api/applications/shop/undeploy", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = api.get("/metadata/api/applications/shop/properties").await;
    assert_eq!(status, 404, "cleared at the undeploy");
    eventually(60, "the member's token refused once it is gone", || async {
        let (status, _) = as_member(&api, Some(&token), "/applications/shop/properties").await;
        (status == 401).then_some(())
    })
    .await;
}

/// Clients sending requests through the load balancer to `host` until `stop`: each returns its
/// failed requests and the bodies it saw.
pub(crate) fn clients(
    proxy: u16,
    host: &'static str,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, std::collections::BTreeSet<String>)>> {
    use std::sync::atomic::Ordering;
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(10))
                    .build()
                    .unwrap();
                let (mut failures, mut seen) = (0, std::collections::BTreeSet::new());
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .get(format!("http://127.0.0.1:{proxy}/"))
                        .header("host", host)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            seen.insert(r.text().await.unwrap_or_default());
                        }
                        _ => failures += 1,
                    }
                }
                (failures, seen)
            })
        })
        .collect()
}

/// Through the load balancer.
pub(crate) async fn through(proxy: u16, host: &str) -> Option<String> {
    let r = crate::support::client()
        .get(format!("http://127.0.0.1:{proxy}/"))
        .header("host", host)
        .send()
        .await
        .ok()?;
    (r.status() == 200).then_some(r.text().await.ok()?)
}

/// Every file under `dir` whose bytes contain `needle`.
pub(crate) fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
            {
                out.push(p);
            }
        }
    }
    out
}

/// The commits the members of an application run, from its runtime view.
async fn commits(api: &Api, app: &str) -> Vec<String> {
    api.members(app)
        .await
        .into_iter()
        .filter(|(_, m)| m["status"] == "Active")
        .map(|(_, m)| m["artifactCommit"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// An application whose artifact is a git repository serves its version 1; a commit is pushed
/// and GitHub's webhook called (signed with the repository's secret): its members fetch it one
/// after another, each shows its commit in the runtime view, and a client sending requests
/// through the load balancer throughout sees no failed request. A private repository is cloned
/// with its credentials, which appear in no API answer and no file of the platform but the
/// sealed store.
#[tokio::test]
async fn a_git_artifact_is_updated_by_its_webhook_member_after_member_with_no_failed_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const PASSWORD: &str = "pw-Zx81-never-shown";
    const HOOK_SECRET: &str = "hook-secret-for-site";
    let dir = tempfile::tempdir().unwrap();
    let git =
        crate::gitserver::GitServer::start(&dir.path().join("git"), "deployer", PASSWORD).await;
    let work = dir.path().join("work");
    let site = git.repository("site.git", &[("index.html", "version 1")], &work);
    let first = crate::gitserver::git(&site, &["rev-parse", "HEAD"]);
    git.repository("private/vault.git", &[("index.html", "private 1")], &work);
    let data = dir.path().join("nubo");
    let server = ServerProcess::start(&data);
    let api = Api::new(&server);
    let proxy = crate::support::free_port();
    let sub = |app: &str, min: u32, repo: Value| {
        json!({"applicationId": app, "components": {"cartridges": [
            {"type": "static", "cartridgeMin": min, "cartridgeMax": min,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp",
                "artifactRepository": repo}}]}})
    };
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", json!({"type": "static", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "iaasProvider": [{"type": "local", "imageId": "exec python3 -m http.server $PORT --bind 127.0.0.1"}]})),
        ("applications", sub("site", 2, json!({"privateRepo": false, "repoUrl": format!("{}/site.git", git.url), "webhookSecret": HOOK_SECRET}))),
        ("applications", sub("vault", 1, json!({"privateRepo": true, "repoUrl": format!("{}/private/vault.git", git.url), "repoUsername": "deployer", "repoPassword": PASSWORD}))),
    ])
    .await;
    for app in ["site", "vault"] {
        let (status, body) = api
            .post(&format!("/api/applications/{app}/deploy/ap"), json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    eventually(
        60,
        "both members of site Active, at the first commit",
        || async {
            let c = commits(&api, "site").await;
            (c.len() == 2 && c.iter().all(|c| *c == first)).then_some(())
        },
    )
    .await;
    let v1 = eventually(20, "version 1 through the load balancer", || async {
        through(proxy, "site.web.localhost").await
    })
    .await;
    assert_eq!(v1, "version 1");
    // The private repository, cloned with its credentials.
    let private = eventually(60, "the private repository's content served", || async {
        through(proxy, "vault.web.localhost").await
    })
    .await;
    assert_eq!(private, "private 1");
    assert!(
        git.served().iter().any(|s| s.path.starts_with("/private/")
            && s.user.as_deref() == Some("deployer")
            && s.status == 200),
        "the clone authenticated: {:?}",
        git.served()
    );

    // Traffic throughout the update.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = clients(proxy, "site.web.localhost", 4, stop.clone());
    let second = git.push(&site, "site.git", &[("index.html", "version 2")], "v2");
    let payload = json!({"ref": "refs/heads/main", "after": second,
        "repository": {"url": format!("{}/site", git.url), "clone_url": format!("{}/site.git", git.url)}})
    .to_string();
    let sign = |secret: &str| crate::support::github_signature(secret, &payload);
    let hook = |signature: String| {
        api.http
            .post(format!("{}/api/repo/notify", api.url))
            .header("x-github-event", "push")
            .header("x-hub-signature-256", signature)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
    };
    // A wrong secret proves nothing; GitLab's header with a wrong token neither.
    assert_eq!(hook(sign("guess")).await.unwrap().status().as_u16(), 401);
    let r = api
        .http
        .post(format!("{}/api/repo/notify", api.url))
        .header("x-gitlab-token", "guess")
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = hook(sign(HOOK_SECRET)).await.unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    eventually(60, "every member of site at the new commit", || async {
        let c = commits(&api, "site").await;
        (c.len() == 2 && c.iter().all(|c| *c == second)).then_some(())
    })
    .await;
    let v2 = eventually(20, "version 2 through the load balancer", || async {
        through(proxy, "site.web.localhost")
            .await
            .filter(|b| b == "version 2")
    })
    .await;
    assert_eq!(v2, "version 2");
    stop.store(true, Ordering::Relaxed);
    let (mut failures, mut seen) = (0, std::collections::BTreeSet::new());
    for c in load {
        let (f, s) = c.await.unwrap();
        failures += f;
        seen.extend(s);
    }
    assert_eq!(failures, 0, "no request failed during the update");
    assert!(
        seen.contains("version 1") && seen.contains("version 2"),
        "{seen:?}"
    );
    // The vault's member was not touched: another repository.
    let vault = commits(&api, "vault").await;
    assert_eq!(vault.len(), 1);
    assert_ne!(vault[0], second);
    // Stratos' form, with an admin's credentials: the same update, asked again.
    let (status, body) = api
        .post(
            "/api/repo/notify",
            json!({"repository": {"url": format!("{}/site.git", git.url)}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.to_string().contains("site.web"), "{body}");

    // The password: in no API answer, no log line, no file of the platform but the sealed store.
    for path in [
        "/api/applications/vault",
        "/api/applications",
        "/api/applications/vault/runtime",
    ] {
        let (_, body) = api.get(path).await;
        let text = body.to_string();
        assert!(
            !text.contains(PASSWORD) && !text.contains("repoPassword"),
            "{path}: {text}"
        );
    }
    let (_, app) = api.get("/api/applications/site").await;
    assert!(!app.to_string().contains(HOOK_SECRET), "{app}");
    let leaks = files_containing(&data, PASSWORD.as_bytes());
    assert!(leaks.is_empty(), "the password is in {leaks:?}");
    // A definition read back and written again keeps its sealed password: a fresh member of the
    // updated application still clones the private repository.
    let (_, mut vault_app) = api.get("/api/applications/vault").await;
    for k in ["status", "signUpsExist"] {
        vault_app.as_object_mut().unwrap().remove(k);
    }
    let (status, body) = api
        .send(reqwest::Method::PUT, "/api/applications", Some(vault_app))
        .await;
    assert!(status == 200 || status == 202, "{status} {body}");
    let (status, body) = api
        .post("/api/applications/vault/undeploy", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(60, "vault undeployed", || async {
        (api.get("/api/applications/vault/runtime").await.0 == 404).then_some(())
    })
    .await;
    let (status, body) = api
        .post("/api/applications/vault/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let again = eventually(60, "the private content served again", || async {
        through(proxy, "vault.web.localhost").await
    })
    .await;
    assert_eq!(again, "private 1");
    assert!(files_containing(&data, PASSWORD.as_bytes()).is_empty());
}

/// The numbers in log lines `out N` / `err N` of a JSON list.
fn numbers(lines: &[Value], prefix: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l["text"].as_str()?.strip_prefix(prefix)?.parse().ok())
        .collect()
}

/// A member's workload output, through its agent and the bus, read back through the API and the
/// CLI (`nubo logs`, and `--follow` as lines come); another tenant reads none of it.
#[tokio::test]
async fn a_member_s_logs_are_read_and_followed_and_another_tenant_reads_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    api.add_all(&basics()).await;
    let chatty = "(i=0; while true; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i+1)); sleep 0.1; done) & exec python3 -m http.server $PORT --bind 127.0.0.1";
    api.add_all(&[
        ("cartridges", json!({"type": "chatty", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
            "iaasProvider": [{"type": "local", "imageId": chatty}]})),
        ("applications", json!({"applicationId": "talk", "components": {"cartridges": [
            {"type": "chatty", "cartridgeMin": 2, "cartridgeMax": 2,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    let (status, body) = api
        .post("/api/applications/talk/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let members = eventually(60, "both members Active", || async {
        let m = api.active("talk", "web").await;
        (m.len() == 2).then_some(m)
    })
    .await;
    let one = members[0]["memberId"].as_str().unwrap().to_owned();
    let lines = eventually(30, "lines of both members and both streams", || async {
        let (_, v) = api.get("/api/applications/talk/logs").await;
        let lines = v.as_array().cloned().unwrap_or_default();
        let members: std::collections::BTreeSet<&str> = lines
            .iter()
            .filter_map(|l| l["memberId"].as_str())
            .collect();
        (members.len() == 2
            && lines.iter().any(|l| l["stream"] == "stderr")
            && numbers(&lines, "out ").len() >= 6)
            .then_some(lines)
    })
    .await;
    // Each member's lines come in order, none lost on the way.
    for m in [&one, members[1]["memberId"].as_str().unwrap()] {
        let mine: Vec<Value> = lines
            .iter()
            .filter(|l| l["memberId"] == *m)
            .cloned()
            .collect();
        let outs = numbers(&mine, "out ");
        assert!(outs.windows(2).all(|w| w[1] == w[0] + 1), "{m}: {outs:?}");
        assert_eq!(outs.first(), Some(&0), "{m} from its first line");
    }
    // One member, the last lines.
    let (_, v) = api
        .get(&format!("/api/applications/talk/logs?member={one}&tail=3"))
        .await;
    let last = v.as_array().unwrap();
    assert_eq!(last.len(), 3);
    assert!(last.iter().all(|l| l["memberId"] == one.as_str()));
    let (status, _) = api.get("/api/applications/talk/logs?since=soon").await;
    assert_eq!(status, 400);
    // The CLI: a table, and --follow shows lines written after it started.
    let o = crate::cli::nubo(&server, &["logs", "talk", "--member", &one, "--tail", "2"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains(&one), "{table}");
    let before = numbers(
        api.get(&format!("/api/applications/talk/logs?member={one}"))
            .await
            .1
            .as_array()
            .unwrap(),
        "out ",
    )
    .into_iter()
    .max()
    .unwrap();
    let mut follow = std::process::Command::new(env!("CARGO_BIN_EXE_nubo"))
        .args(["logs", "talk", "--follow", "--member", &one])
        .env("NUBO_URL", &server.url)
        .env("NUBO_PASSWORD", crate::support::PASSWORD)
        .env("NUBO_CONFIG", dir.path().join("no-config.toml"))
        .env_remove("NUBO_USER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut newest = 0;
    while newest <= before + 5 && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200))
            && let Some(n) = l
                .split("| out ")
                .nth(1)
                .and_then(|n| n.trim().parse::<u64>().ok())
        {
            newest = newest.max(n);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        newest > before + 5,
        "--follow printed lines written after it started (newest {newest}, before {before})"
    );
    // Another tenant reads none of it.
    let t = json!({"admin": "bob", "firstName": "B", "lastName": "B", "adminPassword": "s3cret!", "tenantDomain": "b.com", "email": "bob@b.com", "active": "true"});
    let (status, body) = api.post("/api/tenants", t).await;
    assert_eq!(status, 201, "{body}");
    let bob = Api::as_user(&server, "bob@b.com", "s3cret!");
    let (status, _) = bob.get("/api/applications/talk/logs").await;
    assert_eq!(status, 404);
    let r = bob
        .http
        .get(format!(
            "{}/api/applications/talk/logs?follow=true",
            bob.url
        ))
        .basic_auth("bob@b.com", Some("s3cret!"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(api.metrics().await.contains("nubo_logs_lines_total"));
}

/// Clients through the load balancer that note, for each request, when it was sent and whether
/// it succeeded.
fn timed_clients(
    proxy: u16,
    host: &'static str,
    n: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(std::time::Instant, bool)>>> {
    use std::sync::atomic::Ordering;
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(20))
                    .build()
                    .unwrap();
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = std::time::Instant::now();
                    let ok = matches!(
                        client
                            .get(format!("http://127.0.0.1:{proxy}/"))
                            .header("host", host)
                            .send()
                            .await,
                        Ok(r) if r.status() == 200
                    );
                    out.push((sent, ok));
                    if !ok {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                }
                out
            })
        })
        .collect()
}

/// Adds and deploys `app`: one cluster `web` of `min` members of `slow.py` holding each request
/// `delay` seconds, behind `proxy`; the cartridge's `property` list too. Waits until they are
/// Active.
async fn deploy_slow(api: &Api, app: &str, min: u32, delay: &str, proxy: u16, property: Value) {
    let script = crate::support::manifest_dir().join("tests/it/fixtures/slow.py");
    let mut props = vec![json!({"name": "payload_parameter.DELAY", "value": delay})];
    props.extend(property.as_array().cloned().unwrap_or_default());
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", json!({"type": "slow", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "property": props,
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})),
        ("applications", json!({"applicationId": app, "components": {"cartridges": [
            {"type": "slow", "cartridgeMin": min, "cartridgeMax": min,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}})),
    ])
    .await;
    let (status, body) = api
        .post(&format!("/api/applications/{app}/deploy/ap"), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(60, "the members Active", || async {
        (api.active(app, "web").await.len() == min as usize).then_some(())
    })
    .await;
}

/// Undeploy under load, with requests that take 1.5 s and a workload that dies at once on
/// SIGTERM (Python's default): every request sent before the undeploy began is answered, since
/// each member waits for its connections to end (the load balancer closes its idle ones to a
/// draining member) before its workload is stopped.
#[tokio::test]
async fn undeploy_under_load_fails_no_request_sent_before_the_drain_began() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = crate::support::free_port();
    deploy_slow(&api, "long", 2, "1.5", proxy, json!([])).await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = timed_clients(proxy, "long.web.localhost", 6, stop.clone());
    // Requests in flight on both members.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let began = std::time::Instant::now();
    let (status, body) = api.post("/api/applications/long/undeploy", json!({})).await;
    assert_eq!(status, 202, "{body}");
    eventually(60, "undeployed", || async {
        (api.get("/api/applications/long/runtime").await.0 == 404).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut before = (0, 0);
    for c in load {
        for (sent, ok) in c.await.unwrap() {
            if sent < began {
                before.0 += 1;
                if !ok {
                    before.1 += 1;
                }
            }
        }
    }
    assert!(before.0 >= 12, "{} requests before the undeploy", before.0);
    assert_eq!(
        before.1, 0,
        "requests sent before the undeploy that failed (of {})",
        before.0
    );
}

/// A member whose workload stops (`SIGSTOP`) under load: its liveness path fails, it is taken
/// out and replaced, and no client request fails (one sent to it is answered by another member
/// once it is gone).
#[tokio::test]
async fn a_stopped_member_under_load_is_replaced_with_no_failed_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = crate::support::free_port();
    deploy_slow(
        &api,
        "steady",
        2,
        "0.05",
        proxy,
        json!([{"name": "livenessPath", "value": "/"}, {"name": "unhealthyTimeout", "value": "1"}]),
    )
    .await;
    let victim = api.active("steady", "web").await[0]["memberId"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = timed_clients(proxy, "steady.web.localhost", 4, stop.clone());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let agent = crate::support::agent_pid(dir.path(), &victim).unwrap();
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
    eventually(
        60,
        "replaced: two healthy members, the stopped one gone",
        || async {
            let a = api.active("steady", "web").await;
            (a.len() == 2 && a.iter().all(|m| m["memberId"] != victim.as_str())).then_some(())
        },
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, 0);
    for c in load {
        for (_, ok) in c.await.unwrap() {
            sent += 1;
            if !ok {
                failed += 1;
            }
        }
    }
    assert!(
        !crate::support::alive(workload),
        "the stopped workload is gone"
    );
    assert!(sent > 20, "{sent} requests");
    assert_eq!(failed, 0, "failed requests of {sent}");
}

/// The hooks of other members' events, as Stratos' agent runs them: a member of `web` runs
/// `MemberActivatedEvent.sh` when the application's `db` member activates (with its id, service
/// and ports, and the application's member list), `CompleteTopologyEvent.sh` with the
/// application's topology, and a failing `MemberTerminatedEvent.sh` when `db` goes, whose
/// failure shows in the member's logs.
#[tokio::test]
async fn member_event_hooks_run_for_the_application_s_other_members() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let hooks = tempfile::tempdir().unwrap();
    let seen = hooks.path().join("seen");
    std::fs::write(
        hooks.path().join("MemberActivatedEvent.sh"),
        format!(
            "echo \"$EVENT $STRATOS_EVENT_MEMBER_ID $EVENT_CLUSTER_ALIAS $EVENT_MEMBER_PORTS\" >> {0}\necho \"$MEMBER_LIST_JSON\" > {0}.list\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::write(
        hooks.path().join("CompleteTopologyEvent.sh"),
        format!("echo \"$TOPOLOGY_JSON\" > {}.topology\n", seen.display()),
    )
    .unwrap();
    std::fs::write(
        hooks.path().join("MemberTerminatedEvent.sh"),
        "echo \"cannot forget $EVENT_MEMBER_ID\" >&2\nexit 3\n",
    )
    .unwrap();
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    let cartridge = |ty: &str, hooked: bool| {
        let mut c = json!({"type": ty, "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": "8080"}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]});
        if hooked {
            c["property"] =
                json!([{"name": "extensionsDir", "value": hooks.path().display().to_string()}]);
        }
        c
    };
    let sub = |ty: &str| {
        json!({"type": ty, "cartridgeMin": 1, "cartridgeMax": 1,
            "subscribableInfo": {"alias": ty, "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}})
    };
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", cartridge("web", true)),
        ("cartridges", cartridge("db", false)),
        // web first: it follows the topology when db activates.
        (
            "applications",
            json!({"applicationId": "pair", "components": {"cartridges": [sub("web"), sub("db")],
            "dependencies": {"startupOrders": [{"aliases": ["cartridge.web", "cartridge.db"]}]}}}),
        ),
    ])
    .await;
    let (status, body) = api
        .post("/api/applications/pair/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let db = eventually(60, "db Active", || async {
        api.active("pair", "db")
            .await
            .first()
            .map(|m| m["memberId"].as_str().unwrap().to_owned())
    })
    .await;
    let line = eventually(30, "the MemberActivatedEvent hook ran", || async {
        std::fs::read_to_string(&seen)
            .ok()
            .filter(|t| t.contains(&db))
    })
    .await;
    assert!(
        line.starts_with(&format!("MemberActivatedEvent {db} db http:")),
        "{line}"
    );
    let list: Value = serde_json::from_str(
        std::fs::read_to_string(format!("{}.list", seen.display()))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "web and db: {list}");
    let topology = eventually(30, "the CompleteTopologyEvent hook ran", || async {
        std::fs::read_to_string(format!("{}.topology", seen.display())).ok()
    })
    .await;
    assert!(topology.contains("\"alias\":\"web\""), "{topology}");
    // db's workload dies: web's MemberTerminatedEvent hook fails, and its member's logs say so.
    let agent = crate::support::agent_pid(dir.path(), &db).unwrap();
    let out = std::process::Command::new("pgrep")
        .args(["-P", &agent.to_string()])
        .output()
        .unwrap();
    let workload: i32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap();
    unsafe { libc::kill(workload, libc::SIGKILL) };
    let lines = eventually(60, "the hook's failure in web's logs", || async {
        let (_, v) = api.get("/api/applications/pair/logs").await;
        let text = v.to_string();
        text.contains(&format!("cannot forget {db}")).then_some(v)
    })
    .await;
    let failure = lines
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["text"].as_str().unwrap_or("").contains("cannot forget"))
        .unwrap();
    assert_eq!(failure["stream"], "stderr");
    assert!(
        failure["text"]
            .as_str()
            .unwrap()
            .contains("MemberTerminatedEvent.sh failed")
    );
}

/// Stratos' commit-back: with `commitEnabled`, the cluster's committer (its Active member with the
/// lowest id, one per cluster so that members never push over each other) commits what its
/// workload wrote in its artifacts and pushes it to the repository's default branch, with the
/// repository's credentials; the other member's changes are not pushed.
#[tokio::test]
async fn commit_back_pushes_the_committer_s_changes_only() {
    const PASSWORD: &str = "push-Secret-77";
    let dir = tempfile::tempdir().unwrap();
    let git =
        crate::gitserver::GitServer::start(&dir.path().join("git"), "deployer", PASSWORD).await;
    let work = dir.path().join("work");
    git.repository("private/site.git", &[("index.html", "v1")], &work);
    let server = ServerProcess::start(&dir.path().join("nubo"));
    let api = Api::new(&server);
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", json!({"type": "writer", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
            "property": [{"name": "commitEnabled", "value": "true"}, {"name": "artifactUpdateInterval", "value": "1"}],
            "iaasProvider": [{"type": "local", "imageId": "echo $NUBO_MEMBER_ID > written-$NUBO_MEMBER_ID.txt && exec python3 -m http.server $PORT --bind 127.0.0.1"}]})),
        ("applications", json!({"applicationId": "wiki", "components": {"cartridges": [
            {"type": "writer", "cartridgeMin": 2, "cartridgeMax": 2,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp",
                "artifactRepository": {"privateRepo": true, "repoUrl": format!("{}/private/site.git", git.url),
                    "repoUsername": "deployer", "repoPassword": PASSWORD}}}]}})),
    ])
    .await;
    // A bad value is refused naming the property.
    let (status, body) = api
        .post(
            "/api/cartridges",
            json!({"type": "bad", "category": "x", "host": "localhost",
            "property": [{"name": "commitEnabled", "value": "yes"}],
            "iaasProvider": [{"type": "local", "imageId": "true"}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("commitEnabled"), "{body}");
    let (status, body) = api
        .post("/api/applications/wiki/deploy/ap", json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let mut ids: Vec<String> = eventually(60, "two members Active", || async {
        let m = api.active("wiki", "web").await;
        (m.len() == 2).then_some(m)
    })
    .await
    .iter()
    .map(|m| m["memberId"].as_str().unwrap().to_owned())
    .collect();
    ids.sort();
    let bare = git.root.join("private/site.git");
    let files = eventually(30, "the committer's file pushed", || async {
        let out = std::process::Command::new("git")
            .args(["ls-tree", "--name-only", "main"])
            .current_dir(&bare)
            .output()
            .unwrap();
        let names = String::from_utf8_lossy(&out.stdout).into_owned();
        names.contains("written-").then_some(names)
    })
    .await;
    assert!(
        files.contains(&format!("written-{}.txt", ids[0])),
        "{files}"
    );
    assert!(
        !files.contains(&format!("written-{}.txt", ids[1])),
        "{files}"
    );
    let head = crate::gitserver::git(&bare, &["rev-parse", "main"]);
    let message = crate::gitserver::git(&bare, &["log", "-1", "--format=%s", "main"]);
    assert_eq!(message, format!("nubo: the changes of member {}", ids[0]));
    // The committer shows the commit it pushed; the push was authenticated.
    eventually(30, "the committer's commit in the runtime view", || async {
        api.members("wiki")
            .await
            .iter()
            .any(|(_, m)| m["memberId"] == ids[0].as_str() && m["artifactCommit"] == head.as_str())
            .then_some(())
    })
    .await;
    assert!(
        git.served()
            .iter()
            .any(|s| s.path.ends_with("git-receive-pack")
                && s.user.as_deref() == Some("deployer")
                && s.status == 200)
    );
    // A second round with nothing new pushes nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(crate::gitserver::git(&bare, &["rev-parse", "main"]), head);
}

/// A member whose liveness path fails for a while is taken out of the load balancer at once
/// (every request goes to the other member), and put back when it answers again, without being
/// replaced; the runtime view says why meanwhile.
#[tokio::test]
async fn an_unhealthy_member_is_taken_out_of_the_load_balancer_and_back_when_it_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let api = Api::new(&server);
    let proxy = crate::support::free_port();
    let sick = dir.path().join("sick-{member}");
    let script = crate::support::manifest_dir().join("tests/it/fixtures/whoami.py");
    api.add_all(&basics()).await;
    api.add_all(&[
        ("cartridges", json!({"type": "who", "category": "framework", "host": "localhost",
            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
            "property": [{"name": "livenessPath", "value": "/alive"}, {"name": "unhealthyTimeout", "value": "60"}],
            "iaasProvider": [{"type": "local", "imageId": format!("exec python3 {}", script.display())}]})),
        ("applications", json!({"applicationId": "who", "components": {"cartridges": [
            {"type": "who", "cartridgeMin": 2, "cartridgeMax": 2,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp",
               "property": [{"name": "payload_parameter.SICK_FILE", "value": sick.display().to_string()}]}}]}})),
    ])
    .await;
    let (status, body) = api.post("/api/applications/who/deploy/ap", json!({})).await;
    assert_eq!(status, 202, "{body}");
    let ids: Vec<String> = eventually(60, "two members Active", || async {
        let m = api.active("who", "web").await;
        (m.len() == 2).then_some(m)
    })
    .await
    .iter()
    .map(|m| m["memberId"].as_str().unwrap().to_owned())
    .collect();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = clients(proxy, "who.web.localhost", 3, stop.clone());
    // The first member is sick: out at once, saying why; every request goes to the other.
    let sick_one = dir.path().join(format!("sick-{}", ids[0]));
    std::fs::write(&sick_one, "x").unwrap();
    eventually(
        20,
        "the sick member out of the load balancer, saying why",
        || async {
            api.members("who")
                .await
                .iter()
                .any(|(_, m)| {
                    m["memberId"] == ids[0].as_str()
                        && m["status"] == "Active"
                        && m["unhealthy"]
                            .as_str()
                            .is_some_and(|w| w.contains("liveness path /alive failed"))
                })
                .then_some(())
        },
    )
    .await;
    // The load balancer follows the topology a moment after the API shows it.
    eventually(
        10,
        "the load balancer routes to the healthy member only",
        || async {
            let mut all = true;
            for _ in 0..6 {
                all &= through(proxy, "who.web.localhost")
                    .await
                    .is_some_and(|w| w.starts_with(&ids[1]));
            }
            all.then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        let who = through(proxy, "who.web.localhost").await.unwrap();
        assert!(
            who.starts_with(&ids[1]),
            "{who}: only the healthy member serves"
        );
    }
    std::fs::remove_file(&sick_one).unwrap();
    eventually(20, "back, healthy, and served from again", || async {
        let healthy = api
            .members("who")
            .await
            .iter()
            .all(|(_, m)| m["status"] == "Active" && m.get("unhealthy").is_none());
        let mut served = std::collections::BTreeSet::new();
        for _ in 0..6 {
            if let Some(w) = through(proxy, "who.web.localhost").await {
                served.insert(w.split(' ').next().unwrap_or("").to_owned());
            }
        }
        (healthy && served.contains(&ids[0])).then_some(())
    })
    .await;
    // Not replaced: the same two members.
    let mut now: Vec<String> = api
        .active("who", "web")
        .await
        .iter()
        .map(|m| m["memberId"].as_str().unwrap().to_owned())
        .collect();
    now.sort();
    let mut before = ids.clone();
    before.sort();
    assert_eq!(now, before, "recovered members are kept");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = 0;
    for c in load {
        failures += c.await.unwrap().0;
    }
    assert_eq!(
        failures, 0,
        "no request failed while the member was out and back"
    );
}
