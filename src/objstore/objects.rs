//! Object operations: put, head, read (whole, ranged, hashed), delete, list.

use std::io::{self, Read, Write};
use std::ops::Range;

use rusty_s3::actions::ListObjectsV2;
use rusty_s3::S3Action;
use sha2::{Digest, Sha256};

use super::{
    corrupt, http, parse_content_range, parse_digest, unquote, xml_answer, Failure, Key, ObjStore,
    ObjStoreError, ObjectEntry, ObjectInfo, MAX_ANSWER, MAX_IN_MEMORY, META_SHA256, META_UPLOAD,
    SIGNATURE_LIFETIME,
};
use crate::wire::hex;

impl ObjStore {
    /// Stores `bytes` (at most [`MAX_IN_MEMORY`]) at `key` in one request, with their
    /// SHA-256 as `x-amz-meta-sha256`. Replaces an object there atomically.
    pub fn put_object(
        &self,
        key: &Key,
        bytes: &[u8],
        sha256: &[u8; 32],
    ) -> Result<(), ObjStoreError> {
        const OP: &str = "put object";
        if bytes.len() as u64 > MAX_IN_MEMORY {
            return Err(ObjStoreError::Config(format!(
                "put object {key}: {} bytes is more than one request carries; use a multipart upload",
                bytes.len()
            )));
        }
        let digest = hex::encode(sha256);
        let sign = || {
            let mut action = self.bucket.put_object(Some(&self.signer), key.as_str());
            action.headers_mut().insert(META_SHA256, digest.clone());
            action.sign(SIGNATURE_LIFETIME)
        };
        let headers = [(META_SHA256, digest.clone())];
        self.call_for_status(OP, key.as_str(), "PUT", sign, &headers, bytes)
    }

