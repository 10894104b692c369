//! Target side of pairing against a real daemon: inbox, decisions, CA signing, spool,
//! caps, expiry, path tricks, crash repair and unpairing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{
    appliances, eventually, mode, run_ok, simple_csr, spool_token, systems_row, tool, Csr, Daemon,
    Filed, Options, Response,
};

/// A P-256 CSR that asks for much more than it may get: a CA flag, names, usages.
pub fn greedy_csr() -> Csr {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        CertificateParams::new(vec!["evil.example".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "I am a CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::CodeSigning,
    ];
    let csr = params.serialize_request(&key).unwrap();
    Csr {
        pem: csr.pem().unwrap(),
        public_key_bits: rcgen::PublicKeyData::der_bytes(&key).to_vec(),
    }
}

fn spool_get(d: &Daemon, poll: &str, name: &str) -> Response {
    d.client().get(&format!("{poll}{name}"), None)
}

fn pending_ids(d: &Daemon, token: &str) -> Vec<u64> {
    let r = d.client().get("/api/replication/pending", Some(token));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["request_id"].as_u64().unwrap())
        .collect()
}

fn accept(d: &Daemon, token: &str, body: Value) -> Response {
    d.client()
        .post_json("/api/replication/source", Some(token), &body)
}

#[test]
fn accepted_csr_is_signed_as_a_client_only_end_entity_with_the_targets_subject() {
    let d = Daemon::start("target-accept", Options::default());
    let root = d.root_token();
    let csr = greedy_csr();
    let filed = d.file_request_csr("11111111-2222-4333-8444-555555555555", &csr.pem);
    let Filed { id, poll, code, .. } = filed.clone();
    assert!(poll.starts_with("/replication/v1/spool/") && poll.ends_with('/'));
    assert_eq!(filed.json["ca_fingerprint"].as_str().unwrap().len(), 64);

    // Pending in the inbox and in the systems table.
    let pending = d
        .client()
        .get("/api/replication/pending", Some(&root))
        .json();
    let p = &pending["pending"][0];
    assert_eq!(p["request_id"], id);
    assert_eq!(p["verification_code"], code.as_str());
    assert_eq!(p["status"], "pending");
    assert_eq!(p["remote_addr"], "127.0.0.1");
    let systems = d.systems(&root);
    assert!(appliances(&systems).iter().any(|s| s["local"] == true));
    let ps = systems_row(&systems, |s| s["is_pending"] == true);
    assert_eq!(ps["role"], "Pending Replication Source");
    assert_eq!(ps["id"], -(id as i64));
    assert_eq!(ps["request_id"], id);
    let status = spool_get(&d, &poll, "status.json");
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "pending");
    assert_eq!(spool_get(&d, &poll, "certificate.pem").status, 404);

    // Accept with the id as a number.
    let r = accept(&d, &root, json!({"request_id": id, "accept": true}));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"], "accepted");
    let system_id = r.json()["system_id"].as_u64().unwrap();

    let status = spool_get(&d, &poll, "status.json").json();
    assert_eq!(status["status"], "accepted");
    assert_eq!(status["certificate"], "certificate.pem");
    assert_eq!(status["tunnel"], d.tunnel.to_string());
    let cert_pem = spool_get(&d, &poll, "certificate.pem").text();
    let ca_pem = spool_get(&d, &poll, "ca.pem").text();
    assert_eq!(
        ca_pem.as_bytes(),
        std::fs::read(d.data_dir.join("ca.pem")).unwrap().as_slice()
    );

    let der = crate::harness::pem_certs(cert_pem.as_bytes()).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    assert_eq!(
        &*cert.public_key().subject_public_key.data,
        csr.public_key_bits.as_slice(),
        "the certificate must carry the CSR's key"
    );
    assert!(!cert.is_ca());
    let bc = cert.basic_constraints().unwrap();
    assert!(bc.is_none_or(|b| !b.value.ca));
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("extended key usage")
        .value;
    assert!(eku.client_auth && !eku.server_auth && !eku.code_signing);
    assert!(
        cert.subject_alternative_name().unwrap().is_none(),
        "no names copied from the CSR"
    );
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cn, vec!["11111111-2222-4333-8444-555555555555".to_string()]);
    if let Some(ku) = cert.key_usage().unwrap() {
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    }
    assert!(cert.raw_serial().len() >= 16);
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert!((364..=366).contains(&days), "{days} days");

    // Another implementation agrees: a client certificate issued by this CA.
    let dir = crate::harness::scratch_dir("target-verify");
    std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    run_ok(
        tool("openssl")
            .args(["verify", "-purpose", "sslclient", "-CAfile"])
            .arg(dir.join("ca.pem"))
            .arg(dir.join("cert.pem")),
    );

    // The systems table shows the source with the default storage.
    let row = systems_row(&d.systems(&root), |s| s["id"] == system_id);
    assert_eq!(row["role"], "Non-Managed Replication Source");
    assert_eq!(row["storage_id"], 1);
    assert!(row["certificate_expires"].as_i64().unwrap() > 0);

    // The id as a numeric string works too.
    let Filed { id: id2, .. } = d.file_request("aaaaaaaa-2222-4333-8444-555555555555");
    let r = accept(
        &d,
        &root,
        json!({"request_id": id2.to_string(), "accept": true, "storage_id": "1"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(pending_ids(&d, &root).is_empty());
}

#[test]
fn openssl_req_csr_is_accepted() {
    let d = Daemon::start("target-openssl", Options::default());
    let (_key, csr) = crate::harness::openssl_rsa_csr("openssl-csr", &[]);
    let filed = d.file_request_csr("bbbbbbbb-2222-4333-8444-555555555555", &csr);
    let root = d.root_token();
    let r = accept(&d, &root, json!({"request_id": filed.id, "accept": 1}));
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn decisions_are_validated_and_rejections_reach_the_spool() {
    let d = Daemon::start("target-reject", Options::default());
    let root = d.root_token();
    let Filed { id, poll, .. } = d.file_request("cccccccc-2222-4333-8444-555555555555");

    assert_eq!(
        d.client()
            .post_json(
                "/api/replication/source",
                None,
                &json!({"request_id": id, "accept": false, "message": "x"})
            )
            .status,
        401
    );
    let c = d.client().post_json(
        "/api/users",
        Some(&root),
        &json!({"name": "mon", "password": "password-123", "privilege": "monitor"}),
    );
    assert_eq!(c.status, 201);
    let mon = d.login("mon", "password-123");
    let r = accept(
        &d,
        &mon,
        json!({"request_id": id, "accept": false, "message": "x"}),
    );
    assert_eq!(r.status, 403);

    let r = accept(&d, &root, json!({"request_id": id, "accept": false}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("message"));
    let r = accept(&d, &root, json!({"request_id": 999, "accept": true}));
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), 404);
    let r = accept(
        &d,
        &root,
        json!({"request_id": id, "accept": true, "storage_id": 42}),
    );
    assert_eq!(r.status, 404);
    let r = accept(&d, &root, json!({"request_id": [1], "accept": true}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("request_id"));

    let r = accept(
        &d,
        &root,
        json!({"request_id": id, "accept": false, "message": "not our customer"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["status"], "rejected");
    let status = spool_get(&d, &poll, "status.json").json();
    assert_eq!(
        status,
        json!({"status": "rejected", "message": "not our customer"})
    );
    let r = accept(&d, &root, json!({"request_id": id, "accept": true}));
    assert_eq!(r.status, 409);
    assert_eq!(r.code(), 409);
    // Rejected requests show only on request.
    assert!(pending_ids(&d, &root).is_empty());
    let all = d
        .client()
        .get("/api/replication/pending?include_rejected=1", Some(&root))
        .json();
    assert_eq!(all["pending"][0]["message"], "not our customer");

    let audit = d.client().get("/api/audit?limit=1000", Some(&root)).json();
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"request filed") && actions.contains(&"request rejected"),
        "{actions:?}"
    );
}

fn spool_entries(d: &Daemon) -> usize {
    std::fs::read_dir(d.data_dir.join("spool"))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[test]
fn bad_csrs_are_refused_and_nothing_is_stored() {
    let d = Daemon::start(
        "target-badcsr",
        Options::default().set("max_body_bytes", 8192),
    );
    let root = d.root_token();
    let uuid = "dddddddd-2222-4333-8444-555555555555";

    // A CSR whose signature does not match its content.
    let good = simple_csr().pem;
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(good.as_bytes())
        .map(|d: rustls::pki_types::CertificateSigningRequestDer| d.as_ref().to_vec())
        .unwrap();
    let mut tampered = der.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0x55;
    let pem = pem_encode("CERTIFICATE REQUEST", &tampered);
    let r = d.try_file_request(uuid, &pem);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("csr"));

    let r = d.try_file_request(
        uuid,
        "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n",
    );
    assert_eq!(r.status, 400);
    let r = d.try_file_request(uuid, "not even pem");
    assert_eq!(r.status, 400);
    let r = d.client().post_json(
        "/replication/v1/requests",
        None,
        &json!({"system_uuid": uuid, "csr": good}),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("`name`"));
    let r = d.client().post_json(
        "/replication/v1/requests",
        None,
        &json!({"system_uuid": "../../etc", "name": "n", "host": "h", "version": "1", "csr": good}),
    );
    assert_eq!(r.status, 400);
    let r = d.try_file_request(uuid, &"A".repeat(10_000));
    assert_eq!(r.status, 413);

    // RSA below 2048 bits (a fixture made by `openssl req -newkey rsa:1024`).
    let r = d.try_file_request(uuid, include_str!("fixtures/rsa1024.csr"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("1024"), "{}", r.text());
    assert!(pending_ids(&d, &root).is_empty());
    assert_eq!(spool_entries(&d), 0);
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                b64.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[test]
fn resubmission_is_idempotent_and_caps_answer_429() {
    let d = Daemon::start(
        "target-caps",
        Options::default()
            .set("max_pending_per_address", 2)
            .set("max_pending", 100),
    );
    let csr = simple_csr();
    let a = d.try_file_request("eeeeeeee-0000-4333-8444-555555555555", &csr.pem);
    assert_eq!(a.status, 202);
    let again = d.try_file_request("eeeeeeee-0000-4333-8444-555555555555", &csr.pem);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["request_id"], a.json()["request_id"]);
    assert_eq!(again.json()["poll"], a.json()["poll"]);
    // Another key for the same system while one is open.
    let other = d.try_file_request("eeeeeeee-0000-4333-8444-555555555555", &simple_csr().pem);
    assert_eq!(other.status, 429, "{}", other.text());
    assert!(other.header("Retry-After").is_some());
    // The per-address cap.
    d.file_request("eeeeeeee-0001-4333-8444-555555555555");
    let r = d.try_file_request("eeeeeeee-0002-4333-8444-555555555555", &simple_csr().pem);
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), 429);
}

#[test]
fn global_cap_answers_429() {
    let d = Daemon::start("target-global", Options::default().set("max_pending", 2));
    d.file_request("ffffffff-0000-4333-8444-555555555555");
    d.file_request("ffffffff-0001-4333-8444-555555555555");
    let r = d.try_file_request("ffffffff-0002-4333-8444-555555555555", &simple_csr().pem);
    assert_eq!(r.status, 429);
}

#[test]
fn expired_request_serves_expired_and_cannot_be_accepted() {
    let d = Daemon::start("target-expiry", Options::default().set("request_ttl", 1));
    let root = d.root_token();
    let Filed { id, poll, .. } = d.file_request("12121212-0000-4333-8444-555555555555");
    eventually(Duration::from_secs(10), "status expired", || {
        (spool_get(&d, &poll, "status.json").json()["status"] == "expired").then_some(())
    });
    let r = accept(&d, &root, json!({"request_id": id, "accept": true}));
    assert_eq!(r.status, 409);
    // Ignoring a live request also shows the source `expired`.
    let Filed {
        id: id2,
        poll: poll2,
        ..
    } = d.file_request("12121212-0001-4333-8444-555555555555");
    let r = d
        .client()
        .delete(&format!("/api/replication/pending/{id2}"), Some(&root));
    assert!(r.status == 200 || r.status == 409, "{}", r.text());
    if r.status == 200 {
        assert_eq!(
            spool_get(&d, &poll2, "status.json").json()["status"],
            "expired"
        );
    }
}

#[test]
fn ignore_is_silent_and_the_source_sees_expired() {
    let d = Daemon::start("target-ignore", Options::default());
    let root = d.root_token();
    let Filed { id, poll, .. } = d.file_request("13131313-0000-4333-8444-555555555555");
    let r = d
        .client()
        .delete(&format!("/api/replication/pending/{id}"), Some(&root));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        spool_get(&d, &poll, "status.json").json(),
        json!({"status": "expired"})
    );
    let r = d
        .client()
        .delete(&format!("/api/replication/pending/{id}"), Some(&root));
    assert_eq!(r.status, 409);
    let r = d
        .client()
        .delete("/api/replication/pending/4242", Some(&root));
    assert_eq!(r.status, 404);
}

#[test]
fn spool_refuses_path_tricks_symlinks_and_wrong_tokens() {
    let d = Daemon::start("target-spool", Options::default());
    let Filed { poll, .. } = d.file_request("14141414-0000-4333-8444-555555555555");
    let token = spool_token(&poll);

    // Caching and conditional requests.
    let first = spool_get(&d, &poll, "status.json");
    assert_eq!(first.header("Cache-Control"), Some("no-store"));
    let etag = first.header("ETag").expect("ETag").to_string();
    let r = d.client().request(
        "GET",
        &format!("{poll}status.json"),
        &[("If-None-Match", &etag)],
        b"",
    );
    assert_eq!(r.status, 304);
    let r = d
        .client()
        .request("HEAD", &format!("{poll}status.json"), &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    let tricks = [
        "/replication/v1/spool/../../ca.key".to_string(),
        "/replication/v1/spool/..%2f..%2fca.key/status.json".to_string(),
        format!("/replication/v1/spool/{token}/..%2f..%2fca.key"),
        format!("/replication/v1/spool/{token}/%2e%2e"),
        format!("/replication/v1/spool/{token}/"),
        format!("/replication/v1/spool/{token}"),
        "/replication/v1/spool/".to_string(),
        format!("/replication/v1/spool/{token}/ca.key"),
        format!("/replication/v1/spool/{token}/status.json.tmp"),
        format!("/replication/v1/spool/{}/status.json", "0".repeat(32)),
        format!("/replication/v1/spool/{}/status.json", token.to_uppercase()),
    ];
    for t in &tricks {
        let r = d.client().get(t, None);
        assert_eq!(r.status, 404, "{t} -> {}", r.status);
        assert!(!r.text().contains("PRIVATE KEY"), "{t} leaked a key");
    }

    // A symlink planted where a served file would be is not followed.
    let dir = d.data_dir.join("spool").join(&token);
    std::os::unix::fs::symlink(d.data_dir.join("ca.key"), dir.join("certificate.pem")).unwrap();
    let r = d.client().get(&format!("{poll}certificate.pem"), None);
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("PRIVATE KEY"));
    // A symlinked token directory is not followed either.
    let fake = "ab".repeat(16);
    std::os::unix::fs::symlink(&dir, d.data_dir.join("spool").join(&fake)).unwrap();
    let r = d
        .client()
        .get(&format!("/replication/v1/spool/{fake}/status.json"), None);
    assert_eq!(r.status, 404);
}

#[test]
fn crash_between_commit_and_spool_is_repaired_at_start() {
    let mut d = Daemon::start(
        "target-crash",
        Options::default().set("fault", "crash_after_accept_commit"),
    );
    let root = d.root_token();
    let Filed { id, poll, .. } = d.file_request("15151515-0000-4333-8444-555555555555");
    let token = spool_token(&poll);
    // The accept commits, then the process aborts before writing the spool.
    let _ = d.client().try_request(
        "POST",
        "/api/replication/source",
        &[("AuthToken", &root)],
        json!({"request_id": id, "accept": true})
            .to_string()
            .as_bytes(),
    );
    assert!(
        d.wait_exit(Duration::from_secs(10)).is_some(),
        "fault injection did not stop the daemon"
    );
    let dir = d.data_dir.join("spool").join(&token);
    let stale = std::fs::read_to_string(dir.join("status.json")).unwrap();
    assert!(
        stale.contains("pending"),
        "the spool should still be stale: {stale}"
    );
    assert!(!dir.join("certificate.pem").exists());
    // Plant debris a crash could leave: a temporary file and a stray directory.
    std::fs::write(dir.join("status.json.tmp"), b"{\"status\":\"acc").unwrap();
    std::fs::create_dir_all(d.data_dir.join("spool").join("cd".repeat(16))).unwrap();

    d.opts = Options::default();
    d.restart();
    let status = spool_get(&d, &poll, "status.json").json();
    assert_eq!(status["status"], "accepted");
    let cert = spool_get(&d, &poll, "certificate.pem");
    assert_eq!(cert.status, 200);
    assert!(!dir.join("status.json.tmp").exists());
    assert!(!d.data_dir.join("spool").join("cd".repeat(16)).exists());
    assert_eq!(mode(&dir.join("certificate.pem")), 0o600);
    let root = d.root_token();
    let r = accept(&d, &root, json!({"request_id": id, "accept": true}));
    assert_eq!(r.status, 409, "resolved exactly once");
}

#[test]
fn unpair_revokes_drops_the_row_and_spools_revoked() {
    let mut d = Daemon::start("target-unpair", Options::default());
    let root = d.root_token();
    let Filed { id, poll, .. } = d.file_request("16161616-0000-4333-8444-555555555555");
    let r = accept(&d, &root, json!({"request_id": id, "accept": true}));
    let sid = r.json()["system_id"].as_u64().unwrap();
    let cert_pem = spool_get(&d, &poll, "certificate.pem").text();
    let der = crate::harness::pem_certs(cert_pem.as_bytes()).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let serial: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let r = d
        .client()
        .delete(&format!("/api/replication/source?sid={sid}"), Some(&root));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        spool_get(&d, &poll, "status.json").json(),
        json!({"status": "revoked"})
    );
    assert!(!appliances(&d.systems(&root)).iter().any(|s| s["id"] == sid));
    let r = d
        .client()
        .delete(&format!("/api/replication/source?sid={sid}"), Some(&root));
    assert_eq!(r.status, 404);

    d.stop();
    let store = replgate::store::Store::open(&d.data_dir.join("replgate.redb")).unwrap();
    let revoked = store.revoked_serials().unwrap();
    let serial = serial.trim_start_matches('0');
    assert!(
        revoked.iter().any(|s| s.trim_start_matches('0') == serial),
        "{serial} not in {revoked:?}"
    );
}

