//! Reading the JSON submission shapes: the gateway's own (`{"id", "form_id", "fields"}`) and
//! the KoboToolbox/Ona one (`{"id": form, "submission": {...}}`), including records exported
//! from those servers with `/`-flattened keys and server-owned `_`-prefixed fields.

use fieldforce_schemas::odk::encode_field_name;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A JSON submission reduced to what the gateway needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedJson {
    /// The client's id of the submission: the Kafka key.
    pub submission_id: String,
    /// Form identifier.
    pub form_id: String,
    /// Form version, when sent.
    pub form_version: Option<String>,
    /// Project named in the body, when any; the token must grant it.
    pub project_id: Option<String>,
    /// The id of the submission this one edits.
    pub deprecated_id: Option<String>,
    /// Device identifier, when sent.
    pub device_id: Option<String>,
    /// The answers, with field names encoded and empty answers removed.
    pub fields: Map<String, Value>,
    /// Hex SHA-256 of the canonical JSON of form id, version and answers.
    pub content_sha256: String,
}

/// Rejection of a JSON submission. Every variant is a client error (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonSubmissionError {
    /// The submission is not a JSON object.
    #[error("the submission must be a JSON object")]
    NotAnObject,
    /// No form id was found.
    #[error(
        "the submission names no form: set form_id (or id in the {{\"id\", \"submission\"}} shape)"
    )]
    MissingFormId,
    /// The submission carries no answers and no id (the shape an empty Kobo post has).
    #[error("the submission is empty and has no instanceID")]
    Empty,
    /// No id was found.
    #[error("the submission id is missing: set id, meta.instanceID or _uuid")]
    MissingId,
    /// A flattened key collides with an answer of another shape.
    #[error("the flattened field {0:?} collides with another answer")]
    FlattenConflict(String),
}

/// Parses one submission in either shape.
pub fn parse_json_submission(value: Value) -> Result<ParsedJson, JsonSubmissionError> {
    let Value::Object(mut body) = value else {
        return Err(JsonSubmissionError::NotAnObject);
    };

    let kobo_shape = body.get("submission").is_some_and(Value::is_object);
    let (form_id, mut explicit_id, raw_fields) = if kobo_shape {
        let form_id = take_string(&mut body, "id");
        let Some(Value::Object(submission)) = body.remove("submission") else {
            return Err(JsonSubmissionError::NotAnObject);
        };
        (form_id, None, submission)
    } else {
        let form_id = take_string(&mut body, "form_id");
        let id = take_string(&mut body, "id");
        let fields = match body.remove("fields") {
            Some(Value::Object(fields)) => fields,
            _ => Map::new(),
        };
        (form_id, id, fields)
    };

    // Export tools add `_id`, `_uuid`, `_submission_time` and the like: the server that
    // stored the record owns them, so none is trusted, except `_uuid` as a last-resort id.
    let uuid = raw_fields.get("_uuid").and_then(as_text);
    let fields = normalize_object(unflatten(raw_fields)?);
    let meta = fields.get("meta");
    let meta_text = |key: &str| meta.and_then(|meta| meta.get(key)).and_then(as_text);

    if fields.is_empty() && explicit_id.is_none() && meta_text("instanceID").is_none() {
        return Err(JsonSubmissionError::Empty);
    }
    let form_id = form_id.ok_or(JsonSubmissionError::MissingFormId)?;
    if explicit_id.is_none() {
        explicit_id = meta_text("instanceID").or(uuid);
    }
    let submission_id = explicit_id.ok_or(JsonSubmissionError::MissingId)?;

    let form_version = take_string(&mut body, "form_version").or_else(|| {
        fields
            .get("__version__")
            .and_then(as_text)
            .filter(|_| kobo_shape)
    });
    let deprecated_id =
        take_string(&mut body, "deprecated_id").or_else(|| meta_text("deprecatedID"));
    let device_id = take_string(&mut body, "device_id")
        .or_else(|| meta_text("deviceID"))
        .or_else(|| fields.get("deviceid").and_then(as_text));
    let project_id = take_string(&mut body, "project_id");

    let content_sha256 = content_sha256(&form_id, form_version.as_deref(), &fields);

    Ok(ParsedJson {
        submission_id,
        form_id,
        form_version,
        project_id,
        deprecated_id,
        device_id,
        fields,
        content_sha256,
    })
}