    /// What the store says about `key`; `None` when there is no such object.
    pub fn head_object(&self, key: &Key) -> Result<Option<ObjectInfo>, ObjStoreError> {
        const OP: &str = "head object";
        let found = self.run(OP, key.as_str(), |_| {
            let action = self.bucket.head_object(Some(&self.signer), key.as_str());
            let r = self.send(
                OP,
                key.as_str(),
                "HEAD",
                action.sign(SIGNATURE_LIFETIME),
                &[],
                &[],
                0,
            )?;
            let size = r
                .header("content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Failure::Retry("HEAD answer without a Content-Length".into()))?;
            let sha256 = match r.header(META_SHA256) {
                None => None,
                Some(v) => Some(parse_digest(v).ok_or_else(|| {
                    Failure::Fail(corrupt(
                        OP,
                        key.as_str(),
                        format!("{META_SHA256} is {v:?}, not a SHA-256"),
                    ))
                })?),
            };
            Ok(ObjectInfo {
                size,
                etag: r.header("etag").map(unquote),
                sha256,
                upload_token: r.header(META_UPLOAD).map(str::to_string),
            })
        });
        match found {
            Ok(info) => Ok(Some(info)),
            Err(ObjStoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the bytes of `key` in `range` (the whole object when `None`) to `sink` and
    /// returns how many. Every read asks for a range, whole ones too (`bytes=0-`), so the
    /// answer's `Content-Range` says where it ends whatever its `Content-Length` claims.
    /// An answer cut short is resumed from where it stopped, pinned by `If-Match` to the
    /// object first read; one that changed meanwhile is `Corrupt`. A failed write to
    /// `sink` fails the call (as `Permanent` with code `LocalWrite`).
    pub fn read_object(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
        sink: &mut dyn Write,
    ) -> Result<u64, ObjStoreError> {
        const OP: &str = "get object";
        let k = key.as_str();
        let start = range.as_ref().map_or(0, |r| r.start);
        let end = range.as_ref().map(|r| r.end);
        if end.is_some_and(|e| e <= start) {
            return Ok(0);
        }
        let mut pos = start;
        let mut end_known = end;
        let mut etag: Option<String> = None;
        let mut buf = vec![0u8; 64 * 1024];
        let changed = || corrupt(OP, k, "the object changed while it was read".into());
        self.run(OP, k, |_| {
            let action = self.bucket.get_object(Some(&self.signer), k);
            let last = end_known.map(|e| (e - 1).to_string()).unwrap_or_default();
            let mut headers = vec![("Range", format!("bytes={pos}-{last}"))];
            if let Some(tag) = &etag {
                headers.push(("If-Match", format!("\"{tag}\"")));
            }
            let want = end_known.map_or(MAX_IN_MEMORY, |e| e - pos);
            let url = action.sign(SIGNATURE_LIFETIME);
            let mut r = match self.send(OP, k, "GET", url, &headers, &[], want) {
                Err(Failure::Fail(ObjStoreError::Permanent { status: 412, .. })) => {
                    return Err(Failure::Fail(changed()))
                }
                // `bytes=0-` of an empty object is not satisfiable: nothing to read.
                Err(Failure::Fail(ObjStoreError::Permanent { status: 416, .. }))
                    if range.is_none() && pos == 0 =>
                {
                    return match self.head_object(key) {
                        Ok(Some(info)) if info.size == 0 => Ok(()),
                        Ok(_) => Err(Failure::Retry("416 for an object that is not empty".into())),
                        Err(e) => Err(Failure::Fail(e)),
                    };
                }
                other => other?,
            };
            let this_tag = r.header("etag").map(unquote);
            if etag.is_some() && this_tag != etag {
                return Err(Failure::Fail(changed()));
            }
            etag = etag.take().or(this_tag);
            let answer_end = answer_end(&r, k, pos, end_known, range.is_none())?;
            end_known = Some(answer_end);
            let from = pos;
            // A cut after some bytes arrived does not count against the budget: a long
            // read goes on over as many calls as its bound needs.
            let cut = |pos: u64, why: String| {
                if pos > from {
                    Failure::Progress(why)
                } else {
                    Failure::Retry(why)
                }
            };
            while pos < answer_end {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(cut(pos, format!("body cut at byte {pos}: {e}"))),
                };
                if pos + n as u64 > answer_end {
                    return Err(Failure::Fail(corrupt(
                        OP,
                        k,
                        "the answer is longer than its range".into(),
                    )));
                }
                sink.write_all(&buf[..n]).map_err(|e| {
                    Failure::Fail(ObjStoreError::Permanent {
                        op: OP,
                        key: k.to_string(),
                        status: 0,
                        code: "LocalWrite".into(),
                        message: e.to_string(),
                    })
                })?;
                pos += n as u64;
            }
            if pos < answer_end {
                return Err(cut(
                    pos,
                    format!("body ended at byte {pos} of {answer_end}"),
                ));
            }
            Ok(())
        })?;
        Ok(pos - start)
    }

    /// The bytes of `key` in `range`, at most [`MAX_IN_MEMORY`] of them (for dedup's
    /// ranged reads of held objects).
    pub fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Vec<u8>, ObjStoreError> {
        if range.end.saturating_sub(range.start) > MAX_IN_MEMORY {
            return Err(ObjStoreError::Config(format!(
                "get object {key}: a range of more than {MAX_IN_MEMORY} bytes does not fit in memory"
            )));
        }
        let mut out = Vec::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
        self.read_object(key, Some(range), &mut out)?;
        Ok(out)
    }

    /// Reads the whole object back and returns its size and SHA-256 (verify, and the
    /// check after a resumed upload).
    pub fn sha256_of(&self, key: &Key) -> Result<(u64, [u8; 32]), ObjStoreError> {
        struct Hashing(Sha256);
        impl Write for Hashing {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hashing(Sha256::new());
        let size = self.read_object(key, None, &mut h)?;
        Ok((size, h.0.finalize().into()))
    }

    /// Removes `key`; done too when there was nothing there.
    pub fn delete_object(&self, key: &Key) -> Result<(), ObjStoreError> {
        let k = key.as_str();
        let sign = || {
            self.bucket
                .delete_object(Some(&self.signer), k)
                .sign(SIGNATURE_LIFETIME)
        };
        match self.call_for_status("delete object", k, "DELETE", sign, &[], &[]) {
            Err(ObjStoreError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// One page of the objects whose keys start with `prefix`, from `continuation` (the
    /// `next` of the page before); the next page's token when there are more.
    pub fn list_objects_page(
        &self,
        prefix: &str,
        continuation: Option<&str>,
    ) -> Result<(Vec<ObjectEntry>, Option<String>), ObjStoreError> {
        const OP: &str = "list objects";
        self.run(OP, prefix, |_| {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.signer));
            action.with_prefix(prefix);
            action.with_max_keys(usize::from(self.settings.list_page));
            if let Some(token) = continuation {
                action.with_continuation_token(token);
            }
            let mut r = self.send(
                OP,
                prefix,
                "GET",
                action.sign(SIGNATURE_LIFETIME),
                &[],
                &[],
                MAX_ANSWER,
            )?;
            let text = xml_answer(&mut r, "ListBucketResult")?;
            let page = ListObjectsV2::parse_response(&text)
                .map_err(|e| Failure::Retry(format!("listing does not parse: {e}")))?;
            let entries = page
                .contents
                .into_iter()
                .map(|c| ObjectEntry {
                    key: c.key,
                    size: c.size.unwrap_or(0),
                    etag: c.etag.as_deref().map(unquote),
                })
                .collect();
            Ok((entries, page.next_continuation_token))
        })
    }

    /// Every object under `prefix`, page by page.
    pub fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectEntry>, ObjStoreError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = self.list_objects_page(prefix, token.as_deref())?;
            all.extend(page);
            match next {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                Some(_) => {
                    return Err(corrupt(
                        "list objects",
                        prefix,
                        "the listing repeats its continuation token".into(),
                    ))
                }
                None => return Ok(all),
            }
        }
    }
}

/// Where the bytes of a read's answer `r` end, by its own account: a `206`'s
/// `Content-Range`, which must start at `pos` (and end at `end_known`, when known), or a
/// `200`'s length when a `whole` read from the start got the whole object.
fn answer_end(
    r: &http::Response<'_>,
    k: &str,
    pos: u64,
    end_known: Option<u64>,
    whole: bool,
) -> Result<u64, Failure> {
    const OP: &str = "get object";
    Ok(match r.status() {
        206 => {
            let (first, last, _total) = r
                .header("content-range")
                .and_then(parse_content_range)
                .ok_or_else(|| Failure::Retry("206 without a usable Content-Range".into()))?;
            if first != pos || end_known.is_some_and(|e| last + 1 != e) {
                return Err(Failure::Fail(corrupt(
                    OP,
                    k,
                    format!("asked for bytes from {pos}, got {first}-{last}"),
                )));
            }
            last + 1
        }
        // A store that ignores Range answers the whole object: fine for a whole
        // read from its start.
        200 if whole && pos == 0 => r
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Failure::Retry("object answer without a Content-Length".into()))?,
        other => {
            return Err(Failure::Fail(corrupt(
                OP,
                k,
                format!("asked for bytes from {pos}, got status {other}"),
            )))
        }
    })
}
