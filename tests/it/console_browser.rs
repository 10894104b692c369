//! The web console in a real browser: headless Chromium driven over WebDriver
//! (`webdriver.rs`) against real daemons. These tests need Debian's `chromium` and
//! `chromium-driver`, so plain `cargo test` lists them as ignored (naming why) and
//! `.ci/run` installs both, runs them with `--ignored`, and fails unless every one of
//! them ran and passed. Without the packages they fail, naming the package.
//! Screenshots of every page land in `target/console-screenshots/`.
//!
//! One browser per test. A browser keeps cookies per host name, not per port, so a test
//! that uses two daemons' consoles reaches the source as `localhost` and the target as
//! `127.0.0.1` (both are names of each daemon).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::console::COOKIE;
use crate::harness::{
    pairing_opts, provider, request_body, scratch_dir, simple_csr, start_pair_with, systems_row,
    Daemon, Options, ADMIN_PASSWORD,
};
use crate::webdriver::{spki_hash, Browser, Launch};

/// Options for the daemons of a browser test.
fn browser_opts() -> Options {
    pairing_opts()
}

/// SPEC 16: the console's first load, everything transferred, is at most 100 KB.
const FIRST_LOAD_BUDGET: u64 = 100_000;

/// The console of `d` as `host` (`127.0.0.1` or `localhost`) names it.
fn console_url(d: &Daemon, host: &str, page: &str) -> String {
    format!("https://{host}:{}/#/{page}", d.api.port())
}

/// Opens the console at `page` and logs in as root through its form, unless this
/// browser's session on `host` is still open.
#[track_caller]
fn log_in(b: &Browser, d: &Daemon, host: &str, page: &str) {
    b.goto(&console_url(d, host, page));
    b.wait(&format!("#login, #page-{page}"));
    if b.count("#login") == 0 {
        return;
    }
    b.wait("#login input[name=username]").send_keys("root");
    b.wait("#login input[name=password]")
        .send_keys(ADMIN_PASSWORD);
    b.wait("#login button[type=submit]").click();
    b.wait(&format!("#page-{page}"));
}

/// Opens another page of a console already logged in and waits for `ready` on it.
#[track_caller]
fn visit(b: &Browser, d: &Daemon, host: &str, page: &str, ready: &str) {
    b.goto(&console_url(d, host, page));
    b.wait(&format!("#page-{page} {ready}"));
    b.screenshot(page);
}

