//! Deduplicated transfers (`chunks`, SPEC 18) between a real sender and receiver over a
//! socket pair, and the receiver against hand-made chunk lists that lie.

use super::tests::{
    against_receiver, done, fixture, nothing_visible, put, received_path, session, sha, text,
    Fixture, MemFeed,
};
use std::sync::atomic::AtomicBool;

use crate::replication::chunker::{Chunk, Chunker, Params, MAX_CHUNK, MIN_CHUNK};
use crate::replication::compress::Compression;
use crate::replication::index;
use crate::replication::receiver::Scope;
use crate::store::{ChunkLoc, DigestPrefix};
use crate::wire::transfer::{push_list_entry, ChunkList, Frame, MAX_LIST};

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
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

fn chunks_of(data: &[u8]) -> Vec<Chunk> {
    let mut c = Chunker::new(Params::standard(), 0);
    let mut r = data;
    let mut out = Vec::new();
    while let Some(ch) = c.next_chunk(&mut r, |_| {}).unwrap() {
        out.push(ch);
    }
    out
}

fn encoded(entries: &[(u16, [u8; 32])]) -> Vec<u8> {
    let mut v = Vec::new();
    for (len, d) in entries {
        push_list_entry(&mut v, *len, d);
    }
    v
}

fn dedup_fixture(name: &str) -> Fixture {
    let mut f = fixture(name);
    f.dedup = Some(Scope::Source);
    f.chunks = true;
    f
}

/// Sends `name` in a session of its own; returns the wire bytes it took.
fn send_one(f: &Fixture, name: &str) -> u64 {
    let mut feed = MemFeed::of(&[name]);
    let (result, rx) = session(f, &mut feed, None);
    let s = result.unwrap();
    assert_eq!(s.done, 1, "{name}: {:?}", feed.results);
    assert_eq!(rx.committed, 1);
    assert!(done(&feed.results[0].1));
    assert_eq!(
        feed.results[0].2, s.bytes_sent,
        "the item counts the wire bytes"
    );
    let want = std::fs::read(f.src.join(name)).unwrap();
    assert_eq!(std::fs::read(received_path(f, name)).unwrap(), want);
    let row = f.store.received_one(&f.source.uuid, name).unwrap().unwrap();
    assert_eq!(row.sha256, crate::ca::sha256_hex(&want));
    s.bytes_sent
}

#[test]
fn yesterdays_file_plus_a_change_sends_only_the_changed_chunks() {
    let f = dedup_fixture("dedup-day2");
    let v1 = noise(1, 8 << 20);
    put(&f, "vm/day1.img", &v1);
    let first = send_one(&f, "vm/day1.img");
    let size = v1.len() as u64;
    // Nothing held yet: all of it, plus the lists (18 bytes per ~8 KiB chunk).
    assert!(first >= size && first < size + size / 200, "{first}");
    let indexed = f.store.chunk_counts().unwrap();
    assert!(indexed.entries > 500 && indexed.staged == 0, "{indexed:?}");
    // Day two: 40 KB rewritten and 10 bytes inserted, under a new name.
    let mut v2 = v1.clone();
    v2[3_000_000..3_040_000].copy_from_slice(&noise(2, 40_000));
    v2.splice(6_000_000..6_000_000, noise(3, 10));
    put(&f, "vm/day2.img", &v2);
    let second = send_one(&f, "vm/day2.img");
    assert!(second >= 40_010, "the changed bytes crossed: {second}");
    assert!(second < size / 25, "{second} of {size} bytes sent");
    // The same again: everything is held, only the lists cross.
    put(&f, "vm/day3.img", &v2);
    let third = send_one(&f, "vm/day3.img");
    assert!(third < size / 300, "{third}");
    // A source without the feature sends the whole file, and it arrives all the same.
    let mut f = f;
    f.chunks = false;
    put(&f, "vm/day4.img", &v1);
    assert_eq!(send_one(&f, "vm/day4.img"), size);
}

