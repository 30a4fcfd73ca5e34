//! The submission index: for each `(org, instanceID)` already accepted, the content hash,
//! the root submission id, the revision and the stored attachments. It decides whether a
//! post is a resend, a conflict, an edit or a split upload.
//!
//! A bounded in-memory map sits in front of a persistent [`IndexStore`] (MongoDB in
//! production). Most posts carry a new instanceID, which the map cannot contain, so a Bloom
//! [`KeyFilter`] of every key in the store sits between the two. A key it reports absent is
//! new without a store lookup. Only keys it reports as maybe present are read from the
//! store: resends, edits, split uploads and about `index_filter_false_positive_rate` of the
//! new keys. The filter is filled at start by streaming the keys of the store in the
//! background. Keys this process accepts go into it at once. Keys that other replicas accept
//! reach it in two ways: the stored-submission events (see [`stored_events`]), and every
//! `index_refresh_ms` a read of the recently written index entries. Until the first full
//! read finishes, every miss of the map goes to the store.
//!
//! The store keeps an original (an instance whose instanceID is its own submission id) in
//! the sink's stored document: its `_id` is the same `org/instanceID` key, and it carries the
//! content hash, the revision and the attachments. A second document per submission for the
//! index would double the store's writes. On the local FerretDB 1.24 over PostgreSQL those
//! index writes raised the gateway's p99 latency at 2,000 posts/s from about 4.5 ms to about
//! 11 ms (docs/benchmarks/gateway.md). So the index collection receives only the
//! entries that no stored document contains under their own key. Those are edits, whose
//! document is filed under the original's id, and the original an edit supersedes, whose
//! document then contains the edit's content. They are also originals that leave memory
//! (evicted, idle, or at shutdown) before the stored-submission event of their revision
//! arrives.
//!
//! The price is a window. Between the gateway's answer and the sink's write (the pipeline's
//! latency, longer while the sink lags) an original is known only to the memory of the
//! process that accepted it. If that process stops without its shutdown (a crash, or a kill
//! past the deadline), a resend in that window counts as new, and so does a resend to
//! another replica. The sink then keeps the first version, since it inserts originals and
//! never replaces them with another revision 0.
//!
//! The map drops an entry after `index_cache_idle_ms` without a read or a write, so that
//! its memory goes back down after a burst. A later post of that instance reads the entry
//! from the store again.
//!
//! A filter in memory was chosen over making each lookup cheaper, because the store is the
//! bottleneck: FerretDB 1.24 over PostgreSQL pushes neither `$in` nor range filters down to
//! SQL (its "Query pushdown" documentation page lists only `=`, `$eq` and `$ne` on
//! scalars), so a `$in` lookup reads the whole table. The remaining lookups therefore run as
//! concurrent `_id` equality queries, which it does push down. For the same reason a refresh
//! does not ask for `received_at` after a time. Every entry is filed under a
//! `received_bucket` number, one per 5 s, and a refresh reads the recent buckets by
//! equality. Against the local FerretDB 1.24 on 2 shared cores, with 79,000 entries, that
//! took about 40 ms where a full read took 2.8 s (one measurement each).
//!
//! Index entries are written behind in batches after their delivery report, so the store
//! receives a few writes per burst rather than one per entry. When the store is unreachable
//! the gateway warns and goes on with memory alone. An entry that never reached the store is
//! forgotten once it is evicted or idle, and a resend of it then counts as new. The sink
//! stays the final arbiter, since it keeps the highest revision and ignores identical
//! duplicates.
//!
//! NOTE: the per-key lock is per process, and a replica learns the keys of other replicas
//! only from their stored-submission events or its next refresh. Two replicas that receive
//! the same instanceID before either is stored can both produce it as new; the sink then
//! keeps the first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bson::{Document, doc};
use fieldforce_runtime::config::GatewayConfig;
use fieldforce_schemas::submission::Attachment;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use mongodb::{Collection, IndexModel};
use tokio::sync::{OwnedMutexGuard, Semaphore, mpsc, oneshot};

use crate::filter::KeyFilter;

mod cache;
pub mod stored_events;

use cache::IndexCache;

