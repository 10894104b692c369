//! The tunnel's restore routes (SPEC 20), target side: a paired source lists the copies
//! this appliance holds for it and reads their bytes from an offset. The source is the
//! connection's certificate, never a field: it sees only its own copies, in the storage
//! its pairing names, and a name passes `names` before any path is built.

use std::io::Read;

use serde_json::Value;

use super::{Call, Reply, TunnelHttpError};
use crate::config::{S3Storage, Storage, StorageKind};
use crate::replication::names::BackupName;
use crate::replication::receiver::{self, Source};
use crate::replication::{restore, restore_chunks};
use crate::store::{ReceivedRecord, Store};
use crate::wire::protocol::{RestoreEntry, RestoreListing};
use crate::wire::transfer::Code;

/// Largest body of `POST /tunnel/v1/restore/file`.
pub(super) const MAX_FILE_REQUEST_BYTES: u64 = 4 * 1024;
/// Largest body of `POST /tunnel/v1/restore/chunks`: a request and a whole `have` list.
pub(super) const MAX_CHUNKS_REQUEST_BYTES: u64 =
    MAX_FILE_REQUEST_BYTES + (restore_chunks::MAX_HAVE * restore_chunks::HAVE_BYTES) as u64;

fn source_of(
    store: &Store,
    storage: &[Storage],
    call: &Call<'_>,
) -> Result<Source, TunnelHttpError> {
    receiver::identify(store, storage, &call.peer().serial).map_err(|refusal| match refusal.code {
        Code::Unavailable => TunnelHttpError::Unavailable(refusal.message),
        _ => TunnelHttpError::Forbidden(refusal.message),
    })
}

/// `GET /tunnel/v1/restore`: the copies held for the calling source, with size and
/// SHA-256 (a copy a verify found damaged is left out until it was fetched again).
pub(super) fn list(
    store: &Store,
    storage: &[Storage],
    call: &mut Call<'_>,
) -> Result<Reply, TunnelHttpError> {
    let source = source_of(store, storage, call)?;
    let held = restore::held_for(store, &source.uuid, source.storage.id)
        .map_err(|e| TunnelHttpError::Internal(Box::new(e)))?;
    let listing = RestoreListing {
        backups: held
            .into_iter()
            .map(|r| RestoreEntry {
                backup: r.backup,
                size: r.size,
                sha256: r.sha256,
            })
            .collect(),
    };
    let value: Value =
        serde_json::to_value(listing).map_err(|e| TunnelHttpError::Internal(Box::new(e)))?;
    Ok(Reply::json(200, &value))
}

/// The held copy a restore request names (`{"backup", "offset"?}`): its record, name and
/// the offset asked for.
fn held_copy(
    store: &Store,
    source: &Source,
    body: &Value,
) -> Result<(ReceivedRecord, BackupName, u64), TunnelHttpError> {
    let backup = body["backup"]
        .as_str()
        .ok_or_else(|| TunnelHttpError::BadRequest("field `backup` must be a string".into()))?;
    let name = BackupName::parse(backup)
        .map_err(|e| TunnelHttpError::BadRequest(format!("field `backup`: {e}")))?;
    let offset = match &body["offset"] {
        Value::Null => 0,
        v => v.as_u64().ok_or_else(|| {
            TunnelHttpError::BadRequest("field `offset` must be a whole number".into())
        })?,
    };
    let held = restore::held_for(store, &source.uuid, source.storage.id)
        .map_err(|e| TunnelHttpError::Internal(Box::new(e)))?;
    let record = held
        .into_iter()
        .find(|r| r.backup == name.as_str())
        .ok_or_else(|| TunnelHttpError::NotFound(format!("no copy of {name} is held here")))?;
    if offset > record.size {
        return Err(TunnelHttpError::BadRequest(format!(
            "field `offset` {offset} is past the copy's {} bytes",
            record.size
        )));
    }
    Ok((record, name, offset))
}

