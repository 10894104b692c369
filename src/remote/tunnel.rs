//! The source's streaming client for one transfer session on a target's tunnel: mutual
//! TLS with the pairing's certificate, trusting only the pinned CA, no proxy, no
//! redirects, bounded connect and per-read/per-write timeouts. `POST /tunnel/v1/transfer`
//! with a chunked request body, and the response read while the body is still being
//! written: the connection is split into a reader and a writer half over one rustls
//! connection (socket I/O outside the lock, so neither half waits on the other's socket).

use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConnection;

use crate::ca::CertError;
use crate::sync::lock;
use crate::tls::TlsError;
use crate::wire::chunked::{ChunkedReader, ChunkedWriter};
use crate::wire::transfer::{Features, FEATURES_HEADER};

/// Why a transfer session could not be opened.
#[derive(Debug)]
pub enum OpenTransferError {
    /// The target could not be reached, or the connection broke: retry later.
    Unreachable(io::Error),
    /// The target's certificate does not chain to the pinned CA, or it refused ours (a
    /// revoked certificate: the pairing was undone).
    Untrusted(rustls::Error),
    /// The target answered the request with an error status.
    Refused {
        status: u16,
        message: String,
        retry_after: Option<u64>,
    },
    /// The answer is not what the protocol says.
    Malformed(&'static str),
    /// The pairing's pinned CA does not parse.
    PinnedCa(CertError),
    /// Our key and certificate (or the CA) make no TLS configuration.
    Tls(TlsError),
    /// The tunnel address is not `host:port` with a valid host name.
    Address(String),
}

impl std::fmt::Display for OpenTransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenTransferError::Unreachable(e) => write!(f, "unreachable: {e}"),
            OpenTransferError::Untrusted(e) => write!(f, "untrusted: {e}"),
            OpenTransferError::Refused {
                status, message, ..
            } => write!(f, "refused with {status}: {message}"),
            OpenTransferError::Malformed(what) => write!(f, "unexpected answer: {what}"),
            OpenTransferError::PinnedCa(e) => write!(f, "pinned CA: {e}"),
            OpenTransferError::Tls(e) => write!(f, "TLS set-up: {e}"),
            OpenTransferError::Address(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for OpenTransferError {}

/// Connecting to a target's tunnel; one that does not answer within this is down. Short:
/// the kernel sends its SYNs at 0, 1 and 3 s, and after a link cut a fresh attempt (the
/// replicator retries within two seconds) reaches a returned link sooner than the SYN
/// backoff of a long one would (SPEC 17).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// A target says nothing for this long (no decision, outcome or greeting): it is gone.
/// Long, because answering a resume can mean hashing a large partial copy first.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// The target stops taking bytes for this long: it is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Plaintext gathered before it is encrypted and sent: two `Data` frames.
const WRITE_BUFFER: usize = 512 * 1024;
/// Plaintext handed to rustls at once (one TLS record's worth). rustls allocates each
/// record it encrypts and frees it once copied out; with more at once, the records freed
/// together pass the allocator's trim threshold (`memory.rs`: 64 KiB), so the pages went
/// back to the kernel and were faulted in again on the next write: a sixth of the
/// sender's CPU (perf: `do_anonymous_page`, memcg charges, `free_unref_folios`).
const ENCRYPT_STEP: usize = 16 * 1024;
/// Encrypted bytes gathered before one socket write.
const SOCKET_WRITE: usize = 64 * 1024;
/// The most of an error answer read for its message.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// The most of a response head read.
const MAX_HEAD: usize = 16 * 1024;

/// The TLS state both halves share.
struct Shared {
    conn: Mutex<ClientConnection>,
}

/// Reads decrypted bytes; the socket read happens outside the lock.
pub struct TunnelReader {
    shared: Arc<Shared>,
    sock: TcpStream,
    buf: Vec<u8>,
    /// `buf[start..end]` was read from the socket and not yet taken by rustls.
    start: usize,
    end: usize,
}

/// Writes bytes; encryption under the lock, the socket write outside it.
pub struct TunnelWriter {
    shared: Arc<Shared>,
    sock: TcpStream,
    out: Vec<u8>,
}

impl Read for TunnelReader {
    /// Plaintext rustls holds first; else the socket bytes read earlier and not yet taken
    /// by rustls (it takes no more while its plaintext buffer is full, so a large answer
    /// is fed in steps); else a socket read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut c = lock(&self.shared.conn);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let mut data = &self.buf[self.start..self.end];
                    let taken = c.read_tls(&mut data)?;
                    self.start += taken;
                    c.process_new_packets().map_err(io::Error::other)?;
                    continue;
                }
            }
            let n = self.sock.read(&mut self.buf)?;
            if n == 0 {
                // The peer closed without close_notify: say so to rustls, then end.
                let _ = lock(&self.shared.conn).read_tls(&mut io::empty());
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the target closed the connection",
                ));
            }
            (self.start, self.end) = (0, n);
        }
    }
}

