//! HTTP client for the gateway, speaking each protocol the way real clients do.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the gateway answered to one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// HTTP status; 0 when no answer came (connection refused, timeout).
    pub status: u16,
    /// Response body as text, or the transport error.
    pub body: String,
    /// Time from sending the request to the end of the response body.
    pub latency: Duration,
}

impl Outcome {
    /// Whether the gateway accepted the request.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Returns the human-readable message of the answer: the OpenRosa `<message>`, the JSON
    /// `error` or `message` field, or the body itself.
    pub fn message(&self) -> String {
        if let Some(start) = self.body.find("<message") {
            let text = &self.body[start..];
            if let (Some(open), Some(close)) = (text.find('>'), text.find("</message>"))
                && open < close
            {
                return text[open + 1..close].trim().to_owned();
            }
        }
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&self.body) {
            for key in ["error", "message", "reason"] {
                if let Some(text) = json.get(key).and_then(|value| value.as_str()) {
                    return text.to_owned();
                }
            }
        }
        self.body.trim().chars().take(200).collect()
    }
}

/// A file sent with an OpenRosa submission.
#[derive(Debug, Clone)]
pub struct AttachmentFile {
    /// Name the submission refers to it by.
    pub name: String,
    /// Content.
    pub bytes: Bytes,
}

/// Client for one gateway and one token.
#[derive(Clone)]
pub struct GatewayClient {
    base_url: String,
    token: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl GatewayClient {
    /// Creates a client; no connection is made until the first request.
    pub fn new(base_url: &str, token: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .build(connector),
        }
    }

    /// Returns a client for the same gateway that sends another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// Posts an OpenRosa submission as ODK Collect does: `HEAD` first, then a multipart
    /// `POST` with the instance in `xml_submission_file` and each attachment in a part named
    /// after its file. `user` is the enumerator's user name for HTTP Basic.
    pub async fn submit_openrosa(
        &self,
        project: &str,
        user: &str,
        xml: Bytes,
        attachments: &[AttachmentFile],
        send_head: bool,
    ) -> Outcome {
        let path = format!("/v1/projects/{project}/submission");
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", self.token));
        let authorization = format!("Basic {basic}");
        if send_head {
            let head = self
                .send(Method::HEAD, &path, &authorization, None, Bytes::new())
                .await;
            if head.status != 204 {
                return head;
            }
        }
        let boundary = format!("fieldforce-{}", uuid::Uuid::new_v4().simple());
        let body = multipart_body(&boundary, xml, attachments);
        let content_type = format!("multipart/form-data; boundary={boundary}");
        self.send(
            Method::POST,
            &path,
            &authorization,
            Some(&content_type),
            body,
        )
        .await
    }

    /// Posts a JSON body to a gateway path with the bearer token.
    pub async fn post_json(&self, path: &str, body: Bytes) -> Outcome {
        let authorization = format!("Bearer {}", self.token);
        self.send(
            Method::POST,
            path,
            &authorization,
            Some("application/json"),
            body,
        )
        .await
    }

    /// Puts a JSON body to a gateway path with the bearer token.
    pub async fn put_json(&self, path: &str, body: Bytes) -> Outcome {
        let authorization = format!("Bearer {}", self.token);
        self.send(
            Method::PUT,
            path,
            &authorization,
            Some("application/json"),
            body,
        )
        .await
    }

    /// Registers an XForm definition in a project.
    pub async fn register_form(&self, project: &str, xform: Bytes) -> Outcome {
        let authorization = format!("Bearer {}", self.token);
        let path = format!("/v1/projects/{project}/forms");
        self.send(Method::POST, &path, &authorization, Some("text/xml"), xform)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Outcome {
        let started = Instant::now();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_url))
            .header("authorization", authorization)
            .header("x-openrosa-version", "1.0");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(error) => return failed(started, format!("invalid request: {error}")),
        };
        let exchange = async {
            let response = self.http.request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok((status, body))) => Outcome {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
                latency: started.elapsed(),
            },
            Ok(Err(error)) => failed(started, format!("request failed: {error}")),
            Err(_) => failed(started, "request timed out".to_owned()),
        }
    }
}

fn failed(started: Instant, reason: String) -> Outcome {
    Outcome {
        status: 0,
        body: reason,
        latency: started.elapsed(),
    }
}

/// Builds a `multipart/form-data` body. File names go in as raw UTF-8, as ODK Collect sends
/// them.
fn multipart_body(boundary: &str, xml: Bytes, attachments: &[AttachmentFile]) -> Bytes {
    let mut body = Vec::with_capacity(xml.len() + 512);
    let mut part = |name: &str, filename: &str, content_type: &str, bytes: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(
            format!(
                "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n\
                 Content-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    };
    part("xml_submission_file", "submission.xml", "text/xml", &xml);
    for attachment in attachments {
        part(
            &attachment.name,
            &attachment.name,
            "application/octet-stream",
            &attachment.bytes,
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Bytes::from(body)
}
