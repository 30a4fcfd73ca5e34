//! OpenRosa intake against the local stack: HEAD, multipart posts with attachments, resends,
//! conflicts, edits, split uploads, encrypted submissions and hostile XML.

mod support;

use std::time::Duration;

use fieldforce_kafka::catalog::SUBMISSIONS_RAW;
use support::{
    CENSUS_TOKEN, DEV_TOKEN, Gateway, basic, fixture, new_id, read_records, test_config,
};

const QUIET: Duration = Duration::from_secs(2);

#[tokio::test]
async fn head_answers_openrosa_headers() {
    let gateway = Gateway::start(test_config()).await;

    for path in [
        "/submission".to_owned(),
        "/v1/projects/census/submission".to_owned(),
        format!("/v1/key/{DEV_TOKEN}/projects/census/submission"),
    ] {
        let headers = if path.starts_with("/v1/key") {
            vec![]
        } else {
            vec![("authorization", basic("amina", DEV_TOKEN))]
        };
        let answer = gateway.send("HEAD", &path, &headers, "").await;
        assert_eq!(answer.status, 204, "{path}");
        assert_eq!(answer.headers["x-openrosa-version"], "1.0", "{path}");
        assert_eq!(
            answer.headers["x-openrosa-accept-content-length"],
            gateway.config.gateway.max_body_bytes.to_string(),
            "{path}"
        );
    }

    let unauthenticated = gateway.send("HEAD", "/submission", &[], "").await;
    assert_eq!(unauthenticated.status, 401);
    assert!(
        unauthenticated.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    gateway.stop().await;
}

#[tokio::test]
async fn multipart_stores_fields_and_attachments() {
    let gateway = Gateway::start(test_config()).await;
    let instance = new_id();
    let xml = fixture("household_survey.xml", &instance, "");
    let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
    let png = b"\x89PNG\r\n\x1a\nrest";
    let files: [(&str, &[u8]); 3] = [
        ("fîlé_façade.jpg", &jpeg),
        ("😂back_صورة.jpg", png),
        ("empty_note.m4a", b""),
    ];

    let answer = gateway
        .post_openrosa(
            "/v1/projects/census/submission",
            Some(DEV_TOKEN),
            &xml,
            &files,
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "text/xml; charset=utf-8");
    assert_eq!(answer.headers["x-openrosa-version"], "1.0");
    assert!(
        answer.body.contains("nature=\"submit_success\""),
        "{}",
        answer.body
    );

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    let submission_id = format!("uuid:{instance}");
    assert_eq!(record.key, submission_id);
    assert!(
        record
            .headers
            .contains(&("content-type".into(), "application/json".into()))
    );
    assert!(
        record
            .headers
            .contains(&("fieldforce-schema".into(), "raw-submission/1".into()))
    );
    let now = fieldforce_gateway::intake::now_ms();
    assert!(
        (now - record.timestamp_ms.unwrap()).abs() < 60_000,
        "record time is the gateway clock"
    );

    let value = &record.value;
    assert_eq!(value["org_id"], "demo");
    assert_eq!(value["project_id"], "census");
    assert_eq!(value["form_id"], "household_survey");
    assert_eq!(value["form_version"], "2024031501");
    assert_eq!(value["revision"], 0);
    assert_eq!(value["source"], "open_rosa");
    assert_eq!(value["submitter"], "enumerator");
    assert_eq!(value["device_id"], "collect:Xy12");
    let fields = &value["fields"];
    assert_eq!(
        fields["respondent"]["water_source"], "borehole",
        "select value trimmed"
    );
    assert!(
        fields["respondent"].get("age").is_none(),
        "empty element absent"
    );
    assert!(
        fields["respondent"].get("phone").is_none(),
        "empty element absent"
    );
    assert_eq!(
        fields["member"].as_array().unwrap().len(),
        2,
        "repeat as array"
    );
    assert_eq!(fields["member"][1]["member_name"], "Neema");
    assert!(fields["member"][1].get("member_age").is_none());
    assert_eq!(fields["Q2%2E1"], "yes", "dotted name encoded");
    assert!(fields.get("Q2%2E2").is_none());
    assert_eq!(fields["location"], "-1.2836198 36.8795437 1650.5 4.9");
    assert_eq!(fields["visited_at"], "2024-03-15T09:12:44.120+03");
    assert_eq!(fields["meta"]["instanceID"], submission_id);

    let attachments = value["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 3);
    assert_eq!(attachments[0]["name"], "fîlé_façade.jpg");
    assert_eq!(attachments[0]["content_type"], "image/jpeg");
    assert_eq!(attachments[1]["name"], "😂back_صورة.jpg");
    assert_eq!(attachments[1]["content_type"], "image/png");
    assert_eq!(attachments[2]["name"], "empty_note.m4a");
    assert_eq!(attachments[2]["size_bytes"], 0);
    assert_eq!(value["missing_attachments"], serde_json::json!([]));
    for attachment in attachments {
        let uri = attachment["blob_uri"].as_str().unwrap();
        let path = uri.strip_prefix("file://").unwrap();
        assert!(path.starts_with(&gateway.config.gateway.blob_dir), "{path}");
        let stored = std::fs::read(path).unwrap();
        assert_eq!(
            stored.len() as u64,
            attachment["size_bytes"].as_u64().unwrap()
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn missing_attachment_is_reported_waiting() {
    let gateway = Gateway::start(test_config()).await;
    let xml = fixture("household_survey.xml", &new_id(), "");

    let answer = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert!(
        answer.body.contains("waiting for 3 attachment"),
        "{}",
        answer.body
    );

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    assert_eq!(records[0].value["project_id"], "default");
    assert_eq!(
        records[0].value["missing_attachments"],
        serde_json::json!(["fîlé_façade.jpg", "😂back_صورة.jpg", "empty_note.m4a"])
    );
    gateway.stop().await;
}

#[tokio::test]
async fn commcare_form_uses_xmlns_and_foreign_meta() {
    let gateway = Gateway::start(test_config()).await;
    let instance = new_id().replace('-', "");
    let xml = fixture("commcare_visit.xml", &instance, "");

    let answer = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    let value = &records[0].value;
    assert_eq!(records[0].key, instance);
    assert_eq!(
        value["form_id"],
        "http://example.org/formdesigner/home-visit"
    );
    assert_eq!(value["device_id"], "phone-77");
    assert_eq!(
        value["fields"]["meta"]["location"],
        "-3.3869 36.6830 1400.0 640.0"
    );
    assert_eq!(
        value["fields"]["meta"]["timeEnd"],
        "2024-03-15T00:07:19.000Z"
    );
    assert!(value["fields"].get("referral").is_none());
    gateway.stop().await;
}

#[tokio::test]
async fn resend_is_acknowledged_and_conflict_rejected() {
    let gateway = Gateway::start(test_config()).await;
    let instance = new_id();
    let xml = fixture("household_survey.xml", &instance, "");

    let first = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let resend = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(resend.status, 201, "{}", resend.body);
    assert!(resend.body.contains("already received"), "{}", resend.body);

    let changed = xml.replace("<Q2.1>yes</Q2.1>", "<Q2.1>no</Q2.1>");
    let conflict = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &changed, &[])
        .await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(
        conflict.body.contains("<OpenRosaResponse"),
        "{}",
        conflict.body
    );
    assert!(
        conflict.body.contains("was not overwritten"),
        "{}",
        conflict.body
    );

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    assert_eq!(records.len(), 1, "one record for three posts");
    gateway.stop().await;
}

#[tokio::test]
async fn edit_keeps_key_and_raises_revision() {
    let gateway = Gateway::start(test_config()).await;
    let original = new_id();
    let edit = new_id();
    let original_xml = fixture("household_survey.xml", &original, "");
    let edit_xml = fixture("household_survey_edit.xml", &original, &edit);
    let retake: &[u8] = &[0xFF, 0xD8, 0xFF, 0xDB, 1, 2, 3];

    let early = gateway
        .post_openrosa(
            "/submission",
            Some(DEV_TOKEN),
            &edit_xml,
            &[("retake.jpg", retake)],
        )
        .await;
    assert_eq!(early.status, 400, "{}", early.body);
    assert!(
        early.body.contains("send the original submission first"),
        "{}",
        early.body
    );

    let first = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &original_xml, &[])
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let edited = gateway
        .post_openrosa(
            "/submission",
            Some(DEV_TOKEN),
            &edit_xml,
            &[("retake.jpg", retake)],
        )
        .await;
    assert_eq!(edited.status, 201, "{}", edited.body);
    let again = gateway
        .post_openrosa(
            "/submission",
            Some(DEV_TOKEN),
            &edit_xml,
            &[("retake.jpg", retake)],
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 2, QUIET).await;
    assert_eq!(records.len(), 2, "the resent edit adds no record");
    let original_id = format!("uuid:{original}");
    assert_eq!(records[0].key, original_id);
    assert_eq!(records[1].key, original_id, "every version shares the key");
    let value = &records[1].value;
    assert_eq!(value["submission_id"], original_id);
    assert_eq!(value["revision"], 1);
    assert_eq!(value["instance_id"], format!("uuid:{edit}"));
    assert_eq!(value["deprecated_id"], original_id);
    assert_eq!(value["fields"]["respondent"]["water_source"], "river");
    assert_eq!(value["attachments"][0]["name"], "retake.jpg");
    gateway.stop().await;
}

#[tokio::test]
async fn split_upload_merges_attachments() {
    let gateway = Gateway::start(test_config()).await;
    let instance = new_id();
    let xml = fixture("household_survey.xml", &instance, "");
    let jpeg: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 9];

    let first = gateway
        .post_openrosa(
            "/submission",
            Some(DEV_TOKEN),
            &xml,
            &[("fîlé_façade.jpg", jpeg)],
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let second = gateway
        .post_openrosa(
            "/submission",
            Some(DEV_TOKEN),
            &xml,
            &[("😂back_صورة.jpg", jpeg), ("empty_note.m4a", b"")],
        )
        .await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert!(
        second.body.contains("received successfully"),
        "{}",
        second.body
    );

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 2, QUIET).await;
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].value["missing_attachments"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let merged = &records[1].value;
    assert_eq!(records[1].key, format!("uuid:{instance}"));
    assert_eq!(merged["revision"], 0, "a split upload is not an edit");
    let names: Vec<&str> = merged["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["fîlé_façade.jpg", "😂back_صورة.jpg", "empty_note.m4a"]
    );
    assert_eq!(merged["missing_attachments"], serde_json::json!([]));
    gateway.stop().await;
}

#[tokio::test]
async fn encrypted_submission_stays_encrypted() {
    let gateway = Gateway::start(test_config()).await;
    let instance = new_id();
    let manifest = fixture("encrypted_manifest.xml", &instance, "");
    let ciphertext: Vec<u8> = (0..=255u8).collect();

    let answer = gateway
        .post_openrosa(
            "/submission",
            Some(DEV_TOKEN),
            &manifest,
            &[
                ("submission.xml.enc", &ciphertext),
                ("photo.jpg.enc", &ciphertext[..64]),
            ],
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    let value = &records[0].value;
    assert_eq!(value["form_id"], "clinic_intake");
    assert_eq!(
        value["encrypted"]["encrypted_xml_file"],
        "submission.xml.enc"
    );
    assert_eq!(
        value["encrypted"]["base64_encrypted_key"],
        "c2VjcmV0LWtleS13cmFwcGVkLXdpdGgtcnNh"
    );
    assert_eq!(value["encrypted"]["encrypted_signature"], "c2lnbmF0dXJl");
    assert_eq!(value["attachments"][0]["size_bytes"], 256);
    assert_eq!(
        value["attachments"][0]["content_type"],
        "application/octet-stream"
    );
    assert_eq!(value["missing_attachments"], serde_json::json!([]));
    let fields = value["fields"].as_object().unwrap();
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["meta"]);
    gateway.stop().await;
}

#[tokio::test]
async fn hostile_xml_and_oversize_are_rejected() {
    let mut config = test_config();
    config.gateway.max_body_bytes = 64 * 1024;
    config.gateway.max_document_bytes = 16 * 1024;
    let gateway = Gateway::start(config).await;
    let xml = fixture("household_survey.xml", &new_id(), "");

    let doctype = format!(
        "<?xml version='1.0'?><!DOCTYPE household [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}",
        xml.trim_start_matches("<?xml version='1.0' ?>")
    );
    let answer = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &doctype, &[])
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("DOCTYPE"), "{}", answer.body);

    let entity = xml.replace("<Q2.1>yes</Q2.1>", "<Q2.1>&lol;</Q2.1>");
    let answer = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &entity, &[])
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("&amp;lol;"), "{}", answer.body);

    let deep = format!(
        "<data id=\"f\">{}{}<meta><instanceID>x</instanceID></meta></data>",
        "<g>".repeat(100),
        "</g>".repeat(100)
    );
    let answer = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &deep, &[])
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);

    let big = vec![0u8; 128 * 1024];
    let answer = gateway
        .post_openrosa(
            "/submission",
            Some(DEV_TOKEN),
            &xml,
            &[("fîlé_façade.jpg", &big)],
        )
        .await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert!(answer.body.contains("<OpenRosaResponse"), "{}", answer.body);

    let missing_id = "<data id=\"f\"><a>1</a></data>";
    let answer = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), missing_id, &[])
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("instanceID"), "{}", answer.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 0, QUIET).await;
    assert!(records.is_empty(), "rejected posts produce nothing");
    gateway.stop().await;
}