/// A gigabit link at 100 ms as `TCP_INFO` would tell it: 12.5 MB a round trip, so a chunk
/// list pays only for files of 400 MB and more (`link::list_pays`), and a probe goes once
/// every 3.2 s.
fn fast_long_link() -> crate::replication::compress::Readings {
    crate::replication::compress::Readings {
        link_rate: Some(125_000_000),
        rtt: Some(std::time::Duration::from_millis(100)),
        ..Default::default()
    }
}

/// Sends `names` in one session; returns each item's bytes sent, by item id.
fn send_all(f: &Fixture, names: &[&str]) -> Vec<u64> {
    let mut feed = MemFeed::of(names);
    let (result, rx) = session(f, &mut feed, None);
    let s = result.unwrap();
    assert_eq!(s.done, names.len() as u64, "{:?}", feed.results);
    assert_eq!(rx.committed, names.len() as u64);
    let mut sent = vec![0; names.len()];
    for (id, attempt, bytes) in &feed.results {
        assert!(done(attempt), "{attempt:?}");
        sent[*id as usize - 1] = *bytes;
    }
    for n in names {
        let want = std::fs::read(f.src.join(n)).unwrap();
        assert_eq!(std::fs::read(received_path(f, n)).unwrap(), want, "{n}");
    }
    sent
}

#[test]
fn small_new_files_on_a_fast_link_go_whole_and_held_ones_still_go_in_chunks() {
    const MIB: usize = 1 << 20;
    let mut f = dedup_fixture("dedup-small-fast");
    f.readings = fast_long_link;
    // Eight new 1 MiB files: the first is a probe (its list finds nothing held), the
    // other seven go whole, with no list and so no round trip for one before their bytes:
    // each item's bytes sent are exactly its size (a list would add 18 bytes a chunk).
    let new: Vec<String> = (0..8).map(|i| format!("db/new-{i}")).collect();
    for (i, n) in new.iter().enumerate() {
        put(&f, n, &noise(10 + i as u64, MIB));
    }
    let names: Vec<&str> = new.iter().map(String::as_str).collect();
    let sent = send_all(&f, &names);
    assert!(sent[0] > MIB as u64, "the first file is a probe: {sent:?}");
    assert_eq!(sent[1..], [MIB as u64; 7], "{sent:?}");
    // Day two of a set of small files (yesterday's bytes under new names): the probe finds
    // them held, so the rest go in chunks too and only their lists cross.
    let day2: Vec<String> = (0..8).map(|i| format!("db/day2-{i}")).collect();
    for (i, n) in day2.iter().enumerate() {
        put(&f, n, &noise(10 + i as u64, MIB));
    }
    // The first day's copies were sent whole but the probe: the index job indexes them.
    let storages = [f.source.storage.clone()];
    let pass = index::catch_up(&f.store, &storages, true, &AtomicBool::new(false)).unwrap();
    assert_eq!(pass.indexed, 7, "{pass:?}");
    let names: Vec<&str> = day2.iter().map(String::as_str).collect();
    let sent = send_all(&f, &names);
    for (i, s) in sent.iter().enumerate() {
        assert!(*s < MIB as u64 / 20, "file {i} was sent again: {sent:?}");
    }
}

