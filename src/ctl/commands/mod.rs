//! `replgate ctl`'s commands as one table: each entry has the command's name, its lines in
//! `help`, the options it takes, how its words parse into a [`CtlCommand`], and what runs
//! it. The help text, the option grammar (which options take a value) and the dispatch are
//! all read off [`SECTIONS`]: a new command is its `CtlCommand` variant and one entry, with
//! its parse and its run beside it in its section's file. The tables are declarative: long,
//! but one entry per command.
//!
//! - `session.rs`: log in and out, health, help, version,
//! - `target.rs`: the target side: pairing requests, systems, storage, pairing tokens,
//! - `recycle.rs`: the target side: a source's retention policy and its recycle bin,
//! - `source.rs`: the source side: targets, the replication queue and its settings,
//! - `users.rs`: users, the audit trail, scraper tokens,
//! - `ca.rs`: the appliance CA's rollover.

mod ca;
mod recycle;
mod session;
mod source;
mod target;
mod users;

use serde_json::Value;

use super::args::{self, Ctl, CtlCommand, Input, UsageError};
use super::client::{Answer, Client};
use super::{settings, CtlError};
use crate::model::Secret;

/// One command of the table.
pub(super) struct Command {
    /// The words that name it: `pending`, `users add`. A first word shared by several
    /// commands (`users`, `token`, `queue`) makes a group; the group's word alone is the
    /// entry named by it alone, if there is one.
    pub name: &'static str,
    /// Its lines in `help`; none for an alias (`users list`).
    pub help: &'static [Help],
    /// The options it takes besides `--api`, `--cacert` and `--json`.
    pub options: &'static [Opt],
    /// Its words and options into a [`CtlCommand`]; an option it does not take is refused
    /// after it ran.
    pub parse: fn(&mut Input<'_>) -> Result<CtlCommand, UsageError>,
    pub run: Run,
}

/// One line (or a few) of `help`: the syntax and what it does; either may run over
/// several lines (`\n`; a syntax line carries its own indentation).
pub(super) struct Help {
    pub syntax: &'static str,
    pub about: &'static str,
}

/// An option a command takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Opt {
    /// `--name VALUE` or `--name=VALUE`.
    Value(&'static str),
    /// `--name`, no value.
    Flag(&'static str),
}

/// What runs a parsed command.
pub(super) enum Run {
    /// Answered without the daemon (`help`, `version`).
    Local(fn() -> String),
    /// Calls the daemon; returns what goes to standard output.
    Daemon(fn(&Cx<'_>, &CtlCommand) -> Result<String, CtlError>),
}

/// A titled part of `help`.
pub(super) struct Section {
    pub title: &'static str,
    pub commands: &'static [Command],
}

/// Every command, in the order `help` lists them.
pub(super) const SECTIONS: &[Section] = &[
    Section {
        title: "session:",
        commands: session::COMMANDS,
    },
    Section {
        title: "target side (this appliance receives replication):",
        commands: target::COMMANDS,
    },
    Section {
        title: "retention and the recycle bin (target side):",
        commands: recycle::COMMANDS,
    },
    Section {
        title: "source side (this appliance replicates to a target):",
        commands: source::COMMANDS,
    },
    Section {
        title: "users and audit:",
        commands: users::COMMANDS,
    },
    Section {
        title: "certificate authority:",
        commands: ca::COMMANDS,
    },
];

/// The options every command takes, before or after it.
const GLOBAL_OPTIONS: &[Opt] = &[
    Opt::Value("--api"),
    Opt::Value("--cacert"),
    Opt::Flag("--json"),
];

const USAGE_HEAD: &str = "\
usage: replgate ctl [--api https://HOST:PORT] [--cacert FILE] [--json] COMMAND ...

";

const USAGE_TAIL: &str = "
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

/// The column where a command's description starts in `help`.
const ABOUT_COLUMN: usize = 43;

fn all() -> impl Iterator<Item = &'static Command> {
    SECTIONS.iter().flat_map(|s| s.commands)
}

/// The command called `name` in the table.
pub(super) fn named(name: &str) -> Option<&'static Command> {
    all().find(|c| c.name == name)
}

/// The one spelling of option `name` if some command (or every one) takes it with a value
/// (`value`) or as a flag.
fn option(name: &str, value: bool) -> Option<&'static str> {
    GLOBAL_OPTIONS
        .iter()
        .chain(all().flat_map(|c| c.options))
        .find_map(|o| match *o {
            Opt::Value(n) if value && n == name => Some(n),
            Opt::Flag(n) if !value && n == name => Some(n),
            _ => None,
        })
}

/// Parses the words after `replgate ctl`.
pub(super) fn parse(args: &[String]) -> Result<Ctl, UsageError> {
    let (words, mut options) = args::split(args, |n| option(n, true), |n| option(n, false))?;
    let (api, cacert, json) = options.globals()?;
    let (command, rest) = find(&words)?;
    let mut input = Input::new(command.name, rest, options);
    let parsed = (command.parse)(&mut input)?;
    input.finish()?;
    Ok(Ctl {
        api,
        cacert,
        json,
        command: parsed,
        name: command.name,
    })
}

/// The command the first words name, and the words after its name.
fn find(words: &[String]) -> Result<(&'static Command, &[String]), UsageError> {
    let Some((first, rest)) = words.split_first() else {
        return Err(UsageError("a command is needed".into()));
    };
    let first = first.as_str();
    let group: Vec<(&str, &'static Command)> = all()
        .filter_map(|c| Some((c.name.strip_prefix(first)?.strip_prefix(' ')?, c)))
        .collect();
    let alone = || named(first).map(|c| (c, rest));
    if group.is_empty() {
        return alone().ok_or_else(|| UsageError(format!("unknown command {first:?}")));
    }
    let choices = || or_list(group.iter().map(|(sub, _)| *sub));
    match rest.split_first() {
        None => alone().ok_or_else(|| UsageError(format!("`{first}` needs {}", choices()))),
        Some((sub, more)) => group
            .iter()
            .find(|(name, _)| name == sub)
            .map(|(_, c)| (*c, more))
            .ok_or_else(|| UsageError(format!("unknown {first} command {sub:?} ({})", choices()))),
    }
}

/// `a, b or c`.
fn or_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<&str> = items.collect();
    match items.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// What `replgate ctl help` prints (without the final newline).
pub(super) fn usage() -> String {
    let mut out = String::from(USAGE_HEAD);
    for section in SECTIONS {
        out.push_str(section.title);
        out.push('\n');
        for help in section.commands.iter().flat_map(|c| c.help) {
            help_lines(help, &mut out);
        }
    }
    out.push_str(USAGE_TAIL);
    out
}

/// One [`Help`]: the syntax from column 2, the description from [`ABOUT_COLUMN`], on the
/// syntax's last line when it leaves room, else below it.
fn help_lines(help: &Help, out: &mut String) {
    let mut about = help.about.lines().filter(|l| !l.is_empty());
    let syntax: Vec<&str> = help.syntax.lines().collect();
    for (i, line) in syntax.iter().enumerate() {
        let last = i + 1 == syntax.len();
        let first_about = if last && 2 + line.len() + 2 <= ABOUT_COLUMN {
            about.next()
        } else {
            None
        };
        match first_about {
            Some(text) => out.push_str(&format!("  {line:<w$}{text}\n", w = ABOUT_COLUMN - 2)),
            None => out.push_str(&format!("  {line}\n")),
        }
    }
    for text in about {
        out.push_str(&format!("{:ABOUT_COLUMN$}{text}\n", ""));
    }
}

/// What a command that calls the daemon runs with.
pub(super) struct Cx<'a> {
    pub ctl: &'a Ctl,
    /// The daemon's API, `https://host:port`.
    pub api: &'a str,
    pub client: &'a Client,
    /// The CA file as read (`health` shows its fingerprint).
    pub ca_pem: &'a [u8],
}

impl Cx<'_> {
    /// The cached token for this daemon. Located only by the commands that use one:
    /// `health` works without HOME. Without one, a daemon that does not answer is the
    /// news, not the missing login.
    pub(super) fn token(&self) -> Result<Secret<String>, CtlError> {
        match settings::token_file().and_then(|f| f.token(self.api)) {
            Err(not_logged_in @ CtlError::NotLoggedIn(_)) => Err(match self.client.health() {
                Err(unreachable @ CtlError::Unreachable(_)) => unreachable,
                _ => not_logged_in,
            }),
            other => other,
        }
    }

    /// The daemon's JSON as it came with `--json`, else `human` of it.
    pub(super) fn show(&self, answer: Answer, human: impl FnOnce(&Value) -> String) -> String {
        if self.ctl.json {
            super::with_newline(&answer.text)
        } else {
            human(&answer.json)
        }
    }
}

/// A run function handed another command's arguments: the table pairs each parse with
/// its run, so this never happens.
fn other_command() -> CtlError {
    CtlError::Usage("internal: a command ran with another command's arguments".into())
}

#[cfg(test)]
mod tests;
