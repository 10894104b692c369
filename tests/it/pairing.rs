//! Two (or three) real daemons on loopback, each with its own data directory: the whole
//! pairing from request to a proven tunnel, and every way it must refuse.

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replgate::listener::connect_from;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};

use crate::harness::{
    appliances, eventually, pairing_opts, pem_certs, provider, read_response, start_pair,
    systems_row, tool, Daemon, Response, POLL,
};

pub(crate) fn request(src: &Daemon, token: &str, tgt: &Daemon, extra: Value) -> Response {
    let mut body = json!({"type": "appliance", "target": tgt.api.to_string()});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    src.client()
        .post_json("/api/replication/target", Some(token), &body)
}

pub(crate) fn target_row(src: &Daemon, token: &str) -> Value {
    let r = src.client().get("/api/replication/targets", Some(token));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["targets"][0].clone()
}

pub(crate) fn wait_status(src: &Daemon, token: &str, status: &str, within: Duration) -> Value {
    eventually(within, &format!("source status {status}"), || {
        let row = target_row(src, token);
        (row["status"] == status).then_some(row)
    })
}

pub(crate) fn accept(
    tgt: &Daemon,
    token: &str,
    request_id: &Value,
    storage: Option<u64>,
) -> Response {
    let mut body = json!({"request_id": request_id, "accept": true});
    if let Some(s) = storage {
        body["storage_id"] = json!(s);
    }
    let r = tgt
        .client()
        .post_json("/api/replication/source", Some(token), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r
}

/// Requests with the right fingerprint and returns the 201 body.
pub(crate) fn paired_request(src: &Daemon, st: &str, tgt: &Daemon) -> Value {
    let r = request(src, st, tgt, json!({"fingerprint": tgt.ca_fingerprint()}));
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

/// Requests with the right fingerprint, accepts on the target and waits until the source
/// proved the tunnel; returns the accept's 201 body (`system_id` on the target).
pub(crate) fn pair_completely(src: &Daemon, st: &str, tgt: &Daemon, tt: &str) -> Value {
    let filed = paired_request(src, st, tgt);
    let accepted = accept(tgt, tt, &filed["request_id"], None).json();
    wait_status(src, st, "complete", Duration::from_secs(POLL + 8));
    accepted
}

pub(crate) fn pairing_dir(src: &Daemon) -> std::path::PathBuf {
    let dir = src.data_dir.join("targets");
    let entry = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .next()
        .expect("a pairing directory");
    entry.path()
}

pub(crate) type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);
pub(crate) type TunnelStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A mutual-TLS connection to the target's tunnel, handshake completed.
pub(crate) fn tunnel_connect(
    tgt: &Daemon,
    client: Option<Identity>,
) -> Result<TunnelStream, String> {
    tunnel_connect_from(tgt, client, Ipv4Addr::LOCALHOST)
}

/// The same from a chosen loopback address (one test playing several sources).
pub(crate) fn tunnel_connect_from(
    tgt: &Daemon,
    client: Option<Identity>,
    source: Ipv4Addr,
) -> Result<TunnelStream, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tgt.ca_der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    // A tunnel on IPv6 is reached from the loopback's IPv6 address.
    let tcp = if tgt.tunnel.is_ipv4() {
        connect_from(source, tgt.tunnel)
    } else {
        TcpStream::connect_timeout(&tgt.tunnel, Duration::from_secs(10))
    }
    .map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(config),
        ServerName::IpAddress(tgt.tunnel.ip().into()),
    )
    .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}

/// One GET on an open tunnel connection; `close` asks the daemon to end it afterwards.
pub(crate) fn get_on(tls: &mut TunnelStream, path: &str, close: bool) -> Result<Response, String> {
    let connection = if close { "close" } else { "keep-alive" };
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {connection}\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    read_response(tls, false).map_err(|e| e.to_string())
}

