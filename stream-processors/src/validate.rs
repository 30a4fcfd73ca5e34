//! The validation processor: checks each raw submission against its registered form version
//! and writes it to `submissions.validated` with the `validation` section set.
//!
//! An unknown form or version is flagged (`form_known: false`, issue `unknown_form`) and
//! passed on, never dropped. An encrypted submission passes with the informational issue
//! `encrypted_not_checked` and `valid: true`, because its answers cannot be read.

use std::sync::Arc;

use crate::ProcessorError;
use crate::error::Unprocessable;
use crate::fields::{Answer, leaf_text, values_at};
use crate::pipeline::{self, Output, StageSpec, Transform};
use crate::record::value_of;
use crate::registry::{Registry, caught_up_registry};
use fieldforce_kafka::catalog::{FORMS, SUBMISSIONS_RAW, SUBMISSIONS_VALIDATED};
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::avro::{decode_raw_submission, is_json};
use fieldforce_schemas::codec::{Contract, DecodeError, encode};
use fieldforce_schemas::form::{FormDefinition, FormField};
use fieldforce_schemas::odk;
use fieldforce_schemas::submission::{
    PROCESSED_SUBMISSION_VERSION, ProcessedSubmission, RawSubmission, Validation, ValidationIssue,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

/// Topics and consumer group of the validation processor.
pub const SPEC: StageSpec = StageSpec {
    stage: "validation",
    service: "validate",
    group_id: "fieldforce-validation",
    input: SUBMISSIONS_RAW,
    output: SUBMISSIONS_VALIDATED,
};

/// The validation transform.
#[derive(Debug)]
pub struct Validator {
    forms: Arc<Registry<FormDefinition>>,
}

impl Validator {
    /// Creates a validator over a forms registry.
    pub fn new(forms: Arc<Registry<FormDefinition>>) -> Self {
        Self { forms }
    }

    /// Validates one submission.
    pub fn validate(&self, submission: &RawSubmission) -> Validation {
        let answers = Answer::group_of(&submission.fields);
        self.check(&Subject::of(submission, &answers))
    }

    fn check(&self, subject: &Subject<'_, '_>) -> Validation {
        let form = self.forms.form(
            subject.org_id,
            subject.project_id,
            subject.form_id,
            subject.form_version,
        );
        validate_subject(subject, form.as_deref())
    }
}

/// The parts of a submission that validation reads.
#[derive(Debug, Clone, Copy)]
struct Subject<'s, 'a> {
    org_id: &'s str,
    project_id: &'s str,
    form_id: &'s str,
    form_version: Option<&'s str>,
    encrypted: bool,
    answers: &'s Answer<'a>,
}

impl<'s, 'a> Subject<'s, 'a> {
    fn of(submission: &'s RawSubmission, answers: &'s Answer<'a>) -> Self {
        Self {
            org_id: &submission.org_id,
            project_id: &submission.project_id,
            form_id: &submission.form_id,
            form_version: submission.form_version.as_deref(),
            encrypted: submission.encrypted.is_some(),
            answers,
        }
    }
}

use view::RawSubmission as RawView;

mod view {
    use fieldforce_schemas::submission::{Attachment, EncryptedSubmission, SubmissionSource};
    use serde::Deserialize;

    use crate::fields::{Answer, BorrowedStr};

    /// A raw submission in JSON, with every member checked as the contract type's decoding
    /// checks it, and the strings and answers borrowed from the record's bytes where they
    /// have no escapes. It has the contract type's name, because decoding errors name the
    /// type they expected.
    ///
    /// Decoding the answers into a `serde_json::Map` and encoding them again took more than a
    /// third of the transform's CPU time, so the output is the input's bytes inside a processed
    /// submission (`processed_json`).
    #[derive(Debug, Deserialize)]
    pub(super) struct RawSubmission<'a> {
        pub(super) schema_version: u32,
        #[serde(borrow)]
        pub(super) submission_id: BorrowedStr<'a>,
        #[serde(rename = "revision", default)]
        _revision: u32,
        #[serde(borrow)]
        pub(super) org_id: BorrowedStr<'a>,
        #[serde(borrow)]
        pub(super) project_id: BorrowedStr<'a>,
        #[serde(borrow)]
        pub(super) form_id: BorrowedStr<'a>,
        #[serde(borrow, default)]
        pub(super) form_version: Option<BorrowedStr<'a>>,
        #[serde(borrow, rename = "instance_id", default)]
        _instance_id: Option<BorrowedStr<'a>>,
        #[serde(borrow, rename = "deprecated_id", default)]
        _deprecated_id: Option<BorrowedStr<'a>>,
        #[serde(rename = "source")]
        _source: SubmissionSource,
        #[serde(rename = "received_at_ms")]
        _received_at_ms: i64,
        #[serde(borrow, rename = "content_sha256")]
        _content_sha256: BorrowedStr<'a>,
        #[serde(borrow, rename = "submitter", default)]
        _submitter: Option<BorrowedStr<'a>>,
        #[serde(borrow, rename = "device_id", default)]
        _device_id: Option<BorrowedStr<'a>>,
        #[serde(borrow)]
        pub(super) fields: Answer<'a>,
        #[serde(rename = "attachments", default)]
        _attachments: Vec<Attachment>,
        #[serde(borrow, rename = "missing_attachments", default)]
        _missing_attachments: Vec<BorrowedStr<'a>>,
        #[serde(default)]
        pub(super) encrypted: Option<EncryptedSubmission>,
    }
}

