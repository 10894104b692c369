//! Test harness: starts real `replgate serve` processes on loopback, each with its own data
//! directory, and talks to them over real TLS. A failing test prints the daemon's log.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

pub const ADMIN_PASSWORD: &str = "test-root-password";

/// The poll and heartbeat period of daemons in pairing tests, in seconds.
pub const POLL: u64 = 2;

/// Options for a daemon that takes part in a pairing: short poll and heartbeat periods.
pub fn pairing_opts() -> Options {
    Options::default()
        .set("poll_interval", POLL)
        .set("heartbeat_interval", POLL)
}

/// A source and a target for a pairing test, `{name}-src` and `{name}-tgt`, started side
/// by side (each start generates a CA and hashes a password: seconds on a busy machine).
pub fn start_pair(name: &str) -> (Daemon, Daemon) {
    start_pair_with(name, pairing_opts(), pairing_opts())
}

/// [`start_pair`] with the source and the target started on these options.
pub fn start_pair_with(name: &str, source: Options, target: Options) -> (Daemon, Daemon) {
    std::thread::scope(|s| {
        let src = s.spawn(|| Daemon::start(&format!("{name}-src"), source));
        let tgt = Daemon::start(&format!("{name}-tgt"), target);
        let src = src
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (src, tgt)
    })
}

/// A completed pairing of two daemons: the source's target id, the target's system id
/// for the source, and the source's uuid (its directory in the target's storage).
pub struct Paired {
    pub target_id: u64,
    pub sid: u64,
    pub source_uuid: String,
}

/// Pairs `src` with `tgt` (fingerprint given, accepted on the target with `accept`'s
/// extra fields, e.g. `quota_mb`) and waits until the source reports `complete`.
pub fn pair(src: &Daemon, tgt: &Daemon, accept: Value) -> Paired {
    let (st, tt) = (src.root_token(), tgt.root_token());
    let r = src.client().post_json(
        "/api/replication/target",
        Some(&st),
        &serde_json::json!({"type": "appliance", "target": tgt.api.to_string(),
                            "fingerprint": tgt.ca_fingerprint()}),
    );
    assert_eq!(r.status, 201, "request target: {}", r.text());
    let filed = r.json();
    let mut body = serde_json::json!({"request_id": filed["request_id"], "accept": true});
    if let (Some(b), Some(extra)) = (body.as_object_mut(), accept.as_object()) {
        b.extend(extra.clone());
    }
    let r = tgt
        .client()
        .post_json("/api/replication/source", Some(&tt), &body);
    assert_eq!(r.status, 201, "accept: {}", r.text());
    let sid = r.json()["system_id"].as_u64().expect("system_id");
    let target_id = filed["target_id"].as_u64().expect("target_id");
    eventually(Duration::from_secs(POLL + 20), "pairing complete", || {
        let t = src
            .client()
            .get("/api/replication/targets", Some(&st))
            .json();
        (t["targets"][0]["status"] == "complete").then_some(())
    });
    let local = systems_row(&src.systems(&st), |s| s["local"] == true);
    Paired {
        target_id,
        sid,
        source_uuid: local["system_uuid"].as_str().expect("uuid").to_string(),
    }
}

/// `program` ready to run, after checking that it is installed: a test that needs a tool
/// fails without it, never passes silently. `.ci/run` installs the package named here.
#[track_caller]
pub fn tool(program: &str) -> Command {
    let (probe, package) = match program {
        "openssl" => ("version", "openssl"),
        "curl" => ("--version", "curl"),
        "slowhttptest" => ("-h", "slowhttptest"),
        "chromium" => ("--version", "chromium"),
        "chromedriver" => ("--version", "chromium-driver"),
        "ip" => ("-V", "iproute2"),
        "python3" => ("--version", "python3"),
        other => panic!("tool({other:?}): name its Debian package here and in .ci/run"),
    };
    match Command::new(program).arg(probe).output() {
        // slowhttptest has no option that exits 0: its usage text shows it is there.
        Ok(out)
            if out.status.success()
                || String::from_utf8_lossy(&out.stdout).contains("slowhttptest, a tool") =>
        {
            Command::new(program)
        }
        other => panic!(
            "this test runs `{program}`, which is not installed here ({other:?}): \
             install the Debian package `{package}` (.ci/run does)"
        ),
    }
}

