//! `/v1/vms`.

use heliotrope::db::MIGRATOR;
use heliotrope_tests::{site, spawn_app, vm, with, without, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

async fn fleet(app: &TestApp) {
    for name in ["A", "B", "C"] {
        app.create("/v1/sites", site(name)).await;
    }
    app.create("/v1/groups", json!({"name": "db", "policy": {"kind": "spread", "min_sites": 2, "max_per_site": 1}}))
        .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn create_read_replace_delete(pool: PgPool) {
    let app = spawn_app(pool).await;
    fleet(&app).await;
    let mut body = vm("db-1", "A");
    body["allowed_sites"] = json!(["C", "A"]);
    body["group"] = json!("db");
    body["priority"] = json!(90);
    body["driver_spec"] = json!({"image": "debian.qcow2"});
    let created = app.create("/v1/vms", body).await;
    assert_eq!(created["allowed_sites"], json!(["C", "A"]), "order kept");
    assert_eq!(created["allowed_regions"], json!(null));
    assert_eq!(created["group"], "db");
    assert_eq!(created["max_downtime_ms"], 300, "default");
    assert_eq!(created["driver_spec"]["image"], "debian.qcow2");
    let path = format!("/v1/vms/{}", created["id"]);
    assert_eq!(app.get(&path).await.body, created);

    let mut moved = vm("db-1", "B");
    moved["allowed_regions"] = json!(["B", "C"]);
    moved["pinned"] = json!(true);
    let replaced = app.put(&path, moved).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["site"], "B");
    assert_eq!(replaced.body["allowed_sites"], json!(null), "replaced whole");
    assert_eq!(replaced.body["group"], json!(null));
    assert_eq!(replaced.body["pinned"], true);
    assert_eq!(app.count("vm_allowed_site").await, 0);

    assert_eq!(app.delete(&path).await.status, 204);
    app.get(&path).await.assert_error(404, "VM");
    app.put(&path, vm("db-1", "A")).await.assert_error(404, "VM");
    app.delete(&path).await.assert_error(404, "VM");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn each_rule_names_its_field_and_stores_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    fleet(&app).await;
    let v = || vm("v", "A");
    let cases = [
        (with(v(), "/name", json!("-x")), "name"),
        (with(v(), "/vcpus", json!(0)), "vcpus"),
        (with(v(), "/vcpus", json!(4096)), "vcpus"),
        (with(v(), "/memory_gib", json!(0)), "memory_gib"),
        (with(v(), "/disk_gib", json!(-5)), "disk_gib"),
        (with(v(), "/dirty_rate_mbps", json!(-1)), "dirty_rate_mbps"),
        (with(v(), "/site", json!("Nowhere")), "site: no site named 'Nowhere'"),
        (with(v(), "/driver", json!("xen")), "driver"),
        (without(v(), "driver"), "driver"),
        (
            json!({"priority": 101, "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1, "dirty_rate_mbps": 1,
                "site": "A", "driver": "sim"}),
            "priority",
        ),
        (
            json!({"max_downtime_ms": 0, "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1, "dirty_rate_mbps": 1,
                "site": "A", "driver": "sim"}),
            "max_downtime_ms",
        ),
        (
            json!({"driver_spec": [1], "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1, "dirty_rate_mbps": 1,
                "site": "A", "driver": "sim"}),
            "driver_spec",
        ),
        (
            json!({"group": "nope", "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1, "dirty_rate_mbps": 1,
                "site": "A", "driver": "sim"}),
            "group: no group named 'nope'",
        ),
        (
            json!({"allowed_sites": ["A", "Nowhere"], "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1,
                "dirty_rate_mbps": 1, "site": "A", "driver": "sim"}),
            "allowed_sites[1]",
        ),
        (
            json!({"allowed_sites": [], "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1,
                "dirty_rate_mbps": 1, "site": "A", "driver": "sim"}),
            "allowed_sites",
        ),
        (
            json!({"allowed_sites": ["A"], "allowed_regions": ["A"], "name": "v", "vcpus": 1, "memory_gib": 1,
                "disk_gib": 1, "dirty_rate_mbps": 1, "site": "A", "driver": "sim"}),
            "not both",
        ),
        (
            json!({"pinned": true, "allowed_sites": ["B"], "name": "v", "vcpus": 1, "memory_gib": 1,
                "disk_gib": 1, "dirty_rate_mbps": 1, "site": "A", "driver": "sim"}),
            "pinned",
        ),
        (
            json!({"driver_spec": {"k": "a\u{0}"}, "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1,
                "dirty_rate_mbps": 1, "site": "A", "driver": "sim"}),
            "driver_spec",
        ),
        (
            json!({"pined": true, "name": "v", "vcpus": 1, "memory_gib": 1, "disk_gib": 1, "dirty_rate_mbps": 1,
                "site": "A", "driver": "sim"}),
            "pined: unknown field",
        ),
    ];
    for (body, field) in cases {
        app.post("/v1/vms", body).await.assert_error(422, field);
    }
    assert_eq!(app.count("vm").await, 0);
    assert_eq!(app.count("vm_allowed_site").await, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_refused_replace_changes_nothing(pool: PgPool) {
    let app = spawn_app(pool).await;
    fleet(&app).await;
    let mut body = vm("v", "A");
    body["allowed_sites"] = json!(["A", "B"]);
    let created = app.create("/v1/vms", body).await;
    app.create("/v1/vms", vm("w", "A")).await;
    let path = format!("/v1/vms/{}", created["id"]);
    let mut bad = vm("v", "C");
    bad["allowed_sites"] = json!(["C", "Nowhere"]);
    app.put(&path, bad).await.assert_error(422, "allowed_sites[1]");
    app.put(&path, vm("w", "A")).await.assert_error(409, "'w'");
    assert_eq!(app.get(&path).await.body, created);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn duplicate_names_conflict(pool: PgPool) {
    let app = spawn_app(pool).await;
    fleet(&app).await;
    app.create("/v1/vms", vm("v", "A")).await;
    app.post("/v1/vms", vm("v", "B")).await.assert_error(409, "'v'");
    assert_eq!(app.count("vm").await, 1);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn filters(pool: PgPool) {
    let app = spawn_app(pool).await;
    fleet(&app).await;
    app.create("/v1/vms", vm("a1", "A")).await;
    let qemu = with(vm("a2", "A"), "/driver", json!("qemu"));
    let memory_mib = (vm("a2", "A")["memory_gib"].as_f64().unwrap() * 1024.0) as u64;
    app.create("/v1/vms", with(qemu, "/driver_spec", json!({"memory_mib": memory_mib}))).await;
    let mut grouped = vm("b1", "B");
    grouped["group"] = json!("db");
    grouped["pinned"] = json!(true);
    app.create("/v1/vms", grouped).await;
    let names = |path: &'static str| {
        let app = &app;
        async move {
            let answer = app.get(path).await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("/v1/vms?site=A").await, ["a1", "a2"]);
    assert_eq!(names("/v1/vms?group=db").await, ["b1"]);
    assert_eq!(names("/v1/vms?driver=qemu").await, ["a2"]);
    assert_eq!(names("/v1/vms?pinned=true").await, ["b1"]);
    assert_eq!(names("/v1/vms?pinned=false&site=A&driver=sim").await, ["a1"]);
    assert_eq!(names("/v1/vms?site=Nowhere").await, Vec::<String>::new());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_qemu_vms_spec_is_checked_field_by_field(pool: PgPool) {
    let app = spawn_app(pool).await;
    app.create("/v1/sites", site("A")).await;
    let qemu = |spec: Value| {
        with(with(with(vm("q", "A"), "/driver", json!("qemu")), "/memory_gib", json!(2.0)), "/driver_spec", spec)
    };
    let disk = json!({"node": "disk0", "path": "/srv/vms/q/disk0.qcow2", "size_bytes": 1_073_741_824u64});
    for (spec, field) in [
        (json!({}), "driver_spec"),
        (json!({"memory_mib": 2048, "cpus": 2}), "driver_spec"),
        (json!({"memory_mib": 512}), "driver_spec.memory_mib"),
        (json!({"memory_mib": 2048, "accel": "hvf"}), "driver_spec.accel"),
        (
            json!({"memory_mib": 2048, "disks": [with(disk.clone(), "/path", json!("/a,b.qcow2"))]}),
            "driver_spec.disks[0].path",
        ),
        (
            json!({"memory_mib": 2048, "disks": [with(disk.clone(), "/format", json!("vmdk"))]}),
            "driver_spec.disks[0].format",
        ),
        (json!({"memory_mib": 2048, "disks": [disk.clone(), disk.clone()]}), "driver_spec.disks"),
        (json!({"memory_mib": 2048, "boot_image": "relative.img"}), "driver_spec.boot_image"),
    ] {
        let answer = app.post("/v1/vms", qemu(spec.clone())).await;
        assert_eq!(answer.status, 422, "{spec}: {}", answer.body);
        assert!(answer.message().starts_with(&format!("{field}:")), "{spec}: {}", answer.message());
    }
    assert_eq!(app.count("vm").await, 0);
    let fine = json!({"memory_mib": 2048, "disks": [disk], "boot_image": "/srv/images/boot.img"});
    let created = app.create("/v1/vms", qemu(fine)).await;
    assert_eq!(created["driver_spec"]["machine"], json!(null), "stored as sent: {created}");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_vm_owns_its_addresses(pool: PgPool) {
    let app = spawn_app(pool).await;
    fleet(&app).await;
    let with_addresses = |name: &str, addresses: Value| with(vm(name, "A"), "/addresses", addresses);
    let web = app.create("/v1/vms", with_addresses("web", json!(["192.0.2.10", "2001:0DB8::0010"]))).await;
    assert_eq!(web["addresses"], json!(["192.0.2.10", "2001:db8::10"]), "kept in canonical form: {web}");
    assert_eq!(app.create("/v1/vms", vm("plain", "A")).await["addresses"], json!([]), "none by default");

    // An address is one VM's: another claiming it is a conflict, and stores nothing.
    app.post("/v1/vms", with_addresses("thief", json!(["2001:db8:0::10"]))).await.assert_error(409, "another VM");
    assert_eq!(app.count("vm").await, 2);
    for (addresses, needle) in [
        (json!(["10.0.0.300"]), "addresses[0]"),
        (json!(["::1"]), "cannot be a VM's own address"),
        (json!(["224.0.0.5"]), "cannot be a VM's own address"),
        (json!(["192.0.2.11", "192.0.2.11"]), "listed twice"),
        (json!((0..17).map(|i| format!("192.0.2.{i}")).collect::<Vec<_>>()), "at most 16"),
    ] {
        app.post("/v1/vms", with_addresses("bad", addresses)).await.assert_error(422, needle);
    }

    // Replacing sets them anew; the address given up is free for another VM.
    let id = web["id"].as_i64().unwrap();
    let replaced = app.put(&format!("/v1/vms/{id}"), with_addresses("web", json!(["192.0.2.10"]))).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    assert_eq!(replaced.body["addresses"], json!(["192.0.2.10"]));
    app.create("/v1/vms", with_addresses("next", json!(["2001:db8::10"]))).await;
    app.delete(&format!("/v1/vms/{id}")).await;
    app.create("/v1/vms", with_addresses("after", json!(["192.0.2.10"]))).await;
}