fn take_string(body: &mut Map<String, Value>, key: &str) -> Option<String> {
    body.remove(key).as_ref().and_then(as_text)
}

fn as_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(text) => text.trim().to_owned(),
        Value::Number(number) => number.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Turns `group/field` keys into nested objects and drops `_`-prefixed server fields.
fn unflatten(flat: Map<String, Value>) -> Result<Map<String, Value>, JsonSubmissionError> {
    let mut tree = Map::new();
    for (key, value) in flat {
        if key.starts_with('_') {
            continue;
        }
        let value = match value {
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::Object(object) => unflatten(object).map(Value::Object),
                        other => Ok(other),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(object) => Value::Object(unflatten(object)?),
            other => other,
        };
        let steps: Vec<&str> = key.split('/').filter(|step| !step.is_empty()).collect();
        let Some((last, parents)) = steps.split_last() else {
            continue;
        };
        let mut node = &mut tree;
        for step in parents {
            let entry = node
                .entry((*step).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            node = entry
                .as_object_mut()
                .ok_or_else(|| JsonSubmissionError::FlattenConflict(key.clone()))?;
        }
        match (node.get_mut(*last), value) {
            (Some(Value::Object(existing)), Value::Object(more)) => existing.extend(more),
            (Some(_), _) => return Err(JsonSubmissionError::FlattenConflict(key.clone())),
            (None, value) => {
                node.insert((*last).to_owned(), value);
            }
        }
    }
    Ok(tree)
}

/// Encodes field names and removes empty answers (`null`, `""`, empty groups and lists), so
/// JSON submissions follow the same rules as OpenRosa ones.
fn normalize_object(object: Map<String, Value>) -> Map<String, Value> {
    object
        .into_iter()
        .filter_map(|(key, value)| normalize(value).map(|value| (encode_field_name(&key), value)))
        .collect()
}

fn normalize(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::String(text) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                None
            } else if trimmed.len() == text.len() {
                // Most answers have no surrounding whitespace and keep their allocation.
                Some(Value::String(text))
            } else {
                Some(Value::String(trimmed.to_owned()))
            }
        }
        Value::Object(object) => {
            let object = normalize_object(object);
            (!object.is_empty()).then_some(Value::Object(object))
        }
        Value::Array(items) => {
            let items: Vec<Value> = items.into_iter().filter_map(normalize).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        other => Some(other),
    }
}

/// Returns the hex SHA-256 of the canonical JSON of
/// `{"fields": fields, "form_id": form_id, "form_version": form_version}`.
///
/// The index compares this hash with the one stored when the instance was first accepted, so
/// the bytes hashed must never change: a change would reject every resend of an older
/// submission with 409.
fn content_sha256(
    form_id: &str,
    form_version: Option<&str>,
    fields: &Map<String, Value>,
) -> String {
    // The three keys are written in sorted order, as `write_canonical` orders any object.
    let mut hasher = HashWriter(Sha256::new());
    hasher.0.update(b"{\"fields\":");
    write_canonical_object(fields, &mut hasher);
    hasher.0.update(b",\"form_id\":");
    write_json(form_id, &mut hasher);
    hasher.0.update(b",\"form_version\":");
    write_json(&form_version, &mut hasher);
    hasher.0.update(b"}");
    hex::encode(hasher.0.finalize())
}

/// Feeds JSON with object keys in sorted order, so the hash does not depend on the order a
/// client wrote them in.
fn write_canonical(value: &Value, hasher: &mut HashWriter) {
    match value {
        Value::Object(object) => write_canonical_object(object, hasher),
        Value::Array(items) => {
            hasher.0.update(b"[");
            for (position, item) in items.iter().enumerate() {
                if position > 0 {
                    hasher.0.update(b",");
                }
                write_canonical(item, hasher);
            }
            hasher.0.update(b"]");
        }
        scalar => write_json(scalar, hasher),
    }
}

fn write_canonical_object(object: &Map<String, Value>, hasher: &mut HashWriter) {
    hasher.0.update(b"{");
    // Most clients send keys already sorted, and then no sorted copy is needed.
    if object.keys().is_sorted() {
        write_members(object.iter(), hasher);
    } else {
        let mut members: Vec<(&String, &Value)> = object.iter().collect();
        members.sort_unstable_by_key(|(key, _)| *key);
        write_members(members.into_iter(), hasher);
    }
    hasher.0.update(b"}");
}

