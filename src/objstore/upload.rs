//! The multipart writer: bytes in, parts uploaded as they fill, a durable checkpoint the
//! caller records, resume from that checkpoint after a crash, complete or abort.
//!
//! Memory: one part filling and at most one part uploading on its own thread, so at most
//! two part buffers (2 × 32 MiB, SPEC 19's 64 MB per upload in flight).
//!
//! Invariant: `durable` describes parts `1..=durable.parts`, every one uploaded in full
//! (its ETag is in `etags`), and the SHA-256 state after exactly their bytes. The part in
//! flight and the bytes in the buffer are not in it until the part's upload returned.

use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest, Sha256};

use super::{Key, ObjStore, ObjStoreError};
use crate::rand;

const MIB: u64 = 1024 * 1024;
/// S3's most parts in one upload.
pub(super) const MAX_PARTS: u64 = 10_000;
/// The checkpoint encoding's version (first byte).
const CHECKPOINT_V1: u8 = 1;

/// The size of every part of an upload but the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartSize(u64);

impl PartSize {
    /// SPEC 19's floor (S3's own is 5 MiB).
    pub const MIN: u64 = 8 * MIB;
    /// Two buffers of this stay within 64 MiB; with 10,000 parts an object may be
    /// 312.5 GiB.
    pub const MAX: u64 = 32 * MIB;

    /// The smallest whole number of MiB, at least [`PartSize::MIN`], that carries `size`
    /// bytes in at most 10,000 parts.
    pub fn for_object(size: u64) -> Result<PartSize, ObjStoreError> {
        let per_part = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        let part = per_part.max(Self::MIN);
        if part > Self::MAX {
            return Err(ObjStoreError::Config(format!(
                "an object of {size} bytes needs parts over {} MiB (the most is {} GiB)",
                Self::MAX / MIB,
                Self::MAX * MAX_PARTS / 1024 / MIB
            )));
        }
        Ok(PartSize(part))
    }