impl TunnelWriter {
    /// Moves what rustls has encrypted into `out`, then writes `out` to the socket.
    fn drain(&mut self) -> io::Result<()> {
        {
            let mut c = lock(&self.shared.conn);
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
        }
        let sent = self.sock.write_all(&self.out);
        self.out.clear();
        sent
    }
}

impl Write for TunnelWriter {
    /// Encrypts up to [`ENCRYPT_STEP`] bytes of `buf`; the socket write waits until
    /// [`SOCKET_WRITE`] bytes are encrypted, or the next flush.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let step = &buf[..buf.len().min(ENCRYPT_STEP)];
        let n = {
            let mut c = lock(&self.shared.conn);
            let n = c.writer().write(step)?;
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
            n
        };
        if self.out.len() >= SOCKET_WRITE {
            self.drain()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()
    }
}

impl Drop for TunnelWriter {
    fn drop(&mut self) {
        lock(&self.shared.conn).send_close_notify();
        let _ = self.drain();
        let _ = self.sock.shutdown(Shutdown::Write);
    }
}

/// One transfer session's streams: frames go into `body`, the target's come out of
/// `replies`.
pub struct TransferStream {
    /// Buffered under the chunked coding, so a chunk's size line, its data and its CRLF
    /// leave in full TLS records rather than three records (and writes) per frame.
    pub body: ChunkedWriter<BufWriter<TunnelWriter>>,
    pub replies: ChunkedReader<TunnelReader>,
    /// What the target agreed to use this session (`Replgate-Features`).
    pub features: Features,
    /// The connection's socket, for its figures (`TCP_INFO`).
    pub socket: TcpStream,
}

/// Reads the response head one byte at a time, so nothing after it is consumed (it is
/// small, and read once per session).
pub(super) fn read_head(r: &mut TunnelReader) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too large",
            ));
        }
        if r.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the target closed the connection before answering",
            ));
        }
        head.push(b[0]);
    }
    Ok(head)
}

/// The response head as text, and its status.
pub(super) fn status_of(head: &[u8]) -> Result<(String, u16), OpenTransferError> {
    let head = String::from_utf8_lossy(head).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(OpenTransferError::Malformed(
            "no status in the tunnel's answer",
        ))?;
    Ok((head, status))
}

/// A refusal's message (the documented error body's, or the start of the text).
pub(super) fn refusal(reader: &mut TunnelReader, head: &str, status: u16) -> OpenTransferError {
    let mut body = Vec::new();
    let limit = header(head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(MAX_ERROR_BODY)
        .min(MAX_ERROR_BODY);
    let _ = reader.take(limit as u64).read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["result"][0]["message"].as_str().map(String::from))
        .unwrap_or_else(|| text.chars().take(200).collect());
    OpenTransferError::Refused {
        status,
        message,
        retry_after: header(head, "retry-after").and_then(|v| v.parse().ok()),
    }
}

pub(super) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub(super) fn io_error(e: io::Error) -> OpenTransferError {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(tls) => OpenTransferError::Untrusted(tls.clone()),
        None => OpenTransferError::Unreachable(e),
    }
}

/// Connects to the tunnel at `host:port` over mutual TLS, trusting only `ca_pem`,
/// presenting `cert_pem`/`key_pem`: the connection's two halves.
pub(super) fn connect(
    addr: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(TunnelReader, TunnelWriter), OpenTransferError> {
    let anchors = super::anchors_of(ca_pem).map_err(OpenTransferError::PinnedCa)?;
    let config = crate::tls::pinned_client_config(anchors, Some((cert_pem, key_pem)))
        .map_err(OpenTransferError::Tls)?;
    let (host, _) = addr.rsplit_once(':').ok_or_else(|| {
        OpenTransferError::Address(format!("tunnel address {addr:?} is not host:port"))
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let target = addr
        .to_socket_addrs()
        .map_err(OpenTransferError::Unreachable)?
        .next()
        .ok_or_else(|| {
            OpenTransferError::Unreachable(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{addr} resolves to no address"),
            ))
        })?;
    let sock = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
        .map_err(OpenTransferError::Unreachable)?;
    let setup = |s: &TcpStream| -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_write_timeout(Some(WRITE_TIMEOUT))
    };
    setup(&sock).map_err(io_error)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| OpenTransferError::Address(format!("invalid tunnel host {host:?}")))?;
    let mut conn = ClientConnection::new(config, name).map_err(OpenTransferError::Untrusted)?;
    {
        let mut s = &sock;
        while conn.is_handshaking() {
            conn.complete_io(&mut s).map_err(io_error)?;
        }
    }
    let shared = Arc::new(Shared {
        conn: Mutex::new(conn),
    });
    let read_sock = sock.try_clone().map_err(io_error)?;
    let reader = TunnelReader {
        shared: shared.clone(),
        sock: read_sock,
        buf: vec![0u8; 64 * 1024],
        start: 0,
        end: 0,
    };
    let writer = TunnelWriter {
        shared,
        sock,
        out: Vec::with_capacity(SOCKET_WRITE + 2 * ENCRYPT_STEP),
    };
    Ok((reader, writer))
}

