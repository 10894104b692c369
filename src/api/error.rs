//! The one place that turns errors into HTTP: status codes, the documented error body
//! (rendered by [`crate::wire::error`]) and the knowledge-base texts behind `/api/kb/<code>`.

use crate::auth::AuthError;
use crate::model::Chain;
use crate::pairing::error::{Cap, PairingError};
use crate::pairing::rollover::RolloverError;
use crate::pairing::source::request::{CallError, SourceError};
use crate::replication::admin::AdminError;
use crate::replication::recycle::RecycleError;
use crate::replication::restore::RestoreError;
use crate::spool::SpoolError;
use crate::store::{Degraded, StoreError};

pub use crate::wire::error::{
    error_body, raw_error_response, OPEN_REQUEST_OTHER_KEY_CODE, UNTRUSTED_CERT_CODE,
};

/// The cause of a 500: logged with its chain under a reference, never shown to the client.
pub type Internal = Box<dyn std::error::Error + Send + Sync>;

/// Every way a request can fail, grouped by who must act. Handlers return these; only
/// [`ApiError::status_and_code`] decides the HTTP status.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed or a field is wrong; the text names the field.
    BadRequest(String),
    /// 401: missing, invalid or expired token, or wrong credentials.
    Unauthorized(String),
    /// 403: privilege too low, or the request did not come through the right listener.
    Forbidden(String),
    /// 404: unknown object or path.
    NotFound(String),
    /// 405: the path exists but not with this method; `allow` is the `Allow` header value
    /// (RFC 9110: the methods the path has).
    MethodNotAllowed { allow: String },
    /// 409: state conflict (already resolved, duplicate).
    Conflict(String),
    /// 409: a CA rollover's `finish` waits for these sources (system ids), which were not
    /// seen with a certificate of the new CA yet.
    Stragglers { message: String, sources: Vec<u64> },
    /// 412/12505: the peer presented a certificate we do not trust.
    Untrusted {
        message: String,
        fingerprint: String,
    },
    /// 413: the body is over the cap.
    TooLarge(String),
    /// 429: too many attempts; retry after the given seconds.
    TooMany { message: String, retry_after: u64 },
    /// 429/12506: this source already has open request `request_id` here, filed with
    /// another key; retry after the given seconds (or once that request is resolved).
    OpenWithOtherKey {
        message: String,
        retry_after: u64,
        request_id: u64,
    },
    /// 500: our fault. The cause goes to the log only; the client sees a fixed text.
    Internal(Internal),
    /// 502: the other appliance could not be reached or refused the request.
    BadGateway(String),
    /// 503: overloaded or shutting down; or the database refuses writes for a moment
    /// after a failed one.
    Unavailable(String),
    /// 507: the data directory's disk is full: the database refuses changes until space
    /// is freed (reads go on).
    InsufficientStorage(String),
}

impl ApiError {
    pub fn status_and_code(&self) -> (u16, u32) {
        match self {
            ApiError::BadRequest(_) => (400, 400),
            ApiError::Unauthorized(_) => (401, 401),
            ApiError::Forbidden(_) => (403, 403),
            ApiError::NotFound(_) => (404, 404),
            ApiError::MethodNotAllowed { .. } => (405, 405),
            ApiError::Conflict(_) | ApiError::Stragglers { .. } => (409, 409),
            ApiError::Untrusted { .. } => (412, UNTRUSTED_CERT_CODE),
            ApiError::TooLarge(_) => (413, 413),
            ApiError::TooMany { .. } => (429, 429),
            ApiError::OpenWithOtherKey { .. } => (429, OPEN_REQUEST_OTHER_KEY_CODE),
            ApiError::Internal(_) => (500, 500),
            ApiError::BadGateway(_) => (502, 502),
            ApiError::Unavailable(_) => (503, 503),
            ApiError::InsufficientStorage(_) => (507, 507),
        }
    }

