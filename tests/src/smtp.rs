//! A small SMTP sink for tests: a real TCP server speaking enough SMTP for lettre (EHLO/HELO,
//! MAIL FROM, RCPT TO, DATA, RSET, NOOP, QUIT). It keeps every accepted message with its envelope
//! and raw data, and can refuse the next N messages with a given reply code (e.g. `451` or `550`)
//! at the end of DATA, so that tests see lettre's real error paths.

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// One message as received: the envelope and the raw data (dot-unstuffed, without the final `.`).
#[derive(Clone, Debug)]
pub struct Mail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
}

#[derive(Default)]
struct State {
    accepted: Vec<Mail>,
    refused: Vec<(u16, Mail)>,
    /// Reply code and how many more messages get it.
    fail: Option<(u16, u32)>,
}

/// A running sink; dropping it stops the server.
pub struct SmtpSink {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl SmtpSink {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp sink");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        let (st, token) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = token.cancelled() => return,
                };
                let Ok((sock, _)) = conn else { continue };
                let (st, token) = (st.clone(), token.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = session(sock, st) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        SmtpSink { addr, state, stop }
    }

    /// `smtp://127.0.0.1:PORT` (plain SMTP, as lettre's `from_url` reads it).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Mail settings pointing at this sink, with the default templates.
    pub fn mail_settings(&self, login_url: &str) -> worker::mail::MailSettings {
        worker::mail::MailSettings {
            smtp_url: self.url(),
            from: "Accounts <accounts@example.org>".into(),
            login_url: login_url.into(),
            templates: worker::mail::Templates::default(),
        }
    }

    /// Messages accepted (answered 250), in order.
    pub fn messages(&self) -> Vec<Mail> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Messages refused by [`SmtpSink::fail_next`], with the code they got.
    pub fn refused(&self) -> Vec<(u16, Mail)> {
        self.state.lock().unwrap().refused.clone()
    }

    /// Answers `code` at the end of DATA for the next `n` messages (instead of 250).
    pub fn fail_next(&self, code: u16, n: u32) {
        self.state.lock().unwrap().fail = (n > 0).then_some((code, n));
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The envelope address inside `MAIL FROM:<a> …` / `RCPT TO:<a> …`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(a), Some(b)) if a < b => arg[a + 1..b].to_string(),
        _ => arg.split_whitespace().next().unwrap_or("").to_string(),
    }
}

async fn session(sock: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 cio-sync-test-sink ESMTP ready\r\n").await?;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
        let upper = verb.to_ascii_uppercase();
        let reply: &[u8] = match upper.as_str() {
            "EHLO" => b"250-cio-sync-test-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
            "HELO" => b"250 cio-sync-test-sink\r\n",
            "MAIL" if rest.to_ascii_uppercase().starts_with("FROM:") => {
                from = Some(address(&rest[5..]));
                rcpts.clear();
                b"250 2.1.0 OK\r\n"
            }
            "RCPT" if rest.to_ascii_uppercase().starts_with("TO:") => {
                if from.is_none() {
                    b"503 5.5.1 MAIL first\r\n"
                } else {
                    rcpts.push(address(&rest[3..]));
                    b"250 2.1.5 OK\r\n"
                }
            }
            "DATA" if from.is_none() || rcpts.is_empty() => b"503 5.5.1 MAIL and RCPT first\r\n",
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = Vec::new();
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    let unstuffed = if line.starts_with(b"..") { &line[1..] } else { &line[..] };
                    data.extend_from_slice(unstuffed);
                }
                let mail = Mail {
                    mail_from: from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpts),
                    data: String::from_utf8_lossy(&data).into_owned(),
                };
                let failure = {
                    let mut st = state.lock().unwrap();
                    let failure = match st.fail {
                        Some((code, n)) => {
                            st.fail = (n > 1).then_some((code, n - 1));
                            Some(code)
                        }
                        None => None,
                    };
                    match failure {
                        Some(code) => st.refused.push((code, mail)),
                        None => st.accepted.push(mail),
                    }
                    failure
                };
                match failure {
                    Some(code) => {
                        let msg = format!("{code} simulated failure by the test sink\r\n");
                        w.write_all(msg.as_bytes()).await?;
                        continue;
                    }
                    None => b"250 2.0.0 OK queued\r\n",
                }
            }
            "RSET" => {
                from = None;
                rcpts.clear();
                b"250 2.0.0 OK\r\n"
            }
            "NOOP" => b"250 2.0.0 OK\r\n",
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 Command not implemented\r\n",
        };
        w.write_all(reply).await?;
    }
}
