//! The listener over real loopback sockets with a tiny service: caps, the per-address cap,
//! the descriptor clamp.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::test_pki::{pki, tls_connect, TlsStream};

/// Writes `hello` to each client, then waits until it closes or the listener drains.
struct Hello;

impl Service for Hello {
    fn serve(&self, conn: Conn<'_>) {
        let Conn {
            tls, sock, control, ..
        } = conn;
        let mut stream = rustls::StreamOwned::new(tls, sock);
        if stream
            .write_all(b"hello")
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
        let _ = stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 64];
        while !control.draining() {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => return,
            }
        }
    }
}

struct Running {
    listener: Option<Listener>,
    shutdown: Arc<AtomicBool>,
}

impl Running {
    fn start(limits: Limits) -> Self {
        let shutdown = Arc::new(AtomicBool::new(false));
        let endpoint = Endpoint {
            name: "test".into(),
            socket: TcpListener::bind("127.0.0.1:0").expect("bind"),
            tls: pki().api_server(),
            shutdown: Arc::clone(&shutdown),
        };
        let listener = spawn(endpoint, limits, Arc::new(Hello)).expect("spawn");
        Running {
            listener: Some(listener),
            shutdown,
        }
    }

    fn listener(&self) -> &Listener {
        self.listener.as_ref().expect("running")
    }

    fn connect(&self, source: Ipv4Addr) -> TlsStream {
        tls_connect(
            source,
            self.listener().local_addr(),
            pki().client_config(None),
        )
        .expect("connect")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        if let Some(listener) = self.listener.take() {
            listener.join(Duration::from_secs(1));
        }
    }
}

/// Everything the server sends until it closes (or 5 s pass).
fn read_all(stream: &mut TlsStream) -> String {
    let mut out = Vec::new();
    let _ = stream.sock.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if out.starts_with(b"hello") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wait_for_active(running: &Running, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while running.listener().active_connections() != want {
        assert!(
            Instant::now() < deadline,
            "never reached {want} connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_address_past_its_cap_gets_503_while_another_address_is_served() {
    let running = Running::start(Limits {
        max_connections: 8,
        max_connections_per_address: 2,
        handshake_timeout: Duration::from_secs(2),
    });
    let busy = Ipv4Addr::new(127, 0, 0, 1);
    let mut held: Vec<_> = (0..2).map(|_| running.connect(busy)).collect();
    for stream in &mut held {
        assert_eq!(read_all(stream), "hello");
    }
    wait_for_active(&running, 2);

    let started = Instant::now();
    let mut refused = running.connect(busy);
    let answer = read_all(&mut refused);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );
    assert!(answer.contains("\"kb\":\"/api/kb/503\""), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let mut other = running.connect(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(read_all(&mut other), "hello");

    // Closing one of the busy address's connections gives it room again.
    drop(held.pop());
    wait_for_active(&running, 2);
    let mut again = running.connect(busy);
    assert_eq!(read_all(&mut again), "hello");
}

#[test]
fn the_global_cap_still_answers_503_to_everyone() {
    let running = Running::start(Limits {
        max_connections: 2,
        max_connections_per_address: 2,
        handshake_timeout: Duration::from_secs(2),
    });
    let mut held = vec![
        running.connect(Ipv4Addr::new(127, 0, 0, 3)),
        running.connect(Ipv4Addr::new(127, 0, 0, 4)),
    ];
    for stream in &mut held {
        assert_eq!(read_all(stream), "hello");
    }
    let answer = read_all(&mut running.connect(Ipv4Addr::new(127, 0, 0, 5)));
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.contains("too many connections, retry shortly"),
        "{answer}"
    );
}

#[test]
fn addresses_are_counted_per_ipv4_address_and_per_ipv6_64() {
    let a = AddressKey::of(IpAddr::V6("2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap()));
    let b = AddressKey::of(IpAddr::V6(
        "2001:db8:1:2:ffff::9".parse::<Ipv6Addr>().unwrap(),
    ));
    let c = AddressKey::of(IpAddr::V6("2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap()));
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mapped = AddressKey::of(IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()));
    assert_eq!(
        mapped,
        AddressKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
    );
    assert_ne!(
        AddressKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
        AddressKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8)))
    );

    let counts = AddressCounts::default();
    assert!(counts.take(a, 2));
    assert!(counts.take(b, 2));
    assert!(!counts.take(a, 2), "a and b share one /64");
    assert!(counts.take(c, 2));
    counts.release(a);
    assert!(counts.take(b, 2));
    for key in [a, b, c] {
        counts.release(key);
    }
    counts.release(a);
    assert!(
        counts.lock().is_empty(),
        "entries go with their last connection"
    );
}

#[test]
fn limits_that_cannot_work_are_refused() {
    let good = Limits::default();
    assert!(good.check().is_ok());
    for bad in [
        Limits {
            max_connections: 0,
            ..Limits::default()
        },
        Limits {
            max_connections_per_address: 0,
            ..Limits::default()
        },
        Limits {
            handshake_timeout: Duration::ZERO,
            ..Limits::default()
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
}

#[test]
fn clamp_keeps_small_counts_and_caps_what_descriptors_cannot_carry() {
    assert_eq!(clamp_to_fd_limit(1, 3), 1);
    let clamped = clamp_to_fd_limit(usize::MAX, 3);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct for the duration of the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert_eq!(
        lim.rlim_cur, lim.rlim_max,
        "soft limit was not raised to the hard limit"
    );
    if lim.rlim_cur != libc::RLIM_INFINITY {
        // `rlim_t` is u64 here but 32 bits wide on some armv7 targets.
        #[allow(clippy::useless_conversion)]
        let soft = u64::from(lim.rlim_cur);
        let want = (soft.saturating_sub(FD_RESERVE) / 3).max(1);
        assert_eq!(clamped as u64, want);
        let wider = clamp_to_fd_limit(usize::MAX, 5);
        assert_eq!(wider as u64, (soft.saturating_sub(FD_RESERVE) / 5).max(1));
    }
}
