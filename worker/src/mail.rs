//! The welcome e-mail: sent over SMTP with lettre, from templates with the username
//! and `LOGIN_URL`, never the password. Templates are built in and can be overridden by files
//! (`MAIL_SUBJECT`, `MAIL_TEMPLATE_FILE`); placeholders: `{username}`, `{email}`, `{login_url}`.

use lettre::{
    message::{header::ContentType, Mailbox},
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use shared::config::ConfigError;

pub const DEFAULT_SUBJECT: &str = "Your account is ready";
/// The notice to the old address after the login e-mail changed (built in; same placeholders,
/// `{email}` being the old address). It does not name the new address.
pub const NOTICE_SUBJECT: &str = "Your login e-mail was changed";
pub const NOTICE_BODY: &str = "Hello,\n\nthe login e-mail of your account {username} was changed.\nThis address ({email}) no longer signs in.\n\nIf you did not ask for this change, contact us at once.\n\nLog in here: {login_url}\n";
pub const DEFAULT_BODY: &str = "Hello,\n\nan account has been created for you.\n\nUsername: {username}\nLog in here: {login_url}\n\nIf you have not set a password yet, use \"Forgot password\" on that page.\n";

#[derive(Clone, Debug)]
pub struct Templates {
    pub subject: String,
    pub body: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            subject: DEFAULT_SUBJECT.into(),
            body: DEFAULT_BODY.into(),
        }
    }
}

impl Templates {
    /// The built-in templates, with `MAIL_SUBJECT` and the body of `MAIL_TEMPLATE_FILE` when set.
    pub fn load(subject: Option<String>, template_file: Option<&str>) -> Result<Self, ConfigError> {
        let mut t = Templates::default();
        if let Some(s) = subject {
            t.subject = s;
        }
        if let Some(path) = template_file {
            t.body = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new("MAIL_TEMPLATE_FILE", format!("cannot be read: {e}")))?;
        }
        Ok(t)
    }

    /// Fills the placeholders in one pass: a value that itself looks like a placeholder (a
    /// username `{login_url}`) is inserted as is, never expanded again.
    pub fn render(text: &str, username: &str, email: &str, login_url: &str) -> String {
        let mut out = String::with_capacity(text.len() + 64);
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let hit = [("{username}", username), ("{email}", email), ("{login_url}", login_url)]
                .into_iter()
                .find(|(p, _)| tail.starts_with(p));
            match hit {
                Some((p, value)) => {
                    out.push_str(value);
                    rest = &tail[p.len()..];
                }
                None => {
                    out.push('{');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[derive(Clone, Debug)]
pub struct MailSettings {
    /// `smtp://host:port` (plain), `smtp://host:587?tls=required` (STARTTLS) or `smtps://host:465`;
    /// credentials as `smtp://user:pass@host`. Never logged.
    pub smtp_url: String,
    pub from: String,
    pub login_url: String,
    pub templates: Templates,
}

/// Why a send failed; `transient` failures are retried.
#[derive(Debug, Clone)]
pub struct MailError {
    pub transient: bool,
    pub message: String,
}

#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    login_url: String,
    templates: Templates,
}

impl Mailer {
    pub fn new(s: &MailSettings) -> Result<Self, ConfigError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&s.smtp_url)
            .map_err(|_| ConfigError::new("SMTP_URL", "is not a valid smtp:// or smtps:// URL"))?
            .timeout(Some(std::time::Duration::from_secs(15)))
            .build();
        let from = s
            .from
            .parse()
            .map_err(|_| ConfigError::new("MAIL_FROM", "is not a valid address"))?;
        Ok(Self {
            transport,
            from,
            login_url: s.login_url.clone(),
            templates: s.templates.clone(),
        })
    }

    /// Connects to the SMTP server and says hello, sending nothing (`worker check`).
    pub async fn test_connection(&self) -> Result<(), String> {
        match self.transport.test_connection().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("the server did not answer the NOOP".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn send_welcome(&self, to: &str, username: &str) -> Result<(), MailError> {
        self.send(to, username, &self.templates.subject, &self.templates.body)
            .await
    }

    /// Tells the old address that the login e-mail changed.
    pub async fn send_email_change_notice(&self, to: &str, username: &str) -> Result<(), MailError> {
        self.send(to, username, NOTICE_SUBJECT, NOTICE_BODY).await
    }

    async fn send(&self, to: &str, username: &str, subject: &str, body: &str) -> Result<(), MailError> {
        let to_box: Mailbox = to.parse().map_err(|_| MailError {
            transient: false,
            message: format!("{to} is not a valid recipient"),
        })?;
        let subject = Templates::render(subject, username, to, &self.login_url);
        let body = Templates::render(body, username, to, &self.login_url);
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to_box)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError {
                transient: false,
                message: format!("building the message: {e}"),
            })?;
        self.transport.send(msg).await.map(|_| ()).map_err(|e| MailError {
            // 5xx replies and messages the client cannot send are final; 4xx replies, timeouts,
            // connection and TLS trouble are worth another try.
            transient: !(e.is_permanent() || e.is_client()),
            message: format!("SMTP: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_placeholders_and_never_mention_a_password_value() {
        let body = Templates::render(DEFAULT_BODY, "jane", "jane@x.io", "https://app.example.com/login");
        assert!(body.contains("Username: jane"));
        assert!(body.contains("https://app.example.com/login"));
        assert!(!body.contains('{'));
    }

    #[test]
    fn values_are_not_expanded_again() {
        let t = "Hi {username}, go to {login_url} ({email}) {unknown} {";
        let out = Templates::render(t, "{login_url}", "a{username}@x.io", "https://l/{email}");
        assert_eq!(
            out,
            "Hi {login_url}, go to https://l/{email} (a{username}@x.io) {unknown} {"
        );
    }
}
