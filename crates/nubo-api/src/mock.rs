//! The mock IaaS's instance surface (Stratos' `/mock-iaas/api`): list, get, delete (an instance
//! vanishing, for fault-injection tests), plus Nubo's clock and start-failure controls. Answers
//! 404 with a hint when the server runs without the mock provider.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

type S = State<Arc<AppState>>;

/// The mock IaaS; its instances live in the process of the controller that started them, so a
/// server whose controller runs elsewhere cannot serve them.
async fn mock(s: &AppState) -> Result<&Arc<nubo_mock::MockIaas>, ApiError> {
    if let Some(m) = s.mock() {
        return Ok(m);
    }
    Err(match s.role() {
        Some(nubo_controller::ControlRole::Standby) => {
            s.standby_error("the mock IaaS's instances live in its process: use its API")
                .await
        }
        Some(nubo_controller::ControlRole::Remote) => ApiError::new(
            StatusCode::NOT_FOUND,
            "this server runs no controller: the mock IaaS's instances live in the process of the server that runs the controller (with --mock-iaas); use its API",
        ),
        _ => ApiError::new(
            StatusCode::NOT_FOUND,
            "the mock IaaS is not enabled on this server (start it with --mock-iaas FILE, or --mock-iaas - for the default statistics)",
        ),
    })
}

async fn status(State(s): S) -> Result<Json<Value>, ApiError> {
    let m = mock(&s).await?;
    Ok(Json(json!({
        "status": "running",
        "instances": m.list().len(),
        "clockSeconds": m.clock().now(),
    })))
}

async fn list(State(s): S) -> Result<Json<Vec<nubo_mock::MockInstance>>, ApiError> {
    Ok(Json(mock(&s).await?.list()))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no mock instance `{id}` (GET /api/mock-iaas/instances lists them)"),
    )
}

async fn one(
    State(s): S,
    Path(id): Path<String>,
) -> Result<Json<nubo_mock::MockInstance>, ApiError> {
    mock(&s)
        .await?
        .get(&id)
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

async fn delete(State(s): S, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if mock(&s).await?.kill(&id) {
        Ok(Json(json!({
            "message": format!("mock instance `{id}` vanished; its member will be found faulty and replaced"),
        })))
    } else {
        Err(not_found(&id))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Advance {
    advance_seconds: f64,
}

async fn clock(State(s): S, Json(a): Json<Advance>) -> Result<Json<Value>, ApiError> {
    let m = mock(&s).await?;
    if !a.advance_seconds.is_finite() || a.advance_seconds < 0.0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "advanceSeconds: must be a number of seconds ≥ 0 (the clock only moves forward)",
        ));
    }
    m.clock()
        .advance(std::time::Duration::from_secs_f64(a.advance_seconds));
    Ok(Json(json!({ "clockSeconds": m.clock().now() })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Failures {
    cartridge_type: String,
    fail_next_starts: u32,
}

async fn failures(State(s): S, Json(f): Json<Failures>) -> Result<Json<Value>, ApiError> {
    mock(&s)
        .await?
        .fail_next_starts(&f.cartridge_type, f.fail_next_starts);
    Ok(Json(json!({
        "message": format!("the next {} start(s) of cartridge type `{}` will fail", f.fail_next_starts, f.cartridge_type),
    })))
}

/// The routes, relative to `/api`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/mock-iaas/status", get(status))
        .route("/mock-iaas/instances", get(list))
        .route("/mock-iaas/instances/{id}", get(one).delete(delete))
        .route("/mock-iaas/clock", post(clock))
        .route("/mock-iaas/failures", post(failures))
}
