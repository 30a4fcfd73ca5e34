//! The HTTP routes of the operations service: `/` (the page), `/api/overview` (its JSON),
//! `/healthz` and `/metrics`. Every route serves GET and HEAD only and reads no request body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fieldforce_runtime::shutdown::Shutdown;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::State;

/// The page: HTML with its CSS and script inline. The script renders the overview embedded at
/// [`OVERVIEW_PLACEHOLDER`] at once, then fetches `/api/overview` every sample interval.
const PAGE: &str = include_str!("page.html");

/// Text of the page replaced by the overview JSON when the page is served.
const OVERVIEW_PLACEHOLDER: &str = "__OVERVIEW_JSON__";

/// How long a client may take to send the request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the routes until shutdown.
pub async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown: Shutdown) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "operations server accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, Arc::clone(&state)));
            if let Err(error) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "operations connection ended with an error");
            }
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served\n".to_owned(),
        ));
    }
    let response = match request.uri().path() {
        "/" => page(&state),
        "/api/overview" => overview(&state),
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/metrics" => metrics(&state),
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    Ok(response)
}

fn page(state: &State) -> Response<Full<Bytes>> {
    let json = match serde_json::to_string(&state.overview()) {
        Ok(json) => json,
        Err(error) => return encoding_failed(&error),
    };
    // The JSON sits inside a <script> element, where a literal "</script" would end it;
    // escaping every '<' keeps it valid JSON and inert HTML.
    let body = PAGE.replace(OVERVIEW_PLACEHOLDER, &json.replace('<', "\\u003c"));
    with_type(StatusCode::OK, "text/html; charset=utf-8", body)
}

fn overview(state: &State) -> Response<Full<Bytes>> {
    match serde_json::to_string(&state.overview()) {
        Ok(json) => with_type(StatusCode::OK, "application/json", json),
        Err(error) => encoding_failed(&error),
    }
}

fn metrics(state: &State) -> Response<Full<Bytes>> {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => with_type(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(error) => encoding_failed(&error),
    }
}

fn encoding_failed(error: &dyn std::fmt::Display) -> Response<Full<Bytes>> {
    tracing::error!(%error, "encoding a response failed");
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("encoding the response failed: {error}\n"),
    )
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    // Every response describes the moment it was made.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
