//! Deduplicated restore (SPEC 20, section 18 in the other direction): only what the source
//! lacks crosses the link.
//!
//! The source cuts the files it holds that likely share bytes with the copy it restores
//! (the same client's other files in the storage restored into: names most like the
//! copy's first, the newest next; bounded in bytes, entries and time) into the protocol's
//! chunks (`chunker`) and sends the first 8 bytes of each chunk's SHA-256: the `have`
//! list. The target cuts its copy from the asked offset on and answers records: a chunk
//! whose digest prefix the source listed goes as the first 16 bytes of its SHA-256 (as the
//! chunk index keeps them) and its length (`HELD`), every other chunk as its bytes
//! (`DATA`). The source rebuilds the copy in order: a held chunk is read from its local
//! file and its SHA-256 checked against those 16 bytes before use; a
//! chunk it cannot find or that does not match, or a record that breaks the format,
//! switches the rest of the pull to the whole bytes from that offset. The whole-file
//! SHA-256 still gates the commit (`restore::pull`): a target that lies in its records gets
//! nothing committed.
//!
//! A record is a tag byte and a 4-byte big-endian length: `DATA` then that many bytes
//! (1 ..= [`MAX_CHUNK`]), `HELD` then the first 16 bytes of the chunk's SHA-256
//! (1 ..= [`MAX_CHUNK`]).
//! The stream ends after the copy's last chunk.
//!
//! Plain code over `Read`s; files only through `fsx`.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use super::chunker::{sha256, Chunker, Params, MAX_CHUNK, MIN_CHUNK};
use crate::fsx::{self, ReadFile};

const DATA: u8 = 0;
const HELD: u8 = 1;
/// Bytes of a chunk's SHA-256 a `HELD` record carries.
const HELD_DIGEST: usize = 16;
/// Digest prefixes in a `have` list at most (2 MiB of request: it must arrive within the
/// tunnel's `head_timeout`, 10 s by default, so across links down to about 2 Mbit/s).
pub const MAX_HAVE: usize = 1 << 18;
/// Bytes of a `have` list entry.
pub const HAVE_BYTES: usize = 8;
/// Smallest copy restored by chunks (a smaller one goes whole).
pub const MIN_SIZE: u64 = 1024 * 1024;
/// The longest a source cuts its own files before a pull.
const SCAN_SECONDS: u64 = 120;

fn prefix(digest: &[u8]) -> u64 {
    let mut p = [0u8; HAVE_BYTES];
    p.copy_from_slice(&digest[..HAVE_BYTES]);
    u64::from_be_bytes(p)
}

/// Target side: a `have` list's prefixes, sorted, or None when it is not whole entries.
pub fn parse_have(bytes: &[u8]) -> Option<Vec<u64>> {
    if !bytes.len().is_multiple_of(HAVE_BYTES) || bytes.len() / HAVE_BYTES > MAX_HAVE {
        return None;
    }
    let mut have: Vec<u64> = bytes
        .chunks_exact(HAVE_BYTES)
        .map(|c| {
            let mut p = [0u8; HAVE_BYTES];
            p.copy_from_slice(c);
            u64::from_be_bytes(p)
        })
        .collect();
    have.sort_unstable();
    Some(have)
}

/// Target side: a held copy, read from an offset, as records (a `Read` the tunnel streams).
pub struct Records<R> {
    file: R,
    chunker: Chunker,
    have: Vec<u64>,
    chunk: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
}

impl<R: Read> Records<R> {
    /// `file` is the copy from `offset` on.
    pub fn new(file: R, offset: u64, have: Vec<u64>) -> Records<R> {
        Records {
            file,
            chunker: Chunker::new(Params::standard(), offset),
            have,
            chunk: Vec::with_capacity(MAX_CHUNK),
            out: Vec::with_capacity(MAX_CHUNK + 5),
            pos: 0,
        }
    }
}