fn write_members<'a>(
    members: impl Iterator<Item = (&'a String, &'a Value)>,
    hasher: &mut HashWriter,
) {
    for (position, (key, value)) in members.enumerate() {
        if position > 0 {
            hasher.0.update(b",");
        }
        write_json(key, hasher);
        hasher.0.update(b":");
        write_canonical(value, hasher);
    }
}

/// Feeds the compact JSON of a key or a scalar, escaped as `serde_json` escapes it.
fn write_json<T: serde::Serialize + ?Sized>(value: &T, hasher: &mut HashWriter) {
    // Writing into a hasher cannot fail, and keys and scalars always serialize.
    let _ = serde_json::to_writer(&mut *hasher, value);
}

/// A SHA-256 hasher that `serde_json` can write into without an intermediate string.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kobo_shape_takes_form_and_instance_id() {
        let parsed = parse_json_submission(json!({
            "id": "market_prices",
            "submission": {
                "prices": {"maize": "120", "beans": null},
                "crops": ["maize", "beans"],
                "meta": {"instanceID": "uuid:m1"}
            }
        }))
        .unwrap();
        assert_eq!(parsed.form_id, "market_prices");
        assert_eq!(parsed.submission_id, "uuid:m1");
        assert_eq!(parsed.fields["prices"], json!({"maize": "120"}));
        assert_eq!(parsed.fields["crops"], json!(["maize", "beans"]));
    }

    #[test]
    fn export_shape_is_unflattened_without_server_fields() {
        let parsed = parse_json_submission(json!({
            "id": "clinic_visit",
            "submission": {
                "_id": 42,
                "_uuid": "c0ffee",
                "_submission_time": "2014-10-10T13:16:31",
                "meta/instanceID": "uuid:c0ffee",
                "patient/age": "31",
                "patient/sex": "f",
                "group.v2/q": "x"
            }
        }))
        .unwrap();
        assert_eq!(parsed.submission_id, "uuid:c0ffee");
        assert_eq!(parsed.fields["patient"], json!({"age": "31", "sex": "f"}));
        assert_eq!(parsed.fields["group%2Ev2"], json!({"q": "x"}));
        assert!(parsed.fields.keys().all(|key| !key.starts_with('_')));
    }

    #[test]
    fn empty_kobo_submission_is_rejected() {
        let error = parse_json_submission(json!({"id": "f", "submission": {}}));
        assert_eq!(error, Err(JsonSubmissionError::Empty));
    }

    #[test]
    fn missing_id_is_rejected() {
        let error = parse_json_submission(json!({"form_id": "f", "fields": {"a": "1"}}));
        assert_eq!(error, Err(JsonSubmissionError::MissingId));
    }

    #[test]
    fn content_hash_is_stable() {
        // Digests of the canonical text (computed with sha256sum), which entries already in
        // the index were stored with.
        let parsed = parse_json_submission(json!({
            "id": "s",
            "form_id": "f",
            "form_version": "v1",
            "fields": {"c": {"e": "say \"hi\" \u{fc}", "d": 1.5}, "b": ["x", 2, true], "a": "1"}
        }))
        .unwrap();
        assert_eq!(
            parsed.content_sha256,
            "02f7a2fc14d63c0e971bc87ccaee9916fa5a02a975fefa3533c31e08153088f5"
        );

        let parsed =
            parse_json_submission(json!({"id": "s", "form_id": "f", "fields": {"a": "1"}}))
                .unwrap();
        assert_eq!(
            parsed.content_sha256,
            "8131718f1b151e2ca4d2e8ab77529b1e959e55d38c980a6e51581991cd811858"
        );
    }

    #[test]
    fn content_hash_ignores_key_order() {
        let first = parse_json_submission(
            json!({"id": "s", "form_id": "f", "fields": {"a": "1", "b": "2"}}),
        )
        .unwrap();
        let second = parse_json_submission(
            json!({"fields": {"b": "2", "a": "1"}, "form_id": "f", "id": "s"}),
        )
        .unwrap();
        assert_eq!(first.content_sha256, second.content_sha256);
    }
}
