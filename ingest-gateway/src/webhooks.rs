//! The webhook subscription API: `PUT`, `GET` and `DELETE /v1/projects/{project}/webhooks/{id}`
//! and `GET /v1/projects/{project}/webhooks`.
//!
//! Subscriptions live on their compacted topic, keyed `org/project/id`, and nowhere else: a
//! `PUT` produces the subscription and a `DELETE` a tombstone, each awaited until Kafka
//! acknowledged it. A `GET` reads the topic to its current end, so it always shows every write
//! acknowledged before it. Responses never contain the secret.

use fieldforce_kafka::compacted::read_to_end;
use fieldforce_schemas::codec::{self, Contract};
use fieldforce_schemas::webhook::{
    EndpointUrl, WEBHOOK_SUBSCRIPTION_VERSION, WebhookEvent, WebhookSubscription,
    subscription_topic_key,
};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::GatewayError;
use crate::intake::now_ms;
use crate::response::{self, Body};
use crate::routes::AppState;

/// Longest accepted subscription id, in characters.
const MAX_ID_CHARS: usize = 64;
/// Longest accepted URL, in bytes.
const MAX_URL_BYTES: usize = 2048;
/// Accepted secret lengths, in bytes: short secrets make the signature guessable.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 16..=256;
/// Accepted per-endpoint timeouts, in milliseconds.
const TIMEOUT_MS: std::ops::RangeInclusive<u64> = 100..=60_000;
/// Accepted per-endpoint concurrency limits.
const MAX_CONCURRENCY: std::ops::RangeInclusive<u32> = 1..=64;

/// The body of a `PUT`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionRequest {
    url: String,
    secret: String,
    events: Vec<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_concurrency: Option<u32>,
}

/// Creates or replaces a subscription.
pub async fn put(
    state: &AppState,
    org_id: &str,
    project_id: &str,
    id: &str,
    body: &[u8],
) -> Result<Response, GatewayError> {
    let request: SubscriptionRequest = serde_json::from_slice(body).map_err(|error| {
        GatewayError::BadRequest(format!("invalid webhook subscription: {error}"))
    })?;
    let subscription = validate(org_id, project_id, id, request)?;

    let payload = codec::encode(&subscription);
    state
        .producer
        .send(
            &state.webhooks_topic,
            &subscription.topic_key(),
            &payload,
            &WebhookSubscription::schema_header(),
            subscription.updated_at_ms,
        )
        .await?;
    tracing::info!(project_id, subscription = id, url = %subscription.url, "webhook subscription written");
    Ok(response::json(StatusCode::OK, &view(&subscription)))
}

/// Returns one subscription, without its secret.
pub async fn get(
    state: &AppState,
    org_id: &str,
    project_id: &str,
    id: &str,
) -> Result<Response, GatewayError> {
    let key = subscription_topic_key(org_id, project_id, id);
    let subscriptions = read_project(state, org_id, project_id).await?;
    let subscription = subscriptions
        .into_iter()
        .find(|subscription| subscription.topic_key() == key)
        .ok_or_else(|| GatewayError::WebhookNotFound(id.to_owned()))?;
    Ok(response::json(StatusCode::OK, &view(&subscription)))
}

/// Lists the project's subscriptions by id, without their secrets.
pub async fn list(
    state: &AppState,
    org_id: &str,
    project_id: &str,
) -> Result<Response, GatewayError> {
    let mut subscriptions = read_project(state, org_id, project_id).await?;
    subscriptions.sort_by(|a, b| a.id.cmp(&b.id));
    let items: Vec<Value> = subscriptions.iter().map(view).collect();
    Ok(response::json(
        StatusCode::OK,
        &json!({ "webhooks": items }),
    ))
}

/// Deletes a subscription with a tombstone. Deleting one that does not exist succeeds too,
/// so a client may repeat the request.
pub async fn delete(
    state: &AppState,
    org_id: &str,
    project_id: &str,
    id: &str,
) -> Result<Response, GatewayError> {
    check_id(id).map_err(GatewayError::InvalidWebhook)?;
    let key = subscription_topic_key(org_id, project_id, id);
    state
        .producer
        .send_tombstone(
            &state.webhooks_topic,
            &key,
            &WebhookSubscription::schema_header(),
            now_ms(),
        )
        .await?;
    tracing::info!(
        project_id,
        subscription = id,
        "webhook subscription deleted"
    );
    Ok(response::text(StatusCode::NO_CONTENT, "", "text/plain"))
}

type Response = http::Response<Body>;

/// Reads every subscription of one project from the compacted topic.
async fn read_project(
    state: &AppState,
    org_id: &str,
    project_id: &str,
) -> Result<Vec<WebhookSubscription>, GatewayError> {
    let values = read_to_end(
        &state.kafka,
        &state.webhooks_topic,
        std::time::Duration::from_millis(state.config.delivery_timeout_ms),
    )
    .await?;
    let prefix = subscription_topic_key(org_id, project_id, "");
    let mut subscriptions = Vec::new();
    // NOTE: every read goes through all subscriptions of every project, which stays cheap for
    // the thousands of records a compacted topic of this kind holds, not for millions.
    for (key, value) in values {
        if !key.starts_with(&prefix) {
            continue;
        }
        match codec::decode::<WebhookSubscription>(&value) {
            Ok(subscription) => subscriptions.push(subscription),
            Err(error) => tracing::warn!(key, %error, "undecodable webhook subscription skipped"),
        }
    }
    Ok(subscriptions)
}

