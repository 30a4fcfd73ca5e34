//! One delivery attempt over HTTP/1.1: resolve the host, keep the addresses the
//! [`AddressGuard`] allows, connect to one of them (with TLS for `https`), POST the body with
//! the signature headers and read the status and the first bytes of the response.
//!
//! Every attempt opens its own connection. Webhook traffic per endpoint is low and bounded by
//! its concurrency limit, and a fresh connection means each attempt goes through the guard
//! with the addresses it resolved just then.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fieldforce_schemas::webhook::EndpointUrl;
use fieldforce_schemas::webhook::LastResponse;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::guard::{AddressGuard, Rejection};
use crate::ProcessorError;

/// Headers of every delivery.
pub const DELIVERY_HEADER: &str = "x-fieldforce-delivery";
/// Event name header.
pub const EVENT_HEADER: &str = "x-fieldforce-event";
/// Signature header, `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-fieldforce-signature";

/// The request of one attempt.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Delivery id header value.
    pub delivery_id: &'a str,
    /// Event name header value.
    pub event: &'a str,
    /// Signature header value.
    pub signature: &'a str,
    /// The JSON body.
    pub body: &'a str,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The endpoint responded with a 2xx status.
    Delivered {
        /// Status code.
        status: u16,
    },
    /// Any other status, a timeout or a connection failure, so a later attempt may succeed.
    Failed(LastResponse),
    /// The guard rejected the endpoint, and every later attempt would be rejected too.
    Rejected(Rejection),
}

/// Sends deliveries; cheap to clone.
#[derive(Clone)]
pub struct Sender {
    guard: Arc<AddressGuard>,
    tls: tokio_rustls::TlsConnector,
    response_body_max_bytes: usize,
}

impl Sender {
    /// Creates a sender that trusts the Mozilla root certificates shipped in `webpki-roots`
    /// and the `extra_roots`, as loaded by [`load_ca_certificates`].
    pub fn new(
        guard: AddressGuard,
        response_body_max_bytes: usize,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Self {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        // load_ca_certificates already added each certificate to a store of its own, so none
        // is rejected here.
        roots.add_parsable_certificates(extra_roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            guard: Arc::new(guard),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            response_body_max_bytes,
        }
    }

    /// Makes one attempt, giving up after `timeout`.
    pub async fn attempt(
        &self,
        endpoint: &EndpointUrl,
        outgoing: &Outgoing<'_>,
        timeout: Duration,
    ) -> AttemptOutcome {
        match tokio::time::timeout(timeout, self.attempt_unbounded(endpoint, outgoing)).await {
            Ok(outcome) => outcome,
            Err(_) => failed(format!("timed out after {} ms", timeout.as_millis())),
        }
    }

    async fn attempt_unbounded(
        &self,
        endpoint: &EndpointUrl,
        outgoing: &Outgoing<'_>,
    ) -> AttemptOutcome {
        if let Err(rejection) = self.guard.check_host(&endpoint.host, endpoint.port) {
            return AttemptOutcome::Rejected(rejection);
        }
        let resolved: Vec<SocketAddr> = match endpoint.host.parse::<std::net::IpAddr>() {
            Ok(address) => vec![SocketAddr::new(address, endpoint.port)],
            Err(_) => {
                match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
                    Ok(found) => found.collect(),
                    Err(error) => {
                        return failed(format!("resolving {} failed: {error}", endpoint.host));
                    }
                }
            }
        };
        let addresses = match self.guard.filter(&endpoint.host, &resolved) {
            Ok(addresses) if addresses.is_empty() => {
                return failed(format!("{} resolves to no address", endpoint.host));
            }
            Ok(addresses) => addresses,
            Err(rejection) => return AttemptOutcome::Rejected(rejection),
        };

        let stream = match connect(&addresses).await {
            Ok(stream) => stream,
            Err(error) => return failed(error),
        };
        if !endpoint.tls {
            return self.exchange(stream, endpoint, outgoing).await;
        }
        let server_name = match rustls::pki_types::ServerName::try_from(endpoint.host.clone()) {
            Ok(name) => name,
            Err(error) => {
                return failed(format!(
                    "invalid TLS server name {}: {error}",
                    endpoint.host
                ));
            }
        };
        match self.tls.connect(server_name, stream).await {
            Ok(stream) => self.exchange(stream, endpoint, outgoing).await,
            Err(error) => failed(format!(
                "TLS handshake with {} failed: {error}",
                endpoint.host
            )),
        }
    }

