//! The command-line grammar only: turns arguments into a [`Command`]. Reads no files,
//! environment or network.

use std::fmt;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage:
  replgate serve [--config FILE]   run the daemon (embedded defaults without a config file)
  replgate check-config [--config FILE]
                                   validate the configuration and print it
  replgate --version               print the version
  replgate help                    print this text

configuration: --config FILE, else /etc/replgate/replgate.toml when present, else defaults;
REPLGATE_<KEY> environment variables override single keys";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve { config: Option<PathBuf> },
    CheckConfig { config: Option<PathBuf> },
    Version,
    Help,
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

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, UsageError> {
    let Some(first) = args.first() else {
        return Ok(Command::Help);
    };
    match first.as_str() {
        "serve" => Ok(Command::Serve {
            config: config_option(&args[1..])?,
        }),
        "check-config" => Ok(Command::CheckConfig {
            config: config_option(&args[1..])?,
        }),
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
}
