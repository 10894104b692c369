//! Pairing requests (target side): the record a source's filing becomes, the summary lists
//! read without decoding the CSR, the open-request index, and their reads and writes.
//! Invariant: `open_requests` holds exactly the ids of the requests whose status is
//! pending ([`Txn::put_request`] keeps it in step).

use std::borrow::Cow;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::access::{get, id_rows, Tables};
use super::{decode, schema, Result, Store, Txn};
use crate::model::UnixTime;
use crate::wire::protocol::{SpoolStatus, CA_FILE, CERT_FILE};

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
    /// The lost source this request's appliance took over when accepted (SPEC 20: an
    /// admin's `replaces_system_id`, or a token bound to that system); its `status.json`
    /// tells the source.
    #[serde(default)]
    pub took_over: Option<u64>,
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
                replaces_system_id: self.took_over,
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
            took_over: None,
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

fn request(tx: &impl Tables, id: u64) -> Result<Option<RequestRecord>> {
    get(tx, schema::REQUESTS, id)
}

/// Requests with id > `after`, in id order, that `keep` selects, at most `limit`.
fn requests(
    tx: &impl Tables,
    after: u64,
    limit: usize,
    keep: impl Fn(&RequestRecord) -> bool,
) -> Result<Vec<RequestRecord>> {
    let mut out = Vec::new();
    scan_requests(tx, false, after, limit, |bytes| {
        let r: RequestRecord = decode("requests", bytes)?;
        let kept = keep(&r);
        if kept {
            out.push(r);
        }
        Ok(kept)
    })?;
    Ok(out)
}

/// Pending requests with id > `after`, at most `limit`, through the open index.
fn pending_requests(tx: &impl Tables, after: u64, limit: usize) -> Result<Vec<RequestRecord>> {
    let mut out = Vec::new();
    scan_requests(tx, true, after, limit, |bytes| {
        out.push(decode("requests", bytes)?);
        Ok(true)
    })?;
    Ok(out)
}

