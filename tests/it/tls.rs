//! TLS: every client of the service (AMQP, PostgreSQL, the Customer.io HTTP APIs, SMTP) uses rustls
//! with one crypto provider and the operating system's certificate store, which operators extend
//! with a private CA through `SSL_CERT_FILE`. `worker check` and `ingress check` reach the broker,
//! the simulator and an SMTP sink through TLS-terminating proxies whose certificate a test CA
//! signed, and PostgreSQL with `sslmode=verify-full`: with that CA and the database server's
//! certificate in `SSL_CERT_FILE` every check passes; with another CA there, every one fails.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use testkit::{
    procs::{ingress_cmd, ingress_env, worker_cmd_with},
    smtp::SmtpSink,
    TestEnv,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    },
    TlsAcceptor,
};
use tokio_util::sync::CancellationToken;

/// A CA (its certificate in PEM) and a server configuration for `localhost` signed by it.
struct TestCa {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn test_ca(name: &str) -> TestCa {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
    let chain = vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    TestCa {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

/// Accepts TLS on a free port and forwards the plain bytes to `target`; stops when dropped.
struct TlsProxy {
    port: u16,
    stop: CancellationToken,
}

impl TlsProxy {
    async fn start(ca: &TestCa, target: String) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = TlsAcceptor::from(ca.server.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let (acceptor, target, token) = (acceptor.clone(), target.clone(), token.clone());
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends the handshake: nothing to forward.
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        TlsProxy { port, stop }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `amqp://user:pass@host:port/vhost` with the scheme made `amqps` and the authority `localhost:port`.
fn amqps_url(plain: &str, port: u16) -> String {
    let rest = plain.strip_prefix("amqp://").expect("the test broker's URL is amqp://");
    let (auth, after) = match rest.split_once('@') {
        Some((auth, after)) => (format!("{auth}@"), after),
        None => (String::new(), rest),
    };
    let path = after.find('/').map(|i| &after[i..]).unwrap_or("");
    format!("amqps://{auth}localhost:{port}{path}")
}

fn lines_starting<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// A directory of the test's own, removed when the test ends, pass or fail.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_trusts_the_system_store_and_only_it() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let sink = SmtpSink::start().await;
    let ca = test_ca("cio-sync test CA");
    let plain_amqp = testkit::env::amqp_url();
    let sim_addr = env
        .sim_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let smtp_addr = sink.url().trim_start_matches("smtp://").to_string();
    // The broker's `host:port`, as the service reads it from its URL.
    let broker = shared::broker::parse_nodes(&plain_amqp).unwrap()[0].label().to_string();
    let amqp = TlsProxy::start(&ca, broker).await;
    let https = TlsProxy::start(&ca, sim_addr).await;
    let smtps = TlsProxy::start(&ca, smtp_addr).await;

    // The local server's own certificate (Debian's snakeoil one, for `localhost`) is its own root.
    let (ssl, cert_file, data_dir): (String, String, String) = sqlx::query_as(
        "select current_setting('ssl'), current_setting('ssl_cert_file'), current_setting('data_directory')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(ssl, "on", "this test needs PostgreSQL with ssl = on (Debian's default)");
    let pg_cert =
        std::fs::read_to_string(Path::new(&data_dir).join(&cert_file)).expect("read the server's certificate");
    let db_url = format!(
        "{}?sslmode=verify-full",
        env.database_url.replacen("@127.0.0.1:", "@localhost:", 1)
    );
    assert!(db_url.contains("@localhost:"), "{db_url}");

    let scratch = ScratchDir(std::env::temp_dir().join(format!("cio-tls-{}", env.namespace)));
    let dir = &scratch.0;
    std::fs::create_dir_all(dir).unwrap();
    let trusted = write_pem(dir, "trusted.pem", &format!("{}{pg_cert}", ca.ca_pem));
    let stranger = write_pem(dir, "stranger.pem", &test_ca("another CA").ca_pem);
    let tls_vars = |cert_file: &str| {
        vec![
            ("DATABASE_URL", db_url.clone()),
            ("AMQP_URL", amqps_url(&plain_amqp, amqp.port)),
            ("CIO_APP_API_URL", format!("https://localhost:{}", https.port)),
            ("CIO_TRACK_API_URL", format!("https://localhost:{}", https.port)),
            ("SMTP_URL", format!("smtps://localhost:{}", smtps.port)),
            ("MAIL_FROM", "Accounts <accounts@example.org>".to_string()),
            ("LOGIN_URL", "https://app.example.org/login".to_string()),
            // With SSL_CERT_FILE set, the store is that file alone, whatever this machine trusts.
            ("SSL_CERT_FILE", cert_file.to_string()),
        ]
    };

    // Trusted through SSL_CERT_FILE: every check passes over TLS.
    let (code, out) = worker_cmd_with(&env, &["check"], &tls_vars(&trusted));
    assert_eq!(code, 0, "{out}");
    assert!(lines_starting(&out, "FAIL").is_empty(), "{out}");
    for want in [
        "ok   database reachable",
        "ok   migrations current",
        "ok   broker reachable",
        "ok   broker topology present",
        "ok   Customer.io App API: CIO_APP_API_KEY accepted",
        "ok   Customer.io Track API: CIO_SITE_ID and CIO_TRACK_API_KEY accepted",
        "ok   SMTP server reachable (SMTP_URL)",
    ] {
        assert!(out.lines().any(|l| l.starts_with(want)), "no line {want:?} in:\n{out}");
    }
    assert_eq!(
        env.simh.count_status(200),
        2,
        "the App and Track calls came through the proxy"
    );

    let (mut vars, _, _) = ingress_env("tls-key-0123456789abcdef", &env.namespace);
    vars.retain(|(k, _)| *k != "AMQP_URL");
    vars.extend(
        tls_vars(&trusted)
            .into_iter()
            .filter(|(k, _)| k.starts_with("AMQP") || k.starts_with("SSL")),
    );
    let (code, out) = ingress_cmd(&["check"], &vars);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok   commands queue present"), "{out}");

    // Another CA in SSL_CERT_FILE: the database, the broker, both APIs and SMTP refuse their
    // certificates, and nothing reaches the simulator or the sink.
    let (code, out) = worker_cmd_with(&env, &["check"], &tls_vars(&stranger));
    assert_eq!(code, 1, "{out}");
    let fails = lines_starting(&out, "FAIL");
    for want in [
        "FAIL database",
        "FAIL broker",
        "FAIL Customer.io App API",
        "FAIL Customer.io Track API",
        "FAIL SMTP",
    ] {
        assert!(fails.iter().any(|l| l.starts_with(want)), "no line {want:?} in:\n{out}");
    }
    // Each failure names its cause: rustls's `CertificateError::UnknownIssuer`.
    assert!(fails.iter().all(|l| l.contains("UnknownIssuer")), "{out}");
    assert_eq!(
        env.simh.count_status(200),
        2,
        "no API call got through an untrusted certificate"
    );
    assert!(sink.messages().is_empty());

    for (k, v) in vars.iter_mut() {
        if *k == "SSL_CERT_FILE" {
            *v = stranger.clone();
        }
    }
    let (code, out) = ingress_cmd(&["check"], &vars);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL broker"), "{out}");
}
