//! Object store: the S3 client for a storage of kind `s3` (SPEC 19). Requests are signed
//! by rusty-s3 (SigV4, presigned URLs, sans-IO) and sent by our own small HTTP/1.1 client
//! (`http.rs`: keep-alive, bounded reads and writes, TLS from `tls`). A resource: it owns
//! the conversation with one bucket and knows nothing of backups, quotas or the database.
//!
//! Every call is bounded in time (connect, each read and write, the whole call: a base
//! plus the bytes at a floor rate) and retried on what is worth retrying (`retry.rs`),
//! with one rule above the rest: a retry never turns a lost answer into a wrong belief.
//! - `PutObject`, `UploadPart`, `DeleteObject`, `AbortMultipartUpload` and reads are
//!   idempotent: repeating them changes nothing a first success did not. An abort or a
//!   delete that finds nothing counts as done.
//! - `CreateMultipartUpload` repeated after a lost answer leaves an upload nobody knows;
//!   it is invisible and the orphan sweep ([`ObjStore::sweep_uploads`]) aborts it.
//! - `CompleteMultipartUpload` repeated after a lost answer finds the upload gone
//!   (`NoSuchUpload`). Then the object is checked: our upload's token (set at create as
//!   `x-amz-meta-replgate-upload`) and the size we sent, or the upload is reported gone
//!   and must start again. An ETag is never taken as a digest: SHA-256 is checked over the
//!   bytes (the writer's own digest before completing, [`ObjStore::sha256_of`] after).
//! - A body or listing is accepted only whole: a body must be as long as its framing
//!   (and its `Content-Range`) says, a listing must parse to its closing element, and a
//!   read cut short resumes where it stopped, pinned to the same object by `If-Match`.
//!
//! Memory: a call holds at most its request body (the caller's) plus 64 KiB of read
//! buffer; listings are bounded; a multipart upload holds two part buffers
//! ([`MultipartWriter`], at most 2 × 32 MiB).

mod credentials;
mod error;
mod http;
mod key;
mod multipart;
mod objects;
mod reader;
mod retry;
mod shared;
mod upload;
mod xml;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusty_s3::{Bucket, S3Action, UrlStyle};
use url::Url;

pub use credentials::Credentials;
pub use error::ObjStoreError;
pub use key::Key;
pub use reader::{object_reader, ObjectReader};
pub use retry::RetryPolicy;
pub use shared::{backup_key, failing, for_storage, location_of, note_outcome, storage_prefix};
pub use upload::{Checkpoint, Completed, MultipartWriter, PartSize};

use crate::config::{S3Storage, Storage, StorageKind};
use crate::wire::hex;
use crate::{fsx, tls};

/// How long a signed URL stays valid. Each attempt signs afresh; this only has to outlast
/// the time between signing and the server reading the request head.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// The most of an answer body we read that is not object bytes (errors, listings of at
/// most 1,000 entries, upload results).
const MAX_ANSWER: u64 = 4 * 1024 * 1024;
/// The largest range [`ObjStore::get_range`] reads into memory, and the largest
/// [`ObjStore::put_object`] body.
pub const MAX_IN_MEMORY: u64 = 32 * 1024 * 1024;
/// The largest CA file or system bundle read.
const MAX_CA_FILE: u64 = 4 * 1024 * 1024;
/// System CA bundles, in the order distributions name them (Debian and Ubuntu; Fedora and
/// RHEL; openSUSE; Alpine and the BSDs). `SSL_CERT_FILE` comes first when set.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// Object metadata we set: the SHA-256 of a whole object when known before it is sent
/// (always for `PutObject`), and the token of the multipart upload that made it.
const META_SHA256: &str = "x-amz-meta-sha256";
const META_UPLOAD: &str = "x-amz-meta-replgate-upload";

