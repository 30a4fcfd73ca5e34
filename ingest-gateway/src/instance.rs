//! Turning an OpenRosa instance document into the parts of a submission: form identity,
//! instanceID and deprecatedID, the answers as a JSON tree, the files it names, and the
//! manifest of an encrypted submission.

use fieldforce_schemas::odk::encode_field_name;
use fieldforce_schemas::submission::EncryptedSubmission;
use serde_json::{Map, Value};

use crate::xml::{self, Element, XmlError};

/// File extensions that mark an answer as the name of an attachment. Binary questions carry
/// only a file name, so without the form this is the rule that spots them.
const MEDIA_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "bmp", "webp", "heic", "pdf", "mp4", "3gp", "3gpp", "mov", "webm",
    "m4a", "aac", "amr", "mp3", "ogg", "oga", "opus", "wav", "osm", "csv", "zip",
];

/// The parts of an instance document the gateway uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedInstance {
    /// The root's `id` attribute, or its `xmlns` for CommCare forms.
    pub form_id: String,
    /// The root's `version` attribute.
    pub form_version: Option<String>,
    /// `meta/instanceID`, or the root's `instanceID` attribute.
    pub instance_id: String,
    /// `meta/deprecatedID` of an edit.
    pub deprecated_id: Option<String>,
    /// `meta/deviceID` or a top-level `deviceid`.
    pub device_id: Option<String>,
    /// The answers: groups as objects, repeated siblings as arrays, empty answers absent.
    pub fields: Map<String, Value>,
    /// File names the answers refer to, in document order, without duplicates.
    pub referenced_files: Vec<String>,
    /// The manifest of an encrypted submission.
    pub encrypted: Option<EncryptedSubmission>,
}

/// Rejection of an instance document. Every variant is a client error (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// The XML itself was rejected.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The root carries neither `id` nor `xmlns`.
    #[error("the submission names no form: its root element has no id or xmlns attribute")]
    MissingFormId,
    /// Neither `meta/instanceID` nor the root's `instanceID` attribute is present.
    #[error("the submission has no instanceID: add meta/instanceID")]
    MissingInstanceId,
    /// An encrypted manifest lacks a required element.
    #[error("the encrypted submission's manifest has no {0} element")]
    IncompleteManifest(&'static str),
}

