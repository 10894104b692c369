//! Every configuration key, once: its name (and so its `REPLGATE_<NAME>` variable), its
//! kind with default and allowed range, and what it means. Parsing the file and the
//! environment, resolving defaults and ranges, `check-config`'s output and the key table
//! of docs/configuration.md are all read off [`KEYS`] (a test holds the docs to it).
//!
//! Adding a key: one entry here, and the `Config` field it fills (declared and read in
//! `Config::from_values`). Keys are resolved in table order, so a default that names
//! another key ([`NumberDefault::SameAs`], [`TextDefault::FromList`]) comes after it.

use std::ops::RangeInclusive;

use super::defaults::*;
use super::Fault;

/// One key of the configuration. (Its `doc`, a unit and the texts of defaults are read
/// only by the docs test, which renders docs/configuration.md's table from them.)
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct Key {
    /// The key in the file; upper-cased after `REPLGATE_` in the environment.
    pub name: &'static str,
    pub kind: Kind,
    /// What it does, as docs/configuration.md says it (Markdown, one line).
    pub doc: &'static str,
}

/// What a key holds, with its default and the values it allows.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum Kind {
    /// A whole number of `unit`s within `range`.
    Number {
        default: NumberDefault,
        range: RangeInclusive<u64>,
        unit: Unit,
    },
    /// A string that `check` accepts (else it says why not).
    Text {
        default: TextDefault,
        check: fn(&str) -> Result<(), String>,
    },
    /// A socket address, `host:port`.
    Address { default: &'static str },
    /// A list of strings, each passed through `item` (which may normalize it, or say why
    /// not); the environment gives it comma-separated.
    List {
        default: &'static [&'static str],
        item: fn(&str) -> Result<String, String>,
    },
    /// `true` or `false`; the environment also takes `1` and `0`.
    Flag { default: bool },
    /// One of `words`.
    Choice {
        default: &'static str,
        words: &'static [&'static str],
    },
    /// The `[[storage]]` tables, in the file only (`storage.rs` reads them).
    Storage { default: &'static str },
}

/// A number's value when the key is not given.
pub(super) enum NumberDefault {
    Value(u64),
    /// The resolved value of that (earlier) key.
    SameAs(&'static str),
    /// None: the key stays unset, which means what the text says.
    Unset(&'static str),
}

/// A text's value when the key is not given.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum TextDefault {
    Value(&'static str),
    /// Computed from the resolved value of an (earlier) list key; `how` says how, for the
    /// docs.
    FromList {
        key: &'static str,
        compute: fn(&[String]) -> String,
        how: &'static str,
    },
}

/// What a number counts, for the docs.
#[derive(Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(super) enum Unit {
    None,
    Seconds,
    Days,
    Bytes,
}

impl Key {
    /// A key; its `doc` is kept in test builds only (the docs test reads it), so the
    /// meanings of every key cost the shipped binary nothing.
    const fn new(name: &'static str, kind: Kind, doc: &'static str) -> Key {
        let doc = if cfg!(test) { doc } else { "" };
        Key { name, kind, doc }
    }

    const fn number(
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
        doc: &'static str,
    ) -> Key {
        Key::counted(name, default, range, Unit::None, doc)
    }

    const fn seconds(
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
        doc: &'static str,
    ) -> Key {
        Key::counted(name, default, range, Unit::Seconds, doc)
    }

    const fn days(
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
        doc: &'static str,
    ) -> Key {
        Key::counted(name, default, range, Unit::Days, doc)
    }

    const fn bytes(
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
        doc: &'static str,
    ) -> Key {
        Key::counted(name, default, range, Unit::Bytes, doc)
    }

    const fn counted(
        name: &'static str,
        default: u64,
        range: RangeInclusive<u64>,
        unit: Unit,
        doc: &'static str,
    ) -> Key {
        let default = NumberDefault::Value(default);
        let kind = Kind::Number {
            default,
            range,
            unit,
        };
        Key::new(name, kind, doc)
    }

    const fn text(
        name: &'static str,
        default: &'static str,
        check: fn(&str) -> Result<(), String>,
        doc: &'static str,
    ) -> Key {
        let default = TextDefault::Value(default);
        Key::new(name, Kind::Text { default, check }, doc)
    }

