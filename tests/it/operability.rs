//! What an admin meets without reading the code: log lines with times (or journald
//! priorities), errors said once and naming what to do, start-up warnings about settings
//! that do not do what one might think.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::{scratch_dir, Daemon, Options};

/// `replgate serve` with only `env`, its standard error going to `log`; waits for it.
fn serve_once(log: &Path, env: &[(&str, String)]) -> Output {
    let file = std::fs::File::create(log).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_replgate"))
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .output()
        .unwrap();
    assert!(!status.status.success(), "this start was meant to fail");
    status
}

/// A daemon start that fails at once: its data directory is a file.
fn failing_env(dir: &Path) -> Vec<(&'static str, String)> {
    let not_a_dir = dir.join("not-a-directory");
    std::fs::write(&not_a_dir, b"x").unwrap();
    vec![("REPLGATE_DATA_DIR", not_a_dir.display().to_string())]
}

#[test]
fn log_lines_have_a_utc_time_and_under_journald_a_priority_instead() {
    let dir = scratch_dir("op-logs");
    let log = dir.join("plain.log");
    serve_once(&log, &failing_env(&dir));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // The error, once: as a log line, not also as a second `replgate:` line.
    assert_eq!(lines.len(), 1, "{text}");
    let (time, rest) = lines[0].split_once(' ').unwrap();
    assert_eq!(time.len(), "2025-12-01T10:00:00.123Z".len(), "{text}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{text}");
    assert!(rest.starts_with("[ERROR] "), "{text}");
    assert!(rest.contains("not-a-directory"), "{text}");

    // Under journald: the journal's stream on standard error, named by JOURNAL_STREAM.
    let log = dir.join("journal.log");
    std::fs::write(&log, b"").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let mut env = failing_env(&dir);
    env.push(("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino())));
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_replgate"))
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stderr(file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("<3>[ERROR] "), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    // A JOURNAL_STREAM naming another file is not journald.
    let mut env = failing_env(&dir);
    env.push(("JOURNAL_STREAM", "1:2".into()));
    let log = dir.join("elsewhere.log");
    serve_once(&log, &env);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.starts_with('<') && text.contains(" [ERROR] "),
        "{text}"
    );
}

#[test]
fn a_log_filter_that_would_show_nothing_is_refused() {
    // In the configuration: check-config says so, naming the key (exit 3).
    let out = Command::new(env!("CARGO_BIN_EXE_replgate"))
        .arg("check-config")
        .env_clear()
        .env("REPLGATE_LOG", "verbose")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log") && err.contains("\"verbose\""), "{err}");
    // In RUST_LOG (which wins over `log`): reported, and `log` used, so errors still show.
    let dir = scratch_dir("op-rust-log");
    let mut env = failing_env(&dir);
    env.push(("RUST_LOG", "verbose".into()));
    let log = dir.join("serve.log");
    serve_once(&log, &env);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("RUST_LOG ignored") && text.contains(" [ERROR] "),
        "{text}"
    );
}

#[test]
fn a_second_daemon_on_the_same_data_directory_names_it_and_the_other_replgate() {
    let d = Daemon::start("op-twice", Options::default());
    let dir = scratch_dir("op-twice-second");
    let log = dir.join("second.log");
    let env = vec![
        ("REPLGATE_DATA_DIR", d.data_dir.display().to_string()),
        ("REPLGATE_API_LISTEN", "127.0.0.1:0".to_string()),
        ("REPLGATE_TUNNEL_LISTEN", "127.0.0.1:0".to_string()),
    ];
    serve_once(&log, &env);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&d.data_dir.display().to_string()) && text.contains("another replgate"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "said once: {text}");
}

#[test]
fn settings_that_do_not_do_what_they_seem_are_warned_about_at_start() {
    // The harness always gives REPLGATE_ADMIN_PASSWORD; after the first start it is moot.
    let mut d = Daemon::start("op-warnings", Options::default());
    assert!(!d.log().contains("REPLGATE_ADMIN_PASSWORD ignored"));
    d.restart();
    let log = d.log();
    assert!(
        log.contains("REPLGATE_ADMIN_PASSWORD ignored") && log.contains("[WARN ]"),
        "{log}"
    );

    let f = Daemon::start(
        "op-fault",
        Options::default().set("fault", "crash_after_accept_commit"),
    );
    assert!(f.log().contains("fault injection is on"), "{}", f.log());
}

