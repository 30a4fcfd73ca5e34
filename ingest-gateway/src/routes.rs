//! Routing and the endpoint handlers: OpenRosa submission, JSON submission and batch, form
//! registration, project settings, daily stats, webhook subscriptions (handled in
//! [`crate::webhooks`]), health, readiness and metrics.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fieldforce_runtime::config::{GatewayConfig, KafkaConfig};
use fieldforce_schemas::analytics::DailyDocument;
use fieldforce_schemas::codec::{self, Contract};
use fieldforce_schemas::form::FormDefinition;
use fieldforce_schemas::project::{PROJECT_SETTINGS_VERSION, ProjectSettings};
use fieldforce_schemas::submission::SubmissionSource;
use futures::future::join_all;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{Instrument, Span};

use crate::admission::{Admission, BodyKind};
use crate::auth::{Authenticator, Principal};
use crate::blob::ReceivedFile;
use crate::error::GatewayError;
use crate::instance::parse_instance;
use crate::intake::{Accepted, IncomingSubmission, Intake, now_ms};
use crate::json_submission::parse_json_submission;
use crate::metrics::Metrics;
use crate::producer::GatewayProducer;
use crate::response::{self, Body, Protocol};
use crate::stats;
use crate::xform::parse_xform;

/// Name of the multipart part that holds the instance XML, fixed by the OpenRosa protocol.
const INSTANCE_PART: &str = "xml_submission_file";

/// Everything a request handler needs.
pub struct AppState {
    /// The `[gateway]` settings.
    pub config: GatewayConfig,
    /// Token table.
    pub auth: Authenticator,
    /// The budgets of body bytes that submission requests hold at once.
    pub admission: Admission,
    /// The submission path.
    pub intake: Intake,
    /// The shared producer, also used for forms and settings.
    pub producer: Arc<GatewayProducer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Full name of the forms topic.
    pub forms_topic: String,
    /// Full name of the project settings topic.
    pub settings_topic: String,
    /// Full name of the webhook subscriptions topic.
    pub webhooks_topic: String,
    /// Kafka settings, for reading the webhook subscriptions topic.
    pub kafka: KafkaConfig,
    /// The daily figures the analytics aggregator writes, read by the stats endpoint.
    pub analytics: mongodb::Collection<DailyDocument>,
}

/// A request matched to its endpoint.
enum Route<'a> {
    OpenRosa {
        project: Option<&'a str>,
        token: Option<&'a str>,
    },
    JsonSubmission(Option<&'a str>),
    JsonBatch(Option<&'a str>),
    Forms(&'a str),
    Settings(&'a str),
    Webhooks(&'a str),
    Webhook(&'a str, &'a str),
    Stats(&'a str),
    Health,
    Ready,
    Metrics,
    Unknown,
}

impl Route<'_> {
    fn endpoint(&self, method: &Method) -> &'static str {
        match self {
            Self::OpenRosa { .. } if method == Method::HEAD => "openrosa_head",
            Self::OpenRosa { .. } => "openrosa",
            Self::JsonSubmission(_) => "json",
            Self::JsonBatch(_) => "json_batch",
            Self::Forms(_) => "forms",
            Self::Settings(_) => "settings",
            Self::Webhooks(_) | Self::Webhook(..) => "webhooks",
            Self::Stats(_) => "stats",
            Self::Health | Self::Ready => "health",
            Self::Metrics => "metrics",
            Self::Unknown => "unknown",
        }
    }

    fn protocol(&self) -> Protocol {
        match self {
            Self::OpenRosa { .. } => Protocol::OpenRosa,
            _ => Protocol::Json,
        }
    }
}

fn route(path: &str) -> Route<'_> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["submission"] => Route::OpenRosa {
            project: None,
            token: None,
        },
        ["v1", "projects", project, "submission"] => Route::OpenRosa {
            project: Some(project),
            token: None,
        },
        ["v1", "key", token, "projects", project, "submission"] => Route::OpenRosa {
            project: Some(project),
            token: Some(token),
        },
        ["v1", "submissions"] => Route::JsonSubmission(None),
        ["v1", "submissions", "batch"] => Route::JsonBatch(None),
        ["v1", "projects", project, "submissions"] => Route::JsonSubmission(Some(project)),
        ["v1", "projects", project, "submissions", "batch"] => Route::JsonBatch(Some(project)),
        ["v1", "projects", project, "forms"] => Route::Forms(project),
        ["v1", "projects", project, "settings"] => Route::Settings(project),
        ["v1", "projects", project, "webhooks"] => Route::Webhooks(project),
        ["v1", "projects", project, "webhooks", id] => Route::Webhook(project, id),
        ["v1", "projects", project, "stats"] => Route::Stats(project),
        ["healthz"] => Route::Health,
        ["readyz"] => Route::Ready,
        ["metrics"] => Route::Metrics,
        _ => Route::Unknown,
    }
}

