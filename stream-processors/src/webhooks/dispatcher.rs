//! The dispatcher loop: read stored-submission events and due retry records, deliver them
//! concurrently, and store a record's offset only once every delivery it started is settled.
//!
//! A delivery is settled when the endpoint responded with a 2xx status, when its record on a retry topic or
//! on the webhook dead-letter topic was acknowledged by Kafka, or when its subscription was
//! deleted meanwhile. Each delivery runs as its own future, bounded by its endpoint's
//! concurrency limit, so a slow or failing endpoint only ever waits on itself: a failed
//! attempt is handed to a retry topic at once and the loop moves on.
//!
//! A retry record that is not due yet stays in memory and its partition is paused, so the
//! consumer neither blocks nor fetches more of that partition; the partition resumes once the
//! held records have been started. Every record of one retry tier waits the same delay, so a
//! partition's records fall due in offset order and the head of the partition is always the
//! next one due.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fieldforce_kafka::offsets::{OffsetTracker, Ticket, TopicPartition};
use fieldforce_schemas::codec::{Contract, decode};
use fieldforce_schemas::webhook::{SubmissionStored, WebhookDelivery};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, TopicPartitionList};

use super::task::{Shared, dead_letter_input, deliver, now_ms, plan};
use crate::metrics::Metrics;
use crate::pipeline::{GroupConsumer, store_completed};

/// Stage name in logs, metric labels and dead-letter headers.
pub const STAGE: &str = "webhooks";

/// Work started for one consumed record.
enum Task {
    /// Deliver (or retry) one delivery.
    Deliver(WebhookDelivery),
    /// Dead-letter a record that cannot be read.
    DeadLetterInput {
        message: Box<OwnedMessage>,
        detail: String,
    },
}

/// The deliveries still open for one consumed record.
struct Work {
    ticket: Ticket,
    remaining: usize,
    durable: bool,
}

/// A retry record held until it falls due.
struct Waiting {
    ticket: Ticket,
    delivery: WebhookDelivery,
    due: tokio::time::Instant,
}

/// The running dispatcher.
pub struct Dispatcher {
    consumer: Arc<GroupConsumer>,
    tracker: Arc<Mutex<OffsetTracker>>,
    shared: Arc<Shared>,
    metrics: Metrics,
    works: HashMap<u64, Work>,
    next_work_id: u64,
    waiting: HashMap<TopicPartition, VecDeque<Waiting>>,
}

impl Dispatcher {
    /// Assembles the dispatcher from a subscribed consumer and the shared state.
    pub(crate) fn new(
        consumer: Arc<GroupConsumer>,
        tracker: Arc<Mutex<OffsetTracker>>,
        shared: Arc<Shared>,
        metrics: Metrics,
    ) -> Self {
        Self {
            consumer,
            tracker,
            shared,
            metrics,
            works: HashMap::new(),
            next_work_id: 0,
            waiting: HashMap::new(),
        }
    }

    /// Runs until shutdown, then waits up to `drain_timeout` for open deliveries and commits.
    pub async fn run(mut self, drain_timeout: Duration) -> Result<(), crate::ProcessorError> {
        let mut shutdown = self.shared.shutdown.clone();
        let mut tasks = FuturesUnordered::new();
        let max_in_flight = self.shared.config.max_in_flight_deliveries;

        loop {
            let next_due = self.next_due();
            tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                Some((work_id, durable)) = tasks.next(), if !tasks.is_empty() => {
                    self.settle(work_id, durable);
                }
                _ = sleep_until_some(next_due) => {
                    for (work_id, task) in self.release_due() {
                        tasks.push(run_task(Arc::clone(&self.shared), work_id, task));
                    }
                }
                message = self.consumer.recv(), if tasks.len() < max_in_flight => {
                    let message = match message {
                        Ok(message) => message.detach(),
                        Err(error) => {
                            tracing::warn!(stage = STAGE, %error, "consume failed, continuing");
                            continue;
                        }
                    };
                    self.metrics.records_in.inc();
                    for (work_id, task) in self.accept(message) {
                        tasks.push(run_task(Arc::clone(&self.shared), work_id, task));
                    }
                }
            }
            self.shared.metrics.in_flight.set(tasks.len() as i64);
        }