#[test]
fn a_few_chunks_every_file_shares_do_not_make_small_files_pay_a_round_trip() {
    const MIB: usize = 1 << 20;
    // Every file starts with the same 16 KiB (a header, zeros): a chunk or two of ~128.
    let header = noise(40, 16 * 1024);
    let file = |seed: u64| {
        let mut v = header.clone();
        v.extend(noise(seed, MIB - header.len()));
        v
    };
    let first = file(41);
    assert!(
        chunks_of(&first)[0].end() <= header.len() as u64,
        "the header holds a whole chunk"
    );
    let f = dedup_fixture("dedup-few-held");
    put(&f, "db/yesterday", &first);
    send_one(&f, "db/yesterday");
    let mut f = f;
    f.readings = fast_long_link;
    let names: Vec<String> = (0..6).map(|i| format!("db/today-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        put(&f, n, &file(50 + i as u64));
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let sent = send_all(&f, &refs);
    // The probe finds the header's chunks held, too few to pay for a list per file.
    assert!(sent[0] > MIB as u64 / 2, "{sent:?}");
    assert_eq!(sent[1..], [MIB as u64; 5], "{sent:?}");
}

#[test]
fn lacking_chunks_go_compressed_when_zstd_was_agreed() {
    let mut f = dedup_fixture("dedup-zstd");
    f.compression = Compression::Zstd(1);
    let v1 = text(4 << 20);
    put(&f, "docs/day1.tar", &v1);
    let size = v1.len() as u64;
    let mut feed = MemFeed::of(&["docs/day1.tar"]);
    let (result, rx) = session(&f, &mut feed, None);
    let s = result.unwrap();
    assert_eq!((s.done, rx.committed), (1, 1), "{:?}", feed.results);
    // Every chunk lacked, and they went in chunks (the lists count) but compressed: the
    // frames took far less than the content.
    assert!(s.bytes_sent > size, "{s:?}");
    assert!(s.wire_bytes < s.bytes_sent / 2, "{s:?}");
    assert_eq!(
        std::fs::read(received_path(&f, "docs/day1.tar")).unwrap(),
        v1
    );
    assert!(f.store.chunk_counts().unwrap().entries > 100);
    // Day two, 64 KiB rewritten: only the chunks around it lack, and they go compressed
    // too (the lists, near-random digests, do not shrink).
    let mut v2 = v1.clone();
    v2[1_000_000..1_065_536].make_ascii_uppercase();
    put(&f, "docs/day2.tar", &v2);
    let mut feed = MemFeed::of(&["docs/day2.tar"]);
    let (result, _) = session(&f, &mut feed, None);
    let s = result.unwrap();
    assert_eq!(s.done, 1, "{:?}", feed.results);
    assert!(s.bytes_sent > 65_536 && s.bytes_sent < size / 10, "{s:?}");
    assert!(s.wire_bytes < s.bytes_sent * 3 / 4, "{s:?}");
    assert_eq!(
        std::fs::read(received_path(&f, "docs/day2.tar")).unwrap(),
        v2
    );
    let row = f
        .store
        .received_one(&f.source.uuid, "docs/day2.tar")
        .unwrap()
        .unwrap();
    assert_eq!(row.sha256, crate::ca::sha256_hex(&v2));
}

#[test]
fn a_held_copy_that_changed_on_disk_is_not_used_and_its_chunks_are_asked_for() {
    let f = dedup_fixture("dedup-changed");
    let v1 = noise(4, 4 << 20);
    put(&f, "vm/a.img", &v1);
    send_one(&f, "vm/a.img");
    // Someone rewrites the received copy in place: its stamp no longer matches.
    let held = received_path(&f, "vm/a.img");
    let mut bytes = std::fs::read(&held).unwrap();
    bytes[100_000..100_100].fill(0);
    std::fs::write(&held, &bytes).unwrap();
    put(&f, "vm/b.img", &v1);
    let sent = send_one(&f, "vm/b.img");
    assert!(
        sent >= v1.len() as u64,
        "{sent}: chunks of a changed copy were used"
    );
}

#[test]
fn one_tenant_takes_no_chunk_of_another_unless_the_scope_is_the_target() {
    let mut f = dedup_fixture("dedup-tenants");
    let v1 = noise(5, 4 << 20);
    let size = v1.len() as u64;
    put(&f, "vm/a.img", &v1);
    send_one(&f, "vm/a.img");
    // Another source (another uuid on the same storage) sends the same bytes.
    f.scratch.source.uuid = "99999999-2222-4333-8444-555555555555".into();
    f.scratch.source.system_id = 3;
    put(&f, "vm/b.img", &v1);
    let apart = send_one(&f, "vm/b.img");
    assert!(
        apart >= size,
        "{apart}: the scope leaked another source's chunks"
    );
    f.dedup = Some(Scope::Target);
    put(&f, "vm/c.img", &v1);
    let shared = send_one(&f, "vm/c.img");
    assert!(shared < size / 50, "{shared}");
}

#[test]
fn unknown_digests_are_all_lacking_and_bytes_that_miss_their_digest_discard_the_copy() {
    let f = dedup_fixture("dedup-digest");
    let data = noise(6, 100_000);
    let chunks = chunks_of(&data);
    let entries: Vec<(u16, [u8; 32])> = chunks.iter().map(|c| (c.len as u16, c.digest)).collect();
    let list = encoded(&entries);
    let mut bad = data[..chunks[0].len as usize].to_vec();
    bad[7] ^= 1;
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: data.len() as u64,
                version: 0,
                name: "c/x",
            },
            Frame::Start { seq: 1, offset: 0 },
            Frame::Chunks {
                seq: 1,
                first: 0,
                list: ChunkList::new(&list).unwrap(),
            },
            Frame::Data {
                seq: 1,
                bytes: &bad,
            },
            Frame::End {
                seq: 1,
                sha256: sha(&data),
            },
            Frame::Finish,
        ],
        false,
    );
    let n = chunks.len();
    let mut bits = vec![0xffu8; n.div_ceil(8)];
    if !n.is_multiple_of(8) {
        bits[n / 8] = (1u8 << (n % 8)) - 1;
    }
    let all_lacking = format!(
        "{:?}",
        Frame::Lacks {
            seq: 1,
            first: 0,
            count: n as u32,
            bits: &bits,
        }
    );
    assert!(answers.contains(&all_lacking), "{answers:#?}");
    assert!(
        answers
            .iter()
            .any(|a| a.contains("DigestMismatch") && a.contains("does not match the digest")),
        "{answers:#?}"
    );
    nothing_visible(&f);
    assert!(f.store.partials().unwrap().is_empty());
}

