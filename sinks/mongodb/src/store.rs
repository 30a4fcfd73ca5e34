//! The `submissions` collection: its indexes, and the idempotent bulk write of a batch.
//!
//! Originals (revision 0) go in with one unordered `insert_many`; a duplicate-key error means
//! an earlier run already wrote the document. Edits replace the stored document only when it
//! holds a lower revision (`replace_one({_id, revision: {$lt: new}}, upsert)`), so a late
//! replay of an older version never overwrites a newer one; a duplicate-key error there means
//! an equal or newer revision is already stored. Every outcome is therefore safe to repeat,
//! which is what lets the sink retry a whole batch after any transient failure. A duplicate
//! whose stored document has the same revision with another content hash is not a repeat.
//! It is a conflicting version, so the sink dead-letters it and the first version stays.

use std::collections::HashMap;
use std::time::Duration;

use bson::{DateTime, Document, RawBsonRef, RawDocumentBuf, doc};
use fieldforce_runtime::config::{MongoConfig, SinkConfig};
use futures::StreamExt;
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};

use crate::document::StoredDocument;

/// Name of the collection that holds one document per submission.
pub const COLLECTION: &str = fieldforce_schemas::submission::STORED_COLLECTION;

/// MongoDB's `DuplicateKey` error code.
const DUPLICATE_KEY: i32 = 11000;
/// Reads of stored documents in flight at once while a batch's duplicates are checked.
const CONFLICT_READS: usize = 8;

/// Server error codes that reject a document for its content, so writing it again fails the
/// same way: BadValue, TypeMismatch, DollarPrefixedFieldName, DocumentValidationFailure,
/// BSONObjectTooLarge, "can't extract geo keys" and KeyTooLong.
const DOCUMENT_REJECTED: [i32; 7] = [2, 14, 52, 121, 10334, 16755, 17280];

/// What became of one document of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentOutcome {
    /// The store acknowledged the write.
    Written,
    /// The store already held this revision or a newer one.
    AlreadyStored,
    /// A newer revision of the same submission in the same batch was written instead.
    Superseded,
    /// The store, or an earlier record of the same batch, has this revision with other
    /// content. It goes to the dead-letter topic, and the stored version stays.
    Conflicting {
        /// Content hash of the version that stays.
        kept_sha256: String,
    },
    /// The store rejected the document for its content; it goes to the dead-letter topic.
    Rejected {
        /// Server error code.
        code: i32,
        /// Server error message.
        message: String,
    },
}

