//! Processed-submission records read and written section by section.
//!
//! The geo and quality processors each set their own sections of a processed submission and
//! pass the others on. Decoding and encoding the passed-on sections again, above all the
//! submission with its answers, was most of a stage's CPU time in `perf` profiles. So a stage
//! decodes only the parts it reads ([`ProcessedView`]) and appends its own sections to the
//! record's bytes, which works while the record has none of them and no section after them.
//! Otherwise it decodes every section into its type ([`ProcessedRecord`]) and writes the
//! sections it does not own as the JSON text they arrived in. For a record written by this
//! crate's encoder, either way gives the same bytes as a full re-encoding. A record from
//! another encoder keeps that encoder's spacing, escapes and unknown fields inside the
//! sections passed on.

use std::borrow::Cow;

use fieldforce_schemas::codec::{Contract, DecodeError};
use fieldforce_schemas::submission::ProcessedSubmission;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::error::Unprocessable;
use crate::fields::Answer;

/// The sections of a processed submission that a stage sets. Every other section is written
/// as it arrived, so a stage's changes to those are not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnSections {
    /// `location`, set by the geo processor.
    Location,
    /// `quality` and `processing_status`, set by the quality processor.
    QualityAndStatus,
}

/// The top-level JSON text of each section, in the field order of [`ProcessedSubmission`],
/// whose derived encoding this struct's derived encoding must reproduce.
#[derive(Debug, Serialize, Deserialize)]
struct Sections<'a> {
    schema_version: u32,
    #[serde(borrow)]
    submission: &'a RawValue,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    validation: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    location: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    quality: Option<&'a RawValue>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    processing_status: Option<&'a RawValue>,
}

/// A processed submission decoded from a record value, with the value's section texts kept
/// for [`ProcessedRecord::encode`].
#[derive(Debug)]
pub struct ProcessedRecord<'a> {
    /// The decoded submission, for the stage to read and to set its own sections in.
    pub processed: ProcessedSubmission,
    sections: Sections<'a>,
}

impl<'a> ProcessedRecord<'a> {
    /// Decodes a record's value, or classifies it as undecodable. A value is accepted or
    /// rejected, with the same reason code, as [`crate::pipeline::decode_value`] would. The
    /// line and column in the detail of an error inside a section count from that section.
    pub fn decode(message: &'a OwnedMessage) -> Result<Self, Unprocessable> {
        let payload = value_of(message)?;
        Self::decode_value(payload).map_err(|error| Unprocessable {
            code: "undecodable",
            detail: error.to_string(),
        })
    }

    fn decode_value(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let sections: Sections<'a> = from_json(payload).map_err(invalid)?;
        if sections.schema_version > ProcessedSubmission::VERSION {
            return Err(DecodeError::UnsupportedVersion {
                contract: ProcessedSubmission::NAME,
                found: sections.schema_version,
                supported: ProcessedSubmission::VERSION,
            });
        }
        let processed = ProcessedSubmission {
            schema_version: sections.schema_version,
            submission: section(sections.submission)?,
            validation: optional_section(sections.validation)?,
            location: optional_section(sections.location)?,
            quality: optional_section(sections.quality)?,
            processing_status: optional_section(sections.processing_status)?,
        };
        Ok(Self {
            processed,
            sections,
        })
    }

    /// Encodes the record: the sections in `own` from [`ProcessedRecord::processed`], every
    /// other section as the text it arrived as.
    pub fn encode(&self, own: OwnSections) -> Vec<u8> {
        let processed = &self.processed;
        let location;
        let quality;
        let processing_status;
        let mut sections = Sections {
            schema_version: self.sections.schema_version,
            submission: self.sections.submission,
            validation: self.sections.validation,
            location: self.sections.location,
            quality: self.sections.quality,
            processing_status: self.sections.processing_status,
        };
        match own {
            OwnSections::Location => {
                location = optional_raw(processed.location.as_ref());
                sections.location = location.as_deref();
            }
            OwnSections::QualityAndStatus => {
                quality = optional_raw(processed.quality.as_ref());
                processing_status = optional_raw(processed.processing_status.as_ref());
                sections.quality = quality.as_deref();
                sections.processing_status = processing_status.as_deref();
            }
        }
        // The sections are valid JSON and the struct has no map with non-string keys.
        serde_json::to_vec(&sections).expect("record sections always serialize to JSON")
    }
}