#[test]
fn listed_sizes_that_lie_discard_the_copy_before_anything_is_looked_up() {
    let f = dedup_fixture("dedup-sizes");
    let d = [9u8; 32];
    let too_long = encoded(&[(MAX_CHUNK as u16 + 2, d)]);
    let past_the_end = encoded(&[(8000, d), (8000, d)]);
    let short_inside = encoded(&[(100, d), (5000, d)]);
    let cases: [(&[u8], u64); 3] = [
        (&too_long, 1 << 20),
        (&past_the_end, 10_000),
        (&short_inside, 5_100),
    ];
    let mut frames = Vec::new();
    for (i, (list, size)) in cases.iter().enumerate() {
        let seq = i as u32 + 1;
        frames.push(Frame::Offer {
            seq,
            size: *size,
            version: 0,
            name: ["c/a", "c/b", "c/c"][i],
        });
        frames.push(Frame::Start { seq, offset: 0 });
        frames.push(Frame::Chunks {
            seq,
            first: 0,
            list: ChunkList::new(list).unwrap(),
        });
        frames.push(Frame::End {
            seq,
            sha256: [0; 32],
        });
    }
    frames.push(Frame::Finish);
    let answers = against_receiver(&f, &frames, false);
    let failed = answers
        .iter()
        .filter(|a| a.contains("SizeMismatch") && a.contains("outside the chunk bounds"))
        .count();
    assert_eq!(failed, 3, "{answers:#?}");
    assert!(!answers.iter().any(|a| a.contains("Lacks")), "{answers:#?}");
    assert!(answers.last().unwrap().contains("Bye"), "{answers:#?}");
    nothing_visible(&f);
}

