//! The web console (SPEC 14): plain files embedded in the binary and served at `/` and
//! `/console/<file>`, the session endpoints that log a browser in with an `HttpOnly`
//! cookie, and the browser rules (Host allow-list, CSRF) the router applies to console
//! requests and cookie-authenticated calls. The console's pages call the same API as
//! `ctl`; nothing here decides about pairing, and no handler here knows the cookie.

mod assets;
pub mod guard;
pub mod session;

pub use assets::{asset, page, CONTENT_SECURITY_POLICY};
