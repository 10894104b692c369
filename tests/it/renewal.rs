//! Certificate lifecycle with real daemons and lab lifetimes of a minute
//! (`certificate_seconds`, `server_certificate_seconds`): a source renews over the tunnel
//! again and again, the old serial lasts through its grace and no longer, revoked and
//! expired certificates never renew, listener certificates change under open
//! connections, a crash at each step of a renewal leaves a working pair, a renewal in
//! the middle of a transfer does not interrupt it, and a pairing made by the release
//! before lineages migrates.
//!
//! Most of the time here is waiting for certificates to come due, so the scenarios of a
//! test run side by side on their own threads (`side_by_side`): the suite's wall time
//! grows by the longest scenario, not by their sum.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};

use crate::ctl::Ctl;
use crate::harness::{
    eventually, pairing_opts, pem_certs, read_response, scratch_dir, start_pair_with, systems_row,
    Daemon, Options, Response, POLL,
};
use crate::pairing::{
    accept, get_on, pair_completely, pairing_dir, target_row, tunnel_connect, tunnel_hello,
    wait_status, Identity,
};

/// The lab lifetime of a source certificate, in seconds (SPEC 12's minimum).
const LAB_SECONDS: u64 = 60;
/// Longest wait for a renewal that is due within a lab lifetime.
const RENEWAL: Duration = Duration::from_secs(LAB_SECONDS + 20);

/// A target whose issued certificates last a minute and whose grace is a minute.
pub(crate) fn lab_target() -> Options {
    pairing_opts()
        .set("certificate_seconds", LAB_SECONDS)
        .set("renew_grace", 60)
}

/// Runs each scenario on its own thread; fails naming every scenario that failed.
fn side_by_side(scenarios: &[(&str, fn())]) {
    let failed: Vec<&str> = std::thread::scope(|s| {
        let running: Vec<_> = scenarios
            .iter()
            .map(|(name, run)| (*name, s.spawn(run)))
            .collect();
        running
            .into_iter()
            .filter_map(|(name, t)| t.join().is_err().then_some(name))
            .collect()
    });
    assert!(
        failed.is_empty(),
        "scenarios failed: {failed:?} (their panics are above)"
    );
}

/// The key and certificate of key generation `g` in a pairing directory.
fn identity_of(dir: &Path, g: u64) -> Identity {
    let (key, cert) = match g {
        0 => ("key.pem".to_string(), "cert.pem".to_string()),
        g => (format!("key-{g}.pem"), format!("cert-{g}.pem")),
    };
    let chain =
        pem_certs(&std::fs::read(dir.join(&cert)).unwrap_or_else(|e| panic!("{cert}: {e}")));
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(dir.join(&key)).unwrap()).unwrap();
    (chain, key)
}

fn serial_of(der: &CertificateDer<'_>) -> String {
    replgate::ca::cert_serial_hex(der.as_ref()).unwrap()
}

fn same(id: &Identity) -> Identity {
    (id.0.clone(), id.1.clone_key())
}

/// A fresh P-256 key, and a CSR for it.
fn key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_for(&key);
    (key, csr)
}

fn csr_for(key: &rcgen::KeyPair) -> String {
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// `POST /tunnel/v1/renew` on the target's tunnel, presenting `client`.
fn renew_over_tunnel(tgt: &Daemon, client: Identity, csr: &str) -> Result<Response, String> {
    let mut tls = tunnel_connect(tgt, Some(client))?;
    let body = json!({ "csr": csr }).to_string();
    let head = format!(
        "POST /tunnel/v1/renew HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    use std::io::Write;
    tls.write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body.as_bytes()))
        .map_err(|e| e.to_string())?;
    read_response(&mut tls, false).map_err(|e| e.to_string())
}

/// Whether a hello with `client` is answered 200 for system `sid`.
fn hello_works(tgt: &Daemon, client: Identity, sid: u64) -> bool {
    tunnel_hello(tgt, Some(client)).is_ok_and(|r| r.status == 200 && r.json()["system_id"] == sid)
}

fn refused(tgt: &Daemon, client: Identity) -> bool {
    tunnel_hello(tgt, Some(client)).map_or(true, |r| r.status != 200)
}

