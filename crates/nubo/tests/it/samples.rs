//! The Stratos samples: every scenario loads through the API into a fresh platform and reads back
//! equal; the refused steps are refused with a 4xx naming the reason; every other file parses.

use std::collections::BTreeMap;

use http::StatusCode;
use nubo_model::json::from_slice;
use nubo_model::{
    Application, ApplicationPolicy, ApplicationSignup, Artifact, AutoscalingPolicy, Cartridge,
    CartridgeGroup, Catalog, DeploymentPolicy, DomainMappings, Kind, KubernetesCluster,
    NetworkPartition, Problems,
};
use serde_json::Value;

use crate::support::{TestApi, equivalent, id_field, read_sample, samples};

fn load_json(rel: &str) -> Value {
    serde_json::from_slice(&read_sample(rel)).unwrap()
}

/// Words the refusal message must contain, per reason in `expected.json`.
fn reason_words(reason: &str) -> Vec<&'static str> {
    if reason.contains("trailing comma") {
        vec!["line", "column"]
    } else if reason.contains("appears twice") {
        vec!["cartridges", "twice", "components"]
    } else if reason.contains("not available") {
        vec!["not available", "available providers: local, mock"]
    } else if reason.contains("do not exist") || reason.contains("does not exist") {
        vec!["does not exist"]
    } else {
        panic!("no words known for the reason {reason:?}")
    }
}

#[tokio::test]
async fn every_scenario_loads_in_order_and_reads_back_equal() {
    if !crate::support::have_samples("every_scenario_loads_in_order_and_reads_back_equal") {
        return;
    }
    let scenarios = load_json("scenarios.json");
    let expected = load_json("expected.json");
    let rejected = expected["rejected"].as_object().unwrap();
    let mut steps_checked = 0;
    for sc in scenarios["scenarios"].as_array().unwrap() {
        let name = sc["scenario"].as_str().unwrap();
        let refusals: BTreeMap<String, String> = rejected
            .get(name)
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let api = TestApi::new().await;
        for step in sc["steps"].as_array().unwrap() {
            let endpoint = step["endpoint"].as_str().unwrap();
            let file = step["file"].as_str().unwrap();
            let body = read_sample(file);
            let answer = api.post(&format!("/api/{endpoint}"), &body).await;
            steps_checked += 1;
            if let Some(reason) = refusals.get(file) {
                assert!(
                    answer.status.is_client_error(),
                    "{name}: {file} must be refused ({reason}), got {} {}",
                    answer.status,
                    answer.body
                );
                let message = answer.body["message"].as_str().unwrap_or_default();
                for w in reason_words(reason) {
                    assert!(
                        message.contains(w),
                        "{name}: refusal of {file} must mention `{w}` ({reason}); got: {message}"
                    );
                }
                continue;
            }
            assert_eq!(
                answer.status,
                StatusCode::CREATED,
                "{name}: {file} was refused: {}",
                answer.body
            );
            let sent: Value = serde_json::from_slice(&body).unwrap();
            let id = sent[id_field(endpoint)].as_str().unwrap();
            assert_eq!(
                answer.headers["location"].to_str().unwrap(),
                format!("/api/{endpoint}/{id}"),
                "{name}: Location of {file}"
            );
            let back = api.get(&format!("/api/{endpoint}/{id}")).await;
            assert_eq!(back.status, StatusCode::OK, "{name}: {file}: {}", back.body);
            equivalent(&sent, &back.body, "$", &["status", "signUpsExist"])
                .unwrap_or_else(|e| panic!("{name}: {file} reads back differently: {e}"));
            // The v4.1 prefix serves the same resource.
            let v41 = api.get(&format!("/api/v4.1/{endpoint}/{id}")).await;
            assert_eq!(v41.body, back.body);
        }
        if !refusals.is_empty() {
            for deploy in sc["deploy"].as_array().unwrap() {
                let answer = api
                    .post(&format!("/api/{}", deploy.as_str().unwrap()), b"")
                    .await;
                assert!(
                    answer.status.is_client_error(),
                    "{name}: deploy must fail after a refused step: {}",
                    answer.status
                );
            }
        }
    }
    assert!(steps_checked >= 150, "only {steps_checked} steps ran");
}

