//! The submission index: for each `(org, instanceID)` already accepted, the content hash,
//! the root submission id, the revision and the stored attachments. It decides whether a
//! post is a resend, a conflict, an edit or a split upload.
//!
//! A bounded in-memory map sits in front of a persistent [`IndexStore`] (MongoDB in
//! production): misses of concurrent requests are gathered into one `$in` query, and
//! accepted entries are written behind in batches after their delivery report, so the store
//! sees a few requests per burst rather than one per submission. When the store is unreachable the gateway warns and
//! goes on with memory alone; the sink stays the final arbiter, since it keeps the highest
//! revision and ignores identical duplicates.
//!
//! NOTE: the per-key lock is per process. Two gateway replicas that receive the same
//! instanceID at the same instant can both produce it; the sink then drops the duplicate.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{Document, doc};
use fieldforce_schemas::submission::Attachment;
use futures::future::BoxFuture;
use mongodb::Collection;
use tokio::sync::{OwnedMutexGuard, Semaphore, mpsc, oneshot};

/// Entries the write-behind task stores in one round.
const WRITE_BATCH: usize = 500;
/// Keys read from the store in one query.
const LOOKUP_BATCH: usize = 256;
/// Lookup queries in flight at once: enough to hide one query's round trip, few enough that
/// a slow store does not get a new query for every waiting request.
const LOOKUP_CONCURRENCY: usize = 4;
/// Lookups waiting for a query before new ones skip the store.
const LOOKUP_QUEUE: usize = 4_096;
/// Entries waiting for the write-behind task before new ones are dropped from it (the
/// in-memory map still holds them).
const WRITE_QUEUE: usize = 10_000;
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
}

/// The index in a MongoDB collection, one document per `org/instanceID`.
#[derive(Debug, Clone)]
pub struct MongoIndexStore {
    collection: Collection<Document>,
}

impl MongoIndexStore {
    /// Uses the given collection.
    pub fn new(collection: Collection<Document>) -> Self {
        Self { collection }
    }
}

impl IndexStore for MongoIndexStore {
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, IndexEntry>, IndexStoreError>> {
        Box::pin(async move {
            let mut cursor = self
                .collection
                .find(doc! { "_id": { "$in": keys } })
                .await?;
            let mut entries = HashMap::with_capacity(keys.len());
            while cursor.advance().await? {
                let document = cursor.deserialize_current()?;
                let key = document
                    .get_str("_id")
                    .map_err(|error| IndexStoreError::Invalid {
                        key: format!("{:?}", document.get("_id")),
                        reason: error.to_string(),
                    })?
                    .to_owned();
                let entry = entry_from_document(&key, &document)?;
                entries.insert(key, entry);
            }
            Ok(entries)
        })
    }

