//! Source-side pairing handlers: ask a target for replication (probe and pin its CA, make
//! a key and CSR, file the request), list targets, forget one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::body::quoted;
use super::error::ApiError;
use super::{Call, Reply};
use crate::ca;
use crate::fsx;
use crate::identity::KEY_FILE;
use crate::pairing::source::{self, Distrust};
use crate::remote::{Remote, RemoteError, RequestBody};
use crate::store::{AuditRecord, TargetRecord, TargetStatus};

/// How long the first contact with a target may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Asking a target can take close to a minute when it does not answer; at most this many
/// run at once, so the API workers stay free for everything else.
const MAX_OUTGOING: usize = 2;
static OUTGOING: AtomicUsize = AtomicUsize::new(0);

/// One of the `MAX_OUTGOING` slots, released on drop.
struct OutgoingSlot;

impl OutgoingSlot {
    fn take() -> Option<OutgoingSlot> {
        OUTGOING
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_OUTGOING).then_some(n + 1)
            })
            .ok()
            .map(|_| OutgoingSlot)
    }
}

impl Drop for OutgoingSlot {
    fn drop(&mut self) {
        OUTGOING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn audit(call: &Call, action: &str, host: &str, detail: String) -> AuditRecord {
    AuditRecord {
        time: call.now,
        user: call.user(),
        address: call.address(),
        action: action.into(),
        object: format!("target:{host}"),
        detail,
    }
}

fn remote_error(host: &str, e: RemoteError) -> ApiError {
    match e {
        RemoteError::Refused {
            status: 429,
            message,
            retry_after,
        } => ApiError::TooMany {
            message: format!("target {host}: {message}"),
            retry_after: retry_after.unwrap_or(60),
        },
        e if e.is_local() => ApiError::Internal(Box::new(e)),
        other => ApiError::BadGateway(format!("target {host}: {}", crate::model::Chain(&other))),
    }
}

pub fn request_target(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    let kind = body.str("type")?;
    if kind != "appliance" {
        return Err(ApiError::BadRequest(format!(
            "field `type`: {} is not supported; only \"appliance\" targets exist",
            quoted(kind)
        )));
    }
    let given = body.str("target")?;
    let host = source::parse_target(given).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "field `target`: {} is not host[:port]",
            quoted(given)
        ))
    })?;
    let insecure = body.opt_flag("insecure")?.unwrap_or(false);
    let fingerprint = match body.opt_str("fingerprint")? {
        Some(f) => Some(ca::normalize_fingerprint(f).ok_or_else(|| {
            ApiError::BadRequest(
                "field `fingerprint` must be 64 hex digits (SHA-256), colons optional".into(),
            )
        })?),
        None => None,
    };
    let app = call.app;
    let existing = app.store.targets()?.into_iter().find(|t| t.host == host);
    if let Some(t) = &existing {
        if matches!(
            t.status,
            TargetStatus::Pending | TargetStatus::Accepted | TargetStatus::Complete
        ) {
            return Err(ApiError::Conflict(format!(
                "a pairing with {host} is already {}; forget it first to start over",
                t.status.as_str()
            )));
        }
    }

    let _slot = OutgoingSlot::take().ok_or_else(|| {
        ApiError::Unavailable("other requests to targets are in progress; retry in a minute".into())
    })?;
    // Trust: the CA the target presents must be pinned, given, or accepted as presented.
    let presented = crate::tls::probe_presented_ca(&host, PROBE_TIMEOUT).map_err(|e| {
        ApiError::BadGateway(format!(
            "cannot reach target {host}: {}",
            crate::model::Chain(&e)
        ))
    })?;
    let presented_fp = ca::sha256_hex(presented.as_ref());
    let pinned = existing.as_ref().map(|t| t.ca_fingerprint.as_str());
    match source::trust(&presented_fp, fingerprint.as_deref(), insecure, pinned) {
        Ok(()) => {}
        Err(Distrust::Unknown) => {
            return Err(ApiError::Untrusted {
                message: format!(
                    "target {host} presented a CA with SHA-256 fingerprint {presented_fp}, which is not trusted yet; \
                     compare it with the fingerprint shown on the target and retry with \"fingerprint\" (or \"insecure\": 1)"
                ),
                fingerprint: presented_fp,
            })
        }
        Err(Distrust::Mismatch { expected }) => {
            return Err(ApiError::Untrusted {
                message: format!("target {host} presented CA {presented_fp}, not the expected {expected}"),
                fingerprint: presented_fp,
            })
        }
    }
    let ca_pem = ca::cert_der_to_pem(presented.as_ref());

    // A fresh key and CSR for this pairing, kept in its own directory (mode 0700/0600).
    let (key_pem, csr_pem) = ca::generate_client_key_and_csr(&app.system_uuid)
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let spki = ca::parse_csr(&csr_pem).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let dir_name = crate::rand::hex_string(16);
    let dir = app.config.data_dir.join("targets").join(&dir_name);
    fsx::ensure_private_dir(&dir).map_err(|e| ApiError::Internal(Box::new(e)))?;
    let cleanup = |e: ApiError| {
        let _ = fsx::remove_dir_all_durable(&dir);
        e
    };
    fsx::write_atomic(&dir.join(KEY_FILE), key_pem.as_bytes())
        .map_err(|e| cleanup(ApiError::Internal(Box::new(e))))?;

    let name = app
        .config
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let remote = Remote::api(&host, &ca_pem).map_err(|e| cleanup(remote_error(&host, e)))?;
    let filed = remote
        .file_request(&RequestBody {
            system_uuid: &app.system_uuid,
            name: &name,
            host: &name,
            version: env!("CARGO_PKG_VERSION"),
            csr: &csr_pem,
        })
        .map_err(|e| cleanup(remote_error(&host, e)))?;
    if filed.ca_fingerprint != presented_fp {
        return Err(cleanup(ApiError::BadGateway(format!(
            "target {host} reports CA {} but presented {presented_fp}",
            filed.ca_fingerprint
        ))));
    }
    if !source::valid_poll_path(&filed.poll) {
        return Err(cleanup(ApiError::BadGateway(format!(
            "target {host} answered with an invalid poll path"
        ))));
    }
    let expected_code = ca::verification_code(&presented_fp, spki.spki_der(), filed.request_id);
    if filed.verification_code != expected_code {
        return Err(cleanup(ApiError::BadGateway(format!(
            "target {host} sent verification code {} where {expected_code} was expected",
            filed.verification_code
        ))));
    }

    let old_dir = existing.as_ref().map(|t| t.dir.clone());
    let record = app
        .store
        .write(|tx| {
            // A new pairing gets a new id, so nothing still in flight for the old one
            // (a poll, a schedule) can touch it.
            if let Some(t) = &existing {
                tx.delete_target(t.id)?;
            }
            let id = tx.next_target_id()?;
            let r = TargetRecord {
                id,
                host: host.clone(),
                status: TargetStatus::Pending,
                message: None,
                created: call.now,
                updated: call.now,
                last_poll: None,
                ca_fingerprint: presented_fp.clone(),
                ca_pem: ca_pem.clone(),
                request_id: filed.request_id,
                poll: filed.poll.clone(),
                verification_code: filed.verification_code.clone(),
                dir: dir_name.clone(),
                retry_after: source::clamp_retry_after(filed.retry_after),
                tunnel: None,
                certificate_expires: None,
                cert_serial: None,
            };
            tx.put_target(&r)?;
            tx.audit(&audit(
                call,
                "target requested",
                &host,
                format!("request {} ca {presented_fp}", filed.request_id),
            ))?;
            Ok::<_, ApiError>(r)
        })
        .map_err(cleanup)?;
    if let Some(old) = old_dir.filter(|d| *d != dir_name) {
        let _ = fsx::remove_dir_all_durable(&app.config.data_dir.join("targets").join(old));
    }
    Ok(Reply::json(
        201,
        json!({
            "target_id": record.id,
            "request_id": record.request_id,
            "status": record.status.as_str(),
            "verification_code": record.verification_code,
        }),
    ))
}

