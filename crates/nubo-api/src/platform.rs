//! Tenants, users, Kubernetes cluster hosts, and runtime lookups (as in Apache Stratos 4.1).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, OriginalUri, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use http::{StatusCode, header};
use nubo_manager::{Principal, Rotating};
use nubo_model::{Application, DeploymentPolicy, KubernetesCluster, KubernetesHost, Tenant, User};

use crate::AppState;
use crate::error::{ApiError, Message};

type S = State<Arc<AppState>>;
type Body = Result<Bytes, BytesRejection>;

// === tenants (super tenant only) ===

async fn add_tenant(
    State(s): S,
    OriginalUri(uri): OriginalUri,
    body: Body,
) -> Result<Response, ApiError> {
    let t = s.manager.add_tenant(&body?).await?;
    let location = format!("{}/{}", uri.path().trim_end_matches('/'), t.tenant_domain);
    let msg = Message::success(format!(
        "Tenant added successfully: [tenant-domain] {} [tenant-id] {}",
        t.tenant_domain,
        t.tenant_id.unwrap_or(0)
    ));
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(msg),
    )
        .into_response())
}

async fn update_tenant(State(s): S, body: Body) -> Result<Json<Message>, ApiError> {
    let t = s.manager.update_tenant(&body?).await?;
    Ok(Json(Message::success(format!(
        "Tenant updated successfully: [tenant-domain] {}",
        t.tenant_domain
    ))))
}

async fn list_tenants(State(s): S) -> Result<Json<Vec<Tenant>>, ApiError> {
    Ok(Json(
        s.manager
            .list::<Tenant>(nubo_model::SUPER_TENANT_ID)
            .await?,
    ))
}

async fn get_tenant(State(s): S, Path(domain): Path<String>) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(
        s.manager
            .get::<Tenant>(nubo_model::SUPER_TENANT_ID, &domain)
            .await?,
    ))
}

async fn search_tenants(
    State(s): S,
    Path(part): Path<String>,
) -> Result<Json<Vec<Tenant>>, ApiError> {
    let all = s
        .manager
        .list::<Tenant>(nubo_model::SUPER_TENANT_ID)
        .await?;
    let needle = part.to_ascii_lowercase();
    Ok(Json(
        all.into_iter()
            .filter(|t| t.tenant_domain.to_ascii_lowercase().contains(&needle))
            .collect(),
    ))
}

async fn activate(State(s): S, Path(domain): Path<String>) -> Result<Json<Message>, ApiError> {
    set_active(&s, &domain, true).await?;
    Ok(Json(Message::success(format!(
        "Tenant activated successfully: [tenant-domain] {domain}"
    ))))
}

/// A deactivated tenant can do nothing (its users cannot authenticate) and its applications get
/// no traffic; their members keep running, so that activating it again routes them at once.
async fn deactivate(State(s): S, Path(domain): Path<String>) -> Result<Json<Message>, ApiError> {
    set_active(&s, &domain, false).await?;
    Ok(Json(Message::success(format!(
        "Tenant deactivated successfully: its applications get no traffic (their members keep running): [tenant-domain] {domain}"
    ))))
}

async fn set_active(s: &AppState, domain: &str, active: bool) -> Result<(), ApiError> {
    let t = s.manager.set_tenant_active(domain, active).await?;
    if let Some(id) = t.tenant_id {
        s.deployments
            .tenant_routing(id, !active)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the tenant is {}, but its applications' routing could not be changed ({e}): try again",
                        if active { "active" } else { "deactivated" }
                    ),
                )
            })?;
    }
    Ok(())
}

/// The platform's secrets: rotating the bus key and the embedded broker's password
/// (docs/distributed.md, "Secrets").
async fn rotate(s: &AppState, which: Rotating) -> Result<Json<Message>, ApiError> {
    s.manager.rotate(which).await?;
    Ok(Json(Message::success(format!(
        "Rotated: restart every server, then every node and load balancer with the new bus.json, then the members over time; then DELETE /api/platform/{}/previous",
        which.path()
    ))))
}

