//! Every route against every role: 401 without a valid token, 403 when the
//! role falls short, through otherwise. The route list is checked against
//! the OpenAPI document, so a new route cannot skip this matrix.

use std::collections::BTreeSet;

use heliotrope::db::MIGRATOR;
use heliotrope::http::openapi::ApiDoc;
use heliotrope_api_spec::Role;
use heliotrope_tests::{link, site, spawn_app, vm, ADMIN};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use utoipa::OpenApi;

/// Who may pass a route's check.
#[derive(Clone, Copy)]
enum Need {
    Nobody,
    Role(Role),
    /// As `Role`, except that presenting nothing is an answer too (not signed in), not a 401.
    Asking(Role),
}

struct Route {
    method: Method,
    /// The path as documented (with `{id}`).
    template: &'static str,
    /// The id to put in the path.
    id: i64,
    /// A query string to add.
    query: &'static str,
    body: Option<Value>,
    need: Need,
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn route_by_role_matrix(pool: PgPool) {
    let app = spawn_app(pool).await;
    let s = app.create("/v1/sites", site("A")).await["id"].as_i64().unwrap();
    app.create("/v1/sites", site("B")).await;
    let l = app.create("/v1/links", link("A", "B")).await["links"][0]["id"].as_i64().unwrap();
    let g = app.create("/v1/groups", json!({"name": "g", "policy": {"kind": "colocate", "max_rtt_ms": 5}})).await["id"]
        .as_i64()
        .unwrap();
    let v = app.create("/v1/vms", vm("v", "A")).await["id"].as_i64().unwrap();
    let e: i64 = sqlx::query_scalar(
        "insert into executor (site_id, address, state) values ($1, 'x:1', 'online') returning executor_id",
    )
    .bind(s)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let t = app.create("/v1/tokens", json!({"name": "spare", "role": "viewer"})).await["token"]["id"].as_i64().unwrap();

    let gb_feed = json!({"site": "A", "provider": "gb_carbon_intensity", "signal": "carbon", "area": "national"});
    let f = app.create("/v1/feeds", gb_feed.clone()).await["id"].as_i64().unwrap();
    let (view, plan, admin) = (Need::Role(Role::Viewer), Need::Role(Role::Planner), Need::Role(Role::Admin));
    let exec = Need::Role(Role::Executor);
    let r = |method: Method, template: &'static str, id: i64, body: Option<Value>, need: Need| Route {
        method,
        template,
        id,
        query: "",
        body,
        need,
    };
    // Writes that would succeed for admin aim at missing ids or make new names, so
    // the fixture stays intact while the matrix runs.
    let routes = vec![
        r(Method::GET, "/v1/sites", 0, None, view),
        r(Method::POST, "/v1/sites", 0, Some(site("new-site")), admin),
        r(Method::GET, "/v1/sites/{id}", s, None, view),
        r(Method::PUT, "/v1/sites/{id}", s, Some(site("A")), admin),
        r(Method::DELETE, "/v1/sites/{id}", 999_999, None, admin),
        r(Method::GET, "/v1/links", 0, None, view),
        r(Method::POST, "/v1/links", 0, Some(link("B", "A")), admin),
        r(Method::GET, "/v1/links/{id}", l, None, view),
        r(Method::PUT, "/v1/links/{id}", l, Some(link("A", "B")), admin),
        r(Method::DELETE, "/v1/links/{id}", 999_999, None, admin),
        r(Method::GET, "/v1/vms", 0, None, view),
        r(Method::POST, "/v1/vms", 0, Some(vm("new-vm", "A")), admin),
        r(Method::GET, "/v1/vms/{id}", v, None, view),
        r(Method::PUT, "/v1/vms/{id}", v, Some(vm("v", "A")), admin),
        r(Method::DELETE, "/v1/vms/{id}", 999_999, None, admin),
        r(Method::GET, "/v1/groups", 0, None, view),
        r(
            Method::POST,
            "/v1/groups",
            0,
            Some(json!({"name": "new-g", "policy": {"kind": "colocate", "max_rtt_ms": 5}})),
            admin,
        ),
        r(Method::GET, "/v1/groups/{id}", g, None, view),
        r(
            Method::PUT,
            "/v1/groups/{id}",
            g,
            Some(json!({"name": "g", "policy": {"kind": "colocate", "max_rtt_ms": 6}})),
            admin,
        ),
        r(Method::DELETE, "/v1/groups/{id}", 999_999, None, admin),
        r(Method::GET, "/v1/executors", 0, None, view),
        r(Method::GET, "/v1/executors/{id}", e, None, view),
        r(Method::GET, "/v1/tokens", 0, None, admin),
        r(Method::POST, "/v1/tokens", 0, Some(json!({"name": "new-t", "role": "viewer"})), admin),
        r(Method::GET, "/v1/tokens/{id}", t, None, admin),
        r(Method::DELETE, "/v1/tokens/{id}", 999_999, None, admin),
        // The body carries the token that signs in; the header plays no part.
        r(Method::POST, "/v1/session", 0, Some(json!({"token": ADMIN})), Need::Nobody),
        r(Method::GET, "/v1/session", 0, None, Need::Asking(Role::Viewer)),
        r(Method::DELETE, "/v1/session", 0, None, Need::Nobody),
        Route { query: "?signal=carbon", ..r(Method::GET, "/v1/sites/{id}/signals", s, None, view) },
        r(Method::POST, "/v1/sites/{id}/signals", s, Some(json!([])), admin),
        r(Method::GET, "/v1/signals/current", 0, None, view),
        r(Method::GET, "/v1/feeds", 0, None, admin),
        r(
            Method::POST,
            "/v1/feeds",
            0,
            Some(json!({"site": "B", "provider": "gb_carbon_intensity", "signal": "carbon", "area": "13"})),
            admin,
        ),
        r(Method::GET, "/v1/feeds/{id}", f, None, admin),
        r(Method::PUT, "/v1/feeds/{id}", f, Some(gb_feed), admin),
        r(Method::DELETE, "/v1/feeds/{id}", 999_999, None, admin),
        // No signals in the fixture: a plan is refused (422) after the role check.
        r(Method::POST, "/v1/plans", 0, Some(json!({})), plan),
        r(Method::GET, "/v1/plans", 0, None, view),
        r(Method::GET, "/v1/plans/{id}", 999_999, None, view),
        r(Method::GET, "/v1/plans/{id}/schedule", 999_999, None, view),
        r(Method::POST, "/v1/plans/{id}/approve", 999_999, None, plan),
        r(Method::POST, "/v1/plans/{id}/apply", 999_999, None, plan),
        r(Method::POST, "/v1/sites/{id}/evacuate", 999_999, Some(json!({"deadline_s": 600})), plan),
        r(Method::GET, "/v1/migrations", 0, None, view),
        r(Method::GET, "/v1/migrations/{id}", 999_999, None, view),
        r(Method::POST, "/v1/migrations/{id}/cancel", 999_999, None, plan),
        r(Method::PATCH, "/v1/migrations/{id}", 999_999, Some(json!({"cap_mbps": 10})), plan),
        // A bad filter answers 400 after the role check, instead of a stream that never ends.
        Route { query: "?migration=not-a-number", ..r(Method::GET, "/v1/events", 0, None, view) },
        r(Method::GET, "/v1/rebalancer", 0, None, view),
        r(Method::GET, "/v1/overview", 0, None, view),
        r(Method::GET, "/v1/savings", 0, None, view),
        // No signals for that window in the fixture: refused (422) after the role check, nothing runs.
        r(
            Method::POST,
            "/v1/simulations",
            0,
            Some(json!({"from": "2020-01-02T00:00:00Z", "to": "2020-01-03T00:00:00Z"})),
            plan,
        ),
        r(Method::GET, "/v1/simulations", 0, None, view),
        r(Method::GET, "/v1/simulations/{id}", 999_999, None, view),
        r(Method::GET, "/v1/simulations/{id}/plots/{name}", 999_999, None, view),
        r(Method::POST, "/v1/sites/{id}/fail", 999_999, Some(json!({"dry_run": true})), plan),
        r(Method::GET, "/v1/sites/{id}/recovery", 999_999, None, view),
        r(Method::GET, "/v1/recoveries/{id}", 999_999, None, view),
        r(Method::POST, "/v1/recoveries/{id}/discard", 999_999, None, plan),
        r(
            Method::POST,
            "/v1/executors/register",
            0,
            Some(json!({"site": "A", "address": "a:7070", "driver": "sim", "capacity": 1})),
            exec,
        ),
        r(Method::POST, "/v1/executors/{id}/heartbeat", 999_999, None, exec),
        r(Method::POST, "/v1/executors/{id}/claim", 999_999, None, exec),
        r(Method::POST, "/v1/executors/{id}/replication", 999_999, Some(json!({"replicas": []})), exec),
        Route {
            query: "?executor=999999",
            ..r(
                Method::POST,
                "/v1/migrations/{id}/progress",
                999_999,
                Some(json!({"raw_bytes": 0, "wire_bytes": 0})),
                exec,
            )
        },
        Route {
            query: "?executor=999999",
            ..r(Method::POST, "/v1/migrations/{id}/complete", 999_999, Some(json!({"state": "failed"})), exec)
        },
        Route {
            query: "?executor=999999",
            ..r(Method::POST, "/v1/migrations/{id}/recover", 999_999, Some(json!({"runs_at": "source"})), exec)
        },
        Route {
            query: "?executor=999999",
            ..r(
                Method::POST,
                "/v1/migrations/{id}/network",
                999_999,
                Some(json!({"step": "release", "driver": "linux", "duration_ms": 1.0, "ok": true})),
                exec,
            )
        },
        Route {
            query: "?executor=999999",
            ..r(Method::POST, "/v1/recoveries/{id}/outcome", 999_999, Some(json!({"state": "running"})), exec)
        },
        r(Method::GET, "/healthz", 0, None, Need::Nobody),
        r(Method::GET, "/readyz", 0, None, Need::Nobody),
        r(Method::GET, "/metrics", 0, None, Need::Nobody),
    ];

