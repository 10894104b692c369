//! The group commit: verified files are committed in groups (one directory fsync per
//! directory and two database commits per group), which keeps a thousand small files from
//! costing three fsyncs each in series. The session collects a group and hands it to its
//! committer over a [`CommitQueue`]; the [`Committer`] (run on a thread of its own by the
//! daemon, `ingest`) commits each group with [`commit`] and answers how every file ended.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use super::piece::Piece;
use super::sink::FileSink;
use super::state::{CommitQueue, Committed, Session, ToCommit};
use super::{client_dir, drop_partial, storage_failure, Context, Refusal, Source};
use crate::fsx;
use crate::model::UnixTime;
use crate::replication::index;
use crate::replication::live::Peer;
use crate::store::{FileStamp, PartialRecord, ReceivedRecord, Store, StoreError};
use crate::wire::hex;
use crate::wire::transfer::{Code, Frame, Outcome};

/// A group of verified files is committed once it holds this many files, or bytes, or
/// its oldest file waited this long.
pub(super) const GROUP_FILES: usize = 64;
pub(super) const GROUP_BYTES: u64 = 64 * 1024 * 1024;
pub(super) const GROUP_WAIT: Duration = Duration::from_millis(50);

/// The committer's end: [`Committer::run`] commits each group the session hands over.
pub struct Committer {
    groups: Receiver<Vec<ToCommit>>,
    results: Sender<Vec<Committed>>,
}

/// A new line between a session and its committer.
pub fn channel() -> (CommitQueue, Committer) {
    let (to_committer, groups) = mpsc::channel::<Vec<ToCommit>>();
    let (results, from_committer) = mpsc::channel::<Vec<Committed>>();
    (
        CommitQueue {
            groups: Some(to_committer),
            results: from_committer,
        },
        Committer { groups, results },
    )
}

impl Committer {
    /// Commits each group the session hands over, until it hands over no more (or stops
    /// listening). Runs on a thread of its own, beside the session's.
    pub fn run(self, ctx: &Context<'_>, source: &Source) {
        for group in self.groups {
            if self
                .results
                .send(commit(ctx.store, source, group, (ctx.now)()))
                .is_err()
            {
                return;
            }
        }
    }
}

impl<W: Write, S: FileSink> Session<'_, '_, W, S> {
    /// Hands the verified files collected so far to the committer.
    pub(super) fn hand_over(&mut self) {
        self.group_since = None;
        self.group_bytes = 0;
        if self.group.is_empty() {
            return;
        }
        let group = std::mem::take(&mut self.group);
        let Some(tx) = &self.commits.groups else {
            return;
        };
        if let Err(mpsc::SendError(group)) = tx.send(group) {
            for f in group {
                if let Some((offer, _)) = self.committing.remove(&f.seq) {
                    let m = "the committer stopped".to_string();
                    self.report_failure(f.seq, &offer.name, Code::Unavailable, &m);
                }
            }
        }
    }

    /// Hands over what is collected and waits until the committer said how every file
    /// ended.
    pub(super) fn commit_all(&mut self) {
        self.hand_over();
        while !self.committing.is_empty() {
            if !self.collect(true) {
                break;
            }
        }
    }

    /// Applies what the committer finished: the source hears of each file. With `block`,
    /// waits for one answer first; false when the committer is gone.
    pub(super) fn collect(&mut self, block: bool) -> bool {
        let mut sent = false;
        loop {
            let next = if block && !sent {
                self.commits
                    .results
                    .recv()
                    .map_err(|_| mpsc::TryRecvError::Disconnected)
            } else {
                self.commits.results.try_recv()
            };
            let results = match next {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            };
            sent = true;
            for (seq, result) in results {
                let Some((offer, sha256)) = self.committing.remove(&seq) else {
                    continue;
                };
                match result {
                    Ok(()) => {
                        self.ctx.ledger.committed(&offer.reservation, offer.grows);
                        self.summary.committed += 1;
                        self.ctx
                            .live
                            .count_file(Peer::Source(self.source.system_id));
                        log::info!(
                            "replication from system {} at {}: {} received and verified ({} bytes, sha256 {})",
                            self.source.system_id,
                            self.ctx.peer,
                            offer.name,
                            offer.size,
                            hex::encode(&sha256)
                        );
                        self.send(&Frame::Outcome {
                            seq,
                            outcome: Outcome::Committed { sha256 },
                        });
                    }
                    Err(r) => self.report_failure(seq, &offer.name, r.code, &r.message),
                }
            }
        }
        if sent {
            self.flush();
        }
        true
    }
}