#[test]
fn data_past_the_asked_chunks_and_lists_far_ahead_of_their_data_are_refused() {
    let f = dedup_fixture("dedup-ahead");
    let data = noise(7, 5_000);
    let one = encoded(&[(5_000, chunks_of(&data)[0].digest)]);
    let mut more = data.clone();
    more.extend_from_slice(&[1; 1000]);
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: 5_000,
                version: 0,
                name: "c/x",
            },
            Frame::Start { seq: 1, offset: 0 },
            Frame::Chunks {
                seq: 1,
                first: 0,
                list: ChunkList::new(&one).unwrap(),
            },
            Frame::Data {
                seq: 1,
                bytes: &more,
            },
            Frame::End {
                seq: 1,
                sha256: sha(&data),
            },
            Frame::Finish,
        ],
        false,
    );
    assert!(
        answers
            .iter()
            .any(|a| a.contains("SizeMismatch") && a.contains("beyond the chunks")),
        "{answers:#?}"
    );
    nothing_visible(&f);
    // Lists that never get their data: the session ends once two lists are pending.
    let f = dedup_fixture("dedup-ahead2");
    let entries: Vec<(u16, [u8; 32])> = (0..MAX_LIST)
        .map(|i| (MIN_CHUNK as u16, sha(&(i as u64).to_be_bytes())))
        .collect();
    let list = encoded(&entries);
    let mut frames = vec![
        Frame::Offer {
            seq: 1,
            size: 3 * (MAX_LIST * MIN_CHUNK) as u64,
            version: 0,
            name: "c/y",
        },
        Frame::Start { seq: 1, offset: 0 },
    ];
    for k in 0..3u64 {
        frames.push(Frame::Chunks {
            seq: 1,
            first: k * MAX_LIST as u64,
            list: ChunkList::new(&list).unwrap(),
        });
    }
    let answers = against_receiver(&f, &frames, false);
    let lacks = answers.iter().filter(|a| a.contains("Lacks")).count();
    assert_eq!(lacks, 2, "{answers:#?}");
    assert!(
        answers
            .last()
            .is_some_and(|a| a.contains("Fatal") && a.contains("listed ahead")),
        "{answers:#?}"
    );
}

#[test]
fn chunk_lists_are_refused_when_the_session_did_not_agree_them() {
    let f = fixture("dedup-off");
    let list = encoded(&[(100, [1; 32])]);
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: 100,
                version: 0,
                name: "c/x",
            },
            Frame::Start { seq: 1, offset: 0 },
            Frame::Chunks {
                seq: 1,
                first: 0,
                list: ChunkList::new(&list).unwrap(),
            },
        ],
        false,
    );
    assert!(
        answers
            .last()
            .is_some_and(|a| a.contains("Protocol") && a.contains("not agreed")),
        "{answers:#?}"
    );
    assert!(!answers.iter().any(|a| a.contains("Lacks")), "{answers:#?}");
    assert!(f.store.received(&f.source.uuid).unwrap().is_empty());
    assert!(!received_path(&f, "c/x").exists());
}

#[test]
fn a_source_listing_held_chunks_for_other_bytes_cannot_commit_them() {
    let f = dedup_fixture("dedup-lie");
    let v1 = noise(8, 2 << 20);
    put(&f, "vm/a.img", &v1);
    send_one(&f, "vm/a.img");
    let chunks = chunks_of(&v1);
    // Every chunk held, but the end claims the digest of other bytes.
    let mut entries: Vec<(u16, [u8; 32])> =
        chunks.iter().map(|c| (c.len as u16, c.digest)).collect();
    // Chunks 3 and 4 cut elsewhere: other bytes, not held, sent (and checked) instead.
    let (a, b, end) = (
        chunks[3].offset as usize,
        chunks[3].end() as usize + 2,
        chunks[4].end() as usize,
    );
    entries[3] = ((b - a) as u16, sha(&v1[a..b]));
    entries[4] = ((end - b) as u16, sha(&v1[b..end]));
    let list = encoded(&entries);
    let answers = against_receiver(
        &f,
        &[
            Frame::Offer {
                seq: 1,
                size: v1.len() as u64,
                version: 0,
                name: "vm/fake.img",
            },
            Frame::Start { seq: 1, offset: 0 },
            Frame::Chunks {
                seq: 1,
                first: 0,
                list: ChunkList::new(&list).unwrap(),
            },
            Frame::Data {
                seq: 1,
                bytes: &v1[chunks[3].offset as usize..chunks[5].offset as usize],
            },
            Frame::End {
                seq: 1,
                sha256: sha(b"something else"),
            },
            Frame::Finish,
        ],
        false,
    );
    let lacks = answers.iter().find(|a| a.contains("Lacks")).unwrap();
    // Chunks 3 and 4 (bits 3 and 4 of the first byte) are asked for, no other.
    assert!(lacks.contains("bits: [24, 0,"), "{lacks}");
    assert!(
        answers
            .iter()
            .any(|a| a.contains("DigestMismatch") && a.contains("SHA-256 mismatch")),
        "{answers:#?}"
    );
    assert!(f
        .store
        .received_one(&f.source.uuid, "vm/fake.img")
        .unwrap()
        .is_none());
    assert!(!received_path(&f, "vm/fake.img").exists());
}

