//! Tenants' quotas: `PUT|GET /api/quotas/{domain}` (the platform's administrator) and
//! `GET /api/quota` (a tenant's own, with what it uses).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use nubo_manager::Principal;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

async fn set(
    State(s): State<Arc<AppState>>,
    Path(domain): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let q = s.manager.set_quota(&domain, &body?).await?;
    Ok(Json(q).into_response())
}

async fn one(
    State(s): State<Arc<AppState>>,
    Path(domain): Path<String>,
) -> Result<Json<nubo_model::TenantQuota>, ApiError> {
    Ok(Json(s.manager.quota_of(&domain).await?))
}

async fn own(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let q = s.manager.quota(p.tenant_id).await?;
    let applications = s.manager.applications_of(p.tenant_id).await?;
    let instances = match s.controller.as_ref() {
        Some(c) => c.tenant_members(p.tenant_id).await.ok(),
        None => None,
    };
    Ok(Json(json!({
        "tenantId": p.tenant_id,
        "applications": {"limit": q.applications, "used": applications},
        "instances": {"limit": q.instances, "used": instances},
    })))
}

/// The routes, relative to `/api`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/quotas/{domain}", get(one).put(set))
        .route("/quota", get(own))
}