/// The target's audit rows with `action` about system `sid`, oldest first.
pub(crate) fn audit_rows(tgt: &Daemon, tt: &str, action: &str, sid: u64) -> Vec<Value> {
    let r = tgt.client().get("/api/audit?limit=1000", Some(tt));
    assert_eq!(r.status, 200, "{}", r.text());
    let object = format!("system:{sid}");
    r.json()["audit"]
        .as_array()
        .unwrap_or_else(|| panic!("no audit list: {}", r.text()))
        .iter()
        .filter(|a| a["action"] == action && a["object"] == object.as_str())
        .cloned()
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn str_of(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .to_string()
}

/// Pairs `src` with `tgt` completely; (source token, target token, system id).
pub(crate) fn paired(src: &Daemon, tgt: &Daemon) -> (String, String, u64) {
    let (st, tt) = (src.root_token(), tgt.root_token());
    let sid = pair_completely(src, &st, tgt, &tt)["system_id"]
        .as_u64()
        .expect("system_id");
    (st, tt, sid)
}

#[test]
fn a_source_renews_on_its_own_again_and_again_and_its_tunnel_keeps_working() {
    let (src, mut tgt) = start_pair_with("renew-again", pairing_opts(), lab_target());
    let (st, tt, sid) = paired(&src, &tgt);
    let dir = pairing_dir(&src);
    let first = target_row(&src, &st);
    let request_id = first["request_id"].clone();
    let mut installed = identity_of(&dir, 0);
    let mut serial = str_of(&first, "certificate_serial");
    assert_eq!(serial, serial_of(&installed.0[0]));
    assert!(
        first["certificate_renews"].as_i64().unwrap()
            < first["certificate_expires"].as_i64().unwrap()
    );
    let mut expires = first["certificate_expires"].as_i64().unwrap();
    for generation in 1..=3u64 {
        if generation == 2 {
            // The target is unreachable when the renewal comes due: the source retries
            // until it is back, well before its certificate ends.
            assert!(tgt.stop().success());
            eventually(
                RENEWAL,
                "a renewal that failed while the target was down",
                || {
                    src.log()
                        .contains("renewing the certificate failed (retrying)")
                        .then_some(())
                },
            );
            tgt.restart();
        }
        let row = eventually(RENEWAL, &format!("renewal {generation}"), || {
            let row = target_row(&src, &st);
            (row["certificate_serial"] != serial.as_str() && row["status"] == "complete")
                .then_some(row)
        });
        assert_eq!(
            row["request_id"], request_id,
            "renewed, not paired again: {row}"
        );
        assert!(row["certificate_renewed"].is_i64(), "{row}");
        assert!(row.get("certificate_expired").is_none(), "{row}");
        let new_expires = row["certificate_expires"].as_i64().unwrap();
        assert!(
            new_expires > expires && expires > unix_now(),
            "never ran out: {row}"
        );
        let renewed = identity_of(&dir, generation);
        let new_serial = serial_of(&renewed.0[0]);
        assert_eq!(row["certificate_serial"], new_serial.as_str());
        eventually(
            Duration::from_secs(10),
            "a hello with the renewed certificate",
            || hello_works(&tgt, same(&renewed), sid).then_some(()),
        );
        // Proven by the source: the old serial is retired at once, and its files go.
        eventually(Duration::from_secs(10), "the old serial refused", || {
            refused(&tgt, same(&installed)).then_some(())
        });
        let old_cert = match generation - 1 {
            0 => dir.join("cert.pem"),
            g => dir.join(format!("cert-{g}.pem")),
        };
        eventually(
            Duration::from_secs(10),
            "the old generation's files removed",
            || (!old_cert.exists()).then_some(()),
        );
        let system = systems_row(&tgt.systems(&tt), |s| s["id"] == sid);
        assert_eq!(system["certificate_expires"], new_expires, "{system}");
        let renewals = audit_rows(&tgt, &tt, "certificate renewed", sid);
        assert_eq!(renewals.len() as u64, generation, "{renewals:#?}");
        let detail = str_of(renewals.last().unwrap(), "detail");
        assert!(
            detail.starts_with(&format!(
                "serial {serial} -> {new_serial} generation {}",
                generation + 1
            )),
            "{detail}"
        );
        (installed, serial, expires) = (renewed, new_serial, new_expires);
    }
    // Each renewal is one event line on both sides (the audit rows, logged).
    assert_eq!(src.log().matches("certificate renewed target:").count(), 3);
    assert_eq!(
        tgt.log()
            .matches(&format!("certificate renewed system:{sid}: serial "))
            .count(),
        3
    );
    assert!(!src.log().contains("expired"), "no certificate ran out");
}

#[test]
fn renewal_edges_side_by_side() {
    side_by_side(&[
        (
            "grace",
            the_old_certificate_works_through_its_grace_and_is_refused_after_it,
        ),
        (
            "revoked",
            a_revoked_source_is_never_renewed_and_stays_revoked,
        ),
        (
            "expired",
            a_source_stopped_past_its_certificates_end_is_told_and_pairs_again,
        ),
        (
            "listeners",
            listener_certificates_change_serial_while_running_and_open_connections_stay,
        ),
        (
            "migration",
            a_pairing_made_by_the_release_before_lineages_migrates_and_keeps_working,
        ),
        (
            "transfer",
            a_renewal_in_the_middle_of_a_transfer_does_not_interrupt_it,
        ),
    ]);
}

/// A transfer streams on the old certificate while the source renews: its connection
/// stays (a retired serial refuses new handshakes, it does not cut open streams), the
/// transfer finishes in its one attempt without a byte sent twice, and the next session
/// opens with the renewed certificate.
fn a_renewal_in_the_middle_of_a_transfer_does_not_interrupt_it() {
    use crate::replication::{
        content, item_of, received_path, throttle_to, unthrottle, wait_item, wait_progress,
        write_backup,
    };
    // Whole files (the periodic test content would mostly deduplicate), so that every
    // byte of the file is counted once.
    let (src, tgt) = start_pair_with(
        "renew-transfer",
        pairing_opts().set("dedup", "off"),
        lab_target(),
    );
    let st = src.root_token();
    let p = crate::harness::pair(&src, &tgt, json!({}));
    let serial = str_of(&target_row(&src, &st), "certificate_serial");
    // 64 MiB at 1 MB/s outlasts the renewal, due 36-45 s into the certificate's minute.
    throttle_to(&src, &st, 1_000_000);
    let size = 64 << 20;
    let data = content(9, size);
    write_backup(&src, "r/during", &data);
    wait_progress(&src, &st, "r/during", 1, Duration::from_secs(30));
    eventually(RENEWAL, "a renewal while the transfer runs", || {
        let row = target_row(&src, &st);
        (row["certificate_serial"] != serial.as_str() && row["status"] == "complete").then_some(())
    });
    let during = item_of(&src, &st, "r/during").expect("the item");
    assert_eq!(
        during["status"], "active",
        "renewed while it streamed: {during}"
    );
    unthrottle(&src, &st);
    let done = wait_item(&src, &st, "r/during", "done", Duration::from_secs(60));
    assert_eq!(done["attempts"], 1, "never interrupted: {done}");
    assert_eq!(done["bytes_sent"], size, "no byte sent twice: {done}");
    assert_eq!(
        std::fs::read(received_path(&tgt, &p, "r/during")).unwrap(),
        data
    );
    write_backup(&src, "r/after", b"after the renewal");
    wait_item(&src, &st, "r/after", "done", Duration::from_secs(30));
}

/// The test plays the source: it renews with the source's certificate itself (the source
/// daemon is stopped), and never says hello with the new one, so only the grace ends the
/// old one.
fn the_old_certificate_works_through_its_grace_and_is_refused_after_it() {
    let tgt_opts = pairing_opts()
        .set("certificate_seconds", 600)
        .set("renew_grace", 60);
    let (mut src, tgt) = start_pair_with("renew-grace", pairing_opts(), tgt_opts);
    let (_, tt, sid) = paired(&src, &tgt);
    let dir = pairing_dir(&src);
    assert!(src.stop().success());
    let old = identity_of(&dir, 0);
    let (key, csr) = key_and_csr();
    let renewed_at = Instant::now();
    let r = renew_over_tunnel(&tgt, same(&old), &csr).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let chain = pem_certs(str_of(&answer, "certificate").as_bytes());
    assert_eq!(str_of(&answer, "serial"), serial_of(&chain[0]));
    let new: Identity = (
        chain,
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
    );
    // A lost answer asked again, for the same key: the same certificate, nothing new.
    let again = renew_over_tunnel(&tgt, same(&old), &csr_for(&key)).unwrap();
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["serial"], answer["serial"]);
    // Another key from the superseded certificate: 409; the new one's own key: 400.
    let other = renew_over_tunnel(&tgt, same(&old), &key_and_csr().1).unwrap();
    assert_eq!(other.status, 409, "{}", other.text());
    assert!(other.text().contains("already renewed"), "{}", other.text());
    let own = renew_over_tunnel(&tgt, same(&new), &csr_for(&key)).unwrap();
    assert_eq!(own.status, 400, "{}", own.text());
    assert_eq!(audit_rows(&tgt, &tt, "certificate renewed", sid).len(), 1);
    let system = systems_row(&tgt.systems(&tt), |s| s["id"] == sid);
    assert_eq!(system["certificate_expires"], answer["not_after"]);
    // Through the grace both work; the old one's hellos do not end it.
    assert!(hello_works(&tgt, same(&old), sid));
    assert!(hello_works(&tgt, same(&old), sid));
    // After it, the old serial is refused at the handshake; the new one works on.
    let left = Duration::from_secs(58).saturating_sub(renewed_at.elapsed());
    std::thread::sleep(left);
    eventually(
        Duration::from_secs(15),
        "the old serial refused after the grace",
        || refused(&tgt, same(&old)).then_some(()),
    );
    assert!(
        renewed_at.elapsed() >= Duration::from_secs(59),
        "refused before its grace ended: {:?}",
        renewed_at.elapsed()
    );
    let retired = audit_rows(&tgt, &tt, "certificate retired", sid);
    assert_eq!(retired.len(), 1, "{retired:#?}");
    assert!(
        str_of(&retired[0], "detail").ends_with("grace ended"),
        "{retired:#?}"
    );
    assert!(hello_works(&tgt, same(&new), sid));
    assert!(tgt
        .log()
        .contains(&format!("certificate retired system:{sid}: serial ")));
}