/// An RSA-2048 key and CSR made by `openssl req` (as a source that is not replgate makes
/// them), with `sign_options` added (e.g. `-sigopt rsa_padding_mode:pss`): the key's path
/// and the CSR's PEM.
#[track_caller]
pub fn openssl_rsa_csr(name: &str, sign_options: &[&str]) -> (PathBuf, String) {
    let dir = scratch_dir(name);
    let (key, csr) = (dir.join("key.pem"), dir.join("csr.pem"));
    run_ok(
        tool("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=source",
            ])
            .args(sign_options)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    let pem = std::fs::read_to_string(&csr).expect("read the csr");
    (key, pem)
}

/// Runs `cmd` to its end and checks that it succeeded; its output.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd` with `input` on its standard input; its output, whatever its status.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .unwrap_or_else(|e| panic!("write to {cmd:?}: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A free loopback port (bound then released; a rare race with another test is possible).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback ports: all are held at once while chosen, so they differ.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local addr").port())
}

/// Copies the directory tree `from` to `to`, files 0600 and directories 0700 as the daemon
/// keeps them (git does not keep modes).
pub fn copy_private(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).expect("create a copy's directory");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).expect("chmod dir");
    for entry in std::fs::read_dir(from).expect("read a fixture directory") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_private(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a fixture file");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .expect("chmod file");
        }
    }
}

/// How much of a daemon's log a failed test prints.
const LOG_TAIL_LINES: usize = 150;