/// A SHA-256 fingerprint as the console shows it: pairs joined by colons.
fn grouped(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
#[ignore = "browser: needs chromium and chromium-driver; .ci/run runs it"]
fn browser_a_source_asks_on_its_console_the_target_accepts_on_its_own_and_it_completes() {
    let dir = scratch_dir("console-storage");
    let config = dir.join("target.toml");
    let mut toml = String::new();
    for (id, name) in [(1, "main"), (2, "second")] {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).expect("storage dir");
        toml.push_str(&format!(
            "[[storage]]\nid = {id}\nname = \"{name}\"\npath = \"{}\"\nusage = \"backup\"\n",
            path.display()
        ));
    }
    // A bucket too: shown on the storage page and offered for an accept like the
    // directories. Its credentials file is private; nothing is sent to its endpoint.
    let creds = dir.join("s3-credentials.toml");
    std::fs::write(
        &creds,
        "access_key_id = \"AK\"\nsecret_access_key = \"browser-secret\"\n",
    )
    .expect("write credentials");
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    toml.push_str(&format!(
        "[[storage]]\nid = 3\nname = \"bucket\"\nkind = \"s3\"\nendpoint = \"http://127.0.0.1:9\"\n\
         bucket = \"backups\"\ncredentials_file = \"{}\"\npath_style = true\ncapacity_mb = 700\n",
        creds.display()
    ));
    std::fs::write(&config, toml).expect("write config");
    let mut target_opts = browser_opts();
    target_opts.config_file = Some(config);
    let (src, tgt) = start_pair_with("console-pair", browser_opts(), target_opts);
    let b = Browser::start("pairing", Launch::trusting(&[&src, &tgt]));

    // The source's admin asks; the target's CA is not trusted yet, so the console shows
    // the presented fingerprint with the warning, and the admin compares it out of band
    // (here: with the target's real fingerprint) before confirming.
    log_in(&b, &src, "localhost", "targets");
    b.wait("#ask input[name=target]")
        .send_keys(&tgt.api.to_string());
    b.wait("#ask button[name=ask]").click();
    let presented = b.wait("#presented-fingerprint");
    assert_eq!(
        presented.attribute("data-fingerprint").as_deref(),
        Some(tgt.ca_fingerprint().as_str())
    );
    assert_eq!(presented.text(), grouped(&tgt.ca_fingerprint()));
    let warning = b.wait("#trust").text();
    assert!(
        warning.contains("not trusted yet") && warning.contains("out of band")
            || warning.contains("over a channel you trust"),
        "{warning}"
    );
    b.screenshot("source-trust");
    b.wait("#trust button[name=trust]").click();
    let code = b.wait_for("#asked-code", |t| !t.is_empty()).text();
    assert_eq!(code.len(), 7, "{code}");
    b.screenshot("source-asked");

    // The target's admin sees the request with the same code, large, and this appliance's
    // own CA fingerprint (what the source's admin compared).
    log_in(&b, &tgt, "127.0.0.1", "pending");
    let card = "[data-request-id] .code";
    assert_eq!(b.wait_for(card, |t| !t.is_empty()).text(), code);
    let size = b.script(
        "return parseFloat(getComputedStyle(document.querySelector(arguments[0])).fontSize)",
        json!([card]),
    );
    assert!(
        size.as_f64().unwrap_or(0.0) >= 32.0,
        "verification code font size {size}"
    );
    assert_eq!(
        b.wait("#own-fingerprint").text(),
        grouped(&tgt.ca_fingerprint())
    );
    b.screenshot("pending");
    b.wait("[data-request-id] button[name=accept]").click();
    let options = b.count("select[name=storage] option");
    assert_eq!(
        options, 3,
        "both directory storages are offered, and the bucket"
    );
    b.wait("select[name=storage] option[value='2']").click();
    b.screenshot("pending-accept");
    b.wait("button[name=confirm-accept]").click();
    let done = b.wait_for(".notice", |t| t.contains("accepted")).text();
    assert!(done.contains("storage 2"), "{done}");
    let row = systems_row(&tgt.systems(&tgt.root_token()), |s| {
        s["role"] == "Non-Managed Replication Source"
    });
    assert_eq!(row["storage_id"], 2, "{row}");

    // Back on the source's console, which refreshes on its own: the pairing completes.
    b.goto(&console_url(&src, "localhost", "targets"));
    let complete = b.wait("#target-list article[data-status='complete']");
    assert!(complete.text().contains(&code), "{}", complete.text());
    assert_eq!(b.wait("#target-list ol.steps li.now").text(), "complete");
    b.screenshot("source-complete");

    // Every other page, on both sides, for the record.
    visit(&b, &tgt, "127.0.0.1", "systems", "table");
    b.wait_for("#page-systems td", |t| {
        t == "Non-Managed Replication Source"
    });
    visit(&b, &tgt, "127.0.0.1", "storage", "table");
    b.wait_for("#page-storage td", |t| t == "second");
    b.wait_for("#page-storage td", |t| t == "S3 bucket");
    b.wait_for("#page-storage td", |t| {
        t == "s3://backups at http://127.0.0.1:9"
    });
    visit(&b, &tgt, "127.0.0.1", "audit", "table");
    b.wait_for("#page-audit td", |t| t.contains("accept"));
    visit(&b, &src, "localhost", "systems", "table");

    // A backup moves: held to 100 kB/s so that its progress, rate and ETA can be watched
    // on the source's queue page (refreshing on its own) and, while it runs, on the
    // target's as a transfer from the source.
    let token = src.root_token();
    throttle(
        &src,
        &token,
        json!([{"percentage": 10, "days": [0, 1, 2, 3, 4, 5, 6], "start": 0, "end": 0}]),
        8,
    );
    let size = 2_000_000;
    write_backup(&src, "web01/monday.vbk", size);
    b.goto(&console_url(&src, "localhost", "queue"));
    let row = "#queue-active tbody tr[data-backup='web01/monday.vbk']";
    b.wait_for(&format!("{row} .pct"), |t| t != "0 %" && t != "100 %");
    let (done, max) = (
        b.script(
            "return document.querySelector(arguments[0]).value",
            json!([format!("{row} progress")]),
        ),
        b.script(
            "return document.querySelector(arguments[0]).max",
            json!([format!("{row} progress")]),
        ),
    );
    let (done, max) = (done.as_f64().unwrap_or(0.0), max.as_f64().unwrap_or(0.0));
    assert!(
        done > 0.0 && done < max && max == size as f64,
        "progress {done} of {max}"
    );
    let rate = b.wait(&format!("{row} .rate")).text();
    assert!(rate.ends_with("B/s"), "rate {rate}");
    let eta = b.wait(&format!("{row} .eta")).text();
    assert!(eta.ends_with(" s") || eta.contains("min"), "eta {eta}");
    b.screenshot("queue-active");
    b.goto(&console_url(&tgt, "127.0.0.1", "queue"));
    b.wait_for(
        "#queue-active tbody tr[data-backup='web01/monday.vbk']",
        |t| t.contains("from system"),
    );
    b.screenshot("target-queue-incoming");
    throttle(&src, &token, json!([]), 8);
    b.goto(&console_url(&src, "localhost", "queue"));
    let finished = b.wait_for(
        "#queue-done tbody tr[data-backup='web01/monday.vbk']",
        |t| t.contains("done"),
    );
    assert!(finished.text().contains("2.00 MB"), "{}", finished.text());
    b.screenshot("queue-done");

    // The next day's backup holds the same bytes under a new name: the target builds it
    // from what it holds, and the finished row says how much the link was spared.
    write_backup(&src, "web01/tuesday.vbk", size);
    let tuesday = b.wait_for(
        "#queue-done tbody tr[data-backup='web01/tuesday.vbk'] .saved",
        |t| t.ends_with("% saved"),
    );
    let saved: u64 = tuesday
        .text()
        .split(' ')
        .next()
        .unwrap_or("")
        .parse()
        .unwrap_or(0);
    assert!(saved >= 50, "{}", tuesday.text());

    // The source loses Monday's backup and restores it on this page: the item shows as a
    // restore from the target, finishes, and the file is back, byte for byte.
    let monday = src.data_dir.join("storage").join("web01/monday.vbk");
    let original = std::fs::read(&monday).expect("read monday");
    std::fs::remove_file(&monday).expect("lose monday");
    b.wait("#restore select[name=restore_target] option");
    b.wait("#restore select[name=restore_what] option[value='backups']")
        .click();
    b.wait("#restore input[name=restore_names]")
        .send_keys("web01/monday.vbk");
    b.wait("#restore button[type=submit]").click();
    b.wait_for(".notice", |t| t.contains("1 backup queued to restore from"));
    let restored = b.wait_for(
        "#queue-done tbody tr[data-direction='restore'][data-backup='web01/monday.vbk']",
        |t| t.contains("done"),
    );
    assert!(
        restored.text().contains("restore from"),
        "{}",
        restored.text()
    );
    assert_eq!(std::fs::read(&monday).ok(), Some(original));
    b.screenshot("queue-restored");

    // A drill from the same page: the last one shows with its result.
    write_backup(&src, "web01/wednesday.vbk", size);
    b.wait_for(
        "#queue-done tbody tr[data-backup='web01/wednesday.vbk']",
        |t| t.contains("done"),
    );
    b.wait("#drill button[name=drill]").click();
    let drill = b.wait_for("#drill", |t| t.contains("passed")).text();
    assert!(drill.contains("Last success: 2"), "{drill}");
    b.screenshot("queue-drill");
    recycle_on_the_target(&b, &tgt);
}

