//! Avro forms of the contracts, for partner systems that produce to Kafka directly.
//!
//! Every schema under `schemas/avro/` is listed in [`SCHEMAS`] with its name, version and the
//! Confluent schema id pinned for it. A record on the raw topic may arrive in three encodings,
//! all decoded by [`decode_raw_submission`] into the same [`RawSubmission`]:
//!
//! - JSON, marked by a `content-type: application/json` header (what the gateway writes);
//! - Avro single-object encoding: `C3 01`, the 8-byte CRC-64-AVRO (Rabin) fingerprint of the
//!   writer schema, then the datum; the fingerprint must name a schema in [`SCHEMAS`];
//! - the Confluent framing: a zero byte, the 4-byte big-endian schema id, then the datum; the
//!   id must be one pinned in [`SCHEMAS`].
//!
//! Avro data is read with the writer's schema and resolved to the newest version of the
//! contract, so a partner still writing an older version keeps working.

use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::{Deserialize, Serialize};

use crate::codec::JSON_CONTENT_TYPE;
use crate::submission::{Attachment, RawSubmission, SubmissionSource};

/// One Avro schema of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct SchemaEntry {
    /// Contract name, as in the `fieldforce-schema` header.
    pub contract: &'static str,
    /// Contract version.
    pub version: u32,
    /// Schema id pinned for the Confluent framing.
    pub confluent_id: u32,
    /// The schema text (`.avsc`).
    pub text: &'static str,
}

/// Every Avro schema, oldest version first within a contract.
pub const SCHEMAS: &[SchemaEntry] = &[SchemaEntry {
    contract: "raw-submission",
    version: 1,
    confluent_id: 1001,
    text: include_str!("../avro/raw-submission.v1.avsc"),
}];

/// First two bytes of the Avro single-object encoding.
const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// First byte of the Confluent framing.
const CONFLUENT_MAGIC: u8 = 0;

/// A record on the raw topic that cannot be decoded. It is dead-lettered, never retried.
#[derive(Debug, thiserror::Error)]
pub enum PartnerDecodeError {
    /// Neither a JSON content type nor a known Avro framing.
    #[error("unknown encoding: no JSON content-type header and no Avro framing")]
    UnknownEncoding,
    /// Avro single-object encoding whose fingerprint names no schema in the catalog.
    #[error("unknown Avro schema fingerprint {0}")]
    UnknownFingerprint(String),
    /// Confluent framing whose schema id is not pinned in the catalog.
    #[error("unknown Confluent schema id {0}")]
    UnknownSchemaId(u32),
    /// The datum does not match its writer schema.
    #[error("invalid Avro datum: {0}")]
    InvalidAvro(String),
    /// The JSON is not a raw submission.
    #[error(transparent)]
    InvalidJson(#[from] crate::codec::DecodeError),
    /// `fields_json` is not a JSON object.
    #[error("fields_json is not a JSON object: {0}")]
    InvalidFields(String),
}

struct ParsedSchema {
    entry: SchemaEntry,
    schema: Schema,
    fingerprint: Vec<u8>,
}

fn parsed_schemas() -> &'static [ParsedSchema] {
    static PARSED: OnceLock<Vec<ParsedSchema>> = OnceLock::new();
    PARSED.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|entry| {
                // The schemas ship inside the build and a unit test parses each one.
                let schema = Schema::parse_str(entry.text).expect("schemas/avro/*.avsc are valid");
                let fingerprint = schema.fingerprint::<Rabin>().bytes;
                ParsedSchema {
                    entry: *entry,
                    schema,
                    fingerprint,
                }
            })
            .collect()
    })
}

fn newest(contract: &str) -> &'static ParsedSchema {
    parsed_schemas()
        .iter()
        .rev()
        .find(|parsed| parsed.entry.contract == contract)
        .expect("every contract with Avro support has a schema in SCHEMAS")
}