/// Where a storage's bucket is (SPEC 19's `[[storage]]` fields for `kind = "s3"`, less
/// the credentials).
#[derive(Clone, Debug)]
pub struct Location {
    /// `https://host[:port][/path]`, or `http://` with a loopback host.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// `https://host/bucket/key` rather than `https://bucket.host/key`.
    pub path_style: bool,
    /// PEM CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// Checks what an `s3` storage names on disk, as opening its client will read it: the
/// credentials file ([`Credentials::load`]: regular, mode 0600 or stricter, the two keys)
/// and the CA file (readable, holding a PEM certificate). Sends nothing and builds no
/// client (whose TLS and signing code the daemon links only once it talks to buckets).
pub fn check_settings(s: &S3Storage) -> Result<(), ObjStoreError> {
    Credentials::load(&s.credentials_file)?;
    if let Some(ca) = &s.ca_file {
        let pem = fsx::read_regular_nofollow(ca, MAX_CA_FILE)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"));
        if pem.is_none() {
            return Err(ObjStoreError::Config(format!(
                "ca_file {}: not a readable PEM file of certificates",
                ca.display()
            )));
        }
    }
    Ok(())
}

/// [`check_settings`] for every `s3` storage of `storage`: the first that cannot work,
/// as `storage[i]: why` (never quoting a file). For `check-config` and the daemon's start.
pub fn check_storages(storage: &[Storage]) -> Result<(), String> {
    for (i, s) in storage.iter().enumerate() {
        if let StorageKind::S3(b) = &s.kind {
            check_settings(b).map_err(|e| format!("storage[{i}]: {e}"))?;
        }
    }
    Ok(())
}

/// Bounds of the client; [`Settings::default`] holds the defaults each field names.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Connecting to one address. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// The longest wait for a read or write to make progress. Defaults to 30 s.
    pub io_timeout: Duration,
    /// The whole-call bound before the time for the bytes. Defaults to 60 s.
    pub call_timeout: Duration,
    /// Bytes per second a call is given for its body, on top of `call_timeout` (an 8 MiB
    /// part gets 68 s). Defaults to 1 MiB/s.
    pub min_rate: u64,
    pub retry: RetryPolicy,
    /// Entries per listing page. Defaults to 1,000 (S3's most).
    pub list_page: u16,
    /// Idle connections kept, and for how long. Default 4 and 15 s.
    pub max_idle: usize,
    pub idle_keep: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
            min_rate: 1024 * 1024,
            retry: RetryPolicy::default(),
            list_page: 1000,
            max_idle: 4,
            idle_keep: Duration::from_secs(15),
        }
    }
}

/// What `HEAD` says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// The store's entity tag, quotes removed: for telling versions apart, never a digest.
    pub etag: Option<String>,
    /// Our `x-amz-meta-sha256`, when the object has one.
    pub sha256: Option<[u8; 32]>,
    /// The token of the multipart upload that made the object, when one did.
    pub upload_token: Option<String>,
}

/// One object of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// One part of a multipart upload, as `ListParts` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    pub number: u16,
    pub size: u64,
    /// Quotes removed.
    pub etag: String,
}

/// One multipart upload in progress, as `ListMultipartUploads` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadEntry {
    pub key: String,
    pub upload_id: String,
    /// Unix seconds.
    pub initiated: i64,
}

/// Where the next page of a multipart-upload listing starts: what the page before named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadMarker {
    pub key: Option<String>,
    pub upload_id: String,
}

/// What a sweep of multipart uploads did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Uploads aborted.
    pub aborted: Vec<UploadEntry>,
    /// Uploads left alone: younger than the cut-off, or kept by the caller.
    pub kept: usize,
}

/// How one attempt failed, for [`ObjStore::run`].
enum Failure {
    /// Worth another attempt after a pause.
    Retry(String),
    /// A reused connection failed before any answer: another attempt now, once per call
    /// without counting (the server closed it while idle).
    Stale(String),
    /// Cut short after making progress (a read): go on from there now, without counting.
    Progress(String),
    /// Final.
    Fail(ObjStoreError),
}

/// A client for one bucket. Shared between threads (`Arc<ObjStore>`): calls take `&self`.
pub struct ObjStore {
    bucket: Bucket,
    signer: rusty_s3::Credentials,
    http: http::Client,
    settings: Settings,
    /// Requests sent, retries included (for metrics and measurements).
    requests: AtomicU64,
}

