//! Request-body and query parsing that names the bad field: a JSON object read field by
//! field, ids accepted as numbers or numeric strings, unknown fields ignored.

use serde_json::{Map, Value};

use super::error::ApiError;

/// A parsed JSON object body.
#[derive(Debug)]
pub struct Body(Map<String, Value>);

fn wrong(field: &str, expected: &str) -> ApiError {
    ApiError::BadRequest(format!("field `{field}` must be {expected}"))
}

fn missing(field: &str) -> ApiError {
    ApiError::BadRequest(format!("field `{field}` is required"))
}

/// The largest id or count accepted anywhere: ids are stored as `u64` but documented
/// (and handed out) as `int64`.
pub const MAX_INT: u64 = i64::MAX as u64;

/// Significant digits a string id may have: 18 keeps every such string below `MAX_INT`,
/// which a pattern in docs/openapi.yaml can say exactly.
const MAX_STRING_ID_DIGITS: usize = 18;

const ID: &str = "a positive integer or a numeric string";

/// Parses a numeric id given as a JSON number (1 to `MAX_INT`) or a string of digits
/// (leading zeros allowed, at most 18 significant digits, no sign or spaces).
pub fn id_value(field: &str, v: &Value) -> Result<u64, ApiError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .filter(|n| (1..=MAX_INT).contains(n))
            .ok_or_else(|| wrong(field, ID)),
        Value::String(s) => {
            let significant = s.trim_start_matches('0');
            let ok = s.bytes().all(|b| b.is_ascii_digit())
                && (1..=MAX_STRING_ID_DIGITS).contains(&significant.len());
            ok.then(|| significant.parse().ok())
                .flatten()
                .ok_or_else(|| wrong(field, ID))
        }
        _ => Err(wrong(field, ID)),
    }
}

/// Parses a decimal integer from text (a query parameter or a path segment) within
/// `min..=max`: digits only, no sign or spaces, leading zeros allowed.
pub fn parse_int(field: &str, s: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    let bad = || wrong(field, &format!("an integer from {min} to {max}"));
    let significant = s.trim_start_matches('0');
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || significant.len() > 19 {
        return Err(bad());
    }
    let n = if significant.is_empty() {
        0
    } else {
        significant.parse::<u64>().map_err(|_| bad())?
    };
    if n < min || n > max {
        return Err(bad());
    }
    Ok(n)
}

/// A positive id from text: 1 to `MAX_INT`.
pub fn parse_id(field: &str, s: &str) -> Result<u64, ApiError> {
    parse_int(field, s, 1, MAX_INT)
}

/// A paging position (`after`): 0 to `MAX_INT`, 0 when absent.
pub fn after(value: Option<&str>) -> Result<u64, ApiError> {
    value.map_or(Ok(0), |v| parse_int("after", v, 0, MAX_INT))
}

/// A `limit` query value: a positive integer, at most `cap` when given. One above what
/// this platform's `usize` holds (armv7 is 32-bit) means "no limit", never a wrapped
/// small number.
pub fn parse_limit(field: &str, s: &str, cap: Option<u64>) -> Result<usize, ApiError> {
    let n = parse_id(field, s)?;
    let n = cap.map_or(n, |c| n.min(c));
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

impl Body {
    /// Parses `bytes` as a JSON object. An empty body is an empty object.
    pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Body(Map::new()));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(ApiError::BadRequest(
                "request body must be a JSON object".into(),
            )),
            Err(e) => Err(ApiError::BadRequest(format!("malformed JSON body: {e}"))),
        }
    }

    fn present(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    pub fn str(&self, field: &str) -> Result<&str, ApiError> {
        self.opt_str(field)?.ok_or_else(|| missing(field))
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong(field, "a string")),
        }
    }

    pub fn id(&self, field: &str) -> Result<u64, ApiError> {
        self.opt_id(field)?.ok_or_else(|| missing(field))
    }

    pub fn opt_id(&self, field: &str) -> Result<Option<u64>, ApiError> {
        self.present(field).map(|v| id_value(field, v)).transpose()
    }

    /// A yes/no flag: `true`/`false`, `1`/`0`, or those as strings (the PowerShell clients
    /// of the existing API send all of these).
    pub fn opt_flag(&self, field: &str) -> Result<Option<bool>, ApiError> {
        let expected = "true, false, 1 or 0";
        match self.present(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0) => Ok(Some(false)),
                Some(1) => Ok(Some(true)),
                _ => Err(wrong(field, expected)),
            },
            Some(Value::String(s)) => match s.as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(wrong(field, expected)),
            },
            Some(_) => Err(wrong(field, expected)),
        }
    }

    pub fn flag(&self, field: &str) -> Result<bool, ApiError> {
        self.opt_flag(field)?.ok_or_else(|| missing(field))
    }

    /// A whole number in `min..=max`, given as a JSON number or a numeric string.
    pub fn opt_number(&self, field: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        self.present(field)
            .map(|v| number_value(field, v, min, max))
            .transpose()
    }

    /// A limit that can be cleared: absent is `None` (leave it), `null` or `0` is
    /// `Some(None)` (no limit), a positive number is `Some(Some(n))`.
    pub fn opt_limit(&self, field: &str) -> Result<Option<Option<u64>>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => Ok(Some(
                Some(number_value(field, v, 0, u64::MAX / (1024 * 1024))?).filter(|n| *n > 0),
            )),
        }
    }

    /// An optional whole number in `min..=max` that `null` resets: None when absent,
    /// `Some(None)` for null.
    pub fn opt_reset(
        &self,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<Option<Option<u64>>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => Ok(Some(Some(number_value(field, v, min, max)?))),
        }
    }

    /// The raw value of a field, for lists and objects a handler walks itself.
    pub fn value(&self, field: &str) -> Option<&Value> {
        self.present(field)
    }

    /// As [`Body::value`], but a `null` is given back as such (a field whose `null`
    /// means something: "clear it").
    pub fn nullable(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }
}

