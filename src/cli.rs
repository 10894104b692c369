//! The command-line grammar only: turns arguments into a [`Command`]. Reads no files,
//! environment or network.

use std::fmt;
use std::path::PathBuf;

use crate::model::Privilege;
use crate::wire::token::{JoinLine, PairingToken};

pub const USAGE: &str = "\
usage:
  replgate serve [--config FILE]   run the daemon (embedded defaults without a config file)
  replgate check-config [--config FILE]
                                   validate the configuration and print it
  replgate ctl [--api URL] [--cacert FILE] [--json] COMMAND ...
                                   administer a running daemon through its API
                                   (`replgate ctl help` lists the commands)
  replgate --version               print the version
  replgate help                    print this text

configuration: --config FILE, else /etc/replgate/replgate.toml when present, else defaults;
REPLGATE_<KEY> environment variables override single keys";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve {
        config: Option<PathBuf>,
    },
    CheckConfig {
        config: Option<PathBuf>,
    },
    Version,
    Help,
    /// `replgate ctl ...`: the words after `ctl`, parsed by [`parse_ctl`] inside
    /// `ctl::run` so that its usage errors print as `replgate ctl: ...` with its own usage.
    Ctl(Vec<String>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}

impl std::error::Error for UsageError {}

fn config_option(rest: &[String]) -> Result<Option<PathBuf>, UsageError> {
    let mut config = None;
    let mut it = rest.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let v = it
                    .next()
                    .ok_or_else(|| UsageError("--config needs a file name".into()))?;
                config = Some(PathBuf::from(v));
            }
            s if s.starts_with("--config=") => {
                config = Some(PathBuf::from(&s["--config=".len()..]))
            }
            other => return Err(UsageError(format!("unexpected argument {other:?}"))),
        }
    }
    Ok(config)
}

fn is_help(arg: &str) -> bool {
    matches!(arg, "-h" | "--help" | "help")
}

/// What `--version` prints, for the daemon and ctl alike: the version and the commit it
/// was built from (`build.rs`).
pub const VERSION_LINE: &str = concat!(
    "replgate ",
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("REPLGATE_COMMIT"),
    ")"
);

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some(first) = args.first() else {
        return Ok(Command::Help);
    };
    match first.as_str() {
        "serve" | "check-config" if args[1..].iter().any(|a| is_help(a)) => Ok(Command::Help),
        "serve" => Ok(Command::Serve {
            config: config_option(&args[1..])?,
        }),
        "check-config" => Ok(Command::CheckConfig {
            config: config_option(&args[1..])?,
        }),
        "ctl" => Ok(Command::Ctl(args[1..].to_vec())),
        "--version" | "-V" | "version" => Ok(Command::Version),
        "help" | "--help" | "-h" => Ok(Command::Help),
        other => Err(UsageError(format!("unknown command {other:?}"))),
    }
}

// ---- replgate ctl ----

pub const CTL_USAGE: &str = "\
usage: replgate ctl [--api https://HOST:PORT] [--cacert FILE] [--json] COMMAND ...

session:
  login [--user NAME] [--password-stdin]   log in (default user root) and cache the token
  logout                                   end the session and forget the cached token
  health                                   is the daemon up; its version and CA fingerprint
target side (this appliance receives replication):
  pending [--all]                          open pairing requests (--all: rejected ones too)
  accept ID [--storage N]                  accept request ID (storage N, else the default backup storage)
  reject ID --message TEXT                 reject request ID; the source is told TEXT
  ignore ID                                drop request ID silently (the source sees it expire)
  ignore --from ADDRESS|NETWORK            drop every open request from there (192.0.2.0/24)
  unpair SID                               revoke paired system SID and remove it
  systems                                  appliances known here, pending requests included
  storage                                  storage areas
  token create [--uses N] [--expires-in D] [--storage N] [--quota-mb N]
               [--system-uuid U] [--host H] [--note TEXT] [--address HOST[:PORT]]
                                           issue a pairing token; prints it and its join line once
                                           (D: seconds, or 90m, 12h, 7d; default 7d, at most 90d)
  token list                               pairing tokens and their state (never a secret)
  token revoke ID                          revoke a token (pairings made with it stay)
source side (this appliance replicates to a target):
  request-target HOST[:PORT] [--fingerprint SHA256 | --insecure] [--token TOKEN]
                                           ask a target for replication
  request-target --join LINE               ask with the target's join line: its address,
                                           CA fingerprint and a pairing token in one
  targets                                  targets asked, and each pairing's state
  forget-target HOST[:PORT]                forget a target, its key and its certificates
  queue [--target ID] [--all]              the replication queue: active and waiting items,
                                           what sources send here now (--all: finished ones too)
  queue add TARGET_ID CLIENT/FILE          queue one backup by hand (at the end, any strategy)
  queue remove ID... | --client NAME       take items out of the queue (an active one stops)
  queue reset ID... | --client NAME        take them out and queue them again at the end
  replication-config [--max-concurrent N] [--strategy manual|retention|recency] [--retries N]
                                           show, or change, how the queue replicates
  throttle [--link-mbps N] [--window PCT:DAYS:START-END ...] [--clear]
                                           show, or set, the throttle windows (DAYS 0-6, 0 is
                                           Sunday, as 1-5 or 0,6; hours 0-23; --clear: none)
  received SID                             what source SID delivered here, and its last verify
  verify SID                               re-read every copy SID delivered and check its SHA-256
users and audit:
  users                                    list users
  users add NAME --privilege P [--password-stdin]
  users set NAME [--privilege P] [--password | --password-stdin]
  users remove NAME
  audit [--limit N]                        the latest N audit entries (default 50)
  metrics-token [--name LABEL]             a token for a Prometheus scraper (monitor, no expiry), shown once
  version                                  print the version (also --version)

