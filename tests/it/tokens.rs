//! Pairing tokens (SPEC 13) and the defences against a flood of requests, with real
//! daemons: a source pairs with a token and no admin call, every way a token must refuse
//! (filing nothing), `require_token`, the per-network cap with bulk ignore, and one test
//! per class of bad input on the token API.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use replgate::wire::token::JoinLine;
use serde_json::{json, Value};

use crate::harness::{
    pairing_opts, request_body, scratch_dir, simple_csr, spool_token, Daemon, Options, Response,
    POLL,
};
use crate::pairing::{identity, pairing_dir, request, target_row, tunnel_hello, wait_status};

/// A target with two backup storages (1 and 2), poll settings for pairing tests and `opts`
/// on top.
fn two_storage_target(name: &str, extra: &[(&str, &str)]) -> Daemon {
    let dir = scratch_dir(&format!("{name}-storage"));
    for s in ["one", "two"] {
        std::fs::create_dir_all(dir.join(s)).unwrap();
    }
    let config = dir.join("replgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[storage]]\nid = 1\nname = \"one\"\npath = \"{0}/one\"\n\
             [[storage]]\nid = 2\nname = \"two\"\npath = \"{0}/two\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut opts = Options {
        config_file: Some(config),
        ..pairing_opts()
    };
    for (k, v) in extra {
        opts = opts.set(k, v);
    }
    Daemon::start(name, opts)
}

/// `POST /api/replication/tokens` that must succeed: its 201 body.
#[track_caller]
fn create_token(d: &Daemon, root: &str, body: Value) -> Value {
    let r = d
        .client()
        .post_json("/api/replication/tokens", Some(root), &body);
    assert_eq!(r.status, 201, "create a token: {}", r.text());
    r.json()
}

fn token_of(created: &Value) -> String {
    created["token"].as_str().expect("token").to_string()
}

/// Files a request for `uuid` as a source would, with `token` when given.
fn file_with(d: &Daemon, uuid: &str, token: Option<&str>) -> Response {
    let mut body = request_body(uuid, &simple_csr().pem);
    if let Some(t) = token {
        body["token"] = json!(t);
    }
    d.client()
        .post_json("/replication/v1/requests", None, &body)
}

/// Every request the target holds, in any state (`include_rejected` plus the systems
/// table would miss accepted ones): read through the audit log's filings.
fn filed_count(d: &Daemon, root: &str) -> usize {
    audit(d, root)
        .iter()
        .filter(|a| a["action"] == "request filed")
        .count()
}

fn audit(d: &Daemon, root: &str) -> Vec<Value> {
    let r = d.client().get("/api/audit?limit=1000", Some(root));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["audit"].as_array().cloned().unwrap_or_default()
}

