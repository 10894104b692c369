//! `replgate ctl`: the admin command line. Talks to a running daemon through its HTTPS API
//! only, with one client that trusts nothing but the given CA; never opens the database
//! (the daemon holds redb's exclusive lock). This module runs one invocation and owns the
//! errors and exit codes; the reference for admins is `docs/ctl.md`.
//!
//! - `args`: the grammar: what an invocation parses into, and the parts every command's
//!   parser is built from,
//! - `commands`: the table of commands (name, help, options, parse, run), from which the
//!   help text, the option grammar and the dispatch are built,
//! - `client`: the typed client for the daemon's API (timeouts, no proxy, no redirects),
//! - `settings`: where the API, the CA and the token cache come from (`REPLGATE_CTL_*`),
//! - `session`: the token cache (0600, through `fsx`),
//! - `prompt`: passwords (`--password-stdin`, `REPLGATE_PASSWORD`, a prompt without echo),
//! - `table`: human tables, cleaned of terminal control characters.

mod args;
mod client;
mod commands;
mod prompt;
mod session;
mod settings;
pub(crate) mod table;

use std::fmt;
use std::io::{self, Write};

use args::{Ctl, CtlCommand, Trust};
use client::{Client, Refusal};
use commands::{Cx, Run};
use settings::Settings;
use table::clean;

pub use settings::{DEFAULT_API, DEFAULT_CACERTS};

/// The token cache and a CA file are a few KB.
const MAX_LOCAL_FILE_BYTES: u64 = 1024 * 1024;

/// Exit codes scripts can rely on (documented in `docs/ctl.md`).
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// The daemon refused (a 4xx or 5xx not listed below); its message is printed.
    pub const REFUSED: u8 = 1;
    /// Bad arguments, or a local set-up problem (CA file, token file, no password).
    pub const USAGE: u8 = 2;
    /// Not logged in, token expired, or wrong user name or password (401).
    pub const UNAUTHORIZED: u8 = 3;
    /// The user's privilege is too low (403).
    pub const FORBIDDEN: u8 = 4;
    /// Unknown request, system, target or user (404).
    pub const NOT_FOUND: u8 = 5;
    /// The object's state does not allow it: already resolved, duplicate (409).
    pub const CONFLICT: u8 = 6;
    /// The target's CA is not trusted yet (412, code 12505).
    pub const UNTRUSTED: u8 = 7;
    /// The daemon could not be reached: refused connection, TLS failure, timeout.
    pub const UNREACHABLE: u8 = 8;
}

/// Runs `replgate ctl` with the words after `ctl`; returns the exit code.
pub fn run(args: &[String]) -> u8 {
    let parsed = commands::parse(args).and_then(|ctl| match commands::named(ctl.name) {
        Some(command) => Ok((ctl, command)),
        None => Err(args::UsageError(format!("unknown command {:?}", ctl.name))),
    });
    let (ctl, command) = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "replgate ctl: {}\n  `replgate ctl help` lists the commands and options",
                e.0
            );
            return exit::USAGE;
        }
    };
    let done = match command.run {
        Run::Local(answer) => Ok(answer()),
        Run::Daemon(call) => execute(&ctl, call),
    };
    match done {
        Ok(out) => {
            print_out(&out);
            exit::OK
        }
        Err(e) => {
            if let (true, CtlError::Refused(r)) = (ctl.json, &e) {
                print_out(&with_newline(&r.body));
            }
            eprintln!("replgate ctl: {e}");
            if let Some(hint) = e.hint(&ctl) {
                eprintln!("{hint}");
            }
            e.exit_code()
        }
    }
}

/// Runs a command that calls the daemon: settings, CA and client first, then `call`;
/// returns what goes to standard output.
fn execute(
    ctl: &Ctl,
    call: fn(&Cx<'_>, &CtlCommand) -> Result<String, CtlError>,
) -> Result<String, CtlError> {
    let settings = Settings::resolve(ctl)?;
    let ca_pem = settings.ca_pem()?;
    let client = Client::new(&settings.api, &ca_pem)?;
    let cx = Cx {
        ctl,
        api: &settings.api,
        client: &client,
        ca_pem: &ca_pem,
    };
    call(&cx, &ctl.command)
}

/// Writes to standard output, ignoring a closed pipe (`replgate ctl audit | head`).
fn print_out(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn with_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    }
}

// ---- errors ----

