//! Fidelity tests of the Customer.io simulator (`testkit::sim`) against
//! `shared/reference/customerio-api.md`: auth, error shapes, encoding, paging, limits, faults.

use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use testkit::sim::{demo_seed, Api, Fault, FaultKind, SimConfig, SimHandle, Simulator};

const APP_KEY: &str = "sim-app-key";

struct Ctx {
    sim: Simulator,
    c: Client,
}

impl Ctx {
    async fn new(cfg: SimConfig) -> Ctx {
        let sim = Simulator::start(cfg).await.expect("start simulator");
        Ctx { sim, c: Client::new() }
    }

    /// Unthrottled, so tests other than the rate-limit ones never see 429.
    async fn unthrottled() -> Ctx {
        Ctx::new(SimConfig {
            app_rate_limit: None,
            ..SimConfig::default()
        })
        .await
    }

    fn h(&self) -> SimHandle {
        self.sim.handle()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.url())
    }

    async fn app_get(&self, path: &str) -> Response {
        self.c
            .get(self.url(path))
            .bearer_auth(APP_KEY)
            .send()
            .await
            .expect("send")
    }

    async fn app_post(&self, path: &str, body: Value) -> Response {
        self.c
            .post(self.url(path))
            .bearer_auth(APP_KEY)
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    async fn track_put(&self, ident: &str, body: Value) -> Response {
        self.c
            .put(self.url(&format!("/api/v1/customers/{ident}")))
            .basic_auth("sim-site", Some("sim-track-key"))
            .json(&body)
            .send()
            .await
            .expect("send")
    }
}

async fn json_of(r: Response) -> (StatusCode, Value) {
    let s = r.status();
    (s, r.json().await.expect("json body"))
}

