//! `replgate ctl`'s grammar: what an invocation parses into ([`Ctl`], [`CtlCommand`]) and
//! the pieces every command's parser is built from: the words split into operands and
//! options ([`split`]), the options a command takes ([`Input`]), and the value parsers
//! (ids, durations, throttle windows). Reads no files, environment or network. Which
//! commands there are, with their help and options, is the table in `commands/`.

use std::fmt;
use std::path::PathBuf;

use crate::model::Privilege;
use crate::wire::token::PairingToken;

/// A usage error: the message `replgate ctl` prints before pointing at `help`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A parsed `replgate ctl` invocation. Unset options are `None`: their environment
/// variables and defaults are `ctl`'s business, not the grammar's.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Ctl {
    /// `--api`.
    pub api: Option<String>,
    /// `--cacert`.
    pub cacert: Option<PathBuf>,
    /// `--json`: print the daemon's JSON instead of a table.
    pub json: bool,
    pub command: CtlCommand,
    /// The command's name in the table (`users add`), which runs it.
    pub name: &'static str,
}

/// Where a password comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PasswordFrom {
    /// `--password-stdin`: one line of standard input.
    Stdin,
    /// `REPLGATE_PASSWORD`, else a prompt without echo when standard input is a terminal.
    EnvOrPrompt,
}

