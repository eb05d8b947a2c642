//! Stratos' application signups (`/applications/{id}/signup`, and `…/signup/{tenantDomain}` for
//! the platform's administrator acting for a tenant) and domain mappings
//! (`/applications/{id}/domainMappings`).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
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
async fn platform_hosts(s: &AppState) -> Result<Vec<String>, ApiError> {
    match s.controller.as_ref() {
        Some(c) => Ok(c.host_names().await?),
        None => Ok(Vec::new()),
    }
}

async fn add_mappings(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = body?;
    let taken = platform_hosts(&s).await?;
    let made = s
        .manager
        .add_domain_mappings(p.tenant_id, &id, &body, &taken)
        .await?;
    push_routes(&s).await;
    let with_tls: Vec<String> = made
        .iter()
        .filter(|m| m.tls.is_some())
        .map(|m| m.domain_name.clone())
        .collect();
    push_certificates(&s, &with_tls).await;
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
    push_certificates(&s, std::slice::from_ref(&domain)).await;
    Ok(Json(
        json!({"status": "success", "message": format!("Domain mapping removed successfully: [domain-name] {domain}")}),
    ))
}

async fn set_certificate(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((id, domain)): Path<(String, String)>,
    body: Body,
) -> Result<Json<nubo_manager::signups::MappedDomain>, ApiError> {
    let m = s
        .manager
        .set_domain_certificate(p.tenant_id, &id, &domain, &body?)
        .await?;
    push_certificates(&s, std::slice::from_ref(&domain)).await;
    Ok(Json(m))
}

async fn remove_certificate(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((id, domain)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.manager
        .remove_domain_certificate(p.tenant_id, &id, &domain)
        .await?;
    push_certificates(&s, std::slice::from_ref(&domain)).await;
    Ok(Json(
        json!({"status": "success", "message": format!("Certificate removed: [domain-name] {domain}")}),
    ))
}

async fn set_acme_challenge(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((id, domain, token)): Path<(String, String, String)>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body?;
    // The key authorization as text, or `{"keyAuthorization": "…"}`.
    let ka = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) => v
            .get("keyAuthorization")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&body).into_owned(),
    };
    s.manager
        .set_acme_challenge(p.tenant_id, &id, &domain, &token, &ka)
        .await?;
    push_routes(&s).await;
    Ok(Json(json!({"status": "success", "message": format!(
        "ACME challenge {token} answered at http://{domain}/.well-known/acme-challenge/{token} for an hour"
    )})))
}

async fn remove_acme_challenge(
    State(s): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Path((id, domain, token)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.manager
        .remove_acme_challenge(p.tenant_id, &id, &domain, &token)
        .await?;
    push_routes(&s).await;
    Ok(Json(
        json!({"status": "success", "message": format!("ACME challenge {token} removed")}),
    ))
}

/// How many certificates go in one message of a complete set: a chain and its key are a few
/// KiB (up to about 10 with intermediates), sealed a third more, and NATS takes 1 MiB a message
/// by default.
const CERTIFICATES_PER_MESSAGE: usize = 32;

fn certificate_event(
    c: nubo_manager::certificates::DomainCertificate,
) -> nubo_events::TlsCertificate {
    nubo_events::TlsCertificate {
        domain: c.domain,
        certificate: c.certificate,
        private_key: c.private_key,
    }
}

/// Tells the load balancers the certificates of `domains` as they are now (a domain without
/// one, or no longer mapped, loses its own). Sealed on the bus; a failure is logged, and the
/// load balancers get the whole set again when they start.
pub async fn push_certificates(s: &AppState, domains: &[String]) {
    let Some(bus) = s.bus() else {
        return;
    };
    if domains.is_empty() {
        return;
    }
    let mut certificates = Vec::new();
    let mut removed = Vec::new();
    for d in domains {
        match s.manager.domain_certificate(d).await {
            Ok(Some(c)) => certificates.push(certificate_event(c)),
            Ok(None) => removed.push(d.clone()),
            Err(e) => tracing::warn!(domain = %d, error = %e, "cannot read a domain's certificate"),
        }
    }
    let event = nubo_events::Event::TlsCertificates {
        complete: false,
        certificates,
        removed,
    };
    if let Err(e) = bus.publish(&event).await {
        tracing::warn!(error = %e, "the load balancers could not be given the certificates yet");
    }
}

/// Gives the load balancers every domain's certificate, replacing what they hold (in answer
/// to a `TlsCertificatesRequest`, and at a server's start): several messages for many.
pub async fn push_all_certificates(s: &AppState) {
    let Some(bus) = s.bus() else {
        return;
    };
    let all = match s.manager.domain_certificates().await {
        Ok(all) => all,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the domains' certificates");
            return;
        }
    };
    let mut all = all.into_iter().map(certificate_event).peekable();
    let mut complete = true;
    while complete || all.peek().is_some() {
        let certificates: Vec<_> = all.by_ref().take(CERTIFICATES_PER_MESSAGE).collect();
        let event = nubo_events::Event::TlsCertificates {
            complete,
            certificates,
            removed: Vec::new(),
        };
        complete = false;
        if let Err(e) = bus.publish(&event).await {
            tracing::warn!(error = %e, "the load balancers could not be given the certificates yet");
            return;
        }
    }
}

/// Answers the load balancers' requests for the certificates, as long as the bus is open.
pub async fn serve_certificates(s: Arc<AppState>) {
    let Some(bus) = s.bus().cloned() else {
        return;
    };
    let mut requests = match bus.subscribe(nubo_events::Category::Initializer).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot take the load balancers' requests for certificates: HTTPS presents default certificates only");
            return;
        }
    };
    push_all_certificates(&s).await;
    while let Some(e) = requests.recv().await {
        if matches!(e, nubo_events::Event::TlsCertificatesRequest {}) {
            push_all_certificates(&s).await;
        }
    }
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
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let routes = mappings
        .into_iter()
        .map(|m| nubo_events::DomainRoute {
            tenant_domain: nubo_manager::quotas::domain_in(&domains, m.tenant_id),
            domain: m.domain_name,
            context_path: m.context_path,
            application_id: nubo_controller::runtime_id(m.application_tenant_id, &m.application_id),
            alias: m.cartridge_alias,
            tenant_id: m.tenant_id,
            redirect_https: m.redirect_https,
            acme_challenges: m
                .acme_challenges
                .into_iter()
                .filter(|(_, (_, until))| *until > now_ms)
                .map(|(token, (ka, _))| (token, ka))
                .collect(),
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
        .route(
            "/applications/{id}/domainMappings/{domainName}/certificate",
            put(set_certificate).delete(remove_certificate),
        )
        .route(
            "/applications/{id}/domainMappings/{domainName}/acme-challenges/{token}",
            put(set_acme_challenge).delete(remove_acme_challenge),
        )
}
