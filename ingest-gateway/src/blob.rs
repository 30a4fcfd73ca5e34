//! The blob store that keeps attachments, written before the record that refers to them is
//! produced, and content-type sniffing from magic bytes.
//!
//! Both stores lay blobs out as `<org>/<submission id>/<sha256>`, with the organisation and
//! id percent-escaped: under `<blob_dir>` for the local folder, under the key prefix of the
//! bucket for S3 ([`s3`]). The client's file name (any UTF-8: accents, emoji, Arabic) lives
//! only in the attachment metadata, so no file system or key encoding question arises and two
//! attachments with the same content share one blob.

mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fieldforce_runtime::config::{GatewayConfig, S3BlobUrl};
use fieldforce_schemas::submission::Attachment;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

pub use s3::S3BlobStore;

/// A blob store write that failed; the request gets 503 and the client retries.
#[derive(Debug, thiserror::Error)]
#[error("writing attachment {name:?} to {location} failed: {source}")]
pub struct BlobError {
    /// Attachment name.
    pub name: String,
    /// Path or URI the store tried to write.
    pub location: String,
    /// The cause.
    pub source: BlobWriteError,
}

/// The cause of a failed blob write. Every cause is worth a retry by the client.
#[derive(Debug, thiserror::Error)]
pub enum BlobWriteError {
    /// The local file system failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The S3-compatible service rejected the write, or could not be reached.
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
    /// The S3-compatible service did not confirm the write in time, retries included.
    #[error("no confirmation within {0:?}")]
    TimedOut(Duration),
}

/// A blob store that could not be set up from the configuration; the gateway does not start.
#[derive(Debug, thiserror::Error)]
pub enum BlobConfigError {
    /// The local folder could not be resolved.
    #[error("resolving gateway.blob_dir failed: {0}")]
    BlobDir(std::io::Error),
    /// `gateway.blob_url` is not a valid `s3://` URL.
    #[error("gateway.blob_url: {0}")]
    BlobUrl(String),
    /// The S3 client could not be built from the `gateway.s3_*` settings.
    #[error("configuring the s3 blob store failed: {0}")]
    S3(#[from] object_store::Error),
}

/// Opens the store the configuration selects: S3 when `blob_url` is an `s3://` URL, else the
/// local folder `blob_dir`.
pub fn open(gateway: &GatewayConfig) -> Result<Arc<dyn BlobStore>, BlobConfigError> {
    match S3BlobUrl::parse_optional(&gateway.blob_url).map_err(BlobConfigError::BlobUrl)? {
        Some(url) => Ok(Arc::new(S3BlobStore::new(&url, gateway)?)),
        None => Ok(Arc::new(
            LocalBlobStore::new(&gateway.blob_dir).map_err(BlobConfigError::BlobDir)?,
        )),
    }
}

/// Storage for attachments.
pub trait BlobStore: Send + Sync {
    /// Stores the content durably and returns its URI. Storing the same content under the
    /// same organisation and submission again succeeds and returns the same URI.
    fn put<'a>(
        &'a self,
        org_id: &'a str,
        submission_id: &'a str,
        name: &'a str,
        sha256: &'a str,
        content: Bytes,
    ) -> BoxFuture<'a, Result<String, BlobError>>;
}

/// A blob store in a local folder.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// Uses `root`, created on the first write; a relative path is made absolute so that
    /// blob URIs stay valid.
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        let root = root.as_ref();
        let root = if root.is_absolute() {
            root.to_owned()
        } else {
            std::env::current_dir()?.join(root)
        };
        Ok(Self { root })
    }

    /// Returns the path of a blob.
    pub fn path_of(&self, org_id: &str, submission_id: &str, sha256: &str) -> PathBuf {
        self.root
            .join(escape_path_segment(org_id))
            .join(escape_path_segment(submission_id))
            .join(sha256)
    }
}

