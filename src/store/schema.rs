//! The database schema in one place: every table, the type of its keys and how keys are
//! encoded, and the schema version. Values are JSON-encoded records (each entity's file
//! declares its own) so that fields can be added with `#[serde(default)]` without a
//! migration; the chunk index alone stores fixed-width binary values (`chunks.rs`), one
//! per chunk, where JSON would triple its size.
//!
//! Every table is bytes → bytes in redb ([`Raw`]): redb compiles its whole B-tree (insert,
//! delete, cursors) once per (key, value) type pair, about 30 KB of code each, and typed
//! tables had seven pairs (SPEC 10's binary budget). A [`Def`] names a table and the type
//! of its keys; [`KeyCodec`] encodes them so that byte order is the order the typed keys
//! had: integers big-endian, strings as their bytes, a string that leads a pair escaped
//! and terminated.

use std::marker::PhantomData;

use redb::TableDefinition;

/// The first schema: meta, users, sessions, audit.
pub(super) const VERSION_INITIAL: u64 = 1;
/// Target-side pairing: requests, the open-request index, systems, certificates, revocations.
pub(super) const VERSION_TARGET_PAIRING: u64 = 2;
/// Source-side pairing: the targets this appliance asked.
pub(super) const VERSION_SOURCE_PAIRING: u64 = 3;
/// Replication: the source's queue (open, finished, latest per backup), the target's
/// received backups and partial copies, the replication settings.
pub(super) const VERSION_REPLICATION: u64 = 4;
/// Pairing tokens (SPEC 13): the tokens a target's admin issued, by id.
pub(super) const VERSION_PAIRING_TOKENS: u64 = 5;
/// Certificate lifecycle: a lineage of certificates per system (`lineage`), superseded
/// certificates in their grace window (`grace`) and after it (`retired`); certificates
/// carry their generation. Migrated from the one-serial rows of earlier versions.
pub(super) const VERSION_CERT_LINEAGE: u64 = 6;
/// Every table bytes → bytes with the key encodings of [`KeyCodec`]; the times of
/// `revoked`, `grace`, `retired` and the serials of `lineage` are JSON values like every
/// other value. Migrated by rewriting each table an earlier version wrote (`legacy.rs`).
pub(super) const VERSION_BYTE_KEYS: u64 = 7;
/// Recovery on the target (SPEC 20): the recycle bin (`recycle`), the index of copies a
/// verify found damaged (`damaged`, built from `received` by the migration) and each
/// source's last verify (`verify_runs`).
pub(super) const VERSION_RECYCLE: u64 = 8;
/// The chunk index of deduplicated transfers (SPEC 18, `chunks.rs`): `chunks`,
/// `chunk_files`, `chunk_stage`, `chunk_names`, new and empty (copies received before are
/// indexed when they are replaced, or by the index job). This migration only creates
/// tables, so it runs after version 8's.
pub(super) const VERSION_CHUNK_INDEX: u64 = 9;
/// The current schema version, recorded in `meta` under `schema_version`.
pub const CURRENT_VERSION: u64 = VERSION_CHUNK_INDEX;

/// The one redb table type of the store.
pub(super) type Raw = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// A table: its name and the type `K` of its keys.
pub(super) struct Def<K> {
    name: &'static str,
    key: PhantomData<fn() -> K>,
}

impl<K> Clone for Def<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Def<K> {}

impl<K: KeyCodec> Def<K> {
    pub(super) const fn new(name: &'static str) -> Def<K> {
        Def {
            name,
            key: PhantomData,
        }
    }

    /// The redb table.
    pub(super) fn raw(self) -> Raw {
        TableDefinition::new(self.name)
    }

    /// The table's name, for errors.
    pub(super) fn name(self) -> &'static str {
        self.name
    }

    /// `key` as stored.
    pub(super) fn key(self, key: K::Ref<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        K::encode(key, &mut out);
        out
    }
}

