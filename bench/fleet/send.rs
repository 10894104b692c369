//! A minimal transfer sender: one session of `POST /tunnel/v1/transfer` (SPEC 11) with a
//! synthetic source's certificate, from its own loopback address, speaking the frames of
//! `replgate::wire::transfer` through the crate's own frame and chunked codecs. Files are
//! synthetic (every file of one size has the same bytes, so its SHA-256 is computed once
//! per size and the generator spends its CPU on TLS, not hashing); they are offered one at
//! a time (offer, decision, data within the target's durable window, end), the outcome
//! arriving while the next file streams. The target verifies every byte as it would from
//! a real source.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use replgate::replication::receiver::window_for;
use replgate::replication::stream::{FrameReader, FrameWriter};
use replgate::wire::chunked::{ChunkedReader, ChunkedWriter};
use replgate::wire::transfer::{Code, Decision, Frame, Outcome, MAX_DATA};
use ring::digest::{Context as Sha256, SHA256};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::net;
use super::stats::lock;

/// How long the target may take to answer (a decision, a durable mark, the `Bye`).
const REPLY_WAIT: Duration = Duration::from_secs(120);

/// One file to send: its name (`client/file`), size and modification time (ns).
#[derive(Clone, Debug)]
pub struct FileSpec {
    pub name: String,
    pub size: u64,
    pub version: i64,
}

/// How one offered file ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// Verified and durable on the target.
    Committed,
    /// Refused at its offer, before any byte moved (quota, space, busy...).
    Refused { code: u16, message: String },
    /// Sent (in part or whole) and then failed on the target.
    Failed { code: u16, message: String },
    /// The target already held it.
    Held,
    /// The session ended before the target said.
    Unknown,
}

/// One offered file with what the sender knows of it.
#[derive(Clone, Debug)]
pub struct SentFile {
    pub name: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Content bytes put on the wire for it.
    pub sent: u64,
    pub outcome: FileOutcome,
}

/// Why a session did not run to its `Bye`.
#[derive(Debug)]
pub enum SessionError {
    Connect(io::Error),
    Handshake(String),
    /// The target answered the request with another status than 200 (429: no session
    /// slot for this source now; 503: the listener is full).
    Refused {
        status: u16,
        message: String,
    },
    /// The stream broke, or the target ended it with `Fatal`.
    Broken(String),
    /// The target ended it with `Fatal` busy at a file boundary: its turn is over while
    /// other sources wait for a slot (the files it finished are kept).
    Yielded(String),
    /// The caller's stop flag was set.
    Stopped,
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Connect(e) => write!(f, "connect: {e}"),
            SessionError::Handshake(e) => write!(f, "tls handshake: {e}"),
            SessionError::Refused { status, message } => write!(f, "refused {status}: {message}"),
            SessionError::Broken(m) => write!(f, "broken: {m}"),
            SessionError::Yielded(m) => write!(f, "yielded: {m}"),
            SessionError::Stopped => f.write_str("stopped"),
        }
    }
}

/// What a session did: every file it offered, and how it ended.
#[derive(Debug, Default)]
pub struct SessionReport {
    /// From connect to the target's `Ready` (the session was admitted and greeted).
    pub opened: Option<Duration>,
    pub files: Vec<SentFile>,
    pub error: Option<String>,
}

/// The bytes of synthetic file content at `offset` (every file shares them).
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        // xorshift64*: incompressible, deterministic, no randomness needed.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..(1usize << 20) + MAX_DATA)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    })
}

fn content(offset: u64, len: usize) -> &'static [u8] {
    let start = (offset % (1 << 20)) as usize;
    &pattern()[start..start + len]
}

/// The SHA-256 of a synthetic file of `size` bytes, computed once per size.
pub fn digest_of(size: u64) -> [u8; 32] {
    static DIGESTS: OnceLock<Mutex<HashMap<u64, [u8; 32]>>> = OnceLock::new();
    let map = DIGESTS.get_or_init(Default::default);
    if let Some(d) = lock(map).get(&size) {
        return *d;
    }
    let mut h = Sha256::new(&SHA256);
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(MAX_DATA as u64) as usize;
        h.update(content(at, n));
        at += n as u64;
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    lock(map).insert(size, out);
    out
}

/// A refusal or failure from the target: its code number and message.
type Refusal = (u16, String);