/// The target's Received backups page: the last verify, then a retention policy set
/// there moves the older copies to the recycle bin, one is put back, one purged.
fn recycle_on_the_target(b: &Browser, tgt: &Daemon) {
    log_in(b, tgt, "127.0.0.1", "received");
    let held = |name: &str| format!("#received-list tbody tr[data-backup='web01/{name}.vbk']");
    let binned = |name: &str| format!("#recycle [data-backup='web01/{name}.vbk']");
    b.wait(&held("wednesday"));
    b.wait("#verify button[name=verify]").click();
    let verify = b
        .wait_for("#verify", |t| {
            t.starts_with("Last verify 2") && t.contains("3 of 3")
        })
        .text();
    assert!(
        verify.contains("3 of 3 read, 0 damaged, 0 missing"),
        "{verify}"
    );
    b.wait("#retention input[name=keep_last]").send_keys("1");
    b.wait("#retention button[name=save-retention]").click();
    b.wait_for(".notice", |t| t.contains("Retention saved"));
    b.wait(&binned("monday"));
    b.wait(&binned("tuesday"));
    assert_eq!(b.count(&held("monday")), 0, "monday is still held");
    b.screenshot("received-binned");
    b.wait(&format!("{} button[name=restore]", binned("monday")))
        .click();
    b.wait_for(".notice", |t| t.contains("is back"));
    b.wait(&held("monday"));
    b.wait(&format!("{} button[name=purge]", binned("tuesday")))
        .click();
    b.wait(&format!("{} button[name=confirm-purge]", binned("tuesday")))
        .click();
    b.wait_for(".notice", |t| {
        t.contains("web01/tuesday.vbk purged (2.00 MB)")
    });
    b.wait_for("#recycle", |t| t.contains("The bin is empty."));
    b.screenshot("received-purged");
    let sid = systems_row(&tgt.systems(&tgt.root_token()), |s| {
        s["role"] == "Non-Managed Replication Source"
    })["id"]
        .clone();
    let bin = tgt
        .client()
        .get(
            &format!("/api/replication/recycle?sid={sid}"),
            Some(&tgt.root_token()),
        )
        .json();
    assert_eq!(bin["retention"]["keep_last"], 1, "{bin}");
    assert_eq!(bin["recycle"], json!([]), "{bin}");
}