/// Entries the write-behind task stores in one round.
const WRITE_BATCH: usize = 500;
/// How long `/readyz` waits for the Bloom filter's first full load before it reports ready
/// anyway.
pub const FILTER_WARM_UP_LIMIT: Duration = Duration::from_secs(60);
/// Lookups gathered into one batch.
const LOOKUP_BATCH: usize = 256;
/// Batches in flight at once: enough to hide one batch's round trip, few enough that a slow
/// store does not get new queries for every waiting request.
const LOOKUP_CONCURRENCY: usize = 4;
/// `_id` queries of one batch in flight at once. With [`LOOKUP_CONCURRENCY`] batches this
/// can exceed the driver's pool of 10 connections, where the rest wait for a connection.
const FIND_CONCURRENCY: usize = 8;
/// Width of the time slots that index entries are filed under by their `received_bucket`
/// field, so that a refresh can read the recent ones with equality queries. Every replica
/// must use the same width.
const RECEIVED_BUCKET: Duration = Duration::from_secs(5);
/// How far before the previous refresh the next one reads, so that an entry stamped by a
/// replica whose clock is behind, or stored a little after its stamp, is still read.
const REFRESH_OVERLAP: Duration = Duration::from_secs(10);
/// Maximum duration of a full read of the keys before it is abandoned and retried.
const FULL_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Maximum duration of a refresh before it is abandoned and retried.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(60);
/// Lookups waiting for a query before new ones skip the store.
const LOOKUP_QUEUE: usize = 4_096;
/// Entries waiting for the write-behind task before new ones are dropped from it (the
/// in-memory map keeps them until they are evicted or idle).
const WRITE_QUEUE: usize = 10_000;
/// Idle entries removed from memory under one hold of the cache lock. Each removal frees at
/// least four allocations: two copies of the key, the hash and the root id.
const IDLE_REMOVAL_BATCH: usize = 4_096;
/// How long the store is left alone after a failure.
const STORE_BACKOFF: Duration = Duration::from_secs(10);
/// Minimum time between two warnings about the store.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Index entry of an accepted instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Hex SHA-256 of the instance's content.
    pub content_sha256: String,
    /// Submission id of the original this instance is a version of: the Kafka key.
    pub root_id: String,
    /// Revision produced for this instance.
    pub revision: u32,
    /// Attachments stored for this instance so far.
    pub attachments: Vec<Attachment>,
}

/// The persistent store could not be read or written; the gateway goes on with memory.
#[derive(Debug, thiserror::Error)]
pub enum IndexStoreError {
    /// The database request failed.
    #[error("submission index request failed: {0}")]
    Database(#[from] mongodb::error::Error),
    /// A stored entry does not have the expected shape.
    #[error("submission index entry {key} is invalid: {reason}")]
    Invalid {
        /// Entry key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The request did not finish in time.
    #[error("submission index request timed out")]
    TimedOut,
    /// More lookups are waiting for the store than the queue holds.
    #[error("submission index lookup queue is full")]
    Overloaded,
}

/// The persistent side of the index.
pub trait IndexStore: Send + Sync {
    /// Reads the entries of the given `org/instanceID` keys; absent keys are left out.
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, IndexEntry>, IndexStoreError>>;
    /// Writes entries, replacing older ones with the same key.
    fn save<'a>(
        &'a self,
        entries: &'a [(String, IndexEntry)],
    ) -> BoxFuture<'a, Result<(), IndexStoreError>>;
    /// Passes every stored key to `visit`, or with `since` the keys of the entries written
    /// at or after it (and possibly a few older ones), and returns how many it passed.
    fn visit_keys<'a>(
        &'a self,
        since: Option<bson::DateTime>,
        visit: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, IndexStoreError>>;
}

/// The index in MongoDB: the stored submissions, read only, and a collection of the entries
/// that no stored document contains under their own key, one document per `org/instanceID`.
#[derive(Debug, Clone)]
pub struct MongoIndexStore {
    collection: Collection<Document>,
    stored: Collection<Document>,
    /// Random id of this process, written into each entry it saves, so that its refreshes
    /// read only the entries of other replicas.
    writer: String,
}

impl MongoIndexStore {
    /// Uses the given index collection and the sink's collection of stored submissions
    /// ([`STORED_COLLECTION`](fieldforce_schemas::submission::STORED_COLLECTION)), with a new
    /// writer id.
    pub fn new(collection: Collection<Document>, stored: Collection<Document>) -> Self {
        Self {
            collection,
            stored,
            writer: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Reads the entry of one key: the stored submission under that `_id` while it is still
    /// the key's own instance, else the index collection's entry.
    async fn load_one(&self, key: &str) -> Result<Option<IndexEntry>, IndexStoreError> {
        let stored = self
            .stored
            .find_one(doc! { "_id": key })
            .projection(doc! {
                "submission_id": 1,
                "instance_id": 1,
                "content_sha256": 1,
                "revision": 1,
                "attachments": 1,
            })
            .await?;
        if let Some(document) = &stored
            && holds_own_instance(document)
        {
            return entry_from_stored(key, document).map(Some);
        }

        if let Some(document) = self.collection.find_one(doc! { "_id": key }).await? {
            return entry_from_document(key, &document).map(Some);
        }
        // NOTE: an original superseded by an edit whose index entry never reached the store
        // (store down, or the write queue full) is read with the edit's hash, so an
        // identical resend of that original reads as a conflict.
        stored
            .map(|document| entry_from_stored(key, &document))
            .transpose()
    }
}

impl IndexStore for MongoIndexStore {
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, IndexEntry>, IndexStoreError>> {
        Box::pin(async move {
            // Equality queries per key, because FerretDB 1.24 executes `$in` by reading the
            // whole collection.
            futures::stream::iter(keys.iter().cloned())
                .map(|key| {
                    let store = self.clone();
                    async move {
                        let entry = store.load_one(&key).await?;
                        Ok(entry.map(|entry| (key, entry)))
                    }
                })
                .buffer_unordered(FIND_CONCURRENCY)
                .try_filter_map(|found| async move { Ok(found) })
                .try_collect()
                .await
        })
    }

    fn save<'a>(
        &'a self,
        entries: &'a [(String, IndexEntry)],
    ) -> BoxFuture<'a, Result<(), IndexStoreError>> {
        Box::pin(async move {
            let documents = entries
                .iter()
                .map(|(key, entry)| entry_to_document(key, entry, &self.writer))
                .collect::<Result<Vec<_>, _>>()?;

            // Most entries are first revisions of new instances, so one unordered insert
            // stores them. Only keys that exist already (split uploads) are replaced one by
            // one, because upserts are the slow path on some servers (FerretDB 1.24).
            let existing = match self.collection.insert_many(&documents).ordered(false).await {
                Ok(_) => return Ok(()),
                Err(error) => duplicate_positions(error)?,
            };
            for position in existing {
                let (key, _) = &entries[position];
                self.collection
                    .replace_one(doc! { "_id": key }, &documents[position])
                    .await?;
            }
            Ok(())
        })
    }