options (before or after the command):
  --api URL       the daemon's API; env REPLGATE_CTL_API, default https://127.0.0.1:8443
  --cacert FILE   the CA of the daemon's API certificate; env REPLGATE_CTL_CACERT,
                  default ./replgate-data/ca.pem, else /var/lib/replgate/ca.pem
  --json          print the daemon's JSON answer as it came instead of a table
P is monitor, manage, administer or superuser. A password comes from --password-stdin (one
line), else REPLGATE_PASSWORD, else a prompt when standard input is a terminal. The token
is cached in REPLGATE_CTL_TOKEN_FILE, else $XDG_RUNTIME_DIR/replgate/token, else
~/.cache/replgate/token.
exit codes: 0 done, 1 refused by the daemon, 2 usage, 3 not logged in or wrong password,
4 forbidden, 5 not found, 6 conflict, 7 untrusted target certificate, 8 daemon unreachable";

/// A parsed `replgate ctl` invocation. Unset options are `None`: their environment
/// variables and defaults are `ctl`'s business, not the grammar's.
#[derive(Debug, PartialEq, Eq)]
pub struct Ctl {
    /// `--api`.
    pub api: Option<String>,
    /// `--cacert`.
    pub cacert: Option<PathBuf>,
    /// `--json`: print the daemon's JSON instead of a table.
    pub json: bool,
    pub command: CtlCommand,
}

/// Where a password comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordFrom {
    /// `--password-stdin`: one line of standard input.
    Stdin,
    /// `REPLGATE_PASSWORD`, else a prompt without echo when standard input is a terminal.
    EnvOrPrompt,
}

/// How `request-target` is to trust the target's CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Only if already pinned; otherwise the daemon answers 412 with the fingerprint.
    Pinned,
    /// `--fingerprint`: normalised to 64 lowercase hex digits.
    Fingerprint(String),
    /// `--insecure`: whatever the target presents.
    Insecure,
}

#[derive(Debug, PartialEq, Eq)]
pub enum CtlCommand {
    Help,
    /// `--version`: answered without the daemon.
    Version,
    Login {
        user: String,
        password: PasswordFrom,
    },
    Logout,
    Health,
    Pending {
        include_rejected: bool,
    },
    Accept {
        request_id: u64,
        storage_id: Option<u64>,
    },
    Reject {
        request_id: u64,
        message: String,
    },
    Ignore {
        request_id: u64,
    },
    /// `ignore --from`: every open request from an address or network.
    IgnoreFrom {
        remote_addr: String,
    },
    TokenCreate(TokenOptions),
    TokenList,
    TokenRevoke {
        token_id: String,
    },
    Unpair {
        system_id: u64,
    },
    Systems,
    Storage,
    RequestTarget {
        target: String,
        trust: Trust,
        /// A pairing token (`--token`, or from `--join`).
        token: Option<PairingToken>,
    },
    Targets,
    ForgetTarget {
        host: String,
    },
    /// `queue [--target ID] [--all]`.
    Queue {
        target_id: Option<u64>,
        include_done: bool,
    },
    QueueAdd {
        target_id: u64,
        backup: String,
    },
    /// `queue remove|reset`: items by id, and every open item of the clients.
    QueueChange {
        ids: Vec<u64>,
        clients: Vec<String>,
        reset: bool,
    },
    /// Shows the config, or changes the fields given.
    ReplicationConfig {
        max_concurrent: Option<u64>,
        strategy: Option<String>,
        retries: Option<u64>,
    },
    /// Shows the throttle, or sets the link speed and/or the windows (`Some(vec![])`:
    /// none).
    Throttle {
        link_mbps: Option<u64>,
        windows: Option<Vec<ThrottleWindow>>,
    },
    Received {
        system_id: u64,
    },
    Verify {
        system_id: u64,
    },
    Users,
    UserAdd {
        name: String,
        privilege: Privilege,
        password: PasswordFrom,
    },
    /// Invariant: `privilege` or `password` is set.
    UserSet {
        name: String,
        privilege: Option<Privilege>,
        password: Option<PasswordFrom>,
    },
    UserRemove {
        name: String,
    },
    Audit {
        limit: u64,
    },
    /// `metrics-token [--name LABEL]`.
    MetricsToken {
        name: Option<String>,
    },
}

/// What `token create` asks for; unset fields take the daemon's defaults.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenOptions {
    pub uses: Option<u64>,
    /// Seconds.
    pub expires_in: Option<u64>,
    pub storage_id: Option<u64>,
    pub quota_mb: Option<u64>,
    pub system_uuid: Option<String>,
    pub host: Option<String>,
    pub note: Option<String>,
    /// Where sources reach this daemon, for the join line.
    pub address: Option<String>,
}

/// A duration as admins write it: seconds, or a number with `s`, `m`, `h` or `d`.
fn duration(what: &str, s: &str) -> Result<u64, UsageError> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let factor = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => 0,
    };
    digits
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && factor > 0)
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| {
            UsageError(format!(
                "{what} must be a duration such as 3600, 90m, 12h or 7d, not {s:?}"
            ))
        })
}

/// One `--window PCT:DAYS:START-END`: 10 % of the link on weekdays 1 to 5 from 8 to 18
/// is `10:1-5:8-18`; days may be listed (`0,6`); hours are 0–23 local time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleWindow {
    pub percentage: u32,
    pub days: Vec<u8>,
    pub start: u32,
    pub end: u32,
}