/// Sets the source's throttle windows on a link of `link_mbps`.
fn throttle(src: &Daemon, token: &str, windows: Value, link_mbps: u64) {
    let r = src.client().send_json(
        "PUT",
        "/api/replication/throttle",
        Some(token),
        &json!({"throttle": windows, "link_mbps": link_mbps}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Writes a backup of `size` bytes into the source's backup storage as an engine does:
/// under a dot name, then renamed into place.
fn write_backup(src: &Daemon, name: &str, size: usize) {
    let path = src.data_dir.join("storage").join(name);
    let dir = path.parent().expect("client dir");
    std::fs::create_dir_all(dir).expect("client dir");
    let tmp = dir.join(".partial");
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(&tmp, bytes).expect("write backup");
    std::fs::rename(&tmp, &path).expect("rename backup");
}

#[test]
#[ignore = "browser: needs chromium and chromium-driver; .ci/run runs it"]
fn browser_a_rejection_needs_a_message_and_the_source_reads_it_and_names_show_escaped() {
    let (src, tgt) = start_pair_with("console-reject", browser_opts(), browser_opts());
    let b = Browser::start("reject", Launch::trusting(&[&src, &tgt]));
    let asked = src.client().post_json(
        "/api/replication/target",
        Some(&src.root_token()),
        &json!({"type": "appliance", "target": tgt.api.to_string(), "fingerprint": tgt.ca_fingerprint()}),
    );
    assert_eq!(asked.status, 201, "{}", asked.text());
    let id = asked.json()["request_id"].as_u64().expect("request_id");
    // A hostile peer files a request whose name and asset tag carry a bidi override,
    // markup, a zero-width space and an isolate (its host has a strict alphabet).
    let mut hostile = request_body("6b0e0b6a-9c1e-4e2f-8a55-2f7f3d1c0001", &simple_csr().pem);
    hostile["name"] = json!("invoice\u{202e}fdp.exe <img src=x id=injected>");
    hostile["asset_tag"] = json!("tag\u{200b}\u{2066}x\\u{41}");
    let filed = tgt
        .client()
        .post_json("/replication/v1/requests", None, &hostile);
    assert_eq!(filed.status, 202, "{}", filed.text());
    let hostile_id = filed.json()["request_id"].as_u64().expect("request_id");

    log_in(&b, &tgt, "127.0.0.1", "pending");
    let hostile_card = format!("[data-request-id='{hostile_id}']");
    let shown = b.wait(&hostile_card).text();
    // A backslash shows doubled, so a peer cannot write a fake escape.
    for visible in [
        "invoice\\u{202e}fdp.exe <img src=x id=injected>",
        "tag\\u{200b}\\u{2066}x\\\\u{41}",
    ] {
        assert!(
            shown.contains(visible),
            "{visible:?} not shown in:\n{shown}"
        );
    }
    assert!(
        !shown.contains('\u{202e}') && !shown.contains('\u{200b}'),
        "{shown}"
    );
    assert_eq!(
        b.count("#injected"),
        0,
        "markup from a peer became an element"
    );
    assert_eq!(b.count(&format!("{hostile_card} .esc")), 4);
    b.screenshot("hostile-names");

    let card = format!("[data-request-id='{id}']");
    b.wait(&format!("{card} button[name=reject]")).click();
    let send = b.wait(&format!("{card} button[name=confirm-reject]"));
    assert!(!send.enabled(), "a rejection without a message can be sent");
    let message = b.wait(&format!("{card} textarea[name=message]"));
    message.send_keys("   ");
    assert!(!send.enabled(), "a blank message counts as a message");
    message.send_keys("Call us first \u{202e}please");
    assert!(send.enabled());
    b.screenshot("pending-reject");
    send.click();
    b.wait_for(".notice", |t| t.contains(&format!("Request {id} rejected")));
    assert_eq!(b.count(&card), 0, "the rejected request is still listed");

    // The source's console shows the rejection with the target's words, escaped as well.
    log_in(&b, &src, "localhost", "targets");
    let rejected = b.wait_for("#target-list article[data-status='rejected']", |t| {
        t.contains("Call us first")
    });
    assert!(
        rejected.text().contains("Call us first \\u{202e}please"),
        "{}",
        rejected.text()
    );
    b.screenshot("source-rejected");

    // The target's admin issues a pairing token instead; its secret shows once.
    log_in(&b, &tgt, "127.0.0.1", "tokens");
    b.wait("#token-create input[name=note]")
        .send_keys("for the source that called");
    b.wait("#token-create button[name=create]").click();
    let join = b
        .wait_for("#token-join", |t| t.starts_with("replgate-join/1/"))
        .text();
    assert!(join.contains(&tgt.ca_fingerprint()), "{join}");
    b.wait_for("#token-list td", |t| t == "valid");
    b.screenshot("tokens-created");
    b.reload();
    b.wait_for("#token-list td", |t| t == "valid");
    assert_eq!(b.count("#token-join"), 0, "the secret shows again");
    assert!(!b
        .page_text()
        .contains(join.rsplit('/').next().unwrap_or("-")));

    // The source's admin pastes the join line: accepted at once, no one involved.
    b.goto(&console_url(&src, "localhost", "targets"));
    b.wait("#ask input[name=join]").send_keys(&join);
    b.wait("#ask button[name=join]").click();
    b.wait_for("#ask-outcome", |t| t.contains("Verification code"));
    b.wait_for("#target-list article[data-status='complete']", |t| {
        !t.is_empty()
    });
    b.screenshot("source-joined");

    // The source is lost: the target's admin issues a token that lets one new appliance
    // take it over, choosing the source by name.
    let tt = tgt.root_token();
    let sid = systems_row(&tgt.systems(&tt), |s| {
        s["role"] == "Non-Managed Replication Source"
    })["id"]
        .clone();
    log_in(&b, &tgt, "127.0.0.1", "tokens");
    b.wait(&format!(
        "#token-create select[name=replaces_system_id] option[value='{sid}']"
    ))
    .click();
    b.wait("#token-create button[name=create]").click();
    let says = b.wait("#token-takes-over").text();
    assert!(says.contains(&format!("takes over system {sid}")), "{says}");
    b.wait_for("#token-list td", |t| {
        t.contains(&format!("takes over system {sid}"))
    });
    b.screenshot("tokens-takeover");
    let tokens = tgt
        .client()
        .get("/api/replication/tokens", Some(&tt))
        .json();
    let bound: Vec<&Value> = tokens["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["replaces_system_id"] == sid)
        .collect();
    assert_eq!(bound.len(), 1, "{tokens}");
    assert_eq!(bound[0]["uses"], 1, "{tokens}");
}

/// A page on another origin of the same site (another port of 127.0.0.1), which the
/// browser treats as same-site, so it sends the console's `SameSite=Strict` cookie with
/// its form posts: only the console's own CSRF rule stands between it and the API.
struct Attacker {
    addr: SocketAddr,
    spki: String,
}

fn attacker_page(html: String) -> Attacker {
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("cert");
    let cert = key.cert.der().clone();
    let spki = spki_hash(cert.as_ref());
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], private)
            .expect("server config"),
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = tls.write_all(answer.as_bytes());
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    Attacker { addr, spki }
}

#[test]
#[ignore = "browser: needs chromium and chromium-driver; .ci/run runs it"]
fn browser_cross_site_forms_and_rebound_names_are_refused_and_logout_ends_the_session() {
    let d = Daemon::start("console-guard", browser_opts());
    let filed = d.file_request("6b0e0b6a-9c1e-4e2f-8a55-2f7f3d1c0002");
    // A form that posts JSON as text/plain (no preflight): an accept of the request.
    let form = format!(
        "<!doctype html><form id=f method=post enctype=text/plain action='https://127.0.0.1:{}/api/replication/source'>\
         <input type=hidden name='{{\"request_id\":{},\"accept\":true,\"x\":\"' value='\"}}'>\
         <button id=go>win a prize</button></form>",
        d.api.port(),
        filed.id
    );
    let attacker = attacker_page(form);
    let mut launch = Launch::trusting(&[&d]);
    launch.trust.push(attacker.spki.clone());
    launch
        .args
        .push("--host-resolver-rules=MAP rebound.test 127.0.0.1".into());
    let b = Browser::start("guard", launch);

    // The first load, everything transferred (page, styles, modules, icon, the session
    // probe), measured by the browser itself.
    b.goto(&console_url(&d, "127.0.0.1", "pending"));
    b.wait("#login input[name=username]");
    let weight = b.script(
        "const n = performance.getEntriesByType('navigation')[0];
         const r = performance.getEntriesByType('resource');
         return [n.transferSize, ...r.map((e) => e.transferSize)];",
        json!([]),
    );
    let sizes: Vec<u64> = weight
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    let total: u64 = sizes.iter().sum();
    eprintln!(
        "console first load: {total} bytes transferred in {} responses {sizes:?}",
        sizes.len()
    );
    assert!(sizes.len() >= 9 && sizes.iter().all(|s| *s > 0), "{weight}");
    assert!(total <= FIRST_LOAD_BUDGET, "first load {total} bytes");
    b.screenshot("login");

    log_in(&b, &d, "127.0.0.1", "pending");
    let cookies = b.cookies();
    let cookie = cookies
        .iter()
        .find(|c| c["name"] == COOKIE)
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(
        (&cookie["httpOnly"], &cookie["secure"], &cookie["sameSite"]),
        (&json!(true), &json!(true), &json!("Strict")),
        "{cookie}"
    );
    let token = cookie["value"].as_str().expect("cookie value").to_string();
    let script_sees = b.script("return document.cookie", json!([]));
    assert!(
        !script_sees.as_str().unwrap_or_default().contains(COOKIE),
        "{script_sees}"
    );

    // A same-site page posts a form: the cookie goes along, the CSRF rule refuses it.
    b.goto(&format!("https://127.0.0.1:{}/", attacker.addr.port()));
    b.wait("#go").click();
    b.wait_for("body", |t| t.contains("cross-site request refused"));
    b.screenshot("cross-site-form-refused");
    let root = d.root_token();
    let pending = d
        .client()
        .get("/api/replication/pending", Some(&root))
        .json();
    assert_eq!(pending["pending"][0]["status"], "pending", "{pending}");

    // A name that resolves to the appliance but is not one of its names (DNS rebinding).
    b.goto(&format!("https://rebound.test:{}/", d.api.port()));
    b.wait_for("body", |t| t.contains("does not answer to the host name"));
    b.screenshot("rebound-host-refused");

    // Superuser pages; then logout ends the session on the server, not just in the tab.
    visit(&b, &d, "127.0.0.1", "users", "table");
    b.wait_for("#page-users td", |t| t == "root");
    visit(&b, &d, "127.0.0.1", "audit", "table");
    b.wait("#logout").click();
    b.wait("#login input[name=username]");
    assert!(
        b.cookies().iter().all(|c| c["name"] != COOKIE),
        "{:?}",
        b.cookies()
    );
    let cookie = format!("{COOKIE}={token}");
    let after = d
        .client()
        .request("GET", "/api/session", &[("Cookie", cookie.as_str())], b"");
    assert_eq!(after.status, 401, "{}", after.text());
}