    fn visit_keys<'a>(
        &'a self,
        since: Option<bson::DateTime>,
        visit: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, IndexStoreError>> {
        Box::pin(async move {
            let Some(since) = since else {
                let index = IndexModel::builder()
                    .keys(doc! { "received_bucket": 1 })
                    .build();
                self.collection.create_index(index).await?;
                // NOTE: FerretDB 1.24 reads whole stored documents to return their `_id`s,
                // so this read takes several times as long as one of the small index entries.
                let stored = visit_ids(&self.stored, doc! {}, visit).await?;
                return Ok(stored + visit_ids(&self.collection, doc! {}, visit).await?);
            };

            // One equality query per bucket rather than a range, because FerretDB 1.24
            // reads the whole table for a range filter but passes an equality to SQL. The
            // keys this process wrote are in its filter already, and skipping them in the
            // query keeps a lone gateway's refresh from reading back every entry it wrote.
            let mut count = 0;
            let last = received_bucket(bson::DateTime::now());
            for bucket in received_bucket(since)..=last {
                let filter = doc! { "received_bucket": bucket, "writer": { "$ne": &self.writer } };
                count += visit_ids(&self.collection, filter, visit).await?;
            }
            Ok(count)
        })
    }
}

/// Passes the `_id` of every document of `collection` that matches `filter` to `visit`, and
/// returns how many it passed.
async fn visit_ids(
    collection: &Collection<Document>,
    filter: Document,
    visit: &(dyn Fn(&str) + Send + Sync),
) -> Result<u64, IndexStoreError> {
    let mut cursor = collection
        .find(filter)
        .projection(doc! { "_id": 1 })
        .batch_size(10_000)
        .await?;
    let mut count = 0;
    while cursor.advance().await? {
        let document = cursor.deserialize_current()?;
        let key = document
            .get_str("_id")
            .map_err(|error| IndexStoreError::Invalid {
                key: format!("{:?}", document.get("_id")),
                reason: error.to_string(),
            })?;
        visit(key);
        count += 1;
    }
    Ok(count)
}

/// Returns the number of the [`RECEIVED_BUCKET`]-wide time slot that contains `time`.
fn received_bucket(time: bson::DateTime) -> i64 {
    let width_ms = RECEIVED_BUCKET.as_millis() as i64;
    time.timestamp_millis().div_euclid(width_ms)
}

/// Returns the positions of an unordered insert that failed only because their `_id` exists,
/// or the error when anything else failed.
fn duplicate_positions(error: mongodb::error::Error) -> Result<Vec<usize>, IndexStoreError> {
    const DUPLICATE_KEY: i32 = 11_000;
    let mongodb::error::ErrorKind::InsertMany(failure) = error.kind.as_ref() else {
        return Err(error.into());
    };
    let write_errors = failure.write_errors.as_deref().unwrap_or_default();
    if failure.write_concern_error.is_some()
        || write_errors.is_empty()
        || write_errors
            .iter()
            .any(|failed| failed.code != DUPLICATE_KEY)
    {
        return Err(error.into());
    }
    Ok(write_errors.iter().map(|failed| failed.index).collect())
}

fn entry_to_document(
    key: &str,
    entry: &IndexEntry,
    writer: &str,
) -> Result<Document, IndexStoreError> {
    let attachments =
        bson::to_bson(&entry.attachments).map_err(|error| IndexStoreError::Invalid {
            key: key.to_owned(),
            reason: error.to_string(),
        })?;
    let received_at = bson::DateTime::now();
    Ok(doc! {
        "_id": key,
        "sha256": &entry.content_sha256,
        "root_id": &entry.root_id,
        "revision": i64::from(entry.revision),
        "attachments": attachments,
        "received_at": received_at,
        "received_bucket": received_bucket(received_at),
        "writer": writer,
    })
}

fn entry_from_document(key: &str, document: &Document) -> Result<IndexEntry, IndexStoreError> {
    entry_from_fields(key, document, "sha256", "root_id")
}

/// Builds the entry of a key from the sink's stored document of that submission.
fn entry_from_stored(key: &str, document: &Document) -> Result<IndexEntry, IndexStoreError> {
    entry_from_fields(key, document, "content_sha256", "submission_id")
}

/// Builds an entry from a document whose content hash and root submission id are in the
/// named fields, and whose revision and attachments are in `revision` and `attachments`.
fn entry_from_fields(
    key: &str,
    document: &Document,
    hash_field: &str,
    root_field: &str,
) -> Result<IndexEntry, IndexStoreError> {
    let text = |field: &str| {
        document
            .get_str(field)
            .map(str::to_owned)
            .map_err(|error| IndexStoreError::Invalid {
                key: key.to_owned(),
                reason: format!("{field}: {error}"),
            })
    };
    Ok(IndexEntry {
        content_sha256: text(hash_field)?,
        root_id: text(root_field)?,
        revision: revision_of(key, document)?,
        attachments: attachments_of(key, document)?,
    })
}

/// Reads the `revision` field, which the gateway writes as a 64-bit integer and other
/// writers may have stored as a 32-bit integer or a double.
fn revision_of(key: &str, document: &Document) -> Result<u32, IndexStoreError> {
    let invalid = |reason: String| IndexStoreError::Invalid {
        key: key.to_owned(),
        reason: format!("revision: {reason}"),
    };
    let revision = match document.get("revision") {
        Some(bson::Bson::Int32(value)) => i64::from(*value),
        Some(bson::Bson::Int64(value)) => *value,
        Some(bson::Bson::Double(value)) => *value as i64,
        other => return Err(invalid(format!("{other:?}"))),
    };
    u32::try_from(revision).map_err(|error| invalid(error.to_string()))
}

/// Reads the `attachments` field; a document without one has none.
fn attachments_of(key: &str, document: &Document) -> Result<Vec<Attachment>, IndexStoreError> {
    match document.get("attachments") {
        Some(value) => bson::from_bson(value.clone()).map_err(|error| IndexStoreError::Invalid {
            key: key.to_owned(),
            reason: format!("attachments: {error}"),
        }),
        None => Ok(Vec::new()),
    }
}

/// Returns whether a stored submission still contains the instance its `_id` names: an
/// original, or one of its split uploads, rather than an edit filed under the original's id.
fn holds_own_instance(document: &Document) -> bool {
    match (
        document.get_str("instance_id"),
        document.get_str("submission_id"),
    ) {
        (Ok(instance_id), Ok(submission_id)) => instance_id == submission_id,
        // A submission stored without an instanceID was never edited through this gateway.
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    }
}

/// Logs a repeated warning at most once per interval, with the count of those left out.
#[derive(Debug, Default)]
struct WarnLimiter {
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnLimiter {
    /// Returns the number of warnings left out since the last logged one when this one is to
    /// be logged, or `None` when it falls inside the interval and is only counted.
    fn admit(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .expect("warn limiter lock is never poisoned");
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
        {
            state.1 += 1;
            return None;
        }
        let suppressed = state.1;
        *state = (Some(now), 0);
        Some(suppressed)
    }

    fn warn(&self, error: &IndexStoreError, action: &str) {
        if let Some(suppressed) = self.admit() {
            tracing::warn!(%error, action, suppressed, "submission index store unavailable, using memory only");
        }
    }
}

/// Store availability, shared by the request path and the background tasks.
#[derive(Debug, Default)]
struct StoreHealth {
    down_until: Mutex<Option<Instant>>,
    warnings: WarnLimiter,
}

impl StoreHealth {
    fn backing_off(&self) -> bool {
        let until = self
            .down_until
            .lock()
            .expect("index backoff lock is never poisoned");
        until.is_some_and(|until| Instant::now() < until)
    }