/// Answers one request; never fails, because every error becomes an HTTP answer.
pub async fn handle(
    state: Arc<AppState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let route = route(&path);
    let endpoint = route.endpoint(&method);
    let protocol = route.protocol();
    let started = Instant::now();
    let span = request_span(&method, endpoint);

    let result = dispatch(&state, route, request)
        .instrument(span.clone())
        .await;
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            state.metrics.rejected(error.reason());
            // A busy gateway rejects many such requests a second and counts them in its
            // rejection metric, so a log line each would only add to the load.
            if matches!(error, GatewayError::Busy) {
                tracing::debug!(endpoint, "request rejected while busy, Retry-After sent");
            } else if error.is_retryable() {
                tracing::warn!(%error, endpoint, "request failed, client told to retry");
            } else {
                tracing::debug!(%error, endpoint, "request rejected");
            }
            let retry_after_s = match error {
                GatewayError::Busy => state.config.busy_retry_after_s,
                _ => state.config.retry_after_s,
            };
            response::error(protocol, &error, state.config.max_body_bytes, retry_after_s)
        }
    };
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
    state
        .metrics
        .request(endpoint, &method, status, started.elapsed());
    Ok(response)
}

/// Creates the span of one request. Probes and scrapes get none, because they would fill the
/// trace store with a trace every few seconds that carries no information about submissions.
fn request_span(method: &Method, endpoint: &'static str) -> Span {
    if matches!(endpoint, "health" | "metrics") {
        return Span::none();
    }
    // DEBUG, so that the log filter drops it and only trace export records it. A client's
    // own trace context is not followed, so clients cannot force sampling.
    tracing::debug_span!(
        parent: None,
        "gateway request",
        otel.name = %format_args!("{method} {endpoint}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        fieldforce.service = "gateway",
        http.request.method = %method,
        http.route = endpoint,
        http.response.status_code = tracing::field::Empty,
    )
}

async fn dispatch(
    state: &AppState,
    route: Route<'_>,
    request: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let method = request.method().clone();
    match (route, method) {
        (Route::OpenRosa { project, token }, Method::HEAD) => {
            authorize(state, &request, project, token)?;
            let mut answer = response::text(StatusCode::NO_CONTENT, Bytes::new(), "text/plain");
            response::add_openrosa_headers(&mut answer, state.config.max_body_bytes);
            Ok(answer)
        }
        (Route::OpenRosa { project, token }, Method::POST) => {
            let (principal, project) = authorize(state, &request, project, token)?;
            let kind = if content_type(&request).starts_with("multipart/") {
                BodyKind::Multipart
            } else {
                BodyKind::Document
            };
            let _admitted = state
                .admission
                .admit(declared_length(&request), kind)
                .await?;
            openrosa_submission(state, principal, project, request).await
        }
        (Route::JsonSubmission(project), Method::POST) => {
            let principal = authenticate(state, &request, None)?;
            let _admitted = state
                .admission
                .admit(declared_length(&request), BodyKind::Document)
                .await?;
            json_submission(state, principal, project, request).await
        }
        (Route::JsonBatch(project), Method::POST) => {
            let principal = authenticate(state, &request, None)?;
            let _admitted = state
                .admission
                .admit(declared_length(&request), BodyKind::Document)
                .await?;
            json_batch(state, principal, project, request).await
        }
        (Route::Forms(project), Method::POST) => {
            let (principal, project) = authorize(state, &request, Some(project), None)?;
            register_form(state, principal, project, request).await
        }
        (Route::Settings(project), Method::PUT) => {
            let (principal, project) = authorize(state, &request, Some(project), None)?;
            put_settings(state, principal, project, request).await
        }
        (Route::Webhooks(project), Method::GET) => {
            let (principal, project) = authorize(state, &request, Some(project), None)?;
            crate::webhooks::list(state, &principal.org_id, &project).await
        }
        (Route::Webhook(project, id), Method::PUT) => {
            let (principal, project) = authorize(state, &request, Some(project), None)?;
            let body = read_body(state, request, state.config.max_document_bytes).await?;
            crate::webhooks::put(state, &principal.org_id, &project, id, &body).await
        }
        (Route::Webhook(project, id), Method::GET) => {
            let (principal, project) = authorize(state, &request, Some(project), None)?;
            crate::webhooks::get(state, &principal.org_id, &project, id).await
        }
        (Route::Webhook(project, id), Method::DELETE) => {
            let (principal, project) = authorize(state, &request, Some(project), None)?;
            crate::webhooks::delete(state, &principal.org_id, &project, id).await
        }
        (Route::Stats(project), Method::GET) => {
            let (principal, project) = authorize(state, &request, Some(project), None)?;
            let range = stats::parse_range(request.uri().query())?;
            let body =
                stats::project_stats(&state.analytics, &principal.org_id, &project, range).await?;
            Ok(response::json(StatusCode::OK, &body))
        }
        (Route::Health, Method::GET) => Ok(response::text(StatusCode::OK, "ok\n", "text/plain")),
        (Route::Ready, Method::GET) => Ok(if !state.producer.is_ready() {
            response::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "kafka unreachable or producer queue full\n",
                "text/plain",
            )
        } else if state.intake.index.warming_up() {
            response::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "submission index still loading\n",
                "text/plain",
            )
        } else {
            response::text(StatusCode::OK, "ready\n", "text/plain")
        }),
        (Route::Metrics, Method::GET) => Ok(response::text(
            StatusCode::OK,
            state.metrics.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )),
        (Route::Unknown, _) => Err(GatewayError::NotFound),
        _ => Err(GatewayError::MethodNotAllowed),
    }
}

