//! Logging set-up: one line per record on standard error. Under journald (standard error
//! is the stream `JOURNAL_STREAM` names) a line is `<6>[INFO ] text`: the journal keeps its
//! own time, and the `<N>` syslog priority lets `journalctl -p warning` filter. Elsewhere
//! it is `2025-12-01T10:00:00.123Z [INFO ] text`, in UTC. Also the one check of a log
//! filter's syntax. Decides nothing about what is logged.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::Level;

/// The levels a filter may name, lowest first.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Starts logging with `filter` (the `log` setting), unless `RUST_LOG` is set: it wins.
/// A `RUST_LOG` that is not a filter is reported and `filter` used instead.
pub fn init(filter: &str) {
    let chosen = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => match check_filter(&f) {
            Ok(()) => f,
            Err(e) => {
                eprintln!("replgate: RUST_LOG ignored: {e}; using log = {filter:?}");
                filter.to_string()
            }
        },
        _ => filter.to_string(),
    };
    let journald = under_journald();
    env_logger::Builder::new()
        .parse_filters(&chosen)
        .format(move |buf, record| {
            let now = (!journald).then(SystemTime::now);
            writeln!(buf, "{}", line(record.level(), &record.args(), now))
        })
        .init();
}

/// Checks a filter as `env_logger` reads it, but strictly: comma-separated directives,
/// each a level or `module=level`. (A bare word that is not a level would switch on one
/// module of that name and nothing else: `verbose` would silence the daemon.)
pub fn check_filter(filter: &str) -> Result<(), String> {
    let level = |l: &str| LEVELS.contains(&l.to_ascii_lowercase().as_str());
    let module = |m: &str| {
        !m.is_empty()
            && m.split("::")
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    };
    let directives: Vec<&str> = filter.split(',').map(str::trim).collect();
    for d in &directives {
        let ok = match d.split_once('=') {
            Some((m, l)) => module(m.trim()) && level(l.trim()),
            None => level(d),
        };
        if !ok {
            return Err(format!(
                "{d:?} in {filter:?} is not a level ({}) or MODULE=LEVEL",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether standard error is the journal stream systemd set up for this service.
fn under_journald() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    // SAFETY: `stat` is plain data, written by a successful `fstat`.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 2 is standard error (open or not; a failure is reported), `st` is writable.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// One log line: with `now`, a UTC timestamp first; without (journald), a `<N>` priority.
fn line(level: Level, text: &dyn std::fmt::Display, now: Option<SystemTime>) -> String {
    let tag = format!("[{level:<5}]");
    match now {
        Some(t) => format!("{} {tag} {text}", timestamp(t)),
        None => {
            let priority = match level {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{priority}>{tag} {text}")
        }
    }
}

/// `2025-12-01T10:00:00.123Z`.
fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    match crate::model::utc_text(seconds) {
        Some(text) => format!("{}.{:03}Z", text.replace(' ', "T"), since.subsec_millis()),
        None => format!("unix:{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn lines_carry_a_utc_timestamp_or_a_journal_priority() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        assert_eq!(
            line(Level::Info, &"request 3 filed", Some(t)),
            "2023-11-14T22:13:20.042Z [INFO ] request 3 filed"
        );
        assert_eq!(line(Level::Warn, &"w", None), "<4>[WARN ] w");
        assert_eq!(line(Level::Error, &"e", None), "<3>[ERROR] e");
        assert_eq!(line(Level::Debug, &"d", None), "<7>[DEBUG] d");
    }

    #[test]
    fn filters_are_levels_or_module_levels() {
        for good in [
            "info",
            "debug",
            "WARN",
            "replgate=debug,info",
            "replgate::api=trace",
            "off",
        ] {
            assert_eq!(check_filter(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "", "info,", "replgate=loud", "=info", "a b=info"] {
            let e = check_filter(bad).unwrap_err();
            assert!(e.contains("not a level"), "{bad}: {e}");
        }
    }
}
