//! The dependency rules of ARCHITECTURE.md, checked over `cargo metadata` and the sources: what
//! each crate may depend on, which crate alone holds each heavy dependency, and that the pure
//! cores use no runtime, clock or I/O. A rule broken fails here with the crate and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The crates that are pure data and functions.
const PURE: [&str; 3] = ["nubo-model", "nubo-plan", "nubo-events"];

/// What a pure crate may depend on (directly).
const PURE_MAY_USE: [&str; 7] = [
    "serde",
    "serde_json",
    "serde_path_to_error",
    "thiserror",
    "utoipa",
    "nubo-model",
    "nubo-plan",
];

/// Each heavy or sensitive dependency, and the only crates that may depend on it directly.
const ONLY_IN: [(&str, &[&str]); 15] = [
    ("sqlx", &["nubo-store"]),
    ("rumqttc", &["nubo-bus"]),
    ("async-nats", &["nubo-bus"]),
    ("rumqttd", &["nubo-broker"]),
    // nubo-kube: its in-process fake Kubernetes API server, for tests (feature `fake`).
    ("axum", &["nubo-api", "nubo-server", "nubo-kube"]),
    // The Kubernetes API: the kubernetes provider alone.
    ("kube", &["nubo-kube"]),
    ("k8s-openapi", &["nubo-kube"]),
    // The API's server, and HTTP/2 toward the load balancer's clients.
    ("hyper", &["nubo-server", "nubo-lb"]),
    ("hyper-util", &["nubo-server", "nubo-lb"]),
    ("reqwest", &["nubo-cli", "nubo-agent"]),
    ("argon2", &["nubo-manager"]),
    ("roxmltree", &["nubo-mock"]),
    // The container engines' API: the agent drives its member's container.
    ("bollard", &["nubo-agent"]),
    ("rcgen", &["nubo-server"]),
    // TLS for the API and at the load balancer.
    ("tokio-rustls", &["nubo-server", "nubo-lb"]),
];

/// Crates that must not depend, even through others, on these.
const NEVER: [(&str, &[&str]); 13] = [
    // Small and fuzzed: HTTP/1 on the bytes, the bus envelope's proof.
    ("nubo-h1", &["tokio", "nubo-bus", "nubo-events"]),
    (
        "nubo-envelope",
        &["tokio", "nubo-bus", "rumqttc", "async-nats"],
    ),
    (
        "nubo-iaas",
        &["nubo-controller", "nubo-store", "sqlx", "tokio"],
    ),
    ("nubo-node", &["nubo-controller", "nubo-store", "sqlx"]),
    ("nubo-mock", &["nubo-controller", "nubo-store", "sqlx"]),
    (
        "nubo-agent",
        &["nubo-controller", "nubo-node", "nubo-store", "sqlx"],
    ),
    ("nubo-lb", &["nubo-controller", "nubo-store", "sqlx"]),
    // The kubernetes provider reads its clusters through a trait the server implements.
    (
        "nubo-kube",
        &["nubo-controller", "nubo-manager", "nubo-store", "sqlx"],
    ),
    // The log store knows members by the owners it is told, not by the controller's state.
    (
        "nubo-logs",
        &["nubo-controller", "nubo-store", "sqlx", "axum"],
    ),
    (
        "nubo-cli",
        &["nubo-store", "nubo-server", "nubo-controller", "sqlx"],
    ),
    ("nubo-manager", &["nubo-controller", "nubo-api", "axum"]),
    ("nubo-controller", &["nubo-manager", "nubo-api", "axum"]),
    ("nubo-plan", &["tokio", "nubo-events"]),
];

/// Source files and folders that must stay pure (beyond the pure crates): no runtime, clock or
/// I/O outside their tests.
const PURE_FILES: [&str; 8] = [
    "crates/nubo-h1/src",
    "crates/nubo-envelope/src",
    "crates/nubo-autoscaler/src/cep.rs",
    "crates/nubo-autoscaler/src/rules.rs",
    "crates/nubo-autoscaler/src/faults.rs",
    "crates/nubo-controller/src/state",
    "crates/nubo-logs/src/store.rs",
    "crates/nubo-kube/src/manifests.rs",
];

