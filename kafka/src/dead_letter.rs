//! Dead-letter records: the original key, value and headers, byte for byte, plus headers that
//! say which stage gave up on the record, why, and where it was read from.

use fieldforce_schemas::headers;
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Why a record was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterReason {
    /// Stage that gave up: `validation`, `geo`, `quality`, `sink`, ...
    pub stage: &'static str,
    /// Machine-readable code, such as `undecodable` or `document_too_large`.
    pub code: &'static str,
    /// Detail for the operator, such as the decoder's message.
    pub detail: String,
}

/// A dead-letter record ready to produce: the original key and value, and the original
/// headers followed by the dead-letter ones.
#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    /// Original key, if the record had one.
    pub key: Option<Vec<u8>>,
    /// Original value, if the record had one.
    pub payload: Option<Vec<u8>>,
    /// Original headers plus the dead-letter headers.
    pub headers: OwnedHeaders,
}

/// Builds the dead-letter record for a consumed message.
pub fn dead_letter_record<M: Message>(message: &M, reason: &DeadLetterReason) -> DeadLetterRecord {
    let mut output = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for header in original.iter() {
            output = output.insert(Header {
                key: header.key,
                value: header.value,
            });
        }
    }
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    for (key, value) in [
        (headers::DEAD_LETTER_STAGE, reason.stage),
        (headers::DEAD_LETTER_REASON, reason.code),
        (headers::DEAD_LETTER_DETAIL, reason.detail.as_str()),
        (headers::DEAD_LETTER_TOPIC, message.topic()),
        (headers::DEAD_LETTER_PARTITION, partition.as_str()),
        (headers::DEAD_LETTER_OFFSET, offset.as_str()),
    ] {
        output = output.insert(Header {
            key,
            value: Some(value),
        });
    }
    DeadLetterRecord {
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: output,
    }
}

/// Returns the value of a header as UTF-8, if present.
pub fn header_str<'a, H: Headers>(headers: &'a H, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    #[test]
    fn keeps_original_bytes_and_headers() {
        let original_headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        let message = OwnedMessage::new(
            Some(b"not json \xff".to_vec()),
            Some(b"sub-1".to_vec()),
            "fieldforce.submissions.raw".into(),
            Timestamp::CreateTime(1),
            4,
            77,
            Some(original_headers),
        );
        let reason = DeadLetterReason {
            stage: "validation",
            code: "undecodable",
            detail: "expected value at line 1".into(),
        };

        let record = dead_letter_record(&message, &reason);

        assert_eq!(record.payload.as_deref(), Some(&b"not json \xff"[..]));
        assert_eq!(record.key.as_deref(), Some(&b"sub-1"[..]));
        assert_eq!(
            header_str(&record.headers, "content-type"),
            Some("application/json")
        );
        assert_eq!(
            header_str(&record.headers, headers::DEAD_LETTER_REASON),
            Some("undecodable")
        );
        assert_eq!(
            header_str(&record.headers, headers::DEAD_LETTER_PARTITION),
            Some("4")
        );
        assert_eq!(
            header_str(&record.headers, headers::DEAD_LETTER_OFFSET),
            Some("77")
        );
    }
}
