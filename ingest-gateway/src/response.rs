//! Building HTTP answers: OpenRosa XML bodies with their protocol headers, JSON bodies, and
//! the headers every error needs (`WWW-Authenticate`, `Retry-After`).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::error::GatewayError;

/// The body type of every answer.
pub type Body = Full<Bytes>;

/// Which protocol an endpoint speaks, for error bodies and authentication challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenRosa: XML bodies, HTTP Basic.
    OpenRosa,
    /// JSON API: JSON bodies, Bearer tokens.
    Json,
}

/// Protocol header values.
const OPENROSA_VERSION: &str = "1.0";
const OPENROSA_NAMESPACE: &str = "http://openrosa.org/http/response";
const REALM: &str = "FieldForce";

/// Builds an OpenRosa answer with a message of the given nature (`submit_success`, `error`).
pub fn openrosa(
    status: StatusCode,
    nature: &str,
    message: &str,
    accept_bytes: u64,
) -> Response<Body> {
    let body = format!(
        "<OpenRosaResponse xmlns=\"{OPENROSA_NAMESPACE}\"><message nature=\"{nature}\">{}</message></OpenRosaResponse>",
        escape_xml(message)
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    add_openrosa_headers(&mut response, accept_bytes);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    response
}

/// Adds `X-OpenRosa-Version` and `X-OpenRosa-Accept-Content-Length`.
pub fn add_openrosa_headers(response: &mut Response<Body>, accept_bytes: u64) {
    let headers = response.headers_mut();
    headers.insert(
        "x-openrosa-version",
        HeaderValue::from_static(OPENROSA_VERSION),
    );
    headers.insert(
        "x-openrosa-accept-content-length",
        HeaderValue::from(accept_bytes),
    );
}

/// Builds a JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Builds a plain-text answer.
pub fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Builds the answer to a failed request in the endpoint's protocol.
pub fn error(
    protocol: Protocol,
    error: &GatewayError,
    accept_bytes: u64,
    retry_after_s: u64,
) -> Response<Body> {
    let status = error.status();
    let message = error.to_string();
    let mut response = match protocol {
        Protocol::OpenRosa => openrosa(status, "error", &message, accept_bytes),
        Protocol::Json => json(status, &error_body(error)),
    };
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        let challenge = match protocol {
            Protocol::OpenRosa => format!("Basic realm=\"{REALM}\", charset=\"UTF-8\""),
            Protocol::Json => format!("Bearer realm=\"{REALM}\""),
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
    }
    if error.is_retryable() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    }
    response
}

/// Returns the JSON error object: `{"error": {"code", "message"}}`.
pub fn error_body(error: &GatewayError) -> serde_json::Value {
    serde_json::json!({ "error": { "code": error.reason(), "message": error.to_string() } })
}

fn escape_xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openrosa_message_is_escaped() {
        let response = openrosa(StatusCode::BAD_REQUEST, "error", "a < b & \"c\"", 10);
        assert_eq!(response.headers()["x-openrosa-version"], "1.0");
        assert_eq!(response.headers()["x-openrosa-accept-content-length"], "10");
        assert_eq!(escape_xml("a < b & \"c\""), "a &lt; b &amp; &quot;c&quot;");
    }
}
