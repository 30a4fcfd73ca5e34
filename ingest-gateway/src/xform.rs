//! Parsing an XForm definition into the [`FormDefinition`] that the validation processor
//! checks submissions against: every instance node with its bind type and `required`, the
//! static choices of selects, and which nodes are repeats.

use std::collections::HashMap;

use fieldforce_schemas::form::{FORM_DEFINITION_VERSION, FormDefinition, FormField};
use fieldforce_schemas::odk::encode_field_name;

use crate::xml::{self, Element, XmlError};

/// Why an XForm was rejected; every variant is a client error (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XFormError {
    /// The XML itself was rejected.
    #[error(transparent)]
    Xml(#[from] XmlError),
    /// The document has no `h:head/model/instance` with a root element.
    #[error("the XForm has no model instance: expected h:html/h:head/model/instance")]
    MissingInstance,
    /// The instance root carries neither `id` nor `xmlns`.
    #[error("the XForm's instance root has no id or xmlns attribute")]
    MissingFormId,
}

/// What a bind or body control says about one node, by its path below the root.
#[derive(Debug, Default, Clone)]
struct NodeFacts {
    data_type: Option<String>,
    required: bool,
    choices: Vec<String>,
    repeat: bool,
}

/// Parses an XForm document. `registered_at_ms` and the identity come from the request.
pub fn parse_xform(
    bytes: &[u8],
    max_depth: usize,
    org_id: &str,
    project_id: &str,
    registered_at_ms: i64,
    xform_sha256: String,
) -> Result<FormDefinition, XFormError> {
    let html = xml::parse(bytes, max_depth)?;
    let head = html.child("head").ok_or(XFormError::MissingInstance)?;
    let model = head.child("model").ok_or(XFormError::MissingInstance)?;
    // The primary instance is the first one without an id; secondary instances hold choice
    // lists and lookup data.
    let instance_root = model
        .children
        .iter()
        .filter(|child| child.local_name() == "instance" && child.attribute("id").is_none())
        .find_map(|instance| instance.children.first())
        .ok_or(XFormError::MissingInstance)?;

    let form_id = instance_root
        .attribute("id")
        .or_else(|| instance_root.attribute("xmlns"))
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .ok_or(XFormError::MissingFormId)?
        .to_owned();
    let version = instance_root
        .attribute("version")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let title = head.child_text("title");

    let root_name = instance_root.local_name();
    let mut facts: HashMap<String, NodeFacts> = HashMap::new();
    for bind in model.children.iter().filter(|c| c.local_name() == "bind") {
        let Some(path) = bind
            .attribute("nodeset")
            .and_then(|nodeset| relative_path(nodeset, root_name, ""))
        else {
            continue;
        };
        let entry = facts.entry(path).or_default();
        if let Some(data_type) = bind.attribute("type") {
            entry.data_type = Some(xml::local_part(data_type.trim()).to_owned());
        }
        entry.required |= bind
            .attribute("required")
            .is_some_and(|value| value.replace(' ', "") == "true()");
    }
    if let Some(body) = html.child("body") {
        collect_controls(body, root_name, "", &mut facts);
    }

    let mut fields = Vec::new();
    collect_fields(instance_root, "", &facts, &mut fields);

    Ok(FormDefinition {
        schema_version: FORM_DEFINITION_VERSION,
        org_id: org_id.to_owned(),
        project_id: project_id.to_owned(),
        form_id,
        version,
        title,
        fields,
        registered_at_ms,
        xform_sha256,
    })
}

/// Turns a `nodeset` or `ref` into a path below the root: `/data/group/q` gives `group/q`,
/// and a relative `q` inside the group `group` gives `group/q`. Each step is encoded like an
/// answer's field name so paths match the fields of submissions.
fn relative_path(reference: &str, root_name: &str, context: &str) -> Option<String> {
    let reference = reference.trim();
    let steps: Vec<&str> = if let Some(absolute) = reference.strip_prefix('/') {
        let mut steps = absolute.split('/');
        let first = steps.next()?;
        if xml::local_part(first) != root_name {
            return None;
        }
        steps.collect()
    } else {
        context
            .split('/')
            .chain(reference.split('/'))
            .filter(|step| !step.is_empty())
            .collect()
    };
    let encoded: Vec<String> = steps
        .iter()
        .filter(|step| !step.is_empty())
        .map(|step| encode_field_name(xml::local_part(step)))
        .collect();
    (!encoded.is_empty()).then(|| encoded.join("/"))
}