    /// Leaves the store alone for a while and warns, rate-limited.
    fn failed(&self, error: &IndexStoreError, action: &str) {
        *self
            .down_until
            .lock()
            .expect("index backoff lock is never poisoned") = Some(Instant::now() + STORE_BACKOFF);
        self.warnings.warn(error, action);
    }
}

/// One request's store lookup. The lookup task replies `None` when the store query failed.
type Lookup = (String, oneshot::Sender<Option<Option<IndexEntry>>>);

/// Sizes and intervals of the submission index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSettings {
    /// Entries kept in memory before the least recently used are evicted.
    pub cache_entries: usize,
    /// Time without a read or a write after which an entry leaves memory.
    pub cache_idle: Duration,
    /// Maximum duration of a store lookup before it counts as a miss.
    pub timeout: Duration,
    /// Keys the Bloom filter is sized for.
    pub filter_keys: u64,
    /// False positive rate of the Bloom filter at `filter_keys` keys.
    pub filter_false_positive_rate: f64,
    /// Time between two reads of recent store entries into the filter.
    pub refresh_interval: Duration,
}

impl IndexSettings {
    /// Takes the settings from the gateway configuration.
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self {
            cache_entries: config.index_cache_entries,
            cache_idle: Duration::from_millis(config.index_cache_idle_ms),
            timeout: Duration::from_millis(config.index_timeout_ms),
            filter_keys: config.index_filter_keys,
            filter_false_positive_rate: config.index_filter_false_positive_rate,
            refresh_interval: Duration::from_millis(config.index_refresh_ms),
        }
    }
}