/// A failure of the store as a whole. The batch is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection string or options are unusable; the service stops.
    #[error("invalid mongodb settings: {0}")]
    Settings(#[source] MongoError),
    /// The store is unreachable, timed out, or failed the request as a whole.
    #[error("store request failed: {0}")]
    Unavailable(#[source] MongoError),
}

/// The collection the sink writes, with the write concern from the configuration.
#[derive(Debug, Clone)]
pub struct Store {
    collection: Collection<RawDocumentBuf>,
}

impl Store {
    /// Creates the client. No request is sent yet: the driver connects on first use.
    pub async fn connect(mongodb: &MongoConfig, sink: &SinkConfig) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(&mongodb.uri)
            .await
            .map_err(StoreError::Settings)?;
        let timeout = Duration::from_millis(sink.store_timeout_ms);
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.app_name = Some("fieldforce-sink".to_owned());
        let client = Client::with_options(options).map_err(StoreError::Settings)?;

        let collection_options = CollectionOptions::builder()
            .write_concern(write_concern(mongodb))
            .build();
        let collection = client
            .database(&mongodb.database)
            .collection_with_options(COLLECTION, collection_options);
        Ok(Self { collection })
    }

    /// Creates the indexes the review screens query by. An index the server rejects (FerretDB
    /// has no 2dsphere index, for one) is logged once at WARN and skipped, because the writes
    /// do not depend on it. Fails only when the store cannot be reached.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        for (name, model) in index_models() {
            match self.collection.create_index(model).await {
                Ok(_) => tracing::debug!(index = name, "index ready"),
                Err(error) if is_unavailable(&error) => return Err(StoreError::Unavailable(error)),
                Err(error) => tracing::warn!(
                    index = name,
                    %error,
                    "store rejected index, continuing without it"
                ),
            }
        }
        Ok(())
    }

    /// Writes a batch and returns one outcome per document, in batch order. Any error of the
    /// store as a whole fails the batch; retrying it is safe because every write is idempotent.
    pub async fn write(
        &self,
        batch: &[StoredDocument],
    ) -> Result<Vec<DocumentOutcome>, StoreError> {
        let mut outcomes = vec![DocumentOutcome::Superseded; batch.len()];

        // Only the newest revision of each submission is written; the older ones in the same
        // batch are superseded by it. Writing them one after another would race on the upsert.
        // Of two records of the same revision the first is kept, as the store keeps the first
        // one written.
        let mut newest: HashMap<&str, usize> = HashMap::with_capacity(batch.len());
        for (index, document) in batch.iter().enumerate() {
            let slot = newest.entry(document.id.as_str()).or_insert(index);
            if document.revision > batch[*slot].revision {
                *slot = index;
            }
        }
        for (index, document) in batch.iter().enumerate() {
            let kept = &batch[newest[document.id.as_str()]];
            if kept.revision == document.revision && kept.content_sha256 != document.content_sha256
            {
                outcomes[index] = DocumentOutcome::Conflicting {
                    kept_sha256: kept.content_sha256.clone(),
                };
            }
        }
        let mut originals: Vec<usize> = Vec::with_capacity(newest.len());
        let mut edits: Vec<usize> = Vec::new();
        for index in newest.into_values() {
            if batch[index].revision == 0 {
                originals.push(index);
            } else {
                edits.push(index);
            }
        }
        // Batch order keeps the insert deterministic, which keeps replays byte-identical.
        originals.sort_unstable();
        edits.sort_unstable();

        self.insert_originals(batch, &originals, &mut outcomes)
            .await?;
        self.replace_edits(batch, &edits, &mut outcomes).await?;
        self.find_conflicts(batch, &mut outcomes).await?;
        Ok(outcomes)
    }

    /// Turns each `AlreadyStored` outcome whose stored document has the same revision with
    /// other content into `Conflicting`. Such a record was acknowledged to its client, after a
    /// gateway lost its memory of the first version, so it must not vanish unseen. A stored
    /// document of another revision, or none (a duplicate on another unique index), leaves
    /// the outcome as it is.
    async fn find_conflicts(
        &self,
        batch: &[StoredDocument],
        outcomes: &mut [DocumentOutcome],
    ) -> Result<(), StoreError> {
        let duplicates: Vec<usize> = (0..batch.len())
            .filter(|&index| outcomes[index] == DocumentOutcome::AlreadyStored)
            .collect();
        let reads: Vec<_> = duplicates
            .iter()
            .map(|&index| {
                let collection = self.collection.clone();
                let id = batch[index].id.clone();
                async move {
                    collection
                        .find_one(doc! { "_id": id })
                        .projection(doc! { "revision": 1, "content_sha256": 1 })
                        .await
                }
            })
            .collect();
        let stored: Vec<_> = futures::stream::iter(reads)
            .buffered(CONFLICT_READS)
            .collect()
            .await;

        for (&index, found) in duplicates.iter().zip(stored) {
            let Some(found) = found.map_err(StoreError::Unavailable)? else {
                continue;
            };
            let document = &batch[index];
            let revision = match found.get("revision") {
                Ok(Some(RawBsonRef::Int64(revision))) => revision,
                Ok(Some(RawBsonRef::Int32(revision))) => i64::from(revision),
                _ => continue,
            };
            let Ok(Some(RawBsonRef::String(stored_sha256))) = found.get("content_sha256") else {
                continue;
            };
            if revision == i64::from(document.revision) && stored_sha256 != document.content_sha256
            {
                outcomes[index] = DocumentOutcome::Conflicting {
                    kept_sha256: stored_sha256.to_owned(),
                };
            }
        }
        Ok(())
    }

    async fn insert_originals(
        &self,
        batch: &[StoredDocument],
        originals: &[usize],
        outcomes: &mut [DocumentOutcome],
    ) -> Result<(), StoreError> {
        if originals.is_empty() {
            return Ok(());
        }
        let stored_at = DateTime::now();
        let documents = originals
            .iter()
            .map(|&index| with_stored_at(&batch[index].raw, stored_at));
        let result = self.collection.insert_many(documents).ordered(false).await;
        for &index in originals {
            outcomes[index] = DocumentOutcome::Written;
        }
        let error = match result {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };

        let ErrorKind::InsertMany(failure) = error.kind.as_ref() else {
            return Err(StoreError::Unavailable(error));
        };
        if failure.write_concern_error.is_some() {
            return Err(StoreError::Unavailable(error));
        }
        for write_error in failure.write_errors.iter().flatten() {
            let Some(&index) = originals.get(write_error.index) else {
                return Err(StoreError::Unavailable(error));
            };
            outcomes[index] = match classify(write_error.code, &write_error.message) {
                Some(outcome) => outcome,
                None => return Err(StoreError::Unavailable(error)),
            };
        }
        Ok(())
    }

    async fn replace_edits(
        &self,
        batch: &[StoredDocument],
        edits: &[usize],
        outcomes: &mut [DocumentOutcome],
    ) -> Result<(), StoreError> {
        // NOTE: edits go to the store one replace at a time (concurrently), because the
        // `bulkWrite` command behind the driver's `Client::bulk_write` needs MongoDB 8.0 and
        // FerretDB 1.24 lacks it. Edits are rare next to originals, so this costs little.
        let stored_at = DateTime::now();
        let replies = futures::future::join_all(edits.iter().map(|&index| {
            let document = &batch[index];
            let filter =
                doc! { "_id": &document.id, "revision": { "$lt": document.revision as i64 } };
            self.collection
                .replace_one(filter, with_stored_at(&document.raw, stored_at))
                .upsert(true)
                .into_future()
        }))
        .await;

        for (&index, reply) in edits.iter().zip(replies) {
            outcomes[index] = match reply {
                Ok(_) => DocumentOutcome::Written,
                Err(error) => {
                    let ErrorKind::Write(WriteFailure::WriteError(write_error)) =
                        error.kind.as_ref()
                    else {
                        return Err(StoreError::Unavailable(error));
                    };
                    match classify(write_error.code, &write_error.message) {
                        Some(outcome) => outcome,
                        None => return Err(StoreError::Unavailable(error)),
                    }
                }
            };
        }
        Ok(())
    }
}