        let deadline = tokio::time::Instant::now() + drain_timeout;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.next()).await {
                Ok(Some((work_id, durable))) => self.settle(work_id, durable),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        stage = STAGE,
                        in_flight = tasks.len(),
                        "shutdown drain timed out, unsettled deliveries will be replayed"
                    );
                    break;
                }
            }
        }
        crate::pipeline::commit_final(&self.consumer, &self.metrics, STAGE).await?;
        tracing::info!(stage = STAGE, "webhook dispatcher stopped");
        Ok(())
    }

    /// Starts a consumed record: plans its deliveries, or keeps it in memory when it is a
    /// retry that is not due yet. Returns the tasks to run now.
    fn accept(&mut self, message: OwnedMessage) -> Vec<(u64, Task)> {
        let partition: TopicPartition = (message.topic().to_owned(), message.partition());
        let ticket = self
            .tracker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .start(
                partition.clone(),
                message.offset(),
                message.timestamp().to_millis(),
            );

        let tasks = if message.topic() == self.shared.topics.events {
            match decode_payload::<SubmissionStored>(&message) {
                Ok(stored) => plan(&self.shared.subscriptions, &stored)
                    .into_iter()
                    .map(Task::Deliver)
                    .collect(),
                Err(detail) => vec![Task::DeadLetterInput {
                    message: Box::new(message),
                    detail,
                }],
            }
        } else {
            match decode_payload::<WebhookDelivery>(&message) {
                Ok(retry) => {
                    let due = due_instant(retry.due_at_ms);
                    if let Some(queue) = self.waiting.get_mut(&partition) {
                        let tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
                        drop_stale(&tracker, queue);
                    }
                    let nothing_held = self.waiting.get(&partition).is_none_or(VecDeque::is_empty);
                    if nothing_held && due <= tokio::time::Instant::now() {
                        vec![Task::Deliver(retry)]
                    } else {
                        // Held records keep their partition's order behind the first one.
                        self.waiting
                            .entry(partition.clone())
                            .or_default()
                            .push_back(Waiting {
                                ticket,
                                delivery: retry,
                                due,
                            });
                        self.pause(&partition);
                        self.update_waiting_gauge();
                        return Vec::new();
                    }
                }
                Err(detail) => vec![Task::DeadLetterInput {
                    message: Box::new(message),
                    detail,
                }],
            }
        };
        self.start_work(ticket, tasks)
    }

    /// Registers the tasks of one record under a new work id. A record without tasks (an
    /// event that no subscription requests) is complete at once.
    fn start_work(&mut self, ticket: Ticket, tasks: Vec<Task>) -> Vec<(u64, Task)> {
        if tasks.is_empty() {
            store_completed(&self.consumer, &self.tracker, &ticket);
            return Vec::new();
        }
        let work_id = self.next_work_id;
        self.next_work_id += 1;
        self.works.insert(
            work_id,
            Work {
                ticket,
                remaining: tasks.len(),
                durable: true,
            },
        );
        tasks.into_iter().map(|task| (work_id, task)).collect()
    }

    /// Records one settled task; the record's offset may move once all its tasks settled
    /// durably. A task that could not make its outcome durable (shutdown came first) leaves
    /// the offset where it is, so the next run replays the record.
    fn settle(&mut self, work_id: u64, durable: bool) {
        let Some(work) = self.works.get_mut(&work_id) else {
            return;
        };
        work.remaining -= 1;
        work.durable &= durable;
        if work.remaining > 0 {
            return;
        }
        let Some(work) = self.works.remove(&work_id) else {
            return;
        };
        if work.durable {
            store_completed(&self.consumer, &self.tracker, &work.ticket);
        }
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.waiting
            .values()
            .filter_map(|queue| queue.front().map(|waiting| waiting.due))
            .min()
    }

    /// Starts every held record that fell due, and resumes the partitions left with none.
    fn release_due(&mut self) -> Vec<(u64, Task)> {
        let now = tokio::time::Instant::now();
        let mut released = Vec::new();
        let mut emptied = Vec::new();
        {
            let tracker = self.tracker.lock().unwrap_or_else(PoisonError::into_inner);
            for (partition, queue) in &mut self.waiting {
                drop_stale(&tracker, queue);
                while queue.front().is_some_and(|waiting| waiting.due <= now) {
                    if let Some(waiting) = queue.pop_front() {
                        released.push(waiting);
                    }
                }
                if queue.is_empty() {
                    emptied.push(partition.clone());
                }
            }
        }
        for partition in emptied {
            self.waiting.remove(&partition);
            self.resume(&partition);
        }
        self.update_waiting_gauge();

        let mut tasks = Vec::with_capacity(released.len());
        for waiting in released {
            tasks.extend(self.start_work(waiting.ticket, vec![Task::Deliver(waiting.delivery)]));
        }
        tasks
    }

    fn update_waiting_gauge(&self) {
        let held: usize = self.waiting.values().map(VecDeque::len).sum();
        self.shared.metrics.waiting.set(held as i64);
    }

    fn pause(&self, partition: &TopicPartition) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.0, partition.1);
        if let Err(error) = self.consumer.pause(&list) {
            tracing::warn!(topic = %partition.0, partition = partition.1, %error, "pausing retry partition failed");
        }
    }

    fn resume(&self, partition: &TopicPartition) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&partition.0, partition.1);
        if let Err(error) = self.consumer.resume(&list) {
            tracing::warn!(topic = %partition.0, partition = partition.1, %error, "resuming retry partition failed");
        }
    }
}

