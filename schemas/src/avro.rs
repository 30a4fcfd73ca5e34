//! Avro forms of the contracts, for partner systems that produce to Kafka directly and for
//! tools that export records.
//!
//! Every schema under `schemas/avro/` is listed in [`SCHEMAS`] with its contract, version and
//! the Confluent schema id pinned for it. Each contract's Rust type implements
//! [`AvroContract`], so [`encode_single_object`] and [`encode_confluent`] write it with the
//! newest version and [`decode`] reads it back. Avro data arrives in one of two framings:
//!
//! - Avro single-object encoding: `C3 01`, the 8-byte CRC-64-AVRO (Rabin) fingerprint of the
//!   writer schema, then the datum; the fingerprint must name a schema in [`SCHEMAS`];
//! - the Confluent framing: a zero byte, the 4-byte big-endian schema id, then the datum; the
//!   id must be one pinned in [`SCHEMAS`].
//!
//! On the raw topic, [`decode_raw_submission`] also accepts JSON marked by a
//! `content-type: application/json` header (what the gateway writes).
//!
//! Avro data is read with the writer's schema and resolved to the newest version of the
//! contract, so a partner still writing an older version keeps working. To evolve a contract,
//! add a new `<contract>.v<N>.avsc` file that only adds fields with defaults (or removes
//! fields that had one), and list it after the older versions with a new pinned id. A pinned
//! id or a published schema file is never changed or reused, because records written with it
//! stay in the topics.
//!
//! A schema may refer to a named type of another contract, as the processed submission refers
//! to `RawSubmission`. Its entry then lists the text that defines the type. The catalog expands
//! the reference before it computes the fingerprint, so fingerprints and compatibility checks
//! cover the whole record.

mod dead_letter;
mod event;
mod settings;
mod submission;

use std::fmt::Display;
use std::sync::OnceLock;

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use serde::de::DeserializeOwned;

use crate::codec::JSON_CONTENT_TYPE;
use crate::dead_letter::DeadLetterEnvelope;
use crate::form::FormDefinition;
use crate::project::ProjectSettings;
use crate::submission::{ProcessedSubmission, RawSubmission};
use crate::webhook::SubmissionStored;

use dead_letter::AvroDeadLetterEnvelope;
use event::AvroSubmissionStored;
use settings::{AvroFormDefinition, AvroProjectSettings};
use submission::{AvroProcessedSubmission, AvroRawSubmission};

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
    /// Texts of the schemas that define the named types `text` refers to by name.
    pub references: &'static [&'static str],
}

const RAW_SUBMISSION_V1: &str = include_str!("../avro/raw-submission.v1.avsc");

/// Every Avro schema, oldest version first within a contract.
pub const SCHEMAS: &[SchemaEntry] = &[
    SchemaEntry {
        contract: "raw-submission",
        version: 1,
        confluent_id: 1001,
        text: RAW_SUBMISSION_V1,
        references: &[],
    },
    SchemaEntry {
        contract: "processed-submission",
        version: 1,
        confluent_id: 1002,
        text: include_str!("../avro/processed-submission.v1.avsc"),
        references: &[RAW_SUBMISSION_V1],
    },
    SchemaEntry {
        contract: "form-definition",
        version: 1,
        confluent_id: 1003,
        text: include_str!("../avro/form-definition.v1.avsc"),
        references: &[],
    },
    SchemaEntry {
        contract: "project-settings",
        version: 1,
        confluent_id: 1004,
        text: include_str!("../avro/project-settings.v1.avsc"),
        references: &[],
    },
    SchemaEntry {
        contract: "dead-letter",
        version: 1,
        confluent_id: 1005,
        text: include_str!("../avro/dead-letter.v1.avsc"),
        references: &[],
    },
    SchemaEntry {
        contract: "submission-stored",
        version: 1,
        confluent_id: 1006,
        text: include_str!("../avro/submission-stored.v1.avsc"),
        references: &[],
    },
];

/// First two bytes of the Avro single-object encoding.
const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// First byte of the Confluent framing.
const CONFLUENT_MAGIC: u8 = 0;

