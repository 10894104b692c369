//! Human tables for `replgate ctl`: daemon JSON in, aligned text out. Every string from
//! the daemon is shown through [`clean`] here; nothing else prints them.

use serde_json::Value;

/// Makes daemon-supplied text safe and unambiguous on a terminal (docs/decisions.md,
/// "Showing peer-supplied text"): what a remote appliance put into its name, host or
/// asset tag is stored as sent, but every character that would not show as itself is
/// shown escaped, never interpreted: controls as `\n`, `\t`, `\r` or `\u{1b}`;
/// invisible and direction-changing characters as `\u{202e}` (lowercase hex); and the
/// backslash as `\\`, so an escape on screen always means an escaped character.
pub(crate) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if shown_escaped(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Characters that do not show as themselves: controls (C0, DEL, C1); format characters
/// (Unicode category Cf: bidi embeddings, overrides and isolates, zero-width space and
/// joiners, word joiner, invisible operators, BOM, soft hyphen, Arabic letter mark, tags);
/// line and paragraph separators; every space but U+0020; and the invisible fillers
/// (combining grapheme joiner, Hangul fillers). The Cf list is Unicode 15's.
pub(crate) fn shown_escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c as u32,
            0x00a0 | 0x00ad | 0x034f | 0x061c | 0x06dd | 0x070f | 0x115f | 0x1160 | 0x1680
                | 0x180e | 0x08e2 | 0x3000 | 0x3164 | 0xfeff | 0xffa0 | 0x110bd | 0x110cd
                | 0xe0001
                | 0x0600..=0x0605
                | 0x0890..=0x0891
                | 0x2000..=0x200f
                | 0x2028..=0x202f
                | 0x205f..=0x2064
                | 0x2066..=0x206f
                | 0xfff9..=0xfffb
                | 0x13430..=0x1343f
                | 0x1bca0..=0x1bca3
                | 0x1d173..=0x1d17a
                | 0xe0020..=0xe007f
        )
}

