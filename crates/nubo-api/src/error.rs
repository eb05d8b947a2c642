//! The one place where errors become HTTP responses: `{"status":"error","message":…,"errors":[…]}`.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use nubo_manager::ManagerError;
use nubo_model::FieldError;
use serde::Serialize;

/// Stratos' `ResponseMessageBean`, plus the field errors.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Message {
    /// `success` or `error`.
    pub status: &'static str,
    /// What happened, or what is wrong and what to do.
    pub message: String,
    /// For validation errors: each field and what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Message {
    /// A success message.
    pub fn success(message: impl Into<String>) -> Self {
        Message {
            status: "success",
            message: message.into(),
            errors: Vec::new(),
        }
    }
}

/// An error answered by the API.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message.
    pub message: String,
    /// Field errors.
    pub errors: Vec<FieldError>,
    /// Seconds after which to try again (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let status = match &e {
            ManagerError::Parse { .. }
            | ManagerError::Invalid { .. }
            | ManagerError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ManagerError::NotFound { .. } => StatusCode::NOT_FOUND,
            ManagerError::Conflict { .. }
            | ManagerError::InUse { .. }
            | ManagerError::StateConflict(_) => StatusCode::CONFLICT,
            ManagerError::Forbidden(_) | ManagerError::Quota { .. } => StatusCode::FORBIDDEN,
            ManagerError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ManagerError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ManagerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let retry_after = match &e {
            ManagerError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "request failed");
        }
        ApiError {
            status,
            errors: e.field_errors(),
            message: e.to_string(),
            retry_after,
        }
    }
}

impl From<nubo_controller::ControlError> for ApiError {
    fn from(e: nubo_controller::ControlError) -> Self {
        use nubo_controller::ControlError as E;
        let status = match &e {
            E::AlreadyDeployed(_) | E::NotDeployed(_) | E::HostTaken(_) => StatusCode::CONFLICT,
            E::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<nubo_controller::DeployError<ManagerError>> for ApiError {
    fn from(e: nubo_controller::DeployError<ManagerError>) -> Self {
        use nubo_controller::DeployError as E;
        match e {
            E::Plan(e) => e.into(),
            E::Control(e) => e.into(),
            E::NoController => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            E::Deployed(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the request body is larger than the limit of {} bytes",
                crate::BODY_LIMIT
            )
        } else {
            format!("cannot read the request body: {}", r.body_text())
        };
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut resp = (
            self.status,
            Json(Message {
                status: "error",
                message: self.message,
                errors: self.errors,
            }),
        )
            .into_response();
        if unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"nubo\""),
            );
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
