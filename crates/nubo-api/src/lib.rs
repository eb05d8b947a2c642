//! Nubo's REST API: the Stratos v4.1 endpoints (`stratos.md` §2) under `/api` and `/api/v4.1`,
//! HTTP Basic authentication, JSON errors, the OpenAPI document and Prometheus metrics.
//!
//! Deliberate deviations from Stratos are listed in `docs/api.md`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::header;
use nubo_manager::{Manager, Principal};
use prometheus_client::registry::Registry;
use serde_json::json;
use tower_http::trace::TraceLayer;

pub mod artifacts;
mod auth;
pub mod error;
pub mod metrics;
mod mock;
pub mod openapi;
mod platform;

use error::{ApiError, Message};

/// Largest request body accepted (1 MiB); larger ones get 413.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler shares.
pub struct AppState {
    /// The manager.
    pub manager: Arc<Manager>,
    /// The cloud controller, in this process or another (absent: deploy answers 503).
    pub controller: Option<Arc<dyn nubo_controller::ControlPlane>>,
    /// The autoscaler's recent decisions (absent without an autoscaler).
    pub scaling: Option<nubo_autoscaler::monitor::ScalingLog>,
    /// All metrics of the process, served on `/metrics`.
    pub registry: Registry,
    /// The mock IaaS, when the server offers it.
    pub mock: Option<Arc<nubo_mock::MockIaas>>,
    metrics: metrics::ApiMetrics,
}

impl AppState {
    /// State over `manager`; the API registers its metrics in `registry`, which `/metrics` serves.
    pub fn new(
        manager: Arc<Manager>,
        controller: Option<Arc<dyn nubo_controller::ControlPlane>>,
        scaling: Option<nubo_autoscaler::monitor::ScalingLog>,
        mut registry: Registry,
    ) -> Arc<Self> {
        let metrics = metrics::ApiMetrics::register(&mut registry);
        Arc::new(AppState {
            manager,
            controller,
            scaling,
            registry,
            mock: None,
            metrics,
        })
    }

    /// The same state with the mock IaaS's API enabled.
    pub fn with_mock(self: Arc<Self>, mock: Arc<nubo_mock::MockIaas>) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut s) => {
                s.mock = Some(mock);
                Arc::new(s)
            }
            Err(shared) => shared,
        }
    }
}

/// The whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let api = artifacts::routes()
        .merge(platform::routes())
        .merge(mock::routes())
        .route("/init", get(init))
        .route("/iaasProviders", get(iaas_providers));
    let authed = Router::new()
        .nest("/api/v4.1", api.clone())
        .nest("/api", api)
        .route("/api/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics_text))
        .layer(from_fn_with_state(state.clone(), auth::require_basic));
    Router::new()
        .route("/health", get(health))
        .route("/api/health", get(health))
        .merge(authed)
        .route_layer(from_fn_with_state(state.clone(), metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn init(Extension(p): Extension<Principal>) -> Json<Message> {
    Json(Message::success(format!(
        "Successfully authenticated as {}",
        p.user
    )))
}

async fn iaas_providers(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "iaasProviders": s.manager.providers() }))
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s
        .manager
        .store()
        .list(nubo_model::SUPER_TENANT_ID, "health-probe")
        .await
    {
        Ok(_) => {
            Json(json!({"status": "ok", "store": s.manager.store().backend()})).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "error", "message": format!("store unavailable: {e}")})),
        )
            .into_response(),
    }
}

async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
        .into_response()
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &s.registry).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {}; the API is described at /api/openapi.json",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; see /api/openapi.json",
            uri.path()
        ),
    )
}
