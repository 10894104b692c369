//! The documented error body `{"result":[{"message","code","kb"}]}` and the raw HTTP
//! responses built from it: the lowest layer, so that the TLS front, the tunnel and the
//! API all render errors the same way. Knows no routes and no domain.

/// The application code of an untrusted peer certificate, as in the existing appliance API.
pub const UNTRUSTED_CERT_CODE: u32 = 12505;
/// The application code of a 429 refusing a filing because the same source already has an
/// open request with another key; the error carries that request's id as `request_id`, so
/// the source can tell its admin exactly what the target's admin must do.
pub const OPEN_REQUEST_OTHER_KEY_CODE: u32 = 12506;

/// Renders the documented error body for `code` (an HTTP status or an application code
/// such as 12505) with an admin-readable `message`.
pub fn error_body(code: u32, message: &str) -> String {
    serde_json::json!({
        "result": [{ "message": message, "code": code, "kb": format!("/api/kb/{code}") }]
    })
    .to_string()
}

/// A complete HTTP/1.1 error response, for the TLS front to send on its own (before a
/// request reaches the router): documented JSON body, `Connection: close`.
pub fn raw_error_response(status: u16, message: &str) -> Vec<u8> {
    let body = error_body(u32::from(status), message);
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Connection", "close"),
    ];
    if status == 503 || status == 429 {
        headers.push(("Retry-After", "1"));
    }
    let mut out = Vec::with_capacity(160 + body.len());
    crate::wire::response::write_response_head(&mut out, status, &headers, body.len());
    out.extend_from_slice(body.as_bytes());
    out
}