/// A record that cannot be decoded. It is dead-lettered, never retried.
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
    /// The writer schema belongs to another contract than the one expected.
    #[error("expected a {expected} record, found one written with a {found} schema")]
    WrongContract {
        /// Contract the caller decodes.
        expected: &'static str,
        /// Contract of the writer schema.
        found: &'static str,
    },
    /// The datum does not match its writer schema.
    #[error("invalid Avro datum: {0}")]
    InvalidAvro(String),
    /// The JSON is not a raw submission.
    #[error(transparent)]
    InvalidJson(#[from] crate::codec::DecodeError),
    /// `fields_json` is not a JSON object.
    #[error("fields_json is not a JSON object: {0}")]
    InvalidFields(String),
    /// A field that carries JSON text (GeoJSON) is not valid JSON.
    #[error("{field} is not valid JSON: {error}")]
    InvalidJsonText {
        /// Path of the field in the Avro record.
        field: &'static str,
        /// The serde_json error message.
        error: String,
    },
    /// A number does not fit the range of its Rust field.
    #[error("{field} {value} is out of range")]
    OutOfRange {
        /// Path of the field in the Avro record.
        field: &'static str,
        /// The value found.
        value: String,
    },
}

/// A contract with an Avro form: a Rust type, its entry in [`SCHEMAS`] and the conversions
/// between the two. Implemented for every contract type of this crate.
pub trait AvroContract: Sized + sealed::Sealed {
    /// Contract name in [`SCHEMAS`].
    const CONTRACT: &'static str;

    /// Writes the record as a datum of `writer`'s schema, the newest version of the contract.
    fn write_datum(&self, writer: &GenericDatumWriter<'_>) -> apache_avro::AvroResult<Vec<u8>>;

    /// Builds the record from a value already resolved to the newest version of the contract.
    fn from_value(value: &Value) -> Result<Self, PartnerDecodeError>;
}

mod sealed {
    /// Keeps [`super::AvroContract`] to the types whose layout matches a schema in the catalog.
    pub trait Sealed {}
}

/// Implements [`AvroContract`] through a serde layout that mirrors the `.avsc` field for field.
macro_rules! avro_contract {
    ($rust:ty, $layout:ty, $contract:literal) => {
        impl sealed::Sealed for $rust {}

        impl AvroContract for $rust {
            const CONTRACT: &'static str = $contract;

            fn write_datum(
                &self,
                writer: &GenericDatumWriter<'_>,
            ) -> apache_avro::AvroResult<Vec<u8>> {
                writer.write_ser_to_vec(&<$layout>::from(self))
            }

            fn from_value(value: &Value) -> Result<Self, PartnerDecodeError> {
                from_layout::<$layout, Self>(value)
            }
        }
    };
}

avro_contract!(RawSubmission, AvroRawSubmission, "raw-submission");
avro_contract!(
    ProcessedSubmission,
    AvroProcessedSubmission,
    "processed-submission"
);
avro_contract!(FormDefinition, AvroFormDefinition, "form-definition");
avro_contract!(ProjectSettings, AvroProjectSettings, "project-settings");
avro_contract!(DeadLetterEnvelope, AvroDeadLetterEnvelope, "dead-letter");
avro_contract!(SubmissionStored, AvroSubmissionStored, "submission-stored");

fn from_layout<L, T>(value: &Value) -> Result<T, PartnerDecodeError>
where
    L: DeserializeOwned + TryInto<T, Error = PartnerDecodeError>,
{
    let layout: L = apache_avro::from_value(value)
        .map_err(|error| PartnerDecodeError::InvalidAvro(error.to_string()))?;
    layout.try_into()
}

/// A schema of the catalog, parsed with its references expanded.
struct ParsedSchema {
    entry: SchemaEntry,
    schema: Schema,
    fingerprint: Vec<u8>,
}

impl ParsedSchema {
    fn parse(entry: &SchemaEntry) -> apache_avro::AvroResult<Self> {
        let schema = if entry.references.is_empty() {
            Schema::parse_str(entry.text)?
        } else {
            let (mut schema, referenced) =
                Schema::parse_str_with_list(entry.text, entry.references)?;
            schema.denormalize(&referenced)?;
            schema
        };
        let fingerprint = schema.fingerprint::<Rabin>().bytes;
        Ok(Self {
            entry: *entry,
            schema,
            fingerprint,
        })
    }
}

/// The parsed schemas of a list of entries, and the lookups the framings need.
struct Catalog {
    schemas: Vec<ParsedSchema>,
}

impl Catalog {
    fn parse(entries: &[SchemaEntry]) -> apache_avro::AvroResult<Self> {
        let schemas = entries
            .iter()
            .map(ParsedSchema::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { schemas })
    }