    /// The admin-facing message. For a 500 it is fixed text plus `reference`, never the
    /// internal detail.
    pub fn message(&self, reference: &str) -> String {
        match self {
            ApiError::BadRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::TooLarge(m)
            | ApiError::BadGateway(m)
            | ApiError::Unavailable(m)
            | ApiError::InsufficientStorage(m) => m.clone(),
            ApiError::MethodNotAllowed { allow } => {
                format!("method not allowed on this path; it allows {allow}")
            }
            ApiError::Untrusted { message, .. } | ApiError::Stragglers { message, .. } => {
                message.clone()
            }
            ApiError::TooMany { message, .. } | ApiError::OpenWithOtherKey { message, .. } => {
                message.clone()
            }
            ApiError::Internal(_) => {
                format!("internal error (reference {reference}); details are in the daemon log")
            }
        }
    }

    /// Headers the status needs: `Allow` on 405, `Retry-After` on 429.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::MethodNotAllowed { allow } => vec![("Allow", allow.clone())],
            ApiError::TooMany { retry_after, .. }
            | ApiError::OpenWithOtherKey { retry_after, .. } => {
                vec![("Retry-After", retry_after.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// The JSON body: the documented shape, plus `fingerprint` on 412 so the admin can
    /// compare it out of band, `request_id` on 429/12506 so the source can name the
    /// request the target's admin must resolve, and `stragglers` on a rollover's refused
    /// finish.
    pub fn body(&self, reference: &str) -> String {
        let (_, code) = self.status_and_code();
        let message = self.message(reference);
        match self {
            ApiError::Untrusted { fingerprint, .. } => serde_json::json!({
                "result": [{ "message": message, "code": code, "kb": format!("/api/kb/{code}"),
                             "fingerprint": fingerprint }]
            })
            .to_string(),
            ApiError::OpenWithOtherKey { request_id, .. } => serde_json::json!({
                "result": [{ "message": message, "code": code, "kb": format!("/api/kb/{code}"),
                             "request_id": request_id }]
            })
            .to_string(),
            ApiError::Stragglers { sources, .. } => serde_json::json!({
                "result": [{ "message": message, "code": code, "kb": format!("/api/kb/{code}"),
                             "stragglers": sources }]
            })
            .to_string(),
            _ => error_body(code, &message),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Internal(_) => f.write_str("internal error"),
            other => f.write_str(&other.message("-")),
        }
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::Internal(cause) => Some(cause.as_ref()),
            _ => None,
        }
    }
}

// ---- every mapping of a domain error to HTTP ----

impl ApiError {
    /// An error only the daemon can act on: a 500, unless the database refuses writes
    /// for now (a [`Degraded`] anywhere in its chain, wrapped by whichever domain error
    /// met it): 507 when the disk is full, else 503.
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
        let degraded = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .find_map(|e| e.downcast_ref::<Degraded>());
        match degraded {
            Some(d) if d.full => ApiError::InsufficientStorage(d.to_string()),
            Some(d) => ApiError::Unavailable(d.to_string()),
            None => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

/// A spool that could not be written after its commit: the database is right, the spool
/// retries on its sweep, and the client hears of a 500 with a reference.
impl From<SpoolError> for ApiError {
    fn from(e: SpoolError) -> Self {
        ApiError::internal(e)
    }
}

/// Only for serializing a reply, which fails only on a bug. Request bodies are parsed in
/// `body.rs`, which answers 400 itself and never converts through this.
impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        ApiError::internal(e)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        use AuthError as A;
        let text = Chain(&e).to_string();
        match e {
            A::BadCredentials | A::NoSession => ApiError::Unauthorized(text),
            A::Throttled { retry_after } => ApiError::TooMany {
                message: text,
                retry_after,
            },
            A::Forbidden { .. } => ApiError::Forbidden(text),
            A::Store(_) | A::Hash(_) => ApiError::internal(e),
        }
    }
}

impl From<RolloverError> for ApiError {
    fn from(e: RolloverError) -> Self {
        use RolloverError as R;
        let text = Chain(&e).to_string();
        match e {
            R::AlreadyRolling { .. } | R::NotRolling => ApiError::Conflict(text),
            R::Stragglers { sources, .. } => ApiError::Stragglers {
                message: text,
                sources: sources.iter().map(|s| s.system_id).collect(),
            },
            R::Files { .. } | R::Ca { .. } | R::Mismatch { .. } | R::Clock(_) | R::Store(_) => {
                ApiError::Internal(Box::new(e))
            }
        }
    }
}

impl From<PairingError> for ApiError {
    fn from(e: PairingError) -> Self {
        use PairingError as P;
        let text = Chain(&e).to_string();
        match e {
            P::UnknownRequest(_)
            | P::UnknownSystem(_)
            | P::UnknownStorage(_)
            | P::UnknownToken(_) => ApiError::NotFound(text),
            P::NotPending { .. } | P::Expired(_) | P::NotASource(_) | P::TokenAlreadyRevoked(_) => {
                ApiError::Conflict(text)
            }
            // The token is the source's credential: a bad one is "not allowed", not "bad
            // input", and the message says which fault it is.
            P::Token(_) | P::TokenRequired => ApiError::Forbidden(text),
            P::MessageRequired
            | P::InvalidField { .. }
            | P::Csr(_)
            | P::StorageNotBackup(_)
            | P::RequestedStorageUnusable(_)
            | P::NoBackupStorage => ApiError::BadRequest(text),
            P::Busy {
                cap: Cap::OtherKey { request, .. },
                retry_after,
            } => ApiError::OpenWithOtherKey {
                message: text,
                retry_after,
                request_id: request,
            },
            P::Busy { retry_after, .. } => ApiError::TooMany {
                message: text,
                retry_after,
            },
            P::Ca(_) | P::Clock(_) | P::Store(_) => ApiError::internal(e),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        use AdminError as A;
        let text = Chain(&e).to_string();
        match e {
            A::UnknownTarget(_) | A::UnknownItem(_) | A::NoSuchBackup { .. } => {
                ApiError::NotFound(text)
            }
            A::TargetNotPaired { .. } | A::AlreadyQueued { .. } | A::NoStorage => {
                ApiError::Conflict(text)
            }
            A::BadName(_) | A::Invalid(_) => ApiError::BadRequest(text),
            A::Store(_) => ApiError::internal(e),
        }
    }
}

impl From<RecycleError> for ApiError {
    fn from(e: RecycleError) -> Self {
        use RecycleError as R;
        let text = Chain(&e).to_string();
        match e {
            R::BadName(_) => ApiError::BadRequest(text),
            R::NotInBin(_) => ApiError::NotFound(text),
            R::Exists(_) | R::Busy(_) => ApiError::Conflict(text),
            R::Io { .. } | R::Store(_) => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<RestoreError> for ApiError {
    fn from(e: RestoreError) -> Self {
        use RestoreError as R;
        let text = Chain(&e).to_string();
        match e {
            R::UnknownTarget(_) | R::NotOnTarget(_) | R::Nothing => ApiError::NotFound(text),
            R::TargetNotPaired { .. } | R::AlreadyRestoring { .. } | R::DrillOpen { .. } => {
                ApiError::Conflict(text)
            }
            R::Invalid(_) => ApiError::BadRequest(text),
            R::BadListing(_) => ApiError::BadGateway(text),
            R::Store(_) => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<SourceError> for ApiError {
    fn from(e: SourceError) -> Self {
        use SourceError as S;
        let text = Chain(&e).to_string();
        // The target still holds a request of ours filed with a key we no longer have (we
        // forgot the target, or lost our data): only its admin can clear it, so say how.
        if let S::Call {
            host,
            source:
                CallError::Refused {
                    open_request: Some(id),
                    ..
                },
        } = &e
        {
            return ApiError::Conflict(format!(
                "target {host} still has open request {id} from this appliance, filed with a key \
                 this appliance no longer has: ask the target's admin to ignore or reject request \
                 {id} there (`replgate ctl ignore {id}`), or wait until it expires, then ask again"
            ));
        }
        if let Some(retry_after) = e.retry_after() {
            let message = match &e {
                S::Call {
                    host,
                    source: CallError::Refused { message, .. },
                } => format!("target {host}: {message}"),
                _ => text,
            };
            return ApiError::TooMany {
                message,
                retry_after,
            };
        }
        // The target refused to let us in (a spent or wrong pairing token, or it requires
        // one): the admin hears the target's own words with the target's status.
        if let S::Call {
            host,
            source:
                CallError::Refused {
                    status: 403,
                    message,
                    ..
                },
        } = &e
        {
            return ApiError::Forbidden(format!("target {host}: {message}"));
        }
        match e {
            S::AlreadyPaired { .. } => ApiError::Conflict(text),
            S::Busy => ApiError::Unavailable(text),
            S::Untrusted { presented, .. } => ApiError::Untrusted {
                message: text,
                fingerprint: presented,
            },
            S::UnknownTarget(_) => ApiError::NotFound(text),
            S::Call {
                source: CallError::Local(_),
                ..
            }
            | S::Key(_)
            | S::OwnCsr(_)
            | S::Identity(_)
            | S::Store(_) => ApiError::internal(e),
            S::Unreachable { .. } | S::Call { .. } | S::BadAnswer { .. } => {
                ApiError::BadGateway(text)
            }
        }
    }
}

/// The knowledge-base text behind `/api/kb/<code>`.
pub fn kb_text(code: u32) -> Option<&'static str> {
    Some(match code {
        400 => "The request was malformed: the body is not JSON, a field is missing or has the wrong type, or a value is out of range. The message names the field.",
        401 => "Authentication is missing or no longer valid. Log in with POST /api/login and send the returned auth_token in the AuthToken header. Tokens expire after an idle period and an absolute lifetime.",
        403 => "Your user's privilege is too low for this operation (monitor < manage < administer < superuser), or the request reached a listener that does not serve this path. For a pairing request: the pairing token is unknown, malformed, used up, expired, revoked or bound to another system or host, or this appliance takes requests only with a token (require_token); nothing was filed. Ask the target's admin for a new token (replgate ctl token create).",
        404 => "The object or path does not exist. Check the id.",
        405 => "The path exists but does not accept this HTTP method.",
        408 => "The request head did not arrive in time. Send the whole request promptly.",
        409 => "The operation conflicts with the object's current state, for example a request that is already accepted, rejected or expired, or a name that already exists.",
        411 => "Request bodies must be sent with Content-Length; chunked transfer encoding is not accepted.",
        412 => "See code 12505.",
        12506 => "The target already has an open pairing request from this source, filed with another key (the source forgot the target, or lost its data, and asked again). The error names that request as request_id. The target's admin ignores or rejects it (DELETE /api/replication/pending/<request_id>, or replgate ctl ignore <request_id>), or it expires; then the source asks again.",
        12505 => "The peer presented a certificate authority that this appliance does not trust yet. Compare the fingerprint in the error with the one shown on the peer (out of band, for example by phone), then retry with \"fingerprint\": \"<that value>\", or with \"insecure\": 1 to trust whatever is presented.",
        417 => "The request carried an Expect header other than a single \"Expect: 100-continue\". Send the request without it.",
        413 => "The request body or head is larger than the configured limit (max_body_bytes, max_head_bytes).",
        429 => "Too many attempts: failed logins for this user or address, or too many open pairing requests. Wait for the number of seconds in the Retry-After header.",
        431 => "The request head (request line and headers) is larger than max_head_bytes.",
        500 => "An internal error occurred. The message carries a reference; the daemon's log (journalctl -u replgate) has the details under that reference.",
        502 => "The other appliance could not be reached, or it refused the request. The message carries its answer. Check the address, the port (8443 by default) and that its replgate is running.",
        503 => "The daemon is overloaded (connection cap reached) or shutting down, or its database could not write a moment ago and refuses changes until it tries again (GET /api/health says \"degraded\" and why). Retry shortly.",
        507 => "The disk holding the daemon's data directory is full: the database refuses every change (logins, decisions, unpairing, replication receipts) until at least 8 MiB are free again, then resumes by itself, with no restart. Reads still work. GET /api/health says \"degraded\" with the reason, and the metric replgate_database_degraded is 1. Free space on that filesystem (journalctl -u replgate names the path).",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::source::request::BadAnswer;
    use crate::pairing::source::Distrust;

    fn status(e: SourceError) -> (u16, ApiError) {
        let api = ApiError::from(e);
        (api.status_and_code().0, api)
    }

    #[test]
    fn a_database_that_refuses_writes_is_507_or_503_through_any_wrapper_and_the_rest_500() {
        let degraded = |full| {
            StoreError::Unavailable(crate::store::Degraded {
                full,
                detail: "No space left on device (os error 28)".into(),
                since: 1,
            })
        };
        let wrapped = [
            ApiError::from(degraded(true)),
            ApiError::from(AuthError::Store(degraded(true))),
            ApiError::from(PairingError::Store(degraded(true))),
            ApiError::from(AdminError::Store(degraded(true))),
            ApiError::from(SpoolError::Store(degraded(true))),
        ];
        for api in wrapped {
            assert_eq!(api.status_and_code(), (507, 507), "{api:?}");
            let body: serde_json::Value = serde_json::from_str(&api.body("-")).unwrap();
            assert_eq!(body["result"][0]["kb"], "/api/kb/507");
            let message = body["result"][0]["message"].as_str().unwrap();
            assert!(
                message.contains("disk is full") && message.contains("8 MiB"),
                "{message}"
            );
        }
        assert!(kb_text(507).is_some());
        assert_eq!(
            ApiError::from(AuthError::Store(degraded(false))).status_and_code(),
            (503, 503)
        );
        let other = StoreError::Corrupt {
            table: "t".into(),
            detail: "d".into(),
        };
        assert_eq!(ApiError::from(other).status_and_code(), (500, 500));
    }

    #[test]
    fn an_open_request_with_another_key_is_429_with_code_12506_and_its_id() {
        let api = ApiError::from(PairingError::Busy {
            cap: Cap::OtherKey {
                system_uuid: "u".into(),
                request: 7,
            },
            retry_after: 30,
        });
        assert_eq!(api.status_and_code(), (429, OPEN_REQUEST_OTHER_KEY_CODE));
        assert_eq!(api.headers(), vec![("Retry-After", "30".to_string())]);
        let body: serde_json::Value = serde_json::from_str(&api.body("-")).unwrap();
        assert_eq!(body["result"][0]["request_id"], 7);
        assert_eq!(body["result"][0]["kb"], "/api/kb/12506");
        assert!(kb_text(OPEN_REQUEST_OTHER_KEY_CODE).is_some());
        let other = ApiError::from(PairingError::Busy {
            cap: Cap::Total,
            retry_after: 30,
        });
        assert_eq!(other.status_and_code(), (429, 429));
    }

    #[test]
    fn source_side_errors_map_to_who_must_act() {
        let host = || "t.example:8443".to_string();
        let (s, api) = status(SourceError::Untrusted {
            host: host(),
            presented: "ab".repeat(32),
            distrust: Distrust::Unknown,
        });
        assert_eq!(s, 412);
        assert!(api.body("-").contains(&"ab".repeat(32)));
        let (s, api) = status(SourceError::Call {
            host: host(),
            source: CallError::Refused {
                status: 429,
                message: "system u already has open request 7 with another key".into(),
                retry_after: Some(9),
                open_request: Some(7),
            },
        });
        assert_eq!(s, 409);
        assert!(
            api.message("-").contains("open request 7") && api.message("-").contains("ignore 7"),
            "{}",
            api.message("-")
        );
        let (s, api) = status(SourceError::Call {
            host: host(),
            source: CallError::Refused {
                status: 429,
                message: "too many open pairing requests on this appliance".into(),
                retry_after: Some(9),
                open_request: None,
            },
        });
        assert_eq!(s, 429);
        assert!(
            matches!(api, ApiError::TooMany { retry_after: 9, ref message }
            if message == "target t.example:8443: too many open pairing requests on this appliance")
        );
        let refused = CallError::Refused {
            status: 409,
            message: "no".into(),
            retry_after: None,
            open_request: None,
        };
        let (s, api) = status(SourceError::Call {
            host: host(),
            source: refused,
        });
        assert_eq!(
            (s, api.message("-")),
            (502, "target t.example:8443: refused with 409: no".into())
        );
        let (s, _) = status(SourceError::Call {
            host: host(),
            source: CallError::Local("pinned ca".into()),
        });
        assert_eq!(s, 500);
        let (s, _) = status(SourceError::BadAnswer {
            host: host(),
            problem: BadAnswer::PollPath,
        });
        assert_eq!(s, 502);
        let (s, api) = status(SourceError::Call {
            host: host(),
            source: CallError::Refused {
                status: 403,
                message: "pairing token 0123456789ab has been revoked".into(),
                retry_after: None,
                open_request: None,
            },
        });
        assert_eq!(
            (s, api.message("-")),
            (
                403,
                "target t.example:8443: pairing token 0123456789ab has been revoked".into()
            )
        );
        assert_eq!(status(SourceError::Busy).0, 503);
        assert_eq!(status(SourceError::UnknownTarget("x".into())).0, 404);
    }
}
