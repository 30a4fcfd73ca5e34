//! The content and timing of a delivery: the deterministic delivery id, the JSON body, its
//! signature, and the retry schedule. Pure functions, no IO.

use std::time::Duration;

use fieldforce_runtime::config::WebhooksConfig;
use fieldforce_schemas::webhook::{SubmissionStored, WebhookEvent};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Returns the id of the delivery of `event` about `stored` to the subscription keyed
/// `subscription_key`.
///
/// The id is a UUID (version 8, the custom layout of RFC 9562) made of the first 16 bytes of a
/// SHA-256 over the subscription key, the submission id, its revision and the event. It comes
/// out the same when the sink announces a submission again after a crash and when the
/// dispatcher replays an event after a restart, so receivers can deduplicate on it. An edit
/// (a new revision) is a new delivery.
pub fn delivery_id(
    subscription_key: &str,
    stored: &SubmissionStored,
    event: WebhookEvent,
) -> String {
    let mut hasher = Sha256::new();
    // NUL separators keep ("a/b", "c") and ("a", "b/c") apart.
    for part in [
        "fieldforce-webhook-delivery",
        subscription_key,
        &stored.org_id,
        &stored.submission_id,
        &stored.revision.to_string(),
        event.as_str(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Builds the JSON body of a delivery: `{delivery_id, event, occurred_at, submission}`, where
/// `occurred_at` is when the store acknowledged the submission (RFC 3339, UTC).
pub fn body(delivery_id: &str, event: WebhookEvent, stored: &SubmissionStored) -> String {
    let stored_at = chrono::DateTime::from_timestamp_millis(stored.stored_at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "delivery_id": delivery_id,
        "event": event.as_str(),
        "occurred_at": stored_at,
        "submission": {
            "org_id": stored.org_id,
            "project_id": stored.project_id,
            "form_id": stored.form_id,
            "submission_id": stored.submission_id,
            "instance_id": stored.instance_id,
            "revision": stored.revision,
            "processing_status": stored.processing_status,
            "quality_score": stored.quality_score,
            "quality_flags": stored.quality_flags,
            "stored_at": stored_at,
        },
    })
    .to_string()
}

/// Returns the `X-FieldForce-Signature` value: `sha256=` and the hex HMAC-SHA256 of the body
/// keyed with the subscription's secret.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC hashes keys longer than the block size and pads shorter ones (RFC 2104), so any
    // key length is accepted.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Returns whether `header` is the valid signature of `body` under `secret`, compared in
/// constant time. Receivers check it the same way, and the tests use it on deliveries.
pub fn verify_signature(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(digest) = header
        .strip_prefix("sha256=")
        .and_then(|text| hex::decode(text).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts a key of any length");
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

/// The retry schedule: how many attempts a delivery gets and how long each retry tier waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Attempts per delivery, counting the first.
    pub max_attempts: u32,
    /// Wait of each retry tier, shortest first; one entry per retry topic.
    pub tier_delays: Vec<Duration>,
}

/// The next step of a delivery after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Produce it to the retry tier with this index, due after `delay`.
    Retry {
        /// Index into the retry topics.
        tier: usize,
        /// Wait before the next attempt.
        delay: Duration,
    },
    /// No attempts left: produce it to the webhook dead-letter topic.
    DeadLetter,
}

impl RetrySchedule {
    /// Builds the schedule for `tiers` retry topics: the first tier waits
    /// `retry_initial_backoff_ms`, each next one `retry_backoff_multiplier` times longer, and
    /// none longer than `retry_max_backoff_ms`.
    pub fn new(config: &WebhooksConfig, tiers: usize) -> Self {
        let max = Duration::from_millis(config.retry_max_backoff_ms);
        let mut delay = Duration::from_millis(config.retry_initial_backoff_ms);
        let mut tier_delays = Vec::with_capacity(tiers);
        for _ in 0..tiers {
            tier_delays.push(delay.min(max));
            delay = delay.saturating_mul(config.retry_backoff_multiplier);
        }
        Self {
            max_attempts: config.max_attempts,
            tier_delays,
        }
    }

    /// Decides the next step after `attempts` attempts (counting the one that just failed).
    /// Retry number n goes to tier n - 1; retries past the last tier stay in the last tier.
    pub fn after_failure(&self, attempts: u32) -> NextStep {
        if attempts >= self.max_attempts || self.tier_delays.is_empty() {
            return NextStep::DeadLetter;
        }
        let tier = (attempts.saturating_sub(1) as usize).min(self.tier_delays.len() - 1);
        NextStep::Retry {
            tier,
            delay: self.tier_delays[tier],
        }
    }
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::submission::ProcessingStatus;
    use fieldforce_schemas::webhook::SUBMISSION_STORED_VERSION;

    use super::*;

    fn stored(revision: u32) -> SubmissionStored {
        SubmissionStored {
            schema_version: SUBMISSION_STORED_VERSION,
            org_id: "acme".into(),
            project_id: "census".into(),
            form_id: "household".into(),
            submission_id: "uuid:5b1f".into(),
            instance_id: Some("uuid:5b1f".into()),
            revision,
            processing_status: Some(ProcessingStatus::Processed),
            quality_score: Some(90),
            quality_flags: vec!["too_fast".into()],
            stored_at_ms: 1_764_000_000_123,
        }
    }

    #[test]
    fn delivery_id_is_deterministic() {
        let first = delivery_id(
            "acme/census/crm",
            &stored(0),
            WebhookEvent::SubmissionStored,
        );
        let replayed = SubmissionStored {
            stored_at_ms: 1_764_999_999_999,
            ..stored(0)
        };
        assert_eq!(
            first,
            delivery_id("acme/census/crm", &replayed, WebhookEvent::SubmissionStored)
        );

        let others = [
            delivery_id("acme/census/bi", &stored(0), WebhookEvent::SubmissionStored),
            delivery_id(
                "acme/census/crm",
                &stored(1),
                WebhookEvent::SubmissionStored,
            ),
            delivery_id(
                "acme/census/crm",
                &stored(0),
                WebhookEvent::SubmissionFlagged,
            ),
        ];
        for other in &others {
            assert_ne!(&first, other);
        }
        let parsed = uuid::Uuid::parse_str(&first).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
    }

    #[test]
    fn signature_verifies_with_the_secret_only() {
        let body = body("id-1", WebhookEvent::SubmissionStored, &stored(0));
        let header = signature("s3cret", body.as_bytes());
        assert!(header.starts_with("sha256="));
        assert_eq!(header.len(), "sha256=".len() + 64);
        assert!(verify_signature("s3cret", body.as_bytes(), &header));
        assert!(!verify_signature("other", body.as_bytes(), &header));
        assert!(!verify_signature("s3cret", b"{}", &header));
        assert!(!verify_signature("s3cret", body.as_bytes(), "sha1=00"));
    }

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        let header = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            header,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn body_carries_event_and_submission() {
        let text = body("id-1", WebhookEvent::SubmissionFlagged, &stored(2));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["delivery_id"], "id-1");
        assert_eq!(value["event"], "submission.flagged");
        assert_eq!(value["occurred_at"], "2025-11-24T16:00:00.123Z");
        assert_eq!(value["submission"]["revision"], 2);
        assert_eq!(value["submission"]["processing_status"], "processed");
        assert_eq!(value["submission"]["quality_flags"][0], "too_fast");
    }

    #[test]
    fn backoff_grows_per_tier() {
        let config = WebhooksConfig {
            max_attempts: 6,
            retry_initial_backoff_ms: 5_000,
            retry_backoff_multiplier: 6,
            retry_max_backoff_ms: 300_000,
            ..WebhooksConfig::default()
        };
        let schedule = RetrySchedule::new(&config, 3);
        let seconds = |secs| Duration::from_secs(secs);
        assert_eq!(
            schedule.tier_delays,
            vec![seconds(5), seconds(30), seconds(180)]
        );
        let steps: Vec<NextStep> = (1..=6)
            .map(|attempts| schedule.after_failure(attempts))
            .collect();
        assert_eq!(
            steps,
            vec![
                NextStep::Retry {
                    tier: 0,
                    delay: seconds(5)
                },
                NextStep::Retry {
                    tier: 1,
                    delay: seconds(30)
                },
                NextStep::Retry {
                    tier: 2,
                    delay: seconds(180)
                },
                NextStep::Retry {
                    tier: 2,
                    delay: seconds(180)
                },
                NextStep::Retry {
                    tier: 2,
                    delay: seconds(180)
                },
                NextStep::DeadLetter,
            ]
        );
    }

    #[test]
    fn backoff_is_capped() {
        let config = WebhooksConfig {
            retry_initial_backoff_ms: 60_000,
            retry_backoff_multiplier: 10,
            retry_max_backoff_ms: 300_000,
            ..WebhooksConfig::default()
        };
        let schedule = RetrySchedule::new(&config, 3);
        assert_eq!(schedule.tier_delays[1], Duration::from_secs(300));
        assert_eq!(schedule.tier_delays[2], Duration::from_secs(300));
    }
}
