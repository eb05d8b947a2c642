//! Deploy and undeploy with a progress bar, and member listings.

use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use nubo_events::MemberStatus;
use nubo_events::view::{ApplicationRuntime, MemberPage, MemberRow};

/// Members per request of `nubo members`.
const MEMBERS_PAGE: usize = 5_000;

use crate::client::escape;
use crate::{ApiClient, DeployArgs, Output, UndeployArgs, render};

/// (active members, members wanted) over every cluster instance started so far, and clusters waiting.
fn progress(view: &ApplicationRuntime) -> (u64, u64, u64) {
    let (mut active, mut wanted, mut waiting) = (0, 0, 0);
    for ci in view.cluster_instances() {
        match ci.min_members {
            Some(min) => wanted += u64::from(min),
            None => waiting += 1,
        }
        active += ci
            .member
            .iter()
            .filter(|m| m.status == MemberStatus::Active)
            .count() as u64;
    }
    (active, wanted, waiting)
}

/// The runtime view of application `id`.
pub async fn runtime(client: &ApiClient, id: &str) -> anyhow::Result<ApplicationRuntime> {
    let v = client
        .send(
            "GET",
            &format!("/api/applications/{}/runtime", escape(id)),
            None,
        )
        .await?;
    serde_json::from_value(v)
        .map_err(|e| anyhow::anyhow!("the server's runtime view of {id} is not one this client reads ({e}): is the client the server's version?"))
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
        let view = runtime(client, &a.id).await?;
        let (active, wanted, waiting) = progress(&view);
        if let Some(pb) = &pb {
            pb.set_length((wanted + waiting).max(1));
            pb.set_position(active.min(wanted + waiting));
        }
        if view.is_active() {
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            match out {
                Output::Json => render::json(&serde_json::to_value(&view)?),
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
            let reasons = view.failures();
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
            let left = runtime(client, &a.id)
                .await
                .map(|v| v.members().len())
                .unwrap_or(0);
            pb.set_message(format!("undeploying {}: {left} member(s) left", a.id));
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
    // Page by page: a page costs the server its own size, however large the application.
    let mut rows: Vec<MemberRow> = Vec::new();
    for app in ids {
        let mut offset = 0;
        loop {
            let v = client
                .send(
                    "GET",
                    &format!(
                        "/api/applications/{}/members?offset={offset}&limit={MEMBERS_PAGE}",
                        escape(&app)
                    ),
                    None,
                )
                .await?;
            let page: MemberPage = serde_json::from_value(v).map_err(|e| {
                anyhow::anyhow!("the server's members of {app} are not what this client reads ({e}): is the client the server's version?")
            })?;
            let n = page.members.len();
            rows.extend(page.members);
            offset += n;
            if n == 0 || offset >= page.total {
                break;
            }
        }
    }
    match out {
        Output::Json => render::json(&serde_json::to_value(&rows)?),
        Output::Table => render::members_table(&rows),
    }
    Ok(())
}
