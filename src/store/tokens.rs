//! Pairing tokens in the database (target side, SPEC 13): the record and typed access.
//! The secret is never stored, only the SHA-256 of the whole token; the rules (status,
//! binding, uses) live in `pairing::tokens`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{access, schema, Result, Store, Txn};
use crate::model::UnixTime;

/// A pairing token a target's admin issued.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// 12 lowercase hex digits; the public half of `<id>.<secret>`.
    pub id: String,
    /// SHA-256 of the whole token text, lowercase hex. Compared in constant time.
    pub secret_hash: String,
    pub created: UnixTime,
    /// The admin who issued it.
    pub created_by: String,
    pub expires: UnixTime,
    /// How many requests it may let in.
    pub uses: u32,
    /// How many it has let in. Invariant: `used <= uses`.
    pub used: u32,
    #[serde(default)]
    pub last_used: Option<UnixTime>,
    #[serde(default)]
    pub revoked_at: Option<UnixTime>,
    /// The storage its sources get; None means the default backup storage at use.
    #[serde(default)]
    pub storage_id: Option<u64>,
    /// The quota its sources get, in MB; None means none.
    #[serde(default)]
    pub quota_mb: Option<u64>,
    /// When set, only a request with this `system_uuid` may use it (lowercase).
    #[serde(default)]
    pub system_uuid: Option<String>,
    /// When set, only a request whose `host` is this (case-insensitive) may use it.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// When set, the source that uses it takes over this lost source (SPEC 20), as an
    /// admin's accept with `replaces_system_id` does. Such a token has one use.
    #[serde(default)]
    pub replaces_system_id: Option<u64>,
    /// The `system_uuid` that system had when the token was issued: a takeover since (by
    /// another appliance) makes the token refuse, so one consent replaces one appliance.
    #[serde(default)]
    pub replaces_uuid: Option<String>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("secret_hash", &"…")
            .field("expires", &self.expires)
            .field("uses", &self.uses)
            .field("used", &self.used)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        access::get(&self.snapshot()?, schema::PAIRING_TOKENS, id)
    }

    /// Every token, in id order.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        access::values(&self.snapshot()?, schema::PAIRING_TOKENS)
    }
}

impl Txn {
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        access::get(&self.inner, schema::PAIRING_TOKENS, id)
    }

    pub fn put_token(&self, r: &TokenRecord) -> Result<()> {
        self.put(schema::PAIRING_TOKENS, &r.id, r)
    }
}