/// A handshake plus one request on the target's tunnel.
pub(crate) fn tunnel_request(
    tgt: &Daemon,
    client: Option<Identity>,
    path: &str,
) -> Result<Response, String> {
    let mut tls = tunnel_connect(tgt, client)?;
    get_on(&mut tls, path, true)
}

pub(crate) fn tunnel_hello(tgt: &Daemon, client: Option<Identity>) -> Result<Response, String> {
    tunnel_request(tgt, client, "/tunnel/v1/hello")
}

/// A client identity for `tgt`'s tunnel without a second daemon: a fresh P-256 key whose
/// request (as `uuid`) the target's admin accepts; the certificate from the spool.
pub(crate) fn accepted_identity(tgt: &Daemon, uuid: &str) -> Identity {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let filed = tgt.file_request_csr(uuid, &csr.pem().unwrap());
    accept(tgt, &tgt.root_token(), &json!(filed.id), None);
    let r = tgt
        .client()
        .get(&format!("{}certificate.pem", filed.poll), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    (pem_certs(&r.body), key)
}

pub(crate) fn identity(dir: &std::path::Path) -> Identity {
    use rustls::pki_types::pem::PemObject;
    let chain = pem_certs(&std::fs::read(dir.join("cert.pem")).unwrap());
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(dir.join("key.pem")).unwrap()).unwrap();
    (chain, key)
}

/// A source that is not replgate brings its own RSA key and signs its CSR with PSS the way
/// openssl does by default (the longest salt, 222 bytes for RSA-2048). The target used to
/// refuse that as "signature does not verify"; now it files, is accepted, and the issued
/// certificate opens the tunnel with that very key.
#[test]
fn an_openssl_rsa_key_with_a_pss_signed_csr_pairs_and_opens_the_tunnel() {
    use rustls::pki_types::pem::PemObject;
    let tgt = Daemon::start("pss-tgt", pairing_opts());
    let (key, csr) =
        crate::harness::openssl_rsa_csr("pss-key", &["-sha256", "-sigopt", "rsa_padding_mode:pss"]);
    let uuid = "7d1b8c1e-5a3f-4d8e-9b2a-6c4f1e0a9d37";
    let filed = tgt.file_request_csr(uuid, &csr);
    let tt = tgt.root_token();
    accept(&tgt, &tt, &json!(filed.id), None);
    let r = tgt
        .client()
        .get(&format!("{}certificate.pem", filed.poll), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let chain = pem_certs(&r.body);
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&key).unwrap()).unwrap();
    let hello = tunnel_hello(&tgt, Some((chain, key))).expect("tunnel handshake");
    assert_eq!(hello.status, 200, "{}", hello.text());
}