    const fn address(name: &'static str, default: &'static str, doc: &'static str) -> Key {
        Key::new(name, Kind::Address { default }, doc)
    }

    const fn list(
        name: &'static str,
        default: &'static [&'static str],
        item: fn(&str) -> Result<String, String>,
        doc: &'static str,
    ) -> Key {
        Key::new(name, Kind::List { default, item }, doc)
    }

    const fn flag(name: &'static str, default: bool, doc: &'static str) -> Key {
        Key::new(name, Kind::Flag { default }, doc)
    }

    const fn choice(
        name: &'static str,
        default: &'static str,
        words: &'static [&'static str],
        doc: &'static str,
    ) -> Key {
        Key::new(name, Kind::Choice { default, words }, doc)
    }

    const fn storage(default: &'static str, doc: &'static str) -> Key {
        Key::new("storage", Kind::Storage { default }, doc)
    }
}

/// The keys, in the order `check-config` prints them and the docs list them (a
/// declarative table: long, but one entry per key).
pub(super) const KEYS: &[Key] = &[
    Key::text(
        "data_dir",
        "./replgate-data",
        not_empty,
        "database, keys, certificates, spool (created mode 0700)",
    ),
    Key::address(
        "api_listen",
        "127.0.0.1:8443",
        "admin API and appliance protocol (TLS)",
    ),
    Key::address(
        "tunnel_listen",
        "127.0.0.1:8444",
        "secure tunnel (mutual TLS)",
    ),
    Key::list(
        "hostnames",
        &["localhost"],
        host,
        "names put in the API and tunnel certificates, besides the listen IPs and 127.0.0.1; \
         changing them re-issues both certificates at the next start, or at once on SIGHUP \
         (`systemctl reload replgate`), without a restart",
    ),
    Key::new(
        "name",
        Kind::Text {
            default: TextDefault::FromList {
                key: "hostnames",
                compute: default_name,
                how: "the first of `hostnames`; while those are the default `localhost`, the \
                      machine's host name",
            },
            check: printable_name,
        },
        "how this appliance introduces itself: its own systems row and the `name`/`host` of \
             requests it files (1–255 printable characters)",
    ),
    Key::list(
        "console_hosts",
        &[],
        host,
        "further `Host` names the web console answers to (a reverse proxy's name), besides \
         `hostnames`, the API listen address and loopback; any other name gets 403 (DNS \
         rebinding). `REPLGATE_CONSOLE_HOSTS` takes a comma-separated list",
    ),
    Key::list(
        "console_origins",
        &[],
        origin,
        "further origins, each exactly `https://name[:port]`, whose pages may send state-changing \
         console requests (a reverse proxy serving the console under another name); the console's \
         own origin always may. `REPLGATE_CONSOLE_ORIGINS` takes a comma-separated list",
    ),
    Key::text(
        "asset_tag",
        "",
        printable_tag,
        "the appliance's asset tag: shown on its own systems row and sent to the targets it asks \
         (at most 255 printable characters)",
    ),
    Key::seconds(
        "poll_interval",
        30,
        1..=86_400,
        "source poll period while a request is open; also the `retry_after` a target tells \
         sources",
    ),
    Key::seconds(
        "heartbeat_interval",
        300,
        1..=604_800,
        "source poll period after completion (learns of revocation)",
    ),
    Key::seconds(
        "drill_interval",
        0,
        0..=31_536_000,
        "how often each complete target gets a scheduled restore drill (a random sample \
         restored into a scratch directory and checked by SHA-256); 0 is never",
    ),
    Key::days(
        "drill_warn_days",
        0,
        0..=3_650,
        "a health warning when no restore drill passed in this many days while paired with a \
         target; 0 is never",
    ),
    Key::number(
        "max_connections",
        MAX_CONNECTIONS as u64,
        1..=65_536,
        "connection cap per listener, API and tunnel (lowered at start if `LimitNOFILE` cannot \
         carry both listeners full); past it a connection gets a quick 503. A quarter of it is kept \
         for addresses that authenticated recently, and addresses of one /24 (IPv6 /64) that \
         have not may hold an eighth of it (at least twice `max_connections_per_address`): \
         docs/operations.md, \"Connection slots under a flood\"",
    ),
    Key::number(
        "max_connections_per_address",
        MAX_CONNECTIONS_PER_ADDRESS as u64,
        1..=65_536,
        "connections one client address may hold open per listener (an IPv4 address, or an IPv6 \
         /64); past it that address gets a quick 503 while others are served; at most \
         `max_connections`",
    ),
    Key::number(
        "max_receive_sessions",
        MAX_RECEIVE_SESSIONS as u64,
        1..=4_096,
        "replication sessions this appliance receives at once, from all its sources; each \
         source may hold its weighted share of them (`share`); a session takes one at its first \
         file (a heartbeat takes none), and while a source waits with none, sessions that ran \
         5 s end at their next file so it gets a turn: \
         docs/operations.md, \"Sharing the receiving sessions\"",
    ),
    Key::text(
        "log",
        "info",
        crate::logging::check_filter,
        "log filter; `RUST_LOG` wins when set",
    ),
    Key::seconds(
        "handshake_timeout",
        HANDSHAKE_TIMEOUT.as_secs(),
        1..=600,
        "a TLS handshake must finish within it",
    ),
    Key::seconds(
        "idle_timeout",
        IDLE_TIMEOUT.as_secs(),
        1..=3_600,
        "a connection with no traffic is closed silently; on the tunnel also the longest a \
         streaming body or response may wait on the peer without progress",
    ),
    Key::seconds(
        "head_timeout",
        HEAD_TIMEOUT.as_secs(),
        1..=600,
        "a request head must arrive within it once begun (else 408); on the tunnel also a capped \
         body after its head",
    ),
    Key::bytes(
        "max_head_bytes",
        MAX_HEAD_BYTES as u64,
        1_024..=1_048_576,
        "request line plus headers (else 431)",
    ),
    Key::bytes(
        "max_body_bytes",
        MAX_BODY_BYTES,
        1_024..=16_777_216,
        "request body on the API listener (else 413); tunnel routes declare their own caps, \
         streaming ones none",
    ),
    Key::seconds(
        "session_idle",
        3_600,
        1..=31_536_000,
        "an unused token expires",
    ),
    Key::seconds(
        "session_lifetime",
        43_200,
        1..=31_536_000,
        "a token expires this long after login, used or not",
    ),
    Key::number(
        "login_max_failures",
        5,
        1..=1_000,
        "failed logins per (user name, address) or per address within `login_window` before 429; \
         also the failures one account may have from anywhere before its attempts are spaced out",
    ),
    Key::seconds(
        "login_window",
        300,
        1..=86_400,
        "the login throttle's window",
    ),
    Key::seconds(
        "login_delay_max",
        30,
        1..=3_600,
        "the longest wait between attempts on one account once it had `login_max_failures` \
         failures from anywhere (1 s, doubling up to this); see docs/operations.md, \"Login \
         throttle\"",
    ),
    Key::seconds(
        "request_ttl",
        604_800,
        1..=31_536_000,
        "a pending pairing request expires (7 days)",
    ),
    Key::seconds(
        "request_retention",
        2_592_000,
        1..=315_360_000,
        "rejected, expired and ignored requests, and their spool, are deleted this long after \
         they ended (30 days); their ids are never reused",
    ),
    Key::number(
        "max_pending",
        1_000,
        1..=1_000_000,
        "open pairing requests, in all",
    ),
    Key::number(
        "max_pending_per_address",
        20,
        1..=1_000_000,
        "open pairing requests from one network (see the two prefixes below); past it that \
         network gets 429 while others are served. Requests with a pairing token never count: \
         they are accepted at once",
    ),
    Key::number(
        "pending_prefix_v4",
        24,
        8..=32,
        "the IPv4 network an address counts in for `max_pending_per_address`, as a prefix length \
         (8 to 32; 32 counts per address)",
    ),
    Key::number(
        "pending_prefix_v6",
        64,
        16..=128,
        "the same for IPv6 (16 to 128): one host usually owns a whole /64",
    ),
    Key::new(
        "unverified_request_ttl",
        Kind::Number {
            default: NumberDefault::SameAs("request_ttl"),
            range: 1..=31_536_000,
            unit: Unit::Seconds,
        },
        "a pending request filed without a pairing token expires after the shorter of this \
             and `request_ttl`; targets that pair through tokens set it short (for example \
             `3600`) so junk from strangers clears itself soon",
    ),
    Key::seconds(
        "crowded_request_ttl",
        3_600,
        60..=31_536_000,
        "a pending request filed without a pairing token while the inbox is at least half full \
         (`max_pending`), from a network that already has open requests, expires after the \
         shorter of this and the other TTLs (1 hour), so a flood clears itself; see \
         docs/operations.md, \"The pairing inbox under a flood\"",
    ),
    Key::flag(
        "require_token",
        false,
        "`true` refuses (403) every pairing request filed without a valid pairing token; \
         `REPLGATE_REQUIRE_TOKEN` takes `true`, `false`, `1` or `0`",
    ),
    Key::days(
        "certificate_days",
        365,
        1..=3_650,
        "lifetime of issued source certificates (sources renew them at 60 to 75 % of it)",
    ),
    Key::new(
        "certificate_seconds",
        Kind::Number {
            default: NumberDefault::Unset("unset: `certificate_days` gives the lifetime"),
            range: 60..=3_650 * 86_400,
            unit: Unit::Seconds,
        },
        "lifetime of issued source certificates in seconds, at least 60; overrides \
             `certificate_days` (for tests and labs)",
    ),
    Key::seconds(
        "server_certificate_seconds",
        SERVER_CERTIFICATE_SECONDS,
        60..=20 * 365 * 86_400,
        "lifetime of the API and tunnel listener certificates (2 years by default), at least 60; \
         they are re-issued while running at two thirds of it",
    ),
    Key::seconds(
        "renew_grace",
        604_800,
        60..=31_536_000,
        "how long a renewed source certificate's predecessor stays valid if the source has not \
         proven the new one first (7 days); at least 60",
    ),
    Key::seconds(
        "rollover_window",
        90 * 86_400,
        60..=10 * 365 * 86_400,
        "how long a CA rollover (`ctl ca rollover`) waits for every paired source to move to the \
         new CA (90 days): before it ends, `finish` refuses while a source is still on the old \
         CA; after it, `finish` goes ahead and lists them (they must pair again); at least 60",
    ),
    Key::number("workers", 4, 1..=64, "threads running request handlers"),
    Key::new(
        "replicate_from",
        Kind::Number {
            default: NumberDefault::Unset("the default `backup` storage"),
            range: 0..=u64::MAX,
            unit: Unit::None,
        },
        "the id of the storage whose backups (`<client>/<file>`, see `docs/decisions.md`, \
             \"Replication\") this appliance replicates to its complete targets; it must name a \
             configured storage",
    ),
    Key::days(
        "recycle_days",
        14,
        1..=3_650,
        "how long a backup that a source's retention policy removed stays in its recycle bin \
         (outside its quota, restorable) before it is purged; counted from its removal, with \
         the value in force at the time of the purge",
    ),
    Key::seconds(
        "verify_interval",
        604_800,
        0..=31_536_000,
        "how often every source's received copies are re-read and checked against their \
         SHA-256 (7 days); a damaged copy is fetched again from the source at its next \
         session. `0` turns the schedule off (`POST /api/replication/verify` still runs one)",
    ),
    Key::seconds(
        "partial_retention",
        604_800,
        10..=315_360_000,
        "a partial copy of a cut transfer that no session resumed for this long is removed (7 \
         days, at least 10); until then it counts against its source's quota",
    ),
    Key::text(
        "compression",
        "auto",
        compression,
        "compression of replicated content (SPEC 17): `auto` lets the sender pick the zstd level \
         or none every few seconds from whether the link or its CPU limits it; `off`; or \
         `zstd:<level>` (1 to 3) always. Used only with targets that agreed to `zstd`. A \
         target's own setting wins (`ctl compression TARGET_ID …`, `PUT /api/replication/target`)",
    ),
    Key::text(
        "tunnel_congestion",
        "bbr",
        congestion_name,
        "TCP congestion control of tunnel connections, both ends (SPEC 17): `bbr`, `system` (the \
         kernel's default, `net.ipv4.tcp_congestion_control`) or another name the kernel knows. \
         One the kernel refuses falls back to the system's default with one warning",
    ),
    Key::choice(
        "dedup",
        "auto",
        &["auto", "off"],
        "deduplicated transfers (SPEC 18): `auto` sends a backup of at least 1 MiB as \
         content-defined chunks and only those the target lacks, when the target agrees; as a \
         target, accepts chunk lists. `off` sends and accepts whole files only",
    ),
    Key::choice(
        "dedup_scope",
        "source",
        &["source", "target"],
        "as a target, which copies a source's new backup may take chunks from: `source`, its own \
         only; `target`, every source's on the same storage (saves more, but a source can then \
         learn, by timing or bytes, whether another source holds a given chunk)",
    ),
    Key::choice(
        "fault",
        "none",
        &Fault::WORDS,
        "fault injection for crash tests: `crash_after_accept_commit` aborts after an accept \
         commits and before its spool is written; `crash_after_renew_commit` (target) after a \
         renewal commits and before it is answered; `crash_after_renew_receive` (source) after a \
         renewed certificate is written and before it is installed; `crash_after_renew_install` \
         (source) after it is installed and before it is proven; `crash_after_rollover_files`, \
         `crash_after_rollover_start` and `crash_after_rollover_finish` (target) after a CA \
         rollover's new key is written, after its start commits, after its finish commits. \
         Never set it in production",
    ),
    Key::storage(
        "one `backup` storage, id 1, at `<data_dir>/storage`",
        "storage locations: `id` (positive, unique), `name`, `usage` (`backup`, `archive`, \
         `other`; the first `backup` one is the default), `kind`: `dir` (default) with a \
         `path`, or `s3` with `endpoint` (`https://`, or `http://` to loopback only), \
         `bucket`, `prefix` (default none), `region` (default `us-east-1`), \
         `credentials_file` (TOML with `access_key_id` and `secret_access_key`, mode 0600), \
         `path_style` (default `false`), `ca_file` (default the system roots) and \
         `capacity_mb` (stands in for free space, counted against by quotas and the space \
         check); an `s3` storage takes sources like a `dir` one but is never `replicate_from`",
    ),
];

