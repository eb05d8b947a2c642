//! Stratos' application signups (`/applications/{id}/signup`, and `…/signup/{tenantDomain}` for
//! the platform's administrator acting for a tenant) and domain mappings
//! (`/applications/{id}/domainMappings`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Extension, Json, Router};
use http::StatusCode;
use nubo_manager::Principal;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;

type Body = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

async fn add(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let signup = s.manager.add_signup(p.tenant_id, &id, &body?).await?;
    push_routes(&s).await;
    Ok((StatusCode::CREATED, Json(signup)).into_response())
}

async fn get(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<nubo_model::ApplicationSignup>, ApiError> {
    Ok(Json(s.manager.signup(p.tenant_id, &id).await?))
}

async fn remove(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.manager.remove_signup(p.tenant_id, &id).await?;
    push_routes(&s).await;
    Ok(Json(
        json!({"status": "success", "message": format!("Application signup removed successfully: [application-id] {id}")}),
    ))
}

async fn add_for(
    State(s): State<Arc<AppState>>,
    Path((id, domain)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = s.manager.tenant_id_of(&domain).await?;
    let signup = s.manager.add_signup(tenant, &id, &body?).await?;
    push_routes(&s).await;
    Ok((StatusCode::CREATED, Json(signup)).into_response())
}

async fn remove_for(
    State(s): State<Arc<AppState>>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tenant = s.manager.tenant_id_of(&domain).await?;
    s.manager.remove_signup(tenant, &id).await?;
    push_routes(&s).await;
    Ok(Json(
        json!({"status": "success", "message": format!("Application signup removed successfully: [application-id] {id} [tenant] {domain}")}),
    ))
}

/// The platform's own host names (every deployed cluster's), which no tenant may map.
async fn platform_hosts(s: &AppState) -> Vec<String> {
    match s.controller.as_ref() {
        Some(c) => c.state().await.map_or_else(Vec::new, |state| {
            state
                .topology
                .clusters
                .values()
                .flat_map(|c| c.host_names.iter().cloned())
                .collect()
        }),
        None => Vec::new(),
    }
}

async fn add_mappings(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = body?;
    let taken = platform_hosts(&s).await;
    let made = s
        .manager
        .add_domain_mappings(p.tenant_id, &id, &body, &taken)
        .await?;
    push_routes(&s).await;
    Ok((StatusCode::CREATED, Json(json!({"domainMappings": made}))).into_response())
}

async fn list_mappings(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = s.manager.domain_mappings(p.tenant_id, &id).await?;
    Ok(Json(json!({"domainMappings": list})))
}

async fn remove_mapping(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.manager
        .remove_domain_mapping(p.tenant_id, &id, &domain)
        .await?;
    push_routes(&s).await;
    Ok(Json(
        json!({"status": "success", "message": format!("Domain mapping removed successfully: [domain-name] {domain}")}),
    ))
}

/// Gives the controller every domain mapping and signup of the platform, for the load balancers
/// (after each change, and at a server's start). A failure is logged: the mappings are kept, and
/// go out with the next change or start.
pub async fn push_routes(s: &AppState) {
    let Some(control) = s.controller.as_ref() else {
        return;
    };
    let mappings = match s.manager.all_domain_mappings().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the domain mappings");
            return;
        }
    };
    let domains = match s.manager.tenant_domains().await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the tenants");
            return;
        }
    };
    let routes = mappings
        .into_iter()
        .map(|m| nubo_events::DomainRoute {
            tenant_domain: nubo_manager::quotas::domain_in(&domains, m.tenant_id),
            domain: m.domain_name,
            context_path: m.context_path,
            application_id: nubo_controller::runtime_id(m.application_tenant_id, &m.application_id),
            alias: m.cartridge_alias,
            tenant_id: m.tenant_id,
        })
        .collect();
    let signups = match s.manager.all_signups().await {
        Ok(all) => all
            .into_iter()
            .map(|(tenant, application)| nubo_events::TenantSignup {
                // Signups are to the platform's (the super tenant's) applications.
                application_id: nubo_controller::runtime_id(
                    nubo_model::SUPER_TENANT_ID,
                    &application,
                ),
                tenant_id: tenant,
                tenant_domain: nubo_manager::quotas::domain_in(&domains, tenant),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the signups");
            Vec::new()
        }
    };
    if let Err(e) = control.domain_routes(routes, signups).await {
        tracing::warn!(error = %e, "the load balancers could not be given the domain mappings yet");
    }
}

/// The routes, relative to `/api`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/applications/{id}/signup",
            post(add).get(get).delete(remove),
        )
        .route(
            "/applications/{id}/signup/{tenantDomain}",
            post(add_for).delete(remove_for),
        )
        .route(
            "/applications/{id}/domainMappings",
            post(add_mappings).get(list_mappings),
        )
        .route(
            "/applications/{id}/domainMappings/{domainName}",
            delete(remove_mapping),
        )
}
