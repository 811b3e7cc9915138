//! Cursor pagination across pages, on every list endpoint.

use std::collections::BTreeSet;

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{link, site, spawn_app, vm, TestApp};
use serde_json::json;
use sqlx::PgPool;

/// Walks `path` with `limit` per page; returns the ids in order and the number of pages.
async fn walk(app: &TestApp, path: &str, limit: u32) -> (Vec<i64>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (mut ids, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let url = match &cursor {
            None => format!("{path}{sep}limit={limit}"),
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
        };
        let answer = app.get(&url).await;
        assert_eq!(answer.status, 200, "{url}: {}", answer.body);
        let items = answer.body["items"].as_array().unwrap();
        assert!(items.len() <= limit as usize);
        ids.extend(items.iter().map(|i| i["id"].as_i64().unwrap()));
        pages += 1;
        match answer.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (ids, pages),
        }
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pages_cover_everything_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("A")).await;
    app.create("/v1/sites", site("B")).await;
    app.create("/v1/sites", site("C")).await;
    for i in 0..25 {
        app.create("/v1/vms", vm(&format!("vm-{i:02}"), if i % 2 == 0 { "A" } else { "B" })).await;
    }
    app.create("/v1/links", link("A", "B")).await;
    app.create("/v1/links", link("B", "C")).await;
    app.create("/v1/links", link("C", "A")).await;
    for name in ["g1", "g2", "g3"] {
        app.create("/v1/groups", json!({"name": name, "policy": {"kind": "colocate", "max_rtt_ms": 5}})).await;
    }
    app.create("/v1/tokens", json!({"name": "t", "role": "viewer"})).await;

    let (ids, pages) = walk(&app, "/v1/vms", 10).await;
    assert_eq!((ids.len(), pages), (25, 3));
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending, no repeats");
    let (filtered, _) = walk(&app, "/v1/vms?site=A", 4).await;
    assert_eq!(filtered.len(), 13);
    assert!(filtered.iter().collect::<BTreeSet<_>>().is_subset(&ids.iter().collect()));
    // An exact multiple of the page size ends without an empty extra page.
    assert_eq!(walk(&app, "/v1/vms", 5).await.1, 5);

    for (path, count) in [("/v1/sites", 3), ("/v1/links", 3), ("/v1/groups", 3), ("/v1/tokens", 2)] {
        let (ids, pages) = walk(&app, path, 1).await;
        assert_eq!((ids.len(), pages), (count, count), "{path}");
    }
    assert_eq!(walk(&app, "/v1/executors", 1).await, (vec![], 1));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bad_page_parameters(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.get("/v1/vms?limit=0").await.assert_error(422, "limit");
    app.get("/v1/vms?limit=1001").await.assert_error(422, "limit");
    app.get("/v1/vms?limit=-1").await.assert_error(400, "limit");
    app.get("/v1/vms?cursor=garbage").await.assert_error(422, "cursor");
    app.get("/v1/sites?cursor=aWQ6LTU").await.assert_error(422, "cursor");
    app.get("/v1/vms?pinned=maybe").await.assert_error(400, "pinned");
}