fn a_revoked_source_is_never_renewed_and_stays_revoked() {
    let (mut src, tgt) = start_pair_with("renew-revoked", pairing_opts(), lab_target());
    let (st, tt, sid) = paired(&src, &tgt);
    let dir = pairing_dir(&src);
    let renews = target_row(&src, &st)["certificate_renews"]
        .as_i64()
        .unwrap();
    let old = identity_of(&dir, 0);
    assert!(src.stop().success());
    let r = tgt
        .client()
        .delete(&format!("/api/replication/source?sid={sid}"), Some(&tt));
    assert_eq!(r.status, 200, "{}", r.text());
    // Renewing with the revoked certificate does not get past the handshake.
    let attempt = renew_over_tunnel(&tgt, same(&old), &key_and_csr().1);
    assert!(
        attempt.as_ref().map_or(true, |r| r.status == 403),
        "{attempt:?}"
    );
    // The source itself, once its renewal is due, tries, is refused, and stays revoked.
    let wait = renews - unix_now();
    if wait > 0 {
        std::thread::sleep(Duration::from_secs(wait as u64 + 1));
    }
    src.restart();
    let row = wait_status(&src, &st, "revoked", Duration::from_secs(3 * POLL + 10));
    assert!(row.get("certificate_renewed").is_none(), "{row}");
    eventually(
        Duration::from_secs(10),
        "the refused renewal in the log",
        || {
            src.log()
                .contains("renewing the certificate failed")
                .then_some(())
        },
    );
    let tries = src.log().matches("renewing the certificate failed").count();
    std::thread::sleep(Duration::from_secs(2 * POLL + 6));
    assert_eq!(
        src.log().matches("renewing the certificate failed").count(),
        tries,
        "a revoked pairing stops trying"
    );
    assert!(audit_rows(&tgt, &tt, "certificate renewed", sid).is_empty());
    assert!(refused(&tgt, old));
    let systems = tgt.systems(&tt);
    assert!(
        !systems["appliance"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == sid),
        "{systems}"
    );
}

