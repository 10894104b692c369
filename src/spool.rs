//! Spool: turns what the store committed into files a source can poll, and serves them.
//! Never decides a status: every byte is rendered from a database record, so startup can
//! rebuild the whole spool and compare it byte for byte.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::fsx;
use crate::store::{RequestRecord, RequestStatus, Store, StoreError};
use crate::sync::{self, lock};
use crate::wire::protocol::{SpoolFile, SpoolStatus, SpoolToken, CA_FILE, CERT_FILE, STATUS_FILE};

/// Spool files are small; anything larger was not written by us.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Files the read cache keeps (about 1 KB each at most); when full it starts over.
const READ_CACHE_ENTRIES: usize = 1_024;

#[derive(Debug)]
pub enum SpoolError {
    Io {
        path: PathBuf,
        error: io::Error,
    },
    Store(StoreError),
    /// An accepted request whose certificate row is missing: the database is damaged.
    MissingCertificate {
        request: u64,
    },
    /// A status that does not encode (a bug); nothing is written rather than an empty file.
    Encode {
        request: u64,
        source: serde_json::Error,
    },
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Io { path, .. } => write!(f, "spool {}", path.display()),
            SpoolError::Store(e) => write!(f, "{e}"),
            SpoolError::MissingCertificate { request } => {
                write!(
                    f,
                    "accepted request {request} has no certificate in the database"
                )
            }
            SpoolError::Encode { request, .. } => {
                write!(f, "spool status of request {request} does not encode")
            }
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { error, .. } => Some(error),
            // Shown as the store error itself (see Display), so its cause comes next.
            SpoolError::Store(e) => e.source(),
            SpoolError::Encode { source, .. } => Some(source),
            SpoolError::MissingCertificate { .. } => None,
        }
    }
}

impl From<StoreError> for SpoolError {
    fn from(e: StoreError) -> Self {
        SpoolError::Store(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Removes a directory entry (a whole directory, or a file), durably.
fn remove_entry(entry: &std::fs::DirEntry) -> Result<(), SpoolError> {
    let path = entry.path();
    let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
    let removed = if is_dir {
        fsx::remove_dir_all_durable(&path)
    } else {
        fsx::remove_file_durable(&path)
    };
    removed.map_err(io_err(&path))
}

/// What reconcile changed, for the start-up log and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repair {
    pub files_written: u64,
    pub files_removed: u64,
    pub dirs_removed: u64,
}

pub struct Spool {
    root: PathBuf,
    /// `root`, open, so that each read looks only at `<token>` and `<token>/<file>`.
    root_dir: fsx::Dir,
    /// What an accepted request's `ca.pem` holds: the CA in force, and during a CA
    /// rollover the new CA and its cross-certificate (`CaSet::bundle_pem`).
    ca_pem: RwLock<String>,
    /// `host:port` of the tunnel, told to accepted sources.
    tunnel: String,
    retry_after: u64,
    /// Serializes writers, each of which renders the request as the database holds it at
    /// that moment: whoever writes last writes the newest state.
    writing: Mutex<()>,
    /// Requests whose spool could not be written after their commit; retried by the sweep.
    dirty: Mutex<BTreeSet<u64>>,
    read_cache: ReadCache,
}

/// One spool file as served: its bytes and its entity tag (a quoted hex string of the
/// first 128 bits of the bytes' SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub bytes: Vec<u8>,
    pub etag: String,
}

impl Served {
    fn new(bytes: Vec<u8>) -> Served {
        let etag = format!("\"{}\"", &crate::ca::sha256_hex(&bytes)[..32]);
        Served { bytes, etag }
    }
}

/// Identifies one version of a file: every spool update renames a new file into place,
/// which gives a new inode and a new change time, so an older file's stamp never matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(stat: &fsx::Stat) -> FileStamp {
        FileStamp {
            dev: stat.dev,
            ino: stat.ino,
            len: stat.len,
            mtime: stat.mtime,
            ctime: stat.ctime,
        }
    }
}

/// Files served recently, each with the stamp it had when it was read. A source polls
/// `status.json` over and over; a hit costs two `lstat`s (the token directory and the
/// file, which are checked on every request anyway) instead of open, fstat, reads, close
/// and a hash. Never serves anything but what the path holds at the time of the `lstat`.
/// Keyed by the token's bytes and the file, so a lookup hashes 33 bytes; many readers
/// (the front's connection threads) look up at once.
struct ReadCache {
    entries: RwLock<HashMap<CacheKey, (FileStamp, Arc<Served>)>>,
}

