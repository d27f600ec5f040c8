//! The ingress binary: read the configuration, bind, serve until SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() {
    let settings = match ingress::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    shared::telemetry::init(&settings.log_format);
    let listener = match tokio::net::TcpListener::bind(settings.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on INGRESS_ADDR {}: {e}", settings.addr);
            std::process::exit(1);
        }
    };
    if let Err(e) = ingress::serve(listener, settings, shared::shutdown::signal()).await {
        eprintln!("ingress failed: {e:#}");
        std::process::exit(1);
    }
}