    fn newest(&self, contract: &str) -> Option<&ParsedSchema> {
        self.schemas
            .iter()
            .rev()
            .find(|parsed| parsed.entry.contract == contract)
    }

    fn newest_of<T: AvroContract>(&self) -> &ParsedSchema {
        self.newest(T::CONTRACT)
            .expect("every AvroContract type has a schema in SCHEMAS")
    }

    fn encode_datum<T: AvroContract>(&self, record: &T) -> Vec<u8> {
        let parsed = self.newest_of::<T>();
        let writer = GenericDatumWriter::builder(&parsed.schema)
            .build()
            .expect("catalog schemas are self-contained after parsing");
        record
            .write_datum(&writer)
            .expect("every AvroContract layout fits the newest schema of its contract")
    }

    /// Finds the writer schema named by the framing and returns it with the datum.
    fn writer_of<'b>(
        &self,
        bytes: &'b [u8],
    ) -> Result<(&ParsedSchema, &'b [u8]), PartnerDecodeError> {
        if let Some(rest) = bytes.strip_prefix(&SINGLE_OBJECT_MARKER) {
            let Some((fingerprint, datum)) = rest.split_at_checked(8) else {
                return Err(PartnerDecodeError::InvalidAvro(
                    "truncated fingerprint".into(),
                ));
            };
            let writer = self
                .schemas
                .iter()
                .find(|parsed| parsed.fingerprint == fingerprint)
                .ok_or_else(|| PartnerDecodeError::UnknownFingerprint(hex(fingerprint)))?;
            return Ok((writer, datum));
        }

        if let [CONFLUENT_MAGIC, a, b, c, d, datum @ ..] = bytes {
            let id = u32::from_be_bytes([*a, *b, *c, *d]);
            // NOTE: only ids pinned in SCHEMAS resolve; ids from a schema registry do not.
            let writer = self
                .schemas
                .iter()
                .find(|parsed| parsed.entry.confluent_id == id)
                .ok_or(PartnerDecodeError::UnknownSchemaId(id))?;
            return Ok((writer, datum));
        }

        Err(PartnerDecodeError::UnknownEncoding)
    }

    /// Reads a framed record of `contract`, resolved to the contract's newest version.
    fn read(&self, contract: &'static str, bytes: &[u8]) -> Result<Value, PartnerDecodeError> {
        let (writer, datum) = self.writer_of(bytes)?;
        if writer.entry.contract != contract {
            return Err(PartnerDecodeError::WrongContract {
                expected: contract,
                found: writer.entry.contract,
            });
        }
        let reader = self
            .newest(contract)
            .expect("the writer's own contract has a newest version");
        read_datum(&writer.schema, &reader.schema, datum)
    }
}

fn builtin() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    // The schemas ship inside the build and a unit test parses each one.
    CATALOG.get_or_init(|| Catalog::parse(SCHEMAS).expect("schemas/avro/*.avsc are valid"))
}

/// Reads one datum written with `writer`, resolved to `reader`; trailing bytes are an error.
fn read_datum(writer: &Schema, reader: &Schema, datum: &[u8]) -> Result<Value, PartnerDecodeError> {
    let datum_reader = GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()
        .map_err(|error| PartnerDecodeError::InvalidAvro(error.to_string()))?;
    let mut input = datum;
    let value = datum_reader
        .read_value(&mut input)
        .map_err(|error| PartnerDecodeError::InvalidAvro(error.to_string()))?;
    if !input.is_empty() {
        return Err(PartnerDecodeError::InvalidAvro(format!(
            "{} bytes left after the datum",
            input.len()
        )));
    }
    Ok(value)
}

