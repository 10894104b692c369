//! Pairing-token handlers (SPEC 13, target side): issue a token (shown once, with its join
//! line), list tokens (never a secret), revoke one. Parse, call `pairing::tokens`, map.
//! Their info log lines are the audit rows' event lines (`Store::write`), never a secret.

use std::net::SocketAddr;

use serde_json::{json, Value};

use super::body::quoted;
use super::error::ApiError;
use super::{Call, Reply};
use crate::pairing::source::parse_target;
use crate::pairing::tokens::{self, TokenSpec};
use crate::store::TokenRecord;
use crate::wire::token::JoinLine;

fn token_json(t: &TokenRecord, call: &Call) -> Value {
    let mut v = json!({
        "token_id": t.id,
        "status": tokens::status(t, call.now).as_str(),
        "uses": t.uses,
        "used": t.used,
        "expires": t.expires,
        "created": t.created,
        "created_by": t.created_by,
    });
    let optional = [
        ("last_used", t.last_used.map(Value::from)),
        ("revoked", t.revoked_at.map(Value::from)),
        ("storage_id", t.storage_id.map(Value::from)),
        ("quota_mb", t.quota_mb.map(Value::from)),
        ("system_uuid", t.system_uuid.clone().map(Value::from)),
        ("host", t.host.clone().map(Value::from)),
        ("note", t.note.clone().map(Value::from)),
        ("replaces_system_id", t.replaces_system_id.map(Value::from)),
    ];
    for (k, value) in optional {
        if let Some(value) = value {
            v[k] = value;
        }
    }
    v
}

/// Where sources reach this appliance's API, for the join line: the body's `address`
/// (`host[:port]`) when given, else the address the API listens on, or the first of
/// `hostnames` when it listens on every address (0.0.0.0 or ::).
fn join_address(
    given: Option<&str>,
    listen: SocketAddr,
    hostnames: &[String],
) -> Option<(String, u16)> {
    let hostport = match given {
        Some(text) => parse_target(text)?,
        None if listen.ip().is_unspecified() => {
            let host = hostnames.first().map(String::as_str).unwrap_or("localhost");
            parse_target(&format!("{host}:{}", listen.port()))?
        }
        None => listen.to_string(),
    };
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// `POST /api/replication/tokens`.
pub(super) fn create(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    // Taken as given (no trimming): empty is none, anything else is checked whole.
    let text = |field: &str| -> Result<Option<String>, ApiError> {
        Ok(body
            .opt_str(field)?
            .filter(|s| !s.is_empty())
            .map(String::from))
    };
    let spec = TokenSpec {
        storage_id: body.opt_id("storage_id")?,
        quota_mb: body.opt_limit("quota_mb")?.flatten(),
        uses: body
            .opt_number("uses", 1, u64::from(tokens::MAX_USES))?
            .map_or(tokens::DEFAULT_USES, |n| n as u32),
        expires_in: body
            .opt_number("expires_in", 1, tokens::MAX_EXPIRES_IN as u64)?
            .map_or(tokens::DEFAULT_EXPIRES_IN, |n| n as i64),
        system_uuid: text("system_uuid")?.map(|u| u.to_ascii_lowercase()),
        host: text("host")?,
        note: text("note")?,
        replaces_system_id: body.opt_id("replaces_system_id")?,
    };
    let app = call.app;
    let given = body.opt_str("address")?.filter(|a| !a.is_empty());
    let (host, port) = join_address(given, app.config.api_listen, &app.config.hostnames)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "field `address`: {} is not host[:port]",
                quoted(given.unwrap_or(""))
            ))
        })?;
    let issued = tokens::create(
        &app.store,
        &app.config.storage,
        spec,
        &call.actor(),
        call.now,
    )?;
    let t = &issued.record;
    let join = JoinLine {
        host,
        port,
        ca_fingerprint: app.ca_fingerprint(),
        token: issued.token.clone(),
    };
    let mut v = token_json(t, call);
    v["token"] = json!(issued.token.expose());
    v["join"] = json!(join.render());
    Ok(Reply::json(201, v))
}

/// `GET /api/replication/tokens`: every token, without secrets, oldest id first.
pub(super) fn list(call: &Call) -> Result<Reply, ApiError> {
    let mut all = call.app.store.tokens()?;
    all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let list: Vec<Value> = all.iter().map(|t| token_json(t, call)).collect();
    Ok(Reply::json(200, json!({ "tokens": list })))
}

/// `DELETE /api/replication/tokens/{token_id}`: revoke; pairings made with it stay.
pub(super) fn revoke(call: &Call) -> Result<Reply, ApiError> {
    let t = tokens::revoke(&call.app.store, call.param(0), &call.actor(), call.now)?;
    Ok(Reply::json(200, token_json(&t, call)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_join_address_is_the_listener_a_name_or_what_the_admin_gave() {
        let names = vec!["backup.example".to_string()];
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            join_address(None, at("192.0.2.5:8443"), &names),
            Some(("192.0.2.5".into(), 8443))
        );
        assert_eq!(
            join_address(None, at("0.0.0.0:9443"), &names),
            Some(("backup.example".into(), 9443))
        );
        assert_eq!(
            join_address(None, at("[::]:8443"), &[]),
            Some(("localhost".into(), 8443))
        );
        assert_eq!(
            join_address(Some("[2001:db8::5]:7443"), at("0.0.0.0:8443"), &names),
            Some(("2001:db8::5".into(), 7443))
        );
        assert_eq!(
            join_address(Some("nat.example"), at("0.0.0.0:9443"), &names),
            Some(("nat.example".into(), 8443))
        );
        assert_eq!(join_address(Some("a b"), at("0.0.0.0:9443"), &names), None);
    }
}
