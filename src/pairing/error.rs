//! What pairing refuses: `PairingError`, one variant per thing a caller can act on
//! (`api::error` maps each to its HTTP answer), the cap on open requests that refused a
//! filing, why a presented pairing token does not let a request in, and the one reading
//! of the clock as a certificate's date. Secrets never reach these texts.

use std::fmt;

use crate::ca;
use crate::model::{format_utc, UnixTime};
use crate::store::{RequestStatus, StoreError};

#[derive(Debug)]
pub enum PairingError {
    UnknownRequest(u64),
    UnknownSystem(u64),
    /// The request is no longer pending (accepted, rejected, ignored, revoked).
    NotPending {
        id: u64,
        status: RequestStatus,
    },
    Expired(u64),
    MessageRequired,
    UnknownStorage(u64),
    StorageNotBackup(u64),
    NoBackupStorage,
    NotASource(u64),
    /// The accept named no storage and the one the source asked for cannot hold it.
    RequestedStorageUnusable(u64),
    /// Past a cap on open requests; the source may try again after `retry_after` seconds.
    Busy {
        cap: Cap,
        retry_after: u64,
    },
    InvalidField {
        field: &'static str,
        problem: String,
    },
    /// The presented pairing token does not let the request in; nothing was filed.
    Token(TokenRefusal),
    /// `require_token` is on and the request came without a token.
    TokenRequired,
    UnknownToken(String),
    TokenAlreadyRevoked(String),
    Csr(ca::CsrError),
    Ca(ca::CaError),
    /// The time handed in is outside what a certificate can carry (a broken clock).
    Clock(UnixTime),
    Store(StoreError),
}

impl fmt::Display for PairingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairingError::UnknownRequest(id) => write!(f, "no pairing request with id {id}"),
            PairingError::UnknownSystem(id) => write!(f, "no system with id {id}"),
            PairingError::NotPending { id, status } => {
                write!(f, "request {id} is already {}", status.as_str())
            }
            PairingError::Expired(id) => write!(f, "request {id} has expired"),
            PairingError::MessageRequired => {
                f.write_str("field `message` is required to reject a request")
            }
            PairingError::UnknownStorage(id) => write!(f, "no storage with id {id}"),
            PairingError::StorageNotBackup(id) => write!(f, "storage {id} is not a backup storage"),
            PairingError::NoBackupStorage => f.write_str("no backup storage is configured"),
            PairingError::NotASource(id) => write!(f, "system {id} is not a replication source"),
            PairingError::RequestedStorageUnusable(id) => write!(
                f,
                "field `storage_id` is required: the source asked for storage {id}, which is not a backup storage here"
            ),
            PairingError::Busy { cap, .. } => write!(f, "{cap}"),
            PairingError::InvalidField { field, problem } => write!(f, "field `{field}` {problem}"),
            PairingError::Token(r) => write!(f, "{r}"),
            PairingError::TokenRequired => f.write_str(
                "this appliance takes pairing requests only with a valid pairing token; ask its admin for one",
            ),
            PairingError::UnknownToken(id) => write!(f, "no pairing token with id {id:?}"),
            PairingError::TokenAlreadyRevoked(id) => {
                write!(f, "pairing token {id} is already revoked")
            }
            PairingError::Csr(_) => f.write_str("field `csr`"),
            PairingError::Ca(_) => f.write_str("sign csr"),
            PairingError::Clock(now) => write!(
                f,
                "the clock reads unix time {now}, outside the dates a certificate can carry"
            ),
            PairingError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for PairingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PairingError::Csr(e) => Some(e),
            PairingError::Ca(e) => Some(e),
            PairingError::Store(e) => e.source(),
            _ => None,
        }
    }
}

/// Which cap on open requests refused a filing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cap {
    /// This source already has an open request with another key.
    OtherKey { system_uuid: String, request: u64 },
    /// Too many open requests from this address's network (`max_pending_per_address`,
    /// counted per `pending_prefix_v4`/`_v6` network); `address` names the network.
    PerAddress { address: String },
    /// Too many open requests on this appliance (`max_pending`).
    Total,
    /// The inbox is three quarters full, and the rest is kept for networks with no open
    /// request; `address` names this one's network, which has some.
    Crowded { address: String },
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::OtherKey { system_uuid, request } => write!(
                f,
                "system {system_uuid} already has open request {request} with another key; wait for it to be resolved or expire"
            ),
            Cap::PerAddress { address } => write!(f, "too many open requests from {address}"),
            Cap::Total => f.write_str("too many open pairing requests on this appliance"),
            Cap::Crowded { address } => write!(
                f,
                "too many open pairing requests on this appliance; the rest of its inbox is kept \
                 for networks with no open request, and {address} has some"
            ),
        }
    }
}