/// The log's line for `action` on `object`, if there is one.
fn event<'a>(log: &'a str, action: &str, object: &str) -> Option<&'a str> {
    log.lines()
        .find(|l| l.contains(" [INFO ] ") && l.contains(&format!("{action} {object}")))
}

#[test]
fn every_pairing_event_is_one_info_line_naming_the_request_or_system_and_the_peer() {
    let d = Daemon::start("op-events", Options::default());
    let root = d.root_token();
    let resolve = |body: serde_json::Value| {
        let r = d
            .client()
            .post_json("/api/replication/source", Some(&root), &body);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    };
    let accepted = d.file_request("e0e0e0e0-0000-4333-8444-555555555555");
    let rejected = d.file_request("e0e0e0e0-0001-4333-8444-555555555555");
    let ignored = d.file_request("e0e0e0e0-0002-4333-8444-555555555555");
    let sid = resolve(serde_json::json!({"request_id": accepted.id, "accept": true}))["system_id"]
        .as_u64()
        .unwrap();
    resolve(serde_json::json!({"request_id": rejected.id, "accept": false, "message": "no"}));
    let r = d.client().delete(
        &format!("/api/replication/pending/{}", ignored.id),
        Some(&root),
    );
    assert_eq!(r.status, 200);
    let r = d
        .client()
        .delete(&format!("/api/replication/source?sid={sid}"), Some(&root));
    assert_eq!(r.status, 200);
    let log = d.log();
    for (action, object) in [
        ("request filed", format!("request:{}", accepted.id)),
        ("request accepted", format!("request:{}", accepted.id)),
        ("request rejected", format!("request:{}", rejected.id)),
        ("request ignored", format!("request:{}", ignored.id)),
        ("source unpaired", format!("system:{sid}")),
    ] {
        let line = event(&log, action, &object)
            .unwrap_or_else(|| panic!("no event line for {action} {object}:\n{log}"));
        assert!(line.contains("from 127.0.0.1"), "{line}");
    }

    let e = Daemon::start("op-expiry", Options::default().set("request_ttl", 1));
    let filed = e.file_request("e0e0e0e0-0003-4333-8444-555555555555");
    crate::harness::eventually(
        std::time::Duration::from_secs(10),
        "the expiry's event line",
        || {
            event(
                &e.log(),
                "request expired",
                &format!("request:{}", filed.id),
            )
            .map(|_| ())
        },
    );
}

#[test]
fn both_sides_of_a_pairing_log_it() {
    let (src, tgt) = crate::harness::start_pair("op-pair");
    let (st, tt) = (src.root_token(), tgt.root_token());
    let body = serde_json::json!({"type": "appliance", "target": tgt.api.to_string(),
                                  "fingerprint": tgt.ca_fingerprint()});
    let r = src
        .client()
        .post_json("/api/replication/target", Some(&st), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["request_id"].clone();
    let r = tgt.client().post_json(
        "/api/replication/source",
        Some(&tt),
        &serde_json::json!({"request_id": id, "accept": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let target = tgt.api.to_string();
    crate::harness::eventually(
        std::time::Duration::from_secs(crate::harness::POLL + 8),
        "the source's complete line",
        || {
            src.log()
                .lines()
                .any(|l| l.contains(&format!("({target}): complete")))
                .then_some(())
        },
    );
    assert!(
        event(&src.log(), "target requested", "").is_some(),
        "{}",
        src.log()
    );
    let collected = crate::harness::eventually(
        std::time::Duration::from_secs(5),
        "the target's collected line",
        || event(&tgt.log(), "pairing collected", "system:").map(String::from),
    );
    assert!(collected.contains("from tunnel"), "{collected}");
}