/// A fresh directory for one test's files, under this test process's own root
/// `replgate-it-<pid>/` in the temporary directory. A run leaves its root behind (a failed
/// test's daemon logs and data are there to read); the next run removes the roots of
/// processes that have ended, so runs do not pile up.
pub fn scratch_dir(name: &str) -> PathBuf {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(remove_roots_of_ended_runs);
    let dir = std::env::temp_dir()
        .join(format!("replgate-it-{}", std::process::id()))
        .join(format!("{name}-{}", SEQ.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Removes the `replgate-it-<pid>` roots whose process is gone.
fn remove_roots_of_ended_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("replgate-it-"))
            .and_then(|p| p.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How to start a daemon.
#[derive(Clone, Default)]
pub struct Options {
    pub env: Vec<(String, String)>,
    /// Shell prefix such as `ulimit -n 64;` (the daemon is exec'd by `sh -c`).
    pub shell_prefix: Option<String>,
    /// Passed as `--config`.
    pub config_file: Option<PathBuf>,
    /// Variables the harness sets by default that this daemon must not see
    /// (`REPLGATE_HOSTNAMES`, so that the config file's `hostnames` count).
    pub unset: Vec<String>,
    /// A data directory to start from (copied, modes made private): a fixture.
    pub data_from: Option<PathBuf>,
    /// A network namespace to run in (`ip netns exec`); the test's clients enter it too.
    /// Give `api_listen` and `tunnel_listen`: the harness picks free ports on the host.
    pub netns: Option<String>,
    /// The shell prefix gives the daemon a mount namespace of its own (`unshare -m`) with a
    /// filesystem mounted over its data directory: the harness reads the daemon's files
    /// where the daemon sees them ([`Daemon::seen`], through `/proc/<pid>/root`).
    pub own_mounts: bool,
}

impl Options {
    /// Leaves the variable `key` out of the daemon's environment.
    pub fn unset(mut self, key: &str) -> Self {
        self.unset.push(key.to_string());
        self
    }

    /// Runs the daemon in the network namespace `ns` (tests/it/wan.rs).
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((
            format!("REPLGATE_{}", key.to_ascii_uppercase()),
            value.to_string(),
        ));
        self
    }
}

pub struct Daemon {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub tunnel: SocketAddr,
    pub log_path: PathBuf,
    pub opts: Options,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(name: &str, opts: Options) -> Daemon {
        let dir = scratch_dir(name);
        let data_dir = dir.join("data");
        let given = |key: &str| {
            opts.env
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.parse().ok())
        };
        let [api_port, tunnel_port] = free_ports::<2>();
        let api: SocketAddr = given("REPLGATE_API_LISTEN")
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], api_port)));
        let tunnel: SocketAddr = given("REPLGATE_TUNNEL_LISTEN")
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], tunnel_port)));
        let ports_given =
            given("REPLGATE_API_LISTEN").is_some() || given("REPLGATE_TUNNEL_LISTEN").is_some();
        if let Some(from) = &opts.data_from {
            copy_private(from, &data_dir);
        }
        let mut d = Daemon {
            data_dir,
            api,
            tunnel,
            log_path: dir.join("daemon.log"),
            opts,
            child: None,
        };
        // A port chosen free can be taken before the daemon binds it (client sockets of
        // parallel tests draw from the same ephemeral range): choose again, twice at most.
        for attempt in 0..3 {
            match d.try_spawn() {
                Ok(()) => return d,
                Err(log)
                    if !ports_given && attempt < 2 && log.contains("Address already in use") =>
                {
                    let [a, t] = free_ports::<2>();
                    d.api = SocketAddr::from(([127, 0, 0, 1], a));
                    d.tunnel = SocketAddr::from(([127, 0, 0, 1], t));
                }
                Err(log) => panic!("replgate exited during start\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("replgate exited during start\n{log}");
        }
    }

    /// Starts the process and waits until it serves; Err(log) if it exited meanwhile.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open daemon log");
        let exe = env!("CARGO_BIN_EXE_replgate");
        let mut argv: Vec<String> = match &self.opts.shell_prefix {
            Some(prefix) => vec![
                "sh".into(),
                "-c".into(),
                format!("{prefix} exec \"$0\" \"$@\""),
                exe.into(),
            ],
            None => vec![exe.into()],
        };
        argv.push("serve".into());
        if let Some(ns) = &self.opts.netns {
            // `ip netns exec` execs the daemon: the child's pid stays the daemon's.
            argv.splice(0..0, ["ip", "netns", "exec", ns].map(String::from));
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        if let Some(config) = &self.opts.config_file {
            cmd.arg("--config").arg(config);
        }
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug")
            .env("REPLGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("REPLGATE_DATA_DIR", &self.data_dir)
            .env("REPLGATE_API_LISTEN", self.api.to_string())
            .env("REPLGATE_TUNNEL_LISTEN", self.tunnel.to_string())
            .env("REPLGATE_HOSTNAMES", "localhost")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        for k in &self.opts.unset {
            cmd.env_remove(k);
        }
        self.child = Some(cmd.spawn().expect("start replgate"));
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exit status {status}\n{}", self.log()));
                }
            }
            if self.seen(&self.data_dir.join("ca.pem")).exists() {
                if let Ok(r) = self.client().try_request("GET", "/api/health", &[], b"") {
                    if r.status == 200 {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("replgate did not become ready\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("daemon running")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `path` as the daemon sees it: itself, unless the daemon has mounts of its own
    /// (`Options::own_mounts`), then the same path below `/proc/<pid>/root`.
    pub fn seen(&self, path: &Path) -> PathBuf {
        match (&self.child, self.opts.own_mounts) {
            (Some(child), true) => Path::new(&format!("/proc/{}/root", child.id()))
                .join(path.strip_prefix("/").unwrap_or(path)),
            _ => path.to_path_buf(),
        }
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        let pem = std::fs::read(self.seen(&self.data_dir.join("ca.pem"))).expect("read ca.pem");
        pem_certs(&pem)
            .into_iter()
            .next()
            .expect("a certificate in ca.pem")
    }

    /// SHA-256 of the daemon's CA certificate, lowercase hex: what an admin compares.
    pub fn ca_fingerprint(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, self.ca_der().as_ref())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn client(&self) -> Client {
        let client = Client::new(self.api, self.ca_der());
        match &self.opts.netns {
            Some(ns) => client.in_netns(ns),
            None => client,
        }
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let pid = self.pid();
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        let child = self.child.as_mut().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("daemon did not exit after SIG{sig}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(
                status.success(),
                "clean stop before restart: {status}\n{}",
                self.log()
            );
        }
        self.spawn();
    }

    /// Waits for the child to exit on its own (for crash-injection tests).
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.child = None;
                    return Some(s);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Resident memory of the daemon in KiB, from /proc. Panics when it cannot be read
    /// (the process is gone, or a zombie, which has no `VmRSS`): a memory test must never
    /// compare two zeros and pass.
    #[track_caller]
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {path} for the daemon's resident memory: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .filter(|&kib: &u64| kib > 0)
            .unwrap_or_else(|| {
                panic!("no resident memory (VmRSS) in {path}: is the daemon alive?\n{status}")
            })
    }

    pub fn login(&self, user: &str, password: &str) -> String {
        let r = self.client().post_json(
            "/api/login",
            None,
            &serde_json::json!({"username": user, "password": password}),
        );
        assert_eq!(r.status, 200, "login {user}: {}", r.text());
        r.json()["auth_token"]
            .as_str()
            .expect("auth_token")
            .to_string()
    }

    pub fn root_token(&self) -> String {
        self.login("root", ADMIN_PASSWORD)
    }

    /// Files a pairing request for `uuid` with `csr` as a source would; the raw answer.
    pub fn try_file_request(&self, uuid: &str, csr: &str) -> Response {
        self.client()
            .post_json("/replication/v1/requests", None, &request_body(uuid, csr))
    }

    /// Files a new pairing request for `uuid` with `csr` and checks that it was taken
    /// (202): its id, poll path and verification code.
    #[track_caller]
    pub fn file_request_csr(&self, uuid: &str, csr: &str) -> Filed {
        let r = self.try_file_request(uuid, csr);
        assert_eq!(r.status, 202, "file a request for {uuid}: {}", r.text());
        Filed::parse(&r.json())
    }

    /// [`Daemon::file_request_csr`] with a fresh P-256 key.
    #[track_caller]
    pub fn file_request(&self, uuid: &str) -> Filed {
        self.file_request_csr(uuid, &simple_csr().pem)
    }

    /// `GET /api/systems` as `token`: the whole answer.
    #[track_caller]
    pub fn systems(&self, token: &str) -> Value {
        let r = self.client().get("/api/systems", Some(token));
        assert_eq!(r.status, 200, "GET /api/systems: {}", r.text());
        r.json()
    }

    /// The word after ` {key} ` in the latest log line that has one (the start-up line
    /// names `internal ADDR` and `system UUID`).
    #[track_caller]
    pub fn logged(&self, key: &str) -> String {
        let log = self.log();
        let marker = format!(" {key} ");
        log.lines()
            .rev()
            .find_map(|l| l.split(&marker).nth(1))
            .and_then(|after| after.split_whitespace().next())
            .unwrap_or_else(|| panic!("no log line names `{key}`:\n{log}"))
            .to_string()
    }

    /// The internal tiny_http address, from the start-up log line.
    pub fn internal_addr(&self) -> SocketAddr {
        self.logged("internal")
            .parse()
            .expect("parse internal addr")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The tail only: a busy daemon's whole log would bury the test's own message
            // in CI's output; the file stays behind for the rest.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
            eprintln!(
                "---- replgate log ({}, last {} of {} lines) ----\n{tail}",
                self.log_path.display(),
                LOG_TAIL_LINES.min(lines.len()),
                lines.len()
            );
        }
        self.kill9();
    }
}

/// A request as a target took it: `POST /replication/v1/requests`' answer.
#[derive(Clone, Debug)]
pub struct Filed {
    pub id: u64,
    /// The spool path, `/replication/v1/spool/<token>/`.
    pub poll: String,
    pub code: String,
    /// The whole answer.
    pub json: Value,
}

impl Filed {
    #[track_caller]
    pub fn parse(v: &Value) -> Filed {
        let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k}: {v}"));
        Filed {
            id: v["request_id"]
                .as_u64()
                .unwrap_or_else(|| panic!("no request_id: {v}")),
            poll: field("poll").to_string(),
            code: field("verification_code").to_string(),
            json: v.clone(),
        }
    }

    /// The spool token, the last segment of the poll path.
    pub fn token(&self) -> String {
        spool_token(&self.poll)
    }
}

