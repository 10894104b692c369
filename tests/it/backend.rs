//! The tiny_http backend behind the front, from outside: a burst of new keep-alive
//! connections (what a browser opens for the console) is served at once, not when some
//! other connection happens to close (vendor/tiny_http/PATCHES.md).

use std::io::Write;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::harness::{read_response, Daemon, Options};

/// Connections opened at once, as a browser does per host.
const BURST: usize = 6;
/// How long every connection stays open after its first answer, as a browser's
/// keep-alive connections do: longer than any first answer may take.
const HOLD: Duration = Duration::from_secs(4);

#[test]
fn a_burst_of_keep_alive_connections_gets_every_first_answer_in_milliseconds() {
    let d = Daemon::start("backend-burst", Options::default());
    let client = d.client();
    for round in 0..5 {
        let barrier = Barrier::new(BURST);
        let waits: Vec<Duration> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..BURST)
                .map(|_| {
                    s.spawn(|| {
                        let mut tls = client.connect().expect("connect");
                        let head = format!("GET /api/health HTTP/1.1\r\nHost: {}\r\n\r\n", d.api);
                        barrier.wait();
                        let started = Instant::now();
                        tls.write_all(head.as_bytes()).expect("send");
                        let r = read_response(&mut tls, false).expect("answer");
                        let took = started.elapsed();
                        assert_eq!(r.status, 200, "{}", r.text());
                        std::thread::sleep(HOLD);
                        took
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        // Loose: the machine is shared. Without the pool fix some answers wait for HOLD.
        let slowest = waits.iter().max().copied().unwrap_or_default();
        assert!(
            slowest < HOLD / 2,
            "round {round}: first answers took {waits:?}: a connection waited for another to close"
        );
    }
}
