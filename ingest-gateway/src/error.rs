//! Every way a gateway request can fail, with its HTTP status, a reason code for metrics and
//! a message the person holding the phone can act on. A 4xx means the client must change
//! the request (never retry it unchanged); a 503 means retry later, after `Retry-After`.

use http::StatusCode;

use crate::auth::AuthError;
use crate::blob::BlobError;
use crate::instance::InstanceError;
use crate::json_submission::JsonSubmissionError;
use crate::producer::ProduceError;
use crate::xform::XFormError;
use fieldforce_kafka::compacted::CompactedReadError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Credentials are missing or invalid (401).
    #[error("{0}: check the server user name and password (token) in the app settings")]
    Unauthorized(AuthError),
    /// The token does not grant the project (403).
    #[error("this account may not submit to project {0:?}: ask your supervisor for access")]
    ProjectForbidden(String),
    /// The body is larger than the cap (413).
    #[error(
        "the submission is larger than the {0} bytes this server accepts: send fewer attachments at once"
    )]
    BodyTooLarge(u64),
    /// The instance XML or JSON document is larger than the cap (413).
    #[error("the form data is larger than the {0} bytes this server accepts")]
    DocumentTooLarge(u64),
    /// More attachments than the cap (413).
    #[error("the submission has more than {0} attachments: send the rest in a second upload")]
    TooManyAttachments(usize),
    /// A JSON batch longer than the cap (413).
    #[error("the batch has more than {0} submissions: split it")]
    BatchTooLarge(usize),
    /// The request body is not in the expected format (400).
    #[error("{0}")]
    BadRequest(String),
    /// The OpenRosa multipart body has no instance XML (400).
    #[error("the upload has no xml_submission_file part: the form data is missing")]
    MissingInstance,
    /// The instance XML was rejected (400).
    #[error("the form data could not be read: {0}")]
    Instance(#[from] InstanceError),
    /// The JSON submission was rejected (400).
    #[error("{0}")]
    Json(#[from] JsonSubmissionError),
    /// The XForm was rejected (400).
    #[error("the form definition could not be read: {0}")]
    XForm(#[from] XFormError),
    /// The same instanceID was already received with different content (409).
    #[error(
        "a different submission with instanceID {0} was already received: it was not overwritten; send edits as a new version (with deprecatedID)"
    )]
    Conflict(String),
    /// An edit refers to a submission this server does not have (400).
    #[error(
        "this is an edit of submission {0}, which the server has not received: send the original submission first"
    )]
    OriginalNotFound(String),
    /// No route matches (404).
    #[error("no such endpoint")]
    NotFound,
    /// The route exists but not for this method (405).
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The content type is not one the endpoint reads (415).
    #[error("unsupported content type {0:?}")]
    UnsupportedMediaType(String),
    /// Kafka did not make the record durable (503).
    #[error(
        "the server could not store the submission right now, nothing was saved: send it again later"
    )]
    Unavailable(#[from] ProduceError),
    /// The webhook subscription is well-formed JSON but breaks a rule (422).
    #[error("invalid webhook subscription: {0}")]
    InvalidWebhook(String),
    /// No webhook subscription with this id in the project (404).
    #[error("no webhook subscription {0:?} in this project")]
    WebhookNotFound(String),
    /// The webhook subscriptions could not be read from Kafka (503).
    #[error("the server could not read the webhook subscriptions right now: try again later")]
    SubscriptionsUnavailable(#[from] CompactedReadError),
    /// The submission requests in flight have taken the whole body budget (503).
    #[error(
        "the server is busy receiving other submissions, nothing was saved: send it again in a moment"
    )]
    Busy,
    /// An attachment could not be written (503).
    #[error(
        "the server could not store an attachment right now, nothing was saved: send it again later"
    )]
    BlobWrite(#[from] BlobError),
    /// The daily figures could not be read from the store (503).
    #[error("the figures could not be read right now ({0}): try again later")]
    StatsUnavailable(String),
}

impl GatewayError {
    /// Returns the HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::ProjectForbidden(_) => StatusCode::FORBIDDEN,
            Self::BodyTooLarge(_)
            | Self::DocumentTooLarge(_)
            | Self::TooManyAttachments(_)
            | Self::BatchTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_)
            | Self::MissingInstance
            | Self::Instance(_)
            | Self::Json(_)
            | Self::XForm(_)
            | Self::OriginalNotFound(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::InvalidWebhook(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound | Self::WebhookNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable(_)
            | Self::Busy
            | Self::BlobWrite(_)
            | Self::SubscriptionsUnavailable(_)
            | Self::StatsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Returns the reason code used as a metric label and in JSON error bodies.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized(AuthError::Missing) => "credentials_missing",
            Self::Unauthorized(AuthError::Invalid) => "credentials_invalid",
            Self::ProjectForbidden(_) => "project_forbidden",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::DocumentTooLarge(_) => "document_too_large",
            Self::TooManyAttachments(_) => "too_many_attachments",
            Self::BatchTooLarge(_) => "batch_too_large",
            Self::BadRequest(_) => "bad_request",
            Self::MissingInstance => "instance_missing",
            Self::Instance(_) => "invalid_instance",
            Self::Json(JsonSubmissionError::MissingId) => "id_missing",
            Self::Json(JsonSubmissionError::Empty) => "empty_submission",
            Self::Json(_) => "invalid_json_submission",
            Self::XForm(_) => "invalid_xform",
            Self::Conflict(_) => "conflict",
            Self::OriginalNotFound(_) => "original_not_found",
            Self::NotFound => "not_found",
            Self::InvalidWebhook(_) => "invalid_webhook",
            Self::WebhookNotFound(_) => "webhook_not_found",
            Self::SubscriptionsUnavailable(_) => "subscriptions_unavailable",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unavailable(_) => "kafka_unavailable",
            Self::Busy => "gateway_busy",
            Self::BlobWrite(_) => "blob_store_unavailable",
            Self::StatsUnavailable(_) => "store_unavailable",
        }
    }

    /// Whether the client should retry the same request later.
    pub fn is_retryable(&self) -> bool {
        self.status() == StatusCode::SERVICE_UNAVAILABLE
    }
}