/// The filter of keys in the store, and whether it contains all of them yet.
#[derive(Debug)]
struct KnownKeys {
    filter: KeyFilter,
    loaded: AtomicBool,
}

/// Tells a [`SubmissionIndex`], for as long as it exists, which keys the store contains: they
/// go into its Bloom filter, and a cached original stops awaiting its stored document.
#[derive(Debug, Clone)]
pub struct StoredKeys {
    known: Weak<KnownKeys>,
    cache: Weak<Mutex<IndexCache>>,
}

impl StoredKeys {
    /// Adds a key to the filter, and returns false once the index is gone.
    pub fn add(&self, key: &str) -> bool {
        let Some(known) = self.known.upgrade() else {
            return false;
        };
        known.filter.insert(key);
        true
    }

    /// Adds the key of a stored submission and ends the wait of its cached entry when the
    /// sink has stored that entry's revision or a newer one. Returns false once the index is
    /// gone.
    pub fn add_stored(&self, key: &str, revision: u32) -> bool {
        if !self.add(key) {
            return false;
        }
        if let Some(cache) = self.cache.upgrade() {
            cache
                .lock()
                .expect("index cache lock is never poisoned")
                .confirm_stored(key, revision);
        }
        true
    }

    /// Returns whether the filter may contain `key`; false once the index is gone.
    pub fn may_contain(&self, key: &str) -> bool {
        self.known
            .upgrade()
            .is_some_and(|known| known.filter.may_contain(key))
    }
}

/// Number of per-key locks the lock table may reach before its first sweep.
const LOCK_TABLE_MIN_SWEEP: usize = 1024;

/// The per-key locks of the requests in progress, swept of finished ones as it grows.
#[derive(Debug)]
struct LockTable {
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Size at which the next sweep runs: twice the size the last sweep left, so that a
    /// table holding many keys in use is not swept on every request.
    sweep_at: usize,
}

impl Default for LockTable {
    fn default() -> Self {
        Self {
            locks: HashMap::new(),
            sweep_at: LOCK_TABLE_MIN_SWEEP,
        }
    }
}

impl LockTable {
    /// Returns the lock of `key`, created when no request holds or waits for it.
    fn key_lock(&mut self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        if self.locks.len() >= self.sweep_at {
            // A lock that only the table refers to belongs to finished requests.
            self.locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            self.sweep_at = (2 * self.locks.len()).max(LOCK_TABLE_MIN_SWEEP);
            if self.locks.capacity() > 4 * self.sweep_at {
                self.locks.shrink_to(self.sweep_at);
            }
        }
        self.locks.entry(key.to_owned()).or_default().clone()
    }
}

/// The submission index shared by every request.
pub struct SubmissionIndex {
    created: Instant,
    cache: Arc<Mutex<IndexCache>>,
    timeout: Duration,
    known: Option<Arc<KnownKeys>>,
    locks: Mutex<LockTable>,
    health: Arc<StoreHealth>,
    lookups: Option<mpsc::Sender<Lookup>>,
    writes: Arc<WriteQueue>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The sending side of the write-behind queue, shared with the task that removes idle
/// entries, and closed by [`SubmissionIndex::flush`].
#[derive(Debug, Default)]
struct WriteQueue {
    sender: Mutex<Option<mpsc::Sender<(String, IndexEntry)>>>,
    warnings: WarnLimiter,
}

impl WriteQueue {
    /// Queues entries for the store without waiting; an entry that finds the queue full or
    /// closed is not written.
    fn push(&self, entries: Vec<(String, IndexEntry)>) {
        // Most calls carry nothing, and they come once per request.
        if entries.is_empty() {
            return;
        }
        let sender = self
            .sender
            .lock()
            .expect("index write queue lock is never poisoned")
            .clone();
        let Some(sender) = sender else {
            return;
        };
        for entry in entries {
            // Under a burst this fires once per request, so it is rate-limited like the
            // store warnings.
            if sender.try_send(entry).is_err()
                && let Some(suppressed) = self.warnings.admit()
            {
                tracing::warn!(
                    suppressed,
                    "submission index write queue full, entry not written to the store"
                );
            }
        }
    }