/// Encodes a record in the Avro single-object encoding with its contract's newest schema.
pub fn encode_single_object<T: AvroContract>(record: &T) -> Vec<u8> {
    let catalog = builtin();
    let mut bytes = SINGLE_OBJECT_MARKER.to_vec();
    bytes.extend_from_slice(&catalog.newest_of::<T>().fingerprint);
    bytes.extend(catalog.encode_datum(record));
    bytes
}

/// Encodes a record in the Confluent framing with its contract's newest schema's pinned id.
pub fn encode_confluent<T: AvroContract>(record: &T) -> Vec<u8> {
    let catalog = builtin();
    let mut bytes = vec![CONFLUENT_MAGIC];
    bytes.extend_from_slice(&catalog.newest_of::<T>().entry.confluent_id.to_be_bytes());
    bytes.extend(catalog.encode_datum(record));
    bytes
}

/// Decodes a record of `T`'s contract in either Avro framing, written with any version in
/// [`SCHEMAS`].
pub fn decode<T: AvroContract>(bytes: &[u8]) -> Result<T, PartnerDecodeError> {
    let value = builtin().read(T::CONTRACT, bytes)?;
    T::from_value(&value)
}

/// Decodes a record of the raw topic in any of the accepted encodings.
pub fn decode_raw_submission(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<RawSubmission, PartnerDecodeError> {
    if is_json(content_type) {
        return Ok(crate::codec::decode(bytes)?);
    }
    decode(bytes)
}

/// Returns whether a record's content-type header names JSON; a record without one is read
/// as Avro.
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|value| value.trim().starts_with(JSON_CONTENT_TYPE))
}

/// Returns a GeoJSON object as the JSON text the Avro forms carry.
fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

fn parse_json_text(
    field: &'static str,
    text: &str,
) -> Result<serde_json::Value, PartnerDecodeError> {
    serde_json::from_str(text).map_err(|error| PartnerDecodeError::InvalidJsonText {
        field,
        error: error.to_string(),
    })
}

