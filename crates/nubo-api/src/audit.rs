//! The audit log at the API: every request that may change something (any method but `GET`,
//! `HEAD`, `OPTIONS`) is recorded after its answer, refused or not, with its caller, how the
//! caller proved itself, its address, method, path and status; `GET /api/audit` reads it.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use http::Method;
use nubo_manager::Principal;
use nubo_manager::audit::AuditEntry;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;
use crate::tokens::Proof;

/// Records a change after its answer (a failure to record is logged, not the caller's).
pub async fn record(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let principal = req.extensions().get::<Principal>().cloned();
    let proof = req.extensions().get::<Proof>().cloned();
    let client = client_of(&req);
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    if let Some(p) = principal {
        let (via, token_id) = match proof {
            Some(Proof::Token(t)) => (
                match t.kind {
                    nubo_manager::tokens::TokenKind::Session => "session",
                    nubo_manager::tokens::TokenKind::Api => "apiToken",
                },
                Some(t.id),
            ),
            _ => ("password", None),
        };
        let mut entry = entry(
            p.tenant_id,
            p.user,
            via,
            client,
            method,
            path,
            response.status().as_u16(),
        );
        entry.token_id = token_id;
        write(&state, &entry).await;
    }
    response
}

/// An audit entry made now.
pub(crate) fn entry(
    tenant_id: i64,
    user: String,
    via: &str,
    client: String,
    method: String,
    path: String,
    status: u16,
) -> AuditEntry {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    AuditEntry {
        seq: 0,
        at: time::OffsetDateTime::from_unix_timestamp(now.as_secs() as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default(),
        at_ms: now.as_millis() as u64,
        tenant_id,
        user,
        via: via.to_owned(),
        token_id: None,
        client,
        method,
        path,
        status,
    }
}

/// Writes an entry (a failure is logged, not the caller's).
pub(crate) async fn write(state: &AppState, entry: &AuditEntry) {
    if let Err(e) = state.manager.audit(entry).await {
        tracing::error!(error = %e, path = %entry.path, user = %entry.user, "a change could not be written to the audit log");
    }
}

/// The client's address of a request, for the audit log.
pub(crate) fn client_of(req: &Request) -> String {
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".to_owned())
}

/// `GET /api/audit`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    /// Entries after this one (its `seq`).
    #[serde(default)]
    after: i64,
    /// At most this many (1-1000, default 100).
    limit: Option<usize>,
    /// One user's only.
    user: Option<String>,
}

async fn read(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Query(f): Query<Filter>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = f.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError {
            status: http::StatusCode::BAD_REQUEST,
            message: format!("limit: {limit} is not between 1 and 1000"),
            errors: vec![nubo_model::FieldError {
                field: "limit".into(),
                reason: format!("{limit} is not between 1 and 1000"),
            }],
            retry_after: None,
        });
    }
    Ok(Json(
        s.manager
            .audit_log(&p, f.after, limit, f.user.as_deref())
            .await?,
    ))
}

/// The route, relative to `/api`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/audit", get(read))
}