impl From<StoreError> for PairingError {
    fn from(e: StoreError) -> Self {
        PairingError::Store(e)
    }
}

/// Why a presented token does not let a request in. Each is a 403 to the source, and
/// nothing is filed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not `<id>.<secret>` at all.
    Malformed,
    /// No token with this id, or the secret does not match: one answer for both, so ids
    /// cannot be probed.
    Unknown,
    Revoked {
        id: String,
    },
    Spent {
        id: String,
        uses: u32,
    },
    Expired {
        id: String,
        at: UnixTime,
    },
    /// Bound to another `system_uuid`.
    OtherSystem {
        id: String,
    },
    /// Bound to another `host`.
    OtherHost {
        id: String,
    },
    /// The source is paired here already; replacing its key takes a token bound to its
    /// `system_uuid` (or an admin's accept), so a token cannot take over another pairing.
    Replaces {
        id: String,
        system_id: u64,
    },
    /// Bound to a lost source (`replaces_system_id`) that is no longer a replication
    /// source here (unpaired, or removed).
    ReplacedGone {
        id: String,
        system_id: u64,
    },
    /// Bound to a lost source that another appliance has taken over since the token was
    /// issued.
    AlreadyReplaced {
        id: String,
        system_id: u64,
    },
    /// Bound to a lost source, but the requesting appliance is paired here as another
    /// system: one appliance cannot be two sources.
    PairedAsOther {
        id: String,
        system_id: u64,
        other: u64,
    },
}

impl TokenRefusal {
    /// The token's id, when the secret was right: the refusal then goes to the audit log.
    pub fn verified_id(&self) -> Option<&str> {
        match self {
            TokenRefusal::Malformed | TokenRefusal::Unknown => None,
            TokenRefusal::Revoked { id }
            | TokenRefusal::Spent { id, .. }
            | TokenRefusal::Expired { id, .. }
            | TokenRefusal::OtherSystem { id }
            | TokenRefusal::OtherHost { id }
            | TokenRefusal::Replaces { id, .. }
            | TokenRefusal::ReplacedGone { id, .. }
            | TokenRefusal::AlreadyReplaced { id, .. }
            | TokenRefusal::PairedAsOther { id, .. } => Some(id),
        }
    }
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRefusal::Malformed => {
                f.write_str("field `token` is not a pairing token (<id>.<secret>)")
            }
            TokenRefusal::Unknown => f.write_str("unknown pairing token"),
            TokenRefusal::Revoked { id } => write!(f, "pairing token {id} has been revoked"),
            TokenRefusal::Spent { id, uses } => write!(
                f,
                "pairing token {id} has been used up ({uses} of {uses} uses)"
            ),
            TokenRefusal::Expired { id, at } => {
                write!(f, "pairing token {id} expired at {}", format_utc(*at))
            }
            TokenRefusal::OtherSystem { id } => write!(
                f,
                "pairing token {id} is bound to another system_uuid"
            ),
            TokenRefusal::OtherHost { id } => {
                write!(f, "pairing token {id} is bound to another host")
            }
            TokenRefusal::Replaces { id, system_id } => write!(
                f,
                "this source is already paired here as system {system_id}; pairing token {id} is not bound to its system_uuid, so an admin must accept the new key"
            ),
            TokenRefusal::ReplacedGone { id, system_id } => write!(
                f,
                "pairing token {id} takes over system {system_id}, which is no longer a replication source on this target"
            ),
            TokenRefusal::AlreadyReplaced { id, system_id } => write!(
                f,
                "pairing token {id} takes over system {system_id}, which another appliance has taken over since the token was issued"
            ),
            TokenRefusal::PairedAsOther {
                id,
                system_id,
                other,
            } => write!(
                f,
                "pairing token {id} takes over system {system_id}, but this appliance is already paired here as system {other}"
            ),
        }
    }
}

/// `now` as a calendar time for a certificate; a clock outside the calendar is an error,
/// never quietly replaced by another reading.
pub(crate) fn time_of(now: UnixTime) -> Result<time::OffsetDateTime, PairingError> {
    time::OffsetDateTime::from_unix_timestamp(now).map_err(|_| PairingError::Clock(now))
}
