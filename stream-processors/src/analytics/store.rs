//! The two analytics collections and the idempotent application of a batch.
//!
//! [`Store::apply`] first writes each submission's contribution under the revision rule
//! ([`decide`]). A contribution that replaces an earlier revision records the slots that
//! revision was counted in. Then it recomputes the daily documents of every slot it touched,
//! old and new, from all the contributions of that project and day. Every step can be repeated: a contribution write is
//! a compare-and-swap on the revision read, and a recomputation replaces a document with
//! figures derived from the stored contributions alone.
//!
//! Concurrent recomputations of one document (two aggregator instances during a rebalance,
//! or scaled out) are ordered by the document's `version` counter: a recomputation first
//! raises it, then reads the contributions, and writes only if the counter still holds the
//! value it raised it to. A contribution written before a counter was raised is therefore in
//! the figures of every recomputation that may still write.
//!
//! NOTE: this ordering needs a filtered replace and an `$inc` that the store applies
//! atomically, as MongoDB does. FerretDB 1.24 on PostgreSQL, the local stack's store, does
//! not. In a probe with 8 threads on one document, 400 `$inc` raises moved the counter by
//! 66 to 68, and 246 to 265 replaces filtered on the version matched while the version moved
//! by only 54 to 64 (docs/benchmarks/ferretdb-atomicity.md). On FerretDB, concurrent aggregator
//! instances can therefore overwrite each other's newer figures or contributions. One
//! instance at a time is not affected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bson::doc;
use fieldforce_runtime::config::{AnalyticsConfig, MongoConfig};
use fieldforce_schemas::analytics::{
    CONTRIBUTIONS_COLLECTION, DAILY_COLLECTION, DailyDocument, Enumerator, Scope, daily_id,
};
use futures::StreamExt;
use futures::TryStreamExt;
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, CollectionOptions, IndexOptions, ReturnDocument, WriteConcern,
};
use mongodb::{Client, Collection, IndexModel};

use super::figures::{Contribution, Slot, figures};

/// MongoDB's `DuplicateKey` error code.
const DUPLICATE_KEY: i32 = 11000;

/// Attempts at a contribution write or a recomputation that lost a race before the batch is
/// failed and retried as a whole. Races need two instances on one submission or day.
const MAX_RACE_ATTEMPTS: usize = 20;

/// A failure of the store. Every variant but `Settings` is retried: the batch is applied again
/// after a backoff, which is safe because every step of it is idempotent.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection string or options are unusable; the aggregator stops.
    #[error("invalid mongodb settings: {0}")]
    Settings(#[source] MongoError),
    /// The store is unreachable, timed out, or rejected a request.
    #[error("store request failed: {0}")]
    Unavailable(#[from] MongoError),
    /// A stored document does not have the shape this build writes.
    #[error("stored analytics document is invalid: {0}")]
    Invalid(String),
    /// Writers kept changing the same documents; the batch is retried after a backoff.
    #[error("gave up after {MAX_RACE_ATTEMPTS} attempts on documents other writers kept changing")]
    Contended,
}

/// What the revision rule decides for an incoming contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is stored for the submission: insert the contribution.
    Insert,
    /// An older revision is stored: replace it, if it is still the one read.
    Replace {
        /// Revision of the stored contribution.
        stored_revision: i64,
    },
    /// The stored revision is the same or newer: leave it.
    Keep,
}

/// Applies the revision rule: a lower or equal revision never overwrites a higher one.
pub fn decide(stored: Option<&Contribution>, incoming: &Contribution) -> Decision {
    match stored {
        None => Decision::Insert,
        Some(stored) if stored.revision < incoming.revision => Decision::Replace {
            stored_revision: stored.revision,
        },
        Some(_) => Decision::Keep,
    }
}

/// Returns the contribution that replaces `stored`, carrying over the slots whose figures
/// must still be recomputed: the stored one's pending slots and its own slot, unless the new
/// revision counts in the same one.
pub fn superseding(stored: &Contribution, mut incoming: Contribution) -> Contribution {
    let mut pending: BTreeSet<Slot> = stored.pending.iter().cloned().collect();
    pending.insert(stored.slot.clone());
    pending.remove(&incoming.slot);
    incoming.pending = pending.into_iter().collect();
    incoming
}

