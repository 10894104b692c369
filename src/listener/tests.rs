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
    /// What the listener reads as "authenticated recently"; a test notes addresses here.
    known: Arc<KnownAddresses>,
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
        let known = KnownAddresses::new();
        let listener = spawn(endpoint, limits, Arc::new(Hello), Arc::clone(&known)).expect("spawn");
        Running {
            listener: Some(listener),
            shutdown,
            known,
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

    let counts = Counts::default();
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

/// Whether the server closes `sock` within `within` (end of stream or a reset).
fn closed_within(sock: &mut std::net::TcpStream, within: Duration) -> bool {
    sock.set_read_timeout(Some(within)).expect("read timeout");
    let mut buf = [0u8; 64];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if would_block(&e) => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn the_caps_derived_for_strangers_leave_room_no_few_networks_can_take() {
    let defaults = Limits::default();
    assert_eq!(defaults.reserve(), 64);
    assert_eq!(defaults.unauthenticated_share(), 192);
    assert_eq!(defaults.per_network(), 64);
    // One address never fills its network, and a network never more than the share.
    let tight = Limits {
        max_connections: 8,
        max_connections_per_address: 2,
        handshake_timeout: Duration::from_secs(2),
    };
    assert_eq!((tight.reserve(), tight.unauthenticated_share()), (2, 6));
    assert_eq!(tight.per_network(), 4);
    let tiny = Limits {
        max_connections: 2,
        max_connections_per_address: 2,
        handshake_timeout: Duration::from_secs(2),
    };
    assert_eq!((tiny.reserve(), tiny.per_network()), (0, 2));
}

#[test]
fn strangers_leave_the_reserve_to_addresses_that_authenticated() {
    // 8 in all: 2 kept for known addresses, 6 for strangers, 4 per /24, 2 per address.
    let running = Running::start(Limits {
        max_connections: 8,
        max_connections_per_address: 2,
        handshake_timeout: Duration::from_secs(2),
    });
    let mut held = Vec::new();
    for source in [[127, 0, 1, 1], [127, 0, 1, 2]] {
        for _ in 0..2 {
            held.push(running.connect(Ipv4Addr::from(source)));
        }
    }
    // A third address of the same /24 meets the network's cap...
    let answer = read_all(&mut running.connect(Ipv4Addr::new(127, 0, 1, 3)));
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("from your network"), "{answer}");
    // ...while another network still gets the rest of the strangers' share.
    for _ in 0..2 {
        held.push(running.connect(Ipv4Addr::new(127, 0, 2, 1)));
    }
    for stream in &mut held {
        assert_eq!(read_all(stream), "hello");
    }
    wait_for_active(&running, 6);
    // The share is full: strangers from anywhere get the 503 of the global cap...
    let answer = read_all(&mut running.connect(Ipv4Addr::new(127, 0, 3, 1)));
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.contains("too many connections, retry shortly"),
        "{answer}"
    );
    // ...and an address that authenticated recently is served from the reserve, also
    // from a network that strangers fill.
    running.known.note(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 9)));
    running.known.note(IpAddr::V4(Ipv4Addr::new(127, 0, 4, 1)));
    let mut admin = running.connect(Ipv4Addr::new(127, 0, 1, 9));
    assert_eq!(read_all(&mut admin), "hello");
    let mut source = running.connect(Ipv4Addr::new(127, 0, 4, 1));
    assert_eq!(read_all(&mut source), "hello");
    wait_for_active(&running, 8);
    // The global cap still holds for everyone.
    let answer = read_all(&mut running.connect(Ipv4Addr::new(127, 0, 4, 1)));
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    // A stranger's slot, given back, is a stranger's again.
    drop(held.pop());
    wait_for_active(&running, 7);
    let mut again = running.connect(Ipv4Addr::new(127, 0, 3, 1));
    assert_eq!(read_all(&mut again), "hello");
}

#[test]
fn a_stranger_has_seconds_for_its_handshake_and_a_known_address_the_configured_time() {
    let running = Running::start(Limits {
        max_connections: 16,
        max_connections_per_address: 4,
        handshake_timeout: Duration::from_secs(30),
    });
    let addr = running.listener().local_addr();
    let known = Ipv4Addr::new(127, 0, 5, 1);
    running.known.note(IpAddr::V4(known));
    let started = Instant::now();
    let mut stranger = connect_from(Ipv4Addr::new(127, 0, 5, 2), addr).expect("connect");
    let mut admin = connect_from(known, addr).expect("connect");
    // Half-open TLS: a record header that promises a ClientHello, then nothing.
    let mut half_open = connect_from(Ipv4Addr::new(127, 0, 5, 3), addr).expect("connect");
    half_open
        .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .expect("write");
    assert!(closed_within(&mut stranger, Duration::from_secs(10)));
    let took = started.elapsed();
    assert!(
        took >= UNAUTHENTICATED_DEADLINE - Duration::from_millis(100)
            && took < UNAUTHENTICATED_DEADLINE + Duration::from_secs(3),
        "a silent stranger closed after {took:?}"
    );
    assert!(closed_within(&mut half_open, Duration::from_secs(3)));
    assert!(
        !closed_within(&mut admin, Duration::from_secs(1)),
        "a known address's handshake was cut before handshake_timeout"
    );
}

#[test]
fn known_addresses_expire_and_stay_bounded() {
    let known = KnownAddresses::default();
    let start = Instant::now();
    let a = AddressKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let a64 = AddressKey::of(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()));
    let same64 = AddressKey::of(IpAddr::V6("2001:db8::ffff".parse::<Ipv6Addr>().unwrap()));
    known.note_at(a, start);
    known.note_at(a64, start);
    assert!(known.knows_at(a, start + KNOWN_FOR - Duration::from_secs(1)));
    assert!(
        known.knows_at(same64, start),
        "counted per /64, as the caps count"
    );
    assert!(!known.knows_at(a, start + KNOWN_FOR));
    // Full: expired entries go first, then the one known longest ago.
    for i in 0..MAX_KNOWN as u32 {
        let key = AddressKey::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        known.note_at(key, start + Duration::from_secs(1));
    }
    assert_eq!(known.len(), MAX_KNOWN);
    assert!(!known.knows_at(a, start), "the oldest went to make room");
    let newest = AddressKey::of(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)));
    known.note_at(newest, start + KNOWN_FOR + Duration::from_secs(2));
    assert!(known.len() <= MAX_KNOWN);
    assert!(known.knows_at(newest, start + KNOWN_FOR + Duration::from_secs(2)));
}