/// Commits a group of verified files (the committer thread): waits until each is durable,
/// records them verified in one transaction, renames each into place, fsyncs each
/// directory once, records them received in one transaction. A crash at any point is
/// finished or undone by [`super::repair`] at start. A file is answered `Ok` only once
/// all of that succeeded; any failure fails it, and the source sends it again later.
pub fn commit(
    store: &Store,
    source: &Source,
    group: Vec<ToCommit>,
    now: UnixTime,
) -> Vec<Committed> {
    let uuid = &source.uuid;
    let storage_id = source.storage.id;
    let mut out: Vec<Committed> = Vec::new();
    let mut ok: Vec<(ToCommit, Piece)> = Vec::new();
    for f in group {
        match f.sealed.recv() {
            Ok(Ok(file)) => ok.push((f, file)),
            Ok(Err(e)) => {
                drop_partial(store, source, &f.name);
                let what = format!("cannot make {} durable", f.name);
                log::error!("replication: {what}: {e}");
                out.push((f.seq, Err(storage_failure(storage_id, &what, &e))));
            }
            Err(_) => out.push((
                f.seq,
                Err(Refusal::new(Code::Storage, "the file writer stopped")),
            )),
        }
    }
    let marked = store.write(|tx| {
        for (f, _) in &ok {
            tx.put_partial(
                uuid,
                &PartialRecord {
                    backup: f.name.as_str().to_string(),
                    storage_id,
                    size: f.size,
                    version: f.version,
                    offset: f.size,
                    started: f.started,
                    updated: now,
                    verified_sha256: Some(hex::encode(&f.sha256)),
                    upload: None,
                },
            )?;
        }
        Ok::<_, StoreError>(())
    });
    if let Err(e) = marked {
        out.extend(
            ok.into_iter()
                .map(|(f, _)| (f.seq, Err(Refusal::database(&e)))),
        );
        return out;
    }
    let renamed = put_in_place(store, source, ok, &mut out);
    let stamps = stamps_of(source, &renamed);
    let mut publish = Vec::new();
    let recorded = store.write(|tx| {
        publish.clear();
        for (f, stamp) in renamed.iter().zip(&stamps) {
            tx.put_received(
                uuid,
                &ReceivedRecord {
                    backup: f.name.as_str().to_string(),
                    storage_id,
                    size: f.size,
                    sha256: hex::encode(&f.sha256),
                    version: f.version,
                    received: now,
                    verified: None,
                    damaged: None,
                    bytes_received: Some(f.wire),
                    pinned: false,
                },
            )?;
            tx.delete_partial(uuid, f.name.as_str())?;
            let of = index::FileOf {
                uuid,
                backup: f.name.as_str(),
                storage_id,
                size: f.size,
                version: f.version,
            };
            if let Some(id) = index::on_commit(tx, &of, *stamp, f.index.as_ref())? {
                publish.push(id);
            }
        }
        Ok::<_, StoreError>(())
    });
    publish_all(store, publish);
    match recorded {
        Ok(()) => out.extend(renamed.into_iter().map(|f| (f.seq, Ok(())))),
        // The files are in place and their partial rows say verified: the start-up repair
        // records them. The source is told to try again later.
        Err(e) => out.extend(
            renamed
                .into_iter()
                .map(|f| (f.seq, Err(Refusal::database(&e)))),
        ),
    }
    out
}

/// Puts each verified copy of `ok` in place: a file renamed to its name (one directory
/// fsync per directory), an upload completed into its object. Returns those in place; a
/// failure is answered into `out`.
fn put_in_place(
    store: &Store,
    source: &Source,
    ok: Vec<(ToCommit, Piece)>,
    out: &mut Vec<Committed>,
) -> Vec<ToCommit> {
    let storage_id = source.storage.id;
    let mut renamed: Vec<ToCommit> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut in_bucket: Vec<ToCommit> = Vec::new();
    for (f, file) in ok {
        let dir = client_dir(source, &f.name);
        let placed = match file {
            Piece::File(file) => file.rename_into(&dir.join(f.name.file())),
            // The object appears at its key only now, with the bytes whose digest the
            // session checked (and the writer again); a crash before the received row is
            // finished by the start-up repair, which reads the object back first.
            Piece::Object(upload) => match upload.complete(f.size, &f.sha256) {
                Ok(_) => {
                    in_bucket.push(f);
                    continue;
                }
                Err(e) => {
                    drop_partial(store, source, &f.name);
                    Err(e)
                }
            },
        };
        match placed {
            Ok(()) => {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
                renamed.push(f);
            }
            Err(e) => {
                let what = format!("cannot put {} into place", f.name);
                log::error!("replication: {what}: {e}");
                out.push((f.seq, Err(storage_failure(storage_id, &what, &e))));
            }
        }
    }
    let mut renamed = sync_dirs(source, renamed, &dirs, out);
    renamed.extend(in_bucket);
    renamed
}

/// The stamp each copy has in place: the chunk index uses a copy only while it is that.
fn stamps_of(source: &Source, renamed: &[ToCommit]) -> Vec<Option<FileStamp>> {
    renamed
        .iter()
        .map(|f| {
            let path = client_dir(source, &f.name).join(f.name.file());
            fsx::lstat(&path).ok().map(|s| FileStamp::of(&s))
        })
        .collect()
}