impl std::fmt::Debug for ObjStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjStore")
            .field("bucket", &self.bucket.base_url().as_str())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl ObjStore {
    /// A client for `location` with the credentials in `credentials_file`
    /// ([`Credentials::load`]).
    pub fn open(
        location: &Location,
        credentials_file: &Path,
        settings: Settings,
    ) -> Result<ObjStore, ObjStoreError> {
        ObjStore::new(location, &Credentials::load(credentials_file)?, settings)
    }

    /// A client for `location`. Plain `http://` is taken only for a loopback host (a test
    /// engine, or a store on the same box); anything else is HTTPS with the `ca_file` or
    /// the system's roots. Sends nothing.
    pub fn new(
        location: &Location,
        credentials: &Credentials,
        settings: Settings,
    ) -> Result<ObjStore, ObjStoreError> {
        let bad =
            |why: String| ObjStoreError::Config(format!("endpoint {:?}: {why}", location.endpoint));
        let transport = match crate::config::parse_endpoint(&location.endpoint) {
            Ok(true) => http::Transport::Tls(client_tls(location.ca_file.as_deref())?),
            Ok(false) => http::Transport::Plain,
            Err(e) => return Err(ObjStoreError::Config(e)),
        };
        let endpoint: Url = location
            .endpoint
            .parse()
            .map_err(|e| bad(format!("not a URL ({e})")))?;
        if location.region.is_empty() || location.bucket.is_empty() {
            return Err(ObjStoreError::Config(
                "bucket and region must not be empty".into(),
            ));
        }
        let style = if location.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(
            endpoint.clone(),
            style,
            location.bucket.clone(),
            location.region.clone(),
        )
        .map_err(|e| ObjStoreError::Config(format!("bucket {:?}: {e}", location.bucket)))?;
        let base = bucket.base_url();
        let (Some(host), Some(port)) = (base.host_str(), base.port_or_known_default()) else {
            return Err(bad("has no host".into()));
        };
        // The Host field exactly as the signature covers it (rusty-s3 signs the URL's host,
        // with the port only when it is not the scheme's default).
        let host_field = match base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let timeouts = http::Timeouts {
            connect: settings.connect_timeout,
            io: settings.io_timeout,
            idle_keep: settings.idle_keep,
            max_idle: settings.max_idle,
        };
        Ok(ObjStore {
            http: http::Client::new(transport, host, port, host_field, timeouts),
            bucket,
            signer: credentials.signer(),
            settings,
            requests: AtomicU64::new(0),
        })
    }

    // -----------------------------------------------------------------------------------
    // The bucket
    // -----------------------------------------------------------------------------------

    /// Requests sent so far, retries included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Whether the bucket exists and our credentials reach it (`HeadBucket`).
    pub fn check(&self) -> Result<(), ObjStoreError> {
        const OP: &str = "head bucket";
        self.run(OP, "", |_| {
            let action = self.bucket.head_bucket(Some(&self.signer));
            self.send(OP, "", "HEAD", action.sign(SIGNATURE_LIFETIME), &[], &[], 0)?;
            Ok(())
        })
    }

    /// Creates the bucket (set-up and tests; the daemon never creates buckets).
    pub fn create_bucket(&self) -> Result<(), ObjStoreError> {
        let body = self.bucket.create_bucket(&self.signer).body();
        self.call_for_status(
            "create bucket",
            "",
            "PUT",
            || {
                self.bucket
                    .create_bucket(&self.signer)
                    .sign(SIGNATURE_LIFETIME)
            },
            &[],
            body.as_bytes(),
        )
    }

    // -----------------------------------------------------------------------------------
    // Calls
    // -----------------------------------------------------------------------------------

    /// A call whose answer says nothing beyond its status: `sign` gives each attempt its
    /// URL; the body is read away so the connection can serve the next call.
    fn call_for_status(
        &self,
        op: &'static str,
        key: &str,
        method: &'static str,
        sign: impl Fn() -> Url,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<(), ObjStoreError> {
        self.run(op, key, |_| {
            let mut r = self.send(op, key, method, sign(), headers, body, body.len() as u64)?;
            drain(&mut r);
            Ok(())
        })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry budget is spent.
    fn run<T>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: impl FnMut(u32) -> Result<T, Failure>,
    ) -> Result<T, ObjStoreError> {
        let policy = self.settings.retry;
        let mut stale_left = 1;
        let mut n = 0;
        loop {
            n += 1;
            let why = match attempt(n) {
                Ok(t) => return Ok(t),
                Err(Failure::Fail(e)) => return Err(e),
                Err(Failure::Progress(why)) => {
                    n -= 1;
                    log::debug!("{op} {key}: {why}; going on from there");
                    continue;
                }
                Err(Failure::Stale(why)) if stale_left > 0 => {
                    stale_left -= 1;
                    n -= 1;
                    log::debug!("{op} {key}: {why}; again on a new connection");
                    continue;
                }
                Err(Failure::Retry(why) | Failure::Stale(why)) => why,
            };
            if n >= policy.attempts.max(1) {
                return Err(ObjStoreError::Transient {
                    op,
                    key: key.to_string(),
                    attempts: n,
                    last: why,
                });
            }
            let wait = policy.delay(n);
            log::debug!("{op} {key}: attempt {n} failed ({why}); again in {wait:?}");
            std::thread::sleep(wait);
        }
    }

    /// Sends one signed request and returns the answer when it is a 2xx; classifies
    /// anything else. `transfer` is the body size either way, for the call's bound.
    // Each argument is a part of the request a caller spells out; a struct would only
    // rename them.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        op: &'static str,
        key: &str,
        method: &'static str,
        url: Url,
        headers: &[(&str, String)],
        body: &[u8],
        transfer: u64,
    ) -> Result<http::Response<'_>, Failure> {
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        let bound = self.settings.call_timeout
            + Duration::from_secs(transfer / self.settings.min_rate.max(1));
        let req = http::Request {
            method,
            target: &target,
            headers,
            body,
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut r = self
            .http
            .send(&req, Instant::now() + bound)
            .map_err(|e| match e {
                http::SendError::Stale(_) => Failure::Stale(e.to_string()),
                // A certificate the roots do not vouch for, or a name it does not carry,
                // is the storage's settings to fix, not a moment to wait out.
                http::SendError::Io(io) if tls_failure(&io).is_some() => {
                    Failure::Fail(ObjStoreError::Config(format!(
                        "TLS with {}: {}",
                        self.http.host_field,
                        tls_failure(&io).map_or(String::new(), |t| t.to_string())
                    )))
                }
                e => Failure::Retry(e.to_string()),
            })?;
        let status = r.status();
        if (200..300).contains(&status) {
            return Ok(r);
        }
        // A cut or missing error body still classifies by its status.
        let text = r.body_text(MAX_ANSWER).unwrap_or_default();
        let e = xml::s3_error(&text).unwrap_or_default();
        Err(self.classify(op, key, status, e))
    }

    fn classify(&self, op: &'static str, key: &str, status: u16, e: xml::S3Error) -> Failure {
        if retry::retryable(status, &e.code) {
            return Failure::Retry(
                format!("{status} {} {}", e.code, e.message)
                    .trim_end()
                    .to_string(),
            );
        }
        const AUTH: &[&str] = &[
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "RequestTimeTooSkewed",
            "ExpiredToken",
            "InvalidToken",
            "AuthorizationHeaderMalformed",
            "AuthorizationQueryParametersError",
        ];
        let key = key.to_string();
        Failure::Fail(if status == 403 || AUTH.contains(&e.code.as_str()) {
            ObjStoreError::Auth {
                op,
                key,
                code: e.code,
                message: e.message,
            }
        } else if status == 404 && e.code != "NoSuchUpload" && e.code != "NoSuchBucket" {
            ObjStoreError::NotFound { op, key }
        } else {
            ObjStoreError::Permanent {
                op,
                key,
                status,
                code: e.code,
                message: e.message,
            }
        })
    }
}

