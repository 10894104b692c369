//! The WAN link emulator (bench/linkemu, behind bench/wan.sh) and the namespace set-up:
//! a source daemon in one namespace replicates to a target in another across the emulated
//! link, and the copy verifies. Keeps the bench's machinery working in CI; it measures
//! nothing (bench/wan.sh does), but checks lower bounds the emulator must impose, and
//! that a transfer cut mid-way is let go by both ends during the cut and then resumes.
//!
//! Needs root, `ip` (iproute2) and /dev/net/tun: without them it fails, never skips.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{pair, pairing_opts, start_pair_with, tool};
use crate::linkemu::{in_netns, ip, Link, Params, Setup};
use crate::replication::{received_path, sha256_hex, wait_item, write_backup};
use crate::rng::Rng;

/// Namespace names of this test process: `rgit-<pid>-<n>-a` and `-b`.
fn namespace_names() -> (String, String) {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    remove_namespaces_of_ended_runs();
    let base = format!(
        "rgit-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    );
    (format!("{base}-a"), format!("{base}-b"))
}

/// Deletes the namespaces an earlier run left behind (its process was killed before its
/// link could delete them), recognized by the pid in their names.
fn remove_namespaces_of_ended_runs() {
    let list = ip(&["netns", "list"]).unwrap_or_else(|e| panic!("{e}"));
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let pid = name
            .strip_prefix("rgit-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_else(|e| panic!("{e}"))
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// A TCP connection from inside namespace `ns`, given up after `within`.
fn connect_from(ns: &str, to: SocketAddr, within: Duration) -> std::io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect_timeout(&to, within))
}

#[test]
fn a_transfer_across_the_emulated_link_completes_and_verifies() {
    tool("ip");
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "this test needs /dev/net/tun (the kernel's TUN driver) and root"
    );
    let (ns_a, ns_b) = namespace_names();
    let setup = Setup::new(&ns_a, &ns_b);
    let [addr_a, addr_b] = setup.addr;
    // 50 Mbit/s, 5 ms each way, no loss.
    let rate_bps = 50_000_000;
    let delay = Duration::from_millis(5);
    let params = Params {
        rate_bps,
        delay,
        ..Params::default()
    };
    let link = Link::start(&setup, &params, 1).unwrap_or_else(|e| {
        panic!("start the link emulator (needs root, iproute2 and /dev/net/tun): {e}")
    });
    let listed = namespaces();
    assert!(
        listed.contains(&ns_a) && listed.contains(&ns_b),
        "{listed:?}"
    );

    // A source in A, a target in B, each listening on its side's address.
    let in_ns = |ns: &str, addr| {
        pairing_opts()
            .in_netns(ns)
            .set("api_listen", SocketAddr::new(addr, 7443))
            .set("tunnel_listen", SocketAddr::new(addr, 7444))
    };
    let (src, tgt) = start_pair_with(
        "wan",
        in_ns(&ns_a, addr_a.into()),
        in_ns(&ns_b, addr_b.into()),
    );
    let tunnel = tgt.tunnel;

    // The delay is real: a TCP handshake across the link takes a round trip at least.
    let started = Instant::now();
    drop(connect_from(&ns_a, tunnel, Duration::from_secs(5)).expect("connect across the link"));
    let handshake = started.elapsed();
    assert!(handshake >= 2 * delay, "a TCP handshake took {handshake:?}");

    // Pairing crosses the link too (the source asks the target's API in B).
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    let mut rng = Rng::new(22);
    let size = 3 << 20;
    let backup: Vec<u8> = (0..size / 8)
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    let before = link.stats();
    let started = Instant::now();
    write_backup(&src, "wan/day1.img", &backup);
    let item = wait_item(&src, &st, "wan/day1.img", "done", Duration::from_secs(60));
    let took = started.elapsed();
    let after = link.stats();
    eprintln!(
        "{} bytes across the emulated link in {took:?}",
        backup.len()
    );

    // The copy verifies end to end.
    assert_eq!(item["sha256"], sha256_hex(&backup));
    let received = std::fs::read(received_path(&tgt, &p, "wan/day1.img")).expect("the copy");
    assert_eq!(sha256_hex(&received), sha256_hex(&backup));
    // The rate is real: no transfer beats the link's serialization time.
    let floor = Duration::from_secs_f64(size as f64 * 8.0 / rate_bps as f64);
    assert!(took >= floor, "{size} bytes in {took:?} at 50 Mbit/s");

    // The bytes crossed the emulator: A→B carried the file (and headers, TLS, frames),
    // B→A the acknowledgements; nothing was lost or cut on a link without loss.
    let [ab, ba] = [0, 1].map(|d| (before.dir[d], after.dir[d]));
    let ab_bytes = ab.1.fwd_bytes - ab.0.fwd_bytes;
    assert!(
        ab_bytes >= size as u64 && ab_bytes < 2 * size as u64,
        "A→B forwarded {ab_bytes} bytes for a {size}-byte file\n{}",
        after.render()
    );
    assert!(ba.1.fwd_pkts > ba.0.fwd_pkts, "{}", after.render());
    for d in after.dir {
        assert_eq!(
            (d.loss_pkts, d.cut_pkts, d.write_errors),
            (0, 0, 0),
            "{}",
            after.render()
        );
    }

    // The emulator's buffer is the one that drops, never the devices' own queues.
    assert_eq!(link.device_drops().expect("device counters"), [0, 0]);

    // A cut drops everything: no connection across it, counted as cut; then it heals.
    link.set_cut(true);
    let attempt = connect_from(&ns_a, tunnel, Duration::from_millis(400));
    assert!(attempt.is_err(), "connected across a cut link");
    let cut = link.stats();
    assert!(cut.dir[0].cut_pkts > 0, "{}", cut.render());
    link.set_cut(false);
    drop(connect_from(&ns_a, tunnel, Duration::from_secs(5)).expect("connect after the cut"));

    // A cut in the middle of a transfer (SPEC 17, link cuts): both ends let the dead
    // session go while the link is still cut (without dead-peer detection the connection
    // would outlive the cut and wait out TCP's retransmission backoff), then a new session
    // resumes the file from what the target kept, and the copy verifies.
    let second: Vec<u8> = (0..(32 << 20) / 8)
        .flat_map(|_| rng.next_u64().to_le_bytes())
        .collect();
    let ended = |d: &crate::harness::Daemon, what: &str| d.log().matches(what).count();
    // The target's end lines of sessions that ended with an error (` (…)` after the
    // bytes); idle heartbeat sessions end every few seconds without one.
    let broke = |d: &crate::harness::Daemon| {
        d.log()
            .lines()
            .filter(|l| l.contains(": session ended, ") && l.trim_end().ends_with(')'))
            .count()
    };
    let (src_broken, tgt_ended) = (ended(&src, "session broken"), broke(&tgt));
    write_backup(&src, "wan/day2.img", &second);
    wait_until(Duration::from_secs(30), "the target receives day2", || {
        tgt.log().contains("receiving wan/day2.img")
    });
    std::thread::sleep(Duration::from_secs(1));
    link.set_cut(true);
    wait_until(
        Duration::from_secs(45),
        "both ends end the session cut off",
        || ended(&src, "session broken") > src_broken && broke(&tgt) > tgt_ended,
    );
    link.set_cut(false);
    let item = wait_item(&src, &st, "wan/day2.img", "done", Duration::from_secs(60));
    assert_eq!(item["sha256"], sha256_hex(&second));
    let copy = std::fs::read(received_path(&tgt, &p, "wan/day2.img")).expect("the copy");
    assert_eq!(sha256_hex(&copy), sha256_hex(&second));
    assert!(
        tgt.log()
            .contains("receiving wan/day2.img (33554432 bytes, resuming at"),
        "the new session did not resume the partial copy"
    );

    drop((src, tgt));
    let last = link.stop();
    eprintln!("{}", last.render());
    let listed = namespaces();
    assert!(
        !listed.contains(&ns_a) && !listed.contains(&ns_b),
        "the namespaces outlived the link: {listed:?}"
    );
}

