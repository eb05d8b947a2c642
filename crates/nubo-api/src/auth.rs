//! HTTP Basic authentication in front of every route but the health check.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use http::{StatusCode, header};

use crate::AppState;
use crate::error::ApiError;

/// The bearer token of a request's `Authorization` header, if it has one.
pub(crate) fn bearer_token(req: &Request) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
}

/// Checks the `Authorization` header (`Basic …`, or `Bearer <token>` of a session or an API
/// token) and puts the [`nubo_manager::Principal`] and how it proved itself
/// ([`crate::tokens::Proof`]) into the request's extensions.
pub async fn require_auth(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (principal, proof) = match bearer_token(&req) {
        Some(token) => {
            let (p, info) = state.manager.authenticate_token(&token).await?;
            (p, crate::tokens::Proof::Token(info))
        }
        None => {
            let credentials = basic_credentials(&req)?;
            (
                basic_principal(&state, credentials).await?,
                crate::tokens::Proof::Password,
            )
        }
    };
    req.extensions_mut().insert(principal);
    req.extensions_mut().insert(proof);
    Ok(next.run(req).await)
}

/// The user that Basic credentials (of [`basic_credentials`]) prove.
pub async fn basic_principal(
    state: &AppState,
    (client, user, password): (String, String, String),
) -> Result<nubo_manager::Principal, ApiError> {
    Ok(state
        .manager
        .authenticate(&client, &user, &password)
        .await?)
}

/// The client's address, user and password of a request's Basic credentials.
pub fn basic_credentials(req: &Request) -> Result<(String, String, String), ApiError> {
    let missing = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication required: send HTTP Basic credentials (user `admin`, password from NUBO_ADMIN_PASSWORD or printed at first start), or a token as `Authorization: Bearer TOKEN` (POST /api/login)",
        )
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
        .ok_or_else(missing)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "malformed Basic credentials"))?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "malformed Basic credentials"))?;
    // The client's address (the server puts it in each request), the key of the rate limit.
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".to_owned());
    Ok((client, user.to_owned(), password.to_owned()))
}