/// The parts of a processed submission that the geo and quality stages read, borrowed from
/// the record's bytes.
///
/// Only these parts are decoded and checked. The others are written on as they arrived
/// ([`append_members`]), because the sink checks the whole record against the contract before
/// it stores it. The contract's required members are required here too, so a record missing one
/// is rejected here as it would be by a full decode.
#[derive(Debug, Deserialize)]
pub struct ProcessedView<'a> {
    /// Version of the processed-submission contract the record was written with.
    pub schema_version: u32,
    /// The submission.
    #[serde(borrow)]
    pub submission: SubmissionView<'a>,
    /// The validation result, when the record was validated.
    #[serde(default)]
    pub validation: Option<ValidationView>,
    /// The location section: `None` when the record has no `location` member, `Some(None)`
    /// when it is `null`.
    #[serde(borrow, default, deserialize_with = "member")]
    pub location: Option<Option<LocationView<'a>>>,
    /// Whether the record already has a `quality` member.
    #[serde(rename = "quality", default, deserialize_with = "present")]
    pub has_quality: bool,
    /// Whether the record already has a `processing_status` member.
    #[serde(rename = "processing_status", default, deserialize_with = "present")]
    pub has_processing_status: bool,
}

/// The parts of the submission section that the geo and quality stages read.
#[derive(Debug, Deserialize)]
pub struct SubmissionView<'a> {
    /// Submission id, the record key.
    #[serde(borrow)]
    pub submission_id: Cow<'a, str>,
    /// Organisation.
    #[serde(borrow)]
    pub org_id: Cow<'a, str>,
    /// Project.
    #[serde(borrow)]
    pub project_id: Cow<'a, str>,
    /// Form id.
    #[serde(borrow)]
    pub form_id: Cow<'a, str>,
    /// Form version, when the client sent one.
    #[serde(default)]
    pub form_version: Option<String>,
    /// Device id, when the client sent one.
    #[serde(default)]
    pub device_id: Option<String>,
    /// When the gateway received the submission, in milliseconds since the epoch.
    pub received_at_ms: i64,
    /// The answers.
    #[serde(borrow)]
    pub fields: Answer<'a>,
    /// Whether the submission is encrypted.
    #[serde(default)]
    pub encrypted: Option<IgnoredAny>,
    /// Attachments the submission names but the gateway has not received.
    #[serde(default)]
    pub missing_attachments: Vec<IgnoredAny>,
    #[serde(rename = "source")]
    _source: IgnoredAny,
    #[serde(rename = "content_sha256")]
    _content_sha256: IgnoredAny,
}

/// The part of the validation section that the quality stage reads.
#[derive(Debug, Deserialize)]
pub struct ValidationView {
    /// Whether every answer passed its form's checks.
    pub valid: bool,
}

/// The parts of the location section that the quality stage reads.
#[derive(Debug, Deserialize)]
pub struct LocationView<'a> {
    /// Accuracy of the primary point, in metres.
    #[serde(default)]
    pub accuracy_m: Option<f64>,
    /// The primary point's place against the project's geofences.
    #[serde(borrow, default)]
    pub geofence: Option<GeofenceView<'a>>,
    /// Problem codes found with the GPS answers.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// The geofence result of the location section.
#[derive(Debug, Deserialize)]
pub struct GeofenceView<'a> {
    /// Whether the point is inside a fence.
    pub inside: bool,
    /// The fence the point is in, or the nearest one.
    #[serde(borrow)]
    pub geofence_id: Cow<'a, str>,
    /// Distance to that fence in metres, 0 inside.
    pub distance_m: f64,
}