    let documented: BTreeSet<(String, String)> = ApiDoc::openapi()
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| {
            let mut methods = Vec::new();
            for (m, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
            ] {
                if op.is_some() {
                    methods.push((m.to_owned(), path.clone()));
                }
            }
            methods
        })
        .collect();
    let tested: BTreeSet<(String, String)> =
        routes.iter().map(|r| (r.method.to_string(), r.template.to_owned())).collect();
    assert_eq!(tested, documented, "every documented route is in the matrix, and only those");

    let mut secrets = vec![(None, "none"), (Some("htp_not-a-real-token".to_owned()), "bogus")];
    for role in Role::ALL {
        secrets.push((Some(if role == Role::Admin { ADMIN.to_owned() } else { app.token(role).await }), role.as_str()));
    }
    for (n, route) in routes.iter().enumerate() {
        // Bogus secrets come from an address of their own per route: an address may fail 20 times in a row.
        let guesser = app.from_address([127, 0, 1, u8::try_from(n).unwrap()]);
        let path = format!(
            "{}{}",
            route.template.replace("{id}", &route.id.to_string()).replace("{name}", "savings.svg"),
            route.query
        );
        for (secret, who) in &secrets {
            let asker = if *who == "bogus" { &guesser } else { &app };
            let answer = asker.send(route.method.clone(), &path, secret.as_deref(), route.body.as_ref()).await;
            let status = answer.status.as_u16();
            let expected = match (route.need, who) {
                (Need::Nobody, _) | (Need::Asking(_), &"none") => None,
                (_, &"none") | (_, &"bogus") => Some(401),
                (Need::Role(need) | Need::Asking(need), who) => {
                    let role = Role::parse(who).unwrap();
                    if role.grants(need) {
                        None
                    } else {
                        Some(403)
                    }
                }
            };
            match expected {
                Some(code) => {
                    assert_eq!(status, code, "{} {path} as {who}: {}", route.method, answer.body);
                    assert_eq!(answer.code(), if code == 401 { "unauthorized" } else { "forbidden" });
                }
                None => assert!(
                    status != 401 && status != 403 && status < 500,
                    "{} {path} as {who} should pass the check, got {status}: {}",
                    route.method,
                    answer.body
                ),
            }
        }
    }
}

#[test]
fn roles_nest_and_executor_stands_apart() {
    use Role::*;
    let grants = |have: Role| Role::ALL.into_iter().filter(|need| have.grants(*need)).collect::<Vec<_>>();
    assert_eq!(grants(Viewer), [Viewer]);
    assert_eq!(grants(Planner), [Viewer, Planner]);
    assert_eq!(grants(Admin), [Viewer, Planner, Admin]);
    assert_eq!(grants(Executor), [Executor]);
}
