//! Multipart uploads: create, upload a part, complete (with the check that settles a
//! lost answer), abort, list parts and uploads, and the orphan sweep.

use rusty_s3::actions::{CompleteMultipartUploadResponse, CreateMultipartUpload, ListParts};
use rusty_s3::S3Action;

use super::{
    answer_text, corrupt, drain, gone_if_no_upload, unquote, xml, xml_answer, Failure, Key,
    ObjStore, ObjStoreError, Part, SweepReport, UploadEntry, UploadMarker, MAX_ANSWER, META_SHA256,
    META_UPLOAD, SIGNATURE_LIFETIME,
};
use crate::wire::hex;

impl ObjStore {
    /// Starts a multipart upload of `key` marked with `token` (see the module doc), and
    /// `sha256` when the whole object's digest is known before its bytes. The upload is
    /// invisible until completed.
    pub fn create_multipart(
        &self,
        key: &Key,
        token: &str,
        sha256: Option<&[u8; 32]>,
    ) -> Result<String, ObjStoreError> {
        const OP: &str = "create multipart upload";
        let k = key.as_str();
        let mut meta = vec![(META_UPLOAD, token.to_string())];
        if let Some(d) = sha256 {
            meta.push((META_SHA256, hex::encode(d)));
        }
        meta.sort();
        self.run(OP, k, |_| {
            let mut action = self.bucket.create_multipart_upload(Some(&self.signer), k);
            for (name, value) in &meta {
                action.headers_mut().insert(*name, value.clone());
            }
            let mut r = self.send(
                OP,
                k,
                "POST",
                action.sign(SIGNATURE_LIFETIME),
                &meta,
                &[],
                0,
            )?;
            let text = xml_answer(&mut r, "InitiateMultipartUploadResult")?;
            let answer = CreateMultipartUpload::parse_response(&text)
                .map_err(|e| Failure::Retry(format!("answer does not parse: {e}")))?;
            let id = answer.upload_id();
            // It goes into checkpoints and URLs: refuse what no store sends.
            if id.is_empty() || id.len() > 1024 || id.chars().any(char::is_control) {
                return Err(Failure::Fail(corrupt(OP, k, format!("upload id {id:?}"))));
            }
            Ok(id.to_string())
        })
    }

