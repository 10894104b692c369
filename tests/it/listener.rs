//! The accept machinery both listeners share, from outside: one address cannot take the
//! whole connection cap.

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use replgate::listener::connect_from;

use crate::harness::{Daemon, Options};

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
