//! What can go wrong talking to an object store, grouped by what the caller does about it.

use std::fmt;

/// Why an object-store operation failed. Each variant is something a caller acts on
/// differently: fix the settings, treat as absent, start the upload again, try later, or
/// stop trusting what the store holds.
#[derive(Debug)]
pub enum ObjStoreError {
    /// The storage's settings cannot work (endpoint, plain HTTP to a host that is not
    /// loopback, CA file, credentials file, a part size out of range). Nothing was sent.
    Config(String),
    /// The object (or bucket) does not exist.
    NotFound { op: &'static str, key: String },
    /// The multipart upload is gone (aborted, by a sweep for example, or completed into
    /// an object that is not ours): start the upload again.
    UploadGone { key: String, upload_id: String },
    /// The store refused our identity: unknown key, bad signature, access denied, clock
    /// skew (403 and friends). Retrying does not help; the admin must.
    Auth {
        op: &'static str,
        key: String,
        code: String,
        message: String,
    },
    /// Still failing after the retry budget: 5xx, `SlowDown`, resets, timeouts, truncated
    /// answers. Nothing is lost; try again later.
    Transient {
        op: &'static str,
        key: String,
        attempts: u32,
        last: String,
    },
    /// A refusal that a retry would not change (a 4xx other than the above).
    Permanent {
        op: &'static str,
        key: String,
        status: u16,
        code: String,
        message: String,
    },
    /// What the store holds or answered contradicts what we know: a part that changed
    /// under a resume, a completed object of the wrong size or upload, a range answered
    /// with other bytes. The data there must not be trusted.
    Corrupt {
        op: &'static str,
        key: String,
        what: String,
    },
}

impl ObjStoreError {
    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjStoreError::Transient { .. })
    }
}

impl fmt::Display for ObjStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjStoreError::Config(what) => write!(f, "object store settings: {what}"),
            ObjStoreError::NotFound { op, key } => write!(f, "{op} {key}: not found"),
            ObjStoreError::UploadGone { key, upload_id } => {
                write!(f, "multipart upload {upload_id} of {key} is gone")
            }
            ObjStoreError::Auth {
                op,
                key,
                code,
                message,
            } => write!(f, "{op} {key}: refused ({code}): {message}"),
            ObjStoreError::Transient {
                op,
                key,
                attempts,
                last,
            } => write!(
                f,
                "{op} {key}: still failing after {attempts} attempts: {last}"
            ),
            ObjStoreError::Permanent {
                op,
                key,
                status,
                code,
                message,
            } => write!(f, "{op} {key}: refused with {status} {code}: {message}"),
            ObjStoreError::Corrupt { op, key, what } => write!(f, "{op} {key}: {what}"),
        }
    }
}

impl std::error::Error for ObjStoreError {}