#[test]
fn managed_system_becomes_replication_source_and_returns_on_unpair() {
    let d = Daemon::start("target-managed", Options::default());
    let root = d.root_token();
    let r = d.client().post_json(
        "/api/systems",
        Some(&root),
        &json!({"name": "dpu-1", "host": "source.example"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let managed_id = r.json()["id"].as_u64().unwrap();
    assert_eq!(r.json()["role"], "Managed DPU");
    let Filed { id, .. } = d.file_request("17171717-0000-4333-8444-555555555555");
    let r = accept(
        &d,
        &root,
        json!({"request_id": id, "accept": true, "storage_id": 1}),
    );
    assert_eq!(r.json()["system_id"], managed_id);
    let row = systems_row(&d.systems(&root), |s| s["id"] == managed_id);
    assert_eq!(row["role"], "Replication Source");
    assert_eq!(row["storage_id"], 1);
    let r = d.client().delete(
        &format!("/api/replication/source?sid={managed_id}"),
        Some(&root),
    );
    assert_eq!(r.status, 200);
    let systems = d
        .client()
        .get("/api/systems?include_pending=0", Some(&root))
        .json();
    let row = systems_row(&systems, |s| s["id"] == managed_id);
    assert_eq!(row["role"], "Managed DPU");
}

#[test]
fn storage_lists_real_sizes_and_accept_refuses_non_backup_storage() {
    let dir = crate::harness::scratch_dir("storage-cfg");
    let config = dir.join("replgate.toml");
    std::fs::create_dir_all(dir.join("main")).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[storage]]\nid = 1\nname = \"main\"\npath = \"{0}/main\"\n[[storage]]\nid = 2\nname = \"cold\"\npath = \"{0}/cold\"\nusage = \"archive\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let d = Daemon::start(
        "target-storage",
        Options {
            config_file: Some(config),
            ..Options::default()
        },
    );
    let root = d.root_token();
    let all = d.client().get("/api/storage", Some(&root)).json();
    let list = all["storage"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["is_default"], true);
    assert_eq!(list[1]["usage"], "archive");
    assert!(list[0]["mb_size"].as_u64().unwrap() > 0);
    assert!(list[0]["mb_free"].as_u64().unwrap() <= list[0]["mb_size"].as_u64().unwrap());
    let backup = d
        .client()
        .get("/api/storage?usage=backup", Some(&root))
        .json();
    assert_eq!(backup["storage"].as_array().unwrap().len(), 1);

    let Filed { id, .. } = d.file_request("18181818-0000-4333-8444-555555555555");
    let r = accept(
        &d,
        &root,
        json!({"request_id": id, "accept": true, "storage_id": 2}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not a backup storage"));
    let r = accept(
        &d,
        &root,
        json!({"request_id": id, "accept": true, "storage_id": 1}),
    );
    assert_eq!(r.status, 201);
    let sid = r.json()["system_id"].as_u64().unwrap();
    let r = d.client().send_json(
        "PUT",
        &format!("/api/replication/source?sid={sid}"),
        Some(&root),
        &json!({"storage_id": 2}),
    );
    assert_eq!(r.status, 400);
    let r = d.client().send_json(
        "PUT",
        "/api/replication/source?sid=999",
        Some(&root),
        &json!({"storage_id": 1}),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn a_new_key_for_a_paired_source_replaces_the_old_one_everywhere() {
    let d = Daemon::start("target-replace", Options::default());
    let root = d.root_token();
    let uuid = "19191919-0000-4333-8444-555555555555";
    let first = d.file_request(uuid);
    let r = accept(&d, &root, json!({"request_id": first.id, "accept": true}));
    let sid = r.json()["system_id"].as_u64().unwrap();
    let old_poll = first.poll;
    assert_eq!(spool_get(&d, &old_poll, "certificate.pem").status, 200);

    // The same system with a new key: a separate request that names the row it replaces.
    let second = d.file_request(uuid);
    assert_ne!(second.id, first.id);
    let pending = d
        .client()
        .get("/api/replication/pending", Some(&root))
        .json();
    assert_eq!(pending["pending"][0]["replaces_system_id"], sid);
    let r = accept(&d, &root, json!({"request_id": second.id, "accept": true}));
    assert_eq!(
        r.json()["system_id"],
        sid,
        "the same systems row is updated"
    );

    // The old request's spool follows the database at once: revoked, no certificate.
    assert_eq!(
        spool_get(&d, &old_poll, "status.json").json(),
        json!({"status": "revoked"})
    );
    assert_eq!(spool_get(&d, &old_poll, "certificate.pem").status, 404);
    assert_eq!(
        spool_get(&d, &second.poll, "status.json").json()["status"],
        "accepted"
    );

    // System ids are never reused: after an unpair, the next source gets a new one.
    let r = d
        .client()
        .delete(&format!("/api/replication/source?sid={sid}"), Some(&root));
    assert_eq!(r.status, 200);
    let other = d.file_request("20202020-0000-4333-8444-555555555555");
    let r = accept(&d, &root, json!({"request_id": other.id, "accept": true}));
    assert!(r.json()["system_id"].as_u64().unwrap() > sid);
}

/// Sends one request on an open keep-alive connection and reads its response.
fn keep_alive_request(
    tls: &mut crate::harness::Tls,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    use std::io::Write;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: target\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).unwrap();
    tls.flush().unwrap();
    crate::harness::read_response(tls, method == "HEAD").unwrap()
}

/// The headers both paths must agree on (tiny_http adds `Server`, `Date` and, for a
/// `Connection: close` request, `Connection`; the front adds `Date`).
fn comparable(r: &Response) -> Vec<(String, String)> {
    let mut kept: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "content-type"
                    | "content-length"
                    | "cache-control"
                    | "x-content-type-options"
                    | "etag"
            )
        })
        .collect();
    kept.sort();
    kept
}

/// Keep-alive polls are answered in the TLS front (no `Server` header: tiny_http never
/// saw them); `Connection: close` ones go through a worker. Both give the same answer,
/// with every guarantee of the spool handler.
#[test]
fn spool_polls_answered_in_the_front_match_the_worker_path() {
    let d = Daemon::start("target-spool-front", Options::default());
    let filed = d.file_request("16161616-0000-4333-8444-555555555555");
    let (poll, token) = (filed.poll.clone(), filed.token());
    let mut tls = d.client().connect().unwrap();
    let status = format!("{poll}status.json");
    let etag = spool_get(&d, &poll, "status.json")
        .header("ETag")
        .expect("ETag")
        .to_string();

    /// Method, path, request headers, expected status.
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        ("GET", status.clone(), vec![], 200),
        ("HEAD", status.clone(), vec![], 200),
        (
            "GET",
            status.clone(),
            vec![("If-None-Match", etag.as_str())],
            304,
        ),
        (
            "GET",
            status.clone(),
            vec![("If-None-Match", "\"other\", *")],
            304,
        ),
        (
            "GET",
            status.clone(),
            vec![("If-None-Match", "\"other\"")],
            200,
        ),
        ("GET", format!("{poll}certificate.pem"), vec![], 404),
        ("GET", format!("{poll}ca.key"), vec![], 404),
        ("HEAD", format!("{poll}status.json.tmp"), vec![], 404),
        (
            "GET",
            format!("/replication/v1/spool/{}/status.json", "0".repeat(32)),
            vec![],
            404,
        ),
        (
            "GET",
            format!("/replication/v1/spool/{}/status.json", token.to_uppercase()),
            vec![],
            404,
        ),
    ];
    for (method, path, headers, want) in &cases {
        let front = keep_alive_request(&mut tls, method, path, headers);
        let worker = d.client().request(method, path, headers, b"");
        assert_eq!(front.status, *want, "{method} {path}: {}", front.text());
        assert_eq!(
            front.header("Server"),
            None,
            "{method} {path} reached tiny_http"
        );
        assert!(front.header("Date").is_some(), "{method} {path}: no Date");
        assert!(
            worker.header("Server").is_some(),
            "the worker path is tiny_http's"
        );
        assert_eq!(front.status, worker.status, "{method} {path}");
        assert_eq!(front.body, worker.body, "{method} {path}");
        assert_eq!(comparable(&front), comparable(&worker), "{method} {path}");
        if *want == 404 && *method == "GET" {
            assert_eq!(front.json()["result"][0]["code"], 404, "{method} {path}");
        }
    }

    // The path is exact: any other spelling goes to the router, which does not know it.
    for path in [
        format!("/{status}"),
        status.replace("/spool/", "/spool//"),
        format!("{status}?x=1"),
    ] {
        let r = keep_alive_request(&mut tls, "GET", &path, &[]);
        assert!(
            r.header("Server").is_some(),
            "{path} was answered in the front"
        );
        if path.contains('?') {
            assert_eq!(r.status, 200, "{path}: the router ignores the query");
        } else {
            assert_eq!(r.status, 404, "{path}");
        }
    }
    // Methods other than GET and HEAD are the router's: 405.
    let r = keep_alive_request(&mut tls, "DELETE", &status, &[]);
    assert_eq!(r.status, 405);

    // A served name that is a second name of a private file is refused on both paths.
    let dir = d.data_dir.join("spool").join(&token);
    std::fs::hard_link(d.data_dir.join("ca.key"), dir.join("certificate.pem")).unwrap();
    let cert = format!("{poll}certificate.pem");
    for r in [
        keep_alive_request(&mut tls, "GET", &cert, &[]),
        d.client().get(&cert, None),
    ] {
        assert_eq!(r.status, 404);
        assert!(!r.text().contains("PRIVATE KEY"));
    }
    // And a served file that gains a second name stops being served.
    std::fs::hard_link(dir.join("status.json"), d.data_dir.join("status-copy")).unwrap();
    assert_eq!(
        keep_alive_request(&mut tls, "GET", &status, &[]).status,
        404
    );
    assert_eq!(d.client().get(&status, None).status, 404);
}
