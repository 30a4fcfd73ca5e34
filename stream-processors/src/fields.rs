//! Walking the answers tree of a submission: groups are JSON objects, repeats are arrays of
//! objects (or a single object when the client sent one instance), leaves are strings.
//!
//! The walks run on [`Answer`], a tree that borrows its names and texts from the record's
//! bytes where they need no unescaping. Decoding the answers into `serde_json::Map` instead
//! (an owned string and a hashed insert per name, an owned string per answer) was the largest
//! single cost of a processor in `perf` profiles. Code that holds a decoded `Map` borrows it
//! as a tree with [`Answer::group_of`].

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// One answer, or a group or list of answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<'a> {
    /// JSON `null`.
    Null,
    /// A boolean, as JSON clients send it.
    Bool(bool),
    /// A number, as JSON clients send it.
    Number(Number),
    /// A text answer: every OpenRosa answer, and most JSON ones.
    Text(Cow<'a, str>),
    /// A repeat's instances, or a select-multiple sent as a JSON list.
    List(Vec<Answer<'a>>),
    /// A group, with its answers in document order.
    Group(Vec<(Cow<'a, str>, Answer<'a>)>),
}

impl<'a> Answer<'a> {
    /// Borrows the answers of a decoded submission as a tree.
    pub fn group_of(fields: &'a Map<String, Value>) -> Self {
        Self::Group(
            fields
                .iter()
                .map(|(name, value)| (Cow::Borrowed(name.as_str()), Self::borrow(value)))
                .collect(),
        )
    }

    fn borrow(value: &'a Value) -> Self {
        match value {
            Value::Null => Self::Null,
            Value::Bool(flag) => Self::Bool(*flag),
            Value::Number(number) => Self::Number(number.clone()),
            Value::String(text) => Self::Text(Cow::Borrowed(text)),
            Value::Array(items) => Self::List(items.iter().map(Self::borrow).collect()),
            Value::Object(group) => Self::group_of(group),
        }
    }

    /// Returns the answer called `name` in a group; the last one when a client sent the name
    /// twice, as a decoded JSON object keeps it.
    pub fn child(&self, name: &str) -> Option<&Self> {
        match self {
            Self::Group(children) => children
                .iter()
                .rfind(|(child, _)| child == name)
                .map(|(_, answer)| answer),
            _ => None,
        }
    }

    fn is_group(&self) -> bool {
        matches!(self, Self::Group(_))
    }

    /// Returns whether this is a list that contains a group: the instances of a repeat.
    pub fn is_repeat(&self) -> bool {
        matches!(self, Self::List(items) if items.iter().any(Self::is_group))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Answer<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnswerVisitor(PhantomData))
    }
}

struct AnswerVisitor<'a>(PhantomData<Answer<'a>>);

