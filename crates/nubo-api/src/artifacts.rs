//! The artifact endpoints of Stratos v4.1 (§2): one set of generic handlers, one route set per kind.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, OriginalUri, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use nubo_controller::DeploymentStatus;
use nubo_events::view::{ApplicationRuntime, MemberPage};
use nubo_manager::Principal;
use nubo_model::{
    Application, ApplicationPolicy, Artifact, AutoscalingPolicy, Cartridge, CartridgeGroup,
    DeploymentPolicy, Kind, KubernetesCluster, NetworkPartition,
};
use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, Message};

/// The REST collection name of each kind served here.
pub const ENDPOINTS: [(Kind, &str); 8] = [
    (Kind::NetworkPartition, "networkPartitions"),
    (Kind::DeploymentPolicy, "deploymentPolicies"),
    (Kind::AutoscalingPolicy, "autoscalingPolicies"),
    (Kind::ApplicationPolicy, "applicationPolicies"),
    (Kind::Cartridge, "cartridges"),
    (Kind::CartridgeGroup, "cartridgeGroups"),
    (Kind::Application, "applications"),
    (Kind::KubernetesCluster, "kubernetesClusters"),
];

type S = State<Arc<AppState>>;
type Body = Result<Bytes, BytesRejection>;

fn capitalized(kind: Kind) -> String {
    let label = kind.label();
    let mut c = label.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

async fn add<T: Artifact>(
    State(s): S,
    Extension(p): Extension<Principal>,
    OriginalUri(uri): OriginalUri,
    body: Body,
) -> Result<Response, ApiError> {
    let body = body?;
    s.manager.may_write::<T>(&p, &body)?;
    let a = s.manager.add::<T>(p.tenant_id, &body).await?;
    let location = format!("{}/{}", uri.path().trim_end_matches('/'), a.id());
    let msg = Message::success(format!(
        "{} added successfully: [{}] {}",
        capitalized(T::KIND),
        T::ID_FIELD,
        a.id()
    ));
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(msg),
    )
        .into_response())
}

async fn update<T: Artifact>(
    State(s): S,
    Extension(p): Extension<Principal>,
    body: Body,
) -> Result<Json<Message>, ApiError> {
    let body = body?;
    s.manager.may_write::<T>(&p, &body)?;
    let a = s.manager.update::<T>(p.tenant_id, &body).await?;
    let mut msg = format!(
        "{} updated successfully: [{}] {}",
        capitalized(T::KIND),
        T::ID_FIELD,
        a.id()
    );
    if matches!(
        T::KIND,
        Kind::AutoscalingPolicy
            | Kind::DeploymentPolicy
            | Kind::ApplicationPolicy
            | Kind::Application
            | Kind::CartridgeGroup
    ) {
        for note in s.deployments.replan_running(p.tenant_id).await {
            msg.push_str("; ");
            msg.push_str(&note);
        }
        // A shared definition of the super tenant's: the tenants deploying on it re-plan too.
        if T::KIND.is_shared() && p.tenant_id == nubo_model::SUPER_TENANT_ID {
            for tenant in s.manager.tenants_using(T::KIND, a.id()).await? {
                for note in s.deployments.replan_running(tenant).await {
                    msg.push_str(&format!("; tenant {tenant}: {note}"));
                }
            }
        }
    }
    Ok(Json(Message::success(msg)))
}

