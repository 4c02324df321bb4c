//! `collabd [serve]` and `collabd token`: parse the command line, hand over to the library.

use std::process::ExitCode;

use clap::Parser;
use collabd::auth::{AuthSettings, Authenticator, SharedSecret};
use collabd::config::{Cli, Command, Config, MigrateArgs};
use collabd::telemetry::LogFormat;

fn main() -> ExitCode {
    unset_empty_variables();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("{}", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    match cli.command {
        Some(Command::Token(args)) => {
            let settings = AuthSettings {
                secrets: vec![SharedSecret {
                    kid: None,
                    secret: args.auth_jwt_secret.clone(),
                }],
                issuer: args.auth_jwt_issuer.clone(),
                audience: args.auth_jwt_audience.clone(),
            };
            match Authenticator::with(settings, None).mint(&args.user, args.ttl) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Migrate(args)) => migrate(args),
        Some(Command::Openapi) => {
            print!("{}", collabd::http::openapi::json());
            ExitCode::SUCCESS
        }
        Some(Command::Serve(config)) => serve(config),
        None => serve(cli.serve),
    }
}

/// clap's error in one line: its message and what it lists (the missing
/// flag, and so its variable), without the usage block after it.
fn one_line(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:"))
        .filter(|line| !line.is_empty())
        .collect();
    if parts.is_empty() {
        "error: invalid arguments".to_owned()
    } else {
        parts.join(" ")
    }
}

/// `VAR=` (as in `.env.example` or a compose file) means "not set", so the
/// default applies. Runs first thing in `main`, before any thread exists.
fn unset_empty_variables() {
    let command = <Cli as clap::CommandFactory>::command();
    let names: Vec<_> = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(|c| c.get_arguments()))
        .filter_map(|arg| arg.get_env().map(|e| e.to_owned()))
        .collect();
    for name in names {
        if std::env::var_os(&name).is_some_and(|v| v.is_empty()) {
            std::env::remove_var(&name);
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn migrate(args: MigrateArgs) -> ExitCode {
    collabd::telemetry::init_logging(LogFormat::Pretty, "info");
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(collabd::app::migrate(&args));
    match result {
        Ok(applied) => {
            println!("migrations applied: {applied:?}; schema is current");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let telemetry = collabd::telemetry::init(
        collabd::app::log_format(&config),
        &config.log_level,
        &collabd::app::trace_settings(&config),
    );
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(collabd::app::serve(config));
    // Flush the spans still buffered before the process ends.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A start-up failure is said once, in one line on stderr; a
            // failure while serving goes to the log pipeline as well.
            if matches!(e, collabd::app::StartError::Io(_)) {
                tracing::error!(error.message = %e, "server failed");
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
