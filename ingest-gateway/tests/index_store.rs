//! The submission index against the local MongoDB-compatible store and Kafka. The tests cover
//! what its Bloom filter lets skip the store, keys written by another index on the same
//! database, the originals it keeps in the stored documents, and the stored-submission events
//! it reads.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fieldforce_gateway::index::{
    IndexEntry, IndexSettings, IndexStore, IndexStoreError, MongoIndexStore, SubmissionIndex,
    stored_events,
};
use fieldforce_kafka::catalog::{Catalog, SUBMISSIONS_STORED};
use fieldforce_kafka::client::producer_config;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown;
use fieldforce_schemas::codec;
use fieldforce_schemas::submission::STORED_COLLECTION;
use fieldforce_schemas::webhook::SubmissionStored;
use futures::future::BoxFuture;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::test_config;

const DEADLINE: Duration = Duration::from_secs(30);

/// The MongoDB store, counting the keys that lookups read from it and the refreshes (key
/// reads after a time) with the keys they passed on.
struct CountingStore {
    inner: MongoIndexStore,
    looked_up: AtomicUsize,
    refreshes: AtomicUsize,
    refreshed_keys: AtomicUsize,
}

impl IndexStore for CountingStore {
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, IndexEntry>, IndexStoreError>> {
        self.looked_up.fetch_add(keys.len(), Ordering::SeqCst);
        self.inner.load_many(keys)
    }

    fn save<'a>(
        &'a self,
        entries: &'a [(String, IndexEntry)],
    ) -> BoxFuture<'a, Result<(), IndexStoreError>> {
        self.inner.save(entries)
    }

    fn visit_keys<'a>(
        &'a self,
        since: Option<bson::DateTime>,
        visit: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, IndexStoreError>> {
        Box::pin(async move {
            let counted = |key: &str| {
                if since.is_some() {
                    self.refreshed_keys.fetch_add(1, Ordering::SeqCst);
                }
                visit(key);
            };
            let visited = self.inner.visit_keys(since, &counted).await;
            if since.is_some() {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
            }
            visited
        })
    }
}

async fn counting_store(config: &Config) -> Arc<CountingStore> {
    Arc::new(CountingStore {
        inner: MongoIndexStore::new(
            collection(config, &config.gateway.index_collection).await,
            collection(config, STORED_COLLECTION).await,
        ),
        looked_up: AtomicUsize::new(0),
        refreshes: AtomicUsize::new(0),
        refreshed_keys: AtomicUsize::new(0),
    })
}

async fn collection(config: &Config, name: &str) -> mongodb::Collection<bson::Document> {
    mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("mongodb uri is valid")
        .database(&config.mongodb.database)
        .collection(name)
}

fn settings(config: &Config) -> IndexSettings {
    IndexSettings {
        refresh_interval: Duration::from_millis(200),
        ..IndexSettings::from_config(&config.gateway)
    }
}

fn entry(revision: u32) -> IndexEntry {
    IndexEntry {
        content_sha256: "ab".repeat(32),
        root_id: uuid::Uuid::new_v4().to_string(),
        revision,
        attachments: Vec::new(),
    }
}

fn new_key() -> String {
    SubmissionIndex::key("demo", &format!("uuid:{}", uuid::Uuid::new_v4()))
}

/// Calls `attempt` until it returns a value, failing the test after [`DEADLINE`].
async fn poll<T, F, Fut>(condition: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{condition} not seen within {DEADLINE:?}: is the local stack up (make up)?"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_filter(index: &SubmissionIndex) {
    poll("loaded filter", || async {
        index.filter_loaded().then_some(())
    })
    .await;
}