/// A key type: what callers pass (`Ref`), what reading a stored key gives back (`Owned`),
/// and an encoding whose byte order is the key order.
pub(super) trait KeyCodec {
    type Ref<'a>: Copy;
    type Owned;
    fn encode(key: Self::Ref<'_>, out: &mut Vec<u8>);
    /// None when the bytes are no such key (a damaged file).
    fn decode(bytes: &[u8]) -> Option<Self::Owned>;
}

/// A `u64`: 8 bytes big-endian.
pub(super) enum Id {}
/// A string: its UTF-8 bytes.
pub(super) enum Name {}
/// Bytes as they are.
pub(super) enum Bytes {}
/// Two `u64`s: 16 bytes.
pub(super) enum IdPair {}
/// A `u64` and a string: 8 bytes, then the string's bytes.
pub(super) enum IdName {}
/// A chunk's 16-byte digest prefix and its owner's 8 bytes: [`DIGEST_KEY_LEN`] bytes, so
/// the entries of one digest are neighbours.
pub(super) enum DigestOwner {}
/// Bytes of a [`DigestOwner`] key.
pub(super) const DIGEST_KEY_LEN: usize = 24;
/// Two strings: the first with each 0x00 byte written as 0x00 0xff and ended by 0x00 0x00
/// (so a shorter first string sorts first, as `str` does), then the second's bytes.
pub(super) enum NamePair {}

impl KeyCodec for Id {
    type Ref<'a> = u64;
    type Owned = u64;
    fn encode(key: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&key.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

impl KeyCodec for Name {
    type Ref<'a> = &'a str;
    type Owned = String;
    fn encode(key: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(key.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl KeyCodec for Bytes {
    type Ref<'a> = &'a [u8];
    type Owned = Vec<u8>;
    fn encode(key: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(key);
    }
    fn decode(bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }
}

impl KeyCodec for IdPair {
    type Ref<'a> = (u64, u64);
    type Owned = (u64, u64);
    fn encode((a, b): (u64, u64), out: &mut Vec<u8>) {
        out.extend_from_slice(&a.to_be_bytes());
        out.extend_from_slice(&b.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
        let (a, b) = bytes.split_at_checked(8)?;
        Some((Id::decode(a)?, Id::decode(b)?))
    }
}

impl KeyCodec for IdName {
    type Ref<'a> = (u64, &'a str);
    type Owned = (u64, String);
    fn encode((id, name): (u64, &str), out: &mut Vec<u8>) {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<(u64, String)> {
        let (id, name) = bytes.split_at_checked(8)?;
        Some((Id::decode(id)?, Name::decode(name)?))
    }
}

impl KeyCodec for DigestOwner {
    type Ref<'a> = (&'a [u8; 16], &'a [u8; 8]);
    type Owned = ([u8; 16], [u8; 8]);
    fn encode((digest, owner): (&[u8; 16], &[u8; 8]), out: &mut Vec<u8>) {
        out.extend_from_slice(digest);
        out.extend_from_slice(owner);
    }
    fn decode(bytes: &[u8]) -> Option<([u8; 16], [u8; 8])> {
        if bytes.len() != DIGEST_KEY_LEN {
            return None;
        }
        let (mut d, mut o) = ([0u8; 16], [0u8; 8]);
        d.copy_from_slice(&bytes[..16]);
        o.copy_from_slice(&bytes[16..]);
        Some((d, o))
    }
}

impl KeyCodec for NamePair {
    type Ref<'a> = (&'a str, &'a str);
    type Owned = (String, String);
    fn encode((first, second): (&str, &str), out: &mut Vec<u8>) {
        out.extend_from_slice(&name_prefix(first));
        out.extend_from_slice(second.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Option<(String, String)> {
        let mut first = Vec::new();
        let mut i = 0;
        loop {
            match (*bytes.get(i)?, bytes.get(i + 1).copied()) {
                (0, Some(0)) => break,
                (0, Some(0xff)) => first.push(0),
                (0, _) => return None,
                (b, _) => {
                    first.push(b);
                    i += 1;
                    continue;
                }
            }
            i += 2;
        }
        let second = &bytes[i + 2..];
        Some((String::from_utf8(first).ok()?, Name::decode(second)?))
    }
}

/// The bytes every [`NamePair`] key whose first string is `first` starts with.
pub(super) fn name_prefix(first: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(first.len() + 2);
    for &b in first.as_bytes() {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// Small named values: `schema_version`, `system_uuid`.
pub(super) const META: Def<Name> = Def::new("meta");
/// User name → `UserRecord`.
pub(super) const USERS: Def<Name> = Def::new("users");
/// SHA-256 of the session token → `SessionRecord`. The token itself is never stored.
pub(super) const SESSIONS: Def<Bytes> = Def::new("sessions");
/// Sequential id → `AuditRecord`.
pub(super) const AUDIT: Def<Id> = Def::new("audit");
/// Request id → `RequestRecord`; ids are sequential and never reused.
pub(super) const REQUESTS: Def<Id> = Def::new("requests");
/// Request id → `OpenRequest`, for every request whose status is pending.
pub(super) const OPEN_REQUESTS: Def<Id> = Def::new("open_requests");
/// System id → `SystemRecord`. Id 1 is the local appliance (never stored).
pub(super) const SYSTEMS: Def<Id> = Def::new("systems");
/// Certificate serial (lowercase hex) → `CertRecord`.
pub(super) const CERTS: Def<Name> = Def::new("certs");
/// Revoked certificate serial → revocation time (unix seconds).
pub(super) const REVOKED: Def<Name> = Def::new("revoked");
/// (system id, generation) → certificate serial: every certificate a system was issued,
/// oldest first. Generations start at 1 and never go back.
pub(super) const LINEAGE: Def<IdPair> = Def::new("lineage");
/// Superseded certificate serial → end of its grace window (unix seconds): still valid
/// until then, or until the first hello with its successor.
pub(super) const GRACE: Def<Name> = Def::new("grace");
/// Retired certificate serial → when it was retired (unix seconds): a superseded
/// certificate whose grace ended. Refused at the handshake like a revoked one, but not a
/// revocation: connections already open with it are not cut.
pub(super) const RETIRED: Def<Name> = Def::new("retired");

/// Target id → `TargetRecord` (source side).
pub(super) const TARGETS: Def<Id> = Def::new("targets");

/// Item id → `QueueItem` whose status is waiting, active or failed (source side).
pub(super) const QUEUE: Def<Id> = Def::new("queue");
/// History sequence → `QueueItem` that is done or removed; the last key is the newest.
pub(super) const QUEUE_DONE: Def<Id> = Def::new("queue_done");
/// (target id, backup name) → `LatestItem`: the newest item of that backup.
pub(super) const QUEUE_LATEST: Def<IdName> = Def::new("queue_latest");
/// (source system uuid, backup name) → `ReceivedRecord` (target side).
pub(super) const RECEIVED: Def<NamePair> = Def::new("received");
/// (source system uuid, backup name) → `PartialRecord`: a durable partial copy.
pub(super) const PARTIALS: Def<NamePair> = Def::new("partials");
/// (source system uuid, backup name) → storage id, for every `received` row whose
/// `damaged` is set (`Txn::put_received` keeps it in step): what the health warnings,
/// the metrics and a session's greeting read without a scan of every copy.
pub(super) const DAMAGED: Def<NamePair> = Def::new("damaged");
/// Source system id → `VerifyRun`: the last verify of that source's copies.
pub(super) const VERIFY_RUNS: Def<Id> = Def::new("verify_runs");
/// (source system uuid, bin id as 16 lowercase hex digits) → `RecycleRecord`: what
/// retention moved to the recycle bin, in the order it was moved (target side).
pub(super) const RECYCLE: Def<NamePair> = Def::new("recycle");
/// `config` → `ReplicationConfig`, `throttle` → `ThrottleRecord`, `restores` →
/// `RestoreBook` (source side: backups pulled back from targets), `drills` → `DrillBook`
/// (restore drills).
pub(super) const REPLICATION_SETTINGS: Def<Name> = Def::new("replication_settings");

/// (chunk digest prefix, owner) → file id, offset, length as 20 raw big-endian bytes: the
/// chunk index (`chunks.rs`; raw, not JSON: one entry per distinct chunk a source stored).
pub(super) const CHUNKS: Def<DigestOwner> = Def::new("chunks");
/// Indexed file id → `ChunkFileRecord`.
pub(super) const CHUNK_FILES: Def<Id> = Def::new("chunk_files");
/// (indexed file id, offset) → digest prefix and length (20 raw bytes): entries of a file
/// not ready yet.
pub(super) const CHUNK_STAGE: Def<IdPair> = Def::new("chunk_stage");
/// (source system uuid, backup name) → `ChunkNames`: the indexed files of a backup.
pub(super) const CHUNK_NAMES: Def<NamePair> = Def::new("chunk_names");

/// Token id (12 lowercase hex digits) → `TokenRecord` (target side). The secret is never
/// stored, only the SHA-256 of the whole token.
pub(super) const PAIRING_TOKENS: Def<Name> = Def::new("pairing_tokens");

pub(super) const META_SCHEMA_VERSION: &str = "schema_version";
pub(super) const META_SYSTEM_UUID: &str = "system_uuid";
/// Unix seconds of the appliance's first start, the local systems row's `created`.
pub(super) const META_FIRST_START: &str = "first_start";
/// Counters that never go back, so deleted rows' ids are never handed out again.
pub(super) const META_NEXT_SYSTEM_ID: &str = "next_system_id";
pub(super) const META_NEXT_REQUEST_ID: &str = "next_request_id";
pub(super) const META_NEXT_TARGET_ID: &str = "next_target_id";
pub(super) const META_NEXT_ITEM_ID: &str = "next_item_id";
pub(super) const META_NEXT_TAIL: &str = "next_queue_tail";
pub(super) const META_NEXT_DONE_SEQ: &str = "next_queue_done_seq";
pub(super) const META_NEXT_CHUNK_FILE: &str = "next_chunk_file";
/// The appliance CA's state: the generation in force, a rollover in progress (`CaState`).
pub(super) const META_CA_STATE: &str = "ca_state";
pub(super) const META_NEXT_RECYCLE_ID: &str = "next_recycle_id";

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_by_bytes<K: KeyCodec>(keys: &[K::Ref<'_>]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| {
            let mut out = Vec::new();
            K::encode(keys[i], &mut out);
            out
        });
        order
    }

    #[test]
    fn byte_order_is_the_order_of_the_typed_keys() {
        let ids = [0, 1, 255, 256, 1 << 40, u64::MAX, 7];
        let mut typed: Vec<usize> = (0..ids.len()).collect();
        typed.sort_by_key(|&i| ids[i]);
        assert_eq!(sorted_by_bytes::<Id>(&ids), typed);

        let pairs = [
            ("u-1", "b"),
            ("u-10", "a"),
            ("u-1", ""),
            ("u-1\0", "a"),
            ("u", "zz"),
            ("", "x"),
            ("u-1", "b\0"),
            ("ü", "a"),
        ];
        let mut typed: Vec<usize> = (0..pairs.len()).collect();
        typed.sort_by_key(|&i| pairs[i]);
        assert_eq!(sorted_by_bytes::<NamePair>(&pairs), typed);

        let id_names = [(2, "b"), (1, "zz"), (2, ""), (1, "a"), (256, "a")];
        let mut typed: Vec<usize> = (0..id_names.len()).collect();
        typed.sort_by_key(|&i| id_names[i]);
        assert_eq!(sorted_by_bytes::<IdName>(&id_names), typed);

        let id_pairs = [(2, 1), (1, u64::MAX), (2, 0), (1, 3)];
        let mut typed: Vec<usize> = (0..id_pairs.len()).collect();
        typed.sort_by_key(|&i| id_pairs[i]);
        assert_eq!(sorted_by_bytes::<IdPair>(&id_pairs), typed);
    }

    #[test]
    fn keys_decode_to_what_was_encoded_and_damage_is_noticed() {
        for pair in [("u-1", "b"), ("a\0b", "\0"), ("", ""), ("\0\0", "x")] {
            let bytes = RECEIVED.key(pair);
            assert!(bytes.starts_with(&name_prefix(pair.0)));
            assert_eq!(
                NamePair::decode(&bytes),
                Some((pair.0.to_string(), pair.1.to_string()))
            );
        }
        assert_eq!(
            IdName::decode(&QUEUE_LATEST.key((9, "x"))),
            Some((9, "x".into()))
        );
        assert_eq!(IdPair::decode(&LINEAGE.key((9, 3))), Some((9, 3)));
        assert_eq!(Id::decode(&AUDIT.key(77)), Some(77));
        assert_eq!(Id::decode(b"short"), None);
        assert_eq!(IdPair::decode(&[0; 15]), None);
        assert_eq!(NamePair::decode(b"no terminator"), None);
        assert_eq!(NamePair::decode(b"bad\0\x01escape"), None);
        assert_eq!(Name::decode(&[0xff]), None);
    }
}