/// A parsed token (always 32 ASCII bytes) and one of the served names.
type CacheKey = ([u8; SpoolToken::LEN], SpoolFile);

type CacheMap = HashMap<CacheKey, (FileStamp, Arc<Served>)>;

impl ReadCache {
    fn key(token: &SpoolToken, file: SpoolFile) -> CacheKey {
        let mut bytes = [0u8; SpoolToken::LEN];
        // A parsed token is exactly LEN bytes.
        bytes.copy_from_slice(&token.as_str().as_bytes()[..SpoolToken::LEN]);
        (bytes, file)
    }

    /// Every critical section is one lookup, insert or clear: a panic elsewhere leaves the
    /// map consistent.
    fn read(&self) -> RwLockReadGuard<'_, CacheMap> {
        sync::read(&self.entries)
    }

    fn write(&self) -> RwLockWriteGuard<'_, CacheMap> {
        sync::write(&self.entries)
    }
}

impl Spool {
    pub fn open(
        root: PathBuf,
        ca_pem: String,
        tunnel: String,
        retry_after: u64,
    ) -> Result<Spool, SpoolError> {
        fsx::ensure_private_dir(&root).map_err(io_err(&root))?;
        let root_dir = fsx::Dir::open(&root).map_err(io_err(&root))?;
        Ok(Spool {
            root,
            root_dir,
            ca_pem: RwLock::new(ca_pem),
            tunnel,
            retry_after,
            writing: Mutex::new(()),
            dirty: Mutex::new(BTreeSet::new()),
            read_cache: ReadCache {
                entries: RwLock::new(HashMap::new()),
            },
        })
    }

    /// Brings request `id`'s spool in line with the database as it is now. Called after
    /// every commit that changes a request; a failure marks the request for
    /// [`Spool::retry_dirty`], so the spool converges even without a restart.
    pub fn sync(&self, id: u64, store: &Store) -> Result<Repair, SpoolError> {
        let result = {
            let _writing = lock(&self.writing);
            match store.request(id) {
                Ok(Some(r)) => self.write_unlocked(&r, store),
                Ok(None) => Ok(Repair::default()),
                Err(e) => Err(SpoolError::Store(e)),
            }
        };
        let mut dirty = lock(&self.dirty);
        match &result {
            Ok(_) => dirty.remove(&id),
            Err(_) => dirty.insert(id),
        };
        result
    }

    /// Retries the requests whose spool write failed; returns how many are still behind.
    pub fn retry_dirty(&self, store: &Store) -> usize {
        let pending: Vec<u64> = std::mem::take(&mut *lock(&self.dirty))
            .into_iter()
            .collect();
        for id in pending {
            if let Err(e) = self.sync(id, store) {
                log::warn!(
                    "spool for request {id} still not written: {}",
                    crate::model::Chain(&e)
                );
            }
        }
        lock(&self.dirty).len()
    }

    fn dir(&self, token: &str) -> PathBuf {
        self.root.join(token)
    }

    /// The status a source sees for `r`: the record decides it, the spool only renders.
    pub fn status_of(&self, r: &RequestRecord) -> SpoolStatus {
        r.spool_status(self.retry_after, &self.tunnel)
    }

    /// The files `r` must have, in write order: `status.json` always last.
    pub fn render(
        &self,
        r: &RequestRecord,
        store: &Store,
    ) -> Result<Vec<(&'static str, Vec<u8>)>, SpoolError> {
        let mut files = Vec::with_capacity(3);
        if r.status == RequestStatus::Accepted {
            let cert = r
                .cert_serial
                .as_deref()
                .map(|s| store.cert(s))
                .transpose()?
                .flatten()
                .ok_or(SpoolError::MissingCertificate { request: r.id })?;
            files.push((CERT_FILE, cert.pem.into_bytes()));
            let ca_pem = sync::read(&self.ca_pem).clone();
            files.push((CA_FILE, ca_pem.into_bytes()));
        }
        let status =
            serde_json::to_vec(&self.status_of(r)).map_err(|source| SpoolError::Encode {
                request: r.id,
                source,
            })?;
        files.push((STATUS_FILE, status));
        Ok(files)
    }