/// A project's day in one organisation: the unit recomputed from one read of contributions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjectDay {
    /// Organisation.
    pub org_id: String,
    /// Project.
    pub project_id: String,
    /// Day as `YYYY-MM-DD`.
    pub day: String,
}

/// The daily documents a batch must recompute, by project-day: the project document always,
/// and the document of each enumerator listed.
pub type Affected = BTreeMap<ProjectDay, BTreeSet<Enumerator>>;

fn touch(affected: &mut Affected, org_id: &str, slot: &Slot) {
    affected
        .entry(ProjectDay {
            org_id: org_id.to_owned(),
            project_id: slot.project_id.clone(),
            day: slot.day.clone(),
        })
        .or_default()
        .insert(slot.enumerator.clone());
}

/// Counts of one applied batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Contributions inserted or replaced.
    pub contributions_written: u64,
    /// Daily documents replaced.
    pub daily_written: u64,
    /// Recomputations or contribution writes that lost a race and were repeated.
    pub races: u64,
}

/// The analytics collections, with the write concern from the configuration.
#[derive(Debug, Clone)]
pub struct Store {
    contributions: Collection<Contribution>,
    daily: Collection<DailyDocument>,
    concurrency: usize,
}

impl Store {
    /// Creates the client. No request is sent yet: the driver connects on first use.
    pub async fn connect(
        mongodb: &MongoConfig,
        analytics: &AnalyticsConfig,
    ) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(&mongodb.uri)
            .await
            .map_err(StoreError::Settings)?;
        let timeout = Duration::from_millis(analytics.store_timeout_ms);
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.app_name = Some("fieldforce-analytics".to_owned());
        let client = Client::with_options(options).map_err(StoreError::Settings)?;