fn a_source_stopped_past_its_certificates_end_is_told_and_pairs_again() {
    let (mut src, tgt) = start_pair_with("renew-expired", pairing_opts(), lab_target());
    let (st, tt, sid) = paired(&src, &tgt);
    let dir = pairing_dir(&src);
    let row = target_row(&src, &st);
    let tid = row["target_id"].as_u64().unwrap();
    let first_request = row["request_id"].clone();
    let expires = row["certificate_expires"].as_i64().unwrap();
    let old = identity_of(&dir, 0);
    assert!(src.stop().success());
    let wait = expires - unix_now() + 1;
    std::thread::sleep(Duration::from_secs(wait.max(0) as u64));
    src.restart();
    let row = eventually(Duration::from_secs(20), "a new request filed", || {
        let row = target_row(&src, &st);
        (row["request_id"] != first_request).then_some(row)
    });
    assert_eq!(row["status"], "pending", "{row}");
    assert_eq!(row["certificate_expired"], true, "{row}");
    let request = row["request_id"].as_u64().unwrap();
    let message = str_of(&row, "message");
    for needed in [
        "the certificate expired at ".to_string(),
        format!("filed request {request}"),
        "ask the target's admin to accept it".to_string(),
    ] {
        assert!(message.contains(&needed), "{message}");
    }
    let health = src.client().get("/api/health", None).json();
    let warnings = health["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .starts_with(&format!("the certificate for target {tid} expired at "))),
        "{health}"
    );
    let scratch = scratch_dir("renew-expired-ctl");
    let ctl = Ctl::new(&src, &scratch);
    ctl.login();
    let shown = ctl.run(&["targets"]).expect(0);
    assert!(shown.stdout.contains("expired"), "{}", shown.stdout);
    // The target's admin sees a request that replaces the system, and accepts it.
    let pending = tgt
        .client()
        .get("/api/replication/pending", Some(&tt))
        .json();
    let entry = pending["pending"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["request_id"] == request)
        .unwrap_or_else(|| panic!("request {request} not pending: {pending}"))
        .clone();
    assert_eq!(entry["replaces_system_id"], sid, "{entry}");
    let accepted = accept(&tgt, &tt, &json!(request), None).json();
    assert_eq!(
        accepted["system_id"], sid,
        "the same systems row: {accepted}"
    );
    let row = wait_status(&src, &st, "complete", Duration::from_secs(POLL + 10));
    assert!(row.get("certificate_expired").is_none(), "{row}");
    assert!(
        row["certificate_expires"].as_i64().unwrap() > unix_now(),
        "{row}"
    );
    let renewed = identity_of(&dir, 1);
    assert_eq!(row["certificate_serial"], serial_of(&renewed.0[0]).as_str());
    assert!(hello_works(&tgt, renewed, sid));
    assert!(refused(&tgt, old));
    eventually(
        Duration::from_secs(10),
        "the expired generation's files removed",
        || (!dir.join("cert.pem").exists()).then_some(()),
    );
}