fn tokens_list(d: &Daemon, root: &str) -> Value {
    let r = d.client().get("/api/replication/tokens", Some(root));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[track_caller]
fn assert_refused(r: &Response, says: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    let message = r.json()["result"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains(says), "{message:?} should say {says:?}");
}

#[test]
fn a_one_use_token_pairs_a_source_with_no_admin_call_and_its_revocation_leaves_the_pairing_up() {
    let (src, tgt) = std::thread::scope(|s| {
        let src = s.spawn(|| Daemon::start("tok-e2e-src", pairing_opts()));
        let tgt = two_storage_target("tok-e2e-tgt", &[]);
        (src.join().unwrap(), tgt)
    });
    let (st, tt) = (src.root_token(), tgt.root_token());

    let created = create_token(
        &tgt,
        &tt,
        json!({"storage_id": 2, "quota_mb": 300, "note": "rack 4"}),
    );
    assert_eq!(created["uses"], 1);
    assert_eq!(created["status"], "valid");
    let token = token_of(&created);
    let id = created["token_id"].as_str().unwrap().to_string();
    let secret = token.split_once('.').unwrap().1.to_string();
    assert_eq!(token, format!("{id}.{secret}"));
    assert_eq!(secret.len(), 32, "128 bits of secret");
    let join = JoinLine::parse(created["join"].as_str().unwrap()).unwrap();
    assert_eq!(join.target(), tgt.api.to_string());
    assert_eq!(join.ca_fingerprint, tgt.ca_fingerprint());
    assert_eq!(join.token.expose(), token);

    // The source asks with the token (and for storage 1, which the token overrides).
    let asked = Instant::now();
    let r = request(
        &src,
        &st,
        &tgt,
        json!({"fingerprint": join.ca_fingerprint, "token": token, "storage_id": 1}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    wait_status(&src, &st, "complete", Duration::from_secs(POLL + 8));
    eprintln!(
        "token request to complete: {:?} (poll interval {POLL} s)",
        asked.elapsed()
    );

    // Accepted without anyone deciding: nothing pending, the token's storage and quota.
    let pending = tgt
        .client()
        .get("/api/replication/pending", Some(&tt))
        .json();
    assert_eq!(pending["pending"], json!([]));
    let row = crate::harness::systems_row(&tgt.systems(&tt), |s| {
        s["role"] == "Non-Managed Replication Source"
    });
    assert_eq!(row["storage_id"], 2, "{row}");
    assert_eq!(row["quota_mb"], 300, "{row}");
    let listed = tokens_list(&tgt, &tt);
    let t = &listed["tokens"][0];
    assert_eq!(
        (t["status"].as_str(), t["used"].as_u64()),
        (Some("used"), Some(1))
    );
    assert!(t["last_used"].as_i64().is_some(), "{t}");
    assert!(t.get("token").is_none() && !listed.to_string().contains(&secret));

    // The audit log names the token, never its secret.
    let rows = audit(&tgt, &tt);
    let accepted = rows
        .iter()
        .find(|a| a["action"] == "request accepted")
        .expect("an accept row");
    assert_eq!(accepted["user"], format!("token:{id}"));
    assert!(rows
        .iter()
        .any(|a| a["action"] == "token used" && a["object"] == format!("token:{id}")));
    assert!(!Value::from(rows.clone()).to_string().contains(&secret));

    // A second use is refused and files nothing.
    let before = filed_count(&tgt, &tt);
    assert_refused(
        &file_with(&tgt, "5ec0d000-0000-4000-8000-000000000001", Some(&token)),
        "used up",
    );
    assert_eq!(filed_count(&tgt, &tt), before);

    // Revoking the used token leaves the pairing up: the tunnel still says hello.
    let r = tgt
        .client()
        .delete(&format!("/api/replication/tokens/{id}"), Some(&tt));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "revoked");
    let hello = tunnel_hello(&tgt, Some(identity(&pairing_dir(&src)))).unwrap();
    assert_eq!(hello.status, 200, "{}", hello.text());
    assert_eq!(hello.json()["storage_id"], 2);
    assert_eq!(target_row(&src, &st)["status"], "complete");

    // Asked again with the revoked token, the source answers 403 with the target's words.
    let r = src
        .client()
        .delete(&format!("/api/replication/target/{}", tgt.api), Some(&st));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        &src,
        &st,
        &tgt,
        json!({"fingerprint": tgt.ca_fingerprint(), "token": token}),
    );
    assert_refused(
        &r,
        &format!("target {}: pairing token {id} has been revoked", tgt.api),
    );
    let r = src.client().get("/api/replication/targets", Some(&st));
    assert_eq!(
        r.json()["targets"],
        json!([]),
        "nothing recorded on a refusal"
    );

    // The secret reached neither daemon's log (they run at debug level).
    for d in [&src, &tgt] {
        assert!(
            !d.log().contains(&secret),
            "secret in {}",
            d.log_path.display()
        );
    }
    // Created, used and revoked are each an info line (the audit rows' event lines).
    for event in ["token created", "token used", "token revoked"] {
        let line = format!("{event} token:{id}");
        assert!(tgt.log().contains(&line), "no `{line}` in the log");
    }
}

#[test]
fn a_refused_token_gets_403_with_its_reason_and_nothing_is_filed() {
    let tgt = two_storage_target("tok-refuse", &[]);
    let tt = tgt.root_token();
    let filed = || filed_count(&tgt, &tt);

    // Bound to one system_uuid: another is refused, the bound one gets in.
    let bound = token_of(&create_token(
        &tgt,
        &tt,
        json!({"system_uuid": "AAAAAAAA-1111-4111-8111-111111111111", "uses": 2}),
    ));
    let before = filed();
    assert_refused(
        &file_with(&tgt, "bbbbbbbb-2222-4222-8222-222222222222", Some(&bound)),
        "bound to another system_uuid",
    );
    assert_eq!(filed(), before);
    let r = file_with(&tgt, "aaaaaaaa-1111-4111-8111-111111111111", Some(&bound));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["status"], "accepted");

    // Bound to a host.
    let by_host = token_of(&create_token(&tgt, &tt, json!({"host": "other.example"})));
    assert_refused(
        &file_with(&tgt, "cccccccc-3333-4333-8333-333333333333", Some(&by_host)),
        "bound to another host",
    );

    // Expired.
    let short = token_of(&create_token(&tgt, &tt, json!({"expires_in": 1})));
    std::thread::sleep(Duration::from_millis(2_100));
    assert_refused(
        &file_with(&tgt, "dddddddd-4444-4444-8444-444444444444", Some(&short)),
        "expired at",
    );

    // Revoked.
    let created = create_token(&tgt, &tt, json!({}));
    let revoked = token_of(&created);
    let path = format!(
        "/api/replication/tokens/{}",
        created["token_id"].as_str().unwrap()
    );
    assert_eq!(tgt.client().delete(&path, Some(&tt)).status, 200);
    assert_refused(
        &file_with(&tgt, "eeeeeeee-5555-4555-8555-555555555555", Some(&revoked)),
        "has been revoked",
    );

    // Unknown: another id, or the right id with another secret; the same answer.
    let fresh = token_of(&create_token(&tgt, &tt, json!({})));
    let (fresh_id, _) = fresh.split_once('.').unwrap();
    for unknown in [
        format!("000000000000.{}", "1".repeat(32)),
        format!("{fresh_id}.{}", "0".repeat(32)),
    ] {
        assert_refused(
            &file_with(&tgt, "ffffffff-6666-4666-8666-666666666666", Some(&unknown)),
            "unknown pairing token",
        );
    }
    assert_eq!(
        filed(),
        before + 1,
        "only the bound source's request was filed"
    );
    let pending = tgt
        .client()
        .get("/api/replication/pending", Some(&tt))
        .json();
    assert_eq!(pending["pending"], json!([]));
    // Refusals of a verified token are audited; a wrong secret is a stranger's guess.
    let rows = audit(&tgt, &tt);
    let refused: Vec<&Value> = rows
        .iter()
        .filter(|a| a["action"] == "token refused")
        .collect();
    assert_eq!(
        refused.len(),
        4,
        "bound, host, expired, revoked: {refused:?}"
    );

    // Two sources racing for a one-use token: exactly one gets in.
    let once = token_of(&create_token(&tgt, &tt, json!({})));
    let barrier = std::sync::Barrier::new(2);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = [
            "2ace0000-0000-4000-8000-000000000001",
            "2ace0000-0000-4000-8000-000000000002",
        ]
        .into_iter()
        .map(|uuid| {
            let (tgt, once, barrier) = (&tgt, &once, &barrier);
            let body = {
                let mut b = request_body(uuid, &simple_csr().pem);
                b["token"] = json!(once);
                b
            };
            s.spawn(move || {
                barrier.wait();
                tgt.client()
                    .post_json("/replication/v1/requests", None, &body)
                    .status
            })
        })
        .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, vec![202, 403], "{statuses:?}");
    let list = tokens_list(&tgt, &tt);
    let raced = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| once.starts_with(t["token_id"].as_str().unwrap()))
        .unwrap();
    assert_eq!(raced["used"], 1);
}