fn authenticate(
    state: &AppState,
    request: &Request<Incoming>,
    path_token: Option<&str>,
) -> Result<Principal, GatewayError> {
    state
        .auth
        .authenticate(request.headers(), path_token)
        .map_err(GatewayError::Unauthorized)
}

/// Authenticates and checks the project, defaulting to the configured one.
fn authorize(
    state: &AppState,
    request: &Request<Incoming>,
    project: Option<&str>,
    path_token: Option<&str>,
) -> Result<(Principal, String), GatewayError> {
    let principal = authenticate(state, request, path_token)?;
    let project = project.unwrap_or(&state.config.default_project).to_owned();
    if !principal.allows(&project) {
        return Err(GatewayError::ProjectForbidden(project));
    }
    Ok((principal, project))
}

/// Returns the body length the request declares in `Content-Length`, if any.
fn declared_length(request: &Request<Incoming>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
}

/// Reads the whole body, up to the configured cap.
async fn read_body(
    state: &AppState,
    request: Request<Incoming>,
    cap: u64,
) -> Result<Bytes, GatewayError> {
    let declared = declared_length(&request);
    let too_large = || {
        if cap == state.config.max_body_bytes {
            GatewayError::BodyTooLarge(cap)
        } else {
            GatewayError::DocumentTooLarge(cap)
        }
    };
    // A declared length over the cap is rejected before a byte of the body is read.
    if declared.is_some_and(|length| length > cap) {
        return Err(too_large());
    }
    let limit = usize::try_from(cap).unwrap_or(usize::MAX);
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(error) => Err(GatewayError::BadRequest(format!(
            "the request body could not be read: {error}"
        ))),
    }
}