impl<'a> RawView<'a> {
    /// Decodes a raw submission's JSON, rejecting what [`fieldforce_schemas::codec::decode`]
    /// rejects, with the same reason.
    fn decode(payload: &'a [u8]) -> Result<Self, DecodeError> {
        let invalid = |source| DecodeError::Invalid {
            contract: RawSubmission::NAME,
            source,
        };
        let view: Self = crate::record::from_json(payload).map_err(invalid)?;
        if !matches!(view.fields, Answer::Group(_)) {
            // The typed decoding's message gives the position of answers that are not an object.
            let source = serde_json::from_slice::<RawSubmission>(payload).err();
            return Err(invalid(source.unwrap_or_else(|| {
                serde::de::Error::custom("invalid type: fields is not an object")
            })));
        }
        if view.schema_version > RawSubmission::VERSION {
            return Err(DecodeError::UnsupportedVersion {
                contract: RawSubmission::NAME,
                found: view.schema_version,
                supported: RawSubmission::VERSION,
            });
        }
        Ok(view)
    }

    fn subject(&self) -> Subject<'_, 'a> {
        Subject {
            org_id: &self.org_id.0,
            project_id: &self.project_id.0,
            form_id: &self.form_id.0,
            form_version: self.form_version.as_ref().map(|version| version.0.as_ref()),
            encrypted: self.encrypted.is_some(),
            answers: &self.fields,
        }
    }
}

/// Returns the processed submission holding the raw submission `raw`, a JSON object, and its
/// validation. For `raw` as the gateway encodes it, these are the bytes that encoding the
/// processed submission gives. A partner's spacing and unknown members are kept.
fn processed_json(raw: &[u8], validation: &Validation) -> Vec<u8> {
    let raw = raw.trim_ascii();
    let mut out = Vec::with_capacity(raw.len() + 128);
    out.extend_from_slice(b"{\"schema_version\":");
    out.extend_from_slice(PROCESSED_SUBMISSION_VERSION.to_string().as_bytes());
    out.extend_from_slice(b",\"submission\":");
    out.extend_from_slice(raw);
    out.extend_from_slice(b",\"validation\":");
    // A validation has no map with non-string keys and no fallible Serialize.
    serde_json::to_writer(&mut out, validation).expect("a validation always serializes");
    out.push(b'}');
    out
}