/// Publishes the index entries of the copies just recorded (the first step was published
/// in the recording transaction; a failure leaves the rest to the index job).
fn publish_all(store: &Store, files: Vec<u64>) {
    for id in files {
        if let Err(e) = index::publish_all(store, id) {
            log::warn!("chunk index: publish the entries of file {id}: {e}");
        }
    }
}

/// Makes the renames into `dirs` durable, one fsync per directory, and returns the files
/// of `renamed` whose directory synced. A file whose directory did not is failed into
/// `out`: its name might not survive a power loss, so it is not recorded received (its
/// partial row still says verified, for the start-up repair or the source's next try).
fn sync_dirs(
    source: &Source,
    renamed: Vec<ToCommit>,
    dirs: &[PathBuf],
    out: &mut Vec<Committed>,
) -> Vec<ToCommit> {
    let mut failed: Vec<(&PathBuf, std::io::Error)> = Vec::new();
    for d in dirs {
        if let Err(e) = fsx::sync_dir(d) {
            log::error!("replication: fsync of {}: {e}", d.display());
            failed.push((d, e));
        }
    }
    if failed.is_empty() {
        return renamed;
    }
    let mut synced = Vec::with_capacity(renamed.len());
    for f in renamed {
        let dir = client_dir(source, &f.name);
        match failed.iter().find(|(d, _)| **d == dir) {
            Some((_, e)) => {
                let what = format!("cannot make {} durable: fsync of its directory", f.name);
                out.push((f.seq, Err(storage_failure(source.storage.id, &what, e))));
            }
            None => synced.push(f),
        }
    }
    synced
}

#[cfg(test)]
mod tests {
    use super::super::{partial_path, Scratch};
    use super::*;
    use crate::fsx::PartialFile;
    use crate::replication::names::BackupName;

    /// A verified file of `client/file` as the sink hands it to the committer: written
    /// under its partial name and fsynced.
    fn sealed(s: &Scratch, seq: u32, backup: &str, body: &[u8]) -> ToCommit {
        let name = BackupName::parse(backup).unwrap();
        let dir = s.client_dir(name.client());
        let mut file = PartialFile::open(&partial_path(&dir, &name), 0).unwrap();
        file.write_all(body).unwrap();
        file.sync_all().unwrap();
        let (tx, sealed) = mpsc::channel();
        tx.send(Ok(Piece::File(file))).unwrap();
        let sha = ring::digest::digest(&ring::digest::SHA256, body);
        ToCommit {
            seq,
            name,
            size: body.len() as u64,
            version: 7,
            sha256: sha.as_ref().try_into().unwrap(),
            started: 1,
            sealed,
            index: None,
            wire: 0,
        }
    }

    #[test]
    fn a_failed_directory_fsync_fails_the_files_it_covered_and_records_none_of_them() {
        let s = Scratch::new("dir-fsync");
        let uuid = &s.source.uuid;
        let group = vec![
            sealed(&s, 1, "a/x", b"first"),
            sealed(&s, 2, "a/y", b"second"),
            sealed(&s, 3, "b/z", b"third"),
        ];
        let fault = crate::fsx::faults::fail_dir_sync(&s.client_dir("a"));
        let mut results = commit(&s.store, &s.source, group, 5);
        drop(fault);
        results.sort_by_key(|r| r.0);
        // The files in `a/` are failed with a storage error the source retries; `b/z`,
        // whose directory synced, is committed.
        for (seq, result) in &results[..2] {
            let refusal = result.as_ref().unwrap_err();
            assert_eq!(refusal.code, Code::Storage, "{seq}: {refusal}");
            assert!(
                refusal.message.contains("fsync of its directory"),
                "{refusal}"
            );
        }
        assert_eq!(results[2], (3, Ok(())));
        assert_eq!(
            crate::replication::queue::attempt_for(Code::Storage, "x"),
            crate::replication::queue::Attempt::Failed("x".into())
        );
        // Not recorded received; their partial rows still say verified.
        for backup in ["a/x", "a/y"] {
            assert!(s.store.received_one(uuid, backup).unwrap().is_none());
            let row = s.store.partial(uuid, backup).unwrap().unwrap();
            assert!(row.verified_sha256.is_some(), "{backup}");
        }
        assert!(s.store.received_one(uuid, "b/z").unwrap().is_some());
        assert!(s.store.partial(uuid, "b/z").unwrap().is_none());
        // Once the directory syncs again, the same files commit.
        let again = vec![
            sealed(&s, 4, "a/x", b"first"),
            sealed(&s, 5, "a/y", b"second"),
        ];
        let results = commit(&s.store, &s.source, again, 6);
        assert!(results.iter().all(|r| r.1.is_ok()), "{results:?}");
        assert!(s.store.received_one(uuid, "a/x").unwrap().is_some());
        assert!(s.store.partials().unwrap().is_empty());
    }
}