/// Every way a `ctl` command fails, each with its exit code.
#[derive(Debug)]
pub enum CtlError {
    /// Bad arguments or local set-up: an unreadable CA file, no password source.
    Usage(String),
    /// The token cache could not be read or written.
    Local(String),
    /// No cached token for this daemon, which answers; nothing with a token was sent.
    NotLoggedIn(String),
    /// The daemon answered with an error status.
    Refused(Refusal),
    /// The daemon could not be reached, or the TLS handshake failed.
    Unreachable(String),
    /// The daemon's answer is not what the API documents.
    Malformed(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) | CtlError::Local(_) => exit::USAGE,
            CtlError::NotLoggedIn(_) => exit::UNAUTHORIZED,
            CtlError::Refused(r) => match r.status {
                401 => exit::UNAUTHORIZED,
                403 => exit::FORBIDDEN,
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                412 => exit::UNTRUSTED,
                _ => exit::REFUSED,
            },
            CtlError::Unreachable(_) => exit::UNREACHABLE,
            CtlError::Malformed(_) => exit::REFUSED,
        }
    }

    /// Extra lines for stderr: what to do next, as commands to run with the same
    /// `--api` and `--cacert` as this one.
    fn hint(&self, ctl: &Ctl) -> Option<String> {
        let run = |words: &str| command_line(ctl, words);
        let r = match self {
            CtlError::NotLoggedIn(_) => return Some(format!("  log in first: `{}`", run("login"))),
            CtlError::Refused(r) => r,
            _ => return None,
        };
        match (r.status, &ctl.command) {
            (401, CtlCommand::Login { .. }) => None,
            (401, _) => Some(format!("  log in again with `{}`", run("login"))),
            (
                404,
                CtlCommand::Accept { .. } | CtlCommand::Reject { .. } | CtlCommand::Ignore { .. },
            ) => Some(format!(
                "  `{}` lists the open requests and their IDs (`--all` adds rejected ones)",
                run("pending")
            )),
            (404, CtlCommand::Unpair { .. }) => Some(format!(
                "  `{}` lists the systems; a paired source is a row whose role ends in \
                 \"Replication Source\"",
                run("systems")
            )),
            (412, CtlCommand::RequestTarget { target, trust, .. }) => {
                let fp = r.fingerprint.as_deref().unwrap_or("?");
                Some(match trust {
                    Trust::Fingerprint(given) if given != fp => format!(
                        "  WARNING: the target presented a CA with fingerprint (SHA-256)\n    {fp}\n  \
                         not the one given:\n    {given}\n  \
                         A mismatch can mean that someone between the appliances is presenting their \
                         own CA. Do not pair with the presented one unless the target's admin reads \
                         exactly it off the target (`replgate ctl health` there); if they read the one \
                         you gave, the connection to {target} is not the target's."
                    ),
                    _ => format!(
                        "  presented CA fingerprint (SHA-256): {fp}\n  \
                         ask the target's admin to read theirs out (`replgate ctl health` on the target) \
                         and compare every digit; only if they match, retry:\n    \
                         {}",
                        run(&format!("request-target {} --fingerprint {fp}", shell_word(target)))
                    ),
                })
            }
            _ => None,
        }
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Usage(m)
            | CtlError::Local(m)
            | CtlError::NotLoggedIn(m)
            | CtlError::Unreachable(m) => f.write_str(m),
            CtlError::Refused(r) => f.write_str(&clean(&r.message)),
            CtlError::Malformed(m) => write!(f, "unexpected answer from the daemon: {m}"),
        }
    }
}

impl std::error::Error for CtlError {}

/// `replgate ctl WORDS` with the `--api` and `--cacert` given to this run (after the
/// command, where the grammar takes them too), quoted for a shell.
fn command_line(ctl: &Ctl, words: &str) -> String {
    let mut line = format!("replgate ctl {words}");
    if let Some(api) = &ctl.api {
        line.push_str(&format!(" --api {}", shell_word(api)));
    }
    if let Some(ca) = &ctl.cacert {
        line.push_str(&format!(" --cacert {}", shell_word(&ca.to_string_lossy())));
    }
    line
}

/// `s` as one shell word: as it is when it is plain, else in single quotes.
fn shell_word(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+=,[]".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", clean(s).replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_status() {
        let refused = |status| {
            CtlError::Refused(Refusal::parse(
                status,
                r#"{"result":[{"message":"m","code":1}]}"#.into(),
            ))
            .exit_code()
        };
        assert_eq!(refused(400), exit::REFUSED);
        assert_eq!(refused(401), exit::UNAUTHORIZED);
        assert_eq!(refused(403), exit::FORBIDDEN);
        assert_eq!(refused(404), exit::NOT_FOUND);
        assert_eq!(refused(409), exit::CONFLICT);
        assert_eq!(refused(412), exit::UNTRUSTED);
        assert_eq!(refused(429), exit::REFUSED);
        assert_eq!(refused(500), exit::REFUSED);
        assert_eq!(
            CtlError::Unreachable("x".into()).exit_code(),
            exit::UNREACHABLE
        );
        assert_eq!(
            CtlError::NotLoggedIn("x".into()).exit_code(),
            exit::UNAUTHORIZED
        );
    }
}
