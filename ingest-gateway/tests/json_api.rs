//! JSON intake, form registration, project settings, health endpoints and the broker-down
//! path, against the local stack.

mod support;

use std::time::{Duration, Instant};

use fieldforce_kafka::catalog::{Catalog, FORMS, PROJECT_SETTINGS, SUBMISSIONS_RAW};
use serde_json::json;
use support::{CENSUS_TOKEN, DEV_TOKEN, Gateway, fixture, new_id, read_records, test_config};

const QUIET: Duration = Duration::from_secs(2);

#[tokio::test]
async fn json_submission_single_and_shapes() {
    let gateway = Gateway::start(test_config()).await;
    let own_id = new_id();
    let kobo_id = format!("uuid:{}", new_id());
    let export_uuid = new_id();

    let own = gateway
        .post_json(
            "/v1/submissions",
            DEV_TOKEN,
            &json!({
                "id": own_id, "form_id": "market_prices", "form_version": "3",
                "project_id": "census", "device_id": "app-9",
                "fields": {"prices": {"maize": "120", "beans": ""}, "$where": "x", "org_id": "evil"}
            }),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.body);
    assert_eq!(own.headers["content-type"], "application/json");

    let kobo = gateway
        .post_json(
            "/v1/submissions",
            DEV_TOKEN,
            &json!({"id": "transport", "submission": {
                "transport": {"modes": ["ambulance", "bicycle"], "boat": null},
                "meta": {"instanceID": kobo_id}
            }}),
        )
        .await;
    assert_eq!(kobo.status, 201, "{}", kobo.body);

    let export = gateway
        .post_json(
            "/v1/submissions",
            DEV_TOKEN,
            &json!({"id": "movie_night", "submission": {
                "_id": 394565, "_uuid": export_uuid, "_submission_time": "2014-10-10T13:16:31",
                "_status": "submitted_via_web", "_geolocation": [null, null],
                "meta/instanceID": format!("uuid:{export_uuid}"),
                "snack/drink": "soda", "snack/food": "popcorn", "formhub/uuid": "f00d"
            }}),
        )
        .await;
    assert_eq!(export.status, 201, "{}", export.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 3, QUIET).await;
    assert_eq!(records.len(), 3);
    let by_key = |key: &str| records.iter().find(|r| r.key == key).unwrap().value.clone();

    let own = by_key(&own_id);
    assert_eq!(own["source"], "json");
    assert_eq!(
        own["org_id"], "demo",
        "organisation from the token, not the body"
    );
    assert_eq!(own["project_id"], "census");
    assert_eq!(own["form_version"], "3");
    assert_eq!(own["device_id"], "app-9");
    assert_eq!(own["fields"]["prices"], json!({"maize": "120"}));
    assert_eq!(own["fields"]["%24where"], "x");

    let kobo = by_key(&kobo_id);
    assert_eq!(kobo["form_id"], "transport");
    assert_eq!(
        kobo["fields"]["transport"],
        json!({"modes": ["ambulance", "bicycle"]})
    );

    let export = by_key(&format!("uuid:{export_uuid}"));
    assert_eq!(export["form_id"], "movie_night");
    assert_eq!(
        export["fields"]["snack"],
        json!({"drink": "soda", "food": "popcorn"})
    );
    assert!(
        export["fields"].get("_id").is_none(),
        "client _id never trusted"
    );
    assert!(export["fields"].get("_submission_time").is_none());
    assert!(export["received_at_ms"].as_i64().unwrap() > 1_700_000_000_000);
    gateway.stop().await;
}

#[tokio::test]
async fn json_rejects_missing_id_and_empty() {
    let gateway = Gateway::start(test_config()).await;

    let missing = gateway
        .post_json(
            "/v1/submissions",
            DEV_TOKEN,
            &json!({"form_id": "f", "fields": {"a": "1"}}),
        )
        .await;
    assert_eq!(missing.status, 400, "{}", missing.body);
    let body: serde_json::Value = serde_json::from_str(&missing.body).unwrap();
    assert_eq!(body["error"]["code"], "id_missing");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("id is missing")
    );

    let empty = gateway
        .post_json(
            "/v1/submissions",
            DEV_TOKEN,
            &json!({"id": "transport", "submission": {}}),
        )
        .await;
    assert_eq!(empty.status, 400, "{}", empty.body);
    assert!(
        empty.body.contains("empty and has no instanceID"),
        "{}",
        empty.body
    );

    let not_json = gateway
        .send(
            "POST",
            "/v1/submissions",
            &[("authorization", format!("Bearer {DEV_TOKEN}"))],
            "{oops",
        )
        .await;
    assert_eq!(not_json.status, 400);

    let unauthenticated = gateway.send("POST", "/v1/submissions", &[], "{}").await;
    assert_eq!(unauthenticated.status, 401);
    assert!(
        unauthenticated.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    let forbidden = gateway
        .post_json(
            "/v1/submissions",
            CENSUS_TOKEN,
            &json!({"id": new_id(), "form_id": "f", "project_id": "payroll", "fields": {"a": "1"}}),
        )
        .await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    gateway.stop().await;
}

