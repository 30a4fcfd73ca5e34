//! The path every submission takes after parsing, whatever its protocol: decide resend,
//! conflict, edit or split upload from the submission index; store new attachments; produce
//! the raw record and wait for its delivery report; then remember the instance.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fieldforce_schemas::codec::{self, Contract};
use fieldforce_schemas::submission::{
    Attachment, EncryptedSubmission, RAW_SUBMISSION_VERSION, RawSubmission, SubmissionSource,
};
use serde_json::{Map, Value};

use crate::blob::{BlobStore, ReceivedFile, store_attachment};
use crate::error::GatewayError;
use crate::index::{IndexEntry, SubmissionIndex};
use crate::metrics::Metrics;
use crate::producer::GatewayProducer;

/// A parsed submission, ready for the index decision.
#[derive(Debug, Clone)]
pub struct IncomingSubmission {
    /// Organisation, from the credentials.
    pub org_id: String,
    /// Project, from the path or the body, already checked against the credentials.
    pub project_id: String,
    /// User name from the credentials.
    pub submitter: Option<String>,
    /// Protocol.
    pub source: SubmissionSource,
    /// Form identifier.
    pub form_id: String,
    /// Form version.
    pub form_version: Option<String>,
    /// The client's id of this version: the OpenRosa instanceID or the JSON id.
    pub instance_id: String,
    /// The id of the version this one edits.
    pub deprecated_id: Option<String>,
    /// Device identifier.
    pub device_id: Option<String>,
    /// Answers.
    pub fields: Map<String, Value>,
    /// File names the answers refer to.
    pub referenced_files: Vec<String>,
    /// Manifest of an encrypted submission.
    pub encrypted: Option<EncryptedSubmission>,
    /// Hex SHA-256 of the content, which tells a resend from a conflict.
    pub content_sha256: String,
    /// Attachments posted with this request.
    pub files: Vec<ReceivedFile>,
}

/// Outcome of an accepted submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The Kafka key: the root submission id.
    pub submission_id: String,
    /// Revision of the version.
    pub revision: u32,
    /// Whether a record was produced by this request (false for an identical resend).
    pub produced: bool,
    /// Names of attachments still expected.
    pub missing_attachments: Vec<String>,
}

/// The shared intake path.
pub struct Intake {
    /// Producer of every record.
    pub producer: Arc<GatewayProducer>,
    /// Resend, conflict and edit decisions.
    pub index: SubmissionIndex,
    /// Blob store for attachments.
    pub blobs: Arc<dyn BlobStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Full name of the raw submissions topic.
    pub raw_topic: String,
}

/// Position of a new version in its submission history.
struct Placement {
    submission_id: String,
    revision: u32,
    /// Attachments already stored that this version keeps.
    kept: Vec<Attachment>,
}