        let collection_options = CollectionOptions::builder()
            .write_concern(write_concern(mongodb))
            .build();
        let database = client.database(&mongodb.database);
        Ok(Self {
            contributions: database
                .collection_with_options(CONTRIBUTIONS_COLLECTION, collection_options.clone()),
            daily: database.collection_with_options(DAILY_COLLECTION, collection_options),
            concurrency: analytics.recompute_concurrency,
        })
    }

    /// Creates the indexes of the recomputation (contributions of a project-day) and of the
    /// stats endpoint (daily documents of a project over a range of days).
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = |name: &str| {
            IndexModel::builder()
                .keys(doc! { "org_id": 1, "project_id": 1, "day": 1 })
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        self.contributions
            .create_index(index("org_project_day"))
            .await?;
        self.daily.create_index(index("org_project_day")).await?;
        Ok(())
    }

    /// Applies a batch of contributions and recomputes every daily document they touch.
    /// Returns only once every write is acknowledged; the caller may then store the offsets.
    pub async fn apply(&self, batch: Vec<Contribution>) -> Result<Applied, StoreError> {
        let mut applied = Applied::default();

        // Only the newest revision of each submission in the batch matters; the older ones
        // would be overwritten by it within the same batch.
        let mut newest: HashMap<String, Contribution> = HashMap::with_capacity(batch.len());
        for contribution in batch {
            match newest.get(&contribution.id) {
                Some(kept) if kept.revision > contribution.revision => {}
                _ => {
                    newest.insert(contribution.id.clone(), contribution);
                }
            }
        }

        let mut affected = Affected::new();
        // Contributions whose pending slots are recomputed by this batch and can be cleared,
        // with the revision that carries them.
        let mut to_clear: Vec<(String, i64)> = Vec::new();
        let mut remaining: Vec<Contribution> = newest.into_values().collect();
        let mut attempts = 0;
        while !remaining.is_empty() {
            attempts += 1;
            if attempts > MAX_RACE_ATTEMPTS {
                return Err(StoreError::Contended);
            }
            let lost = self
                .write_contributions(remaining, &mut affected, &mut to_clear, &mut applied)
                .await?;
            if !lost.is_empty() {
                tracing::debug!(
                    contributions = lost.len(),
                    "contribution writes lost a race, deciding again"
                );
            }
            applied.races += lost.len() as u64;
            remaining = lost;
        }

        let recomputed: Vec<Result<(u64, u64), StoreError>> = futures::stream::iter(affected)
            .map(|(day, enumerators)| async move { self.recompute(&day, &enumerators).await })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for result in recomputed {
            let (written, races) = result?;
            applied.daily_written += written;
            applied.races += races;
        }

        // The filter on the revision leaves a contribution alone if a newer revision replaced
        // it meanwhile, since that one carries its own pending slots.
        for (id, revision) in to_clear {
            self.contributions
                .update_one(
                    doc! { "_id": &id, "revision": revision },
                    doc! { "$set": { "pending": [] } },
                )
                .await?;
        }
        Ok(applied)
    }

    /// Writes contributions under the revision rule and records the slots to recompute.
    /// Returns the contributions whose stored revision changed between the read and the
    /// write, to be decided again.
    async fn write_contributions(
        &self,
        incoming: Vec<Contribution>,
        affected: &mut Affected,
        to_clear: &mut Vec<(String, i64)>,
        applied: &mut Applied,
    ) -> Result<Vec<Contribution>, StoreError> {
        let ids: Vec<&str> = incoming.iter().map(|c| c.id.as_str()).collect();
        let stored: HashMap<String, Contribution> = self
            .contributions
            .find(doc! { "_id": { "$in": ids } })
            .await?
            .map_ok(|contribution| (contribution.id.clone(), contribution))
            .try_collect()
            .await?;

        let mut inserts = Vec::new();
        let mut replaces = Vec::new();
        for contribution in incoming {
            let previous = stored.get(&contribution.id);
            match decide(previous, &contribution) {
                Decision::Insert => inserts.push(contribution),
                Decision::Replace { stored_revision } => {
                    let previous = previous.expect("a replace decision has a stored revision");
                    replaces.push((stored_revision, superseding(previous, contribution)));
                }
                Decision::Keep => {
                    // A replay, or an older revision arriving late. An earlier run may have
                    // written the stored revision and stopped before recomputing its slots,
                    // so they are recomputed again.
                    let kept = previous.expect("a keep decision has a stored revision");
                    touch(affected, &kept.org_id, &kept.slot);
                    for slot in &kept.pending {
                        touch(affected, &kept.org_id, slot);
                    }
                    if !kept.pending.is_empty() {
                        to_clear.push((kept.id.clone(), kept.revision));
                    }
                }
            }
        }

        let mut lost = Vec::new();
        let inserted = self.insert_new(inserts, &mut lost).await?;
        for contribution in inserted {
            touch(affected, &contribution.org_id, &contribution.slot);
            applied.contributions_written += 1;
        }

        let replies = futures::future::join_all(replaces.iter().map(|(stored_revision, new)| {
            self.contributions
                .replace_one(doc! { "_id": &new.id, "revision": *stored_revision }, new)
                .into_future()
        }))
        .await;
        for ((_, new), reply) in replaces.into_iter().zip(replies) {
            if reply?.matched_count == 0 {
                lost.push(new);
                continue;
            }
            applied.contributions_written += 1;
            touch(affected, &new.org_id, &new.slot);
            for slot in &new.pending {
                touch(affected, &new.org_id, slot);
            }
            if !new.pending.is_empty() {
                to_clear.push((new.id.clone(), new.revision));
            }
        }
        Ok(lost)
    }

    /// Inserts contributions of submissions nothing was stored for. Returns the inserted
    /// ones; those another writer inserted first go to `lost`, to be decided again.
    async fn insert_new(
        &self,
        inserts: Vec<Contribution>,
        lost: &mut Vec<Contribution>,
    ) -> Result<Vec<Contribution>, StoreError> {
        if inserts.is_empty() {
            return Ok(inserts);
        }
        let error = match self
            .contributions
            .insert_many(&inserts)
            .ordered(false)
            .await
        {
            Ok(_) => return Ok(inserts),
            Err(error) => error,
        };
        let ErrorKind::InsertMany(failure) = error.kind.as_ref() else {
            return Err(StoreError::Unavailable(error));
        };
        if failure.write_concern_error.is_some() {
            return Err(StoreError::Unavailable(error));
        }
        let mut duplicates = BTreeSet::new();
        for write_error in failure.write_errors.iter().flatten() {
            if write_error.code != DUPLICATE_KEY {
                return Err(StoreError::Unavailable(error));
            }
            duplicates.insert(write_error.index);
        }
        let mut inserted = Vec::with_capacity(inserts.len());
        for (index, contribution) in inserts.into_iter().enumerate() {
            if duplicates.contains(&index) {
                lost.push(contribution);
            } else {
                inserted.push(contribution);
            }
        }
        Ok(inserted)
    }

    /// Recomputes the project document of a day and the documents of the given enumerators
    /// from all contributions of that day. Returns the documents written and the races lost.
    ///
    /// NOTE: every batch that touches a day reads all of that day's contributions, so the cost
    /// of a batch grows with the size of the days it touches. A project with tens of thousands
    /// of submissions a day needs larger batches (`analytics.batch_max_records`) to keep up.
    /// No load beyond a few thousand submissions a day has been measured.
    async fn recompute(
        &self,
        day: &ProjectDay,
        enumerators: &BTreeSet<Enumerator>,
    ) -> Result<(u64, u64), StoreError> {
        let mut targets: Vec<Option<&Enumerator>> = vec![None];
        targets.extend(enumerators.iter().map(Some));

        // Raising every counter before the read puts every contribution written before this
        // call into the figures below.
        let bumps = futures::future::join_all(
            targets
                .iter()
                .map(|enumerator| self.raise_version(day, *enumerator)),
        )
        .await;
        let mut versions = Vec::with_capacity(targets.len());
        for (enumerator, bump) in targets.into_iter().zip(bumps) {
            versions.push((enumerator, bump?));
        }

        let mut written = 0;
        let mut races = 0;
        for _ in 0..MAX_RACE_ATTEMPTS {
            let contributions: Vec<Contribution> = self
                .contributions
                .find(doc! {
                    "org_id": &day.org_id,
                    "project_id": &day.project_id,
                    "day": &day.day,
                })
                .await?
                .try_collect()
                .await?;

            let replies =
                futures::future::join_all(versions.iter().map(|(enumerator, version)| {
                    let document = daily_document(day, *enumerator, &contributions, *version);
                    async move {
                        self.daily
                            .replace_one(
                                doc! { "_id": &document.id, "version": *version },
                                &document,
                            )
                            .await
                    }
                }))
                .await;

            let mut lost = Vec::new();
            for ((enumerator, _), reply) in versions.into_iter().zip(replies) {
                if reply?.matched_count == 0 {
                    lost.push(enumerator);
                } else {
                    written += 1;
                }
            }
            if lost.is_empty() {
                return Ok((written, races));
            }

            // Another recomputation raised these counters after this one did. Retrying with the
            // current counters keeps this batch from depending on that one finishing.
            races += lost.len() as u64;
            tracing::debug!(org_id = %day.org_id, project_id = %day.project_id, day = %day.day, documents = lost.len(), "recomputation lost a race, retrying");
            versions = Vec::with_capacity(lost.len());
            for enumerator in lost {
                let id = daily_id(&day.org_id, &day.project_id, &day.day, enumerator);
                let current = self
                    .daily
                    .find_one(doc! { "_id": &id })
                    .await?
                    .ok_or_else(|| StoreError::Invalid(format!("daily document {id} vanished")))?;
                versions.push((enumerator, current.version));
            }
        }
        Err(StoreError::Contended)
    }

    /// Raises the version counter of a daily document, creating the document with zero
    /// figures if it does not exist, and returns the new value.
    async fn raise_version(
        &self,
        day: &ProjectDay,
        enumerator: Option<&Enumerator>,
    ) -> Result<i64, StoreError> {
        let empty = daily_document(day, enumerator, &[], 0);
        let mut on_insert =
            bson::to_document(&empty).map_err(|error| StoreError::Invalid(error.to_string()))?;
        on_insert.remove("_id");
        on_insert.remove("version");

        for _ in 0..MAX_RACE_ATTEMPTS {
            let reply = self
                .daily
                .find_one_and_update(
                    doc! { "_id": &empty.id },
                    doc! { "$inc": { "version": 1_i64 }, "$setOnInsert": on_insert.clone() },
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .await;
            match reply {
                Ok(Some(raised)) => return Ok(raised.version),
                Ok(None) => {
                    return Err(StoreError::Invalid(format!(
                        "upsert of {} returned nothing",
                        empty.id
                    )));
                }
                // Two writers upserting a new document at once can both miss it, so the second
                // insert fails with a duplicate key (seen with FerretDB 1.24). Its next attempt
                // finds the document and raises the counter.
                Err(error) if is_duplicate_key(&error) => {
                    tracing::debug!(id = %empty.id, "counter upsert lost a race, retrying");
                }
                Err(error) => return Err(StoreError::Unavailable(error)),
            }
        }
        Err(StoreError::Contended)
    }
}