/// Parses a whole number in `min..=max` given as a JSON number or a string of digits
/// (no sign or spaces, leading zeros allowed: what docs/openapi.yaml's patterns say).
pub fn number_value(field: &str, v: &Value, min: u64, max: u64) -> Result<u64, ApiError> {
    let wrong_number = || wrong(field, &format!("a whole number from {min} to {max}"));
    match v {
        Value::Number(n) => n
            .as_u64()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(wrong_number),
        Value::String(s) => parse_int(field, s, min, max).map_err(|_| wrong_number()),
        _ => Err(wrong_number()),
    }
}

/// Parses a query parameter as a whole number in `min..=max`.
pub fn parse_number(field: &str, s: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    number_value(field, &Value::String(s.to_string()), min, max)
}

/// A peer-supplied value for an error message: quoted, and cut at 64 characters so a
/// huge value cannot blow up the answer or the log.
pub fn quoted(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

/// Splits a query string into decoded pairs.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (query_decode(k), query_decode(v)),
            None => (query_decode(p), String::new()),
        })
        .collect()
}

/// Decodes a path segment: `%XX` escapes only (a `+` in a path is a plus, RFC 3986);
/// invalid escapes are kept literally.
pub fn percent_decode(s: &str) -> String {
    decode(s, false)
}

/// Decodes a query component: `%XX` escapes, and `+` as a space (HTML forms).
pub fn query_decode(s: &str) -> String {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_beyond_usize_mean_no_limit_rather_than_wrapping() {
        // On a 32-bit target 2^32 + 5 would have been cut to 5.
        let big = (1u64 << 32) + 5;
        let expected = usize::try_from(big).unwrap_or(usize::MAX);
        assert_eq!(
            parse_limit("limit", &big.to_string(), None).unwrap(),
            expected
        );
        assert!(parse_limit("limit", &big.to_string(), None).unwrap() > 5);
        assert_eq!(
            parse_limit("limit", &big.to_string(), Some(1_000)).unwrap(),
            1_000
        );
        assert_eq!(parse_limit("limit", "7", None).unwrap(), 7);
        assert!(parse_limit("limit", "0", None).is_err());
    }

    #[test]
    fn ids_accept_numbers_and_numeric_strings_only() {
        let b = Body::parse(
            br#"{"a": 3, "b": "3", "c": "x3", "d": -1, "e": 1.5, "f": true, "g": "0",
                 "h": "007", "i": " 3", "j": 9223372036854775807, "k": 9223372036854775808,
                 "l": "999999999999999999", "m": "1000000000000000000", "n": ""}"#,
        )
        .unwrap();
        assert_eq!(b.id("a").unwrap(), 3);
        assert_eq!(b.id("b").unwrap(), 3);
        assert_eq!(b.id("h").unwrap(), 7);
        assert_eq!(b.id("j").unwrap(), MAX_INT);
        assert_eq!(b.id("l").unwrap(), 999_999_999_999_999_999);
        for f in ["c", "d", "e", "f", "g", "i", "k", "m", "n"] {
            let e = b.id(f).unwrap_err();
            assert!(e.to_string().contains(&format!("`{f}`")), "{e}");
        }
        assert!(b
            .id("missing")
            .unwrap_err()
            .to_string()
            .contains("required"));
    }

    #[test]
    fn text_integers_are_digits_within_bounds() {
        assert_eq!(parse_id("sid", "1").unwrap(), 1);
        assert_eq!(parse_id("sid", "0009223372036854775807").unwrap(), MAX_INT);
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "9223372036854775808",
            "99999999999999999999",
            "x",
        ] {
            assert!(parse_id("sid", bad).is_err(), "{bad:?}");
        }
        assert_eq!(after(None).unwrap(), 0);
        assert_eq!(after(Some("0")).unwrap(), 0);
        assert!(after(Some("9223372036854775808")).is_err());
        assert_eq!(parse_limit("limit", "1000", Some(1000)).unwrap(), 1000);
        assert!(parse_limit("limit", "9223372036854775808", None).is_err());
    }

    #[test]
    fn wrong_types_name_the_field() {
        let b = Body::parse(br#"{"username": 7, "accept": "maybe"}"#).unwrap();
        assert!(b
            .str("username")
            .unwrap_err()
            .to_string()
            .contains("`username`"));
        assert!(b
            .flag("accept")
            .unwrap_err()
            .to_string()
            .contains("`accept`"));
    }

    #[test]
    fn malformed_and_non_object_bodies_are_400() {
        assert!(matches!(
            Body::parse(b"{\"a\":"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            Body::parse(b"[1,2]"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(Body::parse(b"").is_ok());
    }

    #[test]
    fn quoted_values_are_bounded() {
        assert_eq!(quoted("abc"), "\"abc\"");
        let long = quoted(&"x".repeat(50_000));
        assert!(long.len() < 80 && long.ends_with('…'), "{long}");
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("sid=3&include_rejected=1&x=a%20b+c&bad=%zz");
        assert_eq!(q[0], ("sid".into(), "3".into()));
        assert_eq!(q[2].1, "a b c");
        assert_eq!(q[3].1, "%zz");
    }
}