fn undecodable(error: impl ToString) -> Unprocessable {
    Unprocessable {
        code: "undecodable",
        detail: error.to_string(),
    }
}

impl Transform for Validator {
    fn transform(&self, message: &OwnedMessage) -> Result<Output, Unprocessable> {
        let payload = value_of(message)?;
        // The raw topic also carries partner records in Avro, so the encoding is read from
        // the content-type header and the framing rather than assumed to be JSON.
        let content_type = message
            .headers()
            .and_then(|headers| header_str(headers, fieldforce_schemas::headers::CONTENT_TYPE));
        if is_json(content_type) {
            let view = RawView::decode(payload).map_err(undecodable)?;
            let validation = self.check(&view.subject());
            return Ok(Output {
                key: view.submission_id.0.into_owned(),
                value: processed_json(payload, &validation),
                schema: ProcessedSubmission::schema_header(),
            });
        }
        let submission = decode_raw_submission(content_type, payload).map_err(undecodable)?;
        let validation = self.validate(&submission);
        let mut processed = ProcessedSubmission::from_raw(submission);
        processed.validation = Some(validation);
        Ok(Output {
            key: processed.submission.submission_id.clone(),
            value: encode(&processed),
            schema: ProcessedSubmission::schema_header(),
        })
    }
}

/// Runs the validation processor until shutdown.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), ProcessorError> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::Metrics::register(
        &mut registry,
        SPEC.stage,
        &pipeline::group_id(&config, &SPEC),
    );
    let ready = crate::admin::start(&config, registry, shutdown.clone()).await?;

    let forms = caught_up_registry::<FormDefinition>(&config, FORMS, shutdown.clone()).await?;
    ready.set();

    let transform = Arc::new(Validator::new(forms));
    pipeline::run(&config, SPEC, transform, metrics, shutdown).await
}

/// Validates a submission against its form, or flags the form as unknown.
pub fn validate_submission(
    submission: &RawSubmission,
    form: Option<&FormDefinition>,
) -> Validation {
    let answers = Answer::group_of(&submission.fields);
    validate_subject(&Subject::of(submission, &answers), form)
}

fn validate_subject(subject: &Subject<'_, '_>, form: Option<&FormDefinition>) -> Validation {
    let mut issues = Vec::new();
    let Some(form) = form else {
        issues.push(ValidationIssue {
            path: String::new(),
            code: "unknown_form".to_owned(),
            message: format!(
                "form {:?} version {:?} is not registered for project {:?}",
                subject.form_id,
                subject.form_version.unwrap_or(""),
                subject.project_id
            ),
        });
        return Validation {
            valid: false,
            form_known: false,
            form_version: subject.form_version.map(str::to_owned),
            issues,
        };
    };

    if subject.encrypted {
        issues.push(ValidationIssue {
            path: String::new(),
            code: "encrypted_not_checked".to_owned(),
            message: "the submission is encrypted, so its answers were not checked".to_owned(),
        });
        return Validation {
            valid: true,
            form_known: true,
            form_version: Some(form.version.clone()),
            issues,
        };
    }

    for field in &form.fields {
        check_field(subject.answers, form, field, &mut issues);
    }
    Validation {
        valid: issues.is_empty(),
        form_known: true,
        form_version: Some(form.version.clone()),
        issues,
    }
}

/// Returns whether `path` is a repeat of the form or lies inside one, so several values are
/// allowed.
fn inside_repeat(form: &FormDefinition, path: &str) -> bool {
    form.fields.iter().any(|other| {
        other.repeat && (path == other.path || path.starts_with(&format!("{}/", other.path)))
    })
}