/// The spool token in a poll path (`/replication/v1/spool/<token>/`).
pub fn spool_token(poll: &str) -> String {
    poll.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string()
}

/// The rows of a `GET /api/systems` answer (`appliance`).
#[track_caller]
pub fn appliances(systems: &Value) -> &[Value] {
    systems["appliance"]
        .as_array()
        .unwrap_or_else(|| panic!("a systems answer without rows: {systems}"))
}

/// The row of a `GET /api/systems` answer that `pick` chooses.
#[track_caller]
pub fn systems_row(systems: &Value, pick: impl Fn(&Value) -> bool) -> Value {
    appliances(systems)
        .iter()
        .find(|s| pick(s))
        .unwrap_or_else(|| panic!("no such systems row in {systems}"))
        .clone()
}

pub struct Csr {
    pub pem: String,
    /// The raw public key bits (the BIT STRING of the SubjectPublicKeyInfo).
    pub public_key_bits: Vec<u8>,
}

/// A CSR for a fresh P-256 key that asks for nothing.
pub fn simple_csr() -> Csr {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let csr = params.serialize_request(&key).unwrap();
    Csr {
        pem: csr.pem().unwrap(),
        public_key_bits: rcgen::PublicKeyData::der_bytes(&key).to_vec(),
    }
}

