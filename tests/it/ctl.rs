//! `replgate ctl` as an admin uses it: the real binary against real daemons, driving a
//! whole pairing, with `--json` parsed and every documented exit code a script relies on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    eventually, free_port, mode, scratch_dir, start_pair, systems_row, Daemon, Options,
    ADMIN_PASSWORD, POLL,
};

/// What one `replgate ctl` run printed and returned.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub(crate) fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "exit code of {self:?}");
        self
    }
}

/// `replgate ctl` aimed at one daemon, with a token cache in the test's scratch directory
/// and nothing inherited from the caller's environment.
pub(crate) struct Ctl {
    api: String,
    /// `--cacert`; without it, ctl looks in its default places.
    cacert: Option<PathBuf>,
    token_file: PathBuf,
    home: PathBuf,
    /// The working directory (the scratch directory unless set).
    cwd: PathBuf,
}

impl Ctl {
    pub(crate) fn new(d: &Daemon, scratch: &Path) -> Ctl {
        Ctl {
            api: format!("https://{}", d.api),
            cacert: Some(d.data_dir.join("ca.pem")),
            token_file: scratch.join("cache").join("token"),
            home: scratch.to_path_buf(),
            cwd: scratch.to_path_buf(),
        }
    }

    fn with_token_file(mut self, path: PathBuf) -> Ctl {
        self.token_file = path;
        self
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_replgate"));
        cmd.arg("ctl").arg("--api").arg(&self.api);
        if let Some(ca) = &self.cacert {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.args(args)
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("REPLGATE_CTL_TOKEN_FILE", &self.token_file)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start replgate ctl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait for replgate ctl");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None)
    }

    fn login_as(&self, user: &str, password: &str) -> Run {
        self.run_with_stdin(
            &["login", "--user", user, "--password-stdin"],
            Some(&format!("{password}\n")),
        )
    }

    pub(crate) fn login(&self) {
        self.login_as("root", ADMIN_PASSWORD).expect(0);
    }
}

#[test]
fn two_appliances_pair_entirely_through_ctl() {
    let scratch = scratch_dir("ctl-pair");
    let (src, tgt) = start_pair("ctl-pair");
    let on_src = Ctl::new(&src, &scratch);
    let on_tgt = Ctl::new(&tgt, &scratch);

    // One cache file holds both sessions, each kept for the daemon that issued it.
    let r = on_src.login_as("root", ADMIN_PASSWORD).expect(0);
    assert!(r.stdout.contains("logged in"), "{r:?}");
    assert!(!r.stdout.contains('"'), "no token on the screen: {r:?}");
    on_tgt.login();
    assert_eq!(mode(&on_src.token_file), 0o600);
    assert_eq!(mode(on_src.token_file.parent().unwrap()), 0o700);
    let cache: Value = serde_json::from_slice(&std::fs::read(&on_src.token_file).unwrap()).unwrap();
    assert_eq!(cache["sessions"].as_array().unwrap().len(), 2);

    // The first ask is refused until the admin vouches for the target's CA.
    let target = tgt.api.to_string();
    let fp = tgt.ca_fingerprint();
    let r = on_src.run(&["request-target", &target]).expect(7);
    assert!(r.stderr.starts_with("replgate ctl: "), "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "replgate ctl request-target {target} --fingerprint {fp}"
        )),
        "the fingerprint and how to retry: {r:?}"
    );
    let r = on_src.run(&["--json", "request-target", &target]).expect(7);
    assert_eq!(r.json()["result"][0]["code"], 12505);
    assert_eq!(r.json()["result"][0]["fingerprint"], fp.as_str());
    // A fingerprint that is not the presented one is a warning, never a retry line.
    let wrong = "ab".repeat(32);
    let r = on_src
        .run(&["request-target", &target, "--fingerprint", &wrong])
        .expect(7);
    assert!(
        r.stderr.contains("WARNING") && r.stderr.contains("someone between the appliances"),
        "{r:?}"
    );
    assert!(r.stderr.contains(&fp) && r.stderr.contains(&wrong), "{r:?}");
    assert!(
        !r.stderr.contains(&format!("--fingerprint {fp}")),
        "no pinning suggested without comparing: {r:?}"
    );
    // The target's admin reads the same fingerprint off their own daemon.
    let r = on_tgt.run(&["health"]).expect(0);
    assert!(r.stdout.contains(&fp), "{r:?}");

    let filed = on_src
        .run(&["--json", "request-target", &target, "--fingerprint", &fp])
        .expect(0)
        .json();
    assert_eq!(filed["status"], "pending");
    let code = filed["verification_code"].as_str().unwrap().to_string();
    let id = filed["request_id"].as_u64().unwrap().to_string();

    // The target shows the same verification code, in the table and in JSON.
    let table = on_tgt.run(&["pending"]).expect(0).stdout;
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("ID  SYSTEM UUID"), "{table}");
    let row = table.lines().nth(1).expect("one pending row");
    assert!(
        row.starts_with(&format!("{id} ")) && row.contains(&code),
        "{table}"
    );
    let pending = on_tgt.run(&["pending", "--json"]).expect(0).json();
    assert_eq!(pending["pending"][0]["verification_code"], code.as_str());
    assert_eq!(pending["pending"][0]["request_id"].to_string(), id);

    let r = on_tgt.run(&["accept", &id, "--storage", "1"]).expect(0);
    assert!(
        r.stdout.contains(&format!("accepted request {id}")),
        "{r:?}"
    );
    let r = on_tgt.run(&["accept", &id]).expect(6);
    assert!(r.stderr.starts_with("replgate ctl: "), "{r:?}");

    let row = eventually(
        Duration::from_secs(POLL + 8),
        "the source's target to be complete",
        || {
            let targets = on_src.run(&["targets", "--json"]).expect(0).json();
            let row = targets["targets"][0].clone();
            (row["status"] == "complete").then_some(row)
        },
    );
    assert_eq!(row["verification_code"], code.as_str());
    let table = on_src.run(&["targets"]).expect(0).stdout;
    assert!(
        table.starts_with("ID  HOST") && table.contains("complete"),
        "{table}"
    );

    let systems = on_tgt.run(&["systems", "--json"]).expect(0).json();
    let source = systems_row(&systems, |s| s["role"] == "Non-Managed Replication Source");
    assert_eq!(source["storage_id"], 1);
    let table = on_tgt.run(&["systems"]).expect(0).stdout;
    assert!(table.contains("Non-Managed Replication Source"), "{table}");

    let sid = source["id"].to_string();
    on_tgt.run(&["unpair", &sid]).expect(0);
    on_tgt.run(&["unpair", &sid]).expect(5);

    on_src.run(&["logout"]).expect(0);
    on_src.run(&["targets"]).expect(3);
    on_tgt.run(&["logout"]).expect(0);
    assert!(
        !on_tgt.token_file.exists(),
        "the last logout removes the cache"
    );
}

