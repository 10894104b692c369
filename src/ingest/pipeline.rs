//! The daemon's [`FileSink`] ([`Pipeline`]): the receiving side's file writer, off the
//! connection's thread. The thread that reads and decrypts the stream hashes each `Data`
//! frame and hands its bytes here, a writer thread appends them to the partial copy, and a
//! checkpoint thread makes the copy durable (fdatasync through a second handle) and
//! records its offset while writing goes on (a checkpoint asked for while one runs waits,
//! replaced by any newer one); sealer threads fsync finished files. A bulk transfer then
//! keeps three things busy at once instead of doing them in turn (decrypt and hash, copy
//! into the page cache, wait for the disk). Memory is bounded: at most [`QUEUED`] buffers
//! are in flight, and they are reused.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::fsx::{PartialFile, SyncHandle};
use crate::replication::receiver::{FileSink, Piece, Sealed};
use crate::store::{PartialRecord, Store};
use crate::sync::{lock, wait};

/// Buffers queued for the writer at most (each one `Data` frame, up to 256 KiB). The
/// buffers are kept for reuse, so a busy session holds up to `QUEUED + 2` of them (one
/// in the writer's hands, one being handed over): 768 KiB at 1. With 64 sessions
/// running, these and the frame readers' buffers were a third of the target's memory
/// (52 of 150 MB at 4, still 55 at 2; at 16 the target held 180 MB; SPEC 21's budget is
/// 128 MB). The writer copies into the page cache, so a short queue does not slow the
/// session.
pub(super) const QUEUED: usize = 1;
/// Written data is handed to writeback after this many bytes.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

enum Job {
    Open(PartialFile),
    Write(Vec<u8>),
    /// Make what was written so far durable and record `row` (whose offset says how much
    /// that is), unless a checkpoint is still running: then this one is skipped.
    Checkpoint(PartialRecord, u64),
    /// Hand the file back once everything queued before is written.
    Close(Sender<io::Result<Piece>>),
    /// Write what is queued, then fsync the file on a sealer thread and hand it back.
    Seal(Sender<io::Result<Piece>>),
}

/// Sealer threads per session: fsyncs of several small files at once let the journal
/// commit them together.
const SEALERS: usize = 2;

/// The checkpoint thread's mailbox: at most one checkpoint waits (a newer one replaces
/// it: it covers more bytes), and one runs. [`Mailbox::idle`] waits for neither.
#[derive(Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
    changed: Condvar,
}

#[derive(Default)]
struct MailboxState {
    next: Option<CheckpointJob>,
    running: bool,
    closed: bool,
}

impl Mailbox {
    fn put(&self, job: CheckpointJob) {
        lock(&self.state).next = Some(job);
        self.changed.notify_all();
    }

