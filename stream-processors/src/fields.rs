//! Walking the answers tree of a submission: groups are JSON objects, repeats are arrays of
//! objects (or a single object when the client sent one instance), leaves are strings.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// Returns the text of a leaf answer. Numbers and booleans, which JSON clients send, are
/// written as text; an empty string counts as no answer.
pub fn leaf_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(text) if text.trim().is_empty() => None,
        Value::String(text) => Some(Cow::Borrowed(text.trim())),
        Value::Number(number) => Some(Cow::Owned(number.to_string())),
        Value::Bool(flag) => Some(Cow::Owned(flag.to_string())),
        // A select-multiple sent as a JSON list becomes the space-separated XForm form.
        Value::Array(items) if !items.is_empty() && items.iter().all(|item| !item.is_object()) => {
            let parts: Vec<Cow<'_, str>> = items.iter().filter_map(leaf_text).collect();
            if parts.is_empty() {
                None
            } else {
                Some(Cow::Owned(parts.join(" ")))
            }
        }
        _ => None,
    }
}

/// Every leaf under `fields` with its slash-separated path, in document order. Instances of a
/// repeat share the path of the repeat.
pub fn leaves(fields: &Map<String, Value>) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    collect_leaves(fields, "", &mut found);
    found
}

fn collect_leaves<'a>(
    fields: &'a Map<String, Value>,
    prefix: &str,
    found: &mut Vec<(String, &'a Value)>,
) {
    for (name, value) in fields {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match value {
            Value::Object(group) => collect_leaves(group, &path, found),
            Value::Array(items) if items.iter().any(Value::is_object) => {
                for item in items {
                    if let Value::Object(group) = item {
                        collect_leaves(group, &path, found);
                    }
                }
            }
            _ => found.push((path, value)),
        }
    }
}

/// Every value found at `path`, descending into each instance of a repeat on the way.
pub fn values_at<'a>(fields: &'a Map<String, Value>, path: &str) -> Vec<&'a Value> {
    let mut current: Vec<&Value> = Vec::new();
    let mut segments = path.split('/');
    let Some(first) = segments.next() else {
        return current;
    };
    current.extend(fields.get(first));
    for segment in segments {
        let mut next = Vec::new();
        for value in current {
            match value {
                Value::Object(group) => next.extend(group.get(segment)),
                Value::Array(items) => {
                    for item in items {
                        if let Value::Object(group) = item {
                            next.extend(group.get(segment));
                        }
                    }
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

/// Every text answer at `path`, one per repeat instance.
pub fn texts_at<'a>(fields: &'a Map<String, Value>, path: &str) -> Vec<Cow<'a, str>> {
    values_at(fields, path)
        .into_iter()
        .filter_map(leaf_text)
        .collect()
}

/// The first text answer found at any of `paths`.
pub fn first_text<'a>(fields: &'a Map<String, Value>, paths: &[&str]) -> Option<Cow<'a, str>> {
    paths
        .iter()
        .find_map(|path| texts_at(fields, path).into_iter().next())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("fixture is an object"),
        }
    }

    #[test]
    fn values_descend_into_repeat_instances() {
        let fields = map(json!({
            "household": [{"name": "Ama"}, {"name": "Kofi"}],
            "group": {"age": "4"}
        }));
        assert_eq!(texts_at(&fields, "household/name"), vec!["Ama", "Kofi"]);
        assert_eq!(texts_at(&fields, "group/age"), vec!["4"]);
        assert!(texts_at(&fields, "group/missing").is_empty());
    }

    #[test]
    fn leaves_list_repeat_children_under_one_path() {
        let fields = map(json!({"household": [{"name": "Ama"}, {"name": ""}], "q": "1"}));
        let paths: Vec<String> = leaves(&fields).into_iter().map(|(path, _)| path).collect();
        assert_eq!(paths, vec!["household/name", "household/name", "q"]);
    }

    #[test]
    fn list_answer_reads_as_space_separated() {
        assert_eq!(leaf_text(&json!(["a", "b"])).as_deref(), Some("a b"));
        assert_eq!(leaf_text(&json!("  ")), None);
        assert_eq!(leaf_text(&json!(3)).as_deref(), Some("3"));
    }
}
