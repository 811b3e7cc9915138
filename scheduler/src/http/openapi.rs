//! The OpenAPI 3.1 document, generated from the wire types and the
//! handlers' annotations. `heliotrope openapi` prints it; the committed copy
//! is `api-spec/openapi.json`, and a test fails when the two differ.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    dispatch, events, executors, feeds, groups, links, migrations, ops, overview, plans, rebalancer, recoveries,
    session, signals, simulations, sites, tokens, vms,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Heliotrope", description = "Moves VMs between datacenters to follow cheap, low-carbon electricity. \
        Every /v1 route needs `Authorization: Bearer <token>` (or a browser session's cookie from `POST /v1/session`, \
        whose writes also carry `X-CSRF-Token`); roles nest viewer < planner < admin, and executor stands apart."),
    paths(
        sites::list_sites, sites::create_site, sites::get_site, sites::replace_site, sites::delete_site,
        links::list_links, links::create_link, links::get_link, links::replace_link, links::delete_link,
        vms::list_vms, vms::create_vm, vms::get_vm, vms::replace_vm, vms::delete_vm,
        groups::list_groups, groups::create_group, groups::get_group, groups::replace_group, groups::delete_group,
        executors::list_executors, executors::get_executor,
        tokens::list_tokens, tokens::create_token, tokens::get_token, tokens::revoke_token,
        session::sign_in, session::get_session, session::sign_out,
        feeds::list_feeds, feeds::create_feed, feeds::get_feed, feeds::replace_feed, feeds::delete_feed,
        signals::push_signals, signals::get_series, signals::current_signals,
        plans::create_plan, plans::list_plans, plans::get_plan, plans::get_schedule, plans::approve_plan, plans::apply_plan,
        plans::evacuate_site,
        migrations::list_migrations, migrations::get_migration, migrations::cancel_migration,
        migrations::change_migration, events::stream_events, rebalancer::get_rebalancer,
        simulations::create_simulation, simulations::list_simulations, simulations::get_simulation,
        simulations::get_plot,
        dispatch::register_executor, dispatch::heartbeat, dispatch::claim, dispatch::report_progress,
        dispatch::complete_migration, dispatch::recover_migration, dispatch::report_network, dispatch::replication,
        dispatch::restart_outcome,
        recoveries::fail_site, recoveries::site_recovery, recoveries::get_recovery, recoveries::discard_copy,
        overview::get_overview, overview::get_savings,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(heliotrope_api_spec::GroupPolicyKind)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Request bodies whose unknown fields the server refuses (see `extract::ApiJson`).
const CLOSED_SCHEMAS: [&str; 23] = [
    "SiteSpec",
    "Capacity",
    "PowerModel",
    "LinkSpec",
    "VmSpec",
    "GroupSpec",
    "NewToken",
    "FeedSpec",
    "SignalRow",
    "PlanRequest",
    "EvacuationRequest",
    "ExecutorRegistration",
    "ProgressReport",
    "SavedBytes",
    "Completion",
    "RecoveryReport",
    "NetworkReport",
    "MigrationChange",
    "SimulationRequest",
    "SignIn",
    "SiteFailure",
    "RestartOutcome",
    "QuarantineHolding",
];

/// The document as committed: pretty JSON with a trailing newline.
pub fn document() -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serialises");
    close_request_schemas(&mut doc);
    let mut json = serde_json::to_string_pretty(&doc).expect("a JSON value serialises");
    json.push('\n');
    json
}

/// Says in the document what the server enforces: request bodies take no
/// unknown fields (`additionalProperties: false`). The response types that
/// flatten a request type (`Site` = `SiteSpec` + id and timestamps) are
/// inlined first, since a closed schema inside `allOf` would forbid their
/// extra fields.
fn close_request_schemas(doc: &mut serde_json::Value) {
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(|s| s.as_object_mut()) else {
        return;
    };
    let originals = schemas.clone();
    for schema in schemas.values_mut() {
        let Some(parts) = schema.get("allOf").and_then(|a| a.as_array()).cloned() else {
            continue;
        };
        let mut merged = serde_json::json!({"type": "object", "properties": {}, "required": []});
        for part in &parts {
            let part = match part.get("$ref").and_then(|r| r.as_str()) {
                Some(reference) => &originals[reference.trim_start_matches("#/components/schemas/")],
                None => part,
            };
            for (name, property) in part["properties"].as_object().into_iter().flatten() {
                merged["properties"][name] = property.clone();
            }
            for name in part["required"].as_array().into_iter().flatten() {
                merged["required"].as_array_mut().expect("made above").push(name.clone());
            }
        }
        if let Some(description) = schema.get("description").cloned() {
            merged["description"] = description;
        }
        *schema = merged;
    }
    for name in CLOSED_SCHEMAS {
        if let Some(schema) = schemas.get_mut(name) {
            schema["additionalProperties"] = serde_json::Value::Bool(false);
        }
    }
}
