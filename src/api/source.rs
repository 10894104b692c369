//! Source-side pairing handlers: ask a target for replication, list targets, change a
//! target's settings, forget one.
//! Parse, call `pairing::source`, map: the trust decision, the key, the call to the target
//! and its checks live in the domain.

use serde_json::{json, Value};

use super::body::{parse_id, quoted};
use super::error::ApiError;
use super::{Call, Reply};
use crate::ca;
use crate::model::{format_utc, UnixTime};
use crate::pairing::source::request::{self, Ask, Me, SourceSide};
use crate::pairing::source::{self};
use crate::remote::LiveSource;
use crate::replication::admin;
use crate::replication::compress::Compression;
use crate::store::TargetRecord;
use crate::wire::token::PairingToken;

pub(super) fn request_target(call: &Call) -> Result<Reply, ApiError> {
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
    // An empty string is "not given": the PowerShell clients send every field they know.
    let fingerprint = match body.opt_str("fingerprint")?.filter(|f| !f.is_empty()) {
        Some(f) => Some(ca::normalize_fingerprint(f).ok_or_else(|| {
            ApiError::BadRequest(
                "field `fingerprint` must be 64 hex digits (SHA-256), colons optional".into(),
            )
        })?),
        None => None,
    };
    let ip = match body.opt_str("ip")?.filter(|i| !i.is_empty()) {
        Some(text) => Some(
            text.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "field `ip`: {} is not an IPv4 or IPv6 address",
                        quoted(text)
                    ))
                })?,
        ),
        None => None,
    };
    let storage_id = body.opt_id("storage_id")?;
    // Checked here so a typo is the admin's 400, not a round trip to the target.
    let token = match body.opt_str("token")?.filter(|t| !t.is_empty()) {
        Some(text) => Some(PairingToken::parse(text.trim()).ok_or_else(|| {
            ApiError::BadRequest(
                "field `token` must be a pairing token as the target's admin got it: <12 hex digits>.<32 hex digits>"
                    .into(),
            )
        })?),
        None => None,
    };
    let app = call.app;
    let name = app.config.name();
    let side = SourceSide {
        store: &app.store,
        io: &LiveSource {
            dirs: &app.target_dirs,
        },
        outgoing: &app.outgoing,
        me: Me {
            system_uuid: &app.system_uuid,
            name,
            asset_tag: &app.config.asset_tag,
            version: env!("CARGO_PKG_VERSION"),
        },
    };
    let ask = Ask {
        host,
        fingerprint,
        insecure,
        ip,
        storage_id,
        token,
    };
    let record = request::request_target(&side, ask, &call.actor(), call.now)?;
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

fn target_json(t: &TargetRecord, now: UnixTime) -> Value {
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
    // During a rollover of the target's CA: the new CA this appliance trusts too.
    if let Some(next) = crate::ca::certs_pem_to_der(&t.ca_pem)
        .ok()
        .and_then(|bundle| bundle.get(1).map(|der| crate::ca::sha256_hex(der)))
    {
        v["ca_next_fingerprint"] = json!(next);
    }
    let mut message = t.message.clone();
    if t.is_repairing() {
        // Says what happened and what to do, whatever the last poll left in `message`.
        let expired = format!(
            "the certificate expired at {}; this appliance filed request {} (verification code {}) \
             to replace it: ask the target's admin to accept it",
            t.certificate_expires.map(format_utc).unwrap_or_default(),
            t.request_id,
            t.verification_code
        );
        message = Some(match message {
            Some(m) => format!("{expired} ({m})"),
            None => expired,
        });
        v["certificate_expired"] = json!(true);
    } else if let Some(e) = t.certificate_expires.filter(|e| *e <= now) {
        v["certificate_expired"] = json!(true);
        message.get_or_insert_with(|| {
            format!(
                "the certificate expired at {}; a new request is being filed",
                format_utc(e)
            )
        });
    }
    if let Some(m) = message {
        v["message"] = json!(m);
    }
    if let Some(e) = t.certificate_expires {
        v["certificate_expires"] = json!(e);
    }
    if let Some(serial) = &t.cert_serial {
        v["certificate_serial"] = json!(serial);
    }
    if let Some(r) = t.renewed {
        v["certificate_renewed"] = json!(r);
    }
    if let Some(old) = t.took_over {
        v["replaces_system_id"] = json!(old);
    }
    // Null: the daemon's `compression` key.
    v["compression"] = json!(t.compression);
    if let (Some(starts), Some(ends), Some(serial)) =
        (t.certificate_starts, t.certificate_expires, &t.cert_serial)
    {
        if !t.is_repairing() && ends > now {
            v["certificate_renews"] =
                json!(crate::lifecycle::source_renew_at(starts, ends, serial));
        }
    }
    v
}

pub(super) fn targets(call: &Call) -> Result<Reply, ApiError> {
    let list: Vec<Value> = call
        .app
        .store
        .targets()?
        .iter()
        .map(|t| target_json(t, call.now))
        .collect();
    Ok(Reply::json(200, json!({ "targets": list })))
}

/// `PUT /api/replication/target?target_id=N {"compression": "auto"|"off"|"zstd:<level>"|null}`:
/// the target's own settings (null: back to the daemon's).
pub(super) fn change_target(call: &Call) -> Result<Reply, ApiError> {
    let target_id = parse_id(
        "target_id",
        call.query("target_id").ok_or_else(|| {
            ApiError::BadRequest("query parameter `target_id` is required".into())
        })?,
    )?;
    let body = call.json()?;
    let setting = match body.nullable("compression") {
        None => {
            return Err(ApiError::BadRequest(
                "field `compression` is required".into(),
            ))
        }
        Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            Compression::parse(s)
                .map_err(|e| ApiError::BadRequest(format!("field `compression`: {e}")))?,
        ),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "field `compression` must be a string or null".into(),
            ))
        }
    };
    let t = admin::set_compression(&call.app.store, target_id, setting, &call.actor(), call.now)?;
    Ok(Reply::json(200, target_json(&t, call.now)))
}

pub(super) fn forget_target(call: &Call) -> Result<Reply, ApiError> {
    let app = call.app;
    let io = LiveSource {
        dirs: &app.target_dirs,
    };
    let found = request::forget_target(&app.store, &io, call.param(0), &call.actor(), call.now)?;
    Ok(Reply::json(
        200,
        json!({ "target_id": found.id, "host": found.host, "status": "forgotten" }),
    ))
}
