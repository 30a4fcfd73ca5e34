use serde::{Deserialize, Serialize};

/// Settings of the ingest gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address the HTTP server listens on. Default `127.0.0.1:8080`.
    pub listen_addr: String,
    /// Largest request body accepted, in bytes, attachments included; larger bodies get 413.
    /// Also sent to OpenRosa clients as `X-OpenRosa-Accept-Content-Length`, so that they split
    /// bigger submissions. Default 10485760 (10 MiB).
    pub max_body_bytes: u64,
    /// Largest instance XML, XForm or JSON submission accepted, in bytes. Default 2097152
    /// (2 MiB).
    pub max_document_bytes: u64,
    /// Deepest element nesting accepted in an XML document; deeper documents get 400.
    /// Default 64.
    pub max_xml_depth: usize,
    /// Most attachments accepted in one OpenRosa post; more get 413. Default 100.
    pub max_attachments: usize,
    /// Most submissions accepted in one JSON batch; more get 413. Default 500.
    pub max_batch_items: usize,
    /// How long a record may wait for its Kafka delivery report before the request fails
    /// with 503, in milliseconds (librdkafka `message.timeout.ms`). Default 10000.
    pub delivery_timeout_ms: u64,
    /// How long the producer waits for more records before it sends a batch to the broker, in
    /// milliseconds (librdkafka `linger.ms`). A single post waits up to this long before its
    /// record leaves, so the gateway keeps it short. Under load, records that queue up while
    /// earlier produce requests are in flight still go out together. Default 1.
    pub producer_linger_ms: u64,
    /// Most records the producer queues before it reports the queue full and requests get
    /// 503 (librdkafka `queue.buffering.max.messages`). Default 100000.
    pub producer_queue_max_messages: u64,
    /// Seconds a client is told to wait in `Retry-After` when a submission could not be made
    /// durable. Default 30.
    pub retry_after_s: u64,
    /// Bytes of JSON and bare XML submission bodies that requests may keep in memory at
    /// once, from reading the body to the response. Such a body is parsed whole into a tree
    /// many times its size. A request takes its declared `Content-Length` (a chunked one
    /// counts as `max_body_bytes`) before its body is read. One that finds too little left
    /// waits up to `admission_wait_ms` and then gets 503. This bounds the gateway's memory
    /// under a load it cannot keep up with. At most 4294967295. Default 2097152 (2 MiB, about
    /// 140 JSON batches of 20).
    pub max_in_flight_document_bytes: u64,
    /// Bytes of multipart submission bodies (OpenRosa posts, attachments included) that
    /// requests may keep in memory at once, taken and waited for as
    /// `max_in_flight_document_bytes`. Attachments stay in memory at about their own size
    /// until the response. At most 4294967295. Default 67108864 (64 MiB).
    pub max_in_flight_multipart_bytes: u64,
    /// How long a submission request waits for its share of `max_in_flight_document_bytes`
    /// or `max_in_flight_multipart_bytes` before it gets 503, in milliseconds. Default 250.
    pub admission_wait_ms: u64,
    /// `Retry-After` value, in seconds, sent when the gateway is busy with other requests
    /// (`max_in_flight_document_bytes` or `max_in_flight_multipart_bytes` taken). Default 5.
    pub busy_retry_after_s: u64,
    /// How long shutdown waits for in-flight requests before it closes them, in
    /// milliseconds. Default 20000.
    pub shutdown_timeout_ms: u64,
    /// Folder of the local blob store that keeps attachments, created when missing. Unused
    /// while `blob_url` names an S3 bucket. Default `data/blobs`.
    pub blob_dir: String,
    /// Location of the attachment store: empty keeps attachments in the local folder
    /// `blob_dir`, and `s3://bucket/prefix` puts them in that bucket of an S3-compatible
    /// service, under the optional key prefix. Default empty.
    pub blob_url: String,
    /// Base URL of the S3-compatible service, such as `http://127.0.0.1:9000`, used while
    /// `blob_url` is an `s3://` URL. An `http://` URL sends attachments and signed requests
    /// unencrypted, so keep it to loopback or a private network. Empty takes
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` or `AWS_ENDPOINT` from the environment, else
    /// the AWS S3 endpoint of `s3_region`. Default empty.
    pub s3_endpoint: String,
    /// Region that S3 requests are signed for, which also picks the AWS endpoint when
    /// `s3_endpoint` is empty. Empty takes `AWS_REGION` or `AWS_DEFAULT_REGION` from the
    /// environment, else `us-east-1`. Default empty.
    pub s3_region: String,
    /// Whether S3 requests name the bucket in the URL path (`endpoint/bucket/key`), as most
    /// self-hosted S3-compatible servers expect, instead of in the host name
    /// (`bucket.endpoint/key`, virtual-hosted style). Default true.
    pub s3_path_style: bool,
    /// Access key id for S3; set it together with `s3_secret_access_key`. Empty takes
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` from the
    /// environment, else web identity, container or EC2 instance credentials. Default empty.
    pub s3_access_key_id: String,
    /// Secret access key that belongs to `s3_access_key_id`. Prefer the environment
    /// (`FIELDFORCE_GATEWAY__S3_SECRET_ACCESS_KEY`) to a file. Default empty.
    pub s3_secret_access_key: String,
    /// How long storing one attachment in S3 may take, retries included, before the request
    /// fails with 503, in milliseconds. Default 10000.
    pub s3_timeout_ms: u64,
    /// Project used by `/submission` and by JSON submissions that name none.
    /// Default `default`.
    pub default_project: String,
    /// Entries of the in-memory submission index (the recent instanceIDs and their content
    /// hashes) kept before the least recently used are evicted. Default 100000.
    pub index_cache_entries: usize,
    /// Time after which an entry of the in-memory submission index that was neither read nor
    /// written leaves memory, in milliseconds. Idle entries are removed up to a quarter of
    /// this later, so memory goes back down after a burst, and a later post of the same
    /// instance reads its entry from MongoDB again. An original that leaves memory before the
    /// sink has stored it is written to `index_collection` then. Default 300000 (5 minutes).
    pub index_cache_idle_ms: u64,
    /// MongoDB collection, in the `[mongodb]` database, that keeps the submission index
    /// entries that no stored submission contains: edits, the originals they supersede, and
    /// originals that left memory before the sink stored them. Other originals are looked
    /// up in the sink's `submissions` collection. Default `submission_index`.
    pub index_collection: String,
    /// How long a submission index lookup in MongoDB may take before the gateway goes on
    /// with its memory alone, in milliseconds. Default 1000.
    pub index_timeout_ms: u64,
    /// Keys the Bloom filter in front of the MongoDB submission index is sized for. Past
    /// this count its false positive rate rises, so more lookups reach MongoDB. It takes
    /// about 1.2 bytes per key at a 1% rate. Default 10000000.
    pub index_filter_keys: u64,
    /// Share of new instanceIDs that the Bloom filter reports as maybe known, so that they
    /// still cost a MongoDB lookup, when it holds `index_filter_keys` keys. Between 0 and 1,
    /// exclusive. Default 0.01.
    pub index_filter_false_positive_rate: f64,
    /// How often the gateway reads the index entries that other replicas wrote since the
    /// last read into its Bloom filter, in milliseconds. Originals that other replicas
    /// accepted reach the filter from the stored-submission events instead, once the sink
    /// has stored them. Until then a resend to this replica of an instance first accepted by
    /// another one counts as new. Default 5000.
    pub index_refresh_ms: u64,
    /// Development token, honoured only while the gateway listens on a loopback address;
    /// it maps to organisation `dev_org_id` and all of its projects. Empty disables it.
    /// Default `fieldforce-dev-token`.
    pub dev_token: String,
    /// Organisation of the development token. Default `demo`.
    pub dev_org_id: String,
    /// API tokens, stored as hex SHA-256 digests. Default none.
    pub tokens: Vec<GatewayToken>,
}

