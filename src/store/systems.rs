//! Systems (target side): the rows of the appliances known here, paired sources among
//! them, and their reads and writes. Ids come from a counter that never goes back.

use serde::{Deserialize, Serialize};

use super::access::{get, values, values_page, Tables};
use super::{schema, Result, Store, Txn};
use crate::model::{Role, UnixTime};

/// The first id handed to a stored system; id 1 is the local appliance.
pub const FIRST_SYSTEM_ID: u64 = 2;

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
    /// The serial of the certificate that last said hello: what the source holds (a CA
    /// rollover counts a source as moved once it was seen with its new-chain certificate).
    #[serde(default)]
    pub last_serial: Option<String>,
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
    /// This source's weight in the sharing of receiving sessions (SPEC 21); None is 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u32>,
    /// The uuid under which this source's copies are kept (`<storage>/<uuid>/`, the
    /// received records) when it replaced another appliance and took over its copies
    /// (SPEC 20); None: its own `system_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies_uuid: Option<String>,
    /// What the target keeps of this source's received backups (SPEC 20); None keeps all.
    #[serde(default)]
    pub retention: Option<Retention>,
}

/// A source's retention policy on the target: a received backup is kept while any rule
/// that is set keeps it (`replication::retention` applies it). A policy with no rule set
/// is stored as no policy (keep all).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest this many backups of each client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep backups received within this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_days: Option<u32>,
}

impl Retention {
    /// The policy, or None when it keeps everything (no rule set).
    pub fn normalized(self) -> Option<Retention> {
        (self.keep_last.is_some() || self.keep_days.is_some()).then_some(self)
    }
}

/// A source's weight in the sharing of receiving sessions when none is set, and the
/// largest one may set (`share`, SPEC 21).
pub const DEFAULT_SHARE: u32 = 1;
pub const MAX_SHARE: u32 = 100;

impl SystemRecord {
    /// This source's weight in the sharing of receiving sessions.
    pub fn share(&self) -> u32 {
        self.share.unwrap_or(DEFAULT_SHARE)
    }

    /// The uuid this source's copies are kept under: inherited, or its own.
    pub fn copies_uuid(&self) -> Option<&str> {
        self.copies_uuid.as_deref().or(self.system_uuid.as_deref())
    }
}

fn system(tx: &impl Tables, id: u64) -> Result<Option<SystemRecord>> {
    get(tx, schema::SYSTEMS, id)
}

pub(super) fn systems(tx: &impl Tables) -> Result<Vec<SystemRecord>> {
    values(tx, schema::SYSTEMS)
}

impl Store {
    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        system(&self.snapshot()?, id)
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        systems(&self.snapshot()?)
    }

    /// At most `limit` systems in id order after the first `skip` (a page of
    /// `GET /api/systems`): only those rows are decoded.
    pub fn systems_page(&self, skip: u64, limit: usize) -> Result<Vec<SystemRecord>> {
        values_page(&self.snapshot()?, schema::SYSTEMS, skip, limit)
    }
}

impl Txn {
    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        system(&self.inner, id)
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        systems(&self.inner)
    }

    pub fn put_system(&self, s: &SystemRecord) -> Result<()> {
        let counted = |r: &SystemRecord| {
            (
                r.role,
                r.name.clone(),
                r.cert_serial.clone(),
                r.last_serial.clone(),
                r.certificate_expires,
            )
        };
        if system(&self.inner, s.id)?.is_none_or(|old| counted(&old) != counted(s)) {
            self.certificates_changed();
        }
        self.put(schema::SYSTEMS, s.id, s)
    }

    pub fn delete_system(&self, id: u64) -> Result<bool> {
        self.certificates_changed();
        self.remove(schema::SYSTEMS, id)
    }

    /// A fresh system id. Ids are never reused, even after an unpair deleted the row, so a
    /// stale `sid` in a script can never name another source.
    pub fn next_system_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::SYSTEMS, FIRST_SYSTEM_ID)?;
        self.take_id(schema::META_NEXT_SYSTEM_ID, floor.max(FIRST_SYSTEM_ID))
    }
}
