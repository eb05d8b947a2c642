//! Nubo's REST API: the Stratos v4.1 endpoints (as in Apache Stratos 4.1) under `/api` and `/api/v4.1`,
//! HTTP Basic authentication, JSON errors, the OpenAPI document and Prometheus metrics.
//!
//! Deliberate deviations from Stratos are listed in `docs/api.md`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

use std::sync::{Arc, OnceLock, RwLock};

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

pub mod access;
pub mod artifacts;
pub mod audit;
mod auth;
pub mod error;
pub mod logs;
pub mod metadata;
pub mod metrics;
mod mock;
pub mod openapi;
mod platform;
pub mod quotas;
pub mod repo;
pub mod signups;
pub mod tokens;
pub mod usage;

use error::{ApiError, Message};

/// Largest request body accepted (1 MiB); larger ones get 413.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What every handler shares.
///
/// A standby (`--ha` without the lease) serves the API before its controller exists: the
/// controller behind [`AppState::controller`] switches by itself
/// ([`nubo_controller::SwitchableControl`]), and what only exists once the controller runs — the
/// autoscaler's log, the mock IaaS, the controller's metrics — is attached when it starts.
pub struct AppState {
    /// The manager.
    pub manager: Arc<Manager>,
    /// The cloud controller, in this process or another (absent: deploy answers 503).
    pub controller: Option<Arc<dyn nubo_controller::ControlPlane>>,
    /// Deploying: the manager plans, the controller carries out.
    pub deployments: nubo_controller::Deployments<Manager>,
    /// The autoscaler's recent decisions, when it runs in this process; else they are read from
    /// the store, where the autoscaler persists them.
    scaling: OnceLock<nubo_autoscaler::monitor::ScalingLog>,
    /// All metrics of the process, served on `/metrics`.
    registry: RwLock<Registry>,
    /// The mock IaaS, when the server offers it.
    mock: OnceLock<Arc<nubo_mock::MockIaas>>,
    /// The platform's bus (with its key): checks members' tokens, carries what the API publishes.
    bus: OnceLock<nubo_bus::EventBus>,
    /// Workloads' logs, kept by this process.
    logs: OnceLock<Arc<nubo_logs::Logs>>,
    /// The longest life of a login's session, in seconds (`--session-ttl`).
    session_ttl: std::sync::atomic::AtomicU64,
    metrics: metrics::ApiMetrics,
}

