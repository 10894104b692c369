//! Thin entry point: parse arguments, start logging, run the daemon, print the error chain
//! once, choose the exit code.

use std::process::ExitCode;

use replgate::cli::{self, Command};
use replgate::config::Config;

/// Exit codes scripts can rely on.
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 3;
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("replgate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match command {
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("{}", cli::VERSION_LINE);
            ExitCode::SUCCESS
        }
        // Scripts rely on its own exit codes (`replgate::ctl::exit`, docs/ctl.md).
        Command::Ctl(args) => ExitCode::from(replgate::ctl::run(&args)),
        Command::CheckConfig { config } => match Config::load(config.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|c| replgate::objstore::check_storages(&c.storage).map(|()| c))
        {
            Ok(c) => {
                print!("{}", c.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("replgate: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve { config } => {
            let config_path = config;
            let config = match Config::load(config_path.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("replgate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            replgate::logging::init(&config.log);
            match replgate::daemon::run(config, config_path.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Once: as a log line where logging shows errors, else plainly.
                    let e = replgate::model::Chain(&e);
                    if log::log_enabled!(log::Level::Error) {
                        log::error!("{e}");
                    } else {
                        eprintln!("replgate: {e}");
                    }
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}