/// A JSON value as one table cell: strings as they are (cleaned), `null` or absent as `-`.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => clean(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => clean(&other.to_string()),
    }
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM:SS`; `-` for none or the epoch itself.
pub(crate) fn utc(t: i64) -> String {
    match crate::model::utc_text(t) {
        Some(text) if t > 0 => text,
        _ => "-".into(),
    }
}

/// A time in a table, marked as UTC (a missing one stays `-`).
fn time_cell(v: &Value) -> String {
    match v.as_i64().map(utc) {
        Some(t) if t != "-" => format!("{t} UTC"),
        _ => "-".into(),
    }
}

/// What is left of a certificate ending at `ends`, as an admin reads it at a glance:
/// `expired`, whole days (`29 d`), or for the last day (and lab lifetimes) hours or
/// minutes; `-` for none.
pub(crate) fn time_left(ends: Option<i64>, now: i64) -> String {
    let Some(ends) = ends else {
        return "-".into();
    };
    match ends.saturating_sub(now) {
        left if left <= 0 => "expired".into(),
        left if left >= 86_400 => format!("{} d", left / 86_400),
        left if left >= 3_600 => format!("{} h", left / 3_600),
        left if left >= 60 => format!("{} min", left / 60),
        left => format!("{left} s"),
    }
}

/// Aligns `rows` under `headers`, two spaces between columns, no trailing blanks.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(c));
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(c);
            line.extend(std::iter::repeat_n(' ', w.saturating_sub(width(c))));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The array under `key`, or none.
pub(crate) fn rows<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// One column of a listing: its header, the JSON field it shows, and how.
enum Col {
    Text(&'static str, &'static str),
    Time(&'static str, &'static str),
    YesNo(&'static str, &'static str),
    /// The time left until the unix time in the field (a certificate's end).
    Left(&'static str, &'static str),
}

impl Col {
    fn header(&self) -> &'static str {
        match self {
            Col::Text(h, _) | Col::Time(h, _) | Col::YesNo(h, _) | Col::Left(h, _) => h,
        }
    }

    fn cell(&self, item: &Value) -> String {
        match self {
            Col::Text(_, f) => cell(&item[*f]),
            Col::Time(_, f) => time_cell(&item[*f]),
            Col::YesNo(_, f) => if item[*f] == true { "yes" } else { "" }.into(),
            Col::Left(_, f) => time_left(item[*f].as_i64(), crate::model::now()),
        }
    }
}

/// A table of `items`, one row each, or `empty` when there are none.
fn listing(items: &[Value], empty: &str, cols: &[Col]) -> String {
    if items.is_empty() {
        return format!("{empty}\n");
    }
    let headers: Vec<&str> = cols.iter().map(Col::header).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| cols.iter().map(|c| c.cell(item)).collect())
        .collect();
    table(&headers, &rows)
}

pub(crate) fn tokens_table(v: &Value) -> String {
    use Col::*;
    let shown: Vec<Value> = rows(v, "tokens")
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t["uses_shown"] = Value::from(format!("{}/{}", cell(&t["used"]), cell(&t["uses"])));
            let mut bound: Vec<String> = ["system_uuid", "host"]
                .iter()
                .filter_map(|k| t[*k].as_str().map(String::from))
                .collect();
            if let Some(sid) = t["replaces_system_id"].as_u64() {
                bound.push(format!("takes over system {sid}"));
            }
            t["bound"] = Value::from(bound.join(" "));
            t
        })
        .collect();
    listing(
        &shown,
        "no pairing tokens",
        &[
            Text("ID", "token_id"),
            Text("STATUS", "status"),
            Text("USED", "uses_shown"),
            Time("EXPIRES", "expires"),
            Time("LAST USED", "last_used"),
            Text("STORAGE", "storage_id"),
            Text("QUOTA MB", "quota_mb"),
            Text("BOUND TO", "bound"),
            Text("NOTE", "note"),
        ],
    )
}

pub(crate) fn pending_table(v: &Value, include_rejected: bool) -> String {
    use Col::*;
    let mut cols = vec![
        Text("ID", "request_id"),
        Text("SYSTEM UUID", "system_uuid"),
        Text("HOST", "host"),
        Text("NAME", "name"),
        Text("CODE", "verification_code"),
        Time("CREATED", "created"),
        Time("EXPIRES", "expires"),
    ];
    if include_rejected {
        cols.extend([Text("STATUS", "status"), Text("MESSAGE", "message")]);
    }
    listing(rows(v, "pending"), "no pending requests", &cols)
}

pub(crate) fn systems_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("ID", "id"),
        Text("NAME", "name"),
        Text("HOST", "host"),
        Text("ROLE", "role"),
        Text("STATUS", "status"),
        Text("STORAGE", "storage_id"),
        Left("CERTIFICATE", "certificate_expires"),
    ];
    listing(rows(v, "appliance"), "no systems", &cols)
}

pub(crate) fn storage_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("ID", "id"),
        Text("NAME", "name"),
        Text("TYPE", "type"),
        Text("USAGE", "usage"),
        Text("SIZE MB", "mb_size"),
        Text("FREE MB", "mb_free"),
        YesNo("DEFAULT", "is_default"),
        Text("PATH", "path"),
    ];
    listing(rows(v, "storage"), "no storage", &cols)
}

/// The targets; a TOOK OVER column (`system SID` on the row of a pairing that took over
/// a lost source's backups there) only when some pairing did, as `pending --all` adds its
/// columns: the usual table stays as narrow as before.
pub(crate) fn targets_table(v: &Value) -> String {
    use Col::*;
    let shown: Vec<Value> = rows(v, "targets")
        .iter()
        .map(|t| {
            let mut t = t.clone();
            if let Some(sid) = t["replaces_system_id"].as_u64() {
                t["took_over"] = Value::from(format!("system {sid}"));
            }
            t
        })
        .collect();
    let mut cols = vec![
        Text("ID", "target_id"),
        Text("HOST", "host"),
        Text("STATUS", "status"),
        Text("CODE", "verification_code"),
        Time("LAST POLL", "last_poll"),
        Left("CERTIFICATE", "certificate_expires"),
    ];
    if shown.iter().any(|t| t["took_over"].is_string()) {
        cols.push(Text("TOOK OVER", "took_over"));
    }
    cols.push(Text("MESSAGE", "message"));
    listing(&shown, "no targets", &cols)
}

/// Bytes as MB (10^6) with one decimal, as people read transfer sizes.
fn mb_cell(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{:.1}", b as f64 / 1e6))
        .unwrap_or_default()
}

/// The queue: active items (with live progress), then waiting and failed ones, then
/// finished ones when asked for.
pub(crate) fn queue_table(v: &Value) -> String {
    let headers = [
        "ID", "TARGET", "BACKUP", "STATUS", "POS", "MB", "DONE MB", "MB/S", "ETA S", "MESSAGE",
    ];
    let mut out = Vec::new();
    for list in ["active", "inactive", "done"] {
        for i in rows(v, list) {
            let who = match (&i["target"], &i["sid"]) {
                (Value::String(t), _) => t.clone(),
                (_, Value::Number(sid)) => format!("from system {sid}"),
                _ => String::new(),
            };
            let pos = match i["queue_position"].as_u64() {
                Some(0) | None => String::new(),
                Some(p) => p.to_string(),
            };
            out.push(vec![
                cell(&i["id"]),
                who,
                cell(&i["backup"]),
                cell(&i["status"]),
                pos,
                mb_cell(&i["size"]),
                mb_cell(&i["bytes_done"]),
                i["rate_bps"]
                    .as_u64()
                    .map(|r| format!("{:.1}", r as f64 / 1e6))
                    .unwrap_or_default(),
                cell(&i["eta_s"]),
                cell(&i["message"]),
            ]);
        }
    }
    if out.is_empty() {
        return "the replication queue is empty\n".to_string();
    }
    let mut text = table(&headers, &out);
    if let Some(n) = v["total_inactive"].as_u64() {
        let shown = rows(v, "inactive").len() as u64;
        if n > shown {
            text.push_str(&format!(
                "({} more waiting or failed items not shown)\n",
                n - shown
            ));
        }
    }
    text
}

pub(crate) fn config_text(v: &Value) -> String {
    let c = &v["config"];
    format!(
        "strategy {} (queue_scheme {}), max_concurrent {}, retries {}\n",
        cell(&c["strategy"]),
        cell(&c["queue_scheme"]),
        cell(&c["max_concurrent"]),
        cell(&c["retries"])
    )
}

pub(crate) fn throttle_table(v: &Value) -> String {
    let link = cell(&v["link_mbps"]);
    let windows = rows(v, "throttle");
    if windows.is_empty() {
        return format!(
            "no throttle windows: replication runs at full speed (link {link} Mbit/s)\n"
        );
    }
    let out: Vec<Vec<String>> = windows
        .iter()
        .map(|w| {
            let days: Vec<String> = w["days"]
                .as_array()
                .map(|d| d.iter().map(cell).collect())
                .unwrap_or_default();
            let (start, end) = (cell(&w["start"]), cell(&w["end"]));
            let hours = if start == end {
                "all day".to_string()
            } else {
                format!("{start}-{end}")
            };
            vec![
                format!("{}%", cell(&w["percentage"])),
                days.join(","),
                hours,
            ]
        })
        .collect();
    format!(
        "link {link} Mbit/s\n{}",
        table(&["PERCENT", "DAYS (0 = SUN)", "HOURS"], &out)
    )
}

pub(crate) fn received_table(v: &Value) -> String {
    use Col::*;
    let mut text = listing(
        rows(v, "received"),
        "nothing received from this source",
        &[
            Text("BACKUP", "backup"),
            Text("SIZE", "size"),
            Text("STATUS", "status"),
            Time("RECEIVED", "received"),
            Time("VERIFIED", "verified"),
            Text("SHA256", "sha256"),
            Text("MESSAGE", "message"),
        ],
    );
    let verify = &v["verify"];
    if verify.is_object() {
        text.push_str(&format!(
            "verify {}: {} of {} checked, {} damaged, {} missing\n",
            if verify["running"] == true {
                "running"
            } else {
                "finished"
            },
            cell(&verify["checked"]),
            cell(&verify["total"]),
            cell(&verify["damaged"]),
            cell(&verify["missing"])
        ));
    }
    text
}

pub(crate) fn recycle_table(v: &Value) -> String {
    use Col::*;
    let mut text = listing(
        rows(v, "recycle"),
        "the recycle bin is empty",
        &[
            Text("BACKUP", "backup"),
            Text("SIZE", "size"),
            Time("REMOVED", "removed"),
            Time("PURGE AFTER", "purge_after"),
            Text("SHA256", "sha256"),
            Text("DAMAGED", "damaged"),
        ],
    );
    text.push_str(&format!(
        "{} bytes in the bin (outside the quota), each kept {} days\n",
        cell(&v["bytes"]),
        cell(&v["recycle_days"])
    ));
    text
}

pub(crate) fn users_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("NAME", "name"),
        Text("PRIVILEGE", "privilege"),
        Time("CREATED", "created"),
        Time("UPDATED", "updated"),
    ];
    listing(rows(v, "users"), "no users", &cols)
}

pub(crate) fn audit_table(rows: &[Value]) -> String {
    use Col::*;
    let cols = [
        Text("ID", "id"),
        Time("TIME", "time"),
        Text("USER", "user"),
        Text("ADDRESS", "address"),
        Text("ACTION", "action"),
        Text("OBJECT", "object"),
        Text("DETAIL", "detail"),
    ];
    listing(rows, "no audit entries", &cols)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_blanks() {
        let out = table(
            &["ID", "NAME", "MESSAGE"],
            &[
                vec!["1".into(), "alpha".into(), "-".into()],
                vec!["12".into(), "b".into(), "long message".into()],
            ],
        );
        assert_eq!(
            out,
            "ID  NAME   MESSAGE\n\
             1   alpha  -\n\
             12  b      long message\n"
        );
    }

    #[test]
    fn a_token_that_takes_over_a_system_says_so_under_bound_to() {
        let v = json!({"tokens": [{"token_id": "0123456789ab", "status": "valid", "uses": 1,
                                   "used": 0, "expires": 0, "replaces_system_id": 3}]});
        let out = tokens_table(&v);
        assert!(
            out.lines().nth(1).unwrap().contains("takes over system 3"),
            "{out}"
        );
    }

    #[test]
    fn tables_count_characters_not_bytes() {
        let out = table(
            &["NAME", "X"],
            &[
                vec!["zürich".into(), "1".into()],
                vec!["a".into(), "2".into()],
            ],
        );
        assert_eq!(out, "NAME    X\nzürich  1\na       2\n");
    }

    #[test]
    fn terminal_control_characters_from_the_daemon_are_escaped() {
        assert_eq!(cell(&json!("evil\u{1b}[2Jname\n")), "evil\\u{1b}[2Jname\\n");
        assert_eq!(clean("plain"), "plain");
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_are_escaped_and_the_rest_is_kept() {
        // "backup-\u{202e}gpj.exe" would show as "backup-exe.jpg".
        assert_eq!(clean("backup-\u{202e}gpj.exe"), "backup-\\u{202e}gpj.exe");
        assert_eq!(clean("ro\u{200b}ot\u{feff}"), "ro\\u{200b}ot\\u{feff}");
        assert_eq!(
            clean("a\u{2066}b\u{2069}\u{00a0}c\u{2028}"),
            "a\\u{2066}b\\u{2069}\\u{a0}c\\u{2028}"
        );
        assert_eq!(clean("tag\u{e0041}\u{ad}"), "tag\\u{e0041}\\u{ad}");
        // A backslash is doubled, so text that looks like an escape cannot pose as one.
        assert_eq!(clean("fake\\u{202e}"), "fake\\\\u{202e}");
        // Letters, accents, CJK, emoji and the plain space stay as they are.
        assert_eq!(clean("Zürich 東京 ☃ café"), "Zürich 東京 ☃ café");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2067}', '\u{2068}',
            '\u{200e}', '\u{200f}', '\u{061c}', '\u{200c}', '\u{200d}', '\u{2060}',
        ] {
            assert!(shown_escaped(c), "{:x}", c as u32);
        }
        for c in ['a', ' ', 'é', '-', '\u{2010}', '\u{2030}', '\u{2070}'] {
            assert!(!shown_escaped(c), "{:x}", c as u32);
        }
    }

    #[test]
    fn cells_show_absent_values_as_a_dash() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&json!("")), "-");
        assert_eq!(cell(&json!(7)), "7");
        assert_eq!(cell(&json!(true)), "yes");
        assert_eq!(time_cell(&Value::Null), "-");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc(0), "-");
    }

    #[test]
    fn pending_table_has_the_admins_columns() {
        let v = json!({"pending": [{
            "request_id": 3, "system_uuid": "0d2f…", "host": "src.example", "name": "src",
            "verification_code": "123-456", "created": 1_700_000_000, "expires": 1_700_604_800,
            "status": "pending"
        }]});
        let out = pending_table(&v, false);
        let mut lines = out.lines();
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            ["ID", "SYSTEM", "UUID", "HOST", "NAME", "CODE", "CREATED", "EXPIRES"]
        );
        let row = lines.next().unwrap();
        assert!(row.starts_with("3   "), "{row}");
        assert!(row.contains("123-456") && row.contains("2023-11-21 22:13:20"));
        let all = pending_table(&v, true);
        let header: Vec<&str> = all.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(header[header.len() - 2..], ["STATUS", "MESSAGE"]);
        assert_eq!(
            pending_table(&json!({"pending": []}), false),
            "no pending requests\n"
        );
    }

    #[test]
    fn targets_table_shows_status_and_message() {
        let v = json!({"targets": [{
            "target_id": 1, "host": "127.0.0.1:9", "status": "failed", "verification_code": "1-2",
            "last_poll": null, "message": "pinned CA changed"
        }]});
        let out = targets_table(&v);
        assert!(
            out.starts_with("ID  HOST         STATUS  CODE  LAST POLL  CERTIFICATE  MESSAGE\n"),
            "{out}"
        );
        assert!(out.ends_with(
            "1   127.0.0.1:9  failed  1-2   -          -            pinned CA changed\n"
        ));
    }

    #[test]
    fn targets_table_shows_a_takeover_in_its_own_column_only_when_there_is_one() {
        let row = |id: u64, took: Option<u64>| {
            let mut r = json!({"target_id": id, "host": format!("t{id}:8443"),
                "status": "complete", "verification_code": "1-2", "last_poll": null});
            if let Some(sid) = took {
                r["replaces_system_id"] = json!(sid);
            }
            r
        };
        let out = targets_table(&json!({"targets": [row(1, None), row(2, Some(7))]}));
        let header: Vec<&str> = out.lines().next().unwrap().split("  ").collect();
        assert!(header.contains(&"TOOK OVER"), "{out}");
        let at = out.lines().next().unwrap().find("TOOK OVER").unwrap();
        let took = |n: usize| out.lines().nth(n).unwrap()[at..].to_string();
        assert!(took(2).starts_with("system 7"), "{out}");
        assert!(
            took(1).trim().is_empty() || took(1).starts_with('-'),
            "{out}"
        );
        let plain = targets_table(&json!({"targets": [row(1, None)]}));
        assert!(!plain.contains("TOOK OVER"), "{plain}");
    }

    #[test]
    fn certificates_show_the_time_left_and_say_expired() {
        let now = 1_700_000_000;
        assert_eq!(time_left(None, now), "-");
        assert_eq!(time_left(Some(now), now), "expired");
        assert_eq!(time_left(Some(now - 5), now), "expired");
        assert_eq!(time_left(Some(now + 29 * 86_400 + 7), now), "29 d");
        assert_eq!(time_left(Some(now + 5 * 3_600), now), "5 h");
        assert_eq!(time_left(Some(now + 90), now), "1 min");
        assert_eq!(time_left(Some(now + 9), now), "9 s");
        let v = json!({"targets": [{
            "target_id": 2, "host": "t:8443", "status": "pending", "verification_code": "1-2",
            "last_poll": null, "certificate_expires": 1,
            "message": "the certificate expired at 1970-01-01 00:00:01 UTC; ..."
        }]});
        let out = targets_table(&v);
        assert!(out.lines().nth(1).unwrap().contains("  expired  "), "{out}");
    }
}