/// How `request-target` is to trust the target's CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Trust {
    /// Only if already pinned; otherwise the daemon answers 412 with the fingerprint.
    Pinned,
    /// `--fingerprint`: normalised to 64 lowercase hex digits.
    Fingerprint(String),
    /// `--insecure`: whatever the target presents.
    Insecure,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum CtlCommand {
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
        /// `--replaces SID`: a replacement appliance takes over that lost source.
        replaces: Option<u64>,
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
    /// `share SID WEIGHT|default`: None sets the default weight back.
    Share {
        system_id: u64,
        share: Option<u64>,
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
    /// `compression TARGET_ID auto|off|zstd:<level>|default` (None: default, the daemon's
    /// `compression` key).
    TargetCompression {
        target_id: u64,
        setting: Option<String>,
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
    /// `drill [TARGET_ID] [--bytes N]`: without an ID, the one complete pairing.
    Drill {
        target_id: Option<u64>,
        bytes: Option<u64>,
    },
    Drills,
    /// `restore TARGET_ID (CLIENT/FILE... | --client NAME... | --all)`.
    Restore {
        target_id: u64,
        backups: Vec<String>,
        clients: Vec<String>,
        all: bool,
        storage_id: Option<u64>,
        overwrite: bool,
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
    /// Shows source SID's retention policy (`policy: None`), or sets it: `Some(None)`
    /// keeps every backup.
    Retention {
        system_id: u64,
        policy: Option<Option<RetentionRules>>,
    },
    Recycle {
        system_id: u64,
    },
    RecycleRestore {
        system_id: u64,
        backup: String,
    },
    /// `backup: None` purges the whole bin (`--all`).
    RecyclePurge {
        system_id: u64,
        backup: Option<String>,
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
    /// `ca rollover start|status|finish|abort`; `status` is None.
    CaRollover {
        phase: Option<String>,
    },
}

/// What `token create` asks for; unset fields take the daemon's defaults.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TokenOptions {
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
    /// `--replaces SID`: the source that uses it takes over that lost source.
    pub replaces: Option<u64>,
}

/// The user `login` uses without `--user`: the superuser created on first start.
pub(super) const DEFAULT_LOGIN_USER: &str = "root";
/// Audit entries shown without `--limit`.
pub(super) const DEFAULT_AUDIT_LIMIT: u64 = 50;

/// The options of one invocation; each accessor takes what it reads, so that
/// [`Options::finish`] can name any option the command does not know.
pub(super) struct Options(Vec<(&'static str, Option<String>)>);

impl Options {
    /// Takes `--api`, `--cacert` and `--json`, which every command takes.
    pub(super) fn globals(
        &mut self,
    ) -> Result<(Option<String>, Option<PathBuf>, bool), UsageError> {
        let api = self.value("--api")?;
        let cacert = self.value("--cacert")?.map(PathBuf::from);
        Ok((api, cacert, self.flag("--json")?))
    }
}

impl Options {
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

/// Splits the words after `ctl` into positional words and the options `takes_value` and
/// `is_flag` know (each answers with the option's one spelling); `--opt=value` and
/// `--opt value` both work, and `--` ends the options. `-h`/`--help` and `-V`/`--version`
/// anywhere make the command `help` or `version`.
pub(super) fn split(
    args: &[String],
    takes_value: impl Fn(&str) -> Option<&'static str>,
    is_flag: impl Fn(&str) -> Option<&'static str>,
) -> Result<(Vec<String>, Options), UsageError> {
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
        if let Some(known) = takes_value(name) {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| UsageError(format!("{name} needs a value")))?,
            };
            options.push((known, Some(value)));
        } else if let Some(known) = is_flag(name) {
            if inline.is_some() {
                return Err(UsageError(format!("{name} takes no value")));
            }
            options.push((known, None));
        } else {
            return Err(UsageError(format!("unknown option {name:?}")));
        }
    }
    Ok((words, Options(options)))
}

/// What a command's parser reads: the words after its name and the options given.
pub(super) struct Input<'a> {
    /// The command's name, for messages (`users add`).
    pub name: &'a str,
    words: &'a [String],
    options: Options,
}

impl<'a> Input<'a> {
    pub(super) fn new(name: &'a str, words: &'a [String], options: Options) -> Input<'a> {
        Input {
            name,
            words,
            options,
        }
    }

    /// Exactly the positional words the command takes, named for the error message.
    pub(super) fn operands<const N: usize>(
        &self,
        names: [&str; N],
    ) -> Result<[&'a str; N], UsageError> {
        let (command, words) = (self.name, self.words);
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

    /// Every positional word (for a command that takes any number).
    pub(super) fn words(&self) -> &'a [String] {
        self.words
    }

    /// The command takes no positional word.
    pub(super) fn no_operands(&self) -> Result<(), UsageError> {
        self.operands([]).map(|[]| ())
    }

    pub(super) fn value(&mut self, name: &str) -> Result<Option<String>, UsageError> {
        self.options.value(name)
    }

    pub(super) fn values(&mut self, name: &str) -> Result<Vec<String>, UsageError> {
        self.options.values(name)
    }

    pub(super) fn flag(&mut self, name: &str) -> Result<bool, UsageError> {
        self.options.flag(name)
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.options.has(name)
    }

    /// Option `name`'s value as a positive number, if given.
    pub(super) fn positive(&mut self, name: &str) -> Result<Option<u64>, UsageError> {
        self.value(name)?.map(|n| positive(name, &n)).transpose()
    }

    /// `--password-stdin`, or else the environment or a prompt.
    pub(super) fn password(&mut self) -> Result<PasswordFrom, UsageError> {
        Ok(if self.flag("--password-stdin")? {
            PasswordFrom::Stdin
        } else {
            PasswordFrom::EnvOrPrompt
        })
    }

    /// Drops every word and option: `help` and `version` answer whatever else was given.
    pub(super) fn ignore_rest(&mut self) {
        self.words = &[];
        self.options = Options(Vec::new());
    }

    /// Ends the parse: an option the command's parser did not take is an error naming it.
    pub(super) fn finish(self) -> Result<(), UsageError> {
        self.options.finish(self.name)
    }
}

pub(super) fn positive(what: &str, s: &str) -> Result<u64, UsageError> {
    s.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| UsageError(format!("{what} must be a positive number, not {s:?}")))
}

/// A request ID as `pending` shows it (`7`), or as `systems` shows the pending request's
/// row (`-7`).
pub(super) fn request_id(s: &str) -> Result<u64, UsageError> {
    positive("the request ID", s.strip_prefix('-').unwrap_or(s))
}

pub(super) fn privilege(s: &str) -> Result<Privilege, UsageError> {
    s.parse()
        .map_err(|e| UsageError(format!("--privilege: {e}")))
}

/// A duration as admins write it: seconds, or a number with `s`, `m`, `h` or `d`.
pub(super) fn duration(what: &str, s: &str) -> Result<u64, UsageError> {
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

/// A retention policy as `retention` sets it: at least one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RetentionRules {
    pub keep_last: Option<u64>,
    pub keep_days: Option<u64>,
}

/// One `--window PCT:DAYS:START-END`: 10 % of the link on weekdays 1 to 5 from 8 to 18
/// is `10:1-5:8-18`; days may be listed (`0,6`); hours are 0–23 local time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ThrottleWindow {
    pub percentage: u32,
    pub days: Vec<u8>,
    pub start: u32,
    pub end: u32,
}

pub(super) fn throttle_window(w: &str) -> Result<ThrottleWindow, UsageError> {
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
