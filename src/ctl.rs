//! `replgate ctl`: the admin command line. Talks to a running daemon through its HTTPS API
//! only, with one client that trusts nothing but the given CA; never opens the database
//! (the daemon holds redb's exclusive lock). Owns the token cache file, the environment
//! variables `REPLGATE_CTL_*` and `REPLGATE_PASSWORD`, the tables, and the exit codes.
//! The grammar is `cli::parse_ctl`'s; the reference for admins is `docs/ctl.md`.

use std::fmt;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cli::{self, Ctl, CtlCommand, PasswordFrom, Trust};
use crate::{ca, fsx};

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

/// Default API address: the daemon's default `api_listen`.
pub const DEFAULT_API: &str = "https://127.0.0.1:8443";
/// Default CA file: the daemon's CA under its default `data_dir`.
pub const DEFAULT_CACERT: &str = "./replgate-data/ca.pem";

/// Whole-call bound. `request-target` makes the daemon probe the target (10 s) and file
/// the request there (up to 10 s connect plus 30 s call), so this stays above 50 s.
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest answer read: a full audit page (1 000 rows) is about 300 KB.
const MAX_ANSWER_BYTES: u64 = 8 * 1024 * 1024;
/// The token cache and a CA file are a few KB.
const MAX_LOCAL_FILE_BYTES: u64 = 1024 * 1024;
/// A password line is at most this long (the daemon caps passwords lower).
const MAX_PASSWORD_LINE_BYTES: u64 = 4096;
/// The daemon's largest audit page.
const AUDIT_PAGE: u64 = 1_000;

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
    if ctl.command == CtlCommand::Help {
        print_out(&format!("{}\n", cli::CTL_USAGE));
        return exit::OK;
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
            if let Some(hint) = e.hint(&ctl.command) {
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

// ---- errors ----

/// Every way a `ctl` command fails, each with its exit code.
#[derive(Debug)]
pub enum CtlError {
    /// Bad arguments or local set-up: an unreadable CA file, no password source.
    Usage(String),
    /// The token cache could not be read or written.
    Local(String),
    /// No cached token for this daemon; nothing was sent.
    NotLoggedIn(String),
    /// The daemon answered with an error status.
    Refused(Refusal),
    /// The daemon could not be reached, or the TLS handshake failed.
    Unreachable(String),
    /// The daemon's answer is not what the API documents.
    Malformed(String),
}

/// A documented error answer: `{"result":[{"message","code","kb"}]}`.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// `result[0].message`, or an excerpt of an undocumented body.
    pub message: String,
    /// `result[0].fingerprint` of a 412: the CA the target presented.
    pub fingerprint: Option<String>,
    /// The body as it came, for `--json`.
    pub body: String,
}

impl Refusal {
    fn parse(status: u16, body: String) -> Refusal {
        let first = serde_json::from_str::<Value>(&body)
            .ok()
            .map(|v| v["result"][0].clone())
            .unwrap_or(Value::Null);
        let message = match first["message"].as_str() {
            Some(m) => m.to_string(),
            None => format!(
                "HTTP {status}: {}",
                clean(&body.chars().take(200).collect::<String>())
            ),
        };
        Refusal {
            status,
            message,
            fingerprint: first["fingerprint"].as_str().map(String::from),
            body,
        }
    }
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

    /// Extra lines for stderr: what to do next.
    fn hint(&self, command: &CtlCommand) -> Option<String> {
        let CtlError::Refused(r) = self else {
            return None;
        };
        match (r.status, command) {
            (401, CtlCommand::Login { .. }) => None,
            (401, _) => Some("  log in again with `replgate ctl login`".into()),
            (412, CtlCommand::RequestTarget { target, .. }) => {
                let fp = r.fingerprint.as_deref().unwrap_or("?");
                Some(format!(
                    "  presented CA fingerprint (SHA-256): {fp}\n  \
                     compare it with the target's own (`replgate ctl health` on the target), then retry:\n    \
                     replgate ctl request-target {target} --fingerprint {fp}"
                ))
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

// ---- the client ----

/// A secret that prints as `…` in `Debug`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("…")
    }
}

#[derive(Clone, Copy, Debug)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// The one client for the daemon's admin API, built once per invocation.
struct Client {
    agent: ureq::Agent,
    /// `https://host:port`, no trailing slash.
    base: String,
}

/// A 2xx answer: the body as it came, and parsed.
struct Answer {
    text: String,
    json: Value,
}

fn with_token<B>(rb: ureq::RequestBuilder<B>, token: Option<&Secret>) -> ureq::RequestBuilder<B> {
    match token {
        Some(t) => rb.header("AuthToken", t.0.as_str()),
        None => rb,
    }
}

fn is_tls_failure(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Tls(_)) || crate::remote::tls_error(e).is_some()
}

impl Client {
    fn new(base: &str, ca_pem: &[u8]) -> Result<Client, CtlError> {
        let text = String::from_utf8_lossy(ca_pem);
        let ca = crate::ca::cert_pem_to_der(&text)
            .map_err(|e| CtlError::Usage(format!("the CA file holds no certificate: {e}")))?;
        // Only the daemon's own CA: its API certificate is issued by it, never by a public
        // CA, and no other certificate may stand in for it.
        let agent = crate::remote::pinned_agent(
            ca.into(),
            None,
            CALL_TIMEOUT,
            concat!("replgate-ctl/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| CtlError::Usage(format!("the CA file: {e}")))?;
        Ok(Client {
            agent,
            base: base.to_string(),
        })
    }

    fn classify(&self, e: ureq::Error) -> CtlError {
        match e {
            ureq::Error::BadUri(m) => CtlError::Usage(format!("--api {}: {m}", self.base)),
            ureq::Error::BodyExceedsLimit(n) => {
                CtlError::Malformed(format!("answer larger than {n} bytes"))
            }
            e if is_tls_failure(&e) => CtlError::Unreachable(format!(
                "TLS with {} failed: {e} (is --cacert the CA of this daemon?)",
                self.base
            )),
            ureq::Error::Io(io) => {
                CtlError::Unreachable(format!("cannot reach the daemon at {}: {io}", self.base))
            }
            e => CtlError::Unreachable(format!("cannot reach the daemon at {}: {e}", self.base)),
        }
    }

    /// One call; a non-2xx answer is a [`CtlError::Refused`].
    fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        let url = format!("{}{path}", self.base);
        let json_body = body.map(Value::to_string);
        let sent = match method {
            Method::Get => with_token(self.agent.get(&url), token).call(),
            Method::Delete => with_token(self.agent.delete(&url), token).call(),
            Method::Post | Method::Put => {
                let rb = match method {
                    Method::Post => self.agent.post(&url),
                    _ => self.agent.put(&url),
                };
                let rb = with_token(rb, token).header("Content-Type", "application/json");
                match json_body {
                    Some(b) => rb.send(b),
                    None => rb.send_empty(),
                }
            }
        };
        let mut response = sent.map_err(|e| self.classify(e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| self.classify(e))?;
        if !(200..300).contains(&status) {
            return Err(CtlError::Refused(Refusal::parse(status, text)));
        }
        let json = serde_json::from_str(&text)
            .map_err(|e| CtlError::Malformed(format!("{method:?} {path}: {e}")))?;
        Ok(Answer { text, json })
    }
}

/// Percent-encodes one path segment (a host name with a port, a user name).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- settings and the token cache ----

/// Where the API is and whom to trust, resolved from flags, environment and defaults.
struct Settings {
    api: String,
    cacert: PathBuf,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Checks `given` is `https://HOST[:PORT]` and returns it without a trailing slash.
fn api_base(given: &str) -> Result<String, CtlError> {
    let trimmed = given.trim().trim_end_matches('/');
    let bad = || {
        CtlError::Usage(format!(
            "--api {given:?} is not https://HOST:PORT (the API is HTTPS only)"
        ))
    };
    let rest = trimmed.strip_prefix("https://").ok_or_else(bad)?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    Ok(format!("https://{rest}"))
}

impl Settings {
    /// Flags win over `REPLGATE_CTL_API`/`REPLGATE_CTL_CACERT`, which win over defaults.
    fn resolve(ctl: &Ctl) -> Result<Settings, CtlError> {
        let api = ctl
            .api
            .clone()
            .or_else(|| env_nonempty("REPLGATE_CTL_API"))
            .unwrap_or_else(|| DEFAULT_API.into());
        let cacert = ctl
            .cacert
            .clone()
            .or_else(|| env_nonempty("REPLGATE_CTL_CACERT").map(PathBuf::from))
            .unwrap_or_else(|| DEFAULT_CACERT.into());
        Ok(Settings {
            api: api_base(&api)?,
            cacert,
        })
    }

    fn ca_pem(&self) -> Result<Vec<u8>, CtlError> {
        let bytes = read_small(&self.cacert).map_err(|e| {
            CtlError::Usage(format!(
                "read the CA file {}: {e} (give --cacert or REPLGATE_CTL_CACERT)",
                self.cacert.display()
            ))
        })?;
        Ok(bytes)
    }
}

fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_LOCAL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_LOCAL_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "file larger than 1 MiB",
        ));
    }
    Ok(bytes)
}

/// One cached login, keyed by the API it was issued by: a token is never sent to any
/// other daemon.
#[derive(Debug, Serialize, Deserialize)]
struct CachedSession {
    api: String,
    user: String,
    privilege: String,
    /// The absolute expiry the daemon announced (unix seconds); idle expiry may come first.
    expires: i64,
    token: Secret,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenCache {
    sessions: Vec<CachedSession>,
}

/// The token cache file (mode 0600, written through `fsx`).
struct TokenFile {
    path: PathBuf,
    /// True for the default locations, whose `replgate` directory ctl owns and keeps 0700;
    /// a directory named by `REPLGATE_CTL_TOKEN_FILE` is created if missing, never chmod-ed.
    owns_dir: bool,
}

impl TokenFile {
    /// `REPLGATE_CTL_TOKEN_FILE`, else `$XDG_RUNTIME_DIR/replgate/token`, else
    /// `$HOME/.cache/replgate/token`.
    fn locate() -> Result<TokenFile, CtlError> {
        if let Some(p) = env_nonempty("REPLGATE_CTL_TOKEN_FILE") {
            return Ok(TokenFile {
                path: p.into(),
                owns_dir: false,
            });
        }
        let absolute = |v: String| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
        let dir = match env_nonempty("XDG_RUNTIME_DIR").and_then(absolute) {
            Some(runtime) => runtime.join("replgate"),
            None => env_nonempty("HOME")
                .and_then(absolute)
                .map(|home| home.join(".cache").join("replgate"))
                .ok_or_else(|| {
                    CtlError::Local(
                        "no place for the token cache: set REPLGATE_CTL_TOKEN_FILE, XDG_RUNTIME_DIR or HOME"
                            .into(),
                    )
                })?,
        };
        Ok(TokenFile {
            path: dir.join("token"),
            owns_dir: true,
        })
    }

    fn load(&self) -> Result<TokenCache, CtlError> {
        match fsx::read_regular_nofollow(&self.path, MAX_LOCAL_FILE_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                CtlError::Local(format!(
                    "token file {} does not parse ({e}); remove it and log in again",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(TokenCache::default()),
            Err(e) => Err(CtlError::Local(format!(
                "read token file {}: {e}",
                self.path.display()
            ))),
        }
    }

    fn save(&self, cache: &TokenCache) -> Result<(), CtlError> {
        let local = |e: io::Error| {
            CtlError::Local(format!("write token file {}: {e}", self.path.display()))
        };
        if cache.sessions.is_empty() {
            return fsx::remove_file_durable(&self.path).map_err(local);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if self.owns_dir || !dir.exists() {
                fsx::ensure_private_dir(dir).map_err(local)?;
            }
        }
        let bytes = serde_json::to_vec_pretty(cache).map_err(|e| local(io::Error::other(e)))?;
        fsx::write_atomic(&self.path, &bytes).map_err(local)
    }

    /// The cached token for `api`.
    fn token(&self, api: &str) -> Result<Secret, CtlError> {
        self.load()?
            .sessions
            .into_iter()
            .find(|s| s.api == api)
            .map(|s| s.token)
            .ok_or_else(|| {
                CtlError::NotLoggedIn(format!(
                    "not logged in to {api}; run `replgate ctl login` first"
                ))
            })
    }
}

// ---- passwords ----

fn strip_newline(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

fn read_stdin_line() -> Result<String, CtlError> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .take(MAX_PASSWORD_LINE_BYTES)
        .read_line(&mut line)
        .map_err(|e| CtlError::Usage(format!("read the password from standard input: {e}")))?;
    Ok(strip_newline(line))
}

/// Reads a line from the terminal on standard input with echo off (the newline is echoed).
fn prompt_hidden(prompt: &str) -> io::Result<String> {
    let mut err = io::stderr();
    err.write_all(prompt.as_bytes())?;
    err.flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: `termios` is plain data, fully written by a successful `tcgetattr`.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (standard input) and `term` is a valid, writable termios.
    if unsafe { libc::tcgetattr(fd, &mut term) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let saved = term;
    term.c_lflag &= !libc::ECHO;
    term.c_lflag |= libc::ECHONL;
    // SAFETY: as above; `term` came from `tcgetattr` with two local-mode bits changed.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut line = String::new();
    let read = io::stdin()
        .lock()
        .take(MAX_PASSWORD_LINE_BYTES)
        .read_line(&mut line);
    // SAFETY: restores the settings read above on the same descriptor.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    read?;
    Ok(strip_newline(line))
}

/// A password from `from`. `confirm` asks twice at a prompt (for a new password).
fn password(from: PasswordFrom, prompt: &str, confirm: bool) -> Result<Secret, CtlError> {
    let p = match from {
        PasswordFrom::Stdin => read_stdin_line()?,
        PasswordFrom::EnvOrPrompt => match env_nonempty("REPLGATE_PASSWORD") {
            Some(p) => p,
            None if io::stdin().is_terminal() => {
                let prompt_err = |e: io::Error| CtlError::Usage(format!("read the password: {e}"));
                let first = prompt_hidden(prompt).map_err(prompt_err)?;
                if confirm && prompt_hidden("again: ").map_err(prompt_err)? != first {
                    return Err(CtlError::Usage("the two passwords differ".into()));
                }
                first
            }
            None => return Err(CtlError::Usage(
                "no password: give --password-stdin, set REPLGATE_PASSWORD, or run on a terminal"
                    .into(),
            )),
        },
    };
    if p.is_empty() {
        return Err(CtlError::Usage("the password is empty".into()));
    }
    Ok(Secret(p))
}

// ---- commands ----

/// Runs one command; returns what goes to standard output.
fn execute(ctl: &Ctl) -> Result<String, CtlError> {
    let settings = Settings::resolve(ctl)?;
    let ca_pem = settings.ca_pem()?;
    let client = Client::new(&settings.api, &ca_pem)?;
    let api = settings.api.as_str();
    // Located only by the commands that use a token: `health` works without HOME.
    let token = || TokenFile::locate()?.token(api);
    // The daemon's JSON as it came with --json, else `human` of it.
    let show = |answer: Answer, human: &dyn Fn(&Value) -> String| {
        if ctl.json {
            with_newline(&answer.text)
        } else {
            human(&answer.json)
        }
    };
    use Method::*;
    Ok(match &ctl.command {
        CtlCommand::Help => format!("{}\n", cli::CTL_USAGE),
        CtlCommand::Login {
            user,
            password: from,
        } => {
            let tokens = TokenFile::locate()?;
            let pw = password(*from, &format!("password for {user} at {api}: "), false)?;
            let body = json!({ "username": user, "password": pw.0 });
            let a = client.call(Post, "/api/login", None, Some(&body))?;
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
            let mut cache = tokens.load().unwrap_or_else(|e| {
                eprintln!("replgate ctl: {e}; replacing it");
                TokenCache::default()
            });
            cache.sessions.retain(|s| s.api != api);
            let out = if ctl.json {
                // The token is a secret: it goes to the cache, never to the screen.
                let mut v = a.json.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("auth_token");
                }
                format!("{v}\n")
            } else {
                format!(
                    "logged in to {api} as {} ({}); the token is cached in {} and expires by {} UTC\n",
                    clean(user),
                    clean(&session.privilege),
                    tokens.path.display(),
                    utc(session.expires)
                )
            };
            cache.sessions.push(session);
            tokens.save(&cache)?;
            out
        }
        CtlCommand::Logout => {
            let tokens = TokenFile::locate()?;
            let mut cache = tokens.load()?;
            let Some(i) = cache.sessions.iter().position(|s| s.api == api) else {
                return Ok(format!("not logged in to {api}\n"));
            };
            let session = cache.sessions.remove(i);
            // Forget the token locally whatever the daemon says; then tell the daemon.
            tokens.save(&cache)?;
            match client.call(Post, "/api/logout", Some(&session.token), None) {
                Ok(a) => show(a, &|_| format!("logged out of {api}\n")),
                // An expired session is already over.
                Err(CtlError::Refused(r)) if r.status == 401 => {
                    format!("logged out of {api} (the session had already expired)\n")
                }
                Err(e) => return Err(e),
            }
        }
        CtlCommand::Health => {
            let a = client.call(Get, "/api/health", None, None)?;
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
            let path = if *include_rejected {
                "/api/replication/pending?include_rejected=1"
            } else {
                "/api/replication/pending"
            };
            let a = client.call(Get, path, Some(&token()?), None)?;
            show(a, &|v| pending_table(v, *include_rejected))
        }
        CtlCommand::Accept {
            request_id,
            storage_id,
        } => {
            let mut body = json!({ "request_id": request_id, "accept": true });
            if let Some(s) = storage_id {
                body["storage_id"] = json!(s);
            }
            let a = client.call(
                Post,
                "/api/replication/source",
                Some(&token()?),
                Some(&body),
            )?;
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
            let body = json!({ "request_id": request_id, "accept": false, "message": message });
            let a = client.call(
                Post,
                "/api/replication/source",
                Some(&token()?),
                Some(&body),
            )?;
            show(a, &|v| {
                format!("request {request_id}: {}\n", cell(&v["status"]))
            })
        }
        CtlCommand::Ignore { request_id } => {
            let path = format!("/api/replication/pending/{request_id}");
            let a = client.call(Delete, &path, Some(&token()?), None)?;
            show(a, &|_| format!("ignored request {request_id}\n"))
        }
        CtlCommand::Unpair { system_id } => {
            let path = format!("/api/replication/source?sid={system_id}");
            let a = client.call(Delete, &path, Some(&token()?), None)?;
            show(a, &|_| {
                format!("unpaired system {system_id}: its certificate is revoked\n")
            })
        }
        CtlCommand::Systems => {
            let a = client.call(Get, "/api/systems", Some(&token()?), None)?;
            show(a, &systems_table)
        }
        CtlCommand::Storage => {
            let a = client.call(Get, "/api/storage", Some(&token()?), None)?;
            show(a, &storage_table)
        }
        CtlCommand::RequestTarget { target, trust } => {
            let mut body = json!({ "type": "appliance", "target": target });
            match trust {
                Trust::Pinned => {}
                Trust::Fingerprint(f) => body["fingerprint"] = json!(f),
                Trust::Insecure => body["insecure"] = json!(1),
            }
            let a = client.call(
                Post,
                "/api/replication/target",
                Some(&token()?),
                Some(&body),
            )?;
            show(a, &|v| {
                format!(
                    "asked {} for replication: target {}, request {}, {}\n\
                     verification code: {}\n  \
                     the target's admin must see the same code in `replgate ctl pending` before accepting\n",
                    clean(target),
                    cell(&v["target_id"]),
                    cell(&v["request_id"]),
                    cell(&v["status"]),
                    cell(&v["verification_code"])
                )
            })
        }
        CtlCommand::Targets => {
            let a = client.call(Get, "/api/replication/targets", Some(&token()?), None)?;
            show(a, &targets_table)
        }
        CtlCommand::ForgetTarget { host } => {
            let path = format!("/api/replication/target/{}", segment(host));
            let a = client.call(Delete, &path, Some(&token()?), None)?;
            show(a, &|v| format!("forgot target {}\n", cell(&v["host"])))
        }
        CtlCommand::Users => {
            let a = client.call(Get, "/api/users", Some(&token()?), None)?;
            show(a, &users_table)
        }
        CtlCommand::UserAdd {
            name,
            privilege,
            password: from,
        } => {
            let token = token()?;
            let pw = password(*from, &format!("password for the new user {name}: "), true)?;
            let body = json!({ "name": name, "privilege": privilege, "password": pw.0 });
            let a = client.call(Post, "/api/users", Some(&token), Some(&body))?;
            show(a, &|v| {
                format!(
                    "added user {} ({})\n",
                    cell(&v["name"]),
                    cell(&v["privilege"])
                )
            })
        }
        CtlCommand::UserSet {
            name,
            privilege,
            password: from,
        } => {
            let token = token()?;
            let mut body = json!({});
            if let Some(p) = privilege {
                body["privilege"] = json!(p);
            }
            if let Some(from) = from {
                let pw = password(*from, &format!("new password for {name}: "), true)?;
                body["password"] = json!(pw.0);
            }
            let path = format!("/api/users/{}", segment(name));
            let a = client.call(Put, &path, Some(&token), Some(&body))?;
            show(a, &|v| {
                format!(
                    "updated user {} ({})\n",
                    cell(&v["name"]),
                    cell(&v["privilege"])
                )
            })
        }
        CtlCommand::UserRemove { name } => {
            let path = format!("/api/users/{}", segment(name));
            let a = client.call(Delete, &path, Some(&token()?), None)?;
            show(a, &|v| format!("removed user {}\n", cell(&v["name"])))
        }
        CtlCommand::Audit { limit } => {
            let rows = latest_audit(&client, &token()?, *limit)?;
            if ctl.json {
                format!("{}\n", json!({ "audit": rows }))
            } else {
                audit_table(&rows)
            }
        }
    })
}

/// The latest `limit` audit rows, oldest first. The daemon pages forward from the oldest,
/// so this reads every page and keeps the tail.
fn latest_audit(client: &Client, token: &Secret, limit: u64) -> Result<Vec<Value>, CtlError> {
    let mut rows: std::collections::VecDeque<Value> = Default::default();
    let mut after = 0u64;
    loop {
        let path = format!("/api/audit?after={after}&limit={AUDIT_PAGE}");
        let a = client.call(Method::Get, &path, Some(token), None)?;
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

// ---- tables ----

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
    match time::OffsetDateTime::from_unix_timestamp(t) {
        Ok(d) if t > 0 => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        _ => "-".into(),
    }
}

fn time_cell(v: &Value) -> String {
    v.as_i64().map(utc).unwrap_or_else(|| "-".into())
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

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn table_or(empty: &str, headers: &[&str], rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        format!("{empty}\n")
    } else {
        table(headers, &rows)
    }
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
    let headers: Vec<&str> = cols.iter().map(Col::header).collect();
    let rows = items
        .iter()
        .map(|item| cols.iter().map(|c| c.cell(item)).collect())
        .collect();
    table_or(empty, &headers, rows)
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
    listing(list(v, "pending"), "no pending requests", &cols)
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
    listing(list(v, "appliance"), "no systems", &cols)
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
    listing(list(v, "storage"), "no storage", &cols)
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
    listing(list(v, "targets"), "no targets", &cols)
}

pub fn users_table(v: &Value) -> String {
    use Col::*;
    let cols = [
        Text("NAME", "name"),
        Text("PRIVILEGE", "privilege"),
        Time("CREATED", "created"),
        Time("UPDATED", "updated"),
    ];
    listing(list(v, "users"), "no users", &cols)
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

    #[test]
    fn refusals_carry_the_daemons_message_and_fingerprint() {
        let r = Refusal::parse(
            412,
            r#"{"result":[{"message":"not trusted","code":12505,"fingerprint":"ab"}]}"#.into(),
        );
        assert_eq!(r.message, "not trusted");
        assert_eq!(r.fingerprint.as_deref(), Some("ab"));
        let odd = Refusal::parse(502, "<html>bad gateway</html>".into());
        assert_eq!(odd.message, "HTTP 502: <html>bad gateway</html>");
    }

    #[test]
    fn api_urls_are_https_without_a_path() {
        assert_eq!(api_base("https://h:1/").unwrap(), "https://h:1");
        assert_eq!(
            api_base("https://[::1]:8443").unwrap(),
            "https://[::1]:8443"
        );
        assert!(api_base("http://h:1").is_err());
        assert!(api_base("h:1").is_err());
        assert!(api_base("https://h:1/api").is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("10.0.0.2:8443"), "10.0.0.2%3A8443");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("ops-1_x.y~"), "ops-1_x.y~");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = CachedSession {
            api: "https://h:1".into(),
            user: "root".into(),
            privilege: "superuser".into(),
            expires: 1,
            token: Secret("deadbeef".into()),
        };
        assert!(!format!("{s:?}").contains("deadbeef"));
    }
}
