//! Stored records: what the database holds, separate from the wire types even where the
//! fields match today. Integers are fixed width (`i64` times, `u64` ids), never `usize`.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Privilege, Role, UnixTime};
use crate::wire::protocol::{SpoolStatus, CA_FILE, CERT_FILE};

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub privilege: Privilege,
    pub created: UnixTime,
    pub updated: UnixTime,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password_hash", &"…")
            .field("privilege", &self.privilege)
            .finish()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub user: String,
    pub created: UnixTime,
    /// Refreshed at most once a minute, so reads do not turn into a write each.
    pub last_used: UnixTime,
    /// A scraper's token (`POST /api/metrics/token`): never expires, and acts with at most
    /// `monitor` privilege whatever its user's. Ends with a logout, a password change or
    /// the user's removal, like any session.
    #[serde(default)]
    pub scraper: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub time: UnixTime,
    /// Who: a user name, or `-` for an unauthenticated peer (a pairing request).
    pub user: String,
    /// The peer's address as the TLS front saw it.
    pub address: String,
    /// What, as a short verb phrase: `login`, `login failed`, `user created`, ...
    pub action: String,
    /// To what: `user:alice`, `request:17`, `system:3`.
    pub object: String,
    #[serde(default)]
    pub detail: String,
}

/// Where a pairing request stands. Stored as a lowercase string.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Accepted,
    Rejected,
    /// Its time ran out before anyone decided.
    Expired,
    /// An admin dropped it silently; the source sees `expired`.
    Ignored,
    /// Accepted once, then unpaired or replaced.
    Revoked,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Accepted => "accepted",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Expired => "expired",
            RequestStatus::Ignored => "ignored",
            RequestStatus::Revoked => "revoked",
        }
    }
}

/// A pairing request filed by a source (target side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestRecord {
    pub id: u64,
    pub system_uuid: String,
    pub name: String,
    pub host: String,
    #[serde(default)]
    pub asset_tag: Option<String>,
    pub version: String,
    pub csr_pem: String,
    /// SHA-256 of the CSR's SubjectPublicKeyInfo: the key's identity for idempotency.
    pub csr_fingerprint: String,
    pub remote_addr: String,
    /// The spool directory name: 128 random bits as 32 lowercase hex digits.
    pub token: String,
    pub verification_code: String,
    pub created: UnixTime,
    pub expires: UnixTime,
    pub status: RequestStatus,
    /// Invariant: Some when status is Rejected (the admin's text).
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub resolved_at: Option<UnixTime>,
    #[serde(default)]
    pub resolved_by: Option<String>,
    /// The systems row this source already had when it filed (a new key for a paired source).
    #[serde(default)]
    pub replaces_system_id: Option<u64>,
    /// Invariant: Some from acceptance on.
    #[serde(default)]
    pub system_id: Option<u64>,
    /// Invariant: Some from acceptance on: the issued certificate's serial (lowercase hex).
    #[serde(default)]
    pub cert_serial: Option<String>,
    /// The storage on this appliance that the source asked for; an accept that names no
    /// storage uses it.
    #[serde(default)]
    pub requested_storage_id: Option<u64>,
    /// The id of the pairing token it was filed with; such a request is accepted at once.
    #[serde(default)]
    pub pairing_token: Option<String>,
}

impl RequestRecord {
    /// The `status.json` a source polls for this request, given the target's poll wait and
    /// tunnel address. An ignored request shows as `expired`: an admin's silent drop must
    /// look to the source like a request whose time ran out.
    pub fn spool_status(&self, retry_after: u64, tunnel: &str) -> SpoolStatus {
        match self.status {
            RequestStatus::Pending => SpoolStatus::Pending {
                retry_after,
                expires: self.expires,
            },
            RequestStatus::Accepted => SpoolStatus::Accepted {
                certificate: CERT_FILE.into(),
                ca: CA_FILE.into(),
                tunnel: tunnel.into(),
            },
            RequestStatus::Rejected => SpoolStatus::Rejected {
                message: self.message.clone().unwrap_or_default(),
            },
            RequestStatus::Expired | RequestStatus::Ignored => SpoolStatus::Expired,
            RequestStatus::Revoked => SpoolStatus::Revoked,
        }
    }
}

#[cfg(test)]
impl RequestRecord {
    /// The one test fixture of a request: pending, with plausible placeholder fields. A
    /// test changes what it is about: `RequestRecord { token, ..RequestRecord::fixture(1) }`.
    pub fn fixture(id: u64) -> RequestRecord {
        RequestRecord {
            id,
            system_uuid: "11111111-2222-4333-8444-555555555555".into(),
            name: "src".into(),
            host: "src.example".into(),
            asset_tag: None,
            version: "1.0".into(),
            csr_pem: String::new(),
            csr_fingerprint: "cd".repeat(32),
            remote_addr: "127.0.0.1".into(),
            token: "0123456789abcdef0123456789abcdef".into(),
            verification_code: "123-456".into(),
            created: 0,
            expires: 10,
            status: RequestStatus::Pending,
            message: None,
            resolved_at: None,
            resolved_by: None,
            replaces_system_id: None,
            system_id: None,
            cert_serial: None,
            requested_storage_id: None,
            pairing_token: None,
        }
    }
}

