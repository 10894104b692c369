//! The object-store client (`replgate::objstore`) against a real S3 engine, SeaweedFS:
//! every operation, multipart uploads resumed after the writer is gone, listings across
//! pages, aborts and the orphan sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use replgate::objstore::{
    Checkpoint, Credentials, Key, Location, MultipartWriter, ObjStore, ObjStoreError, PartSize,
    RetryPolicy, Settings,
};

use crate::seaweed::{sha256, Seaweed};

const MIB: usize = 1024 * 1024;

/// Bytes that differ from part to part and from run to run of one test.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn key(k: &str) -> Key {
    Key::parse(k).expect("a valid key")
}

fn small_pages() -> Settings {
    Settings {
        list_page: 2,
        ..Settings::default()
    }
}

#[test]
fn objstore_every_object_operation_works_against_seaweedfs() {
    let engine = Seaweed::start("objstore-ops");
    let store = engine.store_with(small_pages());
    store.check().expect("the bucket is there");

    // PutObject, HeadObject (with our sha256 metadata), GetObject whole and ranged.
    let body = pattern(300_000, 1);
    let k = Key::backup(
        "tenants",
        "5f0c7a52-3f5e-4a6b-9c0d-2b1e8f7a6c11",
        "web 01",
        "a+b/ü.img",
    )
    .expect("backup key");
    store.put_object(&k, &body, &sha256(&body)).expect("put");
    let info = store
        .head_object(&k)
        .expect("head")
        .expect("the object exists");
    assert_eq!(info.size, body.len() as u64);
    assert_eq!(info.sha256, Some(sha256(&body)));
    assert_eq!(info.upload_token, None);
    let mut whole = Vec::new();
    assert_eq!(
        store.read_object(&k, None, &mut whole).expect("get"),
        body.len() as u64
    );
    assert!(whole == body, "the whole object reads back as written");
    assert_eq!(
        store.get_range(&k, 1000..1010).expect("range"),
        &body[1000..1010]
    );
    assert_eq!(
        store.get_range(&k, 299_990..300_000).expect("last bytes"),
        &body[299_990..]
    );
    assert_eq!(
        store.get_range(&k, 5..5).expect("empty range"),
        Vec::<u8>::new()
    );
    assert_eq!(
        store.sha256_of(&k).expect("read back"),
        (body.len() as u64, sha256(&body))
    );

    // An empty object reads back empty, whole and hashed.
    let empty = key("tenants/empty");
    store
        .put_object(&empty, b"", &sha256(b""))
        .expect("put empty");
    let mut none = Vec::new();
    assert_eq!(
        store
            .read_object(&empty, None, &mut none)
            .expect("get empty"),
        0
    );
    assert_eq!(
        store.sha256_of(&empty).expect("hash empty"),
        (0, sha256(b""))
    );
    store.delete_object(&empty).expect("delete empty");

    // Absent objects: HEAD says none, GET says NotFound, DELETE is done anyway.
    let missing = key("tenants/nothing/here");
    assert_eq!(store.head_object(&missing).expect("head missing"), None);
    assert!(matches!(
        store.get_range(&missing, 0..1),
        Err(ObjStoreError::NotFound { .. })
    ));
    store
        .delete_object(&missing)
        .expect("deleting nothing is done");

    // ListObjectsV2 across pages of two.
    let mut names: Vec<String> = (0..5).map(|i| format!("list/{i}/obj")).collect();
    for (i, n) in names.iter().enumerate() {
        let b = pattern(10 + i, i as u64);
        store
            .put_object(&key(n), &b, &sha256(&b))
            .expect("put for listing");
    }
    store
        .put_object(&key("listing-not/x"), b"x", &sha256(b"x"))
        .expect("put outside the prefix");
    let (first, next) = store.list_objects_page("list/", None).expect("first page");
    assert_eq!(first.len(), 2, "a page holds list_page entries");
    assert!(next.is_some(), "more pages follow");
    let all = store.list_objects("list/").expect("every page");
    let mut listed: Vec<String> = all.iter().map(|e| e.key.clone()).collect();
    listed.sort();
    names.sort();
    assert_eq!(listed, names);
    assert_eq!(
        all.iter().find(|e| e.key == "list/3/obj").map(|e| e.size),
        Some(13)
    );
    let special = store
        .list_objects("tenants/")
        .expect("list a key with spaces and +");
    assert_eq!(special.len(), 1);
    assert_eq!(special[0].key, k.as_str());

    // DeleteObject.
    store.delete_object(&k).expect("delete");
    assert_eq!(store.head_object(&k).expect("head after delete"), None);
}