fn target_json(t: &TargetRecord) -> Value {
    let mut v = json!({
        "target_id": t.id,
        "host": t.host,
        "status": t.status.as_str(),
        "created": t.created,
        "updated": t.updated,
        "last_poll": t.last_poll,
        "verification_code": t.verification_code,
        "ca_fingerprint": t.ca_fingerprint,
        "request_id": t.request_id,
    });
    if let Some(m) = &t.message {
        v["message"] = json!(m);
    }
    if let Some(e) = t.certificate_expires {
        v["certificate_expires"] = json!(e);
    }
    v
}

pub fn targets(call: &Call) -> Result<Reply, ApiError> {
    let list: Vec<Value> = call.app.store.targets()?.iter().map(target_json).collect();
    Ok(Reply::json(200, json!({ "targets": list })))
}

pub fn forget_target(call: &Call) -> Result<Reply, ApiError> {
    let given = call.param(0);
    let app = call.app;
    let found = app
        .store
        .targets()?
        .into_iter()
        .find(|t| source::same_target(&t.host, given))
        .ok_or_else(|| ApiError::NotFound(format!("no target {given}")))?;
    let deleted = app.store.write(|tx| {
        let gone = tx.delete_target(found.id)?;
        if gone {
            tx.audit(&audit(
                call,
                "target forgotten",
                &found.host,
                format!("request {}", found.request_id),
            ))?;
        }
        Ok::<_, ApiError>(gone)
    })?;
    if !deleted {
        return Err(ApiError::NotFound(format!("no target {given}")));
    }
    let dir = app.config.data_dir.join("targets").join(&found.dir);
    fsx::remove_dir_all_durable(&dir).map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(Reply::json(
        200,
        json!({ "target_id": found.id, "host": found.host, "status": "forgotten" }),
    ))
}
