//! Replication (SPEC 11) through real daemons: the queue, config and throttle endpoints
//! in the appliance's shapes, and (with two daemons) backups that move.

use serde_json::{json, Value};

use crate::harness::{Daemon, Options};

fn put(d: &Daemon, path: &str, token: &str, body: &Value) -> crate::harness::Response {
    d.client().send_json("PUT", path, Some(token), body)
}

fn monitor_token(d: &Daemon, root: &str) -> String {
    let r = d.client().post_json(
        "/api/users",
        Some(root),
        &json!({"name": "watcher", "password": "password-123", "privilege": "monitor"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    d.login("watcher", "password-123")
}

#[test]
fn config_has_the_appliance_shape_and_queue_scheme_numbers() {
    let d = Daemon::start("repl-config", Options::default());
    let t = d.root_token();
    let c = d.client();
    let r = c.get("/api/replication/config", Some(&t));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"config": {"max_concurrent": 2, "strategy": "retention", "queue_scheme": 1, "retries": 3}})
    );
    // A number picks the strategy as the appliance numbers them; fields not given stay.
    let r = put(
        &d,
        "/api/replication/config",
        &t,
        &json!({"queue_scheme": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["config"]["strategy"], "recency");
    assert_eq!(r.json()["config"]["max_concurrent"], 2);
    // The GET shape is accepted back, wrapped in `config`.
    let r = put(
        &d,
        "/api/replication/config",
        &t,
        &json!({"config": {"strategy": "manual", "max_concurrent": "4", "retries": 0}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"config": {"max_concurrent": 4, "strategy": "manual", "queue_scheme": 0, "retries": 0}})
    );
    for (body, field) in [
        (
            json!({"strategy": "manual", "queue_scheme": 1}),
            "queue_scheme",
        ),
        (json!({"max_concurrent": 0}), "max_concurrent"),
        (json!({"strategy": "fastest"}), "strategy"),
        (json!({"queue_scheme": 7}), "queue_scheme"),
        (json!({"retries": -1}), "retries"),
    ] {
        let r = put(&d, "/api/replication/config", &t, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{body}: {}", r.text());
    }
    // It survives a restart, and a monitor may read but not change it.
    let mut d = d;
    d.restart();
    let t = d.root_token();
    assert_eq!(
        d.client().get("/api/replication/config", Some(&t)).json()["config"]["strategy"],
        "manual"
    );
    let m = monitor_token(&d, &t);
    assert_eq!(
        d.client().get("/api/replication/config", Some(&m)).status,
        200
    );
    assert_eq!(
        put(&d, "/api/replication/config", &m, &json!({"retries": 1})).status,
        403
    );
}

#[test]
fn throttle_windows_round_trip_and_bad_windows_name_the_field() {
    let d = Daemon::start("repl-throttle", Options::default());
    let t = d.root_token();
    let r = d.client().get("/api/replication/throttle", Some(&t));
    assert_eq!(r.json(), json!({"throttle": [], "link_mbps": 1000}));
    let windows = json!({"throttle": [
        {"percentage": 10, "days": [1, 2, 3, 4, 5], "start": 8, "end": 18},
        {"percentage": "50", "days": [0, 6], "start": 22, "end": 6}
    ], "link_mbps": 100});
    let r = put(&d, "/api/replication/throttle", &t, &windows);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = d.client().get("/api/replication/throttle", Some(&t)).json();
    assert_eq!(got["link_mbps"], 100);
    assert_eq!(
        got["throttle"][1],
        json!({"percentage": 50, "days": [0, 6], "start": 22, "end": 6})
    );
    for (body, field) in [
        (
            json!({"throttle": [{"percentage": 0, "days": [1], "start": 1, "end": 2}]}),
            "throttle[0].percentage",
        ),
        (
            json!({"throttle": [{"percentage": 5, "days": [7], "start": 1, "end": 2}]}),
            "throttle[0].days",
        ),
        (
            json!({"throttle": [{"percentage": 5, "days": [1], "start": 24, "end": 2}]}),
            "throttle[0].start",
        ),
        (
            json!({"throttle": [{"percentage": 5, "days": [1], "start": 1}]}),
            "throttle[0].end",
        ),
        (json!({"throttle": {"percentage": 5}}), "throttle"),
        (json!({"link_mbps": 0}), "link_mbps"),
    ] {
        let r = put(&d, "/api/replication/throttle", &t, &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(field), "{body}: {}", r.text());
    }
    // Nothing of a refused change was kept.
    assert_eq!(
        d.client().get("/api/replication/throttle", Some(&t)).json(),
        got
    );
}

#[test]
fn queue_lists_have_the_appliance_shape_and_refuse_bad_input() {
    let d = Daemon::start("repl-queue", Options::default());
    let t = d.root_token();
    let c = d.client();
    let r = c.get("/api/replication/queue", Some(&t));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"active": [], "inactive": [], "total_inactive": 0, "start_position": 0})
    );
    assert_eq!(
        c.get("/api/replication/queue/active", Some(&t)).json(),
        json!({"active": []})
    );
    let r = c.get(
        "/api/replication/queue/inactive?start=5&count=10&include_done=1",
        Some(&t),
    );
    assert_eq!(
        r.json(),
        json!({"inactive": [], "total_inactive": 0, "start_position": 5, "done": [], "total_done": 0})
    );
    assert_eq!(
        c.get("/api/replication/queue?target_id=9", Some(&t)).status,
        404
    );
    assert_eq!(
        c.get("/api/replication/queue?count=0", Some(&t)).status,
        400
    );
    assert_eq!(
        c.get("/api/replication/queue?count=5000", Some(&t)).status,
        400
    );
    // Adding needs a paired target and a valid name; the name is checked first.
    let add = |body: Value| c.post_json("/api/replication/queue", Some(&t), &body);
    let r = add(json!({"target_id": 1, "backup": "../etc/passwd"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("field `backup`"), "{}", r.text());
    for bad in ["/abs/x", "c/a\u{0}b", "c", "c/.partial"] {
        assert_eq!(
            add(json!({"target_id": 1, "backup": bad})).status,
            400,
            "{bad:?}"
        );
    }
    assert_eq!(add(json!({"target_id": 9, "backup": "c/x"})).status, 404);
    assert_eq!(add(json!({"backup": "c/x"})).status, 400);
    // Changes name items that exist, with an action the appliance knows.
    let change = |body: Value| put(&d, "/api/replication/queue", &t, &body);
    assert_eq!(change(json!({"backups": [{"id": 77}]})).status, 404);
    assert_eq!(change(json!({})).status, 400);
    assert_eq!(
        change(json!({"backups": [{"id": 1}], "action": "delete"})).status,
        400
    );
    assert_eq!(change(json!({"clients": ["../x"]})).status, 400);
    let r = change(json!({"clients": ["web"], "action": "reset"}));
    assert_eq!((r.status, r.json()), (200, json!({"items": []})));
}

#[test]
fn received_and_verify_need_a_paired_source_and_quota_needs_a_source() {
    let d = Daemon::start("repl-received", Options::default());
    let t = d.root_token();
    let c = d.client();
    assert_eq!(c.get("/api/replication/received", Some(&t)).status, 400);
    assert_eq!(
        c.get("/api/replication/received?sid=5", Some(&t)).status,
        404
    );
    assert_eq!(
        c.post_json("/api/replication/verify?sid=5", Some(&t), &json!({}))
            .status,
        404
    );
    let r = put(
        &d,
        "/api/replication/source?sid=5",
        &t,
        &json!({"quota_mb": 10}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = put(&d, "/api/replication/source?sid=5", &t, &json!({}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("quota_mb"));
    let r = put(
        &d,
        "/api/replication/source?sid=5",
        &t,
        &json!({"quota_mb": "lots"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}