    /// Takes the sender away, so that the queue closes once the last clone in use drops.
    fn close(&self) -> Option<mpsc::Sender<(String, IndexEntry)>> {
        self.sender
            .lock()
            .expect("index write queue lock is never poisoned")
            .take()
    }
}

impl SubmissionIndex {
    /// Creates the index with an optional persistent store and starts the task that drops
    /// idle entries from memory. With a store it also starts its lookup, write-behind and
    /// filter tasks.
    pub fn new(store: Option<Arc<dyn IndexStore>>, settings: &IndexSettings) -> Self {
        let timeout = settings.timeout;
        let cache = Arc::new(Mutex::new(IndexCache::new(
            settings.cache_entries,
            settings.cache_idle,
        )));
        let writes = Arc::new(WriteQueue::default());
        tokio::spawn(remove_idle_entries(
            Arc::downgrade(&cache),
            writes.clone(),
            settings.cache_idle,
        ));
        let health = Arc::new(StoreHealth::default());
        let known = store.as_ref().map(|store| {
            let known = Arc::new(KnownKeys {
                filter: KeyFilter::new(settings.filter_keys, settings.filter_false_positive_rate),
                loaded: AtomicBool::new(false),
            });
            tokio::spawn(track_store_keys(
                store.clone(),
                Arc::downgrade(&known),
                health.clone(),
                settings.refresh_interval,
            ));
            known
        });
        let (lookups, writer) = match &store {
            Some(store) => {
                let (lookup_sender, lookup_receiver) = mpsc::channel(LOOKUP_QUEUE);
                tokio::spawn(look_up_in_batches(
                    store.clone(),
                    lookup_receiver,
                    health.clone(),
                    timeout,
                ));
                let (write_sender, write_receiver) = mpsc::channel(WRITE_QUEUE);
                *writes
                    .sender
                    .lock()
                    .expect("index write queue lock is never poisoned") = Some(write_sender);
                let task =
                    tokio::spawn(write_behind(store.clone(), write_receiver, health.clone()));
                (Some(lookup_sender), Some(task))
            }
            None => (None, None),
        };
        Self {
            created: Instant::now(),
            cache,
            timeout,
            known,
            locks: Mutex::new(LockTable::default()),
            health,
            lookups,
            writes,
            writer: Mutex::new(writer),
        }
    }

    /// Builds the key of an instance.
    pub fn key(org_id: &str, instance_id: &str) -> String {
        format!("{org_id}/{instance_id}")
    }

    /// Locks one key until the guard drops, so that two posts of the same instance are
    /// decided one after the other.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .expect("index lock table is never poisoned")
            .key_lock(key);
        lock.lock_owned().await
    }

    /// Returns true once the Bloom filter contains every key of the store, so that lookups
    /// of keys it reports absent skip the store.
    pub fn filter_loaded(&self) -> bool {
        self.known
            .as_ref()
            .is_some_and(|known| known.loaded.load(Ordering::Acquire))
    }

    /// Returns true while the Bloom filter is still loading and the gateway should not take
    /// traffic yet: until then every new key costs a store lookup, which times out under full
    /// load. After [`FILTER_WARM_UP_LIMIT`] the gateway takes traffic anyway, because a store
    /// that cannot be read at all must not keep it out of service.
    pub fn warming_up(&self) -> bool {
        self.known.is_some()
            && !self.filter_loaded()
            && self.created.elapsed() < FILTER_WARM_UP_LIMIT
    }

    /// Looks a key up in memory, then in the store unless the loaded Bloom filter reports it
    /// absent. A store that fails, times out or has too many lookups waiting counts as a
    /// miss.
    pub async fn get(&self, key: &str) -> Option<IndexEntry> {
        if let Some(entry) = self.cached(key) {
            return Some(entry);
        }
        let lookups = self.lookups.as_ref()?;
        // Until the full read finishes, every new key costs a store lookup, so `/readyz` keeps
        // traffic away meanwhile (FerretDB 1.24 reads about 28,000 keys a second here).
        // NOTE: a gateway that is sent traffic before it is ready, or whose load takes longer
        // than FILTER_WARM_UP_LIMIT, still has lookups time out in its first seconds.
        if self.filter_loaded()
            && self
                .known
                .as_ref()
                .is_some_and(|known| !known.filter.may_contain(key))
        {
            return None;
        }
        if self.health.backing_off() {
            return None;
        }

        let (answer, answered) = oneshot::channel();
        if lookups.try_send((key.to_owned(), answer)).is_err() {
            // The store is slow rather than down, so it is not backed off.
            self.health
                .warnings
                .warn(&IndexStoreError::Overloaded, "queue lookup");
            return None;
        }
        let entry = match tokio::time::timeout(self.timeout, answered).await {
            Ok(Ok(Some(entry))) => entry,
            // The lookup task already warned about the failed query.
            Ok(Ok(None)) | Ok(Err(_)) => return None,
            Err(_) => {
                self.health.failed(&IndexStoreError::TimedOut, "load");
                return None;
            }
        };
        if let Some(entry) = &entry {
            self.remember(key.to_owned(), entry.clone(), false);
        }
        entry
    }