#[test]
fn objstore_wrong_credentials_are_auth_errors_and_a_missing_bucket_is_not_transient() {
    let engine = Seaweed::start("objstore-auth");
    let wrong = ObjStore::new(
        &engine.location(),
        &Credentials::new(&engine.access_key, "not-the-secret"),
        Settings::default(),
    )
    .expect("client");
    let k = key("auth/x");
    let e = wrong.put_object(&k, b"x", &sha256(b"x")).unwrap_err();
    assert!(matches!(e, ObjStoreError::Auth { .. }), "{e:?}");
    let mut loc = engine.location();
    loc.bucket = "no-such-bucket".into();
    let nobucket =
        ObjStore::open(&loc, &engine.credentials_file(), Settings::default()).expect("client");
    let e = nobucket.list_objects("").unwrap_err();
    assert!(
        !e.is_transient() && !matches!(e, ObjStoreError::Auth { .. }),
        "{e:?}"
    );
}

/// Writes `data` into `w` in 1 MiB writes.
fn feed(w: &mut MultipartWriter, data: &[u8]) {
    for chunk in data.chunks(MIB) {
        w.write_all(chunk).expect("write");
    }
}

#[test]
fn objstore_multipart_upload_resumes_after_the_writer_is_dropped_and_reads_back_whole() {
    let engine = Seaweed::start("objstore-resume");
    let store = engine.store_with(Settings {
        list_page: 1,
        ..Settings::default()
    });
    let part = PartSize::exact(8 * MIB as u64).expect("part size");
    let data = pattern(3 * 8 * MIB + 123_457, 7);
    let k = key("resume/backup.img");

    let mut w = MultipartWriter::create(store.clone(), k.clone(), part, None).expect("create");
    let first = w.checkpoint().expect("checkpoint");
    assert_eq!((first.parts, first.offset()), (0, 0));
    // Two and a half parts: two uploaded, half a part only in memory.
    feed(&mut w, &data[..2 * 8 * MIB + 4 * MIB]);
    let cp = w.sync().expect("sync");
    assert_eq!(cp.offset(), 2 * 8 * MIB as u64);
    let recorded = cp.encode();
    drop(w); // As a crash would: the buffered half part is lost.

    assert_eq!(
        store.head_object(&k).expect("head"),
        None,
        "an upload in progress is invisible"
    );
    let uploads = store.list_uploads("resume/").expect("list uploads");
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].upload_id, cp.upload_id);
    let parts = store.list_parts(&k, &cp.upload_id).expect("list parts");
    assert_eq!(parts.len(), 2, "listed across pages of one: {parts:?}");

    let cp = Checkpoint::decode(&recorded).expect("decode the recorded checkpoint");
    let mut w = MultipartWriter::resume(store.clone(), k.clone(), &cp).expect("resume");
    assert_eq!(w.written(), cp.offset());
    feed(&mut w, &data[cp.offset() as usize..]);
    assert_eq!(w.sha256(), sha256(&data), "the digest spans the resume");
    let done = w.complete().expect("complete");
    assert_eq!(done.size, data.len() as u64);
    assert_eq!(done.sha256, sha256(&data));

    let info = store
        .head_object(&k)
        .expect("head")
        .expect("completed object");
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.upload_token.as_deref(), Some(cp.token.as_str()));
    assert_eq!(
        store.sha256_of(&k).expect("read back"),
        (data.len() as u64, sha256(&data))
    );
    let from = 8 * MIB as u64 - 10;
    assert_eq!(
        store
            .get_range(&k, from..from + 20)
            .expect("range across parts"),
        &data[from as usize..from as usize + 20]
    );
    assert!(store.list_uploads("resume/").expect("list").is_empty());
    assert!(matches!(
        store.list_parts(&k, &cp.upload_id),
        Err(ObjStoreError::UploadGone { .. })
    ));
    // Completing again (an answer lost, the process restarted) is settled by the object.
    store
        .complete_multipart(&k, &cp.upload_id, &[], data.len() as u64, &cp.token)
        .expect("a repeated complete finds our object");
    let e = store
        .complete_multipart(&k, &cp.upload_id, &[], data.len() as u64, "another-token")
        .unwrap_err();
    assert!(matches!(e, ObjStoreError::UploadGone { .. }), "{e:?}");
}

