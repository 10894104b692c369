//! The top-level command-line grammar only: turns arguments into a [`Command`]: `serve`,
//! `check-config`, `ctl ...` (whose words `ctl::run` parses with its own grammar),
//! `--version`, `help`. Reads no files, environment or network.

use std::fmt;
use std::path::PathBuf;

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
    /// `replgate ctl ...`: the words after `ctl`, parsed inside `ctl::run` so that its
    /// usage errors print as `replgate ctl: ...` with its own usage.
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

    #[test]
    fn ctl_words_are_kept_for_ctl_to_parse() {
        assert_eq!(
            parse(&args("ctl pending --all")).unwrap(),
            Command::Ctl(args("pending --all"))
        );
    }

    #[test]
    fn version_and_help_are_answered_everywhere() {
        assert!(
            VERSION_LINE.starts_with(&format!("replgate {} (commit ", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(parse(&args("serve --help")).unwrap(), Command::Help);
        assert_eq!(parse(&args("serve --config x -h")).unwrap(), Command::Help);
        assert_eq!(parse(&args("check-config --help")).unwrap(), Command::Help);
    }
}