impl<'a> ProcessedView<'a> {
    /// Decodes the parts of a record's value that the geo and quality stages read, or
    /// classifies the value as undecodable.
    pub fn decode(message: &'a OwnedMessage) -> Result<Self, Unprocessable> {
        let payload = value_of(message)?;
        let undecodable = |detail: String| Unprocessable {
            code: "undecodable",
            detail,
        };
        let view: Self =
            from_json(payload).map_err(|error| undecodable(invalid(error).to_string()))?;
        if view.schema_version > ProcessedSubmission::VERSION {
            return Err(undecodable(
                DecodeError::UnsupportedVersion {
                    contract: ProcessedSubmission::NAME,
                    found: view.schema_version,
                    supported: ProcessedSubmission::VERSION,
                }
                .to_string(),
            ));
        }
        if !matches!(view.submission.fields, Answer::Group(_)) {
            return Err(undecodable(format!(
                "invalid {}: submission.fields is not an object",
                ProcessedSubmission::NAME
            )));
        }
        Ok(view)
    }
}

/// Decodes a record value's JSON. The whole value is checked as UTF-8 once and then parsed as
/// text, because parsing bytes checks each string separately, which was a fifth of the
/// instructions of a view's decoding. A value that is not UTF-8 is parsed as bytes, so that its
/// error is the one a decoding of the bytes gives.
pub(crate) fn from_json<'a, T: Deserialize<'a>>(value: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(value),
    }
}

/// Returns a record's value, or classifies a record without one.
pub(crate) fn value_of(message: &OwnedMessage) -> Result<&[u8], Unprocessable> {
    message.payload().ok_or_else(|| Unprocessable {
        code: "missing_value",
        detail: "the record has no value".to_owned(),
    })
}

/// Encodes a stage's output from its own sections, `members`. When `appendable` (the input
/// has neither them nor a section after them in the contract's order), they are appended to
/// the input record's bytes. Otherwise the input is decoded section by section and `set` is
/// applied to it.
pub fn encode_output(
    message: &OwnedMessage,
    appendable: bool,
    members: &[(&str, &[u8])],
    own: OwnSections,
    set: impl FnOnce(&mut ProcessedSubmission),
) -> Result<Vec<u8>, Unprocessable> {
    if appendable {
        return append_members(value_of(message)?, members).ok_or_else(|| Unprocessable {
            code: "undecodable",
            detail: "the record value is not a JSON object".to_owned(),
        });
    }
    let mut record = ProcessedRecord::decode(message)?;
    set(&mut record.processed);
    Ok(record.encode(own))
}

fn member<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(deserializer)?;
    Ok(true)
}