/// A config file with only `hostnames`, for SIGHUP to read again.
fn hostnames_file(dir: &Path, names: &[&str]) -> PathBuf {
    let path = dir.join("replgate.toml");
    let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    std::fs::write(&path, format!("hostnames = [{}]\n", list.join(", "))).unwrap();
    path
}

/// The leaf certificate a fresh TLS connection to `addr` is shown (a new client config
/// each time: a resumed session would show the one it resumes).
fn leaf_at(d: &Daemon, addr: SocketAddr, client: Option<Identity>) -> CertificateDer<'static> {
    let mut client_config = crate::harness::Client::new(addr, d.ca_der());
    if let Some(id) = client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(d.ca_der()).unwrap();
        client_config.config = std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(crate::harness::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(id.0, id.1)
                .unwrap(),
        );
    }
    let tls = client_config.connect().expect("connect");
    tls.conn.peer_certificates().expect("a server certificate")[0].clone()
}

fn listener_certificates_change_serial_while_running_and_open_connections_stay() {
    let scratch = scratch_dir("renew-listeners-config");
    let config = hostnames_file(&scratch, &["localhost"]);
    let mut tgt_opts = pairing_opts()
        .set("server_certificate_seconds", 60)
        .set("idle_timeout", 300)
        .unset("REPLGATE_HOSTNAMES");
    tgt_opts.config_file = Some(config.clone());
    let (src, tgt) = start_pair_with("renew-listeners", pairing_opts(), tgt_opts);
    let _ = paired(&src, &tgt);
    let client = identity_of(&pairing_dir(&src), 0);
    let api_before = serial_of(&leaf_at(&tgt, tgt.api, None));
    let tunnel_before = serial_of(&leaf_at(&tgt, tgt.tunnel, Some(same(&client))));
    // Connections opened before, kept alive.
    let mut api_open = tgt.client().connect().unwrap();
    let health = "GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n";
    let ask = |tls: &mut crate::harness::Tls| {
        use std::io::Write;
        tls.write_all(health.as_bytes()).unwrap();
        read_response(tls, false).unwrap()
    };
    assert_eq!(ask(&mut api_open).status, 200);
    let mut tunnel_open = tunnel_connect(&tgt, Some(same(&client))).unwrap();
    assert_eq!(
        get_on(&mut tunnel_open, "/tunnel/v1/hello", false)
            .unwrap()
            .status,
        200
    );
    eventually(Duration::from_secs(75), "new listener serials", || {
        let api = serial_of(&leaf_at(&tgt, tgt.api, None));
        let tunnel = serial_of(&leaf_at(&tgt, tgt.tunnel, Some(same(&client))));
        (api != api_before && tunnel != tunnel_before).then_some(())
    });
    assert!(tgt
        .log()
        .contains("renewed the api listener certificate while running"));
    assert!(tgt
        .log()
        .contains("renewed the tunnel listener certificate while running"));
    assert_eq!(
        ask(&mut api_open).status,
        200,
        "the open API connection carries on"
    );
    let hello = get_on(&mut tunnel_open, "/tunnel/v1/hello", false).unwrap();
    assert_eq!(hello.status, 200, "the open tunnel connection carries on");
    // New hostnames on SIGHUP: re-issued at once, without a restart.
    hostnames_file(&scratch, &["localhost", "renamed.example"]);
    let pid = tgt.pid();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let named = |der: &CertificateDer<'_>| {
        der.as_ref()
            .windows(b"renamed.example".len())
            .any(|w| w == b"renamed.example")
    };
    eventually(
        Duration::from_secs(10),
        "a certificate naming renamed.example",
        || {
            (named(&leaf_at(&tgt, tgt.api, None))
                && named(&leaf_at(&tgt, tgt.tunnel, Some(same(&client)))))
            .then_some(())
        },
    );
    assert!(tgt.log().contains("(hostnames changed)"), "{}", tgt.log());
    assert_eq!(tgt.pid(), pid, "no restart");
    assert_eq!(ask(&mut api_open).status, 200);
    assert_eq!(
        get_on(&mut tunnel_open, "/tunnel/v1/hello", true)
            .unwrap()
            .status,
        200
    );
    let health = tgt.client().get("/api/health", None).json();
    assert_eq!(health["warnings"], json!([]), "{health}");
}