/// The held copy's bytes from `offset` to its recorded size, from the storage's directory
/// or its bucket.
fn open(
    source: &Source,
    record: &ReceivedRecord,
    name: &BackupName,
    offset: u64,
) -> Result<Box<dyn Read + Send>, TunnelHttpError> {
    let opened = match &source.storage.kind {
        StorageKind::Dir => {
            let path = receiver::client_dir(source, name).join(name.file());
            restore::open_held(&path, record.size, offset)
        }
        StorageKind::S3(s3) => {
            open_object(&source.storage, s3, &source.uuid, name, record.size, offset)
        }
    };
    opened.map_err(|e| {
        log::warn!(
            "restore: system {}: {}: {e}",
            source.system_id,
            record.backup
        );
        TunnelHttpError::NotFound(format!("the copy of {} cannot be read: {e}", record.backup))
    })
}

/// `POST /tunnel/v1/restore/file {"backup", "offset"?}`: the copy's bytes from `offset`
/// to its recorded size (`Content-Length`), with its SHA-256 in `Replgate-Sha256`.
pub(super) fn file(
    store: &Store,
    storage: &[Storage],
    call: &mut Call<'_>,
) -> Result<Reply, TunnelHttpError> {
    let source = source_of(store, storage, call)?;
    let (record, name, offset) = held_copy(store, &source, &call.json()?)?;
    let reader = open(&source, &record, &name, offset)?;
    Ok(Reply::stream(
        200,
        "application/octet-stream",
        Some(record.size - offset),
        reader,
    )
    .with_header("Replgate-Sha256", record.sha256))
}

/// `POST /tunnel/v1/restore/chunks`: `{"backup", "offset"?}`, a newline, then the source's
/// `have` list (8 bytes a chunk); the answer is the copy from `offset` as chunk records
/// (`replication::restore_chunks`), chunked. 404 when `dedup = "off"` here: the source
/// then asks for the whole bytes.
pub(super) fn chunks(
    store: &Store,
    storage: &[Storage],
    dedup: bool,
    call: &mut Call<'_>,
) -> Result<Reply, TunnelHttpError> {
    if !dedup {
        return Err(TunnelHttpError::NotFound(
            "restores by chunks are off here (dedup = \"off\")".into(),
        ));
    }
    let source = source_of(store, storage, call)?;
    let bytes = call.bytes();
    let split = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let body: Value = serde_json::from_slice(&bytes[..split])
        .map_err(|e| TunnelHttpError::BadRequest(format!("request head is not json: {e}")))?;
    let have = restore_chunks::parse_have(bytes.get(split + 1..).unwrap_or_default()).ok_or_else(
        || {
            TunnelHttpError::BadRequest(format!(
                "the have list must be whole 8-byte entries, at most {}",
                restore_chunks::MAX_HAVE
            ))
        },
    )?;
    let (record, name, offset) = held_copy(store, &source, &body)?;
    let reader = open(&source, &record, &name, offset)?;
    Ok(Reply::stream(
        200,
        "application/octet-stream",
        None,
        Box::new(restore_chunks::Records::new(reader, offset, have)),
    )
    .with_header("Replgate-Sha256", record.sha256))
}

/// A copy in an `s3` storage's bucket from `offset` to its recorded `size`, streamed as it
/// is read (the source checks the whole copy's SHA-256, which the answer names).
fn open_object(
    storage: &Storage,
    s3: &S3Storage,
    uuid: &str,
    name: &BackupName,
    size: u64,
    offset: u64,
) -> std::io::Result<Box<dyn std::io::Read + Send>> {
    let object_error = |e: crate::objstore::ObjStoreError| std::io::Error::other(e.to_string());
    let bucket = crate::objstore::for_storage(storage)
        .map_err(object_error)?
        .ok_or_else(|| std::io::Error::other("not a bucket"))?;
    let key = crate::objstore::backup_key(s3, uuid, name.as_str()).map_err(object_error)?;
    let held = bucket.head_object(&key).map_err(object_error)?;
    match held {
        Some(o) if o.size == size => {}
        Some(o) => {
            return Err(std::io::Error::other(format!(
                "it holds {} bytes, {size} were recorded",
                o.size
            )))
        }
        None => return Err(std::io::ErrorKind::NotFound.into()),
    }
    if offset == size {
        return Ok(Box::new(std::io::empty()));
    }
    Ok(Box::new(crate::objstore::object_reader(
        bucket,
        key,
        offset..size,
    )?))
}