#[tokio::test]
async fn json_batch_reports_each_item() {
    let mut config = test_config();
    config.gateway.max_batch_items = 4;
    let gateway = Gateway::start(config).await;
    let first = new_id();
    let second = new_id();
    let item = |id: &str, answer: &str| json!({"id": id, "form_id": "f", "fields": {"q": answer}});

    let answer = gateway
        .post_json(
            "/v1/submissions/batch",
            DEV_TOKEN,
            &json!({"submissions": [
                item(&first, "a"),
                item(&second, "b"),
                item(&first, "a"),
                {"form_id": "f", "fields": {"q": "c"}}
            ]}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0]["status_code"], 201);
    assert_eq!(results[1]["status_code"], 201);
    assert_eq!(
        results[2]["status_code"], 201,
        "in-batch resend acknowledged"
    );
    assert_eq!(results[3]["status_code"], 400);
    assert_eq!(results[3]["error"]["code"], "id_missing");
    assert_eq!(results[3]["index"], 3);

    let too_many = gateway
        .post_json(
            "/v1/submissions/batch",
            DEV_TOKEN,
            &json!([
                item("1", "a"),
                item("2", "a"),
                item("3", "a"),
                item("4", "a"),
                item("5", "a")
            ]),
        )
        .await;
    assert_eq!(too_many.status, 413);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 2, QUIET).await;
    assert_eq!(records.len(), 2, "the resent item adds no record");
    gateway.stop().await;
}

