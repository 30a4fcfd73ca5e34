//! Webhook contracts: the event the sink publishes for every stored submission, the
//! per-project subscriptions on their compacted topic, and the delivery records that the
//! webhook dispatcher keeps on its retry and dead-letter topics.

use serde::{Deserialize, Serialize};

use crate::submission::{ProcessedSubmission, ProcessingStatus};

/// Version of [`SubmissionStored`] written by this build.
pub const SUBMISSION_STORED_VERSION: u32 = 1;

/// Version of [`WebhookSubscription`] written by this build.
pub const WEBHOOK_SUBSCRIPTION_VERSION: u32 = 1;

/// Version of [`WebhookDelivery`] written by this build.
pub const WEBHOOK_DELIVERY_VERSION: u32 = 1;

/// A submission the store has acknowledged: the value of a record on the stored-submissions
/// topic, keyed by the submission id. The sink produces it after the bulk write that stored
/// the submission, so a consumer never hears of a submission the store does not have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmissionStored {
    /// Contract version the producer wrote.
    pub schema_version: u32,
    /// Organisation that owns the submission.
    pub org_id: String,
    /// Project inside the organisation.
    pub project_id: String,
    /// Form identifier.
    pub form_id: String,
    /// Submission id, also the record key.
    pub submission_id: String,
    /// `meta/instanceID` as the client wrote it, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// 0 for an original, higher for each edit.
    pub revision: u32,
    /// Overall status the processors set, when they set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_status: Option<ProcessingStatus>,
    /// Quality score from 0 to 100, when the quality processor scored the submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_score: Option<u8>,
    /// Names of the quality checks that fired, such as `too_fast`.
    #[serde(default)]
    pub quality_flags: Vec<String>,
    /// Sink clock when the bulk write that stored this revision was acknowledged, in
    /// milliseconds since the Unix epoch. A replay of an already stored revision carries the
    /// time of the replay.
    pub stored_at_ms: i64,
}

impl SubmissionStored {
    /// Builds the event of a processed submission stored at `stored_at_ms`.
    pub fn from_processed(processed: &ProcessedSubmission, stored_at_ms: i64) -> Self {
        let submission = &processed.submission;
        Self {
            schema_version: SUBMISSION_STORED_VERSION,
            org_id: submission.org_id.clone(),
            project_id: submission.project_id.clone(),
            form_id: submission.form_id.clone(),
            submission_id: submission.submission_id.clone(),
            instance_id: submission.instance_id.clone(),
            revision: submission.revision,
            processing_status: processed.processing_status,
            quality_score: processed.quality.as_ref().map(|quality| quality.score),
            quality_flags: processed
                .quality
                .as_ref()
                .map(|quality| {
                    quality
                        .flags
                        .iter()
                        .map(|flag| flag.check.clone())
                        .collect()
                })
                .unwrap_or_default(),
            stored_at_ms,
        }
    }

    /// Returns whether the submission needs a supervisor's attention: validation found problems
    /// (status `needs_review`) or at least one quality check fired. Such a submission fires
    /// [`WebhookEvent::SubmissionFlagged`] as well as [`WebhookEvent::SubmissionStored`].
    pub fn is_flagged(&self) -> bool {
        self.processing_status == Some(ProcessingStatus::NeedsReview)
            || !self.quality_flags.is_empty()
    }

    /// Returns the webhook events this submission fires, `submission.stored` first.
    pub fn events(&self) -> Vec<WebhookEvent> {
        let mut events = vec![WebhookEvent::SubmissionStored];
        if self.is_flagged() {
            events.push(WebhookEvent::SubmissionFlagged);
        }
        events
    }
}

/// An event a webhook subscription can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    /// The store acknowledged a submission (an original or an edit).
    #[serde(rename = "submission.stored")]
    SubmissionStored,
    /// A stored submission needs review, see [`SubmissionStored::is_flagged`].
    #[serde(rename = "submission.flagged")]
    SubmissionFlagged,
}

