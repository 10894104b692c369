//! Human tables for `replgate ctl`: daemon JSON in, aligned text out. Every string from
//! the daemon is cleaned of terminal control characters here; nothing else prints them.

use serde_json::Value;

/// Makes daemon-supplied text safe for a terminal: control characters (which a remote
/// appliance could put into its name or host) are shown escaped, never interpreted.
pub fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A JSON value as one table cell: strings as they are (cleaned), `null` or absent as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => clean(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => clean(&other.to_string()),
    }
}

/// Unix seconds as UTC `YYYY-MM-DD HH:MM:SS`; `-` for none or the epoch itself.
pub fn utc(t: i64) -> String {
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

/// Aligns `rows` under `headers`, two spaces between columns, no trailing blanks.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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
pub fn rows<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// One column of a listing: its header, the JSON field it shows, and how.
enum Col {
    Text(&'static str, &'static str),
    Time(&'static str, &'static str),
    YesNo(&'static str, &'static str),
}

impl Col {
    fn header(&self) -> &'static str {
        match self {
            Col::Text(h, _) | Col::Time(h, _) | Col::YesNo(h, _) => h,
        }
    }

    fn cell(&self, item: &Value) -> String {
        match self {
            Col::Text(_, f) => cell(&item[*f]),
            Col::Time(_, f) => time_cell(&item[*f]),
            Col::YesNo(_, f) => if item[*f] == true { "yes" } else { "" }.into(),
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

pub fn tokens_table(v: &Value) -> String {
    use Col::*;
    let shown: Vec<Value> = rows(v, "tokens")
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t["uses_shown"] = Value::from(format!("{}/{}", cell(&t["used"]), cell(&t["uses"])));
            let bound: Vec<String> = ["system_uuid", "host"]
                .iter()
                .filter_map(|k| t[*k].as_str().map(String::from))
                .collect();
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

pub fn pending_table(v: &Value, include_rejected: bool) -> String {
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

pub fn systems_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("ID", "id"),
        Text("NAME", "name"),
        Text("HOST", "host"),
        Text("ROLE", "role"),
        Text("STATUS", "status"),
        Text("STORAGE", "storage_id"),
    ];
    listing(rows(v, "appliance"), "no systems", &cols)
}

pub fn storage_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("ID", "id"),
        Text("NAME", "name"),
        Text("USAGE", "usage"),
        Text("SIZE MB", "mb_size"),
        Text("FREE MB", "mb_free"),
        YesNo("DEFAULT", "is_default"),
        Text("PATH", "path"),
    ];
    listing(rows(v, "storage"), "no storage", &cols)
}

pub fn targets_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("ID", "target_id"),
        Text("HOST", "host"),
        Text("STATUS", "status"),
        Text("CODE", "verification_code"),
        Time("LAST POLL", "last_poll"),
        Text("MESSAGE", "message"),
    ];
    listing(rows(v, "targets"), "no targets", &cols)
}

pub fn users_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("NAME", "name"),
        Text("PRIVILEGE", "privilege"),
        Time("CREATED", "created"),
        Time("UPDATED", "updated"),
    ];
    listing(rows(v, "users"), "no users", &cols)
}

pub fn audit_table(rows: &[Value]) -> String {
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
            out.starts_with("ID  HOST         STATUS  CODE  LAST POLL  MESSAGE\n"),
            "{out}"
        );
        assert!(out.ends_with("1   127.0.0.1:9  failed  1-2   -          pinned CA changed\n"));
    }
}