#[tokio::test]
async fn form_registration_publishes_definition() {
    let gateway = Gateway::start(test_config()).await;
    let xform = fixture("water_points.xform.xml", "", "");

    let answer = gateway
        .send(
            "POST",
            "/v1/projects/census/forms",
            &[
                ("authorization", format!("Bearer {DEV_TOKEN}")),
                ("content-type", "text/xml".to_owned()),
            ],
            xform,
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    let records = read_records(&gateway.config, &gateway.topic(FORMS), 1, QUIET).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, "demo/census/water_points/2024031501");
    assert!(
        records[0]
            .headers
            .contains(&("fieldforce-schema".into(), "form-definition/1".into()))
    );
    let form = &records[0].value;
    assert_eq!(form["title"], "Water points");
    let field = |path: &str| {
        form["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("{path} missing"))
            .clone()
    };
    assert_eq!(field("site_name")["required"], true);
    assert_eq!(field("functional")["data_type"], "select1");
    assert_eq!(
        field("functional")["choices"],
        json!(["yes", "no", "partly"])
    );
    assert_eq!(field("location")["data_type"], "geopoint");
    assert_eq!(field("photo")["data_type"], "binary");
    assert_eq!(field("visit")["repeat"], true);
    assert_eq!(field("visit/visit_date")["data_type"], "date");
    assert_eq!(field("meta/instanceID")["required"], false);

    let doctype = gateway
        .send(
            "POST",
            "/v1/projects/census/forms",
            &[("authorization", format!("Bearer {DEV_TOKEN}"))],
            "<!DOCTYPE h:html [<!ENTITY a \"b\">]><h:html/>",
        )
        .await;
    assert_eq!(doctype.status, 400);
    gateway.stop().await;
}

#[tokio::test]
async fn settings_take_org_from_token() {
    let gateway = Gateway::start(test_config()).await;
    let settings = json!({
        "org_id": "someone-else",
        "geofences": [{"id": "ward-4", "name": "Ward 4", "geometry": {
            "type": "Polygon", "coordinates": [[[36.7, -1.3], [36.9, -1.3], [36.9, -1.2], [36.7, -1.3]]]
        }}],
        "quality": {"max_gps_accuracy_m": 25.0}
    });
    let answer = gateway
        .send(
            "PUT",
            "/v1/projects/census/settings",
            &[("authorization", format!("Bearer {CENSUS_TOKEN}"))],
            settings.to_string(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let records = read_records(&gateway.config, &gateway.topic(PROJECT_SETTINGS), 1, QUIET).await;
    assert_eq!(records[0].key, "acme/census");
    assert_eq!(records[0].value["org_id"], "acme");
    assert_eq!(records[0].value["geofences"][0]["id"], "ward-4");
    assert_eq!(records[0].value["quality"]["max_gps_accuracy_m"], 25.0);
    assert_eq!(records[0].value["quality"]["min_duration_s"], 120);
    gateway.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let gateway = Gateway::start(test_config()).await;
    assert_eq!(gateway.send("GET", "/healthz", &[], "").await.status, 200);
    // Ready once Kafka is reachable and the submission index's key filter has loaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ready = gateway.send("GET", "/readyz", &[], "").await;
        if ready.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready after 30 s: {} {}",
            ready.status,
            ready.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let accepted = gateway
        .post_json(
            "/v1/submissions",
            DEV_TOKEN,
            &json!({"id": new_id(), "form_id": "f", "fields": {"q": "1"}}),
        )
        .await;
    assert_eq!(accepted.status, 201);
    let metrics = gateway.send("GET", "/metrics", &[], "").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("fieldforce_gateway_submissions_accepted_total{source=\"json\"} 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("fieldforce_gateway_produce_latency_seconds_count 1"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("fieldforce_gateway_requests_total"),
        "{}",
        metrics.body
    );
    assert_eq!(gateway.send("GET", "/nowhere", &[], "").await.status, 404);
    gateway.stop().await;
}

#[tokio::test]
async fn broker_down_answers_503() {
    let mut config = test_config();
    // Nothing listens on port 1, so no record can ever be acknowledged.
    config.kafka.bootstrap_servers = "127.0.0.1:1".into();
    config.gateway.delivery_timeout_ms = 1_500;
    config.gateway.retry_after_s = 7;
    let gateway = Gateway::start_without_topics(config).await;
    let xml = fixture("household_survey.xml", &new_id(), "");

    let started = Instant::now();
    let openrosa = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(openrosa.status, 503, "{}", openrosa.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed within the delivery timeout"
    );
    assert_eq!(openrosa.headers["retry-after"], "7");
    assert!(
        openrosa.body.contains("nothing was saved"),
        "{}",
        openrosa.body
    );

    let json = gateway
        .post_json(
            "/v1/submissions",
            DEV_TOKEN,
            &json!({"id": new_id(), "form_id": "f", "fields": {"q": "1"}}),
        )
        .await;
    assert_eq!(json.status, 503, "{}", json.body);
    assert!(json.headers.contains_key("retry-after"));

    // The failed post left no index entry behind, so a retry is a first attempt again.
    let retry = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(retry.status, 503, "{}", retry.body);
    assert_eq!(gateway.send("GET", "/readyz", &[], "").await.status, 503);
    gateway.stop().await;
}

/// Forwards every connection on `listener` to the real broker, until the task is aborted.
async fn forward_to_broker(listener: tokio::net::TcpListener, broker: String) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let broker = broker.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&broker).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test]
async fn client_retry_succeeds_once_broker_is_back() {
    let mut config = test_config();
    let broker = config.kafka.bootstrap_servers.clone();
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
        .await
        .expect("creating test topics failed: is the local stack up (make up)?");

    // The gateway bootstraps through a loopback port where nothing listens yet: the broker
    // is unreachable. Later a forwarder opens that port, and the broker is back.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bootstrap = reserved.local_addr().unwrap();
    drop(reserved);
    config.kafka.bootstrap_servers = bootstrap.to_string();
    config.gateway.delivery_timeout_ms = 1_500;
    let gateway = Gateway::start_without_topics(config).await;
    let xml = fixture("household_survey.xml", &new_id(), "");

    let refused = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);

    let listener = tokio::net::TcpListener::bind(bootstrap).await.unwrap();
    let forwarder = tokio::spawn(forward_to_broker(listener, broker));

    // ODK Collect retries a failed upload; here the retries come every second for 60 s.
    let mut last = refused;
    for _ in 0..60 {
        last = gateway
            .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
            .await;
        if last.status == 201 {
            break;
        }
        assert_eq!(
            last.status, 503,
            "only 503 while the broker is coming back: {}",
            last.body
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        last.status, 201,
        "the retry succeeds once the broker is back: {}",
        last.body
    );

    let raw = gateway.topic(SUBMISSIONS_RAW);
    let records = read_records(&gateway.config, &raw, 1, Duration::from_secs(2)).await;
    assert_eq!(records.len(), 1, "exactly one record for the submission");

    gateway.stop().await;
    forwarder.abort();
}

/// Reads the document budget's `fieldforce_gateway_in_flight_body_bytes` gauge.
async fn in_flight_document_bytes(gateway: &Gateway) -> u64 {
    let metrics = gateway.send("GET", "/metrics", &[], "").await.body;
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"fieldforce_gateway_in_flight_body_bytes{kind="document"} "#)
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn busy_gateway_answers_503_and_keeps_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut config = test_config();
    config.gateway.max_in_flight_document_bytes = 2_000;
    config.gateway.admission_wait_ms = 200;
    config.gateway.busy_retry_after_s = 3;
    let gateway = Gateway::start(config).await;

    // A slow client: its request head arrives, its body only later, and it takes the whole
    // document budget meanwhile.
    let held_id = new_id();
    let mut held_body = json!({"id": held_id, "form_id": "f", "fields": {"q": "1"}}).to_string();
    held_body.push_str(&" ".repeat(2_000 - held_body.len()));
    let mut slow = tokio::net::TcpStream::connect(gateway.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/submissions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         authorization: Bearer {DEV_TOKEN}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        held_body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&held_body.as_bytes()[..100]).await.unwrap();
    let admitted_by = Instant::now() + Duration::from_secs(10);
    while in_flight_document_bytes(&gateway).await != 2_000 {
        assert!(
            Instant::now() < admitted_by,
            "the slow request was never admitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let busy_id = new_id();
    let busy_submission = json!({"id": busy_id, "form_id": "f", "fields": {"q": "2"}});
    let busy = gateway
        .post_json("/v1/submissions", DEV_TOKEN, &busy_submission)
        .await;
    assert_eq!(busy.status, 503, "{}", busy.body);
    assert_eq!(busy.headers["retry-after"], "3");
    let error: serde_json::Value = serde_json::from_str(&busy.body).unwrap();
    assert_eq!(error["error"]["code"], "gateway_busy");
    assert!(busy.body.contains("nothing was saved"), "{}", busy.body);

    let bare_instance = new_id();
    let bare_xml = fixture("household_survey.xml", &bare_instance, "");
    let bare_headers = [
        ("content-type", "text/xml".to_owned()),
        ("authorization", support::basic("enumerator", DEV_TOKEN)),
    ];
    let bare = gateway
        .send("POST", "/submission", &bare_headers, bare_xml.clone())
        .await;
    assert_eq!(bare.status, 503, "{}", bare.body);
    assert!(bare.body.contains("<OpenRosaResponse"), "{}", bare.body);
    assert!(bare.body.contains("busy"), "{}", bare.body);

    // Multipart posts have a budget of their own.
    let multipart_instance = new_id();
    let multipart_xml = fixture("household_survey.xml", &multipart_instance, "");
    let multipart = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &multipart_xml, &[])
        .await;
    assert_eq!(multipart.status, 201, "{}", multipart.body);

    // The slow client finishes and is accepted; its share goes back to the budget.
    slow.write_all(&held_body.as_bytes()[100..]).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(in_flight_document_bytes(&gateway).await, 0);

    // Nothing of the rejected posts was kept: their retries are new submissions.
    let retried = gateway
        .post_json("/v1/submissions", DEV_TOKEN, &busy_submission)
        .await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert!(!retried.body.contains("already"), "{}", retried.body);
    let bare = gateway
        .send("POST", "/submission", &bare_headers, bare_xml)
        .await;
    assert_eq!(bare.status, 201, "{}", bare.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 4, QUIET).await;
    let mut keys: Vec<String> = records.iter().map(|record| record.key.clone()).collect();
    keys.sort_unstable();
    let mut expected = vec![
        held_id,
        busy_id,
        format!("uuid:{bare_instance}"),
        format!("uuid:{multipart_instance}"),
    ];
    expected.sort_unstable();
    assert_eq!(
        keys, expected,
        "one record per submission, none for the rejected posts"
    );

    let metrics = gateway.send("GET", "/metrics", &[], "").await.body;
    assert!(
        metrics.contains(r#"fieldforce_gateway_rejections_total{reason="gateway_busy"} 2"#),
        "{metrics}"
    );
    gateway.stop().await;
}