async fn forget_previous(s: &AppState, which: Rotating) -> Result<Json<Message>, ApiError> {
    if !s.manager.forget_previous(which).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no rotation of {} is under way", which.path()),
        ));
    }
    Ok(Json(Message::success(
        "The previous value is forgotten: restart every process of the platform; members started before the rotation must be restarted first",
    )))
}

async fn rotate_bus_key(State(s): S) -> Result<Json<Message>, ApiError> {
    rotate(&s, Rotating::BusKey).await
}

async fn forget_previous_bus_key(State(s): S) -> Result<Json<Message>, ApiError> {
    forget_previous(&s, Rotating::BusKey).await
}

async fn rotate_broker_password(State(s): S) -> Result<Json<Message>, ApiError> {
    rotate(&s, Rotating::BrokerPassword).await
}

async fn forget_previous_broker_password(State(s): S) -> Result<Json<Message>, ApiError> {
    forget_previous(&s, Rotating::BrokerPassword).await
}

async fn delete_tenant(Path(domain): Path<String>) -> Result<Response, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        format!(
            "tenants are not deleted: deactivate it instead (PUT /api/tenants/deactivate/{domain})"
        ),
    ))
}

// === users (the caller's tenant) ===

async fn add_user(
    State(s): S,
    Extension(p): Extension<Principal>,
    OriginalUri(uri): OriginalUri,
    body: Body,
) -> Result<Response, ApiError> {
    let u = s.manager.add_user(p.tenant_id, &body?).await?;
    let location = format!("{}/{}", uri.path().trim_end_matches('/'), u.user_name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Message::success(format!(
            "User added successfully: [user] {}",
            u.user_name
        ))),
    )
        .into_response())
}

async fn update_user(
    State(s): S,
    Extension(p): Extension<Principal>,
    body: Body,
) -> Result<Json<Message>, ApiError> {
    let u = s.manager.update_user(p.tenant_id, &body?).await?;
    Ok(Json(Message::success(format!(
        "User updated successfully: [user] {}",
        u.user_name
    ))))
}

async fn list_users(
    State(s): S,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(s.manager.list::<User>(p.tenant_id).await?))
}

async fn remove_user(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Message>, ApiError> {
    s.manager.remove_user(p.tenant_id, &name).await?;
    Ok(Json(Message::success(format!(
        "User removed successfully: [user] {name}"
    ))))
}

// === Kubernetes cluster hosts ===

async fn add_minion(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let host = nubo_manager::kubernetes::parse_host(&body?)?;
    let host_id = host.host_id.clone();
    s.manager
        .add_kubernetes_host(p.tenant_id, &id, host)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Message::success(format!(
            "Kubernetes host added successfully: [kub-host] {host_id}"
        ))),
    )
        .into_response())
}

async fn list_hosts(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Vec<KubernetesHost>>, ApiError> {
    let c = s.manager.get::<KubernetesCluster>(p.tenant_id, &id).await?;
    Ok(Json(c.kubernetes_hosts.unwrap_or_default()))
}

async fn get_master(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<KubernetesHost>, ApiError> {
    Ok(Json(
        s.manager
            .get::<KubernetesCluster>(p.tenant_id, &id)
            .await?
            .kubernetes_master,
    ))
}

async fn update_master(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Message>, ApiError> {
    let host = nubo_manager::kubernetes::parse_host(&body?)?;
    s.manager
        .set_kubernetes_master(p.tenant_id, &id, host)
        .await?;
    Ok(Json(Message::success(format!(
        "Kubernetes master updated successfully: [kub-cluster] {id}"
    ))))
}

async fn update_host(
    State(s): S,
    Extension(p): Extension<Principal>,
    body: Body,
) -> Result<Json<Message>, ApiError> {
    let host = nubo_manager::kubernetes::parse_host(&body?)?;
    let host_id = host.host_id.clone();
    if !s.manager.update_kubernetes_host(p.tenant_id, host).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no kubernetes cluster has a host `{host_id}`"),
        ));
    }
    Ok(Json(Message::success(format!(
        "Kubernetes host updated successfully: [kub-host] {host_id}"
    ))))
}