fn check_field(
    answers: &Answer<'_>,
    form: &FormDefinition,
    field: &FormField,
    issues: &mut Vec<ValidationIssue>,
) {
    let issue = |code: &str, message: String| ValidationIssue {
        path: format!("/{}", field.path),
        code: code.to_owned(),
        message,
    };
    let values = values_at(answers, &field.path);

    if field.repeat {
        return;
    }
    if values.len() > 1 && !inside_repeat(form, &field.path) {
        issues.push(issue(
            "not_repeatable",
            format!(
                "{} values for a field that is not in a repeat",
                values.len()
            ),
        ));
    }
    if values.iter().any(|value| value.is_repeat()) {
        issues.push(issue(
            "not_repeatable",
            "repeated group for a node that is not a repeat".to_owned(),
        ));
        return;
    }

    let texts: Vec<_> = values.iter().filter_map(|value| leaf_text(value)).collect();
    if field.required && texts.is_empty() && !inside_repeat(form, &field.path) {
        issues.push(issue(
            "required_missing",
            "required field has no answer".to_owned(),
        ));
    }
    for text in texts {
        if let Some((code, message)) = check_type(field, &text) {
            issues.push(issue(code, message));
        }
    }
}

/// Checks one answer against its field's type and choices.
fn check_type(field: &FormField, text: &str) -> Option<(&'static str, String)> {
    let invalid =
        |code: &'static str, expected: &str| Some((code, format!("{text:?} is not {expected}")));
    match field.data_type.as_str() {
        "int" if text.parse::<i64>().is_err() => invalid("invalid_int", "an integer"),
        "decimal" if !text.parse::<f64>().is_ok_and(f64::is_finite) => {
            invalid("invalid_decimal", "a decimal number")
        }
        "date" if odk::parse_date(text).is_err() => invalid("invalid_date", "a date (YYYY-MM-DD)"),
        "dateTime" if odk::parse_datetime(text).is_err() => {
            invalid("invalid_datetime", "a dateTime")
        }
        "geopoint" if odk::parse_geopoint(text).is_err() => {
            invalid("invalid_geopoint", "a geopoint (lat lon [alt [accuracy]])")
        }
        "geotrace" | "geoshape" if odk::to_geojson(&field.data_type, text).is_err() => {
            invalid("invalid_geometry", "a geotrace or geoshape")
        }
        "select1" if !field.choices.is_empty() => {
            if text.split_whitespace().count() != 1 {
                return Some((
                    "invalid_choice",
                    format!("{text:?} has several values for a single-choice question"),
                ));
            }
            (!field.choices.iter().any(|choice| choice == text)).then(|| {
                (
                    "invalid_choice",
                    format!("{text:?} is not one of the choices"),
                )
            })
        }
        "select" if !field.choices.is_empty() => text
            .split_whitespace()
            .find(|value| !field.choices.iter().any(|choice| choice == value))
            .map(|value| {
                (
                    "invalid_choice",
                    format!("{value:?} is not one of the choices"),
                )
            }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use fieldforce_schemas::submission::SubmissionSource;
    use serde_json::{Value, json};

    use super::*;

    fn field(path: &str, data_type: &str) -> FormField {
        FormField {
            path: path.to_owned(),
            data_type: data_type.to_owned(),
            required: false,
            choices: Vec::new(),
            repeat: false,
        }
    }

    fn form(fields: Vec<FormField>) -> FormDefinition {
        FormDefinition {
            schema_version: 1,
            org_id: "org".into(),
            project_id: "p".into(),
            form_id: "f".into(),
            version: "1".into(),
            title: None,
            fields,
            registered_at_ms: 0,
            xform_sha256: String::new(),
        }
    }

    fn submission(fields: Value) -> RawSubmission {
        RawSubmission {
            schema_version: 1,
            submission_id: "s1".into(),
            revision: 0,
            org_id: "org".into(),
            project_id: "p".into(),
            form_id: "f".into(),
            form_version: Some("1".into()),
            instance_id: None,
            deprecated_id: None,
            source: SubmissionSource::OpenRosa,
            received_at_ms: 0,
            content_sha256: String::new(),
            submitter: None,
            device_id: None,
            fields: match fields {
                Value::Object(map) => map,
                _ => panic!("fixture is an object"),
            },
            attachments: Vec::new(),
            missing_attachments: Vec::new(),
            encrypted: None,
        }
    }

    fn codes(validation: &Validation) -> Vec<&str> {
        validation
            .issues
            .iter()
            .map(|issue| issue.code.as_str())
            .collect()
    }

    /// A submission with every optional member set and answers that need escapes, so a
    /// member that [`RawView`] reads or writes differently shows as a difference.
    fn complete() -> RawSubmission {
        let mut raw = submission(json!({
            "name": "Ama \"Kofi\" \u{e9}\\",
            "household": [{"age": "3"}, {"age": 4.5}],
            "flag": true,
            "none": null,
        }));
        raw.revision = 2;
        raw.instance_id = Some("uuid:1".into());
        raw.deprecated_id = Some("uuid:0".into());
        raw.content_sha256 = "ab".into();
        raw.submitter = Some("ama\n".into());
        raw.device_id = Some("phone-1".into());
        raw.attachments = vec![fieldforce_schemas::submission::Attachment {
            name: "photo.jpg".into(),
            size_bytes: 10,
            sha256: "cd".into(),
            content_type: "image/jpeg".into(),
            blob_uri: "file:///photo.jpg".into(),
        }];
        raw.missing_attachments = vec!["audio.m4a".into()];
        raw
    }

    #[test]
    fn view_output_is_the_full_encoding() {
        let raw = complete();
        let bytes = encode(&raw);
        let view = RawView::decode(&bytes).expect("decodes");
        let form = form(vec![field("household/age", "int"), field("name", "int")]);
        let validation = validate_subject(&view.subject(), Some(&form));
        assert_eq!(
            codes(&validation),
            vec!["not_repeatable", "invalid_int", "invalid_int"]
        );
        assert_eq!(validation, validate_submission(&raw, Some(&form)));

        let mut processed = ProcessedSubmission::from_raw(raw);
        processed.validation = Some(validation.clone());
        let mut padded = b" \n".to_vec();
        padded.extend_from_slice(&bytes);
        padded.extend_from_slice(b"\n");
        assert_eq!(
            String::from_utf8_lossy(&processed_json(&padded, &validation)),
            String::from_utf8_lossy(&encode(&processed))
        );
    }

    #[test]
    fn view_rejects_what_typed_decode_rejects() {
        let complete = serde_json::to_value(complete()).expect("serializes");
        let changed = |change: &dyn Fn(&mut Value)| {
            let mut value = complete.clone();
            change(&mut value);
            serde_json::to_vec(&value).expect("serializes")
        };
        let cases = [
            changed(&|value| value["schema_version"] = json!(RawSubmission::VERSION + 1)),
            changed(&|value| value["revision"] = json!(-1)),
            changed(&|value| value["source"] = json!("fax")),
            changed(&|value| value["received_at_ms"] = json!("today")),
            changed(&|value| value["submitter"] = json!(7)),
            changed(&|value| value["attachments"][0]["size_bytes"] = json!("big")),
            changed(&|value| value["missing_attachments"] = json!([1])),
            changed(&|value| value["fields"] = json!(["not", "a", "group"])),
            changed(&|value| value["encrypted"] = json!({"base64_encrypted_key": 1})),
            changed(&|value| {
                value
                    .as_object_mut()
                    .expect("object")
                    .remove("content_sha256");
            }),
            changed(&|value| {
                value.as_object_mut().expect("object").remove("org_id");
            }),
            b"{\"schema_version\":1,".to_vec(),
            b"[]".to_vec(),
        ];
        for value in cases {
            let text = String::from_utf8_lossy(&value);
            let typed = fieldforce_schemas::codec::decode::<RawSubmission>(&value)
                .expect_err("rejected by the typed decoding");
            let view = RawView::decode(&value).expect_err("rejected by the view");
            assert_eq!(view.to_string(), typed.to_string(), "{text}");
        }
    }

    #[test]
    fn type_errors_are_reported_per_field() {
        let form = form(vec![
            field("age", "int"),
            field("weight", "decimal"),
            field("born", "date"),
            field("seen", "dateTime"),
            field("gps", "geopoint"),
        ]);
        let answers = json!({"age": "4.5", "weight": "x", "born": "2024-13-01", "seen": "noon", "gps": "north"});
        let validation = validate_submission(&submission(answers), Some(&form));
        assert!(!validation.valid);
        assert_eq!(
            codes(&validation),
            vec![
                "invalid_int",
                "invalid_decimal",
                "invalid_date",
                "invalid_datetime",
                "invalid_geopoint"
            ]
        );
    }

    #[test]
    fn valid_answers_pass() {
        let form = form(vec![
            field("age", "int"),
            field("seen", "dateTime"),
            field("gps", "geopoint"),
            field("shape", "geoshape"),
        ]);
        let answers = json!({"age": "4", "seen": "2024-05-01T10:00:00.000+03", "gps": "43.31 -1.98 71.8 15.4", "shape": "0 0 0 0;0 1 0 0;1 1 0 0;0 0 0 0;"});
        let validation = validate_submission(&submission(answers), Some(&form));
        assert!(validation.valid, "{:?}", validation.issues);
    }

    #[test]
    fn required_missing_is_reported() {
        let mut name = field("name", "string");
        name.required = true;
        let validation = validate_submission(&submission(json!({})), Some(&form(vec![name])));
        assert_eq!(codes(&validation), vec!["required_missing"]);
    }

    #[test]
    fn select_values_must_be_choices() {
        let mut one = field("one", "select1");
        one.choices = vec!["bus".into(), "car".into()];
        let mut many = field("many", "select");
        many.choices = vec!["red".into(), "blue".into()];
        let form = form(vec![one, many]);

        let good = validate_submission(
            &submission(json!({"one": "bus", "many": "red blue"})),
            Some(&form),
        );
        assert!(good.valid, "{:?}", good.issues);
        let bad = validate_submission(
            &submission(json!({"one": "bus car", "many": "red green"})),
            Some(&form),
        );
        assert_eq!(codes(&bad), vec!["invalid_choice", "invalid_choice"]);
    }

    #[test]
    fn repeats_allow_many_instances_single_nodes_do_not() {
        let mut household = field("household", "string");
        household.repeat = true;
        let form = form(vec![
            household,
            field("household/age", "int"),
            field("group/q", "string"),
        ]);

        let answers =
            json!({"household": [{"age": "3"}, {"age": "x"}], "group": [{"q": "a"}, {"q": "b"}]});
        let validation = validate_submission(&submission(answers), Some(&form));
        assert_eq!(codes(&validation), vec!["invalid_int", "not_repeatable"]);
    }

    #[test]
    fn unknown_form_is_flagged_not_rejected() {
        let validation = validate_submission(&submission(json!({"a": "1"})), None);
        assert!(!validation.form_known);
        assert_eq!(codes(&validation), vec!["unknown_form"]);
    }

    #[test]
    fn encrypted_submission_passes_with_note() {
        let mut encrypted = submission(json!({}));
        encrypted.encrypted = Some(fieldforce_schemas::submission::EncryptedSubmission {
            base64_encrypted_key: "a2V5".into(),
            encrypted_signature: None,
            encrypted_xml_file: "submission.xml.enc".into(),
        });
        let mut name = field("name", "string");
        name.required = true;
        let validation = validate_submission(&encrypted, Some(&form(vec![name])));
        assert!(validation.valid);
        assert_eq!(codes(&validation), vec!["encrypted_not_checked"]);
    }
}