    /// The next job for the checkpoint thread; None once closed and empty.
    fn take(&self) -> Option<CheckpointJob> {
        let mut st = lock(&self.state);
        st.running = false;
        self.changed.notify_all();
        loop {
            if let Some(job) = st.next.take() {
                st.running = true;
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = wait(&self.changed, st);
        }
    }

    fn idle(&self) {
        let mut st = lock(&self.state);
        while st.running || st.next.is_some() {
            st = wait(&self.changed, st);
        }
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }
}

/// One session's writer, checkpoint and sealer threads.
pub(crate) struct Pipeline {
    jobs: Option<SyncSender<Job>>,
    spare: Receiver<Vec<u8>>,
    failed: Arc<Mutex<Option<io::Error>>>,
    mailbox: Arc<Mailbox>,
    threads: Vec<JoinHandle<()>>,
    /// Counts the files opened, so a checkpoint of an earlier file is not taken for one
    /// of the current file.
    file: u64,
    /// The last offset a checkpoint recorded, and of which file.
    recorded: Arc<Mutex<(u64, u64)>>,
}

struct CheckpointJob {
    handle: SyncHandle,
    row: PartialRecord,
    file: u64,
}

impl Pipeline {
    /// Starts the threads; checkpoints record into `store` under the source's `uuid`.
    pub(crate) fn spawn(store: Store, uuid: String) -> io::Result<Pipeline> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(QUEUED);
        let (spare_tx, spare) = mpsc::channel::<Vec<u8>>();
        let failed: Arc<Mutex<Option<io::Error>>> = Arc::new(Mutex::new(None));
        let mailbox = Arc::new(Mailbox::default());
        let recorded: Arc<Mutex<(u64, u64)>> = Arc::default();
        let checkpoints = {
            let mailbox = mailbox.clone();
            let recorded = recorded.clone();
            std::thread::Builder::new()
                .name("recv-sync".into())
                .stack_size(128 * 1024)
                .spawn(move || {
                    while let Some(job) = mailbox.take() {
                        match job.handle.checkpoint() {
                            Ok(()) => match store.write(|tx| tx.put_partial(&uuid, &job.row)) {
                                Ok(()) => {
                                    *lock(&recorded) = (job.file, job.row.offset);
                                    #[cfg(test)]
                                    crate::fsx::trace::recorded(job.handle.path(), job.row.offset);
                                }
                                Err(e) => log::warn!(
                                    "replication: record checkpoint of {}: {e}",
                                    job.row.backup
                                ),
                            },
                            Err(e) => {
                                log::warn!("replication: checkpoint of {}: {e}", job.row.backup)
                            }
                        }
                    }
                })?
        };
        let (seal_tx, seal_rx) = mpsc::channel::<(PartialFile, Sender<io::Result<Piece>>)>();
        let seal_rx = Arc::new(Mutex::new(seal_rx));
        let mut threads = vec![checkpoints];
        for _ in 0..SEALERS {
            let rx = seal_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("recv-seal".into())
                    .stack_size(128 * 1024)
                    .spawn(move || loop {
                        let next = lock(&rx).recv();
                        let Ok((file, reply)) = next else {
                            return;
                        };
                        let sealed = file.sync_all().map(|()| Piece::File(file));
                        let _ = reply.send(sealed);
                    })?,
            );
        }
        let writer = {
            let (failed, mailbox) = (failed.clone(), mailbox.clone());
            std::thread::Builder::new()
                .name("recv-write".into())
                .stack_size(128 * 1024)
                .spawn(move || writer(job_rx, spare_tx, &mailbox, seal_tx, &failed))?
        };
        threads.insert(0, writer);
        Ok(Pipeline {
            jobs: Some(jobs),
            spare,
            failed,
            mailbox,
            threads,
            file: 0,
            recorded,
        })
    }

    fn send(&self, job: Job) -> io::Result<()> {
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("the file writer stopped"))?
            .send(job)
            .map_err(|_| io::Error::other("the file writer stopped"))
    }

    /// The first write error since the file was opened, if any.
    fn check(&self) -> io::Result<()> {
        match lock(&self.failed).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl FileSink for Pipeline {
    /// Starts a file: its bytes go to `file` from now on.
    fn open(&mut self, file: Piece) -> io::Result<()> {
        let Piece::File(file) = file else {
            return Err(io::Error::other("the file writer writes files only"));
        };
        *lock(&self.failed) = None;
        self.file += 1;
        self.send(Job::Open(file))
    }

    /// The offset of the open file that the last finished checkpoint made durable and
    /// recorded, if one did since it was opened.
    fn recorded(&self) -> Option<u64> {
        let (file, offset) = *lock(&self.recorded);
        (file == self.file).then_some(offset)
    }

    /// Queues `bytes` for the file (copied into a reused buffer); blocks only while
    /// [`QUEUED`] buffers are waiting. Fails with an earlier write's error.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check()?;
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(bytes);
        self.send(Job::Write(buf))
    }

    /// Asks for a checkpoint after what was queued so far: `row.offset` must be the
    /// bytes the file holds then. Skipped if one is still running.
    fn checkpoint(&mut self, row: PartialRecord) -> io::Result<()> {
        self.send(Job::Checkpoint(row, self.file))
    }

    /// Ends the file: once everything queued is written and no checkpoint runs, it is
    /// fsynced on a sealer thread; the receiver yields it durable. Does not wait.
    fn seal(&mut self) -> io::Result<Sealed> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Seal(tx))?;
        Ok(rx)
    }

    /// Waits until everything queued is written and no checkpoint runs, and returns the
    /// file (for a synchronous checkpoint, or its discard).
    fn close(&mut self) -> io::Result<Piece> {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Close(tx))?;
        let file = rx
            .recv()
            .map_err(|_| io::Error::other("the file writer stopped"))??;
        self.mailbox.idle();
        self.check()?;
        Ok(file)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.jobs = None;
        self.mailbox.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn writer(
    jobs: Receiver<Job>,
    spare: Sender<Vec<u8>>,
    checkpoints: &Mailbox,
    sealers: Sender<(PartialFile, Sender<io::Result<Piece>>)>,
    failed: &Mutex<Option<io::Error>>,
) {
    let mut file: Option<PartialFile> = None;
    let mut next_writeback = WRITEBACK_EVERY;
    let mut broken = false;
    for job in jobs {
        match job {
            Job::Open(f) => {
                next_writeback = f.len() + WRITEBACK_EVERY;
                file = Some(f);
                broken = false;
            }
            Job::Write(buf) => {
                if let (Some(f), false) = (file.as_mut(), broken) {
                    if let Err(e) = f.write_all(&buf) {
                        broken = true;
                        *lock(failed) = Some(e);
                    } else if f.len() >= next_writeback {
                        f.start_writeback();
                        next_writeback = f.len() + WRITEBACK_EVERY;
                    }
                }
                let _ = spare.send(buf);
            }
            Job::Checkpoint(row, of) => {
                let Some(f) = file.as_ref().filter(|_| !broken) else {
                    continue;
                };
                let handle = match f.sync_handle() {
                    Ok(h) => h,
                    Err(e) => {
                        log::warn!("replication: checkpoint of {}: {e}", row.backup);
                        continue;
                    }
                };
                // A waiting one is replaced: this one covers its bytes too.
                checkpoints.put(CheckpointJob {
                    handle,
                    row,
                    file: of,
                });
            }
            Job::Seal(reply) => {
                // A checkpoint of this file must not record its offset after the commit.
                checkpoints.idle();
                match (file.take(), lock(failed).take()) {
                    (_, Some(e)) => {
                        let _ = reply.send(Err(e));
                    }
                    (Some(f), None) => {
                        if let Err(mpsc::SendError((_, reply))) = sealers.send((f, reply)) {
                            let _ = reply.send(Err(io::Error::other("no sealer thread")));
                        }
                    }
                    (None, None) => {
                        let _ = reply.send(Err(io::Error::other("no file is open")));
                    }
                }
            }
            Job::Close(reply) => {
                let result = file
                    .take()
                    .map(Piece::File)
                    .ok_or_else(|| io::Error::other("no file is open"));
                let _ = reply.send(result);
            }
        }
    }
}
