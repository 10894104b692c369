//! Features that unit tests covered but no test had run through a real daemon: the purge
//! of ended requests (`request_retention`), the free-space refusal before a transfer (on a
//! small tmpfs of the target's own), `session_lifetime`, IPv6 listeners, `replicate_from`,
//! and SIGTERM with a transfer in flight on either side.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{
    eventually, free_ports, pair, pairing_opts, scratch_dir, start_pair, start_pair_with, Daemon,
    Options,
};
use crate::pairing::{identity, pairing_dir, tunnel_hello};
use crate::replication::{
    content, item_of, items, sha256_hex, throttle_to, unthrottle, wait_item, wait_progress,
    write_backup,
};

#[test]
fn requests_that_ended_are_purged_after_request_retention_and_ids_never_return() {
    let mut d = Daemon::start(
        "feat-retention",
        Options::default().set("request_retention", 2),
    );
    let token = d.root_token();
    let rejected = d.file_request("7e7e0001-0000-4000-8000-000000000001");
    let ignored = d.file_request("7e7e0001-0000-4000-8000-000000000002");
    let pending = d.file_request("7e7e0001-0000-4000-8000-000000000003");
    let r = d.client().post_json(
        "/api/replication/source",
        Some(&token),
        &json!({"request_id": rejected.id, "accept": false, "message": "not ours"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = d.client().delete(
        &format!("/api/replication/pending/{}", ignored.id),
        Some(&token),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let status = |d: &Daemon, poll: &str| d.client().get(&format!("{poll}status.json"), None);
    assert_eq!(status(&d, &rejected.poll).json()["status"], "rejected");
    // An ignored request shows as expired to its source (docs/decisions.md).
    assert_eq!(status(&d, &ignored.poll).json()["status"], "expired");

    // Past the retention: the start-up sweep (it also runs every 10 minutes) deletes them.
    // Times are whole seconds and "over 2 s ago" is strict: a request that ended at second
    // S goes from second S + 3 on, which only a wait of over 3 s guarantees (2.5 s failed
    // when the restart was quick).
    std::thread::sleep(Duration::from_millis(3_100));
    d.restart();
    eventually(Duration::from_secs(10), "the purge logged", || {
        d.log()
            .contains("purged 2 requests that ended over 2 s ago")
            .then_some(())
    });
    assert_eq!(status(&d, &rejected.poll).status, 404);
    assert_eq!(status(&d, &ignored.poll).status, 404);
    assert_eq!(status(&d, &pending.poll).json()["status"], "pending");
    // The next request gets a new id, never a purged one's.
    let next = d.file_request("7e7e0001-0000-4000-8000-000000000004");
    assert!(next.id > pending.id, "{} after {}", next.id, pending.id);

    d.stop();
    let store = replgate::store::Store::open(&d.data_dir.join("replgate.redb")).unwrap();
    let ids: Vec<u64> = store
        .requests(0, usize::MAX, |_| true)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![pending.id, next.id]);
}

#[test]
fn a_token_ends_at_session_lifetime_however_much_it_is_used() {
    let d = Daemon::start(
        "feat-lifetime",
        Options::default().set("session_lifetime", 3),
    );
    let r = d.client().post_json(
        "/api/login",
        None,
        &json!({"username": "root", "password": crate::harness::ADMIN_PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["auth_token"].as_str().unwrap().to_string();
    let expires = r.json()["expires"].as_i64().unwrap();
    let issued = crate::crash_pair::unix_now();
    assert!(
        (issued + 2..=issued + 4).contains(&expires),
        "expires {expires}, now {issued}"
    );
    // Used every half second (session_idle is an hour), it still ends at the lifetime.
    let started = Instant::now();
    let ended = loop {
        let r = d.client().get("/api/systems", Some(&token));
        if r.status != 200 {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the token outlived session_lifetime"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(ended.status, 401, "{}", ended.text());
    assert!(started.elapsed() >= Duration::from_secs(2));
    // A new login gets a new session.
    let again = d.root_token();
    assert_eq!(d.client().get("/api/systems", Some(&again)).status, 200);
}

/// Both listeners on `::1`: the API answers over IPv6 with a certificate that names the
/// address, a source pairs with the target through it, proves the tunnel and replicates.
/// (This machine has `::1` on `lo`; without it the daemon fails to bind and the test says
/// so, it does not skip.)
#[test]
fn ipv6_listeners_serve_the_api_and_the_tunnel_to_a_pairing() {
    let [api, tunnel] = free_ports::<2>();
    let v6 = |port: u16| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let target = pairing_opts()
        .set("api_listen", v6(api))
        .set("tunnel_listen", v6(tunnel));
    let (src, tgt) = start_pair_with("feat-ipv6", pairing_opts(), target);
    assert_eq!(tgt.api, v6(api));
    let r = tgt.client().get("/api/health", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        tgt.log().contains(&format!("tunnel [::1]:{tunnel}")),
        "{}",
        tgt.log()
    );
    let p = pair(&src, &tgt, json!({}));
    assert_eq!(
        tunnel_hello(&tgt, Some(identity(&pairing_dir(&src))))
            .expect("hello over IPv6")
            .status,
        200
    );
    let st = src.root_token();
    let backup = content(3, 300_000);
    write_backup(&src, "v6/first", &backup);
    let item = wait_item(&src, &st, "v6/first", "done", Duration::from_secs(30));
    assert_eq!(item["sha256"], sha256_hex(&backup));
    let copy = tgt
        .data_dir
        .join("storage")
        .join(&p.source_uuid)
        .join("v6/first");
    assert_eq!(std::fs::read(copy).unwrap(), backup);
}

/// A source with two backup storages replicates the one `replicate_from` names, and only
/// that one.
#[test]
fn replicate_from_chooses_the_storage_a_source_replicates() {
    let dir = scratch_dir("feat-replicate-from");
    let (daily, nightly) = (dir.join("daily"), dir.join("nightly"));
    let config = dir.join("replgate.toml");
    std::fs::write(
        &config,
        format!(
            "replicate_from = 2\n\
             [[storage]]\nid = 1\nname = \"daily\"\npath = \"{}\"\n\
             [[storage]]\nid = 2\nname = \"nightly\"\npath = \"{}\"\n",
            daily.display(),
            nightly.display()
        ),
    )
    .unwrap();
    let mut source = pairing_opts();
    source.config_file = Some(config);
    let (src, tgt) = start_pair_with("feat-from", source, pairing_opts());
    for (root, name, seed) in [(&daily, "c/daily.img", 1), (&nightly, "c/nightly.img", 2)] {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content(seed, 200_000)).unwrap();
    }
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    wait_item(&src, &st, "c/nightly.img", "done", Duration::from_secs(30));
    // Scans run on inotify and every minute: the other storage has had its chance.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        item_of(&src, &st, "c/daily.img").is_none(),
        "{:?}",
        items(&src, &st)
    );
    let received = tgt.data_dir.join("storage").join(&p.source_uuid).join("c");
    let names: Vec<String> = std::fs::read_dir(received)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["nightly.img".to_string()]);
}

/// The target's storage is a 24 MiB tmpfs mounted in the target's own mount namespace
/// (`unshare -m`; the test runs as root): a backup that would leave less than the 16 MiB
/// reserve is refused when offered, before a byte of it moves, with a message naming the
/// free space; one that fits goes through.
#[test]
fn a_backup_the_targets_free_space_cannot_hold_is_refused_before_the_transfer() {
    let dir = scratch_dir("feat-nospace");
    let storage = dir.join("small");
    std::fs::create_dir_all(&storage).unwrap();
    let config = dir.join("replgate.toml");
    std::fs::write(
        &config,
        format!(
            "[[storage]]\nid = 1\nname = \"small\"\npath = \"{}\"\n",
            storage.display()
        ),
    )
    .unwrap();
    let mut target = pairing_opts();
    target.config_file = Some(config);
    // `sh -c PREFIX exec "$0" "$@"` runs the daemon: the prefix execs it itself, inside a
    // new mount namespace with the tmpfs over the storage directory.
    target.shell_prefix = Some(format!(
        "set -- \"$0\" \"$@\"; exec unshare --mount --propagation private sh -c \
         'mount -t tmpfs -o size=24m replgate-test \"{}\" && exec \"$@\"' sh \"$@\";",
        storage.display()
    ));
    let (src, tgt) = start_pair_with("feat-nospace", pairing_opts(), target);
    // The daemon sees the tmpfs; this process does not.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", tgt.pid())).unwrap();
    assert!(
        mounts.contains(&format!("replgate-test {} tmpfs", storage.display())),
        "{mounts}"
    );
    write_backup(&src, "s/fits", &content(1, 2 << 20));
    write_backup(&src, "s/too-big", &content(2, 10 << 20));
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    wait_item(&src, &st, "s/fits", "done", Duration::from_secs(30));
    let failed = wait_item(&src, &st, "s/too-big", "failed", Duration::from_secs(30));
    let message = failed["message"].as_str().unwrap_or("");
    assert!(
        message.contains("refused before the transfer")
            && message.contains("MB free")
            && message.contains("storage 1"),
        "{failed}"
    );
    assert_eq!(failed["bytes_sent"], 0, "{failed}");
    // Inside the target's namespace: the copy that fit, and nothing of the other.
    let inside = std::path::PathBuf::from(format!("/proc/{}/root", tgt.pid()))
        .join(storage.strip_prefix("/").unwrap())
        .join(&p.source_uuid)
        .join("s");
    let names: Vec<String> = std::fs::read_dir(&inside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["fits".to_string()], "{}", inside.display());
}

/// SIGTERM while a transfer is in flight, on the target and then on the source: each
/// exits 0 within its drain, and after the restart the transfer resumes and completes
/// with the right bytes.
#[test]
fn sigterm_with_a_transfer_in_flight_exits_cleanly_and_the_transfer_resumes() {
    let (mut src, mut tgt) = start_pair("feat-sigterm");
    let p = pair(&src, &tgt, json!({}));
    let st = src.root_token();
    throttle_to(&src, &st, 1_000_000);
    for (side, name, seed) in [("target", "t/first", 4), ("source", "t/second", 5)] {
        let bytes = &content(seed, 6_000_000);
        write_backup(&src, name, bytes);
        let st = src.root_token();
        wait_progress(&src, &st, name, 1_000_000, Duration::from_secs(60));
        let daemon = if side == "target" { &mut tgt } else { &mut src };
        let asked = Instant::now();
        let status = daemon.stop();
        let took = asked.elapsed();
        assert!(
            status.success(),
            "{side}: SIGTERM mid-transfer exited {status}"
        );
        assert!(
            took < Duration::from_secs(20),
            "{side}: stopping took {took:?}"
        );
        assert!(
            daemon.log().contains("stopped"),
            "{side}: no orderly stop in the log"
        );
        daemon.restart();
        let st = src.root_token();
        unthrottle(&src, &st);
        let item = wait_item(&src, &st, name, "done", Duration::from_secs(60));
        assert_eq!(item["sha256"], sha256_hex(bytes), "{side}: {item}");
        let copy = tgt.data_dir.join("storage").join(&p.source_uuid).join(name);
        assert!(
            std::fs::read(copy).unwrap() == *bytes,
            "{side}: the copy differs"
        );
        throttle_to(&src, &st, 1_000_000);
    }
}
