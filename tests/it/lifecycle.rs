//! First start, restart, file modes, signals, and a plain curl against the defaults.

use std::process::Command;

use crate::harness::{mode, Daemon, Options, ADMIN_PASSWORD};

#[test]
fn restart_keeps_users_ca_certificates_and_system_uuid_with_private_modes() {
    let mut d = Daemon::start("life-restart", Options::default());
    let root = d.root_token();
    let r = d.client().post_json(
        "/api/users",
        Some(&root),
        &serde_json::json!({"name": "keeper", "password": "password-123", "privilege": "administer"}),
    );
    assert_eq!(r.status, 201);
    let files = [
        "ca.pem",
        "ca.key",
        "api.pem",
        "api.key",
        "tunnel.pem",
        "tunnel.key",
        "replgate.redb",
    ];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(d.data_dir.join(f)).unwrap())
        .collect();
    let uuid_before = d.logged("system");

    d.restart();
    for (f, b) in files.iter().zip(&before) {
        if *f != "replgate.redb" {
            assert_eq!(
                &std::fs::read(d.data_dir.join(f)).unwrap(),
                b,
                "{f} changed across restart"
            );
        }
        assert_eq!(mode(&d.data_dir.join(f)), 0o600, "{f} mode");
    }
    assert_eq!(mode(&d.data_dir), 0o700);
    assert_eq!(d.logged("system"), uuid_before);
    d.login("keeper", "password-123");
    d.login("root", ADMIN_PASSWORD);
}

#[test]
fn generated_admin_password_is_written_once_to_a_private_file() {
    let dir = crate::harness::scratch_dir("life-genpw");
    let [port, tport] = crate::harness::free_ports::<2>();
    let mut child = Command::new(env!("CARGO_BIN_EXE_replgate"))
        .arg("serve")
        .env_clear()
        .env("REPLGATE_DATA_DIR", dir.join("data"))
        .env("REPLGATE_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("REPLGATE_TUNNEL_LISTEN", format!("127.0.0.1:{tport}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pw_path = dir.join("data/admin-password");
    crate::harness::eventually(
        std::time::Duration::from_secs(20),
        "admin-password file",
        || pw_path.exists().then_some(()),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(mode(&pw_path), 0o600);
    let pw = std::fs::read_to_string(&pw_path)
        .unwrap()
        .trim()
        .to_string();
    assert!(pw.len() >= 16);
    let client = crate::harness::Client::new(
        format!("127.0.0.1:{port}").parse().unwrap(),
        crate::harness::pem_certs(&std::fs::read(dir.join("data/ca.pem")).unwrap()).remove(0),
    );
    let r = crate::harness::eventually(std::time::Duration::from_secs(20), "login", || {
        client
            .try_request(
                "POST",
                "/api/login",
                &[],
                serde_json::json!({"username": "root", "password": pw})
                    .to_string()
                    .as_bytes(),
            )
            .ok()
    });
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&pw_path.display().to_string()),
        "log must name the password file:\n{log}"
    );
    assert!(!log.contains(&pw), "the password itself must not be logged");
}

#[test]
fn sigterm_exits_zero() {
    let mut d = Daemon::start("life-sigterm", Options::default());
    assert!(d.stop().success());
    let mut d = Daemon::start("life-sigint", Options::default());
    assert!(d.signal("INT").success());
}

#[test]
fn curl_with_the_ca_file_reaches_health() {
    let d = Daemon::start("life-curl", Options::default());
    let out = crate::harness::run_ok(
        crate::harness::tool("curl")
            .args(["-sS", "--noproxy", "*", "--cacert"])
            .arg(d.data_dir.join("ca.pem"))
            .arg(format!("https://127.0.0.1:{}/api/health", d.api.port())),
    );
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["status"], "ok");
}

#[test]
fn ctl_settings_exported_in_the_shell_do_not_stop_the_daemon() {
    let ctl_env = [
        ("ctl_api", "https://127.0.0.1:1"),
        ("ctl_cacert", "/var/lib/replgate/ca.pem"),
        ("ctl_token_file", "/tmp/replgate-token"),
        ("password", "not-for-the-daemon"),
    ];
    let opts = ctl_env
        .iter()
        .fold(Options::default(), |o, (k, v)| o.set(k, v));
    let mut check = Command::new(env!("CARGO_BIN_EXE_replgate"));
    check.arg("check-config").env_clear().envs(opts.env.clone());
    crate::harness::run_ok(&mut check);
    let d = Daemon::start("life-ctl-env", opts);
    assert_eq!(d.client().get("/api/health", None).status, 200);
}

/// docs/operations.md, "Backup and restore", on a real daemon: archive the data directory
/// without the spool while stopped, lose the directory, restore it, start.
#[test]
fn a_restored_backup_without_the_spool_serves_the_same_pairings() {
    let mut d = Daemon::start("life-backup", Options::default());
    let root = d.root_token();
    let filed = d.file_request("b0b0b0b0-0000-4333-8444-555555555555");
    let r = d.client().post_json(
        "/api/replication/source",
        Some(&root),
        &serde_json::json!({"request_id": filed.id, "accept": true}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let certificate = d
        .client()
        .get(&format!("{}certificate.pem", filed.poll), None)
        .text();
    let fingerprint = d.ca_fingerprint();
    // The stored rows (the local one carries live figures: free space, time).
    let stored = |v: serde_json::Value| -> Vec<serde_json::Value> {
        crate::harness::appliances(&v)
            .iter()
            .filter(|s| s["local"] != true)
            .cloned()
            .collect()
    };
    let systems_before = stored(d.systems(&root));
    assert_eq!(systems_before.len(), 1);
    assert!(d.stop().success());

    let parent = d.data_dir.parent().unwrap().to_path_buf();
    let archive = parent.join("backup.tar.gz");
    let name = d
        .data_dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let spool = format!("--exclude={name}/spool");
    let storage = format!("--exclude={name}/storage");
    crate::harness::run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&parent)
            .args(["-cpzf"])
            .arg(&archive)
            .args([&spool, &storage, &name]),
    );
    std::fs::remove_dir_all(&d.data_dir).unwrap();
    crate::harness::run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&parent)
            .arg("-xpzf")
            .arg(&archive),
    );
    assert!(
        !d.data_dir.join("spool").exists(),
        "the spool was not backed up"
    );
    assert_eq!(
        mode(&d.data_dir.join("ca.key")),
        0o600,
        "tar -p keeps modes"
    );

    d.restart();
    assert_eq!(d.ca_fingerprint(), fingerprint);
    let root = d.root_token();
    assert_eq!(stored(d.systems(&root)), systems_before);
    let status = d.client().get(&format!("{}status.json", filed.poll), None);
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["status"], "accepted");
    let served = d
        .client()
        .get(&format!("{}certificate.pem", filed.poll), None);
    assert_eq!(
        served.text(),
        certificate,
        "the spool is rebuilt byte for byte"
    );
    assert!(
        d.log().contains("spool brought in line with the database"),
        "{}",
        d.log()
    );
}