/// The TLS error behind an I/O error, when a handshake failed.
fn tls_failure(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Reads an answer's body as text (a cut one is worth a retry).
fn answer_text(r: &mut http::Response<'_>) -> Result<String, Failure> {
    r.body_text(MAX_ANSWER)
        .map_err(|e| Failure::Retry(format!("answer cut short: {e}")))
}

/// Reads an XML answer whose root element is `root`, refusing one cut short (module doc
/// of `xml`).
fn xml_answer(r: &mut http::Response<'_>, root: &str) -> Result<String, Failure> {
    let text = answer_text(r)?;
    if !xml::closed(&text, root) {
        return Err(Failure::Retry(format!(
            "answer cut short: no closing {root}"
        )));
    }
    Ok(text)
}

/// Reads what is left of a body we do not need, so the connection can serve the next
/// request; if that fails the connection is simply not reused.
fn drain(r: &mut http::Response<'_>) {
    let _ = io::copy(&mut r.take(MAX_ANSWER), &mut io::sink());
}

/// `NoSuchUpload` as [`ObjStoreError::UploadGone`].
fn gone_if_no_upload<T>(
    r: Result<T, ObjStoreError>,
    key: &Key,
    upload_id: &str,
) -> Result<T, ObjStoreError> {
    match r {
        Err(ObjStoreError::Permanent { code, .. }) if code == "NoSuchUpload" => {
            Err(ObjStoreError::UploadGone {
                key: key.to_string(),
                upload_id: upload_id.to_string(),
            })
        }
        other => other,
    }
}

fn corrupt(op: &'static str, key: &str, what: String) -> ObjStoreError {
    ObjStoreError::Corrupt {
        op,
        key: key.to_string(),
        what,
    }
}

/// An ETag without its quotes (and without a weak `W/` mark).
fn unquote(tag: &str) -> String {
    tag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

/// A SHA-256 as 64 hex digits (surrounding blanks ignored).
fn parse_digest(text: &str) -> Option<[u8; 32]> {
    hex::decode_array(text.trim())
}

/// `bytes first-last/total` (total may be `*`).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    if last < first {
        return None;
    }
    Some((first, last, total.parse().ok()))
}