/// A [`RequestRecord`] as lists show it, decoded from the same stored bytes but borrowing
/// its strings from them (a `Cow` is owned only when the JSON string has escapes) and
/// skipping the CSR, which is most of a record and only signing needs. Decoding full
/// records was the largest cost of listing 10,000 requests (see BENCHMARKS.md).
///
/// Invariant: every field has the name and type of its twin in [`RequestRecord`]; the
/// test `summary_decodes_what_a_record_encodes` holds them together.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RequestSummary<'a> {
    pub id: u64,
    #[serde(borrow)]
    pub system_uuid: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub host: Cow<'a, str>,
    #[serde(default, borrow)]
    pub asset_tag: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub version: Cow<'a, str>,
    #[serde(borrow)]
    pub csr_fingerprint: Cow<'a, str>,
    #[serde(borrow)]
    pub remote_addr: Cow<'a, str>,
    #[serde(borrow)]
    pub verification_code: Cow<'a, str>,
    pub created: UnixTime,
    pub expires: UnixTime,
    pub status: RequestStatus,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    #[serde(default)]
    pub resolved_at: Option<UnixTime>,
    #[serde(default)]
    pub replaces_system_id: Option<u64>,
    #[serde(default)]
    pub system_id: Option<u64>,
    #[serde(default)]
    pub requested_storage_id: Option<u64>,
}

/// What the open-request index keeps, so caps and expiry need no record decode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenRequest {
    pub system_uuid: String,
    pub csr_fingerprint: String,
    pub remote_addr: String,
    pub expires: UnixTime,
}

/// A row of the systems table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SystemRecord {
    pub id: u64,
    pub name: String,
    pub host: String,
    /// Stored as the appliance API's string (`Managed DPU`, `Replication Source`,
    /// `Non-Managed Replication Source`).
    pub role: Role,
    #[serde(default)]
    pub system_uuid: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub storage_id: Option<u64>,
    pub created: UnixTime,
    pub updated: UnixTime,
    /// The certificate that currently lets this source open the tunnel.
    #[serde(default)]
    pub cert_serial: Option<String>,
    #[serde(default)]
    pub certificate_expires: Option<UnixTime>,
    /// The last successful tunnel hello.
    #[serde(default)]
    pub last_seen: Option<UnixTime>,
    /// True when the row was a managed system before it became a replication source, so
    /// unpairing returns it to `Managed DPU` instead of dropping it.
    #[serde(default)]
    pub was_managed: bool,
    #[serde(default)]
    pub request_id: Option<u64>,
    /// The appliance's asset tag, as the source reported it (or as registered).
    #[serde(default)]
    pub asset_tag: Option<String>,
    /// The most this source may store here, in MB (MiB, as every `mb_` size of the API);
    /// None means no quota.
    #[serde(default)]
    pub quota_mb: Option<u64>,
}

/// A certificate this appliance's CA issued to a source.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertRecord {
    pub serial: String,
    /// The request whose acceptance began this certificate's line (renewals keep it).
    pub request_id: u64,
    pub system_id: u64,
    pub subject: String,
    pub issued_at: UnixTime,
    pub not_after: UnixTime,
    pub pem: String,
    #[serde(default)]
    pub revoked_at: Option<UnixTime>,
    /// Its place in the system's lineage (1 for the first); 0 only in records written
    /// before lineages, which the migration numbers.
    #[serde(default)]
    pub generation: u64,
    /// The serial this certificate renewed (issued over the tunnel), if any.
    #[serde(default)]
    pub renews: Option<String>,
    /// When a renewal issued its successor; it stays valid through the grace window.
    #[serde(default)]
    pub superseded_at: Option<UnixTime>,
    /// When its grace ended (or the first hello with the successor ended it).
    #[serde(default)]
    pub retired_at: Option<UnixTime>,
}

impl CertRecord {
    /// Neither revoked nor retired: the handshake accepts it (while it is in date).
    pub fn is_live(&self) -> bool {
        self.revoked_at.is_none() && self.retired_at.is_none()
    }
}

/// Where a pairing with a target stands (source side). Stored as a lowercase string.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetStatus {
    /// Filed; waiting for the target's admin.
    Pending,
    /// Certificate checked and installed; the tunnel is not proven yet.
    Accepted,
    /// The tunnel answered a hello with our certificate.
    Complete,
    Rejected,
    Expired,
    Revoked,
    /// A check failed; `message` says which. Retried at the next poll.
    Failed,
}