/// The key called `name`.
pub(super) fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

// ---- checks of single values: each says why a value is refused ----

fn not_empty(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}

fn compression(s: &str) -> Result<(), String> {
    crate::wire::compress::Compression::parse(s).map(|_| ())
}

fn congestion_name(s: &str) -> Result<(), String> {
    let ok = (1..16).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not `system` or a congestion control name (1 to 15 of a-z, 0-9, _)"
        ))
    }
}

fn printable_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().count() > 255 || s.chars().any(char::is_control) {
        return Err("must be 1-255 printable characters".into());
    }
    Ok(())
}

fn printable_tag(s: &str) -> Result<(), String> {
    if s.len() > 255 || s.chars().any(char::is_control) {
        return Err("must be at most 255 printable characters".into());
    }
    Ok(())
}

/// A host name or IP literal as `hostnames` and `console_hosts` take them.
fn host(h: &str) -> Result<String, String> {
    if valid_host(h) {
        Ok(h.to_string())
    } else {
        Err(format!("{h:?} is not a valid host name"))
    }
}

fn valid_host(h: &str) -> bool {
    h.parse::<std::net::IpAddr>().is_ok()
        || (!h.is_empty()
            && h.len() <= 253
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

/// A `console_origins` entry: exactly `https://host[:port]` (what a browser sends as
/// `Origin`), kept lower-case.
fn origin(o: &str) -> Result<String, String> {
    let lower = o.to_ascii_lowercase();
    let authority = lower.strip_prefix("https://").unwrap_or("");
    let host_ok =
        crate::wire::http::split_authority(authority).is_some_and(|(host, _)| valid_host(host));
    if !host_ok {
        return Err(format!(
            "{o:?} is not an origin like https://backup.example.net[:port]"
        ));
    }
    Ok(lower)
}

/// The appliance's name when `name` is not set: the first configured host name, unless
/// that is still the default `localhost`, which would name every appliance alike (two on
/// one target's pending list could not be told apart); then the machine's host name.
fn default_name(hostnames: &[String]) -> String {
    match hostnames.first() {
        Some(first) if first != "localhost" => first.clone(),
        _ => system_host_name().unwrap_or_else(|| "localhost".into()),
    }
}

/// The kernel's host name (`gethostname`), when it is set and printable.
pub(super) fn system_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many
    // bytes, and the result is read only up to the first NUL within the buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty() && !name.chars().any(char::is_control) && name != "(none)")
        .then(|| name.to_string())
}

// ---- the docs ----

#[cfg(test)]
/// The key table of docs/configuration.md, as [`KEYS`] has it.
pub(super) fn markdown_table() -> String {
    let mut out = String::from("| key | default | range | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        let name = match k.kind {
            Kind::Storage { .. } => format!("`[[{}]]`", k.name),
            _ => format!("`{}`", k.name),
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            default_text(&k.kind),
            range_text(&k.kind),
            k.doc
        ));
    }
    out
}