/// Parses and validates one file alone as the kind its folder says.
fn check_alone(rel: &str) -> Result<(), String> {
    fn run<T: Artifact>(bytes: &[u8]) -> Result<T, String> {
        let t: T = from_slice(bytes).map_err(|e| e.to_string())?;
        let mut p = Problems::default();
        t.validate(&mut p);
        p.into_result().map_err(|e| {
            e.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(t)
    }
    let bytes = read_sample(rel);
    let file = rel.rsplit('/').next().unwrap();
    match rel.split('/').next().unwrap() {
        "network-partitions" => run::<NetworkPartition>(&bytes).map(drop),
        "deployment-policies" => run::<DeploymentPolicy>(&bytes).map(drop),
        "autoscaling-policies" => run::<AutoscalingPolicy>(&bytes).map(drop),
        "application-policies" => {
            let policy = run::<ApplicationPolicy>(&bytes)?;
            // Alone it is fine; against the network partitions the samples define, a reference may dangle.
            let mut catalog = Catalog::new(vec!["mock".into()]);
            for np in [
                "network-partition-1",
                "network-partition-2",
                "network-partition-3",
                "network-partition-4",
            ] {
                catalog.insert(Kind::NetworkPartition, np, serde_json::json!({}));
            }
            if policy
                .network_partitions
                .iter()
                .any(|n| n.starts_with("network-partition"))
            {
                let mut p = Problems::default();
                policy.check_references(&catalog, &mut p);
                p.into_result().map_err(|e| {
                    e.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                })?;
            }
            Ok(())
        }
        "cartridges" => run::<Cartridge>(&bytes).map(drop),
        "cartridge-groups" => run::<CartridgeGroup>(&bytes).map(drop),
        "kubernetes-clusters" => run::<KubernetesCluster>(&bytes).map(drop),
        "applications" => {
            let app_file = rel.replace(file, "application.json");
            let app =
                || from_slice::<Application>(&read_sample(&app_file)).map_err(|e| e.to_string());
            match file {
                "application.json" => run::<Application>(&bytes).map(drop),
                "autoscaling-policy.json" => run::<AutoscalingPolicy>(&bytes).map(drop),
                "deployment-policy.json" => run::<DeploymentPolicy>(&bytes).map(drop),
                "application-signup.json" => {
                    let s: ApplicationSignup = from_slice(&bytes).map_err(|e| e.to_string())?;
                    let mut p = Problems::default();
                    s.validate_for(&app()?, &mut p);
                    p.into_result().map_err(|e| {
                        e.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                }
                "domain-mappings.json" => {
                    let d: DomainMappings = from_slice(&bytes).map_err(|e| e.to_string())?;
                    let mut p = Problems::default();
                    d.validate_for(&app()?, &mut p);
                    p.into_result().map_err(|e| {
                        e.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                }
                other => panic!("unexpected sample {other} in {rel}"),
            }
        }
        other => panic!("unexpected sample folder {other}"),
    }
}

/// Words the error must contain, per file listed under `invalid_alone`.
fn alone_words(rel: &str) -> &'static [&'static str] {
    match rel {
        "cartridge-groups/tomcat-group.json" => &["nested inside itself", "tomcat-group"],
        "applications/nested/single-level-nested-groups-app/artifacts/deployment-policy.json" => {
            &["missing field `networkPartitions`"]
        }
        "network-partitions/ec2/network-partition-2.json" => &["missing field `provider`"],
        "application-policies/application-policy-3.json" => {
            &["network-partition-5", "does not exist"]
        }
        "applications/simple/single-cartridge-app/artifacts/application-signup.json" => {
            &["not multi-tenant"]
        }
        "applications/scaling/app-bursting-pattern/artifacts/application-signup.json" => {
            &["not multi-tenant"]
        }
        "applications/scaling/app-bursting-pattern/artifacts/domain-mappings.json" => {
            &["php1", "does not exist"]
        }
        other => panic!("no words known for {other}"),
    }
}

#[test]
fn every_sample_file_parses_or_fails_for_the_documented_reason() {
    if !crate::support::have_samples("every_sample_file_parses_or_fails_for_the_documented_reason")
    {
        return;
    }
    let expected = load_json("expected.json");
    let invalid = expected["invalid_alone"].as_object().unwrap();
    let rejected_files: Vec<String> = expected["rejected"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|o| o.as_object().unwrap().keys().cloned())
        .collect();
    let root = samples();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel != "scenarios.json" && rel != "expected.json" {
                    files.push(rel);
                }
            }
        }
    }
    files.sort();
    assert_eq!(files.len(), 116, "the samples folder holds 116 artifacts");
    for rel in &files {
        let result = check_alone(rel);
        if let Some(reason) = invalid.get(rel) {
            let err = result.expect_err(&format!("{rel} must fail alone: {reason}"));
            for w in alone_words(rel) {
                assert!(
                    err.contains(w),
                    "{rel}: error must mention `{w}` ({reason}); got: {err}"
                );
            }
        } else if rel.ends_with("single-group-app/artifacts/application.json") {
            let err = result.expect_err("invalid JSON");
            assert!(err.contains("line") && err.contains("column"), "{err}");
        } else if rel.contains(
            "esb-php-nested-with-esb-php-nested-with-mysql-php-app/artifacts/application.json",
        ) {
            let err = result.expect_err("repeated key");
            assert!(err.contains("`cartridges` appears twice"), "{err}");
        } else if let Err(e) = result {
            // Files refused through the API for a reference or provider reason still parse alone.
            assert!(
                rejected_files.contains(rel)
                    && (e.contains("not available") || e.contains("does not exist")),
                "{rel} does not parse into the model: {e}"
            );
        }
    }
}
