//! Tables and JSON for each kind of answer.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use nubo_events::view::{ApplicationRuntime, ClusterInstanceView, GroupInstanceView, MemberView};
use serde_json::Value;

use crate::Output;

/// Prints pretty JSON.
pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints one log line: time, member, stream, text (or how many lines a slow reader missed).
pub fn log_line(v: &Value) {
    if let Some(n) = v.get("skipped") {
        println!("… {n} lines skipped (this reader was too slow)");
        return;
    }
    let at = v.get("atMs").and_then(Value::as_u64).unwrap_or(0);
    let secs = at / 1000;
    let (h, m, sec) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    println!(
        "{h:02}:{m:02}:{sec:02}.{:03} {} {}| {}",
        at % 1000,
        s(v, "memberId"),
        if s(v, "stream") == "stderr" { "E" } else { " " },
        s(v, "text")
    );
}

/// Prints metadata properties (`{"key","values"}`) as a table.
pub fn properties(rows: &[Value]) {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["KEY", "VALUES"]);
    for r in rows {
        t.add_row(vec![
            s(r, "key"),
            join(arr(r, "values").map(|v| v.as_str().unwrap_or_default().to_owned())),
        ]);
    }
    println!("{t}");
}

/// Prints a `{"status","message"}` answer.
pub fn message(out: Output, v: &Value) {
    match out {
        Output::Json => json(v),
        Output::Table => println!(
            "{}",
            v.get("message").and_then(Value::as_str).unwrap_or("done")
        ),
    }
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

type Column = (&'static str, fn(&Value) -> String);

fn columns(collection: &str) -> Vec<Column> {
    match collection {
        "networkPartitions" => vec![
            ("ID", |v| s(v, "id")),
            ("PROVIDER", |v| s(v, "provider")),
            ("PARTITIONS", |v| {
                join(arr(v, "partitions").map(|p| s(p, "id")))
            }),
        ],
        "deploymentPolicies" => vec![
            ("ID", |v| s(v, "id")),
            ("NETWORK PARTITIONS", |v| {
                join(arr(v, "networkPartitions").map(|np| {
                    format!(
                        "{} ({}: {})",
                        s(np, "id"),
                        s(np, "partitionAlgo"),
                        join(arr(np, "partitions").map(|p| match p.get("partitionMax") {
                            Some(m) => format!("{} max {m}", s(p, "id")),
                            None => s(p, "id"),
                        }))
                    )
                }))
            }),
        ],
        "autoscalingPolicies" => vec![
            ("ID", |v| s(v, "id")),
            ("REQUESTS IN FLIGHT", |v| threshold(v, "requestsInFlight")),
            ("MEMORY %", |v| threshold(v, "memoryConsumption")),
            ("LOAD %", |v| threshold(v, "loadAverage")),
        ],
        "applicationPolicies" => vec![
            ("ID", |v| s(v, "id")),
            ("ALGORITHM", |v| s(v, "algorithm")),
            ("NETWORK PARTITIONS", |v| {
                join(arr(v, "networkPartitions").map(|n| n.as_str().unwrap_or_default().to_owned()))
            }),
        ],
        "cartridges" => vec![
            ("TYPE", |v| s(v, "type")),
            ("CATEGORY", |v| s(v, "category")),
            ("PROVIDER", |v| s(v, "provider")),
            ("HOST", |v| s(v, "host")),
            ("PORTS", |v| {
                join(arr(v, "portMapping").map(|p| match p.get("proxyPort") {
                    Some(px) => format!("{}/{}->{px}", s(p, "port"), s(p, "protocol")),
                    None => format!("{}/{}", s(p, "port"), s(p, "protocol")),
                }))
            }),
            ("IAAS", |v| {
                join(arr(v, "iaasProvider").map(|i| s(i, "type")))
            }),
        ],
        "cartridgeGroups" => vec![
            ("NAME", |v| s(v, "name")),
            ("CARTRIDGES", |v| {
                join(arr(v, "cartridges").map(|c| c.as_str().unwrap_or_default().to_owned()))
            }),
            ("GROUPS", |v| join(arr(v, "groups").map(|g| s(g, "name")))),
        ],
        "applications" => vec![
            ("ID", |v| s(v, "applicationId")),
            ("NAME", |v| s(v, "name")),
            ("STATUS", |v| s(v, "status")),
            ("MULTI-TENANT", |v| s(v, "multiTenant")),
        ],
        "kubernetesClusters" => vec![
            ("ID", |v| s(v, "clusterId")),
            ("MASTER", |v| {
                v.get("kubernetesMaster")
                    .map(|m| s(m, "hostname"))
                    .unwrap_or_default()
            }),
            ("HOSTS", |v| {
                join(arr(v, "kubernetesHosts").map(|h| s(h, "hostname")))
            }),
        ],
        "tenants" => vec![
            ("DOMAIN", |v| s(v, "tenantDomain")),
            ("ID", |v| s(v, "tenantId")),
            ("ADMIN", |v| s(v, "admin")),
            ("EMAIL", |v| s(v, "email")),
            ("ACTIVE", |v| s(v, "active")),
        ],
        "kubernetesHosts" => vec![
            ("HOST ID", |v| s(v, "hostId")),
            ("HOSTNAME", |v| s(v, "hostname")),
            ("PRIVATE IP", |v| s(v, "privateIPAddress")),
            ("PUBLIC IP", |v| s(v, "publicIPAddress")),
        ],
        "users" => vec![
            ("USER", |v| s(v, "userName")),
            ("ROLE", |v| s(v, "role")),
            ("EMAIL", |v| s(v, "email")),
        ],
        "usage" => vec![
            ("TENANT", |v| v["tenantId"].to_string()),
            ("APPLICATION", |v| s(v, "applicationId")),
            ("CARTRIDGE", |v| s(v, "cartridge")),
            ("INSTANCE-SECONDS", |v| v["instanceSeconds"].to_string()),
            ("LIVE", |v| v["liveMembers"].to_string()),
            ("ENDED", |v| v["endedMembers"].to_string()),
        ],
        "audit" => vec![
            ("SEQ", |v| v["seq"].to_string()),
            ("AT", |v| s(v, "at")),
            ("TENANT", |v| v["tenantId"].to_string()),
            ("USER", |v| s(v, "user")),
            ("VIA", |v| s(v, "via")),
            ("FROM", |v| s(v, "client")),
            ("REQUEST", |v| {
                format!("{} {}", s(v, "method"), s(v, "path"))
            }),
            ("STATUS", |v| v["status"].to_string()),
        ],
        "domainMappings" => vec![
            ("DOMAIN", |v| s(v, "domainName")),
            ("CONTEXT PATH", |v| s(v, "contextPath")),
            ("ALIAS", |v| s(v, "cartridgeAlias")),
            ("APPLICATION", |v| s(v, "applicationId")),
            ("HTTPS", |v| {
                let redirect = if v["redirectHttps"] == true {
                    ", http redirected"
                } else {
                    ""
                };
                match v.get("tls") {
                    Some(t) => format!("own certificate until {}{redirect}", s(t, "notAfter")),
                    None => format!("default certificate{redirect}"),
                }
            }),
        ],
        "tokens" => vec![
            ("ID", |v| s(v, "id")),
            ("NAME", |v| s(v, "name")),
            ("USER", |v| s(v, "user")),
            ("KIND", |v| s(v, "kind")),
            ("SCOPE", |v| s(v, "scope")),
            ("EXPIRES", |v| s(v, "expires")),
        ],
        _ => vec![("VALUE", |v| v.to_string())],
    }
}

fn threshold(v: &Value, factor: &str) -> String {
    v.get("loadThresholds")
        .and_then(|t| t.get(factor))
        .and_then(|t| t.get("threshold"))
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".to_owned())
}

/// Prints a list answer.
pub fn list(out: Output, collection: &str, v: &Value) {
    if out == Output::Json {
        return json(v);
    }
    let items = v.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        eprintln!("(none)");
        return;
    }
    let cols = columns(collection);
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(cols.iter().map(|(h, _)| *h));
    for item in &items {
        t.add_row(cols.iter().map(|(_, f)| f(item)));
    }
    println!("{t}");
}

/// Prints one artifact: its top-level fields, nested values as compact JSON.
pub fn describe(out: Output, v: &Value) {
    if out == Output::Json {
        return json(v);
    }
    let Some(obj) = v.as_object() else {
        return json(v);
    };
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    for (k, val) in obj {
        let shown = match val {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        t.add_row(vec![k.clone(), shown]);
    }
    println!("{t}");
}

fn member_address(m: &MemberView) -> String {
    let ip = m.default_private_ip.as_deref().unwrap_or("?");
    m.ports
        .iter()
        .map(|p| format!("{ip}:{}", p.port))
        .collect::<Vec<_>>()
        .join(",")
}

fn member_line(m: &MemberView) -> String {
    let address = member_address(m);
    let mut line = format!(
        "{}  {}  {}  {}",
        m.member_id,
        m.status.as_str(),
        if address.is_empty() { "-" } else { &address },
        m.partition_id
    );
    if let Some(f) = &m.failure {
        line.push_str(&format!("  failed: {f}"));
    }
    line
}

fn opt(n: Option<u32>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

fn cluster_lines(ci: &ClusterInstanceView, prefix: &str, out: &mut Vec<String>) {
    let mut head = format!(
        "{prefix}{} ({}) {:?} min {} max {}  {}",
        ci.alias,
        ci.service_name,
        ci.status,
        opt(ci.min_members),
        opt(ci.max_members),
        ci.access_urls.join(" ")
    );
    if let Some(f) = &ci.last_failure {
        head.push_str(&format!("\n{prefix}  last failure: {f}"));
    }
    out.push(head);
    for m in &ci.member {
        out.push(format!("{prefix}  - {}", member_line(m)));
    }
}

fn group_lines(g: &GroupInstanceView, prefix: &str, out: &mut Vec<String>) {
    out.push(format!(
        "{prefix}group {} ({}) {:?}",
        g.group_id, g.instance_id, g.status
    ));
    let inner = format!("{prefix}  ");
    for ci in &g.cluster_instances {
        cluster_lines(ci, &inner, out);
    }
    for child in &g.group_instances {
        group_lines(child, &inner, out);
    }
}

/// The runtime view as an indented tree.
pub fn runtime_tree(v: &ApplicationRuntime) -> String {
    let mut out = vec![format!("{} ({:?})", v.id, v.status)];
    for inst in &v.application_instances {
        out.push(format!(
            "  instance {} [{}] {:?}",
            inst.instance_id, inst.network_partition_id, inst.status
        ));
        for ci in &inst.cluster_instances {
            cluster_lines(ci, "    ", &mut out);
        }
        for g in &inst.group_instances {
            group_lines(g, "    ", &mut out);
        }
    }
    out.join("\n") + "\n"
}

/// Members as a table.
pub fn members_table(rows: &[nubo_events::view::MemberRow]) {
    if rows.is_empty() {
        eprintln!("(no members)");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header([
        "APPLICATION",
        "ALIAS",
        "MEMBER",
        "STATUS",
        "ADDRESS",
        "PARTITION",
        "FAILURE",
    ]);
    for r in rows {
        let m = &r.member;
        t.add_row(vec![
            r.application_id.clone(),
            r.alias.clone(),
            m.member_id.clone(),
            m.status.as_str().to_owned(),
            member_address(m),
            m.partition_id.clone(),
            m.failure.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.1}"),
        None => "-".to_owned(),
    }
}

/// Scaling decisions as a table.
pub fn scaling_events(out: Output, v: &Value) {
    if out == Output::Json {
        return json(v);
    }
    let items = v.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        eprintln!("(no scaling decisions yet)");
        return;
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header([
        "TIME (UTC)",
        "CLUSTER",
        "DECISION",
        "REQUESTS IN FLIGHT",
        "MEMORY %",
        "LOAD %",
        "REQUIRED",
        "ACTIVE+STARTING",
        "MIN..MAX",
    ]);
    for e in &items {
        let at = e["atMs"].as_u64().unwrap_or(0);
        let secs = at / 1000;
        let time = format!(
            "{:02}:{:02}:{:02}.{:03}",
            (secs / 3600) % 24,
            (secs / 60) % 60,
            secs % 60,
            at % 1000
        );
        let factor = |pred: &str, thr: &str, req: &str| {
            format!(
                "{} / {} → {}",
                num(&e["predicted"][pred]),
                num(&e["thresholds"][thr]),
                num(&e["required"][req])
            )
        };
        let decision = match &e["decision"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .iter()
                .map(|(k, v)| format!("{k} {}", v["add"]))
                .collect::<Vec<_>>()
                .join(" "),
            other => other.to_string(),
        };
        t.add_row(vec![
            time,
            s(e, "clusterId"),
            decision,
            factor("requestsInFlight", "requestsInFlight", "requestsInFlight"),
            factor("memoryConsumption", "memoryConsumption", "memory"),
            factor("loadAverage", "loadAverage", "load"),
            format!(
                "{} ({})",
                num(&e["required"]["count"]),
                e["required"]["reason"].as_str().unwrap_or("-")
            ),
            format!("{}+{}", e["active"], e["starting"]),
            format!("{}..{}", e["min"], e["max"]),
        ]);
    }
    println!("{t}");
}
