//! Unit tests of the request rules, one per row of the webhook's input table (README, "Webhook URLs").

use super::*;
use crate::auth::AccessKey;
use axum::http::{header, HeaderValue};

const KEY: &str = "test-access-key";

fn keys() -> AccessKeys {
    AccessKeys::new(vec![
        AccessKey::unlabelled(KEY),
        AccessKey::labelled("crm", "second-key-99"),
    ])
}

fn accept(query: &str, headers: HeaderMap, body: &str) -> Result<Accepted, Rejection> {
    let input = Input {
        query: Some(query),
        headers: &headers,
        body: body.as_bytes(),
    };
    parse(&input, &keys(), Uuid::nil(), Utc::now())
}

fn run(query: &str, headers: HeaderMap, body: &str) -> Result<Parsed, Rejection> {
    accept(query, headers, body).map(|a| a.parsed)
}

fn form() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h
}

fn json() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h
}

fn cmd(r: Result<Parsed, Rejection>) -> SyncV1 {
    match r {
        Ok(Parsed::Command(c)) => c,
        other => panic!("expected a command, got {other:?}"),
    }
}

fn bad_text(r: Result<Parsed, Rejection>) -> String {
    match r {
        Err(Rejection::BadRequest(m)) => m,
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[test]
fn wp_fusion_url_with_json_body_gives_a_command() {
    let c = cmd(run(
        &format!("wpf_action=add&access_key={KEY}&send_notification=true&role=Customer"),
        json(),
        r#"{"email":"Jane@Example.com","id":42,"cio_id":"a3000001","extra":[1]}"#,
    ));
    assert_eq!(c.action, Action::Add);
    assert_eq!(c.contact.email, "Jane@Example.com");
    assert_eq!(c.contact.id.as_deref(), Some("42"));
    assert_eq!(c.contact.cio_id.as_deref(), Some("a3000001"));
    assert!(c.send_notification);
    assert_eq!(c.role.as_deref(), Some("customer"));
    assert_eq!(c.tags, None);
}

#[test]
fn key_is_accepted_from_query_form_header_and_bearer() {
    let body = r#"{"email":"a@b.co"}"#;
    assert!(run(&format!("wpf_action=update&access_key={KEY}"), json(), body).is_ok());
    let mut h = json();
    h.insert("x-access-key", HeaderValue::from_static(KEY));
    assert!(run("wpf_action=update", h, body).is_ok());
    let mut h = json();
    h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer second-key-99"));
    assert!(run("wpf_action=update", h, body).is_ok());
    let c = cmd(run(
        "",
        form(),
        &format!("wpf_action=update_tags&access_key={KEY}&contact_id=a%40b.co"),
    ));
    assert_eq!(c.contact.email, "a@b.co");
}

#[test]
fn missing_or_wrong_key_is_forbidden_even_without_an_action() {
    assert_eq!(
        run("wpf_action=add", json(), r#"{"email":"a@b.co"}"#),
        Err(Rejection::Forbidden)
    );
    assert_eq!(run("access_key=nope", json(), ""), Err(Rejection::Forbidden));
    assert_eq!(run("", HeaderMap::new(), ""), Err(Rejection::Forbidden));
}

#[test]
fn test_action_needs_a_key_and_nothing_else() {
    assert_eq!(
        run(&format!("wpf_action=TEST&access_key={KEY}"), HeaderMap::new(), ""),
        Ok(Parsed::Test)
    );
}

#[test]
fn actions_are_case_insensitive_and_aliases_work() {
    let body = r#"{"email":"a@b.co"}"#;
    assert_eq!(
        cmd(run(&format!("wpf_action=Update_Tags&access_key={KEY}"), json(), body)).action,
        Action::UpdateTags
    );
    assert_eq!(
        cmd(run(&format!("wpf_action=add_user&access_key={KEY}"), json(), body)).action,
        Action::Add
    );
    assert_eq!(
        cmd(run(&format!("wpf_action=update_user&access_key={KEY}"), json(), body)).action,
        Action::Update
    );
}

#[test]
fn missing_and_unknown_actions_are_named() {
    assert!(bad_text(run(&format!("access_key={KEY}"), json(), "")).contains("wpf_action is missing"));
    assert!(bad_text(run(&format!("wpf_action=&access_key={KEY}"), json(), "")).contains("wpf_action is missing"));
    assert!(
        bad_text(run(&format!("wpf_action=delete&access_key={KEY}"), json(), ""))
            .contains("unknown wpf_action 'delete'")
    );
}

#[test]
fn body_must_be_a_json_object() {
    let q = format!("wpf_action=update&access_key={KEY}");
    assert!(bad_text(run(&q, json(), "email=a@b.co")).contains("not valid JSON"));
    assert!(bad_text(run(&q, json(), "[1,2]")).contains("JSON object"));
    assert!(bad_text(run(&q, json(), r#"{"email":{"x":1}}"#)).contains("'email' must be a string"));
}

#[test]
fn contact_email_is_required_and_checked() {
    let q = format!("wpf_action=update&access_key={KEY}");
    assert!(bad_text(run(&q, json(), "{}")).contains("no contact e-mail"));
    assert!(bad_text(run(&q, json(), r#"{"email":""}"#)).contains("no contact e-mail"));
    assert!(bad_text(run(&q, json(), r#"{"email":"not-an-address"}"#)).contains("malformed contact e-mail"));
    // Without a JSON body the query's email or contact_id is used; a JSON body without email falls back too.
    assert_eq!(
        cmd(run(&format!("{q}&email=a%2Bb%40c.io"), HeaderMap::new(), ""))
            .contact
            .email,
        "a+b@c.io"
    );
    assert_eq!(
        cmd(run(&format!("{q}&contact_id=x@y.io"), json(), "{}")).contact.email,
        "x@y.io"
    );
}

#[test]
fn send_notification_values() {
    let body = r#"{"email":"a@b.co"}"#;
    for (v, want) in [
        ("true", true),
        ("1", true),
        ("YES", true),
        ("false", false),
        ("0", false),
        ("", false),
    ] {
        let c = cmd(run(
            &format!("wpf_action=add&access_key={KEY}&send_notification={v}"),
            json(),
            body,
        ));
        assert_eq!(c.send_notification, want, "{v}");
    }
    assert!(bad_text(run(
        &format!("wpf_action=add&access_key={KEY}&send_notification=maybe"),
        json(),
        body
    ))
    .contains("send_notification"));
    // Only `add` sends welcome e-mails.
    assert!(
        !cmd(run(
            &format!("wpf_action=update&access_key={KEY}&send_notification=1"),
            json(),
            body
        ))
        .send_notification
    );
}

#[test]
fn tags_are_numeric_ids_for_update_tags_only() {
    let body = r#"{"email":"a@b.co"}"#;
    let c = cmd(run(
        &format!("wpf_action=update_tags&access_key={KEY}&tags=7,%201,7"),
        json(),
        body,
    ));
    assert_eq!(c.tags, Some(vec![1, 7]));
    assert!(bad_text(run(
        &format!("wpf_action=update_tags&access_key={KEY}&tags=1,VIP"),
        json(),
        body
    ))
    .contains("tags must be"));
    assert_eq!(
        cmd(run(
            &format!("wpf_action=update_tags&access_key={KEY}&tags="),
            json(),
            body
        ))
        .tags,
        None
    );
    assert_eq!(
        cmd(run(&format!("wpf_action=update&access_key={KEY}&tags=1"), json(), body)).tags,
        None
    );
}

#[test]
fn role_is_validated_and_ignored_for_update_tags() {
    let body = r#"{"email":"a@b.co"}"#;
    assert!(bad_text(run(
        &format!("wpf_action=add&access_key={KEY}&role=a%20b"),
        json(),
        body
    ))
    .contains("role"));
    assert_eq!(
        cmd(run(
            &format!("wpf_action=update_tags&access_key={KEY}&role=customer"),
            json(),
            body
        ))
        .role,
        None
    );
}

#[test]
fn rejections_do_not_echo_the_request() {
    let text = bad_text(run(
        &format!("wpf_action=add&access_key={KEY}"),
        json(),
        r#"{"email":"secret-value"}"#,
    ));
    assert!(!text.contains("secret-value") && !text.contains(KEY), "{text}");
}

#[test]
fn the_label_of_the_key_used_comes_with_the_request() {
    let body = r#"{"email":"a@b.co"}"#;
    let a = accept("wpf_action=update&access_key=second-key-99", json(), body).unwrap();
    assert_eq!(keys().label(a.label), "crm");
    let a = accept(&format!("wpf_action=update&access_key={KEY}"), json(), body).unwrap();
    assert_eq!(a.label, LabelId::NONE);
}

#[test]
fn the_key_may_be_the_password_of_basic_auth() {
    // https://journey:second-key-99@host/ → Authorization: Basic base64("journey:second-key-99")
    let mut h = json();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Basic am91cm5leTpzZWNvbmQta2V5LTk5"),
    );
    let a = accept("wpf_action=update", h, r#"{"email":"a@b.co"}"#).unwrap();
    assert_eq!(keys().label(a.label), "crm");
}

#[test]
fn several_distinct_keys_are_refused_even_when_one_is_valid() {
    let body = r#"{"email":"a@b.co"}"#;
    let several = Err(Rejection::BadRequest(SEVERAL_KEYS.into()));
    assert_eq!(
        run(
            &format!("wpf_action=update&access_key={KEY}&access_key=second-key-99"),
            json(),
            body
        ),
        several
    );
    let mut h = json();
    h.insert("x-access-key", HeaderValue::from_static("second-key-99"));
    assert_eq!(run(&format!("wpf_action=update&access_key={KEY}"), h, body), several);
    // The same key twice is one key.
    let mut h = json();
    h.insert("x-access-key", HeaderValue::from_static(KEY));
    assert!(run(&format!("wpf_action=update&access_key={KEY}"), h, body).is_ok());
    // A form body offering another key than the query's.
    assert_eq!(
        run(
            &format!("access_key={KEY}"),
            form(),
            "wpf_action=update&access_key=second-key-99&email=a%40b.co"
        ),
        several
    );
}

#[test]
fn a_key_in_the_head_is_judged_before_the_body() {
    let k = keys();
    let h = json();
    // Wrong key: refused by the head alone.
    assert!(matches!(
        head(Some("access_key=wrong-key-000"), &h, &k),
        Err(Rejection::Forbidden)
    ));
    // No key and a body that cannot carry one (not a form): refused by the head alone.
    assert!(matches!(
        head(Some("wpf_action=add"), &h, &k),
        Err(Rejection::Forbidden)
    ));
    // No key but a form body: the body is needed.
    assert!(head(Some("wpf_action=add"), &form(), &k).is_ok());
    // A valid key passes the head whatever the body turns out to be.
    let h2 = json();
    let q = format!("access_key={KEY}&wpf_action=add");
    let hd = head(Some(&q), &h2, &k).unwrap();
    assert!(matches!(
        finish(hd, b"{not json", &k, Uuid::nil(), Utc::now()),
        Err(Rejection::BadRequest(m)) if m.contains("not valid JSON")
    ));
}

#[test]
fn bad_json_from_a_caller_without_a_key_is_forbidden_not_described() {
    assert_eq!(run("wpf_action=add", json(), "{not json"), Err(Rejection::Forbidden));
}
