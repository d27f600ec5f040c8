//! Who may use the console, and protection against requests forged by other sites.
//!
//! - Operator tokens (`CONSOLE_TOKENS`) are compared in constant time, as SHA-256 digests, against
//!   every configured token (no early exit, so timing says nothing about which one matched).
//! - Signing in sets a session cookie: a random 256-bit id, never the token, `HttpOnly`,
//!   `SameSite=Strict`, `Secure` when configured. Sessions live in this process (a restart signs
//!   everyone out) for [`SESSION_TTL`]; the store keeps only digests of their ids.
//! - Scripts may instead send `Authorization: Bearer TOKEN` to the JSON API.
//! - Every state-changing request (any method but GET/HEAD) is refused when it comes from another
//!   origin (`Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is not this
//!   host), and, for a cookie session, unless it carries the session's CSRF token (form field
//!   `csrf` or header `X-CSRF-Token`). The sign-in form is protected by a double-submit cookie.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    body::{to_bytes, Body},
    extract::{Request, State},
    http::{header, HeaderMap, Method, StatusCode},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::{rand_core::UnwrapErr, rngs::SysRng, Rng};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{layout, settings::OperatorToken, AppState};

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cio_console_session";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "cio_console_login";
/// Largest form or JSON body a state-changing request may carry.
pub const MAX_BODY: usize = 256 * 1024;

/// The signed-in operator, put on every authenticated request.
#[derive(Clone, Debug)]
pub struct Operator {
    pub label: String,
    /// The session's CSRF token (empty for bearer-token requests, which need none).
    pub csrf: String,
}

struct Session {
    label: String,
    csrf: String,
    expires: Instant,
}