/// What the reader thread learned from the target.
#[derive(Default)]
struct Heard {
    ready: bool,
    /// Per offer: send it (`None`), the target holds it (its digest), or refused.
    decisions: HashMap<u32, Result<Option<[u8; 32]>, Refusal>>,
    durable: HashMap<u32, u64>,
    outcomes: HashMap<u32, Result<(), Refusal>>,
    bye: bool,
    ended: Option<String>,
}

struct Mailbox {
    heard: Mutex<Heard>,
    changed: Condvar,
}

impl Mailbox {
    /// Waits until `until` holds (returns its value) or the stream ended or timed out.
    fn wait<T>(&self, mut until: impl FnMut(&mut Heard) -> Option<T>) -> Result<T, String> {
        let deadline = Instant::now() + REPLY_WAIT;
        let mut h = lock(&self.heard);
        loop {
            if let Some(v) = until(&mut h) {
                return Ok(v);
            }
            if let Some(e) = &h.ended {
                return Err(e.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("the target did not answer within 120 s".into());
            }
            h = self
                .changed
                .wait_timeout(h, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The TLS state both halves of the duplex stream share.
struct Shared {
    conn: Mutex<ClientConnection>,
}

struct TlsReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut c = lock(&self.shared.conn);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let n = self.sock.read(&mut self.buf)?;
            let mut c = lock(&self.shared.conn);
            if n == 0 {
                let _ = c.read_tls(&mut io::empty());
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the target closed the connection",
                ));
            }
            let mut data = &self.buf[..n];
            while !data.is_empty() {
                c.read_tls(&mut data)?;
                c.process_new_packets().map_err(io::Error::other)?;
            }
        }
    }
}

struct TlsWriter {
    shared: Arc<Shared>,
    sock: TcpStream,
    out: Vec<u8>,
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let step = &buf[..buf.len().min(16 * 1024)];
        let n = {
            let mut c = lock(&self.shared.conn);
            let n = c.writer().write(step)?;
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
            n
        };
        if self.out.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        {
            let mut c = lock(&self.shared.conn);
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
        }
        let r = self.sock.write_all(&self.out);
        self.out.clear();
        r
    }
}

