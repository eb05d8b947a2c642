//! Sessions and API tokens: `POST /api/login` (a session token for Basic credentials),
//! `POST /api/logout`, `GET /api/session` (who the caller is, and how it proved it), and
//! `GET|POST /api/tokens`, `DELETE /api/tokens/{id}` (API tokens for automation). Every other
//! route takes `Authorization: Bearer <token>` beside Basic credentials.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use http::StatusCode;
use nubo_manager::Principal;
use nubo_manager::tokens::{API_TOKEN_MAX_DAYS, Scope, TokenInfo, TokenKind};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;

type S = State<Arc<AppState>>;
type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// How the caller of a request proved itself (a request extension, set by the authentication).
#[derive(Debug, Clone)]
pub enum Proof {
    /// Basic credentials (a password).
    Password,
    /// A bearer token.
    Token(TokenInfo),
}

fn by_password(proof: &Proof, what: &str) -> Result<(), ApiError> {
    match proof {
        Proof::Password => Ok(()),
        Proof::Token(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{what} needs the user's password (Basic credentials), not a token: a token cannot make tokens that outlive it"
            ),
        )),
    }
}

fn seconds_field(field: &str, reason: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("{field}: {reason}"),
        errors: vec![nubo_model::FieldError {
            field: field.to_owned(),
            reason,
        }],
        retry_after: None,
    }
}

/// `POST /api/login`'s body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Login {
    /// The session's life in seconds (at most the server's `--session-ttl`).
    expires_in: Option<u64>,
}

async fn login(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(proof): Extension<Proof>,
    body: Body,
) -> Result<Response, ApiError> {
    by_password(&proof, "a login")?;
    let body = body?;
    let req: Login = if body.iter().all(u8::is_ascii_whitespace) {
        Login::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the login's body: {e}")))?
    };
    let max = s.session_ttl().as_secs();
    let life = match req.expires_in {
        None => max,
        Some(n) if n >= 60 && n <= max => n,
        Some(n) => {
            return Err(seconds_field(
                "expiresIn",
                format!("{n} is not between 60 and {max} seconds (the server's --session-ttl)"),
            ));
        }
    };
    let (token, info) = s
        .manager
        .issue_token(
            &p,
            TokenKind::Session,
            "session",
            Scope::Write,
            Duration::from_secs(life),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"token": token, "tokenType": "Bearer", "expiresIn": life,
            "expires": info.expires, "id": info.id, "user": p.user, "tenantId": p.tenant_id}),
        ),
    )
        .into_response())
}

async fn logout(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(proof): Extension<Proof>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match proof {
        Proof::Token(t) if t.kind == TokenKind::Session => {
            s.manager.revoke_token(&p, &t.id).await?;
            Ok(Json(
                json!({"status": "success", "message": "logged out: the session's token is revoked"}),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no session to end: log out with the session's token (Authorization: Bearer), or revoke an API token with DELETE /api/tokens/ID",
        )),
    }
}

async fn session(
    Extension(p): Extension<Principal>,
    Extension(proof): Extension<Proof>,
) -> Json<serde_json::Value> {
    let mut out = json!({"user": p.user, "tenantId": p.tenant_id,
        "role": match p.role { nubo_manager::Role::Admin => "admin", nubo_manager::Role::User => "user" }});
    match proof {
        Proof::Password => out["authenticatedBy"] = json!("password"),
        Proof::Token(t) => {
            out["authenticatedBy"] = json!(match t.kind {
                TokenKind::Session => "session",
                TokenKind::Api => "apiToken",
            });
            // Stratos' answer carried the session's id.
            out["sessionId"] = json!(t.id);
            out["scope"] = json!(t.scope);
            out["expires"] = json!(t.expires);
        }
    }
    Json(out)
}

/// `POST /api/tokens`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewToken {
    name: String,
    #[serde(default)]
    scope: Scope,
    expires_in_days: Option<u64>,
}

async fn create_token(
    State(s): S,
    Extension(p): Extension<Principal>,
    Extension(proof): Extension<Proof>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = body?;
    if let Proof::Token(t) = &proof
        && t.kind == TokenKind::Api
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "an API token cannot make API tokens: use the user's password or a session (POST /api/login)",
        ));
    }
    let req: NewToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the token's body: {e}")))?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(seconds_field("name", "1 to 64 printable characters".into()));
    }
    let days = req.expires_in_days.unwrap_or(90);
    if days == 0 || days > API_TOKEN_MAX_DAYS {
        return Err(seconds_field(
            "expiresInDays",
            format!("{days} is not between 1 and {API_TOKEN_MAX_DAYS}"),
        ));
    }
    let (token, info) = s
        .manager
        .issue_token(
            &p,
            TokenKind::Api,
            name,
            req.scope,
            Duration::from_secs(days * 86_400),
        )
        .await?;
    let mut out = serde_json::to_value(&info).unwrap_or_default();
    out["token"] = json!(token);
    out["note"] = json!("the token is shown once: keep it secret");
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn list_tokens(
    State(s): S,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(s.manager.list_tokens(&p).await?))
}

async fn revoke_token(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.manager.revoke_token(&p, &id).await?;
    Ok(Json(
        json!({"status": "success", "message": format!("token {id} revoked")}),
    ))
}

/// The routes, relative to `/api`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/session", get(session))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", delete(revoke_token))
}
