//! The worker binary: parse the command line; `run` reads the whole configuration, the operator
//! commands only what they need.

use worker::cli::{Cli, Cmd};

#[tokio::main]
async fn main() {
    let cli: Cli = shared::config::parse_cli();
    let run = match cli.command {
        None => Ok(cli.run),
        Some(Cmd::Run(args)) => Ok(args),
        Some(other) => Err(other),
    };
    let code = match run {
        Ok(args) => {
            let settings = worker::Settings::from_args(args).unwrap_or_else(|e| {
                eprintln!("{e}");
                std::process::exit(2);
            });
            shared::telemetry::init(&settings.log_format);
            match worker::run_from_env(settings, shared::shutdown::signal()).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("worker failed: {e:#}");
                    1
                }
            }
        }
        Err(other) => {
            // The console is a service and logs like `run`; the other commands print their output
            // on stdout and log warnings to stderr.
            let format = shared::telemetry::format_from_env().unwrap_or_else(|_| "text".into());
            if matches!(other, Cmd::Console(_)) {
                shared::telemetry::init(&format);
            } else {
                shared::telemetry::init_for_commands(&format);
            }
            match worker::cli::operate(other).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
