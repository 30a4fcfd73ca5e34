//! Form definitions, published on a compacted topic keyed by [`FormDefinition::topic_key`] so
//! that the validation processor knows every registered form version.

use serde::{Deserialize, Serialize};

/// Version of [`FormDefinition`] written by this build.
pub const FORM_DEFINITION_VERSION: u32 = 1;

/// A registered XForm version, parsed into the fields validation needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormDefinition {
    /// Contract version the producer wrote.
    pub schema_version: u32,
    /// Organisation that registered the form.
    pub org_id: String,
    /// Project the form belongs to.
    pub project_id: String,
    /// Form identifier (the instance root's `id` attribute, or its `xmlns`).
    pub form_id: String,
    /// Form version (the instance root's `version` attribute); empty when the form has none.
    pub version: String,
    /// Title from the XForm `h:title`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Every field the form defines, in document order.
    pub fields: Vec<FormField>,
    /// Gateway clock when the version was registered, in milliseconds since the Unix epoch.
    pub registered_at_ms: i64,
    /// Hex SHA-256 of the XForm document as registered.
    pub xform_sha256: String,
}

impl FormDefinition {
    /// Returns the compacted-topic key: one record per organisation, project, form and version.
    pub fn topic_key(&self) -> String {
        form_topic_key(&self.org_id, &self.project_id, &self.form_id, &self.version)
    }
}

/// Builds the compacted-topic key of a form version.
pub fn form_topic_key(org_id: &str, project_id: &str, form_id: &str, version: &str) -> String {
    // Joined rather than formatted: the processors build this key for every record, and
    // `format!` took several times as many instructions.
    [org_id, project_id, form_id, version].join("/")
}

/// One field of a form, from its `bind` and body control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormField {
    /// Slash-separated path inside the instance, without the root (`group/field`), with each
    /// name encoded as in [`crate::odk::encode_field_name`].
    pub path: String,
    /// XForm data type from the bind's `type` (`string`, `int`, `decimal`, `date`,
    /// `dateTime`, `time`, `geopoint`, `geotrace`, `geoshape`, `select1`, `select`, `binary`,
    /// `barcode`); `string` when the bind has none.
    pub data_type: String,
    /// Whether the bind says `required="true()"`. Relevance is not evaluated, so a required
    /// field inside a skipped group is still reported.
    #[serde(default)]
    pub required: bool,
    /// Allowed values of a select with static choices; empty for free answers and for
    /// choices loaded from an external file.
    #[serde(default)]
    pub choices: Vec<String>,
    /// Whether the node is a repeat, which may occur any number of times.
    #[serde(default)]
    pub repeat: bool,
}