/// Drops the held records of a partition that were read under an earlier assignment of it.
/// Whichever member owns the partition now reads it again from the committed offset, which is
/// never past a held record. When that member is this one again, only the copies read under
/// the new assignment stay held, so a held record is not delivered twice by one member.
fn drop_stale(tracker: &OffsetTracker, queue: &mut VecDeque<Waiting>) {
    queue.retain(|waiting| tracker.is_current(&waiting.ticket));
}

/// Runs one task and returns its work id and whether its outcome is durable.
async fn run_task(shared: Arc<Shared>, work_id: u64, task: Task) -> (u64, bool) {
    let durable = match task {
        Task::Deliver(delivery) => deliver(&shared, delivery).await,
        Task::DeadLetterInput { message, detail } => {
            dead_letter_input(&shared, &message, detail).await
        }
    };
    (work_id, durable)
}

fn decode_payload<T: Contract>(message: &OwnedMessage) -> Result<T, String> {
    let payload = message
        .payload()
        .ok_or_else(|| "the record has no value".to_owned())?;
    decode::<T>(payload).map_err(|error| error.to_string())
}

/// Converts an epoch time in milliseconds to a tokio instant; a past time is now.
fn due_instant(due_at_ms: i64) -> tokio::time::Instant {
    let wait_ms = u64::try_from(due_at_ms - now_ms()).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(wait_ms)
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::webhook::{WEBHOOK_DELIVERY_VERSION, WebhookEvent};

    use super::*;

    fn held(ticket: Ticket) -> Waiting {
        Waiting {
            delivery: WebhookDelivery {
                schema_version: WEBHOOK_DELIVERY_VERSION,
                delivery_id: format!("delivery-{}", ticket.offset),
                subscription_key: "org/project/hook".into(),
                event: WebhookEvent::SubmissionStored,
                submission_id: "uuid:s1".into(),
                attempts: 1,
                body: "{}".into(),
                due_at_ms: 0,
                last_response: None,
            },
            ticket,
            due: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn reassigned_partition_drops_earlier_held_records() {
        let partition: TopicPartition = ("retry-1".into(), 0);
        let mut tracker = OffsetTracker::new();
        tracker.assign(partition.clone());
        let mut queue: VecDeque<Waiting> = [5, 6]
            .into_iter()
            .map(|offset| held(tracker.start(partition.clone(), offset, None)))
            .collect();

        drop_stale(&tracker, &mut queue);
        assert_eq!(
            queue.len(),
            2,
            "nothing is dropped while the assignment lasts"
        );

        tracker.revoke(&partition);
        tracker.assign(partition.clone());
        queue.push_back(held(tracker.start(partition.clone(), 5, None)));
        drop_stale(&tracker, &mut queue);
        let offsets: Vec<i64> = queue.iter().map(|waiting| waiting.ticket.offset).collect();
        assert_eq!(
            offsets,
            vec![5],
            "only the copy read after the new assignment is held"
        );
    }

    #[test]
    fn revoked_partition_drops_held_records() {
        let partition: TopicPartition = ("retry-1".into(), 3);
        let mut tracker = OffsetTracker::new();
        let mut queue: VecDeque<Waiting> = [held(tracker.start(partition.clone(), 9, None))].into();
        tracker.revoke(&partition);
        drop_stale(&tracker, &mut queue);
        assert!(queue.is_empty());
    }
}
