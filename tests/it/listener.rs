//! The accept machinery both listeners share, from outside: one address cannot take the
//! whole connection cap, and strangers together cannot take the slots of an admin or a
//! paired source.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use replgate::listener::connect_from;
use serde_json::json;

use crate::harness::{eventually, pair, start_pair, Daemon, Options};
use crate::pairing::{identity, pairing_dir, tunnel_hello};
use crate::replication::{content, sha256_hex, wait_item, write_backup};

/// Opens `n` raw TCP connections from `source` that never start their TLS handshake.
fn idle_connections(d: &Daemon, source: Ipv4Addr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| connect_from(source, d.api).ok())
        .collect()
}

#[test]
fn three_hundred_idle_connections_from_one_address_leave_other_addresses_served() {
    // Defaults: 256 connections per listener, 32 per address.
    let d = Daemon::start("listener-per-address", Options::default());
    let flood = idle_connections(&d, Ipv4Addr::new(127, 0, 0, 1), 300);
    assert!(flood.len() > 256, "only {} connections opened", flood.len());
    std::thread::sleep(Duration::from_millis(300));

    let other = d.client().with_source(Ipv4Addr::new(127, 0, 0, 2));
    let started = Instant::now();
    let r = other.request("GET", "/api/health", &[], b"");
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
    assert!(took < Duration::from_secs(2), "health took {took:?}");

    // The flooding address itself is refused with the documented 503, or closed outright.
    let same = d.client().with_source(Ipv4Addr::new(127, 0, 0, 1));
    if let Ok(r) = same.try_request("GET", "/api/health", &[], b"") {
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.code(), 503);
    }
    drop(flood);
}

