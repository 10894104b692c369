//! Systems (target side): the rows of the appliances known here, paired sources among
//! them, and their reads and writes. Ids come from a counter that never goes back.

use serde::{Deserialize, Serialize};

use super::access::{get, values, Tables};
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
}

fn system(tx: &impl Tables, id: u64) -> Result<Option<SystemRecord>> {
    get(tx, schema::SYSTEMS, id)
}

fn systems(tx: &impl Tables) -> Result<Vec<SystemRecord>> {
    values(tx, schema::SYSTEMS)
}

impl Store {
    pub fn system(&self, id: u64) -> Result<Option<SystemRecord>> {
        system(&self.snapshot()?, id)
    }

    pub fn systems(&self) -> Result<Vec<SystemRecord>> {
        systems(&self.snapshot()?)
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
        self.put(schema::SYSTEMS, s.id, s)
    }

    pub fn delete_system(&self, id: u64) -> Result<bool> {
        self.remove(schema::SYSTEMS, id)
    }

    /// A fresh system id. Ids are never reused, even after an unpair deleted the row, so a
    /// stale `sid` in a script can never name another source.
    pub fn next_system_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::SYSTEMS, FIRST_SYSTEM_ID)?;
        self.take_id(schema::META_NEXT_SYSTEM_ID, floor.max(FIRST_SYSTEM_ID))
    }
}
