//! Deploy and undeploy with a progress bar, and member listings.

use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::escape;
use crate::{ApiClient, DeployArgs, Output, UndeployArgs, render};

/// Every member of a runtime view: (cluster alias, cluster status, member).
pub fn members_of(view: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<(String, Value)>) {
        for ci in v["clusterInstances"].as_array().into_iter().flatten() {
            for m in ci["member"].as_array().into_iter().flatten() {
                out.push((
                    ci["alias"].as_str().unwrap_or_default().to_owned(),
                    m.clone(),
                ));
            }
        }
        for g in v["groupInstances"].as_array().into_iter().flatten() {
            walk(g, out);
        }
    }
    for inst in view["applicationInstances"]
        .as_array()
        .into_iter()
        .flatten()
    {
        walk(inst, &mut out);
    }
    out
}

/// (active members, members wanted) over every cluster instance started so far, and clusters waiting.
fn progress(view: &Value) -> (u64, u64, u64) {
    let (mut active, mut wanted, mut waiting) = (0, 0, 0);
    fn walk(v: &Value, a: &mut u64, w: &mut u64, wait: &mut u64) {
        for ci in v["clusterInstances"].as_array().into_iter().flatten() {
            match ci["minMembers"].as_u64() {
                Some(min) => *w += min,
                None => *wait += 1,
            }
            *a += ci["member"].as_array().map_or(0, |m| {
                m.iter().filter(|m| m["status"] == "Active").count() as u64
            });
        }
        for g in v["groupInstances"].as_array().into_iter().flatten() {
            walk(g, a, w, wait);
        }
    }
    for inst in view["applicationInstances"]
        .as_array()
        .into_iter()
        .flatten()
    {
        walk(inst, &mut active, &mut wanted, &mut waiting);
    }
    (active, wanted, waiting)
}

fn bar(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(1);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} members active ({elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// `nubo deploy`.
pub async fn deploy(client: &ApiClient, out: Output, a: &DeployArgs) -> anyhow::Result<()> {
    let v = client
        .send(
            "POST",
            &format!(
                "/api/applications/{}/deploy/{}",
                escape(&a.id),
                escape(&a.policy)
            ),
            None,
        )
        .await?;
    if a.no_wait {
        render::message(out, &v);
        return Ok(());
    }
    let pb = (out == Output::Table).then(|| bar(&format!("deploying {}", a.id)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.timeout);
    loop {
        let view = client
            .send(
                "GET",
                &format!("/api/applications/{}/runtime", escape(&a.id)),
                None,
            )
            .await?;
        let (active, wanted, waiting) = progress(&view);
        if let Some(pb) = &pb {
            pb.set_length((wanted + waiting).max(1));
            pb.set_position(active.min(wanted + waiting));
        }
        let all_active = view["applicationInstances"]
            .as_array()
            .is_some_and(|i| !i.is_empty() && i.iter().all(|i| i["status"] == "Active"));
        if all_active {
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            match out {
                Output::Json => render::json(&view),
                Output::Table => {
                    println!(
                        "{} is Active after {:.1} s",
                        a.id,
                        started.elapsed().as_secs_f64()
                    );
                    print!("{}", render::runtime_tree(&view));
                }
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            eprint!("{}", render::runtime_tree(&view));
            let reasons = render::failures(&view);
            if reasons.is_empty() {
                bail!(
                    "{} is not Active after {} s; the tree above shows what is still starting",
                    a.id,
                    a.timeout
                );
            }
            bail!(
                "{} is not Active after {} s:\n  {}",
                a.id,
                a.timeout,
                reasons.join("\n  ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `nubo undeploy`.
pub async fn undeploy(client: &ApiClient, out: Output, a: &UndeployArgs) -> anyhow::Result<()> {
    let q = if a.force { "?force=true" } else { "" };
    let v = client
        .send(
            "POST",
            &format!("/api/applications/{}/undeploy{q}", escape(&a.id)),
            None,
        )
        .await?;
    if a.no_wait {
        render::message(out, &v);
        return Ok(());
    }
    let pb = (out == Output::Table).then(|| {
        let pb = ProgressBar::new_spinner();
        pb.set_message(format!("undeploying {}", a.id));
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    });
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let app = client
            .send("GET", &format!("/api/applications/{}", escape(&a.id)), None)
            .await?;
        if app["status"] == "Created" {
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            render::message(
                out,
                &serde_json::json!({"status": "success", "message": format!("{} is undeployed", a.id)}),
            );
            return Ok(());
        }
        if let Some(pb) = &pb {
            let view = client
                .send(
                    "GET",
                    &format!("/api/applications/{}/runtime", escape(&a.id)),
                    None,
                )
                .await
                .unwrap_or_default();
            pb.set_message(format!(
                "undeploying {}: {} member(s) left",
                a.id,
                members_of(&view).len()
            ));
        }
        if Instant::now() > deadline {
            bail!(
                "{} is still undeploying after {} s; `nubo undeploy {} --force` terminates what is left",
                a.id,
                a.timeout,
                a.id
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `nubo members`.
pub async fn members(client: &ApiClient, out: Output, id: Option<&str>) -> anyhow::Result<()> {
    let ids: Vec<String> = match id {
        Some(id) => vec![id.to_owned()],
        None => client
            .send("GET", "/api/applications", None)
            .await?
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["status"] != "Created")
            .filter_map(|a| a["applicationId"].as_str().map(str::to_owned))
            .collect(),
    };
    let mut rows = Vec::new();
    for app in ids {
        let view = client
            .send(
                "GET",
                &format!("/api/applications/{}/runtime", escape(&app)),
                None,
            )
            .await?;
        for (alias, m) in members_of(&view) {
            rows.push((app.clone(), alias, m));
        }
    }
    match out {
        Output::Json => render::json(&Value::Array(
            rows.into_iter()
                .map(|(app, alias, mut m)| {
                    m["applicationId"] = Value::String(app);
                    m["alias"] = Value::String(alias);
                    m
                })
                .collect(),
        )),
        Output::Table => render::members_table(&rows),
    }
    Ok(())
}