/// Parses an instance document (or the manifest of an encrypted one).
pub fn parse_instance(bytes: &[u8], max_depth: usize) -> Result<ParsedInstance, InstanceError> {
    let root = xml::parse(bytes, max_depth)?;

    let form_id = root
        .attribute("id")
        .or_else(|| root.attribute("xmlns"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or(InstanceError::MissingFormId)?
        .to_owned();
    let form_version = root
        .attribute("version")
        .map(str::trim)
        .filter(|version| !version.is_empty())
        .map(str::to_owned);

    let meta = root.child("meta");
    let instance_id = meta
        .and_then(|meta| meta.child_text("instanceID"))
        .or_else(|| non_empty(root.attribute("instanceID")))
        .ok_or(InstanceError::MissingInstanceId)?;
    let deprecated_id = meta.and_then(|meta| meta.child_text("deprecatedID"));
    let device_id = meta
        .and_then(|meta| {
            meta.child_text("deviceID")
                .or_else(|| meta.child_text("deviceid"))
        })
        .or_else(|| root.child_text("deviceid"))
        .or_else(|| root.child_text("deviceID"));

    let encrypted = root
        .attribute("encrypted")
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("yes"));
    if encrypted {
        return parse_manifest(
            &root,
            form_id,
            form_version,
            instance_id,
            deprecated_id,
            device_id,
        );
    }

    let fields = match element_value(&root) {
        Some(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    let mut referenced_files = Vec::new();
    collect_file_names(&root, &mut referenced_files);

    Ok(ParsedInstance {
        form_id,
        form_version,
        instance_id,
        deprecated_id,
        device_id,
        fields,
        referenced_files,
        encrypted: None,
    })
}

/// Reads an encrypted submission's manifest: the wrapped key, the encrypted instance file and
/// the media files, keeping only the clear `meta` group as fields.
fn parse_manifest(
    root: &Element,
    form_id: String,
    form_version: Option<String>,
    instance_id: String,
    deprecated_id: Option<String>,
    device_id: Option<String>,
) -> Result<ParsedInstance, InstanceError> {
    let base64_encrypted_key = root
        .child_text("base64EncryptedKey")
        .ok_or(InstanceError::IncompleteManifest("base64EncryptedKey"))?;
    let encrypted_xml_file = root
        .child_text("encryptedXmlFile")
        .ok_or(InstanceError::IncompleteManifest("encryptedXmlFile"))?;
    let encrypted_signature = root.child_text("base64EncryptedElementSignature");

    let mut referenced_files = vec![encrypted_xml_file.clone()];
    for media in root.children.iter().filter(|c| c.local_name() == "media") {
        for file in media.children.iter().filter(|c| c.local_name() == "file") {
            let name = file.text.trim();
            if !name.is_empty() && !referenced_files.iter().any(|known| known == name) {
                referenced_files.push(name.to_owned());
            }
        }
    }

    let mut fields = Map::new();
    if let Some(meta) = root.child("meta").and_then(element_value) {
        fields.insert("meta".to_owned(), meta);
    }

    Ok(ParsedInstance {
        form_id,
        form_version,
        instance_id,
        deprecated_id,
        device_id,
        fields,
        referenced_files,
        encrypted: Some(EncryptedSubmission {
            base64_encrypted_key,
            encrypted_signature,
            encrypted_xml_file,
        }),
    })
}

fn non_empty(text: Option<&str>) -> Option<String> {
    text.map(str::trim)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

/// Converts an element to its JSON answer: an object for a group, the trimmed text for a
/// leaf, and `None` when it holds no answer at all, so that empty answers are absent rather
/// than `""`.
fn element_value(element: &Element) -> Option<Value> {
    if element.children.is_empty() {
        let text = element.text.trim();
        return (!text.is_empty()).then(|| Value::String(text.to_owned()));
    }

    let mut group = Map::new();
    for child in &element.children {
        let Some(value) = element_value(child) else {
            continue;
        };
        let key = encode_field_name(child.local_name());
        // A repeat writes one sibling element per occurrence, so a second sibling with the
        // same name turns the answer into an array.
        match group.get_mut(&key) {
            None => {
                group.insert(key, value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
    (!group.is_empty()).then_some(Value::Object(group))
}

/// Whether an answer looks like the name of an attachment: one word ending in a media
/// extension.
pub fn looks_like_file_name(text: &str) -> bool {
    if text.is_empty() || text.contains(char::is_whitespace) || text.contains('/') {
        return false;
    }
    let Some((stem, extension)) = text.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && MEDIA_EXTENSIONS
            .iter()
            .any(|known| extension.eq_ignore_ascii_case(known))
}

fn collect_file_names(element: &Element, names: &mut Vec<String>) {
    if element.children.is_empty() {
        let text = element.text.trim();
        if looks_like_file_name(text) && !names.iter().any(|known| known == text) {
            names.push(text.to_owned());
        }
        return;
    }
    for child in &element.children {
        collect_file_names(child, names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SURVEY: &str = r#"<?xml version='1.0' ?>
<household id="household_survey" version="2024031501">
  <respondent>
    <name>  Amina
    </name>
    <water_source>borehole
        </water_source>
    <age/>
  </respondent>
  <member><member_name>Juma</member_name></member>
  <member><member_name>Neema</member_name></member>
  <Q2.1>yes</Q2.1>
  <photo>house_front.jpg</photo>
  <deviceid>collect:abc123</deviceid>
  <orx:meta xmlns:orx="http://openrosa.org/xforms">
    <orx:instanceID>uuid:11111111-2222-3333-4444-555555555555</orx:instanceID>
  </orx:meta>
</household>"#;

    #[test]
    fn instance_fields_follow_the_tree() {
        let parsed = parse_instance(SURVEY.as_bytes(), 32).unwrap();
        assert_eq!(parsed.form_id, "household_survey");
        assert_eq!(parsed.form_version.as_deref(), Some("2024031501"));
        assert_eq!(
            parsed.instance_id,
            "uuid:11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(parsed.device_id.as_deref(), Some("collect:abc123"));
        let fields = Value::Object(parsed.fields);
        assert_eq!(fields["respondent"]["name"], "Amina");
        assert_eq!(fields["respondent"]["water_source"], "borehole");
        assert!(fields["respondent"].get("age").is_none());
        assert_eq!(fields["member"][1]["member_name"], "Neema");
        assert_eq!(fields["Q2%2E1"], "yes");
        assert_eq!(
            fields["meta"]["instanceID"],
            "uuid:11111111-2222-3333-4444-555555555555"
        );
        assert_eq!(parsed.referenced_files, vec!["house_front.jpg"]);
    }

    #[test]
    fn instance_id_falls_back_to_root_attribute() {
        let parsed =
            parse_instance(br#"<data id="f" instanceID="uuid:x"><a>1</a></data>"#, 8).unwrap();
        assert_eq!(parsed.instance_id, "uuid:x");
    }

    #[test]
    fn commcare_form_id_is_xmlns() {
        let xml = br#"<data xmlns="http://example.org/forms/visit"><n1:meta xmlns:n1="http://commcarehq.org/jr/xforms"><n1:deviceID>d1</n1:deviceID><n1:instanceID>abc</n1:instanceID></n1:meta></data>"#;
        let parsed = parse_instance(xml, 8).unwrap();
        assert_eq!(parsed.form_id, "http://example.org/forms/visit");
        assert_eq!(parsed.instance_id, "abc");
        assert_eq!(parsed.device_id.as_deref(), Some("d1"));
    }

    #[test]
    fn missing_instance_id_is_rejected() {
        assert_eq!(
            parse_instance(br#"<data id="f"><a>1</a></data>"#, 8),
            Err(InstanceError::MissingInstanceId)
        );
    }

    #[test]
    fn encrypted_manifest_keeps_only_meta() {
        let xml = br#"<data id="secret" encrypted="yes" xmlns="http://opendatakit.org/submissions"><base64EncryptedKey>S0VZ</base64EncryptedKey><orx:meta xmlns:orx="http://openrosa.org/xforms"><orx:instanceID>uuid:e1</orx:instanceID></orx:meta><media><file>a.jpg.enc</file></media><encryptedXmlFile>submission.xml.enc</encryptedXmlFile></data>"#;
        let parsed = parse_instance(xml, 8).unwrap();
        let encrypted = parsed.encrypted.unwrap();
        assert_eq!(encrypted.encrypted_xml_file, "submission.xml.enc");
        assert_eq!(encrypted.base64_encrypted_key, "S0VZ");
        assert_eq!(
            parsed.referenced_files,
            vec!["submission.xml.enc", "a.jpg.enc"]
        );
        assert_eq!(parsed.fields.len(), 1);
    }

    #[test]
    fn file_names_need_a_media_extension() {
        assert!(looks_like_file_name("1335783522563.jpg"));
        assert!(looks_like_file_name("IMG_2235.JPG"));
        assert!(!looks_like_file_name("Larry Again"));
        assert!(!looks_like_file_name("2018.04"));
        assert!(!looks_like_file_name(".jpg"));
    }
}
