//! Reading a configuration file section by section so that every problem in it is found at
//! once, each with its line, column and key path.
//!
//! The text is parsed once with `toml_edit`, which keeps every key's and value's place in the
//! file. Each top-level section, and each element of an array of tables (`[[node]]`), is then
//! deserialised on its own; when serde refuses a value, the key at the error's place is
//! reported, taken out, and the element is read again, so one bad key does not hide the next.
//! An element read with keys taken out is *partial*: the caller checks only the rules that
//! cannot depend on a defaulted key on it (see [`Document::is_clean`]), and a rule broken
//! under a taken-out key is not reported twice.

use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::Value;

use super::{Problem, ProblemKind};
use crate::values::Violation;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Parses `a.b[1].c` into steps.
fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            steps.push(Step::Key(name.to_owned()));
        }
        for index in rest.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(i));
            }
        }
    }
    steps
}

/// The parsed file: its top-level keys as values that keep their spans.
pub(crate) struct Document<'t> {
    text: &'t str,
    sections: Vec<(String, Option<Range<usize>>, Value)>,
    /// Where each `[[name]]` header is, by array name.
    headers: Vec<(String, Vec<Option<usize>>)>,
    /// The sections read so far.
    taken: Vec<String>,
    /// Keys taken out of partial elements (full paths).
    removed: Vec<String>,
    problems: Vec<Problem>,
}