#[test]
fn objstore_resume_refuses_parts_that_changed_and_a_small_upload_completes_in_one_part() {
    let engine = Seaweed::start("objstore-changed");
    let store = engine.store();
    let part = PartSize::exact(8 * MIB as u64).expect("part size");
    let k = key("changed/x");
    let data = pattern(8 * MIB + 10, 3);
    let mut w = MultipartWriter::create(store.clone(), k.clone(), part, None).expect("create");
    feed(&mut w, &data);
    let cp = w.sync().expect("sync");
    assert_eq!(cp.parts, 1);
    drop(w);
    // Someone replaces part 1 with other bytes of the same size.
    store
        .upload_part(&k, &cp.upload_id, 1, &pattern(8 * MIB, 4))
        .expect("replace part 1");
    let e = MultipartWriter::resume(store.clone(), k.clone(), &cp)
        .err()
        .expect("resume must refuse");
    assert!(matches!(e, ObjStoreError::Corrupt { .. }), "{e:?}");
    store.abort_multipart(&k, &cp.upload_id).expect("abort");
    let e = MultipartWriter::resume(store.clone(), k.clone(), &cp)
        .err()
        .expect("resume after abort");
    assert!(matches!(e, ObjStoreError::UploadGone { .. }), "{e:?}");

    // Less than a part: one short last part.
    let small = pattern(1000, 5);
    let mut w = MultipartWriter::create(store.clone(), k.clone(), part, None).expect("create");
    w.write_all(&small).expect("write");
    let done = w.complete().expect("complete one short part");
    assert_eq!((done.size, done.sha256), (1000, sha256(&small)));
    assert_eq!(store.get_range(&k, 0..1000).expect("read"), small);
}

#[test]
fn objstore_abort_leaves_no_upload_and_the_sweep_aborts_only_old_unclaimed_ones() {
    let engine = Seaweed::start("objstore-sweep");
    let store: Arc<ObjStore> = engine.store_with(Settings {
        list_page: 1,
        ..Settings::default()
    });
    let ids: Vec<(Key, String)> = (0..4)
        .map(|i| {
            let k = key(&format!("sweep/{i}"));
            let id = store
                .create_multipart(&k, &format!("token{i}"), None)
                .expect("create");
            store
                .upload_part(&k, &id, 1, &pattern(1000, i))
                .expect("a part");
            (k, id)
        })
        .collect();
    let elsewhere = key("other/keep");
    let other = store
        .create_multipart(&elsewhere, "t", None)
        .expect("create outside the prefix");
    // Listing across pages of one.
    let listed = store.list_uploads("sweep/").expect("list");
    assert_eq!(listed.len(), 4, "{listed:?}");

    store.abort_multipart(&ids[0].0, &ids[0].1).expect("abort");
    store
        .abort_multipart(&ids[0].0, &ids[0].1)
        .expect("aborting again is done");
    let listed = store.list_uploads("sweep/").expect("list");
    assert!(
        !listed.iter().any(|u| u.upload_id == ids[0].1),
        "{listed:?}"
    );

    // Nothing is older than an hour ago: the sweep keeps all.
    let now = replgate::model::now();
    let r = store
        .sweep_uploads("sweep/", now - 3600, |_| false)
        .expect("sweep");
    assert!(r.aborted.is_empty() && r.kept == 3, "{r:?}");
    // Everything is older than a minute from now; the caller claims upload 1.
    let claimed = ids[1].1.clone();
    let r = store
        .sweep_uploads("sweep/", now + 60, |u| u.upload_id == claimed)
        .expect("sweep");
    assert_eq!(r.kept, 1);
    let mut aborted: Vec<&str> = r.aborted.iter().map(|u| u.upload_id.as_str()).collect();
    aborted.sort();
    let mut want = vec![ids[2].1.as_str(), ids[3].1.as_str()];
    want.sort();
    assert_eq!(aborted, want);
    let left = store.list_uploads("").expect("list all");
    let mut left: Vec<&str> = left.iter().map(|u| u.upload_id.as_str()).collect();
    left.sort();
    let mut want = vec![claimed.as_str(), other.as_str()];
    want.sort();
    assert_eq!(
        left, want,
        "the claimed upload and the one outside the prefix remain"
    );
}

/// Replication `001` over two volume servers; one is killed after the first part: the
/// parts after it fail as `Transient` (a write needs both copies), nothing claims
/// success, and once the server is back the upload resumes from its checkpoint and
/// completes with the right bytes.
#[test]
fn objstore_upload_outlives_a_replica_server_killed_mid_upload() {
    let mut engine = Seaweed::start_replicated("objstore-replica");
    // Short bounds while the replica is down, so the failure comes in seconds.
    let impatient = engine.store_with(Settings {
        call_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            attempts: 2,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(1),
        },
        ..Settings::default()
    });
    let part = PartSize::exact(8 * MIB as u64).expect("part size");
    let data = pattern(3 * 8 * MIB + 99, 21);
    let k = key("replica/backup.img");
    let mut w = MultipartWriter::create(impatient.clone(), k.clone(), part, None).expect("create");
    feed(&mut w, &data[..8 * MIB]);
    let cp = w.sync().expect("part 1 on both replicas");
    assert_eq!(cp.parts, 1);

    engine.kill_volume(0);
    let outcome = data[8 * MIB..2 * 8 * MIB]
        .chunks(MIB)
        .try_for_each(|chunk| w.write_all(chunk))
        .and_then(|()| w.sync());
    assert!(
        matches!(outcome, Err(ObjStoreError::Transient { .. })),
        "a part written with a replica down: {outcome:?}"
    );
    assert!(
        w.write_all(b"more").is_err(),
        "a writer whose part failed takes no more bytes"
    );
    drop(w);

    engine.restart_volume(0);
    let store = engine.store();
    let probe = key("replica/probe");
    let start = Instant::now();
    while store.put_object(&probe, b"p", &sha256(b"p")).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the volume server did not come back"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut w = MultipartWriter::resume(store.clone(), k.clone(), &cp).expect("resume");
    assert_eq!(w.written(), 8 * MIB as u64);
    feed(&mut w, &data[8 * MIB..]);
    let done = w.complete().expect("complete");
    assert_eq!(done.sha256, sha256(&data));
    assert_eq!(
        store.sha256_of(&k).expect("read back"),
        (data.len() as u64, sha256(&data))
    );
}