fn content_type(request: &Request<Incoming>) -> String {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn openrosa_submission(
    state: &AppState,
    principal: Principal,
    project_id: String,
    request: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let content_type = content_type(&request);
    let body = read_body(state, request, state.config.max_body_bytes).await?;
    let (xml, files) = if content_type.starts_with("multipart/") {
        read_multipart(state, &content_type, body).await?
    } else if content_type.contains("xml") {
        (body, Vec::new())
    } else {
        return Err(GatewayError::UnsupportedMediaType(content_type));
    };
    if xml.len() as u64 > state.config.max_document_bytes {
        return Err(GatewayError::DocumentTooLarge(
            state.config.max_document_bytes,
        ));
    }

    let parsed = parse_instance(&xml, state.config.max_xml_depth)?;
    let incoming = IncomingSubmission {
        org_id: principal.org_id,
        project_id,
        submitter: principal.user,
        source: SubmissionSource::OpenRosa,
        form_id: parsed.form_id,
        form_version: parsed.form_version,
        instance_id: parsed.instance_id,
        deprecated_id: parsed.deprecated_id,
        device_id: parsed.device_id,
        fields: parsed.fields,
        referenced_files: parsed.referenced_files,
        encrypted: parsed.encrypted,
        content_sha256: hex::encode(Sha256::digest(&xml)),
        files,
    };
    let accepted = state.intake.submit(incoming).await?;
    let message = if !accepted.produced {
        "Your submission was already received. Thank you!".to_owned()
    } else if accepted.missing_attachments.is_empty() {
        "Form received successfully. Thank you!".to_owned()
    } else {
        format!(
            "Form received. Still waiting for {} attachment(s): {}",
            accepted.missing_attachments.len(),
            accepted.missing_attachments.join(", ")
        )
    };
    Ok(response::openrosa(
        StatusCode::CREATED,
        "submit_success",
        &message,
        state.config.max_body_bytes,
    ))
}

/// Splits an OpenRosa multipart body into the instance XML and the attachments.
async fn read_multipart(
    state: &AppState,
    content_type: &str,
    body: Bytes,
) -> Result<(Bytes, Vec<ReceivedFile>), GatewayError> {
    let boundary = multer::parse_boundary(content_type).map_err(|error| {
        GatewayError::BadRequest(format!("invalid multipart content type: {error}"))
    })?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let invalid =
        |error: multer::Error| GatewayError::BadRequest(format!("invalid multipart body: {error}"));

    let mut xml = None;
    let mut files: Vec<ReceivedFile> = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(invalid)? {
        let part_name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let declared_type = field.content_type().map(ToString::to_string);
        let content = field.bytes().await.map_err(invalid)?;
        if part_name == INSTANCE_PART {
            xml = Some(content);
            continue;
        }
        // ODK Collect names each part after its file; the file name wins when both exist.
        let name = file_name
            .filter(|name| !name.is_empty())
            .unwrap_or(part_name);
        if name.is_empty() {
            return Err(GatewayError::BadRequest(
                "an attachment part has no name".into(),
            ));
        }
        files.retain(|file| file.name != name);
        if files.len() >= state.config.max_attachments {
            return Err(GatewayError::TooManyAttachments(
                state.config.max_attachments,
            ));
        }
        files.push(ReceivedFile {
            name,
            declared_type,
            content,
        });
    }
    let xml = xml.ok_or(GatewayError::MissingInstance)?;
    Ok((xml, files))
}

/// Parses and accepts one JSON submission value. The project comes from the path, else from
/// the body's `project_id`, else from the configured default.
async fn accept_json(
    state: &AppState,
    principal: &Principal,
    path_project: Option<&str>,
    value: Value,
) -> Result<Accepted, GatewayError> {
    let parsed = parse_json_submission(value)?;
    let project_id = match (path_project, parsed.project_id) {
        (Some(path), Some(body)) if path != body => {
            return Err(GatewayError::BadRequest(format!(
                "project_id {body:?} in the body differs from project {path:?} in the path"
            )));
        }
        (Some(path), _) => path.to_owned(),
        (None, Some(body)) => body,
        (None, None) => state.config.default_project.clone(),
    };
    if !principal.allows(&project_id) {
        return Err(GatewayError::ProjectForbidden(project_id));
    }
    let incoming = IncomingSubmission {
        org_id: principal.org_id.clone(),
        project_id,
        submitter: principal.user.clone(),
        source: SubmissionSource::Json,
        form_id: parsed.form_id,
        form_version: parsed.form_version,
        instance_id: parsed.submission_id,
        deprecated_id: parsed.deprecated_id,
        device_id: parsed.device_id,
        fields: parsed.fields,
        referenced_files: Vec::new(),
        encrypted: None,
        content_sha256: parsed.content_sha256,
        files: Vec::new(),
    };
    state.intake.submit(incoming).await
}

fn accepted_body(accepted: &Accepted) -> Value {
    json!({
        "status": if accepted.produced { "accepted" } else { "duplicate" },
        "submission_id": accepted.submission_id,
        "revision": accepted.revision,
    })
}

async fn read_json(state: &AppState, request: Request<Incoming>) -> Result<Value, GatewayError> {
    let body = read_body(state, request, state.config.max_body_bytes).await?;
    serde_json::from_slice(&body)
        .map_err(|error| GatewayError::BadRequest(format!("the body is not valid JSON: {error}")))
}

async fn json_submission(
    state: &AppState,
    principal: Principal,
    project: Option<&str>,
    request: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if content_length.is_some_and(|length| length > state.config.max_document_bytes) {
        return Err(GatewayError::DocumentTooLarge(
            state.config.max_document_bytes,
        ));
    }
    let value = read_json(state, request).await?;
    let accepted = accept_json(state, &principal, project, value).await?;
    Ok(response::json(
        StatusCode::CREATED,
        &accepted_body(&accepted),
    ))
}

async fn json_batch(
    state: &AppState,
    principal: Principal,
    project: Option<&str>,
    request: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let items = match read_json(state, request).await? {
        Value::Array(items) => items,
        Value::Object(mut body) => match body.remove("submissions") {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(GatewayError::BadRequest(
                    "the batch must be a JSON array or {\"submissions\": [...]}".into(),
                ));
            }
        },
        _ => {
            return Err(GatewayError::BadRequest(
                "the batch must be a JSON array or {\"submissions\": [...]}".into(),
            ));
        }
    };
    if items.len() > state.config.max_batch_items {
        return Err(GatewayError::BatchTooLarge(state.config.max_batch_items));
    }

    // Items are produced concurrently so a batch costs about one delivery round trip;
    // items with the same id still go one after the other through the index lock.
    let outcomes = join_all(
        items
            .into_iter()
            .map(|item| accept_json(state, &principal, project, item)),
    )
    .await;
    let mut retry = false;
    let results: Vec<Value> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Ok(accepted) => {
                let mut body = accepted_body(accepted);
                body["index"] = json!(index);
                body["status_code"] = json!(StatusCode::CREATED.as_u16());
                body
            }
            Err(error) => {
                state.metrics.rejected(error.reason());
                retry |= error.is_retryable();
                let mut body = response::error_body(error);
                body["index"] = json!(index);
                body["status_code"] = json!(error.status().as_u16());
                body
            }
        })
        .collect();
    let accepted = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    let mut answer = response::json(
        StatusCode::OK,
        &json!({ "accepted": accepted, "rejected": results.len() - accepted, "results": results }),
    );
    if retry {
        answer.headers_mut().insert(
            header::RETRY_AFTER,
            http::HeaderValue::from(state.config.retry_after_s),
        );
    }
    Ok(answer)
}