/// The tokens (as digests) and the live sessions.
pub struct Auth {
    tokens: Vec<(String, [u8; 32])>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    secure_cookie: bool,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 32 random bytes from the OS generator, URL-safe base64.
pub fn random_id() -> String {
    let mut b = [0u8; 32];
    UnwrapErr(SysRng).fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Constant-time equality of two strings (lengths may differ).
pub fn same_secret(a: &str, b: &str) -> bool {
    bool::from(digest(a).ct_eq(&digest(b)))
}

impl Auth {
    pub fn new(tokens: &[OperatorToken], secure_cookie: bool) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|t| (t.label.clone(), digest(t.secret.expose_secret())))
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            secure_cookie,
        }
    }

    /// The label of the token `given`, if it is one. Looks at every token.
    pub fn check_token(&self, given: &str) -> Option<String> {
        let d = digest(given);
        let mut found = None;
        for (label, t) in &self.tokens {
            if bool::from(t.ct_eq(&d)) {
                found = Some(label.clone());
            }
        }
        found
    }

    /// Starts a session; returns the cookie value.
    pub fn open_session(&self, label: &str) -> String {
        let id = random_id();
        let now = Instant::now();
        let mut s = self.sessions.lock().expect("session store");
        if s.len() >= MAX_SESSIONS {
            s.retain(|_, v| v.expires > now);
            while s.len() >= MAX_SESSIONS {
                let oldest = *s.iter().min_by_key(|(_, v)| v.expires).expect("not empty").0;
                s.remove(&oldest);
            }
        }
        s.insert(
            digest(&id),
            Session {
                label: label.to_string(),
                csrf: random_id(),
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    fn session(&self, cookie: &str) -> Option<Operator> {
        let key = digest(cookie);
        let mut s = self.sessions.lock().expect("session store");
        match s.get(&key) {
            Some(v) if v.expires > Instant::now() => Some(Operator {
                label: v.label.clone(),
                csrf: v.csrf.clone(),
            }),
            Some(_) => {
                s.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn close_session(&self, cookie: &str) {
        self.sessions.lock().expect("session store").remove(&digest(cookie));
    }

    /// `Set-Cookie` value for a cookie of this console (`max_age` 0 deletes it).
    pub fn cookie(&self, name: &str, value: &str, path: &str, max_age: Duration) -> String {
        format!(
            "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{}",
            max_age.as_secs(),
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }
}

/// The value of cookie `name` in the request.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Refuses a request that a browser says comes from another site or origin.
pub fn check_same_origin(headers: &HeaderMap) -> Result<(), String> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Err(format!(
                "cross-site request refused (Sec-Fetch-Site: {site}): use the console's own pages"
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("?");
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        if host.is_empty() || !authority.eq_ignore_ascii_case(host) {
            return Err("cross-origin request refused (its Origin is not this console)".into());
        }
    }
    Ok(())
}

fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

fn is_public(path: &str) -> bool {
    matches!(path, "/login" | "/healthz" | "/favicon.ico") || path.starts_with("/static/")
}

/// A refusal in the form the client expects (JSON for the API, a page otherwise).
pub fn refuse(status: StatusCode, api: bool, message: &str) -> Response {
    if api {
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    } else {
        layout::error_page(status, message, None)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The middleware in front of every route: origin checks, authentication, CSRF.
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let api = is_api(&path);
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD);
    if changes_state {
        if let Err(why) = check_same_origin(req.headers()) {
            tracing::warn!(%path, "console: {why}");
            return refuse(StatusCode::FORBIDDEN, api, &why);
        }
    }
    if is_public(&path) {
        return next.run(req).await;
    }
    let (operator, by_token) = match bearer(req.headers()).filter(|_| api) {
        Some(t) => match st.auth.check_token(t) {
            Some(label) => (
                Operator {
                    label,
                    csrf: String::new(),
                },
                true,
            ),
            None => {
                tracing::warn!(%path, "console: refused an invalid bearer token");
                return refuse(StatusCode::UNAUTHORIZED, true, "invalid operator token");
            }
        },
        None => match cookie_value(req.headers(), SESSION_COOKIE).and_then(|c| st.auth.session(&c)) {
            Some(op) => (op, false),
            None if api => {
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    true,
                    "sign in first, or send Authorization: Bearer <operator token>",
                )
            }
            None if changes_state => {
                return refuse(StatusCode::UNAUTHORIZED, false, "your session has ended: sign in again")
            }
            None => {
                let next_page = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let target = format!(
                    "/login?next={}",
                    percent_encoding::utf8_percent_encode(next_page, percent_encoding::NON_ALPHANUMERIC)
                );
                return Redirect::to(&target).into_response();
            }
        },
    };
    let mut req = req;
    if changes_state && !by_token {
        match csrf_of(req).await {
            Ok((r, Some(given))) if same_secret(&given, &operator.csrf) => req = r,
            Ok(_) => {
                tracing::warn!(%path, operator = %operator.label, "console: refused a request without a valid CSRF token");
                return refuse(
                    StatusCode::FORBIDDEN,
                    api,
                    "missing or wrong CSRF token: reload the page and try again",
                );
            }
            Err(resp) => return resp,
        }
    }
    req.extensions_mut().insert(operator);
    next.run(req).await
}

/// The CSRF token a request carries (header, or the `csrf` field of a form body), and the request
/// rebuilt with its body.
async fn csrf_of(req: Request) -> Result<(Request, Option<String>), Response> {
    if let Some(h) = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        let h = h.to_string();
        return Ok((req, Some(h)));
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, false, "the form is too large"))?;
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned());
    Ok((Request::from_parts(parts, Body::from(bytes)), token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use secrecy::SecretString;

    fn auth() -> Auth {
        Auth::new(
            &[
                OperatorToken {
                    label: "alice".into(),
                    secret: SecretString::from("alice-token-0123456789"),
                },
                OperatorToken {
                    label: "bob".into(),
                    secret: SecretString::from("bob-token-0123456789"),
                },
            ],
            false,
        )
    }

    #[test]
    fn tokens_match_exactly() {
        let a = auth();
        assert_eq!(a.check_token("bob-token-0123456789").as_deref(), Some("bob"));
        assert_eq!(a.check_token("bob-token-012345678"), None);
        assert_eq!(a.check_token(""), None);
    }

    #[test]
    fn sessions_are_not_the_token_and_end_on_sign_out() {
        let a = auth();
        let id = a.open_session("alice");
        assert!(!id.contains("alice-token"));
        let op = a.session(&id).unwrap();
        assert_eq!(op.label, "alice");
        assert_eq!(op.csrf.len(), 43);
        assert!(a.session("forged").is_none());
        a.close_session(&id);
        assert!(a.session(&id).is_none());
        let c = a.cookie(SESSION_COOKIE, &id, "/", SESSION_TTL);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
    }

    #[test]
    fn other_origins_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8088"));
        assert!(check_same_origin(&h).is_ok(), "scripts send neither header");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8088"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_same_origin(&h).is_ok());
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(
            check_same_origin(&h).is_err(),
            "another port of the same host is another origin"
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9999"));
        assert!(check_same_origin(&h).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_same_origin(&h).is_err());
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; cio_console_session=xyz"));
        assert_eq!(cookie_value(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie_value(&h, "b"), None);
    }
}
