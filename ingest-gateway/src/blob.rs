//! The blob store that keeps attachments, written before the record that refers to them is
//! produced, and content-type sniffing from magic bytes.
//!
//! The local store lays files out as `<blob_dir>/<org>/<submission id>/<sha256>`, with the
//! organisation and id percent-escaped. The client's file name (any UTF-8: accents, emoji,
//! Arabic) lives only in the attachment metadata, so no file system encoding question arises
//! and two attachments with the same content share one file.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use fieldforce_schemas::submission::Attachment;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

/// A blob store write that failed; the request gets 503 and the client retries.
#[derive(Debug, thiserror::Error)]
#[error("writing attachment {name:?} to {path} failed: {source}")]
pub struct BlobError {
    /// Attachment name.
    pub name: String,
    /// Path the store tried to write.
    pub path: String,
    /// The IO failure.
    pub source: std::io::Error,
}

/// Storage for attachments.
///
/// NOTE: only the local folder implementation exists. S3-compatible storage would be a
/// second implementation of this trait (the `object_store` crate's `AmazonS3` behind the
/// same `put`), selected by a `blob_url` setting.
pub trait BlobStore: Send + Sync {
    /// Stores the content durably and returns its URI.
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
            let error = |source| BlobError {
                name: name.to_owned(),
                path: path.display().to_string(),
                source,
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
/// becomes one safe path segment.
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