    /// A given size, a multiple of 1 MiB from [`PartSize::MIN`] to [`PartSize::MAX`].
    pub fn exact(bytes: u64) -> Result<PartSize, ObjStoreError> {
        if !(Self::MIN..=Self::MAX).contains(&bytes) || !bytes.is_multiple_of(MIB) {
            return Err(ObjStoreError::Config(format!(
                "part size {bytes} is not a whole number of MiB from 8 to 32"
            )));
        }
        Ok(PartSize(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

/// What the caller records to resume an upload after a crash: which upload, and what of
/// it is durable. Encoded in under 200 bytes ([`Checkpoint::encode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub upload_id: String,
    /// The token the upload was created with (`x-amz-meta-replgate-upload`).
    pub token: String,
    pub part_size: u64,
    /// Parts `1..=parts` are uploaded, each `part_size` bytes.
    pub parts: u16,
    /// SHA-256 over those parts' ETags, in order, each followed by `\n`: a resume refuses
    /// parts that are not the ones this checkpoint saw.
    pub etags_digest: [u8; 32],
    /// The SHA-256 state after the first `offset()` bytes of the object, so the digest
    /// of the whole object is known before completing, even after a resume.
    pub sha256_state: Vec<u8>,
}

impl Checkpoint {
    /// Bytes durable in the store: where the sender resumes.
    pub fn offset(&self) -> u64 {
        u64::from(self.parts) * self.part_size
    }

    /// Version, part size, parts, ETag digest, hash state, then upload id and token
    /// (`u16` length each). Integers big endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CHECKPOINT_V1];
        out.extend_from_slice(&self.part_size.to_be_bytes());
        out.extend_from_slice(&self.parts.to_be_bytes());
        out.extend_from_slice(&self.etags_digest);
        for field in [
            &self.sha256_state[..],
            self.upload_id.as_bytes(),
            self.token.as_bytes(),
        ] {
            // Hash states are ~105 bytes; upload ids and tokens were checked at create.
            out.extend_from_slice(&(field.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
            out.extend_from_slice(&field[..field.len().min(usize::from(u16::MAX))]);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, ObjStoreError> {
        let bad = || ObjStoreError::Config("upload checkpoint does not decode".into());
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], ObjStoreError> {
            if rest.len() < n {
                return Err(bad());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        if take(1)? != [CHECKPOINT_V1] {
            return Err(bad());
        }
        let part_size = u64::from_be_bytes(take(8)?.try_into().map_err(|_| bad())?);
        let parts = u16::from_be_bytes(take(2)?.try_into().map_err(|_| bad())?);
        let etags_digest: [u8; 32] = take(32)?.try_into().map_err(|_| bad())?;
        let mut field = || -> Result<Vec<u8>, ObjStoreError> {
            let n = u16::from_be_bytes(take(2)?.try_into().map_err(|_| bad())?);
            Ok(take(usize::from(n))?.to_vec())
        };
        let sha256_state = field()?;
        let upload_id = String::from_utf8(field()?).map_err(|_| bad())?;
        let token = String::from_utf8(field()?).map_err(|_| bad())?;
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(Checkpoint {
            upload_id,
            token,
            part_size,
            parts,
            etags_digest,
            sha256_state,
        })
    }
}

/// A completed upload: its size and the SHA-256 of every byte written, across resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// A part uploading on its own thread; its buffer comes back with the answer.
struct InFlight {
    number: u16,
    sha256_state_after: Vec<u8>,
    handle: JoinHandle<(Vec<u8>, Result<String, ObjStoreError>)>,
}

/// Writes one object as a multipart upload. See the module doc for memory and the
/// invariant. Dropping it leaves the upload in the store, resumable from the last
/// checkpoint (or swept as an orphan later); [`MultipartWriter::abort`] removes it.
pub struct MultipartWriter {
    store: Arc<ObjStore>,
    key: Key,
    part_size: usize,
    buf: Vec<u8>,
    spare: Option<Vec<u8>>,
    hasher: Sha256,
    etags: Vec<String>,
    etags_hasher: Sha256,
    durable: Checkpoint,
    inflight: Option<InFlight>,
    /// A part upload failed: the writer takes no more bytes (resume from the checkpoint).
    broken: bool,
}

impl MultipartWriter {
    /// Starts a new upload of `key` (`sha256` when the object's digest is known in
    /// advance). Record [`MultipartWriter::checkpoint`] at once: it holds the upload id
    /// a resume or the orphan sweep needs.
    pub fn create(
        store: Arc<ObjStore>,
        key: Key,
        part_size: PartSize,
        sha256: Option<&[u8; 32]>,
    ) -> Result<MultipartWriter, ObjStoreError> {
        let token = rand::hex_string(16);
        let upload_id = store.create_multipart(&key, &token, sha256)?;
        let hasher = Sha256::new();
        let durable = Checkpoint {
            upload_id,
            token,
            part_size: part_size.bytes(),
            parts: 0,
            etags_digest: Sha256::new().finalize().into(),
            sha256_state: hasher.serialize().to_vec(),
        };
        Ok(MultipartWriter::at(store, key, durable, hasher, Vec::new()))
    }

    /// Takes an upload up again at `checkpoint`: lists its parts and checks that parts
    /// `1..=checkpoint.parts` are there, full size, with the ETags the checkpoint saw.
    /// Parts after them (uploaded after the checkpoint was recorded) are uploaded again.
    /// `UploadGone` when the upload no longer exists; `Corrupt` when its parts changed.
    pub fn resume(
        store: Arc<ObjStore>,
        key: Key,
        checkpoint: &Checkpoint,
    ) -> Result<MultipartWriter, ObjStoreError> {
        const OP: &str = "resume multipart upload";
        let corrupt = |what: String| ObjStoreError::Corrupt {
            op: OP,
            key: key.to_string(),
            what,
        };
        let part_size = PartSize::exact(checkpoint.part_size)?;
        let state = SerializedState::<Sha256>::try_from(&checkpoint.sha256_state[..])
            .map_err(|_| corrupt("the checkpoint's hash state has the wrong length".into()))?;
        let hasher = Sha256::deserialize(&state)
            .map_err(|_| corrupt("the checkpoint's hash state does not decode".into()))?;
        let listed = store.list_parts(&key, &checkpoint.upload_id)?;
        let mut etags = Vec::with_capacity(usize::from(checkpoint.parts));
        for number in 1..=checkpoint.parts {
            let mut copies = listed.iter().filter(|p| p.number == number);
            let part = copies
                .next()
                .ok_or_else(|| corrupt(format!("part {number} of the checkpoint is missing")))?;
            // A part listed twice is usable only if both entries say the same; the ones
            // after the checkpoint are uploaded again, so their repeats do not matter.
            if copies.any(|p| p.etag != part.etag || p.size != part.size) {
                return Err(corrupt(format!(
                    "part {number} of the checkpoint is listed twice, with different contents"
                )));
            }
            if part.size != part_size.bytes() {
                return Err(corrupt(format!(
                    "part {number} holds {} bytes, not {}",
                    part.size,
                    part_size.bytes()
                )));
            }
            etags.push(part.etag.clone());
        }
        let writer = MultipartWriter::at(store, key.clone(), checkpoint.clone(), hasher, etags);
        if writer.etags_hasher.clone().finalize()[..] != checkpoint.etags_digest[..] {
            return Err(corrupt(
                "the uploaded parts are not the ones the checkpoint recorded".into(),
            ));
        }
        Ok(writer)
    }

    fn at(
        store: Arc<ObjStore>,
        key: Key,
        durable: Checkpoint,
        hasher: Sha256,
        etags: Vec<String>,
    ) -> MultipartWriter {
        let mut etags_hasher = Sha256::new();
        for tag in &etags {
            etags_hasher.update(tag.as_bytes());
            etags_hasher.update(b"\n");
        }
        // PartSize keeps part sizes within 32 MiB, which fits any usize we run on.
        let part_size = usize::try_from(durable.part_size).unwrap_or(usize::MAX);
        MultipartWriter {
            store,
            key,
            part_size,
            buf: Vec::with_capacity(part_size),
            spare: None,
            hasher,
            etags,
            etags_hasher,
            durable,
            inflight: None,
            broken: false,
        }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    pub fn upload_id(&self) -> &str {
        &self.durable.upload_id
    }

    /// Bytes taken so far (durable, in flight and buffered).
    pub fn written(&self) -> u64 {
        let inflight = if self.inflight.is_some() {
            self.durable.part_size
        } else {
            0
        };
        self.durable.offset() + inflight + self.buf.len() as u64
    }

    /// The SHA-256 of every byte taken so far, from the start of the object.
    pub fn sha256(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Takes `data`; each time a part fills it is uploaded on its own thread while the
    /// next one fills (waiting first for the one before: two buffers at most).
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), ObjStoreError> {
        if self.broken {
            return Err(self.broken_error());
        }
        while !data.is_empty() {
            let take = data.len().min(self.part_size - self.buf.len());
            self.hasher.update(&data[..take]);
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.part_size {
                self.ship()?;
            }
        }
        Ok(())
    }

    /// What is durable now, taking in a part upload that has finished. Does not wait.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, ObjStoreError> {
        if self
            .inflight
            .as_ref()
            .is_some_and(|f| f.handle.is_finished())
        {
            self.reap()?;
        }
        Ok(self.durable.clone())
    }

    /// Waits for the part in flight, then what is durable.
    pub fn sync(&mut self) -> Result<Checkpoint, ObjStoreError> {
        self.reap()?;
        Ok(self.durable.clone())
    }

    /// Uploads what is buffered as the last part and completes the upload, which then
    /// becomes the object at the key. Call it only once [`MultipartWriter::sha256`]
    /// matched the digest the data should have: a completed upload replaces what the
    /// key held.
    pub fn complete(mut self) -> Result<Completed, ObjStoreError> {
        self.reap()?;
        if !self.buf.is_empty() || self.etags.is_empty() {
            let number = self.next_part()?;
            let etag =
                self.store
                    .upload_part(&self.key, &self.durable.upload_id, number, &self.buf)?;
            self.etags.push(etag);
        }
        let size = self.written();
        let sha256 = self.sha256();
        self.store.complete_multipart(
            &self.key,
            &self.durable.upload_id,
            &self.etags,
            size,
            &self.durable.token,
        )?;
        Ok(Completed { size, sha256 })
    }

    /// Aborts the upload: its parts are freed and nothing appears at the key.
    pub fn abort(mut self) -> Result<(), ObjStoreError> {
        if let Some(f) = self.inflight.take() {
            let _ = f.handle.join();
        }
        self.store
            .abort_multipart(&self.key, &self.durable.upload_id)
    }

    fn next_part(&self) -> Result<u16, ObjStoreError> {
        let number = self.etags.len() as u64 + 1;
        if number > MAX_PARTS {
            return Err(ObjStoreError::Config(format!(
                "upload of {}: more than {MAX_PARTS} parts of {} bytes",
                self.key, self.part_size
            )));
        }
        // At most 10,000, checked above.
        Ok(number as u16)
    }

    /// Sends the full buffer as the next part, after the one in flight has finished.
    fn ship(&mut self) -> Result<(), ObjStoreError> {
        self.reap()?;
        let number = self.next_part()?;
        let next = self
            .spare
            .take()
            .unwrap_or_else(|| Vec::with_capacity(self.part_size));
        let part = std::mem::replace(&mut self.buf, next);
        let (store, key, upload_id) = (
            self.store.clone(),
            self.key.clone(),
            self.durable.upload_id.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("objstore-part".into())
            .spawn(move || {
                let r = store.upload_part(&key, &upload_id, number, &part);
                (part, r)
            })
            .map_err(|e| ObjStoreError::Config(format!("start a part upload thread: {e}")))?;
        self.inflight = Some(InFlight {
            number,
            sha256_state_after: self.hasher.serialize().to_vec(),
            handle,
        });
        Ok(())
    }

    /// Waits for the part in flight and makes it durable in `durable`.
    fn reap(&mut self) -> Result<(), ObjStoreError> {
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        let (mut part, result) = match f.handle.join() {
            Ok(done) => done,
            Err(_) => {
                self.broken = true;
                return Err(self.broken_error());
            }
        };
        let etag = match result {
            Ok(etag) => etag,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
        debug_assert_eq!(usize::from(f.number), self.etags.len() + 1);
        self.etags_hasher.update(etag.as_bytes());
        self.etags_hasher.update(b"\n");
        self.etags.push(etag);
        self.durable.parts = f.number;
        self.durable.etags_digest = self.etags_hasher.clone().finalize().into();
        self.durable.sha256_state = f.sha256_state_after;
        part.clear();
        self.spare = Some(part);
        Ok(())
    }

    fn broken_error(&self) -> ObjStoreError {
        ObjStoreError::Corrupt {
            op: "write multipart upload",
            key: self.key.to_string(),
            what: "a part upload failed earlier; resume from the last checkpoint".into(),
        }
    }
}

impl Drop for MultipartWriter {
    fn drop(&mut self) {
        // No thread outlives the writer; the part may land, which a resume accepts or
        // uploads again.
        if let Some(f) = self.inflight.take() {
            let _ = f.handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_grow_with_the_object_and_stop_at_the_cap() {
        assert_eq!(PartSize::for_object(0).unwrap().bytes(), 8 * MIB);
        assert_eq!(PartSize::for_object(80_000 * MIB).unwrap().bytes(), 8 * MIB);
        assert_eq!(
            PartSize::for_object(80_000 * MIB + 1).unwrap().bytes(),
            9 * MIB
        );
        assert_eq!(
            PartSize::for_object(320_000 * MIB).unwrap().bytes(),
            32 * MIB
        );
        assert!(PartSize::for_object(320_000 * MIB + 1).is_err());
        assert!(PartSize::exact(7 * MIB).is_err() && PartSize::exact(8 * MIB + 1).is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_a_resumed_hash_continues_where_it_stopped() {
        let mut h = Sha256::new();
        h.update(vec![7u8; 8 * MIB as usize]);
        let cp = Checkpoint {
            upload_id: "2~abc/def".into(),
            token: "0123456789abcdef0123456789abcdef".into(),
            part_size: 8 * MIB,
            parts: 1,
            etags_digest: [9; 32],
            sha256_state: h.serialize().to_vec(),
        };
        let bytes = cp.encode();
        assert!(bytes.len() < 200, "{}", bytes.len());
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Checkpoint::decode(&[bytes.clone(), vec![0]].concat()).is_err());
        assert!(Checkpoint::decode(&[2]).is_err());

        let state = SerializedState::<Sha256>::try_from(&cp.sha256_state[..]).unwrap();
        let mut resumed = Sha256::deserialize(&state).unwrap();
        resumed.update(b"tail");
        h.update(b"tail");
        assert_eq!(resumed.finalize(), h.finalize());
    }
}