impl Drop for TlsWriter {
    fn drop(&mut self) {
        lock(&self.shared.conn).send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

type Out = FrameWriter<ChunkedWriter<BufWriter<TlsWriter>>>;

/// Where one session goes and who it is.
pub struct Peer<'a> {
    /// The source's tunnel config (its certificate, the target's CA pinned).
    pub config: &'a Arc<ClientConfig>,
    pub from: Option<Ipv4Addr>,
    pub tunnel: SocketAddr,
}

/// Runs one session: offers what `next_file` hands out until it says None (or `stop` is
/// set), then `Finish`, and waits for `Bye`. `progress` counts content bytes sent.
pub fn session(
    peer: &Peer<'_>,
    next_file: &mut dyn FnMut() -> Option<FileSpec>,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> Result<SessionReport, (SessionError, SessionReport)> {
    let none = SessionReport::default;
    let start = Instant::now();
    let sock = net::tcp(peer.from, peer.tunnel).map_err(|e| (SessionError::Connect(e), none()))?;
    let name = ServerName::IpAddress(peer.tunnel.ip().into());
    let mut conn = ClientConnection::new(peer.config.clone(), name)
        .map_err(|e| (SessionError::Handshake(e.to_string()), none()))?;
    {
        let mut s = &sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut s)
                .map_err(|e| (SessionError::Handshake(e.to_string()), none()))?;
        }
    }
    let broken = |e: io::Error| {
        (
            SessionError::Broken(e.to_string()),
            SessionReport::default(),
        )
    };
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
    });
    let mut reader = TlsReader {
        shared: shared.clone(),
        sock: sock.try_clone().map_err(broken)?,
        buf: vec![0; 64 * 1024],
    };
    let mut writer = TlsWriter {
        shared,
        sock,
        out: Vec::with_capacity(96 * 1024),
    };
    let head = format!(
        "POST /tunnel/v1/transfer HTTP/1.1\r\nHost: {}\r\nUser-Agent: replgate-fleet\r\n\
         Content-Type: application/x-replgate-transfer\r\nTransfer-Encoding: chunked\r\n\r\n",
        peer.tunnel
    );
    writer.write_all(head.as_bytes()).map_err(broken)?;
    writer.flush().map_err(broken)?;
    let (status, length) = read_head(&mut reader).map_err(broken)?;
    if status != 200 {
        let mut body = Vec::new();
        let _ = (&mut reader)
            .take(length.unwrap_or(4096).min(16 * 1024))
            .read_to_end(&mut body);
        let text = String::from_utf8_lossy(&body);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["result"][0]["message"].as_str().map(String::from))
            .unwrap_or_else(|| text.chars().take(200).collect());
        return Err((SessionError::Refused { status, message }, none()));
    }
    let mailbox = Arc::new(Mailbox {
        heard: Mutex::new(Heard::default()),
        changed: Condvar::new(),
    });
    let listener = {
        let mailbox = mailbox.clone();
        std::thread::Builder::new()
            .name("fleet-recv".into())
            .stack_size(128 * 1024)
            .spawn(move || listen(ChunkedReader::new(reader), &mailbox))
            .map_err(broken)?
    };
    let mut out: Out = FrameWriter::new(ChunkedWriter::new(BufWriter::with_capacity(
        256 * 1024,
        writer,
    )));
    let mut report = SessionReport::default();
    let result = mailbox
        .wait(|h| h.ready.then_some(()))
        .map_err(SessionError::Broken)
        .and_then(|()| {
            report.opened = Some(start.elapsed());
            run(&mut out, &mailbox, next_file, progress, stop, &mut report)
        });
    // Whatever happened, settle what the target said of each file.
    {
        let h = lock(&mailbox.heard);
        for (seq, f) in report.files.iter_mut().enumerate() {
            let seq = seq as u32 + 1;
            if f.outcome == FileOutcome::Unknown {
                if let Some(o) = h.outcomes.get(&seq) {
                    f.outcome = match o {
                        Ok(()) => FileOutcome::Committed,
                        Err((code, message)) => FileOutcome::Failed {
                            code: *code,
                            message: message.clone(),
                        },
                    };
                }
            }
        }
    }
    drop(out);
    let _ = listener.join();
    // A write may break on the closed stream before the reader has the `Fatal`: what the
    // target said decides.
    let busy = format!("fatal {}:", Code::Busy.number());
    let yielded = lock(&mailbox.heard)
        .ended
        .clone()
        .filter(|e| e.starts_with(&busy));
    let result = match (result, yielded) {
        (Err(_), Some(m)) => Err(SessionError::Yielded(m)),
        (r, _) => r,
    };
    match result {
        Ok(()) => Ok(report),
        Err(e) => {
            report.error = Some(e.to_string());
            Err((e, report))
        }
    }
}

fn read_head(r: &mut TlsReader) -> io::Result<(u16, Option<u64>)> {
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || r.read(&mut b)? == 0 {
            return Err(io::Error::other("no response head"));
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("no status"))?;
    let length = text.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    Ok((status, length))
}

/// The reader thread: every frame from the target into the mailbox.
fn listen(input: impl Read, mailbox: &Mailbox) {
    let mut frames = FrameReader::new(input);
    loop {
        let next = frames.next_frame();
        let mut h = lock(&mailbox.heard);
        match next {
            Ok(Some(frame)) => match frame {
                Frame::Ready => h.ready = true,
                Frame::Want { .. } => {}
                Frame::Decision { seq, decision } => {
                    let d = match decision {
                        Decision::New => Ok(None),
                        Decision::Have { sha256 } => Ok(Some(sha256)),
                        Decision::Resume { .. } => Err((0, "resume offered".to_string())),
                        Decision::Refuse { code, message } => {
                            Err((code.number(), message.to_string()))
                        }
                    };
                    h.decisions.insert(seq, d);
                }
                Frame::Durable { seq, offset } => {
                    h.durable.insert(seq, offset);
                }
                Frame::Outcome { seq, outcome } => {
                    let o = match outcome {
                        Outcome::Committed { .. } => Ok(()),
                        Outcome::Failed { code, message } => {
                            Err((code.number(), message.to_string()))
                        }
                    };
                    h.outcomes.insert(seq, o);
                }
                Frame::Bye => {
                    h.bye = true;
                    h.ended = Some("the session ended".into());
                }
                Frame::Fatal { code, message } => {
                    h.ended = Some(format!("fatal {}: {message}", code.number()));
                }
                other => h.ended = Some(format!("unexpected frame {other:?}")),
            },
            Ok(None) => {
                h.ended
                    .get_or_insert_with(|| "the target closed the stream".into());
            }
            Err(e) => {
                h.ended.get_or_insert_with(|| e.to_string());
            }
        }
        let done = h.ended.is_some();
        drop(h);
        mailbox.changed.notify_all();
        if done {
            return;
        }
    }
}

