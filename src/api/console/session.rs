//! The console's session endpoints: `POST /api/session` logs in like `/api/login` but
//! hands the token over only as an `HttpOnly` cookie, `GET /api/session` says who is
//! logged in (and which appliance this is), `DELETE /api/session` logs out.

use serde_json::json;

use super::guard;
use crate::api::error::ApiError;
use crate::api::users::{self, open_session};
use crate::api::{Call, Reply};

/// `POST /api/session`: `/api/login`'s answer without `auth_token`, which no script may
/// read; the token travels in the cookie only.
pub fn create(call: &Call) -> Result<Reply, ApiError> {
    let (user, login) = open_session(call)?;
    let answer = json!({ "user": user, "expires": login.expires, "privilege": login.privilege });
    Ok(Reply::json(200, answer).with_header("Set-Cookie", guard::set_cookie(&login.token)))
}

/// `GET /api/session`: the session's user, privilege and end, and what the console shows
/// of this appliance (its CA fingerprint is what a source's admin compares).
pub fn show(call: &Call) -> Result<Reply, ApiError> {
    let session = call.session()?;
    let app = call.app;
    Ok(Reply::json(
        200,
        json!({
            "user": session.user,
            "privilege": session.privilege,
            "expires": session.expires,
            "appliance": {
                "name": app.config.name(),
                "system_uuid": app.system_uuid,
                "version": env!("CARGO_PKG_VERSION"),
                "ca_fingerprint": app.ca_fingerprint(),
            },
        }),
    ))
}

/// `DELETE /api/session`: ends the session (the cookie's, or an `AuthToken`'s) and
/// removes the cookie.
pub fn end(call: &Call) -> Result<Reply, ApiError> {
    Ok(users::logout(call)?.with_header("Set-Cookie", guard::clear_cookie()))
}