    /// Brings `r`'s spool directory in line with the database; returns what it changed.
    /// Files that differ are rewritten atomically, `status.json` last; files that should
    /// not be there (a certificate after revocation, temporaries) are removed after it.
    fn write_unlocked(&self, r: &RequestRecord, store: &Store) -> Result<Repair, SpoolError> {
        let Some(token) = SpoolToken::parse(&r.token) else {
            return Ok(Repair::default());
        };
        let dir = self.dir(token.as_str());
        fsx::ensure_private_dir(&dir).map_err(io_err(&dir))?;
        let files = self.render(r, store)?;
        let mut repair = Repair::default();
        for (name, bytes) in &files {
            let path = dir.join(name);
            let current = fsx::read_regular_nofollow(&path, MAX_FILE_BYTES).ok();
            if current.as_deref() != Some(bytes.as_slice()) {
                fsx::write_atomic(&path, bytes).map_err(io_err(&path))?;
                repair.files_written += 1;
            }
        }
        let wanted: HashSet<&str> = files.iter().map(|(n, _)| *n).collect();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            if !wanted.contains(name.to_string_lossy().as_ref()) {
                remove_entry(&entry)?;
                repair.files_removed += 1;
            }
        }
        Ok(repair)
    }

    /// Changes what accepted requests' `ca.pem` holds (a phase of a CA rollover); each
    /// request's file follows at its next write, all of them at [`Spool::reconcile`].
    pub fn set_ca_pem(&self, ca_pem: String) {
        *sync::write(&self.ca_pem) = ca_pem;
    }

    /// Start-up repair: every request gets a spool that matches it; directories that belong
    /// to no request are removed. Also run after the CAs changed (every accepted request's
    /// `ca.pem` is rewritten).
    pub fn reconcile(&self, store: &Store) -> Result<Repair, SpoolError> {
        let _writing = lock(&self.writing);
        let mut total = Repair::default();
        let mut tokens = HashSet::new();
        let mut after = 0;
        loop {
            let page = store.requests(after, 500, |_| true)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            for r in &page {
                tokens.insert(r.token.clone());
                let repair = self.write_unlocked(r, store)?;
                total.files_written += repair.files_written;
                total.files_removed += repair.files_removed;
            }
        }
        for entry in std::fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !tokens.contains(&name) {
                remove_entry(&entry)?;
                total.dirs_removed += 1;
            }
        }
        Ok(total)
    }

    /// Removes the spool directory of a request the database no longer has.
    pub fn remove(&self, token: &str) -> Result<(), SpoolError> {
        let Some(token) = SpoolToken::parse(token) else {
            return Ok(());
        };
        let _writing = lock(&self.writing);
        let dir = self.dir(token.as_str());
        fsx::remove_dir_all_durable(&dir).map_err(io_err(&dir))
    }

    /// Reads one served file. The token and name were parsed already; the token directory
    /// must be a real directory and the file a regular file (no symlink is followed) with
    /// no other name: a hard link made by a local user (say, from `certificate.pem` to
    /// `ca.key`) would otherwise publish whatever it points at.
    /// The answer is shared with the cache: a poll copies nothing.
    pub fn read(&self, token: &SpoolToken, file: SpoolFile) -> io::Result<Arc<Served>> {
        let not_found = |what| io::Error::new(io::ErrorKind::NotFound, what);
        if !self.root_dir.lstat(&[token.as_str()])?.is_dir {
            return Err(not_found("not a spool directory"));
        }
        let stat = self.root_dir.lstat(&[token.as_str(), file.name()])?;
        if !stat.is_file {
            return Err(not_found("not a regular file"));
        }
        if stat.nlink != 1 {
            return Err(not_found("file has other names (hard links)"));
        }
        let stamp = FileStamp::of(&stat);
        let key = ReadCache::key(token, file);
        if let Some((cached, served)) = self.read_cache.read().get(&key) {
            if *cached == stamp {
                return Ok(Arc::clone(served));
            }
        }
        // The stamp stored is the one of the file actually read, which may be newer than
        // the one just looked at.
        let path = self.dir(token.as_str()).join(file.name());
        let (bytes, meta) = fsx::read_regular_nofollow_with_metadata(&path, MAX_FILE_BYTES)?;
        // Linked between the look and the open: the file read is the one that counts.
        if meta.nlink() != 1 {
            return Err(not_found("file has other names (hard links)"));
        }
        let served = Arc::new(Served::new(bytes));
        let mut cache = self.read_cache.write();
        if cache.len() >= READ_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            key,
            (FileStamp::of(&fsx::Stat::of(&meta)), Arc::clone(&served)),
        );
        Ok(served)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: &str) -> RequestRecord {
        RequestRecord {
            token: token.into(),
            ..RequestRecord::fixture(1)
        }
    }

    /// Regression (found by the crash test): an unpair racing an accept in flight left
    /// `status.json` saying `accepted` with the certificate files removed, and one of the
    /// two handlers failed with a 500 because both used `status.json.tmp`.
    #[test]
    fn racing_writers_leave_the_latest_commit_and_never_fail() {
        let dir = std::env::temp_dir().join(format!("replgate-spool-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("db.redb")).unwrap();
        let spool = Spool::open(dir.join("spool"), "CA".into(), "t:1".into(), 30).unwrap();
        let token = "0123456789abcdef0123456789abcdef";
        let mut latest = request(token);
        latest.status = RequestStatus::Rejected;
        latest.message = Some("no".into());
        store
            .write(|tx| tx.put_request(&latest).map_err(SpoolError::from))
            .unwrap();
        let status = dir.join("spool").join(token).join(STATUS_FILE);
        let want = serde_json::to_vec(&spool.status_of(&latest)).unwrap();

        std::thread::scope(|s| {
            for _ in 0..8 {
                let (spool, store) = (&spool, &store);
                s.spawn(move || {
                    for _ in 0..25 {
                        spool.sync(1, store).unwrap();
                    }
                });
            }
        });
        assert_eq!(std::fs::read(&status).unwrap(), want);
        let names: Vec<_> = std::fs::read_dir(dir.join("spool").join(token))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATUS_FILE)]);
        assert_eq!(spool.retry_dirty(&store), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_retried_until_it_lands() {
        let dir = std::env::temp_dir().join(format!("replgate-spool-dirty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("db.redb")).unwrap();
        let spool = Spool::open(dir.join("spool"), "CA".into(), "t:1".into(), 30).unwrap();
        let token = "fedcba9876543210fedcba9876543210";
        store
            .write(|tx| tx.put_request(&request(token)).map_err(SpoolError::from))
            .unwrap();
        // A file where the request's directory must go makes the write fail.
        std::fs::write(dir.join("spool").join(token), b"in the way").unwrap();
        assert!(spool.sync(1, &store).is_err());
        assert_eq!(spool.retry_dirty(&store), 1);
        std::fs::remove_file(dir.join("spool").join(token)).unwrap();
        assert_eq!(spool.retry_dirty(&store), 0);
        assert!(dir.join("spool").join(token).join(STATUS_FILE).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_follow_every_update_and_refuse_symlinks_and_hard_links() {
        let dir = std::env::temp_dir().join(format!("replgate-spool-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fsx::ensure_private_dir(&dir).unwrap();
        let store = Store::open(&dir.join("replgate.redb")).unwrap();
        let spool = Spool::open(dir.join("spool"), "ca".into(), "t:1".into(), 30).unwrap();
        let token = SpoolToken::parse("0123456789abcdef0123456789abcdef").unwrap();
        let mut r = request(token.as_str());
        let commit = |r: &RequestRecord| {
            store
                .write(|tx| tx.put_request(r).map_err(SpoolError::from))
                .unwrap();
            spool.sync(r.id, &store).unwrap();
        };
        commit(&r);

        let first = spool.read(&token, SpoolFile::Status).unwrap();
        assert!(String::from_utf8_lossy(&first.bytes).contains("pending"));
        assert_eq!(first.etag.len(), 34);
        assert_eq!(spool.read(&token, SpoolFile::Status).unwrap(), first);

        // Each update is a rename; the very next read sees it.
        r.status = RequestStatus::Rejected;
        r.message = Some("call us first".into());
        commit(&r);
        let second = spool.read(&token, SpoolFile::Status).unwrap();
        assert!(String::from_utf8_lossy(&second.bytes).contains("call us first"));
        assert_ne!(second.etag, first.etag);
        r.status = RequestStatus::Revoked;
        commit(&r);
        let third = spool.read(&token, SpoolFile::Status).unwrap();
        assert!(String::from_utf8_lossy(&third.bytes).contains("revoked"));

        // A file replaced by a symlink (to a file that was served) is refused, cached or not.
        let path = dir.join("spool").join(token.as_str()).join(STATUS_FILE);
        let elsewhere = dir.join("elsewhere.json");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(spool.read(&token, SpoolFile::Status).is_err());
        // So is a missing file.
        std::fs::remove_file(&path).unwrap();
        assert!(spool.read(&token, SpoolFile::Status).is_err());

        // And a file with a second name, served before (so cached) or not: a hard link
        // from a served name to a private file must not publish it.
        commit(&r);
        assert!(spool.read(&token, SpoolFile::Status).is_ok());
        let private = dir.join("ca.key");
        std::fs::write(&private, b"PRIVATE").unwrap();
        std::fs::hard_link(&path, dir.join("second-name")).unwrap();
        assert!(
            spool.read(&token, SpoolFile::Status).is_err(),
            "cached file, now linked"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&private, &path).unwrap();
        assert!(
            spool.read(&token, SpoolFile::Status).is_err(),
            "link to a private file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
