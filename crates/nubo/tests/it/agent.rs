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