async fn remove_host(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path((id, host_id)): Path<(String, String)>,
) -> Result<Json<Message>, ApiError> {
    if !s
        .manager
        .remove_kubernetes_host(p.tenant_id, &id, &host_id)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("kubernetes cluster `{id}` has no host `{host_id}`"),
        ));
    }
    Ok(Json(Message::success(format!(
        "Kubernetes host removed successfully: [kub-host] {host_id}"
    ))))
}

// === runtime lookups ===

async fn app_network_partitions(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let app = s.manager.get::<Application>(p.tenant_id, &id).await?;
    let mut ids = std::collections::BTreeSet::new();
    for spec in app.clusters() {
        if let Some(dp) = spec.deployment_policy
            && let Ok(policy) = s.manager.get::<DeploymentPolicy>(p.tenant_id, dp).await
        {
            ids.extend(policy.network_partitions.into_iter().map(|n| n.id));
        }
    }
    let mut out = Vec::new();
    for np in ids {
        if let Ok(n) = s
            .manager
            .get::<nubo_model::NetworkPartition>(p.tenant_id, &np)
            .await
        {
            out.push(serde_json::to_value(&n).unwrap_or_default());
        }
    }
    Ok(Json(out))
}

async fn scaling_events(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Vec<nubo_autoscaler::monitor::ScalingEvent>>, ApiError> {
    s.manager.get::<Application>(p.tenant_id, &id).await?;
    let id = nubo_controller::runtime_id(p.tenant_id, &id);
    if let Some(log) = s.scaling.get() {
        return Ok(Json(log.for_application(&id)));
    }
    // No autoscaler in this process (an API-only server, a standby): what the autoscaler persisted.
    nubo_autoscaler::monitor::recorded_for_application(s.manager.store().as_ref(), &id)
        .await
        .map(Json)
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the recorded scaling decisions cannot be read from the store: {e}"),
            )
        })
}

async fn cluster(
    State(s): S,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = s
        .deployments
        .cluster(p.tenant_id, &id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("cluster `{id}` does not exist (is its application deployed?)"),
            )
        })?;
    Ok(Json(serde_json::to_value(&c).unwrap_or_default()))
}

/// The routes, relative to `/api` (and `/api/v4.1`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/tenants",
            post(add_tenant).put(update_tenant).get(list_tenants),
        )
        .route("/tenants/{domain}", get(get_tenant).delete(delete_tenant))
        .route("/tenants/search/{part}", get(search_tenants))
        .route("/tenants/activate/{domain}", put(activate))
        .route("/tenants/deactivate/{domain}", put(deactivate))
        .route("/platform/busKey/rotate", post(rotate_bus_key))
        .route("/platform/busKey/previous", delete(forget_previous_bus_key))
        .route(
            "/platform/brokerPassword/rotate",
            post(rotate_broker_password),
        )
        .route(
            "/platform/brokerPassword/previous",
            delete(forget_previous_broker_password),
        )
        .route("/users", post(add_user).put(update_user).get(list_users))
        .route("/users/{name}", delete(remove_user))
        .route("/kubernetesClusters/{id}/minion", post(add_minion))
        .route("/kubernetesClusters/{id}/hosts", get(list_hosts))
        .route(
            "/kubernetesClusters/{id}/master",
            get(get_master).put(update_master),
        )
        .route("/kubernetesClusters/host", put(update_host))
        .route("/kubernetesClusters/{id}/hosts/{host}", delete(remove_host))
        .route(
            "/applications/{id}/networkPartitions",
            get(app_network_partitions),
        )
        .route("/cluster/{id}", get(cluster))
        .route("/applications/{id}/scalingEvents", get(scaling_events))
}
