//! Git artifacts: Stratos' webhook (`POST /api/repo/notify`), also as GitHub and GitLab call it,
//! and what a member's agent reads to clone its repository (`GET /agent/api/repository`).
//!
//! The webhook is authenticated three ways: a tenant admin's Basic credentials (Stratos' scripts;
//! the caller's tenant's applications only), GitHub's `X-Hub-Signature-256` (an HMAC-SHA256 of
//! the body with the repository's `webhookSecret`) or GitLab's `X-Gitlab-Token` (the secret
//! itself). A proof is checked against the secret of every deployed cluster whose repository the
//! payload names; only the clusters it proves are updated, member after member.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hmac::{Hmac, Mac};
use http::{StatusCode, header};
use nubo_controller::RepositoryCluster;
use nubo_manager::Role;
use serde_json::Value;

use crate::AppState;
use crate::error::{ApiError, Message};
use crate::metadata::Caller;

type S = State<Arc<AppState>>;

/// The repository URLs a push payload names: Stratos' `repository.url`, GitHub's
/// `repository.{clone_url, html_url, git_url, ssh_url}`, GitLab's `repository.{git_http_url,
/// git_ssh_url, homepage}` and `project.{git_http_url, git_ssh_url, web_url}`.
pub fn payload_urls(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (object, keys) in [
        (
            "repository",
            &[
                "url",
                "clone_url",
                "html_url",
                "git_url",
                "ssh_url",
                "git_http_url",
                "git_ssh_url",
                "homepage",
            ][..],
        ),
        ("project", &["git_http_url", "git_ssh_url", "web_url"][..]),
    ] {
        for k in keys {
            if let Some(u) = body
                .get(object)
                .and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .filter(|u| !u.is_empty() && u.len() <= 2048)
                && !out.iter().any(|x| x == u)
            {
                out.push(u.to_owned());
            }
        }
    }
    out
}

/// Whether GitHub's `X-Hub-Signature-256` (`sha256=<hex>`) proves `body` with `secret`
/// (compared in constant time).
pub fn github_signature_ok(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(given) = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h.trim()).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Whether GitLab's `X-Gitlab-Token` is `secret` (compared in constant time, through HMACs).
pub fn gitlab_token_ok(secret: &str, token: &str) -> bool {
    let digest = |s: &str| {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"nubo/gitlab-token")
            .unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        mac.update(s.as_bytes());
        mac.finalize().into_bytes()
    };
    !secret.is_empty() && digest(secret) == digest(token)
}