/// A session's life unless the server says otherwise: 12 hours.
pub const DEFAULT_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Something attached to an [`AppState`] a second time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} is already attached to the API")]
pub struct AlreadyAttached(&'static str);

impl AppState {
    /// State over `manager`; the API registers its metrics in `registry`, which `/metrics` serves.
    pub fn new(
        manager: Arc<Manager>,
        controller: Option<Arc<dyn nubo_controller::ControlPlane>>,
        scaling: Option<nubo_autoscaler::monitor::ScalingLog>,
        mut registry: Registry,
    ) -> Arc<Self> {
        let metrics = metrics::ApiMetrics::register(&mut registry);
        let state = AppState {
            deployments: nubo_controller::Deployments::new(manager.clone(), controller.clone()),
            manager,
            controller,
            scaling: OnceLock::new(),
            registry: RwLock::new(registry),
            session_ttl: std::sync::atomic::AtomicU64::new(DEFAULT_SESSION_TTL.as_secs()),
            mock: OnceLock::new(),
            bus: OnceLock::new(),
            logs: OnceLock::new(),
            metrics,
        };
        if let Some(log) = scaling {
            let _ = state.scaling.set(log);
        }
        Arc::new(state)
    }

    /// The same state with the mock IaaS's API enabled.
    pub fn with_mock(self: Arc<Self>, mock: Arc<nubo_mock::MockIaas>) -> Arc<Self> {
        let _ = self.attach_mock(mock);
        self
    }

    /// Enables the mock IaaS's API (a standby, once it leads).
    pub fn attach_mock(&self, mock: Arc<nubo_mock::MockIaas>) -> Result<(), AlreadyAttached> {
        self.mock
            .set(mock)
            .map_err(|_| AlreadyAttached("the mock IaaS"))
    }

    /// Serves the decisions of this process's autoscaler (a standby, once it leads) rather than
    /// those persisted in the store.
    pub fn attach_scaling(
        &self,
        log: nubo_autoscaler::monitor::ScalingLog,
    ) -> Result<(), AlreadyAttached> {
        self.scaling
            .set(log)
            .map_err(|_| AlreadyAttached("the autoscaler's log"))
    }

    /// Registers more metrics for `/metrics` (a standby's controller, once it leads).
    pub fn register_metrics(&self, register: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
        register(&mut registry);
    }

    /// The same state with the platform's bus: members' tokens are checked with its key.
    pub fn with_bus(self: Arc<Self>, bus: nubo_bus::EventBus) -> Arc<Self> {
        let _ = self.bus.set(bus);
        self
    }

    /// The same state serving workloads' logs from `logs`.
    pub fn with_logs(self: Arc<Self>, logs: Arc<nubo_logs::Logs>) -> Arc<Self> {
        let _ = self.logs.set(logs);
        self
    }

    /// This process's log store, when it keeps one.
    pub fn logs(&self) -> Option<&Arc<nubo_logs::Logs>> {
        self.logs.get()
    }

    /// The platform's bus, when the server gave it.
    pub fn bus(&self) -> Option<&nubo_bus::EventBus> {
        self.bus.get()
    }

    /// The mock IaaS, when this server offers it.
    pub fn mock(&self) -> Option<&Arc<nubo_mock::MockIaas>> {
        self.mock.get()
    }

    /// Where the controller runs (`None`: no controller at all).
    pub fn role(&self) -> Option<nubo_controller::ControlRole> {
        self.controller.as_ref().map(|c| c.role())
    }

    /// Who holds the controller lease (`--ha`), if anyone does and the store says so.
    pub async fn leader(&self) -> Option<String> {
        self.manager
            .store()
            .lease(nubo_controller::CONTROLLER_LEASE)
            .await
            .ok()
            .flatten()
            .map(|l| l.holder)
    }

    /// Sets the longest life of a login's session.
    pub fn set_session_ttl(&self, ttl: std::time::Duration) {
        self.session_ttl
            .store(ttl.as_secs().max(60), std::sync::atomic::Ordering::Relaxed);
    }

    /// The longest life of a login's session.
    pub fn session_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.session_ttl.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The answer to a request that only the leader can serve, on a standby: 503 naming the
    /// leader.
    pub async fn standby_error(&self, what: &str) -> ApiError {
        let leader = match self.leader().await {
            Some(l) => format!("`{l}`"),
            None => "another server".into(),
        };
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this server is a standby: the controller runs in {leader}; {what} (this server serves it once it leads)"
            ),
        )
    }
}