/// A measurement, not a check (timing targets live in benchmarks): 1 GiB through the
/// client into SeaweedFS on loopback, the way the receiver will write it, then MB/s,
/// requests and the test process's peak RSS. Run it alone, so the peak is its own:
/// `cargo test --release --test it objstore_bench -- --ignored --nocapture`.
#[test]
#[ignore = "bench: uploads 1 GiB and prints figures"]
fn objstore_bench_upload_one_gib() {
    fn status(field: &str) -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .map(|l| l[field.len()..].trim().to_string())
            .unwrap_or_default()
    }
    fn uptime() -> String {
        std::process::Command::new("uptime")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
    fn cpu_seconds() -> f64 {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
        let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }
    const GIB: usize = 1024 * MIB;
    let engine = Seaweed::start("objstore-bench");
    let store = engine.store();
    let block = pattern(MIB, 99);
    println!("load before: {}", uptime());
    println!(
        "RSS before: {}, peak so far {}",
        status("VmRSS:"),
        status("VmHWM:")
    );
    let k = key("bench/one-gib.img");
    let cpu = cpu_seconds();
    let start = Instant::now();
    let before = store.requests();
    let part = PartSize::for_object(GIB as u64).expect("part size");
    let mut w = MultipartWriter::create(store.clone(), k.clone(), part, None).expect("create");
    let mut chunk = block.clone();
    for i in 0..GIB / MIB {
        // Every MiB different, as a real file's would be.
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        w.write_all(&chunk).expect("write");
    }
    let done = w.complete().expect("complete");
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    let requests = store.requests() - before;
    assert_eq!(done.size, GIB as u64);
    println!(
        "uploaded 1 GiB in {secs:.2} s: {:.0} MB/s ({:.0} MiB/s), {requests} requests, part size {} MiB",
        GIB as f64 / secs / 1e6,
        GIB as f64 / secs / MIB as f64,
        part.bytes() / MIB as u64
    );
    println!("CPU of the test process (client and hashing): {cpu:.2} s");
    println!("peak RSS of the test process: {}", status("VmHWM:"));
    println!("load after: {}", uptime());
    let start = Instant::now();
    let (size, _) = store.sha256_of(&k).expect("read back");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(size, GIB as u64);
    println!(
        "read back and hashed 1 GiB in {secs:.2} s: {:.0} MB/s",
        GIB as f64 / secs / 1e6
    );
}

#[test]
fn objstore_https_trusts_the_ca_file_checks_the_name_and_refuses_other_roots() {
    let engine = Seaweed::start_tls("objstore-tls");
    let creds = engine.credentials_file();
    let with_ca = Location {
        endpoint: engine.https(),
        ca_file: Some(engine.ca_file()),
        ..engine.location()
    };
    let store = ObjStore::open(&with_ca, &creds, Settings::default()).expect("client");
    let k = key("tls/x");
    let body = pattern(3 * MIB, 8);
    store
        .put_object(&k, &body, &sha256(&body))
        .expect("put over TLS");
    assert_eq!(
        store.sha256_of(&k).expect("read over TLS"),
        (body.len() as u64, sha256(&body))
    );
    let before = store.requests();
    for _ in 0..5 {
        store.head_object(&k).expect("head").expect("there");
    }
    assert_eq!(store.requests() - before, 5);

    let refused = |location: &Location| {
        let e = ObjStore::open(location, &creds, Settings::default())
            .expect("client")
            .head_object(&k)
            .unwrap_err();
        assert!(
            matches!(&e, ObjStoreError::Config(m) if m.contains("TLS")),
            "{e:?}"
        );
    };
    // The certificate names localhost, not 127.0.0.1.
    refused(&Location {
        endpoint: engine.https().replace("localhost", "127.0.0.1"),
        ..with_ca.clone()
    });
    // The system's roots do not know the test CA.
    refused(&Location {
        ca_file: None,
        ..with_ca
    });
}