#[test]
fn copies_received_whole_are_indexed_by_the_catch_up_and_then_lend_their_chunks() {
    let mut f = dedup_fixture("dedup-catch-up");
    f.chunks = false;
    let v1 = noise(9, 4 << 20);
    let size = v1.len() as u64;
    put(&f, "vm/a.img", &v1);
    assert_eq!(send_one(&f, "vm/a.img"), size);
    assert_eq!(f.store.chunk_counts().unwrap().entries, 0, "sent whole");
    let storages = [f.source.storage.clone()];
    let stop = AtomicBool::new(false);
    let pass = index::catch_up(&f.store, &storages, true, &stop).unwrap();
    assert_eq!((pass.indexed, pass.pending), (1, 0), "{pass:?}");
    let entries = f.store.chunk_counts().unwrap().entries;
    assert!(entries > 200, "{entries}");
    // Nothing changed: the next pass has nothing to do.
    let again = index::catch_up(&f.store, &storages, true, &stop).unwrap();
    assert_eq!(again, index::CatchUp::default());
    f.chunks = true;
    let mut v2 = v1.clone();
    v2[1_000_000..1_020_000].copy_from_slice(&noise(10, 20_000));
    put(&f, "vm/b.img", &v2);
    let sent = send_one(&f, "vm/b.img");
    assert!(sent >= 20_000 && sent < size / 20, "{sent}");
}

#[test]
fn a_deduplicated_transfer_cut_mid_assembly_resumes_in_chunks_and_verifies() {
    let f = dedup_fixture("dedup-resume");
    let v1 = noise(20, 8 << 20);
    let size = v1.len() as u64;
    put(&f, "vm/a.img", &v1);
    send_one(&f, "vm/a.img");
    // Day two changes 40 KB in each of four places; the first session breaks after
    // 100 KB of wire bytes, part way through the file.
    let mut v2 = v1.clone();
    for at in [1_000_000, 3_000_000, 5_000_000, 7_000_000] {
        v2[at..at + 40_000].copy_from_slice(&noise(at as u64, 40_000));
    }
    put(&f, "vm/b.img", &v2);
    let mut first = MemFeed::of(&["vm/b.img"]);
    let (result, _) = session(&f, &mut first, Some(100_000));
    assert!(result.is_err());
    assert!(
        matches!(
            first.results[0].1,
            crate::replication::queue::Attempt::Interrupted(_)
        ),
        "{:?}",
        first.results
    );
    let partial = f
        .store
        .partial(&f.source.uuid, "vm/b.img")
        .unwrap()
        .unwrap();
    assert!(partial.offset > 0 && partial.offset < size, "{partial:?}");
    assert!(!received_path(&f, "vm/b.img").exists());
    let mut second = MemFeed::of(&["vm/b.img"]);
    let (result, rx) = session(&f, &mut second, None);
    let s = result.unwrap();
    assert_eq!((s.done, rx.committed), (1, 1), "{:?}", second.results);
    assert_eq!(second.started, vec![(1, partial.offset)]);
    assert_eq!(std::fs::read(received_path(&f, "vm/b.img")).unwrap(), v2);
    // The resumed part went in chunks too: far less than what was left.
    assert!(
        s.bytes_sent < (size - partial.offset) / 4,
        "{} sent for {} left",
        s.bytes_sent,
        size - partial.offset
    );
}

/// The first 16 bytes of a digest, as the index keeps it.
fn prefix(d: &[u8; 32]) -> DigestPrefix {
    let mut p = [0u8; 16];
    p.copy_from_slice(&d[..16]);
    p
}