#[test]
fn exit_codes_tell_scripts_what_went_wrong() {
    let scratch = scratch_dir("ctl-exit");
    let d = Daemon::start("ctl-exit", Options::default());
    let root = Ctl::new(&d, &scratch);

    // 3: not logged in (nothing is sent), and a wrong password.
    let r = root.run(&["pending"]).expect(3);
    assert!(r.stderr.contains("replgate ctl login"), "{r:?}");
    let r = root.login_as("root", "not-the-password").expect(3);
    assert!(r.stderr.starts_with("replgate ctl: "), "{r:?}");
    assert!(!root.token_file.exists());
    root.login();

    // 5: unknown ids and names; the daemon's own message is printed.
    let r = root.run(&["accept", "999999"]).expect(5);
    assert!(r.stderr.contains("999999"), "{r:?}");
    root.run(&["ignore", "999999"]).expect(5);
    root.run(&["unpair", "999999"]).expect(5);
    root.run(&["users", "remove", "nobody"]).expect(5);
    root.run(&["forget-target", "192.0.2.1:8443"]).expect(5);
    root.run(&["compression", "999999", "off"]).expect(5);

    // 6: a duplicate user; 4: a user whose privilege is too low.
    let add_watcher = [
        "users",
        "add",
        "watcher",
        "--privilege",
        "monitor",
        "--password-stdin",
    ];
    for code in [0, 6] {
        root.run_with_stdin(&add_watcher, Some("watcher-password\n"))
            .expect(code);
    }
    let users = root.run(&["--json", "users"]).expect(0).json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(
        names.contains(&"root") && names.contains(&"watcher"),
        "{users}"
    );
    let watcher = Ctl::new(&d, &scratch).with_token_file(scratch.join("watcher").join("token"));
    watcher.login_as("watcher", "watcher-password").expect(0);
    watcher.run(&["pending"]).expect(0);
    watcher.run(&["accept", "1"]).expect(4);
    watcher.run(&["users"]).expect(4);

    // 1: the daemon refused for another reason (a 400), with its message.
    let r = root.run(&["accept", "1", "--storage", "99"]).expect(5);
    assert!(r.stderr.starts_with("replgate ctl: "), "{r:?}");
    let r = root
        .run_with_stdin(
            &[
                "users",
                "add",
                "shorty",
                "--privilege",
                "monitor",
                "--password-stdin",
            ],
            Some("short\n"),
        )
        .expect(1);
    assert!(r.stderr.contains("password"), "{r:?}");

    // 2: usage errors never reach the daemon.
    root.run(&["reject", "1"]).expect(2);
    root.run(&["frobnicate"]).expect(2);
    root.run(&["accept", "one"]).expect(2);

    // The latest audit entries, as JSON.
    let audit = root
        .run(&["audit", "--limit", "2", "--json"])
        .expect(0)
        .json();
    let rows = audit["audit"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let all = root.run(&["audit", "--json"]).expect(0).json();
    let last = all["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(rows[1]["id"], last["id"]);
    assert!(rows[0]["id"].as_u64() < rows[1]["id"].as_u64());

    // 8: nothing listening, or a daemon that is not who --cacert says.
    let nobody = Ctl {
        api: format!("https://127.0.0.1:{}", free_port()),
        ..Ctl::new(&d, &scratch)
    };
    let r = nobody.run(&["health"]).expect(8);
    assert!(r.stderr.starts_with("replgate ctl: "), "{r:?}");
    let other_ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = params.self_signed(&other_ca_key).unwrap();
    let other_ca_file = scratch.join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca.pem()).unwrap();
    let impostor = Ctl {
        cacert: Some(other_ca_file),
        ..Ctl::new(&d, &scratch)
    };
    let r = impostor.run(&["health"]).expect(8);
    assert!(r.stderr.contains("--cacert"), "{r:?}");

    // An expired or ended session is a 401 from the daemon: 3 again.
    let ended = Ctl::new(&d, &scratch).with_token_file(scratch.join("ended").join("token"));
    ended.login();
    let token: Value = serde_json::from_slice(&std::fs::read(&ended.token_file).unwrap()).unwrap();
    let raw = token["sessions"][0]["token"].as_str().unwrap().to_string();
    let r = d
        .client()
        .request("POST", "/api/logout", &[("AuthToken", &raw)], b"");
    assert_eq!(r.status, 200);
    let r = ended.run(&["systems"]).expect(3);
    assert!(r.stderr.contains("log in again"), "{r:?}");
}

#[test]
fn ctl_errors_say_what_to_do_next() {
    let scratch = scratch_dir("ctl-next");
    let d = Daemon::start("ctl-next", Options::default());
    let root = Ctl::new(&d, &scratch);

    // Nothing listening is "cannot reach" (8), logged in or not.
    let nobody = Ctl {
        api: format!("https://127.0.0.1:{}", free_port()),
        ..Ctl::new(&d, &scratch)
    };
    let r = nobody.run(&["pending"]).expect(8);
    assert!(r.stderr.contains("cannot reach"), "{r:?}");
    // A daemon that answers but has no session for us: 3, and the login line keeps --api.
    let r = root.run(&["pending"]).expect(3);
    assert!(
        r.stderr
            .contains(&format!("replgate ctl login --api {}", root.api)),
        "{r:?}"
    );
    // The tunnel port is not the API, whatever the command.
    let tunnel = Ctl {
        api: format!("https://{}", d.tunnel),
        ..Ctl::new(&d, &scratch)
    };
    for args in [&["health"][..], &["login", "--password-stdin"]] {
        let r = tunnel.run_with_stdin(args, Some("password\n")).expect(8);
        assert!(
            r.stderr.contains("api_listen") && !r.stderr.contains("Broken pipe (os error 32)\n"),
            "{args:?}: {r:?}"
        );
    }
    root.login();

    // A pending request by the id `systems` shows for it (-ID).
    let filed = d.file_request("5e5e5e5e-0000-4333-8444-555555555555");
    let systems = root.run(&["--json", "systems"]).expect(0).json();
    let pending_row = systems_row(&systems, |s| s["request_id"] == filed.id);
    let shown = pending_row["id"].to_string();
    assert_eq!(shown, format!("-{}", filed.id));
    let r = root.run(&["accept", &shown]).expect(0);
    assert!(
        r.stdout.contains(&format!("accepted request {}", filed.id)),
        "{r:?}"
    );
    // ... but never as a system to unpair.
    let r = root.run(&["unpair", &shown]).expect(2);
    assert!(
        r.stderr.contains(&format!("ctl ignore {}", filed.id)),
        "{r:?}"
    );

    // Unknown ids point at the listing that has the right ones.
    let r = root.run(&["reject", "999999", "--message", "m"]).expect(5);
    assert!(r.stderr.contains("pending --api"), "{r:?}");
    let local = systems_row(&systems, |s| s["local"] == true)["id"].to_string();
    let r = root.run(&["unpair", &local]).expect(5);
    assert!(r.stderr.contains("this appliance itself"), "{r:?}");

    // Times in tables say they are UTC.
    let table = root.run(&["users"]).expect(0).stdout;
    assert!(
        table.lines().nth(1).is_some_and(|l| l.contains(" UTC")),
        "{table}"
    );
    // The version names the commit, without a daemon.
    let r = nobody.run(&["--version"]).expect(0);
    let version = format!("replgate {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(r.stdout.starts_with(&version), "{r:?}");

    // Without --cacert, the CA of a daemon started in the working directory.
    let here = scratch.join("here");
    std::fs::create_dir_all(here.join("replgate-data")).unwrap();
    std::fs::copy(d.data_dir.join("ca.pem"), here.join("replgate-data/ca.pem")).unwrap();
    let plain = Ctl {
        cacert: None,
        cwd: here,
        ..Ctl::new(&d, &scratch)
    };
    let r = plain.run(&["health"]).expect(0);
    assert!(r.stdout.contains(&d.ca_fingerprint()), "{r:?}");
}

#[test]
fn a_join_line_from_token_create_pairs_the_source_with_no_one_accepting() {
    let scratch = scratch_dir("ctl-join");
    let (src, tgt) = start_pair("ctl-join");
    let on_src = Ctl::new(&src, &scratch);
    let on_tgt = Ctl::new(&tgt, &scratch);
    on_src.login();
    on_tgt.login();

    // The token and its join line are printed once, with what to do with them.
    let r = on_tgt
        .run(&["token", "create", "--expires-in", "1h", "--note", "box 7"])
        .expect(0);
    let line = |prefix: &str| {
        r.stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line: {r:?}"))
            .to_string()
    };
    let join = line("replgate-join/1/");
    assert!(r.stdout.contains("shown once"), "{r:?}");
    assert!(join.contains(&tgt.ca_fingerprint()), "{join}");
    let token = join.rsplit('/').next().unwrap().to_string();
    let (id, secret) = token.split_once('.').unwrap();

    // The list shows it valid, with its note, never the secret.
    let table = on_tgt.run(&["token", "list"]).expect(0).stdout;
    assert!(
        table.starts_with("ID ") && table.contains(" STATUS "),
        "{table}"
    );
    assert!(
        table.contains(id) && table.contains("valid") && table.contains("box 7"),
        "{table}"
    );
    assert!(!table.contains(secret), "{table}");

    // The source pastes the one line; nobody accepts; it completes.
    let r = on_src.run(&["request-target", "--join", &join]).expect(0);
    assert!(r.stdout.contains("accept at once"), "{r:?}");
    eventually(
        Duration::from_secs(POLL + 8),
        "the source's target to be complete",
        || {
            let targets = on_src.run(&["targets", "--json"]).expect(0).json();
            (targets["targets"][0]["status"] == "complete").then_some(())
        },
    );
    let listed = on_tgt.run(&["--json", "token", "list"]).expect(0).json();
    assert_eq!(listed["tokens"][0]["status"], "used");

    // The target's own compression, shown in the list, and back to the daemon's.
    let tid =
        on_src.run(&["targets", "--json"]).expect(0).json()["targets"][0]["target_id"].to_string();
    let r = on_src.run(&["compression", &tid, "zstd:2"]).expect(0);
    assert!(r.stdout.contains("compression zstd:2"), "{r:?}");
    let targets = on_src.run(&["targets", "--json"]).expect(0).json();
    assert_eq!(targets["targets"][0]["compression"], "zstd:2");
    on_src.run(&["compression", &tid, "default"]).expect(0);
    let targets = on_src.run(&["targets", "--json"]).expect(0).json();
    assert_eq!(
        targets["targets"][0]["compression"],
        serde_json::Value::Null
    );

    // A second use is refused with the target's reason (403: exit 4), recording nothing.
    on_src
        .run(&["forget-target", &tgt.api.to_string()])
        .expect(0);
    let r = on_src.run(&["request-target", "--join", &join]).expect(4);
    assert!(r.stderr.contains("has been used up"), "{r:?}");
    let targets = on_src.run(&["targets", "--json"]).expect(0).json();
    assert_eq!(targets["targets"], serde_json::json!([]));

    // Revoke, twice (the second is a conflict).
    let r = on_tgt.run(&["token", "revoke", id]).expect(0);
    assert!(r.stdout.contains("stay paired"), "{r:?}");
    on_tgt.run(&["token", "revoke", id]).expect(6);

    // A flood from one network goes in one call.
    for i in 2..5u8 {
        let r = tgt
            .client()
            .with_source(std::net::Ipv4Addr::new(127, 0, 0, i))
            .post_json(
                "/replication/v1/requests",
                None,
                &crate::harness::request_body(
                    &format!("0c7a0000-0000-4000-8000-{i:012x}"),
                    &crate::harness::simple_csr().pem,
                ),
            );
        assert_eq!(r.status, 202, "{}", r.text());
    }
    let r = on_tgt.run(&["ignore", "--from", "127.0.0.0/24"]).expect(0);
    assert!(
        r.stdout
            .contains("ignored 3 open requests from 127.0.0.0/24"),
        "{r:?}"
    );
    let pending = on_tgt.run(&["pending", "--json"]).expect(0).json();
    assert_eq!(pending["pending"], serde_json::json!([]));
}

/// A source's `name` and `asset_tag` (its `host` is ASCII by the filing rules) are stored
/// as sent, but `ctl` tables show bidi overrides and invisible characters escaped:
/// `backup-\u{202e}gpj.exe` must not show as `backup-exe.jpg`, nor `root\u{200b}` as
/// `root`.
#[test]
fn peer_supplied_names_are_stored_as_sent_and_shown_escaped() {
    let scratch = scratch_dir("ctl-bidi");
    let d = Daemon::start("ctl-bidi", Options::default());
    let name = "backup-\u{202e}gpj.exe\u{200b}";
    let tag = "TAG\u{feff}1\u{2066}";
    let body = serde_json::json!({
        "system_uuid": "0f5e2c7a-1b3d-4e6f-8a9b-0c1d2e3f4a5b", "name": name,
        "host": "src.example", "asset_tag": tag, "version": "1.0",
        "csr": crate::harness::simple_csr().pem,
    });
    let r = d
        .client()
        .post_json("/replication/v1/requests", None, &body);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["request_id"].to_string();
    let ctl = Ctl::new(&d, &scratch);
    ctl.login();
    // Stored and answered exactly as sent.
    let pending = ctl.run(&["pending", "--json"]).expect(0).json();
    assert_eq!(pending["pending"][0]["name"], name);
    let token = d.root_token();
    let api = d
        .client()
        .get("/api/replication/pending", Some(&token))
        .json();
    assert_eq!(api["pending"][0]["asset_tag"], tag, "{api}");
    // Shown escaped, in the pending table and, once accepted, in the systems table.
    let table = ctl.run(&["pending"]).expect(0).stdout;
    ctl.run(&["accept", &id]).expect(0);
    let table = table + &ctl.run(&["systems"]).expect(0).stdout;
    assert_eq!(
        table.matches("backup-\\u{202e}gpj.exe\\u{200b}").count(),
        2,
        "{table}"
    );
    for c in ['\u{202e}', '\u{200b}', '\u{2066}', '\u{feff}'] {
        assert!(!table.contains(c), "raw U+{:04X} in {table}", c as u32);
    }
}

#[test]
fn asking_again_after_forgetting_a_pending_target_says_what_the_targets_admin_must_do() {
    let scratch = scratch_dir("ctl-reask");
    let (src, tgt) = start_pair("ctl-reask");
    let on_src = Ctl::new(&src, &scratch);
    on_src.login();
    let target = tgt.api.to_string();
    let fingerprint = tgt.ca_fingerprint();
    let asked = on_src
        .run(&[
            "--json",
            "request-target",
            &target,
            "--fingerprint",
            &fingerprint,
        ])
        .expect(0)
        .json();
    let request_id = asked["request_id"].as_u64().expect("request_id");

    // The source forgets its key; the target still holds the request filed with it.
    on_src.run(&["forget-target", &target]).expect(0);
    let r = on_src
        .run(&["request-target", &target, "--fingerprint", &fingerprint])
        .expect(6);
    for needed in [
        format!("still has open request {request_id}"),
        format!("replgate ctl ignore {request_id}"),
    ] {
        assert!(r.stderr.contains(&needed), "{needed:?} in {r:?}");
    }

    // The target itself keeps answering 429 with Retry-After, now with code 12506 and the id.
    let systems = on_src.run(&["--json", "systems"]).expect(0).json();
    let uuid = systems_row(&systems, |s| s["local"] == true)["system_uuid"]
        .as_str()
        .expect("the local row's system_uuid")
        .to_string();
    let filed = tgt.try_file_request(&uuid, &crate::harness::simple_csr().pem);
    assert_eq!(filed.status, 429, "{}", filed.text());
    assert!(filed.header("retry-after").is_some());
    let body = filed.json();
    assert_eq!(body["result"][0]["code"], 12506);
    assert_eq!(body["result"][0]["kb"], "/api/kb/12506");
    assert_eq!(body["result"][0]["request_id"], request_id);

    // Once the target's admin ignores it, asking again works.
    let on_tgt = Ctl::new(&tgt, &scratch);
    on_tgt.login();
    on_tgt.run(&["ignore", &request_id.to_string()]).expect(0);
    on_src
        .run(&["request-target", &target, "--fingerprint", &fingerprint])
        .expect(0);
}

#[test]
fn replication_is_driven_through_ctl() {
    let scratch = scratch_dir("ctl-repl");
    let (src, tgt) = start_pair("ctl-repl");
    let on_src = Ctl::new(&src, &scratch);
    let on_tgt = Ctl::new(&tgt, &scratch);
    on_src.login();
    on_tgt.login();
    let r = on_src
        .run(&[
            "replication-config",
            "--strategy",
            "manual",
            "--max-concurrent",
            "1",
        ])
        .expect(0);
    assert!(
        r.stdout
            .contains("strategy manual (queue_scheme 0), max_concurrent 1"),
        "{r:?}"
    );
    let r = on_src.run(&["--json", "replication-config"]).expect(0);
    assert_eq!(r.json()["config"]["strategy"], "manual");
    on_src
        .run(&["replication-config", "--strategy", "fast"])
        .expect(2);
    let r = on_src
        .run(&[
            "throttle",
            "--link-mbps",
            "100",
            "--window",
            "10:1-5:8-18",
            "--window",
            "50:0,6:22-6",
        ])
        .expect(0);
    assert!(r.stdout.contains("link 100 Mbit/s"), "{r:?}");
    assert!(
        r.stdout.contains("1,2,3,4,5") && r.stdout.contains("8-18"),
        "{r:?}"
    );
    let r = on_src.run(&["--json", "throttle"]).expect(0);
    assert_eq!(r.json()["throttle"][1]["days"], serde_json::json!([0, 6]));
    on_src.run(&["throttle", "--window", "10:7:1-2"]).expect(2);
    let r = on_src.run(&["throttle", "--clear"]).expect(0);
    assert!(r.stdout.contains("full speed"), "{r:?}");

    let p = crate::harness::pair(&src, &tgt, serde_json::json!({}));
    let dir = src.data_dir.join("storage/web");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("monday"), vec![7u8; 100_000]).unwrap();
    let r = on_src.run(&["queue"]).expect(0);
    assert!(
        r.stdout.contains("the replication queue is empty"),
        "manual: {r:?}"
    );
    let target = p.target_id.to_string();
    let r = on_src
        .run(&["queue", "add", &target, "web/monday"])
        .expect(0);
    assert!(r.stdout.contains("queued web/monday for target"), "{r:?}");
    on_src.run(&["queue", "add", &target, "../etc"]).expect(1);
    eventually(Duration::from_secs(20), "web/monday received", || {
        let r = on_tgt.run(&["received", &p.sid.to_string()]).expect(0);
        r.stdout.contains("web/monday").then_some(())
    });
    let r = on_src.run(&["queue", "--all"]).expect(0);
    assert!(
        r.stdout.contains("web/monday") && r.stdout.contains("done"),
        "{r:?}"
    );
    let r = on_tgt.run(&["verify", &p.sid.to_string()]).expect(0);
    assert!(r.stdout.contains("(1 copies)"), "{r:?}");
    eventually(Duration::from_secs(20), "verify finished", || {
        let r = on_tgt.run(&["received", &p.sid.to_string()]).expect(0);
        r.stdout
            .contains("verify finished: 1 of 1 checked, 0 damaged")
            .then_some(())
    });
    let id =
        on_src.run(&["--json", "queue", "--all"]).expect(0).json()["done"][0]["id"].to_string();
    let r = on_src.run(&["queue", "reset", &id]).expect(0);
    assert!(
        r.stdout.contains("reset (queued again at the end)"),
        "{r:?}"
    );
    on_src.run(&["queue", "remove"]).expect(2);
    let r = on_src
        .run(&["queue", "remove", "--client", "web"])
        .expect(0);
    assert!(
        r.stdout.contains("removed") || r.stdout.contains("no open item"),
        "{r:?}"
    );
}

/// `ctl storage` against a daemon with two directory storages and an S3 bucket: the table
/// and `--json` say what `GET /api/storage` says, the default marked, the bucket's
/// settings shown and its secret nowhere (nor in `check-config`).
#[test]
fn ctl_storage_lists_the_configured_storages() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = scratch_dir("ctl-storage");
    let config = scratch.join("replgate.toml");
    let creds = scratch.join("s3-credentials.toml");
    std::fs::write(
        &creds,
        "access_key_id = \"AKIDSTORAGETEST\"\nsecret_access_key = \"storage-test-secret\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        &config,
        format!(
            "[[storage]]\nid = 1\nname = \"main\"\npath = \"{0}/main\"\n\
             [[storage]]\nid = 7\nname = \"cold\"\npath = \"{0}/cold\"\nusage = \"archive\"\n\
             [[storage]]\nid = 9\nname = \"bucket\"\nkind = \"s3\"\n\
             endpoint = \"http://127.0.0.1:9\"\nbucket = \"backups\"\nprefix = \"/site-a/\"\n\
             credentials_file = \"{1}\"\npath_style = true\ncapacity_mb = 4096\n",
            scratch.display(),
            creds.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(scratch.join("main")).unwrap();
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_replgate"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{checked:?}");
    assert!(
        printed.contains("kind = \"s3\"\nusage = \"backup\"\nendpoint = \"http://127.0.0.1:9\"")
            && printed.contains("prefix = \"site-a\"")
            && printed.contains("capacity_mb = 4096"),
        "{printed}"
    );
    assert!(!printed.contains("storage-test-secret"), "{printed}");
    let d = Daemon::start(
        "ctl-storage",
        Options {
            config_file: Some(config),
            ..Options::default()
        },
    );
    let ctl = Ctl::new(&d, &scratch);
    ctl.login();
    let r = ctl.run(&["storage"]).expect(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{r:?}");
    for column in [
        "ID", "NAME", "TYPE", "USAGE", "SIZE MB", "FREE MB", "DEFAULT", "PATH",
    ] {
        assert!(lines[0].contains(column), "{r:?}");
    }
    let cells = |name: &str| -> Vec<String> {
        let line = lines.iter().find(|l| l.contains(name)).expect(name);
        line.split_whitespace().map(String::from).collect()
    };
    // main exists: its disk's size and free space; cold does not: offline, sizes 0.
    let main = cells("main");
    assert_eq!(main[..4], ["1", "main", "internal", "backup"], "{r:?}");
    let (size, free): (u64, u64) = (main[4].parse().unwrap(), main[5].parse().unwrap());
    assert!(size > 0 && free > 0 && free <= size, "{r:?}");
    assert_eq!(main[6], "yes", "{r:?}");
    let cold = cells("cold");
    assert_eq!(
        cold[..6],
        ["7", "cold", "internal", "archive", "0", "0"],
        "{r:?}"
    );
    assert_eq!(
        cold[6],
        format!("{}/cold", scratch.display()),
        "not the default: {r:?}"
    );
    // The bucket: its capacity, nothing received yet, not the default (an empty cell).
    let bucket = cells("bucket");
    assert_eq!(
        bucket,
        [
            "9",
            "bucket",
            "s3",
            "backup",
            "4096",
            "4096",
            "s3://backups/site-a"
        ],
        "{r:?}"
    );
    let json = ctl.run(&["--json", "storage"]).expect(0).json();
    let api = d.client().get("/api/storage", Some(&d.root_token())).json();
    // The same rows as the API's (free space moves between two reads on a shared disk).
    let stable = |v: &serde_json::Value| -> Vec<String> {
        v["storage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let fields = [
                    "id",
                    "name",
                    "type",
                    "usage",
                    "status",
                    "is_default",
                    "path",
                    "mb_size",
                    "s3",
                ];
                fields.map(|f| s[f].to_string()).join(" ")
            })
            .collect()
    };
    assert_eq!(stable(&json), stable(&api));
    assert_eq!(json["storage"].as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(
        api["storage"][2]["s3"],
        serde_json::json!({"endpoint": "http://127.0.0.1:9", "bucket": "backups",
            "prefix": "site-a", "region": "us-east-1", "path_style": true, "capacity_mb": 4096}),
        "{api}"
    );
    assert!(!api.to_string().contains("storage-test-secret"), "{api}");
}

/// `ctl metrics-token`: a monitor token, shown once, that scrapes `/api/metrics` as
/// Prometheus sends it and can do nothing more; the audit names it.
#[test]
fn ctl_metrics_token_makes_a_scraper_token() {
    let scratch = scratch_dir("ctl-metrics-token");
    let d = Daemon::start("ctl-metrics-token", Options::default());
    let ctl = Ctl::new(&d, &scratch);
    ctl.login();
    let r = ctl.run(&["metrics-token", "--name", "prom-1"]).expect(0);
    assert!(
        r.stdout
            .contains("a scraper token (privilege monitor, no expiry)"),
        "{r:?}"
    );
    assert!(r.stdout.contains("job_name: replgate"), "{r:?}");
    let json = ctl
        .run(&["--json", "metrics-token", "--name", "prom-2"])
        .expect(0)
        .json();
    assert_eq!(json["privilege"], "monitor", "{json}");
    let token = json["token"].as_str().expect("token");
    assert!(!r.stdout.contains(token), "each token is new");
    let bearer = format!("Bearer {token}");
    let scrape = d
        .client()
        .request("GET", "/api/metrics", &[("Authorization", &bearer)], b"");
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    assert!(scrape.text().contains("replgate_build_info"));
    assert_eq!(d.client().get("/api/users", Some(token)).status, 403);
    let audit = ctl.run(&["audit"]).expect(0);
    assert!(
        audit.stdout.contains("prom-1") && audit.stdout.contains("prom-2"),
        "{audit:?}"
    );
    // A monitor cannot make one.
    d.client().post_json(
        "/api/users",
        Some(&d.root_token()),
        &serde_json::json!({"name": "watch", "password": "watch-password-1", "privilege": "monitor"}),
    );
    let watcher = Ctl::new(&d, &scratch).with_token_file(scratch.join("watcher-token"));
    watcher.login_as("watch", "watch-password-1").expect(0);
    watcher.run(&["metrics-token"]).expect(4);
}

/// `ctl users set`: a new privilege takes effect on the user's next call, a new password
/// on the next login (the old one fails), and setting neither is a usage error.
#[test]
fn ctl_users_set_changes_privilege_and_password() {
    let scratch = scratch_dir("ctl-users-set");
    let d = Daemon::start("ctl-users-set", Options::default());
    let ctl = Ctl::new(&d, &scratch);
    ctl.login();
    ctl.run_with_stdin(
        &[
            "users",
            "add",
            "ops",
            "--privilege",
            "monitor",
            "--password-stdin",
        ],
        Some("first-password-1\n"),
    )
    .expect(0);
    let ops_token = d.login("ops", "first-password-1");
    assert_eq!(
        d.client()
            .get("/api/replication/pending", Some(&ops_token))
            .status,
        200
    );
    let add_user =
        serde_json::json!({"name": "x", "password": "x-password-123", "privilege": "monitor"});
    assert_eq!(
        d.client()
            .post_json("/api/users", Some(&ops_token), &add_user)
            .status,
        403
    );

    let r = ctl
        .run(&["users", "set", "ops", "--privilege", "superuser"])
        .expect(0);
    assert!(r.stdout.contains("updated user ops (superuser)"), "{r:?}");
    assert_eq!(
        d.client()
            .post_json("/api/users", Some(&ops_token), &add_user)
            .status,
        201
    );
    let r = ctl
        .run_with_stdin(
            &["--json", "users", "set", "ops", "--password-stdin"],
            Some("second-password-2\n"),
        )
        .expect(0);
    assert_eq!(r.json()["privilege"], "superuser", "{r:?}");
    let old = d.client().post_json(
        "/api/login",
        None,
        &serde_json::json!({"username": "ops", "password": "first-password-1"}),
    );
    assert_eq!(old.status, 401, "{}", old.text());
    d.login("ops", "second-password-2");
    let users = ctl.run(&["--json", "users"]).expect(0).json();
    let ops = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ops")
        .cloned()
        .expect("ops listed");
    assert_eq!(ops["privilege"], "superuser");
    ctl.run(&["users", "set", "nobody", "--privilege", "monitor"])
        .expect(5);
    ctl.run(&["users", "set", "ops", "--privilege", "root"])
        .expect(2);
}

/// `ctl audit --limit N`: the latest N entries, oldest first, in the table and in
/// `--json`, whatever the number of entries.
#[test]
fn ctl_audit_limit_shows_the_latest_entries_oldest_first() {
    let scratch = scratch_dir("ctl-audit-limit");
    let d = Daemon::start("ctl-audit-limit", Options::default());
    let ctl = Ctl::new(&d, &scratch);
    ctl.login();
    let root = d.root_token();
    for i in 0..12 {
        let r = d.client().post_json(
            "/api/users",
            Some(&root),
            &serde_json::json!({"name": format!("user{i:02}"), "password": "password-1234", "privilege": "monitor"}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let all = d.client().get("/api/audit?limit=1000", Some(&root)).json()["audit"]
        .as_array()
        .cloned()
        .unwrap();
    assert!(all.len() >= 14, "{}", all.len());
    let newest: Vec<u64> = all[all.len() - 5..]
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();

    let json = ctl
        .run(&["--json", "audit", "--limit", "5"])
        .expect(0)
        .json();
    let ids: Vec<u64> = json["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, newest, "{json}");
    let table = ctl.run(&["audit", "--limit", "5"]).expect(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{table:?}");
    assert!(lines[0].starts_with("ID"), "{table:?}");
    for (line, id) in lines[1..].iter().zip(&newest) {
        assert!(line.starts_with(&id.to_string()), "{table:?}");
    }
    assert!(lines[5].contains("user11"), "{table:?}");
    // More than there are: all of them; 0 is refused.
    let json = ctl
        .run(&["--json", "audit", "--limit", "100000"])
        .expect(0)
        .json();
    let every = json["audit"].as_array().map(Vec::len).unwrap_or(0);
    let now = d.client().get("/api/audit?limit=1000", Some(&root)).json()["audit"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    assert!(every >= all.len() && every == now, "{every} of {now}");
    ctl.run(&["audit", "--limit", "0"]).expect(2);
}