fn a_pairing_made_by_the_release_before_lineages_migrates_and_keeps_working() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/release-663872f");
    let at = |ip: &str, data: &str| {
        let mut o = pairing_opts()
            .set("api_listen", format!("{ip}:8443"))
            .set("tunnel_listen", format!("{ip}:8444"));
        o.data_from = Some(fixture.join(data));
        o
    };
    let tgt = Daemon::start("migrate-tgt", at("127.77.0.1", "target"));
    let mut src = Daemon::start("migrate-src", at("127.77.0.2", "source"));
    let (st, tt) = (src.root_token(), tgt.root_token());
    let dir = pairing_dir(&src);
    let old = identity_of(&dir, 0);
    let serial = serial_of(&old.0[0]);
    // The source row as the release left it, with the renewal now planned.
    let row = wait_status(&src, &st, "complete", Duration::from_secs(10));
    assert_eq!(row["certificate_serial"], serial.as_str(), "{row}");
    assert!(
        row["certificate_renews"].as_i64().unwrap() > unix_now(),
        "{row}"
    );
    // The target's systems row and the tunnel, as before.
    let systems = tgt.systems(&tt);
    let system = systems_row(&systems, |s| s["role"] == "Non-Managed Replication Source");
    let sid = system["id"].as_u64().unwrap();
    assert_eq!(system["certificate_expires"], row["certificate_expires"]);
    assert!(hello_works(&tgt, same(&old), sid));
    let scratch = scratch_dir("migrate-ctl");
    let ctl = Ctl::new(&src, &scratch);
    ctl.login();
    let shown = ctl.run(&["targets"]).expect(0);
    assert!(
        shown.stdout.contains(" d"),
        "days left shown: {}",
        shown.stdout
    );
    // The migrated lineage goes on: a renewal is its generation 2.
    assert!(src.stop().success());
    let r = renew_over_tunnel(&tgt, same(&old), &key_and_csr().1).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let renewals = audit_rows(&tgt, &tt, "certificate renewed", sid);
    assert_eq!(renewals.len(), 1);
    assert!(
        str_of(&renewals[0], "detail").contains("generation 2"),
        "{renewals:#?}"
    );
    assert!(tgt.log().contains("replgate 0.1.0 serving"));
}

