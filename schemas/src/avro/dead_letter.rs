//! Avro layout of the dead-letter envelope. Byte fields go through apache-avro's `bytes`
//! helpers, since serde would otherwise write a `Vec<u8>` as an array of ints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::PartnerDecodeError;
use crate::dead_letter::DeadLetterEnvelope;

/// The Avro field layout of a dead-letter envelope.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct AvroDeadLetterEnvelope {
    #[serde(with = "apache_avro::serde::bytes_opt")]
    key: Option<Vec<u8>>,
    #[serde(with = "apache_avro::serde::bytes_opt")]
    value: Option<Vec<u8>>,
    headers: BTreeMap<String, HeaderValue>,
    stage: String,
    reason: String,
    detail: String,
    source_topic: String,
    partition: i32,
    offset: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct HeaderValue(#[serde(with = "apache_avro::serde::bytes")] Vec<u8>);

impl From<&DeadLetterEnvelope> for AvroDeadLetterEnvelope {
    fn from(envelope: &DeadLetterEnvelope) -> Self {
        Self {
            key: envelope.key.clone(),
            value: envelope.value.clone(),
            headers: envelope
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), HeaderValue(value.clone())))
                .collect(),
            stage: envelope.stage.clone(),
            reason: envelope.reason.clone(),
            detail: envelope.detail.clone(),
            source_topic: envelope.source_topic.clone(),
            partition: envelope.partition,
            offset: envelope.offset,
        }
    }
}

impl TryFrom<AvroDeadLetterEnvelope> for DeadLetterEnvelope {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroDeadLetterEnvelope) -> Result<Self, Self::Error> {
        Ok(Self {
            key: avro.key,
            value: avro.value,
            headers: avro
                .headers
                .into_iter()
                .map(|(name, value)| (name, value.0))
                .collect(),
            stage: avro.stage,
            reason: avro.reason,
            detail: avro.detail,
            source_topic: avro.source_topic,
            partition: avro.partition,
            offset: avro.offset,
        })
    }
}