#[test]
fn require_token_refuses_every_request_filed_without_a_valid_one() {
    let tgt = Daemon::start(
        "tok-require",
        Options::default().set("require_token", "true"),
    );
    let tt = tgt.root_token();
    assert_refused(
        &file_with(&tgt, "aaaa0001-0000-4000-8000-000000000001", None),
        "only with a valid pairing token",
    );
    assert_refused(
        &file_with(&tgt, "aaaa0001-0000-4000-8000-000000000001", Some("")),
        "only with a valid pairing token",
    );
    assert_eq!(filed_count(&tgt, &tt), 0);
    let token = token_of(&create_token(&tgt, &tt, json!({})));
    let r = file_with(&tgt, "aaaa0001-0000-4000-8000-000000000001", Some(&token));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["status"], "accepted");
}

#[test]
fn a_flood_from_one_network_is_capped_and_bulk_ignore_clears_it_in_one_call() {
    let tgt = Daemon::start(
        "tok-flood",
        Options::default()
            .set("max_pending_per_address", 5)
            .set("unverified_request_ttl", 600),
    );
    let tt = tgt.root_token();
    let from = |ip: Ipv4Addr, uuid: &str| {
        tgt.client().with_source(ip).post_json(
            "/replication/v1/requests",
            None,
            &request_body(uuid, &simple_csr().pem),
        )
    };
    // Twelve addresses of 127.0.0.0/24: five requests fill the network, the rest wait.
    let mut taken = Vec::new();
    for i in 2..14u8 {
        let r = from(
            Ipv4Addr::new(127, 0, 0, i),
            &format!("f1000000-0000-4000-8000-{i:012x}"),
        );
        match r.status {
            202 => taken.push(r.json()),
            429 => {
                assert!(
                    r.text()
                        .contains("too many open requests from 127.0.0.0/24"),
                    "{}",
                    r.text()
                );
                assert!(r.header("Retry-After").is_some());
            }
            other => panic!("{other}: {}", r.text()),
        }
    }
    assert_eq!(taken.len(), 5);
    for f in &taken {
        let left = f["expires"].as_i64().unwrap() - replgate::model::now();
        assert!(
            (590..=600).contains(&left),
            "unverified requests live 600 s: {left}"
        );
    }
    // Another network is not held up, and the front recorded each real address.
    let other = from(
        Ipv4Addr::new(127, 0, 1, 9),
        "e15e0000-0000-4000-8000-000000000001",
    );
    assert_eq!(other.status, 202, "{}", other.text());
    let pending = tgt
        .client()
        .get("/api/replication/pending", Some(&tt))
        .json();
    let addrs: Vec<&str> = pending["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["remote_addr"].as_str().unwrap())
        .collect();
    assert_eq!(
        addrs,
        [
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6",
            "127.0.1.9"
        ]
    );

    // One call ignores the whole network; the other network's request stays.
    let r = tgt.client().delete(
        "/api/replication/pending?remote_addr=127.0.0.77/24",
        Some(&tt),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["remote_addr"], "127.0.0.0/24");
    assert_eq!(v["ignored"], 5);
    let pending = tgt
        .client()
        .get("/api/replication/pending", Some(&tt))
        .json();
    assert_eq!(pending["pending"].as_array().unwrap().len(), 1);
    // The ignored sources see `expired`, and the network takes requests again.
    let poll = taken[0]["poll"].as_str().unwrap();
    let status = tgt.client().get(&format!("{poll}status.json"), None).json();
    assert_eq!(status["status"], "expired", "spool {}", spool_token(poll));
    assert_eq!(
        from(
            Ipv4Addr::new(127, 0, 0, 50),
            "1a7e0000-0000-4000-8000-000000000001"
        )
        .status,
        202
    );
    let rows = audit(&tgt, &tt);
    let bulk = rows
        .iter()
        .filter(|a| {
            a["action"] == "request ignored" && a["detail"] == "bulk ignore of 127.0.0.0/24"
        })
        .count();
    assert_eq!(bulk, 5);
    assert!(tgt
        .log()
        .contains("ignored 5 open requests from 127.0.0.0/24"));

    // Bad networks and a missing one are 400; a monitor may not ignore.
    for q in ["?remote_addr=127.0.0.0/33", "?remote_addr=nowhere", ""] {
        let r = tgt
            .client()
            .delete(&format!("/api/replication/pending{q}"), Some(&tt));
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(r.text().contains("remote_addr"), "{}", r.text());
    }
}

// ---- bad input on the token API, one test per class ----

#[test]
fn a_malformed_token_is_403_and_files_nothing() {
    let tgt = Daemon::start("tok-malformed", Options::default());
    let tt = tgt.root_token();
    for bad in [
        "x",
        "0123456789ab",
        "0123456789AB.00112233445566778899AABBCCDDEEFF",
        "../../etc.passwd",
    ] {
        assert_refused(
            &file_with(&tgt, "aaaa0001-0000-4000-8000-000000000001", Some(bad)),
            "not a pairing token",
        );
    }
    // A token of the wrong JSON type is a 400 naming the field.
    let mut body = request_body("aaaa0001-0000-4000-8000-000000000001", &simple_csr().pem);
    body["token"] = json!(12);
    let r = tgt
        .client()
        .post_json("/replication/v1/requests", None, &body);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("`token`"), "{}", r.text());
    assert_eq!(filed_count(&tgt, &tt), 0);
}