/// The whole HTTP application.
pub fn router(state: Arc<AppState>) -> Router {
    let api = artifacts::routes()
        .merge(platform::routes())
        .merge(mock::routes())
        .merge(tokens::routes())
        .merge(audit::routes())
        .merge(usage::routes())
        .merge(quotas::routes())
        .merge(signups::routes())
        .route("/init", get(init))
        .route("/iaasProviders", get(iaas_providers));
    let authed = Router::new()
        .nest("/api/v4.1", api.clone())
        .nest("/api", api)
        .route("/api/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics_text))
        .route_layer(from_fn_with_state(state.clone(), access::authorize))
        // Outside the role check: a refused change is recorded too.
        .route_layer(from_fn_with_state(state.clone(), audit::record))
        .layer(from_fn_with_state(state.clone(), auth::require_auth));
    Router::new()
        .route("/health", get(health))
        .route("/api/health", get(health))
        .merge(authed)
        .merge(repo::webhook_routes())
        .nest("/metadata/api", metadata::routes(state.clone()))
        .nest("/agent/api", repo::agent_routes(state.clone()))
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

async fn iaas_providers(
    State(s): State<Arc<AppState>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(
        json!({ "iaasProviders": s.manager.providers().await? }),
    ))
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    match s
        .manager
        .store()
        .list(nubo_model::SUPER_TENANT_ID, "health-probe")
        .await
    {
        Ok(_) => {
            let mut body = json!({"status": "ok", "store": s.manager.store().backend()});
            body["controller"] = match s.role() {
                Some(role) => json!(role),
                None => json!("none"),
            };
            if s.role() == Some(nubo_controller::ControlRole::Standby)
                && let Some(leader) = s.leader().await
            {
                body["leader"] = json!(leader);
            }
            Json(body).into_response()
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
    let registry = s.registry.read().unwrap_or_else(|e| e.into_inner());
    prometheus_client::encoding::text::encode(&mut out, &registry).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use nubo_controller::{
        ControlError, ControlPlane, ControlRole, ControllerState, DeploymentPlan,
    };
    use tower::ServiceExt;

    use super::*;

    /// A controller nobody answers for.
    struct Nowhere(ControlRole);

    #[async_trait::async_trait]
    impl ControlPlane for Nowhere {
        fn role(&self) -> ControlRole {
            self.0
        }
        async fn state(&self) -> Option<ControllerState> {
            Some(ControllerState::default())
        }
        async fn deploy(&self, _: DeploymentPlan) -> Result<(), ControlError> {
            Err(ControlError::Unavailable("nowhere".into()))
        }
        async fn undeploy(&self, _: &str, _: bool) -> Result<(), ControlError> {
            Err(ControlError::Unavailable("nowhere".into()))
        }
        async fn update_plan(&self, _: DeploymentPlan) -> Result<(), ControlError> {
            Err(ControlError::Unavailable("nowhere".into()))
        }
    }

    async fn call(app: &Router, path: &str) -> (StatusCode, String) {
        let req = Request::get(path)
            .header("authorization", "Basic YWRtaW46cHc=") // admin:pw
            .body(Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_standby_serves_the_api_and_attaches_the_controller_s_parts_when_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            nubo_store::SqliteStore::open(&dir.path().join("nubo.db"))
                .await
                .unwrap(),
        );
        let manager = Arc::new(Manager::new(
            store.clone(),
            vec!["mock".into()],
            nubo_manager::SecretsKey::random().unwrap(),
        ));
        manager.ensure_admin(Some("pw")).await.unwrap();
        nubo_store::Store::acquire_lease(
            store.as_ref(),
            nubo_controller::CONTROLLER_LEASE,
            "host:1",
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
        let switch = Arc::new(nubo_controller::SwitchableControl::new(Arc::new(Nowhere(
            ControlRole::Remote,
        ))));
        let state = AppState::new(manager, Some(switch.clone()), None, Registry::default());
        let app = router(state.clone());

        let (code, body) = call(&app, "/health").await;
        assert_eq!(code, StatusCode::OK);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["controller"], "standby", "{health}");
        assert_eq!(health["leader"], "host:1", "{health}");
        let (code, body) = call(&app, "/api/mock-iaas/instances").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            body.contains("this server is a standby: the controller runs in `host:1`"),
            "{body}"
        );

        // It leads: the controller's parts are attached, once.
        state.register_metrics(|r| {
            r.register(
                "nubo_led",
                "attached later",
                prometheus_client::metrics::counter::Counter::<u64>::default(),
            )
        });
        state
            .attach_scaling(nubo_autoscaler::monitor::ScalingLog::default())
            .unwrap();
        assert_eq!(
            state.attach_scaling(nubo_autoscaler::monitor::ScalingLog::default()),
            Err(AlreadyAttached("the autoscaler's log"))
        );
        switch.lead(Arc::new(Nowhere(ControlRole::Local))).unwrap();
        let (_, body) = call(&app, "/health").await;
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["controller"], "leader", "{health}");
        assert!(health.get("leader").is_none(), "{health}");
        let (code, body) = call(&app, "/api/mock-iaas/instances").await;
        assert_eq!(code, StatusCode::NOT_FOUND, "not offered: {body}");
        let (_, body) = call(&app, "/metrics").await;
        assert!(body.contains("nubo_led_total 0"), "{body}");
        assert!(body.contains("nubo_http_requests"), "{body}");
    }
}