/// The body a source sends to file a request.
pub fn request_body(uuid: &str, csr: &str) -> Value {
    serde_json::json!({"system_uuid": uuid, "name": format!("src-{uuid}"), "host": "source.example", "version": "1.0", "csr": csr})
}

pub fn pem_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(ca: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("add CA");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The message of a documented error body (`""` when there is none).
    pub fn message(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["result"][0]["message"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// The application error code of a documented error body.
    pub fn code(&self) -> u64 {
        self.json()["result"][0]["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code: {}", self.text()))
    }
}

/// A minimal HTTPS/1.1 client: one connection per request, `Connection: close`.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub config: Arc<rustls::ClientConfig>,
    /// The local address to connect from (any of 127.0.0.0/8 is this machine), so that
    /// one test can be several clients as the daemon counts them.
    pub source: Option<Ipv4Addr>,
    /// The network namespace to connect from (a daemon in a namespace, tests/it/wan.rs).
    pub netns: Option<String>,
}

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Client {
    pub fn new(addr: SocketAddr, ca: CertificateDer<'static>) -> Client {
        Client {
            addr,
            config: client_config(ca),
            source: None,
            netns: None,
        }
    }

    /// The same client, connecting from inside the network namespace `ns`.
    pub fn in_netns(mut self, ns: &str) -> Client {
        self.netns = Some(ns.to_string());
        self
    }

    /// The same client, connecting from `source`.
    pub fn with_source(mut self, source: Ipv4Addr) -> Client {
        self.source = Some(source);
        self
    }

    /// A plain TCP connection to the daemon, from `source` when set.
    pub fn tcp(&self) -> std::io::Result<TcpStream> {
        let (addr, source) = (self.addr, self.source);
        let connect = move || match source {
            None => TcpStream::connect_timeout(&addr, Duration::from_secs(5)),
            Some(source) => replgate::listener::connect_from(source, addr),
        };
        match &self.netns {
            // A socket stays in the namespace it was made in, whichever thread uses it.
            Some(ns) => crate::linkemu::in_netns(ns, connect),
            None => connect(),
        }
    }

    pub fn connect(&self) -> std::io::Result<Tls> {
        let tcp = self.tcp()?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(tls)
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut tls = self.connect()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        // The daemon's address, unless the test names another host.
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        tls.write_all(&bytes)?;
        tls.flush()?;
        read_response(&mut tls, method == "HEAD")
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.bodiless("GET", path, token)
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> Response {
        self.bodiless("DELETE", path, token)
    }

    fn bodiless(&self, method: &str, path: &str, token: Option<&str>) -> Response {
        let auth = token.map(|t| ("AuthToken", t));
        self.request(method, path, auth.as_slice(), b"")
    }

    pub fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.send_json("POST", path, token, body)
    }

    pub fn send_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Response {
        let bytes = body.to_string().into_bytes();
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(t) = token {
            headers.push(("AuthToken", t));
        }
        self.request(method, path, &headers, &bytes)
    }
}

