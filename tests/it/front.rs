//! The TLS front under load: the connection cap and file-descriptor exhaustion.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Options};

#[test]
fn connection_cap_refuses_extra_clients_quickly_and_recovers() {
    let d = Daemon::start("front-cap", Options::default().set("max_connections", 4));
    // Four idle TLS connections fill the API listener.
    let held: Vec<_> = (0..4).map(|_| d.client().connect().unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    // A 503 with the documented body, or a connection closed outright: both are clean.
    if let Ok(r) = d.client().try_request("GET", "/api/health", &[], b"") {
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "refusal took {:?}",
        start.elapsed()
    );
    drop(held);
    let r = crate::harness::eventually(
        Duration::from_secs(5),
        "service after the cap clears",
        || {
            d.client()
                .try_request("GET", "/api/health", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        },
    );
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn fd_exhaustion_flood_is_survived() {
    let d = Daemon::start(
        "front-emfile",
        Options {
            shell_prefix: Some("ulimit -n 160;".into()),
            ..Options::default()
        },
    );
    // Far more raw connections than the daemon has descriptors for (160 allow it 16 relays
    // per listener); connections the backlog cannot take time out and are not counted.
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect_timeout(&d.api, Duration::from_millis(200)) {
            flood.push(s);
        }
    }
    assert!(flood.len() > 64, "only {} connections opened", flood.len());
    std::thread::sleep(Duration::from_millis(500));
    drop(flood);
    let r = crate::harness::eventually(Duration::from_secs(15), "service after the flood", || {
        d.client()
            .try_request("GET", "/api/health", &[], b"")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(r.status, 200);
    // And a real request through the whole stack still works.
    let r = crate::harness::eventually(Duration::from_secs(10), "login after the flood", || {
        let body =
            serde_json::json!({"username": "root", "password": crate::harness::ADMIN_PASSWORD})
                .to_string();
        d.client()
            .try_request("POST", "/api/login", &[], body.as_bytes())
            .ok()
            .filter(|r| r.status == 200)
    });
    let token = r.json()["auth_token"].as_str().unwrap().to_string();
    assert_eq!(d.client().get("/api/users", Some(&token)).status, 200);
}
