//! The admin HTTP server of a processor: `/healthz` (200 once the processor has read the
//! compacted topics and started consuming, 503 before) and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fieldforce_runtime::shutdown::Shutdown;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::ProcessorError;

/// State the admin server reports.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Every metric of the process.
    pub registry: Arc<Registry>,
    /// Whether the processor is consuming.
    pub ready: Arc<AtomicBool>,
}

/// Binds the admin address and serves until shutdown. Returns the bound address, which differs
/// from the configured one when it names port 0.
pub async fn serve(
    addr: &str,
    state: AdminState,
    mut shutdown: Shutdown,
) -> Result<SocketAddr, ProcessorError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ProcessorError::AdminBind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| ProcessorError::AdminBind {
            addr: addr.to_owned(),
            source,
        })?;
    tracing::info!(addr = %local, "admin server listening");

    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.wait() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin server accept failed");
                        continue;
                    }
                },
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| respond(request, state.clone()));
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    });
    Ok(local)
}

async fn respond(
    request: Request<Incoming>,
    state: AdminState,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match request.uri().path() {
        "/healthz" if state.ready.load(Ordering::Relaxed) => (StatusCode::OK, "ok\n".to_owned()),
        "/healthz" => (StatusCode::SERVICE_UNAVAILABLE, "starting\n".to_owned()),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => (StatusCode::OK, text),
                Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

/// Handle that marks the processor ready for `/healthz`.
#[derive(Debug, Clone)]
pub struct Ready(Arc<AtomicBool>);

impl Ready {
    /// Marks the processor as consuming.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Starts the admin server of a processor on `processors.admin_listen_addr`.
pub async fn start(
    config: &fieldforce_runtime::config::Config,
    registry: Registry,
    shutdown: Shutdown,
) -> Result<Ready, ProcessorError> {
    let ready = Arc::new(AtomicBool::new(false));
    let state = AdminState {
        registry: Arc::new(registry),
        ready: Arc::clone(&ready),
    };
    serve(&config.processors.admin_listen_addr, state, shutdown).await?;
    Ok(Ready(ready))
}