#[cfg(test)]
fn default_text(kind: &Kind) -> String {
    let code = |s: &str| format!("`{s}`");
    match kind {
        Kind::Number { default, unit, .. } => match default {
            NumberDefault::Value(n) => format!("`{n}`{}", unit_text(*unit)),
            NumberDefault::SameAs(key) => code(key),
            NumberDefault::Unset(what) => what.to_string(),
        },
        Kind::Text { default, .. } => match default {
            TextDefault::Value("") => code("\"\""),
            TextDefault::Value(s) => code(s),
            TextDefault::FromList { how, .. } => how.to_string(),
        },
        Kind::Address { default } | Kind::Choice { default, .. } => code(default),
        Kind::List { default, .. } => {
            let items: Vec<String> = default.iter().map(|s| format!("{s:?}")).collect();
            code(&format!("[{}]", items.join(", ")))
        }
        Kind::Flag { default } => code(&default.to_string()),
        Kind::Storage { default } => default.to_string(),
    }
}

#[cfg(test)]
fn unit_text(unit: Unit) -> &'static str {
    match unit {
        Unit::None => "",
        Unit::Seconds => " s",
        Unit::Days => " days",
        Unit::Bytes => " bytes",
    }
}

#[cfg(test)]
fn range_text(kind: &Kind) -> String {
    match kind {
        Kind::Number { range, .. } if *range != (0..=u64::MAX) => {
            format!("{}–{}", range.start(), range.end())
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_defaults_name_earlier_keys() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(
                k.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                k.name
            );
            assert_eq!(key(k.name).map(|f| f.name), Some(k.name));
            assert_eq!(
                KEYS.iter().filter(|o| o.name == k.name).count(),
                1,
                "{}",
                k.name
            );
            if let Kind::Number {
                default: NumberDefault::SameAs(other),
                ..
            }
            | Kind::Text {
                default: TextDefault::FromList { key: other, .. },
                ..
            } = k.kind
            {
                let at = KEYS.iter().position(|o| o.name == other);
                assert!(
                    at.is_some_and(|at| at < i),
                    "{} defaults to {other}",
                    k.name
                );
            }
            if let Kind::Number {
                default: NumberDefault::Value(n),
                range,
                ..
            } = &k.kind
            {
                assert!(
                    range.contains(n),
                    "{}'s default is out of its range",
                    k.name
                );
            }
        }
        // `storage` is printed as tables, after every plain key.
        assert!(matches!(
            KEYS.last().map(|k| &k.kind),
            Some(Kind::Storage { .. })
        ));
    }

    /// docs/configuration.md lists every key with the default, range and meaning the
    /// table gives it; a change to either shows here.
    #[test]
    fn the_configuration_docs_list_every_key_as_the_table_has_it() {
        let docs = include_str!("../../docs/configuration.md");
        let start = docs
            .find("| key | default |")
            .expect("docs/configuration.md has the key table");
        let end = docs[start..]
            .find("\n\n")
            .map_or(docs.len(), |n| start + n + 1);
        let want = markdown_table();
        assert!(
            docs[start..end] == want,
            "docs/configuration.md's key table differs from config::keys::KEYS; it should \
             read:\n\n{want}"
        );
    }
}