    fn save<'a>(
        &'a self,
        entries: &'a [(String, IndexEntry)],
    ) -> BoxFuture<'a, Result<(), IndexStoreError>> {
        Box::pin(async move {
            let documents = entries
                .iter()
                .map(|(key, entry)| entry_to_document(key, entry))
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

fn entry_to_document(key: &str, entry: &IndexEntry) -> Result<Document, IndexStoreError> {
    let attachments =
        bson::to_bson(&entry.attachments).map_err(|error| IndexStoreError::Invalid {
            key: key.to_owned(),
            reason: error.to_string(),
        })?;
    Ok(doc! {
        "_id": key,
        "sha256": &entry.content_sha256,
        "root_id": &entry.root_id,
        "revision": i64::from(entry.revision),
        "attachments": attachments,
        "received_at": bson::DateTime::now(),
    })
}

fn entry_from_document(key: &str, document: &Document) -> Result<IndexEntry, IndexStoreError> {
    let invalid = |reason: String| IndexStoreError::Invalid {
        key: key.to_owned(),
        reason,
    };
    let text = |field: &str| {
        document
            .get_str(field)
            .map(str::to_owned)
            .map_err(|error| invalid(format!("{field}: {error}")))
    };
    let revision = match document.get("revision") {
        Some(bson::Bson::Int32(value)) => i64::from(*value),
        Some(bson::Bson::Int64(value)) => *value,
        Some(bson::Bson::Double(value)) => *value as i64,
        other => return Err(invalid(format!("revision: {other:?}"))),
    };
    let attachments = match document.get("attachments") {
        Some(value) => {
            bson::from_bson(value.clone()).map_err(|error| invalid(error.to_string()))?
        }
        None => Vec::new(),
    };
    Ok(IndexEntry {
        content_sha256: text("sha256")?,
        root_id: text("root_id")?,
        revision: u32::try_from(revision).map_err(|error| invalid(error.to_string()))?,
        attachments,
    })
}

/// A map capped at a number of entries that evicts the oldest inserted first.
#[derive(Debug, Default)]
struct BoundedMap {
    entries: HashMap<String, IndexEntry>,
    order: VecDeque<String>,
    capacity: usize,
}

impl BoundedMap {
    fn insert(&mut self, key: String, entry: IndexEntry) {
        if self.entries.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&oldest);
        }
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

/// The submission index shared by every request.
pub struct SubmissionIndex {
    cache: Mutex<BoundedMap>,
    timeout: Duration,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    health: Arc<StoreHealth>,
    lookups: Option<mpsc::Sender<Lookup>>,
    writes: Mutex<Option<mpsc::Sender<(String, IndexEntry)>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    queue_warnings: WarnLimiter,
}

impl SubmissionIndex {
    /// Creates the index with an optional persistent store and starts its lookup and
    /// write-behind tasks.
    pub fn new(store: Option<Arc<dyn IndexStore>>, capacity: usize, timeout: Duration) -> Self {
        let health = Arc::new(StoreHealth::default());
        let (lookups, writes, writer) = match &store {
            Some(store) => {
                let (lookup_sender, lookup_receiver) = mpsc::channel(LOOKUP_QUEUE);
                tokio::spawn(look_up_in_batches(
                    store.clone(),
                    lookup_receiver,
                    health.clone(),
                    timeout,
                ));
                let (write_sender, write_receiver) = mpsc::channel(WRITE_QUEUE);
                let task =
                    tokio::spawn(write_behind(store.clone(), write_receiver, health.clone()));
                (Some(lookup_sender), Some(write_sender), Some(task))
            }
            None => (None, None, None),
        };
        Self {
            cache: Mutex::new(BoundedMap {
                capacity,
                ..BoundedMap::default()
            }),
            timeout,
            locks: Mutex::new(HashMap::new()),
            health,
            lookups,
            writes: Mutex::new(writes),
            writer: Mutex::new(writer),
            queue_warnings: WarnLimiter::default(),
        }
    }

    /// Builds the key of an instance.
    pub fn key(org_id: &str, instance_id: &str) -> String {
        format!("{org_id}/{instance_id}")
    }

    /// Locks one key until the guard drops, so that two posts of the same instance are
    /// decided one after the other.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self
                .locks
                .lock()
                .expect("index lock table is never poisoned");
            // Entries only the table refers to belong to finished requests.
            if locks.len() > 1024 {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Looks a key up in memory, then in the store. A store that fails, times out or has
    /// too many lookups waiting counts as a miss.
    pub async fn get(&self, key: &str) -> Option<IndexEntry> {
        if let Some(entry) = self.cached(key) {
            return Some(entry);
        }
        let lookups = self.lookups.as_ref()?;
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
            self.remember(key.to_owned(), entry.clone());
        }
        entry
    }

    /// Records an accepted instance in memory and queues it for the store.
    pub fn insert(&self, key: String, entry: IndexEntry) {
        self.remember(key.clone(), entry.clone());
        let writes = self
            .writes
            .lock()
            .expect("index writer lock is never poisoned");
        if let Some(sender) = writes.as_ref()
            && sender.try_send((key, entry)).is_err()
        {
            // Under a burst this fires once per request, so it is rate-limited like the
            // store warnings.
            if let Some(suppressed) = self.queue_warnings.admit() {
                tracing::warn!(
                    suppressed,
                    "submission index write queue full, entry kept in memory only"
                );
            }
        }
    }

    /// Stops taking writes and waits for the queued ones to reach the store.
    pub async fn flush(&self, deadline: Duration) {
        drop(
            self.writes
                .lock()
                .expect("index writer lock is never poisoned")
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .expect("index writer lock is never poisoned")
            .take();
        if let Some(writer) = writer
            && tokio::time::timeout(deadline, writer).await.is_err()
        {
            tracing::warn!("submission index writes not finished before the shutdown deadline");
        }
    }

    fn cached(&self, key: &str) -> Option<IndexEntry> {
        let cache = self
            .cache
            .lock()
            .expect("index cache lock is never poisoned");
        cache.entries.get(key).cloned()
    }

    fn remember(&self, key: String, entry: IndexEntry) {
        let mut cache = self
            .cache
            .lock()
            .expect("index cache lock is never poisoned");
        cache.insert(key, entry);
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

    fn entry(revision: u32) -> IndexEntry {
        IndexEntry {
            content_sha256: "00".into(),
            root_id: "root".into(),
            revision,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn bounded_map_evicts_oldest() {
        let mut map = BoundedMap {
            capacity: 2,
            ..BoundedMap::default()
        };
        map.insert("a".into(), entry(0));
        map.insert("b".into(), entry(0));
        map.insert("a".into(), entry(1));
        map.insert("c".into(), entry(0));
        assert!(!map.entries.contains_key("a"));
        assert!(map.entries.contains_key("b"));
        assert!(map.entries.contains_key("c"));
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
        let document = entry_to_document("org/uuid:1", &original).unwrap();
        assert_eq!(
            entry_from_document("org/uuid:1", &document).unwrap(),
            original
        );
    }
}
