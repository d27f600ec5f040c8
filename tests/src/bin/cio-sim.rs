//! `cio-sim`: the Customer.io simulator as a standalone server for the local demo stack.
//! Thin wrapper: parse flags/env, start, optionally seed demo data, serve until SIGTERM/ctrl-c.

use std::net::SocketAddr;

use clap::Parser;
use testkit::sim::{demo_seed, SimConfig, Simulator};

#[derive(Parser, Debug)]
#[command(name = "cio-sim", about = "Offline Customer.io App + Track API simulator")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "SIM_ADDR", default_value = "127.0.0.1:9090")]
    addr: SocketAddr,
    /// App API bearer key.
    #[arg(long, env = "CIO_APP_API_KEY", default_value = "sim-app-key")]
    app_key: String,
    /// Track API site id (Basic auth user).
    #[arg(long, env = "CIO_SITE_ID", default_value = "sim-site")]
    site_id: String,
    /// Track API key (Basic auth password).
    #[arg(long, env = "CIO_TRACK_API_KEY", default_value = "sim-track-key")]
    track_key: String,
    /// App API requests per second (token bucket); 0 = unthrottled.
    #[arg(long, env = "SIM_APP_RATE_LIMIT", default_value_t = 10)]
    rate_limit: u32,
    /// Track API requests per second; 0 = unthrottled.
    #[arg(long, env = "SIM_TRACK_RATE_LIMIT", default_value_t = 0)]
    track_rate_limit: u32,
    /// Answer id_type=email with 400 "not enabled".
    #[arg(long, env = "SIM_EMAIL_ID_TYPE_DISABLED")]
    email_id_type_disabled: bool,
    /// URL reported in the Track region answer and redirect faults (default: http://ADDR).
    #[arg(long, env = "SIM_PUBLIC_URL")]
    public_url: Option<String>,
    /// Seed demo contacts and segments.
    #[arg(long, env = "SIM_SEED_DEMO")]
    seed_demo: bool,
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let nonzero = |n: u32| (n > 0).then_some(n);
    let cfg = SimConfig {
        app_api_key: args.app_key,
        site_id: args.site_id,
        track_api_key: args.track_key,
        app_rate_limit: nonzero(args.rate_limit),
        track_rate_limit: nonzero(args.track_rate_limit),
        email_id_type_enabled: !args.email_id_type_disabled,
    };
    let sim = Simulator::start_on(cfg, args.addr).await?;
    if let Some(url) = &args.public_url {
        sim.handle().set_public_url(url);
    }
    if args.seed_demo {
        demo_seed(&sim.handle());
    }
    println!("cio-sim listening on http://{}", sim.addr());
    terminated().await;
    tracing::info!("cio-sim shutting down");
    sim.shutdown().await;
    Ok(())
}
