//! `replgate ctl`: the admin command line. Talks to a running daemon through its HTTPS API
//! only, with one client that trusts nothing but the given CA; never opens the database
//! (the daemon holds redb's exclusive lock). This module owns the commands, their output
//! and the exit codes; the grammar is `cli::parse_ctl`'s, the reference for admins is
//! `docs/ctl.md`.
//!
//! - `client`: the typed client for the daemon's API (timeouts, no proxy, no redirects),
//! - `settings`: where the API, the CA and the token cache come from (`REPLGATE_CTL_*`),
//! - `session`: the token cache (0600, through `fsx`),
//! - `prompt`: passwords (`--password-stdin`, `REPLGATE_PASSWORD`, a prompt without echo),
//! - `table`: human tables, cleaned of terminal control characters.

mod client;
mod prompt;
mod session;
mod settings;
pub(crate) mod table;

use std::fmt;
use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::ca;
use crate::cli::{self, Ctl, CtlCommand, Trust};
use client::{Answer, Client, Refusal, Resolution, AUDIT_PAGE};
use prompt::password;
use session::CachedSession;
use settings::Settings;
use table::{cell, clean, utc};

pub use settings::{DEFAULT_API, DEFAULT_CACERTS};

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
    let ctl = match cli::parse_ctl(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "replgate ctl: {}\n  `replgate ctl help` lists the commands and options",
                e.0
            );
            return exit::USAGE;
        }
    };
    match ctl.command {
        CtlCommand::Help => {
            print_out(&format!("{}\n", cli::CTL_USAGE));
            return exit::OK;
        }
        CtlCommand::Version => {
            print_out(&format!("{}\n", cli::VERSION_LINE));
            return exit::OK;
        }
        _ => {}
    }
    match execute(&ctl) {
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

/// A secret (token, password) that prints as `…` in `Debug`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("…")
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

// ---- commands ----

/// Runs one command; returns what goes to standard output.
fn execute(ctl: &Ctl) -> Result<String, CtlError> {
    let settings = Settings::resolve(ctl)?;
    let ca_pem = settings.ca_pem()?;
    let client = Client::new(&settings.api, &ca_pem)?;
    let api = settings.api.as_str();
    // Located only by the commands that use a token: `health` works without HOME. Without
    // one, a daemon that does not answer is the news, not the missing login.
    let token = || match settings::token_file().and_then(|f| f.token(api)) {
        Err(not_logged_in @ CtlError::NotLoggedIn(_)) => Err(match client.health() {
            Err(unreachable @ CtlError::Unreachable(_)) => unreachable,
            _ => not_logged_in,
        }),
        other => other,
    };
    // The daemon's JSON as it came with --json, else `human` of it.
    let show = |answer: Answer, human: &dyn Fn(&Value) -> String| {
        if ctl.json {
            with_newline(&answer.text)
        } else {
            human(&answer.json)
        }
    };
    Ok(match &ctl.command {
        CtlCommand::Help => format!("{}\n", cli::CTL_USAGE),
        CtlCommand::Version => format!("{}\n", cli::VERSION_LINE),
        CtlCommand::Login {
            user,
            password: from,
        } => {
            let tokens = settings::token_file()?;
            let pw = password(*from, &format!("password for {user} at {api}: "), false)?;
            let a = client.login(user, &pw)?;
            let token = a.json["auth_token"]
                .as_str()
                .ok_or_else(|| CtlError::Malformed("login answer without auth_token".into()))?;
            let session = CachedSession {
                api: api.to_string(),
                user: user.clone(),
                privilege: a.json["privilege"].as_str().unwrap_or("").to_string(),
                expires: a.json["expires"].as_i64().unwrap_or(0),
                token: Secret(token.to_string()),
            };
            let out = if ctl.json {
                // The token is a secret: it goes to the cache, never to the screen.
                let mut v = a.json.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("auth_token");
                }
                format!("{v}\n")
            } else {
                format!(
                    "logged in to {api} as {} ({}); the token is cached in {}\n\
                     it lapses when unused for the daemon's session_idle (1 h by default) and at {} UTC at the latest\n",
                    clean(user),
                    clean(&session.privilege),
                    tokens.path.display(),
                    utc(session.expires)
                )
            };
            tokens.remember(session)?;
            out
        }
        CtlCommand::Logout => {
            // Forget the token locally whatever the daemon says; then tell the daemon.
            let Some(session) = settings::token_file()?.forget(api)? else {
                return Ok(format!("not logged in to {api}\n"));
            };
            match client.logout(&session.token) {
                Ok(a) => show(a, &|_| format!("logged out of {api}\n")),
                // An expired session is already over.
                Err(CtlError::Refused(r)) if r.status == 401 => {
                    format!("logged out of {api} (the session had already expired)\n")
                }
                Err(e) => return Err(e),
            }
        }
        CtlCommand::Health => {
            let a = client.health()?;
            let fingerprint = std::str::from_utf8(&ca_pem)
                .ok()
                .and_then(|pem| ca::cert_pem_to_der(pem).ok())
                .map(|der| ca::sha256_hex(&der))
                .unwrap_or_else(|| "-".into());
            show(a, &|v| {
                format!(
                    "status:  {}\nversion: {}\napi:     {api}\nCA fingerprint (SHA-256): {fingerprint}\n",
                    cell(&v["status"]),
                    cell(&v["version"])
                )
            })
        }
        CtlCommand::Pending { include_rejected } => {
            let a = client.pending(&token()?, *include_rejected)?;
            show(a, &|v| table::pending_table(v, *include_rejected))
        }
        CtlCommand::Accept {
            request_id,
            storage_id,
        } => {
            let how = Resolution::Accept {
                storage_id: *storage_id,
            };
            let a = client.resolve(&token()?, *request_id, how)?;
            show(a, &|v| {
                format!(
                    "accepted request {request_id}: system {} ({})\n",
                    cell(&v["system_id"]),
                    cell(&v["status"])
                )
            })
        }
        CtlCommand::Reject {
            request_id,
            message,
        } => {
            let how = Resolution::Reject { message };
            let a = client.resolve(&token()?, *request_id, how)?;
            show(a, &|v| {
                format!("request {request_id}: {}\n", cell(&v["status"]))
            })
        }
        CtlCommand::Ignore { request_id } => {
            let a = client.ignore(&token()?, *request_id)?;
            show(a, &|_| format!("ignored request {request_id}\n"))
        }
        CtlCommand::IgnoreFrom { remote_addr } => {
            let a = client.ignore_from(&token()?, remote_addr)?;
            show(a, &|v| {
                format!(
                    "ignored {} open requests from {}\n",
                    cell(&v["ignored"]),
                    cell(&v["remote_addr"])
                )
            })
        }
        CtlCommand::TokenCreate(options) => {
            let a = client.create_token(&token()?, options)?;
            show(a, &|v| {
                format!(
                    "pairing token {} created: {} use(s), expires {} UTC\n\
                     token (shown once, keep it secret):\n  {}\n\
                     join line, for `replgate ctl request-target --join LINE` on the source:\n  {}\n",
                    cell(&v["token_id"]),
                    cell(&v["uses"]),
                    utc(v["expires"].as_i64().unwrap_or(0)),
                    cell(&v["token"]),
                    cell(&v["join"])
                )
            })
        }
        CtlCommand::TokenList => show(client.tokens(&token()?)?, &table::tokens_table),
        CtlCommand::TokenRevoke { token_id } => {
            let a = client.revoke_token(&token()?, token_id)?;
            show(a, &|v| {
                format!(
                    "revoked pairing token {} (used {} of {}); sources paired with it stay paired\n",
                    cell(&v["token_id"]),
                    cell(&v["used"]),
                    cell(&v["uses"])
                )
            })
        }
        CtlCommand::Unpair { system_id } => {
            let token = token()?;
            let a = client
                .unpair(&token, *system_id)
                .map_err(|e| explain_unpair(&client, &token, *system_id, e))?;
            show(a, &|_| {
                format!("unpaired system {system_id}: its certificate is revoked\n")
            })
        }
        CtlCommand::Systems => show(client.systems(&token()?)?, &table::systems_table),
        CtlCommand::Storage => show(client.storage(&token()?)?, &table::storage_table),
        CtlCommand::RequestTarget {
            target,
            trust,
            token: pairing_token,
        } => {
            let a = client.request_target(&token()?, target, trust, pairing_token.as_ref())?;
            let next = match pairing_token {
                Some(_) => "  the pairing token lets the target accept at once; follow it with `replgate ctl targets`\n",
                None => "  the target's admin must see the same code in `replgate ctl pending` before accepting\n",
            };
            show(a, &|v| {
                format!(
                    "asked {} for replication: target {}, request {}, {}\n\
                     verification code: {}\n{next}",
                    clean(target),
                    cell(&v["target_id"]),
                    cell(&v["request_id"]),
                    cell(&v["status"]),
                    cell(&v["verification_code"])
                )
            })
        }
        CtlCommand::Targets => show(client.targets(&token()?)?, &table::targets_table),
        CtlCommand::Queue {
            target_id,
            include_done,
        } => show(
            client.queue(&token()?, *target_id, *include_done)?,
            &table::queue_table,
        ),
        CtlCommand::QueueAdd { target_id, backup } => {
            let a = client.queue_add(&token()?, *target_id, backup)?;
            show(a, &|v| {
                format!(
                    "queued {} for target {} as item {} (at the end of the queue)\n",
                    cell(&v["backup"]),
                    cell(&v["target_id"]),
                    cell(&v["id"])
                )
            })
        }
        CtlCommand::QueueChange {
            ids,
            clients,
            reset,
        } => {
            let a = client.queue_change(&token()?, ids, clients, *reset)?;
            show(a, &|v| {
                let items = table::rows(v, "items");
                let what = if *reset {
                    "reset (queued again at the end)"
                } else {
                    "removed"
                };
                let ids: Vec<String> = items.iter().map(|i| cell(&i["id"])).collect();
                match ids.len() {
                    0 => "no open item matched\n".to_string(),
                    _ => format!("{what}: items {}\n", ids.join(", ")),
                }
            })
        }
        CtlCommand::ReplicationConfig {
            max_concurrent,
            strategy,
            retries,
        } => {
            let mut changes = serde_json::Map::new();
            if let Some(n) = max_concurrent {
                changes.insert("max_concurrent".into(), (*n).into());
            }
            if let Some(s) = strategy {
                changes.insert("strategy".into(), s.clone().into());
            }
            if let Some(n) = retries {
                changes.insert("retries".into(), (*n).into());
            }
            let changes = (!changes.is_empty()).then_some(Value::Object(changes));
            show(
                client.replication_config(&token()?, changes.as_ref())?,
                &table::config_text,
            )
        }
        CtlCommand::Throttle { link_mbps, windows } => {
            let mut changes = serde_json::Map::new();
            if let Some(n) = link_mbps {
                changes.insert("link_mbps".into(), (*n).into());
            }
            if let Some(ws) = windows {
                let list: Vec<Value> = ws
                    .iter()
                    .map(|w| {
                        serde_json::json!({"percentage": w.percentage, "days": w.days,
                                           "start": w.start, "end": w.end})
                    })
                    .collect();
                changes.insert("throttle".into(), Value::Array(list));
            }
            let changes = (!changes.is_empty()).then_some(Value::Object(changes));
            show(
                client.throttle(&token()?, changes.as_ref())?,
                &table::throttle_table,
            )
        }
        CtlCommand::Received { system_id } => show(
            client.received(&token()?, *system_id)?,
            &table::received_table,
        ),
        CtlCommand::Verify { system_id } => {
            let a = client.verify(&token()?, *system_id)?;
            show(a, &|v| {
                format!(
                    "verifying what system {system_id} delivered ({} copies); \
                     follow it with `replgate ctl received {system_id}`\n",
                    cell(&v["verify"]["total"])
                )
            })
        }
        CtlCommand::ForgetTarget { host } => {
            let a = client.forget_target(&token()?, host)?;
            show(a, &|v| format!("forgot target {}\n", cell(&v["host"])))
        }
        CtlCommand::Users => show(client.users(&token()?)?, &table::users_table),
        CtlCommand::UserAdd {
            name,
            privilege,
            password: from,
        } => {
            let token = token()?;
            let pw = password(*from, &format!("password for the new user {name}: "), true)?;
            let a = client.add_user(&token, name, *privilege, &pw)?;
            show(a, &|v| user_line("added", v))
        }
        CtlCommand::UserSet {
            name,
            privilege,
            password: from,
        } => {
            let token = token()?;
            let pw = match from {
                Some(from) => Some(password(
                    *from,
                    &format!("new password for {name}: "),
                    true,
                )?),
                None => None,
            };
            let a = client.set_user(&token, name, *privilege, pw.as_ref())?;
            show(a, &|v| user_line("updated", v))
        }
        CtlCommand::UserRemove { name } => {
            let a = client.remove_user(&token()?, name)?;
            show(a, &|v| format!("removed user {}\n", cell(&v["name"])))
        }
        CtlCommand::MetricsToken { name } => {
            let a = client.metrics_token(&token()?, name.as_deref())?;
            let api_host = api.trim_start_matches("https://");
            show(a, &|v| {
                format!(
                    "a scraper token (privilege monitor, no expiry) for user {}; it is shown only now:\n\
                     {}\n\
                     end it with `curl --cacert CA -X POST -H \"AuthToken: <token>\" {api}/api/logout`.\n\
                     A Prometheus scrape job for it:\n\
                     \x20 - job_name: replgate\n\
                     \x20   scheme: https\n\
                     \x20   metrics_path: /api/metrics\n\
                     \x20   authorization: {{credentials_file: /etc/prometheus/replgate.token}}\n\
                     \x20   tls_config: {{ca_file: /etc/prometheus/replgate-ca.pem}}\n\
                     \x20   static_configs: [{{targets: ['{api_host}']}}]\n",
                    cell(&v["user"]),
                    cell(&v["token"]),
                )
            })
        }
        CtlCommand::Audit { limit } => {
            let rows = latest_audit(&client, &token()?, *limit)?;
            if ctl.json {
                format!("{}\n", json!({ "audit": rows }))
            } else {
                table::audit_table(&rows)
            }
        }
    })
}

