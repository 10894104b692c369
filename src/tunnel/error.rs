//! The one place that turns tunnel errors into HTTP: statuses, their headers and the
//! documented error body from [`crate::wire::error`]. Handlers and the server return
//! [`TunnelHttpError`]; nothing else picks a status.

use std::fmt;

use crate::model::Chain;
use crate::pairing::error::PairingError;
use crate::pairing::renewal::RenewError;
use crate::store::{Degraded, StoreError};
use crate::wire::error::error_body;
use crate::wire::http::HeadError;

/// The cause of a 500: logged with its chain under a reference, never sent to the peer.
pub(super) type Internal = Box<dyn std::error::Error + Send + Sync>;

/// Every way a tunnel request can fail, grouped by who must act.
#[derive(Debug)]
pub enum TunnelHttpError {
    /// 400: malformed request or field; the text names it.
    BadRequest(String),
    /// 403: the certificate is revoked or belongs to no paired system.
    Forbidden(String),
    /// 404: unknown path or object.
    NotFound(String),
    /// 405: the path exists with other methods (`allow`, the `Allow` header value).
    MethodNotAllowed { allow: String },
    /// 408: the head (or a capped body) did not arrive within `head_timeout`.
    Timeout(String),
    /// 409: state conflict.
    Conflict(String),
    /// 411, 413, 417, 431 or 400 for a head the server refused to take.
    Head(HeadError),
    /// 413: a capped body over its route's cap.
    TooLarge(String),
    /// 429: too busy for this peer now; retry after the given seconds.
    TooMany { message: String, retry_after: u64 },
    /// 431: the head is larger than `max_head_bytes`.
    HeadTooLarge(usize),
    /// 500: our fault; the peer sees a fixed text and a reference.
    Internal(Internal),
    /// 503: shutting down or overloaded.
    Unavailable(String),
}

impl TunnelHttpError {
    /// The HTTP status and the documented body's `code`.
    pub fn status(&self) -> u16 {
        match self {
            TunnelHttpError::BadRequest(_) => 400,
            TunnelHttpError::Forbidden(_) => 403,
            TunnelHttpError::NotFound(_) => 404,
            TunnelHttpError::MethodNotAllowed { .. } => 405,
            TunnelHttpError::Timeout(_) => 408,
            TunnelHttpError::Conflict(_) => 409,
            TunnelHttpError::Head(e) => e.status(),
            TunnelHttpError::TooLarge(_) => 413,
            TunnelHttpError::TooMany { .. } => 429,
            TunnelHttpError::HeadTooLarge(_) => 431,
            TunnelHttpError::Internal(_) => 500,
            TunnelHttpError::Unavailable(_) => 503,
        }
    }

    /// The peer-facing message; for a 500 a fixed text with `reference`.
    pub fn message(&self, reference: &str) -> String {
        match self {
            TunnelHttpError::BadRequest(m)
            | TunnelHttpError::Forbidden(m)
            | TunnelHttpError::NotFound(m)
            | TunnelHttpError::Timeout(m)
            | TunnelHttpError::Conflict(m)
            | TunnelHttpError::TooLarge(m)
            | TunnelHttpError::Unavailable(m) => m.clone(),
            TunnelHttpError::TooMany { message, .. } => message.clone(),
            TunnelHttpError::MethodNotAllowed { allow } => {
                format!("method not allowed on this path; it allows {allow}")
            }
            TunnelHttpError::Head(e) => e.to_string(),
            TunnelHttpError::HeadTooLarge(limit) => format!("request head exceeds {limit} bytes"),
            TunnelHttpError::Internal(_) => {
                format!("internal error (reference {reference}); details are in the daemon log")
            }
        }
    }

