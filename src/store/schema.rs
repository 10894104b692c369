//! The database schema in one place: every table, its key and value types, and the schema
//! version. Values are JSON-encoded records (see `records.rs`) so that fields can be added
//! with `#[serde(default)]` without a migration; keys are fixed-width integers or strings.

use redb::TableDefinition;

/// The first schema: meta, users, sessions, audit.
pub const VERSION_INITIAL: u64 = 1;
/// Target-side pairing: requests, the open-request index, systems, certificates, revocations.
pub const VERSION_TARGET_PAIRING: u64 = 2;
/// Source-side pairing: the targets this appliance asked.
pub const VERSION_SOURCE_PAIRING: u64 = 3;
/// Replication: the source's queue (open, finished, latest per backup), the target's
/// received backups and partial copies, the replication settings.
pub const VERSION_REPLICATION: u64 = 4;
/// Pairing tokens (SPEC 13): the tokens a target's admin issued, by id.
pub const VERSION_PAIRING_TOKENS: u64 = 5;
/// Certificate lifecycle: a lineage of certificates per system (`lineage`), superseded
/// certificates in their grace window (`grace`) and after it (`retired`); certificates
/// carry their generation. Migrated from the one-serial rows of earlier versions.
pub const VERSION_CERT_LINEAGE: u64 = 6;
/// The current schema version, recorded in `meta` under `schema_version`.
pub const CURRENT_VERSION: u64 = VERSION_CERT_LINEAGE;

/// Small named values: `schema_version`, `system_uuid`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// User name → `UserRecord`.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// SHA-256 of the session token → `SessionRecord`. The token itself is never stored.
pub const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
/// Sequential id → `AuditRecord`.
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Request id → `RequestRecord`; ids are sequential and never reused.
pub const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("requests");
/// Request id → `OpenRequest`, for every request whose status is pending.
pub const OPEN_REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("open_requests");
/// System id → `SystemRecord`. Id 1 is the local appliance (never stored).
pub const SYSTEMS: TableDefinition<u64, &[u8]> = TableDefinition::new("systems");
/// Certificate serial (lowercase hex) → `CertRecord`.
pub const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
/// Revoked certificate serial → revocation time (unix seconds).
pub const REVOKED: TableDefinition<&str, i64> = TableDefinition::new("revoked");
/// (system id, generation) → certificate serial: every certificate a system was issued,
/// oldest first. Generations start at 1 and never go back.
pub const LINEAGE: TableDefinition<(u64, u64), &str> = TableDefinition::new("lineage");
/// Superseded certificate serial → end of its grace window (unix seconds): still valid
/// until then, or until the first hello with its successor.
pub const GRACE: TableDefinition<&str, i64> = TableDefinition::new("grace");
/// Retired certificate serial → when it was retired (unix seconds): a superseded
/// certificate whose grace ended. Refused at the handshake like a revoked one, but not a
/// revocation: connections already open with it are not cut.
pub const RETIRED: TableDefinition<&str, i64> = TableDefinition::new("retired");

/// Target id → `TargetRecord` (source side).
pub const TARGETS: TableDefinition<u64, &[u8]> = TableDefinition::new("targets");

/// Item id → `QueueItem` whose status is waiting, active or failed (source side).
pub const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
/// History sequence → `QueueItem` that is done or removed; the last key is the newest.
pub const QUEUE_DONE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_done");
/// (target id, backup name) → `LatestItem`: the newest item of that backup.
pub const QUEUE_LATEST: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("queue_latest");
/// (source system uuid, backup name) → `ReceivedRecord` (target side).
pub const RECEIVED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("received");
/// (source system uuid, backup name) → `PartialRecord`: a durable partial copy.
pub const PARTIALS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("partials");
/// `config` → `ReplicationConfig`, `throttle` → `ThrottleRecord`.
pub const REPLICATION_SETTINGS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("replication_settings");

/// Token id (12 lowercase hex digits) → `TokenRecord` (target side). The secret is never
/// stored, only the SHA-256 of the whole token.
pub const PAIRING_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("pairing_tokens");

pub const META_SCHEMA_VERSION: &str = "schema_version";
pub const META_SYSTEM_UUID: &str = "system_uuid";
/// Unix seconds of the appliance's first start, the local systems row's `created`.
pub const META_FIRST_START: &str = "first_start";
/// Counters that never go back, so deleted rows' ids are never handed out again.
pub const META_NEXT_SYSTEM_ID: &str = "next_system_id";
pub const META_NEXT_REQUEST_ID: &str = "next_request_id";
pub const META_NEXT_TARGET_ID: &str = "next_target_id";
pub const META_NEXT_ITEM_ID: &str = "next_item_id";
pub const META_NEXT_TAIL: &str = "next_queue_tail";
pub const META_NEXT_DONE_SEQ: &str = "next_queue_done_seq";
