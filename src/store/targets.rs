//! Targets (source side): the appliances this one asked to replicate to, each row the
//! state of one pairing and its installed key generation, and their reads and writes.

use serde::{Deserialize, Serialize};

use super::access::{get, values, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::UnixTime;

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
    /// The lost source this appliance took over on the target (its system id there), as
    /// the target's `accepted` answer said (SPEC 20): its copies are this pairing's now.
    #[serde(default)]
    pub took_over: Option<u64>,
    /// This target's `compression` setting (`auto`, `off`, `zstd:<level>`), checked when
    /// set; None: the daemon's `compression` key.
    #[serde(default)]
    pub compression: Option<String>,
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
            took_over: None,
            compression: None,
        }
    }
}

fn targets(tx: &impl Tables) -> Result<Vec<TargetRecord>> {
    values(tx, schema::TARGETS)
}

fn target(tx: &impl Tables, id: u64) -> Result<Option<TargetRecord>> {
    get(tx, schema::TARGETS, id)
}

impl Store {
    pub fn targets(&self) -> Result<Vec<TargetRecord>> {
        targets(&self.snapshot()?)
    }

    pub fn target(&self, id: u64) -> Result<Option<TargetRecord>> {
        target(&self.snapshot()?, id)
    }
}

impl Txn {
    pub fn targets(&self) -> Result<Vec<TargetRecord>> {
        targets(&self.inner)
    }

    pub fn target(&self, id: u64) -> Result<Option<TargetRecord>> {
        target(&self.inner, id)
    }

    pub fn put_target(&self, r: &TargetRecord) -> Result<()> {
        let counted = |t: &TargetRecord| (t.status, t.certificate_starts, t.certificate_expires);
        if target(&self.inner, r.id)?.is_none_or(|old| counted(&old) != counted(r)) {
            self.certificates_changed();
        }
        self.put(schema::TARGETS, r.id, r)
    }

    pub fn delete_target(&self, id: u64) -> Result<bool> {
        self.certificates_changed();
        self.remove(schema::TARGETS, id)
    }

    /// A fresh target id, never reused (the poller keys its schedule by it).
    pub fn next_target_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::TARGETS, 1)?;
        self.take_id(schema::META_NEXT_TARGET_ID, floor)
    }
}