fn throttle_window(w: &str) -> Result<ThrottleWindow, UsageError> {
    let bad = || {
        UsageError(format!(
            "--window {w:?} is not PCT:DAYS:START-END, e.g. 10:1-5:8-18 (10 % on Monday to Friday, 8 to 18)"
        ))
    };
    let parts: Vec<&str> = w.split(':').collect();
    let [pct, days, hours] = parts.as_slice() else {
        return Err(bad());
    };
    let number = |s: &str, max: u32| s.parse::<u32>().ok().filter(|n| *n <= max).ok_or_else(bad);
    let percentage = number(pct, 100)?;
    if percentage == 0 {
        return Err(bad());
    }
    let mut list = Vec::new();
    for part in days.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a, 6)?, number(b, 6)?);
                if a > b {
                    return Err(bad());
                }
                list.extend((a..=b).map(|d| d as u8));
            }
            None => list.push(number(part, 6)? as u8),
        }
    }
    list.sort_unstable();
    list.dedup();
    let (start, end) = hours.split_once('-').ok_or_else(bad)?;
    Ok(ThrottleWindow {
        percentage,
        days: list,
        start: number(start, 23)?,
        end: number(end, 23)?,
    })
}

/// The user `login` uses without `--user`: the superuser created on first start.
pub const DEFAULT_LOGIN_USER: &str = "root";
/// Audit entries shown without `--limit`.
pub const DEFAULT_AUDIT_LIMIT: u64 = 50;

/// Options that take a value, wherever they appear.
const CTL_VALUE_OPTIONS: [&str; 26] = [
    "--name",
    "--api",
    "--cacert",
    "--user",
    "--storage",
    "--message",
    "--fingerprint",
    "--privilege",
    "--limit",
    "--join",
    "--token",
    "--from",
    "--uses",
    "--expires-in",
    "--quota-mb",
    "--system-uuid",
    "--host",
    "--note",
    "--address",
    "--target",
    "--client",
    "--max-concurrent",
    "--strategy",
    "--retries",
    "--link-mbps",
    "--window",
];
/// Options that take none.
const CTL_FLAGS: [&str; 6] = [
    "--clear",
    "--json",
    "--all",
    "--insecure",
    "--password",
    "--password-stdin",
];

