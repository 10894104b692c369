//! `wire::http`: the request-head parser both listeners use, and the front's body cap on
//! top. Any bytes: `find_end` finds exactly the first blank line, also when a scan is
//! resumed, and `request_head_end` the first blank line or bare LF, whichever ends first;
//! `parse` + `capped_length` never panics and answers exactly what the rules
//! (tests/it/rules.rs, written from the documentation) answer; an accepted body is within
//! the cap.

use replgate::wire::http;

use crate::rules;

/// Caps the first input byte chooses from (the front's default is 65,536).
const CAPS: [u64; 5] = [0, 5, 1_000, 65_536, u64::MAX];

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let Some((&selector, buf)) = input.split_first() else {
        return;
    };
    let max_body = CAPS[usize::from(selector) % CAPS.len()];
    let end = http::find_end(buf, 0);
    let first = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    assert_eq!(end, first, "find_end");
    // A scan resumed where a shorter prefix found nothing gives the same answer.
    let from = usize::from(selector) % (buf.len() + 1);
    if http::find_end(&buf[..from], 0).is_none() {
        assert_eq!(http::find_end(buf, from), end, "find_end resumed at {from}");
    }
    // A server's scan also stops at the first bare LF (a head that is refused at once).
    let bare_lf = buf
        .iter()
        .enumerate()
        .position(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
        .map(|i| i + 1);
    let request_end = match (bare_lf, first) {
        (Some(lf), Some(blank)) => Some(lf.min(blank)),
        (lf, blank) => lf.or(blank),
    };
    assert_eq!(
        http::request_head_end(buf, 0),
        request_end,
        "request_head_end"
    );
    if http::request_head_end(&buf[..from], 0).is_none() {
        assert_eq!(
            http::request_head_end(buf, from),
            request_end,
            "request_head_end resumed at {from}"
        );
    }
    if let Some(cut) = request_end.filter(|&e| Some(e) != first) {
        let got = http::parse(&buf[..cut]).map_err(|e| e.status());
        assert_eq!(got.map(|_| ()), Err(400), "a head cut at a bare LF");
    }
    let heads: Vec<&[u8]> = match end {
        Some(e) => vec![&buf[..e], buf],
        None => vec![buf],
    };
    for head in heads {
        let got = http::parse(head)
            .and_then(|r| r.capped_length(max_body))
            .map_err(|e| e.status());
        assert_eq!(
            got,
            rules::head_model(head, max_body),
            "max_body {max_body}"
        );
        if let Ok(n) = got {
            assert!(n <= max_body);
        }
        if let Ok(parsed) = http::parse(head) {
            // Every header the parser reports is found again by name.
            assert!(parsed.len() <= head.len());
            for name in ["content-length", "host", "expect", "transfer-encoding"] {
                if let Some(range) = parsed.line_range(name) {
                    assert!(range.end <= head.len());
                }
            }
        }
    }
}
