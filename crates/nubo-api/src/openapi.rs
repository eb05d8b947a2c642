//! The OpenAPI document, built from the model's schemas and the route table. A test compares it
//! with the checked-in `openapi.json`, so any change to the contract is deliberate.

use std::sync::OnceLock;

use nubo_model::{
    Application, ApplicationPolicy, AutoscalingPolicy, Cartridge, CartridgeGroup, DeploymentPolicy,
    FieldError, Kind, KubernetesCluster, NetworkPartition,
};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ArrayBuilder, ComponentsBuilder, ContentBuilder, InfoBuilder, ObjectBuilder, OpenApi,
    OpenApiBuilder, Paths, Ref, RefOr, Required, ResponseBuilder, Schema, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::artifacts::ENDPOINTS;
use crate::error::Message;

fn schema_name(kind: Kind) -> &'static str {
    match kind {
        Kind::NetworkPartition => "NetworkPartition",
        Kind::DeploymentPolicy => "DeploymentPolicy",
        Kind::AutoscalingPolicy => "AutoscalingPolicy",
        Kind::ApplicationPolicy => "ApplicationPolicy",
        Kind::Cartridge => "Cartridge",
        Kind::CartridgeGroup => "CartridgeGroup",
        Kind::Application => "Application",
        Kind::KubernetesCluster => "KubernetesCluster",
        Kind::Tenant => "Tenant",
        Kind::User => "User",
        Kind::ApplicationSignup => "ApplicationSignup",
        Kind::DomainMapping => "DomainMappings",
    }
}

fn json_content(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn message(desc: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(desc)
        .content(
            "application/json",
            json_content(Ref::from_schema_name("Message")),
        )
        .build()
}

fn op(id: String, summary: String, tag: &str) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .tag(tag)
        .response("401", message("Missing or wrong credentials"))
}

