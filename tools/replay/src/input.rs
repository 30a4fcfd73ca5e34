//! Reading a folder of submissions the way the clients that made them would send them.
//!
//! - An XML file whose root is `h:html` is an XForm definition, registered before anything
//!   else.
//! - Any other XML file is an OpenRosa instance (plain or an encrypted-submission manifest).
//!   Its attachments are the files beside it that it names: a file of exactly that name, or
//!   one whose name ends in `__` and that name (the convention of folders that collect files
//!   from several servers), or else the only file whose name ends with that name.
//! - A folder holding one XML file and other files is an instance as ODK Collect keeps it on
//!   the device: the XML plus its attachments.
//! - A JSON file is a JSON API submission.
//!
//! Everything else (keys, notes, stray binaries) is listed as skipped. Files are taken in
//! name order, so an original comes before its edit when their names sort that way.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;

use crate::client::AttachmentFile;

/// One thing to send to the gateway.
#[derive(Debug)]
pub enum Item {
    /// An XForm to register.
    Form {
        /// Path it was read from.
        path: PathBuf,
        /// The XForm document.
        xform: Bytes,
    },
    /// An OpenRosa instance with the attachments found for it.
    OpenRosa {
        /// Path it was read from.
        path: PathBuf,
        /// The instance XML.
        xml: Bytes,
        /// Files found for the names it refers to.
        attachments: Vec<AttachmentFile>,
    },
    /// A JSON API submission.
    Json {
        /// Path it was read from.
        path: PathBuf,
        /// The JSON document.
        body: Bytes,
    },
    /// A file that is not a submission.
    Skipped {
        /// Path it was found at.
        path: PathBuf,
        /// Reason it is not sent.
        reason: String,
    },
}

/// Reads every item in a folder (one level deep for instance folders).
pub fn read_folder(folder: &Path) -> anyhow::Result<Vec<Item>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read input folder {}", folder.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    entries.sort();

    let files: Vec<&PathBuf> = entries.iter().filter(|path| path.is_file()).collect();
    let mut forms = Vec::new();
    let mut items = Vec::new();
    let mut used_as_attachment = Vec::new();

    for path in &files {
        match extension(path).as_str() {
            "xml" => {
                let xml = Bytes::from(std::fs::read(path)?);
                if is_xform(&xml) {
                    forms.push(Item::Form {
                        path: (*path).clone(),
                        xform: xml,
                    });
                    continue;
                }
                let siblings: Vec<&PathBuf> = files
                    .iter()
                    .copied()
                    .filter(|other| *other != *path)
                    .collect();
                let (attachments, used) = find_attachments(&xml, &siblings)?;
                used_as_attachment.extend(used);
                items.push(Item::OpenRosa {
                    path: (*path).clone(),
                    xml,
                    attachments,
                });
            }
            "json" => items.push(Item::Json {
                path: (*path).clone(),
                body: Bytes::from(std::fs::read(path)?),
            }),
            _ => {}
        }
    }

    for path in &files {
        let extension = extension(path);
        if extension != "xml" && extension != "json" && !used_as_attachment.contains(*path) {
            items.push(Item::Skipped {
                path: (*path).clone(),
                reason: "not a submission, and no submission beside it names it".to_owned(),
            });
        }
    }

    for folder in entries.iter().filter(|path| path.is_dir()) {
        items.push(read_instance_folder(folder)?);
    }

    forms.extend(items);
    Ok(forms)
}

/// Reads an instance folder as ODK Collect keeps it: one XML file plus attachment files.
fn read_instance_folder(folder: &Path) -> anyhow::Result<Item> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let xml_files: Vec<&PathBuf> = files
        .iter()
        .filter(|path| extension(path) == "xml")
        .collect();
    let [instance] = xml_files.as_slice() else {
        return Ok(Item::Skipped {
            path: folder.to_owned(),
            reason: format!(
                "an instance folder holds one XML file, found {}",
                xml_files.len()
            ),
        });
    };
    let xml = Bytes::from(std::fs::read(instance)?);
    let mut attachments = Vec::new();
    for path in files.iter().filter(|path| *path != *instance) {
        attachments.push(AttachmentFile {
            name: file_name(path),
            bytes: Bytes::from(std::fs::read(path)?),
        });
    }
    Ok(Item::OpenRosa {
        path: (*instance).clone(),
        xml,
        attachments,
    })
}

