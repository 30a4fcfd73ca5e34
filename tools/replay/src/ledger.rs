//! The ledger of accepted submissions: one JSON line per submission the gateway accepted,
//! appended by `replay` and `load` and read by `summary` to know what must be stored.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One accepted submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// Submission id the gateway reported, or the instanceID the client sent.
    pub submission_id: String,
    /// `meta/deprecatedID` of an edit: the version it supersedes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_id: Option<String>,
    /// Client clock when the gateway's success answer arrived, in milliseconds since the epoch.
    pub accepted_at_ms: i64,
}

/// Appends entries to the ledger file, creating it and its folder when missing.
pub fn append(path: &Path, entries: &[Accepted]) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut text = String::new();
    for entry in entries {
        text.push_str(&serde_json::to_string(entry)?);
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Reads every entry; a missing file is an empty ledger.
pub fn read(path: &Path) -> anyhow::Result<Vec<Accepted>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

/// Returns the current time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Finds the text of the first element with the given local name, in any namespace.
pub fn element_text(xml: &str, local_name: &str) -> Option<String> {
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let tag_end = rest.find('>')?;
        let tag = &rest[..tag_end];
        let name = tag.split_whitespace().next().unwrap_or_default();
        let local = name.rsplit(':').next().unwrap_or_default();
        if local == local_name && !tag.ends_with('/') {
            let body = &rest[tag_end + 1..];
            let end = body.find('<')?;
            let text = body[..end].trim();
            return (!text.is_empty()).then(|| text.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_text_ignores_namespace_prefix() {
        let xml =
            "<data><n0:meta xmlns:n0=\"x\"><n0:instanceID>uuid:1</n0:instanceID></n0:meta></data>";
        assert_eq!(element_text(xml, "instanceID").as_deref(), Some("uuid:1"));
        assert_eq!(element_text(xml, "deprecatedID"), None);
    }
}
