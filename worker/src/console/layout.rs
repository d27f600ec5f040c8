//! What every console page shares and what may be shown before an operator has signed in: the
//! frame (navigation, operator, CSRF token), rendering a template, and the error page. It knows
//! nothing of sessions, so that the sign-in checks can answer with a page without a loop back.

use askama::Template;
use axum::{
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};

/// The frame around a page: the active section, the signed-in operator and the CSRF token of
/// the page's forms (all empty before sign-in).
pub struct Chrome {
    pub active: &'static str,
    pub operator: String,
    pub csrf: String,
}

impl Chrome {
    pub fn anonymous() -> Self {
        Self {
            active: "",
            operator: String::new(),
            csrf: String::new(),
        }
    }
}

/// Renders a page; a template error is logged and answered 500 without its detail.
pub fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!("console: template failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html", config = "src/console/askama.toml")]
struct ErrorPage {
    c: Chrome,
    status: u16,
    message: String,
}

/// The error page: `message` must be safe to show (it is escaped, never a secret).
pub fn error_page(status: StatusCode, message: &str, chrome: Option<Chrome>) -> Response {
    let page = ErrorPage {
        c: chrome.unwrap_or_else(Chrome::anonymous),
        status: status.as_u16(),
        message: message.to_string(),
    };
    (status, render(&page)).into_response()
}
