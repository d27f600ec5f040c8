//! The ingress binary: parse the command line and the environment, bind both addresses, serve
//! until SIGTERM or Ctrl-C; or, as `ingress check`, check the configuration and the broker and exit.

/// mimalloc: every request allocates a little (headers, the command, the AMQP frames); glibc's
/// allocator spent about a tenth of the ingress's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli: ingress::Cli = shared::config::parse_cli();
    if cli.command == Some(ingress::Cmd::Check) {
        std::process::exit(ingress::check::run().await);
    }
    let settings = match ingress::Settings::from_args(cli.args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    shared::telemetry::init(&settings.log_format);
    let listeners = match ingress::bind(&settings).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = ingress::serve(listeners, settings, shared::shutdown::signal()).await {
        eprintln!("ingress failed: {e:#}");
        std::process::exit(1);
    }
}