/// The Avro field layout of a raw submission; `fields` travels as JSON text because Avro has
/// no type for an arbitrary tree.
#[derive(Debug, Serialize, Deserialize)]
struct AvroRawSubmission {
    schema_version: i32,
    submission_id: String,
    revision: i32,
    org_id: String,
    project_id: String,
    form_id: String,
    form_version: Option<String>,
    instance_id: Option<String>,
    deprecated_id: Option<String>,
    source: SubmissionSource,
    received_at_ms: i64,
    content_sha256: String,
    submitter: Option<String>,
    device_id: Option<String>,
    fields_json: String,
    attachments: Vec<AvroAttachment>,
    missing_attachments: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AvroAttachment {
    name: String,
    size_bytes: i64,
    sha256: String,
    content_type: String,
    blob_uri: String,
}

impl From<&RawSubmission> for AvroRawSubmission {
    fn from(raw: &RawSubmission) -> Self {
        Self {
            schema_version: raw.schema_version as i32,
            submission_id: raw.submission_id.clone(),
            revision: raw.revision as i32,
            org_id: raw.org_id.clone(),
            project_id: raw.project_id.clone(),
            form_id: raw.form_id.clone(),
            form_version: raw.form_version.clone(),
            instance_id: raw.instance_id.clone(),
            deprecated_id: raw.deprecated_id.clone(),
            source: raw.source,
            received_at_ms: raw.received_at_ms,
            content_sha256: raw.content_sha256.clone(),
            submitter: raw.submitter.clone(),
            device_id: raw.device_id.clone(),
            fields_json: serde_json::Value::Object(raw.fields.clone()).to_string(),
            attachments: raw
                .attachments
                .iter()
                .map(|attachment| AvroAttachment {
                    name: attachment.name.clone(),
                    size_bytes: attachment.size_bytes as i64,
                    sha256: attachment.sha256.clone(),
                    content_type: attachment.content_type.clone(),
                    blob_uri: attachment.blob_uri.clone(),
                })
                .collect(),
            missing_attachments: raw.missing_attachments.clone(),
        }
    }
}

impl TryFrom<AvroRawSubmission> for RawSubmission {
    type Error = PartnerDecodeError;

