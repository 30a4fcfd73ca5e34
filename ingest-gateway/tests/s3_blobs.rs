//! Attachments in an S3 bucket, against the S3-compatible server of the local stack
//! (`make up` starts it on 127.0.0.1:9000 with the bucket `fieldforce`). Set
//! `FIELDFORCE_TEST_S3_ENDPOINT` to run them against another S3-compatible server that has
//! that bucket.

#![allow(
    clippy::unwrap_used,
    reason = "integration tests, where a failure should fail the test"
)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use fieldforce_gateway::blob::{BlobStore, S3BlobStore};
use fieldforce_kafka::catalog::SUBMISSIONS_RAW;
use fieldforce_runtime::config::{Config, S3BlobUrl};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use support::{DEV_TOKEN, Gateway, fixture, new_id, read_records, test_config};

const QUIET: Duration = Duration::from_secs(2);
const BUCKET: &str = "fieldforce";
const ACCESS_KEY_ID: &str = "fieldforce-test";
const SECRET_ACCESS_KEY: &str = "fieldforce-test-secret";

fn s3_endpoint() -> String {
    std::env::var("FIELDFORCE_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:9000".into())
}

/// Returns a test configuration that stores attachments under a fresh key prefix.
fn s3_config(endpoint: &str) -> (Config, String) {
    let prefix = format!("test-gw-{}", uuid::Uuid::new_v4().simple());
    let mut config = test_config();
    config.gateway.blob_url = format!("s3://{BUCKET}/{prefix}/");
    config.gateway.s3_endpoint = endpoint.to_owned();
    config.gateway.s3_region = "us-east-1".into();
    // Explicit credentials, so the client never looks for cloud instance credentials.
    config.gateway.s3_access_key_id = ACCESS_KEY_ID.into();
    config.gateway.s3_secret_access_key = SECRET_ACCESS_KEY.into();
    (config, prefix)
}

/// Builds a plain S3 client, apart from the gateway's, to read back what the gateway wrote.
fn reader() -> AmazonS3 {
    let endpoint = s3_endpoint();
    AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(&endpoint)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_region("us-east-1")
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .build()
        .unwrap()
}

/// Returns a loopback address that nothing listens on.
async fn closed_port_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// Posts an OpenRosa submission with one JPEG attachment to project `census`.
async fn post_with_photo(gateway: &Gateway, xml: &str) -> support::Answer {
    let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
    gateway
        .post_openrosa(
            "/v1/projects/census/submission",
            Some(DEV_TOKEN),
            xml,
            &[("photo.jpg", &jpeg)],
        )
        .await
}

#[tokio::test]
async fn openrosa_attachments_land_in_bucket() {
    let (config, prefix) = s3_config(&s3_endpoint());
    let gateway = Gateway::start(config).await;
    let instance = new_id();
    let xml = fixture("household_survey.xml", &instance, "");
    let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
    let png = b"\x89PNG\r\n\x1a\nrest of the picture".to_vec();
    let files: [(&str, &[u8]); 3] = [
        ("fîlé_façade.jpg", &jpeg),
        ("😂back_صورة.jpg", &png),
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

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    assert_eq!(records.len(), 1);
    let attachments = records[0].value["attachments"].as_array().unwrap().clone();
    assert_eq!(attachments.len(), files.len());

    let reader = reader();
    let key_start = format!("{prefix}/demo/uuid%3A{instance}/");
    for ((name, content), attachment) in files.iter().zip(&attachments) {
        assert_eq!(attachment["name"], *name);
        let sha256 = hex::encode(Sha256::digest(content));
        assert_eq!(attachment["sha256"], sha256.as_str(), "{name}");
        assert_eq!(attachment["size_bytes"], content.len() as u64, "{name}");

        let uri = attachment["blob_uri"].as_str().unwrap();
        let key = uri.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
        assert_eq!(key, format!("{key_start}{sha256}"), "{name}");

        let stored = reader
            .get(&Path::parse(key).unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(stored.as_ref(), *content, "{name}");
        assert_eq!(hex::encode(Sha256::digest(&stored)), sha256, "{name}");
    }
    assert_eq!(attachments[0]["content_type"], "image/jpeg");
    assert_eq!(attachments[1]["content_type"], "image/png");
    gateway.stop().await;
}

#[tokio::test]
async fn same_blob_put_twice_keeps_one_object() {
    let (config, prefix) = s3_config(&s3_endpoint());
    let url = S3BlobUrl::parse_optional(&config.gateway.blob_url)
        .unwrap()
        .unwrap();
    let store = S3BlobStore::new(&url, &config.gateway).unwrap();
    let content = Bytes::from_static(b"the same photo, sent twice");
    let sha256 = hex::encode(Sha256::digest(&content));

    let first = store
        .put("demo", "uuid:twice", "photo.jpg", &sha256, content.clone())
        .await
        .unwrap();
    let second = store
        .put("demo", "uuid:twice", "photo.jpg", &sha256, content.clone())
        .await
        .unwrap();
    assert_eq!(first, second);

    let reader = reader();
    let listed = reader
        .list_with_delimiter(Some(
            &Path::parse(format!("{prefix}/demo/uuid%3Atwice")).unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(listed.objects.len(), 1, "{listed:?}");
    assert_eq!(listed.objects[0].size, content.len() as u64);
}

#[tokio::test]
async fn unreachable_bucket_answers_503_then_retry_succeeds() {
    let (mut config, _) = s3_config(&closed_port_endpoint().await);
    config.gateway.s3_timeout_ms = 2_000;
    let gateway = Gateway::start(config).await;
    let instance = new_id();
    let xml = fixture("household_survey.xml", &instance, "");

    let answer = post_with_photo(&gateway, &xml).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.headers["retry-after"],
        gateway.config.gateway.retry_after_s.to_string()
    );

    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 0, QUIET).await;
    assert!(records.is_empty(), "{records:?}");
    let mut config = gateway.config.clone();
    gateway.stop().await;

    // The client's retry, once the bucket is reachable, is a new submission, not a resend.
    config.gateway.s3_endpoint = s3_endpoint();
    let gateway = Gateway::start(config).await;
    let retry = post_with_photo(&gateway, &xml).await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    let records = read_records(&gateway.config, &gateway.topic(SUBMISSIONS_RAW), 1, QUIET).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let uri = records[0].value["attachments"][0]["blob_uri"]
        .as_str()
        .unwrap();
    assert!(uri.starts_with("s3://"), "{uri}");
    gateway.stop().await;
}

#[tokio::test]
async fn silent_server_fails_put_after_timeout() {
    // The listener takes connections into its backlog but never reads or replies, like a
    // hung service behind a load balancer.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mut config, prefix) = s3_config(&format!("http://{}", silent.local_addr().unwrap()));
    config.gateway.s3_timeout_ms = 1_000;
    let url = S3BlobUrl::parse_optional(&config.gateway.blob_url)
        .unwrap()
        .unwrap();
    let store = S3BlobStore::new(&url, &config.gateway).unwrap();
    let content = Bytes::from_static(b"never confirmed");
    let sha256 = hex::encode(Sha256::digest(&content));

    let error = store
        .put("demo", "uuid:hung", "photo.jpg", &sha256, content)
        .await
        .unwrap_err();
    assert_eq!(error.name, "photo.jpg");
    assert_eq!(
        error.location,
        format!("s3://{BUCKET}/{prefix}/demo/uuid%3Ahung/{sha256}")
    );
    drop(silent);
}