#[test]
fn full_pairing_from_untrusted_to_a_proven_tunnel() {
    let (src, tgt) = start_pair("pair");
    let st = src.root_token();
    let tt = tgt.root_token();

    // Without trust: 412 with code 12505 and the presented CA's fingerprint.
    let r = request(&src, &st, &tgt, json!({}));
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(r.code(), 12505);
    assert_eq!(r.json()["result"][0]["kb"], "/api/kb/12505");
    let fp = r.json()["result"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fp, tgt.ca_fingerprint());
    // A wrong fingerprint is refused too.
    let r = request(&src, &st, &tgt, json!({"fingerprint": "00".repeat(32)}));
    assert_eq!(r.status, 412);
    // Another type is 400.
    let r = src.client().post_json(
        "/api/replication/target",
        Some(&st),
        &json!({"type": "cloud", "target": tgt.api.to_string()}),
    );
    assert_eq!(r.status, 400);

    // Any case, with colons.
    let pretty: String = fp
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let r = request(&src, &st, &tgt, json!({"fingerprint": pretty}));
    assert_eq!(r.status, 201, "{}", r.text());
    let filed = r.json();
    assert_eq!(filed["status"], "pending");
    let code = filed["verification_code"].as_str().unwrap().to_string();

    // The same code on both sides.
    let pending = tgt
        .client()
        .get("/api/replication/pending", Some(&tt))
        .json();
    assert_eq!(pending["pending"][0]["verification_code"], code.as_str());
    assert_eq!(pending["pending"][0]["request_id"], filed["request_id"]);
    let row = target_row(&src, &st);
    assert_eq!(row["verification_code"], code.as_str());
    assert_eq!(row["ca_fingerprint"], fp.as_str());
    assert_eq!(row["status"], "pending");
    // Asking again while pending is a conflict.
    assert_eq!(request(&src, &st, &tgt, json!({"insecure": 1})).status, 409);

    let accepted_at = Instant::now();
    accept(&tgt, &tt, &filed["request_id"], Some(1));
    let row = wait_status(&src, &st, "complete", Duration::from_secs(POLL + 8));
    let took = accepted_at.elapsed();
    eprintln!("accept to complete: {took:?} (poll interval {POLL} s)");
    assert!(
        took <= Duration::from_secs(POLL + 1),
        "complete after {took:?}, budget is one poll interval plus a second"
    );
    assert!(row["certificate_expires"].as_i64().unwrap() > 0);
    assert!(row["last_poll"].as_i64().is_some());

    let source = systems_row(&tgt.systems(&tt), |s| {
        s["role"] == "Non-Managed Replication Source"
    });
    assert_eq!(source["storage_id"], 1);
    assert_eq!(
        source["status"], "connected",
        "the tunnel hello marks the pairing collected"
    );
    assert!(source["last_seen"].as_i64().is_some());

    // The installed key is private; the files are there.
    let dir = pairing_dir(&src);
    for f in ["key.pem", "cert.pem", "ca.pem"] {
        assert_eq!(crate::harness::mode(&dir.join(f)), 0o600, "{f}");
    }
}

#[test]
fn managed_source_is_a_replication_source_and_rejection_reaches_the_source() {
    let (src, tgt) = start_pair("pair-managed");
    let (st, tt) = (src.root_token(), tgt.root_token());
    // The source reports its `name` (here the machine's host name) as its host.
    let local = systems_row(&src.systems(&st), |s| s["local"] == true);
    let r = tgt.client().post_json(
        "/api/systems",
        Some(&tt),
        &json!({"name": "known-dpu", "host": local["name"]}),
    );
    assert_eq!(r.status, 201);
    let managed_id = r.json()["id"].clone();
    pair_completely(&src, &st, &tgt, &tt);
    let row = systems_row(&tgt.systems(&tt), |s| s["id"] == managed_id);
    assert_eq!(row["role"], "Replication Source");

    // A second source is rejected with a message.
    let other = Daemon::start("pair-rejected-src", pairing_opts());
    let ot = other.root_token();
    let filed = paired_request(&other, &ot, &tgt);
    let r = tgt.client().post_json(
        "/api/replication/source",
        Some(&tt),
        &json!({"request_id": filed["request_id"], "accept": false, "message": "call us first"}),
    );
    assert_eq!(r.status, 201);
    let row = wait_status(&other, &ot, "rejected", Duration::from_secs(POLL + 8));
    assert_eq!(row["message"], "call us first");
}

#[test]
fn unpair_closes_the_tunnel_at_once_and_the_heartbeat_learns_of_it() {
    let (src, tgt) = start_pair("pair-unpair");
    let (st, tt) = (src.root_token(), tgt.root_token());
    let sid = pair_completely(&src, &st, &tgt, &tt)["system_id"]
        .as_u64()
        .unwrap();
    let dir = pairing_dir(&src);
    // A keep-alive tunnel connection opened before the unpair.
    let mut open = tunnel_connect(&tgt, Some(identity(&dir))).unwrap();
    let ok = get_on(&mut open, "/tunnel/v1/hello", false).unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["system_id"], sid);

    let r = tgt
        .client()
        .delete(&format!("/api/replication/source?sid={sid}"), Some(&tt));
    assert_eq!(r.status, 200);
    // The connection that was already open is refused from its next request on.
    let after = get_on(&mut open, "/tunnel/v1/hello", true);
    assert!(
        after.as_ref().is_ok_and(|r| r.status == 403),
        "an open tunnel connection outlived the unpair: {after:?}"
    );
    let refused = tunnel_hello(&tgt, Some(identity(&dir)));
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.status != 200),
        "revoked certificate still opens the tunnel: {refused:?}"
    );
    let row = wait_status(&src, &st, "revoked", Duration::from_secs(3 * POLL + 8));
    assert!(row["message"].as_str().unwrap_or("").contains("revoked"));
}

