//! Admission of submission requests against two budgets of body bytes in flight.
//!
//! Every submission request keeps its body, the parsed document, the encoded record and the
//! producer's copy of it in memory until the delivery report arrives. Under a load the
//! gateway cannot keep up with, those requests pile up, and without a cap its memory grows
//! with them: 4,096 JSON batches of 20 in flight took the gateway past 500 MiB
//! (docs/benchmarks/gateway.md). So a request takes its declared body length from a budget
//! before a byte of its body is read, and gives it back when its response is built. A request
//! that cannot get its share within `gateway.admission_wait_ms` gets 503 with
//! `Retry-After`, and nothing of it is kept. Its body was never read, so waiting costs little
//! more than the connection.
//!
//! A body that is one document (JSON, or bare XML) takes from
//! `gateway.max_in_flight_document_bytes`. It is parsed whole into a tree and re-encoded,
//! which takes many times its size. A multipart body takes from
//! `gateway.max_in_flight_multipart_bytes`: its attachments stay the bytes they arrived as,
//! and only its small instance XML is parsed. So photos do not crowd out JSON batches, nor
//! JSON batches photos.
//!
//! A body without a declared length (chunked) counts as `gateway.max_body_bytes`, the most it
//! may turn out to be. A declared length over that cap takes nothing, since the request gets
//! 413 without a byte of its body being read. A share larger than the whole budget takes the
//! whole budget, so that request runs alone rather than never.

use std::sync::Arc;
use std::time::Duration;

use fieldforce_runtime::config::GatewayConfig;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::GatewayError;

/// How a request's body is held while it is handled, which decides its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON or XML document, parsed whole.
    Document,
    /// A multipart body: an instance XML and attachments.
    Multipart,
}

/// The budgets of body bytes in flight, shared by every submission request.
pub struct Admission {
    document: Budget,
    multipart: Budget,
    undeclared_bytes: u64,
    wait: Duration,
}

/// One budget and the gauge of the bytes taken from it.
struct Budget {
    permits: Arc<Semaphore>,
    limit_bytes: u32,
    in_flight: Gauge,
}

/// A request's share of a budget, given back when dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    bytes: u32,
    in_flight: Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_flight.dec_by(i64::from(self.bytes));
    }
}

impl Budget {
    fn new(limit_bytes: u64, in_flight: Gauge) -> Self {
        // The semaphore hands out at most u32::MAX permits per acquisition.
        let limit_bytes = u32::try_from(limit_bytes).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(limit_bytes as usize)),
            limit_bytes,
            in_flight,
        }
    }
}

impl Admission {
    /// Creates the budgets of `config`, reporting the bytes taken from each to its gauge.
    pub fn new(config: &GatewayConfig, document_gauge: Gauge, multipart_gauge: Gauge) -> Self {
        Self {
            document: Budget::new(config.max_in_flight_document_bytes, document_gauge),
            multipart: Budget::new(config.max_in_flight_multipart_bytes, multipart_gauge),
            undeclared_bytes: config.max_body_bytes,
            wait: Duration::from_millis(config.admission_wait_ms),
        }
    }

    /// Takes the share of a body of `declared_bytes` (`None` when the length is not
    /// declared) from the budget of its kind, waiting up to the configured time for other
    /// requests to finish.
    pub async fn admit(
        &self,
        declared_bytes: Option<u64>,
        kind: BodyKind,
    ) -> Result<Admitted, GatewayError> {
        let budget = match kind {
            BodyKind::Document => &self.document,
            BodyKind::Multipart => &self.multipart,
        };
        let body_bytes = match declared_bytes {
            // Such a body gets 413 before a byte of it is read, whatever the load.
            Some(bytes) if bytes > self.undeclared_bytes => 0,
            Some(bytes) => bytes,
            None => self.undeclared_bytes,
        };
        let requested_bytes = u32::try_from(body_bytes)
            .unwrap_or(u32::MAX)
            .min(budget.limit_bytes);
        let acquire = budget.permits.clone().acquire_many_owned(requested_bytes);
        let permit = match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed, so only the wait can end without a permit.
            Ok(Err(_)) | Err(_) => return Err(GatewayError::Busy),
        };
        budget.in_flight.inc_by(i64::from(requested_bytes));
        Ok(Admitted {
            _permit: permit,
            bytes: requested_bytes,
            in_flight: budget.in_flight.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(document_bytes: u64, max_body_bytes: u64) -> Admission {
        let config = GatewayConfig {
            max_in_flight_document_bytes: document_bytes,
            max_in_flight_multipart_bytes: 5_000,
            max_body_bytes,
            admission_wait_ms: 20,
            ..GatewayConfig::default()
        };
        Admission::new(&config, Gauge::default(), Gauge::default())
    }

    #[tokio::test]
    async fn busy_until_a_share_is_given_back() {
        let admission = admission(1_000, 10_000);
        let first = admission
            .admit(Some(700), BodyKind::Document)
            .await
            .expect("fits the budget");
        assert!(matches!(
            admission.admit(Some(400), BodyKind::Document).await,
            Err(GatewayError::Busy)
        ));
        assert_eq!(admission.document.in_flight.get(), 700);

        drop(first);
        assert_eq!(admission.document.in_flight.get(), 0);
        admission
            .admit(Some(400), BodyKind::Document)
            .await
            .expect("fits once given back");
    }

    #[tokio::test]
    async fn oversized_body_runs_alone() {
        let admission = admission(1_000, 10_000);
        let alone = admission
            .admit(Some(5_000), BodyKind::Document)
            .await
            .expect("takes the whole budget");
        assert_eq!(admission.document.in_flight.get(), 1_000);
        assert!(matches!(
            admission.admit(Some(1), BodyKind::Document).await,
            Err(GatewayError::Busy)
        ));
        drop(alone);
    }

    #[tokio::test]
    async fn undeclared_length_counts_as_the_body_cap() {
        let admission = admission(1_000, 600);
        let _chunked = admission
            .admit(None, BodyKind::Document)
            .await
            .expect("fits the budget");
        assert_eq!(admission.document.in_flight.get(), 600);
        assert!(matches!(
            admission.admit(Some(500), BodyKind::Document).await,
            Err(GatewayError::Busy)
        ));
    }

    #[tokio::test]
    async fn declared_length_over_the_cap_takes_nothing() {
        let admission = admission(500, 600);
        let _full_budget = admission
            .admit(Some(600), BodyKind::Document)
            .await
            .expect("takes the whole budget");
        admission
            .admit(Some(601), BodyKind::Document)
            .await
            .expect("admitted at once, to get its 413");
        assert_eq!(admission.document.in_flight.get(), 500);
    }

    #[tokio::test]
    async fn multipart_bodies_have_their_own_budget() {
        let admission = admission(1_000, 10_000);
        let _document = admission
            .admit(Some(1_000), BodyKind::Document)
            .await
            .expect("takes the document budget");
        let _photos = admission
            .admit(Some(4_000), BodyKind::Multipart)
            .await
            .expect("the multipart budget is untouched");
        assert_eq!(admission.multipart.in_flight.get(), 4_000);
        assert!(matches!(
            admission.admit(Some(2_000), BodyKind::Multipart).await,
            Err(GatewayError::Busy)
        ));
    }
}
