//! The REST API in process: the validation suite (every bad input gets a 4xx naming the problem
//! and changes nothing), CRUD semantics, authentication, the OpenAPI document and metrics.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApi, basic};

const COLLECTIONS: [&str; 8] = [
    "networkPartitions",
    "deploymentPolicies",
    "autoscalingPolicies",
    "applicationPolicies",
    "cartridges",
    "cartridgeGroups",
    "applications",
    "kubernetesClusters",
];

/// A platform holding one of everything.
async fn fixture() -> TestApi {
    let api = TestApi::new().await;
    let setup: [(&str, Value); 9] = [
        (
            "networkPartitions",
            json!({"id": "np1", "provider": "mock", "partitions": [{"id": "p1"}, {"id": "p2"}]}),
        ),
        (
            "deploymentPolicies",
            json!({"id": "dp1", "networkPartitions": [{"id": "np1", "partitionAlgo": "round-robin", "partitions": [{"id": "p1", "partitionMax": 3}, {"id": "p2", "partitionMax": 3}]}]}),
        ),
        (
            "autoscalingPolicies",
            json!({"id": "asp1", "loadThresholds": {"requestsInFlight": {"threshold": 20}}}),
        ),
        (
            "applicationPolicies",
            json!({"id": "ap1", "algorithm": "one-after-another", "networkPartitions": ["np1"]}),
        ),
        (
            "cartridges",
            json!({"type": "c1", "category": "framework", "provider": "nubo", "host": "nubo.local", "portMapping": [{"protocol": "http", "port": "8080", "proxyPort": "8280"}], "iaasProvider": [{"type": "mock", "imageId": "x"}]}),
        ),
        (
            "cartridges",
            json!({"type": "c2", "category": "data", "iaasProvider": [{"type": "local", "imageId": "python3 -m http.server $PORT"}]}),
        ),
        (
            "cartridgeGroups",
            json!({"name": "g1", "cartridges": ["c1", "c2"], "dependencies": {"startupOrders": [{"aliases": ["cartridge.a1", "cartridge.a2"]}], "terminationBehaviour": "terminate-all"}}),
        ),
        (
            "applications",
            json!({"applicationId": "app1", "components": {"groups": [{"name": "g1", "alias": "grp", "groupMinInstances": 1, "groupMaxInstances": 1, "deploymentPolicy": "dp1", "cartridges": [
            {"type": "c1", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "a1", "autoscalingPolicy": "asp1"}},
            {"type": "c2", "cartridgeMin": 1, "cartridgeMax": 2, "subscribableInfo": {"alias": "a2", "autoscalingPolicy": "asp1"}}]}]}}),
        ),
        (
            "kubernetesClusters",
            json!({"clusterId": "k1", "kubernetesMaster": {"hostId": "m", "hostname": "m.local"}, "portRange": {"upper": "32767", "lower": "30000"}}),
        ),
    ];
    for (collection, body) in setup {
        let a = api
            .post(&format!("/api/{collection}"), body.to_string().as_bytes())
            .await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "fixture {collection}: {}",
            a.body
        );
    }
    api
}

async fn snapshot(api: &TestApi) -> Vec<Value> {
    let mut out = Vec::new();
    for c in COLLECTIONS {
        out.push(api.get(&format!("/api/{c}")).await.body);
    }
    out
}

/// One bad input: where it goes, the body, the status, and words the answer must contain.
struct Bad {
    collection: &'static str,
    body: Vec<u8>,
    status: u16,
    words: &'static [&'static str],
}

