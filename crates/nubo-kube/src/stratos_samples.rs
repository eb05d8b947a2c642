//! The manifests for Stratos' Kubernetes samples (its kubernetes cartridges on its kubernetes
//! clusters), compared with the snapshots under `snapshots/`. Regenerate after a reviewed change
//! with `NUBO_BLESS=1 cargo nextest run -p nubo-kube stratos`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::manifests::{self, PodInput, PortSpec, ServicesInput};

fn read(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A property list (`[{"name", "value"}]`) as a map.
fn properties(v: &Value) -> BTreeMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// A number Stratos may write as a string.
fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// The pod of the first member and the services of a cartridge's cluster on a Kubernetes
/// cluster (its port range), as Nubo makes them.
fn manifests_for(cartridge: &Value, k8s: &Value) -> Value {
    let kind = cartridge["type"].as_str().unwrap();
    let image = cartridge["iaasProvider"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "kubernetes")
        .map(|p| p["imageId"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| format!("{kind}:latest"));
    let settings = manifests::cartridge_settings(&properties(&cartridge["property"])).unwrap();
    let ports: Vec<PortSpec> = cartridge["portMapping"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| PortSpec {
            name: p["name"].as_str().unwrap().to_owned(),
            protocol: p["protocol"].as_str().unwrap().to_owned(),
            port: number(&p["port"]).unwrap() as u16,
            service_type: p["kubernetesPortType"]
                .as_str()
                .unwrap_or("NodePort")
                .to_owned(),
            node_port: number(&p["kubernetesServicePort"]).map(|n| n as u16),
        })
        .collect();
    let cluster_id = format!("app.{kind}.domain");
    let member_id = format!("{cluster_id}.np1-p1.1");
    let mut env = BTreeMap::new();
    env.insert("APPLICATION_ID".to_owned(), "app".to_owned());
    env.insert("CLUSTER_ID".to_owned(), cluster_id.clone());
    env.insert("MEMBER_ID".to_owned(), member_id.clone());
    let pod = manifests::pod(&PodInput {
        member_id,
        application_id: "app".into(),
        cluster_id: cluster_id.clone(),
        cluster_instance_id: "app-1".into(),
        service_name: kind.into(),
        network_partition_id: "network-partition-1".into(),
        partition_id: "partition-1".into(),
        image,
        env,
        ports: ports.clone(),
        cpu: settings.cpu,
        memory: settings.memory,
        pull_secrets: settings.pull_secrets,
        pull_policy: settings.pull_policy,
    });
    let range = (
        number(&k8s["portRange"]["lower"]).unwrap() as u16,
        number(&k8s["portRange"]["upper"]).unwrap() as u16,
    );
    let node_ports = manifests::node_ports(&ports, range, &BTreeSet::new()).unwrap();
    let services = manifests::services(
        &ServicesInput {
            application_id: "app".into(),
            cluster_id,
            ports,
            session_affinity: settings.session_affinity,
        },
        &node_ports,
    );
    json!({"pod": pod, "services": services})
}

#[test]
fn stratos_kubernetes_samples_make_the_snapshotted_manifests() {
    let Some(samples) = nubo_testing::samples("the Stratos Kubernetes manifests") else {
        return;
    };
    let snapshots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
    let clusters = samples.join("kubernetes-clusters");
    let cartridges = samples.join("cartridges/kubernetes");
    let mut seen = 0;
    let mut names: Vec<_> = std::fs::read_dir(&cartridges)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut k8s_names: Vec<_> = std::fs::read_dir(&clusters)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    k8s_names.sort();
    let mut changed = Vec::new();
    for cartridge in &names {
        let c = read(cartridge);
        // The kubernetes cartridges (the folder also holds mock ones).
        if !c["iaasProvider"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["type"] == "kubernetes")
        {
            continue;
        }
        for k8s in &k8s_names {
            let made = manifests_for(&c, &read(k8s));
            let name = format!(
                "{}-on-{}.json",
                cartridge.file_stem().unwrap().to_string_lossy(),
                k8s.file_stem().unwrap().to_string_lossy()
            );
            let file = snapshots.join(&name);
            let text = serde_json::to_string_pretty(&made).unwrap() + "\n";
            if std::env::var_os("NUBO_BLESS").is_some() {
                std::fs::write(&file, &text).unwrap();
            } else if std::fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                changed.push(name);
            }
            seen += 1;
        }
    }
    assert!(seen >= 9, "{seen} cartridge × cluster pairs");
    assert!(
        changed.is_empty(),
        "these manifests changed: {changed:?}; review the difference and run `NUBO_BLESS=1 cargo nextest run -p nubo-kube stratos` to accept it"
    );
}
