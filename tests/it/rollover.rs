//! CA rollover (SPEC 22) with real daemons: a target replaces its CA while several sources
//! keep working (one transferring through it, one off for the whole window), with no failed
//! handshake counted; a source pairing mid-rollover; an abort; a forged new CA; and kill -9
//! of either side at each phase. A short `rollover_window` (a minute) stands for the 90
//! days of production; sources renew onto the new CA at once because the target asks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use crate::crash_pair::unix_now;
use crate::ctl::Ctl;
use crate::harness::{
    eventually, pair, pairing_opts, pem_certs, provider, scratch_dir, Daemon, Options, Response,
    POLL,
};
use crate::pairing::{pairing_dir, request, target_row, tunnel_hello, tunnel_request, wait_status};
use crate::replication::{
    content, received_path, throttle_to, wait_item, wait_progress, write_backup,
};

/// `rollover_window` of the tests' targets, in seconds (its minimum).
const WINDOW: u64 = 60;
/// Longest wait for sources to move after a phase (a heartbeat, a renewal, a hello).
const MOVED: Duration = Duration::from_secs(60);
/// What a source that was off through a whole rollover says.
const REPLACED: &str =
    "the target replaced its CA while this appliance was offline: pair again (a pairing token works)";

pub(crate) fn rollover_target() -> Options {
    pairing_opts().set("rollover_window", WINDOW)
}

