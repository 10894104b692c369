//! Health and the knowledge base: the unauthenticated informational endpoints.

use serde_json::json;

use super::body::parse_id;
use super::error::{kb_text, ApiError};
use super::{Call, Reply};

pub fn health(_call: &Call) -> Result<Reply, ApiError> {
    Ok(Reply::json(
        200,
        json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }),
    ))
}

pub fn kb(call: &Call) -> Result<Reply, ApiError> {
    let code = parse_id("code", call.param(0))?;
    let text = u32::try_from(code)
        .ok()
        .and_then(kb_text)
        .ok_or_else(|| ApiError::NotFound(format!("no knowledge-base entry for code {code}")))?;
    Ok(Reply::json(200, json!({ "code": code, "text": text })))
}