#[test]
fn max_connections_per_address_is_configurable() {
    let d = Daemon::start(
        "listener-per-address-key",
        Options::default().set("max_connections_per_address", 3),
    );
    let source = Ipv4Addr::new(127, 0, 0, 3);
    let client = d.client().with_source(source);
    let held: Vec<_> = (0..3).map(|_| client.connect().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = client.try_request("GET", "/api/health", &[], b"");
    let r = r.expect("a 503 from the overflow path");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["result"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("from your address"),
        "{}",
        r.text()
    );
    let r =
        d.client()
            .with_source(Ipv4Addr::new(127, 0, 0, 4))
            .request("GET", "/api/health", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(held);
}

/// The metric `name{listener="<listener>"...}` summed over its other labels, from the
/// daemon's exposition.
fn metric(text: &str, name: &str, listener: &str, extra: &str) -> f64 {
    let label = format!("listener=\"{listener}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| l.contains(&label) && l.contains(extra))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The first flight of a TLS client (its ClientHello), to send and then go silent.
fn client_hello(d: &Daemon) -> Vec<u8> {
    let config = crate::harness::client_config(d.ca_der());
    let name = rustls::pki_types::ServerName::IpAddress(d.api.ip().into());
    let mut conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("client hello");
    hello
}

/// A stranger at `source` holding `n` connections to `target` open for as long as it
/// can: half silent TCP, half half-open TLS (a ClientHello, then nothing). It opens
/// again whatever the daemon closes or answers (a 503), until `stop`.
fn hold_slots(source: Ipv4Addr, target: SocketAddr, n: usize, hello: &[u8], stop: &AtomicBool) {
    let mut held: Vec<TcpStream> = Vec::new();
    let mut opened = 0usize;
    while !stop.load(Ordering::Relaxed) {
        held.retain(|sock| {
            let mut buf = [0u8; 512];
            matches!(sock.peek(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        while held.len() < n && !stop.load(Ordering::Relaxed) {
            let Ok(mut sock) = connect_from(source, target) else {
                break;
            };
            if opened % 2 == 1 && sock.write_all(hello).is_err() {
                continue;
            }
            opened += 1;
            if sock.set_nonblocking(true).is_ok() {
                held.push(sock);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Twelve loopback addresses holding silent connections once locked the admin out (0 of
/// 30 health checks answered), and the same on the tunnel stopped replication: here 20
/// addresses in 10 networks (127.10.n.a) keep 16 connections each open on both
/// listeners of a target, silent or half-open TLS, reopening whatever is closed, for as
/// long as the test runs. They hold what strangers may (three quarters of the slots,
/// 64 per /24); an admin who logged in before is answered every time, and a paired source
/// proves its tunnel and replicates a backup.
#[test]
fn strangers_holding_every_slot_they_can_leave_the_admin_and_a_paired_source_served() {
    let (src, tgt) = start_pair("slots");
    let paired = pair(&src, &tgt, json!({}));
    let admin = tgt.root_token();
    let st = src.root_token();
    let identity = || identity(&pairing_dir(&src));
    // The source proved its tunnel from 127.0.0.1 while pairing, and the admin logged in
    // from there: both are known to the target's listeners.
    assert_eq!(
        tunnel_hello(&tgt, Some(identity())).expect("hello").status,
        200
    );

    let stop = AtomicBool::new(false);
    let hello = client_hello(&tgt);
    let scrape = || {
        let r = tgt
            .client()
            .try_request("GET", "/api/metrics", &[("AuthToken", admin.as_str())], b"")
            .ok()?;
        (r.status == 200).then(|| r.text())
    };
    std::thread::scope(|s| {
        for network in 1..=10u8 {
            for host in 1..=2u8 {
                let source = Ipv4Addr::new(127, 10, network, host);
                for target in [tgt.api, tgt.tunnel] {
                    let (stop, hello) = (&stop, &hello);
                    s.spawn(move || hold_slots(source, target, 16, hello, stop));
                }
            }
        }
        let _stop = StopOnDrop(&stop);
        // The strangers fill their share of both listeners (192 of 256 each)...
        let filled = eventually(
            Duration::from_secs(60),
            "strangers holding their share",
            || {
                let text = scrape()?;
                let open = |l| metric(&text, "replgate_connections_open", l, "");
                (open("api") >= 170.0 && open("tunnel") >= 170.0).then_some(text)
            },
        );
        eprintln!(
            "held by strangers: api {}, tunnel {}",
            metric(&filled, "replgate_connections_open", "api", ""),
            metric(&filled, "replgate_connections_open", "tunnel", "")
        );

        // ...and the admin is still answered, every time.
        let mut answered = 0;
        for _ in 0..30 {
            match tgt.client().try_request("GET", "/api/health", &[], b"") {
                Ok(r) if r.status == 200 => answered += 1,
                Ok(r) => eprintln!("health: {} {}", r.status, r.text()),
                Err(e) => eprintln!("health: {e}"),
            }
        }
        assert_eq!(answered, 30, "{answered} of 30 health checks answered");
        for _ in 0..5 {
            let r = tgt.client().get("/api/systems", Some(&admin));
            assert_eq!(r.status, 200, "{}", r.text());
        }
        // The paired source proves its tunnel and replicates.
        for _ in 0..5 {
            let r = tunnel_hello(&tgt, Some(identity())).expect("hello during the flood");
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let backup = content(7, 1 << 20);
        write_backup(&src, "client-a/during-the-flood.img", &backup);
        let item = wait_item(
            &src,
            &st,
            "client-a/during-the-flood.img",
            "done",
            Duration::from_secs(60),
        );
        assert_eq!(item["sha256"], sha256_hex(&backup));
        let copy = std::fs::read(
            tgt.data_dir
                .join("storage")
                .join(&paired.source_uuid)
                .join("client-a/during-the-flood.img"),
        )
        .expect("the copy on the target");
        assert!(copy == backup, "the copy differs");

        // The strangers were held to their share (and networks), not merely slow: while
        // they go on, each listener refuses some of them (on a loaded machine the strangers'
        // threads may need a while to reach the caps).
        let refused = |text: &str, listener: &str| {
            metric(
                text,
                "replgate_connections_refused_total",
                listener,
                "cap=\"unauthenticated\"",
            ) + metric(
                text,
                "replgate_connections_refused_total",
                listener,
                "cap=\"per_network\"",
            )
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = scrape().expect("metrics");
            if ["api", "tunnel"].iter().all(|l| refused(&text, l) > 0.0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a listener refused no stranger in 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

/// Sets the flag when dropped: the attackers stop also when an assertion fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