/// What pure code must not name.
const IMPURE: [&str; 7] = [
    "tokio",
    "std::fs",
    "std::net",
    "std::process",
    "SystemTime::now",
    "Instant::now",
    "std::thread",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The host's target triple (`rustc -vV`).
fn host() -> String {
    let out = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// Each workspace crate's direct normal dependencies, and all its normal dependencies through
/// others (names).
fn dependencies() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        // This machine's platform only: the others' crates need not be downloaded.
        .args([
            "metadata",
            "--format-version",
            "1",
            "--frozen",
            "--filter-platform",
        ])
        .arg(host())
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    // Normal (not dev, not build) edges of the resolved graph.
    let edges: BTreeMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let deps = n["deps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kind"].is_null())
                })
                .map(|d| d["pkg"].as_str().unwrap())
                .collect();
            (n["id"].as_str().unwrap(), deps)
        })
        .collect();
    let mut out = BTreeMap::new();
    for id in meta["workspace_members"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        let direct: BTreeSet<String> = edges[id].iter().map(|d| name_of[d].to_owned()).collect();
        let mut all = BTreeSet::new();
        let mut todo: Vec<&str> = edges[id].clone();
        let mut seen = BTreeSet::new();
        while let Some(d) = todo.pop() {
            if seen.insert(d) {
                all.insert(name_of[d].to_owned());
                todo.extend(edges.get(d).into_iter().flatten());
            }
        }
        out.insert(name_of[id].to_owned(), (direct, all));
    }
    out
}

/// The rules `deps` breaks, one line each.
fn violations(deps: &BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>) -> Vec<String> {
    let mut out = Vec::new();
    for krate in PURE {
        for d in &deps[krate].0 {
            if !PURE_MAY_USE.contains(&d.as_str()) {
                out.push(format!("{krate} is pure: it may not depend on {d}"));
            }
        }
    }
    for (dep, only) in ONLY_IN {
        for (krate, (direct, _)) in deps {
            if direct.contains(dep) && !only.contains(&krate.as_str()) {
                out.push(format!(
                    "{krate} depends on {dep}, which only {} may",
                    only.join(" and ")
                ));
            }
        }
    }
    for (krate, never) in NEVER {
        for n in never {
            if deps[krate].1.contains(*n) {
                out.push(format!(
                    "{krate} may not depend on {n}, even through other crates"
                ));
            }
        }
    }
    out
}

/// The impure names in the non-test part of a source file.
fn impure_names(path: &Path) -> Vec<&'static str> {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    IMPURE.into_iter().filter(|w| code.contains(w)).collect()
}

/// The `.rs` files at `path` (a file, or a folder and its subfolders), tests excluded.
fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
        return;
    }
    let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && p.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(p);
        }
    }
}

#[test]
fn the_dependency_rules_hold() {
    let deps = dependencies();
    for c in PURE.iter().chain(NEVER.iter().map(|(c, _)| c)) {
        assert!(deps.contains_key(*c), "no crate {c} in the workspace");
    }
    let broken = violations(&deps);
    assert!(
        broken.is_empty(),
        "dependency rules broken (ARCHITECTURE.md):\n  {}",
        broken.join("\n  ")
    );
}

#[test]
fn a_broken_rule_is_reported() {
    let mut deps = dependencies();
    deps.get_mut("nubo-events")
        .unwrap()
        .0
        .insert("tokio".into());
    deps.get_mut("nubo-node")
        .unwrap()
        .1
        .insert("nubo-controller".into());
    deps.get_mut("nubo-lb").unwrap().0.insert("sqlx".into());
    let broken = violations(&deps);
    assert_eq!(
        broken,
        [
            "nubo-events is pure: it may not depend on tokio",
            "nubo-lb depends on sqlx, which only nubo-store may",
            "nubo-node may not depend on nubo-controller, even through other crates",
        ]
    );
}

#[test]
fn pure_code_uses_no_runtime_clock_or_io() {
    let mut files = Vec::new();
    let dirs = PURE
        .iter()
        .map(|k| format!("crates/{k}/src"))
        .chain(PURE_FILES.iter().map(|f| (*f).to_owned()));
    for d in dirs {
        rust_files(&root().join(d), &mut files);
    }
    assert!(files.len() > 10, "the pure sources were found: {files:?}");
    let broken: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let names = impure_names(f);
            (!names.is_empty()).then(|| format!("{}: {}", f.display(), names.join(", ")))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "pure code names a runtime, a clock or I/O:\n  {}",
        broken.join("\n  ")
    );
}