/// Reads one HTTP/1.1 response (Content-Length or until close).
pub fn read_response(stream: &mut impl Read, head_only: bool) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = read_some(stream, &mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_end..].to_vec();
    if !head_only && status != 304 {
        match length {
            Some(len) => {
                while body.len() < len {
                    let n = read_some(stream, &mut chunk)?;
                    if n == 0 {
                        // A body cut short is a broken answer, never a shorter one.
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!(
                                "connection closed after {} of the {len} body bytes \
                                 Content-Length announced",
                                body.len()
                            ),
                        ));
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                body.truncate(len);
            }
            None => loop {
                let n = read_some(stream, &mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            },
        }
        // tiny_http sends answers over 32 KiB chunked: undo the coding for every test.
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked && length.is_none() {
            let mut decoded = Vec::new();
            replgate::wire::chunked::ChunkedReader::new(&body[..]).read_to_end(&mut decoded)?;
            body = decoded;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A read that treats a TLS close without close_notify as end of stream.
fn read_some(stream: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    match stream.read(buf) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(0),
        other => other,
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

/// Waits until `f` returns Some, or panics after `within`.
pub fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The harness's own promises: it reports what it could not read instead of a value that
/// lets a test pass.
mod self_tests {
    use super::*;

    #[test]
    fn a_body_shorter_than_its_content_length_is_an_error() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n12345";
        let r = read_response(&mut &whole[..], false).expect("a whole answer");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"12345"[..]));
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345";
        let r = read_response(&mut &cut[..], false);
        assert!(
            r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof),
            "a body of 5 of 10 announced bytes was taken: {r:?}"
        );
        // A HEAD answer announces a length it does not send.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert!(read_response(&mut &head[..], true).is_ok());
    }

    #[test]
    fn resident_memory_of_a_dead_daemon_is_an_error_not_zero() {
        let d = Daemon::start("harness-rss", Options::default());
        assert!(d.rss_kib() > 1024, "a running daemon uses more than 1 MiB");
        // SIGKILL without reaping: the process stays a zombie, whose status has no VmRSS.
        let pid = d.pid().to_string();
        run_ok(Command::new("kill").args(["-KILL", &pid]));
        eventually(Duration::from_secs(10), "the daemon a zombie", || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
                .then_some(())
        });
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.rss_kib()));
        assert!(read.is_err(), "rss_kib of a dead daemon answered {read:?}");
    }
}