#[tokio::test]
async fn credentials_gate_every_project() {
    let gateway = Gateway::start(test_config()).await;
    let xml = fixture("household_survey.xml", &new_id(), "");

    let missing = gateway
        .post_openrosa("/v1/projects/census/submission", None, &xml, &[])
        .await;
    assert_eq!(missing.status, 401);
    assert!(missing.headers.contains_key("www-authenticate"));

    let wrong = gateway
        .post_openrosa(
            "/v1/projects/census/submission",
            Some("not-a-token"),
            &xml,
            &[],
        )
        .await;
    assert_eq!(wrong.status, 401);

    let outside = gateway
        .post_openrosa(
            "/v1/projects/payroll/submission",
            Some(CENSUS_TOKEN),
            &xml,
            &[],
        )
        .await;
    assert_eq!(outside.status, 403, "{}", outside.body);

    let path_token = format!("/v1/key/{CENSUS_TOKEN}/projects/census/submission");
    let (content_type, body) = support::multipart(&xml, &[]);
    let allowed = gateway
        .send("POST", &path_token, &[("content-type", content_type)], body)
        .await;
    assert_eq!(allowed.status, 201, "{}", allowed.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].value["org_id"], "acme",
        "organisation from the token"
    );
    assert_eq!(records[0].value["submitter"], "census-app");
    gateway.stop().await;
}