    /// Records an accepted original in memory. It is not queued for the store, because the
    /// sink's stored document of the submission, under the same key, becomes its entry there.
    /// Only if it leaves memory before the sink has stored it (see [`StoredKeys`]) is it
    /// written to the index collection: when it is evicted, idle or flushed at shutdown.
    pub fn insert_original(&self, key: String, entry: IndexEntry) {
        if let Some(known) = &self.known {
            known.filter.insert(&key);
        }
        self.remember(key, entry, true);
    }

    /// Records an accepted instance in memory and queues it for the store: an edit, or an
    /// original that an edit supersedes.
    pub fn insert(&self, key: String, entry: IndexEntry) {
        if let Some(known) = &self.known {
            known.filter.insert(&key);
        }
        self.remember(key.clone(), entry.clone(), false);
        self.writes.push(vec![(key, entry)]);
    }

    /// Queues the originals still awaiting their stored document, stops taking writes and
    /// waits, up to `deadline`, for the queued ones to reach the store.
    pub async fn flush(&self, deadline: Duration) {
        let stop_at = tokio::time::Instant::now() + deadline;
        let awaiting = self
            .cache
            .lock()
            .expect("index cache lock is never poisoned")
            .take_awaiting();
        if let Some(sender) = self.writes.close() {
            if !awaiting.is_empty() {
                tracing::info!(
                    entries = awaiting.len(),
                    "saving submission index entries not yet stored by the sink"
                );
            }
            for entry in awaiting {
                if tokio::time::timeout_at(stop_at, sender.send(entry))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        let writer = self
            .writer
            .lock()
            .expect("index writer lock is never poisoned")
            .take();
        if let Some(writer) = writer
            && tokio::time::timeout_at(stop_at, writer).await.is_err()
        {
            tracing::warn!("submission index writes not finished before the shutdown deadline");
        }
    }

    /// Returns the handle through which keys stored by other replicas reach the Bloom
    /// filter, or `None` without a store.
    pub fn stored_keys(&self) -> Option<StoredKeys> {
        self.known.as_ref().map(|known| StoredKeys {
            known: Arc::downgrade(known),
            cache: Arc::downgrade(&self.cache),
        })
    }

    /// Returns the number of entries in memory, idle ones not yet removed included.
    pub fn cached_entries(&self) -> usize {
        self.cache
            .lock()
            .expect("index cache lock is never poisoned")
            .len()
    }

    fn cached(&self, key: &str) -> Option<IndexEntry> {
        self.cache
            .lock()
            .expect("index cache lock is never poisoned")
            .get(key, Instant::now())
    }

    fn remember(&self, key: String, entry: IndexEntry, awaiting_store: bool) {
        let unsaved = {
            let mut cache = self
                .cache
                .lock()
                .expect("index cache lock is never poisoned");
            cache.insert(key, entry, Instant::now(), awaiting_store);
            cache.take_unsaved()
        };
        self.writes.push(unsaved);
    }
}

/// Resolves lookups with one `$in` query per gathered batch. Every lookup that arrives while
/// the queries in flight run joins the next one.
async fn look_up_in_batches(
    store: Arc<dyn IndexStore>,
    mut receiver: mpsc::Receiver<Lookup>,
    health: Arc<StoreHealth>,
    timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(LOOKUP_CONCURRENCY));
    let mut batch = Vec::with_capacity(LOOKUP_BATCH);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        if receiver.recv_many(&mut batch, LOOKUP_BATCH).await == 0 {
            return;
        }
        let lookups = std::mem::replace(&mut batch, Vec::with_capacity(LOOKUP_BATCH));
        let (store, health) = (store.clone(), health.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut keys: Vec<String> = lookups.iter().map(|(key, _)| key.clone()).collect();
            keys.sort_unstable();
            keys.dedup();
            let found = match tokio::time::timeout(timeout, store.load_many(&keys)).await {
                Ok(Ok(found)) => Some(found),
                Ok(Err(error)) => {
                    health.failed(&error, "load");
                    None
                }
                Err(_) => {
                    health.failed(&IndexStoreError::TimedOut, "load");
                    None
                }
            };
            for (key, answer) in lookups {
                // A requester that timed out has dropped its receiver, so the send error is expected.
                let _ = answer.send(found.as_ref().map(|found| found.get(&key).cloned()));
            }
        });
    }
}