/// See `Store::visit_requests`.
fn visit_requests(
    tx: &impl Tables,
    open_only: bool,
    after: u64,
    limit: usize,
    keep: impl Fn(&RequestSummary<'_>) -> bool,
    mut visit: impl FnMut(&RequestSummary<'_>),
) -> Result<()> {
    scan_requests(tx, open_only, after, limit, |bytes| {
        let r: RequestSummary<'_> = decode("requests", bytes)?;
        let kept = keep(&r);
        if kept {
            visit(&r);
        }
        Ok(kept)
    })
}

/// Hands `take` the stored bytes of each request with id > `after`, in id order (with
/// `open_only`, only those in the open index, so the cost grows with the page and not with
/// the history of resolved requests), until `take` has said `true` (taken) `limit` times.
fn scan_requests(
    tx: &impl Tables,
    open_only: bool,
    after: u64,
    limit: usize,
    mut take: impl FnMut(&[u8]) -> Result<bool>,
) -> Result<()> {
    let mut taken = 0;
    let mut offer = |bytes: &[u8]| -> Result<bool> {
        if take(bytes)? {
            taken += 1;
        }
        Ok(taken < limit)
    };
    if limit == 0 {
        return Ok(());
    }
    let requests = tx.open(schema::REQUESTS)?;
    let from = schema::REQUESTS.key(after.saturating_add(1));
    if open_only {
        for row in tx.open(schema::OPEN_REQUESTS)?.range(from.as_slice()..)? {
            let (k, _) = row?;
            if let Some(v) = requests.get(k.value())? {
                if !offer(v.value())? {
                    break;
                }
            }
        }
    } else {
        for row in requests.range(from.as_slice()..)? {
            let (_, v) = row?;
            if !offer(v.value())? {
                break;
            }
        }
    }
    Ok(())
}

fn open_requests(tx: &impl Tables) -> Result<Vec<(u64, OpenRequest)>> {
    id_rows(tx, schema::OPEN_REQUESTS, 0, usize::MAX)
}

impl Store {
    pub fn request(&self, id: u64) -> Result<Option<RequestRecord>> {
        request(&self.snapshot()?, id)
    }

    /// Requests with id > `after`, in id order, that `keep` selects, at most `limit`.
    pub fn requests(
        &self,
        after: u64,
        limit: usize,
        keep: impl Fn(&RequestRecord) -> bool,
    ) -> Result<Vec<RequestRecord>> {
        requests(&self.snapshot()?, after, limit, keep)
    }

    /// Pending requests with id > `after`, at most `limit`, through the open index (cost
    /// grows with the page, not with the history of resolved requests).
    pub fn pending_requests(&self, after: u64, limit: usize) -> Result<Vec<RequestRecord>> {
        pending_requests(&self.snapshot()?, after, limit)
    }

    /// Hands `visit` each request with id > `after`, in id order, as a [`RequestSummary`]
    /// borrowed from the stored bytes, until it has been handed `limit` requests that
    /// `keep` selects. With `open_only` only requests in the open index are looked at (cost
    /// grows with the page, not with the history of resolved requests); otherwise all.
    /// Nothing is copied or collected: a list is rendered while it is read.
    pub fn visit_requests(
        &self,
        open_only: bool,
        after: u64,
        limit: usize,
        keep: impl Fn(&RequestSummary<'_>) -> bool,
        visit: impl FnMut(&RequestSummary<'_>),
    ) -> Result<()> {
        visit_requests(&self.snapshot()?, open_only, after, limit, keep, visit)
    }

    pub fn open_requests(&self) -> Result<Vec<(u64, OpenRequest)>> {
        open_requests(&self.snapshot()?)
    }
}

impl Txn {
    pub fn request(&self, id: u64) -> Result<Option<RequestRecord>> {
        request(&self.inner, id)
    }

    /// Writes a request and keeps the open-request index in step with its status.
    pub fn put_request(&self, r: &RequestRecord) -> Result<()> {
        if request(&self.inner, r.id)?.is_none_or(|old| old.status != r.status) {
            self.requests.set(true);
        }
        self.put(schema::REQUESTS, r.id, r)?;
        if r.status == RequestStatus::Pending {
            let entry = OpenRequest {
                system_uuid: r.system_uuid.clone(),
                csr_fingerprint: r.csr_fingerprint.clone(),
                remote_addr: r.remote_addr.clone(),
                expires: r.expires,
            };
            self.put(schema::OPEN_REQUESTS, r.id, &entry)?;
        } else {
            self.remove(schema::OPEN_REQUESTS, r.id)?;
        }
        Ok(())
    }

    /// Deletes a request row (and its open-index entry); its id is never handed out again.
    pub fn delete_request(&self, id: u64) -> Result<bool> {
        self.requests.set(true);
        self.remove(schema::OPEN_REQUESTS, id)?;
        self.remove(schema::REQUESTS, id)
    }

    /// The next sequential request id, never reused (purged requests keep theirs).
    pub fn next_request_id(&self) -> Result<u64> {
        let floor = self.after_last(schema::REQUESTS, 1)?;
        self.take_id(schema::META_NEXT_REQUEST_ID, floor)
    }

    pub fn open_requests(&self) -> Result<Vec<(u64, OpenRequest)>> {
        open_requests(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode;

    /// Counts by status are kept between commits that add, remove or change the status of
    /// a request; other changes (a spool write's bookkeeping) do not move the generation.
    #[test]
    fn the_request_generation_moves_with_a_request_s_status() {
        let (store, dir) = crate::store::temp_store("request-generation");
        let g0 = store.request_generation();
        let r = RequestRecord::fixture(1);
        store.write(|tx| tx.put_request(&r)).unwrap();
        let g1 = store.request_generation();
        assert!(g1 > g0, "a new request");
        let renamed = RequestRecord {
            name: "another name".into(),
            ..r.clone()
        };
        store.write(|tx| tx.put_request(&renamed)).unwrap();
        assert_eq!(store.request_generation(), g1, "same status");
        let accepted = RequestRecord {
            status: RequestStatus::Accepted,
            ..renamed
        };
        store.write(|tx| tx.put_request(&accepted)).unwrap();
        let g2 = store.request_generation();
        assert!(g2 > g1, "a status change");
        store.write(|tx| tx.delete_request(1).map(|_| ())).unwrap();
        assert!(store.request_generation() > g2, "a removal");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn summary_decodes_what_a_record_encodes() {
        for full in [false, true] {
            let r = RequestRecord {
                // Escapes make serde own the string instead of borrowing it.
                name: "box \"north\"\n2".into(),
                host: "source.example".into(),
                asset_tag: full.then(|| "TAG-7".into()),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n".into(),
                remote_addr: "192.0.2.9".into(),
                created: 10,
                expires: 20,
                status: if full {
                    RequestStatus::Rejected
                } else {
                    RequestStatus::Pending
                },
                message: full.then(|| "no".into()),
                resolved_at: full.then_some(15),
                resolved_by: full.then(|| "root".into()),
                replaces_system_id: full.then_some(4),
                system_id: full.then_some(5),
                cert_serial: full.then(|| "ab12".into()),
                requested_storage_id: full.then_some(3),
                pairing_token: full.then(|| "0123456789ab".into()),
                took_over: None,
                ..RequestRecord::fixture(12)
            };
            let bytes = encode("requests", &r).unwrap();
            let s: RequestSummary<'_> = decode("requests", &bytes).unwrap();
            assert_eq!(s.id, r.id);
            assert_eq!(s.system_uuid, r.system_uuid);
            assert_eq!(s.name, r.name);
            assert_eq!(s.host, r.host);
            assert_eq!(s.asset_tag.as_deref(), r.asset_tag.as_deref());
            assert_eq!(s.version, r.version);
            assert_eq!(s.csr_fingerprint, r.csr_fingerprint);
            assert_eq!(s.remote_addr, r.remote_addr);
            assert_eq!(s.verification_code, r.verification_code);
            assert_eq!((s.created, s.expires), (r.created, r.expires));
            assert_eq!(s.status, r.status);
            assert_eq!(s.message.as_deref(), r.message.as_deref());
            assert_eq!(s.resolved_at, r.resolved_at);
            assert_eq!(s.replaces_system_id, r.replaces_system_id);
            assert_eq!(s.system_id, r.system_id);
            assert_eq!(s.requested_storage_id, r.requested_storage_id);
        }
    }
}