impl<'de: 'a, 'a> Visitor<'de> for AnswerVisitor<'a> {
    type Value = Answer<'a>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON answer")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Answer::Null)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Answer::Null)
    }

    fn visit_bool<E>(self, flag: bool) -> Result<Self::Value, E> {
        Ok(Answer::Bool(flag))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Self::Value, E> {
        Ok(Answer::Number(number.into()))
    }

    fn visit_u64<E>(self, number: u64) -> Result<Self::Value, E> {
        Ok(Answer::Number(number.into()))
    }

    fn visit_f64<E>(self, number: f64) -> Result<Self::Value, E> {
        // JSON has no NaN or infinity, so a decoded float always converts.
        Ok(Number::from_f64(number).map_or(Answer::Null, Answer::Number))
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Answer::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Answer::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(Answer::Text(Cow::Owned(text)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self::Value, A::Error> {
        let mut list = Vec::with_capacity(items.size_hint().unwrap_or(0));
        while let Some(item) = items.next_element()? {
            list.push(item);
        }
        Ok(Answer::List(list))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
        // serde_json gives no size hint. Room for a few answers saves the first doublings of
        // most groups.
        let mut group = Vec::with_capacity(entries.size_hint().unwrap_or(8));
        while let Some((BorrowedStr(name), answer)) = entries.next_entry()? {
            group.push((name, answer));
        }
        Ok(Answer::Group(group))
    }
}

/// A JSON string, borrowed from the input where it has no escapes: an answer's name, or a
/// member of a record that a view checks without keeping.
#[derive(Debug)]
pub struct BorrowedStr<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<BorrowedStr<'a>>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = BorrowedStr<'a>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

/// Returns the text of a leaf answer. Numbers and booleans, which JSON clients send, are
/// written as text; an empty string counts as no answer.
pub fn leaf_text<'a>(answer: &'a Answer<'_>) -> Option<Cow<'a, str>> {
    match answer {
        Answer::Text(text) if text.trim().is_empty() => None,
        Answer::Text(text) => Some(Cow::Borrowed(text.trim())),
        Answer::Number(number) => Some(Cow::Owned(number.to_string())),
        Answer::Bool(flag) => Some(Cow::Owned(flag.to_string())),
        // A select-multiple sent as a JSON list becomes the space-separated XForm form.
        Answer::List(items) if !items.is_empty() && !items.iter().any(Answer::is_group) => {
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

/// Calls `visit` with every leaf under the group `fields` and its slash-separated path, in
/// document order. Instances of a repeat share the path of the repeat.
pub fn for_each_leaf<'a>(fields: &'a Answer<'a>, mut visit: impl FnMut(&str, &'a Answer<'a>)) {
    // Room for the usual depth of groups, so the path is not grown on most records.
    let mut path = String::with_capacity(64);
    walk_leaves(fields, &mut path, &mut visit);
}

fn walk_leaves<'a>(
    group: &'a Answer<'a>,
    path: &mut String,
    visit: &mut impl FnMut(&str, &'a Answer<'a>),
) {
    let Answer::Group(children) = group else {
        return;
    };
    for (name, answer) in children {
        let parent_len = path.len();
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(name);
        match answer {
            Answer::Group(_) => walk_leaves(answer, path, visit),
            Answer::List(items) if answer.is_repeat() => {
                for item in items {
                    walk_leaves(item, path, visit);
                }
            }
            _ => visit(path, answer),
        }
        path.truncate(parent_len);
    }
}

/// Returns every leaf under the group `fields` with its slash-separated path, in document
/// order. Instances of a repeat share the path of the repeat.
pub fn leaves<'a>(fields: &'a Answer<'a>) -> Vec<(String, &'a Answer<'a>)> {
    let mut found = Vec::new();
    for_each_leaf(fields, |path, answer| found.push((path.to_owned(), answer)));
    found
}

/// Calls `visit` with every answer found at `path` under the group `fields`, descending into
/// each instance of a repeat on the way, while `visit` returns true. Returns false once
/// `visit` has returned false.
fn visit_at<'a>(
    fields: &'a Answer<'a>,
    path: &str,
    visit: &mut dyn FnMut(&'a Answer<'a>) -> bool,
) -> bool {
    match path.split_once('/') {
        None => fields.child(path).is_none_or(&mut *visit),
        Some((first, rest)) => match fields.child(first) {
            Some(group @ Answer::Group(_)) => visit_at(group, rest, visit),
            Some(Answer::List(items)) => items
                .iter()
                .filter(|item| item.is_group())
                .all(|item| visit_at(item, rest, visit)),
            _ => true,
        },
    }
}

/// Returns every answer found at `path`, descending into each instance of a repeat on the
/// way.
pub fn values_at<'a>(fields: &'a Answer<'a>, path: &str) -> Vec<&'a Answer<'a>> {
    let mut found = Vec::new();
    visit_at(fields, path, &mut |answer| {
        found.push(answer);
        true
    });
    found
}

/// Returns every text answer at `path`, one per repeat instance.
pub fn texts_at<'a>(fields: &'a Answer<'a>, path: &str) -> Vec<Cow<'a, str>> {
    values_at(fields, path)
        .into_iter()
        .filter_map(leaf_text)
        .collect()
}

/// Returns whether any answer at `path` has text.
pub fn has_text_at(fields: &Answer<'_>, path: &str) -> bool {
    let mut found = false;
    visit_at(fields, path, &mut |answer| {
        found = leaf_text(answer).is_some();
        !found
    });
    found
}

/// Returns the first text answer found at any of `paths`.
pub fn first_text<'a>(fields: &'a Answer<'a>, paths: &[&str]) -> Option<Cow<'a, str>> {
    paths.iter().find_map(|path| {
        let mut first = None;
        visit_at(fields, path, &mut |answer| {
            first = leaf_text(answer);
            first.is_none()
        });
        first
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(json: &str) -> Answer<'_> {
        serde_json::from_str(json).expect("fixture is JSON")
    }

    #[test]
    fn values_descend_into_repeat_instances() {
        let fields =
            tree(r#"{"household": [{"name": "Ama"}, {"name": "Kofi"}], "group": {"age": "4"}}"#);
        assert_eq!(texts_at(&fields, "household/name"), vec!["Ama", "Kofi"]);
        assert_eq!(texts_at(&fields, "group/age"), vec!["4"]);
        assert!(texts_at(&fields, "group/missing").is_empty());
        assert!(has_text_at(&fields, "household/name"));
        assert!(!has_text_at(&fields, "group/missing"));
        assert_eq!(
            first_text(&fields, &["missing", "household/name"]).as_deref(),
            Some("Ama")
        );
    }

    #[test]
    fn leaves_list_repeat_children_under_one_path() {
        let fields = tree(r#"{"household": [{"name": "Ama"}, {"name": ""}], "q": "1"}"#);
        let paths: Vec<String> = leaves(&fields).into_iter().map(|(path, _)| path).collect();
        assert_eq!(paths, vec!["household/name", "household/name", "q"]);
    }

    #[test]
    fn list_answer_reads_as_space_separated() {
        assert_eq!(leaf_text(&tree(r#"["a", "b"]"#)).as_deref(), Some("a b"));
        assert_eq!(leaf_text(&tree(r#""  ""#)), None);
        assert_eq!(leaf_text(&tree("3")).as_deref(), Some("3"));
        assert_eq!(leaf_text(&tree("2.5")).as_deref(), Some("2.5"));
        assert_eq!(leaf_text(&tree("true")).as_deref(), Some("true"));
    }

    #[test]
    fn decoded_tree_matches_borrowed_map() {
        let text = r#"{"a\"b": "x\ny", "g": {"n": [1, -2, 0.5, null, false]}, "r": [{"k": "v"}]}"#;
        let map: Map<String, Value> = serde_json::from_str(text).expect("fixture is JSON");
        assert_eq!(tree(text), Answer::group_of(&map));
        assert_eq!(texts_at(&tree(text), "a\"b"), vec!["x\ny"]);
    }

    #[test]
    fn unescaped_texts_are_borrowed() {
        let fields = tree(r#"{"plain": "Ama", "escaped": "A\u00e9"}"#);
        assert!(matches!(
            fields.child("plain"),
            Some(Answer::Text(Cow::Borrowed(_)))
        ));
        assert!(
            matches!(fields.child("escaped"), Some(Answer::Text(Cow::Owned(text))) if text == "Aé")
        );
    }
}