async fn list<T: Artifact>(
    State(s): S,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<T>>, ApiError> {
    let mut all = s.manager.list::<T>(p.tenant_id).await?;
    all.iter_mut().for_each(T::redact_secrets);
    Ok(Json(all))
}

async fn get_one<T: Artifact>(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<T>, ApiError> {
    let mut one = s.manager.get::<T>(p.tenant_id, &id).await?;
    one.redact_secrets();
    Ok(Json(one))
}

async fn remove<T: Artifact>(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    s.manager.remove::<T>(p.tenant_id, &id).await?;
    Ok(Json(Message::success(format!(
        "{} removed successfully: [{}] {id}",
        capitalized(T::KIND),
        T::ID_FIELD
    ))))
}

async fn decorate(s: &AppState, tenant: i64, app: &mut Application) -> Result<(), ApiError> {
    // Stratos: `Active` once the application is active in the topology, else the definition's
    // status (`Created`, `Deployed`, `Undeploying`).
    let status = s
        .deployments
        .application_status(tenant, &app.application_id)
        .await?;
    app.status = Some(
        match status {
            None => "Created",
            Some((DeploymentStatus::Deployed, nubo_events::InstanceStatus::Active)) => "Active",
            Some((DeploymentStatus::Deployed, _)) => "Deployed",
            Some((DeploymentStatus::Undeploying, _)) => "Undeploying",
        }
        .to_owned(),
    );
    app.sign_ups_exist = Some(
        tenant == nubo_model::SUPER_TENANT_ID
            && app.multi_tenant == Some(true)
            && s.manager.signups_exist(&app.application_id).await?,
    );
    // Repository passwords and webhook secrets are sealed in the store, and never served.
    app.redact_secrets();
    Ok(())
}

async fn list_applications(
    State(s): S,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<Application>>, ApiError> {
    let mut apps = s.manager.list::<Application>(p.tenant_id).await?;
    for a in apps.iter_mut() {
        decorate(&s, p.tenant_id, a).await?;
    }
    Ok(Json(apps))
}

async fn get_application(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Application>, ApiError> {
    let mut app = s.manager.get::<Application>(p.tenant_id, &id).await?;
    decorate(&s, p.tenant_id, &mut app).await?;
    Ok(Json(app))
}

async fn remove_application(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Message>, ApiError> {
    s.deployments.ensure_not_deployed(p.tenant_id, &id).await?;
    let tenant = p.tenant_id;
    let answer = remove::<Application>(State(s.clone()), Extension(p), Path(id.clone())).await?;
    // Its metadata goes with it (normally gone at the undeploy already).
    s.manager.clear_metadata(tenant, &id).await?;
    Ok(answer)
}

async fn deploy(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path((id, policy)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    within_instance_quota(&s, p.tenant_id, &id, &policy).await?;
    s.deployments.deploy(p.tenant_id, &id, &policy).await?;
    let msg = Message::success(format!(
        "Application deployed successfully: [application-id] {id}"
    ));
    Ok((StatusCode::ACCEPTED, Json(msg)).into_response())
}

/// Refuses a deploy that would take the tenant beyond its `instances` quota: the members its
/// applications run now, and the new one's minimum (each cluster's, per application instance).
async fn within_instance_quota(
    s: &AppState,
    tenant: i64,
    id: &str,
    policy: &str,
) -> Result<(), ApiError> {
    if tenant == nubo_model::SUPER_TENANT_ID || s.manager.quota(tenant).await?.instances.is_none() {
        return Ok(());
    }
    let plan = s.manager.deployment_plan(tenant, id, policy).await?;
    let more: u32 =
        plan.clusters.iter().map(|c| c.min).sum::<u32>() * (plan.instances.len().max(1) as u32);
    let used = match s.controller.as_ref() {
        Some(c) => c.tenant_members(tenant).await.unwrap_or(0),
        None => 0,
    };
    s.manager.within_instance_quota(tenant, used, more).await?;
    Ok(())
}

/// `?force=` of undeploy.
#[derive(Debug, Deserialize)]
pub struct Force {
    #[serde(default)]
    force: bool,
}

async fn undeploy(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Query(q): Query<Force>,
) -> Result<Response, ApiError> {
    s.deployments.undeploy(p.tenant_id, &id, q.force).await?;
    // As Stratos clears it when the application's clusters go: a new deployment starts afresh.
    s.manager.clear_metadata(p.tenant_id, &id).await?;
    let msg = Message::success(format!(
        "Application undeployed successfully: [application-id] {id}"
    ));
    Ok((StatusCode::ACCEPTED, Json(msg)).into_response())
}

/// For what reads a deployment: "not deployed" is a missing resource (404), not a conflict.
fn not_deployed_is_404(
    id: &str,
    e: nubo_controller::DeployError<nubo_manager::ManagerError>,
) -> ApiError {
    match e {
        nubo_controller::DeployError::Control(nubo_controller::ControlError::NotDeployed(_)) => {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("application `{id}` is not deployed: deploy it first"),
            )
        }
        e => e.into(),
    }
}

async fn runtime(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ApplicationRuntime>, ApiError> {
    let mut view = s
        .deployments
        .runtime(p.tenant_id, &id)
        .await
        .map_err(|e| not_deployed_is_404(&id, e))?;
    let app = s.manager.get::<Application>(p.tenant_id, &id).await?;
    view.name = app.name;
    view.description = app.description;
    Ok(Json(view))
}

/// `?offset=&limit=` of a page of members.
#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    offset: usize,
    #[serde(default = "default_limit")]
    limit: usize,
}

/// Members per page unless `?limit=` says otherwise; at most [`MAX_PAGE`].
fn default_limit() -> usize {
    1_000
}

/// The largest page of members.
pub const MAX_PAGE: usize = 10_000;

async fn members(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<MemberPage>, ApiError> {
    if page.limit == 0 || page.limit > MAX_PAGE {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("limit must be between 1 and {MAX_PAGE}"),
            errors: vec![nubo_model::FieldError {
                field: "limit".into(),
                reason: format!("{} is not between 1 and {MAX_PAGE}", page.limit),
            }],
            retry_after: None,
        });
    }
    let page = s
        .deployments
        .members(p.tenant_id, &id, page.offset, page.limit)
        .await
        .map_err(|e| not_deployed_is_404(&id, e))?;
    Ok(Json(page))
}

/// `?criteria=` of the cartridge filters.
#[derive(Debug, Deserialize)]
pub struct Criteria {
    criteria: Option<String>,
}

/// The cartridge filters: name and description.
pub const CARTRIDGE_FILTERS: [(&str, &str); 5] = [
    ("multi-tenant", "multi-tenant cartridges"),
    ("single-tenant", "single-tenant cartridges"),
    ("load-balancer", "cartridges of category load-balancer"),
    ("provider", "cartridges whose provider is ?criteria="),
    ("category", "cartridges whose category is ?criteria="),
];

fn cartridge_matches(
    c: &Cartridge,
    filter: &str,
    criteria: Option<&str>,
) -> Result<bool, ApiError> {
    let need = |name: &str| {
        criteria.filter(|c| !c.is_empty()).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the `{name}` filter needs ?criteria=VALUE"),
            )
        })
    };
    Ok(match filter {
        "multi-tenant" | "multiTenant" => c.multi_tenant == Some(true),
        "single-tenant" | "singleTenant" => c.multi_tenant != Some(true),
        "load-balancer" | "loadBalancer" => c.category == "load-balancer",
        "provider" => c.provider.as_deref() == Some(need("provider")?),
        "category" => c.category == need("category")?,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown cartridge filter `{other}`; known filters: {}",
                    CARTRIDGE_FILTERS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    })
}

async fn filter_cartridges(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(filter): Path<String>,
    Query(q): Query<Criteria>,
) -> Result<Json<Vec<Cartridge>>, ApiError> {
    let mut out = Vec::new();
    for c in s.manager.list::<Cartridge>(p.tenant_id).await? {
        if cartridge_matches(&c, &filter, q.criteria.as_deref())? {
            out.push(c);
        }
    }
    Ok(Json(out))
}

async fn filter_cartridge(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path((id, filter)): Path<(String, String)>,
    Query(q): Query<Criteria>,
) -> Result<Json<Cartridge>, ApiError> {
    let c = s.manager.get::<Cartridge>(p.tenant_id, &id).await?;
    if cartridge_matches(&c, &filter, q.criteria.as_deref())? {
        Ok(Json(c))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("cartridge `{id}` does not match the filter `{filter}`"),
        ))
    }
}