    /// Headers the status needs: `Allow` on 405, `Retry-After` on 429 and 503.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            TunnelHttpError::MethodNotAllowed { allow } => vec![("Allow", allow.clone())],
            TunnelHttpError::TooMany { retry_after, .. } => {
                vec![("Retry-After", retry_after.to_string())]
            }
            TunnelHttpError::Unavailable(_) => vec![("Retry-After", "1".to_owned())],
            _ => Vec::new(),
        }
    }

    /// The documented body `{"result":[{"message","code","kb"}]}`.
    pub fn body(&self, reference: &str) -> String {
        error_body(u32::from(self.status()), &self.message(reference))
    }

    /// Logs the error once: a 500 with its cause chain at `error` under `reference`, the
    /// rest at `info`.
    pub fn log(&self, what: &str, reference: &str) {
        match self {
            TunnelHttpError::Internal(cause) => {
                log::error!(
                    "tunnel: {what}: {} (reference {reference})",
                    Chain(&**cause)
                )
            }
            other => log::info!(
                "tunnel: {what} -> {}: {}",
                other.status(),
                other.message(reference)
            ),
        }
    }
}

impl fmt::Display for TunnelHttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelHttpError::Internal(_) => f.write_str("internal error"),
            other => f.write_str(&other.message("-")),
        }
    }
}

impl std::error::Error for TunnelHttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TunnelHttpError::Internal(cause) => Some(&**cause),
            _ => None,
        }
    }
}

impl TunnelHttpError {
    /// An error only the daemon can act on: a 500, unless the database refuses writes for
    /// now (a [`Degraded`] anywhere in its chain: a full disk): then 503 with
    /// `Retry-After`, which the source's renewer and replicator take as "try again later".
    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> TunnelHttpError {
        let degraded = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .find_map(|e| e.downcast_ref::<Degraded>());
        match degraded {
            Some(d) => TunnelHttpError::Unavailable(format!("target: {d}")),
            None => TunnelHttpError::Internal(Box::new(e)),
        }
    }
}

impl From<StoreError> for TunnelHttpError {
    fn from(e: StoreError) -> Self {
        TunnelHttpError::internal(e)
    }
}

/// A renewal: a certificate that may not renew is 403 (revoked, retired, expired,
/// unpaired), one already renewed is 409, a bad CSR 400.
impl From<RenewError> for TunnelHttpError {
    fn from(e: RenewError) -> Self {
        use RenewError as R;
        let text = Chain(&e).to_string();
        match e {
            R::NotPaired { .. } | R::Revoked { .. } | R::Retired { .. } | R::Expired { .. } => {
                TunnelHttpError::Forbidden(text)
            }
            R::Superseded { .. } => TunnelHttpError::Conflict(text),
            R::TooSoon { retry_after, .. } => TunnelHttpError::TooMany {
                message: text,
                retry_after,
            },
            R::SameKey | R::Csr(_) => TunnelHttpError::BadRequest(text),
            R::Ca(_) | R::Clock(_) | R::Store(_) => TunnelHttpError::internal(e),
        }
    }
}

/// Today's tunnel routes (hello) fail in the domain only on the store; a route that can
/// meet the other variants maps them here, next to these.
impl From<PairingError> for TunnelHttpError {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::Busy { retry_after, .. } => TunnelHttpError::TooMany {
                message: Chain(&e).to_string(),
                retry_after,
            },
            other => TunnelHttpError::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Degraded;

    /// A renewal or receipt the database cannot take now is a 503 with `Retry-After`,
    /// which the source retries; another store failure stays a 500.
    #[test]
    fn a_database_that_refuses_writes_is_a_transient_503() {
        let full = StoreError::Unavailable(Degraded {
            full: true,
            detail: "No space left on device (os error 28)".into(),
            since: 1,
        });
        let e = TunnelHttpError::from(RenewError::Store(full));
        assert_eq!(e.status(), 503);
        assert_eq!(e.headers(), vec![("Retry-After", "1".to_owned())]);
        assert!(e.message("-").contains("disk is full"), "{e}");
        let other = StoreError::TooNew { found: 99 };
        assert_eq!(TunnelHttpError::from(other).status(), 500);
    }
}
