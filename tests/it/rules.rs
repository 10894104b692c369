//! The documented rules of the parsers, written a second time from their documentation
//! (docs/decisions.md, docs/openapi.yaml), independent of the code: the stable property
//! tests (`fuzz.rs`) and the coverage-guided fuzz targets (`fuzz/`, which include this
//! file by path) both compare the code with these. Pure: no daemon, no harness.

use serde_json::Value;

/// The rules of wire/http.rs and the front's cap, written again from their documentation:
/// the status a head gets (400, 411, 413, 417) or its body length.
pub fn head_model(head: &[u8], max_body: u64) -> Result<u64, u16> {
    let Some(text) = head.strip_suffix(b"\r\n\r\n") else {
        return Err(400);
    };
    let mut lines: Vec<&[u8]> = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i + 1 < text.len() {
        if &text[i..i + 2] == b"\r\n" {
            lines.push(&text[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    lines.push(&text[start..]);
    let printable = |b: u8| b == b'\t' || (0x20..=0x7e).contains(&b);
    if lines
        .iter()
        .any(|l| l.is_empty() || !l.iter().all(|b| printable(*b)))
    {
        return Err(400);
    }
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let parts: Vec<&[u8]> = lines[0].split(|b| *b == b' ').collect();
    if parts.len() != 3
        || parts[0].is_empty()
        || !parts[0].iter().all(|b| tchar(*b))
        || parts[1].is_empty()
        || !parts[1].iter().all(|b| (b'!'..=b'~').contains(b))
        || !(parts[2] == b"HTTP/1.1" || parts[2] == b"HTTP/1.0")
    {
        return Err(400);
    }
    let mut length: Option<u64> = None;
    let mut codings: Vec<String> = Vec::new();
    let mut expects: Vec<String> = Vec::new();
    for line in &lines[1..] {
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(400);
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(400);
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|b| tchar(*b)) {
            return Err(400);
        }
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(400);
                }
                let n = value.trim_start_matches('0');
                let n = if n.len() > 20 {
                    u64::MAX
                } else {
                    n.parse::<u128>().unwrap_or(0).min(u128::from(u64::MAX)) as u64
                };
                if length.is_some_and(|l| l != n) {
                    return Err(400);
                }
                length = Some(n);
            }
            "transfer-encoding" => codings.push(value.to_ascii_lowercase()),
            "expect" => expects.push(value.to_ascii_lowercase()),
            "connection" if value.to_ascii_lowercase().contains("upgrade") => return Err(400),
            _ => {}
        }
    }
    // Only a single `chunked` without a length is framed at all; the front takes none.
    let chunked_only = codings.len() == 1 && codings[0] == "chunked" && length.is_none();
    if !codings.is_empty() && !chunked_only {
        return Err(411);
    }
    if !(expects.is_empty() || (expects.len() == 1 && expects[0] == "100-continue")) {
        return Err(417);
    }
    if chunked_only {
        return Err(411);
    }
    match length.unwrap_or(0) {
        n if n > max_body => Err(413),
        n => Ok(n),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Id,
    Flag,
}

/// The model of `api::body`'s accessors for one field.
pub fn accessor_model(value: Option<&Value>, kind: Kind) -> Option<bool> {
    let value = value.filter(|v| !v.is_null())?;
    Some(match kind {
        Kind::Str => value.is_string(),
        Kind::Id => match value {
            // Ids are documented as int64; strings are digits only, at most 18 of
            // them significant (docs/openapi.yaml `Id`).
            Value::Number(n) => n.as_u64().is_some_and(|n| n > 0 && n <= i64::MAX as u64),
            Value::String(s) => {
                let significant = s.trim_start_matches('0');
                s.bytes().all(|b| b.is_ascii_digit())
                    && !significant.is_empty()
                    && significant.len() <= 18
            }
            _ => false,
        },
        Kind::Flag => match value {
            Value::Bool(_) => true,
            Value::Number(n) => matches!(n.as_u64(), Some(0 | 1)),
            Value::String(s) => matches!(s.as_str(), "true" | "false" | "1" | "0"),
            _ => false,
        },
    })
}