fn crud<T: Artifact>(router: Router<Arc<AppState>>, collection: &str) -> Router<Arc<AppState>> {
    router
        .route(
            &format!("/{collection}"),
            post(add::<T>).put(update::<T>).get(list::<T>),
        )
        .route(
            &format!("/{collection}/{{id}}"),
            get(get_one::<T>).delete(remove::<T>),
        )
}

/// The artifact routes, relative to `/api` (and `/api/v4.1`).
pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new();
    let r = crud::<NetworkPartition>(r, "networkPartitions");
    let r = crud::<DeploymentPolicy>(r, "deploymentPolicies");
    let r = crud::<AutoscalingPolicy>(r, "autoscalingPolicies");
    let r = crud::<ApplicationPolicy>(r, "applicationPolicies");
    let r = crud::<Cartridge>(r, "cartridges");
    let r = crud::<CartridgeGroup>(r, "cartridgeGroups");
    let r = crud::<KubernetesCluster>(r, "kubernetesClusters");
    r.route(
        "/applications",
        post(add::<Application>)
            .put(update::<Application>)
            .get(list_applications),
    )
    .route(
        "/applications/{id}",
        get(get_application).delete(remove_application),
    )
    .route("/applications/{id}/deploy/{policy}", post(deploy))
    .route("/applications/{id}/undeploy", post(undeploy))
    .route("/applications/{id}/runtime", get(runtime))
    .route("/applications/{id}/members", get(members))
    .route("/applications/{id}/logs", get(crate::logs::logs))
    .route("/cartridges/filter/{filter}", get(filter_cartridges))
    .route("/cartridges/{id}/filter/{filter}", get(filter_cartridge))
}