/// Converts an Avro number into the narrower or unsigned type of its Rust field.
fn narrow<T, S>(field: &'static str, value: S) -> Result<T, PartnerDecodeError>
where
    T: TryFrom<S>,
    S: Copy + Display,
{
    T::try_from(value).map_err(|_| PartnerDecodeError::OutOfRange {
        field,
        value: value.to_string(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use apache_avro::schema_compatibility::SchemaCompatibility;

    use super::*;
    use crate::form::FormField;
    use crate::project::{Geofence, QualityThresholds};
    use crate::submission::{
        Attachment, GeofenceResult, GeometryField, Location, ProcessingStatus, Quality,
        QualityFlag, SubmissionSource, Validation, ValidationIssue,
    };

    const V2_ADDED_OPTIONAL: &str =
        include_str!("../tests/fixtures/raw-submission.v2-added-optional.avsc");
    const V2_REMOVED_DEFAULTED: &str =
        include_str!("../tests/fixtures/raw-submission.v2-removed-defaulted.avsc");
    const V2_ADDED_REQUIRED: &str =
        include_str!("../tests/fixtures/raw-submission.v2-added-required.avsc");

    /// Pinned id of the test-only version 2 schemas.
    const V2_ID: u32 = 9001;

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

    fn processed_sample() -> ProcessedSubmission {
        ProcessedSubmission {
            schema_version: 1,
            submission: sample(),
            validation: Some(Validation {
                valid: false,
                form_known: true,
                form_version: Some("3".into()),
                issues: vec![ValidationIssue {
                    path: "/data/household/size".into(),
                    code: "invalid_int".into(),
                    message: "size is not an integer: \"four\"".into(),
                }],
            }),
            location: Some(Location {
                point: Some(serde_json::json!({"type": "Point", "coordinates": [36.95, -0.4167]})),
                accuracy_m: Some(7.0),
                source_field: Some("/data/location".into()),
                geometries: vec![GeometryField {
                    path: "/data/plot".into(),
                    geometry: serde_json::json!({
                        "type": "LineString",
                        "coordinates": [[36.95, -0.41], [36.96, -0.42]],
                    }),
                }],
                geofence: Some(GeofenceResult {
                    inside: false,
                    geofence_id: "ward-7".into(),
                    distance_m: 412.5,
                }),
                problems: vec!["gps_null_island".into()],
            }),
            quality: Some(Quality {
                score: 80,
                flags: vec![QualityFlag {
                    check: "too_fast".into(),
                    penalty: 20,
                    reason: "interview took 45 s, minimum is 120 s".into(),
                }],
            }),
            processing_status: Some(ProcessingStatus::NeedsReview),
        }
    }

    fn form_sample() -> FormDefinition {
        FormDefinition {
            schema_version: 1,
            org_id: "health-ministry".into(),
            project_id: "census".into(),
            form_id: "household".into(),
            version: "3".into(),
            title: Some("Household census".into()),
            fields: vec![
                FormField {
                    path: "household/size".into(),
                    data_type: "int".into(),
                    required: true,
                    choices: Vec::new(),
                    repeat: false,
                },
                FormField {
                    path: "member".into(),
                    data_type: "string".into(),
                    required: false,
                    choices: Vec::new(),
                    repeat: true,
                },
                FormField {
                    path: "member/sex".into(),
                    data_type: "select1".into(),
                    required: false,
                    choices: vec!["female".into(), "male".into()],
                    repeat: false,
                },
            ],
            registered_at_ms: 1_763_000_000_000,
            xform_sha256: "ef".repeat(32),
        }
    }

    fn project_sample() -> ProjectSettings {
        ProjectSettings {
            schema_version: 1,
            org_id: "health-ministry".into(),
            project_id: "census".into(),
            geofences: vec![Geofence {
                id: "ward-7".into(),
                name: "Ward 7".into(),
                geometry: serde_json::json!({
                    "type": "Polygon",
                    "coordinates": [[[36.9, -0.5], [37.0, -0.5], [37.0, -0.4], [36.9, -0.5]]],
                }),
            }],
            quality: QualityThresholds {
                min_duration_s: 300,
                utc_offset_minutes: 180,
                ..QualityThresholds::default()
            },
        }
    }

    fn dead_letter_sample() -> DeadLetterEnvelope {
        DeadLetterEnvelope {
            key: Some(b"uuid:partner-1".to_vec()),
            value: Some(vec![0x00, 0xFF, 0x10, 0x80]),
            headers: BTreeMap::from([
                ("content-type".to_owned(), b"application/json".to_vec()),
                ("traceparent".to_owned(), Vec::new()),
            ]),
            stage: "validation".into(),
            reason: "undecodable".into(),
            detail: "unknown Confluent schema id 775".into(),
            source_topic: "fieldforce.submissions.raw".into(),
            partition: 3,
            offset: 1_234_567,
        }
    }

    fn stored_sample() -> SubmissionStored {
        SubmissionStored {
            schema_version: 1,
            org_id: "health-ministry".into(),
            project_id: "census".into(),
            form_id: "household".into(),
            submission_id: "uuid:partner-1".into(),
            instance_id: Some("uuid:partner-1".into()),
            revision: 2,
            processing_status: Some(ProcessingStatus::NeedsReview),
            quality_score: Some(80),
            quality_flags: vec!["too_fast".into()],
            stored_at_ms: 1_764_000_000_500,
        }
    }

    fn assert_round_trips<T: AvroContract + PartialEq + Debug>(record: &T) {
        let single_object = encode_single_object(record);
        assert_eq!(
            &single_object[..2],
            &SINGLE_OBJECT_MARKER,
            "{}",
            T::CONTRACT
        );
        assert_eq!(
            &decode::<T>(&single_object).unwrap(),
            record,
            "{}",
            T::CONTRACT
        );

        let confluent = encode_confluent(record);
        assert_eq!(confluent[0], CONFLUENT_MAGIC, "{}", T::CONTRACT);
        assert_eq!(&decode::<T>(&confluent).unwrap(), record, "{}", T::CONTRACT);
    }

    /// The catalog plus one test-only raw submission version 2.
    fn catalog_with_v2(text: &'static str) -> Catalog {
        let mut entries = SCHEMAS.to_vec();
        entries.push(SchemaEntry {
            contract: "raw-submission",
            version: 2,
            confluent_id: V2_ID,
            text,
            references: &[],
        });
        Catalog::parse(&entries).unwrap()
    }

    /// Lists the consecutive versions of a contract where the newer one cannot read data
    /// written with the older one, as `contract vN -> vM: reason`.
    fn evolution_problems(catalog: &Catalog) -> Vec<String> {
        let mut problems = Vec::new();
        for (index, newer) in catalog.schemas.iter().enumerate() {
            let older = catalog.schemas[..index]
                .iter()
                .rev()
                .find(|parsed| parsed.entry.contract == newer.entry.contract);
            let Some(older) = older else { continue };
            if let Err(error) = SchemaCompatibility::can_read(&older.schema, &newer.schema) {
                problems.push(format!(
                    "{} v{} -> v{}: {error}",
                    newer.entry.contract, older.entry.version, newer.entry.version
                ));
            }
        }
        problems
    }

    /// Writes the sample raw submission with a test-only schema, after `edit` adapted its
    /// fields to that schema.
    fn write_with(schema: &Schema, edit: impl FnOnce(&mut Vec<(String, Value)>)) -> Vec<u8> {
        let Value::Record(mut fields) =
            apache_avro::to_value(AvroRawSubmission::from(&sample())).unwrap()
        else {
            panic!("a raw submission serialises to an Avro record");
        };
        edit(&mut fields);
        let value = Value::Record(fields).resolve(schema).unwrap();
        GenericDatumWriter::builder(schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    fn confluent_frame(id: u32, datum: &[u8]) -> Vec<u8> {
        let mut bytes = vec![CONFLUENT_MAGIC];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(datum);
        bytes
    }

    fn field<'v>(value: &'v Value, name: &str) -> Option<&'v Value> {
        let Value::Record(fields) = value else {
            panic!("expected a record, found {value:?}");
        };
        fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value)
    }

    fn parse_fixture(text: &str) -> Schema {
        Schema::parse_str(text).unwrap()
    }

    #[test]
    fn every_schema_parses() {
        for entry in SCHEMAS {
            ParsedSchema::parse(entry).unwrap();
        }
    }

    #[test]
    fn pinned_ids_and_versions_are_unique() {
        for (index, entry) in SCHEMAS.iter().enumerate() {
            for earlier in &SCHEMAS[..index] {
                assert_ne!(
                    entry.confluent_id, earlier.confluent_id,
                    "{}",
                    entry.contract
                );
                if earlier.contract == entry.contract {
                    assert!(
                        earlier.version < entry.version,
                        "{} v{} is listed after v{}",
                        entry.contract,
                        entry.version,
                        earlier.version
                    );
                }
            }
        }
    }

    #[test]
    fn every_contract_has_a_schema() {
        for contract in [
            RawSubmission::CONTRACT,
            ProcessedSubmission::CONTRACT,
            FormDefinition::CONTRACT,
            ProjectSettings::CONTRACT,
            DeadLetterEnvelope::CONTRACT,
            SubmissionStored::CONTRACT,
        ] {
            assert!(builtin().newest(contract).is_some(), "{contract}");
        }
    }

    #[test]
    fn processed_schema_embeds_raw_submission() {
        let processed = builtin().newest("processed-submission").unwrap();
        let raw = builtin().newest("raw-submission").unwrap();
        let canonical = processed.schema.canonical_form();
        assert!(
            canonical.contains(&raw.schema.canonical_form()),
            "the expanded reference carries the whole raw submission record"
        );
    }

    #[test]
    fn newer_versions_read_previous_ones() {
        assert_eq!(evolution_problems(builtin()), Vec::<String>::new());
        assert_eq!(
            evolution_problems(&catalog_with_v2(V2_ADDED_OPTIONAL)),
            Vec::<String>::new()
        );
        assert_eq!(
            evolution_problems(&catalog_with_v2(V2_REMOVED_DEFAULTED)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn required_field_without_default_is_incompatible() {
        let problems = evolution_problems(&catalog_with_v2(V2_ADDED_REQUIRED));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("raw-submission v1 -> v2"),
            "{problems:?}"
        );

        let catalog = catalog_with_v2(V2_ADDED_REQUIRED);
        let result = catalog.read("raw-submission", &encode_confluent(&sample()));
        assert!(
            matches!(result, Err(PartnerDecodeError::InvalidAvro(_))),
            "{result:?}"
        );
    }

    #[test]
    fn v1_data_resolves_to_v2_reader() {
        let catalog = catalog_with_v2(V2_ADDED_OPTIONAL);
        for bytes in [encode_single_object(&sample()), encode_confluent(&sample())] {
            let value = catalog.read("raw-submission", &bytes).unwrap();
            assert_eq!(
                field(&value, "survey_round"),
                Some(&Value::Union(0, Box::new(Value::Null)))
            );
            assert_eq!(RawSubmission::from_value(&value).unwrap(), sample());
        }
    }

    #[test]
    fn v2_data_reads_with_v1_reader() {
        let v2 = parse_fixture(V2_ADDED_OPTIONAL);
        let datum = write_with(&v2, |fields| {
            fields.push(("survey_round".into(), Value::Int(3)));
        });
        let v1 = &builtin().newest("raw-submission").unwrap().schema;
        let value = read_datum(&v2, v1, &datum).unwrap();
        assert_eq!(field(&value, "survey_round"), None);
        assert_eq!(RawSubmission::from_value(&value).unwrap(), sample());

        let catalog = catalog_with_v2(V2_ADDED_OPTIONAL);
        let value = catalog
            .read("raw-submission", &confluent_frame(V2_ID, &datum))
            .unwrap();
        assert_eq!(
            field(&value, "survey_round"),
            Some(&Value::Union(1, Box::new(Value::Int(3))))
        );
        assert_eq!(RawSubmission::from_value(&value).unwrap(), sample());
    }

    #[test]
    fn removed_defaulted_field_reads_both_ways() {
        let v1 = &builtin().newest("raw-submission").unwrap().schema;
        let v2 = parse_fixture(V2_REMOVED_DEFAULTED);
        let without_device = RawSubmission {
            device_id: None,
            ..sample()
        };

        let v2_datum = write_with(&v2, |fields| fields.retain(|(name, _)| name != "device_id"));
        let value = read_datum(&v2, v1, &v2_datum).unwrap();
        assert_eq!(RawSubmission::from_value(&value).unwrap(), without_device);

        let catalog = catalog_with_v2(V2_REMOVED_DEFAULTED);
        let value = catalog
            .read("raw-submission", &encode_confluent(&sample()))
            .unwrap();
        assert_eq!(field(&value, "device_id"), None);
        assert_eq!(RawSubmission::from_value(&value).unwrap(), without_device);
    }

    #[test]
    fn every_contract_round_trips() {
        assert_round_trips(&sample());
        assert_round_trips(&processed_sample());
        assert_round_trips(&ProcessedSubmission::from_raw(sample()));
        assert_round_trips(&form_sample());
        assert_round_trips(&project_sample());
        assert_round_trips(&dead_letter_sample());
        assert_round_trips(&stored_sample());
        assert_round_trips(&SubmissionStored {
            instance_id: None,
            processing_status: None,
            quality_score: None,
            quality_flags: Vec::new(),
            ..stored_sample()
        });
        assert_round_trips(&DeadLetterEnvelope {
            key: None,
            value: None,
            headers: BTreeMap::new(),
            ..dead_letter_sample()
        });
    }

    #[test]
    fn thresholds_default_when_writer_lacks_them() {
        let mut writer_json: serde_json::Value =
            serde_json::from_str(include_str!("../avro/project-settings.v1.avsc")).unwrap();
        writer_json["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|field| field["name"] != "quality");
        let writer = Schema::parse(&writer_json).unwrap();
        let datum = GenericDatumWriter::builder(&writer)
            .build()
            .unwrap()
            .write_value_to_vec(Value::Record(vec![
                ("schema_version".into(), Value::Int(1)),
                ("org_id".into(), Value::String("health-ministry".into())),
                ("project_id".into(), Value::String("census".into())),
                ("geofences".into(), Value::Array(Vec::new())),
            ]))
            .unwrap();

        let reader = &builtin().newest("project-settings").unwrap().schema;
        let value = read_datum(&writer, reader, &datum).unwrap();
        let settings = ProjectSettings::from_value(&value).unwrap();
        assert_eq!(settings.quality, QualityThresholds::default());
    }

    #[test]
    fn stored_event_fills_missing_defaults() {
        let mut writer_json: serde_json::Value =
            serde_json::from_str(include_str!("../avro/submission-stored.v1.avsc")).unwrap();
        let optional = [
            "instance_id",
            "revision",
            "processing_status",
            "quality_score",
            "quality_flags",
        ];
        writer_json["fields"]
            .as_array_mut()
            .unwrap()
            .retain(|field| !optional.contains(&field["name"].as_str().unwrap()));
        let writer = Schema::parse(&writer_json).unwrap();
        let datum = GenericDatumWriter::builder(&writer)
            .build()
            .unwrap()
            .write_value_to_vec(Value::Record(vec![
                ("schema_version".into(), Value::Int(1)),
                ("org_id".into(), Value::String("health-ministry".into())),
                ("project_id".into(), Value::String("census".into())),
                ("form_id".into(), Value::String("household".into())),
                (
                    "submission_id".into(),
                    Value::String("uuid:partner-1".into()),
                ),
                ("stored_at_ms".into(), Value::Long(1_764_000_000_500)),
            ]))
            .unwrap();

        let reader = &builtin().newest("submission-stored").unwrap().schema;
        let value = read_datum(&writer, reader, &datum).unwrap();
        let event = SubmissionStored::from_value(&value).unwrap();
        assert_eq!(event.instance_id, None);
        assert_eq!(event.revision, 0);
        assert_eq!(event.processing_status, None);
        assert_eq!(event.quality_score, None);
        assert!(event.quality_flags.is_empty());
        assert_eq!(event.stored_at_ms, 1_764_000_000_500);
    }

    #[test]
    fn single_object_matches_apache_avro_writer() {
        let parsed = builtin().newest("raw-submission").unwrap();
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
    fn confluent_frame_carries_pinned_id() {
        let bytes = encode_confluent(&sample());
        assert_eq!(&bytes[..5], &[0, 0, 0, 0x03, 0xE9]);
        assert_eq!(decode_raw_submission(None, &bytes).unwrap(), sample());
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
        let mut unknown_id = encode_confluent(&form_sample());
        unknown_id[4] = 0x07;
        let error = decode::<FormDefinition>(&unknown_id).unwrap_err();
        assert!(
            matches!(error, PartnerDecodeError::UnknownSchemaId(775)),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "unknown Confluent schema id 775");

        let mut unknown_fingerprint = encode_single_object(&sample());
        unknown_fingerprint[2] ^= 0xFF;
        let named = hex(&unknown_fingerprint[2..10]);
        let error = decode_raw_submission(None, &unknown_fingerprint).unwrap_err();
        assert!(
            matches!(&error, PartnerDecodeError::UnknownFingerprint(found) if *found == named),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("unknown Avro schema fingerprint {named}")
        );
    }

    #[test]
    fn other_contract_is_rejected() {
        let error = decode::<RawSubmission>(&encode_confluent(&form_sample())).unwrap_err();
        assert!(
            matches!(
                error,
                PartnerDecodeError::WrongContract {
                    expected: "raw-submission",
                    found: "form-definition",
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn truncated_datum_is_invalid() {
        let bytes = encode_confluent(&sample());
        assert!(matches!(
            decode_raw_submission(None, &bytes[..bytes.len() / 2]),
            Err(PartnerDecodeError::InvalidAvro(_))
        ));
        assert!(matches!(
            decode_raw_submission(None, &bytes[..6]),
            Err(PartnerDecodeError::InvalidAvro(_))
        ));
        assert!(matches!(
            decode_raw_submission(None, &SINGLE_OBJECT_MARKER),
            Err(PartnerDecodeError::InvalidAvro(_))
        ));
    }

    #[test]
    fn out_of_range_numbers_are_named() {
        let error = narrow::<u8, i32>("quality.score", 300).unwrap_err();
        assert_eq!(error.to_string(), "quality.score 300 is out of range");
    }
}