impl WebhookEvent {
    /// Every event, in the order they fire for one submission.
    pub const ALL: [WebhookEvent; 2] = [Self::SubmissionStored, Self::SubmissionFlagged];

    /// Returns the event name, as sent in the `X-FieldForce-Event` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SubmissionStored => "submission.stored",
            Self::SubmissionFlagged => "submission.flagged",
        }
    }

    /// Parses an event name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == name)
    }
}

/// A project's webhook subscription: the value of a record on the compacted subscriptions
/// topic, keyed by [`WebhookSubscription::topic_key`]. A tombstone deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSubscription {
    /// Contract version the producer wrote.
    pub schema_version: u32,
    /// Organisation that owns the project.
    pub org_id: String,
    /// Project whose submissions are delivered.
    pub project_id: String,
    /// Subscription id, unique in the project, chosen by the client.
    pub id: String,
    /// Absolute `http` or `https` URL the deliveries are POSTed to.
    pub url: String,
    /// Shared secret the body's HMAC-SHA256 signature is computed with.
    pub secret: String,
    /// Events delivered to this endpoint.
    pub events: Vec<WebhookEvent>,
    /// Time limit of one delivery attempt in milliseconds, from connecting to reading the
    /// response; the dispatcher's default applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Most deliveries in flight to this endpoint at once; the dispatcher's default applies
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Gateway clock when the subscription was last written, in milliseconds since the Unix
    /// epoch.
    pub updated_at_ms: i64,
}

impl WebhookSubscription {
    /// Returns the compacted-topic key.
    pub fn topic_key(&self) -> String {
        subscription_topic_key(&self.org_id, &self.project_id, &self.id)
    }

    /// Whether the subscription asks for `event`.
    pub fn wants(&self, event: WebhookEvent) -> bool {
        self.events.contains(&event)
    }
}

/// Builds the compacted-topic key of a subscription: `org/project/id`.
pub fn subscription_topic_key(org_id: &str, project_id: &str, id: &str) -> String {
    format!("{org_id}/{project_id}/{id}")
}

/// One delivery of one event to one subscription, as kept on a retry topic between attempts
/// and on the webhook dead-letter topic after the last one. Keyed by the subscription key, so
/// the attempts of one endpoint stay on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Contract version the producer wrote.
    pub schema_version: u32,
    /// Deterministic id of the delivery, the same on every attempt and after a replay.
    pub delivery_id: String,
    /// Compacted-topic key of the subscription (`org/project/id`). The URL and secret are
    /// looked up again before each attempt, so the secret never lands on these topics.
    pub subscription_key: String,
    /// Event delivered.
    pub event: WebhookEvent,
    /// Submission id the event is about.
    pub submission_id: String,
    /// Attempts made so far, counting the first one.
    pub attempts: u32,
    /// The exact JSON body, sent unchanged on every attempt so its signature stays valid.
    pub body: String,
    /// When the next attempt is due, in milliseconds since the Unix epoch.
    pub due_at_ms: i64,
    /// The endpoint's response to the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_response: Option<LastResponse>,
}

/// An endpoint's response to a delivery attempt that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastResponse {
    /// HTTP status, when the endpoint responded at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// First bytes of the response body (lossy UTF-8), when there was one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body_prefix: String,
    /// Why the attempt failed without a response (connection refused, timed out, TLS
    /// failed), or why the address guard rejected the endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// A subscription URL, checked and split into what a sender needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    /// Whether the scheme is `https`.
    pub tls: bool,
    /// Host name or address, without IPv6 brackets.
    pub host: String,
    /// Port, from the URL or the scheme's default.
    pub port: u16,
    /// Path and query, `/` when the URL has none.
    pub path_and_query: String,
    /// `host[:port]` as written in the URL, for the `Host` header.
    pub authority: String,
}