#[test]
fn slow_clients_on_the_tunnel_do_not_delay_another_sources_hello() {
    let (src, tgt) = start_pair("pair-slow-tunnel");
    let (st, tt) = (src.root_token(), tgt.root_token());
    pair_completely(&src, &st, &tgt, &tt);
    let dir = pairing_dir(&src);
    let flood = Ipv4Addr::new(127, 0, 0, 1);
    // 300 connections that never handshake (the per-address cap takes 32 of them, the
    // rest are answered 503 or closed) ...
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| connect_from(flood, tgt.tunnel).ok())
        .collect();
    assert!(idle.len() > 256, "only {} connections opened", idle.len());
    // ... and a paired certificate dripping request heads, from the same address.
    let mut drips: Vec<TunnelStream> = (0..8)
        .filter_map(|_| tunnel_connect_from(&tgt, Some(identity(&dir)), flood).ok())
        .collect();
    for d in &mut drips {
        let _ = d.write_all(b"GET /tunnel/v1/hello HTTP/1.1\r\n");
        let _ = d.flush();
    }
    std::thread::sleep(Duration::from_millis(300));

    let other = Ipv4Addr::new(127, 0, 0, 2);
    let started = Instant::now();
    let mut tls = tunnel_connect_from(&tgt, Some(identity(&dir)), other).unwrap();
    let r = get_on(&mut tls, "/tunnel/v1/hello", true).unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        took < Duration::from_secs(1),
        "a hello from another address took {took:?} behind slow clients"
    );
    drop((idle, drips));
}