/// Builds the daily document of a project-day, or of one enumerator on it, from every
/// contribution of that project-day.
fn daily_document(
    day: &ProjectDay,
    enumerator: Option<&Enumerator>,
    contributions: &[Contribution],
    version: i64,
) -> DailyDocument {
    let counted = contributions.iter().filter(|contribution| {
        enumerator.is_none_or(|enumerator| contribution.slot.enumerator == *enumerator)
    });
    DailyDocument {
        id: daily_id(&day.org_id, &day.project_id, &day.day, enumerator),
        org_id: day.org_id.clone(),
        project_id: day.project_id.clone(),
        day: day.day.clone(),
        scope: if enumerator.is_some() {
            Scope::Enumerator
        } else {
            Scope::Project
        },
        enumerator: enumerator.cloned(),
        figures: figures(counted),
        version,
    }
}

fn is_duplicate_key(error: &MongoError) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        _ => false,
    }
}

fn write_concern(mongodb: &MongoConfig) -> WriteConcern {
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

#[cfg(test)]
mod tests {
    use fieldforce_schemas::analytics::EnumeratorSource;

    use super::*;

    fn at(revision: i64, day: &str, enumerator: &str) -> Contribution {
        Contribution {
            id: "org/s1".into(),
            org_id: "org".into(),
            submission_id: "s1".into(),
            revision,
            slot: Slot {
                project_id: "p".into(),
                day: day.into(),
                enumerator: Enumerator {
                    source: EnumeratorSource::Submitter,
                    id: enumerator.into(),
                },
            },
            quality_score: Some(90),
            quality_flags: Vec::new(),
            outside_geofence: false,
            interview_duration_s: Some(600),
            pending: Vec::new(),
        }
    }

    #[test]
    fn newer_revision_replaces_stored() {
        let stored = at(1, "2024-05-01", "ama");
        assert_eq!(decide(None, &stored), Decision::Insert);
        assert_eq!(
            decide(Some(&stored), &at(2, "2024-05-01", "ama")),
            Decision::Replace { stored_revision: 1 }
        );
    }

    #[test]
    fn equal_or_older_revision_is_kept_out() {
        let stored = at(2, "2024-05-01", "ama");
        assert_eq!(
            decide(Some(&stored), &at(2, "2024-05-02", "kofi")),
            Decision::Keep
        );
        assert_eq!(
            decide(Some(&stored), &at(0, "2024-05-02", "kofi")),
            Decision::Keep
        );
    }

    #[test]
    fn moved_revision_keeps_old_slot_pending() {
        let mut stored = at(1, "2024-05-01", "ama");
        stored.pending = vec![at(0, "2024-04-30", "ama").slot];
        let moved = superseding(&stored, at(2, "2024-05-02", "kofi"));
        assert_eq!(
            moved.pending,
            vec![
                at(0, "2024-04-30", "ama").slot,
                at(0, "2024-05-01", "ama").slot
            ]
        );

        let back = superseding(&moved, at(3, "2024-04-30", "ama"));
        assert!(
            !back.pending.contains(&back.slot),
            "the new slot is recomputed anyway: {:?}",
            back.pending
        );
        assert_eq!(back.pending.len(), 2);
    }

    #[test]
    fn same_slot_edit_adds_nothing_pending() {
        let stored = at(1, "2024-05-01", "ama");
        let edit = superseding(&stored, at(2, "2024-05-01", "ama"));
        assert!(edit.pending.is_empty());
    }

    #[test]
    fn enumerator_document_counts_only_its_own() {
        let day = ProjectDay {
            org_id: "org".into(),
            project_id: "p".into(),
            day: "2024-05-01".into(),
        };
        let mut other = at(0, "2024-05-01", "kofi");
        other.id = "org/s2".into();
        let set = [at(0, "2024-05-01", "ama"), other];
        let ama = at(0, "2024-05-01", "ama").slot.enumerator;
        assert_eq!(daily_document(&day, None, &set, 3).figures.submissions, 2);
        let document = daily_document(&day, Some(&ama), &set, 3);
        assert_eq!(document.figures.submissions, 1);
        assert_eq!(document.scope, Scope::Enumerator);
        assert_eq!(document.version, 3);
    }
}
