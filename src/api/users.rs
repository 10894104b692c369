//! Login, logout, the users API (superuser only) and the audit log.

use serde_json::json;

use super::error::ApiError;
use super::{Call, Reply};
use crate::auth;
use crate::model::Privilege;
use crate::store::{AuditRecord, UserRecord, UserWrite};

/// Passwords set through the API must be at least this long.
const MIN_PASSWORD_CHARS: usize = 8;
/// ... and at most this long: 256 characters are at most 1024 bytes of UTF-8, which login
/// takes (`auth::MAX_PASSWORD_BYTES`), so every password set can be used.
const MAX_PASSWORD_CHARS: usize = 256;
/// `GET /api/audit` pages hold at most this many rows.
const MAX_AUDIT_PAGE: u64 = 1_000;

/// Checks the body's `username` and `password` and opens a session: the login behind
/// both `POST /api/login` and the console's `POST /api/session`.
pub(super) fn open_session(call: &Call) -> Result<(String, auth::Login), ApiError> {
    let body = call.json()?;
    let username = body.str("username")?;
    let password = body.str("password")?;
    let login = call
        .app
        .auth
        .login(username, password, &call.address(), call.now)?;
    call.app.peers.note_authenticated(call.peer.addr.ip());
    Ok((username.to_string(), login))
}

pub(super) fn login(call: &Call) -> Result<Reply, ApiError> {
    let (_, login) = open_session(call)?;
    Ok(Reply::json(
        200,
        json!({ "auth_token": login.token, "expires": login.expires, "privilege": login.privilege }),
    ))
}

pub(super) fn logout(call: &Call) -> Result<Reply, ApiError> {
    call.app
        .auth
        .logout(call.session()?, &call.address(), call.now)?;
    Ok(Reply::json(200, json!({ "status": "ok" })))
}

fn user_json(u: &UserRecord) -> serde_json::Value {
    json!({ "name": u.name, "privilege": u.privilege, "created": u.created, "updated": u.updated })
}

pub(super) fn list(call: &Call) -> Result<Reply, ApiError> {
    let users: Vec<_> = call.app.store.users()?.iter().map(user_json).collect();
    Ok(Reply::json(200, json!({ "users": users })))
}

fn privilege_field(value: &str) -> Result<Privilege, ApiError> {
    value
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("field `privilege`: {e}")))
}

fn password_field(value: &str) -> Result<String, ApiError> {
    let n = value.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&n) {
        return Err(ApiError::BadRequest(format!(
            "field `password` must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )));
    }
    Ok(auth::hash_password(value)?)
}

fn audit(call: &Call, action: &str, name: &str, detail: String) -> AuditRecord {
    AuditRecord {
        time: call.now,
        user: call.user(),
        address: call.address(),
        action: action.into(),
        object: format!("user:{name}"),
        detail,
    }
}

pub(super) fn create(call: &Call) -> Result<Reply, ApiError> {
    let body = call.json()?;
    // Both are checked for type; `name` wins when both are given.
    let username = body.opt_str("username")?;
    let name = match body.opt_str("name")? {
        Some(n) => n,
        None => username.ok_or_else(|| {
            ApiError::BadRequest("field `name` (or `username`) is required".into())
        })?,
    };
    if !auth::valid_user_name(name) {
        return Err(ApiError::BadRequest(
            "field `name` must be 1 to 64 letters, digits or - _ . @".into(),
        ));
    }
    let privilege = privilege_field(body.str("privilege")?)?;
    let password_hash = password_field(body.str("password")?)?;
    let user = UserRecord {
        name: name.into(),
        password_hash,
        privilege,
        created: call.now,
        updated: call.now,
    };
    let detail = format!("privilege {privilege}");
    let created = audit(call, "user created", name, detail);
    if !call.app.store.write(|tx| tx.create_user(&user, &created))? {
        return Err(ApiError::Conflict(format!("user {name} already exists")));
    }
    Ok(Reply::json(201, user_json(&user)))
}

/// Maps a user write to the answer; the last-superuser rule lives in the store's
/// transaction.
fn user_write(outcome: UserWrite, name: &str) -> Result<(), ApiError> {
    match outcome {
        UserWrite::Done => Ok(()),
        UserWrite::NotFound => Err(ApiError::NotFound(format!("no user named {name}"))),
        UserWrite::LastSuperuser => Err(ApiError::Conflict(
            "the last superuser cannot be removed or demoted".into(),
        )),
    }
}

pub(super) fn update(call: &Call) -> Result<Reply, ApiError> {
    let name = call.param(0);
    let body = call.json()?;
    let Some(mut user) = call.app.store.user(name)? else {
        return Err(ApiError::NotFound(format!("no user named {name}")));
    };
    let privilege = body
        .opt_str("privilege")?
        .map(privilege_field)
        .transpose()?;
    let password = body.opt_str("password")?.map(password_field).transpose()?;
    if privilege.is_none() && password.is_none() {
        return Err(ApiError::BadRequest(
            "give `password`, `privilege` or both".into(),
        ));
    }
    let mut changes = Vec::new();
    if let Some(p) = privilege {
        changes.push(format!("privilege {} -> {p}", user.privilege));
        user.privilege = p;
    }
    let end_sessions = password.is_some();
    if let Some(h) = password {
        changes.push("password changed".into());
        user.password_hash = h;
    }
    user.updated = call.now;
    let updated = audit(call, "user updated", name, changes.join(", "));
    let outcome = call
        .app
        .store
        .write(|tx| tx.update_user(&user, end_sessions, &updated))?;
    user_write(outcome, name)?;
    Ok(Reply::json(200, user_json(&user)))
}

pub(super) fn delete(call: &Call) -> Result<Reply, ApiError> {
    let name = call.param(0);
    let deleted = audit(call, "user deleted", name, String::new());
    let outcome = call.app.store.write(|tx| tx.delete_user(name, &deleted))?;
    user_write(outcome, name)?;
    Ok(Reply::json(
        200,
        json!({ "name": name, "status": "deleted" }),
    ))
}

pub(super) fn audit_log(call: &Call) -> Result<Reply, ApiError> {
    let after = super::body::after(call.query("after"))?;
    let limit = match call.query("limit") {
        Some(v) => super::body::parse_limit("limit", v, Some(MAX_AUDIT_PAGE))?,
        None => 100,
    };
    let rows: Vec<_> = call
        .app
        .store
        .audit(after, limit)?
        .into_iter()
        .map(|(id, a)| {
            json!({ "id": id, "time": a.time, "user": a.user, "address": a.address,
                    "action": a.action, "object": a.object, "detail": a.detail })
        })
        .collect();
    Ok(Reply::json(200, json!({ "audit": rows })))
}
