//! The blob store in a bucket of an S3-compatible service, through the `object_store` crate.
//!
//! Keys are `<prefix>/<org>/<submission id>/<sha256>`, the layout of the local folder, and
//! blob URIs are `s3://<bucket>/<key>`. A put overwrites the key unconditionally: the key
//! ends in the content's SHA-256, so a second put of the same key writes the same bytes, and
//! a resend costs one request instead of a lookup plus a request.

use std::time::Duration;

use bytes::Bytes;
use fieldforce_runtime::config::{GatewayConfig, S3BlobUrl};
use futures::future::BoxFuture;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};

use super::{BlobError, BlobStore, BlobWriteError, escape_path_segment};

/// Retries of one failed S3 request (connection refused, 5xx, throttling) before the put
/// fails; `s3_timeout_ms` bounds them too.
const MAX_RETRIES: usize = 3;

/// A blob store in an S3 bucket.
pub struct S3BlobStore {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for S3BlobStore {
    // The client contains the credentials, so only the location is printed.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("S3BlobStore")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl S3BlobStore {
    /// Builds the client for `url` from the `gateway.s3_*` settings, over the standard
    /// `AWS_*` environment variables; it connects on the first put.
    pub fn new(url: &S3BlobUrl, gateway: &GatewayConfig) -> Result<Self, object_store::Error> {
        let timeout = Duration::from_millis(gateway.s3_timeout_ms);
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);

        if !gateway.s3_region.is_empty() {
            builder = builder.with_region(&gateway.s3_region);
        }
        if !gateway.s3_access_key_id.is_empty() {
            builder = builder
                .with_access_key_id(&gateway.s3_access_key_id)
                .with_secret_access_key(&gateway.s3_secret_access_key);
        }

        // The endpoint names the service, without the bucket, as in the AWS SDKs; the
        // S3-specific variable wins over the generic one there too.
        let endpoint = if gateway.s3_endpoint.is_empty() {
            builder
                .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
                .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint))
        } else {
            Some(gateway.s3_endpoint.clone())
        };
        if let Some(endpoint) = &endpoint {
            let endpoint = if gateway.s3_path_style {
                endpoint.clone()
            } else {
                virtual_hosted_endpoint(endpoint, &url.bucket)
            };
            builder = builder.with_config(AmazonS3ConfigKey::S3Endpoint, endpoint);
        }

        // `with_client_options` replaces every client option, `AWS_ALLOW_HTTP` included, so
        // plain HTTP follows from the endpoint the operator wrote.
        let allow_http = endpoint.is_some_and(|endpoint| endpoint.starts_with("http://"));
        let client = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: MAX_RETRIES,
            retry_timeout: timeout,
        };
        let store = builder
            .with_virtual_hosted_style_request(!gateway.s3_path_style)
            .with_client_options(client)
            .with_retry(retry)
            .build()?;

        Ok(Self {
            store,
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            timeout,
        })
    }

    /// Returns the object key of a blob.
    pub fn key_of(&self, org_id: &str, submission_id: &str, sha256: &str) -> String {
        let org = escape_path_segment(org_id);
        let submission = escape_path_segment(submission_id);
        if self.prefix.is_empty() {
            format!("{org}/{submission}/{sha256}")
        } else {
            format!("{}/{org}/{submission}/{sha256}", self.prefix)
        }
    }
}

impl BlobStore for S3BlobStore {
    fn put<'a>(
        &'a self,
        org_id: &'a str,
        submission_id: &'a str,
        name: &'a str,
        sha256: &'a str,
        content: Bytes,
    ) -> BoxFuture<'a, Result<String, BlobError>> {
        Box::pin(async move {
            let key = self.key_of(org_id, submission_id, sha256);
            let uri = format!("s3://{}/{key}", self.bucket);
            let error = |source: BlobWriteError| BlobError {
                name: name.to_owned(),
                location: uri.clone(),
                source,
            };

            // Every segment is escaped or hex, and the configuration check covered the prefix.
            // So parsing fails only on a bug, and then the request fails too.
            let location = Path::parse(&key)
                .map_err(|source| error(object_store::Error::from(source).into()))?;
            let put = self.store.put(&location, PutPayload::from(content));

            // The client's own timeouts cover each try; this bounds the tries together.
            match tokio::time::timeout(self.timeout, put).await {
                Ok(Ok(_)) => Ok(uri),
                Ok(Err(source)) => Err(error(source.into())),
                Err(_) => Err(error(BlobWriteError::TimedOut(self.timeout))),
            }
        })
    }
}

/// Puts the bucket in front of the endpoint's host name, as virtual-hosted style requests
/// address it: `https://s3.example.com` becomes `https://bucket.s3.example.com`.
fn virtual_hosted_endpoint(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
        None => format!("{bucket}.{endpoint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> S3BlobStore {
        let url = S3BlobUrl {
            bucket: "field".into(),
            prefix: prefix.into(),
        };
        let gateway = GatewayConfig {
            s3_endpoint: "http://127.0.0.1:9".into(),
            s3_access_key_id: "key".into(),
            s3_secret_access_key: "secret".into(),
            ..GatewayConfig::default()
        };
        S3BlobStore::new(&url, &gateway).unwrap()
    }

    #[test]
    fn keys_follow_local_layout() {
        assert_eq!(
            store("").key_of("demo", "uuid:1/2", "ab12"),
            "demo/uuid%3A1%2F2/ab12"
        );
        assert_eq!(
            store("blobs/v1").key_of("demo", "x", "ab12"),
            "blobs/v1/demo/x/ab12"
        );
    }

    #[test]
    fn debug_leaves_out_credentials() {
        let debug_output = format!("{:?}", store(""));
        assert!(!debug_output.contains("secret"), "{debug_output}");
    }

    #[test]
    fn virtual_hosted_endpoint_prefixes_host() {
        assert_eq!(
            virtual_hosted_endpoint("https://s3.example.com", "field"),
            "https://field.s3.example.com"
        );
        assert_eq!(
            virtual_hosted_endpoint("http://storage.internal:9000", "field"),
            "http://field.storage.internal:9000"
        );
    }
}