/// How a webhook call proves itself.
enum Proof {
    /// A user's Basic credentials.
    User(nubo_manager::Principal),
    /// GitHub's signature of the body.
    GitHub(String),
    /// GitLab's token.
    GitLab(String),
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /api/repo/notify`.
async fn notify(State(s): S, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let client = crate::audit::client_of(&req);
    let path = req.uri().path().to_owned();
    let proof = if let Some(sig) = header_text(&headers, "x-hub-signature-256") {
        Proof::GitHub(sig)
    } else if let Some(token) = header_text(&headers, "x-gitlab-token") {
        Proof::GitLab(token)
    } else {
        let credentials = crate::auth::basic_credentials(&req)?;
        let p = crate::auth::basic_principal(&s, credentials).await?;
        if p.role != Role::Admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                crate::access::Access::TenantAdmin.refusal(),
            ));
        }
        Proof::User(p)
    };
    let bytes = axum::body::to_bytes(req.into_body(), crate::BODY_LIMIT)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        })?;
    // GitHub's ping (the hook was just made): proved, nothing to update.
    let event = header_text(&headers, "x-github-event");
    let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a push payload (JSON): {e}"),
        )
    })?;
    let urls = payload_urls(&body);
    if urls.is_empty() && matches!(proof, Proof::User(_)) {
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            "the payload names no repository: send {\"repository\": {\"url\": \"…\"}}",
        );
        e.errors.push(nubo_model::FieldError {
            field: "repository.url".into(),
            reason: "missing".into(),
        });
        return Err(e);
    }
    let control = s.controller.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no controller: nothing can be updated",
        )
    })?;
    let mut candidates: Vec<RepositoryCluster> = Vec::new();
    for u in &urls {
        for c in control.clusters_of_repository(u).await? {
            if !candidates.contains(&c) {
                candidates.push(c);
            }
        }
    }
    let proves = |secret: &str| match &proof {
        Proof::GitHub(sig) => github_signature_ok(secret, &bytes, sig),
        Proof::GitLab(token) => gitlab_token_ok(secret, token),
        Proof::User(_) => false,
    };
    // Whom the call was proved for (the audit log's tenants), and the clusters to update.
    let mut tenants: Vec<i64> = Vec::new();
    let mut proved = Vec::new();
    for c in candidates {
        let ok = match &proof {
            Proof::User(p) => c.tenant_id == p.tenant_id,
            _ => match s
                .manager
                .webhook_secret(c.tenant_id, &c.application_id, &c.alias)
                .await?
            {
                Some(secret) => proves(&secret),
                None => false,
            },
        };
        if ok {
            tenants.push(c.tenant_id);
            proved.push(c);
        }
    }
    // Tenants' repositories signed up to a multi-tenant application: a push updates the
    // checkouts of that tenant in the application's members (the clusters of the alias).
    let wanted: Vec<String> = urls
        .iter()
        .map(|u| nubo_controller::normalize_repository_url(u))
        .collect();
    let hooks = s
        .manager
        .signup_hooks(|u| wanted.contains(&nubo_controller::normalize_repository_url(u)))
        .await?;
    if !hooks.is_empty() {
        // Signups are to the platform's (the super tenant's) applications.
        let plans = control.deployments(nubo_model::SUPER_TENANT_ID).await?;
        for h in hooks {
            let ok = match &proof {
                Proof::User(p) => h.tenant_id == p.tenant_id,
                _ => h.webhook_secret.as_deref().is_some_and(proves),
            };
            if !ok {
                continue;
            }
            tenants.push(h.tenant_id);
            let app = nubo_controller::runtime_id(nubo_model::SUPER_TENANT_ID, &h.application_id);
            let clusters = plans
                .iter()
                .filter(|d| d.plan.application_id == app)
                .flat_map(|d| &d.plan.clusters)
                .filter(|c| c.alias == h.alias);
            for c in clusters {
                let c = RepositoryCluster {
                    tenant_id: nubo_model::SUPER_TENANT_ID,
                    application_id: app.clone(),
                    cluster_id: c.cluster_id.clone(),
                    alias: c.alias.clone(),
                };
                if !proved.contains(&c) {
                    proved.push(c);
                }
            }
        }
    }
    tenants.sort_unstable();
    tenants.dedup();
    let (user, via) = match &proof {
        Proof::User(p) => (p.user.clone(), "password"),
        Proof::GitHub(_) => ("webhook".to_owned(), "github"),
        Proof::GitLab(_) => ("webhook".to_owned(), "gitlab"),
    };
    // The same answer whether no repository matched or no secret proved the call: a caller
    // learns nothing of what is deployed.
    if tenants.is_empty() && !matches!(proof, Proof::User(_)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no deployed application's repository has a webhookSecret that proves this call",
        ));
    }
    if event.as_deref().is_some_and(|e| e != "push") {
        return Ok(Json(Message::success(format!(
            "{} event: proved, nothing to update",
            event.unwrap_or_default()
        )))
        .into_response());
    }
    for t in &tenants {
        let e = crate::audit::entry(
            *t,
            user.clone(),
            via,
            client.clone(),
            "POST".into(),
            path.clone(),
            StatusCode::ACCEPTED.as_u16(),
        );
        crate::audit::write(&s, &e).await;
    }
    let mut by_app: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &proved {
        by_app
            .entry(c.application_id.clone())
            .or_default()
            .push(c.cluster_id.clone());
    }
    for (app, clusters) in &by_app {
        control.update_artifacts(app, clusters.clone()).await?;
        tracing::info!(application = %app, clusters = ?clusters, "artifact update requested by the repository's webhook");
    }
    let msg = if proved.is_empty() {
        "no deployed application of yours uses this repository: nothing to update".to_owned()
    } else {
        format!(
            "artifact update started for {} cluster(s): {}",
            proved.len(),
            proved
                .iter()
                .map(|c| c.cluster_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok((StatusCode::ACCEPTED, Json(Message::success(msg))).into_response())
}

/// An answer holding credentials: no cache keeps it (`Cache-Control: no-store`).
fn not_kept(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `GET /agent/api/repository`: the calling member's repository and its credentials.
async fn repository(
    State(s): S,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let Caller::Member {
        member_id,
        application_id,
        tenant_id,
        alias,
    } = caller
    else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only a member (with its payload's TOKEN) reads its repository's credentials",
        ));
    };
    let access = s
        .manager
        .repository_access(tenant_id, &application_id, &alias)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("member `{member_id}`'s cartridge `{alias}` has no artifact repository"),
            )
        })?;
    tracing::info!(member = %member_id, url = %access.repo_url, private = access.repo_password.is_some(), "repository read by its member");
    Ok(not_kept(Json(access).into_response()))
}

/// `GET /agent/api/signups`: the repositories the tenants signed up to the calling member's
/// multi-tenant application with, for its cartridge (credentials included), by tenant domain.
async fn signups(State(s): S, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    let Caller::Member {
        member_id,
        application_id,
        tenant_id,
        alias,
    } = caller
    else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only a member (with its payload's TOKEN) reads its application's signups",
        ));
    };
    // Signups are to the platform's (the super tenant's) applications.
    let list = if tenant_id == nubo_model::SUPER_TENANT_ID {
        s.manager
            .signup_repositories(&application_id, &alias)
            .await?
    } else {
        Vec::new()
    };
    tracing::info!(member = %member_id, signups = list.len(), "signups' repositories read by a member");
    let body: Vec<serde_json::Value> = list
        .into_iter()
        .map(|(domain, access)| {
            let mut v = serde_json::to_value(&access).unwrap_or_default();
            v["tenantDomain"] = serde_json::Value::String(domain);
            v
        })
        .collect();
    Ok(not_kept(Json(body).into_response()))
}

/// `GET /agent/api/members`: the calling member's application's members (what its agent's
/// member-event hooks are given), its own application's only.
async fn members(State(s): S, Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    let Caller::Member { application_id, .. } = caller else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only a member (with its payload's TOKEN) reads this",
        ));
    };
    let control = s
        .controller
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no controller to ask"))?;
    let page = control
        .members(&application_id, 0, 10_000)
        .await?
        .map(|p| p.members)
        .unwrap_or_default();
    Ok(Json(page).into_response())
}

/// Members only: a bearer token of the platform's.
async fn members_only(State(state): S, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a member's token is required (Authorization: Bearer $TOKEN)",
            )
        })?;
    let caller = crate::metadata::member_caller(&state, &token).await?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// The webhook, at `/api/repo/notify` and `/api/v4.1/repo/notify` (its own authentication).
pub fn webhook_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/repo/notify", post(notify))
        .route("/api/v4.1/repo/notify", post(notify))
}

/// What agents read, under `/agent/api`.
pub fn agent_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/repository", get(repository))
        .route("/signups", get(signups))
        .route("/members", get(members))
        .route_layer(axum::middleware::from_fn_with_state(state, members_only))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn github_signatures_are_checked_on_the_exact_body() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signature_ok(
            "It's a Secret to Everybody",
            b"Hello, World!",
            sig
        ));
        assert!(!github_signature_ok("another", b"Hello, World!", sig));
        assert!(!github_signature_ok(
            "It's a Secret to Everybody",
            b"Hello, World?",
            sig
        ));
        assert!(!github_signature_ok("s", b"x", "sha1=abc"));
        assert!(!github_signature_ok("s", b"x", "sha256=zz"));
        assert!(gitlab_token_ok("t0ken", "t0ken"));
        assert!(!gitlab_token_ok("t0ken", "t0ke"));
        assert!(!gitlab_token_ok("", ""));
    }

    #[test]
    fn push_payloads_of_stratos_github_and_gitlab_name_their_repository() {
        assert_eq!(
            payload_urls(&json!({"repository": {"url": "https://g/x.git"}})),
            ["https://g/x.git"]
        );
        let github = json!({"repository": {"url": "https://github.com/o/r", "clone_url": "https://github.com/o/r.git", "ssh_url": "git@github.com:o/r.git"}});
        assert_eq!(payload_urls(&github).len(), 3);
        let gitlab = json!({"project": {"git_http_url": "http://gl/o/r.git"}, "repository": {"git_http_url": "http://gl/o/r.git"}});
        assert_eq!(payload_urls(&gitlab), ["http://gl/o/r.git"]);
        assert!(payload_urls(&json!({"repository": 3})).is_empty());
    }
}
