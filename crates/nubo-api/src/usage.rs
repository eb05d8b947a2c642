//! Metering: `GET /api/usage` — instance-seconds per tenant, application and cartridge, from the
//! controller's state (ended members' time kept, live members' counted until now).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use http::StatusCode;
use nubo_manager::Principal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// `GET /api/usage`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    /// One application's only.
    application: Option<String>,
    /// One tenant's only (the platform's administrator; another caller reads its own).
    tenant: Option<i64>,
}

async fn usage(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Query(f): Query<Filter>,
) -> Result<Json<Value>, ApiError> {
    let Some(control) = s.controller.as_ref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no controller is reachable: usage comes from its state",
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let tenant = if p.tenant_id == nubo_model::SUPER_TENANT_ID {
        f.tenant
    } else {
        Some(p.tenant_id)
    };
    let usage = control
        .usage(now.as_millis() as u64, tenant)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the controller's state cannot be read now: try again",
            )
        })?;
    let rows: Vec<Value> = usage
        .into_iter()
        .filter(|u| {
            f.application
                .as_ref()
                .is_none_or(|a| *a == u.application_id)
        })
        .map(|u| {
            json!({"tenantId": u.tenant_id, "applicationId": u.application_id,
                "cartridge": u.cartridge, "instanceSeconds": u.instance_seconds(),
                "instanceMs": u.ended_ms + u.live_ms, "liveMembers": u.live_members,
                "endedMembers": u.ended_members})
        })
        .collect();
    let total: u64 = rows.iter().filter_map(|r| r["instanceMs"].as_u64()).sum();
    let as_of = time::OffsetDateTime::from_unix_timestamp(now.as_secs() as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    Ok(Json(
        json!({"asOf": as_of, "asOfMs": now.as_millis() as u64, "usage": rows,
        "total": {"instanceSeconds": total / 1000, "instanceMs": total}}),
    ))
}

/// The route, relative to `/api`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/usage", get(usage))
}