/// Checks a request and builds the subscription; lists every problem at once.
fn validate(
    org_id: &str,
    project_id: &str,
    id: &str,
    request: SubscriptionRequest,
) -> Result<WebhookSubscription, GatewayError> {
    let mut problems = Vec::new();
    if let Err(problem) = check_id(id) {
        problems.push(problem);
    }
    if request.url.len() > MAX_URL_BYTES {
        problems.push(format!("url is longer than {MAX_URL_BYTES} bytes"));
    } else if let Err(problem) = EndpointUrl::parse(&request.url) {
        problems.push(format!("url {problem}"));
    }
    if !SECRET_BYTES.contains(&request.secret.len()) {
        problems.push(format!(
            "secret must be {} to {} bytes long",
            SECRET_BYTES.start(),
            SECRET_BYTES.end()
        ));
    }
    let mut events = Vec::new();
    for name in &request.events {
        match WebhookEvent::parse(name) {
            Some(event) if !events.contains(&event) => events.push(event),
            Some(_) => {}
            None => problems.push(format!(
                "event {name:?} is unknown: use {}",
                WebhookEvent::ALL.map(WebhookEvent::as_str).join(" or ")
            )),
        }
    }
    if request.events.is_empty() {
        problems.push("events is empty: name at least one event".to_owned());
    }
    if let Some(timeout_ms) = request.timeout_ms
        && !TIMEOUT_MS.contains(&timeout_ms)
    {
        problems.push(format!(
            "timeout_ms {timeout_ms} is not between {} and {}",
            TIMEOUT_MS.start(),
            TIMEOUT_MS.end()
        ));
    }
    if let Some(limit) = request.max_concurrency
        && !MAX_CONCURRENCY.contains(&limit)
    {
        problems.push(format!(
            "max_concurrency {limit} is not between {} and {}",
            MAX_CONCURRENCY.start(),
            MAX_CONCURRENCY.end()
        ));
    }
    if !problems.is_empty() {
        return Err(GatewayError::InvalidWebhook(problems.join("; ")));
    }

    Ok(WebhookSubscription {
        schema_version: WEBHOOK_SUBSCRIPTION_VERSION,
        org_id: org_id.to_owned(),
        project_id: project_id.to_owned(),
        id: id.to_owned(),
        url: request.url,
        secret: request.secret,
        events,
        timeout_ms: request.timeout_ms,
        max_concurrency: request.max_concurrency,
        updated_at_ms: now_ms(),
    })
}

fn check_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.chars().count() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "webhook id {id:?} must be 1 to {MAX_ID_CHARS} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Returns the subscription as the API shows it: everything but the secret.
fn view(subscription: &WebhookSubscription) -> Value {
    json!({
        "id": subscription.id,
        "project_id": subscription.project_id,
        "url": subscription.url,
        "events": subscription.events,
        "timeout_ms": subscription.timeout_ms,
        "max_concurrency": subscription.max_concurrency,
        "updated_at_ms": subscription.updated_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(url: &str) -> SubscriptionRequest {
        SubscriptionRequest {
            url: url.to_owned(),
            secret: "0123456789abcdef".to_owned(),
            events: vec!["submission.stored".to_owned()],
            timeout_ms: None,
            max_concurrency: None,
        }
    }

    #[test]
    fn valid_request_builds_subscription() {
        let subscription =
            validate("acme", "census", "crm", request("https://hooks.example/in")).unwrap();
        assert_eq!(subscription.topic_key(), "acme/census/crm");
        assert_eq!(subscription.events, vec![WebhookEvent::SubmissionStored]);
    }

    #[test]
    fn every_problem_is_listed() {
        let mut bad = request("ftp://hooks.example/in");
        bad.secret = "short".to_owned();
        bad.events = vec!["submission.deleted".to_owned()];
        bad.timeout_ms = Some(10);
        bad.max_concurrency = Some(0);
        let error = validate("acme", "census", "a b", bad)
            .unwrap_err()
            .to_string();
        for expected in [
            "webhook id",
            "url scheme \"ftp\" is not http or https",
            "secret must be 16 to 256 bytes",
            "event \"submission.deleted\" is unknown",
            "timeout_ms 10",
            "max_concurrency 0",
        ] {
            assert!(error.contains(expected), "{expected} missing from: {error}");
        }
    }

    #[test]
    fn view_hides_secret() {
        let subscription =
            validate("acme", "census", "crm", request("http://hooks.example/")).unwrap();
        let shown = view(&subscription);
        assert!(shown.get("secret").is_none());
        assert_eq!(shown["url"], "http://hooks.example/");
    }
}