impl BlobStore for LocalBlobStore {
    fn put<'a>(
        &'a self,
        org_id: &'a str,
        submission_id: &'a str,
        name: &'a str,
        sha256: &'a str,
        content: Bytes,
    ) -> BoxFuture<'a, Result<String, BlobError>> {
        Box::pin(async move {
            let path = self.path_of(org_id, submission_id, sha256);
            let error = |source: std::io::Error| BlobError {
                name: name.to_owned(),
                location: path.display().to_string(),
                source: source.into(),
            };
            if tokio::fs::try_exists(&path).await.map_err(error)? {
                return Ok(file_uri(&path));
            }
            let folder = path.parent().unwrap_or(&self.root);
            tokio::fs::create_dir_all(folder).await.map_err(error)?;

            // Written under a temporary name and renamed, so a crash never leaves a partial
            // file under the final name; synced, because the record that follows promises
            // the blob exists.
            let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
            let mut file = tokio::fs::File::create(&temporary).await.map_err(error)?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &content)
                .await
                .map_err(error)?;
            file.sync_all().await.map_err(error)?;
            drop(file);
            tokio::fs::rename(&temporary, &path).await.map_err(error)?;
            Ok(file_uri(&path))
        })
    }
}

fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Percent-escapes every byte outside `[A-Za-z0-9_-]`, so an id like `uuid:…` or `../x`
/// becomes one safe path segment or object key segment.
pub fn escape_path_segment(segment: &str) -> String {
    let mut escaped = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            escaped.push(byte as char);
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    if escaped.is_empty() {
        escaped.push_str("%00");
    }
    escaped
}

/// Returns the content type from the first bytes, else the declared one, else
/// `application/octet-stream`.
pub fn sniff_content_type(content: &[u8], declared: Option<&str>) -> String {
    let sniffed = if content.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if content.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if content.starts_with(b"GIF87a") || content.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if content.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else if content.starts_with(b"OggS") {
        Some("audio/ogg")
    } else if content.len() >= 12 && &content[..4] == b"RIFF" && &content[8..12] == b"WAVE" {
        Some("audio/wav")
    } else if content.len() >= 12 && &content[4..8] == b"ftyp" {
        // ISO media files name their brand after `ftyp`: M4A audio, everything else video.
        Some(if &content[8..11] == b"M4A" {
            "audio/mp4"
        } else {
            "video/mp4"
        })
    } else {
        None
    };
    sniffed
        .map(str::to_owned)
        .or_else(|| {
            declared
                .map(str::trim)
                .filter(|declared| !declared.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "application/octet-stream".to_owned())
}

/// An attachment received in a request, before it is stored.
#[derive(Debug, Clone)]
pub struct ReceivedFile {
    /// File name exactly as the client sent it.
    pub name: String,
    /// Content type the client declared, if any.
    pub declared_type: Option<String>,
    /// The bytes.
    pub content: Bytes,
}

/// Stores a received file and returns its attachment reference.
pub async fn store_attachment(
    store: &dyn BlobStore,
    org_id: &str,
    submission_id: &str,
    file: &ReceivedFile,
) -> Result<Attachment, BlobError> {
    let sha256 = hex::encode(Sha256::digest(&file.content));
    let blob_uri = store
        .put(
            org_id,
            submission_id,
            &file.name,
            &sha256,
            file.content.clone(),
        )
        .await?;
    Ok(Attachment {
        name: file.name.clone(),
        size_bytes: file.content.len() as u64,
        content_type: sniff_content_type(&file.content, file.declared_type.as_deref()),
        sha256,
        blob_uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_bytes_before_declared_type() {
        assert_eq!(
            sniff_content_type(&[0xFF, 0xD8, 0xFF, 0xE0], Some("text/plain")),
            "image/jpeg"
        );
        assert_eq!(sniff_content_type(b"%PDF-1.7", None), "application/pdf");
        assert_eq!(
            sniff_content_type(b"\0\0\0\x20ftypM4A \0", None),
            "audio/mp4"
        );
        assert_eq!(sniff_content_type(b"hello", Some("text/csv")), "text/csv");
        assert_eq!(sniff_content_type(b"", None), "application/octet-stream");
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(
            escape_path_segment("uuid:ab/../c"),
            "uuid%3Aab%2F%2E%2E%2Fc"
        );
        assert_eq!(escape_path_segment(""), "%00");
    }
}