/// One API token: the digest of the secret and what it grants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayToken {
    /// Hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
    /// Organisation every submission sent with this token belongs to.
    pub org_id: String,
    /// Projects the token may submit to; empty means every project of the organisation.
    #[serde(default)]
    pub projects: Vec<String>,
    /// User name recorded as the submitter when the client sends none.
    #[serde(default)]
    pub user: String,
}

/// The bucket and key prefix of an `s3://bucket/prefix` blob URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3BlobUrl {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty when objects go to the bucket root.
    pub prefix: String,
}

impl S3BlobUrl {
    /// Parses `s3://bucket` or `s3://bucket/prefix`; an empty URL means no S3 store.
    pub fn parse_optional(url: &str) -> Result<Option<Self>, String> {
        if url.is_empty() {
            return Ok(None);
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(format!(
                "{url:?} is not an s3://bucket/prefix URL: leave it empty to keep attachments in gateway.blob_dir"
            ));
        };

        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?} is missing the bucket name"));
        }
        if bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "bucket {bucket:?} contains whitespace or control characters"
            ));
        }

        let prefix = prefix.trim_matches('/');
        // Object stores treat `a//b`, `.` and `..` inconsistently, so only plain segments
        // are accepted.
        let bad_segment = prefix.split('/').find(|segment| {
            segment.is_empty()
                || *segment == "."
                || *segment == ".."
                || segment.chars().any(char::is_control)
        });
        if !prefix.is_empty()
            && let Some(segment) = bad_segment
        {
            return Err(format!(
                "key prefix {prefix:?} contains an invalid segment {segment:?}: use non-empty names other than . and .."
            ));
        }

        Ok(Some(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }))
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:8080".to_owned(),
            max_body_bytes: 10 * 1024 * 1024,
            max_document_bytes: 2 * 1024 * 1024,
            max_xml_depth: 64,
            max_attachments: 100,
            max_batch_items: 500,
            delivery_timeout_ms: 10_000,
            producer_linger_ms: 1,
            producer_queue_max_messages: 100_000,
            retry_after_s: 30,
            max_in_flight_document_bytes: 2 * 1024 * 1024,
            max_in_flight_multipart_bytes: 64 * 1024 * 1024,
            admission_wait_ms: 250,
            busy_retry_after_s: 5,
            shutdown_timeout_ms: 20_000,
            blob_dir: "data/blobs".to_owned(),
            blob_url: String::new(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_path_style: true,
            s3_access_key_id: String::new(),
            s3_secret_access_key: String::new(),
            s3_timeout_ms: 10_000,
            default_project: "default".to_owned(),
            index_cache_entries: 100_000,
            index_cache_idle_ms: 300_000,
            index_collection: "submission_index".to_owned(),
            index_timeout_ms: 1_000,
            index_filter_keys: 10_000_000,
            index_filter_false_positive_rate: 0.01,
            index_refresh_ms: 5_000,
            dev_token: "fieldforce-dev-token".to_owned(),
            dev_org_id: "demo".to_owned(),
            tokens: Vec::new(),
        }
    }
}