impl TargetStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetStatus::Pending => "pending",
            TargetStatus::Accepted => "accepted",
            TargetStatus::Complete => "complete",
            TargetStatus::Rejected => "rejected",
            TargetStatus::Expired => "expired",
            TargetStatus::Revoked => "revoked",
            TargetStatus::Failed => "failed",
        }
    }

    /// Nothing more will change without a new request.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TargetStatus::Rejected | TargetStatus::Expired | TargetStatus::Revoked
        )
    }
}

/// A target this appliance asked to replicate to (source side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetRecord {
    pub id: u64,
    /// `host:port` of the target's API, as the admin gave it (port defaulted).
    pub host: String,
    pub status: TargetStatus,
    #[serde(default)]
    pub message: Option<String>,
    pub created: UnixTime,
    pub updated: UnixTime,
    #[serde(default)]
    pub last_poll: Option<UnixTime>,
    /// The pinned CA: its SHA-256 fingerprint and PEM. Only this CA is trusted for the target.
    pub ca_fingerprint: String,
    pub ca_pem: String,
    pub request_id: u64,
    /// Path of the spool directory on the target, ending in `/`.
    pub poll: String,
    pub verification_code: String,
    /// Directory under `<data_dir>/targets/` holding this pairing's key and certificates.
    pub dir: String,
    /// Seconds the target asked us to wait between polls.
    #[serde(default)]
    pub retry_after: u64,
    /// `host:port` of the target's tunnel, from its `accepted` status.
    #[serde(default)]
    pub tunnel: Option<String>,
    #[serde(default)]
    pub certificate_expires: Option<UnixTime>,
    #[serde(default)]
    pub cert_serial: Option<String>,
    /// Where to connect instead of resolving `host` (`ip:port`, the admin's `ip`); the
    /// pairing keeps it for every poll.
    #[serde(default)]
    pub address: Option<String>,
    /// The key generation installed (see `identity`): its key and `cert_serial`'s
    /// certificate are what the tunnel is opened with. Invariant: its files exist and match
    /// whenever `cert_serial` is Some.
    #[serde(default)]
    pub generation: u64,
    /// The key generation filed with `request_id`; the spool's certificate installs there.
    /// Above `generation` while a new request (after an expired certificate) is open.
    #[serde(default)]
    pub request_generation: u64,
    /// A key made to replace the installed one (for a renewal over the tunnel, or for a
    /// new request after the certificate expired): its generation, recorded before its
    /// CSR leaves, so that a retry after a crash or a lost answer asks for the same key.
    #[serde(default)]
    pub next_key: Option<u64>,
    /// The generation `generation` replaced, kept until the new one is proven in a hello.
    #[serde(default)]
    pub previous_generation: Option<u64>,
    /// Start of the installed certificate's validity (its renewal is planned from it).
    #[serde(default)]
    pub certificate_starts: Option<UnixTime>,
    /// When the installed certificate was renewed over the tunnel, if it was.
    #[serde(default)]
    pub renewed: Option<UnixTime>,
}

impl TargetRecord {
    /// The `host:port` to connect to for the target's API.
    pub fn connect_to(&self) -> &str {
        self.address.as_deref().unwrap_or(&self.host)
    }

    /// Whether the certificate for `request_id` is installed (a later renewal counts).
    pub fn is_installed(&self) -> bool {
        self.cert_serial.is_some() && self.generation >= self.request_generation
    }

    /// A new request is open because the installed certificate expired.
    pub fn is_repairing(&self) -> bool {
        self.cert_serial.is_some() && self.request_generation > self.generation
    }

    /// The generation a new key takes: past every one this row knows.
    pub fn fresh_generation(&self) -> u64 {
        self.generations_in_use().last().copied().unwrap_or(0) + 1
    }

    /// The generations whose files this row still needs: the installed one, the one its
    /// open request was filed with (until that is installed), a key made to replace them,
    /// and a replaced one not yet proven gone.
    pub fn generations_in_use(&self) -> Vec<u64> {
        let mut keep = vec![self.generation];
        if !self.is_installed() {
            keep.push(self.request_generation);
        }
        keep.extend(self.next_key);
        keep.extend(self.previous_generation);
        keep.sort_unstable();
        keep.dedup();
        keep
    }
}

#[cfg(test)]
impl TargetRecord {
    /// The one test fixture of a target row: pending, nothing installed.
    pub fn fixture(id: u64) -> TargetRecord {
        TargetRecord {
            id,
            host: "t:8443".into(),
            status: TargetStatus::Pending,
            message: None,
            created: 0,
            updated: 0,
            last_poll: None,
            ca_fingerprint: "f".into(),
            ca_pem: String::new(),
            request_id: 1,
            poll: "/p/".into(),
            verification_code: "1-2".into(),
            dir: "d".into(),
            retry_after: 0,
            tunnel: None,
            certificate_expires: None,
            cert_serial: None,
            address: None,
            generation: 0,
            request_generation: 0,
            next_key: None,
            previous_generation: None,
            certificate_starts: None,
            renewed: None,
        }
    }
}