fn assert_errors_envelope(v: &Value, status: &str) {
    let e = &v["errors"][0];
    assert_eq!(e["status"], json!(status), "{v}");
    assert!(e["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
}

#[tokio::test]
async fn auth_is_enforced() {
    let t = Ctx::unthrottled().await;
    let r = t.c.get(t.url("/v1/segments")).send().await.unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 401);
    assert_errors_envelope(&v, "401");
    let r = t.c.get(t.url("/v1/segments")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(t.app_get("/v1/segments").await.status(), 200);

    let region = t.url("/api/v1/accounts/region");
    let r =
        t.c.get(&region)
            .basic_auth("sim-site", Some("wrong"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401);
    let r = t.c.get(&region).bearer_auth(APP_KEY).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r =
        t.c.get(&region)
            .basic_auth("sim-site", Some("sim-track-key"))
            .send()
            .await
            .unwrap();
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200);
    assert_eq!(v["url"], json!(t.sim.url()));
    assert_eq!(v["region"], "us");
    assert_eq!(t.track_put("x%40y.z", json!({})).await.status(), 200);
    let put = t.c.put(t.url("/api/v1/customers/x%40y.z")).json(&json!({}));
    let r = put
        .basic_auth("other-site", Some("sim-track-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn not_found_shapes() {
    let t = Ctx::unthrottled().await;
    for path in [
        "/v1/customers/nobody/attributes",
        "/v1/customers/nobody%40example.com/segments?id_type=email",
        "/v1/segments/99",
        "/v1/segments/99/membership",
        "/v1/no-such-route",
    ] {
        let (s, v) = json_of(t.app_get(path).await).await;
        assert_eq!(s, 404, "{path}");
        assert_errors_envelope(&v, "404");
    }
}

#[tokio::test]
async fn percent_encoding_and_case_insensitive_email() {
    let t = Ctx::unthrottled().await;
    let cio = t.h().add_person("jane+tag@example.com", json!({"First Name": "Jane"}));
    for path in [
        "/v1/customers/jane%2Btag%40example.com/attributes?id_type=email",
        "/v1/customers/JANE%2BTAG%40Example.COM/attributes?id_type=email",
    ] {
        let (s, v) = json_of(t.app_get(path).await).await;
        assert_eq!(s, 200, "{path}");
        assert_eq!(v["customer"]["identifiers"]["cio_id"], json!(cio));
        assert_eq!(v["customer"]["identifiers"]["email"], "jane+tag@example.com");
    }
    let (_, v) = json_of(t.app_get("/v1/customers?email=jane+tag@example.com").await).await;
    assert_eq!(v, json!({"results": []}), "raw + decodes as space");
    let (_, v) = json_of(t.app_get("/v1/customers?email=JANE%2Btag%40example.com").await).await;
    assert_eq!(v["results"][0]["cio_id"], json!(cio));
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    let path = format!("/v1/customers/{cio}/segments?id_type=cio_id");
    assert_eq!(json_of(t.app_get(&path).await).await.1, json!({"segments": []}));
}

#[tokio::test]
async fn email_id_type_can_be_disabled() {
    let t = Ctx::new(SimConfig {
        email_id_type_enabled: false,
        app_rate_limit: None,
        ..SimConfig::default()
    })
    .await;
    t.h().add_person_with_id(Some("a@b.c"), Some("42"), json!({}));
    let (s, v) = json_of(t.app_get("/v1/customers/a%40b.c/attributes?id_type=email").await).await;
    assert_eq!(s, 400);
    assert_errors_envelope(&v, "400");
    assert_eq!(t.app_get("/v1/customers/42/attributes").await.status(), 200);
}

#[tokio::test]
async fn attributes_are_stored_as_strings() {
    let t = Ctx::unthrottled().await;
    let h = t.h();
    h.add_person_with_id(
        Some("a@b.c"),
        Some("7"),
        json!({"age": 42, "vip": true, "score": 1.5, "name": "A"}),
    );
    let (s, v) = json_of(t.app_get("/v1/customers/7/attributes").await).await;
    assert_eq!(s, 200);
    let a = &v["customer"]["attributes"];
    assert_eq!(a["age"], "42");
    assert_eq!(a["vip"], "true");
    assert_eq!(a["score"], "1.5");
    assert_eq!(a["id"], "7");
    assert_eq!(a["email"], "a@b.c");
    assert!(a["cio_id"].is_string());
    assert_eq!(v["customer"]["unsubscribed"], false);
    assert_eq!(v["customer"]["devices"], json!([]));
    let r = t
        .track_put("a%40b.c", json!({"created_at": 1700000000, "_update": true}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.person("A@B.C").unwrap().attributes["created_at"], "1700000000");
    assert_eq!(h.person("a@b.c").unwrap().attributes["age"], "42");
}

#[tokio::test]
async fn batch_attribute_lookup() {
    let t = Ctx::unthrottled().await;
    t.h().add_person_with_id(Some("a@b.c"), Some("1"), json!({}));
    let ids: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let (s, v) = json_of(t.app_post("/v1/customers/attributes", json!({ "ids": ids })).await).await;
    assert_eq!(s, 400);
    assert_errors_envelope(&v, "400");
    let r = t.app_post("/v1/customers/attributes", json!({"ids": []})).await;
    assert_eq!(r.status(), 400);
    let r = t
        .app_post("/v1/customers/attributes", json!({"ids": ["1", "nope"]}))
        .await;
    let (s, v) = json_of(r).await;
    assert_eq!(s, 200);
    let list = v["customers"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["customer"]["identifiers"]["id"], "1");
    let path = "/v1/customers/attributes?id_type=email";
    let (_, v) = json_of(t.app_post(path, json!({"ids": ["A@B.C"]})).await).await;
    assert_eq!(v["customers"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn membership_paging() {
    let t = Ctx::unthrottled().await;
    let h = t.h();
    h.add_segment(5, "Big", "manual");
    let emails: Vec<String> = (0..25).map(|i| format!("p{i:02}@example.com")).collect();
    for e in &emails {
        h.add_person(e, json!({}));
        h.add_to_segment(5, e);
    }
    let mut seen = Vec::new();
    let mut start: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &start {
            Some(c) => format!("limit=10&start={c}"),
            None => "limit=10".into(),
        };
        let (s, v) = json_of(t.app_get(&format!("/v1/segments/5/membership?{q}")).await).await;
        assert_eq!(s, 200);
        pages += 1;
        for i in v["identifiers"].as_array().unwrap() {
            seen.push(i["email"].as_str().unwrap().to_string());
            assert!(i["cio_id"].is_string());
        }
        match v.get("next").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(n) => start = Some(n.to_string()),
            None => break,
        }
        assert!(pages < 10, "paging does not terminate");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, emails);
    let (_, v) = json_of(t.app_get("/v1/segments/5/membership").await).await;
    assert_eq!(v["identifiers"].as_array().unwrap().len(), 25);
    assert!(v.get("next").is_none());
    let r = t.app_get("/v1/segments/5/membership?limit=30001").await;
    assert_eq!(r.status(), 400);
    let (_, v) = json_of(t.app_get("/v1/segments/5/customer_count").await).await;
    assert_eq!(v, json!({"count": 25, "segment_id": 5}));
    let (_, v) = json_of(t.app_get("/v1/segments/5").await).await;
    assert_eq!(v["segment"]["type"], "manual");
}

#[tokio::test]
async fn rate_limit_429_shape_and_recovery() {
    let t = Ctx::new(SimConfig::default()).await;
    let began = Instant::now();
    let sends = (0..30).map(|_| t.app_get("/v1/segments"));
    let responses = futures_util::future::join_all(sends).await;
    let elapsed = began.elapsed().as_secs_f64();
    let mut ok = 0;
    let mut limited = 0;
    for r in responses {
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.headers()["retry-after"], "1");
                let v: Value = r.json().await.unwrap();
                let d = v["errors"][0]["detail"].as_str().unwrap();
                assert!(d.starts_with("rate limited to 10 requests per 1s (reference "), "{d}");
                assert_eq!(v["errors"][0]["status"], "429");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // Bucket capacity 10 plus refill at 10/s while the burst was in flight.
    assert!(ok >= 10 && ok as f64 <= 11.0 + 10.0 * elapsed, "ok={ok} in {elapsed}s");
    if elapsed < 1.5 {
        assert!(limited > 0, "no 429 in a {elapsed}s burst");
    }
    assert_eq!(t.h().count_status(429), limited);
    assert_eq!(t.h().app_request_count(), 30);

    testkit::wait_until("the limiter to refill", Duration::from_secs(6), || async {
        (t.app_get("/v1/segments").await.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn rate_limit_without_retry_after_fault() {
    let t = Ctx::unthrottled().await;
    t.h()
        .inject(Fault::new(Api::App, FaultKind::RateLimitNoRetryAfter).with_times(1));
    let r = t.app_get("/v1/segments").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_none());
    assert_errors_envelope(&r.json().await.unwrap(), "429");
    assert_eq!(t.app_get("/v1/segments").await.status(), 200);
}

#[tokio::test]
async fn track_put_update_semantics() {
    let t = Ctx::unthrottled().await;
    let h = t.h();
    let r = t
        .track_put("ghost%40example.com", json!({"plan": "x", "_update": true}))
        .await;
    assert_eq!(json_of(r).await, (StatusCode::OK, json!({})));
    assert!(h.person("ghost@example.com").is_none());

    let r = t.track_put("new%40example.com", json!({"plan": "free", "n": 1})).await;
    assert_eq!(r.status(), 200);
    let p = h.person("new@example.com").expect("created");
    assert_eq!(p.attributes["n"], "1");

    let body = json!({"plan": "pro", "_update": true, "id": "u-1"});
    assert_eq!(t.track_put("NEW%40example.com", body).await.status(), 200);
    let p = h.person("new@example.com").unwrap();
    assert_eq!(p.attributes["plan"], "pro");
    assert_eq!(p.attributes["n"], "1");
    assert!(!p.attributes.contains_key("_update"));
    assert_eq!(p.id.as_deref(), Some("u-1"));

    let body = json!({"email": "renamed@example.com", "_update": true});
    let r = t.track_put(&format!("cio_{}", p.cio_id), body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.person("renamed@example.com").unwrap().cio_id, p.cio_id);
    assert!(h.person("new@example.com").is_none());
    assert_eq!(t.track_put("u-1", json!({"k": "v"})).await.status(), 200);
    assert_eq!(h.person("renamed@example.com").unwrap().attributes["k"], "v");

    let (s, v) = json_of(t.track_put("x", json!([1, 2])).await).await;
    assert_eq!(s, 400);
    assert!(v["meta"]["errors"][0].is_string());
    let puts = h.track_puts();
    assert_eq!(puts.len(), 5);
    assert_eq!(puts[0].identifier, "ghost@example.com");
    assert_eq!(puts[0].body["_update"], true);
}

#[tokio::test]
async fn track_limits() {
    let t = Ctx::unthrottled().await;
    let long = "a".repeat(151);
    let many: serde_json::Map<String, Value> = (0..301).map(|i| (format!("k{i}"), json!(i))).collect();
    for (ident, body) in [
        ("x%40y.z", json!({ long.clone(): "v" })),
        ("x%40y.z", json!({"k": "v".repeat(1001)})),
        ("x%40y.z", Value::Object(many)),
        (long.as_str(), json!({"k": "v"})),
    ] {
        let (s, v) = json_of(t.track_put(ident, body).await).await;
        assert_eq!(s, 400);
        assert!(v["meta"]["errors"][0].is_string(), "{v}");
    }
    assert!(t.h().track_puts().is_empty());
    assert!(t.h().person("x@y.z").is_none());
    let ok = json!({ "a".repeat(150): "v".repeat(1000) });
    assert_eq!(t.track_put("x%40y.z", ok).await.status(), 200);
}

#[tokio::test]
async fn v2_batch() {
    let t = Ctx::unthrottled().await;
    let batch = json!({"batch": [
        {"type": "person", "identifiers": {"email": "b@x.io"}, "action": "identify",
         "attributes": {"plan": "pro", "_update": false}},
        {"type": "person", "identifiers": {"email": "c@x.io", "id": "9"}, "action": "identify"},
        {"type": "person", "identifiers": {"id": "9"}, "action": "explode"},
        {"type": "person", "identifiers": {"email": "nobody@x.io"}, "action": "identify",
         "attributes": {"plan": "x", "_update": true}},
    ]});
    let post = |body: Value| {
        t.c.post(t.url("/api/v2/batch"))
            .basic_auth("sim-site", Some("sim-track-key"))
            .json(&body)
            .send()
    };
    let (s, v) = json_of(post(batch).await.unwrap()).await;
    assert_eq!(s, 207);
    let idx: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["batch_index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, vec![1, 2]);
    assert_eq!(t.h().person("b@x.io").unwrap().attributes["plan"], "pro");
    assert!(t.h().person("nobody@x.io").is_none());
    let big = json!({"batch": [{"type": "person", "identifiers": {"id": "1"},
        "action": "identify", "attributes": {"k": "v".repeat(520 * 1024)}}]});
    assert_eq!(post(big).await.unwrap().status(), 400);
}

#[tokio::test]
async fn fault_status_fires_n_times() {
    let t = Ctx::unthrottled().await;
    t.h().inject(Fault::new(Api::App, FaultKind::Status(503)).with_times(2));
    for _ in 0..2 {
        let (s, v) = json_of(t.app_get("/v1/segments").await).await;
        assert_eq!(s, 503);
        assert_errors_envelope(&v, "503");
    }
    assert_eq!(t.app_get("/v1/segments").await.status(), 200);
    assert_eq!(t.h().count_status(503), 2);
    assert!(t.h().faults().is_empty());

    // A redirect fault points back at the same URL, like the EU-region redirect.
    t.h()
        .inject(Fault::new(Api::Track, FaultKind::Status(301)).with_times(1));
    let region = t.url("/api/v1/accounts/region");
    let r = t.c.get(&region).basic_auth("sim-site", Some("sim-track-key"));
    assert_eq!(r.send().await.unwrap().status(), 200);
    assert_eq!(t.h().count_status(301), 1);
}

#[tokio::test]
async fn fault_scoped_to_contact() {
    let t = Ctx::unthrottled().await;
    let h = t.h();
    h.add_person_with_id(Some("jane@example.com"), Some("j1"), json!({}));
    h.add_person("bob@example.com", json!({}));
    h.inject(
        Fault::new(Api::App, FaultKind::Status(500))
            .with_contact("Jane@Example.com")
            .with_path("/attributes"),
    );
    let bob = "/v1/customers/bob%40example.com/attributes?id_type=email";
    assert_eq!(t.app_get(bob).await.status(), 200);
    let jane = "/v1/customers/jane%40example.com/attributes?id_type=email";
    assert_eq!(t.app_get(jane).await.status(), 500);
    assert_eq!(t.app_get("/v1/customers/j1/attributes").await.status(), 500);
    let jane_segments = "/v1/customers/jane%40example.com/segments?id_type=email";
    assert_eq!(t.app_get(jane_segments).await.status(), 200);
    let r = t.app_post("/v1/customers/attributes", json!({"ids": ["j1"]})).await;
    assert_eq!(r.status(), 500);
    h.clear_faults();
    assert_eq!(t.app_get(jane).await.status(), 200);

    h.inject(Fault::new(Api::Track, FaultKind::Status(503)).with_contact("jane@example.com"));
    assert_eq!(t.track_put("bob%40example.com", json!({"a": 1})).await.status(), 200);
    let (s, v) = json_of(t.track_put("jane%40example.com", json!({"a": 1})).await).await;
    assert_eq!(s, 503);
    assert!(v["meta"]["errors"][0].is_string());
    assert_eq!(h.track_puts().len(), 1);
}

#[tokio::test]
async fn fault_delay_and_reset() {
    let t = Ctx::unthrottled().await;
    let h = t.h();
    h.inject(Fault::new(Api::App, FaultKind::Delay(Duration::from_millis(300))).with_times(1));
    let began = Instant::now();
    assert_eq!(t.app_get("/v1/segments").await.status(), 200);
    assert!(began.elapsed() >= Duration::from_millis(300));

    h.inject(Fault::new(Api::App, FaultKind::Reset).with_times(1));
    let r = t.c.get(t.url("/v1/segments")).bearer_auth(APP_KEY).send().await;
    assert!(r.is_err(), "reset should fail the request: {r:?}");
    assert_eq!(t.app_get("/v1/segments").await.status(), 200);
    let statuses: Vec<u16> = h.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 0, 200]);
    assert_eq!(h.app_request_count(), 2);
}

#[tokio::test]
async fn control_api_and_demo_seed() {
    let t = Ctx::unthrottled().await;
    let post = |path: &str, body: Value| t.c.post(t.url(path)).json(&body).send();
    let (s, v) = json_of(
        post("/_sim/people", json!({"email": "z@z.io", "attributes": {"n": 5}}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let cio = v["cio_id"].as_str().unwrap().to_string();
    let (_, v) = json_of(t.c.get(t.url("/_sim/people/z%40z.io")).send().await.unwrap()).await;
    assert_eq!(v["cio_id"], json!(cio));
    assert_eq!(v["attributes"]["n"], "5");
    post("/_sim/segments", json!({"id": 8, "name": "Eight"})).await.unwrap();
    let r = post("/_sim/segments/8/members", json!({"email": "z@z.io"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(t.h().segment_members(8), vec!["z@z.io".to_string()]);
    let f = json!({"api": "app", "kind": {"status": 502}, "times": 1});
    assert_eq!(post("/_sim/faults", f).await.unwrap().status(), 200);
    assert_eq!(t.app_get("/v1/segments/8").await.status(), 502);
    assert_eq!(t.app_get("/v1/segments/8").await.status(), 200);
    let r =
        t.c.delete(t.url("/_sim/segments/8/members/z%40z.io"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.h().segment_members(8).is_empty());
    let (_, v) = json_of(t.c.get(t.url("/_sim/requests")).send().await.unwrap()).await;
    let apis: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["api"].as_str().unwrap())
        .collect();
    assert_eq!(apis.iter().filter(|a| **a == "app").count(), 2);
    post("/_sim/reset_log", json!({})).await.unwrap();
    assert_eq!(t.h().requests().len(), 1, "only the reset_log call itself");

    let h = t.h();
    demo_seed(&h);
    assert!(h
        .person("jane@example.com")
        .unwrap()
        .attributes
        .contains_key("First Name"));
    assert_eq!(h.people().len(), 6);
    let (_, v) = json_of(t.app_get("/v1/segments").await).await;
    assert_eq!(v["segments"].as_array().unwrap().len(), 4);
    t.sim.shutdown().await;
}
