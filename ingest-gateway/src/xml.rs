//! A small, hardened XML reader that turns a document into an element tree.
//!
//! Client XML is untrusted, so the reader rejects any DOCTYPE (which is where DTDs, external
//! entities and entity definitions live), resolves only the five predefined entities and
//! character references, and stops at a nesting depth cap. The caller caps the byte size
//! before parsing. Instance documents and XForms are small, so a tree is cheap and lets the
//! submission and form parsers walk it freely.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};

/// An XML element with its attributes, child elements and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    /// Qualified name as written (`n0:meta`).
    pub name: String,
    /// Attributes as `(qualified name, unescaped value)`, namespace declarations included.
    pub attributes: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// Concatenated text and CDATA of the element itself, untrimmed.
    pub text: String,
}

impl Element {
    /// Returns the name without its namespace prefix.
    pub fn local_name(&self) -> &str {
        local_part(&self.name)
    }

    /// Returns the value of the first attribute whose local name matches. `xmlns` matches
    /// only the default namespace declaration.
    pub fn attribute(&self, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| {
                if local == "xmlns" {
                    name == "xmlns"
                } else {
                    !name.starts_with("xmlns") && local_part(name) == local
                }
            })
            .map(|(_, value)| value.as_str())
    }

    /// Returns the first child with the given local name.
    pub fn child(&self, local: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|child| child.local_name() == local)
    }

    /// Returns the trimmed text of the first child with the given local name, when not empty.
    pub fn child_text(&self, local: &str) -> Option<String> {
        let text = self.child(local)?.text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// Returns the part of a qualified name after its prefix.
pub fn local_part(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, local)| local)
}

/// Why a document was rejected. Every variant is a client error (400); nothing is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// The document declares a DOCTYPE, which could define entities or load external ones.
    #[error("the XML document declares a DOCTYPE, which is not accepted")]
    Doctype,
    /// The document refers to an entity other than the five predefined ones.
    #[error("the XML document uses the undefined entity &{0};")]
    UndefinedEntity(String),
    /// Elements nest deeper than the configured cap.
    #[error("the XML document nests elements deeper than {0} levels")]
    TooDeep(usize),
    /// The bytes are not well-formed XML or not UTF-8.
    #[error("the XML document is not well-formed: {0}")]
    Malformed(String),
    /// The document has no root element.
    #[error("the XML document is empty")]
    Empty,
}

fn malformed(error: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed(error.to_string())
}

/// Parses a document into its root element.
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(bytes).map_err(malformed)?;
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;

    // The open elements, innermost last; a closed element is moved into its parent.
    let mut open: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;

    loop {
        let event = reader.read_event().map_err(malformed)?;
        match event {
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Start(start) => {
                if root.is_some() {
                    return Err(XmlError::Malformed("content after the root element".into()));
                }
                if open.len() >= max_depth {
                    return Err(XmlError::TooDeep(max_depth));
                }
                open.push(start_element(&start)?);
            }
            Event::Empty(start) => {
                if root.is_some() {
                    return Err(XmlError::Malformed("content after the root element".into()));
                }
                if open.len() >= max_depth {
                    return Err(XmlError::TooDeep(max_depth));
                }
                let element = start_element(&start)?;
                close(&mut open, &mut root, element);
            }
            Event::End(_) => {
                let element = open
                    .pop()
                    .ok_or_else(|| XmlError::Malformed("unexpected end tag".into()))?;
                close(&mut open, &mut root, element);
            }
            Event::Text(text) => {
                let decoded = text.decode().map_err(malformed)?;
                append_text(&mut open, &decoded)?;
            }
            Event::CData(data) => {
                let decoded = data.decode().map_err(malformed)?;
                append_text(&mut open, &decoded)?;
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().map_err(malformed)? {
                    Some(character) => character.to_string(),
                    None => {
                        let name = reference.decode().map_err(malformed)?;
                        resolve_predefined_entity(&name)
                            .ok_or_else(|| XmlError::UndefinedEntity(name.to_string()))?
                            .to_owned()
                    }
                };
                append_text(&mut open, &resolved)?;
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }

    if !open.is_empty() {
        return Err(XmlError::Malformed(
            "the document ends inside an element".into(),
        ));
    }
    root.ok_or(XmlError::Empty)
}

fn start_element(start: &BytesStart<'_>) -> Result<Element, XmlError> {
    let name = std::str::from_utf8(start.name().as_ref())
        .map_err(malformed)?
        .to_owned();
    let mut attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(malformed)?;
        let key = std::str::from_utf8(attribute.key.as_ref())
            .map_err(malformed)?
            .to_owned();
        // Attribute unescaping resolves only predefined entities and character references
        // and fails on any other entity.
        let value = attribute.unescape_value().map_err(|error| match error {
            quick_xml::Error::Escape(quick_xml::escape::EscapeError::UnrecognizedEntity(
                _,
                name,
            )) => XmlError::UndefinedEntity(name),
            other => malformed(other),
        })?;
        attributes.push((key, value.into_owned()));
    }
    Ok(Element {
        name,
        attributes,
        children: Vec::new(),
        text: String::new(),
    })
}

fn close(open: &mut [Element], root: &mut Option<Element>, element: Element) {
    match open.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn append_text(open: &mut [Element], text: &str) -> Result<(), XmlError> {
    match open.last_mut() {
        Some(element) => {
            element.text.push_str(text);
            Ok(())
        }
        // Whitespace around the root is allowed; anything else is not XML.
        None if text.trim().is_empty() => Ok(()),
        None => Err(XmlError::Malformed("text outside the root element".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaced_tree() {
        let root = parse(
            br#"<?xml version="1.0"?><data id="f" xmlns="urn:x"><a>1 &amp; 2</a><n0:meta xmlns:n0="urn:m"><n0:instanceID>u</n0:instanceID></n0:meta></data>"#,
            8,
        )
        .unwrap();
        assert_eq!(root.attribute("id"), Some("f"));
        assert_eq!(root.attribute("xmlns"), Some("urn:x"));
        assert_eq!(root.child_text("a").as_deref(), Some("1 & 2"));
        let meta = root.child("meta").unwrap();
        assert_eq!(meta.child_text("instanceID").as_deref(), Some("u"));
    }

    #[test]
    fn rejects_doctype() {
        let xml = br#"<!DOCTYPE data [<!ENTITY x "boom">]><data>&x;</data>"#;
        assert_eq!(parse(xml, 8), Err(XmlError::Doctype));
    }

    #[test]
    fn rejects_undefined_entity() {
        assert_eq!(
            parse(b"<data>&x;</data>", 8),
            Err(XmlError::UndefinedEntity("x".into()))
        );
        assert!(matches!(
            parse(b"<data a=\"&x;\"/>", 8),
            Err(XmlError::UndefinedEntity(_))
        ));
    }

    #[test]
    fn rejects_deep_nesting() {
        let xml = "<a>".repeat(10) + &"</a>".repeat(10);
        assert_eq!(parse(xml.as_bytes(), 5), Err(XmlError::TooDeep(5)));
    }

    #[test]
    fn rejects_mismatched_tags() {
        assert!(matches!(
            parse(b"<a><b></a>", 8),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(parse(b"<a>", 8), Err(XmlError::Malformed(_))));
    }
}