#[tokio::test]
async fn loaded_filter_skips_store_for_new_keys() {
    let config = test_config();
    let stored_key = new_key();
    let stored_entry = entry(0);
    let first = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    first.insert(stored_key.clone(), stored_entry.clone());
    first.flush(DEADLINE).await;

    let store = counting_store(&config).await;
    let index = SubmissionIndex::new(Some(store.clone()), &settings(&config));
    wait_for_filter(&index).await;

    for _ in 0..20 {
        assert_eq!(index.get(&new_key()).await, None);
    }
    assert_eq!(
        store.looked_up.load(Ordering::SeqCst),
        0,
        "new keys must not reach the store"
    );

    assert_eq!(index.get(&stored_key).await, Some(stored_entry));
    assert_eq!(store.looked_up.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn key_from_other_index_is_found_after_refresh() {
    let config = test_config();
    let writer = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    let reader = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    wait_for_filter(&reader).await;

    let key = new_key();
    let accepted = entry(2);
    assert_eq!(reader.get(&key).await, None);
    writer.insert(key.clone(), accepted.clone());
    writer.flush(DEADLINE).await;

    let found = poll("key written by another index", || reader.get(&key)).await;
    assert_eq!(found, accepted);
}

#[tokio::test]
async fn refresh_skips_own_entries() {
    let config = test_config();
    let store = counting_store(&config).await;
    let index = SubmissionIndex::new(Some(store.clone()), &settings(&config));
    wait_for_filter(&index).await;

    for _ in 0..50 {
        index.insert(new_key(), entry(0));
    }
    index.flush(DEADLINE).await;
    let refreshes_before = store.refreshes.load(Ordering::SeqCst);
    poll("two refreshes after the writes", || async {
        (store.refreshes.load(Ordering::SeqCst) >= refreshes_before + 2).then_some(())
    })
    .await;

    assert_eq!(
        store.refreshed_keys.load(Ordering::SeqCst),
        0,
        "a refresh must not read back the entries of its own process"
    );
}

#[tokio::test]
async fn entry_without_writer_is_found_after_refresh() {
    let config = test_config();
    let reader = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    wait_for_filter(&reader).await;

    // An entry as written before entries named their writer: the refresh still reads it.
    let key = new_key();
    let client = mongodb::Client::with_uri_str(&config.mongodb.uri)
        .await
        .expect("mongodb uri is valid");
    let now = bson::DateTime::now();
    client
        .database(&config.mongodb.database)
        .collection::<bson::Document>(&config.gateway.index_collection)
        .insert_one(bson::doc! {
            "_id": &key,
            "sha256": "ab".repeat(32),
            "root_id": "root",
            "revision": 0_i64,
            "attachments": [],
            "received_at": now,
            "received_bucket": now.timestamp_millis().div_euclid(5_000),
        })
        .await
        .expect("inserting an entry failed");

    let found = poll("entry without a writer", || reader.get(&key)).await;
    assert_eq!(found.root_id, "root");
}

#[tokio::test]
async fn evicted_own_key_is_read_from_store() {
    let config = test_config();
    // No refresh runs during the test, so only the insert itself can put the key into the
    // filter after the full read.
    let settings = IndexSettings {
        cache_entries: 1,
        refresh_interval: Duration::from_secs(3_600),
        ..IndexSettings::from_config(&config.gateway)
    };
    let store = counting_store(&config).await;
    let index = SubmissionIndex::new(Some(store.clone()), &settings);
    wait_for_filter(&index).await;

    let (evicted_key, evicted_entry) = (new_key(), entry(1));
    index.insert(evicted_key.clone(), evicted_entry.clone());
    index.insert(new_key(), entry(0));
    index.flush(DEADLINE).await;

    assert_eq!(index.get(&evicted_key).await, Some(evicted_entry));
    assert_eq!(store.looked_up.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn idle_key_read_from_store() {
    let config = test_config();
    let settings = IndexSettings {
        cache_idle: Duration::from_secs(1),
        refresh_interval: Duration::from_secs(3_600),
        ..IndexSettings::from_config(&config.gateway)
    };
    let store = counting_store(&config).await;
    let index = SubmissionIndex::new(Some(store.clone()), &settings);
    wait_for_filter(&index).await;

    let (key, accepted) = (new_key(), entry(4));
    index.insert(key.clone(), accepted.clone());
    index.flush(DEADLINE).await;

    poll("idle entry removed from memory", || async {
        (index.cached_entries() == 0).then_some(())
    })
    .await;
    assert_eq!(index.get(&key).await, Some(accepted));
    assert_eq!(store.looked_up.load(Ordering::SeqCst), 1);
    assert_eq!(
        index.cached_entries(),
        1,
        "the store's answer is cached again"
    );
}

/// The MongoDB store whose key read never finishes, as under a store too slow to list keys.
struct StuckKeyRead(MongoIndexStore);

impl IndexStore for StuckKeyRead {
    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, IndexEntry>, IndexStoreError>> {
        self.0.load_many(keys)
    }

    fn save<'a>(
        &'a self,
        entries: &'a [(String, IndexEntry)],
    ) -> BoxFuture<'a, Result<(), IndexStoreError>> {
        self.0.save(entries)
    }

    fn visit_keys<'a>(
        &'a self,
        _since: Option<bson::DateTime>,
        _visit: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64, IndexStoreError>> {
        Box::pin(futures::future::pending())
    }
}

#[tokio::test]
async fn warming_up_until_filter_loaded() {
    let config = test_config();
    let loading = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    let deadline = Instant::now() + DEADLINE;
    while loading.warming_up() {
        assert!(
            Instant::now() < deadline,
            "filter not loaded within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(loading.filter_loaded());

    let stuck_store = Arc::new(StuckKeyRead(counting_store(&config).await.inner.clone()));
    let stuck = SubmissionIndex::new(Some(stuck_store), &settings(&config));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        stuck.warming_up(),
        "a filter that never loads keeps the gateway unready"
    );

    let memory_only = SubmissionIndex::new(None, &settings(&config));
    assert!(
        !memory_only.warming_up(),
        "without a store there is nothing to load"
    );
}

/// Returns an original's key and entry: its root is its own instanceID.
fn original() -> (String, IndexEntry) {
    let instance_id = format!("uuid:{}", uuid::Uuid::new_v4());
    let key = SubmissionIndex::key("demo", &instance_id);
    let entry = IndexEntry {
        root_id: instance_id,
        ..entry(0)
    };
    (key, entry)
}

/// Builds the fields of a stored submission that the index reads, as the sink writes them.
fn stored_document(key: &str, instance_id: &str, sha256: &str, revision: i64) -> bson::Document {
    let (_, submission_id) = key.split_once('/').expect("key is org/id");
    bson::doc! {
        "_id": key,
        "submission_id": submission_id,
        "instance_id": instance_id,
        "org_id": "demo",
        "content_sha256": sha256,
        "revision": revision,
        "attachments": [],
    }
}

async fn index_entry_count(config: &Config, key: &str) -> u64 {
    collection(config, &config.gateway.index_collection)
        .await
        .count_documents(bson::doc! { "_id": key })
        .await
        .expect("counting index entries failed")
}

#[tokio::test]
async fn original_saved_at_flush_until_stored() {
    let config = test_config();
    let index = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    wait_for_filter(&index).await;
    let stored_keys = index
        .stored_keys()
        .expect("an index with a store has a filter");

    let (awaiting_key, awaiting) = original();
    let (stored_key, stored) = original();
    index.insert_original(awaiting_key.clone(), awaiting.clone());
    index.insert_original(stored_key.clone(), stored);
    assert!(stored_keys.add_stored(&stored_key, 0));
    index.flush(DEADLINE).await;

    assert_eq!(index_entry_count(&config, &stored_key).await, 0);
    assert_eq!(index_entry_count(&config, &awaiting_key).await, 1);
    let restarted = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    wait_for_filter(&restarted).await;
    assert_eq!(restarted.get(&awaiting_key).await, Some(awaiting));
}

#[tokio::test]
async fn idle_original_saved_until_stored() {
    let config = test_config();
    let settings = IndexSettings {
        cache_idle: Duration::from_millis(500),
        ..settings(&config)
    };
    let index = SubmissionIndex::new(Some(counting_store(&config).await), &settings);
    wait_for_filter(&index).await;

    let (key, accepted) = original();
    index.insert_original(key.clone(), accepted.clone());
    assert_eq!(index_entry_count(&config, &key).await, 0);
    poll("idle original written to the index collection", || async {
        (index_entry_count(&config, &key).await == 1).then_some(())
    })
    .await;
    assert_eq!(index.cached_entries(), 0);
    assert_eq!(index.get(&key).await, Some(accepted));
}

#[tokio::test]
async fn original_read_from_stored_document() {
    let config = test_config();
    let (key, _) = original();
    let (_, instance_id) = key.split_once('/').unwrap();
    collection(&config, STORED_COLLECTION)
        .await
        .insert_one(stored_document(&key, instance_id, &"cd".repeat(32), 2))
        .await
        .expect("inserting a stored document failed");

    let store = counting_store(&config).await;
    let index = SubmissionIndex::new(Some(store.clone()), &settings(&config));
    wait_for_filter(&index).await;

    let found = index.get(&key).await.expect("stored original found");
    assert_eq!(found.root_id, instance_id);
    assert_eq!(found.content_sha256, "cd".repeat(32));
    assert_eq!(found.revision, 2);
    assert_eq!(
        store.looked_up.load(Ordering::SeqCst),
        1,
        "the full read puts stored keys into the filter"
    );
    assert_eq!(index.get(&new_key()).await, None);
    assert_eq!(store.looked_up.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn superseded_original_read_from_index_entry() {
    let config = test_config();
    let (key, superseded) = original();
    let (_, instance_id) = key.split_once('/').unwrap();
    // The stored document contains the edit now, and the original's own entry was saved when
    // the edit was accepted.
    let edit_instance = format!("uuid:{}", uuid::Uuid::new_v4());
    collection(&config, STORED_COLLECTION)
        .await
        .insert_one(stored_document(&key, &edit_instance, &"ef".repeat(32), 1))
        .await
        .expect("inserting a stored document failed");
    let writer = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    writer.insert(key.clone(), superseded.clone());
    writer.flush(DEADLINE).await;

    let index = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    wait_for_filter(&index).await;
    let found = index.get(&key).await.expect("superseded original found");
    assert_eq!(found, superseded);
    assert_eq!(found.root_id, instance_id);
}

#[tokio::test]
async fn stored_event_reaches_filter_and_ends_wait() {
    let config = test_config();
    fieldforce_kafka::admin::apply(&config.kafka, &Catalog::embedded(), true)
        .await
        .expect("creating the test topics failed");
    let index = SubmissionIndex::new(Some(counting_store(&config).await), &settings(&config));
    wait_for_filter(&index).await;
    let stored_keys = index
        .stored_keys()
        .expect("an index with a store has a filter");
    let (trigger, shutdown) = shutdown::channel();
    let topic = config.kafka.topic(SUBMISSIONS_STORED);
    let follower = tokio::spawn(stored_events::follow(
        config.kafka.clone(),
        topic.clone(),
        stored_keys.clone(),
        shutdown,
    ));

    // Both events go to one partition, in order, so once the second key is in the filter
    // the first event has been read too.
    let (own_key, own) = original();
    let (other_key, _) = original();
    index.insert_original(own_key.clone(), own);
    assert!(!stored_keys.may_contain(&other_key));
    let producer: FutureProducer = producer_config(&config.kafka)
        .create()
        .expect("creating a producer failed");
    for key in [&own_key, &other_key] {
        let (org_id, submission_id) = key.split_once('/').unwrap();
        let event = stored_event(org_id, submission_id);
        let payload = codec::encode(&event);
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("one-partition")
                    .payload(&payload),
                DEADLINE,
            )
            .await
            .expect("producing a stored-submission event failed");
    }

    poll("key of another replica in the filter", || async {
        stored_keys.may_contain(&other_key).then_some(())
    })
    .await;
    index.flush(DEADLINE).await;
    assert_eq!(
        index_entry_count(&config, &own_key).await,
        0,
        "a stored original needs no index entry"
    );
    trigger.trigger();
    tokio::time::timeout(DEADLINE, follower)
        .await
        .expect("follower stops at shutdown")
        .expect("follower task did not panic");
}

fn stored_event(org_id: &str, submission_id: &str) -> SubmissionStored {
    SubmissionStored {
        schema_version: 1,
        org_id: org_id.to_owned(),
        project_id: "household".to_owned(),
        form_id: "household_survey".to_owned(),
        submission_id: submission_id.to_owned(),
        instance_id: Some(submission_id.to_owned()),
        revision: 0,
        processing_status: None,
        quality_score: None,
        quality_flags: Vec::new(),
        stored_at_ms: 0,
    }
}