/// Starts the daemons side by side (each start makes a CA and hashes a password).
pub(crate) fn start_all(specs: Vec<(String, Options)>) -> Vec<Daemon> {
    std::thread::scope(|s| {
        let running: Vec<_> = specs
            .into_iter()
            .map(|(name, opts)| s.spawn(move || Daemon::start(&name, opts)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// `POST /api/ca/rollover {"phase"}`.
pub(crate) fn phase(tgt: &Daemon, tt: &str, phase: &str) -> Response {
    tgt.client()
        .post_json("/api/ca/rollover", Some(tt), &json!({ "phase": phase }))
}

/// `GET /api/ca/rollover`.
pub(crate) fn status(tgt: &Daemon, tt: &str) -> Value {
    let r = tgt.client().get("/api/ca/rollover", Some(tt));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The chain source `sid` is on in a status.
pub(crate) fn chain(status: &Value, sid: u64) -> String {
    status["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["sid"] == sid))
        .and_then(|s| s["chain"].as_str())
        .unwrap_or("-")
        .to_string()
}

/// Waits until every source of `sids` is on the new chain of the target's newest CA.
pub(crate) fn wait_moved(tgt: &Daemon, tt: &str, sids: &[u64], within: Duration) -> Value {
    eventually(
        within,
        &format!("sources {sids:?} on the new chain"),
        || {
            let st = status(tgt, tt);
            sids.iter()
                .all(|sid| chain(&st, *sid) == "new")
                .then_some(st)
        },
    )
}

/// The target's failed TLS handshakes so far: (api, tunnel).
fn handshake_failures(tgt: &Daemon, tt: &str) -> (f64, f64) {
    let r = tgt.client().get("/api/metrics", Some(tt));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let value = |listener: &str| {
        let prefix = format!("replgate_tls_handshake_failures_total{{listener=\"{listener}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (value("api"), value("tunnel"))
}

/// The chain the target's API listener presents now (leaf first).
fn presented_chain(tgt: &Daemon) -> Vec<CertificateDer<'static>> {
    let tls = tgt.client().connect().expect("connect to the api listener");
    tls.conn
        .peer_certificates()
        .expect("a server chain")
        .iter()
        .map(|c| c.clone().into_owned())
        .collect()
}

fn fingerprint(der: &[u8]) -> String {
    replgate::ca::sha256_hex(der)
}

/// The key and certificate a source presents now: its pairing directory holds only the
/// installed generation once a renewal is proven (`cert.pem`, or the one `cert-<g>.pem`).
pub(crate) fn installed_identity(src: &Daemon) -> crate::pairing::Identity {
    let dir = pairing_dir(src);
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let g: u64 = match name.as_str() {
                "cert.pem" => 0,
                n => n
                    .strip_prefix("cert-")?
                    .strip_suffix(".pem")?
                    .parse()
                    .ok()?,
            };
            Some(g)
        })
        .max()
        .expect("an installed certificate");
    let (key, cert) = match newest {
        0 => ("key.pem".to_string(), "cert.pem".to_string()),
        g => (format!("key-{g}.pem"), format!("cert-{g}.pem")),
    };
    let chain = pem_certs(&std::fs::read(dir.join(cert)).unwrap());
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(dir.join(key)).unwrap()).unwrap();
    (chain, key)
}

/// The CA files in a data directory, sorted.
pub(crate) fn ca_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ca") && (n.ends_with(".pem") || n.ends_with(".key")))
        .collect();
    names.sort();
    names
}

/// Fingerprints of the certificates of the data directory's `ca.pem`.
pub(crate) fn trust_file(d: &Daemon) -> Vec<String> {
    pem_certs(&std::fs::read(d.data_dir.join("ca.pem")).unwrap())
        .iter()
        .map(|c| fingerprint(c))
        .collect()
}

fn sleep_until(unix: i64) {
    let left = unix - unix_now();
    if left > 0 {
        std::thread::sleep(Duration::from_secs(left as u64));
    }
}

#[test]
fn a_ca_rollover_moves_every_source_with_no_failed_handshake_and_the_one_away_pairs_again() {
    let mut daemons = start_all(vec![
        ("roll-tgt".into(), rollover_target()),
        ("roll-s1".into(), pairing_opts()),
        ("roll-s2".into(), pairing_opts()),
        ("roll-s3".into(), pairing_opts()),
    ]);
    let mut s3 = daemons.pop().unwrap();
    let s2 = daemons.pop().unwrap();
    let s1 = daemons.pop().unwrap();
    let tgt = daemons.pop().unwrap();
    let tt = tgt.root_token();
    let old_fp = tgt.ca_fingerprint();
    let (p1, p2, p3) = (
        pair(&s1, &tgt, json!({})),
        pair(&s2, &tgt, json!({})),
        pair(&s3, &tgt, json!({})),
    );
    // Source 2 is in the middle of a throttled transfer (about 25 s) when the rollover
    // starts; source 3 is off for the whole window.
    let st2 = s2.root_token();
    throttle_to(&s2, &st2, 250_000);
    let big = content(5, 6 << 20);
    write_backup(&s2, "r/big", &big);
    wait_progress(&s2, &st2, "r/big", 256 << 10, Duration::from_secs(30));
    let s3_identity = crate::pairing::identity(&pairing_dir(&s3));
    assert!(s3.stop().success());
    let before = handshake_failures(&tgt, &tt);

    // Start: a new CA, cross-signed by the old one, signs from now on.
    let r = phase(&tgt, &tt, "start");
    assert_eq!(r.status, 200, "{}", r.text());
    let started = r.json();
    assert_eq!(started["phase"], "rolling");
    assert_eq!(
        started["ca_fingerprint"],
        old_fp.as_str(),
        "sources still pin the old CA"
    );
    let new_fp = started["new_ca_fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new_fp, old_fp);
    assert_eq!(trust_file(&tgt), [old_fp.clone(), new_fp.clone()]);
    let public = tgt.client().get("/replication/v1/ca", None).json();
    assert_eq!(
        (public["phase"].as_str(), public["renew"].as_bool()),
        (Some("rolling"), Some(false))
    );
    let new_der = replgate::ca::cert_pem_to_der(public["next"].as_str().unwrap()).unwrap();
    let cross_der = replgate::ca::cert_pem_to_der(public["cross"].as_str().unwrap()).unwrap();

    // Within a tick the listeners present a certificate of the new CA with the
    // cross-certificate and the old CA: a client that trusts only the old CA (this
    // harness's, and every source's) verifies it.
    let chain_now = eventually(
        Duration::from_secs(5),
        "the new-chain listener certificate",
        || {
            let c = presented_chain(&tgt);
            replgate::ca::issued_by(&c[0], &new_der).then_some(c)
        },
    );
    assert_eq!(
        chain_now
            .iter()
            .skip(1)
            .map(|c| c.as_ref().to_vec())
            .collect::<Vec<_>>(),
        [cross_der.clone(), tgt_old_der(&public)],
        "leaf, cross-certificate, old CA"
    );

    // The online sources learn the new CA at their heartbeat and renew onto it at once.
    let moved = wait_moved(&tgt, &tt, &[p1.sid, p2.sid], MOVED);
    assert_eq!(chain(&moved, p3.sid), "old");
    assert_eq!(moved["old_chain"], 1, "{moved}");
    let st1 = s1.root_token();
    for (src, token) in [(&s1, &st1), (&s2, &st2)] {
        let row = target_row(src, token);
        assert_eq!(row["ca_fingerprint"], old_fp.as_str(), "{row}");
        assert_eq!(row["ca_next_fingerprint"], new_fp.as_str(), "{row}");
        let (leaf, _) = installed_identity(src);
        assert!(
            replgate::ca::issued_by(&leaf[0], &new_der),
            "a new-chain certificate"
        );
    }
    let metrics = tgt.client().get("/api/metrics", Some(&tt)).text();
    for line in [
        "replgate_ca_rollover_phase{phase=\"rolling\"} 1",
        "replgate_ca_rollover_phase{phase=\"idle\"} 0",
        "replgate_ca_rollover_old_chain_sources 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let health = tgt.client().get("/api/health", None).json();
    assert!(
        health["warnings"]
            .to_string()
            .contains("1 sources still on the old ca"),
        "{health}"
    );

    // Finish waits for the source that is away, until the window ends.
    let r = phase(&tgt, &tt, "finish");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["result"][0]["stragglers"], json!([p3.sid]));
    assert!(
        r.message().contains("rollover window ends"),
        "{}",
        r.message()
    );

    // The transfer ran through the rollover on its first attempt, byte for byte.
    let done = wait_item(&s2, &st2, "r/big", "done", Duration::from_secs(90));
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!(
        std::fs::read(received_path(&tgt, &p2, "r/big")).unwrap(),
        big
    );

    // After the window, finish proceeds and names the source it leaves behind.
    sleep_until(started["window_ends"].as_i64().unwrap() + 1);
    let r = phase(&tgt, &tt, "finish");
    assert_eq!(r.status, 200, "{}", r.text());
    let finished = r.json();
    assert_eq!(finished["phase"], "idle");
    assert_eq!(finished["ca_fingerprint"], new_fp.as_str());
    assert_eq!(finished["left_behind"][0]["sid"], p3.sid);

    // The old CA is gone: its key left the disk, ca.pem is the new CA, the tunnel refuses
    // its certificates, and the listeners chain to the new CA alone.
    assert_eq!(ca_files(&tgt.data_dir), ["ca-1.key", "ca-1.pem", "ca.pem"]);
    assert_eq!(trust_file(&tgt), std::slice::from_ref(&new_fp));
    assert_eq!(tgt.ca_fingerprint(), new_fp);
    eventually(
        Duration::from_secs(5),
        "the listeners chain to the new CA",
        || (presented_chain(&tgt).len() == 2).then_some(()),
    );
    assert_eq!(
        handshake_failures(&tgt, &tt),
        before,
        "no handshake failed from start to finish"
    );
    assert!(
        tunnel_hello(&tgt, Some(s3_identity)).map_or(true, |r| r.status != 200),
        "an old-chain certificate no longer opens the tunnel"
    );
    let refused = (before.0, before.1 + 1.0);
    assert_eq!(
        handshake_failures(&tgt, &tt),
        refused,
        "that handshake is counted"
    );

    // The sources that moved pin the new CA and keep replicating.
    for (src, token) in [(&s1, &st1), (&s2, &st2)] {
        eventually(MOVED, "the new CA pinned", || {
            let row = target_row(src, token);
            (row["ca_fingerprint"] == new_fp.as_str() && row.get("ca_next_fingerprint").is_none())
                .then_some(())
        });
    }
    write_backup(&s1, "r/after", &content(9, 100_000));
    wait_item(&s1, &st1, "r/after", "done", Duration::from_secs(30));
    assert_eq!(
        handshake_failures(&tgt, &tt),
        refused,
        "nor after, while the sources moved to the new CA alone"
    );

    // The source that was away comes back, is told plainly, and pairs again with a token.
    s3.restart();
    let st3 = s3.root_token();
    let row = eventually(MOVED, "the source away says what happened", || {
        let row = target_row(&s3, &st3);
        (row["status"] == "failed"
            && row["message"]
                .as_str()
                .is_some_and(|m| m.contains(REPLACED)))
        .then_some(row)
    });
    assert!(row["message"].as_str().unwrap().contains(&new_fp), "{row}");
    let created = tgt.client().post_json(
        "/api/replication/tokens",
        Some(&tt),
        &json!({"system_uuid": p3.source_uuid}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let join =
        replgate::wire::token::JoinLine::parse(created.json()["join"].as_str().unwrap()).unwrap();
    assert_eq!(join.ca_fingerprint, new_fp);
    let r = request(
        &s3,
        &st3,
        &tgt,
        json!({"fingerprint": join.ca_fingerprint, "token": join.token.expose()}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    wait_status(&s3, &st3, "complete", Duration::from_secs(POLL + 20));
    let st = status(&tgt, &tt);
    let again = st["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == p3_name(&s3, &st3))
        .cloned()
        .unwrap_or_else(|| panic!("the source paired again: {st}"));
    assert_eq!(again["chain"], "new", "{st}");
}

/// The old CA's DER from a public answer during a rollover.
fn tgt_old_der(public: &Value) -> Vec<u8> {
    replgate::ca::cert_pem_to_der(public["ca"].as_str().unwrap()).unwrap()
}

/// A source's name as its target's systems row has it.
fn p3_name(src: &Daemon, token: &str) -> String {
    crate::harness::systems_row(&src.systems(token), |s| s["local"] == true)["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_source_pairing_mid_rollover_holds_both_cas_and_an_abort_keeps_every_source_working() {
    let mut daemons = start_all(vec![
        ("abort-tgt".into(), rollover_target()),
        ("abort-s1".into(), pairing_opts()),
        ("abort-s2".into(), pairing_opts()),
    ]);
    let s2 = daemons.pop().unwrap();
    let mut s1 = daemons.pop().unwrap();
    let tgt = daemons.pop().unwrap();
    let tt = tgt.root_token();
    let old_fp = tgt.ca_fingerprint();
    let p1 = pair(&s1, &tgt, json!({}));
    let before = handshake_failures(&tgt, &tt);
    let r = phase(&tgt, &tt, "start");
    assert_eq!(r.status, 200, "{}", r.text());
    let new_fp = r.json()["new_ca_fingerprint"].as_str().unwrap().to_string();
    let new_der = replgate::ca::cert_pem_to_der(
        tgt.client().get("/replication/v1/ca", None).json()["next"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        phase(&tgt, &tt, "start").status,
        409,
        "one rollover at a time"
    );

    // A source pairing now pins the CA in force (the join lines and fingerprints an admin
    // handed out stay true), gets a certificate of the new CA, and both CAs.
    let p2 = pair(&s2, &tgt, json!({}));
    let st2 = s2.root_token();
    let row = target_row(&s2, &st2);
    assert_eq!(row["ca_fingerprint"], old_fp.as_str(), "{row}");
    assert_eq!(row["ca_next_fingerprint"], new_fp.as_str(), "{row}");
    let (leaf, _) = installed_identity(&s2);
    assert!(replgate::ca::issued_by(&leaf[0], &new_der));
    wait_moved(&tgt, &tt, &[p1.sid, p2.sid], MOVED);

    // Abort: back to the old CA alone, the new key gone; the certificates the new CA
    // issued still open the tunnel until their sources renewed onto the old CA, which the
    // target asks them to do at once (source 1 is stopped meanwhile, so its new-chain
    // certificate is still the one it holds).
    let (leaf, key) = installed_identity(&s1);
    assert!(replgate::ca::issued_by(&leaf[0], &new_der));
    assert!(s1.stop().success());
    let r = phase(&tgt, &tt, "abort");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["phase"], "idle");
    assert_eq!(r.json()["aborted_cas"], 1);
    assert_eq!(ca_files(&tgt.data_dir), ["ca.key", "ca.pem"]);
    assert_eq!(trust_file(&tgt), std::slice::from_ref(&old_fp));
    let hello = tunnel_hello(&tgt, Some((leaf, key))).expect("the handshake");
    assert_eq!(
        hello.status, 200,
        "a certificate of the aborted CA still opens the tunnel"
    );
    s1.restart();
    assert_eq!(phase(&tgt, &tt, "abort").status, 409);
    let back = eventually(MOVED, "the aborted CA no longer needed", || {
        let st = status(&tgt, &tt);
        (st["aborted_cas"] == 0 && chain(&st, p1.sid) == "new" && chain(&st, p2.sid) == "new")
            .then_some(st)
    });
    assert_eq!(back["ca_fingerprint"], old_fp.as_str());
    for src in [&s1, &s2] {
        let token = src.root_token();
        let row = eventually(MOVED, "the new CA dropped", || {
            let row = target_row(src, &token);
            (row.get("ca_next_fingerprint").is_none() && row["status"] == "complete").then_some(row)
        });
        assert_eq!(row["ca_fingerprint"], old_fp.as_str());
        let (leaf, _) = installed_identity(src);
        assert!(
            !replgate::ca::issued_by(&leaf[0], &new_der),
            "renewed onto the old CA"
        );
    }
    let audit = tgt.client().get("/api/audit?limit=1000", Some(&tt)).json();
    for action in [
        "ca rollover started",
        "ca rollover aborted",
        "aborted ca no longer trusted",
    ] {
        assert!(audit.to_string().contains(action), "{action}");
    }
    assert_eq!(handshake_failures(&tgt, &tt), before, "no handshake failed");
}

#[test]
fn ctl_runs_the_rollover_and_only_a_superuser_may() {
    let tgt = Daemon::start("roll-ctl", rollover_target());
    let tt = tgt.root_token();
    let scratch = scratch_dir("roll-ctl");
    let ctl = Ctl::new(&tgt, &scratch);
    ctl.login();
    let out = ctl.run(&["ca", "rollover", "status"]).expect(0);
    assert!(out.stdout.starts_with("phase:   idle\n"), "{out:?}");
    assert!(out.stdout.contains("no paired sources"), "{out:?}");
    let out = ctl.run(&["ca", "rollover", "start"]).expect(0);
    assert!(out.stdout.starts_with("phase:   rolling since "), "{out:?}");
    assert!(out.stdout.contains("new ca:  "), "{out:?}");
    // ca.pem now holds both CAs, and ctl (reading it) still reaches the daemon.
    let json = ctl
        .run(&["--json", "ca", "rollover", "status"])
        .expect(0)
        .json();
    assert_eq!(json["phase"], "rolling");
    ctl.run(&["ca", "rollover", "start"]).expect(6);
    ctl.run(&["ca", "rollover", "sideways"]).expect(2);
    // Nobody but a superuser: not a monitor, not an administrator.
    for privilege in ["monitor", "administer"] {
        let r = tgt.client().post_json(
            "/api/users",
            Some(&tt),
            &json!({"name": privilege, "password": "password-123", "privilege": privilege}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        let token = tgt.login(privilege, "password-123");
        assert_eq!(
            tgt.client().get("/api/ca/rollover", Some(&token)).status,
            403
        );
        assert_eq!(phase(&tgt, &token, "abort").status, 403);
    }
    assert_eq!(phase(&tgt, &tt, "sideways").status, 400);
    let out = ctl.run(&["ca", "rollover", "finish"]).expect(0);
    assert!(out.stdout.starts_with("phase:   idle\n"), "{out:?}");
    ctl.run(&["ca", "rollover", "finish"]).expect(6);
    assert_eq!(status(&tgt, &tt)["ca_fingerprint"], tgt.ca_fingerprint());
}

/// A TLS server on `addr` presenting `chain`/`key`, answering every request with `answer`
/// (status 200, JSON) until `stop` is set.
fn fake_server(
    addr: SocketAddr,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    answer: impl Fn(&str) -> String + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = eventually(Duration::from_secs(10), "the port to be free", || {
        TcpListener::bind(addr).ok()
    });
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((sock, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = sock.set_nonblocking(false);
            let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&head).to_string();
            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = answer(&path);
            let _ = tls.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = tls.flush();
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    })
}

/// A server certificate for 127.0.0.1 issued by `ca` (leaf then CA), and its key.
fn server_identity(
    ca: &replgate::ca::Ca,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let issued = ca
        .issue_server_cert(
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3_600),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let chain = pem_certs(format!("{}{}", issued.cert_pem, ca.cert_pem()).as_bytes());
    (
        chain,
        PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
    )
}

#[test]
fn a_new_ca_the_pinned_one_did_not_endorse_is_refused_and_no_source_can_push_one() {
    let mut daemons = start_all(vec![
        ("forge-tgt".into(), rollover_target()),
        ("forge-src".into(), pairing_opts()),
    ]);
    let src = daemons.pop().unwrap();
    let mut tgt = daemons.pop().unwrap();
    let tt = tgt.root_token();
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();

    // A source cannot push a CA: the tunnel's CA route only reads, and the rollover is
    // the target's superuser's.
    let id = installed_identity(&src);
    let pushed = {
        let mut tls = crate::pairing::tunnel_connect(&tgt, Some(id)).unwrap();
        let body = json!({"ca": "x"}).to_string();
        tls.write_all(
            format!(
                "POST /tunnel/v1/ca HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        crate::harness::read_response(&mut tls, false).unwrap()
    };
    assert_eq!(pushed.status, 405, "{}", pushed.text());
    assert_eq!(pushed.header("Allow"), Some("GET, HEAD"));
    let read = tunnel_request(&tgt, Some(installed_identity(&src)), "/tunnel/v1/ca").unwrap();
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["fingerprint"], tgt.ca_fingerprint().as_str());
    assert_eq!(read.json()["renew"], false);
    assert_eq!(status(&tgt, &tt)["phase"], "idle");

    // Someone holding the target's addresses and its pinned CA's key (the worst case)
    // announces a new CA whose cross-certificate another key signed: refused, and nothing
    // changes in what the source trusts.
    let pinned = replgate::ca::Ca::from_pem(
        &std::fs::read_to_string(tgt.data_dir.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(tgt.data_dir.join("ca.key")).unwrap(),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let forged_new = replgate::ca::Ca::generate("forged new", now).unwrap();
    let mallory = replgate::ca::Ca::generate(&cn_of(&pinned), now).unwrap();
    let forged_cross = mallory.cross_certify(&forged_new, now).unwrap();
    let (api, tunnel) = (tgt.api, tgt.tunnel);
    let row_before = target_row(&src, &st);
    tgt.kill9();
    let status_json =
        json!({"status": "accepted", "certificate": "certificate.pem", "ca": "ca.pem",
                             "tunnel": tunnel.to_string()})
        .to_string();
    let answer =
        json!({"phase": "rolling", "ca": pinned.cert_pem(), "fingerprint": pinned.fingerprint(),
                        "next": forged_new.cert_pem(), "cross": forged_cross, "endorsements": [],
                        "renew": true})
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let (chain, key) = server_identity(&pinned);
    let fake_api = {
        let status_json = status_json.clone();
        fake_server(
            api,
            chain.clone(),
            key.clone_key(),
            move |_| status_json.clone(),
            stop.clone(),
        )
    };
    let fake_tunnel = fake_server(tunnel, chain, key, move |_| answer.clone(), stop.clone());
    let refused = eventually(MOVED, "the forged CA refused", || {
        let row = target_row(&src, &st);
        row["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not endorse"))
            .then_some(row)
    });
    assert!(refused.get("ca_next_fingerprint").is_none(), "{refused}");
    assert_eq!(refused["ca_fingerprint"], row_before["ca_fingerprint"]);
    assert_eq!(
        refused["certificate_serial"], row_before["certificate_serial"],
        "no renewal"
    );
    stop.store(true, Ordering::SeqCst);
    fake_api.join().unwrap();
    fake_tunnel.join().unwrap();

    // A server whose certificate does not chain to the pinned CA offers a properly
    // endorsed rollover of its own: the source does not even read it.
    let stranger = replgate::ca::Ca::generate("stranger", now).unwrap();
    let stranger_next = replgate::ca::Ca::generate("stranger next", now).unwrap();
    let stranger_answer = json!({"phase": "rolling", "ca": stranger.cert_pem(),
        "fingerprint": stranger.fingerprint(), "next": stranger_next.cert_pem(),
        "cross": stranger.cross_certify(&stranger_next, now).unwrap(), "endorsements": [],
        "renew": true})
    .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let (chain, key) = server_identity(&stranger);
    let fake_api = fake_server(
        api,
        chain.clone(),
        key.clone_key(),
        move |_| status_json.clone(),
        stop.clone(),
    );
    let fake_tunnel = fake_server(
        tunnel,
        chain,
        key,
        move |_| stranger_answer.clone(),
        stop.clone(),
    );
    let untrusted = eventually(MOVED, "the stranger refused", || {
        let row = target_row(&src, &st);
        (row["status"] == "failed"
            && row["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not chain to the pinned CA")))
        .then_some(row)
    });
    assert!(
        untrusted.get("ca_next_fingerprint").is_none(),
        "{untrusted}"
    );
    assert_eq!(untrusted["ca_fingerprint"], row_before["ca_fingerprint"]);
    stop.store(true, Ordering::SeqCst);
    fake_api.join().unwrap();
    fake_tunnel.join().unwrap();

    // The real target is back: the pairing works as before, on the CA it always had.
    tgt.restart();
    let row = wait_status(&src, &st, "complete", MOVED);
    assert_eq!(row["ca_fingerprint"], row_before["ca_fingerprint"]);
    assert!(src.log().contains("did not endorse"), "logged");
    let hello = tunnel_hello(&tgt, Some(installed_identity(&src))).unwrap();
    assert_eq!(hello.json()["system_id"], p.sid);
}

/// The subject common name of a CA.
fn cn_of(ca: &replgate::ca::Ca) -> String {
    replgate::ca::cert_info(&ca.cert_der())
        .unwrap()
        .common_name
        .unwrap()
}