/// Walks the body: groups and repeats give the context of relative refs, selects give
/// their static choices and repeats mark their node.
fn collect_controls(
    element: &Element,
    root_name: &str,
    context: &str,
    facts: &mut HashMap<String, NodeFacts>,
) {
    for control in &element.children {
        let reference = control
            .attribute("ref")
            .or_else(|| control.attribute("nodeset"));
        let path = reference.and_then(|r| relative_path(r, root_name, context));
        match control.local_name() {
            "group" | "repeat" => {
                let inner = path.clone().unwrap_or_else(|| context.to_owned());
                if control.local_name() == "repeat"
                    && let Some(path) = &path
                {
                    facts.entry(path.clone()).or_default().repeat = true;
                }
                collect_controls(control, root_name, &inner, facts);
            }
            "select1" | "select" => {
                let Some(path) = path else { continue };
                let entry = facts.entry(path).or_default();
                if entry.data_type.is_none() {
                    entry.data_type = Some(control.local_name().to_owned());
                }
                entry.choices = control
                    .children
                    .iter()
                    .filter(|item| item.local_name() == "item")
                    .filter_map(|item| item.child_text("value"))
                    .collect();
            }
            "upload" => {
                let Some(path) = path else { continue };
                let entry = facts.entry(path).or_default();
                if entry.data_type.is_none() {
                    entry.data_type = Some("binary".to_owned());
                }
            }
            _ => {}
        }
    }
}

/// Lists every leaf and repeat of the instance in document order.
fn collect_fields(
    element: &Element,
    prefix: &str,
    facts: &HashMap<String, NodeFacts>,
    fields: &mut Vec<FormField>,
) {
    let mut seen = Vec::new();
    for child in &element.children {
        let name = encode_field_name(child.local_name());
        // A repeat's template and its default occurrences are siblings of one node.
        if seen.contains(&name) {
            continue;
        }
        seen.push(name.clone());
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let fact = facts.get(&path).cloned().unwrap_or_default();
        let repeat = fact.repeat || child.attribute("template").is_some();
        if child.children.is_empty() || repeat {
            fields.push(FormField {
                path: path.clone(),
                data_type: fact.data_type.unwrap_or_else(|| "string".to_owned()),
                required: fact.required,
                choices: fact.choices,
                repeat,
            });
        }
        collect_fields(child, &path, facts, fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XFORM: &str = r#"<h:html xmlns="http://www.w3.org/2002/xforms" xmlns:h="http://www.w3.org/1999/xhtml" xmlns:jr="http://openrosa.org/javarosa">
  <h:head>
    <h:title>Water points</h:title>
    <model>
      <instance>
        <water id="water_points" version="3">
          <site_name/>
          <functional/>
          <location/>
          <visit jr:template=""><visitor/><visit_date/></visit>
          <meta><instanceID/></meta>
        </water>
      </instance>
      <instance id="lists"><root/></instance>
      <bind nodeset="/water/site_name" type="string" required="true()"/>
      <bind nodeset="/water/functional" type="select1" required="true()"/>
      <bind nodeset="/water/location" type="geopoint"/>
      <bind nodeset="/water/visit/visit_date" type="xsd:date"/>
    </model>
  </h:head>
  <h:body>
    <input ref="/water/site_name"/>
    <select1 ref="/water/functional">
      <item><label>Yes</label><value>yes</value></item>
      <item><label>No</label><value>no</value></item>
    </select1>
    <group ref="/water/visit">
      <repeat nodeset="/water/visit"><input ref="visitor"/></repeat>
    </group>
  </h:body>
</h:html>"#;

    #[test]
    fn xform_fields_carry_binds_choices_and_repeats() {
        let form = parse_xform(XFORM.as_bytes(), 32, "org", "proj", 1, "00".into()).unwrap();
        assert_eq!(form.form_id, "water_points");
        assert_eq!(form.version, "3");
        assert_eq!(form.title.as_deref(), Some("Water points"));
        let field = |path: &str| form.fields.iter().find(|f| f.path == path).unwrap();
        assert!(field("site_name").required);
        assert_eq!(field("functional").data_type, "select1");
        assert_eq!(field("functional").choices, vec!["yes", "no"]);
        assert_eq!(field("location").data_type, "geopoint");
        assert!(field("visit").repeat);
        assert_eq!(field("visit/visit_date").data_type, "date");
        assert_eq!(field("visit/visitor").data_type, "string");
        assert_eq!(field("meta/instanceID").data_type, "string");
    }

    #[test]
    fn xform_without_instance_is_rejected() {
        let error = parse_xform(b"<h:html xmlns:h=\"x\"/>", 8, "o", "p", 0, String::new());
        assert_eq!(error, Err(XFormError::MissingInstance));
    }
}