    /// Sends the request on an open connection and reads the response.
    async fn exchange<S>(
        &self,
        stream: S,
        endpoint: &EndpointUrl,
        outgoing: &Outgoing<'_>,
    ) -> AttemptOutcome
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut request_sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(parts) => parts,
                Err(error) => return failed(format!("HTTP handshake failed: {error}")),
            };
        // The connection task ends when the response is read or the request is dropped on
        // timeout, whichever comes first.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::trace!(%error, "webhook connection ended with an error");
            }
        });

        let request = Request::post(endpoint.path_and_query.as_str())
            .header(header::HOST, endpoint.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "fieldforce-webhooks/1")
            .header(header::CONNECTION, "close")
            .header(DELIVERY_HEADER, outgoing.delivery_id)
            .header(EVENT_HEADER, outgoing.event)
            .header(SIGNATURE_HEADER, outgoing.signature)
            .body(Full::new(Bytes::copy_from_slice(outgoing.body.as_bytes())));
        let request = match request {
            Ok(request) => request,
            Err(error) => return failed(format!("building the request failed: {error}")),
        };
        let response = match request_sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => return failed(format!("sending the request failed: {error}")),
        };

        let status = response.status();
        if status.is_success() {
            return AttemptOutcome::Delivered {
                status: status.as_u16(),
            };
        }
        let body_prefix = read_prefix(response.into_body(), self.response_body_max_bytes).await;
        AttemptOutcome::Failed(LastResponse {
            status: Some(status.as_u16()),
            body_prefix,
            error: String::new(),
        })
    }
}

/// Reads every certificate from the given PEM files, for `webhooks.extra_ca_certificate_files`.
/// Fails on the first file that cannot be read, contains no certificate, or contains one that
/// cannot be a trust anchor, and names that file in the error.
pub fn load_ca_certificates(
    paths: &[String],
) -> Result<Vec<CertificateDer<'static>>, ProcessorError> {
    let mut certificates = Vec::new();
    for path in paths {
        let invalid = |reason: String| ProcessorError::CaCertificates {
            path: path.clone(),
            reason,
        };
        let found: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|error| invalid(error.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|error| invalid(error.to_string()))?;
        if found.is_empty() {
            return Err(invalid("no CERTIFICATE section found".to_owned()));
        }
        let mut check = rustls::RootCertStore::empty();
        for certificate in &found {
            check
                .add(certificate.clone())
                .map_err(|error| invalid(format!("not a usable CA certificate: {error}")))?;
        }
        certificates.extend(found);
    }
    Ok(certificates)
}

/// Connects to the first address that accepts, in resolver order.
async fn connect(addresses: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last_error = String::new();
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => {
                // Webhook bodies are small; sending them at once saves a round trip.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(error) => last_error = format!("connecting to {address} failed: {error}"),
        }
    }
    Err(last_error)
}

/// Reads at most `max_bytes` of a response body, as lossy UTF-8. A body that fails midway
/// keeps what was read.
async fn read_prefix(mut body: hyper::body::Incoming, max_bytes: usize) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < max_bytes {
        let Some(Ok(frame)) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            let room = max_bytes - prefix.len();
            prefix.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

fn failed(error: String) -> AttemptOutcome {
    AttemptOutcome::Failed(LastResponse {
        status: None,
        body_prefix: String::new(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_names_the_path() {
        let path = std::env::temp_dir().join(format!("missing-ca-{}.pem", uuid::Uuid::new_v4()));
        let path = path.display().to_string();
        let error = load_ca_certificates(std::slice::from_ref(&path)).unwrap_err();
        assert!(error.to_string().contains(&path), "{error}");
    }

    #[test]
    fn ca_file_without_certificate_is_rejected() {
        let path = std::env::temp_dir().join(format!("empty-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let path_text = path.display().to_string();
        let result = load_ca_certificates(std::slice::from_ref(&path_text));
        let _ = std::fs::remove_file(&path);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("no CERTIFICATE section found"), "{error}");
    }
}
