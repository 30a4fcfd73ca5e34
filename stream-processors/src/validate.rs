//! The validation processor: checks each raw submission against its registered form version
//! and writes it to `submissions.validated` with the `validation` section set.
//!
//! An unknown form or version is flagged (`form_known: false`, issue `unknown_form`) and
//! passed on, never dropped. An encrypted submission passes with the informational issue
//! `encrypted_not_checked` and `valid: true`, because its answers cannot be read.

use std::sync::Arc;

use fieldforce_kafka::catalog::{FORMS, SUBMISSIONS_RAW, SUBMISSIONS_VALIDATED};
use fieldforce_kafka::dead_letter::header_str;
use fieldforce_runtime::config::Config;
use fieldforce_runtime::shutdown::Shutdown;
use fieldforce_schemas::avro::decode_raw_submission;
use fieldforce_schemas::codec::{Contract, encode};
use fieldforce_schemas::form::{FormDefinition, FormField};
use fieldforce_schemas::odk;
use fieldforce_schemas::submission::{
    ProcessedSubmission, RawSubmission, Validation, ValidationIssue,
};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;

use crate::ProcessorError;
use crate::error::Unprocessable;
use crate::fields::{Answer, leaf_text, values_at};
use crate::pipeline::{self, Output, StageSpec, Transform};
use crate::registry::{Registry, caught_up_registry};

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
        let form = self.forms.form(
            &submission.org_id,
            &submission.project_id,
            &submission.form_id,
            submission.form_version.as_deref(),
        );
        validate_submission(submission, form.as_deref())
    }
}

/// Decodes a raw submission in any encoding the raw topic carries: JSON from the gateway, or
/// Avro (single-object or Confluent framing) and JSON from partners.
fn decode_raw(message: &OwnedMessage) -> Result<RawSubmission, Unprocessable> {
    let Some(payload) = message.payload() else {
        return Err(Unprocessable {
            code: "missing_value",
            detail: "the record has no value".to_owned(),
        });
    };
    let content_type = message
        .headers()
        .and_then(|headers| header_str(headers, fieldforce_schemas::headers::CONTENT_TYPE));
    decode_raw_submission(content_type, payload).map_err(|error| Unprocessable {
        code: "undecodable",
        detail: error.to_string(),
    })
}

impl Transform for Validator {
    fn transform(&self, message: &OwnedMessage) -> Result<Output, Unprocessable> {
        // The raw topic also carries partner records in Avro, so the encoding is read from
        // the content-type header and the framing rather than assumed to be JSON.
        let submission = decode_raw(message)?;
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
    let mut issues = Vec::new();
    let Some(form) = form else {
        issues.push(ValidationIssue {
            path: String::new(),
            code: "unknown_form".to_owned(),
            message: format!(
                "form {:?} version {:?} is not registered for project {:?}",
                submission.form_id,
                submission.form_version.as_deref().unwrap_or(""),
                submission.project_id
            ),
        });
        return Validation {
            valid: false,
            form_known: false,
            form_version: submission.form_version.clone(),
            issues,
        };
    };

    if submission.encrypted.is_some() {
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

    let answers = Answer::group_of(&submission.fields);
    for field in &form.fields {
        check_field(&answers, form, field, &mut issues);
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