/// The client TLS config: the storage's CA file, or the system's bundle.
fn client_tls(
    ca_file: Option<&Path>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ObjStoreError> {
    let read = |path: &Path| {
        fsx::read_regular_nofollow(path, MAX_CA_FILE)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let (source, pem) = match ca_file {
        Some(path) => (
            path.display().to_string(),
            read(path).ok_or_else(|| {
                ObjStoreError::Config(format!(
                    "ca_file {}: not a readable PEM file",
                    path.display()
                ))
            })?,
        ),
        None => {
            let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            let found = from_env
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                // System bundles are often symlinks; resolving them here is what every
                // TLS library does.
                .find_map(|p| {
                    std::fs::canonicalize(&p)
                        .ok()
                        .and_then(|real| read(&real))
                        .map(|pem| (p, pem))
                });
            let (path, pem) = found.ok_or_else(|| {
                ObjStoreError::Config(format!(
                    "no system CA bundle found (tried {}); set ca_file",
                    SYSTEM_BUNDLES.join(", ")
                ))
            })?;
            (path.display().to_string(), pem)
        }
    };
    tls::object_store_client_config(&pem)
        .map_err(|e| ObjStoreError::Config(format!("CA certificates in {source}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(endpoint: &str) -> Location {
        Location {
            endpoint: endpoint.into(),
            bucket: "backups".into(),
            region: "us-east-1".into(),
            path_style: true,
            ca_file: None,
        }
    }

    #[test]
    fn plain_http_is_taken_only_for_loopback_hosts() {
        let creds = Credentials::new("AK", "secret");
        for ok in [
            "http://127.0.0.1:8333",
            "http://[::1]:9000",
            "http://localhost:9000/s3",
        ] {
            ObjStore::new(&location(ok), &creds, Settings::default()).unwrap();
        }
        for bad in [
            "http://10.0.0.5:9000",
            "http://s3.example.com",
            "ftp://127.0.0.1",
            "https://user:pw@s3.example.com",
            "https://s3.example.com/?x=1",
            "not a url",
        ] {
            let e = ObjStore::new(&location(bad), &creds, Settings::default()).unwrap_err();
            assert!(matches!(e, ObjStoreError::Config(_)), "{bad}: {e:?}");
        }
        let e = ObjStore::new(
            &location("http://10.0.0.5:9000"),
            &creds,
            Settings::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn https_uses_the_ca_file_or_the_system_bundle() {
        let creds = Credentials::new("AK", "secret");
        let mut loc = location("https://s3.example.com");
        loc.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(
            ObjStore::new(&loc, &creds, Settings::default()),
            Err(ObjStoreError::Config(m)) if m.contains("/nonexistent/ca.pem")
        ));
        let system = SYSTEM_BUNDLES.iter().any(|p| Path::new(p).exists());
        let r = ObjStore::new(
            &location("https://s3.example.com"),
            &creds,
            Settings::default(),
        );
        assert_eq!(r.is_ok(), system, "{r:?}");
    }

    #[test]
    fn content_ranges_and_digests_parse_strictly() {
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((0, 9, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 9-0/100"), None);
        assert_eq!(parse_content_range("items 0-9/100"), None);
        let hex = "ab".repeat(32);
        assert_eq!(parse_digest(&hex), Some([0xab; 32]));
        assert_eq!(parse_digest("ab"), None);
        assert_eq!(parse_digest(&"zz".repeat(32)), None);
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("W/\"abc\""), "abc");
    }

    /// `check-config` reads the credentials file: missing or readable by others fails,
    /// naming the key and never quoting the secret.
    #[test]
    fn check_storages_reads_the_credentials_file_which_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("replgate-s3-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let creds = dir.join("s3.toml");
        let text = format!(
            "[[storage]]\nid = 4\nkind = \"s3\"\nendpoint = \"https://s3.example.net\"\n\
             bucket = \"replgate-b\"\ncredentials_file = {:?}\ncapacity_mb = 100\n",
            creds.display()
        );
        let c = crate::config::Config::from_toml(&text, std::iter::empty()).unwrap();
        let e = check_storages(&c.storage).unwrap_err();
        assert!(
            e.starts_with("storage[0]: ") && e.contains("credentials file"),
            "{e}"
        );
        std::fs::write(
            &creds,
            "access_key_id = \"AK\"\nsecret_access_key = \"sekrit-1\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_storages(&c.storage).unwrap_err();
        assert!(e.contains("chmod 600") && !e.contains("sekrit"), "{e}");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_storages(&c.storage).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
