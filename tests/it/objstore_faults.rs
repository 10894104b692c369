//! The object-store client through our fault-injecting proxy (`s3_proxy`) in front of
//! SeaweedFS: transient faults are retried to a correct result, the retry budget ends in
//! a clean `Transient`, and a cut body or listing is never reported as a success.

use std::sync::Arc;
use std::time::Duration;

use replgate::objstore::{
    Key, Location, MultipartWriter, ObjStore, ObjStoreError, PartSize, RetryPolicy, Settings,
};

use crate::objstore::pattern;
use crate::s3_proxy::{Fault, Proxy, Rule};
use crate::seaweed::{sha256, Seaweed};

const MIB: usize = 1024 * 1024;

/// The engine, a proxy in front of it, and a client that goes through the proxy with
/// short waits between attempts.
fn through_proxy(name: &str, attempts: u32) -> (Seaweed, Proxy, Arc<ObjStore>) {
    let engine = Seaweed::start(name);
    let upstream = engine
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("engine address");
    let proxy = Proxy::start(upstream);
    let location = Location {
        endpoint: proxy.endpoint(),
        ..engine.location()
    };
    let settings = Settings {
        retry: RetryPolicy {
            attempts,
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
        },
        list_page: 2,
        ..Settings::default()
    };
    let store = ObjStore::open(&location, &engine.credentials_file(), settings).expect("client");
    (engine, proxy, Arc::new(store))
}

fn key(k: &str) -> Key {
    Key::parse(k).expect("key")
}

#[test]
fn objstore_retries_5xx_slowdown_resets_and_cut_bodies_and_ends_with_the_right_bytes() {
    let (_engine, proxy, store) = through_proxy("objstore-faults-retry", 6);
    let part = PartSize::exact(8 * MIB as u64).expect("part size");
    let data = pattern(2 * 8 * MIB + 5000, 11);
    let k = key("faults/a.img");

    proxy.add(Rule::next(
        Some("POST"),
        "uploads",
        Fault::Status(503, "SlowDown"),
        2,
    ));
    proxy.add(Rule::next(
        Some("PUT"),
        "partNumber=1",
        Fault::Status(500, "InternalError"),
        1,
    ));
    proxy.add(Rule::next(Some("PUT"), "partNumber=1", Fault::Reset, 1));
    proxy.add(Rule::next(
        Some("PUT"),
        "partNumber=2",
        Fault::LoseAnswer,
        1,
    ));
    proxy.add(Rule::next(
        Some("PUT"),
        "partNumber=3",
        Fault::Status(503, "SlowDown"),
        2,
    ));
    // The answer to CompleteMultipartUpload is lost after the engine completed: the retry
    // finds the upload gone and settles it by the object (our token, our size).
    proxy.add(Rule::next(Some("POST"), "uploadId=", Fault::LoseAnswer, 1));
    let mut w = MultipartWriter::create(store.clone(), k.clone(), part, None).expect("create");
    for chunk in data.chunks(MIB) {
        w.write_all(chunk).expect("write");
    }
    let done = w.complete().expect("complete through the faults");
    assert_eq!((done.size, done.sha256), (data.len() as u64, sha256(&data)));
    assert_eq!(proxy.faults(), 8, "every planned fault was injected");

    // Reads: a body cut twice mid-way, a reset and a 503 on the way.
    proxy.add(Rule::next(
        Some("GET"),
        "faults/a.img",
        Fault::CutBody(3 * MIB),
        1,
    ));
    proxy.add(Rule::next(
        Some("GET"),
        "faults/a.img",
        Fault::CutBody(1000),
        1,
    ));
    proxy.add(Rule::next(Some("GET"), "faults/a.img", Fault::Reset, 1));
    proxy.add(Rule::next(
        Some("GET"),
        "faults/a.img",
        Fault::Status(503, "SlowDown"),
        1,
    ));
    assert_eq!(
        store.sha256_of(&k).expect("read back through the faults"),
        (data.len() as u64, sha256(&data))
    );
    assert_eq!(proxy.faults(), 12);
    // A listing cut once, then whole.
    proxy.add(Rule::next(
        Some("GET"),
        "list-type=2",
        Fault::ShortBody(200),
        1,
    ));
    let listed = store
        .list_objects("faults/")
        .expect("list through a cut page");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, data.len() as u64);
    assert_eq!(proxy.faults(), 13);
}