/// Fills the Bloom filter with every key of the store, then adds the keys of recent entries
/// every `interval`, until the index is dropped.
async fn track_store_keys(
    store: Arc<dyn IndexStore>,
    known: Weak<KnownKeys>,
    health: Arc<StoreHealth>,
    interval: Duration,
) {
    let mut since = None;
    loop {
        let Some(keys) = known.upgrade() else {
            return;
        };
        // The next read starts before this one, so that it overlaps with it.
        let next_since =
            bson::DateTime::from_system_time(std::time::SystemTime::now() - REFRESH_OVERLAP);
        let limit = if since.is_some() {
            REFRESH_TIMEOUT
        } else {
            FULL_READ_TIMEOUT
        };
        let visit = |key: &str| keys.filter.insert(key);
        let started = Instant::now();
        match tokio::time::timeout(limit, store.visit_keys(since, &visit)).await {
            Ok(Ok(count)) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                if since.is_none() {
                    keys.loaded.store(true, Ordering::Release);
                    tracing::info!(
                        keys = count,
                        elapsed_ms,
                        filter_bytes = keys.filter.size_bytes(),
                        "submission index filter loaded"
                    );
                } else {
                    tracing::debug!(
                        keys = count,
                        elapsed_ms,
                        "submission index filter refreshed"
                    );
                }
                since = Some(next_since);
            }
            // The store backoff is left alone, since request lookups fail on their own.
            Ok(Err(error)) => health.warnings.warn(&error, "read keys"),
            Err(_) => health
                .warnings
                .warn(&IndexStoreError::TimedOut, "read keys"),
        }
        drop(keys);
        tokio::time::sleep(interval).await;
    }
}

/// Removes entries idle for `idle_limit` from memory, checking four times per limit, until
/// the index is dropped, and queues the removed ones that still await their stored document.
/// An entry therefore stays up to a quarter of the limit past it.
async fn remove_idle_entries(
    cache: Weak<Mutex<IndexCache>>,
    writes: Arc<WriteQueue>,
    idle_limit: Duration,
) {
    let mut ticks = tokio::time::interval((idle_limit / 4).max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        loop {
            let Some(index_cache) = cache.upgrade() else {
                return;
            };
            let (done, unsaved) = {
                let mut index_cache = index_cache
                    .lock()
                    .expect("index cache lock is never poisoned");
                let done = index_cache.remove_idle(Instant::now(), IDLE_REMOVAL_BATCH);
                (done, index_cache.take_unsaved())
            };
            drop(index_cache);
            writes.push(unsaved);
            if done {
                break;
            }
            // Requests wait for the lock meanwhile, so a large removal is split.
            tokio::task::yield_now().await;
        }
    }
}

async fn write_behind(
    store: Arc<dyn IndexStore>,
    mut receiver: mpsc::Receiver<(String, IndexEntry)>,
    health: Arc<StoreHealth>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while receiver.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        if let Err(error) = store.save(&batch).await {
            health.failed(&error, "save");
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an entry without attachments, for the tests of this module and of `cache`.
    pub(super) fn entry(revision: u32) -> IndexEntry {
        IndexEntry {
            content_sha256: "00".into(),
            root_id: "root".into(),
            revision,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn lock_table_sweeps_finished_keys() {
        let mut table = LockTable::default();
        let in_use: Vec<_> = (0..3 * LOCK_TABLE_MIN_SWEEP)
            .map(|number| table.key_lock(&format!("org/in-use:{number}")))
            .collect();
        assert!(table.sweep_at >= in_use.len());

        for number in 0..4 * table.sweep_at {
            drop(table.key_lock(&format!("org/done:{number}")));
        }
        assert!(table.locks.len() <= table.sweep_at);
        for number in 0..in_use.len() {
            assert!(table.locks.contains_key(&format!("org/in-use:{number}")));
        }
    }

    #[test]
    fn document_round_trips() {
        let mut original = entry(3);
        original.attachments.push(Attachment {
            name: "fîlé😂.jpg".into(),
            size_bytes: 0,
            sha256: "e3".into(),
            content_type: "image/jpeg".into(),
            blob_uri: "file:///x".into(),
        });
        let document = entry_to_document("org/uuid:1", &original, "writer").unwrap();
        assert_eq!(
            entry_from_document("org/uuid:1", &document).unwrap(),
            original
        );
    }

    #[test]
    fn stored_document_read_as_entry() {
        let document = doc! {
            "_id": "org/uuid:1",
            "submission_id": "uuid:1",
            "instance_id": "uuid:1",
            "content_sha256": "ab",
            "revision": 2_i32,
            "attachments": [],
        };
        assert!(holds_own_instance(&document));
        let read = entry_from_stored("org/uuid:1", &document).unwrap();
        assert_eq!(read.content_sha256, "ab");
        assert_eq!(read.root_id, "uuid:1");
        assert_eq!(read.revision, 2);
        assert!(read.attachments.is_empty());
    }

    #[test]
    fn stored_edit_not_own_instance() {
        let edited = doc! { "submission_id": "uuid:1", "instance_id": "uuid:1b" };
        assert!(!holds_own_instance(&edited));
        let partner = doc! { "submission_id": "partner-7" };
        assert!(
            holds_own_instance(&partner),
            "a submission without an instanceID is its own"
        );
    }
}