#[tokio::test]
async fn index_survives_gateway_restart() {
    let config = test_config();
    let xml = fixture("household_survey.xml", &new_id(), "");

    let gateway = Gateway::start(config.clone()).await;
    let first = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    gateway.stop().await;

    // A new process has an empty memory, so only the MongoDB index can recognise these.
    let gateway = Gateway::start(config).await;
    let resend = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &[])
        .await;
    assert_eq!(resend.status, 201, "{}", resend.body);
    assert!(resend.body.contains("already received"), "{}", resend.body);
    let changed = xml.replace("<Q2.1>yes</Q2.1>", "<Q2.1>no</Q2.1>");
    let conflict = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &changed, &[])
        .await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    assert_eq!(records.len(), 1);
    gateway.stop().await;
}

#[tokio::test]
async fn split_upload_across_restarts_updates_stored_entry() {
    let config = test_config();
    let xml = fixture("household_survey.xml", &new_id(), "");
    let jpeg: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 9];
    let all_attachments: &[(&str, &[u8])] = &[
        ("fîlé_façade.jpg", jpeg),
        ("😂back_صورة.jpg", jpeg),
        ("empty_note.m4a", b""),
    ];

    let gateway = Gateway::start(config.clone()).await;
    let first = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &all_attachments[..1])
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    gateway.stop().await;

    // The second part finds the entry in the store and saves it again under the same key,
    // so the store must replace it rather than keep the first part's attachments.
    let gateway = Gateway::start(config.clone()).await;
    let second = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, &all_attachments[1..])
        .await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert!(
        second.body.contains("received successfully"),
        "{}",
        second.body
    );
    gateway.stop().await;

    let gateway = Gateway::start(config).await;
    let resend = gateway
        .post_openrosa("/submission", Some(DEV_TOKEN), &xml, all_attachments)
        .await;
    assert_eq!(resend.status, 201, "{}", resend.body);
    assert!(resend.body.contains("already received"), "{}", resend.body);

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 2, QUIET).await;
    assert_eq!(
        records.len(),
        2,
        "the full resend must not produce a third record"
    );
    gateway.stop().await;
}