impl<'t> Document<'t> {
    /// Parses the TOML text; a syntax error is the one problem there can be then.
    pub(crate) fn parse(text: &'t str) -> Result<Document<'t>, Problem> {
        let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            let mut p = problem_at(text, at, String::new(), e.message().trim_end().to_owned());
            p.kind = ProblemKind::Syntax;
            p
        })?;
        let mut sections = Vec::new();
        let mut headers = Vec::new();
        for (name, item) in doc.as_table().iter() {
            let key_span = doc.as_table().key(name).and_then(|k| k.span());
            if let toml_edit::Item::ArrayOfTables(_) = item {
                headers.push((name.to_owned(), header_offsets(text, name)));
            }
            if let Ok(value) = item.clone().into_value() {
                sections.push((name.to_owned(), key_span, value));
            }
        }
        Ok(Document {
            text,
            sections,
            headers,
            taken: Vec::new(),
            removed: Vec::new(),
            problems: Vec::new(),
        })
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        self.taken.push(name.to_owned());
        let (_, _, value) = self.sections.iter().find(|(n, _, _)| n == name)?;
        Some(value.clone())
    }

    /// Reads the table `name`; a missing one is a problem when `required`.
    pub(crate) fn section<T: DeserializeOwned>(&mut self, name: &str, required: bool) -> Option<T> {
        match self.take(name) {
            Some(value) => self.element(vec![Step::Key(name.to_owned())], value),
            None => {
                if required {
                    self.problems.push(Problem {
                        line: None,
                        column: None,
                        key: name.to_owned(),
                        kind: ProblemKind::MissingKey,
                        message: format!("missing field `{name}`: add the [{name}] section"),
                    });
                }
                None
            }
        }
    }

    /// Reads the array of tables `name` (`[[name]]`), each element on its own; an element
    /// with a problem is `None`.
    pub(crate) fn array<T: DeserializeOwned>(&mut self, name: &str) -> Vec<Option<T>> {
        match self.take(name) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| self.element(vec![Step::Key(name.to_owned()), Step::Index(i)], v))
                .collect(),
            Some(other) => {
                let at = other.span().map(|s| s.start);
                let key = name.to_owned();
                self.push(
                    at,
                    key,
                    format!("must be tables: write [[{name}]] sections"),
                );
                Vec::new()
            }
        }
    }

    /// Reports every top-level key that is none of `known`.
    pub(crate) fn unknown_sections(&mut self, known: &[&str]) {
        let expected = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let unknown: Vec<(String, Option<Range<usize>>)> = self
            .sections
            .iter()
            .filter(|(n, _, _)| !self.taken.contains(n))
            .map(|(n, span, _)| (n.clone(), span.clone()))
            .collect();
        for (name, span) in unknown {
            self.push(
                span.map(|s| s.start),
                name.clone(),
                format!("unknown field `{name}`, expected one of {expected}"),
            );
        }
    }

    /// Reports a rule broken by a value that parsed, placed at its key (or, for a key left
    /// at its default, at its table).
    pub(crate) fn rule(&mut self, violation: Violation) {
        if self.removed.iter().any(|r| under(&violation.key, r)) {
            return; // that key's own problem is reported already
        }
        let at = self.locate(&violation.key);
        self.problems.push(Problem {
            kind: ProblemKind::Rule,
            ..problem_at(self.text, at, violation.key, violation.message)
        });
    }

    /// Was everything under `prefix` (`mqtt`, `lift[1]`, `lift`) read as written, no key
    /// taken out?
    pub(crate) fn is_clean(&self, prefix: &str) -> bool {
        !self.removed.iter().any(|r| {
            under(r, prefix) || (r.starts_with(prefix) && r[prefix.len()..].starts_with('['))
        })
    }

    /// All problems found, in the order of the file.
    pub(crate) fn into_problems(mut self) -> Vec<Problem> {
        self.problems
            .sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        self.problems
    }

    /// Were problems found so far?
    pub(crate) fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    fn push(&mut self, at: Option<usize>, key: String, message: String) {
        let p = problem_at(self.text, at, key, message);
        self.problems.push(p);
    }

    /// Deserialises one element, reporting (and taking out) one bad key after the other.
    fn element<T: DeserializeOwned>(&mut self, prefix: Vec<Step>, mut value: Value) -> Option<T> {
        let mut failed = false;
        // Keys taken out after being reported (paths relative to the element).
        let mut removed: Vec<Vec<Step>> = Vec::new();
        // Each round removes one key, so this ends; the bound is a guard only.
        for _ in 0..1000 {
            let err = match T::deserialize(value.clone().into_deserializer()) {
                Ok(t) => {
                    if failed {
                        for steps in removed {
                            let full: Vec<Step> = prefix.iter().chain(&steps).cloned().collect();
                            self.removed.push(render(&full));
                        }
                    }
                    return Some(t);
                }
                Err(e) => e,
            };
            let message = err.message().trim_end().to_owned();
            let mut steps = Vec::new();
            if let Some(pos) = err.span().map(|s| s.start) {
                path_at(&value, pos, &mut steps);
            }
            while matches!(steps.last(), Some(Step::Index(_))) {
                steps.pop();
            }
            let mut full: Vec<Step> = prefix.iter().chain(&steps).cloned().collect();
            if let Some(field) = missing_field(&message) {
                let mut missing = steps.clone();
                missing.push(Step::Key(field.to_owned()));
                if removed.contains(&missing) {
                    // We took this key out ourselves after reporting it: take out the
                    // table that needs it too, silently, and read on.
                    if steps.is_empty() || !remove(&mut value, &steps) {
                        return None;
                    }
                    removed.push(steps);
                    continue;
                }
                // A missing key is placed at its table's header (or first key).
                let at = self.locate_steps(&full);
                full.push(Step::Key(field.to_owned()));
                self.push(at, render(&full), message);
                return None;
            }
            let at = err
                .span()
                .map(|s| s.start)
                .or_else(|| self.locate_steps(&full));
            self.push(at, render(&full), message);
            failed = true;
            // Take out the nearest key (not an array index) and read the element again.
            if steps.is_empty() || !remove(&mut value, &steps) {
                return None;
            }
            removed.push(steps);
        }
        None
    }

    /// The byte offset where `path` (`node[1].baud`) is written, or where the nearest of
    /// its tables is.
    fn locate(&self, path: &str) -> Option<usize> {
        self.locate_steps(&parse_path(path))
    }

    fn locate_steps(&self, steps: &[Step]) -> Option<usize> {
        let (Step::Key(first), rest) = steps.split_first()? else {
            return None;
        };
        let mut best = None;
        if let [Step::Index(i), ..] = rest {
            best = self
                .headers
                .iter()
                .find(|(n, _)| n == first)
                .and_then(|(_, at)| at.get(*i).copied().flatten());
        }
        let Some((_, key_span, value)) = self.sections.iter().find(|(n, _, _)| n == first) else {
            return best;
        };
        best = best.or(key_span.as_ref().map(|s| s.start));
        let mut current = value;
        for step in rest {
            let next = match (step, current) {
                (Step::Key(k), Value::InlineTable(t)) => {
                    if let Some(span) = t.key(k).and_then(|k| k.span()) {
                        best = Some(span.start);
                    }
                    t.get(k)
                }
                (Step::Index(i), Value::Array(a)) => a.get(*i),
                _ => None,
            };
            let Some(next) = next else { break };
            if best.is_none() {
                best = first_span(next);
            }
            current = next;
        }
        best
    }
}

/// Where each `[[name]]` header line starts (toml_edit keeps no span for them).
fn header_offsets(text: &str, name: &str) -> Vec<Option<usize>> {
    let mut at = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let header = line
            .trim()
            .strip_prefix("[[")
            .and_then(|l| l.split_once("]]"))
            .map(|(n, _)| n.trim().trim_matches('"'));
        if header == Some(name) {
            at.push(Some(offset + (line.len() - line.trim_start().len())));
        }
        offset += line.len();
    }
    at
}

