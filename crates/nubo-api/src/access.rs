//! Who may call what: the one place where an endpoint's required role is decided and checked.
//!
//! Roles: the super tenant's admin (the platform's administrator), a tenant's admin, a tenant's
//! user (any non-admin user, the super tenant's included). Every caller acts in its own tenant.
//! The table, as `docs/api.md` writes it:
//!
//! | endpoints | super-tenant admin | tenant admin | tenant user |
//! |---|---|---|---|
//! | `GET` of definitions, runtime, scaling events, `/init`, `/iaasProviders`, `/openapi.json` | yes | yes (own tenant) | yes (own tenant) |
//! | changes to definitions, deploy, undeploy, Kubernetes hosts | yes | yes (own tenant) | no |
//! | a cartridge with a `local` iaasProvider (its `imageId` is a command line run by the platform) | yes | no | no |
//! | `/users`, `/audit` (the audit log), `/usage` (metering) | yes | yes (own tenant) | no |
//! | `/login`, `/logout`, `/session`, `/tokens` (one's own; a tenant admin lists and revokes the tenant's) | yes | yes | yes |
//! | `/tenants`, `/quotas`, `/platform` (the bus key, the broker's password), `/metrics`, `/mock-iaas` | yes | no | no |
//! | `/health` | anyone, unauthenticated | | |

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{Method, StatusCode};
use nubo_manager::{Principal, Role};

use crate::AppState;
use crate::error::ApiError;

/// What an endpoint requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Any authenticated user, in its own tenant.
    User,
    /// An admin of the caller's tenant.
    TenantAdmin,
    /// The super tenant's admin.
    SuperAdmin,
}

impl Access {
    /// Whether `p` has this access.
    pub fn allows(self, p: &Principal) -> bool {
        let admin = p.role == Role::Admin;
        match self {
            Access::User => true,
            Access::TenantAdmin => admin,
            Access::SuperAdmin => admin && p.tenant_id == nubo_model::SUPER_TENANT_ID,
        }
    }

    /// What a caller without this access is told.
    pub fn refusal(self) -> &'static str {
        match self {
            Access::User => "",
            Access::TenantAdmin => {
                "only an admin of the tenant may do this: ask your tenant's admin"
            }
            Access::SuperAdmin => {
                "only the platform's administrator (the super tenant's admin) may do this"
            }
        }
    }
}

/// The access an endpoint requires: `method` on `route`, the route's pattern (`/api/cartridges/{id}`,
/// with or without the `/api/v4.1` prefix).
pub fn required(method: &Method, route: &str) -> Access {
    let path = route
        .strip_prefix("/api/v4.1")
        .or_else(|| route.strip_prefix("/api"))
        .unwrap_or(route);
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    // One's own session and tokens (what a token may do is the manager's to check).
    if under("/tokens") || path == "/login" || path == "/logout" || path == "/session" {
        return Access::User;
    }
    // The platform's administrator signing a tenant up, or off.
    if path.starts_with("/applications/") && path.ends_with("/signup/{tenantDomain}") {
        return Access::SuperAdmin;
    }
    if under("/tenants")
        || under("/quotas")
        || under("/mock-iaas")
        || under("/platform")
        || path == "/metrics"
    {
        Access::SuperAdmin
    } else if under("/users") || under("/audit") || under("/usage") {
        Access::TenantAdmin
    } else if method == Method::GET || method == Method::HEAD {
        Access::User
    } else {
        Access::TenantAdmin
    }
}

/// Refuses a request its caller's role does not allow (403 saying who may), after the caller
/// was authenticated and the route matched.
pub async fn authorize(
    State(_): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let access = required(req.method(), &route);
    let Some(p) = req.extensions().get::<Principal>() else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication required",
        ));
    };
    if !access.allows(p) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, access.refusal()));
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(tenant: i64, admin: bool) -> Principal {
        Principal {
            tenant_id: tenant,
            user: "u".into(),
            role: if admin { Role::Admin } else { Role::User },
        }
    }

    #[test]
    fn the_table() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required(&get, "/api/cartridges"), Access::User);
        assert_eq!(
            required(&get, "/api/v4.1/applications/{id}/runtime"),
            Access::User
        );
        assert_eq!(required(&post, "/api/cartridges"), Access::TenantAdmin);
        assert_eq!(
            required(&post, "/api/applications/{id}/deploy/{policy}"),
            Access::TenantAdmin
        );
        assert_eq!(required(&get, "/api/users"), Access::TenantAdmin);
        assert_eq!(required(&post, "/api/tokens"), Access::User);
        assert_eq!(
            required(&Method::DELETE, "/api/v4.1/tokens/{id}"),
            Access::User
        );
        assert_eq!(required(&post, "/api/login"), Access::User);
        assert_eq!(required(&get, "/api/session"), Access::User);
        assert_eq!(required(&get, "/api/tenants"), Access::SuperAdmin);
        assert_eq!(
            required(&Method::PUT, "/api/v4.1/tenants/activate/{domain}"),
            Access::SuperAdmin
        );
        assert_eq!(
            required(&get, "/api/mock-iaas/instances"),
            Access::SuperAdmin
        );
        assert_eq!(required(&get, "/metrics"), Access::SuperAdmin);
        // A name that merely starts like a guarded one is not guarded by it.
        assert_eq!(required(&get, "/api/tenantsx"), Access::User);
        let (root, super_user, a_admin, a_user) = (
            who(-1234, true),
            who(-1234, false),
            who(1, true),
            who(1, false),
        );
        assert!(Access::SuperAdmin.allows(&root));
        assert!(!Access::SuperAdmin.allows(&super_user));
        assert!(!Access::SuperAdmin.allows(&a_admin));
        assert!(Access::TenantAdmin.allows(&a_admin));
        assert!(!Access::TenantAdmin.allows(&a_user));
        assert!(Access::User.allows(&a_user));
    }
}