impl GatewayConfig {
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self.listen_addr.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!(
                "gateway.listen_addr {:?} is not an ip:port address",
                self.listen_addr
            ));
        }
        let positive = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_document_bytes", self.max_document_bytes),
            ("max_xml_depth", self.max_xml_depth as u64),
            ("max_batch_items", self.max_batch_items as u64),
            (
                "max_in_flight_document_bytes",
                self.max_in_flight_document_bytes,
            ),
            (
                "max_in_flight_multipart_bytes",
                self.max_in_flight_multipart_bytes,
            ),
            ("delivery_timeout_ms", self.delivery_timeout_ms),
            (
                "producer_queue_max_messages",
                self.producer_queue_max_messages,
            ),
            ("index_cache_entries", self.index_cache_entries as u64),
            ("index_cache_idle_ms", self.index_cache_idle_ms),
            ("index_timeout_ms", self.index_timeout_ms),
            ("index_filter_keys", self.index_filter_keys),
            ("index_refresh_ms", self.index_refresh_ms),
            ("s3_timeout_ms", self.s3_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(format!("gateway.{key} must be greater than 0"));
            }
        }
        if self.max_document_bytes > self.max_body_bytes {
            problems.push(format!(
                "gateway.max_document_bytes ({}) must not exceed gateway.max_body_bytes ({})",
                self.max_document_bytes, self.max_body_bytes
            ));
        }
        for (key, value) in [
            (
                "max_in_flight_document_bytes",
                self.max_in_flight_document_bytes,
            ),
            (
                "max_in_flight_multipart_bytes",
                self.max_in_flight_multipart_bytes,
            ),
        ] {
            if value > u64::from(u32::MAX) {
                problems.push(format!(
                    "gateway.{key} ({value}) must not exceed {}",
                    u32::MAX
                ));
            }
        }
        if self.blob_dir.trim().is_empty() {
            problems.push("gateway.blob_dir is empty: set a folder for attachments".into());
        }
        if let Err(problem) = S3BlobUrl::parse_optional(&self.blob_url) {
            problems.push(format!("gateway.blob_url: {problem}"));
        }
        let endpoint = &self.s3_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            problems.push(format!(
                "gateway.s3_endpoint {endpoint:?} must start with http:// or https://"
            ));
        }
        if self.s3_access_key_id.is_empty() != self.s3_secret_access_key.is_empty() {
            problems.push(
                "gateway.s3_access_key_id and gateway.s3_secret_access_key must be set together"
                    .into(),
            );
        }
        if self.default_project.trim().is_empty() {
            problems.push("gateway.default_project is empty".into());
        }
        let rate = self.index_filter_false_positive_rate;
        if !(rate > 0.0 && rate < 1.0) {
            problems.push(format!(
                "gateway.index_filter_false_positive_rate ({rate}) must be between 0 and 1, exclusive"
            ));
        }
        if self.index_collection.trim().is_empty() {
            problems.push("gateway.index_collection is empty".into());
        }
        if !self.dev_token.is_empty() && self.dev_org_id.trim().is_empty() {
            problems.push("gateway.dev_org_id is empty while gateway.dev_token is set".into());
        }
        for (position, token) in self.tokens.iter().enumerate() {
            let is_digest =
                token.sha256.len() == 64 && token.sha256.chars().all(|c| c.is_ascii_hexdigit());
            if !is_digest {
                problems.push(format!(
                    "gateway.tokens[{position}].sha256 must be 64 hex digits (the SHA-256 of the token)"
                ));
            }
            if token.org_id.trim().is_empty() {
                problems.push(format!("gateway.tokens[{position}].org_id is empty"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_rejects_bad_token_digest() {
        let mut config = GatewayConfig::default();
        config.tokens.push(GatewayToken {
            sha256: "abc".into(),
            org_id: String::new(),
            projects: Vec::new(),
            user: String::new(),
        });
        let mut problems = Vec::new();
        config.validate(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn s3_blob_url_splits_bucket_and_prefix() {
        let parsed = |url: &str| S3BlobUrl::parse_optional(url).unwrap().unwrap();
        assert_eq!(S3BlobUrl::parse_optional("").unwrap(), None);
        assert_eq!(parsed("s3://field").bucket, "field");
        assert_eq!(parsed("s3://field").prefix, "");
        assert_eq!(parsed("s3://field/").prefix, "");
        assert_eq!(parsed("s3://field/a/b/").prefix, "a/b");
        assert_eq!(parsed("s3://field/attachments").bucket, "field");
    }

    #[test]
    fn s3_blob_url_rejects_malformed_urls() {
        for url in [
            "field",
            "https://field/x",
            "s3://",
            "s3:///x",
            "s3://my bucket/x",
            "s3://field/a//b",
            "s3://field/a/../b",
        ] {
            assert!(S3BlobUrl::parse_optional(url).is_err(), "{url}");
        }
    }

    #[test]
    fn gateway_rejects_half_s3_credentials_and_bad_endpoint() {
        let config = GatewayConfig {
            blob_url: "s3://field".into(),
            s3_endpoint: "127.0.0.1:9000".into(),
            s3_access_key_id: "key".into(),
            ..GatewayConfig::default()
        };
        let mut problems = Vec::new();
        config.validate(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn gateway_rejects_filter_rate_outside_unit_interval() {
        for rate in [0.0, 1.0, -0.5, f64::NAN] {
            let config = GatewayConfig {
                index_filter_false_positive_rate: rate,
                ..GatewayConfig::default()
            };
            let mut problems = Vec::new();
            config.validate(&mut problems);
            assert_eq!(problems.len(), 1, "rate {rate}: {problems:?}");
        }
    }
}
