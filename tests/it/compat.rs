//! Wire compatibility with the appliance API's real clients (SPEC 3 and 4), replayed
//! against a real daemon: the path shapes a public PowerShell toolkit and the appliance UI
//! send (`//api/...`, `/api/.../?`), JSON under a form content type, `Expect:
//! 100-continue`, ids as strings, the `sid` filter, `Allow` on 405, and the full field
//! sets of systems and storage rows. The spool stays exact.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{read_response, request_body, simple_csr, Daemon, Options, Response};
use replgate::api::{route_table, Access};
use replgate::model::Privilege;

const FORM: &str = "application/x-www-form-urlencoded";

/// What `Invoke-RestMethod -Method Post -Body (ConvertTo-Json ...)` sends: JSON under the
/// form content type.
fn form_post(d: &Daemon, method: &str, path: &str, token: Option<&str>, body: &Value) -> Response {
    let bytes = body.to_string().into_bytes();
    let mut headers = vec![("Content-Type", FORM)];
    if let Some(t) = token {
        headers.push(("AuthToken", t));
    }
    d.client().request(method, path, &headers, &bytes)
}

fn login_as_powershell(d: &Daemon, user: &str, password: &str) -> String {
    let r = form_post(
        d,
        "POST",
        "//api/login/",
        None,
        &json!({"username": user, "password": password}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["auth_token"].as_str().unwrap().to_string()
}

fn user_with(d: &Daemon, root: &str, name: &str, privilege: &str) -> String {
    let password = format!("{name}-password");
    let r = d.client().post_json(
        "/api/users",
        Some(root),
        &json!({"name": name, "password": password, "privilege": privilege}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    d.login(name, &password)
}

/// The error message of a documented error body.
#[test]
fn the_powershell_toolkit_and_wiki_shapes_reach_their_routes() {
    let d = Daemon::start("compat-shapes", Options::default());
    let root = login_as_powershell(&d, "root", crate::harness::ADMIN_PASSWORD);
    let c = d.client();

    // A pending request, so include_pending has something to show.
    let uuid = "91919191-0000-4333-8444-555555555555";
    assert_eq!(d.try_file_request(uuid, &simple_csr().pem).status, 202);

    let r = c.get(
        "//api/systems/?include_pending=1&include_rejected=1",
        Some(&root),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json()["appliance"].as_array().unwrap().clone();
    assert!(rows.iter().any(|s| s["local"] == true));
    assert!(rows
        .iter()
        .any(|s| s["system_uuid"] == uuid && s["is_pending"] == true));
    let plain = c.get(
        "/api/systems?include_pending=1&include_rejected=1",
        Some(&root),
    );
    assert_eq!(
        plain.json()["appliance"].as_array().unwrap().len(),
        rows.len()
    );

    for path in [
        "//api/storage",
        "//api/storage/",
        "/api/storage/?sid=1&usage=backup",
        "/api//storage?usage=backup",
        "//api/replication/pending/",
        "//api/replication/targets",
        "///api///users//",
        "//api/audit/?limit=5",
        "//api/health/",
        "//api/kb/404/",
    ] {
        let r = c.get(path, Some(&root));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let r = c.get("/api/storage/?sid=1&usage=backup", Some(&root));
    assert_eq!(r.json()["storage"][0]["usage"], "backup");

    // Writes with the same shapes: register, accept with string ids under the form type,
    // then the wiki's `PUT /api/replication/source/?sid=3` shape.
    let r = form_post(
        &d,
        "POST",
        "//api/systems/",
        Some(&root),
        &json!({"name": "dpu-7", "host": "dpu7.example"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = c.get("/api/replication/pending", Some(&root)).json()["pending"][0]["request_id"]
        .as_u64()
        .unwrap();
    let r = form_post(
        &d,
        "POST",
        "//api/replication/source/",
        Some(&root),
        &json!({"request_id": id.to_string(), "accept": "1", "storage_id": "1"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let sid = r.json()["system_id"].as_u64().unwrap();
    let r = form_post(
        &d,
        "PUT",
        &format!("/api/replication/source/?sid={sid}"),
        Some(&root),
        &json!({"storage_id": "1"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], sid);
    // A trailing slash on a path with a parameter.
    let r = c.request(
        "DELETE",
        "//api/replication/pending/999999/",
        &[("AuthToken", &root)],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.message().contains("999999"), "{}", r.text());
    let r = c.request(
        "DELETE",
        &format!("//api/replication/source/?sid={sid}"),
        &[("AuthToken", &root)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Only /api is normalized: the appliance protocol matches exactly.
    let r = c.post_json(
        "/replication/v1/requests/",
        None,
        &request_body("92929292-0000-4333-8444-555555555555", &simple_csr().pem),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.message().contains("no such path"), "{}", r.text());
}

/// A concrete path for a route pattern, with an unlikely value in every parameter.
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| match seg {
            "{code}" => "404",
            "{request_id}" => "987654",
            "{host}" => "nohost.example:1",
            s if s.starts_with('{') => "nobody",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_token_route_still_needs_its_token_and_privilege_on_a_normalized_path() {
    let d = Daemon::start("compat-authz", Options::default());
    let root = d.root_token();
    let monitor = user_with(&d, &root, "mon", "monitor");
    let c = d.client();
    let mut checked = 0;
    for r in route_table() {
        let Access::Token(needed) = r.access else {
            continue;
        };
        let path = format!("/{}/", concrete(r.path));
        let body: &[u8] = if matches!(r.method, "POST" | "PUT") {
            b"{}"
        } else {
            b""
        };
        let name = format!("{} {path}", r.method);
        let anonymous = c.request(r.method, &path, &[("Content-Type", FORM)], body);
        assert_eq!(anonymous.status, 401, "{name}: {}", anonymous.text());
        assert_eq!(anonymous.code(), 401, "{name}");
        let forged = c.request(
            r.method,
            &path,
            &[("AuthToken", "0".repeat(64).as_str())],
            body,
        );
        assert_eq!(forged.status, 401, "{name}: {}", forged.text());
        if needed > Privilege::Monitor {
            let low = c.request(r.method, &path, &[("AuthToken", &monitor)], body);
            assert_eq!(low.status, 403, "{name}: {}", low.text());
            assert_eq!(low.code(), 403, "{name}");
        } else if r.method == "GET" {
            // Enough privilege reaches the handler through the same normalized path.
            let ok = c.request(r.method, &path, &[("AuthToken", &monitor)], body);
            assert!(
                ![401, 403, 405].contains(&ok.status) && ok.status < 500,
                "{name}: {} {}",
                ok.status,
                ok.text()
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} token routes");
    // The monitor session survived all of it (nothing above logged it out).
    assert_eq!(c.get("/api/storage", Some(&monitor)).status, 200);
}

#[test]
fn spool_path_variants_stay_404() {
    let d = Daemon::start("compat-spool", Options::default());
    let r = d.try_file_request("93939393-0000-4333-8444-555555555555", &simple_csr().pem);
    assert_eq!(r.status, 202, "{}", r.text());
    let poll = r.json()["poll"].as_str().unwrap().to_string();
    let token = poll
        .trim_start_matches("/replication/v1/spool/")
        .trim_end_matches('/');
    let c = d.client();
    let exact = format!("{poll}status.json");
    assert_eq!(c.get(&exact, None).status, 200);
    let variants = [
        format!("/{exact}"),
        format!("//replication/v1/spool/{token}/status.json"),
        format!("/replication//v1/spool/{token}/status.json"),
        format!("/replication/v1//spool/{token}/status.json"),
        format!("/replication/v1/spool//{token}/status.json"),
        format!("/replication/v1/spool/{token}//status.json"),
        format!("/replication/v1/spool/{token}/status.json/"),
        format!("/replication/v1/spool/{token}/status.json//"),
        format!("/replication/v1/spool/{token}/./status.json"),
        format!("/replication/v1/spool/{token}/"),
        format!("/replication/v1/spool/{token}"),
        format!("/replication/v1/spool/{token}/x/../status.json"),
        format!("/replication/v1/spool/{token}%2fstatus.json"),
        format!("/replication/v1/spool/{token}/status.json%2f"),
        format!("/replication/v1/spool/{}/status.json", token.to_uppercase()),
        format!("/api/../replication/v1/spool/{token}/status.json"),
        format!("//api/../replication/v1/spool/{token}/status.json"),
    ];
    for path in &variants {
        for method in ["GET", "HEAD"] {
            let r = c.request(method, path, &[], b"");
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            if method == "GET" {
                assert_eq!(r.code(), 404, "{path}");
                assert!(!r.text().contains("pending"), "{path} leaked {}", r.text());
            }
        }
    }
}

/// Sends a request head with `Expect: 100-continue` and answers as curl and .NET do: wait
/// for `100 Continue` (up to `wait`), then send the body either way. Returns the final
/// response and whether a 100 arrived first.
fn post_expecting_continue(
    d: &Daemon,
    path: &str,
    token: &str,
    body: &[u8],
    wait: Duration,
) -> (Response, bool) {
    let mut tls = d.client().connect().unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {FORM}\r\nAuthToken: {token}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        d.api,
        body.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.flush().unwrap();
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while started.elapsed() < wait && !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let interim = String::from_utf8_lossy(&got).into_owned();
    let continued = interim.starts_with("HTTP/1.1 100");
    assert!(
        got.is_empty() || continued,
        "a final answer arrived before the body was sent: {interim}"
    );
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    tls.write_all(body).unwrap();
    tls.flush().unwrap();
    let r = read_response(&mut tls, false).unwrap();
    (r, continued)
}

#[test]
fn json_bodies_arrive_under_a_form_content_type_and_after_expect_100_continue() {
    let d = Daemon::start("compat-expect", Options::default());
    let root = login_as_powershell(&d, "root", crate::harness::ADMIN_PASSWORD);

    // Small body: the client waits for 100 Continue, then sends.
    let body = json!({"name": "dpu-a", "host": "a.example"}).to_string();
    let started = Instant::now();
    let (r, continued) = post_expecting_continue(
        &d,
        "//api/systems/",
        &root,
        body.as_bytes(),
        Duration::from_secs(2),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "dpu-a");
    assert!(continued, "no 100 Continue within 2 s");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body over 1 KiB (tiny_http hands those to a worker before they arrive) with an
    // unknown padding field, which is ignored.
    let body =
        json!({"name": "dpu-b", "host": "b.example", "padding": "x".repeat(4096)}).to_string();
    let (r, _) = post_expecting_continue(
        &d,
        "/api/systems",
        &root,
        body.as_bytes(),
        Duration::from_secs(2),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["host"], "b.example");

    // Head and body in one write, as clients that do not wait send them; an interim
    // 100 may still come first, and a client skips it.
    let body = json!({"name": "dpu-c", "host": "c.example"}).to_string();
    let mut tls = d.client().connect().unwrap();
    let raw = format!(
        "POST /api/systems/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {FORM}\r\nAuthToken: {root}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n{body}",
        d.api,
        body.len()
    );
    tls.write_all(raw.as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut r = read_response(&mut tls, false).unwrap();
    if r.status == 100 {
        let rest = r.body.clone();
        r = read_response(&mut (&rest[..]).chain(&mut tls), false).unwrap();
    }
    assert_eq!(r.status, 201, "{}", r.text());

    // The form type is not a way around validation: a wrong type is still a 400 naming it.
    let r = form_post(
        &d,
        "POST",
        "/api/systems",
        Some(&root),
        &json!({"name": 7, "host": "x"}),
    );
    assert_eq!(r.status, 400);
    assert!(r.message().contains("`name`"), "{}", r.text());
    let names: Vec<Value> = d
        .client()
        .get("/api/systems?include_pending=0", Some(&root))
        .json()["appliance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    for n in ["dpu-a", "dpu-b", "dpu-c"] {
        assert!(names.contains(&json!(n)), "{n} missing from {names:?}");
    }
}

#[test]
fn sid_means_this_appliance_on_every_api_read() {
    let d = Daemon::start("compat-sid", Options::default());
    let root = d.root_token();
    let c = d.client();
    let reads: Vec<String> = route_table()
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/api/") && !r.names_sid)
        .map(|r| concrete(r.path).replace("/404", "/400"))
        .collect();
    assert!(reads.len() >= 8, "{reads:?}");
    for path in &reads {
        let local = c.get(&format!("{path}?sid=1"), Some(&root));
        let none = c.get(path, Some(&root));
        assert_eq!(local.status, none.status, "{path}?sid=1: {}", local.text());
        assert!(local.status < 300, "{path}: {}", local.text());
        let other = c.get(&format!("{path}/?sid=7"), Some(&root));
        assert_eq!(other.status, 404, "{path}?sid=7: {}", other.text());
        assert!(other.message().contains("id 7"), "{}", other.text());
        let bad = c.get(&format!("{path}?sid=seven"), Some(&root));
        assert_eq!(bad.status, 400, "{path}?sid=seven: {}", bad.text());
        assert!(bad.message().contains("`sid`"), "{}", bad.text());
    }
    // A route that names a system by sid keeps its own meaning: 404 for an unknown system.
    let r = c.send_json(
        "PUT",
        "/api/replication/source?sid=1",
        Some(&root),
        &json!({"storage_id": 1}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.message().contains("no system with id 1"), "{}", r.text());
}

#[test]
fn a_405_carries_allow_with_the_paths_methods() {
    let d = Daemon::start("compat-allow", Options::default());
    let c = d.client();
    for (method, path, allow) in [
        ("DELETE", "/api/health", "GET, HEAD"),
        ("POST", "//api/health/", "GET, HEAD"),
        ("GET", "/api/replication/source", "POST, PUT, DELETE"),
        ("PATCH", "//api/users/", "GET, HEAD, POST"),
        ("OPTIONS", "/api/users/alice", "PUT, DELETE"),
        ("GET", "/api/login", "POST"),
        ("HEAD", "/api/login", "POST"),
        (
            "POST",
            "/replication/v1/spool/0123456789abcdef0123456789abcdef/status.json",
            "GET, HEAD",
        ),
    ] {
        let r = c.request(method, path, &[], b"");
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(r.header("Allow"), Some(allow), "{method} {path}");
        if method != "HEAD" {
            assert_eq!(r.code(), 405);
        }
    }
}

/// The SPEC 4 field set of every systems row, with the JSON type each must have.
const SYSTEM_FIELDS: &[(&str, &str)] = &[
    ("id", "integer"),
    ("name", "string"),
    ("host", "string"),
    ("asset_tag", "string"),
    ("role", "string"),
    ("local", "boolean"),
    ("version", "string"),
    ("version_status", "string"),
    ("online", "boolean"),
    ("status", "string"),
    ("message", "string"),
    ("total_mb_size", "integer"),
    ("total_mb_free", "integer"),
    ("archiving", "boolean"),
    ("replicating", "boolean"),
    ("system_uuid", "string"),
    ("created", "integer"),
    ("updated", "integer"),
];

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn assert_fields(row: &Value, fields: &[(&str, &str)]) {
    for (name, kind) in fields {
        assert_eq!(json_type(&row[*name]), *kind, "field {name} of {row}");
    }
}

fn systems(d: &Daemon, token: &str, query: &str) -> Vec<Value> {
    let r = d.client().get(&format!("/api/systems{query}"), Some(token));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["appliance"].as_array().unwrap().clone()
}

#[test]
fn systems_and_storage_rows_carry_the_appliances_full_field_set() {
    let dir = crate::harness::scratch_dir("compat-fields");
    let config = dir.join("replgate.toml");
    std::fs::create_dir_all(dir.join("main")).unwrap();
    std::fs::create_dir_all(dir.join("second")).unwrap();
    std::fs::write(
        &config,
        format!(
            "asset_tag = \"ASSET-0042\"\n\
             [[storage]]\nid = 1\nname = \"main\"\npath = \"{0}/main\"\n\
             [[storage]]\nid = 2\nname = \"second\"\npath = \"{0}/second\"\n\
             [[storage]]\nid = 3\nname = \"gone\"\npath = \"{0}/gone\"\nusage = \"archive\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let before = replgate::model::now();
    let mut d = Daemon::start(
        "compat-fields",
        Options {
            config_file: Some(config),
            ..Options::default()
        },
    );
    let root = d.root_token();
    let c = d.client();

    // Storage: type, status, sizes from the filesystem, totals counting the disk once.
    let st = c.get("/api/storage", Some(&root)).json();
    let list = st["storage"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for s in list {
        assert_fields(
            s,
            &[
                ("id", "integer"),
                ("name", "string"),
                ("type", "string"),
                ("usage", "string"),
                ("status", "string"),
                ("path", "string"),
                ("mb_size", "integer"),
                ("mb_free", "integer"),
                ("is_default", "boolean"),
            ],
        );
        assert_eq!(s["type"], "internal");
    }
    assert_eq!(list[0]["status"], "online");
    assert_eq!(list[2]["status"], "offline");
    assert_eq!(
        (list[2]["mb_size"].as_u64(), list[2]["mb_free"].as_u64()),
        (Some(0), Some(0))
    );
    let size = list[0]["mb_size"].as_u64().unwrap();
    assert!(size > 0);
    let totals = &st["totals"];
    for k in [
        "backup_mb_size",
        "backup_mb_free",
        "total_mb_size",
        "total_mb_free",
    ] {
        assert_eq!(json_type(&totals[k]), "integer", "totals.{k}");
    }
    // main and second are one filesystem: counted once; the offline one not at all.
    assert_eq!(totals["backup_mb_size"].as_u64(), Some(size));
    assert_eq!(totals["total_mb_size"].as_u64(), Some(size));
    let free = totals["backup_mb_free"].as_u64().unwrap();
    assert!(free > 0 && free <= size);

    // One row of each kind: managed, pending (asking for storage 2), paired source.
    let r = c.post_json(
        "/api/systems",
        Some(&root),
        &json!({"name": "dpu-1", "host": "dpu1.example", "asset_tag": "DPU-TAG"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let managed_id = r.json()["id"].as_u64().unwrap();
    let mut asking = request_body("94949494-0000-4333-8444-555555555555", &simple_csr().pem);
    asking["storage_id"] = json!("2");
    asking["asset_tag"] = json!("SRC-TAG-1");
    asking["version"] = json!("0.0.1");
    let r = c.post_json("/replication/v1/requests", None, &asking);
    assert_eq!(r.status, 202, "{}", r.text());
    let asking_id = r.json()["request_id"].as_u64().unwrap();
    let r = d.try_file_request("95959595-0000-4333-8444-555555555555", &simple_csr().pem);
    let paired_request = r.json()["request_id"].as_u64().unwrap();
    let r = c.post_json(
        "/api/replication/source",
        Some(&root),
        &json!({"request_id": paired_request, "accept": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let paired_id = r.json()["system_id"].as_u64().unwrap();

    let rows = systems(&d, &root, "");
    assert_eq!(rows.len(), 4, "{rows:?}");
    for row in &rows {
        assert_fields(row, SYSTEM_FIELDS);
        assert_eq!(row["archiving"], false);
    }
    let local = &rows[0];
    assert_eq!(local["local"], true);
    assert_eq!(local["id"], 1);
    assert_eq!(local["role"], "Local Appliance");
    assert_eq!(local["asset_tag"], "ASSET-0042");
    assert_eq!(local["online"], true);
    assert_eq!(local["version_status"], "current");
    assert_eq!(local["message"], "");
    assert_eq!(local["total_mb_size"].as_u64(), Some(size));
    assert!(local["total_mb_free"].as_u64().unwrap() > 0);
    let created = local["created"].as_i64().unwrap();
    assert!(
        created >= before && created <= replgate::model::now(),
        "{local}"
    );

    let managed = rows.iter().find(|s| s["id"] == managed_id).unwrap();
    assert_eq!(managed["role"], "Managed DPU");
    assert_eq!(managed["asset_tag"], "DPU-TAG");
    assert_eq!(
        (managed["online"].clone(), managed["version_status"].clone()),
        (json!(false), json!(""))
    );
    assert_eq!(
        (
            managed["total_mb_size"].as_u64(),
            managed["total_mb_free"].as_u64()
        ),
        (Some(0), Some(0))
    );

    let paired = rows.iter().find(|s| s["id"] == paired_id).unwrap();
    assert_eq!(paired["role"], "Non-Managed Replication Source");
    assert_eq!(paired["version"], "1.0");
    assert_eq!(paired["version_status"], "newer");
    assert_eq!(paired["online"], false, "never seen on the tunnel");
    assert_eq!(paired["storage_id"], 1);

    let pending = rows.iter().find(|s| s["is_pending"] == true).unwrap();
    assert_eq!(pending["id"].as_i64(), Some(-(asking_id as i64)));
    assert_eq!(pending["request_id"], asking_id);
    assert_eq!(pending["requested_storage_id"], 2);
    assert_eq!(pending["asset_tag"], "SRC-TAG-1");
    assert_eq!(pending["version_status"], "older");
    assert_eq!(pending["role"], "Pending Replication Source");
    // Paging (`start`, `count`): the pages together are the whole answer, the local row
    // on the first page, the pending rows on the page where the stored systems run out.
    for i in 0..3 {
        let r = c.post_json(
            "/api/systems",
            Some(&root),
            &json!({"name": format!("dpu-page-{i}"), "host": format!("page{i}.example")}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let is_stored = |r: &Value| r["local"] != true && r["is_pending"] != true;
    let ids = |rows: &[Value]| {
        rows.iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    let whole = systems(&d, &root, "");
    assert!(whole.iter().filter(|r| is_stored(r)).count() >= 5);
    let (mut paged, mut start) = (Vec::new(), 0);
    loop {
        let page = systems(&d, &root, &format!("?start={start}&count=2"));
        let n = page.iter().filter(|r| is_stored(r)).count();
        assert_eq!(
            page.iter().any(|r| r["local"] == true),
            start == 0,
            "{page:?}"
        );
        assert_eq!(
            page.iter().any(|r| r["is_pending"] == true),
            n < 2,
            "{page:?}"
        );
        paged.extend(page);
        if n < 2 {
            break;
        }
        start += 2;
    }
    assert_eq!(ids(&paged), ids(&whole));
    for bad in ["?count=0", "?start=-1", "?count=x", "?count=10001"] {
        let r = c.get(&format!("/api/systems{bad}"), Some(&root));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let listed = c.get("/api/replication/pending", Some(&root)).json();
    let entry = &listed["pending"][0];
    assert_eq!(entry["request_id"], asking_id);
    assert_eq!(entry["requested_storage_id"], 2);
    assert_eq!(entry["asset_tag"], "SRC-TAG-1");

    // The accept uses the storage the source asked for when the admin names none.
    let r = c.post_json(
        "/api/replication/source",
        Some(&root),
        &json!({"request_id": asking_id, "accept": 1}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let sid = r.json()["system_id"].as_u64().unwrap();
    let rows = systems(&d, &root, "?include_pending=0");
    let row = rows.iter().find(|s| s["id"] == sid).unwrap();
    assert_eq!(row["storage_id"], 2);
    assert_eq!(row["asset_tag"], "SRC-TAG-1");

    // The first start stays the first start across a restart; `updated` moves on.
    std::thread::sleep(Duration::from_millis(1100));
    d.restart();
    let root = d.root_token();
    let local = systems(&d, &root, "?include_pending=0")[0].clone();
    assert_eq!(local["created"].as_i64(), Some(created));
    assert!(local["updated"].as_i64().unwrap() > created, "{local}");
}

#[test]
fn a_requested_storage_that_cannot_hold_the_source_needs_the_admins_choice() {
    let d = Daemon::start("compat-requested", Options::default());
    let root = d.root_token();
    let mut body = request_body("96969696-0000-4333-8444-555555555555", &simple_csr().pem);
    body["storage_id"] = json!(9);
    let r = d
        .client()
        .post_json("/replication/v1/requests", None, &body);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["request_id"].as_u64().unwrap();
    let r = d.client().post_json(
        "/api/replication/source",
        Some(&root),
        &json!({"request_id": id, "accept": true}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.message().contains("`storage_id`") && r.message().contains("storage 9"),
        "{}",
        r.text()
    );
    // Nothing was decided: the admin names a storage and the accept goes through.
    let r = d.client().post_json(
        "/api/replication/source",
        Some(&root),
        &json!({"request_id": id, "accept": true, "storage_id": 1}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // A wrong type in the protocol body is a 400 naming the field.
    let mut bad = request_body("97979797-0000-4333-8444-555555555555", &simple_csr().pem);
    bad["storage_id"] = json!("two");
    let r = d.client().post_json("/replication/v1/requests", None, &bad);
    assert_eq!(r.status, 400);
    assert!(r.message().contains("`storage_id`"), "{}", r.text());
}

/// The appliance's source side sends `storage_id` and `ip` (SPEC 4): the request reaches
/// the target at `ip` although `target` names a host nobody can resolve, the target shows
/// the storage asked for and uses it, and the poller keeps using `ip` until `complete`.
#[test]
fn the_source_connects_to_ip_and_the_target_sees_the_storage_asked_for() {
    let (src, tgt) = std::thread::scope(|s| {
        let src = s.spawn(|| {
            Daemon::start(
                "compat-ip-src",
                crate::harness::pairing_opts().set("asset_tag", "SRC-ASSET-9"),
            )
        });
        let tgt = Daemon::start("compat-ip-tgt", crate::harness::pairing_opts());
        (
            src.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            tgt,
        )
    });
    let (st, tt) = (src.root_token(), tgt.root_token());
    // `.invalid` never resolves (RFC 2606): only `ip` can reach the target.
    let host = format!("target.invalid:{}", tgt.api.port());
    let body = json!({"type": "appliance", "target": host, "insecure": "1", "storage_id": "1", "ip": "127.0.0.1", "fingerprint": ""});
    let r = form_post(&src, "POST", "//api/replication/target/", Some(&st), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let request_id = r.json()["request_id"].as_u64().unwrap();
    let bad = form_post(
        &src,
        "POST",
        "/api/replication/target",
        Some(&st),
        &json!({"type": "appliance", "target": "x.invalid:1", "ip": "127.0.0.999"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.message().contains("`ip`"), "{}", bad.text());

    let pending = tgt
        .client()
        .get("/api/replication/pending", Some(&tt))
        .json();
    let row = &pending["pending"][0];
    assert_eq!(row["request_id"], request_id);
    assert_eq!(row["requested_storage_id"], 1);
    assert_eq!(row["asset_tag"], "SRC-ASSET-9");
    let r = tgt.client().post_json(
        "/api/replication/source",
        Some(&tt),
        &json!({"request_id": request_id, "accept": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let targets = crate::harness::eventually(Duration::from_secs(30), "complete", || {
        let t = src
            .client()
            .get("/api/replication/targets", Some(&st))
            .json();
        (t["targets"][0]["status"] == "complete").then_some(t)
    });
    assert_eq!(targets["targets"][0]["host"], host);
    let sys = tgt.systems(&tt);
    let paired = crate::harness::systems_row(&sys, |s| {
        s["system_uuid"].is_string() && s["local"] == false
    });
    assert_eq!(paired["storage_id"], 1);
    assert_eq!(paired["asset_tag"], "SRC-ASSET-9");
    assert_eq!(paired["online"], true, "it just proved the tunnel");
    assert_eq!(paired["status"], "connected");
}