/// Opens a transfer session on the tunnel at `host:port`, trusting only `ca_pem`,
/// presenting `cert_pem`/`key_pem`, offering `features`. Returns once the target answered
/// 200 (it greets next, inside the stream); any other answer is `Refused` with the
/// target's message.
pub fn open_transfer(
    addr: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    features: Features,
) -> Result<TransferStream, OpenTransferError> {
    let (mut reader, mut writer) = connect(addr, ca_pem, cert_pem, key_pem)?;
    let request = format!(
        "POST /tunnel/v1/transfer HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: replgate/{}\r\n\
         Content-Type: application/x-replgate-transfer\r\nTransfer-Encoding: chunked\r\n\
         {FEATURES_HEADER}: {}\r\n\r\n",
        env!("CARGO_PKG_VERSION"),
        features.render()
    );
    writer.write_all(request.as_bytes()).map_err(io_error)?;
    writer.flush().map_err(io_error)?;
    let head = read_head(&mut reader).map_err(io_error)?;
    let (head, status) = status_of(&head)?;
    let chunked =
        header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if status != 200 {
        return Err(refusal(&mut reader, &head, status));
    }
    if !chunked {
        return Err(OpenTransferError::Malformed(
            "the tunnel's transfer answer is not chunked",
        ));
    }
    // A target that names no features (an older version) uses none; one that names
    // more than was offered is held to what was.
    let features = header(&head, FEATURES_HEADER)
        .map_or(Features::default(), Features::parse)
        .and(features);
    let socket = reader.sock.try_clone().map_err(io_error)?;
    Ok(TransferStream {
        body: ChunkedWriter::new(BufWriter::with_capacity(WRITE_BUFFER, writer)),
        replies: ChunkedReader::new(reader),
        features,
        socket,
    })
}

/// What the kernel measured of a connection (`TCP_INFO`): the latest delivery rate in
/// bytes per second, the time the receiver's window held the sender back so far, and the
/// smoothed round trip. None where the kernel does not tell (before Linux 4.10).
pub fn tcp_figures(sock: &TcpStream) -> Option<TcpFigures> {
    use std::os::fd::AsRawFd;
    // struct tcp_info (linux/tcp.h): tcpi_rtt (u32, µs) at 68, tcpi_delivery_rate (u64,
    // bytes/s) at 160, tcpi_rwnd_limited (u64, µs) at 176.
    let mut info = [0u8; 256];
    let mut len = libc::socklen_t::try_from(info.len()).ok()?;
    // SAFETY: the descriptor is open for the call (borrowed from `sock`); the kernel
    // writes at most `len` bytes into `info` and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 || (len as usize) < 184 {
        return None;
    }
    let field = |at: usize, width: usize| {
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(&info[at..at + width]);
        match width {
            4 => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            _ => u64::from_ne_bytes(b),
        }
    };
    let (u32_at, u64_at) = (|at| field(at, 4), |at| field(at, 8));
    Some(TcpFigures {
        delivery_rate: u64_at(160),
        rwnd_limited: Duration::from_micros(u64_at(176)),
        rtt: Duration::from_micros(u32_at(68)),
    })
}

/// See [`tcp_figures`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFigures {
    pub delivery_rate: u64,
    pub rwnd_limited: Duration,
    pub rtt: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_figures_read_a_live_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let reader = std::thread::spawn(move || {
            let mut sink = Vec::new();
            server.read_to_end(&mut sink).unwrap();
            sink.len()
        });
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..8 {
            client.write_all(&chunk).unwrap();
        }
        let f = tcp_figures(&client).expect("TCP_INFO on Linux");
        assert!(f.delivery_rate > 0, "{f:?}");
        assert!(
            f.rtt > Duration::ZERO && f.rtt < Duration::from_secs(1),
            "{f:?}"
        );
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(reader.join().unwrap(), 8 << 20);
    }
}
