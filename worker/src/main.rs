//! The worker binary: parse the command line; `run` reads the whole configuration, the operator
//! commands only what they need.

use clap::Parser;
use worker::cli::{Cli, Cmd};

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => {
            let settings = worker::Settings::from_env().unwrap_or_else(|e| {
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
        other => {
            // The console is a service and logs like `run`; the other commands print their output
            // on stdout and log warnings to stderr.
            let format = shared::telemetry::format_from_env().unwrap_or_else(|_| "text".into());
            if matches!(other, Cmd::Console) {
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