impl<R: Read> Read for Records<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.out.len() {
            self.out.clear();
            self.pos = 0;
            let chunk = &mut self.chunk;
            chunk.clear();
            let Some(c) = self
                .chunker
                .next_chunk(&mut self.file, |b| chunk.extend_from_slice(b))?
            else {
                return Ok(0);
            };
            let held = self.have.binary_search(&prefix(&c.digest)).is_ok();
            self.out.push(if held { HELD } else { DATA });
            self.out.extend_from_slice(&c.len.to_be_bytes());
            self.out.extend_from_slice(if held {
                &c.digest[..HELD_DIGEST]
            } else {
                &self.chunk
            });
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Source side: where its own files hold which chunks.
#[derive(Default)]
pub struct LocalChunks {
    files: Vec<PathBuf>,
    /// (digest prefix, file, offset, length), in the order cut.
    entries: Vec<(u64, u32, u64, u32)>,
    /// For the lookup, sorted: each entry's prefix's first 40 bits, then its index in
    /// `entries` (24 bits: [`MAX_HAVE`] is less).
    keys: Vec<u64>,
}

/// Files cut at most for one pull.
const MAX_FILES: usize = 256;

/// Bytes of the longest common start of two names.
fn likeness(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

impl LocalChunks {
    /// Cuts the files in `dir` (one client's directory of the storage restored into) that
    /// most likely share bytes with `file`, a copy of `size` bytes: regular files but
    /// partial and hidden ones, names most like `file`'s first, then the newest; at most
    /// twice `size` (and 64 MiB to 16 GiB) read, [`MAX_HAVE`] chunks, [`MAX_FILES`] files,
    /// two minutes.
    pub fn scan(dir: &Path, file: &str, size: u64, stop: &AtomicBool) -> LocalChunks {
        let mut found: Vec<(usize, i64, String)> = Vec::new();
        for e in fsx::entries(dir).into_iter().flatten().flatten() {
            if let (Ok(st), Ok(name)) = (e.stat, e.name.into_string()) {
                if st.is_file && !name.starts_with('.') && st.len >= MIN_CHUNK as u64 {
                    found.push((likeness(&name, file), st.mtime.0, name));
                }
            }
        }
        let mut budget = size.saturating_mul(2).clamp(64 << 20, 16 << 30);
        let deadline = Instant::now() + std::time::Duration::from_secs(SCAN_SECONDS);
        let mut local = LocalChunks::default();
        let full = |l: &LocalChunks, budget: u64| {
            budget == 0
                || l.entries.len() >= MAX_HAVE
                || Instant::now() > deadline
                || stop.load(Ordering::Relaxed)
        };
        while let Some(best) = (0..found.len()).max_by_key(|&i| (found[i].0, found[i].1)) {
            if local.files.len() >= MAX_FILES || full(&local, budget) {
                break;
            }
            let path = dir.join(found.swap_remove(best).2);
            let Ok(mut f) = fsx::open_read(&path) else {
                continue;
            };
            let index = local.files.len() as u32;
            let mut chunker = Chunker::new(Params::standard(), 0);
            while let Ok(Some(c)) = chunker.next_chunk(&mut f, |_| {}) {
                let p = prefix(&c.digest);
                local.keys.push(p >> 24 << 24 | local.entries.len() as u64);
                local.entries.push((p, index, c.offset, c.len));
                budget = budget.saturating_sub(u64::from(c.len));
                if local.entries.len() % 1024 == 0 && full(&local, budget) {
                    break;
                }
            }
            local.files.push(path);
        }
        local.keys.sort_unstable();
        local
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `have` list: each chunk's digest prefix, 8 bytes big-endian.
    pub fn have(&self) -> Vec<u8> {
        self.entries
            .iter()
            .flat_map(|e| e.0.to_be_bytes())
            .collect()
    }

    /// Reads the chunk whose SHA-256 starts with `digest`, of `len` bytes, from its local
    /// file into `out`: false when none is known or the bytes there are not that chunk
    /// (any more).
    fn read(
        &self,
        open: &mut Option<(u32, ReadFile)>,
        digest: &[u8; HELD_DIGEST],
        len: u32,
        out: &mut Vec<u8>,
    ) -> bool {
        let p = prefix(digest);
        let top = p >> 24;
        let from = self.keys.partition_point(|k| k >> 24 < top);
        let Some(&(_, file, offset, _)) = self.keys[from..]
            .iter()
            .take_while(|k| *k >> 24 == top)
            .filter_map(|k| self.entries.get((k & 0xff_ffff) as usize))
            .find(|e| e.0 == p && e.3 == len)
        else {
            return false;
        };
        if open.as_ref().is_none_or(|(f, _)| *f != file) {
            *open = self
                .files
                .get(file as usize)
                .and_then(|p| fsx::open_read(p).ok())
                .map(|f| (file, f));
        }
        let Some((_, f)) = open.as_ref() else {
            return false;
        };
        out.resize(len as usize, 0);
        f.read_exact_at(out, offset).is_ok() && sha256(out)[..HELD_DIGEST] == *digest
    }
}

/// Opens the whole bytes of the copy from an offset (the fallback).
pub type Whole<'a> = dyn FnMut(u64) -> io::Result<Box<dyn Read + 'a>> + 'a;

/// Counts what a reader hands out into `wire`.
struct Counted<'a, R> {
    inner: R,
    wire: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.wire.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Source side: the copy's bytes from an offset, rebuilt from the target's records and
/// the local chunks; every byte that came over the link is counted in `wire`.
pub struct Rebuilt<'a, R> {
    records: Counted<'a, R>,
    local: LocalChunks,
    open: Option<(u32, ReadFile)>,
    /// A held chunk's bytes, handed out from `pos`.
    held: Vec<u8>,
    pos: usize,
    /// Bytes of the current `DATA` record still to hand out.
    data_left: u64,
    /// The copy's offset of the next byte handed out.
    at: u64,
    whole: Option<Counted<'a, Box<dyn Read + 'a>>>,
    open_whole: Box<Whole<'a>>,
}

impl<'a, R: Read> Rebuilt<'a, R> {
    pub fn new(
        records: R,
        offset: u64,
        local: LocalChunks,
        wire: &'a AtomicU64,
        open_whole: Box<Whole<'a>>,
    ) -> Rebuilt<'a, R> {
        Rebuilt {
            records: Counted {
                inner: records,
                wire,
            },
            local,
            open: None,
            held: Vec::new(),
            pos: 0,
            data_left: 0,
            at: offset,
            whole: None,
            open_whole,
        }
    }

    /// Reads one record's head and sets up what it brings: false when the records break
    /// the format or name a chunk this side cannot supply; None at their end.
    fn next_record(&mut self) -> io::Result<Option<bool>> {
        let mut head = [0u8; 5];
        let n = read_full(&mut self.records, &mut head)?;
        if n == 0 {
            return Ok(None);
        }
        let mut l = [0u8; 4];
        l.copy_from_slice(&head[1..]);
        let len = u32::from_be_bytes(l);
        if n < head.len() || len == 0 || len as usize > MAX_CHUNK {
            return Ok(Some(false));
        }
        match head[0] {
            DATA => self.data_left = u64::from(len),
            HELD => {
                let mut digest = [0u8; HELD_DIGEST];
                if read_full(&mut self.records, &mut digest)? < digest.len() {
                    return Ok(Some(false));
                }
                self.pos = 0;
                if !self
                    .local
                    .read(&mut self.open, &digest, len, &mut self.held)
                {
                    self.held.clear();
                    return Ok(Some(false));
                }
            }
            _ => return Ok(Some(false)),
        }
        Ok(Some(true))
    }
}

/// Reads until `buf` is full or the reader ends: how many bytes came.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Read for Rebuilt<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = if let Some(whole) = self.whole.as_mut() {
                whole.read(buf)?
            } else if self.pos < self.held.len() {
                let n = buf.len().min(self.held.len() - self.pos);
                buf[..n].copy_from_slice(&self.held[self.pos..self.pos + n]);
                self.pos += n;
                n
            } else if self.data_left > 0 {
                let want = buf
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                let n = self.records.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the target's chunk records ended inside a chunk",
                    ));
                }
                self.data_left -= n as u64;
                n
            } else {
                match self.next_record()? {
                    None => return Ok(0),
                    Some(true) => continue,
                    Some(false) => {
                        log::info!(
                            "restore: the target's chunk records cannot be used from byte {}; the rest comes whole",
                            self.at
                        );
                        let inner = (self.open_whole)(self.at)?;
                        self.whole = Some(Counted {
                            inner,
                            wire: self.records.wire,
                        });
                        continue;
                    }
                }
            };
            self.at += n as u64;
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::chunker::tests::noise;
    use crate::replication::restore::{pull, PullError, Pulled};
    use crate::store::RestoreItem;
    use crate::wire::hex;
    use std::cell::RefCell;

    /// v1, and v2: v1 with 16 KiB rewritten in two places and 50 bytes inserted.
    fn versions() -> (Vec<u8>, Vec<u8>) {
        let v1 = noise(1, 4 << 20);
        let mut v2 = v1.clone();
        v2[1_000_000..1_008_192].copy_from_slice(&noise(2, 8192));
        v2[3_000_000..3_008_192].copy_from_slice(&noise(3, 8192));
        v2.splice(2_000_000..2_000_000, noise(4, 50));
        (v1, v2)
    }

    /// A storage's client directory holding `files`.
    fn client_dir(name: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "replgate-restore-chunks-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("c")).unwrap();
        for (f, bytes) in files {
            std::fs::write(d.join("c").join(f), bytes).unwrap();
        }
        d
    }

    fn item(bytes: &[u8]) -> RestoreItem {
        RestoreItem {
            id: 1,
            backup: "c/v2".into(),
            size: bytes.len() as u64,
            sha256: hex::encode(&sha256(bytes)),
            ..RestoreItem::default()
        }
    }

    /// Pulls `v2` into `root` from `records` (given the `have` list and the offset), with
    /// the whole bytes of `v2` as the fallback; the offsets the fallback was opened at.
    fn restore(
        root: &Path,
        v2: &[u8],
        records: &dyn Fn(&[u8], u64) -> Vec<u8>,
        wire: &AtomicU64,
    ) -> (Result<Pulled, PullError>, Vec<u64>) {
        restore_cut(root, v2, records, wire, usize::MAX)
    }

    /// Gives its bytes up to `cut`, then fails as a cut connection does.
    struct Cut(io::Cursor<Vec<u8>>, usize);

    impl Read for Cut {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let left = self.1.saturating_sub(self.0.position() as usize);
            if left == 0 {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"));
            }
            let n = buf.len().min(left);
            self.0.read(&mut buf[..n])
        }
    }

    /// [`restore`] with the records cut after `cut` bytes.
    fn restore_cut(
        root: &Path,
        v2: &[u8],
        records: &dyn Fn(&[u8], u64) -> Vec<u8>,
        wire: &AtomicU64,
        cut: usize,
    ) -> (Result<Pulled, PullError>, Vec<u64>) {
        let wholes = RefCell::new(Vec::new());
        let r = pull(
            root,
            &item(v2),
            &AtomicBool::new(false),
            &|_| {},
            &mut |offset| {
                let local = LocalChunks::scan(
                    &root.join("c"),
                    "v2",
                    v2.len() as u64,
                    &AtomicBool::new(false),
                );
                let answer = records(&local.have(), offset);
                let wholes = &wholes;
                Ok(Box::new(Rebuilt::new(
                    Cut(io::Cursor::new(answer), cut),
                    offset,
                    local,
                    wire,
                    Box::new(move |at| {
                        wholes.borrow_mut().push(at);
                        Ok(Box::new(io::Cursor::new(v2[at as usize..].to_vec())))
                    }),
                )))
            },
        );
        (r, wholes.into_inner())
    }

    fn honest(v2: &[u8]) -> impl Fn(&[u8], u64) -> Vec<u8> + '_ {
        move |have, offset| {
            let mut out = Vec::new();
            Records::new(&v2[offset as usize..], offset, parse_have(have).unwrap())
                .read_to_end(&mut out)
                .unwrap();
            out
        }
    }

    #[test]
    fn an_older_version_held_locally_leaves_only_the_changes_to_cross() {
        let (v1, v2) = versions();
        let d = client_dir(
            "older",
            &[("v1", &v1), (".v9.restore", &v2[..]), ("tiny", b"x")],
        );
        let wire = AtomicU64::new(0);
        let (r, wholes) = restore(&d, &v2, &honest(&v2), &wire);
        assert!(matches!(r, Ok(Pulled::Restored { .. })), "{r:?}");
        assert!(wholes.is_empty(), "no fallback: {wholes:?}");
        assert_eq!(std::fs::read(d.join("c/v2")).unwrap(), v2);
        let wire = wire.load(Ordering::Relaxed);
        // Three changed places, a few chunks each, and 21 bytes a held chunk.
        assert!(
            wire < v2.len() as u64 / 20,
            "{wire} bytes crossed for {}",
            v2.len()
        );
        assert!(wire > 3 * 8192, "{wire}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_cut_pull_by_chunks_resumes_from_the_partial_copy() {
        let (v1, v2) = versions();
        let d = client_dir("cut", &[("v1", &v1)]);
        let wire = AtomicU64::new(0);
        let (r, _) = restore_cut(&d, &v2, &honest(&v2), &wire, 40_000);
        assert!(matches!(r, Err(PullError::Cut(_))), "{r:?}");
        assert!(!d.join("c/v2").exists(), "nothing committed");
        let kept = std::fs::metadata(d.join("c/.v2.restore")).unwrap().len();
        assert!(kept > 1_000_000, "{kept}: held chunks came from v1");
        let offsets = RefCell::new(Vec::new());
        let resumed = |have: &[u8], offset: u64| {
            offsets.borrow_mut().push(offset);
            honest(&v2)(have, offset)
        };
        let (r, wholes) = restore(&d, &v2, &resumed, &wire);
        assert!(matches!(r, Ok(Pulled::Restored { .. })), "{r:?}");
        assert!(wholes.is_empty());
        assert_eq!(offsets.into_inner(), vec![kept], "resumed, not restarted");
        assert_eq!(std::fs::read(d.join("c/v2")).unwrap(), v2);
        assert!(!d.join("c/.v2.restore").exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_chunk_this_side_cannot_supply_sends_the_rest_whole_and_a_lying_list_commits_nothing() {
        let (v1, v2) = versions();
        let d = client_dir("lies", &[("v1", &v1)]);
        // A digest the source never listed, after 100 honest bytes.
        let unknown = |_: &[u8], _: u64| {
            let mut out = vec![DATA, 0, 0, 0, 100];
            out.extend_from_slice(&v2[..100]);
            out.push(HELD);
            out.extend_from_slice(&8192u32.to_be_bytes());
            out.extend_from_slice(&[7u8; HELD_DIGEST]);
            out
        };
        let wire = AtomicU64::new(0);
        let (r, wholes) = restore(&d, &v2, &unknown, &wire);
        assert!(matches!(r, Ok(Pulled::Restored { .. })), "{r:?}");
        assert_eq!(wholes, vec![100]);
        assert_eq!(std::fs::read(d.join("c/v2")).unwrap(), v2);
        std::fs::remove_file(d.join("c/v2")).unwrap();
        // Records that break the format: an unknown tag, an empty or oversized chunk, a
        // record cut inside its head: each sends the rest whole, from where it stood.
        for bad in [
            vec![9, 0, 0, 0, 1, 0],
            vec![DATA, 0, 0, 0, 0],
            vec![HELD, 0, 1, 0, 1],
            vec![DATA, 0, 0],
        ] {
            let (r, wholes) = restore(&d, &v2, &|_, _| bad.clone(), &wire);
            assert!(matches!(r, Ok(Pulled::Restored { .. })), "{bad:?}: {r:?}");
            assert_eq!(wholes, vec![0], "{bad:?}");
            std::fs::remove_file(d.join("c/v2")).unwrap();
        }
        // A source's `have` list that is not whole entries, or too long, is refused.
        assert!(parse_have(&[0; 7]).is_none());
        assert!(parse_have(&vec![0; HAVE_BYTES * (MAX_HAVE + 1)]).is_none());
        assert_eq!(
            parse_have(&[0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
            Some(vec![1, 2])
        );
        // A list of chunks the source does hold, in the wrong order: every chunk checks
        // out, the whole file does not, and nothing is committed.
        let shuffled = |have: &[u8], offset: u64| {
            let mut recs: Vec<Vec<u8>> = Vec::new();
            let mut c = Chunker::new(Params::standard(), offset);
            let mut r = &v2[offset as usize..];
            let mut bytes = Vec::new();
            let have = parse_have(have).unwrap();
            while let Some(ch) = c.next_chunk(&mut r, |b| bytes = b.to_vec()).unwrap() {
                let mut rec = Vec::new();
                if have.binary_search(&prefix(&ch.digest)).is_ok() {
                    rec.push(HELD);
                    rec.extend_from_slice(&ch.len.to_be_bytes());
                    rec.extend_from_slice(&ch.digest[..HELD_DIGEST]);
                } else {
                    rec.push(DATA);
                    rec.extend_from_slice(&ch.len.to_be_bytes());
                    rec.extend_from_slice(&bytes);
                }
                recs.push(rec);
            }
            recs.swap(3, 4);
            recs.concat()
        };
        let (r, wholes) = restore(&d, &v2, &shuffled, &wire);
        assert!(matches!(r, Err(PullError::Digest)), "{r:?}");
        assert!(wholes.is_empty());
        assert_eq!(
            std::fs::read_dir(d.join("c")).unwrap().count(),
            1,
            "only v1"
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_local_file_that_changed_after_the_scan_is_not_trusted() {
        let (v1, v2) = versions();
        let d = client_dir("changed", &[("v1", &v1)]);
        let v1_path = d.join("c/v1");
        let changing = |have: &[u8], offset: u64| {
            // The local file is rewritten between the scan and the use of its chunks.
            std::fs::write(&v1_path, noise(9, v1.len())).unwrap();
            honest(&v2)(have, offset)
        };
        let wire = AtomicU64::new(0);
        let (r, wholes) = restore(&d, &v2, &changing, &wire);
        assert!(matches!(r, Ok(Pulled::Restored { .. })), "{r:?}");
        assert_eq!(wholes.len(), 1, "the first held chunk fails its check");
        assert_eq!(std::fs::read(d.join("c/v2")).unwrap(), v2);
        std::fs::remove_dir_all(d).unwrap();
    }
}