impl Intake {
    /// Accepts one submission: 201-worthy once this returns `Ok`.
    pub async fn submit(&self, incoming: IncomingSubmission) -> Result<Accepted, GatewayError> {
        let key = SubmissionIndex::key(&incoming.org_id, &incoming.instance_id);
        let _guard = self.index.lock(&key).await;

        // The original's entry, when this post is an edit of an original that no edit had
        // superseded before: the store must keep it once the edit replaces its document.
        let mut superseded = None;
        let placement = match self.index.get(&key).await {
            Some(entry) if entry.content_sha256 != incoming.content_sha256 => {
                return Err(GatewayError::Conflict(incoming.instance_id));
            }
            Some(entry) => {
                // A split upload sends the same XML again with the remaining attachments.
                let adds_files = incoming
                    .files
                    .iter()
                    .any(|file| !entry.attachments.iter().any(|a| a.name == file.name));
                if !adds_files {
                    return Ok(Accepted {
                        submission_id: entry.root_id,
                        revision: entry.revision,
                        produced: false,
                        missing_attachments: missing(
                            &incoming.referenced_files,
                            &entry.attachments,
                        ),
                    });
                }
                Placement {
                    submission_id: entry.root_id,
                    revision: entry.revision,
                    kept: entry.attachments,
                }
            }
            None => match &incoming.deprecated_id {
                Some(deprecated_id) => {
                    let original_key = SubmissionIndex::key(&incoming.org_id, deprecated_id);
                    let Some(original) = self.index.get(&original_key).await else {
                        return Err(GatewayError::OriginalNotFound(deprecated_id.clone()));
                    };
                    if original.root_id == *deprecated_id {
                        superseded = Some((original_key, original.clone()));
                    }
                    // An edit keeps the files it still names, as ODK Collect does not send
                    // unchanged attachments again.
                    let kept = original
                        .attachments
                        .into_iter()
                        .filter(|a| incoming.referenced_files.contains(&a.name))
                        .collect();
                    Placement {
                        submission_id: original.root_id,
                        revision: original.revision + 1,
                        kept,
                    }
                }
                None => Placement {
                    submission_id: incoming.instance_id.clone(),
                    revision: 0,
                    kept: Vec::new(),
                },
            },
        };

        // An original's stored document is filed under its own instanceID, so it is the
        // index entry; an edit's is filed under the original's id.
        let stored_under_own_key = placement.submission_id == incoming.instance_id;
        let attachments = self.store_files(&incoming, &placement).await?;
        let missing_attachments = missing(&incoming.referenced_files, &attachments);
        let received_at_ms = now_ms();
        let record = RawSubmission {
            schema_version: RAW_SUBMISSION_VERSION,
            submission_id: placement.submission_id.clone(),
            revision: placement.revision,
            org_id: incoming.org_id.clone(),
            project_id: incoming.project_id,
            form_id: incoming.form_id,
            form_version: incoming.form_version,
            instance_id: Some(incoming.instance_id),
            deprecated_id: incoming.deprecated_id,
            source: incoming.source,
            received_at_ms,
            content_sha256: incoming.content_sha256.clone(),
            submitter: incoming.submitter,
            device_id: incoming.device_id,
            fields: incoming.fields,
            attachments: attachments.clone(),
            missing_attachments: missing_attachments.clone(),
            encrypted: incoming.encrypted,
        };

        let payload = codec::encode(&record);
        let started = Instant::now();
        self.producer
            .send(
                &self.raw_topic,
                &placement.submission_id,
                &payload,
                &RawSubmission::schema_header(),
                received_at_ms,
            )
            .await?;
        self.metrics.produce_latency(started.elapsed());
        self.metrics.accepted(match record.source {
            SubmissionSource::OpenRosa => "openrosa",
            SubmissionSource::Json | SubmissionSource::Partner => "json",
        });

        let entry = IndexEntry {
            content_sha256: incoming.content_sha256,
            root_id: placement.submission_id.clone(),
            revision: placement.revision,
            attachments,
        };
        if stored_under_own_key {
            self.index.insert_original(key, entry);
        } else {
            self.index.insert(key, entry);
        }
        if let Some((original_key, original)) = superseded {
            self.index.insert(original_key, original);
        }
        tracing::debug!(
            submission_id = %placement.submission_id,
            revision = placement.revision,
            "submission accepted"
        );
        Ok(Accepted {
            submission_id: placement.submission_id,
            revision: placement.revision,
            produced: true,
            missing_attachments,
        })
    }

    /// Writes the files not stored yet and returns the full attachment list: kept ones
    /// first, each name once, a newly posted file replacing a kept one of the same name.
    async fn store_files(
        &self,
        incoming: &IncomingSubmission,
        placement: &Placement,
    ) -> Result<Vec<Attachment>, GatewayError> {
        let mut attachments = placement.kept.clone();
        for file in &incoming.files {
            let stored = store_attachment(
                self.blobs.as_ref(),
                &incoming.org_id,
                &placement.submission_id,
                file,
            )
            .await?;
            match attachments.iter_mut().find(|a| a.name == stored.name) {
                Some(existing) => *existing = stored,
                None => attachments.push(stored),
            }
        }
        Ok(attachments)
    }
}

fn missing(referenced: &[String], attachments: &[Attachment]) -> Vec<String> {
    referenced
        .iter()
        .filter(|name| !attachments.iter().any(|a| &a.name == *name))
        .cloned()
        .collect()
}

/// Returns the gateway clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
