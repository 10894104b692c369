//! `/replication/v1` wire types, shared by the target's handlers and the source's client,
//! and the spool's names: the token format and the three file names it may serve.

use serde::{Deserialize, Serialize};

use crate::model::UnixTime;
use crate::wire::token::PairingToken;

pub const STATUS_FILE: &str = "status.json";
pub const CERT_FILE: &str = "certificate.pem";
pub const CA_FILE: &str = "ca.pem";

/// Whether `s` is a `system_uuid` as sources send it: a UUID in its canonical text,
/// 8-4-4-4-12 lowercase hexadecimal digits (a target lowercases what it is sent). Received
/// backups are stored under a directory of this name, so nothing else may pass: a name
/// such as `web01` would land beside the target's own client directories.
pub fn is_system_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// `POST /replication/v1/requests` body, as a source sends it. The target parses the
/// same fields one by one (`api::body`), so it can name the one that is wrong.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RequestBody<'a> {
    pub system_uuid: &'a str,
    pub name: &'a str,
    pub host: &'a str,
    /// The source's asset tag; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<&'a str>,
    pub version: &'a str,
    pub csr: &'a str,
    /// The storage on the target the source asks for; absent when it names none (an
    /// older target ignores the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<u64>,
    /// A pairing token (`<id>.<secret>`, SPEC 13): with a valid one the target accepts at
    /// once. Absent when the admin gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<&'a PairingToken>,
}

/// `POST /replication/v1/requests` answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filed {
    pub request_id: u64,
    pub poll: String,
    pub retry_after: u64,
    pub expires: UnixTime,
    pub verification_code: String,
    pub ca_fingerprint: String,
    /// `pending`, or `accepted` when a pairing token let the request in at once. Absent
    /// from older targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The lost source this request took over, when a pairing token bound to it let the
    /// request in at once (SPEC 20). Absent otherwise and from older targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_system_id: Option<u64>,
}

/// `status.json`: what the source learns by polling.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum SpoolStatus {
    Pending {
        retry_after: u64,
        expires: UnixTime,
    },
    Accepted {
        certificate: String,
        ca: String,
        tunnel: String,
        /// The lost source this appliance took over on the target (SPEC 20); absent for
        /// an ordinary pairing and from older targets.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces_system_id: Option<u64>,
    },
    Rejected {
        message: String,
    },
    Expired,
    Revoked,
}

/// A spool directory name: exactly 32 lowercase hex digits (128 random bits). Parsed
/// before any path is built, so no path trick survives to the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoolToken(String);

impl SpoolToken {
    pub const LEN: usize = 32;

    pub fn parse(s: &str) -> Option<SpoolToken> {
        (s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| SpoolToken(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The only names the spool serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpoolFile {
    Status,
    Certificate,
    Ca,
}

impl SpoolFile {
    pub fn parse(s: &str) -> Option<SpoolFile> {
        match s {
            STATUS_FILE => Some(SpoolFile::Status),
            CERT_FILE => Some(SpoolFile::Certificate),
            CA_FILE => Some(SpoolFile::Ca),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SpoolFile::Status => STATUS_FILE,
            SpoolFile::Certificate => CERT_FILE,
            SpoolFile::Ca => CA_FILE,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            SpoolFile::Status => "application/json",
            SpoolFile::Certificate | SpoolFile::Ca => "application/x-pem-file",
        }
    }
}

/// `GET /tunnel/v1/hello` answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub system_id: u64,
    pub system_uuid: String,
    pub storage_id: Option<u64>,
    pub storage_name: Option<String>,
}

/// `POST /tunnel/v1/renew` body: a CSR for the source's new key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenewBody<'a> {
    pub csr: &'a str,
}

/// `POST /tunnel/v1/renew` answer: the renewed certificate (PEM), its serial and end.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Renewal {
    pub certificate: String,
    pub serial: String,
    pub not_after: i64,
}

/// `GET /tunnel/v1/ca` and `GET /replication/v1/ca` answer (SPEC 22): the target's CAs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaAnswer {
    /// `idle`, or `rolling` while a CA rollover is in progress.
    pub phase: String,
    /// The CA in force (PEM): the one sources pin.
    pub ca: String,
    /// Its SHA-256 fingerprint.
    pub fingerprint: String,
    /// During a rollover: the new CA (PEM)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// ...and the cross-certificate by which `ca` endorses it (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross: Option<String>,
    /// The cross-certificates of finished rollovers, oldest first (PEM).
    #[serde(default)]
    pub endorsements: Vec<String>,
    /// Tunnel only: the certificate of this connection was not issued by the CA that
    /// signs now; renew at once.
    #[serde(default)]
    pub renew: bool,
}

/// `GET /tunnel/v1/restore` answer: the copies a target holds for the calling source, in
/// its current storage (SPEC 20). A source treats every field as hostile input.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreListing {
    pub backups: Vec<RestoreEntry>,
}

/// One copy a target holds: its name (`<client>/<file>`), size and SHA-256 (hex).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestoreEntry {
    pub backup: String,
    pub size: u64,
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_uuid_is_a_canonical_lowercase_uuid() {
        assert!(is_system_uuid("11111111-2222-4333-8444-555555555555"));
        assert!(is_system_uuid("0f0e0d0c-0b0a-0908-0706-050403020100"));
        for bad in [
            "web01",
            "",
            "11111111-2222-4333-8444-55555555555",
            "11111111-2222-4333-8444-5555555555555",
            "11111111222243338444555555555555",
            "11111111-2222-4333-8444_555555555555",
            "1111111g-2222-4333-8444-555555555555",
            "11111111-2222-4333-8444-55555555555A",
            "-1111111-2222-4333-8444-555555555555",
        ] {
            assert!(!is_system_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn spool_tokens_accept_exactly_32_lowercase_hex() {
        assert!(SpoolToken::parse("0123456789abcdef0123456789abcdef").is_some());
        for bad in [
            "",
            "..",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef/123456789abcdef",
            "%2e%2e456789abcdef0123456789abcd",
        ] {
            assert!(SpoolToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn only_three_file_names_are_served() {
        assert_eq!(SpoolFile::parse("status.json"), Some(SpoolFile::Status));
        for bad in [
            "",
            ".",
            "..",
            "status.json.tmp",
            "STATUS.JSON",
            "ca.key",
            "../ca.key",
        ] {
            assert!(SpoolFile::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn spool_status_has_the_documented_shape() {
        let s = serde_json::to_value(SpoolStatus::Rejected {
            message: "no".into(),
        })
        .unwrap();
        assert_eq!(
            s,
            serde_json::json!({"status": "rejected", "message": "no"})
        );
        let s = serde_json::to_value(SpoolStatus::Expired).unwrap();
        assert_eq!(s, serde_json::json!({"status": "expired"}));
    }
}
