//! The OpenAPI 3.1 document, generated from the wire types and the
//! handlers' annotations. `heliotrope openapi` prints it; the committed copy
//! is `api-spec/openapi.json`, and a test fails when the two differ.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{executors, groups, links, ops, sites, tokens, vms};

#[derive(OpenApi)]
#[openapi(
    info(title = "Heliotrope", description = "Moves VMs between datacenters to follow cheap, low-carbon electricity. \
        Every /v1 route needs `Authorization: Bearer <token>`; roles nest viewer < planner < admin, and executor \
        stands apart."),
    paths(
        sites::list_sites, sites::create_site, sites::get_site, sites::replace_site, sites::delete_site,
        links::list_links, links::create_link, links::get_link, links::replace_link, links::delete_link,
        vms::list_vms, vms::create_vm, vms::get_vm, vms::replace_vm, vms::delete_vm,
        groups::list_groups, groups::create_group, groups::get_group, groups::replace_group, groups::delete_group,
        executors::list_executors, executors::get_executor,
        tokens::list_tokens, tokens::create_token, tokens::get_token, tokens::revoke_token,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// The document as committed: pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut json = ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises");
    json.push('\n');
    json
}