/// Returns a record value, a JSON object that has none of `members`, with `members` added
/// at its end: the bytes a full encoding gives when the members are the last in the
/// contract's field order. Returns `None` when the value does not end with an object's `}`.
pub fn append_members(value: &[u8], members: &[(&str, &[u8])]) -> Option<Vec<u8>> {
    let close = value.iter().rposition(|byte| !byte.is_ascii_whitespace())?;
    if value[close] != b'}' {
        return None;
    }
    let body = &value[..close];
    let empty = body
        .iter()
        .rposition(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|last| body[last] == b'{');
    let added: usize = members
        .iter()
        .map(|(name, json)| name.len() + json.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(close + added + 1);
    out.extend_from_slice(body);
    for (index, (name, json)) in members.iter().enumerate() {
        if index > 0 || !empty {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(json);
    }
    out.push(b'}');
    Some(out)
}

fn invalid(source: serde_json::Error) -> DecodeError {
    DecodeError::Invalid {
        contract: ProcessedSubmission::NAME,
        source,
    }
}

fn section<T: DeserializeOwned>(raw: &RawValue) -> Result<T, DecodeError> {
    serde_json::from_str(raw.get()).map_err(invalid)
}

fn optional_section<T: DeserializeOwned>(raw: Option<&RawValue>) -> Result<Option<T>, DecodeError> {
    raw.map(section).transpose()
}

fn optional_raw<T: Serialize>(value: Option<&T>) -> Option<Box<RawValue>> {
    // The contract types have no map with non-string keys and no fallible Serialize.
    value.map(|value| {
        serde_json::value::to_raw_value(value).expect("contract sections always serialize")
    })
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::codec::{decode, encode};
    use fieldforce_schemas::submission::{
        Attachment, EncryptedSubmission, GeofenceResult, GeometryField, Location, ProcessingStatus,
        Quality, QualityFlag, RawSubmission, SubmissionSource, Validation, ValidationIssue,
    };
    use rdkafka::Timestamp;
    use serde_json::json;

    use super::*;

    #[test]
    fn value_not_utf8_gets_byte_decoding_error() {
        let value = b"{\"schema_version\": 1, \"submission\": \"caf\xe9\"}";
        let from_bytes = serde_json::from_slice::<serde_json::Value>(value).unwrap_err();
        let found = from_json::<serde_json::Value>(value).unwrap_err();
        assert_eq!(found.to_string(), from_bytes.to_string());
        assert_eq!(
            from_json::<serde_json::Value>(b"{\"a\": \"caf\xc3\xa9\"}").unwrap(),
            json!({"a": "caf\u{e9}"})
        );
    }

    /// Builds a submission with every optional part set, so that a section missing from
    /// [`Sections`] shows as a difference in the encoding.
    fn complete() -> ProcessedSubmission {
        let fields = json!({
            "name": "Ama \"Kofi\" \u{e9}\\",
            "household": [{"age": "3"}, {"age": 4.5}],
            "flag": true,
            "none": null,
        });
        ProcessedSubmission {
            schema_version: 1,
            submission: RawSubmission {
                schema_version: 1,
                submission_id: "uuid:1".into(),
                revision: 2,
                org_id: "org".into(),
                project_id: "p".into(),
                form_id: "f".into(),
                form_version: Some("3".into()),
                instance_id: Some("uuid:1".into()),
                deprecated_id: Some("uuid:0".into()),
                source: SubmissionSource::OpenRosa,
                received_at_ms: 1_714_557_600_000,
                content_sha256: "ab".into(),
                submitter: Some("ama".into()),
                device_id: Some("phone-1".into()),
                fields: match fields {
                    serde_json::Value::Object(map) => map,
                    _ => panic!("fixture is an object"),
                },
                attachments: vec![Attachment {
                    name: "photo.jpg".into(),
                    size_bytes: 10,
                    sha256: "cd".into(),
                    content_type: "image/jpeg".into(),
                    blob_uri: "file:///photo.jpg".into(),
                }],
                missing_attachments: vec!["audio.m4a".into()],
                encrypted: Some(EncryptedSubmission {
                    base64_encrypted_key: "a2V5".into(),
                    encrypted_signature: Some("c2ln".into()),
                    encrypted_xml_file: "submission.xml.enc".into(),
                }),
            },
            validation: Some(Validation {
                valid: false,
                form_known: true,
                form_version: Some("3".into()),
                issues: vec![ValidationIssue {
                    path: "/age".into(),
                    code: "invalid_int".into(),
                    message: "\"x\" is not an integer".into(),
                }],
            }),
            location: Some(Location {
                point: Some(json!({"type": "Point", "coordinates": [-1.9869671, 43.3149254]})),
                accuracy_m: Some(15.478),
                source_field: Some("/gps".into()),
                geometries: vec![GeometryField {
                    path: "/gps".into(),
                    geometry: json!({"type": "Point", "coordinates": [-1.9869671, 43.3149254]}),
                }],
                geofence: Some(GeofenceResult {
                    inside: false,
                    geofence_id: "zone".into(),
                    distance_m: 1500.25,
                }),
                problems: vec!["gps_null_island".into()],
            }),
            quality: Some(Quality {
                score: 75,
                flags: vec![QualityFlag {
                    check: "too_fast".into(),
                    penalty: 25,
                    reason: "interview took 45 s, minimum 120 s".into(),
                }],
            }),
            processing_status: Some(ProcessingStatus::NeedsReview),
        }
    }

    fn message(value: Vec<u8>) -> OwnedMessage {
        OwnedMessage::new(
            Some(value),
            None,
            "submissions.located".into(),
            Timestamp::NotAvailable,
            0,
            0,
            None,
        )
    }

    #[test]
    fn unchanged_record_encodes_to_same_bytes() {
        let bytes = encode(&complete());
        let message = message(bytes.clone());
        let record = ProcessedRecord::decode(&message).expect("decodes");
        assert_eq!(record.processed, complete());
        for own in [OwnSections::Location, OwnSections::QualityAndStatus] {
            assert_eq!(
                String::from_utf8_lossy(&record.encode(own)),
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn own_sections_are_encoded_from_the_submission() {
        let mut input = complete();
        input.location = None;
        input.quality = None;
        input.processing_status = None;
        let message = message(encode(&input));

        let mut record = ProcessedRecord::decode(&message).expect("decodes");
        record.processed.location = complete().location;
        let mut expected = input.clone();
        expected.location = complete().location;
        assert_eq!(record.encode(OwnSections::Location), encode(&expected));

        let mut record = ProcessedRecord::decode(&message).expect("decodes");
        record.processed.quality = complete().quality;
        record.processed.processing_status = complete().processing_status;
        // Changes outside the stage's own sections are not written.
        record.processed.submission.org_id = "other".into();
        let mut expected = input;
        expected.quality = complete().quality;
        expected.processing_status = complete().processing_status;
        assert_eq!(
            record.encode(OwnSections::QualityAndStatus),
            encode(&expected)
        );
    }

    #[test]
    fn members_are_appended_inside_the_object() {
        let members: &[(&str, &[u8])] = &[("quality", b"{\"score\":90}"), ("status", b"\"ok\"")];
        assert_eq!(
            append_members(b"{\"a\":1} \n", members).as_deref(),
            Some(&b"{\"a\":1,\"quality\":{\"score\":90},\"status\":\"ok\"}"[..])
        );
        assert_eq!(
            append_members(b" { } ", members).as_deref(),
            Some(&b" { \"quality\":{\"score\":90},\"status\":\"ok\"}"[..])
        );
        assert_eq!(append_members(b"[1]", members), None);
        assert_eq!(append_members(b"", members), None);
    }

    #[test]
    fn view_reads_presence_of_own_sections() {
        let message = message(encode(&complete()));
        let view = ProcessedView::decode(&message).expect("decodes");
        assert!(view.has_quality);
        assert!(view.has_processing_status);
        assert_eq!(view.submission.submission_id, "uuid:1");
        assert_eq!(
            view.location.flatten().expect("located").problems,
            vec!["gps_null_island"]
        );
    }

    #[test]
    fn rejects_what_typed_decode_rejects() {
        let mut newer = serde_json::to_value(complete()).expect("serializes");
        newer["schema_version"] = json!(ProcessedSubmission::VERSION + 1);
        let mut wrong_type = serde_json::to_value(complete()).expect("serializes");
        wrong_type["validation"]["valid"] = json!("yes");
        let mut missing = serde_json::to_value(complete()).expect("serializes");
        missing["submission"]
            .as_object_mut()
            .expect("object")
            .remove("org_id");
        let mut missing_hash = serde_json::to_value(complete()).expect("serializes");
        missing_hash["submission"]
            .as_object_mut()
            .expect("object")
            .remove("content_sha256");
        let mut answers = serde_json::to_value(complete()).expect("serializes");
        answers["submission"]["fields"] = json!(["not", "a", "group"]);
        let cases = [
            serde_json::to_vec(&newer).expect("serializes"),
            serde_json::to_vec(&wrong_type).expect("serializes"),
            serde_json::to_vec(&missing).expect("serializes"),
            serde_json::to_vec(&missing_hash).expect("serializes"),
            serde_json::to_vec(&answers).expect("serializes"),
            b"{\"schema_version\":1,".to_vec(),
        ];
        for value in cases {
            assert!(decode::<ProcessedSubmission>(&value).is_err());
            let message = message(value.clone());
            let error = ProcessedRecord::decode(&message).expect_err("rejected");
            let text = String::from_utf8_lossy(&value);
            assert_eq!(error.code, "undecodable", "{text}");
            // The quality stage's view checks every part it reads and the contract's
            // required members, so it rejects each of these too.
            let error = ProcessedView::decode(&message).expect_err("rejected by the view");
            assert_eq!(error.code, "undecodable", "{text}");
        }
    }
}