    /// Uploads part `number` (1 to 10,000) of an upload; returns its ETag (quotes
    /// removed). Repeating it replaces the part with the same bytes.
    pub fn upload_part(
        &self,
        key: &Key,
        upload_id: &str,
        number: u16,
        bytes: &[u8],
    ) -> Result<String, ObjStoreError> {
        const OP: &str = "upload part";
        let k = key.as_str();
        let r = self.run(OP, k, |_| {
            let action = self
                .bucket
                .upload_part(Some(&self.signer), k, number, upload_id);
            let mut r = self.send(
                OP,
                k,
                "PUT",
                action.sign(SIGNATURE_LIFETIME),
                &[],
                bytes,
                bytes.len() as u64,
            )?;
            let etag = r
                .header("etag")
                .map(unquote)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Failure::Retry("part answer without an ETag".into()))?;
            drain(&mut r);
            Ok(etag)
        });
        gone_if_no_upload(r, key, upload_id)
    }

    /// Completes an upload from parts `1..=etags.len()`, then checks the object: `size`
    /// bytes, made by the upload marked `token`. A lost answer is settled by that check
    /// rather than by repeating blindly (module doc).
    pub fn complete_multipart(
        &self,
        key: &Key,
        upload_id: &str,
        etags: &[String],
        size: u64,
        token: &str,
    ) -> Result<(), ObjStoreError> {
        const OP: &str = "complete multipart upload";
        let k = key.as_str();
        let body = self
            .bucket
            .complete_multipart_upload(
                Some(&self.signer),
                k,
                upload_id,
                etags.iter().map(String::as_str),
            )
            .body();
        let r = self.run(OP, k, |_| {
            let action = self.bucket.complete_multipart_upload(
                Some(&self.signer),
                k,
                upload_id,
                etags.iter().map(String::as_str),
            );
            let headers = [("Content-Type", "application/xml".to_string())];
            let mut r = self.send(
                OP,
                k,
                "POST",
                action.sign(SIGNATURE_LIFETIME),
                &headers,
                body.as_bytes(),
                body.len() as u64,
            )?;
            let text = answer_text(&mut r)?;
            // S3 may answer 200 and put the failure in the body.
            if let Some(e) = xml::s3_error(&text) {
                return Err(self.classify(OP, k, 200, e));
            }
            if !xml::closed(&text, "CompleteMultipartUploadResult") {
                return Err(Failure::Retry("answer cut short".into()));
            }
            CompleteMultipartUploadResponse::parse(&text)
                .map_err(|e| Failure::Retry(format!("answer does not parse: {e}")))?;
            Ok(())
        });
        match gone_if_no_upload(r, key, upload_id) {
            Ok(()) => self.check_completed(key, size, token).and_then(|done| {
                if done {
                    Ok(())
                } else {
                    Err(corrupt(
                        OP,
                        k,
                        format!("completed, but the object is not our upload of {size} bytes"),
                    ))
                }
            }),
            Err(ObjStoreError::UploadGone { .. }) if self.check_completed(key, size, token)? => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `key` holds the object our upload `token` made, `size` bytes long.
    fn check_completed(&self, key: &Key, size: u64, token: &str) -> Result<bool, ObjStoreError> {
        Ok(self
            .head_object(key)?
            .is_some_and(|i| i.size == size && i.upload_token.as_deref() == Some(token)))
    }

    /// Aborts an upload and frees its parts; done too when the upload was already gone.
    pub fn abort_multipart(&self, key: &Key, upload_id: &str) -> Result<(), ObjStoreError> {
        let k = key.as_str();
        let sign = || {
            self.bucket
                .abort_multipart_upload(Some(&self.signer), k, upload_id)
                .sign(SIGNATURE_LIFETIME)
        };
        let r = self.call_for_status("abort multipart upload", k, "DELETE", sign, &[], &[]);
        match gone_if_no_upload(r, key, upload_id) {
            Err(ObjStoreError::UploadGone { .. } | ObjStoreError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    /// Every part uploaded so far, in part order, page by page. A part number may come
    /// more than once: SeaweedFS once listed a part twice after its upload failed with a
    /// replica down (retried, most likely). The caller decides what a repeat means.
    pub fn list_parts(&self, key: &Key, upload_id: &str) -> Result<Vec<Part>, ObjStoreError> {
        const OP: &str = "list parts";
        let k = key.as_str();
        let mut parts: Vec<Part> = Vec::new();
        let mut marker: Option<u16> = None;
        loop {
            let r = self.run(OP, k, |_| {
                let mut action = ListParts::new(&self.bucket, Some(&self.signer), k, upload_id);
                action.set_max_parts(self.settings.list_page);
                if let Some(m) = marker {
                    action.set_part_number_marker(m);
                }
                let mut r = self.send(
                    OP,
                    k,
                    "GET",
                    action.sign(SIGNATURE_LIFETIME),
                    &[],
                    &[],
                    MAX_ANSWER,
                )?;
                let text = xml_answer(&mut r, "ListPartsResult")?;
                ListParts::parse_response(&text)
                    .map_err(|e| Failure::Retry(format!("listing does not parse: {e}")))
            });
            let page = gone_if_no_upload(r, key, upload_id)?;
            for p in page.parts {
                if parts.last().is_some_and(|last| last.number > p.number) {
                    return Err(corrupt(
                        OP,
                        k,
                        format!("part {} listed out of order", p.number),
                    ));
                }
                parts.push(Part {
                    number: p.number,
                    size: p.size,
                    etag: unquote(&p.etag),
                });
            }
            match page.next_part_number_marker {
                Some(m) if marker.is_none_or(|old| m > old) => marker = Some(m),
                Some(_) => return Err(corrupt(OP, k, "the listing does not advance".into())),
                None => return Ok(parts),
            }
        }
    }

    /// One page of the multipart uploads in progress under `prefix`, from `marker` (what
    /// the page before named); the next marker when there are more.
    pub fn list_uploads_page(
        &self,
        prefix: &str,
        marker: Option<&UploadMarker>,
    ) -> Result<(Vec<UploadEntry>, Option<UploadMarker>), ObjStoreError> {
        const OP: &str = "list multipart uploads";
        self.run(OP, prefix, |_| {
            let max = self.settings.list_page.to_string();
            // Sorted by name, as the signature wants them.
            let mut query: Vec<(&str, &str)> = vec![("encoding-type", "url")];
            if let Some(m) = marker {
                if let Some(key) = &m.key {
                    query.push(("key-marker", key));
                }
                query.push(("upload-id-marker", &m.upload_id));
            }
            query.push(("max-uploads", &max));
            query.push(("prefix", prefix));
            query.push(("uploads", ""));
            query.sort();
            let url = rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                rusty_s3::Method::Get,
                self.bucket.base_url().clone(),
                self.signer.key(),
                self.signer.secret(),
                self.signer.token(),
                self.bucket.region(),
                SIGNATURE_LIFETIME.as_secs(),
                query.iter().copied(),
                std::iter::empty(),
            );
            let mut r = self.send(OP, prefix, "GET", url, &[], &[], MAX_ANSWER)?;
            let text = xml_answer(&mut r, "ListMultipartUploadsResult")?;
            let page = xml::uploads_page(&text)
                .map_err(|e| Failure::Retry(format!("listing does not parse: {e}")))?;
            let decode = page.encoding_type.as_deref() == Some("url");
            let mut entries = Vec::with_capacity(page.uploads.len());
            for u in page.uploads {
                let initiated = u.initiated.parse::<jiff::Timestamp>().map_err(|e| {
                    Failure::Fail(corrupt(
                        OP,
                        prefix,
                        format!("upload initiated {:?}: {e}", u.initiated),
                    ))
                })?;
                entries.push(UploadEntry {
                    key: if decode {
                        xml::url_decode(&u.key)
                    } else {
                        u.key
                    },
                    upload_id: u.upload_id,
                    initiated: initiated.as_second(),
                });
            }
            // A truncated page names where the next one starts. SeaweedFS gives only
            // NextUploadIdMarker (its upload ids sort in listing order, and it reads a
            // key-marker as "this key only"), so a key marker is sent back only when the
            // server gave one.
            let next = if page.is_truncated == Some(true) {
                let key = page.next_key_marker.filter(|k| !k.is_empty()).map(|k| {
                    if decode {
                        xml::url_decode(&k)
                    } else {
                        k
                    }
                });
                match page.next_upload_id_marker.filter(|i| !i.is_empty()) {
                    Some(upload_id) => Some(UploadMarker { key, upload_id }),
                    None => {
                        return Err(Failure::Retry(
                            "a truncated upload listing without its next marker".into(),
                        ))
                    }
                }
            } else {
                None
            };
            if next.is_some() && next.as_ref() == marker {
                return Err(Failure::Fail(corrupt(
                    OP,
                    prefix,
                    "the listing does not advance".into(),
                )));
            }
            Ok((entries, next))
        })
    }

    /// Every multipart upload in progress under `prefix`.
    pub fn list_uploads(&self, prefix: &str) -> Result<Vec<UploadEntry>, ObjStoreError> {
        let mut all = Vec::new();
        let mut marker = None;
        loop {
            let (page, next) = self.list_uploads_page(prefix, marker.as_ref())?;
            all.extend(page);
            match next {
                Some(m) => marker = Some(m),
                None => return Ok(all),
            }
        }
    }

    /// The orphan sweep: aborts every upload under `prefix` initiated before
    /// `initiated_before` (unix seconds) that `keep` does not claim (the caller keeps the
    /// uploads its database still resumes). Stops at the first failure, having aborted
    /// what it could; the next pass takes the rest.
    pub fn sweep_uploads(
        &self,
        prefix: &str,
        initiated_before: i64,
        keep: impl Fn(&UploadEntry) -> bool,
    ) -> Result<SweepReport, ObjStoreError> {
        let mut report = SweepReport::default();
        for upload in self.list_uploads(prefix)? {
            if upload.initiated >= initiated_before || keep(&upload) {
                report.kept += 1;
                continue;
            }
            let key = Key::parse(&upload.key)?;
            self.abort_multipart(&key, &upload.upload_id)?;
            report.aborted.push(upload);
        }
        Ok(report)
    }
}
