//! The seam through which the wiring lets the front answer some requests itself, on the
//! connection's own thread, without the loopback hop to tiny_http and a worker. The front
//! decides *when* an answer may be given (framing, order); the answerer, supplied by a
//! higher layer, decides *what* it is. The front itself still knows no route.

use crate::wire::http::RequestHead;

/// Answers requests in the front. Implemented above the front (the api layer) and passed
/// in through the wiring.
pub trait LocalAnswer: Send + Sync {
    /// Writes a complete HTTP/1.1 response to `head` into `out` (empty on entry) and
    /// returns true, or returns false to have the request forwarded to tiny_http as
    /// usual (then whatever it wrote is discarded).
    ///
    /// The front only asks for a complete request without a body, HTTP/1.1, keep-alive,
    /// when every earlier request on the connection has been answered in full, so the
    /// answer can go out at once and never overtakes another. The answer must keep the
    /// connection in step: a `HEAD` gets the head only, and the response must carry an
    /// exact `Content-Length`.
    fn answer(&self, head: &RequestHead<'_>, out: &mut Vec<u8>) -> bool;
}