fn wait_until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Text-like content that zstd's fastest level shrinks to about a third.
fn compressible(len: usize, rng: &mut Rng) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"backup ",
        b"replgate ",
        b"block ",
        b"0042 ",
        b"tar ",
        b"\n",
        b"appliance ",
        b"of ",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(words[(rng.next_u64() % 8) as usize]);
    }
    out.truncate(len);
    out
}

#[test]
fn a_compressible_backup_crosses_the_link_compressed_under_auto() {
    tool("ip");
    let (ns_a, ns_b) = namespace_names();
    let setup = Setup::new(&ns_a, &ns_b);
    let [addr_a, addr_b] = setup.addr;
    // 50 Mbit/s, 5 ms each way: the link, not the sender's CPU, is the limit.
    let params = Params {
        rate_bps: 50_000_000,
        delay: Duration::from_millis(5),
        ..Params::default()
    };
    let link = Link::start(&setup, &params, 1).unwrap_or_else(|e| {
        panic!("start the link emulator (needs root, iproute2 and /dev/net/tun): {e}")
    });
    let in_ns = |ns: &str, addr| {
        pairing_opts()
            .in_netns(ns)
            .set("api_listen", SocketAddr::new(addr, 7443))
            .set("tunnel_listen", SocketAddr::new(addr, 7444))
    };
    // `compression` is left at its default, `auto`; the congestion control is one neither
    // the host nor the namespaces default to, set on both ends.
    let (src, tgt) = start_pair_with(
        "wanz",
        in_ns(&ns_a, addr_a.into()).set("tunnel_congestion", "reno"),
        in_ns(&ns_b, addr_b.into()).set("tunnel_congestion", "reno"),
    );
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    let backup = compressible(32 << 20, &mut Rng::new(17));
    let before = link.stats();
    write_backup(&src, "wan/text.tar", &backup);
    let item = wait_item(&src, &st, "wan/text.tar", "done", Duration::from_secs(120));
    let after = link.stats();
    assert_eq!(item["sha256"], sha256_hex(&backup));
    let received = std::fs::read(received_path(&tgt, &p, "wan/text.tar")).expect("the copy");
    assert!(received == backup, "the copy differs");
    // The chooser turned compression on within its first seconds: far fewer bytes than
    // the file crossed the link (uncompressed they would be more than the file).
    let ab_bytes = after.dir[0].fwd_bytes - before.dir[0].fwd_bytes;
    assert!(
        ab_bytes < backup.len() as u64 * 3 / 4,
        "A→B forwarded {ab_bytes} bytes for a {}-byte compressible file\n{}",
        backup.len(),
        after.render()
    );
    let log = src.log();
    assert!(log.contains("compression zstd:"), "{log}");
    // The session's end line names the algorithm its connection used; the target's
    // listener (and so every connection it accepts) uses the same.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !src.log().contains("congestion control reno") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = src.log();
    assert!(
        log.contains("on the wire), congestion control reno"),
        "{log}"
    );
    let log = tgt.log();
    assert!(
        log.contains("tunnel connections use TCP congestion control reno"),
        "{log}"
    );
    drop((src, tgt));
    link.stop();
}
