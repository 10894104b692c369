//! Offers: the source names a file, its size and version; the target decides what it
//! holds of it (`New`, `Resume` from a durable partial copy of this very version, `Have`
//! a verified copy) and whether it fits (the quota and free space, reserved in the
//! [`super::Ledger`] before any byte moves), or refuses it.

use std::io::Write;

use super::ledger::{Ask, Space};
use super::sink::FileSink;
use super::state::{Decided, Offered, Session};
use super::{
    client_dir, digest_of, drop_partial, partial_path, prefix_hash, quota_usage, space_of,
    storage_failure, ReceiveError, Refusal, MAX_OUTSTANDING,
};
use super::{object_error, Source};
use crate::config::StorageKind;
use crate::fsx;
use crate::objstore::ObjStoreError;
use crate::replication::names::BackupName;
use crate::store::StoreError;
use crate::wire::hex;
use crate::wire::transfer::{Code, Decision, Frame};

impl<'l, W: Write, S: FileSink> Session<'_, 'l, W, S> {
    pub(super) fn offer(
        &mut self,
        seq: u32,
        size: u64,
        version: i64,
        name: &str,
    ) -> Result<(), ReceiveError> {
        if self.last_seq.is_some_and(|last| seq <= last) {
            return self.fatal(
                Code::Protocol,
                format!("offer {seq} is not after the last one"),
            );
        }
        self.last_seq = Some(seq);
        if self.offered.len() >= MAX_OUTSTANDING {
            return self.fatal(
                Code::Protocol,
                format!("more than {MAX_OUTSTANDING} offers outstanding"),
            );
        }
        let name = match BackupName::parse(name) {
            Ok(n) => n,
            Err(e) => {
                self.refuse(seq, Code::BadName, &e.to_string());
                return Ok(());
            }
        };
        match self.decide(&name, size, version) {
            Ok(offer) => {
                let decision = match &offer.decided {
                    Decided::New => Decision::New,
                    Decided::Resume { offset, hasher } => Decision::Resume {
                        offset: *offset,
                        prefix_sha256: digest_of(hasher),
                    },
                    Decided::Have => {
                        let sha = self
                            .ctx
                            .store
                            .received_one(&self.source.uuid, name.as_str())
                            .ok()
                            .flatten()
                            .and_then(|r| hex::decode_array(&r.sha256))
                            .unwrap_or([0; 32]);
                        Decision::Have { sha256: sha }
                    }
                };
                self.send(&Frame::Decision { seq, decision });
                self.offered.insert(seq, offer);
            }
            Err(r) => self.refuse(seq, r.code, &r.message),
        }
        Ok(())
    }

    /// Decides an offer: what the target holds of it, and whether it fits.
    fn decide(&self, name: &BackupName, size: u64, version: i64) -> Result<Offered<'l>, Refusal> {
        let store = self.ctx.store;
        let internal = Refusal::database::<StoreError>;
        let uuid = &self.source.uuid;
        let storage = &self.source.storage;
        let dir = client_dir(self.source, name);
        let held = store
            .received_one(uuid, name.as_str())
            .map_err(internal)?
            .filter(|r| r.storage_id == storage.id);
        let final_len = match &held {
            Some(_) => held_len(self.source, name)?,
            None => None,
        };
        let have = held
            .as_ref()
            .is_some_and(|r| r.size == size && r.damaged.is_none() && final_len == Some(size));
        let replaced = held.as_ref().map(|r| r.size).unwrap_or(0);
        let grows = size.saturating_sub(replaced);
        // A partial copy of this very version resumes; any other is dropped.
        let mut resume = None;
        if !have {
            if let Some(p) = store.partial(uuid, name.as_str()).map_err(internal)? {
                if p.storage_id == storage.id
                    && p.size == size
                    && p.version == version
                    && p.verified_sha256.is_none()
                    && p.offset > 0
                    && p.upload.is_none()
                {
                    resume =
                        prefix_hash(&partial_path(&dir, name), p.offset).map(|h| (p.offset, h));
                }
                if resume.is_none() {
                    drop_partial(store, self.source, name);
                }
            }
        }
        let offset = resume.as_ref().map(|(o, _)| *o).unwrap_or(0);
        let (total, free) = space_of(store, storage)
            .map_err(|e| storage_failure(storage.id, "cannot read the free space", &e))?;
        // The source's partial copies on this storage count against its quota.
        let partials: Vec<(String, u64)> = match self.source.quota_mb {
            Some(_) => store
                .partials_of(uuid)
                .map_err(internal)?
                .into_iter()
                .filter(|p| p.storage_id == storage.id)
                .map(|p| (p.backup, p.offset))
                .collect(),
            None => Vec::new(),
        };
        let ask = Ask {
            name,
            size,
            grows,
            writes: if have { 0 } else { size.saturating_sub(offset) },
        };
        let space = Space { total, free };
        let reservation = self
            .ctx
            .ledger
            .reserve(self.source, ask, space, &partials, || {
                quota_usage(store, uuid, storage.id)
            })?;
        let decided = match (have, resume) {
            (true, _) => Decided::Have,
            (false, Some((offset, hasher))) => Decided::Resume {
                offset,
                hasher: Box::new(hasher),
            },
            (false, None) => Decided::New,
        };
        Ok(Offered {
            name: name.clone(),
            size,
            version,
            decided,
            grows,
            reservation,
        })
    }
}

/// The size of the copy of `name` the storage holds in place, if it holds one: the file's
/// below a `dir` storage, the object's in an `s3` storage's bucket (a store that cannot
/// be asked refuses the offer: the source tries again later).
fn held_len(source: &Source, name: &BackupName) -> Result<Option<u64>, Refusal> {
    let storage = &source.storage;
    let StorageKind::S3(s3) = &storage.kind else {
        let path = client_dir(source, name).join(name.file());
        return Ok(fsx::lstat(&path).ok().filter(|m| m.is_file).map(|m| m.len));
    };
    let failed =
        |e: ObjStoreError| storage_failure(storage.id, "cannot read the bucket", &object_error(e));
    let bucket = crate::objstore::for_storage(storage)
        .map_err(failed)?
        .ok_or_else(|| Refusal::new(Code::Storage, "the storage has no bucket"))?;
    let key = crate::objstore::backup_key(s3, &source.uuid, name.as_str()).map_err(failed)?;
    let head = bucket.head_object(&key);
    crate::objstore::note_outcome(storage.id, &head, crate::model::now());
    Ok(head.map_err(failed)?.map(|o| o.size))
}