fn bad(collection: &'static str, body: Value, status: u16, words: &'static [&'static str]) -> Bad {
    Bad {
        collection,
        body: body.to_string().into_bytes(),
        status,
        words,
    }
}

fn raw(collection: &'static str, body: &str, status: u16, words: &'static [&'static str]) -> Bad {
    Bad {
        collection,
        body: body.as_bytes().to_vec(),
        status,
        words,
    }
}

fn app(components: Value) -> Value {
    json!({"applicationId": "bad-app", "components": components})
}

fn cart(ty: &str, alias: &str, min: u32, max: u32) -> Value {
    json!({"type": ty, "cartridgeMin": min, "cartridgeMax": max, "subscribableInfo": {"alias": alias, "autoscalingPolicy": "asp1", "deploymentPolicy": "dp1"}})
}

fn cases() -> Vec<Bad> {
    vec![
        // Network partitions.
        bad(
            "networkPartitions",
            json!({"id": "np9", "partitions": [{"id": "p"}]}),
            400,
            &["provider", "missing"],
        ),
        bad(
            "networkPartitions",
            json!({"id": "np9", "provider": "mock", "partitions": "p"}),
            400,
            &["partitions", "invalid type"],
        ),
        bad(
            "networkPartitions",
            json!({"id": "np9", "provider": "ec2", "partitions": [{"id": "p"}]}),
            400,
            &["`ec2`", "available providers: local, mock"],
        ),
        bad(
            "networkPartitions",
            json!({"id": "np1", "provider": "mock", "partitions": [{"id": "p"}]}),
            409,
            &["network partition `np1` already exists"],
        ),
        bad(
            "networkPartitions",
            json!({"id": "np9", "provider": "mock", "partitions": [{"id": "p"}, {"id": "p"}]}),
            400,
            &["partitions[1].id", "twice"],
        ),
        bad(
            "networkPartitions",
            json!({"id": "np9", "provider": "mock", "partitions": []}),
            400,
            &["at least one partition"],
        ),
        bad(
            "networkPartitions",
            json!({"id": "has space", "provider": "mock", "partitions": [{"id": "p"}]}),
            400,
            &["`id`", "whitespace"],
        ),
        // Deployment policies.
        bad(
            "deploymentPolicies",
            json!({"id": "dp9", "networkPartitions": [{"id": "nope", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}),
            400,
            &[
                "networkPartitions[0].id",
                "network partition `nope` does not exist",
            ],
        ),
        bad(
            "deploymentPolicies",
            json!({"id": "dp9", "networkPartitions": [{"id": "np1", "partitionAlgo": "round-robin", "partitions": [{"id": "p7"}]}]}),
            400,
            &["partitions[0].id", "has no partition `p7`"],
        ),
        bad(
            "deploymentPolicies",
            json!({"id": "dp9", "networkPartitions": [{"id": "np1", "partitionAlgo": "weighted-round-robin", "partitions": [{"id": "p1"}]}]}),
            400,
            &[
                "partitionAlgo",
                "weighted-round-robin",
                "one-after-another, round-robin",
            ],
        ),
        bad(
            "deploymentPolicies",
            json!({"id": "dp9", "networkPartitions": [{"id": "np1", "partitionAlgo": "round-robin", "partitions": [{"id": "p1", "partitionMax": "many"}]}]}),
            400,
            &["partitionMax", "`many`"],
        ),
        bad(
            "deploymentPolicies",
            json!({"id": "dp9", "networkPartition": [], "max": 3}),
            400,
            &["missing field `networkPartitions`"],
        ),
        bad(
            "deploymentPolicies",
            json!({"id": "dp1", "networkPartitions": [{"id": "np1", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}),
            409,
            &["already exists"],
        ),
        // Autoscaling policies.
        bad(
            "autoscalingPolicies",
            json!({"id": "asp9", "loadThresholds": {"memoryConsumption": {"threshold": "high"}}}),
            400,
            &["memoryConsumption.threshold", "`high`"],
        ),
        bad(
            "autoscalingPolicies",
            json!({"id": "asp9", "loadThresholds": {"memoryConsumption": {"threshold": 150}}}),
            400,
            &["memoryConsumption.threshold", "percentage"],
        ),
        bad(
            "autoscalingPolicies",
            json!({"id": "asp9"}),
            400,
            &["loadThresholds"],
        ),
        bad(
            "autoscalingPolicies",
            json!({"id": "asp9", "loadThresholds": {}}),
            400,
            &["at least one of"],
        ),
        bad(
            "autoscalingPolicies",
            json!({"id": "asp1", "loadThresholds": {"loadAverage": {"threshold": 50}}}),
            409,
            &["already exists"],
        ),
        // Application policies.
        bad(
            "applicationPolicies",
            json!({"id": "ap9", "algorithm": "random", "networkPartitions": ["np1"]}),
            400,
            &["algorithm", "`random`"],
        ),
        bad(
            "applicationPolicies",
            json!({"id": "ap9", "algorithm": "all-at-once", "networkPartitions": ["np1", "np7"]}),
            400,
            &["networkPartitions[1]", "`np7` does not exist"],
        ),
        bad(
            "applicationPolicies",
            json!({"id": "ap9", "algorithm": "all-at-once", "networkPartitions": []}),
            400,
            &["at least one network partition"],
        ),
        bad(
            "applicationPolicies",
            json!({"id": "ap9", "algorithm": "one-after-another", "networkPartitions": ["np1"], "properties": [{"name": "networkPartitionGroups", "value": "np1|np2"}]}),
            400,
            &["networkPartitionGroups", "`np2`"],
        ),
        // Cartridges.
        bad(
            "cartridges",
            json!({"category": "framework"}),
            400,
            &["missing field `type`"],
        ),
        bad(
            "cartridges",
            json!({"type": "c9", "category": "framework", "portMapping": [{"protocol": "http", "port": "eighty"}]}),
            400,
            &["portMapping[0].port", "`eighty`"],
        ),
        bad(
            "cartridges",
            json!({"type": "c9", "category": "framework", "portMapping": [{"protocol": "http", "port": 70000}]}),
            400,
            &["portMapping[0].port", "out of range"],
        ),
        bad(
            "cartridges",
            json!({"type": "c9", "category": "framework", "portMapping": [{"protocol": "ftp", "port": 21}]}),
            400,
            &["portMapping[0].protocol", "`ftp`"],
        ),
        bad(
            "cartridges",
            json!({"type": "c9", "category": "framework", "multiTenant": "maybe"}),
            400,
            &["multiTenant", "`maybe`"],
        ),
        bad(
            "cartridges",
            json!({"type": "c9", "category": "framework", "iaasProvider": [{"type": "local"}]}),
            400,
            &["iaasProvider[0].imageId", "command line"],
        ),
        bad(
            "cartridges",
            json!({"type": "c1", "category": "framework"}),
            409,
            &["cartridge `c1` already exists"],
        ),
        // Cartridge groups.
        bad(
            "cartridgeGroups",
            json!({"name": "g9", "cartridges": ["c1", "c7"]}),
            400,
            &["cartridges[1]", "cartridge `c7` does not exist"],
        ),
        bad(
            "cartridgeGroups",
            json!({"name": "g9", "groups": [{"name": "g9", "cartridges": ["c1"]}]}),
            400,
            &["groups[0].name", "nested inside itself"],
        ),
        bad(
            "cartridgeGroups",
            json!({"name": "g9", "cartridges": ["c1", "c1"]}),
            400,
            &["cartridges[1]", "twice"],
        ),
        bad(
            "cartridgeGroups",
            json!({"name": "g9", "cartridges": ["c1"], "dependencies": {"startupOrders": [{"aliases": ["c1-alias"]}]}}),
            400,
            &["startupOrders[0].aliases", "cartridge.<alias>"],
        ),
        bad(
            "cartridgeGroups",
            json!({"name": "g9", "cartridges": ["c1"], "dependencies": {"terminationBehaviour": "terminate-some"}}),
            400,
            &["terminationBehaviour", "`terminate-some`"],
        ),
        bad(
            "cartridgeGroups",
            json!({"name": "g1", "cartridges": ["c1"]}),
            409,
            &["already exists"],
        ),
        // Applications.
        bad(
            "applications",
            app(json!({"cartridges": [cart("c7", "x", 1, 1)]})),
            400,
            &[
                "components.cartridges[0].type",
                "cartridge `c7` does not exist",
            ],
        ),
        bad(
            "applications",
            app(json!({"cartridges": [cart("c1", "x", 3, 2)]})),
            400,
            &["cartridgeMin", "greater than cartridgeMax"],
        ),
        bad(
            "applications",
            app(json!({"cartridges": [cart("c1", "x", 1, 1), cart("c2", "x", 1, 1)]})),
            400,
            &["alias `x` is already used"],
        ),
        // Names that become parts of cluster ids: no dots (`a.b` + `c` would be `a` + `b.c`).
        bad(
            "applications",
            app(json!({"cartridges": [cart("c1", "b.c", 1, 1)]})),
            400,
            &[
                "components.cartridges[0].subscribableInfo.alias",
                "only letters, digits",
            ],
        ),
        bad(
            "applications",
            {
                let mut a = app(json!({"cartridges": [cart("c1", "c", 1, 1)]}));
                a["applicationId"] = json!("a.b");
                a
            },
            400,
            &["applicationId", "`a.b` may contain only letters, digits"],
        ),
        bad(
            "applications",
            app(
                json!({"cartridges": [cart("c1", "x", 1, 1), cart("c2", "y", 1, 1)], "dependencies": {"startupOrders": [{"aliases": ["cartridge.x", "cartridge.y"]}, {"aliases": ["cartridge.y", "cartridge.x"]}]}}),
            ),
            400,
            &[
                "startupOrders",
                "cycle",
                "cartridge.x -> cartridge.y -> cartridge.x",
            ],
        ),
        bad(
            "applications",
            app(
                json!({"cartridges": [cart("c1", "x", 1, 1)], "dependencies": {"startupOrders": [{"aliases": ["cartridge.x", "group.ghost"]}]}}),
            ),
            400,
            &["`group.ghost` is not a child"],
        ),
        bad(
            "applications",
            app(
                json!({"cartridges": [{"type": "c1", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "x", "autoscalingPolicy": "asp1"}}]}),
            ),
            400,
            &["deploymentPolicy", "no deployment policy"],
        ),
        bad(
            "applications",
            app(
                json!({"cartridges": [{"type": "c1", "cartridgeMin": 1, "cartridgeMax": 1, "subscribableInfo": {"alias": "x", "autoscalingPolicy": "asp7", "deploymentPolicy": "dp1"}}]}),
            ),
            400,
            &["autoscaling policy `asp7` does not exist"],
        ),
        bad(
            "applications",
            app(
                json!({"groups": [{"name": "g7", "alias": "g", "deploymentPolicy": "dp1", "cartridges": [cart("c1", "x", 1, 1)]}]}),
            ),
            400,
            &[
                "components.groups[0].name",
                "cartridge group `g7` does not exist",
            ],
        ),
        bad(
            "applications",
            app(
                json!({"groups": [{"name": "g1", "alias": "g", "groupMinInstances": 3, "groupMaxInstances": 1, "deploymentPolicy": "dp1", "cartridges": [cart("c1", "a1", 1, 1), cart("c2", "a2", 1, 1)]}]}),
            ),
            400,
            &["groupMinInstances", "greater than groupMaxInstances"],
        ),
        bad(
            "applications",
            app(
                json!({"groups": [{"name": "g1", "alias": "g", "deploymentPolicy": "dp1", "cartridges": [cart("c1", "a1", 1, 1), cart("c2", "other", 1, 1)]}]}),
            ),
            400,
            &["cartridge group `g1`", "`cartridge.a2` is not a child"],
        ),
        bad(
            "applications",
            app(json!({})),
            400,
            &["at least one cartridge or group"],
        ),
        bad(
            "applications",
            json!({"applicationId": "app1", "components": {"cartridges": [cart("c1", "x", 1, 1)]}}),
            409,
            &["application `app1` already exists"],
        ),
        // Kubernetes clusters.
        bad(
            "kubernetesClusters",
            json!({"clusterId": "k9"}),
            400,
            &["missing field `kubernetesMaster`"],
        ),
        bad(
            "kubernetesClusters",
            json!({"clusterId": "k9", "kubernetesMaster": {"hostId": "m", "hostname": "m"}, "portRange": {"upper": 100, "lower": 200}}),
            400,
            &["portRange.lower", "greater than upper"],
        ),
        bad(
            "kubernetesClusters",
            json!({"clusterId": "k9", "kubernetesMaster": {"hostId": "m", "hostname": "m"}, "kubernetesHosts": [{"hostId": "m", "hostname": "h"}]}),
            400,
            &["kubernetesHosts[0].hostId", "used twice"],
        ),
        // Whatever the kind: malformed JSON, a repeated key, not an object, empty.
        raw(
            "cartridges",
            "{\"type\": \"c9\",\n \"category\": \"x\",\n}",
            400,
            &["malformed JSON", "line 3 column 1"],
        ),
        raw(
            "networkPartitions",
            r#"{"id": "np9", "id": "np8", "provider": "mock", "partitions": [{"id": "p"}]}"#,
            400,
            &["the key `id` appears twice"],
        ),
        raw(
            "applications",
            r#"{"applicationId": "a", "components": {"cartridges": [], "cartridges": []}}"#,
            400,
            &["`cartridges` appears twice", "(`components`)"],
        ),
        raw(
            "deploymentPolicies",
            "[1, 2]",
            400,
            &["expected a JSON object"],
        ),
        raw("autoscalingPolicies", "", 400, &["malformed JSON"]),
        raw(
            "applicationPolicies",
            "{\"id\": \"x\"} trailing",
            400,
            &["malformed JSON"],
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_is_refused_naming_the_problem_and_changes_nothing() {
    let api = fixture().await;
    let before = snapshot(&api).await;
    let cases = cases();
    for kind in COLLECTIONS {
        assert!(
            cases.iter().any(|c| c.collection == kind),
            "no bad-input case for {kind}"
        );
    }
    for (i, case) in cases.iter().enumerate() {
        for method in [Method::POST, Method::PUT] {
            if method == Method::PUT && case.status == 409 {
                // PUT of an existing id is an update: covered by the CRUD test.
                continue;
            }
            let a = api
                .call(
                    method.clone(),
                    &format!("/api/{}", case.collection),
                    Some(case.body.clone()),
                )
                .await;
            // A valid-looking PUT of an id that does not exist is a 404 before anything else.
            let expected =
                if method == Method::PUT && a.status == StatusCode::NOT_FOUND && case.status == 400
                {
                    404
                } else {
                    case.status
                };
            assert_eq!(
                a.status.as_u16(),
                expected,
                "case {i} ({method} {}): {}",
                case.collection,
                a.body
            );
            assert_eq!(a.body["status"], "error", "case {i}: {}", a.body);
            let message = a.body["message"].as_str().unwrap_or_default();
            if expected != 404 {
                for w in case.words {
                    assert!(
                        message.contains(w),
                        "case {i} ({method} {}): the message must mention `{w}`: {message}",
                        case.collection
                    );
                }
            }
            if expected == 400 {
                let errors = a.body["errors"].as_array().cloned().unwrap_or_default();
                assert!(
                    !errors.is_empty(),
                    "case {i}: a 400 lists the field errors: {}",
                    a.body
                );
            }
        }
    }
    assert_eq!(
        snapshot(&api).await,
        before,
        "refused requests changed the store"
    );
}

#[tokio::test]
async fn an_oversized_body_gets_413_as_json() {
    let api = fixture().await;
    let big = format!(
        "{{\"id\": \"x\", \"pad\": \"{}\"}}",
        "a".repeat(nubo_api::BODY_LIMIT + 10)
    );
    let a = api.post("/api/autoscalingPolicies", big.as_bytes()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"),
        "{}",
        a.body
    );
    assert!(api.get("/api/autoscalingPolicies/x").await.status == StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn crud_semantics() {
    let api = fixture().await;
    // Unknown fields are kept verbatim; numbers written as strings come back as numbers.
    let a = api.post("/api/autoscalingPolicies", br#"{"id": "asp2", "loadThresholds": {"loadAverage": {"threshold": "55", "note": "x"}}, "customField": {"a": [1, "b"]}}"#).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.headers["location"], "/api/autoscalingPolicies/asp2");
    let got = api.get("/api/autoscalingPolicies/asp2").await.body;
    assert_eq!(
        got,
        json!({"id": "asp2", "loadThresholds": {"loadAverage": {"threshold": 55, "note": "x"}}, "customField": {"a": [1, "b"]}})
    );
    // Update.
    let a = api
        .call(
            Method::PUT,
            "/api/autoscalingPolicies",
            Some(
                br#"{"id": "asp2", "loadThresholds": {"loadAverage": {"threshold": 60}}}"#.to_vec(),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        api.get("/api/autoscalingPolicies/asp2").await.body["loadThresholds"]["loadAverage"]["threshold"],
        60
    );
    let a = api
        .call(
            Method::PUT,
            "/api/autoscalingPolicies",
            Some(
                br#"{"id": "nope", "loadThresholds": {"loadAverage": {"threshold": 60}}}"#.to_vec(),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Missing resources.
    let a = api.get("/api/cartridges/nope").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body["message"], "cartridge `nope` does not exist");
    assert_eq!(
        api.call(Method::DELETE, "/api/cartridges/nope", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    // In use: 409 naming the users; nothing removed.
    let a = api
        .call(Method::DELETE, "/api/networkPartitions/np1", None)
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let m = a.body["message"].as_str().unwrap();
    assert!(
        m.contains("deployment policy `dp1`") && m.contains("application policy `ap1`"),
        "{m}"
    );
    let a = api.call(Method::DELETE, "/api/cartridges/c1", None).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    let m = a.body["message"].as_str().unwrap();
    assert!(
        m.contains("cartridge group `g1`") && m.contains("application `app1`"),
        "{m}"
    );
    // An update that would break a user is refused, naming it and why.
    let a = api
        .call(
            Method::PUT,
            "/api/networkPartitions",
            Some(
                json!({"id": "np1", "provider": "mock", "partitions": [{"id": "p1"}]})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    let m = a.body["message"].as_str().unwrap();
    assert!(
        m.contains("deployment policy `dp1`") && m.contains("no partition `p2`"),
        "{m}"
    );
    let a = api
        .call(
            Method::PUT,
            "/api/cartridgeGroups",
            Some(
                json!({"name": "g1", "cartridges": ["c1"]})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("application `app1`")
    );
    // Removing in dependency order works; empty lists are [].
    for path in [
        "applications/app1",
        "applicationPolicies/ap1",
        "cartridgeGroups/g1",
        "deploymentPolicies/dp1",
        "networkPartitions/np1",
    ] {
        let a = api
            .call(Method::DELETE, &format!("/api/{path}"), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert_eq!(a.body["status"], "success");
        assert_eq!(
            api.get(&format!("/api/{path}")).await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(api.get("/api/applications").await.body, json!([]));
    assert_eq!(api.get("/api/v4.1/networkPartitions").await.body, json!([]));
}

#[tokio::test]
async fn applications_show_their_status_and_cartridge_filters_work() {
    let api = fixture().await;
    let a = api.get("/api/applications/app1").await;
    assert_eq!(a.body["status"], "Created");
    assert_eq!(
        api.get("/api/applications").await.body[0]["applicationId"],
        "app1"
    );
    let a = api
        .get("/api/cartridges/filter/category?criteria=data")
        .await;
    assert_eq!(a.body.as_array().unwrap().len(), 1, "{}", a.body);
    assert_eq!(a.body[0]["type"], "c2");
    assert_eq!(
        api.get("/api/cartridges/filter/single-tenant")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api.get("/api/cartridges/filter/multi-tenant").await.body,
        json!([])
    );
    let a = api.get("/api/cartridges/filter/colour").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("known filters")
    );
    assert_eq!(
        api.get("/api/cartridges/c2/filter/category?criteria=data")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/cartridges/c1/filter/category?criteria=data")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/iaasProviders").await.body,
        json!({"iaasProviders": ["local", "mock"]})
    );
}

#[tokio::test]
async fn authentication_is_required_everywhere_but_health() {
    let api = TestApi::new().await;
    for path in [
        "/api/cartridges",
        "/api/v4.1/cartridges",
        "/api/init",
        "/api/openapi.json",
        "/metrics",
        "/api/nope",
    ] {
        let a = api.call_as(None, Method::GET, path, None).await;
        if path == "/api/nope" {
            // Unknown routes answer 404 without revealing anything else.
            assert_eq!(a.status, StatusCode::NOT_FOUND);
            continue;
        }
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(a.headers["www-authenticate"], "Basic realm=\"nubo\"");
        assert!(
            a.body["message"]
                .as_str()
                .unwrap()
                .contains("authentication required")
        );
        let a = api
            .call_as(Some(&basic("admin", "wrong")), Method::GET, path, None)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
        let a = api
            .call_as(Some("Basic !!!"), Method::GET, path, None)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    // Guessing passwords: after a burst, 429 with Retry-After, before any verification. A
    // password verified before is not verified again: its user goes on.
    assert_eq!(api.get("/api/init").await.status, StatusCode::OK);
    let mut limited = None;
    for _ in 0..40 {
        let a = api
            .call_as(
                Some(&basic("admin", "guess")),
                Method::GET,
                "/api/init",
                None,
            )
            .await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(a);
            break;
        }
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let a = limited.expect("password guessing is rate-limited");
    assert!(
        a.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("too many password attempts")
    );
    let a = api.call_as(None, Method::GET, "/health", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        json!({"status": "ok", "store": "sqlite", "controller": "none"})
    );
    let a = api.get("/api/init").await;
    assert_eq!(a.body["status"], "success");
    let a = api.call(Method::PATCH, "/api/cartridges", None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(a.body["message"].as_str().unwrap().contains("PATCH"));
}

#[tokio::test]
async fn openapi_and_metrics_are_served() {
    let api = fixture().await;
    let a = api.get("/api/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body,
        serde_json::from_str::<Value>(&nubo_api::openapi::document_json()).unwrap()
    );
    for c in COLLECTIONS {
        assert!(
            a.body["paths"][format!("/api/{c}")]["post"].is_object(),
            "{c} is documented"
        );
        assert!(
            a.body["paths"][format!("/api/{c}/{{id}}")]["delete"].is_object(),
            "{c} is documented"
        );
    }
    assert!(a.body["components"]["schemas"]["Cartridge"].is_object());
    assert!(a.body["components"]["schemas"]["PortMapping"].is_object());
    let m = api.get("/metrics").await;
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains(
            "nubo_http_requests_total{method=\"POST\",route=\"/api/cartridges\",status=\"201\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("nubo_http_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn the_quickstart_example_loads() {
    let api = TestApi::new().await;
    let dir = crate::support::manifest_dir().join("../../examples/quickstart");
    for (collection, file) in [
        ("autoscalingPolicies", "autoscaling-policy.json"),
        ("networkPartitions", "network-partition.json"),
        ("deploymentPolicies", "deployment-policy.json"),
        ("cartridges", "cartridge.json"),
        ("applicationPolicies", "application-policy.json"),
        ("applications", "application.json"),
    ] {
        let a = api
            .post(
                &format!("/api/{collection}"),
                &std::fs::read(dir.join(file)).unwrap(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{file}: {}", a.body);
    }
}

#[tokio::test]
async fn tenants_users_and_their_separate_spaces() {
    let api = TestApi::new().await;
    let tenant = json!({"admin": "boss", "firstName": "Frank", "lastName": "Myers", "adminPassword": "s3cret!", "tenantDomain": "test1.com", "email": "foo1@bar.com", "active": "true"});
    let a = api
        .post("/api/tenants", tenant.to_string().as_bytes())
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.headers["location"], "/api/tenants/test1.com");
    assert_eq!(
        api.post("/api/tenants", tenant.to_string().as_bytes())
            .await
            .status,
        StatusCode::CONFLICT
    );
    let bad = json!({"admin": "x", "adminPassword": "s3cret!", "tenantDomain": "test2.com", "email": "not-an-email"});
    let a = api.post("/api/tenants", bad.to_string().as_bytes()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.body["message"].as_str().unwrap().contains("email"),
        "{}",
        a.body
    );
    let got = api.get("/api/tenants/test1.com").await.body;
    assert_eq!(got["tenantId"], 1);
    assert_eq!(got["active"], true);
    assert!(
        got.get("adminPassword").is_none(),
        "the password is never shown: {got}"
    );
    assert_eq!(
        api.get("/api/tenants/search/test")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.call(Method::DELETE, "/api/tenants/test1.com", None)
            .await
            .status,
        StatusCode::NOT_ACCEPTABLE
    );

    // The tenant's admin logs in as boss@test1.com and works in its own space.
    let boss = basic("boss@test1.com", "s3cret!");
    let a = api
        .call_as(Some(&boss), Method::GET, "/api/init", None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let np = json!({"id": "np-t", "provider": "mock", "partitions": [{"id": "p"}]});
    assert_eq!(
        api.call_as(
            Some(&boss),
            Method::POST,
            "/api/networkPartitions",
            Some(np.to_string().into_bytes())
        )
        .await
        .status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.get("/api/networkPartitions").await.body,
        json!([]),
        "the super tenant does not see it"
    );
    assert_eq!(
        api.call_as(Some(&boss), Method::GET, "/api/networkPartitions", None)
            .await
            .body[0]["id"],
        "np-t"
    );
    assert_eq!(
        api.call_as(Some(&boss), Method::GET, "/api/tenants", None)
            .await
            .status,
        StatusCode::FORBIDDEN,
        "tenants are the super tenant's"
    );

    // Users of the tenant.
    let user = json!({"userName": "dev", "credential": "devpass1", "role": "Internal/user", "email": "dev@test1.com"});
    let a = api
        .call_as(
            Some(&boss),
            Method::POST,
            "/api/users",
            Some(user.to_string().into_bytes()),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let users = api
        .call_as(Some(&boss), Method::GET, "/api/users", None)
        .await
        .body;
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("credential").is_none()),
        "{users}"
    );
    let dev = basic("dev@test1.com", "devpass1");
    assert_eq!(
        api.call_as(Some(&dev), Method::GET, "/api/networkPartitions", None)
            .await
            .body[0]["id"],
        "np-t"
    );
    let other = json!({"userName": "x", "credential": "xxxxxxx"});
    assert_eq!(
        api.call_as(
            Some(&dev),
            Method::POST,
            "/api/users",
            Some(other.to_string().into_bytes())
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    let weak = json!({"userName": "y", "credential": "123"});
    assert_eq!(
        api.call_as(
            Some(&boss),
            Method::POST,
            "/api/users",
            Some(weak.to_string().into_bytes())
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    // A password change takes effect at once.
    let changed = json!({"userName": "dev", "credential": "newpass9", "role": "Internal/user"});
    assert_eq!(
        api.call_as(
            Some(&boss),
            Method::PUT,
            "/api/users",
            Some(changed.to_string().into_bytes())
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call_as(Some(&dev), Method::GET, "/api/init", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call_as(
            Some(&basic("dev@test1.com", "newpass9")),
            Method::GET,
            "/api/init",
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call_as(Some(&boss), Method::DELETE, "/api/users/dev", None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call_as(
            Some(&basic("dev@test1.com", "newpass9")),
            Method::GET,
            "/api/init",
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call_as(Some(&boss), Method::DELETE, "/api/users/boss", None)
            .await
            .status,
        StatusCode::CONFLICT,
        "the last admin stays"
    );

    // Deactivated tenants cannot log in; activated again, they can.
    assert_eq!(
        api.call(Method::PUT, "/api/tenants/deactivate/test1.com", None)
            .await
            .status,
        StatusCode::OK
    );
    let a = api
        .call_as(Some(&boss), Method::GET, "/api/init", None)
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(
        a.body["message"].as_str().unwrap().contains("deactivated"),
        "{}",
        a.body
    );
    assert_eq!(
        api.call(Method::PUT, "/api/tenants/activate/test1.com", None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call_as(Some(&boss), Method::GET, "/api/init", None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call_as(
            Some(&basic("boss@nowhere.com", "s3cret!")),
            Method::GET,
            "/api/init",
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn kubernetes_cluster_hosts_and_runtime_lookups() {
    let api = fixture().await;
    let minion = json!({"hostId": "h1", "hostname": "h1.local", "privateIPAddress": "10.0.0.5"});
    let a = api
        .post(
            "/api/kubernetesClusters/k1/minion",
            minion.to_string().as_bytes(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        api.post(
            "/api/kubernetesClusters/k1/minion",
            minion.to_string().as_bytes()
        )
        .await
        .status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        api.get("/api/kubernetesClusters/k1/hosts").await.body[0]["hostname"],
        "h1.local"
    );
    assert_eq!(
        api.get("/api/kubernetesClusters/k1/master").await.body["hostId"],
        "m"
    );
    let master = json!({"hostId": "m", "hostname": "master.local"});
    assert_eq!(
        api.call(
            Method::PUT,
            "/api/kubernetesClusters/k1/master",
            Some(master.to_string().into_bytes())
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/kubernetesClusters/k1").await.body["kubernetesMaster"]["hostname"],
        "master.local"
    );
    let host = json!({"hostId": "h1", "hostname": "h1.example"});
    assert_eq!(
        api.call(
            Method::PUT,
            "/api/kubernetesClusters/host",
            Some(host.to_string().into_bytes())
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/kubernetesClusters/k1/hosts").await.body[0]["hostname"],
        "h1.example"
    );
    let ghost = json!({"hostId": "h9", "hostname": "x"});
    assert_eq!(
        api.call(
            Method::PUT,
            "/api/kubernetesClusters/host",
            Some(ghost.to_string().into_bytes())
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call(Method::DELETE, "/api/kubernetesClusters/k1/hosts/h1", None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::DELETE, "/api/kubernetesClusters/k1/hosts/h1", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.get("/api/kubernetesClusters/k9/hosts").await.status,
        StatusCode::NOT_FOUND
    );
    let bad = api
        .post("/api/kubernetesClusters/k1/minion", br#"{"hostId": ""}"#)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    // Runtime lookups.
    let nps = api
        .get("/api/applications/app1/networkPartitions")
        .await
        .body;
    assert_eq!(nps.as_array().unwrap().len(), 1);
    assert_eq!(nps[0]["id"], "np1");
    assert_eq!(
        api.get("/api/cluster/app1.a1.c1.domain").await.status,
        StatusCode::NOT_FOUND,
        "not deployed"
    );
    // Deploy needs a controller, and says so after checking the request.
    assert_eq!(
        api.post("/api/applications/app1/deploy/nope", b"")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let a = api.post("/api/applications/app1/deploy/ap1", b"").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
}

/// Who calls, in the permission matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    SuperAdmin,
    SuperUser,
    AAdmin,
    AUser,
    BAdmin,
    Anonymous,
}

/// The documented answer (`docs/api.md`, "Who may do what"): `Some(status)` for a refusal,
/// `None` when the call is allowed (whatever it then answers).
fn documented(caller: Caller, method: &Method, path: &str) -> Option<StatusCode> {
    if path == "/health" || path == "/api/health" {
        return None;
    }
    // What agents read takes a member's token, never a user's credentials.
    if caller == Caller::Anonymous || path.starts_with("/agent/api") {
        return Some(StatusCode::UNAUTHORIZED);
    }
    let platform = path.starts_with("/api/tenants")
        || path.starts_with("/api/quotas")
        || path.ends_with("/signup/{tenantDomain}")
        || path.starts_with("/api/platform")
        || path.starts_with("/api/mock-iaas")
        || path == "/metrics";
    let users = path.starts_with("/api/users")
        || path.starts_with("/api/audit")
        || path.starts_with("/api/usage");
    // One's own session and tokens: any user, reads and writes.
    let own = ["/api/login", "/api/logout", "/api/session", "/api/tokens"]
        .iter()
        .any(|p| path.starts_with(p));
    let read = method == Method::GET;
    let allowed = match caller {
        Caller::SuperAdmin => true,
        Caller::AAdmin | Caller::BAdmin => !platform,
        Caller::SuperUser | Caller::AUser => own || (read && !platform && !users),
        Caller::Anonymous => false,
    };
    (!allowed).then_some(StatusCode::FORBIDDEN)
}

#[tokio::test]
async fn every_endpoint_answers_each_role_as_documented() {
    let api = TestApi::new().await;
    // Two tenants, each with an admin; a user in tenant A and one in the super tenant.
    for (domain, admin) in [("a.com", "alice"), ("b.com", "bob")] {
        let t = json!({"admin": admin, "firstName": "F", "lastName": "L", "adminPassword": "s3cret!", "tenantDomain": domain, "email": format!("{admin}@{domain}"), "active": "true"});
        let a = api.post("/api/tenants", t.to_string().as_bytes()).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let alice = basic("alice@a.com", "s3cret!");
    let user = json!({"userName": "dev", "credential": "devpass1", "role": "Internal/user", "email": "dev@a.com"});
    let a = api
        .call_as(
            Some(&alice),
            Method::POST,
            "/api/users",
            Some(user.to_string().into_bytes()),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let viewer = json!({"userName": "viewer", "credential": "viewpass1", "role": "Internal/user", "email": "v@x.org"});
    let a = api.post("/api/users", viewer.to_string().as_bytes()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    // Tenant A's own definitions, which tenant B must not see.
    let asp = json!({"id": "asp-a", "loadThresholds": {"requestsInFlight": {"threshold": 20}}});
    let a = api
        .call_as(
            Some(&alice),
            Method::POST,
            "/api/autoscalingPolicies",
            Some(asp.to_string().into_bytes()),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);

    let auth = |c: Caller| -> Option<String> {
        match c {
            Caller::SuperAdmin => Some(basic("admin", crate::support::PASSWORD)),
            Caller::SuperUser => Some(basic("viewer", "viewpass1")),
            Caller::AAdmin => Some(basic("alice@a.com", "s3cret!")),
            Caller::AUser => Some(basic("dev@a.com", "devpass1")),
            Caller::BAdmin => Some(basic("bob@b.com", "s3cret!")),
            Caller::Anonymous => None,
        }
    };
    let doc: Value =
        serde_json::from_str(&nubo_api::openapi::document_json()).expect("the OpenAPI document");
    let mut calls = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let method: Method = method.to_uppercase().parse().unwrap();
            // Parameters get values that name nothing that exists (nothing is changed by an
            // allowed call but the refusal of its empty body), tenants' domains included.
            let concrete = path
                .replace("{domain}", "nowhere.org")
                .replace("{tenantDomain}", "nowhere.org")
                .replace("{domainName}", "nowhere.org")
                .replace("{policy}", "no-policy")
                .replace("{host}", "no-host")
                .replace("{name}", "nobody")
                .replace("{part}", "zzz")
                .replace("{filter}", "zzz")
                .replace("{app}", "no-such-id")
                .replace("{cluster}", "zzz")
                .replace("{value}", "zzz")
                .replace("{id}", "no-such-id");
            calls.push((method, path.clone(), concrete));
        }
    }
    assert!(calls.len() > 60, "{} operations", calls.len());
    let all = [
        Caller::SuperAdmin,
        Caller::SuperUser,
        Caller::AAdmin,
        Caller::AUser,
        Caller::BAdmin,
        Caller::Anonymous,
    ];
    // Refusals first: none of them changes anything, for any tenant.
    let before_super = snapshot(&api).await;
    let seen_by = |c: Caller| {
        let api = &api;
        let h = auth(c);
        async move {
            let mut out = Vec::new();
            for coll in COLLECTIONS {
                out.push(
                    api.call_as(h.as_deref(), Method::GET, &format!("/api/{coll}"), None)
                        .await
                        .body,
                );
            }
            out
        }
    };
    let before_a = seen_by(Caller::AAdmin).await;
    let mut refused = 0;
    for (method, pattern, concrete) in &calls {
        for caller in all {
            let Some(status) = documented(caller, method, pattern) else {
                continue;
            };
            let body =
                (*method != Method::GET && *method != Method::DELETE).then(|| b"{}".to_vec());
            let a = api
                .call_as(auth(caller).as_deref(), method.clone(), concrete, body)
                .await;
            assert_eq!(
                a.status, status,
                "{caller:?} {method} {concrete}: {}",
                a.body
            );
            refused += 1;
        }
    }
    assert!(refused > 100, "{refused} refusals");
    assert_eq!(
        snapshot(&api).await,
        before_super,
        "a refused call changed the super tenant's state"
    );
    assert_eq!(
        seen_by(Caller::AAdmin).await,
        before_a,
        "a refused call changed tenant A's state"
    );
    // The allowed calls are allowed.
    for (method, pattern, concrete) in &calls {
        for caller in all {
            if documented(caller, method, pattern).is_some() {
                continue;
            }
            let body =
                (*method != Method::GET && *method != Method::DELETE).then(|| b"{}".to_vec());
            let a = api
                .call_as(auth(caller).as_deref(), method.clone(), concrete, body)
                .await;
            assert!(
                a.status != StatusCode::UNAUTHORIZED && a.status != StatusCode::FORBIDDEN,
                "{caller:?} {method} {concrete} is allowed, got {}: {}",
                a.status,
                a.body
            );
            assert!(
                !a.status.is_server_error() || a.status == StatusCode::SERVICE_UNAVAILABLE,
                "{caller:?} {method} {concrete}: {}",
                a.status
            );
        }
    }
    // No cross-tenant reads: tenant B sees nothing of tenant A's.
    let bob = auth(Caller::BAdmin);
    let a = api
        .call_as(
            bob.as_deref(),
            Method::GET,
            "/api/autoscalingPolicies/asp-a",
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = api
        .call_as(
            auth(Caller::AUser).as_deref(),
            Method::GET,
            "/api/autoscalingPolicies/asp-a",
            None,
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "tenant A's user reads tenant A's definitions"
    );
    // Command-line cartridges are the platform administrator's.
    let local = json!({"type": "cmd", "category": "framework", "provider": "nubo", "host": "localhost",
        "portMapping": [{"protocol": "http", "port": "8080", "proxyPort": 8280}],
        "iaasProvider": [{"type": "local", "imageId": "id > /tmp/owned"}]});
    let a = api
        .call_as(
            Some(&alice),
            Method::POST,
            "/api/cartridges",
            Some(local.to_string().into_bytes()),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("iaasProvider[0].type"),
        "{}",
        a.body
    );
    let a = api
        .post("/api/cartridges", local.to_string().as_bytes())
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "the super tenant's admin may: {}",
        a.body
    );
}