    fn try_from(avro: AvroRawSubmission) -> Result<Self, Self::Error> {
        let fields = match serde_json::from_str(&avro.fields_json) {
            Ok(serde_json::Value::Object(fields)) => fields,
            Ok(other) => return Err(PartnerDecodeError::InvalidFields(other.to_string())),
            Err(error) => return Err(PartnerDecodeError::InvalidFields(error.to_string())),
        };
        Ok(Self {
            schema_version: avro.schema_version.max(0) as u32,
            submission_id: avro.submission_id,
            revision: avro.revision.max(0) as u32,
            org_id: avro.org_id,
            project_id: avro.project_id,
            form_id: avro.form_id,
            form_version: avro.form_version,
            instance_id: avro.instance_id,
            deprecated_id: avro.deprecated_id,
            source: avro.source,
            received_at_ms: avro.received_at_ms,
            content_sha256: avro.content_sha256,
            submitter: avro.submitter,
            device_id: avro.device_id,
            fields,
            attachments: avro
                .attachments
                .into_iter()
                .map(|attachment| Attachment {
                    name: attachment.name,
                    size_bytes: attachment.size_bytes.max(0) as u64,
                    sha256: attachment.sha256,
                    content_type: attachment.content_type,
                    blob_uri: attachment.blob_uri,
                })
                .collect(),
            missing_attachments: avro.missing_attachments,
            encrypted: None,
        })
    }
}

fn encode_datum(raw: &RawSubmission) -> Vec<u8> {
    let parsed = newest("raw-submission");
    let writer = GenericDatumWriter::builder(&parsed.schema)
        .build()
        .expect("the raw submission schema resolves");
    writer
        .write_ser_to_vec(&AvroRawSubmission::from(raw))
        .expect("every RawSubmission fits the raw submission schema")
}

/// Encodes a raw submission in the Avro single-object encoding with the newest schema.
pub fn encode_single_object(raw: &RawSubmission) -> Vec<u8> {
    let mut bytes = SINGLE_OBJECT_MARKER.to_vec();
    bytes.extend_from_slice(&newest("raw-submission").fingerprint);
    bytes.extend(encode_datum(raw));
    bytes
}

/// Encodes a raw submission in the Confluent framing with the newest schema's pinned id.
pub fn encode_confluent(raw: &RawSubmission) -> Vec<u8> {
    let mut bytes = vec![CONFLUENT_MAGIC];
    bytes.extend_from_slice(&newest("raw-submission").entry.confluent_id.to_be_bytes());
    bytes.extend(encode_datum(raw));
    bytes
}

/// Decodes a record of the raw topic in any of the accepted encodings.
pub fn decode_raw_submission(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<RawSubmission, PartnerDecodeError> {
    let is_json = content_type
        .map(|value| value.trim().starts_with(JSON_CONTENT_TYPE))
        .unwrap_or(false);
    if is_json {
        return Ok(crate::codec::decode(bytes)?);
    }

    let (writer, datum) = if let Some(rest) = bytes.strip_prefix(&SINGLE_OBJECT_MARKER) {
        if rest.len() < 8 {
            return Err(PartnerDecodeError::InvalidAvro(
                "truncated fingerprint".into(),
            ));
        }
        let (fingerprint, datum) = rest.split_at(8);
        let writer = parsed_schemas()
            .iter()
            .find(|parsed| parsed.fingerprint == fingerprint)
            .ok_or_else(|| PartnerDecodeError::UnknownFingerprint(hex(fingerprint)))?;
        (writer, datum)
    } else if bytes.first() == Some(&CONFLUENT_MAGIC) && bytes.len() >= 5 {
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        // NOTE: only ids pinned in SCHEMAS resolve; ids from a schema registry do not.
        let writer = parsed_schemas()
            .iter()
            .find(|parsed| parsed.entry.confluent_id == id)
            .ok_or(PartnerDecodeError::UnknownSchemaId(id))?;
        (writer, &bytes[5..])
    } else {
        return Err(PartnerDecodeError::UnknownEncoding);
    };

    let reader_schema = &newest(writer.entry.contract).schema;
    let reader = GenericDatumReader::builder(&writer.schema)
        .reader_schema(reader_schema)
        .build()
        .map_err(|error| PartnerDecodeError::InvalidAvro(error.to_string()))?;
    let mut input = datum;
    let value = reader
        .read_value(&mut input)
        .map_err(|error| PartnerDecodeError::InvalidAvro(error.to_string()))?;
    if !input.is_empty() {
        return Err(PartnerDecodeError::InvalidAvro(format!(
            "{} bytes left after the datum",
            input.len()
        )));
    }
    let avro: AvroRawSubmission = apache_avro::from_value(&value)
        .map_err(|error| PartnerDecodeError::InvalidAvro(error.to_string()))?;
    avro.try_into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RawSubmission {
        let fields = serde_json::json!({
            "household": { "size": "4", "Q1%2E1": "yes" },
            "member": [{ "name": "Amina" }, { "name": "Juma" }],
        });
        RawSubmission {
            schema_version: 1,
            submission_id: "uuid:partner-1".into(),
            revision: 0,
            org_id: "health-ministry".into(),
            project_id: "census".into(),
            form_id: "household".into(),
            form_version: Some("3".into()),
            instance_id: Some("uuid:partner-1".into()),
            deprecated_id: None,
            source: SubmissionSource::Partner,
            received_at_ms: 1_764_000_000_000,
            content_sha256: "ab".repeat(32),
            submitter: None,
            device_id: Some("dhis2".into()),
            fields: fields.as_object().unwrap().clone(),
            attachments: vec![Attachment {
                name: "photo.jpg".into(),
                size_bytes: 0,
                sha256: "cd".repeat(32),
                content_type: "image/jpeg".into(),
                blob_uri: "s3://bucket/photo.jpg".into(),
            }],
            missing_attachments: vec!["sketch.png".into()],
            encrypted: None,
        }
    }

    #[test]
    fn every_schema_parses() {
        for entry in SCHEMAS {
            Schema::parse_str(entry.text).unwrap();
        }
    }

    #[test]
    fn single_object_round_trip() {
        let raw = sample();
        let bytes = encode_single_object(&raw);
        assert_eq!(&bytes[..2], &SINGLE_OBJECT_MARKER);
        assert_eq!(decode_raw_submission(None, &bytes).unwrap(), raw);
    }

    #[test]
    fn single_object_matches_apache_avro_writer() {
        let parsed = newest("raw-submission");
        let value = apache_avro::to_value(AvroRawSubmission::from(&sample()))
            .unwrap()
            .resolve(&parsed.schema)
            .unwrap();
        let mut writer =
            apache_avro::GenericSingleObjectWriter::new_with_capacity(&parsed.schema, 1024)
                .unwrap();
        let mut bytes = Vec::new();
        writer.write_value(value, &mut bytes).unwrap();
        assert_eq!(decode_raw_submission(None, &bytes).unwrap(), sample());
    }

    #[test]
    fn confluent_round_trip() {
        let raw = sample();
        let bytes = encode_confluent(&raw);
        assert_eq!(&bytes[..5], &[0, 0, 0, 0x03, 0xE9]);
        assert_eq!(decode_raw_submission(None, &bytes).unwrap(), raw);
    }

    #[test]
    fn json_needs_its_content_type() {
        let bytes = crate::codec::encode(&sample());
        assert_eq!(
            decode_raw_submission(Some("application/json"), &bytes).unwrap(),
            sample()
        );
        assert!(matches!(
            decode_raw_submission(None, &bytes),
            Err(PartnerDecodeError::UnknownEncoding)
        ));
    }

    #[test]
    fn unknown_schemas_are_named() {
        let mut unknown_id = encode_confluent(&sample());
        unknown_id[4] = 0x07;
        assert!(matches!(
            decode_raw_submission(None, &unknown_id),
            Err(PartnerDecodeError::UnknownSchemaId(775))
        ));

        let mut unknown_fingerprint = encode_single_object(&sample());
        unknown_fingerprint[2] ^= 0xFF;
        assert!(matches!(
            decode_raw_submission(None, &unknown_fingerprint),
            Err(PartnerDecodeError::UnknownFingerprint(_))
        ));
    }

    #[test]
    fn truncated_datum_is_invalid() {
        let bytes = encode_confluent(&sample());
        assert!(matches!(
            decode_raw_submission(None, &bytes[..bytes.len() / 2]),
            Err(PartnerDecodeError::InvalidAvro(_))
        ));
    }
}
