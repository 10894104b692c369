//! The source's client for a target's restore routes (SPEC 20): the listing of what the
//! target holds for this source, and one copy's bytes from an offset, each one request on
//! its own mutual-TLS connection (`tunnel::connect`, pinned CA, bounded timeouts). What
//! comes back is the target's word only: `replication::restore` checks every name, size
//! and digest, and reads no more than the announced size.

use std::io::{self, Read, Write};

use super::tunnel::{
    connect, header, io_error, read_head, refusal, status_of, OpenTransferError, TunnelReader,
    TunnelWriter,
};
use crate::wire::chunked::ChunkedReader;
use crate::wire::protocol::RestoreListing;

/// The largest listing read (about 200 bytes a copy: some 300,000 copies).
const MAX_LISTING_BYTES: u64 = 64 * 1024 * 1024;

/// A target's tunnel and this pairing's credentials.
pub struct RestoreClient<'a> {
    pub addr: &'a str,
    pub ca_pem: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

/// One copy's bytes as the target streams them: `length` bytes announced.
pub struct FileStream {
    pub length: u64,
    reader: io::Take<TunnelReader>,
    /// Held until the answer was read: closing our half early could end the request.
    _writer: TunnelWriter,
}

impl Read for FileStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl RestoreClient<'_> {
    /// Sends one request and reads the answer's head: the reader (positioned at the
    /// body), the writer, and the body's announced length. Any status but 200 is
    /// `Refused` with the target's message.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(TunnelReader, TunnelWriter, String), OpenTransferError> {
        let (mut reader, mut writer) =
            connect(self.addr, self.ca_pem, self.cert_pem, self.key_pem)?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: replgate/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        writer.write_all(request.as_bytes()).map_err(io_error)?;
        writer.write_all(body).map_err(io_error)?;
        writer.flush().map_err(io_error)?;
        let head = read_head(&mut reader).map_err(io_error)?;
        let (head, status) = status_of(&head)?;
        if status != 200 {
            return Err(refusal(&mut reader, &head, status));
        }
        Ok((reader, writer, head))
    }

    /// [`Self::request`] of an answer with a `Content-Length`: also that length.
    fn sized(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(TunnelReader, TunnelWriter, u64), OpenTransferError> {
        let (reader, writer, head) = self.request(method, path, body)?;
        let length = header(&head, "content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(OpenTransferError::Malformed(
                "the restore answer has no Content-Length",
            ))?;
        Ok((reader, writer, length))
    }

    /// `GET /tunnel/v1/restore`: what the target holds for this source.
    pub fn listing(&self) -> Result<RestoreListing, OpenTransferError> {
        let (reader, _writer, length) = self.sized("GET", "/tunnel/v1/restore", b"")?;
        if length > MAX_LISTING_BYTES {
            return Err(OpenTransferError::Malformed(
                "the target's list of backups is too large",
            ));
        }
        let mut text = Vec::new();
        reader
            .take(length)
            .read_to_end(&mut text)
            .map_err(io_error)?;
        serde_json::from_slice(&text).map_err(|_| {
            OpenTransferError::Malformed("the target's list of backups is not the documented JSON")
        })
    }

    /// `POST /tunnel/v1/restore/file`: the bytes of `backup` from `offset` on.
    pub fn file(&self, backup: &str, offset: u64) -> Result<FileStream, OpenTransferError> {
        let json = serde_json::json!({ "backup": backup, "offset": offset }).to_string();
        let (reader, writer, length) =
            self.sized("POST", "/tunnel/v1/restore/file", json.as_bytes())?;
        Ok(FileStream {
            length,
            // One byte more than announced is let through, so the caller sees a target
            // that sends more than it said (and refuses the copy).
            reader: reader.take(length.saturating_add(1)),
            _writer: writer,
        })
    }

    /// `POST /tunnel/v1/restore/chunks`: `backup` from `offset` on as chunk records, for
    /// the `have` list (`replication::restore_chunks`). A target without the route, or
    /// with `dedup = "off"`, refuses it (404).
    pub fn chunks(
        &self,
        backup: &str,
        offset: u64,
        have: &[u8],
    ) -> Result<impl Read, OpenTransferError> {
        let mut body = serde_json::json!({ "backup": backup, "offset": offset })
            .to_string()
            .into_bytes();
        body.push(b'\n');
        body.extend_from_slice(have);
        let (reader, writer, head) = self.request("POST", "/tunnel/v1/restore/chunks", &body)?;
        if !header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            return Err(OpenTransferError::Malformed(
                "the restore chunks answer is not chunked",
            ));
        }
        Ok(Records {
            reader: ChunkedReader::new(reader),
            _writer: writer,
        })
    }
}

/// A chunk records answer, read through its chunked coding.
struct Records {
    reader: ChunkedReader<TunnelReader>,
    _writer: TunnelWriter,
}

impl Read for Records {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}