/// Returns the outcome of a per-document write error, or `None` when the error is not about
/// the document and the whole batch must be retried.
fn classify(code: i32, message: &str) -> Option<DocumentOutcome> {
    // NOTE: a duplicate on the unique form and instanceID index, from a different submission
    // id claiming the same instance, also counts as already stored; the message names the
    // index, and the sink logs it but keeps no separate record of the conflict. Its stored
    // event names the claiming submission id, which the store does not hold.
    if code == DUPLICATE_KEY {
        if !message.contains("_id_") {
            tracing::warn!(
                code,
                message,
                "duplicate on a business index, counted as stored"
            );
        }
        return Some(DocumentOutcome::AlreadyStored);
    }
    if DOCUMENT_REJECTED.contains(&code) {
        return Some(DocumentOutcome::Rejected {
            code,
            message: message.to_owned(),
        });
    }
    None
}

/// Whether an error means the store could not be reached or did not answer in time, as
/// opposed to a reply that rejects the request.
fn is_unavailable(error: &MongoError) -> bool {
    matches!(
        error.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
    ) || error.contains_label("RetryableWriteError")
}

/// Builds the write concern of the sink's writes from `mongodb.write_concern` and its timeout.
pub fn write_concern(mongodb: &MongoConfig) -> WriteConcern {
    // Validation accepts only "majority" or a node count.
    let w = match mongodb.write_concern.parse::<u32>() {
        Ok(nodes) => Acknowledgment::Nodes(nodes),
        Err(_) => Acknowledgment::Majority,
    };
    WriteConcern::builder()
        .w(w)
        .w_timeout(Duration::from_millis(mongodb.write_concern_timeout_ms))
        .build()
}

fn index_models() -> Vec<(&'static str, IndexModel)> {
    let named = |name: &str| IndexOptions::builder().name(name.to_owned()).build();
    let mut identity = named("org_form_instance_unique");
    identity.unique = Some(true);
    // JSON submissions may have no instanceID; without the filter every such submission of a
    // form would collide on a null key.
    identity.partial_filter_expression = Some(doc! { "instance_id": { "$exists": true } });

    let model = |keys: Document, options: IndexOptions| {
        IndexModel::builder().keys(keys).options(options).build()
    };
    vec![
        (
            "org_project_submitted",
            model(
                doc! { "org_id": 1, "project_id": 1, "submitted_at": -1 },
                named("org_project_submitted"),
            ),
        ),
        (
            "processing_status",
            model(doc! { "processing_status": 1 }, named("processing_status")),
        ),
        // Clients and operators know a submission by its id, which `_id` carries only after
        // the organisation.
        (
            "submission_id",
            model(doc! { "submission_id": 1 }, named("submission_id")),
        ),
        (
            "org_form_instance_unique",
            model(
                doc! { "org_id": 1, "form_id": 1, "instance_id": 1 },
                identity,
            ),
        ),
        (
            "location_point_2dsphere",
            model(
                doc! { "location.point": "2dsphere" },
                named("location_point_2dsphere"),
            ),
        ),
    ]
}

/// Adds the store's clock as `stored_at`, for accepted-to-stored latency. It is set at write
/// time, outside the document built from the record, because a replay that finds the
/// submission already stored leaves the first `stored_at` in place.
fn with_stored_at(raw: &RawDocumentBuf, stored_at: DateTime) -> RawDocumentBuf {
    let mut document = raw.clone();
    document.append("stored_at", stored_at);
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_key_counts_as_stored() {
        assert_eq!(
            classify(DUPLICATE_KEY, "E11000 duplicate key error index: _id_"),
            Some(DocumentOutcome::AlreadyStored)
        );
    }

    #[test]
    fn unknown_write_error_retries_batch() {
        assert_eq!(classify(91, "shutdown in progress"), None);
    }

    #[test]
    fn too_large_document_is_rejected() {
        assert!(matches!(
            classify(10334, "object too large"),
            Some(DocumentOutcome::Rejected { code: 10334, .. })
        ));
    }
}
