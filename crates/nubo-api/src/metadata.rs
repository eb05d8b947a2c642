//! The metadata service (Stratos' `/metadata/api`): per application, and per cluster of it, keys
//! with lists of values.
//!
//! Two kinds of callers: an application's members, with the `TOKEN` of their payload as a bearer
//! token (each reads and writes its own application's metadata, nothing else), and the tenant's
//! users with Basic credentials (any user reads, an admin of the tenant writes). A member's token
//! is checked with the platform's key and is good while its member is in the topology.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use http::StatusCode;
use nubo_manager::metadata::{Property, Scope};
use nubo_manager::{Principal, Role};
use nubo_model::Application;

use crate::AppState;
use crate::error::{ApiError, Message};

type S = State<Arc<AppState>>;

/// Who calls the metadata service.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A member, by its token.
    Member {
        /// The member.
        member_id: String,
        /// Its application: the only one it may read or write.
        application_id: String,
        /// The application's tenant.
        tenant_id: i64,
        /// Its cluster's alias.
        alias: String,
    },
    /// A user, by Basic credentials.
    User(Principal),
}

impl Caller {
    fn tenant(&self) -> i64 {
        match self {
            Caller::Member { tenant_id, .. } => *tenant_id,
            Caller::User(p) => p.tenant_id,
        }
    }
}

/// Authenticates a caller of the metadata service: a member's bearer token, else a user's Basic
/// credentials.
pub async fn authenticate(
    State(state): S,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = match crate::auth::bearer_token(&req) {
        Some(token) => member_caller(&state, &token).await?,
        None => {
            let credentials = crate::auth::basic_credentials(&req)?;
            Caller::User(crate::auth::basic_principal(&state, credentials).await?)
        }
    };
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

pub(crate) async fn member_caller(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let refused = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this token is not a member's token of this platform: use the TOKEN of the member's payload, or Basic credentials",
        )
    };
    let member_id = state
        .bus()
        .and_then(|b| b.member_of_token(token))
        .ok_or_else(refused)?;
    let control = state.controller.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no controller to check the member's token against",
        )
    })?;
    let id = control.member(&member_id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("member `{member_id}` is not running: its token is no longer good"),
        )
    })?;
    Ok(Caller::Member {
        member_id,
        application_id: id.member.application_id,
        tenant_id: id.tenant_id,
        alias: id.alias,
    })
}

/// Whether `caller` may read (or, with `write`, change) the metadata of `app`; the tenant to
/// find it in.
async fn allowed(s: &AppState, caller: &Caller, app: &str, write: bool) -> Result<i64, ApiError> {
    match caller {
        Caller::Member {
            application_id,
            member_id,
            ..
        } => {
            if application_id != app {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "member `{member_id}` belongs to application `{application_id}`: a member reads and writes its own application's metadata only"
                    ),
                ));
            }
        }
        Caller::User(p) => {
            if write && p.role != Role::Admin {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "only an admin of the tenant may change metadata: ask your tenant's admin",
                ));
            }
            // The application must be the caller's tenant's (404 otherwise, as for any artifact).
            s.manager.get::<Application>(p.tenant_id, app).await?;
        }
    }
    Ok(caller.tenant())
}

fn nothing(what: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, what)
}

async fn read(
    s: &AppState,
    caller: &Caller,
    app: &str,
    scope: Scope<'_>,
) -> Result<Vec<Property>, ApiError> {
    let tenant = allowed(s, caller, app, false).await?;
    let doc = s.manager.metadata(tenant, app).await?;
    doc.properties(scope).ok_or_else(|| {
        nothing(match scope {
            Scope::Application => format!("application `{app}` has no metadata"),
            Scope::Cluster(c) => format!("cluster `{c}` of application `{app}` has no metadata"),
        })
    })
}

fn one(props: Vec<Property>, name: &str) -> Result<Json<Property>, ApiError> {
    props
        .into_iter()
        .find(|p| p.key == name)
        .map(Json)
        .ok_or_else(|| nothing(format!("no metadata key `{name}`")))
}

fn body(bytes: &[u8]) -> Result<Property, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a property {{\"key\": …, \"values\": […]}}: {e}"),
        );
        err.errors.push(nubo_model::FieldError {
            field: "body".into(),
            reason: e.to_string(),
        });
        err
    })
}