/// Finds the files an instance names among the files beside it.
fn find_attachments(
    xml: &[u8],
    siblings: &[&PathBuf],
) -> anyhow::Result<(Vec<AttachmentFile>, Vec<PathBuf>)> {
    let text = String::from_utf8_lossy(xml);
    let mut attachments = Vec::new();
    let mut used = Vec::new();
    for name in named_files(&text) {
        let exact = siblings.iter().find(|path| {
            let file = file_name(path);
            file == name || file.ends_with(&format!("__{name}"))
        });
        let by_suffix: Vec<&&PathBuf> = siblings
            .iter()
            .filter(|path| file_name(path).ends_with(&name))
            .collect();
        let found = exact.or(match by_suffix.as_slice() {
            [only] => Some(*only),
            _ => None,
        });
        if let Some(path) = found {
            attachments.push(AttachmentFile {
                name: name.clone(),
                bytes: Bytes::from(std::fs::read(path)?),
            });
            used.push((*path).clone());
        }
    }
    Ok((attachments, used))
}

/// Returns the element texts that look like file names (a dot and a short extension, no
/// spaces), which is how OpenRosa instances refer to their attachments.
fn named_files(xml: &str) -> Vec<String> {
    let mut names = Vec::new();
    for piece in xml.split('>').skip(1) {
        let Some(text) = piece.split('<').next() else {
            continue;
        };
        let text = text.trim();
        let Some((stem, extension)) = text.rsplit_once('.') else {
            continue;
        };
        let looks_like_file = !stem.is_empty()
            && (1..=5).contains(&extension.len())
            && extension.chars().all(|c| c.is_ascii_alphanumeric())
            && !extension.chars().all(|c| c.is_ascii_digit())
            && !text.contains(char::is_whitespace);
        if looks_like_file && !names.iter().any(|known| known == text) {
            names.push(text.to_owned());
        }
    }
    names
}

fn is_xform(xml: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&xml[..xml.len().min(2048)]);
    head.contains("<h:html") || head.contains("<html")
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_files_finds_media_and_encrypted_parts() {
        let xml = "<data><photo>1424308569120.jpg</photo><n>3.5</n><w>hello world.</w>\
                   <encryptedXmlFile>submission.xml.enc</encryptedXmlFile></data>";
        assert_eq!(
            named_files(xml),
            vec!["1424308569120.jpg", "submission.xml.enc"]
        );
    }

    #[test]
    fn folder_items_come_forms_first_and_attach_named_files() {
        let folder = std::env::temp_dir().join(format!("replay-input-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(folder.join("household_2024-05-01")).unwrap();
        std::fs::write(
            folder.join("a.xml"),
            "<data id=\"f\"><p>x__photo.jpg</p></data>",
        )
        .unwrap();
        std::fs::write(folder.join("b.form.xml"), "<h:html><h:head/></h:html>").unwrap();
        std::fs::write(folder.join("key.pem"), "secret").unwrap();
        std::fs::write(folder.join("household_2024-05-01/instance.xml"), "<data/>").unwrap();
        std::fs::write(folder.join("household_2024-05-01/photo.jpg"), "jpeg").unwrap();

        let items = read_folder(&folder).unwrap();

        assert!(matches!(items[0], Item::Form { .. }));
        assert!(matches!(&items[1], Item::OpenRosa { attachments, .. } if attachments.is_empty()));
        assert!(matches!(&items[2], Item::Skipped { .. }));
        match &items[3] {
            Item::OpenRosa { attachments, .. } => assert_eq!(attachments[0].name, "photo.jpg"),
            other => panic!("expected the instance folder, got {other:?}"),
        }
        std::fs::remove_dir_all(folder).unwrap();
    }
}