fn run(
    out: &mut Out,
    mailbox: &Mailbox,
    next_file: &mut dyn FnMut() -> Option<FileSpec>,
    progress: &AtomicU64,
    stop: &AtomicBool,
    report: &mut SessionReport,
) -> Result<(), SessionError> {
    let broken = SessionError::Broken;
    let io = |e: io::Error| SessionError::Broken(e.to_string());
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(file) = next_file() else { break };
        seq += 1;
        let sha256 = digest_of(file.size);
        out.send(&Frame::Offer {
            seq,
            size: file.size,
            version: file.version,
            name: &file.name,
        })
        .map_err(io)?;
        out.flush().map_err(io)?;
        report.files.push(SentFile {
            name: file.name.clone(),
            size: file.size,
            sha256,
            sent: 0,
            outcome: FileOutcome::Unknown,
        });
        let decision = mailbox.wait(|h| h.decisions.remove(&seq)).map_err(broken)?;
        let entry = report.files.last_mut().ok_or(SessionError::Stopped)?;
        match decision {
            Ok(Some(_)) => {
                entry.outcome = FileOutcome::Held;
                out.send(&Frame::Skip { seq }).map_err(io)?;
                continue;
            }
            Err((code, message)) => {
                entry.outcome = FileOutcome::Refused { code, message };
                if code == 0 {
                    out.send(&Frame::Skip { seq }).map_err(io)?;
                }
                continue;
            }
            Ok(None) => {}
        }
        out.send(&Frame::Start { seq, offset: 0 }).map_err(io)?;
        let window = window_for(file.size);
        let mut at = 0u64;
        while at < file.size {
            if stop.load(Ordering::Relaxed) {
                out.flush().map_err(io)?;
                return Err(SessionError::Stopped);
            }
            let n = (file.size - at).min(MAX_DATA as u64) as usize;
            let durable = lock(&mailbox.heard).durable.get(&seq).copied().unwrap_or(0);
            if at + n as u64 > durable + window {
                out.flush().map_err(io)?;
                mailbox
                    .wait(|h| {
                        let d = h.durable.get(&seq).copied().unwrap_or(0);
                        (at + n as u64 <= d + window || h.outcomes.contains_key(&seq)).then_some(())
                    })
                    .map_err(broken)?;
                if lock(&mailbox.heard).outcomes.contains_key(&seq) {
                    break;
                }
            }
            out.send(&Frame::Data {
                seq,
                bytes: content(at, n),
            })
            .map_err(io)?;
            at += n as u64;
            entry.sent = at;
            progress.fetch_add(n as u64, Ordering::Relaxed);
        }
        // A file the target failed while it streamed (its outcome came early) is
        // abandoned with `Skip`, as the daemon's sender does.
        if lock(&mailbox.heard).outcomes.contains_key(&seq) {
            out.send(&Frame::Skip { seq }).map_err(io)?;
        } else {
            out.send(&Frame::End { seq, sha256 }).map_err(io)?;
        }
        out.flush().map_err(io)?;
    }
    if stop.load(Ordering::Relaxed) {
        return Err(SessionError::Stopped);
    }
    out.send(&Frame::Finish).map_err(io)?;
    out.flush().map_err(io)?;
    mailbox.wait(|h| h.bye.then_some(())).map_err(broken)?;
    Ok(())
}

/// `Code` numbers the report names.
pub fn code_name(code: u16) -> &'static str {
    match Code::from_number(code) {
        Code::BadName => "bad-name",
        Code::Quota => "quota",
        Code::NoSpace => "no-space",
        Code::Busy => "busy",
        Code::SizeMismatch => "size-mismatch",
        Code::DigestMismatch => "digest-mismatch",
        Code::Storage => "storage",
        Code::Protocol => "protocol",
        Code::NotPaired => "not-paired",
        Code::Unavailable => "unavailable",
        Code::Other(_) => "other",
    }
}