impl EndpointUrl {
    /// Parses an absolute `http` or `https` URL with a host and without credentials; the
    /// error says what is wrong, in words a client can act on.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|error| format!("{url:?} is not a valid URL: {error}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("scheme {other:?} is not http or https")),
            None => return Err(format!("{url:?} is not an absolute URL")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url:?} carries credentials; put them in the secret instead"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |path| path.as_str().to_owned());
        Ok(Self {
            tls,
            host,
            port,
            path_and_query,
            authority: authority.as_str().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::submission::{Quality, QualityFlag};

    fn stored(status: ProcessingStatus, flags: &[&str]) -> SubmissionStored {
        SubmissionStored {
            schema_version: SUBMISSION_STORED_VERSION,
            org_id: "org".into(),
            project_id: "census".into(),
            form_id: "household".into(),
            submission_id: "uuid:1".into(),
            instance_id: Some("uuid:1".into()),
            revision: 0,
            processing_status: Some(status),
            quality_score: Some(100),
            quality_flags: flags.iter().map(|flag| (*flag).to_owned()).collect(),
            stored_at_ms: 1,
        }
    }

    #[test]
    fn clean_submission_fires_stored_only() {
        let event = stored(ProcessingStatus::Processed, &[]);
        assert_eq!(event.events(), vec![WebhookEvent::SubmissionStored]);
    }

    #[test]
    fn review_status_or_quality_flag_fires_flagged() {
        for event in [
            stored(ProcessingStatus::NeedsReview, &[]),
            stored(ProcessingStatus::Processed, &["too_fast"]),
        ] {
            assert_eq!(
                event.events(),
                vec![
                    WebhookEvent::SubmissionStored,
                    WebhookEvent::SubmissionFlagged
                ]
            );
        }
    }

    #[test]
    fn event_names_round_trip() {
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(event.as_str()), Some(event));
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(json, format!("\"{}\"", event.as_str()));
        }
        assert_eq!(WebhookEvent::parse("submission.deleted"), None);
    }

    #[test]
    fn event_takes_quality_from_processed() {
        let raw: crate::submission::RawSubmission =
            serde_json::from_str(include_str!("../examples/raw-submission.json")).unwrap();
        let mut processed = ProcessedSubmission::from_raw(raw);
        processed.quality = Some(Quality {
            score: 70,
            flags: vec![QualityFlag {
                check: "gps_inaccurate".into(),
                penalty: 30,
                reason: "accuracy 80 m, maximum is 50 m".into(),
            }],
        });
        let event = SubmissionStored::from_processed(&processed, 42);
        assert_eq!(event.quality_score, Some(70));
        assert_eq!(event.quality_flags, vec!["gps_inaccurate".to_owned()]);
        assert_eq!(event.stored_at_ms, 42);
        assert!(event.is_flagged());
    }

    #[test]
    fn endpoint_parses_http_and_https() {
        let endpoint = EndpointUrl::parse("https://hooks.example/in?x=1").unwrap();
        assert!(endpoint.tls);
        assert_eq!(endpoint.host, "hooks.example");
        assert_eq!(endpoint.port, 443);
        assert_eq!(endpoint.path_and_query, "/in?x=1");

        let endpoint = EndpointUrl::parse("http://[::1]:9000").unwrap();
        assert!(!endpoint.tls);
        assert_eq!(endpoint.host, "::1");
        assert_eq!(endpoint.port, 9000);
        assert_eq!(endpoint.path_and_query, "/");
        assert_eq!(endpoint.authority, "[::1]:9000");
    }

    #[test]
    fn endpoint_rejects_other_urls() {
        for (url, expected) in [
            ("ftp://hooks.example/", "is not http or https"),
            ("/relative/path", "not an absolute URL"),
            ("https://user:pw@hooks.example/", "carries credentials"),
            ("not a url", "is not a valid URL"),
        ] {
            let error = EndpointUrl::parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }
}