/// The options of one invocation; each accessor takes what it reads, so that
/// [`CtlOptions::finish`] can name any option the command does not know.
struct CtlOptions(Vec<(&'static str, Option<String>)>);

impl CtlOptions {
    /// Takes every occurrence of `name`, with its value if it had one.
    fn take_all(&mut self, name: &str) -> Vec<Option<String>> {
        let mut found = Vec::new();
        self.0.retain(|(n, v)| {
            if *n == name {
                found.push(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    fn value(&mut self, name: &str) -> Result<Option<String>, UsageError> {
        let mut found = self.take_all(name);
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop().flatten()),
            _ => Err(UsageError(format!("{name} is given more than once"))),
        }
    }

    /// Whether `name` was given, without taking it.
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }

    /// Every value of an option that may be given more than once (`--window`).
    fn values(&mut self, name: &str) -> Result<Vec<String>, UsageError> {
        self.take_all(name)
            .into_iter()
            .map(|v| v.ok_or_else(|| UsageError(format!("{name} needs a value"))))
            .collect()
    }

    fn flag(&mut self, name: &str) -> Result<bool, UsageError> {
        let before = self.0.len();
        self.0.retain(|(n, _)| *n != name);
        match before - self.0.len() {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(UsageError(format!("{name} is given more than once"))),
        }
    }

    fn finish(self, command: &str) -> Result<(), UsageError> {
        match self.0.first() {
            Some((name, _)) => Err(UsageError(format!("`{command}` does not take {name}"))),
            None => Ok(()),
        }
    }
}

/// Splits the words after `ctl` into positional words and known options; `--opt=value`
/// and `--opt value` both work, and `--` ends the options.
fn split_ctl(args: &[String]) -> Result<(Vec<String>, CtlOptions), UsageError> {
    let mut words = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    let mut options_ended = false;
    while let Some(arg) = it.next() {
        // `-7` is a word: the id `systems` shows for pending request 7.
        let negative_number = arg.len() > 1 && arg[1..].bytes().all(|b| b.is_ascii_digit());
        if options_ended || !arg.starts_with('-') || arg == "-" || negative_number {
            words.push(arg.clone());
            continue;
        }
        if arg == "--" {
            options_ended = true;
            continue;
        }
        if arg == "-h" || arg == "--help" {
            words.insert(0, "help".into());
            continue;
        }
        if arg == "-V" || arg == "--version" {
            words.insert(0, "version".into());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if let Some(known) = CTL_VALUE_OPTIONS.iter().find(|o| **o == name) {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| UsageError(format!("{name} needs a value")))?,
            };
            options.push((*known, Some(value)));
        } else if let Some(known) = CTL_FLAGS.iter().find(|o| **o == name) {
            if inline.is_some() {
                return Err(UsageError(format!("{name} takes no value")));
            }
            options.push((*known, None));
        } else {
            return Err(UsageError(format!("unknown option {name:?}")));
        }
    }
    Ok((words, CtlOptions(options)))
}

fn positive(what: &str, s: &str) -> Result<u64, UsageError> {
    s.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| UsageError(format!("{what} must be a positive number, not {s:?}")))
}

/// A request ID as `pending` shows it (`7`), or as `systems` shows the pending request's
/// row (`-7`).
fn request_id(s: &str) -> Result<u64, UsageError> {
    positive("the request ID", s.strip_prefix('-').unwrap_or(s))
}

fn privilege(s: &str) -> Result<Privilege, UsageError> {
    s.parse()
        .map_err(|e| UsageError(format!("--privilege: {e}")))
}

/// Exactly the positional words a command takes, named for the error message.
fn operands<'a, const N: usize>(
    command: &str,
    words: &'a [String],
    names: [&str; N],
) -> Result<[&'a str; N], UsageError> {
    if let Some(missing) = names.get(words.len()) {
        return Err(UsageError(format!("`{command}` needs {missing}")));
    }
    if let Some(extra) = words.get(N) {
        return Err(UsageError(format!(
            "`{command}` takes no further argument {extra:?}"
        )));
    }
    Ok(std::array::from_fn(|i| words[i].as_str()))
}

/// Parses the words after `replgate ctl`.
pub fn parse_ctl(args: &[String]) -> Result<Ctl, UsageError> {
    let (words, mut opts) = split_ctl(args)?;
    let api = opts.value("--api")?;
    let cacert = opts.value("--cacert")?.map(PathBuf::from);
    let json = opts.flag("--json")?;
    let Some((verb, rest)) = words.split_first() else {
        return Err(UsageError("a command is needed".into()));
    };
    let verb = verb.as_str();
    let no_operands = |rest: &[String]| operands(verb, rest, []).map(|_| ());
    let command = match verb {
        "help" => CtlCommand::Help,
        "version" => CtlCommand::Version,
        "login" => {
            no_operands(rest)?;
            CtlCommand::Login {
                user: opts
                    .value("--user")?
                    .unwrap_or_else(|| DEFAULT_LOGIN_USER.into()),
                password: if opts.flag("--password-stdin")? {
                    PasswordFrom::Stdin
                } else {
                    PasswordFrom::EnvOrPrompt
                },
            }
        }
        "logout" => no_operands(rest).map(|_| CtlCommand::Logout)?,
        "health" => no_operands(rest).map(|_| CtlCommand::Health)?,
        "pending" => {
            no_operands(rest)?;
            CtlCommand::Pending {
                include_rejected: opts.flag("--all")?,
            }
        }
        "accept" => {
            let [id] = operands(verb, rest, ["a request ID"])?;
            CtlCommand::Accept {
                request_id: request_id(id)?,
                storage_id: opts
                    .value("--storage")?
                    .map(|s| positive("--storage", &s))
                    .transpose()?,
            }
        }
        "reject" => {
            let [id] = operands(verb, rest, ["a request ID"])?;
            let request_id = request_id(id)?;
            let message = opts
                .value("--message")?
                .filter(|m| !m.trim().is_empty())
                .ok_or_else(|| {
                    UsageError("`reject` needs --message: the source's admin reads it".into())
                })?;
            CtlCommand::Reject {
                request_id,
                message,
            }
        }
        "ignore" => match opts.value("--from")? {
            Some(from) => {
                operands(verb, rest, [])?;
                crate::model::Network::parse(&from).ok_or_else(|| {
                    UsageError(format!(
                        "--from {from:?} is not an address or a network such as 192.0.2.0/24"
                    ))
                })?;
                CtlCommand::IgnoreFrom { remote_addr: from }
            }
            None => {
                let [id] = operands(verb, rest, ["a request ID (or --from NETWORK)"])?;
                CtlCommand::Ignore {
                    request_id: request_id(id)?,
                }
            }
        },
        "token" => match rest.split_first() {
            None => return Err(UsageError("`token` needs create, list or revoke".into())),
            Some((sub, more)) => {
                let verb = format!("token {sub}");
                match sub.as_str() {
                    "list" => operands(&verb, more, []).map(|_| CtlCommand::TokenList)?,
                    "revoke" => {
                        let [id] = operands(&verb, more, ["a token ID"])?;
                        if !PairingToken::valid_id(id) {
                            return Err(UsageError(format!(
                                "{id:?} is not a token ID (12 hex digits, the part before the dot)"
                            )));
                        }
                        CtlCommand::TokenRevoke {
                            token_id: id.to_string(),
                        }
                    }
                    "create" => {
                        operands(&verb, more, [])?;
                        let number = |opts: &mut CtlOptions, name: &str| {
                            opts.value(name)?.map(|n| positive(name, &n)).transpose()
                        };
                        CtlCommand::TokenCreate(TokenOptions {
                            uses: number(&mut opts, "--uses")?,
                            expires_in: opts
                                .value("--expires-in")?
                                .map(|d| duration("--expires-in", &d))
                                .transpose()?,
                            storage_id: number(&mut opts, "--storage")?,
                            quota_mb: number(&mut opts, "--quota-mb")?,
                            system_uuid: opts.value("--system-uuid")?,
                            host: opts.value("--host")?,
                            note: opts.value("--note")?,
                            address: opts.value("--address")?,
                        })
                    }
                    other => {
                        return Err(UsageError(format!(
                            "unknown token command {other:?} (create, list or revoke)"
                        )))
                    }
                }
            }
        },
        "unpair" => {
            let [sid] = operands(verb, rest, ["a system ID"])?;
            if let Some(id) = sid.strip_prefix('-') {
                return Err(UsageError(format!(
                    "system {sid} is pending request {id}, not a paired system: drop it with \
                     `replgate ctl ignore {id}` or `replgate ctl reject {id} --message TEXT`"
                )));
            }
            CtlCommand::Unpair {
                system_id: positive("the system ID", sid)?,
            }
        }
        "systems" => no_operands(rest).map(|_| CtlCommand::Systems)?,
        "storage" => no_operands(rest).map(|_| CtlCommand::Storage)?,
        "targets" => no_operands(rest).map(|_| CtlCommand::Targets)?,
        "request-target" if opts.has("--join") => {
            operands(verb, rest, []).map_err(|_| {
                UsageError("`request-target --join` takes the join line only, no HOST".into())
            })?;
            if opts.has("--fingerprint") || opts.has("--insecure") || opts.has("--token") {
                return Err(UsageError(
                    "--join carries the target's fingerprint and token: give no --fingerprint, --insecure or --token with it".into(),
                ));
            }
            let line = opts.value("--join")?.unwrap_or_default();
            let join = JoinLine::parse(&line).map_err(|e| UsageError(format!("--join: {e}")))?;
            CtlCommand::RequestTarget {
                target: join.target(),
                // The fingerprint authenticates the target: it is the pin.
                trust: Trust::Fingerprint(join.ca_fingerprint.clone()),
                token: Some(join.token),
            }
        }
        "request-target" => {
            let [target] = operands(verb, rest, ["the target's HOST[:PORT] (or --join LINE)"])?;
            let fingerprint = opts.value("--fingerprint")?;
            let insecure = opts.flag("--insecure")?;
            let token = opts
                .value("--token")?
                .map(|t| {
                    PairingToken::parse(t.trim()).ok_or_else(|| {
                        UsageError(
                            "--token is not a pairing token (<12 hex digits>.<32 hex digits>)"
                                .into(),
                        )
                    })
                })
                .transpose()?;
            let trust = match (fingerprint, insecure) {
                (Some(_), true) => {
                    return Err(UsageError(
                        "give --fingerprint or --insecure, not both".into(),
                    ))
                }
                (Some(f), false) => Trust::Fingerprint(
                    crate::ca::normalize_fingerprint(&f).ok_or_else(|| {
                        UsageError(format!(
                            "--fingerprint {f:?} is not a SHA-256 fingerprint (64 hex digits, colons optional)"
                        ))
                    })?,
                ),
                (None, true) => Trust::Insecure,
                (None, false) => Trust::Pinned,
            };
            CtlCommand::RequestTarget {
                target: target.to_string(),
                trust,
                token,
            }
        }
        "forget-target" => {
            let [host] = operands(verb, rest, ["the target's HOST[:PORT]"])?;
            CtlCommand::ForgetTarget {
                host: host.to_string(),
            }
        }
        "users" => match rest.split_first() {
            None => CtlCommand::Users,
            Some((sub, names)) => {
                let verb = format!("users {sub}");
                match sub.as_str() {
                    "list" => operands(&verb, names, []).map(|_| CtlCommand::Users)?,
                    "add" => {
                        let [name] = operands(&verb, names, ["a user NAME"])?;
                        let p = opts
                            .value("--privilege")?
                            .ok_or_else(|| UsageError("`users add` needs --privilege".into()))?;
                        CtlCommand::UserAdd {
                            name: name.to_string(),
                            privilege: privilege(&p)?,
                            password: if opts.flag("--password-stdin")? {
                                PasswordFrom::Stdin
                            } else {
                                PasswordFrom::EnvOrPrompt
                            },
                        }
                    }
                    "set" => {
                        let [name] = operands(&verb, names, ["a user NAME"])?;
                        let privilege = opts
                            .value("--privilege")?
                            .map(|p| privilege(&p))
                            .transpose()?;
                        let password =
                            match (opts.flag("--password-stdin")?, opts.flag("--password")?) {
                                (true, true) => {
                                    return Err(UsageError(
                                        "give --password or --password-stdin, not both".into(),
                                    ))
                                }
                                (true, false) => Some(PasswordFrom::Stdin),
                                (false, true) => Some(PasswordFrom::EnvOrPrompt),
                                (false, false) => None,
                            };
                        if privilege.is_none() && password.is_none() {
                            return Err(UsageError(
                                "`users set` needs --privilege, --password or --password-stdin"
                                    .into(),
                            ));
                        }
                        CtlCommand::UserSet {
                            name: name.to_string(),
                            privilege,
                            password,
                        }
                    }
                    "remove" => {
                        let [name] = operands(&verb, names, ["a user NAME"])?;
                        CtlCommand::UserRemove {
                            name: name.to_string(),
                        }
                    }
                    other => {
                        return Err(UsageError(format!(
                            "unknown users command {other:?} (list, add, set or remove)"
                        )))
                    }
                }
            }
        },
        "audit" => {
            no_operands(rest)?;
            CtlCommand::Audit {
                limit: opts
                    .value("--limit")?
                    .map(|n| positive("--limit", &n))
                    .transpose()?
                    .unwrap_or(DEFAULT_AUDIT_LIMIT),
            }
        }
        "queue" => match rest.split_first() {
            None => CtlCommand::Queue {
                target_id: opts
                    .value("--target")?
                    .map(|t| positive("--target", &t))
                    .transpose()?,
                include_done: opts.flag("--all")?,
            },
            Some((sub, more)) => {
                let verb = format!("queue {sub}");
                match sub.as_str() {
                    "add" => {
                        let [target, backup] =
                            operands(&verb, more, ["a target ID", "a backup (CLIENT/FILE)"])?;
                        CtlCommand::QueueAdd {
                            target_id: positive("the target ID", target)?,
                            backup: backup.to_string(),
                        }
                    }
                    "remove" | "reset" => {
                        let ids = more
                            .iter()
                            .map(|id| positive("an item ID", id))
                            .collect::<Result<Vec<u64>, _>>()?;
                        let clients = opts.values("--client")?;
                        if ids.is_empty() && clients.is_empty() {
                            return Err(UsageError(format!(
                                "`{verb}` needs item IDs or --client NAME"
                            )));
                        }
                        CtlCommand::QueueChange {
                            ids,
                            clients,
                            reset: sub == "reset",
                        }
                    }
                    other => {
                        return Err(UsageError(format!(
                            "unknown queue command {other:?} (add, remove or reset)"
                        )))
                    }
                }
            }
        },
        "replication-config" => {
            no_operands(rest)?;
            let number = |opts: &mut CtlOptions, name: &str| -> Result<Option<u64>, UsageError> {
                opts.value(name)?
                    .map(|n| {
                        n.parse::<u64>()
                            .map_err(|_| UsageError(format!("{name} must be a number, not {n:?}")))
                    })
                    .transpose()
            };
            let strategy = opts.value("--strategy")?;
            if let Some(s) = &strategy {
                if !["manual", "retention", "recency"].contains(&s.as_str()) {
                    return Err(UsageError(format!(
                        "--strategy {s:?} is not manual, retention or recency"
                    )));
                }
            }
            CtlCommand::ReplicationConfig {
                max_concurrent: number(&mut opts, "--max-concurrent")?,
                strategy,
                retries: number(&mut opts, "--retries")?,
            }
        }
        "throttle" => {
            no_operands(rest)?;
            let clear = opts.flag("--clear")?;
            let windows = opts
                .values("--window")?
                .iter()
                .map(|w| throttle_window(w))
                .collect::<Result<Vec<ThrottleWindow>, _>>()?;
            if clear && !windows.is_empty() {
                return Err(UsageError("--clear and --window do not go together".into()));
            }
            CtlCommand::Throttle {
                link_mbps: opts
                    .value("--link-mbps")?
                    .map(|n| positive("--link-mbps", &n))
                    .transpose()?,
                windows: if clear {
                    Some(Vec::new())
                } else {
                    Some(windows).filter(|w| !w.is_empty())
                },
            }
        }
        "received" => {
            let [sid] = operands(verb, rest, ["a system ID"])?;
            CtlCommand::Received {
                system_id: positive("the system ID", sid)?,
            }
        }
        "verify" => {
            let [sid] = operands(verb, rest, ["a system ID"])?;
            CtlCommand::Verify {
                system_id: positive("the system ID", sid)?,
            }
        }
        "metrics-token" => {
            no_operands(rest)?;
            CtlCommand::MetricsToken {
                name: opts.value("--name")?,
            }
        }
        other => return Err(UsageError(format!("unknown command {other:?}"))),
    };
    if matches!(command, CtlCommand::Help | CtlCommand::Version) {
        return Ok(Ctl {
            api,
            cacert,
            json,
            command,
        });
    }
    let shown = match &command {
        CtlCommand::UserAdd { .. } => "users add",
        CtlCommand::UserSet { .. } => "users set",
        CtlCommand::TokenCreate(_) => "token create",
        CtlCommand::TokenList => "token list",
        CtlCommand::TokenRevoke { .. } => "token revoke",
        CtlCommand::QueueAdd { .. } => "queue add",
        CtlCommand::QueueChange { reset: false, .. } => "queue remove",
        CtlCommand::QueueChange { reset: true, .. } => "queue reset",
        _ => verb,
    };
    opts.finish(shown)?;
    Ok(Ctl {
        api,
        cacert,
        json,
        command,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_serve_with_and_without_config() {
        assert_eq!(
            parse(&args("serve")).unwrap(),
            Command::Serve { config: None }
        );
        assert_eq!(
            parse(&args("serve --config /etc/r.toml")).unwrap(),
            Command::Serve {
                config: Some("/etc/r.toml".into())
            }
        );
        assert_eq!(parse(&args("--version")).unwrap(), Command::Version);
    }

    #[test]
    fn rejects_unknown_words() {
        assert!(parse(&args("serve --bogus")).is_err());
        assert!(parse(&args("serve --config")).is_err());
        assert!(parse(&args("launch")).is_err());
    }
    fn ctl(s: &str) -> Result<Ctl, UsageError> {
        parse_ctl(&args(s))
    }

    fn command(s: &str) -> CtlCommand {
        ctl(s).unwrap_or_else(|e| panic!("{s}: {}", e.0)).command
    }

    fn usage_error(s: &str) -> String {
        match ctl(s) {
            Ok(c) => panic!("{s} parsed as {c:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn replication_commands_parse_with_their_checks() {
        assert_eq!(
            command("queue --target 3 --all"),
            CtlCommand::Queue {
                target_id: Some(3),
                include_done: true
            }
        );
        assert_eq!(
            command("queue add 2 web/monday"),
            CtlCommand::QueueAdd {
                target_id: 2,
                backup: "web/monday".into()
            }
        );
        assert_eq!(
            command("queue reset 4 5 --client db"),
            CtlCommand::QueueChange {
                ids: vec![4, 5],
                clients: vec!["db".into()],
                reset: true
            }
        );
        assert!(usage_error("queue remove").contains("item IDs or --client"));
        assert!(usage_error("queue drop 1").contains("add, remove or reset"));
        assert_eq!(
            command("throttle --link-mbps 100 --window 10:1-5:8-18 --window 50:0,6:22-6"),
            CtlCommand::Throttle {
                link_mbps: Some(100),
                windows: Some(vec![
                    ThrottleWindow {
                        percentage: 10,
                        days: vec![1, 2, 3, 4, 5],
                        start: 8,
                        end: 18
                    },
                    ThrottleWindow {
                        percentage: 50,
                        days: vec![0, 6],
                        start: 22,
                        end: 6
                    },
                ])
            }
        );
        assert_eq!(
            command("throttle --clear"),
            CtlCommand::Throttle {
                link_mbps: None,
                windows: Some(vec![])
            }
        );
        assert_eq!(
            command("throttle"),
            CtlCommand::Throttle {
                link_mbps: None,
                windows: None
            }
        );
        for bad in [
            "0:1:1-2",
            "101:1:1-2",
            "10:7:1-2",
            "10:5-1:1-2",
            "10:1:24-2",
            "10:1",
            "x:1:1-2",
        ] {
            assert!(
                usage_error(&format!("throttle --window {bad}")).contains("PCT:DAYS:START-END"),
                "{bad}"
            );
        }
        assert!(usage_error("throttle --clear --window 10:1:1-2").contains("do not go together"));
        assert!(usage_error("replication-config --strategy fast")
            .contains("manual, retention or recency"));
        assert_eq!(command("verify 7"), CtlCommand::Verify { system_id: 7 });
    }

    #[test]
    fn ctl_words_are_kept_for_ctl_to_parse() {
        assert_eq!(
            parse(&args("ctl pending --all")).unwrap(),
            Command::Ctl(args("pending --all"))
        );
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let before = ctl("--api https://h:1 --cacert /c.pem --json pending").unwrap();
        let after = ctl("pending --json --cacert=/c.pem --api=https://h:1").unwrap();
        assert_eq!(before, after);
        assert_eq!(before.api.as_deref(), Some("https://h:1"));
        assert_eq!(before.cacert, Some(PathBuf::from("/c.pem")));
        assert!(before.json);
        let plain = ctl("systems").unwrap();
        assert_eq!((plain.api, plain.cacert, plain.json), (None, None, false));
    }

    #[test]
    fn login_defaults_to_root_and_the_ambient_password() {
        assert_eq!(
            command("login"),
            CtlCommand::Login {
                user: "root".into(),
                password: PasswordFrom::EnvOrPrompt
            }
        );
        assert_eq!(
            command("login --user ops --password-stdin"),
            CtlCommand::Login {
                user: "ops".into(),
                password: PasswordFrom::Stdin
            }
        );
    }

    #[test]
    fn target_side_commands_parse_their_ids_and_options() {
        assert_eq!(
            command("pending --all"),
            CtlCommand::Pending {
                include_rejected: true
            }
        );
        assert_eq!(
            command("accept 7 --storage 2"),
            CtlCommand::Accept {
                request_id: 7,
                storage_id: Some(2)
            }
        );
        assert_eq!(
            command("accept 7"),
            CtlCommand::Accept {
                request_id: 7,
                storage_id: None
            }
        );
        let reject = parse_ctl(&[
            "reject".into(),
            "3".into(),
            "--message".into(),
            "call us first".into(),
        ])
        .unwrap();
        assert_eq!(
            reject.command,
            CtlCommand::Reject {
                request_id: 3,
                message: "call us first".into()
            }
        );
        assert_eq!(command("ignore 4"), CtlCommand::Ignore { request_id: 4 });
        assert_eq!(command("unpair 9"), CtlCommand::Unpair { system_id: 9 });
    }

    #[test]
    fn a_pending_rows_negative_system_id_names_its_request() {
        assert_eq!(
            command("accept -7"),
            CtlCommand::Accept {
                request_id: 7,
                storage_id: None
            }
        );
        assert_eq!(command("ignore -4"), CtlCommand::Ignore { request_id: 4 });
        assert_eq!(
            command("reject -3 --message no"),
            CtlCommand::Reject {
                request_id: 3,
                message: "no".into()
            }
        );
        let e = usage_error("unpair -3");
        assert!(
            e.contains("pending request 3") && e.contains("ctl ignore 3"),
            "{e}"
        );
        assert!(usage_error("accept -0").contains("positive number"));
        assert!(usage_error("accept -x").contains("unknown option"));
    }

    #[test]
    fn the_manual_page_has_every_ctl_command() {
        let man = include_str!("../docs/replgate.1").replace("\\-", "-");
        let commands: Vec<String> = CTL_USAGE
            .lines()
            .filter(|l| l.starts_with("  ") && l.as_bytes()[2].is_ascii_lowercase())
            .map(|l| {
                // The command, before the two spaces that start its description.
                let syntax = l.trim_start().split("  ").next().unwrap_or("");
                let words: Vec<&str> = syntax
                    .split_whitespace()
                    .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                    .collect();
                words.join(" ")
            })
            .collect();
        assert!(commands.len() >= 18, "{commands:?}");
        for c in commands {
            assert!(man.contains(&c), "docs/replgate.1 lacks `{c}`");
        }
    }

    #[test]
    fn version_and_help_are_answered_everywhere() {
        assert!(
            VERSION_LINE.starts_with(&format!("replgate {} (commit ", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(command("--version"), CtlCommand::Version);
        assert_eq!(command("version"), CtlCommand::Version);
        assert_eq!(command("-V"), CtlCommand::Version);
        assert_eq!(parse(&args("serve --help")).unwrap(), Command::Help);
        assert_eq!(parse(&args("serve --config x -h")).unwrap(), Command::Help);
        assert_eq!(parse(&args("check-config --help")).unwrap(), Command::Help);
    }

    #[test]
    fn request_target_takes_one_way_of_trust() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(
            command(&format!("request-target 10.0.0.2:8443 --fingerprint {fp}")),
            CtlCommand::RequestTarget {
                target: "10.0.0.2:8443".into(),
                trust: Trust::Fingerprint("ab".repeat(32)),
                token: None,
            }
        );
        assert_eq!(
            command("request-target t --insecure"),
            CtlCommand::RequestTarget {
                target: "t".into(),
                trust: Trust::Insecure,
                token: None,
            }
        );
        assert_eq!(
            command("request-target t"),
            CtlCommand::RequestTarget {
                target: "t".into(),
                trust: Trust::Pinned,
                token: None,
            }
        );
        assert!(
            usage_error(&format!("request-target t --insecure --fingerprint {fp}"))
                .contains("not both")
        );
        assert!(usage_error("request-target t --fingerprint abc").contains("SHA-256"));
    }

    #[test]
    fn request_target_with_a_join_line_pins_its_fingerprint_and_sends_its_token() {
        let fp = "cd".repeat(32);
        let tok = "0123456789ab.00112233445566778899aabbccddeeff";
        let join = format!("replgate-join/1/2001:db8::7/9443/{fp}/{tok}");
        assert_eq!(
            command(&format!("request-target --join {join}")),
            CtlCommand::RequestTarget {
                target: "[2001:db8::7]:9443".into(),
                trust: Trust::Fingerprint(fp.clone()),
                token: PairingToken::parse(tok),
            }
        );
        assert_eq!(
            command(&format!(
                "request-target t.example --fingerprint {fp} --token {tok}"
            )),
            CtlCommand::RequestTarget {
                target: "t.example".into(),
                trust: Trust::Fingerprint(fp.clone()),
                token: PairingToken::parse(tok),
            }
        );
        for (args, says) in [
            (format!("request-target t --join {join}"), "no HOST"),
            (
                format!("request-target --join {join} --insecure"),
                "give no",
            ),
            (
                format!("request-target --join {join} --token {tok}"),
                "give no",
            ),
            (
                "request-target --join replgate-join/1/h".to_string(),
                "--join: ",
            ),
            ("request-target t --token abc.def".to_string(), "--token"),
        ] {
            assert!(
                usage_error(&args).contains(says),
                "{args}: {}",
                usage_error(&args)
            );
        }
        // A secret never shows in Debug, even of a whole invocation.
        let debug = format!(
            "{:?}",
            ctl(&format!("request-target --join {join}")).unwrap()
        );
        assert!(!debug.contains("00112233445566778899"), "{debug}");
    }

    #[test]
    fn token_and_bulk_ignore_commands() {
        assert_eq!(command("token list"), CtlCommand::TokenList);
        assert_eq!(
            command("token revoke 0123456789ab"),
            CtlCommand::TokenRevoke {
                token_id: "0123456789ab".into()
            }
        );
        assert_eq!(
            command("token create --uses 5 --expires-in 12h --storage 2 --quota-mb 100 --system-uuid u-1 --host h --note n --address t.example:8443"),
            CtlCommand::TokenCreate(TokenOptions {
                uses: Some(5),
                expires_in: Some(43_200),
                storage_id: Some(2),
                quota_mb: Some(100),
                system_uuid: Some("u-1".into()),
                host: Some("h".into()),
                note: Some("n".into()),
                address: Some("t.example:8443".into()),
            })
        );
        assert_eq!(
            command("token create"),
            CtlCommand::TokenCreate(TokenOptions::default())
        );
        for (d, secs) in [("90", 90), ("90s", 90), ("30m", 1_800), ("7d", 604_800)] {
            assert_eq!(duration("d", d).unwrap(), secs, "{d}");
        }
        for bad in ["", "0", "7w", "d", "-1h", "1.5h"] {
            assert!(duration("d", bad).is_err(), "{bad:?}");
        }
        assert!(usage_error("token").contains("create, list or revoke"));
        assert!(usage_error("token revoke nope").contains("token ID"));
        assert!(usage_error("token list --uses 3").contains("does not take --uses"));
        assert_eq!(
            command("ignore --from 192.0.2.0/24"),
            CtlCommand::IgnoreFrom {
                remote_addr: "192.0.2.0/24".into()
            }
        );
        assert!(usage_error("ignore --from 192.0.2.0/99").contains("network"));
        assert!(usage_error("ignore 3 --from 192.0.2.1").contains("no further"));
    }

    #[test]
    fn users_subcommands() {
        assert_eq!(command("users"), CtlCommand::Users);
        assert_eq!(command("users list"), CtlCommand::Users);
        assert_eq!(
            command("users add ops --privilege manage --password-stdin"),
            CtlCommand::UserAdd {
                name: "ops".into(),
                privilege: Privilege::Manage,
                password: PasswordFrom::Stdin
            }
        );
        assert_eq!(
            command("users set ops --privilege monitor"),
            CtlCommand::UserSet {
                name: "ops".into(),
                privilege: Some(Privilege::Monitor),
                password: None
            }
        );
        assert_eq!(
            command("users set ops --password"),
            CtlCommand::UserSet {
                name: "ops".into(),
                privilege: None,
                password: Some(PasswordFrom::EnvOrPrompt)
            }
        );
        assert_eq!(
            command("users remove ops"),
            CtlCommand::UserRemove { name: "ops".into() }
        );
        assert!(usage_error("users add ops").contains("--privilege"));
        assert!(usage_error("users add ops --privilege root").contains("monitor"));
        assert!(usage_error("users set ops").contains("needs"));
        assert!(usage_error("users set ops --password --password-stdin").contains("not both"));
        assert!(usage_error("users rename ops").contains("unknown users command"));
    }

    #[test]
    fn audit_limit_defaults_and_must_be_positive() {
        assert_eq!(command("audit"), CtlCommand::Audit { limit: 50 });
        assert_eq!(command("audit --limit 5"), CtlCommand::Audit { limit: 5 });
        assert!(usage_error("audit --limit 0").contains("positive"));
    }

    #[test]
    fn help_in_any_spelling() {
        assert_eq!(command("help"), CtlCommand::Help);
        assert_eq!(command("--help"), CtlCommand::Help);
        assert_eq!(command("accept -h"), CtlCommand::Help);
    }

    #[test]
    fn ctl_usage_errors_name_the_problem() {
        assert!(usage_error("").contains("a command is needed"));
        assert!(usage_error("frobnicate").contains("unknown command"));
        assert!(usage_error("accept").contains("needs a request ID"));
        assert!(usage_error("accept x").contains("positive number"));
        assert!(usage_error("accept 0").contains("positive number"));
        assert!(usage_error("accept 1 2").contains("no further argument"));
        assert!(usage_error("accept 1 --message hi").contains("does not take --message"));
        assert!(usage_error("reject 1").contains("--message"));
        assert!(usage_error("pending --bogus").contains("unknown option"));
        assert!(usage_error("pending --json --json").contains("more than once"));
        assert!(usage_error("pending --all=1").contains("takes no value"));
        assert!(usage_error("login --user").contains("needs a value"));
        assert!(usage_error("systems extra").contains("no further argument"));
    }

    #[test]
    fn an_option_value_may_look_like_an_option() {
        let c = parse_ctl(&[
            "reject".into(),
            "1".into(),
            "--message".into(),
            "--json".into(),
        ])
        .unwrap();
        assert!(!c.json);
        assert_eq!(
            c.command,
            CtlCommand::Reject {
                request_id: 1,
                message: "--json".into()
            }
        );
    }
}