#[test]
fn the_tunnel_refuses_outsiders_and_anonymous_clients_but_not_openssl_with_the_issued_pair() {
    let (src, tgt) = start_pair("pair-tunnel");
    let (st, tt) = (src.root_token(), tgt.root_token());
    pair_completely(&src, &st, &tgt, &tt);
    let dir = pairing_dir(&src);

    assert!(
        tunnel_hello(&tgt, None)
            .map(|r| r.status != 200)
            .unwrap_or(true),
        "no client certificate must not pass"
    );

    // An outsider: a certificate for the same key, issued by another CA.
    let outsider_ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca_params, outsider_ca_key);
    let own_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("key.pem")).unwrap()).unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = leaf.signed_by(&own_key, &issuer).unwrap();
    let (_, key) = identity(&dir);
    let r = tunnel_hello(&tgt, Some((vec![forged.der().clone()], key)));
    assert!(
        r.map(|r| r.status != 200).unwrap_or(true),
        "a certificate from another CA must not pass"
    );

    // The tunnel serves only its own paths, and the hello needs the tunnel listener: a
    // forged client-certificate header on the API listener gets nothing.
    let r = tunnel_request(&tgt, Some(identity(&dir)), "/api/users").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let r = tgt.client().request(
        "GET",
        "/tunnel/v1/hello",
        &[
            ("X-Client-Cert", "forged"),
            ("X-SSL-Client-Verify", "SUCCESS"),
        ],
        b"",
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let r = tunnel_hello(&tgt, Some(identity(&dir))).unwrap();
    assert_eq!(r.status, 200);

    // And another TLS implementation, given the issued pair, gets in.
    std::fs::write(
        dir.join("target-ca.pem"),
        std::fs::read(tgt.data_dir.join("ca.pem")).unwrap(),
    )
    .unwrap();
    let mut s_client = tool("openssl");
    s_client
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &tgt.tunnel.to_string(),
            "-cert",
        ])
        .arg(dir.join("cert.pem"))
        .arg("-key")
        .arg(dir.join("key.pem"))
        .arg("-CAfile")
        .arg(dir.join("target-ca.pem"));
    let out = crate::harness::run_with_input(
        &mut s_client,
        b"GET /tunnel/v1/hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("200 OK") && text.contains("system_id"),
        "s_client: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_target_that_is_full_passes_its_retry_after_to_the_admin() {
    let src = Daemon::start("pair-full-src", pairing_opts());
    // One open request fills the target; it tells refused sources its poll interval.
    let tgt = Daemon::start(
        "pair-full-tgt",
        pairing_opts().set("max_pending", 1).set("poll_interval", 7),
    );
    tgt.file_request("99999999-0000-4333-8444-555555555555");
    let st = src.root_token();
    let r = request(
        &src,
        &st,
        &tgt,
        json!({"fingerprint": tgt.ca_fingerprint()}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), 429);
    assert_eq!(r.header("Retry-After"), Some("7"), "the target's own wait");
    let rows = src
        .client()
        .get("/api/replication/targets", Some(&st))
        .json();
    assert_eq!(rows["targets"], json!([]), "nothing recorded");
    let left = std::fs::read_dir(src.data_dir.join("targets"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the pairing key is removed again");
}

#[test]
fn a_spoofed_target_on_the_pinned_address_is_refused() {
    let (src, mut tgt) = start_pair("pair-spoof");
    let st = src.root_token();
    paired_request(&src, &st, &tgt);
    // The real target goes away; an impostor with another CA takes its address.
    tgt.stop();
    let impostor_opts = pairing_opts()
        .set("api_listen", tgt.api)
        .set("tunnel_listen", tgt.tunnel);
    let impostor = Daemon::start("pair-spoof-impostor", impostor_opts);
    assert_ne!(impostor.ca_fingerprint(), tgt.ca_fingerprint());
    let row = wait_status(&src, &st, "failed", Duration::from_secs(3 * POLL + 8));
    assert!(
        row["message"].as_str().unwrap().contains("pinned CA"),
        "{row}"
    );
    let dir = pairing_dir(&src);
    assert!(
        !dir.join("cert.pem").exists(),
        "nothing may be installed from an impostor"
    );
}

#[test]
fn a_delivered_certificate_that_is_not_ours_or_not_from_the_pinned_ca_is_refused() {
    let (mut src, tgt) = start_pair("pair-forged");
    let (st, tt) = (src.root_token(), tgt.root_token());
    let filed = paired_request(&src, &st, &tgt);
    // The source is down while the target accepts; then the spool is tampered with.
    src.stop();
    accept(&tgt, &tt, &filed["request_id"], None);
    let pending = tgt
        .client()
        .get("/api/replication/pending?include_rejected=1", Some(&tt))
        .json();
    assert!(pending["pending"].as_array().unwrap().is_empty());
    let spool = std::fs::read_dir(tgt.data_dir.join("spool"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let genuine = std::fs::read(spool.join("certificate.pem")).unwrap();

    // 1. A certificate from the right CA for another key.
    let other = tgt.file_request("99999999-0000-4333-8444-555555555555");
    accept(&tgt, &tt, &json!(other.id), None);
    let foreign = tgt
        .client()
        .get(&format!("{}certificate.pem", other.poll), None)
        .body;
    std::fs::write(spool.join("certificate.pem"), &foreign).unwrap();
    src.restart();
    let st = src.root_token();
    let row = wait_status(&src, &st, "failed", Duration::from_secs(3 * POLL + 8));
    assert!(
        row["message"]
            .as_str()
            .unwrap()
            .contains("does not match this appliance's key"),
        "{row}"
    );
    assert!(!pairing_dir(&src).join("cert.pem").exists());

    // 2. A certificate for our key from another CA, served with that CA.
    let key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(pairing_dir(&src).join("key.pem")).unwrap(),
    )
    .unwrap();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(spool.join("certificate.pem"), cert.pem()).unwrap();
    std::fs::write(spool.join("ca.pem"), ca_cert.pem()).unwrap();
    let failed_before = target_row(&src, &st)["message"].clone();
    let row = eventually(Duration::from_secs(3 * POLL + 8), "a new refusal", || {
        let row = target_row(&src, &st);
        (row["status"] == "failed" && row["message"] != failed_before).then_some(row)
    });
    let message = row["message"].as_str().unwrap();
    assert!(
        message.contains("does not match the pinned") && message.contains(&tgt.ca_fingerprint()),
        "{row}"
    );
    assert!(!pairing_dir(&src).join("cert.pem").exists());

    // 3. The genuine delivery restored: the pairing completes on the next poll.
    std::fs::write(spool.join("certificate.pem"), &genuine).unwrap();
    std::fs::write(
        spool.join("ca.pem"),
        std::fs::read(tgt.data_dir.join("ca.pem")).unwrap(),
    )
    .unwrap();
    wait_status(&src, &st, "complete", Duration::from_secs(3 * POLL + 8));
}

#[test]
fn a_target_reached_by_a_name_its_certificate_lacks_still_pairs() {
    // The target's certificates name tgt.example and 127.0.0.1; the source dials
    // "localhost". The pinned CA is the trust anchor, not the name.
    let src = Daemon::start("pair-name-src", pairing_opts());
    let tgt = Daemon::start(
        "pair-name-tgt",
        pairing_opts().set("hostnames", "tgt.example"),
    );
    let (st, tt) = (src.root_token(), tgt.root_token());
    let target = format!("localhost:{}", tgt.api.port());
    let body = json!({"type": "appliance", "target": target, "fingerprint": tgt.ca_fingerprint()});
    let r = src
        .client()
        .post_json("/api/replication/target", Some(&st), &body);
    assert_eq!(r.status, 201, "{}", r.text());
    accept(&tgt, &tt, &r.json()["request_id"], None);
    wait_status(&src, &st, "complete", Duration::from_secs(3 * POLL + 8));
}

#[test]
fn restarts_mid_pairing_do_not_lose_it() {
    let (mut src, mut tgt) = start_pair("pair-restart");
    let st = src.root_token();
    let filed = paired_request(&src, &st, &tgt);
    // Both restart while pending.
    src.restart();
    tgt.restart();
    let tt = tgt.root_token();
    accept(&tgt, &tt, &filed["request_id"], None);
    // And the target restarts again just after accepting.
    tgt.restart();
    let st = src.root_token();
    wait_status(&src, &st, "complete", Duration::from_secs(3 * POLL + 8));
}

#[test]
fn two_appliances_pair_both_ways() {
    let (a, b) = start_pair("pair-cross");
    let (at, bt) = (a.root_token(), b.root_token());
    let ab = paired_request(&a, &at, &b);
    let ba = paired_request(&b, &bt, &a);
    accept(&b, &bt, &ab["request_id"], None);
    accept(&a, &at, &ba["request_id"], None);
    wait_status(&a, &at, "complete", Duration::from_secs(3 * POLL + 8));
    wait_status(&b, &bt, "complete", Duration::from_secs(3 * POLL + 8));
    // Each sees the other as a source, too.
    for (d, t) in [(&a, &at), (&b, &bt)] {
        assert!(appliances(&d.systems(t))
            .iter()
            .any(|s| s["role"] == "Non-Managed Replication Source"));
    }
    // Forgetting a target removes its row and its key material.
    let r = a
        .client()
        .delete(&format!("/api/replication/target/{}", b.api), Some(&at));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        a.client().get("/api/replication/targets", Some(&at)).json()["targets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        std::fs::read_dir(a.data_dir.join("targets"))
            .unwrap()
            .count(),
        0
    );
    let r = a
        .client()
        .delete(&format!("/api/replication/target/{}", b.api), Some(&at));
    assert_eq!(r.status, 404);
}