/// The earliest place in the file of `value` or of anything in it.
fn first_span(value: &Value) -> Option<usize> {
    if let Some(span) = value.span() {
        return Some(span.start);
    }
    match value {
        Value::InlineTable(t) => t
            .iter()
            .filter_map(|(k, v)| {
                let key = t.key(k).and_then(|k| k.span()).map(|s| s.start);
                key.or_else(|| first_span(v))
            })
            .min(),
        Value::Array(a) => a.iter().filter_map(first_span).min(),
        _ => None,
    }
}

/// Is `key` the key `parent` or under it (`a.b[1]` and `a.b.c` are under `a.b`)?
fn under(key: &str, parent: &str) -> bool {
    key.strip_prefix(parent)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// `missing field `x``'s `x`.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The path (relative to `value`) of the innermost key whose key or value covers `pos`.
fn path_at(value: &Value, pos: usize, steps: &mut Vec<Step>) -> bool {
    let covers = |span: Option<Range<usize>>| {
        span.is_some_and(|s| s.start <= pos && pos < s.end.max(s.start + 1))
    };
    match value {
        Value::InlineTable(t) => {
            for (k, v) in t.iter() {
                if covers(t.key(k).and_then(|k| k.span())) {
                    steps.push(Step::Key(k.to_owned()));
                    return true;
                }
                steps.push(Step::Key(k.to_owned()));
                if covers(v.span()) {
                    path_at(v, pos, steps);
                    return true;
                }
                if v.span().is_none() && path_at(v, pos, steps) {
                    return true;
                }
                steps.pop();
            }
            false
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                steps.push(Step::Index(i));
                if covers(v.span()) {
                    path_at(v, pos, steps);
                    return true;
                }
                if v.span().is_none() && path_at(v, pos, steps) {
                    return true;
                }
                steps.pop();
            }
            false
        }
        _ => false,
    }
}

/// Removes the key at `steps` (which ends in a key) from `value`.
fn remove(value: &mut Value, steps: &[Step]) -> bool {
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut current = value;
    for step in parents {
        let next = match (step, current) {
            (Step::Key(k), Value::InlineTable(t)) => t.get_mut(k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => current = n,
            None => return false,
        }
    }
    match (last, current) {
        (Step::Key(k), Value::InlineTable(t)) => t.remove(k).is_some(),
        _ => false,
    }
}

/// A problem at byte offset `at` of `text`.
fn problem_at(text: &str, at: Option<usize>, key: String, message: String) -> Problem {
    let (line, column) = match at {
        Some(pos) => {
            let pos = pos.min(text.len());
            let before = text.get(..pos).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            (Some(line), Some(before[start..].chars().count() + 1))
        }
        None => (None, None),
    };
    Problem {
        line,
        column,
        kind: ProblemKind::of(&message),
        key,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_render() {
        let steps = parse_path("node[1].channels.strain.spike.k");
        assert_eq!(render(&steps), "node[1].channels.strain.spike.k");
        assert_eq!(steps[1], Step::Index(1));
    }

    #[test]
    fn every_bad_key_of_one_element_is_found() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Node {
            id: String,
            #[serde(default)]
            baud: u32,
            #[serde(default)]
            sub: Option<Sub>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Sub {
            k: f64,
        }
        let text = "[[node]]\nid = \"a\"\nbaud = \"x\"\nbogus = 1\n[node.sub]\nk = \"3\"\n\n[[node]]\nbaud = 9600\n";
        let mut doc = Document::parse(text).expect("toml");
        let nodes = doc.array::<Node>("node");
        // node[0] is read without its bad keys; node[1] lacks a required one.
        assert!(nodes[0]
            .as_ref()
            .is_some_and(|n| n.id == "a" && n.sub.is_none()));
        assert!(nodes[1].is_none());
        assert!(!doc.is_clean("node[0]") && doc.is_clean("node[1]") && !doc.is_clean("node"));
        let found: Vec<(Option<usize>, String)> = doc
            .into_problems()
            .into_iter()
            .map(|p| (p.line, p.key))
            .collect();
        assert_eq!(
            found,
            [
                (Some(3), "node[0].baud".to_owned()),
                (Some(4), "node[0].bogus".to_owned()),
                (Some(6), "node[0].sub.k".to_owned()),
                (Some(8), "node[1].id".to_owned()),
            ]
        );
    }
}