#[test]
fn token_fields_of_the_wrong_type_are_400_naming_the_field() {
    let tgt = Daemon::start("tok-types", Options::default());
    let tt = tgt.root_token();
    for (field, value) in [
        ("uses", json!("many")),
        ("expires_in", json!(true)),
        ("storage_id", json!([1])),
        ("quota_mb", json!(-5)),
        ("system_uuid", json!(7)),
        ("host", json!({"a": 1})),
        ("note", json!(5)),
        ("uses", json!(0)),
    ] {
        let r = tgt.client().post_json(
            "/api/replication/tokens",
            Some(&tt),
            &json!({ field: value }),
        );
        assert_eq!(r.status, 400, "{field}: {}", r.text());
        assert!(
            r.text().contains(&format!("`{field}`")),
            "{field}: {}",
            r.text()
        );
    }
    let r = tgt.client().post_json(
        "/api/replication/tokens",
        Some(&tt),
        &json!({"storage_id": 9}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(
        tokens_list(&tgt, &tt)["tokens"],
        json!([]),
        "nothing was issued"
    );
    // Revoking what is not there: 404; twice: 409.
    let r = tgt
        .client()
        .delete("/api/replication/tokens/000000000000", Some(&tt));
    assert_eq!(r.status, 404);
    let id = create_token(&tgt, &tt, json!({}))["token_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/replication/tokens/{id}");
    assert_eq!(tgt.client().delete(&path, Some(&tt)).status, 200);
    assert_eq!(tgt.client().delete(&path, Some(&tt)).status, 409);
}

#[test]
fn an_oversize_note_is_400_and_issues_nothing() {
    let tgt = Daemon::start("tok-note", Options::default());
    let tt = tgt.root_token();
    let r = tgt.client().post_json(
        "/api/replication/tokens",
        Some(&tt),
        &json!({"note": "n".repeat(257)}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("`note`") && r.text().contains("256"),
        "{}",
        r.text()
    );
    let ok = create_token(&tgt, &tt, json!({"note": "n".repeat(256)}));
    assert_eq!(ok["note"], "n".repeat(256));
    assert_eq!(
        tokens_list(&tgt, &tt)["tokens"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn expires_in_over_90_days_is_400_and_the_maximum_is_taken() {
    let tgt = Daemon::start("tok-expiry", Options::default());
    let tt = tgt.root_token();
    let max = 90 * 86_400;
    let r = tgt.client().post_json(
        "/api/replication/tokens",
        Some(&tt),
        &json!({"expires_in": max + 1}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("`expires_in`"), "{}", r.text());
    let before = replgate::model::now();
    let ok = create_token(&tgt, &tt, json!({"expires_in": max}));
    let expires = ok["expires"].as_i64().unwrap();
    assert!((before + max..=before + max + 5).contains(&expires));
    let default = create_token(&tgt, &tt, json!({}));
    let left = default["expires"].as_i64().unwrap() - before;
    assert!(
        (7 * 86_400..=7 * 86_400 + 5).contains(&left),
        "default 7 days: {left}"
    );
    // Only an administrator issues tokens.
    let r = tgt.client().post_json(
        "/api/users",
        Some(&tt),
        &json!({"name": "watcher", "privilege": "monitor", "password": "watcher-password-1"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let mt = tgt.login("watcher", "watcher-password-1");
    let r = tgt
        .client()
        .post_json("/api/replication/tokens", Some(&mt), &json!({}));
    assert_eq!(r.status, 403);
    assert_eq!(
        tgt.client()
            .get("/api/replication/tokens", Some(&mt))
            .status,
        200
    );
}