/// A 404 for this appliance's own row says so: it is listed by `systems` but is nobody's
/// pairing.
fn explain_unpair(client: &Client, token: &Secret, system_id: u64, e: CtlError) -> CtlError {
    let CtlError::Refused(r) = &e else {
        return e;
    };
    let local = r.status == 404
        && client.systems(token).is_ok_and(|a| {
            table::rows(&a.json, "appliance")
                .iter()
                .any(|s| s["id"] == system_id && s["local"] == true)
        });
    if !local {
        return e;
    }
    CtlError::Refused(Refusal {
        message: format!(
            "system {system_id} is this appliance itself, not a paired system; nothing to unpair"
        ),
        ..Refusal::parse(r.status, r.body.clone())
    })
}

/// `added user ops (manage)`: what `users add` and `users set` print.
fn user_line(verb: &str, v: &Value) -> String {
    format!(
        "{verb} user {} ({})\n",
        cell(&v["name"]),
        cell(&v["privilege"])
    )
}

/// The latest `limit` audit rows, oldest first. The daemon pages forward from the oldest,
/// so this reads every page and keeps the tail.
fn latest_audit(client: &Client, token: &Secret, limit: u64) -> Result<Vec<Value>, CtlError> {
    let mut rows: std::collections::VecDeque<Value> = Default::default();
    let mut after = 0u64;
    loop {
        let a = client.audit_page(token, after)?;
        let page = a.json["audit"]
            .as_array()
            .ok_or_else(|| CtlError::Malformed("audit answer without `audit`".into()))?;
        let Some(last) = page.last() else {
            break;
        };
        let last_id = last["id"]
            .as_u64()
            .filter(|id| *id > after)
            .ok_or_else(|| {
                CtlError::Malformed("audit ids do not increase from page to page".into())
            })?;
        rows.extend(page.iter().cloned());
        while rows.len() as u64 > limit {
            rows.pop_front();
        }
        if (page.len() as u64) < AUDIT_PAGE {
            break;
        }
        after = last_id;
    }
    Ok(rows.into())
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
