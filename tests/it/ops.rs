//! Operations: the daemon as systemd's `Type=notify` sees it, through a fake
//! `NOTIFY_SOCKET` (a datagram socket bound in a scratch directory or in the abstract
//! namespace).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    eventually, free_port, free_ports, pem_certs, scratch_dir, Client, Daemon, Options,
    ADMIN_PASSWORD,
};

/// How long a notification may take; generous, for loaded CI machines.
const NOTIFY_WAIT: Duration = Duration::from_secs(30);

/// The next datagram on `sock` as text. A receive with a timeout is never restarted by the
/// kernel: it fails with EINTR when this process is stopped and resumed or traced (man 7
/// signal), so that is retried within the same deadline.
fn next_state(sock: &UnixDatagram) -> String {
    let deadline = std::time::Instant::now() + NOTIFY_WAIT;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .expect("a notification within the timeout");
        sock.set_read_timeout(Some(left))
            .expect("set a read timeout on the notify socket");
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("a notification within the timeout: {e}"),
        }
    }
}

/// A `replgate serve` started without the harness, so that the test, like systemd, learns
/// of readiness only from `READY=1`. Prints the daemon's log when the test fails.
struct Served {
    child: Option<Child>,
    log_path: PathBuf,
}

impl Served {
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the daemon") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            eprintln!(
                "---- replgate log ({}) ----\n{log}",
                self.log_path.display()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn ready_means_serving_and_sigterm_sends_stopping_then_exits_zero() {
    let dir = scratch_dir("ops-notify");
    let socket_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).expect("bind the fake NOTIFY_SOCKET");
    let data = dir.join("data");
    let [api_port, tunnel_port] = free_ports::<2>();
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path).expect("create the daemon log");
    let child = Command::new(env!("CARGO_BIN_EXE_replgate"))
        .arg("serve")
        .env_clear()
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "debug")
        .env("REPLGATE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("REPLGATE_DATA_DIR", &data)
        .env("REPLGATE_API_LISTEN", api.to_string())
        .env("REPLGATE_TUNNEL_LISTEN", format!("127.0.0.1:{tunnel_port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup the log"))
        .stderr(log)
        .spawn()
        .expect("start replgate");
    let mut served = Served {
        child: Some(child),
        log_path,
    };

    assert_eq!(next_state(&sock), "READY=1");
    // No retry: systemd starts dependent units the moment READY=1 arrives.
    let ca = pem_certs(&std::fs::read(data.join("ca.pem")).expect("ca.pem exists once ready"));
    let health = Client::new(api, ca[0].clone())
        .try_request("GET", "/api/health", &[], b"")
        .expect("the API answers as soon as READY=1 is sent");
    assert_eq!(health.status, 200, "{}", health.text());

    let pid = served.child.as_ref().expect("daemon running").id();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    assert_eq!(next_state(&sock), "STOPPING=1");
    let status = served.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

#[test]
fn abstract_notify_socket_gets_ready_and_stopping() {
    let name = format!("replgate-it-notify-{}-{}", std::process::id(), free_port());
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("abstract socket name");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind the abstract NOTIFY_SOCKET");
    let mut opts = Options::default();
    opts.env.push(("NOTIFY_SOCKET".into(), format!("@{name}")));
    let mut d = Daemon::start("ops-notify-abstract", opts);
    assert_eq!(next_state(&sock), "READY=1");
    let status = d.stop();
    assert_eq!(next_state(&sock), "STOPPING=1");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

#[test]
fn an_unreachable_notify_socket_does_not_stop_the_daemon() {
    let dir = scratch_dir("ops-notify-missing");
    let mut opts = Options::default();
    opts.env.push((
        "NOTIFY_SOCKET".into(),
        dir.join("nobody-listens.sock").display().to_string(),
    ));
    let mut d = Daemon::start("ops-notify-missing", opts);
    assert_eq!(d.client().get("/api/health", None).status, 200);
    eventually(
        Duration::from_secs(10),
        "the notify failure in the log",
        || d.log().contains("systemd notify \"READY=1\"").then_some(()),
    );
    assert_eq!(d.stop().code(), Some(0));
}
