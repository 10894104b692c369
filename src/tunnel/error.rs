//! The one place that turns tunnel errors into HTTP: statuses, their headers and the
//! documented error body from [`crate::wire::error`]. Handlers and the server return
//! [`TunnelError`]; nothing else picks a status.

use std::fmt;

use crate::model::Chain;
use crate::pairing::error::PairingError;
use crate::pairing::renewal::RenewError;
use crate::store::StoreError;
use crate::wire::error::error_body;
use crate::wire::http::HeadError;

/// The cause of a 500: logged with its chain under a reference, never sent to the peer.
pub type Internal = Box<dyn std::error::Error + Send + Sync>;

/// Every way a tunnel request can fail, grouped by who must act.
#[derive(Debug)]
pub enum TunnelError {
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

impl TunnelError {
    /// The HTTP status and the documented body's `code`.
    pub fn status(&self) -> u16 {
        match self {
            TunnelError::BadRequest(_) => 400,
            TunnelError::Forbidden(_) => 403,
            TunnelError::NotFound(_) => 404,
            TunnelError::MethodNotAllowed { .. } => 405,
            TunnelError::Timeout(_) => 408,
            TunnelError::Conflict(_) => 409,
            TunnelError::Head(e) => e.status(),
            TunnelError::TooLarge(_) => 413,
            TunnelError::TooMany { .. } => 429,
            TunnelError::HeadTooLarge(_) => 431,
            TunnelError::Internal(_) => 500,
            TunnelError::Unavailable(_) => 503,
        }
    }

    /// The peer-facing message; for a 500 a fixed text with `reference`.
    pub fn message(&self, reference: &str) -> String {
        match self {
            TunnelError::BadRequest(m)
            | TunnelError::Forbidden(m)
            | TunnelError::NotFound(m)
            | TunnelError::Timeout(m)
            | TunnelError::Conflict(m)
            | TunnelError::TooLarge(m)
            | TunnelError::Unavailable(m) => m.clone(),
            TunnelError::TooMany { message, .. } => message.clone(),
            TunnelError::MethodNotAllowed { allow } => {
                format!("method not allowed on this path; it allows {allow}")
            }
            TunnelError::Head(e) => e.to_string(),
            TunnelError::HeadTooLarge(limit) => format!("request head exceeds {limit} bytes"),
            TunnelError::Internal(_) => {
                format!("internal error (reference {reference}); details are in the daemon log")
            }
        }
    }

    /// Headers the status needs: `Allow` on 405, `Retry-After` on 429 and 503.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            TunnelError::MethodNotAllowed { allow } => vec![("Allow", allow.clone())],
            TunnelError::TooMany { retry_after, .. } => {
                vec![("Retry-After", retry_after.to_string())]
            }
            TunnelError::Unavailable(_) => vec![("Retry-After", "1".to_owned())],
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
            TunnelError::Internal(cause) => {
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

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelError::Internal(_) => f.write_str("internal error"),
            other => f.write_str(&other.message("-")),
        }
    }
}

impl std::error::Error for TunnelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TunnelError::Internal(cause) => Some(&**cause),
            _ => None,
        }
    }
}

impl From<StoreError> for TunnelError {
    fn from(e: StoreError) -> Self {
        TunnelError::Internal(Box::new(e))
    }
}

/// A renewal: a certificate that may not renew is 403 (revoked, retired, expired,
/// unpaired), one already renewed is 409, a bad CSR 400.
impl From<RenewError> for TunnelError {
    fn from(e: RenewError) -> Self {
        use RenewError as R;
        let text = Chain(&e).to_string();
        match e {
            R::NotPaired { .. } | R::Revoked { .. } | R::Retired { .. } | R::Expired { .. } => {
                TunnelError::Forbidden(text)
            }
            R::Superseded { .. } => TunnelError::Conflict(text),
            R::SameKey | R::Csr(_) => TunnelError::BadRequest(text),
            R::Ca(_) | R::Clock(_) | R::Store(_) => TunnelError::Internal(Box::new(e)),
        }
    }
}

/// Today's tunnel routes (hello) fail in the domain only on the store; a route that can
/// meet the other variants maps them here, next to these.
impl From<PairingError> for TunnelError {
    fn from(e: PairingError) -> Self {
        match e {
            PairingError::Busy { retry_after, .. } => TunnelError::TooMany {
                message: Chain(&e).to_string(),
                retry_after,
            },
            other => TunnelError::Internal(Box::new(other)),
        }
    }
}