async fn add(
    s: &AppState,
    caller: &Caller,
    app: &str,
    scope: Scope<'_>,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let tenant = allowed(s, caller, app, true).await?;
    let p = body(bytes)?;
    s.manager
        .edit_metadata(tenant, app, |doc| doc.add(scope, &p))
        .await?;
    if let Caller::Member { member_id, .. } = caller {
        tracing::info!(member = %member_id, application = app, key = %p.key, "metadata written by a member");
    }
    Ok((
        StatusCode::CREATED,
        Json(Message::success(format!("added to `{}`", p.key))),
    )
        .into_response())
}

async fn app_properties(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Vec<Property>>, ApiError> {
    Ok(Json(read(&s, &c, &app, Scope::Application).await?))
}

async fn app_property(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((app, name)): Path<(String, String)>,
) -> Result<Json<Property>, ApiError> {
    one(read(&s, &c, &app, Scope::Application).await?, &name)
}

async fn cluster_properties(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((app, cluster)): Path<(String, String)>,
) -> Result<Json<Vec<Property>>, ApiError> {
    Ok(Json(read(&s, &c, &app, Scope::Cluster(&cluster)).await?))
}

async fn cluster_property(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((app, cluster, name)): Path<(String, String, String)>,
) -> Result<Json<Property>, ApiError> {
    one(read(&s, &c, &app, Scope::Cluster(&cluster)).await?, &name)
}

async fn add_app_property(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(app): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    add(&s, &c, &app, Scope::Application, &bytes).await
}

async fn add_cluster_property(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((app, cluster)): Path<(String, String)>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    add(&s, &c, &app, Scope::Cluster(&cluster), &bytes).await
}

async fn delete_all(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Message>, ApiError> {
    let tenant = allowed(&s, &c, &app, true).await?;
    s.manager.clear_metadata(tenant, &app).await?;
    Ok(Json(Message::success(format!(
        "the metadata of `{app}` is deleted"
    ))))
}

async fn remove(
    s: &AppState,
    c: &Caller,
    app: &str,
    name: &str,
    value: Option<&str>,
) -> Result<Json<Message>, ApiError> {
    let tenant = allowed(s, c, app, true).await?;
    let removed = s
        .manager
        .edit_metadata(tenant, app, |doc| Ok(doc.remove(name, value)))
        .await?;
    if !removed {
        return Err(nothing(match value {
            None => format!("no metadata key `{name}`"),
            Some(v) => format!("metadata key `{name}` has no value `{v}`"),
        }));
    }
    Ok(Json(Message::success("deleted")))
}

async fn delete_property(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((app, name)): Path<(String, String)>,
) -> Result<Json<Message>, ApiError> {
    remove(&s, &c, &app, &name, None).await
}

async fn delete_value(
    State(s): S,
    Extension(c): Extension<Caller>,
    Path((app, name, value)): Path<(String, String, String)>,
) -> Result<Json<Message>, ApiError> {
    remove(&s, &c, &app, &name, Some(&value)).await
}

/// The routes, under `/metadata/api` (Stratos' paths; the singular `cluster/` of Stratos' read of
/// one cluster key is served, and the plural too).
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/applications/{app}/properties",
            get(app_properties)
                .post(add_app_property)
                .delete(delete_all),
        )
        .route(
            "/applications/{app}/properties/{name}",
            get(app_property).delete(delete_property),
        )
        .route(
            "/applications/{app}/properties/{name}/value/{value}",
            delete(delete_value),
        )
        .route(
            "/applications/{app}/clusters/{cluster}/properties",
            get(cluster_properties).post(add_cluster_property),
        )
        .route(
            "/applications/{app}/cluster/{cluster}/properties/{name}",
            get(cluster_property),
        )
        .route(
            "/applications/{app}/clusters/{cluster}/properties/{name}",
            get(cluster_property),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit))
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate))
}

/// Records a write to the metadata service in its tenant's audit log (after [`authenticate`]):
/// a member's by its id (`via` `memberToken`), a user's by name.
async fn audit(State(state): S, req: Request, next: Next) -> Response {
    if matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return next.run(req).await;
    }
    let caller = req.extensions().get::<Caller>().cloned();
    let client = crate::audit::client_of(&req);
    let method = req.method().to_string();
    // The whole path (the router is nested under `/metadata/api`).
    let path = req
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| req.uri().path().to_owned(), |u| u.path().to_owned());
    let response = next.run(req).await;
    if let Some(c) = caller {
        let (user, via) = match &c {
            Caller::Member { member_id, .. } => (member_id.clone(), "memberToken"),
            Caller::User(p) => (p.user.clone(), "password"),
        };
        let e = crate::audit::entry(
            c.tenant(),
            user,
            via,
            client,
            method,
            path,
            response.status().as_u16(),
        );
        crate::audit::write(&state, &e).await;
    }
    response
}
