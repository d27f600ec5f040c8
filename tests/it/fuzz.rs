//! Property test of the ingress request handling: whatever arrives — random query strings,
//! headers and bodies, random bytes, deep or huge JSON, invalid UTF-8, odd e-mails — the answer is
//! a 2xx or a 4xx, never a panic, and never a 5xx other than the broker's 503.

use axum::{body::Body, http::Request};
use proptest::prelude::*;
use testkit::{env::ACCESS_KEY, TestEnv};
use tower::ServiceExt;

fn query_part() -> impl Strategy<Value = String> {
    let keys = prop_oneof![
        Just("wpf_action".to_string()),
        Just("access_key".to_string()),
        Just("email".to_string()),
        Just("contact_id".to_string()),
        Just("send_notification".to_string()),
        Just("role".to_string()),
        Just("tags".to_string()),
        Just("async".to_string()),
        "[a-z_%&=+]{0,12}",
    ];
    let values = prop_oneof![
        Just("add".to_string()),
        Just("update_tags".to_string()),
        Just("UPDATE".to_string()),
        Just("test".to_string()),
        Just(ACCESS_KEY.to_string()),
        Just("jane%40example.com".to_string()),
        Just("a%2Bb%40c.io".to_string()),
        Just("1,2,x".to_string()),
        Just("%FF%FE%00".to_string()),
        "[ -~]{0,40}",
        any::<Vec<u8>>().prop_map(|b| b.iter().map(|c| format!("%{c:02X}")).collect()),
    ];
    (keys, values).prop_map(|(k, v)| format!("{k}={v}"))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        any::<Vec<u8>>(),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        Just(br#"{"email":"jane@example.com"}"#.to_vec()),
        "[ -~]{0,60}"
            .prop_map(|e| serde_json::to_vec(&serde_json::json!({"email": e, "id": 7, "cio_id": null})).unwrap()),
        (1usize..5000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d)).into_bytes()),
        (1usize..3000).prop_map(|d| format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d)).into_bytes()),
        (60_000usize..70_000).prop_map(|n| format!(r#"{{"email":"a@b.co","x":"{}"}}"#, "y".repeat(n)).into_bytes()),
        Just(vec![
            0x7b, 0x22, 0x65, 0x6d, 0x61, 0x69, 0x6c, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d
        ]),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_string())),
        Just(Some("application/x-www-form-urlencoded".to_string())),
        Just(Some("text/plain; charset=utf-8".to_string())),
        "[ -~]{0,30}".prop_map(Some),
    ]
}

#[test]
fn any_request_gets_a_2xx_or_4xx_or_the_brokers_503() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (env, app) = rt.block_on(async {
        let env = TestEnv::new().await;
        let state = ingress::state(&env.ingress_settings());
        state.publisher.ensure_connected().await.unwrap();
        (env, ingress::router(state))
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::collection::vec(query_part(), 0..6),
        body(),
        content_type(),
        prop::option::of("[ -~]{0,40}"),
        prop::option::of("[ -~]{0,40}"),
        prop_oneof![Just("POST"), Just("GET"), Just("PUT"), Just("PATCH")],
    );
    runner
        .run(&strategy, |(query, body, ctype, header_key, bearer, method)| {
            let uri = format!("/?{}", query.join("&"));
            let mut req = Request::builder().method(method).uri(uri.as_str());
            if let Some(c) = &ctype {
                req = req.header("content-type", c.as_str());
            }
            if let Some(k) = &header_key {
                req = req.header("x-access-key", k.as_str());
            }
            if let Some(b) = &bearer {
                req = req.header("authorization", format!("Bearer {b}"));
            }
            let Ok(req) = req.body(Body::from(body.clone())) else {
                return Ok(()); // not a valid HTTP request at all (e.g. a header with control characters)
            };
            let status = rt.block_on(app.clone().oneshot(req)).unwrap().status().as_u16();
            prop_assert!(
                matches!(status, 200 | 400 | 403 | 405 | 413 | 503),
                "status {status} for {method} {uri} with {} body bytes",
                body.len()
            );
            Ok(())
        })
        .unwrap();
    drop(app);
    rt.block_on(async move { drop(env) });
}