async fn register_form(
    state: &AppState,
    principal: Principal,
    project_id: String,
    request: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let body = read_body(state, request, state.config.max_document_bytes).await?;
    let sha256 = hex::encode(Sha256::digest(&body));
    let form = parse_xform(
        &body,
        state.config.max_xml_depth,
        &principal.org_id,
        &project_id,
        now_ms(),
        sha256,
    )?;
    let payload = codec::encode(&form);
    state
        .producer
        .send(
            &state.forms_topic,
            &form.topic_key(),
            &payload,
            &FormDefinition::schema_header(),
            form.registered_at_ms,
        )
        .await?;
    tracing::info!(form_id = %form.form_id, version = %form.version, project_id = %project_id, "form registered");
    Ok(response::json(
        StatusCode::CREATED,
        &json!({
            "form_id": form.form_id,
            "version": form.version,
            "fields": form.fields.len(),
            "key": form.topic_key(),
        }),
    ))
}

async fn put_settings(
    state: &AppState,
    principal: Principal,
    project_id: String,
    request: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let body = read_body(state, request, state.config.max_document_bytes).await?;
    let mut value: Value = serde_json::from_slice(&body).map_err(|error| {
        GatewayError::BadRequest(format!("the body is not valid JSON: {error}"))
    })?;
    let Some(object) = value.as_object_mut() else {
        return Err(GatewayError::BadRequest(
            "project settings must be a JSON object".into(),
        ));
    };
    // The organisation and project come from the token and the path, whatever the body says.
    object.insert("org_id".into(), json!(principal.org_id));
    object.insert("project_id".into(), json!(project_id));
    object.insert("schema_version".into(), json!(PROJECT_SETTINGS_VERSION));
    let settings: ProjectSettings = serde_json::from_value(value)
        .map_err(|error| GatewayError::BadRequest(format!("invalid project settings: {error}")))?;

    let payload = codec::encode(&settings);
    state
        .producer
        .send(
            &state.settings_topic,
            &settings.topic_key(),
            &payload,
            &ProjectSettings::schema_header(),
            now_ms(),
        )
        .await?;
    tracing::info!(project_id = %settings.project_id, geofences = settings.geofences.len(), "project settings updated");
    Ok(response::json(
        StatusCode::OK,
        &serde_json::to_value(&settings).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_openrosa_paths() {
        assert!(matches!(
            route("/v1/key/abc/projects/p1/submission"),
            Route::OpenRosa {
                project: Some("p1"),
                token: Some("abc")
            }
        ));
        assert!(matches!(
            route("/submission"),
            Route::OpenRosa { project: None, .. }
        ));
        assert!(matches!(
            route("/v1/submissions/batch"),
            Route::JsonBatch(None)
        ));
        assert!(matches!(
            route("/v1/projects/census/submissions"),
            Route::JsonSubmission(Some("census"))
        ));
        assert!(matches!(
            route("/v1/projects/census/submissions/batch"),
            Route::JsonBatch(Some("census"))
        ));
        assert!(matches!(
            route("/v1/projects/census/webhooks"),
            Route::Webhooks("census")
        ));
        assert!(matches!(
            route("/v1/projects/census/webhooks/crm"),
            Route::Webhook("census", "crm")
        ));
        assert!(matches!(
            route("/v1/projects/census/stats"),
            Route::Stats("census")
        ));
        assert!(matches!(route("/v1/other"), Route::Unknown));
    }
}