#[test]
fn renewal_survives_a_crash_of_either_side_at_each_step() {
    side_by_side(&[
        ("target after its commit", || {
            crash_case("crash-renew-tgt", false, "crash_after_renew_commit")
        }),
        ("source after receiving", || {
            crash_case("crash-renew-recv", true, "crash_after_renew_receive")
        }),
        ("source after installing", || {
            crash_case("crash-renew-inst", true, "crash_after_renew_install")
        }),
    ]);
}

/// Pairs, lets the first renewal crash the source (`source`) or the target at `fault`
/// (an abort, as kill -9 would end it), restarts it without the fault, and checks that
/// the pair renews on the next attempt: one certificate issued for the renewal, the one
/// installed, its key the certificate's, the old generation retired and gone.
fn crash_case(name: &str, source: bool, fault: &str) {
    let (mut src_opts, mut tgt_opts) = (pairing_opts(), lab_target());
    let opts = if source { &mut src_opts } else { &mut tgt_opts };
    *opts = opts.clone().set("fault", fault);
    let (mut src, mut tgt) = start_pair_with(name, src_opts, tgt_opts);
    let (st, tt, sid) = paired(&src, &tgt);
    let dir = pairing_dir(&src);
    let old = identity_of(&dir, 0);
    let crashed = if source { &mut src } else { &mut tgt };
    assert!(
        crashed.wait_exit(RENEWAL).is_some(),
        "the fault did not end the daemon\n{}",
        crashed.log()
    );
    assert!(crashed.log().contains("fault injection: aborting"));
    crashed.opts.env.retain(|(k, _)| k != "REPLGATE_FAULT");
    crashed.restart();
    let row = eventually(RENEWAL, "the renewal completed after the crash", || {
        let row = target_row(&src, &st);
        (row["certificate_renewed"].is_i64()
            && row["status"] == "complete"
            && !dir.join("cert.pem").exists())
        .then_some(row)
    });
    let renewals = audit_rows(&tgt, &tt, "certificate renewed", sid);
    assert_eq!(
        renewals.len(),
        1,
        "one certificate for one renewal: {renewals:#?}"
    );
    let installed = identity_of(&dir, 1);
    let serial = serial_of(&installed.0[0]);
    assert_eq!(row["certificate_serial"], serial.as_str());
    assert!(
        str_of(&renewals[0], "detail").contains(&format!("-> {serial} ")),
        "{renewals:#?}"
    );
    let key = std::fs::read_to_string(dir.join("key-1.pem")).unwrap();
    let info = replgate::ca::cert_info(installed.0[0].as_ref()).unwrap();
    assert_eq!(
        replgate::ca::key_fingerprint(&key).unwrap(),
        info.key_fingerprint
    );
    assert!(hello_works(&tgt, installed, sid));
    assert!(
        refused(&tgt, old),
        "the old serial is retired after the proof"
    );
    if fault == "crash_after_renew_commit" {
        assert!(
            tgt.log().contains("answered again with certificate"),
            "{}",
            tgt.log()
        );
    }
}