#[test]
fn objstore_gives_up_cleanly_after_the_retry_budget() {
    let (_engine, proxy, store) = through_proxy("objstore-faults-budget", 3);
    let k = key("budget/x");
    proxy.add(Rule::next(
        None,
        "",
        Fault::Status(503, "SlowDown"),
        usize::MAX,
    ));
    let before = proxy.requests();
    let e = store.put_object(&k, b"x", &sha256(b"x")).unwrap_err();
    match &e {
        ObjStoreError::Transient { attempts, last, .. } => {
            assert_eq!(*attempts, 3);
            assert!(last.contains("SlowDown"), "{last}");
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    assert!(e.is_transient());
    assert_eq!(
        proxy.requests() - before,
        3,
        "one request per attempt, no more"
    );

    proxy.clear();
    proxy.add(Rule::next(None, "", Fault::Reset, usize::MAX));
    let before = proxy.requests();
    let e = store.head_object(&k).unwrap_err();
    assert!(
        matches!(e, ObjStoreError::Transient { attempts: 3, .. }),
        "{e:?}"
    );
    // Three attempts, plus at most one free retry for a reused connection the server
    // closed.
    let sent = proxy.requests() - before;
    assert!((3..=4).contains(&sent), "{sent} requests");

    // The store recovers: the next call works, and calls after it share one connection.
    proxy.clear();
    store
        .put_object(&k, b"x", &sha256(b"x"))
        .expect("put after the faults");
    let connections = proxy.connections();
    for _ in 0..10 {
        store.head_object(&k).expect("head").expect("there");
        store.get_range(&k, 0..1).expect("read");
    }
    assert_eq!(proxy.connections(), connections, "kept alive and reused");
}

#[test]
fn objstore_never_reports_success_for_a_cut_body_or_listing() {
    let (_engine, proxy, store) = through_proxy("objstore-faults-cut", 3);
    let body = pattern(100_000, 5);
    let k = key("cut/object");
    store.put_object(&k, &body, &sha256(&body)).expect("put");
    for i in 0..5 {
        store
            .put_object(&key(&format!("cut/list/{i}")), b"x", &sha256(b"x"))
            .expect("put for listing");
    }

    // Bodies that say they are whole but are empty (Content-Length 0, Content-Range the
    // whole object), or cut at once with the true length announced: no byte arrives, and
    // no read, range or digest claims success.
    for fault in [Fault::ShortBody(0), Fault::CutBody(0)] {
        proxy.clear();
        proxy.add(Rule::next(Some("GET"), "cut/object", fault, usize::MAX));
        let mut sink = Vec::new();
        let e = store.read_object(&k, None, &mut sink).unwrap_err();
        assert!(e.is_transient(), "{fault:?}: {e:?}");
        assert!(store.get_range(&k, 10..90_000).is_err(), "{fault:?}");
        assert!(store.sha256_of(&k).is_err(), "{fault:?}");
    }
    // Bodies cut after some bytes: each answer's Content-Range says where it should end,
    // the read goes on from the byte it reached, and the result is the whole object.
    for fault in [Fault::ShortBody(30_000), Fault::CutBody(30_000)] {
        proxy.clear();
        proxy.add(Rule::next(Some("GET"), "cut/object", fault, usize::MAX));
        let before = proxy.requests();
        let mut sink = Vec::new();
        assert_eq!(
            store.read_object(&k, None, &mut sink).expect("read"),
            100_000
        );
        assert!(sink == body, "{fault:?}: the pieces make the object");
        assert_eq!(
            proxy.requests() - before,
            4,
            "{fault:?}: 30,000 bytes a request"
        );
    }

    // Listings cut mid-XML, every page or only a later one.
    proxy.clear();
    proxy.add(Rule::next(
        Some("GET"),
        "list-type=2",
        Fault::ShortBody(150),
        usize::MAX,
    ));
    assert!(store.list_objects("cut/list/").is_err());
    proxy.clear();
    proxy.add(Rule::next(
        Some("GET"),
        "continuation-token",
        Fault::CutBody(100),
        usize::MAX,
    ));
    assert!(
        store.list_objects("cut/list/").is_err(),
        "a cut second page fails the listing"
    );
    proxy.clear();
    proxy.add(Rule::next(
        Some("GET"),
        "uploads",
        Fault::ShortBody(120),
        usize::MAX,
    ));
    store
        .create_multipart(&key("cut/u"), "t", None)
        .expect("create an upload");
    assert!(store.list_uploads("cut/").is_err());

    // Without faults everything reads whole.
    proxy.clear();
    assert_eq!(store.list_objects("cut/list/").expect("list").len(), 5);
    assert_eq!(store.list_uploads("cut/").expect("uploads").len(), 1);
    assert_eq!(store.sha256_of(&k).expect("read"), (100_000, sha256(&body)));
    assert!(proxy.faults() >= 3 * 4, "{} faults", proxy.faults());
}

#[test]
fn objstore_random_faults_on_every_request_still_end_in_a_correct_object() {
    let (_engine, proxy, store) = through_proxy("objstore-faults-random", 10);
    // About 30 % of requests fail one way or another; ten attempts a call.
    proxy.add(Rule::random(Fault::Status(503, "SlowDown"), 0.12));
    proxy.add(Rule::random(Fault::Reset, 0.07));
    proxy.add(Rule::random(Fault::LoseAnswer, 0.07));
    proxy.add(Rule::random(Fault::CutBody(4096), 0.07));
    let part = PartSize::exact(8 * MIB as u64).expect("part size");
    let mut total_faults = 0;
    for round in 0..5u64 {
        let data = pattern(2 * 8 * MIB + 777 * (round as usize + 1), 100 + round);
        let k = key(&format!("random/{round}"));
        let mut w = MultipartWriter::create(store.clone(), k.clone(), part, None).expect("create");
        for chunk in data.chunks(MIB) {
            w.write_all(chunk).expect("write");
        }
        let done = w.complete().expect("complete");
        assert_eq!(done.sha256, sha256(&data));
        assert_eq!(
            store.sha256_of(&k).expect("read back"),
            (data.len() as u64, sha256(&data))
        );
        assert_eq!(
            store
                .get_range(&k, 8 * MIB as u64 - 3..8 * MIB as u64 + 3)
                .expect("range"),
            &data[8 * MIB - 3..8 * MIB + 3]
        );
        total_faults = proxy.faults();
    }
    assert!(
        total_faults >= 5,
        "only {total_faults} faults in {} requests",
        proxy.requests()
    );
}

/// An engine may name a part twice in a listing (SeaweedFS once did, after a part's
/// upload failed with a replica down): a resume goes on when the two entries agree and
/// refuses when they do not.
#[test]
fn objstore_resume_takes_a_part_listed_twice_only_when_both_entries_agree() {
    let (_engine, proxy, store) = through_proxy("objstore-faults-repeat", 3);
    let part = PartSize::exact(8 * MIB as u64).expect("part size");
    let data = pattern(2 * 8 * MIB + 77, 31);
    let k = key("faults/repeat.img");
    let mut w = MultipartWriter::create(store.clone(), k.clone(), part, None).expect("create");
    for chunk in data[..8 * MIB].chunks(MIB) {
        w.write_all(chunk).expect("write");
    }
    let cp = w.sync().expect("part 1");
    assert_eq!(cp.parts, 1);
    drop(w);

    let before = proxy.faults();
    let repeat = |same| Rule::next(Some("GET"), "uploadId=", Fault::RepeatFirstPart { same }, 1);
    proxy.add(repeat(false));
    let e = MultipartWriter::resume(store.clone(), k.clone(), &cp)
        .err()
        .expect("part 1 listed twice with two ETags");
    assert!(matches!(e, ObjStoreError::Corrupt { .. }), "{e:?}");

    proxy.add(repeat(true));
    let mut w = MultipartWriter::resume(store.clone(), k.clone(), &cp).expect("resume");
    for chunk in data[8 * MIB..].chunks(MIB) {
        w.write_all(chunk).expect("write");
    }
    let done = w.complete().expect("complete");
    assert_eq!(done.sha256, sha256(&data));
    assert_eq!(proxy.faults() - before, 2, "both listings were doctored");
    assert_eq!(
        store.sha256_of(&k).expect("read back"),
        (data.len() as u64, sha256(&data))
    );
}