fn id_param(name: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn artifact_paths(paths: &mut Paths, kind: Kind, collection: &str) {
    let schema = schema_name(kind);
    let label = kind.label();
    let body = RequestBodyBuilder::new()
        .content(
            "application/json",
            json_content(Ref::from_schema_name(schema)),
        )
        .required(Some(Required::True))
        .build();
    let base = format!("/api/{collection}");
    let item = format!("/api/{collection}/{{id}}");
    paths.add_path_operation(
        &base,
        vec![HttpMethod::Post],
        op(format!("add_{}", kind.as_str()), format!("Add a {label}"), collection)
            .request_body(Some(body.clone()))
            .response("201", message("Added; `Location` names the new resource"))
            .response("400", message("Invalid: malformed JSON, a repeated key, a missing or wrong field, an unknown reference; `errors` names each field"))
            .response("409", message("An artifact with this id exists"))
            .response("413", message("Body larger than 1 MiB"))
            .build(),
    );
    paths.add_path_operation(
        &base,
        vec![HttpMethod::Put],
        op(
            format!("update_{}", kind.as_str()),
            format!("Replace a {label} (id from the body)"),
            collection,
        )
        .request_body(Some(body))
        .response("200", message("Updated"))
        .response("400", message("Invalid"))
        .response("404", message("No such artifact"))
        .response(
            "409",
            message("Artifacts using it would become invalid; the message names them"),
        )
        .build(),
    );
    paths.add_path_operation(
        &base,
        vec![HttpMethod::Get],
        op(
            format!("list_{}", kind.as_str()),
            format!("List every {label} (an empty list is `[]`)"),
            collection,
        )
        .response(
            "200",
            ResponseBuilder::new()
                .description("The artifacts, ordered by id")
                .content(
                    "application/json",
                    json_content(ArrayBuilder::new().items(Ref::from_schema_name(schema))),
                )
                .build(),
        )
        .build(),
    );
    paths.add_path_operation(
        &item,
        vec![HttpMethod::Get],
        op(
            format!("get_{}", kind.as_str()),
            format!("Get a {label}"),
            collection,
        )
        .parameter(id_param("id"))
        .response(
            "200",
            ResponseBuilder::new()
                .description(format!("The {label}"))
                .content(
                    "application/json",
                    json_content(Ref::from_schema_name(schema)),
                )
                .build(),
        )
        .response("404", message("No such artifact"))
        .build(),
    );
    paths.add_path_operation(
        &item,
        vec![HttpMethod::Delete],
        op(
            format!("remove_{}", kind.as_str()),
            format!("Remove a {label}"),
            collection,
        )
        .parameter(id_param("id"))
        .response("200", message("Removed"))
        .response("404", message("No such artifact"))
        .response("409", message("Still in use; the message names the users"))
        .build(),
    );
}

fn collect<T: ToSchema>(c: ComponentsBuilder) -> ComponentsBuilder {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    c.schema(T::name(), T::schema()).schemas_from_iter(nested)
}

/// A simple operation: path, method, id, summary, tag, responses.
type SimpleOp = (
    &'static str,
    HttpMethod,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The document.
pub fn document() -> OpenApi {
    let mut paths = Paths::new();
    for (kind, collection) in ENDPOINTS {
        artifact_paths(&mut paths, kind, collection);
    }
    paths.add_path_operation(
        "/api/cartridges/filter/{filter}",
        vec![HttpMethod::Get],
        op("filter_cartridges".into(), "Cartridges matching a filter: multi-tenant, single-tenant, load-balancer, provider (?criteria=), category (?criteria=)".into(), "cartridges")
            .parameter(id_param("filter"))
            .response("200", ResponseBuilder::new().description("Matching cartridges").content("application/json", json_content(ArrayBuilder::new().items(Ref::from_schema_name("Cartridge")))).build())
            .response("400", message("Unknown filter"))
            .build(),
    );
    paths.add_path_operation(
        "/api/applications/{id}/deploy/{policy}",
        vec![HttpMethod::Post],
        op(
            "deploy_application".into(),
            "Deploy an application under an application policy".into(),
            "applications",
        )
        .parameter(id_param("id"))
        .parameter(id_param("policy"))
        .response(
            "202",
            message("Deployment started; follow it with the runtime view"),
        )
        .response(
            "400",
            message("The application cannot be deployed under this policy; the message says why"),
        )
        .response("404", message("No such application"))
        .response("409", message("Already deployed"))
        .build(),
    );
    paths.add_path_operation(
        "/api/applications/{id}/undeploy",
        vec![HttpMethod::Post],
        op(
            "undeploy_application".into(),
            "Undeploy an application: drain every member (`?force=true`: terminate at once)".into(),
            "applications",
        )
        .parameter(id_param("id"))
        .parameter(
            ParameterBuilder::new()
                .name("force")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .schema(Some(ObjectBuilder::new().schema_type(Type::Boolean)))
                .build(),
        )
        .response("202", message("Undeployment started"))
        .response("404", message("No such application"))
        .response("409", message("Not deployed"))
        .build(),
    );
    paths.add_path_operation(
        "/api/applications/{id}/runtime",
        vec![HttpMethod::Get],
        op("application_runtime".into(), "The runtime tree: application instances, group instances, cluster instances, members".into(), "applications")
            .parameter(id_param("id"))
            .response("200", ResponseBuilder::new().description("Stratos' ApplicationInfoBean: statuses, addresses, ports, host names, access URLs").build())
            .response("404", message("No such application, or not deployed"))
            .build(),
    );
    paths.add_path_operation(
        "/api/applications/{id}/members",
        vec![HttpMethod::Get],
        op("application_members".into(), "A page of the application's members, flat (Nubo's; the runtime tree has them too): however large the application, a page costs its own size".into(), "applications")
            .parameter(id_param("id"))
            .parameter(
                ParameterBuilder::new()
                    .name("offset")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("Members to skip (clusters in the application's order, members by id) [default: 0]"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))),
            )
            .parameter(
                ParameterBuilder::new()
                    .name("limit")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("Members in the page, 1 to 10,000 [default: 1,000]"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(10_000)))),
            )
            .response("200", ResponseBuilder::new().description("`total`, `offset`, and `members`: each with its application, cluster alias and cluster instance").build())
            .response("400", message("limit out of range"))
            .response("404", message("No such application, or not deployed"))
            .build(),
    );
    paths.add_path_operation(
        "/api/applications/{id}/logs",
        vec![HttpMethod::Get],
        op("application_logs".into(), "The workload output of the application's members (Nubo's): kept by the server for an hour after a member's last line, 256 KiB per member".into(), "applications")
            .parameter(id_param("id"))
            .parameter(
                ParameterBuilder::new()
                    .name("member")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("One member only"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            )
            .parameter(
                ParameterBuilder::new()
                    .name("since")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("Lines since an age (30s, 10m, 2h, 1d) or a time in milliseconds since the epoch"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            )
            .parameter(
                ParameterBuilder::new()
                    .name("tail")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("The last N lines only"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)))),
            )
            .parameter(
                ParameterBuilder::new()
                    .name("follow")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("Keep the answer open: the lines so far, then each as it comes (newline-delimited JSON, `application/x-ndjson`); `{\"skipped\": N}` when the reader was too slow"))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Boolean))),
            )
            .response("200", ResponseBuilder::new().description("`[{\"seq\", \"memberId\", \"atMs\", \"stream\": \"stdout\"|\"stderr\", \"text\"}]`, in the order the server took them").build())
            .response("400", message("since is not an age or a time"))
            .response("404", message("No such application"))
            .build(),
    );
    let simple: &[SimpleOp] = &[
        (
            "/api/tenants",
            HttpMethod::Post,
            "add_tenant",
            "Add a tenant and its admin user (super tenant only)",
            "tenants",
            &[
                ("201", "Added"),
                ("400", "Invalid"),
                ("403", "Not the super tenant"),
                ("409", "Exists"),
            ],
        ),
        (
            "/api/tenants",
            HttpMethod::Put,
            "update_tenant",
            "Update a tenant (super tenant only)",
            "tenants",
            &[("200", "Updated"), ("404", "No such tenant")],
        ),
        (
            "/api/tenants",
            HttpMethod::Get,
            "list_tenants",
            "List tenants (super tenant only)",
            "tenants",
            &[("200", "Tenants")],
        ),
        (
            "/api/tenants/{domain}",
            HttpMethod::Get,
            "get_tenant",
            "Get a tenant",
            "tenants",
            &[("200", "The tenant"), ("404", "No such tenant")],
        ),
        (
            "/api/tenants/{domain}",
            HttpMethod::Delete,
            "delete_tenant",
            "Always refused: deactivate instead",
            "tenants",
            &[("406", "Use deactivate")],
        ),
        (
            "/api/tenants/search/{part}",
            HttpMethod::Get,
            "search_tenants",
            "Tenants whose domain contains a string",
            "tenants",
            &[("200", "Tenants")],
        ),
        (
            "/api/tenants/activate/{domain}",
            HttpMethod::Put,
            "activate_tenant",
            "Activate a tenant",
            "tenants",
            &[("200", "Activated"), ("404", "No such tenant")],
        ),
        (
            "/api/tenants/deactivate/{domain}",
            HttpMethod::Put,
            "deactivate_tenant",
            "Deactivate a tenant: its users can no longer log in",
            "tenants",
            &[("200", "Deactivated"), ("404", "No such tenant")],
        ),
        (
            "/api/users",
            HttpMethod::Post,
            "add_user",
            "Add a user to the caller's tenant (admins only; `credential` is the password)",
            "users",
            &[
                ("201", "Added"),
                ("400", "Invalid"),
                ("403", "Not an admin"),
                ("409", "Exists"),
            ],
        ),
        (
            "/api/users",
            HttpMethod::Put,
            "update_user",
            "Update a user of the caller's tenant",
            "users",
            &[("200", "Updated"), ("404", "No such user")],
        ),
        (
            "/api/users",
            HttpMethod::Get,
            "list_users",
            "Users of the caller's tenant (passwords are never shown)",
            "users",
            &[("200", "Users")],
        ),
        (
            "/api/users/{name}",
            HttpMethod::Delete,
            "remove_user",
            "Remove a user (not the tenant's last admin)",
            "users",
            &[
                ("200", "Removed"),
                ("404", "No such user"),
                ("409", "The last admin"),
            ],
        ),
        (
            "/api/applications/{id}/signup",
            HttpMethod::Post,
            "add_signup",
            "Sign the caller's tenant up to the platform's multi-tenant application `id`, with its artifact repositories (`{artifactRepositories: [{alias, repoUrl, repoUsername, repoPassword}]}`; passwords sealed, never served)",
            "signups",
            &[
                ("201", "Signed up"),
                ("400", "Invalid"),
                ("404", "No such multi-tenant application"),
                ("409", "Signed up already"),
            ],
        ),
        (
            "/api/applications/{id}/signup",
            HttpMethod::Get,
            "get_signup",
            "The caller's tenant's signup (without passwords)",
            "signups",
            &[("200", "The signup"), ("404", "Not signed up")],
        ),
        (
            "/api/applications/{id}/signup",
            HttpMethod::Delete,
            "remove_signup",
            "Remove the caller's tenant's signup, and its domain mappings for the application",
            "signups",
            &[("200", "Removed"), ("404", "Not signed up")],
        ),
        (
            "/api/applications/{id}/signup/{tenantDomain}",
            HttpMethod::Post,
            "add_signup_for",
            "The platform's administrator signs a tenant up",
            "signups",
            &[
                ("201", "Signed up"),
                ("404", "No such tenant or application"),
            ],
        ),
        (
            "/api/applications/{id}/signup/{tenantDomain}",
            HttpMethod::Delete,
            "remove_signup_for",
            "The platform's administrator removes a tenant's signup",
            "signups",
            &[("200", "Removed"), ("404", "No such signup")],
        ),
        (
            "/api/applications/{id}/domainMappings",
            HttpMethod::Post,
            "add_domain_mappings",
            "Map the caller's tenant's domains onto cartridge aliases of an application it signed up to: `{domainMappings: [{cartridgeAlias, domainName, contextPath, certificate, privateKey, redirectHttps}]}` (the last three Nubo's: a PEM certificate chain for the domain and its key, presented by the load balancers over HTTPS, the key sealed and never served; plain HTTP redirected to HTTPS); a domain is mapped once across the platform, and the platform's own host names cannot be mapped (409)",
            "signups",
            &[
                ("201", "Mapped"),
                ("400", "Invalid"),
                ("409", "Mapped already, or a host name of the platform"),
            ],
        ),
        (
            "/api/applications/{id}/domainMappings",
            HttpMethod::Get,
            "list_domain_mappings",
            "The caller's tenant's domain mappings for an application",
            "signups",
            &[("200", "Mappings")],
        ),
        (
            "/api/applications/{id}/domainMappings/{domainName}",
            HttpMethod::Delete,
            "remove_domain_mapping",
            "Remove one of the caller's tenant's domain mappings",
            "signups",
            &[("200", "Removed"), ("404", "No such mapping of the tenant")],
        ),
        (
            "/api/applications/{id}/domainMappings/{domainName}/certificate",
            HttpMethod::Put,
            "set_domain_certificate",
            "Put a certificate on one of the caller's tenant's mapped domains, replacing any: `{certificate, privateKey}` (PEM; the chain's first certificate must be valid for the domain and current, the key its own). The key is sealed and never served; the load balancers present the certificate to HTTPS clients naming the domain",
            "signups",
            &[
                (
                    "200",
                    "The mapping, with its certificate's fingerprint and dates",
                ),
                (
                    "400",
                    "Not a certificate for the domain, or not its key (the field and why)",
                ),
                ("404", "No such mapping of the tenant"),
            ],
        ),
        (
            "/api/applications/{id}/domainMappings/{domainName}/certificate",
            HttpMethod::Delete,
            "remove_domain_certificate",
            "Remove a mapped domain's certificate (the load balancers' default one is presented for it)",
            "signups",
            &[
                ("200", "Removed"),
                ("404", "No such mapping, or no certificate"),
            ],
        ),
        (
            "/api/applications/{id}/domainMappings/{domainName}/acme-challenges/{token}",
            HttpMethod::Put,
            "set_acme_challenge",
            "Answer an ACME HTTP-01 challenge for one of the caller's tenant's mapped domains: the body is the key authorization (`<token>.<thumbprint>`, as text or `{keyAuthorization}`); the load balancers answer `GET /.well-known/acme-challenge/{token}` for the domain with it, over plain HTTP too, for an hour. Then put the certificate obtained with `PUT …/certificate`",
            "signups",
            &[
                ("200", "Answered"),
                (
                    "400",
                    "Not a token or key authorization (the field and why)",
                ),
                ("404", "No such mapping of the tenant"),
            ],
        ),
        (
            "/api/applications/{id}/domainMappings/{domainName}/acme-challenges/{token}",
            HttpMethod::Delete,
            "remove_acme_challenge",
            "Stop answering an ACME challenge",
            "signups",
            &[
                ("200", "Removed"),
                ("404", "No such mapping, or no such challenge"),
            ],
        ),
        (
            "/api/quotas/{domain}",
            HttpMethod::Put,
            "set_quota",
            "Set a tenant's quotas: `{applications, instances}` (absent or null: no limit). Beyond `applications` an application is refused; beyond `instances` a deploy is refused and the autoscaler holds (decision `AtQuota`)",
            "quotas",
            &[
                ("200", "The quotas"),
                ("404", "No such tenant"),
                ("403", "Not the platform's administrator"),
            ],
        ),
        (
            "/api/quotas/{domain}",
            HttpMethod::Get,
            "get_quota",
            "A tenant's quotas",
            "quotas",
            &[("200", "The quotas"), ("404", "No such tenant")],
        ),
        (
            "/api/quota",
            HttpMethod::Get,
            "own_quota",
            "The caller's tenant's quotas and what it uses: `{applications: {limit, used}, instances: {limit, used}}`",
            "quotas",
            &[("200", "Quotas and use")],
        ),
        (
            "/api/usage",
            HttpMethod::Get,
            "usage",
            "Metering: instance-seconds per tenant, application and cartridge, from each member's creation to its end (the live ones until now); `?application=ID`, and `?tenant=ID` for the platform's administrator (a tenant's admin reads its own)",
            "usage",
            &[
                (
                    "200",
                    "`{asOf, usage: [{tenantId, applicationId, cartridge, instanceSeconds, instanceMs, liveMembers, endedMembers}], total}`",
                ),
                ("403", "Not an admin"),
            ],
        ),
        (
            "/api/audit",
            HttpMethod::Get,
            "audit_log",
            "The audit log: every change through the API (who, how proved, from where, method, path, status), oldest first; `?after=SEQ&limit=1-1000&user=NAME`. A tenant's admin reads its tenant's, the platform's administrator every tenant's",
            "audit",
            &[("200", "Entries"), ("403", "Not an admin")],
        ),
        (
            "/api/login",
            HttpMethod::Post,
            "login",
            "A session: a bearer token for the Basic credentials given, for `expiresIn` seconds (optional body; at most the server's --session-ttl, 12 h by default)",
            "session",
            &[
                (
                    "201",
                    "`{token, tokenType, expiresIn, expires, id, user, tenantId}`",
                ),
                ("401", "Wrong credentials"),
                ("403", "Called with a token, not a password"),
            ],
        ),
        (
            "/api/logout",
            HttpMethod::Post,
            "logout",
            "End the session whose token authenticates the call",
            "session",
            &[("200", "Logged out"), ("400", "Not a session's token")],
        ),
        (
            "/api/session",
            HttpMethod::Get,
            "session",
            "Who the caller is: user, tenant, role, and how it proved itself (password, session, API token)",
            "session",
            &[("200", "The caller")],
        ),
        (
            "/api/tokens",
            HttpMethod::Post,
            "create_token",
            "An API token for automation: `{name, scope: write|read, expiresInDays: 1-366 (90)}`; the token is shown once",
            "session",
            &[
                ("201", "The token and its listing"),
                ("400", "Invalid"),
                ("403", "Called with an API token"),
                ("409", "Too many tokens"),
            ],
        ),
        (
            "/api/tokens",
            HttpMethod::Get,
            "list_tokens",
            "The caller's tokens (a tenant admin: the tenant's), never their secrets",
            "session",
            &[("200", "Tokens")],
        ),
        (
            "/api/tokens/{id}",
            HttpMethod::Delete,
            "revoke_token",
            "Revoke a token (one's own; a tenant admin: any of the tenant's)",
            "session",
            &[("200", "Revoked"), ("404", "No such token")],
        ),
        (
            "/api/kubernetesClusters/{id}/minion",
            HttpMethod::Post,
            "add_kubernetes_host",
            "Add a host to a Kubernetes cluster",
            "kubernetesClusters",
            &[
                ("201", "Added"),
                ("404", "No such cluster"),
                ("409", "Host exists"),
            ],
        ),
        (
            "/api/kubernetesClusters/{id}/hosts",
            HttpMethod::Get,
            "list_kubernetes_hosts",
            "Hosts of a Kubernetes cluster",
            "kubernetesClusters",
            &[("200", "Hosts"), ("404", "No such cluster")],
        ),
        (
            "/api/kubernetesClusters/{id}/master",
            HttpMethod::Get,
            "get_kubernetes_master",
            "The master of a Kubernetes cluster",
            "kubernetesClusters",
            &[("200", "The master"), ("404", "No such cluster")],
        ),
        (
            "/api/kubernetesClusters/{id}/master",
            HttpMethod::Put,
            "update_kubernetes_master",
            "Replace the master of a Kubernetes cluster",
            "kubernetesClusters",
            &[("200", "Updated"), ("404", "No such cluster")],
        ),
        (
            "/api/kubernetesClusters/host",
            HttpMethod::Put,
            "update_kubernetes_host",
            "Replace a host (found by hostId)",
            "kubernetesClusters",
            &[("200", "Updated"), ("404", "No such host")],
        ),
        (
            "/api/kubernetesClusters/{id}/hosts/{host}",
            HttpMethod::Delete,
            "remove_kubernetes_host",
            "Remove a host",
            "kubernetesClusters",
            &[("200", "Removed"), ("404", "No such host")],
        ),
        (
            "/api/applications/{id}/networkPartitions",
            HttpMethod::Get,
            "application_network_partitions",
            "The network partitions of an application's deployment policies",
            "applications",
            &[
                ("200", "Network partitions"),
                ("404", "No such application"),
            ],
        ),
        (
            "/api/applications/{id}/scalingEvents",
            HttpMethod::Get,
            "scaling_events",
            "The autoscaler's recent decisions for an application, each with the factors' predictions, requirements and thresholds",
            "applications",
            &[
                ("200", "Decisions, oldest first"),
                ("404", "No such application"),
            ],
        ),
        (
            "/api/cluster/{id}",
            HttpMethod::Get,
            "get_cluster",
            "A cluster of the topology: members, host names, instances",
            "applications",
            &[("200", "The cluster"), ("404", "No such cluster")],
        ),
        (
            "/api/mock-iaas/status",
            HttpMethod::Get,
            "mock_status",
            "The mock IaaS: instance count and its clock",
            "mock-iaas",
            &[("200", "Running"), ("404", "The mock IaaS is not enabled")],
        ),
        (
            "/api/mock-iaas/instances",
            HttpMethod::Get,
            "list_mock_instances",
            "Mock instances (Stratos' MockInstanceMetadata and context)",
            "mock-iaas",
            &[
                ("200", "Instances"),
                ("404", "The mock IaaS is not enabled"),
            ],
        ),
        (
            "/api/mock-iaas/instances/{id}",
            HttpMethod::Get,
            "get_mock_instance",
            "One mock instance, with its payload",
            "mock-iaas",
            &[("200", "The instance"), ("404", "No such instance")],
        ),
        (
            "/api/mock-iaas/instances/{id}",
            HttpMethod::Delete,
            "delete_mock_instance",
            "Makes a mock instance vanish without a word (its member is then found faulty and replaced)",
            "mock-iaas",
            &[("200", "Gone"), ("404", "No such instance")],
        ),
        (
            "/api/mock-iaas/clock",
            HttpMethod::Post,
            "advance_mock_clock",
            "Moves the mock IaaS's clock forward: {\"advanceSeconds\": N}",
            "mock-iaas",
            &[("200", "The clock now"), ("400", "Not a forward move")],
        ),
        (
            "/api/mock-iaas/failures",
            HttpMethod::Post,
            "inject_mock_failures",
            "The next starts of a cartridge type fail: {\"cartridgeType\": T, \"failNextStarts\": N}",
            "mock-iaas",
            &[("200", "Armed"), ("404", "The mock IaaS is not enabled")],
        ),
        (
            "/api/platform/busKey/rotate",
            HttpMethod::Post,
            "rotate_bus_key",
            "Rotate the platform's bus key: a new key signs from each process's next start; the previous one is still accepted until it is forgotten (super tenant's admin)",
            "platform",
            &[
                ("200", "Rotated: restart every process of the platform"),
                ("409", "A rotation is under way"),
            ],
        ),
        (
            "/api/platform/busKey/previous",
            HttpMethod::Delete,
            "forget_previous_bus_key",
            "End a rotation of the bus key: the previous key is no longer accepted from each process's next start (super tenant's admin)",
            "platform",
            &[
                ("200", "Forgotten: restart every process of the platform"),
                ("404", "No rotation under way"),
            ],
        ),
        (
            "/api/platform/brokerPassword/rotate",
            HttpMethod::Post,
            "rotate_broker_password",
            "Rotate the embedded broker's password: a new one is used from each process's next start; the previous one is still accepted until it is forgotten (super tenant's admin)",
            "platform",
            &[
                ("200", "Rotated: restart every process of the platform"),
                ("409", "A rotation is under way"),
            ],
        ),
        (
            "/api/platform/brokerPassword/previous",
            HttpMethod::Delete,
            "forget_previous_broker_password",
            "End a rotation of the embedded broker's password: the previous one is refused from the broker's next start (super tenant's admin)",
            "platform",
            &[
                ("200", "Forgotten: restart every process of the platform"),
                ("404", "No rotation under way"),
            ],
        ),
        (
            "/api/cartridges/{id}/filter/{filter}",
            HttpMethod::Get,
            "filter_cartridge",
            "A cartridge if it matches a filter",
            "cartridges",
            &[
                ("200", "The cartridge"),
                ("404", "No such cartridge, or no match"),
            ],
        ),
    ];
    for (path, method, id, summary, tag, responses) in simple.iter().cloned() {
        let mut o = op(id.into(), summary.into(), tag);
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            o = o.parameter(id_param(seg.trim_matches(|c| c == '{' || c == '}')));
        }
        for (code, desc) in responses {
            o = o.response(*code, message(desc));
        }
        paths.add_path_operation(path, vec![method], o.build());
    }
    metadata_paths(&mut paths);
    paths.add_path_operation(
        "/api/repo/notify",
        vec![HttpMethod::Post],
        op(
            "repo_notify".into(),
            "A repository changed (Stratos' webhook; GitHub's and GitLab's push payloads too): the clusters it proves are updated, member after member".into(),
            "applications",
        )
        .description(Some(
            "Authenticated by a tenant admin's Basic credentials (the tenant's applications), by GitHub's `X-Hub-Signature-256` or by GitLab's `X-Gitlab-Token`, checked against the `webhookSecret` of each deployed cluster whose `artifactRepository.repoUrl` the payload names (`repository.url`, `clone_url`, `git_http_url`, …).",
        ))
        .security(SecurityRequirement::new("basic", Vec::<String>::new()))
        .security(SecurityRequirement::default())
        .request_body(Some(
            RequestBodyBuilder::new()
                .content(
                    "application/json",
                    json_content(ObjectBuilder::new().schema_type(Type::Object)),
                )
                .required(Some(Required::True))
                .build(),
        ))
        .response("200", message("A GitHub event other than a push (a ping), proved"))
        .response("202", message("Update started (or nothing of the caller's uses the repository)"))
        .response("400", message("Not JSON, or no repository named"))
        .response("403", message("Not an admin of the tenant"))
        .build(),
    );
    paths.add_path_operation(
        "/agent/api/repository",
        vec![HttpMethod::Get],
        op(
            "agent_repository".into(),
            "The calling member's artifact repository and its credentials (its agent's, with the member's token only)".into(),
            "agent",
        )
        .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
        .response(
            "200",
            ResponseBuilder::new()
                .description("`{\"repoUrl\", \"repoUsername\", \"repoPassword\"}` (the last two for a private repository)")
                .build(),
        )
        .response("404", message("The member's cartridge has no repository"))
        .build(),
    );
    paths.add_path_operation(
        "/agent/api/members",
        vec![HttpMethod::Get],
        op(
            "agent_members".into(),
            "The calling member's application's members, which its member-event hooks are given (its agent's, with the member's token only)".into(),
            "agent",
        )
        .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The members, as rows of `GET /api/applications/{id}/members`")
                .build(),
        )
        .build(),
    );
    paths.add_path_operation(
        "/api/init",
        vec![HttpMethod::Get],
        op("init".into(), "Check credentials".into(), "platform")
            .response("200", message("Authenticated"))
            .build(),
    );
    paths.add_path_operation(
        "/api/iaasProviders",
        vec![HttpMethod::Get],
        op(
            "iaas_providers".into(),
            "The IaaS providers network partitions may use".into(),
            "platform",
        )
        .response(
            "200",
            ResponseBuilder::new()
                .description("`{\"iaasProviders\": [...]}`")
                .build(),
        )
        .build(),
    );
    paths.add_path_operation(
        "/health",
        vec![HttpMethod::Get],
        OperationBuilder::new()
            .operation_id(Some("health"))
            .summary(Some("Liveness and store health (no authentication)"))
            .tag("platform")
            .response(
                "200",
                ResponseBuilder::new()
                    .description("Healthy: `{\"status\": \"ok\", \"store\": \"sqlite\"|\"postgres\", \"controller\": \"local\"|\"remote\"|\"leader\"|\"standby\"|\"none\"}`, with `\"leader\"` (the holder of the controller lease) on a standby")
                    .build(),
            )
            .response(
                "503",
                ResponseBuilder::new()
                    .description("The store is unavailable")
                    .build(),
            )
            .build(),
    );
    paths.add_path_operation(
        "/metrics",
        vec![HttpMethod::Get],
        op(
            "metrics".into(),
            "Prometheus metrics (OpenMetrics text)".into(),
            "platform",
        )
        .response("200", ResponseBuilder::new().description("Metrics").build())
        .build(),
    );
    let mut components = ComponentsBuilder::new()
        .schema("Message", Message::schema())
        .schema("FieldError", FieldError::schema())
        .schema("Property", nubo_manager::metadata::Property::schema())
        .security_scheme(
            "basic",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)),
        )
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    components = collect::<NetworkPartition>(components);
    components = collect::<DeploymentPolicy>(components);
    components = collect::<AutoscalingPolicy>(components);
    components = collect::<ApplicationPolicy>(components);
    components = collect::<Cartridge>(components);
    components = collect::<CartridgeGroup>(components);
    components = collect::<Application>(components);
    components = collect::<KubernetesCluster>(components);
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Nubo API")
                .version("4.1")
                .description(Some(
                    "The Stratos 4.1 REST API as served by Nubo, under /api and /api/v4.1, and Stratos' metadata service under /metadata/api. Every route but /health needs HTTP Basic credentials; the metadata service also takes a member's token (its payload's TOKEN) as a bearer token.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components.build()))
        .security(Some(vec![SecurityRequirement::new("basic", Vec::<String>::new())]))
        .build()
}

/// The metadata service (Stratos' `/metadata/api`): a member's bearer token or a user's Basic
/// credentials.
fn metadata_paths(paths: &mut Paths) {
    let property = || json_content(Ref::from_schema_name("Property"));
    let properties = || json_content(ArrayBuilder::new().items(Ref::from_schema_name("Property")));
    let with_params = |mut o: OperationBuilder, path: &str| {
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            o = o.parameter(id_param(seg.trim_matches(|c| c == '{' || c == '}')));
        }
        o.security(SecurityRequirement::new("basic", Vec::<String>::new()))
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .response(
                "403",
                message("A member of another application, or a user who may not write"),
            )
    };
    let reads: &[(&str, &str, &str, bool)] = &[
        (
            "/metadata/api/applications/{app}/properties",
            "metadata_application_properties",
            "The application's properties",
            true,
        ),
        (
            "/metadata/api/applications/{app}/properties/{name}",
            "metadata_application_property",
            "One key of the application's properties",
            false,
        ),
        (
            "/metadata/api/applications/{app}/clusters/{cluster}/properties",
            "metadata_cluster_properties",
            "A cluster's properties",
            true,
        ),
        (
            "/metadata/api/applications/{app}/cluster/{cluster}/properties/{name}",
            "metadata_cluster_property",
            "One key of a cluster's properties (Stratos' path)",
            false,
        ),
        (
            "/metadata/api/applications/{app}/clusters/{cluster}/properties/{name}",
            "metadata_cluster_property_plural",
            "One key of a cluster's properties",
            false,
        ),
    ];
    for (path, id, summary, many) in reads.iter().copied() {
        let ok = ResponseBuilder::new()
            .description("Found")
            .content(
                "application/json",
                if many { properties() } else { property() },
            )
            .build();
        let o = with_params(op(id.into(), summary.into(), "metadata"), path)
            .response("200", ok)
            .response("404", message("No such application, or no such key"));
        paths.add_path_operation(path, vec![HttpMethod::Get], o.build());
    }
    for (path, id, summary) in [
        (
            "/metadata/api/applications/{app}/properties",
            "metadata_add_application_property",
            "Add values to a key of the application's (kept values stay, repeats are skipped)",
        ),
        (
            "/metadata/api/applications/{app}/clusters/{cluster}/properties",
            "metadata_add_cluster_property",
            "Add values to a key of a cluster's",
        ),
    ] {
        let o = with_params(op(id.into(), summary.into(), "metadata"), path)
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", property())
                    .required(Some(Required::True))
                    .build(),
            ))
            .response("201", message("Added"))
            .response(
                "400",
                message("Not a property, or beyond a bound (the field says which)"),
            )
            .response("404", message("No such application"));
        paths.add_path_operation(path, vec![HttpMethod::Post], o.build());
    }
    for (path, id, summary) in [
        (
            "/metadata/api/applications/{app}/properties",
            "metadata_delete_application",
            "Delete all of the application's metadata",
        ),
        (
            "/metadata/api/applications/{app}/properties/{name}",
            "metadata_delete_property",
            "Delete a key of the application's properties",
        ),
        (
            "/metadata/api/applications/{app}/properties/{name}/value/{value}",
            "metadata_delete_value",
            "Delete one value of a key",
        ),
    ] {
        let o = with_params(op(id.into(), summary.into(), "metadata"), path)
            .response("200", message("Deleted"))
            .response("404", message("No such application, key or value"));
        paths.add_path_operation(path, vec![HttpMethod::Delete], o.build());
    }
}

/// The document as pretty JSON (computed once).
pub fn document_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_json::to_string_pretty(&document())
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    })
    .clone()
}

#[cfg(test)]
mod tests {
    /// The checked-in contract (`openapi.json`), read from the crate's directory at run time.
    /// Regenerate with `NUBO_BLESS=1 cargo test -p nubo-api openapi`.
    #[test]
    fn openapi_document_matches_the_checked_in_copy() {
        let current = super::document_json() + "\n";
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let path = std::path::Path::new(&dir).join("openapi.json");
        if std::env::var_os("NUBO_BLESS").is_some() {
            std::fs::write(&path, &current).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            current == checked_in,
            "the OpenAPI document changed; review the difference and run `NUBO_BLESS=1 cargo test -p nubo-api openapi` to accept it"
        );
    }
}