#[test]
fn day_two_from_two_held_copies_and_new_bytes_is_exact_and_indexed_from_its_lists() {
    let f = dedup_fixture("dedup-runs");
    let a = noise(30, 3 << 20);
    let b = noise(31, 3 << 20);
    put(&f, "vm/a.img", &a);
    send_one(&f, "vm/a.img");
    put(&f, "vm/b.img", &b);
    send_one(&f, "vm/b.img");
    // Held runs switch between the two copies, with new bytes between them.
    let mut v = a[..1 << 20].to_vec();
    v.extend_from_slice(&b[1 << 20..2 << 20]);
    v.extend_from_slice(&noise(32, 30_000));
    v.extend_from_slice(&a[2 << 20..]);
    v.extend_from_slice(&b[..500_000]);
    put(&f, "vm/c.img", &v);
    // send_one checks the copy byte for byte and its recorded SHA-256.
    let sent = send_one(&f, "vm/c.img");
    let size = v.len() as u64;
    assert!(sent >= 30_000 && sent < size / 10, "{sent} of {size}");
    // Its index is the source's own cuts, taken from the lists at the commit: every
    // chunk at its offset in the new copy, and the index job has nothing to re-read.
    let id = f
        .store
        .chunk_names(&f.source.uuid, "vm/c.img")
        .unwrap()
        .ready
        .expect("indexed at its commit");
    let chunks = chunks_of(&v);
    let digests: Vec<DigestPrefix> = chunks.iter().map(|c| prefix(&c.digest)).collect();
    let owner = crate::store::owner_of(&f.source.uuid);
    let found = f.store.chunk_lookups(&digests, Some(&owner), 1).unwrap();
    for (c, at) in chunks.iter().zip(found) {
        let loc = at.first().map(|(_, loc)| *loc);
        let want = ChunkLoc {
            file: id,
            offset: c.offset,
            len: c.len,
        };
        assert_eq!(loc, Some(want), "chunk at {}", c.offset);
    }
    let storages = [f.source.storage.clone()];
    let pass = index::catch_up(&f.store, &storages, false, &AtomicBool::new(false)).unwrap();
    assert_eq!(pass, index::CatchUp::default(), "nothing left to index");
}

#[test]
fn a_held_chunk_whose_bytes_miss_its_digest_fails_the_copy_and_the_next_try_sends_it() {
    let f = dedup_fixture("dedup-held-lie");
    let v1 = noise(33, 3 << 20);
    put(&f, "vm/a.img", &v1);
    send_one(&f, "vm/a.img");
    // The index points chunk 40's digest at chunk 41's bytes (the file itself unchanged,
    // so only reading the chunk back and hashing it can tell).
    let held = f
        .store
        .chunk_names(&f.source.uuid, "vm/a.img")
        .unwrap()
        .ready
        .unwrap();
    let chunks = chunks_of(&v1);
    let (c, other) = (&chunks[40], &chunks[41]);
    assert_eq!(c.end(), other.offset);
    let owner = crate::store::owner_of(&f.source.uuid);
    f.store
        .write(|tx| {
            let wrong = crate::store::StagedChunk {
                offset: other.offset,
                len: c.len,
                digest: prefix(&c.digest),
            };
            tx.stage_chunks(held, &[wrong])?;
            tx.publish_chunks(held, &owner, 1).map(|_| ())
        })
        .unwrap();
    // Day two: a few bytes rewritten before chunk 40, which is listed as held.
    let mut v2 = v1.clone();
    v2[100_000..100_010].copy_from_slice(b"0123456789");
    put(&f, "vm/b.img", &v2);
    let mut feed = MemFeed::of(&["vm/b.img"]);
    let (result, _) = session(&f, &mut feed, None);
    result.unwrap();
    assert!(!done(&feed.results[0].1), "{:?}", feed.results);
    assert!(
        format!("{:?}", feed.results[0].1).contains("changed while the copy was assembled"),
        "{:?}",
        feed.results
    );
    assert!(!received_path(&f, "vm/b.img").exists());
    assert!(f
        .store
        .received_one(&f.source.uuid, "vm/b.img")
        .unwrap()
        .is_none());
    // The copy that lent the wrong bytes is out of the index: the next try gets them
    // from the source, and the copy verifies.
    assert!(f.store.chunk_file(held).unwrap().is_none());
    let sent = send_one(&f, "vm/b.img");
    assert!(sent > 0, "{sent}");
}
